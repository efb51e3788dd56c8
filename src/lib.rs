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
//!
//! On the CPU in float32, `log_prob`, `encode`, `decode`, `sample` and training run in fused
//! kernels ([`kernel`]) instead of libtorch operations, with the same maths to float32 rounding;
//! [`Flow::set_engine`] with [`Engine::Libtorch`] switches back to libtorch.
#![deny(unsafe_code)] // exceptions: `tune_allocator` and the kernels' run-time CPU dispatch
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
pub mod kernel;
pub mod plot;
pub mod train;

pub use config::{Engine, FlowConfig, Init, Layout};

/// Keeps freed memory in the process instead of handing it back to the OS.
///
/// glibc returns large blocks (libtorch's activations) to the kernel on every free and page-faults
/// them in again on the next allocation; in VMs where page faults are expensive that made training
/// and sampling up to several times slower. Raising the mmap and trim thresholds (what the
/// `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` variables do at start-up) removes the
/// faults at the cost of a resident heap as large as the biggest working set. Call it once, early
/// (the `rnvp` command and the examples do). Does nothing outside glibc.
pub fn tune_allocator() {
    set_mmap_threshold(32 << 20); // glibc's maximum
}

/// The opposite trade for memory-bound runs (`--reversible-backprop`): blocks of 1 MiB and more
/// are mapped and unmapped on every allocation, so freed activations go back to the OS at once.
///
/// Without it glibc's heap fragments as small long-lived tensors (gradients, each layer's
/// recomputed input) land between freed activations, and the resident size grows with depth
/// although the live memory does not (measured: 64 layers, batch 4096, hidden 512 reached 1.4 GiB
/// resident with 130 MiB live).
pub fn tune_allocator_for_memory() {
    set_mmap_threshold(1 << 20);
}

fn set_mmap_threshold(bytes: i32) {
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes allocator parameters; it has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
        libc::mallopt(libc::M_TRIM_THRESHOLD, if bytes >= 32 << 20 { i32::MAX } else { 2 * bytes });
        libc::mallopt(libc::M_TOP_PAD, if bytes >= 32 << 20 { 64 << 20 } else { 0 });
    }
}
pub use coupling::RNvp;
pub use error::{Error, Result};
pub use flow::{Flow, StackedNvp};
