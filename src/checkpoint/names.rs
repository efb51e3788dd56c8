//! Which tensors of a file are the model: the architecture read from names and shapes, the prefix
//! a wrapper put before them (`module.` from `nn.DataParallel`/DDP, `model.` from a
//! LightningModule, `flow.` from a wrapper module), and the check of an architecture against the
//! tensors a file actually holds — before any model is built, so that a model is never larger than
//! what the file contains.
use crate::config::{Arch, Coupling, FlowConfig, Init, LayerKind, Layout, Mixing, Scale};
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
/// The keys one of which every stack's first layer has (a coupling, ActNorm or a mixing layer).
const FIRST_KEYS: [&str; 5] = ["sig_net.0.weight", "mu_net.0.weight", "loc", "lower", "perm"];

/// Whether a stack's first layer is under `prefix`.
fn has_stack<T>(tensors: &BTreeMap<String, T>, prefix: &str) -> bool {
    FIRST_KEYS.iter().any(|k| tensors.contains_key(&format!("{prefix}bijectors.0.{k}")))
}

/// The first names of a model's namespace: what its state_dict keys start with.
fn roots(layout: Layout) -> &'static [&'static str] {
    match layout {
        Layout::Stacked => &["bijectors."],
        Layout::Single => &["mu_net.", "sig_net."],
    }
}

/// The tensors under `prefix` in the model's namespace, stripped of the prefix. Each root is a
/// contiguous range of the sorted names, so this costs the size of the namespace, not of the file.
fn namespace<T: Clone>(tensors: &BTreeMap<String, T>, prefix: &str, layout: Layout) -> BTreeMap<String, T> {
    let mut model = BTreeMap::new();
    for root in roots(layout) {
        let start = format!("{prefix}{root}");
        for (name, t) in tensors.range(start.clone()..).take_while(|(n, _)| n.starts_with(&start)) {
            model.insert(name[prefix.len()..].to_string(), t.clone());
        }
    }
    model
}

/// The names of the file outside the model's namespace.
fn outside<T>(tensors: &BTreeMap<String, T>, prefix: &str, layout: Layout) -> Vec<String> {
    tensors
        .keys()
        .filter(|n| {
            !n.strip_prefix(prefix).is_some_and(|rest| roots(layout).iter().any(|r| rest.starts_with(r)))
        })
        .cloned()
        .collect()
}

/// Whether `p` (a prefix ending in `.`) is `…bijectors.{i}.`: a layer of a stacked model.
fn is_stack_layer(p: &str) -> bool {
    let Some(q) = p.strip_suffix('.') else { return false };
    let (head, index) = match q.rfind('.') {
        Some(i) => (&q[..=i], &q[i + 1..]),
        None => ("", q),
    };
    !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && (index == "0" || !index.starts_with('0')) // a layer's index as PyTorch writes it
        && (head == "bijectors." || head.ends_with(".bijectors."))
}

/// Every prefix under which a model's first variable appears (stacked models first). A lone
/// `R_NVP` at `…bijectors.{i}.` is a layer of a stack (whether or not the stack is complete).
fn candidates<T>(tensors: &BTreeMap<String, T>) -> Vec<(String, Layout)> {
    let boundary = |p: &str| p.is_empty() || p.ends_with('.');
    let mut stacked = vec![];
    let mut single = vec![];
    let mut seen = std::collections::BTreeSet::new();
    for n in tensors.keys() {
        let first = FIRST_KEYS.iter().find_map(|k| {
            n.strip_suffix(k).and_then(|q| q.strip_suffix("bijectors.0.")).filter(|p| boundary(p))
        });
        if let Some(p) = first {
            if seen.insert(p) {
                stacked.push((p.to_string(), Layout::Stacked));
            }
        } else if let Some(p) = n.strip_suffix(SINGLE).filter(|p| boundary(p) && !is_stack_layer(p)) {
            single.push((p.to_string(), Layout::Single));
        }
    }
    stacked.extend(single);
    stacked
}

/// What a search of a file's names found.
#[derive(Debug)]
pub enum Search<T> {
    /// One model (complete, or the most likely one when none is complete: its check then says
    /// what is missing).
    One(Found<T>),
    /// Several complete models that look different (at least two; the search stops there).
    Several(Vec<Found<T>>),
}

