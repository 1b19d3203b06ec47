//! How many deliveries a sink runs at once: an AIMD limiter that starts at
//! `delivery.parallelism`, grows by one per window of deliveries while the
//! target answers as fast as before, and shrinks when it says it is busy
//! (429, 503, a timeout) or answers markedly slower — within
//! `delivery.max_parallelism`. A `Retry-After` pauses the whole sink.
//!
//! The limit is a semaphore whose permits are added as it grows and
//! forgotten as it shrinks (a permit in use is forgotten when it returns).
//!
//! A 429 also says the target counts requests per time, which fewer at once
//! does not fix when its answers are fast: the sink then paces itself at
//! nine tenths of what the target accepted in the second before (lower
//! again after another 429, at most once a second). Each quiet second it
//! probes higher: 5 % while below 97 % of that accepted rate, then 2 %
//! until a second 429 has measured the limit at a steady pace, then 0.5 % —
//! so it settles just under the target's limit instead of meeting it again
//! every few seconds (each time costing a `Retry-After` pause).
//!
//! What it learnt is kept in the state file ([`SinkPace`]): the next
//! process (each `sync` is one) starts at that many at once and just under
//! that pace, instead of paying for the lesson again on a short run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::store::SinkPace;

/// A latency this much above the best recent one counts as the target
/// queueing our requests.
const SLOWER: f64 = 2.0;
/// …and never a rise of less than this (jitter of a fast target).
const MIN_RISE: Duration = Duration::from_millis(20);
/// Deliveries per window after which the best latency is measured anew.
const WINDOW: u32 = 256;

pub struct Limiter {
    sink: &'static str,
    max: usize,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    pace: Mutex<Pace>,
    /// What was last kept in (or read from) the state file.
    kept: Mutex<Option<SinkPace>>,
}

/// A 429 sets a pace only when at least this many requests were accepted
/// in the second before it.
const MIN_PACED: f64 = 10.0;

/// Requests per second, once a 429 asked for fewer.
struct Pace {
    /// Answers the target accepted in the last second.
    accepted: std::collections::VecDeque<Instant>,
    /// The rate kept to, when one is.
    rate: Option<f64>,
    /// What the target accepted in the second before the last 429.
    ceiling: f64,
    /// 429s that set the pace so far.
    cuts: u32,
    tokens: f64,
    refilled: Instant,
    last_cut: Option<Instant>,
    last_probe: Instant,
}

impl Pace {
    /// Takes a start now, or says how long to wait for one.
    fn take(&mut self, now: Instant) -> Option<Duration> {
        let rate = self.rate?;
        if now.duration_since(self.last_probe) >= Duration::from_secs(1)
            && self
                .last_cut
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            // Quickly back to just under what the target accepted, then
            // slowly above it: the target may allow more now.
            let near = self.ceiling * 0.97;
            // The first 429 comes while the sink is still speeding up, so
            // what was accepted then understates the limit: probe faster
            // until a second 429 has measured it at a steady pace.
            let above = if self.cuts < 2 { 1.02 } else { 1.005 };
            self.rate = Some(if rate < near {
                (rate * 1.05).min(near)
            } else {
                rate * above
            });
            self.last_probe = now;
        }
        let rate = self.rate.unwrap_or(rate);
        // A burst of a twentieth of a second at most.
        let burst = (rate / 20.0).max(1.0);
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            return Some(Duration::from_secs_f64((1.0 - self.tokens) / rate));
        }
        self.tokens -= 1.0;
        None
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .accepted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            self.accepted.pop_front();
        }
    }

    /// A request started at `started` was accepted (counted by when it
    /// was sent, as the target counts it).
    fn accepted(&mut self, now: Instant, started: Instant) {
        self.forget_old(now);
        let at = self.accepted.partition_point(|t| *t <= started);
        self.accepted.insert(at, started);
    }

    /// A 429: keep below what the target accepted in the last second.
    fn throttled(&mut self, now: Instant) {
        if self
            .last_cut
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_cut = Some(now);
        self.cuts += 1;
        self.forget_old(now);
        let accepted = self.accepted.len() as f64;
        if accepted < MIN_PACED {
            // Too few answers to measure a rate from (the start of a pass,
            // a slow target): the pause and fewer at once do it.
            return;
        }
        self.ceiling = accepted;
        self.rate = Some(self.rate.map_or(accepted, |r| r.min(accepted)) * 0.9);
        self.last_probe = now;
        self.tokens = 0.0;
        self.refilled = now;
    }
}

