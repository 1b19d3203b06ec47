//! What delivery costs the target, counted at a proxy in front of a plain
//! scim2-server: one request per change, and after a crash in the middle
//! of a first import at most one batch sent again.

mod common;

use common::peers::*;
use common::sync_env::*;

/// Requests that are not discovery (read once per pass, whatever its size).
fn without_discovery(requests: &[String]) -> Vec<&String> {
    requests
        .iter()
        .filter(|r| {
            !["/ServiceProviderConfig", "/ResourceTypes", "/Schemas"]
                .iter()
                .any(|d| r.contains(d))
        })
        .collect()
}

fn delivered(out: &str) -> usize {
    out.lines()
        .find_map(|l| l.strip_prefix("delivery: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delivery line: {out}"))
}

#[tokio::test]
async fn a_first_import_and_a_churn_day_cost_one_request_per_change() {
    let scim = ScimPeer::start().await;
    let proxy = FaultProxy::start(scim.url(), vec![]).await;
    // Each change its own request: the path to a target without Bulk.
    let sink = scim_sink(&proxy.url()).replace("[sink.scim]\n", "[sink.scim]\nbulk = false\n");
    let env = Env::new(300, &sink).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let requests = proxy.requests.lock().expect("log").clone();
    let work = without_discovery(&requests);
    let creates = work.iter().filter(|r| r.starts_with("POST /Users")).count();
    let listings = work.iter().filter(|r| r.contains("/Users?startIndex")).count();
    let n = delivered(&out);
    assert!(n > 200, "{out}");
    assert_eq!(creates, n, "one POST per joiner: {out}");
    assert_eq!(listings, 1, "the target's users read once: {work:?}");
    assert!(
        !work.iter().any(|r| r.contains("filter=")),
        "no lookup per joiner: {work:?}"
    );
    assert!(
        work.len() as f64 <= n as f64 * 1.05,
        "{} requests for {n} joiners",
        work.len()
    );
    assert_server_matches(&scim, &env.snapshot()).await;

    // A churn day: movers and leavers, each one PATCH with the version the
    // target gave in its last answer (no read before the write).
    proxy.requests.lock().expect("log").clear();
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        afas_sync::emulator::data::churn(d, 5, d1, 0, 15, 120);
    });
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    let requests = proxy.requests.lock().expect("log").clone();
    let work = without_discovery(&requests);
    let n = delivered(&out);
    assert!(n >= 20, "{out}");
    let patches = work.iter().filter(|r| r.starts_with("PATCH /Users/")).count();
    assert_eq!(patches, work.len(), "only PATCHes: {work:?}");
    assert!(work.len() <= n, "{} requests for {n} changes", work.len());
    assert_server_matches(&scim, &env.snapshot()).await;
}

