//! PNG figures: the training loss curve, point clouds and density heat maps.
//!
//! The figures are drawn with `plotters`' bitmap backend. Text uses the DejaVu Sans font embedded in
//! the binary (`src/plot/DejaVuSans.ttf`, licence in `src/plot/DejaVuSans-LICENSE.txt`), so no
//! system fonts are needed. Each file is written atomically: the figure is rendered to a temporary
//! PNG beside the target and renamed onto it once complete.
//!
//! The functions never panic on data: non-finite values are skipped, empty inputs give an empty
//! (but labelled) figure, and axis ranges are chosen robustly so that a few outliers or a huge
//! early loss do not squash the rest of the figure.
//!
//! ```no_run
//! use rnvp::plot;
//! let train = vec![3.0, 2.0, 1.5, 1.4];
//! let path = std::path::Path::new("loss.png");
//! plot::loss_curve(path, "Model Loss vs Epoch", &train, &[(4, 1.45)], Some((1.131, "entropy 1.131")))?;
//! # Ok::<(), rnvp::Error>(())
//! ```
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{io_err, Error, Result};

mod grid;
pub use grid::image_grid;

/// The font family name the embedded font is registered under.
const FONT: &str = "sans-serif";
/// DejaVu Sans (Bitstream Vera licence, see `DejaVuSans-LICENSE.txt` beside it).
static FONT_BYTES: &[u8] = include_bytes!("DejaVuSans.ttf");

const TITLE_SIZE: u32 = 30;
const DESC_SIZE: u32 = 22;
const TICK_SIZE: u32 = 18;
const LEGEND_SIZE: u32 = 18;
/// Height of the band at the top that holds the title.
const TITLE_BAND: u32 = 64;
/// Text colour of notes.
const GREY: RGBAColor = RGBAColor(0, 0, 0, 0.6);

/// Distinct colours for point sets and lines (matplotlib's "tab10").
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A regular grid of values over a rectangle (cell centres), row-major: `values[iy * nx + ix]`.
///
/// Cell `(ix, iy)` covers `[x.0 + ix·dx, x.0 + (ix+1)·dx] × [y.0 + iy·dy, y.0 + (iy+1)·dy]` with
/// `dx = (x.1 − x.0) / nx`, `dy = (y.1 − y.0) / ny`; [`Grid::points`] lists the cell centres in the
/// order of `values`.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// The x range `(left, right)` of the rectangle.
    pub x: (f64, f64),
    /// The y range `(bottom, top)` of the rectangle.
    pub y: (f64, f64),
    /// The number of cells along x.
    pub nx: usize,
    /// The number of cells along y.
    pub ny: usize,
    /// One value per cell, `values[iy * nx + ix]` (for [`density`]: log-densities).
    pub values: Vec<f64>,
}

impl Grid {
    /// The cell centres of an `nx × ny` grid over `x × y`, in the order [`Grid::values`] uses:
    /// `points[iy * nx + ix] = [x.0 + (ix + ½)·dx, y.0 + (iy + ½)·dy]`.
    pub fn points(x: (f64, f64), y: (f64, f64), nx: usize, ny: usize) -> Vec<[f64; 2]> {
        let dx = (x.1 - x.0) / nx.max(1) as f64;
        let dy = (y.1 - y.0) / ny.max(1) as f64;
        let mut points = Vec::with_capacity(nx.saturating_mul(ny));
        for iy in 0..ny {
            let cy = y.0 + (iy as f64 + 0.5) * dy;
            for ix in 0..nx {
                points.push([x.0 + (ix as f64 + 0.5) * dx, cy]);
            }
        }
        points
    }
}

/// Draws a training loss curve to the PNG file `path` (1000×700 px).
///
/// `train[i]` is the training loss at step `i + 1`; it is drawn as a thin line with a bolder
/// trailing moving average on top (over up to 50 steps, of the values clipped to the plotted
/// range, so one huge spike does not dominate it). `val` holds `(step, validation loss)` pairs,
/// drawn as markers joined by a line. `floor` is an optional dashed horizontal reference line
/// with its legend label (e.g. the data's entropy). The x axis is "step", the y axis
/// "loss (nats)".
///
/// Non-finite values are skipped. The y range is robust: it covers the later 90 % of the steps
/// (minimum to 99th percentile), their validation losses and the floor, extended towards the
/// early (spike-filtered) losses by at most 1.5 times that span, so a huge initial loss does not
/// flatten the converged part. Values beyond the range are drawn at its edge, and the legend
/// says how many there are.
pub fn loss_curve(
    path: &Path,
    title: &str,
    train: &[f64],
    val: &[(usize, f64)],
    floor: Option<(f64, &str)>,
) -> Result<()> {
    let y_range = loss_y_range(train, val, floor.map(|f| f.0));
    let y_range = match y_range {
        Some((lo, hi)) => Some(nice_range(lo, hi, 0.06).ok_or_else(|| too_large(path))?),
        None => None,
    };
    render(path, (1000, 700), |root| draw_loss(root, title, train, val, floor, y_range))
}

