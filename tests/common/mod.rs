//! Helpers shared by the integration tests.
#![allow(dead_code)]
pub mod bound;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

/// Runs the `rnvp` binary with `args`.
pub fn rnvp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rnvp")).args(args).output().expect("cannot run rnvp")
}

/// Runs `rnvp ARGS`, which must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = rnvp(args);
    assert!(out.status.success(), "rnvp {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The loss and every trained variable's gradient (sorted by name) of one training step of
/// `flow` on `xs`, by ordinary or reversible backpropagation (the gradients are zeroed first).
pub fn gradients(flow: &rnvp::Flow, xs: &Tensor, reversible: bool) -> (f64, Vec<(String, Tensor)>) {
    let vars = flow.var_store().variables();
    for v in vars.values() {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let loss = flow.stack().loss_backward(xs, None, reversible).unwrap();
    let mut g: Vec<(String, Tensor)> =
        vars.into_iter().filter(|(_, v)| v.requires_grad()).map(|(n, v)| (n, v.grad().copy())).collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    (loss, g)
}

/// The python with PyTorch that `scripts/setup` prepared (or `RNVP_PYTHON`).
pub fn python() -> PathBuf {
    let p = std::env::var("RNVP_PYTHON")
        .ok()
        .or_else(|| option_env!("RNVP_PYTHON").map(String::from))
        .expect("RNVP_PYTHON is not set: run scripts/setup");
    let p = PathBuf::from(p);
    assert!(p.exists(), "{} does not exist: run scripts/setup", p.display());
    p
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/reference.py ARGS` with the reference python; panics with its stderr on failure.
/// PyTorch runs with the machine's own instruction sets even when this process's are lowered (CI's
/// second pass), so that rnvp is compared with a reference that rounds differently.
pub fn reference(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("scripts/reference.py"))
        .args(args)
        .env_remove("MKL_ENABLE_INSTRUCTIONS")
        .env_remove("ATEN_CPU_CAPABILITY")
        .output()
        .expect("cannot start the reference python");
    assert!(out.status.success(), "reference.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `jobs` (each the arguments of one `scripts/reference.py` command) in one python process
/// (`reference.py batch`): torch is imported once instead of once per job. `name` names the
/// scratch directory of the job list.
pub fn reference_batch(name: &str, jobs: &[Vec<String>]) {
    let dir = tmp_dir(&format!("{name}-jobs"));
    let file = dir.join("jobs.jsonl");
    let lines: Vec<String> = jobs.iter().map(|j| serde_json::to_string(j).unwrap()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    reference(&["batch", "--jobs", file.to_str().unwrap()]);
}

/// A fresh empty directory under the target directory, unique per test name.
pub fn tmp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads a `.npy` file written by numpy.
pub fn npy(path: impl AsRef<Path>) -> Tensor {
    let path = path.as_ref();
    Tensor::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Element-wise comparison as f64: finite values within `atol + rtol·|want|`, non-finite values
/// identical (same infinity, NaN where NaN). Returns the largest error on finite values.
pub fn assert_close(got: &Tensor, want: &Tensor, atol: f64, rtol: f64, what: &str) -> f64 {
    assert_close_within(got, want, atol, rtol, None, what)
}

/// [`assert_close`], where each finite element may also differ by twice its rounding bound
/// (`bound`, same shape: see [`bound`]), whichever is larger.
pub fn assert_close_within(
    got: &Tensor,
    want: &Tensor,
    atol: f64,
    rtol: f64,
    bound: Option<&Tensor>,
    what: &str,
) -> f64 {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let flat = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    let (g, w) = (flat(got), flat(want));
    let b = match bound {
        Some(b) => {
            assert_eq!(b.size(), want.size(), "{what}: bound shape");
            flat(b)
        }
        None => vec![0.0; w.len()],
    };
    let mut worst = 0f64;
    for (i, ((g, w), b)) in g.iter().zip(&w).zip(&b).enumerate() {
        if w.is_finite() {
            let err = (g - w).abs();
            let tol = (atol + rtol * w.abs()).max(2.0 * b);
            assert!(err <= tol, "{what}[{i}]: got {g}, want {w} (error {err:e}, tolerance {tol:e})");
            worst = worst.max(err);
        } else {
            assert!((w.is_nan() && g.is_nan()) || g == w, "{what}[{i}]: got {g}, want the non-finite {w}");
        }
    }
    worst
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

/// Copies `DIR/<name>.npy` into each variable of `vs` (names and shapes checked both ways),
/// converting to the variable's dtype.
pub fn load_npy_weights(vs: &tch::nn::VarStore, dir: &Path) {
    let vars = vs.variables();
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".npy").to_string())
        .collect();
    files.sort();
    let mut names: Vec<String> = vars.keys().cloned().collect();
    names.sort();
    assert_eq!(names, files, "variable names differ from the reference state_dict keys");
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let src = npy(dir.join(format!("{name}.npy")));
            assert_eq!(var.size(), src.size(), "{name}: shape");
            var.copy_(&src.to_kind(var.kind()));
        }
    });
}

/// Runs `f` right after seeding libtorch's global generator, holding a lock so that another test
/// of the same binary (tests run on parallel threads) cannot draw from the generator in between.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

/// Every variable of a flow as one f64 vector, in name order.
pub fn flat_weights(flow: &rnvp::Flow) -> Vec<f64> {
    let mut vars: Vec<(String, Tensor)> = flow.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.iter()
        .flat_map(|(_, t)| Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap())
        .collect()
}

/// Euclidean distance between two vectors of the same length.
pub fn distance(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "distance between vectors of different lengths");
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

/// Multiplies every weight of the flow by `1 ± eps` (signs from a seeded generator): a
/// perturbation of the size of a few float32 roundings, to measure how much a training run
/// amplifies rounding differences.
pub fn perturb(flow: &rnvp::Flow, eps: f64, seed: u64) {
    let mut rng = rnvp::data::Rng::new(seed);
    tch::no_grad(|| {
        let mut vars: Vec<(String, Tensor)> = flow.var_store().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, mut v) in vars {
            let signs: Vec<f32> = (0..v.numel())
                .map(|_| if rng.below(2) == 0 { 1.0 + eps as f32 } else { 1.0 - eps as f32 })
                .collect();
            let f = Tensor::from_slice(&signs).view(v.size().as_slice()).to_kind(v.kind());
            let _ = v.f_mul_(&f).unwrap();
        }
    });
}
