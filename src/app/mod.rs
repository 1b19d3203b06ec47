//! The service layer: typed requests on the state file and their typed
//! answers. The CLI (on the terminal, or through the daemon's control
//! socket) and the daemon's own scheduler call [`handle`]; only the CLI
//! turns an answer into text or JSON and an exit code.

mod on_demand;
pub mod outbox;
mod preview;
pub mod unmanaged;

pub use on_demand::OneReport;
pub use outbox::{EmployeeAtSink, EntryLine, EntryStory, Group, OutboxList};
pub use unmanaged::{Ask, Sweep};

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::model::{Mutation, Outcome, Plan, Provisioned, RunRecord};
use crate::store::{EntryFilter, OutboxCounts, ReasonTally, Store, StoreError};
use crate::sync::{self, SyncResult};

/// A request on the state file, as the CLI and the control socket carry it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Sync {
        as_of: Option<jiff::civil::Date>,
        dry_run: bool,
    },
    /// One employee on demand: only their rows read, their change alone
    /// committed as a run of its own. A request of its own (not a field of
    /// `sync`), so a daemon of an earlier release refuses it instead of
    /// running a whole sync.
    SyncEmployee {
        as_of: Option<jiff::civil::Date>,
        dry_run: bool,
        key: String,
    },
    Status,
    History {
        limit: usize,
    },
    RunShow {
        run: u64,
    },
    Employee {
        key: String,
    },
    PlanShow {
        run: Option<u64>,
    },
    PlanApprove {
        run: u64,
    },
    PlanReject {
        run: u64,
    },
    Forget {
        key: String,
    },
    Export {
        csv: bool,
    },
    /// A tag of its own for the same reason: an earlier daemon would
    /// drop the filters it does not know and queue everything.
    #[serde(rename = "outbox_retry_where")]
    OutboxRetry {
        #[serde(flatten)]
        filter: EntryFilter,
    },
    OutboxList {
        #[serde(flatten)]
        filter: EntryFilter,
        limit: usize,
    },
    OutboxShow {
        seq: u64,
    },
    /// The target's users no employee matches; with `deactivate`, the
    /// number of active ones the admin saw and wants deactivated.
    Unmanaged {
        deactivate: Option<u64>,
    },
}

/// What delivering the outbox after a command did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub pending: u64,
    /// Sinks that stopped, with why.
    pub down: Vec<(String, String)>,
    /// Dead-lettered entries in all, after the delivery.
    pub dead_total: u64,
    /// Delivery could not run at all (sinks not set up, the state file).
    pub failed: Option<String>,
    /// What `sink.scim.unmanaged = "deactivate"` did after everything
    /// was delivered.
    #[serde(default)]
    pub unmanaged: Option<Sweep>,
    /// What is dead or waiting after the delivery, per sink and reason.
    #[serde(default)]
    pub reasons: Vec<(String, ReasonTally)>,
}

impl Delivery {
    pub fn complete(&self) -> bool {
        self.failed.is_none() && self.pending == 0 && self.dead_total == 0
    }
}

/// A held plan with why it was held.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldPlan {
    pub run: u64,
    pub why: String,
    pub plan: Plan,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub store: String,
    pub active: u64,
    pub left: u64,
    pub last_run: Option<RunRecord>,
    pub last_success: Option<RunRecord>,
    pub held_plans: Vec<u64>,
    pub outbox: BTreeMap<String, OutboxCounts>,
    /// What this process is doing now (a daemon mid-run or mid-delivery).
    #[serde(default)]
    pub now: Option<crate::progress::Snapshot>,
}

/// The answer to a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    DryRun {
        plan: Box<Plan>,
        guards: Vec<String>,
        /// What delivery would do with the SCIM target's users.
        #[serde(default)]
        takeover: Option<crate::delivery::scim::Takeover>,
        #[serde(default)]
        takeover_error: Option<String>,
    },
    Synced {
        run: RunRecord,
        delivery: Option<Delivery>,
    },
    /// The sync failed and changed nothing; earlier runs' deliveries still
    /// went out.
    SyncFailed {
        error: String,
        delivery: Option<Delivery>,
    },
    Status(StatusReport),
    History {
        runs: Vec<RunRecord>,
    },
    RunShow {
        run: RunRecord,
        mutations: Vec<Mutation>,
    },
    Employee {
        current: Option<Provisioned>,
        history: Vec<(u64, Mutation)>,
        /// Where the employee stands at each configured sink.
        #[serde(default)]
        sinks: Vec<EmployeeAtSink>,
    },
    Plans {
        plans: Vec<HeldPlan>,
    },
    Approved {
        run: RunRecord,
        delivery: Option<Delivery>,
    },
    Rejected {
        run: u64,
    },
    Forgotten {
        key: String,
    },
    /// The end of an export; its rows went to the caller one by one.
    Exported {
        rows: u64,
    },
    Requeued {
        entries: u64,
    },
    OutboxList(OutboxList),
    OutboxEntry(Box<EntryStory>),
    Unmanaged(Sweep),
    /// `sync --employee KEY`: every step for one employee.
    OneEmployee(Box<on_demand::OneReport>),
}

