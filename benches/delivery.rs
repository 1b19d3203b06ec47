//! The delivery benchmark: the release binary delivers a first import and a
//! churn day to scim2-server (started plainly: RFC 7643's schemas only)
//! through a proxy in this process that plays the network and the target's
//! limits — a round trip of 0, 50 or 100 ms and at most 32 requests at once
//! (more wait in its queue), or R requests per second with 429 and
//! `Retry-After: 1` above that.
//!
//!     cargo bench --bench delivery -- [--size 10000] [--rate 200] [--rtt 100]
//!         [--parallelism N] [--binary target/x86_64-unknown-linux-musl/release/afas-sync]
//!
//! `DELIVERY_BENCH_TRACE=1` prints the answers per second of each run.
//! `--rtt MS` runs only the 32-at-once target at that round trip;
//! `--only rate` only the rate-limited one, `--only bulk` only the one
//! with Bulk (maxOperations 100, 100 ms; with `--rtt MS` at that round
//! trip), `--only takeover` only the target that already holds every
//! employee (unlinked, from an earlier import; 100 ms): the first import
//! adopts them, and its floor replays the listing and the writes. The others have afas-sync send each change on its own
//! (`sink.scim.bulk = false`). `--parallelism N` sets the sync's
//! `delivery.parallelism` (the default config otherwise).
//!     cargo bench --bench delivery -- --smoke     (the test command's check)
//!
//! The delivery time is the proxy's: from the first request after discovery
//! to the last answer. The floor replays the very requests the sync sent
//! (taken from the proxy's log, `If-Match` left out) with a plain HTTP
//! client at the target's 32 at once, through the same proxy settings, to
//! the same kind of server: a fresh one for a first import, the same one
//! for a churn day. Requests the server did not answer 2xx are counted
//! beside the floor. For Bulk the floor is the fastest of replays 1, 2, 4,
//! 8 and 32 at once with no more failed requests than the fewest of them:
//! scim2-server refuses connections when many Bulk requests come at once,
//! and a refused request costs it nothing. No figure is asserted: this is a
//! benchmark.

#[path = "delivery_floor/mod.rs"]
mod floor;
#[path = "../tests/common/peers.rs"]
mod peers;
#[path = "../tests/common/relay.rs"]
mod relay;
#[path = "support/mod.rs"]
mod support;

use floor::{floor, without_versions, Floor};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use afas_sync::emulator::data::{churn, generate};
use http_body_util::{BodyExt, Full};
use jiff::civil::Date;

const TOKEN_HEX: &str = "610C51AE2FFE4B2C8E33D5A5EB163E12735C72A44D98C278C5E7B5B560079BC1";
const SEED: u64 = 42;
/// What the target takes at once.
const TARGET_CONCURRENCY: usize = 32;
const DISCOVERY: [&str; 3] = ["/ServiceProviderConfig", "/ResourceTypes", "/Schemas"];

#[derive(Clone, Copy)]
enum Limit {
    /// At most this many at once; the rest wait.
    Concurrent(usize),
    /// This many per second; above it 429 with `Retry-After: 1`.
    Rate(u32),
}

#[derive(Clone)]
struct Logged {
    method: String,
    path_q: String,
    body: bytes::Bytes,
    at: Instant,
    answered: Instant,
}

struct Proxy {
    port: u16,
    target: String,
    log: Arc<Mutex<Vec<Logged>>>,
    throttled: Arc<AtomicU64>,
    /// TCP connections accepted: few means the client keeps them alive.
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests per second as a sliding one-second window.
struct Window(Mutex<VecDeque<Instant>>, u32);

impl Window {
    fn admit(&self) -> bool {
        let now = Instant::now();
        let Ok(mut q) = self.0.lock() else { return false };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            q.pop_front();
        }
        if q.len() as u32 >= self.1 {
            return false;
        }
        q.push_back(now);
        true
    }
}

