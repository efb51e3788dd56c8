//! Checkpoints: a flow's weights with its architecture, data scaler and (optionally) optimizer
//! state, read and written with checks on every name and shape.
//!
//! Formats: `.safetensors` is rnvp's native format (architecture and scaler in its metadata).
//! PyTorch `.pt` and tch/TorchScript `.ot` files are detected from their content and refused with a
//! "not yet supported" message for now.
pub mod export;
pub mod safetensors;

use crate::config::{FlowConfig, Init, Layout};
use crate::data::Scaler;
use crate::error::{Error, Result};
use crate::flow::Flow;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Adam's state for every model variable, by the variable's name.
#[derive(Debug)]
pub struct OptimizerState {
    /// Number of optimizer steps taken.
    pub step: i64,
    /// First-moment estimates, by variable name.
    pub exp_avg: BTreeMap<String, Tensor>,
    /// Second-moment estimates, by variable name.
    pub exp_avg_sq: BTreeMap<String, Tensor>,
}

/// A flow's weights plus what is needed to use them.
#[derive(Debug)]
pub struct Checkpoint {
    /// The architecture.
    pub config: FlowConfig,
    /// Standardization of file data (`None`: the model works in the data's own coordinates).
    pub scaler: Option<Scaler>,
    /// The model's variables by state_dict key (on the CPU).
    pub tensors: BTreeMap<String, Tensor>,
    /// Optimizer state, for `--resume`.
    pub optimizer: Option<OptimizerState>,
    /// Free-form training information (seed, data set, step, ...), kept as JSON.
    pub info: Map<String, Value>,
    /// What the file was, e.g. "safetensors (rnvp)" or "torch.save state_dict (zip)".
    pub format: String,
}

/// The kinds of file a checkpoint path can hold, recognised from the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// safetensors (rnvp's native format).
    Safetensors,
    /// A zip archive: PyTorch's `torch.save` or a TorchScript / tch `.ot` archive.
    Zip,
    /// A raw pickle: PyTorch's legacy (non-zip) `torch.save` format.
    Pickle,
}

impl Format {
    /// Recognises a format from the first bytes of a file.
    pub fn detect(head: &[u8]) -> Option<Format> {
        if head.starts_with(b"PK\x03\x04") {
            Some(Format::Zip)
        } else if head.first() == Some(&0x80) && head.get(1).is_some_and(|v| (2..=5).contains(v)) {
            Some(Format::Pickle)
        } else if head.len() >= 9 && head[8] == b'{' {
            Some(Format::Safetensors)
        } else {
            None
        }
    }
}

fn not_yet(path: &Path, what: &str) -> Error {
    Error::Data(format!(
        "{}: {what} checkpoints are not yet supported (rnvp reads and writes .safetensors for now)",
        path.display()
    ))
}

impl Checkpoint {
    /// The flow's current weights (copied to the CPU) with the given scaler.
    pub fn from_flow(flow: &Flow, scaler: Option<Scaler>) -> Self {
        let tensors = flow
            .var_store()
            .variables()
            .into_iter()
            .map(|(name, t)| (name, t.detach().to_device(Device::Cpu).copy()))
            .collect();
        Checkpoint {
            config: *flow.config(),
            scaler,
            tensors,
            optimizer: None,
            info: Map::new(),
            format: "rnvp model".into(),
        }
    }

    /// Reads a checkpoint, recognising its format from the content.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| crate::error::io_err(path, e))?;
        match Format::detect(&bytes) {
            Some(Format::Safetensors) => safetensors::decode(&bytes, &path.display().to_string()),
            Some(Format::Zip) => Err(not_yet(path, "PyTorch (.pt) and TorchScript (.ot) zip")),
            Some(Format::Pickle) => Err(not_yet(path, "legacy PyTorch pickle (.pt)")),
            None => Err(Error::Data(format!(
                "{}: not a checkpoint rnvp recognises (expected safetensors)",
                path.display()
            ))),
        }
    }

    /// Checks, before any work, that `path` names a format rnvp writes in an existing directory.
    pub fn check_writable(path: &Path) -> Result<()> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") | Some("ot") => {}
            Some("pt") => return Err(not_yet(path, "PyTorch .pt")),
            _ => {
                return Err(Error::Data(format!(
                    "{}: unknown checkpoint extension (expected .safetensors, .pt or .ot)",
                    path.display()
                )))
            }
        }
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                Err(Error::Data(format!("{}: directory {} does not exist", path.display(), dir.display())))
            }
            _ => Ok(()),
        }
    }

    /// Writes the checkpoint atomically, in the format its extension names.
    pub fn save(&self, path: &Path) -> Result<()> {
        Self::check_writable(path)?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("ot") => export::save_ot(self, path),
            _ => crate::data::io::write_atomic(path, &safetensors::encode(self)?),
        }
    }

    /// Builds the flow on `device` in `kind` and copies the weights into it.
    pub fn to_flow(&self, device: Device, kind: Kind) -> Result<Flow> {
        let flow = Flow::new(&self.config, device, kind)?;
        load_weights(&flow, &self.tensors)?;
        Ok(flow)
    }

    /// The metadata object rnvp stores with the tensors.
    pub(crate) fn metadata(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("format".into(), json!("rnvp"));
        m.insert("config".into(), config_json(&self.config));
        if let Some(s) = &self.scaler {
            m.insert("scaler".into(), json!({ "mean": s.mean, "std": s.std }));
        }
        if let Some(o) = &self.optimizer {
            m.insert("optimizer_step".into(), json!(o.step));
        }
        if !self.info.is_empty() {
            m.insert("info".into(), Value::Object(self.info.clone()));
        }
        m
    }
}

