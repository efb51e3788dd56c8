//! Images with integer grey or colour levels, as image flows model them: read from a `.npy` array
//! or a directory of PNG files, and scikit-learn's 8×8 digits.
//!
//! As with the other readers, nothing in a file is trusted: shapes are checked against the bytes
//! present and sizes with checked arithmetic before anything is allocated, and every error names
//! the file and the problem.
use super::io::{self, Contents};
use super::Matrix;
use crate::error::{io_err, Error, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The size of scikit-learn's digits test set: the last 360 of its 1797 images, in
/// scikit-learn's order; the first 1437 are for training and validation.
pub const DIGITS_TEST: usize = 360;

/// The number of images in scikit-learn's digits.
const DIGITS_N: usize = 1797;
/// Their side in pixels.
const DIGITS_SIDE: usize = 8;
/// Their levels: 0..=16, the number of set pixels of a 4 × 4 block of the 32 × 32 scans.
const DIGITS_LEVELS: u32 = 17;
/// The most levels an image may have (16-bit PNG).
const MAX_LEVELS: u32 = 65536;

/// Images with integer grey/colour levels.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// The number of images.
    pub n: usize,
    /// Channels per image: 1 (grey) or 3 (RGB) for PNG files, any number for `.npy` arrays.
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// The number of levels: every value is in `0..levels` (2 to 65536).
    pub levels: u32,
    /// `n · channels · height · width` levels, image after image, each in channel-major
    /// `(C, H, W)` order (PyTorch's NCHW).
    pub values: Vec<u16>,
}

impl Images {
    /// The number of values per image: `channels · height · width`.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `i`'s [`dim`](Images::dim) levels in `(C, H, W)` order. Panics when `i ≥ n`.
    pub fn image(&self, i: usize) -> &[u16] {
        let d = self.dim();
        &self.values[i * d..(i + 1) * d]
    }

    /// The images in `range` (a contiguous run, such as a training or test split), with the same
    /// shape and levels. Panics when the range goes past `n` or ends before it starts.
    pub fn select(&self, range: Range<usize>) -> Images {
        let d = self.dim();
        Images {
            n: range.len(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            levels: self.levels,
            values: self.values[range.start * d..range.end * d].to_vec(),
        }
    }

    /// One row per image of its [`dim`](Images::dim) level values (`0.0 ..= levels − 1`) as `f64`,
    /// in `(C, H, W)` order.
    pub fn to_matrix(&self) -> Matrix {
        Matrix { rows: self.n, cols: self.dim(), data: self.values.iter().map(|&v| f64::from(v)).collect() }
    }

    /// Reads images from `path`: a `.npy` file or a directory of `.png` files.
    ///
    /// - A `.npy` array of shape `[n, h, w]` (grey) or `[n, h, w, c]` (channels last, as numpy
    ///   images are; transposed to `(C, H, W)`). Integers must lie in `0..levels`; without
    ///   `levels`, uint8 arrays have 256 levels and other integer arrays `max + 1`. Floats must lie
    ///   in `[0, 1]` on the grid `k / (levels − 1)` of the `levels` they were quantised to, which
    ///   must be given: `v` becomes `round(v · (levels − 1))`.
    /// - A directory: every `.png` file in it is one image, in the order of the file names (other
    ///   files are ignored). Grey files give one channel and RGB files three (an alpha channel is
    ///   dropped); 8-bit files have 256 levels and 16-bit files 65536 unless `levels` is given
    ///   (then every value must be below it). Every file must have the first one's width, height
    ///   and colour type.
    ///
    /// `levels` must be 2..=65536.
    pub fn read(path: &Path, levels: Option<u32>) -> Result<Images> {
        Images::read_for(path, levels, None)
    }

    /// [`Images::read`] for a model of images `[c, h, w]` (`model`): images of another shape are
    /// an error that says so before any value is checked against `levels`.
    pub fn read_for(path: &Path, levels: Option<u32>, model: Option<[usize; 3]>) -> Result<Images> {
        let name = path.display().to_string();
        if let Some(levels) = levels {
            check_levels(&name, levels)?;
        }
        let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
        if meta.is_dir() {
            return read_png_dir(path, levels, model);
        }
        match path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).as_deref() {
            Some("npy") => from_npy(&io::read_file(path, Contents::Data)?, &name, levels, model),
            _ => Err(Error::Data(format!("{name}: expected a .npy file or a directory of .png files"))),
        }
    }
}

