//! Long work shows what it does: bars for a person at a terminal (the real
//! binary under a pseudo-terminal, `script(1)`), none through a pipe where
//! the summary is unchanged and INFO lines carry the counts, and the
//! daemon's journal and `status` while a first import runs.

mod common;

use std::time::Duration;

use common::peers::{FaultProxy, ScimPeer};
use common::sync_env::*;
use common::*;

/// A first import that takes a few seconds: AFAS `afas_ms` a page away,
/// the SCIM target 30 ms away.
async fn slow_env(afas_ms: u64) -> (Env, ScimPeer, FaultProxy) {
    let scim = ScimPeer::start().await;
    let proxy = FaultProxy::start_slow(scim.url(), vec![], Duration::from_millis(30)).await;
    let env = Env::new(600, &format!("{}bulk = false\n", scim_sink(&proxy.url()))).await;
    env.emu.state.set_latency(Duration::from_millis(afas_ms));
    (env, scim, proxy)
}

fn sync_args(env: &Env) -> Vec<String> {
    ["--config", &env.cfg, "sync", "--as-of", &day0().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The sync as one shell command line, for `script -c`.
fn sync_command_line(env: &Env) -> String {
    std::iter::once(env!("CARGO_BIN_EXE_afas-sync").to_string())
        .chain(sync_args(env))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a terminal shows at the end: the text after the last erased line,
/// without the carriage returns a terminal adds.
fn after_bars(raw: &str) -> String {
    let tail = raw.rsplit("\x1b[2K").next().unwrap_or(raw);
    tail.replace('\r', "")
}

#[tokio::test]
async fn a_terminal_sees_bars_and_a_pipe_sees_only_the_summary_and_counts() {
    // At a terminal.
    let (env, _scim, _proxy) = slow_env(40).await;
    let cmd = sync_command_line(&env);
    let out = tokio::process::Command::new("script")
        .args(["-qfec", &format!("{cmd} --log-level error"), "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .await
        .expect("script(1) from util-linux runs the binary under a pseudo-terminal");
    let tty = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{tty}");
    for shown in ["Profit_Employees_Alleo", "pages,", "rows", "delivering to scim", "/s"] {
        assert!(tty.contains(shown), "the terminal shows {shown:?}:\n{tty:?}");
    }
    let tty_summary = after_bars(&tty);
    assert!(tty_summary.starts_with("run 1 (success)"), "{tty_summary:?}");

    // Log lines are coloured at a terminal, but never with NO_COLOR set.
    let (env, _scim, _proxy) = slow_env(0).await;
    let cmd = sync_command_line(&env);
    for (no_color, coloured) in [("", true), ("1", false)] {
        let out = tokio::process::Command::new("script")
            .args(["-qfec", &format!("{cmd} --log-level info"), "/dev/null"])
            .env("TERM", "xterm")
            .env("NO_COLOR", no_color)
            .output()
            .await
            .expect("script");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text.lines().find(|l| l.contains("sync committed")).unwrap_or_default();
        assert_eq!(
            line.contains("\x1b[32m INFO"),
            coloured,
            "NO_COLOR={no_color:?}: {line:?}"
        );
        assert!(line.contains("INFO"), "{text:?}");
        if !coloured {
            // A bar may have been wiped just before the line; the line itself is plain.
            let own = line.rsplit("\x1b[2K").next().unwrap_or(line);
            assert!(!own.contains('\x1b'), "{line:?}");
        }
    }

    // Through a pipe, with a fresh state file and target: no bars, no
    // control characters, the same summary, and the counts as log lines.
    let (env, _scim, _proxy) = slow_env(300).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
        .args(sync_args(&env))
        .args(["--log-level", "info"])
        .env("AFAS_SYNC_PROGRESS_SECS", "1")
        .output()
        .await
        .expect("binary");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout, tty_summary,
        "the summary is the same at a terminal and in a pipe"
    );
    for c in ['\x1b', '\r'] {
        assert!(
            !stdout.contains(c) && !stderr.contains(c),
            "no control characters: {stderr:?}"
        );
    }
    assert!(
        stderr.contains(" INFO reading AFAS for ") && stderr.contains(" pages, "),
        "a counts line while AFAS is read (its pages take 300 ms):\n{stderr}"
    );
    // Rejected rows: the first ten one by one, then one line for the rest.
    let rejected: u64 = stdout
        .split(" rejected")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the summary counts rejected rows");
    let logged = stderr.matches("rejected AFAS row").count() as u64;
    assert_eq!(logged, rejected.min(10), "{stderr}");
    assert_eq!(stderr.contains("more rows are rejected"), rejected > 10, "{stderr}");
}

#[tokio::test]
async fn the_daemon_logs_counts_while_a_first_import_runs_and_status_says_when_it_is_done() {
    let (env, _scim, _proxy) = slow_env(300).await;
    let port = common::peers::free_port();
    let text = std::fs::read_to_string(&env.cfg).expect("cfg");
    std::fs::write(&env.cfg, format!("{text}\n[http]\nbind = \"127.0.0.1:{port}\"\n")).expect("cfg");
    let log_path = env.dir.path().join("daemon.log");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
        .args(["--config", &env.cfg, "--log-level", "info", "run"])
        .env("AFAS_SYNC_PROGRESS_SECS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("daemon");
    // The catch-up run starts at once; while its changes go out, `status`
    // (through the control socket) says how far delivery is.
    let mut seen = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (code, out, _) = run_bin(&["--config", &env.cfg, "status"]).await;
        if code == 0 && out.contains("delivering to scim:") && out.contains("done in about") {
            seen = Some(out);
            break;
        }
    }
    let status = seen.expect("status showed the delivery under way");
    assert!(status.contains("now:          delivering"), "{status}");
    let (_, json, _) = run_bin(&["--config", &env.cfg, "--json", "status"]).await;
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    if v["now"]["phase"] == "delivering" {
        let sink = &v["now"]["sinks"][0];
        assert!(sink["pending"].is_u64() && sink["rate"].is_number(), "{v}");
    }
    wait_for_log(&log_path, " INFO reading AFAS for ", 30).await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(!log.contains('\x1b'), "no colour in a log file");
    let pid = daemon.id().expect("pid").to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let _ = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await;
}
