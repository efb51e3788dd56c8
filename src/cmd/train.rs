//! `rnvp train`: a preset and the flags to a configuration, data, a flow, the trainer with its
//! progress bar, and what to try when a run stops.
use super::{compute, parse_numbers, toy_noise, toy_points};
use crate::cli::{self, positive};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rnvp::checkpoint::Checkpoint;
use rnvp::config::ImageShape;
use rnvp::data::{io, Bounds, BoundsMode, DataSpace, DataSpec, Scaler};
use rnvp::figures::Figures;
use rnvp::image_figures::ImageFigures;
use rnvp::presets::Preset;
use rnvp::train::{best_path, last_path, Event, TrainConfig, TrainData, Trainer};
use rnvp::{Engine, Flow, FlowConfig, Init};
use serde_json::json;
use std::path::Path;
use tch::{Device, Kind};

/// Conditioner channels of an image architecture unless --hidden says otherwise.
const IMAGE_HIDDEN: i64 = 64;
/// Couplings per group of an image architecture unless --layers says otherwise.
const IMAGE_STEPS: i64 = 4;

/// The flags that shape a new flow (a resumed run takes its shape from the checkpoint).
const ARCHITECTURE_FLAGS: [&str; 12] = [
    "scales",
    "arch",
    "coupling",
    "scale",
    "actnorm",
    "mixing",
    "batch_norm",
    "final_scale",
    "layers",
    "hidden",
    "k",
    "init",
];

