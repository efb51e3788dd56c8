//! TorchScript export: `encode.pt` (x → z), `log_prob.pt` (x → log p(x)) and `decode.pt`
//! (z → x), traced from a frozen flow, loadable by `torch.jit.load` in Python, LibTorch C++ and
//! `tch::CModule`. A scaler, whitening and bounds stored with the model are part of each
//! function, so they work in the data's own units. A flow of images works on dequantized images
//! `x ∈ [0, 1]ᴰ` (channel-major rows): `log_prob.pt` gives `log p(x)` in nats with the logit's
//! log-determinant, `bpd.pt` the bits per dimension of the discrete images, `decode.pt` images in
//! `[0, 1]` (sample with `decode(T · torch.randn(n, D))`).
use super::Checkpoint;
use crate::data::BoundsMode;
use crate::error::{io_err, Error, Result};
use std::path::{Path, PathBuf};
use tch::{CModule, Device, Kind, Tensor};

/// Traces `f` on example inputs and saves it atomically as a TorchScript file at `path`.
fn trace_and_save(path: &Path, examples: &[Tensor], f: &mut dyn FnMut(&[Tensor]) -> Tensor) -> Result<()> {
    let mut closure = |inputs: &[Tensor]| vec![f(inputs)];
    let examples: Vec<Tensor> = examples.iter().map(Tensor::shallow_clone).collect();
    let module = CModule::create_by_tracing("rnvp", "forward", &examples, &mut closure)?;
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
/// `kind`; returns the paths. For a conditional flow each function takes the context as its
/// second argument: `log_prob(x, c)`, `encode(x, c)`, `decode(z, c)` (one context row per row).
/// A flow truncated to its box (`--bounds-mode truncate`) is refused: its density needs the
/// normalizer `Z(c)`, estimated by sampling, which a traced function does not carry.
pub fn export_torchscript(ck: &Checkpoint, dir: &Path, kind: Kind) -> Result<Vec<PathBuf>> {
    if ck.bounds.as_ref().is_some_and(|b| b.mode == BoundsMode::Truncate) {
        return Err(Error::InvalidConfig(
            "a flow truncated to its box (--bounds-mode truncate) cannot be exported: its density divides by \
             its mass in the box, estimated by sampling, which TorchScript functions do not carry; train \
             with --bounds-mode logit to export"
                .into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut flow = ck.to_flow(Device::Cpu, kind)?;
    flow.var_store_mut().freeze();
    let (d, m) = (ck.config.d, ck.config.context);
    if let Some(s) =
        ck.scaler.as_ref().filter(|s| s.mean.len() as i64 != d + m || s.std.len() as i64 != d + m)
    {
        return Err(Error::Data(format!(
            "the scaler has {} columns, the model {} and its context {m}",
            s.mean.len(),
            d
        )));
    }
    let columns = |v: &[f64], start: i64, len: i64| {
        Tensor::from_slice(&v[start as usize..(start + len) as usize]).to_kind(kind).view([1, len])
    };
    let (zeros, ones) =
        (|n| Tensor::zeros([1, n], (kind, Device::Cpu)), |n| Tensor::ones([1, n], (kind, Device::Cpu)));
    // (mean, std) of the modelled columns and of the context columns
    let ((mean, std), (c_mean, c_std), log_det) = match &ck.scaler {
        Some(s) => (
            (columns(&s.mean, 0, d), columns(&s.std, 0, d)),
            (columns(&s.mean, d, m), columns(&s.std, d, m)),
            s.log_det_of(d as usize),
        ),
        None => ((zeros(d), ones(d)), (zeros(m), ones(m)), 0.0),
    };
    // tracing examples: fixed values, so that exporting leaves libtorch's global generator alone
    let example = |n: i64| (Tensor::arange(4 * n, (kind, Device::Cpu)) * 0.7).sin().view([4, n]);
    // images: values inside (0, 1)
    let mut examples = vec![if ck.images.is_some() { (example(d) + 1.0) * 0.45 + 0.05 } else { example(d) }];
    if m > 0 {
        examples.push(example(m));
    }
    let flow = &flow;
    // bounded columns: y = logit((x − lo) / (hi − lo)), log|dy/dx| summed per row; images in
    // [0, 1]: the logit y = logit(α + (1 − 2α) x) is that map with the box lo = −α / (1 − 2α),
    // hi = (1 − α) / (1 − 2α)
    let row = |v: &[f64]| Tensor::from_slice(v).to_kind(kind).view([1, d]);
    let bounds = match (&ck.bounds, &ck.images) {
        (Some(b), _) => Some((row(&b.lo), row(&b.hi))),
        (None, Some(i)) => {
            let (lo, hi) = (-i.alpha / (1.0 - 2.0 * i.alpha), (1.0 - i.alpha) / (1.0 - 2.0 * i.alpha));
            Some((row(&vec![lo; d as usize]), row(&vec![hi; d as usize])))
        }
        (None, None) => None,
    };
    let to_logit = |xs: &Tensor| match &bounds {
        Some((lo, hi)) => {
            let u = (xs - lo) / (hi - lo);
            let log_det = -((hi - lo).log() + u.log() + (-&u).log1p()).sum_dim_intlist(-1, false, None);
            (u.log() - (-&u).log1p(), Some(log_det))
        }
        None => (xs.shallow_clone(), None),
    };
    let from_logit = |ys: Tensor| match (&bounds, &ck.images) {
        (Some((lo, hi)), Some(_)) => (lo + (hi - lo) * ys.sigmoid()).clamp(0.0, 1.0),
        (Some((lo, hi)), None) => lo + (hi - lo) * ys.sigmoid(),
        (None, _) => ys,
    };
    // whitening u = L⁻¹ y of the standardized rows y (as rows: u = y (L⁻¹)ᵀ), and back y = u Lᵀ
    let whiten = ck.whiten.as_ref().map(|w| {
        let matrix =
            |v: Vec<f64>| Tensor::from_slice(&v).to_kind(kind).view([d, d]).transpose(0, 1).contiguous();
        (matrix(w.inverse()), matrix(w.chol.clone()), w.log_det())
    });
    let log_det = log_det + whiten.as_ref().map_or(0.0, |w| w.2);
    let standardize = |xs: &Tensor| {
        let y = (xs - &mean) / &std;
        match &whiten {
            Some((inv_t, _, _)) => y.matmul(inv_t),
            None => y,
        }
    };
    let unstandardize = |us: Tensor| {
        let y = match &whiten {
            Some((_, chol_t, _)) => us.matmul(chol_t),
            None => us,
        };
        y * &std + &mean
    };
    let context = |inputs: &[Tensor]| inputs.get(1).map(|c| (c - &c_mean) / &c_std);
    let mut written = vec![];
    let path = dir.join("encode.pt");
    trace_and_save(&path, &examples, &mut |inp| {
        flow.stack().transform(&standardize(&to_logit(&inp[0]).0), context(inp).as_ref()).0
    })?;
    written.push(path);
    // log p(x) in the data's units: the flow's, the logit's (bounds or images) and the scaler's and
    // whitening's log-determinants
    let log_prob = |inp: &[Tensor]| {
        let (ys, bounds_log_det) = to_logit(&inp[0]);
        let (zs, log_jacob) = flow.stack().transform(&standardize(&ys), context(inp).as_ref());
        let lp = crate::base::log_prob(&zs) + log_jacob + log_det;
        match bounds_log_det {
            Some(b) => lp + b,
            None => lp,
        }
    };
    let path = dir.join("log_prob.pt");
    trace_and_save(&path, &examples, &mut |inp| log_prob(inp))?;
    written.push(path);
    if let Some(images) = &ck.images {
        // bits per dimension of the discrete images whose dequantized values are x:
        // −(log p(x) − D ln L) / (D ln 2)
        let (dims, levels) = (d as f64, f64::from(images.levels));
        let path = dir.join("bpd.pt");
        trace_and_save(&path, &examples, &mut |inp| {
            (log_prob(inp) - dims * levels.ln()) / (-dims * std::f64::consts::LN_2)
        })?;
        written.push(path);
    }
    let path = dir.join("decode.pt");
    trace_and_save(&path, &examples, &mut |inp| {
        from_logit(unstandardize(flow.stack().untransform(&inp[0], context(inp).as_ref())))
    })?;
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
