//! Glow's ActNorm: `z = (x − b) ⊙ exp(ℓ)` per column, `log|det| = Σ ℓ` for every row.
//!
//! Data-dependent initialisation: on the first batch it sees in training, `b = mean(x)` and
//! `ℓ = −log(std(x) + 10⁻⁶)` (population std), so that its output has zero mean and unit variance
//! there; then `b` and `ℓ` train as ordinary parameters. Whether that happened is the buffer
//! `initialized` (0 or 1), saved with the weights, so a reloaded model never re-initialises.
use tch::nn;
use tch::Tensor;

/// ActNorm with parameters `loc` (b), `log_scale` (ℓ) and the buffer `initialized`.
#[derive(Debug)]
pub struct ActNorm {
    loc: Tensor,
    log_scale: Tensor,
    initialized: Tensor,
}

impl ActNorm {
    /// An uninitialised layer of `d` columns (the identity until its first training batch).
    pub fn build(p: &nn::Path, d: i64) -> Self {
        ActNorm {
            loc: p.zeros("loc", &[d]),
            log_scale: p.zeros("log_scale", &[d]),
            initialized: p.zeros_no_train("initialized", &[]),
        }
    }

    /// The layer's variables by key.
    pub fn variables(&self) -> Vec<(&'static str, Tensor)> {
        let t = |t: &Tensor| t.shallow_clone();
        vec![("loc", t(&self.loc)), ("log_scale", t(&self.log_scale)), ("initialized", t(&self.initialized))]
    }

    /// Whether the data-dependent initialisation has happened.
    pub fn is_initialized(&self) -> bool {
        self.initialized_value() != 0.0
    }

    /// The buffer `initialized` (0 or 1 in a valid model).
    pub fn initialized_value(&self) -> f64 {
        self.initialized.double_value(&[])
    }

    /// Sets `b` and `ℓ` from the batch `xs` (once).
    pub fn initialize(&self, xs: &Tensor) {
        if self.is_initialized() || xs.size()[0] < 2 {
            return;
        }
        tch::no_grad(|| {
            let mean = xs.mean_dim(0, false, xs.kind());
            let std = xs.std_dim(0, false, false);
            self.loc.shallow_clone().copy_(&mean);
            self.log_scale.shallow_clone().copy_(&(std + 1e-6).log().neg());
            let _ = self.initialized.shallow_clone().fill_(1.0);
        });
    }

    /// `(z, log|det|)`, one log-determinant per row.
    pub fn forward(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let z = (xs - &self.loc) * self.log_scale.exp();
        (z, super::per_row(self.log_scale.sum(self.log_scale.kind()), xs))
    }

    /// `x = z ⊙ exp(−ℓ) + b`.
    pub fn inverse(&self, zs: &Tensor) -> Tensor {
        zs * self.log_scale.neg().exp() + &self.loc
    }
}