/// Finds the model among a file's tensors (see [`find_model`]), reporting several complete
/// models instead of failing. With `every`, all complete models are reported and none is set
/// aside as equal to another: a caller that compared only descriptions (not values) then reads
/// them all and compares their values with [`find_model`].
pub fn search<T: Shaped + Clone>(
    tensors: &BTreeMap<String, T>,
    prefix: Option<&str>,
    every: bool,
) -> Result<Search<T>> {
    let shown = |p: &str| p.escape_debug().to_string();
    if let Some(p) = prefix {
        let layout = if has_stack(tensors, p) {
            Layout::Stacked
        } else if tensors.contains_key(&format!("{p}{SINGLE}")) {
            Layout::Single
        } else {
            return Err(Error::Data(format!(
                "prefix '{}': no '{}{STACKED}' or '{}{SINGLE}' among the {} tensors",
                shown(p),
                shown(p),
                shown(p),
                tensors.len()
            )));
        };
        let model = namespace(tensors, p, layout);
        let config =
            infer_at(tensors, p, layout).map_err(|e| Error::Data(format!("prefix '{}': {e}", shown(p))))?;
        let ignored = outside(tensors, p, layout);
        return Ok(Search::One(Found { prefix: p.to_string(), config, tensors: model, ignored }));
    }
    let mut complete: Vec<Found<T>> = vec![];
    let mut incomplete: Option<(String, FlowConfig)> = None;
    let mut first_error: Option<(String, Error)> = None;
    for (p, layout) in candidates(tensors) {
        let config = match infer_at(tensors, &p, layout) {
            Ok(c) => c,
            Err(e) => {
                first_error.get_or_insert((p, e));
                continue;
            }
        };
        if !is_complete(tensors, &p, &config) {
            if incomplete.as_ref().is_none_or(|(q, _)| p.len() < q.len()) {
                incomplete = Some((p, config));
            }
            continue;
        }
        let model = namespace(tensors, &p, layout);
        let found = Found { prefix: p, config, tensors: model, ignored: vec![] };
        if every {
            complete.push(found);
            continue;
        }
        // the same model under two names (a module kept twice) counts once, under the shorter
        match complete.iter_mut().find(|c| same_model(c, &found)) {
            Some(c) if found.prefix.len() < c.prefix.len() => *c = found,
            Some(_) => {}
            None => complete.push(found),
        }
        if complete.len() >= 2 {
            return Ok(Search::Several(complete));
        }
    }
    if complete.len() >= 2 {
        return Ok(Search::Several(complete));
    }
    let incomplete = incomplete.map(|(p, config)| {
        let model = namespace(tensors, &p, config.layout);
        Found { prefix: p, config, tensors: model, ignored: vec![] }
    });
    let mut one = match (complete.pop(), incomplete, first_error) {
        (Some(f), _, _) | (None, Some(f), _) => f,
        (None, None, Some((p, e))) => {
            let under =
                if p.is_empty() { String::new() } else { format!(" under the prefix '{}'", shown(&p)) };
            return Err(Error::Data(format!("cannot infer the architecture{under}: {e}")));
        }
        (None, None, None) if tensors.is_empty() => {
            return Err(Error::Data("cannot infer the architecture: the file holds no tensors".into()));
        }
        (None, None, None) if tensors.keys().any(|k| k.ends_with(".net.0.weight")) => {
            return Err(Error::Data(
                "an image flow (convolutional couplings): its state_dict holds no image size; read it with \
                 `rnvp convert FILE OUT.safetensors --images CxHxW --levels L`"
                    .into(),
            ));
        }
        (None, None, None) => {
            let some: Vec<String> = tensors.keys().take(4).map(|n| shown(n)).collect();
            return Err(Error::Data(format!(
                "cannot infer the architecture: no stack's first layer ('…{STACKED}') and no lone R_NVP \
                 ('…{SINGLE}' outside a stack's layers) among the {} tensors ({}{})",
                tensors.len(),
                some.join(", "),
                if tensors.len() > 4 { ", …" } else { "" }
            )));
        }
    };
    one.ignored = outside(tensors, &one.prefix, one.config.layout);
    Ok(Search::One(one))
}

/// Finds the model among a file's tensors. With `prefix`, the model is what lies under it;
/// otherwise every prefix under which a model's first variable appears is tried, and the one
/// holding a complete model (every variable of its architecture, with the right shapes) wins.
/// Several different complete models are an error that lists them (pick one with a prefix).
/// Costs time in proportion to the number of names (times a logarithm).
pub fn find_model<T: Shaped + Clone>(
    tensors: &BTreeMap<String, T>,
    prefix: Option<&str>,
) -> Result<Found<T>> {
    match search(tensors, prefix, false)? {
        Search::One(f) => Ok(f),
        Search::Several(list) => Err(several(&list)),
    }
}

/// The error for several different complete models.
pub fn several<T>(list: &[Found<T>]) -> Error {
    let shown: Vec<String> = list
        .iter()
        .map(|f| {
            let c = f.config;
            format!(
                "'{}' ({}, d = {}, k = {}, hidden = {}, {} layers)",
                f.prefix.escape_debug(),
                c.arch.describe(),
                c.d,
                c.k,
                c.hidden,
                c.layers
            )
        })
        .collect();
    Error::Data(format!(
        "different complete models in the file, under the prefixes {} (at least): choose one with --prefix",
        shown.join(", ")
    ))
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
    let layout = if tensors.contains_key(SINGLE) {
        Layout::Single
    } else if has_stack(tensors, "") {
        Layout::Stacked
    } else {
        return Err(Error::Data(format!("cannot infer the architecture: no '{STACKED}' or '{SINGLE}'")));
    };
    infer_at(tensors, "", layout)
}

