//! Side-by-side benchmark of rnvp against the notebook's PyTorch model (scripts/reference.py, same
//! libtorch 2.13, same thread count), run by `scripts/bench`. Writes docs/BENCHMARKS.md and PNG
//! plots. Every timing is a whole process (start-up included) and the two sides are interleaved;
//! the tables give medians and min–max over the repetitions.
//!
//! `bench [--reps 5] [--quick] [--threads 2] [--out docs]`; `bench mem LAYERS autograd|reversible`
//! is the child process that measures peak memory of training steps.
use anyhow::{bail, Context, Result};
use rnvp::checkpoint::Checkpoint;
use rnvp::data::{scaler::standardize, Rng, ToySet};
use rnvp::train::TrainConfig;
use rnvp::{Flow, FlowConfig, Init};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind};

struct Opts {
    reps: usize,
    quick: bool,
    threads: usize,
    out: PathBuf,
    best_preset: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rnvp_bin() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("rnvp")
}

fn python() -> PathBuf {
    std::env::var("RNVP_PYTHON").map(PathBuf::from).unwrap_or_else(|_| repo().join(".rnvp/python"))
}

/// Runs a command to completion; returns wall seconds and stdout. Fails on a non-zero exit.
fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn rnvp(args: &[&str], threads: usize) -> Command {
    let mut c = Command::new(rnvp_bin());
    c.args(args).args(["--threads", &threads.to_string()]);
    c
}

fn torch(args: &[&str], threads: usize) -> Command {
    let mut c = Command::new(python());
    c.arg(repo().join("scripts/reference.py")).args(args).env("RNVP_THREADS", threads.to_string());
    c
}

/// Median, min and max.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) };
    (med, s[0], s[n - 1])
}

fn fmt(v: &[f64], unit: f64, digits: usize) -> String {
    let (m, lo, hi) = stats(v);
    format!("{:.*} ({:.*}–{:.*})", digits, m * unit, digits, lo * unit, digits, hi * unit)
}

/// Peak resident memory of this process, bytes (VmHWM).
fn peak_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    let kb: u64 = line.split_whitespace().nth(1).context("VmHWM")?.parse()?;
    Ok(kb * 1024)
}

/// Child process: two training steps of an identity-initialised flow (batch 4096, hidden 512);
/// prints the peak RSS before and after.
fn mem_child(layers: i64, reversible: bool) -> Result<()> {
    // the same allocator setting for both modes: big blocks are unmapped when freed, so the peak
    // reflects live memory (see rnvp::tune_allocator_for_memory)
    rnvp::tune_allocator_for_memory();
    tch::set_num_threads(1);
    let flow = Flow::new(
        &FlowConfig::stacked(2, 1, 512, layers).with_init(Init::Identity),
        Device::Cpu,
        Kind::Float,
    )?;
    let mut cfg = TrainConfig { steps: 2, batch_size: 4096, reversible, ..Default::default() };
    cfg.val_every = 1000;
    let batch = standardize(&ToySet::TwoMoons.sample(4096, 0.05, &mut Rng::new(0)))?;
    let xs = rnvp::data::to_tensor(&batch, Kind::Float, Device::Cpu)?;
    let mut adam = rnvp::train::Adam::new(&flow, &cfg, None)?;
    let before = peak_rss()?;
    for _ in 0..2 {
        adam.zero_grad();
        flow.loss_backward(&xs, reversible)?;
        adam.step();
    }
    println!("{before} {}", peak_rss()?);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("mem") {
        let layers: i64 = args.get(1).context("bench mem LAYERS MODE")?.parse()?;
        return mem_child(layers, args.get(2).map(String::as_str) == Some("reversible"));
    }
    let mut o = Opts { reps: 5, quick: false, threads: 2, out: repo().join("docs"), best_preset: true };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => o.reps = it.next().context("--reps N")?.parse()?,
            "--quick" => o.quick = true,
            "--threads" => o.threads = it.next().context("--threads N")?.parse()?,
            "--out" => o.out = PathBuf::from(it.next().context("--out DIR")?),
            "--no-preset" => o.best_preset = false,
            other => bail!("unknown argument {other} (bench [--reps N] [--quick] [--threads N] [--out DIR])"),
        }
    }
    std::fs::create_dir_all(&o.out)?;
    let work = std::env::temp_dir().join(format!("rnvp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut md = String::new();
    header(&mut md, &o)?;
    training(&mut md, &o, &work)?;
    inference(&mut md, &o, &work)?;
    memory(&mut md, &o)?;
    quality(&mut md, &o, &work)?;
    std::fs::write(o.out.join("BENCHMARKS.md"), md)?;
    let _ = std::fs::remove_dir_all(&work);
    println!("wrote {}", o.out.join("BENCHMARKS.md").display());
    Ok(())
}

fn header(md: &mut String, o: &Opts) -> Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let (_, torch_version) =
        timed(Command::new(python()).args(["-c", "import torch; print(torch.__version__)"]))?;
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0))
        })
        .unwrap_or(0);
    writeln!(md, "# Benchmarks: rnvp against the notebook's PyTorch model\n")?;
    writeln!(
        md,
        "Generated by `scripts/bench` (reps {}, {}threads {}). Machine: {cpu}, {cores} cores, {:.0} GiB; PyTorch {} \
         (the same libtorch rnvp links). Every time is a whole process, start-up included, and rnvp and \
         PyTorch runs are interleaved; cells give the median and the min–max over the repetitions. This \
         machine is shared and its speed drifts by ±30% from minute to minute: compare within a row.\n",
        o.reps,
        if o.quick { "quick, " } else { "" },
        o.threads,
        mem as f64 / 1048576.0,
        torch_version.trim()
    )?;
    Ok(())
}

