//! Hostile files: well-formed files whose declared sizes are absurd (structure-aware cases, which
//! the random mutations of tests/fuzz.rs rarely produce), files that are not regular files, and
//! files larger than rnvp reads. Each must give an error — not a value, not a panic — in under a
//! second and under 200 MB of peak memory. Time and memory are measured in a child process (this
//! test binary re-run on one file, reporting its own peak resident memory), so that one case's
//! allocations cannot hide behind another's; the `rnvp` commands that load checkpoints run under
//! an address-space limit.
mod common;
use rnvp::checkpoint::Checkpoint;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "RNVP_HOSTILE_FILE";
/// The limits every case must meet: a second of work (CPU time: a shared machine stretches wall
/// time), ten seconds of wall time at most (no hang), and 200 MB.
const MAX_CPU_MILLIS: u128 = 1000;
const MAX_WALL_MILLIS: u128 = 10_000;
const MAX_PEAK_KB: u64 = 200 * 1024;

/// Reads `path` as rnvp does: a data file by its extension, otherwise a checkpoint, built into a
/// model when it parses.
fn load(path: &Path) -> Result<(), String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "npy" || ext == "csv" {
        return rnvp::data::io::read_matrix(path).map(|_| ()).map_err(|e| e.to_string());
    }
    let ck = Checkpoint::load(path).map_err(|e| e.to_string())?;
    ck.to_flow(tch::Device::Cpu, tch::Kind::Float).map(|_| ()).map_err(|e| e.to_string())
}

/// CPU time this process has used (user + system), ms: the measure of work that a shared, noisy
/// machine does not inflate the way it inflates wall time.
fn cpu_millis() -> u128 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // the fields after the command name (which is in parentheses and may hold spaces)
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u128 = f[11].parse::<u128>().unwrap() + f[12].parse::<u128>().unwrap(); // utime, stime
    ticks * 10 // USER_HZ is 100 on Linux
}

#[test]
#[ignore = "the child process of the hostile-file tests: they run it with RNVP_HOSTILE_FILE set"]
fn hostile_child() {
    let path = PathBuf::from(std::env::var(CHILD_ENV).expect("RNVP_HOSTILE_FILE is not set"));
    let (t0, c0) = (Instant::now(), cpu_millis());
    let result = load(&path);
    let (millis, cpu) = (t0.elapsed().as_millis(), cpu_millis() - c0);
    match result {
        Ok(()) => println!("RESULT ok"),
        Err(e) => println!("RESULT err {}", e.replace('\n', " ")),
    }
    println!("WALL_MS {millis}");
    println!("CPU_MS {cpu}");
    println!("PEAK_KB {}", rnvp::sys::peak_memory_kb().expect("VmHWM"));
}

struct Report {
    error: Option<String>,
    /// Wall time of the load, and its CPU time (10 ms resolution).
    millis: u128,
    cpu_millis: u128,
    peak_kb: u64,
}

