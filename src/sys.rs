//! The crate's contact with the operating system: allocator tuning (`mallopt`), loading libtorch's
//! CUDA library on demand (`dlopen`), and the process's peak memory.
#![allow(unsafe_code)]

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
    // SAFETY: mallopt only changes allocator parameters; it has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
        libc::mallopt(libc::M_TRIM_THRESHOLD, if bytes >= 32 << 20 { i32::MAX } else { 2 * bytes });
        libc::mallopt(libc::M_TOP_PAD, if bytes >= 32 << 20 { 64 << 20 } else { 0 });
    }
}

/// Loads libtorch's CUDA library (`libtorch_cuda.so`) into the process, once; returns whether it
/// is loaded.
///
/// The linker drops `libtorch_cuda.so` from the binary (nothing references its symbols directly:
/// it registers libtorch's CUDA backend from its static initialisers), and loading it
/// unconditionally would cost every command 0.2–0.4 s and 400 MB of resident memory on machines
/// without a GPU. So it is loaded here, when a CUDA device is asked for, before libtorch is first
/// asked whether CUDA is available. It is found like the binary's other libraries
/// (`LD_LIBRARY_PATH`, then the run path to libtorch that `build.rs` embeds).
pub fn load_cuda() -> bool {
    cuda_library().is_ok()
}

/// [`load_cuda`]'s outcome: `Err` holds the dynamic loader's message.
pub fn cuda_library() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            #[cfg(target_os = "linux")]
            {
                // SAFETY: the name is a NUL-terminated literal; the handle is kept for the life of
                // the process (never closed), so the library's code and registrations stay valid.
                // dlerror returns NULL or a NUL-terminated message, copied before any other call.
                unsafe {
                    let handle =
                        libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                    if handle.is_null() {
                        let msg = libc::dlerror();
                        return Err(if msg.is_null() {
                            "libtorch_cuda.so could not be loaded".to_string()
                        } else {
                            std::ffi::CStr::from_ptr(msg).to_string_lossy().into_owned()
                        });
                    }
                    Ok(())
                }
            }
            #[cfg(not(target_os = "linux"))]
            Err("CUDA is only loaded on Linux".to_string())
        })
        .clone()
}

/// This process's peak resident memory so far (Linux's `VmHWM`), kB; `None` where `/proc` does not
/// say.
pub fn peak_memory_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}
