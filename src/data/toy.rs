//! The 2-D toy distributions of the flow literature (scikit-learn's moons, concentric circles, and
//! the eight Gaussians, checkerboard, pinwheel and two spirals of the FFJORD papers).
//!
//! Every sampler returns RAW points (not standardized) as an `n × 2` [`Matrix`] in random order.
//! `noise` is a standard deviation: it should be finite and ≥ 0 (callers validate user input).
use super::{Matrix, Rng};
use std::f64::consts::{FRAC_PI_4, PI, TAU};

/// One of the 2-D toy data sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToySet {
    /// scikit-learn's `make_moons`: two interleaved half circles.
    TwoMoons,
    /// Two concentric circles, radii 1 and 0.5 (as `make_circles(factor=0.5)`, random angles).
    Circles,
    /// Eight Gaussians on a circle of radius 2.
    EightGaussians,
    /// A 4 × 4 board of side-2 squares, half of them filled.
    Checkerboard,
    /// Five curved arms (Johnson et al. 2016, as in FFJORD).
    Pinwheel,
    /// Two interleaved spirals.
    TwoSpirals,
}

impl ToySet {
    /// All toy sets, in a fixed order.
    pub fn all() -> &'static [ToySet] {
        use ToySet::*;
        &[TwoMoons, Circles, EightGaussians, Checkerboard, Pinwheel, TwoSpirals]
    }

    /// The set's name on the command line, e.g. `"two-moons"`.
    pub fn name(self) -> &'static str {
        match self {
            ToySet::TwoMoons => "two-moons",
            ToySet::Circles => "circles",
            ToySet::EightGaussians => "eight-gaussians",
            ToySet::Checkerboard => "checkerboard",
            ToySet::Pinwheel => "pinwheel",
            ToySet::TwoSpirals => "two-spirals",
        }
    }

    /// The set with this name; case-insensitive, `_` may stand for `-`, and `moons`, `8gaussians`
    /// and `2spirals` are accepted too.
    pub fn from_name(name: &str) -> Option<ToySet> {
        let name = name.trim().to_ascii_lowercase().replace('_', "-");
        match name.as_str() {
            "moons" => Some(ToySet::TwoMoons),
            "8gaussians" => Some(ToySet::EightGaussians),
            "2spirals" => Some(ToySet::TwoSpirals),
            _ => Self::all().iter().copied().find(|t| t.name() == name),
        }
    }

    /// One line: the construction and its parameters.
    pub fn description(self) -> &'static str {
        match self {
            ToySet::TwoMoons => {
                "scikit-learn make_moons: n/2 points on the arc (cos t, sin t) and the rest on \
                 (1 - cos t, 0.5 - sin t), t evenly spaced in [0, π], plus Gaussian noise (default 0.05)"
            }
            ToySet::Circles => {
                "two concentric circles of radius 1 (n/2 points) and 0.5, uniform angles, \
                 plus Gaussian noise (default 0.08)"
            }
            ToySet::EightGaussians => {
                "8 equally likely centres 2·(cos kπ/4, sin kπ/4), each point a centre \
                 plus Gaussian noise (default 0.1)"
            }
            ToySet::Checkerboard => {
                "uniform on the 8 filled side-2 squares of a 4 × 4 board over [-4, 4]², \
                 filled where ⌊x/2⌋ + ⌊y/2⌋ is even; no noise (the noise setting is ignored)"
            }
            ToySet::Pinwheel => {
                "5 arms: radius r = 1 + 0.3·N(0,1), tangential offset noise·N(0,1) (default 0.1), \
                 rotated by 2πa/5 + 0.25·exp(r) and scaled by 2"
            }
            ToySet::TwoSpirals => {
                "s = 3π·√u: n/2 points on (-s cos s, s sin s)/3 and the rest on its mirror \
                 (s cos s, -s sin s)/3, plus Gaussian noise (default 0.1)"
            }
        }
    }

    /// The usual noise level of the set (0 for the checkerboard, which ignores it).
    pub fn default_noise(self) -> f64 {
        match self {
            ToySet::TwoMoons => 0.05,
            ToySet::Circles => 0.08,
            ToySet::EightGaussians | ToySet::Pinwheel | ToySet::TwoSpirals => 0.1,
            ToySet::Checkerboard => 0.0,
        }
    }

    /// `n` raw points in random order, as an `n × 2` matrix.
    pub fn sample(self, n: usize, noise: f64, rng: &mut Rng) -> Matrix {
        let pts: Vec<[f64; 2]> = match self {
            ToySet::TwoMoons => return two_moons(n, noise, true, rng),
            ToySet::Circles => {
                let mut pts: Vec<[f64; 2]> = (0..n)
                    .map(|i| {
                        let r = if i < n / 2 { 1.0 } else { 0.5 };
                        let a = TAU * rng.uniform();
                        [r * a.cos(), r * a.sin()]
                    })
                    .collect();
                rng.shuffle(&mut pts);
                add_noise(pts, noise, rng)
            }
            ToySet::EightGaussians => (0..n)
                .map(|_| {
                    let a = rng.below(8) as f64 * FRAC_PI_4;
                    [2.0 * a.cos() + noise * rng.normal(), 2.0 * a.sin() + noise * rng.normal()]
                })
                .collect(),
            ToySet::Checkerboard => (0..n)
                .map(|_| {
                    // Column i in -2..2, then one of the two filled rows j with i + j even.
                    let i = rng.below(4) as i64 - 2;
                    let j = -2 + i.rem_euclid(2) + 2 * rng.below(2) as i64;
                    [2.0 * i as f64 + 2.0 * rng.uniform(), 2.0 * j as f64 + 2.0 * rng.uniform()]
                })
                .collect(),
            ToySet::Pinwheel => (0..n)
                .map(|_| {
                    let arm = rng.below(5) as f64;
                    let r = 1.0 + 0.3 * rng.normal();
                    let t = noise * rng.normal();
                    let a = arm * TAU / 5.0 + 0.25 * r.exp();
                    let (s, c) = a.sin_cos();
                    // FFJORD's row-vector product (r, t)·[[c, -s], [s, c]], times 2.
                    [2.0 * (r * c + t * s), 2.0 * (t * c - r * s)]
                })
                .collect(),
            ToySet::TwoSpirals => {
                let mut pts: Vec<[f64; 2]> = (0..n)
                    .map(|i| {
                        let s = rng.uniform().sqrt() * 3.0 * PI;
                        let sign = if i < n / 2 { 1.0 } else { -1.0 };
                        [-sign * s * s.cos() / 3.0, sign * s * s.sin() / 3.0]
                    })
                    .collect();
                rng.shuffle(&mut pts);
                add_noise(pts, noise, rng)
            }
        };
        to_matrix(pts)
    }
}