/// Runs [`hostile_child`] on `path` in a new process (killed after 30 s).
fn run_child(path: &Path) -> Report {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "hostile_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the child");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("{}: the child ran for more than 30 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.find(key).map(|i| &l[i + key.len()..])) // libtest may print first
            .unwrap_or_else(|| {
                panic!(
                    "{}: no {key} from the child:\n{stdout}\n{}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .trim()
            .to_string()
    };
    let result = field("RESULT ");
    Report {
        error: result.strip_prefix("err ").map(str::to_string),
        millis: field("WALL_MS ").parse().unwrap(),
        cpu_millis: field("CPU_MS ").parse().unwrap(),
        peak_kb: field("PEAK_KB ").parse().unwrap(),
    }
}

// ---- structure-aware cases ------------------------------------------------------------------------

/// A safetensors file from a header and a data section.
fn safetensors(header: Value, data: &[u8]) -> Vec<u8> {
    let text = header.to_string().into_bytes();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    out
}

/// A safetensors file from a header given as bytes (and no data).
fn raw_header(header: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out
}

/// rnvp's configuration metadata with `config` as given.
fn meta(config: Value) -> Value {
    json!({ "config": config.to_string() })
}

fn config(d: Value, k: Value, hidden: Value, layers: Value) -> Value {
    json!({ "d": d, "k": k, "hidden": hidden, "layers": layers, "layout": "stacked", "init": "pytorch" })
}

/// The tensors of a real 2-layer, hidden-4 model as safetensors header entries and data.
fn small_model() -> (serde_json::Map<String, Value>, Vec<u8>) {
    let cfg = rnvp::FlowConfig::stacked(2, 1, 4, 2);
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for name in cfg.variable_names() {
        let shape = cfg.variable_shape(&name).unwrap();
        let n: i64 = shape.iter().product();
        let start = data.len();
        data.extend((0..n).flat_map(|i| (0.01 * i as f32).to_le_bytes()));
        header.insert(name, json!({ "dtype": "F32", "shape": shape, "data_offsets": [start, data.len()] }));
    }
    (header, data)
}

fn safetensors_cases() -> Vec<(String, Vec<u8>)> {
    let big = |v: i64| json!(v);
    let mut cases = vec![
        // the two files: an architecture of billions of numbers, no tensors
        ("declares-hidden-2e8", meta(config(big(2), big(1), big(200_000_000), big(3)))),
        ("declares-layers-3e6", meta(config(big(2), big(1), big(200_000_000), big(3_000_000)))),
        ("declares-i64-max", meta(config(big(2), big(1), big(i64::MAX), big(i64::MAX)))),
        ("declares-d-2e12", meta(config(big(2_000_000_000_000), big(1_000_000_000_000), big(1), big(1)))),
        ("declares-negative-hidden", meta(config(big(2), big(1), big(-5), big(3)))),
        ("declares-negative-d", meta(config(big(-2), big(1), big(4), big(3)))),
        ("declares-zero-layers", meta(config(big(2), big(1), big(4), big(0)))),
        ("declares-float-layers", meta(config(big(2), big(1), big(4), json!(1e300)))),
        ("declares-string-hidden", meta(config(big(2), big(1), json!("512"), big(3)))),
    ]
    .into_iter()
    .map(|(n, m)| (format!("{n}.safetensors"), safetensors(json!({ "__metadata__": m }), &[])))
    .collect::<Vec<_>>();
    // a real model's tensors under a configuration that claims more
    for (name, cfg) in [
        ("tensors-but-1e9-layers", config(big(2), big(1), big(4), big(1_000_000_000))),
        ("tensors-but-hidden-2e31", config(big(2), big(1), big(1 << 31), big(2))),
        ("tensors-but-d-1e6", config(big(1_000_000), big(1), big(4), big(2))),
    ] {
        let (mut header, data) = small_model();
        header.insert("__metadata__".into(), meta(cfg));
        cases.push((format!("{name}.safetensors"), safetensors(Value::Object(header), &data)));
    }
    // a configuration and an optimizer step of megabytes of text (parsed before any size is known)
    for (name, key) in [("config-8mb", "config"), ("optimizer-step-8mb", "optimizer_step")] {
        let (mut header, data) = small_model();
        let mut m = meta(config(big(2), big(1), big(4), big(2)));
        m[key] = json!(format!("[{}1]", "1,".repeat(4 << 20)));
        header.insert("__metadata__".into(), m);
        cases.push((format!("{name}.safetensors"), safetensors(Value::Object(header), &data)));
    }
    // tensor entries with absurd shapes and offsets
    let entry = |shape: Value, offsets: Value| {
        let (mut header, data) = small_model();
        header.insert(
            "bijectors.0.sig_net.0.weight".into(),
            json!({ "dtype": "F32", "shape": shape, "data_offsets": offsets }),
        );
        safetensors(Value::Object(header), &data)
    };
    let dims64: Vec<u64> = vec![2; 64];
    for (name, bytes) in [
        ("shape-2e31-squared", entry(json!([1u64 << 31, 1u64 << 31]), json!([0, 0]))),
        ("shape-negative", entry(json!([-1, 4]), json!([0, 16]))),
        ("shape-64-dims", entry(json!(dims64), json!([0, 0]))),
        ("shape-u64-max", entry(json!([u64::MAX]), json!([0, 4]))),
        ("offsets-u64-max", entry(json!([4, 1]), json!([0, u64::MAX]))),
        ("offsets-reversed", entry(json!([4, 1]), json!([16, 0]))),
        ("offsets-past-end", entry(json!([4, 1]), json!([1u64 << 40, (1u64 << 40) + 16]))),
    ] {
        cases.push((format!("{name}.safetensors"), bytes));
    }
    // a header length of 2^63
    let mut long = (1u64 << 63).to_le_bytes().to_vec();
    long.extend_from_slice(b"{}");
    cases.push(("header-length-2e63.safetensors".into(), long));
    // no metadata: names of 50,000 layers, each holding an empty tensor
    let mut header = serde_json::Map::new();
    header.insert(
        "bijectors.0.sig_net.0.weight".into(),
        json!({ "dtype": "F32", "shape": [4, 1], "data_offsets": [0, 16] }),
    );
    header.insert(
        "bijectors.0.sig_net.2.weight".into(),
        json!({ "dtype": "F32", "shape": [1, 4], "data_offsets": [0, 16] }),
    );
    for i in 1..50_000 {
        header.insert(
            format!("bijectors.{i}.sig_net.0.weight"),
            json!({ "dtype": "F32", "shape": [0, 1], "data_offsets": [0, 0] }),
        );
    }
    cases.push(("names-5e4-empty-layers.safetensors".into(), safetensors(Value::Object(header), &[0; 16])));
    // 50,000 different prefixes, each with a model's first name: every one is a candidate model
    let mut header = serde_json::Map::new();
    for i in 0..50_000 {
        header.insert(
            format!("p{i}.sig_net.0.weight"),
            json!({ "dtype": "F32", "shape": [0, 1], "data_offsets": [0, 0] }),
        );
    }
    cases.push(("prefixes-5e4.safetensors".into(), safetensors(Value::Object(header), &[])));
    // 2,000 nested prefixes, each namespace holding all the deeper ones
    let mut header = serde_json::Map::new();
    for k in 0..2_000 {
        header.insert(
            format!("{}bijectors.0.sig_net.0.weight", "bijectors.".repeat(k)),
            json!({ "dtype": "F32", "shape": [0], "data_offsets": [0, 0] }),
        );
    }
    cases.push(("prefixes-nested-2e3.safetensors".into(), safetensors(Value::Object(header), &[])));
    // a million empty entries (7 bytes each)
    let mut empty = b"{".to_vec();
    for i in 0..1_000_000 {
        empty.extend_from_slice(format!("{}\"a{i}\":{{}}", if i == 0 { "" } else { "," }).as_bytes());
    }
    empty.push(b'}');
    cases.push(("entries-1e6-empty.safetensors".into(), raw_header(&empty)));
    // a shape array of a million dimensions, a dtype of a million characters, a million metadata keys
    let shape: Vec<u8> = std::iter::repeat_n(&b"0,"[..], 1_000_000).flatten().copied().collect();
    let mut long = b"{\"w\":{\"dtype\":\"F32\",\"shape\":[".to_vec();
    long.extend_from_slice(&shape);
    long.extend_from_slice(b"0],\"data_offsets\":[0,0]}}");
    cases.push(("shape-1e6-dims.safetensors".into(), raw_header(&long)));
    let mut long = b"{\"w\":{\"dtype\":\"".to_vec();
    long.extend(std::iter::repeat_n(b'F', 1_000_000));
    long.extend_from_slice(b"\",\"shape\":[1],\"data_offsets\":[0,4]}}");
    cases.push(("dtype-1e6-chars.safetensors".into(), raw_header(&long)));
    let keys: Vec<String> = (0..1_000_000).map(|i| format!("\"k{i}\":\"v\"")).collect();
    let long = format!("{{\"__metadata__\":{{{}}}}}", keys.join(","));
    cases.push(("metadata-1e6-keys.safetensors".into(), raw_header(long.as_bytes())));
    cases
}

/// A pickle (protocol 2) writer for PyTorch's state_dict format.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
    }
    /// An integer of any size (LONG1: little-endian two's complement bytes).
    fn long(&mut self, le_bytes: &[u8]) -> &mut Self {
        self.op(&[0x8a, le_bytes.len() as u8]).op(le_bytes)
    }
    fn int(&mut self, v: i64) -> &mut Self {
        self.long(&v.to_le_bytes())
    }
    fn ints(&mut self, vs: &[i64]) -> &mut Self {
        self.op(b"(");
        for &v in vs {
            self.int(v);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(storage 'key' of `numel` floats, offset, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, key: &str, numel: &[u8], offset: i64, size: &[i64], stride: &[i64]) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        self.op(b"(")
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .long(numel)
            .op(b"tQ");
        self.int(offset).ints(size).ints(stride).op(b"\x89");
        self.global("collections", "OrderedDict").op(b")R").op(b"tR")
    }
}

/// A `torch.save` zip archive holding `data.pkl` and the storages.
fn torch_zip(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut records: Vec<(String, &[u8])> = vec![("archive/data.pkl".into(), pickle)];
    records.extend(storages.iter().map(|(k, d)| (format!("archive/data/{k}"), *d)));
    records.push(("archive/version".into(), b"3\n"));
    for (name, data) in records {
        z.start_file(name, o).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// A state_dict of a 1-layer model (hidden 4) whose `sig_net.0.weight` is the given tensor.
fn model_with_weight(numel: &[u8], offset: i64, size: &[i64], stride: &[i64], data: &[u8]) -> Vec<u8> {
    let mut p = Pickle::new();
    p.op(b"}(");
    p.str("bijectors.0.sig_net.0.weight").tensor("0", numel, offset, size, stride);
    for (name, shape) in [
        ("bijectors.0.sig_net.0.bias", vec![4]),
        ("bijectors.0.sig_net.2.weight", vec![1, 4]),
        ("bijectors.0.sig_net.2.bias", vec![1]),
    ] {
        let strides: Vec<i64> = if shape.len() == 2 { vec![shape[1], 1] } else { vec![1] };
        p.str(name).tensor("1", &16i64.to_le_bytes(), 0, &shape, &strides);
    }
    p.op(b"u.");
    torch_zip(&p.0, &[("0", data), ("1", &[0u8; 64])])
}

fn torch_cases() -> Vec<(String, Vec<u8>)> {
    let four = [0u8; 16];
    let mut cases = vec![
        // a stride-0 view of 2^40 elements of a one-element storage: fits the storage, not memory
        (
            "view-2e40-of-one-element",
            model_with_weight(&1i64.to_le_bytes(), 0, &[1 << 40, 1], &[0, 0], &four[..4]),
        ),
        // a storage that declares 2^62 elements
        ("storage-2e62", model_with_weight(&(1i64 << 62).to_le_bytes(), 0, &[4, 1], &[1, 1], &four)),
        // negative strides and offsets, a thousand dimensions
        ("stride-negative", model_with_weight(&4i64.to_le_bytes(), 3, &[4, 1], &[-1, 1], &four)),
        ("offset-negative", model_with_weight(&4i64.to_le_bytes(), -4, &[4, 1], &[1, 1], &four)),
        ("size-1000-dims", model_with_weight(&4i64.to_le_bytes(), 0, &[1; 1000], &[1; 1000], &four)),
    ];
    // a size beyond 64 bits (a 9-byte integer, 2^64 + 4)
    {
        let mut p = Pickle::new();
        p.op(b"}(").str("bijectors.0.sig_net.0.weight");
        p.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        p.op(b"(").str("storage").global("torch", "FloatStorage").str("0").str("cpu").int(4).op(b"tQ");
        p.int(0).op(b"(").long(&[4, 0, 0, 0, 0, 0, 0, 0, 1]).int(1).op(b"t").ints(&[1, 1]).op(b"\x89");
        p.global("collections", "OrderedDict").op(b")R").op(b"tR").op(b"u.");
        cases.push(("size-beyond-i64", torch_zip(&p.0, &[("0", &four)])));
    }
    // 20,000 names, each a stride-0 view of 10,000 elements of one storage: 800 MB to materialize
    // (the reader takes about 1.4 kB per pickled tensor: 20,000 keep this case near 150 MB)
    let mut p = Pickle::new();
    p.op(b"}(");
    for i in 0..20_000 {
        p.str(&format!("bijectors.{i}.sig_net.0.weight")).tensor(
            "0",
            &1i64.to_le_bytes(),
            0,
            &[10_000, 1],
            &[0, 0],
        );
    }
    p.op(b"u.");
    cases.push(("views-2e4-x-1e4", torch_zip(&p.0, &[("0", &four[..4])])));
    // five million empty tuples: one object per byte (each some 130 bytes in memory)
    let mut tuples = vec![0x80, 2];
    tuples.extend(std::iter::repeat_n(b')', 5_000_000));
    tuples.push(b'.');
    cases.push(("legacy-5e6-tuples", tuples.clone()));
    cases.push(("zip-5e6-tuples", torch_zip(&tuples, &[])));
    // 20,000 layers named, each an empty tensor: the inferred model is bounded by the file
    let mut p = Pickle::new();
    p.op(b"}(");
    p.str("bijectors.0.sig_net.0.weight").tensor("0", &4i64.to_le_bytes(), 0, &[4, 1], &[1, 1]);
    p.str("bijectors.0.sig_net.2.weight").tensor("0", &4i64.to_le_bytes(), 0, &[1, 4], &[4, 1]);
    for i in 1..20_000 {
        p.str(&format!("bijectors.{i}.sig_net.0.weight")).tensor(
            "0",
            &4i64.to_le_bytes(),
            0,
            &[0, 1],
            &[1, 1],
        );
    }
    p.op(b"u.");
    cases.push(("names-2e4-empty-layers", torch_zip(&p.0, &[("0", &four)])));
    // 20,000 different prefixes, each with a model's first name
    let mut p = Pickle::new();
    p.op(b"}(");
    for i in 0..20_000 {
        p.str(&format!("p{i}.sig_net.0.weight")).tensor("0", &4i64.to_le_bytes(), 0, &[0, 1], &[1, 1]);
    }
    p.op(b"u.");
    cases.push(("prefixes-2e4", torch_zip(&p.0, &[("0", &four)])));
    cases.into_iter().map(|(n, b)| (format!("{n}.pt"), b)).collect()
}

fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

fn npy_cases() -> Vec<(String, Vec<u8>)> {
    [
        ("shape-2e40", "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776, 2), }"),
        ("shape-negative", "{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 2), }"),
        ("shape-overflow", "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"),
        (
            "shape-beyond-u64",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, 2), }",
        ),
        ("descr-object", "{'descr': '|O', 'fortran_order': False, 'shape': (2, 2), }"),
    ]
    .into_iter()
    .map(|(n, h)| (format!("{n}.npy"), npy(h, &[0; 32])))
    .collect()
}

#[test]
fn structured_hostile_files_are_errors_within_a_second_and_200_mb() {
    let dir = common::tmp_dir("hostile-structured");
    // what a valid file costs: the process with libtorch loaded, a model built
    let valid = dir.join("valid.safetensors");
    let flow =
        rnvp::Flow::new(&rnvp::FlowConfig::stacked(2, 1, 4, 2), tch::Device::Cpu, tch::Kind::Float).unwrap();
    Checkpoint::from_flow(&flow, None).save(&valid).unwrap();
    let base = run_child(&valid);
    assert!(base.error.is_none(), "a valid file fails: {:?}", base.error);
    eprintln!("valid file: {} ms, peak {} MB", base.millis, base.peak_kb / 1024);
    let cases: Vec<(String, Vec<u8>)> =
        safetensors_cases().into_iter().chain(torch_cases()).chain(npy_cases()).collect();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let (mut slowest, mut largest) = (0, 0);
    for (name, bytes) in &cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let r = run_child(&path);
        let err = r.error.unwrap_or_else(|| panic!("{name} ({} bytes) was accepted", bytes.len()));
        assert!(!err.is_empty() && !err.contains("panicked"), "{name}: {err}");
        assert!(r.cpu_millis < MAX_CPU_MILLIS, "{name}: {} ms of CPU time ({err})", r.cpu_millis);
        assert!(r.millis < MAX_WALL_MILLIS, "{name}: {} ms ({err})", r.millis);
        assert!(r.peak_kb < MAX_PEAK_KB, "{name}: peak {} MB ({err})", r.peak_kb / 1024);
        eprintln!(
            "{name:40} {:>9} bytes {:>4} ms ({:>4} ms CPU) {:>4} MB: {}",
            bytes.len(),
            r.millis,
            r.cpu_millis,
            r.peak_kb / 1024,
            err.chars().take(110).collect::<String>()
        );
        slowest = slowest.max(r.cpu_millis);
        largest = largest.max(r.peak_kb);
    }
    eprintln!("{} cases: slowest {slowest} ms of CPU time, largest peak {} MB", cases.len(), largest / 1024);
}

