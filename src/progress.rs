//! What long work is doing right now, for whoever watches: bars on a
//! terminal, an INFO line at a steady interval in the journal, and
//! `status`. The AFAS reader, the sync and the delivery worker report here;
//! watchers take [`snapshot`]s. Process-wide, like the metrics: reporting
//! is a short lock per page or per batch of results, never per row.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The phase of the work under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Idle,
    /// Reading the GetConnectors.
    Reading,
    /// Comparing with the snapshot and committing the run.
    Committing,
    /// Sending the outbox to the sinks.
    Delivering,
    /// Writing the snapshot out.
    Exporting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Reading => "reading AFAS",
            Phase::Committing => "comparing and committing",
            Phase::Delivering => "delivering",
            Phase::Exporting => "exporting",
        }
    }
}

/// One GetConnector's reading so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorProgress {
    pub connector: String,
    pub pages: u64,
    pub rows: u64,
}

/// One sink's delivery pass so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkProgress {
    pub sink: String,
    /// Entries due when the pass began.
    pub due: u64,
    pub done: u64,
    pub failed: u64,
    /// Entries of the pass not handled yet.
    pub pending: u64,
    /// Deliveries per second since the pass began.
    pub rate: f64,
    /// Seconds until the pending entries are done at that rate.
    pub eta_secs: Option<u64>,
    /// False once the pass has ended.
    pub active: bool,
}

/// What is under way, as a watcher sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub phase: Phase,
    /// Seconds the phase has been running.
    pub phase_secs: u64,
    pub connectors: Vec<ConnectorProgress>,
    pub sinks: Vec<SinkProgress>,
    /// Rows written by an export.
    pub exported: u64,
}

struct SinkState {
    due: u64,
    done: u64,
    failed: u64,
    started: Instant,
    ended: Option<Instant>,
}

struct State {
    phase: Phase,
    since: Instant,
    connectors: BTreeMap<String, (u64, u64)>,
    sinks: BTreeMap<String, SinkState>,
    exported: u64,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(|| State {
        phase: Phase::Idle,
        since: Instant::now(),
        connectors: BTreeMap::new(),
        sinks: BTreeMap::new(),
        exported: 0,
    });
    f(state)
}

fn enter(s: &mut State, phase: Phase) {
    if s.phase != phase {
        s.phase = phase;
        s.since = Instant::now();
    }
}

/// A sync starts reading AFAS.
pub fn begin_read() {
    with(|s| {
        enter(s, Phase::Reading);
        s.connectors.clear();
    });
}

/// A page of `rows` rows (good and bad) came from `connector`.
pub fn page(connector: &str, rows: u64) {
    with(|s| {
        let c = s.connectors.entry(connector.to_string()).or_default();
        c.0 += 1;
        c.1 += rows;
    });
}

/// The read is over (or streams on beside it); the diff and commit run.
pub fn begin_commit() {
    with(|s| enter(s, Phase::Committing));
}

/// A sink's pass begins with `due` entries to send.
pub fn begin_delivery(sink: &str, due: u64) {
    with(|s| {
        enter(s, Phase::Delivering);
        s.sinks.insert(
            sink.to_string(),
            SinkState {
                due,
                done: 0,
                failed: 0,
                started: Instant::now(),
                ended: None,
            },
        );
    });
}

/// Results of a sink's pass were recorded: `done` delivered, `failed`
/// refused or put off.
pub fn delivered(sink: &str, done: u64, failed: u64) {
    with(|s| {
        if let Some(p) = s.sinks.get_mut(sink) {
            p.done += done;
            p.failed += failed;
        }
    });
}

/// A sink's pass has ended.
pub fn end_delivery(sink: &str) {
    with(|s| {
        if let Some(p) = s.sinks.get_mut(sink) {
            p.ended = Some(Instant::now());
        }
    });
}

/// An export starts, or wrote `rows` more rows.
pub fn exported(rows: u64) {
    with(|s| {
        enter(s, Phase::Exporting);
        s.exported += rows;
    });
}

/// The work is over.
pub fn idle() {
    with(|s| {
        enter(s, Phase::Idle);
        s.exported = 0;
    });
}

