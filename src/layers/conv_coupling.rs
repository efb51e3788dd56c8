//! The affine coupling of images, with a convolutional conditioner (the R-NVP paper §3.4, Glow).
//!
//! With `b` the mask of conditioning entries (a checkerboard of pixels, or half the channels),
//! `[h, μ] = net(b ⊙ x)`, `log s = g(h) ⊙ (1 − b)`:
//! `z = x ⊙ exp(log s) + μ ⊙ (1 − b)`, `log|det| = Σ log s`, and the inverse
//! `x = (z − μ ⊙ (1 − b)) ⊙ exp(−log s)` (the conditioning entries are unchanged, so
//! `net(b ⊙ z) = net(b ⊙ x)`). A channel mask is applied by splitting the channels: the network
//! sees only the conditioning half and outputs `[h, μ]` for the other. `g` is the vector
//! family's scale map ([`crate::config::Scale`]; `tanh` with one `γ` per transformed channel).
//!
//! The conditioner `net`: `conv 3×3 → ReLU → conv → ReLU → conv 3×3` with `hidden` channels
//! (Glow's: the middle conv 1×1; the R-NVP paper's residual: the middle conv 3×3 added to its
//! input). Its last conv starts at zero, so the coupling starts as the identity (`sigmoid`:
//! a contraction by `σ(2)`).
use super::affine::{log_scale, scale_key, scale_variable};
use super::small_conv::SmallConv;
use crate::config::{Mask, Scale};
use crate::multiscale::Shape;
use tch::nn::{self, Module};
use tch::Tensor;

/// The conditioner network of an image coupling: variables `net.{0,2,4}.{weight,bias}`.
#[derive(Debug)]
pub struct ConvNet {
    first: SmallConv,
    middle: SmallConv,
    last: SmallConv,
    residual: bool,
}

/// A `k × k` convolution (padding `k / 2`) at `p`; initialised as PyTorch's `nn.Conv2d`
/// (uniform in ±1/√fan_in) unless `zero`.
pub(crate) fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, zero: bool) -> nn::Conv2D {
    let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
    let init = if zero { nn::Init::Const(0.0) } else { nn::Init::Uniform { lo: -bound, up: bound } };
    let config = nn::ConvConfig { padding: k / 2, ws_init: init, bs_init: init, ..Default::default() };
    nn::conv2d(p, c_in, c_out, k, config)
}

/// A convolution's bias (its variable; zeros for one built without a bias, which rnvp never
/// builds).
pub(crate) fn bias(c: &nn::Conv2D) -> Tensor {
    c.bs.as_ref().map_or_else(|| c.ws.zeros_like(), Tensor::shallow_clone)
}

impl ConvNet {
    /// `c_in → hidden → hidden → c_out` channels at `p`, for images of `image` = `[h, w]` pixels;
    /// `random`: drawn as PyTorch would (else zero, for weights about to be loaded); the last conv
    /// starts at zero either way.
    pub fn build(
        p: nn::Path,
        c_in: i64,
        hidden: i64,
        c_out: i64,
        image: [i64; 2],
        residual: bool,
        random: bool,
    ) -> Self {
        let middle_k = if residual { 3 } else { 1 };
        ConvNet {
            first: SmallConv::build(&p / 0, c_in, hidden, 3, !random, image),
            middle: SmallConv::build(&p / 2, hidden, hidden, middle_k, !random, image),
            last: SmallConv::build(&p / 4, hidden, c_out, 3, true, image),
            residual,
        }
    }

    /// The variables by key within the net.
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        vec![
            ("net.0.weight", self.first.conv.ws.shallow_clone()),
            ("net.0.bias", bias(&self.first.conv)),
            ("net.2.weight", self.middle.conv.ws.shallow_clone()),
            ("net.2.bias", bias(&self.middle.conv)),
            ("net.4.weight", self.last.conv.ws.shallow_clone()),
            ("net.4.bias", bias(&self.last.conv)),
        ]
    }

    /// The first conv's weight (its dtype and device are the layer's).
    pub fn probe(&self) -> &Tensor {
        &self.first.conv.ws
    }
}

impl Module for ConvNet {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let a = self.first.forward(xs).relu();
        let b = self.middle.forward(&a);
        let b = if self.residual { (a + b).relu() } else { b.relu() };
        self.last.forward(&b)
    }
}

/// An affine coupling of images `[c, h, w]` with a convolutional conditioner.
#[derive(Debug)]
pub struct ConvCoupling {
    net: ConvNet,
    mask: Mask,
    shape: Shape,
    scale: Scale,
    map_var: Option<Tensor>,
}

