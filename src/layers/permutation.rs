//! A fixed permutation of the columns: `z = x[:, perm]`, `log|det| = 0`; the inverse applies the
//! inverse permutation. The notebook's alternating flip is the case `d = 2`; rnvp offers the
//! reversal and a random permutation drawn when the layer is built. The permutation is the buffer
//! `perm` (integer indices held in the model's float dtype, so that every format stores it).
use crate::error::{Error, Result};
use tch::nn;
use tch::{Kind, Tensor};

/// A permutation layer with the buffer `perm`.
#[derive(Debug)]
pub struct Permutation {
    perm: Tensor,
}

/// The permutation held in a float buffer as indices, checked: each of `0..d` exactly once.
pub(crate) fn indices(perm: &Tensor, what: &str) -> Result<Tensor> {
    let d = perm.size()[0];
    let idx = perm.to_kind(Kind::Int64);
    let exact = perm.to_kind(Kind::Double).eq_tensor(&idx.to_kind(Kind::Double)).all().int64_value(&[]) == 1;
    let sorted = idx.sort(0, false).0.to_device(tch::Device::Cpu);
    if !exact || !sorted.equal(&Tensor::arange(d, (Kind::Int64, tch::Device::Cpu))) {
        return Err(Error::Data(format!("'{what}' is not a permutation of 0..{d}")));
    }
    Ok(idx)
}

impl Permutation {
    /// The reversal of `d` columns, or (with `random`) a permutation drawn from libtorch's
    /// generator.
    pub fn build(p: &nn::Path, d: i64, random: bool) -> Self {
        let perm = p.zeros_no_train("perm", &[d]);
        let order = if random {
            Tensor::randperm(d, (Kind::Int64, tch::Device::Cpu))
        } else {
            Tensor::arange(d, (Kind::Int64, tch::Device::Cpu)).flip([0])
        };
        tch::no_grad(|| perm.shallow_clone().copy_(&order));
        Permutation { perm }
    }

    /// The layer's variables by key.
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        vec![("perm", self.perm.shallow_clone())]
    }

    /// Checks that `perm` is a permutation (a file may hold anything).
    pub fn check(&self) -> Result<()> {
        indices(&self.perm, "perm").map(|_| ())
    }

    /// `z = x[:, perm]`.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.index_select(1, &self.perm.to_kind(Kind::Int64))
    }

    /// `x = z[:, argsort(perm)]`.
    pub fn inverse(&self, zs: &Tensor) -> Tensor {
        zs.index_select(1, &self.perm.to_kind(Kind::Int64).argsort(0, false))
    }
}
