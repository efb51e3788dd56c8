//! `rnvp inspect`, `convert` and `export`: checkpoint files.
use crate::cli::{self};
use anyhow::{Context, Result};
use rnvp::checkpoint::Checkpoint;
use rnvp::device::parse_kind;
use serde_json::json;
use std::io::Write;

/// Numbers in the checkpoint's trained parameters (buffers such as running statistics left out).
pub(crate) fn parameter_count(ck: &Checkpoint) -> usize {
    let key = |n: &str| n.rsplit('.').next().unwrap_or("").to_string();
    ck.tensors.iter().filter(|(n, _)| !rnvp::config::is_buffer(&key(n))).map(|(_, t)| t.numel()).sum()
}

pub(crate) fn inspect(a: cli::InspectArgs) -> Result<()> {
    let ck = Checkpoint::load_with(&a.checkpoint, a.prefix.as_deref())?;
    let c = ck.config;
    // do the names and shapes fit the architecture? (checked without building the model)
    let check = ck.check();
    if a.json {
        let mut v = json!({
            "format": ck.format, "arch": c.arch.name(), "architecture": c.arch.describe(),
            "d": c.d, "k": c.k, "hidden": c.hidden, "layers": c.layers, "context": c.context,
            "layout": rnvp::checkpoint::config_json(&c)["layout"],
            "parameters": parameter_count(&ck),
            "optimizer_state": ck.optimizer.is_some(), "info": ck.info,
            "prefix": ck.prefix, "ignored": ck.ignored,
            "check": match &check { Ok(()) => "ok".to_string(), Err(e) => e.to_string() },
        });
        if let Some(s) = &ck.scaler {
            v["scaler"] = json!({ "mean": s.mean, "std": s.std });
        }
        if let Some(b) = &ck.bounds {
            v["bounds"] = rnvp::checkpoint::bounds_json(b);
        }
        if let Some(w) = &ck.whiten {
            v["whiten"] = json!({ "chol": w.chol });
        }
        if let Some(i) = &ck.images {
            v["images"] = rnvp::checkpoint::images_json(i);
        }
        if let Some(img) = &c.image {
            v["image_shape"] = json!({
                "channels": img.channels, "height": img.height, "width": img.width, "scales": img.scales,
            });
        }
        // the tensor list is written one entry at a time (a file may list very many)
        let text = serde_json::to_string_pretty(&v)?;
        let body = text.strip_suffix("\n}").context("invariant: a JSON object ends in }")?;
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        write!(w, "{body},\n  \"tensors\": [")?;
        for (i, (n, t)) in ck.tensors.iter().enumerate() {
            let entry = json!({ "name": n, "dtype": format!("{:?}", t.kind()), "shape": t.size() });
            write!(w, "{}\n    {entry}", if i == 0 { "" } else { "," })?;
        }
        writeln!(w, "\n  ]\n}}")?;
        w.flush()?;
        return Ok(());
    }
    println!("{}: {}", a.checkpoint.display(), ck.format);
    if !ck.prefix.is_empty() {
        println!("prefix: '{}' (stripped from the model's names)", ck.prefix.escape_debug());
    }
    if !ck.ignored.is_empty() {
        let shown: Vec<String> = ck.ignored.iter().take(6).map(|n| n.escape_debug().to_string()).collect();
        let more =
            if ck.ignored.len() > 6 { format!(", … ({} in all)", ck.ignored.len()) } else { String::new() };
        println!("ignored: {} tensor(s) beside the model: {}{more}", ck.ignored.len(), shown.join(", "));
    }
    println!(
        "architecture: {} ({}), d = {}, k = {}, hidden = {}, layers = {}{}",
        c.arch.describe(),
        if c.layout == rnvp::Layout::Single { "R_NVP" } else { "stacked_NVP" },
        c.d,
        c.k,
        c.hidden,
        c.layers,
        if c.context > 0 {
            format!(", conditional on {} context column(s) (last)", c.context)
        } else {
            String::new()
        }
    );
    if let Some(img) = &c.image {
        println!(
            "images: {} × {} × {} (channels × height × width), {} scales, {} couplings per group, {} channels",
            img.channels, img.height, img.width, img.scales, c.layers, c.hidden
        );
    }
    if let Some(i) = &ck.images {
        println!(
            "image data: {} levels, dequantized and taken through logit(α + (1 − 2α) x), α = {}",
            i.levels, i.alpha
        );
    }
    println!("parameters: {}", parameter_count(&ck));
    match &check {
        Ok(()) => println!("check: names and shapes match the architecture"),
        Err(e) => println!("check: {e}"),
    }
    if let Some(s) = &ck.scaler {
        println!("scaler: mean {:?}, std {:?}", s.mean, s.std);
    }
    if let Some(b) = &ck.bounds {
        let how = match b.mode {
            rnvp::data::BoundsMode::Logit => "trained in logit space",
            rnvp::data::BoundsMode::Truncate => {
                "truncated: sampled by rejection, densities divided by the mass inside"
            }
        };
        println!("bounds: lo {:?}, hi {:?} ({how})", b.lo, b.hi);
    }
    if ck.whiten.is_some() {
        println!("whitening: the standardized modelled columns are decorrelated (Cholesky factor stored)");
    }
    if let Some(o) = &ck.optimizer {
        println!("optimizer state: Adam, step {}", o.step);
    }
    if !ck.info.is_empty() {
        println!("info: {}", serde_json::Value::Object(ck.info.clone()));
    }
    const LISTED: usize = 64;
    for (n, t) in ck.tensors.iter().take(LISTED) {
        let n = n.escape_debug().to_string();
        println!("  {n:<32} {:<7} {:?}", format!("{:?}", t.kind()), t.size());
    }
    if ck.tensors.len() > LISTED {
        println!("  … and {} more tensors (--json lists them all)", ck.tensors.len() - LISTED);
    }
    Ok(())
}