struct State {
    /// The limit as a fraction: +1/limit per success is +1 per window.
    limit: f64,
    /// Permits in existence (available or in use).
    granted: usize,
    /// Permits in use still to be forgotten when they return.
    debt: usize,
    /// The best latency of the last full window, and of the current one.
    best: Option<Duration>,
    window_best: Option<Duration>,
    samples: u32,
    last_cut: Option<Instant>,
    paused_until: Option<Instant>,
}

/// What one delivery said about the target's load.
pub enum Load {
    /// Answered (delivered or refused) in this time.
    Answered(Duration),
    /// 503, a timeout: the target asks for less.
    Busy,
    /// 429: the target asks for fewer per time.
    Throttled,
    /// Nothing to learn (the target is down, the pass stopped).
    Unknown,
}

impl Load {
    /// Which of several answers to one request speaks for it: the one that
    /// asks the most of the limiter.
    pub fn weight(&self) -> u8 {
        match self {
            Load::Unknown => 0,
            Load::Answered(_) => 1,
            Load::Busy => 2,
            Load::Throttled => 3,
        }
    }
}

pub struct Permit {
    limiter: Arc<Limiter>,
    permit: Option<OwnedSemaphorePermit>,
    started: Instant,
}

impl Permit {
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Returns the permit, teaching the limiter what the delivery saw.
    pub fn done(mut self, load: Load) {
        let limiter = self.limiter.clone();
        limiter.learn(load);
        if let Some(p) = self.permit.take() {
            limiter.give_back(p);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.limiter.give_back(p);
        }
    }
}

impl Limiter {
    /// A limiter that starts at `start` at once, or where `learnt` (what a
    /// limiter before it learnt about the same target) left off: never
    /// below `start` at once, and at its pace if a 429 had set one.
    pub fn new(sink: &'static str, start: u32, max: u32, learnt: Option<&SinkPace>) -> Arc<Limiter> {
        let max = max.max(1) as usize;
        let start = (start.max(1) as usize).min(max);
        let start = learnt.map_or(start, |l| (l.concurrency as usize).clamp(start, max));
        // The last process may have ended probing above the target's
        // limit: start a little under what the target accepted instead.
        let rate = learnt
            .and_then(|l| {
                l.rate
                    .map(|r| if l.ceiling >= 1.0 { r.min(l.ceiling * 0.95) } else { r })
            })
            .filter(|r| r.is_finite() && *r >= 1.0);
        crate::metrics::metrics().sink_seen(sink);
        let l = Arc::new(Limiter {
            sink,
            max,
            permits: Arc::new(Semaphore::new(start)),
            state: Mutex::new(State {
                limit: start as f64,
                granted: start,
                debt: 0,
                best: None,
                window_best: None,
                samples: 0,
                last_cut: None,
                paused_until: None,
            }),
            pace: Mutex::new(Pace {
                accepted: Default::default(),
                rate,
                ceiling: learnt.filter(|_| rate.is_some()).map_or(0.0, |l| l.ceiling),
                cuts: learnt.filter(|_| rate.is_some()).map_or(0, |l| l.cuts),
                tokens: 0.0,
                refilled: Instant::now(),
                last_cut: None,
                last_probe: Instant::now(),
            }),
            kept: Mutex::new(None),
        });
        // As constructed: only what is learnt from here on is kept again.
        let first = l.learnt(0, learnt.map_or(0, |p| p.at));
        if let Ok(mut k) = l.kept.lock() {
            *k = Some(first);
        }
        l.publish(start);
        l
    }

    /// What this limiter learnt, when it differs from what it started
    /// with or kept last: to be kept now. (A run that learns nothing, a
    /// no-op sync, writes nothing.)
    pub fn to_keep(&self, target: u64, now: i64) -> Option<SinkPace> {
        let p = self.learnt(target, now);
        let mut kept = self.kept.lock().ok()?;
        let same = kept
            .as_ref()
            .is_some_and(|k| (k.concurrency, k.rate, k.ceiling, k.cuts) == (p.concurrency, p.rate, p.ceiling, p.cuts));
        if same {
            return None;
        }
        *kept = Some(p.clone());
        Some(p)
    }

