//! The fused kernels' run-time dispatch: every coupling pass is compiled once for the baseline
//! instruction set and once for AVX2 + FMA, for each pair of narrow widths and once for the wide
//! kernels, and called for the CPU and the layer's widths. The only file of the kernels with
//! `unsafe` (calling the `#[target_feature]` build after detection; the crate's one other exception
//! is `sys`).
// `unsafe` only calls `#[target_feature]` functions after run-time detection.
#![allow(unsafe_code)]

use super::coupling::{layer_backward, layer_forward, layer_inverse, Geometry};
use super::wide::{MAX_IN, MAX_OUT};

/// Widths of the smaller instance of the wide kernels.
const MID: usize = 16;

/// Calls `f::<C, O, false>(args)` for the run-time widths `(c, o)` when both are at most
/// [`MAX_WIDTH`](super::MAX_WIDTH), and the wide kernels `f::<MID, MID, true>` or `f::<MAX_IN,
/// MAX_OUT, true>` otherwise.
macro_rules! dispatch {
    ($c:expr, $o:expr, $f:ident, ($($arg:expr),*)) => {
        match ($c, $o) {
            (1, 1) => $f::<1, 1, false>($($arg),*),
            (1, 2) => $f::<1, 2, false>($($arg),*),
            (1, 3) => $f::<1, 3, false>($($arg),*),
            (1, 4) => $f::<1, 4, false>($($arg),*),
            (2, 1) => $f::<2, 1, false>($($arg),*),
            (2, 2) => $f::<2, 2, false>($($arg),*),
            (2, 3) => $f::<2, 3, false>($($arg),*),
            (2, 4) => $f::<2, 4, false>($($arg),*),
            (3, 1) => $f::<3, 1, false>($($arg),*),
            (3, 2) => $f::<3, 2, false>($($arg),*),
            (3, 3) => $f::<3, 3, false>($($arg),*),
            (3, 4) => $f::<3, 4, false>($($arg),*),
            (4, 1) => $f::<4, 1, false>($($arg),*),
            (4, 2) => $f::<4, 2, false>($($arg),*),
            (4, 3) => $f::<4, 3, false>($($arg),*),
            (4, 4) => $f::<4, 4, false>($($arg),*),
            // the wide kernels' row arrays sized to the widths: zeroing and copying them is a
            // large share of the work when the hidden layer is small
            (c, o) if c <= MID && o <= MID => $f::<MID, MID, true>($($arg),*),
            // Packing::new admits inputs up to MAX_IN and outputs up to MAX_OUT
            _ => $f::<MAX_IN, MAX_OUT, true>($($arg),*),
        }
    };
}

/// The per-width entry points, compiled once for the baseline and once for AVX2 + FMA.
macro_rules! entry_points {
    ($($name:ident, $impl:ident, ($($arg:ident: $ty:ty),*));* $(;)?) => {
        $(
            pub(super) mod $name {
                use super::*;
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                fn base<const C: usize, const O: usize, const WIDE: bool>($($arg: $ty),*) {
                    $impl::<C, O, false, WIDE>($($arg),*)
                }
                #[cfg(target_arch = "x86_64")]
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                #[target_feature(enable = "avx2,fma")]
                fn avx2<const C: usize, const O: usize, const WIDE: bool>($($arg: $ty),*) {
                    $impl::<C, O, true, WIDE>($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                pub(in crate::kernel) fn run(use_avx2: bool, c: usize, o: usize, $($arg: $ty),*) {
                    #[cfg(target_arch = "x86_64")]
                    if use_avx2 && has_avx2_fma() {
                        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
                        return unsafe { dispatch!(c, o, avx2, ($($arg),*)) };
                    }
                    let _ = use_avx2;
                    dispatch!(c, o, base, ($($arg),*))
                }
            }
        )*
    };
}

entry_points! {
    fwd, layer_forward, (params: &[f32], geo: Geometry, xs: &mut [f32], ctx: &[f32], log_det: &mut [f32], keep: Option<&mut [f32]>);
    inv, layer_inverse, (params: &[f32], geo: Geometry, zs: &mut [f32], ctx: &[f32], keep: Option<&mut [f32]>);
    bwd, layer_backward, (params: &[f32], grads: &mut [f32], geo: Geometry, input: &[f32], ctx: &[f32], sm: &[f32], grad: &mut [f32], dlogdet: f32);
}

/// Whether the AVX2 + FMA build of the kernels runs: the CPU has both, and the environment
/// variable `RNVP_KERNELS` is not `baseline` (which forces the baseline build everywhere, as
/// `ATEN_CPU_CAPABILITY=default` does for libtorch's own kernels; read once).
pub fn has_avx2_fma() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| {
        let forced_baseline = std::env::var("RNVP_KERNELS").is_ok_and(|v| v.trim() == "baseline");
        #[cfg(target_arch = "x86_64")]
        return !forced_baseline
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma");
        #[allow(unreachable_code)]
        {
            let _ = forced_baseline;
            false
        }
    })
}
