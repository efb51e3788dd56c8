//! Training: the notebook's recipe (Adam, ExponentialLR stepped every iteration, loss
//! `−mean(log p(x))`), seeded batches, validation, checkpoints and resuming.
use crate::checkpoint::{Checkpoint, OptimizerState};
use crate::config::Layout;
use crate::data::rng::mix;
use crate::data::{self, Bounds, ImageSpace, Images, Matrix, Rng, Scaler, ToySet, Whitening};
use crate::error::{Error, Result};
use crate::flow::{Flow, StackedNvp};
use crate::kernel::{Packing, Scratch};
use crate::layers::{Layer, Mode};
use crate::run::{Engine, Run};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Hyper-parameters of a training run. `Default` is the notebook's recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Optimizer steps in total (a resumed run continues up to this step).
    pub steps: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// Adam's initial learning rate.
    pub lr: f64,
    /// ExponentialLR decay per step: `lr_t = lr · γ^t` (with `Schedule::Exponential`).
    pub gamma: f64,
    /// How the learning rate changes over the run.
    pub schedule: Schedule,
    /// Steps of linear warm-up from `lr / warmup` to `lr` (0: none).
    pub warmup: usize,
    /// Seed for the initial weights and every batch.
    pub seed: u64,
    /// Clip the gradients' global L2 norm to this value.
    pub clip_grad: Option<f64>,
    /// Validate (and checkpoint) every this many steps, and at the last step.
    pub val_every: usize,
    /// Validation points drawn for a generated data set.
    pub val_size: usize,
    /// Fraction of a file's rows held out for validation.
    pub val_fraction: f64,
    /// Backpropagate by recomputing each layer's input from its output (memory constant in depth).
    pub reversible: bool,
    /// What computes the training steps and the validation passes.
    pub engine: Engine,
    /// Early stopping: end the run after this many validations in a row without a better
    /// validation NLL (0: never). With it, the initial model is validated too, and the checkpoint
    /// `out` holds the best validation model (the latest state goes beside it, see [`last_path`]).
    pub patience: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 512,
            lr: 1e-3,
            gamma: 0.999,
            schedule: Schedule::Exponential,
            warmup: 0,
            seed: 0,
            clip_grad: None,
            val_every: 100,
            val_size: 5_000,
            val_fraction: 0.1,
            reversible: false,
            engine: Engine::Auto,
            patience: 0,
        }
    }
}

impl TrainConfig {
    /// The learning rate after `t` steps (schedule and warm-up applied).
    pub fn lr_at(&self, t: i64) -> f64 {
        let base = match self.schedule {
            Schedule::Exponential => self.lr * self.gamma.powf(t as f64),
            Schedule::Cosine => {
                let frac = (t as f64 / self.steps.max(1) as f64).min(1.0);
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        };
        if (t as usize) < self.warmup {
            base * (t + 1) as f64 / self.warmup as f64
        } else {
            base
        }
    }

    /// Checks every value is usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidConfig(m.to_string()));
        if self.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(&format!("learning rate {} must be positive", self.lr));
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0 && self.gamma <= 1.0) {
            return bad(&format!("gamma {} must be in (0, 1]", self.gamma));
        }
        if self.clip_grad.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("gradient clipping needs a positive norm");
        }
        if self.val_every == 0 || self.val_size == 0 {
            return bad("validation interval and size must be at least 1");
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return bad(&format!("validation fraction {} must be in (0, 1)", self.val_fraction));
        }
        Ok(())
    }
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// The notebook's `ExponentialLR`: `lr · γ^t`.
    #[default]
    Exponential,
    /// Cosine annealing from `lr` to 0 over the run: `lr · ½(1 + cos(π t / steps))`.
    Cosine,
}

/// Where batches come from.
#[derive(Debug, Clone)]
pub enum TrainData {
    /// A generated set: a fresh batch every step, each standardized on itself (as the notebook).
    Toy {
        /// The set.
        set: ToySet,
        /// Its noise parameter.
        noise: f64,
    },
    /// A fixed table, already standardized: epochs of shuffled batches.
    Table {
        /// Training rows.
        train: Matrix,
        /// Held-out rows.
        val: Matrix,
        /// The box the modelled columns were declared to lie in (in logit space here, unless
        /// truncated).
        bounds: Option<Bounds>,
        /// The decorrelation of the standardized modelled columns, if any.
        whiten: Option<Whitening>,
        /// The mean over the held-out rows of `log|dy/dx|` of the logit map and the whitening (0
        /// without them; the scaler's is [`mean_nll`]'s), which brings validation NLLs back to
        /// the data's units.
        val_log_det: f64,
    },
    /// Images: epochs of shuffled batches of level values, dequantized with fresh noise every
    /// batch and taken through the logit ([`ImageSpace`]).
    Images {
        /// Training images, one row of level values each.
        train: Matrix,
        /// Held-out images, dequantized once (seeded) and in logit space.
        val: Matrix,
        /// The mean over the held-out images of the logit's `log|dy/dx|`.
        val_log_det: f64,
        /// Their shape, levels and logit.
        space: ImageSpace,
    },
}

impl TrainData {
    /// Splits a data file's rows into training and validation (seeded shuffle), fits the scaler to
    /// all the rows (the preprocessing is then the same whatever the split) and standardizes both.
    pub fn from_table(m: &Matrix, val_fraction: f64, seed: u64) -> Result<(TrainData, Scaler)> {
        Self::from_table_in(m, val_fraction, seed, None, None)
    }

