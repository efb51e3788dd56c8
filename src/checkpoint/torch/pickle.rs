//! A pickle virtual machine that builds a passive object graph and never imports or runs anything.
//!
//! Every object lives in an [`Arena`]; values refer to containers by index, so shared and cyclic
//! structures cost nothing extra and dropping the graph never recurses. Unknown `GLOBAL`s stay names,
//! `REDUCE`/`NEWOBJ` on them produce opaque [`Node::Object`]s that keep their arguments, and `BUILD`
//! stores its state in the object. Only the callables that PyTorch files use to rebuild tensors and
//! containers get a meaning (see [`Unpickler::call`]).
//!
//! Resources are bounded by the input: each opcode consumes at least one byte and pushes at most one
//! value, the memo is a map (a huge index allocates nothing), copying work (e.g. `OrderedDict(list)`
//! of a memoized list, over and over) has a budget proportional to the input, and the only
//! recursion (nested `_rebuild_from_type_v2`) is depth-limited.
use super::DType;
use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting of rebuild calls (and of graph walks elsewhere in this module).
pub(super) const MAX_DEPTH: usize = 200;
/// Most dimensions a tensor may have.
pub(super) const MAX_DIMS: usize = 64;
/// Most objects and stack entries one unpickling holds (about 130 bytes each, whatever the input's
/// size; a model's file holds some twenty per tensor).
pub(super) const MAX_VALUES: usize = 1 << 19;

/// A pickled value. Containers and objects are [`Value::Ref`]s into the [`Arena`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in 64 bits: little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Ref(usize),
}

/// What a tensor's elements are, as declared by its storage class or `_rebuild_tensor_v3` dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ElemType {
    /// One of the dtypes this module reads.
    Float(DType),
    /// Another dtype: its PyTorch name and element size.
    Other(&'static str, usize),
    /// `torch.storage.UntypedStorage`: bytes; the tensor's dtype comes from elsewhere.
    Untyped,
}

impl ElemType {
    /// Size of one element in bytes.
    pub(super) fn size(self) -> usize {
        match self {
            ElemType::Float(d) => d.size(),
            ElemType::Other(_, s) => s,
            ElemType::Untyped => 1,
        }
    }

    /// The PyTorch name (`float32`, `int64`, ...).
    pub(super) fn name(self) -> &'static str {
        match self {
            ElemType::Float(d) => d.torch_name(),
            ElemType::Other(n, _) => n,
            ElemType::Untyped => "uint8 (untyped storage)",
        }
    }
}

/// `torch.<Name>Storage` classes.
fn storage_class(module: &str, name: &str) -> Option<ElemType> {
    if module == "torch.storage" && name == "UntypedStorage" {
        return Some(ElemType::Untyped);
    }
    if module != "torch" && module != "torch.cuda" {
        return None;
    }
    Some(match name {
        "FloatStorage" => ElemType::Float(DType::F32),
        "DoubleStorage" => ElemType::Float(DType::F64),
        "HalfStorage" => ElemType::Float(DType::F16),
        "BFloat16Storage" => ElemType::Float(DType::BF16),
        "LongStorage" => ElemType::Other("int64", 8),
        "IntStorage" => ElemType::Other("int32", 4),
        "ShortStorage" => ElemType::Other("int16", 2),
        "CharStorage" => ElemType::Other("int8", 1),
        "ByteStorage" => ElemType::Other("uint8", 1),
        "BoolStorage" => ElemType::Other("bool", 1),
        "ComplexFloatStorage" => ElemType::Other("complex64", 8),
        "ComplexDoubleStorage" => ElemType::Other("complex128", 16),
        "QInt8Storage" => ElemType::Other("qint8", 1),
        "QUInt8Storage" => ElemType::Other("quint8", 1),
        "QInt32Storage" => ElemType::Other("qint32", 4),
        _ => return None,
    })
}

