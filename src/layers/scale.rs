//! NICE's diagonal scaling layer: `z = x ⊙ exp(S)`, `log|det| = Σ S`, with `S` learned. After
//! additive couplings (volume-preserving) it is what lets the flow change volume.
use tch::nn;
use tch::Tensor;

/// The diagonal scaling with the parameter `log_scale` (S).
#[derive(Debug)]
pub struct DiagonalScale {
    log_scale: Tensor,
}

impl DiagonalScale {
    /// The identity of `d` columns.
    pub fn build(p: &nn::Path, d: i64) -> Self {
        DiagonalScale { log_scale: p.zeros("log_scale", &[d]) }
    }

    /// The layer's variables by key.
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        vec![("log_scale", self.log_scale.shallow_clone())]
    }

    /// `(z, log|det|)`.
    pub fn forward(&self, xs: &Tensor) -> (Tensor, Tensor) {
        (xs * self.log_scale.exp(), super::per_row(self.log_scale.sum(self.log_scale.kind()), xs))
    }

    /// `x = z ⊙ exp(−S)`.
    pub fn inverse(&self, zs: &Tensor) -> Tensor {
        zs * self.log_scale.neg().exp()
    }
}
