//! A proxy in front of scim2-server that behaves as other SCIM servers do
//! (each quirk seen in independent implementations; see REFERENCE.md,
//! "SCIM servers as they are"). One quirk per proxy, so a test row names
//! exactly what differs from a plain server.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use super::peers::http;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quirk {
    /// `attributes=` naming `meta.*` is refused with 400 `invalidValue`
    /// once a user matches.
    MetaAttributes400,
    /// `attributes=` is ignored: whole users come back.
    AttributesIgnored,
    /// A filter on `externalId` is silently dropped (every user matches).
    ExternalIdFilterDropped,
    /// `count` is capped at 100.
    CountCapped,
    /// A `startIndex` past the end is answered with the first page again,
    /// and `totalResults` is left out.
    PastEndFirstPage,
    /// PATCH of `emails` or of an extension's attribute answers 501.
    Patch501,
    /// PATCH replacing the whole complex `name` answers 500.
    ComplexReplace500,
    /// PATCH that violates uniqueness answers 500 instead of 409.
    Uniqueness500,
}

pub struct QuirkProxy {
    pub port: u16,
    /// Requests the quirk changed or answered ("METHOD /path?query").
    pub hit: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for QuirkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(status: u16, body: Value) -> hyper::Response<Full<bytes::Bytes>> {
    let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", "application/scim+json".parse().expect("hv"));
    r
}

fn error(status: u16, scim_type: Option<&str>, detail: &str) -> hyper::Response<Full<bytes::Bytes>> {
    let mut b = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": status.to_string(), "detail": detail});
    if let Some(t) = scim_type {
        b["scimType"] = json!(t);
    }
    respond(status, b)
}

/// The query with `name` changed by `f` (removed when it returns `None`).
fn rewrite(path_q: &str, name: &str, f: impl Fn(&str) -> Option<String>) -> String {
    let (path, q) = path_q.split_once('?').unwrap_or((path_q, ""));
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        if k == name {
            if let Some(v) = f(&v) {
                out.append_pair(&k, &v);
            }
        } else {
            out.append_pair(&k, &v);
        }
    }
    let q = out.finish();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    }
}

fn param(path_q: &str, name: &str) -> Option<String> {
    let q = path_q.split_once('?')?.1;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn patch_paths(body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["Operations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|op| op["path"].as_str().unwrap_or("").to_string())
        .collect()
}

impl QuirkProxy {
    pub async fn start(target: String, quirk: Quirk) -> QuirkProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hit = Arc::new(Mutex::new(Vec::new()));
        let client = http();
        let hits = hit.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (client, target, hits) = (client.clone(), target.clone(), hits.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (client, target, hits) = (client.clone(), target.clone(), hits.clone());
                        async move {
                            let method = req.method().to_string();
                            let original = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                            let headers = req.headers().clone();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let note =
                                |what: &str| hits.lock().expect("hits").push(format!("{what} {method} {original}"));
                            let users_get = method == "GET" && original.starts_with("/Users?");
                            let mut path_q = original.clone();
                            match quirk {
                                Quirk::AttributesIgnored if users_get && param(&path_q, "attributes").is_some() => {
                                    note("ignored attributes");
                                    path_q = rewrite(&path_q, "attributes", |_| None);
                                }
                                Quirk::ExternalIdFilterDropped
                                    if users_get
                                        && param(&path_q, "filter").is_some_and(|f| f.contains("externalId")) =>
                                {
                                    note("dropped filter");
                                    path_q = rewrite(&path_q, "filter", |_| None);
                                }
                                Quirk::CountCapped if users_get => {
                                    if param(&path_q, "count")
                                        .and_then(|c| c.parse::<u64>().ok())
                                        .is_some_and(|c| c > 100)
                                    {
                                        note("capped count");
                                    }
                                    path_q = rewrite(&path_q, "count", |c| {
                                        Some(c.parse::<u64>().unwrap_or(100).min(100).to_string())
                                    });
                                }
                                Quirk::Patch501
                                    if method == "PATCH"
                                        && patch_paths(&body)
                                            .iter()
                                            .any(|p| p.starts_with("emails") || p.starts_with("urn:")) =>
                                {
                                    note("501");
                                    return Ok::<_, std::io::Error>(error(
                                        501,
                                        None,
                                        "PATCH of this path is not implemented",
                                    ));
                                }
                                Quirk::ComplexReplace500
                                    if method == "PATCH" && patch_paths(&body).iter().any(|p| p == "name") =>
                                {
                                    note("500");
                                    return Ok(error(500, None, "Internal Server Error"));
                                }
                                _ => {}
                            }
                            let fwd = super::relay::forward(
                                &client,
                                &method,
                                format!("{target}{path_q}"),
                                &headers,
                                body.clone(),
                            );
                            let Ok(resp) = fwd.send().await else {
                                return Ok(error(502, None, "bad gateway"));
                            };
                            let status = resp.status();
                            let rh = resp.headers().clone();
                            let bytes = resp.bytes().await.unwrap_or_default();
                            match quirk {
                                Quirk::MetaAttributes400
                                    if users_get
                                        && param(&path_q, "attributes").is_some_and(|a| a.contains("meta.")) =>
                                {
                                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                                    if v["totalResults"].as_u64().unwrap_or(0) > 0 {
                                        note("400");
                                        return Ok(error(
                                            400,
                                            Some("invalidValue"),
                                            "attributes: meta.version is not an attribute",
                                        ));
                                    }
                                }
                                Quirk::PastEndFirstPage if users_get => {
                                    let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                                    let empty = v["Resources"].as_array().is_none_or(Vec::is_empty);
                                    let start = param(&path_q, "startIndex")
                                        .and_then(|s| s.parse::<u64>().ok())
                                        .unwrap_or(1);
                                    if empty && start > 1 {
                                        note("first page again");
                                        let again = rewrite(&path_q, "startIndex", |_| Some("1".into()));
                                        let r = super::relay::forward(
                                            &client,
                                            "GET",
                                            format!("{target}{again}"),
                                            &headers,
                                            bytes::Bytes::new(),
                                        );
                                        let Ok(r) = r.send().await else {
                                            return Ok(error(502, None, "bad gateway"));
                                        };
                                        v = r.json().await.unwrap_or(Value::Null);
                                    }
                                    if let Some(m) = v.as_object_mut() {
                                        m.remove("totalResults");
                                    }
                                    return Ok(respond(status.as_u16(), v));
                                }
                                Quirk::Uniqueness500 if method == "PATCH" && status.as_u16() == 409 => {
                                    note("500 for 409");
                                    return Ok(error(500, None, "Internal Server Error"));
                                }
                                _ => {}
                            }
                            Ok(super::relay::answer(status, &rh, bytes))
                        }
                    });
                    super::relay::serve(stream, svc).await;
                });
            }
        });
        QuirkProxy { port, hit, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn hits(&self) -> Vec<String> {
        self.hit.lock().expect("hits").clone()
    }
}
