//! Glow's invertible 1×1 convolution for vectors: `z = W x` with `W = P L U`,
//! `L = tril(lower, −1) + I`, `U = triu(upper, 1) + diag(sign ⊙ exp(log_abs_s))`, `P` a fixed
//! permutation (`(P y)ᵢ = y[perm[i]]`); `log|det| = Σ log_abs_s`. The inverse is two triangular
//! solves and the inverse permutation, never a general inverse. Built as a random rotation (QR of
//! a Gaussian matrix) in LU form.
use super::permutation::indices;
use crate::error::{Error, Result};
use tch::nn;
use tch::{Kind, Tensor};

/// The LU-parametrised linear map: parameters `lower`, `upper`, `log_abs_s`; buffers `perm`, `sign`.
#[derive(Debug)]
pub struct LuLinear {
    lower: Tensor,
    upper: Tensor,
    log_abs_s: Tensor,
    perm: Tensor,
    sign: Tensor,
}

impl LuLinear {
    /// A random rotation of `d` columns (drawn from libtorch's generator), in LU form; without
    /// `rotation`, the identity (for weights about to be loaded: the QR and LU decompositions
    /// cost `d³`).
    pub fn build(p: &nn::Path, d: i64, rotation: bool) -> Self {
        let layer = LuLinear {
            lower: p.zeros("lower", &[d, d]),
            upper: p.zeros("upper", &[d, d]),
            log_abs_s: p.zeros("log_abs_s", &[d]),
            perm: p.zeros_no_train("perm", &[d]),
            sign: p.ones_no_train("sign", &[d]),
        };
        if !rotation {
            let order = Tensor::arange(d, (Kind::Int64, tch::Device::Cpu));
            tch::no_grad(|| layer.perm.shallow_clone().copy_(&order));
            return layer;
        }
        tch::no_grad(|| {
            let gauss = Tensor::randn([d, d], (Kind::Double, tch::Device::Cpu));
            let (q, _) = Tensor::linalg_qr(&gauss, "reduced");
            let (pm, l, u) = Tensor::linalg_lu(&q, true);
            let diag = u.diagonal(0, 0, 1);
            layer.lower.shallow_clone().copy_(&l);
            layer.upper.shallow_clone().copy_(&u);
            layer.log_abs_s.shallow_clone().copy_(&diag.abs().log());
            layer.sign.shallow_clone().copy_(&diag.sign());
            // row i of P has its 1 in column perm[i]
            layer.perm.shallow_clone().copy_(&pm.argmax(1, false));
        });
        layer
    }

    /// The layer's variables by key.
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        let t = |t: &Tensor| t.shallow_clone();
        vec![
            ("lower", t(&self.lower)),
            ("upper", t(&self.upper)),
            ("log_abs_s", t(&self.log_abs_s)),
            ("perm", t(&self.perm)),
            ("sign", t(&self.sign)),
        ]
    }

    /// Checks the buffers a file may have filled with anything: `perm` a permutation, `sign` ±1.
    pub fn check(&self) -> Result<()> {
        let _ = indices(&self.perm, "perm")?;
        if self.sign.abs().ne(1.0).any().int64_value(&[]) != 0 {
            return Err(Error::Data("'sign' holds values other than +1 and −1".into()));
        }
        Ok(())
    }

    fn l(&self) -> Tensor {
        let d = self.lower.size()[0];
        self.lower.tril(-1) + Tensor::eye(d, (self.lower.kind(), self.lower.device()))
    }

    fn u(&self) -> Tensor {
        self.upper.triu(1) + (&self.sign * self.log_abs_s.exp()).diag_embed(0, -2, -1)
    }

    /// `(z, log|det|)` for rows `x`: `z = (x Uᵀ Lᵀ)[:, perm]`.
    pub fn forward(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let z = xs.matmul(&self.u().tr()).matmul(&self.l().tr());
        let z = z.index_select(1, &self.perm.to_kind(Kind::Int64));
        (z, super::per_row(self.log_abs_s.sum(self.log_abs_s.kind()), xs))
    }

    /// `x = U⁻¹ L⁻¹ Pᵀ z` for rows `z`, by triangular solves.
    pub fn inverse(&self, zs: &Tensor) -> Tensor {
        let y = zs.index_select(1, &self.perm.to_kind(Kind::Int64).argsort(0, false));
        // rows: x Uᵀ Lᵀ = y  ⇒  solve from the right
        let w = self.l().tr().linalg_solve_triangular(&y, true, false, true);
        self.u().tr().linalg_solve_triangular(&w, false, false, false)
    }
}
