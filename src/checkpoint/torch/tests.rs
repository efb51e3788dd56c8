//! Tests: every fixture of tests/fixtures/torch (written by scripts/make_torch_fixtures.py and tch)
//! read exactly, the writer's output read back, and malformed input rejected without panics.
use super::*;
use std::io::Write;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torch");

/// The committed fixtures, listed in tests/fixtures/torch/FIXTURES (tests/fuzz.rs mutates the same).
fn all() -> Vec<&'static str> {
    include_str!("../../../tests/fixtures/torch/FIXTURES").lines().filter(|l| !l.trim().is_empty()).collect()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// The elements of a tensor as f64 (exact for every supported dtype).
fn values(t: &RawTensor) -> Vec<f64> {
    let es = t.dtype.size();
    t.data
        .chunks(es)
        .map(|c| match t.dtype {
            DType::F32 => f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            DType::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            DType::F16 => f16_to_f64(u16::from_le_bytes([c[0], c[1]])),
            DType::BF16 => f64::from(f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)),
        })
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn dtype_of(name: &str) -> DType {
    match name {
        "float32" => DType::F32,
        "float64" => DType::F64,
        "float16" => DType::F16,
        "bfloat16" => DType::BF16,
        other => panic!("dtype {other}"),
    }
}

/// Checks a file's tensors against its `<fixture>.json`.
fn check_against_json(file: &TorchFile, fixture_name: &str, check_description: bool) {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{fixture_name}.json")).expect("json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    let expected = doc["tensors"].as_array().expect("tensors");
    if check_description {
        for s in doc["expect_description"].as_array().expect("expect_description") {
            let s = s.as_str().expect("str");
            assert!(
                file.description.contains(s),
                "{fixture_name}: description {:?} lacks {s:?}",
                file.description
            );
        }
    }
    let names: Vec<&str> = file.tensors.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|e| e["name"].as_str().expect("name")).collect();
    assert_eq!(names, want, "{fixture_name}: names");
    for ((name, t), e) in file.tensors.iter().zip(expected) {
        assert_eq!(t.dtype, dtype_of(e["dtype"].as_str().expect("dtype")), "{fixture_name}: {name} dtype");
        let shape: Vec<usize> =
            e["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
        assert_eq!(t.shape, shape, "{fixture_name}: {name} shape");
        assert_eq!(t.data.len(), t.numel().expect("numel") * t.dtype.size(), "{fixture_name}: {name} length");
        // exact: the bytes; and the values (serde_json's float parsing may be off by an ulp)
        let hex = e["data_hex"].as_str().expect("data_hex");
        assert_eq!(to_hex(&t.data), hex, "{fixture_name}: {name} data");
        let want: Vec<f64> =
            e["values"].as_array().expect("values").iter().map(|v| v.as_f64().expect("f64")).collect();
        let got = values(t);
        assert_eq!(got.len(), want.len(), "{fixture_name}: {name} numel");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-14 * b.abs(), "{fixture_name}: {name}[{i}] = {a}, expected {b}");
        }
    }
}