/// The first import is killed in the middle of its delivery; the restart
/// sends again only what was delivered after the last recorded batch. The
/// pass reads 64 entries at a time: the kill lands windows into it.
#[tokio::test]
async fn a_crash_in_the_middle_of_a_first_import_resends_at_most_one_batch() {
    const BATCH: usize = 256;
    const PARALLEL: usize = 8;
    const WINDOW: usize = 64;
    let scim = ScimPeer::start().await;
    // 20 ms per answer at up to 8 at a time: the delivery takes seconds.
    let proxy = FaultProxy::start_slow(scim.url(), vec![], std::time::Duration::from_millis(20)).await;
    // Each change its own request: with Bulk a batch is one request.
    let sink = scim_sink(&proxy.url()).replace("[sink.scim]\n", "[sink.scim]\nbulk = false\n");
    let env = Env::new(1500, &sink).await;
    let text = std::fs::read_to_string(&env.cfg).expect("config");
    std::fs::write(
        &env.cfg,
        text.replace(
            "parallelism = 4",
            &format!("parallelism = 4\nmax_parallelism = {PARALLEL}\nwindow = {WINDOW}"),
        ),
    )
    .expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
        .args([
            "--config",
            &env.cfg,
            "--log-level",
            "error",
            "sync",
            "--as-of",
            &day0().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let posts = |p: &FaultProxy| {
        p.requests
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.starts_with("POST /Users"))
            .count()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    // Past ten windows of the 1500.
    while posts(&proxy) < 700 {
        assert!(tokio::time::Instant::now() < deadline, "delivery did not get going");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    let before_kill = proxy.requests.lock().expect("log").len();

    let (code, out) = env.sync(day0()).await;
    assert!(code == 0 || code == 4, "{out}");
    let requests = proxy.requests.lock().expect("log").clone();
    // Users created before the kill whose delivery was not recorded yet are
    // written again (found in the listing, replaced, never created twice).
    let resent = requests[before_kill..]
        .iter()
        .filter(|r| r.starts_with("PUT /Users/"))
        .count();
    assert!(
        resent <= BATCH + PARALLEL,
        "{resent} sent again after the crash (at most one batch of {BATCH} and {PARALLEL} in flight)"
    );
    assert_server_matches(&scim, &env.snapshot()).await;
    let users = scim.users().await.len();
    assert_eq!(users, env.snapshot().len(), "no user twice");
}

/// scim2-server announces Bulk; here with 40 operations per request (the
/// row says so: its default is 1000). Someone else holds one employee's
/// address at the target: that operation fails inside its Bulk request and
/// is handled as its single request would be (dead-lettered, naming the
/// holder); every other change arrives.
#[tokio::test]
async fn bulk_carries_a_first_import_and_a_churn_day_and_a_failed_operation_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spc = service_provider_config_with_bulk(dir.path(), true, true, 40);
    let scim = ScimPeer::start_with(free_port(), &["--service-provider-config", spc.to_str().expect("p")]).await;
    let proxy = FaultProxy::start(scim.url(), vec![]).await;
    let env = Env::new(300, &scim_sink(&proxy.url())).await;
    let victim = env.emu.state.with_data(|d| {
        d.connectors["Profit_Employees_Alleo"]
            .rows
            .iter()
            .find(|r| {
                r["EmploymentEnd"].is_null() && r["Mail"].is_string() && r["AlleoAccess"] == serde_json::json!(true)
            })
            .and_then(|r| r["Mail"].as_str().map(str::to_string))
            .expect("an active employee")
    });
    let taken = serde_json::json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": victim, "externalId": "not-from-afas"});
    assert_eq!(scim.post_user(&taken).await, 201);

    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "one change refused: {out}");
    assert!(out.contains("1 dead-lettered"), "{out}");
    let requests = proxy.requests.lock().expect("log").clone();
    let work = without_discovery(&requests);
    let bulks = work.iter().filter(|r| r.starts_with("POST /Bulk")).count();
    let n = env.snapshot().len();
    assert_eq!(bulks, n.div_ceil(40), "{n} creates, 40 per request: {work:?}");
    // The failed one alone: a lookup, its create, the holder's lookup.
    let alone: Vec<_> = work
        .iter()
        .filter(|r| !r.starts_with("POST /Bulk") && !r.contains("/Users?startIndex"))
        .collect();
    assert!(alone.len() <= 4, "{alone:?}");
    let users = scim.users().await;
    assert_eq!(users.len(), n, "every employee but the refused one, and the holder");
    assert!(
        users
            .iter()
            .filter(|u| u["userName"] == serde_json::json!(victim))
            .count()
            == 1,
        "the address stays with its holder"
    );

    // A churn day: PATCHes in Bulk requests, with the kept versions.
    proxy.requests.lock().expect("log").clear();
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        afas_sync::emulator::data::churn(d, 5, d1, 0, 15, 120);
    });
    let (code, out) = env.sync(d1).await;
    assert!(code == 0 || code == 5, "{out}");
    let requests = proxy.requests.lock().expect("log").clone();
    let work = without_discovery(&requests);
    let changes = delivered(&out);
    assert!(changes >= 20, "{out}");
    let bulks = work.iter().filter(|r| r.starts_with("POST /Bulk")).count();
    assert!(
        bulks <= changes.div_ceil(40) + 1,
        "{bulks} Bulk requests for {changes} changes: {work:?}"
    );
    assert!(
        !work
            .iter()
            .any(|r| r.starts_with("PATCH /Users/") || r.starts_with("GET /Users/")),
        "no single reads or writes: {work:?}"
    );
    // The admin frees the address at the target and retries: the target
    // then matches the snapshot exactly.
    env.free_address_and_retry(&scim, "not-from-afas").await;
    let (code, out) = env.sync(d1).await;
    assert!(code == 0 || code == 4, "{out}");
    assert_server_matches(&scim, &env.snapshot()).await;
}

