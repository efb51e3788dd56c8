//! The flow's architecture: what the notebook passes to `R_NVP(d, k, hidden)` and
//! `stacked_NVP(d, k, hidden, n)`, which of the two it is, and the layers of each step
//! ([`Arch`]: the notebook's affine couplings, or NICE's, R-NVP's and Glow's layers).
pub use crate::arch::{Arch, Coupling, LayerKind, Mask, Mixing, Scale};
use crate::error::{Error, Result};
pub use crate::multiscale::ImageShape;

/// The widest context a configuration may declare (far beyond any real one; it bounds what a file
/// can ask for).
pub const MAX_CONTEXT: i64 = 1 << 24;

/// How the coupling layers are named in the variable store (and in PyTorch's state_dict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `stacked_NVP`: layers under `bijectors.{i}.`, flips alternating from `false`.
    Stacked,
    /// A single `R_NVP` at the root (`sig_net.0.weight`, ...), used without flip.
    Single,
}

/// Initialisation of the coupling networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// PyTorch's default for `nn.Linear` (the notebook's): weight and bias uniform in ±1/√fan_in.
    #[default]
    Pytorch,
    /// As `Pytorch`, but the last Linear of every `sig_net` and `mu_net` is zero, so the untrained
    /// flow is the identity and deep stacks start stable.
    Identity,
}

/// The architecture of an R-NVP flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowConfig {
    /// Dimension of the data.
    pub d: i64,
    /// Columns that condition an unflipped layer (`x[:, :k]`); the other `d - k` are transformed.
    pub k: i64,
    /// Hidden units of each conditioner network.
    pub hidden: i64,
    /// Number of coupling layers (1 for `Layout::Single`).
    pub layers: i64,
    /// Stacked (`bijectors.{i}`) or a single layer at the root.
    pub layout: Layout,
    /// Initialisation of freshly built weights.
    pub init: Init,
    /// The layers of each step (the notebook's: one affine coupling with `exp`, flips alternating).
    pub arch: Arch,
    /// Width `m` of the context `c` of a conditional flow `p(x | c)`, which enters every
    /// conditioner beside the conditioning columns (`[x₁, c]`); 0 for the notebook's unconditional
    /// flow.
    pub context: i64,
    /// The image shape and scales of a multi-scale image flow ([`crate::multiscale`]: `d` is
    /// `c·h·w`, `layers` the couplings per group, `hidden` the conditioners' channels); `None`
    /// for a flow of vectors.
    pub image: Option<ImageShape>,
}

impl FlowConfig {
    /// A `stacked_NVP(d, k, hidden, layers)`.
    pub fn stacked(d: i64, k: i64, hidden: i64, layers: i64) -> Self {
        FlowConfig {
            d,
            k,
            hidden,
            layers,
            layout: Layout::Stacked,
            init: Init::Pytorch,
            arch: Arch::NOTEBOOK,
            context: 0,
            image: None,
        }
    }

    /// A single `R_NVP(d, k, hidden)`.
    pub fn single(d: i64, k: i64, hidden: i64) -> Self {
        FlowConfig {
            d,
            k,
            hidden,
            layers: 1,
            layout: Layout::Single,
            init: Init::Pytorch,
            arch: Arch::NOTEBOOK,
            context: 0,
            image: None,
        }
    }

    /// The notebook's two-moons model: `stacked_NVP(2, 1, 512, layers)`.
    pub fn notebook(layers: i64) -> Self {
        Self::stacked(2, 1, 512, layers)
    }

    /// The same configuration with another initialisation.
    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// The same configuration with other layers.
    pub fn with_arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// A multi-scale image flow `arch` (`realnvp-image` or `glow-image`) of images `shape`, with
    /// `steps` couplings per group and conditioners of `hidden` channels.
    pub fn image(arch: Arch, shape: ImageShape, hidden: i64, steps: i64) -> Self {
        let d = shape.dim();
        FlowConfig {
            image: Some(shape),
            init: Init::Identity,
            ..Self::stacked(d, d / 2, hidden, steps).with_arch(arch)
        }
    }

