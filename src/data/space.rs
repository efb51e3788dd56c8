//! The map between the user's columns and the flow's: bounded columns through a logit
//! ([`Bounds`], unless truncated), then the [`Scaler`], then the [`Whitening`]; a conditional flow's context
//! columns (the last `m`) through the scaler only. `log p(x | c) = log p_flow(y | c') + log|dy/dx|`, where `log|dy/dx|` is
//! [`DataSpace::to_flow`]'s per-row log-determinant.
use super::{Bounds, Matrix, Scaler, Whitening};
use crate::error::{Error, Result};

/// How `d` modelled columns and `m` context columns reach the flow.
#[derive(Debug, Clone, Copy)]
pub struct DataSpace<'a> {
    /// Modelled columns.
    pub d: usize,
    /// Context columns (0: an unconditional flow).
    pub m: usize,
    /// The box of the modelled columns, if declared.
    pub bounds: Option<&'a Bounds>,
    /// The standardization of all `d + m` columns, if any.
    pub scaler: Option<&'a Scaler>,
    /// The decorrelation of the `d` standardized modelled columns, if any.
    pub whiten: Option<&'a Whitening>,
}

impl DataSpace<'_> {
    /// Rows of `d + m` user columns as the flow's rows, with `log|dy/dx|` of each row's modelled
    /// columns.
    pub fn to_flow(&self, rows: &Matrix) -> Result<(Matrix, Vec<f64>)> {
        self.check(rows, self.d + self.m, "rows")?;
        let (mut out, mut log_det) = match self.bounds {
            Some(b) => b.to_flow(rows)?,
            None => (rows.clone(), vec![0.0; rows.rows]),
        };
        if let Some(s) = self.scaler {
            out = s.transform(&out)?;
            let shift = s.log_det_of(self.d);
            log_det.iter_mut().for_each(|v| *v += shift);
        }
        if let Some(w) = self.whiten {
            out = w.whiten(&out)?;
            let shift = w.log_det();
            log_det.iter_mut().for_each(|v| *v += shift);
        }
        Ok((out, log_det))
    }

    /// The flow's `d` columns back in the user's units (inside logit bounds; truncated bounds
    /// leave rows outside the box to [`crate::truncation`]).
    pub fn from_flow(&self, xs: &Matrix) -> Result<Matrix> {
        self.check(xs, self.d, "flow rows")?;
        let colored = match self.whiten {
            Some(w) => w.color(xs)?,
            None => xs.clone(),
        };
        let mut out = match self.scaler {
            // invariant: check() above refuses a scaler without d + m columns
            Some(s) => s.columns(0, self.d).inverse(&colored)?,
            None => colored,
        };
        if let Some(b) = self.bounds {
            out = b.from_flow(&out)?;
        }
        Ok(out)
    }

    /// Context rows (`m` user columns) as the flow sees them.
    pub fn context(&self, c: &Matrix) -> Result<Matrix> {
        self.check(c, self.m, "context")?;
        match self.scaler {
            // invariant: check() above refuses a scaler without d + m columns
            Some(s) => s.columns(self.d, self.m).transform(c),
            None => Ok(c.clone()),
        }
    }

    fn check(&self, m: &Matrix, cols: usize, what: &str) -> Result<()> {
        if let Some(s) =
            self.scaler.filter(|s| s.mean.len() != self.d + self.m || s.std.len() != self.d + self.m)
        {
            return Err(Error::Data(format!(
                "the scaler has {} columns for {} + {}",
                s.mean.len(),
                self.d,
                self.m
            )));
        }
        if let Some(w) = self.whiten.filter(|w| w.d != self.d) {
            return Err(Error::Data(format!("the whitening has {} columns for {}", w.d, self.d)));
        }
        if m.cols != cols {
            return Err(Error::Data(format!(
                "{what}: {} columns, but the model expects {cols} ({} modelled, {} context)",
                m.cols,
                if what == "context" { 0 } else { self.d },
                if what == "flow rows" { 0 } else { self.m }
            )));
        }
        Ok(())
    }
}
