//! The safetensors format: an 8-byte little-endian header length, a JSON header
//! (`{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {string: string}}`), then the
//! raw little-endian tensor data. rnvp keeps its configuration, scaler and training information as
//! JSON strings in `__metadata__`, and Adam's moments as `optimizer.exp_avg.<name>` and
//! `optimizer.exp_avg_sq.<name>` tensors.
mod header;

use super::names::{self, Shaped};
use super::{check_tensors, config_from_json, Checkpoint, OptimizerState};
use crate::data::{Bounds, BoundsMode, Scaler, Whitening};
use crate::error::{Error, Result};
use header::{Entry, Header};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

const EXP_AVG: &str = "optimizer.exp_avg.";
const EXP_AVG_SQ: &str = "optimizer.exp_avg_sq.";
/// Larger headers are refused (rnvp's are a few kB).
const MAX_HEADER: u64 = 100 << 20;

fn dtype_of(kind: Kind) -> Result<(&'static str, usize)> {
    Ok(match kind {
        Kind::Float => ("F32", 4),
        Kind::Double => ("F64", 8),
        Kind::Half => ("F16", 2),
        Kind::BFloat16 => ("BF16", 2),
        k => return Err(Error::Data(format!("cannot store a {k:?} tensor"))),
    })
}

/// libtorch's kind for the dtypes rnvp reads (their sizes: [`element_size`]).
fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        _ => return None,
    })
}

/// The checkpoint as safetensors bytes.
pub fn encode(ck: &Checkpoint) -> Result<Vec<u8>> {
    let mut named: Vec<(String, &Tensor)> = ck.tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    if let Some(o) = &ck.optimizer {
        named.extend(o.exp_avg.iter().map(|(n, t)| (format!("{EXP_AVG}{n}"), t)));
        named.extend(o.exp_avg_sq.iter().map(|(n, t)| (format!("{EXP_AVG_SQ}{n}"), t)));
    }
    let mut header = Map::new();
    let mut data: Vec<u8> = vec![];
    for (name, t) in named {
        let (dtype, size) = dtype_of(t.kind())?;
        let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let numel = t.numel();
        let start = data.len();
        data.resize(start + numel * size, 0);
        t.f_copy_data_u8(&mut data[start..], numel)?;
        header.insert(
            name,
            serde_json::json!({ "dtype": dtype, "shape": t.size(), "data_offsets": [start, data.len()] }),
        );
    }
    let meta: Map<String, Value> =
        ck.metadata().into_iter().map(|(k, v)| (k, Value::String(v.to_string()))).collect();
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut text = Value::Object(header).to_string().into_bytes();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    Ok(out)
}

/// A tensor of the file before it is copied anywhere: element type, shape and bytes (checked
/// against the data section).
#[derive(Debug, Clone)]
struct View<'a> {
    /// libtorch's kind, for the dtypes rnvp reads.
    kind: Option<Kind>,
    dtype: Box<str>,
    shape: Vec<i64>,
    bytes: &'a [u8],
}

impl Shaped for View<'_> {
    fn dims(&self) -> Vec<i64> {
        self.shape.clone()
    }
    fn same_values(&self, other: &Self) -> bool {
        self.dtype == other.dtype && self.shape == other.shape && self.bytes == other.bytes
    }
}

impl View<'_> {
    fn tensor(&self) -> Result<Tensor> {
        let kind = self.kind.ok_or_else(|| {
            Error::Data(format!("dtype {} is not supported (F32, F64, F16, BF16)", self.dtype.escape_debug()))
        })?;
        Ok(Tensor::f_from_data_size(self.bytes, &self.shape, kind)?)
    }
}

/// Longest `info` metadata rnvp parses (it writes a few hundred bytes).
const MAX_INFO: usize = 1 << 20;

