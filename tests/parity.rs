//! Parity with real PyTorch: `scripts/reference.py` builds the notebook's `stacked_NVP` / `R_NVP`
//! with fixed weights, writes them with inputs and outputs as .npy; rnvp loads the same weights and
//! must return the same `z`, `log_pz`, `log_jacob` and inverse.
mod common;
use common::*;
use rnvp::{Flow, FlowConfig};
use tch::{nn, Device, Kind};

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    cfg: FlowConfig,
    kind: Kind,
}

fn check(case: &Case) {
    let dir = tmp_dir(&format!("parity-{}", case.name));
    let out = dir.to_str().unwrap();
    let mut args = vec!["parity", "--out", out];
    args.extend_from_slice(case.args);
    reference(&args);

    let flow = Flow::new(&case.cfg, Device::Cpu, case.kind).unwrap();
    load_npy_weights(flow.var_store(), &dir.join("weights"));
    let (tol, rtol) = if case.kind == Kind::Double { (1e-10, 1e-10) } else { (1e-5, 1e-5) };
    let xs = npy(dir.join("x.npy"));
    assert_eq!(xs.kind(), case.kind);
    let (zs, log_pz, log_jacob) = flow.forward(&xs).unwrap();
    assert_close(&zs, &npy(dir.join("z.npy")), tol, rtol, &format!("{}: z", case.name));
    check_log_pz(&log_pz, &npy(dir.join("log_pz.npy")), &zs, tol, &format!("{}: log_pz", case.name));
    assert_close(
        &log_jacob,
        &npy(dir.join("log_jacob.npy")),
        tol,
        rtol,
        &format!("{}: log_jacob", case.name),
    );
    let x_inv = flow.inverse(&npy(dir.join("z_in.npy"))).unwrap();
    assert_close(&x_inv, &npy(dir.join("x_inv.npy")), tol, rtol, &format!("{}: inverse", case.name));
    // the no-grad log-density agrees with the forward triple, infinities included: exactly with
    // libtorch, to rounding with the default engine (the fused kernels for float32)
    let lp = flow.log_prob(&xs).unwrap();
    assert_close(&lp, &(&log_pz + &log_jacob), tol, rtol, &format!("{}: log_prob", case.name));
    let mut flow = flow;
    flow.set_engine(rnvp::Engine::Libtorch);
    let lp = flow.log_prob(&xs).unwrap();
    assert_close(&lp, &(&log_pz + &log_jacob), 0.0, 0.0, &format!("{}: log_prob (libtorch)", case.name));
}

/// `log_pz` against PyTorch's `MultivariateNormal.log_prob`. Where `z` has an infinite coordinate
/// (exp(σ) overflowed), the log-density is −∞; PyTorch's triangular solve turns that into NaN
/// (0·∞). rnvp must say −∞ there, NaN only where `z` itself holds NaN, and match elsewhere.
fn check_log_pz(got: &tch::Tensor, want: &tch::Tensor, zs: &tch::Tensor, tol: f64, what: &str) {
    let z_nan = zs.isnan().any_dim(1, false);
    let z_inf = zs.isinf().any_dim(1, false);
    let n = got.size()[0];
    let (mut minus_inf, mut nan) = (0, 0);
    for i in 0..n {
        let (g, w) = (got.double_value(&[i]), want.double_value(&[i]));
        let (has_nan, has_inf) =
            (bool::try_from(z_nan.get(i)).unwrap(), bool::try_from(z_inf.get(i)).unwrap());
        if has_nan {
            assert!(g.is_nan() && w.is_nan(), "{what}[{i}]: z has NaN, got {g}, PyTorch {w}");
            nan += 1;
        } else if has_inf {
            assert!(g == f64::NEG_INFINITY, "{what}[{i}]: z is infinite, got {g}, want -inf");
            assert!(w.is_nan() || w == f64::NEG_INFINITY, "{what}[{i}]: PyTorch {w}");
            minus_inf += 1;
        } else {
            assert!(w.is_finite(), "{what}[{i}]: PyTorch gives {w} for a finite z");
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
        }
    }
    eprintln!("{what}: {n} rows, {minus_inf} with infinite z (-inf), {nan} with NaN in z");
}

#[test]
fn stacked_flows_match_pytorch() {
    for (name, args, layers) in [
        ("l1", &["--layers", "1"][..], 1),
        ("l3", &["--layers", "3"][..], 3),
        ("l5", &["--layers", "5", "--hidden", "32"][..], 5),
    ] {
        check(&Case {
            name,
            args,
            cfg: FlowConfig::stacked(2, 1, if layers == 5 { 32 } else { 8 }, layers),
            kind: Kind::Float,
        });
    }
}

#[test]
fn wider_flows_and_float64_match_pytorch() {
    check(&Case {
        name: "d4",
        args: &["--d", "4", "--k", "2", "--layers", "4", "--hidden", "16"],
        cfg: FlowConfig::stacked(4, 2, 16, 4),
        kind: Kind::Float,
    });
    check(&Case {
        name: "f64",
        args: &["--layers", "3", "--dtype", "f64", "--seed", "5"],
        cfg: FlowConfig::stacked(2, 1, 8, 3),
        kind: Kind::Double,
    });
}

#[test]
fn single_r_nvp_matches_pytorch() {
    check(&Case { name: "single", args: &["--single"], cfg: FlowConfig::single(2, 1, 8), kind: Kind::Float });
    // the notebook's R_NVP can also be called with flip=True when k = d − k
    let dir = tmp_dir("parity-single-flip");
    reference(&["parity", "--single", "--flip", "--seed", "3", "--out", dir.to_str().unwrap()]);
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = rnvp::RNvp::new(&vs.root(), 2, 1, 8).unwrap();
    load_npy_weights(&vs, &dir.join("weights"));
    let (zs, log_pz, log_jacob) = layer.forward(&npy(dir.join("x.npy")), true).unwrap();
    assert_close(&zs, &npy(dir.join("z.npy")), 1e-5, 1e-5, "flip: z");
    assert_close(&log_pz, &npy(dir.join("log_pz.npy")), 1e-5, 1e-5, "flip: log_pz");
    assert_close(&log_jacob, &npy(dir.join("log_jacob.npy")), 1e-5, 1e-5, "flip: log_jacob");
    let x_inv = layer.inverse(&npy(dir.join("z_in.npy")), true).unwrap();
    assert_close(&x_inv, &npy(dir.join("x_inv.npy")), 1e-5, 1e-5, "flip: inverse");
}
