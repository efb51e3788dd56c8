//! PyTorch files in pure Rust: a reader of what `torch.save`, `torch.jit.save` and tch write, and a
//! writer of state_dicts that plain `torch.load` accepts.
//!
//! Reading never imports or runs anything: the pickles are run by a small passive virtual machine
//! (the `pickle` submodule) that turns unknown classes into opaque objects, then the model's tensors are looked
//! up in the resulting object graph:
//!
//! * `torch.save(model.state_dict())` (zip, PyTorch >= 1.6, or the legacy non-zip format);
//! * training checkpoints: a dict holding the state_dict (or the module) under a key such as
//!   `model_state_dict`, beside optimizer state, counters and anything else;
//! * `torch.save(model)`: the pickled `nn.Module`; names are rebuilt from each module's
//!   `_parameters`, persistent `_buffers` and `_modules`, in `state_dict()` order;
//! * TorchScript archives (`torch.jit.save` of traced or scripted modules) and tch `.ot` files:
//!   tensors by attribute path (`bijectors.0.sig_net.0.weight`), `|` in tch names read as `.`;
//!   constants (`constants.pkl`) are not parameters and are skipped.
//!
//! Tensors come out dense, row-major and little-endian whatever their strides, offsets or shared
//! storages in the file. Every size, offset and index in the input is checked: malformed files are
//! errors, and the memory used is bounded by a small multiple of the input size.
mod extract;
mod legacy;
mod pickle;
mod write;
mod zip_read;

pub use write::write_state_dict;

use crate::error::{Error, Result};
use extract::{Found, Walker};
use pickle::Node;
use std::borrow::Cow;
use std::collections::HashMap;

/// Element type of a tensor in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// `torch.float32`.
    F32,
    /// `torch.float64`.
    F64,
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// PyTorch's name of the dtype (`float32`, ...).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
}

/// A dense tensor: row-major (C-contiguous), little-endian bytes, `numel * size_of(dtype)` long.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: DType,
    /// Size of each dimension (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements, row-major, little-endian.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Number of elements (the product of the shape; 1 for a scalar), `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
}

impl crate::checkpoint::names::Shaped for RawTensor {
    fn dims(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d.min(i64::MAX as usize) as i64).collect()
    }
    fn same_values(&self, other: &Self) -> bool {
        self == other
    }
}

/// What was found in a file.
#[derive(Debug, Clone)]
pub struct TorchFile {
    /// What the file is, e.g. "torch.save state_dict (zip)", "training checkpoint (state_dict under
    /// 'model_state_dict', zip)", "pickled nn.Module reference.stacked_NVP (legacy)", "TorchScript
    /// archive (__torch__.reference.stacked_NVP)", "tch .ot archive".
    pub description: String,
    /// The tensors that were read, by state_dict key (`bijectors.0.sig_net.0.weight`, ...), in
    /// file order.
    pub tensors: Vec<(String, RawTensor)>,
    /// Every tensor name the file holds (read or not), in file order.
    pub described: Vec<String>,
}

/// A tensor as a file describes it, before its values are copied out: dtype, shape, and where
/// its values lie (two entries that are views of the same values compare equal).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    /// PyTorch's name of the dtype (`float32`, `int64`, ...; `unsupported` for what this reader
    /// cannot read).
    pub dtype: &'static str,
    /// Size of each dimension.
    pub shape: Vec<u64>,
    /// Storage key, offset and strides.
    place: (String, u64, Vec<u64>),
}

impl crate::checkpoint::names::Shaped for TensorMeta {
    fn dims(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d.min(i64::MAX as u64) as i64).collect()
    }
    fn same_values(&self, other: &Self) -> bool {
        self == other
    }
}

/// What a selector of tensors is given (names and descriptions in file order) and returns (the
/// names to read).
pub type Selector<'s> =
    &'s mut dyn FnMut(&[(String, TensorMeta)]) -> std::result::Result<Vec<String>, String>;

