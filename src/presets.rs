//! Named training recipes (`rnvp train --preset NAME`) as library values, so that a library user
//! can reproduce what the command line runs.
use crate::config::{Arch, Init};
use crate::data::BoundsMode;
use crate::train::Schedule;

/// A recipe: the architecture's size and the training schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// Its name.
    pub name: &'static str,
    /// The layers of each step.
    pub arch: Arch,
    /// Steps (coupling layers).
    pub layers: i64,
    /// Hidden units of each conditioner.
    pub hidden: i64,
    /// Optimizer steps (for a data file, at least; see `epochs`).
    pub steps: i64,
    /// For a data file: the schedule spans this many epochs of its training rows when that is more
    /// than `steps`, up to `max_steps` ([`Preset::steps_for`]). `None`: always `steps`.
    pub epochs: Option<i64>,
    /// The most steps `epochs` can ask for.
    pub max_steps: i64,
    /// Rows per batch.
    pub batch_size: i64,
    /// Adam's learning rate.
    pub lr: f64,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Steps of linear warm-up (`rnvp train` caps it at a fifth of `--steps`).
    pub warmup: i64,
    /// Initialisation of the conditioners.
    pub init: Init,
    /// Gradient-norm clipping.
    pub clip_grad: Option<f64>,
    /// Validation (and checkpoint) interval.
    pub val_every: i64,
    /// Early stopping's patience in validations for a data file (validated once per epoch);
    /// `None`: the default of 20. Toy sets (fresh points every step) never stop early.
    pub patience: Option<i64>,
    /// How a flow keeps to a declared box (`--bounds`) unless `--bounds-mode` says otherwise.
    pub bounds_mode: BoundsMode,
    /// Threads (small matrices: one thread avoids libtorch's threading overhead and contention,
    /// and keeps the result independent of the machine's core count).
    pub threads: i32,
}

/// `best`: found by a search on two moons (README, "Deeper, faster, leaner"): mean test NLL 1.132
/// nats over seeds 0–2 (and over 0–5; the floor is 1.131) in about 11 s of training on 2 cores.
pub const BEST: Preset = Preset {
    name: "best",
    arch: Arch::NOTEBOOK,
    layers: 8,
    hidden: 64,
    steps: 20_000,
    epochs: None,
    max_steps: 20_000,
    batch_size: 1024,
    lr: 3e-3,
    schedule: Schedule::Cosine,
    warmup: 100,
    init: Init::Identity,
    clip_grad: Some(1.0),
    val_every: 500,
    patience: None,
    bounds_mode: BoundsMode::Logit,
    threads: 1,
};

/// `glow`: `best`'s schedule with Glow's layers (ActNorm → LU → sigmoid-scaled affine coupling),
/// twice as many coupling layers (16) and 8,000 optimizer steps. In the zoo benchmark
/// (docs/BENCHMARKS-family.md) it is rnvp's best flow on five of the six toy sets at equal time,
/// and finishes where the notebook's layers stop (eight-gaussians); Glow stacks of 32 and 64
/// layers trained without divergence on every seed measured (lr 1e-3).
pub const GLOW: Preset =
    Preset { name: "glow", arch: Arch::GLOW, layers: 16, steps: 8_000, max_steps: 8_000, ..BEST };

