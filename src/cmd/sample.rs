//! `rnvp sample`, `log-prob`, `encode` and `decode`: the flow's passes over points, in the data's
//! units (bounds, scaler and a conditional flow's context handled by the checkpoint's
//! [`rnvp::data::DataSpace`]).
use super::{check_points, header, load_flow, parse_numbers, read_rows, write_rows};
use crate::cli::{self, non_negative};
use anyhow::{bail, Context, Result};
use rnvp::data::{self, io, Matrix};
use rnvp::truncation::{self, Draws};

pub(crate) fn sample(a: cli::SampleArgs) -> Result<()> {
    let n = non_negative("-n", a.n)?;
    let (flow, ck, engine) = load_flow(&a.checkpoint, &a.compute)?;
    let (d, m) = (flow.stack().config().d as usize, flow.stack().config().context as usize);
    let space = ck.space();
    // the contexts (one row each) and whether they are appended to the output rows
    let (contexts, append) = match (&a.context, &a.context_file) {
        (Some(text), _) => {
            let v = parse_numbers(text).with_context(|| format!("--context {text}"))?;
            (Some(Matrix::new(1, v.len(), v)?), false)
        }
        (None, Some(path)) => (Some(io::read_matrix(path)?), true),
        (None, None) => (None, false),
    };
    let what = if a.context.is_some() { "--context" } else { "--context-file" };
    match (&contexts, m) {
        (None, 0) => {}
        (None, m) => bail!(
            "{}: the flow is conditional on {m} context column(s): give --context or --context-file",
            a.checkpoint.display()
        ),
        (Some(_), 0) => {
            bail!("{what}: {} is an unconditional flow; it takes no context", a.checkpoint.display())
        }
        (Some(c), m) if c.cols != m => {
            bail!("{what}: {} context column(s), but the flow takes {m}", c.cols)
        }
        _ => {}
    }
    if let Some(images) = &ck.images {
        return sample_images(&a, &flow, images, engine, n);
    }
    if a.temperature != 1.0 {
        bail!("--temperature applies to flows of images");
    }
    let blocks = contexts.as_ref().map_or(1, |c| c.rows);
    check_points(n.saturating_mul(blocks), d + if append { m } else { 0 })?;
    tch::manual_seed(a.seed as i64);
    let run = flow.stack().run(engine);
    let (kind, device) = (flow.stack().kind(), flow.stack().device());
    let mut out = Matrix { rows: 0, cols: d + if append { m } else { 0 }, data: vec![] };
    let (mut draws, mut lowest) = (Draws::default(), (f64::INFINITY, 0));
    for b in 0..blocks {
        let (xs, drawn) = match &contexts {
            None => truncation::sample(run, &space, n),
            Some(c) => {
                let row = Matrix::new(1, m, c.row(b).to_vec())?;
                let ct = data::to_tensor(&space.context(&row)?, kind, device)?;
                truncation::sample(run.given(&ct), &space, n)
            }
        }
        .map_err(|e| match append {
            true => anyhow::anyhow!("{what} row {b}: {e}"),
            false => e.into(),
        })?;
        draws.add(drawn);
        if drawn.acceptance() < lowest.0 {
            lowest = (drawn.acceptance(), b);
        }
        for i in 0..xs.rows {
            out.data.extend_from_slice(xs.row(i));
            if append {
                out.data.extend_from_slice(contexts.as_ref().map_or(&[][..], |c| c.row(b)));
            }
        }
        out.rows += xs.rows;
    }
    if draws.redrawn > 0 {
        eprintln!(
            "note: {} redraw(s) for {} sample(s): those draws overflowed the flow's inverse (not finite)",
            draws.redrawn,
            n.saturating_mul(blocks)
        );
    }
    if truncation::truncates(&space) && draws.drawn > 0 {
        let at = if blocks > 1 {
            format!("; lowest {:.1}% at context row {}", 100.0 * lowest.0, lowest.1)
        } else {
            String::new()
        };
        eprintln!(
            "note: truncated to the box: {} of {} draws fell inside ({:.1}%{at})",
            draws.kept,
            draws.drawn,
            100.0 * draws.acceptance()
        );
    }
    if let Some(png) = &a.png {
        let xy: Vec<[f64; 2]> = (0..out.rows).map(|i| [out.row(i)[0], out.row(i)[1]]).collect();
        rnvp::plot::scatter(png, "Samples X = F^-1(Z)", "x₀", "x₁", &[("samples", &xy)])?;
    }
    let mut head = header("x", d);
    if append {
        head.extend(header("c", m));
    }
    write_rows(a.out.as_deref(), &out, &head)
}

