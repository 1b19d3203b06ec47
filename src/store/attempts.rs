//! The delivery log: each outbox entry's last attempts, and the last
//! change delivered per employee and sink. An attempt can echo an e-mail
//! address (a target's `detail`), so it goes with its entry, with
//! `forget` and with the leaver scrub.

use serde::{Deserialize, Serialize};

use super::{dec, enc, OutboxEntry, Store, StoreError, ATTEMPTS, DELIVERED, OUTBOX};
use crate::model::attempt::ATTEMPTS_KEPT;
use crate::model::{Attempt, LastDelivery, Reason};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// What is kept for one entry: whose it is (for `forget` and the scrub,
/// without reading the outbox), and its attempts, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Kept {
    key: String,
    attempts: Vec<Attempt>,
}

/// The sinks' names, as their outbox entries are keyed.
pub const SINKS: [&str; 3] = crate::model::SinkKind::NAMES;

/// One outbox entry with what is known of its attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryLog {
    pub sink: String,
    pub seq: u64,
    pub entry: OutboxEntry,
    pub attempts: Vec<Attempt>,
}

/// Which outbox entries a command means (`outbox list`, `outbox retry`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryFilter {
    pub sink: Option<String>,
    pub state: Option<EntryState>,
    pub reason: Option<Reason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Waiting for delivery (a first try or a retry).
    Pending,
    Dead,
    /// Waiting while its sink is stopped.
    Stopped,
}

impl EntryState {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Pending => "pending",
            EntryState::Dead => "dead",
            EntryState::Stopped => "stopped",
        }
    }

    pub fn of(e: &OutboxEntry, sink_stopped: bool) -> EntryState {
        match (e.dead, sink_stopped) {
            (true, _) => EntryState::Dead,
            (false, true) => EntryState::Stopped,
            (false, false) => EntryState::Pending,
        }
    }
}

impl EntryFilter {
    pub fn matches(&self, sink: &str, state: EntryState, reason: Option<Reason>) -> bool {
        self.sink.as_deref().is_none_or(|s| s == sink)
            && self.state.is_none_or(|s| s == state)
            && self.reason.is_none_or(|r| Some(r) == reason)
    }
}

/// Opens a table added within schema 3; `None` in a file opened read-only
/// before it was.
fn optional<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<'static, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Adds one attempt to an entry's log, keeping the last few.
pub(super) fn record_attempt(
    t: &mut redb::Table<(&str, u64), &[u8]>,
    sink: &str,
    seq: u64,
    key: &str,
    attempt: &Attempt,
) -> Result<(), StoreError> {
    let mut kept: Kept = match t.get((sink, seq))? {
        Some(v) => dec("delivery log", v.value()).unwrap_or_default(),
        None => Kept::default(),
    };
    kept.key = key.to_string();
    kept.attempts.push(attempt.clone());
    let over = kept.attempts.len().saturating_sub(ATTEMPTS_KEPT);
    kept.attempts.drain(..over);
    t.insert((sink, seq), enc("delivery log", &kept)?.as_slice())?;
    Ok(())
}

/// The reason of one entry's last attempt.
pub(super) fn last_reason(
    t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    sink: &str,
    seq: u64,
) -> Result<Option<Reason>, StoreError> {
    let v = t.get((sink, seq))?;
    Ok(v.and_then(|g| dec::<Kept>("delivery log", g.value()).ok())
        .and_then(|k| k.attempts.last().map(|a| a.reason)))
}

/// Removes every attempt of the employees in `keys` (one pass).
pub(super) fn drop_attempts_of(
    t: &mut redb::Table<(&str, u64), &[u8]>,
    keys: &std::collections::HashSet<&str>,
) -> Result<(), StoreError> {
    let mut doomed = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        // One that cannot be read is dropped too: it may hold anything.
        let whose = dec::<Kept>("delivery log", v.value()).map(|k| k.key).ok();
        if whose.as_deref().is_none_or(|w| keys.contains(w)) {
            let (sink, seq) = k.value();
            doomed.push((sink.to_string(), seq));
        }
    }
    for (sink, seq) in doomed {
        t.remove((sink.as_str(), seq))?;
    }
    Ok(())
}

