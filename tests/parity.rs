//! Parity with real PyTorch: `scripts/reference.py` builds the notebook's `stacked_NVP` / `R_NVP`
//! with fixed weights, writes them with inputs and outputs as .npy; rnvp loads the same weights and
//! must return the same `z`, `log_pz`, `log_jacob` and inverse — through `forward`/`inverse` (the
//! notebook's API, with autograd) and through `log_prob`/`encode`/`decode` with the default engine
//! (the fused kernels for float32) and the libtorch engine (chunked: more rows than one chunk).
//!
//! Tolerances: 1e-5 (float32) or 1e-10 (float64) absolute and relative, widened per element to
//! twice the element's float32 rounding bound (`common::bound`). That bound matters only far out
//! in the tails (inputs of 1e3 and 1e4, where the networks' terms are huge and cancel): there,
//! float32 itself is only good to about 1e-5 relative, and two correct implementations (or one on
//! two CPUs) differ by that much.
mod common;
use common::*;
use rnvp::{Engine, Flow, FlowConfig};
use tch::{nn, Device, Kind, Tensor};

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    cfg: FlowConfig,
    kind: Kind,
}

/// Rows (besides the far-out ones): more than one libtorch chunk (2,048 rows).
const ROWS: &str = "3000";

/// What a case exercised: rows with an infinite `z` (log-density −∞), rows with NaN in `z`.
#[derive(Default, Debug)]
struct Seen {
    infinite: usize,
    nan: usize,
}

fn check(case: &Case) -> Seen {
    let dir = tmp_dir(&format!("parity-{}", case.name));
    let out = dir.to_str().unwrap();
    let mut args = vec!["parity", "--out", out, "--n", ROWS];
    args.extend_from_slice(case.args);
    reference(&args);

    let flow = Flow::new(&case.cfg, Device::Cpu, case.kind).unwrap();
    load_npy_weights(flow.var_store(), &dir.join("weights"));
    let (tol, rtol) = if case.kind == Kind::Double { (1e-10, 1e-10) } else { (1e-5, 1e-5) };
    let f32_bounds = case.kind == Kind::Float;
    let xs = npy(dir.join("x.npy"));
    assert_eq!(xs.kind(), case.kind);
    let z_in = npy(dir.join("z_in.npy"));
    let (want_z, want_lpz, want_lj, want_inv) = (
        npy(dir.join("z.npy")),
        npy(dir.join("log_pz.npy")),
        npy(dir.join("log_jacob.npy")),
        npy(dir.join("x_inv.npy")),
    );
    let fb = bound::forward(&flow, &xs);
    let ib = bound::inverse(&flow, &z_in);
    let pick = |b: &Tensor| if f32_bounds { Some(b.shallow_clone()) } else { None };
    let (bz, blj, blpz, blp, binv) =
        (pick(&fb.z), pick(&fb.log_jacob), pick(&fb.log_pz), pick(&fb.log_prob), pick(&ib));
    let name = case.name;

    // the notebook's API: forward triple and inverse
    let (zs, log_pz, log_jacob) = flow.stack().forward(&xs).unwrap();
    assert_close_within(&zs, &want_z, tol, rtol, bz.as_ref(), &format!("{name}: z"));
    let seen = check_log_pz(&log_pz, &want_lpz, &zs, tol, rtol, blpz.as_ref(), &format!("{name}: log_pz"));
    assert_close_within(&log_jacob, &want_lj, tol, rtol, blj.as_ref(), &format!("{name}: log_jacob"));
    let x_inv = flow.stack().inverse(&z_in).unwrap();
    assert_close_within(&x_inv, &want_inv, tol, rtol, binv.as_ref(), &format!("{name}: inverse"));

    // PyTorch's log p(x), with rnvp's −∞ where z is infinite (PyTorch's MultivariateNormal gives NaN)
    let z_inf = want_z.isinf().any_dim(1, false);
    let z_nan = want_z.isnan().any_dim(1, false);
    let want_lp = (&want_lpz + &want_lj)
        .where_self(&z_inf.logical_not(), &Tensor::from(f64::NEG_INFINITY).to_kind(case.kind));
    let want_lp = want_lp.where_self(&z_nan.logical_not(), &Tensor::from(f64::NAN).to_kind(case.kind));
    // the no-grad passes with each engine against PyTorch directly
    for engine in [Engine::Auto, Engine::Libtorch] {
        let run = flow.stack().run(engine);
        let what = format!("{name} ({engine:?} engine)");
        assert_close_within(
            &run.log_prob(&xs).unwrap(),
            &want_lp,
            tol,
            rtol,
            blp.as_ref(),
            &format!("{what}: log_prob"),
        );
        assert_close_within(
            &run.encode(&xs).unwrap(),
            &want_z,
            tol,
            rtol,
            bz.as_ref(),
            &format!("{what}: encode"),
        );
        assert_close_within(
            &run.decode(&z_in).unwrap(),
            &want_inv,
            tol,
            rtol,
            binv.as_ref(),
            &format!("{what}: decode"),
        );
    }
    seen
}

