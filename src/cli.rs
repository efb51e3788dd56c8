//! The command line: clap types, and their conversion to the library's configurations (main.rs
//! dispatches).
use clap::{Args, Parser, Subcommand};
use rnvp::presets::Preset;
use rnvp::train::{Schedule, TrainConfig};
use rnvp::{Engine, Error, Init, Result};
use std::path::PathBuf;

/// R-NVP normalizing flows on libtorch: train, sample, score and plot the model of the
/// "Going with the Flow" notebook.
#[derive(Parser, Debug)]
#[command(
    name = "rnvp",
    version,
    after_help = "Example:\n  rnvp train --data two-moons --out moons.safetensors --plot-dir out/moons\n  rnvp sample --checkpoint moons.safetensors -n 1000 --out samples.csv"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a flow on a toy set or on your data (CSV or .npy).
    #[command(
        after_help = "Examples:\n  rnvp train --data two-moons --out moons.safetensors --plot-dir out/moons\n  rnvp train --data my.csv --layers 6 --steps 5000 --out my.safetensors --log loss.csv\n  rnvp train --data two-moons --out moons.safetensors --resume moons.safetensors --steps 2000"
    )]
    Train(Box<TrainArgs>),
    /// Mean negative log-likelihood (nats) of a data set under a trained flow.
    #[command(
        after_help = "Example:\n  rnvp eval --checkpoint moons.safetensors --data two-moons -n 20000 --json"
    )]
    Eval(EvalArgs),
    /// Draw samples x = F⁻¹(z), z ~ N(0, I) (a flow truncated to its box keeps the draws inside it).
    #[command(
        after_help = "Example:\n  rnvp sample --checkpoint moons.safetensors -n 5000 --out samples.npy --png samples.png"
    )]
    Sample(SampleArgs),
    /// log p(x) of each row of a file.
    #[command(
        after_help = "Example:\n  rnvp log-prob --checkpoint moons.safetensors --input points.csv --out log_p.csv"
    )]
    LogProb(MapArgs),
    /// Map data to latents: z = F(x), one row per input row.
    #[command(
        after_help = "Example:\n  rnvp encode --checkpoint moons.safetensors --input points.csv --out z.csv"
    )]
    Encode(MapArgs),
    /// Map latents to data: x = F⁻¹(z), one row per input row.
    #[command(
        after_help = "Example:\n  rnvp decode --checkpoint moons.safetensors --input z.csv --out x.csv"
    )]
    Decode(MapArgs),
    /// Draw the flow's figures (samples, latents, density) as PNG files.
    #[command(
        after_help = "Example:\n  rnvp plot --checkpoint moons.safetensors --data two-moons --out-dir out/moons"
    )]
    Plot(PlotArgs),
    /// Convert a checkpoint between formats (.safetensors, .pt, .ot), chosen by extension.
    #[command(
        after_help = "Examples:\n  rnvp convert notebook.pt notebook.safetensors\n  rnvp convert moons.safetensors moons.pt   # for torch.load + load_state_dict"
    )]
    Convert(ConvertArgs),
    /// Export TorchScript functions encode.pt (x → z), log_prob.pt (x → log p(x)) and decode.pt
    /// (z → x) for torch.jit.load, LibTorch C++ or a serving engine.
    #[command(
        after_help = "Example:\n  rnvp export --checkpoint moons.safetensors --out served/\n  python -c \"import torch; f = torch.jit.load('served/log_prob.pt'); print(f(torch.zeros(3, 2)))\""
    )]
    Export(ExportArgs),
    /// Show a checkpoint's format, tensors and architecture.
    #[command(after_help = "Example:\n  rnvp inspect moons.safetensors --json")]
    Inspect(InspectArgs),
    /// List the built-in toy data sets, or write one's points to a file.
    #[command(
        after_help = "Examples:\n  rnvp datasets\n  rnvp datasets two-moons -n 10000 --out moons.csv --seed 1"
    )]
    Datasets(DatasetsArgs),
}

