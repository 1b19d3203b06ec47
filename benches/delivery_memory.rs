//! What delivering a first import costs the delivering process: peak RSS
//! and CPU of the release binary's `afas-sync sync` (a child process,
//! figures from `wait4`), for a company of N from the built-in AFAS
//! emulator, delivered to
//! - a **minimal responder** in this process (named as such in each row):
//!   201 with an id to `POST /Users`, 200 to `PATCH`, an empty list to a
//!   listing, 404 to everything else (discovery included) — so the target
//!   costs next to nothing and a million changes take minutes;
//! - with `--scim`, scim2-server (RFC 7643's schemas only), at the sizes it
//!   can take (up to 100k).
//!
//! Beside each, in the same run: the same sync without a sink (fetch, diff
//! and commit: what the delivery adds is the difference), and the floor —
//! a plain HTTP client in a process of its own sending as many requests
//! of the same size to the same responder, 32 at once, its CPU and peak
//! RSS. No figure is asserted: this is a benchmark.
//!
//!     cargo bench --bench delivery_memory -- [--sizes 100000,1000000] [--scim]
//!         [--window N] [--max-parallelism N] [--binary target/x86_64-unknown-linux-musl/release/afas-sync]
//!     cargo bench --bench delivery_memory -- --smoke     (the test command's check)

#[path = "../tests/common/peers.rs"]
mod peers;
#[path = "../tests/common/relay.rs"]
mod relay;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use afas_sync::emulator::data::generate;
use http_body_util::{BodyExt, Full};
use jiff::civil::Date;
use support::measure::{launcher, measure, ChildRun};

const TOKEN_HEX: &str = "610C51AE2FFE4B2C8E33D5A5EB163E12735C72A44D98C278C5E7B5B560079BC1";
const SEED: u64 = 42;
const FLOOR_AT_ONCE: usize = 32;

struct Args {
    sizes: Vec<u64>,
    scim: bool,
    window: Option<u32>,
    /// `delivery.max_parallelism` (the product's default when unset).
    max_parallelism: Option<u32>,
    binary: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![100_000],
        scim: false,
        window: None,
        max_parallelism: None,
        binary: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--sizes: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--scim" => a.scim = true,
            "--window" => a.window = Some(value()?.parse().map_err(|e| format!("--window: {e}"))?),
            "--max-parallelism" => {
                a.max_parallelism = Some(value()?.parse().map_err(|e| format!("--max-parallelism: {e}"))?)
            }
            "--binary" => a.binary = Some(PathBuf::from(value()?)),
            "--smoke" => a.sizes = vec![2000],
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let result = match argv.get(1).map(String::as_str) {
        Some("--measure-child") if argv.len() >= 4 => launcher(&argv[2], &argv[3], &argv[4..]),
        Some("--floor-client") if argv.len() >= 5 => floor_client(&argv[2], &argv[3], &argv[4]),
        // `cargo test --all-targets` runs this target without `--bench`: a
        // compile check there; the test command runs `--smoke` explicitly.
        _ if !argv.iter().any(|a| a == "--bench" || a == "--smoke") => {
            eprintln!(
                "delivery memory benchmark: run with `cargo bench --bench delivery_memory` (see the file's header)"
            );
            Ok(())
        }
        _ => real_main(),
    };
    if let Err(e) = result {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

/// What the minimal responder was asked.
#[derive(Default)]
struct Asked {
    posts: AtomicU64,
    patches: AtomicU64,
    others: AtomicU64,
    /// One `POST /Users` body, for the floor client to send again.
    sample: Mutex<Option<bytes::Bytes>>,
}

/// The minimal responder on loopback; its port.
async fn start_responder(asked: Arc<Asked>) -> Result<u16, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let asked = asked.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let asked = asked.clone();
                    async move { Ok::<_, std::io::Error>(respond(&asked, req).await) }
                });
                relay::serve(stream, svc).await;
            });
        }
    });
    Ok(port)
}

