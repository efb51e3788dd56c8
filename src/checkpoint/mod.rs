//! Checkpoints: a flow's weights with its architecture, data scaler and (optionally) optimizer
//! state, read and written with checks on every name and shape.
//!
//! Formats, recognised from the content when reading and chosen by the extension when writing:
//! - `.safetensors`: rnvp's native format (architecture, scaler and optimizer state inside);
//! - PyTorch `.pt`: what `torch.save` writes (state_dicts, training checkpoints, whole pickled
//!   modules, the legacy non-zip format) and TorchScript archives, read by a pure-Rust reader
//!   that never executes anything; rnvp writes plain state_dicts that `torch.load` accepts;
//! - tch `.ot`: libtorch archives (`torch.jit.load` in Python).
//!
//! Names and shapes are checked against the model before any copy.
pub mod export;
pub mod image_flow;
pub mod names;
pub mod safetensors;
pub mod torch;

pub use names::{check_tensors, infer_config};

use crate::config::{Arch, FlowConfig, Init, Layout};
use crate::data::{Bounds, BoundsMode, DataSpace, ImageSpace, Scaler, Whitening};
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
    /// Standardization of file data (`None`: the model works in the data's own coordinates); a
    /// conditional flow's covers its context columns too (`d + m` columns).
    pub scaler: Option<Scaler>,
    /// The box the modelled columns lie in (`--bounds`), and how the flow keeps to it.
    pub bounds: Option<Bounds>,
    /// The decorrelation of the standardized modelled columns (data files, by default).
    pub whiten: Option<Whitening>,
    /// For a flow of images: their shape, levels and the logit that takes them to the flow.
    pub images: Option<ImageSpace>,
    /// The model's variables by state_dict key (on the CPU).
    pub tensors: BTreeMap<String, Tensor>,
    /// Optimizer state, for `--resume`.
    pub optimizer: Option<OptimizerState>,
    /// Free-form training information (seed, data set, step, ...), kept as JSON.
    pub info: Map<String, Value>,
    /// What the file was, e.g. "safetensors (rnvp)" or "torch.save state_dict (zip)".
    pub format: String,
    /// What was stripped from the front of the model's names in the file (`module.`, `model.`,
    /// ...; empty when the names were the notebook's).
    pub prefix: String,
    /// The file's tensors that are not the model's (what a wrapper kept beside it).
    pub ignored: Vec<String>,
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

/// A file's tensor copied into libtorch.
fn raw_to_tensor(raw: &torch::RawTensor) -> std::result::Result<Tensor, String> {
    let kind = match raw.dtype {
        torch::DType::F32 => Kind::Float,
        torch::DType::F64 => Kind::Double,
        torch::DType::F16 => Kind::Half,
        torch::DType::BF16 => Kind::BFloat16,
    };
    if raw.numel().and_then(|n| n.checked_mul(raw.dtype.size())) != Some(raw.data.len()) {
        return Err("the wrong number of bytes".into());
    }
    let shape: Vec<i64> = raw.shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(&raw.data, &shape, kind)
        .map_err(|e| crate::error::first_line(&e.to_string()).to_string())
}

