//! The figures of a trained flow (the notebook's `view`), shared by the `two_moons` example and
//! `rnvp train --plot-dir` / `rnvp plot`: loss curve, samples `F⁻¹(Z)`, latents `F(X)` and a
//! density heat map with the data over it. A conditional flow is drawn at one context `c`
//! (samples and density of `p(x | c)`); its latents encode each data row with the row's own
//! context. A bounded flow's density is drawn inside its box (a truncated one's divided by its
//! mass there, its samples drawn inside it).
use crate::data::{self, DataSpace, Matrix};
use crate::error::{Error, Result};
use crate::plot::{self, Grid};
use crate::run::Run;
use crate::train::TrainReport;
use crate::truncation;
use std::path::{Path, PathBuf};

/// What to draw.
pub struct Figures<'a> {
    /// The flow and the engine that runs it.
    pub flow: Run<'a>,
    /// How file data reaches the flow (bounds, scaler and whitening of the modelled columns, the
    /// scaler of the context; samples, densities and the context are then in the data's units);
    /// `None` for data in the flow's own coordinates.
    pub space: Option<DataSpace<'a>>,
    /// Data points in the data's units (for toy sets: a standardized batch).
    pub data: Option<&'a Matrix>,
    /// The training run, for the loss curve.
    pub report: Option<&'a TrainReport>,
    /// A dashed reference line on the loss curve (value, label).
    pub floor: Option<(f64, &'a str)>,
    /// Appended to each title, e.g. "3 layers".
    pub label: &'a str,
    /// Points drawn from the flow.
    pub n_samples: i64,
    /// A conditional flow's context for the samples and the density, in the data's units.
    pub context: Option<&'a [f64]>,
}

/// "given c = (0.1, -0.3)" for a figure's title (the first four values).
pub fn given_label(c: &[f64]) -> String {
    let shown: Vec<String> = c.iter().take(4).map(|v| format!("{v:.3}")).collect();
    format!("given c = ({}{})", shown.join(", "), if c.len() > 4 { ", …" } else { "" })
}

fn pairs(m: &Matrix) -> Vec<[f64; 2]> {
    (0..m.rows).map(|i| [m.row(i)[0], m.row(i)[1]]).collect()
}

/// A square window around the bulk of the points (0.5–99.5 percentiles, widened by 15%).
fn window(points: &[[f64; 2]]) -> ((f64, f64), (f64, f64)) {
    let range = |c: usize| {
        let mut v: Vec<f64> = points.iter().map(|p| p[c]).filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return (-3.0, 3.0);
        }
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        (q(0.005), q(0.995))
    };
    let ((x0, x1), (y0, y1)) = (range(0), range(1));
    let half = ((x1 - x0).max(y1 - y0) * 0.5 * 1.15).max(1e-3);
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    ((cx - half, cx + half), (cy - half, cy + half))
}

