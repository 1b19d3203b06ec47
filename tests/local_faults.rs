//! Local faults with the real binary: the disk filling up while a run
//! commits, and a state directory the service may not write.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use afas_sync::emulator::data::{churn, generate};
use afas_sync::store::Store;
use common::*;
use jiff::civil::Date;

const GUARDS: &str = "\n[guards]\nmax_leavers = 100000\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n";

fn bin(cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_afas-sync"));
    c.arg("--config").arg(cfg).args(args).env_remove("RUST_LOG");
    c
}

fn output(mut c: Command) -> (i32, String) {
    let o = c.output().expect("binary runs");
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn store_state(path: &Path) -> (Option<u64>, u64) {
    let store = Store::open(path).expect("store opens");
    store.verify().expect("store verifies");
    (
        store.meta().expect("meta").last_committed_run,
        store.employee_count().expect("count"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_commit_and_loses_nothing() {
    let day0 = Date::new(2026, 11, 24).expect("date");
    let day1 = Date::new(2026, 11, 25).expect("date");
    let mut ds = generate(3, 200, day0);
    let emu = spawn_emulator(ds.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, GUARDS);
    let state = dir.path().join("state.redb");

    let (code, out) = output(bin(&cfg, &["sync", "--as-of", "2026-11-24"]));
    assert_eq!(code, 0, "{out}");
    let before = store_state(&state);
    let bytes_before = std::fs::read(&state).expect("read store");

    // A big day in AFAS (thousands of joiners) on a disk with no room left:
    // the file may not grow beyond its current size (RLIMIT_FSIZE, the
    // same EFBIG/ENOSPC path as a full file system).
    let summary = churn(&mut ds, 4, day1, 15_000, 0, 0);
    emu.state.set_data(ds);
    let limit = bytes_before.len() as libc::rlim_t;
    let mut full = bin(&cfg, &["sync", "--as-of", "2026-11-25"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        full.pre_exec(move || {
            // Ignored, the write fails with EFBIG instead of killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, out) = output(full);
    assert_eq!(code, 1, "a failed commit must fail the command: {out}");
    assert!(out.contains("File too large") || out.contains("No space"), "{out}");
    assert!(!out.contains("panicked"), "{out}");

    // The store is the last committed one, and it verifies.
    assert_eq!(store_state(&state), before);

    // With room again the same day commits once, with every joiner.
    let (code, out) = output(bin(&cfg, &["sync", "--as-of", "2026-11-25"]));
    assert_eq!(code, 0, "{out}");
    let joiners: u64 = out
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("joiner count in the summary");
    let added = summary.joiners.len() as u64;
    assert!(
        joiners > 0 && joiners <= added,
        "{joiners} joiners for {added} new rows: {out}"
    );
    let after = store_state(&state);
    assert_eq!(after.1, before.1 + joiners, "{out}");
    // And a run of the same data changes nothing: none is sent twice.
    let (code, out) = output(bin(&cfg, &["sync", "--as-of", "2026-11-25"]));
    assert_eq!(code, 4, "{out}");
}

/// Runs the command as root would without CAP_DAC_OVERRIDE: the file mode
/// bits then bind root too (and a non-root user is bound anyway).
fn without_dac_override(c: &mut Command) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::geteuid() == 0 {
                for cap in [1, 2] {
                    // CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_state_directory_is_refused_by_name_and_left_alone() {
    let emu = spawn_emulator(generate(5, 40, Date::new(2026, 11, 24).expect("date"))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).expect("state dir");
    let token = dir.path().join("afas-token");
    std::fs::write(&token, TOKEN_HEX).expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cfg = dir.path().join("config.toml");
    let store = state_dir.join("state.redb");
    std::fs::write(
        &cfg,
        format!(
            "[afas]\nbase_url = \"{}\"\ntoken_file = \"afas-token\"\n\n[store]\npath = \"{}\"\n{GUARDS}",
            emu.base_url(),
            store.display()
        ),
    )
    .expect("config");

    // No store yet, and the directory is read-only.
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let mut c = bin(&cfg, &["sync", "--as-of", "2026-11-24"]);
    without_dac_override(&mut c);
    let (code, out) = output(c);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(&store.display().to_string()), "names the file: {out}");
    assert!(
        out.contains("Permission denied") || out.contains("permission denied"),
        "{out}"
    );
    assert!(!store.exists());

    // An existing store that became read-only: refused, byte for byte unchanged.
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (code, out) = output(bin(&cfg, &["sync", "--as-of", "2026-11-24"]));
    assert_eq!(code, 0, "{out}");
    let bytes = std::fs::read(&store).expect("read");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let mut c = bin(&cfg, &["sync", "--as-of", "2026-11-25"]);
    without_dac_override(&mut c);
    let (code, out) = output(c);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(&store.display().to_string()), "names the file: {out}");
    assert!(!out.contains("panicked"), "{out}");
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(std::fs::read(&store).expect("read"), bytes);
}
