//! A flow truncated to a box (`--bounds-mode truncate`, [`BoundsMode::Truncate`]): the flow's
//! density `q(x | c)` restricted to the box `B`,
//!
//! `p(x | c) = q(x | c) 1[x ∈ B] / Z(c)`, with `Z(c) = P_q(x ∈ B | c)`.
//!
//! Samples of `p` are the draws of `q` that fall in `B` (rejection, refused below an acceptance of
//! [`MIN_ACCEPTANCE`]); `Z(c)` is estimated as the fraction of draws of `q` that fall in `B`, a
//! Monte Carlo estimate with a stated standard error. Spaces without truncated bounds pass
//! through: their samples are the flow's plain draws and their normalizer is 1.
use crate::data::{self, BoundsMode, DataSpace, Matrix};
use crate::error::{Error, Result};
use crate::run::Run;
use std::collections::HashMap;

/// The lowest fraction of draws inside the box that sampling accepts (below it, a flow puts
/// almost none of its mass in the box at that context, and rejection would run for long).
pub const MIN_ACCEPTANCE: f64 = 0.01;

/// Draws before the acceptance is judged against [`MIN_ACCEPTANCE`].
const JUDGED_AFTER: usize = 10_000;

/// The most numbers drawn at once (rows × columns; 16 MB per copy in f64).
const ROUND: usize = 1 << 21;

/// The most rows of `d` columns drawn at once.
fn round_rows(d: usize) -> usize {
    (ROUND / d.max(1)).max(1)
}

/// Draws of `q` for all the contexts of one normalizer together (split evenly between them).
pub const MASS_BUDGET: usize = 1 << 20;

/// The fewest and the most draws of `q` for one context's `Z(c)`.
pub const MASS_DRAWS: (usize, usize) = (1_000, 100_000);

/// What sampling drew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Draws {
    /// Draws kept (inside the box, or all of them without truncation).
    pub kept: usize,
    /// Draws made (the non-finite ones the flow drew again included, as draws outside the box).
    pub drawn: usize,
    /// Draws replaced because the flow's inverse overflowed ([`Run::sample_counted`]).
    pub redrawn: usize,
}

impl Draws {
    /// The fraction of draws kept.
    pub fn acceptance(&self) -> f64 {
        self.kept as f64 / self.drawn.max(1) as f64
    }

    /// Both counts added.
    pub fn add(&mut self, o: Draws) {
        self.kept += o.kept;
        self.drawn += o.drawn;
        self.redrawn += o.redrawn;
    }
}

/// Whether `space` truncates its flow to a box.
pub fn truncates(space: &DataSpace) -> bool {
    truncated_box(space).is_some()
}

/// The box `space` truncates its flow to, if it does.
fn truncated_box<'a>(space: &DataSpace<'a>) -> Option<&'a data::Bounds> {
    space.bounds.filter(|b| b.mode == BoundsMode::Truncate)
}

/// `rows` draws of the flow in the user's units, and how many non-finite draws it replaced.
fn draw(run: Run, space: &DataSpace, rows: usize) -> Result<(Matrix, usize)> {
    let (xs, redrawn) = run.sample_counted(rows as i64)?;
    Ok((space.from_flow(&data::from_tensor(&xs)?)?, redrawn))
}

/// `n` samples of `p(x | c)` in the user's units from `run` (given its context, in the flow's
/// units: one row, the same for every sample, when truncated): without truncation the flow's plain draw ([`Run::sample_counted`]); truncated, the draws
/// inside the box, in the order drawn. Errors when fewer than [`MIN_ACCEPTANCE`] of the draws fall
/// inside.
pub fn sample(run: Run, space: &DataSpace, n: usize) -> Result<(Matrix, Draws)> {
    let Some(b) = truncated_box(space) else {
        let (xs, redrawn) = draw(run, space, n)?;
        return Ok((xs, Draws { kept: n, drawn: n, redrawn }));
    };
    let d = space.d;
    let mut out =
        Matrix { rows: 0, cols: d, data: Vec::with_capacity(n.min(round_rows(d)).saturating_mul(d)) };
    let mut draws = Draws::default();
    while out.rows < n {
        let need = n - out.rows;
        // as many as the acceptance so far says are needed, and a tenth more
        let rate = if draws.drawn == 0 { 1.0 } else { draws.acceptance().max(MIN_ACCEPTANCE) };
        let most = round_rows(d);
        let rows = ((need as f64 / rate * 1.1).ceil() as usize).clamp(need.min(most), most);
        let (xs, redrawn) = draw(run, space, rows)?;
        // draws past the n-th kept one are not counted as rejected; non-finite draws that the flow
        // drew again are draws outside the box
        let (mut kept, mut used) = (0, rows + redrawn);
        for i in (0..xs.rows).filter(|&i| b.contains(xs.row(i))) {
            out.data.extend_from_slice(xs.row(i));
            out.rows += 1;
            kept += 1;
            if out.rows == n {
                used = i + 1;
                break;
            }
        }
        draws.add(Draws { kept, drawn: used, redrawn });
        if draws.drawn >= JUDGED_AFTER && draws.acceptance() < MIN_ACCEPTANCE {
            return Err(Error::Data(format!(
                "sampling: {} of {} draws fell inside the box ({:.2}%, below the {}% that rejection accepts): \
                 the flow puts almost none of its mass there (a context far outside the training data?)",
                draws.kept,
                draws.drawn,
                100.0 * draws.acceptance(),
                100.0 * MIN_ACCEPTANCE
            )));
        }
    }
    Ok((out, draws))
}

