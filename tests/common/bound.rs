//! How far two correct float32 implementations of a flow may differ on a given input: a
//! first-order bound on the rounding error of each output, computed in float64 from the size of
//! the terms each operation sums ("running error analysis", Higham, *Accuracy and Stability of
//! Numerical Algorithms*, §3.1 and §3.3).
//!
//! For `y = W a + b` with `n` terms, `|fl(y) − y| ≤ γₙ₊₁ (|W| |a| + |b|) + |W| e_a`, with
//! `γₙ = n u / (1 − n u)`, `u = 2⁻²⁴` and `e_a` the error already in `a`; LeakyReLU passes errors
//! through (it is 1-Lipschitz); `exp(s)` adds a relative error `e_s` plus its own rounding; a
//! product or sum adds `u` of its result. Any summation order (libtorch's blocked BLAS, the fused
//! kernels' FMA loops, PyTorch on another CPU) stays within the bound, so the difference between
//! two implementations is at most twice it. Near the data the bound is far below the tests' fixed
//! tolerances; far out in the tails, where the terms are huge and cancel, it is what makes a
//! comparison meaningful on every CPU.
use rnvp::{Flow, Layout};
use std::collections::HashMap;
use tch::{Kind, Tensor};

const U: f64 = 1.0 / 16_777_216.0; // 2⁻²⁴, float32's unit roundoff

fn gamma(n: i64) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu)
}

/// Rounding bounds of a forward pass, one value per output element.
pub struct ForwardBounds {
    /// `[n, d]`, for `z`.
    pub z: Tensor,
    /// `[n]`, for `Σ log|det|`.
    pub log_jacob: Tensor,
    /// `[n]`, for `log N(z; 0, I)`.
    pub log_pz: Tensor,
    /// `[n]`, for `log p(x) = log_pz + log_jacob`.
    pub log_prob: Tensor,
}

struct Net {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Net {
    /// The network's output on `a` and the bound on its rounding error, given errors `ea` in `a`.
    fn eval(&self, a: &Tensor, ea: &Tensor) -> (Tensor, Tensor) {
        let (k, hidden) = (self.w1.size()[1], self.w1.size()[0]);
        let pre = a.matmul(&self.w1.tr()) + &self.b1;
        let e_pre = (a.abs().matmul(&self.w1.abs().tr()) + self.b1.abs()) * gamma(k + 1)
            + ea.matmul(&self.w1.abs().tr());
        let h = pre.leaky_relu();
        let e_h = e_pre + h.abs() * U; // the slope's product on negative inputs rounds once
        let out = h.matmul(&self.w2.tr()) + &self.b2;
        let e_out = (h.abs().matmul(&self.w2.abs().tr()) + self.b2.abs()) * gamma(hidden + 1)
            + e_h.matmul(&self.w2.abs().tr());
        (out, e_out)
    }
}

struct Layer {
    sig: Net,
    mu: Net,
    flip: bool,
}

/// The layers of a variable store holding a flow of `cfg` (flips as given), with float64 copies
/// of the weights.
fn layers(vs: &tch::nn::VarStore, cfg: &rnvp::FlowConfig, flips: &[bool]) -> (Vec<Layer>, i64) {
    let vars: HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu)))
        .collect();
    let net = |prefix: &str| {
        let get = |s: &str| vars[&format!("{prefix}{s}")].shallow_clone();
        Net { w1: get("0.weight"), b1: get("0.bias"), w2: get("2.weight"), b2: get("2.bias") }
    };
    let out = flips
        .iter()
        .enumerate()
        .map(|(i, &flip)| {
            let p = match cfg.layout {
                Layout::Stacked => format!("bijectors.{i}."),
                Layout::Single => String::new(),
            };
            Layer { sig: net(&format!("{p}sig_net.")), mu: net(&format!("{p}mu_net.")), flip }
        })
        .collect();
    (out, cfg.k)
}

/// The flips of a flow's layers.
fn flips(flow: &Flow) -> Vec<bool> {
    let cfg = flow.stack().config();
    (0..cfg.layers).map(|i| cfg.flip(i)).collect()
}

/// Bounds for `flow.forward(xs)` (the same bound holds for `log_prob`, `encode`).
pub fn forward(flow: &Flow, xs: &Tensor) -> ForwardBounds {
    forward_with(flow.var_store(), flow.stack().config(), &flips(flow), xs)
}

