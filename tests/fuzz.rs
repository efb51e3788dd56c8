//! A fuzz campaign on every reader of untrusted files: checkpoints (safetensors, PyTorch zip and
//! legacy pickles, TorchScript / .ot archives) and data files (.npy, CSV). Valid files are mutated
//! (truncations, bit flips, zeroed and random runs, splices, random bytes) and each result must be
//! parsed into a value or an error: never a panic, and each parse takes well under a second.
//!
//! `cargo test --release --test fuzz` runs a fixed, seeded campaign (and the regression corpus in
//! tests/fixtures/fuzz/); `RNVP_FUZZ_ITERS=N` runs N mutations per seed file instead.
mod common;
use rnvp::checkpoint::Checkpoint;
use rnvp::data::{io, Rng};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The committed PyTorch fixtures the campaign mutates: every one listed in
/// tests/fixtures/torch/FIXTURES must be there, and every fixture there must be listed.
fn torch_fixtures() -> Vec<&'static str> {
    let listed: Vec<&str> =
        include_str!("fixtures/torch/FIXTURES").lines().filter(|l| !l.trim().is_empty()).collect();
    let mut present: Vec<String> = std::fs::read_dir(fixtures().join("torch"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".json") && !n.ends_with(".README") && n != "FIXTURES")
        .collect();
    present.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(present, sorted, "tests/fixtures/torch/FIXTURES does not list the fixtures there");
    listed
}

/// Valid seed files: the PyTorch fixtures above, plus files rnvp writes itself (a checkpoint in
/// each format it writes, .npy in both dtypes, CSV).
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let names = torch_fixtures();
    assert!(names.len() >= 18, "{} fixtures", names.len());
    for name in &names {
        let p = fixtures().join("torch").join(name);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()));
        out.push((p.display().to_string(), bytes));
    }
    let flow = common::seeded(0, || {
        rnvp::Flow::new(&rnvp::FlowConfig::stacked(2, 1, 4, 2), tch::Device::Cpu, tch::Kind::Float).unwrap()
    });
    let mut ck =
        Checkpoint::from_flow(&flow, Some(rnvp::data::Scaler { mean: vec![1.0, 2.0], std: vec![3.0, 4.0] }));
    ck.optimizer = None;
    let dir = common::tmp_dir("fuzz-seeds");
    for name in ["m.safetensors", "m.ot", "m.pt"] {
        let p = dir.join(name);
        ck.save(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name.to_string(), std::fs::read(&p).unwrap()));
    }
    let m = rnvp::data::Matrix::new(3, 2, vec![1.0, 2.0, 3.0, 4.5, -1.0, 1e-3]).unwrap();
    out.push(("x.npy".into(), io::npy_bytes(&m, true)));
    out.push(("x64.npy".into(), io::npy_bytes(&m, false)));
    out.push(("x.csv".into(), io::csv_string(&m, &["a".into(), "b".into()]).into_bytes()));
    assert_eq!(out.len(), names.len() + 6);
    out
}

