//! The `rnvp` command: parses flags (cli.rs) and calls the library.
mod cli;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches};
use cli::{non_negative, positive, Cli, Command, Compute};
use indicatif::{ProgressBar, ProgressStyle};
use rnvp::checkpoint::Checkpoint;
use rnvp::data::{self, io, DataSpec, Matrix, Rng, Scaler};
use rnvp::device::{parse_device, parse_kind};
use rnvp::figures::Figures;
use rnvp::train::{best_path, Event, TrainConfig, TrainData, Trainer};
use rnvp::{Engine, Flow, FlowConfig, Init};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use tch::{Device, Kind};

fn main() -> ExitCode {
    rnvp::tune_allocator();
    // libtorch failures surface as panics in tch's infallible ops: report them in one line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown error");
        if msg.contains("Broken pipe") {
            // the reader of our output went away (`rnvp inspect m.pt | head`): stop quietly
            std::process::exit(141);
        }
        eprintln!("error: internal: {}", rnvp::error::first_line(msg));
    }));
    let parsed = Cli::command().try_get_matches().and_then(|m| {
        let cli = Cli::from_arg_matches(&m)?;
        Ok((cli, m))
    });
    let (cli, matches) = match parsed {
        Ok(v) => v,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message on one line: drop the usage and "--help" hints, join the rest
            let text = e.render().to_string();
            let keep: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
                })
                .collect();
            eprintln!("{}", keep.join(" "));
            return ExitCode::from(2);
        }
    };
    let code = match run(cli.command, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", rnvp::error::first_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    };
    if std::env::var_os("RNVP_PEAK_MEMORY").is_some() {
        report_peak_memory();
    }
    code
}

/// With `RNVP_PEAK_MEMORY` set, the command's peak resident memory (Linux's VmHWM) goes to stderr
/// as a last line: `peak memory: N kB`.
fn report_peak_memory() {
    match rnvp::sys::peak_memory_kb() {
        Some(kb) => eprintln!("peak memory: {kb} kB"),
        None => eprintln!("peak memory: unknown (no /proc/self/status)"),
    }
}

