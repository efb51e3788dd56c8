//! The fused kernels' SIMD code: a coupling layer's forward, inverse and backward passes over row
//! blocks, with the hidden units of a few rows in registers, compiled once for the baseline
//! instruction set and once for AVX2 + FMA, and the run-time dispatch between the two. The only
//! file of the kernels with `unsafe` (calling the `#[target_feature]` build after detection; the
//! crate's one other exception is `sys`).
// `unsafe` only calls `#[target_feature]` functions after run-time detection. The lane loops
// index several arrays in step; written as index loops they vectorise predictably.
#![allow(unsafe_code)]
#![allow(clippy::needless_range_loop)]

use crate::arch::Scale;

/// SIMD lanes the hidden loop is written for (one AVX2 register of f32).
pub(super) const LANES: usize = 8;
/// LeakyReLU's negative slope (PyTorch's default).
const SLOPE: f32 = 0.01;
/// Rows processed together: their hidden units share each load of the weights.
pub(super) const ROWS: usize = 4;
/// Length of one packed network.
pub(super) fn net_len(c: usize, o: usize, hp: usize) -> usize {
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
}

/// Gathers the networks' inputs for rows `i..i + R`: the conditioning columns of `xs`, then the
/// rows' context from `ctx` (`m` numbers per row).
#[inline(always)]
fn gather<const R: usize, const C: usize>(xs: &[f32], ctx: &[f32], geo: Geometry, i: usize) -> [[f32; C]; R] {
    if geo.m == 0 {
        return std::array::from_fn(|r| std::array::from_fn(|c| xs[(i + r) * geo.d + geo.cc + c]));
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|c| {
            if c < geo.cond {
                xs[(i + r) * geo.d + geo.cc + c]
            } else {
                ctx[(i + r) * geo.m + c - geo.cond]
            }
        })
    })
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
            Scale::Tanh => (0.0, std::array::from_fn(|o| extra[o])),
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
    let len = net_len(C, O, geo.hp);
    if !geo.affine {
        let mu_net = split_net(params, C, O, geo.hp);
        return (None, Blocks::new(&mu_net, geo.hidden), ScaleMap::new(Scale::Exp, &[]));
    }
    let sig_net = split_net(params, C, O, geo.hp);
    let mu_net = split_net(&params[len..], C, O, geo.hp);
    let map = ScaleMap::new(geo.scale, &params[2 * len..]);
    (Some(Blocks::new(&sig_net, geo.hidden)), Blocks::new(&mu_net, geo.hidden), map)
}

/// Forward through one layer, in place (`xs`: rows of `x` become rows of `z`), adding `Σ σ` to
/// `log_det`; with `keep`, stores each row's `σ` then `μ` (`2·O` numbers per row).
#[inline(always)]
fn layer_forward<const C: usize, const O: usize, const F: bool>(
    params: &[f32],
    geo: Geometry,
    xs: &mut [f32],
    ctx: &[f32],
    log_det: &mut [f32],
    keep: Option<&mut [f32]>,
) {
    layer_pass::<C, O, F, false>(params, geo, xs, ctx, log_det, keep)
}

/// Inverse through one layer, in place (rows of `z` become rows of `x`); with `keep`, stores
/// each row's `σ` then `μ`.
#[inline(always)]
fn layer_inverse<const C: usize, const O: usize, const F: bool>(
    params: &[f32],
    geo: Geometry,
    zs: &mut [f32],
    ctx: &[f32],
    keep: Option<&mut [f32]>,
) {
    layer_pass::<C, O, F, true>(params, geo, zs, ctx, &mut [], keep)
}