    /// The same configuration conditioned on a context of width `m`.
    pub fn with_context(mut self, m: i64) -> Self {
        self.context = m;
        self
    }

    /// Checks that the flow can be built: `d ≥ 2`, `1 ≤ k < d`, `hidden ≥ 1`, `layers ≥ 1`
    /// (exactly 1 for a single layer).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.d < 2 {
            return bad(format!("d = {} (the data needs at least 2 dimensions)", self.d));
        }
        if self.k < 1 || self.k >= self.d {
            return bad(format!("k = {} is outside 1..{} (for d = {})", self.k, self.d - 1, self.d));
        }
        if self.hidden < 1 {
            return bad(format!("hidden = {} (needs at least 1 hidden unit)", self.hidden));
        }
        if self.layers < 1 {
            return bad(format!("layers = {} (needs at least 1 coupling layer)", self.layers));
        }
        if !(0..=MAX_CONTEXT).contains(&self.context) {
            return bad(format!("context = {} (a context has 0 to {MAX_CONTEXT} columns)", self.context));
        }
        if let Some(img) = &self.image {
            if !self.arch.image {
                return bad(format!(
                    "an image shape is given for the {} architecture, which models vectors",
                    self.arch.name()
                ));
            }
            img.validate(&self.arch)?;
            if img.dim() != self.d {
                return bad(format!(
                    "d = {} for images of {} × {} × {}",
                    self.d, img.channels, img.height, img.width
                ));
            }
            if self.context != 0 || self.layout != Layout::Stacked {
                return bad("an image flow is an unconditional stack".into());
            }
            if self.layers > crate::multiscale::MAX_STEPS {
                return bad(format!(
                    "{} couplings per group (at most {})",
                    self.layers,
                    crate::multiscale::MAX_STEPS
                ));
            }
        } else if self.arch.image {
            return bad(format!("the {} architecture needs images (a data set of images)", self.arch.name()));
        }
        if self.layout == Layout::Single && self.layers != 1 {
            return bad(format!("a single R_NVP has 1 layer, not {}", self.layers));
        }
        if self.layout == Layout::Single && self.arch != Arch::NOTEBOOK {
            return bad("a single R_NVP is the notebook's affine coupling; other layers need a stack".into());
        }
        self.arch.validate()
    }

    /// Whether the coupling of step `i` is flipped: the notebook's `i % 2 == 1` when the
    /// couplings alternate ([`Mixing::Flip`]); never when a mixing layer shuffles the columns.
    pub fn flip(&self, i: i64) -> bool {
        self.arch.mixing == Mixing::Flip && i % 2 == 1
    }

    /// Number of layers in the stack (`bijectors.{j}` for `j` below it), saturating.
    pub fn layer_count(&self) -> u64 {
        if let Some(img) = &self.image {
            return crate::multiscale::count(&self.arch, img, self.layers);
        }
        (self.layers.max(0) as u64)
            .saturating_mul(self.arch.step_len())
            .saturating_add(u64::from(self.arch.final_scale))
    }

    /// The kind of layer `j` of the stack (`None` past the end).
    pub fn layer(&self, j: u64) -> Option<LayerKind> {
        if let Some(img) = &self.image {
            return crate::multiscale::layer(&self.arch, img, self.layers, j).map(|(kind, _)| kind);
        }
        if j >= self.layer_count() {
            return None;
        }
        let step = self.arch.step_len();
        if j / step >= self.layers.max(0) as u64 {
            return Some(LayerKind::DiagonalScale);
        }
        Some(self.arch.step_layer(j % step, self.flip((j / step) as i64)))
    }

    /// The hidden activations of one row in a conditioner layer, which size the row blocks of
    /// evaluation passes: `hidden`, or for an image flow `hidden·h·w` (saturating).
    pub fn units_per_row(&self) -> i64 {
        match &self.image {
            Some(img) => self.hidden.saturating_mul(img.height).saturating_mul(img.width),
            None => self.hidden,
        }
    }

    /// Width of a coupling's conditioner input: its conditioning columns and the context.
    pub fn net_input(&self, flip: bool) -> i64 {
        self.cond_dim(flip) + self.context
    }

    /// Columns that condition a layer: `k` unflipped, the last `d - k` flipped.
    pub fn cond_dim(&self, flip: bool) -> i64 {
        if flip {
            self.d - self.k
        } else {
            self.k
        }
    }

    /// Number of variables in the state_dict (8 per notebook layer), saturating.
    pub fn variable_count(&self) -> u64 {
        self.count_keys(|_| true)
    }

    /// Number of trained parameters (the variables that are not buffers), saturating.
    pub fn parameter_count(&self) -> u64 {
        self.count_keys(|k| !is_buffer(k))
    }

    /// Number of variables whose key (within its layer) satisfies `keep`, saturating.
    fn count_keys(&self, keep: impl Fn(&str) -> bool) -> u64 {
        if self.image.is_some() {
            let count = |kind: LayerKind| kind.keys(&self.arch).iter().filter(|k| keep(k)).count() as u64;
            return (0..self.layer_count()).filter_map(|j| self.layer(j)).map(count).sum();
        }
        let count = |kind: LayerKind| kind.keys(&self.arch).iter().filter(|k| keep(k)).count() as u64;
        let step: u64 = (0..self.arch.step_len()).map(|j| count(self.arch.step_layer(j, false))).sum();
        let last = if self.arch.final_scale { count(LayerKind::DiagonalScale) } else { 0 };
        (self.layers.max(0) as u64).saturating_mul(step).saturating_add(last)
    }

    /// The state_dict names of the trained parameters (the variables that are not buffers).
    pub fn parameter_names(&self) -> impl Iterator<Item = String> + '_ {
        self.variable_names().filter(|n| !is_buffer(n.rsplit('.').next().unwrap_or("")))
    }

    /// The state_dict names of the variables, layer by layer (computed as they are taken, so a
    /// configuration read from an untrusted file costs nothing until its names are used).
    pub fn variable_names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.layer_count()).flat_map(move |j| {
            let prefix = match self.layout {
                Layout::Stacked => format!("bijectors.{j}."),
                Layout::Single => String::new(),
            };
            let kind = self.layer(j).unwrap_or(LayerKind::DiagonalScale); // invariant: j < layer_count
            kind.keys(&self.arch).iter().map(move |key| format!("{prefix}{key}"))
        })
    }

    /// The shape of the variable `name` (a state_dict key), or `None` when the model has no such
    /// variable: `N.0.weight` is `[hidden, c + m]`, `N.0.bias` `[hidden]`, `N.2.weight`
    /// `[o, hidden]`, `N.2.bias` `[o]`, with `c` the layer's conditioning columns, `m` the context's
    /// width and `o = d − c`.
    pub fn variable_shape(&self, name: &str) -> Option<Vec<i64>> {
        let (kind, key) = match self.layout {
            Layout::Single => (LayerKind::Affine { flip: false }, name),
            Layout::Stacked => {
                let rest = name.strip_prefix("bijectors.")?;
                let (index, rest) = rest.split_once('.')?;
                let j: u64 = index.parse().ok()?;
                if j.to_string() != index {
                    return None; // "01", "+1"
                }
                if let Some(img) = &self.image {
                    let (kind, shape) = crate::multiscale::layer(&self.arch, img, self.layers, j)?;
                    return crate::multiscale::variable_shape(&self.arch, self.hidden, kind, shape, rest);
                }
                (self.layer(j)?, rest)
            }
        };
        if !kind.keys(&self.arch).contains(&key) {
            return None;
        }
        let (d, h) = (self.d, self.hidden);
        let (c, o) = match kind {
            LayerKind::Affine { flip } | LayerKind::Additive { flip } => {
                (self.net_input(flip), self.d - self.cond_dim(flip))
            }
            _ => (0, 0),
        };
        Some(match key {
            "sig_net.0.weight" | "mu_net.0.weight" => vec![h, c],
            "sig_net.0.bias" | "mu_net.0.bias" => vec![h],
            "sig_net.2.weight" | "mu_net.2.weight" => vec![o, h],
            "sig_net.2.bias" | "mu_net.2.bias" | "scale_factor" => vec![o],
            "softclamp_bound" | "sigmoid_shift" | "initialized" => vec![],
            "lower" | "upper" => vec![d, d],
            _ => vec![d], // loc, log_scale, perm, sign, log_abs_s, log_gamma, beta, running_*
        })
    }
}

