//! The delivery worker: one pass over each sink's due entries, in order per
//! employee and employees in parallel, with backoff, `Retry-After`, dead
//! letters, and a sink that stops when its target refuses everything.

use super::*;

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
pub(super) fn backoff(attempts: u32, jitter: u64) -> i64 {
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
pub(super) struct Refusals {
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
pub(super) enum Handled {
    Result(u64, EntryResult),
    /// Refused as it is (4xx): dead-lettered, unless the same refusal
    /// stopped the sink.
    Refused(u64, OutboxEntry, String),
}

pub(super) fn jitter_seed() -> u64 {
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

pub(super) fn load_jobs(store: &Store, sink: &str) -> Result<Vec<Job>, StoreError> {
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
