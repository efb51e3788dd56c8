//! The wide kernels' network passes for a group of [`ROWS`] rows in AVX2 registers, tiled: each
//! product of the network (`W₁ x`, `W₂ a`, `W₂ᵀ g`, the weight gradients, `W₁ᵀ δ`) runs as small
//! tiles of rows × hidden blocks (or outputs × hidden blocks) whose accumulators stay in
//! registers while each loaded vector serves several of them. The rows' activations and
//! hidden-unit gradients go through a block-major work buffer (block `b` holds the rows' lanes
//! one after the other) that stays in the L1 cache. In passes of `PANEL_ROWS` rows or more, the
//! products over inputs and outputs (`W₁ x`, `W₂ᵀ g`) read their weights from panels
//! (`Blocks::panels`; tiles narrower than a panel read the rows):
//! a tile's blocks of every input (or output) one after the other, one stream through memory
//! instead of one row of `W₁ᵀ` (or `W₂`) per input (or output).
//!
//! Every number is the one the generic wide kernels compute with fused multiply-adds: the same
//! operations on each element, in the same order; only the order in which elements are visited
//! changes.

// Tiles index several arrays in step; written as index loops they read like the products.
#![allow(clippy::needless_range_loop)]

use super::net::{Blocks, BlocksMut, Lane, LANES};
use super::simd::{Avx2, V8};
use super::wide::ROWS;

/// Rows of a tile of the products over rows (`W₁ x`, `W₂ᵀ g`, the dot products).
const RT: usize = 4;
/// Outputs (or inputs) of a tile of the weight gradients.
const KT: usize = 4;

/// The first `N` blocks of `v` (no `array::from_fn`: its closure would not be inlined where the
/// vector instructions are enabled).
#[inline(always)]
fn loads<const N: usize>(t: Avx2, v: &[Lane]) -> [V8; N] {
    let mut out = [t.zero(); N];
    for j in 0..N {
        out[j] = t.load(&v[j]);
    }
    out
}

/// The mask of block `b`'s real units: all lanes but the padding of the last block. (No
/// closures here or below: they would not be inlined where the vector instructions are enabled.)
#[inline(always)]
fn pad_mask<const C: usize, const O: usize>(t: Avx2, net: &Blocks<'_, C, O>, b: usize) -> Option<V8> {
    if b + 1 == net.blocks() && net.last_valid < LANES {
        Some(t.mask(net.last_valid))
    } else {
        None
    }
}

/// `v` with the lanes outside `mask` set to exact zeros (all of `v` without a mask).
#[inline(always)]
fn masked(v: V8, mask: Option<V8>) -> V8 {
    match mask {
        Some(m) => v.and(m),
        None => v,
    }
}

/// Pre-activations `b₁ + W₁ x` of blocks `b0..b0 + J` for rows `r0..r0 + R` of `xt` (the rows'
/// inputs, input-major).
#[inline(always)]
fn pre_tile<const R: usize, const J: usize, const C: usize, const O: usize>(
    t: Avx2,
    net: &Blocks<'_, C, O>,
    xt: &[[f32; ROWS]],
    r0: usize,
    b0: usize,
) -> [[V8; J]; R] {
    let b1 = loads::<J>(t, &net.b1[b0..b0 + J]);
    let mut h = [b1; R];
    let w = Weights { rows: net.w1t, panels: net.w1p, panel: net.panel, nb: net.blocks(), count: net.c };
    w.accumulate::<R, J>(t, &mut h, xt, r0, b0);
    h
}

/// A weight matrix as a tile over inputs reads it: `count` rows of `nb` blocks, or where the
/// tile's blocks are `panel`, the same numbers in panels ([`Blocks::panels`]).
struct Weights<'w> {
    rows: &'w [Lane],
    panels: &'w [Lane],
    panel: usize,
    nb: usize,
    count: usize,
}

