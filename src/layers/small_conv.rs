//! A 3 × 3 convolution of small images as one matrix product.
//!
//! With zero padding 1 and stride 1 (every 3 × 3 convolution rnvp builds), output pixel `q` of
//! channel `o` on `h × w` images is `y[o, q] = b[o] + Σ_c Σ_p W[o, c, t(q, p)] x[c, p]`, summed
//! over the input pixels `p` one step or less from `q`, with the tap `t(q, p) = 3 (p_y − q_y + 1)
//! + (p_x − q_x + 1)`. That is a linear map of the flattened image: `y = x M + b` with
//! `M[(c, p), (o, q)] = W[o, c, t(q, p)]`, and 0 where `p` is not beside `q`.
//!
//! On a CPU, a convolution routine's set-up per call costs more than its arithmetic on images of
//! 2 × 2 or 4 × 4 pixels (the last levels of a multi-scale flow), while `M` is then small: one
//! matrix product is quicker, forward and backward. So a [`SmallConv`] of images of at most
//! [`MAX_PIXELS`] pixels whose `M` has at most [`MAX_ENTRIES`] entries runs as a product on the
//! CPU; gradients reach `W` through the gather that builds `M`. Larger images and channel counts,
//! other kernels and other devices keep the convolution. The price: autograd keeps `M` (at most
//! 256 KiB in float32) for the backward pass, where a convolution keeps only its weight.
use tch::nn::{self, Module};
use tch::{Device, Tensor};

/// The most entries `M` may have (256 KiB in float32) for the product to be used: measured on a
/// Zen 3 core, the product wins up to here and loses when `M` has 2²⁰ entries (64 → 64 channels
/// on 4 × 4 pixels), where building `M` and sending its gradient back to `W` dominate.
pub(crate) const MAX_ENTRIES: i64 = 1 << 16;

/// The most pixels an image may have for the product to be used (4 × 4): the product multiplies
/// `p / 9` times as often as the convolution (every pixel pair, not only neighbours), which pays
/// only while the convolution's set-up per call dominates (measured at 2 × 2 and 4 × 4; it lost
/// on 8 × 8).
pub(crate) const MAX_PIXELS: i64 = 16;

/// A convolution (3 × 3 with padding 1, or 1 × 1) of `h × w` images.
#[derive(Debug)]
pub(crate) struct SmallConv {
    /// The convolution's variables.
    pub(crate) conv: nn::Conv2D,
    /// `[h, w]`.
    image: [i64; 2],
    /// The tap index of `M` on `h × w` images where the product is used, made at the build (a
    /// tensor made from Rust data during a traced export would be recorded without its values).
    taps: Option<Tensor>,
}

impl SmallConv {
    /// A `k × k` convolution `c_in → c_out` at `p` (see [`super::conv_coupling::conv`]; `zero`:
    /// weights at zero) of images of `image` = `[h, w]` pixels.
    pub(crate) fn build(p: nn::Path, c_in: i64, c_out: i64, k: i64, zero: bool, image: [i64; 2]) -> Self {
        Self::new(super::conv_coupling::conv(p, c_in, c_out, k, zero), image)
    }

    /// `conv` on images of `h × w` pixels. A 3 × 3 `conv` must have been built as
    /// [`super::conv_coupling::conv`] builds it: zero padding 1, stride 1, no dilation, one group
    /// (tch keeps a convolution's configuration private, so it cannot be checked here; outside the
    /// tests, [`SmallConv::build`] is the only caller).
    fn new(conv: nn::Conv2D, [h, w]: [i64; 2]) -> Self {
        let s = conv.ws.size();
        let (o, c, p) = (s[0], s[1], h.saturating_mul(w));
        let entries = c.saturating_mul(p).saturating_mul(o).saturating_mul(p);
        let product =
            s[2..] == [3, 3] && conv.ws.device() == Device::Cpu && p <= MAX_PIXELS && entries <= MAX_ENTRIES;
        let taps = product.then(|| Tensor::from_slice(&tap_index(h, w)));
        SmallConv { conv, image: [h, w], taps }
    }

    /// The tap index, if the images `x` (their channels, size and device) run as a product.
    fn as_product(&self, x: &Tensor) -> Option<&Tensor> {
        let s = x.size();
        let channels = self.conv.ws.size()[1];
        let fits = x.device() == Device::Cpu && s.len() == 4 && s[1] == channels && s[2..] == self.image;
        self.taps.as_ref().filter(|_| fits)
    }
}

impl Module for SmallConv {
    fn forward(&self, x: &Tensor) -> Tensor {
        let Some(taps) = self.as_product(x) else { return self.conv.forward(x) };
        let ([h, w], s) = (self.image, self.conv.ws.size());
        let (o, c, p) = (s[0], s[1], h * w);
        let bias = super::conv_coupling::bias(&self.conv).unsqueeze(1).expand([o, p], false).reshape([o * p]);
        bias.addmm(&x.reshape([-1, c * p]), &matrix(&self.conv.ws, taps, p)).reshape([-1, o, h, w])
    }
}

