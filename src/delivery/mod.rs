//! Delivery: the outbox worker and the sinks (SCIM, webhook, files).
//!
//! Entries are made in the run's own transaction (see `store`), so nothing
//! committed can be lost. The worker delivers at least once: in order per
//! employee, employees in parallel, with exponential backoff and jitter,
//! honouring `Retry-After`; an entry older than `delivery.max_age_hours` is
//! dead-lettered. Sinks make every operation idempotent, so a repeat after
//! a crash changes nothing at the target.

pub mod files;
pub mod scim;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::model::Employee;
use crate::store::{EntryResult, OutboxEntry, OutboxItem, Store, StoreError};
use crate::sync::plan::{Mutation, MutationKind};
use crate::sync::RunRecord;

/// Why one delivery did not succeed, and what the worker does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Temporary (timeouts, 429, 5xx, connection): try again later.
    #[error("{reason}")]
    Retry { reason: String, after: Option<Duration> },
    /// This entry can never succeed as it is (400, 409): dead-letter it.
    #[error("{reason}")]
    Permanent { reason: String },
    /// The whole sink is unusable (401, 403, 410): stop it for this pass
    /// without spending the entries' attempts.
    #[error("{reason}")]
    Down { reason: String },
}

/// One entry, with what it needs to be delivered.
#[derive(Debug, Clone)]
pub struct Job {
    pub seq: u64,
    pub entry: OutboxEntry,
    pub mutation: Option<Mutation>,
    pub run: Option<RunRecord>,
    /// The target's id for this employee, from an earlier delivery.
    pub target_id: Option<String>,
}

/// A delivery target.
pub enum Sink {
    Scim(Box<scim::ScimSink>),
    Webhook(webhook::WebhookSink),
    Files(files::FileSink),
}

impl Sink {
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Scim(_) => "scim",
            Sink::Webhook(_) => "webhook",
            Sink::Files(_) => "files",
        }
    }

    /// Delivers one job; `Ok` carries the target's id for the employee.
    pub async fn deliver(&self, job: &Job) -> Result<Option<String>, SinkError> {
        match self {
            Sink::Scim(s) => s.deliver(job).await,
            Sink::Webhook(s) => s.deliver(job).await.map(|()| None),
            Sink::Files(s) => s.deliver(job).await.map(|()| None),
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
    if let Some(c) = &config.sinks.webhook {
        out.push(Arc::new(Sink::Webhook(webhook::WebhookSink::new(c)?)));
    }
    if let Some(c) = &config.sinks.files {
        out.push(Arc::new(Sink::Files(files::FileSink::new(c, store))));
    }
    Ok(out)
}

pub fn kind_event(kind: MutationKind) -> &'static str {
    match kind {
        MutationKind::Joiner => "employee.joined",
        MutationKind::Mover => "employee.updated",
        MutationKind::Leaver => "employee.left",
        MutationKind::Rehire => "employee.rehired",
    }
}

/// The employee as JSON, as webhooks, files and `--json` output show it.
/// An employee as events and `export` show it.
pub fn employee_json(e: &Employee) -> Value {
    // Cannot fail: string keys, text and integers only.
    serde_json::to_value(EmployeeJson(e)).unwrap_or(Value::Null)
}

/// An employee as events show it. Written field by field, in the
/// alphabetical order a `serde_json::Value` object prints, straight into
/// the output: building a `Value` per event was a third of a 10k first
/// import's instructions once the file sink wrote every joiner.
struct EmployeeJson<'a>(&'a Employee);

/// Decimals as strings, in key order.
struct DecimalMap<'a>(&'a BTreeMap<String, crate::afas::rows::Decimal>);

impl serde::Serialize for DecimalMap<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, DecimalText(*v))))
    }
}

/// A decimal as its text, written straight into the output.
struct DecimalText(crate::afas::rows::Decimal);

