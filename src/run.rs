//! How a flow is run: the engine that computes its passes is a property of the run, not of the
//! model. With `model` a [`StackedNvp`] (`flow.stack()` of a [`crate::Flow`]),
//! `model.run(Engine::Libtorch).log_prob(&xs)` evaluates with libtorch operations and
//! `model.log_prob(&xs)` with [`Engine::Auto`] (the fused kernels where they apply). A
//! conditional flow runs at a context: `model.run(engine).given(&c).sample(n)`.
use crate::base;
use crate::error::{Error, Result};
use crate::flow::StackedNvp;
use crate::kernel::{self, Packing};
use tch::Tensor;

/// What computes a flow's passes on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The fused kernels where they apply (float32 on the CPU, conditioner inputs `k + m`,
    /// `d − k + m` at most 64 and outputs at most 64, no batch norm) and are faster
    /// ([`Packing::faster_than_libtorch`]), libtorch elsewhere.
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

/// A flow run by an engine (at a context, for a conditional flow): `log_prob`, `encode`,
/// `decode` and `sample` without autograd.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    flow: &'a StackedNvp,
    engine: Engine,
    context: Option<&'a Tensor>,
}

impl<'a> Run<'a> {
    /// `flow` run by `engine`.
    pub fn new(flow: &'a StackedNvp, engine: Engine) -> Self {
        Run { flow, engine, context: None }
    }

    /// The same run at the context `c` of a conditional flow: one row (`[m]` or `[1, m]`, the
    /// same context for every row) or one row per data row (`[n, m]`).
    pub fn given(self, c: &'a Tensor) -> Self {
        Run { context: Some(c), ..self }
    }

    /// The same run at an optional context.
    pub fn given_opt(self, c: Option<&'a Tensor>) -> Self {
        Run { context: c, ..self }
    }

