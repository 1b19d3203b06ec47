//! The AFAS Profit REST client: authentication, GetConnector paging,
//! metainfo, error mapping and retries.
//!
//! Paging is where a sync tool silently loses employees, so the rules are
//! strict: `take` is always sent (AFAS defaults to 100 and the caller would
//! never know), rows are always ordered on the configured unique key, and by
//! default pages are fetched by keyset (`key > last key`), which neither skips
//! nor repeats rows when AFAS inserts or deletes rows during the run. Every
//! loop has a hard stop: the key must advance and the page count is bounded.

#[path = "paging.rs"]
mod paging;
pub use paging::keyset_filter;
#[path = "metainfo.rs"]
mod metainfo;
pub use metainfo::*;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::de::DeserializeSeed;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

use super::error::{classify_500, AfasError};
use super::rows::{Entry, EntrySeed, Fields, Row};
use super::token::AppToken;
use crate::config::{AfasAuth, AfasConfig, PagingMode};

/// AFAS documents a query-string limit of about 2,049 characters; past it
/// the request fails with an opaque 404, so refuse it locally instead.
pub const MAX_QUERY_LEN: usize = 2049;

/// A hard ceiling on pages per connector read. At the maximum page size this
/// is far beyond any real company; it only exists so no bug can loop forever.
const MAX_PAGES: u64 = 1_000_000;

/// A page's rows and the reasons for entries that were not rows.
type PageRows = (Vec<Row>, Vec<String>);

/// A page's entries as AFAS sent them.
type RawRows = Vec<Box<serde_json::value::RawValue>>;

/// Parses one entry of a page, keeping the wanted fields. An entry the raw
/// pass took but that is not readable after all (nested past serde_json's
/// limit of 128 levels, which the raw pass does not count) makes the whole
/// answer unreadable, as it was when pages were parsed in one go: such a
/// body is garbage, not one bad row.
fn parse_entry(entry: &serde_json::value::RawValue, fields: &Fields, i: usize, path: &str) -> Result<Entry, AfasError> {
    let mut de = serde_json::Deserializer::from_str(entry.get());
    EntrySeed(fields).deserialize(&mut de).map_err(|e| AfasError::Decode {
        path: path.to_string(),
        reason: format!("entry {i} of the page: {e}"),
    })
}

/// Parses a page's entries; those that are not objects become reasons.
fn parse_rows(page: RawPage, fields: &Fields) -> Result<PageRows, AfasError> {
    let mut rows = Vec::with_capacity(page.rows.len());
    let mut bad = Vec::new();
    for (i, entry) in page.rows.iter().enumerate() {
        match parse_entry(entry, fields, i, &page.path)? {
            Entry::Row(row) => rows.push(row),
            Entry::Other(what) => bad.push(format!("entry {i} of the page is not an object but {what}")),
        }
    }
    Ok((rows, bad))
}

/// A page's entries as AFAS sent them, and the path they came from.
struct RawPage {
    path: String,
    rows: RawRows,
}

/// A page request in flight; dropping it cancels the request.
struct PageTask(tokio::task::JoinHandle<Result<RawPage, AfasError>>);

impl PageTask {
    async fn rows(&mut self) -> Result<RawPage, AfasError> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(e) => Err(AfasError::Setup(format!("page task failed: {e}"))),
        }
    }
}

impl Drop for PageTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Credentials as the client uses them.
#[derive(Clone)]
pub enum Credentials {
    Token(AppToken),
    OAuth(crate::oauth::Client),
}

#[derive(Clone)]
pub struct ClientOptions {
    pub base_url: url::Url,
    pub credentials: Credentials,
    pub integration_id: Option<String>,
    pub concurrency: u32,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub max_retry_wait: Duration,
    /// First backoff delay; tests shorten it.
    pub min_backoff: Duration,
}

