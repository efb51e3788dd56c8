//! Which layers make up each step of a flow: the notebook's affine coupling, or the layers of
//! NICE, R-NVP and Glow (`shared/docs/layers.md`), named as `--arch` names them.
//!
//! A stack is `bijectors.{j}` for `j = 0, 1, …`: for each step, in order, an optional ActNorm,
//! an optional mixing layer (a permutation or Glow's LU-parametrised linear map), the coupling,
//! an optional batch-norm layer; then, optionally, NICE's diagonal scaling layer. Every layer's
//! state_dict keys differ from every other's, so a file's names say what each layer is.
use crate::error::{Error, Result};
use std::str::FromStr;

/// The coupling of each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coupling {
    /// `z₂ = x₂ ⊙ exp(g(h)) + μ(x₁)` with `h = sig_net(x₁)` (R-NVP; the notebook's `R_NVP`).
    Affine,
    /// `z₂ = x₂ + μ(x₁)` (NICE): volume-preserving.
    Additive,
}

/// The map `log s = g(h)` from `sig_net`'s output to an affine coupling's log-scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// `g(h) = h` (the notebook).
    Exp,
    /// `g(h) = h / (1 + |h| / B)`, `B = ln 1000` (zuko).
    SoftClamp,
    /// `g(h) = log σ(h + 2)` (Glow): contracts only.
    Sigmoid,
    /// `g(h) = γ ⊙ tanh(h)`, `γ` learned (the R-NVP paper).
    Tanh,
}

/// What mixes the columns between couplings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mixing {
    /// The notebook's alternating flip of the couplings' halves (no layer).
    Flip,
    /// A layer reversing the columns before each coupling.
    Reverse,
    /// A layer applying a fixed random permutation (drawn when the model is built) before each
    /// coupling.
    Random,
    /// Glow's invertible linear map `W = P L U` (LU-parametrised, `P` fixed) before each coupling.
    Lu,
}

/// One layer of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Glow's per-dimension affine normalisation with data-dependent initialisation.
    ActNorm,
    /// A fixed permutation of the columns.
    Permutation,
    /// Glow's LU-parametrised invertible linear map.
    Lu,
    /// An affine coupling (flipped: conditioned on the last `d − k` columns).
    Affine {
        /// Whether the halves swap roles.
        flip: bool,
    },
    /// NICE's additive coupling.
    Additive {
        /// Whether the halves swap roles.
        flip: bool,
    },
    /// The batch-norm flow layer of the R-NVP paper.
    BatchNorm,
    /// NICE's final diagonal scaling layer.
    DiagonalScale,
    /// An image's squeeze `[c, h, w] → [4c, h/2, w/2]` (no variables).
    Squeeze,
    /// An affine coupling of images with a convolutional conditioner.
    ConvAffine {
        /// Which pixels or channels condition.
        mask: Mask,
    },
    /// Glow's split: the second half of the channels, about to be factored out, standardized by a
    /// mean and log-scale computed from the first half (the learned prior).
    Prior,
}

/// Which part of an image conditions a convolutional coupling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// The pixels with `(i + j) % 2 == parity` condition, the others are transformed.
    Checkerboard {
        /// The parity of the conditioning pixels.
        parity: bool,
    },
    /// The first half of the channels conditions the second (flipped: the reverse).
    Channel {
        /// Whether the halves swap roles.
        flip: bool,
    },
}

/// The layers of each step of a stack (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// The coupling.
    pub coupling: Coupling,
    /// The scale map of an affine coupling ([`Scale::Exp`] for an additive one).
    pub scale: Scale,
    /// An ActNorm layer first in each step.
    pub actnorm: bool,
    /// What mixes the columns.
    pub mixing: Mixing,
    /// A batch-norm layer last in each step.
    pub batch_norm: bool,
    /// NICE's diagonal scaling layer after the last step.
    pub final_scale: bool,
    /// A multi-scale image flow ([`crate::multiscale`]): the layers above act on images through
    /// convolutional couplings, squeezes and factored-out channels.
    pub image: bool,
}