/// Draws one or more named point sets as a scatter plot to the PNG file `path` (900×960 px).
///
/// Each set gets its own colour (small, slightly transparent filled circles, so dense areas
/// show) and a legend entry. The plot is square with the same span on both axes; the range
/// covers the bulk of all finite points (0.5th to 99.5th percentile per axis, widened), so a few
/// far outliers do not shrink everything else; the legend counts points left outside the view.
/// Non-finite points are skipped.
pub fn scatter(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    sets: &[(&str, &[[f64; 2]])],
) -> Result<()> {
    let (xr, yr) = scatter_range(sets).ok_or_else(|| too_large(path))?;
    render(path, (SQUARE_W, SQUARE_H), |root| draw_scatter(root, title, x_label, y_label, sets, xr, yr))
}

/// Draws a density heat map to the PNG file `path` (1000×960 px), with `overlay` points on top.
///
/// `grid.values` are log-densities; each cell is filled with the colour (viridis) of the density
/// `exp(value)` on a linear scale from 0 to the grid's maximum, shown by a colour bar. Non-finite
/// log-densities count as density 0. The axes span the grid's rectangle. Overlay points are drawn
/// small and semi-transparent, white over dark cells and black over bright ones; points outside
/// the rectangle or non-finite are skipped. `quantity` names the density over the colour bar
/// (`p(x)`, `p(x | c)`).
///
/// Returns [`Error::Plot`] when the grid is malformed: no cells, `values.len() != nx·ny`, or a
/// rectangle that is empty or not finite.
pub fn density(path: &Path, title: &str, quantity: &str, grid: &Grid, overlay: &[[f64; 2]]) -> Result<()> {
    let (x, y) = (grid.x, grid.y);
    let ok_range = |r: (f64, f64)| r.0.is_finite() && r.1.is_finite() && r.0 < r.1 && nice_span(r.0, r.1);
    if grid.nx == 0 || grid.ny == 0 {
        return Err(Error::Plot(format!("{}: the density grid has no cells", path.display())));
    }
    if grid.nx.checked_mul(grid.ny) != Some(grid.values.len()) {
        return Err(Error::Plot(format!(
            "{}: the density grid has {} values for {}×{} cells",
            path.display(),
            grid.values.len(),
            grid.nx,
            grid.ny
        )));
    }
    if !ok_range(x) || !ok_range(y) {
        return Err(Error::Plot(format!(
            "{}: the density grid's rectangle {x:?} × {y:?} is empty or not finite",
            path.display()
        )));
    }
    render(path, (1000, SQUARE_H), |root| draw_density(root, title, quantity, grid, overlay))
}

// ---------------------------------------------------------------------------------------------
// Rendering and files

/// The drawing error of a backend.
type DrawErr<DB> = DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>;

/// Registers the embedded font once; reports whether that worked.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Plot("the embedded font DejaVuSans.ttf could not be loaded".into()))
    }
}

/// A fresh temporary file name beside `path`, ending in `.png` (the encoder follows the extension).
fn temp_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::Plot(format!("{:?} is not a file path", path.display().to_string())))?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{name}.tmp-{}-{n}.png", std::process::id());
    Ok(match path.parent() {
        Some(dir) => dir.join(tmp),
        None => PathBuf::from(tmp),
    })
}

/// Renders a `size` figure with `draw` on a white background and moves it onto `path` atomically.
fn render<F>(path: &Path, size: (u32, u32), draw: F) -> Result<()>
where
    F: for<'a> FnOnce(
        &DrawingArea<BitMapBackend<'a>, Shift>,
    ) -> std::result::Result<(), DrawErr<BitMapBackend<'a>>>,
{
    ensure_font()?;
    let tmp = temp_path(path)?;
    // Creating the file first turns a missing directory or a read-only one into a plain I/O error.
    std::fs::File::create(&tmp).map_err(|e| io_err(path, e))?;
    let drawn = {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).and_then(|()| draw(&root)).and_then(|()| root.present()).map_err(|e| e.to_string())
        // `root` is dropped here; after a failure it may write the file once more, so the
        // temporary file is removed only after this block.
    };
    let moved = match drawn {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| io_err(path, e)),
        Err(e) => Err(Error::Plot(format!("{}: {e}", path.display()))),
    };
    if moved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    moved
}

fn too_large(path: &Path) -> Error {
    Error::Plot(format!("{}: values too large to plot", path.display()))
}

/// Draws the title centred in the top band (shrunk to fit the width) and returns the area below.
fn title_band<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
) -> std::result::Result<DrawingArea<DB, Shift>, DrawErr<DB>> {
    let (top, rest) = root.split_vertically(TITLE_BAND);
    let width = top.dim_in_pixel().0;
    let mut size = TITLE_SIZE;
    let mut style = TextStyle::from((FONT, size).into_font());
    while size > 12 && top.estimate_text_size(title, &style)?.0 + 20 > width {
        size -= 2;
        style = TextStyle::from((FONT, size).into_font());
    }
    let style = style.color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
    top.draw_text(title, &style, (width as i32 / 2, TITLE_BAND as i32 / 2 + 4))?;
    Ok(rest)
}

/// Text in the legend font.
fn legend_font() -> TextStyle<'static> {
    TextStyle::from((FONT, LEGEND_SIZE).into_font())
}

