//! The multi-scale image flows (the R-NVP paper §3.6, Glow §3): which layer sits at each index of
//! the stack, and which part of the row it acts on.
//!
//! An image flow works on rows of `D = c·h·w` columns: the image in channel-major order
//! (PyTorch's `[c, h, w]`). Every layer acts on the *active* part of the row, its first
//! `c′·h′·w′` columns viewed as an image `[c′, h′, w′]`; the columns after them have been factored
//! out and pass through unchanged to the base `N(0, I)`. A squeeze `[c, h, w] → [4c, h/2, w/2]`
//! reorders the active columns; factoring out half the channels keeps the first `c/2` channels,
//! which are the first half of the active columns, so that the active part only ever shrinks to
//! a prefix of the row.
//!
//! With `S` scales and `K` couplings per group (`FlowConfig::layers`):
//! - `realnvp-image`: at each scale `s < S − 1`, `K` checkerboard couplings (parities
//!   alternating), a squeeze, `K` channel-wise couplings (halves alternating), then half the
//!   channels factored out; at the last scale `K + 1` checkerboard couplings. Batch norm follows
//!   every coupling. Scale `s` starts from `[c·2ˢ, h/2ˢ, w/2ˢ]`: `h` and `w` divisible by `2^(S−1)`.
//! - `glow-image`: at each level `s < S`, a squeeze, `K` steps of ActNorm → invertible 1×1
//!   convolution → channel-wise coupling, then (but at the last level) the split with a learned
//!   prior before half the channels are factored out: `h` and `w` divisible by `2^S`.
use crate::arch::{Arch, LayerKind, Mask};
use crate::error::{Error, Result};

/// The most scales an image flow may have.
pub const MAX_SCALES: i64 = 16;
/// The most couplings per group an image flow may have.
pub const MAX_STEPS: i64 = 1024;
/// The most values an image may have, `c·h·w` (2048 × 2048 grey pixels): a file's image size
/// is not bounded by its weights (convolutions take any size), so it is bounded here.
pub const MAX_DIM: i64 = 1 << 22;

/// The shape of an image flow's input and its number of scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// Channels.
    pub channels: i64,
    /// Height in pixels.
    pub height: i64,
    /// Width in pixels.
    pub width: i64,
    /// Scales (R-NVP) or levels (Glow).
    pub scales: i64,
}

/// The image `[c, h, w]` a layer acts on.
pub type Shape = [i64; 3];

impl ImageShape {
    /// `D = c·h·w` (saturating).
    pub fn dim(&self) -> i64 {
        self.channels.saturating_mul(self.height).saturating_mul(self.width)
    }

    /// Checks the shape for `arch`: positive sizes, at most [`MAX_SCALES`] scales, and `h`, `w`
    /// divisible by the squeezes' `2^squeezes`.
    pub fn validate(&self, arch: &Arch) -> Result<()> {
        let (c, h, w, s) = (self.channels, self.height, self.width, self.scales);
        if c < 1 || h < 1 || w < 1 || c > 1 << 20 || h > 1 << 20 || w > 1 << 20 {
            return Err(Error::InvalidConfig(format!("image shape {c} × {h} × {w}: sizes 1 to 2²⁰")));
        }
        if self.dim() > MAX_DIM {
            return Err(Error::InvalidConfig(format!(
                "images of {c} × {h} × {w} = {} values (an image flow takes at most {MAX_DIM})",
                self.dim()
            )));
        }
        if !(1..=MAX_SCALES).contains(&s) {
            return Err(Error::InvalidConfig(format!("{s} scales (an image flow has 1 to {MAX_SCALES})")));
        }
        let squeezes = squeezes(arch, s);
        let f = 1i64 << squeezes;
        if h % f != 0 || w % f != 0 {
            return Err(Error::InvalidConfig(format!(
                "images of {h} × {w} pixels cannot be squeezed {squeezes} time(s) ({} with {s} scale(s) squeezes \
                 by 2^{squeezes} = {f}): height and width must be multiples of {f} (use fewer --scales)",
                arch.name()
            )));
        }
        Ok(())
    }
}

/// How many squeezes `scales` scales of `arch` make.
fn squeezes(arch: &Arch, scales: i64) -> i64 {
    if is_glow(arch) {
        scales
    } else {
        scales - 1
    }
}