/// `torch.float32`-like dtype globals (used by `_rebuild_tensor_v3`).
fn dtype_global(module: &str, name: &str) -> Option<ElemType> {
    if module != "torch" {
        return None;
    }
    Some(match name {
        "float32" | "float" => ElemType::Float(DType::F32),
        "float64" | "double" => ElemType::Float(DType::F64),
        "float16" | "half" => ElemType::Float(DType::F16),
        "bfloat16" => ElemType::Float(DType::BF16),
        "int64" | "long" => ElemType::Other("int64", 8),
        "int32" | "int" => ElemType::Other("int32", 4),
        "int16" | "short" => ElemType::Other("int16", 2),
        "int8" => ElemType::Other("int8", 1),
        "uint8" => ElemType::Other("uint8", 1),
        "bool" => ElemType::Other("bool", 1),
        "uint16" => ElemType::Other("uint16", 2),
        "uint32" => ElemType::Other("uint32", 4),
        "uint64" => ElemType::Other("uint64", 8),
        "complex64" | "cfloat" => ElemType::Other("complex64", 8),
        "complex128" | "cdouble" => ElemType::Other("complex128", 16),
        "float8_e4m3fn" => ElemType::Other("float8_e4m3fn", 1),
        "float8_e5m2" => ElemType::Other("float8_e5m2", 1),
        "float8_e4m3fnuz" => ElemType::Other("float8_e4m3fnuz", 1),
        "float8_e5m2fnuz" => ElemType::Other("float8_e5m2fnuz", 1),
        _ => return None,
    })
}

/// A storage reference from a persistent id.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Storage {
    /// Element type of the storage class.
    pub elem: ElemType,
    /// The record key (`data/<key>` in zip files, the storage table key in legacy files).
    pub key: Rc<str>,
    /// First element of this storage within the record (legacy views of a root storage; else 0).
    pub elem_offset: u64,
    /// Number of elements (bytes for untyped storages).
    pub numel: u64,
}

/// A tensor: a strided view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorRef {
    pub storage: Storage,
    /// Element type of the tensor (the storage's, or `_rebuild_tensor_v3`'s dtype argument).
    pub elem: ElemType,
    /// Offset of the first element, in elements.
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// A dict (or `OrderedDict`) in insertion order.
#[derive(Debug, Default)]
pub(super) struct Dict {
    pub entries: Vec<(Value, Value)>,
    index: HashMap<Key, usize>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum Key {
    Str(Rc<str>),
    Int(i64),
}

impl Dict {
    /// Python's `d[k] = v`: replaces the value of an existing str or int key, else appends.
    fn insert(&mut self, k: Value, v: Value) {
        let key = match &k {
            Value::Str(s) => Some(Key::Str(s.clone())),
            Value::Int(i) => Some(Key::Int(*i)),
            Value::Bool(b) => Some(Key::Int(i64::from(*b))),
            _ => None,
        };
        match key {
            Some(key) => match self.index.get(&key) {
                Some(&i) => self.entries[i].1 = v,
                None => {
                    self.index.insert(key, self.entries.len());
                    self.entries.push((k, v));
                }
            },
            None => self.entries.push((k, v)),
        }
    }

    /// The value of a str key.
    pub(super) fn get(&self, k: &str) -> Option<&Value> {
        self.index.get(&Key::Str(Rc::from(k))).map(|&i| &self.entries[i].1)
    }
}

/// An object of the graph.
#[derive(Debug)]
pub(super) enum Node {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Box<Dict>),
    Set(Vec<Value>),
    /// An unresolved `GLOBAL module name`.
    Global {
        module: Rc<str>,
        name: Rc<str>,
    },
    /// An instance of an unknown class (or the result of an unknown callable): the class or
    /// callable, the arguments it was given (kept, though no walk needs them yet) and its `BUILD`
    /// state.
    Object {
        class: Value,
        #[allow(dead_code)]
        args: Value,
        state: Option<Value>,
    },
    /// A storage, from a persistent id.
    Storage(Storage),
    /// Boxed, like `Dict`, so that the many small nodes stay small.
    Tensor(Box<TensorRef>),
}

