//! `/healthz`, `/readyz` and `/metrics` (hyper 1). Nothing else answers, no
//! personal data is ever served, and a client cannot exhaust the process:
//! small header buffers, a header-read timeout, and a cap on connections.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

/// At most this many connections are served at once; more wait in the
/// kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 256;

/// What `/readyz` reports on.
pub struct Health {
    pub store_open: AtomicBool,
    /// Unix seconds of the last successful run; 0 = never.
    pub last_success: AtomicI64,
    /// Unix seconds the daemon started (a fresh install is ready until the
    /// staleness has passed once).
    pub started: AtomicI64,
    pub max_staleness_secs: AtomicI64,
}

impl Health {
    pub fn new(max_staleness_secs: i64) -> Arc<Health> {
        Arc::new(Health {
            store_open: AtomicBool::new(false),
            last_success: AtomicI64::new(0),
            started: AtomicI64::new(jiff::Timestamp::now().as_second()),
            max_staleness_secs: AtomicI64::new(max_staleness_secs),
        })
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self, now: i64) -> Option<String> {
        if !self.store_open.load(Ordering::SeqCst) {
            return Some("the state file is not open".into());
        }
        let max = self.max_staleness_secs.load(Ordering::SeqCst);
        let last = self.last_success.load(Ordering::SeqCst);
        let since = if last > 0 {
            last
        } else {
            self.started.load(Ordering::SeqCst)
        };
        if now - since > max {
            return Some(if last > 0 {
                format!(
                    "the last successful sync was {} hours ago (http.max_staleness_hours = {})",
                    (now - last) / 3600,
                    max / 3600
                )
            } else {
                format!("no successful sync in the {} hours since start", (now - since) / 3600)
            });
        }
        None
    }
}

type Body = Full<Bytes>;

fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn route(req: &Request<hyper::body::Incoming>, health: &Health) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => response(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match health.not_ready(jiff::Timestamp::now().as_second()) {
            None => response(StatusCode::OK, "application/json", json!({"ready": true}).to_string()),
            Some(reason) => response(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                json!({"ready": false, "reason": reason}).to_string(),
            ),
        },
        "/metrics" => response(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::metrics().encode(),
        ),
        _ => response(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serves until `shutdown` completes (mini-redis style: the caller binds).
pub async fn serve(listener: TcpListener, health: Arc<Health>, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let health = health.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let r = route(&req, &health);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A client that keeps a connection open for no reason is let go.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}
