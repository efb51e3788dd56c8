//! Reading and writing data matrices as CSV or `.npy` files.
//!
//! Readers never trust sizes from a file: every error names the file and the problem, and nothing
//! is allocated before the declared size has been checked against the bytes present.
use super::Matrix;
use crate::error::{io_err, Error, Result};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The supported file formats.
enum Format {
    Csv,
    Npy,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("npy") => Ok(Format::Npy),
        Some(e) => {
            Err(Error::Data(format!("{}: unknown extension '.{e}' (expected .csv or .npy)", path.display())))
        }
        None => Err(Error::Data(format!("{}: no file extension (expected .csv or .npy)", path.display()))),
    }
}

/// What a file is read for, which bounds what its contents take in memory: parsed data (a CSV row
/// of short numbers becomes several times its size as float64 values, copied a few times by a
/// command) or a checkpoint (its tensors once or twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contents {
    /// A CSV or `.npy` data file: at most 1/16 of the available memory.
    Data,
    /// A checkpoint: at most 1/8 of the available memory.
    Checkpoint,
}

/// The most bytes rnvp reads from one file: `RNVP_MAX_FILE_BYTES` if set, otherwise a share of the
/// memory available now (see [`Contents`]), at most 64 GiB, or 1 GiB where the available memory is
/// unknown.
pub fn read_limit(contents: Contents) -> u64 {
    limit_and_reason(contents).0
}

/// [`read_limit`] and what set it, for messages.
pub fn limit_and_reason(contents: Contents) -> (u64, String) {
    if let Some(v) = std::env::var("RNVP_MAX_FILE_BYTES").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        return (v, "RNVP_MAX_FILE_BYTES".into());
    }
    let available = fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb.saturating_mul(1024))
    });
    let share = match contents {
        Contents::Data => 16,
        Contents::Checkpoint => 8,
    };
    match available {
        Some(bytes) => (
            (bytes / share).min(64 << 30),
            format!("1/{share} of the available memory; RNVP_MAX_FILE_BYTES changes it"),
        ),
        None => (1 << 30, "RNVP_MAX_FILE_BYTES changes it".into()),
    }
}

/// A byte count for messages: `123 bytes`, `1.5 GiB`.
pub fn size_text(bytes: impl Into<u128>) -> String {
    match bytes.into() {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{b} bytes"),
    }
}

/// Reads a whole file that rnvp parses in memory (a data file or a checkpoint). Only regular files
/// are read (a FIFO, a device such as `/dev/zero` or a directory is an error before anything is
/// read), and only up to [`read_limit`] bytes: the size is checked before reading, and a buffer that
/// cannot be allocated is an error, not an abort.
pub fn read_file(path: &Path, contents: Contents) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK); // opening a FIFO must not wait for a writer
    }
    let file = options.open(path).map_err(|e| io_err(path, e))?;
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file" };
        let kind = {
            #[cfg(unix)]
            {
                use std::os::unix::fs::FileTypeExt;
                let t = meta.file_type();
                if t.is_fifo() {
                    " (a FIFO)"
                } else if t.is_char_device() {
                    " (a character device)"
                } else if t.is_block_device() {
                    " (a block device)"
                } else if t.is_socket() {
                    " (a socket)"
                } else {
                    ""
                }
            }
            #[cfg(not(unix))]
            ""
        };
        return Err(Error::Data(format!("{}: {what}{kind}; rnvp reads regular files", path.display())));
    }
    let (limit, reason) = limit_and_reason(contents);
    if meta.len() > limit {
        return Err(Error::Data(format!(
            "{}: {} is more than rnvp reads into memory here ({}: {reason})",
            path.display(),
            size_text(meta.len()),
            size_text(limit)
        )));
    }
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(meta.len() as usize).map_err(|_| {
        Error::Data(format!("{}: not enough memory to read its {}", path.display(), size_text(meta.len())))
    })?;
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::Data(format!(
            "{}: the file grew past {} while being read",
            path.display(),
            size_text(limit)
        )));
    }
    Ok(bytes)
}

/// Reads a `.csv` or `.npy` file (chosen by extension) as a matrix.
pub fn read_matrix(path: &Path) -> Result<Matrix> {
    let format = format_of(path)?;
    let bytes = read_file(path, Contents::Data)?;
    let name = path.display().to_string();
    match format {
        Format::Csv => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| Error::Data(format!("{name}: not valid UTF-8 text")))?;
            parse_csv(text, &name)
        }
        Format::Npy => parse_npy(&bytes, &name),
    }
}