impl ClientOptions {
    /// Builds client options from the config, validating the token first so
    /// that a malformed token never reaches the network.
    pub fn from_config(cfg: &AfasConfig) -> Result<Self, AfasError> {
        let credentials = match &cfg.auth {
            AfasAuth::Token(raw) => Credentials::Token(AppToken::parse(raw.expose())?),
            AfasAuth::OAuth { client, .. } => Credentials::OAuth(client.clone()),
        };
        Ok(ClientOptions {
            base_url: cfg.base_url.clone(),
            credentials,
            integration_id: cfg.integration_id.clone(),
            concurrency: cfg.concurrency,
            request_timeout: cfg.request_timeout,
            connect_timeout: cfg.connect_timeout,
            max_retries: cfg.max_retries,
            max_retry_wait: cfg.max_retry_wait,
            min_backoff: Duration::from_millis(500),
        })
    }
}

/// How to read one GetConnector.
#[derive(Debug, Clone)]
pub struct ReadSpec {
    pub connector: String,
    /// Unique key fields in order; `-` prefix = descending.
    pub order: Vec<String>,
    pub paging: PagingMode,
    pub take: u32,
    /// The fields to keep of each row; the key fields must be among them.
    pub fields: Fields,
    /// Only the rows whose field (the mapped employee key) equals the
    /// value: one employee's rows, for `sync --employee`.
    pub only: Option<(String, String)>,
}

/// One page of rows, in order. Entries that were not JSON objects are kept
/// as reasons so the caller can report them without losing the page.
#[derive(Debug)]
pub struct Page {
    pub connector: String,
    pub number: u64,
    pub rows: Vec<Row>,
    pub bad_rows: Vec<String>,
}

enum Auth {
    Token(HeaderValue),
    OAuth(crate::oauth::TokenSource),
}

struct Inner {
    http: reqwest::Client,
    base: url::Url,
    auth: Auth,
    integration_id: Option<String>,
    permits: Semaphore,
    concurrency: u32,
    max_retries: u32,
    max_retry_wait: Duration,
    min_backoff: Duration,
}

/// A cheap-to-clone AFAS client.
#[derive(Clone)]
pub struct AfasClient {
    inner: Arc<Inner>,
}

/// Installs ring as rustls's process-wide crypto provider (once).
pub use crate::net::install_crypto_provider;