/// `log_pz` against PyTorch's `MultivariateNormal.log_prob`. Where `z` has an infinite coordinate
/// (exp(σ) overflowed), the log-density is −∞; PyTorch's triangular solve turns that into NaN
/// (0·∞). rnvp must say −∞ there, NaN only where `z` itself holds NaN, and match elsewhere.
fn check_log_pz(
    got: &Tensor,
    want: &Tensor,
    zs: &Tensor,
    tol: f64,
    rtol: f64,
    bound: Option<&Tensor>,
    what: &str,
) -> Seen {
    let z_nan = zs.isnan().any_dim(1, false);
    let z_inf = zs.isinf().any_dim(1, false);
    let mut seen = Seen::default();
    for i in 0..got.size()[0] {
        let (g, w) = (got.double_value(&[i]), want.double_value(&[i]));
        let (has_nan, has_inf) =
            (bool::try_from(z_nan.get(i)).unwrap(), bool::try_from(z_inf.get(i)).unwrap());
        if has_nan {
            assert!(g.is_nan() && w.is_nan(), "{what}[{i}]: z has NaN, got {g}, PyTorch {w}");
            seen.nan += 1;
        } else if has_inf {
            assert!(g == f64::NEG_INFINITY, "{what}[{i}]: z is infinite, got {g}, want -inf");
            assert!(w.is_nan() || w == f64::NEG_INFINITY, "{what}[{i}]: PyTorch {w}");
            seen.infinite += 1;
        } else if !w.is_finite() {
            // ½‖z‖² beyond the dtype's range: both overflow to −∞
            assert!(g == w, "{what}[{i}]: PyTorch gives {w} for a finite z, rnvp {g}");
            seen.infinite += 1;
        } else {
            let b = bound.map_or(0.0, |b| b.double_value(&[i]));
            let t = (tol + rtol * w.abs()).max(2.0 * b);
            assert!((g - w).abs() <= t, "{what}[{i}]: got {g}, want {w} (tolerance {t:e})");
        }
    }
    seen
}

#[test]
fn stacked_flows_match_pytorch() {
    let mut seen = Seen::default();
    for (name, args, layers) in [
        ("l1", &["--layers", "1"][..], 1),
        ("l3", &["--layers", "3"][..], 3),
        ("l5", &["--layers", "5", "--hidden", "32"][..], 5),
    ] {
        let s = check(&Case {
            name,
            args,
            cfg: FlowConfig::stacked(2, 1, if layers == 5 { 32 } else { 8 }, layers),
            kind: Kind::Float,
        });
        eprintln!("{name}: {s:?}");
        seen.infinite += s.infinite;
        seen.nan += s.nan;
    }
    // the far-out rows reach both non-finite cases somewhere in these flows
    assert!(seen.infinite > 0 && seen.nan > 0, "far-out rows did not exercise inf and NaN: {seen:?}");
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
    let (xs, z_in) = (npy(dir.join("x.npy")), npy(dir.join("z_in.npy")));
    let cfg = FlowConfig::single(2, 1, 8);
    let fb = bound::forward_with(&vs, &cfg, &[true], &xs);
    let ib = bound::inverse_with(&vs, &cfg, &[true], &z_in);
    let (zs, log_pz, log_jacob) = layer.forward(&xs, true).unwrap();
    assert_close_within(&zs, &npy(dir.join("z.npy")), 1e-5, 1e-5, Some(&fb.z), "flip: z");
    assert_close_within(&log_pz, &npy(dir.join("log_pz.npy")), 1e-5, 1e-5, Some(&fb.log_pz), "flip: log_pz");
    assert_close_within(
        &log_jacob,
        &npy(dir.join("log_jacob.npy")),
        1e-5,
        1e-5,
        Some(&fb.log_jacob),
        "flip: log_jacob",
    );
    let x_inv = layer.inverse(&z_in, true).unwrap();
    assert_close_within(&x_inv, &npy(dir.join("x_inv.npy")), 1e-5, 1e-5, Some(&ib), "flip: inverse");
}
