//! Finding the model's tensors in an unpickled object graph, and copying them out of storages.
use super::pickle::{Arena, ElemType, Node, TensorRef, Value, MAX_DEPTH};
use super::RawTensor;
use std::collections::HashSet;

/// The longest module path the walks build (state_dict names are far shorter).
const MAX_NAME: usize = 4096;

/// Keys under which training checkpoints keep the model's state_dict, most likely first.
const PREFERRED: [&str; 8] =
    ["model_state_dict", "state_dict", "model", "net", "module", "network", "model_state", "weights"];

/// Where the state_dict was found.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Found {
    /// The top-level object is the state_dict.
    StateDict,
    /// The top-level object is a pickled `nn.Module` of this class.
    Module(String),
    /// A state_dict inside a checkpoint dict, under this key path (`a/b` when nested).
    Nested(String),
    /// A pickled `nn.Module` of this class inside a checkpoint dict, under this key path.
    NestedModule(String, String),
}

/// A bounded walk over the graph: every visited node costs a step.
pub(super) struct Walker<'g> {
    arena: &'g Arena,
    steps: u64,
    limit: u64,
}

/// A named tensor found in the graph.
pub(super) type Named<'g> = (String, &'g Value);

impl<'g> Walker<'g> {
    pub(super) fn new(arena: &'g Arena, input_len: usize) -> Self {
        Walker { arena, steps: 0, limit: (input_len as u64).saturating_mul(4).saturating_add(1 << 20) }
    }

