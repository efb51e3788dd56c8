//! A coupling layer's forward, inverse and backward passes over rows, on the packed parameters:
//! `z₂ = x₂ ⊙ exp(g(s(x₁, c))) + μ(x₁, c)` (affine) or `z₂ = x₂ + μ(x₁, c)` (additive), with the
//! networks evaluated a group of rows at a time by the narrow kernels (widths known at compile
//! time) or the wide ones (`WIDE`: widths read from the geometry; with fused multiply-adds, whole
//! groups run the tiled AVX2 kernels, in larger tiles where `BIG`, the AVX-512 build).
// The row loops index several arrays in step; written as index loops they read like the formulas.
#![allow(clippy::needless_range_loop)]

use super::net::{net_len, Blocks, BlocksMut, Lane, LANES};
use super::{narrow, wide};
#[cfg(target_arch = "x86_64")]
use super::{simd::Avx2, tiled};
use crate::arch::Scale;

/// Rows the narrow kernels process together: their hidden units share each load of the weights.
pub(super) const ROWS: usize = 4;

/// A layer's geometry for the kernels.
#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub d: usize,
    /// First conditioning column.
    pub cc: usize,
    /// First transformed column.
    pub tc: usize,
    pub hp: usize,
    pub hidden: usize,
    /// Affine (`sig_net`, `mu_net`, the scale map's variable) or additive (`mu_net` only).
    pub affine: bool,
    /// The scale map of an affine coupling.
    pub scale: Scale,
    /// Conditioning columns of the data (the networks' first inputs).
    pub cond: usize,
    /// Context columns (the networks' last inputs; 0 for an unconditional flow).
    pub m: usize,
    /// Whether the backward pass passes ∂loss/∂input on through the conditioning columns (not
    /// for a flow's first layer, which nothing precedes; the wide kernels then skip `W₁ᵀ δ`).
    pub input_grad: bool,
}

impl Geometry {
    /// The networks' inputs: conditioning columns and context.
    pub fn inputs(&self) -> usize {
        self.cond + self.m
    }

    /// The networks' outputs: the transformed columns.
    pub fn outputs(&self) -> usize {
        self.d - self.cond
    }
}

/// Gathers the networks' inputs for rows `i..i + R`: the conditioning columns of `xs`, then the
/// rows' context from `ctx` (`m` numbers per row), then zeros up to `C`.
#[inline(always)]
fn gather<const R: usize, const C: usize>(xs: &[f32], ctx: &[f32], geo: Geometry, i: usize) -> [[f32; C]; R] {
    if geo.m == 0 && geo.cond == C {
        return std::array::from_fn(|r| std::array::from_fn(|c| xs[(i + r) * geo.d + geo.cc + c]));
    }
    let mut x = [[0.0f32; C]; R];
    for r in 0..R {
        let row = (i + r) * geo.d + geo.cc;
        x[r][..geo.cond].copy_from_slice(&xs[row..row + geo.cond]);
        x[r][geo.cond..geo.inputs()].copy_from_slice(&ctx[(i + r) * geo.m..(i + r + 1) * geo.m]);
    }
    x
}

/// A coupling's scale map `log s = g(h)` with its variable: the bound of `softclamp`, the shift
/// of `sigmoid`, the factors `γ` of `tanh`.
struct ScaleMap<const O: usize> {
    scale: Scale,
    c: f32,
    gamma: [f32; O],
}

impl<const O: usize> ScaleMap<O> {
    /// The map of `scale` with its variable read from `extra` (what follows the two networks).
    #[inline(always)]
    fn new(scale: Scale, extra: &[f32]) -> Self {
        let (c, gamma) = match scale {
            Scale::Exp => (0.0, [0.0; O]),
            Scale::SoftClamp | Scale::Sigmoid => (extra[0], [0.0; O]),
            Scale::Tanh => (0.0, std::array::from_fn(|o| extra.get(o).copied().unwrap_or(0.0))),
        };
        ScaleMap { scale, c, gamma }
    }

    /// `g(h)` for output `o`.
    #[inline(always)]
    fn log_s(&self, h: f32, o: usize) -> f32 {
        match self.scale {
            Scale::Exp => h,
            Scale::SoftClamp => h / (h.abs() / self.c + 1.0),
            Scale::Sigmoid => {
                // log σ(t) = min(t, 0) − log(1 + e^{−|t|}), as libtorch computes it
                let t = h + self.c;
                t.min(0.0) - (-t.abs()).exp().ln_1p()
            }
            Scale::Tanh => h.tanh() * self.gamma[o],
        }
    }

