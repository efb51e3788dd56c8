//! The maths of every layer and architecture, measured against brute force: inverse(forward(x))
//! = x, the log-determinant against the autograd Jacobian (float64), the 2-D density integrating
//! to 1 on a grid, reversible backpropagation against ordinary backpropagation, and the state
//! (ActNorm's flag, batch norm's statistics, permutations) across checkpoints.
mod common;
use rnvp::checkpoint::Checkpoint;
use rnvp::{Arch, Coupling, Flow, FlowConfig, Init, Mixing, Scale};
use tch::{Device, Kind, Tensor};

/// The named architectures of vectors and custom stacks covering every scale map, mixing and
/// layer (the image flows' layers are tested in tests/image_layers.rs).
fn archs() -> Vec<(String, Arch)> {
    let mut v: Vec<(String, Arch)> =
        Arch::NAMED.iter().filter(|(_, a)| !a.image).map(|(n, a)| (n.to_string(), *a)).collect();
    for scale in [Scale::SoftClamp, Scale::Sigmoid, Scale::Tanh] {
        v.push((format!("affine-{}", scale.name()), Arch { scale, ..Arch::NOTEBOOK }));
    }
    for mixing in [Mixing::Reverse, Mixing::Random, Mixing::Lu] {
        v.push((format!("mixing-{}", mixing.name()), Arch { mixing, actnorm: true, ..Arch::NOTEBOOK }));
    }
    v.push((
        "everything".into(),
        Arch {
            coupling: Coupling::Affine,
            scale: Scale::SoftClamp,
            actnorm: true,
            mixing: Mixing::Lu,
            batch_norm: true,
            final_scale: true,
            image: false,
        },
    ));
    v.push(("additive-lu".into(), Arch { mixing: Mixing::Lu, batch_norm: true, ..Arch::NICE }));
    v
}

/// libtorch's generator is global: one test at a time draws from it, seeded.
fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    static DRAW: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = DRAW.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

/// Whether `f` draws from libtorch's global generator (run under the lock).
fn draws_from_the_generator(f: impl FnOnce()) -> bool {
    let normal = || Tensor::randn([8], (Kind::Double, Device::Cpu));
    seeded(9, || {
        let plain = normal();
        tch::manual_seed(9);
        f();
        max_abs(&plain, &normal()) != 0.0
    })
}

/// Standard-normal rows, seeded.
fn randn(n: i64, d: i64, seed: i64) -> Tensor {
    seeded(seed, || Tensor::randn([n, d], (Kind::Double, Device::Cpu)))
}

/// A float64 flow far from its initialisation: every parameter moved by `noise`·N(0, 1), batch
/// norm's running statistics random, ActNorm marked initialised.
fn perturbed(arch: Arch, d: i64, k: i64, layers: i64, noise: f64, seed: i64) -> Flow {
    seeded(seed, || perturbed_unlocked(arch, d, k, layers, noise))
}

fn perturbed_unlocked(arch: Arch, d: i64, k: i64, layers: i64, noise: f64) -> Flow {
    let cfg = FlowConfig::stacked(d, k, 16, layers).with_arch(arch).with_init(Init::Identity);
    let flow = Flow::new(&cfg, Device::Cpu, Kind::Double).unwrap();
    tch::no_grad(|| {
        // in name order: `variables()` is a HashMap, whose order changes from run to run, and each
        // variable must get the same draws every time
        let mut vars: Vec<(String, Tensor)> = flow.var_store().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut v) in vars {
            let key = name.rsplit('.').next().unwrap();
            match key {
                "perm" | "sign" | "softclamp_bound" | "sigmoid_shift" => {}
                "initialized" => {
                    let _ = v.fill_(1.0);
                }
                "running_var" => {
                    v.copy_(&(Tensor::rand_like(&v) * 1.5 + 0.5));
                }
                _ => {
                    let _ = v.g_add_(&(Tensor::randn_like(&v) * noise));
                }
            }
        }
    });
    flow
}