/// A note in the middle of an empty plot.
fn draw_note<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
) -> std::result::Result<(), DrawErr<DB>> {
    let (w, h) = area.dim_in_pixel();
    let style =
        TextStyle::from((FONT, DESC_SIZE).into_font()).color(&GREY).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw_text(text, &style, (w as i32 / 2, h as i32 / 2))
}

// ---------------------------------------------------------------------------------------------
// Loss curve

/// The robust y range of a loss curve (before padding), `None` when there is no finite value.
///
/// The core is the later 90 % of the training steps (minimum to 99th percentile), their
/// validation losses and the floor. It is extended towards the early part of the run (spikes
/// removed by a 5-step running median, plus all validation losses) by at most 1.5 times its own
/// span on either side, so a high start stays visible unless it would squash the rest.
fn loss_y_range(train: &[f64], val: &[(usize, f64)], floor: Option<f64>) -> Option<(f64, f64)> {
    let skip = train.len() / 10;
    let finite_val = || val.iter().map(|v| v.1).filter(|v| v.is_finite());
    let mut later: Vec<f64> = train[skip..].iter().copied().filter(|v| v.is_finite()).collect();
    if later.is_empty() {
        later = train.iter().copied().filter(|v| v.is_finite()).collect();
    }
    later.sort_by(f64::total_cmp);
    let (mut lo, mut hi) = match later.first() {
        Some(&first) => (first, quantile(&later, 0.99)),
        None => (f64::INFINITY, f64::NEG_INFINITY),
    };
    // Validation losses of the later part (all of them when there is no training loss).
    for &(_, v) in val.iter().filter(|(s, v)| v.is_finite() && (*s > skip || later.is_empty())) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if let Some(f) = floor.filter(|f| f.is_finite()) {
        lo = lo.min(f);
        hi = hi.max(f);
    }
    if lo > hi {
        // Only early validation losses are finite.
        lo = finite_val().fold(f64::INFINITY, f64::min);
        hi = finite_val().fold(f64::NEG_INFINITY, f64::max);
        return (lo <= hi).then_some((lo, hi));
    }
    let smooth = running_median(train, 2);
    let finite_all = || smooth.iter().copied().filter(|v| v.is_finite()).chain(finite_val());
    let all_hi = finite_all().fold(f64::NEG_INFINITY, f64::max);
    let all_lo = finite_all().fold(f64::INFINITY, f64::min);
    let reach = 1.5 * (hi - lo);
    Some((lo.min(all_lo.max(lo - reach)), hi.max(all_hi.min(hi + reach))))
}

/// The median of the finite values within `half` steps of each step (NaN where there are none).
fn running_median(values: &[f64], half: usize) -> Vec<f64> {
    let mut window = Vec::with_capacity(2 * half + 1);
    (0..values.len())
        .map(|i| {
            window.clear();
            let end = (i + half + 1).min(values.len());
            window.extend(values[i.saturating_sub(half)..end].iter().copied().filter(|v| v.is_finite()));
            window.sort_by(f64::total_cmp);
            match window.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => window[n / 2],
                n => (window[n / 2 - 1] + window[n / 2]) / 2.0,
            }
        })
        .collect()
}

/// Trailing moving average over `w` steps of the finite values (NaN where fewer than half are).
fn moving_average(values: &[f64], w: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    let (mut sum, mut count) = (0.0, 0usize);
    for (i, &v) in values.iter().enumerate() {
        if v.is_finite() {
            sum += v;
            count += 1;
        }
        if i >= w {
            let old = values[i - w];
            if old.is_finite() {
                sum -= old;
                count -= 1;
            }
        }
        let mean = if i + 1 >= w && 2 * count >= w { sum / count as f64 } else { f64::NAN };
        out.push(mean);
    }
    out
}

/// The finite `(x, y)` points (non-finite ones skipped), with `y` clamped into `[lo, hi]`.
fn finite_clamped(points: impl Iterator<Item = (f64, f64)>, lo: f64, hi: f64) -> Vec<(f64, f64)> {
    points.filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| (x, y.clamp(lo, hi))).collect()
}