/// Parses safetensors bytes; `name` is used in messages. The architecture rnvp stores in the
/// metadata must match the tensors the file holds (checked before anything is copied or built);
/// files without it (written by Python's safetensors) are read like PyTorch state_dicts, `prefix`
/// as in [`Checkpoint::load_with`]. Only the model's tensors (and the optimizer state, when the
/// file has one) are copied into libtorch.
pub fn decode(bytes: &[u8], name: &str, prefix: Option<&str>) -> Result<Checkpoint> {
    let bad = |m: String| Error::Data(format!("{name}: {m}"));
    let len_bytes: [u8; 8] =
        bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("truncated".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER || header_len > (bytes.len() - 8) as u64 {
        return Err(bad(format!("header length {header_len} exceeds the file ({} bytes)", bytes.len())));
    }
    let header_end = 8 + header_len as usize;
    let header: Header = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| bad(format!("safetensors header is not valid: {e}")))?;
    let data = &bytes[header_end..];

    // metadata values are strings; rnvp's hold JSON, parsed where used
    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in header.metadata {
        let text = v.ok_or_else(|| bad(format!("metadata '{}' is not a string", k.escape_debug())))?;
        meta.insert(k, text);
    }
    // the values parsed before their sizes are known from the config: an architecture's and a
    // step's text is short
    for (key, most) in [("config", 4096), ("optimizer_step", 32)] {
        if let Some(t) = meta.get(key).filter(|t| t.len() > most) {
            return Err(bad(format!(
                "metadata '{key}': {} bytes, more than the {most} it can need",
                t.len()
            )));
        }
    }
    let json = |key: &str| {
        meta.get(key).map(|t| serde_json::from_str::<Value>(t).unwrap_or(Value::String(t.clone())))
    };

    let mut views = BTreeMap::new();
    let mut exp_avg = BTreeMap::new();
    let mut exp_avg_sq = BTreeMap::new();
    for (key, entry) in header.tensors {
        let v = view(entry, data).map_err(|m| bad(format!("tensor '{}': {m}", key.escape_debug())))?;
        let (map, n) = if let Some(n) = key.strip_prefix(EXP_AVG) {
            (&mut exp_avg, n)
        } else if let Some(n) = key.strip_prefix(EXP_AVG_SQ) {
            (&mut exp_avg_sq, n)
        } else {
            (&mut views, key.as_str())
        };
        if map.insert(n.to_string(), v).is_some() {
            return Err(bad(format!("tensor '{key}' appears twice")));
        }
    }
    let (config, views, prefix, ignored) = match json("config") {
        Some(c) => {
            let config = config_from_json(&c).map_err(|e| bad(e.to_string()))?;
            let views = match prefix {
                Some(p) if !p.is_empty() => views
                    .into_iter()
                    .filter_map(|(n, t)| n.strip_prefix(p).map(|n| (n.to_string(), t)))
                    .collect(),
                _ => views,
            };
            check_tensors(&config, &views).map_err(|e| match prefix {
                Some(p) if !p.is_empty() => {
                    bad(format!("metadata (names under the prefix '{}'): {e}", p.escape_debug()))
                }
                _ => bad(format!("metadata: {e}")),
            })?;
            (config, views, prefix.unwrap_or("").to_string(), vec![])
        }
        None => {
            let f = names::find_model(&views, prefix).map_err(|e| bad(e.to_string()))?;
            drop(views);
            (f.config, f.tensors, f.prefix, f.ignored)
        }
    };
    let materialize = |views: &BTreeMap<String, View>| -> Result<BTreeMap<String, Tensor>> {
        views
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.tensor().map_err(|e| bad(format!("tensor '{n}': {e}")))?)))
            .collect()
    };
    let tensors = materialize(&views)?;
    let step = match json("optimizer_step") {
        None => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| bad(format!("optimizer_step {v} is not an integer")))?),
    };
    let optimizer = match step {
        Some(step) if step < 0 => return Err(bad(format!("optimizer_step {step} is negative"))),
        Some(step) => {
            for (what, m) in [("exp_avg", &exp_avg), ("exp_avg_sq", &exp_avg_sq)] {
                names::check_parameters(&config, m)
                    .map_err(|e| bad(format!("optimizer state {what}: {e}")))?;
            }
            Some(OptimizerState {
                step,
                exp_avg: materialize(&exp_avg)?,
                exp_avg_sq: materialize(&exp_avg_sq)?,
            })
        }
        None => None,
    };
    let scaler = match meta.get("scaler") {
        // 2·(d + m) numbers of at most ~25 characters each
        Some(t) if t.len() as u64 > 64 * (config.d + config.context) as u64 + 64 => {
            return Err(bad(format!(
                "scaler: {} bytes of metadata for {} columns",
                t.len(),
                config.d + config.context
            )))
        }
        Some(_) => {
            let s = json("scaler").unwrap_or(Value::Null);
            let cols = config.d + config.context;
            Some(scaler_from_json(&s, cols).map_err(|m| bad(format!("scaler: {m}")))?)
        }
        None => None,
    };
    let bounds = match meta.get("bounds") {
        Some(t) if t.len() as u64 > 64 * config.d as u64 + 64 => {
            return Err(bad(format!("bounds: {} bytes of metadata for d = {}", t.len(), config.d)))
        }
        Some(_) => {
            let b = json("bounds").unwrap_or(Value::Null);
            Some(bounds_from_json(&b, config.d).map_err(|m| bad(format!("bounds: {m}")))?)
        }
        None => None,
    };
    let whiten = match meta.get("whiten") {
        // d² numbers of at most ~25 characters each
        Some(t)
            if t.len() as u64 > (config.d as u64).saturating_mul(config.d as u64).saturating_mul(32) + 64 =>
        {
            return Err(bad(format!("whiten: {} bytes of metadata for d = {}", t.len(), config.d)))
        }
        Some(_) => {
            let w = json("whiten").unwrap_or(Value::Null);
            let chol = numbers(&w, "chol").map_err(|m| bad(format!("whiten: {m}")))?;
            Some(Whitening::new(chol, config.d as usize).map_err(|e| bad(e.to_string()))?)
        }
        None => None,
    };
    let images = match meta.get("images") {
        Some(t) if t.len() > 1024 => return Err(bad(format!("images: {} bytes of metadata", t.len()))),
        Some(_) => {
            let v = json("images").unwrap_or(Value::Null);
            let space = super::images_from_json(&v).map_err(|m| bad(format!("images: {m}")))?;
            let same = |i: &crate::config::ImageShape| {
                (i.channels, i.height, i.width)
                    == (space.channels as i64, space.height as i64, space.width as i64)
            };
            if space.dim() as i64 != config.d || config.image.as_ref().is_some_and(|i| !same(i)) {
                return Err(bad(format!(
                    "images: {} × {} × {} images for d = {}",
                    space.channels, space.height, space.width, config.d
                )));
            }
            Some(space)
        }
        None => None,
    };
    let info = match meta.get("info") {
        Some(t) if t.len() <= MAX_INFO => match json("info") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        },
        _ => Map::new(),
    };
    let format = if meta.contains_key("config") { "safetensors (rnvp)" } else { "safetensors" };
    Ok(Checkpoint {
        config,
        scaler,
        bounds,
        whiten,
        images,
        tensors,
        optimizer,
        info,
        format: format.into(),
        prefix,
        ignored,
    })
}

