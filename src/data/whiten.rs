//! Whitening: the decorrelating map `u = L⁻¹ y` of standardized columns `y`, with `L` the Cholesky
//! factor of their covariance (`Σ = L Lᵀ`), so that a flow that starts as the identity is the
//! full-covariance Gaussian fitted to the training rows. `log|du/dy| = −Σⱼ ln Lⱼⱼ`.
use super::Matrix;
use crate::error::{Error, Result};

/// The Cholesky factor of the covariance of `d` standardized columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    /// `L`, lower triangular, row-major `d × d` (zeros above the diagonal).
    pub chol: Vec<f64>,
    /// Its size `d`.
    pub d: usize,
}

impl Whitening {
    /// Fits `L` to the first `d` columns of `m` (standardized rows: mean 0); a ridge of `1e-6`
    /// (growing tenfold as needed) is added to the diagonal of a covariance that is not positive
    /// definite (collinear columns).
    pub fn fit(m: &Matrix, d: usize) -> Result<Whitening> {
        if m.rows == 0 || m.cols < d {
            return Err(Error::Data(format!("cannot whiten {d} columns of a {} × {} table", m.rows, m.cols)));
        }
        // the covariance, its factor and the factor's inverse: three d × d matrices
        let bytes = (d as u128).pow(2) * 8 * 3;
        let (limit, reason) = super::io::limit_and_reason(super::io::Contents::Data);
        if bytes > limit as u128 {
            return Err(Error::Data(format!(
                "whitening {d} columns needs {} of d × d matrices, more than rnvp holds at once ({}: {reason}); \
                 train with --whiten false",
                super::io::size_text(bytes),
                super::io::size_text(limit)
            )));
        }
        let n = m.rows as f64;
        let mut cov = vec![0.0; d * d];
        for i in 0..m.rows {
            let row = &m.row(i)[..d];
            for a in 0..d {
                for b in 0..=a {
                    cov[a * d + b] += row[a] * row[b] / n;
                }
            }
        }
        let mut ridge = 0.0;
        loop {
            if let Some(chol) = cholesky(&cov, d, ridge) {
                return Ok(Whitening { chol, d });
            }
            ridge = if ridge == 0.0 { 1e-6 } else { ridge * 10.0 };
            if ridge > 1.0 {
                return Err(Error::Data("the columns' covariance is not usable for whitening".into()));
            }
        }
    }

    /// Reads `L` from a file's numbers, checking that it is lower triangular with a positive
    /// diagonal.
    pub fn new(chol: Vec<f64>, d: usize) -> Result<Whitening> {
        if chol.len() != d * d {
            return Err(Error::Data(format!("whitening: {} numbers for a {d} × {d} factor", chol.len())));
        }
        for a in 0..d {
            for b in 0..d {
                let v = chol[a * d + b];
                let ok = if b > a {
                    v == 0.0
                } else if b == a {
                    v > 0.0 && v.is_finite()
                } else {
                    v.is_finite()
                };
                if !ok {
                    return Err(Error::Data(format!(
                        "whitening: entry ({a}, {b}) = {v} of a lower-triangular factor"
                    )));
                }
            }
        }
        Ok(Whitening { chol, d })
    }

    /// `log|du/dy| = −Σ ln Lⱼⱼ`.
    pub fn log_det(&self) -> f64 {
        -(0..self.d).map(|j| self.chol[j * self.d + j].ln()).sum::<f64>()
    }

    /// `u = L⁻¹ y` on the first `d` columns of each row (forward substitution), the others kept.
    pub fn whiten(&self, m: &Matrix) -> Result<Matrix> {
        self.check(m)?;
        let d = self.d;
        let mut out = m.clone();
        for i in 0..m.rows {
            let row = &mut out.data[i * m.cols..i * m.cols + d];
            for a in 0..d {
                let s: f64 = (0..a).map(|b| self.chol[a * d + b] * row[b]).sum();
                row[a] = (row[a] - s) / self.chol[a * d + a];
            }
        }
        Ok(out)
    }

