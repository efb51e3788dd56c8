//! The layers a flow is a stack of (`shared/docs/layers.md`), one per file: the notebook's affine
//! coupling ([`RNvp`]), NICE's additive coupling and diagonal scaling, Glow's ActNorm and LU
//! linear map, fixed permutations, and the R-NVP paper's batch norm.
//!
//! Every layer maps rows `x` to `z` with a log-determinant per row and has an exact inverse.
//! Training differs from evaluation for two layers only: ActNorm initialises itself from its first
//! training batch, and batch norm normalises with the batch's statistics (and updates its running
//! averages) instead of the running averages.
pub mod actnorm;
pub mod additive;
pub mod affine;
pub mod batchnorm;
mod conditioner;
pub mod conv_coupling;
pub(crate) mod image;
pub mod lu;
pub mod permutation;
pub mod prior;
pub mod scale;
mod small_conv;

pub use actnorm::ActNorm;
pub use additive::Additive;
pub use affine::RNvp;
pub use batchnorm::{BatchNorm, BatchStats};
pub use conv_coupling::ConvCoupling;
pub use lu::LuLinear;
pub use permutation::Permutation;
pub use prior::Prior;
pub use scale::DiagonalScale;

use crate::config::{FlowConfig, LayerKind, Mixing};
use crate::error::{Error, Result};
use crate::multiscale::Shape;
use tch::nn;
use tch::Tensor;

/// How a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evaluation: every layer is a fixed map.
    Eval,
    /// A training pass: ActNorm initialises itself on its first batch, batch norm uses (and
    /// records in its running averages) the batch's statistics.
    Train,
    /// A training pass that changes no state (batch statistics, but no initialisation and no
    /// running averages): the replay of reversible backpropagation.
    Replay,
}

/// One layer of a stack.
#[derive(Debug)]
pub enum Layer {
    /// An affine coupling with its flip.
    Affine(RNvp, bool),
    /// An additive coupling.
    Additive(Additive),
    /// ActNorm.
    ActNorm(ActNorm),
    /// A fixed permutation.
    Permutation(Permutation),
    /// The LU linear map.
    Lu(LuLinear),
    /// Batch norm.
    BatchNorm(BatchNorm),
    /// The diagonal scaling.
    Scale(DiagonalScale),
    /// A vector layer (ActNorm, LU map, batch norm) acting on the channels of every pixel of the
    /// active image `[c, h, w]` of an image flow (see [`image`]).
    Pixels(Box<Layer>, Shape),
    /// The squeeze of the active image `[c, h, w]`.
    Squeeze(Shape),
    /// An affine coupling of the active image with a convolutional conditioner.
    Conv(Box<ConvCoupling>),
    /// Glow's split with a learned prior, on the active image.
    Prior(Prior),
}

impl Layer {
    /// Builds layer `kind` of a flow with configuration `cfg` under `p`; with `loading`, weights
    /// are about to be copied in: nothing is drawn from libtorch's generator (a user's seeded
    /// stream is the same with or without a checkpoint loaded), and the costly random
    /// initialisation of LU maps is skipped.
    pub fn build(p: &nn::Path, kind: LayerKind, cfg: &FlowConfig, loading: bool) -> Result<Layer> {
        let (d, k, hidden, m) = (cfg.d, cfg.k, cfg.hidden, cfg.context);
        let init = (!loading).then_some(cfg.init);
        Ok(match kind {
            LayerKind::Affine { flip } => {
                Layer::Affine(RNvp::assemble(p, d, k, hidden, flip, init, cfg.arch.scale, m)?, flip)
            }
            LayerKind::Additive { flip } => {
                Layer::Additive(Additive::assemble(p, d, k, hidden, flip, init, m))
            }
            LayerKind::ActNorm => Layer::ActNorm(ActNorm::build(p, d)),
            LayerKind::Permutation => {
                let random = cfg.arch.mixing == Mixing::Random && !loading;
                Layer::Permutation(Permutation::build(p, d, random))
            }
            LayerKind::Lu => Layer::Lu(LuLinear::build(p, d, !loading)),
            LayerKind::BatchNorm => Layer::BatchNorm(BatchNorm::build(p, d)),
            LayerKind::DiagonalScale => Layer::Scale(DiagonalScale::build(p, d)),
            LayerKind::Squeeze | LayerKind::ConvAffine { .. } | LayerKind::Prior => {
                return Err(Error::InvalidConfig(format!("a {} layer belongs to an image flow", kind.name())))
            }
        })
    }

