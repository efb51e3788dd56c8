//! Every architecture against PyTorch (`scripts/reference.py family`): a model PyTorch saved
//! loads in rnvp with no flags and gives the same `z`, log-det, `log_prob` and inverse, in
//! evaluation and (batch norm) training form; the `.pt` rnvp writes loads in PyTorch with
//! `load_state_dict(strict=True)` and gives rnvp's numbers there.
mod common;

use common::{assert_close, npy, reference_batch, tmp_dir};
use rnvp::checkpoint::Checkpoint;
use rnvp::layers::Mode;
use rnvp::{Arch, Mixing};
use tch::{Device, Kind, Tensor};

/// (name, reference.py flags, the architecture rnvp must read back).
fn cases() -> Vec<(&'static str, Vec<&'static str>, Arch)> {
    let custom = Arch {
        scale: rnvp::Scale::SoftClamp,
        mixing: Mixing::Random,
        actnorm: true,
        batch_norm: true,
        final_scale: true,
        ..Arch::NOTEBOOK
    };
    vec![
        ("notebook", vec!["--arch", "notebook"], Arch::NOTEBOOK),
        ("nice", vec!["--arch", "nice"], Arch::NICE),
        ("realnvp", vec!["--arch", "realnvp"], Arch::REALNVP),
        ("glow", vec!["--arch", "glow"], Arch::GLOW),
        (
            "custom",
            vec!["--scale", "softclamp", "--mixing", "random", "--actnorm", "--batch-norm", "--final-scale"],
            custom,
        ),
    ]
}

#[test]
fn pytorch_models_of_every_architecture_load_and_match() {
    // (name, architecture, kind, tolerance, d, the directory PyTorch writes to)
    let mut runs = vec![];
    let mut jobs = vec![];
    for (name, flags, arch) in cases() {
        for (dtype, kind, atol) in [("f32", Kind::Float, 1e-5), ("f64", Kind::Double, 1e-10)] {
            for (d, k) in [("2", "1"), ("5", "2")] {
                if name == "notebook" && d == "5" {
                    continue; // the notebook's stacked_NVP needs k = d − k
                }
                let dir = tmp_dir(&format!("family-{name}-{dtype}-{d}"));
                let mut args =
                    vec!["family", "--out", dir.to_str().unwrap(), "--dtype", dtype, "--d", d, "--k", k];
                args.extend(&flags);
                args.extend(["--layers", "3", "--hidden", "16", "--n", "200"]);
                jobs.push(args.iter().map(|a| a.to_string()).collect());
                runs.push((name, arch, kind, atol, format!("{dtype} d = {d}"), dir));
            }
        }
    }
    reference_batch("family", &jobs);
    for (name, arch, kind, atol, case, dir) in runs {
        let ck = Checkpoint::load(&dir.join("model.pt")).unwrap();
        assert_eq!(ck.config.arch, arch, "{name}: architecture read from the names");
        let flow = ck.to_flow(Device::Cpu, kind).unwrap();
        let what = format!("{name} {case}");
        let x = npy(dir.join("x.npy"));
        let (z, log_det) = flow.stack().forward_in(&x, None, Mode::Eval).unwrap();
        assert_close(&z, &npy(dir.join("z.npy")), atol, atol, &format!("{what}: z"));
        assert_close(&log_det, &npy(dir.join("log_det.npy")), atol, atol, &format!("{what}: log-det"));
        let lp = flow.stack().log_prob(&x).unwrap();
        assert_close(&lp, &npy(dir.join("log_prob.npy")), atol, atol, &format!("{what}: log_prob"));
        let x_inv = flow.stack().decode(&npy(dir.join("z_in.npy"))).unwrap();
        assert_close(&x_inv, &npy(dir.join("x_inv.npy")), atol, atol, &format!("{what}: inverse"));
        let (zt, ldt) = flow.stack().forward_in(&x, None, Mode::Replay).unwrap();
        assert_close(&zt, &npy(dir.join("z_train.npy")), atol, atol, &format!("{what}: z (training)"));
        assert_close(
            &ldt,
            &npy(dir.join("log_det_train.npy")),
            atol,
            atol,
            &format!("{what}: log-det (training)"),
        );
    }
}