impl serde::Serialize for DecimalText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl serde::Serialize for EmployeeJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.0;
        use crate::model::day::Day;
        let text = |d: Option<jiff::civil::Date>| d.map(Day);
        let dec = |d: Option<crate::afas::rows::Decimal>| d.map(DecimalText);
        let mut m = s.serialize_map(Some(17))?;
        m.serialize_entry("access", &e.access)?;
        m.serialize_entry("budgets", &DecimalMap(&e.budgets))?;
        m.serialize_entry("date_of_birth", &text(e.date_of_birth))?;
        m.serialize_entry("department", &e.department)?;
        m.serialize_entry("display_name", &e.display_name())?;
        m.serialize_entry("email", e.email.as_str())?;
        m.serialize_entry("employment_end", &text(e.employment.end))?;
        m.serialize_entry("employment_start", &Day(e.employment.start))?;
        m.serialize_entry("first_name", &e.first_name)?;
        m.serialize_entry("fte", &dec(e.contract.as_ref().and_then(|c| c.fte)))?;
        m.serialize_entry("holiday_allowance_accrual", &dec(e.pay.holiday_allowance_accrual))?;
        m.serialize_entry("holiday_allowance_balance", &dec(e.pay.holiday_allowance_balance))?;
        m.serialize_entry("key", e.key.as_str())?;
        m.serialize_entry("last_name", &e.last_name)?;
        m.serialize_entry("leave_hours", &DecimalMap(&e.pay.leave_hours))?;
        m.serialize_entry("prefix", &e.prefix)?;
        m.serialize_entry("salary", &dec(e.pay.salary))?;
        m.end()
    }
}

/// The event for one mutation, serialized as [`mutation_event`] shows it.
pub struct MutationEvent<'a> {
    pub mutation: &'a Mutation,
    pub run: u64,
    pub index: u32,
}

impl serde::Serialize for MutationEvent<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Changes<'a>(&'a [crate::sync::plan::Change]);
        impl serde::Serialize for Changes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                struct One<'a>(&'a crate::sync::plan::Change);
                impl serde::Serialize for One<'_> {
                    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                        let mut m = s.serialize_map(Some(3))?;
                        m.serialize_entry("field", &self.0.field)?;
                        m.serialize_entry("new", &self.0.new)?;
                        m.serialize_entry("old", &self.0.old)?;
                        m.end()
                    }
                }
                s.collect_seq(self.0.iter().map(One))
            }
        }
        let m = self.mutation;
        let mut out = s.serialize_map(Some(7))?;
        out.serialize_entry("changes", &Changes(&m.changes))?;
        out.serialize_entry("employee", &m.employee.as_ref().map(EmployeeJson))?;
        out.serialize_entry("id", &mutation_event_id(self.run, self.index))?;
        out.serialize_entry("key", m.key.as_str())?;
        out.serialize_entry("reason", &m.reason)?;
        out.serialize_entry("run", &self.run)?;
        out.serialize_entry("type", kind_event(m.kind))?;
        out.end()
    }
}

/// A stable event id: the same on every retry of the same entry.
pub fn mutation_event_id(run: u64, index: u32) -> String {
    format!("evt_{run}_{index}")
}

/// The event for one mutation (webhook body `data`, file sink line).
pub fn mutation_event(m: &Mutation, run: u64, index: u32) -> Value {
    // Cannot fail, as above.
    serde_json::to_value(MutationEvent {
        mutation: m,
        run,
        index,
    })
    .unwrap_or(Value::Null)
}

pub fn run_event_type(r: &RunRecord) -> &'static str {
    match r.outcome {
        crate::sync::Outcome::Held => "sync.held",
        crate::sync::Outcome::Failed | crate::sync::Outcome::Rejected => "sync.failed",
        crate::sync::Outcome::Success | crate::sync::Outcome::NothingToDo => "sync.completed",
    }
}

pub fn run_event(r: &RunRecord) -> Value {
    json!({
        "id": format!("evt_{}_run", r.id),
        "type": run_event_type(r),
        "run": r.id,
        "as_of": r.as_of.to_string(),
        "outcome": r.outcome.as_str(),
        "message": r.message,
        "joiners": r.joiners, "movers": r.movers, "leavers": r.leavers, "rehires": r.rehires,
        "rows": r.source.employee_rows, "rejected": r.source.rejected,
    })
}

/// What a pass over the outbox did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    /// Sinks that stopped this pass, with why.
    pub down: Vec<(String, String)>,
    /// Entries still pending (not dead) after the pass.
    pub pending: u64,
    /// The earliest `next_at` among pending entries.
    pub next_due: Option<i64>,
}