/// Reads any supported PyTorch file, detecting the format from the content (zip magic
/// `PK\x03\x04`, or a raw pickle starting `0x80 0x02` for the legacy format). `name` (usually the
/// path) starts every error message.
pub fn read(bytes: &[u8], name: &str) -> Result<TorchFile> {
    read_selected(bytes, name, &mut |metas| Ok(metas.iter().map(|(n, _)| n.clone()).collect()))
}

/// [`read`], copying out only the tensors that `select` picks from the file's descriptions (the
/// others cost no memory and may have dtypes this reader does not support).
pub fn read_selected(bytes: &[u8], name: &str, select: Selector) -> Result<TorchFile> {
    let r = if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes, select)
    } else if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        read_legacy(bytes, select)
    } else if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
        Err("a tar archive: PyTorch's oldest format (before 0.1.10) is not supported".into())
    } else if bytes.is_empty() {
        Err("empty file".into())
    } else {
        Err("not a PyTorch file (neither a zip archive nor a pickle)".into())
    };
    r.map_err(|m| Error::Data(format!("{name}: {m}")))
}

/// Output budget: what the tensors of a file may take in memory.
fn output_budget(input_len: usize) -> u64 {
    (input_len as u64).saturating_mul(8).saturating_add(64 << 20)
}

fn describe(found: &Found, container: &str) -> String {
    match found {
        Found::StateDict => format!("torch.save state_dict ({container})"),
        Found::Module(class) => format!("pickled nn.Module {class} ({container})"),
        Found::Nested(path) => format!("training checkpoint (state_dict under '{path}', {container})"),
        Found::NestedModule(path, class) => {
            format!("training checkpoint (pickled nn.Module {class} under '{path}', {container})")
        }
    }
}

