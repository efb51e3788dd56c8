//! The figures of a flow of images (`rnvp train --plot-dir`, `rnvp plot`): samples `F⁻¹(T·z)`
//! at a temperature `T` (Glow's), images beside their reconstructions `F⁻¹(F(x))`, latent
//! interpolations between pairs of images (test images for `plot --data`, the held-out ones for
//! `train --plot-dir`), and the loss curve in bits per dimension.
use crate::data::{ImageSpace, Images, Rng};
use crate::error::Result;
use crate::plot;
use crate::run::Run;
use crate::train::TrainReport;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Images per row of a grid.
pub const PER_ROW: usize = 10;
/// The most images a grid shows.
pub const GRID_MAX: usize = 100;
/// Steps of an interpolation, its ends included.
const STEPS: usize = 10;

/// What to draw.
pub struct ImageFigures<'a> {
    /// The flow and the engine that runs it.
    pub flow: Run<'a>,
    /// How images reach the flow.
    pub space: &'a ImageSpace,
    /// Images to reconstruct and interpolate between (test or validation images).
    pub images: Option<&'a Images>,
    /// The training run, for the loss curve.
    pub report: Option<&'a TrainReport>,
    /// Appended to each title.
    pub label: &'a str,
    /// The samples' temperature: `z ~ N(0, T²I)`.
    pub temperature: f64,
    /// Samples drawn (rows of [`PER_ROW`]).
    pub n_samples: usize,
    /// Seed of the dequantization noise of the reconstructed images.
    pub seed: u64,
}

impl ImageFigures<'_> {
    fn titled(&self, t: &str) -> String {
        if self.label.is_empty() {
            t.to_string()
        } else {
            format!("{t} ({})", self.label)
        }
    }

    fn shape(&self) -> [usize; 3] {
        [self.space.channels, self.space.height, self.space.width]
    }

    /// The flow's rows as images in `[0, 1]`, one `Vec` each.
    fn pictures(&self, ys: &Tensor) -> Result<Vec<Vec<f64>>> {
        let unit = self.space.to_unit(&crate::data::from_tensor(ys)?);
        Ok((0..unit.rows).map(|i| unit.row(i).to_vec()).collect())
    }

    /// `F⁻¹(T·z)` for `n` draws `z ~ N(0, I)` from libtorch's generator.
    fn samples(&self, n: usize) -> Result<Tensor> {
        let flow = self.flow.flow();
        let z = Tensor::randn([n as i64, flow.config().d], (flow.kind(), flow.device())) * self.temperature;
        self.flow.decode(&z)
    }

    /// Draws the figures into `dir` (created if needed) and returns the files written.
    pub fn draw(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| crate::error::io_err(dir, e))?;
        let mut written = vec![];
        if let Some(report) = self.report {
            let bpd = |nll: f64| self.space.bits_per_dim(nll);
            let train: Vec<f64> = report.losses.iter().map(|&l| bpd(l)).collect();
            let val: Vec<(usize, f64)> = report.val.iter().map(|&(s, v)| (s, bpd(v))).collect();
            let uniform = f64::from(self.space.levels).log2();
            let path = dir.join("loss.png");
            let floor = format!("uniform: log₂ {} = {uniform:.2}", self.space.levels);
            plot::loss_curve(&path, &self.titled("Loss (bits/dim)"), &train, &val, Some((uniform, &floor)))?;
            written.push(path);
        }
        let n = self.n_samples.clamp(1, GRID_MAX);
        let samples = self.pictures(&self.samples(n)?)?;
        let rows: Vec<Vec<Vec<f64>>> = samples.chunks(PER_ROW).map(<[Vec<f64>]>::to_vec).collect();
        let path = dir.join("samples.png");
        let title = self.titled(&format!("Samples, temperature {}", self.temperature));
        plot::image_grid(&path, &title, self.shape(), &rows, None)?;
        written.push(path);
        let Some(images) = self.images.filter(|i| i.n >= 2) else { return Ok(written) };
        // reconstructions F⁻¹(F(x)) of the first test images, dequantized
        let k = images.n.min(PER_ROW);
        let (ys, _) = self.space.to_flow(&images.select(0..k).to_matrix(), &mut Rng::new(self.seed))?;
        let ys = crate::data::to_tensor(&ys, self.flow.flow().kind(), self.flow.flow().device())?;
        let back = self.flow.decode(&self.flow.encode(&ys)?)?;
        let err = (&back - &ys).abs().max().double_value(&[]);
        let rows = vec![self.pictures(&ys)?, self.pictures(&back)?];
        let labels = ["x (dequantized)".to_string(), "F⁻¹(F(x))".to_string()];
        let path = dir.join("reconstructions.png");
        let title = self.titled(&format!("Images and F⁻¹(F(x)): max |Δy| = {err:.1e}"));
        plot::image_grid(&path, &title, self.shape(), &rows, Some(&labels))?;
        written.push(path);
        // interpolations z(t) = (1 − t) F(a) + t F(b) between pairs of test images
        let pairs = (images.n / 2).min(3);
        let z_all = self.flow.encode(&crate::data::to_tensor(
            &self.space.to_flow(&images.select(0..2 * pairs).to_matrix(), &mut Rng::new(self.seed))?.0,
            self.flow.flow().kind(),
            self.flow.flow().device(),
        )?)?;
        let mut rows = vec![];
        for p in 0..pairs {
            let (a, b) = (z_all.get(2 * p as i64), z_all.get(2 * p as i64 + 1));
            let path_z: Vec<Tensor> = (0..STEPS)
                .map(|i| {
                    let t = i as f64 / (STEPS - 1) as f64;
                    (&a * (1.0 - t) + &b * t).unsqueeze(0)
                })
                .collect();
            rows.push(self.pictures(&self.flow.decode(&Tensor::cat(&path_z, 0))?)?);
        }
        let path = dir.join("interpolation.png");
        plot::image_grid(
            &path,
            &self.titled("Latent interpolation between images"),
            self.shape(),
            &rows,
            None,
        )?;
        written.push(path);
        Ok(written)
    }
}
