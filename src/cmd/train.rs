//! `rnvp train`: a preset and the flags to a configuration, data, a flow, the trainer with its
//! progress bar, and what to try when a run stops.
use super::{compute, toy_noise, toy_points};
use crate::cli::{self, positive};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rnvp::checkpoint::Checkpoint;
use rnvp::data::{io, DataSpec, Scaler};
use rnvp::figures::Figures;
use rnvp::train::{best_path, Event, TrainConfig, TrainData, Trainer};
use rnvp::{Engine, Flow, FlowConfig, Init};
use serde_json::json;
use std::path::Path;
use tch::{Device, Kind};

/// The flags that shape a new flow (a resumed run takes its shape from the checkpoint).
const ARCHITECTURE_FLAGS: [&str; 11] = [
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
    if let Some(name) = a.preset.clone() {
        let names: Vec<&str> = rnvp::presets::ALL.iter().map(|p| p.name).collect();
        let preset = rnvp::presets::named(&name)
            .with_context(|| format!("--preset {name}: unknown preset (expected {})", names.join(", ")))?;
        a.apply_preset(&preset, sub);
    }
    let (device, kind) = compute(&a.compute)?;
    let cfg = a.train_config()?;
    let arch = a.architecture()?;
    let init = a.initialisation(arch)?;
    if a.reversible_backprop {
        rnvp::tune_allocator_for_memory();
    }
    let spec = DataSpec::parse(&a.data)?;
    Checkpoint::check_writable(&a.out)?;
    if a.out.extension().is_none_or(|e| e != "safetensors") {
        bail!(
            "{}: training checkpoints are .safetensors (they keep the optimizer state and the data scaler); \
             convert the result afterwards with `rnvp convert`",
            a.out.display()
        );
    }
    let (train_data, scaler) = training_data(&spec, &a, &cfg)?;
    let d = train_data.dim() as i64;
    let resume = match &a.resume {
        Some(p) => Some((p.as_path(), Checkpoint::load_with(p, a.compute.prefix.as_deref())?)),
        None => None,
    };
    let fresh = FlowConfig::stacked(
        d,
        a.k.unwrap_or(d / 2),
        positive("--hidden", a.hidden)?,
        positive("--layers", a.layers)?,
    )
    .with_arch(arch)
    .with_init(init);
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
    let flow = model_to_train(fresh, resume.as_ref(), (device, kind), cfg.engine)?;
    let flow_cfg = *flow.stack().config();
    let optimizer = match &resume {
        Some((_, ck)) => {
            Some(ck.optimizer.as_ref().context("--resume: the checkpoint has no optimizer state")?)
        }
        None => None,
    };
    let start = optimizer.map_or(0, |o| o.step.max(0) as usize);
    if start >= cfg.steps && cfg.steps > 0 {
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
    if !quiet {
        eprintln!(
            "training {} on {} ({} layers, hidden {}, d = {d}, k = {}) for {} steps on {device:?}",
            if flow_cfg.layers == 1 {
                "1 coupling layer".to_string()
            } else {
                format!("{} coupling layers", flow_cfg.layers)
            },
            spec.name(),
            flow_cfg.layers,
            flow_cfg.hidden,
            flow_cfg.k,
            cfg.steps - start
        );
    }
    let report = trainer.run(optimizer, |ev| match ev {
        Event::Step { loss, .. } => {
            pb.inc(1);
            pb.set_message(format!("loss {loss:.4}"));
        }
        Event::Validation { step, nll, best } => {
            if !quiet {
                pb.suspend(|| {
                    eprintln!(
                        "step {step:>6}: validation NLL {nll:.4} nats{}",
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
    if let Some(stop) = report.diverged {
        bail!("{stop}: training stopped; {}", after_stop(&report, &a, &cfg, flow_cfg.init));
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
    if let Some(dir) = &a.plot_dir {
        let points = match &spec {
            DataSpec::Toy(set) => toy_points(*set, a.noise, 3000, a.seed.wrapping_add(1))?,
            DataSpec::File(p) => io::read_matrix(p)?,
        };
        let label = format!("{} layers", flow_cfg.layers);
        Figures {
            flow: flow.stack().run(cfg.engine),
            scaler: scaler.as_ref(),
            data: Some(&points),
            report: Some(&report),
            floor: None,
            label: &label,
            n_samples: 3000,
        }
        .draw(dir)?;
    }
    // a completed run ends with a validation whose NLL is finite (else it stopped above)
    let (best_step, best_nll) = report.best.context("invariant: a completed run has a best validation")?;
    let last = report.losses.iter().rev().copied().find(|l| l.is_finite()).unwrap_or(f64::NAN);
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
        Some(s) => format!("{} keeps the last good checkpoint (step {s})", a.out.display()),
        None => format!("nothing was written to {}", a.out.display()),
    };
    let best = match report.best {
        Some((s, nll)) => {
            format!(", {} the best (step {s}, validation NLL {nll:.4})", best_path(&a.out).display())
        }
        None => String::new(),
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

/// The batches to train on and, for a file, the scaler that standardizes it.
fn training_data(
    spec: &DataSpec,
    a: &cli::TrainArgs,
    cfg: &TrainConfig,
) -> Result<(TrainData, Option<Scaler>)> {
    Ok(match spec {
        DataSpec::Toy(set) => (TrainData::Toy { set: *set, noise: toy_noise(*set, a.noise)? }, None),
        DataSpec::File(p) => {
            let m = io::read_matrix(p)?;
            if m.cols < 2 {
                bail!("{}: {} column(s); a flow needs at least 2", p.display(), m.cols);
            }
            let (d, s) = TrainData::from_table(&m, cfg.val_fraction, cfg.seed)
                .with_context(|| format!("preparing {}", p.display()))?;
            (d, Some(s))
        }
    })
}

/// The flow to train: `fresh` (drawn from libtorch's generator) on `device` in `kind`, or the
/// checkpoint being resumed with its weights; checked against the data's `fresh.d` columns and
/// against the `engine` that will train it.
fn model_to_train(
    fresh: FlowConfig,
    resume: Option<&(&Path, Checkpoint)>,
    (device, kind): (Device, Kind),
    engine: Engine,
) -> Result<Flow> {
    let flow = match resume {
        Some((path, ck)) => {
            if ck.config.d != fresh.d {
                bail!(
                    "--resume {}: the checkpoint has d = {}, the data has {} columns",
                    path.display(),
                    ck.config.d,
                    fresh.d
                );
            }
            ck.check().with_context(|| format!("--resume {}", path.display()))?;
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