impl Arch {
    /// The notebook's stacked R-NVP: affine couplings with `exp`, alternating flips.
    pub const NOTEBOOK: Arch = Arch {
        coupling: Coupling::Affine,
        scale: Scale::Exp,
        actnorm: false,
        mixing: Mixing::Flip,
        batch_norm: false,
        final_scale: false,
        image: false,
    };
    /// NICE: additive couplings with alternating partitions, then the diagonal scaling layer.
    pub const NICE: Arch = Arch { coupling: Coupling::Additive, final_scale: true, ..Arch::NOTEBOOK };
    /// The R-NVP paper: affine couplings with the `tanh` scale, batch norm after each, alternating.
    pub const REALNVP: Arch = Arch { scale: Scale::Tanh, batch_norm: true, ..Arch::NOTEBOOK };
    /// Glow: ActNorm → LU linear map → affine coupling with the `sigmoid` scale.
    pub const GLOW: Arch =
        Arch { scale: Scale::Sigmoid, actnorm: true, mixing: Mixing::Lu, ..Arch::NOTEBOOK };

    /// The R-NVP paper's multi-scale image flow: checkerboard then channel-wise affine couplings
    /// with the `tanh` scale and residual convolutional conditioners, batch norm after each,
    /// squeezes, half the channels factored out at each scale.
    pub const REALNVP_IMAGE: Arch = Arch { image: true, ..Arch::REALNVP };
    /// Glow's image flow: per level a squeeze, steps of ActNorm → invertible 1×1 convolution (LU)
    /// → affine coupling with the `sigmoid` scale, then a split with a learned prior.
    pub const GLOW_IMAGE: Arch = Arch { image: true, ..Arch::GLOW };

    /// The named architectures, as `--arch` names them.
    pub const NAMED: [(&'static str, Arch); 6] = [
        ("notebook", Arch::NOTEBOOK),
        ("nice", Arch::NICE),
        ("realnvp", Arch::REALNVP),
        ("glow", Arch::GLOW),
        ("realnvp-image", Arch::REALNVP_IMAGE),
        ("glow-image", Arch::GLOW_IMAGE),
    ];

    /// The architecture's name, or "custom" for another combination.
    pub fn name(&self) -> &'static str {
        Arch::NAMED.iter().find(|(_, a)| a == self).map_or("custom", |(n, _)| n)
    }

    /// A one-line description: the name and, for a custom stack, its parts.
    pub fn describe(&self) -> String {
        let name = self.name();
        if name != "custom" {
            return name.to_string();
        }
        let mut parts = vec![];
        if self.actnorm {
            parts.push("actnorm".to_string());
        }
        if self.mixing != Mixing::Flip {
            parts.push(format!("mixing {}", self.mixing.name()));
        }
        parts.push(match self.coupling {
            Coupling::Affine => format!("affine coupling ({})", self.scale.name()),
            Coupling::Additive => "additive coupling".into(),
        });
        if self.mixing == Mixing::Flip {
            parts.push("flips alternating".into());
        }
        if self.batch_norm {
            parts.push("batch norm".into());
        }
        if self.final_scale {
            parts.push("final diagonal scaling".into());
        }
        format!("custom: {}", parts.join(" → "))
    }

    /// Checks that the combination is meaningful: an additive coupling has no scale map; the
    /// image flows are the two named ones.
    pub fn validate(&self) -> Result<()> {
        if self.image && *self != Arch::REALNVP_IMAGE && *self != Arch::GLOW_IMAGE {
            return Err(Error::InvalidConfig(
                "an image flow is realnvp-image or glow-image: --coupling, --scale, --actnorm, --mixing, \
                 --batch-norm and --final-scale do not change its layers"
                    .into(),
            ));
        }
        if self.coupling == Coupling::Additive && self.scale != Scale::Exp {
            return Err(Error::InvalidConfig(format!(
                "an additive coupling has no scale map (--scale {} applies to affine couplings)",
                self.scale.name()
            )));
        }
        Ok(())
    }

    /// Layers per step.
    pub fn step_len(&self) -> u64 {
        u64::from(self.actnorm) + u64::from(self.mixing != Mixing::Flip) + 1 + u64::from(self.batch_norm)
    }

    /// The kind of the `j`-th layer of a step (`j < step_len()`) whose coupling has `flip`.
    pub fn step_layer(&self, j: u64, flip: bool) -> LayerKind {
        let mut kinds = [LayerKind::ActNorm; 4];
        let mut n = 0;
        if self.actnorm {
            kinds[n] = LayerKind::ActNorm;
            n += 1;
        }
        match self.mixing {
            Mixing::Flip => {}
            Mixing::Lu => {
                kinds[n] = LayerKind::Lu;
                n += 1;
            }
            Mixing::Reverse | Mixing::Random => {
                kinds[n] = LayerKind::Permutation;
                n += 1;
            }
        }
        kinds[n] = match self.coupling {
            Coupling::Affine => LayerKind::Affine { flip },
            Coupling::Additive => LayerKind::Additive { flip },
        };
        n += 1;
        if self.batch_norm {
            kinds[n] = LayerKind::BatchNorm;
        }
        kinds[(j as usize).min(3)]
    }
}

