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

    queries_use_only_exposed_series(&metrics).await;

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

/// Every PromQL expression of the Grafana dashboard and the alert rules
/// parses (promtool, through a generated rules file) and names only series
/// that this daemon's `/metrics` exposes, so a renamed metric fails here.
async fn queries_use_only_exposed_series(scrape: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/packaging/grafana/afas-sync.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            p["description"].as_str().is_some_and(|d| d.len() > 40),
            "panel {} says what to do",
            p["title"]
        );
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} uses the variable",
            p["title"]
        );
    }
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "instance"]);
    let instance_query = dashboard["templating"]["list"][1]["definition"]
        .as_str()
        .expect("query");
    let dashboard_exprs = exprs.len();
    let alerts = std::fs::read_to_string(format!("{root}/packaging/prometheus/alerts.yml")).expect("alerts");
    exprs.extend(
        alerts
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .map(str::to_string),
    );
    assert!(dashboard_exprs >= 15 && exprs.len() > dashboard_exprs + 5, "{exprs:?}");

    // Grafana's variables become what Prometheus would see.
    let promql: Vec<String> = exprs
        .iter()
        .map(|e| e.replace("$__rate_interval", "5m").replace("$instance", ".*"))
        .collect();
    let mut rules = String::from("groups:\n  - name: dashboard-and-alerts\n    rules:\n");
    for (i, e) in promql.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: afas_sync_check:q{i}\n        expr: {}\n",
            serde_json::to_string(e).expect("quoted")
        ));
    }
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("queries.yml");
    std::fs::write(&file, rules).expect("rules");
    let out = std::process::Command::new(promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "a dashboard or alert query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The series the daemon exposes, from its TYPE lines (a family shows
    // them before it has any sample).
    let mut exposed = std::collections::BTreeSet::new();
    for line in scrape.lines() {
        let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|l| l.split_once(' ')) else {
            continue;
        };
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                exposed.insert(format!("{name}{suffix}"));
            }
        } else {
            exposed.insert(name.to_string());
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for e in exprs.iter().map(String::as_str).chain([instance_query]) {
        let mut rest = e;
        while let Some(at) = rest.find("afas_sync_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            used.insert(name);
        }
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exposed.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "queries use series /metrics does not have: {missing:?}\nexposed: {exposed:?}"
    );
    // What the dashboard is for: each of these is graphed.
    for wanted in [
        "afas_sync_runs_total",
        "afas_sync_last_success_timestamp_seconds",
        "afas_sync_mutations_total",
        "afas_sync_rows_rejected_total",
        "afas_sync_afas_requests_total",
        "afas_sync_afas_request_duration_seconds_bucket",
        "afas_sync_outbox_pending",
        "afas_sync_outbox_dead{",
        "afas_sync_deliveries_total",
        "afas_sync_delivery_throttled_total",
        "afas_sync_held_plans",
        "afas_sync_afas_token_expiry_timestamp_seconds",
        "afas_sync_afas_oauth_secret_expiry_timestamp_seconds",
    ] {
        assert!(
            exprs[..dashboard_exprs].iter().any(|e| e.contains(wanted)),
            "the dashboard has no panel on {wanted}"
        );
    }
}
