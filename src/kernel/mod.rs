//! Fused CPU kernels for the coupling layers (float32, networks of up to 64 inputs and outputs).
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
//! elsewhere the same code runs with the baseline instruction set. Where the CPU also has AVX-512
//! F and VL, the wide kernels run the same AVX2 operations compiled with AVX-512's 32 vector
//! registers, in larger register tiles (the same operations on each number in the same order, so
//! the same bits).
//! `RNVP_KERNELS=baseline` in the environment forces the baseline build on any CPU (the AVX2 build
//! fuses multiply-adds, so the two round differently; CI runs the suite both ways), and
//! `RNVP_KERNELS=avx2` stops at AVX2.
//!
//! Networks with more than [`MAX_WIDTH`] inputs or outputs run on the wide kernels: the
//! same sweep over hidden blocks for eight rows at a time, with the rows' hidden units parked in
//! an L1-sized buffer and each output a dot product with a row of `W₂`. With fused multiply-adds
//! they are written with explicit AVX2 vectors and tiled so that each product's accumulators stay
//! in registers (`tiled`; the same numbers as the generic code in `wide`, which the baseline build
//! runs).
//!
//! Files: this one is the slice API ([`Packing`]: layout, passes over rows, threads); `coupling`
//! a coupling's passes over rows; `net` the packed network; `narrow`, `wide` and `tiled` a
//! network's passes for a group of rows; `simd` the CPU and width dispatch and the AVX2 vector
//! type (the kernels' only `unsafe`); `params` the packing of a stack's layers into the flat
//! buffer and back; `linear` the per-row linear layers (ActNorm, diagonal scaling, permutations,
//! LU). The kernels run every layer but batch norm.
mod coupling;
mod linear;
mod narrow;
mod net;
mod params;
mod simd;
#[cfg(target_arch = "x86_64")]
mod tiled;
mod wide;

pub use simd::{has_avx2_fma, Isa};

use crate::config::{Coupling, FlowConfig, LayerKind, Scale};
use crate::error::Result;
use coupling::{Geometry, ROWS};
use net::{net_len, LANES};
use simd::{bwd, fwd, inv};
use std::ops::Range;
use tch::{Kind, Tensor};

/// Largest `c` and `o` with a narrow kernel (widths fixed at compile time, everything in
/// registers); wider networks run on the wide kernels.
pub const MAX_WIDTH: usize = 4;
/// Most network inputs (`k + m`, `d − k + m`) the kernels take.
pub const MAX_INPUTS: usize = wide::MAX_IN;
/// Most network outputs (`k`, `d − k`) the kernels give.
pub const MAX_OUTPUTS: usize = wide::MAX_OUT;
/// Rows of a pass from which the tiled kernels read their weights from panels (fewer read them in
/// place; the same numbers either way).
pub const PANEL_ROWS: usize = coupling::PANEL_ROWS;
/// Largest `(inputs + outputs) × hidden` of a wide network that `Engine::Auto` runs on the kernels
/// ([`Packing::faster_than_libtorch`]).
pub const WIDE_AUTO_LIMIT: usize = 24 * 1024;
/// [`WIDE_AUTO_LIMIT`] of the baseline build (CPUs without AVX2 and FMA: no register tiles; not
/// measured beyond the AVX2 build's former limit).
pub const WIDE_AUTO_LIMIT_BASELINE: usize = 12 * 1024;

/// Where each layer's packed parameters lie in the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Packing {
    cfg: FlowConfig,
    d: usize,
    k: usize,
    /// Context columns (the networks' last inputs).
    m: usize,
    hidden: usize,
    hp: usize,
    ops: Vec<Op>,
    len: usize,
    /// The widest build the kernels may run (never above [`Isa::detected`]).
    isa: Isa,
}

/// One layer of the packed stack.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    /// A coupling: `sig_net` (affine only) then `mu_net`, packed as below, then the scale map's
    /// variable (`tanh`: `scale_factor`; `softclamp`, `sigmoid`: their constant).
    Coupling { flip: bool, affine: bool, offset: usize, len: usize },
    /// A per-row linear layer ([`linear`]): its keys' tensors flattened in order.
    Linear { kind: LayerKind, offset: usize, len: usize },
}