async fn start_proxy(target: String, rtt: Duration, limit: Limit) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let throttled = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(match limit {
        Limit::Concurrent(n) => n,
        Limit::Rate(_) => tokio::sync::Semaphore::MAX_PERMITS,
    }));
    let window = Arc::new(Window(
        Mutex::new(VecDeque::new()),
        match limit {
            Limit::Rate(r) => r,
            Limit::Concurrent(_) => u32::MAX,
        },
    ));
    let client = reqwest::Client::new();
    let (log2, thr, target2) = (log.clone(), throttled.clone(), target.clone());
    let connections = Arc::new(AtomicU64::new(0));
    let accepted = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            let (log, thr, slots, window, client, target) = (
                log2.clone(),
                thr.clone(),
                slots.clone(),
                window.clone(),
                client.clone(),
                target2.clone(),
            );
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (log, thr, slots, window, client, target) = (
                        log.clone(),
                        thr.clone(),
                        slots.clone(),
                        window.clone(),
                        client.clone(),
                        target.clone(),
                    );
                    async move {
                        let at = Instant::now();
                        let method = req.method().to_string();
                        let path_q = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                        let headers = req.headers().clone();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if !window.admit() {
                            thr.fetch_add(1, Ordering::Relaxed);
                            let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from_static(b"{}")));
                            *resp.status_mut() = hyper::StatusCode::TOO_MANY_REQUESTS;
                            resp.headers_mut()
                                .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
                            return Ok::<_, std::io::Error>(resp);
                        }
                        let _slot = slots.acquire().await;
                        tokio::time::sleep(rtt / 2).await;
                        let fwd = relay::forward(&client, &method, format!("{target}{path_q}"), &headers, body.clone());
                        let (status, rh, bytes) = match fwd.send().await {
                            Ok(r) => {
                                let (s, h) = (r.status(), r.headers().clone());
                                (s, h, r.bytes().await.unwrap_or_default())
                            }
                            Err(_) => (hyper::StatusCode::BAD_GATEWAY, Default::default(), Default::default()),
                        };
                        tokio::time::sleep(rtt / 2).await;
                        let answered = Instant::now();
                        if let Ok(mut l) = log.lock() {
                            l.push(Logged {
                                method,
                                path_q,
                                body,
                                at,
                                answered,
                            });
                        }
                        Ok(relay::answer(status, &rh, bytes))
                    }
                });
                relay::serve(stream, svc).await;
            });
        }
    });
    Proxy {
        port,
        target,
        log,
        throttled,
        connections,
        task,
    }
}

impl Proxy {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests after discovery, and the time from the first to the
    /// last answer.
    fn work(&self) -> (Vec<Logged>, Duration) {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        let work: Vec<Logged> = log
            .into_iter()
            .filter(|l| !DISCOVERY.iter().any(|d| l.path_q.contains(d)))
            .collect();
        let start = work.iter().map(|l| l.at).min();
        let end = work.iter().map(|l| l.answered).max();
        let took = match (start, end) {
            (Some(s), Some(e)) => e.duration_since(s),
            _ => Duration::ZERO,
        };
        (work, took)
    }
}

