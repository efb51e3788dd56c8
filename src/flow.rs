//! `StackedNvp`, the notebook's `stacked_NVP`, and `Flow`, a model that owns its variables.
//!
//! Direction, as in the notebook: `forward` maps data `x` to latent `z`, `inverse` maps `z` to `x`,
//! and `log p(x) = log N(f(x); 0, I) + Σᵢ log|det ∂zᵢ/∂zᵢ₋₁|`. Sampling is `inverse(N(0, I))`.
use crate::base;
use crate::config::{Engine, FlowConfig, Layout};
use crate::coupling::{check_input, RNvp};
use crate::error::{Error, Result};
use crate::kernel::{self, Packing};
use tch::{nn, Device, Kind, Tensor};

/// A stack of coupling layers with alternating flips (the notebook's `stacked_NVP`), or a single
/// `R_NVP` when the configuration's layout is `Layout::Single`.
#[derive(Debug)]
pub struct StackedNvp {
    bijectors: Vec<RNvp>,
    flips: Vec<bool>,
    cfg: FlowConfig,
    probe: Tensor,
    engine: Engine,
}

impl StackedNvp {
    /// Builds the flow's variables under `p`: `bijectors.{i}.sig_net.0.weight`, ... (stacked) or
    /// `sig_net.0.weight`, ... (single).
    pub fn new(p: &nn::Path, cfg: &FlowConfig) -> Result<Self> {
        cfg.validate()?;
        let flips: Vec<bool> = (0..cfg.layers).map(|i| cfg.flip(i)).collect();
        let bijectors = flips
            .iter()
            .enumerate()
            .map(|(i, &flip)| match cfg.layout {
                Layout::Stacked => {
                    RNvp::build(&(p / "bijectors" / i), cfg.d, cfg.k, cfg.hidden, flip, cfg.init)
                }
                Layout::Single => RNvp::build(p, cfg.d, cfg.k, cfg.hidden, flip, cfg.init),
            })
            .collect::<Result<Vec<_>>>()?;
        let probe = bijectors[0].probe().shallow_clone(); // invariant: validate() ensures layers ≥ 1
        Ok(StackedNvp { bijectors, flips, cfg: *cfg, probe, engine: Engine::Auto })
    }

    /// The architecture.
    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    /// The coupling layers, in forward order.
    pub fn bijectors(&self) -> &[RNvp] {
        &self.bijectors
    }

    /// The flips, in forward order (`false, true, false, …`).
    pub fn flips(&self) -> &[bool] {
        &self.flips
    }

    /// What computes `log_prob`, `encode`, `decode`, `sample` and training steps.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Chooses what computes `log_prob`, `encode`, `decode`, `sample` and training steps.
    pub fn set_engine(&mut self, engine: Engine) {
        self.engine = engine;
    }