const NETS: [&str; 8] = [
    "sig_net.0.weight",
    "sig_net.0.bias",
    "sig_net.2.weight",
    "sig_net.2.bias",
    "mu_net.0.weight",
    "mu_net.0.bias",
    "mu_net.2.weight",
    "mu_net.2.bias",
];

/// An affine coupling's keys with a scale map other than `exp`: the nets, then the map's constant
/// (a buffer that marks the map in a file) or its parameter.
const fn nets_and(marker: &'static str) -> [&'static str; 9] {
    let mut keys = [marker; 9];
    let mut i = 0;
    while i < NETS.len() {
        keys[i] = NETS[i];
        i += 1;
    }
    keys
}
const SOFTCLAMP_KEYS: [&str; 9] = nets_and("softclamp_bound");
const CONV: [&str; 6] =
    ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"];
/// A convolutional coupling's keys: its network, then the scale map's variable.
const fn conv_and(marker: &'static str) -> [&'static str; 7] {
    let mut keys = [marker; 7];
    let mut i = 0;
    while i < CONV.len() {
        keys[i] = CONV[i];
        i += 1;
    }
    keys
}
const CONV_SOFTCLAMP_KEYS: [&str; 7] = conv_and("softclamp_bound");
const CONV_SIGMOID_KEYS: [&str; 7] = conv_and("sigmoid_shift");
const CONV_TANH_KEYS: [&str; 7] = conv_and("scale_factor");
const SIGMOID_KEYS: [&str; 9] = nets_and("sigmoid_shift");
const TANH_KEYS: [&str; 9] = nets_and("scale_factor");

impl LayerKind {
    /// The layer's state_dict keys (parameters and saved buffers), in the order they are built.
    pub fn keys(&self, arch: &Arch) -> &'static [&'static str] {
        match self {
            LayerKind::ActNorm => &["loc", "log_scale", "initialized"],
            LayerKind::Permutation => &["perm"],
            LayerKind::Lu => &["lower", "upper", "log_abs_s", "perm", "sign"],
            LayerKind::Affine { .. } => match arch.scale {
                Scale::Exp => &NETS,
                Scale::SoftClamp => &SOFTCLAMP_KEYS,
                Scale::Sigmoid => &SIGMOID_KEYS,
                Scale::Tanh => &TANH_KEYS,
            },
            LayerKind::Additive { .. } => &NETS[4..],
            LayerKind::BatchNorm => &["log_gamma", "beta", "running_mean", "running_var"],
            LayerKind::DiagonalScale => &["log_scale"],
            LayerKind::Squeeze => &[],
            LayerKind::ConvAffine { .. } => match arch.scale {
                Scale::Exp => &CONV,
                Scale::SoftClamp => &CONV_SOFTCLAMP_KEYS,
                Scale::Sigmoid => &CONV_SIGMOID_KEYS,
                Scale::Tanh => &CONV_TANH_KEYS,
            },
            LayerKind::Prior => &["prior.weight", "prior.bias"],
        }
    }

    /// What the layer is, in words.
    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::ActNorm => "actnorm",
            LayerKind::Permutation => "permutation",
            LayerKind::Lu => "lu",
            LayerKind::Affine { .. } => "affine",
            LayerKind::Additive { .. } => "additive",
            LayerKind::BatchNorm => "batchnorm",
            LayerKind::DiagonalScale => "scale",
            LayerKind::Squeeze => "squeeze",
            LayerKind::ConvAffine { .. } => "conv-affine",
            LayerKind::Prior => "prior",
        }
    }

    /// What a layer is from whether it has each of its distinguishing keys (`has(key)`), with its
    /// scale map for an affine coupling; `None` when no layer has these keys.
    pub fn recognise(has: impl Fn(&str) -> bool) -> Option<(LayerKind, Scale)> {
        let kind = if has("net.0.weight") {
            LayerKind::ConvAffine { mask: Mask::Channel { flip: false } }
        } else if has("prior.weight") {
            LayerKind::Prior
        } else if has("sig_net.0.weight") {
            LayerKind::Affine { flip: false }
        } else if has("mu_net.0.weight") {
            LayerKind::Additive { flip: false }
        } else if has("loc") {
            LayerKind::ActNorm
        } else if has("lower") {
            LayerKind::Lu
        } else if has("perm") {
            LayerKind::Permutation
        } else if has("running_mean") {
            LayerKind::BatchNorm
        } else if has("log_scale") {
            LayerKind::DiagonalScale
        } else {
            return None;
        };
        let scale = if has("softclamp_bound") {
            Scale::SoftClamp
        } else if has("sigmoid_shift") {
            Scale::Sigmoid
        } else if has("scale_factor") {
            Scale::Tanh
        } else {
            Scale::Exp
        };
        Some((kind, scale))
    }
}

