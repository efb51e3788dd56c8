//! Deep flows: the identity initialisation keeps 64 layers trainable, and reversible
//! backpropagation gives ordinary autograd's gradients.
use rnvp::data::ToySet;
use rnvp::train::{TrainConfig, TrainData, Trainer};
use rnvp::{Engine, Flow, FlowConfig, Init};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// libtorch's generator is global: tests that seed it and draw weights hold this lock, so that a
/// test running beside them cannot change their draws.
static RNG: Mutex<()> = Mutex::new(());

fn seeded_flow(cfg: &FlowConfig, kind: Kind, seed: i64) -> Flow {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    Flow::new(cfg, Device::Cpu, kind).unwrap()
}

fn grads(flow: &Flow, xs: &Tensor, reversible: bool) -> (f64, Vec<(String, Tensor)>) {
    let mut vars: Vec<(String, Tensor)> = flow.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in vars.iter_mut() {
        v.zero_grad();
    }
    let loss = flow.stack().loss_backward(xs, None, reversible).unwrap();
    (loss, vars.iter().map(|(n, v)| (n.clone(), v.grad().copy())).collect())
}

#[test]
fn reversible_backprop_gives_autograds_gradients() {
    for (cfg, kind, tol) in [
        (FlowConfig::stacked(2, 1, 32, 6), Kind::Float, 1e-4),
        (FlowConfig::stacked(3, 1, 16, 5), Kind::Float, 1e-4),
        (FlowConfig::stacked(4, 2, 16, 8), Kind::Double, 1e-10),
        (FlowConfig::single(2, 1, 16), Kind::Float, 1e-4),
    ] {
        let flow = seeded_flow(&cfg, kind, 1);
        let xs = {
            let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(2);
            Tensor::randn([256, cfg.d], (kind, Device::Cpu))
        };
        let (l1, g1) = grads(&flow, &xs, false);
        let (l2, g2) = grads(&flow, &xs, true);
        assert!((l1 - l2).abs() <= 1e-5 * l1.abs().max(1.0), "{cfg:?}: loss {l1} vs {l2}");
        for ((name, a), (_, b)) in g1.iter().zip(&g2) {
            let norm = f64::try_from(a.norm()).unwrap();
            assert!(norm > 0.0, "{name}: no gradient");
            let rel = f64::try_from((a - b).norm()).unwrap() / norm;
            assert!(rel <= tol, "{cfg:?} {name}: relative error {rel:e}");
        }
    }
}

#[test]
fn sixty_four_layers_train_with_the_identity_initialisation() {
    let data = TrainData::Toy { set: ToySet::TwoMoons, noise: 0.05 };
    // The notebook's exp(σ) is unbounded, so deep stacks can still produce a non-finite gradient
    // once training moves them away from the identity; with --clip-grad such a step is skipped
    // (10 in a row stop the run). Measured at this size (lr 1e-3, clipping 1, 100 steps, seeds
    // 0-19, fused engine): 4 of 20 seeds skipped 1-7 steps, none stopped. Which seeds skip depends
    // on the CPU's rounding, so no seed is pinned: each mode trains three seeds, and at least two
    // must finish with a falling loss.
    for (engine, reversible) in
        [(Engine::Libtorch, false), (Engine::Libtorch, true), (Engine::Fused, false), (Engine::Fused, true)]
    {
        let mut trained = vec![];
        for seed in 0..3u64 {
            let cfg = FlowConfig::stacked(2, 1, 64, 64).with_init(Init::Identity);
            let flow = seeded_flow(&cfg, Kind::Float, seed as i64);
            let tc = TrainConfig {
                steps: 100,
                val_every: 100,
                val_size: 2000,
                clip_grad: Some(1.0),
                reversible,
                seed,
                engine,
                ..Default::default()
            };
            let t = Trainer {
                flow: &flow,
                data: &data,
                cfg: &tc,
                scaler: None,
                out: None,
                info: Default::default(),
            };
            let r = t.run(None, |_| {}).unwrap();
            let what = format!("{engine:?} reversible={reversible} seed {seed}");
            // the identity flow starts at the base density's NLL of standardized data, ≈ 2.84
            assert!((r.losses[0] - 2.84).abs() < 0.1, "{what}: first loss {}", r.losses[0]);
            // skipped steps were not applied: every weight is still finite
            for (name, v) in flow.var_store().variables() {
                assert!(bool::try_from(v.isfinite().all()).unwrap(), "{what}: {name} is not finite");
            }
            if r.diverged.is_some() {
                eprintln!("{what}: stopped {:?}", r.diverged);
                continue;
            }
            let finite: Vec<f64> = r.losses.iter().copied().filter(|l| l.is_finite()).collect();
            assert!(finite.len() >= 20, "{what}: only {} finite losses", finite.len());
            let first: f64 = finite[..10].iter().sum::<f64>() / 10.0;
            let last: f64 = finite[finite.len() - 10..].iter().sum::<f64>() / 10.0;
            assert!(last < first - 0.3, "{what}: {first} -> {last}");
            trained.push(seed);
        }
        assert!(trained.len() >= 2, "{engine:?} reversible={reversible}: only seeds {trained:?} trained");
    }
}