#[test]
fn every_fixture_reads_exactly() {
    for name in all() {
        let file = read(&fixture(name), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_against_json(&file, name, true);
    }
}

#[test]
fn descriptions() {
    let d = |n: &str| read(&fixture(n), n).expect("reads").description;
    assert_eq!(d("sd_stacked.pt"), "torch.save state_dict (zip)");
    assert_eq!(d("sd_stacked_legacy.pt"), "torch.save state_dict (legacy)");
    assert_eq!(d("ckpt_stacked.pt"), "training checkpoint (state_dict under 'model_state_dict', zip)");
    assert_eq!(d("module_stacked.pt"), "pickled nn.Module reference.stacked_NVP (zip)");
    assert_eq!(d("module_stacked_legacy.pt"), "pickled nn.Module reference.stacked_NVP (legacy)");
    assert_eq!(d("jit_trace_stacked.pt"), "TorchScript archive (__torch__.reference.stacked_NVP)");
    assert_eq!(d("tch_save_multi.ot"), "tch .ot archive");
}

#[test]
fn writer_output_reads_back_identically() {
    for name in all() {
        let file = read(&fixture(name), name).expect("reads");
        let bytes = write_state_dict(&file.tensors, "archive").expect("writes");
        let back = read(&bytes, "written.pt").expect("written file reads");
        assert_eq!(back.description, "torch.save state_dict (zip)");
        assert_eq!(back.tensors, file.tensors, "{name}");
        check_against_json(&back, name, false);
        // layout: records in one directory, stored, the pickle first, version last
        let ar = zip_read::Archive::parse(&bytes).expect("zip");
        let names: Vec<&str> = ar.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names[0], "archive/data.pkl");
        assert_eq!(names[1], "archive/byteorder");
        assert_eq!(names[names.len() - 1], "archive/version");
        assert_eq!(names.len(), file.tensors.len() + 3);
    }
}

#[test]
fn writer_rejects_bad_input() {
    let t = RawTensor { dtype: DType::F32, shape: vec![2], data: vec![0; 8] };
    assert!(write_state_dict(&[("a".into(), t.clone()), ("a".into(), t.clone())], "x").is_err());
    let short = RawTensor { dtype: DType::F32, shape: vec![3], data: vec![0; 8] };
    assert!(write_state_dict(&[("a".into(), short)], "x").is_err());
    let huge = RawTensor { dtype: DType::F64, shape: vec![usize::MAX, 2], data: vec![] };
    assert!(write_state_dict(&[("a".into(), huge)], "x").is_err());
    assert!(write_state_dict(&[("a".into(), t.clone())], "a/b").is_err());
    assert!(write_state_dict(&[("a".into(), t)], "").is_err());
    // an empty state_dict and odd shapes are fine
    let empty = write_state_dict(&[], "e").expect("empty state_dict");
    assert!(matches!(read(&empty, "e.pt"), Err(Error::Data(m)) if m.contains("no state_dict found")));
    let odd = vec![
        (
            "scalar".to_string(),
            RawTensor { dtype: DType::F64, shape: vec![], data: 2.5f64.to_le_bytes().to_vec() },
        ),
        ("none".to_string(), RawTensor { dtype: DType::BF16, shape: vec![3, 0, 2], data: vec![] }),
        ("big".to_string(), RawTensor { dtype: DType::F16, shape: vec![300, 1, 1, 2], data: vec![7; 1200] }),
    ];
    let back = read(&write_state_dict(&odd, "o").expect("writes"), "o.pt").expect("reads");
    assert_eq!(back.tensors, odd);
}

// ---------------------------------------------------------------------------------------------
// Malformed input

fn err_text(r: Result<TorchFile>) -> String {
    match r {
        Ok(f) => panic!("expected an error, got {} tensors ({})", f.tensors.len(), f.description),
        Err(Error::Data(m)) => m,
        #[allow(unreachable_patterns)]
        Err(e) => panic!("expected Error::Data, got {e:?}"),
    }
}

/// A zip (written with the zip crate) holding the given records under `archive/`.
fn zip_with(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in records {
        let o = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file(format!("archive/{name}"), o).expect("start");
        z.write_all(data).expect("write");
    }
    z.finish().expect("finish").into_inner()
}