    /// [`TrainData::from_table`] for rows whose first columns lie in the box `bounds` (they are
    /// taken to logit space, see [`Bounds`], before the scaler is fitted, unless truncated), and with `whiten =
    /// Some(d)`, the first `d` standardized columns decorrelated ([`Whitening`], fitted to all the
    /// rows): a flow that starts as the identity is then the full-covariance Gaussian fitted to
    /// the file.
    pub fn from_table_in(
        m: &Matrix,
        val_fraction: f64,
        seed: u64,
        bounds: Option<&Bounds>,
        whiten: Option<usize>,
    ) -> Result<(TrainData, Scaler)> {
        let n_val = ((m.rows as f64) * val_fraction).round().max(1.0) as usize;
        if m.rows < n_val + 2 {
            return Err(Error::Data(format!("{} rows are too few to train and validate on", m.rows)));
        }
        let perm = Rng::new(mix(seed, u64::MAX - 1)).permutation(m.rows);
        let (val_idx, train_idx) = perm.split_at(n_val);
        // bounded columns go to logit space first, unless truncated (errors name the file's row,
        // not the split's)
        let (logit, val_log_det) = match bounds {
            Some(b) => {
                let (y, log_det) = b.to_flow(m)?;
                (Some(y), val_idx.iter().map(|&i| log_det[i]).sum::<f64>() / val_idx.len() as f64)
            }
            None => (None, 0.0),
        };
        let source = logit.as_ref().unwrap_or(m);
        let scaler = Scaler::fit(source)?;
        let mut all = scaler.transform(source)?;
        let mut val_log_det = val_log_det;
        let whiten = match whiten {
            Some(d) => {
                let w = Whitening::fit(&all, d)?;
                all = w.whiten(&all)?;
                val_log_det += w.log_det();
                Some(w)
            }
            None => None,
        };
        let (train, val) = (pick_from(&all, train_idx)?, pick_from(&all, val_idx)?);
        Ok((TrainData::Table { train, val, bounds: bounds.cloned(), whiten, val_log_det }, scaler))
    }

    /// Images for training, the last `round(n · val_fraction)` (at least 1) held out for
    /// validation (in order: the split is the same whatever the seed), with the logit's `alpha`.
    pub fn from_images(images: &Images, val_fraction: f64, seed: u64, alpha: f64) -> Result<TrainData> {
        let space = ImageSpace::of(images, alpha)?;
        let n_val = ((images.n as f64) * val_fraction).round().max(1.0) as usize;
        if images.n < n_val + 2 {
            return Err(Error::Data(format!("{} images are too few to train and validate on", images.n)));
        }
        let split = images.n - n_val;
        let train = images.select(0..split).to_matrix();
        let (val, log_det) = space
            .to_flow(&images.select(split..images.n).to_matrix(), &mut Rng::new(mix(seed, u64::MAX - 2)))?;
        let val_log_det = log_det.iter().sum::<f64>() / log_det.len() as f64;
        Ok(TrainData::Images { train, val, val_log_det, space })
    }

    /// Dimension of the data.
    pub fn dim(&self) -> usize {
        match self {
            TrainData::Toy { .. } => 2,
            TrainData::Table { train, .. } | TrainData::Images { train, .. } => train.cols,
        }
    }

    /// The images' shape, levels and logit, for image data.
    pub fn image_space(&self) -> Option<&ImageSpace> {
        match self {
            TrainData::Images { space, .. } => Some(space),
            _ => None,
        }
    }

    /// The rows trained on per epoch (`None` for a toy set, drawn afresh).
    pub fn train_rows(&self) -> Option<usize> {
        match self {
            TrainData::Toy { .. } => None,
            TrainData::Table { train, .. } | TrainData::Images { train, .. } => Some(train.rows),
        }
    }

    /// The batch for `step` (0-based): a function of the seed and the step alone; with the mean
    /// `log|dy/dx|` of its preprocessing that the loss leaves out (images: the logit's; 0 for
    /// other data).
    fn batch(
        &self,
        step: usize,
        cfg: &TrainConfig,
        epoch_perm: &mut Option<(usize, Vec<usize>)>,
    ) -> Result<(Matrix, f64)> {
        match self {
            TrainData::Toy { set, noise } => {
                let mut rng = Rng::new(mix(cfg.seed, step as u64));
                Ok((data::scaler::standardize(&set.sample(cfg.batch_size, *noise, &mut rng))?, 0.0))
            }
            TrainData::Table { train, .. } | TrainData::Images { train, .. } => {
                let per_epoch = train.rows.div_ceil(cfg.batch_size);
                let (epoch, j) = (step / per_epoch, step % per_epoch);
                if epoch_perm.as_ref().map(|(e, _)| *e) != Some(epoch) {
                    let perm = Rng::new(mix(cfg.seed, epoch as u64)).permutation(train.rows);
                    *epoch_perm = Some((epoch, perm));
                }
                let perm = &epoch_perm.as_ref().expect("invariant: set above").1; // invariant: set above
                let rows = &perm[j * cfg.batch_size..((j + 1) * cfg.batch_size).min(train.rows)];
                let data = rows.iter().flat_map(|&i| train.row(i).iter().copied()).collect();
                let batch = Matrix::new(rows.len(), train.cols, data)?;
                match self {
                    // fresh noise for every batch: a function of the seed and the step
                    TrainData::Images { space, .. } => {
                        let mut rng = Rng::new(mix(cfg.seed ^ DEQUANTIZE, step as u64));
                        let (ys, log_det) = space.to_flow(&batch, &mut rng)?;
                        Ok((ys, log_det.iter().sum::<f64>() / log_det.len().max(1) as f64))
                    }
                    _ => Ok((batch, 0.0)),
                }
            }
        }
    }

