//! Fused CPU kernels for the coupling layers (float32, `k` and `d − k` up to 4).
//!
//! The notebook's conditioners are `Linear(c, hidden) → LeakyReLU → Linear(hidden, o)` with tiny
//! `c` and `o` (1 for two-dimensional data). Run through libtorch, every layer writes and re-reads
//! `[n, hidden]` activations several times (linear, activation, its gradient, ...), so the cost is
//! memory traffic, not arithmetic. These kernels instead walk the hidden units of a few rows at a
//! time in SIMD registers: the forward pass produces each row's `σ` and `μ` without storing any
//! activation, and the backward pass recomputes the hidden units and accumulates the weight
//! gradients in the same sweep. A training step then keeps only each layer's input and its `σ`,
//! `μ` (`n × (d + 2·o)` numbers; with reversible backprop, those of one layer at a time), and the
//! weights stay in the L1 cache.
//!
//! The maths is the notebook's, term for term; only the summation order differs from libtorch's
//! (tests compare both, and compare the gradients with autograd's). Parameters live in one flat
//! buffer ([`Packing`]): per layer, `sig_net` then `mu_net`, each as `W₁ᵀ [c × hp]`, `b₁ [hp]`,
//! `W₂ [o × hp]`, `b₂ [o]`, with the hidden width padded with zeros to `hp`, a multiple of the
//! SIMD width (padded units are exactly zero and get zero gradients).
//!
//! On x86-64 CPUs with AVX2 and FMA (detected at run time) the kernels are compiled for them;
//! elsewhere the same code runs with the baseline instruction set. `RNVP_KERNELS=baseline` in the
//! environment forces the baseline build on any CPU (the AVX2 build fuses multiply-adds, so the two
//! round differently; CI runs the suite both ways).
// `unsafe` only calls `#[target_feature]` functions after run-time detection. The lane loops
// index several arrays in step; written as index loops they vectorise predictably.
#![allow(unsafe_code)]
#![allow(clippy::needless_range_loop)]

use crate::config::{FlowConfig, Layout};
use crate::error::{Error, Result};
use crate::flow::StackedNvp;
use std::collections::BTreeMap;
use std::ops::Range;
use tch::{Device, Kind, Tensor};

/// SIMD lanes the hidden loop is written for (one AVX2 register of f32).
const LANES: usize = 8;
/// LeakyReLU's negative slope (PyTorch's default).
const SLOPE: f32 = 0.01;
/// Rows processed together: their hidden units share each load of the weights.
const ROWS: usize = 4;
/// Largest `c` and `o` with a compiled kernel.
pub const MAX_WIDTH: usize = 4;

/// Where each layer's packed parameters lie in the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Packing {
    d: usize,
    k: usize,
    hidden: usize,
    hp: usize,
    flips: Vec<bool>,
    offsets: Vec<usize>,
    len: usize,
    /// Use the AVX2 + FMA build of the kernels.
    avx2: bool,
}

/// Which tensor of a conditioner network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `N.0.weight`, `[hidden, c]`.
    W1,
    /// `N.0.bias`, `[hidden]`.
    B1,
    /// `N.2.weight`, `[o, hidden]`.
    W2,
    /// `N.2.bias`, `[o]`.
    B2,
}

impl Packing {
    /// The packing of a stacked flow, or `None` when no kernel handles its widths.
    pub fn new(cfg: &FlowConfig) -> Option<Packing> {
        let (d, k, hidden) = (cfg.d as usize, cfg.k as usize, cfg.hidden as usize);
        if cfg.arch != crate::config::Arch::NOTEBOOK
            || k == 0
            || k >= d
            || k > MAX_WIDTH
            || d - k > MAX_WIDTH
            || hidden == 0
        {
            return None;
        }
        let hp = hidden.div_ceil(LANES) * LANES;
        let flips: Vec<bool> = (0..cfg.layers).map(|i| cfg.flip(i)).collect();
        let mut offsets = Vec::with_capacity(flips.len());
        let mut len = 0;
        for &flip in &flips {
            offsets.push(len);
            let (c, o) = if flip { (d - k, k) } else { (k, d - k) };
            len += 2 * net_len(c, o, hp);
        }
        Some(Packing { d, k, hidden, hp, flips, offsets, len, avx2: has_avx2_fma() })
    }

    /// The same packing with the kernels built for the baseline instruction set even where the CPU
    /// has AVX2 (for tests and comparisons).
    pub fn baseline(mut self) -> Self {
        self.avx2 = false;
        self
    }