/// Writes `m` as `.csv` (with `header`, if not empty) or as float64 `.npy`, chosen by the
/// extension of `path`, atomically (see [`write_atomic`]).
pub fn write_matrix(path: &Path, m: &Matrix, header: &[String]) -> Result<()> {
    let bytes = match format_of(path)? {
        Format::Csv => csv_string(m, header).into_bytes(),
        Format::Npy => npy_bytes(m, false),
    };
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it over `path`, so
/// that `path` holds either its old content or all of `bytes`. On failure the temporary file is
/// removed and the error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let not_a_file = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name");
    let file_name = path.file_name().ok_or_else(|| io_err(path, not_a_file()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::options().write(true).create_new(true).open(&tmp).map_err(|e| io_err(path, e))?;
    let written = file.write_all(bytes).and_then(|_| file.sync_all());
    drop(file);
    match written.and_then(|_| fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(io_err(path, e))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CSV

/// Parses comma-separated numbers. The first non-blank line is a header (and skipped) when one
/// of its fields is neither empty nor a number. Fields are trimmed, blank lines skipped, `\r\n`
/// line ends accepted. Errors give `name`, the 1-based line and column, and the problem.
pub fn parse_csv(text: &str, name: &str) -> Result<Matrix> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cols = None;
    let mut rows = 0;
    // one allocation of the most numbers the text can hold (one per comma or line): no doubling
    let most = text.bytes().filter(|&b| b == b',' || b == b'\n').count() + 1;
    let mut data = Vec::new();
    data.try_reserve_exact(most)
        .map_err(|_| Error::Data(format!("{name}: not enough memory for {most} numbers")))?;
    for (k, line) in text.split('\n').enumerate() {
        let line_no = k + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        match cols {
            None => {
                cols = Some(fields.len());
                if fields.iter().any(|f| !f.is_empty() && f.parse::<f64>().is_err()) {
                    continue; // a header
                }
            }
            Some(expected) if fields.len() != expected => {
                return Err(Error::Data(format!(
                    "{name}:{line_no}: expected {expected} columns, found {}",
                    fields.len()
                )));
            }
            Some(_) => {}
        }
        push_row(&mut data, &fields, name, line_no)?;
        rows += 1;
    }
    match cols {
        Some(cols) if rows > 0 => Ok(Matrix { rows, cols, data }),
        _ => Err(Error::Data(format!("{name}: no data rows"))),
    }
}

fn push_row(data: &mut Vec<f64>, fields: &[&str], name: &str, line: usize) -> Result<()> {
    for (j, field) in fields.iter().enumerate() {
        let col = j + 1;
        if field.is_empty() {
            return Err(Error::Data(format!("{name}:{line}:{col}: empty field")));
        }
        let v: f64 = field.parse().map_err(|_| {
            Error::Data(format!("{name}:{line}:{col}: cannot parse '{field:.60}' as a number"))
        })?;
        if !v.is_finite() {
            return Err(Error::Data(format!("{name}:{line}:{col}: non-finite value '{field}'")));
        }
        data.push(v);
    }
    Ok(())
}

/// `m` as CSV text: the header line (if `header` is not empty), then one line per row, values
/// written so that they parse back to the same `f64`.
pub fn csv_string(m: &Matrix, header: &[String]) -> String {
    let mut out = String::new();
    push_header(&mut out, header);
    for i in 0..m.rows {
        push_csv_row(&mut out, m.row(i));
    }
    out
}

/// Writes `m` as CSV (see [`csv_string`]) to `w`, row by row.
pub fn write_csv<W: Write>(w: W, m: &Matrix, header: &[String]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(w);
    let mut line = String::new();
    push_header(&mut line, header);
    w.write_all(line.as_bytes())?;
    for i in 0..m.rows {
        line.clear();
        push_csv_row(&mut line, m.row(i));
        w.write_all(line.as_bytes())?;
    }
    w.flush()
}

fn push_header(out: &mut String, header: &[String]) {
    if !header.is_empty() {
        out.push_str(&header.join(","));
        out.push('\n');
    }
}

fn push_csv_row(out: &mut String, row: &[f64]) {
    for (j, &v) in row.iter().enumerate() {
        if j > 0 {
            out.push(',');
        }
        // Both forms print the shortest digits that round-trip; `{:e}` keeps extremes short.
        let _ = if v == 0.0 || (1e-5..1e16).contains(&v.abs()) {
            write!(out, "{v}")
        } else {
            write!(out, "{v:e}")
        };
    }
    out.push('\n');
}

// ---------------------------------------------------------------------------------------------
// NPY

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Parses a `.npy` file (format 1.0, 2.0 or 3.0) holding a 2-D float32 or float64 array, little-
/// or big-endian, C or Fortran order. Values must be finite.
pub fn parse_npy(bytes: &[u8], name: &str) -> Result<Matrix> {
    let err = |msg: String| Error::Data(format!("{name}: {msg}"));
    let header = npy_header(bytes, name, true)?;
    let &[rows, cols] = header.dims.as_slice() else {
        return Err(err(format!("shape {} is not 2-D [n, d]", header.shape_text)));
    };
    let values = npy_values(&header, name, npy_count(&header, name)?)?;
    if rows == 0 {
        return Err(err("no data rows".into()));
    }
    if cols == 0 {
        return Err(err(format!("shape {} has no columns", header.shape_text)));
    }
    Ok(Matrix { rows, cols, data: values })
}

/// An array of any shape read from a `.npy` file by [`parse_npy_array`].
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The shape, outermost dimension first (numpy's `shape`); at least one dimension.
    pub dims: Vec<usize>,
    /// The product of `dims` values in C order (last index fastest), whatever the file's order.
    pub values: Vec<f64>,
    /// Whether the file holds integers (then every value is an integer of at most 2⁵³ in
    /// magnitude, held exactly).
    pub integer: bool,
    /// numpy's name of the file's element type: `float32`, `float64`, `uint8`, `int8`, `uint16`,
    /// `int16`, `uint32`, `int32`, `uint64` or `int64`.
    pub dtype: String,
}

/// Parses a `.npy` file (format 1.0, 2.0 or 3.0) holding an array of one or more dimensions (any
/// of them may be 0) of float32, float64 or integers of 1, 2, 4 or 8 bytes, signed or not
/// (`'|u1'`, `'|i1'`, `'<u2'` … `'<i8'`), little- or big-endian, C or Fortran order. Floats must be
/// finite; integers beyond 2⁵³ in magnitude (not exact as `f64`) are an error.
pub fn parse_npy_array(bytes: &[u8], name: &str) -> Result<NpyArray> {
    let view = NpyView::new(bytes, name)?;
    let values = npy_values(&view.header, name, view.count)?;
    Ok(NpyArray {
        dims: view.dims().to_vec(),
        values,
        integer: view.integer(),
        dtype: view.dtype().to_string(),
    })
}

/// The `count` values of `h` (see [`npy_count`]) in C order, as `f64`.
fn npy_values(h: &NpyHeader, name: &str, count: usize) -> Result<Vec<f64>> {
    let mut values = Vec::new();
    values
        .try_reserve_exact(count)
        .map_err(|_| Error::Data(format!("{name}: not enough memory for {count} values")))?;
    npy_for_each(h, name, count, |_, v| {
        values.push(v);
        Ok(())
    })?;
    Ok(values)
}

/// A `.npy` array whose header has been read and whose size has been checked against the bytes
/// present, but whose values have not been decoded: [`NpyView::for_each`] visits them one at a
/// time (for a caller that keeps them in a smaller type than [`NpyArray`]'s `f64`).
pub struct NpyView<'a> {
    header: NpyHeader<'a>,
    name: String,
    count: usize,
}

impl<'a> NpyView<'a> {
    /// Reads the header of the `.npy` file `bytes` named `name` (see [`parse_npy_array`]) and
    /// checks that the data holds exactly the values it declares.
    pub fn new(bytes: &'a [u8], name: &str) -> Result<Self> {
        let header = npy_header(bytes, name, false)?;
        if header.dims.is_empty() {
            return Err(Error::Data(format!("{name}: shape () is a scalar, not an array")));
        }
        let count = npy_count(&header, name)?;
        Ok(NpyView { header, name: name.to_string(), count })
    }

    /// The shape, outermost dimension first.
    pub fn dims(&self) -> &[usize] {
        &self.header.dims
    }

    /// Whether the file holds integers.
    pub fn integer(&self) -> bool {
        !self.header.elem.is_float()
    }

    /// numpy's name of the element type (see [`NpyArray::dtype`]).
    pub fn dtype(&self) -> &'static str {
        self.header.elem.name()
    }

    /// Calls `f(k, value)` for every value in C order (`k` = 0, 1, …, whatever the file's order),
    /// as [`NpyArray::values`] would hold it; stops at the first error, `f`'s or a value's.
    pub fn for_each(&self, f: impl FnMut(usize, f64) -> Result<()>) -> Result<()> {
        npy_for_each(&self.header, &self.name, self.count, f)
    }
}

/// The element types [`parse_npy_array`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    F32,
    F64,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
}