    /// What this limiter has learnt, to be kept for the next one.
    pub fn learnt(&self, target: u64, at: i64) -> SinkPace {
        let concurrency = self.state.lock().map(|s| s.granted as u32).unwrap_or(1);
        let (rate, ceiling, cuts) = self
            .pace
            .lock()
            .map(|p| (p.rate, p.ceiling, p.cuts))
            .unwrap_or((None, 0.0, 0));
        SinkPace {
            target,
            at,
            concurrency,
            rate,
            ceiling,
            cuts,
        }
    }

    /// The current limit.
    #[cfg(test)]
    pub fn limit(&self) -> usize {
        self.state.lock().map(|s| s.granted).unwrap_or(1)
    }

    /// Waits for a pause to end and a free slot.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let until = self.state.lock().ok().and_then(|s| s.paused_until);
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        let permit = self.permits.clone().acquire_owned().await.ok();
        loop {
            let wait = match self.pace.lock() {
                Ok(mut p) => p.take(Instant::now()),
                Err(_) => None,
            };
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => break,
            }
        }
        Permit {
            limiter: self.clone(),
            permit,
            started: Instant::now(),
        }
    }

    /// The target said when to come back: nobody on this sink sends before.
    pub fn pause(&self, d: Duration) {
        if let Ok(mut s) = self.state.lock() {
            let until = Instant::now() + d;
            if s.paused_until.is_none_or(|t| t < until) {
                s.paused_until = Some(until);
            }
        }
    }

    fn give_back(&self, p: OwnedSemaphorePermit) {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        if s.debt > 0 {
            s.debt -= 1;
            p.forget();
        }
    }

    fn learn(&self, load: Load) {
        let Ok(mut s) = self.state.lock() else { return };
        let now = Instant::now();
        match load {
            Load::Unknown => return,
            Load::Busy => self.cut(&mut s, now, 0.5),
            Load::Throttled => {
                if let Ok(mut p) = self.pace.lock() {
                    p.throttled(now);
                }
                // The pace does most of the slowing down.
                self.cut(&mut s, now, 0.75);
            }
            Load::Answered(took) => {
                if let Ok(mut p) = self.pace.lock() {
                    p.accepted(now, now.checked_sub(took).unwrap_or(now));
                }
                s.samples += 1;
                s.window_best = Some(s.window_best.map_or(took, |b| b.min(took)));
                let best = *s.best.get_or_insert(took);
                if s.samples >= WINDOW {
                    // A slowly rising floor follows a path that got slower
                    // for good; queueing shows as a jump above it.
                    let w = s.window_best.unwrap_or(took);
                    s.best = Some(w.min(best.mul_f64(1.05)));
                    s.window_best = None;
                    s.samples = 0;
                }
                if took > best.mul_f64(SLOWER) && took > best + MIN_RISE {
                    self.cut(&mut s, now, 0.9);
                } else {
                    s.limit = (s.limit + 1.0 / s.limit).min(self.max as f64);
                }
            }
        }
        let target = (s.limit.floor() as usize).clamp(1, self.max);
        while s.granted < target {
            if s.debt > 0 {
                s.debt -= 1;
            } else {
                self.permits.add_permits(1);
            }
            s.granted += 1;
        }
        while s.granted > target {
            if self.permits.forget_permits(1) == 0 {
                s.debt += 1;
            }
            s.granted -= 1;
        }
        self.publish(s.granted);
    }

    /// One cut per round trip: the answers of requests sent at the old
    /// limit arrive together and are one signal.
    fn cut(&self, s: &mut State, now: Instant, factor: f64) {
        let rtt = s
            .best
            .unwrap_or(Duration::from_millis(100))
            .max(Duration::from_millis(50));
        if s.last_cut.is_some_and(|t| now.duration_since(t) < rtt) {
            return;
        }
        s.last_cut = Some(now);
        s.limit = (s.limit * factor).max(1.0);
    }

    fn publish(&self, limit: usize) {
        crate::metrics::metrics()
            .delivery_concurrency
            .get_or_create(&crate::metrics::SinkLabels { sink: self.sink.into() })
            .set(limit as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grows_while_answers_stay_fast_and_halves_when_busy() {
        let l = Limiter::new("test", 4, 32, None);
        for _ in 0..200 {
            l.acquire().await.done(Load::Answered(Duration::from_millis(10)));
        }
        let grown = l.limit();
        assert!(grown > 8, "{grown}");
        l.acquire().await.done(Load::Busy);
        assert_eq!(l.limit(), grown / 2);
        // A second busy answer within the same round trip is the same signal.
        l.acquire().await.done(Load::Busy);
        assert_eq!(l.limit(), grown / 2);
    }

    #[tokio::test]
    async fn never_beyond_the_maximum_and_slower_answers_shrink_it() {
        let l = Limiter::new("test", 4, 6, None);
        for _ in 0..500 {
            l.acquire().await.done(Load::Answered(Duration::from_millis(10)));
        }
        assert_eq!(l.limit(), 6);
        l.acquire().await.done(Load::Answered(Duration::from_millis(200)));
        assert_eq!(l.limit(), 5);
    }

    #[tokio::test]
    async fn a_smaller_limit_holds_back_new_deliveries_until_permits_return() {
        let l = Limiter::new("test", 4, 4, None);
        let held: Vec<Permit> = vec![l.acquire().await, l.acquire().await, l.acquire().await];
        l.acquire().await.done(Load::Busy);
        assert_eq!(l.limit(), 2);
        drop(held);
        // Two slots now, not four.
        let a = l.acquire().await;
        let b = l.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(third.is_err(), "a third delivery must wait");
        drop((a, b));
    }

    /// A limiter that had 100 answers accepted within the last second, and
    /// then a 429.
    async fn throttled_after_100() -> Arc<Limiter> {
        let l = Limiter::new("test", 64, 64, None);
        for _ in 0..100 {
            l.acquire().await.done(Load::Answered(Duration::from_millis(1)));
        }
        l.acquire().await.done(Load::Throttled);
        l
    }

    /// How long `n` quick deliveries take through `l`.
    async fn time_for(l: &Arc<Limiter>, n: u32) -> Duration {
        let started = Instant::now();
        for _ in 0..n {
            l.acquire().await.done(Load::Answered(Duration::from_millis(1)));
        }
        started.elapsed()
    }

    #[tokio::test]
    async fn after_a_429_the_sink_keeps_below_the_rate_it_had_sent() {
        let l = throttled_after_100().await;
        // ~91 per second (4 as a burst): 46 take about 0.45 s, not 0.
        let took = time_for(&l, 46).await;
        assert!(took >= Duration::from_millis(350), "{took:?}");
        assert!(took < Duration::from_millis(900), "{took:?}");
    }

    #[tokio::test]
    async fn a_new_limiter_starts_where_the_last_one_left_off() {
        let l = throttled_after_100().await;
        let kept = l.to_keep(7, 1_000).expect("a 429 set a pace: something to keep");
        assert!(kept.rate.is_some_and(|r| (85.0..=95.0).contains(&r)), "{kept:?}");
        assert!(l.to_keep(7, 1_010).is_none(), "nothing new learnt");

        // The next process: 16 at once with the config's 4, and the pace
        // from its first request, without a 429 to teach it.
        let next = Limiter::new(
            "test",
            4,
            64,
            Some(&SinkPace {
                concurrency: 16,
                ..kept.clone()
            }),
        );
        assert_eq!(next.limit(), 16);
        let took = time_for(&next, 46).await;
        assert!(took >= Duration::from_millis(350), "{took:?}");
        assert!(took < Duration::from_millis(900), "{took:?}");
        // Never beyond the maximum of this config.
        assert_eq!(Limiter::new("test", 4, 8, Some(&kept)).limit(), 8);
    }

    #[tokio::test]
    async fn a_pause_holds_everyone_back() {
        let l = Limiter::new("test", 4, 4, None);
        l.pause(Duration::from_millis(300));
        let started = Instant::now();
        drop(l.acquire().await);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