fn is_glow(arch: &Arch) -> bool {
    arch.actnorm
}

/// The image scale `s` starts from: `[c·2ˢ, h/2ˢ, w/2ˢ]`.
fn scale_input(img: &ImageShape, s: i64) -> Shape {
    [img.channels << s, img.height >> s, img.width >> s]
}

/// The squeezed image `[4c, h/2, w/2]`.
pub fn squeezed([c, h, w]: Shape) -> Shape {
    [4 * c, h / 2, w / 2]
}

/// Layers at scale `s` (of `scales`) with `k` couplings per group.
fn scale_len(arch: &Arch, k: u64, s: i64, scales: i64) -> u64 {
    let last = s == scales - 1;
    if is_glow(arch) {
        1 + 3 * k + u64::from(!last)
    } else if last {
        2 * (k + 1)
    } else {
        2 * k + 1 + 2 * k
    }
}

/// Number of layers of the image flow `arch` on `img` with `steps` couplings per group,
/// saturating.
pub fn count(arch: &Arch, img: &ImageShape, steps: i64) -> u64 {
    let k = steps.clamp(0, MAX_STEPS) as u64;
    (0..img.scales.clamp(0, MAX_SCALES)).map(|s| scale_len(arch, k, s, img.scales)).sum()
}

/// Layer `j` of the image flow `arch` on `img` with `steps` couplings per group: its kind and the
/// image it acts on (`None` past the end).
pub fn layer(arch: &Arch, img: &ImageShape, steps: i64, j: u64) -> Option<(LayerKind, Shape)> {
    let k = steps.clamp(0, MAX_STEPS) as u64;
    let mut j = j;
    for s in 0..img.scales.clamp(0, MAX_SCALES) {
        let len = scale_len(arch, k, s, img.scales);
        if j >= len {
            j -= len;
            continue;
        }
        let input = scale_input(img, s);
        return Some(if is_glow(arch) {
            glow_layer(j, k, input)
        } else {
            realnvp_layer(j, k, input, s == img.scales - 1)
        });
    }
    None
}

/// Layer `j` of a Glow level whose input is `input`.
fn glow_layer(j: u64, k: u64, input: Shape) -> (LayerKind, Shape) {
    let inner = squeezed(input);
    if j == 0 {
        return (LayerKind::Squeeze, input);
    }
    let j = j - 1;
    if j >= 3 * k {
        return (LayerKind::Prior, inner);
    }
    let kind = match j % 3 {
        0 => LayerKind::ActNorm,
        1 => LayerKind::Lu,
        _ => LayerKind::ConvAffine { mask: Mask::Channel { flip: false } },
    };
    (kind, inner)
}

/// Layer `j` of an R-NVP scale whose input is `input`.
fn realnvp_layer(j: u64, k: u64, input: Shape, last: bool) -> (LayerKind, Shape) {
    let coupling = |i: u64, mask: Mask| {
        if i.is_multiple_of(2) {
            LayerKind::ConvAffine { mask }
        } else {
            LayerKind::BatchNorm
        }
    };
    let checker = |i: u64| Mask::Checkerboard { parity: (i / 2) % 2 == 1 };
    if last || j < 2 * k {
        return (coupling(j, checker(j)), input);
    }
    if j == 2 * k {
        return (LayerKind::Squeeze, input);
    }
    let i = j - 2 * k - 1;
    (coupling(i, Mask::Channel { flip: (i / 2) % 2 == 1 }), squeezed(input))
}

/// The shape of variable `key` of a layer `kind` acting on `[c, h, w]` in the image flow `arch`
/// whose conditioners have `hidden` channels, or `None` when the layer has no such variable.
pub fn variable_shape(
    arch: &Arch,
    hidden: i64,
    kind: LayerKind,
    [c, _, _]: Shape,
    key: &str,
) -> Option<Vec<i64>> {
    if !kind.keys(arch).contains(&key) {
        return None;
    }
    let (input, out) = conditioner_channels(kind, c);
    let middle = if is_glow(arch) { 1 } else { 3 };
    Some(match key {
        "net.0.weight" => vec![hidden, input, 3, 3],
        "net.2.weight" => vec![hidden, hidden, middle, middle],
        "net.0.bias" | "net.2.bias" => vec![hidden],
        "net.4.weight" => vec![2 * out, hidden, 3, 3],
        "prior.weight" => vec![2 * out, input, 3, 3],
        "net.4.bias" | "prior.bias" => vec![2 * out],
        "scale_factor" => vec![out, 1, 1],
        "softclamp_bound" | "sigmoid_shift" | "initialized" => vec![],
        "lower" | "upper" => vec![c, c],
        _ => vec![c], // loc, log_scale, perm, sign, log_abs_s, log_gamma, beta, running_*
    })
}