/// One mutation of `data`.
fn mutate(data: &[u8], rng: &mut Rng, other: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    let len = d.len().max(1);
    match rng.below(7) {
        0 => d.truncate(rng.below(len)),
        1 => {
            for _ in 0..1 + rng.below(8) {
                if !d.is_empty() {
                    let i = rng.below(d.len());
                    d[i] ^= 1 << rng.below(8);
                }
            }
        }
        2 => {
            let i = rng.below(len);
            let n = 1 + rng.below(64);
            for b in d.iter_mut().skip(i).take(n) {
                *b = 0;
            }
        }
        3 => {
            let i = rng.below(len);
            let n = 1 + rng.below(64);
            for b in d.iter_mut().skip(i).take(n) {
                *b = rng.below(256) as u8;
            }
        }
        4 => {
            // a large value over a length or count field
            if d.len() >= 8 {
                let i = rng.below(d.len() - 7);
                let v = [u64::MAX, 1 << 40, 1 << 31, u32::MAX as u64, 0x7fff_ffff_ffff_ffff][rng.below(5)];
                d[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        5 => {
            // splice a piece of another valid file in
            let i = rng.below(len).min(d.len());
            let j = rng.below(other.len().max(1)).min(other.len());
            let n = rng.below(256).min(other.len() - j);
            d.splice(i..i, other[j..j + n].iter().copied());
        }
        _ => d = (0..rng.below(512)).map(|_| rng.below(256) as u8).collect(),
    }
    d
}

/// Parses `bytes` with the reader its name picks; returns whether it parsed.
fn parse(name: &str, bytes: &[u8]) -> bool {
    if name.ends_with(".npy") {
        io::parse_npy(bytes, name).is_ok()
    } else if name.ends_with(".csv") {
        std::str::from_utf8(bytes).map(|t| io::parse_csv(t, name).is_ok()).unwrap_or(false)
    } else if !name.ends_with(".safetensors") && name != "m.ot" && name != "m.pt" {
        // PyTorch fixtures (some hold views or dtypes, not a model): the raw reader, then the model
        let raw = rnvp::checkpoint::torch::read(bytes, name).is_ok();
        let _ = Checkpoint::from_bytes(bytes, name).map(|ck| ck.to_flow(tch::Device::Cpu, tch::Kind::Float));
        raw
    } else {
        match Checkpoint::from_bytes(bytes, name) {
            Ok(ck) => {
                // what parsed must also build a model or fail cleanly
                let _ = ck.to_flow(tch::Device::Cpu, tch::Kind::Float);
                true
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                false
            }
        }
    }
}

fn campaign(iters: usize) -> (usize, usize) {
    let seeds = seeds();
    let (mut runs, mut parsed) = (0, 0);
    let mut slowest = Duration::ZERO;
    for (k, (name, data)) in seeds.iter().enumerate() {
        assert!(parse(name, data), "the valid seed file {name} does not parse");
        let mut rng = Rng::new(1000 + k as u64);
        let other = &seeds[(k + 1) % seeds.len()].1;
        for _ in 0..iters {
            let m = mutate(data, &mut rng, other);
            let t0 = Instant::now();
            let ok = std::panic::catch_unwind(|| parse(name, &m));
            let dt = t0.elapsed();
            if ok.is_err() {
                let path = std::env::temp_dir().join(format!("rnvp-fuzz-crash-{}", name.replace('/', "_")));
                std::fs::write(&path, &m).unwrap();
                panic!("{name}: a mutated file made the reader panic; saved to {}", path.display());
            }
            assert!(dt < Duration::from_secs(2), "{name}: a mutated file took {dt:?}");
            slowest = slowest.max(dt);
            parsed += ok.unwrap() as usize;
            runs += 1;
        }
    }
    eprintln!(
        "fuzz: {runs} mutated inputs over {} seed files, {parsed} still parsed, slowest {slowest:?}",
        seeds.len()
    );
    (runs, parsed)
}

#[test]
fn mutated_files_never_crash_the_readers() {
    let iters = std::env::var("RNVP_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let (runs, _) = campaign(iters);
    assert_eq!(runs, iters * (torch_fixtures().len() + 6), "every seed file was mutated");
}

/// The regression corpus: files that once crashed, hung or over-allocated a reader, and
/// hand-made hostile files. Every one must be an error (named after the file), fast.
const CORPUS: [&str; 9] = [
    "deep-lists.pt",
    "huge-header.safetensors",
    "huge-shape.npy",
    "huge-shape.safetensors",
    "long-field.csv",
    "nested-header.npy",
    "offsets-past-end.safetensors",
    "os-system.pt",
    "zip-bomb-size.pt",
];

#[test]
fn regression_corpus_gives_errors() {
    let dir = fixtures().join("fuzz");
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".md"))
        .collect();
    present.sort();
    assert_eq!(present, CORPUS, "the corpus in {} changed: list new files here", dir.display());
    for name in CORPUS {
        let path = dir.join(name);
        let t0 = Instant::now();
        // the readers a user's command runs, chosen by extension as rnvp does
        let result = if name.ends_with(".npy") || name.ends_with(".csv") {
            io::read_matrix(&path).map(|_| ())
        } else {
            Checkpoint::load(&path).and_then(|ck| ck.to_flow(tch::Device::Cpu, tch::Kind::Float).map(|_| ()))
        };
        let dt = t0.elapsed();
        let err = match result {
            Ok(()) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(name), "{name}: the error does not name the file: {err}");
        assert!(dt < Duration::from_secs(1), "{name}: {dt:?}");
    }
}
