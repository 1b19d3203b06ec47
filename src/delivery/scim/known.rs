//! What the sink knows about the target's users without asking: their ids
//! and versions from every answer, and — when a pass starts with many
//! employees to create, or the target cannot be asked by filter — one
//! paged listing of the target's users instead of a lookup per employee.
//! The listing also holds each user's `userName` and e-mail addresses, so
//! employees are matched to users the target already holds from it.
//!
//! Idempotency stays: an employee is created without a lookup only when
//! the listing read at the start of this pass did not have it and this pass
//! has not tried to create it before (a create whose answer was lost is
//! looked up, never sent twice blindly).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::Method;
use serde_json::Value;

use super::{Found, Ready, ScimSink, CORE_URN};
use crate::store::DueSummary;

/// Employees to create in a pass from which a listing may pay.
const LIST_FROM: u64 = 16;
/// Users a listing reads for the cost of one lookup, roughly (a page of
/// 1000 took scim2-server 1.5 s, a lookup 60 ms): a listing is read only
/// when the target holds fewer than this many users per employee to create.
const LISTED_PER_LOOKUP: u64 = 20;
/// Users per listing page when the target does not limit it.
const PAGE: u32 = 1000;

/// A user as the target shows it in a listing or a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Held {
    pub id: String,
    pub external_id: Option<String>,
    pub user_name: Option<String>,
    /// Every `emails.value`, lower-cased.
    pub emails: Vec<String>,
    /// `emails` as the target holds them.
    pub emails_raw: Option<Value>,
    pub version: Option<String>,
    /// `active` as listed; `None` when the target did not say.
    pub active: Option<bool>,
}

impl Held {
    pub fn from_json(v: &Value) -> Option<Held> {
        Some(Held {
            id: v.get("id")?.as_str()?.to_string(),
            external_id: v
                .get("externalId")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            user_name: v.get("userName").and_then(Value::as_str).map(str::to_string),
            emails: v
                .get("emails")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("value").and_then(Value::as_str))
                .map(str::to_lowercase)
                .collect(),
            version: v.pointer("/meta/version").and_then(Value::as_str).map(str::to_string),
            emails_raw: v.get("emails").filter(|e| e.is_array()).cloned(),
            active: v.get("active").and_then(Value::as_bool),
        })
    }

    pub fn found(&self) -> Found {
        Found {
            id: self.id.clone(),
            version: self.version.clone(),
        }
    }
}

/// What the sink learnt about the target in use, beyond what it declares.
#[derive(Default)]
pub(super) struct Learnt {
    /// A lookup or listing with `attributes=` was refused (400).
    pub no_attributes: AtomicBool,
    /// Filtered lookups cannot be trusted: declared unsupported, refused,
    /// or answered with users that do not satisfy the filter.
    pub no_filter: AtomicBool,
    /// A PATCH the target could not apply (501, 500 twice): PUT from now.
    pub put: AtomicBool,
}

impl Learnt {
    pub fn get(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }

    /// Sets `flag`; true when it was not set before (worth a log line).
    pub fn set(flag: &AtomicBool) -> bool {
        !flag.swap(true, Ordering::Relaxed)
    }
}

