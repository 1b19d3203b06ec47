//! The scale benchmark (issue 6): the real binary against the built-in AFAS
//! emulator on loopback, measured against the network floor.
//!
//!     cargo bench --bench scale -- [--sizes 10000,100000,1000000]
//!         [--latency-ms 50] [--year-size 100000] [--year-days 365]
//!         [--delivery-size 10000] [--out target/bench-scale.md]
//!         [--binary target/x86_64-unknown-linux-musl/release/afas-sync]
//!     cargo bench --bench scale -- --only year [--keep-year state.redb]
//!     cargo bench --bench scale -- --smoke     (the test command's check)
//!
//! Every sync is the release binary as a child process, so wall time, CPU
//! (user+sys) and peak RSS come from `wait4` for that process alone. The
//! emulator runs in this process; the network floor replays the exact
//! requests the sync made (taken from the emulator's request log) with a
//! plain HTTP client on a thread of its own, connectors concurrently and
//! each connector's pages in order, as keyset paging does, and its CPU is
//! that thread's (`RUSAGE_THREAD`), so the emulator's own work is in
//! neither figure. No figure is asserted: this is a benchmark, not a test.

#[path = "../tests/common/peers.rs"]
mod peers;

#[path = "../tests/common/relay.rs"]
mod relay;
#[path = "support/mod.rs"]
mod support;

use support::measure::{launcher, measure, timeval, Usage};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afas_sync::afas::token::AppToken;
use afas_sync::emulator::data::{churn, generate};
use afas_sync::emulator::{Emulator, EmulatorState, LoggedRequest};
use jiff::civil::Date;
use jiff::ToSpan;

const TOKEN_HEX: &str = "610C51AE2FFE4B2C8E33D5A5EB163E12735C72A44D98C278C5E7B5B560079BC1";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SEED: u64 = 42;

