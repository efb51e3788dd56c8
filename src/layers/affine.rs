//! `RNvp`: one affine coupling layer, the notebook's `R_NVP`.
//!
//! With `x₁` the conditioning columns and `x₂` the others,
//! `z₁ = x₁`, `z₂ = x₂ ⊙ exp(σ(x₁)) + μ(x₁)`, and `log|det ∂z/∂x| = Σ σ(x₁)`;
//! the inverse is `x₂ = (z₂ − μ(z₁)) ⊙ exp(−σ(z₁))`. Unflipped, `x₁ = x[:, :k]`; flipped, the two
//! parts swap roles and `x₁` is the last `d − k` columns.
//!
//! With another scale map the log-scale is `g(h)` of `sig_net`'s output `h` instead of `h`
//! itself: `softclamp` `h / (1 + |h| / B)` (buffer `softclamp_bound` = B = ln 1000), `sigmoid`
//! `log σ(h + 2)` (buffer `sigmoid_shift` = 2), `tanh` `γ ⊙ tanh(h)` (parameter `scale_factor` = γ).
//!
//! In a conditional flow both networks also take the context `c`: `σ([x₁, c])`, `μ([x₁, c])`.
use super::check_input;
use super::conditioner::{conditioner, net_input};
use crate::base;
use crate::config::{Init, Scale};
use crate::error::{Error, Result};
use tch::nn::{self, Module};
use tch::Tensor;

/// `log s = g(h)` of the scale map `scale` with its variable `var` (`softclamp_bound`,
/// `sigmoid_shift` or `scale_factor`; `None` for `exp`, where it is `h` itself).
pub(crate) fn log_scale(scale: Scale, h: &Tensor, var: Option<&Tensor>) -> Tensor {
    match (scale, var) {
        (Scale::SoftClamp, Some(bound)) => h / (h.abs() / bound + 1.0),
        (Scale::Sigmoid, Some(shift)) => (h + shift).log_sigmoid(),
        (Scale::Tanh, Some(gamma)) => h.tanh() * gamma,
        _ => h.shallow_clone(),
    }
}

/// The scale map's variable under `p`: the buffer `softclamp_bound` (B = ln 1000) or
/// `sigmoid_shift` (2), or the parameter `scale_factor` (γ, of shape `gamma`, initialised to 1);
/// `None` for `exp`.
pub(crate) fn scale_variable(p: &nn::Path, scale: Scale, gamma: &[i64]) -> Option<Tensor> {
    let constant = |name: &str, v: f64| {
        let t = p.zeros_no_train(name, &[]);
        tch::no_grad(|| t.shallow_clone().fill_(v))
    };
    match scale {
        Scale::Exp => None,
        Scale::SoftClamp => Some(constant("softclamp_bound", 1000f64.ln())),
        Scale::Sigmoid => Some(constant("sigmoid_shift", 2.0)),
        Scale::Tanh => Some(p.ones("scale_factor", gamma)),
    }
}

/// The key of the scale map's variable.
pub(crate) fn scale_key(scale: Scale) -> Option<&'static str> {
    match scale {
        Scale::Exp => None,
        Scale::SoftClamp => Some("softclamp_bound"),
        Scale::Sigmoid => Some("sigmoid_shift"),
        Scale::Tanh => Some("scale_factor"),
    }
}

/// One R-NVP coupling layer with the notebook's `sig_net` and `mu_net`
/// (`Linear(c, hidden) → LeakyReLU(0.01) → Linear(hidden, d − c)`, `c` conditioning columns).
///
/// Its variables are named like the notebook's state_dict: `sig_net.0.weight`, `sig_net.0.bias`,
/// `sig_net.2.weight`, `sig_net.2.bias` and the same for `mu_net`, under the path it is built on.
#[derive(Debug)]
pub struct RNvp {
    sig_net: nn::Sequential,
    mu_net: nn::Sequential,
    d: i64,
    k: i64,
    /// Conditioning columns: `k` for a layer built unflipped, `d − k` flipped.
    cond: i64,
    /// Width of the context the networks take beside the conditioning columns.
    context: i64,
    /// `sig_net.0.weight`, to read the layer's dtype and device.
    probe: Tensor,
    /// `[0.weight, 0.bias, 2.weight, 2.bias]` of `sig_net` then of `mu_net` (shared with the nets).
    weights: [[Tensor; 4]; 2],
    /// The map from `sig_net`'s output to the log-scale.
    scale: Scale,
    /// The scale map's own variable: `softclamp_bound`, `sigmoid_shift` or `scale_factor`.
    map_var: Option<Tensor>,
}

