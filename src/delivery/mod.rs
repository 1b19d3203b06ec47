//! Delivery: the outbox worker and the sinks (SCIM, webhook, files).
//!
//! Entries are made in the run's own transaction (see `store`), so nothing
//! committed can be lost. The worker delivers at least once: in order per
//! employee, employees in parallel, with exponential backoff and jitter,
//! honouring `Retry-After`; an entry older than `delivery.max_age_hours` is
//! dead-lettered. Sinks make every operation idempotent, so a repeat after
//! a crash changes nothing at the target.

mod batch;
mod events;
mod fate;
pub mod files;
mod limit;
mod pass;
mod record;
pub mod scim;
mod trail;
pub mod webhook;
mod worker;

pub use events::*;
pub use pass::SAME_REFUSALS_TO_STOP;
pub use record::{DeliveryError, PassReport};
pub use trail::{reason_of, traced};
pub use worker::*;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::model::Employee;
use crate::model::Reason;
use crate::model::RunRecord;
use crate::model::SinkKind;
use crate::model::{Mutation, MutationKind};
use crate::store::{EntryResult, OutboxEntry, OutboxItem, Store, StoreError, TargetRef, TargetUser};

/// Why one delivery did not succeed, and what the worker does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Temporary (5xx, connection): try again later.
    #[error("{reason}")]
    Retry { reason: String, after: Option<Duration> },
    /// The target asks for less (503, a timeout): the sink slows down,
    /// waits `after` when given, and tries again soon.
    #[error("{reason}")]
    Busy { reason: String, after: Option<Duration> },
    /// 429: as [`SinkError::Busy`], and the sink paces its requests.
    #[error("{reason}")]
    Throttled { reason: String, after: Option<Duration> },
    /// This entry can never succeed as it is (400, 409): dead-letter it.
    #[error("{reason}")]
    Permanent { reason: String },
    /// As [`SinkError::Permanent`]: the user the employee matches cannot be
    /// theirs (`class` says why) until someone acts.
    #[error("{reason}")]
    Conflict { reason: String, class: Reason },
    /// The whole sink is unusable (401, 403, 410): stop it for this pass
    /// without spending the entries' attempts.
    #[error("{reason}")]
    Down { reason: String },
}

impl SinkError {
    /// How long the target asked to wait, when it said.
    pub fn after(&self) -> Option<Duration> {
        match self {
            SinkError::Retry { after, .. } | SinkError::Busy { after, .. } | SinkError::Throttled { after, .. } => {
                *after
            }
            _ => None,
        }
    }
}

/// Maps an HTTP answer of a target to a delivery outcome.
pub fn classify(status: u16, after: Option<Duration>, what: &str, detail: &str) -> SinkError {
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    match status {
        401 | 403 => SinkError::Down {
            reason: format!("{what} refused the credentials (HTTP {status}){detail}; check the token or secret file"),
        },
        429 => SinkError::Throttled {
            reason: format!("{what} answered HTTP {status}{detail}"),
            after,
        },
        408 | 503 => SinkError::Busy {
            reason: format!("{what} answered HTTP {status}{detail}"),
            after,
        },
        425 | 500..=599 => SinkError::Retry {
            reason: format!("{what} answered HTTP {status}{detail}"),
            after,
        },
        _ => SinkError::Permanent {
            reason: format!("{what} refused it (HTTP {status}){detail}"),
        },
    }
}

pub fn transport_error(e: &reqwest::Error, what: &str) -> SinkError {
    let reason = format!("cannot reach {what}: {}", crate::net::error_chain(e));
    if e.is_timeout() {
        return SinkError::Busy { reason, after: None };
    }
    SinkError::Retry { reason, after: None }
}

/// One entry, with what it needs to be delivered.
pub type Job = crate::store::QueuedJob;

/// What a delivery learnt about the employee's user at the target.
pub type Delivered = Option<TargetUser>;

/// A delivery target.
pub enum Sink {
    Scim(Box<scim::ScimSink>),
    Webhook(webhook::WebhookSink),
    Files(files::FileSink),
}