    /// `(log s, s, g′(h), tanh h)` for output `o`, with as few transcendental functions as each
    /// map allows (`tanh h` only for `tanh`, whose factor's gradient needs it).
    #[inline(always)]
    fn eval(&self, h: f32, o: usize) -> (f32, f32, f32, f32) {
        match self.scale {
            Scale::Exp => (h, h.exp(), 1.0, 0.0),
            Scale::SoftClamp => {
                let q = h.abs() / self.c + 1.0;
                let log_s = h / q;
                (log_s, log_s.exp(), 1.0 / (q * q), 0.0)
            }
            Scale::Sigmoid => {
                // s = σ(t), log s = min(t, 0) − log(1 + e^{−|t|}), g′ = 1 − σ(t), from one exp
                let t = h + self.c;
                let e = (-t.abs()).exp();
                let (s, rest) = if t >= 0.0 {
                    (1.0 / (1.0 + e), e / (1.0 + e))
                } else {
                    (e / (1.0 + e), 1.0 / (1.0 + e))
                };
                (t.min(0.0) - e.ln_1p(), s, rest, 0.0)
            }
            Scale::Tanh => {
                let t = h.tanh();
                let log_s = t * self.gamma[o];
                (log_s, log_s.exp(), self.gamma[o] * (1.0 - t * t), t)
            }
        }
    }
}

/// A coupling's networks viewed as blocks (`sig_net` only when affine) and its scale map.
type Nets<'a, const C: usize, const O: usize> = (Option<Blocks<'a, C, O>>, Blocks<'a, C, O>, ScaleMap<O>);

/// A layer's `sig_net` and `mu_net` viewed as blocks, and its scale map.
#[inline(always)]
fn layer_nets<const C: usize, const O: usize>(params: &[f32], geo: Geometry) -> Nets<'_, C, O> {
    let (c, o) = (geo.inputs(), geo.outputs());
    let len = net_len(c, o, geo.hp);
    let net = |p| Blocks::new(p, c, o, geo.hidden, geo.hp);
    if !geo.affine {
        return (None, net(params), ScaleMap::new(Scale::Exp, &[]));
    }
    let map = ScaleMap::new(geo.scale, &params[2 * len..]);
    (Some(net(params)), net(&params[len..]), map)
}

/// The outputs of `net` for `R` rows, by the narrow or the wide kernels.
#[inline(always)]
fn outputs<
    const R: usize,
    const C: usize,
    const O: usize,
    const F: bool,
    const WIDE: bool,
    const BIG: bool,
>(
    net: &Blocks<'_, C, O>,
    x: &[[f32; C]; R],
    work: &mut [Lane],
) -> [[f32; O]; R] {
    if WIDE {
        // the fused multiply-add builds run the tiled kernels on whole groups of rows
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = (F && R == wide::ROWS).then(Avx2::detect).flatten() {
            let mut out = [[0.0f32; O]; R];
            if BIG {
                tiled::net_forward::<C, O, 4>(t, net, x, &mut out, work);
            } else {
                tiled::net_forward::<C, O, 2>(t, net, x, &mut out, work);
            }
            return out;
        }
        wide::net_forward::<R, C, O, F>(net, x, work)
    } else {
        narrow::net_forward::<R, C, O, F>(net, x)
    }
}

/// Rows of a pass below which the tiled kernels read the weights' rows in place: packing the
/// panels costs as much as a few groups of rows gain from them.
pub(super) const PANEL_ROWS: usize = 8 * wide::ROWS;

/// The hidden blocks of the tiled kernels' tiles, the panels they read `W₁ᵀ` and `W₂` in
/// ([`Blocks::panels`]), for a pass over `n` rows; 0 for none: where the tiled kernels do not run
/// (narrow networks, the baseline build) and for fewer than [`PANEL_ROWS`] rows.
fn panel_blocks<const F: bool, const WIDE: bool, const BIG: bool>(n: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if WIDE && F && n >= PANEL_ROWS && Avx2::detect().is_some() {
        return if BIG { 4 } else { 2 };
    }
    let _ = n;
    0
}

