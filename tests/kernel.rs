//! The fused CPU kernels against libtorch on the same weights: gradients against autograd (plain
//! and reversible, both instruction-set builds, one and several threads), inference passes, and
//! whole training runs.
mod common;

use rnvp::data::{Rng, ToySet};
use rnvp::kernel::{packing_for, Packing, Scratch};
use rnvp::train::{TrainConfig, TrainData, Trainer};
use rnvp::{Engine, Flow, FlowConfig, Layout};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// A random float32 flow (PyTorch's init, `sig_net`'s output layer halved so that f32 inverses
/// stay accurate for the reversible comparison) and `n` standard-normal rows.
fn flow_and_data(cfg: &FlowConfig, n: i64, seed: i64) -> (Flow, Tensor) {
    let (flow, xs) = common::seeded(seed, || {
        let flow = Flow::new(cfg, Device::Cpu, Kind::Float).unwrap();
        let xs = Tensor::randn([n, cfg.d], (Kind::Float, Device::Cpu)) * 1.5;
        (flow, xs)
    });
    tch::no_grad(|| {
        for (name, mut t) in flow.var_store().variables() {
            if name.contains("sig_net.2") {
                let _ = t.f_mul_scalar_(0.5).unwrap();
            }
        }
    });
    (flow, xs)
}

fn flat(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap()
}

/// Autograd's loss and gradients (libtorch), packed like the kernels' buffer.
fn autograd(flow: &Flow, xs: &Tensor, pk: &Packing) -> (f64, Vec<f32>) {
    for (_, mut v) in flow.var_store().variables() {
        v.zero_grad();
    }
    let loss = flow.loss_backward(xs, false).unwrap();
    assert!(loss.is_finite(), "autograd loss {loss}");
    let grads: BTreeMap<String, Tensor> =
        flow.var_store().variables().into_iter().map(|(n, v)| (n, v.grad())).collect();
    (loss, pk.from_named(&grads, flow.config().layout).unwrap())
}

/// Relative L2 error of `got` against `want`, tensor by tensor (worst one).
fn worst_relative_error(pk: &Packing, got: &[f32], want: &[f32], layout: Layout) -> f64 {
    let (g, w) = (pk.named(got, layout), pk.named(want, layout));
    let mut worst = 0f64;
    for (name, wt) in &w {
        let gt = &g[name];
        let norm = f64::try_from(wt.to_kind(Kind::Double).norm()).unwrap();
        let err = f64::try_from((gt - wt).to_kind(Kind::Double).norm()).unwrap();
        assert!(norm > 0.0, "{name}: zero gradient, the comparison would be empty");
        worst = worst.max(err / norm);
    }
    worst
}

fn configs() -> Vec<FlowConfig> {
    vec![
        FlowConfig::notebook(3),
        FlowConfig::stacked(2, 1, 13, 2), // hidden not a multiple of the SIMD width
        FlowConfig::single(2, 1, 32),
        FlowConfig::stacked(3, 1, 16, 3),
        FlowConfig::stacked(3, 2, 9, 4),
        FlowConfig::stacked(5, 2, 24, 3),
        FlowConfig::stacked(8, 4, 16, 2),
    ]
}

#[test]
fn gradients_equal_autograd() {
    for (i, cfg) in configs().into_iter().enumerate() {
        for n in [37, 512] {
            let (flow, xs) = flow_and_data(&cfg, n, 10 + i as i64);
            let pk = packing_for(&flow).expect("the kernels take these widths");
            let params = pk.pack(&flow).unwrap();
            let (want_loss, want) = autograd(&flow, &xs, &pk);
            let x = flat(&xs);
            for pk in [pk.clone(), pk.clone().baseline()] {
                for reversible in [false, true] {
                    for threads in [1, 3] {
                        let what = format!(
                            "{cfg:?} n={n} {} reversible={reversible} threads={threads}",
                            pk.instruction_set()
                        );
                        let mut grads = vec![f32::NAN; pk.len()];
                        let mut scratch: Vec<(Scratch, Vec<f32>)> = vec![];
                        let loss =
                            pk.mean_loss_grad(&params, &mut grads, &x, reversible, threads, &mut scratch);
                        assert!(
                            (loss - want_loss).abs() <= 1e-5 * (1.0 + want_loss.abs()),
                            "{what}: loss {loss} vs autograd {want_loss}"
                        );
                        let err = worst_relative_error(&pk, &grads, &want, cfg.layout);
                        assert!(err <= 1e-4, "{what}: gradient relative error {err:e}");
                    }
                }
            }
        }
    }
}

