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

#[test]
fn a_truncated_flow_is_normalised_on_its_box_and_samples_inside_it() {
    use rnvp::data::BoundsMode;
    use rnvp::truncation;
    // a conditional flow truncated to the box (-1, 1.5) × (-0.5, 2), which cuts off part of its mass
    let flow = conditional(Arch::GLOW, 2, 1, 1);
    let mut ck = Checkpoint::from_flow(&flow, None);
    let (lo, hi) = ([-1.0, -0.5], [1.5, 2.0]);
    ck.bounds = Some(Bounds::new(lo.to_vec(), hi.to_vec()).unwrap().with_mode(BoundsMode::Truncate));
    ck.scaler = Some(Scaler { mean: vec![0.2, -0.4, 5.0], std: vec![1.3, 0.7, 2.0] });
    ck.whiten = Some(Whitening::new(vec![1.0, 0.0, 0.6, 0.8], 2).unwrap());
    let dir = common::tmp_dir("conditional-truncated");
    let path = dir.join("t.safetensors");
    ck.save(&path).unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.bounds.as_ref().map(|b| b.mode), Some(BoundsMode::Truncate), "the mode is stored");
    let flow = ck.to_flow(Device::Cpu, Kind::Double).unwrap();
    let space = ck.space();
    let run = flow.stack().run(rnvp::Engine::Libtorch);
    let c = data::to_tensor(
        &space.context(&Matrix::new(1, 1, vec![6.5]).unwrap()).unwrap(),
        Kind::Double,
        Device::Cpu,
    )
    .unwrap();
    // brute force: q's mass in the box and in its left part (x₀ < 0.25) by the midpoint rule
    let n = 800;
    let (hx, hy) = ((hi[0] - lo[0]) / n as f64, (hi[1] - lo[1]) / n as f64);
    let mut rows = Vec::with_capacity(n * n * 3);
    for i in 0..n {
        for j in 0..n {
            rows.extend([lo[0] + (i as f64 + 0.5) * hx, lo[1] + (j as f64 + 0.5) * hy, 6.5]);
        }
    }
    let cells = Matrix::new(n * n, 3, rows).unwrap();
    let (ys, log_det) = space.to_flow(&cells).unwrap();
    assert!(log_det.iter().all(|v| (v - log_det[0]).abs() < 1e-12), "no logit map: a constant log-det");
    let (y, _) = rnvp::train::rows_and_context(flow.stack(), &ys).unwrap();
    let lp: Vec<f64> = Vec::<f64>::try_from(&flow.stack().given(&c).log_prob(&y).unwrap()).unwrap();
    let q: Vec<f64> = lp.iter().zip(&log_det).map(|(a, b)| (a + b).exp() * hx * hy).collect();
    let z_grid: f64 = q.iter().sum();
    let left_grid: f64 = (0..n * n).filter(|&r| cells.row(r)[0] < 0.25).map(|r| q[r]).sum::<f64>() / z_grid;
    assert!(z_grid > 0.2 && z_grid < 0.9, "the box should cut part of q's mass: {z_grid}");
    // the Monte Carlo normalizer agrees with the grid's, within its stated standard error
    let one = Matrix::new(2, 3, vec![0.0, 0.0, 6.5, 0.3, 0.1, 6.5]).unwrap();
    let z = seeded(21, || truncation::normalizer(run, &space, &one, 1)).unwrap().unwrap();
    assert_eq!((z.contexts, z.log_z.len()), (1, 2), "one context for two rows");
    assert!(
        (z.log_z[0] - z_grid.ln()).abs() < 5.0 * z.max_se + 2e-3,
        "log Z: Monte Carlo {} ± {} against the grid's {}",
        z.log_z[0],
        z.max_se,
        z_grid.ln()
    );
    // so log q − log Z integrates to 1 over the box
    assert!(((z_grid.ln() - z.log_z[0]).exp() - 1.0).abs() < 0.02);
    // samples: every one inside the box, accepted at the rate Z, with the truncated density's share
    // in the left part (binomial errors, 5 σ)
    let (x, draws) = seeded(22, || truncation::sample(run.given(&c), &space, 20_000)).unwrap();
    assert_eq!((x.rows, x.cols, draws.kept), (20_000, 2, 20_000));
    assert!(
        (0..x.rows).all(|i| (0..2).all(|j| x.row(i)[j] > lo[j] && x.row(i)[j] < hi[j])),
        "a sample outside"
    );
    let sigma = |p: f64, n: usize| (p * (1.0 - p) / n as f64).sqrt();
    let rate = draws.acceptance();
    assert!(
        (rate - z_grid).abs() < 5.0 * sigma(z_grid, draws.drawn),
        "acceptance {rate} against Z = {z_grid}"
    );
    let left = (0..x.rows).filter(|&i| x.row(i)[0] < 0.25).count() as f64 / x.rows as f64;
    assert!(
        (left - left_grid).abs() < 5.0 * sigma(left_grid, x.rows),
        "share of x₀ < 0.25: samples {left}, grid {left_grid}"
    );
    // distinct contexts are estimated apart; a box the flow leaves empty is an error, not a hang
    let two = Matrix::new(3, 3, vec![0.0, 0.0, 6.5, 0.0, 0.0, -3.0, 0.1, 0.1, 6.5]).unwrap();
    let z2 = seeded(23, || truncation::normalizer(run, &space, &two, 1)).unwrap().unwrap();
    assert_eq!(z2.contexts, 2);
    assert_eq!(z2.log_z[0], z2.log_z[2], "rows of one context share its estimate");
    let mut far = ck.bounds.clone().unwrap();
    (far.lo, far.hi) = (vec![40.0, 40.0], vec![41.0, 41.0]);
    let far_space = rnvp::data::DataSpace { bounds: Some(&far), ..space };
    let err = seeded(24, || truncation::sample(run.given(&c), &far_space, 100)).unwrap_err().to_string();
    assert!(err.contains("below the 1%"), "{err}");
    let err = seeded(25, || truncation::normalizer(run, &far_space, &one, 1)).unwrap_err().to_string();
    assert!(err.contains("none of"), "{err}");
    // an unbounded or logit space passes through: the plain draw, a normalizer of 1 (log Z = 0)
    let plain = rnvp::data::DataSpace { bounds: None, ..space };
    let a = seeded(26, || truncation::sample(run.given(&c), &plain, 50)).unwrap().0;
    let b = seeded(26, || space.from_flow(&data::from_tensor(&run.given(&c).sample(50).unwrap()).unwrap()))
        .unwrap();
    assert_eq!(a.data, b.data);
    assert!(truncation::normalizer(run, &plain, &one, 1).unwrap().is_none());
    let logit = ck.bounds.clone().unwrap().with_mode(BoundsMode::Logit);
    let logit_space = rnvp::data::DataSpace { bounds: Some(&logit), ..space };
    assert!(truncation::normalizer(run, &logit_space, &one, 1).unwrap().is_none());
    assert_eq!(truncation::log_mass(run.given(&c), &logit_space, 10).unwrap(), (0.0, 0.0));
    // a context's estimate does not depend on the other rows of the file (same draws per context)
    let swapped = Matrix::new(3, 3, vec![0.0, 0.0, -3.0, 0.0, 0.0, 6.5, 0.1, 0.1, -3.0]).unwrap();
    let z3 = seeded(27, || truncation::normalizer(run, &space, &swapped, 1)).unwrap().unwrap();
    assert_eq!((z3.log_z[1], z3.log_z[0]), (z2.log_z[0], z2.log_z[1]));
}
