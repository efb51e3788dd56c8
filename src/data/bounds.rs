//! A box `lo < x < hi` that bounded variables live in, and how a flow keeps to it
//! ([`BoundsMode`]):
//! - `logit`: the map that takes the box to the whole real line, `y = logit(u)`,
//!   `u = (x − lo) / (hi − lo)`, with `log|dy/dx| = −ln(hi − lo) − ln u − ln(1 − u)`. A flow
//!   trained on `y` has a density on the box, and its samples `x = lo + (hi − lo) σ(y)` lie inside it;
//! - `truncate`: no map; the flow's density `q` is restricted to the box,
//!   `p(x) = q(x) 1[x ∈ box] / Z` with `Z = P_q(box)` (see [`crate::truncation`]).
use super::Matrix;
use crate::error::{Error, Result};

/// How a flow keeps to its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoundsMode {
    /// The flow models `logit(u)`: samples lie inside the box by construction.
    #[default]
    Logit,
    /// The flow models `x` itself, restricted to the box: samples are drawn by rejection and
    /// densities divide by the flow's mass in the box.
    Truncate,
}

impl BoundsMode {
    /// Its name on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            BoundsMode::Logit => "logit",
            BoundsMode::Truncate => "truncate",
        }
    }
}

impl std::str::FromStr for BoundsMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "logit" => Ok(BoundsMode::Logit),
            "truncate" => Ok(BoundsMode::Truncate),
            o => Err(Error::InvalidConfig(format!("unknown bounds mode '{o}' (expected logit or truncate)"))),
        }
    }
}

/// Per-column bounds of the modelled columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Lower bounds.
    pub lo: Vec<f64>,
    /// Upper bounds (each above its lower bound).
    pub hi: Vec<f64>,
    /// How the flow keeps to the box.
    pub mode: BoundsMode,
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
        Ok(Bounds { lo, hi, mode: BoundsMode::Logit })
    }

    /// The same box kept by `mode`.
    pub fn with_mode(self, mode: BoundsMode) -> Bounds {
        Bounds { mode, ..self }
    }

    /// Whether the first `self.len()` values of `row` lie inside the open box.
    pub fn contains(&self, row: &[f64]) -> bool {
        self.outside(row).is_none()
    }

    /// Rows of data (the first `self.len()` columns bounded) as the flow sees them, with
    /// `log|dy/dx|` of each row: [`Bounds::to_logit`], or for `truncate` the rows themselves
    /// (checked to lie inside the box) and zeros.
    pub fn to_flow(&self, m: &Matrix) -> Result<(Matrix, Vec<f64>)> {
        match self.mode {
            BoundsMode::Logit => self.to_logit(m),
            BoundsMode::Truncate => {
                self.check_width(m)?;
                if let Some((i, j)) = (0..m.rows)
                    .find_map(|i| self.outside(&m.data[i * m.cols..i * m.cols + self.len()]).map(|j| (i, j)))
                {
                    return Err(self.outside_error(i, j, m.data[i * m.cols + j]));
                }
                Ok((m.clone(), vec![0.0; m.rows]))
            }
        }
    }

    /// The inverse of [`Bounds::to_flow`]: [`Bounds::from_logit`], or for `truncate` the rows
    /// themselves (which may lie outside the box: [`crate::truncation`] keeps those inside).
    pub fn from_flow(&self, m: &Matrix) -> Result<Matrix> {
        match self.mode {
            BoundsMode::Logit => self.from_logit(m),
            BoundsMode::Truncate => {
                self.check_width(m)?;
                Ok(m.clone())
            }
        }
    }

    /// The first bounded column of `row` outside the open box (or missing from it).
    fn outside(&self, row: &[f64]) -> Option<usize> {
        (0..self.len()).find(|&j| !row.get(j).is_some_and(|&x| x > self.lo[j] && x < self.hi[j]))
    }

    fn outside_error(&self, i: usize, j: usize, x: f64) -> Error {
        Error::Data(format!(
            "row {i}, column {j}: {x} is outside the bounds ({}, {})",
            self.lo[j], self.hi[j]
        ))
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
                    return Err(self.outside_error(i, j, x));
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
    fn truncated_bounds_pass_rows_through_and_still_check_them() {
        let b = Bounds::new(vec![-1.0, 0.0], vec![1.0, 10.0]).unwrap().with_mode("truncate".parse().unwrap());
        let m = Matrix::new(2, 3, vec![0.3, 9.0, 5.0, -0.99, 0.5, -7.0]).unwrap();
        let (y, ld) = b.to_flow(&m).unwrap();
        assert_eq!((y.data.clone(), ld), (m.data.clone(), vec![0.0, 0.0]));
        assert_eq!(b.from_flow(&y).unwrap().data, m.data);
        let outside = Matrix::new(2, 2, vec![0.0, 5.0, 0.5, 10.0]).unwrap();
        assert!(b.to_flow(&outside).unwrap_err().to_string().contains("row 1, column 1"));
        assert_eq!(b.from_flow(&outside).unwrap().data, outside.data, "draws outside are left to rejection");
        assert!(b.contains(&[0.0, 5.0, 99.0]) && !b.contains(&[0.5, 10.0]) && !b.contains(&[f64::NAN, 1.0]));
        assert_eq!(b.clone().with_mode(BoundsMode::Logit).to_flow(&m).unwrap(), b.to_logit(&m).unwrap());
        assert!("probit".parse::<BoundsMode>().unwrap_err().to_string().contains("logit or truncate"));
        assert_eq!(BoundsMode::default(), BoundsMode::Logit);
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