    /// Which build of the kernels runs: "AVX2+FMA" or "baseline".
    pub fn instruction_set(&self) -> &'static str {
        if self.avx2 {
            "AVX2+FMA"
        } else {
            "baseline"
        }
    }

    /// Numbers in the flat buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never: a flow has a layer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.flips.len()
    }

    /// Data dimension.
    pub fn d(&self) -> usize {
        self.d
    }

    fn widths(&self, layer: usize) -> (usize, usize) {
        if self.flips[layer] {
            (self.d - self.k, self.k)
        } else {
            (self.k, self.d - self.k)
        }
    }

    /// Conditioning and transformed column offsets of a layer.
    fn columns(&self, layer: usize) -> (usize, usize) {
        if self.flips[layer] {
            (self.k, 0)
        } else {
            (0, self.k)
        }
    }

    /// The range of one layer's parameters (both networks).
    fn layer_range(&self, layer: usize) -> Range<usize> {
        let (c, o) = self.widths(layer);
        self.offsets[layer]..self.offsets[layer] + 2 * net_len(c, o, self.hp)
    }

    /// Maps a dense tensor of the flow to positions in the flat buffer: calls `f(dense_index,
    /// packed_index)` for every element of `N.part` (`mu` selects `mu_net`) of `layer`, with dense
    /// indices in row-major order of the tensor's shape.
    pub fn for_each(&self, layer: usize, mu: bool, part: Part, mut f: impl FnMut(usize, usize)) {
        let (c, o) = self.widths(layer);
        let hp = self.hp;
        let base = self.offsets[layer] + if mu { net_len(c, o, hp) } else { 0 };
        match part {
            Part::W1 => {
                for j in 0..self.hidden {
                    for i in 0..c {
                        f(j * c + i, base + i * hp + j);
                    }
                }
            }
            Part::B1 => (0..self.hidden).for_each(|j| f(j, base + c * hp + j)),
            Part::W2 => {
                for i in 0..o {
                    for j in 0..self.hidden {
                        f(i * self.hidden + j, base + (c + 1) * hp + i * hp + j);
                    }
                }
            }
            Part::B2 => (0..o).for_each(|i| f(i, base + (c + 1 + o) * hp + i)),
        }
    }

    /// The shape of `N.part` of `layer`.
    pub fn shape(&self, layer: usize, part: Part) -> Vec<i64> {
        let (c, o) = self.widths(layer);
        let h = self.hidden as i64;
        match part {
            Part::W1 => vec![h, c as i64],
            Part::B1 => vec![h],
            Part::W2 => vec![o as i64, h],
            Part::B2 => vec![o as i64],
        }
    }
}

/// Length of one packed network.
fn net_len(c: usize, o: usize, hp: usize) -> usize {
    (c + 1 + o) * hp + o
}

/// One network's packed parameters.
struct Net<'a> {
    w1t: &'a [f32],
    b1: &'a [f32],
    w2: &'a [f32],
    b2: &'a [f32],
}

fn split_net(p: &[f32], c: usize, o: usize, hp: usize) -> Net<'_> {
    let (w1t, rest) = p.split_at(c * hp);
    let (b1, rest) = rest.split_at(hp);
    let (w2, b2) = rest.split_at(o * hp);
    Net { w1t, b1, w2, b2: &b2[..o] }
}

/// One network's gradient accumulators (same layout).
struct NetGrad<'a> {
    w1t: &'a mut [f32],
    b1: &'a mut [f32],
    w2: &'a mut [f32],
    b2: &'a mut [f32],
}

fn split_net_mut(p: &mut [f32], c: usize, o: usize, hp: usize) -> NetGrad<'_> {
    let (w1t, rest) = p.split_at_mut(c * hp);
    let (b1, rest) = rest.split_at_mut(hp);
    let (w2, b2) = rest.split_at_mut(o * hp);
    NetGrad { w1t, b1, w2, b2: &mut b2[..o] }
}

type Lane = [f32; LANES];

/// A packed network viewed as blocks of `LANES` hidden units.
struct Blocks<'a, const C: usize, const O: usize> {
    w1: [&'a [Lane]; C],
    b1: &'a [Lane],
    w2: [&'a [Lane]; O],
    b2: [f32; O],
    /// Real hidden units in the last block (the rest is padding, masked to exactly zero so that
    /// infinite inputs cannot turn `0 · ∞` into NaN).
    last_valid: usize,
}

impl<'a, const C: usize, const O: usize> Blocks<'a, C, O> {
    #[inline(always)]
    fn new(net: &Net<'a>, hidden: usize) -> Self {
        let hp = net.b1.len();
        let lanes = |s: &'a [f32]| -> &'a [Lane] { s.as_chunks::<LANES>().0 };
        let b1 = lanes(net.b1);
        let w1 = std::array::from_fn(|c| lanes(&net.w1t[c * hp..(c + 1) * hp]));
        let w2 = std::array::from_fn(|o| lanes(&net.w2[o * hp..(o + 1) * hp]));
        let b2 = std::array::from_fn(|o| net.b2[o]);
        let last_valid = hidden - (hp - LANES);
        Blocks { w1, b1, w2, b2, last_valid }
    }
}

#[inline(always)]
fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Sums the lanes in a fixed order.
#[inline(always)]
fn hsum(v: &Lane) -> f32 {
    let mut h = [0.0f32; LANES / 2];
    for l in 0..LANES / 2 {
        h[l] = v[l] + v[l + LANES / 2];
    }
    (h[0] + h[2]) + (h[1] + h[3])
}

/// The network's outputs for `R` rows of inputs.
#[inline(always)]
fn net_forward<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    x: &[[f32; C]; R],
) -> [[f32; O]; R] {
    let mut acc = [[[0.0f32; LANES]; O]; R];
    let nb = net.b1.len();
    // the last block apart, so that only it pays for masking the padded units
    for b in 0..nb - 1 {
        forward_block::<R, C, O, F>(net, b, LANES, x, &mut acc);
    }
    forward_block::<R, C, O, F>(net, nb - 1, net.last_valid, x, &mut acc);
    std::array::from_fn(|r| std::array::from_fn(|o| hsum(&acc[r][o]) + net.b2[o]))
}