    /// The box of a table's modelled columns, if declared.
    pub fn bounds(&self) -> Option<&Bounds> {
        match self {
            TrainData::Table { bounds, .. } => bounds.as_ref(),
            TrainData::Toy { .. } | TrainData::Images { .. } => None,
        }
    }

    /// The whitening of a table's modelled columns, if any.
    pub fn whitening(&self) -> Option<&Whitening> {
        match self {
            TrainData::Table { whiten, .. } => whiten.as_ref(),
            TrainData::Toy { .. } | TrainData::Images { .. } => None,
        }
    }

    /// The mean `log|dy/dx|` of the logit map and the whitening over the held-out rows.
    pub fn val_log_det(&self) -> f64 {
        match self {
            TrainData::Table { val_log_det, .. } | TrainData::Images { val_log_det, .. } => *val_log_det,
            TrainData::Toy { .. } => 0.0,
        }
    }

    /// The validation set (standardized).
    pub fn validation(&self, cfg: &TrainConfig) -> Result<Matrix> {
        match self {
            TrainData::Toy { set, noise } => {
                let mut rng = Rng::new(mix(cfg.seed, u64::MAX));
                data::scaler::standardize(&set.sample(cfg.val_size, *noise, &mut rng))
            }
            TrainData::Table { val, .. } | TrainData::Images { val, .. } => Ok(val.clone()),
        }
    }
}

/// The rows `idx` of `m`.
fn pick_from(m: &Matrix, idx: &[usize]) -> Result<Matrix> {
    let data = idx.iter().flat_map(|&i| m.row(i).iter().copied()).collect();
    Matrix::new(idx.len(), m.cols, data)
}

/// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8) and an ExponentialLR schedule.
#[derive(Debug)]
pub struct Adam {
    vars: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i64,
    cfg: TrainConfig,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    /// An optimizer over every trainable variable of the flow with the learning rate and schedule
    /// of `cfg` (state from `resume` if given).
    pub fn new(flow: &Flow, cfg: &TrainConfig, resume: Option<&OptimizerState>) -> Result<Self> {
        check_resume_step(resume)?;
        // parameters only: buffers (ActNorm's flag, batch norm's running statistics, permutations)
        // have no gradient and no optimizer state
        let mut vars: Vec<(String, Tensor)> =
            flow.var_store().variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut exp_avg, mut exp_avg_sq) = (vec![], vec![]);
        for (name, v) in &vars {
            let state = |m: Option<&BTreeMap<String, Tensor>>| -> Result<Tensor> {
                match m.and_then(|m| m.get(name)) {
                    Some(t) if t.size() == v.size() => Ok(t.f_to_kind(v.kind())?.f_to_device(v.device())?),
                    Some(t) => Err(Error::Shape {
                        what: format!("optimizer state of '{name}'"),
                        expected: format!("{:?}", v.size()),
                        found: t.size(),
                    }),
                    None if resume.is_some() => {
                        Err(Error::Data(format!("the checkpoint has no optimizer state for '{name}'")))
                    }
                    None => Ok(v.zeros_like()),
                }
            };
            exp_avg.push(state(resume.map(|r| &r.exp_avg))?);
            exp_avg_sq.push(state(resume.map(|r| &r.exp_avg_sq))?);
        }
        Ok(Adam { vars, exp_avg, exp_avg_sq, step: resume.map_or(0, |r| r.step), cfg: cfg.clone() })
    }

    /// The learning rate after `t` steps.
    pub fn lr_at(&self, t: i64) -> f64 {
        self.cfg.lr_at(t)
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.lr_at(self.step)
    }

    /// Steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Counts a step without updating (a skipped step): the schedule and resuming stay aligned
    /// with the training loop's step numbers.
    pub fn skip(&mut self) {
        self.step += 1;
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, v) in &mut self.vars {
            v.zero_grad();
        }
    }

    /// Scales the gradients so that their global L2 norm is at most `max`; returns the norm.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> =
                self.vars.iter().map(|(_, v)| v.grad()).filter(|g| g.defined()).collect();
            let total: f64 =
                grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
            let coef = max / (total + 1e-6);
            if coef < 1.0 {
                for mut g in grads {
                    let _ = g.f_mul_scalar_(coef);
                }
            }
            total
        })
    }

    /// One Adam update (as `torch.optim.Adam`), then one scheduler step.
    pub fn step(&mut self) {
        let lr = self.lr();
        self.step += 1;
        let bc1 = 1.0 - Self::BETA1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - Self::BETA2.powi(self.step as i32)).sqrt();
        tch::no_grad(|| {
            for (((_, v), m), s) in self.vars.iter_mut().zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
                let g = v.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.lerp_(&g, 1.0 - Self::BETA1);
                let _ = s.f_mul_scalar_(Self::BETA2);
                let _ = s.addcmul_(&g, &(&g * (1.0 - Self::BETA2)));
                let denom = s.sqrt() / bc2_sqrt + Self::EPS;
                let _ = v.addcdiv_(&(&*m * (-lr / bc1)), &denom);
            }
        });
    }

    /// The state, for a checkpoint (copied to the CPU).
    pub fn state(&self) -> OptimizerState {
        let copy = |ts: &[Tensor]| -> BTreeMap<String, Tensor> {
            self.vars
                .iter()
                .zip(ts)
                .map(|((n, _), t)| (n.clone(), t.to_device(tch::Device::Cpu).copy()))
                .collect()
        };
        OptimizerState { step: self.step, exp_avg: copy(&self.exp_avg), exp_avg_sq: copy(&self.exp_avg_sq) }
    }
}