struct Args {
    size: u64,
    rate: u32,
    rtt: Option<u64>,
    only: Option<String>,
    binary: Option<PathBuf>,
    smoke: bool,
    /// `delivery.parallelism` for the sync; the product's default when unset.
    parallelism: Option<u32>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        size: 10_000,
        rate: 200,
        rtt: None,
        only: None,
        binary: None,
        smoke: false,
        parallelism: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--size" => a.size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--rate" => a.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--rtt" => a.rtt = Some(value()?.parse().map_err(|e| format!("--rtt: {e}"))?),
            "--only" => a.only = Some(value()?),
            "--binary" => a.binary = Some(PathBuf::from(value()?)),
            "--parallelism" => a.parallelism = Some(value()?.parse().map_err(|e| format!("--parallelism: {e}"))?),
            "--smoke" => {
                a.smoke = true;
                a.size = 300;
            }
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() {
    // `cargo test --all-targets` runs this target without `--bench`: a
    // compile check there; the test command runs `--smoke` explicitly.
    let argv: Vec<String> = std::env::args().collect();
    if !argv.iter().any(|a| a == "--bench" || a == "--smoke") {
        eprintln!("delivery benchmark: run with `cargo bench --bench delivery` (see the file's header)");
        return;
    }
    if let Err(e) = real_main() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

struct Setting {
    name: String,
    rtt: Duration,
    limit: Limit,
    /// The target announces Bulk with this many operations per request
    /// (afas-sync uses it); `None`: each change its own request
    /// (`sink.scim.bulk = false`).
    bulk: Option<u32>,
    /// The target already holds every employee (an earlier import:
    /// `userName` = the work e-mail, no `externalId`): the first import
    /// adopts them.
    takeover: bool,
}

fn real_main() -> Result<(), String> {
    let a = args()?;
    let (rt, emulator, state) = support::runtime_and_emulator(TOKEN_HEX)?;
    let day0 = Date::new(2026, 11, 24).map_err(|e| e.to_string())?;
    let day1 = Date::new(2026, 11, 25).map_err(|e| e.to_string())?;
    let binary = a
        .binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_afas-sync")));
    let mut settings: Vec<Setting> = [0u64, 50, 100]
        .iter()
        .map(|ms| Setting {
            name: format!("{ms} ms, {TARGET_CONCURRENCY} at once"),
            rtt: Duration::from_millis(*ms),
            limit: Limit::Concurrent(TARGET_CONCURRENCY),
            bulk: None,
            takeover: false,
        })
        .collect();
    settings.push(Setting {
        name: format!("50 ms, {} per second", a.rate),
        rtt: Duration::from_millis(50),
        limit: Limit::Rate(a.rate),
        bulk: None,
        takeover: false,
    });
    settings.push(Setting {
        name: format!("100 ms, {TARGET_CONCURRENCY} at once, Bulk of 100"),
        rtt: Duration::from_millis(100),
        limit: Limit::Concurrent(TARGET_CONCURRENCY),
        bulk: Some(100),
        takeover: false,
    });
    settings.push(Setting {
        name: format!("100 ms, {TARGET_CONCURRENCY} at once, target already holds everyone"),
        rtt: Duration::from_millis(100),
        limit: Limit::Concurrent(TARGET_CONCURRENCY),
        bulk: None,
        takeover: true,
    });
    if let (Some(ms), Some("bulk")) = (a.rtt, a.only.as_deref()) {
        // The Bulk row at another round trip (0 ms: the server's own pace).
        settings.retain(|s| s.bulk.is_some());
        for s in &mut settings {
            s.rtt = Duration::from_millis(ms);
            s.name = format!("{ms} ms, {TARGET_CONCURRENCY} at once, Bulk of 100");
        }
    } else if let Some(ms) = a.rtt {
        settings = vec![Setting {
            name: format!("{ms} ms, {TARGET_CONCURRENCY} at once"),
            rtt: Duration::from_millis(ms),
            limit: Limit::Concurrent(TARGET_CONCURRENCY),
            bulk: None,
            takeover: false,
        }];
    }
    match a.only.as_deref() {
        Some("rate") => settings.retain(|s| matches!(s.limit, Limit::Rate(_))),
        Some("bulk") => settings.retain(|s| s.bulk.is_some()),
        Some("takeover") => settings.retain(|s| s.takeover),
        _ => {}
    }
    if a.smoke {
        // The first row and the takeover.
        let mut i = 0;
        settings.retain(|s| {
            i += 1;
            i == 1 || s.takeover
        });
    }
    println!(
        "Command: `cargo bench --bench delivery -- {}`\nDate: {}\n\n| target | day | mutations | requests | requests / mutation | 429 | connections | time | mutations / s | floor | time / floor |\n|---|---|---|---|---|---|---|---|---|---|---|",
        std::env::args().skip(1).filter(|a| a != "--bench").collect::<Vec<_>>().join(" "),
        jiff::Zoned::now().date(),
    );
    for s in &settings {
        let mut ds = generate(SEED, a.size, day0);
        state.set_data(ds.clone());
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut scim = match s.bulk {
            Some(ops) => {
                let spc = dir.path().join("spc.json");
                std::fs::write(&spc, bulk_config(ops)).map_err(|e| e.to_string())?;
                let spc = spc.to_string_lossy().into_owned();
                rt.block_on(peers::ScimPeer::start_with(
                    peers::free_port(),
                    &["--service-provider-config", &spc],
                ))
            }
            None => rt.block_on(peers::ScimPeer::start()),
        };
        if s.takeover {
            let users = rt.block_on(prefill(&scim, &ds))?;
            eprintln!("takeover: {users} users at the target before the first import");
        }
        let proxy = rt.block_on(start_proxy(scim.url(), s.rtt, s.limit));
        let cfg = config(
            dir.path(),
            &emulator.base_url(),
            &proxy.url(),
            s.bulk.is_some(),
            a.parallelism,
        )?;
        let first = measure_day(&rt, &binary, &cfg, day0, &proxy, s, "first import", !s.takeover)?;
        println!("{first}");
        if s.takeover {
            rt.block_on(scim.stop());
            continue;
        }
        // About 1 % leavers and 8 % movers.
        churn(&mut ds, 7, day1, 0, a.size / 1000, a.size / 100);
        state.set_data(ds);
        proxy.log.lock().map_err(|_| "log")?.clear();
        proxy.throttled.store(0, Ordering::Relaxed);
        proxy.connections.store(0, Ordering::Relaxed);
        let day = measure_day(&rt, &binary, &cfg, day1, &proxy, s, "churn day", false)?;
        println!("{day}");
        rt.block_on(scim.stop());
    }
    Ok(())
}

/// Fills the target with every employee of `ds` that has an address, as an
/// earlier import would (straight to the server, not through the proxy,
/// 16 at once); how many users it made.
async fn prefill(scim: &peers::ScimPeer, ds: &afas_sync::emulator::data::Dataset) -> Result<usize, String> {
    let rows = ds
        .connectors
        .get("Profit_Employees_Alleo")
        .map(|c| c.rows.clone())
        .unwrap_or_default();
    let client = reqwest::Client::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for r in rows {
        let Some(mail) = r.get("Mail").and_then(|m| m.as_str()).map(str::to_string) else {
            continue;
        };
        let (client, slots, url) = (client.clone(), slots.clone(), format!("{}/Users", scim.url()));
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let user = serde_json::json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": mail, "emails": [{"type": "work", "value": mail}], "active": true});
            client
                .post(url)
                .bearer_auth(peers::SCIM_TOKEN)
                .header("content-type", "application/scim+json")
                .body(user.to_string())
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        });
    }
    let mut made = 0;
    while let Some(done) = tasks.join_next().await {
        if matches!(done, Ok(true)) {
            made += 1;
        }
    }
    Ok(made)
}