/// `n` images `F⁻¹(T·z)`, `z ~ N(0, I)`, as rows of `c·h·w` values in `[0, 1]` (channel-major),
/// and with `--png` as a grid.
fn sample_images(
    a: &cli::SampleArgs,
    flow: &rnvp::Flow,
    space: &rnvp::data::ImageSpace,
    engine: rnvp::Engine,
    n: usize,
) -> Result<()> {
    if a.context.is_some() || a.context_file.is_some() {
        bail!("--context: {} is a flow of images; it takes no context", a.checkpoint.display());
    }
    if !(a.temperature.is_finite() && a.temperature >= 0.0) {
        bail!("--temperature {}: a temperature is a finite number ≥ 0", a.temperature);
    }
    let d = space.dim();
    check_points(n, d)?;
    tch::manual_seed(a.seed as i64);
    let (kind, device) = (flow.stack().kind(), flow.stack().device());
    let z = tch::Tensor::f_randn([n as i64, d as i64], (kind, device))? * a.temperature;
    let ys = data::from_tensor(&flow.stack().run(engine).decode(&z)?)?;
    if let Some(bad) = (0..ys.rows).find(|&i| ys.row(i).iter().any(|v| !v.is_finite())) {
        bail!("{}: sample {bad} is not finite (a broken model?)", a.checkpoint.display());
    }
    let out = space.to_unit(&ys);
    if let Some(png) = &a.png {
        // the grid shows the first GRID_MAX samples; --out has them all
        let shown = out.rows.min(rnvp::image_figures::GRID_MAX);
        let pictures: Vec<Vec<f64>> = (0..shown).map(|i| out.row(i).to_vec()).collect();
        let rows: Vec<Vec<Vec<f64>>> =
            pictures.chunks(rnvp::image_figures::PER_ROW).map(<[Vec<f64>]>::to_vec).collect();
        let title = if shown < out.rows {
            format!("Samples, temperature {} (the first {shown} of {})", a.temperature, out.rows)
        } else {
            format!("Samples, temperature {}", a.temperature)
        };
        rnvp::plot::image_grid(png, &title, [space.channels, space.height, space.width], &rows, None)?;
    }
    write_rows(a.out.as_deref(), &out, &header("x", d))
}

#[derive(Clone, Copy)]
pub(crate) enum Map {
    LogProb,
    Encode,
    Decode,
}

pub(crate) fn map(a: cli::MapArgs, what: Map) -> Result<()> {
    let (flow, ck, engine) = load_flow(&a.checkpoint, &a.compute)?;
    if ck.images.is_some() {
        bail!(
            "{}: a flow of images: `rnvp eval --data IMAGES` gives its bits/dim, `rnvp sample` its samples \
             (log-prob, encode and decode take rows of numbers)",
            a.checkpoint.display()
        );
    }
    let (d, m) = (flow.stack().config().d, flow.stack().config().context);
    let rows = read_rows(&a.input, d, m)?;
    let (kind, device) = (flow.stack().kind(), flow.stack().device());
    let space = ck.space();
    let (d, m) = (d as usize, m as usize);
    let run = flow.stack().run(engine);
    let (out, head) = match what {
        Map::LogProb | Map::Encode => {
            let (ys, log_det) = space.to_flow(&rows).with_context(|| a.input.display().to_string())?;
            let (xs, c) = rnvp::train::rows_and_context(flow.stack(), &ys)?;
            let run = run.given_opt(c.as_ref());
            if let Map::LogProb = what {
                let lp = data::from_tensor(&run.log_prob(&xs)?.unsqueeze(1))?;
                // a truncated flow's density divides by its mass in the box at each row's context
                let log_z = super::normalizer(flow.stack().run(engine), &space, &rows)?;
                let lp = lp.data.iter().zip(&log_det).zip(&log_z).map(|((v, s), z)| v + s - z).collect();
                let lp = Matrix::new(rows.rows, 1, lp)?;
                (lp, vec!["log_prob".to_string()])
            } else {
                (data::from_tensor(&run.encode(&xs)?)?, header("z", d))
            }
        }
        Map::Decode => {
            // z's columns are latents; the context columns go through the scaler
            // invariant: read_rows checked d + m columns, so both slices are in range
            let z: Vec<f64> = (0..rows.rows).flat_map(|i| rows.row(i)[..d].to_vec()).collect();
            let zs = data::to_tensor(&Matrix::new(rows.rows, d, z)?, kind, device)?;
            let c = if m > 0 {
                let c: Vec<f64> = (0..rows.rows).flat_map(|i| rows.row(i)[d..].to_vec()).collect();
                Some(data::to_tensor(&space.context(&Matrix::new(rows.rows, m, c)?)?, kind, device)?)
            } else {
                None
            };
            let xs = data::from_tensor(&run.given_opt(c.as_ref()).decode(&zs)?)?;
            (space.from_flow(&xs)?, header("x", d))
        }
    };
    write_rows(a.out.as_deref(), &out, &head)
}