#[derive(Default)]
pub(super) struct Memory {
    /// externalId → the target's user, from a listing or our own writes.
    users: HashMap<String, Found>,
    /// A complete listing was read when this pass started.
    complete: bool,
    /// Employees whose absence from the listing proves nothing: this pass
    /// tried to create them (and the target did not refuse it), or the
    /// listing had them twice.
    ask: HashSet<String>,
    twice: HashSet<String>,
    /// id → the version the target last answered with.
    versions: HashMap<String, String>,
    /// The listing's users, and where to find them by lower-cased
    /// `userName` and e-mail address.
    held: Vec<Held>,
    by_user_name: HashMap<String, Vec<usize>>,
    by_email: HashMap<String, Vec<usize>>,
    /// target id → the employee that took it over in this process, so two
    /// employees never adopt one user.
    claimed: HashMap<String, String>,
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
            None if m.complete && !m.ask.contains(key) && !m.twice.contains(key) => Known::Absent,
            None => Known::Unknown,
        }
    }

    /// Whether a complete listing of this pass is at hand.
    pub(super) fn listed(&self) -> bool {
        self.memory().complete
    }

    /// Users of the listing whose `userName` (`by_user_name`) or any
    /// e-mail address equals `value`, compared case-insensitively.
    pub(super) fn listed_by(&self, user_name: bool, value: &str) -> Vec<Held> {
        let m = self.memory();
        let index = if user_name { &m.by_user_name } else { &m.by_email };
        index
            .get(&value.to_lowercase())
            .into_iter()
            .flatten()
            .filter_map(|i| m.held.get(*i).cloned())
            .collect()
    }

    /// Records that `key` takes over user `id`; the employee that already
    /// did, when it is another one.
    pub(super) fn claim(&self, id: &str, key: &str) -> Option<String> {
        let mut m = self.memory();
        match m.claimed.get(id) {
            Some(other) if other != key => Some(other.clone()),
            _ => {
                m.claimed.insert(id.to_string(), key.to_string());
                None
            }
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

    /// The pass has delivered (or given up on) every entry of `key`: what
    /// was kept for them goes, but the listing's word on others stays.
    /// Without this, a first import of a million would keep a million ids.
    pub fn chain_done(&self, key: &str) {
        let mut m = self.memory();
        if let Some(f) = m.users.remove(key) {
            m.versions.remove(&f.id);
        }
        m.ask.remove(key);
    }

    pub(super) fn forget_version(&self, id: &str) {
        self.memory().versions.remove(id);
    }

    pub(super) fn trying_to_create(&self, key: &str) {
        self.memory().ask.insert(key.to_string());
    }

    /// The target refused the create (409): it did not happen, so the
    /// listing's word on the employee holds again.
    pub(super) fn not_created(&self, key: &str) {
        self.memory().ask.remove(key);
    }

    /// At the start of a pass: with many employees to create and no id for
    /// them, or a target that cannot be asked by filter, read the target's
    /// users once.
    pub async fn prepare(&self, due: &DueSummary) {
        let to_create = due.to_create;
        {
            let mut m = self.memory();
            m.complete = false;
            m.ask.clear();
            m.twice.clear();
        }
        let Ok(ready) = self.ready().await else { return };
        let must = !self.can_filter(&ready) && due.without_target > 0;
        if to_create < LIST_FROM && !must {
            return;
        }
        let limit = if must {
            u64::MAX
        } else {
            LISTED_PER_LOOKUP.saturating_mul(to_create)
        };
        if let Err(reason) = self.read_listing(&ready, limit).await {
            tracing::info!(
                sink = "scim",
                "listing the target's users failed, looking each up: {reason}"
            );
        }
    }

    /// A complete listing for this pass, read now if there is none: for a
    /// target whose filtered lookups cannot be trusted.
    pub(super) async fn ensure_listing(&self, ready: &Ready) -> Result<(), String> {
        let _one = self.listing.lock().await;
        if self.listed() {
            return Ok(());
        }
        self.read_listing(ready, u64::MAX).await
    }

    /// A complete listing read now, whatever this pass had (the preview).
    pub(super) async fn fresh_listing(&self, ready: &Ready) -> Result<(), String> {
        let _one = self.listing.lock().await;
        self.read_listing(ready, u64::MAX).await
    }

    /// The users of this pass's listing.
    pub(super) fn listed_users(&self) -> Vec<Held> {
        self.memory().held.clone()
    }

    async fn read_listing(&self, ready: &Ready, limit: u64) -> Result<(), String> {
        let page = match ready.target.caps.max_results {
            0 => PAGE,
            n => n.min(PAGE),
        };
        let Some(users) = self.list_users(ready, page, limit).await? else {
            return Ok(());
        };
        let mut m = self.memory();
        m.users.clear();
        m.held.clear();
        m.by_user_name.clear();
        m.by_email.clear();
        let mut twice = HashSet::new();
        for held in users {
            if let Some(v) = &held.version {
                m.versions.insert(held.id.clone(), v.clone());
            }
            let i = m.held.len();
            if let Some(u) = &held.user_name {
                m.by_user_name.entry(u.to_lowercase()).or_default().push(i);
            }
            for e in &held.emails {
                m.by_email.entry(e.clone()).or_default().push(i);
            }
            if let Some(key) = held.external_id.clone() {
                if m.users.insert(key.clone(), held.found()).is_some() {
                    twice.insert(key);
                }
            }
            m.held.push(held);
        }
        for key in twice {
            // Twice at the target: the lookup says so.
            m.users.remove(&key);
            m.twice.insert(key);
        }
        m.complete = true;
        Ok(())
    }

    /// `attributes=` for lookups and listings: what matching needs, of what
    /// the target declares, and `meta.version` only where it has ETags;
    /// `None` once the target refused the parameter.
    pub(super) fn wanted_attributes(&self, ready: &Ready) -> Option<String> {
        if Learnt::get(&self.learnt.no_attributes) {
            return None;
        }
        let core = ready.target.schema(CORE_URN).unwrap_or_default();
        let mut names = vec!["id", "externalId"];
        for a in ["userName", "emails", "active"] {
            if core.iter().any(|x| x.name.eq_ignore_ascii_case(a)) {
                names.push(a);
            }
        }
        if ready.target.caps.etag {
            names.push("meta.version");
        }
        Some(names.join(","))
    }

    /// Whether filtered lookups may be asked of this target.
    pub(super) fn can_filter(&self, ready: &Ready) -> bool {
        ready.target.caps.filter && !Learnt::get(&self.learnt.no_filter)
    }

    /// A GET of `/Users` with `query`, and `attributes=` where the target
    /// takes it: asked once more without it when refused with 400 (and the
    /// sink remembers that). The answer, whatever its status.
    pub(super) async fn get_users(
        &self,
        ready: &Ready,
        query: &[(&str, String)],
        what: &str,
    ) -> Result<super::Answer, super::SinkError> {
        let attributes = self.wanted_attributes(ready);
        let mut with = attributes.is_some();
        let mut refused: Option<String> = None;
        loop {
            let mut url = self.url(&["Users"]);
            {
                let mut q = url.query_pairs_mut();
                for (k, v) in query {
                    q.append_pair(k, v);
                }
                if let (true, Some(a)) = (with, &attributes) {
                    q.append_pair("attributes", a);
                }
            }
            let a = self.send(Method::GET, url, None, None).await?;
            if a.status == 400 && with {
                refused = Some(self.failure(&a, what).to_string());
                with = false;
                continue;
            }
            // Refused only with `attributes=`: the sink leaves it out.
            if let Some(why) = refused.filter(|_| a.status != 400) {
                if Learnt::set(&self.learnt.no_attributes) {
                    tracing::warn!(
                        sink = "scim",
                        "the SCIM server refused `attributes=` ({why}); asking for whole users from now on"
                    );
                }
            }
            return Ok(a);
        }
    }

    /// Every user, page by page; `None` when the target holds more than
    /// `limit` (then a lookup per employee costs fewer requests). Tolerates
    /// a server that caps `count` and one that answers a `startIndex` past
    /// the end with the first page again.
    async fn list_users(&self, ready: &Ready, page: u32, limit: u64) -> Result<Option<Vec<Held>>, String> {
        let mut users = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut start: u64 = 1;
        // A short first page: it tells how many users there are.
        let mut count = page.min(100);
        loop {
            let query = [("startIndex", start.to_string()), ("count", count.to_string())];
            count = page;
            let a = self
                .get_users(ready, &query, "listing")
                .await
                .map_err(|e| e.to_string())?;
            if a.status != 200 {
                return Err(self.failure(&a, "listing").to_string());
            }
            let body = a.body;
            let total = body.get("totalResults").and_then(Value::as_u64);
            if start == 1 && total.is_some_and(|t| t > limit) {
                return Ok(None);
            }
            let resources = body.get("Resources").and_then(Value::as_array);
            let got = resources.map_or(0, Vec::len) as u64;
            let mut new = 0;
            for held in resources.into_iter().flatten().filter_map(Held::from_json) {
                if seen.insert(held.id.clone()) {
                    new += 1;
                    users.push(held);
                }
            }
            start += got;
            // A page shorter than asked may still not be the last (a
            // server's own limit); an empty page, a page of users already
            // read, or the total ends it.
            if got == 0 || new == 0 || total.is_some_and(|t| start > t) {
                // Fewer than the target says it holds: not a listing to
                // call complete (an absent employee would be created twice).
                if let Some(t) = total.filter(|t| (users.len() as u64) < *t) {
                    return Err(format!(
                        "the listing gave {} of the {t} users the target says it holds",
                        users.len()
                    ));
                }
                return Ok(Some(users));
            }
        }
    }
}
