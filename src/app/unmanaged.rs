//! Target users no employee matches — often people who left before
//! afas-sync was installed. `afas-sync unmanaged` lists them; with
//! `sink.scim.unmanaged = "deactivate"` they are deactivated once every
//! change is delivered, as leavers are: within the leaver guards, and
//! above them only on an admin's word (`--deactivate N`, the number seen).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::preview::read_target;
use crate::config::{Config, Unmanaged as Setting};
use crate::delivery::scim::{ScimSink, Unmanaged, LISTED};
use crate::model::Outcome;
use crate::model::SinkKind;
use crate::store::Store;

/// What a look at the target's unmanaged users found and did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sweep {
    /// `sink.scim.unmanaged`: "keep" or "deactivate".
    pub setting: String,
    /// Users at the target no employee matches.
    pub unmanaged: u64,
    /// Of them, the ones active at the target.
    pub active: u64,
    /// How many the leaver guards let go without approval.
    pub limit: u64,
    pub limit_why: String,
    pub deactivated: u64,
    /// Why the active ones were not deactivated (waiting for approval).
    pub held: Option<String>,
    /// Why the target was not looked at now.
    pub skipped: Option<String>,
    /// The target could not be read.
    pub error: Option<String>,
    /// Deactivations the target refused or failed: (user id, why).
    pub failures: Vec<(String, String)>,
    pub failed: u64,
    /// The first [`LISTED`] active unmanaged users.
    pub users: Vec<Unmanaged>,
    /// The setting deactivates them, but more than the guards allow are
    /// there: an admin has to confirm the number.
    pub approval: bool,
    /// `--deactivate N`: the number the admin confirmed.
    pub asked: Option<u64>,
}

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    /// After a delivery: what the setting says (nothing with "keep").
    Setting,
    /// Only list them.
    List,
    /// Deactivate them, confirmed by the number of active ones.
    Deactivate(u64),
}

/// `None` without a SCIM sink, or when the setting keeps them and only
/// the setting was asked.
pub async fn sweep(config: &Config, store: &Arc<Store>, ask: Ask) -> Option<Sweep> {
    let scim = config.sinks.scim.as_ref()?;
    if ask == Ask::Setting && scim.unmanaged == Setting::Keep {
        return None;
    }
    let mut s = Sweep {
        setting: match scim.unmanaged {
            Setting::Keep => "keep",
            Setting::Deactivate => "deactivate",
        }
        .into(),
        asked: match ask {
            Ask::Deactivate(n) => Some(n),
            _ => None,
        },
        ..Sweep::default()
    };
    let sink = match ScimSink::new(scim, Some(store.clone())) {
        Ok(sink) => sink,
        Err(e) => {
            s.error = Some(e);
            return Some(s);
        }
    };
    if ask != Ask::List {
        match not_now(store) {
            Ok(None) => {}
            Ok(Some(why)) => {
                s.skipped = Some(why);
                return Some(s);
            }
            Err(e) => {
                s.error = Some(e);
                return Some(s);
            }
        }
    }
    let (_, all) = match read_target(&sink, store, BTreeMap::new()).await {
        Ok(r) => r,
        Err(e) => {
            s.error = Some(format!("cannot read the SCIM target's users: {e}"));
            return Some(s);
        }
    };
    let active: Vec<Unmanaged> = all.iter().filter(|u| u.active()).cloned().collect();
    let employees = store.employee_counts().map(|(a, _)| a).unwrap_or(0);
    let guards = config.guards.guards();
    s.unmanaged = all.len() as u64;
    s.active = active.len() as u64;
    s.limit = guards.leaver_limit(employees);
    s.limit_why = guards.leaver_limit_why(employees);
    s.users = active.iter().take(LISTED).cloned().collect();
    let rejected = rejected_rows(store, &s, ask);
    s.approval = scim.unmanaged == Setting::Deactivate
        && s.active > 0
        && match ask {
            Ask::Deactivate(n) => n != s.active,
            Ask::Setting | Ask::List => s.active > s.limit || rejected.is_some(),
        };
    s.held = held(&s, ask).or(rejected);
    if s.held.is_none() && ask != Ask::List {
        for u in &active {
            match sink.deactivate_user(&u.id).await {
                Ok(()) => {
                    s.deactivated += 1;
                    tracing::info!(sink = "scim", user = %u.id, "deactivated a target user no employee matches");
                }
                Err(e) => {
                    s.failed += 1;
                    if s.failures.len() < LISTED {
                        s.failures.push((u.id.clone(), e.to_string()));
                    }
                }
            }
        }
    }
    let waiting = if s.approval { s.active } else { 0 };
    crate::metrics::metrics()
        .unmanaged_held
        .get_or_create(&crate::metrics::SinkLabels {
            sink: SinkKind::Scim.name().into(),
        })
        .set(waiting as i64);
    if let Some(why) = s.held.as_ref().filter(|_| s.approval) {
        tracing::warn!(sink = "scim", "{why}");
    }
    Some(s)
}