/// What is under way now.
pub fn snapshot() -> Snapshot {
    with(|s| Snapshot {
        phase: s.phase,
        phase_secs: s.since.elapsed().as_secs(),
        connectors: s
            .connectors
            .iter()
            .map(|(c, (pages, rows))| ConnectorProgress {
                connector: c.clone(),
                pages: *pages,
                rows: *rows,
            })
            .collect(),
        sinks: s
            .sinks
            .iter()
            .map(|(name, p)| {
                let elapsed = p.ended.unwrap_or_else(Instant::now).duration_since(p.started);
                let handled = p.done + p.failed;
                let pending = p.due.saturating_sub(handled);
                let rate = if elapsed >= Duration::from_millis(200) {
                    p.done as f64 / elapsed.as_secs_f64()
                } else {
                    0.0
                };
                SinkProgress {
                    sink: name.clone(),
                    due: p.due,
                    done: p.done,
                    failed: p.failed,
                    pending,
                    rate,
                    eta_secs: (rate > 0.0 && p.ended.is_none()).then(|| (pending as f64 / rate).ceil() as u64),
                    active: p.ended.is_none(),
                }
            })
            .collect(),
        exported: s.exported,
    })
}

impl Snapshot {
    /// One line with the counts, for the log; `None` when idle.
    pub fn line(&self) -> Option<String> {
        let parts: Vec<String> = match self.phase {
            Phase::Idle => return None,
            Phase::Reading | Phase::Committing => self
                .connectors
                .iter()
                .map(|c| format!("{} {} pages, {} rows", c.connector, c.pages, c.rows))
                .collect(),
            Phase::Delivering => self.sinks.iter().filter(|s| s.active).map(SinkProgress::line).collect(),
            Phase::Exporting => vec![format!("{} rows", self.exported)],
        };
        Some(format!(
            "{} for {} s: {}",
            self.phase.as_str(),
            self.phase_secs,
            if parts.is_empty() {
                "starting".into()
            } else {
                parts.join("; ")
            }
        ))
    }
}

impl SinkProgress {
    pub fn line(&self) -> String {
        let eta = self
            .eta_secs
            .map(|s| format!(", done in about {s} s"))
            .unwrap_or_default();
        format!(
            "{}: {} done, {} pending, {} failed, {:.0}/s{eta}",
            self.sink, self.done, self.pending, self.failed, self.rate
        )
    }
}

/// How often the INFO line is logged while a phase runs:
/// `AFAS_SYNC_PROGRESS_SECS`, 10 by default.
pub fn log_interval() -> Duration {
    let secs = std::env::var("AFAS_SYNC_PROGRESS_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(10);
    Duration::from_secs(secs)
}

/// Logs the counts at INFO every [`log_interval`] while a phase has been
/// running at least that long, so a long first import is seen moving in
/// the journal. Runs until the task is dropped.
pub async fn log_while_running() {
    let every = log_interval();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let snap = snapshot();
        if snap.phase_secs >= every.as_secs() {
            if let Some(line) = snap.line() {
                tracing::info!("{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_add_up_and_say_how_long_is_left() {
        begin_read();
        page("Profit_Employees", 1000);
        page("Profit_Employees", 500);
        let s = snapshot();
        assert_eq!(s.phase, Phase::Reading);
        assert_eq!(
            s.connectors,
            vec![ConnectorProgress {
                connector: "Profit_Employees".into(),
                pages: 2,
                rows: 1500
            }]
        );
        assert!(s.line().expect("line").contains("Profit_Employees 2 pages, 1500 rows"));
        begin_delivery("scim", 100);
        std::thread::sleep(Duration::from_millis(250));
        delivered("scim", 40, 2);
        let d = snapshot().sinks.into_iter().find(|s| s.sink == "scim").expect("scim");
        assert_eq!((d.done, d.failed, d.pending, d.active), (40, 2, 58, true));
        assert!(d.rate > 0.0 && d.eta_secs.is_some_and(|e| e >= 1), "{d:?}");
        end_delivery("scim");
        let d = snapshot().sinks.into_iter().find(|s| s.sink == "scim").expect("scim");
        assert!(!d.active && d.eta_secs.is_none());
        idle();
        assert_eq!(snapshot().line(), None);
    }
}