struct Args {
    sizes: Vec<u64>,
    latency_ms: u64,
    year_size: u64,
    year_days: u64,
    delivery_size: u64,
    wrk_secs: u64,
    out: PathBuf,
    /// `--only year`: just the simulated year (it takes hours at 365 days).
    only_year: bool,
    /// `--keep-year DIR`: a copy of the year's store before the purge.
    keep_year: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![10_000, 100_000, 1_000_000],
        latency_ms: 50,
        year_size: 100_000,
        year_days: 365,
        delivery_size: 10_000,
        wrk_secs: 5,
        out: PathBuf::from("target/bench-scale.md"),
        only_year: false,
        keep_year: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<u64>()
                            .map_err(|_| format!("--sizes: not a number: {s}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--latency-ms" => a.latency_ms = num(value()?)?,
            "--year-size" => a.year_size = num(value()?)?,
            "--year-days" => a.year_days = num(value()?)?,
            "--delivery-size" => a.delivery_size = num(value()?)?,
            "--wrk-secs" => a.wrk_secs = num(value()?)?,
            "--out" => a.out = PathBuf::from(value()?),
            "--only" => match value()?.as_str() {
                "year" => a.only_year = true,
                other => return Err(format!("--only: unknown part {other} (known: year)")),
            },
            "--keep-year" => a.keep_year = Some(PathBuf::from(value()?)),
            "--binary" => {
                let p = PathBuf::from(value()?);
                if !p.is_file() {
                    return Err(format!("--binary: no such file {}", p.display()));
                }
                let _ = BINARY.set(p);
            }
            "--smoke" => {
                a.sizes = vec![10_000];
                a.latency_ms = 5;
                a.year_size = 2_000;
                a.year_days = 3;
                a.delivery_size = 300;
                a.wrk_secs = 1;
                a.out = PathBuf::from("target/bench-scale-smoke.md");
            }
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn thread_cpu() -> Duration {
    // SAFETY: as in `measure`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    timeval(ru.ru_utime) + timeval(ru.ru_stime)
}

static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The binary under test: `--binary PATH` (e.g. the static build that
/// ships), else the release build cargo made for this benchmark.
fn bin() -> PathBuf {
    BINARY
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_afas-sync")))
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The network floor: the same requests, answered by the same emulator,
/// fetched with nothing done to the bodies.
fn floor(base: &str, requests: &[LoggedRequest]) -> Result<(Duration, Duration, u64), String> {
    let origin = base.split("/ProfitRestServices").next().unwrap_or(base).to_string();
    let header = AppToken::parse(TOKEN_HEX).map_err(|e| e.to_string())?.header_value();
    // Requests without paging (metainfo) go first, one by one; then each
    // connector's pages in order, the connectors at the same time.
    let mut setup = Vec::new();
    let mut per_connector: Vec<(String, Vec<String>)> = Vec::new();
    for r in requests.iter().filter(|r| r.method == "GET") {
        let mut url = url::Url::parse(&format!("{origin}{}", r.path)).map_err(|e| e.to_string())?;
        if !r.query.is_empty() {
            url.query_pairs_mut().extend_pairs(r.query.iter());
        }
        if r.query.iter().any(|(k, _)| k.eq_ignore_ascii_case("skip")) {
            match per_connector.iter_mut().find(|(p, _)| *p == r.path) {
                Some((_, list)) => list.push(url.to_string()),
                None => per_connector.push((r.path.clone(), vec![url.to_string()])),
            }
        } else {
            setup.push(url.to_string());
        }
    }
    std::thread::spawn(move || -> Result<(Duration, Duration, u64), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        afas_sync::afas::client::install_crypto_provider();
        let client = reqwest::Client::builder().build().map_err(|e| e.to_string())?;
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let bytes = rt.block_on(async {
            let get = move |url: String| {
                let client = client.clone();
                let header = header.clone();
                async move {
                    let resp = client
                        .get(url)
                        .header("Authorization", header)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<u64, String>(resp.bytes().await.map_err(|e| e.to_string())?.len() as u64)
                }
            };
            let mut total = 0;
            for u in setup {
                total += get(u).await?;
            }
            let mut tasks = Vec::new();
            for (_, urls) in per_connector {
                let get = get.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0;
                    for u in urls {
                        n += get(u).await?;
                    }
                    Ok::<u64, String>(n)
                }));
            }
            for t in tasks {
                total += t.await.map_err(|e| e.to_string())??;
            }
            Ok::<u64, String>(total)
        })?;
        Ok((t0.elapsed(), thread_cpu() - cpu0, bytes))
    })
    .join()
    .map_err(|_| "the floor thread panicked".to_string())?
}

struct Bench {
    /// Runs the emulator; kept alive for the whole benchmark.
    rt: tokio::runtime::Runtime,
    emulator: Emulator,
    state: Arc<EmulatorState>,
}

fn write_config(dir: &Path, base_url: &str, extra: &str) -> Result<PathBuf, String> {
    std::fs::write(dir.join("afas-token"), TOKEN_HEX).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("afas-token"), std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    let path = dir.join("config.toml");
    // Guards: the absolute leaver cap (25 by default) would hold every churn
    // day of a large company; the percentage guards stay at their defaults.
    let text = format!(
        "[afas]\nbase_url = \"{base_url}\"\ntoken_file = \"afas-token\"\n\n[store]\npath = \"{}\"\n\n[guards]\nmax_leavers = 1000000\n{extra}\n",
        dir.join("state.redb").display()
    );
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

struct SyncFigures {
    usage: Usage,
    floor_wall: Duration,
    floor_cpu: Duration,
    pages: usize,
    store_before: u64,
    store_after: u64,
    summary: String,
}

impl Bench {
    /// Reads one page of each connector, untimed, after the data changed:
    /// the emulator sorts a connector on its first request for an order
    /// and caches that (~50 ms at 100k). The floor always meets a warm
    /// cache, so the sync it is compared with must too; a real AFAS has
    /// its indexes before anyone asks.
    fn warm(&self, config: &Path) -> Result<(), String> {
        for connector in ["employees", "contracts"] {
            let out = Command::new(bin())
                .arg("--config")
                .arg(config)
                .args(["fetch", "--connector", connector, "--limit", "1"])
                .output()
                .map_err(|e| format!("warming the emulator: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "warming the emulator ({connector}): {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    fn sync(&self, dir: &Path, config: &Path, as_of: Date, with_floor: bool) -> Result<SyncFigures, String> {
        let store = dir.join("state.redb");
        let store_before = file_size(&store);
        self.state.clear_log();
        let run = measure(
            Command::new(bin()).arg("--config").arg(config).args([
                "--log-level",
                "info",
                "sync",
                "--as-of",
                &as_of.to_string(),
            ]),
            dir,
        )?;
        if !matches!(run.code, 0 | 4) {
            return Err(format!(
                "sync exited {}: {}\n{}",
                run.code,
                run.stdout,
                run.stderr.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            ));
        }
        let log = self.state.requests();
        let pages = log
            .iter()
            .filter(|r| r.query.iter().any(|(k, _)| k.eq_ignore_ascii_case("skip")))
            .count();
        let (floor_wall, floor_cpu) = if with_floor {
            let (w, c, _) = floor(&self.emulator.base_url(), &log)?;
            (w, c)
        } else {
            (Duration::ZERO, Duration::ZERO)
        };
        Ok(SyncFigures {
            usage: run.usage,
            floor_wall,
            floor_cpu,
            pages,
            store_before,
            store_after: file_size(&store),
            summary: run.stdout.lines().next().unwrap_or("").to_string(),
        })
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".into()
    } else {
        format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
    }
}

fn row(out: &mut String, size: u64, what: &str, f: &SyncFigures) {
    let growth = f.store_after as i64 - f.store_before as i64;
    let beyond = format!("{:.2} s", f.usage.cpu.as_secs_f64() - f.floor_cpu.as_secs_f64());
    out.push_str(&format!(
        "| {size} | {what} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        f.pages,
        secs(f.usage.wall),
        secs(f.floor_wall),
        ratio(f.usage.wall, f.floor_wall),
        secs(f.usage.cpu),
        secs(f.floor_cpu),
        beyond,
        mib(f.usage.max_rss_kib * 1024),
        mib(f.store_after),
        if growth.abs() < 1 << 20 {
            format!("{} KiB", growth / 1024)
        } else {
            mib(growth.max(0) as u64)
        },
    ));
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--measure-child") && argv.len() >= 4 {
        if let Err(e) = launcher(&argv[2], &argv[3], &argv[4..]) {
            eprintln!("launcher: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo test --all-targets` runs this target without `--bench`: it is
    // a compile check there; the test command runs `--smoke` explicitly.
    if !argv.iter().any(|a| a == "--bench" || a == "--smoke") {
        eprintln!("scale benchmark: run with `cargo bench --bench scale` (see the file's header)");
        return;
    }
    if let Err(e) = real_main() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let a = args()?;
    let (rt, emulator, state) = support::runtime_and_emulator(TOKEN_HEX)?;
    let bench = Bench { rt, emulator, state };
    let day0 = Date::new(2026, 11, 24).map_err(|e| e.to_string())?;
    let mut report = String::new();
    let machine = machine();
    report.push_str(&format!(
        "Command: `cargo bench --bench scale -- {}`\nDate: {}\nMachine: {machine}\nEmulator latency: {} ms per request; page size 1000 (the default); keyset paging.\n\n",
        std::env::args().skip(1).filter(|a| a != "--bench").collect::<Vec<_>>().join(" "),
        jiff::Zoned::now().date(),
        a.latency_ms
    ));

    // 1-4: floor, first import, no-op, churn day.
    if !a.only_year {
        report.push_str("| employees | sync | pages | wall | floor wall | wall / floor | CPU | floor CPU | CPU beyond floor | peak RSS | store | store growth |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    }
    let mut daemon_report = String::new();
    let mut kept_dirs = Vec::new();
    let sizes = if a.only_year { &[][..] } else { &a.sizes[..] };
    for &n in sizes {
        eprintln!("== {n} employees: generating");
        let mut ds = generate(SEED, n, day0);
        bench.state.set_data(ds.clone());
        bench.state.set_latency(Duration::from_millis(a.latency_ms));
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = dir.path().join("out");
        let config = write_config(
            dir.path(),
            &bench.emulator.base_url(),
            &format!("\n[sink.files]\ndir = \"{}\"\n", out.display()),
        )?;
        bench.warm(&config)?;
        eprintln!("== {n}: first import");
        let first = bench.sync(dir.path(), &config, day0, true)?;
        eprintln!("   {}", first.summary);
        row(&mut report, n, "first import", &first);
        eprintln!("== {n}: no-op");
        let noop = bench.sync(dir.path(), &config, day0, true)?;
        eprintln!("   {}", noop.summary);
        row(&mut report, n, "no-op", &noop);
        let day1 = day0.checked_add(1.day()).map_err(|e| e.to_string())?;
        let summary = churn(&mut ds, SEED + 1, day1, 5, 5, 20);
        bench.state.set_data(ds);
        eprintln!(
            "== {n}: churn day ({} joiners, {} leavers, {} movers in AFAS)",
            summary.joiners.len(),
            summary.leavers.len(),
            summary.movers.len()
        );
        bench.warm(&config)?;
        let ch = bench.sync(dir.path(), &config, day1, true)?;
        eprintln!("   {}", ch.summary);
        row(&mut report, n, "churn day", &ch);
        // 7 and 8 on the 100k store (or the one size of a smoke run), while
        // the emulator still serves that company.
        if n == 100_000 || a.sizes.len() == 1 {
            eprintln!("== daemon: READY and /metrics under load");
            daemon_report = daemon_figures(&bench, dir.path(), &a)?;
        }
        kept_dirs.push(dir);
    }
    report.push('\n');

    report.push_str(&daemon_report);

    // 5: a simulated year.
    eprintln!("== simulated year: {} days at {} employees", a.year_days, a.year_size);
    report.push_str(&year(&bench, &a, day0)?);

    if !a.only_year && a.delivery_size > 0 {
        // 6: delivery throughput (`--delivery-size 0` leaves it out).
        eprintln!(
            "== delivery: {} employees to scim2-server and the webhook receiver",
            a.delivery_size
        );
        report.push_str(&delivery(&bench, &a, day0)?);
        report.push_str(&binary_size());
    }
    if let Some(parent) = a.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&a.out, &report).map_err(|e| format!("cannot write {}: {e}", a.out.display()))?;
    println!("{report}");
    eprintln!("written to {}", a.out.display());
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()))
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1048576.0))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM")
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Polls `url` (plain HTTP on loopback) until it answers 2xx.
fn wait_http(url: &str, header: Option<(&str, &str)>) -> Result<(), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let extra = header.map(|(k, v)| format!("{k}: {v}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    for _ in 0..300 {
        if let Ok(mut conn) = std::net::TcpStream::connect(host) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = [0u8; 12];
            if conn.write_all(request.as_bytes()).is_ok() && conn.read_exact(&mut head).is_ok() && head[9] == b'2' {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{url} did not answer"))
}

/// Starts the daemon on an existing store with a NOTIFY_SOCKET, measures
/// start to READY=1, then runs wrk against /metrics while a sync runs.
fn daemon_figures(bench: &Bench, dir: &Path, a: &Args) -> Result<String, String> {
    let port = free_port()?;
    let cfg = write_config(
        dir,
        &bench.emulator.base_url(),
        &format!(
            "\n[schedule]\ntimes = [\"03:00\"]\n\n[http]\nbind = \"127.0.0.1:{port}\"\n\n[sink.files]\ndir = \"{}\"\n",
            dir.join("out").display()
        ),
    )?;
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let employees = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .arg("status")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let log = std::fs::File::create(dir.join("daemon.log")).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .args(["--log-level", "warn", "run"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut ready = None;
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(30) {
        match sock.recv(&mut buf) {
            Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => {
                ready = Some(start.elapsed());
                break;
            }
            Ok(_) => continue,
            Err(e) => return Err(format!("no READY from the daemon: {e}")),
        }
    }
    let ready = ready.ok_or("no READY within 30 s")?;
    wait_http(&format!("http://127.0.0.1:{port}/healthz"), None)?;
    // A sync inside the daemon (the CLI hands it over the control socket),
    // with wrk on /metrics for the first seconds of it.
    let sync_cfg = cfg.clone();
    let syncing = std::thread::spawn(move || {
        let t = Instant::now();
        let o = Command::new(bin()).arg("--config").arg(&sync_cfg).arg("sync").output();
        (t.elapsed(), o.map(|o| String::from_utf8_lossy(&o.stdout).to_string()))
    });
    std::thread::sleep(Duration::from_millis(200));
    let wrk = Command::new("wrk")
        .args([
            "-t2",
            "-c16",
            &format!("-d{}s", a.wrk_secs),
            "--latency",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .map_err(|e| format!("wrk is needed for the /metrics figure (apt-get install wrk): {e}"))?;
    let (sync_wall, sync_out) = syncing.join().map_err(|_| "sync thread panicked")?;
    let sync_out = sync_out.map_err(|e| e.to_string())?;
    let wrk_out = String::from_utf8_lossy(&wrk.stdout).to_string();
    let rps = wrk_out
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    let p99 = wrk_out
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    let errors = wrk_out
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .unwrap_or("none")
        .trim()
        .to_string();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let stopped = child.wait().map_err(|e| e.to_string())?;
    Ok(format!(
        "Daemon on the store above ({employees}): start to READY=1 (sd_notify) {:.1} ms; exit after SIGTERM: {stopped}.\n\n\
         `/metrics` under load, `wrk -t2 -c16 -d{}s --latency`, while the daemon ran a sync ({} of sync, which said: {}): \
         {rps} requests/s, p99 {p99}, errors: {errors}.\n\n",
        ready.as_secs_f64() * 1000.0,
        a.wrk_secs,
        secs(sync_wall),
        sync_out.lines().next().unwrap_or("").trim(),
    ))
}

/// 365 churn days with an injected date; the store size at the end, then
/// after a purge with a shorter history and a compaction.
fn year(bench: &Bench, a: &Args, day0: Date) -> Result<String, String> {
    // The year measures the store, not time: no latency, no floor.
    bench.state.set_latency(Duration::ZERO);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = write_config(dir.path(), &bench.emulator.base_url(), "")?;
    let mut ds = generate(SEED, a.year_size, day0);
    bench.state.set_data(ds.clone());
    let t0 = Instant::now();
    let first = bench.sync(dir.path(), &config, day0, false)?;
    let mut cpu = first.usage.cpu;
    let mut max_rss = first.usage.max_rss_kib;
    let mut mutations = 0u64;
    let mut day = day0;
    let mut sizes = Vec::new();
    for d in 1..=a.year_days {
        day = day.checked_add(1.day()).map_err(|e| e.to_string())?;
        churn(&mut ds, SEED + d, day, 5, 5, 20);
        bench.state.set_data(ds.clone());
        let f = bench.sync(dir.path(), &config, day, false)?;
        cpu += f.usage.cpu;
        max_rss = max_rss.max(f.usage.max_rss_kib);
        mutations += f
            .summary
            .split(':')
            .nth(1)
            .map(|s| {
                s.split(',')
                    .filter_map(|p| p.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
                    .take(4)
                    .sum::<u64>()
            })
            .unwrap_or(0);
        if d % 30 == 0 || d == a.year_days {
            sizes.push(format!("day {d}: {}", mib(f.store_after)));
            eprintln!("   day {d}: {} ({})", mib(f.store_after), f.summary);
        }
    }
    let path = dir.path().join("state.redb");
    let end = file_size(&path);
    if let Some(keep) = &a.keep_year {
        std::fs::copy(&path, keep).map_err(|e| format!("--keep-year {}: {e}", keep.display()))?;
    }
    let mut store = afas_sync::store::Store::open(&path).map_err(|e| e.to_string())?;
    let default_purge = store.purge(day, 400, 90).map_err(|e| e.to_string())?;
    store.compact().map_err(|e| e.to_string())?;
    let compacted = file_size(&path);
    let short = store.purge(day, 90, 90).map_err(|e| e.to_string())?;
    store.compact().map_err(|e| e.to_string())?;
    let after_short = file_size(&path);
    Ok(format!(
        "Simulated year: {} employees, {} churn days (0.5% joiners, 0.5% leavers, 2% movers a day), dates injected with `--as-of`, \
         no emulator latency; {mutations} mutations committed; {} wall in all, {} CPU, largest peak RSS {}.\n\
         Store size: {}; end of the year {}; after the default retention purge (history 400 days: removed {} runs) and compaction {}; \
         after a purge with `retention.history_days = 90` (removed {} runs) and compaction {}.\n\n",
        a.year_size,
        a.year_days,
        secs(t0.elapsed()),
        secs(cpu),
        mib(max_rss * 1024),
        sizes.join(", "),
        mib(end),
        default_purge.runs,
        mib(compacted),
        short.runs,
        mib(after_short),
    ))
}

/// Mutations per second into scim2-server and the webhook receiver: the
/// time from the sync's "sync committed" log line to the process end.
fn delivery(bench: &Bench, a: &Args, day0: Date) -> Result<String, String> {
    bench.state.set_latency(Duration::ZERO);
    bench.state.set_data(generate(SEED, a.delivery_size, day0));
    let mut out = String::new();

    // The same peers the delivery tests use (tests/common/peers.rs).
    let mut scim = bench.rt.block_on(peers::ScimPeer::start());
    let result = (|| {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("scim-token"), peers::SCIM_TOKEN).map_err(|e| e.to_string())?;
        let cfg = write_config(
            dir.path(),
            &bench.emulator.base_url(),
            &format!("\n[sink.scim]\nurl = \"{}\"\ntoken_file = \"scim-token\"\n", scim.url()),
        )?;
        delivery_run(
            dir.path(),
            &cfg,
            day0,
            "scim2-server 0.8 (SCIM, parallelism 4, the default)",
        )
    })();
    bench.rt.block_on(scim.stop());
    out.push_str(&result?);

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let hook = bench.rt.block_on(peers::WebhookPeer::start(WEBHOOK_SECRET, dir.path()));
    let result = (|| {
        std::fs::write(dir.path().join("webhook-secrets"), WEBHOOK_SECRET).map_err(|e| e.to_string())?;
        let cfg = write_config(
            dir.path(),
            &bench.emulator.base_url(),
            &format!(
                "\n[sink.webhook]\nurl = \"{}\"\nsecret_file = \"webhook-secrets\"\n",
                hook.url()
            ),
        )?;
        delivery_run(
            dir.path(),
            &cfg,
            day0,
            "the Standard Webhooks receiver in tests/peers (Python http.server, verifies each signature)",
        )
    })();
    bench.rt.block_on(hook.stop());
    out.push_str(&result?);
    out.push('\n');
    Ok(out)
}

fn delivery_run(dir: &Path, cfg: &Path, day0: Date, peer: &str) -> Result<String, String> {
    let run = measure(
        Command::new(bin()).arg("--config").arg(cfg).args([
            "--log-level",
            "info",
            "sync",
            "--as-of",
            &day0.to_string(),
        ]),
        dir,
    )?;
    let ended = jiff::Timestamp::now();
    if run.code != 0 {
        return Err(format!("delivery sync exited {}: {}", run.code, run.stdout));
    }
    let committed = run
        .stderr
        .lines()
        .find(|l| l.contains("sync committed"))
        .and_then(|l| l.split_whitespace().next())
        .map(strip_ansi)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .ok_or("no `sync committed` line in the log")?;
    let delivered = run
        .stdout
        .lines()
        .find(|l| l.starts_with("delivery:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or("no delivery summary")?;
    let took = ended.duration_since(committed);
    let secs = took.as_secs_f64();
    Ok(format!(
        "- Delivery to {peer}: {delivered} entries in {secs:.2} s = {:.0} per second ({}).\n",
        delivered as f64 / secs.max(0.001),
        run.stdout.lines().find(|l| l.starts_with("delivery:")).unwrap_or("")
    ))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn binary_size() -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let static_bin = manifest.join("target/x86_64-unknown-linux-musl/release/afas-sync");
    let mut s = String::new();
    if static_bin.exists() {
        s.push_str(&format!(
            "Static binary (`scripts/build-static`): {} bytes ({}).\n",
            file_size(&static_bin),
            mib(file_size(&static_bin))
        ));
    } else {
        s.push_str("Static binary: not built (run `./scripts/build-static` first).\n");
    }
    s.push_str(&format!(
        "Benchmarked binary: {} ({}).\n",
        bin().display(),
        mib(file_size(&bin()))
    ));
    s
}