pub(crate) fn train(mut a: cli::TrainArgs, matches: &clap::ArgMatches) -> Result<()> {
    let sub = matches.subcommand_matches("train").context("invariant: train matches")?;
    let mut preset_used = None;
    if let Some(name) = a.preset.clone() {
        let names: Vec<&str> = rnvp::presets::ALL.iter().map(|p| p.name).collect();
        let preset = rnvp::presets::named(&name)
            .with_context(|| format!("--preset {name}: unknown preset (expected {})", names.join(", ")))?;
        a.apply_preset(&preset, sub);
        preset_used = Some(preset);
    }
    let (device, kind) = compute(&a.compute)?;
    let mut cfg = a.train_config()?;
    let arch = a.architecture()?;
    let spec = DataSpec::parse(&a.data)?;
    let images = spec.is_images();
    let file = matches!(spec, DataSpec::File(_));
    let init = a.initialisation(arch, file || images)?;
    cfg.patience = a.patience(file || images, preset_used.and_then(|p| p.patience))?;
    if images && (a.context != 0 || a.bounds.is_some() || a.bounds_file.is_some() || a.whiten.is_some()) {
        bail!(
            "--context, --bounds, --bounds-file and --whiten apply to tables, not to images ({})",
            spec.name()
        );
    }
    let on_command_line = |id: &str| sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    if !images && (a.levels.is_some() || on_command_line("scales") || on_command_line("logit_alpha")) {
        bail!(
            "--levels, --scales and --logit-alpha apply to images (--data digits, a .npy of images or a directory \
             of PNG files), not to {}",
            spec.name()
        );
    }
    if images && !(a.logit_alpha > 0.0 && a.logit_alpha < 0.5) {
        bail!("--logit-alpha {}: the logit's α must lie in (0, 0.5)", a.logit_alpha);
    }
    if a.resume.is_none() && !arch.image && on_command_line("scales") {
        bail!("--scales: {} is a vector flow (on images, it models the flattened pixels); scales belong to realnvp-image and glow-image", arch.name());
    }
    if a.resume.is_none() && arch.image && on_command_line("init") {
        bail!(
            "--init: an image flow starts as the R-NVP and Glow papers start it (PyTorch's convolution draws, the last \
             convolution of each conditioner at zero); --init applies to vector flows"
        );
    }
    if arch.image && a.k.is_some() {
        bail!("--k: an image flow's couplings split by masks (checkerboard, channels), not at a column");
    }
    if arch.image && !images {
        bail!("--arch {}: an image architecture needs images (--data digits, a .npy [n, h, w(, c)] or a directory of PNG files), not {}", arch.name(), spec.name());
    }
    let context = cli::non_negative("--context", a.context)? as i64;
    if a.bounds_mode.is_some() && a.bounds.is_none() && a.bounds_file.is_none() {
        bail!("--bounds-mode needs a box: give --bounds LO,HI or --bounds-file");
    }
    if !file
        && !images
        && (context > 0 || a.bounds.is_some() || a.bounds_file.is_some() || a.whiten == Some(true))
    {
        bail!(
            "--context, --bounds, --bounds-file and --whiten need a data file (.csv / .npy), not the toy set {}",
            spec.name()
        );
    }
    if a.reversible_backprop {
        rnvp::tune_allocator_for_memory();
    }
    Checkpoint::check_writable(&a.out)?;
    if a.out.extension().is_none_or(|e| e != "safetensors") {
        bail!(
            "{}: training checkpoints are .safetensors (they keep the optimizer state and the data scaler); \
             convert the result afterwards with `rnvp convert`",
            a.out.display()
        );
    }
    if !file && !images {
        // a toy set's batches and validation points are drawn, not read: size them first
        super::check_rows("--batch-size", cfg.batch_size, 2)?;
        super::check_rows("--val-size", cfg.val_size, 2)?;
    }
    let resume = match &a.resume {
        Some(p) => Some((p.as_path(), Checkpoint::load_with(p, a.compute.prefix.as_deref())?)),
        None => None,
    };
    // a resumed run keeps its checkpoint's bounds mode unless --bounds-mode says otherwise
    let mode = resume.as_ref().and_then(|(_, ck)| ck.bounds.as_ref()).map(|b| b.mode);
    // a resumed image flow keeps its checkpoint's logit unless --logit-alpha says otherwise
    if let (Some(i), false) = (resume.as_ref().and_then(|(_, ck)| ck.images), on_command_line("logit_alpha"))
    {
        a.logit_alpha = i.alpha;
    }
    let (train_data, scaler) = training_data(&spec, &a, &cfg, context as usize, preset_used.as_ref(), mode)?;
    if let Some(rows) = train_data.train_rows() {
        // a file is validated once per epoch unless --val-every says otherwise
        let batches = rows.div_ceil(cfg.batch_size).max(1);
        if sub.value_source("val_every") != Some(clap::parser::ValueSource::CommandLine) {
            cfg.val_every = batches;
        }
        // a preset's schedule may span a number of epochs rather than of steps
        if let Some(p) =
            preset_used.filter(|_| sub.value_source("steps") != Some(clap::parser::ValueSource::CommandLine))
        {
            cfg.steps = p.steps_for(batches) as usize;
        }
    }
    let d = train_data.dim() as i64 - context;
    let given = |id: &str| sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let fresh = match train_data.image_space() {
        Some(space) if arch.image => {
            // image architectures count conditioner channels and couplings per group
            let set = |id: &str| given(id) || preset_used.is_some();
            let hidden = if set("hidden") { positive("--hidden", a.hidden)? } else { IMAGE_HIDDEN };
            let steps = if set("layers") { positive("--layers", a.layers)? } else { IMAGE_STEPS };
            let shape = ImageShape {
                channels: space.channels as i64,
                height: space.height as i64,
                width: space.width as i64,
                scales: positive("--scales", a.scales)?,
            };
            shape.validate(&arch).with_context(|| spec.name())?;
            FlowConfig::image(arch, shape, hidden, steps)
        }
        _ => FlowConfig::stacked(
            d,
            a.k.unwrap_or(d / 2),
            positive("--hidden", a.hidden)?,
            positive("--layers", a.layers)?,
        )
        .with_arch(arch)
        .with_init(init)
        .with_context(context),
    };
    if resume.is_none() {
        check_size(&fresh, kind)?;
    }
    check_activations(&fresh, cfg.batch_size, kind)?;
    tch::manual_seed(a.seed as i64);
    if resume.is_some() {
        let given: Vec<String> = ARCHITECTURE_FLAGS
            .iter()
            .filter(|id| sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        if !given.is_empty() {
            eprintln!("note: --resume continues the checkpoint's architecture; {} ignored", given.join(", "));
        }
    }
    let flow = model_to_train(fresh, &train_data, resume.as_ref(), (device, kind), cfg.engine)?;
    let flow_cfg = *flow.stack().config();
    let optimizer = match &resume {
        Some((_, ck)) => {
            Some(ck.optimizer.as_ref().context(
                "--resume: the checkpoint has no optimizer state (a run with early stopping keeps it in <name>.last.safetensors)",
            )?)
        }
        None => None,
    };
    let start = optimizer.map_or(0, |o| o.step.max(0) as usize);
    if start >= cfg.steps && (cfg.steps > 0 || start > 0) {
        bail!("--resume: the checkpoint is at step {start}; ask for more --steps than that");
    }
    let mut info = serde_json::Map::new();
    info.insert("data".into(), json!(spec.name()));
    let trainer = Trainer {
        flow: &flow,
        data: &train_data,
        cfg: &cfg,
        scaler: scaler.clone(),
        out: Some(a.out.clone()),
        info,
    };

    let pb = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new((cfg.steps - start) as u64) };
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg} {per_sec} ETA {eta}")
            .expect("invariant: a valid template") // invariant: the template is a literal
            .progress_chars("=> "),
    );
    let quiet = a.quiet;
    if let (false, Some(img), Some(space)) = (quiet, flow_cfg.image, train_data.image_space()) {
        eprintln!(
            "training {} on {} ({} × {} × {} images, {} levels; {} scales, {} couplings per group, {} channels, \
             {} layers in all) for {} steps on {device:?}{}",
            flow_cfg.arch.name(),
            spec.name(),
            img.channels,
            img.height,
            img.width,
            space.levels,
            img.scales,
            flow_cfg.layers,
            flow_cfg.hidden,
            flow_cfg.layer_count(),
            cfg.steps - start,
            if cfg.patience > 0 { format!(" (early stopping: patience {})", cfg.patience) } else { String::new() }
        );
    } else if !quiet {
        eprintln!(
            "training {} on {} ({} layers, hidden {}, d = {d}, k = {}{}) for {} steps on {device:?}{}",
            if flow_cfg.layers == 1 {
                "1 coupling layer".to_string()
            } else {
                format!("{} coupling layers", flow_cfg.layers)
            },
            spec.name(),
            flow_cfg.layers,
            flow_cfg.hidden,
            flow_cfg.k,
            if context > 0 { format!(", context {context}") } else { String::new() },
            cfg.steps - start,
            if cfg.patience > 0 {
                format!(" (early stopping: patience {})", cfg.patience)
            } else {
                String::new()
            }
        );
    }
    let space = train_data.image_space().copied();
    // an image's NLL is also given in bits per dimension of its discrete values
    let in_bits =
        |nll: f64| space.map_or(String::new(), |s| format!(" ({:.4} bits/dim)", s.bits_per_dim(nll)));
    let report = trainer.run(optimizer, |ev| match ev {
        Event::Step { loss, .. } => {
            pb.inc(1);
            match &space {
                Some(s) => pb.set_message(format!("loss {:.4} bits/dim", s.bits_per_dim(loss))),
                None => pb.set_message(format!("loss {loss:.4}")),
            }
        }
        Event::Validation { step, nll, best } => {
            if !quiet {
                pb.suspend(|| {
                    eprintln!(
                        "step {step:>6}: validation NLL {nll:.4} nats{}{}",
                        in_bits(nll),
                        if best { " (best)" } else { "" }
                    )
                });
            }
        }
    })?;
    pb.finish_and_clear();
    if let Some(log) = &a.log {
        io::write_atomic(log, report.csv().as_bytes())?;
    }
    match (report.diverged, report.best) {
        // with early stopping the file holds the best validation model, which is good
        (Some(stop), Some((step, nll))) if cfg.patience > 0 && !report.losses.is_empty() => eprintln!(
            "note: {stop}: training stopped there; {} keeps the best validation model (step {step}, NLL {nll:.4})",
            a.out.display()
        ),
        (Some(stop), _) => bail!("{stop}: training stopped; {}", after_stop(&report, &a, &cfg, flow_cfg.init)),
        (None, _) => {}
    }
    if report.losses.is_empty() {
        bail!("no training steps were run (--steps {})", cfg.steps);
    }
    if let Some(first) = report.skipped.first() {
        eprintln!(
            "note: {} step(s) with a non-finite loss or gradient were skipped (the first at step {first})",
            report.skipped.len()
        );
    }
    if let (Some(dir), Some(space)) = (&a.plot_dir, train_data.image_space()) {
        // reconstructions and interpolations of the held-out images (the test set stays unseen)
        let held_out = super::training_images(&spec, Some(space.levels))?;
        // read again: a file that changed during training is refused, not misread
        let start = train_data.train_rows().unwrap_or(0);
        if held_out.n <= start || held_out.dim() != space.dim() {
            bail!("{}: the images changed during training", spec.name());
        }
        let held_out = held_out.select(start..held_out.n);
        tch::manual_seed(a.seed as i64);
        ImageFigures {
            flow: flow.stack().run(cfg.engine),
            space,
            images: Some(&held_out),
            report: Some(&report),
            label: &flow_cfg.arch.describe(),
            temperature: 1.0,
            n_samples: 50,
            seed: a.seed,
        }
        .draw(dir)?;
    } else if let Some(dir) = &a.plot_dir {
        let points = match &spec {
            DataSpec::Toy(set) => toy_points(*set, a.noise, 3000, a.seed.wrapping_add(1))?,
            // read again, so checked again (the file may have changed during training)
            DataSpec::File(p) => super::read_rows(p, flow_cfg.d, flow_cfg.context)?,
            DataSpec::Digits | DataSpec::Images(_) => bail!("invariant: images are drawn above"),
        };
        let (d, m) = (flow_cfg.d as usize, flow_cfg.context as usize);
        // a conditional flow is drawn at its data's mean context
        let context: Option<Vec<f64>> = (m > 0).then(|| {
            (d..d + m)
                .map(|j| (0..points.rows).map(|i| points.row(i)[j]).sum::<f64>() / points.rows as f64)
                .collect()
        });
        let mut label = format!("{} layers", flow_cfg.layers);
        if m > 0 {
            label.push_str(", c: the data's mean");
        }
        Figures {
            flow: flow.stack().run(cfg.engine),
            space: Some(DataSpace {
                d,
                m,
                bounds: train_data.bounds(),
                scaler: scaler.as_ref(),
                whiten: train_data.whitening(),
            }),
            data: Some(&points),
            report: Some(&report),
            floor: None,
            label: &label,
            n_samples: 3000,
            context: context.as_deref(),
        }
        .draw(dir)?;
    }
    // a completed run ends with a validation whose NLL is finite (else it stopped above)
    let (best_step, best_nll) = report.best.context("invariant: a completed run has a best validation")?;
    if train_data.bounds().is_some_and(|b| b.mode == BoundsMode::Truncate) {
        eprintln!(
            "note: truncated bounds: the NLLs here are of the flow's density before it is divided by its mass \
             in the box (upper bounds on the truncated model's); `rnvp eval` and `log-prob` divide by it"
        );
    }
    let last = report.losses.iter().rev().copied().find(|l| l.is_finite()).unwrap_or(f64::NAN);
    if cfg.patience > 0 {
        let why = match (report.stopped_early, report.diverged) {
            (Some(step), _) => format!(
                "stopped early at step {step}: {} validations (every {} steps) without a better NLL",
                cfg.patience, cfg.val_every
            ),
            (_, Some(stop)) => format!("stopped: {stop}"),
            (None, None) => format!("ran all {} steps", cfg.steps),
        };
        let latest = if report.diverged.is_none() {
            format!(" (latest state, to --resume: {})", last_path(&a.out).display())
        } else {
            String::new()
        };
        println!(
            "trained {} steps in {:.1} s ({:.0} steps/s), {why}; final loss {last:.4}; kept step {best_step} \
             (best validation NLL {best_nll:.4} nats{}) -> {}{latest}",
            report.losses.len(),
            report.seconds,
            report.steps_per_second(),
            in_bits(best_nll),
            a.out.display(),
        );
        return Ok(());
    }
    println!(
        "trained {} steps in {:.1} s ({:.0} steps/s): final loss {last:.4}, validation NLL {best_nll:.4} nats (best, step {best_step}) -> {} (best: {})",
        report.losses.len(),
        report.seconds,
        report.steps_per_second(),
        a.out.display(),
        best_path(&a.out).display()
    );
    Ok(())
}

