//! Conditional flows p(x | c) and bounded variables, against brute force: the density at each
//! context integrates to 1 on a grid, the log-determinant equals autograd's Jacobian, the inverse
//! is exact given the context, the context changes the density, and the data map of a checkpoint
//! (logit of bounded columns, scaler, whitening) keeps the density normalised in the data's units.
mod common;

use common::{max_abs_diff, seeded};
use rnvp::checkpoint::Checkpoint;
use rnvp::data::{self, Bounds, Matrix, Scaler, Whitening};
use rnvp::layers::Mode;
use rnvp::{Arch, Flow, FlowConfig};
use tch::{Device, Kind, Tensor};

fn archs() -> [(&'static str, Arch); 4] {
    [("notebook", Arch::NOTEBOOK), ("nice", Arch::NICE), ("realnvp", Arch::REALNVP), ("glow", Arch::GLOW)]
}

/// A conditional flow of `arch` with non-trivial weights (PyTorch's initialisation, last layers
/// included, and ActNorm / batch norm moved by training passes), in float64.
fn conditional(arch: Arch, d: i64, k: i64, m: i64) -> Flow {
    let cfg = FlowConfig::stacked(d, k, 16, 3).with_arch(arch).with_context(m);
    seeded(7, || {
        let flow = Flow::new(&cfg, Device::Cpu, Kind::Double).unwrap();
        let batch = Tensor::randn([256, d], (Kind::Double, Device::Cpu)) * 1.5 + 0.3;
        let c = Tensor::randn([256, m], (Kind::Double, Device::Cpu));
        for _ in 0..3 {
            flow.stack().loss_backward(&batch, Some(&c), false).unwrap();
        }
        flow
    })
}

/// `∫ exp(log_p) dx` over the square `[-lim, lim]²` by the midpoint rule on `n × n` cells.
fn grid_integral(lim: f64, n: i64, log_p: impl Fn(&Tensor) -> Tensor) -> f64 {
    let h = 2.0 * lim / n as f64;
    let axis = Tensor::arange(n, (Kind::Double, Device::Cpu)) * h + (h / 2.0 - lim);
    let gx = axis.repeat_interleave_self_int(n, 0, None);
    let gy = axis.repeat([n]);
    let pts = Tensor::stack(&[gx, gy], 1);
    let lp = log_p(&pts);
    lp.exp().sum(Kind::Double).double_value(&[]) * h * h
}

#[test]
fn the_density_at_every_context_integrates_to_one() {
    for (name, arch) in archs() {
        let flow = conditional(arch, 2, 1, 3);
        let mut previous: Option<Tensor> = None;
        for c in [[0.0, 0.0, 0.0], [1.5, -2.0, 0.7]] {
            let c = Tensor::from_slice(&c);
            let integral = grid_integral(10.0, 700, |x| flow.stack().given(&c).log_prob(x).unwrap());
            assert!((integral - 1.0).abs() < 2e-3, "{name} at {c:?}: ∫ p(x | c) dx = {integral}");
            let x = seeded(8, || Tensor::randn([50, 2], (Kind::Double, Device::Cpu)));
            let lp = flow.stack().given(&c).log_prob(&x).unwrap();
            if let Some(prev) = previous.take() {
                assert!(max_abs_diff(&lp, &prev) > 1e-3, "{name}: the context does not change the density");
            }
            previous = Some(lp);
        }
    }
}

#[test]
fn log_det_equals_autograd_and_the_inverse_is_exact_given_the_context() {
    let (d, m) = (3, 2);
    for (name, arch) in archs() {
        let flow = conditional(arch, d, 1, m);
        let x = seeded(11, || Tensor::randn([5, d], (Kind::Double, Device::Cpu)));
        let c = seeded(12, || Tensor::randn([5, m], (Kind::Double, Device::Cpu)));
        let (_, log_det) = flow.stack().forward_in(&x, Some(&c), Mode::Eval).unwrap();
        for r in 0..5 {
            let xr = x.narrow(0, r, 1).detach().set_requires_grad(true);
            let cr = c.narrow(0, r, 1);
            let (z, _) = flow.stack().forward_in(&xr, Some(&cr), Mode::Eval).unwrap();
            let rows: Vec<Tensor> = (0..d)
                .map(|i| {
                    let g = Tensor::run_backward(&[z.select(1, i).sum(Kind::Double)], &[&xr], true, false);
                    g[0].view([d])
                })
                .collect();
            let jac = Tensor::stack(&rows, 0);
            let (_, logabsdet) = Tensor::linalg_slogdet(&jac);
            let want = logabsdet.double_value(&[]);
            let got = log_det.double_value(&[r]);
            assert!((got - want).abs() < 1e-9, "{name} row {r}: log-det {got} vs autograd {want}");
        }
        let z = flow.stack().given(&c).encode(&x).unwrap();
        let back = flow.stack().given(&c).decode(&z).unwrap();
        assert!(max_abs_diff(&back, &x) < 1e-10, "{name}: decode(encode(x, c), c) ≠ x");
        // one context row serves every sample, as if repeated
        let c1 = c.narrow(0, 0, 1);
        let z1 = seeded(3, || Tensor::randn([40, d], (Kind::Double, Device::Cpu)));
        let one = flow.stack().given(&c1).decode(&z1).unwrap();
        let repeated = flow.stack().given(&c1.expand([40, m], false).contiguous()).decode(&z1).unwrap();
        assert_eq!(max_abs_diff(&one, &repeated), 0.0, "{name}: a single context row");
    }
}

#[test]
fn a_context_is_required_exactly_when_the_flow_is_conditional() {
    let cond = conditional(Arch::NOTEBOOK, 2, 1, 2);
    let (plain, x, c, wide, short) = seeded(9, || {
        let plain = Flow::new(&FlowConfig::stacked(2, 1, 8, 2), Device::Cpu, Kind::Double).unwrap();
        let draw = |n: i64, m: i64| Tensor::randn([n, m], (Kind::Double, Device::Cpu));
        (plain, draw(4, 2), draw(4, 2), draw(4, 3), draw(3, 2))
    });
    let msg = |r: rnvp::Result<Tensor>| r.map(|_| ()).unwrap_err().to_string();
    assert!(msg(cond.stack().log_prob(&x)).contains("conditional on a context of 2 columns"));
    assert!(msg(plain.stack().given(&c).log_prob(&x)).contains("unconditional"));
    assert!(msg(cond.stack().given(&wide).log_prob(&x)).contains("context"));
    assert!(msg(cond.stack().given(&short).log_prob(&x)).contains("one row per data row"));
    assert!(cond.stack().forward(&x).is_err(), "the notebook's forward(x) has no context");
    // m = 0 is today's flow: the same variables, shapes and numbers
    let zero = FlowConfig::stacked(2, 1, 8, 2).with_context(0);
    assert_eq!(zero, FlowConfig::stacked(2, 1, 8, 2));
    let with = FlowConfig::stacked(5, 2, 8, 2).with_context(3);
    assert_eq!(with.variable_shape("bijectors.0.sig_net.0.weight"), Some(vec![8, 5]));
    assert_eq!(with.variable_shape("bijectors.1.mu_net.0.weight"), Some(vec![8, 6]));
    assert_eq!(with.variable_shape("bijectors.1.mu_net.2.weight"), Some(vec![2, 8]));
}

#[test]
fn conditional_checkpoints_round_trip_and_infer_the_context_from_pytorch_names() {
    for (name, arch) in archs() {
        let flow = conditional(arch, 3, 1, 2);
        let dir = common::tmp_dir(&format!("conditional-ck-{name}"));
        let ck = Checkpoint::from_flow(&flow, None);
        let (x, c) = seeded(10, || {
            (
                Tensor::randn([20, 3], (Kind::Double, Device::Cpu)),
                Tensor::randn([20, 2], (Kind::Double, Device::Cpu)),
            )
        });
        let want = flow.stack().given(&c).log_prob(&x).unwrap();
        for file in ["q.safetensors", "q.pt"] {
            let path = dir.join(file);
            ck.save(&path).unwrap();
            let back = Checkpoint::load(&path).unwrap();
            assert_eq!(back.config.context, 2, "{name}/{file}: context read back");
            assert_eq!((back.config.d, back.config.k), (3, 1), "{name}/{file}");
            let again = back.to_flow(Device::Cpu, Kind::Double).unwrap();
            let got = again.stack().given(&c).log_prob(&x).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-12, "{name}/{file}: log p(x | c) changed");
        }
    }
}