/// Work space of the wide kernels for one layer (none for the narrow ones): room for the tiled
/// kernels' activations and hidden-unit gradients of a group of rows.
fn work<const WIDE: bool>(geo: Geometry) -> Vec<Lane> {
    if WIDE {
        vec![[0.0; LANES]; 2 * wide::ROWS * geo.hp / LANES]
    } else {
        Vec::new()
    }
}

/// Forward through one layer, in place (`xs`: rows of `x` become rows of `z`), adding `Σ log s`
/// to `log_det`; with `keep`, stores each row's `s` then `μ` (`2·o` numbers per row).
#[inline(always)]
pub(super) fn layer_forward<
    const C: usize,
    const O: usize,
    const F: bool,
    const WIDE: bool,
    const BIG: bool,
>(
    params: &[f32],
    geo: Geometry,
    xs: &mut [f32],
    ctx: &[f32],
    log_det: &mut [f32],
    keep: Option<&mut [f32]>,
) {
    layer_pass::<C, O, F, WIDE, BIG, false>(params, geo, xs, ctx, log_det, keep)
}

/// Inverse through one layer, in place (rows of `z` become rows of `x`); with `keep`, stores
/// each row's `s` then `μ`.
#[inline(always)]
pub(super) fn layer_inverse<
    const C: usize,
    const O: usize,
    const F: bool,
    const WIDE: bool,
    const BIG: bool,
>(
    params: &[f32],
    geo: Geometry,
    zs: &mut [f32],
    ctx: &[f32],
    keep: Option<&mut [f32]>,
) {
    layer_pass::<C, O, F, WIDE, BIG, true>(params, geo, zs, ctx, &mut [], keep)
}

/// The forward (`INVERSE = false`, adding `Σ log s` to `log_det`) or inverse pass of one layer
/// over all rows of `data`, in place, in groups of rows and then single rows.
#[inline(always)]
fn layer_pass<
    const C: usize,
    const O: usize,
    const F: bool,
    const WIDE: bool,
    const BIG: bool,
    const INVERSE: bool,
>(
    params: &[f32],
    geo: Geometry,
    data: &mut [f32],
    ctx: &[f32],
    log_det: &mut [f32],
    mut keep: Option<&mut [f32]>,
) {
    let n = data.len() / geo.d;
    let (sig, mu, map) = layer_nets::<C, O>(params, geo);
    let j = panel_blocks::<F, WIDE, BIG>(n);
    let (ps, pm) = (sig.as_ref().map_or(Vec::new(), |s| s.panels(j)), mu.panels(j));
    let (sig, mu) = (sig.as_ref().map(|s| s.with_panels(&ps, j)), mu.with_panels(&pm, j));
    let nets = (sig.as_ref(), &mu, &map);
    let mut work = work::<WIDE>(geo);
    let mut i = 0;
    while i < n {
        let keep = keep.as_deref_mut();
        let out = (&mut *data, &mut *log_det, keep);
        if WIDE && i + wide::ROWS <= n {
            pass_rows::<{ wide::ROWS }, C, O, F, WIDE, BIG, INVERSE>(nets, geo, out, ctx, &mut work, i);
            i += wide::ROWS;
        } else if !WIDE && i + ROWS <= n {
            pass_rows::<ROWS, C, O, F, WIDE, BIG, INVERSE>(nets, geo, out, ctx, &mut work, i);
            i += ROWS;
        } else {
            pass_rows::<1, C, O, F, WIDE, BIG, INVERSE>(nets, geo, out, ctx, &mut work, i);
            i += 1;
        }
    }
}

/// A coupling's networks as a pass reads them: `sig_net` (affine only), `mu_net`, the scale map.
type NetsRef<'s, 'a, const C: usize, const O: usize> =
    (Option<&'s Blocks<'a, C, O>>, &'s Blocks<'a, C, O>, &'s ScaleMap<O>);

/// What a pass writes: the rows, their log-determinants, and optionally each row's `s` and `μ`.
type PassOut<'s> = (&'s mut [f32], &'s mut [f32], Option<&'s mut [f32]>);

#[inline(always)]
fn pass_rows<
    const R: usize,
    const C: usize,
    const O: usize,
    const F: bool,
    const WIDE: bool,
    const BIG: bool,
    const INVERSE: bool,
