//! The AFAS Profit REST client: authentication, GetConnector paging,
//! metainfo, error mapping and retries.
//!
//! Paging is where a sync tool silently loses employees, so the rules are
//! strict: `take` is always sent (AFAS defaults to 100 and the caller would
//! never know), rows are always ordered on the configured unique key, and by
//! default pages are fetched by keyset (`key > last key`), which neither skips
//! nor repeats rows when AFAS inserts or deletes rows during the run. Every
//! loop has a hard stop: the key must advance and the page count is bounded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::de::DeserializeSeed;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

use super::error::{classify_500, AfasError};
use super::rows::{Entry, EntrySeed, Fields, Row};
use super::token::AppToken;
use crate::config::{AfasAuth, AfasConfig, PagingMode, Secret};

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
    OAuth { client_id: String, secret: Secret },
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
            AfasAuth::OAuth {
                client_id,
                client_secret,
            } => Credentials::OAuth {
                client_id: client_id.clone(),
                secret: client_secret.clone(),
            },
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

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldMeta {
    pub id: String,
    #[serde(default)]
    pub field_id: Option<String>,
    #[serde(default)]
    pub data_type: String,
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConnectorMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub fields: Vec<FieldMeta>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConnectorListEntry {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaInfoInfo {
    #[serde(default)]
    pub envid: Option<String>,
    #[serde(default)]
    pub app_name: Option<String>,
    #[serde(default)]
    pub token_expiry: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaInfo {
    #[serde(default)]
    pub get_connectors: Vec<ConnectorListEntry>,
    #[serde(default)]
    pub info: MetaInfoInfo,
}

/// What a mapped field must be able to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Date,
    Boolean,
    Decimal,
}

impl FieldKind {
    fn accepts(self, data_type: &str) -> bool {
        match self {
            FieldKind::Text => matches!(data_type, "string" | "int"),
            FieldKind::Date => data_type == "date",
            FieldKind::Boolean => matches!(data_type, "boolean" | "int"),
            FieldKind::Decimal => matches!(data_type, "decimal" | "int"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            FieldKind::Text => "string",
            FieldKind::Date => "date",
            FieldKind::Boolean => "boolean (or int 0/1)",
            FieldKind::Decimal => "decimal",
        }
    }
}

/// A mapped field that the connector lacks or types differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub connector: String,
    pub field: String,
    pub config_key: String,
    pub problem: String,
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GetConnector `{}`: field `{}` (config key {}) {}",
            self.connector, self.field, self.config_key, self.problem
        )
    }
}