/// `log|det ∂z/∂x|` of every row by autograd, from the flow's own forward pass.
fn autograd_log_det(flow: &Flow, xs: &Tensor) -> Vec<f64> {
    let (n, d) = (xs.size()[0], xs.size()[1]);
    (0..n)
        .map(|r| {
            let x = xs.narrow(0, r, 1).copy().set_requires_grad(true);
            let (z, _, _) = flow.stack().forward(&x).unwrap();
            let rows: Vec<Tensor> = (0..d)
                .map(|i| {
                    Tensor::run_backward(&[z.narrow(1, i, 1).sum(Kind::Double)], &[&x], true, false)[0].copy()
                })
                .collect();
            let jac = Tensor::cat(&rows, 0);
            let (_, logabs) = Tensor::linalg_slogdet(&jac);
            logabs.double_value(&[])
        })
        .collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn every_architecture_inverts_and_its_log_det_is_the_jacobians() {
    for (name, arch) in archs() {
        for (d, k) in [(2, 1), (5, 2)] {
            let flow = perturbed(arch, d, k, 3, 0.1, 1);
            let xs = randn(16, d, 11) * 1.5;
            let zs = flow.stack().encode(&xs).unwrap();
            let back = flow.stack().decode(&zs).unwrap();
            let err = max_abs(&back, &xs);
            let size = zs.abs().max().double_value(&[]).max(1.0);
            assert!(err < 1e-12 * size, "{name} d = {d}: inverse(forward(x)) is {err} from x (|z| ≤ {size})");
            let (_, log_pz, log_det) = flow.stack().forward(&xs).unwrap();
            let brute = Tensor::from_slice(&autograd_log_det(&flow, &xs));
            let err = max_abs(&log_det, &brute);
            assert!(err < 1e-9, "{name} d = {d}: log-det is {err} from the autograd Jacobian's");
            let lp = flow.stack().log_prob(&xs).unwrap();
            assert!(max_abs(&lp, &(log_pz + log_det)) < 1e-12, "{name}: log_prob = log N(z) + log-det");
            assert!(zs.isfinite().all().int64_value(&[]) == 1);
        }
    }
}

#[test]
fn every_architecture_integrates_to_one_in_2d() {
    let (lim, n) = (14.0, 560i64);
    let h = 2.0 * lim / n as f64;
    let axis = Tensor::arange(n, (Kind::Double, Device::Cpu)) * h + (-lim + h / 2.0);
    let gx = axis.view([n, 1]).expand([n, n], false).reshape([-1, 1]);
    let gy = axis.view([1, n]).expand([n, n], false).reshape([-1, 1]);
    let grid = Tensor::cat(&[gx, gy], 1);
    // the named architectures and the stack with every layer (the log-dets of every layer are
    // checked against autograd above)
    let archs =
        archs().into_iter().filter(|(n, _)| Arch::NAMED.iter().any(|(m, _)| m == n) || n == "everything");
    for (name, arch) in archs {
        let flow = perturbed(arch, 2, 1, 3, 0.1, 2);
        let again = perturbed(arch, 2, 1, 3, 0.1, 2);
        let (a, b) = (flow.var_store().variables(), again.var_store().variables());
        assert!(a.iter().all(|(n, v)| max_abs(v, &b[n]) == 0.0), "{name}: the same seed gave other weights");
        let mass = flow.stack().log_prob(&grid).unwrap().exp().sum(Kind::Double).double_value(&[]) * h * h;
        assert!((mass - 1.0).abs() < 0.01, "{name}: the density integrates to {mass}");
    }
}

#[test]
fn reversible_backprop_gives_ordinary_gradients_for_every_layer() {
    for (name, arch) in archs() {
        let flow = perturbed(arch, 5, 2, 3, 0.1, 3);
        let xs = randn(64, 5, 12);
        let grads = |reversible: bool| common::gradients(&flow, &xs, reversible);
        let (loss, plain) = grads(false);
        let (loss_rev, rev) = grads(true);
        assert!((loss - loss_rev).abs() < 1e-10, "{name}: losses {loss} and {loss_rev}");
        for ((n, a), (_, b)) in plain.iter().zip(&rev) {
            let scale = a.abs().max().double_value(&[]).max(1.0);
            let err = max_abs(a, b);
            assert!(err < 1e-8 * scale, "{name}: gradient of {n} differs by {err}");
        }
    }
}

#[test]
fn batch_norm_trains_on_batch_statistics_and_evaluates_on_running_ones() {
    let flow = perturbed(Arch::REALNVP, 2, 1, 1, 0.0, 4);
    let xs = randn(4096, 2, 13) * 3.0 + 5.0;
    let mean_before = flow.var_store().variables()["bijectors.1.running_mean"].copy();
    flow.stack().loss_backward(&xs, None, false).unwrap();
    let vars = flow.var_store().variables();
    // one training pass moves the running mean 10% of the way to the batch's (through the coupling)
    let moved = (&vars["bijectors.1.running_mean"] - &mean_before).abs().sum(Kind::Double).double_value(&[]);
    assert!(moved > 0.1, "running mean moved by {moved}");
    // evaluation does not move it
    let snapshot = vars["bijectors.1.running_mean"].copy();
    let _ = flow.stack().log_prob(&xs).unwrap();
    assert!(max_abs(&snapshot, &vars["bijectors.1.running_mean"]) == 0.0);
}

#[test]
fn actnorm_initialises_once_from_data_and_the_flag_survives_every_format() {
    let cfg = FlowConfig::stacked(3, 1, 16, 2).with_arch(Arch::GLOW).with_init(Init::Identity);
    let flow = seeded(5, || Flow::new(&cfg, Device::Cpu, Kind::Double).unwrap());
    let vars = flow.var_store().variables();
    assert_eq!(vars["bijectors.0.initialized"].double_value(&[]), 0.0);
    let xs =
        randn(2048, 3, 15) * Tensor::from_slice(&[2.0, 0.5, 3.0]) + Tensor::from_slice(&[1.0, -2.0, 4.0]);
    flow.stack().loss_backward(&xs, None, false).unwrap();
    assert_eq!(vars["bijectors.0.initialized"].double_value(&[]), 1.0);
    // the first ActNorm's output has zero mean and unit variance on the batch
    let loc = &vars["bijectors.0.loc"];
    let log_scale = &vars["bijectors.0.log_scale"];
    let out = (&xs - loc) * log_scale.exp();
    assert!(out.mean_dim(0, false, Kind::Double).abs().max().double_value(&[]) < 1e-10);
    assert!((out.std_dim(0, false, false) - 1.0).abs().max().double_value(&[]) < 1e-5);
    // a second batch does not re-initialise
    let before = loc.copy();
    flow.stack().loss_backward(&(xs.shallow_clone() * 10.0), None, false).unwrap();
    assert_eq!(max_abs(&before, loc), 0.0);
    let dir = std::env::temp_dir().join(format!("rnvp-actnorm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["m.safetensors", "m.pt"] {
        let path = dir.join(file);
        Checkpoint::from_flow(&flow, None).save(&path).unwrap();
        let ck = Checkpoint::load(&path).unwrap();
        assert_eq!(ck.config.arch, Arch::GLOW, "{file}");
        let back = ck.to_flow(Device::Cpu, Kind::Double).unwrap();
        let bv = back.var_store().variables();
        assert_eq!(bv["bijectors.0.initialized"].double_value(&[]), 1.0, "{file}");
        // training the reloaded model does not re-initialise it
        back.stack().loss_backward(&(xs.shallow_clone() * 10.0), None, false).unwrap();
        assert_eq!(max_abs(&before, &bv["bijectors.0.loc"]), 0.0, "{file}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_architecture_round_trips_through_every_format_and_is_read_from_names_alone() {
    let dir = std::env::temp_dir().join(format!("rnvp-archs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, arch) in archs() {
        let flow = perturbed(arch, 5, 2, 2, 0.1, 6);
        let xs = randn(32, 5, 14);
        let want = flow.stack().log_prob(&xs).unwrap();
        for file in ["m.safetensors", "m.pt"] {
            let path = dir.join(file);
            Checkpoint::from_flow(&flow, None).save(&path).unwrap();
            let ck = Checkpoint::load(&path).unwrap();
            // .pt holds no configuration: the architecture is read from the names
            let expected = match arch.mixing {
                Mixing::Reverse if file == "m.pt" => Arch { mixing: Mixing::Random, ..arch },
                _ => arch,
            };
            assert_eq!(ck.config.arch, expected, "{name} {file}");
            assert_eq!((ck.config.d, ck.config.k, ck.config.hidden, ck.config.layers), (5, 2, 16, 2));
            let mut back = None;
            let drawn =
                draws_from_the_generator(|| back = Some(ck.to_flow(Device::Cpu, Kind::Double).unwrap()));
            assert!(!drawn, "{name} {file}: loading drew from the generator");
            let got = back.unwrap().stack().log_prob(&xs).unwrap();
            assert_eq!(max_abs(&got, &want), 0.0, "{name} {file}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_whose_permutation_is_not_one_is_refused() {
    let flow = perturbed(Arch { mixing: Mixing::Random, ..Arch::NOTEBOOK }, 3, 1, 1, 0.0, 7);
    tch::no_grad(|| {
        let mut perm = flow.var_store().variables()["bijectors.0.perm"].shallow_clone();
        perm.copy_(&Tensor::from_slice(&[0.0, 0.0, 2.0]));
    });
    let path = std::env::temp_dir().join(format!("rnvp-perm-{}.safetensors", std::process::id()));
    Checkpoint::from_flow(&flow, None).save(&path).unwrap();
    // checked before anything is built (so `convert` and `inspect` see it too)
    let check = Checkpoint::load(&path).unwrap().check().unwrap_err().to_string();
    assert!(check.contains("bijectors.0.perm") && check.contains("not a permutation"), "{check}");
    let err = Checkpoint::load(&path).unwrap().to_flow(Device::Cpu, Kind::Double).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("not a permutation"), "{err}");
}

#[test]
fn exported_functions_of_every_architecture_take_any_batch_size() {
    let dir = std::env::temp_dir().join(format!("rnvp-export-{}", std::process::id()));
    for (name, arch) in archs() {
        let flow = perturbed(arch, 2, 1, 2, 0.1, 8);
        let ck = Checkpoint::from_flow(&flow, None);
        let out = dir.join(&name);
        // exporting (which loads the checkpoint) draws nothing from libtorch's global generator:
        // a user's seeded stream, and the other tests' draws, stay as they are
        let drawn = draws_from_the_generator(|| {
            rnvp::checkpoint::export::export_torchscript(&ck, &out, Kind::Double).unwrap();
        });
        assert!(!drawn, "{name}: exporting drew from the generator");
        for n in [1, 3, 10] {
            let xs = randn(n, 2, 16 + n);
            for (file, want) in [
                ("log_prob.pt", flow.stack().log_prob(&xs).unwrap()),
                ("encode.pt", flow.stack().encode(&xs).unwrap()),
                ("decode.pt", flow.stack().decode(&xs).unwrap()),
            ] {
                let m = tch::CModule::load(out.join(file)).unwrap();
                let got = m.forward_ts(&[&xs]).unwrap_or_else(|e| panic!("{name} {file} n = {n}: {e}"));
                assert!(max_abs(&got, &want) < 1e-10, "{name} {file} n = {n}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_lone_coupling_with_another_scale_map_is_refused_not_misread() {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let layer = seeded(10, || {
        rnvp::RNvp::build_with(&vs.root(), 2, 1, 8, false, Init::Pytorch, Scale::Sigmoid).unwrap()
    });
    let tensors: std::collections::BTreeMap<String, Tensor> =
        layer.variables().into_iter().map(|(k, t)| (k.to_string(), t)).collect();
    let err = rnvp::checkpoint::infer_config(&tensors).unwrap_err().to_string();
    assert!(err.contains("sigmoid_shift") && err.contains("stack"), "{err}");
}
