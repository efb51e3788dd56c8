//! `rnvp datasets`: a toy set's points to a file.
use super::{check_points, header, toy_points, write_rows};
use crate::cli::{self, non_negative};
use anyhow::{bail, Context, Result};
use rnvp::data::{self};

pub(crate) fn datasets(a: cli::DatasetsArgs) -> Result<()> {
    let Some(name) = &a.name else {
        for set in data::ToySet::all() {
            println!("{:<16} {}", set.name(), set.description());
        }
        return Ok(());
    };
    let names: Vec<&str> = data::ToySet::all().iter().map(|s| s.name()).collect();
    let set = data::ToySet::from_name(name)
        .with_context(|| format!("datasets: unknown set '{name}' (expected one of {})", names.join(", ")))?;
    let n = non_negative("-n", a.n.context("datasets: give the number of points with -n")?)?;
    if n < 2 {
        bail!("-n {n}: a toy set is standardised on its points; draw at least 2");
    }
    check_points(n, 2)?;
    let out = a.out.as_deref().context("datasets: give the file to write with --out (.csv or .npy)")?;
    let points = toy_points(set, a.noise, n, a.seed)?;
    write_rows(Some(out), &points, &header("x", points.cols))?;
    println!("{n} points of {} -> {}", set.name(), out.display());
    Ok(())
}
