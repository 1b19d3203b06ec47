use clap::Parser;

// The hand-written memory routines: compiled only into the static binary
// (and its tests), out of reach of the library and every other build.
#[cfg(all(target_arch = "x86_64", any(target_env = "musl", test)))]
mod mem;

#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc keeps freed memory committed for a while (a purge delay of 1 s,
/// and arenas committed eagerly) to be quick to reuse. A sync frees large
/// buffers as it goes, so the defaults held ~50 MiB more at its peak on a
/// 100k company (measured: no-op sync 118–122 MiB with the defaults,
/// 55 MiB with both options at 0; CPU within the run-to-run noise). An
/// operator's `MIMALLOC_PURGE_DELAY` or `MIMALLOC_ARENA_EAGER_COMMIT` in the
/// environment still wins.
#[cfg(target_env = "musl")]
fn tune_allocator() {
    // From mimalloc.h (v3) as built by libmimalloc-sys 0.1.49 (pinned).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    for (option, env) in [
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT"),
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY"),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: sets a process-wide option; mimalloc reads options
            // atomically and accepts any value for these two.
            unsafe { libmimalloc_sys::mi_option_set(option, 0) };
        }
    }
}

/// glibc gives each thread that allocates its own arena, up to eight per
/// core, and keeps what each one freed. A sync runs a dozen threads
/// (runtime workers, the diff, the state-file writer, the file sink's
/// workers) that hand buffers to each other, so freed memory piled up in
/// arenas the next allocation did not use: at 100k employees 66 MiB peak
/// against 60 MiB with the arenas capped at two (measured, both a first
/// import and a no-op; CPU within the noise). An operator's
/// `MALLOC_ARENA_MAX` still wins.
#[cfg(target_env = "gnu")]
fn tune_allocator() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; called first thing
        // in main, before any other thread exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

#[cfg(not(any(target_env = "musl", target_env = "gnu")))]
fn tune_allocator() {}

/// The static binary's `memcpy`, `memmove`, `memcmp` and `bcmp`: musl's are
/// slow for the short copies a sync makes by the million (why and the
/// measurements: src/mem.rs). Defining them here keeps musl's out of the
/// link; glibc builds keep glibc's.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
mod libc_mem {
    use crate::mem;

    // SAFETY (all four): the C contracts are the callers' to keep; each
    // hands its arguments on unchanged to the routine documented in
    // src/mem.rs, which reads and writes only the n bytes given.
    #[no_mangle]
    unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: libc's contract for memcpy is mem::copy's.
        unsafe { mem::copy(dst, src, n) };
        dst
    }

    #[no_mangle]
    unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: libc's contract for memmove is mem::copy_overlapping's.
        unsafe { mem::copy_overlapping(dst, src, n) };
        dst
    }

    #[no_mangle]
    unsafe extern "C" fn memcmp(l: *const u8, r: *const u8, n: usize) -> i32 {
        // SAFETY: libc's contract for memcmp is mem::compare's.
        unsafe { mem::compare(l, r, n) }
    }

    #[no_mangle]
    unsafe extern "C" fn bcmp(l: *const u8, r: *const u8, n: usize) -> i32 {
        // SAFETY: as memcmp; any nonzero result means "different" for bcmp.
        unsafe { mem::compare(l, r, n) }
    }
}

fn main() {
    tune_allocator();
    let cli = afas_sync::cli::Cli::parse();
    // The demo prints its own summary; only errors go to the log by default.
    let demo_default =
        matches!(cli.command, afas_sync::cli::Command::Demo { .. }) && std::env::var_os("RUST_LOG").is_none();
    let level = cli
        .log_level
        .as_deref()
        .or(if demo_default { Some("error") } else { None });
    afas_sync::cli::init_logging(level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(afas_sync::exit::FAILURE);
        }
    };
    let code = runtime.block_on(afas_sync::cli::run(cli));
    // A state file commit still running on a blocking thread (the daemon
    // stopped by SIGTERM) completes before the process exits; a hung
    // request on a worker does not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(4));
    std::process::exit(code);
}