    /// The context for `rows` rows (a single row repeated), checked against the flow.
    fn context_for(&self, rows: i64) -> Result<Option<Tensor>> {
        let c = self.context.map(|c| match c.dim() {
            1 => c.unsqueeze(0),
            _ => c.shallow_clone(),
        });
        let c = match c {
            Some(c) if c.dim() == 2 && c.size()[0] == 1 && rows != 1 => {
                Some(c.expand([rows, c.size()[1]], false))
            }
            c => c,
        };
        self.flow.check_context(c.as_ref(), rows)?;
        Ok(c)
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
    /// back to libtorch silently, and also where the wide kernels would be slower than libtorch;
    /// `Fused` fails where they do not apply).
    pub fn fused_packing(&self) -> Result<Option<Packing>> {
        let flow = self.flow;
        match self.engine {
            Engine::Libtorch => Ok(None),
            Engine::Auto => Ok(flow.packing().filter(Packing::faster_than_libtorch)),
            Engine::Fused => flow.packing().map(Some).ok_or_else(|| {
                let cfg = flow.config();
                if cfg.image.is_some() {
                    return Error::InvalidConfig(format!(
                        "the fused engine does not run convolutions: the image flow {} trains through libtorch \
                         (--engine auto or libtorch)",
                        cfg.arch.name()
                    ));
                }
                Error::InvalidConfig(format!(
                    "the fused engine runs float32 flows on the CPU whose conditioners take at most {} \
                     columns (k + m and d − k + m with a context of m) and give at most {}, and no batch \
                     norm (this flow: {:?} on {:?}, d = {}, k = {}, m = {}, {})",
                    kernel::MAX_INPUTS,
                    kernel::MAX_OUTPUTS,
                    flow.kind(),
                    flow.device(),
                    cfg.d,
                    cfg.k,
                    cfg.context,
                    cfg.arch.describe()
                ))
            }),
        }
    }

    /// `log p(x)`, one value per row.
    pub fn log_prob(&self, xs: &Tensor) -> Result<Tensor> {
        self.flow.check(xs, "input")?;
        let c = self.context_for(xs.size()[0])?;
        let Some(pk) = self.fused_packing()? else {
            return Ok(chunked(xs, c.as_ref(), self.flow.config().units_per_row(), |xs, c| {
                let (zs, log_jacob) = self.flow.transform(xs, c);
                base::log_prob(&zs) + log_jacob
            }));
        };
        let (zs, log_det) = self.fused_forward(&pk, xs, c.as_ref())?;
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
        let c = self.context_for(xs.size()[0])?;
        let Some(pk) = self.fused_packing()? else {
            return Ok(chunked(xs, c.as_ref(), self.flow.config().units_per_row(), |xs, c| {
                self.flow.transform(xs, c).0
            }));
        };
        let (zs, _) = self.fused_forward(&pk, xs, c.as_ref())?;
        Ok(Tensor::from_slice(&zs).view([-1, self.flow.config().d]))
    }

    /// `x = f⁻¹(z)`.
    pub fn decode(&self, zs: &Tensor) -> Result<Tensor> {
        self.flow.check(zs, "latent")?;
        self.decode_unchecked(zs)
    }

    /// `n` samples `f⁻¹(z)`, `z ~ N(0, I)`, drawn with libtorch's generator (seed it with
    /// `tch::manual_seed`).
    ///
    /// Every sample is finite: a trained flow's inverse can overflow far in the base's tails (a
    /// sigmoid or exponential scale's inverse divides by a scale that underflows once its input is
    /// large, so the growth feeds on itself; sbibm's two_moons at 10⁵ simulations gave 1 in 100,000), and
    /// the rows it makes infinite or NaN are drawn again, after the first draw of all `n`, so a
    /// flow without such rows gives exactly the plain draw. An error when rows are still not
    /// finite after [`REDRAWS`] rounds (a broken model). [`Run::sample_counted`] also says how
    /// many draws were replaced.
    pub fn sample(&self, n: i64) -> Result<Tensor> {
        Ok(self.sample_counted(n)?.0)
    }

    /// [`Run::sample`] and the number of draws it replaced because they were not finite.
    pub fn sample_counted(&self, n: i64) -> Result<(Tensor, usize)> {
        if n < 0 {
            return Err(Error::InvalidConfig(format!("cannot draw {n} samples")));
        }
        let flow = self.flow;
        let (d, kind, device) = (flow.config().d, flow.kind(), flow.device());
        let c = self.context_for(n)?;
        let mut xs = self.decode_given(&base::sample(n, d, kind, device), c.as_ref())?;
        let (mut replaced, mut round) = (0, 0);
        loop {
            let rows = xs.isfinite().all_dim(1, false).logical_not().nonzero().view([-1]);
            let left = rows.size()[0];
            if left == 0 {
                return Ok((xs, replaced));
            }
            if round == REDRAWS {
                return Err(Error::Data(format!(
                    "sampling: {left} of {n} draws are still not finite after {REDRAWS} fresh draws each: \
                     the flow's inverse overflows on much of the base (a broken model, or a context far outside its data)"
                )));
            }
            replaced += left as usize;
            let ck = c.as_ref().map(|c| c.index_select(0, &rows));
            let fresh = self.decode_given(&base::sample(left, d, kind, device), ck.as_ref())?;
            xs = xs.index_copy(0, &rows, &fresh);
            round += 1;
        }
    }

    fn decode_unchecked(&self, zs: &Tensor) -> Result<Tensor> {
        let c = self.context_for(zs.size()[0])?;
        self.decode_given(zs, c.as_ref())
    }

    /// The inverse pass on `zs` given their context rows (`context_for`'s).
    fn decode_given(&self, zs: &Tensor, c: Option<&Tensor>) -> Result<Tensor> {
        let Some(pk) = self.fused_packing()? else {
            return Ok(chunked(zs, c, self.flow.config().units_per_row(), |zs, c| {
                self.flow.untransform(zs, c)
            }));
        };
        let params = pk.pack(self.flow.layers())?;
        let mut xs = kernel::flat(zs)?;
        let ctx = c.map(kernel::flat).transpose()?.unwrap_or_default();
        pk.inverse_given_par(&params, &mut xs, &ctx, threads());
        Ok(Tensor::from_slice(&xs).view([-1, self.flow.config().d]))
    }

    /// The fused forward pass on `xs` given the context `c`: `(z, Σ log|det|)` as flat row-major
    /// vectors.
    fn fused_forward(&self, pk: &Packing, xs: &Tensor, c: Option<&Tensor>) -> Result<(Vec<f32>, Vec<f32>)> {
        let params = pk.pack(self.flow.layers())?;
        let mut zs = kernel::flat(xs)?;
        let ctx = c.map(kernel::flat).transpose()?.unwrap_or_default();
        let mut log_det = vec![0.0f32; xs.size()[0] as usize];
        pk.forward_given_par(&params, &mut zs, &ctx, &mut log_det, threads());
        Ok((zs, log_det))
    }
}

/// Rounds in which [`Run::sample`] draws its non-finite rows again.
pub const REDRAWS: usize = 20;

/// Rows evaluated at once without autograd: the hidden activations of a chunk (`CHUNK × hidden`)
/// stay in cache instead of making one pass over memory per operation for the whole input.
const CHUNK: i64 = 2048;

/// Hidden activations a chunk may hold (fewer rows than [`CHUNK`] for very wide networks).
const CHUNK_UNITS: i64 = 1 << 22;

/// `f` applied to row blocks of `xs` (and of their context) without autograd, the results
/// concatenated.
fn chunked(
    xs: &Tensor,
    context: Option<&Tensor>,
    units: i64,
    f: impl Fn(&Tensor, Option<&Tensor>) -> Tensor,
) -> Tensor {
    let rows = (CHUNK_UNITS / units.max(1)).clamp(1, CHUNK);
    tch::no_grad(|| {
        let n = xs.size()[0];
        if n <= rows {
            return f(xs, context);
        }
        let cs = context.map(|c| c.split(rows, 0));
        let parts: Vec<Tensor> =
            (xs.split(rows, 0).iter().enumerate()).map(|(i, x)| f(x, cs.as_ref().map(|cs| &cs[i]))).collect();
        Tensor::cat(&parts, 0)
    })
}

/// libtorch's intra-op thread count, which the fused kernels follow.
pub(crate) fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}