    /// `y = L u` on the first `d` columns of each row, the others kept.
    pub fn color(&self, m: &Matrix) -> Result<Matrix> {
        self.check(m)?;
        let d = self.d;
        let mut out = m.clone();
        for i in 0..m.rows {
            let u = &m.row(i)[..d];
            for a in 0..d {
                out.data[i * m.cols + a] = (0..=a).map(|b| self.chol[a * d + b] * u[b]).sum();
            }
        }
        Ok(out)
    }

    /// `L⁻¹`, row-major (for exported functions).
    pub fn inverse(&self) -> Vec<f64> {
        let d = self.d;
        let mut inv = vec![0.0; d * d];
        for j in 0..d {
            // column j of L⁻¹: solve L x = e_j
            for a in j..d {
                let s: f64 = (j..a).map(|b| self.chol[a * d + b] * inv[b * d + j]).sum();
                let e = if a == j { 1.0 } else { 0.0 };
                inv[a * d + j] = (e - s) / self.chol[a * d + a];
            }
        }
        inv
    }

    fn check(&self, m: &Matrix) -> Result<()> {
        if m.cols < self.d {
            return Err(Error::Data(format!("whitening {} columns, but the rows have {}", self.d, m.cols)));
        }
        Ok(())
    }
}

/// The Cholesky factor of the lower triangle of `cov + ridge·I`, or `None` when it is not
/// positive definite.
fn cholesky(cov: &[f64], d: usize, ridge: f64) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for a in 0..d {
        for b in 0..=a {
            let s: f64 = (0..b).map(|k| l[a * d + k] * l[b * d + k]).sum();
            let v = cov[a * d + b] + if a == b { ridge } else { 0.0 } - s;
            if a == b {
                if !(v > 1e-12 && v.is_finite()) {
                    return None;
                }
                l[a * d + a] = v.sqrt();
            } else {
                l[a * d + b] = v / l[b * d + b];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitened_columns_are_uncorrelated_and_the_maps_invert() {
        // three correlated columns and one context column
        let mut rng = crate::data::Rng::new(3);
        let n = 4000;
        let mut data = vec![];
        for _ in 0..n {
            let (a, b, c) = (rng.normal(), rng.normal(), rng.normal());
            data.extend_from_slice(&[a, 0.8 * a + 0.6 * b, 0.5 * a - 0.5 * b + 0.7 * c, 9.0]);
        }
        let m = Matrix::new(n, 4, data).unwrap();
        let w = Whitening::fit(&m, 3).unwrap();
        let u = w.whiten(&m).unwrap();
        for a in 0..3 {
            for b in 0..3 {
                let c: f64 = (0..n).map(|i| u.row(i)[a] * u.row(i)[b]).sum::<f64>() / n as f64;
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((c - want).abs() < 1e-9, "cov({a}, {b}) = {c}");
            }
        }
        assert!(u.data.chunks(4).all(|r| r[3] == 9.0), "the context column is untouched");
        let back = w.color(&u).unwrap();
        assert!(back.data.iter().zip(&m.data).all(|(x, y)| (x - y).abs() < 1e-10));
        // L⁻¹ from inverse() applied by hand equals whiten()
        let inv = w.inverse();
        let row = m.row(5);
        for a in 0..3 {
            let v: f64 = (0..3).map(|b| inv[a * 3 + b] * row[b]).sum();
            assert!((v - u.row(5)[a]).abs() < 1e-10);
        }
        // log|det L⁻¹| from the determinant of the covariance: det Σ = Π Lⱼⱼ²
        let det: f64 = (0..3).map(|j| w.chol[j * 3 + j]).product::<f64>();
        assert!((w.log_det() + det.ln()).abs() < 1e-12);
    }

    #[test]
    fn collinear_columns_get_a_ridge_and_bad_factors_are_refused() {
        let m = Matrix::new(3, 2, vec![1.0, 1.0, -1.0, -1.0, 0.5, 0.5]).unwrap();
        let w = Whitening::fit(&m, 2).unwrap();
        assert!(w.log_det().is_finite());
        assert!(Whitening::new(vec![1.0, 0.5, 0.0, 1.0], 2).is_err(), "upper triangle");
        assert!(Whitening::new(vec![1.0, 0.0, 0.5, -1.0], 2).is_err(), "negative diagonal");
        assert!(Whitening::new(vec![1.0; 3], 2).is_err());
    }
}
