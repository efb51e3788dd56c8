//! The fused kernels' run-time dispatch: every coupling pass is compiled for the baseline
//! instruction set and for AVX2 + FMA (for each pair of narrow widths and for the wide kernels),
//! and its wide kernels once more with AVX-512 F and VL enabled (their 32 vector registers); it is
//! called for the CPU and the layer's widths. Here too the tiled kernels' AVX2 vectors ([`V8`]),
//! which only an [`Avx2`] token made after detection can create. The only file of the kernels with
//! `unsafe` (the crate's one other exception is `sys`).
// `unsafe` only calls `#[target_feature]` functions and intrinsics after run-time detection.
#![allow(unsafe_code)]

use super::coupling::{layer_backward, layer_forward, layer_inverse, Geometry};
use super::wide::{MAX_IN, MAX_OUT};

/// Widths of the smaller instance of the wide kernels.
const MID: usize = 16;

/// A build of the kernels, from the most portable to the widest. `RNVP_KERNELS=baseline` or
/// `RNVP_KERNELS=avx2` in the environment caps the build that runs on any CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The baseline x86-64 (or other) instruction set: separate multiplies and adds.
    Baseline,
    /// AVX2 with fused multiply-adds, 8 lanes.
    Avx2,
    /// The wide kernels' AVX2 + FMA code compiled with AVX-512 F and VL enabled: the same
    /// per-element operations in the same order (so the same bits), with 32 vector registers
    /// instead of 16, which hold larger register tiles. Narrow networks run the AVX2 build.
    Avx512,
}

impl Isa {
    /// The name [`Packing::instruction_set`](super::Packing::instruction_set) reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "AVX2+FMA",
            Isa::Avx512 => "AVX-512",
        }
    }

    /// The widest build this CPU runs, capped by `RNVP_KERNELS` (`baseline` or `avx2`, lower case;
    /// any other value caps nothing; read once).
    pub fn detected() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = match std::env::var("RNVP_KERNELS").as_deref().map(str::trim) {
                Ok("baseline") => Isa::Baseline,
                Ok("avx2") => Isa::Avx2,
                _ => Isa::Avx512,
            };
            cpu_isa().min(cap)
        })
    }
}

/// The widest build the CPU supports.
fn cpu_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let avx512 = std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl");
        match (avx2, avx512) {
            (true, true) => Isa::Avx512,
            (true, false) => Isa::Avx2,
            _ => Isa::Baseline,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Isa::Baseline
}

/// Calls `f::<C, O, false>(args)` for the run-time widths `(c, o)` when both are at most
/// [`MAX_WIDTH`](super::MAX_WIDTH), and the wide kernels `wide::<MID, MID, true>` or
/// `wide::<MAX_IN, MAX_OUT, true>` otherwise.
macro_rules! dispatch {
    ($c:expr, $o:expr, $f:ident, $wide:ident, ($($arg:expr),*)) => {
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
            (c, o) if c <= MID && o <= MID => $wide::<MID, MID, true>($($arg),*),
            // Packing::new admits inputs up to MAX_IN and outputs up to MAX_OUT
            _ => $wide::<MAX_IN, MAX_OUT, true>($($arg),*),
        }
    };
}

