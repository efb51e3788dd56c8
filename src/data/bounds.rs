//! A box `lo < x < hi` that bounded variables live in, and the logit map that takes them to the
//! whole real line: `y = logit(u)`, `u = (x − lo) / (hi − lo)`, with
//! `log|dy/dx| = −ln(hi − lo) − ln u − ln(1 − u)`. A flow trained on `y` has a density on the
//! box, and its samples `x = lo + (hi − lo) σ(y)` lie inside it.
use super::Matrix;
use crate::error::{Error, Result};

/// Per-column bounds of the modelled columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Lower bounds.
    pub lo: Vec<f64>,
    /// Upper bounds (each above its lower bound).
    pub hi: Vec<f64>,
}

impl Bounds {
    /// Bounds `lo < hi` per column; errors for a pair that is not finite or not increasing.
    pub fn new(lo: Vec<f64>, hi: Vec<f64>) -> Result<Bounds> {
        if lo.len() != hi.len() || lo.is_empty() {
            return Err(Error::Data(format!("bounds: {} lower and {} upper values", lo.len(), hi.len())));
        }
        for (j, (l, h)) in lo.iter().zip(&hi).enumerate() {
            if !(l.is_finite() && h.is_finite() && l < h && (h - l).is_finite()) {
                return Err(Error::Data(format!(
                    "bounds of column {j}: LO {l} must be below HI {h}, both finite"
                )));
            }
        }
        Ok(Bounds { lo, hi })
    }

    /// Number of bounded columns.
    pub fn len(&self) -> usize {
        self.lo.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lo.is_empty()
    }

    /// The first `self.len()` columns of `m` (rows of data, any further columns untouched) in
    /// logit space, and `log|dy/dx|` of each row. Errors name the row and column of a value
    /// outside the open box.
    pub fn to_logit(&self, m: &Matrix) -> Result<(Matrix, Vec<f64>)> {
        self.check_width(m)?;
        let mut out = m.clone();
        let mut log_det = vec![0.0; m.rows];
        for (i, ld) in log_det.iter_mut().enumerate() {
            for j in 0..self.len() {
                let x = m.data[i * m.cols + j];
                let (lo, hi) = (self.lo[j], self.hi[j]);
                if !(x > lo && x < hi) {
                    return Err(Error::Data(format!(
                        "row {i}, column {j}: {x} is outside the bounds ({lo}, {hi})"
                    )));
                }
                let u = (x - lo) / (hi - lo);
                out.data[i * m.cols + j] = u.ln() - (-u).ln_1p();
                *ld -= (hi - lo).ln() + u.ln() + (-u).ln_1p();
            }
        }
        Ok((out, log_det))
    }

    /// The inverse of [`Bounds::to_logit`] on the first `self.len()` columns:
    /// `x = lo + (hi − lo) σ(y)`, kept strictly inside the box where rounding would reach its edge.
    pub fn from_logit(&self, m: &Matrix) -> Result<Matrix> {
        self.check_width(m)?;
        let mut out = m.clone();
        for i in 0..m.rows {
            for j in 0..self.len() {
                let y = m.data[i * m.cols + j];
                let s = if y >= 0.0 { 1.0 / (1.0 + (-y).exp()) } else { y.exp() / (1.0 + y.exp()) };
                let (lo, hi) = (self.lo[j], self.hi[j]);
                out.data[i * m.cols + j] = (lo + (hi - lo) * s).clamp(lo.next_up(), hi.next_down());
            }
        }
        Ok(out)
    }

    fn check_width(&self, m: &Matrix) -> Result<()> {
        if m.cols < self.len() {
            return Err(Error::Data(format!("{} bounded columns, but the rows have {}", self.len(), m.cols)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_round_trips_and_its_log_det_matches_a_finite_difference() {
        let b = Bounds::new(vec![-1.0, 0.0], vec![1.0, 10.0]).unwrap();
        let m = Matrix::new(2, 3, vec![0.3, 9.0, 5.0, -0.99, 0.5, -7.0]).unwrap();
        let (y, ld) = b.to_logit(&m).unwrap();
        assert_eq!(y.data[2], 5.0, "an unbounded (context) column is untouched");
        let back = b.from_logit(&y).unwrap();
        for (a, b) in back.data.iter().zip(&m.data) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        // log|dy/dx| by central differences, column by column
        let h = 1e-6;
        for (i, got) in ld.iter().enumerate() {
            let mut want = 0.0;
            for j in 0..2 {
                let shifted = |dx: f64| {
                    let mut p = m.clone();
                    p.data[i * 3 + j] += dx;
                    b.to_logit(&p).unwrap().0.data[i * 3 + j]
                };
                want += ((shifted(h) - shifted(-h)) / (2.0 * h)).ln();
            }
            assert!((got - want).abs() < 1e-6, "row {i}: {got} vs {want}");
        }
    }

    #[test]
    fn values_outside_the_box_and_bad_bounds_are_named() {
        let b = Bounds::new(vec![-1.0, -1.0], vec![1.0, 1.0]).unwrap();
        let m = Matrix::new(2, 2, vec![0.0, 0.0, 0.5, 1.0]).unwrap();
        let err = b.to_logit(&m).unwrap_err().to_string();
        assert!(err.contains("row 1, column 1"), "{err}");
        assert!(Bounds::new(vec![1.0], vec![1.0])
            .unwrap_err()
            .to_string()
            .contains("LO 1 must be below HI 1"));
        assert!(Bounds::new(vec![f64::NAN], vec![1.0]).is_err());
        // samples far out in logit space stay inside the box
        let far = Matrix::new(1, 2, vec![-800.0, 800.0]).unwrap();
        let x = b.from_logit(&far).unwrap();
        assert!(x.data[0] > -1.0 && x.data[1] < 1.0, "{:?}", x.data);
        assert!(b.to_logit(&x).is_ok(), "a sample scores");
    }
}