impl Sink {
    pub fn kind(&self) -> SinkKind {
        match self {
            Sink::Scim(_) => SinkKind::Scim,
            Sink::Webhook(_) => SinkKind::Webhook,
            Sink::Files(_) => SinkKind::Files,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Which target this sink delivers to (a hash of its URL or
    /// directory): what a sink learnt holds for that target only.
    pub fn target(&self) -> u64 {
        let place = match self {
            Sink::Scim(s) => s.base_url().to_string(),
            Sink::Webhook(s) => s.url().to_string(),
            Sink::Files(s) => s.dir().display().to_string(),
        };
        crate::store::codec::fnv1a(&[self.name().as_bytes(), place.as_bytes()])
    }

    /// Delivers one job; `Ok` carries the target's id for the employee.
    pub async fn deliver(&self, job: &Job) -> Result<Delivered, SinkError> {
        match self {
            Sink::Scim(s) => s.deliver(job).await,
            Sink::Webhook(s) => s.deliver(job).await.map(|()| None),
            Sink::Files(s) => s.deliver(job).await.map(|()| None),
        }
    }

    /// The SCIM sink, for what only it does (Bulk).
    pub fn as_scim(&self) -> Option<&scim::ScimSink> {
        match self {
            Sink::Scim(s) => Some(s),
            _ => None,
        }
    }

    /// An employee's entries of this pass are done with: what the sink
    /// kept to deliver them is let go, so its memory stays with the
    /// chains in flight.
    pub fn chain_done(&self, key: &str) {
        if let Sink::Scim(s) = self {
            s.chain_done(key);
        }
    }

    /// Before a pass delivers what `due` counts: a chance to learn in a
    /// few requests what would otherwise cost one per entry.
    pub async fn prepare(&self, due: &crate::store::DueSummary) {
        if let Sink::Scim(s) = self {
            s.prepare(due).await;
        }
    }
}

/// Builds the configured sinks.
pub fn sinks(config: &Config, store: Arc<Store>) -> Result<Vec<Arc<Sink>>, String> {
    let mut out = Vec::new();
    if let Some(c) = &config.sinks.scim {
        out.push(Arc::new(Sink::Scim(Box::new(scim::ScimSink::new(
            c,
            Some(store.clone()),
        )?))));
    }
    if config.sinks.webhook.is_none() && config.sinks.files.is_none() {
        return Ok(out);
    }
    // Event ids carry it (see `mutation_event_id`).
    let installation = store
        .installation_id()
        .map_err(|e| format!("cannot read the installation id from the state file: {e}"))?;
    if let Some(c) = &config.sinks.webhook {
        out.push(Arc::new(Sink::Webhook(webhook::WebhookSink::new(c, installation)?)));
    }
    if let Some(c) = &config.sinks.files {
        out.push(Arc::new(Sink::Files(files::FileSink::new(c, store, installation))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events are written field by field, not through a `Value`; the bytes
    /// must be what a `Value` prints (keys in alphabetical order), so files
    /// and signatures stay the same as before.
    #[test]
    fn a_mutation_event_prints_as_its_value_does() {
        use crate::model::Decimal;
        use crate::model::{EmailAddress, EmployeeKey, EmploymentPeriod, PrimaryContract};
        let dec = |s: &str| Decimal::parse(s).expect("decimal");
        let date = |s: &str| s.parse::<jiff::civil::Date>().expect("date");
        let key = EmployeeKey::parse("1042").expect("key");
        let e = Employee {
            key: key.clone(),
            email: EmailAddress::parse("j.berg@bedrijf.example").expect("email"),
            first_name: "Jan \"JJ\"".into(),
            prefix: Some("van der".into()),
            last_name: "Berg".into(),
            department: None,
            date_of_birth: Some(date("1990-02-03")),
            employment: EmploymentPeriod::new(date("2020-01-01"), Some(date("2027-06-30"))).expect("period"),
            access: Some(true),
            budgets: [("fiets".to_string(), dec("12.50"))].into_iter().collect(),
            contract: Some(PrimaryContract {
                sequence: "2".into(),
                fte: Some(dec("0.8")),
                hours_per_week: None,
            }),
            pay: crate::model::Pay {
                salary: Some(dec("4100")),
                holiday_allowance_accrual: None,
                holiday_allowance_balance: Some(dec("310.4")),
                leave_hours: [("VAK".to_string(), dec("80")), ("ADV".to_string(), dec("4"))]
                    .into_iter()
                    .collect(),
            },
        };
        for employee in [Some(e), None] {
            let m = Mutation {
                kind: MutationKind::Mover,
                key: key.clone(),
                employee,
                changes: vec![crate::model::Change {
                    field: "last_name".into(),
                    old: "Bergh".into(),
                    new: "Berg".into(),
                }],
                reason: "last_name changed".into(),
            };
            let event = MutationEvent {
                mutation: &m,
                installation: 0xabc,
                run: 7,
                index: 3,
            };
            let direct = serde_json::to_string(&event).expect("json");
            let value = mutation_event(&m, 0xabc, 7, 3);
            assert_eq!(direct, value.to_string());
            assert_eq!(value["type"], "employee.updated");
            assert_eq!(value["id"], "evt_0000000000000abc_7_3");
            assert_eq!(value["changes"][0]["old"], "Bergh");
            if let Some(e) = value.get("employee").filter(|e| !e.is_null()) {
                assert_eq!(e["display_name"], "Jan \"JJ\" van der Berg");
                assert_eq!(e["employment_end"], "2027-06-30");
                assert_eq!(e["leave_hours"]["VAK"], "80");
                assert_eq!(e["fte"], "0.8");
                assert!(e["department"].is_null());
            }
        }
    }
}
