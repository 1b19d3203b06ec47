//! One sync run: fetch → normalize → diff → guards → commit (or hold).
//!
//! The pure parts live in [`plan`] and [`crate::model`]; this module wires
//! them to the AFAS client and the store. A run that fails while fetching
//! changes nothing but its run record; a run that trips a guard stores its
//! plan, exactly as computed, for approval.

mod merge;
mod one;
pub mod plan;
mod read;
pub mod spill;
mod state_metrics;

use merge::*;
pub use one::{one, OneEmployee};
pub use read::*;
pub use state_metrics::*;

use spill::{Sorter, Spooled};

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::civil::Date;
use serde::Serialize;

use crate::afas::decode::Draft;
use crate::afas::rows::Decimal;
use crate::afas::{self, AfasClient, AfasError, ClientOptions, FieldProblem, Source};
use crate::config::Config;
use crate::model::run::now;
pub use crate::model::run::{Outcome, RunRecord};
use crate::model::{Contract, Employee, EmployeeKey, Pay, Rejection};
use crate::store::{Encoded, EncodedWrite, MutationPacker, RunOutcome, Store, StoreError};
use plan::{Baseline, Diff, Judged, MutationKind, Plan, Provisioned, Rules, SourceStats};

/// Rejections kept in a run record; the count is always exact.
const MAX_KEPT_REJECTIONS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Afas(#[from] AfasError),
    #[error("the mapping does not match AFAS: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Fields(Vec<FieldProblem>),
    #[error(transparent)]
    Store(StoreError),
    /// Sorting through temporary files failed (disk full, permissions).
    #[error("sorting the fetched records through temporary files: {0}")]
    Spill(String),
    /// One of the sync's own threads failed or panicked; nothing was
    /// committed.
    #[error("{0}")]
    Thread(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> Self {
        match e {
            // The sync's own failure, carried through a store transaction.
            StoreError::Caller(inner) => match inner.downcast::<SyncError>() {
                Ok(sync) => *sync,
                Err(other) => SyncError::Internal(other.to_string()),
            },
            e => SyncError::Store(e),
        }
    }
}

impl SyncError {
    /// This error, to be carried out of a store transaction.
    pub(crate) fn through_store(self) -> StoreError {
        StoreError::Caller(Box::new(self))
    }
}

/// What a sync did.
#[derive(Debug)]
pub enum SyncResult {
    Committed(RunRecord),
    Held(RunRecord, Vec<String>),
    /// `--dry-run`: the plan and the guards that would trip; nothing stored.
    DryRun(Box<Plan>, Vec<String>),
}

/// The fingerprint of everything that decides who is in scope and what is
/// read: a change forces a held plan (the classic cause of mass offboarding).
/// It must stay the same across versions for an unchanged configuration
/// (`tests/store.rs` syncs the schema-1 fixture with the configuration it
/// was written with), so fields added later are skipped at their default.
pub fn mapping_fingerprint(config: &Config) -> String {
    let text = serde_json::json!({
        "mapping": config.mapping,
        "employees": config.afas.employees,
        "contracts": config.afas.contracts,
        "salary": config.afas.salary,
        "wage_components": config.afas.wage_components,
        "leave": config.afas.leave,
    })
    .to_string();
    format!("{:016x}", crate::store::codec::fnv1a(&[text.as_bytes()]))
}

/// Store work on the blocking pool; a failed task is a [`SyncError::Thread`].
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, SyncError> {
    crate::store::blocking(f, SyncError::Thread).await
}

/// Runs one sync as of `as_of`.
pub async fn run(config: &Config, store: Arc<Store>, as_of: Date, dry_run: bool) -> Result<SyncResult, SyncError> {
    let started = std::time::Instant::now();
    crate::progress::begin_read();
    let result = run_inner(config, store.clone(), as_of, dry_run).await;
    crate::progress::idle();
    if !dry_run {
        match &result {
            Ok(SyncResult::Committed(r)) | Ok(SyncResult::Held(r, _)) => record_metrics(r, started),
            Ok(SyncResult::DryRun(..)) => {}
            Err(_) => {
                let m = crate::metrics::metrics();
                m.runs
                    .get_or_create(&crate::metrics::OutcomeLabels {
                        outcome: "failed".into(),
                    })
                    .inc();
                m.last_run.set(crate::metrics::unix_now_f64());
            }
        }
        let s = store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || refresh_state_metrics(&s)).await {
            tracing::warn!("cannot refresh state metrics: {e}");
        }
    }
    result
}

