//! Neural posterior estimation on sbibm's `two_moons` task with a conditional flow: simulate
//! `(θ, x)` pairs, train `q(θ | x)` with `--preset sbi`'s recipe (truncated to the prior's box),
//! sample the posterior at the benchmark's first observation, draw it over the exact posterior (a
//! θ grid of the closed-form likelihood, `shared/docs/sbi.md`) as a PNG, and score it with a
//! classifier two-sample test (C2ST: 0.5 = indistinguishable) against samples of that exact
//! posterior.
//!
//! `cargo run --release --example sbi_two_moons -- --simulations 10000 --out-dir out/sbi`
//!
//! The C2ST here is sbibm's recipe rebuilt in tch (z-scored samples, an MLP of two ReLU layers of
//! 10·dim units, Adam, 5-fold cross-validation); `scripts/sbi.py c2st` runs sbibm's own
//! (scikit-learn) on files, as `scripts/bench --only sbi` does.
use anyhow::{Context, Result};
use clap::Parser;
use rnvp::data::{Bounds, Matrix, Rng};
use rnvp::plot::Grid;
use rnvp::presets::SBI;
use rnvp::train::{Event, TrainConfig, TrainData, Trainer};
use rnvp::{Flow, FlowConfig, Init};
use std::f64::consts::PI;
use std::path::PathBuf;
use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};

/// sbibm's first `two_moons` observation.
const X_O: [f64; 2] = [-0.6396706, 0.16234657];