/// [`infer_config`] for the model of `layout` under `prefix`, by looking names up (no copy).
fn infer_at<T: Shaped>(tensors: &BTreeMap<String, T>, prefix: &str, layout: Layout) -> Result<FlowConfig> {
    let (arch, layers, first) = match layout {
        Layout::Single => {
            // a lone coupling is the notebook's R_NVP; another scale map needs a stack
            let marker = ["softclamp_bound", "sigmoid_shift", "scale_factor"]
                .into_iter()
                .find(|k| tensors.contains_key(&format!("{prefix}{k}")));
            if let Some(k) = marker {
                return Err(Error::Data(format!(
                    "a lone coupling with '{k}' (a scale map other than exp): rnvp reads a single \
                     layer only as the notebook's R_NVP; save it inside a stack (bijectors.0.…)"
                )));
            }
            (Arch::NOTEBOOK, 1, String::new())
        }
        Layout::Stacked => infer_stack(tensors, prefix)?,
    };
    let shape = |name: &str| {
        tensors
            .get(&format!("{prefix}{name}"))
            .map(Shaped::dims)
            .ok_or_else(|| Error::Data(format!("missing tensor '{}'", name.escape_debug())))
    };
    let net = match arch.coupling {
        Coupling::Affine => "sig_net",
        Coupling::Additive => "mu_net",
    };
    let w0 = shape(&format!("{first}{net}.0.weight"))?;
    let w2 = shape(&format!("{first}{net}.2.weight"))?;
    if w0.len() != 2 || w2.len() != 2 {
        return Err(Error::Data(format!("{first}{net} weights are not matrices: {w0:?}, {w2:?}")));
    }
    // the first coupling takes [x₁, c] (k + m columns) and outputs d − k. d is the length of a
    // layer that spans every column (ActNorm, LU, permutation, batch norm, diagonal scaling), or
    // with alternating flips k is what the second coupling outputs; else there is no context
    let mut k = w0[1];
    let span = (layout == Layout::Stacked)
        .then(|| {
            let last = arch.final_scale.then(|| (layers.max(0) as u64).saturating_mul(arch.step_len()));
            (0..arch.step_len()).chain(last).find_map(|j| {
                ["loc", "lower", "perm", "running_mean", "log_scale"]
                    .iter()
                    .find_map(|key| tensors.get(&format!("{prefix}bijectors.{j}.{key}")).map(Shaped::dims))
            })
        })
        .flatten();
    if let Some(&d) = span.as_ref().and_then(|s| s.first()) {
        if d > w2[0] && d - w2[0] <= w0[1] {
            k = d - w2[0];
        }
    } else if layout == Layout::Stacked && arch.mixing == Mixing::Flip && layers >= 2 {
        let second = first.trim_end_matches('.').rsplit('.').next().and_then(|j| j.parse::<u64>().ok());
        if let Some(j) = second.map(|j| j + arch.step_len()) {
            let w = shape(&format!("bijectors.{j}.{net}.2.weight"))?;
            if w.len() == 2 && (1..=w0[1]).contains(&w[0]) {
                k = w[0];
            }
        }
    }
    let d = k
        .checked_add(w2[0])
        .ok_or_else(|| Error::Data(format!("{first}{net} shapes {w0:?}, {w2:?} overflow")))?;
    let (hidden, context) = (w0[0], w0[1] - k);
    let cfg = FlowConfig { d, k, hidden, layers, layout, init: Init::Pytorch, arch, context, image: None };
    cfg.validate()?;
    Ok(cfg)
}