/// The descriptions of the named tensors, and the names `select` picks.
fn pick<'g>(
    walker: &Walker<'g>,
    named: &[(String, &'g pickle::Value)],
    select: Selector,
) -> std::result::Result<std::collections::HashSet<String>, String> {
    let metas: Vec<(String, TensorMeta)> = named
        .iter()
        .map(|(n, v)| {
            let meta = match walker.tensor(n, v) {
                Ok(t) => TensorMeta {
                    dtype: t.elem.name(),
                    shape: t.shape.clone(),
                    place: (t.storage.key.to_string(), t.offset, t.stride.clone()),
                },
                Err(_) => {
                    TensorMeta { dtype: "unsupported", shape: vec![], place: (String::new(), 0, vec![]) }
                }
            };
            (n.clone(), meta)
        })
        .collect();
    Ok(select(&metas)?.into_iter().collect())
}

fn read_zip(bytes: &[u8], select: Selector) -> std::result::Result<TorchFile, String> {
    let archive = zip_read::Archive::parse(bytes)?;
    // Like PyTorch, the records live in the directory named by the first record's first component.
    let first = archive.entries.first().ok_or("empty zip archive")?;
    let dir = match first.name.split_once('/') {
        Some((d, _)) => d.to_string(),
        None => {
            let alt = archive.entries.iter().find_map(|e| {
                e.name.strip_suffix("/data.pkl").filter(|d| !d.contains('/')).map(str::to_string)
            });
            alt.ok_or_else(|| format!("zip archive without <dir>/data.pkl (first record: '{}')", first.name))?
        }
    };
    let pkl_name = format!("{dir}/data.pkl");
    let pkl_entry = archive.find(&pkl_name).ok_or_else(|| {
        if archive.find(&format!("{dir}/model.json")).is_some() {
            "TorchScript archive of the old (PyTorch < 1.4, model.json) format is not supported".to_string()
        } else {
            format!("zip archive without {pkl_name}: not a PyTorch file")
        }
    })?;
    let pkl = archive.read(pkl_entry)?;
    let code = format!("{dir}/code/");
    let script = archive.find(&format!("{dir}/constants.pkl")).is_some()
        || archive.entries.iter().any(|e| e.name.starts_with(&code));
    let graph = pickle::unpickle(&pkl, 0).map_err(|e| format!("{pkl_name}: {e}"))?;
    let mut walker = Walker::new(&graph.arena, bytes.len().max(pkl.len()));
    let (named, description) = if script {
        let class = match graph.arena.node(&graph.root) {
            Some(Node::Object { class, .. }) => {
                graph.arena.global_name(class).map(|(m, n)| format!("{m}.{n}"))
            }
            _ => None,
        };
        let class = class.ok_or_else(|| {
            format!(
                "TorchScript archive whose data.pkl holds a {}, not a module",
                graph.arena.type_name(&graph.root)
            )
        })?;
        let mut out = Vec::new();
        walker.script_tensors(&graph.root, String::new(), 0, &mut out)?;
        if out.is_empty() {
            return Err(format!("no tensors found in the TorchScript archive (module {class})"));
        }
        let desc = if class == "__torch__.Module" {
            "tch .ot archive".to_string()
        } else {
            format!("TorchScript archive ({class})")
        };
        (out, desc)
    } else {
        let (named, found) = walker.find_state_dict(&graph.root)?;
        if named.is_empty() {
            return Err(format!(
                "no state_dict found ({} without parameters or buffers)",
                describe(&found, "zip")
            ));
        }
        (named, describe(&found, "zip"))
    };
    // files written on big-endian machines say so (PyTorch >= 1.10); older ones are little-endian
    let little_endian = match archive.find(&format!("{dir}/byteorder")) {
        Some(e) => match &archive.read(e)?[..] {
            b"little" => true,
            b"big" => false,
            other => return Err(format!("unknown byte order {:?}", String::from_utf8_lossy(other))),
        },
        None => true,
    };
    let keep = pick(&walker, &named, select)?;
    let described: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let mut blobs: HashMap<String, Cow<'_, [u8]>> = HashMap::new();
    let mut budget = output_budget(bytes.len());
    let mut tensors = Vec::with_capacity(keep.len());
    for (name, v) in named.into_iter().filter(|(n, _)| keep.contains(n)) {
        let t = walker.tensor(&name, v)?;
        let key = &*t.storage.key;
        if !blobs.contains_key(key) {
            let rec = format!("{dir}/data/{key}");
            let e = archive
                .find(&rec)
                .ok_or_else(|| format!("tensor '{name}': its storage record {rec} is missing"))?;
            let blob = archive.read(e)?;
            if let Cow::Owned(b) = &blob {
                // an inflated record: the tensors may take more memory than the file's size suggests
                budget = budget.saturating_add((b.len() as u64).saturating_mul(8));
            }
            blobs.insert(key.to_string(), blob);
        }
        let blob = blobs.get(key).map(|b| &b[..]).unwrap_or(&[]);
        let raw = extract::materialize(&name, t, blob, little_endian, &mut budget)?;
        tensors.push((name, raw));
    }
    Ok(TorchFile { description, tensors, described })
}

fn read_legacy(bytes: &[u8], select: Selector) -> std::result::Result<TorchFile, String> {
    let file = legacy::parse(bytes)?;
    let graph = &file.object;
    let mut walker = Walker::new(&graph.arena, bytes.len());
    let (named, found) = walker.find_state_dict(&graph.root)?;
    if named.is_empty() {
        return Err(format!(
            "no state_dict found ({} without parameters or buffers)",
            describe(&found, "legacy")
        ));
    }
    let keep = pick(&walker, &named, select)?;
    let described: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let mut budget = output_budget(bytes.len());
    let mut tensors = Vec::with_capacity(keep.len());
    for (name, v) in named.into_iter().filter(|(n, _)| keep.contains(n)) {
        let t = walker.tensor(&name, v)?;
        let blob = file
            .storages
            .get(&*t.storage.key)
            .ok_or_else(|| format!("tensor '{name}': storage '{}' is not in the file", t.storage.key))?;
        let raw = extract::materialize(&name, t, blob, file.little_endian, &mut budget)?;
        tensors.push((name, raw));
    }
    Ok(TorchFile { description: describe(&found, "legacy"), tensors, described })
}

#[cfg(test)]
mod tests;
