//! The library's error type.
use std::fmt;

/// Everything that can go wrong in rnvp's library calls.
#[derive(Debug)]
#[allow(missing_docs)] // the fields are named by each variant's doc
pub enum Error {
    /// A flow configuration that cannot be built (`k` out of range, zero layers, ...).
    InvalidConfig(String),
    /// A tensor with the wrong shape: what it is, the expected and the found shape.
    Shape { what: String, expected: String, found: Vec<i64> },
    /// A tensor with the wrong element type.
    Kind { what: String, expected: tch::Kind, found: tch::Kind },
    /// A tensor on another device than the model.
    Device { what: String, expected: tch::Device, found: tch::Device },
    /// Malformed or unreadable input data (a file, a row, a value).
    Data(String),
    /// A figure that could not be drawn or written.
    Plot(String),
    /// A libtorch failure.
    Torch(tch::TchError),
    /// An I/O failure, with the path it concerns.
    Io { path: String, source: std::io::Error },
}

/// `Result` with rnvp's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid configuration: {m}"),
            Error::Shape { what, expected, found } => {
                write!(f, "{what}: expected shape {expected}, found {found:?}")
            }
            Error::Kind { what, expected, found } => {
                write!(f, "{what}: expected dtype {expected:?}, found {found:?}")
            }
            Error::Device { what, expected, found } => {
                write!(f, "{what}: expected a tensor on {expected:?}, found one on {found:?}")
            }
            Error::Data(m) => write!(f, "{m}"),
            Error::Plot(m) => write!(f, "plot: {m}"),
            Error::Torch(e) => write!(f, "libtorch: {}", first_line(&e.to_string())),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

/// `Display` already includes the underlying libtorch or I/O message, so no `source()` is
/// reported (error chains would print it twice).
impl std::error::Error for Error {}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e)
    }
}

/// The first line of a libtorch message (its C++ backtrace follows on later lines).
pub fn first_line(msg: &str) -> &str {
    msg.lines().find(|l| !l.trim().is_empty()).unwrap_or(msg).trim()
}

/// Attaches a path to an I/O error.
pub fn io_err(path: &std::path::Path, source: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source }
}