impl Weights<'_> {
    /// `acc[r] += Σ_i w_i[b0..b0 + J] · s_i[r0 + r]` over the rows `w_i` in order, with `s` the
    /// scalars input-major.
    #[inline(always)]
    fn accumulate<const R: usize, const J: usize>(
        &self,
        t: Avx2,
        acc: &mut [[V8; J]; R],
        s: &[[f32; ROWS]],
        r0: usize,
        b0: usize,
    ) {
        if J == self.panel {
            // the tile's weights one after the other in one panel
            let panel = &self.panels[b0 / J * self.count * J..][..self.count * J];
            for (w, s) in panel.chunks_exact(J).zip(s) {
                step::<R, J>(t, acc, loads::<J>(t, w), &s[r0..r0 + R]);
            }
        } else {
            for (w, s) in self.rows.chunks_exact(self.nb).zip(s).take(self.count) {
                step::<R, J>(t, acc, loads::<J>(t, &w[b0..b0 + J]), &s[r0..r0 + R]);
            }
        }
    }
}

/// `acc[r] += w · s[r]` for one input of a tile.
#[inline(always)]
fn step<const R: usize, const J: usize>(t: Avx2, acc: &mut [[V8; J]; R], w: [V8; J], s: &[f32]) {
    for r in 0..R {
        let s = t.splat(s[r]);
        for j in 0..J {
            acc[r][j] = w[j].mul_add(s, acc[r][j]);
        }
    }
}

/// The activations of rows `r0..r0 + R` and blocks `b0..b0 + J`, masked, into `a` (block-major).
#[inline(always)]
fn activations_tile<const R: usize, const J: usize, const C: usize, const O: usize>(
    t: Avx2,
    net: &Blocks<'_, C, O>,
    xt: &[[f32; ROWS]],
    a: &mut [Lane],
    r0: usize,
    b0: usize,
) {
    let h = pre_tile::<R, J, C, O>(t, net, xt, r0, b0);
    for j in 0..J {
        let mask = pad_mask(t, net, b0 + j);
        let a = &mut a[(b0 + j) * ROWS + r0..][..R];
        for r in 0..R {
            let v = h[r][j].leaky();
            masked(v, mask).store(&mut a[r]);
        }
    }
}

/// `a` (block-major, `nb` blocks) of every row: the activations of the rows in `xt`.
#[inline(always)]
fn activations<const J: usize, const C: usize, const O: usize>(
    t: Avx2,
    net: &Blocks<'_, C, O>,
    xt: &[[f32; ROWS]],
    a: &mut [Lane],
) {
    let nb = net.blocks();
    for r0 in (0..ROWS).step_by(RT) {
        let mut b = 0;
        while b + J <= nb {
            activations_tile::<RT, J, C, O>(t, net, xt, a, r0, b);
            b += J;
        }
        for b in b..nb {
            activations_tile::<RT, 1, C, O>(t, net, xt, a, r0, b);
        }
    }
}

/// `Σ_b v[b][r] ⊙ w_k[b]`, summed over lanes, into `out[r][k]` for rows `r0..r0 + R` and the
/// `K` rows `k0..k0 + K` of a weight matrix (`w`: runs of `nb` blocks).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dots_tile<const R: usize, const K: usize, const N: usize>(
    t: Avx2,
    v: &[Lane],
    w: &[Lane],
    nb: usize,
    k0: usize,
    r0: usize,
    out: &mut [[f32; N]],
) {
    let w = &w[k0 * nb..(k0 + K) * nb];
    let mut acc = [[t.zero(); K]; R];
    for (b, v) in v.chunks_exact(ROWS).take(nb).enumerate() {
        let v = &v[r0..r0 + R];
        let mut wv = [t.zero(); K];
        for k in 0..K {
            wv[k] = t.load(&w[k * nb + b]);
        }
        for r in 0..R {
            let a = t.load(&v[r]);
            for k in 0..K {
                acc[r][k] = a.mul_add(wv[k], acc[r][k]);
            }
        }
    }
    for r in 0..R {
        for k in 0..K {
            out[r0 + r][k0 + k] = acc[r][k].hsum();
        }
    }
}