/// What the files hold after a run stopped early, and what to try.
pub(crate) fn after_stop(
    report: &rnvp::train::TrainReport,
    a: &cli::TrainArgs,
    cfg: &TrainConfig,
    init: Init,
) -> String {
    let kept = match report.saved {
        Some(s) if s == report.start_step && report.start_step == 0 => {
            format!("{} holds the untrained initial state", a.out.display())
        }
        Some(s) if cfg.patience > 0 => format!("{} keeps the best model (step {s})", a.out.display()),
        Some(s) => format!("{} keeps the last good checkpoint (step {s})", a.out.display()),
        None => format!("nothing was written to {}", a.out.display()),
    };
    let best = match report.best {
        Some((s, nll)) if cfg.patience == 0 => {
            format!(", {} the best (step {s}, validation NLL {nll:.4})", best_path(&a.out).display())
        }
        _ => String::new(),
    };
    let mut tries = vec![format!("a lower --lr (now {})", cfg.lr)];
    if cfg.clip_grad.is_none() {
        tries.push("--clip-grad 1".into());
    }
    if init != Init::Identity {
        tries.push("--init identity".into());
    }
    format!("{kept}{best}; try {}", tries.join(", "))
}

/// The batches to train on and, for a file, the scaler that standardizes it (`context`: the
/// file's last columns that are a conditional flow's context).
fn training_data(
    spec: &DataSpec,
    a: &cli::TrainArgs,
    cfg: &TrainConfig,
    context: usize,
    preset: Option<&Preset>,
    resumed: Option<BoundsMode>,
) -> Result<(TrainData, Option<Scaler>)> {
    Ok(match spec {
        DataSpec::Toy(set) => (TrainData::Toy { set: *set, noise: toy_noise(*set, a.noise)? }, None),
        DataSpec::Digits | DataSpec::Images(_) => {
            let images = super::training_images(spec, a.levels)?;
            let data = TrainData::from_images(&images, cfg.val_fraction, cfg.seed, a.logit_alpha)
                .with_context(|| format!("preparing {}", spec.name()))?;
            (data, None)
        }
        DataSpec::File(p) => {
            let m = io::read_matrix(p)?;
            if m.cols < context + 2 {
                bail!(
                    "{}: {} column(s); a flow needs at least 2 modelled columns besides the {context} context column(s)",
                    p.display(),
                    m.cols
                );
            }
            let bounds = bounds(a, m.cols - context, resumed.or(preset.map(|p| p.bounds_mode)))?;
            let whiten = a.whiten.unwrap_or(true).then_some(m.cols - context);
            let (d, s) = TrainData::from_table_in(&m, cfg.val_fraction, cfg.seed, bounds.as_ref(), whiten)
                .with_context(|| format!("preparing {}", p.display()))?;
            (d, Some(s))
        }
    })
}

