//! # rnvp — R-NVP normalizing flows on libtorch
//!
//! The model of the "Going with the Flow" notebook, module for module: [`RNvp`] is its `R_NVP`
//! coupling layer (with `sig_net` and `mu_net` as `tch::nn::Sequential`s) and [`StackedNvp`] its
//! `stacked_NVP`. Variable names equal the notebook's state_dict keys
//! (`bijectors.{i}.sig_net.0.weight`, ...).
//!
//! A flow maps data `x` to a latent `z = f(x)` with a standard normal base distribution:
//!
//! `log p(x) = log N(f(x); 0, I) + Σᵢ log|det ∂zᵢ/∂zᵢ₋₁|`
//!
//! ```no_run
//! use rnvp::{Flow, FlowConfig};
//! let flow = Flow::new(&FlowConfig::notebook(3), tch::Device::Cpu, tch::Kind::Float)?;
//! let xs = flow.sample(1000)?;          // x = f⁻¹(z), z ~ N(0, I)
//! let log_p = flow.log_prob(&xs)?;      // one value per row
//! # Ok::<(), rnvp::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod base;
pub mod checkpoint;
pub mod config;
pub mod coupling;
pub mod data;
pub mod device;
pub mod error;
pub mod figures;
pub mod flow;
pub mod plot;
pub mod train;

pub use config::{FlowConfig, Init, Layout};
pub use coupling::RNvp;
pub use error::{Error, Result};
pub use flow::{Flow, StackedNvp};
