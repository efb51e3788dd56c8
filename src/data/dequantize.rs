//! How images with `L` integer levels reach a flow, as in the R-NVP and Glow papers: uniform
//! dequantization `x = (v + u) / L`, `u ~ U[0, 1)ᴰ`, then the logit transform
//! `y = logit(α + (1 − 2α) x)` (α = 0.05 in the R-NVP paper), whose
//! `log|dy/dx| = Σ [ln(1 − 2α) − ln s − ln(1 − s)]`, `s = α + (1 − 2α) x`.
//!
//! The flow models `y`; `log p(x) = log p_flow(y) + log|dy/dx|` is a density on `[0, 1]ᴰ`, and
//! `log P(v) ≥ E_u[log p(x)] − D ln L`: every number reported for images is the negative of that
//! bound per dimension in bits, `bpd = −(log p(x) − D ln L) / (D ln 2)`.
use super::{Images, Matrix, Rng};
use crate::error::{Error, Result};

/// The R-NVP paper's α.
pub const ALPHA: f64 = 0.05;

/// The images a flow models: their shape, their levels and the logit's α.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageSpace {
    /// Channels.
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// Levels `L`: values are `0..L`.
    pub levels: u32,
    /// The logit's α, in `(0, ½)`.
    pub alpha: f64,
}

impl ImageSpace {
    /// The space of `images` with the logit's `alpha`.
    pub fn of(images: &Images, alpha: f64) -> Result<ImageSpace> {
        let space = ImageSpace {
            channels: images.channels,
            height: images.height,
            width: images.width,
            levels: images.levels,
            alpha,
        };
        space.validate()?;
        Ok(space)
    }

    /// Checks α ∈ (0, ½), at least 2 levels and a non-empty shape.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(Error::InvalidConfig(format!("logit α = {} (it must lie in (0, 0.5))", self.alpha)));
        }
        let dim = (self.channels as u64)
            .checked_mul(self.height as u64)
            .and_then(|v| v.checked_mul(self.width as u64));
        if dim.is_none_or(|d| d > crate::multiscale::MAX_DIM as u64) {
            return Err(Error::InvalidConfig(format!(
                "images of {} × {} × {} values: at most {} values per image",
                self.channels,
                self.height,
                self.width,
                crate::multiscale::MAX_DIM
            )));
        }
        if self.levels < 2 || self.dim() == 0 {
            return Err(Error::InvalidConfig(format!(
                "images of {} × {} × {} with {} levels",
                self.channels, self.height, self.width, self.levels
            )));
        }
        Ok(())
    }

    /// `D = c·h·w`.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The flow's rows `y` for the images `v` (rows of level values, as [`Images::to_matrix`])
    /// dequantized with noise from `rng`, and each row's `log|dy/dx|`.
    pub fn to_flow(&self, v: &Matrix, rng: &mut Rng) -> Result<(Matrix, Vec<f64>)> {
        if v.cols != self.dim() {
            return Err(Error::Data(format!("images of {} values, the model's have {}", v.cols, self.dim())));
        }
        let (l, a) = (f64::from(self.levels), self.alpha);
        let log_scale = (1.0 - 2.0 * a).ln();
        let mut ys = Vec::with_capacity(v.data.len());
        let mut log_det = Vec::with_capacity(v.rows);
        for i in 0..v.rows {
            let mut ld = 0.0;
            for &level in v.row(i) {
                if !(0.0..l).contains(&level) {
                    return Err(Error::Data(format!(
                        "image {i}: level {level} is outside 0..{}",
                        self.levels
                    )));
                }
                let s = a + (1.0 - 2.0 * a) * (level + rng.uniform()) / l;
                ys.push(s.ln() - (1.0 - s).ln());
                ld += log_scale - s.ln() - (1.0 - s).ln();
            }
            log_det.push(ld);
        }
        Ok((Matrix::new(v.rows, v.cols, ys)?, log_det))
    }

    /// The flow's rows `y` as images in `[0, 1]`: `x = (σ(y) − α) / (1 − 2α)`, clamped.
    pub fn to_unit(&self, ys: &Matrix) -> Matrix {
        let a = self.alpha;
        let data = ys
            .data
            .iter()
            .map(|&y| ((1.0 / (1.0 + (-y).exp()) - a) / (1.0 - 2.0 * a)).clamp(0.0, 1.0))
            .collect();
        Matrix { rows: ys.rows, cols: ys.cols, data }
    }

    /// The negative log-likelihood of the discrete images in nats, `−log p(x) + D ln L`, from the
    /// NLL `−log p(x)` of their dequantized values.
    pub fn discrete_nll(&self, nll: f64) -> f64 {
        nll + self.dim() as f64 * f64::from(self.levels).ln()
    }

    /// Bits per dimension of the discrete images from the NLL `−log p(x)` of their dequantized
    /// values.
    pub fn bits_per_dim(&self, nll: f64) -> f64 {
        self.discrete_nll(nll) / (self.dim() as f64 * std::f64::consts::LN_2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ImageSpace {
        ImageSpace { channels: 1, height: 2, width: 2, levels: 4, alpha: ALPHA }
    }

    #[test]
    fn the_logit_log_det_is_the_derivatives_and_to_unit_inverts_it() {
        let s = space();
        let v = Matrix::new(2, 4, vec![0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 0.0, 1.0]).unwrap();
        let (y, ld) = s.to_flow(&v, &mut Rng::new(1)).unwrap();
        let (y2, _) = s.to_flow(&v, &mut Rng::new(1)).unwrap();
        assert_eq!(y, y2, "the same seed, the same noise");
        let x = s.to_unit(&y);
        for (i, &got) in ld.iter().enumerate() {
            let mut want = 0.0;
            for j in 0..4 {
                let xv = x.row(i)[j];
                // the dequantized value lies in [v/L, (v+1)/L)
                let level = v.row(i)[j];
                assert!(
                    xv >= level / 4.0 - 1e-12 && xv < (level + 1.0) / 4.0 + 1e-12,
                    "{xv} for level {level}"
                );
                // dy/dx by central differences of y(x)
                let f = |x: f64| {
                    let s = ALPHA + (1.0 - 2.0 * ALPHA) * x;
                    (s / (1.0 - s)).ln()
                };
                let h = 1e-6;
                want += ((f(xv + h) - f(xv - h)) / (2.0 * h)).ln();
            }
            assert!((got - want).abs() < 1e-6, "log-det {got} vs {want}");
        }
    }

    #[test]
    fn bits_per_dim_of_the_uniform_density_is_log2_of_the_levels() {
        // the uniform density on [0, 1]ᴰ has log p(x) = 0: P(v) = L⁻ᴰ, log₂ L bits per dimension
        assert!((space().bits_per_dim(0.0) - 2.0).abs() < 1e-12);
        let bad = Matrix::new(1, 4, vec![0.0, 1.0, 4.0, 0.0]).unwrap();
        let err = space().to_flow(&bad, &mut Rng::new(0)).unwrap_err().to_string();
        assert!(err.contains("level 4 is outside 0..4"), "{err}");
        assert!(ImageSpace { alpha: 0.5, ..space() }.validate().is_err());
    }
}
