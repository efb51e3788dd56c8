//! A flow's parameters as the kernels' flat buffer and back: the packing of the coupling layers'
//! `sig_net` and `mu_net` weights (see [`super::Packing`]), from and to the layers, and Adam's
//! state by variable name. Depends on the layers, never on the flow that holds them.
use super::{flat, Packing, Part};
use crate::config::Layout;
use crate::error::{Error, Result};
use crate::layers::{Layer, RNvp};
use std::collections::BTreeMap;
use tch::Tensor;

const PARTS: [Part; 4] = [Part::W1, Part::B1, Part::W2, Part::B2];
const PART_NAMES: [&str; 4] = ["0.weight", "0.bias", "2.weight", "2.bias"];

/// The affine couplings of a stack, in order.
fn couplings(layers: &[Layer]) -> impl Iterator<Item = &RNvp> {
    layers.iter().filter_map(|l| match l {
        Layer::Affine(c, _) => Some(c),
        _ => None,
    })
}

impl Packing {
    /// The weights of a stack's layers, packed.
    pub fn pack(&self, layers: &[Layer]) -> Result<Vec<f32>> {
        let mut buf = vec![0.0f32; self.len];
        for (l, layer) in couplings(layers).enumerate() {
            for (net, ws) in layer.weights().iter().enumerate() {
                for (&part, t) in PARTS.iter().zip(ws) {
                    let v = flat(t)?;
                    self.for_each(l, net == 1, part, |i, j| buf[j] = v[i]);
                }
            }
        }
        Ok(buf)
    }

    /// The dense tensor of `N.part` of `layer` from a packed buffer.
    fn unpack_one(&self, buf: &[f32], layer: usize, mu: bool, part: Part) -> Tensor {
        let shape = self.shape(layer, part);
        let mut v = vec![0.0f32; shape.iter().product::<i64>() as usize];
        self.for_each(layer, mu, part, |i, j| v[i] = buf[j]);
        Tensor::from_slice(&v).view(&shape[..])
    }

    /// Copies packed weights into the variables of a stack's layers.
    pub fn unpack(&self, buf: &[f32], layers: &[Layer]) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (l, layer) in couplings(layers).enumerate() {
                for (net, ws) in layer.weights().iter().enumerate() {
                    for (&part, t) in PARTS.iter().zip(ws) {
                        t.shallow_clone().f_copy_(&self.unpack_one(buf, l, net == 1, part))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// A packed buffer (gradients, optimizer moments) as tensors named like the flow's variables.
    pub fn named(&self, buf: &[f32], layout: Layout) -> BTreeMap<String, Tensor> {
        self.variables(layout)
            .into_iter()
            .map(|(name, l, mu, part)| (name, self.unpack_one(buf, l, mu, part)))
            .collect()
    }

    /// The inverse of [`Packing::named`]: every name must be present with the right shape.
    pub fn from_named(&self, named: &BTreeMap<String, Tensor>, layout: Layout) -> Result<Vec<f32>> {
        let mut buf = vec![0.0f32; self.len];
        for (name, l, mu, part) in self.variables(layout) {
            let t = named.get(&name).ok_or_else(|| Error::Data(format!("no tensor '{name}'")))?;
            let shape = self.shape(l, part);
            if t.size() != shape {
                return Err(Error::Shape { what: name, expected: format!("{shape:?}"), found: t.size() });
            }
            let v = flat(t)?;
            self.for_each(l, mu, part, |i, j| buf[j] = v[i]);
        }
        Ok(buf)
    }

    /// Every variable of the flow: its state_dict name, layer, whether it is `mu_net`'s, and part.
    fn variables(&self, layout: Layout) -> Vec<(String, usize, bool, Part)> {
        let mut out = Vec::with_capacity(self.layers() * 8);
        for l in 0..self.layers() {
            for (net, net_name) in ["sig_net", "mu_net"].iter().enumerate() {
                for (&part, part_name) in PARTS.iter().zip(PART_NAMES) {
                    let name = match layout {
                        Layout::Stacked => format!("bijectors.{l}.{net_name}.{part_name}"),
                        Layout::Single => format!("{net_name}.{part_name}"),
                    };
                    out.push((name, l, net == 1, part));
                }
            }
        }
        out
    }
}