/// `(input, transformed)` channels of a convolutional coupling or prior on `c` channels: a
/// checkerboard coupling sees all `c` (masked) and transforms all `c` (the other pixels); a
/// channel-wise one sees one half and transforms the other; the prior sees the kept first half.
pub fn conditioner_channels(kind: LayerKind, c: i64) -> (i64, i64) {
    let half = c / 2;
    match kind {
        LayerKind::ConvAffine { mask: Mask::Checkerboard { .. } } => (c, c),
        LayerKind::ConvAffine { mask: Mask::Channel { flip: false } } | LayerKind::Prior => (half, c - half),
        LayerKind::ConvAffine { mask: Mask::Channel { flip: true } } => (c - half, half),
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layers of `arch` on `shape` with `k` couplings per group, in order.
    fn plan(arch: Arch, k: i64, shape: ImageShape) -> Vec<(LayerKind, Shape)> {
        (0..count(&arch, &shape, k)).map(|j| layer(&arch, &shape, k, j).unwrap()).collect()
    }

    #[test]
    fn realnvp_scales_follow_the_paper() {
        let shape = ImageShape { channels: 1, height: 8, width: 8, scales: 2 };
        let kinds = plan(Arch::REALNVP_IMAGE, 3, shape);
        assert_eq!(kinds.len(), 13 + 8);
        let cb = |parity| LayerKind::ConvAffine { mask: Mask::Checkerboard { parity } };
        let ch = |flip| LayerKind::ConvAffine { mask: Mask::Channel { flip } };
        assert_eq!(kinds[0], (cb(false), [1, 8, 8]));
        assert_eq!(kinds[1], (LayerKind::BatchNorm, [1, 8, 8]));
        assert_eq!(kinds[2], (cb(true), [1, 8, 8]));
        assert_eq!(kinds[4], (cb(false), [1, 8, 8]));
        assert_eq!(kinds[6], (LayerKind::Squeeze, [1, 8, 8]));
        assert_eq!(kinds[7], (ch(false), [4, 4, 4]));
        assert_eq!(kinds[9], (ch(true), [4, 4, 4]));
        assert_eq!(kinds[13], (cb(false), [2, 4, 4]));
        assert_eq!(kinds[19], (cb(true), [2, 4, 4]));
        assert_eq!(kinds[20], (LayerKind::BatchNorm, [2, 4, 4]));
        assert_eq!(layer(&Arch::REALNVP_IMAGE, &shape, 3, 21), None);
    }

    #[test]
    fn glow_levels_squeeze_flow_and_split() {
        let kinds = plan(Arch::GLOW_IMAGE, 2, ImageShape { channels: 1, height: 8, width: 8, scales: 2 });
        assert_eq!(kinds.len(), 8 + 7);
        assert_eq!(kinds[0], (LayerKind::Squeeze, [1, 8, 8]));
        assert_eq!(kinds[1], (LayerKind::ActNorm, [4, 4, 4]));
        assert_eq!(kinds[2], (LayerKind::Lu, [4, 4, 4]));
        assert_eq!(kinds[7], (LayerKind::Prior, [4, 4, 4]));
        assert_eq!(kinds[8], (LayerKind::Squeeze, [2, 4, 4]));
        assert_eq!(kinds[14], (LayerKind::ConvAffine { mask: Mask::Channel { flip: false } }, [8, 2, 2]));
    }

    #[test]
    fn shapes_that_cannot_be_squeezed_are_refused() {
        let shape = ImageShape { channels: 1, height: 8, width: 6, scales: 2 };
        assert!(shape.validate(&Arch::REALNVP_IMAGE).is_ok());
        let err = shape.validate(&Arch::GLOW_IMAGE).unwrap_err().to_string();
        assert!(err.contains("8 × 6") && err.contains("multiples of 4"), "{err}");
        assert!(ImageShape { scales: 0, ..shape }.validate(&Arch::GLOW_IMAGE).is_err());
    }
}
