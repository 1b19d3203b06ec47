//! Reads and writes of one user at the target: lookups, create, replace
//! and patch, each with what its answer means (done, gone, taken, stale).

use reqwest::Method;
use serde_json::{json, Value};

use super::{Answer, Applied, Delivered, Found, Ready, ScimSink, Wrote, PATCH_URN};
use crate::delivery::SinkError;

impl ScimSink {
    pub(super) async fn refused(&self, a: &Answer, what: &str) -> SinkError {
        self.after_refusal(a).await;
        self.failure(a, what)
    }

    /// What a write's answer means: done, gone, taken; `None` for a stale
    /// version (412), which the caller reads again.
    pub(super) async fn written(&self, a: &Answer, what: &str) -> Option<Result<Wrote, SinkError>> {
        match a.status {
            200 | 204 => Some(Ok(Wrote::Done(a.version.clone()))),
            404 => Some(Ok(Wrote::Gone)),
            409 => Some(Ok(Wrote::Conflict)),
            412 => None,
            _ => Some(Err(self.refused(a, what).await)),
        }
    }

    pub(super) async fn lookup(&self, attr: &str, value: &str) -> Result<Vec<Value>, SinkError> {
        let mut url = self.url(&["Users"]);
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        url.query_pairs_mut()
            .append_pair("filter", &format!("{attr} eq \"{escaped}\""))
            .append_pair("attributes", "id,externalId,userName,active,meta.version");
        let a = self.send(Method::GET, url, None, None).await?;
        if a.status != 200 {
            return Err(self.failure(&a, &format!("lookup by {attr}")));
        }
        Ok(a.body
            .get("Resources")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// The employee's user at the target: from what this sink knows, else
    /// a lookup by `externalId`.
    pub(super) async fn find(&self, key: &str) -> Result<Option<Found>, SinkError> {
        match self.known(key) {
            super::known::Known::At(f) => return Ok(Some(f)),
            super::known::Known::Absent => return Ok(None),
            super::known::Known::Unknown => {}
        }
        let resources = self.lookup("externalId", key).await?;
        if resources.len() > 1 {
            return Err(SinkError::Permanent {
                reason: format!(
                    "the SCIM server holds {} users with externalId {key}; remove the duplicates there",
                    resources.len()
                ),
            });
        }
        let found = resources.first().and_then(|r| {
            Some(Found {
                id: r.get("id")?.as_str()?.to_string(),
                version: r.pointer("/meta/version").and_then(Value::as_str).map(str::to_string),
            })
        });
        if let Some(f) = &found {
            self.remember(Some(key), &f.id, f.version.as_deref());
        }
        Ok(found)
    }

    /// The current version of a user for `If-Match`; `None` when gone.
    pub(super) async fn version(&self, id: &str) -> Result<Option<Option<String>>, SinkError> {
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

    pub(super) async fn create(&self, key: &str, user: &Value) -> Result<(Wrote, Option<String>), SinkError> {
        self.trying_to_create(key);
        let a = self.send(Method::POST, self.url(&["Users"]), Some(user), None).await?;
        match a.status {
            200 | 201 => match a.body.get("id").and_then(Value::as_str) {
                Some(id) => {
                    self.remember(Some(key), id, a.version.as_deref());
                    Ok((Wrote::Done(a.version.clone()), Some(id.to_string())))
                }
                None => Err(SinkError::Retry {
                    reason: "the SCIM server created the user but sent no id".into(),
                    after: None,
                }),
            },
            409 => Ok((Wrote::Conflict, None)),
            _ => Err(self.refused(&a, "create").await),
        }
    }

    /// Creates the user, or replaces it when one with this externalId exists.
    pub(super) async fn upsert(&self, ready: &Ready, key: &str, user: &Value) -> Result<Applied, SinkError> {
        let (wrote, id) = match self.find(key).await? {
            None => self.create(key, user).await?,
            Some(found) => {
                let wrote = self.replace(ready, &found.id, found.version.as_deref(), user).await?;
                (wrote, Some(found.id))
            }
        };
        match wrote {
            Wrote::Conflict => Ok(Applied::Conflict),
            // Deleted between the lookup and the write: the next attempt
            // creates it.
            Wrote::Gone => {
                self.forget(key, id.as_deref());
                Err(SinkError::Retry {
                    reason: format!("the user with externalId {key} vanished at the SCIM server while it was written"),
                    after: None,
                })
            }
            Wrote::Done(version) => Ok(Applied::Done(Delivered { id, version })),
        }
    }

    /// PUT with `If-Match` when the server has ETags; a stale version (412)
    /// is read again, a bounded number of times.
    pub(super) async fn replace(
        &self,
        ready: &Ready,
        id: &str,
        version: Option<&str>,
        user: &Value,
    ) -> Result<Wrote, SinkError> {
        self.write_versioned(ready, Method::PUT, id, user, version.map(str::to_string), "replace")
            .await
    }

    /// PATCH with `If-Match` when the server has ETags: the version from
    /// the last answer about this user (this sink's memory, else `known`
    /// from the state file), read first only when none is known.
    pub(super) async fn patch(
        &self,
        ready: &Ready,
        id: &str,
        ops: Vec<Value>,
        known: Option<&str>,
    ) -> Result<Wrote, SinkError> {
        let body = json!({"schemas": [PATCH_URN], "Operations": ops});
        let version = self.known_version(id).or(known.map(str::to_string));
        self.write_versioned(ready, Method::PATCH, id, &body, version, "patch")
            .await
    }

    /// One write of user `id`; with ETags it carries `If-Match` (read
    /// first when no version is known), and a stale version (412) is read
    /// again, a bounded number of times.
    async fn write_versioned(
        &self,
        ready: &Ready,
        method: Method,
        id: &str,
        body: &Value,
        mut version: Option<String>,
        what: &str,
    ) -> Result<Wrote, SinkError> {
        let etag = ready.target.caps.etag;
        for _ in 0..3 {
            if etag && version.is_none() {
                match self.version(id).await? {
                    Some(v) => version = v,
                    None => return Ok(Wrote::Gone),
                }
            }
            let a = self
                .send(
                    method.clone(),
                    self.url(&["Users", id]),
                    Some(body),
                    if etag { version.as_deref() } else { None },
                )
                .await?;
            match self.written(&a, what).await {
                Some(done) => {
                    if let Ok(Wrote::Done(v)) = &done {
                        self.remember(None, id, v.as_deref());
                    }
                    return done;
                }
                None => version = None,
            }
        }
        Err(SinkError::Retry {
            reason: "the user kept changing at the SCIM server (412 three times)".into(),
            after: None,
        })
    }
}
