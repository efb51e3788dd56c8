//! The flow's architecture: what the notebook passes to `R_NVP(d, k, hidden)` and
//! `stacked_NVP(d, k, hidden, n)`, plus which of the two it is.
use crate::error::{Error, Result};

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

/// What computes a flow's passes on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The fused kernels where they apply (float32 on the CPU, `k` and `d − k` at most 4),
    /// libtorch elsewhere.
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
}

impl FlowConfig {
    /// A `stacked_NVP(d, k, hidden, layers)`.
    pub fn stacked(d: i64, k: i64, hidden: i64, layers: i64) -> Self {
        FlowConfig { d, k, hidden, layers, layout: Layout::Stacked, init: Init::Pytorch }
    }

    /// A single `R_NVP(d, k, hidden)`.
    pub fn single(d: i64, k: i64, hidden: i64) -> Self {
        FlowConfig { d, k, hidden, layers: 1, layout: Layout::Single, init: Init::Pytorch }
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
        if self.layout == Layout::Single && self.layers != 1 {
            return bad(format!("a single R_NVP has 1 layer, not {}", self.layers));
        }
        Ok(())
    }

    /// Whether layer `i` is flipped (the notebook's `i % 2 == 1`).
    pub fn flip(&self, i: i64) -> bool {
        i % 2 == 1
    }

    /// Columns that condition a layer: `k` unflipped, the last `d - k` flipped.
    pub fn cond_dim(&self, flip: bool) -> i64 {
        if flip {
            self.d - self.k
        } else {
            self.k
        }
    }

    /// Number of variables in the state_dict (8 per layer).
    pub fn variable_count(&self) -> u64 {
        (self.layers.max(0) as u64).saturating_mul(8)
    }

    /// The state_dict names of the variables, layer by layer (computed as they are taken, so a
    /// configuration read from an untrusted file costs nothing until its names are used).
    pub fn variable_names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.layers.max(0)).flat_map(move |i| {
            let prefix = match self.layout {
                Layout::Stacked => format!("bijectors.{i}."),
                Layout::Single => String::new(),
            };
            VARIABLES.iter().map(move |(net, part)| format!("{prefix}{net}.{part}"))
        })
    }

    /// The shape of the variable `name` (a state_dict key), or `None` when the model has no such
    /// variable: `N.0.weight` is `[hidden, c]`, `N.0.bias` `[hidden]`, `N.2.weight` `[o, hidden]`,
    /// `N.2.bias` `[o]`, with `c` the layer's conditioning columns and `o = d − c`.
    pub fn variable_shape(&self, name: &str) -> Option<Vec<i64>> {
        let (layer, rest) = match self.layout {
            Layout::Single => (0, name),
            Layout::Stacked => {
                let rest = name.strip_prefix("bijectors.")?;
                let (index, rest) = rest.split_once('.')?;
                let i: i64 = index.parse().ok()?;
                if i < 0 || i.to_string() != index || i >= self.layers {
                    return None; // "01", "+1" or a layer the model does not have
                }
                (i, rest)
            }
        };
        let (net, part) = rest.split_once('.')?;
        if net != "sig_net" && net != "mu_net" {
            return None;
        }
        let c = self.cond_dim(self.flip(layer));
        let o = self.d - c;
        match part {
            "0.weight" => Some(vec![self.hidden, c]),
            "0.bias" => Some(vec![self.hidden]),
            "2.weight" => Some(vec![o, self.hidden]),
            "2.bias" => Some(vec![o]),
            _ => None,
        }
    }
}

/// The variables of one coupling layer: each network's first and last Linear.
const VARIABLES: [(&str, &str); 8] = [
    ("sig_net", "0.weight"),
    ("sig_net", "0.bias"),
    ("sig_net", "2.weight"),
    ("sig_net", "2.bias"),
    ("mu_net", "0.weight"),
    ("mu_net", "0.bias"),
    ("mu_net", "2.weight"),
    ("mu_net", "2.bias"),
];

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
