//! `StackedNvp`, the notebook's `stacked_NVP`, and `Flow`, a model that owns its variables.
//!
//! Direction, as in the notebook: `forward` maps data `x` to latent `z`, `inverse` maps `z` to `x`,
//! and `log p(x) = log N(f(x); 0, I) + Σᵢ log|det ∂zᵢ/∂zᵢ₋₁|`. Sampling is `inverse(N(0, I))`.
//!
//! A conditional flow (`FlowConfig::context` = m > 0) is a density `p(x | c)`: the same maps with
//! the context `c ∈ Rᵐ` fed to every coupling's networks, one context row per data row; the base
//! stays N(0, I). `flow.given(&c).log_prob(&x)`, `flow.given(&c).sample(n)`.
use crate::base;
use crate::config::LayerKind;
use crate::config::{FlowConfig, Layout};
use crate::error::{Error, Result};
use crate::kernel::Packing;
use crate::layers::{check_input, BatchStats, Layer, Mode, RNvp};
use crate::run::{Engine, Run};
use tch::{nn, Device, Kind, Tensor};

/// A stack of layers: the notebook's `stacked_NVP` (coupling layers with alternating flips), the
/// layers of another [`crate::config::Arch`], or a single `R_NVP` when the configuration's layout is
/// `Layout::Single`.
#[derive(Debug)]
pub struct StackedNvp {
    layers: Vec<Layer>,
    cfg: FlowConfig,
    probe: Tensor,
}

impl StackedNvp {
    /// Builds the flow's variables under `p`: `bijectors.{j}.sig_net.0.weight`, ... (stacked) or
    /// `sig_net.0.weight`, ... (single).
    pub fn new(p: &nn::Path, cfg: &FlowConfig) -> Result<Self> {
        Self::build(p, cfg, false)
    }

    /// [`StackedNvp::new`]; with `loading`, the weights are about to be copied in (see
    /// [`Layer::build`]).
    pub fn build(p: &nn::Path, cfg: &FlowConfig, loading: bool) -> Result<Self> {
        cfg.validate()?;
        let layers = match cfg.layout {
            Layout::Stacked if cfg.image.is_some() => (0..cfg.layer_count())
                .map(|j| {
                    let (kind, shape) = (cfg.image.as_ref())
                        .and_then(|img| crate::multiscale::layer(&cfg.arch, img, cfg.layers, j))
                        .ok_or_else(|| Error::InvalidConfig("invariant: layer past the end".into()))?;
                    Layer::build_image(&(p / "bijectors" / j), kind, shape, cfg, loading)
                })
                .collect::<Result<Vec<_>>>()?,
            Layout::Single => vec![Layer::build(p, LayerKind::Affine { flip: false }, cfg, loading)?],
            Layout::Stacked => (0..cfg.layer_count())
                .map(|j| {
                    let kind = cfg
                        .layer(j)
                        .ok_or_else(|| Error::InvalidConfig("invariant: layer past the end".into()))?;
                    Layer::build(&(p / "bijectors" / j), kind, cfg, loading)
                })
                .collect::<Result<Vec<_>>>()?,
        };
        // a coupling's first weight: validate() ensures layers ≥ 1, and every step has a coupling
        let probe = (layers.iter().find_map(Layer::probe))
            .ok_or_else(|| Error::InvalidConfig("invariant: a stack has a coupling".into()))?;
        Ok(StackedNvp { layers, cfg: *cfg, probe })
    }

    /// The architecture.
    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    /// The layers, in forward order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The affine coupling layers with their flips, in forward order (for the notebook: every
    /// layer, flips `false, true, false, …`).
    pub fn couplings(&self) -> impl Iterator<Item = (&RNvp, bool)> {
        self.layers.iter().filter_map(|l| match l {
            Layer::Affine(c, flip) => Some((c, *flip)),
            _ => None,
        })
    }

    /// Checks the state a file may have filled with anything (permutations, signs, flags).
    pub fn check_state(&self) -> Result<()> {
        self.layers
            .iter()
            .enumerate()
            .try_for_each(|(j, l)| l.check_state().map_err(|e| Error::Data(format!("bijectors.{j}: {e}"))))
    }