impl Elem {
    /// The element type of a numpy `descr` such as `'<f8'` or `'|u1'`, and whether it is
    /// big-endian; `None` for anything else (a one-byte type may carry any byte-order mark).
    fn parse(descr: &str) -> Option<(Elem, bool)> {
        let (order, code) = descr.split_at_checked(1)?;
        let elem = match code {
            "f4" => Elem::F32,
            "f8" => Elem::F64,
            "u1" => Elem::U8,
            "i1" => Elem::I8,
            "u2" => Elem::U16,
            "i2" => Elem::I16,
            "u4" => Elem::U32,
            "i4" => Elem::I32,
            "u8" => Elem::U64,
            "i8" => Elem::I64,
            _ => return None,
        };
        match (order, elem.size()) {
            ("<", _) | ("|", 1) => Some((elem, false)),
            (">", _) => Some((elem, true)),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Elem::U8 | Elem::I8 => 1,
            Elem::U16 | Elem::I16 => 2,
            Elem::F32 | Elem::U32 | Elem::I32 => 4,
            Elem::F64 | Elem::U64 | Elem::I64 => 8,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F64)
    }

    /// numpy's name of the type.
    fn name(self) -> &'static str {
        match self {
            Elem::F32 => "float32",
            Elem::F64 => "float64",
            Elem::U8 => "uint8",
            Elem::I8 => "int8",
            Elem::U16 => "uint16",
            Elem::I16 => "int16",
            Elem::U32 => "uint32",
            Elem::I32 => "int32",
            Elem::U64 => "uint64",
            Elem::I64 => "int64",
        }
    }
}

/// A number as stored: floats as `f64`, integers exactly.
enum Element {
    Float(f64),
    Int(i128),
}

/// Decodes one element from its `size()` bytes.
fn element(c: &[u8], elem: Elem, big_endian: bool) -> Element {
    macro_rules! num {
        ($t:ty, $n:literal) => {{
            let mut b = [0u8; $n];
            b.copy_from_slice(&c[..$n]);
            if big_endian {
                <$t>::from_be_bytes(b)
            } else {
                <$t>::from_le_bytes(b)
            }
        }};
    }
    match elem {
        Elem::F32 => Element::Float(f64::from(num!(f32, 4))),
        Elem::F64 => Element::Float(num!(f64, 8)),
        Elem::U8 => Element::Int(i128::from(c[0])),
        Elem::I8 => Element::Int(i128::from(c[0] as i8)),
        Elem::U16 => Element::Int(i128::from(num!(u16, 2))),
        Elem::I16 => Element::Int(i128::from(num!(i16, 2))),
        Elem::U32 => Element::Int(i128::from(num!(u32, 4))),
        Elem::I32 => Element::Int(i128::from(num!(i32, 4))),
        Elem::U64 => Element::Int(i128::from(num!(u64, 8))),
        Elem::I64 => Element::Int(i128::from(num!(i64, 8))),
    }
}

/// The dimensions a `.npy` file's header declares (the values are not read or checked).
pub fn npy_dims(bytes: &[u8], name: &str) -> Result<Vec<usize>> {
    Ok(npy_header(bytes, name, false)?.dims)
}

/// What a `.npy` header says, and the bytes after it.
struct NpyHeader<'a> {
    elem: Elem,
    big_endian: bool,
    fortran: bool,
    dims: Vec<usize>,
    /// The shape as Python writes it, for messages: `(5,)`, `(2, 3)`.
    shape_text: String,
    data: &'a [u8],
}

