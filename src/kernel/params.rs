//! A stack's variables as the kernels' flat buffer and back (see [`super::Packing`]): from and to
//! the layers, and Adam's state by variable name. Couplings' networks are packed in the kernels'
//! padded layout; every other tensor (the scale map's variable, the per-row linear layers'
//! parameters and buffers) is copied flat, in the order of the layer's keys. Buffers travel in the
//! buffer too (the kernels read them) but get no gradient and no optimizer state. Depends on the
//! layers, never on the flow that holds them.
use super::{flat, Op, Packing, Part};
use crate::config::{is_buffer, LayerKind, Layout};
use crate::error::{Error, Result};
use crate::layers::Layer;
use std::collections::BTreeMap;
use tch::Tensor;

/// Where a variable lies in the flat buffer.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// A coupling network's tensor.
    Net { mu: bool, part: Part },
    /// `len` consecutive numbers from `start`.
    Flat { start: usize, len: usize },
}

/// Numbers of a flat key for `d` columns (the tensors of linear layers, 0-dim flags).
fn flat_len(key: &str, d: usize) -> usize {
    match key {
        "lower" | "upper" => d * d,
        "initialized" | "softclamp_bound" | "sigmoid_shift" => 1,
        _ => d, // loc, log_scale, perm, sign, log_abs_s
    }
}

impl Packing {
    /// Where `key` of `layer` lies.
    fn place(&self, layer: usize, key: &str) -> Option<Place> {
        match self.ops[layer] {
            Op::Coupling { affine, offset, len, .. } => {
                let (net, part) = key.split_once('.').unwrap_or((key, ""));
                let part = match part {
                    "0.weight" => Some(Part::W1),
                    "0.bias" => Some(Part::B1),
                    "2.weight" => Some(Part::W2),
                    "2.bias" => Some(Part::B2),
                    _ => None,
                };
                match (net, part) {
                    ("sig_net", Some(part)) if affine => Some(Place::Net { mu: false, part }),
                    ("mu_net", Some(part)) => Some(Place::Net { mu: true, part }),
                    ("scale_factor" | "softclamp_bound" | "sigmoid_shift", None) if affine => {
                        let (c, o) = self.widths(layer);
                        let nets = 2 * super::net_len(c, o, self.hp);
                        Some(Place::Flat { start: offset + nets, len: offset + len - (offset + nets) })
                    }
                    _ => None,
                }
            }
            Op::Linear { kind, offset, .. } => {
                let mut start = offset;
                for &k in kind.keys(&self.cfg.arch) {
                    let len = flat_len(k, self.d);
                    if k == key {
                        return Some(Place::Flat { start, len });
                    }
                    start += len;
                }
                None
            }
        }
    }

    /// [`Packing::place`] of a variable a layer holds: an error when this packing has no such
    /// variable (the layers are not those it was made for).
    fn layer_place(&self, layer: usize, key: &str) -> Result<Place> {
        self.place(layer, key)
            .ok_or_else(|| Error::InvalidConfig(format!("kernel: layer {layer} has no '{key}'")))
    }

    /// The variables of the stack: (layer, key within the layer).
    fn keys(&self) -> Vec<(usize, &'static str)> {
        (0..self.layers())
            .flat_map(|j| {
                let kind = self.cfg.layer(j as u64).unwrap_or(LayerKind::DiagonalScale); // invariant: j < layers
                kind.keys(&self.cfg.arch).iter().map(move |k| (j, *k))
            })
            .collect()
    }

    /// Copies a dense tensor's values `v` into the buffer.
    fn put(&self, buf: &mut [f32], layer: usize, place: Place, v: &[f32]) {
        match place {
            Place::Net { mu, part } => self.for_each(layer, mu, part, |i, j| buf[j] = v[i]),
            Place::Flat { start, len } => buf[start..start + len].copy_from_slice(&v[..len]),
        }
    }

    /// The dense values of a variable from the buffer.
    fn get(&self, buf: &[f32], layer: usize, place: Place) -> Vec<f32> {
        match place {
            Place::Net { mu, part } => {
                let mut v = vec![0.0f32; self.shape(layer, part).iter().product::<i64>() as usize];
                self.for_each(layer, mu, part, |i, j| v[i] = buf[j]);
                v
            }
            Place::Flat { start, len } => buf[start..start + len].to_vec(),
        }
    }

    /// The variables of a stack's layers, packed.
    pub fn pack(&self, layers: &[Layer]) -> Result<Vec<f32>> {
        let mut buf = vec![0.0f32; self.len];
        if layers.len() != self.layers() {
            return Err(Error::InvalidConfig(format!(
                "kernel: {} layers for a packing of {}",
                layers.len(),
                self.layers()
            )));
        }
        for (j, layer) in layers.iter().enumerate() {
            for (key, t) in layer.variables() {
                let place = self.layer_place(j, key)?;
                let v = flat(&t)?;
                self.put(&mut buf, j, place, &v);
            }
        }
        Ok(buf)
    }

    /// Copies packed values into the variables of a stack's layers.
    pub fn unpack(&self, buf: &[f32], layers: &[Layer]) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (j, layer) in layers.iter().enumerate() {
                for (key, t) in layer.variables() {
                    let place = self.layer_place(j, key)?;
                    let v = Tensor::from_slice(&self.get(buf, j, place)).view(&t.size()[..]);
                    t.shallow_clone().f_copy_(&v)?;
                }
            }
            Ok(())
        })
    }

    /// A packed buffer (gradients, optimizer moments) as tensors named like the flow's trained
    /// parameters (buffers are left out).
    pub fn named(&self, buf: &[f32], layout: Layout) -> BTreeMap<String, Tensor> {
        self.parameters(layout)
            .into_iter()
            .map(|(name, j, place, shape)| {
                (name, Tensor::from_slice(&self.get(buf, j, place)).view(&shape[..]))
            })
            .collect()
    }

    /// The inverse of [`Packing::named`]: every parameter must be present with the right shape.
    pub fn from_named(&self, named: &BTreeMap<String, Tensor>, layout: Layout) -> Result<Vec<f32>> {
        let mut buf = vec![0.0f32; self.len];
        for (name, j, place, shape) in self.parameters(layout) {
            let t = named.get(&name).ok_or_else(|| Error::Data(format!("no tensor '{name}'")))?;
            if t.size() != shape {
                return Err(Error::Shape { what: name, expected: format!("{shape:?}"), found: t.size() });
            }
            self.put(&mut buf, j, place, &flat(t)?);
        }
        Ok(buf)
    }

    /// Every trained parameter: its state_dict name, layer, place and shape.
    fn parameters(&self, layout: Layout) -> Vec<(String, usize, Place, Vec<i64>)> {
        let mut out = vec![];
        for (j, key) in self.keys() {
            if is_buffer(key) {
                continue;
            }
            let name = match layout {
                Layout::Stacked => format!("bijectors.{j}.{key}"),
                Layout::Single => key.to_string(),
            };
            let shape = self
                .cfg
                .variable_shape(&format!("bijectors.{j}.{key}"))
                .or_else(|| self.cfg.variable_shape(key));
            if let (Some(place), Some(shape)) = (self.place(j, key), shape) {
                out.push((name, j, place, shape));
            }
        }
        out
    }
}
