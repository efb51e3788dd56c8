//! The subcommands, one file each, and what they share: device and engine flags, loading a
//! checkpoint, reading and writing rows, toy points.
pub mod datasets;
pub mod eval;
pub mod files;
pub mod plot;
pub mod sample;
pub mod train;

use crate::cli::Compute;
use anyhow::{bail, Context, Result};
use rnvp::checkpoint::Checkpoint;
use rnvp::data::images::DIGITS_TEST;
use rnvp::data::{self, io, DataSpec, ImageSpace, Images, Matrix, Rng};
use rnvp::device::{parse_device, parse_kind};
use rnvp::{Engine, Flow};
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind};

/// Device and dtype from the flags (and the thread count applied).
pub(crate) fn compute(c: &Compute) -> Result<(Device, Kind)> {
    if let Some(t) = c.threads {
        if !(1..=MAX_THREADS).contains(&t) {
            bail!("--threads {t}: between 1 and {MAX_THREADS}");
        }
        tch::set_num_threads(t);
    }
    Ok((parse_device(&c.device)?, parse_kind(&c.dtype)?))
}

/// The most threads `--threads` takes (far beyond any machine's cores; above it thread creation
/// itself fails).
const MAX_THREADS: i32 = 1024;

/// The checkpoint at `path` as a flow on `--device` in `--dtype`, and the `--engine` to run it.
pub(crate) fn load_flow(path: &Path, c: &Compute) -> Result<(Flow, Checkpoint, Engine)> {
    let (device, kind) = compute(c)?;
    let engine = c.engine()?;
    let ck = Checkpoint::load_with(path, c.prefix.as_deref())?;
    let flow = ck.to_flow(device, kind).with_context(|| format!("loading {}", path.display()))?;
    Ok((flow, ck, engine))
}

/// Comma-separated numbers (`-0.6,0.2`).
pub(crate) fn parse_numbers(text: &str) -> Result<Vec<f64>> {
    text.split(',')
        .map(|v| {
            let v = v.trim();
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                _ => bail!("'{v}' is not a finite number"),
            }
        })
        .collect()
}

/// The images to train on: the digits' first 1437 (the last [`DIGITS_TEST`] are the test set), or
/// every image of a `.npy` file or a directory of PNG files.
pub(crate) fn training_images(spec: &DataSpec, levels: Option<u32>) -> Result<Images> {
    Ok(match spec {
        DataSpec::Digits => {
            let all = rnvp::data::images::digits(levels)?;
            all.select(0..all.n - DIGITS_TEST)
        }
        DataSpec::Images(p) => Images::read(p, levels)?,
        other => bail!("{}: not images", other.name()),
    })
}

/// The images to evaluate on: the digits' test set (the last [`DIGITS_TEST`]), or every image of
/// a `.npy` file or a directory of PNG files; checked against the model's image `space`.
pub(crate) fn test_images(spec: &DataSpec, space: &ImageSpace) -> Result<Images> {
    let images = match spec {
        DataSpec::Digits => {
            let all = rnvp::data::images::digits(Some(space.levels))?;
            all.select(all.n - DIGITS_TEST..all.n)
        }
        DataSpec::Images(p) => {
            Images::read_for(p, Some(space.levels), Some([space.channels, space.height, space.width]))?
        }
        other => bail!("{}: the model is a flow of images; give images (digits, a .npy of images or a directory of PNG files)", other.name()),
    };
    if (images.channels, images.height, images.width) != (space.channels, space.height, space.width) {
        bail!(
            "{}: images of {} × {} × {} (channels × height × width), but the model's are {} × {} × {}",
            spec.name(),
            images.channels,
            images.height,
            images.width,
            space.channels,
            space.height,
            space.width
        );
    }
    Ok(images)
}

/// Reads rows for a model of dimension `d` with `m` context columns (last).
pub(crate) fn read_rows(path: &Path, d: i64, m: i64) -> Result<Matrix> {
    let rows = io::read_matrix(path)?;
    if rows.cols as i64 != d + m {
        if m > 0 {
            bail!(
                "{}: {} columns, but the model expects {} ({d} modelled, then {m} context)",
                path.display(),
                rows.cols,
                d + m
            );
        }
        bail!("{}: {} columns, but the model expects {d}", path.display(), rows.cols);
    }
    Ok(rows)
}

pub(crate) fn header(prefix: &str, d: usize) -> Vec<String> {
    (0..d).map(|i| format!("{prefix}{i}")).collect()
}

/// Writes rows to `out` (.csv or .npy) or as CSV to stdout.
pub(crate) fn write_rows(out: Option<&Path>, m: &Matrix, header: &[String]) -> Result<()> {
    match out {
        Some(p) => Ok(io::write_matrix(p, m, header)?),
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            match io::write_csv(&mut w, m, header).and_then(|_| w.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
                _ => Ok(()),
            }
        }
    }
}

pub(crate) fn toy_noise(set: data::ToySet, noise: Option<f64>) -> Result<f64> {
    let noise = noise.unwrap_or(set.default_noise());
    if !(noise.is_finite() && noise >= 0.0) {
        bail!("--noise {noise}: must be a non-negative number");
    }
    Ok(noise)
}

/// Toy points: `n` drawn with `seed`, standardized on themselves (as the notebook does).
pub(crate) fn toy_points(set: data::ToySet, noise: Option<f64>, n: usize, seed: u64) -> Result<Matrix> {
    check_points(n, 2)?;
    let noise = toy_noise(set, noise)?;
    Ok(data::scaler::standardize(&set.sample(n, noise, &mut Rng::new(seed)))?)
}

/// Checks that `n` points of `d` columns fit in what rnvp holds at once (the share of the available
/// memory it reads data files into), before anything is drawn.
pub(crate) fn check_points(n: usize, d: usize) -> Result<()> {
    check_rows("-n", n, d)
}

/// [`check_points`] for `n` rows asked for by the flag `flag`.
pub(crate) fn check_rows(flag: &str, n: usize, d: usize) -> Result<()> {
    let (limit, reason) = io::limit_and_reason(io::Contents::Data);
    let bytes = (n as u128) * (d as u128) * 8;
    if bytes > limit as u128 {
        bail!(
            "{flag} {n}: {n} points of {d} columns take {}, more than rnvp holds at once ({}: {reason})",
            io::size_text(bytes),
            io::size_text(limit)
        );
    }
    Ok(())
}

/// `log Z(c)` of each row of a truncated flow (zeros otherwise), from draws seeded with
/// [`NORMALIZER_SEED`] and each row's context, so that a file gives the same numbers every run;
/// says how it was estimated.
pub(crate) fn normalizer(run: rnvp::Run, space: &data::DataSpace, rows: &Matrix) -> Result<Vec<f64>> {
    match rnvp::truncation::normalizer(run, space, rows, NORMALIZER_SEED)? {
        None => Ok(vec![0.0; rows.rows]),
        Some(z) => {
            eprintln!(
                "note: truncated to the box: log-densities divide by the flow's mass there, estimated from {} \
                 draws at each of {} context(s) (standard error of log Z at most {:.4})",
                z.draws, z.contexts, z.max_se
            );
            Ok(z.log_z)
        }
    }
}

/// The seed of the draws that estimate a truncated flow's normalizer.
const NORMALIZER_SEED: u64 = 0;