#[test]
fn rnvp_pt_files_of_every_architecture_load_strictly_in_pytorch() {
    // rnvp writes every file first, then PyTorch loads them all in one process
    let mut written = vec![];
    let mut jobs = vec![];
    for (name, _, arch) in cases() {
        for (kind, atol) in [(Kind::Float, 1e-5), (Kind::Double, 1e-10)] {
            let dir = tmp_dir(&format!("family-out-{name}-{kind:?}"));
            tch::manual_seed(3);
            let cfg = rnvp::FlowConfig::stacked(4, 2, 16, 3).with_arch(arch);
            let flow = rnvp::Flow::new(&cfg, Device::Cpu, kind).unwrap();
            // training passes make ActNorm and batch norm's state non-trivial
            let batch = Tensor::randn([256, 4], (kind, Device::Cpu)) * 2.0 + 0.5;
            for _ in 0..3 {
                flow.stack().loss_backward(&batch, None, false).unwrap();
            }
            let x = Tensor::randn([64, 4], (kind, Device::Cpu));
            let z_in = Tensor::randn([64, 4], (kind, Device::Cpu));
            x.write_npy(dir.join("x.npy")).unwrap();
            z_in.write_npy(dir.join("z_in.npy")).unwrap();
            let file = dir.join("model.pt");
            Checkpoint::from_flow(&flow, None).save(&file).unwrap();
            jobs.push(
                ["load", "--file", file.to_str().unwrap(), "--io", dir.to_str().unwrap()]
                    .map(String::from)
                    .to_vec(),
            );
            written.push((name, kind, atol, flow, x, z_in, dir));
        }
    }
    reference_batch("family-out", &jobs);
    for (name, kind, atol, flow, x, z_in, dir) in written {
        let what = format!("{name} {kind:?} in PyTorch");
        assert_close(
            &npy(dir.join("torch_z.npy")),
            &flow.stack().encode(&x).unwrap(),
            atol,
            atol,
            &format!("{what}: z"),
        );
        let lp = flow.stack().log_prob(&x).unwrap();
        assert_close(&npy(dir.join("torch_log_prob.npy")), &lp, atol, atol, &format!("{what}: log_prob"));
        let x_inv = flow.stack().decode(&z_in).unwrap();
        assert_close(&npy(dir.join("torch_x_inv.npy")), &x_inv, atol, atol, &format!("{what}: inverse"));
    }
}

#[test]
fn conditional_flows_of_every_architecture_match_pytorch_both_ways() {
    // PyTorch's Flow(..., context=2) loads in rnvp with no flags (the context's width read from the
    // shapes) and gives the same numbers at the same context; rnvp's .pt loads strictly in PyTorch
    let mut jobs = vec![];
    let mut runs = vec![];
    for (name, flags, arch) in cases() {
        let dir = tmp_dir(&format!("family-conditional-{name}"));
        let mut args =
            vec!["family", "--out", dir.to_str().unwrap(), "--dtype", "f64", "--d", "3", "--k", "1"];
        args.extend(&flags);
        args.extend(["--layers", "3", "--hidden", "16", "--n", "100", "--context", "2"]);
        jobs.push(args.iter().map(|a| a.to_string()).collect());
        runs.push((name, arch, dir));
    }
    reference_batch("family-conditional", &jobs);
    let mut loads = vec![];
    let mut written = vec![];
    for (name, arch, dir) in runs {
        let ck = Checkpoint::load(&dir.join("model.pt")).unwrap();
        assert_eq!(
            (ck.config.arch, ck.config.context, ck.config.d),
            (arch, 2, 3),
            "{name}: read from the names"
        );
        let flow = ck.to_flow(Device::Cpu, Kind::Double).unwrap();
        let (x, c) = (npy(dir.join("x.npy")), npy(dir.join("c.npy")));
        let what = format!("{name} with a context");
        let lp = flow.stack().given(&c).log_prob(&x).unwrap();
        assert_close(&lp, &npy(dir.join("log_prob.npy")), 1e-10, 1e-10, &format!("{what}: log_prob"));
        let x_inv = flow.stack().given(&c).decode(&npy(dir.join("z_in.npy"))).unwrap();
        assert_close(&x_inv, &npy(dir.join("x_inv.npy")), 1e-10, 1e-10, &format!("{what}: inverse"));
        let (zt, _) = flow.stack().forward_in(&x, Some(&c), Mode::Replay).unwrap();
        assert_close(&zt, &npy(dir.join("z_train.npy")), 1e-10, 1e-10, &format!("{what}: z (training)"));
        // and back: rnvp's .pt in PyTorch, at the same context
        let io = tmp_dir(&format!("family-conditional-{name}-out"));
        for f in ["x.npy", "z_in.npy", "c.npy"] {
            std::fs::copy(dir.join(f), io.join(f)).unwrap();
        }
        let file = io.join("q.pt");
        Checkpoint::from_flow(&flow, None).save(&file).unwrap();
        loads.push(
            ["load", "--file", file.to_str().unwrap(), "--io", io.to_str().unwrap()]
                .map(String::from)
                .to_vec(),
        );
        written.push((what, lp, x_inv, io));
    }
    reference_batch("family-conditional-out", &loads);
    for (what, lp, x_inv, io) in written {
        assert_close(
            &npy(io.join("torch_log_prob.npy")),
            &lp,
            1e-10,
            1e-10,
            &format!("{what}: rnvp's .pt in PyTorch"),
        );
        assert_close(
            &npy(io.join("torch_x_inv.npy")),
            &x_inv,
            1e-10,
            1e-10,
            &format!("{what}: inverse in PyTorch"),
        );
    }
}