/// One tensor entry of the header, checked against the data section.
fn view<'a>(entry: Entry, data: &'a [u8]) -> std::result::Result<View<'a>, String> {
    let size =
        element_size(&entry.dtype).ok_or_else(|| format!("unknown dtype {}", entry.dtype.escape_debug()))?;
    let (start, end) = entry.offsets;
    let shape = entry.shape.into_vec();
    let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).ok_or("shape overflows")?;
    let nbytes = numel.checked_mul(size as u64).ok_or("shape overflows")?;
    if start > end || end > data.len() as u64 || end - start != nbytes {
        return Err(format!(
            "data_offsets [{start}, {end}] do not fit shape {shape:?} ({nbytes} bytes) in {} bytes of data",
            data.len()
        ));
    }
    let kind = kind_of(&entry.dtype);
    Ok(View { kind, dtype: entry.dtype, shape, bytes: &data[start as usize..end as usize] })
}

/// Bytes per element of every safetensors dtype (rnvp reads the float ones; the others may stand
/// beside the model: an `I64` step counter, say).
fn element_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" | "C64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        _ => return None,
    })
}

/// The finite numbers of the array `v[k]`.
fn numbers(v: &Value, k: &str) -> std::result::Result<Vec<f64>, String> {
    v.get(k)
        .and_then(Value::as_array)
        .ok_or(format!("no '{k}'"))?
        .iter()
        .map(|x| x.as_f64().filter(|x| x.is_finite()).ok_or(format!("bad value in '{k}'")))
        .collect()
}

fn bounds_from_json(v: &Value, d: i64) -> std::result::Result<Bounds, String> {
    let (lo, hi) = (numbers(v, "lo")?, numbers(v, "hi")?);
    if lo.len() as i64 != d || hi.len() as i64 != d {
        return Err(format!("expected {d} lower and {d} upper bounds"));
    }
    let mode = match v.get("mode") {
        None => BoundsMode::Logit,
        Some(m) => {
            m.as_str().ok_or("'mode' is not text")?.parse().map_err(|e: crate::error::Error| e.to_string())?
        }
    };
    Ok(Bounds::new(lo, hi).map_err(|e| e.to_string())?.with_mode(mode))
}

fn scaler_from_json(v: &Value, d: i64) -> std::result::Result<Scaler, String> {
    let (mean, std) = (numbers(v, "mean")?, numbers(v, "std")?);
    if mean.len() as i64 != d || std.len() as i64 != d || std.iter().any(|s| *s <= 0.0) {
        return Err(format!("expected {d} means and {d} positive stds"));
    }
    Ok(Scaler { mean, std })
}
