//! The SCIM 2.0 sink (RFC 7643/7644): Users with `externalId` = the AFAS
//! employee key, the enterprise extension, and afas-sync's own extension
//! for everything else (see [`EXTENSION_URN`] and the README).
//!
//! Every operation is idempotent so the outbox may repeat it: a joiner is
//! looked up by `externalId` first and replaced when it exists (a retried
//! create never makes a duplicate); an update that meets a 404 (the server
//! lost the user) looks up again and re-creates.

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Map, Value};
use tokio::sync::OnceCell;

use super::webhook::{classify, transport_error};
use super::{Job, SinkError};
use crate::config::{Deprovision, ScimAuth, ScimConfig, UserNameSource};
use crate::domain::Employee;
use crate::sync::plan::{Change, Mutation, MutationKind};

pub const CORE_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// afas-sync's extension schema (served from `packaging/scim/schemas.json`).
pub const EXTENSION_URN: &str = "urn:afas-sync:scim:schemas:extension:employee:1.0:User";
const PATCH_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// What the server announced in its ServiceProviderConfig.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    pub patch: bool,
    pub etag: bool,
}

enum Auth {
    Bearer(HeaderValue),
    OAuth(crate::oauth::TokenSource),
}

pub struct ScimSink {
    http: reqwest::Client,
    base: url::Url,
    auth: Auth,
    user_name: UserNameSource,
    deprovision: Deprovision,
    caps: OnceCell<Capabilities>,
}

struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

/// A user found at the target: its id and, with ETags, its version.
struct Found {
    id: String,
    version: Option<String>,
}

fn decimal(v: crate::afas::rows::Decimal) -> Value {
    v.to_string().parse::<f64>().map(Value::from).unwrap_or(Value::Null)
}