/// Hidden block `b` of the forward pass; lanes from `valid` on are padding.
#[inline(always)]
fn forward_block<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    b: usize,
    valid: usize,
    x: &[[f32; C]; R],
    acc: &mut [[Lane; O]; R],
) {
    let b1 = &net.b1[b];
    let w1: [&Lane; C] = std::array::from_fn(|c| &net.w1[c][b]);
    let w2: [&Lane; O] = std::array::from_fn(|o| &net.w2[o][b]);
    for r in 0..R {
        let mut h = *b1;
        for c in 0..C {
            for l in 0..LANES {
                h[l] = fma::<F>(w1[c][l], x[r][c], h[l]);
            }
        }
        for l in 0..LANES {
            h[l] = if h[l] > 0.0 { h[l] } else { h[l] * SLOPE };
        }
        if valid < LANES {
            h[valid..].fill(0.0);
        }
        for o in 0..O {
            for l in 0..LANES {
                acc[r][o][l] = fma::<F>(w2[o][l], h[l], acc[r][o][l]);
            }
        }
    }
}

/// Backpropagates `gout` (∂loss/∂output) of `R` rows through the network: adds the weight
/// gradients to `g` and returns ∂loss/∂input.
#[inline(always)]
fn net_backward<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    g: &mut BlocksMut<'_, C, O>,
    x: &[[f32; C]; R],
    gout: &[[f32; O]; R],
) -> [[f32; C]; R] {
    let mut dx = [[[0.0f32; LANES]; C]; R];
    let nb = net.b1.len();
    for b in 0..nb - 1 {
        backward_block::<R, C, O, F>(net, g, b, LANES, x, gout, &mut dx);
    }
    backward_block::<R, C, O, F>(net, g, nb - 1, net.last_valid, x, gout, &mut dx);
    for row in gout {
        for o in 0..O {
            g.b2[o] += row[o];
        }
    }
    std::array::from_fn(|r| std::array::from_fn(|c| hsum(&dx[r][c])))
}

/// Hidden block `b` of the backward pass; lanes from `valid` on are padding.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_block<const R: usize, const C: usize, const O: usize, const F: bool>(
    net: &Blocks<'_, C, O>,
    g: &mut BlocksMut<'_, C, O>,
    b: usize,
    valid: usize,
    x: &[[f32; C]; R],
    gout: &[[f32; O]; R],
    dx: &mut [[Lane; C]; R],
) {
    let b1 = &net.b1[b];
    let w1: [&Lane; C] = std::array::from_fn(|c| &net.w1[c][b]);
    let w2: [&Lane; O] = std::array::from_fn(|o| &net.w2[o][b]);
    let mut gw1 = [[0.0f32; LANES]; C];
    let mut gb1 = [0.0f32; LANES];
    let mut gw2 = [[0.0f32; LANES]; O];
    for r in 0..R {
        let mut h = *b1;
        for c in 0..C {
            for l in 0..LANES {
                h[l] = fma::<F>(w1[c][l], x[r][c], h[l]);
            }
        }
        let mut da = [0.0f32; LANES];
        for o in 0..O {
            for l in 0..LANES {
                da[l] = fma::<F>(w2[o][l], gout[r][o], da[l]);
            }
        }
        let mut a = [0.0f32; LANES];
        let mut dh = [0.0f32; LANES];
        for l in 0..LANES {
            let pos = h[l] > 0.0;
            a[l] = if pos { h[l] } else { h[l] * SLOPE };
            dh[l] = if pos { da[l] } else { da[l] * SLOPE };
        }
        if valid < LANES {
            a[valid..].fill(0.0);
            dh[valid..].fill(0.0);
        }
        for o in 0..O {
            for l in 0..LANES {
                gw2[o][l] = fma::<F>(a[l], gout[r][o], gw2[o][l]);
            }
        }
        for l in 0..LANES {
            gb1[l] += dh[l];
        }
        for c in 0..C {
            for l in 0..LANES {
                gw1[c][l] = fma::<F>(dh[l], x[r][c], gw1[c][l]);
                dx[r][c][l] = fma::<F>(dh[l], w1[c][l], dx[r][c][l]);
            }
        }
    }
    for l in 0..LANES {
        g.b1[b][l] += gb1[l];
    }
    for c in 0..C {
        for l in 0..LANES {
            g.w1[c][b][l] += gw1[c][l];
        }
    }
    for o in 0..O {
        for l in 0..LANES {
            g.w2[o][b][l] += gw2[o][l];
        }
    }
}