/// Compares the mapping against a connector's metainfo.
pub fn check_fields(
    connector: &str,
    meta: &ConnectorMeta,
    wanted: &[(String, FieldKind, String)],
) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    for (field, kind, config_key) in wanted {
        let problem = match meta.fields.iter().find(|f| &f.id == field) {
            None => Some("does not exist: add it to the GetConnector in AFAS or fix the mapping".to_string()),
            Some(f) if !kind.accepts(&f.data_type) => {
                Some(format!("has type `{}`, but {} is needed", f.data_type, kind.name()))
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            problems.push(FieldProblem {
                connector: connector.to_string(),
                field: field.clone(),
                config_key: config_key.clone(),
                problem,
            });
        }
    }
    problems
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
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn sensitive(value: &str) -> Result<HeaderValue, AfasError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| AfasError::Setup("credential contains characters not allowed in a header".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

impl AfasClient {
    pub fn new(opts: ClientOptions) -> Result<Self, AfasError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .user_agent(concat!("afas-sync/", env!("CARGO_PKG_VERSION")))
            // AFAS asks clients to keep connections open.
            .pool_idle_timeout(Duration::from_secs(90))
            .https_only(opts.base_url.scheme() == "https")
            .build()
            .map_err(|e| AfasError::Setup(e.to_string()))?;
        let auth = match opts.credentials {
            Credentials::Token(t) => Auth::Token(sensitive(&t.header_value())?),
            Credentials::OAuth { client_id, secret } => {
                let mut token_url = opts.base_url.clone();
                token_url
                    .path_segments_mut()
                    .map_err(|_| AfasError::Setup("afas.base_url cannot take a path".into()))?
                    .pop_if_empty()
                    .extend(["oauth", "token"]);
                Auth::OAuth(crate::oauth::TokenSource::new(token_url, client_id, secret))
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
                    .map_err(|f| AfasError::OAuth {
                        error: f.error,
                        description: f.description,
                    })?;
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
        let mut refreshed = false;
        loop {
            let auth = self.auth_header(refreshed).await?;
            let mut req = self.inner.http.get(url.clone()).header(AUTHORIZATION, auth);
            if let Some(id) = &self.inner.integration_id {
                req = req.header("IntegrationId", id);
            }
            let started = Instant::now();
            // Metrics label: the connector, else the endpoint (never data).
            let label = if connector.is_empty() {
                url.path_segments()
                    .and_then(|mut p| p.nth(1))
                    .unwrap_or("other")
                    .to_string()
            } else {
                connector.to_string()
            };
            let m = crate::metrics::metrics();
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    m.afas_requests
                        .get_or_create(&crate::metrics::RequestLabels {
                            connector: label,
                            status: "error".into(),
                        })
                        .inc();
                    return Err(map_reqwest(e, url));
                }
            };
            let status = resp.status().as_u16();
            m.afas_requests
                .get_or_create(&crate::metrics::RequestLabels {
                    connector: label.clone(),
                    status: status.to_string(),
                })
                .inc();
            m.afas_latency
                .get_or_create(&crate::metrics::ConnectorLabels { connector: label })
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                path = url.path(),
                status,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "AFAS request"
            );
            if status == 401 && !refreshed && matches!(self.inner.auth, Auth::OAuth(_)) {
                refreshed = true;
                continue;
            }
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(|e| map_reqwest(e, url))?;
            if (200..300).contains(&status) {
                return Ok(body);
            }
            return Err(map_status(status, &headers, &body, url, connector));
        }
    }

    /// GET and decode, with retries of transient failures (exponential
    /// backoff, jitter, honouring `retry_after` up to `max_retry_wait`). A
    /// truncated body is retried like a dropped connection.
    async fn get<T: serde::de::DeserializeOwned>(&self, url: url::Url, connector: &str) -> Result<T, AfasError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.inner.min_backoff)
            .with_max_delay(Duration::from_secs(60))
            .with_max_times(self.inner.max_retries as usize)
            .with_jitter();
        let max_wait = self.inner.max_retry_wait;
        (|| async {
            let body = self.get_once(&url, connector).await?;
            decode::<T>(&body, &url)
        })
        .retry(backoff)
        .when(|e: &AfasError| e.is_transient() && e.retry_after().is_none_or(|d| d <= max_wait))
        .adjust(|e: &AfasError, dur| dur.map(|d| e.retry_after().map_or(d, |ra| ra.max(d))))
        .notify(|e: &AfasError, dur| {
            tracing::warn!(
                path = url.path(),
                retry_in_ms = dur.as_millis() as u64,
                "AFAS request failed, retrying: {e}"
            )
        })
        .await
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

    /// Requests a page on a task of its own, so it travels while the
    /// previous one is read.
    fn spawn_page(&self, connector: &str, query: Vec<(String, String)>) -> PageTask {
        let client = self.clone();
        let connector = connector.to_string();
        PageTask(tokio::spawn(async move { client.fetch_raw(&connector, &query).await }))
    }

    /// Streams a connector's rows, page by page, in key order. The channel
    /// holds at most two pages, so memory stays bounded whatever the size of
    /// the company. Dropping the receiver stops the read.
    pub fn read(&self, spec: ReadSpec) -> mpsc::Receiver<Result<Page, AfasError>> {
        let (tx, rx) = mpsc::channel(2);
        let client = self.clone();
        tokio::spawn(async move {
            let result = match spec.paging {
                PagingMode::Keyset => client.read_keyset(&spec, &tx).await,
                PagingMode::Skip => client.read_skip(&spec, &tx).await,
            };
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    fn base_query(spec: &ReadSpec) -> Vec<(String, String)> {
        vec![
            ("orderbyfieldids".into(), spec.order.join(",")),
            ("take".into(), spec.take.to_string()),
        ]
    }

    /// Keyset paging with an inclusive bound: each page asks for `key >=
    /// last key` and drops the rows with the last key that were already
    /// handed on. With a unique key this is plain `key > last`; with a
    /// duplicated key the duplicates are still delivered (the sync engine
    /// then rejects them as a pair) instead of being skipped silently, which
    /// a strict `>` would do when they straddle a page boundary.
    async fn read_keyset(&self, spec: &ReadSpec, tx: &mpsc::Sender<Result<Page, AfasError>>) -> Result<(), AfasError> {
        let paging_err = |reason: String| AfasError::Paging {
            connector: spec.connector.clone(),
            reason,
        };
        let mut last: Option<Vec<String>> = None;
        // Rows with key == `last` already handed on.
        let mut seen_with_last = 0usize;
        let keyset_query = |last: Option<&[String]>| {
            let mut query = Self::base_query(spec);
            query.push(("skip".into(), "0".into()));
            if let Some(last) = last {
                query.extend(keyset_filter(&spec.order, last));
            }
            query
        };
        let mut pending = Some(self.spawn_page(&spec.connector, keyset_query(None)));
        for number in 0..MAX_PAGES {
            // Only a full page asks for another, and a full page without a
            // next request has returned its error below; never end quietly.
            let Some(mut task) = pending.take() else {
                return Err(paging_err("a full page did not lead to a next page request".into()));
            };
            let raw = task.rows().await?;
            // Counted before parsing: an entry that is not a row still
            // fills the page, and a full page means there may be more.
            let full = raw.rows.len() >= spec.take as usize;
            // Why ask for the next page before reading this one: with
            // keyset paging each request waits for the previous answer,
            // so whatever happens between an answer and the next request
            // adds up over every page of the connector (at 100k employees
            // 130 pages in a row: a third of a second of parsing). Only the
            // last row's key is needed for the next filter; a row without
            // one stops the read below, with the reason.
            if full && number + 1 < MAX_PAGES {
                let next = raw.rows.iter().enumerate().rev().find_map(|(i, entry)| {
                    match parse_entry(entry, &spec.fields, i, &raw.path) {
                        Ok(Entry::Row(row)) => Some(key_values(&row, &spec.order).ok()),
                        _ => None,
                    }
                });
                if let Some(Some(key)) = next {
                    pending = Some(self.spawn_page(&spec.connector, keyset_query(Some(&key))));
                    // A spawned task waits in this worker's queue until
                    // this one yields, and parsing the page below does not:
                    // the request left ~1.3 ms after it was asked for (1M
                    // employees on 2 cores: 1.7 s over 1,285 pages of the
                    // contracts connector). Yielding sends it first (0.02 ms).
                    tokio::task::yield_now().await;
                }
            }
            let (fetched, bad_rows) = parse_rows(raw, &spec.fields)?;
            let mut rows = Vec::with_capacity(fetched.len());
            let mut to_skip = seen_with_last;
            let mut last_row_keyless = false;
            for row in fetched {
                // A row without a usable key is handed on (the engine rejects
                // it); only the last row of a full page must have one, to
                // build the next page's filter.
                let Ok(key) = key_values(&row, &spec.order) else {
                    last_row_keyless = true;
                    rows.push(row);
                    continue;
                };
                last_row_keyless = false;
                if last.as_ref() == Some(&key) {
                    if to_skip > 0 {
                        to_skip -= 1;
                        continue;
                    }
                    seen_with_last += 1;
                } else {
                    last = Some(key);
                    seen_with_last = 1;
                }
                rows.push(row);
            }
            if full && last_row_keyless {
                let example = rows
                    .last()
                    .map(|r| super::rows::describe_key(r, &spec.order))
                    .unwrap_or_default();
                return Err(paging_err(format!(
                    "the last row of a page ({example}) has an empty key or one containing `,`/`;`, so the next page cannot be asked for; fix the key in AFAS or set afas.paging = \"skip\""
                )));
            }
            if full && rows.is_empty() {
                // A whole page of one key value that was already read: the
                // server cannot get past it (or ignores the filter).
                return Err(paging_err(format!(
                    "more than {} rows share the key ({}) or AFAS ignored the key filter; the key must be unique",
                    spec.take,
                    spec.order.join(",")
                )));
            }
            let page = Page {
                connector: spec.connector.clone(),
                number,
                rows,
                bad_rows,
            };
            if tx.send(Ok(page)).await.is_err() {
                return Ok(());
            }
            if !full {
                return Ok(());
            }
        }
        Err(paging_err(format!("more than {MAX_PAGES} pages; stopped")))
    }

    async fn read_skip(&self, spec: &ReadSpec, tx: &mpsc::Sender<Result<Page, AfasError>>) -> Result<(), AfasError> {
        // Pages are requested ahead, up to the concurrency, and handed on in
        // order; the first short page ends the read.
        let mut inflight: VecDeque<PageTask> = VecDeque::new();
        let mut next: u64 = 0;
        let mut number: u64 = 0;
        let window = self.inner.concurrency as usize;
        let result = loop {
            while inflight.len() < window && next < MAX_PAGES {
                let mut query = Self::base_query(spec);
                query.push(("skip".into(), (next * u64::from(spec.take)).to_string()));
                inflight.push_back(self.spawn_page(&spec.connector, query));
                next += 1;
            }
            let Some(mut task) = inflight.pop_front() else {
                break Err(AfasError::Paging {
                    connector: spec.connector.clone(),
                    reason: format!("more than {MAX_PAGES} pages; stopped"),
                });
            };
            let raw = match task.rows().await {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let short = raw.rows.len() < spec.take as usize;
            let (rows, bad_rows) = match parse_rows(raw, &spec.fields) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let page = Page {
                connector: spec.connector.clone(),
                number,
                rows,
                bad_rows,
            };
            number += 1;
            if tx.send(Ok(page)).await.is_err() || short {
                break Ok(());
            }
        };
        // Requests still in flight are cancelled as `inflight` drops.
        result
    }
}

/// The key values of a row as AFAS filter values; `Err(field)` when empty.
fn key_values(row: &Row, order: &[String]) -> Result<Vec<String>, String> {
    order
        .iter()
        .map(|f| {
            let f = f.trim_start_matches('-');
            match row.get(f) {
                // `,` and `;` are AFAS's filter separators and cannot be escaped.
                Some(Value::String(s)) if !s.is_empty() && !s.contains([',', ';']) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(Value::Bool(b)) => Ok(if *b { "1" } else { "0" }.to_string()),
                _ => Err(f.to_string()),
            }
        })
        .collect()
}

/// `(k1 > v1) OR (k1 = v1 AND k2 >= v2)` for a two-field key, in AFAS's
/// filter syntax, where `,` joins with AND and `;` starts an OR group. The
/// last field is inclusive (see `read_keyset`); descending keys use `<`/`<=`.
pub fn keyset_filter(order: &[String], last: &[String]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut values = Vec::new();
    let mut ops = Vec::new();
    for i in 0..order.len() {
        let mut gf = Vec::new();
        let mut gv = Vec::new();
        let mut go = Vec::new();
        for j in 0..=i {
            let (name, desc) = match order[j].strip_prefix('-') {
                Some(n) => (n, true),
                None => (order[j].as_str(), false),
            };
            gf.push(name.to_string());
            gv.push(last[j].clone());
            let last_field = i == order.len() - 1;
            go.push(match (j < i, desc, last_field) {
                (true, _, _) => "1",
                (false, false, false) => "4",
                (false, true, false) => "5",
                (false, false, true) => "2",
                (false, true, true) => "3",
            });
        }
        fields.push(gf.join(","));
        values.push(gv.join(","));
        ops.push(go.join(","));
    }
    vec![
        ("filterfieldids".into(), fields.join(";")),
        ("filtervalues".into(), values.join(";")),
        ("operatortypes".into(), ops.join(";")),
    ]
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8], url: &url::Url) -> Result<T, AfasError> {
    serde_json::from_slice(body).map_err(|e| AfasError::Decode {
        path: url.path().to_string(),
        reason: e.to_string(),
    })
}

fn map_reqwest(e: reqwest::Error, url: &url::Url) -> AfasError {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
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