/// Exponential backoff with full jitter: 30 s doubling to 1 h.
fn backoff(attempts: u32, jitter: u64) -> i64 {
    let cap = 30i64.saturating_mul(1i64 << attempts.min(7)).min(3600);
    let half = cap / 2;
    half + (jitter % (half as u64 + 1)) as i64
}

/// Different employees refused in a row with the same answer before the
/// sink counts as refusing everything (a schema or mapping the target does
/// not take), rather than as that many bad entries.
pub const SAME_REFUSALS_TO_STOP: u32 = 3;

/// The refusals of one pass, in the order they came.
#[derive(Default)]
struct Refusals {
    last: Option<String>,
    in_a_row: u32,
    /// The refusal that stopped the sink.
    stopped_on: Option<String>,
}

impl Refusals {
    /// Counts one refusal; true when it stops the sink.
    fn refused(&mut self, reason: &str) -> bool {
        if self.last.as_deref() == Some(reason) {
            self.in_a_row += 1;
        } else {
            self.last = Some(reason.to_string());
            self.in_a_row = 1;
        }
        if self.in_a_row >= SAME_REFUSALS_TO_STOP && self.stopped_on.is_none() {
            self.stopped_on = Some(reason.to_string());
        }
        self.stopped_on.as_deref() == Some(reason)
    }

    fn delivered(&mut self) {
        self.last = None;
        self.in_a_row = 0;
    }
}

/// What one task did with one entry.
enum Handled {
    Result(u64, EntryResult),
    /// Refused as it is (4xx): dead-lettered, unless the same refusal
    /// stopped the sink.
    Refused(u64, OutboxEntry, String),
}

fn jitter_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// One pass over every sink's due entries at time `now` (Unix seconds; the
/// tests pass a simulated clock). `force` tries every pending entry now,
/// backoff or not: each sync run gives the outbox one full attempt.
pub async fn deliver_pass(
    config: &Config,
    store: &Arc<Store>,
    sinks: &[Arc<Sink>],
    now: i64,
    force: bool,
) -> Result<PassReport, StoreError> {
    let (_keep, never) = tokio::sync::watch::channel(false);
    deliver_pass_until(config, store, sinks, now, force, never).await
}