/// scikit-learn's `make_moons(n, noise=noise, shuffle=shuffle)`: `n / 2` points on the outer arc
/// `(cos t, sin t)`, then `n - n / 2` on the inner arc `(1 - cos t, 1 - sin t - 0.5)`, `t` evenly
/// spaced over `[0, π]` with both ends; optionally shuffled, then Gaussian noise of std `noise`.
pub fn two_moons(n: usize, noise: f64, shuffle: bool, rng: &mut Rng) -> Matrix {
    let (n_out, n_in) = (n / 2, n - n / 2);
    let outer = linspace_pi(n_out).map(|t| [t.cos(), t.sin()]);
    let inner = linspace_pi(n_in).map(|t| [1.0 - t.cos(), 1.0 - t.sin() - 0.5]);
    let mut pts: Vec<[f64; 2]> = outer.chain(inner).collect();
    if shuffle {
        rng.shuffle(&mut pts);
    }
    to_matrix(add_noise(pts, noise, rng))
}

/// numpy's `linspace(0, π, n)`: `i · (π / (n - 1))`, the last value exactly π; `[0]` for `n = 1`.
fn linspace_pi(n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 { PI / (n - 1) as f64 } else { 0.0 };
    (0..n).map(move |i| if n > 1 && i == n - 1 { PI } else { i as f64 * step })
}

fn add_noise(mut pts: Vec<[f64; 2]>, noise: f64, rng: &mut Rng) -> Vec<[f64; 2]> {
    for p in &mut pts {
        p[0] += noise * rng.normal();
        p[1] += noise * rng.normal();
    }
    pts
}

