//! The base distribution: the standard normal `N(0, I)` in `d` dimensions.
use tch::{Device, Kind, Tensor};

/// `ln(2π)`.
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// `log N(z; 0, I) = −½ Σᵢ zᵢ² − (d/2)·ln 2π`, one value per row of `z` (`[n, d]` → `[n]`).
///
/// This is the closed form of the notebook's `MultivariateNormal(zeros(d), eye(d)).log_prob(z)`:
/// infinite coordinates give `−∞`, NaN gives NaN.
pub fn log_prob(zs: &Tensor) -> Tensor {
    let d = zs.size()[1] as f64; // invariant: callers pass [n, d]
    zs.square().sum_dim_intlist(-1, false, None) * -0.5 - 0.5 * d * LN_2PI
}

/// `log N(z; 0, I)` of one row, in f64 (the fused kernels' rows).
pub(crate) fn log_prob_row(z: &[f32]) -> f64 {
    -0.5 * z.iter().map(|&v| v as f64 * v as f64).sum::<f64>() - 0.5 * z.len() as f64 * LN_2PI
}

/// `n` draws from `N(0, I)` in `d` dimensions (libtorch's generator: seed it with `tch::manual_seed`).
pub fn sample(n: i64, d: i64, kind: Kind, device: Device) -> Tensor {
    Tensor::randn([n, d], (kind, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_gaussian_formula() {
        let zs = Tensor::from_slice(&[0.0f64, 0.0, 1.0, -2.0, 3.0, 0.5]).view([3, 2]);
        let got = Vec::<f64>::try_from(log_prob(&zs)).unwrap();
        let c = -(2.0 * std::f64::consts::PI).ln();
        let want = [c, c - 2.5, c - 4.625];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
    }

    #[test]
    fn infinite_coordinates_give_minus_infinity() {
        let zs = Tensor::from_slice(&[f32::INFINITY, 0.0, f32::NEG_INFINITY, 1.0]).view([2, 2]);
        let got = Vec::<f32>::try_from(log_prob(&zs)).unwrap();
        assert!(got.iter().all(|v| *v == f32::NEG_INFINITY), "{got:?}");
    }
}
