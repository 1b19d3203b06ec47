//! One sink's pass as its tasks share it: whether it may go on, a slot
//! from the sink's limiter, and what each delivery's outcome means for its
//! entry (done, retried after a backoff or the target's `Retry-After`,
//! refused) and for the target's load.

use super::fate::{fate, Clock, Fate, BACKOFF};
use super::limit::{Limiter, Load, Permit};
use super::record::*;
use super::*;
use crate::model::{Attempt, Step};

/// Different employees refused in a row with the same answer before the
/// sink counts as refusing everything (a schema or mapping the target does
/// not take), rather than as that many bad entries.
pub const SAME_REFUSALS_TO_STOP: u32 = 3;

/// The refusals of one pass, in the order they came.
#[derive(Default)]
pub(super) struct Refusals {
    pub(super) last: Option<String>,
    in_a_row: u32,
    /// The refusal that stopped the sink.
    pub(super) stopped_on: Option<String>,
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

/// One sink's pass, shared by its chains' tasks.
pub(super) struct SinkPass {
    pub(super) sink: Arc<Sink>,
    pub(super) name: &'static str,
    pub(super) now: i64,
    pub(super) max_age: i64,
    pub(super) limiter: Arc<Limiter>,
    /// Outbox entries read and held at a time.
    pub(super) window: usize,
    /// Employees' chains being delivered at once, at most.
    pub(super) in_flight: usize,
    /// Why the sink stopped, once it has.
    pub(super) down: std::sync::Mutex<Option<String>>,
    pub(super) refusals: std::sync::Mutex<Refusals>,
    pub(super) stop: tokio::sync::watch::Receiver<bool>,
}

pub(super) type Out = tokio::sync::mpsc::UnboundedSender<Handled>;

/// True while the pass may go on: no SIGTERM, the sink not stopped.
pub(super) fn going(pass: &SinkPass) -> bool {
    !*pass.stop.borrow() && pass.down.lock().map(|d| d.is_none()).unwrap_or(false)
}

/// A slot from the sink's limiter, unless the pass stops first.
pub(super) async fn slot(pass: &SinkPass) -> Option<Permit> {
    let mut stop = pass.stop.clone();
    let permit = tokio::select! {
        p = pass.limiter.acquire() => p,
        _ = stop.wait_for(|s| *s) => return None,
    };
    going(pass).then_some(permit)
}

/// What a delivery's outcome says about the target's load.
pub(super) fn load_of(r: &Result<Delivered, SinkError>, took: Duration) -> Load {
    match r {
        Ok(_) | Err(SinkError::Permanent { .. } | SinkError::Conflict { .. }) => Load::Answered(took),
        Err(SinkError::Throttled { .. }) => Load::Throttled,
        Err(SinkError::Busy { .. }) => Load::Busy,
        Err(_) => Load::Unknown,
    }
}

/// Delivers one entry and reports it; true when the employee's next entry
/// may follow.
pub(super) async fn deliver_one(pass: &SinkPass, job: Job, out: &Out) -> bool {
    // A 429 with a short `Retry-After` is tried again in this pass, once
    // the sink's pause is over, rather than left for the next.
    for retry in 0.. {
        if !going(pass) {
            return false;
        }
        let Some(permit) = slot(pass).await else {
            return false;
        };
        let mut stop = pass.stop.clone();
        let (delivered, steps) = tokio::select! {
            r = traced(pass.sink.deliver(&job)) => r,
            _ = stop.wait_for(|s| *s) => return false,
        };
        let took = permit.elapsed();
        permit.done(load_of(&delivered, took));
        match &delivered {
            Err(SinkError::Throttled { after: Some(d), .. }) if *d <= MAX_PAUSE && retry < 3 => {
                throttled(pass, Some(*d));
            }
            _ => return report(pass, job, delivered, steps, out),
        }
    }
    false
}

/// Counts a busy answer and pauses the sink for as long as it asked.
pub(super) fn throttled(pass: &SinkPass, after: Option<Duration>) {
    crate::metrics::metrics()
        .delivery_throttled
        .get_or_create(&crate::metrics::SinkLabels { sink: pass.name.into() })
        .inc();
    if let Some(d) = after {
        pass.limiter.pause(d.min(MAX_PAUSE));
    }
}

/// Sends what a delivery means for its entry to the recorder; true when
/// the employee's next entry may follow.
pub(super) fn report(
    pass: &SinkPass,
    job: Job,
    delivered: Result<Delivered, SinkError>,
    steps: Vec<Step>,
    out: &Out,
) -> bool {
    let (handled, go_on) = handled(pass, job, delivered, steps);
    if let Some(h) = handled {
        let _ = out.send(h);
    }
    go_on
}

/// What one delivery's outcome means for its entry ([`fate`]), its effect
/// on the pass (a refusal counted, the sink stopped or paused), and
/// whether the employee's next entry may follow.
fn handled(
    pass: &SinkPass,
    job: Job,
    delivered: Result<Delivered, SinkError>,
    steps: Vec<Step>,
) -> (Option<Handled>, bool) {
    let clock = Clock {
        now: pass.now,
        max_age: pass.max_age,
        backoff: BACKOFF,
    };
    let err = delivered.as_ref().err();
    let outcome = fate(&job.entry, err.map_or(Ok(()), Err), &clock, fastrand::f64());
    let attempt = err.map(|e| Attempt {
        at: pass.now,
        reason: reason_of(e, &steps, pass.name),
        message: e.to_string(),
        steps: steps.clone(),
    });
    if let Some(a) = &attempt {
        tracing::debug!(
            sink = pass.name,
            seq = job.seq,
            reason = a.reason.as_str(),
            "not delivered (the class only: the target's words can quote an address)"
        );
    }
    match (outcome, attempt) {
        (Fate::Delivered, _) => {
            let target_id = match (&job.entry.item, delivered.ok().flatten()) {
                (OutboxItem::Mutation { key, .. }, Some(user)) => Some(TargetRef { key: key.clone(), user }),
                _ => None,
            };
            if let Ok(mut r) = pass.refusals.lock() {
                r.delivered();
            }
            // What succeeded needs no detail.
            let steps = steps
                .into_iter()
                .map(|s| Step {
                    scim_type: None,
                    detail: None,
                    ..s
                })
                .collect();
            let done = EntryResult::Done {
                target_id,
                at: pass.now,
                steps,
            };
            (Some(Handled::Result(job.seq, done)), true)
        }
        (Fate::Untouched, _) | (_, None) => {
            if let Err(SinkError::Down { reason }) = delivered {
                if let Ok(mut d) = pass.down.lock() {
                    d.get_or_insert(reason);
                }
            }
            (None, false)
        }
        (Fate::Refused, Some(a)) => {
            let reason = a.message.clone();
            let stops = pass.refusals.lock().map(|mut r| r.refused(&reason)).unwrap_or(false);
            if stops {
                if let Ok(mut d) = pass.down.lock() {
                    d.get_or_insert(format!("the {} target refuses every change: {reason}", pass.name));
                }
            }
            (Some(Handled::Refused(job.seq, job.entry, a)), !stops)
        }
        (Fate::Later(entry), Some(a)) => {
            if let Err(e @ (SinkError::Busy { .. } | SinkError::Throttled { .. })) = &delivered {
                throttled(pass, e.after());
            }
            (
                Some(Handled::Result(job.seq, EntryResult::Update(entry, Some(a)))),
                false,
            )
        }
    }
}

/// The longest a `Retry-After` holds a whole pass; a longer one leaves
/// the entries waiting for a later pass.
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(30);