/// scikit-learn's 8×8 digits (`sklearn.datasets.load_digits().images`: 1797 grey images, levels
/// 0..=16, so 17 levels unless `levels` says more), read from the `.npy` file that the environment
/// variable `RNVP_DIGITS` names, else from `.rnvp/data/digits.npy` in the repository, which
/// `scripts/setup` exports. The last [`DIGITS_TEST`] images are the test set.
pub fn digits(levels: Option<u32>) -> Result<Images> {
    let path = match std::env::var_os("RNVP_DIGITS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".rnvp/data/digits.npy"),
    };
    digits_from(&path, levels)
}

/// [`digits`] from `path`.
fn digits_from(path: &Path, levels: Option<u32>) -> Result<Images> {
    if !path.exists() {
        return Err(Error::Data(format!(
            "scikit-learn's digits not found at {}: run scripts/setup (it exports them) or set \
             RNVP_DIGITS to a .npy of shape [{DIGITS_N}, {DIGITS_SIDE}, {DIGITS_SIDE}]",
            path.display()
        )));
    }
    let images = Images::read(path, Some(levels.unwrap_or(DIGITS_LEVELS)))?;
    let (n, c, h, w) = (images.n, images.channels, images.height, images.width);
    if (n, c, h, w) != (DIGITS_N, 1, DIGITS_SIDE, DIGITS_SIDE) {
        return Err(Error::Data(format!(
            "{}: {n} images of {c} × {h} × {w}, but scikit-learn's digits are {DIGITS_N} images of 1 × \
             {DIGITS_SIDE} × {DIGITS_SIDE}",
            path.display()
        )));
    }
    Ok(images)
}

/// Errors unless the images `[c, h, w]` of `name` have the `model`'s shape (when there is one).
fn check_model_shape(name: &str, [c, h, w]: [usize; 3], model: Option<[usize; 3]>) -> Result<()> {
    match model {
        Some([mc, mh, mw]) if [mc, mh, mw] != [c, h, w] => Err(Error::Data(format!(
            "{name}: images of {c} × {h} × {w} (channels × height × width), but the model's are {mc} × {mh} × {mw}"
        ))),
        _ => Ok(()),
    }
}

/// Errors unless `levels` is 2..=65536.
fn check_levels(name: &str, levels: u32) -> Result<()> {
    if (2..=MAX_LEVELS).contains(&levels) {
        Ok(())
    } else {
        Err(Error::Data(format!("{name}: {levels} levels: images have 2 to {MAX_LEVELS} levels")))
    }
}

/// The values per image and in all `n` images of `c × h × w`; errors on an empty shape or one too
/// large to count.
fn image_size(name: &str, n: usize, c: usize, h: usize, w: usize) -> Result<(usize, usize)> {
    if n == 0 {
        return Err(Error::Data(format!("{name}: no images")));
    }
    if c == 0 || h == 0 || w == 0 {
        return Err(Error::Data(format!(
            "{name}: images of {c} × {h} × {w} (channels × height × width) are empty"
        )));
    }
    let dim = c.checked_mul(h).and_then(|k| k.checked_mul(w));
    dim.and_then(|d| Some((d, d.checked_mul(n)?)))
        .ok_or_else(|| Error::Data(format!("{name}: {n} images of {c} × {h} × {w} are too many values")))
}

/// An empty vector with room for `count` levels; an error, not an abort, when memory is short.
fn alloc(name: &str, count: usize) -> Result<Vec<u16>> {
    let mut v = Vec::new();
    v.try_reserve_exact(count)
        .map_err(|_| Error::Data(format!("{name}: not enough memory for {count} levels")))?;
    Ok(v)
}