fn draw_loss<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    train: &[f64],
    val: &[(usize, f64)],
    floor: Option<(f64, &str)>,
    y_range: Option<(f64, f64)>,
) -> std::result::Result<(), DrawErr<DB>> {
    let area = title_band(root, title)?;
    let max_step = val.iter().map(|v| v.0).max().unwrap_or(0).max(train.len());
    let x_hi = if max_step >= 10 { max_step as f64 } else { max_step as f64 + 1.0 };
    let (y_lo, y_hi) = y_range.unwrap_or((0.0, 1.0));
    let y_decimals = decimals(y_hi - y_lo, 10);
    let mut chart = ChartBuilder::on(&area)
        .margin_left(10)
        .margin_right(30)
        .margin_bottom(10)
        .x_label_area_size(70)
        .y_label_area_size(100)
        .build_cartesian_2d(0.0..x_hi, y_lo..y_hi)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (nats)")
        .axis_desc_style((FONT, DESC_SIZE))
        .label_style((FONT, TICK_SIZE))
        .x_labels(10)
        .y_labels(10)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| fixed_label(*v, y_decimals))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    if y_range.is_none() {
        draw_note(&chart.plotting_area().strip_coord_spec(), "no finite loss values")?;
        return Ok(());
    }

    let train_colour = PALETTE[0];
    // A moving average (drawn bold) once there are enough steps; the raw loss is then drawn thin.
    let w = (train.len() / 10).min(50);
    let thin = if w >= 3 { train_colour.mix(0.35).stroke_width(1) } else { train_colour.stroke_width(2) };
    let steps = || (1..).map(|s| s as f64);
    let line = finite_clamped(steps().zip(train.iter().copied()), y_lo, y_hi);
    if train.len() <= 50 {
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, train_colour.filled())))?;
    }
    if !line.is_empty() {
        chart
            .draw_series(LineSeries::new(line, thin))?
            .label("training loss")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], thin));
    }

    if w >= 3 {
        let bold = train_colour.stroke_width(3);
        // Averaged after clipping to the plotted range, so that one huge spike does not dominate it.
        let clipped: Vec<f64> =
            train.iter().map(|v| if v.is_finite() { v.clamp(y_lo, y_hi) } else { f64::NAN }).collect();
        let ma = moving_average(&clipped, w);
        let ma = finite_clamped(steps().zip(ma), y_lo, y_hi);
        if !ma.is_empty() {
            chart
                .draw_series(LineSeries::new(ma, bold))?
                .label(format!("training loss, {w}-step average"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], bold));
        }
    }

    let mut val_points: Vec<(f64, f64)> =
        val.iter().filter(|(_, v)| v.is_finite()).map(|&(s, v)| (s as f64, v.clamp(y_lo, y_hi))).collect();
    val_points.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !val_points.is_empty() {
        let colour = PALETTE[1];
        let line = colour.stroke_width(2);
        chart.draw_series(LineSeries::new(val_points.iter().copied(), line))?;
        chart
            .draw_series(val_points.iter().map(|&p| Circle::new(p, 5, colour.filled())))?
            .label("validation loss")
            .legend(move |(x, y)| {
                EmptyElement::at((x + 12, y))
                    + PathElement::new([(-12, 0), (12, 0)], line)
                    + Circle::new((0, 0), 5, colour.filled())
            });
    }

    if let Some((f, label)) = floor.filter(|f| f.0.is_finite()) {
        let dashed = BLACK.mix(0.75).stroke_width(2);
        chart.draw_series(DashedLineSeries::new([(0.0, f), (x_hi, f)], 10, 6, dashed))?.label(label).legend(
            move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (9, 0)], dashed)
                    + PathElement::new([(15, 0), (24, 0)], dashed)
            },
        );
    }

    let clipped = |v: &f64| v.is_finite() && (*v > y_hi || *v < y_lo);
    let n_clipped =
        train.iter().filter(|v| clipped(v)).count() + val.iter().filter(|v| clipped(&v.1)).count();
    if n_clipped > 0 {
        let finite = || train.iter().chain(val.iter().map(|v| &v.1)).copied().filter(|v| v.is_finite());
        let max = finite().fold(f64::NEG_INFINITY, f64::max);
        let min = finite().fold(f64::INFINITY, f64::min);
        let what = if n_clipped == 1 { "1 value".to_string() } else { format!("{n_clipped} values") };
        let extreme = match (max > y_hi, min < y_lo) {
            (true, true) => format!(" (min {}, max {})", tick_label(min), tick_label(max)),
            (true, false) => format!(" (max {})", tick_label(max)),
            _ => format!(" (min {})", tick_label(min)),
        };
        let text = format!("{what} beyond the y range, drawn at its edge{extreme}");
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), u32>>())?
            .label(text)
            .legend(|(x, y)| Text::new("↕", (x + 6, y - 10), legend_font().color(&GREY)));
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(12)
        .legend_area_size(34)
        .label_font(legend_font())
        .background_style(WHITE.mix(0.88))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scatter

/// Figure size of the square plots (scatter; the density plot is wider by its colour bar).
const SQUARE_W: u32 = 900;
const SQUARE_H: u32 = 960;
/// Layout of a square plot area of `SQUARE_W − Y_LABELS − LEFT − RIGHT` px.
const Y_LABELS: u32 = 100;
const X_LABELS: u32 = 80;
const LEFT: u32 = 10;
const RIGHT: u32 = 30;
/// The plot's side: the top margin follows from it.
const SIDE: u32 = SQUARE_W - Y_LABELS - LEFT - RIGHT;
const BOTTOM: u32 = 20;
const TOP: u32 = SQUARE_H - TITLE_BAND - X_LABELS - BOTTOM - SIDE;

/// An axis range `(from, to)`.
type Span = (f64, f64);