/// What a command did: whether it failed with one clean line, that line, its seconds, and its
/// peak resident memory (reported by rnvp itself with `RNVP_PEAK_MEMORY`), kB.
struct Run {
    clean: bool,
    err: String,
    secs: f64,
    peak_kb: u64,
}

/// `rnvp ARGS` under an address-space limit of 2 GB (its own need is well under 1 GB).
fn rnvp_limited(args: &[&str]) -> Run {
    let t0 = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2000000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_rnvp"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("MALLOC_ARENA_MAX", "2")
        .env("RNVP_PEAK_MEMORY", "1")
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    let (err, peak) = match stderr.rsplit_once('\n') {
        Some((err, last)) if last.starts_with("peak memory: ") => (err.to_string(), last.to_string()),
        _ => (stderr.clone(), String::new()),
    };
    let peak_kb = peak
        .strip_prefix("peak memory: ")
        .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("rnvp {args:?}: no peak memory line in {stderr}"));
    let clean = !out.status.success()
        && out.status.code().is_some()
        && err.lines().count() == 1
        && err.starts_with("error: ")
        && !err.contains("panicked");
    Run { clean, err, secs, peak_kb }
}

/// Asserts a clean, fast and small failure whose message has every word.
fn refused(args: &[&str], words: &[&str]) {
    let r = rnvp_limited(args);
    assert!(r.clean, "rnvp {args:?}: {}", r.err);
    for w in words {
        assert!(r.err.contains(w), "rnvp {args:?}: '{w}' not in {}", r.err);
    }
    assert!(r.secs < 5.0, "rnvp {args:?}: {:.1} s", r.secs);
    assert!(r.peak_kb < MAX_PEAK_KB, "rnvp {args:?}: peak {} MB", r.peak_kb / 1024);
}

