//! How a layer of a multi-scale image flow ([`crate::multiscale`]) sees a row: its first
//! `c·h·w` columns as an image `[c, h, w]` (channel-major), the columns after them (factored out
//! at earlier scales) passed through; the squeeze; and the per-pixel view that lets the vector
//! family's ActNorm, LU map and batch norm act on every pixel's channels (Glow's ActNorm and
//! invertible 1×1 convolution, the R-NVP paper's spatial batch norm).
use crate::multiscale::Shape;
use tch::Tensor;

/// The active image `[n, c, h, w]` of the rows `xs`.
pub(crate) fn active(xs: &Tensor, [c, h, w]: Shape) -> Tensor {
    xs.narrow(1, 0, c * h * w).reshape([-1, c, h, w])
}

/// `f` applied to the active image of the rows `xs` (`[n, D]`, `D ≥ c·h·w`), which returns the
/// new image and its log-determinant per row; the rows come back with the other columns as they
/// were.
pub(crate) fn on_active<L>(
    xs: &Tensor,
    [c, h, w]: Shape,
    f: impl FnOnce(&Tensor) -> (Tensor, L),
) -> (Tensor, L) {
    // the batch size as -1, so that a traced export takes any batch size
    let (total, active) = (xs.size()[1], c * h * w);
    let (out, ld) = f(&self::active(xs, [c, h, w]));
    let out = out.reshape([-1, active]);
    if active == total {
        return (out, ld);
    }
    (Tensor::cat(&[out, xs.narrow(1, active, total - active)], 1), ld)
}

/// Images `[n, c, h, w]` as one row of `c` channels per pixel: `[n·h·w, c]`.
pub(crate) fn to_pixels(image: &Tensor) -> Tensor {
    let c = image.size()[1];
    image.permute([0, 2, 3, 1]).reshape([-1, c])
}

/// Pixel rows `[n·h·w, c]` back as images `[n, c, h, w]`.
pub(crate) fn from_pixels(rows: &Tensor, [c, h, w]: Shape) -> Tensor {
    rows.reshape([-1, h, w, c]).permute([0, 3, 1, 2])
}

/// Per-pixel log-determinants `[n·h·w]` summed over each image's `h·w` pixels: `[n]`.
pub(crate) fn per_image(log_det: &Tensor, [_, h, w]: Shape) -> Tensor {
    log_det.reshape([-1, h * w]).sum_dim_intlist(1, false, None)
}

/// The squeeze `[n, c, h, w] → [n, 4c, h/2, w/2]`: each 2 × 2 block of pixels becomes four
/// channels, channel `4i + 2a + b` holding pixel `(2y + a, 2x + b)` of channel `i`. A
/// permutation: log-determinant 0.
pub(crate) fn squeeze(image: &Tensor) -> Tensor {
    let s = image.size();
    let (c, h, w) = (s[1], s[2], s[3]);
    image.reshape([-1, c, h / 2, 2, w / 2, 2]).permute([0, 1, 3, 5, 2, 4]).reshape([-1, 4 * c, h / 2, w / 2])
}

/// The inverse of [`squeeze`]: `[n, 4c, h/2, w/2] → [n, c, h, w]`.
pub(crate) fn unsqueeze(image: &Tensor) -> Tensor {
    let s = image.size();
    let (c, h, w) = (s[1] / 4, s[2] * 2, s[3] * 2);
    image.reshape([-1, c, 2, 2, h / 2, w / 2]).permute([0, 1, 4, 2, 5, 3]).reshape([-1, c, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn squeeze_moves_each_two_by_two_block_into_channels() {
        let x = Tensor::arange(2 * 2 * 4 * 6, (Kind::Double, Device::Cpu)).reshape([2, 2, 4, 6]);
        let s = squeeze(&x);
        assert_eq!(s.size(), [2, 8, 2, 3]);
        for (i, a, b, y, xx) in [(0, 0, 0, 0, 0), (1, 1, 0, 1, 2), (1, 0, 1, 0, 1), (0, 1, 1, 1, 0)] {
            let from = x.double_value(&[1, i, 2 * y + a, 2 * xx + b]);
            assert_eq!(s.double_value(&[1, 4 * i + 2 * a + b, y, xx]), from);
        }
        assert!(unsqueeze(&s).equal(&x));
    }

    #[test]
    fn pixel_rows_and_the_active_part_round_trip() {
        let x = Tensor::randn([3, 2, 4, 4], (Kind::Double, Device::Cpu));
        let rows = to_pixels(&x);
        assert_eq!(rows.size(), [48, 2]);
        assert_eq!(rows.double_value(&[4 * 4 + 5, 1]), x.double_value(&[1, 1, 1, 1]));
        assert!(from_pixels(&rows, [2, 4, 4]).equal(&x));
        let xs = Tensor::randn([3, 40], (Kind::Double, Device::Cpu));
        let (out, ()) = on_active(&xs, [2, 4, 4], |img| (img * 2.0, ()));
        assert!(out.narrow(1, 0, 32).equal(&(xs.narrow(1, 0, 32) * 2.0)));
        assert!(out.narrow(1, 32, 8).equal(&xs.narrow(1, 32, 8)));
    }
}