async fn respond(asked: &Asked, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<bytes::Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, answer) = if method == hyper::Method::POST && path.ends_with("/Users") {
        let n = asked.posts.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut s) = asked.sample.lock() {
            s.get_or_insert(body);
        }
        (201, format!("{{\"id\":\"u{n}\"}}"))
    } else if method == hyper::Method::PATCH {
        asked.patches.fetch_add(1, Ordering::Relaxed);
        (200, "{}".to_string())
    } else if method == hyper::Method::GET && path.ends_with("/Users") {
        asked.others.fetch_add(1, Ordering::Relaxed);
        (
            200,
            r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":0,"startIndex":1,"itemsPerPage":0,"Resources":[]}"#.to_string(),
        )
    } else {
        asked.others.fetch_add(1, Ordering::Relaxed);
        (404, String::new())
    };
    let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from(answer)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/scim+json"),
    );
    resp
}

/// The floor: `n` POSTs of the body in `body_file` to `url`, 32 at once,
/// from a plain client on a two-worker runtime (as the binary's).
fn floor_client(url: &str, n: &str, body_file: &str) -> Result<(), String> {
    let n: usize = n.parse().map_err(|e| format!("count: {e}"))?;
    let body = bytes::Bytes::from(std::fs::read(body_file).map_err(|e| e.to_string())?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let client = peers::http();
        let slots = Arc::new(tokio::sync::Semaphore::new(FLOOR_AT_ONCE));
        let mut tasks = tokio::task::JoinSet::new();
        let mut failed = 0;
        for _ in 0..n {
            let permit = slots.clone().acquire_owned().await.map_err(|e| e.to_string())?;
            let (client, body, url) = (client.clone(), body.clone(), url.to_string());
            tasks.spawn(async move {
                let _permit = permit;
                let r = client
                    .post(url)
                    .bearer_auth(peers::SCIM_TOKEN)
                    .header("content-type", "application/scim+json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            });
            // Reap as they finish: the floor holds no more than it sends.
            while let Some(done) = tasks.try_join_next() {
                failed += usize::from(!matches!(done, Ok(true)));
            }
        }
        while let Some(done) = tasks.join_next().await {
            failed += usize::from(!matches!(done, Ok(true)));
        }
        match failed {
            0 => Ok(()),
            f => Err(format!("{f} of {n} floor requests failed")),
        }
    })
}

fn real_main() -> Result<(), String> {
    let a = args()?;
    let (rt, emulator, state) = support::runtime_and_emulator(TOKEN_HEX)?;
    let day0 = Date::new(2026, 11, 24).map_err(|e| e.to_string())?;
    let binary = a
        .binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_afas-sync")));
    println!(
        "Command: `cargo bench --bench delivery_memory -- {}`\nDate: {}\n\n| employees | sync | target | changes delivered | requests | wall | CPU | peak RSS |\n|---|---|---|---|---|---|---|---|",
        std::env::args().skip(1).filter(|a| a != "--bench").collect::<Vec<_>>().join(" "),
        jiff::Zoned::now().date(),
    );
    let mut summary = Vec::new();
    for &size in &a.sizes {
        state.set_data(generate(SEED, size, day0));
        // Without a sink: what fetch, diff and commit cost on their own.
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cfg = config(dir.path(), &emulator.base_url(), None, &a)?;
        let bare = sync(&binary, &cfg, day0, dir.path())?;
        println!("{}", row(size, "first import, no sink", "none", &bare, None, 0));

        let asked = Arc::new(Asked::default());
        let port = rt.block_on(start_responder(asked.clone()))?;
        let url = format!("http://127.0.0.1:{port}/scim/v2");
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cfg = config(dir.path(), &emulator.base_url(), Some(&url), &a)?;
        let run = sync(&binary, &cfg, day0, dir.path())?;
        let delivered = delivered_of(&run)?;
        let requests = asked.posts.load(Ordering::Relaxed)
            + asked.patches.load(Ordering::Relaxed)
            + asked.others.load(Ordering::Relaxed);
        println!(
            "{}",
            row(
                size,
                "first import",
                "minimal responder",
                &run,
                Some(delivered),
                requests
            )
        );

        // The floor: as many POSTs of the same size, from a plain client.
        let posts = asked.posts.load(Ordering::Relaxed);
        let sample = asked
            .sample
            .lock()
            .map_err(|_| "sample")?
            .clone()
            .ok_or("the sync sent no POST")?;
        let body = dir.path().join("floor-body.json");
        std::fs::write(&body, &sample).map_err(|e| e.to_string())?;
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(me);
        cmd.arg("--floor-client")
            .arg(format!("{url}/Users"))
            .arg(posts.to_string())
            .arg(&body);
        let floor = measure(&mut cmd, dir.path())?;
        if floor.code != 0 {
            return Err(format!("floor client exited {}: {}", floor.code, floor.stderr));
        }
        println!(
            "{}",
            row(
                size,
                "floor: plain client, 32 at once",
                "minimal responder",
                &floor,
                None,
                posts
            )
        );
        let delivery_cpu = run.usage.cpu.saturating_sub(bare.usage.cpu);
        summary.push(format!(
            "{size}: peak RSS {} (no sink {}); delivery CPU {:.2} s (sync {:.2} s − no sink {:.2} s) = {:.2} × the floor's {:.2} s; delivery {:.0} changes/s",
            mib(run.usage.max_rss_kib),
            mib(bare.usage.max_rss_kib),
            delivery_cpu.as_secs_f64(),
            run.usage.cpu.as_secs_f64(),
            bare.usage.cpu.as_secs_f64(),
            delivery_cpu.as_secs_f64() / floor.usage.cpu.as_secs_f64().max(0.001),
            floor.usage.cpu.as_secs_f64(),
            delivered as f64 / run.usage.wall.saturating_sub(bare.usage.wall).as_secs_f64().max(0.001),
        ));

        // scim2-server takes minutes per 100k; beyond that the responder only.
        if a.scim && size <= 100_000 {
            let mut scim = rt.block_on(peers::ScimPeer::start());
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let cfg = config(dir.path(), &emulator.base_url(), Some(&scim.url()), &a)?;
            let run = sync(&binary, &cfg, day0, dir.path())?;
            let delivered = delivered_of(&run)?;
            println!(
                "{}",
                row(size, "first import", "scim2-server", &run, Some(delivered), 0)
            );
            rt.block_on(scim.stop());
        }
    }
    println!();
    for s in summary {
        println!("- {s}");
    }
    Ok(())
}

fn sync(binary: &Path, cfg: &Path, day: Date, dir: &Path) -> Result<ChildRun, String> {
    let mut cmd = Command::new(binary);
    cmd.arg("--config")
        .arg(cfg)
        .args(["--log-level", "warn", "sync", "--as-of", &day.to_string()]);
    let run = measure(&mut cmd, dir)?;
    if !matches!(run.code, 0 | 4) {
        return Err(format!("sync exited {}: {}{}", run.code, run.stdout, run.stderr));
    }
    Ok(run)
}

/// The changes the sync reports delivered ("delivery: N delivered …").
fn delivered_of(run: &ChildRun) -> Result<u64, String> {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix("delivery: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or(format!("no delivery line: {}", run.stdout))
}

fn row(size: u64, what: &str, target: &str, run: &ChildRun, delivered: Option<u64>, requests: u64) -> String {
    format!(
        "| {size} | {what} | {target} | {} | {} | {:.1} s | {:.2} s | {} |",
        delivered.map_or("–".to_string(), |d| d.to_string()),
        if requests == 0 {
            "–".to_string()
        } else {
            requests.to_string()
        },
        run.usage.wall.as_secs_f64(),
        run.usage.cpu.as_secs_f64(),
        mib(run.usage.max_rss_kib),
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn config(dir: &Path, afas: &str, scim: Option<&str>, a: &Args) -> Result<PathBuf, String> {
    support::write_tokens(dir, TOKEN_HEX, peers::SCIM_TOKEN)?;
    let sink = scim
        .map(|url| format!("[sink.scim]\nurl = \"{url}\"\ntoken_file = \"scim-token\"\nbulk = false\n"))
        .unwrap_or_default();
    let text = format!(
        "[afas]\nbase_url = \"{afas}\"\ntoken_file = \"afas-token\"\n\n[store]\npath = \"{}\"\n\n[guards]\nmax_leavers = 1000000\nmax_leavers_percent = 100.0\n\n[delivery]\nsync_wait_secs = 3600\n{}\n{sink}",
        dir.join("state.redb").display(),
        [
            a.window.map(|n| format!("window = {n}\n")),
            a.max_parallelism.map(|n| format!("max_parallelism = {n}\n")),
        ]
        .into_iter()
        .flatten()
        .collect::<String>(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}
