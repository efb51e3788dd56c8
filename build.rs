//! Embeds libtorch's library directory as an rpath, so that `cargo run`, `cargo test`, the
//! examples and an installed `rnvp` find `libtorch_cpu.so` without `LD_LIBRARY_PATH`.
//!
//! torch-sys (whose `links` key is `tch`) exports that directory to crates that depend on it
//! directly as `DEP_TCH_LIBTORCH_LIB`.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    if dir.is_empty() || !Path::new(&dir).join("libtorch_cpu.so").exists() {
        eprintln!("error: libtorch not found ({dir:?}): run `scripts/setup` first");
        std::process::exit(1);
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}
