//! SIGTERM stops the daemon within 5 seconds wherever it is: a fetch from a
//! slow AFAS is abandoned (nothing written), a commit under way completes,
//! delivery to a hanging target stops. The next start delivers everything,
//! once.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use afas_sync::emulator::data::generate;
use afas_sync::store::Store;
use common::peers::*;
use common::sync_env::*;
use common::*;

struct Daemon {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Daemon {
    fn start(cfg: &Path, dir: &Path, n: u32) -> Daemon {
        let log = dir.join(format!("daemon-{n}.log"));
        let file = std::fs::File::create(&log).expect("log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
            .args(["--config", cfg.to_str().expect("p"), "--log-level", "debug", "run"])
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("daemon");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_log(&self, text: &str, secs: u64) {
        let start = Instant::now();
        while !self.log().contains(text) {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "no `{text}` in\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM; the exit code and how long the stop took.
    async fn term(mut self) -> (Option<i32>, Duration, String) {
        let pid = self.child.id().expect("pid").to_string();
        let t = Instant::now();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the daemon stops")
            .expect("wait");
        (status.code(), t.elapsed(), self.log())
    }
}

fn config(dir: &Path, afas: &str, extra: &str) -> PathBuf {
    // One slot far from now: only the catch-up run at start.
    let slot = jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::get("Europe/Amsterdam").expect("tz"))
        .checked_add(jiff::ToSpan::hours(12))
        .expect("t")
        .strftime("%H:%M")
        .to_string();
    let port = free_port();
    let text = format!(
        "{extra}\n[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n\n[schedule]\ntimes = [\"{slot}\"]\n\n[http]\nbind = \"127.0.0.1:{port}\"\n"
    );
    write_config(dir, afas, TOKEN_HEX, &text)
}

fn store(dir: &Path) -> Store {
    let s = Store::open(&dir.join("state.redb")).expect("store");
    s.verify().expect("the state file is whole");
    s
}

/// The NDJSON lines the file sink wrote, by employee key: each once.
fn delivered_keys(dir: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for f in std::fs::read_dir(dir.join("out")).into_iter().flatten().flatten() {
        for line in std::fs::read_to_string(f.path()).expect("file").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            keys.push(v["key"].as_str().expect("key").to_string());
        }
    }
    keys.sort();
    keys
}

/// Waits until the running daemon reports a committed run and nothing
/// pending for `sink` (asked through its control socket: it holds the file).
async fn wait_delivered(d: &Daemon, cfg: &Path, sink: &str, secs: u64) {
    // Until the daemon holds the file, `status` would open it itself.
    d.wait_log("afas-sync daemon ready", 20).await;
    let start = Instant::now();
    loop {
        let (code, out, _) = run_bin(&["--config", cfg.to_str().expect("p"), "--json", "status"]).await;
        if code == 0 {
            let v: serde_json::Value = serde_json::from_str(&out).expect("json");
            let pending = v["outbox"][sink]["pending"].as_u64();
            if v["last_run"].is_object() && pending.unwrap_or(0) == 0 {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "not delivered: {out}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One run in all, nothing left in the file sink's outbox, and each
/// employee in the files exactly once.
fn assert_one_run_each_employee_delivered_once(dir: &Path) {
    let s = store(dir);
    assert_eq!(s.runs(10).expect("runs").len(), 1, "one run in all");
    assert!(s.outbox_entries("files").expect("entries").is_empty());
    let keys = delivered_keys(dir);
    let mut unique = keys.clone();
    unique.dedup();
    assert_eq!(keys, unique, "each employee delivered once");
    assert_eq!(keys.len() as u64, s.employee_count().expect("count"));
}

fn outbox_empty(dir: &Path, sink: &str) -> bool {
    store(dir).outbox_entries(sink).expect("entries").is_empty()
}

#[tokio::test]
async fn sigterm_during_a_slow_fetch_abandons_it_and_the_next_start_runs_it_whole() {
    let emu = spawn_emulator(generate(3, 300, day0())).await;
    emu.state.set_latency(Duration::from_millis(1500));
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(
        dir.path(),
        &emu.base_url(),
        "page_size = 20\n[sink.files]\ndir = \"out\"\n",
    );
    let d = Daemon::start(&cfg, dir.path(), 1);
    let start = Instant::now();
    while emu.state.requests().len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(20), "the fetch did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, took, log) = d.term().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}\n{log}");
    {
        let s = store(dir.path());
        assert!(
            s.runs(10).expect("runs").is_empty(),
            "nothing of the abandoned run was written"
        );
        assert_eq!(s.employee_count().expect("count"), 0);
    }

    emu.state.set_latency(Duration::ZERO);
    let d = Daemon::start(&cfg, dir.path(), 2);
    wait_delivered(&d, &cfg, "files", 60).await;
    let (code, _, log) = d.term().await;
    assert_eq!(code, Some(0), "{log}");
    assert_one_run_each_employee_delivered_once(dir.path());
}

#[tokio::test]
async fn sigterm_during_a_commit_keeps_the_run_whole_and_the_next_start_delivers_it_once() {
    let emu = spawn_emulator(generate(4, 4000, day0())).await;
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), &emu.base_url(), "[sink.files]\ndir = \"out\"\n");
    let d = Daemon::start(&cfg, dir.path(), 1);
    d.wait_log("fetched records finished", 60).await;
    let (code, took, log) = d.term().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}\n{log}");
    let written = log.contains("run written to the state file");
    {
        let s = store(dir.path());
        let runs = s.runs(10).expect("runs");
        // Whole or not at all: the commit that had begun completed.
        assert_eq!(runs.len(), usize::from(written), "{log}");
        if written {
            assert_eq!(s.employee_count().expect("n"), runs[0].joiners);
        }
    }
    let d = Daemon::start(&cfg, dir.path(), 2);
    wait_delivered(&d, &cfg, "files", 90).await;
    let (code, _, log) = d.term().await;
    assert_eq!(code, Some(0), "{log}");
    assert_one_run_each_employee_delivered_once(dir.path());
}

#[tokio::test]
async fn sigterm_during_delivery_to_a_hanging_target_stops_at_once_and_the_next_start_delivers_each_once() {
    let emu = spawn_emulator(generate(5, 80, day0())).await;
    let scim = ScimPeer::start().await;
    // Row fault: the first Bulk request (scim2-server announces Bulk; the
    // 80 creates travel in one) reaches the target, whose answer never
    // comes back.
    let proxy = FaultProxy::start(
        scim.url(),
        vec![Inject::new("POST", "/Bulk", 1, 1, FORWARD_THEN_HANG, None)],
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("scim-token"), SCIM_TOKEN).expect("token");
    let sink = format!(
        "[sink.scim]\nurl = \"{}\"\ntoken_file = \"scim-token\"\ntimeout_secs = 120\n",
        proxy.url()
    );
    let cfg = config(dir.path(), &emu.base_url(), &sink);
    let d = Daemon::start(&cfg, dir.path(), 1);
    let start = Instant::now();
    while proxy.injected.lock().expect("log").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "delivery did not hang\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, took, log) = d.term().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}\n{log}");
    assert!(!outbox_empty(dir.path(), "scim"), "the hung entries wait");

    let d = Daemon::start(&cfg, dir.path(), 2);
    wait_delivered(&d, &cfg, "scim", 60).await;
    let (code, _, log) = d.term().await;
    assert_eq!(code, Some(0), "{log}");
    let snapshot = store(dir.path())
        .snapshot()
        .expect("snapshot")
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    // One user per employee: the requests that hung made no duplicates.
    assert_server_matches(&scim, &snapshot).await;
}