#[test]
fn every_command_that_loads_a_checkpoint_refuses_absurd_ones_fast() {
    let dir = common::tmp_dir("hostile-cli");
    let data = dir.join("x.csv");
    std::fs::write(&data, "0.1,0.2\n0.3,-0.4\n1.5,0.7\n").unwrap();
    let (d, out) = (data.to_str().unwrap(), dir.join("out"));
    let o = out.to_str().unwrap();
    for (name, layers) in [("h2e8.safetensors", 3), ("l3e6.safetensors", 3_000_000)] {
        let path = dir.join(name);
        let m = meta(config(json!(2), json!(1), json!(200_000_000), json!(layers)));
        std::fs::write(&path, safetensors(json!({ "__metadata__": m }), &[])).unwrap();
        let p = path.to_str().unwrap();
        let o_st = format!("{o}.safetensors");
        let commands: Vec<Vec<&str>> = vec![
            vec!["inspect", p],
            vec!["inspect", p, "--json"],
            vec!["sample", "--checkpoint", p, "-n", "3", "--device", "cpu"],
            vec!["log-prob", "--checkpoint", p, "--input", d, "--device", "cpu"],
            vec!["encode", "--checkpoint", p, "--input", d, "--device", "cpu"],
            vec!["decode", "--checkpoint", p, "--input", d, "--device", "cpu"],
            vec!["eval", "--checkpoint", p, "--data", "two-moons", "-n", "10", "--device", "cpu"],
            vec!["plot", "--checkpoint", p, "--out-dir", o, "--device", "cpu"],
            vec!["convert", p, &o_st],
            vec!["export", "--checkpoint", p, "--out", o],
            vec!["train", "--data", "two-moons", "--out", &o_st, "--resume", p, "--device", "cpu", "--quiet"],
        ];
        for args in commands {
            refused(&args, &[name]);
        }
    }
}