/// Training with the fused kernels: the flow's parameters, gradients and Adam's moments as flat
/// buffers (see [`crate::kernel`]); the same update as [`Adam`], element by element in float32.
#[derive(Debug)]
pub struct FusedAdam {
    pk: Packing,
    layout: Layout,
    params: Vec<f32>,
    grads: Vec<f32>,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    step: i64,
    cfg: TrainConfig,
    scratch: Vec<(Scratch, Vec<f32>)>,
    /// An ActNorm layer still waits for its data-dependent initialisation (done by libtorch on
    /// the first batch, then the weights are packed again).
    needs_data_init: bool,
}

impl FusedAdam {
    /// Packs the flow's weights (and the optimizer state of `resume`).
    pub fn new(pk: Packing, flow: &Flow, cfg: &TrainConfig, resume: Option<&OptimizerState>) -> Result<Self> {
        check_resume_step(resume)?;
        let layout = flow.stack().config().layout;
        let params = pk.pack(flow.stack().layers())?;
        let moment = |m: Option<&BTreeMap<String, Tensor>>| -> Result<Vec<f32>> {
            match m {
                Some(m) => pk.from_named(m, layout).map_err(|e| Error::Data(format!("optimizer state: {e}"))),
                None => Ok(vec![0.0; pk.len()]),
            }
        };
        Ok(FusedAdam {
            exp_avg: moment(resume.map(|r| &r.exp_avg))?,
            exp_avg_sq: moment(resume.map(|r| &r.exp_avg_sq))?,
            grads: vec![0.0; pk.len()],
            params,
            pk,
            layout,
            step: resume.map_or(0, |r| r.step),
            cfg: cfg.clone(),
            scratch: vec![],
            needs_data_init: flow
                .stack()
                .layers()
                .iter()
                .any(|l| matches!(l, Layer::ActNorm(a) if !a.is_initialized())),
        })
    }

    /// Runs the data-dependent initialisation of the flow's ActNorm layers on `batch` (with its
    /// context, for a conditional flow) if they still need it (a training-mode pass through
    /// libtorch), and packs the weights again.
    pub fn initialize(&mut self, flow: &Flow, batch: &Tensor, context: Option<&Tensor>) -> Result<()> {
        if !self.needs_data_init {
            return Ok(());
        }
        let _ = tch::no_grad(|| flow.stack().forward_in(batch, context, Mode::Train))?;
        self.params = self.pk.pack(flow.stack().layers())?;
        self.needs_data_init = false;
        Ok(())
    }

    /// The mean loss of the rows `xs` (row-major, `d` numbers per row) given their context `ctx`
    /// (`m` numbers per row; empty for an unconditional flow); its gradient replaces the
    /// previous one.
    pub fn loss_grad(&mut self, xs: &[f32], ctx: &[f32]) -> Result<f64> {
        let (d, m) = (self.pk.d(), self.pk.context());
        if !xs.len().is_multiple_of(d) || ctx.len() != xs.len() / d * m {
            return Err(Error::Data(format!(
                "a batch of {} numbers with {} of context is not rows of d = {d} with m = {m}",
                xs.len(),
                ctx.len()
            )));
        }
        let threads = crate::run::threads();
        let (pk, cfg) = (&self.pk, &self.cfg);
        let batch = (xs, ctx);
        Ok(pk.mean_loss_grad(
            &self.params,
            &mut self.grads,
            batch,
            cfg.reversible,
            threads,
            &mut self.scratch,
        ))
    }

    /// Counts a step without updating (a skipped step): the schedule and resuming stay aligned
    /// with the training loop's step numbers.
    pub fn skip(&mut self) {
        self.step += 1;
    }

    /// The gradient buffer (packed like the parameters) that the next [`FusedAdam::step`] applies:
    /// the last [`FusedAdam::loss_grad`]'s, or whatever is written here.
    pub fn grads_mut(&mut self) -> &mut [f32] {
        &mut self.grads
    }

    /// The packed parameters.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Scales the gradient so that its L2 norm is at most `max`; returns the norm.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let total = self.grads.iter().map(|&g| g as f64 * g as f64).sum::<f64>().sqrt();
        let coef = max / (total + 1e-6);
        if coef < 1.0 {
            self.grads.iter_mut().for_each(|g| *g *= coef as f32);
        }
        total
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f64 {
        self.cfg.lr_at(self.step)
    }

