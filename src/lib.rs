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
//! let xs = flow.stack().sample(1000)?;     // x = f⁻¹(z), z ~ N(0, I)
//! let log_p = flow.stack().log_prob(&xs)?; // one value per row
//! # Ok::<(), rnvp::Error>(())
//! ```
//!
//! A conditional flow `p(x | c)` ([`FlowConfig::with_context`]) runs at a context:
//! `flow.stack().given(&c).sample(n)`, `.log_prob(&xs)` (see [`flow`]).
//!
//! On the CPU in float32, `log_prob`, `encode`, `decode`, `sample` and training run in fused
//! kernels ([`kernel`]) instead of libtorch operations, with the same maths to float32 rounding;
//! `flow.stack().run(Engine::Libtorch)` runs them with libtorch instead ([`Run`]); training takes
//! the engine in its [`train::TrainConfig`].
#![deny(unsafe_code)] // exceptions: `sys` (mallopt, dlopen) and `kernel::simd` (run-time CPU dispatch, AVX2 vectors)
#![deny(missing_docs)]

pub mod arch;
pub mod base;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod figures;
pub mod flow;
pub mod image_figures;
pub mod kernel;
pub mod layers;
pub mod multiscale;
pub mod plot;
pub mod presets;
pub mod run;
pub mod sys;
pub mod train;
pub mod truncation;

pub use config::{Arch, Coupling, FlowConfig, Init, Layout, Mixing, Scale};

pub use error::{Error, Result};
pub use flow::{Flow, StackedNvp};
pub use layers::RNvp;
pub use run::{Engine, Run};
pub use sys::{tune_allocator, tune_allocator_for_memory};
