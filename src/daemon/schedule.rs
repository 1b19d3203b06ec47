//! When to sync: wall-clock times of day in a time zone (default 04:00 and
//! 20:00 Europe/Amsterdam, as Alleo's own sync does). Pure functions of the
//! current time, so DST changes, missed slots and clock jumps are plain
//! unit tests; the daemon only asks "what now?" with the real clock.
//!
//! Slot times are civil times: a 02:30 slot on the spring-forward night
//! (which has no 02:30) runs at 03:30, and on the fall-back night (which
//! has two) it runs once, at the first.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

pub use crate::config::parse_time;

#[derive(Debug, Clone)]
pub struct Schedule {
    times: Vec<Time>,
    tz: TimeZone,
    jitter_secs: i64,
    /// This installation's own seed, so installations in one time zone do
    /// not all wait the same seconds (see [`installation_seed`]).
    seed: u64,
}

/// A stable seed for one installation: its random id (kept in the state
/// file, so the same across restarts) mixed with what it reads (the AFAS
/// URL, which names the Profit ID).
pub fn installation_seed(installation_id: u64, afas_url: &str) -> u64 {
    // FNV-1a over the URL, then one round of SplitMix64's finalizer.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in afas_url.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h ^ installation_id)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the daemon should do at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run now (a slot has come, or was missed while down).
    RunNow,
    /// Sleep until then (re-checking the wall clock on the way).
    WaitUntil(Timestamp),
}

impl Schedule {
    pub fn new(times: &[String], tz: &str, jitter_secs: i64, seed: u64) -> Result<Schedule, String> {
        let tz = TimeZone::get(tz).map_err(|e| format!("schedule.time_zone: {e}"))?;
        let mut parsed = times
            .iter()
            .map(|t| parse_time(t).ok_or_else(|| format!("schedule.times `{t}`: not a time like 04:00")))
            .collect::<Result<Vec<_>, _>>()?;
        parsed.sort();
        parsed.dedup();
        if parsed.is_empty() {
            return Err("schedule.times is empty".into());
        }
        Ok(Schedule {
            times: parsed,
            tz,
            jitter_secs: jitter_secs.max(0),
            seed,
        })
    }