/// Per-step cost of whole training commands, from two run lengths.
fn training(md: &mut String, o: &Opts, work: &Path) -> Result<()> {
    let (short, long) = if o.quick { (50, 250) } else { (100, 600) };
    let layer_set: &[i64] = &[1, 3, 5, 10];
    writeln!(md, "## Training step (notebook recipe: batch 512, hidden 512)\n")?;
    writeln!(
        md,
        "`rnvp train --data two-moons --layers L` with default flags (validation on 5,000 points and a \
         checkpoint every 100 steps included) against the notebook's loop in PyTorch (`scripts/reference.py \
         train`: scikit-learn's make_moons and StandardScaler every step, Adam, ExponentialLR). Per-step \
         time = (time of {long} steps − time of {short} steps) / {}, so start-up cancels.\n",
        long - short
    )?;
    writeln!(md, "| layers | rnvp ms/step | PyTorch ms/step | speed-up (median) |\n|---|---|---|---|")?;
    let mut rows = vec![];
    for &l in layer_set {
        let (mut r, mut p) = (vec![], vec![]);
        for rep in 0..o.reps {
            let ck = work.join("t.safetensors");
            let run_r = |steps: usize| -> Result<f64> {
                let (s, _) = timed(&mut rnvp(
                    &[
                        "train",
                        "--data",
                        "two-moons",
                        "--out",
                        ck.to_str().unwrap(),
                        "--layers",
                        &l.to_string(),
                        "--steps",
                        &steps.to_string(),
                        "--quiet",
                        "--seed",
                        &rep.to_string(),
                    ],
                    o.threads,
                ))?;
                Ok(s)
            };
            let run_p = |steps: usize| -> Result<f64> {
                let (s, _) = timed(&mut torch(
                    &[
                        "train",
                        "--layers",
                        &l.to_string(),
                        "--steps",
                        &steps.to_string(),
                        "--seed",
                        &rep.to_string(),
                    ],
                    o.threads,
                ))?;
                Ok(s)
            };
            // interleaved, the order alternating between repetitions
            let (rs, rl, ps, pl) = if rep % 2 == 0 {
                let a = run_r(short)?;
                let b = run_p(short)?;
                let c = run_r(long)?;
                let d = run_p(long)?;
                (a, c, b, d)
            } else {
                let b = run_p(short)?;
                let a = run_r(short)?;
                let d = run_p(long)?;
                let c = run_r(long)?;
                (a, c, b, d)
            };
            r.push((rl - rs) / (long - short) as f64);
            p.push((pl - ps) / (long - short) as f64);
            eprintln!("train L={l} rep {rep}: rnvp {:.2} ms, torch {:.2} ms", r[rep] * 1e3, p[rep] * 1e3);
        }
        writeln!(
            md,
            "| {l} | {} | {} | {:.2}× |",
            fmt(&r, 1e3, 2),
            fmt(&p, 1e3, 2),
            stats(&p).0 / stats(&r).0
        )?;
        rows.push((l as f64, stats(&r).0 * 1e3, stats(&p).0 * 1e3));
    }
    let rs: Vec<(f64, f64)> = rows.iter().map(|r| (r.0, r.1)).collect();
    let ps: Vec<(f64, f64)> = rows.iter().map(|r| (r.0, r.2)).collect();
    rnvp::plot::lines(
        &o.out.join("bench_train.png"),
        "Training step, batch 512, hidden 512 (median)",
        "coupling layers",
        "ms per step",
        &[("rnvp train", &rs), ("notebook (PyTorch)", &ps)],
        true,
    )?;
    writeln!(md, "\n![training step time](bench_train.png)\n")?;
    Ok(())
}

