//! The SCIM 2.0 sink (RFC 7643/7644): Users with `externalId` = the AFAS
//! employee key, the enterprise extension, and afas-sync's own extension
//! for everything else (see [`EXTENSION_URN`] and the README).
//!
//! Every operation is idempotent so the outbox may repeat it: a joiner is
//! looked up by `externalId` first and replaced when it exists (a retried
//! create never makes a duplicate); an update that meets a 404 (the server
//! lost the user) looks up again and re-creates.

pub mod bulk;
mod check;
mod conflict;
mod known;
pub mod mapping;
mod matching;
mod one;
mod preview;
mod probe;
pub mod schema;
mod sweep;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

use self::mapping::Mapping;
pub use self::one::WouldSend;
pub use self::preview::{Adoption, Conflict, Takeover, Unmanaged, LISTED};
pub use self::schema::{Capabilities, Target, CORE_URN, ENTERPRISE_URN, EXTENSION_URN};
use super::transport_error;
use super::{Delivered, Job, SinkError};
use crate::config::{Adopt, Deprovision, MatchRule, ScimAuth, ScimConfig, UpdateMode, UserNameSource};
use crate::model::Employee;
use crate::model::SinkKind;
use crate::model::{Mutation, MutationKind};
use crate::store::Store;

const PATCH_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

enum Auth {
    Bearer(HeaderValue),
    OAuth(crate::oauth::TokenSource),
}

/// The target as discovered, with the mapping checked against it.
pub struct Ready {
    pub target: Target,
    pub mapping: Mapping,
}

pub struct ScimSink {
    http: reqwest::Client,
    base: url::Url,
    auth: Auth,
    user_name: UserNameSource,
    deprovision: Deprovision,
    attributes: BTreeMap<String, Vec<String>>,
    released_user_name: String,
    bulk: bool,
    /// Who holds a value: the snapshot and this sink's target ids.
    store: Option<Arc<Store>>,
    /// Discovered on first use; dropped after a refusal that points at the
    /// schema, so the next delivery reads the target again.
    ready: tokio::sync::Mutex<Option<Arc<Ready>>>,
    memory: std::sync::Mutex<known::Memory>,
    learnt: known::Learnt,
    /// One listing at a time when tasks fall back to it together.
    listing: tokio::sync::Mutex<()>,
    match_rules: Vec<MatchRule>,
    adopt: Adopt,
    update: UpdateMode,
    unmanaged: crate::config::Unmanaged,
}

struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<std::time::Duration>,
    /// The resource's version: `meta.version`, else the `ETag` header.
    version: Option<String>,
}

/// A user found at the target: its id and, with ETags, its version.
use crate::store::TargetUser as Found;

/// What one write did.
enum Wrote {
    /// Written; the user's new version when the answer gave one.
    Done(Option<String>),
    /// 404: the target lost the user.
    Gone,
    /// 409: a unique value (`userName`) is held by another user.
    Conflict,
}

/// What one attempt at a mutation did.
enum Applied {
    Done(Delivered),
    Conflict,
}

fn done(id: String, version: Option<String>) -> Applied {
    Applied::Done(Some(Found { id, version }))
}

impl ScimSink {
    /// The target's base URL.
    pub fn base_url(&self) -> &url::Url {
        &self.base
    }