/// The architecture of the stack under `prefix` from the kinds of its layers `bijectors.{j}`
/// (read from their keys), the number of steps, and the prefix of the first coupling.
fn infer_stack<T: Shaped>(tensors: &BTreeMap<String, T>, prefix: &str) -> Result<(Arch, i64, String)> {
    let mut kinds = vec![];
    let mut scale = None;
    // at most one layer per name present: the loop is bounded by the file
    for j in 0.. {
        let has = |key: &str| tensors.contains_key(&format!("{prefix}bijectors.{j}.{key}"));
        let Some((kind, s)) = LayerKind::recognise(has) else { break };
        if matches!(kind, LayerKind::Affine { .. }) {
            scale.get_or_insert(s);
        }
        kinds.push(kind);
    }
    let final_scale = kinds.len() > 1 && kinds.last() == Some(&LayerKind::DiagonalScale);
    let steps = &kinds[..kinds.len() - usize::from(final_scale)];
    let mut at = 0;
    let actnorm = steps.first() == Some(&LayerKind::ActNorm);
    at += usize::from(actnorm);
    let mixing = match steps.get(at) {
        Some(LayerKind::Lu) => Mixing::Lu,
        Some(LayerKind::Permutation) => Mixing::Random, // the order itself is read with the weights
        _ => Mixing::Flip,
    };
    at += usize::from(mixing != Mixing::Flip);
    let first = format!("bijectors.{at}.");
    let coupling = match steps.get(at) {
        Some(LayerKind::Affine { .. }) => Coupling::Affine,
        Some(LayerKind::Additive { .. }) => Coupling::Additive,
        other => {
            return Err(Error::Data(format!(
                "layer {at} of the stack is {}, where a coupling was expected",
                other.map_or("missing", LayerKind::name)
            )))
        }
    };
    let batch_norm = steps.get(at + 1) == Some(&LayerKind::BatchNorm);
    let arch = Arch {
        coupling,
        scale: if coupling == Coupling::Affine { scale.unwrap_or(Scale::Exp) } else { Scale::Exp },
        actnorm,
        mixing,
        batch_norm,
        final_scale,
        image: false,
    };
    let step = arch.step_len() as usize;
    let layers = steps.len().div_ceil(step) as i64;
    let cfg = FlowConfig { layers, ..FlowConfig::stacked(2, 1, 1, 1).with_arch(arch) };
    for (j, kind) in kinds.iter().enumerate() {
        let want = cfg.layer(j as u64);
        if want.map(|w| w.name()) != Some(kind.name()) {
            return Err(Error::Data(format!(
                "layer {j} of the stack is {} where the stack's pattern ({}) has {}",
                kind.name(),
                arch.describe(),
                want.map_or("no layer", |w| w.name())
            )));
        }
    }
    Ok((arch, layers, first))
}

/// Whether the names under `prefix` in the model's namespace are exactly `cfg`'s variables with
/// the right shapes. Looks at most at `variable_count + 1` names, so nested candidates (a model
/// whose namespace holds another's) cost no more than their own size.
fn is_complete<T: Shaped>(tensors: &BTreeMap<String, T>, prefix: &str, cfg: &FlowConfig) -> bool {
    let want = cfg.variable_count();
    let mut seen = 0u64;
    for root in roots(cfg.layout) {
        let start = format!("{prefix}{root}");
        for (name, t) in tensors.range(start.clone()..).take_while(|(n, _)| n.starts_with(&start)) {
            seen += 1;
            if seen > want || cfg.variable_shape(&name[prefix.len()..]) != Some(t.dims()) {
                return false;
            }
        }
    }
    seen == want
}

/// Checks that `tensors` are exactly the variables of `cfg`, names and shapes, listing what is
/// missing and unexpected. Costs time in proportion to the tensors present, whatever the
/// architecture declares (a file may claim billions of parameters it does not hold).
pub fn check_tensors<T: Shaped>(cfg: &FlowConfig, tensors: &BTreeMap<String, T>) -> Result<()> {
    check_named(cfg, tensors, false)
}

/// [`check_tensors`] for state kept per trained parameter (Adam's moments): the buffers are not
/// expected.
pub fn check_parameters<T: Shaped>(cfg: &FlowConfig, tensors: &BTreeMap<String, T>) -> Result<()> {
    check_named(cfg, tensors, true)
}

fn check_named<T: Shaped>(
    cfg: &FlowConfig,
    tensors: &BTreeMap<String, T>,
    parameters_only: bool,
) -> Result<()> {
    cfg.validate()?;
    let wanted = |name: &str| {
        let shape = cfg.variable_shape(name)?;
        let buffer = crate::config::is_buffer(name.rsplit('.').next().unwrap_or(""));
        (!(parameters_only && buffer)).then_some(shape)
    };
    let mut unexpected = vec![];
    let mut present = 0u64;
    for (name, t) in tensors {
        match wanted(name) {
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
    let declared = if parameters_only { cfg.parameter_count() } else { cfg.variable_count() };
    let n_missing = declared.saturating_sub(present);
    if n_missing == 0 && unexpected.is_empty() {
        return Ok(());
    }
    // the first few missing names: at most `present + SHOWN` names are generated
    const SHOWN: usize = 4;
    let missing: Vec<String> = cfg
        .variable_names()
        .filter(|n| wanted(n).is_some() && !tensors.contains_key(n))
        .take(SHOWN)
        .collect();
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
        "checkpoint does not match the model ({}, d = {}, k = {}, hidden = {}, {} layers: {declared} tensors): \
         missing [{}{}], unexpected [{}{}]",
        cfg.arch.describe(),
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
