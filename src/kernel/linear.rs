//! The fused kernels' per-row linear layers: ActNorm, NICE's diagonal scaling, fixed permutations
//! and Glow's LU map, for the `d` the kernels run (at most `MAX_INPUTS + MAX_OUTPUTS` columns). Each
//! works on a layer's packed variables — its keys' tensors flattened one after the other, in the
//! order of [`LayerKind::keys`] — with a forward pass adding the log-determinant, an exact inverse,
//! and a backward pass adding the parameter gradients (buffers get none).
// Triangular products index rows and columns of small matrices together: index loops read like
// the formulas.
#![allow(clippy::needless_range_loop)]

use crate::config::LayerKind;

/// Largest `d` of a packed stack.
pub(super) const MAX_D: usize = super::MAX_INPUTS + super::MAX_OUTPUTS;

/// Numbers a layer of `kind` takes in the flat buffer for `d` columns.
pub(super) fn len(kind: LayerKind, d: usize) -> usize {
    match kind {
        LayerKind::ActNorm => 2 * d + 1,
        LayerKind::Permutation | LayerKind::DiagonalScale => d,
        LayerKind::Lu => 2 * d * d + 3 * d,
        _ => 0, // couplings and batch norm are not linear layers of the kernels
    }
}

/// An LU layer's parts: `lower`, `upper`, `log_abs_s`, `perm`, `sign`.
struct Lu<'a> {
    lower: &'a [f32],
    upper: &'a [f32],
    /// `s = sign ⊙ exp(log_abs_s)`, the diagonal of `U`.
    s: [f32; MAX_D],
    perm: [usize; MAX_D],
}

impl<'a> Lu<'a> {
    fn new(p: &'a [f32], d: usize) -> Self {
        let (lower, rest) = p.split_at(d * d);
        let (upper, rest) = rest.split_at(d * d);
        let (las, rest) = rest.split_at(d);
        let (perm, sign) = rest.split_at(d);
        Lu {
            lower,
            upper,
            s: std::array::from_fn(|i| if i < d { sign[i] * las[i].exp() } else { 0.0 }),
            perm: std::array::from_fn(|i| if i < d { perm[i] as usize } else { 0 }),
        }
    }

    /// `u = U x` for one row, into `u[..d]`.
    fn u(&self, x: &[f32], d: usize, u: &mut [f32; MAX_D]) {
        for i in 0..d {
            let mut v = self.s[i] * x[i];
            for j in i + 1..d {
                v += self.upper[i * d + j] * x[j];
            }
            u[i] = v;
        }
    }
}

/// The permutation held in a float buffer, as indices.
fn indices(p: &[f32], d: usize) -> [usize; MAX_D] {
    std::array::from_fn(|i| if i < d { p[i] as usize } else { 0 })
}

/// `Σ` of a layer's log-scales (its log-determinant, the same for every row).
fn log_det_of(kind: LayerKind, p: &[f32], d: usize) -> f32 {
    match kind {
        LayerKind::ActNorm => p[d..2 * d].iter().sum(),
        LayerKind::DiagonalScale => p[..d].iter().sum(),
        LayerKind::Lu => p[2 * d * d..2 * d * d + d].iter().sum(),
        _ => 0.0,
    }
}

/// `x → z` in place for the rows of `xs`, adding the log-determinant to `log_det`.
pub(super) fn forward(kind: LayerKind, p: &[f32], d: usize, xs: &mut [f32], log_det: &mut [f32]) {
    let ld = log_det_of(kind, p, d);
    match kind {
        LayerKind::ActNorm | LayerKind::DiagonalScale => {
            let (loc, ls) = affine_parts(kind, p, d);
            let e: [f32; MAX_D] = std::array::from_fn(|i| if i < d { ls[i].exp() } else { 0.0 });
            for row in xs.chunks_exact_mut(d) {
                for i in 0..d {
                    let b = loc.get(i).copied().unwrap_or(0.0);
                    row[i] = (row[i] - b) * e[i];
                }
            }
        }
        LayerKind::Permutation => {
            let perm = indices(p, d);
            // per-row buffers made once: zeroing MAX_D numbers per row would cost more than the
            // row's work at small d
            let mut x = [0.0f32; MAX_D];
            for row in xs.chunks_exact_mut(d) {
                x[..d].copy_from_slice(row);
                for i in 0..d {
                    row[i] = x[perm[i]];
                }
            }
        }
        LayerKind::Lu => {
            let lu = Lu::new(p, d);
            let (mut u, mut w) = ([0.0f32; MAX_D], [0.0f32; MAX_D]);
            for row in xs.chunks_exact_mut(d) {
                // u = U x, w = L u, z = P w (z_i = w_{perm[i]})
                lu.u(row, d, &mut u);
                for i in 0..d {
                    let mut v = u[i];
                    for j in 0..i {
                        v += lu.lower[i * d + j] * u[j];
                    }
                    w[i] = v;
                }
                for i in 0..d {
                    row[i] = w[lu.perm[i]];
                }
            }
        }
        _ => {}
    }
    if ld != 0.0 {
        for v in log_det.iter_mut() {
            *v += ld;
        }
    }
}