impl ConvCoupling {
    /// A coupling of images `shape` conditioned through `mask`, with `hidden` channels and the
    /// scale map `scale`; `residual`: the R-NVP paper's conditioner (else Glow's); `random`: see
    /// [`ConvNet::build`].
    pub fn build(
        p: &nn::Path,
        shape: Shape,
        mask: Mask,
        hidden: i64,
        scale: Scale,
        residual: bool,
        random: bool,
    ) -> Self {
        let kind = crate::config::LayerKind::ConvAffine { mask };
        let (c_in, c_out) = crate::multiscale::conditioner_channels(kind, shape[0]);
        let net = ConvNet::build(p / "net", c_in, hidden, 2 * c_out, [shape[1], shape[2]], residual, random);
        let map_var = scale_variable(p, scale, &[c_out, 1, 1]);
        ConvCoupling { net, mask, shape, scale, map_var }
    }

    /// The variables by key within the layer.
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        let mut v = self.net.variables();
        if let (Some(t), Some(key)) = (&self.map_var, scale_key(self.scale)) {
            v.push((key, t.shallow_clone()));
        }
        v
    }

    /// The mask.
    pub fn mask(&self) -> Mask {
        self.mask
    }

    /// The image the layer acts on.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The conditioner's first weight.
    pub(crate) fn probe(&self) -> &Tensor {
        self.net.probe()
    }

    /// `(log s, μ)` for the conditioning input `cond`.
    fn scale_shift(&self, cond: &Tensor) -> (Tensor, Tensor) {
        let out = self.net.forward(cond);
        let parts = out.chunk(2, 1);
        (log_scale(self.scale, &parts[0], self.map_var.as_ref()), parts[1].shallow_clone())
    }

    /// The checkerboard `b` (1 on conditioning pixels) as `[1, 1, h, w]` of `like`'s dtype and device.
    fn checkerboard(&self, parity: bool, like: &Tensor) -> Tensor {
        let [_, h, w] = self.shape;
        let opts = (like.kind(), like.device());
        let sum = Tensor::arange(h, opts).reshape([h, 1]) + Tensor::arange(w, opts).reshape([1, w]);
        sum.remainder(2.0).eq(if parity { 1.0 } else { 0.0 }).to_kind(like.kind()).reshape([1, 1, h, w])
    }

    /// The channel halves `(conditioning, transformed)` of `x` and how to put them back.
    fn halves(&self, x: &Tensor, flip: bool) -> (Tensor, Tensor) {
        let c = self.shape[0];
        let half = c / 2;
        let (a, b) = (x.narrow(1, 0, half), x.narrow(1, half, c - half));
        if flip {
            (b, a)
        } else {
            (a, b)
        }
    }

    fn merge(cond: &Tensor, other: &Tensor, flip: bool) -> Tensor {
        if flip {
            Tensor::cat(&[other, cond], 1)
        } else {
            Tensor::cat(&[cond, other], 1)
        }
    }

    /// `(z, log|det|)` of images `[n, c, h, w]`, one log-determinant per image.
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        match self.mask {
            Mask::Checkerboard { parity } => {
                let b = self.checkerboard(parity, x);
                let free = b.ones_like() - &b;
                let (log_s, mu) = self.scale_shift(&(x * &b));
                let log_s = log_s * &free;
                let z = x * log_s.exp() + mu * free;
                (z, log_s.sum_dim_intlist([1, 2, 3].as_slice(), false, None))
            }
            Mask::Channel { flip } => {
                let (x1, x2) = self.halves(x, flip);
                let (log_s, mu) = self.scale_shift(&x1);
                let z2 = x2 * log_s.exp() + mu;
                (Self::merge(&x1, &z2, flip), log_s.sum_dim_intlist([1, 2, 3].as_slice(), false, None))
            }
        }
    }

    /// `x` for images `z` `[n, c, h, w]`.
    pub fn inverse(&self, z: &Tensor) -> Tensor {
        match self.mask {
            Mask::Checkerboard { parity } => {
                let b = self.checkerboard(parity, z);
                let free = b.ones_like() - &b;
                let (log_s, mu) = self.scale_shift(&(z * &b));
                (z - mu * &free) * (log_s * free).neg().exp()
            }
            Mask::Channel { flip } => {
                let (z1, z2) = self.halves(z, flip);
                let (log_s, mu) = self.scale_shift(&z1);
                let x2 = (z2 - mu) * log_s.neg().exp();
                Self::merge(&z1, &x2, flip)
            }
        }
    }
}