/// Bounds for `flow.inverse(zs)` (and `decode`), `[n, d]`.
pub fn inverse(flow: &Flow, zs: &Tensor) -> Tensor {
    inverse_with(flow.var_store(), flow.stack().config(), &flips(flow), zs)
}

/// Splits `[n, d]` into (conditioning, transformed) columns of a layer; `join` puts them back.
fn split(t: &Tensor, k: i64, flip: bool) -> (Tensor, Tensor) {
    let d = t.size()[1];
    let (a, b) = (t.narrow(1, 0, k), t.narrow(1, k, d - k));
    if flip {
        (b, a)
    } else {
        (a, b)
    }
}

fn join(cond: &Tensor, trans: &Tensor, flip: bool) -> Tensor {
    if flip {
        Tensor::cat(&[trans, cond], 1)
    } else {
        Tensor::cat(&[cond, trans], 1)
    }
}

/// Bounds for the forward pass of the layers in `vs` (a flow of `cfg`) with the given flips.
pub fn forward_with(
    vs: &tch::nn::VarStore,
    cfg: &rnvp::FlowConfig,
    flips: &[bool],
    xs: &Tensor,
) -> ForwardBounds {
    let (layers, k) = layers(vs, cfg, flips);
    tch::no_grad(|| {
        let mut x = xs.to_kind(Kind::Double);
        let mut e = x.zeros_like();
        let n = x.size()[0];
        let mut ld = Tensor::zeros([n], (Kind::Double, tch::Device::Cpu));
        let mut e_ld = ld.zeros_like();
        for l in &layers {
            let (x1, x2) = split(&x, k, l.flip);
            let (e1, e2) = split(&e, k, l.flip);
            let (s, e_s) = l.sig.eval(&x1, &e1);
            let (mu, e_mu) = l.mu.eval(&x1, &e1);
            let es = s.exp();
            let prod = &x2 * &es;
            let z2 = &prod + &mu;
            let e_z2 = prod.abs() * (&e_s + 3.0 * U) + &es * &e2 + &e_mu + z2.abs() * U;
            x = join(&x1, &z2, l.flip);
            e = join(&e1, &e_z2, l.flip);
            // Σ of the layer's log-scales, then added to the running total
            ld = &ld + s.sum_dim_intlist(1, false, Kind::Double);
            e_ld = &e_ld
                + e_s.sum_dim_intlist(1, false, Kind::Double)
                + s.abs().sum_dim_intlist(1, false, Kind::Double) * gamma(s.size()[1])
                + ld.abs() * U;
        }
        let d = x.size()[1] as f64;
        let half_sq = x.square().sum_dim_intlist(1, false, Kind::Double) * 0.5;
        let log_pz = -&half_sq - 0.5 * d * (2.0 * std::f64::consts::PI).ln();
        let e_lpz =
            (x.abs() * &e).sum_dim_intlist(1, false, Kind::Double) + (&half_sq + 1.0) * ((d + 4.0) * U);
        let e_lp = &e_lpz + &e_ld + (log_pz.abs() + ld.abs()) * U;
        let clean = |t: Tensor| t.nan_to_num(0.0, 0.0, 0.0);
        ForwardBounds { z: clean(e), log_jacob: clean(e_ld), log_pz: clean(e_lpz), log_prob: clean(e_lp) }
    })
}

/// Bounds for the inverse of the layers in `vs` (a flow of `cfg`) with the given flips, `[n, d]`.
pub fn inverse_with(vs: &tch::nn::VarStore, cfg: &rnvp::FlowConfig, flips: &[bool], zs: &Tensor) -> Tensor {
    let (layers, k) = layers(vs, cfg, flips);
    tch::no_grad(|| {
        let mut z = zs.to_kind(Kind::Double);
        let mut e = z.zeros_like();
        for l in layers.iter().rev() {
            let (z1, z2) = split(&z, k, l.flip);
            let (e1, e2) = split(&e, k, l.flip);
            let (s, e_s) = l.sig.eval(&z1, &e1);
            let (mu, e_mu) = l.mu.eval(&z1, &e1);
            let diff = &z2 - &mu;
            let ens = (-&s).exp();
            let x2 = &diff * &ens;
            let e_x2 = (&e2 + &e_mu + diff.abs() * U) * &ens + x2.abs() * (&e_s + 3.0 * U);
            z = join(&z1, &x2, l.flip);
            e = join(&e1, &e_x2, l.flip);
        }
        e.nan_to_num(0.0, 0.0, 0.0)
    })
}