impl Op {
    fn range(&self) -> Range<usize> {
        match *self {
            Op::Coupling { offset, len, .. } | Op::Linear { offset, len, .. } => offset..offset + len,
        }
    }
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
    /// The packing of a stack, or `None` when the kernels do not run it: couplings whose
    /// networks take more than [`MAX_INPUTS`] columns (`k + m`, `d − k + m` with a context of
    /// `m`) or give more than [`MAX_OUTPUTS`], or a batch-norm layer (its statistics span the
    /// whole batch).
    pub fn new(cfg: &FlowConfig) -> Option<Packing> {
        let (d, k, hidden) = (cfg.d as usize, cfg.k as usize, cfg.hidden as usize);
        let m = usize::try_from(cfg.context).ok()?;
        if cfg.image.is_some()
            || cfg.arch.batch_norm
            || k == 0
            || k >= d
            || k + m > MAX_INPUTS
            || d - k + m > MAX_INPUTS
            || k > MAX_OUTPUTS
            || d - k > MAX_OUTPUTS
            || hidden == 0
        {
            return None;
        }
        let hp = hidden.div_ceil(LANES) * LANES;
        let mut ops = Vec::new();
        let mut offset = 0;
        for j in 0..cfg.layer_count() {
            let op = match cfg.layer(j)? {
                LayerKind::Affine { flip } | LayerKind::Additive { flip } => {
                    let (c, o) = if flip { (d - k + m, k) } else { (k + m, d - k) };
                    let affine = cfg.arch.coupling == Coupling::Affine;
                    let extra = match cfg.arch.scale {
                        _ if !affine => 0,
                        Scale::Exp => 0,
                        Scale::SoftClamp | Scale::Sigmoid => 1,
                        Scale::Tanh => o,
                    };
                    let len = if affine { 2 } else { 1 } * net_len(c, o, hp) + extra;
                    Op::Coupling { flip, affine, offset, len }
                }
                LayerKind::BatchNorm => return None,
                kind => Op::Linear { kind, offset, len: linear::len(kind, d) },
            };
            offset += op.range().len();
            ops.push(op);
        }
        Some(Packing { cfg: *cfg, d, k, m, hidden, hp, ops, len: offset, isa: Isa::detected() })
    }

    /// Whether the kernels beat libtorch's engine on this stack, as measured in `scripts/bench
    /// --only widths`: always with narrow networks; with wide ones while each network's
    /// multiply-adds per row, `(inputs + outputs) × hidden`, stay at most [`WIDE_AUTO_LIMIT`]
    /// ([`WIDE_AUTO_LIMIT_BASELINE`] in the baseline build). At hidden 512, one thread, a training
    /// step ran fused / libtorch engine in earlier runs, before the weight panels:
    /// - 40 inputs, 8 outputs (24,576): 10.5 / 14.0 ms on an AVX-512 Xeon, 16.7 / 23.7 on an AVX2
    ///   EPYC;
    /// - d = 32, 16 inputs and outputs (16,384): 1.2–1.35× faster fused on the Xeon in three runs,
    ///   12.7 / 18.1 ms on the EPYC (an AVX2-capped build on the Xeon: about even);
    /// - d = 64 (32,768): 22.8 / 17.3 ms on the Xeon, 23.7 / 24.3 on the EPYC — left to libtorch,
    ///   which the Xeon runs faster.
    ///
    /// With the panels, on the EPYC (docs/BENCHMARKS-conditional.md): 11.6 / 21.5 ms, 11.1 / 17.3
    /// and 18.9 / 23.8; not re-measured on the Xeon.
    pub fn faster_than_libtorch(&self) -> bool {
        (0..self.layers()).all(|l| match self.ops[l] {
            Op::Coupling { .. } => {
                let (c, o) = self.widths(l);
                let limit =
                    if self.isa == Isa::Baseline { WIDE_AUTO_LIMIT_BASELINE } else { WIDE_AUTO_LIMIT };
                (c <= MAX_WIDTH && o <= MAX_WIDTH) || (c + o) * self.hidden <= limit
            }
            Op::Linear { .. } => true,
        })
    }

    /// The same packing with the kernels built for the baseline instruction set even where the CPU
    /// has AVX2 (for tests and comparisons).
    pub fn baseline(self) -> Self {
        self.capped(Isa::Baseline)
    }

    /// The same packing running at most the build `isa` (for tests and comparisons).
    pub fn capped(mut self, isa: Isa) -> Self {
        self.isa = self.isa.min(isa);
        self
    }