/// `sbi`: one recipe for neural posterior estimation on simulation tables (`--context M`):
/// Glow's layers (stable at any depth), 16 steps of 64 units, batches of 256, Adam at 2e-3 with a
/// slow linear warm-up (2,000 steps) inside a cosine schedule over 10,000 steps — or 60 epochs of
/// the training rows where that is more, up to 20,000 steps (10⁵ simulations: 20,000) — gradient
/// clipping, and early stopping on the 10% validation split with a patience of 50 epochs, keeping
/// the best validation model. On two_moons at 10⁵ simulations the validation NLL was still
/// falling at step 10,000 (−3.514 nats); 20,000 steps reached −3.603, and sbibm's mean C2ST over
/// the 10 observations went from 0.575 to 0.550. The warm-up passes through small learning
/// rates, where a task that overfits early finds its best model (gaussian_linear at 10⁴
/// simulations: KL to the exact posterior 0.048 nats, against 0.12 with 1e-3 and no warm-up); a
/// task that keeps improving (two_moons) trains to the end of the schedule, where the patience of
/// 20 stopped it early. A declared box (`--bounds`) is kept by truncation, as the `sbi` package
/// keeps a prior's support: the flow trains on the standardized θ and its samples are its draws
/// inside the box. On two_moons at 10⁵ simulations that scored 0.524 against the logit map's
/// 0.550 (the logit map turns posterior mass at an edge of the box into a long tail, and the
/// posterior at observation 5 lies against two edges: 0.554 against 0.673).
pub const SBI: Preset = Preset {
    name: "sbi",
    arch: Arch::GLOW,
    layers: 16,
    hidden: 64,
    steps: 10_000,
    epochs: Some(60),
    max_steps: 20_000,
    batch_size: 256,
    lr: 2e-3,
    warmup: 2_000,
    patience: Some(50),
    bounds_mode: BoundsMode::Truncate,
    ..BEST
};

/// `digits`: the R-NVP paper's multi-scale image flow (`realnvp-image`: 2 scales, 4 couplings per
/// group, conditioners of 64 channels, batch norm) on images, batches of 128, Adam at 1e-3 with
/// the exponential decay of `--gamma`, and early stopping after 20 epochs without a better
/// validation NLL, keeping the best model. On scikit-learn's digits (1,437 training images, of
/// which 144 validate) the best validation model comes after 400–700 steps and scores 2.06–2.07
/// bits/dim on the 360 test images (seeds 0; `realnvp-image` beat `glow-image`, 2.18–2.20, which
/// overfits sooner).
pub const DIGITS: Preset = Preset {
    name: "digits",
    arch: Arch::REALNVP_IMAGE,
    layers: 4,
    hidden: 64,
    steps: 3_000,
    epochs: None,
    max_steps: 3_000,
    batch_size: 128,
    lr: 1e-3,
    schedule: Schedule::Exponential,
    warmup: 0,
    init: Init::Identity,
    clip_grad: None,
    val_every: 100,
    patience: Some(20),
    bounds_mode: BoundsMode::Logit,
    threads: 2,
};

impl Preset {
    /// The optimizer steps for a data file whose training rows (the validation split excluded)
    /// make `batches` batches per epoch: `steps`, or `epochs` epochs where that is more, capped at
    /// `max_steps` (never below `steps`).
    pub fn steps_for(&self, batches: usize) -> i64 {
        match self.epochs {
            Some(e) => e
                .saturating_mul(i64::try_from(batches).unwrap_or(i64::MAX))
                .clamp(self.steps, self.max_steps.max(self.steps)),
            None => self.steps,
        }
    }
}

/// Every preset.
pub const ALL: [Preset; 4] = [BEST, GLOW, SBI, DIGITS];

/// The preset called `name`.
pub fn named(name: &str) -> Option<Preset> {
    ALL.iter().find(|p| p.name == name).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbi_spans_sixty_epochs_between_its_bounds() {
        // 10⁴ simulations (9,000 training rows, 36 batches of 256): 2,160 steps, below the floor
        assert_eq!(SBI.steps_for(9_000usize.div_ceil(256)), 10_000);
        // 10⁵ (90,000 rows, 352 batches): 21,120, capped
        assert_eq!(SBI.steps_for(90_000usize.div_ceil(256)), 20_000);
        // in between: 60 epochs of 50,000 rows
        assert_eq!(SBI.steps_for(50_000usize.div_ceil(256)), 60 * 196);
        assert_eq!(SBI.steps_for(0), 10_000);
        assert_eq!(SBI.steps_for(usize::MAX), 20_000);
        for p in [BEST, GLOW, DIGITS] {
            assert_eq!(p.steps_for(1_000_000), p.steps, "{}", p.name);
        }
    }
}
