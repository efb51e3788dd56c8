//! `rnvp eval`: the mean negative log-likelihood of points, in the data's units.
use super::{load_flow, read_rows, toy_points};
use crate::cli::{self, non_negative};
use anyhow::{bail, Result};
use rnvp::data::DataSpec;
use serde_json::json;

pub(crate) fn eval(a: cli::EvalArgs) -> Result<()> {
    let (flow, ck, engine) = load_flow(&a.checkpoint, &a.compute)?;
    let n = non_negative("-n", a.n)?;
    let spec = DataSpec::parse(&a.data)?;
    let (points, scaler) = match &spec {
        DataSpec::Toy(set) => {
            if n == 0 {
                bail!("-n 0: nothing to evaluate");
            }
            (toy_points(*set, a.noise, n, a.seed)?, None)
        }
        DataSpec::File(p) => {
            let m = read_rows(p, flow.stack().config().d)?;
            match &ck.scaler {
                Some(s) => (s.transform(&m)?, Some(s)),
                None => (m, None),
            }
        }
    };
    if flow.stack().config().d != points.cols as i64 {
        bail!(
            "{}: the data has {} columns, the model expects {}",
            spec.name(),
            points.cols,
            flow.stack().config().d
        );
    }
    let (nll, non_finite) = rnvp::train::nll_and_non_finite(flow.stack().run(engine), &points, scaler)?;
    let finite = nll.is_finite();
    if a.json {
        let mut v = json!({ "nll": nll, "n": points.rows, "data": spec.name(), "finite": finite });
        if !finite {
            v["non_finite_rows"] = json!(non_finite);
        }
        println!("{v}");
    } else if finite {
        println!("NLL {nll:.6} nats ({} points of {})", points.rows, spec.name());
    }
    if !finite {
        bail!(
            "{}: the NLL is {nll}: the model's log-density is not finite on {non_finite} of {} points of {} \
             (a broken model, or points where its density overflows)",
            a.checkpoint.display(),
            points.rows,
            spec.name()
        );
    }
    Ok(())
}
