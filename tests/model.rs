//! The model's maths, checked by brute force: round trips, autograd Jacobians, a grid integral,
//! the identity initialisation, names, and errors for invalid configurations.
mod common;
use common::*;
use rnvp::{Flow, FlowConfig, Init, Layout, RNvp};
use tch::{nn, Device, Kind, Tensor};

/// Multiplies every variable whose name contains `part` by `factor`.
fn scale_vars(f: &Flow, part: &str, factor: f64) {
    tch::no_grad(|| {
        for (name, mut t) in f.var_store().variables() {
            if name.contains(part) {
                let _ = t.f_mul_scalar_(factor).unwrap();
            }
        }
    });
}

fn flow(cfg: FlowConfig, kind: Kind, seed: i64) -> Flow {
    seeded(seed, || Flow::new(&cfg, Device::Cpu, kind).unwrap())
}

#[test]
fn inverse_undoes_forward_for_many_shapes() {
    let mut checked = 0;
    for (d, ks) in [(2, vec![1]), (3, vec![1, 2]), (4, vec![1, 2, 3]), (6, vec![1, 2, 3, 5])] {
        for &k in &ks {
            for layers in 1..=6 {
                for (kind, tol) in [(Kind::Float, 1e-5), (Kind::Double, 1e-10)] {
                    let f = flow(FlowConfig::stacked(d, k, 16, layers), kind, 7 * d + k + layers);
                    // Halve the log-scale nets' output layers: with the full default init a
                    // layer can contract a coordinate by e^-10, and float32 (PyTorch's too) cannot
                    // invert that to 1e-5 (z's rounding error is multiplied by e^10 on the way back).
                    scale_vars(&f, "sig_net.2", 0.5);
                    let xs = seeded(d * 100 + layers, || Tensor::randn([256, d], (kind, Device::Cpu)));
                    let (zs, _, log_jacob) = f.stack().forward(&xs).unwrap();
                    // a real (non-identity) transformation
                    assert!(max_abs_diff(&zs, &xs) > 1e-2, "d={d} k={k} layers={layers}");
                    assert!(f64::try_from(log_jacob.abs().max()).unwrap() > 1e-3);
                    let back = f.stack().inverse(&zs).unwrap();
                    let err = max_abs_diff(&back, &xs);
                    assert!(err <= tol, "d={d} k={k} layers={layers} {kind:?}: error {err:e}");
                    // decode(encode(x)) too, the no-grad path
                    let err2 = max_abs_diff(&f.stack().decode(&f.stack().encode(&xs).unwrap()).unwrap(), &xs);
                    assert!(err2 <= tol, "decode∘encode: {err2:e}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 10 * 6 * 2);
}

/// The Jacobian of `f` at every row of `xs`, `[n, d, d]`, row `j` from the gradient of `z[:, j]`.
fn autograd_jacobian(f: &Flow, xs: &Tensor) -> Tensor {
    let d = xs.size()[1];
    let rows: Vec<Tensor> = (0..d)
        .map(|j| {
            let xs = xs.detach().set_requires_grad(true);
            let (zs, _, _) = f.stack().forward(&xs).unwrap();
            let g = Tensor::run_backward(&[zs.select(1, j).sum(Kind::Double)], &[&xs], false, false);
            g[0].shallow_clone()
        })
        .collect();
    Tensor::stack(&rows, 1)
}

#[test]
fn log_jacobian_equals_autograd_log_det() {
    for (d, k, layers) in [(2, 1, 1), (2, 1, 3), (3, 1, 2), (4, 2, 3), (4, 3, 4), (6, 2, 5)] {
        let f = flow(FlowConfig::stacked(d, k, 12, layers), Kind::Double, d * 10 + layers);
        let xs = seeded(d + 1000, || Tensor::randn([32, d], (Kind::Double, Device::Cpu)));
        let (zs, _, log_jacob) = f.stack().forward(&xs).unwrap();
        assert!(bool::try_from(zs.isfinite().all()).unwrap(), "d={d} k={k} layers={layers}");
        let jac = autograd_jacobian(&f, &xs);
        let (sign, logabsdet) = Tensor::linalg_slogdet(&jac);
        assert!(f64::try_from(sign.min()).unwrap() > 0.0, "an R-NVP Jacobian has a positive det");
        // Σσ is exact; slogdet of the autograd Jacobian loses a few digits when the Jacobian is
        // ill-conditioned (entries spread by exp(σ) over several layers): 1.5e-9 seen at d=4, k=3.
        let scale = f64::try_from(logabsdet.abs().max()).unwrap();
        let err = assert_close(&log_jacob, &logabsdet, 1e-8, 1e-9, "log_jacob");
        assert!(err < 1e-8, "d={d} k={k} layers={layers}: {err:e} (scale {scale})");
        assert!(scale > 1e-2, "non-trivial Jacobian");
    }
}

#[test]
fn density_integrates_to_one_on_a_grid() {
    let f = flow(FlowConfig::stacked(2, 1, 32, 3), Kind::Double, 3);
    // a non-identity flow: log-determinants vary over the plane
    let probe = seeded(4, || Tensor::randn([1000, 2], (Kind::Double, Device::Cpu)));
    let (_, _, lj) = f.stack().forward(&probe).unwrap();
    assert!(f64::try_from(lj.std(true)).unwrap() > 0.05, "the flow is too close to the identity");

    let (lo, hi, n) = (-12.0, 12.0, 1201);
    let h = (hi - lo) / (n - 1) as f64;
    let g = Tensor::linspace(lo, hi, n, (Kind::Double, Device::Cpu));
    let grid = Tensor::stack(&[g.repeat_interleave_self_int(n, None, None), g.repeat([n])], 1);
    let p = f.stack().log_prob(&grid).unwrap().exp();
    assert!(bool::try_from(p.isfinite().all()).unwrap());
    let mass = f64::try_from(p.sum(Kind::Double)).unwrap() * h * h;
    assert!((mass - 1.0).abs() < 0.01, "∫ p(x) dx = {mass}");
}

#[test]
fn identity_init_gives_the_base_density() {
    let f = flow(FlowConfig::stacked(3, 1, 16, 4).with_init(Init::Identity), Kind::Double, 0);
    let xs = seeded(5, || Tensor::randn([100, 3], (Kind::Double, Device::Cpu)));
    let (zs, log_pz, log_jacob) = f.stack().forward(&xs).unwrap();
    assert_eq!(max_abs_diff(&zs, &xs), 0.0);
    assert_eq!(f64::try_from(log_jacob.abs().max()).unwrap(), 0.0);
    let want = xs.square().sum_dim_intlist(-1, false, None) * -0.5 - 1.5 * (2.0 * std::f64::consts::PI).ln();
    assert_close(&log_pz, &want, 1e-12, 0.0, "log N(x)");
}

#[test]
fn variable_names_are_the_notebooks_state_dict_keys() {
    let f = flow(FlowConfig::stacked(5, 2, 7, 2), Kind::Float, 0);
    let mut got: Vec<(String, Vec<i64>)> =
        f.var_store().variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    got.sort();
    let mut want = vec![];
    for (i, c) in [(0, 2), (1, 3)] {
        for net in ["mu_net", "sig_net"] {
            let p = format!("bijectors.{i}.{net}");
            want.push((format!("{p}.0.bias"), vec![7]));
            want.push((format!("{p}.0.weight"), vec![7, c]));
            want.push((format!("{p}.2.bias"), vec![5 - c]));
            want.push((format!("{p}.2.weight"), vec![5 - c, 7]));
        }
    }
    want.sort();
    assert_eq!(got, want);

    let single = flow(FlowConfig::single(2, 1, 4), Kind::Float, 0);
    let mut names: Vec<String> = single.var_store().variables().into_keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "mu_net.0.bias",
            "mu_net.0.weight",
            "mu_net.2.bias",
            "mu_net.2.weight",
            "sig_net.0.bias",
            "sig_net.0.weight",
            "sig_net.2.bias",
            "sig_net.2.weight"
        ]
    );
    assert_eq!(single.stack().config().layout, Layout::Single);
}

#[test]
fn default_initialisation_is_pytorchs() {
    // nn.Linear: weight and bias uniform in ±1/√fan_in
    let f = flow(FlowConfig::stacked(2, 1, 400, 1), Kind::Float, 1);
    for (name, t) in f.var_store().variables() {
        let fan_in = if name.contains("_net.0.") { 1.0 } else { 400.0 };
        let bound = 1.0 / f64::sqrt(fan_in);
        let max = f64::try_from(t.abs().max()).unwrap();
        assert!(max <= bound, "{name}: {max} > {bound}");
        if t.numel() >= 400 {
            assert!(max > 0.9 * bound, "{name}: {max} spans too little of ±{bound}");
        }
    }
}

#[test]
fn invalid_configurations_and_inputs_are_errors() {
    for cfg in [
        FlowConfig::stacked(2, 0, 8, 1),
        FlowConfig::stacked(2, 2, 8, 1),
        FlowConfig::stacked(4, 5, 8, 1),
        FlowConfig::stacked(2, 1, 0, 1),
        FlowConfig::stacked(2, 1, 8, 0),
        FlowConfig::stacked(1, 1, 8, 1),
    ] {
        assert!(Flow::new(&cfg, Device::Cpu, Kind::Float).is_err(), "{cfg:?}");
    }
    assert!(Flow::new(&FlowConfig::notebook(1), Device::Cpu, Kind::Int64).is_err());
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(RNvp::new(&vs.root(), 3, 3, 8).is_err());

    let f = flow(FlowConfig::stacked(3, 1, 8, 2), Kind::Float, 0);
    let wrong_width = Tensor::zeros([4, 2], (Kind::Float, Device::Cpu));
    let e = f.stack().log_prob(&wrong_width).unwrap_err().to_string();
    assert!(e.contains("[n, 3]") && e.contains("[4, 2]"), "{e}");
    let wrong_rank = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    assert!(f.stack().forward(&wrong_rank).is_err());
    let wrong_kind = Tensor::zeros([4, 3], (Kind::Double, Device::Cpu));
    let e = f.stack().encode(&wrong_kind).unwrap_err().to_string();
    assert!(e.contains("Double") && e.contains("Float"), "{e}");
    assert!(f.stack().decode(&Tensor::zeros([4, 3], (Kind::Int64, Device::Cpu))).is_err());
    assert!(f.stack().inverse(&wrong_width).is_err());
    assert!(f.stack().sample(-1).is_err());

    // a layer built unflipped with k ≠ d − k cannot run flipped
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = seeded(12, || RNvp::new(&vs.root(), 3, 1, 8).unwrap());
    let xs = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu));
    assert!(layer.forward(&xs, false).is_ok());
    assert!(layer.forward(&xs, true).is_err());
    // with k = d − k it can (as in the notebook)
    let layer = seeded(13, || RNvp::new(&(vs.root() / "b"), 2, 1, 8).unwrap());
    let xs = Tensor::zeros([4, 2], (Kind::Float, Device::Cpu));
    assert!(layer.forward(&xs, true).is_ok());
}

#[test]
fn sampling_gives_the_requested_shape_and_dtype() {
    let f = flow(FlowConfig::stacked(4, 2, 8, 3), Kind::Double, 0);
    let xs = seeded(14, || f.stack().sample(123)).unwrap();
    assert_eq!(xs.size(), [123, 4]);
    assert_eq!(xs.kind(), Kind::Double);
    assert!(!xs.requires_grad());
    assert_eq!(f.stack().sample(0).unwrap().size(), [0, 4]);
}

#[test]
fn samples_whose_inverse_overflows_are_drawn_again_and_the_rest_are_the_plain_draw() {
    use rnvp::run::Engine;
    // Glow's layers with scale networks 4² times too steep: sigmoid(h + 2) underflows on part of
    // the base, where the inverse divides by it and overflows to inf, then NaN in the next layers
    let cfg = FlowConfig::stacked(2, 1, 16, 4).with_arch(rnvp::Arch::GLOW).with_init(Init::Pytorch);
    let f = flow(cfg, Kind::Float, 3);
    scale_vars(&f, "sig_net", 4.0);
    let n = 4000;
    for engine in [Engine::Libtorch, Engine::Fused] {
        let run = f.stack().run(engine);
        let zs = seeded(11, || rnvp::base::sample(n, 2, Kind::Float, Device::Cpu));
        let plain = run.decode(&zs).unwrap();
        let finite = plain.isfinite().all_dim(1, false);
        let bad = n - finite.sum(Kind::Int64).int64_value(&[]);
        assert!(
            bad > n / 100 && bad < n / 2,
            "{engine:?}: {bad} of {n} plain draws are not finite (the test needs some)"
        );
        let (xs, replaced) = seeded(11, || run.sample_counted(n)).unwrap();
        // the first round replaces the non-finite rows; a fresh draw can overflow too
        assert!(replaced as i64 >= bad, "{engine:?}: {replaced} draws replaced for {bad} non-finite rows");
        assert!(bool::try_from(xs.isfinite().all()).unwrap(), "{engine:?}: a sample is not finite");
        let kept = xs.index_select(0, &finite.nonzero().view([-1]));
        let same = plain.index_select(0, &finite.nonzero().view([-1]));
        assert!(kept.equal(&same), "{engine:?}: the finite rows are not the plain draw's");
    }
    // 40² times too steep: nearly every draw overflows, and sampling says so instead of looping
    scale_vars(&f, "sig_net", 10.0);
    let err = seeded(15, || f.stack().run(Engine::Auto).sample(n)).unwrap_err().to_string();
    assert!(err.contains("not finite") && err.contains("broken model"), "{err}");
}