/// The per-width entry points, compiled for the baseline and for AVX2 + FMA, and (used for the
/// wide kernels only) for AVX-512.
macro_rules! entry_points {
    ($($name:ident, $impl:ident, ($($arg:ident: $ty:ty),*));* $(;)?) => {
        $(
            pub(super) mod $name {
                use super::*;
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                fn base<const C: usize, const O: usize, const WIDE: bool>($($arg: $ty),*) {
                    $impl::<C, O, false, WIDE, false>($($arg),*)
                }
                #[cfg(target_arch = "x86_64")]
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                #[target_feature(enable = "avx2,fma")]
                fn avx2<const C: usize, const O: usize, const WIDE: bool>($($arg: $ty),*) {
                    $impl::<C, O, true, WIDE, false>($($arg),*)
                }
                #[cfg(target_arch = "x86_64")]
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
                fn avx512<const C: usize, const O: usize, const WIDE: bool>($($arg: $ty),*) {
                    // 32 vector registers: the tiled kernels' larger tiles
                    $impl::<C, O, true, WIDE, true>($($arg),*)
                }
                /// Runs the pass in the build `isa` (never above what the CPU runs) for networks of
                /// `c` inputs and `o` outputs.
                #[allow(clippy::too_many_arguments)]
                pub(in crate::kernel) fn run(isa: Isa, c: usize, o: usize, $($arg: $ty),*) {
                    #[cfg(target_arch = "x86_64")]
                    match isa.min(Isa::detected()) {
                        // SAFETY: the CPU supports AVX-512 F and VL, AVX2 and FMA (detected at run
                        // time by `Isa::detected`).
                        Isa::Avx512 => return unsafe { dispatch!(c, o, avx2, avx512, ($($arg),*)) },
                        // SAFETY: the CPU supports AVX2 and FMA (detected at run time).
                        Isa::Avx2 => return unsafe { dispatch!(c, o, avx2, avx2, ($($arg),*)) },
                        Isa::Baseline => {}
                    }
                    let _ = isa;
                    dispatch!(c, o, base, base, ($($arg),*))
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

/// Whether the AVX2 + FMA build of the kernels (or a wider one) runs: the CPU has both, and the
/// environment variable `RNVP_KERNELS` is not `baseline` (which forces the baseline build
/// everywhere, as `ATEN_CPU_CAPABILITY=default` does for libtorch's own kernels).
pub fn has_avx2_fma() -> bool {
    Isa::detected() >= Isa::Avx2
}

/// Proof that the CPU runs AVX2 and FMA, made only after run-time detection: [`V8`] vectors exist
/// only through it, so their safe operations never execute where those instructions are missing.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Avx2(());

/// Eight `f32` lanes in an AVX2 register (made through an [`Avx2`] token).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct V8(core::arch::x86_64::__m256);

#[cfg(target_arch = "x86_64")]
mod v8 {
    use super::super::net::{Lane, LANES, SLOPE};
    use super::{cpu_isa, Avx2, Isa, V8};
    use core::arch::x86_64::*;

    impl Avx2 {
        /// The token, where the CPU has AVX2 and FMA (whatever `RNVP_KERNELS` says: the
        /// caller picks the build).
        #[inline(always)]
        pub fn detect() -> Option<Avx2> {
            (cpu_isa() >= Isa::Avx2).then_some(Avx2(()))
        }

        /// Eight zeros.
        #[inline(always)]
        pub fn zero(self) -> V8 {
            // SAFETY (every block of this module): the token exists, so the CPU has AVX2 and FMA.
            V8(unsafe { _mm256_setzero_ps() })
        }

        /// `v` in every lane.
        #[inline(always)]
        pub fn splat(self, v: f32) -> V8 {
            V8(unsafe { _mm256_set1_ps(v) })
        }

        /// The lanes of `v`.
        #[inline(always)]
        pub fn load(self, v: &Lane) -> V8 {
            // SAFETY: `v` is eight readable floats (unaligned load).
            V8(unsafe { _mm256_loadu_ps(v.as_ptr()) })
        }

        /// All bits set in lanes below `valid`, zero above.
        #[inline(always)]
        pub fn mask(self, valid: usize) -> V8 {
            let mut lanes: Lane = [0.0; LANES];
            for (l, v) in lanes.iter_mut().enumerate() {
                if l < valid {
                    *v = f32::from_bits(u32::MAX);
                }
            }
            self.load(&lanes)
        }
    }

    impl V8 {
        /// `self · b + c`, rounded once.
        #[inline(always)]
        pub fn mul_add(self, b: V8, c: V8) -> V8 {
            V8(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
        }

        /// `self + b`.
        #[inline(always)]
        pub fn add(self, b: V8) -> V8 {
            V8(unsafe { _mm256_add_ps(self.0, b.0) })
        }

        /// The bits of `self` where `mask`'s are set (exact zeros elsewhere).
        #[inline(always)]
        pub fn and(self, mask: V8) -> V8 {
            V8(unsafe { _mm256_and_ps(self.0, mask.0) })
        }

        /// LeakyReLU: `max(h, h · slope)`, which is `h` where `h > 0` and `h · slope` elsewhere (NaN
        /// included: `max` returns its second operand), in two instructions.
        #[inline(always)]
        pub fn leaky(self) -> V8 {
            unsafe { V8(_mm256_max_ps(self.0, _mm256_mul_ps(self.0, _mm256_set1_ps(SLOPE)))) }
        }

        /// `v` where `self > 0`, `v · slope` elsewhere: LeakyReLU's backward for an upstream
        /// gradient `v` (`self` the pre-activation, or the activation, which is positive exactly
        /// where the pre-activation is).
        #[inline(always)]
        pub fn leaky_select(self, v: V8) -> V8 {
            unsafe {
                let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, _mm256_setzero_ps());
                V8(_mm256_blendv_ps(_mm256_mul_ps(v.0, _mm256_set1_ps(SLOPE)), v.0, pos))
            }
        }

        /// Writes the lanes to `out`.
        #[inline(always)]
        pub fn store(self, out: &mut Lane) {
            // SAFETY: `out` is eight writable floats (unaligned store).
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), self.0) }
        }

        /// The sum of the lanes in the order of `net::hsum`: with `hₗ = vₗ + vₗ₊₄`,
        /// `(h₀ + h₂) + (h₁ + h₃)`.
        #[inline(always)]
        pub fn hsum(self) -> f32 {
            const _: () = assert!(LANES == 8);
            unsafe {
                let h = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
                let t = _mm_add_ps(h, _mm_movehl_ps(h, h));
                _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<1>(t, t)))
            }
        }
    }
}
