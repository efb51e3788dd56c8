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

/// `.pt` both ways: rnvp's state_dict loads into PyTorch's `ImageFlow` with `strict=True` and gives
/// rnvp's `log_prob`; the state_dict PyTorch saves back is read by `load_image_flow` (the image
/// shape given, the scales and couplings per group found) and gives the same numbers.
#[test]
fn image_flows_cross_the_pt_border_both_ways() {
    let space =
        |c, h, w| rnvp::data::ImageSpace { channels: c, height: h, width: w, levels: 17, alpha: 0.05 };
    for (name, arch, c, h, w, scales, steps) in [
        ("realnvp-image", Arch::REALNVP_IMAGE, 1, 8, 8, 2, 2),
        ("glow-image", Arch::GLOW_IMAGE, 3, 4, 4, 2, 3),
    ] {
        let shape = ImageShape { channels: c, height: h, width: w, scales };
        let cfg = FlowConfig::image(arch, shape, 6, steps);
        let flow = common::seeded(5, || Flow::new(&cfg, Device::Cpu, Kind::Float).unwrap());
        // a state far from the initialisation: every parameter moved, ActNorm initialised
        tch::no_grad(|| {
            let xs = common::seeded(6, || tch::Tensor::randn([32, cfg.d], (Kind::Float, Device::Cpu)));
            let _ = flow.stack().forward_in(&xs, None, Mode::Train).unwrap();
            let mut vars: Vec<(String, tch::Tensor)> = flow.var_store().variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (n, mut v) in vars {
                if !matches!(
                    n.rsplit('.').next().unwrap(),
                    "perm" | "sign" | "sigmoid_shift" | "initialized" | "running_var"
                ) {
                    let noise = common::seeded(7, || tch::Tensor::randn_like(&v) * 0.1);
                    let _ = v.g_add_(&noise);
                }
            }
        });
        let dir = tmp_dir(&format!("image-pt-{name}"));
        let (ours, theirs) = (dir.join("rnvp.pt"), dir.join("torch.pt"));
        rnvp::checkpoint::Checkpoint::from_flow(&flow, None).save(&ours).unwrap();
        let x = common::seeded(8, || tch::Tensor::randn([6, cfg.d], (Kind::Float, Device::Cpu)));
        x.write_npy(dir.join("x.npy")).unwrap();
        let script = format!(
            "import sys, numpy as np, torch\nsys.path.insert(0, {scripts:?})\nimport reference as r\n\
             m = r.ImageFlow({name:?}, {c}, {h}, {w}, {scales}, 6, {steps})\n\
             m.load_state_dict(torch.load({ours:?}), strict=True)\nm.eval()\n\
             x = torch.from_numpy(np.load({x:?}))\n\
             with torch.no_grad(): np.save({lp:?}, m.log_prob(x).numpy())\n\
             torch.save(m.state_dict(), {theirs:?})\n",
            scripts = common::repo().join("scripts").display().to_string(),
            ours = ours.display().to_string(),
            x = dir.join("x.npy").display().to_string(),
            lp = dir.join("lp.npy").display().to_string(),
            theirs = theirs.display().to_string(),
        );
        let out = std::process::Command::new(common::python()).arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let want = flow.stack().log_prob(&x).unwrap();
        assert_close(&npy(dir.join("lp.npy")), &want, 1e-4, 1e-5, &format!("{name}: PyTorch on rnvp's .pt"));
        let ck = rnvp::checkpoint::Checkpoint::load_image_flow(
            &theirs,
            None,
            space(c as usize, h as usize, w as usize),
        )
        .unwrap();
        assert_eq!(ck.config, cfg, "{name}: the configuration read back from PyTorch's .pt");
        let back = ck.to_flow(Device::Cpu, Kind::Float).unwrap();
        assert_close(
            &back.stack().log_prob(&x).unwrap(),
            &want,
            0.0,
            0.0,
            &format!("{name}: rnvp on PyTorch's .pt"),
        );
        // images of another channel count find no such flow (convolutions do not know the height
        // and width, so those are the caller's word)
        let other = space(c as usize + 1, h as usize, w as usize);
        let err =
            rnvp::checkpoint::Checkpoint::load_image_flow(&theirs, None, other).unwrap_err().to_string();
        assert!(err.contains(&format!("no {name} of {} × {h} × {w} images", c + 1)), "{name}: {err}");
    }
}
