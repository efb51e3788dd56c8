//! `rnvp plot`: the figures of a trained flow.
use super::{load_flow, parse_numbers, read_rows, toy_points};
use crate::cli::{self, non_negative};
use anyhow::{bail, Context, Result};
use rnvp::data::DataSpec;
use rnvp::figures::Figures;
use rnvp::image_figures::ImageFigures;

pub(crate) fn plot(a: cli::PlotArgs) -> Result<()> {
    let (flow, ck, engine) = load_flow(&a.checkpoint, &a.compute)?;
    let n = non_negative("-n", a.n)?;
    if let Some(space) = &ck.images {
        return plot_images(&a, &flow, space, engine);
    }
    if a.temperature != 1.0 {
        bail!("--temperature applies to flows of images");
    }
    let (d, m) = (flow.stack().config().d, flow.stack().config().context);
    super::check_points(n, d as usize)?;
    let context = match (&a.context, m) {
        (None, 0) => None,
        (None, m) => bail!(
            "{}: the flow is conditional on {m} context column(s): give --context (the figures draw p(x | c) at it)",
            a.checkpoint.display()
        ),
        (Some(_), 0) => {
            bail!("--context: {} is an unconditional flow; it takes no context", a.checkpoint.display())
        }
        (Some(text), m) => {
            let v = parse_numbers(text).with_context(|| format!("--context {text}"))?;
            if v.len() != m as usize {
                bail!("--context: {} value(s), but the flow takes {m}", v.len());
            }
            Some(v)
        }
    };
    let points = match a.data.as_deref().map(DataSpec::parse).transpose()? {
        Some(DataSpec::Toy(_)) if m > 0 => {
            bail!("--data: a conditional flow's data is a file with {d} modelled and {m} context column(s)")
        }
        Some(DataSpec::Toy(set)) => Some(toy_points(set, None, n, a.seed.wrapping_add(1))?),
        Some(DataSpec::File(p)) => Some(read_rows(&p, d, m)?),
        Some(spec @ (DataSpec::Digits | DataSpec::Images(_))) => {
            bail!(
                "--data {}: images, but {} is a flow of rows of numbers",
                spec.name(),
                a.checkpoint.display()
            )
        }
        None => None,
    };
    tch::manual_seed(a.seed as i64);
    let written = Figures {
        flow: flow.stack().run(engine),
        space: Some(ck.space()),
        data: points.as_ref(),
        report: None,
        floor: None,
        label: "",
        n_samples: n as i64,
        context: context.as_deref(),
    }
    .draw(&a.out_dir)
    .with_context(|| match &a.data {
        Some(data) => format!("the figures of {} with --data {data}", a.checkpoint.display()),
        None => format!("the figures of {}", a.checkpoint.display()),
    })?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

/// The figures of a flow of images: samples (100 at most, at --temperature) and, with --data,
/// reconstructions and interpolations of its first images (the digits' test set).
fn plot_images(
    a: &cli::PlotArgs,
    flow: &rnvp::Flow,
    space: &rnvp::data::ImageSpace,
    engine: rnvp::Engine,
) -> Result<()> {
    if a.context.is_some() {
        bail!("--context: {} is a flow of images; it takes no context", a.checkpoint.display());
    }
    if !(a.temperature.is_finite() && a.temperature >= 0.0) {
        bail!("--temperature {}: a temperature is a finite number ≥ 0", a.temperature);
    }
    let images = match a.data.as_deref().map(DataSpec::parse).transpose()? {
        Some(spec) => Some(super::test_images(&spec, space)?),
        None => None,
    };
    tch::manual_seed(a.seed as i64);
    let written = ImageFigures {
        flow: flow.stack().run(engine),
        space,
        images: images.as_ref(),
        report: None,
        label: "",
        temperature: a.temperature,
        n_samples: non_negative("-n", a.n)?.min(100),
        seed: a.seed,
    }
    .draw(&a.out_dir)
    .with_context(|| format!("the figures of {}", a.checkpoint.display()))?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}
