//! `rnvp plot`: the figures of a trained flow.
use super::{load_flow, read_rows, toy_points};
use crate::cli::{self, non_negative};
use anyhow::{bail, Result};
use rnvp::data::DataSpec;
use rnvp::figures::Figures;

pub(crate) fn plot(a: cli::PlotArgs) -> Result<()> {
    let (flow, ck, engine) = load_flow(&a.checkpoint, &a.compute)?;
    let n = non_negative("-n", a.n)?;
    if ck.config.context > 0 || ck.bounds.is_some() {
        bail!(
            "{}: `rnvp plot` draws unconditional flows without bounds; use `rnvp sample --png` (with --context)",
            a.checkpoint.display()
        );
    }
    let points = match a.data.as_deref().map(DataSpec::parse).transpose()? {
        Some(DataSpec::Toy(set)) => Some(toy_points(set, None, n, a.seed.wrapping_add(1))?),
        Some(DataSpec::File(p)) => Some(read_rows(&p, flow.stack().config().d, 0)?),
        None => None,
    };
    tch::manual_seed(a.seed as i64);
    let written = Figures {
        flow: flow.stack().run(engine),
        space: ck.scaler.is_some().then(|| ck.space()),
        data: points.as_ref(),
        report: None,
        floor: None,
        label: "",
        n_samples: n as i64,
    }
    .draw(&a.out_dir)?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}
