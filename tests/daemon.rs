//! The real binary as a daemon on loopback: ready, scheduled runs, the
//! control socket while running, /metrics accepted by promtool, SIGHUP
//! reload, SIGTERM stop with nothing lost.

mod common;

use std::time::Duration;

use afas_sync::emulator::data::generate;
use afas_sync::store::Store;
use common::peers::{free_port, http};
use common::*;
use serde_json::Value;

fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

#[tokio::test]
async fn the_daemon_runs_on_schedule_answers_while_running_and_stops_cleanly() {
    let emu = spawn_emulator(generate(8, 60, jiff::civil::Date::new(2026, 11, 24).expect("d"))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // A slot 8 seconds from now (Amsterdam time), besides the catch-up run.
    let slot = jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::get("Europe/Amsterdam").expect("tz"))
        .checked_add(jiff::ToSpan::seconds(8))
        .expect("t")
        .strftime("%H:%M:%S")
        .to_string();
    let extra = format!(
        "\n[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n\n[schedule]\ntimes = [\"{slot}\"]\n\n[http]\nbind = \"127.0.0.1:{port}\"\n\n[sink.files]\ndir = \"out\"\n"
    );
    let cfg = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, &extra);
    let cfg_s = cfg.to_str().expect("p").to_string();
    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
        .args(["--config", &cfg_s, "--log-level", "info", "run"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("daemon");
    let base = format!("http://127.0.0.1:{port}");
    let client = http();
    wait_for("/healthz", 20, || {
        let c = client.clone();
        let u = format!("{base}/healthz");
        async move { c.get(u).send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;

    // The catch-up run at start, then the scheduled one, seen through the
    // control socket (the daemon holds the state file).
    let runs = |cfg: String| async move {
        let (code, out, err) = run_bin(&["--config", &cfg, "--json", "history"]).await;
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out)
            .map(|v| v.as_array().map(|a| a.len()).unwrap_or(0))
            .unwrap_or(0)
    };
    wait_for("the first run", 30, || {
        let f = runs(cfg_s.clone());
        async move { f.await >= 1 }
    })
    .await;
    wait_for("the scheduled run", 40, || {
        let f = runs(cfg_s.clone());
        async move { f.await >= 2 }
    })
    .await;

    let (code, out, err) = run_bin(&["--config", &cfg_s, "status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("employees:") && !err.contains("in use"), "{out}{err}");
    let (code, out, err) = run_bin(&["--config", &cfg_s, "sync"]).await;
    assert_eq!(code, 4, "a sync through the daemon: nothing new. {out}{err}");

    // Health, readiness, metrics, and nothing else.
    let get = |path: &str| client.get(format!("{base}{path}")).send();
    assert_eq!(get("/readyz").await.expect("readyz").status().as_u16(), 200);
    assert_eq!(get("/nope").await.expect("404").status().as_u16(), 404);
    let metrics = get("/metrics").await.expect("metrics").text().await.expect("text");
    for series in [
        "afas_sync_build_info",
        "afas_sync_last_success_timestamp_seconds",
        "afas_sync_runs_total{outcome=\"success\"}",
        "afas_sync_employees{state=\"active\"}",
        "afas_sync_mutations_total{kind=\"joiner\"}",
        "afas_sync_afas_requests_total{connector=\"Profit_Employees_Alleo\",status=\"200\"}",
        "afas_sync_afas_request_duration_seconds_bucket",
        "afas_sync_outbox_pending{sink=\"files\"} 0",
        "afas_sync_delivery_concurrency{sink=\"files\"}",
    ] {
        assert!(metrics.contains(series), "missing {series} in\n{metrics}");
    }
    assert!(!metrics.contains("bedrijf.example"), "no personal data in metrics");
    let mut check = tokio::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (./scripts/test installs Debian's prometheus package)");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = check.stdin.take().expect("stdin");
        stdin.write_all(metrics.as_bytes()).await.expect("write");
    }
    let result = check.wait_with_output().await.expect("promtool");
    assert!(
        result.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );

    // SIGHUP: an invalid config is refused and the old one kept; a valid
    // one is taken.
    let pid = daemon.id().expect("pid") as i32;
    let good = std::fs::read_to_string(&cfg).expect("cfg");
    std::fs::write(&cfg, good.replace("[guards]", "[guards]\nbogus_key = 1")).expect("write");
    let hup = |p: i32| {
        std::process::Command::new("kill")
            .args(["-HUP", &p.to_string()])
            .status()
            .expect("kill")
    };
    assert!(hup(pid).success());
    let log_path = dir.path().join("daemon.log");
    wait_for_log(&log_path, "reload refused", 10).await;
    std::fs::write(&cfg, &good).expect("write");
    assert!(hup(pid).success());
    wait_for_log(&log_path, "configuration reloaded", 10).await;

    // SIGTERM: exit 0, the state file intact.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = tokio::time::timeout(Duration::from_secs(30), daemon.wait())
        .await
        .expect("stops in time")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    let store = Store::open(&dir.path().join("state.redb")).expect("store");
    store.verify().expect("digest");
    assert!(
        store.outbox_entries("files").expect("outbox").is_empty(),
        "delivered before stopping"
    );
    assert!(!dir.path().join("afas-sync.sock").exists(), "socket removed");
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(!log.contains(TOKEN_HEX), "no secret in the log");
}
