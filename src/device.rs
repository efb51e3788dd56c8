//! Choosing where tensors live: `auto`, `cpu`, `cuda`, `cuda:N`.
use crate::error::{Error, Result};
use tch::{Cuda, Device, Kind};

/// Parses a device name; `auto` is CUDA device 0 when libtorch sees one, else the CPU. A CUDA
/// device that is not there is an error.
///
/// libtorch's CUDA library is loaded (once) when a CUDA device is named, and for `auto` when an
/// NVIDIA driver is installed ([`crate::sys::load_cuda`]); CPU-only runs never load it.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    let wants_cuda = name != "cpu" && (name != "auto" || nvidia_driver_present());
    let count = || {
        if wants_cuda && crate::sys::load_cuda() && Cuda::is_available() {
            Cuda::device_count()
        } else {
            0
        }
    };
    let cuda = |i: i64| {
        let n = count();
        if i < n {
            Ok(Device::Cuda(i as usize))
        } else if let (0, Err(why)) = (n, crate::sys::cuda_library()) {
            Err(Error::InvalidConfig(format!(
                "device cuda:{i}: CUDA is not available (libtorch's CUDA library did not load: {})",
                crate::error::first_line(&why)
            )))
        } else if n == 0 {
            Err(Error::InvalidConfig(format!(
                "device cuda:{i}: CUDA is not available (libtorch sees no GPU)"
            )))
        } else {
            Err(Error::InvalidConfig(format!("device cuda:{i} does not exist (libtorch sees {n} GPUs)")))
        }
    };
    match name.as_str() {
        "auto" => Ok(if count() > 0 { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        _ => match name.strip_prefix("cuda:").map(str::parse::<i64>) {
            Some(Ok(i)) if i >= 0 => cuda(i),
            _ => Err(Error::InvalidConfig(format!(
                "unknown device '{name}' (expected auto, cpu, cuda or cuda:N)"
            ))),
        },
    }
}

/// Whether an NVIDIA kernel driver is installed (then `auto` looks for a GPU).
fn nvidia_driver_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
        || std::path::Path::new("/dev/nvidiactl").exists()
}

/// Parses a dtype name: `f32` (float32) or `f64` (float64).
pub fn parse_kind(name: &str) -> Result<Kind> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Ok(Kind::Float),
        "f64" | "float64" | "double" => Ok(Kind::Double),
        o => Err(Error::InvalidConfig(format!("unknown dtype '{o}' (expected f32 or f64)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_rejects_missing_ones() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:-1").is_err());
        let n = if Cuda::is_available() { Cuda::device_count() } else { 0 };
        let e = parse_device(&format!("cuda:{n}")).unwrap_err().to_string();
        assert!(e.contains(&format!("cuda:{n}")), "{e}");
        assert_eq!(parse_kind("f64").unwrap(), Kind::Double);
        assert!(parse_kind("f16").is_err());
    }
}