/// scim2-server's ServiceProviderConfig with Bulk of `ops` operations.
fn bulk_config(ops: u32) -> String {
    serde_json::json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true}, "bulk": {"supported": true, "maxOperations": ops, "maxPayloadSize": 1_048_576},
        "filter": {"supported": true, "maxResults": 1000}, "changePassword": {"supported": false},
        "sort": {"supported": false}, "etag": {"supported": true},
        "authenticationSchemes": [{"type": "oauthbearertoken", "name": "bearer", "description": "Bearer"}]
    })
    .to_string()
}

fn config(
    dir: &std::path::Path,
    afas: &str,
    scim: &str,
    bulk: bool,
    parallelism: Option<u32>,
) -> Result<PathBuf, String> {
    support::write_tokens(dir, TOKEN_HEX, peers::SCIM_TOKEN)?;
    let path = dir.join("config.toml");
    let text = format!(
        "[afas]\nbase_url = \"{afas}\"\ntoken_file = \"afas-token\"\n\n[store]\npath = \"{}\"\n\n[guards]\nmax_leavers = 1000000\nmax_leavers_percent = 100.0\n\n[delivery]\nsync_wait_secs = 3600\n{}\n[sink.scim]\nurl = \"{scim}\"\ntoken_file = \"scim-token\"\nbulk = {bulk}\n",
        dir.join("state.redb").display(),
        parallelism.map(|n| format!("parallelism = {n}\n")).unwrap_or_default(),
    );
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

#[allow(clippy::too_many_arguments)]
fn measure_day(
    rt: &tokio::runtime::Runtime,
    binary: &PathBuf,
    cfg: &std::path::Path,
    day: Date,
    proxy: &Proxy,
    s: &Setting,
    what: &str,
    fresh_floor: bool,
) -> Result<String, String> {
    let out = Command::new(binary)
        .arg("--config")
        .arg(cfg)
        .args(["--log-level", "warn", "sync", "--as-of", &day.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !matches!(out.status.code(), Some(0) | Some(4)) {
        return Err(format!(
            "sync exited {:?}: {stdout}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mutations: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("delivery: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or(format!("no delivery line: {stdout}"))?;
    let all = proxy.log.lock().map(|l| l.len()).unwrap_or(0);
    let (work, took) = proxy.work();
    let throttled = proxy.throttled.load(Ordering::Relaxed);
    if std::env::var_os("DELIVERY_BENCH_TRACE").is_some() {
        // Requests answered per second of the run, to see where time goes.
        if let Some(t0) = work.iter().map(|l| l.at).min() {
            let mut per = vec![0u32; took.as_secs() as usize + 1];
            for l in &work {
                if let Some(c) = per.get_mut(l.answered.duration_since(t0).as_secs() as usize) {
                    *c += 1;
                }
            }
            eprintln!("{what}: per second {per:?}");
        }
        // And what they were, by method and path (ids and queries cut).
        let mut kinds = std::collections::BTreeMap::new();
        for l in &work {
            let path = l.path_q.split('?').next().unwrap_or("");
            let path = path.rsplit_once("/Users/").map_or(path, |_| "/Users/{id}");
            *kinds.entry(format!("{} {path}", l.method)).or_insert(0u32) += 1;
        }
        eprintln!("{what}: requests {kinds:?}");
    }
    // A takeover's floor reads the listing as the sync did; elsewhere the
    // sync's reads are its own overhead.
    let replayed: Vec<Logged> = work
        .iter()
        .filter(|l| l.method != "GET" || s.takeover)
        .map(|l| Logged {
            body: without_versions(&l.body),
            ..l.clone()
        })
        .collect();
    let floor = match s.limit {
        // What the target allows is the floor itself.
        Limit::Rate(r) => Floor {
            took: Duration::from_secs_f64(work.len() as f64 / f64::from(r.max(1))),
            at_once: 0,
            failed: 0,
        },
        Limit::Concurrent(n) if s.bulk.is_some() => {
            // scim2-server drops connections when many Bulk requests come at
            // once (its listen queue is 5 while its threads hold the GIL), and
            // a refused request is quick: the floor is the fastest replay with
            // no more failures than the fewest any replay had (a churn day's
            // replayed create meets the user the sync made: 409 at any pace).
            let mut tried = Vec::new();
            for at_once in [1, 2, 4, 8, n] {
                let f = rt.block_on(floor(proxy, s, &replayed, at_once, fresh_floor));
                eprintln!(
                    "{what}: floor {at_once} at once: {:.1} s, {} failed",
                    f.took.as_secs_f64(),
                    f.failed
                );
                tried.push(f);
            }
            let fewest = tried.iter().map(|f| f.failed).min().unwrap_or(0);
            tried
                .into_iter()
                .filter(|f| f.failed == fewest)
                .min_by_key(|f| f.took)
                .ok_or("no replay of the Bulk requests")?
        }
        Limit::Concurrent(n) => rt.block_on(floor(proxy, s, &replayed, n, fresh_floor)),
    };
    let failed = match floor.failed {
        0 => String::new(),
        f => format!(", {f} failed"),
    };
    let at_once = match floor.at_once {
        0 => String::new(),
        n => format!(" ({n} at once{failed})"),
    };
    let secs = took.as_secs_f64().max(0.001);
    Ok(format!(
        "| {} | {what} | {mutations} | {all} | {:.3} | {throttled} ({:.1} %) | {} | {:.1} s | {:.0} | {:.1} s{at_once} | {:.2} |",
        s.name,
        all as f64 / mutations.max(1) as f64,
        throttled as f64 * 100.0 / all.max(1) as f64,
        proxy.connections.load(Ordering::Relaxed),
        secs,
        mutations as f64 / secs,
        floor.took.as_secs_f64(),
        secs / floor.took.as_secs_f64().max(0.001),
    ))
}
