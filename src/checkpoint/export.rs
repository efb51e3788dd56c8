//! TorchScript export: `encode.pt` (x → z), `log_prob.pt` (x → log p(x)) and `decode.pt`
//! (z → x), traced from a frozen flow, loadable by `torch.jit.load` in Python, LibTorch C++ and
//! `tch::CModule`. A scaler stored with the model is part of each function, so they work in the
//! data's own units.
use super::Checkpoint;
use crate::error::{io_err, Error, Result};
use std::path::{Path, PathBuf};
use tch::{CModule, Device, Kind, Tensor};

/// Traces `f` on an example batch and saves it atomically as a TorchScript file at `path`.
fn trace_and_save(path: &Path, example: &Tensor, f: &mut dyn FnMut(&Tensor) -> Tensor) -> Result<()> {
    let mut closure = |inputs: &[Tensor]| vec![f(&inputs[0])];
    let module = CModule::create_by_tracing("rnvp", "forward", &[example.shallow_clone()], &mut closure)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if let Err(e) = module.save(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Data(format!("{}: {}", path.display(), crate::error::first_line(&e.to_string()))));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, e)
    })
}

/// Writes `dir/encode.pt`, `dir/log_prob.pt` and `dir/decode.pt` for the checkpoint's flow in
/// `kind`; returns the paths.
pub fn export_torchscript(ck: &Checkpoint, dir: &Path, kind: Kind) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut flow = ck.to_flow(Device::Cpu, kind)?;
    flow.var_store_mut().freeze();
    let d = ck.config.d;
    let (mean, std, log_det) = match &ck.scaler {
        Some(s) => (
            Tensor::from_slice(&s.mean).to_kind(kind).view([1, d]),
            Tensor::from_slice(&s.std).to_kind(kind).view([1, d]),
            s.log_det(),
        ),
        None => (Tensor::zeros([1, d], (kind, Device::Cpu)), Tensor::ones([1, d], (kind, Device::Cpu)), 0.0),
    };
    let example = Tensor::randn([4, d], (kind, Device::Cpu));
    let flow = &flow;
    let standardize = |xs: &Tensor| (xs - &mean) / &std;
    let mut written = vec![];
    let path = dir.join("encode.pt");
    trace_and_save(&path, &example, &mut |xs| flow.stack().transform(&standardize(xs)).0)?;
    written.push(path);
    let path = dir.join("log_prob.pt");
    trace_and_save(&path, &example, &mut |xs| {
        let (zs, log_jacob) = flow.stack().transform(&standardize(xs));
        crate::base::log_prob(&zs) + log_jacob + log_det
    })?;
    written.push(path);
    let path = dir.join("decode.pt");
    trace_and_save(&path, &example, &mut |zs| flow.stack().untransform(zs) * &std + &mean)?;
    written.push(path);
    Ok(written)
}

/// Writes the model's tensors as a tch/libtorch `.ot` archive (names with `|` for `.`), atomically.
pub fn save_ot(ck: &Checkpoint, path: &Path) -> Result<()> {
    let named: Vec<(&String, &Tensor)> = ck.tensors.iter().collect();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if let Err(e) = Tensor::save_multi(&named, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Data(format!("{}: {}", path.display(), crate::error::first_line(&e.to_string()))));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, e)
    })
}