    /// Steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// One Adam update, as `torch.optim.Adam` computes it for float32 parameters.
    pub fn step(&mut self) {
        let lr = self.lr();
        self.step += 1;
        let bc1 = 1.0 - Adam::BETA1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - Adam::BETA2.powi(self.step as i32)).sqrt() as f32;
        let (w1, w2, eps, step_size) =
            ((1.0 - Adam::BETA1) as f32, (1.0 - Adam::BETA2) as f32, Adam::EPS as f32, (-lr / bc1) as f32);
        let beta2 = Adam::BETA2 as f32;
        for (((p, &g), m), v) in
            self.params.iter_mut().zip(&self.grads).zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq)
        {
            *m += w1 * (g - *m);
            *v = *v * beta2 + g * (g * w2);
            *p += step_size * *m / (v.sqrt() / bc2_sqrt + eps);
        }
    }

    /// Copies the trained weights into the flow.
    pub fn write_back(&self, flow: &Flow) -> Result<()> {
        self.pk.unpack(&self.params, flow.stack().layers())
    }

    /// The state, for a checkpoint.
    pub fn state(&self) -> OptimizerState {
        OptimizerState {
            step: self.step,
            exp_avg: self.pk.named(&self.exp_avg, self.layout),
            exp_avg_sq: self.pk.named(&self.exp_avg_sq, self.layout),
        }
    }
}

fn check_resume_step(resume: Option<&OptimizerState>) -> Result<()> {
    match resume {
        Some(r) if r.step < 0 => Err(Error::Data(format!("the optimizer state has step {} (< 0)", r.step))),
        _ => Ok(()),
    }
}

/// The optimizer of a run: libtorch's autograd with [`Adam`], or the fused kernels.
enum Optimizer {
    Libtorch(Adam),
    Fused(Box<FusedAdam>),
}

impl Optimizer {
    fn steps(&self) -> i64 {
        match self {
            Optimizer::Libtorch(a) => a.steps(),
            Optimizer::Fused(f) => f.steps(),
        }
    }

    fn lr(&self) -> f64 {
        match self {
            Optimizer::Libtorch(a) => a.lr(),
            Optimizer::Fused(f) => f.lr(),
        }
    }

    fn state(&self) -> OptimizerState {
        match self {
            Optimizer::Libtorch(a) => a.state(),
            Optimizer::Fused(f) => f.state(),
        }
    }

    /// One training step on `batch`: the loss, and whether the parameters were updated. Without
    /// clipping every step with a finite loss updates; with `clip_grad`, a step whose loss or
    /// gradient norm is not finite is skipped instead (one bad batch cannot poison the weights).
    fn train_step(&mut self, flow: &Flow, batch: &Matrix, cfg: &TrainConfig) -> Result<(f64, bool)> {
        let loss = match self {
            Optimizer::Libtorch(adam) => {
                let (xs, c) = rows_and_context(flow.stack(), batch)?;
                adam.zero_grad();
                flow.stack().loss_backward(&xs, c.as_ref(), cfg.reversible)?
            }
            Optimizer::Fused(f) => {
                if f.needs_data_init {
                    let (xs, c) = rows_and_context(flow.stack(), batch)?;
                    f.initialize(flow, &xs, c.as_ref())?;
                }
                let d = flow.stack().config().d as usize;
                if batch.cols < d {
                    return Err(Error::Shape {
                        what: "batch".into(),
                        expected: format!("[n, {d}] and the context"),
                        found: vec![batch.rows as i64, batch.cols as i64],
                    });
                }
                // the rows' modelled columns and their context columns, apart
                let (mut xs, mut ctx) = (Vec::with_capacity(batch.rows * d), vec![]);
                for i in 0..batch.rows {
                    let (x, c) = batch.row(i).split_at(d);
                    xs.extend(x.iter().map(|&v| v as f32));
                    ctx.extend(c.iter().map(|&v| v as f32));
                }
                f.loss_grad(&xs, &ctx)?
            }
        };
        if !loss.is_finite() {
            return Ok((loss, false));
        }
        if let Some(c) = cfg.clip_grad {
            let norm = match self {
                Optimizer::Libtorch(adam) => adam.clip_grad_norm(c),
                Optimizer::Fused(f) => f.clip_grad_norm(c),
            };
            if !norm.is_finite() {
                return Ok((loss, false));
            }
        }
        match self {
            Optimizer::Libtorch(adam) => adam.step(),
            Optimizer::Fused(f) => f.step(),
        }
        Ok((loss, true))
    }

    /// Counts a skipped step.
    fn skip(&mut self) {
        match self {
            Optimizer::Libtorch(a) => a.skip(),
            Optimizer::Fused(f) => f.skip(),
        }
    }

    /// Makes the flow's variables current.
    fn sync(&self, flow: &Flow) -> Result<()> {
        match self {
            Optimizer::Libtorch(_) => Ok(()),
            Optimizer::Fused(f) => f.write_back(flow),
        }
    }
}

/// The step and validation NLL of the best model a previous run with early stopping left in
/// `out` (its `info`), if `out` holds one.
fn kept_best(out: &Path) -> Option<(usize, f64)> {
    let ck = Checkpoint::load(out).ok()?;
    let nll = ck.info.get("val_nll")?.as_f64().filter(|v| v.is_finite())?;
    let step = ck.info.get("step")?.as_u64()? as usize;
    Some((step, nll))
}

/// With early stopping, the least time between two writes of the best model and the latest state.
const SAVE_SECONDS: f64 = 10.0;

