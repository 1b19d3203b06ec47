//! Real peers on 127.0.0.1: scim2-server (PyPI), a fault-injecting proxy in
//! front of it, and the Standard Webhooks receiver in `tests/peers/`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use serde_json::Value;

pub const SCIM_TOKEN: &str = "scim-test-token-0123456789";

/// A plain HTTP client for the tests (with the crypto provider installed,
/// as reqwest's rustls-no-provider build needs).
pub fn http() -> reqwest::Client {
    afas_sync::afas::client::install_crypto_provider();
    reqwest::Client::new()
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// scim2-server, in memory, as a SaaS target runs: RFC 7643's schemas only
/// (core User, Group, the enterprise extension), unless a test says
/// otherwise.
pub struct ScimPeer {
    child: Option<tokio::process::Child>,
    pub port: u16,
    /// afas-sync's own extension schema is loaded.
    pub own_extension: bool,
}

impl ScimPeer {
    pub async fn start() -> ScimPeer {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> ScimPeer {
        Self::start_with(port, &[]).await
    }

    /// With afas-sync's extension loaded (`packaging/scim/`): a target
    /// that chose to serve it.
    pub async fn start_own_extension() -> ScimPeer {
        let schemas = manifest("packaging/scim/schemas.json");
        let types = manifest("packaging/scim/resource-types.json");
        let args = [
            "--schema",
            schemas.to_str().expect("path"),
            "--resource-type",
            types.to_str().expect("path"),
        ];
        let mut peer = Self::start_with(free_port(), &args).await;
        peer.own_extension = true;
        peer
    }

    /// With extra scim2-server arguments (e.g. `--service-provider-config`,
    /// `--schema`).
    pub async fn start_with(port: u16, extra: &[&str]) -> ScimPeer {
        let child = afas_sync::cli::scim2_server("scim2-server".as_ref(), port, SCIM_TOKEN, extra)
            .spawn()
            .expect("scim2-server must be installed (./scripts/test installs it from PyPI)");
        let peer = ScimPeer {
            child: Some(child),
            port,
            own_extension: false,
        };
        let client = http();
        for _ in 0..150 {
            let ok = client
                .get(format!("{}/ServiceProviderConfig", peer.url()))
                .bearer_auth(SCIM_TOKEN)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return peer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("scim2-server did not come up on port {port}");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Every user the server holds (paged).
    pub async fn users(&self) -> Vec<Value> {
        let client = http();
        let mut out = Vec::new();
        let mut start = 1;
        loop {
            let page: Value = client
                .get(format!("{}/Users?startIndex={start}&count=500", self.url()))
                .bearer_auth(SCIM_TOKEN)
                .send()
                .await
                .expect("list users")
                .json()
                .await
                .expect("json");
            let resources = page["Resources"].as_array().cloned().unwrap_or_default();
            let n = resources.len();
            out.extend(resources);
            let total = page["totalResults"].as_u64().unwrap_or(0) as usize;
            if n == 0 || out.len() >= total {
                return out;
            }
            start += n;
        }
    }

    pub async fn post_user(&self, user: &Value) -> u16 {
        http()
            .post(format!("{}/Users", self.url()))
            .bearer_auth(SCIM_TOKEN)
            .header("content-type", "application/scim+json")
            .body(user.to_string())
            .send()
            .await
            .expect("post")
            .status()
            .as_u16()
    }

    pub async fn delete_user(&self, id: &str) {
        http()
            .delete(format!("{}/Users/{id}", self.url()))
            .bearer_auth(SCIM_TOKEN)
            .send()
            .await
            .expect("delete");
    }
}

/// Not HTTP statuses: what the proxy does instead of answering.
/// Closes the connection without forwarding or answering.
pub const RESET: u16 = 0;
/// Forwards the request (the target applies it), then closes the
/// connection: the answer is lost on the way back.
pub const FORWARD_THEN_RESET: u16 = 1;
/// Forwards the request, then never answers: the client must time out.
pub const FORWARD_THEN_HANG: u16 = 2;

/// An injected answer for the `nth` request (1-based) whose method and
/// path match, `times` times: an HTTP status, or one of the modes above.
#[derive(Clone, Debug)]
pub struct Inject {
    pub method: &'static str,
    pub path_contains: &'static str,
    pub nth: u32,
    pub times: u32,
    pub status: u16,
    pub retry_after: Option<u32>,
    seen: u32,
}

impl Inject {
    pub fn new(
        method: &'static str,
        path_contains: &'static str,
        nth: u32,
        times: u32,
        status: u16,
        retry_after: Option<u32>,
    ) -> Self {
        Inject {
            method,
            path_contains,
            nth,
            times,
            status,
            retry_after,
            seen: 0,
        }
    }
}

/// A reverse proxy that forwards to `target` except where a rule injects
/// an answer. Counts what it injected.
pub struct FaultProxy {
    pub port: u16,
    pub injected: Arc<Mutex<Vec<(String, u16)>>>,
    /// Every request that reached the proxy ("METHOD /path?query").
    pub requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(target: String, rules: Vec<Inject>) -> FaultProxy {
        FaultProxy::start_slow(target, rules, std::time::Duration::ZERO).await
    }

    /// A proxy that also holds every answer back for `delay` (a target
    /// further away).
    pub async fn start_slow(target: String, rules: Vec<Inject>, delay: std::time::Duration) -> FaultProxy {
        FaultProxy::start_with(target, rules, delay, None).await
    }

    /// A proxy that takes `per_second` requests in any second and answers
    /// the rest 429 with `Retry-After: 1` (a target's rate limit; counted
    /// in `injected`).
    pub async fn start_rate_limited(target: String, per_second: usize) -> FaultProxy {
        FaultProxy::start_with(target, vec![], Duration::ZERO, Some(per_second)).await
    }

    async fn start_with(
        target: String,
        rules: Vec<Inject>,
        delay: std::time::Duration,
        per_second: Option<usize>,
    ) -> FaultProxy {
        let window = Arc::new(Mutex::new(std::collections::VecDeque::<std::time::Instant>::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let rules = Arc::new(Mutex::new(rules));
        let injected = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let client = http();
        let inj = injected.clone();
        let reqs = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (rules, inj, client, target) = (rules.clone(), inj.clone(), client.clone(), target.clone());
                let (reqs, window) = (reqs.clone(), window.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (rules, inj, client, target) = (rules.clone(), inj.clone(), client.clone(), target.clone());
                        let (reqs, window) = (reqs.clone(), window.clone());
                        async move {
                            let method = req.method().to_string();
                            let path_q = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                            reqs.lock().expect("log").push(format!("{method} {path_q}"));
                            tokio::time::sleep(delay).await;
                            let over_limit = per_second.is_some_and(|limit| {
                                let now = std::time::Instant::now();
                                let mut w = window.lock().expect("window");
                                while w
                                    .front()
                                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
                                {
                                    w.pop_front();
                                }
                                let over = w.len() >= limit;
                                if !over {
                                    w.push_back(now);
                                }
                                over
                            });
                            let injected = if over_limit {
                                Some((429, Some(1)))
                            } else {
                                let mut rules = rules.lock().expect("rules");
                                let mut hit = None;
                                for r in rules.iter_mut() {
                                    if r.method == method && path_q.contains(r.path_contains) {
                                        r.seen += 1;
                                        if r.seen >= r.nth && r.times > 0 {
                                            r.times -= 1;
                                            hit = Some((r.status, r.retry_after));
                                            break;
                                        }
                                    }
                                }
                                hit
                            };
                            if let Some((status, _)) = injected {
                                inj.lock().expect("log").push((format!("{method} {path_q}"), status));
                            }
                            if let Some((RESET, _)) = injected {
                                return Err(std::io::Error::other("injected reset"));
                            }
                            if let Some((status, retry_after)) = injected.filter(|(s, _)| *s >= 100) {
                                let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from_static(
                                    b"{\"detail\":\"injected\"}",
                                )));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                                if let Some(s) = retry_after {
                                    resp.headers_mut()
                                        .insert("retry-after", s.to_string().parse().expect("hv"));
                                }
                                return Ok::<_, std::io::Error>(resp);
                            }
                            let headers = req.headers().clone();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let fwd =
                                super::relay::forward(&client, &method, format!("{target}{path_q}"), &headers, body);
                            let resp = match fwd.send().await {
                                Ok(r) => r,
                                Err(_) => {
                                    let mut resp = hyper::Response::new(Full::new(bytes::Bytes::new()));
                                    *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                                    return Ok(resp);
                                }
                            };
                            let status = resp.status();
                            let rh = resp.headers().clone();
                            let bytes = resp.bytes().await.unwrap_or_default();
                            match injected {
                                Some((FORWARD_THEN_RESET, _)) => {
                                    return Err(std::io::Error::other("injected reset after forwarding"))
                                }
                                Some((FORWARD_THEN_HANG, _)) => std::future::pending::<()>().await,
                                _ => {}
                            }
                            Ok(super::relay::answer(status, &rh, bytes))
                        }
                    });
                    super::relay::serve(stream, svc).await;
                });
            }
        });
        FaultProxy {
            port,
            injected,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Python receiver that verifies signatures with `standardwebhooks`.
pub struct WebhookPeer {
    child: tokio::process::Child,
    pub port: u16,
    pub log: PathBuf,
}

impl WebhookPeer {
    pub async fn start(secret: &str, dir: &Path) -> WebhookPeer {
        let port_file = dir.join("webhook.port");
        let log = dir.join("webhook.log");
        let child = tokio::process::Command::new("python3")
            .arg(manifest("tests/peers/webhook_receiver.py"))
            .arg(secret)
            .arg(&port_file)
            .arg(&log)
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the webhook receiver");
        for _ in 0..100 {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return WebhookPeer { child, port, log };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the webhook receiver did not start (is `standardwebhooks` installed? ./scripts/test installs it)");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Every request received: (verified, body as JSON).
    pub fn received(&self) -> Vec<(bool, Value)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                (
                    v["ok"].as_bool().unwrap_or(false),
                    serde_json::from_str(v["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