/// Reads the magic, version and header dict of a `.npy` file. With `floats_only`, integer dtypes
/// are refused (with the message [`parse_npy`] gives).
fn npy_header<'a>(bytes: &'a [u8], name: &str, floats_only: bool) -> Result<NpyHeader<'a>> {
    let err = |msg: String| Error::Data(format!("{name}: {msg}"));
    if bytes.len() < 8 || &bytes[..6] != NPY_MAGIC {
        return Err(err("not a .npy file (bad magic)".into()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 if bytes.len() >= 10 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        1..=3 => return Err(err("truncated header".into())),
        _ => return Err(err(format!("unsupported .npy format version {major}.{minor}"))),
    };
    let header = bytes
        .get(start..)
        .and_then(|b| b.get(..header_len))
        .ok_or_else(|| err(format!("truncated header: {header_len} bytes declared")))?;
    let header = std::str::from_utf8(header).map_err(|_| err("header is not text".into()))?;
    let dict = HeaderParser { s: header.as_bytes(), pos: 0 }
        .dict()
        .map_err(|why| err(format!("malformed header ({why}): {:.120}", header.trim_end())))?;
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| err(format!("header has no '{key}'")))
    };

    let supported = if floats_only {
        "float32 '<f4' or float64 '<f8'"
    } else {
        "float32 '<f4', float64 '<f8' or integers '|u1', '|i1', '<u2', '<i2' … '<u8', '<i8'"
    };
    let (elem, big_endian) = match get("descr")? {
        Value::Str(d) => match Elem::parse(d) {
            Some((elem, big)) if elem.is_float() || !floats_only => (elem, big),
            _ => return Err(err(format!("dtype '{d}' is not supported ({supported})"))),
        },
        _ => return Err(err(format!("structured dtype is not supported ({supported})"))),
    };
    let Value::Bool(fortran) = *get("fortran_order")? else {
        return Err(err("header's 'fortran_order' is not True or False".into()));
    };
    let Value::Tuple(shape) = get("shape")? else {
        return Err(err("header's 'shape' is not a tuple".into()));
    };
    let dims: Vec<usize> = shape
        .iter()
        .map(|v| match v {
            Value::Int(k) => Ok(*k),
            _ => Err(err("header's 'shape' holds a non-integer".into())),
        })
        .collect::<Result<_>>()?;
    let shape_text = match dims.as_slice() {
        [k] => format!("({k},)"),
        _ => format!("({})", dims.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let data = &bytes[start + header_len..];
    Ok(NpyHeader { elem, big_endian, fortran, dims, shape_text, data })
}

/// The number of values `h` declares, checked against the bytes present (before anything is
/// allocated).
fn npy_count(h: &NpyHeader, name: &str) -> Result<usize> {
    let err = |msg: String| Error::Data(format!("{name}: {msg}"));
    let itemsize = h.elem.size();
    let count = h.dims.iter().try_fold(1usize, |acc, &k| acc.checked_mul(k));
    let expected = count
        .and_then(|k| k.checked_mul(itemsize))
        .ok_or_else(|| err(format!("shape {} is too large", h.shape_text)))?;
    if h.data.len() < expected {
        return Err(err(format!("truncated: expected {expected} bytes of data, found {}", h.data.len())));
    }
    if h.data.len() > expected {
        return Err(err(format!(
            "expected {expected} bytes of data, found {} (trailing bytes)",
            h.data.len()
        )));
    }
    Ok(expected / itemsize)
}

/// Decodes the `count` values after a header in C order, calling `f(k, value)` for each: floats
/// checked finite, integers checked exact.
fn npy_for_each(
    h: &NpyHeader,
    name: &str,
    count: usize,
    mut f: impl FnMut(usize, f64) -> Result<()>,
) -> Result<()> {
    let err = |msg: String| Error::Data(format!("{name}: {msg}"));
    let itemsize = h.elem.size();
    // The element at C-order position k (multi-index idx) is the file's element `src`: k itself in
    // C order; Σ idx[j]·(dims[0]·…·dims[j-1]) in Fortran order, kept up to date as idx counts.
    let rank = h.dims.len();
    let fortran_strides: Vec<usize> =
        h.dims.iter().scan(1usize, |s, &d| Some(std::mem::replace(s, s.saturating_mul(d)))).collect();
    let mut idx = vec![0usize; rank];
    let mut src = 0usize;
    let index_text = |k: usize| {
        let mut rest = k;
        let mut parts = vec![0usize; rank];
        for j in (0..rank).rev() {
            parts[j] = rest % h.dims[j];
            rest /= h.dims[j];
        }
        parts.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
    };
    const EXACT: i128 = 1 << 53;
    for k in 0..count {
        let at = if h.fortran { src } else { k };
        let v = match element(&h.data[at * itemsize..(at + 1) * itemsize], h.elem, h.big_endian) {
            Element::Float(v) if v.is_finite() => v,
            Element::Float(v) => return Err(err(format!("non-finite value {v} at [{}]", index_text(k)))),
            Element::Int(i) if (-EXACT..=EXACT).contains(&i) => i as f64,
            Element::Int(i) => {
                return Err(err(format!(
                    "integer {i} at [{}] is beyond 2^53 in magnitude (not exact as a float64)",
                    index_text(k)
                )))
            }
        };
        f(k, v)?;
        if h.fortran {
            // advance the C-order multi-index (last index fastest), carrying into earlier ones
            for j in (0..rank).rev() {
                idx[j] += 1;
                src += fortran_strides[j];
                if idx[j] < h.dims[j] {
                    break;
                }
                src -= fortran_strides[j] * h.dims[j];
                idx[j] = 0;
            }
        }
    }
    Ok(())
}

/// `m` as a format 1.0 `.npy` file in C order, as `np.save` writes it: float32 (`'<f4'`, values
/// rounded) when `f32`, else float64 (`'<f8'`).
pub fn npy_bytes(m: &Matrix, f32: bool) -> Vec<u8> {
    let descr = if f32 { "<f4" } else { "<f8" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}", m.rows, m.cols);
    // numpy leaves room for the row count to grow to 21 digits, then pads with spaces so that
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    header.push_str(&" ".repeat(21usize.saturating_sub(m.rows.to_string().len())));
    header.push_str(&" ".repeat(64 - (10 + header.len() + 1) % 64));
    header.push('\n');
    let itemsize = if f32 { 4 } else { 8 };
    let mut out = Vec::with_capacity(10 + header.len() + m.data.len() * itemsize);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    // The header is under 200 bytes: the dict above with two integers of at most 20 digits.
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &v in &m.data {
        if f32 {
            out.extend_from_slice(&(v as f32).to_le_bytes());
        } else {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// A value of the Python literal in a `.npy` header.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Int(usize),
    Tuple(Vec<Value>),
}

/// A parser for the header dict: string keys; values that are strings, `True`/`False`,
/// non-negative integers, or tuples/lists of those (nested at most [`HeaderParser::MAX_DEPTH`]).
struct HeaderParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl HeaderParser<'_> {
    const MAX_DEPTH: usize = 8;

    fn dict(mut self) -> std::result::Result<Vec<(String, Value)>, String> {
        self.expect(b'{')?;
        let mut items = Vec::new();
        loop {
            if self.eat(b'}') {
                break;
            }
            let Value::Str(key) = self.value(0)? else {
                return Err(format!("a key that is not a string at byte {}", self.pos));
            };
            self.expect(b':')?;
            items.push((key, self.value(0)?));
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
        }
        self.skip_ws();
        if self.pos == self.s.len() {
            Ok(items)
        } else {
            Err(format!("unexpected text after the dict at byte {}", self.pos))
        }
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Value, String> {
        self.skip_ws();
        let start = self.pos;
        match self.s.get(start) {
            Some(&q @ (b'\'' | b'"')) => {
                self.pos += 1;
                while let Some(&c) = self.s.get(self.pos) {
                    self.pos += if c == b'\\' { 2 } else { 1 };
                    if c == q {
                        let text = &self.s[start + 1..self.pos - 1];
                        return Ok(Value::Str(String::from_utf8_lossy(text).into_owned()));
                    }
                }
                Err(format!("unterminated string at byte {start}"))
            }
            Some(&open @ (b'(' | b'[')) if depth < Self::MAX_DEPTH => {
                let close = if open == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(close) {
                        return Ok(Value::Tuple(items));
                    }
                    items.push(self.value(depth + 1)?);
                    if !self.eat(b',') {
                        self.expect(close)?;
                        return Ok(Value::Tuple(items));
                    }
                }
            }
            Some(b'(' | b'[') => Err(format!("nesting deeper than {} at byte {start}", Self::MAX_DEPTH)),
            Some(c) if c.is_ascii_digit() => {
                while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default();
                self.eat(b'L'); // Python 2 long
                digits.parse().map(Value::Int).map_err(|_| format!("integer {digits} is too large"))
            }
            _ => {
                for (word, b) in [("True", true), ("False", false)] {
                    if self.s[start..].starts_with(word.as_bytes()) {
                        self.pos += word.len();
                        return Ok(Value::Bool(b));
                    }
                }
                Err(format!("unexpected character at byte {start}"))
            }
        }
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        let hit = self.s.get(self.pos) == Some(&c);
        self.pos += usize::from(hit);
        hit
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.pos))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn msg<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    fn mat(rows: usize, cols: usize, data: &[f64]) -> Matrix {
        Matrix::new(rows, cols, data.to_vec()).unwrap()
    }

    /// A fresh, empty directory under the system temp dir.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rnvp-io-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A .npy file laid out as numpy writes it, with the given version, header dict and data.
    fn npy(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let prefix = if major == 1 { 10 } else { 12 };
        let mut header = dict.to_string();
        header.push_str(&" ".repeat(63 - (prefix + dict.len()) % 64));
        header.push('\n');
        let mut out = NPY_MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn dict(descr: &str, fortran: bool, shape: &str) -> String {
        let f = if fortran { "True" } else { "False" };
        format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}")
    }

    #[test]
    fn csv_round_trips_with_and_without_header() {
        let m = mat(3, 2, &[0.1, -2.5, 1e-300, 1e300, -0.0, 123456789.125]);
        let header = vec!["x".to_string(), "y".to_string()];
        let text = csv_string(&m, &header);
        assert!(text.starts_with("x,y\n0.1,-2.5\n"), "{text}");
        assert_eq!(parse_csv(&text, "a.csv").unwrap(), m);
        let text = csv_string(&m, &[]);
        assert!(text.starts_with("0.1,-2.5\n"), "{text}");
        assert_eq!(parse_csv(&text, "a.csv").unwrap(), m);
        let mut buf = Vec::new();
        write_csv(&mut buf, &m, &header).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), csv_string(&m, &header));
    }

    #[test]
    fn csv_values_round_trip_bit_for_bit() {
        let vals = [f64::MAX, f64::MIN_POSITIVE, 5e-324, 1.0 / 3.0, -1e16, 1e-5, 9.999999999999999e-6, 0.0];
        let m = mat(1, vals.len(), &vals);
        let back = parse_csv(&csv_string(&m, &[]), "v.csv").unwrap();
        for (a, b) in m.data.iter().zip(&back.data) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a} came back as {b}");
        }
    }

    #[test]
    fn csv_header_blank_lines_crlf_and_spaces() {
        let m = parse_csv("\u{feff}\n  a , b\r\n\r\n 1 , 2\r\n3,4e1\n\n", "t.csv").unwrap();
        assert_eq!(m, mat(2, 2, &[1.0, 2.0, 3.0, 40.0]));
        // A first line of numbers is data; a header may have empty names.
        assert_eq!(parse_csv("1,2\n3,4", "t.csv").unwrap().rows, 2);
        assert_eq!(parse_csv("x,\n3,4", "t.csv").unwrap(), mat(1, 2, &[3.0, 4.0]));
    }

    #[test]
    fn csv_errors_give_line_column_and_problem() {
        let cases = [
            ("x,y\n1,2\n3,abc\n", "d.csv:3:2: cannot parse 'abc' as a number"),
            ("x,y,z\n\n1,2\n", "d.csv:3: expected 3 columns, found 2"),
            ("1,2\n3,4,5\n", "d.csv:2: expected 2 columns, found 3"),
            ("1,2\n3, nan\n", "d.csv:2:2: non-finite value 'nan'"),
            ("inf,2\n", "d.csv:1:1: non-finite value 'inf'"),
            ("1,2\n-1e999,0\n", "d.csv:2:1: non-finite value '-1e999'"),
            ("1,,2\n", "d.csv:1:2: empty field"),
            ("a,b\n1,2\n3,\n", "d.csv:3:2: empty field"),
            ("a,b\n\n", "d.csv: no data rows"),
            ("", "d.csv: no data rows"),
        ];
        for (text, want) in cases {
            assert_eq!(msg(parse_csv(text, "d.csv")), want, "input {text:?}");
        }
    }

    #[test]
    fn npy_round_trips_f64_exactly_and_f32_within_precision() {
        let m = mat(3, 2, &[0.1, -2.5, 1e-30, 3e30, -0.0, 1.0 / 3.0]);
        assert_eq!(parse_npy(&npy_bytes(&m, false), "m.npy").unwrap(), m);
        let back = parse_npy(&npy_bytes(&m, true), "m.npy").unwrap();
        assert_eq!((back.rows, back.cols), (3, 2));
        for (a, b) in m.data.iter().zip(&back.data) {
            assert!((a - b).abs() <= a.abs() * f64::from(f32::EPSILON), "{a} vs {b}");
        }
        let big = mat(1000, 3, &(0..3000).map(|k| k as f64 * 0.37).collect::<Vec<_>>());
        assert_eq!(parse_npy(&npy_bytes(&big, false), "big.npy").unwrap(), big);
    }

    #[test]
    fn npy_bytes_are_what_numpy_writes() {
        // np.save(f, np.arange(6.0).reshape(2, 3) / 4): 118-byte header, 128 bytes before the data.
        let m = mat(2, 3, &[0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
        let bytes = npy_bytes(&m, false);
        let mut want = b"\x93NUMPY\x01\x00v\x00".to_vec();
        want.extend_from_slice(dict("<f8", false, "(2, 3)").as_bytes());
        want.extend_from_slice(&[b' '; 58]);
        want.push(b'\n');
        assert_eq!(&bytes[..128], &want[..]);
        assert_eq!(&bytes[136..144], &0.25f64.to_le_bytes());
        assert_eq!(bytes.len(), 128 + 48);
        assert_eq!(npy_bytes(&m, true).len(), 128 + 24);
        for rows in [1, 9, 10, 12345678901234] {
            let m = Matrix { rows, cols: 0, data: vec![] };
            let b = npy_bytes(&m, true);
            assert_eq!(b.len() % 64, 0, "rows {rows}");
            assert_eq!(b.last(), Some(&b'\n'));
        }
    }

    #[test]
    fn npy_reads_numpy_layouts() {
        let want = mat(2, 3, &[0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
        let le8: Vec<u8> = want.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let be8: Vec<u8> = want.data.iter().flat_map(|v| v.to_be_bytes()).collect();
        let be4: Vec<u8> = want.data.iter().flat_map(|&v| (v as f32).to_be_bytes()).collect();
        // Fortran order stores the columns one after the other.
        let fortran: Vec<u8> =
            [0.0f64, 0.75, 0.25, 1.0, 0.5, 1.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        let files = [
            npy(1, &dict("<f8", false, "(2, 3)"), &le8),
            npy(2, &dict("<f8", false, "(2, 3)"), &le8),
            npy(3, &dict("<f8", false, "(2, 3)"), &le8),
            npy(1, &dict(">f8", false, "(2, 3)"), &be8),
            npy(1, &dict(">f4", false, "(2, 3)"), &be4),
            npy(1, &dict("<f8", true, "(2, 3)"), &fortran),
            npy(1, "{'shape': (2L, 3L), 'fortran_order': False, \"descr\": '<f8'}", &le8),
        ];
        for (k, f) in files.iter().enumerate() {
            assert_eq!(parse_npy(f, "n.npy").unwrap(), want, "file {k}");
        }
    }

    #[test]
    fn npy_errors_name_the_problem() {
        let d8 = [0u8; 48];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"PK\x03\x04 not numpy".to_vec(), "n.npy: not a .npy file (bad magic)"),
            (b"\x93NUMP".to_vec(), "n.npy: not a .npy file (bad magic)"),
            (
                npy(1, &dict("<f8", false, "(2, 3)"), &d8[..40]),
                "n.npy: truncated: expected 48 bytes of data, found 40",
            ),
            (
                npy(1, &dict("<f8", false, "(100, 1)"), &[0; 123]),
                "n.npy: truncated: expected 800 bytes of data, found 123",
            ),
            (
                npy(1, &dict("<f8", false, "(2, 3)"), &[0; 50]),
                "n.npy: expected 48 bytes of data, found 50 (trailing bytes)",
            ),
            (
                npy(1, &dict("<i8", false, "(2, 3)"), &d8),
                "n.npy: dtype '<i8' is not supported (float32 '<f4' or float64 '<f8')",
            ),
            (
                npy(1, "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2,)}", &d8[..16]),
                "n.npy: structured dtype is not supported (float32 '<f4' or float64 '<f8')",
            ),
            (npy(1, &dict("<f8", false, "(5,)"), &d8[..40]), "n.npy: shape (5,) is not 2-D [n, d]"),
            (npy(1, &dict("<f8", false, "(2, 3, 1)"), &d8), "n.npy: shape (2, 3, 1) is not 2-D [n, d]"),
            (npy(1, &dict("<f8", false, "()"), &d8[..8]), "n.npy: shape () is not 2-D [n, d]"),
            (
                npy(1, &dict("<f8", false, "(1000000000000000000, 2)"), &d8),
                "n.npy: truncated: expected 16000000000000000000 bytes of data, found 48",
            ),
            (
                npy(1, &dict("<f8", false, "(10000000000000000000, 2)"), &d8),
                "n.npy: shape (10000000000000000000, 2) is too large",
            ),
            (npy(1, &dict("<f8", false, "(0, 2)"), &[]), "n.npy: no data rows"),
            (npy(1, &dict("<f8", false, "(3, 0)"), &[]), "n.npy: shape (3, 0) has no columns"),
            (npy(1, "{'descr': '<f8', 'shape': (2, 3)}", &d8), "n.npy: header has no 'fortran_order'"),
            (npy(4, &dict("<f8", false, "(2, 3)"), &d8), "n.npy: unsupported .npy format version 4.0"),
            (b"\x93NUMPY\x01\x00\xff\x00{'descr'".to_vec(), "n.npy: truncated header: 255 bytes declared"),
            (b"\x93NUMPY\x02\x00\x01".to_vec(), "n.npy: truncated header"),
        ];
        for (k, (bytes, want)) in cases.iter().enumerate() {
            assert_eq!(&msg(parse_npy(bytes, "n.npy")), want, "case {k}");
        }
        let mut nan = 1.5f64.to_le_bytes().to_vec();
        nan.extend_from_slice(&f64::NAN.to_le_bytes());
        let m = msg(parse_npy(&npy(1, &dict("<f8", false, "(1, 2)"), &nan), "n.npy"));
        assert_eq!(m, "n.npy: non-finite value NaN at [0, 1]");
        let inf = f32::INFINITY.to_le_bytes();
        let m = msg(parse_npy(&npy(1, &dict("<f4", true, "(1, 1)"), &inf), "n.npy"));
        assert_eq!(m, "n.npy: non-finite value inf at [0, 0]");
        for bad in [
            "{'descr': '<f8'",
            "{'descr' '<f8'}",
            "{'shape': (1, -2)}",
            "{'a': 1} x",
            "{'a': 99999999999999999999999}",
        ] {
            let m = msg(parse_npy(&npy(1, bad, &[]), "n.npy"));
            assert!(m.starts_with("n.npy: malformed header ("), "{bad}: {m}");
        }
        let deep = format!("{{'shape': {}1{}}}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(msg(parse_npy(&npy(2, &deep, &[]), "n.npy")).contains("nesting deeper than 8"));
    }

    /// `values` as the bytes of `elem` in the given byte order.
    fn encode(values: &[i128], size: usize, big: bool) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| {
                let le = v.to_le_bytes();
                let mut b = le[..size].to_vec();
                if big {
                    b.reverse();
                }
                b
            })
            .collect()
    }

    #[test]
    fn npy_array_reads_every_integer_dtype_in_both_byte_orders() {
        let cases: [(&str, &str, &[i128]); 10] = [
            ("u1", "uint8", &[0, 1, 2, 127, 128, 255]),
            ("i1", "int8", &[-128, -1, 0, 1, 2, 127]),
            ("u2", "uint16", &[0, 1, 256, 4095, 32768, 65535]),
            ("i2", "int16", &[-32768, -1, 0, 1, 300, 32767]),
            ("u4", "uint32", &[0, 1, 65536, 7, 1 << 31, (1 << 32) - 1]),
            ("i4", "int32", &[-(1 << 31), -1, 0, 1, 65537, (1 << 31) - 1]),
            ("u8", "uint64", &[0, 1, 1 << 40, 7, (1 << 53) - 1, 1 << 53]),
            ("i8", "int64", &[-(1 << 53), -1, 0, 1, 1 << 33, 1 << 53]),
            ("f4", "float32", &[-3, -1, 0, 1, 2, 1000]),
            ("f8", "float64", &[-3, -1, 0, 1, 2, 1 << 60]),
        ];
        for (code, dtype, values) in cases {
            let size: usize = code[1..].parse().unwrap();
            let orders: &[(char, bool)] = if size == 1 {
                &[('|', false), ('<', false), ('>', true)]
            } else {
                &[('<', false), ('>', true)]
            };
            for &(order, big) in orders {
                let data: Vec<u8> = match code {
                    "f4" => values
                        .iter()
                        .flat_map(|&v| if big { (v as f32).to_be_bytes() } else { (v as f32).to_le_bytes() })
                        .collect(),
                    "f8" => values
                        .iter()
                        .flat_map(|&v| if big { (v as f64).to_be_bytes() } else { (v as f64).to_le_bytes() })
                        .collect(),
                    _ => encode(values, size, big),
                };
                let descr = format!("{order}{code}");
                let a = parse_npy_array(&npy(1, &dict(&descr, false, "(2, 3)"), &data), "a.npy")
                    .unwrap_or_else(|e| panic!("{descr}: {e}"));
                assert_eq!(a.dims, [2, 3], "{descr}");
                assert_eq!(a.values, values.iter().map(|&v| v as f64).collect::<Vec<_>>(), "{descr}");
                assert_eq!(a.integer, !code.starts_with('f'), "{descr}");
                assert_eq!(a.dtype, dtype, "{descr}");
            }
        }
    }

    #[test]
    fn npy_array_reads_1_to_4_dims_in_c_and_fortran_order() {
        // 1-D
        let a = parse_npy_array(&npy(1, &dict("|u1", false, "(5,)"), &[5, 4, 3, 2, 1]), "a.npy").unwrap();
        assert_eq!((a.dims, a.values), (vec![5], vec![5.0, 4.0, 3.0, 2.0, 1.0]));
        // 3-D and 4-D in C order: the values as stored
        let data: Vec<u8> = (0..24).collect();
        for shape in ["(2, 3, 4)", "(2, 3, 2, 2)", "(1, 2, 3, 4)", "(24, 1, 1)"] {
            let a = parse_npy_array(&npy(1, &dict("|u1", false, shape), &data), "a.npy").unwrap();
            assert_eq!(a.values, (0..24).map(f64::from).collect::<Vec<_>>(), "{shape}");
            assert_eq!(a.dims.iter().product::<usize>(), 24, "{shape}");
        }
        let a =
            parse_npy_array(&npy(2, &dict("<i2", false, "(2, 3, 2, 2)"), &encode(&[1; 24], 2, false)), "a")
                .unwrap();
        assert_eq!(a.dims, [2, 3, 2, 2]);
        // Fortran order in 3-D: element (i, j, k) of a (2, 3, 4) array is stored at i + 2j + 6k.
        let (d0, d1, d2) = (2usize, 3usize, 4usize);
        let value = |i: usize, j: usize, k: usize| (100 * i + 10 * j + k) as i128;
        let mut stored = vec![0i128; d0 * d1 * d2];
        for i in 0..d0 {
            for j in 0..d1 {
                for k in 0..d2 {
                    stored[i + d0 * j + d0 * d1 * k] = value(i, j, k);
                }
            }
        }
        for (descr, big) in [("<i4", false), (">u8", true)] {
            let bytes =
                npy(1, &dict(descr, true, "(2, 3, 4)"), &encode(&stored, descr[2..].parse().unwrap(), big));
            let a = parse_npy_array(&bytes, "f.npy").unwrap();
            assert_eq!(a.dims, [2, 3, 4]);
            for i in 0..d0 {
                for j in 0..d1 {
                    for k in 0..d2 {
                        assert_eq!(
                            a.values[(i * d1 + j) * d2 + k],
                            value(i, j, k) as f64,
                            "{descr} [{i}, {j}, {k}]"
                        );
                    }
                }
            }
        }
        // Fortran order in 4-D: (2, 2, 1, 3), element (a, b, c, d) stored at a + 2b + 4c + 4d.
        let mut stored = vec![0i128; 12];
        for (a, b, d) in (0..2).flat_map(|a| (0..2).flat_map(move |b| (0..3).map(move |d| (a, b, d)))) {
            stored[a + 2 * b + 4 * d] = (100 * a + 10 * b + d) as i128;
        }
        let a = parse_npy_array(&npy(1, &dict("<u2", true, "(2, 2, 1, 3)"), &encode(&stored, 2, false)), "f")
            .unwrap();
        let want: Vec<f64> = (0..2)
            .flat_map(|a| (0..2).flat_map(move |b| (0..3).map(move |d| (100 * a + 10 * b + d) as f64)))
            .collect();
        assert_eq!(a.values, want);
        // Empty arrays are arrays.
        let a = parse_npy_array(&npy(1, &dict("<f8", true, "(3, 0, 1000000000000)"), &[]), "e").unwrap();
        assert_eq!((a.dims, a.values.len()), (vec![3, 0, 1000000000000], 0));
    }

    #[test]
    fn npy_array_errors_name_the_problem() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (npy(1, &dict("<u1", false, "()"), &[7]), "a.npy: shape () is a scalar, not an array"),
            (
                npy(1, &dict("<c16", false, "(1,)"), &[0; 16]),
                "a.npy: dtype '<c16' is not supported (float32 '<f4', float64 '<f8' or integers '|u1', \
                 '|i1', '<u2', '<i2' … '<u8', '<i8')",
            ),
            (npy(1, &dict("|u2", false, "(1,)"), &[0; 2]), "a.npy: dtype '|u2' is not supported"),
            (npy(1, &dict("|b1", false, "(1,)"), &[0]), "a.npy: dtype '|b1' is not supported"),
            (npy(1, &dict("<f2", false, "(1,)"), &[0; 2]), "a.npy: dtype '<f2' is not supported"),
            (npy(1, &dict("i8", false, "(1,)"), &[0; 8]), "a.npy: dtype 'i8' is not supported"),
            (
                npy(1, "{'descr': [('a', '<u1')], 'fortran_order': False, 'shape': (2,)}", &[0; 2]),
                "a.npy: structured dtype is not supported",
            ),
            (
                npy(1, &dict("<i2", false, "(2, 3, 4)"), &[0; 47]),
                "a.npy: truncated: expected 48 bytes of data, found 47",
            ),
            (
                npy(1, &dict("|u1", true, "(2, 3, 4, 1)"), &[0; 25]),
                "a.npy: expected 24 bytes of data, found 25 (trailing bytes)",
            ),
            (
                npy(1, &dict("<i8", false, "(4294967296, 4294967296, 2)"), &[0; 8]),
                "a.npy: shape (4294967296, 4294967296, 2) is too large",
            ),
            (
                npy(1, &dict("<u1", false, "(3074457345618258603, 6)"), &[0; 8]),
                "a.npy: shape (3074457345618258603, 6) is too large",
            ),
            (
                npy(1, &dict("<i8", false, "(1, 2)"), &encode(&[-(1 << 53), -(1 << 53) - 1], 8, false)),
                "a.npy: integer -9007199254740993 at [0, 1] is beyond 2^53 in magnitude (not exact as a \
                 float64)",
            ),
            (
                npy(1, &dict(">u8", true, "(2, 1, 2)"), &encode(&[0, 0, u64::MAX.into(), 0], 8, true)),
                "a.npy: integer 18446744073709551615 at [0, 0, 1] is beyond 2^53 in magnitude (not exact \
                 as a float64)",
            ),
        ];
        for (k, (bytes, want)) in cases.iter().enumerate() {
            let m = msg(parse_npy_array(bytes, "a.npy"));
            assert!(m.starts_with(want), "case {k}: {m}");
        }
        // Non-finite floats are reported at their C-order index, whatever the file's order.
        let mut data = [0f32; 24];
        data[1 + 2 * 2 + 6 * 3] = f32::NEG_INFINITY; // (1, 2, 3) in Fortran order
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = msg(parse_npy_array(&npy(1, &dict("<f4", true, "(2, 3, 4)"), &bytes), "a.npy"));
        assert_eq!(m, "a.npy: non-finite value -inf at [1, 2, 3]");
        // The 2-D reader refuses what only the general one reads.
        let m = msg(parse_npy(&npy(1, &dict("|u1", false, "(2, 3)"), &[0; 6]), "a.npy"));
        assert_eq!(m, "a.npy: dtype '|u1' is not supported (float32 '<f4' or float64 '<f8')");
        let deep = format!("{{'shape': {}1{}}}", "[".repeat(10), "]".repeat(10));
        assert!(msg(parse_npy_array(&npy(1, &deep, &[]), "a.npy")).contains("nesting deeper than 8"));
    }

    #[test]
    fn read_and_write_matrix_by_extension() {
        let dir = scratch("by-extension");
        let m = mat(2, 2, &[1.0, 2.5, -3.0, 4e-7]);
        let header = vec!["a".to_string(), "b".to_string()];
        for name in ["m.csv", "m.npy", "M.CSV"] {
            let path = dir.join(name);
            write_matrix(&path, &m, &header).unwrap();
            assert_eq!(read_matrix(&path).unwrap(), m, "{name}");
        }
        assert!(fs::read_to_string(dir.join("m.csv")).unwrap().starts_with("a,b\n"));
        let path = dir.join("m.xyz");
        let want = format!("{}: unknown extension '.xyz' (expected .csv or .npy)", path.display());
        assert_eq!(msg(read_matrix(&path)), want);
        assert_eq!(msg(write_matrix(&path, &m, &[])), want);
        assert!(msg(read_matrix(&dir.join("noext"))).contains("no file extension"));
        let missing = dir.join("data.csv");
        let m = msg(read_matrix(&missing));
        assert!(m.starts_with(&format!("{}: ", missing.display())) && m.contains("os error"), "{m}");
        fs::write(&missing, b"1,2\n\xff,3\n").unwrap();
        assert_eq!(msg(read_matrix(&missing)), format!("{}: not valid UTF-8 text", missing.display()));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn write_atomic_replaces_or_leaves_everything_as_it_was() {
        let dir = scratch("atomic");
        let path = dir.join("x.csv");
        fs::write(&path, "old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");

        let missing = dir.join("out").join("x.csv");
        let m = msg(write_atomic(&missing, b"data"));
        assert!(m.starts_with(&format!("{}: ", missing.display())) && m.contains("os error"), "{m}");
        // Renaming over a non-empty directory fails after the temporary file was written.
        let blocked = dir.join("sub");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("keep"), "kept").unwrap();
        assert!(msg(write_atomic(&blocked, b"data")).starts_with(&blocked.display().to_string()));
        assert_eq!(fs::read_to_string(blocked.join("keep")).unwrap(), "kept");

        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["sub", "x.csv"], "temporary files left behind");
        let _ = fs::remove_dir_all(&dir);
    }
}