    /// Builds layer `kind` of the image flow `cfg`, acting on the image `shape` (see
    /// [`crate::multiscale`]); `loading` as in [`Layer::build`].
    pub fn build_image(
        p: &nn::Path,
        kind: LayerKind,
        shape: Shape,
        cfg: &FlowConfig,
        loading: bool,
    ) -> Result<Layer> {
        let c = shape[0];
        let pixels = |l: Layer| Layer::Pixels(Box::new(l), shape);
        Ok(match kind {
            LayerKind::ActNorm => pixels(Layer::ActNorm(ActNorm::build(p, c))),
            LayerKind::Lu => pixels(Layer::Lu(LuLinear::build(p, c, !loading))),
            LayerKind::BatchNorm => pixels(Layer::BatchNorm(BatchNorm::build(p, c))),
            LayerKind::Squeeze => Layer::Squeeze(shape),
            LayerKind::ConvAffine { mask } => {
                let residual = !cfg.arch.actnorm;
                let l = ConvCoupling::build(p, shape, mask, cfg.hidden, cfg.arch.scale, residual, !loading);
                Layer::Conv(Box::new(l))
            }
            LayerKind::Prior => Layer::Prior(Prior::build(p, shape)),
            other => {
                return Err(Error::InvalidConfig(format!(
                    "invariant: no {} layer in an image flow",
                    other.name()
                )))
            }
        })
    }

    /// The statistics batch norm normalises the rows `xs` with in a training pass (`None` for
    /// other layers).
    pub fn batch_stats(&self, xs: &Tensor) -> Option<BatchStats> {
        match self {
            Layer::BatchNorm(_) => Some(BatchNorm::batch_stats(xs)),
            Layer::Pixels(inner, shape) if matches!(**inner, Layer::BatchNorm(_)) => {
                Some(BatchNorm::batch_stats(&image::to_pixels(&image::active(xs, *shape))))
            }
            _ => None,
        }
    }