/// Why a request failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Store(String),
    #[error("no employee with key {0} in the state file")]
    NoEmployee(String),
    /// A sync of one employee that could not be done (AFAS, the key).
    #[error("{0}")]
    Sync(String),
    /// A control-socket request that could not be read.
    #[error("{0}")]
    Request(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        AppError::Store(e.to_string())
    }
}

/// Whether `sync` and `plan approve` deliver the outbox before answering
/// (for up to `delivery.sync_wait_secs`): the commands do, the daemon's
/// scheduled runs leave it to the delivery worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliver {
    Wait,
    Leave,
}

/// "Today" in the configured time zone: the day hire and termination dates
/// are compared with.
pub fn today(config: &Config) -> jiff::civil::Date {
    sync::today(config)
}

/// Runs one request. `row` receives an export's rows as they are read, so
/// a snapshot of any size is never held whole.
pub async fn handle(
    config: &Config,
    store: &Arc<Store>,
    req: &Request,
    deliver: Deliver,
    row: &mut (dyn FnMut(&Provisioned) + Send),
) -> Result<Reply, AppError> {
    match req {
        Request::SyncEmployee { as_of, dry_run, key } => {
            let as_of = as_of.unwrap_or_else(|| today(config));
            on_demand::one(config, store, key, as_of, *dry_run, deliver).await
        }
        Request::Sync { as_of, dry_run } => Ok(sync_now(config, store, *as_of, *dry_run, deliver).await),
        Request::Status => status(store),
        Request::History { limit } => Ok(Reply::History {
            runs: store.runs(*limit)?,
        }),
        Request::RunShow { run } => Ok(Reply::RunShow {
            run: store.run(*run)?,
            mutations: store.run_mutations(*run)?,
        }),
        Request::Employee { key } => match store.employee(key)? {
            (None, h) if h.is_empty() => Err(AppError::NoEmployee(key.clone())),
            (current, history) => Ok(Reply::Employee {
                current,
                history,
                sinks: outbox::employee(config, store, key)?,
            }),
        },
        Request::PlanShow { run } => {
            let plans = match run {
                Some(id) => vec![(*id, store.held_plan(*id)?)],
                None => store.held_plans()?,
            };
            let plans = plans
                .into_iter()
                .map(|(run, plan)| HeldPlan {
                    run,
                    why: store.run(run).map(|r| r.message).unwrap_or_default(),
                    plan,
                })
                .collect();
            Ok(Reply::Plans { plans })
        }
        Request::PlanApprove { run } => {
            let run = sync::approve(config, store, *run)?;
            let delivery = match deliver {
                Deliver::Wait => deliver_and_sweep(config, store).await,
                Deliver::Leave => None,
            };
            Ok(Reply::Approved { run, delivery })
        }
        Request::PlanReject { run } => {
            store.reject_held(*run)?;
            Ok(Reply::Rejected { run: *run })
        }
        Request::Forget { key } => match store.forget(key)? {
            true => Ok(Reply::Forgotten { key: key.clone() }),
            false => Err(AppError::NoEmployee(key.clone())),
        },
        Request::Export { .. } => export(store, row),
        Request::OutboxRetry { filter } => Ok(Reply::Requeued {
            entries: store.outbox_retry(filter, jiff::Timestamp::now().as_second())?,
        }),
        Request::OutboxList { filter, limit } => Ok(Reply::OutboxList(outbox::list(store, filter, *limit)?)),
        Request::OutboxShow { seq } => Ok(Reply::OutboxEntry(Box::new(outbox::show(store, *seq)?))),
        Request::Unmanaged { deactivate } => {
            let ask = deactivate.map(Ask::Deactivate).unwrap_or(Ask::List);
            match unmanaged::sweep(config, store, ask).await {
                Some(s) => Ok(Reply::Unmanaged(s)),
                None => Err(AppError::Request("no SCIM sink is configured ([sink.scim])".into())),
            }
        }
    }
}

