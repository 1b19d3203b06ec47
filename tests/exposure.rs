//! Exposure: no secret anywhere (logs at trace, errors, status, --json,
//! metrics, files, the state file), and an HTTP server that a flood of slow
//! or oversized requests cannot exhaust.

mod common;

use std::time::{Duration, Instant};

use afas_sync::emulator::data::generate;
use afas_sync::http::Health;
use base64::Engine as _;
use common::peers::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn no_secret_reaches_any_output_the_metrics_or_the_state_file() {
    let scim = ScimPeer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let webhook_secret = "whsec_c2VjcmV0LWtleS1mb3ItYWZhcy1zeW5jLXRlc3Q=";
    let receiver = WebhookPeer::start(webhook_secret, dir.path()).await;
    let emu = spawn_emulator(generate(13, 60, jiff::civil::Date::new(2026, 11, 24).expect("d"))).await;
    std::fs::write(dir.path().join("scim-token"), SCIM_TOKEN).expect("token");
    std::fs::write(dir.path().join("webhook-secrets"), webhook_secret).expect("secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["scim-token", "webhook-secrets"] {
            std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }
    let port = free_port();
    let extra = format!(
        "\n[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n\n[http]\nbind = \"127.0.0.1:{port}\"\n\n[sink.scim]\nurl = \"{}\"\ntoken_file = \"scim-token\"\n\n[sink.webhook]\nurl = \"{}\"\nsecret_file = \"webhook-secrets\"\n\n[sink.files]\ndir = \"out\"\ncsv_snapshot = true\n",
        scim.url(),
        receiver.url()
    );
    let cfg = write_config(dir.path(), &emu.base_url(), &token().to_xml(), &extra);
    let cfg = cfg.to_str().expect("p").to_string();
    let mut seen = String::new();
    for args in [
        vec!["sync"],
        vec!["--json", "status"],
        vec!["status"],
        vec!["--json", "history"],
        vec!["--json", "run", "show", "1"],
        vec!["check"],
        vec!["--json", "check"],
        vec!["export", "--format", "csv"],
    ] {
        let mut full = vec!["--config", cfg.as_str(), "--log-level", "trace"];
        full.extend(args.iter().copied());
        let (_, out, err) = run_bin(&full).await;
        seen.push_str(&out);
        seen.push_str(&err);
    }
    // The daemon at trace level, and its /metrics.
    let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
        .args(["--config", &cfg, "--log-level", "trace", "run"])
        .stderr(log)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("daemon");
    let client = http();
    let mut metrics = String::new();
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await {
            metrics = r.text().await.unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains("afas_sync_build_info"), "{metrics}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().expect("pid").to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon.wait()).await;
    seen.push_str(&metrics);
    seen.push_str(&std::fs::read_to_string(dir.path().join("daemon.log")).expect("log"));
    assert!(
        seen.contains("AFAS request") && seen.contains("TRACE"),
        "trace logs were captured"
    );
    for entry in std::fs::read_dir(dir.path().join("out")).expect("out").flatten() {
        seen.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    let state = std::fs::read(dir.path().join("state.redb")).expect("state file");

    let b64 = base64::engine::general_purpose::STANDARD.encode(token().to_xml());
    let webhook_key = &webhook_secret["whsec_".len()..];
    for (name, secret) in [
        ("AFAS token", TOKEN_HEX.to_string()),
        ("AFAS token (lower case)", TOKEN_HEX.to_lowercase()),
        ("AFAS header", b64.clone()),
        ("SCIM token", SCIM_TOKEN.to_string()),
        ("webhook secret", webhook_key.to_string()),
    ] {
        assert!(
            !seen.contains(&secret),
            "{name} leaked into output, logs, metrics or files"
        );
        let in_state = state.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!in_state, "{name} is in the state file");
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn slow_and_oversized_requests_cannot_exhaust_the_http_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let health = Health::new(3600);
    health.store_open.store(true, std::sync::atomic::Ordering::SeqCst);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(afas_sync::http::serve(listener, health, async move {
        let _ = stop_rx.await;
    }));
    let rss_before = rss_kib();
    let healthz = || async move {
        let started = Instant::now();
        let ok = http()
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        (ok, started.elapsed())
    };

    // 200 connections that send half a request and then nothing.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        slow.push(s);
    }
    let (ok, took) = healthz().await;
    assert!(
        ok && took < Duration::from_secs(2),
        "answers beside 200 slow clients ({took:?})"
    );

    // 400 more, past the connection cap: a real request waits at most for
    // the header timeout to free a place.
    for _ in 0..400 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n").await;
            slow.push(s);
        }
    }
    let (ok, took) = healthz().await;
    assert!(ok && took < Duration::from_secs(12), "answers under a flood ({took:?})");

    // The slow ones are cut off by the header-read timeout.
    let mut closed = 0;
    for s in slow.iter_mut().take(50) {
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            // EOF, or a 408 before closing.
            if n == 0 || buf.starts_with(b"HTTP/1.1 408") {
                closed += 1;
            }
        }
    }
    assert_eq!(closed, 50, "slow clients are disconnected");
    drop(slow);

    // An oversized request head is refused, not buffered.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || head.starts_with("HTTP/1.1 431"), "{head}");

    // Only the three paths answer.
    for (path, want) in [("/", 404), ("/admin", 404), ("/healthz/x", 404), ("/readyz", 200)] {
        let status = http()
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("get")
            .status()
            .as_u16();
        assert_eq!(status, want, "{path}");
    }
    let status = http()
        .post(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("post")
        .status()
        .as_u16();
    assert_eq!(status, 405);
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "memory grew by {grown} KiB");
    let _ = stop_tx.send(());
    let _ = server.await;
}