    /// The packing of this flow for the fused kernels, or `None` where they do not apply (they
    /// run float32 flows on the CPU whose networks take at most
    /// [`MAX_INPUTS`](crate::kernel::MAX_INPUTS) and give at most
    /// [`MAX_OUTPUTS`](crate::kernel::MAX_OUTPUTS) columns, and every layer but batch norm),
    /// whatever the engine.
    pub fn packing(&self) -> Option<Packing> {
        if self.device() != Device::Cpu || self.kind() != Kind::Float {
            return None;
        }
        Packing::new(&self.cfg)
    }

    /// The dtype of the weights (and so of the inputs the flow takes).
    pub fn kind(&self) -> Kind {
        self.probe.kind()
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.probe.device()
    }

    /// Checks that `xs` is `[n, d]` with the model's dtype and device.
    pub fn check(&self, xs: &Tensor, what: &str) -> Result<()> {
        check_input(xs, what, self.cfg.d, &self.probe)
    }

    /// Checks that a context is given exactly when the flow is conditional, as `[rows, m]` with the
    /// model's dtype and device.
    pub fn check_context(&self, context: Option<&Tensor>, rows: i64) -> Result<()> {
        let m = self.cfg.context;
        match context {
            None if m > 0 => Err(Error::InvalidConfig(format!(
                "this flow is conditional on a context of {m} columns: give one (flow.given(&c))"
            ))),
            None => Ok(()),
            Some(_) if m == 0 => {
                Err(Error::InvalidConfig("this flow is unconditional: it takes no context".into()))
            }
            Some(c) => {
                check_input(c, "context", m, &self.probe)?;
                if c.size()[0] != rows {
                    return Err(Error::Shape {
                        what: "context".into(),
                        expected: format!("[{rows}, {m}] (one row per data row)"),
                        found: c.size(),
                    });
                }
                Ok(())
            }
        }
    }

    /// Checks the rows `xs` and their context.
    fn check_with(&self, xs: &Tensor, context: Option<&Tensor>, what: &str) -> Result<()> {
        self.check(xs, what)?;
        self.check_context(context, xs.size()[0])
    }

    /// The notebook's `forward(x)`: `(z, log_pz, log_jacob)` with `log_pz = log N(z; 0, I)` of the
    /// final `z` (computed once) and `log_jacob` the sum of the layers' log-determinants.
    /// Keeps the autograd graph: `loss = −(log_pz + log_jacob).mean()` trains the flow.
    pub fn forward(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.check_with(xs, None, "input")?;
        let (zs, log_jacob) = self.transform(xs, None);
        let log_pz = base::log_prob(&zs);
        Ok((zs, log_pz, log_jacob))
    }

    /// `(z, Σ log|det|)` in `mode`, keeping the autograd graph: [`Mode::Train`] as a training
    /// step runs (ActNorm initialises itself on its first batch, batch norm normalises with the
    /// batch's statistics and moves its running averages), [`Mode::Replay`] the same maths without
    /// changing any state, [`Mode::Eval`] as [`StackedNvp::forward`]. `context`: the rows'
    /// context in a conditional flow, `None` otherwise.
    pub fn forward_in(&self, xs: &Tensor, context: Option<&Tensor>, mode: Mode) -> Result<(Tensor, Tensor)> {
        self.check_with(xs, context, "input")?;
        Ok(self.transform_mode(xs, context, mode))
    }

    /// The notebook's `inverse(z)`: the layers in reverse order, each inverted with its flip.
    pub fn inverse(&self, zs: &Tensor) -> Result<Tensor> {
        self.check_with(zs, None, "latent")?;
        Ok(self.untransform(zs, None))
    }