    /// Which build of the kernels runs: "AVX-512" (the wide kernels; narrow networks run the AVX2
    /// build), "AVX2+FMA" or "baseline".
    pub fn instruction_set(&self) -> &'static str {
        self.isa.name()
    }

    /// Numbers in the flat buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never: a flow has a layer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layers of the stack.
    pub fn layers(&self) -> usize {
        self.ops.len()
    }

    /// Data dimension.
    pub fn d(&self) -> usize {
        self.d
    }

    /// The coupling `layer`'s flip, whether it is affine, and where its parameters start;
    /// panics for another layer (an invariant of the callers).
    fn coupling(&self, layer: usize) -> (bool, bool, usize) {
        match self.ops[layer] {
            Op::Coupling { flip, affine, offset, .. } => (flip, affine, offset),
            // invariant: the passes call this for coupling ops only; `for_each`/`shape` document the panic
            Op::Linear { .. } => panic!("kernel: layer {layer} is not a coupling"),
        }
    }

    /// The coupling `layer`'s network widths: inputs (conditioning columns and context) and
    /// outputs.
    fn widths(&self, layer: usize) -> (usize, usize) {
        if self.coupling(layer).0 {
            (self.d - self.k + self.m, self.k)
        } else {
            (self.k + self.m, self.d - self.k)
        }
    }

    /// Context columns.
    pub fn context(&self) -> usize {
        self.m
    }

    /// Maps a dense tensor of the flow to positions in the flat buffer: calls `f(dense_index,
    /// packed_index)` for every element of `N.part` (`mu` selects `mu_net`) of the coupling
    /// `layer`, with dense indices in row-major order of the tensor's shape.
    ///
    /// Panics if `layer` is not a coupling, or `mu` is false for an additive one.
    pub fn for_each(&self, layer: usize, mu: bool, part: Part, mut f: impl FnMut(usize, usize)) {
        let (_, affine, offset) = self.coupling(layer);
        assert!(mu || affine, "kernel: an additive coupling has no sig_net");
        let (c, o) = self.widths(layer);
        let hp = self.hp;
        let base = offset + if mu && affine { net_len(c, o, hp) } else { 0 };
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

    /// The shape of `N.part` of the coupling `layer`.
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

    /// Panics unless `log_det` has one number per row of `data` numbers (a caller's bug).
    fn check_log_dets(&self, data: usize, log_det: &[f32]) {
        assert_eq!(
            data,
            log_det.len() * self.d,
            "kernel: {} rows but {} log-dets",
            data / self.d,
            log_det.len()
        );
    }

    /// Panics unless `grads` has one number per parameter (a caller's bug, not bad data).
    fn check_grads(&self, grads: &[f32]) {
        assert_eq!(
            grads.len(),
            self.len,
            "kernel: gradient buffer of {} numbers, expected {}",
            grads.len(),
            self.len
        );
    }

    /// Panics unless `ctx` has `m` numbers per row of `data` numbers (a caller's bug).
    fn check_context(&self, data: usize, ctx: &[f32]) {
        let rows = data / self.d;
        assert_eq!(
            ctx.len(),
            rows * self.m,
            "kernel: context of {} numbers for {rows} rows of m = {}",
            ctx.len(),
            self.m
        );
    }

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
        let (flip, affine, _) = self.coupling(layer);
        let (cc, tc) = if flip { (self.k, 0) } else { (0, self.k) };
        let cond = if flip { self.d - self.k } else { self.k };
        let scale = self.cfg.arch.scale;
        let input_grad = layer > 0;
        Geometry {
            d: self.d,
            cc,
            tc,
            hp: self.hp,
            hidden: self.hidden,
            affine,
            scale,
            cond,
            m: self.m,
            input_grad,
        }
    }

    /// `x → z` in place for rows of `xs` (`n × d`), adding each row's `Σ log|det|` to `log_det`.
    ///
    /// Panics if `params` is not a buffer of this packing or the lengths disagree.
    pub fn forward(&self, params: &[f32], xs: &mut [f32], log_det: &mut [f32]) {
        self.forward_given(params, xs, &[], log_det)
    }

    /// [`Packing::forward`] of a conditional flow, with each row's context in `ctx` (`n × m`).
    pub fn forward_given(&self, params: &[f32], xs: &mut [f32], ctx: &[f32], log_det: &mut [f32]) {
        self.check_lengths(params, xs.len());
        self.check_log_dets(xs.len(), log_det);
        self.check_context(xs.len(), ctx);
        for (l, op) in self.ops.iter().enumerate() {
            let p = &params[op.range()];
            match *op {
                Op::Coupling { .. } => {
                    let (c, o) = self.widths(l);
                    fwd::run(self.isa, c, o, p, self.geometry(l), xs, ctx, log_det, None);
                }
                Op::Linear { kind, .. } => linear::forward(kind, p, self.d, xs, log_det),
            }
        }
    }

    /// `z → x` in place for rows of `zs`.
    ///
    /// Panics if `params` is not a buffer of this packing or `zs` is not whole rows.
    pub fn inverse(&self, params: &[f32], zs: &mut [f32]) {
        self.inverse_given(params, zs, &[])
    }

    /// [`Packing::inverse`] of a conditional flow, with each row's context in `ctx` (`n × m`).
    pub fn inverse_given(&self, params: &[f32], zs: &mut [f32], ctx: &[f32]) {
        self.check_lengths(params, zs.len());
        self.check_context(zs.len(), ctx);
        for (l, op) in self.ops.iter().enumerate().rev() {
            let p = &params[op.range()];
            match *op {
                Op::Coupling { .. } => {
                    let (c, o) = self.widths(l);
                    inv::run(self.isa, c, o, p, self.geometry(l), zs, ctx, None);
                }
                Op::Linear { kind, .. } => linear::inverse(kind, p, self.d, zs),
            }
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
        self.loss_grad_given(params, grads, (xs, &[]), scale, reversible, scratch)
    }

    /// [`Packing::loss_grad`] of a conditional flow: `(xs, ctx)` are the rows and their context
    /// (`n × m`).
    pub fn loss_grad_given(
        &self,
        params: &[f32],
        grads: &mut [f32],
        (xs, ctx): (&[f32], &[f32]),
        scale: f32,
        reversible: bool,
        scratch: &mut Scratch,
    ) -> f64 {
        self.check_lengths(params, xs.len());
        self.check_grads(grads);
        self.check_context(xs.len(), ctx);
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
        for (l, op) in self.ops.iter().enumerate() {
            if !reversible {
                scratch.inputs[l * n * d..(l + 1) * n * d].copy_from_slice(&scratch.z);
            }
            let p = &params[op.range()];
            match *op {
                Op::Coupling { .. } => {
                    let (c, o) = self.widths(l);
                    let slot = if reversible { 0 } else { l };
                    let keep = &mut scratch.sm[slot * n * 2 * o_max..][..n * 2 * o];
                    let keep = if reversible { None } else { Some(keep) };
                    fwd::run(
                        self.isa,
                        c,
                        o,
                        p,
                        self.geometry(l),
                        &mut scratch.z,
                        ctx,
                        &mut scratch.log_det,
                        keep,
                    );
                }
                Op::Linear { kind, .. } => linear::forward(kind, p, d, &mut scratch.z, &mut scratch.log_det),
            }
        }
        let mut loss = 0.0f64;
        for (row, ld) in scratch.z.chunks_exact(d).zip(&scratch.log_det) {
            loss -= crate::base::log_prob_row(row) + *ld as f64;
        }
        if !loss.is_finite() {
            return loss;
        }
        // ∂(scale·loss)/∂z = scale·z; ∂/∂(Σ log|det|) = −scale
        scratch.grad.clear();
        scratch.grad.extend(scratch.z.iter().map(|v| v * scale));
        for (l, op) in self.ops.iter().enumerate().rev() {
            let range = op.range();
            let (p, g) = (&params[range.clone()], &mut grads[range]);
            match *op {
                Op::Coupling { .. } => {
                    let (c, o) = self.widths(l);
                    let geo = self.geometry(l);
                    if reversible {
                        // the input is recomputed from the output; σ and μ come with it
                        let keep = &mut scratch.sm[..n * 2 * o];
                        inv::run(self.isa, c, o, p, geo, &mut scratch.z, ctx, Some(keep));
                        let sm = &scratch.sm[..n * 2 * o];
                        bwd::run(self.isa, c, o, p, g, geo, &scratch.z, ctx, sm, &mut scratch.grad, -scale);
                    } else {
                        let input = &scratch.inputs[l * n * d..(l + 1) * n * d];
                        let sm = &scratch.sm[l * n * 2 * o_max..][..n * 2 * o];
                        bwd::run(self.isa, c, o, p, g, geo, input, ctx, sm, &mut scratch.grad, -scale);
                    }
                }
                Op::Linear { kind, .. } => {
                    if reversible {
                        linear::inverse(kind, p, d, &mut scratch.z);
                        linear::backward(kind, p, g, d, &scratch.z, &mut scratch.grad, -scale);
                    } else {
                        let input = &scratch.inputs[l * n * d..(l + 1) * n * d];
                        linear::backward(kind, p, g, d, input, &mut scratch.grad, -scale);
                    }
                }
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

/// The context of rows `start..start + rows` (`m` numbers per row; empty without a context).
fn context_block(ctx: &[f32], start: usize, rows: usize, m: usize) -> &[f32] {
    &ctx[start * m..(start + rows) * m]
}

/// A tensor's values as float32, in row-major order.
pub(crate) fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(&t.detach().to_kind(Kind::Float).contiguous().view([-1]))?)
}

impl Packing {
    /// Row blocks for `threads` workers: at most `threads` ranges of whole row groups of both the
    /// narrow and the wide kernels, none smaller than `min_rows` (so small inputs stay on one
    /// thread).
    fn row_blocks(n: usize, threads: usize, min_rows: usize) -> Vec<Range<usize>> {
        let workers = threads.clamp(1, (n / min_rows.max(1)).max(1));
        let group = ROWS.max(wide::ROWS);
        let per = n.div_ceil(workers).div_ceil(group) * group;
        (0..n).step_by(per.max(1)).map(|s| s..(s + per).min(n)).collect()
    }

    /// [`Packing::forward`] on `threads` threads (same panics).
    pub fn forward_par(&self, params: &[f32], xs: &mut [f32], log_det: &mut [f32], threads: usize) {
        self.forward_given_par(params, xs, &[], log_det, threads)
    }

    /// [`Packing::forward_given`] on `threads` threads (same panics).
    pub fn forward_given_par(
        &self,
        params: &[f32],
        xs: &mut [f32],
        ctx: &[f32],
        log_det: &mut [f32],
        threads: usize,
    ) {
        self.check_lengths(params, xs.len());
        self.check_log_dets(xs.len(), log_det);
        self.check_context(xs.len(), ctx);
        let (d, m) = (self.d, self.m);
        let blocks = Self::row_blocks(log_det.len(), threads, 1024);
        if blocks.len() <= 1 {
            return self.forward_given(params, xs, ctx, log_det);
        }
        let per = blocks[0].len();
        std::thread::scope(|s| {
            for (i, (x, ld)) in xs.chunks_mut(per * d).zip(log_det.chunks_mut(per)).enumerate() {
                let c = context_block(ctx, i * per, ld.len(), m);
                s.spawn(move || self.forward_given(params, x, c, ld));
            }
        });
    }

    /// [`Packing::inverse`] on `threads` threads (same panics).
    pub fn inverse_par(&self, params: &[f32], zs: &mut [f32], threads: usize) {
        self.inverse_given_par(params, zs, &[], threads)
    }

    /// [`Packing::inverse_given`] on `threads` threads (same panics).
    pub fn inverse_given_par(&self, params: &[f32], zs: &mut [f32], ctx: &[f32], threads: usize) {
        self.check_lengths(params, zs.len());
        self.check_context(zs.len(), ctx);
        let (d, m) = (self.d, self.m);
        let blocks = Self::row_blocks(zs.len() / d, threads, 1024);
        if blocks.len() <= 1 {
            return self.inverse_given(params, zs, ctx);
        }
        let per = blocks[0].len();
        std::thread::scope(|s| {
            for (i, z) in zs.chunks_mut(per * d).enumerate() {
                let c = context_block(ctx, i * per, z.len() / d, m);
                s.spawn(move || self.inverse_given(params, z, c));
            }
        });
    }

    /// The mean loss `−mean(log p(x))` of the rows `xs` with its gradient written to `grads`
    /// (overwritten), on up to `threads` threads (`scratch` grows to one buffer set per thread).
    pub fn mean_loss_grad(
        &self,
        params: &[f32],
        grads: &mut [f32],
        (xs, ctx): (&[f32], &[f32]),
        reversible: bool,
        threads: usize,
        scratch: &mut Vec<(Scratch, Vec<f32>)>,
    ) -> f64 {
        self.check_lengths(params, xs.len());
        self.check_grads(grads);
        self.check_context(xs.len(), ctx);
        let (d, m) = (self.d, self.m);
        let n = xs.len() / d;
        let scale = 1.0 / n.max(1) as f32;
        let blocks = Self::row_blocks(n, threads, 128);
        scratch.resize_with(blocks.len().max(1), || (Scratch::default(), vec![]));
        grads.fill(0.0);
        if blocks.len() <= 1 {
            let (s, _) = &mut scratch[0];
            return self.loss_grad_given(params, grads, (xs, ctx), scale, reversible, s) / n.max(1) as f64;
        }
        let per = blocks[0].len();
        let losses: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = xs
                .chunks(per * d)
                .zip(scratch.iter_mut())
                .enumerate()
                .map(|(i, (x, (sc, g)))| {
                    let c = context_block(ctx, i * per, x.len() / d, m);
                    s.spawn(move || {
                        g.clear();
                        g.resize(self.len, 0.0);
                        self.loss_grad_given(params, g, (x, c), scale, reversible, sc)
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
