//! Per-column standardization `x ↦ (x − mean) / std`, as scikit-learn's `StandardScaler`.
use super::Matrix;
use crate::error::{Error, Result};

/// Per-column mean and population standard deviation (ddof = 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Scaler {
    /// Column means.
    pub mean: Vec<f64>,
    /// Column standard deviations (all > 0).
    pub std: Vec<f64>,
}

impl Scaler {
    /// Fits mean and population std of each column; errors when there are no rows, a value is not
    /// finite, or a column is constant (0-based column numbers in the messages).
    pub fn fit(m: &Matrix) -> Result<Scaler> {
        if m.rows == 0 {
            return Err(Error::Data("cannot fit a scaler to 0 rows".into()));
        }
        let n = m.rows as f64;
        let mut mean = vec![0.0; m.cols];
        let mut std = vec![0.0; m.cols];
        for j in 0..m.cols {
            let col = || (0..m.rows).map(|i| m.data[i * m.cols + j]);
            if let Some(i) = col().position(|x| !x.is_finite()) {
                return Err(Error::Data(format!("column {j}: non-finite value at row {i}")));
            }
            let first = m.data[j];
            if col().all(|x| x == first) {
                return Err(Error::Data(format!("column {j} is constant ({first}): cannot standardize it")));
            }
            mean[j] = col().sum::<f64>() / n;
            std[j] = (col().map(|x| (x - mean[j]).powi(2)).sum::<f64>() / n).sqrt();
            if !(std[j] > 0.0 && std[j].is_finite()) {
                return Err(Error::Data(format!("column {j}: standard deviation {} is unusable", std[j])));
            }
        }
        Ok(Scaler { mean, std })
    }

    /// The scaler of `d` columns that changes nothing (mean 0, std 1).
    pub fn identity(d: usize) -> Scaler {
        Scaler { mean: vec![0.0; d], std: vec![1.0; d] }
    }

    /// Whether this scaler changes nothing.
    pub fn is_identity(&self) -> bool {
        self.mean.iter().all(|&m| m == 0.0) && self.std.iter().all(|&s| s == 1.0)
    }

    /// `(x − mean) / std`, row by row.
    pub fn transform(&self, m: &Matrix) -> Result<Matrix> {
        self.map(m, |x, mean, std| (x - mean) / std)
    }

    /// The inverse of [`Scaler::transform`]: `z · std + mean`.
    pub fn inverse(&self, m: &Matrix) -> Result<Matrix> {
        self.map(m, |z, mean, std| z * std + mean)
    }

    /// `−Σ ln std`, the log-Jacobian of [`Scaler::transform`]: `log p_x(x) = log p_z(transform(x)) +
    /// log_det()`.
    pub fn log_det(&self) -> f64 {
        -self.std.iter().map(|s| s.ln()).sum::<f64>()
    }

    /// `−Σ ln std` over the first `d` columns: the log-Jacobian of the modelled columns when the
    /// last ones are a conditional flow's context (which is standardized but not modelled).
    pub fn log_det_of(&self, d: usize) -> f64 {
        -self.std.iter().take(d).map(|s| s.ln()).sum::<f64>()
    }

    /// The scaler of the `len` columns from `start` (panics outside its columns).
    pub fn columns(&self, start: usize, len: usize) -> Scaler {
        Scaler { mean: self.mean[start..start + len].to_vec(), std: self.std[start..start + len].to_vec() }
    }

    fn map(&self, m: &Matrix, f: impl Fn(f64, f64, f64) -> f64) -> Result<Matrix> {
        if m.cols != self.mean.len() {
            return Err(Error::Data(format!("scaler expects {} columns, found {}", self.mean.len(), m.cols)));
        }
        let data = m.data.iter().enumerate().map(|(k, &x)| {
            let j = k % m.cols;
            f(x, self.mean[j], self.std[j])
        });
        Ok(Matrix { rows: m.rows, cols: m.cols, data: data.collect() })
    }
}