/// A run that failed before anything was written: its record says why.
async fn record_failed(config: &Config, store: &Arc<Store>, mut record: RunRecord, e: &SyncError) {
    record.outcome = Outcome::Failed;
    record.message = e.to_string();
    record.finished_at = now();
    let s = store.clone();
    let targets = config.sinks.kinds();
    if let Err(store_err) = blocking(move || s.record_run(&record, &targets)).await {
        tracing::error!("could not record the failed run: {store_err}");
    }
}

/// The plan a run would commit, and the guards it would trip; nothing is
/// written.
async fn dry_run_plan(
    store: &Arc<Store>,
    prepared: Prepared,
    guards: crate::model::Guards,
    fingerprint: String,
) -> Result<SyncResult, SyncError> {
    let s = store.clone();
    blocking(move || {
        let fetched = match prepared.input {
            Input::Finished(f) => f,
            Input::Spilled(u) => u.finish(|_| Ok(()))?,
        };
        let plan = plan_of(&s, &fetched, prepared.as_of, &prepared.rules, fingerprint)?;
        let reasons = plan::check_guards(&plan.guard_input(), &guards, &baseline(&s)?);
        Ok(SyncResult::DryRun(Box::new(plan), reasons))
    })
    .await
}

async fn run_inner(config: &Config, store: Arc<Store>, as_of: Date, dry_run: bool) -> Result<SyncResult, SyncError> {
    let id = {
        let s = store.clone();
        blocking(move || s.next_run_id()).await?
    };
    let mut record = RunRecord::new(id, as_of);
    let prepared = match prepare(config, as_of).await {
        Ok(p) => p,
        Err(e) => {
            if !dry_run {
                record_failed(config, &store, record, &e).await;
            }
            return Err(e);
        }
    };
    crate::progress::begin_commit();
    let guards = config.guards.guards();
    let fingerprint = mapping_fingerprint(config);
    if dry_run {
        return dry_run_plan(&store, prepared, guards, fingerprint).await;
    }
    let targets = config.sinks.kinds();
    let s = store.clone();
    let result = blocking(move || {
        let baseline = baseline(&s)?;
        let mut held = Vec::new();
        let mut draft = record.clone();
        let Prepared { input, rules, as_of } = prepared;
        let mut finished: Option<Fetched> = None;
        // The diff goes straight into the run's write transaction; a
        // tripped guard aborts it, and only then is the plan built in
        // memory, to be stored for approval.
        let committed = s.commit_run(record.id, &targets, None, |w| {
            let (active_before, fetched) = merge_into(&s, input, as_of, &rules, w)?;
            let fetched = finished.insert(fetched);
            let input = plan::GuardInput {
                leavers: w.count(MutationKind::Leaver),
                active_before,
                source: &fetched.stats,
                mapping_fingerprint: &fingerprint,
            };
            held = plan::check_guards(&input, &guards, &baseline);
            if !held.is_empty() {
                return Ok(None);
            }
            draft.joiners = w.count(MutationKind::Joiner);
            draft.movers = w.count(MutationKind::Mover);
            draft.leavers = w.count(MutationKind::Leaver);
            draft.rehires = w.count(MutationKind::Rehire);
            draft.source = fetched.stats.clone();
            draft.outcome = if draft.joiners + draft.movers + draft.leavers + draft.rehires == 0 {
                Outcome::NothingToDo
            } else {
                Outcome::Success
            };
            draft.finished_at = now();
            Ok(Some(RunOutcome {
                run: draft.clone(),
                source_rows: fetched.stats.employee_rows,
                mapping_fingerprint: fingerprint.clone(),
            }))
        })?;
        if let Some(run) = committed {
            return Ok(SyncResult::Committed(run));
        }
        // A guard tripped, so the diff ran to its end and `finished` is set.
        let fetched = finished
            .ok_or_else(|| SyncError::Internal("the fetched records were not finished".into()).through_store())?;
        let plan = plan_of(&s, &fetched, as_of, &rules, fingerprint)?;
        record.fill_counts(&plan);
        record.finished_at = now();
        record.outcome = Outcome::Held;
        record.message = held.join("; ");
        s.hold(&record, &plan, &targets)?;
        Ok(SyncResult::Held(record, held))
    })
    .await?;
    let committed = match result {
        SyncResult::Committed(r) => r,
        SyncResult::Held(r, reasons) => {
            tracing::warn!(run = id, "sync held for approval: {}", r.message);
            return Ok(SyncResult::Held(r, reasons));
        }
        other => return Ok(other),
    };
    let retention = config.retention.clone();
    let s = store.clone();
    // Retention counts from the real day: `--as-of 2035-01-01` computes a
    // plan for that day, it does not age the history.
    let day = as_of.min(today(config));
    let purged = blocking(move || s.purge(day, retention.history_days, retention.leaver_personal_data_days)).await?;
    if purged.runs > 0 || purged.scrubbed_leavers > 0 {
        tracing::info!(runs = purged.runs, leavers = purged.scrubbed_leavers, "retention purge");
    }
    tracing::info!(
        run = committed.id,
        outcome = committed.outcome.as_str(),
        joiners = committed.joiners,
        movers = committed.movers,
        leavers = committed.leavers,
        rehires = committed.rehires,
        rejected = committed.source.rejected,
        "sync committed"
    );
    Ok(SyncResult::Committed(committed))
}