#[test]
fn files_that_are_not_regular_or_too_large_fail_before_reading() {
    let dir = common::tmp_dir("hostile-special");
    let fifo = dir.join("pipe.csv");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // a 50 GB file that takes no space (sparse), or larger where this machine would read 50 GB
    let limit = rnvp::data::io::read_limit(rnvp::data::io::Contents::Checkpoint);
    let size = (50u64 << 30).max(2 * limit + 1);
    let big = dir.join("big.safetensors");
    std::fs::File::create(&big).unwrap().set_len(size).unwrap();
    let big_csv = dir.join("big.csv");
    std::fs::File::create(&big_csv).unwrap().set_len(size).unwrap();
    let flow =
        rnvp::Flow::new(&rnvp::FlowConfig::stacked(2, 1, 4, 2), tch::Device::Cpu, tch::Kind::Float).unwrap();
    let ck = dir.join("m.safetensors");
    Checkpoint::from_flow(&flow, None).save(&ck).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (fifo_s, big_s, big_csv_s, ck_s) = (s(&fifo), s(&big), s(&big_csv), s(&ck));
    for (args, words) in [
        (vec!["inspect", fifo_s.as_str()], vec!["pipe.csv", "FIFO"]),
        (
            vec!["log-prob", "--checkpoint", &ck_s, "--input", &fifo_s, "--device", "cpu"],
            vec!["pipe.csv", "FIFO"],
        ),
        (
            vec!["train", "--data", &fifo_s, "--out", "x.safetensors", "--device", "cpu"],
            vec!["pipe.csv", "FIFO"],
        ),
        (vec!["inspect", "/dev/zero"], vec!["/dev/zero", "character device"]),
        (
            vec!["sample", "--checkpoint", "/dev/zero", "-n", "2", "--device", "cpu"],
            vec!["/dev/zero", "regular"],
        ),
        (vec!["inspect", &big_s], vec!["big.safetensors", "is more than rnvp reads"]),
        (
            vec!["log-prob", "--checkpoint", &ck_s, "--input", &big_csv_s, "--device", "cpu"],
            vec!["big.csv", "is more than rnvp reads"],
        ),
    ] {
        refused(&args, &words);
    }
    // the library's reader, directly: the limit applies before a byte is read
    let err = rnvp::data::io::read_file(&big, rnvp::data::io::Contents::Checkpoint).unwrap_err().to_string();
    assert!(err.contains("more than rnvp reads"), "{err}");
}

#[test]
fn tensors_of_other_dtypes_beside_the_model_are_ignored_not_refused() {
    // a Python-written safetensors file with an int64 step counter beside the model's tensors
    let (mut header, mut data) = small_model();
    let start = data.len();
    data.extend_from_slice(&7i64.to_le_bytes());
    header.insert("step".into(), json!({ "dtype": "I64", "shape": [], "data_offsets": [start, data.len()] }));
    let dir = common::tmp_dir("hostile-int-beside");
    let path = dir.join("m.safetensors");
    std::fs::write(&path, safetensors(Value::Object(header.clone()), &data)).unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.ignored, ["step"]);
    ck.to_flow(tch::Device::Cpu, tch::Kind::Float).unwrap();
    // the same dtype inside the model is an error naming the tensor
    header.insert(
        "bijectors.0.sig_net.2.bias".into(),
        json!({ "dtype": "I32", "shape": [1], "data_offsets": [0, 4] }),
    );
    std::fs::write(&path, safetensors(Value::Object(header), &data)).unwrap();
    let err = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(err.contains("bijectors.0.sig_net.2.bias") && err.contains("I32"), "{err}");
}
