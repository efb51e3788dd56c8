//! Which rounding regime a run is in. CI runs the suite twice: as the machine is, and with MKL,
//! libtorch's own kernels and rnvp's kernels lowered to baseline instruction sets
//! (`MKL_ENABLE_INSTRUCTIONS=SSE4_2 ATEN_CPU_CAPABILITY=default RNVP_KERNELS=baseline`). This test
//! checks that the variables take effect: otherwise the second pass would silently repeat the first.
mod common;
use common::*;
use tch::{Device, Kind, Tensor};

fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    #[allow(unreachable_code)]
    false
}

/// Whether the CPU is Intel's. MKL picks its path by instruction set on Intel processors only: on
/// others (measured on an AMD EPYC with AVX2) its products give the same bits under
/// `MKL_ENABLE_INSTRUCTIONS=SSE4_2`, `AVX` or nothing, so a lowered MKL cannot be told by its
/// rounding there.
fn cpu_is_intel() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("vendor_id") && l.contains("GenuineIntel")))
}

#[test]
fn the_instruction_sets_are_the_ones_the_environment_asks_for() {
    let mkl_lowered = std::env::var("MKL_ENABLE_INSTRUCTIONS").is_ok_and(|v| v == "SSE4_2");
    let aten = std::env::var("ATEN_CPU_CAPABILITY").ok();
    let dir = tmp_dir("regime");
    let (a, b) = seeded(3, || {
        let o = (Kind::Float, Device::Cpu);
        (Tensor::randn([256, 256], o), Tensor::randn([256, 256], o))
    });
    a.write_npy(dir.join("a.npy")).unwrap();
    b.write_npy(dir.join("b.npy")).unwrap();
    // PyTorch with this process's variables: libtorch's own kernels follow ATEN_CPU_CAPABILITY
    let capability = std::process::Command::new(python())
        .arg(repo().join("scripts/reference.py"))
        .args([
            "matmul",
            "--a",
            dir.join("a.npy").to_str().unwrap(),
            "--b",
            dir.join("b.npy").to_str().unwrap(),
        ])
        .args(["--out", dir.join("c_env.npy").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(capability.status.success(), "{}", String::from_utf8_lossy(&capability.stderr));
    let capability = String::from_utf8_lossy(&capability.stdout).trim().to_string();
    match aten.as_deref() {
        Some("default") => assert_eq!(capability, "DEFAULT"),
        _ if cpu_has_avx2() => assert_ne!(capability, "DEFAULT", "the CPU has AVX2"),
        _ => {}
    }
    // MKL in this process against MKL in a PyTorch at the machine's own instruction sets
    // (`reference` drops the variables), one thread each: the same bits unless this one is lowered
    reference(&[
        "matmul",
        "--a",
        dir.join("a.npy").to_str().unwrap(),
        "--b",
        dir.join("b.npy").to_str().unwrap(),
        "--out",
        dir.join("c_full.npy").to_str().unwrap(),
    ]);
    tch::set_num_threads(1);
    let here = a.matmul(&b);
    let full = npy(dir.join("c_full.npy"));
    let same_bits = Vec::<f32>::try_from(here.flatten(0, -1)).unwrap()
        == Vec::<f32>::try_from(full.flatten(0, -1)).unwrap();
    assert_close(&here, &full, 1e-3, 1e-4, "A @ B");
    if mkl_lowered && cpu_has_avx2() && cpu_is_intel() {
        assert!(!same_bits, "MKL_ENABLE_INSTRUCTIONS=SSE4_2 did not change MKL's rounding");
    } else if !mkl_lowered {
        assert!(same_bits, "the same MKL at the same instruction set gave other bits");
    }
    eprintln!(
        "MKL lowered: {mkl_lowered}, ATen capability: {capability}, kernels: {}",
        rnvp::kernel::Isa::detected().name()
    );
}