/// All objects of one unpickling.
#[derive(Debug, Default)]
pub(super) struct Arena {
    pub nodes: Vec<Node>,
}

impl Arena {
    fn add(&mut self, n: Node) -> Value {
        self.nodes.push(n);
        Value::Ref(self.nodes.len() - 1)
    }

    /// The node a value refers to.
    pub(super) fn node(&self, v: &Value) -> Option<&Node> {
        match v {
            Value::Ref(i) => self.nodes.get(*i),
            _ => None,
        }
    }

    /// The dict a value refers to.
    pub(super) fn dict(&self, v: &Value) -> Option<&Dict> {
        match self.node(v) {
            Some(Node::Dict(d)) => Some(d),
            _ => None,
        }
    }

    /// `module.name` of a global.
    pub(super) fn global_name(&self, v: &Value) -> Option<(&str, &str)> {
        match self.node(v) {
            Some(Node::Global { module, name }) => Some((module, name)),
            _ => None,
        }
    }

    /// A short description of a value's type, for messages.
    pub(super) fn type_name(&self, v: &Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Ref(_) => match self.node(v) {
                Some(Node::Tuple(_)) => "tuple".into(),
                Some(Node::List(_)) => "list".into(),
                Some(Node::Dict(_)) => "dict".into(),
                Some(Node::Set(_)) => "set".into(),
                Some(Node::Global { module, name }) => format!("global {module}.{name}"),
                Some(Node::Object { class, .. }) => match self.global_name(class) {
                    Some((m, n)) => format!("{m}.{n} object"),
                    None => "object".into(),
                },
                Some(Node::Tensor(_)) => "tensor".into(),
                Some(Node::Storage(_)) => "storage".into(),
                None => "invalid reference".into(),
            },
        }
    }

    /// Items of a tuple or list.
    pub(super) fn seq(&self, v: &Value) -> Option<&[Value]> {
        match self.node(v) {
            Some(Node::Tuple(t)) | Some(Node::List(t)) | Some(Node::Set(t)) => Some(t),
            _ => None,
        }
    }
}

/// The result of one pickle: its graph, its root value, where it ended, and the storages it named.
#[derive(Debug)]
pub(super) struct Unpickled {
    pub arena: Arena,
    pub root: Value,
    /// Offset just past the `STOP` opcode.
    pub end: usize,
    /// Root storages by key, in order of first appearance: element type and element count.
    pub storages: Vec<(Rc<str>, ElemType, u64)>,
}