/// The box of the `d` modelled columns from `--bounds LO,HI` or `--bounds-file`, kept as
/// `--bounds-mode` says, else as `default` (a resumed checkpoint's mode, else the preset's), else
/// by the logit map.
fn bounds(a: &cli::TrainArgs, d: usize, default: Option<BoundsMode>) -> Result<Option<Bounds>> {
    let mode = match &a.bounds_mode {
        Some(text) => text.parse().map_err(|e| anyhow::anyhow!("--bounds-mode: {e}"))?,
        None => default.unwrap_or_default(),
    };
    Ok(box_of(a, d)?.map(|b| b.with_mode(mode)))
}

fn box_of(a: &cli::TrainArgs, d: usize) -> Result<Option<Bounds>> {
    if let Some(text) = &a.bounds {
        let v = parse_numbers(text).with_context(|| format!("--bounds {text}"))?;
        let [lo, hi] = v[..] else { bail!("--bounds {text}: expected two numbers LO,HI") };
        let b = Bounds::new(vec![lo; d], vec![hi; d]).map_err(|e| anyhow::anyhow!("--bounds {text}: {e}"))?;
        return Ok(Some(b));
    }
    let Some(path) = &a.bounds_file else { return Ok(None) };
    let m = io::read_matrix(path)?;
    if m.cols != 2 || m.rows != d {
        bail!(
            "{}: {} × {}, expected {d} rows LO,HI (one per modelled column)",
            path.display(),
            m.rows,
            m.cols
        );
    }
    let (lo, hi) = (0..d).map(|i| (m.row(i)[0], m.row(i)[1])).unzip();
    Ok(Some(Bounds::new(lo, hi).with_context(|| path.display().to_string())?))
}

