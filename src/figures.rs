//! The figures of a trained flow (the notebook's `view`), shared by the `two_moons` example and
//! `rnvp train --plot-dir` / `rnvp plot`: loss curve, samples `F⁻¹(Z)`, latents `F(X)` and a
//! density heat map with the data over it.
use crate::data::{self, DataSpace, Matrix};
use crate::error::Result;
use crate::plot::{self, Grid};
use crate::run::Run;
use crate::train::TrainReport;
use std::path::{Path, PathBuf};

/// What to draw.
pub struct Figures<'a> {
    /// The flow and the engine that runs it.
    pub flow: Run<'a>,
    /// How file data reaches the flow (scaler, whitening; samples and densities are then in the
    /// data's units); `None` for data in the flow's own coordinates.
    pub space: Option<DataSpace<'a>>,
    /// Data points in the data's units (for toy sets: a standardized batch).
    pub data: Option<&'a Matrix>,
    /// The training run, for the loss curve.
    pub report: Option<&'a TrainReport>,
    /// A dashed reference line on the loss curve (value, label).
    pub floor: Option<(f64, &'a str)>,
    /// Appended to each title, e.g. "3 layers".
    pub label: &'a str,
    /// Points drawn from the flow.
    pub n_samples: i64,
}

fn pairs(m: &Matrix) -> Vec<[f64; 2]> {
    (0..m.rows).map(|i| [m.row(i)[0], m.row(i)[1]]).collect()
}

/// A square window around the bulk of the points (0.5–99.5 percentiles, widened by 15%).
fn window(points: &[[f64; 2]]) -> ((f64, f64), (f64, f64)) {
    let range = |c: usize| {
        let mut v: Vec<f64> = points.iter().map(|p| p[c]).filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return (-3.0, 3.0);
        }
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        (q(0.005), q(0.995))
    };
    let ((x0, x1), (y0, y1)) = (range(0), range(1));
    let half = ((x1 - x0).max(y1 - y0) * 0.5 * 1.15).max(1e-3);
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    ((cx - half, cx + half), (cy - half, cy + half))
}

impl Figures<'_> {
    fn titled(&self, t: &str) -> String {
        if self.label.is_empty() {
            t.to_string()
        } else {
            format!("{t} ({})", self.label)
        }
    }

    /// Draws every figure that applies into `dir` (created if needed); returns the files written.
    pub fn draw(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| crate::error::io_err(dir, e))?;
        let mut written = vec![];
        if let Some(r) = self.report {
            let path = dir.join("loss.png");
            plot::loss_curve(&path, &self.titled("Model Loss vs Epoch"), &r.losses, &r.val, self.floor)?;
            written.push(path);
        }
        let samples = self.flow.sample(self.n_samples)?;
        let mut samples = data::from_tensor(&samples)?;
        if let Some(s) = &self.space {
            samples = s.from_flow(&samples)?;
        }
        let sample_xy = pairs(&samples);
        let data_xy = self.data.map(pairs);
        let path = dir.join("samples.png");
        let mut sets: Vec<(&str, &[[f64; 2]])> = vec![];
        if let Some(d) = &data_xy {
            sets.push(("data", d));
        }
        sets.push(("X = F⁻¹(Z)", &sample_xy));
        plot::scatter(&path, &self.titled("Inverse of Normal Samples Z: X = F^-1(Z)"), "x₀", "x₁", &sets)?;
        written.push(path);

        if let Some(d) = self.data {
            let mut xs = d.clone();
            if let Some(s) = &self.space {
                xs = s.to_flow(&xs)?.0;
            }
            let zs = self.flow.encode(&data::to_tensor(
                &xs,
                self.flow.flow().kind(),
                self.flow.flow().device(),
            )?)?;
            let z_xy = pairs(&data::from_tensor(&zs)?);
            let base = data::from_tensor(&crate::base::sample(
                self.n_samples,
                self.flow.flow().config().d,
                tch::Kind::Double,
                tch::Device::Cpu,
            ))?;
            let base_xy = pairs(&base);
            let path = dir.join("latent.png");
            plot::scatter(
                &path,
                &self.titled("Transformation of Data Samples X: Z = F(X)"),
                "z₀",
                "z₁",
                &[("Z ~ N(0, I)", &base_xy), ("Z = F(X)", &z_xy)],
            )?;
            written.push(path);
        }

        if self.flow.flow().config().d == 2 {
            let overlay = data_xy.as_deref().unwrap_or(&sample_xy);
            let (x, y) = window(overlay);
            let (nx, ny) = (200, 200);
            let pts = Grid::points(x, y, nx, ny);
            let mut m = Matrix::new(pts.len(), 2, pts.iter().flat_map(|p| [p[0], p[1]]).collect())?;
            let mut shift = vec![0.0; m.rows];
            if let Some(s) = &self.space {
                (m, shift) = s.to_flow(&m)?;
            }
            let lp = self.flow.log_prob(&data::to_tensor(
                &m,
                self.flow.flow().kind(),
                self.flow.flow().device(),
            )?)?;
            let values: Vec<f64> =
                data::from_tensor(&lp.unsqueeze(1))?.data.iter().zip(&shift).map(|(v, s)| v + s).collect();
            let path = dir.join("density.png");
            plot::density(&path, &self.titled("Density p(x)"), &Grid { x, y, nx, ny, values }, overlay)?;
            written.push(path);
        }
        Ok(written)
    }
}