/// [`deliver_pass`] that stops as soon as `stop` turns true (SIGTERM): no
/// new entry is started, requests in flight are dropped (their entries stay
/// pending and are sent again, idempotently, by the next process), and what
/// was delivered is recorded before it returns.
pub async fn deliver_pass_until(
    config: &Config,
    store: &Arc<Store>,
    sinks: &[Arc<Sink>],
    now: i64,
    force: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<PassReport, StoreError> {
    let mut report = PassReport::default();
    for sink in sinks {
        if *stop.borrow() {
            break;
        }
        let name = sink.name();
        let jobs = {
            let s = store.clone();
            tokio::task::spawn_blocking(move || load_jobs(&s, name))
                .await
                .map_err(|e| StoreError::Redb(e.to_string()))??
        };
        // Chains per employee, in outbox order.
        let mut chains: BTreeMap<String, Vec<Job>> = BTreeMap::new();
        for job in jobs {
            if job.entry.dead {
                continue;
            }
            chains
                .entry(job.entry.item.order_key().to_string())
                .or_default()
                .push(job);
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(config.delivery.parallelism as usize));
        let max_age = (config.delivery.max_age_hours * 3600) as i64;
        let mut tasks = tokio::task::JoinSet::new();
        let mut done_early: Vec<Handled> = Vec::new();
        let down = Arc::new(std::sync::Mutex::new(None::<String>));
        let refusals = Arc::new(std::sync::Mutex::new(Refusals::default()));
        // Run events ("sync.completed" …) go after the employee events of
        // the same pass, so a receiver sees the run's changes first.
        let run_chain = chains.remove("");
        let mut ordered: Vec<Vec<Job>> = chains.into_values().collect();
        ordered.extend(run_chain);
        let last = ordered.len();
        for (i, chain) in ordered.into_iter().enumerate() {
            if chain.first().is_none_or(|j| !force && j.entry.next_at > now) {
                // The first entry is waiting; later ones wait behind it.
                continue;
            }
            let is_run_chain = i + 1 == last && chain.first().is_some_and(|j| j.entry.item.order_key().is_empty());
            if is_run_chain {
                // Wait for the employee chains already started.
                while let Some(r) = tasks.join_next().await {
                    done_early.extend(r.map_err(|e| StoreError::Redb(format!("delivery task: {e}")))?);
                }
            }
            let sink = sink.clone();
            let permits = permits.clone();
            let down = down.clone();
            let refusals = refusals.clone();
            let mut stop = stop.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let mut results = Vec::new();
                for job in chain {
                    if down.lock().map(|d| d.is_some()).unwrap_or(true) || *stop.borrow() {
                        break;
                    }
                    let delivered = tokio::select! {
                        r = sink.deliver(&job) => r,
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    match delivered {
                        Ok(id) => {
                            let target_id = match (&job.entry.item, id) {
                                (OutboxItem::Mutation { key, .. }, Some(id)) => Some((key.clone(), id)),
                                _ => None,
                            };
                            if let Ok(mut r) = refusals.lock() {
                                r.delivered();
                            }
                            results.push(Handled::Result(job.seq, EntryResult::Done { target_id }));
                        }
                        Err(SinkError::Down { reason }) => {
                            if let Ok(mut d) = down.lock() {
                                d.get_or_insert(reason);
                            }
                            break;
                        }
                        Err(SinkError::Permanent { reason }) => {
                            let stops = refusals.lock().map(|mut r| r.refused(&reason)).unwrap_or(false);
                            results.push(Handled::Refused(job.seq, job.entry.clone(), reason.clone()));
                            if stops {
                                if let Ok(mut d) = down.lock() {
                                    d.get_or_insert(format!("the {name} target refuses every change: {reason}"));
                                }
                                break;
                            }
                        }
                        Err(SinkError::Retry { reason, after }) => {
                            let mut e = job.entry.clone();
                            e.attempts += 1;
                            let wait = after
                                .map(|d| d.as_secs() as i64)
                                .unwrap_or_else(|| backoff(e.attempts, jitter_seed()));
                            e.next_at = now + wait.max(1);
                            e.last_error = Some(reason);
                            if now - e.created_at >= max_age {
                                e.dead = true;
                            }
                            results.push(Handled::Result(job.seq, EntryResult::Update(e)));
                            // Later entries of this employee wait for this one.
                            break;
                        }
                    }
                }
                results
            });
        }
        let mut handled = done_early;
        while let Some(r) = tasks.join_next().await {
            handled.extend(r.map_err(|e| StoreError::Redb(format!("delivery task: {e}")))?);
        }
        let stopped_on = refusals.lock().ok().and_then(|r| r.stopped_on.clone());
        let stop_message = down.lock().ok().and_then(|d| d.clone());
        let results: Vec<(u64, EntryResult)> = handled
            .into_iter()
            .map(|h| match h {
                Handled::Result(seq, r) => (seq, r),
                // The target refuses everything, not this entry: it stays
                // pending with no attempt spent, and says why.
                Handled::Refused(seq, mut e, reason) if stopped_on.as_deref() == Some(reason.as_str()) => {
                    e.last_error = stop_message.clone().or(Some(reason));
                    (seq, EntryResult::Update(e))
                }
                Handled::Refused(seq, mut e, reason) => {
                    e.attempts += 1;
                    e.dead = true;
                    e.last_error = Some(reason);
                    (seq, EntryResult::Update(e))
                }
            })
            .collect();
        let m = crate::metrics::metrics();
        for (_, r) in &results {
            let outcome = match r {
                EntryResult::Done { .. } => {
                    report.delivered += 1;
                    "delivered"
                }
                EntryResult::Update(e) if e.dead => {
                    report.dead_lettered += 1;
                    "dead_lettered"
                }
                EntryResult::Update(_) => {
                    report.retried += 1;
                    "retried"
                }
            };
            m.deliveries
                .get_or_create(&crate::metrics::DeliveryLabels {
                    sink: name.into(),
                    outcome: outcome.into(),
                })
                .inc();
        }
        if let Some(reason) = &stop_message {
            tracing::error!(sink = name, "delivery stopped: {reason}");
            report.down.push((name.to_string(), reason.clone()));
        }
        m.sink_stopped
            .get_or_create(&crate::metrics::SinkLabels { sink: name.into() })
            .set(i64::from(stop_message.is_some()));
        {
            let s = store.clone();
            let stopped = stop_message.clone();
            tokio::task::spawn_blocking(move || s.set_sink_stopped(name, stopped.as_deref()))
                .await
                .map_err(|e| StoreError::Redb(e.to_string()))??;
        }
        if !results.is_empty() {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.outbox_apply(name, &results))
                .await
                .map_err(|e| StoreError::Redb(e.to_string()))??;
        }
        let s = store.clone();
        let remaining = tokio::task::spawn_blocking(move || s.outbox_entries(name))
            .await
            .map_err(|e| StoreError::Redb(e.to_string()))??;
        let mut dead = 0;
        let mut pending = 0;
        for (_, e) in &remaining {
            if e.dead {
                dead += 1;
                continue;
            }
            pending += 1;
            report.next_due = Some(report.next_due.map_or(e.next_at, |n| n.min(e.next_at)));
        }
        report.pending += pending;
        m.outbox_pending
            .get_or_create(&crate::metrics::SinkLabels { sink: name.into() })
            .set(pending as i64);
        m.outbox_dead
            .get_or_create(&crate::metrics::SinkLabels { sink: name.into() })
            .set(dead);
    }
    Ok(report)
}

