//! Checkpoints across the language border, against the real PyTorch: every way the notebook's users
//! save a model loads in rnvp with the same outputs, and what rnvp writes loads in Python.
mod common;
use common::*;
use rnvp::checkpoint::{export::export_torchscript, Checkpoint};
use rnvp::{Flow, FlowConfig};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// rnvp's log p(x), z and inverse for the inputs in `dir`, against `{prefix}log_prob.npy`, ….
fn compare_outputs(flow: &Flow, dir: &Path, prefix: &str, tol: f64, what: &str) {
    let kind = flow.stack().kind();
    let xs = npy(dir.join("x.npy")).to_kind(kind);
    let z_in = npy(dir.join("z_in.npy")).to_kind(kind);
    let want = |n: &str| npy(dir.join(format!("{prefix}{n}.npy")));
    assert_close(
        &flow.stack().log_prob(&xs).unwrap(),
        &want("log_prob"),
        tol,
        tol,
        &format!("{what}: log_prob"),
    );
    assert_close(&flow.stack().encode(&xs).unwrap(), &want("z"), tol, tol, &format!("{what}: z"));
    assert_close(&flow.stack().decode(&z_in).unwrap(), &want("x_inv"), tol, tol, &format!("{what}: inverse"));
}

#[test]
fn every_way_pytorch_users_save_the_notebook_model_loads() {
    let cases = [
        ("f32", vec!["--layers", "3"], Kind::Float, 1e-5),
        ("single", vec!["--single"], Kind::Float, 1e-5),
        ("f64", vec!["--layers", "2", "--dtype", "f64"], Kind::Double, 1e-10),
    ];
    let dirs: Vec<PathBuf> =
        cases.iter().map(|(name, ..)| tmp_dir(&format!("interop-variants-{name}"))).collect();
    let jobs: Vec<Vec<String>> = cases
        .iter()
        .zip(&dirs)
        .map(|((_, args, _, _), dir)| {
            let mut a =
                vec!["variants".to_string(), "--out".into(), dir.to_str().unwrap().into(), "--half".into()];
            a.extend(args.iter().map(|v| v.to_string()));
            a
        })
        .collect();
    reference_batch("interop-variants", &jobs);
    for ((name, _, kind, tol), dir) in cases.into_iter().zip(dirs) {
        for file in [
            "state_dict.pt",
            "legacy_state_dict.pt",
            "checkpoint.pt",
            "module.pt",
            "legacy_module.pt",
            "traced.pt",
        ] {
            let ck = Checkpoint::load(&dir.join(file)).unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
            assert_eq!(ck.config.hidden, 16, "{name}/{file}");
            let flow = ck.to_flow(Device::Cpu, kind).unwrap();
            compare_outputs(&flow, &dir, "", tol, &format!("{name}/{file}"));
        }
        // float16 and bfloat16 weights: the same values as the float32 weights rounded to that type
        let reference_ck = Checkpoint::load(&dir.join("state_dict.pt")).unwrap();
        for (file, half) in [("half.pt", Kind::Half), ("bfloat16.pt", Kind::BFloat16)] {
            let ck = Checkpoint::load(&dir.join(file)).unwrap();
            for (key, t) in &ck.tensors {
                assert_eq!(t.kind(), half, "{file}: {key}");
                let want = reference_ck.tensors[key].to_kind(half).to_kind(Kind::Double);
                assert_eq!(max_abs_diff(&t.to_kind(Kind::Double), &want), 0.0, "{file}: {key}");
            }
            ck.to_flow(Device::Cpu, Kind::Float).unwrap();
        }
    }
}