/// Mixed into the seed of the dequantization noise (apart from the batch order's stream).
const DEQUANTIZE: u64 = 0x6465_7175_616e_7420;

/// Consecutive skipped steps (non-finite loss or gradient, with clipping) that end a run.
const MAX_SKIPPED: usize = 10;

/// What the trainer reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// An optimizer step finished.
    Step {
        /// The step number (1-based).
        step: usize,
        /// The batch's loss (mean negative log-likelihood, nats).
        loss: f64,
        /// The learning rate used.
        lr: f64,
    },
    /// A validation finished.
    Validation {
        /// The step number.
        step: usize,
        /// Mean negative log-likelihood of the validation set (nats, in the data's units).
        nll: f64,
        /// Whether it is the best so far.
        best: bool,
    },
}

/// Why a run stopped before its last step. The checkpoint file keeps the last good state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// The batch loss of `step` was not finite (without gradient clipping).
    Loss {
        /// The step.
        step: usize,
        /// Its loss.
        loss: f64,
    },
    /// Ten steps in a row, the last `step`, had a non-finite loss or gradient (with clipping).
    Skipped {
        /// The last of them.
        step: usize,
    },
    /// The validation NLL after `step` was not finite: the model gives some validation point a
    /// density of zero, infinity or NaN, which is a broken model.
    Validation {
        /// The step.
        step: usize,
        /// The validation NLL.
        nll: f64,
    },
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Loss { step, loss } => write!(f, "the loss became {loss} at step {step}"),
            Stop::Skipped { step } => write!(
                f,
                "the loss or gradient was not finite for {MAX_SKIPPED} steps in a row (the last at step {step})"
            ),
            Stop::Validation { step, nll } => write!(f, "the validation NLL became {nll} at step {step}"),
        }
    }
}

/// The outcome of a training run.
#[derive(Debug, Clone, Default)]
pub struct TrainReport {
    /// Step before the first step of this run (non-zero when resumed).
    pub start_step: usize,
    /// Training loss of each step of this run (`losses[i]` is step `start_step + i + 1`); for
    /// images, the NLL in nats of the dequantized images (the logit's log-determinant added back).
    pub losses: Vec<f64>,
    /// `(step, validation NLL)` at each validation.
    pub val: Vec<(usize, f64)>,
    /// Seconds of training (validation time excluded) at each validation.
    pub val_seconds: Vec<f64>,
    /// The best validation `(step, NLL)`.
    pub best: Option<(usize, f64)>,
    /// Why the run stopped before its last step, if it did.
    pub diverged: Option<Stop>,
    /// The step after which early stopping ended the run (validations without improvement).
    pub stopped_early: Option<usize>,
    /// The step whose state the checkpoint file (`out`) holds: the start, or the last validation
    /// with a finite NLL, or with early stopping the best validation (`None` without `out`).
    pub saved: Option<usize>,
    /// Steps skipped because their loss or gradient was not finite (only with `clip_grad`).
    pub skipped: Vec<usize>,
    /// Seconds spent in the training loop.
    pub seconds: f64,
}

impl TrainReport {
    /// The loss curve as CSV: `step,loss,val_nll,seconds` (the last two only where a validation
    /// ran; seconds of training before it).
    pub fn csv(&self) -> String {
        let val: BTreeMap<usize, (f64, f64)> =
            self.val.iter().zip(&self.val_seconds).map(|(&(s, v), &t)| (s, (v, t))).collect();
        let mut s = String::from("step,loss,val_nll,seconds\n");
        for (i, loss) in self.losses.iter().enumerate() {
            let step = self.start_step + i + 1;
            match val.get(&step) {
                Some((v, t)) => s.push_str(&format!("{step},{loss},{v},{t:.3}\n")),
                None => s.push_str(&format!("{step},{loss},,\n")),
            }
        }
        s
    }

    /// Training steps per second.
    pub fn steps_per_second(&self) -> f64 {
        self.losses.len() as f64 / self.seconds.max(1e-9)
    }
}

/// The rows of `m` as the flow's input and, for a conditional flow, their context: the first `d`
/// columns, then the last `m` (`d + m` columns in all).
pub fn rows_and_context(flow: &StackedNvp, m: &Matrix) -> Result<(Tensor, Option<Tensor>)> {
    let (d, ctx) = (flow.config().d, flow.config().context);
    if m.cols as i64 != d + ctx {
        return Err(Error::Shape {
            what: "rows".into(),
            expected: format!("[n, {}] ({d} modelled columns and {ctx} context columns)", d + ctx),
            found: vec![m.rows as i64, m.cols as i64],
        });
    }
    let t = data::to_tensor(m, flow.kind(), flow.device())?;
    if ctx == 0 {
        return Ok((t, None));
    }
    Ok((t.narrow(1, 0, d), Some(t.narrow(1, d, ctx))))
}

/// Mean negative log-likelihood of `xs` (standardized rows, with their context columns last for a
/// conditional flow) under the flow, in the data's units: `−mean(log p_model(xs)) −
/// scaler.log_det_of(d)`.
pub fn mean_nll(flow: Run<'_>, xs: &Matrix, scaler: Option<&Scaler>) -> Result<f64> {
    Ok(nll_and_non_finite(flow, xs, scaler)?.0)
}