/// The square view of a scatter plot: `None` when the values are too large to plot.
fn scatter_range(sets: &[(&str, &[[f64; 2]])]) -> Option<(Span, Span)> {
    let finite = || sets.iter().flat_map(|s| s.1.iter()).filter(|p| p[0].is_finite() && p[1].is_finite());
    let mut xs: Vec<f64> = finite().map(|p| p[0]).collect();
    let mut ys: Vec<f64> = finite().map(|p| p[1]).collect();
    if xs.is_empty() {
        return Some(((-1.0, 1.0), (-1.0, 1.0)));
    }
    xs.sort_by(f64::total_cmp);
    ys.sort_by(f64::total_cmp);
    // The bulk: the 0.5th to 99.5th percentile, within 8 interquartile ranges of the median (for
    // few points), extended to the extremes when they are near it.
    let bulk = |v: &[f64]| {
        let (mut lo, mut hi) = (quantile(v, 0.005), quantile(v, 0.995));
        let (median, iqr) = (quantile(v, 0.5), quantile(v, 0.75) - quantile(v, 0.25));
        if iqr > 0.0 {
            lo = lo.max(median - 8.0 * iqr);
            hi = hi.min(median + 8.0 * iqr);
        }
        // The data within those bounds (the median always is) and within half their span of them.
        let within = |lo: f64, hi: f64| {
            let first = v.iter().copied().find(|&x| x >= lo).unwrap_or(v[0]);
            let last = v.iter().rev().copied().find(|&x| x <= hi).unwrap_or(v[v.len() - 1]);
            (first, last)
        };
        let (lo, hi) = within(lo, hi);
        let reach = 0.5 * (hi - lo);
        within(lo - reach, hi + reach)
    };
    let (bx, by) = (bulk(&xs), bulk(&ys));
    let span = (bx.1 - bx.0).max(by.1 - by.0) * 1.1;
    let (cx, cy) = ((bx.0 + bx.1) / 2.0, (by.0 + by.1) / 2.0);
    let (cx, cy, span) = if span.is_finite() && cx.is_finite() && cy.is_finite() {
        (cx, cy, span)
    } else {
        return None;
    };
    // Too small a span (all points equal): a unit-ish square around them.
    let mag = cx.abs().max(cy.abs());
    let min_span = (mag * 1e-6).max(1e-9);
    let span = if span < min_span { (mag * 0.1).max(1.0) } else { span };
    let xr = (cx - span / 2.0, cx + span / 2.0);
    let yr = (cy - span / 2.0, cy + span / 2.0);
    (nice_span(xr.0, xr.1) && nice_span(yr.0, yr.1)).then_some((xr, yr))
}

#[allow(clippy::too_many_arguments)]
fn draw_scatter<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    sets: &[(&str, &[[f64; 2]])],
    xr: (f64, f64),
    yr: (f64, f64),
) -> std::result::Result<(), DrawErr<DB>> {
    let area = title_band(root, title)?;
    let (x_decimals, y_decimals) = (decimals(xr.1 - xr.0, 9), decimals(yr.1 - yr.0, 9));
    let mut chart = ChartBuilder::on(&area)
        .margin_top(TOP)
        .margin_bottom(BOTTOM)
        .margin_left(LEFT)
        .margin_right(RIGHT)
        .x_label_area_size(X_LABELS)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style((FONT, DESC_SIZE))
        .label_style((FONT, TICK_SIZE))
        .x_labels(9)
        .y_labels(9)
        .x_label_formatter(&|v| fixed_label(*v, x_decimals))
        .y_label_formatter(&|v| fixed_label(*v, y_decimals))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;

    let inside = |p: &[f64; 2]| p[0] >= xr.0 && p[0] <= xr.1 && p[1] >= yr.0 && p[1] <= yr.1;
    let total: usize = sets.iter().map(|s| s.1.len()).sum();
    let (radius, alpha) = match total {
        0..=2_000 => (3, 0.7),
        2_001..=20_000 => (2, 0.5),
        _ => (2, 0.3),
    };
    for (i, &(name, points)) in sets.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let style = colour.mix(alpha).filled();
        let shown = points.iter().filter(|p| inside(p));
        let n_shown = shown.clone().count();
        let n_finite = points.iter().filter(|p| p[0].is_finite() && p[1].is_finite()).count();
        let mut notes = vec![format!("n = {}", points.len())];
        if n_shown < n_finite {
            notes.push(format!("{} outside the view", n_finite - n_shown));
        }
        if n_finite < points.len() {
            notes.push(format!("{} not finite", points.len() - n_finite));
        }
        let label = format!("{name} ({})", notes.join("; ")).trim_start().to_string();
        chart
            .draw_series(shown.map(|p| Circle::new((p[0], p[1]), radius, style)))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
    }
    if !sets.iter().flat_map(|s| s.1.iter()).any(|p| p[0].is_finite() && p[1].is_finite()) {
        draw_note(&chart.plotting_area().strip_coord_spec(), "no points")?;
    }
    if !sets.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .margin(12)
            .legend_area_size(26)
            .label_font(legend_font())
            .background_style(WHITE.mix(0.88))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Density

/// Width of the colour bar strip right of the density plot.
const BAR_STRIP: u32 = 100;

