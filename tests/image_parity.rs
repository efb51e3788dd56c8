//! The multi-scale image flows against PyTorch (`scripts/reference.py image-parity`, its
//! `ImageFlow`): a seeded float64 flow with a non-trivial state (ActNorm initialised, batch norm's
//! running averages moved, every parameter perturbed) is written as .npy files; rnvp loads the
//! same state_dict (the key sets must be equal) and must give the same `log_prob`, `z`, inverse
//! and training-mode `log_prob` (batch norm with the batch's statistics: [`Mode::Replay`]).
//!
//! Tolerance: 1e-10 absolute and relative (float64).
mod common;

use common::{assert_close, load_npy_weights, npy, reference, tmp_dir};
use rnvp::config::{Arch, ImageShape};
use rnvp::layers::Mode;
use rnvp::{Flow, FlowConfig};
use tch::{Device, Kind};

const TOL: f64 = 1e-10;

/// One reference flow: `(arch name, arch, channels, height, width, scales)`, hidden 6, steps 2.
fn check(name: &str, arch: Arch, channels: i64, height: i64, width: i64, scales: i64) {
    let (hidden, steps, seed) = (6, 2, 3);
    let dir = tmp_dir(&format!("image-parity-{name}-{channels}x{height}x{width}-{scales}"));
    let num = |v: i64| v.to_string();
    let (c, h, w, s, k, n, sd) =
        (num(channels), num(height), num(width), num(scales), num(hidden), num(steps), num(seed));
    reference(&[
        "image-parity",
        "--arch",
        name,
        "--channels",
        &c,
        "--height",
        &h,
        "--width",
        &w,
        "--scales",
        &s,
        "--hidden",
        &k,
        "--steps",
        &n,
        "--seed",
        &sd,
        "--out",
        dir.to_str().unwrap(),
    ]);
    let shape = ImageShape { channels, height, width, scales };
    let cfg = FlowConfig::image(arch, shape, hidden, steps);
    let flow = Flow::new(&cfg, Device::Cpu, Kind::Double).unwrap();
    // the variable names and shapes are the reference state_dict's, both ways
    load_npy_weights(flow.var_store(), &dir.join("weights"));
    flow.stack().check_state().unwrap();
    let what = format!("{name} {channels}×{height}×{width}, {scales} scale(s)");

    let x = npy(dir.join("x.npy"));
    let z_in = npy(dir.join("z_in.npy"));
    assert_eq!((x.kind(), x.size()), (Kind::Double, vec![16, cfg.d]), "{what}: x");
    let want_lp = npy(dir.join("log_prob.npy"));
    let stack = flow.stack();

    let lp = stack.log_prob(&x).unwrap();
    let mut worst = assert_close(&lp, &want_lp, TOL, TOL, &format!("{what}: log_prob"));
    worst = worst.max(assert_close(
        &stack.encode(&x).unwrap(),
        &npy(dir.join("z.npy")),
        TOL,
        TOL,
        &format!("{what}: encode"),
    ));
    let (z, log_det) = stack.forward_in(&x, None, Mode::Eval).unwrap();
    assert_close(&z, &npy(dir.join("z.npy")), TOL, TOL, &format!("{what}: z (eval)"));
    assert_close(&log_det, &npy(dir.join("log_det.npy")), TOL, TOL, &format!("{what}: log-det (eval)"));
    worst = worst.max(assert_close(
        &stack.decode(&z_in).unwrap(),
        &npy(dir.join("x_of_z.npy")),
        TOL,
        TOL,
        &format!("{what}: decode"),
    ));

    // training mode without state changes: batch norm normalises with x's statistics
    let (zt, ldt) = stack.forward_in(&x, None, Mode::Replay).unwrap();
    let train_lp = rnvp::base::log_prob(&zt) + ldt;
    let want_train = npy(dir.join("train_log_prob.npy"));
    worst = worst.max(assert_close(
        &train_lp,
        &want_train,
        TOL,
        TOL,
        &format!("{what}: log_prob (training mode)"),
    ));
    if name == "realnvp-image" {
        // batch norm's statistics matter here: the two modes differ
        let gap = (&want_train - &want_lp).abs().max().double_value(&[]);
        assert!(gap > 1e-3, "{what}: training and evaluation log_prob differ by only {gap}");
    }
    // the replay left the state as loaded
    assert_close(&stack.log_prob(&x).unwrap(), &want_lp, TOL, TOL, &format!("{what}: log_prob after replay"));
    eprintln!("{what}: largest difference from PyTorch {worst:e}");
}

#[test]
fn realnvp_image_matches_pytorch() {
    check("realnvp-image", Arch::REALNVP_IMAGE, 1, 4, 4, 2);
    check("realnvp-image", Arch::REALNVP_IMAGE, 3, 4, 4, 2);
}

#[test]
fn glow_image_matches_pytorch() {
    check("glow-image", Arch::GLOW_IMAGE, 1, 4, 4, 2);
    check("glow-image", Arch::GLOW_IMAGE, 3, 4, 4, 1);
}
