//! Which tensors of a file are the model: the architecture read from names and shapes, the prefix
//! a wrapper put before them (`module.` from `nn.DataParallel`/DDP, `model.` from a
//! LightningModule, `flow.` from a wrapper module), and the check of an architecture against the
//! tensors a file actually holds — before any model is built, so that a model is never larger than
//! what the file contains.
use crate::config::{FlowConfig, Init, Layout};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use tch::Tensor;

/// What the checks need of a tensor: its shape, and (to tell two copies of a model apart)
/// whether it holds the same values as another. Implemented for libtorch tensors and for a file's
/// tensors before they are copied into libtorch, so that files are checked before anything is
/// built from them.
pub trait Shaped {
    /// The size of each dimension.
    fn dims(&self) -> Vec<i64>;
    /// Whether `other` has the same dtype, shape and values.
    fn same_values(&self, other: &Self) -> bool;
}

impl Shaped for Tensor {
    fn dims(&self) -> Vec<i64> {
        self.size()
    }
    fn same_values(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.size() == other.size() && self.equal(other)
    }
}

impl<T: Shaped> Shaped for &T {
    fn dims(&self) -> Vec<i64> {
        (**self).dims()
    }
    fn same_values(&self, other: &Self) -> bool {
        (**self).same_values(*other)
    }
}

/// The model found among a file's tensors.
#[derive(Debug)]
pub struct Found<T> {
    /// What was stripped from the front of the model's names (`""`: none).
    pub prefix: String,
    /// The architecture, from the names and shapes.
    pub config: FlowConfig,
    /// The model's tensors under their notebook names.
    pub tensors: BTreeMap<String, T>,
    /// Names of the file's tensors that are not the model's (beside it in a wrapper).
    pub ignored: Vec<String>,
}

const STACKED: &str = "bijectors.0.sig_net.0.weight";
const SINGLE: &str = "sig_net.0.weight";

/// Whether `name` (already stripped of the prefix) lies in the namespace of a model of `layout`.
fn in_namespace(name: &str, layout: Layout) -> bool {
    match layout {
        Layout::Stacked => name.starts_with("bijectors."),
        Layout::Single => name.starts_with("sig_net.") || name.starts_with("mu_net."),
    }
}

/// The tensors under `prefix` in the model's namespace (stripped), and the names left out.
fn take<T: Shaped + Clone>(
    tensors: &BTreeMap<String, T>,
    prefix: &str,
    layout: Layout,
) -> (BTreeMap<String, T>, Vec<String>) {
    let mut model = BTreeMap::new();
    let mut ignored = vec![];
    for (name, t) in tensors {
        match name.strip_prefix(prefix) {
            Some(rest) if in_namespace(rest, layout) => {
                model.insert(rest.to_string(), t.clone());
            }
            _ => ignored.push(name.clone()),
        }
    }
    (model, ignored)
}

/// Finds the model among a file's tensors. With `prefix`, the model is what lies under it;
/// otherwise every prefix under which a model's first variable appears is tried, and the one
/// holding a complete model (every variable of its architecture, with the right shapes) wins.
/// Several different complete models are an error that lists them (pick one with a prefix).
pub fn find_model<T: Shaped + Clone>(
    tensors: &BTreeMap<String, T>,
    prefix: Option<&str>,
) -> Result<Found<T>> {
    if let Some(p) = prefix {
        let layout = if tensors.contains_key(&format!("{p}{STACKED}")) {
            Layout::Stacked
        } else if tensors.contains_key(&format!("{p}{SINGLE}")) {
            Layout::Single
        } else {
            return Err(Error::Data(format!(
                "prefix '{p}': no '{p}{STACKED}' or '{p}{SINGLE}' among the {} tensors",
                tensors.len()
            )));
        };
        let (model, ignored) = take(tensors, p, layout);
        let config = infer_config(&model)?;
        return Ok(Found { prefix: p.to_string(), config, tensors: model, ignored });
    }
    // candidate prefixes, stacked models first; a lone R_NVP inside a stacked model's namespace
    // (`…bijectors.3.sig_net.0.weight`) is a layer of it, not a model
    let mut candidates: Vec<(String, Layout)> = tensors
        .keys()
        .filter_map(|n| n.strip_suffix(STACKED))
        .map(|p| (p.to_string(), Layout::Stacked))
        .collect();
    let stacked: Vec<String> = candidates.iter().map(|(p, _)| p.clone()).collect();
    for n in tensors.keys() {
        if let Some(p) = n.strip_suffix(SINGLE) {
            if !(p.is_empty() || p.ends_with('.'))
                || stacked.iter().any(|s| p.starts_with(&format!("{s}bijectors.")))
            {
                continue;
            }
            candidates.push((p.to_string(), Layout::Single));
        }
    }
    candidates.retain(|(p, _)| p.is_empty() || p.ends_with('.'));
    let mut complete: Vec<Found<T>> = vec![];
    let mut first_incomplete: Option<Found<T>> = None;
    for (p, layout) in candidates {
        let (model, ignored) = take(tensors, &p, layout);
        let Ok(config) = infer_config(&model) else { continue };
        let found = Found { prefix: p, config, tensors: model, ignored };
        if check_tensors(&found.config, &found.tensors).is_ok() {
            // the same model under two names (a module kept twice) counts once, under the shorter
            match complete.iter_mut().find(|c| same_model(c, &found)) {
                Some(c) if found.prefix.len() < c.prefix.len() => *c = found,
                Some(_) => {}
                None => complete.push(found),
            }
        } else if first_incomplete.as_ref().is_none_or(|f| found.prefix.len() < f.prefix.len()) {
            first_incomplete = Some(found);
        }
    }
    match complete.len() {
        1 => Ok(complete.pop().expect("invariant: one element")), // invariant: len is 1
        0 => first_incomplete.ok_or_else(|| {
            let some: Vec<&str> = tensors.keys().take(4).map(String::as_str).collect();
            Error::Data(format!(
                "cannot infer the architecture: no name ends in '{STACKED}' or '{SINGLE}' (the {} tensors: {}{})",
                tensors.len(),
                some.join(", "),
                if tensors.len() > 4 { ", …" } else { "" }
            ))
        }),
        n => {
            let list: Vec<String> = complete
                .iter()
                .map(|f| {
                    let c = f.config;
                    format!(
                        "'{}' (d = {}, k = {}, hidden = {}, {} layers)",
                        f.prefix, c.d, c.k, c.hidden, c.layers
                    )
                })
                .collect();
            Err(Error::Data(format!(
                "{n} different complete models in the file, under the prefixes {}: choose one with --prefix",
                list.join(", ")
            )))
        }
    }
}