fn draw_density<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    quantity: &str,
    grid: &Grid,
    overlay: &[[f64; 2]],
) -> std::result::Result<(), DrawErr<DB>> {
    let area = title_band(root, title)?;
    let (main, strip) = area.split_horizontally(area.dim_in_pixel().0 - BAR_STRIP);
    let (x, y) = (grid.x, grid.y);
    let (x_decimals, y_decimals) = (decimals(x.1 - x.0, 9), decimals(y.1 - y.0, 9));
    let mut chart = ChartBuilder::on(&main)
        .margin_top(TOP)
        .margin_bottom(BOTTOM)
        .margin_left(LEFT)
        .margin_right(RIGHT)
        .x_label_area_size(X_LABELS)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;

    // Colour t = p / p_max = exp(log p − max log p), in [0, 1].
    let max_log = grid.values.iter().copied().filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    let level = |v: f64| if v.is_finite() && max_log.is_finite() { (v - max_log).exp() } else { 0.0 };
    let (dx, dy) = ((x.1 - x.0) / grid.nx as f64, (y.1 - y.0) / grid.ny as f64);
    let cells = grid.values.iter().enumerate().map(|(i, &v)| {
        let (ix, iy) = ((i % grid.nx) as f64, (i / grid.nx) as f64);
        let corners = [(x.0 + ix * dx, y.0 + iy * dy), (x.0 + (ix + 1.0) * dx, y.0 + (iy + 1.0) * dy)];
        Rectangle::new(corners, ViridisRGB::get_color(level(v)).filled())
    });
    chart.draw_series(cells)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("x₀")
        .y_desc("x₁")
        .axis_desc_style((FONT, DESC_SIZE))
        .label_style((FONT, TICK_SIZE))
        .x_labels(9)
        .y_labels(9)
        .x_label_formatter(&|v| fixed_label(*v, x_decimals))
        .y_label_formatter(&|v| fixed_label(*v, y_decimals))
        .draw()?;

    let cell_level = |p: &[f64; 2]| {
        let ix = (((p[0] - x.0) / dx) as usize).min(grid.nx - 1);
        let iy = (((p[1] - y.0) / dy) as usize).min(grid.ny - 1);
        level(grid.values[iy * grid.nx + ix])
    };
    let inside = |p: &&[f64; 2]| p[0] >= x.0 && p[0] <= x.1 && p[1] >= y.0 && p[1] <= y.1;
    let (radius, alpha) = if overlay.len() > 5_000 { (1, 0.5) } else { (2, 0.55) };
    chart.draw_series(overlay.iter().filter(inside).map(|p| {
        let colour = if cell_level(p) > 0.55 { BLACK } else { WHITE };
        Circle::new((p[0], p[1]), radius, colour.mix(alpha).filled())
    }))?;

    // The colour bar, aligned with the plot area.
    let (_, plot_y) = chart.plotting_area().get_pixel_range();
    let strip_y0 = strip.get_pixel_range().1.start;
    let (top, bottom) = (plot_y.start - strip_y0, plot_y.end - strip_y0);
    let p_max = max_log.exp();
    let bar_x = (0, 26);
    let steps = 256;
    let height = (bottom - top).max(1) as f64;
    strip.draw(&Rectangle::new([(bar_x.0, top), (bar_x.1, bottom)], BLACK.stroke_width(1)))?;
    for k in 0..steps {
        let y0 = bottom as f64 - height * k as f64 / steps as f64;
        let y1 = bottom as f64 - height * (k + 1) as f64 / steps as f64;
        let colour = ViridisRGB::get_color((k as f64 + 0.5) / steps as f64);
        strip.draw(&Rectangle::new(
            [(bar_x.0, y1.round() as i32), (bar_x.1, y0.round() as i32)],
            colour.filled(),
        ))?;
    }
    strip.draw(&Rectangle::new([(bar_x.0, top), (bar_x.1, bottom)], BLACK.mix(0.6).stroke_width(1)))?;
    let tick_font =
        TextStyle::from((FONT, TICK_SIZE - 2).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    if p_max.is_finite() && p_max > 0.0 {
        let ticks = nice_ticks(0.0, p_max, 6);
        let d = decimals(ticks.get(1).copied().unwrap_or(p_max), 1);
        for t in ticks {
            let py = bottom - ((t / p_max) * height).round() as i32;
            strip.draw(&PathElement::new([(bar_x.1, py), (bar_x.1 + 5, py)], BLACK.stroke_width(1)))?;
            strip.draw_text(&fixed_label(t, d), &tick_font, (bar_x.1 + 8, py))?;
        }
    } else {
        strip.draw_text("0", &tick_font, (bar_x.1 + 8, bottom))?;
    }
    let caption = TextStyle::from((FONT, TICK_SIZE).into_font()).pos(Pos::new(HPos::Left, VPos::Bottom));
    strip.draw_text(quantity, &caption, (bar_x.0, top - 12))?;
    let max_text = if p_max.is_finite() {
        format!("max {}", tick_label(p_max))
    } else if max_log.is_finite() {
        format!("max e^{}", tick_label(max_log))
    } else {
        "no finite density".to_string()
    };
    let small = TextStyle::from((FONT, TICK_SIZE - 4).into_font()).pos(Pos::new(HPos::Left, VPos::Top));
    strip.draw_text(&max_text, &small, (bar_x.0, bottom + 12))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Numbers

/// The `q`-quantile of sorted finite values (linear interpolation); `sorted` must not be empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match sorted.get(i + 1) {
        Some(&next) if frac > 0.0 => sorted[i] + frac * (next - sorted[i]),
        _ => sorted[i],
    }
}

/// Whether `lo..hi` is a range plotters can put ticks on (finite, wide enough for its magnitude).
fn nice_span(lo: f64, hi: f64) -> bool {
    let span = hi - lo;
    let mag = lo.abs().max(hi.abs());
    span.is_finite() && mag < 1e300 && span >= (mag * 1e-7).max(1e-12)
}

