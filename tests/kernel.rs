//! The fused CPU kernels against libtorch on the same weights: gradients against autograd (plain
//! and reversible, every instruction-set build the CPU runs, one and several threads), inference
//! passes, and whole training runs.
mod common;

use rnvp::data::{Rng, ToySet};
use rnvp::kernel::{Isa, Packing, Scratch, PANEL_ROWS};
use rnvp::train::{Adam, FusedAdam, Schedule, TrainConfig, TrainData, Trainer};
use rnvp::{Arch, Engine, Flow, FlowConfig, Layout, Mixing, Scale};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// A random float32 flow (PyTorch's init, `sig_net`'s output layer halved so that f32 inverses
/// stay accurate for the reversible comparison; the other layers' parameters moved by 0.1·N(0, 1)
/// and ActNorm marked initialised) and `n` standard-normal rows.
fn flow_and_data(cfg: &FlowConfig, n: i64, seed: i64) -> (Flow, Tensor) {
    let (flow, xs) = common::seeded(seed, || {
        let flow = Flow::new(cfg, Device::Cpu, Kind::Float).unwrap();
        tch::no_grad(|| {
            // in name order: `variables()` is a HashMap, whose order changes from run to run
            let mut vars: Vec<(String, Tensor)> = flow.var_store().variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, mut t) in vars {
                match name.rsplit('.').next().unwrap() {
                    "initialized" => {
                        let _ = t.fill_(1.0);
                    }
                    "loc" | "log_scale" | "log_abs_s" | "scale_factor" | "lower" | "upper" => {
                        let _ = t.g_add_(&(Tensor::randn_like(&t) * 0.1));
                    }
                    _ => {}
                }
            }
        });
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

/// Every build of the kernels this CPU runs: the widest, AVX2, the baseline (once each).
fn builds(pk: &Packing) -> Vec<Packing> {
    let mut builds = vec![pk.clone(), pk.clone().capped(Isa::Avx2), pk.clone().baseline()];
    builds.dedup();
    builds
}

fn flat(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap()
}

/// Autograd's loss and gradients (libtorch), packed like the kernels' buffer.
fn autograd(flow: &Flow, xs: &Tensor, pk: &Packing) -> (f64, Vec<f32>) {
    for (_, mut v) in flow.var_store().variables() {
        v.zero_grad();
    }
    let loss = flow.stack().loss_backward(xs, None, false).unwrap();
    assert!(loss.is_finite(), "autograd loss {loss}");
    let grads: BTreeMap<String, Tensor> =
        flow.var_store().variables().into_iter().map(|(n, v)| (n, v.grad())).collect();
    (loss, pk.from_named(&grads, flow.stack().config().layout).unwrap())
}

/// Relative L2 error of `got` against `want`, tensor by tensor (worst one). Every error must be a
/// number: a NaN anywhere fails here (`f64::max` would drop it).
fn worst_relative_error(pk: &Packing, got: &[f32], want: &[f32], layout: Layout) -> f64 {
    let (g, w) = (pk.named(got, layout), pk.named(want, layout));
    let mut worst = 0f64;
    for (name, wt) in &w {
        let gt = &g[name];
        let norm = f64::try_from(wt.to_kind(Kind::Double).norm()).unwrap();
        let err = f64::try_from((gt - wt).to_kind(Kind::Double).norm()).unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: reference gradient norm {norm}");
        assert!(err.is_finite(), "{name}: error {err} (a NaN or infinite gradient)");
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
        // the other architectures the kernels run: every scale map, coupling and linear layer
        FlowConfig::stacked(2, 1, 16, 3).with_arch(Arch::GLOW),
        FlowConfig::stacked(5, 2, 16, 2).with_arch(Arch::GLOW),
        FlowConfig::stacked(2, 1, 13, 3).with_arch(Arch::NICE),
        FlowConfig::stacked(5, 2, 8, 3).with_arch(Arch::NICE),
        FlowConfig::stacked(3, 1, 16, 2).with_arch(Arch {
            scale: Scale::SoftClamp,
            mixing: Mixing::Random,
            actnorm: true,
            final_scale: true,
            ..Arch::NOTEBOOK
        }),
        FlowConfig::stacked(4, 2, 8, 3).with_arch(Arch {
            scale: Scale::Tanh,
            mixing: Mixing::Reverse,
            ..Arch::NOTEBOOK
        }),
        FlowConfig::stacked(2, 1, 8, 2).with_arch(Arch { scale: Scale::Sigmoid, ..Arch::NOTEBOOK }),
        // wider than the narrow kernels: the wide ones, with every scale map and linear layer
        FlowConfig::stacked(10, 5, 13, 2),
        FlowConfig::stacked(16, 8, 24, 2).with_arch(Arch::GLOW),
        FlowConfig::stacked(12, 3, 16, 2).with_arch(Arch::NICE),
        FlowConfig::stacked(11, 5, 9, 2).with_arch(Arch {
            scale: Scale::Tanh,
            mixing: Mixing::Random,
            actnorm: true,
            ..Arch::NOTEBOOK
        }),
        FlowConfig::stacked(9, 4, 8, 2).with_arch(Arch { scale: Scale::SoftClamp, ..Arch::NOTEBOOK }),
        FlowConfig::stacked(70, 35, 8, 2),
        // wide networks with full tiles of hidden blocks (44 units: six blocks, the last half
        // padding; 28: four blocks, the padding inside a full tile of the AVX-512 build; 64 with
        // five outputs: a last output alone in a tile of eight blocks)
        FlowConfig::stacked(10, 4, 44, 2),
        FlowConfig::stacked(14, 7, 28, 2),
        FlowConfig::stacked(10, 5, 64, 2),
    ]
}

#[test]
fn gradients_equal_autograd() {
    for (i, cfg) in configs().into_iter().enumerate() {
        for n in [37, 512] {
            let (flow, xs) = flow_and_data(&cfg, n, 10 + i as i64);
            let pk = flow.stack().packing().expect("the kernels take these widths");
            let params = pk.pack(flow.stack().layers()).unwrap();
            let (want_loss, want) = autograd(&flow, &xs, &pk);
            let x = flat(&xs);
            for pk in builds(&pk) {
                for reversible in [false, true] {
                    // 512 rows on 3 threads are split three ways (blocks of at least 128 rows)
                    let threads: &[usize] = if n >= 3 * 128 { &[1, 3] } else { &[1] };
                    for &threads in threads {
                        let what = format!(
                            "{cfg:?} n={n} {} reversible={reversible} threads={threads}",
                            pk.instruction_set()
                        );
                        // the result overwrites the buffer: a NaN left anywhere fails the comparison
                        let mut grads = vec![f32::NAN; pk.len()];
                        let mut scratch: Vec<(Scratch, Vec<f32>)> = vec![];
                        let loss = pk.mean_loss_grad(
                            &params,
                            &mut grads,
                            (&x, &[]),
                            reversible,
                            threads,
                            &mut scratch,
                        );
                        assert_eq!(scratch.len(), threads, "{what}: rows were not split over the threads");
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
fn the_widest_build_runs_where_the_cpu_has_it() {
    // what this CPU and the environment allow, found independently of the crate
    #[cfg(target_arch = "x86_64")]
    let (avx2, avx512) = (
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl"),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (avx2, avx512) = (false, false);
    let cap = std::env::var("RNVP_KERNELS").unwrap_or_default();
    let expected = match cap.trim() {
        "baseline" => "baseline",
        _ if !avx2 => "baseline",
        "avx2" => "AVX2+FMA",
        _ if avx512 => "AVX-512",
        _ => "AVX2+FMA",
    };
    assert_eq!(rnvp::kernel::has_avx2_fma(), expected != "baseline");
    assert_eq!(
        Isa::detected().name(),
        expected,
        "CPU AVX2+FMA {avx2}, AVX-512 F+VL {avx512}, RNVP_KERNELS={cap:?}"
    );
    eprintln!("kernels: {expected} (CPU AVX2+FMA: {avx2}, AVX-512 F+VL: {avx512}, RNVP_KERNELS={cap:?})");
    // the narrow kernels (the notebook's d = 2) and both instances of the wide ones (13 inputs and
    // 8 outputs; 40 and 20)
    let configs = [
        FlowConfig::notebook(3),
        FlowConfig::stacked(16, 8, 64, 3).with_context(5),
        FlowConfig::stacked(40, 20, 16, 2).with_context(20),
    ];
    for cfg in configs {
        let (flow, xs) = flow_and_data(&cfg, 4096, 5);
        let ctx = common::seeded(6, || flat(&Tensor::randn([4096, cfg.context], (Kind::Float, Device::Cpu))));
        let pk = flow.stack().packing().unwrap();
        assert_eq!(pk.instruction_set(), expected);
        let params = pk.pack(flow.stack().layers()).unwrap();
        // the forward pass, then the inverse of its result
        let run = |pk: &Packing| {
            let mut z = flat(&xs);
            let mut ld = vec![0.0; 4096];
            pk.forward_given(&params, &mut z, &ctx, &mut ld);
            let mut x = z.clone();
            pk.inverse_given(&params, &mut x, &ctx);
            z.extend(x);
            (z, ld)
        };
        let (z_auto, ld_auto) = run(&pk);
        let (z_avx2, ld_avx2) = run(&pk.clone().capped(Isa::Avx2));
        let (z_base, ld_base) = run(&pk.clone().baseline());
        let close =
            |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()));
        assert!(close(&z_auto, &z_base) && close(&ld_auto, &ld_base), "{cfg:?}: the builds disagree");
        // the AVX2 build fuses multiply-adds, so it rounds differently from the baseline build: equal
        // bits on every one of 4096 rows would mean the same code ran
        let identical = z_auto == z_base && ld_auto == ld_base;
        assert_eq!(
            !identical,
            expected != "baseline",
            "{cfg:?}, {expected} build: results identical {identical}"
        );
        // the AVX-512 build is the AVX2 build's operations, in the same order, with more registers
        assert!(
            z_auto == z_avx2 && ld_auto == ld_avx2,
            "{cfg:?}: the {expected} build's bits differ from AVX2's"
        );
        // and so are its gradients (its tiles of the backward pass are larger)
        let grads = |pk: &Packing| {
            let mut g = vec![f32::NAN; pk.len()];
            let loss = pk.mean_loss_grad(&params, &mut g, (&flat(&xs), &ctx), false, 1, &mut vec![]);
            (loss, g)
        };
        let ((loss_auto, g_auto), (loss_avx2, g_avx2)) = (grads(&pk), grads(&pk.clone().capped(Isa::Avx2)));
        assert!(g_auto.iter().all(|v| v.is_finite()), "{cfg:?}: a gradient is not finite");
        assert!(
            loss_auto == loss_avx2 && g_auto == g_avx2,
            "{cfg:?}: the {expected} build's gradients differ from AVX2's"
        );
    }
}

#[test]
fn whole_row_groups_give_the_numbers_of_single_rows() {
    // every row's forward pass and inverse are the same operations whether it runs in a group of
    // eight (the tiled kernels, with fused multiply-adds) or alone (the generic wide kernels): the
    // same bits, in every build
    let configs = [
        FlowConfig::stacked(14, 7, 28, 2),
        FlowConfig::stacked(10, 5, 64, 2).with_context(3),
        FlowConfig::stacked(16, 8, 44, 2).with_arch(Arch::GLOW).with_context(6),
        FlowConfig::stacked(40, 20, 16, 2).with_context(20),
    ];
    for cfg in configs {
        // whole groups of eight rows, enough for the weights' panels, and three rows alone
        let n = PANEL_ROWS as i64 + 11;
        let (flow, xs) = flow_and_data(&cfg, n, 9);
        let ctx = common::seeded(10, || flat(&Tensor::randn([n, cfg.context], (Kind::Float, Device::Cpu))));
        let pk = flow.stack().packing().unwrap();
        let params = pk.pack(flow.stack().layers()).unwrap();
        let (d, m) = (cfg.d as usize, cfg.context as usize);
        for pk in builds(&pk) {
            let (mut z, mut ld) = (flat(&xs), vec![0.0; n as usize]);
            pk.forward_given(&params, &mut z, &ctx, &mut ld);
            let mut x = z.clone();
            pk.inverse_given(&params, &mut x, &ctx);
            for r in 0..n as usize {
                let (mut zr, mut ldr) = (flat(&xs)[r * d..(r + 1) * d].to_vec(), vec![0.0]);
                let cr = &ctx[r * m..(r + 1) * m];
                pk.forward_given(&params, &mut zr, cr, &mut ldr);
                let mut xr = zr.clone();
                pk.inverse_given(&params, &mut xr, cr);
                let what = format!("{cfg:?} {}: row {r}", pk.instruction_set());
                assert_eq!((&z[r * d..(r + 1) * d], ld[r]), (&zr[..], ldr[0]), "{what}: forward");
                assert_eq!(&x[r * d..(r + 1) * d], &xr[..], "{what}: inverse");
            }
        }
    }
}

#[test]
fn weight_panels_change_no_bit_of_the_gradients() {
    // a pass over PANEL_ROWS rows or more reads the tiled kernels' weights from panels (AVX2 and
    // AVX-512 builds), a pass over fewer reads them in place: one pass over copies of eight rows
    // adds the same numbers to the gradients in the same order as one pass per copy
    let configs = [
        FlowConfig::stacked(16, 8, 44, 3),
        FlowConfig::stacked(10, 5, 64, 2).with_context(10),
        FlowConfig::stacked(40, 20, 16, 2).with_context(20),
    ];
    // (couplings only: the linear layers sum their gradients over a pass's rows before adding)
    for cfg in configs {
        let (flow, xs) = flow_and_data(&cfg, 8, 12);
        let ctx = common::seeded(13, || flat(&Tensor::randn([8, cfg.context], (Kind::Float, Device::Cpu))));
        let pk = flow.stack().packing().unwrap();
        let params = pk.pack(flow.stack().layers()).unwrap();
        let copies = PANEL_ROWS.div_ceil(8);
        let (x8, many) = (flat(&xs), flat(&xs).repeat(copies));
        for pk in builds(&pk) {
            let mut scratch = Scratch::default();
            let mut once = vec![0.0f32; pk.len()];
            pk.loss_grad_given(&params, &mut once, (&many, &ctx.repeat(copies)), 1.0, false, &mut scratch);
            let mut eight = vec![0.0f32; pk.len()];
            for _ in 0..copies {
                pk.loss_grad_given(&params, &mut eight, (&x8, &ctx), 1.0, false, &mut scratch);
            }
            assert!(once.iter().any(|g| *g != 0.0), "{cfg:?}: no gradient");
            assert!(once == eight, "{cfg:?} {}: the gradients differ with panels", pk.instruction_set());
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
    // under the lock of libtorch's global generator, in case training draws from it
    let report = common::seeded(tc.seed as i64, || trainer.run(None, |_| {}).unwrap());
    assert!(report.diverged.is_none() && report.losses[29] < report.losses[0], "{:?}", report.losses);
    let xs = rnvp::data::to_tensor(
        &rnvp::data::scaler::standardize(&ToySet::TwoMoons.sample(1024, 0.05, &mut Rng::new(5))).unwrap(),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap();
    let pk = flow.stack().packing().unwrap();
    let params = pk.pack(flow.stack().layers()).unwrap();
    let (_, want) = autograd(&flow, &xs, &pk);
    let mut grads = vec![0.0; pk.len()];
    pk.mean_loss_grad(&params, &mut grads, (&flat(&xs), &[]), true, 2, &mut vec![]);
    let err = worst_relative_error(&pk, &grads, &want, Layout::Stacked);
    assert!(err <= 1e-4, "32 layers, reversible: gradient relative error {err:e}");
}

#[test]
fn inference_equals_libtorch() {
    for (i, cfg) in configs().into_iter().enumerate() {
        let (flow, xs) = flow_and_data(&cfg, 3001, 40 + i as i64);
        let what = format!("{cfg:?}");
        let (lt, fused) = (flow.stack().run(Engine::Libtorch), flow.stack().run(Engine::Fused));
        let (lp, z, x) = (lt.log_prob(&xs).unwrap(), lt.encode(&xs).unwrap(), lt.decode(&xs).unwrap());
        common::assert_close(&fused.log_prob(&xs).unwrap(), &lp, 2e-5, 2e-5, &format!("{what} log_prob"));
        common::assert_close(&fused.encode(&xs).unwrap(), &z, 2e-5, 2e-5, &format!("{what} encode"));
        common::assert_close(&fused.decode(&xs).unwrap(), &x, 2e-5, 2e-5, &format!("{what} decode"));
        // the parallel passes split rows only: bit-identical to one thread
        let pk = flow.stack().packing().unwrap();
        let params = pk.pack(flow.stack().layers()).unwrap();
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
    let (flow, _) = flow_and_data(&FlowConfig::notebook(5), 1, 7);
    let draw = |engine| common::seeded(99, || flow.stack().run(engine).sample(5000).unwrap());
    let want = draw(Engine::Libtorch);
    common::assert_close(&draw(Engine::Auto), &want, 2e-5, 2e-5, "samples");
}

#[test]
fn the_fused_engine_refuses_what_it_cannot_run() {
    // every draw from libtorch's global generator holds the lock (other tests seed it)
    common::seeded(1, || {
        let f64_flow = Flow::new(&FlowConfig::notebook(2), Device::Cpu, Kind::Double).unwrap();
        let xs = Tensor::zeros([4, 2], (Kind::Double, Device::Cpu));
        let err = f64_flow.stack().run(Engine::Fused).log_prob(&xs).unwrap_err().to_string();
        assert!(err.contains("float32") && err.contains("Double"), "{err}");
        let wide = Flow::new(&FlowConfig::stacked(140, 70, 8, 2), Device::Cpu, Kind::Float).unwrap();
        assert!(wide.stack().packing().is_none(), "k = 70 is beyond the kernels' widths");
        let err = wide.stack().run(Engine::Fused).sample(3).unwrap_err().to_string();
        assert!(err.contains("k = 70"), "{err}");
        // auto falls back to libtorch
        assert_eq!(wide.stack().run(Engine::Auto).sample(3).unwrap().size(), [3, 140]);
        // the wide kernels run anything up to 64 columns when asked, but `auto` takes them only
        // where they beat libtorch's matrix products (small enough networks)
        let sbi =
            Flow::new(&FlowConfig::stacked(10, 5, 64, 2).with_context(10), Device::Cpu, Kind::Float).unwrap();
        assert!(sbi.stack().packing().unwrap().faster_than_libtorch());
        assert!(sbi.stack().run(Engine::Auto).fused_packing().unwrap().is_some());
        let conditional =
            Flow::new(&FlowConfig::stacked(16, 8, 512, 2).with_context(32), Device::Cpu, Kind::Float)
                .unwrap();
        // the baseline build (no AVX2 and FMA, or RNVP_KERNELS=baseline) keeps the lower limit
        let p = conditional.stack().packing().unwrap();
        assert_eq!(
            p.faster_than_libtorch(),
            p.instruction_set() != "baseline",
            "40 inputs, 8 outputs, hidden 512"
        );
        let big = Flow::new(&FlowConfig::stacked(64, 32, 512, 2), Device::Cpu, Kind::Float).unwrap();
        assert!(!big.stack().packing().unwrap().faster_than_libtorch());
        assert!(big.stack().run(Engine::Auto).fused_packing().unwrap().is_none());
        assert!(big.stack().run(Engine::Fused).fused_packing().unwrap().is_some());
        // batch norm's statistics span the batch: libtorch runs it
        let cfg = FlowConfig::stacked(2, 1, 8, 2).with_arch(Arch::REALNVP);
        let bn = Flow::new(&cfg, Device::Cpu, Kind::Float).unwrap();
        assert!(bn.stack().packing().is_none());
        let err = bn.stack().run(Engine::Fused).sample(3).unwrap_err().to_string();
        assert!(err.contains("batch norm") && err.contains("realnvp"), "{err}");
    });
}

/// Trains a seeded flow with `engine` (its initial weights multiplied by `1 ± 1e-6` when `perturb`
/// gives a seed); returns the losses, the initial and the final weights.
fn train_with(
    engine: Engine,
    cfg: &FlowConfig,
    tc: &TrainConfig,
    perturb: Option<u64>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let flow = common::seeded(tc.seed as i64, || Flow::new(cfg, Device::Cpu, Kind::Float).unwrap());
    if let Some(seed) = perturb {
        common::perturb(&flow, 1e-6, seed);
    }
    let tc = &TrainConfig { engine, ..tc.clone() };
    let start = common::flat_weights(&flow);
    let data = TrainData::Toy { set: ToySet::TwoMoons, noise: 0.05 };
    let trainer =
        Trainer { flow: &flow, data: &data, cfg: tc, scaler: None, out: None, info: Default::default() };
    // under the lock of libtorch's global generator, in case training draws from it
    let report = common::seeded(tc.seed as i64, || trainer.run(None, |_| {}).unwrap());
    assert!(report.diverged.is_none(), "{engine:?}: {:?}", report.diverged);
    (report.losses, start, common::flat_weights(&flow))
}

/// Sets the gradients of the libtorch optimizer's variables to `grads` (packed like the kernels').
fn set_libtorch_grads(flow: &Flow, pk: &Packing, grads: &[f32]) {
    let named = pk.named(grads, flow.stack().config().layout);
    tch::no_grad(|| {
        for (name, v) in flow.var_store().variables() {
            let mut g = v.grad();
            assert!(g.defined(), "{name}: no gradient to overwrite");
            g.copy_(&named[&name]);
        }
    });
}

#[test]
fn one_training_step_equals_libtorchs() {
    // same weights, same batch: the loss and the gradient to rounding, and Adam's update given the
    // same gradient to a few float32 roundings, whatever the CPU
    for (i, cfg) in [FlowConfig::notebook(3), FlowConfig::stacked(3, 2, 9, 4)].into_iter().enumerate() {
        let tc = TrainConfig { lr: 1e-3, ..Default::default() };
        let (flow, xs) = flow_and_data(&cfg, 512, 60 + i as i64);
        let pk = flow.stack().packing().unwrap();
        let start = pk.pack(flow.stack().layers()).unwrap();
        let mut fused = FusedAdam::new(pk.clone(), &flow, &tc, None).unwrap();
        let loss = fused.loss_grad(&flat(&xs), &[]).unwrap();
        let (want_loss, want_grads) = autograd(&flow, &xs, &pk);
        assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "{cfg:?}: loss {loss} vs {want_loss}");
        let err = worst_relative_error(&pk, fused.grads_mut(), &want_grads, cfg.layout);
        assert!(err <= 1e-4, "{cfg:?}: gradient relative error {err:e}");
        // one update from the same gradient on each side
        fused.grads_mut().copy_from_slice(&want_grads);
        fused.step();
        let mut adam = Adam::new(&flow, &tc, None).unwrap();
        adam.step(); // the gradients autograd left in the variables
        let after = pk.pack(flow.stack().layers()).unwrap();
        let mut moved = 0;
        for (j, ((f, l), s)) in fused.params().iter().zip(&after).zip(&start).enumerate() {
            let tol = 1e-6 * (l.abs() + tc.lr as f32);
            assert!((f - l).abs() <= tol, "{cfg:?} parameter {j}: fused {f}, libtorch {l}, start {s}");
            moved += (l != s) as usize;
        }
        assert!(moved > pk.len() / 2, "{cfg:?}: only {moved} of {} parameters moved", pk.len());
    }
}

#[test]
fn adam_states_evolve_identically_from_the_same_gradients() {
    // 40 steps of each optimizer fed the same gradient sequence (no training dynamics, so no chaos):
    // moments, bias corrections, schedules with warm-up and clipping agree to rounding
    let cfg = FlowConfig::stacked(2, 1, 13, 2);
    for (schedule, warmup, clip) in [(Schedule::Exponential, 0, None), (Schedule::Cosine, 10, Some(0.3))] {
        let tc = TrainConfig {
            lr: 1e-2,
            gamma: 0.95,
            steps: 40,
            schedule,
            warmup,
            clip_grad: clip,
            ..Default::default()
        };
        let (flow, xs) = flow_and_data(&cfg, 64, 70);
        let pk = flow.stack().packing().unwrap();
        let mut fused = FusedAdam::new(pk.clone(), &flow, &tc, None).unwrap();
        let mut adam = Adam::new(&flow, &tc, None).unwrap();
        flow.stack().loss_backward(&xs, None, false).unwrap(); // defines the gradient tensors
        let mut rng = Rng::new(71);
        for t in 0..40 {
            // gradients of every size, some exactly zero
            let scale = [1.0, 1e-3, 10.0, 1e-6][t % 4];
            let g: Vec<f32> = (0..pk.len())
                .map(|j| if j % 17 == 0 { 0.0 } else { (rng.normal() * scale) as f32 })
                .collect();
            // through the named tensors and back: the padding of the hidden width stays zero
            let g = pk.from_named(&pk.named(&g, cfg.layout), cfg.layout).unwrap();
            fused.grads_mut().copy_from_slice(&g);
            set_libtorch_grads(&flow, &pk, &g);
            if let Some(c) = clip {
                let (a, b) = (fused.clip_grad_norm(c), adam.clip_grad_norm(c));
                assert!((a - b).abs() <= 1e-6 * b, "step {t}: gradient norms {a} vs {b}");
            }
            fused.step();
            adam.step();
            let after = pk.pack(flow.stack().layers()).unwrap();
            for (j, (f, l)) in fused.params().iter().zip(&after).enumerate() {
                let tol = 1e-6 * l.abs() + 1e-5 * tc.lr as f32 * (t + 1) as f32;
                assert!((f - l).abs() <= tol, "{schedule:?} step {t} parameter {j}: fused {f}, libtorch {l}");
            }
        }
    }
}

#[test]
fn training_follows_the_libtorch_trajectory() {
    // Training amplifies rounding differences (Adam normalises small, noisy gradients), and how much
    // depends on the CPU's rounding. So the gap between the engines after 40 steps is compared with
    // the chaos of the run itself, measured here: the same run with its initial weights changed by
    // a few roundings (1 ± 1e-6). The engines must stay within ten times that, and far closer to
    // each other than to where they started.
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
        let (la, w0, wa) = train_with(Engine::Libtorch, &cfg, &tc, None);
        let (lb, _, wb) = train_with(Engine::Fused, &cfg, &tc, None);
        let (lc, _, wc) = train_with(Engine::Libtorch, &cfg, &tc, Some(1));
        let (ld, _, wd) = train_with(Engine::Fused, &cfg, &tc, Some(2));
        assert_eq!((la.len(), lb.len()), (40, 40));
        let chaos = common::distance(&wa, &wc).max(common::distance(&wb, &wd));
        let gap = common::distance(&wa, &wb);
        let travel = common::distance(&wa, &w0);
        let norm = wa.iter().map(|v| v * v).sum::<f64>().sqrt();
        eprintln!(
            "clip {clip:?}: engines {gap:.3e} apart, perturbed runs {chaos:.3e}, distance travelled {travel:.3e}"
        );
        assert!(
            gap <= 10.0 * chaos.max(1e-6 * norm),
            "clip {clip:?}: engines {gap:e} apart, chaos {chaos:e}"
        );
        assert!(gap <= 0.05 * travel, "clip {clip:?}: engines {gap:e} apart after travelling {travel:e}");
        for t in 0..40 {
            let chaos_t = (la[t] - lc[t]).abs().max((lb[t] - ld[t]).abs());
            let gap_t = (la[t] - lb[t]).abs();
            assert!(
                gap_t <= 10.0 * chaos_t + 1e-5 * la[t].abs(),
                "clip {clip:?} step {}: fused loss {}, libtorch {} (perturbed runs differ by {chaos_t:e})",
                t + 1,
                lb[t],
                la[t]
            );
        }
        assert!(lb[39] < lb[0] - 0.3, "clip {clip:?}: the loss fell only from {} to {}", lb[0], lb[39]);
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
        let (flow, _) = flow_and_data(&cfg, 1, 77);
        let (lt, fused) = (flow.stack().run(Engine::Libtorch), flow.stack().run(Engine::Fused));
        let (lp, z, x) = (lt.log_prob(&xs).unwrap(), lt.encode(&xs).unwrap(), lt.decode(&xs).unwrap());
        let what = format!("{cfg:?}");
        common::assert_close(&fused.log_prob(&xs).unwrap(), &lp, 1e-4, 1e-4, &format!("{what} log_prob"));
        common::assert_close(&fused.encode(&xs).unwrap(), &z, 1e-4, 1e-4, &format!("{what} encode"));
        common::assert_close(&fused.decode(&xs).unwrap(), &x, 1e-4, 1e-4, &format!("{what} decode"));
    }
    // the wide kernels' padded hidden units stay zero too: the same pairs in ten columns
    let wide_rows: Vec<f32> = rows.chunks_exact(2).flat_map(|p| [p[0], p[1]].repeat(5)).collect();
    let xs = Tensor::from_slice(&wide_rows).view([-1, 10]);
    for cfg in [FlowConfig::stacked(10, 5, 13, 2), FlowConfig::stacked(10, 5, 16, 2)] {
        let (flow, _) = flow_and_data(&cfg, 1, 78);
        let (lt, fused) = (flow.stack().run(Engine::Libtorch), flow.stack().run(Engine::Fused));
        let what = format!("{cfg:?}");
        let lp = lt.log_prob(&xs).unwrap();
        common::assert_close(&fused.log_prob(&xs).unwrap(), &lp, 1e-4, 1e-4, &format!("{what} log_prob"));
        common::assert_close(&fused.decode(&xs).unwrap(), &lt.decode(&xs).unwrap(), 1e-4, 1e-4, &what);
    }
}

#[test]
fn fused_training_initialises_actnorm_from_the_first_batch_as_libtorch_does() {
    let cfg = FlowConfig::stacked(2, 1, 16, 2).with_arch(Arch::GLOW);
    let (fused, xs) = common::seeded(5, || {
        let flow = Flow::new(&cfg, Device::Cpu, Kind::Float).unwrap();
        (flow, Tensor::randn([256, 2], (Kind::Float, Device::Cpu)) * 3.0 + 1.0)
    });
    // every draw from libtorch's global generator holds the lock (other tests seed it)
    let reference = common::seeded(6, || Flow::new(&cfg, Device::Cpu, Kind::Float).unwrap());
    tch::no_grad(|| {
        for (n, mut v) in reference.var_store().variables() {
            v.copy_(&fused.var_store().variables()[&n]);
        }
    });
    let pk = fused.stack().packing().unwrap();
    let mut adam = FusedAdam::new(pk.clone(), &fused, &TrainConfig::default(), None).unwrap();
    adam.initialize(&fused, &xs, None).unwrap();
    let loss = adam.loss_grad(&flat(&xs), &[]).unwrap();
    assert_eq!(fused.var_store().variables()["bijectors.0.initialized"].double_value(&[]), 1.0);
    assert_eq!(
        adam.params(),
        &pk.pack(fused.stack().layers()).unwrap()[..],
        "the packed weights are the initialised ones"
    );
    let want = reference.stack().loss_backward(&xs, None, false).unwrap(); // initialises in libtorch
    assert!((loss - want).abs() < 1e-5 * (1.0 + want.abs()), "fused {loss} vs libtorch {want}");
    // the first ActNorm's output is standardised on the batch
    let vars = fused.var_store().variables();
    let out = (&xs - &vars["bijectors.0.loc"]) * vars["bijectors.0.log_scale"].exp();
    assert!(out.mean_dim(0, false, Kind::Float).abs().max().double_value(&[]) < 1e-4);
}

#[test]
fn conditional_flows_run_fused_as_in_libtorch() {
    // the context enters the conditioners as their last inputs:
    // log p(x | c), the inverse and the training gradient agree with libtorch's, for every
    // architecture the kernels run, in both builds
    for arch in [Arch::NOTEBOOK, Arch::NICE, Arch::GLOW] {
        // the last three on the wide kernels: a context beyond 4, d = 10 with m = 10, and
        // networks that take 64 inputs
        for (d, k, m) in [(2, 1, 2), (2, 1, 3), (3, 1, 1), (2, 1, 5), (10, 5, 10), (6, 3, 61)] {
            let cfg = FlowConfig::stacked(d, k, 12, 3).with_arch(arch).with_context(m);
            let (flow, xs) = flow_and_data(&cfg, 300, 70 + m);
            let c = common::seeded(71, || Tensor::randn([300, m], (Kind::Float, Device::Cpu)));
            let what = format!("{} d = {d}, m = {m}", arch.name());
            let pk = flow.stack().packing().unwrap_or_else(|| panic!("{what}: the kernels run it"));
            assert_eq!(pk.context(), m as usize);
            let lib = flow.stack().run(Engine::Libtorch).given(&c);
            let fused = flow.stack().run(Engine::Fused).given(&c);
            common::assert_close(
                &fused.log_prob(&xs).unwrap(),
                &lib.log_prob(&xs).unwrap(),
                1e-4,
                1e-5,
                &what,
            );
            let z = common::seeded(72, || Tensor::randn([300, d], (Kind::Float, Device::Cpu)));
            common::assert_close(&fused.decode(&z).unwrap(), &lib.decode(&z).unwrap(), 1e-4, 1e-5, &what);
            // gradient of the mean loss against autograd's, both builds, with and without reversal
            for (_, mut v) in flow.var_store().variables() {
                v.zero_grad();
            }
            let want_loss = flow.stack().loss_backward(&xs, Some(&c), false).unwrap();
            let grads: BTreeMap<String, Tensor> =
                flow.var_store().variables().into_iter().map(|(n, v)| (n, v.grad())).collect();
            let want = pk.from_named(&grads, cfg.layout).unwrap();
            let params = pk.pack(flow.stack().layers()).unwrap();
            for (build, reversible) in [(pk.clone(), false), (pk.clone().baseline(), true)] {
                let mut got = vec![0.0; pk.len()];
                let (x, cf) = (flat(&xs), flat(&c));
                let loss = build.mean_loss_grad(&params, &mut got, (&x, &cf), reversible, 2, &mut vec![]);
                assert!(
                    (loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
                    "{what}: loss {loss} vs {want_loss}"
                );
                // float32 sums in another order (and MKL's thread-dependent ones in the reference)
                // leave ~1e-4 on the smallest tensors; a context wired wrongly leaves errors near 1
                let err = worst_relative_error(&pk, &got, &want, cfg.layout);
                assert!(err <= 1e-3, "{what} ({}): gradient relative error {err:e}", build.instruction_set());
            }
        }
    }
    // too wide for the kernels (k + m = 65): libtorch runs it
    let wide = FlowConfig::stacked(2, 1, 8, 2).with_context(64);
    assert!(common::seeded(73, || Flow::new(&wide, Device::Cpu, Kind::Float).unwrap())
        .stack()
        .packing()
        .is_none());
}

#[test]
fn threads_split_the_context_with_the_rows() {
    // the row blocks of the threaded passes carry their own context rows: the same numbers as one
    // thread, each row with its own context, in both builds
    // (narrow: d = 2, m = 2; wide: d = 10, m = 10)
    for (d, k, m) in [(2, 1, 2), (10, 5, 10)] {
        let cfg = FlowConfig::stacked(d, k, 8, 3).with_arch(Arch::GLOW).with_context(m);
        let (flow, xs) = flow_and_data(&cfg, 5003, 81);
        let c = common::seeded(82, || Tensor::randn([5003, m], (Kind::Float, Device::Cpu)) * 2.0);
        let params = flow.stack().packing().unwrap().pack(flow.stack().layers()).unwrap();
        let (x, cf) = (flat(&xs), flat(&c));
        for pk in [flow.stack().packing().unwrap(), flow.stack().packing().unwrap().baseline()] {
            let (mut one, mut many) = (x.clone(), x.clone());
            let (mut ld1, mut ld3) = (vec![0.0; 5003], vec![0.0; 5003]);
            pk.forward_given(&params, &mut one, &cf, &mut ld1);
            pk.forward_given_par(&params, &mut many, &cf, &mut ld3, 3);
            assert_eq!((one.clone(), ld1), (many, ld3), "{}: forward", pk.instruction_set());
            let mut back = one.clone();
            pk.inverse_given_par(&params, &mut back, &cf, 3);
            let err = back.iter().zip(&x).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-3, "{}: inverse error {err}", pk.instruction_set());
            // a context shifted by one row changes the rows' images: the rows use their own contexts
            let mut shifted = cf.clone();
            shifted.rotate_left(m as usize);
            let mut other = x.clone();
            pk.forward_given_par(&params, &mut other, &shifted, &mut vec![0.0; 5003], 3);
            assert_ne!(other, one);
        }
    }
}