/// Whether a layer's key names a buffer (state that is not trained: no gradient, no optimizer
/// state) rather than a parameter.
pub fn is_buffer(key: &str) -> bool {
    matches!(
        key,
        "initialized"
            | "perm"
            | "sign"
            | "softclamp_bound"
            | "sigmoid_shift"
            | "running_mean"
            | "running_var"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_each_invalid_configuration() {
        assert!(FlowConfig::stacked(2, 1, 8, 3).validate().is_ok());
        assert!(FlowConfig::single(5, 2, 8).validate().is_ok());
        for (cfg, word) in [
            (FlowConfig::stacked(1, 1, 8, 3), "d = 1"),
            (FlowConfig::stacked(2, 0, 8, 3), "k = 0"),
            (FlowConfig::stacked(2, 2, 8, 3), "k = 2"),
            (FlowConfig::stacked(3, -1, 8, 3), "k = -1"),
            (FlowConfig::stacked(2, 1, 0, 3), "hidden = 0"),
            (FlowConfig::stacked(2, 1, 8, 0), "layers = 0"),
            (FlowConfig { layers: 2, ..FlowConfig::single(2, 1, 8) }, "single R_NVP"),
        ] {
            let err = cfg.validate().expect_err(word).to_string();
            assert!(err.contains(word), "{err} should mention {word}");
        }
    }

    #[test]
    fn variable_names_and_shapes_are_the_notebooks() {
        let cfg = FlowConfig::stacked(5, 2, 8, 3);
        let names: Vec<String> = cfg.variable_names().collect();
        assert_eq!(names.len() as u64, cfg.variable_count());
        assert_eq!(names[0], "bijectors.0.sig_net.0.weight");
        assert_eq!(names[23], "bijectors.2.mu_net.2.bias");
        assert_eq!(cfg.variable_shape("bijectors.0.sig_net.0.weight"), Some(vec![8, 2]));
        assert_eq!(cfg.variable_shape("bijectors.1.mu_net.0.weight"), Some(vec![8, 3])); // flipped
        assert_eq!(cfg.variable_shape("bijectors.1.mu_net.2.weight"), Some(vec![2, 8]));
        assert_eq!(cfg.variable_shape("bijectors.2.sig_net.2.bias"), Some(vec![3]));
        for bad in [
            "bijectors.3.sig_net.0.weight",
            "bijectors.01.sig_net.0.weight",
            "bijectors.0.scale",
            "sig_net.0.weight",
            "bijectors.-1.mu_net.0.bias",
            "bijectors.0.mu_net.1.weight",
        ] {
            assert_eq!(cfg.variable_shape(bad), None, "{bad}");
        }
        let single = FlowConfig::single(2, 1, 4);
        assert_eq!(single.variable_names().collect::<Vec<_>>().len(), 8);
        assert_eq!(single.variable_shape("mu_net.2.weight"), Some(vec![1, 4]));
        assert_eq!(single.variable_shape("bijectors.0.mu_net.2.weight"), None);
        // an absurd configuration costs nothing until its names are taken
        let huge = FlowConfig::stacked(2, 1, 1 << 40, i64::MAX);
        assert_eq!(huge.variable_names().nth(9), Some("bijectors.1.sig_net.0.bias".to_string()));
        assert_eq!(huge.variable_shape("bijectors.99999999.sig_net.0.weight"), Some(vec![1 << 40, 1]));
    }

    #[test]
    fn flips_alternate_from_false_and_condition_on_the_right_columns() {
        let cfg = FlowConfig::stacked(5, 2, 8, 4);
        assert_eq!((0..4).map(|i| cfg.flip(i)).collect::<Vec<_>>(), [false, true, false, true]);
        assert_eq!(cfg.cond_dim(false), 2);
        assert_eq!(cfg.cond_dim(true), 3);
    }
}