    /// `(z, log|det|)` with `None` for a log-determinant that is 0 (volume-preserving layers).
    /// In [`Mode::Train`], first updates the layer's state from the batch. The context (one row
    /// per row of `xs`, `None` in an unconditional flow) enters the couplings only.
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>, mode: Mode) -> (Tensor, Option<Tensor>) {
        match self {
            Layer::Affine(l, flip) => {
                let (z, ld) = l.transform(xs, context, *flip);
                (z, Some(ld))
            }
            Layer::Additive(l) => (l.forward(xs, context), None),
            Layer::ActNorm(l) => {
                if mode == Mode::Train {
                    l.initialize(xs);
                }
                let (z, ld) = l.forward(xs);
                (z, Some(ld))
            }
            Layer::Permutation(l) => (l.forward(xs), None),
            Layer::Lu(l) => {
                let (z, ld) = l.forward(xs);
                (z, Some(ld))
            }
            Layer::BatchNorm(l) => {
                let stats = match mode {
                    Mode::Eval => l.running(),
                    Mode::Train | Mode::Replay => BatchNorm::batch_stats(xs),
                };
                if mode == Mode::Train {
                    l.update_running(xs);
                }
                let (z, ld) = l.forward(xs, &stats);
                (z, Some(ld))
            }
            Layer::Scale(l) => {
                let (z, ld) = l.forward(xs);
                (z, Some(ld))
            }
            Layer::Pixels(inner, shape) => image::on_active(xs, *shape, |img| {
                let (z, ld) = inner.forward(&image::to_pixels(img), None, mode);
                (image::from_pixels(&z, *shape), ld.map(|ld| image::per_image(&ld, *shape)))
            }),
            Layer::Squeeze(shape) => image::on_active(xs, *shape, |img| (image::squeeze(img), None)),
            Layer::Conv(l) => {
                let (z, ld) = image::on_active(xs, l.shape(), |img| l.forward(img));
                (z, Some(ld))
            }
            Layer::Prior(l) => {
                let (z, ld) = image::on_active(xs, l.shape(), |img| l.forward(img));
                (z, Some(ld))
            }
        }
    }

    /// `x = f⁻¹(z)` given the context; batch norm inverts with `stats` when given (the
    /// statistics a training pass used), with its running averages otherwise.
    pub fn inverse(&self, zs: &Tensor, context: Option<&Tensor>, stats: Option<&BatchStats>) -> Tensor {
        match self {
            Layer::Affine(l, flip) => l.untransform(zs, context, *flip),
            Layer::Additive(l) => l.inverse(zs, context),
            Layer::ActNorm(l) => l.inverse(zs),
            Layer::Permutation(l) => l.inverse(zs),
            Layer::Lu(l) => l.inverse(zs),
            Layer::BatchNorm(l) => match stats {
                Some(s) => l.inverse(zs, s),
                None => l.inverse(zs, &l.running()),
            },
            Layer::Scale(l) => l.inverse(zs),
            Layer::Pixels(inner, shape) => {
                let (x, ()) = image::on_active(zs, *shape, |img| {
                    (image::from_pixels(&inner.inverse(&image::to_pixels(img), None, stats), *shape), ())
                });
                x
            }
            Layer::Squeeze(shape) => {
                let squeezed = crate::multiscale::squeezed(*shape);
                image::on_active(zs, squeezed, |img| (image::unsqueeze(img), ())).0
            }
            Layer::Conv(l) => image::on_active(zs, l.shape(), |img| (l.inverse(img), ())).0,
            Layer::Prior(l) => image::on_active(zs, l.shape(), |img| (l.inverse(img), ())).0,
        }
    }

    /// Checks state a file may have filled with anything (permutations, signs).
    pub fn check_state(&self) -> Result<()> {
        match self {
            Layer::Permutation(l) => l.check(),
            Layer::Lu(l) => l.check(),
            Layer::Pixels(inner, _) => inner.check_state(),
            Layer::ActNorm(l) => {
                let v = l.initialized_value();
                if v != 0.0 && v != 1.0 {
                    return Err(Error::Data(format!("ActNorm's 'initialized' is {v}, not 0 or 1")));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The layer's variables (parameters and buffers) by state_dict key within the layer, in the
    /// order of [`LayerKind::keys`].
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        match self {
            Layer::Affine(l, _) => l.variables(),
            Layer::Additive(l) => l.variables(),
            Layer::ActNorm(l) => l.variables(),
            Layer::Permutation(l) => l.variables(),
            Layer::Lu(l) => l.variables(),
            Layer::BatchNorm(l) => l.variables(),
            Layer::Scale(l) => l.variables(),
            Layer::Pixels(inner, _) => inner.variables(),
            Layer::Squeeze(_) => vec![],
            Layer::Conv(l) => l.variables(),
            Layer::Prior(l) => l.variables(),
        }
    }

    /// A coupling's first weight (its dtype and device are the model's); `None` for other layers.
    pub fn probe(&self) -> Option<Tensor> {
        match self {
            Layer::Affine(l, _) => Some(l.probe().shallow_clone()),
            Layer::Additive(l) => Some(l.probe().shallow_clone()),
            Layer::Conv(l) => Some(l.probe().shallow_clone()),
            Layer::Prior(l) => Some(l.probe().shallow_clone()),
            _ => None,
        }
    }

    /// What the layer is.
    pub fn kind(&self) -> LayerKind {
        match self {
            Layer::Affine(_, flip) => LayerKind::Affine { flip: *flip },
            Layer::Additive(l) => LayerKind::Additive { flip: l.flip() },
            Layer::ActNorm(_) => LayerKind::ActNorm,
            Layer::Permutation(_) => LayerKind::Permutation,
            Layer::Lu(_) => LayerKind::Lu,
            Layer::BatchNorm(_) => LayerKind::BatchNorm,
            Layer::Scale(_) => LayerKind::DiagonalScale,
            Layer::Pixels(inner, _) => inner.kind(),
            Layer::Squeeze(_) => LayerKind::Squeeze,
            Layer::Conv(l) => LayerKind::ConvAffine { mask: l.mask() },
            Layer::Prior(_) => LayerKind::Prior,
        }
    }
}

/// A log-determinant `s` (0-dim, the same for every row) as one value per row of `xs`, with the
/// row count taken from `xs` in the graph (so that a traced export takes any batch size).
pub(crate) fn per_row(s: Tensor, xs: &Tensor) -> Tensor {
    s.expand_as(&xs.select(1, 0))
}

/// The two column groups of a coupling: unflipped, `x₁ = x[:, :k]` conditions and `x₂ = x[:, k:]`
/// is transformed; flipped, the roles swap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Halves {
    pub d: i64,
    pub k: i64,
    pub flip: bool,
}

impl Halves {
    /// Width of the conditioning part.
    pub fn cond(&self) -> i64 {
        if self.flip {
            self.d - self.k
        } else {
            self.k
        }
    }

    /// `(conditioning, transformed)` columns of `xs`.
    pub fn split(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let (a, b) = (xs.narrow(1, 0, self.k), xs.narrow(1, self.k, self.d - self.k));
        if self.flip {
            (b, a)
        } else {
            (a, b)
        }
    }

    /// The rows back in column order.
    pub fn merge(&self, cond: &Tensor, other: &Tensor) -> Tensor {
        if self.flip {
            Tensor::cat(&[other, cond], -1)
        } else {
            Tensor::cat(&[cond, other], -1)
        }
    }
}

/// Checks that `xs` is `[n, d]` with the dtype and device of `like` (a model weight).
pub(crate) fn check_input(xs: &Tensor, what: &str, d: i64, like: &Tensor) -> Result<()> {
    let size = xs.size();
    if size.len() != 2 || size[1] != d {
        return Err(Error::Shape { what: what.into(), expected: format!("[n, {d}]"), found: size });
    }
    if xs.kind() != like.kind() {
        return Err(Error::Kind { what: what.into(), expected: like.kind(), found: xs.kind() });
    }
    if xs.device() != like.device() {
        return Err(Error::Device { what: what.into(), expected: like.device(), found: xs.device() });
    }
    Ok(())
}