impl Figures<'_> {
    fn titled(&self, t: &str) -> String {
        if self.label.is_empty() {
            t.to_string()
        } else {
            format!("{t} ({})", self.label)
        }
    }

    /// A title of a figure of `p(x | c)`: the label and the context.
    fn titled_given(&self, t: &str) -> String {
        match self.context {
            Some(c) if self.label.is_empty() => format!("{t} ({})", given_label(c)),
            Some(c) => format!("{t} ({}, {})", self.label, given_label(c)),
            None => self.titled(t),
        }
    }

    /// Draws every figure that applies into `dir` (created if needed); returns the files written.
    pub fn draw(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| crate::error::io_err(dir, e))?;
        let mut written = vec![];
        if let Some(r) = self.report {
            let path = dir.join("loss.png");
            plot::loss_curve(&path, &self.titled("Model Loss vs Epoch"), &r.losses, &r.val, self.floor)?;
            written.push(path);
        }
        let flow = self.flow.flow();
        let (d, m) = (flow.config().d as usize, flow.config().context as usize);
        let given = match (self.context, m) {
            (None, 0) => None,
            (Some(c), m) if m > 0 && c.len() == m => {
                let c = Matrix::new(1, m, c.to_vec())?;
                let c = match &self.space {
                    Some(s) => s.context(&c)?,
                    None => c,
                };
                Some(data::to_tensor(&c, flow.kind(), flow.device())?)
            }
            (c, m) => {
                return Err(Error::Data(format!(
                    "the figures of a flow with {m} context column(s) were given {} context value(s)",
                    c.map_or(0, |c| c.len())
                )))
            }
        };
        let at = self.flow.given_opt(given.as_ref());
        // a flow truncated to its box: its draws inside the box, and densities divided by its mass there
        let (samples, log_z) = match &self.space {
            Some(s) => {
                let n = usize::try_from(self.n_samples)
                    .map_err(|_| Error::InvalidConfig(format!("cannot draw {} samples", self.n_samples)))?;
                // the density figure (d = 2) divides by the mass in the box
                let log_z =
                    if d == 2 { truncation::log_mass(at, s, truncation::MASS_DRAWS.1)?.0 } else { 0.0 };
                (truncation::sample(at, s, n)?.0, log_z)
            }
            None => (data::from_tensor(&at.sample(self.n_samples)?)?, 0.0),
        };
        let sample_xy = pairs(&samples);
        // data rows of a conditional flow have contexts of their own: not drawn over p(x | c)
        let data_xy = self.data.filter(|_| m == 0).map(pairs);
        let path = dir.join("samples.png");
        let mut sets: Vec<(&str, &[[f64; 2]])> = vec![];
        if let Some(d) = &data_xy {
            sets.push(("data", d));
        }
        sets.push(("X = F⁻¹(Z)", &sample_xy));
        plot::scatter(
            &path,
            &self.titled_given("Inverse of Normal Samples Z: X = F^-1(Z)"),
            "x₀",
            "x₁",
            &sets,
        )?;
        written.push(path);

        if let Some(rows) = self.data {
            let mut ys = rows.clone();
            if let Some(s) = &self.space {
                ys = s.to_flow(&ys)?.0;
            }
            // each row with its own context
            let (xs, c) = crate::train::rows_and_context(flow, &ys)?;
            let zs = self.flow.given_opt(c.as_ref()).encode(&xs)?;
            let z_xy = pairs(&data::from_tensor(&zs)?);
            let base = data::from_tensor(&crate::base::sample(
                self.n_samples,
                d as i64,
                tch::Kind::Double,
                tch::Device::Cpu,
            ))?;
            let base_xy = pairs(&base);
            let path = dir.join("latent.png");
            plot::scatter(
                &path,
                &self.titled("Transformation of Data Samples X: Z = F(X)"),
                "z₀",
                "z₁",
                &[("Z ~ N(0, I)", &base_xy), ("Z = F(X)", &z_xy)],
            )?;
            written.push(path);
        }

        if d == 2 {
            let (mut x, mut y) = window(data_xy.as_deref().unwrap_or(&sample_xy));
            // over a conditional density, samples would hide the narrow posteriors it draws
            let overlay = data_xy.as_deref().unwrap_or(if m > 0 { &[] } else { &sample_xy });
            if let Some(b) = self.space.and_then(|s| s.bounds) {
                // the density lives inside the box (grid cells are centred strictly inside it)
                x = (x.0.max(b.lo[0]), x.1.min(b.hi[0]));
                y = (y.0.max(b.lo[1]), y.1.min(b.hi[1]));
            }
            let (nx, ny) = (200, 200);
            let pts = Grid::points(x, y, nx, ny);
            let c = self.context.unwrap_or(&[]);
            let cells = pts.iter().flat_map(|p| [p[0], p[1]].into_iter().chain(c.iter().copied()));
            let mut cells = Matrix::new(pts.len(), 2 + c.len(), cells.collect())?;
            let mut shift = vec![0.0; cells.rows];
            if let Some(s) = &self.space {
                (cells, shift) = s.to_flow(&cells)?;
            }
            let (xs, c) = crate::train::rows_and_context(flow, &cells)?;
            let lp = self.flow.given_opt(c.as_ref()).log_prob(&xs)?;
            let values: Vec<f64> = data::from_tensor(&lp.unsqueeze(1))?
                .data
                .iter()
                .zip(&shift)
                .map(|(v, s)| v + s - log_z)
                .collect();
            let path = dir.join("density.png");
            let (title, quantity) = if m > 0 {
                (self.titled_given("Density p(x | c)"), "p(x | c)")
            } else {
                (self.titled("Density p(x)"), "p(x)")
            };
            plot::density(&path, &title, quantity, &Grid { x, y, nx, ny, values }, overlay)?;
            written.push(path);
        }
        Ok(written)
    }
}