/// `rnvp datasets [NAME -n N --out FILE]`.
#[derive(Args, Debug)]
pub struct DatasetsArgs {
    /// The toy set to write (without it, the sets are listed).
    pub name: Option<String>,
    /// Points to draw.
    #[arg(short, long, allow_negative_numbers = true, requires = "name")]
    pub n: Option<i64>,
    /// Where to write them (.csv or .npy).
    #[arg(long, requires = "name")]
    pub out: Option<PathBuf>,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Noise [default: the set's own].
    #[arg(long, allow_negative_numbers = true)]
    pub noise: Option<f64>,
}

/// `v` as a count that must not be negative.
pub fn non_negative(name: &str, v: i64) -> Result<usize> {
    if v < 0 {
        return Err(Error::InvalidConfig(format!("{name} {v}: must not be negative")));
    }
    Ok(v as usize)
}

/// `v` as a count that must be positive.
pub fn positive(name: &str, v: i64) -> Result<i64> {
    if v < 1 {
        return Err(Error::InvalidConfig(format!("{name} {v}: must be at least 1")));
    }
    Ok(v)
}

impl Compute {
    /// The `--engine` flag.
    pub fn engine(&self) -> Result<Engine> {
        self.engine.parse().map_err(|_| {
            Error::InvalidConfig(format!("--engine {}: expected auto, fused or libtorch", self.engine))
        })
    }
}

impl TrainArgs {
    /// Replaces the values of the flags the user did not give (per `m`) with the preset's.
    pub fn apply_preset(&mut self, p: &Preset, m: &clap::ArgMatches) {
        let default = |id: &str| m.value_source(id) != Some(clap::parser::ValueSource::CommandLine);
        if default("arch") && p.arch != rnvp::Arch::NOTEBOOK {
            self.arch = p.arch.name().into();
        }
        if default("layers") {
            self.layers = p.layers;
        }
        if default("hidden") {
            self.hidden = p.hidden;
        }
        if default("steps") {
            self.steps = p.steps;
        }
        if default("batch_size") {
            self.batch_size = p.batch_size;
        }
        if default("lr") {
            self.lr = p.lr;
        }
        if default("schedule") {
            self.schedule = match p.schedule {
                Schedule::Exponential => "exponential",
                Schedule::Cosine => "cosine",
            }
            .into();
        }
        if default("warmup") {
            // a run shortened with --steps keeps its warm-up within the first fifth
            self.warmup = p.warmup.min(self.steps / 5);
        }
        if default("init") {
            self.init = Some(
                match p.init {
                    Init::Pytorch => "pytorch",
                    Init::Identity => "identity",
                }
                .into(),
            );
        }
        if default("clip_grad") && self.clip_grad.is_none() {
            self.clip_grad = p.clip_grad;
        }
        if default("val_every") {
            self.val_every = p.val_every;
        }

        if default("threads") && self.compute.threads.is_none() {
            self.compute.threads = Some(p.threads);
        }
    }