impl RNvp {
    /// The notebook's `R_NVP(d, k, hidden)`: conditions on `x[:, :k]` (and, when `k = d − k`, can
    /// also be called flipped).
    pub fn new(p: &nn::Path, d: i64, k: i64, hidden: i64) -> Result<Self> {
        Self::build(p, d, k, hidden, false, Init::Pytorch)
    }

    /// A layer built for the given flip: flipped, its networks take the last `d − k` columns and
    /// output `k` (the generalisation of the notebook to `k ≠ d − k`).
    pub fn build(p: &nn::Path, d: i64, k: i64, hidden: i64, flip: bool, init: Init) -> Result<Self> {
        Self::build_with(p, d, k, hidden, flip, init, Scale::Exp)
    }

    /// [`RNvp::build`] with a scale map other than the notebook's `exp`.
    pub fn build_with(
        p: &nn::Path,
        d: i64,
        k: i64,
        hidden: i64,
        flip: bool,
        init: Init,
        scale: Scale,
    ) -> Result<Self> {
        Self::build_conditional(p, d, k, hidden, flip, init, scale, 0)
    }

    /// [`RNvp::build_with`] for a conditional flow: the networks take `context` more columns.
    #[allow(clippy::too_many_arguments)]
    pub fn build_conditional(
        p: &nn::Path,
        d: i64,
        k: i64,
        hidden: i64,
        flip: bool,
        init: Init,
        scale: Scale,
        context: i64,
    ) -> Result<Self> {
        Self::assemble(p, d, k, hidden, flip, Some(init), scale, context)
    }