/// The forward (`INVERSE = false`, adding `Σ σ` to `log_det`) or inverse pass of one layer over
/// all rows of `data`, in place, in groups of `ROWS` rows and then single rows.
#[inline(always)]
fn layer_pass<const C: usize, const O: usize, const F: bool, const INVERSE: bool>(
    params: &[f32],
    geo: Geometry,
    data: &mut [f32],
    ctx: &[f32],
    log_det: &mut [f32],
    mut keep: Option<&mut [f32]>,
) {
    let (sig, mu, map) = layer_nets::<C, O>(params, geo);
    let sig = sig.as_ref();
    let n = data.len() / geo.d;
    let mut i = 0;
    while i < n {
        if i + ROWS <= n {
            pass_rows::<ROWS, C, O, F, INVERSE>(
                sig,
                &mu,
                &map,
                geo,
                data,
                ctx,
                log_det,
                keep.as_deref_mut(),
                i,
            );
            i += ROWS;
        } else {
            pass_rows::<1, C, O, F, INVERSE>(sig, &mu, &map, geo, data, ctx, log_det, keep.as_deref_mut(), i);
            i += 1;
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass_rows<const R: usize, const C: usize, const O: usize, const F: bool, const INVERSE: bool>(
    sig: Option<&Blocks<'_, C, O>>,
    mu: &Blocks<'_, C, O>,
    map: &ScaleMap<O>,
    geo: Geometry,
    data: &mut [f32],
    ctx: &[f32],
    log_det: &mut [f32],
    keep: Option<&mut [f32]>,
    i: usize,
) {
    let x1 = gather::<R, C>(data, ctx, geo, i);
    let m = net_forward::<R, C, O, F>(mu, &x1);
    let Some(sig) = sig else {
        // additive: z₂ = x₂ + μ(x₁), log|det| = 0
        for r in 0..R {
            let row = (i + r) * geo.d + geo.tc;
            for o in 0..O {
                data[row + o] = if INVERSE { data[row + o] - m[r][o] } else { data[row + o] + m[r][o] };
            }
        }
        if let Some(keep) = keep {
            for r in 0..R {
                let at = (i + r) * 2 * O;
                keep[at..at + O].fill(0.0);
                keep[at + O..at + 2 * O].copy_from_slice(&m[r]);
            }
        }
        return;
    };
    let s = net_forward::<R, C, O, F>(sig, &x1);
    for r in 0..R {
        let row = (i + r) * geo.d + geo.tc;
        if INVERSE {
            for o in 0..O {
                data[row + o] = (data[row + o] - m[r][o]) * (-map.log_s(s[r][o], o)).exp();
            }
        } else {
            let mut sum = 0.0;
            for o in 0..O {
                let (log_s, e, _, _) = map.eval(s[r][o], o);
                data[row + o] = data[row + o] * e + m[r][o];
                sum += log_s;
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
#[allow(clippy::too_many_arguments)]
fn layer_backward<const C: usize, const O: usize, const F: bool>(
    params: &[f32],
    grads: &mut [f32],
    geo: Geometry,
    input: &[f32],
    ctx: &[f32],
    sm: &[f32],
    grad: &mut [f32],
    dlogdet: f32,
) {
    let (sig, mu, map) = layer_nets::<C, O>(params, geo);
    let len = net_len(C, O, geo.hp);
    let (mut gsig, gm, gextra) = if geo.affine {
        let (gs, rest) = grads.split_at_mut(len);
        let (gm, gextra) = rest.split_at_mut(len);
        (Some(BlocksMut::<C, O>::new(split_net_mut(gs, C, O, geo.hp))), gm, gextra)
    } else {
        let (gm, gextra) = grads.split_at_mut(len);
        (None, gm, gextra)
    };
    let mut gmu = BlocksMut::<C, O>::new(split_net_mut(gm, C, O, geo.hp));
    let mut ggamma = [0.0f32; O];
    let sig = sig.as_ref().zip(gsig.as_mut());
    let mut sig = sig;
    let n = input.len() / geo.d;
    let mut i = 0;
    while i < n {
        let args = (&mut sig, &mu, &mut gmu, &map, &mut ggamma);
        if i + ROWS <= n {
            backward_rows::<ROWS, C, O, F>(args, geo, (input, ctx), sm, grad, dlogdet, i);
            i += ROWS;
        } else {
            backward_rows::<1, C, O, F>(args, geo, (input, ctx), sm, grad, dlogdet, i);
            i += 1;
        }
    }
    if geo.affine && geo.scale == Scale::Tanh {
        for o in 0..O {
            gextra[o] += ggamma[o];
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

#[inline(always)]
fn backward_rows<const R: usize, const C: usize, const O: usize, const F: bool>(
    (sig, mu, gmu, map, ggamma): BackwardNets<'_, '_, '_, C, O>,
    geo: Geometry,
    (input, ctx): (&[f32], &[f32]),
    sm: &[f32],
    grad: &mut [f32],
    dlogdet: f32,
    i: usize,
) {
    let x1 = gather::<R, C>(input, ctx, geo, i);
    let mut gs = [[0.0f32; O]; R];
    let mut gm = [[0.0f32; O]; R];
    for r in 0..R {
        let row = (i + r) * geo.d + geo.tc;
        for o in 0..O {
            let g = grad[row + o];
            gm[r][o] = g;
            if sig.is_none() {
                continue; // additive: ∂z₂/∂x₂ = 1
            }
            let h = sm[(i + r) * 2 * O + o];
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
    let dm = net_backward::<R, C, O, F>(mu, gmu, &x1, &gm);
    let ds = match sig {
        Some((net, g)) => net_backward::<R, C, O, F>(net, g, &x1, &gs),
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
            pub(super) mod $name {
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