    /// The training schedule from the flags (checked).
    pub fn train_config(&self) -> Result<TrainConfig> {
        let cfg = TrainConfig {
            steps: non_negative("--steps", self.steps)?,
            batch_size: positive("--batch-size", self.batch_size)? as usize,
            lr: self.lr,
            gamma: self.gamma,
            schedule: match self.schedule.as_str() {
                "exponential" => Schedule::Exponential,
                "cosine" => Schedule::Cosine,
                o => {
                    return Err(Error::InvalidConfig(format!(
                        "--schedule {o}: expected exponential or cosine"
                    )))
                }
            },
            warmup: non_negative("--warmup", self.warmup)?,
            seed: self.seed,
            clip_grad: self.clip_grad,
            val_every: positive("--val-every", self.val_every)? as usize,
            val_size: positive("--val-size", self.val_size)? as usize,
            val_fraction: self.val_fraction,
            reversible: self.reversible_backprop,
            engine: self.compute.engine()?,
            patience: 0, // set with the data (see `patience`)
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `--patience`, or its default for the data: for a file the preset's (`preset`) or 20
    /// validations, none for a toy set.
    pub fn patience(&self, file: bool, preset: Option<i64>) -> Result<usize> {
        match self.patience {
            Some(p) => non_negative("--patience", p),
            None if file => non_negative("--patience", preset.unwrap_or(20)),
            None => Ok(0),
        }
    }

    /// The initialisation: `--init`, or by default the notebook's for its architecture on a toy
    /// set and the identity (zero last layers: the untrained flow is the scaler's Gaussian, and
    /// deeper stacks start stable) for the others and for data files.
    pub fn initialisation(&self, arch: rnvp::Arch, file: bool) -> Result<Init> {
        match self.init.as_deref() {
            Some("pytorch") => Ok(Init::Pytorch),
            Some("identity") => Ok(Init::Identity),
            None if arch == rnvp::Arch::NOTEBOOK && !file => Ok(Init::Pytorch),
            None => Ok(Init::Identity),
            Some(o) => Err(Error::InvalidConfig(format!("--init {o}: expected pytorch or identity"))),
        }
    }

    /// The architecture: `--arch` with the parts the other flags change.
    pub fn architecture(&self) -> Result<rnvp::Arch> {
        let mut a: rnvp::Arch = self.arch.parse()?;
        if let Some(c) = &self.coupling {
            a.coupling = c.parse()?;
            if a.coupling == rnvp::Coupling::Additive && self.scale.is_none() {
                a.scale = rnvp::Scale::Exp; // an additive coupling has no scale map
            }
        }
        if let Some(s) = &self.scale {
            a.scale = s.parse()?;
        }
        if let Some(m) = &self.mixing {
            a.mixing = m.parse()?;
        }
        a.actnorm = self.actnorm.unwrap_or(a.actnorm);
        a.batch_norm = self.batch_norm.unwrap_or(a.batch_norm);
        a.final_scale = self.final_scale.unwrap_or(a.final_scale);
        a.validate()?;
        Ok(a)
    }
}

/// Where and how to compute.
#[derive(Args, Debug, Clone)]
pub struct Compute {
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision: f32 or f64.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// libtorch intra-op threads (default: libtorch's choice); the fused kernels use as many.
    #[arg(long)]
    pub threads: Option<i32>,
    /// What computes the passes: auto (the fused CPU kernels for float32 flows whose conditioners
    /// take and give at most 64 columns, context included, where they beat libtorch; libtorch
    /// otherwise), fused, or libtorch (autograd, as the notebook).
    #[arg(long, default_value = "auto")]
    pub engine: String,
    /// The model's prefix in a checkpoint whose names carry one (`module.`, `model.`, ...): found
    /// by itself; needed only when a file holds several different models ("" for none).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A toy set (two-moons, circles, eight-gaussians, checkerboard, pinwheel, two-spirals), a
    /// .csv / .npy file with one sample per row, or images: `digits` (scikit-learn's 8×8 digits,
    /// the first 1437 trained on, the last 360 the test set), a .npy array [n, h, w] or
    /// [n, h, w, c], or a directory of PNG files.
    #[arg(long)]
    pub data: String,
    /// A tuned recipe whose values replace the defaults of the flags you do not give: `best`
    /// = --layers 8 --hidden 64 --batch-size 1024 --steps 20000 --lr 3e-3 --schedule cosine
    /// --warmup 100 --clip-grad 1 --init identity --val-every 500 --threads 1 (two moons: test NLL
    /// ≈ 1.132 nats, the floor being 1.131, after about 11 s of training on 2 cores); `glow` =
    /// the same with --arch glow --layers 16 --steps 8000 (steadier than the notebook's layers
    /// off two moons, e.g. on eight-gaussians and two-spirals; about 30 s on one core); `sbi` =
    /// --arch glow --layers 16 --hidden 64 --batch-size 256 --lr 2e-3 --warmup 2000 --steps 10000
    /// (without --steps, a data file trains for 60 epochs where that is more than 10000 steps, up
    /// to 20000) --patience 50 with best's cosine schedule and clipping, and with --bounds
    /// --bounds-mode truncate, for posterior estimation on simulations (--context M), keeping the
    /// best validation model; `digits` = --arch realnvp-image --layers 4 --hidden 64 --batch-size
    /// 128 --lr 1e-3 --steps 3000 --patience 20 --threads 2, for images (scikit-learn's digits:
    /// about 2.07 bits/dim on the test set).
    #[arg(long)]
    pub preset: Option<String>,
    /// Checkpoint to write (.safetensors). With early stopping (data files, by default) it holds
    /// the best validation model and <name>.last.safetensors the latest state; otherwise it holds
    /// the latest state and the best validation model goes beside it as <name>.best.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// The layers of each step: notebook (affine couplings with exp, flips alternating), nice
    /// (additive couplings, then a diagonal scaling), realnvp (tanh-scaled affine couplings, batch
    /// norm), glow (ActNorm → LU linear map → sigmoid-scaled affine coupling); for images
    /// realnvp-image (the R-NVP paper's multi-scale flow) and glow-image (Glow's). The flags below
    /// change the parts of the vector architectures.
    #[arg(long, default_value = "notebook")]
    pub arch: String,
    /// Coupling: affine or additive.
    #[arg(long)]
    pub coupling: Option<String>,
    /// Scale map of an affine coupling: exp, softclamp, sigmoid or tanh.
    #[arg(long)]
    pub scale: Option<String>,
    /// An ActNorm layer first in each step (--actnorm false removes it).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub actnorm: Option<bool>,
    /// What mixes the columns between couplings: flip (alternating halves), reverse, random
    /// (a fixed random permutation) or lu (Glow's invertible linear map).
    #[arg(long)]
    pub mixing: Option<String>,
    /// A batch-norm layer after each coupling (--batch-norm false removes it).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub batch_norm: Option<bool>,
    /// NICE's diagonal scaling layer after the last step (--final-scale false removes it).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub final_scale: Option<bool>,
    /// Train a conditional flow p(x | c): the last M columns of the data file are the context c,
    /// the others are modelled.
    #[arg(long, value_name = "M", default_value_t = 0, allow_negative_numbers = true)]
    pub context: i64,
    /// The box every modelled column lies in, LO,HI (e.g. a uniform prior's): every sample lies
    /// inside it and every density is normalised over it, kept as --bounds-mode says (logit space
    /// by default; --preset sbi truncates).
    #[arg(long, value_name = "LO,HI", allow_hyphen_values = true, conflicts_with = "bounds_file")]
    pub bounds: Option<String>,
    /// Decorrelate a data file's standardized modelled columns (whitening), so that the untrained
    /// flow (with --init identity, the default for files) is the full-covariance Gaussian of the
    /// file's rows; --whiten false standardizes each column only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub whiten: Option<bool>,
    /// Per-column bounds: a .csv / .npy file with one row LO,HI per modelled column.
    #[arg(long, value_name = "FILE")]
    pub bounds_file: Option<PathBuf>,
    /// How the flow keeps to the box of --bounds / --bounds-file: logit (it trains in logit space;
    /// every sample lies inside by construction) or truncate (it trains on the columns themselves;
    /// samples are its draws inside the box, and densities divide by its mass there, estimated
    /// from draws) [default: the preset's (sbi: truncate), else logit].
    #[arg(long, value_name = "MODE")]
    pub bounds_mode: Option<String>,
    /// Early stopping: stop after this many validations in a row without a better validation NLL
    /// (0: train all --steps); --out then holds the best validation model (the initial one
    /// included) and <name>.last.safetensors the latest state [default: 20 for a data file, 0 for
    /// a toy set].
    #[arg(long, allow_negative_numbers = true)]
    pub patience: Option<i64>,
    /// Steps (coupling layers); for an image architecture, couplings per group (realnvp-image:
    /// per mask type and scale, the paper's 3; glow-image: steps per level) [default: 3; image
    /// architectures: 4].
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    pub layers: i64,
    /// Hidden units of each sig_net / mu_net; for an image architecture, channels of each
    /// convolutional conditioner [default: 512; image architectures: 64].
    #[arg(long, default_value_t = 512, allow_negative_numbers = true)]
    pub hidden: i64,
    /// Scales of realnvp-image (each but the last squeezes and factors out half the channels) or
    /// levels of glow-image (each squeezes; each but the last splits off half the channels).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    pub scales: i64,
    /// Images: the number of levels of their values, where it cannot be inferred (float images)
    /// or to override the inferred one (256 for 8-bit, the largest value + 1 for other integers).
    #[arg(long, value_name = "L")]
    pub levels: Option<u32>,
    /// Images: the α of the logit transform y = logit(α + (1 − 2α) x) of the dequantized values.
    #[arg(long, default_value_t = rnvp::data::dequantize::ALPHA, allow_negative_numbers = true)]
    pub logit_alpha: f64,
    /// Conditioning columns of an unflipped layer [default: d/2].
    #[arg(long, allow_negative_numbers = true)]
    pub k: Option<i64>,
    /// Optimizer steps (total, also when resuming).
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    pub steps: i64,
    /// Rows per batch.
    #[arg(long, default_value_t = 512, allow_negative_numbers = true)]
    pub batch_size: i64,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    pub lr: f64,
    /// ExponentialLR decay per step.
    #[arg(long, default_value_t = 0.999, allow_negative_numbers = true)]
    pub gamma: f64,
    /// Learning-rate schedule: exponential (the notebook's, with --gamma) or cosine (to 0 at the
    /// last step).
    #[arg(long, default_value = "exponential")]
    pub schedule: String,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub warmup: i64,
    /// Noise of a toy set [default: the set's own, 0.05 for two-moons].
    #[arg(long, allow_negative_numbers = true)]
    pub noise: Option<f64>,
    /// Seed of the weights and batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Clip the gradients' global norm to this value (try 1 when the loss spikes: exp(σ) in the
    /// coupling layers can blow up on sharp data such as eight-gaussians). With clipping, a step
    /// whose loss or gradient is not finite is skipped (10 in a row stop the run).
    #[arg(long, allow_negative_numbers = true)]
    pub clip_grad: Option<f64>,
    /// Validate and checkpoint every this many steps [default: 100 on a toy set, once per epoch on a
    /// data file].
    #[arg(long, default_value_t = 100, hide_default_value = true, allow_negative_numbers = true)]
    pub val_every: i64,
    /// Validation points drawn from a toy set.
    #[arg(long, default_value_t = 5000, allow_negative_numbers = true)]
    pub val_size: i64,
    /// Fraction of a file's rows held out for validation.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub val_fraction: f64,
    /// Initialisation of a vector flow: pytorch (the notebook's) or identity (zero last layers)
    /// [default: pytorch for --arch notebook on a toy set, identity for the others and for data
    /// files]. Image flows start as their papers' (the last convolution of each conditioner at zero).
    #[arg(long)]
    pub init: Option<String>,
    /// Backpropagate without keeping activations: each layer's input is recomputed from its output
    /// (training memory stays constant as layers are added; about one extra forward pass of work).
    #[arg(long)]
    pub reversible_backprop: bool,
    /// Write the loss curve here as CSV (step,loss,val_nll).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Draw the figures into this directory (a conditional flow: at its data's mean context).
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
    /// Continue from this checkpoint (weights, optimizer state and step).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The trained flow.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A toy set (fresh points) or a .csv / .npy file.
    #[arg(long)]
    pub data: String,
    /// Points drawn from a toy set [default: 20000].
    #[arg(short, allow_negative_numbers = true)]
    pub n: Option<i64>,
    /// Noise of a toy set [default: the set's own].
    #[arg(long, allow_negative_numbers = true)]
    pub noise: Option<f64>,
    /// Seed of the drawn points (of images: of the dequantization noise).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// The trained flow.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Number of samples.
    #[arg(short, allow_negative_numbers = true)]
    pub n: i64,
    /// Seed of the base samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file (.csv or .npy) [default: CSV on stdout].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also draw the samples into this PNG (a flow of images: as a grid of images).
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// A flow of images: draw z ~ N(0, T²I) (Glow's temperature; below 1 gives smoother images).
    #[arg(long, value_name = "T", default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// A conditional flow's context, comma-separated (e.g. --context -0.6,0.2): draws x ~ p(x | c).
    #[arg(long, value_name = "C1,C2,..", allow_hyphen_values = true, conflicts_with = "context_file")]
    pub context: Option<String>,
    /// Contexts, one per row (.csv / .npy): draws -n samples for each row, in row order, with the
    /// context columns appended to each output row.
    #[arg(long, value_name = "FILE")]
    pub context_file: Option<PathBuf>,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(Args, Debug)]
pub struct MapArgs {
    /// The trained flow.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Input rows (.csv or .npy); for a conditional flow, the context columns come last.
    #[arg(long)]
    pub input: PathBuf,
    /// Output file (.csv or .npy) [default: CSV on stdout].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The trained flow.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data to draw with the flow: a toy set or a .csv / .npy file (a conditional flow's: its d
    /// modelled columns, then its m context columns).
    #[arg(long)]
    pub data: Option<String>,
    /// Directory for the PNG files.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Points drawn from the flow and from a toy set.
    #[arg(short, default_value_t = 3000, allow_negative_numbers = true)]
    pub n: i64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A conditional flow's context, comma-separated (e.g. --context -0.6,0.2): the samples and the
    /// density are those of p(x | c); the latents encode each data row with its own context.
    #[arg(long, value_name = "C1,C2,..", allow_hyphen_values = true)]
    pub context: Option<String>,
    /// A flow of images: the samples' temperature, z ~ N(0, T²I).
    #[arg(long, value_name = "T", default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    #[command(flatten)]
    pub compute: Compute,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint to read (any supported format).
    pub input: PathBuf,
    /// The file to write; its extension picks the format.
    pub output: PathBuf,
    /// The model's prefix in the checkpoint, when it holds several models (see `rnvp sample --help`).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Read the input as a flow of images of this shape, channels × height × width (e.g. 1x8x8): a
    /// PyTorch state_dict of realnvp-image or glow-image holds no image size.
    #[arg(long, value_name = "CxHxW", requires = "levels")]
    pub images: Option<String>,
    /// With --images: the number of levels of the images' values (17 for the digits).
    #[arg(long, value_name = "L")]
    pub levels: Option<u32>,
    /// With --images: the α of the logit the flow was trained behind [default: 0.05].
    #[arg(long, allow_negative_numbers = true)]
    pub logit_alpha: Option<f64>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The trained flow.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Directory for encode.pt, log_prob.pt and decode.pt.
    #[arg(long)]
    pub out: PathBuf,
    /// Precision of the exported functions: f32 or f64.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// The model's prefix in the checkpoint, when it holds several models (see `rnvp sample --help`).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The checkpoint.
    pub checkpoint: PathBuf,
    /// Print a JSON object.
    #[arg(long)]
    pub json: bool,
    /// The model's prefix in the checkpoint, when it holds several models (see `rnvp sample --help`).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