/// Fits a [`Scaler`] to `m` and applies it to `m` itself (what the notebook does to every batch).
pub fn standardize(m: &Matrix) -> Result<Matrix> {
    Scaler::fit(m)?.transform(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, cols: usize, data: &[f64]) -> Matrix {
        Matrix::new(rows, cols, data.to_vec()).unwrap()
    }

    #[test]
    fn fit_uses_population_std() {
        let x = m(4, 2, &[1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0]);
        let s = Scaler::fit(&x).unwrap();
        assert_eq!(s.mean, vec![2.5, 25.0]);
        // ddof = 0: var = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
        assert!((s.std[0] - 1.25f64.sqrt()).abs() < 1e-15);
        assert!((s.std[1] - 10.0 * 1.25f64.sqrt()).abs() < 1e-13);
    }

    #[test]
    fn standardized_columns_have_mean_zero_and_std_one() {
        let x = m(5, 3, &[1.0, -3.0, 100.0, 2.5, 0.0, 90.0, 7.0, 1.0, 95.0, -4.0, 2.0, 80.0, 0.5, 8.0, 99.0]);
        let z = standardize(&x).unwrap();
        for j in 0..3 {
            let col: Vec<f64> = (0..5).map(|i| z.row(i)[j]).collect();
            let mean = col.iter().sum::<f64>() / 5.0;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
            assert!(mean.abs() < 1e-14, "column {j}: mean {mean}");
            assert!((var - 1.0).abs() < 1e-14, "column {j}: var {var}");
        }
    }

    #[test]
    fn inverse_undoes_transform() {
        let x = m(3, 2, &[0.1, 5.0, -2.0, 7.5, 3.3, 6.0]);
        let s = Scaler::fit(&x).unwrap();
        let back = s.inverse(&s.transform(&x).unwrap()).unwrap();
        for (a, b) in x.data.iter().zip(&back.data) {
            assert!((a - b).abs() < 1e-14, "{a} vs {b}");
        }
    }

    #[test]
    fn log_det_is_minus_sum_of_log_std() {
        let s = Scaler { mean: vec![1.0, -1.0], std: vec![2.0, 0.5] };
        assert!((s.log_det() - (-(2f64.ln()) - 0.5f64.ln())).abs() < 1e-15);
        let s = Scaler { mean: vec![0.0; 3], std: vec![2.0, 4.0, 8.0] };
        assert!((s.log_det() + 6.0 * 2f64.ln()).abs() < 1e-14); // −ln 64
        assert_eq!(Scaler::identity(4).log_det(), 0.0);
    }

    #[test]
    fn identity_changes_nothing() {
        let x = m(2, 2, &[1.0, 2.0, 3.0, 4.0]);
        let id = Scaler::identity(2);
        assert!(id.is_identity());
        assert_eq!(id.transform(&x).unwrap(), x);
        assert!(!Scaler::fit(&x).unwrap().is_identity());
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |r: Result<Scaler>| r.unwrap_err().to_string();
        let msg = err(Scaler::fit(&m(3, 4, &[1., 2., 3., 0.1, 4., 5., 6., 0.1, 7., 8., 9., 0.1])));
        assert!(msg.contains("column 3 is constant"), "{msg}");
        assert!(err(Scaler::fit(&m(0, 2, &[]))).contains("0 rows"));
        let msg = err(Scaler::fit(&m(2, 2, &[1.0, 2.0, 3.0, f64::NAN])));
        assert!(msg.contains("column 1") && msg.contains("row 1"), "{msg}");
        let msg = Scaler::identity(2).transform(&m(1, 3, &[1.0, 2.0, 3.0])).unwrap_err().to_string();
        assert!(msg.contains("expects 2 columns, found 3"), "{msg}");
        assert!(Scaler::identity(3).inverse(&m(1, 2, &[1.0, 2.0])).is_err());
    }
}