#[test]
fn wrapped_checkpoints_load_with_no_flags_and_match_pytorch() {
    let dir = tmp_dir("interop-wrapped");
    let d = dir.to_str().unwrap();
    reference(&["wrapped", "--out", d]);
    for (file, prefix, what) in [
        ("dataparallel.pt", "module.", "torch.save state_dict"),
        ("ddp_checkpoint.pt", "module.", "state_dict under 'model'"),
        ("wrapper_state_dict.pt", "flow.", "torch.save state_dict"),
        ("wrapper_traced.pt", "flow.", "TorchScript"),
        ("wrapper_scripted.pt", "flow.", "TorchScript"),
        ("nested.pt", "", "state_dict under 'state/model'"),
        ("nested_prefixed.pt", "module.", "state_dict under 'checkpoint/state_dict'"),
        ("tied.pt", "flow.", "torch.save state_dict"),
        ("ema_copy.pt", "ema.", "torch.save state_dict"),
    ] {
        let ck = Checkpoint::load(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(ck.prefix, prefix, "{file}");
        assert!(ck.format.contains(what), "{file}: {}", ck.format);
        assert_eq!((ck.config.hidden, ck.config.layers), (16, 3), "{file}");
        let flow = ck.to_flow(Device::Cpu, Kind::Float).unwrap();
        compare_outputs(&flow, &dir, "", 1e-5, file);
    }
    // an EMA copy beside the flow: two different models, an error naming both; a prefix picks one
    let two = dir.join("two_models.pt");
    let err = Checkpoint::load(&two).unwrap_err().to_string();
    assert!(err.contains("'flow.'") && err.contains("'ema_flow.'") && err.contains("--prefix"), "{err}");
    let flow = Checkpoint::load_with(&two, Some("flow.")).unwrap().to_flow(Device::Cpu, Kind::Float).unwrap();
    compare_outputs(&flow, &dir, "", 1e-5, "two_models.pt --prefix flow.");
    let ema =
        Checkpoint::load_with(&two, Some("ema_flow.")).unwrap().to_flow(Device::Cpu, Kind::Float).unwrap();
    compare_outputs(&ema, &dir, "ema_", 1e-5, "two_models.pt --prefix ema_flow.");
    // the flow, an equal copy in other storages, and a different model: the difference is found
    let err = Checkpoint::load(&dir.join("three_models.pt")).unwrap_err().to_string();
    assert!(err.contains("'c.'") && err.contains("--prefix"), "{err}");
    let err = Checkpoint::load_with(&two, Some("nothing.")).unwrap_err().to_string();
    assert!(err.contains("prefix 'nothing.'"), "{err}");

    // a real PyTorch Lightning checkpoint (committed: made with the lightning package), against
    // PyTorch's outputs for the weights under state_dict/model.
    let ckpt = repo().join("tests/fixtures/torch/lightning_stacked.ckpt");
    write_inputs(&dir, Kind::Float);
    let io = dir.to_str().unwrap();
    reference(&[
        "outputs",
        "--file",
        ckpt.to_str().unwrap(),
        "--key",
        "state_dict",
        "--prefix",
        "model.",
        "--io",
        io,
    ]);
    let ck = Checkpoint::load(&ckpt).unwrap();
    assert_eq!(ck.prefix, "model.");
    compare_outputs(
        &ck.to_flow(Device::Cpu, Kind::Float).unwrap(),
        &dir,
        "torch_",
        1e-5,
        "lightning_stacked.ckpt",
    );
}

fn seeded_checkpoint(cfg: FlowConfig, kind: Kind) -> (Flow, Checkpoint) {
    let flow = seeded(21, || Flow::new(&cfg, Device::Cpu, kind).unwrap());
    let ck = Checkpoint::from_flow(&flow, None);
    (flow, ck)
}

fn write_inputs(dir: &Path, kind: Kind) {
    let (x, z) = seeded(5, || {
        (Tensor::randn([300, 2], (kind, Device::Cpu)), Tensor::randn([300, 2], (kind, Device::Cpu)))
    });
    x.write_npy(dir.join("x.npy")).unwrap();
    z.write_npy(dir.join("z_in.npy")).unwrap();
}

#[test]
fn files_rnvp_writes_load_in_pytorch() {
    let (mut jobs, mut written, mut flows) = (vec![], vec![], vec![]);
    for (name, cfg, kind, tol) in [
        ("stacked", FlowConfig::stacked(2, 1, 24, 3), Kind::Float, 1e-5),
        ("single", FlowConfig::single(2, 1, 24), Kind::Float, 1e-5),
        ("f64", FlowConfig::stacked(2, 1, 24, 4), Kind::Double, 1e-10),
    ] {
        let (flow, ck) = seeded_checkpoint(cfg, kind);
        for file in ["m.pt", "m.ot"] {
            let dir = tmp_dir(&format!("interop-write-{name}-{file}"));
            write_inputs(&dir, kind);
            let path = dir.join(file);
            ck.save(&path).unwrap();
            jobs.push(
                ["load", "--file", path.to_str().unwrap(), "--io", dir.to_str().unwrap()]
                    .map(String::from)
                    .to_vec(),
            );
            written.push((name, file, tol, dir, path));
        }
        flows.push((name, flow, ck));
    }
    // PyTorch loads every file in one process
    reference_batch("interop-write", &jobs);
    for (name, file, tol, dir, path) in written {
        let (_, flow, ck) = flows.iter().find(|(n, _, _)| *n == name).unwrap();
        compare_outputs(flow, &dir, "torch_", tol, &format!("{name}/{file} in PyTorch"));
        // and back into rnvp, unchanged
        let again = Checkpoint::load(&path).unwrap();
        assert_eq!(again.config, ck.config, "{name}/{file}");
        for (k, t) in &ck.tensors {
            assert_eq!(max_abs_diff(t, &again.tensors[k]), 0.0, "{name}/{file}: {k}");
        }
    }
}

#[test]
fn exported_torchscript_matches_rnvp_for_any_batch_size() {
    let dir = tmp_dir("interop-export");
    write_inputs(&dir, Kind::Float);
    let (flow, ck) = seeded_checkpoint(FlowConfig::stacked(2, 1, 32, 3), Kind::Float);
    let out = dir.join("served");
    export_torchscript(&ck, &out, Kind::Float).unwrap();
    reference(&["jit", "--dir", out.to_str().unwrap(), "--io", dir.to_str().unwrap()]);
    let xs = npy(dir.join("x.npy"));
    let z_in = npy(dir.join("z_in.npy"));
    assert_close(
        &npy(dir.join("jit_log_prob.npy")),
        &flow.stack().log_prob(&xs).unwrap(),
        1e-5,
        1e-5,
        "log_prob.pt",
    );
    assert_close(
        &npy(dir.join("jit_encode.npy")),
        &flow.stack().encode(&xs).unwrap(),
        1e-5,
        1e-5,
        "encode.pt",
    );
    assert_close(
        &npy(dir.join("jit_decode.npy")),
        &flow.stack().decode(&z_in).unwrap(),
        1e-5,
        1e-5,
        "decode.pt",
    );
    // and in tch's own CModule, at another batch size
    let m = tch::CModule::load(out.join("log_prob.pt")).unwrap();
    let some = xs.narrow(0, 0, 17);
    assert_close(
        &m.forward_ts(&[&some]).unwrap(),
        &flow.stack().log_prob(&some).unwrap(),
        1e-5,
        1e-5,
        "CModule",
    );
}

#[test]
fn exported_functions_include_the_data_scaler() {
    let dir = tmp_dir("interop-export-scaler");
    write_inputs(&dir, Kind::Float);
    let (flow, mut ck) = seeded_checkpoint(FlowConfig::stacked(2, 1, 16, 2), Kind::Float);
    let scaler = rnvp::data::Scaler { mean: vec![10.0, -2.0], std: vec![4.0, 0.5] };
    ck.scaler = Some(scaler.clone());
    let out = dir.join("served");
    export_torchscript(&ck, &out, Kind::Float).unwrap();
    let m = tch::CModule::load(out.join("log_prob.pt")).unwrap();
    let xs = npy(dir.join("x.npy")) * 3.0 + 5.0; // data units
    let std = Tensor::from_slice(&[4.0f32, 0.5]).view([1, 2]);
    let mean = Tensor::from_slice(&[10.0f32, -2.0]).view([1, 2]);
    let want = flow.stack().log_prob(&((&xs - &mean) / &std)).unwrap() + scaler.log_det();
    assert_close(&m.forward_ts(&[&xs]).unwrap(), &want, 1e-5, 1e-5, "log_prob with scaler");
    let dec = tch::CModule::load(out.join("decode.pt")).unwrap();
    let z = npy(dir.join("z_in.npy"));
    let want = flow.stack().decode(&z).unwrap() * &std + &mean;
    assert_close(&dec.forward_ts(&[&z]).unwrap(), &want, 1e-5, 1e-5, "decode with scaler");
}

#[test]
fn exported_conditional_functions_take_the_context_and_include_bounds_and_whitening() {
    // log_prob(x, c), encode(x, c), decode(z, c) of a bounded, whitened conditional flow, run by
    // PyTorch's torch.jit.load, against rnvp's own passes through the checkpoint's data map
    let dir = tmp_dir("interop-export-conditional");
    let cfg = FlowConfig::stacked(2, 1, 16, 3).with_arch(rnvp::Arch::GLOW).with_context(2);
    let (flow, mut ck) = seeded_checkpoint(cfg, Kind::Float);
    ck.bounds = Some(rnvp::data::Bounds::new(vec![-1.0, 0.0], vec![1.0, 4.0]).unwrap());
    ck.scaler = Some(rnvp::data::Scaler { mean: vec![0.1, 0.3, 2.0, -1.0], std: vec![0.8, 1.1, 3.0, 0.5] });
    ck.whiten = Some(rnvp::data::Whitening::new(vec![1.0, 0.0, -0.4, 0.9], 2).unwrap());
    let (x, c, z) = seeded(8, || {
        let u = Tensor::rand([300, 2], (Kind::Double, Device::Cpu)) * 0.98 + 0.01;
        let x = Tensor::stack(&[u.select(1, 0) * 2.0 - 1.0, u.select(1, 1) * 4.0], 1);
        (
            x,
            Tensor::randn([300, 2], (Kind::Double, Device::Cpu)),
            Tensor::randn([300, 2], (Kind::Double, Device::Cpu)),
        )
    });
    for (t, f) in [(&x, "x.npy"), (&c, "c.npy"), (&z, "z_in.npy")] {
        t.to_kind(Kind::Float).write_npy(dir.join(f)).unwrap();
    }
    let out = dir.join("served");
    export_torchscript(&ck, &out, Kind::Float).unwrap();
    reference(&["jit", "--dir", out.to_str().unwrap(), "--io", dir.to_str().unwrap()]);
    // rnvp's side, in the data's units
    let space = ck.space();
    let rows = rnvp::data::from_tensor(&Tensor::cat(&[&x, &c], 1)).unwrap();
    let (ys, log_det) = space.to_flow(&rows).unwrap();
    let (y, cs) = rnvp::train::rows_and_context(flow.stack(), &ys).unwrap();
    let cs = cs.unwrap();
    let want =
        flow.stack().given(&cs).log_prob(&y).unwrap().to_kind(Kind::Double) + Tensor::from_slice(&log_det);
    assert_close(
        &npy(dir.join("jit_log_prob.npy")).to_kind(Kind::Double),
        &want,
        1e-3,
        1e-4,
        "log_prob(x, c)",
    );
    let want_z = flow.stack().given(&cs).encode(&y).unwrap();
    assert_close(&npy(dir.join("jit_encode.npy")), &want_z, 1e-4, 1e-4, "encode(x, c)");
    let xs = flow.stack().given(&cs).decode(&z.to_kind(Kind::Float)).unwrap();
    let want_x = space.from_flow(&rnvp::data::from_tensor(&xs).unwrap()).unwrap();
    let want_x = rnvp::data::to_tensor(&want_x, Kind::Float, Device::Cpu).unwrap();
    assert_close(&npy(dir.join("jit_decode.npy")), &want_x, 1e-4, 1e-4, "decode(z, c)");
}
