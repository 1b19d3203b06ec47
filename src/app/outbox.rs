//! Why something was not delivered: the outbox by reason (`outbox list`),
//! one entry's story (`outbox show`), and one employee's deliveries.

use serde::{Deserialize, Serialize};

use super::AppError;
use crate::config::Config;
use crate::model::{Attempt, LastDelivery, Mutation, Reason};
use crate::store::{EntryFilter, EntryLog, EntryState, OutboxItem, Store};

/// One outbox entry in a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryLine {
    pub sink: String,
    pub seq: u64,
    /// The employee; `None` for a run's own event.
    pub key: Option<String>,
    /// What it delivers: "joiner", "mover", …, or "run".
    pub change: String,
    pub run: u64,
    pub state: EntryState,
    pub attempts: u32,
    pub created_at: i64,
    pub next_at: i64,
    /// The last answer that failed, if the target gave one.
    pub last_status: Option<u16>,
    /// The last attempt's reason class; `None` when not tried yet (or dead
    /// before attempts were kept).
    pub reason: Option<Reason>,
    pub last_error: Option<String>,
}

/// How many entries are in one state for one reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Group {
    pub sink: String,
    pub state: EntryState,
    pub reason: Option<Reason>,
    pub count: u64,
}

/// `outbox list`: the reasons with their counts, then the entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboxList {
    pub groups: Vec<Group>,
    pub entries: Vec<EntryLine>,
    /// Entries that matched beyond the limit.
    pub more: u64,
    /// Sinks that are stopped, with why.
    #[serde(default)]
    pub stopped: Vec<(String, String)>,
}

/// `outbox show`: one entry, the change it carries and its attempts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryStory {
    pub line: EntryLine,
    pub mutation: Option<Mutation>,
    pub attempts: Vec<Attempt>,
}

/// One employee at one sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EmployeeAtSink {
    pub sink: String,
    pub target_id: Option<String>,
    pub last_delivered: Option<LastDelivery>,
    /// What of theirs is pending or dead there.
    pub entries: Vec<EntryLine>,
}

/// Sinks the last pass stopped, with why (a refusal of the credentials
/// spends no entry's attempt, so this is where it shows).
fn stopped_sinks(store: &Store) -> Result<Vec<(String, String)>, AppError> {
    Ok(store
        .outbox_counts()?
        .into_iter()
        .filter_map(|(s, c)| Some((s, c.stopped?)))
        .collect())
}

fn is_stopped(stopped: &[(String, String)], sink: &str) -> bool {
    stopped.iter().any(|(s, _)| s == sink)
}

fn line(store: &Store, l: &EntryLog, state: EntryState) -> EntryLine {
    let last = l.attempts.last();
    let (key, run, change) = match &l.entry.item {
        OutboxItem::Mutation { run, index, key } => {
            // A change removed by retention or `forget` is shown as such.
            let kind = match store.mutation(*run, *index) {
                Ok(Some(m)) => m.kind.as_str().to_string(),
                _ => "change".to_string(),
            };
            (Some(key.as_str().to_string()), *run, kind)
        }
        OutboxItem::Run { run } => (None, *run, "run".to_string()),
    };
    EntryLine {
        sink: l.sink.clone(),
        seq: l.seq,
        key,
        change,
        run,
        state,
        attempts: l.entry.attempts,
        created_at: l.entry.created_at,
        next_at: l.entry.next_at,
        last_status: last.and_then(|a| a.steps.iter().rev().find_map(|s| s.status.filter(|c| *c >= 400))),
        reason: last.map(|a| a.reason),
        last_error: l.entry.last_error.clone(),
    }
}

/// The entries `filter` means, grouped by reason; at most `limit` listed.
pub fn list(store: &Store, filter: &EntryFilter, limit: usize) -> Result<OutboxList, AppError> {
    let stopped = stopped_sinks(store)?;
    let mut out = OutboxList {
        groups: Vec::new(),
        entries: Vec::new(),
        more: 0,
        stopped: Vec::new(),
    };
    store.each_entry_log(filter.sink.as_deref(), |l| {
        let state = EntryState::of(&l.entry, is_stopped(&stopped, &l.sink));
        let reason = l.attempts.last().map(|a| a.reason);
        if !filter.matches(&l.sink, state, reason) {
            return true;
        }
        match out
            .groups
            .iter_mut()
            .find(|g| g.sink == l.sink && g.state == state && g.reason == reason)
        {
            Some(g) => g.count += 1,
            None => out.groups.push(Group {
                sink: l.sink.clone(),
                state,
                reason,
                count: 1,
            }),
        }
        if out.entries.len() < limit {
            out.entries.push(line(store, &l, state));
        } else {
            out.more += 1;
        }
        true
    })?;
    out.groups
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.sink.cmp(&b.sink)));
    out.stopped = stopped
        .into_iter()
        .filter(|(s, _)| filter.sink.as_deref().is_none_or(|w| w == s))
        .collect();
    Ok(out)
}

/// One entry's whole story.
pub fn show(store: &Store, seq: u64) -> Result<EntryStory, AppError> {
    let Some(l) = store.entry_log(seq)? else {
        return Err(AppError::Request(format!(
            "no outbox entry {seq}: it was delivered, forgotten, or never made (`afas-sync outbox list`)"
        )));
    };
    let stopped = stopped_sinks(store)?;
    let state = EntryState::of(&l.entry, is_stopped(&stopped, &l.sink));
    let mutation = match &l.entry.item {
        OutboxItem::Mutation { run, index, .. } => store.mutation(*run, *index)?,
        OutboxItem::Run { .. } => None,
    };
    Ok(EntryStory {
        line: line(store, &l, state),
        mutation,
        attempts: l.attempts,
    })
}

/// The configured sinks' names.
pub fn sink_names(config: &Config) -> Vec<&'static str> {
    config.sinks.kinds().into_iter().map(|k| k.name()).collect()
}

/// Where one employee stands at each configured sink.
pub fn employee(config: &Config, store: &Store, key: &str) -> Result<Vec<EmployeeAtSink>, AppError> {
    let stopped = stopped_sinks(store)?;
    let logs = store.entry_logs_of(key)?;
    let delivered = store.last_deliveries(key)?;
    let mut out = Vec::new();
    for sink in sink_names(config) {
        let entries = logs
            .iter()
            .filter(|l| l.sink == sink)
            .map(|l| line(store, l, EntryState::of(&l.entry, is_stopped(&stopped, sink))))
            .collect();
        out.push(EmployeeAtSink {
            sink: sink.to_string(),
            target_id: store.target_id(sink, key)?,
            last_delivered: delivered.iter().find(|(s, _)| s == sink).map(|(_, d)| d.clone()),
            entries,
        });
    }
    Ok(out)
}