/// Why the active unmanaged users stay as they are, if they do.
fn held(s: &Sweep, ask: Ask) -> Option<String> {
    let n = s.active;
    match ask {
        _ if n == 0 => None,
        Ask::List if s.setting == "keep" => Some(format!(
            "kept (sink.scim.unmanaged = \"keep\"); `afas-sync unmanaged --deactivate {n}` deactivates them"
        )),
        Ask::List | Ask::Setting if n > s.limit => Some(format!(
            "{n} active target users no employee matches would be deactivated, more than the leaver guards allow ({}; {}): list them with `afas-sync unmanaged`, and deactivate them with `afas-sync unmanaged --deactivate {n}`",
            s.limit, s.limit_why
        )),
        Ask::List => Some(format!(
            "deactivated after the next sync that delivers everything, or now with `afas-sync unmanaged --deactivate {n}`"
        )),
        Ask::Deactivate(asked) if asked != n => Some(format!(
            "asked to deactivate {asked}, but {n} active target users no employee matches are there now; nothing was deactivated: look again with `afas-sync unmanaged`"
        )),
        Ask::Setting | Ask::Deactivate(_) => None,
    }
}

/// An employee whose AFAS row was rejected is in no snapshot, so the
/// user they hold looks unmanaged: while the last run rejected rows, only
/// an admin's word deactivates.
fn rejected_rows(store: &Store, s: &Sweep, ask: Ask) -> Option<String> {
    if ask != Ask::Setting || s.active == 0 {
        return None;
    }
    let runs = store.runs(50).ok()?;
    let last = runs
        .iter()
        .find(|r| matches!(r.outcome, Outcome::Success | Outcome::NothingToDo))?;
    (last.source.rejected > 0).then(|| {
        format!(
            "run {} rejected {} AFAS rows, and an employee among them may hold one of the {} active target users no employee matches: see `afas-sync run show {}`, then fix the rows in AFAS or deactivate them with `afas-sync unmanaged --deactivate {}`",
            last.id, last.source.rejected, s.active, last.id, s.active
        )
    })
}

/// Why deactivating is not safe now: a held plan, or changes the target
/// has not received (a joiner among them may be about to adopt one).
fn not_now(store: &Store) -> Result<Option<String>, String> {
    let plans = store.held_plans().map_err(|e| format!("the state file: {e}"))?;
    if let Some((run, _)) = plans.first() {
        return Ok(Some(format!(
            "run {run} is held for approval: target users no employee matches are looked at once it is decided (`afas-sync plan show {run}`)"
        )));
    }
    let counts = store.outbox_counts().map_err(|e| format!("the state file: {e}"))?;
    match counts.get(SinkKind::Scim.name()) {
        Some(c) if c.pending > 0 => Ok(Some(format!(
            "{} changes still wait for the SCIM target: target users no employee matches are looked at once they are delivered",
            c.pending
        ))),
        _ => Ok(None),
    }
}