/// A tensor as dense little-endian bytes for the PyTorch writer.
fn raw_tensor(t: &Tensor) -> Result<torch::RawTensor> {
    let dtype = match t.kind() {
        Kind::Float => torch::DType::F32,
        Kind::Double => torch::DType::F64,
        Kind::Half => torch::DType::F16,
        Kind::BFloat16 => torch::DType::BF16,
        k => return Err(Error::Data(format!("cannot write a {k:?} tensor to a .pt file"))),
    };
    let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * dtype.size()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(torch::RawTensor { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), data })
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
            config: *flow.stack().config(),
            scaler,
            bounds: None,
            whiten: None,
            images: None,
            tensors,
            optimizer: None,
            info: Map::new(),
            format: "rnvp model".into(),
            prefix: String::new(),
            ignored: vec![],
        }
    }

    /// Reads a checkpoint, recognising its format from the content and the model's names among
    /// its tensors (see [`Checkpoint::load_with`]).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, None)
    }

    /// Reads a checkpoint; with `prefix`, the model is the tensors whose names start with it
    /// (`Some("")`: the names as they are); without, the prefix is found (see
    /// [`names::find_model`]). The file must be a regular file within
    /// [`crate::data::io::read_limit`] for checkpoints.
    pub fn load_with(path: &Path, prefix: Option<&str>) -> Result<Self> {
        let bytes = crate::data::io::read_file(path, crate::data::io::Contents::Checkpoint)?;
        Self::from_bytes_with(&bytes, &path.display().to_string(), prefix)
    }

    /// Parses a checkpoint held in memory; `name` is used in messages.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self> {
        Self::from_bytes_with(bytes, name, None)
    }

    /// [`Checkpoint::from_bytes`] with the model's prefix chosen (see [`Checkpoint::load_with`]).
    pub fn from_bytes_with(bytes: &[u8], name: &str, prefix: Option<&str>) -> Result<Self> {
        match Format::detect(bytes) {
            Some(Format::Safetensors) => safetensors::decode(bytes, name, prefix),
            Some(Format::Zip) | Some(Format::Pickle) => {
                // the model is found and its names checked on the file's descriptions of its
                // tensors; only the model's tensors are then read and copied into libtorch. Where
                // several complete models are described, their values are read and compared.
                let mut picked = None;
                let file = torch::read_selected(bytes, name, &mut |metas| {
                    let map: BTreeMap<String, &torch::TensorMeta> =
                        metas.iter().map(|(n, m)| (n.clone(), m)).collect();
                    let list = match names::search(&map, prefix, true).map_err(|e| e.to_string())? {
                        names::Search::One(f) => vec![f],
                        names::Search::Several(list) => list,
                    };
                    let keep = list
                        .iter()
                        .flat_map(|f| f.tensors.keys().map(|k| format!("{}{k}", f.prefix)))
                        .collect();
                    if let [f] = list.as_slice() {
                        picked = Some((f.config, f.prefix.clone(), f.ignored.clone()));
                    }
                    Ok(keep)
                })?;
                let read: BTreeMap<String, Tensor> = file
                    .tensors
                    .iter()
                    .map(|(k, raw)| {
                        let t = raw_to_tensor(raw)
                            .map_err(|m| Error::Data(format!("{name}: tensor '{k}': {m}")))?;
                        Ok((k.clone(), t))
                    })
                    .collect::<Result<_>>()?;
                let (config, prefix, tensors, ignored) = match picked {
                    Some((config, prefix, ignored)) => {
                        let tensors =
                            read.into_iter().map(|(k, t)| (k[prefix.len()..].to_string(), t)).collect();
                        (config, prefix, tensors, ignored)
                    }
                    None => {
                        // several described models: the same values under two names count once
                        let refs: BTreeMap<String, &Tensor> =
                            read.iter().map(|(k, t)| (k.clone(), t)).collect();
                        let f = names::find_model(&refs, None)
                            .map_err(|e| Error::Data(format!("{name}: {e}")))?;
                        let mut ignored: Vec<String> = (file.described.iter())
                            .filter(|n| {
                                !n.strip_prefix(f.prefix.as_str())
                                    .is_some_and(|rest| f.tensors.contains_key(rest))
                            })
                            .cloned()
                            .collect();
                        ignored.sort();
                        let tensors = f.tensors.into_iter().map(|(k, t)| (k, t.shallow_clone())).collect();
                        (f.config, f.prefix, tensors, ignored)
                    }
                };
                Ok(Checkpoint {
                    config,
                    scaler: None,
                    bounds: None,
                    whiten: None,
                    images: None,
                    tensors,
                    optimizer: None,
                    info: Map::new(),
                    format: file.description,
                    prefix,
                    ignored,
                })
            }
            None => Err(Error::Data(format!(
                "{name}: not a checkpoint rnvp recognises (safetensors, PyTorch .pt or TorchScript/.ot)"
            ))),
        }
    }

    /// Checks, before any work, that `path` names a format rnvp writes in an existing directory.
    pub fn check_writable(path: &Path) -> Result<()> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") | Some("ot") | Some("pt") => {}
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
        if path.extension().is_some_and(|e| e != "safetensors") && self.config.context > 0 {
            // a state_dict carries no configuration: its shapes must tell the context's width
            let read = infer_config(&self.tensors).ok().map(|c| (c.d, c.k, c.context));
            if read != Some((self.config.d, self.config.k, self.config.context)) {
                return Err(Error::Data(format!(
                    "{}: a state_dict of this conditional flow would read back with another split of its \
                     columns (its shapes cannot tell k from the context's width); keep it as .safetensors",
                    path.display()
                )));
            }
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("ot") => export::save_ot(self, path),
            Some("pt") => {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let archive: String = stem
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
                    .collect();
                let archive = if archive.is_empty() { "archive".to_string() } else { archive };
                let raws = self
                    .tensors
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), raw_tensor(t)?)))
                    .collect::<Result<Vec<_>>>()?;
                crate::data::io::write_atomic(path, &torch::write_state_dict(&raws, &archive)?)
            }
            _ => crate::data::io::write_atomic(path, &safetensors::encode(self)?),
        }
    }

    /// Checks that the tensors are exactly the architecture's variables (names and shapes),
    /// without building anything.
    pub fn check(&self) -> Result<()> {
        check_tensors(&self.config, &self.tensors)?;
        check_buffers(&self.tensors)
    }

    /// Builds the flow on `device` in `kind` and copies the weights into it (after
    /// [`Checkpoint::check`]: nothing is built for a file that does not hold the model).
    pub fn to_flow(&self, device: Device, kind: Kind) -> Result<Flow> {
        self.check()?;
        let flow = Flow::for_loading(&self.config, device, kind)?;
        load_weights(&flow, &self.tensors)?;
        Ok(flow)
    }

    /// How the user's columns reach this checkpoint's flow (bounds, scaler, context).
    pub fn space(&self) -> DataSpace<'_> {
        DataSpace {
            d: self.config.d as usize,
            m: self.config.context as usize,
            bounds: self.bounds.as_ref(),
            scaler: self.scaler.as_ref(),
            whiten: self.whiten.as_ref(),
        }
    }

    /// The metadata object rnvp stores with the tensors.
    pub(crate) fn metadata(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("format".into(), json!("rnvp"));
        m.insert("config".into(), config_json(&self.config));
        if let Some(s) = &self.scaler {
            m.insert("scaler".into(), json!({ "mean": s.mean, "std": s.std }));
        }
        if let Some(b) = &self.bounds {
            m.insert("bounds".into(), bounds_json(b));
        }
        if let Some(w) = &self.whiten {
            m.insert("whiten".into(), json!({ "chol": w.chol }));
        }
        if let Some(i) = &self.images {
            m.insert("images".into(), images_json(i));
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

/// An image space as JSON: `channels`, `height`, `width`, `levels`, `alpha`.
pub fn images_json(i: &ImageSpace) -> Value {
    json!({ "channels": i.channels, "height": i.height, "width": i.width, "levels": i.levels, "alpha": i.alpha })
}

/// Reads [`images_json`]'s object (checked: sizes up to 2²⁰, 2 to 65536 levels, α in (0, ½)).
pub(crate) fn images_from_json(v: &Value) -> std::result::Result<ImageSpace, String> {
    let size = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .filter(|&n| (1..=1 << 20).contains(&n))
            .map(|n| n as usize)
            .ok_or_else(|| format!("'{k}' is not a size from 1 to 2²⁰"))
    };
    let levels = v
        .get("levels")
        .and_then(Value::as_u64)
        .filter(|l| (2..=65536).contains(l))
        .ok_or("'levels' is not a number of levels from 2 to 65536")? as u32;
    let alpha = v.get("alpha").and_then(Value::as_f64).ok_or("'alpha' is not a number")?;
    let space = ImageSpace {
        channels: size("channels")?,
        height: size("height")?,
        width: size("width")?,
        levels,
        alpha,
    };
    space.validate().map_err(|e| e.to_string())?;
    Ok(space)
}

/// A box as JSON: `lo`, `hi`, and `mode` where it is not the logit map (files without it are
/// read as logit, as before truncation existed).
pub fn bounds_json(b: &Bounds) -> Value {
    let mut v = json!({ "lo": b.lo, "hi": b.hi });
    if b.mode != BoundsMode::Logit {
        v["mode"] = json!(b.mode.name());
    }
    v
}

/// The configuration as JSON (`d`, `k`, `hidden`, `layers`, `layout`, `init`, and for another
/// architecture than the notebook's `arch` with its parts: `coupling`, `scale`, `actnorm`,
/// `mixing`, `batch_norm`, `final_scale`).
pub fn config_json(c: &FlowConfig) -> Value {
    let mut v = json!({
        "d": c.d, "k": c.k, "hidden": c.hidden, "layers": c.layers,
        "layout": match c.layout { Layout::Stacked => "stacked", Layout::Single => "single" },
        "init": match c.init { Init::Pytorch => "pytorch", Init::Identity => "identity" },
    });
    if c.context != 0 {
        v["context"] = json!(c.context);
    }
    let a = c.arch;
    if a != Arch::NOTEBOOK {
        v["arch"] = json!({
            "name": a.name(), "coupling": a.coupling.name(), "scale": a.scale.name(), "actnorm": a.actnorm,
            "mixing": a.mixing.name(), "batch_norm": a.batch_norm, "final_scale": a.final_scale,
        });
        if a.image {
            v["arch"]["image"] = json!(true);
        }
    }
    if let Some(img) = &c.image {
        v["image"] = json!({
            "channels": img.channels, "height": img.height, "width": img.width, "scales": img.scales,
        });
    }
    v
}

/// Reads the `arch` object of [`config_json`] (absent: the notebook's).
fn arch_from_json(v: Option<&Value>) -> Result<Arch> {
    let Some(v) = v else { return Ok(Arch::NOTEBOOK) };
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Data(format!("config: arch: missing text '{k}'")))
    };
    let flag = |k: &str| {
        v.get(k)
            .and_then(Value::as_bool)
            .ok_or_else(|| Error::Data(format!("config: arch: missing flag '{k}'")))
    };
    let data = |e: Error| Error::Data(format!("config: {e}"));
    let arch = Arch {
        coupling: text("coupling")?.parse().map_err(data)?,
        scale: text("scale")?.parse().map_err(data)?,
        actnorm: flag("actnorm")?,
        mixing: text("mixing")?.parse().map_err(data)?,
        batch_norm: flag("batch_norm")?,
        final_scale: flag("final_scale")?,
        image: v.get("image").and_then(Value::as_bool).unwrap_or(false),
    };
    arch.validate().map_err(data)?;
    Ok(arch)
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
        arch: arch_from_json(v.get("arch"))?,
        context: match v.get("context") {
            None => 0,
            Some(c) => c.as_i64().ok_or_else(|| Error::Data("config: 'context' is not an integer".into()))?,
        },
        image: match v.get("image") {
            None => None,
            Some(img) => {
                let int = |k: &str| {
                    img.get(k)
                        .and_then(Value::as_i64)
                        .ok_or_else(|| Error::Data(format!("config: image: missing integer '{k}'")))
                };
                Some(crate::config::ImageShape {
                    channels: int("channels")?,
                    height: int("height")?,
                    width: int("width")?,
                    scales: int("scales")?,
                })
            }
        },
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Checks the values of the buffers a file may have filled with anything: permutations, signs,
/// ActNorm's flag, batch norm's variances and the scale maps' constants.
fn check_buffers(tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let all = |t: &Tensor, f: &dyn Fn(&Tensor) -> Tensor| f(t).all().int64_value(&[]) == 1;
    for (name, t) in tensors {
        let t = t.to_kind(Kind::Double);
        let ok = match name.rsplit('.').next().unwrap_or("") {
            "perm" => crate::layers::permutation::indices(&t, name).is_ok(),
            "sign" => all(&t, &|t| t.abs().eq(1.0)),
            "initialized" => all(&t, &|t| t.eq(0.0).logical_or(&t.eq(1.0))),
            "running_var" => all(&t, &|t| t.isfinite().logical_and(&t.ge(0.0))),
            "softclamp_bound" => all(&t, &|t| t.isfinite().logical_and(&t.gt(0.0))),
            "sigmoid_shift" | "running_mean" => all(&t, &|t| t.isfinite()),
            _ => true,
        };
        if !ok {
            let what = match name.rsplit('.').next().unwrap_or("") {
                "perm" => "is not a permutation",
                "sign" => "holds values other than +1 and −1",
                "initialized" => "is neither 0 nor 1",
                "running_var" => "holds negative or non-finite variances",
                "softclamp_bound" => "is not a positive number",
                _ => "is not finite",
            };
            return Err(Error::Data(format!("'{}' {what}", name.escape_debug())));
        }
    }
    Ok(())
}

/// Copies `tensors` into the flow's variables after checking that the names are exactly the
/// flow's (listing missing and unexpected ones) and that every shape matches.
pub fn load_weights(flow: &Flow, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    check_tensors(flow.stack().config(), tensors)?;
    let vars = flow.var_store().variables();
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            let src = tensors
                .get(&name)
                .ok_or_else(|| Error::Data(format!("invariant: checked tensor '{name}' is missing")))?;
            if src.size() != var.size() {
                return Err(Error::Shape {
                    what: format!("tensor '{name}'"),
                    expected: format!("{:?}", var.size()),
                    found: src.size(),
                });
            }
            let src = src.f_to_kind(var.kind())?.f_to_device(var.device())?;
            var.f_copy_(&src)?;
        }
        Ok(())
    })?;
    flow.stack().check_state()
}