/// [`mean_nll`] and the number of rows whose log-density is not finite (which make it so).
pub fn nll_and_non_finite(flow: Run<'_>, xs: &Matrix, scaler: Option<&Scaler>) -> Result<(f64, usize)> {
    let (t, c) = rows_and_context(flow.flow(), xs)?;
    let lp = flow.given_opt(c.as_ref()).log_prob(&t)?;
    let nll = -lp.f_mean(Kind::Double)?.double_value(&[]);
    let non_finite = lp.f_isfinite()?.logical_not().f_sum(Kind::Int64)?.int64_value(&[]) as usize;
    let d = flow.flow().config().d as usize;
    Ok((nll - scaler.map_or(0.0, |s| s.log_det_of(d)), non_finite))
}

/// A training run: the flow, the data, the recipe, and where checkpoints go.
pub struct Trainer<'a> {
    /// The flow being trained.
    pub flow: &'a Flow,
    /// The batches.
    pub data: &'a TrainData,
    /// The recipe.
    pub cfg: &'a TrainConfig,
    /// The scaler stored with checkpoints (file data).
    pub scaler: Option<Scaler>,
    /// Write the latest state here (at every validation and at the end) and the best validation
    /// model beside it as `<stem>.best.safetensors`.
    pub out: Option<PathBuf>,
    /// Extra information stored in checkpoints.
    pub info: Map<String, Value>,
}

/// `model.safetensors` → `model.best.safetensors`.
pub fn best_path(out: &Path) -> PathBuf {
    beside(out, "best")
}

/// `model.safetensors` → `model.last.safetensors`: the latest state of a run with early stopping.
pub fn last_path(out: &Path) -> PathBuf {
    beside(out, "last")
}

fn beside(out: &Path, tag: &str) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext =
        out.extension().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "safetensors".into());
    out.with_file_name(format!("{stem}.{tag}.{ext}"))
}

