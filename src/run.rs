//! How a flow is run: the engine that computes its passes is a property of the run, not of the
//! model. With `model` a [`StackedNvp`] (`flow.stack()` of a [`crate::Flow`]),
//! `model.run(Engine::Libtorch).log_prob(&xs)` evaluates with libtorch operations and
//! `model.log_prob(&xs)` with [`Engine::Auto`] (the fused kernels where they apply).
use crate::base;
use crate::error::{Error, Result};
use crate::flow::StackedNvp;
use crate::kernel::{self, Packing};
use tch::Tensor;

/// What computes a flow's passes on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The fused kernels where they apply (float32 on the CPU, `k` and `d − k` at most 4, no
    /// batch norm), libtorch elsewhere.
    #[default]
    Auto,
    /// The fused kernels ([`crate::kernel`]); an error where they do not apply.
    Fused,
    /// libtorch operations (with autograd for training), as the notebook runs.
    Libtorch,
}

impl std::str::FromStr for Engine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Engine::Auto),
            "fused" => Ok(Engine::Fused),
            "libtorch" => Ok(Engine::Libtorch),
            _ => Err(Error::InvalidConfig(format!("engine '{s}': expected auto, fused or libtorch"))),
        }
    }
}

/// A flow run by an engine: `log_prob`, `encode`, `decode` and `sample` without autograd.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    flow: &'a StackedNvp,
    engine: Engine,
}

impl<'a> Run<'a> {
    /// `flow` run by `engine`.
    pub fn new(flow: &'a StackedNvp, engine: Engine) -> Self {
        Run { flow, engine }
    }

    /// The flow.
    pub fn flow(&self) -> &'a StackedNvp {
        self.flow
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The packing for the fused kernels when this engine uses them for this flow (`Auto` falls
    /// back to libtorch silently; `Fused` fails where they do not apply).
    pub fn fused_packing(&self) -> Result<Option<Packing>> {
        let flow = self.flow;
        match self.engine {
            Engine::Libtorch => Ok(None),
            Engine::Auto => Ok(flow.packing()),
            Engine::Fused => flow.packing().map(Some).ok_or_else(|| {
                let cfg = flow.config();
                Error::InvalidConfig(format!(
                    "the fused engine runs float32 flows on the CPU with k and d − k at most {} and \
                     no batch norm (this flow: {:?} on {:?}, d = {}, k = {}, {})",
                    kernel::MAX_WIDTH,
                    flow.kind(),
                    flow.device(),
                    cfg.d,
                    cfg.k,
                    cfg.arch.describe()
                ))
            }),
        }
    }

    /// `log p(x)`, one value per row.
    pub fn log_prob(&self, xs: &Tensor) -> Result<Tensor> {
        self.flow.check(xs, "input")?;
        let Some(pk) = self.fused_packing()? else {
            return Ok(chunked(xs, |xs| {
                let (zs, log_jacob) = self.flow.transform(xs);
                base::log_prob(&zs) + log_jacob
            }));
        };
        let (zs, log_det) = self.fused_forward(&pk, xs)?;
        let lp: Vec<f32> = zs
            .chunks_exact(self.flow.config().d as usize)
            .zip(log_det)
            .map(|(z, ld)| (base::log_prob_row(z) + ld as f64) as f32)
            .collect();
        Ok(Tensor::from_slice(&lp))
    }

    /// `z = f(x)`.
    pub fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        self.flow.check(xs, "input")?;
        let Some(pk) = self.fused_packing()? else {
            return Ok(chunked(xs, |xs| self.flow.transform(xs).0));
        };
        let (zs, _) = self.fused_forward(&pk, xs)?;
        Ok(Tensor::from_slice(&zs).view([-1, self.flow.config().d]))
    }

    /// `x = f⁻¹(z)`.
    pub fn decode(&self, zs: &Tensor) -> Result<Tensor> {
        self.flow.check(zs, "latent")?;
        self.decode_unchecked(zs)
    }

    /// `n` samples `f⁻¹(z)`, `z ~ N(0, I)`, drawn with libtorch's generator (seed it with
    /// `tch::manual_seed`).
    pub fn sample(&self, n: i64) -> Result<Tensor> {
        if n < 0 {
            return Err(Error::InvalidConfig(format!("cannot draw {n} samples")));
        }
        let flow = self.flow;
        self.decode_unchecked(&base::sample(n, flow.config().d, flow.kind(), flow.device()))
    }

    fn decode_unchecked(&self, zs: &Tensor) -> Result<Tensor> {
        let Some(pk) = self.fused_packing()? else {
            return Ok(chunked(zs, |zs| self.flow.untransform(zs)));
        };
        let params = pk.pack(self.flow.layers())?;
        let mut xs = kernel::flat(zs)?;
        pk.inverse_par(&params, &mut xs, threads());
        Ok(Tensor::from_slice(&xs).view([-1, self.flow.config().d]))
    }

    /// The fused forward pass on `xs`: `(z, Σ log|det|)` as flat row-major vectors.
    fn fused_forward(&self, pk: &Packing, xs: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        let params = pk.pack(self.flow.layers())?;
        let mut zs = kernel::flat(xs)?;
        let mut log_det = vec![0.0f32; xs.size()[0] as usize];
        pk.forward_par(&params, &mut zs, &mut log_det, threads());
        Ok((zs, log_det))
    }
}

/// Rows evaluated at once without autograd: the hidden activations of a chunk (`CHUNK × hidden`)
/// stay in cache instead of making one pass over memory per operation for the whole input.
const CHUNK: i64 = 2048;

/// `f` applied to row blocks of `xs` without autograd, the results concatenated.
fn chunked(xs: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    tch::no_grad(|| {
        let n = xs.size()[0];
        if n <= CHUNK {
            return f(xs);
        }
        let parts: Vec<Tensor> = xs.split(CHUNK, 0).iter().map(&f).collect();
        Tensor::cat(&parts, 0)
    })
}

/// libtorch's intra-op thread count, which the fused kernels follow.
pub(crate) fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}