/// The configuration as JSON (`d`, `k`, `hidden`, `layers`, `layout`, `init`).
pub fn config_json(c: &FlowConfig) -> Value {
    json!({
        "d": c.d, "k": c.k, "hidden": c.hidden, "layers": c.layers,
        "layout": match c.layout { Layout::Stacked => "stacked", Layout::Single => "single" },
        "init": match c.init { Init::Pytorch => "pytorch", Init::Identity => "identity" },
    })
}

/// Reads a configuration written by [`config_json`].
pub fn config_from_json(v: &Value) -> Result<FlowConfig> {
    let int = |k: &str| {
        v.get(k).and_then(Value::as_i64).ok_or_else(|| Error::Data(format!("config: missing integer '{k}'")))
    };
    let layout = match v.get("layout").and_then(Value::as_str) {
        Some("single") => Layout::Single,
        Some("stacked") | None => Layout::Stacked,
        Some(o) => return Err(Error::Data(format!("config: unknown layout '{o}'"))),
    };
    let init = match v.get("init").and_then(Value::as_str) {
        Some("identity") => Init::Identity,
        _ => Init::Pytorch,
    };
    let cfg = FlowConfig {
        d: int("d")?,
        k: int("k")?,
        hidden: int("hidden")?,
        layers: int("layers")?,
        layout,
        init,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Infers the architecture from state_dict names and shapes: `bijectors.{i}.…` (stacked) or
/// `sig_net.…` at the root (single); `d`, `k` and `hidden` from layer 0's `sig_net` shapes.
pub fn infer_config(tensors: &BTreeMap<String, Tensor>) -> Result<FlowConfig> {
    let (prefix, layout) = if tensors.contains_key("sig_net.0.weight") {
        ("", Layout::Single)
    } else if tensors.contains_key("bijectors.0.sig_net.0.weight") {
        ("bijectors.0.", Layout::Stacked)
    } else {
        return Err(Error::Data(
            "cannot infer the architecture: no 'bijectors.0.sig_net.0.weight' or 'sig_net.0.weight'".into(),
        ));
    };
    let shape = |name: &str| {
        tensors.get(name).map(Tensor::size).ok_or_else(|| Error::Data(format!("missing tensor '{name}'")))
    };
    let w0 = shape(&format!("{prefix}sig_net.0.weight"))?;
    let w2 = shape(&format!("{prefix}sig_net.2.weight"))?;
    if w0.len() != 2 || w2.len() != 2 {
        return Err(Error::Data(format!("{prefix}sig_net weights are not matrices: {w0:?}, {w2:?}")));
    }
    let (hidden, k, d) = (w0[0], w0[1], w0[1] + w2[0]);
    let layers = match layout {
        Layout::Single => 1,
        Layout::Stacked => (0..)
            .take_while(|i| tensors.contains_key(&format!("bijectors.{i}.sig_net.0.weight")))
            .count() as i64,
    };
    let cfg = FlowConfig { d, k, hidden, layers, layout, init: Init::Pytorch };
    cfg.validate()?;
    Ok(cfg)
}

/// Copies `tensors` into the flow's variables after checking that the names are exactly the
/// flow's (listing missing and unexpected ones) and that every shape matches.
pub fn load_weights(flow: &Flow, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let vars = flow.var_store().variables();
    let missing: Vec<&String> = vars.keys().filter(|n| !tensors.contains_key(*n)).collect();
    let unexpected: Vec<&String> = tensors.keys().filter(|n| !vars.contains_key(*n)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        let list = |v: &[&String]| {
            let mut v: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
            v.sort();
            v.join(", ")
        };
        return Err(Error::Data(format!(
            "checkpoint does not match the model: missing [{}], unexpected [{}]",
            list(&missing),
            list(&unexpected)
        )));
    }
    for (name, var) in &vars {
        let src = &tensors[name];
        if src.size() != var.size() {
            return Err(Error::Shape {
                what: format!("tensor '{name}'"),
                expected: format!("{:?}", var.size()),
                found: src.size(),
            });
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            let src = tensors[&name].f_to_kind(var.kind())?.f_to_device(var.device())?;
            var.f_copy_(&src)?;
        }
        Ok(())
    })
}