/// Gradient accumulators viewed as blocks.
struct BlocksMut<'a, const C: usize, const O: usize> {
    w1: [&'a mut [Lane]; C],
    b1: &'a mut [Lane],
    w2: [&'a mut [Lane]; O],
    b2: &'a mut [f32],
}

impl<'a, const C: usize, const O: usize> BlocksMut<'a, C, O> {
    #[inline(always)]
    fn new(g: NetGrad<'a>) -> Self {
        let nb = g.b1.len() / LANES;
        BlocksMut {
            w1: split_lanes(g.w1t, nb),
            b1: g.b1.as_chunks_mut::<LANES>().0,
            w2: split_lanes(g.w2, nb),
            b2: g.b2,
        }
    }
}

/// `N` consecutive runs of `nb` lane blocks.
#[inline(always)]
fn split_lanes<const N: usize>(s: &mut [f32], nb: usize) -> [&mut [Lane]; N] {
    let mut rest = s.as_chunks_mut::<LANES>().0;
    std::array::from_fn(|_| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(nb);
        rest = tail;
        head
    })
}

/// A layer's geometry for the kernels.
#[derive(Clone, Copy)]
struct Geometry {
    d: usize,
    /// First conditioning column.
    cc: usize,
    /// First transformed column.
    tc: usize,
    hp: usize,
    hidden: usize,
}

/// Gathers the conditioning columns of rows `i..i + R`.
#[inline(always)]
fn gather<const R: usize, const C: usize>(xs: &[f32], geo: Geometry, i: usize) -> [[f32; C]; R] {
    std::array::from_fn(|r| std::array::from_fn(|c| xs[(i + r) * geo.d + geo.cc + c]))
}

/// A layer's `sig_net` and `mu_net` viewed as blocks.
#[inline(always)]
fn layer_nets<const C: usize, const O: usize>(
    params: &[f32],
    geo: Geometry,
) -> (Blocks<'_, C, O>, Blocks<'_, C, O>) {
    let sig_net = split_net(params, C, O, geo.hp);
    let mu_net = split_net(&params[net_len(C, O, geo.hp)..], C, O, geo.hp);
    (Blocks::new(&sig_net, geo.hidden), Blocks::new(&mu_net, geo.hidden))
}

/// Forward through one layer, in place (`xs`: rows of `x` become rows of `z`), adding `Σ σ` to
/// `log_det`; with `keep`, stores each row's `σ` then `μ` (`2·O` numbers per row).
#[inline(always)]
fn layer_forward<const C: usize, const O: usize, const F: bool>(
    params: &[f32],
    geo: Geometry,
    xs: &mut [f32],
    log_det: &mut [f32],
    keep: Option<&mut [f32]>,
) {
    layer_pass::<C, O, F, false>(params, geo, xs, log_det, keep)
}

/// Inverse through one layer, in place (rows of `z` become rows of `x`); with `keep`, stores
/// each row's `σ` then `μ`.
#[inline(always)]
fn layer_inverse<const C: usize, const O: usize, const F: bool>(
    params: &[f32],
    geo: Geometry,
    zs: &mut [f32],
    keep: Option<&mut [f32]>,
) {
    layer_pass::<C, O, F, true>(params, geo, zs, &mut [], keep)
}

/// The forward (`INVERSE = false`, adding `Σ σ` to `log_det`) or inverse pass of one layer over
/// all rows of `data`, in place, in groups of `ROWS` rows and then single rows.
#[inline(always)]
fn layer_pass<const C: usize, const O: usize, const F: bool, const INVERSE: bool>(
    params: &[f32],
    geo: Geometry,
    data: &mut [f32],
    log_det: &mut [f32],
    mut keep: Option<&mut [f32]>,
) {
    let (sig, mu) = layer_nets::<C, O>(params, geo);
    let n = data.len() / geo.d;
    let mut i = 0;
    while i < n {
        if i + ROWS <= n {
            pass_rows::<ROWS, C, O, F, INVERSE>(&sig, &mu, geo, data, log_det, keep.as_deref_mut(), i);
            i += ROWS;
        } else {
            pass_rows::<1, C, O, F, INVERSE>(&sig, &mu, geo, data, log_det, keep.as_deref_mut(), i);
            i += 1;
        }
    }
}

