//! The run and state-file figures in `/metrics`.

use super::*;
use crate::model::SinkKind;

/// Records a finished run in the metrics.
pub(super) fn record_metrics(record: &RunRecord, started: std::time::Instant) {
    let m = crate::metrics::metrics();
    m.runs
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: record.outcome.as_str().into(),
        })
        .inc();
    m.run_duration.observe(started.elapsed().as_secs_f64());
    m.last_run.set(crate::metrics::unix_now_f64());
    if matches!(record.outcome, Outcome::Success | Outcome::NothingToDo) {
        m.last_success.set(crate::metrics::unix_now_f64());
        for (kind, n) in [
            ("joiner", record.joiners),
            ("mover", record.movers),
            ("leaver", record.leavers),
            ("rehire", record.rehires),
        ] {
            m.mutations
                .get_or_create(&crate::metrics::KindLabels { kind: kind.into() })
                .inc_by(n);
        }
    }
    if record.outcome == Outcome::Held {
        m.guard_held.inc();
    }
    let mut classes: BTreeMap<&'static str, u64> = BTreeMap::new();
    for r in &record.source.rejections {
        *classes.entry(crate::metrics::reason_class(&r.reason)).or_default() += 1;
    }
    // Rejections beyond the kept ones count as "other" so the total is exact.
    let kept: u64 = classes.values().sum();
    if record.source.rejected > kept {
        *classes.entry("other").or_default() += record.source.rejected - kept;
    }
    for (class, n) in classes {
        m.rejected
            .get_or_create(&crate::metrics::ReasonLabels { reason: class.into() })
            .inc_by(n);
    }
}

/// Refreshes the gauges that describe the state file (employees, held
/// plans, outbox) from the store.
pub fn refresh_state_metrics(store: &Store) -> Result<(), StoreError> {
    let m = crate::metrics::metrics();
    // Kept counts: a scan of the snapshot after every run was 5% of a
    // no-op sync's CPU at 100k.
    let (active, all) = store.employee_counts()?;
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    m.employees
        .get_or_create(&crate::metrics::StateLabels { state: "active".into() })
        .set(gauge(active));
    m.employees
        .get_or_create(&crate::metrics::StateLabels { state: "left".into() })
        .set(gauge(all.saturating_sub(active)));
    m.held_plans.set(store.held_plans()?.len() as i64);
    refresh_outbox_metrics(store)
}

pub fn refresh_outbox_metrics(store: &Store) -> Result<(), StoreError> {
    let m = crate::metrics::metrics();
    let counts = store.outbox_counts()?;
    for sink in SinkKind::NAMES {
        let c = counts.get(sink).cloned().unwrap_or_default();
        m.outbox_pending
            .get_or_create(&crate::metrics::SinkLabels { sink: sink.into() })
            .set(c.pending as i64);
        m.outbox_dead
            .get_or_create(&crate::metrics::SinkLabels { sink: sink.into() })
            .set(c.dead as i64);
        crate::metrics::set_dead_by_reason(sink, c.dead_by_class());
    }
    // Shown at 0 from the start, so that an alert on it has a series; the
    // look at the target sets it.
    let _ = m.unmanaged_held.get_or_create(&crate::metrics::SinkLabels {
        sink: SinkKind::Scim.name().into(),
    });
    Ok(())
}
