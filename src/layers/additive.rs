//! NICE's additive coupling: `z₁ = x₁`, `z₂ = x₂ + μ(x₁)`, `log|det| = 0` (volume-preserving);
//! the inverse is `x₂ = z₂ − μ(z₁)`. The halves are split as in the notebook's `R_NVP`; in a
//! conditional flow `μ` also takes the context `c`: `μ([x₁, c])`.
use super::conditioner::{conditioner, net_input};
use super::Halves;
use crate::config::Init;
use tch::nn::{self, Module};
use tch::Tensor;

/// An additive coupling with the network `mu_net` (`mu_net.0.weight`, … as in `R_NVP`).
#[derive(Debug)]
pub struct Additive {
    mu_net: nn::Sequential,
    halves: Halves,
    /// `mu_net.0.weight`, to read the layer's dtype and device.
    probe: Tensor,
    /// `[0.weight, 0.bias, 2.weight, 2.bias]` of `mu_net`.
    weights: [Tensor; 4],
}

impl Additive {
    /// A layer of `d` columns conditioned on the first `k` (flipped: on the last `d − k`) and a
    /// context of `context` columns.
    pub fn build(p: &nn::Path, d: i64, k: i64, hidden: i64, flip: bool, init: Init, context: i64) -> Self {
        Self::assemble(p, d, k, hidden, flip, Some(init), context)
    }

    /// [`Additive::build`]; `init` `None`: zero weights that are about to be loaded.
    pub(crate) fn assemble(
        p: &nn::Path,
        d: i64,
        k: i64,
        hidden: i64,
        flip: bool,
        init: Option<Init>,
        context: i64,
    ) -> Self {
        let halves = Halves { d, k, flip };
        let c = halves.cond();
        let (mu_net, w) = conditioner(p / "mu_net", c + context, hidden, d - c, init);
        let probe = w[0].shallow_clone();
        Additive { mu_net, halves, probe, weights: w }
    }

    /// The layer's variables by key.
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        let keys = ["mu_net.0.weight", "mu_net.0.bias", "mu_net.2.weight", "mu_net.2.bias"];
        keys.into_iter().zip(&self.weights).map(|(k, t)| (k, t.shallow_clone())).collect()
    }

    /// `mu_net.0.weight`.
    pub(crate) fn probe(&self) -> &Tensor {
        &self.probe
    }

    /// Whether the halves swap roles.
    pub fn flip(&self) -> bool {
        self.halves.flip
    }

    /// `z` given the context (the log-determinant is 0).
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Tensor {
        let (x1, x2) = self.halves.split(xs);
        let z2 = x2 + self.mu_net.forward(&net_input(&x1, context));
        self.halves.merge(&x1, &z2)
    }

    /// `x = f⁻¹(z)` given the context.
    pub fn inverse(&self, zs: &Tensor, context: Option<&Tensor>) -> Tensor {
        let (z1, z2) = self.halves.split(zs);
        let x2 = z2 - self.mu_net.forward(&net_input(&z1, context));
        self.halves.merge(&z1, &x2)
    }
}
