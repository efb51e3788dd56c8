//! The batch-norm flow layer of the R-NVP paper (and MAF):
//! `z = (x − m) ⊘ √(v + ε) ⊙ exp(γ) + β`, `log|det| = Σ (γ − ½ log(v + ε))`.
//!
//! In training `m` and `v` are the batch's mean and (population) variance, and the running
//! averages `running_mean`, `running_var` move towards them (momentum 0.1, the unbiased variance,
//! as `torch.nn.BatchNorm1d`); everywhere else (evaluation, sampling, `log_prob`, export) the
//! running averages are used, so the layer is a fixed affine map with an exact inverse.
use tch::nn;
use tch::Tensor;

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// Batch norm with parameters `log_gamma` (γ), `beta` (β) and buffers `running_mean`, `running_var`.
#[derive(Debug)]
pub struct BatchNorm {
    log_gamma: Tensor,
    beta: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

/// The statistics a training pass normalised with: the batch's mean and population variance.
#[derive(Debug)]
pub struct BatchStats {
    mean: Tensor,
    var: Tensor,
}

impl BatchNorm {
    /// The identity map of `d` columns with running statistics (0, 1).
    pub fn build(p: &nn::Path, d: i64) -> Self {
        BatchNorm {
            log_gamma: p.zeros("log_gamma", &[d]),
            beta: p.zeros("beta", &[d]),
            running_mean: p.zeros_no_train("running_mean", &[d]),
            running_var: p.ones_no_train("running_var", &[d]),
        }
    }

    /// The layer's variables by key.
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        let t = |t: &Tensor| t.shallow_clone();
        vec![
            ("log_gamma", t(&self.log_gamma)),
            ("beta", t(&self.beta)),
            ("running_mean", t(&self.running_mean)),
            ("running_var", t(&self.running_var)),
        ]
    }

    /// The statistics of the batch `xs` (keeping the autograd graph).
    pub fn batch_stats(xs: &Tensor) -> BatchStats {
        BatchStats { mean: xs.mean_dim(0, false, xs.kind()), var: xs.var_dim(0, false, false) }
    }

    /// Moves the running averages towards the batch `xs`'s statistics.
    pub fn update_running(&self, xs: &Tensor) {
        if xs.size()[0] < 2 {
            return;
        }
        tch::no_grad(|| {
            let mean = xs.mean_dim(0, false, xs.kind());
            let var = xs.var_dim(0, true, false);
            let _ = self.running_mean.shallow_clone().lerp_(&mean, MOMENTUM);
            let _ = self.running_var.shallow_clone().lerp_(&var, MOMENTUM);
        });
    }

    /// The running averages as statistics (evaluation).
    pub fn running(&self) -> BatchStats {
        BatchStats { mean: self.running_mean.shallow_clone(), var: self.running_var.shallow_clone() }
    }

    /// `(z, log|det|)` normalising with `stats`.
    pub fn forward(&self, xs: &Tensor, stats: &BatchStats) -> (Tensor, Tensor) {
        let log_std = (&stats.var + EPS).log() * 0.5;
        let z = (xs - &stats.mean) * (&self.log_gamma - &log_std).exp() + &self.beta;
        (z, super::per_row((&self.log_gamma - log_std).sum(xs.kind()), xs))
    }

    /// The inverse of [`BatchNorm::forward`] with the same `stats`.
    pub fn inverse(&self, zs: &Tensor, stats: &BatchStats) -> Tensor {
        let log_std = (&stats.var + EPS).log() * 0.5;
        (zs - &self.beta) * (log_std - &self.log_gamma).exp() + &stats.mean
    }
}