fn sensitive(value: &str) -> Result<HeaderValue, AfasError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| AfasError::Setup("credential contains characters not allowed in a header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

impl AfasClient {
    pub fn new(opts: ClientOptions) -> Result<Self, AfasError> {
        install_crypto_provider();
        let http = crate::net::client(&crate::net::ClientSpec {
            timeout: Some(opts.request_timeout),
            connect_timeout: Some(opts.connect_timeout),
            // AFAS asks clients to keep connections open.
            pool_idle: Some(Duration::from_secs(90)),
            https_only: opts.base_url.scheme() == "https",
            ca_file: None,
        })
        .map_err(AfasError::Setup)?;
        let auth = match opts.credentials {
            Credentials::Token(t) => Auth::Token(sensitive(&t.header_value())?),
            Credentials::OAuth(client) => {
                let mut token_url = opts.base_url.clone();
                token_url
                    .path_segments_mut()
                    .map_err(|_| AfasError::Setup("afas.base_url cannot take a path".into()))?
                    .pop_if_empty()
                    .extend(["oauth", "token"]);
                Auth::OAuth(crate::oauth::TokenSource::new(token_url, client))
            }
        };
        let concurrency = opts.concurrency.clamp(1, 8);
        Ok(AfasClient {
            inner: Arc::new(Inner {
                http,
                base: opts.base_url,
                auth,
                integration_id: opts.integration_id,
                permits: Semaphore::new(concurrency as usize),
                concurrency,
                max_retries: opts.max_retries,
                max_retry_wait: opts.max_retry_wait,
                min_backoff: opts.min_backoff,
            }),
        })
    }

    pub fn base_url(&self) -> &url::Url {
        &self.inner.base
    }

    fn url(&self, segments: &[&str], query: &[(String, String)]) -> Result<url::Url, AfasError> {
        let mut url = self.inner.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| AfasError::Setup("afas.base_url cannot take a path".into()))?;
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter());
        }
        if url.query().map_or(0, str::len) > MAX_QUERY_LEN {
            return Err(AfasError::Paging {
                connector: segments.last().copied().unwrap_or_default().to_string(),
                reason: format!(
                    "the query string would exceed AFAS's limit of {MAX_QUERY_LEN} characters; shorten the key values or use paging = \"skip\""
                ),
            });
        }
        Ok(url)
    }

    async fn auth_header(&self, force_refresh: bool) -> Result<HeaderValue, AfasError> {
        match &self.inner.auth {
            Auth::Token(h) => Ok(h.clone()),
            Auth::OAuth(source) => {
                let bearer = source
                    .bearer(&self.inner.http, force_refresh)
                    .await
                    .map_err(|f| AfasError::oauth(f, &source.client().auth))?;
                sensitive(&bearer)
            }
        }
    }

    /// One GET, without retries. A 401 under OAuth fetches a new token once.
    async fn get_once(&self, url: &url::Url, connector: &str) -> Result<bytes::Bytes, AfasError> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| AfasError::Setup("client shut down".into()))?;
        // Metrics label: the connector, else the endpoint (never data).
        let label = if connector.is_empty() {
            url.path_segments()
                .and_then(|mut p| p.nth(1))
                .unwrap_or("other")
                .to_string()
        } else {
            connector.to_string()
        };
        let oauth = matches!(self.inner.auth, Auth::OAuth(_));
        let resp = crate::net::send_refreshing(oauth, |force| self.send_once(url, &label, force)).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| map_reqwest(e, url))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(map_status(status, &headers, &body, url, connector))
    }

    /// Sends one GET and counts it in `/metrics`.
    async fn send_once(
        &self,
        url: &url::Url,
        label: &str,
        force_refresh: bool,
    ) -> Result<reqwest::Response, AfasError> {
        let auth = self.auth_header(force_refresh).await?;
        let mut req = self.inner.http.get(url.clone()).header(AUTHORIZATION, auth);
        if let Some(id) = &self.inner.integration_id {
            req = req.header("IntegrationId", id);
        }
        let started = Instant::now();
        let m = crate::metrics::metrics();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                m.afas_requests
                    .get_or_create(&crate::metrics::RequestLabels {
                        connector: label.to_string(),
                        status: "error".into(),
                    })
                    .inc();
                return Err(map_reqwest(e, url));
            }
        };
        let status = resp.status().as_u16();
        m.afas_requests
            .get_or_create(&crate::metrics::RequestLabels {
                connector: label.to_string(),
                status: status.to_string(),
            })
            .inc();
        m.afas_latency
            .get_or_create(&crate::metrics::ConnectorLabels {
                connector: label.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            path = url.path(),
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "AFAS request"
        );
        Ok(resp)
    }

    /// GET and decode, with retries of transient failures (exponential
    /// backoff, jitter, honouring `retry_after` up to `max_retry_wait`). A
    /// truncated body is retried like a dropped connection.
    async fn get<T: serde::de::DeserializeOwned>(&self, url: url::Url, connector: &str) -> Result<T, AfasError> {
        let (max_wait, max_retries) = (self.inner.max_retry_wait, self.inner.max_retries);
        let mut attempt = 0;
        loop {
            let result = match self.get_once(&url, connector).await {
                Ok(body) => decode::<T>(&body, &url),
                Err(e) => Err(e),
            };
            let e = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retry = attempt < max_retries && e.is_transient() && e.retry_after().is_none_or(|d| d <= max_wait);
            if !retry {
                return Err(e);
            }
            // The one backoff policy (random jitter), or longer when AFAS
            // asked for a wait.
            let wait = crate::net::backoff(attempt, self.inner.min_backoff, Duration::from_secs(60));
            let wait = e.retry_after().map_or(wait, |asked| asked.max(wait));
            tracing::warn!(
                path = url.path(),
                retry_in_ms = wait.as_millis() as u64,
                "AFAS request failed, retrying: {e}"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    pub async fn profit_version(&self) -> Result<String, AfasError> {
        #[derive(Deserialize)]
        struct V {
            version: String,
        }
        let url = self.url(&["ProfitVersion"], &[])?;
        let v: V = self.get(url, "").await?;
        Ok(v.version)
    }

    pub async fn metainfo(&self) -> Result<MetaInfo, AfasError> {
        let url = self.url(&["metainfo"], &[])?;
        self.get(url, "").await
    }

    pub async fn connector_meta(&self, connector: &str) -> Result<ConnectorMeta, AfasError> {
        let url = self.url(&["metainfo", "get", connector], &[])?;
        self.get(url, connector).await
    }

    /// One page, its entries checked for JSON syntax only: the next
    /// page's filter needs the last entry parsed, not all of them (see
    /// `read_keyset`).
    async fn fetch_raw(&self, connector: &str, query: &[(String, String)]) -> Result<RawPage, AfasError> {
        #[derive(Deserialize)]
        struct PageBody {
            rows: RawRows,
        }
        let url = self.url(&["connectors", connector], query)?;
        let path = url.path().to_string();
        let page: PageBody = self.get(url, connector).await?;
        Ok(RawPage { path, rows: page.rows })
    }
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8], url: &url::Url) -> Result<T, AfasError> {
    serde_json::from_slice(body).map_err(|e| AfasError::Decode {
        path: url.path().to_string(),
        reason: e.to_string(),
    })
}

fn map_reqwest(e: reqwest::Error, url: &url::Url) -> AfasError {
    let reason = crate::net::error_chain(&e);
    if e.is_timeout() {
        AfasError::Timeout {
            path: url.path().to_string(),
            reason,
        }
    } else if e.is_body() || e.is_decode() {
        AfasError::Decode {
            path: url.path().to_string(),
            reason,
        }
    } else {
        AfasError::Connect {
            host: url.host_str().unwrap_or("?").to_string(),
            reason,
        }
    }
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    s
}

fn map_status(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    url: &url::Url,
    connector: &str,
) -> AfasError {
    let path = url.path().to_string();
    match status {
        401 => AfasError::Unauthorized { path },
        403 => AfasError::Forbidden { path },
        404 => AfasError::NotFound {
            path,
            connector: connector.to_string(),
        },
        500 => {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Functional {
                external_message: String,
                #[serde(default)]
                profit_log_reference: Option<String>,
            }
            match serde_json::from_slice::<Functional>(body) {
                Ok(f) => {
                    let (hint, temporary) = classify_500(&f.external_message);
                    AfasError::Functional {
                        path,
                        message: f.external_message.chars().take(500).collect(),
                        log_ref: f.profit_log_reference,
                        hint,
                        temporary,
                    }
                }
                Err(_) => AfasError::Status {
                    status,
                    path,
                    body: snippet(body),
                },
            }
        }
        503 => {
            let from_body = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("retry_after").and_then(Value::as_u64));
            let from_header = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok());
            AfasError::Maintenance {
                retry_after: from_body.or(from_header).map(Duration::from_secs),
            }
        }
        _ => AfasError::Status {
            status,
            path,
            body: snippet(body),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_filter_expands_composite_keys() {
        let q = keyset_filter(&["EmployeeId".into(), "-Seq".into()], &["1001".into(), "3".into()]);
        assert_eq!(q[0].1, "EmployeeId;EmployeeId,Seq");
        assert_eq!(q[1].1, "1001;1001,3");
        assert_eq!(q[2].1, "4;1,3");
    }
}
