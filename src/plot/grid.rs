//! A grid of small images as one PNG: samples, test images beside their reconstructions, latent
//! interpolations. Each image is drawn pixel by pixel, enlarged to a readable size, grey for one
//! channel and RGB for three (other channel counts show their first channel).
use super::{render, title_band, FONT, LEGEND_SIZE};
use crate::error::{Error, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Space between images and around the grid, in pixels.
const GAP: u32 = 6;
/// Width of the band of row labels, in pixels (when there are labels).
const LABEL_BAND: u32 = 150;
/// The largest side of the figure, in pixels.
const MAX_SIDE: u32 = 4000;

/// Draws `rows` of images (each `c·h·w` values in `[0, 1]`, channel-major, `shape = [c, h, w]`)
/// to the PNG file `path`, one grid row per entry, with an optional label to the left of each row.
/// Values outside `[0, 1]` are clamped, non-finite ones drawn red.
pub fn image_grid(
    path: &Path,
    title: &str,
    shape: [usize; 3],
    rows: &[Vec<Vec<f64>>],
    labels: Option<&[String]>,
) -> Result<()> {
    let [c, h, w] = shape;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    if c == 0 || h == 0 || w == 0 || cols == 0 || rows.is_empty() {
        return Err(Error::Plot(format!("{}: no images to draw", path.display())));
    }
    if let Some(bad) = rows.iter().flatten().find(|img| img.len() != c * h * w) {
        return Err(Error::Plot(format!(
            "{}: an image of {} values for {c} × {h} × {w}",
            path.display(),
            bad.len()
        )));
    }
    // pixels per image pixel: images about 72 px on their longer side, at least 1
    let scale = (72 / h.max(w)).max(1) as u32;
    let (cell_w, cell_h) = (w as u32 * scale + GAP, h as u32 * scale + GAP);
    let band = if labels.is_some() { LABEL_BAND } else { 0 };
    let width = (band + GAP + cols as u32 * cell_w).max(400);
    let height = super::TITLE_BAND + GAP + rows.len() as u32 * cell_h;
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::Plot(format!(
            "{}: {} rows of {cols} images of {h} × {w} make a {width} × {height} figure, larger than {MAX_SIDE}",
            path.display(),
            rows.len()
        )));
    }
    render(path, (width, height), |root| {
        let area = title_band(root, title)?;
        for (r, row) in rows.iter().enumerate() {
            let y0 = (GAP + r as u32 * cell_h) as i32;
            if let Some(text) = labels.and_then(|l| l.get(r)) {
                let style = TextStyle::from((FONT, LEGEND_SIZE).into_font())
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Center));
                area.draw_text(text, &style, ((band - 8) as i32, y0 + (cell_h as i32 - GAP as i32) / 2))?;
            }
            for (k, img) in row.iter().enumerate() {
                let x0 = (band + GAP + k as u32 * cell_w) as i32;
                for y in 0..h {
                    for x in 0..w {
                        let at = |ch: usize| img[(ch.min(c - 1)) * h * w + y * w + x];
                        let colour = if c == 3 { rgb(at(0), at(1), at(2)) } else { rgb(at(0), at(0), at(0)) };
                        let (px, py) = (x0 + (x as u32 * scale) as i32, y0 + (y as u32 * scale) as i32);
                        area.draw(&Rectangle::new(
                            [(px, py), (px + scale as i32, py + scale as i32)],
                            colour.filled(),
                        ))?;
                    }
                }
            }
        }
        Ok(())
    })
}

/// The colour of channel values in `[0, 1]` (red where one is not finite).
fn rgb(r: f64, g: f64, b: f64) -> RGBColor {
    if !(r.is_finite() && g.is_finite() && b.is_finite()) {
        return RGBColor(220, 0, 0);
    }
    let byte = |v: f64| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    RGBColor(byte(r), byte(g), byte(b))
}
