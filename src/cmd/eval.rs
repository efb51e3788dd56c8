//! `rnvp eval`: the mean negative log-likelihood of points, in the data's units (of images: nats
//! per image and bits per dimension of the discrete values).
use super::{load_flow, read_rows, toy_points};
use crate::cli::{self, non_negative};
use anyhow::{bail, Context, Result};
use rnvp::data::{DataSpec, Rng};
use serde_json::json;

pub(crate) fn eval(a: cli::EvalArgs) -> Result<()> {
    let (flow, ck, engine) = load_flow(&a.checkpoint, &a.compute)?;
    let n = non_negative("-n", a.n.unwrap_or(20_000))?;
    let spec = DataSpec::parse(&a.data)?;
    if !matches!(spec, DataSpec::Toy(_)) && (a.n.is_some() || a.noise.is_some()) {
        bail!("-n and --noise apply to toy sets (fresh points), not to {}", spec.name());
    }
    let run = flow.stack().run(engine);
    if ck.images.is_some() != spec.is_images() {
        bail!(
            "{}: {}",
            spec.name(),
            if spec.is_images() {
                "images, but the model was trained on rows of numbers"
            } else {
                "the model is a flow of images: give images (digits, a .npy of images or a directory of PNG files)"
            }
        );
    }
    let mut bpd = None;
    let (nll, non_finite, rows) = match &spec {
        DataSpec::Digits | DataSpec::Images(_) => {
            let space = ck.images.as_ref().context("invariant: checked above")?;
            let images = super::test_images(&spec, space)?;
            // one draw of the dequantization noise per image, seeded (as the papers report)
            let (ys, log_det) = space.to_flow(&images.to_matrix(), &mut Rng::new(a.seed))?;
            let (nll, bad) = rnvp::train::nll_and_non_finite(run, &ys, None)?;
            let nll = nll - log_det.iter().sum::<f64>() / log_det.len().max(1) as f64;
            bpd = Some(space.bits_per_dim(nll));
            (space.discrete_nll(nll), bad, images.n)
        }
        DataSpec::Toy(set) => {
            if n == 0 {
                bail!("-n 0: nothing to evaluate");
            }
            if ck.config.context > 0 || ck.bounds.is_some() {
                bail!(
                    "{}: a conditional or bounded flow is evaluated on a data file, not a toy set",
                    spec.name()
                );
            }
            let points = toy_points(*set, a.noise, n, a.seed)?;
            if ck.config.d != points.cols as i64 {
                bail!(
                    "{}: the data has {} columns, the model expects {}",
                    spec.name(),
                    points.cols,
                    ck.config.d
                );
            }
            let (nll, bad) = rnvp::train::nll_and_non_finite(run, &points, None)?;
            (nll, bad, points.rows)
        }
        DataSpec::File(p) => {
            let rows = read_rows(p, ck.config.d, ck.config.context)?;
            let (ys, log_det) = ck.space().to_flow(&rows).with_context(|| p.display().to_string())?;
            let (nll, bad) = rnvp::train::nll_and_non_finite(run, &ys, None)?;
            let log_z = super::normalizer(run, &ck.space(), &rows)?;
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            (nll - mean(&log_det) + mean(&log_z), bad, rows.rows)
        }
    };
    let finite = nll.is_finite();
    if a.json {
        let mut v = json!({ "nll": nll, "n": rows, "data": spec.name(), "finite": finite });
        if let Some(b) = bpd {
            v["bpd"] = json!(b);
        }
        if !finite {
            v["non_finite_rows"] = json!(non_finite);
        }
        println!("{v}");
    } else if let (true, Some(b)) = (finite, bpd) {
        println!("{b:.4} bits/dim, NLL {nll:.4} nats per image ({rows} images of {})", spec.name());
    } else if finite {
        println!("NLL {nll:.6} nats ({} points of {})", rows, spec.name());
    }
    if !finite {
        bail!(
            "{}: the NLL is {nll}: the model's log-density is not finite on {non_finite} of {} points of {} \
             (a broken model, or points where its density overflows)",
            a.checkpoint.display(),
            rows,
            spec.name()
        );
    }
    Ok(())
}
