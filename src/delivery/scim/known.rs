//! What the sink knows about the target's users without asking: their ids
//! and versions from every answer, and — when a pass starts with many
//! employees to create — one paged listing of the target's users instead
//! of a lookup per employee.
//!
//! Idempotency stays: an employee is created without a lookup only when
//! the listing read at the start of this pass did not have it and this pass
//! has not tried to create it before (a create whose answer was lost is
//! looked up, never sent twice blindly).

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde_json::Value;

use super::{Found, ScimSink};
use crate::delivery::Job;
use crate::model::MutationKind;

/// Employees to create in a pass from which a listing may pay.
const LIST_FROM: usize = 16;
/// Users a listing reads for the cost of one lookup, roughly (a page of
/// 1000 took scim2-server 1.5 s, a lookup 60 ms): a listing is read only
/// when the target holds fewer than this many users per employee to create.
const LISTED_PER_LOOKUP: u64 = 20;
/// Users per listing page when the target does not limit it.
const PAGE: u32 = 1000;

#[derive(Default)]
pub(super) struct Memory {
    /// externalId → the target's user, from a listing or our own writes.
    users: HashMap<String, Found>,
    /// A complete listing was read when this pass started.
    complete: bool,
    /// Employees whose absence from the listing proves nothing: this pass
    /// tried to create them, or the listing had them twice.
    ask: HashSet<String>,
    /// id → the version the target last answered with.
    versions: HashMap<String, String>,
}

/// What the memory says about an employee's user.
pub(super) enum Known {
    At(Found),
    /// Not at the target (a complete listing of this pass lacks it).
    Absent,
    /// Ask the target.
    Unknown,
}

impl ScimSink {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A poisoned lock only means a task panicked mid-update: the map
        // holds hints that the target corrects (412, 404), never truth.
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn known(&self, key: &str) -> Known {
        let m = self.memory();
        match m.users.get(key) {
            Some(f) => Known::At(Found {
                id: f.id.clone(),
                version: m.versions.get(&f.id).cloned().or_else(|| f.version.clone()),
            }),
            None if m.complete && !m.ask.contains(key) => Known::Absent,
            None => Known::Unknown,
        }
    }

    /// The version to send as `If-Match` for user `id`, if one is known.
    pub(super) fn known_version(&self, id: &str) -> Option<String> {
        self.memory().versions.get(id).cloned()
    }

    pub(super) fn remember(&self, key: Option<&str>, id: &str, version: Option<&str>) {
        let mut m = self.memory();
        if let Some(v) = version {
            m.versions.insert(id.to_string(), v.to_string());
        }
        if let Some(k) = key {
            let version = version.map(str::to_string);
            m.users.insert(
                k.to_string(),
                Found {
                    id: id.to_string(),
                    version,
                },
            );
        }
    }

    pub(super) fn forget(&self, key: &str, id: Option<&str>) {
        let mut m = self.memory();
        m.users.remove(key);
        if let Some(id) = id {
            m.versions.remove(id);
        }
    }

    pub(super) fn forget_version(&self, id: &str) {
        self.memory().versions.remove(id);
    }

    pub(super) fn trying_to_create(&self, key: &str) {
        self.memory().ask.insert(key.to_string());
    }

    /// At the start of a pass: with many employees to create and no id for
    /// them, read the target's users once.
    pub async fn prepare(&self, first: &[&Job]) {
        let to_create = first
            .iter()
            .filter(|j| j.target_id.is_none())
            .filter(|j| {
                j.mutation
                    .as_ref()
                    .is_some_and(|m| matches!(m.kind, MutationKind::Joiner | MutationKind::Rehire))
            })
            .count();
        {
            let mut m = self.memory();
            m.complete = false;
            m.ask.clear();
        }
        if to_create < LIST_FROM {
            return;
        }
        let Ok(ready) = self.ready().await else { return };
        let page = match ready.target.caps.max_results {
            0 => PAGE,
            n => n.min(PAGE),
        };
        match self.list_users(page, to_create).await {
            Ok(Some(users)) => {
                let mut m = self.memory();
                m.users.clear();
                let mut seen = HashSet::new();
                for (key, found) in users {
                    if let Some(v) = &found.version {
                        m.versions.insert(found.id.clone(), v.clone());
                    }
                    if !seen.insert(key.clone()) {
                        // Twice at the target: the lookup says so.
                        m.users.remove(&key);
                        m.ask.insert(key);
                        continue;
                    }
                    m.users.insert(key, found);
                }
                m.complete = true;
            }
            Ok(None) => {}
            Err(reason) => tracing::info!(
                sink = "scim",
                "listing the target's users failed, looking each up: {reason}"
            ),
        }
    }

    /// Every user with an externalId, page by page; `None` when the target
    /// holds so many that a lookup per employee costs fewer requests.
    async fn list_users(&self, page: u32, to_create: usize) -> Result<Option<Vec<(String, Found)>>, String> {
        let mut users = Vec::new();
        let mut start: u64 = 1;
        // A short first page: it tells how many users there are.
        let mut count = page.min(100);
        loop {
            let mut url = self.url(&["Users"]);
            url.query_pairs_mut()
                .append_pair("attributes", "id,externalId,meta.version")
                .append_pair("startIndex", &start.to_string())
                .append_pair("count", &count.to_string());
            count = page;
            let a = self
                .send(Method::GET, url, None, None)
                .await
                .map_err(|e| e.to_string())?;
            if a.status != 200 {
                return Err(self.failure(&a, "listing").to_string());
            }
            let total = a.body.get("totalResults").and_then(Value::as_u64).unwrap_or(0);
            if start == 1 && total > LISTED_PER_LOOKUP * to_create as u64 {
                return Ok(None);
            }
            let resources = a.body.get("Resources").and_then(Value::as_array);
            let got = resources.map_or(0, Vec::len) as u64;
            for r in resources.into_iter().flatten() {
                let (Some(id), Some(key)) = (
                    r.get("id").and_then(Value::as_str),
                    r.get("externalId").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let version = r.pointer("/meta/version").and_then(Value::as_str).map(str::to_string);
                users.push((
                    key.to_string(),
                    Found {
                        id: id.to_string(),
                        version,
                    },
                ));
            }
            start += got;
            // A page shorter than asked may still not be the last (a
            // server's own limit); only an empty page or the total ends it.
            if got == 0 || start > total {
                return Ok(Some(users));
            }
        }
    }
}