    pub fn new(c: &ScimConfig, store: Option<Arc<Store>>) -> Result<Self, String> {
        let http = crate::net::client(&crate::net::ClientSpec {
            timeout: Some(c.timeout),
            ca_file: c.ca_file.as_deref().map(|p| ("sink.scim.ca_file", p)),
            ..Default::default()
        })?;
        let auth = match &c.auth {
            ScimAuth::Bearer(t) => {
                let mut h = HeaderValue::from_str(&format!("Bearer {}", t.expose())).map_err(|_| {
                    "sink.scim.token_file: the token contains characters not allowed in a header".to_string()
                })?;
                h.set_sensitive(true);
                Auth::Bearer(h)
            }
            ScimAuth::OAuth {
                token_url,
                client_id,
                client_secret,
            } => Auth::OAuth(crate::oauth::TokenSource::new(
                token_url.clone(),
                crate::oauth::Client {
                    id: client_id.clone(),
                    auth: crate::oauth::ClientAuth::SecretPost(client_secret.clone()),
                },
            )),
        };
        Ok(ScimSink {
            http,
            base: c.url.clone(),
            auth,
            user_name: c.user_name,
            deprovision: c.deprovision,
            attributes: c.attributes.clone(),
            released_user_name: c.released_user_name.clone(),
            bulk: c.bulk,
            store,
            ready: tokio::sync::Mutex::new(None),
            memory: Default::default(),
            learnt: Default::default(),
            listing: tokio::sync::Mutex::new(()),
            match_rules: c.match_rules.clone(),
            adopt: c.adopt,
            update: c.update,
            unmanaged: c.unmanaged,
        })
    }

    fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty();
            p.extend(segments);
        }
        url
    }

    async fn authorization(&self, force: bool) -> Result<HeaderValue, SinkError> {
        match &self.auth {
            Auth::Bearer(h) => Ok(h.clone()),
            Auth::OAuth(source) => {
                let bearer = source.bearer(&self.http, force).await.map_err(|f| {
                    let reason = format!(
                        "SCIM OAuth token request failed: {}{}",
                        f.error,
                        f.description.map(|d| format!(" ({d})")).unwrap_or_default()
                    );
                    if f.transient {
                        SinkError::Retry { reason, after: None }
                    } else {
                        SinkError::Down { reason }
                    }
                })?;
                let mut h = HeaderValue::from_str(&bearer).map_err(|_| SinkError::Down {
                    reason: "the SCIM OAuth token is not a valid header value".into(),
                })?;
                h.set_sensitive(true);
                Ok(h)
            }
        }
    }

    /// One request; a 401 under OAuth fetches a new token once.
    async fn send(
        &self,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, SinkError> {
        let oauth = matches!(self.auth, Auth::OAuth(_));
        let send = |force: bool| {
            let (method, url) = (method.clone(), url.clone());
            async move {
                let mut req = self
                    .http
                    .request(method, url)
                    .header(AUTHORIZATION, self.authorization(force).await?)
                    .header("accept", "application/scim+json");
                if let Some(b) = body {
                    req = req.header(CONTENT_TYPE, "application/scim+json").body(b.to_string());
                }
                if let Some(v) = if_match {
                    req = req.header("if-match", v);
                }
                // Without the URL: a lookup's carries an e-mail address.
                req.send()
                    .await
                    .map_err(|e| transport_error(&e.without_url(), "the SCIM server"))
            }
        };
        let started = std::time::Instant::now();
        let op = format!("{method} {}", self.path_of(&url));
        let resp = match crate::net::send_refreshing(oauth, send).await {
            Ok(r) => r,
            Err(e) => {
                crate::delivery::trail::note(op, None, None, None);
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        let retry_after = crate::net::retry_after(resp.headers());
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                crate::delivery::trail::note(op, None, None, Some("the answer broke off"));
                return Err(transport_error(&e.without_url(), "the SCIM server"));
            }
        };
        crate::metrics::metrics()
            .sink_latency
            .get_or_create(&crate::metrics::SinkLabels {
                sink: SinkKind::Scim.name().into(),
            })
            .observe(started.elapsed().as_secs_f64());
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        crate::delivery::trail::note(
            op,
            Some(status),
            body.get("scimType").and_then(Value::as_str),
            body.get("detail").and_then(Value::as_str),
        );
        let version = body
            .pointer("/meta/version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or(etag);
        Ok(Answer {
            status,
            body,
            retry_after,
            version,
        })
    }

    /// A discovery GET: the body on 200, `None` when the target does not
    /// serve it, an error when it refuses us.
    async fn discover(&self, what: &str) -> Result<Option<Value>, SinkError> {
        let a = self.send(Method::GET, self.url(&[what]), None, None).await?;
        match a.status {
            200 => Ok(Some(a.body)),
            401 | 403 => Err(self.failure(&a, what)),
            408 | 429 | 500..=599 => Err(self.failure(&a, what)),
            _ => Ok(None),
        }
    }

    /// Reads the target (RFC 7644 §4) and checks the mapping against it.
    pub async fn discover_target(&self) -> Result<Target, SinkError> {
        let caps = match self.discover("ServiceProviderConfig").await? {
            Some(b) => Capabilities {
                patch: b.pointer("/patch/supported").and_then(Value::as_bool).unwrap_or(false),
                filter: b.pointer("/filter/supported").and_then(Value::as_bool).unwrap_or(true),
                etag: b.pointer("/etag/supported").and_then(Value::as_bool).unwrap_or(false),
                max_results: b
                    .pointer("/filter/maxResults")
                    .and_then(Value::as_u64)
                    .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32),
                bulk_max_operations: match b.pointer("/bulk/supported").and_then(Value::as_bool) {
                    Some(true) => b
                        .pointer("/bulk/maxOperations")
                        .and_then(Value::as_u64)
                        .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32),
                    _ => 0,
                },
                bulk_max_payload: b.pointer("/bulk/maxPayloadSize").and_then(Value::as_u64).unwrap_or(0),
            },
            // The common case for a server that does not say.
            None => Capabilities {
                patch: true,
                filter: true,
                etag: false,
                max_results: 0,
                bulk_max_operations: 0,
                bulk_max_payload: 0,
            },
        };
        let resource_types = self.discover("ResourceTypes").await?;
        let schemas = self.discover("Schemas").await?;
        Ok(Target::from_answers(caps, resource_types.as_ref(), schemas.as_ref()))
    }

    /// The discovered target and checked mapping, read once and kept until
    /// a refusal points at the schema. A mapping the target cannot take
    /// stops the sink (nothing is spent or dead-lettered) until it is fixed.
    pub async fn ready(&self) -> Result<Arc<Ready>, SinkError> {
        let mut guard = self.ready.lock().await;
        if let Some(r) = guard.as_ref() {
            return Ok(r.clone());
        }
        let target = self.discover_target().await?;
        let mapping = Mapping::new(&self.attributes, &target).map_err(|reason| SinkError::Down { reason })?;
        let r = Arc::new(Ready { target, mapping });
        *guard = Some(r.clone());
        Ok(r)
    }

    /// A 400 that says the request does not fit the target's schema: read
    /// the target again before the next delivery.
    async fn after_refusal(&self, a: &Answer) {
        let scim_type = a.body.get("scimType").and_then(Value::as_str).unwrap_or("");
        let detail = a.body.get("detail").and_then(Value::as_str).unwrap_or("");
        if a.status == 400
            && (matches!(scim_type, "invalidSyntax" | "invalidValue" | "invalidPath" | "noTarget")
                || detail.to_ascii_lowercase().contains("schema"))
        {
            *self.ready.lock().await = None;
        }
    }

    fn user_name_of(&self, e: &Employee) -> String {
        match self.user_name {
            UserNameSource::Email => e.email.as_str().to_string(),
            UserNameSource::Key => e.key.as_str().to_string(),
        }
    }

    /// The `userName` a user gets when its value must be freed for another
    /// employee: deterministic, so a repeat changes nothing.
    pub fn released_user_name(&self, key: &str) -> String {
        self.released_user_name.replace("{key}", key)
    }

    /// The id afas-sync stored for the employee, with the last version
    /// known of it: a change is written there directly, and only a 404
    /// leads to a lookup.
    fn stored(&self, job: &Job) -> Option<Found> {
        job.target.as_ref().map(|t| Found {
            id: t.id.clone(),
            version: self.known_version(&t.id).or_else(|| t.version.clone()),
        })
    }

    /// A delivery; a change the target refuses with the same server error
    /// on every attempt becomes that change's refusal, in its words.
    pub async fn deliver(&self, job: &Job) -> Result<Delivered, SinkError> {
        match self.deliver_once(job).await {
            Err(SinkError::Retry { reason, .. })
                if repeated_server_error(&reason, job.entry.attempts, job.entry.last_error.as_deref()) =>
            {
                Err(SinkError::Permanent {
                    reason: format!(
                        "{reason} (the same answer on each of {} attempts in a row; the target cannot apply this change)",
                        job.entry.attempts + 1
                    ),
                })
            }
            r => r,
        }
    }

    async fn deliver_once(&self, job: &Job) -> Result<Delivered, SinkError> {
        let Some(m) = &job.mutation else {
            return Ok(None);
        };
        let ready = self.ready().await?;
        // A leaver whose address now belongs to someone else steps aside;
        // anyone else frees the value from the user that keeps it.
        let mut released = false;
        let mut restore: Vec<(String, String)> = Vec::new();
        for _ in 0..4 {
            match self.apply(&ready, job, m, released).await? {
                Applied::Done(d) => {
                    // A conflict here resolves in the holder's own delivery.
                    for (holder, user_name) in restore {
                        self.set_user_name(&ready, &holder, &user_name).await?;
                    }
                    return Ok(d);
                }
                Applied::Conflict => {
                    let Some(e) = &m.employee else { break };
                    if m.kind == MutationKind::Leaver {
                        released = true;
                    } else if let Some(r) = self
                        .free_user_name(&ready, m.key.as_str(), &self.user_name_of(e))
                        .await?
                    {
                        restore.push(r);
                    }
                }
            }
        }
        Err(SinkError::Retry {
            reason: format!("the userName of employee {} is still taken at the SCIM server", m.key),
            after: None,
        })
    }

    /// A mover's or leaver's whole user, and the PATCH operations that
    /// carry its change: the changed fields the target receives, the
    /// `userName` when it follows the e-mail (or is released), and for a
    /// leaver `active = false` with the termination date that made it one.
    fn update_of(
        &self,
        ready: &Ready,
        m: &Mutation,
        e: &Employee,
        user_name: &str,
        released: bool,
    ) -> (Value, Vec<Value>) {
        let changed: Vec<&str> = m.changes.iter().map(|c| c.field.as_str()).collect();
        let user_name_changed = self.user_name == UserNameSource::Email && changed.contains(&"email");
        let leaver = m.kind == MutationKind::Leaver;
        let user = ready.mapping.user(e, !leaver, user_name);
        let mut ops = Vec::new();
        if leaver {
            ops.push(json!({"op": "replace", "path": "active", "value": false}));
        }
        ops.extend(ready.mapping.patch_ops(&user, &changed));
        if user_name_changed || (leaver && released) {
            ops.push(json!({"op": "replace", "path": "userName", "value": user_name}));
        }
        (user, ops)
    }

    async fn apply(&self, ready: &Ready, job: &Job, m: &Mutation, released: bool) -> Result<Applied, SinkError> {
        let key = m.key.as_str();
        let Some(e) = &m.employee else {
            // Personal data already removed by retention: nothing to send
            // but a deactivation, which needs no data.
            if m.kind == MutationKind::Leaver {
                if let Some(l) = self.locate(ready, self.stored(job), key, None).await? {
                    let f = l.found;
                    let op = json!({"op": "replace", "path": "active", "value": false});
                    let ours = json!({"active": false});
                    let version = match self
                        .patch(ready, &f.id, vec![op], f.version.as_deref(), &ours, false)
                        .await?
                    {
                        Wrote::Done(v) => v,
                        _ => None,
                    };
                    return Ok(done(f.id, version));
                }
            }
            return Ok(Applied::Done(None));
        };
        let user_name = if released {
            self.released_user_name(key)
        } else {
            self.user_name_of(e)
        };
        match m.kind {
            MutationKind::Joiner | MutationKind::Rehire => {
                let user = ready.mapping.user(e, true, &user_name);
                self.upsert(ready, self.stored(job), key, e, &user).await
            }
            MutationKind::Mover => {
                let (user, ops) = self.update_of(ready, m, e, &user_name, released);
                let l = match self.locate(ready, self.stored(job), key, Some(e)).await? {
                    Some(l) if l.adopted.is_none() => l,
                    other => return self.upsert_located(ready, other, key, e, &user).await,
                };
                if ops.is_empty() {
                    // Nothing the target receives changed.
                    return Ok(done(l.found.id, l.found.version));
                }
                self.update_found(ready, key, e, l.found, ops, &user).await
            }
            MutationKind::Leaver => {
                let found = self.locate(ready, self.stored(job), key, Some(e)).await?;
                if self.deprovision == Deprovision::Delete {
                    if let Some(l) = found {
                        let a = self
                            .send(Method::DELETE, self.url(&["Users", &l.found.id]), None, None)
                            .await?;
                        if !matches!(a.status, 200 | 204 | 404) {
                            return Err(self.failure(&a, "delete"));
                        }
                        self.forget(key, Some(&l.found.id));
                    }
                    return Ok(Applied::Done(None));
                }
                let (user, ops) = self.update_of(ready, m, e, &user_name, released);
                match found {
                    Some(l) if l.adopted.is_none() => self.update_found(ready, key, e, l.found, ops, &user).await,
                    // Keep the target's picture complete: the leaver exists,
                    // inactive (created, or adopted and written whole).
                    located => self.upsert_located(ready, located, key, e, &user).await,
                }
            }
        }
    }

    /// Writes a change to a user the target holds: PATCH, or PUT over what
    /// it holds. A user gone meanwhile is looked up again and created with
    /// the full current state.
    async fn update_found(
        &self,
        ready: &Ready,
        key: &str,
        e: &Employee,
        f: Found,
        ops: Vec<Value>,
        user: &Value,
    ) -> Result<Applied, SinkError> {
        match self.patch(ready, &f.id, ops, f.version.as_deref(), user, true).await? {
            Wrote::Done(v) => Ok(done(f.id, v)),
            Wrote::Conflict => Ok(Applied::Conflict),
            Wrote::Gone => {
                // Gone at the server (restarted, deleted): what this sink
                // knew of it is stale.
                self.forget(key, Some(&f.id));
                self.upsert(ready, None, key, e, user).await
            }
        }
    }
}