#[test]
fn reversible_gradients_hold_in_a_deep_identity_initialised_stack() {
    let cfg = FlowConfig::stacked(2, 1, 64, 32).with_init(rnvp::Init::Identity);
    let (flow, _) = flow_and_data(&cfg, 1, 3);
    // a few training steps so that no layer is the identity any more
    let data = TrainData::Toy { set: ToySet::TwoMoons, noise: 0.05 };
    let tc = TrainConfig { steps: 30, lr: 1e-3, val_every: 1000, val_size: 100, ..Default::default() };
    let trainer =
        Trainer { flow: &flow, data: &data, cfg: &tc, scaler: None, out: None, info: Default::default() };
    let report = trainer.run(None, |_| {}).unwrap();
    assert!(report.diverged.is_none() && report.losses[29] < report.losses[0], "{:?}", report.losses);
    let xs = rnvp::data::to_tensor(
        &rnvp::data::scaler::standardize(&ToySet::TwoMoons.sample(1024, 0.05, &mut Rng::new(5))).unwrap(),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    let pk = packing_for(&flow).unwrap();
    let params = pk.pack(&flow).unwrap();
    let (_, want) = autograd(&flow, &xs, &pk);
    let mut grads = vec![0.0; pk.len()];
    pk.mean_loss_grad(&params, &mut grads, &flat(&xs), true, 2, &mut vec![]);
    let err = worst_relative_error(&pk, &grads, &want, Layout::Stacked);
    assert!(err <= 1e-4, "32 layers, reversible: gradient relative error {err:e}");
}

#[test]
fn inference_equals_libtorch() {
    for (i, cfg) in configs().into_iter().enumerate() {
        let (mut flow, xs) = flow_and_data(&cfg, 3001, 40 + i as i64);
        let what = format!("{cfg:?}");
        flow.set_engine(Engine::Libtorch);
        let (lp, z, x) = (flow.log_prob(&xs).unwrap(), flow.encode(&xs).unwrap(), flow.decode(&xs).unwrap());
        flow.set_engine(Engine::Fused);
        common::assert_close(&flow.log_prob(&xs).unwrap(), &lp, 2e-5, 2e-5, &format!("{what} log_prob"));
        common::assert_close(&flow.encode(&xs).unwrap(), &z, 2e-5, 2e-5, &format!("{what} encode"));
        common::assert_close(&flow.decode(&xs).unwrap(), &x, 2e-5, 2e-5, &format!("{what} decode"));
        // the parallel passes split rows only: bit-identical to one thread
        let pk = packing_for(&flow).unwrap();
        let params = pk.pack(&flow).unwrap();
        let (mut one, mut many) = (flat(&xs), flat(&xs));
        let (mut ld1, mut ld2) = (vec![0.0; 3001], vec![0.0; 3001]);
        pk.forward_par(&params, &mut one, &mut ld1, 1);
        pk.forward_par(&params, &mut many, &mut ld2, 3);
        assert!(one == many && ld1 == ld2, "{what}: forward differs across thread counts");
        pk.inverse_par(&params, &mut one, 1);
        pk.inverse_par(&params, &mut many, 3);
        assert!(one == many, "{what}: inverse differs across thread counts");
        let back = Tensor::from_slice(&one).view([-1, cfg.d]);
        common::assert_close(&back, &xs, 1e-4, 1e-4, &format!("{what} round trip"));
    }
}

#[test]
fn sampling_matches_libtorch_on_the_same_noise() {
    let (mut flow, _) = flow_and_data(&FlowConfig::notebook(5), 1, 7);
    let draw = |flow: &Flow| common::seeded(99, || flow.sample(5000).unwrap());
    flow.set_engine(Engine::Libtorch);
    let want = draw(&flow);
    flow.set_engine(Engine::Auto);
    common::assert_close(&draw(&flow), &want, 2e-5, 2e-5, "samples");
}

#[test]
fn the_fused_engine_refuses_what_it_cannot_run() {
    // every draw from libtorch's global generator holds the lock (other tests seed it)
    common::seeded(1, || {
        let mut f64_flow = Flow::new(&FlowConfig::notebook(2), Device::Cpu, Kind::Double).unwrap();
        f64_flow.set_engine(Engine::Fused);
        let xs = Tensor::zeros([4, 2], (Kind::Double, Device::Cpu));
        let err = f64_flow.log_prob(&xs).unwrap_err().to_string();
        assert!(err.contains("float32") && err.contains("Double"), "{err}");
        let mut wide = Flow::new(&FlowConfig::stacked(10, 5, 8, 2), Device::Cpu, Kind::Float).unwrap();
        assert!(packing_for(&wide).is_none(), "k = 5 is beyond the compiled widths");
        wide.set_engine(Engine::Fused);
        let err = wide.sample(3).unwrap_err().to_string();
        assert!(err.contains("k = 5"), "{err}");
        // auto falls back to libtorch
        wide.set_engine(Engine::Auto);
        assert_eq!(wide.sample(3).unwrap().size(), [3, 10]);
    });
}

/// Trains the same flow with each engine; returns the losses and the final weights.
fn train_with(engine: Engine, cfg: &FlowConfig, tc: &TrainConfig) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let mut flow = common::seeded(tc.seed as i64, || Flow::new(cfg, Device::Cpu, Kind::Float).unwrap());
    flow.set_engine(engine);
    let data = TrainData::Toy { set: ToySet::TwoMoons, noise: 0.05 };
    let trainer =
        Trainer { flow: &flow, data: &data, cfg: tc, scaler: None, out: None, info: Default::default() };
    let report = trainer.run(None, |_| {}).unwrap();
    let mut vars: Vec<(String, Tensor)> = flow.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    (report.losses, vars)
}

