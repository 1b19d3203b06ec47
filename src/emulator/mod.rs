//! An AFAS Profit emulator: an HTTP server on loopback that answers like
//! AFAS's REST services do (REFERENCE.md), with data from fixtures or a
//! generated company, and faults injected on demand. The demo, the tests
//! and the benchmarks all talk to it over real HTTP.
//!
//! Like mini-redis, [`serve`] takes a bound listener and a shutdown future,
//! so tests drive the real server on a port they chose.

pub mod data;
pub mod query;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::afas::rows::JsonRow;
use crate::afas::token::AppToken;
mod auth;
mod server;
pub use auth::{AuthSetup, ConnectorMode};
pub use data::{ConnectorData, Dataset};
pub use server::*;

/// AFAS fails pages whose columns × rows exceed about this many cells.
pub const MAX_CELLS_PER_PAGE: usize = 150_000;

/// What to do to a request that a [`FaultRule`] matches.
#[derive(Debug, Clone)]
pub enum FaultAction {
    /// Answer with this status and body instead.
    Status { status: u16, body: String },
    /// A 500 with AFAS's functional error JSON.
    Functional { message: String },
    /// 503 maintenance with `retry_after` seconds (body and header).
    Maintenance { retry_after: u64 },
    /// Send the real body in small chunks with this pause between them.
    SlowBody { chunk_delay: Duration },
    /// Send only the first half of the real body, then end cleanly.
    Truncate,
    /// Send the first half, then break the connection.
    Reset,
    /// Send headers and never finish the body.
    Hang,
    /// Wait this long before answering normally.
    Delay(Duration),
}

/// When a fault fires: on requests whose path contains `path_contains`
/// (case-insensitive; empty = all), from the `nth` such request (1-based)
/// on, `times` times.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub path_contains: String,
    pub nth: u64,
    pub times: u32,
    pub action: FaultAction,
    seen: u64,
}

impl FaultRule {
    pub fn new(path_contains: &str, nth: u64, times: u32, action: FaultAction) -> Self {
        FaultRule {
            path_contains: path_contains.to_ascii_lowercase(),
            nth: nth.max(1),
            times,
            action,
            seen: 0,
        }
    }
}

/// A change to the data applied right after the `after`-th request whose
/// path contains `path_contains` has been answered: rows inserted or
/// deleted between pages, as happens when HR works during a sync.
#[derive(Debug, Clone)]
pub struct DataChange {
    pub path_contains: String,
    pub after: u64,
    pub connector: String,
    pub insert: Vec<JsonRow>,
    /// Rows whose `field` equals the value are deleted.
    pub delete: Vec<(String, Value)>,
    seen: u64,
    done: bool,
}