/// Whether two found models have the same architecture and equal weights.
fn same_model<T: Shaped>(a: &Found<T>, b: &Found<T>) -> bool {
    a.config == b.config
        && a.tensors.len() == b.tensors.len()
        && a.tensors.iter().all(|(n, t)| b.tensors.get(n).is_some_and(|u| u.same_values(t)))
}

/// Infers the architecture from state_dict names and shapes: `bijectors.{i}.…` (stacked) or
/// `sig_net.…` at the root (single); `d`, `k` and `hidden` from layer 0's `sig_net` shapes, the
/// number of layers from the names present.
pub fn infer_config<T: Shaped>(tensors: &BTreeMap<String, T>) -> Result<FlowConfig> {
    let (prefix, layout) = if tensors.contains_key(SINGLE) {
        ("", Layout::Single)
    } else if tensors.contains_key(STACKED) {
        ("bijectors.0.", Layout::Stacked)
    } else {
        return Err(Error::Data(format!("cannot infer the architecture: no '{STACKED}' or '{SINGLE}'")));
    };
    let shape = |name: &str| {
        tensors.get(name).map(Shaped::dims).ok_or_else(|| Error::Data(format!("missing tensor '{name}'")))
    };
    let w0 = shape(&format!("{prefix}sig_net.0.weight"))?;
    let w2 = shape(&format!("{prefix}sig_net.2.weight"))?;
    if w0.len() != 2 || w2.len() != 2 {
        return Err(Error::Data(format!("{prefix}sig_net weights are not matrices: {w0:?}, {w2:?}")));
    }
    let (hidden, k, d) = (w0[0], w0[1], w0[1] + w2[0]);
    let layers = match layout {
        Layout::Single => 1,
        // at most one layer per tensor: the loop is bounded by the file
        Layout::Stacked => (0..)
            .take_while(|i| tensors.contains_key(&format!("bijectors.{i}.sig_net.0.weight")))
            .count() as i64,
    };
    let cfg = FlowConfig { d, k, hidden, layers, layout, init: Init::Pytorch };
    cfg.validate()?;
    Ok(cfg)
}

/// Checks that `tensors` are exactly the variables of `cfg`, names and shapes, listing what is
/// missing and unexpected. Costs time in proportion to the tensors present, whatever the
/// architecture declares (a file may claim billions of parameters it does not hold).
pub fn check_tensors<T: Shaped>(cfg: &FlowConfig, tensors: &BTreeMap<String, T>) -> Result<()> {
    cfg.validate()?;
    let mut unexpected = vec![];
    let mut present = 0u64;
    for (name, t) in tensors {
        match cfg.variable_shape(name) {
            None => unexpected.push(name.as_str()),
            Some(shape) => {
                present += 1;
                if t.dims() != shape {
                    return Err(Error::Shape {
                        what: format!("tensor '{name}'"),
                        expected: format!("{shape:?}"),
                        found: t.dims(),
                    });
                }
            }
        }
    }
    let declared = cfg.variable_count();
    let n_missing = declared.saturating_sub(present);
    if n_missing == 0 && unexpected.is_empty() {
        return Ok(());
    }
    // the first few missing names: at most `present + SHOWN` names are generated
    const SHOWN: usize = 4;
    let missing: Vec<String> =
        cfg.variable_names().filter(|n| !tensors.contains_key(n)).take(SHOWN).collect();
    let more = |shown: usize, total: u64| {
        if total > shown as u64 {
            format!(", … and {} more", total - shown as u64)
        } else {
            String::new()
        }
    };
    unexpected.sort();
    let shown_unexpected: Vec<&str> = unexpected.iter().take(SHOWN).copied().collect();
    Err(Error::Data(format!(
        "checkpoint does not match the model (d = {}, k = {}, hidden = {}, {} layers: {declared} tensors): \
         missing [{}{}], unexpected [{}{}]",
        cfg.d,
        cfg.k,
        cfg.hidden,
        cfg.layers,
        missing.join(", "),
        more(missing.len(), n_missing),
        shown_unexpected.join(", "),
        more(shown_unexpected.len(), unexpected.len() as u64),
    )))
}