#[test]
fn training_follows_the_libtorch_trajectory() {
    let cfg = FlowConfig::notebook(3);
    for clip in [None, Some(0.5)] {
        let tc = TrainConfig {
            steps: 40,
            seed: 3,
            clip_grad: clip,
            val_every: 20,
            val_size: 500,
            ..Default::default()
        };
        let (lt, wt) = train_with(Engine::Libtorch, &cfg, &tc);
        let (lf, wf) = train_with(Engine::Fused, &cfg, &tc);
        assert_eq!(lt.len(), 40);
        for (i, (a, b)) in lf.iter().zip(&lt).enumerate() {
            assert!(
                (a - b).abs() <= 1e-3 * a.abs(),
                "clip {clip:?} step {}: fused loss {a} vs libtorch {b}",
                i + 1
            );
        }
        assert!(lf[39] < lf[0] - 0.3, "clip {clip:?}: the loss fell only from {} to {}", lf[0], lf[39]);
        for ((name, a), (_, b)) in wf.iter().zip(&wt) {
            let scale = f64::try_from(b.abs().max()).unwrap();
            let diff = common::max_abs_diff(a, b);
            assert!(diff <= 1e-3 * scale.max(1.0), "clip {clip:?} {name}: weights differ by {diff:e}");
        }
    }
}

#[test]
fn far_out_and_infinite_inputs_give_libtorchs_values() {
    // rows far out (exp(σ) overflows), infinite and NaN coordinates; hidden widths with and
    // without padding to the SIMD width
    let vals = [0.5f32, -1e30, 1e30, 3e4, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0];
    let rows: Vec<f32> = vals.iter().flat_map(|&a| vals.iter().flat_map(move |&b| [a, b])).collect();
    let xs = Tensor::from_slice(&rows).view([-1, 2]);
    for cfg in [
        FlowConfig::single(2, 1, 1),
        FlowConfig::single(2, 1, 3),
        FlowConfig::stacked(2, 1, 1, 3),
        FlowConfig::stacked(2, 1, 13, 3),
        FlowConfig::stacked(2, 1, 16, 3),
        FlowConfig::single(2, 1, 5),
    ] {
        let (mut flow, _) = flow_and_data(&cfg, 1, 77);
        flow.set_engine(Engine::Libtorch);
        let (lp, z, x) = (flow.log_prob(&xs).unwrap(), flow.encode(&xs).unwrap(), flow.decode(&xs).unwrap());
        flow.set_engine(Engine::Fused);
        let what = format!("{cfg:?}");
        common::assert_close(&flow.log_prob(&xs).unwrap(), &lp, 1e-4, 1e-4, &format!("{what} log_prob"));
        common::assert_close(&flow.encode(&xs).unwrap(), &z, 1e-4, 1e-4, &format!("{what} encode"));
        common::assert_close(&flow.decode(&xs).unwrap(), &x, 1e-4, 1e-4, &format!("{what} decode"));
    }
}
