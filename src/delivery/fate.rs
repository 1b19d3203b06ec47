//! What one delivery's outcome means for its entry — delivered, tried
//! again at a time, dead, refused — decided in one place with one backoff
//! policy. Pure: the clock and the jitter are parameters, so the tests
//! pass a fake clock.

use std::time::Duration;

use super::SinkError;
use crate::store::OutboxEntry;

/// When a failed entry is tried again: the target's `Retry-After` when it
/// gave one, else exponential backoff with full jitter (half to all of the
/// doubled wait), capped. A target that only asked for less (busy,
/// throttled) is tried again sooner than one that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub failed_from: Duration,
    pub busy_from: Duration,
    pub cap: Duration,
}

/// The delivery backoff: 30 s after a failure (1 s when the target was
/// busy), doubling to 1 h.
pub const BACKOFF: Backoff = Backoff {
    failed_from: Duration::from_secs(30),
    busy_from: Duration::from_secs(1),
    cap: Duration::from_secs(3600),
};

impl Backoff {
    /// The wait after the `attempts`-th failed attempt; `jitter` in [0, 1].
    pub fn wait(&self, attempts: u32, busy: bool, after: Option<Duration>, jitter: f64) -> Duration {
        if let Some(d) = after {
            return d.max(Duration::from_secs(1));
        }
        let from = if busy { self.busy_from } else { self.failed_from };
        let full = from.saturating_mul(1u32 << attempts.min(16)).min(self.cap);
        let half = full / 2;
        (half + half.mul_f64(jitter.clamp(0.0, 1.0))).max(Duration::from_secs(1))
    }
}

/// What happens to an entry after one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Delivered: the entry is removed.
    Delivered,
    /// Not delivered: its new state (an attempt counted, the time of the
    /// next, dead once older than the sink's `max_age`).
    Later(OutboxEntry),
    /// Refused as it is: settled when the pass ends (see [`settle_refusal`]).
    Refused,
    /// The sink cannot be used: the entry stays as it is, nothing spent.
    Untouched,
}

/// The clock and the policy a fate is decided with.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: i64,
    /// Seconds an entry may wait before it is dead-lettered.
    pub max_age: i64,
    pub backoff: Backoff,
}

/// What `outcome` means for `entry` at `clock.now`.
pub fn fate(entry: &OutboxEntry, outcome: Result<(), &SinkError>, clock: &Clock, jitter: f64) -> Fate {
    let e = match outcome {
        Ok(()) => return Fate::Delivered,
        Err(e) => e,
    };
    let busy = match e {
        SinkError::Down { .. } => return Fate::Untouched,
        SinkError::Permanent { .. } | SinkError::Conflict { .. } => return Fate::Refused,
        SinkError::Retry { .. } => false,
        SinkError::Busy { .. } | SinkError::Throttled { .. } => true,
    };
    let mut next = entry.clone();
    next.attempts = next.attempts.saturating_add(1);
    let wait = clock.backoff.wait(next.attempts, busy, e.after(), jitter);
    let wait = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
    next.next_at = clock.now.saturating_add(wait);
    next.last_error = Some(e.to_string());
    if clock.now.saturating_sub(next.created_at) >= clock.max_age {
        next.dead = true;
    }
    Fate::Later(next)
}

/// A refused entry once its pass has ended: dead, with an attempt spent —
/// unless the same refusal stopped the sink (the target refuses every
/// change, not this one): then it waits with no attempt spent, and says
/// why (`stop_message`).
pub fn settle_refusal(
    entry: &OutboxEntry,
    reason: &str,
    stopped_on: Option<&str>,
    stop_message: Option<&str>,
) -> OutboxEntry {
    let mut e = entry.clone();
    if stopped_on == Some(reason) {
        e.last_error = Some(stop_message.unwrap_or(reason).to_string());
        return e;
    }
    e.attempts = e.attempts.saturating_add(1);
    e.dead = true;
    e.last_error = Some(reason.to_string());
    e
}

// Test code only: `expect` and `panic!` below read the tests' own values.
#[cfg(test)]
mod tests {
    use super::{fate, settle_refusal, Clock, Fate, BACKOFF};
    use crate::delivery::SinkError;
    use crate::model::EmployeeKey;
    use crate::store::{OutboxEntry, OutboxItem};
    use std::time::Duration;

    const DAY0: i64 = 1_790_000_000;