fn run(command: Command, matches: &clap::ArgMatches) -> Result<()> {
    match command {
        Command::Train(mut a) => {
            if let Some(name) = a.preset.clone() {
                let sub = matches.subcommand_matches("train").context("invariant: train matches")?;
                let names: Vec<&str> = rnvp::presets::ALL.iter().map(|p| p.name).collect();
                let preset = rnvp::presets::named(&name).with_context(|| {
                    format!("--preset {name}: unknown preset (expected {})", names.join(", "))
                })?;
                a.apply_preset(&preset, sub);
            }
            train(*a)
        }
        Command::Eval(a) => eval(a),
        Command::Sample(a) => sample(a),
        Command::LogProb(a) => map(a, Map::LogProb),
        Command::Encode(a) => map(a, Map::Encode),
        Command::Decode(a) => map(a, Map::Decode),
        Command::Plot(a) => plot(a),
        Command::Inspect(a) => inspect(a),
        Command::Convert(a) => {
            let ck = Checkpoint::load_with(&a.input, a.prefix.as_deref())?;
            // a file rnvp would refuse to use is not written
            ck.check().with_context(|| a.input.display().to_string())?;
            if ck.scaler.is_some() && a.output.extension().is_some_and(|e| e != "safetensors") {
                eprintln!(
                    "warning: {} holds only the state_dict: the data scaler (mean/std) stays in .safetensors files",
                    a.output.display()
                );
            }
            ck.save(&a.output)?;
            println!("{} -> {}", a.input.display(), a.output.display());
            Ok(())
        }
        Command::Export(a) => {
            let ck = Checkpoint::load_with(&a.checkpoint, a.prefix.as_deref())?;
            ck.check().with_context(|| a.checkpoint.display().to_string())?;
            for p in rnvp::checkpoint::export::export_torchscript(&ck, &a.out, parse_kind(&a.dtype)?)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Command::Datasets(a) => datasets(a),
    }
}

/// Replaces the values of the flags the user did not give with the preset's.
/// Device and dtype from the flags (and the thread count applied).
fn compute(c: &Compute) -> Result<(Device, Kind)> {
    if let Some(t) = c.threads {
        if t < 1 {
            bail!("--threads {t}: needs at least 1 thread");
        }
        tch::set_num_threads(t);
    }
    Ok((parse_device(&c.device)?, parse_kind(&c.dtype)?))
}

/// The `--engine` flag.
fn engine(c: &Compute) -> Result<Engine> {
    match c.engine.parse::<Engine>() {
        Ok(e) => Ok(e),
        Err(_) => bail!("--engine {}: expected auto, fused or libtorch", c.engine),
    }
}

fn load_flow(path: &Path, c: &Compute) -> Result<(Flow, Checkpoint)> {
    let (device, kind) = compute(c)?;
    let engine = engine(c)?;
    let ck = Checkpoint::load_with(path, c.prefix.as_deref())?;
    let mut flow = ck.to_flow(device, kind).with_context(|| format!("loading {}", path.display()))?;
    flow.set_engine(engine);
    Ok((flow, ck))
}

/// Reads rows for a model of dimension `d`.
fn read_rows(path: &Path, d: i64) -> Result<Matrix> {
    let m = io::read_matrix(path)?;
    if m.cols as i64 != d {
        bail!("{}: {} columns, but the model expects {d}", path.display(), m.cols);
    }
    Ok(m)
}

fn header(prefix: &str, d: usize) -> Vec<String> {
    (0..d).map(|i| format!("{prefix}{i}")).collect()
}

/// Writes rows to `out` (.csv or .npy) or as CSV to stdout.
fn write_rows(out: Option<&Path>, m: &Matrix, header: &[String]) -> Result<()> {
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

fn toy_noise(set: data::ToySet, noise: Option<f64>) -> Result<f64> {
    let noise = noise.unwrap_or(set.default_noise());
    if !(noise.is_finite() && noise >= 0.0) {
        bail!("--noise {noise}: must be a non-negative number");
    }
    Ok(noise)
}

/// Toy points: `n` drawn with `seed`, standardized on themselves (as the notebook does).
fn toy_points(set: data::ToySet, noise: Option<f64>, n: usize, seed: u64) -> Result<Matrix> {
    let noise = toy_noise(set, noise)?;
    Ok(data::scaler::standardize(&set.sample(n, noise, &mut Rng::new(seed)))?)
}

fn train(a: cli::TrainArgs) -> Result<()> {
    let (device, kind) = compute(&a.compute)?;
    let engine = engine(&a.compute)?;
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
    let cfg = a.train_config()?;
    let arch = a.architecture()?;
    let init = a.initialisation(arch)?;
    let (train_data, scaler) = match &spec {
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
    };
    let d = train_data.dim() as i64;
    let resume = match &a.resume {
        Some(p) => Some((p, Checkpoint::load_with(p, a.compute.prefix.as_deref())?)),
        None => None,
    };
    let flow_cfg = match &resume {
        Some((path, ck)) => {
            if ck.config.d != d {
                bail!(
                    "--resume {}: the checkpoint has d = {}, the data has {d} columns",
                    path.display(),
                    ck.config.d
                );
            }
            ck.check().with_context(|| format!("--resume {}", path.display()))?;
            ck.config
        }
        None => FlowConfig::stacked(
            d,
            a.k.unwrap_or(d / 2),
            positive("--hidden", a.hidden)?,
            positive("--layers", a.layers)?,
        )
        .with_arch(arch)
        .with_init(init),
    };
    flow_cfg.validate()?;
    tch::manual_seed(a.seed as i64);
    let mut flow = match resume {
        Some(_) => Flow::for_loading(&flow_cfg, device, kind)?,
        None => Flow::new(&flow_cfg, device, kind)?,
    };
    flow.set_engine(engine);
    flow.fused_packing()?; // an engine that cannot run this flow fails before training starts
    let optimizer = match &resume {
        Some((_, ck)) => {
            rnvp::checkpoint::load_weights(&flow, &ck.tensors)?;
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
            flow: &flow,
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
fn after_stop(
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

fn eval(a: cli::EvalArgs) -> Result<()> {
    let (flow, ck) = load_flow(&a.checkpoint, &a.compute)?;
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
            let m = read_rows(p, flow.config().d)?;
            match &ck.scaler {
                Some(s) => (s.transform(&m)?, Some(s)),
                None => (m, None),
            }
        }
    };
    if flow.config().d != points.cols as i64 {
        bail!("{}: the data has {} columns, the model expects {}", spec.name(), points.cols, flow.config().d);
    }
    let (nll, non_finite) = rnvp::train::nll_and_non_finite(&flow, &points, scaler)?;
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

/// Checks that `n` points of `d` columns fit in what rnvp holds at once (the share of the available
/// memory it reads data files into), before anything is drawn.
fn check_points(n: usize, d: usize) -> Result<()> {
    let limit = io::read_limit(io::Contents::Data);
    let bytes = (n as u128) * (d as u128) * 8;
    if bytes > limit as u128 {
        bail!(
            "-n {n}: {n} points of {d} columns take {:.1} GB, more than rnvp holds at once ({:.1} GB, 1/16 of the \
             available memory; RNVP_MAX_FILE_BYTES sets another limit)",
            bytes as f64 / 1e9,
            limit as f64 / 1e9
        );
    }
    Ok(())
}

fn sample(a: cli::SampleArgs) -> Result<()> {
    let n = non_negative("-n", a.n)?;
    let (flow, ck) = load_flow(&a.checkpoint, &a.compute)?;
    check_points(n, flow.config().d as usize)?;
    tch::manual_seed(a.seed as i64);
    let mut xs = data::from_tensor(&flow.sample(n as i64)?)?;
    if let Some(s) = &ck.scaler {
        xs = s.inverse(&xs)?;
    }
    if let Some(png) = &a.png {
        let xy: Vec<[f64; 2]> = (0..xs.rows).map(|i| [xs.row(i)[0], xs.row(i)[1]]).collect();
        rnvp::plot::scatter(png, "Samples X = F^-1(Z)", "x₀", "x₁", &[("samples", &xy)])?;
    }
    write_rows(a.out.as_deref(), &xs, &header("x", xs.cols))
}

#[derive(Clone, Copy)]
enum Map {
    LogProb,
    Encode,
    Decode,
}

fn map(a: cli::MapArgs, what: Map) -> Result<()> {
    let (flow, ck) = load_flow(&a.checkpoint, &a.compute)?;
    let d = flow.config().d;
    let m = read_rows(&a.input, d)?;
    let (kind, device) = (flow.kind(), flow.device());
    let (out, head) = match what {
        Map::LogProb | Map::Encode => {
            let xs = match &ck.scaler {
                Some(s) => s.transform(&m)?,
                None => m,
            };
            let t = data::to_tensor(&xs, kind, device)?;
            if let Map::LogProb = what {
                let shift = ck.scaler.as_ref().map_or(0.0, Scaler::log_det);
                let lp = data::from_tensor(&flow.log_prob(&t)?.unsqueeze(1))?;
                let lp = Matrix::new(lp.rows, 1, lp.data.iter().map(|v| v + shift).collect())?;
                (lp, vec!["log_prob".to_string()])
            } else {
                (data::from_tensor(&flow.encode(&t)?)?, header("z", d as usize))
            }
        }
        Map::Decode => {
            let mut xs = data::from_tensor(&flow.decode(&data::to_tensor(&m, kind, device)?)?)?;
            if let Some(s) = &ck.scaler {
                xs = s.inverse(&xs)?;
            }
            (xs, header("x", d as usize))
        }
    };
    write_rows(a.out.as_deref(), &out, &head)
}

fn plot(a: cli::PlotArgs) -> Result<()> {
    let (flow, ck) = load_flow(&a.checkpoint, &a.compute)?;
    let n = non_negative("-n", a.n)?;
    let points = match a.data.as_deref().map(DataSpec::parse).transpose()? {
        Some(DataSpec::Toy(set)) => Some(toy_points(set, None, n, a.seed.wrapping_add(1))?),
        Some(DataSpec::File(p)) => Some(read_rows(&p, flow.config().d)?),
        None => None,
    };
    tch::manual_seed(a.seed as i64);
    let written = Figures {
        flow: &flow,
        scaler: ck.scaler.as_ref(),
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

fn datasets(a: cli::DatasetsArgs) -> Result<()> {
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

/// Numbers in the checkpoint's trained parameters (buffers such as running statistics left out).
fn parameter_count(ck: &Checkpoint) -> usize {
    let key = |n: &str| n.rsplit('.').next().unwrap_or("").to_string();
    ck.tensors.iter().filter(|(n, _)| !rnvp::config::is_buffer(&key(n))).map(|(_, t)| t.numel()).sum()
}

fn inspect(a: cli::InspectArgs) -> Result<()> {
    let ck = Checkpoint::load_with(&a.checkpoint, a.prefix.as_deref())?;
    let c = ck.config;
    // do the names and shapes fit the architecture? (checked without building the model)
    let check = ck.check();
    if a.json {
        let mut v = json!({
            "format": ck.format, "arch": c.arch.name(), "architecture": c.arch.describe(),
            "d": c.d, "k": c.k, "hidden": c.hidden, "layers": c.layers,
            "layout": rnvp::checkpoint::config_json(&c)["layout"],
            "parameters": parameter_count(&ck),
            "optimizer_state": ck.optimizer.is_some(), "info": ck.info,
            "prefix": ck.prefix, "ignored": ck.ignored,
            "check": match &check { Ok(()) => "ok".to_string(), Err(e) => e.to_string() },
        });
        if let Some(s) = &ck.scaler {
            v["scaler"] = json!({ "mean": s.mean, "std": s.std });
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
        "architecture: {} ({}), d = {}, k = {}, hidden = {}, layers = {}",
        c.arch.describe(),
        if c.layout == rnvp::Layout::Single { "R_NVP" } else { "stacked_NVP" },
        c.d,
        c.k,
        c.hidden,
        c.layers
    );
    println!("parameters: {}", parameter_count(&ck));
    match &check {
        Ok(()) => println!("check: names and shapes match the architecture"),
        Err(e) => println!("check: {e}"),
    }
    if let Some(s) = &ck.scaler {
        println!("scaler: mean {:?}, std {:?}", s.mean, s.std);
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
