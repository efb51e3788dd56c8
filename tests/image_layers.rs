//! The maths of the image layers (squeeze, checkerboard and channel-wise convolutional couplings,
//! per-pixel ActNorm / 1×1 convolution / batch norm, Glow's split prior) and of the two multi-scale
//! flows: exact inverses, log-determinants against the autograd Jacobian (float64), reversible
//! backprop against ordinary backprop, and checkpoints round trips.
use rnvp::config::{Arch, ImageShape};
use rnvp::layers::Mode;
use rnvp::{Flow, FlowConfig};
use tch::{Device, Kind, Tensor};

mod common;
use common::seeded;

/// The image flows tested, on small images (odd channel counts included).
fn flows() -> Vec<(&'static str, FlowConfig)> {
    let shape = |channels, height, width, scales| ImageShape { channels, height, width, scales };
    vec![
        ("realnvp-image 1×4×4, 2 scales", FlowConfig::image(Arch::REALNVP_IMAGE, shape(1, 4, 4, 2), 6, 2)),
        ("realnvp-image 3×2×4, 2 scales", FlowConfig::image(Arch::REALNVP_IMAGE, shape(3, 2, 4, 2), 5, 1)),
        ("glow-image 1×4×4, 2 levels", FlowConfig::image(Arch::GLOW_IMAGE, shape(1, 4, 4, 2), 6, 2)),
        ("glow-image 3×2×2, 1 level", FlowConfig::image(Arch::GLOW_IMAGE, shape(3, 2, 2, 1), 5, 2)),
    ]
}

/// A float64 flow far from its initialisation (the zero-initialised convolutions included), with
/// ActNorm initialised and batch norm's running statistics moved by a training pass.
fn trained_looking(cfg: &FlowConfig, seed: i64) -> Flow {
    seeded(seed, || {
        let flow = Flow::new(cfg, Device::Cpu, Kind::Double).unwrap();
        let xs = Tensor::randn([64, cfg.d], (Kind::Double, Device::Cpu)) * 2.0 + 0.5;
        let _ = tch::no_grad(|| flow.stack().forward_in(&xs, None, Mode::Train).unwrap());
        tch::no_grad(|| {
            // in name order, so that each variable gets the same draws every time
            let mut vars: Vec<(String, Tensor)> = flow.var_store().variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, mut v) in vars {
                match name.rsplit('.').next().unwrap() {
                    "perm" | "sign" | "sigmoid_shift" | "initialized" | "running_var" => {}
                    _ => {
                        let _ = v.g_add_(&(Tensor::randn_like(&v) * 0.15));
                    }
                }
            }
        });
        flow
    })
}

/// The Jacobian of `f` (rows `[1, d]` to rows `[1, d]`) at `x`, by autograd.
fn jacobian(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let d = x.size()[1];
    let x = x.copy().set_requires_grad(true);
    let z = f(&x);
    let rows: Vec<Tensor> = (0..d)
        .map(|i| Tensor::run_backward(&[z.narrow(1, i, 1).sum(Kind::Double)], &[&x], true, false)[0].copy())
        .collect();
    Tensor::cat(&rows, 0)
}