/// Whether a retry is the same server error (500, 501) the last attempts
/// got: the target's refusal of this change, not a passing fault.
fn repeated_server_error(reason: &str, attempts: u32, last: Option<&str>) -> bool {
    let write = ["(patch)", "(replace)"].iter().any(|w| reason.contains(w));
    let server_error = ["answered HTTP 500", "answered HTTP 501"]
        .iter()
        .any(|s| reason.contains(s));
    write && server_error && attempts + 1 >= SAME_ANSWERS_TO_REFUSE && last == Some(reason)
}

/// Attempts in a row with the same server error before a write counts as
/// refused (with the outbox's backoff, about 7 minutes of them).
const SAME_ANSWERS_TO_REFUSE: u32 = 5;

#[cfg(test)]
mod tests {
    use super::repeated_server_error;

    #[test]
    fn only_the_same_server_error_on_five_attempts_is_a_refusal() {
        let r = "the SCIM server (patch) answered HTTP 500: boom";
        assert!(repeated_server_error(r, 4, Some(r)));
        assert!(
            !repeated_server_error(r, 3, Some(r)),
            "four attempts are not yet a pattern"
        );
        assert!(!repeated_server_error(
            r,
            4,
            Some("the SCIM server (patch) answered HTTP 500: other")
        ));
        let busy = "the SCIM server (patch) answered HTTP 502: bad gateway";
        assert!(!repeated_server_error(busy, 9, Some(busy)), "a gateway error passes");
        let read = "the SCIM server (lookup by userName) answered HTTP 500: boom";
        assert!(
            !repeated_server_error(read, 9, Some(read)),
            "only a write of the change"
        );
    }
}
