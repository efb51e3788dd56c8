//! Data: the toy sets flow papers use, CSV/NPY files, the standardizing scaler, whitening and
//! bounds.
pub mod bounds;
pub mod dequantize;
pub mod images;
pub mod io;
pub mod rng;
pub mod scaler;
pub mod space;
pub mod toy;
pub mod whiten;

pub use bounds::{Bounds, BoundsMode};
pub use dequantize::ImageSpace;
pub use images::Images;
pub use rng::Rng;
pub use scaler::Scaler;
pub use space::DataSpace;
pub use toy::ToySet;
pub use whiten::Whitening;

use crate::error::{Error, Result};

/// A row-major `rows × cols` table of `f64` (one sample per row).
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows (samples).
    pub rows: usize,
    /// Number of columns (dimensions).
    pub cols: usize,
    /// `rows * cols` values, row after row.
    pub data: Vec<f64>,
}

impl Matrix {
    /// A matrix from row-major values; errors when `data.len() != rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::Data(format!(
                "a {rows} × {cols} matrix needs {} values, found {}",
                rows.saturating_mul(cols),
                data.len()
            )));
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// The matrix as a `[rows, cols]` tensor of `kind` on `device`.
pub fn to_tensor(m: &Matrix, kind: tch::Kind, device: tch::Device) -> Result<tch::Tensor> {
    let t = tch::Tensor::from_slice(&m.data).f_view([m.rows as i64, m.cols as i64])?;
    Ok(t.f_to_kind(kind)?.f_to_device(device)?)
}

/// A `[n, d]` tensor (any float dtype, any device) as a matrix.
pub fn from_tensor(t: &tch::Tensor) -> Result<Matrix> {
    let size = t.size();
    if size.len() != 2 {
        return Err(Error::Shape { what: "tensor".into(), expected: "[n, d]".into(), found: size });
    }
    let flat = t.f_to_device(tch::Device::Cpu)?.f_to_kind(tch::Kind::Double)?.f_contiguous()?.f_view([-1])?;
    let data = Vec::<f64>::try_from(&flat)?;
    Matrix::new(size[0] as usize, size[1] as usize, data)
}

/// What `--data` names: a built-in toy set, scikit-learn's digits, a table file or images.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSpec {
    /// A generated set.
    Toy(ToySet),
    /// A .csv or .npy file of rows.
    File(std::path::PathBuf),
    /// scikit-learn's 8×8 digits ([`images::digits`]): the first 1437 images train (and
    /// validate), the last [`images::DIGITS_TEST`] are the test set.
    Digits,
    /// Images: a `.npy` array `[n, h, w]` or `[n, h, w, c]`, or a directory of PNG files.
    Images(std::path::PathBuf),
}

impl DataSpec {
    /// A toy set's name, `digits`, a directory (of PNG images), or a path ending in `.csv` /
    /// `.npy` (images when the `.npy` array has 3 or 4 dimensions).
    pub fn parse(s: &str) -> Result<DataSpec> {
        if let Some(set) = ToySet::from_name(s) {
            return Ok(DataSpec::Toy(set));
        }
        if s == "digits" {
            return Ok(DataSpec::Digits);
        }
        let path = std::path::PathBuf::from(s);
        if path.is_dir() {
            return Ok(DataSpec::Images(path));
        }
        let named =
            path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("npy"));
        if named {
            // a file that cannot be read is named as such, before anyone asks what it holds
            std::fs::metadata(&path).map_err(|e| crate::error::io_err(&path, e))?;
        }
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("npy") if npy_rank(&path).is_some_and(|r| r >= 3) => Ok(DataSpec::Images(path)),
            Some("csv") | Some("npy") => Ok(DataSpec::File(path)),
            Some(ext) => Err(Error::Data(format!(
                "{s}: unknown extension '.{ext}' (expected .csv or .npy, or a directory of .png images)"
            ))),
            None => Err(Error::Data(format!(
                "unknown data set '{s}' (expected one of {}, digits, a .csv / .npy file or a directory of .png images)",
                ToySet::all().iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Whether the data are images.
    pub fn is_images(&self) -> bool {
        matches!(self, DataSpec::Digits | DataSpec::Images(_))
    }

    /// A short name for messages and titles.
    pub fn name(&self) -> String {
        match self {
            DataSpec::Toy(t) => t.name().to_string(),
            DataSpec::File(p) | DataSpec::Images(p) => p.display().to_string(),
            DataSpec::Digits => "digits".to_string(),
        }
    }
}

/// The number of dimensions the header of the `.npy` file at `path` declares, when it reads and
/// its header parses (`None` otherwise: the table reader then says what is wrong). Only the
/// first 64 KiB are read: a header is at most that long in every file numpy writes.
fn npy_rank(path: &std::path::Path) -> Option<usize> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path).ok()?.take(1 << 16).read_to_end(&mut head).ok()?;
    io::npy_dims(&head, &path.display().to_string()).ok().map(|d| d.len())
}