    fn entry(created_at: i64) -> OutboxEntry {
        let key = EmployeeKey::parse("1042").expect("key");
        OutboxEntry::new(OutboxItem::Mutation { run: 1, index: 0, key }, created_at)
    }

    fn clock(now: i64) -> Clock {
        Clock {
            now,
            max_age: 14 * 24 * 3600,
            backoff: BACKOFF,
        }
    }

    fn later(f: Fate) -> OutboxEntry {
        match f {
            Fate::Later(e) => e,
            other => panic!("not later: {other:?}"),
        }
    }

    #[test]
    fn a_failure_backs_off_doubling_to_an_hour_and_dies_of_age() {
        let retry = SinkError::Retry {
            reason: "HTTP 502".into(),
            after: None,
        };
        let mut e = entry(DAY0);
        let mut now = DAY0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            // The longest wait of each step (jitter 1): 60 s, 120 s, …
            e = later(fate(&e, Err(&retry), &clock(now), 1.0));
            waits.push(e.next_at - now);
            assert!(!e.dead);
            now = e.next_at;
        }
        assert_eq!(&waits[..4], &[60, 120, 240, 480]);
        assert!(waits[6..].iter().all(|w| *w == 3600), "{waits:?}");
        assert_eq!(e.attempts, 12);
        assert_eq!(e.last_error.as_deref(), Some("HTTP 502"));
        // The shortest (jitter 0) is half.
        let half = later(fate(&entry(DAY0), Err(&retry), &clock(DAY0), 0.0));
        assert_eq!(half.next_at - DAY0, 30);
        // Fourteen days after it was made, the next failure is its last.
        let old = later(fate(&e, Err(&retry), &clock(DAY0 + 14 * 24 * 3600), 0.5));
        assert!(old.dead);
    }

    #[test]
    fn a_busy_target_is_tried_again_sooner_and_its_retry_after_wins() {
        let busy = SinkError::Busy {
            reason: "HTTP 503".into(),
            after: None,
        };
        let e = later(fate(&entry(DAY0), Err(&busy), &clock(DAY0), 1.0));
        assert_eq!(e.next_at - DAY0, 2);
        let told = SinkError::Throttled {
            reason: "HTTP 429".into(),
            after: Some(Duration::from_secs(90)),
        };
        let e = later(fate(&entry(DAY0), Err(&told), &clock(DAY0), 0.0));
        assert_eq!(e.next_at - DAY0, 90);
        // A Retry-After of zero still waits a second; one beyond any clock
        // does not overflow.
        let zero = SinkError::Retry {
            reason: "x".into(),
            after: Some(Duration::ZERO),
        };
        assert_eq!(
            later(fate(&entry(DAY0), Err(&zero), &clock(DAY0), 0.0)).next_at,
            DAY0 + 1
        );
        let huge = SinkError::Retry {
            reason: "x".into(),
            after: Some(Duration::from_secs(u64::MAX)),
        };
        assert_eq!(
            later(fate(&entry(DAY0), Err(&huge), &clock(DAY0), 0.0)).next_at,
            i64::MAX
        );
    }

    #[test]
    fn delivered_refused_and_a_stopped_sink_spend_nothing_here() {
        let e = entry(DAY0);
        assert_eq!(fate(&e, Ok(()), &clock(DAY0), 0.5), Fate::Delivered);
        let refused = SinkError::Permanent {
            reason: "HTTP 400".into(),
        };
        assert_eq!(fate(&e, Err(&refused), &clock(DAY0), 0.5), Fate::Refused);
        let down = SinkError::Down {
            reason: "HTTP 401".into(),
        };
        assert_eq!(fate(&e, Err(&down), &clock(DAY0), 0.5), Fate::Untouched);
    }

    #[test]
    fn a_refusal_is_dead_unless_the_same_refusal_stopped_the_sink() {
        let e = entry(DAY0);
        let dead = settle_refusal(&e, "HTTP 400: bad", None, None);
        assert!(dead.dead);
        assert_eq!(dead.attempts, 1);
        let other = settle_refusal(&e, "HTTP 400: bad", Some("HTTP 400: other"), Some("stopped"));
        assert!(other.dead);
        let kept = settle_refusal(
            &e,
            "HTTP 400: bad",
            Some("HTTP 400: bad"),
            Some("the target refuses every change"),
        );
        assert!(!kept.dead);
        assert_eq!(kept.attempts, 0);
        assert_eq!(kept.last_error.as_deref(), Some("the target refuses every change"));
    }
}