#[test]
fn a_state_dict_that_cannot_tell_the_context_apart_is_not_written() {
    // one notebook coupling: its shapes [h, k + m] and [d − k, h] fit more than one (k, m)
    let cfg = FlowConfig::stacked(3, 1, 8, 1).with_context(2);
    let flow = seeded(5, || Flow::new(&cfg, Device::Cpu, Kind::Float).unwrap());
    let dir = common::tmp_dir("conditional-ambiguous");
    let err = Checkpoint::from_flow(&flow, None).save(&dir.join("q.pt")).unwrap_err().to_string();
    assert!(err.contains("keep it as .safetensors"), "{err}");
    assert!(!dir.join("q.pt").exists());
    Checkpoint::from_flow(&flow, None).save(&dir.join("q.safetensors")).unwrap();
    assert_eq!(Checkpoint::load(&dir.join("q.safetensors")).unwrap().config.context, 2);
}

#[test]
fn bounds_scaler_and_whitening_keep_the_density_normalised_in_data_units() {
    // a bounded conditional flow on the box (-1, 3) × (0, 0.5), its context standardized
    let flow = conditional(Arch::GLOW, 2, 1, 1);
    let mut ck = Checkpoint::from_flow(&flow, None);
    ck.bounds = Some(Bounds::new(vec![-1.0, 0.0], vec![3.0, 0.5]).unwrap());
    ck.scaler = Some(Scaler { mean: vec![0.2, -0.4, 5.0], std: vec![1.3, 0.7, 2.0] });
    ck.whiten = Some(Whitening::new(vec![1.0, 0.0, 0.6, 0.8], 2).unwrap());
    let dir = common::tmp_dir("conditional-bounded");
    let path = dir.join("b.safetensors");
    ck.save(&path).unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    let flow = ck.to_flow(Device::Cpu, Kind::Double).unwrap();
    let space = ck.space();
    let context = Matrix::new(1, 1, vec![6.5]).unwrap();
    let standardized = space.context(&context).unwrap();
    assert_eq!(standardized.data, vec![(6.5 - 5.0) / 2.0], "the context uses the scaler's last column");
    let c = data::to_tensor(&standardized, Kind::Double, Device::Cpu).unwrap();
    // midpoint rule over the box, in the data's units
    let n = 800;
    let (lo, hi) = ([-1.0, 0.0], [3.0, 0.5]);
    let (hx, hy) = ((hi[0] - lo[0]) / n as f64, (hi[1] - lo[1]) / n as f64);
    let mut rows = Vec::with_capacity(n * n * 3);
    for i in 0..n {
        for j in 0..n {
            rows.extend([lo[0] + (i as f64 + 0.5) * hx, lo[1] + (j as f64 + 0.5) * hy, 6.5]);
        }
    }
    let (ys, log_det) = space.to_flow(&Matrix::new(n * n, 3, rows).unwrap()).unwrap();
    let (y, _) = rnvp::train::rows_and_context(flow.stack(), &ys).unwrap();
    let lp = flow.stack().given(&c).log_prob(&y).unwrap();
    let lp: Vec<f64> = Vec::<f64>::try_from(&lp).unwrap();
    let integral: f64 = lp.iter().zip(&log_det).map(|(a, b)| (a + b).exp()).sum::<f64>() * hx * hy;
    assert!((integral - 1.0).abs() < 5e-3, "∫ p(x | c) dx over the box = {integral}");
    // samples lie in the box, however far out the base samples are
    let z = seeded(11, || Tensor::randn([2000, 2], (Kind::Double, Device::Cpu))) * 6.0;
    let x =
        space.from_flow(&data::from_tensor(&flow.stack().given(&c).decode(&z).unwrap()).unwrap()).unwrap();
    for i in 0..x.rows {
        let r = x.row(i);
        let inside = |j: usize| r[j] > lo[j] && r[j] < hi[j];
        assert!(inside(0) && inside(1), "sample {r:?} is not strictly inside the box");
    }
}