/// `out[r][k] = Σ_b v[b][r] · w_k[b]` for every row and `k < count` (`w`: `count` runs of `nb`
/// blocks), in tiles of `RT` rows × `K` weight rows; the last weight rows in a tile as large as
/// they fill.
#[inline(always)]
fn dots<const K: usize, const N: usize>(
    t: Avx2,
    v: &[Lane],
    w: &[Lane],
    nb: usize,
    count: usize,
    out: &mut [[f32; N]],
) {
    let full = count / K * K;
    for r0 in (0..ROWS).step_by(RT) {
        for k in (0..full).step_by(K) {
            dots_tile::<RT, K, N>(t, v, w, nb, k, r0, out);
        }
    }
    // (loops, not closures: a closure would not be inlined where the vector instructions are on)
    match count - full {
        1 => dots_tile::<ROWS, 1, N>(t, v, w, nb, full, 0, out),
        2 => {
            for r0 in (0..ROWS).step_by(RT) {
                dots_tile::<RT, 2, N>(t, v, w, nb, full, r0, out);
            }
        }
        3 => {
            for r0 in (0..ROWS).step_by(RT) {
                dots_tile::<RT, 3, N>(t, v, w, nb, full, r0, out);
            }
        }
        _ => {}
    }
}

/// The network's outputs for the [`ROWS`] rows of `x` into `out` (the first `net.o` of each row),
/// in tiles of `J` hidden blocks (2 keeps AVX2's 16 registers from spilling; AVX-512's 32 take 4).
/// `work` holds at least `ROWS` × blocks lanes.
#[inline(always)]
pub(super) fn net_forward<const C: usize, const O: usize, const J: usize>(
    t: Avx2,
    net: &Blocks<'_, C, O>,
    x: &[[f32; C]],
    out: &mut [[f32; O]],
    work: &mut [Lane],
) {
    let nb = net.blocks();
    let xt = transpose(x, net.c);
    let a = &mut work[..ROWS * nb];
    activations::<J, C, O>(t, net, &xt, a);
    dots::<J, O>(t, a, net.w2flat, nb, net.o, out);
    for row in out.iter_mut().take(ROWS) {
        for (v, b) in row.iter_mut().zip(&net.b2).take(net.o) {
            *v += b;
        }
    }
}

/// The rows' first `c` inputs, input-major.
#[inline(always)]
fn transpose<const C: usize>(x: &[[f32; C]], c: usize) -> [[f32; ROWS]; C] {
    let mut xt = [[0.0f32; ROWS]; C];
    for (r, row) in x.iter().enumerate().take(ROWS) {
        for i in 0..c.min(C) {
            xt[i][r] = row[i];
        }
    }
    xt
}

/// `g_k[b] += Σ_r s[r][k] · v[b][r]` for `k0 ≤ k < k0 + K` and blocks `b0..b0 + J` (`g`: runs of
/// `nb` blocks), each tile summed over the rows from zero and then added.
#[inline(always)]
fn rank_tile<const K: usize, const J: usize>(
    t: Avx2,
    g: &mut [Lane],
    nb: usize,
    v: &[Lane],
    st: &[[f32; ROWS]],
    k0: usize,
    b0: usize,
) {
    let v = &v[b0 * ROWS..(b0 + J) * ROWS];
    let st = &st[k0..k0 + K];
    let mut acc = [[t.zero(); J]; K];
    for r in 0..ROWS {
        let mut a = [t.zero(); J];
        for j in 0..J {
            a[j] = t.load(&v[j * ROWS + r]);
        }
        for k in 0..K {
            let s = t.splat(st[k][r]);
            for j in 0..J {
                acc[k][j] = a[j].mul_add(s, acc[k][j]);
            }
        }
    }
    for k in 0..K {
        let g = &mut g[(k0 + k) * nb + b0..][..J];
        for j in 0..J {
            t.load(&g[j]).add(acc[k][j]).store(&mut g[j]);
        }
    }
}

/// `g_k += Σ_r s[r][k] · v[·][r]` for `k0 ≤ k < k0 + K`, over every block.
#[inline(always)]
fn rank_strip<const K: usize, const J: usize>(
    t: Avx2,
    g: &mut [Lane],
    nb: usize,
    v: &[Lane],
    st: &[[f32; ROWS]],
    k0: usize,
) {
    let mut b = 0;
    while b + J <= nb {
        rank_tile::<K, J>(t, g, nb, v, st, k0, b);
        b += J;
    }
    for b in b..nb {
        rank_tile::<K, 1>(t, g, nb, v, st, k0, b);
    }
}

