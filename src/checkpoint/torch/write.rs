//! Writing a state_dict as a `.pt` file that plain `torch.load` (`weights_only=True`) accepts.
//!
//! The zip holds, inside one directory: `data.pkl` (a protocol-2 pickle of an `OrderedDict` of
//! `_rebuild_tensor_v2` calls, using only opcodes and globals that PyTorch's weights-only
//! unpickler allows), `byteorder` = `little`, one `data/<i>` record per tensor (contiguous, offset 0)
//! and `version` = `3\n`. Records are stored uncompressed, 64-byte aligned, with CRCs.
//! `.format_version` is deliberately absent (with it PyTorch would compute record offsets itself,
//! assuming its own zip layout).
use super::{DType, RawTensor};
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::io::{Cursor, Write};
use zip::write::FileOptions;
use zip::{CompressionMethod, ZipWriter};

/// A `.pt` file holding the state_dict `tensors` (an `OrderedDict` of tensors, in the given order)
/// that plain `torch.load(path)` (`weights_only=True`, the default) accepts and
/// `load_state_dict(strict=True)` takes. `archive_name` names the zip's top-level directory
/// (PyTorch uses the file stem; any name without `/` or `\` works).
pub fn write_state_dict(tensors: &[(String, RawTensor)], archive_name: &str) -> Result<Vec<u8>> {
    let fail = |m: String| Error::Data(format!("writing a PyTorch state_dict: {m}"));
    if archive_name.is_empty()
        || archive_name.contains(['/', '\\'])
        || archive_name.chars().any(char::is_control)
    {
        return Err(fail(format!("invalid archive name {archive_name:?}")));
    }
    let mut seen = HashSet::new();
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(fail(format!("duplicate tensor name '{name}'")));
        }
        let want = t.numel().and_then(|n| n.checked_mul(t.dtype.size()));
        if want != Some(t.data.len()) {
            return Err(fail(format!(
                "tensor '{name}' has shape {:?} ({}) but {} bytes of data",
                t.shape,
                t.dtype.torch_name(),
                t.data.len()
            )));
        }
    }
    let pkl = state_dict_pickle(tensors);
    let zerr = |e: zip::result::ZipError| fail(format!("zip: {e}"));
    let ioerr = |e: std::io::Error| fail(format!("zip: {e}"));
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let add = |zip: &mut ZipWriter<Cursor<Vec<u8>>>, name: String, data: &[u8]| -> Result<()> {
        let options = FileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(data.len() as u64 >= 0xffff_ffff);
        zip.start_file_aligned(name, options, 64).map_err(zerr)?;
        zip.write_all(data).map_err(ioerr)
    };
    add(&mut zip, format!("{archive_name}/data.pkl"), &pkl)?;
    add(&mut zip, format!("{archive_name}/byteorder"), b"little")?;
    for (i, (_, t)) in tensors.iter().enumerate() {
        add(&mut zip, format!("{archive_name}/data/{i}"), &t.data)?;
    }
    add(&mut zip, format!("{archive_name}/version"), b"3\n")?;
    let cursor = zip.finish().map_err(zerr)?;
    Ok(cursor.into_inner())
}

fn storage_class(d: DType) -> &'static str {
    match d {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
    }
}

/// The pickle (protocol 2, no memo) of `OrderedDict([(name, tensor), ...])`.
fn state_dict_pickle(tensors: &[(String, RawTensor)]) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    global(&mut p, "collections", "OrderedDict");
    p.extend_from_slice(b")R");
    for (chunk_index, chunk) in tensors.chunks(1000).enumerate() {
        p.push(b'(');
        for (j, (name, t)) in chunk.iter().enumerate() {
            let i = chunk_index * 1000 + j;
            unicode(&mut p, name);
            global(&mut p, "torch._utils", "_rebuild_tensor_v2");
            p.push(b'(');
            // persistent id ('storage', torch.<T>Storage, '<i>', 'cpu', numel)
            p.push(b'(');
            unicode(&mut p, "storage");
            global(&mut p, "torch", storage_class(t.dtype));
            unicode(&mut p, &i.to_string());
            unicode(&mut p, "cpu");
            int(&mut p, t.numel().unwrap_or(0) as u64);
            p.extend_from_slice(b"tQ");
            int(&mut p, 0); // storage offset
            let mut stride = vec![0u64; t.shape.len()];
            let mut s: u64 = 1;
            for (k, &d) in t.shape.iter().enumerate().rev() {
                stride[k] = s;
                s = s.saturating_mul((d as u64).max(1));
            }
            tuple(&mut p, t.shape.iter().map(|&d| d as u64));
            tuple(&mut p, stride.into_iter());
            p.push(0x89); // requires_grad False
            global(&mut p, "collections", "OrderedDict");
            p.extend_from_slice(b")R"); // backward hooks
            p.extend_from_slice(b"tR");
        }
        p.push(b'u');
    }
    p.push(b'.');
    p
}

fn global(p: &mut Vec<u8>, module: &str, name: &str) {
    p.push(b'c');
    p.extend_from_slice(module.as_bytes());
    p.push(b'\n');
    p.extend_from_slice(name.as_bytes());
    p.push(b'\n');
}

fn unicode(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

/// A non-negative int: BININT1, BININT2, BININT or LONG1.
fn int(p: &mut Vec<u8>, v: u64) {
    if v <= 0xff {
        p.extend_from_slice(&[b'K', v as u8]);
    } else if v <= 0xffff {
        p.push(b'M');
        p.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= i32::MAX as u64 {
        p.push(b'J');
        p.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        // LONG1: little-endian two's complement, with a sign byte when the top bit is set
        let mut b = v.to_le_bytes().to_vec();
        while b.len() > 1 && b[b.len() - 1] == 0 && b[b.len() - 2] & 0x80 == 0 {
            b.pop();
        }
        if b[b.len() - 1] & 0x80 != 0 {
            b.push(0);
        }
        p.extend_from_slice(&[0x8a, b.len() as u8]);
        p.extend_from_slice(&b);
    }
}

fn tuple(p: &mut Vec<u8>, items: impl ExactSizeIterator<Item = u64>) {
    match items.len() {
        0 => p.push(b')'),
        n @ 1..=3 => {
            for v in items {
                int(p, v);
            }
            p.push(0x84 + n as u8); // TUPLE1..3
        }
        _ => {
            p.push(b'(');
            for v in items {
                int(p, v);
            }
            p.push(b't');
        }
    }
}