/// The flow to train: `fresh` (drawn from libtorch's generator) on `device` in `kind`, or the
/// checkpoint being resumed with its weights; checked against the data's `fresh.d` columns and
/// against the `engine` that will train it.
fn model_to_train(
    fresh: FlowConfig,
    data: &TrainData,
    resume: Option<&(&Path, Checkpoint)>,
    (device, kind): (Device, Kind),
    engine: Engine,
) -> Result<Flow> {
    let flow = match resume {
        Some((path, ck)) => {
            if ck.config.d != fresh.d || ck.config.context != fresh.context {
                bail!(
                    "--resume {}: the checkpoint has d = {} and context {}, the data has {} modelled and {} context columns",
                    path.display(),
                    ck.config.d,
                    ck.config.context,
                    fresh.d,
                    fresh.context
                );
            }
            ck.check().with_context(|| format!("--resume {}", path.display()))?;
            if ck.images != data.image_space().copied() {
                let describe = |i: Option<&rnvp::data::ImageSpace>| match i {
                    Some(i) => format!(
                        "images of {} × {} × {} with {} levels (logit α {})",
                        i.channels, i.height, i.width, i.levels, i.alpha
                    ),
                    None => "rows of numbers".into(),
                };
                bail!(
                    "--resume {}: the checkpoint was trained on {}, the data are {}",
                    path.display(),
                    describe(ck.images.as_ref()),
                    describe(data.image_space())
                );
            }
            if ck.bounds.as_ref() != data.bounds() || ck.whiten.is_some() != data.whitening().is_some() {
                bail!(
                    "--resume {}: the checkpoint was trained {} bounds and {} whitening; give the same \
                     --bounds/--bounds-file, --bounds-mode and --whiten as its run",
                    path.display(),
                    ck.bounds.as_ref().map_or("without".into(), |b| format!("with {}", b.mode.name())),
                    if ck.whiten.is_some() { "with" } else { "without" }
                );
            }
            ck.config.validate()?;
            let flow = Flow::for_loading(&ck.config, device, kind)?;
            rnvp::checkpoint::load_weights(&flow, &ck.tensors)?;
            flow
        }
        None => {
            fresh.validate()?;
            Flow::new(&fresh, device, kind)?
        }
    };
    // an engine that cannot run this flow fails before training starts
    flow.stack().run(engine).fused_packing()?;
    Ok(flow)
}

