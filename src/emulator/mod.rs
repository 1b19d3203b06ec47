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
pub use data::{ConnectorData, Dataset};

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
}

/// How the emulator authenticates callers.
#[derive(Debug, Clone)]
pub struct AuthSetup {
    /// The App Connector token it accepts.
    pub token: Option<AppToken>,
    /// OAuth client id and secret it accepts.
    pub oauth: Option<(String, String)>,
    pub oauth_lifetime: Duration,
}

impl AuthSetup {
    pub fn token(token: AppToken) -> Self {
        AuthSetup {
            token: Some(token),
            oauth: None,
            oauth_lifetime: Duration::from_secs(3600),
        }
    }
}

/// The emulator's shared state; tests hold an `Arc` to it to change days,
/// inject faults and read the request log.
pub struct EmulatorState {
    days: Vec<(String, Dataset)>,
    data: RwLock<Dataset>,
    day: AtomicU64,
    auth: AuthSetup,
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
            auth,
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

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A body fed from a channel, for slow, truncated, broken and endless bodies.
struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}

fn full(body: impl Into<Bytes>) -> BoxBody {
    http_body_util::Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn respond(status: u16, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn functional(message: &str) -> Response<BoxBody> {
    let body = json!({
        "externalMessage": message,
        "errorNumber": -1,
        "profitLogReference": format!("{:08X}-EMU", (message.len() as u32).wrapping_mul(2_654_435_761u32)),
    });
    respond(500, body.to_string())
}

fn maintenance(retry_after: u64) -> Response<BoxBody> {
    let body =
        json!({"error": {"code": "maintenance", "message": "Profit is being updated"}, "retry_after": retry_after});
    let mut r = respond(503, body.to_string());
    if let Ok(v) = hyper::header::HeaderValue::from_str(&retry_after.to_string()) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

/// Streams `body` according to a body fault.
fn faulty_body(status: u16, body: Bytes, action: &FaultAction) -> Response<BoxBody> {
    let (tx, rx) = mpsc::channel(4);
    let action = action.clone();
    tokio::spawn(async move {
        let half = body.slice(0..body.len() / 2);
        match action {
            FaultAction::SlowBody { chunk_delay } => {
                for chunk in body.chunks(64) {
                    tokio::time::sleep(chunk_delay).await;
                    if tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk)))).await.is_err() {
                        return;
                    }
                }
            }
            FaultAction::Truncate => {
                let _ = tx.send(Ok(Frame::data(half))).await;
            }
            FaultAction::Reset => {
                let _ = tx.send(Ok(Frame::data(half))).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Err(std::io::Error::other("injected connection reset"))).await;
            }
            FaultAction::Hang => {
                let _ = tx.send(Ok(Frame::data(half))).await;
                // Hold the sender until the client gives up.
                tx.closed().await;
            }
            _ => {
                let _ = tx.send(Ok(Frame::data(body))).await;
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

impl EmulatorState {
    fn check_auth(&self, req: &Request<Incoming>) -> Option<Response<BoxBody>> {
        let header = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(rest) = header.strip_prefix("AfasToken ") {
            if let Some(token) = &self.auth.token {
                let expected = base64::engine::general_purpose::STANDARD.encode(token.to_xml());
                if rest == expected {
                    return None;
                }
                // AFAS answers an un-encoded token with a 500, not a 401.
                if rest.trim_start().starts_with('<') {
                    return Some(functional("Invalid token: the token must be base64 encoded"));
                }
            }
            return Some(respond(401, ""));
        }
        if let Some(rest) = header.strip_prefix("Bearer ") {
            let ok = lock(&self.bearer).get(rest).is_some_and(|exp| Instant::now() < *exp);
            if ok {
                return None;
            }
            let mut r = respond(401, "");
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return Some(r);
        }
        Some(respond(401, ""))
    }

    async fn oauth_token(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let basic = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())));
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return respond(400, json!({"error": "invalid_request"}).to_string()),
        };
        let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return respond(400, json!({"error": "unsupported_grant_type"}).to_string());
        }
        let (id, secret) = match (form.get("client_id"), form.get("client_secret"), basic) {
            (Some(i), Some(s), _) => (i.clone(), s.clone()),
            (_, _, Some((i, s))) => (i, s),
            _ => return respond(
                400,
                json!({"error": "invalid_request", "error_description": "client_id and client_secret are required"})
                    .to_string(),
            ),
        };
        match &self.auth.oauth {
            Some((want_id, want_secret)) if *want_id == id && *want_secret == secret => {
                let n = self.counter.fetch_add(1, Ordering::SeqCst);
                let token = format!("emu-{:016x}", data::Rng::new(n ^ 0x5eed).next_u64());
                lock(&self.bearer).insert(token.clone(), Instant::now() + self.auth.oauth_lifetime);
                respond(
                    200,
                    json!({"access_token": token, "token_type": "Bearer", "expires_in": self.auth.oauth_lifetime.as_secs()}).to_string(),
                )
            }
            _ => respond(
                401,
                json!({"error": "invalid_client", "error_description": "Client authentication failed"}).to_string(),
            ),
        }
    }

    fn connector_rows(&self, connector: &str, params: &[(String, String)]) -> Response<BoxBody> {
        let q = match query::parse(params) {
            Ok(q) => q,
            Err(e) => return functional(&e.0),
        };
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = data.connectors.get(connector) else {
            return respond(404, "");
        };
        let columns = conn.fields.len().max(1);
        if q.take > 0 && (q.take as usize).saturating_mul(columns) > MAX_CELLS_PER_PAGE {
            return functional("Out of memory");
        }
        // The cache is filled and read under the data lock, so an order
        // can never belong to other data.
        let cache_key = (connector.to_string(), q.order.clone());
        let cached = lock(&self.sorted).get(&cache_key).cloned();
        let order = match cached {
            Some(o) => o,
            None => match query::sort_order(conn, &q.order) {
                Ok(o) => {
                    let o = Arc::new(o);
                    lock(&self.sorted).insert(cache_key, o.clone());
                    o
                }
                Err(e) => return functional(&e.0),
            },
        };
        let rows = match query::apply_in_order(conn, &q, &order) {
            Ok(r) => r,
            Err(e) => return functional(&e.0),
        };
        let body = json!({"skip": q.skip, "take": q.take, "rows": rows});
        respond(200, body.to_string())
    }

    fn metainfo(&self) -> Response<BoxBody> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let list: Vec<Value> = data
            .connectors
            .iter()
            .map(|(id, c)| json!({"id": id, "description": c.description}))
            .collect();
        respond(
            200,
            json!({
                "updateConnectors": [],
                "getConnectors": list,
                "info": {"envid": "O12345AA", "appName": "Alleo App connector", "group": "Alleo Group", "tokenExpiry": null}
            })
            .to_string(),
        )
    }

    fn connector_meta(&self, connector: &str) -> Response<BoxBody> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = data.connectors.get(connector) else {
            return respond(404, "");
        };
        let fields: Vec<Value> = conn
            .fields
            .iter()
            .map(|f| {
                json!({"id": f.id, "fieldId": format!("U{}", f.id), "dataType": f.data_type, "label": f.label,
                       "length": 255, "controlType": 1, "decimals": if f.data_type == "decimal" { 2 } else { 0 }, "decimalsFieldId": ""})
            })
            .collect();
        respond(
            200,
            json!({"name": connector, "description": conn.description, "fields": fields}).to_string(),
        )
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<BoxBody> {
        let path = req.uri().path().to_string();
        let query_text = req.uri().query().map(str::to_string);
        let method = req.method().clone();
        let params = parse_query(query_text.as_deref());
        let (latency, fault) = self.pick_fault(&path);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(FaultAction::Delay(d)) = &fault {
            tokio::time::sleep(*d).await;
        }
        let response = self
            .route(req, &path, query_text.as_deref(), &params, fault.as_ref())
            .await;
        lock(&self.log).push(LoggedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: params,
            status: response.status().as_u16(),
        });
        self.after_answer(&path);
        response
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        path: &str,
        query_text: Option<&str>,
        params: &[(String, String)],
        fault: Option<&FaultAction>,
    ) -> Response<BoxBody> {
        // The path prefix is case-insensitive in practice.
        let lower = path.to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix("/profitrestservices") else {
            return respond(404, "");
        };
        let original_rest = &path[path.len() - rest.len()..];
        let segments: Vec<&str> = original_rest.trim_matches('/').split('/').collect();
        let decoded: Vec<String> = segments
            .iter()
            .map(|s| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
            .collect();
        let lower_segs: Vec<String> = decoded.iter().map(|s| s.to_ascii_lowercase()).collect();
        let lower_refs: Vec<&str> = lower_segs.iter().map(String::as_str).collect();

        if query_text.map_or(0, str::len) > crate::afas::client::MAX_QUERY_LEN {
            return respond(404, "");
        }
        if req.method() == hyper::Method::POST {
            return match lower_refs.as_slice() {
                ["oauth", "token"] => self.oauth_token(req).await,
                ["_emulator", "day", day] => {
                    let index = day
                        .parse::<usize>()
                        .ok()
                        .or_else(|| self.days.iter().position(|(n, _)| n.eq_ignore_ascii_case(day)));
                    match index {
                        Some(i) if self.set_day(i) => respond(200, json!({"day": i}).to_string()),
                        _ => respond(404, json!({"error": "no such day"}).to_string()),
                    }
                }
                _ => respond(404, ""),
            };
        }
        if req.method() != hyper::Method::GET {
            return respond(405, "");
        }
        if let Some(denied) = self.check_auth(&req) {
            return denied;
        }
        let real = match lower_refs.as_slice() {
            ["connectors", _] => self.connector_rows(&decoded[1], params),
            ["metainfo"] => self.metainfo(),
            ["metainfo", "get", _] => self.connector_meta(&decoded[2]),
            ["profitversion"] => respond(200, json!({"version": self.profit_version}).to_string()),
            _ => respond(404, ""),
        };
        match fault {
            None | Some(FaultAction::Delay(_)) => real,
            Some(FaultAction::Status { status, body }) => respond(*status, body.clone()),
            Some(FaultAction::Functional { message }) => functional(message),
            Some(FaultAction::Maintenance { retry_after }) => maintenance(*retry_after),
            Some(action) => {
                let status = real.status().as_u16();
                match real.into_body().collect().await {
                    Ok(b) => faulty_body(status, b.to_bytes(), action),
                    Err(_) => respond(500, ""),
                }
            }
        }
    }
}

/// Serves the emulator on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, state: Arc<EmulatorState>, shutdown: impl Future<Output = ()>) {
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
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
