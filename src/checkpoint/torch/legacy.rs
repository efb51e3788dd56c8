//! PyTorch's legacy (non-zip) format: five pickles back to back, then the raw storages.
//!
//! The pickles are: the magic number `0x1950a86a20f9469cfc6c`; the protocol version (1001);
//! `sys_info` (`little_endian`, type sizes); the object; the sorted list of storage keys. Then, for
//! each key of that list, come an `i64` element count and the elements.
use super::pickle::{unpickle, Node, Unpickled, Value};
use std::collections::HashMap;

const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// A parsed legacy file: the object's graph and where each storage's bytes are.
pub(super) struct Legacy<'a> {
    pub object: Unpickled,
    /// Bytes of each storage by key.
    pub storages: HashMap<String, &'a [u8]>,
    /// Whether the file was written on a little-endian machine.
    pub little_endian: bool,
}

/// Parses a legacy file.
pub(super) fn parse(bytes: &[u8]) -> Result<Legacy<'_>, String> {
    let magic = unpickle(bytes, 0).map_err(|e| format!("not a PyTorch file ({e})"))?;
    match &magic.root {
        Value::BigInt(b) if **b == MAGIC => {}
        _ => return Err("not a PyTorch file (a pickle without PyTorch's legacy magic number)".into()),
    }
    let version = unpickle(bytes, magic.end)?;
    match version.root {
        Value::Int(1001) => {}
        Value::Int(v) => return Err(format!("legacy format protocol version {v} is not supported")),
        _ => return Err("legacy format without a protocol version".into()),
    }
    let sys_info = unpickle(bytes, version.end)?;
    let little_endian = match sys_info.arena.dict(&sys_info.root).and_then(|d| d.get("little_endian")) {
        Some(Value::Bool(b)) => *b,
        _ => true,
    };
    let object = unpickle(bytes, sys_info.end)?;
    let keys = unpickle(bytes, object.end)?;
    let key_list: Vec<String> = match keys.arena.node(&keys.root) {
        Some(Node::List(l)) | Some(Node::Tuple(l)) => l
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                Value::Int(i) => Ok(i.to_string()),
                _ => Err("legacy storage key list holds a non-string".to_string()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("legacy file without a storage key list".into()),
    };
    let elem_size: HashMap<&str, usize> = object.storages.iter().map(|(k, e, _)| (&**k, e.size())).collect();
    let mut storages = HashMap::new();
    let mut pos = keys.end;
    for key in key_list {
        let size = match elem_size.get(key.as_str()) {
            Some(&s) => s,
            None => return Err(format!("legacy storage '{key}' is listed but its type is unknown")),
        };
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                i64::from_le_bytes(a)
            })
            .ok_or_else(|| format!("truncated legacy file (storage '{key}' missing at offset {pos})"))?;
        let len = u64::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(size as u64))
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| format!("legacy storage '{key}' declares an invalid element count {count}"))?;
        let start = pos + 8;
        let end = start.checked_add(len).filter(|&e| e <= bytes.len()).ok_or_else(|| {
            format!(
                "truncated legacy file (storage '{key}' declares {count} elements, {len} bytes, at offset {start} \
                 of a {}-byte file)",
                bytes.len()
            )
        })?;
        storages.insert(key, &bytes[start..end]);
        pos = end;
    }
    Ok(Legacy { object, storages, little_endian })
}