/// A pickle of `{'w': _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', numel), offset,
/// size, stride, False, OrderedDict())}` with the given raw int encodings.
fn tensor_pickle(numel: &[u8], offset: &[u8], size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut p =
        b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage".to_vec();
    p.extend_from_slice(b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
    p.extend_from_slice(numel);
    p.extend_from_slice(b"tQ");
    p.extend_from_slice(offset);
    p.extend_from_slice(size);
    p.extend_from_slice(stride);
    p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtRu.");
    p
}

fn zip_tensor(numel: &[u8], offset: &[u8], size: &[u8], stride: &[u8], data: &[u8]) -> Vec<u8> {
    zip_with(&[
        ("data.pkl", &tensor_pickle(numel, offset, size, stride)),
        ("data/0", data),
        ("version", b"3\n"),
    ])
}

#[test]
fn hand_made_tensor_reads() {
    let data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect();
    // a transposed 3x2 view of a 2x3 storage
    let f = read(&zip_tensor(b"K\x06", b"K\x00", b"K\x03K\x02\x86", b"K\x01K\x03\x86", &data), "t.pt")
        .expect("ok");
    assert_eq!(f.tensors[0].1.shape, vec![3, 2]);
    assert_eq!(values(&f.tensors[0].1), vec![1., 4., 2., 5., 3., 6.]);
    // offset 4, stride 0 (expanded)
    let f = read(&zip_tensor(b"K\x06", b"K\x04", b"K\x03\x85", b"K\x00\x85", &data), "t.pt").expect("ok");
    assert_eq!(values(&f.tensors[0].1), vec![5., 5., 5.]);
    // a file from a big-endian machine
    let be: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|v| v.to_be_bytes()).collect();
    let p = tensor_pickle(b"K\x06", b"K\x01", b"K\x02\x85", b"K\x02\x85");
    let z = zip_with(&[("data.pkl", &p), ("byteorder", b"big"), ("data/0", &be), ("version", b"3\n")]);
    assert_eq!(values(&read(&z, "t.pt").expect("ok").tensors[0].1), vec![2., 4.]);
    let z = zip_with(&[("data.pkl", &p), ("byteorder", b"middle"), ("data/0", &be), ("version", b"3\n")]);
    assert!(err_text(read(&z, "t.pt")).contains("byte order"));
}