/// `lo..hi` padded by `pad`·span on both sides; a degenerate range becomes one around its centre.
fn nice_range(lo: f64, hi: f64, pad: f64) -> Option<(f64, f64)> {
    let (lo, hi) = if nice_span(lo, hi) {
        let margin = (hi - lo) * pad;
        (lo - margin, hi + margin)
    } else {
        let c = (lo + hi) / 2.0;
        let half = (c.abs() * 0.05).max(0.5);
        (c - half, c + half)
    };
    nice_span(lo, hi).then_some((lo, hi))
}

/// About `n` round tick values (1, 2 or 5 × 10^k apart) within `[lo, hi]`.
fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) || n == 0 {
        return vec![];
    }
    let raw = span / n as f64;
    let base = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * base).find(|s| *s >= raw).unwrap_or(10.0 * base);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// The number of decimals that tells apart ticks about `span / labels` apart (`None`: too many).
fn decimals(span: f64, labels: usize) -> Option<usize> {
    let d = (-(span / labels.max(1) as f64).log10()).ceil();
    if !d.is_finite() || d > 6.0 {
        None
    } else {
        Some(d.max(0.0) as usize)
    }
}

/// A tick label with a fixed number of decimals (from [`decimals`]) so that an axis reads evenly.
fn fixed_label(v: f64, decimals: Option<usize>) -> String {
    match decimals {
        Some(d) if v.abs() < 1e6 => {
            let s = format!("{v:.d$}");
            // No "-0.0".
            if s.chars().all(|c| matches!(c, '-' | '0' | '.')) {
                s.trim_start_matches('-').to_string()
            } else {
                s
            }
        }
        _ => tick_label(v),
    }
}