>(
    (sig, mu, map): NetsRef<'_, '_, C, O>,
    geo: Geometry,
    (data, log_det, keep): PassOut<'_>,
    ctx: &[f32],
    work: &mut [Lane],
    i: usize,
) {
    let on = if WIDE { geo.outputs() } else { O };
    let x1 = gather::<R, C>(data, ctx, geo, i);
    let m = outputs::<R, C, O, F, WIDE, BIG>(mu, &x1, work);
    let Some(sig) = sig else {
        // additive: z₂ = x₂ + μ(x₁), log|det| = 0
        for r in 0..R {
            let row = (i + r) * geo.d + geo.tc;
            for o in 0..on {
                data[row + o] = if INVERSE { data[row + o] - m[r][o] } else { data[row + o] + m[r][o] };
            }
        }
        if let Some(keep) = keep {
            for r in 0..R {
                let at = (i + r) * 2 * on;
                keep[at..at + on].fill(0.0);
                keep[at + on..at + 2 * on].copy_from_slice(&m[r][..on]);
            }
        }
        return;
    };
    let s = outputs::<R, C, O, F, WIDE, BIG>(sig, &x1, work);
    for r in 0..R {
        let row = (i + r) * geo.d + geo.tc;
        if INVERSE {
            for o in 0..on {
                data[row + o] = (data[row + o] - m[r][o]) * (-map.log_s(s[r][o], o)).exp();
            }
        } else {
            let mut sum = 0.0;
            for o in 0..on {
                let (log_s, e, _, _) = map.eval(s[r][o], o);
                data[row + o] = data[row + o] * e + m[r][o];
                sum += log_s;
            }
            log_det[i + r] += sum;
        }
    }
    if let Some(keep) = keep {
        for r in 0..R {
            let at = (i + r) * 2 * on;
            keep[at..at + on].copy_from_slice(&s[r][..on]);
            keep[at + on..at + 2 * on].copy_from_slice(&m[r][..on]);
        }
    }
}

/// Backward through one layer: `input` holds the layer's input rows, `sm` each row's `s` and
/// `μ`, and `grad` ∂loss/∂output on entry and ∂loss/∂input on return (for the wide kernels,
/// without the networks' share where `geo.input_grad` is false). `dlogdet` is
/// ∂loss/∂(Σ log s) of every row. Adds the parameter gradients to `grads`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_backward<
    const C: usize,
    const O: usize,
    const F: bool,
    const WIDE: bool,
    const BIG: bool,
>(
    params: &[f32],
    grads: &mut [f32],
    geo: Geometry,
    input: &[f32],
    ctx: &[f32],
    sm: &[f32],
    grad: &mut [f32],
    dlogdet: f32,
) {
    let n = input.len() / geo.d;
    let (sig, mu, map) = layer_nets::<C, O>(params, geo);
    let j = panel_blocks::<F, WIDE, BIG>(n);
    let (ps, pm) = (sig.as_ref().map_or(Vec::new(), |s| s.panels(j)), mu.panels(j));
    let (sig, mu) = (sig.as_ref().map(|s| s.with_panels(&ps, j)), mu.with_panels(&pm, j));
    let (c, o) = (geo.inputs(), geo.outputs());
    let len = net_len(c, o, geo.hp);
    let (mut gsig, gm, gextra) = if geo.affine {
        let (gs, rest) = grads.split_at_mut(len);
        let (gm, gextra) = rest.split_at_mut(len);
        (Some(BlocksMut::<C, O>::new(gs, c, o, geo.hp)), gm, gextra)
    } else {
        let (gm, gextra) = grads.split_at_mut(len);
        (None, gm, gextra)
    };
    let mut gmu = BlocksMut::<C, O>::new(gm, c, o, geo.hp);
    let mut ggamma = [0.0f32; O];
    let mut sig = sig.as_ref().zip(gsig.as_mut());
    let mut work = work::<WIDE>(geo);
    let mut i = 0;
    while i < n {
        let args = (&mut sig, &mu, &mut gmu, &map, &mut ggamma);
        let rows = (input, ctx, sm);
        if WIDE && i + wide::ROWS <= n {
            backward_rows::<{ wide::ROWS }, C, O, F, WIDE, BIG>(args, geo, rows, grad, dlogdet, &mut work, i);
            i += wide::ROWS;
        } else if !WIDE && i + ROWS <= n {
            backward_rows::<ROWS, C, O, F, WIDE, BIG>(args, geo, rows, grad, dlogdet, &mut work, i);
            i += ROWS;
        } else {
            backward_rows::<1, C, O, F, WIDE, BIG>(args, geo, rows, grad, dlogdet, &mut work, i);
            i += 1;
        }
    }
    if geo.affine && geo.scale == Scale::Tanh {
        for j in 0..o {
            gextra[j] += ggamma[j];
        }
    }
}