pub(crate) fn convert(a: cli::ConvertArgs) -> Result<()> {
    let ck = match &a.images {
        Some(text) => {
            let sizes: Vec<usize> = text
                .split(['x', '×'])
                .map(|v| v.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .ok()
                .filter(|v: &Vec<usize>| v.len() == 3)
                .with_context(|| {
                    format!("--images {text}: expected channels × height × width, e.g. 1x8x8")
                })?;
            let levels = a.levels.context("--images needs --levels")?;
            let space = rnvp::data::ImageSpace {
                channels: sizes[0],
                height: sizes[1],
                width: sizes[2],
                levels,
                alpha: a.logit_alpha.unwrap_or(rnvp::data::dequantize::ALPHA),
            };
            space.validate().with_context(|| format!("--images {text} --levels {levels}"))?;
            Checkpoint::load_image_flow(&a.input, a.prefix.as_deref(), space)?
        }
        None if a.levels.is_some() => anyhow::bail!("--levels applies with --images"),
        None if a.logit_alpha.is_some() => anyhow::bail!("--logit-alpha applies with --images"),
        None => Checkpoint::load_with(&a.input, a.prefix.as_deref())?,
    };
    // a file rnvp would refuse to use is not written
    ck.check().with_context(|| a.input.display().to_string())?;
    let dropped: Vec<&str> = [
        (ck.images.is_some(), "the image data's levels and logit"),
        (ck.config.image.is_some(), "the image shape (a state_dict holds no image size)"),
        (ck.scaler.is_some(), "the data scaler (mean/std)"),
        (ck.whiten.is_some(), "the whitening"),
        (ck.bounds.is_some(), "the bounds"),
    ]
    .into_iter()
    .filter_map(|(has, what)| has.then_some(what))
    .collect();
    if !dropped.is_empty() && a.output.extension().is_some_and(|e| e != "safetensors") {
        let truncated = ck.bounds.as_ref().is_some_and(|b| b.mode == rnvp::data::BoundsMode::Truncate);
        eprintln!(
            "warning: {} holds only the state_dict: {} stay(s) in .safetensors files (the model there works in \
             the flow's coordinates; {})",
            a.output.display(),
            dropped.join(", "),
            if truncated {
                "a flow truncated to its box cannot be exported either: its density needs the box's mass"
            } else {
                "`rnvp export` bakes them into TorchScript functions"
            }
        );
    }
    ck.save(&a.output)?;
    println!("{} -> {}", a.input.display(), a.output.display());
    Ok(())
}

pub(crate) fn export(a: cli::ExportArgs) -> Result<()> {
    let ck = Checkpoint::load_with(&a.checkpoint, a.prefix.as_deref())?;
    ck.check().with_context(|| a.checkpoint.display().to_string())?;
    for p in rnvp::checkpoint::export::export_torchscript(&ck, &a.out, parse_kind(&a.dtype)?)? {
        println!("{}", p.display());
    }
    Ok(())
}