impl Scale {
    /// The name `--scale` takes.
    pub fn name(&self) -> &'static str {
        match self {
            Scale::Exp => "exp",
            Scale::SoftClamp => "softclamp",
            Scale::Sigmoid => "sigmoid",
            Scale::Tanh => "tanh",
        }
    }
}

impl Mixing {
    /// The name `--mixing` takes.
    pub fn name(&self) -> &'static str {
        match self {
            Mixing::Flip => "flip",
            Mixing::Reverse => "reverse",
            Mixing::Random => "random",
            Mixing::Lu => "lu",
        }
    }
}

impl Coupling {
    /// The name `--coupling` takes.
    pub fn name(&self) -> &'static str {
        match self {
            Coupling::Affine => "affine",
            Coupling::Additive => "additive",
        }
    }
}

/// Parses `s` as one of `options` (by their names).
fn parse<T: Copy>(what: &str, s: &str, options: &[T], name: impl Fn(&T) -> &'static str) -> Result<T> {
    options.iter().find(|o| name(o) == s).copied().ok_or_else(|| {
        let names: Vec<&str> = options.iter().map(&name).collect();
        Error::InvalidConfig(format!("{what} '{s}': expected one of {}", names.join(", ")))
    })
}

impl FromStr for Scale {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse("scale", s, &[Scale::Exp, Scale::SoftClamp, Scale::Sigmoid, Scale::Tanh], Scale::name)
    }
}

impl FromStr for Mixing {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse("mixing", s, &[Mixing::Flip, Mixing::Reverse, Mixing::Random, Mixing::Lu], Mixing::name)
    }
}

impl FromStr for Coupling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse("coupling", s, &[Coupling::Affine, Coupling::Additive], Coupling::name)
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let named: Vec<(&str, Arch)> = Arch::NAMED.to_vec();
        parse("architecture", s, &named, |(n, _)| n).map(|(_, a)| a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_steps_have_their_layers() {
        for (name, arch) in Arch::NAMED {
            assert_eq!(name.parse::<Arch>().unwrap(), arch);
            assert_eq!(arch.name(), name);
        }
        assert!("glw".parse::<Arch>().unwrap_err().to_string().contains("notebook, nice, realnvp, glow"));
        assert_eq!(Arch::NOTEBOOK.step_len(), 1);
        assert_eq!(Arch::GLOW.step_len(), 3);
        let kinds: Vec<LayerKind> = (0..3).map(|j| Arch::GLOW.step_layer(j, false)).collect();
        assert_eq!(kinds, [LayerKind::ActNorm, LayerKind::Lu, LayerKind::Affine { flip: false }]);
        assert_eq!(Arch::REALNVP.step_layer(1, true), LayerKind::BatchNorm);
        let custom = Arch { mixing: Mixing::Random, ..Arch::NICE };
        assert_eq!(custom.name(), "custom");
        assert!(custom.describe().contains("mixing random"), "{}", custom.describe());
        assert!(Arch { scale: Scale::Tanh, ..Arch::NICE }.validate().is_err());
    }

    #[test]
    fn every_layer_is_recognised_from_its_keys() {
        for scale in [Scale::Exp, Scale::SoftClamp, Scale::Sigmoid, Scale::Tanh] {
            let arch = Arch { scale, ..Arch::NOTEBOOK };
            for kind in [
                LayerKind::ActNorm,
                LayerKind::Permutation,
                LayerKind::Lu,
                LayerKind::Affine { flip: false },
                LayerKind::BatchNorm,
                LayerKind::DiagonalScale,
            ] {
                let keys = kind.keys(&arch);
                let (found, s) = LayerKind::recognise(|k| keys.contains(&k)).unwrap();
                assert_eq!(found, kind);
                if kind == (LayerKind::Affine { flip: false }) {
                    assert_eq!(s, scale);
                }
            }
        }
        let keys = LayerKind::Additive { flip: false }.keys(&Arch::NICE);
        assert_eq!(
            LayerKind::recognise(|k| keys.contains(&k)).unwrap().0,
            LayerKind::Additive { flip: false }
        );
        assert!(LayerKind::recognise(|_| false).is_none());
    }
}