    /// Slot instants on the civil days around `t`, in order.
    fn slots_around(&self, t: Timestamp) -> Vec<Timestamp> {
        let today = t.to_zoned(self.tz.clone()).date();
        let mut out = Vec::new();
        for offset in -2..=2i64 {
            let Ok(day) = today.checked_add(offset.days()) else {
                continue;
            };
            for time in &self.times {
                // `to_zoned` resolves gaps forward and folds to the earlier
                // instant ("compatible"), which is what a person expects.
                if let Ok(z) = day.to_datetime(*time).to_zoned(self.tz.clone()) {
                    out.push(z.timestamp());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Timestamp {
        self.slots_around(t)
            .into_iter()
            .find(|s| *s > t)
            .unwrap_or_else(|| t.checked_add(1.hour()).unwrap_or(t))
    }

    /// The last slot at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.slots_around(t).into_iter().rev().find(|s| *s <= t)
    }

    /// The delay after a slot: stable for one installation and slot,
    /// different between installations (spreads their AFAS load).
    pub fn jitter(&self, slot: Timestamp) -> i64 {
        if self.jitter_secs == 0 {
            return 0;
        }
        (mix(self.seed ^ slot.as_second() as u64) % (self.jitter_secs as u64 + 1)) as i64
    }

    /// Decides, given the last run that was attempted for a slot (its slot
    /// time), whether to run now. A slot missed while the service was down
    /// (or while the VM was suspended, or skipped by a clock jump) is caught
    /// up once; several missed slots still make one run.
    pub fn decide(&self, now: Timestamp, last_slot_run: Option<Timestamp>) -> Decision {
        if let Some(due) = self.last_at_or_before(now) {
            let due_at = due.checked_add(self.jitter(due).seconds()).unwrap_or(due);
            let done = last_slot_run.is_some_and(|l| l >= due);
            if !done && now >= due_at {
                return Decision::RunNow;
            }
            if !done {
                return Decision::WaitUntil(due_at);
            }
        }
        let next = self.next_after(now);
        Decision::WaitUntil(next.checked_add(self.jitter(next).seconds()).unwrap_or(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ams(s: &str) -> Timestamp {
        let dt: jiff::civil::DateTime = s.parse().expect("datetime");
        dt.to_zoned(TimeZone::get("Europe/Amsterdam").expect("tz"))
            .expect("zoned")
            .timestamp()
    }

    fn sched(times: &[&str]) -> Schedule {
        Schedule::new(
            &times.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "Europe/Amsterdam",
            0,
            0,
        )
        .expect("schedule")
    }

    #[test]
    fn next_slot_on_an_ordinary_day() {
        let s = sched(&["04:00", "20:00"]);
        assert_eq!(s.next_after(ams("2026-06-10T03:00")), ams("2026-06-10T04:00"));
        assert_eq!(s.next_after(ams("2026-06-10T04:00")), ams("2026-06-10T20:00"));
        assert_eq!(s.next_after(ams("2026-06-10T21:00")), ams("2026-06-11T04:00"));
    }

    #[test]
    fn spring_forward_runs_a_vanished_slot_once_at_the_shifted_time() {
        // 2026-03-29: 02:00 → 03:00 in Amsterdam; 02:30 does not exist.
        let s = sched(&["02:30"]);
        let next = s.next_after(ams("2026-03-29T01:00"));
        assert_eq!(next, ams("2026-03-29T03:30"));
        // 23 hours of wall time that day, so the following slot is 23h later.
        assert_eq!(s.next_after(next), ams("2026-03-30T02:30"));
        assert_eq!((ams("2026-03-30T02:30").as_second() - next.as_second()) / 3600, 23);
    }

    #[test]
    fn fall_back_runs_a_doubled_slot_once() {
        // 2026-10-25: 03:00 → 02:00; 02:30 happens twice.
        let s = sched(&["02:30"]);
        let first = s.next_after(ams("2026-10-25T01:00"));
        let again = s.next_after(first);
        assert_eq!(again, ams("2026-10-26T02:30"), "not a second time an hour later");
        // Decided as done after the first run, also during the repeated hour.
        let during_repeat = first.checked_add(1.hour()).expect("t");
        assert!(matches!(s.decide(during_repeat, Some(first)), Decision::WaitUntil(t) if t == again));
    }

    #[test]
    fn a_slot_missed_during_downtime_is_caught_up_once() {
        let s = sched(&["04:00", "20:00"]);
        let last = ams("2026-06-09T20:00");
        // Down from 21:00 until 09:00 the next morning: the 04:00 slot was missed.
        assert_eq!(s.decide(ams("2026-06-10T09:00"), Some(last)), Decision::RunNow);
        // After the catch-up run (recorded for the 04:00 slot), wait for 20:00.
        assert_eq!(
            s.decide(ams("2026-06-10T09:01"), Some(ams("2026-06-10T04:00"))),
            Decision::WaitUntil(ams("2026-06-10T20:00"))
        );
        // Down for three days: still one run, not six.
        assert_eq!(s.decide(ams("2026-06-13T09:00"), Some(last)), Decision::RunNow);
        assert!(matches!(
            s.decide(ams("2026-06-13T09:00"), s.last_at_or_before(ams("2026-06-13T09:00"))),
            Decision::WaitUntil(_)
        ));
        // A fresh install runs at once.
        assert_eq!(s.decide(ams("2026-06-10T09:00"), None), Decision::RunNow);
    }

    #[test]
    fn a_wall_clock_jump_forward_over_a_slot_runs_it() {
        let s = sched(&["04:00"]);
        let before = ams("2026-06-10T03:59");
        let ran = s.last_at_or_before(before);
        assert!(matches!(s.decide(before, ran), Decision::WaitUntil(t) if t == ams("2026-06-10T04:00")));
        // The VM was suspended (or NTP stepped the clock) to 07:00.
        assert_eq!(s.decide(ams("2026-06-10T07:00"), ran), Decision::RunNow);
        // A jump backwards does not repeat a slot already run.
        let done = Some(ams("2026-06-10T04:00"));
        assert!(matches!(
            s.decide(ams("2026-06-10T03:30"), done),
            Decision::WaitUntil(_)
        ));
        assert!(!matches!(s.decide(ams("2026-06-10T04:30"), done), Decision::RunNow));
    }

    #[test]
    fn jitter_delays_within_its_bound() {
        let s = Schedule::new(&["04:00".into()], "Europe/Amsterdam", 600, 42).expect("schedule");
        match s.decide(ams("2026-06-10T03:00"), Some(ams("2026-06-09T04:00"))) {
            Decision::WaitUntil(t) => {
                let d = t.as_second() - ams("2026-06-10T04:00").as_second();
                assert!((0..=600).contains(&d), "{d}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn installations_get_offsets_of_their_own_and_keep_them() {
        let slot = ams("2026-06-10T04:00");
        let at = |id: u64, url: &str| {
            Schedule::new(&["04:00".into()], "Europe/Amsterdam", 900, installation_seed(id, url))
                .expect("schedule")
                .jitter(slot)
        };
        let url = "https://12345.rest.afas.online/ProfitRestServices";
        // Same installation (id from its state file), same offset.
        assert_eq!(at(7, url), at(7, url));
        // Many installations spread over the window, not one offset.
        let offsets: std::collections::BTreeSet<i64> = (0..50u64).map(|id| at(id, url)).collect();
        assert!(offsets.len() > 40, "{offsets:?}");
        assert!(offsets.iter().all(|o| (0..=900).contains(o)));
        // Two customers with the same random id still differ.
        assert_ne!(at(7, url), at(7, "https://54321.rest.afas.online/ProfitRestServices"));
    }
}
