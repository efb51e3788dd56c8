//! A network's passes for a group of rows when its widths are only known at run time (up to
//! [`MAX_IN`] inputs and [`MAX_OUT`] outputs): the hidden units of the rows go through a small
//! buffer that stays in the L1 cache instead of registers, and each output is a dot product of
//! that buffer with a row of `W₂`. The maths and the summation order within a block are those of
//! the narrow kernels. The baseline build runs them; the fused multiply-add builds run them for a
//! layer's last rows only (fewer than a group) and the `tiled` kernels, which give the same
//! numbers, for whole groups.
// The lane loops index several arrays in step; written as index loops they vectorise predictably.
#![allow(clippy::needless_range_loop)]

use super::net::{fma, hsum, leaky, Blocks, BlocksMut, Lane, LANES, SLOPE};

/// Most network inputs (conditioning columns and context) of the wide kernels.
pub(super) const MAX_IN: usize = 64;
/// Most network outputs (transformed columns) of the wide kernels.
pub(super) const MAX_OUT: usize = 64;
/// Rows processed together: eight independent accumulator chains hide the latency of the
/// multiply-adds, and each load of a weight block serves eight rows.
pub(super) const ROWS: usize = 8;

/// `acc += w · s`, lane by lane.
#[inline(always)]
fn axpy<const F: bool>(acc: &mut Lane, w: &Lane, s: f32) {
    for l in 0..LANES {
        acc[l] = fma::<F>(w[l], s, acc[l]);
    }
}

/// `acc += v`, lane by lane.
#[inline(always)]
fn add(acc: &mut Lane, v: &Lane) {
    for l in 0..LANES {
        acc[l] += v[l];
    }
}

/// Outputs whose weight gradients [`rank_update`] accumulates at once: eight independent chains
/// of multiply-adds, as many as the registers hold beside their operands.
const OUTER: usize = 8;

/// `g[j·nb + b] += Σ_r v[r] · s[r][j]` for `j < count` (`g`: `count` runs of `nb` blocks): block
/// `b` of a weight gradient's rows `j`, from `R` rows' hidden lanes `v` and scalars `s`.
#[inline(always)]
fn rank_update<const R: usize, const N: usize, const F: bool>(
    g: &mut [Lane],
    b: usize,
    v: &[Lane; R],
    s: &[[f32; N]; R],
    count: usize,
) {
    let nb = g.len() / count.max(1);
    let mut j = 0;
    while j + OUTER <= count {
        let mut acc = [[0.0f32; LANES]; OUTER];
        for r in 0..R {
            for p in 0..OUTER {
                axpy::<F>(&mut acc[p], &v[r], s[r][j + p]);
            }
        }
        for p in 0..OUTER {
            add(&mut g[(j + p) * nb + b], &acc[p]);
        }
        j += OUTER;
    }
    for j in j..count {
        let mut acc = [0.0f32; LANES];
        for r in 0..R {
            axpy::<F>(&mut acc, &v[r], s[r][j]);
        }
        add(&mut g[j * nb + b], &acc);
    }
}

/// LeakyReLU's backward: `da` where `h > 0`, `da · slope` elsewhere.
#[inline(always)]
fn leaky_grad(h: &Lane, da: &Lane) -> Lane {
    let mut g = [0.0f32; LANES];
    for l in 0..LANES {
        g[l] = if h[l] > 0.0 { da[l] } else { da[l] * SLOPE };
    }
    g
}

/// Pre-activations of hidden block `b` for `R` rows: `b₁ + W₁ x`.
#[inline(always)]
fn pre<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    x: &[[f32; C]; R],
    b: usize,
) -> [Lane; R] {
    let nb = net.blocks();
    let mut h = [net.b1[b]; R];
    for c in 0..net.c {
        let w = &net.w1t[c * nb + b];
        for r in 0..R {
            axpy::<F>(&mut h[r], w, x[r][c]);
        }
    }
    h
}