    /// The packing for the fused kernels when the engine uses them for this flow now (`Auto`
    /// falls back to libtorch silently; `Fused` fails where they do not apply).
    pub fn fused_packing(&self) -> Result<Option<Packing>> {
        match self.engine {
            Engine::Libtorch => Ok(None),
            Engine::Auto => Ok(kernel::packing_for(self)),
            Engine::Fused => kernel::packing_for(self).map(Some).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "the fused engine runs float32 flows on the CPU with k and d − k at most {} \
                     (this flow: {:?} on {:?}, d = {}, k = {})",
                    kernel::MAX_WIDTH,
                    self.kind(),
                    self.device(),
                    self.cfg.d,
                    self.cfg.k
                ))
            }),
        }
    }

    /// Runs the fused forward pass on `xs`: `(z, Σ log|det|)` as flat row-major vectors.
    fn fused_forward(&self, pk: &Packing, xs: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        let params = pk.pack(self)?;
        let mut zs = kernel::flat(xs)?;
        let mut log_det = vec![0.0f32; xs.size()[0] as usize];
        pk.forward_par(&params, &mut zs, &mut log_det, threads());
        Ok((zs, log_det))
    }

    /// Runs the fused inverse on `zs`.
    fn fused_inverse(&self, pk: &Packing, zs: &Tensor) -> Result<Tensor> {
        let params = pk.pack(self)?;
        let mut xs = kernel::flat(zs)?;
        pk.inverse_par(&params, &mut xs, threads());
        Ok(Tensor::from_slice(&xs).view([-1, self.cfg.d]))
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

    /// The notebook's `forward(x)`: `(z, log_pz, log_jacob)` with `log_pz = log N(z; 0, I)` of the
    /// final `z` (computed once) and `log_jacob` the sum of the layers' log-determinants.
    /// Keeps the autograd graph: `loss = −(log_pz + log_jacob).mean()` trains the flow.
    pub fn forward(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.check(xs, "input")?;
        let (zs, log_jacob) = self.transform(xs);
        let log_pz = base::log_prob(&zs);
        Ok((zs, log_pz, log_jacob))
    }

    /// The notebook's `inverse(z)`: the layers in reverse order, each inverted with its flip.
    pub fn inverse(&self, zs: &Tensor) -> Result<Tensor> {
        self.check(zs, "latent")?;
        Ok(self.untransform(zs))
    }

    /// `log p(x)`, one value per row, without autograd.
    pub fn log_prob(&self, xs: &Tensor) -> Result<Tensor> {
        self.check(xs, "input")?;
        if let Some(pk) = self.fused_packing()? {
            let (zs, log_det) = self.fused_forward(&pk, xs)?;
            let lp: Vec<f32> = zs
                .chunks_exact(self.cfg.d as usize)
                .zip(log_det)
                .map(|(z, ld)| (base::log_prob_row(z) + ld as f64) as f32)
                .collect();
            return Ok(Tensor::from_slice(&lp));
        }
        Ok(chunked(xs, |xs| {
            let (zs, log_jacob) = self.transform(xs);
            base::log_prob(&zs) + log_jacob
        }))
    }

    /// `z = f(x)` without autograd.
    pub fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        self.check(xs, "input")?;
        if let Some(pk) = self.fused_packing()? {
            let (zs, _) = self.fused_forward(&pk, xs)?;
            return Ok(Tensor::from_slice(&zs).view([-1, self.cfg.d]));
        }
        Ok(chunked(xs, |xs| self.transform(xs).0))
    }

    /// `x = f⁻¹(z)` without autograd.
    pub fn decode(&self, zs: &Tensor) -> Result<Tensor> {
        self.check(zs, "latent")?;
        if let Some(pk) = self.fused_packing()? {
            return self.fused_inverse(&pk, zs);
        }
        Ok(chunked(zs, |zs| self.untransform(zs)))
    }

    /// `n` samples `f⁻¹(z)`, `z ~ N(0, I)`, drawn with libtorch's generator (seed it with
    /// `tch::manual_seed`).
    pub fn sample(&self, n: i64) -> Result<Tensor> {
        if n < 0 {
            return Err(crate::Error::InvalidConfig(format!("cannot draw {n} samples")));
        }
        let zs = base::sample(n, self.cfg.d, self.kind(), self.device());
        if let Some(pk) = self.fused_packing()? {
            return self.fused_inverse(&pk, &zs);
        }
        Ok(chunked(&zs, |zs| self.untransform(zs)))
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
    pub fn loss_backward(&self, xs: &Tensor, reversible: bool) -> Result<f64> {
        self.check(xs, "input")?;
        if !reversible {
            let (zs, log_det) = self.transform(xs);
            let loss = -(base::log_prob(&zs) + log_det).mean(self.kind());
            let value = loss.double_value(&[]);
            if value.is_finite() {
                loss.backward();
            }
            return Ok(value);
        }
        let n = xs.size()[0].max(1) as f64;
        let (zs, log_det) = tch::no_grad(|| self.transform(xs));
        let value = -(base::log_prob(&zs) + log_det).mean(Kind::Double).double_value(&[]);
        if !value.is_finite() {
            return Ok(value);
        }
        // loss = mean(½‖z‖² + c − Σᵢ log_detᵢ): ∂loss/∂z = z/n and ∂loss/∂log_detᵢ = −1/n.
        let mut grad_z = &zs / n;
        let mut out = zs;
        for (layer, &flip) in self.bijectors.iter().zip(&self.flips).rev() {
            let input = tch::no_grad(|| layer.untransform(&out, flip)).set_requires_grad(true);
            let (z, ld) = layer.transform(&input, flip);
            let surrogate = (z * &grad_z).sum(self.kind()) - ld.sum(self.kind()) / n;
            surrogate.backward();
            grad_z = input.grad().detach();
            out = input.detach();
        }
        Ok(value)
    }

    /// `(z, Σ log|det|)` through all layers, without input checks.
    pub(crate) fn transform(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let mut zs = xs.shallow_clone();
        let mut log_det: Option<Tensor> = None;
        for (layer, &flip) in self.bijectors.iter().zip(&self.flips) {
            let (next, ld) = layer.transform(&zs, flip);
            zs = next;
            log_det = Some(match log_det {
                None => ld,
                Some(acc) => acc + ld,
            });
        }
        (zs, log_det.expect("invariant: at least one layer")) // invariant: validate() ensures layers ≥ 1
    }

    /// The inverse through all layers, without input checks.
    pub(crate) fn untransform(&self, zs: &Tensor) -> Tensor {
        let mut xs = zs.shallow_clone();
        for (layer, &flip) in self.bijectors.iter().zip(&self.flips).rev() {
            xs = layer.untransform(&xs, flip);
        }
        xs
    }
}