/// Runs the pickle that starts at `start` in `bytes` up to its `STOP`.
pub(super) fn unpickle(bytes: &[u8], start: usize) -> Result<Unpickled, String> {
    let mut u = Unpickler {
        data: bytes,
        pos: start,
        arena: Arena::default(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        work: 0,
        work_limit: (bytes.len() as u64).saturating_mul(16).saturating_add(1 << 20),
        storages: Vec::new(),
        storage_index: HashMap::new(),
        globals: HashMap::new(),
    };
    let root = u.run()?;
    Ok(Unpickled { arena: u.arena, root, end: u.pos, storages: u.storages })
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    arena: Arena,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    work: u64,
    work_limit: u64,
    storages: Vec<(Rc<str>, ElemType, u64)>,
    storage_index: HashMap<Rc<str>, usize>,
    globals: HashMap<String, Value>,
}

fn opname(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'P' => "PERSID",
        b'i' => "INST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'g' => "GET",
        b'l' => "LIST",
        b'd' => "DICT",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

impl<'a> Unpickler<'a> {
    fn err<T>(&self, at: usize, msg: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("pickle error at offset {at}: {msg}"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = match self.pos.checked_add(n) {
            Some(e) if e <= self.data.len() => e,
            _ => return Err(format!("truncated pickle (needs {n} more bytes at offset {})", self.pos)),
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len_u64(&mut self, v: u64) -> Result<usize, String> {
        usize::try_from(v).map_err(|_| format!("length {v} at offset {} is too large", self.pos))
    }

    /// A text line (without its `\n`), as used by GLOBAL.
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = match rest.iter().position(|&b| b == b'\n') {
            Some(n) => n,
            None => return Err(format!("truncated pickle (unterminated line at offset {})", self.pos)),
        };
        let at = self.pos;
        let s = self.take(n + 1)?;
        std::str::from_utf8(&s[..n]).map_err(|_| format!("pickle error at offset {at}: line is not UTF-8"))
    }

    fn pop(&mut self, at: usize) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err(at, "stack underflow");
        }
        Ok(self.stack.pop().unwrap_or(Value::None))
    }

    fn top(&self, at: usize) -> Result<&Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err(at, "stack underflow");
        }
        self.stack.last().ok_or_else(|| format!("pickle error at offset {at}: stack underflow"))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<Value>, String> {
        match self.marks.pop() {
            Some(m) => Ok(self.stack.split_off(m.min(self.stack.len()))),
            None => self.err(at, "no MARK on the stack"),
        }
    }

    fn charge(&mut self, n: usize, at: usize) -> Result<(), String> {
        self.work = self.work.saturating_add(n as u64);
        if self.work > self.work_limit {
            return self.err(at, "too much copying for the size of the input (a malicious pickle?)");
        }
        Ok(())
    }

    fn str_value(&self, b: &[u8], at: usize) -> Result<Value, String> {
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => self.err(at, "string is not valid UTF-8"),
        }
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            if self.arena.nodes.len() + self.stack.len() > MAX_VALUES {
                return self.err(at, format!("more than {MAX_VALUES} objects (not a model's checkpoint)"));
            }
            let op = match self.data.get(self.pos) {
                Some(&b) => b,
                None => return Err(format!("truncated pickle (no STOP opcode before offset {at})")),
            };
            self.pos += 1;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return self.err(at, format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: the frame length is only a hint
                }
                b'.' => {
                    let v = self.pop(at)?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop(at)?;
                    }
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let v = self.top(at)?.clone();
                    self.push(v);
                }
                // memo
                b'q' => {
                    let i = u32::from(self.u8()?);
                    let v = self.top(at)?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top(at)?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large".to_string())?;
                    let v = self.top(at)?.clone();
                    self.memo.insert(i, v);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { u32::from(self.u8()?) } else { self.u32()? };
                    match self.memo.get(&i) {
                        Some(v) => {
                            let v = v.clone();
                            self.push(v);
                        }
                        None => return self.err(at, format!("memo index {i} was never stored")),
                    }
                }
                // constants and numbers
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(i64::from(v)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        usize::from(self.u8()?)
                    } else {
                        let n = self.u32()? as i32;
                        if n < 0 {
                            return self.err(at, "LONG4 with a negative length");
                        }
                        n as usize
                    };
                    let b = self.take(n)?;
                    self.push(long_value(b));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)));
                }
                // strings and bytes
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    let v = self.str_value(b, at)?;
                    self.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?;
                    let v = self.str_value(b, at)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len_u64(n)?;
                    let b = self.take(n)?;
                    let v = self.str_value(b, at)?;
                    self.push(v);
                }
                b'U' | b'T' => {
                    // Python 2 str: torch.load decodes them as UTF-8; keep bytes when that fails.
                    let n = if op == b'U' {
                        usize::from(self.u8()?)
                    } else {
                        let n = self.u32()? as i32;
                        if n < 0 {
                            return self.err(at, "BINSTRING with a negative length");
                        }
                        n as usize
                    };
                    let b = self.take(n)?;
                    let v = match std::str::from_utf8(b) {
                        Ok(s) => Value::Str(Rc::from(s)),
                        Err(_) => Value::Bytes(Rc::from(b)),
                    };
                    self.push(v);
                }
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => usize::from(self.u8()?),
                        b'B' => self.u32()? as usize,
                        _ => {
                            let n = self.u64()?;
                            self.len_u64(n)?
                        }
                    };
                    let b = self.take(n)?;
                    self.push(Value::Bytes(Rc::from(b)));
                }
                // containers
                b')' => {
                    let v = self.arena.add(Node::Tuple(Vec::new()));
                    self.push(v);
                }
                b't' => {
                    let items = self.pop_mark(at)?;
                    let v = self.arena.add(Node::Tuple(items));
                    self.push(v);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    let v = self.arena.add(Node::Tuple(items));
                    self.push(v);
                }
                b']' => {
                    let v = self.arena.add(Node::List(Vec::new()));
                    self.push(v);
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    let v = self.arena.add(Node::List(items));
                    self.push(v);
                }
                b'}' => {
                    let v = self.arena.add(Node::Dict(Box::default()));
                    self.push(v);
                }
                b'd' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return self.err(at, "DICT with an odd number of items");
                    }
                    let mut d = Dict::default();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.insert(k, v);
                    }
                    let v = self.arena.add(Node::Dict(Box::new(d)));
                    self.push(v);
                }
                0x8f => {
                    let v = self.arena.add(Node::Set(Vec::new()));
                    self.push(v);
                }
                0x91 => {
                    let items = self.pop_mark(at)?;
                    let v = self.arena.add(Node::Set(items));
                    self.push(v);
                }
                b'a' => {
                    let item = self.pop(at)?;
                    let target = self.top(at)?.clone();
                    self.extend(&target, vec![item], at)?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark(at)?;
                    let target = self.top(at)?.clone();
                    self.extend(&target, items, at)?;
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let target = self.top(at)?.clone();
                    self.set_items(&target, vec![k, v], at)?;
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return self.err(at, "SETITEMS with an odd number of items");
                    }
                    let target = self.top(at)?.clone();
                    self.set_items(&target, items, at)?;
                }
                // objects
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.global(module, name);
                    self.push(v);
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let v = self.global(&m, &n);
                            self.push(v);
                        }
                        _ => return self.err(at, "STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let v = self.call(&func, &args, at, 0)?;
                    self.push(v);
                }
                0x81 => {
                    let args = self.pop(at)?;
                    let class = self.pop(at)?;
                    let v = self.call(&class, &args, at, 0)?;
                    self.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop(at)?;
                    let args = self.pop(at)?;
                    let class = self.pop(at)?;
                    let v = self.call(&class, &args, at, 0)?;
                    self.push(v);
                }
                b'b' => {
                    let state = self.pop(at)?;
                    let target = self.top(at)?.clone();
                    self.build(&target, state, at)?;
                }
                b'Q' => {
                    let pid = self.pop(at)?;
                    let v = self.persistent_load(&pid, at)?;
                    self.push(v);
                }
                _ => {
                    return self.err(at, format!("unsupported pickle opcode 0x{op:02x} ({})", opname(op)));
                }
            }
        }
    }

    /// The object a `GLOBAL` names: one node per distinct name, however often it appears.
    fn global(&mut self, module: &str, name: &str) -> Value {
        let key = format!("{module}\n{name}");
        if let Some(v) = self.globals.get(&key) {
            return v.clone();
        }
        let v = self.arena.add(Node::Global { module: Rc::from(module), name: Rc::from(name) });
        self.globals.insert(key, v.clone());
        v
    }

    fn extend(&mut self, target: &Value, items: Vec<Value>, at: usize) -> Result<(), String> {
        let tname = self.arena.type_name(target);
        match target {
            Value::Ref(i) => match self.arena.nodes.get_mut(*i) {
                Some(Node::List(l)) | Some(Node::Set(l)) => {
                    l.extend(items);
                    Ok(())
                }
                // e.g. a list subclass: Python would call its append(); the items do not matter here
                Some(Node::Object { .. }) => Ok(()),
                _ => self.err(at, format!("APPEND(S) on a {tname}")),
            },
            _ => self.err(at, format!("APPEND(S) on a {tname}")),
        }
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>, at: usize) -> Result<(), String> {
        let tname = self.arena.type_name(target);
        match target {
            Value::Ref(i) => match self.arena.nodes.get_mut(*i) {
                Some(Node::Dict(d)) => {
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.insert(k, v);
                    }
                    Ok(())
                }
                // e.g. a dict subclass: Python would call its __setitem__; ignored here
                Some(Node::Object { .. }) => Ok(()),
                _ => self.err(at, format!("SETITEM(S) on a {tname}")),
            },
            _ => self.err(at, format!("SETITEM(S) on a {tname}")),
        }
    }

    fn build(&mut self, target: &Value, state: Value, at: usize) -> Result<(), String> {
        let Value::Ref(i) = target else {
            return self.err(at, format!("BUILD on a {}", self.arena.type_name(target)));
        };
        // `(dict_state, slot_state)` pairs: keep the dict part.
        let state = match self.arena.node(&state) {
            Some(Node::Tuple(t)) if t.len() == 2 && self.arena.dict(&t[0]).is_some() => t[0].clone(),
            _ => state,
        };
        let old = match self.arena.nodes.get(*i) {
            Some(Node::Object { state: s, .. }) => s.clone(),
            // BUILD on a dict (OrderedDict's `_metadata`), a tensor, ...: nothing a reader needs
            _ => return Ok(()),
        };
        match old {
            Some(old)
                if old != state && self.arena.dict(&old).is_some() && self.arena.dict(&state).is_some() =>
            {
                // a second BUILD on the same object: update its __dict__
                let new_entries: Vec<(Value, Value)> =
                    self.arena.dict(&state).map(|d| d.entries.clone()).unwrap_or_default();
                self.charge(new_entries.len(), at)?;
                if let Value::Ref(o) = old {
                    if let Some(Node::Dict(d)) = self.arena.nodes.get_mut(o) {
                        for (k, v) in new_entries {
                            d.insert(k, v);
                        }
                    }
                }
            }
            _ => {
                if let Some(Node::Object { state: s, .. }) = self.arena.nodes.get_mut(*i) {
                    *s = Some(state);
                }
            }
        }
        Ok(())
    }

    fn persistent_load(&mut self, pid: &Value, at: usize) -> Result<Value, String> {
        // (only the fields that mean something are copied: a hostile pid may be huge and reused)
        let items: Vec<Value> = match self.arena.node(pid) {
            Some(Node::Tuple(t)) => t.iter().take(6).cloned().collect(),
            _ => {
                return self.err(at, format!("persistent id is a {}, not a tuple", self.arena.type_name(pid)))
            }
        };
        match items.first() {
            Some(Value::Str(s)) if &**s == "module" && items.len() >= 2 => Ok(items[1].clone()),
            Some(Value::Str(s)) if &**s == "storage" && items.len() >= 5 => {
                let elem = match self.arena.global_name(&items[1]) {
                    Some((m, n)) => match storage_class(m, n) {
                        Some(e) => e,
                        None => return self.err(at, format!("unknown storage class {m}.{n}")),
                    },
                    None => {
                        return self.err(at, format!("storage type is a {}", self.arena.type_name(&items[1])))
                    }
                };
                let key: Rc<str> = match &items[2] {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => Rc::from(i.to_string()),
                    other => {
                        return self.err(at, format!("storage key is a {}", self.arena.type_name(other)))
                    }
                };
                let numel = match items[4] {
                    Value::Int(n) if n >= 0 => n as u64,
                    ref other => {
                        return self.err(
                            at,
                            format!("storage '{key}' has an invalid size ({})", self.arena.type_name(other)),
                        )
                    }
                };
                match self.storage_index.get(&key) {
                    Some(&i) if self.storages[i].1 != elem => {
                        return self.err(at, format!("storage '{key}' is used with two different types"));
                    }
                    Some(_) => {}
                    None => {
                        self.storage_index.insert(key.clone(), self.storages.len());
                        self.storages.push((key.clone(), elem, numel));
                    }
                }
                let mut storage = Storage { elem, key, elem_offset: 0, numel };
                // legacy files: (view_key, offset, view_size) selects part of the root storage
                if let Some(view) = items.get(5) {
                    if let Some(v) = self.arena.seq(view) {
                        match (v.first(), v.get(1), v.get(2)) {
                            (Some(_), Some(Value::Int(off)), Some(Value::Int(n))) if *off >= 0 && *n >= 0 => {
                                storage.elem_offset = *off as u64;
                                storage.numel = *n as u64;
                            }
                            _ => {
                                return self
                                    .err(at, format!("storage '{}': invalid view metadata", storage.key))
                            }
                        }
                    }
                }
                Ok(self.arena.add(Node::Storage(storage)))
            }
            _ => self.err(at, "unsupported persistent id (expected ('storage', ...) or ('module', ...))"),
        }
    }

    /// `func(*args)` for REDUCE / NEWOBJ.
    fn call(&mut self, func: &Value, args: &Value, at: usize, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return self.err(at, "rebuild calls nested too deeply");
        }
        let (module, name) = match self.arena.global_name(func) {
            Some((m, n)) => (m.to_string(), n.to_string()),
            None => return Ok(self.opaque(func, args)),
        };
        let argv: Vec<Value> = match self.arena.node(args) {
            Some(Node::Tuple(t)) => t.clone(),
            Some(Node::List(t)) => t.clone(),
            _ => Vec::new(),
        };
        self.charge(argv.len(), at)?;
        let module = module.as_str();
        let name = name.as_str();
        match (module, name) {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
                self.rebuild_tensor(name, &argv, at)
            }
            ("torch._tensor", "_rebuild_from_type_v2") | ("torch._utils", "_rebuild_from_type_v2") => {
                match (argv.first(), argv.get(2)) {
                    (Some(f), Some(a)) => {
                        let (f, a) = (f.clone(), a.clone());
                        self.call(&f, &a, at, depth + 1)
                    }
                    _ => self.err(at, "_rebuild_from_type_v2 needs (func, type, args, state)"),
                }
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter" | "Buffer") => match argv.first() {
                Some(t) => Ok(t.clone()),
                None => self.err(at, format!("{name} without arguments")),
            },
            ("collections", "OrderedDict" | "defaultdict" | "Counter")
            | ("builtins" | "__builtin__", "dict") => {
                let mut d = Dict::default();
                // OrderedDict(iterable_of_pairs); defaultdict(factory) has no pairs
                if module == "collections" && name == "defaultdict" {
                    return Ok(self.arena.add(Node::Dict(Box::new(d))));
                }
                if let Some(items) = argv.first().and_then(|a| self.arena.seq(a)) {
                    let items = items.to_vec();
                    self.charge(items.len(), at)?;
                    for it in items {
                        if let Some([k, v]) = self.arena.seq(&it) {
                            d.insert(k.clone(), v.clone());
                        }
                    }
                } else if let Some(src) = argv.first().and_then(|a| self.arena.dict(a)) {
                    let entries = src.entries.clone();
                    self.charge(entries.len(), at)?;
                    for (k, v) in entries {
                        d.insert(k, v);
                    }
                }
                Ok(self.arena.add(Node::Dict(Box::new(d))))
            }
            ("builtins" | "__builtin__", "set" | "frozenset") => {
                let items =
                    argv.first().and_then(|a| self.arena.seq(a)).map(|s| s.to_vec()).unwrap_or_default();
                self.charge(items.len(), at)?;
                Ok(self.arena.add(Node::Set(items)))
            }
            ("torch", "Size") | ("builtins" | "__builtin__", "tuple") => {
                let items =
                    argv.first().and_then(|a| self.arena.seq(a)).map(|s| s.to_vec()).unwrap_or_default();
                self.charge(items.len(), at)?;
                Ok(self.arena.add(Node::Tuple(items)))
            }
            ("builtins" | "__builtin__", "list") => {
                let items =
                    argv.first().and_then(|a| self.arena.seq(a)).map(|s| s.to_vec()).unwrap_or_default();
                self.charge(items.len(), at)?;
                Ok(self.arena.add(Node::List(items)))
            }
            ("copyreg" | "copy_reg", "_reconstructor") => {
                // copyreg._reconstructor(cls, base, state): an instance of cls, filled by BUILD
                let class = argv.first().cloned().unwrap_or(Value::None);
                let empty = self.arena.add(Node::Tuple(Vec::new()));
                Ok(self.arena.add(Node::Object { class, args: empty, state: None }))
            }
            _ => Ok(self.opaque(func, args)),
        }
    }

    fn opaque(&mut self, class: &Value, args: &Value) -> Value {
        self.arena.add(Node::Object { class: class.clone(), args: args.clone(), state: None })
    }

    fn rebuild_tensor(&mut self, name: &str, argv: &[Value], at: usize) -> Result<Value, String> {
        let need = if name == "_rebuild_tensor_v3" { 7 } else { 4 };
        if argv.len() < need {
            return self.err(at, format!("{name} needs at least {need} arguments, got {}", argv.len()));
        }
        let storage = match self.arena.node(&argv[0]) {
            Some(Node::Storage(s)) => s.clone(),
            _ => {
                return self.err(
                    at,
                    format!("{name}: first argument is a {}, not a storage", self.arena.type_name(&argv[0])),
                )
            }
        };
        let offset = match argv[1] {
            Value::Int(o) if o >= 0 => o as u64,
            _ => return self.err(at, format!("{name}: invalid storage offset")),
        };
        let shape = self.dims(&argv[2], name, "size", at)?;
        let stride = self.dims(&argv[3], name, "stride", at)?;
        if shape.len() != stride.len() {
            return self.err(
                at,
                format!("{name}: size has {} dimensions but stride has {}", shape.len(), stride.len()),
            );
        }
        let elem = if name == "_rebuild_tensor_v3" {
            match self.arena.global_name(&argv[6]).and_then(|(m, n)| dtype_global(m, n)) {
                Some(e) => e,
                None => {
                    return self
                        .err(at, format!("{name}: unknown dtype ({})", self.arena.type_name(&argv[6])))
                }
            }
        } else {
            storage.elem
        };
        Ok(self.arena.add(Node::Tensor(Box::new(TensorRef { storage, elem, offset, shape, stride }))))
    }

    fn dims(&self, v: &Value, fname: &str, what: &str, at: usize) -> Result<Vec<u64>, String> {
        let items = match self.arena.seq(v) {
            Some(s) => s,
            None => {
                return self.err(at, format!("{fname}: {what} is a {}, not a tuple", self.arena.type_name(v)))
            }
        };
        if items.len() > MAX_DIMS {
            return self
                .err(at, format!("{fname}: {} dimensions (at most {MAX_DIMS} supported)", items.len()));
        }
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as u64),
                _ => self.err(at, format!("{fname}: invalid {what} entry ({})", self.arena.type_name(x))),
            })
            .collect()
    }
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn long_value(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        return Value::Int(i64::from_le_bytes(a));
    }
    Value::BigInt(Rc::from(b))
}
