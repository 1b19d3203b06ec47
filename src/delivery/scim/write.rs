//! Reads and writes of one user at the target: lookups, create, replace
//! and patch, each with what its answer means (done, gone, taken, stale).

use reqwest::Method;
use serde_json::{json, Value};

use super::known::Learnt;
use super::matching::Located;
use super::{Answer, Applied, Found, Ready, ScimSink, Wrote, PATCH_URN};
use crate::config::UpdateMode;
use crate::delivery::{classify, SinkError};
use crate::model::Employee;

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
            409 => {
                self.not_created(key);
                Ok((Wrote::Conflict, None))
            }
            _ => Err(self.refused(&a, "create").await),
        }
    }

    /// Creates the user, or writes it whole to the user the target holds
    /// for this employee (its stored id, its `externalId`, or one the match
    /// rules adopt).
    pub(super) async fn upsert(
        &self,
        ready: &Ready,
        stored: Option<Found>,
        key: &str,
        e: &Employee,
        user: &Value,
    ) -> Result<Applied, SinkError> {
        let located = self.locate(ready, stored, key, Some(e)).await?;
        self.upsert_located(ready, located, key, e, user).await
    }

    /// As [`Self::upsert`], where the user was located already. A stored
    /// id the target no longer has (404) is let go: the user is found again
    /// (or matched, or created) without it.
    pub(super) async fn upsert_located(
        &self,
        ready: &Ready,
        mut located: Option<Located>,
        key: &str,
        e: &Employee,
        user: &Value,
    ) -> Result<Applied, SinkError> {
        for _ in 0..2 {
            let from_store = located.as_ref().is_some_and(|l| l.from_store);
            let (wrote, id) = match located.take() {
                None => self.create(key, user).await?,
                Some(l) => {
                    let wrote = self.write_whole(ready, &l, user).await?;
                    if let (Some(rule), Wrote::Done(_)) = (l.adopted, &wrote) {
                        tracing::info!(
                            sink = "scim",
                            user = l.found.id,
                            "adopted the target's user for employee {key} (matched by {})",
                            rule.as_str()
                        );
                        self.remember(Some(key), &l.found.id, None);
                    }
                    (wrote, Some(l.found.id))
                }
            };
            match wrote {
                Wrote::Conflict => return Ok(Applied::Conflict),
                Wrote::Gone if from_store => {
                    self.forget(key, id.as_deref());
                    located = self.locate(ready, None, key, Some(e)).await?;
                }
                // Deleted between the lookup and the write: the next attempt
                // creates it.
                Wrote::Gone => {
                    self.forget(key, id.as_deref());
                    break;
                }
                Wrote::Done(version) => return Ok(Applied::Done(id.map(|id| Found { id, version }))),
            }
        }
        Err(SinkError::Retry {
            reason: format!("the user with externalId {key} vanished at the SCIM server while it was written"),
            after: None,
        })
    }

    /// Whether changes go as PUT: asked for, the target has no PATCH, or
    /// (in `auto`) a PATCH it could not apply moved the sink to PUT.
    pub(super) fn put_mode(&self, ready: &Ready) -> bool {
        match self.update {
            UpdateMode::Put => true,
            UpdateMode::Patch => false,
            UpdateMode::Auto => !ready.target.caps.patch || Learnt::get(&self.learnt.put),
        }
    }

    /// Writes the mapping's whole user to a user the target holds: one
    /// PATCH of every mapped attribute, or a PUT over what it holds.
    pub(super) async fn write_whole(&self, ready: &Ready, l: &Located, user: &Value) -> Result<Wrote, SinkError> {
        let f = &l.found;
        if self.put_mode(ready) {
            return self.put_over(ready, &f.id, user, true).await;
        }
        // An adopted user's other e-mail addresses (home, another system's)
        // are kept: the list it had, with the mapped ones written over it.
        let merged;
        let user = match &l.emails {
            Some(held) => {
                let mut u = user.clone();
                let over = ready.mapping.overlay(json!({ "emails": held }), user, true);
                if let (Some(m), Some(emails)) = (u.as_object_mut(), over.get("emails")) {
                    m.insert("emails".into(), emails.clone());
                }
                merged = u;
                &merged
            }
            None => user,
        };
        let ops = ready.mapping.whole_ops(user);
        self.patch(ready, &f.id, ops, f.version.as_deref(), user, true).await
    }

    /// PUT of user `id`: read first, `ours` written over what the target
    /// holds (see [`Mapping::overlay`]), with `If-Match` from the read; a
    /// 412 reads again, a bounded number of times.
    pub(super) async fn put_over(
        &self,
        ready: &Ready,
        id: &str,
        ours: &Value,
        whole: bool,
    ) -> Result<Wrote, SinkError> {
        for _ in 0..3 {
            let Some((held, version)) = self.read_user(id).await? else {
                return Ok(Wrote::Gone);
            };
            let body = ready.mapping.overlay(held, ours, whole);
            let if_match = version.as_deref().filter(|_| ready.target.caps.etag);
            let a = self
                .send(Method::PUT, self.url(&["Users", id]), Some(&body), if_match)
                .await?;
            if let Some(done) = self.written(&a, "replace").await {
                if let Ok(Wrote::Done(v)) = &done {
                    self.remember(None, id, v.as_deref());
                }
                return done;
            }
        }
        Err(SinkError::Retry {
            reason: "the user kept changing at the SCIM server (412 three times)".into(),
            after: None,
        })
    }

    /// PATCH with `If-Match` when the server has ETags: the version from
    /// the last answer about this user (this sink's memory, else `known`
    /// from the state file), read first only when none is known. In PUT
    /// mode, or when the target cannot apply the PATCH (501, or 500 twice
    /// for it) in `auto`, `ours` goes as a PUT instead, and the sink goes on
    /// with PUT.
    pub(super) async fn patch(
        &self,
        ready: &Ready,
        id: &str,
        ops: Vec<Value>,
        known: Option<&str>,
        ours: &Value,
        whole: bool,
    ) -> Result<Wrote, SinkError> {
        if self.put_mode(ready) {
            return self.put_over(ready, id, ours, whole).await;
        }
        let body = json!({"schemas": [PATCH_URN], "Operations": ops});
        let version = self.known_version(id).or(known.map(str::to_string));
        let mut server_errors = 0;
        loop {
            let a = match self
                .write_versioned(ready, Method::PATCH, id, &body, version.clone())
                .await?
            {
                Ok(wrote) => return Ok(wrote),
                Err(a) => a,
            };
            if a.status == 500 {
                server_errors += 1;
            }
            let unapplied = a.status == 501 || server_errors >= 2;
            if self.update == UpdateMode::Auto && unapplied {
                if Learnt::set(&self.learnt.put) {
                    tracing::warn!(
                        sink = "scim",
                        "the SCIM server cannot apply a PATCH ({}); sending changes as PUT from now on",
                        self.failure(&a, "patch")
                    );
                }
                return self.put_over(ready, id, ours, whole).await;
            }
            if a.status != 500 || self.update != UpdateMode::Auto {
                return Err(self.refused(&a, "patch").await);
            }
        }
    }

    /// One write of user `id`; with ETags it carries `If-Match` (read
    /// first when no version is known), and a stale version (412) is read
    /// again, a bounded number of times. A refusal comes back as the
    /// target's answer, for the caller to judge.
    async fn write_versioned(
        &self,
        ready: &Ready,
        method: Method,
        id: &str,
        body: &Value,
        mut version: Option<String>,
    ) -> Result<Result<Wrote, Answer>, SinkError> {
        let etag = ready.target.caps.etag;
        for _ in 0..3 {
            if etag && version.is_none() {
                match self.version(id).await? {
                    Some(v) => version = v,
                    None => return Ok(Ok(Wrote::Gone)),
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
            match a.status {
                200 | 204 => {
                    self.remember(None, id, a.version.as_deref());
                    return Ok(Ok(Wrote::Done(a.version.clone())));
                }
                404 => return Ok(Ok(Wrote::Gone)),
                409 => return Ok(Ok(Wrote::Conflict)),
                412 => version = None,
                _ => return Ok(Err(a)),
            }
        }
        Err(SinkError::Retry {
            reason: "the user kept changing at the SCIM server (412 three times)".into(),
            after: None,
        })
    }
}

impl ScimSink {
    /// A request's path below the base URL, without its query.
    pub(super) fn path_of(&self, url: &url::Url) -> String {
        let base = self.base.path().trim_end_matches('/');
        let path = url.path();
        path.strip_prefix(base)
            .filter(|p| p.starts_with('/'))
            .unwrap_or(path)
            .to_string()
    }

    pub(super) fn failure(&self, a: &Answer, what: &str) -> SinkError {
        let detail = [a.body.get("scimType"), a.body.get("detail")]
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(": ");
        let detail = crate::model::printable(&detail, 300);
        classify(a.status, a.retry_after, &format!("the SCIM server ({what})"), &detail)
    }
}