fn log_abs_det(jac: &Tensor) -> f64 {
    Tensor::linalg_slogdet(jac).1.double_value(&[])
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn every_image_layer_inverts_and_its_log_det_is_the_jacobians() {
    for (name, cfg) in flows() {
        let flow = trained_looking(&cfg, 3);
        let xs = seeded(5, || Tensor::randn([4, cfg.d], (Kind::Double, Device::Cpu)));
        let mut input = xs.copy();
        let kinds: Vec<&str> = flow.stack().layers().iter().map(|l| l.kind().name()).collect();
        assert!(kinds.contains(&"conv-affine") && kinds.contains(&"squeeze"), "{name}: {kinds:?}");
        for (j, layer) in flow.stack().layers().iter().enumerate() {
            let what = format!("{name}, layer {j} ({})", layer.kind().name());
            let (z, ld) = layer.forward(&input, None, Mode::Eval);
            let back = layer.inverse(&z, None, None);
            let err = max_abs(&back, &input);
            assert!(err < 1e-11, "{what}: inverse(forward(x)) is {err} from x");
            let moved = max_abs(&z, &input);
            for r in 0..input.size()[0] {
                let row = input.narrow(0, r, 1);
                let jac = jacobian(&row, |x| layer.forward(x, None, Mode::Eval).0);
                let want = log_abs_det(&jac);
                let got = ld.as_ref().map_or(0.0, |ld| ld.double_value(&[r]));
                assert!((got - want).abs() < 1e-9, "{what}: log-det {got}, autograd Jacobian {want}");
            }
            if !matches!(layer.kind().name(), "squeeze") {
                assert!(moved > 1e-3, "{what}: the perturbed layer is the identity (moved {moved})");
            }
            input = z;
        }
        // the whole flow: f⁻¹(f(x)) = x, log p = log N(z) + Σ log-dets, log-det = autograd's
        let zs = flow.stack().encode(&xs).unwrap();
        assert!(max_abs(&flow.stack().decode(&zs).unwrap(), &xs) < 1e-10, "{name}: decode(encode(x))");
        let (_, log_pz, log_det) = flow.stack().forward(&xs).unwrap();
        let lp = flow.stack().log_prob(&xs).unwrap();
        assert!(max_abs(&lp, &(log_pz + &log_det)) < 1e-12, "{name}: log_prob = log N(z) + log-det");
        let jac = jacobian(&xs.narrow(0, 0, 1), |x| flow.stack().forward(x).unwrap().0);
        let want = log_abs_det(&jac);
        let got = log_det.double_value(&[0]);
        assert!((got - want).abs() < 1e-9, "{name}: the flow's log-det {got}, autograd's {want}");
    }
}

#[test]
fn a_fresh_image_flow_starts_near_the_identity_and_actnorm_initialises_per_channel() {
    let cfg = flows()[2].1;
    let flow = seeded(1, || Flow::new(&cfg, Device::Cpu, Kind::Double).unwrap());
    let xs = seeded(2, || Tensor::randn([256, cfg.d], (Kind::Double, Device::Cpu)) * 3.0 + 1.0);
    let _ = tch::no_grad(|| flow.stack().forward_in(&xs, None, Mode::Train).unwrap());
    // the first ActNorm (layer 1, after the squeeze to 4 × 2 × 2) standardized each channel
    let squeezed = flow.stack().layers()[0].forward(&xs, None, Mode::Eval).0;
    let (out, _) = flow.stack().layers()[1].forward(&squeezed, None, Mode::Eval);
    let pixels = out.reshape([256, 4, 4]).permute([0, 2, 1]).reshape([-1, 4]);
    let mean = pixels.mean_dim(0, false, Kind::Double);
    let std = pixels.std_dim(0, false, false);
    assert!(mean.abs().max().double_value(&[]) < 1e-9, "per-channel means {mean}");
    assert!((std - 1.0).abs().max().double_value(&[]) < 1e-5, "per-channel stds");
}

#[test]
fn reversible_backprop_gives_ordinary_gradients_for_image_flows() {
    for (name, cfg) in flows() {
        let flow = trained_looking(&cfg, 7);
        let xs = seeded(8, || Tensor::randn([32, cfg.d], (Kind::Double, Device::Cpu)));
        let grads = |reversible: bool| common::gradients(&flow, &xs, reversible);
        let (loss, plain) = grads(false);
        let (loss_rev, rev) = grads(true);
        assert!((loss - loss_rev).abs() < 1e-10, "{name}: losses {loss} and {loss_rev}");
        assert!(!plain.is_empty());
        for ((n, a), (_, b)) in plain.iter().zip(&rev) {
            assert!(a.defined() && b.defined(), "{name}: {n} has no gradient");
            let scale = a.abs().max().double_value(&[]).max(1.0);
            let err = max_abs(a, b);
            assert!(err < 1e-8 * scale, "{name}: gradient of {n} differs by {err}");
        }
    }
}

#[test]
fn image_flows_round_trip_through_a_checkpoint() {
    for (name, cfg) in flows() {
        let flow = trained_looking(&cfg, 11);
        let dir = common::tmp_dir("image_layers_round_trip");
        let path = dir.join("m.safetensors");
        rnvp::checkpoint::Checkpoint::from_flow(&flow, None).save(&path).unwrap();
        let ck = rnvp::checkpoint::Checkpoint::load(&path).unwrap();
        assert_eq!(ck.config, cfg, "{name}");
        ck.check().unwrap();
        let again = Flow::for_loading(&ck.config, Device::Cpu, Kind::Double).unwrap();
        rnvp::checkpoint::load_weights(&again, &ck.tensors).unwrap();
        let xs = seeded(4, || Tensor::randn([5, cfg.d], (Kind::Double, Device::Cpu)));
        let (a, b) = (flow.stack().log_prob(&xs).unwrap(), again.stack().log_prob(&xs).unwrap());
        assert_eq!(max_abs(&a, &b), 0.0, "{name}: log_prob changed through the file");
        assert_eq!(ck.config.variable_count() as usize, ck.tensors.len(), "{name}");
    }
}
