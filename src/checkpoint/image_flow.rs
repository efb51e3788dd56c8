//! Reading an image flow from a file that holds only its state_dict (a PyTorch `.pt` saved from
//! `scripts/reference.py`'s `ImageFlow`, or one rnvp wrote with `convert`). Convolutions do not
//! say the size of the images they were trained on, so the caller gives it ([`ImageSpace`]); the
//! architecture (`glow-image` where there is an LU layer, else `realnvp-image`), the conditioners'
//! channels, the couplings per group and the scales are then the ones whose state_dict names and
//! shapes are exactly the file's.
use super::{names, raw_to_tensor, torch, Checkpoint, Format};
use crate::config::{Arch, FlowConfig, ImageShape};
use crate::data::ImageSpace;
use crate::error::{Error, Result};
use crate::multiscale::{count, MAX_SCALES, MAX_STEPS};
use serde_json::Map;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// The configuration of the image flow whose variables are `tensors` (names relative to the
/// model), for images `space`.
pub fn image_config<T: names::Shaped>(
    tensors: &BTreeMap<String, T>,
    space: &ImageSpace,
) -> Result<FlowConfig> {
    let arch =
        if tensors.keys().any(|k| k.ends_with(".lower")) { Arch::GLOW_IMAGE } else { Arch::REALNVP_IMAGE };
    let first = tensors
        .iter()
        .find(|(k, _)| k.ends_with(".net.0.weight"))
        .ok_or_else(|| Error::Data("no convolutional coupling ('bijectors.{j}.net.0.weight')".into()))?;
    let hidden = first.1.dims().first().copied().unwrap_or(0);
    // the last layer of both architectures has variables, so the highest index counts the layers
    let layers = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("bijectors.")?.split('.').next()?.parse::<u64>().ok())
        .max()
        .map_or(0, |j| j.saturating_add(1));
    let size = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    let mut tried = 0;
    for scales in 1..=MAX_SCALES {
        let shape = ImageShape {
            channels: size(space.channels),
            height: size(space.height),
            width: size(space.width),
            scales,
        };
        if shape.validate(&arch).is_err() {
            continue;
        }
        for steps in 1..=MAX_STEPS {
            let n = count(&arch, &shape, steps);
            if n > layers {
                break;
            }
            if n == layers {
                tried += 1;
                let cfg = FlowConfig::image(arch, shape, hidden.max(1), steps);
                if names::check_tensors(&cfg, tensors).is_ok() {
                    return Ok(cfg);
                }
            }
        }
    }
    Err(Error::Data(format!(
        "no {} of {} × {} × {} images has these {} tensors over {layers} layers ({tried} candidate(s) of that \
         depth had other names or shapes): check the image shape",
        arch.name(),
        space.channels,
        space.height,
        space.width,
        tensors.len()
    )))
}

impl Checkpoint {
    /// Reads the image flow in the file at `path` for images `space`: an rnvp safetensors file as
    /// [`Checkpoint::load_with`] reads it (its image shape must be `space`'s), or a PyTorch file
    /// holding the flow's state_dict, under `prefix` when given (else found before the first
    /// `bijectors.`).
    pub fn load_image_flow(path: &Path, prefix: Option<&str>, space: ImageSpace) -> Result<Checkpoint> {
        space.validate()?;
        let name = path.display().to_string();
        let bytes = crate::data::io::read_file(path, crate::data::io::Contents::Checkpoint)?;
        if Format::detect(&bytes) == Some(Format::Safetensors) {
            let mut ck = Checkpoint::from_bytes_with(&bytes, &name, prefix)?;
            let shape = |i: &ImageSpace| (i.channels as i64, i.height as i64, i.width as i64);
            match (&ck.config.image, &ck.images) {
                (_, Some(stored)) if *stored != space => {
                    return Err(Error::Data(format!(
                        "{name}: the file says its images are {} × {} × {} with {} levels (α {}); --images \
                         and --levels say otherwise",
                        stored.channels, stored.height, stored.width, stored.levels, stored.alpha
                    )))
                }
                (Some(img), _) if (img.channels, img.height, img.width) != shape(&space) => {
                    return Err(Error::Data(format!(
                        "{name}: a flow of {} × {} × {} images, not {} × {} × {}",
                        img.channels, img.height, img.width, space.channels, space.height, space.width
                    )))
                }
                (None, _) if ck.config.d != space.dim() as i64 => {
                    return Err(Error::Data(format!(
                        "{name}: a flow of {} values per row, not of {} × {} × {} images",
                        ck.config.d, space.channels, space.height, space.width
                    )))
                }
                _ => {}
            }
            ck.images = Some(space);
            return Ok(ck);
        }
        let file = torch::read(&bytes, &name)?;
        let prefix = match prefix {
            Some(p) => p.to_string(),
            None => file
                .tensors
                .iter()
                .find_map(|(k, _)| {
                    k.ends_with(".net.0.weight")
                        .then(|| k.find("bijectors."))
                        .flatten()
                        .map(|i| k[..i].to_string())
                })
                .ok_or_else(|| {
                    Error::Data(format!("{name}: no image flow ('…bijectors.{{j}}.net.0.weight')"))
                })?,
        };
        let root = format!("{prefix}bijectors.");
        let mut tensors = BTreeMap::new();
        let mut ignored = vec![];
        for (k, raw) in &file.tensors {
            if !k.starts_with(&root) {
                ignored.push(k.clone());
                continue;
            }
            let t: Tensor = raw_to_tensor(raw)
                .map_err(|m| Error::Data(format!("{name}: tensor '{}': {m}", k.escape_debug())))?;
            tensors.insert(k[prefix.len()..].to_string(), t);
        }
        let config = image_config(&tensors, &space).map_err(|e| Error::Data(format!("{name}: {e}")))?;
        let ck = Checkpoint {
            config,
            scaler: None,
            bounds: None,
            whiten: None,
            images: Some(space),
            tensors,
            optimizer: None,
            info: Map::new(),
            format: file.description,
            prefix,
            ignored,
        };
        ck.check().map_err(|e| Error::Data(format!("{name}: {e}")))?;
        Ok(ck)
    }
}