/// The snapshot, one employee at a time, straight from the store (at 100k
/// the whole snapshot in memory took over 100 MiB). Blocking: the daemon
/// runs it on a thread of its own.
pub fn export(store: &Store, row: &mut (dyn FnMut(&Provisioned) + Send)) -> Result<Reply, AppError> {
    let mut rows = 0;
    store.scan_snapshot(|p| {
        row(&p);
        rows += 1;
        Ok(())
    })?;
    Ok(Reply::Exported { rows })
}

async fn sync_now(
    config: &Config,
    store: &Arc<Store>,
    as_of: Option<jiff::civil::Date>,
    dry_run: bool,
    deliver: Deliver,
) -> Reply {
    let as_of = as_of.unwrap_or_else(|| today(config));
    let result = sync::run(config, store.clone(), as_of, dry_run).await;
    let delivery = || async {
        match deliver {
            Deliver::Wait => deliver_outbox(config, store, true).await,
            Deliver::Leave => None,
        }
    };
    match result {
        Ok(SyncResult::DryRun(plan, guards)) => {
            let (takeover, takeover_error) = match preview::takeover(config, store, &plan).await {
                None => (None, None),
                Some(Ok(t)) => (Some(t), None),
                Some(Err(e)) => (None, Some(e)),
            };
            Reply::DryRun {
                plan,
                guards,
                takeover,
                takeover_error,
            }
        }
        Ok(SyncResult::Committed(run)) => Reply::Synced {
            run,
            delivery: match deliver {
                Deliver::Wait => deliver_and_sweep(config, store).await,
                Deliver::Leave => None,
            },
        },
        Ok(SyncResult::Held(run, _)) => Reply::Synced {
            run,
            delivery: delivery().await,
        },
        // Earlier runs' deliveries still go out.
        Err(e) => Reply::SyncFailed {
            error: e.to_string(),
            delivery: delivery().await,
        },
    }
}

fn status(store: &Store) -> Result<Reply, AppError> {
    let (active, all) = store.employee_counts()?;
    let runs = store.runs(50)?;
    let last_success = runs
        .iter()
        .find(|r| matches!(r.outcome, Outcome::Success | Outcome::NothingToDo))
        .cloned();
    Ok(Reply::Status(StatusReport {
        store: store.path().display().to_string(),
        active,
        left: all.saturating_sub(active),
        last_run: runs.into_iter().next(),
        last_success,
        held_plans: store.held_plans()?.into_iter().map(|(id, _)| id).collect(),
        outbox: store.outbox_counts()?,
        now: Some(crate::progress::snapshot()).filter(|p| p.phase != crate::progress::Phase::Idle),
    }))
}

/// Delivers the outbox, then looks at the target's unmanaged users when
/// everything went out (a sweep skips itself while changes wait).
async fn deliver_and_sweep(config: &Config, store: &Arc<Store>) -> Option<Delivery> {
    let mut d = deliver_outbox(config, store, true).await?;
    if d.failed.is_none() {
        d.unmanaged = unmanaged::sweep(config, store, Ask::Setting).await;
    }
    Some(d)
}

/// Delivers the outbox for up to `delivery.sync_wait_secs`; `force` first
/// tries every pending entry, backoff or not (a whole sync does). `None`
/// when no sink is configured.
pub async fn deliver_outbox(config: &Config, store: &Arc<Store>, force: bool) -> Option<Delivery> {
    let sinks = match crate::delivery::sinks(config, store.clone()) {
        Ok(s) if s.is_empty() => return None,
        Ok(s) => s,
        Err(e) => {
            return Some(Delivery {
                failed: Some(format!("cannot set up delivery: {e}")),
                ..Delivery::default()
            })
        }
    };
    let wait = std::time::Duration::from_secs(config.delivery.sync_wait_secs);
    // This command's passes share what they learn about each target.
    let limiters = crate::delivery::Limiters::default();
    match crate::delivery::deliver_until_done(config, store, &sinks, &limiters, wait, force).await {
        Ok(r) => {
            let counts = store.outbox_counts().unwrap_or_default();
            Some(Delivery {
                delivered: r.delivered,
                retried: r.retried,
                dead_lettered: r.dead_lettered,
                pending: r.pending,
                down: r.down,
                dead_total: counts.values().map(|c| c.dead).sum(),
                failed: None,
                unmanaged: None,
                reasons: counts
                    .into_iter()
                    .flat_map(|(s, c)| c.reasons.into_iter().map(move |t| (s.clone(), t)))
                    .collect(),
            })
        }
        Err(e) => Some(Delivery {
            failed: Some(format!("delivery failed: {e}")),
            ..Delivery::default()
        }),
    }
}