#[inline(always)]
fn pass_rows<const R: usize, const C: usize, const O: usize, const F: bool, const INVERSE: bool>(
    sig: &Blocks<'_, C, O>,
    mu: &Blocks<'_, C, O>,
    geo: Geometry,
    data: &mut [f32],
    log_det: &mut [f32],
    keep: Option<&mut [f32]>,
    i: usize,
) {
    let x1 = gather::<R, C>(data, geo, i);
    let s = net_forward::<R, C, O, F>(sig, &x1);
    let m = net_forward::<R, C, O, F>(mu, &x1);
    for r in 0..R {
        let row = (i + r) * geo.d + geo.tc;
        if INVERSE {
            for o in 0..O {
                data[row + o] = (data[row + o] - m[r][o]) * (-s[r][o]).exp();
            }
        } else {
            let mut sum = 0.0;
            for o in 0..O {
                data[row + o] = data[row + o] * s[r][o].exp() + m[r][o];
                sum += s[r][o];
            }
            log_det[i + r] += sum;
        }
    }
    if let Some(keep) = keep {
        for r in 0..R {
            let at = (i + r) * 2 * O;
            keep[at..at + O].copy_from_slice(&s[r]);
            keep[at + O..at + 2 * O].copy_from_slice(&m[r]);
        }
    }
}