/// A short tick label: up to 4 decimals without trailing zeros, scientific for extreme magnitudes.
fn tick_label(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{v:.2e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Line chart

/// Draws named series of `(x, y)` points as lines with markers to the PNG file `path`
/// (1000×700 px), for benchmark curves. Non-finite points are skipped; the ranges cover every
/// finite point (the y range starts at 0 when `y_from_zero`).
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &[(f64, f64)])],
    y_from_zero: bool,
) -> Result<()> {
    let finite: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let span = |f: &dyn Fn(&(f64, f64)) -> f64| {
        let lo = finite.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = finite.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() {
            (lo, hi)
        } else {
            (0.0, 1.0)
        }
    };
    let (x0, x1) = span(&|p| p.0);
    let (y0, y1) = span(&|p| p.1);
    let y0 = if y_from_zero { y0.min(0.0) } else { y0 };
    let x = nice_range(x0, x1, 0.04).ok_or_else(|| too_large(path))?;
    let y = nice_range(y0, y1, 0.08).ok_or_else(|| too_large(path))?;
    render(path, (1000, 700), |root| {
        let area = title_band(root, title)?;
        let y_decimals = decimals(y.1 - y.0, 10);
        let mut chart = ChartBuilder::on(&area)
            .margin_left(10)
            .margin_right(30)
            .margin_bottom(10)
            .x_label_area_size(70)
            .y_label_area_size(100)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .axis_desc_style((FONT, DESC_SIZE))
            .label_style((FONT, TICK_SIZE))
            .x_labels(10)
            .y_labels(10)
            .x_label_formatter(&|v| tick_label(*v))
            .y_label_formatter(&|v| fixed_label(*v, y_decimals))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(BLACK.mix(0.04))
            .draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> =
                points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
            chart
                .draw_series(LineSeries::new(pts, colour.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(legend_font())
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type LossCase = (Vec<f64>, Vec<(usize, f64)>);
    type Sets<'a> = Vec<(&'a str, &'a [[f64; 2]])>;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rnvp-plot-test-{}-{name}", std::process::id()))
    }

    /// Checks that a PNG was written (signature and size) and removes it.
    fn check_png(path: &Path, size: (u32, u32)) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), size);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn grid_points_are_row_major_cell_centres() {
        let p = Grid::points((0.0, 4.0), (-1.0, 1.0), 4, 2);
        assert_eq!(p.len(), 8);
        assert_eq!(p[0], [0.5, -0.5]);
        assert_eq!(p[1], [1.5, -0.5]);
        assert_eq!(p[3], [3.5, -0.5]);
        assert_eq!(p[4], [0.5, 0.5]);
        assert_eq!(p[2 + 4], [2.5, 0.5]);
        assert!(Grid::points((0.0, 1.0), (0.0, 1.0), 0, 5).is_empty());
    }

    #[test]
    fn loss_curve_edge_cases() {
        let path = tmp("loss.png");
        let cases: Vec<LossCase> = vec![
            (vec![], vec![]),
            (vec![1.0], vec![]),
            (vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY], vec![(1, f64::NAN)]),
            (vec![2.0; 500], vec![(100, 2.0), (200, 2.0)]),
            (vec![], vec![(10, 1.0), (20, 0.5)]),
            ((0..300).map(|i| if i % 7 == 0 { f64::NAN } else { 1e6 / (i as f64 + 1.0) }).collect(), vec![]),
        ];
        for (i, (train, val)) in cases.iter().enumerate() {
            let floor = if i % 2 == 0 { Some((f64::NAN, "nan floor")) } else { Some((1.0, "floor 1.0")) };
            loss_curve(&path, "edge", train, val, floor).unwrap();
            check_png(&path, (1000, 700));
        }
        loss_curve(&path, "edge", &[f64::NAN; 20], &[], None).unwrap();
        check_png(&path, (1000, 700));
        // A range that overflows cannot be drawn: an error, not a panic, and no file.
        let err = loss_curve(&path, "edge", &[1e308, -1e308, 1.0], &[], None).unwrap_err();
        assert!(matches!(err, Error::Plot(_)), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn scatter_edge_cases() {
        let path = tmp("scatter.png");
        let one = [[1.0, 2.0]];
        let same = [[3.0, 3.0]; 10];
        let bad = [[f64::NAN, 1.0], [f64::INFINITY, 0.0], [0.0, f64::NEG_INFINITY]];
        let mixed = [[0.0, 0.0], [1.0, 1.0], [1e12, -1e12], [f64::NAN, 0.0]];
        let huge = [[1e308, 1e308], [-1e308, -1e308]];
        let cases: Vec<Sets> = vec![
            vec![],
            vec![("empty", &[])],
            vec![("one", &one)],
            vec![("same", &same), ("one", &one)],
            vec![("bad", &bad)],
            vec![("mixed", &mixed), ("", &one)],
        ];
        for sets in &cases {
            scatter(&path, "edge", "x", "y", sets).unwrap();
            check_png(&path, (SQUARE_W, SQUARE_H));
        }
        // Values whose span overflows cannot be drawn: an error, not a panic.
        assert!(matches!(scatter(&path, "edge", "x", "y", &[("huge", &huge)]), Err(Error::Plot(_))));
        assert!(!path.exists());
    }

    #[test]
    fn density_edge_cases() {
        let path = tmp("density.png");
        let grid = |values: Vec<f64>| Grid { x: (-1.0, 1.0), y: (0.0, 2.0), nx: 3, ny: 2, values };
        let overlay = [[0.0, 1.0], [5.0, 5.0], [f64::NAN, 0.5], [-1.0, 0.0], [1.0, 2.0]];
        for values in [
            vec![0.0; 6],
            vec![f64::NAN; 6],
            vec![f64::NEG_INFINITY, f64::INFINITY, 1.0, 2.0, f64::NAN, -3.0],
            vec![800.0, 0.0, -800.0, 1.0, 2.0, 3.0],
        ] {
            density(&path, "edge", "p(x)", &grid(values), &overlay).unwrap();
            check_png(&path, (1000, SQUARE_H));
        }
        density(&path, "edge", "p(x)", &grid(vec![0.0; 6]), &[]).unwrap();
        check_png(&path, (1000, SQUARE_H));
        let bad = [
            Grid { x: (0.0, 1.0), y: (0.0, 1.0), nx: 0, ny: 0, values: vec![] },
            Grid { x: (0.0, 1.0), y: (0.0, 1.0), nx: 2, ny: 2, values: vec![0.0; 3] },
            Grid { x: (1.0, 1.0), y: (0.0, 1.0), nx: 1, ny: 1, values: vec![0.0] },
            Grid { x: (0.0, f64::NAN), y: (0.0, 1.0), nx: 1, ny: 1, values: vec![0.0] },
        ];
        for g in &bad {
            assert!(matches!(density(&path, "edge", "p(x)", g, &overlay), Err(Error::Plot(_))));
        }
        assert!(!path.exists());
    }

    #[test]
    fn missing_directory_is_an_io_error_naming_the_path() {
        let path = tmp("no-such-dir").join("loss.png");
        let err = loss_curve(&path, "t", &[1.0, 2.0], &[], None).unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
        let msg = err.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        let err = scatter(&path, "t", "x", "y", &[]).unwrap_err();
        assert!(err.to_string().contains("loss.png"));
    }

    #[test]
    fn files_are_replaced_and_no_temporary_files_remain() {
        let dir = tmp("dir");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fig.png");
        std::fs::write(&path, b"old").unwrap();
        scatter(&path, "t", "x", "y", &[("a", &[[0.0, 0.0], [1.0, 1.0]])]).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("fig.png")]);
        check_png(&path, (SQUARE_W, SQUARE_H));
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn numbers() {
        assert_eq!(tick_label(0.30000000000000004), "0.3");
        assert_eq!(tick_label(-0.0), "0");
        assert_eq!(tick_label(200.0), "200");
        assert_eq!(tick_label(1e-5), "1.00e-5");
        assert_eq!(fixed_label(1.4, decimals(2.2, 10)), "1.4");
        assert_eq!(fixed_label(2.0, decimals(2.2, 10)), "2.0");
        assert_eq!(fixed_label(-0.001, decimals(2.2, 10)), "0.0");
        assert_eq!(fixed_label(500.0, decimals(1000.0, 10)), "500");
        assert_eq!(fixed_label(0.05, decimals(0.4, 10)), "0.05");
        assert_eq!(nice_ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0], 0.99), 1.0);
        assert_eq!(moving_average(&[1.0, 3.0, f64::NAN, 5.0], 2)[1..], [2.0, 3.0, 5.0]);
        let r = loss_y_range(&[50.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0], &[], None).unwrap();
        assert!(r.1 < 10.0, "{r:?}");
    }
}
