//! The image flows as a user runs them, through the `rnvp` binary: scikit-learn's digits trained
//! with each image architecture (and the notebook's MLP on the flattened digits), scored in bits
//! per dimension, sampled at a temperature, exported to TorchScript and checked from PyTorch,
//! drawn; RGB `.npy` arrays and directories of PNG files (written here by a minimal PNG writer of
//! the reference python, independent of the reader rnvp uses); and one-line errors with a
//! non-zero exit for every kind of bad image input.
//!
//! Every model is tiny (conv channels 8, one coupling per group, 30 steps on one thread), so that
//! the whole file runs in well under a minute on two cores.
mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Stderr shows no panic and no libtorch or Rust backtrace.
fn assert_no_panic(args: &[&str], err: &str) {
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace", "Exception raised from"] {
        assert!(!err.contains(bad), "rnvp {args:?}: '{bad}' in stderr:\n{err}");
    }
}

/// Runs a command that must fail: non-zero exit (not a signal), no panic, and exactly one line on
/// stderr that contains every word of `expect` (compared ignoring case).
fn fails(args: &[&str], expect: &[&str]) {
    let out = rnvp(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rnvp {args:?} should fail; stderr: {err}");
    assert!(out.status.code().is_some(), "rnvp {args:?} was killed by a signal");
    assert_no_panic(args, &err);
    assert_eq!(err.trim_end().lines().count(), 1, "rnvp {args:?}: not one line:\n{err}");
    for word in expect {
        assert!(err.to_lowercase().contains(&word.to_lowercase()), "rnvp {args:?}: '{word}' not in: {err}");
    }
}

/// Runs a command that may succeed or fail, but if it fails, fails cleanly (one line, no panic).
fn clean(args: &[&str]) {
    let out = rnvp(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some(), "rnvp {args:?} was killed by a signal");
    assert_no_panic(args, &err);
    if !out.status.success() {
        assert_eq!(err.trim_end().lines().count(), 1, "rnvp {args:?}: not one line:\n{err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A tiny image model: 8 conv channels, one coupling per group, 30 steps, on one thread.
const TINY: [&str; 11] =
    ["--hidden", "8", "--layers", "1", "--steps", "30", "--batch-size", "64", "--threads", "1", "--quiet"];

/// [`TINY`] with `steps` optimizer steps instead of 30.
fn tiny_steps(steps: &'static str) -> Vec<&'static str> {
    let mut v = TINY.to_vec();
    let at = v.iter().position(|a| *a == "--steps").unwrap() + 1;
    v[at] = steps;
    v
}

/// `log₂ 17`: the bits per dimension of the uniform density on the digits' 17 levels, which a
/// model whose log-density is 0 everywhere scores.
fn uniform_bpd(levels: f64) -> f64 {
    levels.log2()
}

/// Asserts that `path` is a PNG file that decodes to a picture of at least 100 × 100 pixels with
/// more than one colour, and is not a trivially small file.
fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{}: not a PNG file", path.display());
    assert!(bytes.len() > 5000, "{}: only {} bytes", path.display(), bytes.len());
    let img = image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert!(
        img.width() >= 100 && img.height() >= 100,
        "{}: {} × {}",
        path.display(),
        img.width(),
        img.height()
    );
    let first = img.get_pixel(0, 0);
    assert!(img.pixels().any(|p| p != first), "{}: a single colour", path.display());
}

/// Writes a `.npy` file (format 1.0, C order) of `shape` with numpy's type `descr` and the raw
/// little-endian `data`.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let dims = if shape.len() == 1 { format!("{},", dims[0]) } else { dims.join(", ") };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

fn npy_u8(path: &Path, shape: &[usize], v: &[u8]) {
    assert_eq!(shape.iter().product::<usize>(), v.len());
    write_npy(path, "|u1", shape, v);
}

fn npy_i64(path: &Path, shape: &[usize], v: &[i64]) {
    assert_eq!(shape.iter().product::<usize>(), v.len());
    write_npy(path, "<i8", shape, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
}

fn npy_f64(path: &Path, shape: &[usize], v: &[f64]) {
    assert_eq!(shape.iter().product::<usize>(), v.len());
    write_npy(path, "<f8", shape, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
}

/// The reference python's minimal PNG writer (zlib and struct only, no PIL): each image of the
/// uint8 `.npy` array `src` ([n, h, w] grey or [n, h, w, 3] RGB) becomes `out/<prefix>NNN.png`.
const PNG_WRITER: &str = r#"
import struct, sys, zlib
import numpy as np

def png(path, a):
    h, w = a.shape[:2]
    color = 0 if a.ndim == 2 else 2
    raw = b"".join(b"\x00" + np.ascontiguousarray(a[y], dtype=np.uint8).tobytes() for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

src, out, prefix = sys.argv[1:4]
a = np.load(src)
assert a.dtype == np.uint8 and a.ndim in (3, 4), (a.dtype, a.shape)
for i, img in enumerate(a):
    png(f"{out}/{prefix}{i:03d}.png", img)
"#;

/// Writes the images of the uint8 `.npy` file `src` as PNG files `dir/<prefix>NNN.png`.
fn write_pngs(src: &Path, dir: &Path, prefix: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new(python())
        .args(["-c", PNG_WRITER, s(src), s(dir), prefix])
        .output()
        .expect("cannot start python");
    assert!(out.status.success(), "the PNG writer failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The digits file rnvp reads (`RNVP_DIGITS`, else the one `scripts/setup` exports).
fn digits_path() -> PathBuf {
    match std::env::var_os("RNVP_DIGITS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo().join(".rnvp/data/digits.npy"),
    }
}

/// Loads the exported `bpd.pt`, `log_prob.pt`, `encode.pt` and `decode.pt` from `dir` in PyTorch
/// and runs them on the digits' test set (the last 360), dequantized with numpy's noise.
const EXPORT_CHECK: &str = r#"
import json, math, sys
import numpy as np, torch

d, digits = sys.argv[1], sys.argv[2]
v = np.load(digits)[-360:].reshape(360, 64).astype(np.float64)
assert v.min() >= 0 and v.max() <= 16
u = np.random.default_rng(2024).random(v.shape)
# dequantized values in (0, 1), kept off the ends that float32 would round onto
x = torch.from_numpy(np.clip((v + u) / 17, 1e-6, 1 - 1e-6).astype(np.float32))
bpd = torch.jit.load(d + "/bpd.pt")(x).double()
lp = torch.jit.load(d + "/log_prob.pt")(x).double()
from_lp = -(lp - 64 * math.log(17)) / (64 * math.log(2))
z = torch.jit.load(d + "/encode.pt")(x[:8])
decode = torch.jit.load(d + "/decode.pt")
back = decode(z)
torch.manual_seed(0)
samples = decode(0.7 * torch.randn(16, 64))
print(json.dumps({
    "shape": list(bpd.shape),
    "finite": bool(torch.isfinite(bpd).all()),
    "mean_bpd": bpd.mean().item(),
    "bpd_vs_log_prob": (bpd - from_lp).abs().max().item(),
    "z_shape": list(z.shape),
    "round_trip": (back.double() - x[:8].double()).abs().max().item(),
    "samples_lo": samples.min().item(),
    "samples_hi": samples.max().item(),
    "samples_finite": bool(torch.isfinite(samples).all()),
}))
"#;

/// The whole digits session with one architecture: train with figures, score the test set,
/// sample, export and check from PyTorch, plot.
fn digits_session(name: &str, model: &[&str]) {
    let dir = tmp_dir(name);
    let ck = dir.join("m.safetensors");
    let plots = dir.join("train-plots");
    let mut args = vec!["train", "--data", "digits", "--out", s(&ck), "--plot-dir", s(&plots)];
    args.extend_from_slice(model);
    args.extend_from_slice(&["--steps", "30", "--batch-size", "64", "--threads", "1", "--quiet"]);
    let out = ok(&args);
    assert!(out.contains("trained 30 steps") && out.contains("bits/dim"), "{out}");
    for f in ["samples.png", "reconstructions.png", "interpolation.png", "loss.png"] {
        assert_png(&plots.join(f));
    }

    // the test set's bits per dimension: finite, below the uniform density's log₂ 17 = 4.09 (30
    // steps of these tiny models give 3.4 to 3.7; one whose log-density is 0 would give 4.09, an
    // untrained R-NVP or notebook MLP 4.9 to 5.4), above 0
    let v = json(&ok(&["eval", "--checkpoint", s(&ck), "--data", "digits", "--json", "--threads", "1"]));
    let bpd = v["bpd"].as_f64().unwrap_or_else(|| panic!("no bpd: {v}"));
    assert!(bpd.is_finite() && bpd > 0.0 && bpd < 8.0, "{v}");
    assert!(bpd < uniform_bpd(17.0) - 0.15, "{name}: {bpd} bits/dim is not better than uniform: {v}");
    assert_eq!(v["n"].as_u64(), Some(360), "{v}");
    assert_eq!(v["finite"], true, "{v}");
    assert_eq!(v["data"], "digits", "{v}");
    // nll: nats per image of the discrete digits, 64 dimensions
    let nll = v["nll"].as_f64().unwrap();
    let want = bpd * 64.0 * std::f64::consts::LN_2;
    assert!((nll - want).abs() <= 1e-6 * want.abs(), "nll {nll} ≠ bpd · 64 · ln 2 = {want}");
    let text = ok(&["eval", "--checkpoint", s(&ck), "--data", "digits", "--threads", "1"]);
    assert!(text.contains("bits/dim") && text.contains("360"), "{text}");
    assert!(text.contains(&format!("{bpd:.4}")), "text and JSON differ: {text} / {v}");

    // 20 samples at temperature 0.7: 20 rows of 64 values in [0, 1], a grid of them
    let csv = dir.join("s.csv");
    let grid = dir.join("g.png");
    ok(&[
        "sample",
        "--checkpoint",
        s(&ck),
        "-n",
        "20",
        "--temperature",
        "0.7",
        "--png",
        s(&grid),
        "--out",
        s(&csv),
    ]);
    let m = rnvp::data::io::read_matrix(&csv).unwrap();
    assert_eq!((m.rows, m.cols), (20, 64));
    assert!(m.data.iter().all(|x| (0.0..=1.0).contains(x)), "a sample outside [0, 1]");
    assert!((1..20).any(|i| m.row(i) != m.row(0)), "all 20 samples are the same image");
    assert!(std::fs::read_to_string(&csv).unwrap().starts_with("x0,x1,"));
    assert_png(&grid);
    // temperature 0 draws z = 0 for every sample: the same image each time
    let zero = dir.join("t0.csv");
    ok(&["sample", "--checkpoint", s(&ck), "-n", "3", "--temperature", "0", "--out", s(&zero)]);
    let m = rnvp::data::io::read_matrix(&zero).unwrap();
    assert_eq!((m.rows, m.cols), (3, 64));
    assert!(m.row(1) == m.row(0) && m.row(2) == m.row(0), "temperature 0 gave different images");

    // TorchScript: bpd.pt in PyTorch on the test images with numpy's noise agrees with eval
    let exported = dir.join("ts");
    let listed = ok(&["export", "--checkpoint", s(&ck), "--out", s(&exported)]);
    for f in ["encode.pt", "log_prob.pt", "bpd.pt", "decode.pt"] {
        assert!(listed.contains(f) && exported.join(f).is_file(), "export: no {f} in {listed}");
    }
    let out = Command::new(python())
        .args(["-c", EXPORT_CHECK, s(&exported), s(&digits_path())])
        .output()
        .expect("cannot start the reference python");
    assert!(out.status.success(), "the export check failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let py = json(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(py["shape"], serde_json::json!([360]), "{py}");
    assert_eq!(py["finite"], true, "{py}");
    let mean = py["mean_bpd"].as_f64().unwrap();
    assert!((mean - bpd).abs() < 0.05, "{name}: bpd.pt gives {mean} bits/dim, eval {bpd}: {py}");
    assert!(py["bpd_vs_log_prob"].as_f64().unwrap() < 1e-3, "bpd.pt and log_prob.pt disagree: {py}");
    assert_eq!(py["z_shape"], serde_json::json!([8, 64]), "{py}");
    assert!(py["round_trip"].as_f64().unwrap() < 1e-3, "decode(encode(x)) ≠ x: {py}");
    assert_eq!(py["samples_finite"], true, "{py}");
    assert!(py["samples_lo"].as_f64().unwrap() >= 0.0 && py["samples_hi"].as_f64().unwrap() <= 1.0, "{py}");

    // the figures again from the checkpoint, with the test set's reconstructions
    let figs = dir.join("plots");
    let listed =
        ok(&["plot", "--checkpoint", s(&ck), "--data", "digits", "--out-dir", s(&figs), "--threads", "1"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    for f in ["samples.png", "reconstructions.png", "interpolation.png"] {
        assert!(listed.contains(f), "plot: no {f} in {listed}");
        assert_png(&figs.join(f));
    }
}

#[test]
fn digits_with_glow_image_train_score_sample_export_and_plot() {
    digits_session("img-cli-glow", &["--arch", "glow-image", "--hidden", "8", "--layers", "1"]);
}

#[test]
fn digits_with_realnvp_image_train_score_sample_export_and_plot() {
    digits_session("img-cli-realnvp", &["--arch", "realnvp-image", "--hidden", "8", "--layers", "1"]);
}

#[test]
fn digits_with_the_notebook_mlp_on_flattened_images() {
    digits_session("img-cli-notebook", &["--arch", "notebook", "--hidden", "32", "--layers", "2"]);
}

/// 40 RGB images of 4 × 4 with structure (a gradient per channel, shifted by each image's own
/// random offsets) and a little noise, as `[n, h, w, 3]` uint8 values. The images are alike in
/// distribution, so that the last 10% (validation) are like the rest.
fn rgb_images() -> Vec<u8> {
    let mut rng = rnvp::data::Rng::new(11);
    let mut v = Vec::with_capacity(40 * 4 * 4 * 3);
    for _ in 0..40 {
        let (a, b) = (rng.below(60), rng.below(60));
        for y in 0..4usize {
            for x in 0..4usize {
                for base in [40 * x + a, 50 * y + b, 30 * (x + y) + (a + b) / 2] {
                    v.push((base + rng.below(4)) as u8);
                }
            }
        }
    }
    v
}

#[test]
fn rgb_npy_and_png_directories_train_and_read_alike() {
    let dir = tmp_dir("img-cli-rgb");
    let npy = dir.join("rgb.npy");
    npy_u8(&npy, &[40, 4, 4, 3], &rgb_images());
    // the same images as RGB PNG files, one per image
    let pngs = dir.join("pngs");
    write_pngs(&npy, &pngs, "img");
    assert_eq!(std::fs::read_dir(&pngs).unwrap().count(), 40);

    // glow-image with one level on the .npy (channels last): 3 × 4 × 4 = 48 values per image
    let ck = dir.join("glow.safetensors");
    let plots = dir.join("plots");
    let mut args = vec!["train", "--data", s(&npy), "--arch", "glow-image", "--scales", "1", "--out", s(&ck)];
    args.extend_from_slice(&["--plot-dir", s(&plots)]);
    args.extend_from_slice(&TINY);
    ok(&args);
    for f in ["samples.png", "reconstructions.png", "interpolation.png", "loss.png"] {
        assert_png(&plots.join(f));
    }
    let from_npy = json(&ok(&["eval", "--checkpoint", s(&ck), "--data", s(&npy), "--json"]));
    let bpd = from_npy["bpd"].as_f64().unwrap();
    // 256 levels: the uniform density scores 8 bits/dim (30 steps give about 7.2)
    assert!(bpd.is_finite() && bpd > 0.0 && bpd < uniform_bpd(256.0) - 0.3, "{from_npy}");
    assert_eq!(from_npy["n"].as_u64(), Some(40), "{from_npy}");
    // the PNG directory holds the same images in the same order, channels in the same order: the
    // same model scores it exactly as the .npy
    let from_png = json(&ok(&["eval", "--checkpoint", s(&ck), "--data", s(&pngs), "--json"]));
    assert_eq!(from_png["n"], from_npy["n"], "{from_png}");
    assert_eq!(
        from_png["bpd"], from_npy["bpd"],
        "the PNG files and the .npy read differently: {from_png} / {from_npy}"
    );
    let samples = dir.join("s.npy");
    ok(&["sample", "--checkpoint", s(&ck), "-n", "12", "--out", s(&samples), "--png", s(&dir.join("s.png"))]);
    let m = rnvp::data::io::read_matrix(&samples).unwrap();
    assert_eq!((m.rows, m.cols), (12, 48));
    assert!(m.data.iter().all(|x| (0.0..=1.0).contains(x)));
    assert_png(&dir.join("s.png"));

    // realnvp-image (two scales: one squeeze of 4 × 4) on the directory of PNG files
    let ck = dir.join("realnvp.safetensors");
    let mut args = vec!["train", "--data", s(&pngs), "--arch", "realnvp-image", "--out", s(&ck)];
    args.extend_from_slice(&TINY);
    let out = ok(&args);
    assert!(out.contains("bits/dim"), "{out}");
    let v = json(&ok(&["eval", "--checkpoint", s(&ck), "--data", s(&pngs), "--json"]));
    let bpd = v["bpd"].as_f64().unwrap();
    assert!(bpd.is_finite() && bpd > 0.0 && bpd < uniform_bpd(256.0) - 0.3, "{v}"); // about 6.4
    assert_eq!(v["n"].as_u64(), Some(40), "{v}");
    let figs = dir.join("png-plots");
    let listed = ok(&["plot", "--checkpoint", s(&ck), "--data", s(&pngs), "--out-dir", s(&figs)]);
    for f in ["samples.png", "reconstructions.png", "interpolation.png"] {
        assert!(listed.contains(f), "{listed}");
        assert_png(&figs.join(f));
    }
    // and an 8 × 8 model refuses these 3 × 4 × 4 images naming both shapes
    let grey = dir.join("grey.safetensors");
    let mut args = vec!["train", "--data", "digits", "--arch", "glow-image", "--out", s(&grey)];
    args.extend(tiny_steps("2"));
    ok(&args);
    let ints = dir.join("small.npy");
    npy_i64(&ints, &[40, 4, 4], &(0..40 * 16).map(|k| k % 9).collect::<Vec<_>>());
    fails(&["eval", "--checkpoint", s(&grey), "--data", s(&ints)], &["small.npy", "1 × 4 × 4", "1 × 8 × 8"]);
    // the same check on a directory of PNG files (colour, 4 × 4), before any level is looked at
    fails(&["eval", "--checkpoint", s(&grey), "--data", s(&pngs)], &["pngs", "3 × 4 × 4", "1 × 8 × 8"]);
    fails(
        &["plot", "--checkpoint", s(&grey), "--data", s(&ints), "--out-dir", s(&figs)],
        &["small.npy", "1 × 8 × 8"],
    );
}

#[test]
fn bad_image_input_gives_one_line_errors_and_a_non_zero_exit() {
    let dir = tmp_dir("img-cli-bad");
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let out = p("x.safetensors");
    let train = |data: &str, extra: &[&str], expect: &[&str]| {
        let mut args = vec!["train", "--data", data, "--out", &out];
        args.extend_from_slice(extra);
        args.extend_from_slice(&TINY);
        fails(&args, expect);
    };

    // PNG files of mixed sizes: the odd file and the first are named
    let small = dir.join("small.npy");
    npy_u8(&small, &[2, 4, 4], &(0..32).map(|k| (k * 7) as u8).collect::<Vec<_>>());
    let wide = dir.join("wide.npy");
    npy_u8(&wide, &[1, 4, 6], &(0..24).map(|k| (k * 5) as u8).collect::<Vec<_>>());
    let mixed = dir.join("mixed");
    write_pngs(&small, &mixed, "a");
    write_pngs(&wide, &mixed, "c");
    train(&p("mixed"), &["--arch", "realnvp-image"], &["c000.png", "6 × 4", "a000.png"]);

    // integers outside 0..L with --levels L
    let ints = dir.join("ints.npy");
    npy_i64(&ints, &[40, 4, 4], &(0..40 * 16).map(|k| k % 9).collect::<Vec<_>>());
    train(
        &p("ints.npy"),
        &["--levels", "8", "--arch", "glow-image", "--scales", "1"],
        &["ints.npy", "value 8", "0..8"],
    );
    // floats without --levels, and floats off the grid of L levels
    let grid: Vec<f64> = (0..40 * 16).map(|k| (k % 5) as f64 / 4.0).collect();
    npy_f64(&dir.join("floats.npy"), &[40, 4, 4], &grid);
    train(&p("floats.npy"), &["--arch", "glow-image", "--scales", "1"], &["floats.npy", "--levels"]);
    let mut off = grid.clone();
    off[3 * 16 + 6] = 0.3;
    npy_f64(&dir.join("offgrid.npy"), &[40, 4, 4], &off);
    train(&p("offgrid.npy"), &["--levels", "5"], &["offgrid.npy", "0.3", "grid", "5 levels"]);
    // the same floats on their grid train
    let floats = p("floats.npy");
    let mut args = vec!["train", "--data", &floats];
    args.extend_from_slice(&["--levels", "5", "--arch", "glow-image", "--scales", "1", "--out", &out]);
    args.extend_from_slice(&TINY);
    ok(&args);

    // 6 × 6 images cannot be squeezed twice (glow-image --scales 2 needs multiples of 4)
    npy_u8(&dir.join("six.npy"), &[40, 6, 6], &(0..40 * 36).map(|k| (k % 7) as u8).collect::<Vec<_>>());
    train(&p("six.npy"), &["--arch", "glow-image", "--scales", "2"], &["six.npy", "6 × 6", "--scales"]);
    train("digits", &["--arch", "glow-image", "--scales", "4"], &["8 × 8", "--scales"]);
    train("digits", &["--arch", "glow-image", "--scales", "17"], &["17 scales"]);
    train("digits", &["--levels", "16"], &["16", "level"]);
    // too few images to train and validate on
    npy_u8(&dir.join("few.npy"), &[2, 4, 4], &[1; 32]);
    train(&p("few.npy"), &["--arch", "realnvp-image", "--scales", "1"], &["few.npy", "too few"]);

    // image architectures need images; image flags need images
    let csv = p("moons.csv");
    ok(&["datasets", "two-moons", "-n", "200", "--out", &csv]);
    train("two-moons", &["--arch", "glow-image"], &["--arch glow-image", "two-moons"]);
    train(&csv, &["--arch", "glow-image"], &["--arch glow-image", "moons.csv"]);
    train("two-moons", &["--levels", "4"], &["--levels"]);
    train(&csv, &["--scales", "2"], &["--scales"]);
    // tables' flags need tables
    train("digits", &["--context", "1"], &["--context", "digits"]);
    train("digits", &["--bounds", "0,1"], &["--bounds", "digits"]);
    // an empty directory
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(dir.join("empty/notes.txt"), "no images here").unwrap();
    train(&p("empty"), &["--arch", "realnvp-image"], &["empty", "no .png"]);

    // an image checkpoint and a vector one
    let img = p("img.safetensors");
    let mut args = vec!["train", "--data", "digits", "--arch", "glow-image", "--out", &img];
    args.extend_from_slice(&TINY);
    ok(&args);
    let vec_ck = p("moons.safetensors");
    ok(&[
        "train",
        "--data",
        "two-moons",
        "--out",
        &vec_ck,
        "--steps",
        "5",
        "--hidden",
        "8",
        "--layers",
        "1",
        "--quiet",
    ]);
    for sub in ["log-prob", "encode", "decode"] {
        fails(&[sub, "--checkpoint", &img, "--input", &csv], &["img.safetensors", "images"]);
    }
    fails(&["eval", "--checkpoint", &img, "--data", "two-moons"], &["two-moons", "images"]);
    fails(&["eval", "--checkpoint", &img, "--data", &csv], &["moons.csv", "images"]);
    fails(&["eval", "--checkpoint", &vec_ck, "--data", "digits"], &["digits", "images"]);
    fails(&["eval", "--checkpoint", &img, "--data", &p("empty")], &["empty", "no .png"]);
    fails(
        &["plot", "--checkpoint", &img, "--data", "two-moons", "--out-dir", &p("f")],
        &["two-moons", "images"],
    );
    fails(
        &["plot", "--checkpoint", &vec_ck, "--data", "digits", "--out-dir", &p("f")],
        &["digits", "images"],
    );
    for t in ["-1", "nan"] {
        fails(&["sample", "--checkpoint", &img, "-n", "3", "--temperature", t], &["--temperature", t]);
    }
    fails(
        &["plot", "--checkpoint", &img, "--temperature", "inf", "--out-dir", &p("f")],
        &["--temperature", "inf"],
    );
    fails(
        &["sample", "--checkpoint", &vec_ck, "-n", "3", "--temperature", "0.5"],
        &["--temperature", "images"],
    );
    fails(&["sample", "--checkpoint", &img, "-n", "3", "--context", "0.1"], &["--context"]);
    fails(
        &["plot", "--checkpoint", &img, "--context", "0.1", "--out-dir", &p("f")],
        &["--context", "images"],
    );

    // odd but legal shapes either train or fail cleanly, never panic
    npy_u8(&dir.join("one.npy"), &[40, 1, 1], &(0..40).map(|k| (k % 3) as u8).collect::<Vec<_>>());
    npy_u8(&dir.join("c2.npy"), &[40, 2, 2, 2], &(0..40 * 8).map(|k| (k % 3) as u8).collect::<Vec<_>>());
    for (data, arch, scales) in
        [("one.npy", "realnvp-image", "1"), ("c2.npy", "realnvp-image", "2"), ("c2.npy", "glow-image", "1")]
    {
        let data = p(data);
        let mut args = vec!["train", "--data", &data, "--arch", arch, "--scales", scales, "--out", &out];
        args.extend_from_slice(&TINY);
        clean(&args);
    }
}

/// `--logit-alpha` outside (0, ½) is refused, the error naming the flag (as every other flag's).
#[test]
fn logit_alpha_outside_its_range_is_refused_naming_the_flag() {
    let dir = tmp_dir("img-cli-alpha");
    let out = dir.join("x.safetensors");
    for alpha in ["0.5", "0", "-0.1", "0.7", "nan"] {
        let mut args = vec!["train", "--data", "digits", "--arch", "glow-image", "--logit-alpha", alpha];
        args.extend_from_slice(&["--out", s(&out)]);
        args.extend_from_slice(&TINY);
        fails(&args, &["--logit-alpha", alpha]);
    }
}

/// `--logit-alpha` is an image flag, like `--levels` and `--scales`: a toy set or a table refuses
/// it rather than silently ignoring it.
#[test]
fn logit_alpha_is_refused_for_tables_and_toy_sets() {
    let dir = tmp_dir("img-cli-alpha-table");
    let out = dir.join("x.safetensors");
    let csv = dir.join("moons.csv");
    ok(&["datasets", "two-moons", "-n", "200", "--out", s(&csv)]);
    for data in ["two-moons", s(&csv)] {
        let mut args = vec!["train", "--data", data, "--logit-alpha", "0.2", "--out", s(&out)];
        args.extend_from_slice(&TINY);
        fails(&args, &["--logit-alpha"]);
    }
}

/// Flags that would change nothing are refused, not silently ignored: `--scales` with a vector
/// architecture on images, `--init` with an image architecture, `-n`/`--noise` when evaluating
/// images, and `convert --logit-alpha` without `--images`.
#[test]
fn flags_that_would_be_ignored_are_refused() {
    let dir = tmp_dir("img-cli-ignored");
    let out = dir.join("x.safetensors");
    let train = |extra: &[&str], expect: &[&str]| {
        let mut args = vec!["train", "--data", "digits", "--out", s(&out)];
        args.extend_from_slice(extra);
        args.extend_from_slice(&TINY);
        fails(&args, expect);
    };
    train(&["--arch", "glow", "--scales", "2"], &["--scales", "glow"]);
    for init in ["pytorch", "identity"] {
        train(&["--arch", "glow-image", "--init", init], &["--init"]);
    }
    let mut args =
        vec!["train", "--data", "digits", "--arch", "glow-image", "--scales", "1", "--out", s(&out)];
    args.extend_from_slice(&TINY);
    ok(&args);
    for extra in [&["-n", "100"][..], &["--noise", "0.1"][..]] {
        let mut args = vec!["eval", "--checkpoint", s(&out), "--data", "digits"];
        args.extend_from_slice(extra);
        fails(&args, &[extra[0], "digits"]);
    }
    let pt = dir.join("x.pt");
    fails(&["convert", s(&out), s(&pt), "--logit-alpha", "0.1"], &["--logit-alpha", "--images"]);
    // a preset's values are not flags given: --preset digits (which sets --init) trains
    let preset = dir.join("preset.safetensors");
    let text =
        ok(&["train", "--data", "digits", "--preset", "digits", "--steps", "2", "--out", s(&preset), "-q"]);
    let info = json(&ok(&["inspect", s(&preset), "--json"]));
    assert_eq!(info["arch"], "realnvp-image", "{text}\n{info}");
}

/// A `.npy` of images that does not exist is named as missing, not taken for a table (whose
/// errors then say that images are needed).
#[test]
fn a_missing_image_file_is_named_as_missing() {
    let dir = tmp_dir("img-cli-missing");
    let missing = dir.join("missing.npy");
    let img = dir.join("img.safetensors");
    let mut args = vec!["train", "--data", "digits", "--arch", "glow-image", "--out", s(&img)];
    args.extend_from_slice(&TINY);
    ok(&args);
    let missing_file = |args: &[&str]| {
        let out = rnvp(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rnvp {args:?} should fail");
        assert_no_panic(args, &err);
        assert_eq!(err.trim_end().lines().count(), 1, "rnvp {args:?}: not one line:\n{err}");
        let says = ["No such file", "not found", "does not exist"].iter().any(|w| err.contains(w));
        assert!(
            err.contains("missing.npy") && says,
            "rnvp {args:?}: the file is not named as missing: {err}"
        );
    };
    let out = dir.join("x.safetensors");
    let mut args = vec!["train", "--data", s(&missing), "--arch", "glow-image", "--out", s(&out)];
    args.extend_from_slice(&TINY);
    missing_file(&args);
    let mut args = vec!["train", "--data", s(&missing), "--scales", "1", "--out", s(&out)];
    args.extend_from_slice(&TINY);
    missing_file(&args);
    missing_file(&["eval", "--checkpoint", s(&img), "--data", s(&missing)]);
    missing_file(&["plot", "--checkpoint", s(&img), "--data", s(&missing), "--out-dir", s(&dir.join("f"))]);
}

/// A digits checkpoint (glow-image, 10 steps) trained with `--logit-alpha 0.1` into `dir`; returns
/// the path of its latest state, to resume from.
fn alpha_checkpoint(dir: &Path) -> PathBuf {
    let first = dir.join("a.safetensors");
    let mut args = vec!["train", "--data", "digits", "--arch", "glow-image", "--logit-alpha", "0.1"];
    args.extend_from_slice(&["--out", s(&first)]);
    args.extend(tiny_steps("10"));
    ok(&args);
    let last = dir.join("a.last.safetensors");
    assert_eq!(alpha(&first), 0.1);
    assert_eq!(alpha(&last), 0.1);
    last
}

/// The logit's α stored in the image checkpoint at `p`.
fn alpha(p: &Path) -> f64 {
    let ck = rnvp::checkpoint::Checkpoint::load(p).unwrap_or_else(|e| panic!("{e}"));
    ck.images.unwrap_or_else(|| panic!("{}: no image space", p.display())).alpha
}

/// `--resume` continues an image checkpoint with the logit it was trained with: without
/// `--logit-alpha` the checkpoint's α (as a resumed run keeps its bounds mode), never silently
/// the default.
#[test]
fn resuming_an_image_checkpoint_keeps_its_logit_alpha() {
    let dir = tmp_dir("img-cli-resume-alpha");
    let last = alpha_checkpoint(&dir);
    let resumed = dir.join("b.safetensors");
    let args = [
        "train",
        "--data",
        "digits",
        "--resume",
        s(&last),
        "--steps",
        "20",
        "--batch-size",
        "64",
        "--threads",
        "1",
        "--quiet",
        "--out",
        s(&resumed),
    ];
    let out = rnvp(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_no_panic(&args, &err);
    if out.status.success() {
        assert_eq!(
            alpha(&resumed),
            0.1,
            "the resumed run trained the α = 0.1 model on digits taken to the flow with another α, and saved that"
        );
    } else {
        assert!(err.contains("--logit-alpha"), "{err}");
    }
}

/// `--resume` refuses images of another shape than the checkpoint's, even with as many pixels:
/// the flow squeezes the 8 × 8 grid it was built for.
#[test]
fn resuming_an_image_checkpoint_refuses_images_of_another_shape() {
    let dir = tmp_dir("img-cli-resume-shape");
    let last = alpha_checkpoint(&dir);
    // the first 1437 digits' 64 levels each, as 4 × 16 images
    let digits = rnvp::data::images::digits(None).unwrap();
    let values: Vec<u8> = digits.values[..1437 * 64].iter().map(|&v| v as u8).collect();
    let wide = dir.join("wide.npy");
    npy_u8(&wide, &[1437, 4, 16], &values);
    fails(
        &[
            "train",
            "--data",
            s(&wide),
            "--levels",
            "17",
            "--resume",
            s(&last),
            "--steps",
            "20",
            "--logit-alpha",
            "0.1",
            "--batch-size",
            "64",
            "--threads",
            "1",
            "--quiet",
            "--out",
            s(&dir.join("c.safetensors")),
        ],
        &["--resume", "4 × 16", "8 × 8"],
    );
}