#[test]
fn absurd_sizes_are_errors() {
    let data = vec![0u8; 24];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // storage declares 2^62 elements, the record holds 24 bytes
        (zip_tensor(b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40", b"K\x00", b"K\x06\x85", b"K\x01\x85", &data), "declares"),
        // view beyond the storage
        (zip_tensor(b"K\x06", b"K\x00", b"K\x07\x85", b"K\x01\x85", &data), "does not fit"),
        (zip_tensor(b"K\x06", b"K\x06", b"K\x01\x85", b"K\x01\x85", &data), "does not fit"),
        (zip_tensor(b"K\x06", b"K\x00", b"K\x02K\x02\x86", b"K\x05K\x01\x86", &data), "does not fit"),
        // numel overflows: size (2^40, 2^40, 2^40)
        (
            zip_tensor(
                b"K\x06",
                b"K\x00",
                b"\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x06\x00\x00\x00\x00\x00\x01\x87",
                b"K\x00K\x00K\x00\x87",
                &data,
            ),
            "does not fit",
        ),
        // stride overflow
        (
            zip_tensor(b"K\x06", b"K\x00", b"K\x03\x85", b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40\x85", &data),
            "does not fit",
        ),
        // a stride-0 view of 2^31 elements: fits the storage but is far too big to materialize
        (zip_tensor(b"K\x06", b"K\x00", b"\x8a\x05\x00\x00\x00\x80\x00\x85", b"K\x00\x85", &data), "plausibly"),
        // negative size and offset
        (zip_tensor(b"K\x06", b"J\xff\xff\xff\xff", b"K\x01\x85", b"K\x01\x85", &data), "offset"),
        (zip_tensor(b"K\x06", b"K\x00", b"J\xff\xff\xff\xff\x85", b"K\x01\x85", &data), "size"),
        // size and stride of different lengths
        (zip_tensor(b"K\x06", b"K\x00", b"K\x02K\x03\x86", b"K\x01\x85", &data), "dimensions"),
        // record shorter than the storage
        (zip_tensor(b"K\x06", b"K\x00", b"K\x06\x85", b"K\x01\x85", &data[..20]), "declares"),
    ];
    for (i, (bytes, want)) in cases.into_iter().enumerate() {
        let m = err_text(read(&bytes, "m.pt"));
        assert!(m.starts_with("m.pt: "), "case {i}: {m}");
        assert!(m.contains(want), "case {i}: {m}");
    }
    // missing storage record
    let p = tensor_pickle(b"K\x06", b"K\x00", b"K\x06\x85", b"K\x01\x85");
    let m = err_text(read(&zip_with(&[("data.pkl", &p), ("version", b"3\n")]), "m.pt"));
    assert!(m.contains("archive/data/0 is missing"), "{m}");
}

#[test]
fn zip_structure_errors() {
    let good = fixture("sd_single.pt");
    assert!(err_text(read(b"PK\x03\x04", "m.pt")).contains("truncated"));
    assert!(err_text(read(b"hello world", "m.pt")).contains("not a PyTorch file"));
    assert!(err_text(read(b"", "m.pt")).contains("empty"));
    let mut tar = vec![0u8; 600];
    tar[257..262].copy_from_slice(b"ustar");
    assert!(err_text(read(&tar, "m.pt")).contains("tar"));
    // a central directory entry declaring 2^60 bytes (zip64 extra) for data/0
    let mut z =
        zip_with(&[("data.pkl", &tensor_pickle(b"K\x01", b"K\x00", b")", b")")), ("data/0", &[0u8; 4])]);
    patch_sizes(&mut z, "archive/data/0", 1 << 60);
    assert!(err_text(read(&z, "m.pt")).contains("past the end"));
    // a deflated record claiming 2 GiB from a few bytes
    let mut z =
        zip_with(&[("data.pkl", &tensor_pickle(b"K\x01", b"K\x00", b")", b")")), ("data/0", &[0u8; 4])]);
    patch_method(&mut z, "archive/data/0", 8, 0x7fff_0000);
    assert!(err_text(read(&z, "m.pt")).contains("plausibl"));
    // the central directory offset pointing outside the file
    let mut z = good.clone();
    let eocd = z.len() - 22;
    z[eocd + 16..eocd + 20].copy_from_slice(&u32::MAX.to_le_bytes());
    let _ = read(&z, "m.pt"); // zip64 end record wins for torch files; must not panic
                              // garbage instead of the pickle
    let z = zip_with(&[("data.pkl", b"\x80\x02\xff"), ("version", b"3\n")]);
    assert!(err_text(read(&z, "m.pt")).contains("opcode 0xff"));
    // records outside a directory
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("data.pkl", zip::write::FileOptions::default()).expect("start");
    w.write_all(b"\x80\x02}.").expect("write");
    let z = w.finish().expect("finish").into_inner();
    assert!(err_text(read(&z, "m.pt")).contains("data.pkl"));
}

/// Declares `size` bytes for a record in the central directory: saturated 32-bit fields and a
/// zip64 extra field.
fn patch_sizes(z: &mut Vec<u8>, name: &str, size: u64) {
    let cd = find_central(z, name);
    let name_len = u16::from_le_bytes([z[cd + 28], z[cd + 29]]) as usize;
    let extra_len = u16::from_le_bytes([z[cd + 30], z[cd + 31]]) as usize;
    z[cd + 20..cd + 24].copy_from_slice(&u32::MAX.to_le_bytes());
    z[cd + 24..cd + 28].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut extra = vec![1u8, 0, 16, 0];
    extra.extend_from_slice(&size.to_le_bytes());
    extra.extend_from_slice(&size.to_le_bytes());
    let at = cd + 46 + name_len + extra_len;
    z.splice(at..at, extra.iter().copied());
    let new_extra = (extra_len + extra.len()) as u16;
    z[cd + 30..cd + 32].copy_from_slice(&new_extra.to_le_bytes());
    // the end record: central directory size grew
    let eocd = z.len() - 22;
    let cd_size =
        u32::from_le_bytes([z[eocd + 12], z[eocd + 13], z[eocd + 14], z[eocd + 15]]) + extra.len() as u32;
    z[eocd + 12..eocd + 16].copy_from_slice(&cd_size.to_le_bytes());
}

fn patch_method(z: &mut [u8], name: &str, method: u16, size: u32) {
    let cd = find_central(z, name);
    z[cd + 10..cd + 12].copy_from_slice(&method.to_le_bytes());
    z[cd + 24..cd + 28].copy_from_slice(&size.to_le_bytes());
}

fn find_central(z: &[u8], name: &str) -> usize {
    (0..z.len() - 46)
        .find(|&i| z[i..i + 4] == [0x50, 0x4b, 0x01, 0x02] && z[i + 46..].starts_with(name.as_bytes()))
        .expect("central directory entry")
}

/// The records of a zip, re-written with deflate compression.
fn deflated_copy(bytes: &[u8]) -> Vec<u8> {
    let ar = zip_read::Archive::parse(bytes).expect("zip");
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for e in &ar.entries {
        let o = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file(e.name.clone(), o).expect("start");
        z.write_all(&ar.read(e).expect("record")).expect("write");
    }
    z.finish().expect("finish").into_inner()
}

#[test]
fn deflated_records_read() {
    for name in ["sd_stacked.pt", "module_stacked.pt", "views_misc.pt", "jit_script_stacked.pt"] {
        let original = read(&fixture(name), name).expect("reads");
        let deflated = deflated_copy(&fixture(name));
        let f = read(&deflated, name).expect("deflated copy reads");
        assert_eq!(f.tensors, original.tensors);
        assert_eq!(f.description, original.description);
        // a corrupted deflate stream or CRC is an error, never a panic
        let mut rng = Lcg(3);
        for _ in 0..200 {
            let mut b = deflated.clone();
            let i = (rng.next() as usize) % b.len();
            b[i] ^= 1 << (rng.next() % 8);
            let _ = read(&b, name);
        }
    }
    // a stored record with a wrong CRC reads (PyTorch does not check it either)
    let mut z = fixture("sd_single.pt");
    let cd = find_central(&z, "sd_single/data/0");
    z[cd + 16] ^= 0xff;
    assert!(read(&z, "m.pt").is_ok());
}

fn zip_pickle(p: &[u8]) -> Vec<u8> {
    zip_with(&[("data.pkl", p), ("version", b"3\n")])
}

#[test]
fn unknown_globals_are_opaque() {
    // os.system('ls'): parsed, never run; no state_dict in it
    let m = err_text(read(&zip_pickle(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R."), "m.pt"));
    assert!(m.contains("no state_dict found (top-level object is a os.system object)"), "{m}");
    // beside a state_dict under 'model' it is ignored
    let mut p = b"\x80\x02}(X\x04\x00\x00\x00evilcos\nsystem\nX\x02\x00\x00\x00ls\x85RX\x05\x00\x00\x00model"
        .to_vec();
    let t = tensor_pickle(b"K\x01", b"K\x00", b")", b")");
    p.extend_from_slice(&t[2..t.len() - 1]); // the inner dict, without PROTO and STOP
    p.extend_from_slice(b"u.");
    let z = zip_with(&[("data.pkl", &p), ("data/0", &1.5f32.to_le_bytes()), ("version", b"3\n")]);
    let f = read(&z, "m.pt").expect("reads");
    assert_eq!(f.description, "training checkpoint (state_dict under 'model', zip)");
    assert_eq!(values(&f.tensors[0].1), vec![1.5]);
    // a list at the top
    let m = err_text(read(&zip_pickle(b"\x80\x02]."), "m.pt"));
    assert_eq!(m, "m.pt: no state_dict found (top-level object is a list)");
}

#[test]
fn hostile_pickles_are_errors() {
    // deep nesting: 100000 nested lists
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b']', 100_000));
    p.extend(std::iter::repeat_n(b'a', 99_999));
    p.push(b'.');
    assert!(err_text(read(&zip_pickle(&p), "m.pt")).contains("top-level object is a list"));
    // 100000 nested MARKs / tuples
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b'(', 100_000));
    p.extend(std::iter::repeat_n(b't', 100_000));
    p.push(b'.');
    assert!(err_text(read(&zip_pickle(&p), "m.pt")).contains("tuple"));
    // huge memo indices
    assert!(
        err_text(read(&zip_pickle(b"\x80\x02}r\xff\xff\xff\xffj\xfe\xff\xff\xff."), "m.pt")).contains("memo")
    );
    // non-UTF-8 string
    assert!(err_text(read(&zip_pickle(b"\x80\x02X\x02\x00\x00\x00\xff\xfe."), "m.pt")).contains("UTF-8"));
    // huge string length
    assert!(err_text(read(&zip_pickle(b"\x80\x02X\xff\xff\xff\xff."), "m.pt")).contains("truncated"));
    assert!(err_text(read(&zip_pickle(b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff."), "m.pt"))
        .contains("pickle"));
    // stack underflow, missing STOP, stray opcodes
    for p in [
        &b"\x80\x02R."[..],
        b"\x80\x02}",
        b"\x80\x02(u.",
        b"\x80\x02Ns.",
        b"\x80\x02Na.",
        b"\x80\x02Nb.",
        b".",
    ] {
        let _ = err_text(read(&zip_pickle(p), "m.pt"));
    }
    // billion laughs through OrderedDict(list): a list of 1000 pairs copied 20000 times
    let mut p = b"\x80\x02]q\x00(".to_vec();
    for _ in 0..1000 {
        p.extend_from_slice(b"K\x01K\x02\x86");
    }
    p.extend_from_slice(b"e0(");
    for _ in 0..20_000 {
        p.extend_from_slice(b"ccollections\nOrderedDict\nh\x00\x85R0");
    }
    p.extend_from_slice(b"N.");
    let m = err_text(read(&zip_pickle(&p), "m.pt"));
    assert!(m.contains("too much copying") || m.contains("no state_dict"), "{m}");
}

/// `M() NEWOBJ {'_parameters': {}, '_modules': {name: <child>, ...}} BUILD`, nested `depth` times,
/// with `fanout` children that are all the same object.
fn nested_module_pickle(depth: usize, fanout: usize) -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    let state_head = b"cm\nM\n)\x81}(X\x0b\x00\x00\x00_parameters}X\x08\x00\x00\x00_modules}";
    p.extend_from_slice(state_head);
    p.extend_from_slice(b"ub");
    for _ in 0..depth {
        // memoize the child and pop it, then a parent whose _modules holds it `fanout` times
        p.extend_from_slice(b"q\x010");
        p.extend_from_slice(state_head);
        p.push(b'(');
        for i in 0..fanout {
            p.extend_from_slice(&[b'X', 1, 0, 0, 0, b'a' + i as u8]);
            p.extend_from_slice(b"h\x01");
        }
        p.extend_from_slice(b"uub");
    }
    p.push(b'.');
    p
}

#[test]
fn odd_module_graphs_are_errors() {
    // nesting deeper than the walk allows
    let m = err_text(read(&zip_pickle(&nested_module_pickle(1000, 1)), "m.pt"));
    assert!(m.contains("nested deeper"), "{m}");
    // shared children: 2^40 paths
    let m = err_text(read(&zip_pickle(&nested_module_pickle(40, 2)), "m.pt"));
    assert!(m.contains("too large to walk"), "{m}");
    // a module that contains itself
    let mut p = b"\x80\x02cm\nM\n)\x81q\x00}X\x08\x00\x00\x00_modules}X\x01\x00\x00\x00ah\x00ssb.".to_vec();
    let m = err_text(read(&zip_pickle(&p), "m.pt"));
    assert!(m.contains("nested deeper"), "{m}");
    // a dict that contains itself
    p = b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.".to_vec();
    let m = err_text(read(&zip_pickle(&p), "m.pt"));
    assert!(m.contains("no state_dict found"), "{m}");
    // nested rebuild calls: _rebuild_from_type_v2(f, None, (f, None, (...), None), None), 300 deep
    let mut p = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\nq\x050(NNNNtq\x010".to_vec();
    for _ in 0..300 {
        p.extend_from_slice(b"(h\x05Nh\x01Ntq\x010");
    }
    p.extend_from_slice(b"h\x05h\x01R.");
    let m = err_text(read(&zip_pickle(&p), "m.pt"));
    assert!(m.contains("nested too deeply"), "{m}");
}

#[test]
fn legacy_errors() {
    let good = fixture("sd_stacked_legacy.pt");
    // a pickle without the magic number
    assert!(err_text(read(b"\x80\x02K\x01.", "m.pt")).contains("magic"));
    assert!(err_text(read(&good[..good.len() - 1], "m.pt")).contains("truncated"));
    // the first storage declaring 2^62 elements
    let mut bad = good.clone();
    let object_end = legacy::parse(&good).expect("parses").object.end;
    let list_end = pickle::unpickle(&good, object_end).expect("key list").end;
    bad[list_end..list_end + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let m = err_text(read(&bad, "m.pt"));
    assert!(m.contains("invalid element count"), "{m}");
    bad[list_end..list_end + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let m = err_text(read(&bad, "m.pt"));
    assert!(m.contains("truncated legacy file"), "{m}");
    bad[list_end..list_end + 8].copy_from_slice(&(-1i64).to_le_bytes());
    let m = err_text(read(&bad, "m.pt"));
    assert!(m.contains("invalid element count"), "{m}");
}

/// A tiny deterministic generator for corruption tests.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn truncated_files_are_errors() {
    for name in all() {
        let bytes = fixture(name);
        let step = (bytes.len() / 150).max(1);
        let small = bytes.len() <= 5000;
        let mut cut = 0;
        while cut < bytes.len() {
            let r = read(&bytes[..cut], name);
            assert!(r.is_err(), "{name} cut at {cut} read fine");
            cut += if small { 1 } else { step };
        }
    }
}

#[test]
fn corrupted_files_never_panic() {
    let mut rng = Lcg(42);
    for name in all() {
        let bytes = fixture(name);
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % b.len();
                b[i] = match rng.next() % 4 {
                    0 => 0xff,
                    1 => 0,
                    2 => b[i] ^ (1 << (rng.next() % 8)),
                    _ => rng.next() as u8,
                };
            }
            let _ = read(&b, name);
        }
    }
}

#[test]
fn corrupted_pickles_never_panic() {
    // corrupt the pickle itself (inside a valid zip) and the legacy stream
    let mut rng = Lcg(7);
    for name in ["sd_single.pt", "module_stacked.pt", "ckpt_stacked.pt", "jit_script_stacked.pt"] {
        let bytes = fixture(name);
        let ar = zip_read::Archive::parse(&bytes).expect("zip");
        let pkl_entry = ar.entries.iter().find(|e| e.name.ends_with("/data.pkl")).expect("pkl").clone();
        let pkl = ar.read(&pkl_entry).expect("pkl").into_owned();
        let records: Vec<(String, Vec<u8>)> = ar
            .entries
            .iter()
            .filter(|e| e.name.contains("/data/") || e.name.ends_with("constants.pkl"))
            .map(|e| {
                (e.name.split_once('/').expect("dir").1.to_string(), ar.read(e).expect("rec").into_owned())
            })
            .collect();
        for _ in 0..300 {
            let mut p = pkl.clone();
            for _ in 0..1 + rng.next() % 3 {
                let i = (rng.next() as usize) % p.len();
                p[i] = rng.next() as u8;
            }
            let mut recs: Vec<(&str, &[u8])> = records.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
            recs.push(("data.pkl", &p));
            let _ = read(&zip_with(&recs), name);
        }
    }
}