impl DataChange {
    pub fn new(
        path_contains: &str,
        after: u64,
        connector: &str,
        insert: Vec<JsonRow>,
        delete: Vec<(String, Value)>,
    ) -> Self {
        DataChange {
            path_contains: path_contains.to_ascii_lowercase(),
            after,
            connector: connector.to_string(),
            insert,
            delete,
            seen: 0,
            done: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Added to every request, like a real AFAS round trip.
    pub latency: Duration,
    pub rules: Vec<FaultRule>,
    pub changes: Vec<DataChange>,
}

/// One answered request, for tests that check what the client sent.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub status: u16,
    /// The `Authorization` scheme sent (`AfasToken`, `Bearer`, `Basic`), or empty.
    pub auth_scheme: String,
}

/// The emulator's shared state; tests hold an `Arc` to it to change days,
/// inject faults and read the request log.
pub struct EmulatorState {
    days: Vec<(String, Dataset)>,
    data: RwLock<Dataset>,
    day: AtomicU64,
    auth: AuthSetup,
    mode: Mutex<ConnectorMode>,
    /// `jti`s of client assertions already used (replays are refused).
    seen_jti: Mutex<std::collections::HashSet<String>>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<LoggedRequest>>,
    bearer: Mutex<HashMap<String, Instant>>,
    counter: AtomicU64,
    /// Row order per (connector, order by), valid until the data changes.
    sorted: Mutex<HashMap<SortKey, Arc<Vec<u32>>>>,
    pub profit_version: String,
}

type SortKey = (String, Vec<(String, bool)>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmulatorState {
    /// `days` must hold at least one dataset; the first is served first.
    pub fn new(days: Vec<(String, Dataset)>, auth: AuthSetup) -> Arc<Self> {
        let first = days.first().map(|(_, d)| d.clone()).unwrap_or_default();
        Arc::new(EmulatorState {
            days,
            data: RwLock::new(first),
            day: AtomicU64::new(0),
            mode: Mutex::new(auth.mode),
            auth,
            seen_jti: Mutex::new(Default::default()),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            bearer: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            sorted: Mutex::new(HashMap::new()),
            profit_version: "7.7.10".into(),
        })
    }

    pub fn day_names(&self) -> Vec<String> {
        self.days.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Switches to fixture day `index` (0-based); false when out of range.
    pub fn set_day(&self, index: usize) -> bool {
        match self.days.get(index) {
            Some((_, d)) => {
                let mut data = self.data.write().unwrap_or_else(|p| p.into_inner());
                *data = d.clone();
                lock(&self.sorted).clear();
                drop(data);
                self.day.store(index as u64, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    pub fn current_day(&self) -> usize {
        self.day.load(Ordering::SeqCst) as usize
    }

    /// Replaces the served data (tests and the demo's "next day").
    pub fn set_data(&self, ds: Dataset) {
        let mut data = self.data.write().unwrap_or_else(|p| p.into_inner());
        *data = ds;
        lock(&self.sorted).clear();
    }

    pub fn with_data<R>(&self, f: impl FnOnce(&mut Dataset) -> R) -> R {
        let mut data = self.data.write().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut data);
        lock(&self.sorted).clear();
        out
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.faults) = faults;
    }

    pub fn add_rule(&self, rule: FaultRule) {
        lock(&self.faults).rules.push(rule);
    }

    pub fn set_latency(&self, latency: Duration) {
        lock(&self.faults).latency = latency;
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.log).clone()
    }

    pub fn clear_log(&self) {
        lock(&self.log).clear();
    }

    /// Makes every issued OAuth access token expire now.
    pub fn expire_oauth_tokens(&self) {
        lock(&self.bearer).clear();
    }

    fn pick_fault(&self, path: &str) -> (Duration, Option<FaultAction>) {
        let mut f = lock(&self.faults);
        let latency = f.latency;
        let lower = path.to_ascii_lowercase();
        for rule in f.rules.iter_mut() {
            if !lower.contains(&rule.path_contains) {
                continue;
            }
            rule.seen += 1;
            if rule.seen >= rule.nth && rule.times > 0 {
                rule.times -= 1;
                return (latency, Some(rule.action.clone()));
            }
        }
        (latency, None)
    }

    fn after_answer(&self, path: &str) {
        let lower = path.to_ascii_lowercase();
        let due: Vec<DataChange> = {
            let mut f = lock(&self.faults);
            let mut due = Vec::new();
            for c in f.changes.iter_mut() {
                if c.done || !lower.contains(&c.path_contains) {
                    continue;
                }
                c.seen += 1;
                if c.seen >= c.after {
                    c.done = true;
                    due.push(c.clone());
                }
            }
            due
        };
        for c in due {
            self.with_data(|d| {
                if let Some(conn) = d.connectors.get_mut(&c.connector) {
                    conn.rows.retain(|r| !c.delete.iter().any(|(f, v)| r.get(f) == Some(v)));
                    conn.rows.extend(c.insert.iter().cloned());
                }
            });
        }
    }
}

/// A running emulator; dropped or stopped, it shuts down.
pub struct Emulator {
    pub addr: SocketAddr,
    pub state: Arc<EmulatorState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Emulator {
    /// Starts on an already bound listener.
    pub fn start(listener: TcpListener, state: Arc<EmulatorState>) -> std::io::Result<Emulator> {
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Ok(Emulator {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Binds 127.0.0.1 on a free port and starts.
    pub async fn start_local(state: Arc<EmulatorState>) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start(listener, state)
    }

    /// The base URL to put in `afas.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/ProfitRestServices", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