/// The reason of each entry's last attempt, read alongside the outbox (both
/// are in (sink, seq) order), so a count over a large outbox holds none of
/// it in memory.
pub(super) struct LastAttempts {
    range: Option<redb::Range<'static, (&'static str, u64), &'static [u8]>>,
    ahead: Option<(String, u64, Option<Reason>)>,
}

impl LastAttempts {
    pub(super) fn open(txn: &redb::ReadTransaction) -> Result<Self, StoreError> {
        let range = match optional(txn, ATTEMPTS)? {
            Some(t) => Some(t.range::<(&str, u64)>(..)?),
            None => None,
        };
        Ok(LastAttempts { range, ahead: None })
    }

    /// The last attempt's reason of (sink, seq); asked in key order.
    pub(super) fn of(&mut self, sink: &str, seq: u64) -> Result<Option<Reason>, StoreError> {
        loop {
            if self.ahead.is_none() {
                let Some(range) = self.range.as_mut() else {
                    return Ok(None);
                };
                let Some(item) = range.next() else {
                    self.range = None;
                    return Ok(None);
                };
                let (k, v) = item?;
                let (s, q) = k.value();
                let reason = dec::<Kept>("delivery log", v.value())
                    .ok()
                    .and_then(|k| k.attempts.last().map(|a| a.reason));
                self.ahead = Some((s.to_string(), q, reason));
            }
            let Some((s, q, reason)) = &self.ahead else {
                return Ok(None);
            };
            match (s.as_str(), *q).cmp(&(sink, seq)) {
                // A log whose entry is gone: passed over.
                std::cmp::Ordering::Less => self.ahead = None,
                std::cmp::Ordering::Equal => {
                    let r = *reason;
                    self.ahead = None;
                    return Ok(r);
                }
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }
}

impl Store {
    /// One entry's attempts, oldest first.
    pub fn attempts(&self, sink: &str, seq: u64) -> Result<Vec<Attempt>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(t) = optional(&txn, ATTEMPTS)? else {
            return Ok(Vec::new());
        };
        let v = t.get((sink, seq))?;
        // A log that cannot be read (damaged, or written by a later
        // release) is shown as none: it never stops a command.
        Ok(v.and_then(|v| dec::<Kept>("delivery log", v.value()).ok())
            .map(|k| k.attempts)
            .unwrap_or_default())
    }

    /// Every outbox entry (of one sink, or all) with its attempts, in order,
    /// one at a time: `f` returns false to stop.
    pub fn each_entry_log(&self, sink: Option<&str>, mut f: impl FnMut(EntryLog) -> bool) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let outbox = txn.open_table(OUTBOX)?;
        let logs = optional(&txn, ATTEMPTS)?;
        for item in outbox.iter()? {
            let (k, v) = item?;
            let (s, seq) = k.value();
            if sink.is_some_and(|want| want != s) {
                continue;
            }
            let entry: OutboxEntry = dec("outbox entry", v.value())?;
            let attempts = match &logs {
                Some(t) => t
                    .get((s, seq))?
                    .and_then(|g| dec::<Kept>("delivery log", g.value()).ok())
                    .map(|k| k.attempts)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let log = EntryLog {
                sink: s.to_string(),
                seq,
                entry,
                attempts,
            };
            if !f(log) {
                break;
            }
        }
        Ok(())
    }

    /// One entry by its sequence (sequences are unique over all sinks).
    pub fn entry_log(&self, seq: u64) -> Result<Option<EntryLog>, StoreError> {
        let mut found = None;
        self.each_entry_log(None, |l| {
            if l.seq == seq {
                found = Some(l);
                return false;
            }
            true
        })?;
        Ok(found)
    }

    /// The last change delivered for `key` to each sink that has one.
    pub fn last_deliveries(&self, key: &str) -> Result<Vec<(String, LastDelivery)>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(t) = optional(&txn, DELIVERED)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for sink in SINKS {
            if let Some(d) = t.get((sink, key))?.and_then(|v| dec("last delivery", v.value()).ok()) {
                out.push((sink.to_string(), d));
            }
        }
        Ok(out)
    }

    /// The outbox entries of one employee, with their attempts.
    pub fn entry_logs_of(&self, key: &str) -> Result<Vec<EntryLog>, StoreError> {
        let mut out = Vec::new();
        self.each_entry_log(None, |l| {
            if l.entry.item.order_key() == key {
                out.push(l);
            }
            true
        })?;
        Ok(out)
    }
}