/// Backward through one layer: `input` holds the layer's input rows, `sm` each row's `σ` and
/// `μ`, and `grad` ∂loss/∂output on entry and ∂loss/∂input on return. `dlogdet` is
/// ∂loss/∂(Σ σ) of every row. Adds the parameter gradients to `grads`.
#[inline(always)]
fn layer_backward<const C: usize, const O: usize, const F: bool>(
    params: &[f32],
    grads: &mut [f32],
    geo: Geometry,
    input: &[f32],
    sm: &[f32],
    grad: &mut [f32],
    dlogdet: f32,
) {
    let (sig, mu) = layer_nets::<C, O>(params, geo);
    let (gs, gm) = grads.split_at_mut(net_len(C, O, geo.hp));
    let mut gsig = BlocksMut::<C, O>::new(split_net_mut(gs, C, O, geo.hp));
    let mut gmu = BlocksMut::<C, O>::new(split_net_mut(gm, C, O, geo.hp));
    let n = input.len() / geo.d;
    let mut i = 0;
    while i < n {
        if i + ROWS <= n {
            backward_rows::<ROWS, C, O, F>(&sig, &mu, &mut gsig, &mut gmu, geo, input, sm, grad, dlogdet, i);
            i += ROWS;
        } else {
            backward_rows::<1, C, O, F>(&sig, &mu, &mut gsig, &mut gmu, geo, input, sm, grad, dlogdet, i);
            i += 1;
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_rows<const R: usize, const C: usize, const O: usize, const F: bool>(
    sig: &Blocks<'_, C, O>,
    mu: &Blocks<'_, C, O>,
    gsig: &mut BlocksMut<'_, C, O>,
    gmu: &mut BlocksMut<'_, C, O>,
    geo: Geometry,
    input: &[f32],
    sm: &[f32],
    grad: &mut [f32],
    dlogdet: f32,
    i: usize,
) {
    let x1 = gather::<R, C>(input, geo, i);
    let mut gs = [[0.0f32; O]; R];
    let mut gm = [[0.0f32; O]; R];
    for r in 0..R {
        let row = (i + r) * geo.d + geo.tc;
        for o in 0..O {
            let s = sm[(i + r) * 2 * O + o];
            let e = s.exp();
            let g = grad[row + o];
            // z₂ = x₂·e^σ + μ and loss ∋ dlogdet·σ
            gs[r][o] = g * input[row + o] * e + dlogdet;
            gm[r][o] = g;
            grad[row + o] = g * e;
        }
    }
    let ds = net_backward::<R, C, O, F>(sig, gsig, &x1, &gs);
    let dm = net_backward::<R, C, O, F>(mu, gmu, &x1, &gm);
    for r in 0..R {
        let row = (i + r) * geo.d + geo.cc;
        for c in 0..C {
            grad[row + c] += ds[r][c] + dm[r][c];
        }
    }
}

/// Calls `f::<C, O>(args)` for the run-time widths `(c, o)`.
macro_rules! dispatch {
    ($c:expr, $o:expr, $f:ident, ($($arg:expr),*)) => {
        match ($c, $o) {
            (1, 1) => $f::<1, 1>($($arg),*),
            (1, 2) => $f::<1, 2>($($arg),*),
            (1, 3) => $f::<1, 3>($($arg),*),
            (1, 4) => $f::<1, 4>($($arg),*),
            (2, 1) => $f::<2, 1>($($arg),*),
            (2, 2) => $f::<2, 2>($($arg),*),
            (2, 3) => $f::<2, 3>($($arg),*),
            (2, 4) => $f::<2, 4>($($arg),*),
            (3, 1) => $f::<3, 1>($($arg),*),
            (3, 2) => $f::<3, 2>($($arg),*),
            (3, 3) => $f::<3, 3>($($arg),*),
            (3, 4) => $f::<3, 4>($($arg),*),
            (4, 1) => $f::<4, 1>($($arg),*),
            (4, 2) => $f::<4, 2>($($arg),*),
            (4, 3) => $f::<4, 3>($($arg),*),
            (4, 4) => $f::<4, 4>($($arg),*),
            // invariant: Packing::new admits only widths 1..=MAX_WIDTH, all listed above
            _ => unreachable!("Packing::new admits widths up to MAX_WIDTH"),
        }
    };
}

/// The per-width entry points, compiled once for the baseline and once for AVX2 + FMA.
macro_rules! entry_points {
    ($($name:ident, $impl:ident, ($($arg:ident: $ty:ty),*));* $(;)?) => {
        $(
            mod $name {
                use super::*;
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                fn base<const C: usize, const O: usize>($($arg: $ty),*) {
                    $impl::<C, O, false>($($arg),*)
                }
                #[cfg(target_arch = "x86_64")]
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                #[target_feature(enable = "avx2,fma")]
                fn avx2<const C: usize, const O: usize>($($arg: $ty),*) {
                    $impl::<C, O, true>($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                pub(super) fn run(use_avx2: bool, c: usize, o: usize, $($arg: $ty),*) {
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
    fwd, layer_forward, (params: &[f32], geo: Geometry, xs: &mut [f32], log_det: &mut [f32], keep: Option<&mut [f32]>);
    inv, layer_inverse, (params: &[f32], geo: Geometry, zs: &mut [f32], keep: Option<&mut [f32]>);
    bwd, layer_backward, (params: &[f32], grads: &mut [f32], geo: Geometry, input: &[f32], sm: &[f32], grad: &mut [f32], dlogdet: f32);
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

impl Packing {
    fn check_lengths(&self, params: &[f32], data: usize) {
        assert_eq!(
            params.len(),
            self.len,
            "kernel: parameter buffer of {} numbers, expected {}",
            params.len(),
            self.len
        );
        assert_eq!(data % self.d, 0, "kernel: {data} numbers are not rows of d = {}", self.d);
    }

    fn geometry(&self, layer: usize) -> Geometry {
        let (cc, tc) = self.columns(layer);
        Geometry { d: self.d, cc, tc, hp: self.hp, hidden: self.hidden }
    }

    /// `x → z` in place for rows of `xs` (`n × d`), adding each row's `Σ log|det|` to `log_det`.
    ///
    /// Panics if `params` is not a buffer of this packing or the lengths disagree.
    pub fn forward(&self, params: &[f32], xs: &mut [f32], log_det: &mut [f32]) {
        self.check_lengths(params, xs.len());
        assert_eq!(
            xs.len(),
            log_det.len() * self.d,
            "kernel: {} rows but {} log-dets",
            xs.len() / self.d,
            log_det.len()
        );
        for l in 0..self.layers() {
            let (c, o) = self.widths(l);
            fwd::run(self.avx2, c, o, &params[self.layer_range(l)], self.geometry(l), xs, log_det, None);
        }
    }

    /// `z → x` in place for rows of `zs`.
    ///
    /// Panics if `params` is not a buffer of this packing or `zs` is not whole rows.
    pub fn inverse(&self, params: &[f32], zs: &mut [f32]) {
        self.check_lengths(params, zs.len());
        for l in (0..self.layers()).rev() {
            let (c, o) = self.widths(l);
            inv::run(self.avx2, c, o, &params[self.layer_range(l)], self.geometry(l), zs, None);
        }
    }

    /// The summed loss `Σ_rows −log p(x)` of the rows `xs`, and `scale ×` its gradient added to
    /// `grads`. `scratch` is reused between calls. With `reversible`, each layer's input is
    /// recomputed from its output with the inverse instead of being kept.
    pub fn loss_grad(
        &self,
        params: &[f32],
        grads: &mut [f32],
        xs: &[f32],
        scale: f32,
        reversible: bool,
        scratch: &mut Scratch,
    ) -> f64 {
        self.check_lengths(params, xs.len());
        assert_eq!(
            grads.len(),
            self.len,
            "kernel: gradient buffer of {} numbers, expected {}",
            grads.len(),
            self.len
        );
        let d = self.d;
        let n = xs.len() / d;
        let layers = self.layers();
        let o_max = self.k.max(d - self.k);
        let kept = if reversible { 1 } else { layers };
        scratch.inputs.resize(if reversible { 0 } else { layers * n * d }, 0.0);
        scratch.sm.resize(kept * n * 2 * o_max, 0.0);
        scratch.z.clear();
        scratch.z.extend_from_slice(xs);
        scratch.log_det.clear();
        scratch.log_det.resize(n, 0.0);
        for l in 0..layers {
            let (c, o) = self.widths(l);
            let slot = if reversible { 0 } else { l };
            let keep = &mut scratch.sm[slot * n * 2 * o_max..][..n * 2 * o];
            if !reversible {
                scratch.inputs[l * n * d..(l + 1) * n * d].copy_from_slice(&scratch.z);
            }
            let geo = self.geometry(l);
            let p = &params[self.layer_range(l)];
            let keep = if reversible { None } else { Some(keep) };
            fwd::run(self.avx2, c, o, p, geo, &mut scratch.z, &mut scratch.log_det, keep);
        }
        let mut loss = 0.0f64;
        for (row, ld) in scratch.z.chunks_exact(d).zip(&scratch.log_det) {
            loss -= crate::base::log_prob_row(row) + *ld as f64;
        }
        if !loss.is_finite() {
            return loss;
        }
        // ∂(scale·loss)/∂z = scale·z; ∂/∂(Σ σ) = −scale
        scratch.grad.clear();
        scratch.grad.extend(scratch.z.iter().map(|v| v * scale));
        for l in (0..layers).rev() {
            let (c, o) = self.widths(l);
            let geo = self.geometry(l);
            let range = self.layer_range(l);
            let (p, g) = (&params[range.clone()], &mut grads[range]);
            if reversible {
                // the input is recomputed from the output; σ and μ come with it
                let keep = &mut scratch.sm[..n * 2 * o];
                inv::run(self.avx2, c, o, p, geo, &mut scratch.z, Some(keep));
                let sm = &scratch.sm[..n * 2 * o];
                bwd::run(self.avx2, c, o, p, g, geo, &scratch.z, sm, &mut scratch.grad, -scale);
            } else {
                let input = &scratch.inputs[l * n * d..(l + 1) * n * d];
                let sm = &scratch.sm[l * n * 2 * o_max..][..n * 2 * o];
                bwd::run(self.avx2, c, o, p, g, geo, input, sm, &mut scratch.grad, -scale);
            }
        }
        loss
    }
}

/// Buffers a training step reuses.
#[derive(Debug, Default)]
pub struct Scratch {
    inputs: Vec<f32>,
    sm: Vec<f32>,
    z: Vec<f32>,
    log_det: Vec<f32>,
    grad: Vec<f32>,
}

const PARTS: [Part; 4] = [Part::W1, Part::B1, Part::W2, Part::B2];
const PART_NAMES: [&str; 4] = ["0.weight", "0.bias", "2.weight", "2.bias"];

/// A tensor's values as float32, in row-major order.
pub(crate) fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(&t.detach().to_kind(Kind::Float).contiguous().view([-1]))?)
}

/// Whether the fused kernels can run `flow` (CPU, float32, both widths ≤ [`MAX_WIDTH`]); its
/// packing if so.
pub fn packing_for(flow: &StackedNvp) -> Option<Packing> {
    if flow.device() != Device::Cpu || flow.kind() != Kind::Float {
        return None;
    }
    Packing::new(flow.config())
}

impl Packing {
    /// The flow's weights, packed.
    pub fn pack(&self, flow: &StackedNvp) -> Result<Vec<f32>> {
        let mut buf = vec![0.0f32; self.len];
        for (l, (layer, _)) in flow.couplings().enumerate() {
            for (net, ws) in layer.weights().iter().enumerate() {
                for (&part, t) in PARTS.iter().zip(ws) {
                    let v = flat(t)?;
                    self.for_each(l, net == 1, part, |i, j| buf[j] = v[i]);
                }
            }
        }
        Ok(buf)
    }

    /// The dense tensor of `N.part` of `layer` from a packed buffer.
    fn unpack_one(&self, buf: &[f32], layer: usize, mu: bool, part: Part) -> Tensor {
        let shape = self.shape(layer, part);
        let mut v = vec![0.0f32; shape.iter().product::<i64>() as usize];
        self.for_each(layer, mu, part, |i, j| v[i] = buf[j]);
        Tensor::from_slice(&v).view(&shape[..])
    }

    /// Copies packed weights into the flow's variables.
    pub fn unpack(&self, buf: &[f32], flow: &StackedNvp) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (l, (layer, _)) in flow.couplings().enumerate() {
                for (net, ws) in layer.weights().iter().enumerate() {
                    for (&part, t) in PARTS.iter().zip(ws) {
                        t.shallow_clone().f_copy_(&self.unpack_one(buf, l, net == 1, part))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// A packed buffer (gradients, optimizer moments) as tensors named like the flow's variables.
    pub fn named(&self, buf: &[f32], layout: Layout) -> BTreeMap<String, Tensor> {
        self.variables(layout)
            .into_iter()
            .map(|(name, l, mu, part)| (name, self.unpack_one(buf, l, mu, part)))
            .collect()
    }

    /// The inverse of [`Packing::named`]: every name must be present with the right shape.
    pub fn from_named(&self, named: &BTreeMap<String, Tensor>, layout: Layout) -> Result<Vec<f32>> {
        let mut buf = vec![0.0f32; self.len];
        for (name, l, mu, part) in self.variables(layout) {
            let t = named.get(&name).ok_or_else(|| Error::Data(format!("no tensor '{name}'")))?;
            let shape = self.shape(l, part);
            if t.size() != shape {
                return Err(Error::Shape { what: name, expected: format!("{shape:?}"), found: t.size() });
            }
            let v = flat(t)?;
            self.for_each(l, mu, part, |i, j| buf[j] = v[i]);
        }
        Ok(buf)
    }

    /// Every variable of the flow: its state_dict name, layer, whether it is `mu_net`'s, and part.
    fn variables(&self, layout: Layout) -> Vec<(String, usize, bool, Part)> {
        let mut out = Vec::with_capacity(self.layers() * 8);
        for l in 0..self.layers() {
            for (net, net_name) in ["sig_net", "mu_net"].iter().enumerate() {
                for (&part, part_name) in PARTS.iter().zip(PART_NAMES) {
                    let name = match layout {
                        Layout::Stacked => format!("bijectors.{l}.{net_name}.{part_name}"),
                        Layout::Single => format!("{net_name}.{part_name}"),
                    };
                    out.push((name, l, net == 1, part));
                }
            }
        }
        out
    }

    /// Row blocks for `threads` workers: at most `threads` ranges of whole `ROWS` groups, none
    /// smaller than `min_rows` (so small inputs stay on one thread).
    fn row_blocks(n: usize, threads: usize, min_rows: usize) -> Vec<Range<usize>> {
        let workers = threads.clamp(1, (n / min_rows.max(1)).max(1));
        let per = n.div_ceil(workers).div_ceil(ROWS) * ROWS;
        (0..n).step_by(per.max(1)).map(|s| s..(s + per).min(n)).collect()
    }

    /// [`Packing::forward`] on `threads` threads (same panics).
    pub fn forward_par(&self, params: &[f32], xs: &mut [f32], log_det: &mut [f32], threads: usize) {
        self.check_lengths(params, xs.len());
        assert_eq!(
            xs.len(),
            log_det.len() * self.d,
            "kernel: {} rows but {} log-dets",
            xs.len() / self.d,
            log_det.len()
        );
        let d = self.d;
        let blocks = Self::row_blocks(log_det.len(), threads, 1024);
        if blocks.len() <= 1 {
            return self.forward(params, xs, log_det);
        }
        let per = blocks[0].len();
        std::thread::scope(|s| {
            for (x, ld) in xs.chunks_mut(per * d).zip(log_det.chunks_mut(per)) {
                s.spawn(move || self.forward(params, x, ld));
            }
        });
    }

    /// [`Packing::inverse`] on `threads` threads (same panics).
    pub fn inverse_par(&self, params: &[f32], zs: &mut [f32], threads: usize) {
        self.check_lengths(params, zs.len());
        let d = self.d;
        let blocks = Self::row_blocks(zs.len() / d, threads, 1024);
        if blocks.len() <= 1 {
            return self.inverse(params, zs);
        }
        let per = blocks[0].len();
        std::thread::scope(|s| {
            for z in zs.chunks_mut(per * d) {
                s.spawn(move || self.inverse(params, z));
            }
        });
    }

    /// The mean loss `−mean(log p(x))` of the rows `xs` with its gradient written to `grads`
    /// (overwritten), on up to `threads` threads (`scratch` grows to one buffer set per thread).
    pub fn mean_loss_grad(
        &self,
        params: &[f32],
        grads: &mut [f32],
        xs: &[f32],
        reversible: bool,
        threads: usize,
        scratch: &mut Vec<(Scratch, Vec<f32>)>,
    ) -> f64 {
        self.check_lengths(params, xs.len());
        assert_eq!(
            grads.len(),
            self.len,
            "kernel: gradient buffer of {} numbers, expected {}",
            grads.len(),
            self.len
        );
        let d = self.d;
        let n = xs.len() / d;
        let scale = 1.0 / n.max(1) as f32;
        let blocks = Self::row_blocks(n, threads, 128);
        scratch.resize_with(blocks.len().max(1), || (Scratch::default(), vec![]));
        grads.fill(0.0);
        if blocks.len() <= 1 {
            let (s, _) = &mut scratch[0];
            return self.loss_grad(params, grads, xs, scale, reversible, s) / n.max(1) as f64;
        }
        let per = blocks[0].len();
        let losses: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = xs
                .chunks(per * d)
                .zip(scratch.iter_mut())
                .map(|(x, (sc, g))| {
                    s.spawn(move || {
                        g.clear();
                        g.resize(self.len, 0.0);
                        self.loss_grad(params, g, x, scale, reversible, sc)
                    })
                })
                .collect();
            // invariant: the lengths are checked before the threads start; a kernel thread has no
            // other way to panic, and if it did, re-raising its panic here is the right outcome
            handles.into_iter().map(|h| h.join().expect("kernel threads do not panic")).collect()
        });
        for (_, g) in scratch.iter() {
            for (a, b) in grads.iter_mut().zip(g) {
                *a += b;
            }
        }
        losses.iter().sum::<f64>() / n.max(1) as f64
    }
}