/// What the backward pass of a coupling's rows works with: `sig_net` and its gradient (affine
/// only), `mu_net` and its gradient, the scale map and the gradient of `tanh`'s factors.
type BackwardNets<'s, 'a, 'g, const C: usize, const O: usize> = (
    &'s mut Option<(&'a Blocks<'a, C, O>, &'g mut BlocksMut<'a, C, O>)>,
    &'s Blocks<'a, C, O>,
    &'s mut BlocksMut<'a, C, O>,
    &'s ScaleMap<O>,
    &'s mut [f32; O],
);

/// ∂loss/∂input of `net` for `R` rows, adding its weight gradients to `g`, by the narrow or the
/// wide kernels (the wide ones give only the first `needed` inputs' gradient: none of the
/// context's).
#[inline(always)]
fn backward_net<
    const R: usize,
    const C: usize,
    const O: usize,
    const F: bool,
    const WIDE: bool,
    const BIG: bool,
>(
    (net, g): (&Blocks<'_, C, O>, &mut BlocksMut<'_, C, O>),
    x: &[[f32; C]; R],
    gout: &[[f32; O]; R],
    work: &mut [Lane],
    needed: usize,
) -> [[f32; C]; R] {
    if WIDE {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = (F && R == wide::ROWS).then(Avx2::detect).flatten() {
            let mut dx = [[0.0f32; C]; R];
            if BIG {
                tiled::net_backward::<C, O, 4>(t, net, g, x, gout, &mut dx, work, needed);
            } else {
                tiled::net_backward::<C, O, 2>(t, net, g, x, gout, &mut dx, work, needed);
            }
            return dx;
        }
        wide::net_backward::<R, C, O, F>(net, g, x, gout, work, needed)
    } else {
        narrow::net_backward::<R, C, O, F>(net, g, x, gout)
    }
}

#[inline(always)]
fn backward_rows<
    const R: usize,
    const C: usize,
    const O: usize,
    const F: bool,
    const WIDE: bool,
    const BIG: bool,
>(
    (sig, mu, gmu, map, ggamma): BackwardNets<'_, '_, '_, C, O>,
    geo: Geometry,
    (input, ctx, sm): (&[f32], &[f32], &[f32]),
    grad: &mut [f32],
    dlogdet: f32,
    work: &mut [Lane],
    i: usize,
) {
    let on = if WIDE { geo.outputs() } else { O };
    let x1 = gather::<R, C>(input, ctx, geo, i);
    let mut gs = [[0.0f32; O]; R];
    let mut gm = [[0.0f32; O]; R];
    for r in 0..R {
        let row = (i + r) * geo.d + geo.tc;
        for o in 0..on {
            let g = grad[row + o];
            gm[r][o] = g;
            if sig.is_none() {
                continue; // additive: ∂z₂/∂x₂ = 1
            }
            let h = sm[(i + r) * 2 * on + o];
            let (_, e, slope, tanh) = map.eval(h, o);
            // z₂ = x₂·e^{g(h)} + μ and loss ∋ dlogdet·g(h)
            let dlog_s = g * input[row + o] * e + dlogdet;
            gs[r][o] = dlog_s * slope;
            if map.scale == Scale::Tanh {
                ggamma[o] += dlog_s * tanh;
            }
            grad[row + o] = g * e;
        }
    }
    let needed = if geo.input_grad { geo.cond } else { 0 };
    let dm = backward_net::<R, C, O, F, WIDE, BIG>((mu, gmu), &x1, &gm, work, needed);
    let ds = match sig {
        Some((net, g)) => backward_net::<R, C, O, F, WIDE, BIG>((net, g), &x1, &gs, work, needed),
        None => [[0.0f32; C]; R],
    };
    // the context's gradient is not needed: only the data columns' are passed on
    for r in 0..R {
        let row = (i + r) * geo.d + geo.cc;
        for c in 0..geo.cond {
            grad[row + c] += ds[r][c] + dm[r][c];
        }
    }
}