    /// This flow run by `engine` (see [`Run`]).
    pub fn run(&self, engine: Engine) -> Run<'_> {
        Run::new(self, engine)
    }

    /// This conditional flow at the context `c`, run by [`Engine::Auto`]: `c` is one row `[m]` or
    /// `[1, m]` (the same context for every row) or one row per data row.
    pub fn given<'a>(&'a self, c: &'a Tensor) -> Run<'a> {
        self.run(Engine::Auto).given(c)
    }

    /// `log p(x)`, one value per row, without autograd, run by [`Engine::Auto`].
    pub fn log_prob(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(Engine::Auto).log_prob(xs)
    }

    /// `z = f(x)` without autograd, run by [`Engine::Auto`].
    pub fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(Engine::Auto).encode(xs)
    }

    /// `x = f⁻¹(z)` without autograd, run by [`Engine::Auto`].
    pub fn decode(&self, zs: &Tensor) -> Result<Tensor> {
        self.run(Engine::Auto).decode(zs)
    }

    /// `n` samples `f⁻¹(z)`, `z ~ N(0, I)`, run by [`Engine::Auto`] (seed libtorch's generator
    /// with `tch::manual_seed`); draws whose inverse overflows are drawn again (see
    /// [`crate::run::Run::sample`]).
    pub fn sample(&self, n: i64) -> Result<Tensor> {
        self.run(Engine::Auto).sample(n)
    }

    /// The training loss `−mean(log p(x))` of the batch `xs`; its gradient is added to the
    /// variables' `.grad` (zero them first). Returns the loss; when it is not finite, no gradient
    /// is computed.
    ///
    /// With `reversible`, no activations are kept: the forward pass runs without autograd, then,
    /// from the last layer down, each layer's input is recomputed from its output with the exact
    /// inverse, the layer is re-run with autograd and the incoming gradient is passed through it.
    /// Memory then stays that of one layer whatever the depth (Gomez et al. 2017, Glow 2018);
    /// gradients equal ordinary backpropagation's up to rounding.
    pub fn loss_backward(&self, xs: &Tensor, context: Option<&Tensor>, reversible: bool) -> Result<f64> {
        self.check_with(xs, context, "input")?;
        if !reversible {
            let (zs, log_det) = self.transform_mode(xs, context, Mode::Train);
            let loss = -(base::log_prob(&zs) + log_det).mean(self.kind());
            let value = loss.double_value(&[]);
            if value.is_finite() {
                loss.backward();
            }
            return Ok(value);
        }
        let n = xs.size()[0].max(1) as f64;
        // the forward pass without autograd, keeping the statistics batch norm normalised with
        let mut stats: Vec<Option<BatchStats>> = Vec::with_capacity(self.layers.len());
        let (zs, log_det) = tch::no_grad(|| self.pass(xs, context, Mode::Train, Some(&mut stats)));
        let value = -(base::log_prob(&zs) + log_det).mean(Kind::Double).double_value(&[]);
        if !value.is_finite() {
            return Ok(value);
        }
        // loss = mean(½‖z‖² + c − Σᵢ log_detᵢ): ∂loss/∂z = z/n and ∂loss/∂log_detᵢ = −1/n.
        let mut grad_z = &zs / n;
        let mut out = zs;
        for (layer, stats) in self.layers.iter().zip(&stats).rev() {
            let input = tch::no_grad(|| layer.inverse(&out, context, stats.as_ref())).set_requires_grad(true);
            let (z, ld) = layer.forward(&input, context, Mode::Replay);
            let surrogate = match ld {
                Some(ld) => (z * &grad_z).sum(self.kind()) - ld.sum(self.kind()) / n,
                None => (z * &grad_z).sum(self.kind()),
            };
            if surrogate.requires_grad() {
                surrogate.backward();
            }
            grad_z = if input.grad().defined() { input.grad().detach() } else { grad_z.zeros_like() };
            out = input.detach();
        }
        Ok(value)
    }

    /// `(z, Σ log|det|)` through all layers in evaluation mode, without input checks.
    pub(crate) fn transform(&self, xs: &Tensor, context: Option<&Tensor>) -> (Tensor, Tensor) {
        self.transform_mode(xs, context, Mode::Eval)
    }

    /// `(z, Σ log|det|)` through all layers in `mode`, without input checks.
    pub(crate) fn transform_mode(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        mode: Mode,
    ) -> (Tensor, Tensor) {
        self.pass(xs, context, mode, None)
    }

    /// `(z, Σ log|det|)` through all layers in `mode`; with `stats`, each layer's batch statistics
    /// (`Some` for batch norm, computed from its input) are recorded in order.
    fn pass(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        mode: Mode,
        mut stats: Option<&mut Vec<Option<BatchStats>>>,
    ) -> (Tensor, Tensor) {
        let mut zs = xs.shallow_clone();
        let mut log_det: Option<Tensor> = None;
        for layer in &self.layers {
            if let Some(stats) = stats.as_deref_mut() {
                stats.push(layer.batch_stats(&zs));
            }
            let (next, ld) = layer.forward(&zs, context, mode);
            zs = next;
            log_det = add(log_det, ld);
        }
        // volume-preserving throughout: log|det| = 0 for every row
        let log_det = log_det.unwrap_or_else(|| zs.zeros_like().sum_dim_intlist(-1, false, None));
        (zs, log_det)
    }

    /// The inverse through all layers (evaluation mode) given the context, without input checks.
    pub(crate) fn untransform(&self, zs: &Tensor, context: Option<&Tensor>) -> Tensor {
        let mut xs = zs.shallow_clone();
        for layer in self.layers.iter().rev() {
            xs = layer.inverse(&xs, context, None);
        }
        xs
    }
}