/// `z → x` in place for the rows of `zs`.
pub(super) fn inverse(kind: LayerKind, p: &[f32], d: usize, zs: &mut [f32]) {
    match kind {
        LayerKind::ActNorm | LayerKind::DiagonalScale => {
            let (loc, ls) = affine_parts(kind, p, d);
            let e: [f32; MAX_D] = std::array::from_fn(|i| if i < d { (-ls[i]).exp() } else { 0.0 });
            for row in zs.chunks_exact_mut(d) {
                for i in 0..d {
                    row[i] = row[i] * e[i] + loc.get(i).copied().unwrap_or(0.0);
                }
            }
        }
        LayerKind::Permutation => {
            scatter(&indices(p, d), d, zs);
        }
        LayerKind::Lu => {
            let lu = Lu::new(p, d);
            // every entry below d is written before it is read, in every row
            let (mut u, mut w) = ([0.0f32; MAX_D], [0.0f32; MAX_D]);
            for row in zs.chunks_exact_mut(d) {
                // w = Pᵀ z, then L u = w (unit lower), then U x = u (upper)
                for i in 0..d {
                    w[lu.perm[i]] = row[i];
                }
                for i in 0..d {
                    let mut v = w[i];
                    for j in 0..i {
                        v -= lu.lower[i * d + j] * u[j];
                    }
                    u[i] = v;
                }
                for i in (0..d).rev() {
                    let mut v = u[i];
                    for j in i + 1..d {
                        v -= lu.upper[i * d + j] * row[j];
                    }
                    row[i] = v / lu.s[i];
                }
            }
        }
        _ => {}
    }
}

/// Backward through the layer: `input` holds its input rows, `grad` ∂loss/∂output on entry and
/// ∂loss/∂input on return; `dlogdet` is ∂loss/∂(log-det) of every row. Adds the parameter
/// gradients to `g` (laid out like `p`; buffers get none).
pub(super) fn backward(
    kind: LayerKind,
    p: &[f32],
    g: &mut [f32],
    d: usize,
    input: &[f32],
    grad: &mut [f32],
    dlogdet: f32,
) {
    let rows = input.len() / d;
    match kind {
        LayerKind::ActNorm | LayerKind::DiagonalScale => {
            let actnorm = kind == LayerKind::ActNorm;
            let (loc, ls) = affine_parts(kind, p, d);
            let e: [f32; MAX_D] = std::array::from_fn(|i| if i < d { ls[i].exp() } else { 0.0 });
            let mut gloc = [0.0f32; MAX_D];
            let mut gls = [0.0f32; MAX_D];
            for (x, gz) in input.chunks_exact(d).zip(grad.chunks_exact_mut(d)) {
                for i in 0..d {
                    let z = (x[i] - loc.get(i).copied().unwrap_or(0.0)) * e[i];
                    gloc[i] -= gz[i] * e[i];
                    gls[i] += gz[i] * z;
                    gz[i] *= e[i];
                }
            }
            let (gl, gs) = if actnorm { g.split_at_mut(d) } else { (&mut [][..], &mut g[..]) };
            for i in 0..d {
                if actnorm {
                    gl[i] += gloc[i];
                }
                gs[i] += gls[i] + dlogdet * rows as f32;
            }
        }
        LayerKind::Permutation => {
            // the gradient of a gather is the scatter
            scatter(&indices(p, d), d, grad);
        }
        LayerKind::Lu => {
            let lu = Lu::new(p, d);
            let (gl, rest) = g.split_at_mut(d * d);
            let (gu, rest) = rest.split_at_mut(d * d);
            let glas = &mut rest[..d];
            let (mut u, mut gw, mut gu_) = ([0.0f32; MAX_D], [0.0f32; MAX_D], [0.0f32; MAX_D]);
            for (x, gz) in input.chunks_exact(d).zip(grad.chunks_exact_mut(d)) {
                lu.u(x, d, &mut u);
                // z_i = w_{perm[i]}
                gw[..d].fill(0.0);
                for i in 0..d {
                    gw[lu.perm[i]] += gz[i];
                }
                // w = L u: ∂/∂u_j = gw_j + Σ_{i>j} L_ij gw_i; ∂/∂L_ij = gw_i u_j
                for j in 0..d {
                    let mut v = gw[j];
                    for i in j + 1..d {
                        v += lu.lower[i * d + j] * gw[i];
                        gl[i * d + j] += gw[i] * u[j];
                    }
                    gu_[j] = v;
                }
                // u = U x: ∂/∂x_j = s_j gu_j + Σ_{i<j} U_ij gu_i; ∂/∂U_ij = gu_i x_j; ∂/∂log|s_i| = gu_i s_i x_i
                for j in 0..d {
                    let mut v = lu.s[j] * gu_[j];
                    for i in 0..j {
                        v += lu.upper[i * d + j] * gu_[i];
                        gu[i * d + j] += gu_[i] * x[j];
                    }
                    glas[j] += gu_[j] * lu.s[j] * x[j];
                    gz[j] = v;
                }
            }
            for v in glas.iter_mut() {
                *v += dlogdet * rows as f32;
            }
        }
        _ => {}
    }
}

/// An ActNorm's `(loc, log_scale)` or a diagonal scaling's `(empty, log_scale)` in its parameters.
fn affine_parts(kind: LayerKind, p: &[f32], d: usize) -> (&[f32], &[f32]) {
    if kind == LayerKind::ActNorm {
        (&p[..d], &p[d..2 * d])
    } else {
        (&[], &p[..d])
    }
}

/// `row[perm[i]] = old row[i]` for every row: the inverse of a permutation's `z_i = x_{perm[i]}`.
fn scatter(perm: &[usize; MAX_D], d: usize, rows: &mut [f32]) {
    let mut z = [0.0f32; MAX_D];
    for row in rows.chunks_exact_mut(d) {
        z[..d].copy_from_slice(row);
        for i in 0..d {
            row[perm[i]] = z[i];
        }
    }
}