    fn step(&mut self, n: usize) -> Result<(), String> {
        self.steps = self.steps.saturating_add(n as u64 + 1);
        if self.steps > self.limit {
            return Err(
                "object graph too large to walk for the size of the file (shared or cyclic references?)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether a value is a tensor (or something PyTorch rebuilds as one that this reader cannot read).
    fn tensor_like(&self, v: &Value) -> bool {
        match self.arena.node(v) {
            Some(Node::Tensor(_)) => true,
            Some(Node::Object { class, .. }) => {
                matches!(self.arena.global_name(class), Some(("torch._utils", n)) if n.starts_with("_rebuild_"))
            }
            _ => false,
        }
    }

    /// A non-empty dict with str keys and tensor values.
    fn is_tensor_dict(&mut self, v: &Value) -> Result<bool, String> {
        let Some(d) = self.arena.dict(v) else { return Ok(false) };
        self.step(d.entries.len())?;
        Ok(!d.entries.is_empty()
            && d.entries.iter().all(|(k, v)| matches!(k, Value::Str(_)) && self.tensor_like(v)))
    }

    /// The `__dict__` of a pickled `nn.Module` (an object whose state has `_modules` or `_parameters`).
    fn module_state(&self, v: &Value) -> Option<&'g super::pickle::Dict> {
        let arena = self.arena;
        match arena.node(v) {
            Some(Node::Object { state: Some(s), .. }) => {
                arena.dict(s).filter(|d| d.get("_modules").is_some() || d.get("_parameters").is_some())
            }
            _ => None,
        }
    }

    fn class_name(&self, v: &Value) -> String {
        match self.arena.node(v) {
            Some(Node::Object { class, .. }) => match self.arena.global_name(class) {
                Some((m, n)) => format!("{m}.{n}"),
                None => "?".into(),
            },
            _ => "?".into(),
        }
    }

    /// The state_dict in a `torch.save`d object: the object itself, a module, or an entry of a dict.
    pub(super) fn find_state_dict(&mut self, root: &'g Value) -> Result<(Vec<Named<'g>>, Found), String> {
        if self.module_state(root).is_some() {
            let mut out = Vec::new();
            self.module_tensors(root, String::new(), 0, &mut out)?;
            return Ok((out, Found::Module(self.class_name(root))));
        }
        if self.is_tensor_dict(root)? {
            return Ok((self.dict_tensors(root), Found::StateDict));
        }
        if self.arena.dict(root).is_some() {
            match self.search(root, 0)? {
                Some((path, v)) => {
                    if self.module_state(v).is_some() {
                        let mut out = Vec::new();
                        self.module_tensors(v, String::new(), 0, &mut out)?;
                        return Ok((out, Found::NestedModule(path, self.class_name(v))));
                    }
                    return Ok((self.dict_tensors(v), Found::Nested(path)));
                }
                None => {
                    let d = self.arena.dict(root).map(|d| d.entries.len()).unwrap_or(0);
                    let what = if d == 0 {
                        "the top-level object is an empty dict".to_string()
                    } else {
                        let keys: Vec<String> = self
                            .arena
                            .dict(root)
                            .map(|d| d.entries.iter().take(8).map(|(k, _)| key_text(k)).collect::<Vec<_>>())
                            .unwrap_or_default();
                        format!(
                            "the top-level dict (keys {}) holds no dict of tensors and no nn.Module",
                            keys.join(", ")
                        )
                    };
                    return Err(format!("no state_dict found ({what})"));
                }
            }
        }
        Err(format!("no state_dict found (top-level object is a {})", self.arena.type_name(root)))
    }

    /// The entry of a checkpoint dict that holds the state_dict (or a module), searching nested dicts
    /// (but not optimizer or scheduler state).
    fn search(&mut self, dict: &'g Value, depth: usize) -> Result<Option<(String, &'g Value)>, String> {
        if depth > 3 {
            return Ok(None);
        }
        let arena = self.arena;
        let Some(d) = arena.dict(dict) else { return Ok(None) };
        self.step(d.entries.len())?;
        let mut candidates: Vec<(&str, &'g Value)> = Vec::new();
        for (k, v) in &d.entries {
            let Value::Str(k) = k else { continue };
            if self.is_tensor_dict(v)? || self.module_state(v).is_some() {
                candidates.push((k, v));
            }
        }
        for p in PREFERRED {
            if let Some(&(k, v)) = candidates.iter().find(|(k, _)| *k == p) {
                return Ok(Some((k.to_string(), v)));
            }
        }
        match candidates.len() {
            1 => return Ok(Some((candidates[0].0.to_string(), candidates[0].1))),
            0 => {}
            _ => {
                let names: Vec<String> = candidates.iter().map(|(k, _)| format!("'{k}'")).collect();
                return Err(format!(
                    "several state_dicts found (under {}); cannot tell which one is the model",
                    names.join(", ")
                ));
            }
        }
        let mut found = Vec::new();
        for (k, v) in &d.entries {
            let Value::Str(k) = k else { continue };
            let lower = k.to_ascii_lowercase();
            if lower.contains("optim") || lower.contains("sched") || arena.dict(v).is_none() {
                continue;
            }
            if let Some((path, v)) = self.search(v, depth + 1)? {
                found.push((format!("{k}/{path}"), v));
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => {
                let names: Vec<String> = found.iter().map(|(k, _)| format!("'{k}'")).collect();
                Err(format!(
                    "several state_dicts found (under {}); cannot tell which one is the model",
                    names.join(", ")
                ))
            }
        }
    }

    fn dict_tensors(&self, v: &'g Value) -> Vec<Named<'g>> {
        let arena = self.arena;
        arena
            .dict(v)
            .map(|d| {
                d.entries
                    .iter()
                    .filter_map(|(k, v)| match k {
                        Value::Str(k) => Some((k.to_string(), v)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `nn.Module.state_dict()` order: own parameters, own persistent buffers, then children.
    fn module_tensors(
        &mut self,
        m: &'g Value,
        prefix: String,
        depth: usize,
        out: &mut Vec<Named<'g>>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("modules nested deeper than {MAX_DEPTH} levels"));
        }
        if prefix.len() > MAX_NAME {
            return Err(format!(
                "module names longer than {MAX_NAME} bytes (a module that contains itself?)"
            ));
        }
        let arena = self.arena;
        let Some(st) = self.module_state(m) else { return Ok(()) };
        self.step(st.entries.len())?;
        let non_persistent = st.get("_non_persistent_buffers_set").and_then(|s| arena.seq(s)).unwrap_or(&[]);
        self.step(non_persistent.len())?;
        let non_persistent: HashSet<&str> = non_persistent
            .iter()
            .filter_map(|v| if let Value::Str(s) = v { Some(&**s) } else { None })
            .collect();
        let no_skip = HashSet::new();
        for (field, skip) in [("_parameters", &no_skip), ("_buffers", &non_persistent)] {
            if let Some(d) = st.get(field).and_then(|v| arena.dict(v)) {
                self.step(d.entries.len())?;
                for (k, v) in &d.entries {
                    let Value::Str(k) = k else { continue };
                    if matches!(v, Value::None) || skip.contains(&**k) {
                        continue;
                    }
                    if !self.tensor_like(v) {
                        return Err(format!(
                            "module attribute {prefix}{k} in {field} is a {}, not a tensor",
                            arena.type_name(v)
                        ));
                    }
                    out.push((format!("{prefix}{k}"), v));
                }
            }
        }
        if let Some(d) = st.get("_modules").and_then(|v| arena.dict(v)) {
            self.step(d.entries.len())?;
            for (k, v) in &d.entries {
                let Value::Str(k) = k else { continue };
                if matches!(v, Value::None) {
                    continue;
                }
                self.module_tensors(v, format!("{prefix}{k}."), depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// Tensors of a TorchScript module by attribute path: own tensor attributes first, then
    /// submodules (objects of `__torch__.*` classes), as `state_dict()` orders them. `|` in names
    /// (tch's `.ot` files) becomes `.`.
    pub(super) fn script_tensors(
        &mut self,
        m: &'g Value,
        prefix: String,
        depth: usize,
        out: &mut Vec<Named<'g>>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("modules nested deeper than {MAX_DEPTH} levels"));
        }
        if prefix.len() > MAX_NAME {
            return Err(format!(
                "module names longer than {MAX_NAME} bytes (a module that contains itself?)"
            ));
        }
        let arena = self.arena;
        let Some(Node::Object { state: Some(st), .. }) = arena.node(m) else { return Ok(()) };
        let Some(st) = arena.dict(st) else { return Ok(()) };
        self.step(st.entries.len())?;
        for (k, v) in &st.entries {
            if let Value::Str(k) = k {
                if self.tensor_like(v) {
                    out.push((format!("{prefix}{}", k.replace('|', ".")), v));
                }
            }
        }
        for (k, v) in &st.entries {
            let Value::Str(k) = k else { continue };
            if let Some(Node::Object { class, state: Some(_), .. }) = arena.node(v) {
                if matches!(arena.global_name(class), Some((module, _)) if module.starts_with("__torch__")) {
                    self.script_tensors(v, format!("{prefix}{}.", k.replace('|', ".")), depth + 1, out)?;
                }
            }
        }
        Ok(())
    }

    /// The tensor behind a value found by the walks.
    pub(super) fn tensor(&self, name: &str, v: &'g Value) -> Result<&'g TensorRef, String> {
        let arena = self.arena;
        match arena.node(v) {
            Some(Node::Tensor(t)) => Ok(t.as_ref()),
            _ => Err(format!("tensor '{name}' is stored as {}, which is not supported", arena.type_name(v))),
        }
    }
}

/// A dict key for messages.
fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => format!("'{}'", s.chars().take(40).collect::<String>()),
        Value::Int(i) => i.to_string(),
        _ => "?".into(),
    }
}

/// Copies a tensor's view out of its storage record as a dense row-major tensor.
///
/// `blob` is the whole record of the storage's key; `budget` is what may still be allocated for
/// tensor data (decremented).
pub(super) fn materialize(
    name: &str,
    t: &TensorRef,
    blob: &[u8],
    little_endian: bool,
    budget: &mut u64,
) -> Result<RawTensor, String> {
    let dtype = match t.elem {
        ElemType::Float(d) => d,
        other => {
            return Err(format!(
                "tensor '{name}' has dtype {}; only float32, float64, float16 and bfloat16 are supported",
                other.name()
            ))
        }
    };
    let st = &t.storage;
    let key = &st.key;
    // the storage: [elem_offset, elem_offset + numel) elements of the storage class's size
    let ssize = st.elem.size() as u64;
    let range = st
        .elem_offset
        .checked_mul(ssize)
        .and_then(|a| Some((a, st.numel.checked_mul(ssize)?)))
        .and_then(|(a, n)| Some((a, a.checked_add(n)?)))
        .filter(|&(_, b)| b <= blob.len() as u64);
    let (s0, s1) = match range {
        Some(r) => r,
        None => {
            return Err(format!(
            "storage '{key}' of tensor '{name}' declares {} elements of {ssize} bytes (from element {}) but \
                 its record holds {} bytes",
            st.numel,
            st.elem_offset,
            blob.len()
        ))
        }
    };
    let storage = &blob[s0 as usize..s1 as usize];
    let esize = dtype.size() as u64;
    let bad_view = || {
        format!(
            "tensor '{name}': view (size {:?}, stride {:?}, offset {}) does not fit in its storage '{key}' of {} \
             bytes",
            t.shape,
            t.stride,
            t.offset,
            storage.len()
        )
    };
    let mut numel: u64 = 1;
    for &d in &t.shape {
        numel = numel.checked_mul(d).ok_or_else(bad_view)?;
    }
    let out_len = numel.checked_mul(esize).ok_or_else(bad_view)?;
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    if numel == 0 {
        return Ok(RawTensor { dtype, shape, data: Vec::new() });
    }
    // last element of the view, in elements
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        last = (d - 1).checked_mul(s).and_then(|x| last.checked_add(x)).ok_or_else(bad_view)?;
    }
    let end = last.checked_add(1).and_then(|x| x.checked_mul(esize)).ok_or_else(bad_view)?;
    if end > storage.len() as u64 {
        return Err(bad_view());
    }
    if out_len > *budget {
        return Err(format!(
            "tensor '{name}' would take {out_len} bytes, more than the file can plausibly hold (a hostile view?)"
        ));
    }
    *budget -= out_len;
    let es = esize as usize;
    let mut data = Vec::with_capacity(out_len as usize);
    // strides of a row-major layout, ignoring dimensions of size 1
    let mut contiguous = true;
    let mut expect: u64 = 1;
    for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
        }
        expect = expect.saturating_mul(d);
    }
    if contiguous {
        let a = (t.offset * esize) as usize;
        data.extend_from_slice(&storage[a..a + out_len as usize]);
    } else {
        // odometer over all but the last dimension; the last dimension is copied as one run when
        // its stride is 1
        let nd = t.shape.len();
        let (inner, inner_stride) = (t.shape[nd - 1], t.stride[nd - 1]);
        let mut idx = vec![0u64; nd - 1];
        let mut base = t.offset;
        'rows: loop {
            if inner_stride == 1 {
                let a = (base * esize) as usize;
                data.extend_from_slice(&storage[a..a + (inner * esize) as usize]);
            } else {
                let mut p = base;
                for _ in 0..inner {
                    let a = (p * esize) as usize;
                    data.extend_from_slice(&storage[a..a + es]);
                    p += inner_stride;
                }
            }
            // the next index of the outer dimensions (all within the checked view)
            let mut k = nd - 1;
            loop {
                if k == 0 {
                    break 'rows;
                }
                k -= 1;
                idx[k] += 1;
                base += t.stride[k];
                if idx[k] < t.shape[k] {
                    break;
                }
                base -= t.stride[k] * t.shape[k];
                idx[k] = 0;
            }
        }
    }
    if !little_endian && es > 1 {
        for chunk in data.chunks_mut(es) {
            chunk.reverse();
        }
    }
    Ok(RawTensor { dtype, shape, data })
}