/// A target that takes 50 requests a second answers the rest 429 (the row
/// says so). A first import learns that pace; the next `sync`, a new
/// process, starts at it instead of learning it again from 429s — shown
/// against a churn day of the same size whose process cannot use it (the
/// kept pace names another target).
#[tokio::test]
async fn the_next_process_starts_at_the_pace_the_last_one_learnt() {
    const LIMIT: usize = 50;
    let scim = ScimPeer::start().await;
    let proxy = FaultProxy::start_rate_limited(scim.url(), LIMIT).await;
    let sink = scim_sink(&proxy.url()).replace("[sink.scim]\n", "[sink.scim]\nbulk = false\n");
    let env = Env::new(400, &sink).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        !proxy.injected.lock().expect("log").is_empty(),
        "the import met the limit"
    );
    let kept = afas_sync::store::Store::open(&env.store_path)
        .expect("store")
        .sink_pace("scim")
        .expect("read")
        .expect("the import's pace is kept");
    let rate = kept.rate.expect("a 429 set a pace");
    assert!((LIMIT as f64 * 0.5..=LIMIT as f64 * 1.1).contains(&rate), "{kept:?}");
    // The operator sees it in `status`.
    let (_, status, _) = common::run_bin(&["--config", &env.cfg, "--json", "status"]).await;
    let v: serde_json::Value = serde_json::from_str(&status).expect("json");
    let shown = v["outbox"]["scim"]["pace"]["requests_per_second"].as_f64();
    assert!(shown.is_some_and(|r| (r - rate).abs() < 0.1), "{status}");
    assert_eq!(v["outbox"]["scim"]["pace"]["concurrency"], kept.concurrency, "{status}");
    let (_, human, _) = common::run_bin(&["--config", &env.cfg, "status"]).await;
    // The line is rendered from the report's figure (one decimal), not the
    // stored one: 43.46 is shown as 43.5 there, and as 44 here.
    let shown = shown.unwrap_or(rate);
    assert!(
        human.contains(&format!("at most {shown:.0} requests/s (the target answered HTTP 429)")),
        "{human}"
    );

    let day = |n: i64, kept: Option<&afas_sync::store::SinkPace>| {
        if let Some(p) = kept {
            let store = afas_sync::store::Store::open(&env.store_path).expect("store");
            store.set_sink_pace("scim", p).expect("write");
        }
        proxy.injected.lock().expect("log").clear();
        proxy.requests.lock().expect("log").clear();
        let d = next(day0(), n);
        env.emu
            .state
            .with_data(|data| afas_sync::emulator::data::churn(data, n as u64, d, 0, 0, 400));
        d
    };
    // Learnt for another target: this process learns the pace anew.
    let elsewhere = afas_sync::store::SinkPace {
        target: kept.target ^ 1,
        ..kept.clone()
    };
    let (code, out) = env.sync(day(1, Some(&elsewhere))).await;
    assert_eq!(code, 0, "{out}");
    let anew = proxy.injected.lock().expect("log").len();
    let fresh_requests = without_discovery(&proxy.requests.lock().expect("log")).len();

    let (code, out) = env.sync(day(2, Some(&kept))).await;
    assert_eq!(code, 0, "{out}");
    let resumed = proxy.injected.lock().expect("log").len();
    let requests = without_discovery(&proxy.requests.lock().expect("log")).len();
    // Its first second alone is more than the target takes.
    assert!(
        anew >= 1,
        "a process that learns the pace meets the limit ({fresh_requests} requests)"
    );
    assert_eq!(
        resumed, 0,
        "{resumed} 429s in {requests} requests starting at the kept pace {kept:?} ({anew} learning it)"
    );
    assert_server_matches(&scim, &env.snapshot()).await;
}

/// With Bulk, a change that cannot travel in a Bulk request — a leaver
/// deleted (`deprovision = "delete"`) — goes on its own, and a 429 with a
/// short `Retry-After` on it is tried again within the same pass, as
/// without Bulk: a sync that makes one pass only still delivers it all.
#[tokio::test]
async fn with_bulk_a_change_sent_alone_is_retried_within_the_pass_after_a_429() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spc = service_provider_config_with_bulk(dir.path(), true, true, 40);
    let scim = ScimPeer::start_with(free_port(), &["--service-provider-config", spc.to_str().expect("p")]).await;
    let proxy = FaultProxy::start(scim.url(), vec![Inject::new("DELETE", "/Users/", 1, 2, 429, Some(1))]).await;
    let sink = scim_sink(&proxy.url()).replace("[sink.scim]\n", "[sink.scim]\ndeprovision = \"delete\"\n");
    let env = Env::new(200, &sink).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");

    // One pass only: what it does not deliver stays pending (exit 5).
    let cfg = std::fs::read_to_string(&env.cfg).expect("config");
    assert!(cfg.contains("sync_wait_secs = 20"), "{cfg}");
    std::fs::write(&env.cfg, cfg.replace("sync_wait_secs = 20", "sync_wait_secs = 0")).expect("config");
    proxy.requests.lock().expect("log").clear();
    let d1 = next(day0(), 1);
    let leavers = env
        .emu
        .state
        .with_data(|d| afas_sync::emulator::data::churn(d, 3, d1, 0, 40, 150).leavers.len());
    assert!(leavers >= 5, "{leavers}");
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "everything delivered in the one pass: {out}");
    let requests = proxy.requests.lock().expect("log").clone();
    let work = without_discovery(&requests);
    assert!(
        work.iter().any(|r| r.starts_with("POST /Bulk")),
        "the movers in Bulk: {work:?}"
    );
    let deletes = work.iter().filter(|r| r.starts_with("DELETE /Users/")).count();
    assert_eq!(proxy.injected.lock().expect("log").len(), 2, "429 twice");
    assert_eq!(
        deletes,
        leavers + 2,
        "each leaver deleted, the throttled one tried again: {work:?}"
    );
    let users = scim.users().await;
    let active = env
        .snapshot()
        .values()
        .filter(|p| p.status == afas_sync::model::Status::Active)
        .count();
    assert_eq!(users.len(), active, "the leavers are gone from the target");
}