impl Trainer<'_> {
    fn save(&self, path: &Path, opt: Option<&Optimizer>, step: usize, val: Option<f64>) -> Result<()> {
        self.save_with(path, opt, step, val, None)
    }

    /// [`Trainer::save`] with the variables `vars` (by name) instead of the flow's current ones.
    fn save_with(
        &self,
        path: &Path,
        opt: Option<&Optimizer>,
        step: usize,
        val: Option<f64>,
        vars: Option<&BTreeMap<String, Tensor>>,
    ) -> Result<()> {
        let mut ck = Checkpoint::from_flow(self.flow, self.scaler.clone());
        if let Some(vars) = vars {
            for (name, t) in ck.tensors.iter_mut() {
                if let Some(v) = vars.get(name) {
                    *t = v.to_device(tch::Device::Cpu).copy();
                }
            }
        }
        ck.bounds = self.data.bounds().cloned();
        ck.whiten = self.data.whitening().cloned();
        ck.images = self.data.image_space().copied();
        ck.optimizer = opt.map(Optimizer::state);
        ck.info = self.info.clone();
        ck.info.insert("step".into(), json!(step));
        if let Some(v) = val {
            ck.info.insert("val_nll".into(), json!(v));
        }
        ck.info.insert("lr".into(), json!(self.cfg.lr));
        ck.info.insert("gamma".into(), json!(self.cfg.gamma));
        ck.info.insert("seed".into(), json!(self.cfg.seed));
        ck.info.insert("batch_size".into(), json!(self.cfg.batch_size));
        ck.save(path)
    }

    /// Trains from the optimizer state in `resume` (or from scratch) up to `cfg.steps`, calling
    /// `on_event` after every step and validation. A non-finite loss (or, with clipping, ten
    /// skipped steps in a row) or a non-finite validation NLL stops the run (reported in
    /// `diverged`); the checkpoint on disk then stays the last good one (`saved`).
    pub fn run(
        &self,
        resume: Option<&OptimizerState>,
        mut on_event: impl FnMut(Event),
    ) -> Result<TrainReport> {
        self.cfg.validate()?;
        let mut opt = match self.flow.stack().run(self.cfg.engine).fused_packing()? {
            Some(pk) => Optimizer::Fused(Box::new(FusedAdam::new(pk, self.flow, self.cfg, resume)?)),
            None => Optimizer::Libtorch(Adam::new(self.flow, self.cfg, resume)?),
        };
        let start = opt.steps() as usize;
        let val_set = self.data.validation(self.cfg)?;
        let mut report = TrainReport { start_step: start, ..Default::default() };
        let mut best = f64::INFINITY;
        let mut perm = None;
        let patience = self.cfg.patience;
        let validate = || -> Result<f64> {
            Ok(mean_nll(self.flow.stack().run(self.cfg.engine), &val_set, self.scaler.as_ref())?
                - self.data.val_log_det())
        };
        // with early stopping: the best model's variables (restored into the flow at the end),
        // whether `out` is behind them, and the best a resumed run must beat (`out`'s own)
        let snapshot = || -> BTreeMap<String, Tensor> {
            self.flow.var_store().variables().into_iter().map(|(k, t)| (k, t.detach().copy())).collect()
        };
        let mut best_vars = None;
        let mut best_unsaved = false;
        let kept = match (&self.out, resume) {
            (Some(out), Some(_)) if patience > 0 => kept_best(out),
            _ => None,
        };
        if let Some((step, nll)) = kept {
            best = nll;
            report.best = Some((step, nll));
            report.saved = Some(step);
        }
        if let Some(out) = &self.out {
            // fails early on an unwritable path, and is the last good state until the first
            // validation; with early stopping `out` is the best model (weights only) and the state
            // to resume goes beside it
            if patience == 0 {
                self.save(out, Some(&opt), start, None)?;
                report.saved = Some(start);
            } else {
                self.save(&last_path(out), Some(&opt), start, None)?;
                if kept.is_none() {
                    self.save(out, None, start, None)?;
                    report.saved = Some(start);
                }
            }
        }
        if patience > 0 {
            // the initial model is a candidate: training must beat it on the held-out rows
            let nll = validate()?;
            report.val.push((start, nll));
            report.val_seconds.push(0.0);
            on_event(Event::Validation { step: start, nll, best: nll < best });
            if nll < best {
                best = nll;
                best_vars = Some(snapshot());
                best_unsaved = true; // written with its NLL at the end (or sooner)
                report.best = Some((start, nll));
            }
        }
        let mut last_write = Instant::now();
        let mut since_best = 0;
        let t0 = Instant::now();
        let mut paused = 0.0; // seconds spent validating and saving
        for step in start + 1..=self.cfg.steps {
            let (batch, shift) = self.data.batch(step - 1, self.cfg, &mut perm)?;
            let lr = opt.lr();
            let (loss_value, updated) = opt.train_step(self.flow, &batch, self.cfg)?;
            if !updated {
                // without clipping, or after MAX_SKIPPED bad steps in a row, training has diverged
                let run =
                    report.skipped.iter().rev().zip((0..step).rev()).take_while(|(s, t)| *s == t).count();
                if self.cfg.clip_grad.is_none() {
                    report.diverged = Some(Stop::Loss { step, loss: loss_value });
                    break;
                }
                if run + 1 >= MAX_SKIPPED {
                    report.diverged = Some(Stop::Skipped { step });
                    break;
                }
                opt.skip();
                report.skipped.push(step);
            }
            // images: the loss of the dequantized images, the logit's log-determinant added back
            let loss_value = loss_value - shift;
            report.losses.push(loss_value);
            on_event(Event::Step { step, loss: loss_value, lr });
            if step % self.cfg.val_every == 0 || step == self.cfg.steps {
                let v0 = Instant::now();
                report.val_seconds.push(t0.elapsed().as_secs_f64() - paused);
                opt.sync(self.flow)?;
                let nll = validate()?;
                report.val.push((step, nll));
                if !nll.is_finite() {
                    // a broken model is never saved over the last good one, nor called the best
                    report.diverged = Some(Stop::Validation { step, nll });
                    on_event(Event::Validation { step, nll, best: false });
                    break;
                }
                let is_best = nll < best;
                if is_best {
                    best = nll;
                    report.best = Some((step, nll));
                    since_best = 0;
                    if patience > 0 {
                        best_vars = Some(snapshot());
                        best_unsaved = true;
                    }
                } else {
                    since_best += 1;
                }
                match &self.out {
                    Some(out) if patience == 0 => {
                        self.save(out, Some(&opt), step, Some(nll))?;
                        report.saved = Some(step);
                        if is_best {
                            self.save(&best_path(out), None, step, Some(nll))?;
                        }
                    }
                    // with early stopping the best model and the latest state are written at most
                    // every SAVE_SECONDS (validations may come every step), and at the end
                    Some(out) if last_write.elapsed().as_secs_f64() >= SAVE_SECONDS => {
                        if let (true, Some((s, v))) = (best_unsaved, report.best) {
                            self.save_with(out, None, s, Some(v), best_vars.as_ref())?;
                            report.saved = Some(s);
                            best_unsaved = false;
                        }
                        self.save(&last_path(out), Some(&opt), step, Some(nll))?;
                        last_write = Instant::now();
                    }
                    _ => {}
                }
                paused += v0.elapsed().as_secs_f64();
                on_event(Event::Validation { step, nll, best: is_best });
                if patience > 0 && since_best >= patience {
                    report.stopped_early = Some(step);
                    break;
                }
            }
        }
        report.seconds = t0.elapsed().as_secs_f64();
        opt.sync(self.flow)?;
        if let (Some(out), true, None) = (&self.out, patience > 0, report.diverged) {
            // the latest state, to resume from (a diverged one is not worth resuming)
            let step = start + report.losses.len();
            self.save(&last_path(out), Some(&opt), step, report.val.last().map(|v| v.1))?;
        }
        if let (Some(out), true, Some((step, nll))) = (&self.out, best_unsaved, report.best) {
            self.save_with(out, None, step, Some(nll), best_vars.as_ref())?;
            report.saved = Some(step);
        }
        if patience > 0 {
            // the flow ends as the model the checkpoint `out` holds: the best validation one
            let vars = match (best_vars, &self.out) {
                (Some(vars), _) => Some(vars),
                // a resumed run that never beat `out`'s model: that model, read back
                (None, Some(out)) if kept.is_some() => Some(Checkpoint::load(out)?.tensors),
                _ => None,
            };
            if let Some(vars) = vars {
                tch::no_grad(|| {
                    for (name, mut var) in self.flow.var_store().variables() {
                        if let Some(saved) = vars.get(&name) {
                            var.copy_(&saved.to_device(var.device()).to_kind(var.kind()));
                        }
                    }
                });
            }
        }
        Ok(report)
    }
}