/// Refuses a model whose weights and Adam's state (three copies) would be more than rnvp reads
/// back from a checkpoint, before anything is allocated: the numbers of the first two steps
/// (whose flips differ) counted from their shapes, times the steps.
fn check_size(cfg: &FlowConfig, kind: Kind) -> Result<()> {
    let steps = cfg.layers.clamp(1, 2);
    let few = FlowConfig { layers: steps, ..*cfg };
    let counted: u128 = few
        .variable_names()
        .filter(|n| !rnvp::config::is_buffer(n.rsplit('.').next().unwrap_or("")))
        .filter_map(|n| few.variable_shape(&n))
        .map(|shape| shape.iter().map(|&v| v.max(0) as u128).product::<u128>())
        .sum();
    let numbers = counted * cfg.layers.max(0) as u128 / steps as u128;
    let bytes = numbers * kind.elt_size_in_bytes() as u128 * 3;
    let (limit, how) = io::limit_and_reason(io::Contents::Checkpoint);
    if bytes > limit as u128 {
        bail!(
            "--hidden {} --layers {} (d = {}): {numbers} parameters take {} MB with Adam's state, more than rnvp \
             reads back from a checkpoint ({} MB, {how})",
            cfg.hidden,
            cfg.layers,
            cfg.d,
            bytes / 1_000_000,
            limit / 1_000_000
        );
    }
    Ok(())
}

/// Refuses an image flow whose training step would hold more activations than half the memory
/// available, before anything is allocated: each convolutional conditioner keeps about six
/// `hidden`-channel images per row for the backward pass, at the size of the images it sees.
fn check_activations(cfg: &FlowConfig, batch: usize, kind: Kind) -> Result<()> {
    let Some(img) = cfg.image else { return Ok(()) };
    let per_layer = (cfg.hidden.max(1) as u128) * (img.height as u128) * (img.width as u128) * 6;
    let bytes = per_layer * cfg.layer_count() as u128 * batch as u128 * kind.elt_size_in_bytes() as u128;
    // the checkpoint limit is 1/8 of the memory available: half of it is four times that
    let (limit, how) = io::limit_and_reason(io::Contents::Checkpoint);
    let budget = u128::from(limit) * 4;
    if bytes > budget {
        bail!(
            "--batch-size {batch} --hidden {} on {} × {} × {} images: a training step holds about {} of activations, \
             more than half the memory available ({}, from {how}); lower --batch-size or --hidden",
            cfg.hidden,
            img.channels,
            img.height,
            img.width,
            io::size_text(bytes),
            io::size_text(budget)
        );
    }
    Ok(())
}