/// Rows evaluated at once without autograd: the hidden activations of a chunk (`CHUNK × hidden`)
/// stay in cache instead of making one pass over memory per operation for the whole input.
const CHUNK: i64 = 2048;

/// `f` applied to row blocks of `xs` without autograd, the results concatenated.
fn chunked(xs: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    tch::no_grad(|| {
        let n = xs.size()[0];
        if n <= CHUNK {
            return f(xs);
        }
        let parts: Vec<Tensor> = xs.split(CHUNK, 0).iter().map(&f).collect();
        Tensor::cat(&parts, 0)
    })
}

/// libtorch's intra-op thread count, which the fused kernels follow.
pub(crate) fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

/// A flow that owns its variables: a [`StackedNvp`] in its own `VarStore`.
///
/// Derefs to the [`StackedNvp`], so `flow.log_prob(&xs)`, `flow.sample(n)`, ... work directly.
#[derive(Debug)]
pub struct Flow {
    vs: nn::VarStore,
    net: StackedNvp,
}

impl Flow {
    /// A freshly initialised flow on `device` with weights of dtype `kind` (`Float` or `Double`),
    /// drawn from libtorch's CPU generator whatever the device (`tch::manual_seed` seeds it).
    pub fn new(cfg: &FlowConfig, device: Device, kind: Kind) -> Result<Self> {
        if !matches!(kind, Kind::Float | Kind::Double) {
            return Err(crate::Error::InvalidConfig(format!(
                "dtype {kind:?}: rnvp computes in Float (f32) or Double (f64)"
            )));
        }
        // weights are drawn on the CPU and then moved, so a seed gives the same model on every
        // device (CUDA's generator draws other numbers than the CPU's)
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = StackedNvp::new(&vs.root(), cfg)?;
        vs.set_kind(kind);
        if device != Device::Cpu {
            vs.set_device(device);
        }
        Ok(Flow { vs, net })
    }

    /// The variable store (names are the notebook's state_dict keys).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Chooses what computes `log_prob`, `encode`, `decode`, `sample` and training steps.
    pub fn set_engine(&mut self, engine: Engine) {
        self.net.set_engine(engine);
    }

    /// The variable store, mutably (to load weights, change dtype or device, build an optimizer).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
}

impl std::ops::Deref for Flow {
    type Target = StackedNvp;
    fn deref(&self) -> &StackedNvp {
        &self.net
    }
}