/// `n` images stored `(H, W, C)` (channels last) rearranged to `(C, H, W)`.
fn channels_first(name: &str, hwc: &[u16], n: usize, h: usize, w: usize, c: usize) -> Result<Vec<u16>> {
    let mut out = alloc(name, hwc.len())?;
    for image in hwc.chunks_exact(h * w * c) {
        for ch in 0..c {
            out.extend(image.iter().skip(ch).step_by(c));
        }
    }
    debug_assert_eq!(out.len(), n * c * h * w);
    Ok(out)
}

/// Images from the bytes of a `.npy` file named `name` (see [`Images::read`]).
fn from_npy(bytes: &[u8], name: &str, levels: Option<u32>, model: Option<[usize; 3]>) -> Result<Images> {
    if let Some(levels) = levels {
        check_levels(name, levels)?;
    }
    // the values are visited in place and kept as u16 levels (not first decoded to f64)
    let a = io::NpyView::new(bytes, name)?;
    let (n, h, w, c) = match a.dims()[..] {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, c] => (n, h, w, c),
        _ => {
            let dims = a.dims().iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
            return Err(Error::Data(format!(
                "{name}: shape [{dims}] is not [n, h, w] (grey) or [n, h, w, c] (channels last)"
            )));
        }
    };
    let (dim, total) = image_size(name, n, c, h, w)?;
    check_model_shape(name, [c, h, w], model)?;
    let bad =
        |k: usize, v: f64, why: String| Error::Data(format!("{name}: value {v} at image {} {why}", k / dim));
    let mut stored = alloc(name, total)?;
    let levels = if a.integer() {
        let levels = match levels {
            Some(levels) => levels,
            None if a.dtype() == "uint8" => 256,
            None => {
                let mut max = 0.0f64;
                a.for_each(|k, v| {
                    if v < 0.0 {
                        return Err(bad(k, v, "is negative (levels count from 0)".into()));
                    }
                    max = max.max(v);
                    Ok(())
                })?;
                if max >= f64::from(MAX_LEVELS) {
                    return Err(Error::Data(format!(
                        "{name}: values up to {max} make more than {MAX_LEVELS} levels"
                    )));
                }
                if max == 0.0 {
                    return Err(Error::Data(format!(
                        "{name}: every value is 0, one level: give the number of levels (2 to {MAX_LEVELS})"
                    )));
                }
                max as u32 + 1
            }
        };
        a.for_each(|k, v| {
            if v < 0.0 || v >= f64::from(levels) {
                return Err(bad(k, v, format!("is not a level in 0..{levels}")));
            }
            stored.push(v as u16);
            Ok(())
        })?;
        levels
    } else {
        let Some(levels) = levels else {
            return Err(Error::Data(format!(
                "{name}: float images need --levels L (the number of levels they were quantised to)"
            )));
        };
        let top = f64::from(levels - 1);
        a.for_each(|k, v| {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(k, v, "is outside [0, 1]".into()));
            }
            let x = v * top;
            let level = x.round();
            if (x - level).abs() > 1e-3 {
                return Err(bad(k, v, format!("is not on a grid of {levels} levels")));
            }
            stored.push(level as u16);
            Ok(())
        })?;
        levels
    };
    let values = if c == 1 { stored } else { channels_first(name, &stored, n, h, w, c)? };
    Ok(Images { n, channels: c, height: h, width: w, levels, values })
}

/// How a PNG file's pixels are read: channels kept (alpha dropped), 16 bits or 8, and the colour
/// type's name for messages.
fn png_layout(img: &image::DynamicImage, file: &Path) -> Result<(usize, bool, &'static str)> {
    use image::ColorType as T;
    Ok(match img.color() {
        T::L8 => (1, false, "grey 8-bit"),
        T::La8 => (1, false, "grey+alpha 8-bit"),
        T::Rgb8 => (3, false, "RGB 8-bit"),
        T::Rgba8 => (3, false, "RGBA 8-bit"),
        T::L16 => (1, true, "grey 16-bit"),
        T::La16 => (1, true, "grey+alpha 16-bit"),
        T::Rgb16 => (3, true, "RGB 16-bit"),
        T::Rgba16 => (3, true, "RGBA 16-bit"),
        other => {
            return Err(Error::Data(format!(
                "{}: colour type {other:?} is not supported (grey or RGB, 8 or 16 bits, alpha dropped)",
                file.display()
            )))
        }
    })
}

