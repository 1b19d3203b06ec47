//! Panics on purpose at named points of the threads a sync and the file
//! sink run, for `tests/thread_panics.rs`. Only with the `fault-injection`
//! feature, which no shipped build has; without it [`hit`] is empty.
//!
//! Why: those threads hand work to each other over bounded channels, and a
//! thread that dies looks to the others like one that finished: a closed
//! channel. A bug there must fail the run, never commit or write part of
//! it, and the next run must find the state file as it was.

/// Where a panic can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Finishing the fetched records, once per employee (on the fetching
    /// thread, or beside the diff when the rows went through temporary
    /// files).
    Finishing,
    /// The diff's thread, once per employee it hands on to the writer
    /// (unchanged employees take the fast path and do not pass here).
    Diff,
    /// The thread that holds the write transaction, once per insert.
    Writer,
    /// The file sink's thread reading a run's mutation chunks, per chunk.
    FileReader,
    /// A file sink thread turning chunks into NDJSON, per chunk.
    FileWorker,
}

#[cfg(feature = "fault-injection")]
mod armed {
    use super::Point;
    use std::sync::{Mutex, MutexGuard};

    static ARMED: Mutex<Option<(Point, u64)>> = Mutex::new(None);

    fn lock() -> MutexGuard<'static, Option<(Point, u64)>> {
        // A test that panicked while arming leaves the plain value usable.
        ARMED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Panics at the `nth` pass through `point` (1 = the first), once.
    pub fn arm(point: Point, nth: u64) {
        *lock() = Some((point, nth.max(1)));
    }

    /// Whether an armed panic has not gone off yet.
    pub fn armed() -> bool {
        lock().is_some()
    }

    pub fn disarm() {
        *lock() = None;
    }

    pub fn hit(point: Point) {
        let fire = {
            let mut armed = lock();
            match armed.as_mut() {
                Some((p, left)) if *p == point => {
                    *left -= 1;
                    let fire = *left == 0;
                    if fire {
                        *armed = None;
                    }
                    fire
                }
                _ => false,
            }
        };
        if fire {
            // The one deliberate panic: fires only when a test armed this
            // point, in a build with the `fault-injection` feature. No AFAS
            // data, target answer, config or disk state reaches it.
            panic!("injected fault at {point:?}");
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use armed::{arm, armed, disarm, hit};

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_: Point) {}