fn load_jobs(store: &Store, sink: &str) -> Result<Vec<Job>, StoreError> {
    let mut jobs = Vec::new();
    let mut runs: BTreeMap<u64, Option<RunRecord>> = BTreeMap::new();
    for (seq, entry) in store.outbox_entries(sink)? {
        let (mutation, run, target_id) = match &entry.item {
            OutboxItem::Mutation { run, index, key } => (
                store.mutation(*run, *index)?,
                None,
                store.target_id(sink, key.as_str())?,
            ),
            OutboxItem::Run { run } => {
                if !runs.contains_key(run) {
                    runs.insert(*run, store.run_if_exists(*run)?);
                }
                (None, runs.get(run).cloned().flatten(), None)
            }
        };
        jobs.push(Job {
            seq,
            entry,
            mutation,
            run,
            target_id,
        });
    }
    Ok(jobs)
}

/// Delivers until the outbox is empty, every sink is down, or `wait` has
/// passed. Returns the last pass's report.
pub async fn deliver_until_done(
    config: &Config,
    store: &Arc<Store>,
    sinks: &[Arc<Sink>],
    wait: Duration,
) -> Result<PassReport, StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut force = true;
    loop {
        let now = jiff::Timestamp::now().as_second();
        let report = deliver_pass(config, store, sinks, now, force).await?;
        force = false;
        if report.pending == 0 || report.down.len() == sinks.len() {
            return Ok(report);
        }
        let due_in = report.next_due.map(|d| (d - now).max(0) as u64).unwrap_or(1);
        let next = tokio::time::Instant::now() + Duration::from_secs(due_in.max(1));
        if next > deadline {
            return Ok(report);
        }
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events are written field by field, not through a `Value`; the bytes
    /// must be what a `Value` prints (keys in alphabetical order), so files
    /// and signatures stay the same as before.
    #[test]
    fn a_mutation_event_prints_as_its_value_does() {
        use crate::afas::rows::Decimal;
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
                changes: vec![crate::sync::plan::Change {
                    field: "last_name".into(),
                    old: "Bergh".into(),
                    new: "Berg".into(),
                }],
                reason: "last_name changed".into(),
            };
            let event = MutationEvent {
                mutation: &m,
                run: 7,
                index: 3,
            };
            let direct = serde_json::to_string(&event).expect("json");
            let value = mutation_event(&m, 7, 3);
            assert_eq!(direct, value.to_string());
            assert_eq!(value["type"], "employee.updated");
            assert_eq!(value["id"], "evt_7_3");
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

    #[test]
    fn backoff_grows_to_an_hour_with_jitter() {
        assert!((15..=30).contains(&backoff(0, 7)));
        assert!((30..=60).contains(&backoff(1, 7)));
        for j in [0, 1, 999_999] {
            assert!((1800..=3600).contains(&backoff(20, j)));
        }
    }
}