impl ScimSink {
    pub fn new(c: &ScimConfig) -> Result<Self, String> {
        crate::afas::client::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(c.timeout)
            .user_agent(concat!("afas-sync/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("sink.scim.ca_file {}: {e}", ca.display()))?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|e| format!("sink.scim.ca_file {}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| e.to_string())?;
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
                client_id.clone(),
                client_secret.clone(),
            )),
        };
        Ok(ScimSink {
            http,
            base: c.url.clone(),
            auth,
            user_name: c.user_name,
            deprovision: c.deprovision,
            caps: OnceCell::new(),
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
        let mut refreshed = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, self.authorization(refreshed).await?)
                .header("accept", "application/scim+json");
            if let Some(b) = body {
                req = req.header(CONTENT_TYPE, "application/scim+json").body(b.to_string());
            }
            if let Some(v) = if_match {
                req = req.header("if-match", v);
            }
            let resp = req.send().await.map_err(|e| transport_error(&e, "the SCIM server"))?;
            let status = resp.status().as_u16();
            if status == 401 && !refreshed && matches!(self.auth, Auth::OAuth(_)) {
                refreshed = true;
                continue;
            }
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = resp.bytes().await.map_err(|e| transport_error(&e, "the SCIM server"))?;
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Ok(Answer {
                status,
                body,
                retry_after,
            });
        }
    }

    fn failure(&self, a: &Answer, what: &str) -> SinkError {
        let detail = [a.body.get("scimType"), a.body.get("detail")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(": ");
        let detail: String = detail.chars().take(300).collect();
        classify(
            a.status,
            a.retry_after.as_deref(),
            &format!("the SCIM server ({what})"),
            &detail,
        )
    }

    /// Reads ServiceProviderConfig once; a server that does not answer it
    /// is assumed to support PATCH without ETags (the common case).
    pub async fn capabilities(&self) -> Result<Capabilities, SinkError> {
        self.caps
            .get_or_try_init(|| async {
                let a = self
                    .send(Method::GET, self.url(&["ServiceProviderConfig"]), None, None)
                    .await?;
                match a.status {
                    200 => Ok(Capabilities {
                        patch: a
                            .body
                            .pointer("/patch/supported")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        etag: a
                            .body
                            .pointer("/etag/supported")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    }),
                    401 | 403 => Err(self.failure(&a, "ServiceProviderConfig")),
                    _ => Ok(Capabilities {
                        patch: true,
                        etag: false,
                    }),
                }
            })
            .await
            .copied()
    }

    /// The whole User resource for an employee.
    pub fn user_json(&self, e: &Employee, active: bool) -> Value {
        let family = match &e.prefix {
            Some(p) => format!("{p} {}", e.last_name),
            None => e.last_name.clone(),
        };
        let mut ext = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                ext.insert(k.to_string(), v);
            }
        };
        put("prefix", e.prefix.clone().map(Value::from).unwrap_or(Value::Null));
        put(
            "dateOfBirth",
            e.date_of_birth
                .map(|d| Value::from(d.to_string()))
                .unwrap_or(Value::Null),
        );
        put("employmentStart", Value::from(e.employment.start.to_string()));
        put(
            "employmentEnd",
            e.employment
                .end
                .map(|d| Value::from(d.to_string()))
                .unwrap_or(Value::Null),
        );
        put("alleoAccess", e.access.map(Value::from).unwrap_or(Value::Null));
        put(
            "fte",
            e.contract
                .as_ref()
                .and_then(|c| c.fte)
                .map(decimal)
                .unwrap_or(Value::Null),
        );
        put("salary", e.pay.salary.map(decimal).unwrap_or(Value::Null));
        put(
            "holidayAllowanceAccrual",
            e.pay.holiday_allowance_accrual.map(decimal).unwrap_or(Value::Null),
        );
        put(
            "holidayAllowanceBalance",
            e.pay.holiday_allowance_balance.map(decimal).unwrap_or(Value::Null),
        );
        if !e.budgets.is_empty() {
            put(
                "budgets",
                e.budgets
                    .iter()
                    .map(|(n, a)| json!({"name": n, "amount": decimal(*a)}))
                    .collect(),
            );
        }
        if !e.pay.leave_hours.is_empty() {
            put(
                "leave",
                e.pay
                    .leave_hours
                    .iter()
                    .map(|(t, h)| json!({"type": t, "hours": decimal(*h)}))
                    .collect(),
            );
        }
        let user_name = match self.user_name {
            UserNameSource::Email => e.email.as_str().to_string(),
            UserNameSource::Key => e.key.as_str().to_string(),
        };
        let mut enterprise = Map::new();
        enterprise.insert("employeeNumber".into(), Value::from(e.key.as_str()));
        if let Some(d) = &e.department {
            enterprise.insert("department".into(), Value::from(d.as_str()));
        }
        json!({
            "schemas": [CORE_URN, ENTERPRISE_URN, EXTENSION_URN],
            "externalId": e.key.as_str(),
            "userName": user_name,
            "displayName": e.display_name(),
            "name": {"givenName": e.first_name, "familyName": family, "formatted": e.display_name()},
            "emails": [{"value": e.email.as_str(), "type": "work", "primary": true}],
            "active": active,
            ENTERPRISE_URN: enterprise,
            EXTENSION_URN: ext,
        })
    }

    /// The SCIM paths a changed attribute lives at.
    fn paths_for(&self, change: &Change) -> Vec<String> {
        let ext = |a: &str| format!("{EXTENSION_URN}:{a}");
        let f = change.field.as_str();
        match f {
            "email" => {
                let mut p = vec!["emails".to_string()];
                if self.user_name == UserNameSource::Email {
                    p.push("userName".into());
                }
                p
            }
            "first_name" | "last_name" => vec!["name".into(), "displayName".into()],
            "prefix" => vec!["name".into(), "displayName".into(), ext("prefix")],
            "department" => vec![format!("{ENTERPRISE_URN}:department")],
            "date_of_birth" => vec![ext("dateOfBirth")],
            "employment_start" => vec![ext("employmentStart")],
            "employment_end" => vec![ext("employmentEnd")],
            "access" => vec![ext("alleoAccess")],
            "fte" => vec![ext("fte")],
            "salary" => vec![ext("salary")],
            "holiday_allowance_accrual" => vec![ext("holidayAllowanceAccrual")],
            "holiday_allowance_balance" => vec![ext("holidayAllowanceBalance")],
            _ if f.starts_with("budget.") => vec![ext("budgets")],
            _ if f.starts_with("leave.") => vec![ext("leave")],
            _ => Vec::new(),
        }
    }

    /// PATCH operations bringing the user to `user` for these changes.
    fn patch_ops(&self, user: &Value, changes: &[Change]) -> Vec<Value> {
        let mut paths: Vec<String> = Vec::new();
        for c in changes {
            for p in self.paths_for(c) {
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        paths
            .into_iter()
            .map(|path| {
                let value = match path.strip_prefix(&format!("{EXTENSION_URN}:")) {
                    Some(attr) => user.get(EXTENSION_URN).and_then(|e| e.get(attr)).cloned(),
                    None => match path.strip_prefix(&format!("{ENTERPRISE_URN}:")) {
                        Some(attr) => user.get(ENTERPRISE_URN).and_then(|e| e.get(attr)).cloned(),
                        None => user.get(&path).cloned(),
                    },
                };
                match value {
                    Some(v) => json!({"op": "replace", "path": path, "value": v}),
                    None => json!({"op": "remove", "path": path}),
                }
            })
            .collect()
    }

    async fn find(&self, key: &str) -> Result<Option<Found>, SinkError> {
        let mut url = self.url(&["Users"]);
        let escaped = key.replace('\\', "\\\\").replace('"', "\\\"");
        url.query_pairs_mut()
            .append_pair("filter", &format!("externalId eq \"{escaped}\""));
        let a = self.send(Method::GET, url, None, None).await?;
        if a.status != 200 {
            return Err(self.failure(&a, "lookup by externalId"));
        }
        let resources = a
            .body
            .get("Resources")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if resources.len() > 1 {
            return Err(SinkError::Permanent {
                reason: format!(
                    "the SCIM server holds {} users with externalId {key}; remove the duplicates there",
                    resources.len()
                ),
            });
        }
        Ok(resources.first().and_then(|r| {
            Some(Found {
                id: r.get("id")?.as_str()?.to_string(),
                version: r.pointer("/meta/version").and_then(Value::as_str).map(str::to_string),
            })
        }))
    }

    /// The current version of a user for `If-Match`; `None` when gone.
    async fn version(&self, id: &str) -> Result<Option<Option<String>>, SinkError> {
        let a = self.send(Method::GET, self.url(&["Users", id]), None, None).await?;
        match a.status {
            200 => Ok(Some(
                a.body
                    .pointer("/meta/version")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            )),
            404 => Ok(None),
            _ => Err(self.failure(&a, "read")),
        }
    }

    async fn create(&self, user: &Value) -> Result<String, SinkError> {
        let a = self.send(Method::POST, self.url(&["Users"]), Some(user), None).await?;
        match a.status {
            200 | 201 => a
                .body
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| SinkError::Retry {
                    reason: "the SCIM server created the user but sent no id".into(),
                    after: None,
                }),
            _ => Err(self.failure(&a, "create")),
        }
    }

    /// Creates the user, or replaces it when one with this externalId exists.
    async fn upsert(&self, key: &str, user: &Value) -> Result<String, SinkError> {
        match self.find(key).await? {
            None => self.create(user).await,
            Some(found) => self
                .replace(&found.id, found.version.as_deref(), user)
                .await
                .map(|_| found.id),
        }
    }

    /// PUT with `If-Match` when the server has ETags; a stale version (412)
    /// is read again, a bounded number of times.
    async fn replace(&self, id: &str, version: Option<&str>, user: &Value) -> Result<bool, SinkError> {
        let etag = self.capabilities().await?.etag;
        let mut version = version.map(str::to_string);
        for _ in 0..3 {
            if etag && version.is_none() {
                match self.version(id).await? {
                    Some(v) => version = v,
                    None => return Ok(false),
                }
            }
            let a = self
                .send(
                    Method::PUT,
                    self.url(&["Users", id]),
                    Some(user),
                    if etag { version.as_deref() } else { None },
                )
                .await?;
            match a.status {
                200 | 204 => return Ok(true),
                404 => return Ok(false),
                412 => version = None,
                _ => return Err(self.failure(&a, "replace")),
            }
        }
        Err(SinkError::Retry {
            reason: "the user kept changing at the SCIM server (412 three times)".into(),
            after: None,
        })
    }

    async fn patch(&self, id: &str, ops: Vec<Value>) -> Result<bool, SinkError> {
        let etag = self.capabilities().await?.etag;
        let body = json!({"schemas": [PATCH_URN], "Operations": ops});
        for _ in 0..3 {
            let version = if etag {
                match self.version(id).await? {
                    Some(v) => v,
                    None => return Ok(false),
                }
            } else {
                None
            };
            let a = self
                .send(Method::PATCH, self.url(&["Users", id]), Some(&body), version.as_deref())
                .await?;
            match a.status {
                200 | 204 => return Ok(true),
                404 => return Ok(false),
                412 => continue,
                _ => return Err(self.failure(&a, "patch")),
            }
        }
        Err(SinkError::Retry {
            reason: "the user kept changing at the SCIM server (412 three times)".into(),
            after: None,
        })
    }

    /// The id to update: the remembered one, else a lookup.
    async fn target(&self, job: &Job, key: &str) -> Result<Option<String>, SinkError> {
        match &job.target_id {
            Some(id) => Ok(Some(id.clone())),
            None => Ok(self.find(key).await?.map(|f| f.id)),
        }
    }

    pub async fn deliver(&self, job: &Job) -> Result<Option<String>, SinkError> {
        let Some(m) = &job.mutation else {
            return Ok(None);
        };
        self.apply(job, m).await
    }

    async fn apply(&self, job: &Job, m: &Mutation) -> Result<Option<String>, SinkError> {
        let key = m.key.as_str();
        let Some(e) = &m.employee else {
            // Personal data already removed by retention: nothing to send
            // but a deactivation, which needs no data.
            if m.kind == MutationKind::Leaver {
                if let Some(id) = self.target(job, key).await? {
                    self.patch(&id, vec![json!({"op": "replace", "path": "active", "value": false})])
                        .await?;
                    return Ok(Some(id));
                }
            }
            return Ok(None);
        };
        let caps = self.capabilities().await?;
        match m.kind {
            MutationKind::Joiner | MutationKind::Rehire => {
                let user = self.user_json(e, true);
                self.upsert(key, &user).await.map(Some)
            }
            MutationKind::Mover => {
                let user = self.user_json(e, true);
                let Some(id) = self.target(job, key).await? else {
                    return self.create(&user).await.map(Some);
                };
                let done = if caps.patch {
                    let ops = self.patch_ops(&user, &m.changes);
                    if ops.is_empty() {
                        true
                    } else {
                        self.patch(&id, ops).await?
                    }
                } else {
                    self.replace(&id, None, &user).await?
                };
                if done {
                    Ok(Some(id))
                } else {
                    // Gone at the server (restarted, deleted): look up again,
                    // then create with the full current state.
                    self.upsert(key, &user).await.map(Some)
                }
            }
            MutationKind::Leaver => {
                let id = self.target(job, key).await?;
                if self.deprovision == Deprovision::Delete {
                    if let Some(id) = id {
                        let a = self.send(Method::DELETE, self.url(&["Users", &id]), None, None).await?;
                        if !matches!(a.status, 200 | 204 | 404) {
                            return Err(self.failure(&a, "delete"));
                        }
                    }
                    return Ok(None);
                }
                let user = self.user_json(e, false);
                let done = match &id {
                    Some(id) if caps.patch => {
                        // The termination date (or access flag) that made the
                        // leaver travels with the deactivation.
                        let mut ops = vec![json!({"op": "replace", "path": "active", "value": false})];
                        ops.extend(self.patch_ops(&user, &m.changes));
                        self.patch(id, ops).await?
                    }
                    Some(id) => self.replace(id, None, &user).await?,
                    None => false,
                };
                if done {
                    Ok(id)
                } else {
                    // Keep the target's picture complete: the leaver exists,
                    // inactive.
                    self.upsert(key, &user).await.map(Some)
                }
            }
        }
    }

    /// For `afas-sync check`: reachable, authenticated, extension served.
    pub async fn check(&self) -> Vec<(String, Result<String, String>)> {
        let mut out = Vec::new();
        match self.capabilities().await {
            Ok(c) => out.push((
                "SCIM reachable".to_string(),
                Ok(format!(
                    "{} (PATCH {}, ETags {})",
                    self.base,
                    if c.patch { "yes" } else { "no" },
                    if c.etag { "yes" } else { "no" }
                )),
            )),
            Err(e) => {
                out.push(("SCIM reachable".to_string(), Err(e.to_string())));
                return out;
            }
        }
        let result = match self.send(Method::GET, self.url(&["Schemas"]), None, None).await {
            Ok(a) if a.status == 200 => {
                let ids: Vec<&str> = a
                    .body
                    .get("Resources")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(|s| s.get("id").and_then(Value::as_str)).collect())
                    .unwrap_or_default();
                if ids.contains(&EXTENSION_URN) {
                    Ok(format!("{EXTENSION_URN} is served"))
                } else {
                    Err(format!("the server does not serve the schema {EXTENSION_URN}; load packaging/scim/schemas.json there (see README)"))
                }
            }
            Ok(a) => Err(self.failure(&a, "Schemas").to_string()),
            Err(e) => Err(e.to_string()),
        };
        out.push(("SCIM extension schema".to_string(), result));
        out
    }
}