/// "Today" in the configured time zone: the day hire and termination dates
/// are compared with, and retention counts from.
pub fn today(config: &Config) -> Date {
    let tz = jiff::tz::TimeZone::get(&config.schedule.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Zoned::now().with_time_zone(tz).date()
}

/// The committed state the guards compare a run with.
fn baseline(store: &Store) -> Result<Baseline, StoreError> {
    let meta = store.meta()?;
    Ok(Baseline {
        source_rows: meta.source_rows,
        mapping_fingerprint: meta.mapping_fingerprint,
    })
}

/// A run's input: the fetched rows and the rules to diff them with.
struct Prepared {
    input: Input,
    rules: Rules,
    as_of: Date,
}

async fn prepare(config: &Config, as_of: Date) -> Result<Prepared, SyncError> {
    let opts = ClientOptions::from_config(&config.afas)?;
    let client = AfasClient::new(opts)?;
    let input = read(config, &client, as_of).await?;
    if input.unkeyed() > 0 {
        tracing::warn!(
            rows = input.unkeyed(),
            "rows without a readable key were rejected; missing employees are not counted as absent this run"
        );
    }
    let rules = Rules {
        lead_days: config.sync.lead_days,
        absent_runs_for_leaver: config.sync.absent_runs_before_leaver,
        ignore_absences: input.unkeyed() > 0,
    };
    // Finishing comes first when the fetched rows fit in memory; see
    // `merge_into` for why. Here, on the thread that fetched them: on
    // another thread glibc's malloc kept the rows' freed memory apart from
    // the finished set's, +11 MiB at the peak of a 100k first import.
    let input = if input.spilled == 0 {
        // This runs on the caller's task: a bug that panics here fails the
        // run, as one in the diff's or the writer's thread does, instead
        // of taking the daemon's loop down with it.
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| input.finish(|_| Ok(()))))
            .map_err(|_| SyncError::Thread("the thread finishing the fetched records panicked".into()))??;
        Input::Finished(finished)
    } else {
        Input::Spilled(Box::new(input))
    };
    Ok(Prepared { input, rules, as_of })
}

/// Applies a held plan exactly as it was computed, once. Refused when the
/// snapshot has moved on since.
pub fn approve(config: &Config, store: &Store, run_id: u64) -> Result<RunRecord, StoreError> {
    let plan = store.held_plan(run_id)?;
    let mut record = store.run(run_id)?;
    record.outcome = if plan.mutations.is_empty() {
        Outcome::NothingToDo
    } else {
        Outcome::Success
    };
    record.message = format!("held plan approved at {}", now());
    record.finished_at = now();
    store.commit(record, &plan, &config.sinks.kinds(), Some(run_id))
}
