//! Recording a sink pass's results as they come: in batches, into the
//! outbox, the pass's report, `/metrics` and the progress watchers.

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

/// What one task did with one entry.
pub(super) enum Handled {
    Result(u64, EntryResult),
    /// Refused as it is (4xx): dead-lettered, unless the same refusal
    /// stopped the sink.
    Refused(u64, OutboxEntry, crate::model::Attempt),
}

/// Why a delivery pass could not do its work (a sink's refusal is not one:
/// that is recorded on its entries).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the state file: {0}")]
    Store(#[from] StoreError),
    #[error("a delivery task failed: {0}")]
    Task(String),
}

/// Store work on the blocking pool; a failed task is a [`DeliveryError::Task`].
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, DeliveryError> {
    crate::store::blocking(f, DeliveryError::Task).await
}

/// What a sink's pass did that is settled only when it ends.
pub(super) struct SinkOutcome {
    /// Refusals wait for the end: the same refusal three times means the
    /// sink stops, and then none of them spends an attempt.
    pub(super) refused: Vec<Handled>,
    pub(super) stopped_on: Option<String>,
    pub(super) stop_message: Option<String>,
}

/// Results are recorded in batches of this many, or older than
/// [`RECORD_EVERY`], so a crash repeats at most one batch at the target.
pub(super) const RECORD_BATCH: usize = 256;
pub(super) const RECORD_EVERY: Duration = Duration::from_secs(1);

/// Records one sink's results in batches, counting them into the pass's
/// report and `/metrics`.
pub(super) struct Recorder<'a> {
    pub(super) store: Arc<Store>,
    pub(super) name: &'static str,
    pub(super) batch: Vec<(u64, EntryResult)>,
    pub(super) report: &'a mut PassReport,
}

impl Recorder<'_> {
    pub(super) async fn flush(&mut self) -> Result<(), DeliveryError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let results = std::mem::take(&mut self.batch);
        let done = results
            .iter()
            .filter(|(_, r)| matches!(r, EntryResult::Done { .. }))
            .count() as u64;
        crate::progress::delivered(self.name, done, results.len() as u64 - done);
        let mut tally = [0u64; 3];
        for (_, r) in &results {
            let i = match r {
                EntryResult::Done { .. } => 0,
                EntryResult::Update(e, _) if e.dead => 1,
                EntryResult::Update(..) => 2,
            };
            tally[i] += 1;
        }
        self.report.delivered += tally[0];
        self.report.dead_lettered += tally[1];
        self.report.retried += tally[2];
        let m = crate::metrics::metrics();
        for (outcome, n) in ["delivered", "dead_lettered", "retried"].into_iter().zip(tally) {
            if n > 0 {
                m.deliveries
                    .get_or_create(&crate::metrics::DeliveryLabels {
                        sink: self.name.into(),
                        outcome: outcome.into(),
                    })
                    .inc_by(n);
            }
        }
        let (s, name) = (self.store.clone(), self.name);
        blocking(move || s.outbox_apply(name, &results)).await
    }

    /// Settles refusals, records the rest and the sink's state, and counts
    /// what is left.
    pub(super) async fn finish(mut self, h: SinkOutcome) -> Result<(), DeliveryError> {
        for x in h.refused {
            let Handled::Refused(seq, e, attempt) = x else {
                continue;
            };
            let e =
                super::fate::settle_refusal(&e, &attempt.message, h.stopped_on.as_deref(), h.stop_message.as_deref());
            self.batch.push((seq, EntryResult::Update(e, Some(attempt))));
        }
        let (name, report) = (self.name, &mut *self.report);
        let m = crate::metrics::metrics();
        if let Some(reason) = &h.stop_message {
            tracing::error!(sink = name, "delivery stopped: {reason}");
            report.down.push((name.to_string(), reason.clone()));
        }
        let sink = crate::metrics::SinkLabels { sink: name.into() };
        m.sink_stopped
            .get_or_create(&sink)
            .set(i64::from(h.stop_message.is_some()));
        self.flush().await?;
        let s = self.store.clone();
        let stopped = h.stop_message;
        let counts = blocking(move || {
            s.set_sink_stopped(name, stopped.as_deref())?;
            s.outbox_counts()
        })
        .await?;
        let c = counts.get(name).cloned().unwrap_or_default();
        let (pending, dead) = (c.pending, c.dead);
        if let Some(due) = c.next_due {
            self.report.next_due = Some(self.report.next_due.map_or(due, |n| n.min(due)));
        }
        self.report.pending += pending;
        crate::metrics::set_dead_by_reason(name, c.dead_by_class());
        crate::progress::end_delivery(name);
        m.outbox_pending.get_or_create(&sink).set(pending as i64);
        m.outbox_dead.get_or_create(&sink).set(dead as i64);
        Ok(())
    }
}