/// Decodes one PNG file, read within the data size limit.
fn decode_png(file: &Path) -> Result<image::DynamicImage> {
    let bytes = io::read_file(file, Contents::Data)?;
    let err = |e: image::ImageError| Error::Data(format!("{}: {e}", file.display()));
    let reader = || image::io::Reader::with_format(std::io::Cursor::new(&bytes[..]), image::ImageFormat::Png);
    // a small file may declare a huge image: its size is checked before it is decoded
    let (w, h) = reader().into_dimensions().map_err(err)?;
    let (limit, how) = io::limit_and_reason(Contents::Data);
    let decoded = u64::from(w) * u64::from(h) * 8; // at most 4 channels of 16 bits
    if decoded > limit {
        return Err(Error::Data(format!(
            "{}: declares {w} × {h} pixels, {} decoded, more than rnvp reads ({}: {how})",
            file.display(),
            io::size_text(decoded),
            io::size_text(limit)
        )));
    }
    let mut limits = image::io::Limits::default();
    limits.max_alloc = Some(limit);
    let mut r = reader();
    r.limits(limits);
    r.decode().map_err(err)
}

/// The images of a directory of PNG files (see [`Images::read`]).
fn read_png_dir(dir: &Path, levels: Option<u32>, model: Option<[usize; 3]>) -> Result<Images> {
    let dir_name = dir.display().to_string();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let Some(first_file) = files.first() else {
        return Err(Error::Data(format!("{dir_name}: no .png files")));
    };
    let first = decode_png(first_file)?;
    let (c, sixteen, colour) = png_layout(&first, first_file)?;
    let (w, h) = (first.width(), first.height());
    check_model_shape(&dir_name, [c, h as usize, w as usize], model)?;
    let n = files.len();
    let (_, total) = image_size(&dir_name, n, c, h as usize, w as usize)?;
    let (limit, reason) = io::limit_and_reason(Contents::Data);
    let bytes = (total as u128) * 2;
    if bytes > u128::from(limit) {
        return Err(Error::Data(format!(
            "{dir_name}: {n} images of {c} × {h} × {w} take {}, more than rnvp reads into memory here ({}: \
             {reason})",
            io::size_text(bytes),
            io::size_text(limit)
        )));
    }
    let levels = levels.unwrap_or(if sixteen { MAX_LEVELS } else { 256 });
    let first_name = first_file.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let mut values = alloc(&dir_name, total)?;
    for (i, file) in files.iter().enumerate() {
        let decoded;
        let img = if i == 0 {
            &first
        } else {
            decoded = decode_png(file)?;
            &decoded
        };
        if (img.width(), img.height()) != (w, h) {
            return Err(Error::Data(format!(
                "{}: {} × {}, but the first image {first_name} is {w} × {h}",
                file.display(),
                img.width(),
                img.height()
            )));
        }
        let (_, _, this_colour) = png_layout(img, file)?;
        if img.color() != first.color() {
            return Err(Error::Data(format!(
                "{}: {this_colour}, but the first image {first_name} is {colour}",
                file.display()
            )));
        }
        // interleaved (H, W, C) pixels, alpha dropped
        let hwc: Vec<u16> = match (c, sixteen) {
            (1, false) => img.to_luma8().into_raw().into_iter().map(u16::from).collect(),
            (_, false) => img.to_rgb8().into_raw().into_iter().map(u16::from).collect(),
            (1, true) => img.to_luma16().into_raw(),
            (_, true) => img.to_rgb16().into_raw(),
        };
        if let Some(&v) = hwc.iter().find(|&&v| u32::from(v) >= levels) {
            return Err(Error::Data(format!(
                "{}: value {v} at image {i} is not a level in 0..{levels}",
                file.display()
            )));
        }
        for ch in 0..c {
            values.extend(hwc.iter().skip(ch).step_by(c));
        }
    }
    Ok(Images { n, channels: c, height: h as usize, width: w as usize, levels, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn msg<T: std::fmt::Debug>(r: Result<T>) -> String {
        r.unwrap_err().to_string()
    }

    /// A format 1.0 `.npy` file in C order with the given dtype, shape and data bytes.
    fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let shape = match shape {
            [k] => format!("({k},)"),
            _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
        };
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        header.push_str(&" ".repeat(63 - (10 + header.len()) % 64));
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn npy_images_in_fortran_order_and_non_finite_floats() {
        // [2, 2, 3] uint16 stored Fortran order (first index fastest): C-order value at
        // (n, y, x) is 100·n + 10·y + x
        let mut fortran = vec![];
        for x in 0..3u16 {
            for y in 0..2u16 {
                for n in 0..2u16 {
                    fortran.extend_from_slice(&(100 * n + 10 * y + x).to_le_bytes());
                }
            }
        }
        let mut bytes = npy("<u2", &[2, 2, 3], &fortran);
        let flag = b"'fortran_order': False";
        let at = bytes.windows(flag.len()).position(|w| w == flag).unwrap();
        bytes[at..at + flag.len()].copy_from_slice(b"'fortran_order': True ");
        let im = from_npy(&bytes, "f.npy", Some(200), None).unwrap();
        assert_eq!(im.values, [0, 1, 2, 10, 11, 12, 100, 101, 102, 110, 111, 112]);
        assert_eq!(
            msg(from_npy(&bytes, "f.npy", Some(105), None)),
            "f.npy: value 110 at image 1 is not a level in 0..105"
        );
        // a NaN in float images is named, with or without --levels
        let floats = f32_bytes(&[0.0, 0.5, f32::NAN, 1.0]);
        for levels in [Some(3), None] {
            let m = msg(from_npy(&npy("<f4", &[1, 2, 2], &floats), "n.npy", levels, None));
            assert!(m.starts_with("n.npy: ") && (m.contains("NaN") || m.contains("--levels")), "{m}");
        }
        assert!(
            msg(from_npy(&npy("<f4", &[1, 2, 2], &floats), "n.npy", Some(3), None)).contains("non-finite")
        );
    }

    fn i64_bytes(values: &[i64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A fresh, empty directory under the system temp dir.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rnvp-images-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn npy_grey_images_round_trip_with_their_levels() {
        // 2 images of 3 × 4, uint8: 256 levels whatever the values
        let data: Vec<u8> = (0..24).map(|k| k * 10).collect();
        let im = from_npy(&npy("|u1", &[2, 3, 4], &data), "g.npy", None, None).unwrap();
        assert_eq!((im.n, im.channels, im.height, im.width, im.levels), (2, 1, 3, 4, 256));
        assert_eq!(im.values, data.iter().map(|&v| u16::from(v)).collect::<Vec<_>>());
        assert_eq!(im.dim(), 12);
        assert_eq!(im.image(1), &im.values[12..]);
        // int64: max + 1 levels, or the levels given
        let vals: Vec<i64> = (0..24).map(|k| k % 17).collect();
        let bytes = npy("<i8", &[2, 3, 4], &i64_bytes(&vals));
        assert_eq!(from_npy(&bytes, "g.npy", None, None).unwrap().levels, 17);
        let im = from_npy(&bytes, "g.npy", Some(40), None).unwrap();
        assert_eq!(im.levels, 40);
        assert_eq!(im.values, vals.iter().map(|&v| v as u16).collect::<Vec<_>>());
        // floats on the grid of 17 levels: k / 16
        let floats: Vec<f32> = vals.iter().map(|&v| v as f32 / 16.0).collect();
        let im = from_npy(&npy("<f4", &[2, 3, 4], &f32_bytes(&floats)), "g.npy", Some(17), None).unwrap();
        assert_eq!((im.levels, im.values.clone()), (17, vals.iter().map(|&v| v as u16).collect::<Vec<_>>()));
        // float64 on a grid of 256 levels, within 1e-3 of a level
        let f64s: Vec<u8> = [0.0, 1.0, 0.5 / 255.0 * 2.0, 254.9995 / 255.0]
            .iter()
            .flat_map(|v: &f64| v.to_le_bytes())
            .collect();
        let im = from_npy(&npy("<f8", &[1, 2, 2], &f64s), "g.npy", Some(256), None).unwrap();
        assert_eq!(im.values, [0, 255, 1, 255]);
    }

    #[test]
    fn npy_channels_last_images_are_transposed_to_channels_first() {
        let (n, h, w, c) = (2usize, 3usize, 4usize, 3usize);
        let stored: Vec<u16> = (0..(n * h * w * c) as u16).map(|k| (k * 7) % 101).collect();
        let bytes: Vec<u8> = stored.iter().flat_map(|v| v.to_be_bytes()).collect();
        let im = from_npy(&npy(">u2", &[n, h, w, c], &bytes), "rgb.npy", None, None).unwrap();
        assert_eq!((im.n, im.channels, im.height, im.width), (n, c, h, w));
        assert_eq!(im.levels, u32::from(*stored.iter().max().unwrap()) + 1);
        for i in 0..n {
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let want = stored[((i * h + y) * w + x) * c + ch];
                        assert_eq!(im.image(i)[(ch * h + y) * w + x], want, "[{i}, {ch}, {y}, {x}]");
                        assert_eq!(im.values[((i * c + ch) * h + y) * w + x], want);
                    }
                }
            }
        }
        // one channel last is the grey layout
        let grey =
            from_npy(&npy("|u1", &[2, 2, 2, 1], &[1, 2, 3, 4, 5, 6, 7, 8]), "g.npy", None, None).unwrap();
        assert_eq!((grey.channels, grey.values), (1, vec![1, 2, 3, 4, 5, 6, 7, 8]));
    }

    #[test]
    fn select_and_to_matrix() {
        let data: Vec<u8> = (0..2 * 2 * 2 * 3).collect();
        let im = from_npy(&npy("|u1", &[4, 2, 3], &data), "s.npy", Some(30), None).unwrap();
        let part = im.select(1..3);
        assert_eq!((part.n, part.channels, part.height, part.width, part.levels), (2, 1, 2, 3, 30));
        assert_eq!(part.values, (6..18).collect::<Vec<u16>>());
        assert_eq!(im.select(4..4).n, 0);
        let m = part.to_matrix();
        assert_eq!((m.rows, m.cols), (2, 6));
        assert_eq!(m.row(1), &[12.0, 13.0, 14.0, 15.0, 16.0, 17.0]);
    }

    #[test]
    fn bad_values_and_shapes_are_errors_naming_them() {
        let ints = |v: &[i64], shape: &[usize]| npy("<i8", shape, &i64_bytes(v));
        let floats = |v: &[f32], shape: &[usize]| npy("<f4", shape, &f32_bytes(v));
        let cases: Vec<(Vec<u8>, Option<u32>, &str)> = vec![
            (
                ints(&[0, 1, 2, 3, 4, 17, 18, 0], &[2, 2, 2]),
                Some(17),
                "b.npy: value 17 at image 1 is not a level in 0..17",
            ),
            (
                ints(&[0, 1, 2, -1], &[2, 1, 2]),
                Some(17),
                "b.npy: value -1 at image 1 is not a level in 0..17",
            ),
            (
                ints(&[0, 1, 2, 3, -4, 5], &[3, 1, 2]),
                None,
                "b.npy: value -4 at image 2 is negative (levels count from 0)",
            ),
            (ints(&[0, 65536], &[1, 1, 2]), None, "b.npy: values up to 65536 make more than 65536 levels"),
            (
                ints(&[0, 0], &[1, 1, 2]),
                None,
                "b.npy: every value is 0, one level: give the number of levels (2 to 65536)",
            ),
            (
                npy("|u1", &[1, 1, 2], &[0, 255]),
                Some(255),
                "b.npy: value 255 at image 0 is not a level in 0..255",
            ),
            (
                floats(&[0.0, 0.5], &[1, 1, 2]),
                None,
                "b.npy: float images need --levels L (the number of levels they were quantised to)",
            ),
            (
                floats(&[0.0, 0.5, 1.5, 0.0], &[2, 1, 2]),
                Some(3),
                "b.npy: value 1.5 at image 1 is outside [0, 1]",
            ),
            (floats(&[0.0, -0.25], &[1, 1, 2]), Some(5), "b.npy: value -0.25 at image 0 is outside [0, 1]"),
            (
                floats(&[0.5, 0.375, 0.25, 0.0], &[4, 1, 1]),
                Some(5),
                "b.npy: value 0.375 at image 1 is not on a grid of 5 levels",
            ),
            (
                ints(&[0, 1], &[2]),
                None,
                "b.npy: shape [2] is not [n, h, w] (grey) or [n, h, w, c] (channels last)",
            ),
            (ints(&[0, 1], &[1, 2]), None, "b.npy: shape [1, 2] is not [n, h, w]"),
            (ints(&[0, 1], &[1, 1, 1, 1, 2]), None, "b.npy: shape [1, 1, 1, 1, 2] is not [n, h, w]"),
            (ints(&[], &[0, 8, 8]), None, "b.npy: no images"),
            (ints(&[], &[3, 8, 0]), None, "b.npy: images of 1 × 8 × 0 (channels × height × width) are empty"),
            (
                ints(&[], &[3, 0, 8, 3]),
                None,
                "b.npy: images of 3 × 0 × 8 (channels × height × width) are empty",
            ),
            (
                ints(&[], &[3, 2, 2, 0]),
                None,
                "b.npy: images of 0 × 2 × 2 (channels × height × width) are empty",
            ),
            (ints(&[0, 1], &[1, 1, 3]), None, "b.npy: truncated: expected 24 bytes of data, found 16"),
        ];
        for (k, (bytes, levels, want)) in cases.iter().enumerate() {
            let m = msg(from_npy(bytes, "b.npy", *levels, None));
            assert!(m.starts_with(want), "case {k}: {m}");
        }
        // for a model of other images, the shape is the error, not the values beyond its levels
        let rgb = npy("|u1", &[1, 2, 2, 3], &[200; 12]);
        assert_eq!(
            msg(from_npy(&rgb, "b.npy", Some(17), Some([1, 8, 8]))),
            "b.npy: images of 3 × 2 × 2 (channels × height × width), but the model's are 1 × 8 × 8"
        );
        assert_eq!(from_npy(&rgb, "b.npy", None, Some([3, 2, 2])).unwrap().levels, 256);
        let dir = scratch("levels");
        let path = dir.join("x.npy");
        fs::write(&path, npy("|u1", &[1, 1, 2], &[0, 1])).unwrap();
        for bad in [0, 1, 65537] {
            let want = format!("{}: {bad} levels: images have 2 to 65536 levels", path.display());
            assert_eq!(msg(Images::read(&path, Some(bad))), want);
        }
        assert_eq!(Images::read(&path, Some(2)).unwrap().values, [0, 1]);
        let other = dir.join("x.csv");
        fs::write(&other, "0,1\n").unwrap();
        let want = format!("{}: expected a .npy file or a directory of .png files", other.display());
        assert_eq!(msg(Images::read(&other, None)), want);
        let m = msg(Images::read(&dir.join("missing.npy"), None));
        assert!(
            m.starts_with(&dir.join("missing.npy").display().to_string()) && m.contains("os error"),
            "{m}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn png_directories_read_in_name_order_channels_first() {
        let dir = scratch("png-rgb");
        // RGBA images: alpha dropped, three channels; b.png comes after a.png whatever the writing order
        let pixel = |i: u32, x: u32, y: u32| {
            image::Rgba([(10 * i + x) as u8, (20 + y) as u8, (100 + x + y) as u8, 7])
        };
        for (i, name) in [(1u32, "b.png"), (0, "a.png")] {
            image::RgbaImage::from_fn(3, 2, |x, y| pixel(i, x, y)).save(dir.join(name)).unwrap();
        }
        fs::write(dir.join("notes.txt"), "ignored").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        let im = Images::read(&dir, None).unwrap();
        assert_eq!((im.n, im.channels, im.height, im.width, im.levels), (2, 3, 2, 3, 256));
        for i in 0..2 {
            for ch in 0..3 {
                for y in 0..2 {
                    for x in 0..3 {
                        let want = u16::from(pixel(i as u32, x as u32, y as u32).0[ch]);
                        assert_eq!(im.image(i)[(ch * 2 + y) * 3 + x], want, "[{i}, {ch}, {y}, {x}]");
                    }
                }
            }
        }
        let m = msg(Images::read(&dir, Some(101)));
        assert_eq!(
            m,
            format!("{}: value 101 at image 0 is not a level in 0..101", dir.join("a.png").display())
        );
        let _ = fs::remove_dir_all(&dir);

        // 16-bit grey: 65536 levels, one channel
        let dir = scratch("png-16");
        let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(2, 2, |x, y| {
            image::Luma([1000 * x as u16 + y as u16 * 60000])
        });
        img.save(dir.join("one.PNG")).unwrap();
        let im = Images::read(&dir, None).unwrap();
        assert_eq!(
            (im.n, im.channels, im.levels, im.values.clone()),
            (1, 1, 65536, vec![0, 1000, 60000, 61000])
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn png_directories_must_hold_images_alike() {
        let dir = scratch("png-mixed");
        image::GrayImage::from_pixel(8, 8, image::Luma([3])).save(dir.join("a.png")).unwrap();
        image::GrayImage::from_pixel(9, 8, image::Luma([3])).save(dir.join("b.png")).unwrap();
        let want = format!("{}: 9 × 8, but the first image a.png is 8 × 8", dir.join("b.png").display());
        assert_eq!(msg(Images::read(&dir, None)), want);

        image::GrayImage::from_pixel(8, 8, image::Luma([3])).save(dir.join("b.png")).unwrap();
        assert_eq!(Images::read(&dir, Some(4)).unwrap().values, vec![3; 128]);
        image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(dir.join("c.png")).unwrap();
        let want =
            format!("{}: RGB 8-bit, but the first image a.png is grey 8-bit", dir.join("c.png").display());
        assert_eq!(msg(Images::read(&dir, None)), want);

        fs::write(dir.join("c.png"), b"not a png").unwrap();
        let m = msg(Images::read(&dir, None));
        assert!(m.starts_with(&format!("{}: ", dir.join("c.png").display())), "{m}");
        let _ = fs::remove_dir_all(&dir);

        let empty = scratch("png-empty");
        fs::write(empty.join("a.npy"), b"").unwrap();
        assert_eq!(msg(Images::read(&empty, None)), format!("{}: no .png files", empty.display()));
        let _ = fs::remove_dir_all(&empty);
    }

    #[test]
    fn mutated_npy_files_give_errors_not_panics() {
        let data: Vec<u8> = (0..24u16).flat_map(|v| v.to_le_bytes()).collect();
        for good in [npy("<u2", &[2, 3, 2, 2], &data), npy("<f4", &[3, 2, 2], &data)] {
            for i in 0..good.len() {
                for b in [0u8, 1, b'9', b'(', b',', b'0', 0xff] {
                    let mut bad = good.clone();
                    bad[i] = b;
                    for levels in [None, Some(3), Some(65536)] {
                        let _ = from_npy(&bad, "m.npy", levels, None);
                    }
                }
                assert!(from_npy(&good[..i], "m.npy", None, None).is_err());
            }
        }
    }

    #[test]
    fn digits_say_how_to_get_them() {
        let dir = scratch("digits");
        let missing = dir.join("digits.npy");
        let want = format!(
            "scikit-learn's digits not found at {}: run scripts/setup (it exports them) or set RNVP_DIGITS \
             to a .npy of shape [1797, 8, 8]",
            missing.display()
        );
        assert_eq!(msg(digits_from(&missing, None)), want);
        fs::write(&missing, npy("<i8", &[2, 8, 8], &i64_bytes(&[16; 128]))).unwrap();
        let want = format!(
            "{}: 2 images of 1 × 8 × 8, but scikit-learn's digits are 1797 images of 1 × 8 × 8",
            missing.display()
        );
        assert_eq!(msg(digits_from(&missing, None)), want);
        let values: Vec<i64> = (0..1797 * 64).map(|k| k % 17).collect();
        fs::write(&missing, npy("<i8", &[1797, 8, 8], &i64_bytes(&values))).unwrap();
        let im = digits_from(&missing, None).unwrap();
        assert_eq!((im.n, im.levels, im.values[..18].to_vec()), (1797, 17, (0..17).chain([0]).collect()));
        assert!(msg(digits_from(&missing, Some(16))).ends_with("is not a level in 0..16"));
        let _ = fs::remove_dir_all(&dir);
    }
}