/// `log Z(c)` of each row's context, estimated from draws of `q`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    /// `log Z(c)` of each row (0 without truncation).
    pub log_z: Vec<f64>,
    /// Distinct contexts estimated (1 for an unconditional flow).
    pub contexts: usize,
    /// Draws of `q` for each context.
    pub draws: usize,
    /// The largest standard error of a `log Z(c)`, `√((1 − Z) / (N Z))` (delta method).
    pub max_se: f64,
}

/// [`Normalizer`] of `rows` (`d + m` columns in the user's units: each row's context is its last
/// `m`): one estimate per distinct context, from `MASS_BUDGET / contexts` draws each (within
/// [`MASS_DRAWS`]). Libtorch's generator is seeded for each context from `seed` and the context's
/// values, so that a context's estimate does not depend on the other rows (only on how many
/// distinct contexts share the budget). `None` without truncation. Errors for a context where no
/// draw falls in the box.
pub fn normalizer(run: Run, space: &DataSpace, rows: &Matrix, seed: u64) -> Result<Option<Normalizer>> {
    if !truncates(space) {
        return Ok(None);
    }
    let (d, m) = (space.d, space.m);
    if rows.cols != d + m {
        return Err(Error::Data(format!("normalizer: {} columns for {d} + {m}", rows.cols)));
    }
    // each row's context by its bits, numbered in order of first appearance
    let mut index: HashMap<Vec<u64>, usize> = HashMap::new();
    let mut firsts = vec![];
    let of_row: Vec<usize> = (0..rows.rows)
        .map(|i| {
            let c = &rows.row(i)[d..];
            let next = index.len();
            *index.entry(c.iter().map(|v| v.to_bits()).collect()).or_insert_with(|| {
                firsts.push(i);
                next
            })
        })
        .collect();
    let contexts = firsts.len().max(1);
    let draws = (MASS_BUDGET / contexts).clamp(MASS_DRAWS.0, MASS_DRAWS.1);
    let (kind, device) = (run.flow().kind(), run.flow().device());
    let mut log_z = Vec::with_capacity(firsts.len());
    let mut max_se: f64 = 0.0;
    if firsts.len() >= 1_000 {
        eprintln!(
            "note: estimating the truncated flow's mass in the box at {} contexts ({draws} draws each)",
            firsts.len()
        );
    }
    for &i in &firsts {
        let bits = rows.row(i)[d..].iter().fold(seed, |h, v| crate::data::rng::mix(h, v.to_bits()));
        tch::manual_seed(bits as i64);
        let (z, se) = if m == 0 {
            log_mass(run, space, draws)?
        } else {
            let c = Matrix::new(1, m, rows.row(i)[d..].to_vec())?;
            let ct = data::to_tensor(&space.context(&c)?, kind, device)?;
            log_mass(run.given(&ct), space, draws)
                .map_err(|e| Error::Data(format!("row {i}'s context: {e}")))?
        };
        max_se = max_se.max(se);
        log_z.push(z);
    }
    Ok(Some(Normalizer { log_z: of_row.iter().map(|&k| log_z[k]).collect(), contexts, draws, max_se }))
}

/// `(log Z, its standard error)` at `run`'s context from `draws` draws of `q` (`(0, 0)` without
/// truncation), or from up to [`MASS_DRAWS`]`.1` where fewer than [`MASS_HITS`] of them fall in the
/// box. Errors when none does.
pub fn log_mass(run: Run, space: &DataSpace, draws: usize) -> Result<(f64, f64)> {
    let Some(b) = truncated_box(space) else { return Ok((0.0, 0.0)) };
    let (mut inside, mut done, mut target) = (0usize, 0usize, draws.max(1));
    while done < target {
        let rows = (target - done).min(round_rows(space.d));
        let (xs, redrawn) = draw(run, space, rows)?;
        inside += (0..xs.rows).filter(|&i| b.contains(xs.row(i))).count();
        // a non-finite draw that the flow drew again is a draw outside the box
        done += rows + redrawn;
        if done >= target && inside < MASS_HITS {
            target = target.max(MASS_DRAWS.1);
        }
    }
    if inside == 0 {
        return Err(Error::Data(format!(
            "none of {done} draws of the flow fell inside its box: its mass there (the truncated density's \
             normalizer) is too small to estimate"
        )));
    }
    let z = inside as f64 / done as f64;
    Ok((z.ln(), ((1.0 - z) / (done as f64 * z)).sqrt()))
}

/// Draws inside the box below which [`log_mass`] draws on, up to [`MASS_DRAWS`]`.1`.
pub const MASS_HITS: usize = 100;