/// The running sum of log-determinants (`None`: 0 so far).
fn add(acc: Option<Tensor>, ld: Option<Tensor>) -> Option<Tensor> {
    match (acc, ld) {
        (None, ld) => ld,
        (acc, None) => acc,
        (Some(acc), Some(ld)) => Some(acc + ld),
    }
}

/// A flow that owns its variables: a [`StackedNvp`] in its own `VarStore`.
///
/// The model is [`Flow::stack`]: `flow.stack().log_prob(&xs)`, `flow.stack().sample(n)`, ...
#[derive(Debug)]
pub struct Flow {
    vs: nn::VarStore,
    net: StackedNvp,
}

impl Flow {
    /// A freshly initialised flow on `device` with weights of dtype `kind` (`Float` or `Double`),
    /// drawn from libtorch's CPU generator whatever the device (`tch::manual_seed` seeds it).
    pub fn new(cfg: &FlowConfig, device: Device, kind: Kind) -> Result<Self> {
        Self::build(cfg, device, kind, false)
    }

    /// A flow whose weights are about to be loaded (a checkpoint's): as [`Flow::new`], but nothing
    /// is drawn from libtorch's generator (a seeded stream is the same with or without a checkpoint
    /// loaded) and the costly random initialisation is skipped: the networks start at zero, a
    /// random permutation as the reversal and LU maps as the identity. Meaningful only once the
    /// weights are copied in.
    pub fn for_loading(cfg: &FlowConfig, device: Device, kind: Kind) -> Result<Self> {
        Self::build(cfg, device, kind, true)
    }

    fn build(cfg: &FlowConfig, device: Device, kind: Kind, loading: bool) -> Result<Self> {
        if !matches!(kind, Kind::Float | Kind::Double) {
            return Err(crate::Error::InvalidConfig(format!(
                "dtype {kind:?}: rnvp computes in Float (f32) or Double (f64)"
            )));
        }
        // weights are drawn on the CPU and then moved, so a seed gives the same model on every
        // device (CUDA's generator draws other numbers than the CPU's)
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = StackedNvp::build(&vs.root(), cfg, loading)?;
        vs.set_kind(kind);
        if device != Device::Cpu {
            vs.set_device(device);
        }
        Ok(Flow { vs, net })
    }

    /// The model: the stack of layers.
    pub fn stack(&self) -> &StackedNvp {
        &self.net
    }

    /// The variable store (names are the notebook's state_dict keys).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The variable store, mutably (to load weights, change dtype or device, build an optimizer).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
}