fn to_matrix(pts: Vec<[f64; 2]>) -> Matrix {
    Matrix { rows: pts.len(), cols: 2, data: pts.into_iter().flatten().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(m: &Matrix) -> impl Iterator<Item = (f64, f64)> + '_ {
        assert_eq!(m.cols, 2);
        (0..m.rows).map(|i| (m.row(i)[0], m.row(i)[1]))
    }

    fn mean(m: &Matrix) -> (f64, f64) {
        let (sx, sy) = points(m).fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        (sx / m.rows as f64, sy / m.rows as f64)
    }

    /// Asserts that a count is within 5 binomial standard deviations of `n · p`.
    fn assert_count(count: usize, n: usize, p: f64, what: &str) {
        let (expect, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        assert!((count as f64 - expect).abs() < 5.0 * sd, "{what}: {count}, expected ≈ {expect}");
    }

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for &t in ToySet::all() {
            assert_eq!(ToySet::from_name(t.name()), Some(t));
            assert_eq!(ToySet::from_name(&t.name().replace('-', "_").to_uppercase()), Some(t));
            assert!(!t.description().is_empty() && !t.description().contains('\n'));
        }
        assert_eq!(ToySet::from_name("moons"), Some(ToySet::TwoMoons));
        assert_eq!(ToySet::from_name("two_spirals"), Some(ToySet::TwoSpirals));
        assert_eq!(ToySet::from_name("spiral"), None);
        assert_eq!(ToySet::all().len(), 6);
    }

    #[test]
    fn linspace_matches_numpy_edge_cases() {
        assert_eq!(linspace_pi(0).count(), 0);
        assert_eq!(linspace_pi(1).collect::<Vec<_>>(), vec![0.0]);
        assert_eq!(linspace_pi(2).collect::<Vec<_>>(), vec![0.0, PI]);
        assert_eq!(linspace_pi(3).collect::<Vec<_>>(), vec![0.0, PI / 2.0, PI]);
    }

    #[test]
    fn two_moons_without_noise_lies_on_the_arcs_with_mean_half_quarter() {
        let n = 1001;
        let m = two_moons(n, 0.0, false, &mut Rng::new(0));
        assert_eq!((m.rows, m.cols), (n, 2));
        for (i, (x, y)) in points(&m).enumerate() {
            let (cx, cy) = if i < n / 2 { (0.0, 0.0) } else { (1.0, 0.5) };
            assert!((((x - cx).powi(2) + (y - cy).powi(2)).sqrt() - 1.0).abs() < 1e-12, "row {i}");
            assert!(if i < n / 2 { y >= 0.0 } else { y <= 0.5 + 1e-15 }, "row {i}: ({x}, {y})");
        }
        assert_eq!(m.row(0), [1.0, 0.0]);
        assert_eq!(m.row(n / 2), [0.0, 0.5]);
        // Even n: both arcs have n/2 points on the same grid, so the sin terms cancel exactly and
        // the mean is ((0 + 1)/2, (s̄ + 0.5 - s̄)/2) = (0.5, 0.25).
        let m = ToySet::TwoMoons.sample(1000, 0.0, &mut Rng::new(1));
        let (mx, my) = mean(&m);
        assert!((mx - 0.5).abs() < 1e-12 && (my - 0.25).abs() < 1e-12, "({mx}, {my})");
        // Small n, as numpy: linspace(0, π, 1) = [0], linspace(0, π, 0) = [].
        assert_eq!(two_moons(1, 0.0, false, &mut Rng::new(0)).data, vec![0.0, 0.5]);
        assert_eq!(two_moons(2, 0.0, false, &mut Rng::new(0)).data, vec![1.0, 0.0, 0.0, 0.5]);
        assert_eq!(two_moons(0, 0.1, true, &mut Rng::new(0)).rows, 0);
    }

    #[test]
    fn two_moons_shuffles_and_adds_noise_of_the_given_std() {
        let n = 20_000;
        let clean = two_moons(n, 0.0, true, &mut Rng::new(2));
        let noisy = two_moons(n, 0.05, true, &mut Rng::new(2));
        assert_ne!(clean, two_moons(n, 0.0, false, &mut Rng::new(2)), "not shuffled");
        let d: Vec<f64> = clean.data.iter().zip(&noisy.data).map(|(a, b)| b - a).collect();
        let sd = (d.iter().map(|x| x * x).sum::<f64>() / d.len() as f64).sqrt();
        assert!((sd - 0.05).abs() < 0.002, "noise std {sd}");
    }

    #[test]
    fn circles_have_radii_one_and_half_with_noise_spread() {
        let (n, noise) = (20_000, 0.08);
        let m = ToySet::Circles.sample(n, noise, &mut Rng::new(3));
        let (outer, inner): (Vec<f64>, Vec<f64>) =
            points(&m).map(|(x, y)| x.hypot(y)).partition(|&r| r > 0.75);
        assert_count(outer.len(), n, 0.5, "outer circle");
        for (rs, r0) in [(outer, 1.0), (inner, 0.5)] {
            let mean = rs.iter().sum::<f64>() / rs.len() as f64;
            let sd = (rs.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rs.len() as f64).sqrt();
            assert!((mean - r0).abs() < 0.01, "radius {r0}: mean {mean}");
            assert!((sd - noise).abs() < 0.01, "radius {r0}: std {sd}");
        }
        let (mx, my) = mean(&m);
        assert!(mx.abs() < 0.02 && my.abs() < 0.02, "({mx}, {my})");
    }

    #[test]
    fn eight_gaussians_stay_near_their_centres_which_are_equally_used() {
        let (n, noise) = (16_000, 0.1);
        let m = ToySet::EightGaussians.sample(n, noise, &mut Rng::new(4));
        let mut counts = [0usize; 8];
        for (x, y) in points(&m) {
            let (k, d) = (0..8)
                .map(|k| {
                    let a = k as f64 * FRAC_PI_4;
                    (k, (x - 2.0 * a.cos()).hypot(y - 2.0 * a.sin()))
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            assert!(d < 6.0 * noise, "({x}, {y}) is {d} from the nearest centre");
            counts[k] += 1;
        }
        for c in counts {
            assert_count(c, n, 1.0 / 8.0, "centre");
        }
    }

    #[test]
    fn checkerboard_fills_the_eight_black_squares_evenly() {
        let n = 16_000;
        let m = ToySet::Checkerboard.sample(n, 0.3, &mut Rng::new(5));
        let mut counts = std::collections::HashMap::new();
        for (x, y) in points(&m) {
            assert!((-4.0..=4.0).contains(&x) && (-4.0..=4.0).contains(&y), "({x}, {y})");
            let (i, j) = (((x / 2.0).floor() as i64).min(1), ((y / 2.0).floor() as i64).min(1));
            assert_eq!((i + j).rem_euclid(2), 0, "({x}, {y}) is in an empty square");
            *counts.entry((i, j)).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 8);
        for c in counts.into_values() {
            assert_count(c, n, 1.0 / 8.0, "square");
        }
    }

    #[test]
    fn pinwheel_is_centred_with_five_equal_arms() {
        let n = 20_000;
        let m = ToySet::Pinwheel.sample(n, 0.1, &mut Rng::new(6));
        let (mx, my) = mean(&m);
        assert!(mx.abs() < 0.05 && my.abs() < 0.05, "({mx}, {my})");
        // Undo the radius-dependent twist: the point's angle is -(2πa/5 + 0.25·exp(r)) + O(t/r).
        let mut counts = [0usize; 5];
        for (x, y) in points(&m) {
            let r = x.hypot(y) / 2.0;
            let base = -y.atan2(x) - 0.25 * r.exp();
            counts[((base / (TAU / 5.0)).round() as i64).rem_euclid(5) as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 - n as f64 / 5.0).abs() < 0.03 * n as f64, "arms {counts:?}");
        }
    }

    #[test]
    fn two_spirals_are_point_symmetric_and_bounded() {
        let (n, noise) = (20_000, 0.1);
        let m = ToySet::TwoSpirals.sample(n, noise, &mut Rng::new(7));
        let (mx, my) = mean(&m);
        assert!(mx.abs() < 0.05 && my.abs() < 0.05, "({mx}, {my})");
        assert!(points(&m).all(|(x, y)| x.hypot(y) <= PI + 6.0 * noise));
        let clean = ToySet::TwoSpirals.sample(n, 0.0, &mut Rng::new(7));
        assert!(points(&clean).all(|(x, y)| x.hypot(y) <= PI + 1e-12));
        // Without noise, a point at radius s/3 lies on spiral A(s) = (-s cos s, s sin s)/3 or on its
        // mirror -A(s), and each holds half of the points.
        let on_a = points(&clean)
            .map(|(x, y)| {
                let s = 3.0 * x.hypot(y);
                let (ax, ay) = (-s * s.cos() / 3.0, s * s.sin() / 3.0);
                let (da, db) = ((x - ax).hypot(y - ay), (x + ax).hypot(y + ay));
                assert!(da.min(db) < 1e-9, "({x}, {y}) is on neither spiral");
                da < db
            })
            .filter(|&a| a)
            .count();
        assert_eq!(on_a, n / 2);
    }

    #[test]
    fn same_seed_same_points() {
        for &t in ToySet::all() {
            let a = t.sample(500, t.default_noise(), &mut Rng::new(11));
            let b = t.sample(500, t.default_noise(), &mut Rng::new(11));
            let c = t.sample(500, t.default_noise(), &mut Rng::new(12));
            assert_eq!((a.rows, a.cols), (500, 2), "{}", t.name());
            assert_eq!(a, b, "{}", t.name());
            assert_ne!(a, c, "{}", t.name());
        }
    }
}