#[derive(Parser)]
#[command(about = "NPE on sbibm's two_moons: train q(θ | x), sample at x_o, PNG and C2ST")]
struct Args {
    /// Simulations to train on.
    #[arg(long, default_value_t = 10_000)]
    simulations: usize,
    /// Posterior samples (and exact posterior samples) for the C2ST.
    #[arg(long, default_value_t = 10_000)]
    samples: i64,
    /// Directory for the figure and the model.
    #[arg(long, default_value = "out/sbi")]
    out_dir: PathBuf,
    /// Seed of the simulations, the weights and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The simulator's map from θ and its noise `(a, r)` to x.
fn simulate(theta: [f64; 2], a: f64, r: f64) -> [f64; 2] {
    let (c, s) = ((-PI / 4.0).cos(), (-PI / 4.0).sin());
    let z0 = c * theta[0] - s * theta[1];
    let z1 = s * theta[0] + c * theta[1];
    [r * a.cos() + 0.25 - z0.abs(), r * a.sin() + z1]
}

/// The likelihood `p(x | θ)` in closed form (sbi.md): the density of `p = x − (−|z₀|, z₁)`.
fn likelihood(x: [f64; 2], theta: [f64; 2]) -> f64 {
    let (c, s) = ((-PI / 4.0).cos(), (-PI / 4.0).sin());
    let z0 = c * theta[0] - s * theta[1];
    let z1 = s * theta[0] + c * theta[1];
    let (u, v) = (x[0] + z0.abs() - 0.25, x[1] - z1);
    let r = (u * u + v * v).sqrt();
    if u < 0.0 || r == 0.0 {
        return 0.0;
    }
    let normal = (-0.5 * ((r - 0.1) / 0.01).powi(2)).exp() / (0.01 * (2.0 * PI).sqrt());
    normal / (PI * r)
}

fn main() -> Result<()> {
    rnvp::tune_allocator();
    let args = Args::parse();
    std::fs::create_dir_all(&args.out_dir)?;
    tch::set_num_threads(SBI.threads);

    // 1. simulations: θ ~ U(−1, 1)², x ~ p(x | θ); rows [θ₀, θ₁, x₀, x₁]
    let mut rng = Rng::new(args.seed);
    let mut rows = Vec::with_capacity(args.simulations * 4);
    for _ in 0..args.simulations {
        let theta = [rng.uniform() * 2.0 - 1.0, rng.uniform() * 2.0 - 1.0];
        let a = (rng.uniform() - 0.5) * PI;
        let r = 0.1 + 0.01 * rng.normal();
        let x = simulate(theta, a, r);
        rows.extend([theta[0], theta[1], x[0], x[1]]);
    }
    let table = Matrix::new(args.simulations, 4, rows)?;

    // 2. q(θ | x) truncated to the prior's box (the preset's mode), the preset's flow and recipe
    let bounds = Bounds::new(vec![-1.0; 2], vec![1.0; 2])?.with_mode(SBI.bounds_mode);
    let cfg = TrainConfig {
        steps: SBI.steps as usize,
        batch_size: SBI.batch_size as usize,
        lr: SBI.lr,
        schedule: SBI.schedule,
        warmup: SBI.warmup as usize,
        clip_grad: SBI.clip_grad,
        seed: args.seed,
        patience: SBI.patience.unwrap_or(20) as usize,
        ..TrainConfig::default()
    };
    let (data, scaler) =
        TrainData::from_table_in(&table, cfg.val_fraction, cfg.seed, Some(&bounds), Some(2))?;
    // validated once per epoch; the preset's schedule spans 60 epochs where that is more steps
    let batches = data.train_rows().context("invariant: the data is a table")?.div_ceil(cfg.batch_size);
    let cfg = TrainConfig { val_every: batches, steps: SBI.steps_for(batches) as usize, ..cfg };
    let flow_cfg = FlowConfig::stacked(2, 1, SBI.hidden, SBI.layers)
        .with_arch(SBI.arch)
        .with_init(Init::Identity)
        .with_context(2);
    tch::manual_seed(args.seed as i64);
    let flow = Flow::new(&flow_cfg, Device::Cpu, Kind::Float)?;
    let trainer = Trainer {
        flow: &flow,
        data: &data,
        cfg: &cfg,
        scaler: Some(scaler),
        out: Some(args.out_dir.join("q.safetensors")),
        info: Default::default(),
    };
    let report = trainer.run(None, |ev| {
        if let Event::Validation { step, nll, best: true } = ev {
            eprintln!("step {step:>5}: validation NLL {nll:.4} (best)");
        }
    })?;
    let (best_step, best_nll) = report.best.ok_or_else(|| anyhow::anyhow!("no finite validation"))?;
    println!(
        "trained {} steps in {:.1} s on {} simulations; kept step {best_step} (validation NLL {best_nll:.4})",
        report.losses.len(),
        report.seconds,
        args.simulations
    );

    // 3. posterior samples at x_o, in θ's units: the flow's draws inside the box
    let ck = rnvp::checkpoint::Checkpoint::load(&args.out_dir.join("q.safetensors"))?;
    let space = ck.space();
    let c =
        rnvp::data::to_tensor(&space.context(&Matrix::new(1, 2, X_O.to_vec())?)?, Kind::Float, Device::Cpu)?;
    tch::manual_seed(args.seed as i64 + 1);
    let n = usize::try_from(args.samples)?;
    let (post, draws) = rnvp::truncation::sample(flow.stack().run(rnvp::Engine::Auto).given(&c), &space, n)?;
    println!("posterior samples: {} of {} draws inside the prior's box", draws.kept, draws.drawn);

    // 4. the exact posterior on a θ grid (uniform prior × closed-form likelihood), and samples of it
    let n = 800;
    let cells = Grid::points((-1.0, 1.0), (-1.0, 1.0), n, n);
    let weights: Vec<f64> = cells.iter().map(|t| likelihood(X_O, *t)).collect();
    let total: f64 = weights.iter().sum();
    let cell = 2.0 / n as f64;
    let values: Vec<f64> = weights.iter().map(|w| (w / (total * cell * cell)).ln()).collect();
    let mut exact = Vec::with_capacity(args.samples as usize * 2);
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();
    let mut rng = Rng::new(args.seed ^ 0xA5A5);
    for _ in 0..args.samples {
        let u = rng.uniform();
        let i = cumulative.partition_point(|&c| c < u).min(cells.len() - 1);
        let [tx, ty] = cells[i];
        exact.extend([tx + (rng.uniform() - 0.5) * cell, ty + (rng.uniform() - 0.5) * cell]);
    }
    let exact = Matrix::new(args.samples as usize, 2, exact)?;

    // 5. the figure: the exact posterior's density, rnvp's samples over it
    let shown: Vec<[f64; 2]> = (0..post.rows.min(3000)).map(|i| [post.row(i)[0], post.row(i)[1]]).collect();
    let png = args.out_dir.join("posterior.png");
    rnvp::plot::density(
        &png,
        "two_moons: exact posterior p(θ | x_o), rnvp's samples of q(θ | x_o) over it",
        "p(θ | x_o)",
        &Grid { x: (-1.0, 1.0), y: (-1.0, 1.0), nx: n, ny: n, values },
        &shown,
    )?;
    println!("figure: {}", png.display());

    // the two sample sets, for sbibm's own C2ST (`scripts/sbi.py c2st --ref exact.csv --samples samples.csv`)
    rnvp::data::io::write_matrix(&args.out_dir.join("exact.csv"), &exact, &[])?;
    rnvp::data::io::write_matrix(&args.out_dir.join("samples.csv"), &post, &[])?;

    // 6. C2ST of rnvp's samples against the exact posterior's
    let score = c2st(&exact, &post, args.seed as i64)?;
    println!("C2ST at observation 1: {score:.3} (0.5: indistinguishable from the exact posterior)");
    Ok(())
}

/// sbibm's classifier two-sample test, rebuilt in tch: both sets z-scored with the reference's
/// mean and std, an MLP (two ReLU layers of 10·dim units) trained with Adam to tell them apart,
/// the mean accuracy of 5-fold shuffled cross-validation.
fn c2st(reference: &Matrix, samples: &Matrix, seed: i64) -> Result<f64> {
    let (a, b) = (
        rnvp::data::to_tensor(reference, Kind::Float, Device::Cpu)?,
        rnvp::data::to_tensor(samples, Kind::Float, Device::Cpu)?,
    );
    let (mean, std) = (a.mean_dim(0, true, Kind::Float), a.std_dim(0, true, true));
    let x = Tensor::cat(&[(&a - &mean) / &std, (&b - &mean) / &std], 0);
    let y = Tensor::cat(
        &[
            Tensor::zeros([a.size()[0], 1], (Kind::Float, Device::Cpu)),
            Tensor::ones([b.size()[0], 1], (Kind::Float, Device::Cpu)),
        ],
        0,
    );
    let n = x.size()[0];
    tch::manual_seed(seed);
    let order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
    let (x, y) = (x.index_select(0, &order), y.index_select(0, &order));
    let dim = x.size()[1];
    let folds = 5;
    let mut accuracies = vec![];
    for f in 0..folds {
        let (lo, hi) = (n * f / folds, n * (f + 1) / folds);
        let test = Tensor::arange_start(lo, hi, (Kind::Int64, Device::Cpu));
        let train = Tensor::cat(
            &[
                Tensor::arange(lo, (Kind::Int64, Device::Cpu)),
                Tensor::arange_start(hi, n, (Kind::Int64, Device::Cpu)),
            ],
            0,
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let net = nn::seq()
            .add(nn::linear(&p / 0, dim, 10 * dim, Default::default()))
            .add_fn(|t| t.relu())
            .add(nn::linear(&p / 1, 10 * dim, 10 * dim, Default::default()))
            .add_fn(|t| t.relu())
            .add(nn::linear(&p / 2, 10 * dim, 1, Default::default()));
        let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
        let (xt, yt) = (x.index_select(0, &train), y.index_select(0, &train));
        let m = xt.size()[0];
        for _epoch in 0..60 {
            let perm = Tensor::randperm(m, (Kind::Int64, Device::Cpu));
            for batch in perm.split(200, 0) {
                let logits = net.forward(&xt.index_select(0, &batch));
                let loss = logits.binary_cross_entropy_with_logits::<Tensor>(
                    &yt.index_select(0, &batch),
                    None,
                    None,
                    tch::Reduction::Mean,
                );
                opt.backward_step(&loss);
            }
        }
        let correct = tch::no_grad(|| {
            let pred = net.forward(&x.index_select(0, &test)).gt(0.0).to_kind(Kind::Float);
            pred.eq_tensor(&y.index_select(0, &test)).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
        });
        accuracies.push(correct);
    }
    Ok(accuracies.iter().sum::<f64>() / folds as f64)
}
