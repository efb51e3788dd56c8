//! Glow's split with a learned prior. Of images `[c, h, w]`, the second half of the channels `x₂`
//! is about to be factored out; its prior is `N(μ(x₁), exp(ℓ(x₁))²)` with `[μ, ℓ]` a zero-
//! initialised 3×3 convolution of the kept half `x₁`. As a layer it standardizes `x₂`:
//! `z₂ = (x₂ − μ) ⊙ exp(−ℓ)`, `log|det| = −Σ ℓ`, so that `z₂` joins the base `N(0, I)`;
//! the inverse is `x₂ = z₂ ⊙ exp(ℓ) + μ`.
use super::conv_coupling::bias;
use super::small_conv::SmallConv;
use crate::multiscale::Shape;
use tch::nn::{self, Module};
use tch::Tensor;

/// The learned prior of a split: variables `prior.weight`, `prior.bias`.
#[derive(Debug)]
pub struct Prior {
    conv: SmallConv,
    shape: Shape,
}

impl Prior {
    /// The prior of the split of images `shape` (starting as `N(0, I)`).
    pub fn build(p: &nn::Path, shape: Shape) -> Self {
        let (kept, out) = crate::multiscale::conditioner_channels(crate::config::LayerKind::Prior, shape[0]);
        Prior { conv: SmallConv::build(p / "prior", kept, 2 * out, 3, true, [shape[1], shape[2]]), shape }
    }

    /// The variables by key within the layer.
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        vec![("prior.weight", self.conv.conv.ws.shallow_clone()), ("prior.bias", bias(&self.conv.conv))]
    }

    /// The image the layer acts on.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The convolution's weight.
    pub(crate) fn probe(&self) -> &Tensor {
        &self.conv.conv.ws
    }

    /// `(x₁, μ, ℓ)` of images `x`.
    fn prior(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let half = self.shape[0] / 2;
        let x1 = x.narrow(1, 0, half);
        let parts = self.conv.forward(&x1).chunk(2, 1);
        (x1, parts[0].shallow_clone(), parts[1].shallow_clone())
    }

    /// `(z, log|det|)` of images `[n, c, h, w]`.
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let half = self.shape[0] / 2;
        let (x1, mu, log_sd) = self.prior(x);
        let z2 = (x.narrow(1, half, self.shape[0] - half) - mu) * log_sd.neg().exp();
        (Tensor::cat(&[x1, z2], 1), log_sd.sum_dim_intlist([1, 2, 3].as_slice(), false, None).neg())
    }

    /// `x` for images `z`.
    pub fn inverse(&self, z: &Tensor) -> Tensor {
        let half = self.shape[0] / 2;
        let (z1, mu, log_sd) = self.prior(z);
        let x2 = z.narrow(1, half, self.shape[0] - half) * log_sd.exp() + mu;
        Tensor::cat(&[z1, x2], 1)
    }
}