/// `M` `[c·p, o·p]` of the 3 × 3 weight `weight` `[o, c, 3, 3]` on images of `p` pixels, with
/// their tap index `taps`.
fn matrix(weight: &Tensor, taps: &Tensor, p: i64) -> Tensor {
    let s = weight.size();
    let (o, c) = (s[0], s[1]);
    // the taps and a zero after them (index 9)
    weight
        .reshape([o, c, 9])
        .constant_pad_nd([0, 1])
        .index_select(2, taps)
        .reshape([o, c, p, p])
        .permute([1, 2, 0, 3])
        .reshape([c * p, o * p])
}

/// For every input pixel `p` and output pixel `q` (in that order, row-major), the tap `t(q, p)`
/// that joins them, or 9 (the zero appended after the taps) where `p` is not beside `q`.
fn tap_index(h: i64, w: i64) -> Vec<i64> {
    let pixels = || (0..h).flat_map(move |y| (0..w).map(move |x| (y, x)));
    pixels()
        .flat_map(|(py, px)| {
            pixels().map(move |(qy, qx)| {
                let (dy, dx) = (py - qy + 1, px - qx + 1);
                if (0..3).contains(&dy) && (0..3).contains(&dx) {
                    3 * dy + dx
                } else {
                    9
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn conv(c: i64, o: i64, k: i64, kind: Kind) -> (nn::VarStore, nn::Conv2D) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(kind);
        let layer = nn::conv2d(vs.root(), c, o, k, nn::ConvConfig { padding: k / 2, ..Default::default() });
        (vs, layer)
    }

    /// The product equals libtorch's convolution, forward and in every gradient, on every image
    /// size it takes (square, oblong, a single pixel, a single row).
    #[test]
    fn the_product_is_the_convolution() {
        tch::manual_seed(3);
        for (c, o, h, w) in [(2, 5, 4, 4), (3, 4, 2, 2), (1, 2, 1, 1), (2, 3, 1, 4), (4, 2, 3, 2)] {
            let (_vs, layer) = conv(c, o, 3, Kind::Double);
            let small = SmallConv::new(layer, [h, w]);
            let x = Tensor::randn([3, c, h, w], (Kind::Double, Device::Cpu)).requires_grad_(true);
            assert!(small.as_product(&x).is_some(), "{c}→{o} on {h}×{w} should run as a product");
            let gy = Tensor::randn([3, o, h, w], (Kind::Double, Device::Cpu));
            let grads = |y: Tensor| {
                let bias = small.conv.bs.as_ref().expect("built with a bias").shallow_clone();
                let inputs = [x.shallow_clone(), small.conv.ws.shallow_clone(), bias];
                Tensor::run_backward(&[(y * &gy).sum(Kind::Double)], &inputs, false, false)
            };
            let (want, got) = (small.conv.forward(&x), small.forward(&x));
            let err = (&want - &got).abs().max().double_value(&[]);
            assert!(err < 1e-12, "{c}→{o} on {h}×{w}: forward differs by {err}");
            let empty = Tensor::zeros([0, c, h, w], (Kind::Double, Device::Cpu));
            assert_eq!(small.forward(&empty).size(), [0, o, h, w]);
            for (i, (a, b)) in grads(want).iter().zip(grads(got)).enumerate() {
                let err = (a - b).abs().max().double_value(&[]);
                assert!(err < 1e-12, "{c}→{o} on {h}×{w}: gradient {i} differs by {err}");
            }
        }
    }

    #[test]
    fn larger_images_other_sizes_and_other_kernels_keep_the_convolution() {
        let (_vs, big) = conv(64, 64, 3, Kind::Float);
        let small = SmallConv::new(big, [2, 2]);
        assert!(small.as_product(&Tensor::zeros([2, 64, 2, 2], (Kind::Float, Device::Cpu))).is_some());
        // an image of another size than the one it was built for
        let x = Tensor::randn([2, 64, 4, 4], (Kind::Float, Device::Cpu));
        assert!(small.as_product(&x).is_none());
        assert!(small.forward(&x).equal(&small.conv.forward(&x)));
        // M of 2²⁰ entries
        let (_vs, big) = conv(64, 64, 3, Kind::Float);
        assert!(SmallConv::new(big, [4, 4]).as_product(&x).is_none());
        // more than 16 pixels, though M would be small
        let (_vs, tiny) = conv(1, 1, 3, Kind::Float);
        assert!(SmallConv::new(tiny, [8, 8])
            .as_product(&Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu)))
            .is_none());
        // another channel count than the weight's
        let (_vs, two) = conv(2, 3, 3, Kind::Float);
        let two = SmallConv::new(two, [2, 2]);
        assert!(two.as_product(&Tensor::zeros([2, 2, 2, 2], (Kind::Float, Device::Cpu))).is_some());
        assert!(two.as_product(&Tensor::zeros([2, 3, 2, 2], (Kind::Float, Device::Cpu))).is_none());
        let (_vs, one) = conv(2, 3, 1, Kind::Float);
        assert!(SmallConv::new(one, [2, 2])
            .as_product(&Tensor::zeros([2, 2, 2, 2], (Kind::Float, Device::Cpu)))
            .is_none());
    }

    #[test]
    fn taps_join_neighbours_only() {
        let t = tap_index(2, 3);
        assert_eq!(t.len(), 36);
        // input (0, 0) to output (0, 0): the centre tap; to output (1, 1): up-left of it
        assert_eq!(t[0], 4);
        assert_eq!(t[4], 0);
        // input (0, 0) to output (0, 2): two columns apart
        assert_eq!(t[2], 9);
    }
}