/// `g_k += Σ_r s[r][k] · v[·][r]` for every `k < count` (`st`: `s` transposed), in tiles of `KT`
/// rows of `g` × `J` blocks; the last one to three rows of `g` in tiles of 8, 4 and `J` blocks.
#[inline(always)]
fn rank_update<const J: usize>(
    t: Avx2,
    g: &mut [Lane],
    nb: usize,
    v: &[Lane],
    st: &[[f32; ROWS]],
    count: usize,
) {
    let full = count / KT * KT;
    for k in (0..full).step_by(KT) {
        rank_strip::<KT, J>(t, g, nb, v, st, k);
    }
    match count - full {
        1 => rank_strip::<1, 8>(t, g, nb, v, st, full),
        2 => rank_strip::<2, 4>(t, g, nb, v, st, full),
        3 => rank_strip::<3, J>(t, g, nb, v, st, full),
        _ => {}
    }
}

/// `δ = W₂ᵀ gout ⊙ leaky′` for rows `r0..r0 + R` and blocks `b0..b0 + J`, masked, into `dh`
/// (block-major), from the activations `a` (positive exactly where the pre-activations are).
#[inline(always)]
fn deltas_tile<const R: usize, const J: usize, const C: usize, const O: usize>(
    t: Avx2,
    net: &Blocks<'_, C, O>,
    gt: &[[f32; ROWS]],
    a: &[Lane],
    dh: &mut [Lane],
    r0: usize,
    b0: usize,
) {
    let mut da = [[t.zero(); J]; R];
    let w = Weights { rows: net.w2flat, panels: net.w2p, panel: net.panel, nb: net.blocks(), count: net.o };
    w.accumulate::<R, J>(t, &mut da, gt, r0, b0);
    for j in 0..J {
        let mask = pad_mask(t, net, b0 + j);
        let at = (b0 + j) * ROWS + r0;
        let (a, dh) = (&a[at..at + R], &mut dh[at..at + R]);
        for r in 0..R {
            let v = t.load(&a[r]).leaky_select(da[r][j]);
            masked(v, mask).store(&mut dh[r]);
        }
    }
}

/// Backpropagates `gout` (∂loss/∂output) of the [`ROWS`] rows of `x` through the network: adds the
/// weight gradients to `g` and writes ∂loss/∂input for the first `needed` inputs into `dx` (the
/// rest stay as they are: a context needs no gradient). Tiles of `J` hidden blocks as in
/// [`net_forward`]; `work` holds at least `2 · ROWS` × blocks lanes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn net_backward<const C: usize, const O: usize, const J: usize>(
    t: Avx2,
    net: &Blocks<'_, C, O>,
    g: &mut BlocksMut<'_, C, O>,
    x: &[[f32; C]],
    gout: &[[f32; O]],
    dx: &mut [[f32; C]],
    work: &mut [Lane],
    needed: usize,
) {
    let nb = net.blocks();
    let xt = transpose(x, net.c);
    let gt = transpose(gout, net.o);
    let (a, rest) = work.split_at_mut(ROWS * nb);
    let dh = &mut rest[..ROWS * nb];
    activations::<J, C, O>(t, net, &xt, a);
    for r0 in (0..ROWS).step_by(RT) {
        let mut b = 0;
        while b + J <= nb {
            deltas_tile::<RT, J, C, O>(t, net, &gt, a, dh, r0, b);
            b += J;
        }
        for b in b..nb {
            deltas_tile::<RT, 1, C, O>(t, net, &gt, a, dh, r0, b);
        }
    }
    rank_update::<J>(t, g.w2, nb, a, &gt, net.o);
    for (gb, v) in g.b1.iter_mut().zip(dh.chunks_exact(ROWS)) {
        let mut s = t.zero();
        for v in v {
            s = s.add(t.load(v));
        }
        t.load(gb).add(s).store(gb);
    }
    rank_update::<J>(t, g.w1t, nb, dh, &xt, net.c);
    for row in gout.iter().take(ROWS) {
        for (gb, v) in g.b2.iter_mut().zip(row).take(net.o) {
            *gb += v;
        }
    }
    dots::<J, C>(t, dh, net.w1t, nb, needed.min(net.c), dx);
}