/// Whole `sample` and `log-prob` commands, .npy in and out, for a trained 3-layer model.
fn inference(md: &mut String, o: &Opts, work: &Path) -> Result<()> {
    let ck = work.join("m3.safetensors");
    timed(&mut rnvp(&["train", "--data", "two-moons", "--out", ck.to_str().unwrap(), "--quiet"], o.threads))?;
    // the same weights for PyTorch, one .npy per state_dict key
    let weights = work.join("weights");
    std::fs::create_dir_all(&weights)?;
    for (name, t) in &Checkpoint::load(&ck)?.tensors {
        t.write_npy(weights.join(format!("{name}.npy")))?;
    }
    let sizes: &[usize] = if o.quick { &[100_000] } else { &[100_000, 1_000_000] };
    writeln!(md, "## Sampling and log-density (3 layers, hidden 512, trained)\n")?;
    writeln!(
        md,
        "Whole commands, `.npy` out (sampling) and in and out (log-density): `rnvp sample -n N --out x.npy`, \
         `rnvp log-prob --input x.npy --out lp.npy` against `scripts/reference.py sample` / `log-prob` (the \
         notebook's `inverse` and `forward`).\n"
    )?;
    writeln!(md, "| task | points | rnvp s | PyTorch s | speed-up (median) |\n|---|---|---|---|---|")?;
    for &n in sizes {
        let x = work.join(format!("x{n}.npy"));
        let lp = work.join("lp.npy");
        let (mut rs, mut ps, mut rl, mut pl) = (vec![], vec![], vec![], vec![]);
        for rep in 0..o.reps {
            let ns = n.to_string();
            let sample_r = || {
                timed(&mut rnvp(
                    &[
                        "sample",
                        "--checkpoint",
                        ck.to_str().unwrap(),
                        "-n",
                        &ns,
                        "--out",
                        x.to_str().unwrap(),
                        "--seed",
                        &rep.to_string(),
                    ],
                    o.threads,
                ))
            };
            let sample_p = || {
                timed(&mut torch(
                    &[
                        "sample",
                        "--weights",
                        weights.to_str().unwrap(),
                        "--n",
                        &ns,
                        "--out",
                        work.join("xp.npy").to_str().unwrap(),
                    ],
                    o.threads,
                ))
            };
            let lp_r = || {
                timed(&mut rnvp(
                    &[
                        "log-prob",
                        "--checkpoint",
                        ck.to_str().unwrap(),
                        "--input",
                        x.to_str().unwrap(),
                        "--out",
                        lp.to_str().unwrap(),
                    ],
                    o.threads,
                ))
            };
            let lp_p = || {
                timed(&mut torch(
                    &[
                        "log-prob",
                        "--weights",
                        weights.to_str().unwrap(),
                        "--input",
                        x.to_str().unwrap(),
                        "--out",
                        work.join("lpp.npy").to_str().unwrap(),
                    ],
                    o.threads,
                ))
            };
            if rep % 2 == 0 {
                rs.push(sample_r()?.0);
                ps.push(sample_p()?.0);
                rl.push(lp_r()?.0);
                pl.push(lp_p()?.0);
            } else {
                ps.push(sample_p()?.0);
                rs.push(sample_r()?.0);
                pl.push(lp_p()?.0);
                rl.push(lp_r()?.0);
            }
            eprintln!(
                "n={n} rep {rep}: sample {:.2}/{:.2} s, log-prob {:.2}/{:.2} s",
                rs[rep], ps[rep], rl[rep], pl[rep]
            );
        }
        writeln!(
            md,
            "| sample | {n} | {} | {} | {:.1}× |",
            fmt(&rs, 1.0, 2),
            fmt(&ps, 1.0, 2),
            stats(&ps).0 / stats(&rs).0
        )?;
        writeln!(
            md,
            "| log-prob | {n} | {} | {} | {:.1}× |",
            fmt(&rl, 1.0, 2),
            fmt(&pl, 1.0, 2),
            stats(&pl).0 / stats(&rl).0
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Peak RSS of two training steps against depth, ordinary autograd and reversible backprop.
fn memory(md: &mut String, o: &Opts) -> Result<()> {
    let depths: &[i64] = if o.quick { &[4, 16, 64] } else { &[4, 8, 16, 32, 64] };
    writeln!(md, "## Training memory against depth (batch 4096, hidden 512, `--init identity`)\n")?;
    writeln!(
        md,
        "Peak resident memory (VmHWM) of a process that builds the flow and takes two training steps, \
         with ordinary autograd and with `--reversible-backprop` (each layer's input recomputed from its \
         output during the backward pass).\n"
    )?;
    writeln!(md, "| layers | autograd MiB | reversible MiB |\n|---|---|---|")?;
    let me = std::env::current_exe()?;
    let mut curves: Vec<Vec<(f64, f64)>> = vec![vec![], vec![]];
    for &l in depths {
        let mut cells = vec![];
        for (i, mode) in ["autograd", "reversible"].iter().enumerate() {
            let (_, out) = timed(Command::new(&me).args(["mem", &l.to_string(), mode]))?;
            let peak: f64 = out.split_whitespace().nth(1).context("mem output")?.parse()?;
            let mib = peak / 1048576.0;
            curves[i].push((l as f64, mib));
            cells.push(format!("{mib:.0}"));
        }
        writeln!(md, "| {l} | {} | {} |", cells[0], cells[1])?;
    }
    let growth = |c: &[(f64, f64)]| c.last().unwrap().1 - c[0].1;
    let (ga, gr) = (growth(&curves[0]), growth(&curves[1]));
    writeln!(
        md,
        "\nGrowth from {} to {} layers: autograd {ga:.0} MiB, reversible {gr:.0} MiB ({:.1}% of autograd's).\n",
        depths[0],
        depths[depths.len() - 1],
        100.0 * gr / ga
    )?;
    rnvp::plot::lines(
        &o.out.join("bench_memory.png"),
        "Peak memory of training steps (batch 4096, hidden 512)",
        "coupling layers",
        "peak RSS (MiB)",
        &[("autograd", &curves[0]), ("reversible backprop", &curves[1])],
        true,
    )?;
    writeln!(md, "![memory against depth](bench_memory.png)\n")?;
    Ok(())
}

/// Test NLL against training seconds: the notebook's recipe in PyTorch and in rnvp, and the preset.
fn quality(md: &mut String, o: &Opts, work: &Path) -> Result<()> {
    writeln!(md, "## Quality per second (two moons, test NLL against training time)\n")?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![];
    let (_, out) =
        timed(&mut torch(&["train", "--layers", "3", "--steps", "1000", "--eval-every", "100"], o.threads))?;
    let pts: Vec<(f64, f64)> = out
        .lines()
        .filter_map(|l| {
            let v: Vec<f64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (v.len() == 3).then(|| (v[1], v[2]))
        })
        .collect();
    series.push(("notebook recipe, PyTorch".into(), pts));
    let mut runs: Vec<(&str, Vec<&str>)> = vec![("notebook recipe, rnvp", vec![])];
    if o.best_preset {
        runs.push(("--preset best, rnvp", vec!["--preset", "best"]));
    }
    for (name, extra) in runs {
        let log = work.join("q.csv");
        let ck = work.join("q.safetensors");
        let mut a = vec![
            "train",
            "--data",
            "two-moons",
            "--out",
            ck.to_str().unwrap(),
            "--quiet",
            "--log",
            log.to_str().unwrap(),
        ];
        a.extend(extra);
        timed(&mut rnvp(&a, o.threads))?;
        let csv = std::fs::read_to_string(&log)?;
        let pts: Vec<(f64, f64)> = csv
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some((f.get(3)?.parse().ok()?, f.get(2)?.parse().ok()?))
            })
            .collect();
        series.push((name.into(), pts));
    }
    writeln!(md, "| run | final test NLL (nats) | training seconds |\n|---|---|---|")?;
    for (name, pts) in &series {
        if let Some(last) = pts.last() {
            writeln!(md, "| {name} | {:.3} | {:.1} |", last.1, last.0)?;
        }
    }
    let entropy =
        [(0.0, 1.131), (series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(0.0, f64::max), 1.131)];
    let mut refs: Vec<(&str, &[(f64, f64)])> =
        series.iter().map(|(n, p)| (n.as_str(), p.as_slice())).collect();
    refs.push(("data entropy 1.131", &entropy));
    rnvp::plot::lines(
        &o.out.join("bench_quality.png"),
        "Two moons: test NLL against training time",
        "training seconds",
        "test NLL (nats)",
        &refs,
        false,
    )?;
    writeln!(
        md,
        "\nrnvp's NLL is measured on its fixed 20,000-point validation set, PyTorch's on 20,000 points of \
         scikit-learn's make_moons (both standardized on themselves).\n\n![quality per second](bench_quality.png)\n"
    )?;
    Ok(())
}