/// `Σ_b a[r·nb + b] · w[b]` for each of the `R` rows of `a`, lane sums in a fixed order.
#[inline(always)]
fn dots<const R: usize, const F: bool>(a: &[Lane], w: &[Lane]) -> [f32; R] {
    let nb = w.len();
    let mut acc = [[0.0f32; LANES]; R];
    for b in 0..nb {
        for r in 0..R {
            for l in 0..LANES {
                acc[r][l] = fma::<F>(a[r * nb + b][l], w[b][l], acc[r][l]);
            }
        }
    }
    std::array::from_fn(|r| hsum(&acc[r]))
}

/// The network's outputs for `R` rows of inputs (the first `net.o` of each row; the rest 0).
/// `work` holds at least `R` × blocks lanes.
#[inline(always)]
pub(super) fn net_forward<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    x: &[[f32; C]; R],
    work: &mut [Lane],
) -> [[f32; O]; R] {
    let nb = net.blocks();
    let a = &mut work[..R * nb];
    for b in 0..nb {
        let h = pre::<R, C, O, F>(net, x, b);
        let valid = net.valid(b);
        for r in 0..R {
            let mut v = leaky(&h[r]);
            if valid < LANES {
                v[valid..].fill(0.0);
            }
            a[r * nb + b] = v;
        }
    }
    let mut out = [[0.0f32; O]; R];
    for o in 0..net.o {
        let s = dots::<R, F>(a, &net.w2flat[o * nb..(o + 1) * nb]);
        for r in 0..R {
            out[r][o] = s[r] + net.b2[o];
        }
    }
    out
}

/// Backpropagates `gout` (∂loss/∂output) of `R` rows through the network: adds the weight
/// gradients to `g` and returns ∂loss/∂input for the first `needed` inputs (the rest 0: a
/// context needs no gradient). `work` holds at least `R` × blocks lanes.
#[inline(always)]
pub(super) fn net_backward<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    g: &mut BlocksMut<'_, C, O>,
    x: &[[f32; C]; R],
    gout: &[[f32; O]; R],
    work: &mut [Lane],
    needed: usize,
) -> [[f32; C]; R] {
    let nb = net.blocks();
    let dhs = &mut work[..R * nb];
    for b in 0..nb {
        let h = pre::<R, C, O, F>(net, x, b);
        // ∂loss/∂a = W₂ᵀ gout, eight rows at once (eight independent accumulators)
        let mut da = [[0.0f32; LANES]; R];
        for o in 0..net.o {
            let w = &net.w2flat[o * nb + b];
            for r in 0..R {
                axpy::<F>(&mut da[r], w, gout[r][o]);
            }
        }
        let valid = net.valid(b);
        let mut a = [[0.0f32; LANES]; R];
        let mut dh = [[0.0f32; LANES]; R];
        for r in 0..R {
            a[r] = leaky(&h[r]);
            dh[r] = leaky_grad(&h[r], &da[r]);
            if valid < LANES {
                a[r][valid..].fill(0.0);
                dh[r][valid..].fill(0.0);
            }
            dhs[r * nb + b] = dh[r];
        }
        rank_update::<R, O, F>(g.w2, b, &a, gout, net.o);
        let mut gb = [0.0f32; LANES];
        for r in 0..R {
            add(&mut gb, &dh[r]);
        }
        add(&mut g.b1[b], &gb);
        rank_update::<R, C, F>(g.w1t, b, &dh, x, net.c);
    }
    for row in gout {
        for o in 0..net.o {
            g.b2[o] += row[o];
        }
    }
    let mut dx = [[0.0f32; C]; R];
    for c in 0..needed.min(net.c) {
        let s = dots::<R, F>(dhs, &net.w1t[c * nb..(c + 1) * nb]);
        for r in 0..R {
            dx[r][c] = s[r];
        }
    }
    dx
}