    /// [`RNvp::build_conditional`]; `init` `None`: zero weights that are about to be loaded.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        p: &nn::Path,
        d: i64,
        k: i64,
        hidden: i64,
        flip: bool,
        init: Option<Init>,
        scale: Scale,
        context: i64,
    ) -> Result<Self> {
        let cfg = crate::config::FlowConfig::single(d, k, hidden).with_context(context);
        cfg.validate()?;
        let cond = cfg.cond_dim(flip);
        let input = cfg.net_input(flip);
        let (sig_net, sig_w) = conditioner(p / "sig_net", input, hidden, d - cond, init);
        let (mu_net, mu_w) = conditioner(p / "mu_net", input, hidden, d - cond, init);
        let probe = sig_w[0].shallow_clone();
        let map_var = scale_variable(p, scale, &[d - cond]);
        Ok(RNvp { sig_net, mu_net, d, k, cond, context, probe, weights: [sig_w, mu_w], scale, map_var })
    }

    /// The layer's variables by state_dict key (within the layer), in the order of
    /// [`crate::config::LayerKind::keys`].
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        const KEYS: [[&str; 4]; 2] = [
            ["sig_net.0.weight", "sig_net.0.bias", "sig_net.2.weight", "sig_net.2.bias"],
            ["mu_net.0.weight", "mu_net.0.bias", "mu_net.2.weight", "mu_net.2.bias"],
        ];
        let mut v: Vec<(&'static str, Tensor)> = KEYS
            .iter()
            .zip(&self.weights)
            .flat_map(|(keys, ws)| keys.iter().zip(ws).map(|(k, t)| (*k, t.shallow_clone())))
            .collect();
        if let (Some(t), Some(key)) = (&self.map_var, scale_key(self.scale)) {
            v.push((key, t.shallow_clone()));
        }
        v
    }

    /// The scale map.
    pub fn scale(&self) -> Scale {
        self.scale
    }

    /// `log s = g(h)` for `sig_net`'s output `h` (not called for `exp`, where it is `h` itself).
    fn log_scale(&self, h: &Tensor) -> Tensor {
        log_scale(self.scale, h, self.map_var.as_ref())
    }

    /// Data dimension `d`.
    pub fn d(&self) -> i64 {
        self.d
    }

    /// Split point `k`.
    pub fn k(&self) -> i64 {
        self.k
    }

    /// `sig_net.0.weight` (its dtype and device are the layer's).
    pub(crate) fn probe(&self) -> &Tensor {
        &self.probe
    }

    /// The weights `[0.weight, 0.bias, 2.weight, 2.bias]` of `sig_net` (`[0]`) and `mu_net` (`[1]`).
    pub fn weights(&self) -> &[[Tensor; 4]; 2] {
        &self.weights
    }

    /// The conditioner networks `(sig_net, mu_net)`.
    pub fn nets(&self) -> (&nn::Sequential, &nn::Sequential) {
        (&self.sig_net, &self.mu_net)
    }

    /// The notebook's `forward(x, flip)`: `(z, log_pz, log_jacob)` with `log_pz = log N(z; 0, I)`
    /// and `log_jacob = Σ σ`, one value per row. Keeps the autograd graph (used for training).
    pub fn forward(&self, xs: &Tensor, flip: bool) -> Result<(Tensor, Tensor, Tensor)> {
        self.check(xs, "input", flip)?;
        let (zs, log_jacob) = self.transform(xs, None, flip);
        let log_pz = base::log_prob(&zs);
        Ok((zs, log_pz, log_jacob))
    }

    /// The notebook's `inverse(z, flip)`.
    pub fn inverse(&self, zs: &Tensor, flip: bool) -> Result<Tensor> {
        self.check(zs, "latent", flip)?;
        Ok(self.untransform(zs, None, flip))
    }

    /// Checks shape, dtype, device and that this layer can run with `flip`.
    pub(crate) fn check(&self, xs: &Tensor, what: &str, flip: bool) -> Result<()> {
        if self.cond != (if flip { self.d - self.k } else { self.k }) {
            return Err(Error::InvalidConfig(format!(
                "this layer was built with flip = {} and k = {} ≠ d − k = {}: it cannot run with flip = {flip}",
                !flip,
                self.k,
                self.d - self.k
            )));
        }
        if self.context != 0 {
            return Err(Error::InvalidConfig(format!(
                "this layer takes a context of {} columns: run it inside a conditional flow",
                self.context
            )));
        }
        check_input(xs, what, self.d, &self.probe)
    }

    /// The columns `(conditioning, transformed)` of `xs` for `flip`.
    fn split(&self, xs: &Tensor, flip: bool) -> (Tensor, Tensor) {
        let (a, b) = (xs.narrow(1, 0, self.k), xs.narrow(1, self.k, self.d - self.k));
        if flip {
            (b, a)
        } else {
            (a, b)
        }
    }

    fn merge(&self, cond: &Tensor, other: &Tensor, flip: bool) -> Tensor {
        if flip {
            Tensor::cat(&[other, cond], -1)
        } else {
            Tensor::cat(&[cond, other], -1)
        }
    }

    /// `(z, log|det J|)` given the context, without input checks.
    pub(crate) fn transform(&self, xs: &Tensor, context: Option<&Tensor>, flip: bool) -> (Tensor, Tensor) {
        let (x1, x2) = self.split(xs, flip);
        let input = net_input(&x1, context);
        let mut sig = self.sig_net.forward(&input);
        if self.scale != Scale::Exp {
            sig = self.log_scale(&sig);
        }
        let z2 = x2 * sig.exp() + self.mu_net.forward(&input);
        let log_det = sig.sum_dim_intlist(-1, false, None);
        (self.merge(&x1, &z2, flip), log_det)
    }

    /// The inverse map given the context, without input checks.
    pub(crate) fn untransform(&self, zs: &Tensor, context: Option<&Tensor>, flip: bool) -> Tensor {
        let (z1, z2) = self.split(zs, flip);
        let input = net_input(&z1, context);
        let mut sig = self.sig_net.forward(&input);
        if self.scale != Scale::Exp {
            sig = self.log_scale(&sig);
        }
        let x2 = (z2 - self.mu_net.forward(&input)) * sig.neg().exp();
        self.merge(&z1, &x2, flip)
    }
}
