//! The outbox: what each sink still has to deliver, its results, and the
//! ids targets gave employees.

use super::*;
use crate::model::Reason;

/// What an outbox entry delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxItem {
    /// Mutation `index` of run `run`, for one employee.
    Mutation { run: u64, index: u32, key: EmployeeKey },
    /// The run as a whole (webhook `sync.*` events, the file sink).
    Run { run: u64 },
}

impl OutboxItem {
    /// The employee whose entries must stay in order; run items share "".
    pub fn order_key(&self) -> &str {
        match self {
            OutboxItem::Mutation { key, .. } => key.as_str(),
            OutboxItem::Run { .. } => "",
        }
    }
}

/// What a sink's limiter learnt about its target — how many requests at
/// once it took, and the pace a 429 asked for — kept so the next process
/// (each `sync` is one) starts there instead of learning it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkPace {
    /// Which target it was learnt from (a hash of its URL).
    pub target: u64,
    /// Unix seconds when it was learnt.
    pub at: i64,
    pub concurrency: u32,
    /// Requests per second kept to, once a 429 set one.
    pub rate: Option<f64>,
    /// What the target accepted in the second before its last 429.
    pub ceiling: f64,
    /// 429s that set the pace.
    pub cuts: u32,
}

/// A delivery job for one sink, with its retry state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub item: OutboxItem,
    /// Unix seconds when the entry was made (its age decides dead-lettering).
    pub created_at: i64,
    pub attempts: u32,
    /// Unix seconds before which it is not tried again.
    pub next_at: i64,
    pub last_error: Option<String>,
    pub dead: bool,
}

impl OutboxEntry {
    pub fn new(item: OutboxItem, now: i64) -> Self {
        OutboxEntry {
            item,
            created_at: now,
            attempts: 0,
            next_at: now,
            last_error: None,
            dead: false,
        }
    }
}

/// The result of delivering one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    /// Delivered: the entry is removed; the target's id is remembered, and
    /// for a mutation when and how it was delivered.
    Done {
        target_id: Option<TargetRef>,
        at: i64,
        steps: Vec<crate::model::Step>,
    },
    /// Not (yet) delivered: the entry's new retry state, and the attempt
    /// that led to it (none when nothing was tried).
    Update(OutboxEntry, Option<crate::model::Attempt>),
}

/// The target's user for an employee, as its last answer described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    pub key: EmployeeKey,
    pub user: TargetUser,
}

/// Pending and dead-lettered entries of one sink.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboxCounts {
    pub pending: u64,
    pub dead: u64,
    pub oldest_pending_at: Option<i64>,
    /// Why the last delivery pass stopped this sink, while it is stopped.
    pub stopped: Option<String>,
    /// What the sink learnt about its target's pace.
    #[serde(default)]
    pub pace: Option<SinkPace>,
    /// The earliest `next_at` among pending entries.
    #[serde(default)]
    pub next_due: Option<i64>,
    /// Dead entries, and pending ones tried before, by reason (the most
    /// first).
    #[serde(default)]
    pub reasons: Vec<ReasonTally>,
}

/// How many entries of a sink are dead (or waiting) for one reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReasonTally {
    pub dead: bool,
    /// `None`: dead before attempts were kept (an earlier release).
    pub reason: Option<Reason>,
    pub count: u64,
    /// One such entry and its last error.
    pub example_seq: u64,
    pub example: Option<String>,
}

impl OutboxCounts {
    fn tally(&mut self, dead: bool, reason: Option<Reason>, seq: u64, e: &OutboxEntry) {
        match self.reasons.iter_mut().find(|t| t.dead == dead && t.reason == reason) {
            Some(t) => t.count += 1,
            None => self.reasons.push(ReasonTally {
                dead,
                reason,
                count: 1,
                example_seq: seq,
                example: e.last_error.clone(),
            }),
        }
    }

    /// Dead entries for every reason class, and `unknown` for those dead
    /// before attempts were kept.
    pub fn dead_by_class(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Reason::ALL
            .into_iter()
            .map(Some)
            .chain([None])
            .map(|r| (r.map_or("unknown", Reason::as_str), self.dead_for(r)))
    }

    /// Dead entries for one reason.
    pub fn dead_for(&self, reason: Option<Reason>) -> u64 {
        self.reasons
            .iter()
            .filter(|t| t.dead && t.reason == reason)
            .map(|t| t.count)
            .sum()
    }
}

pub(super) fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Store {
    /// Every entry of one sink (pending and dead), in order.
    pub fn outbox_entries(&self, sink: &str) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for item in t.range((sink, 0)..=(sink, u64::MAX))? {
            let (k, v) = item?;
            out.push((k.value().1, dec("outbox entry", v.value())?));
        }
        Ok(out)
    }

    pub fn target_id(&self, sink: &str, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TARGET_IDS)?;
        let v = t.get((sink, key))?;
        Ok(v.map(|g| g.value().to_string()))
    }

    /// The version of the employee's user the target last answered with.
    pub fn target_version(&self, sink: &str, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(TARGET_VERSIONS) {
            Ok(t) => t,
            // Opened read-only before this table was added.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let v = t.get((sink, key))?;
        Ok(v.map(|g| g.value().to_string()))
    }

    /// Applies delivery results of one sink in one transaction.
    pub fn outbox_apply(&self, sink: &str, results: &[(u64, EntryResult)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut index = txn.open_table(OUTBOX_BY_KEY)?;
            let mut ids = txn.open_table(TARGET_IDS)?;
            let mut versions = txn.open_table(TARGET_VERSIONS)?;
            let mut attempts = txn.open_table(ATTEMPTS)?;
            let mut delivered = txn.open_table(DELIVERED)?;
            for (seq, result) in results {
                match result {
                    EntryResult::Done { target_id, at, steps } => {
                        let gone = outbox.remove((sink, *seq))?;
                        let gone = match gone {
                            Some(g) => dec::<OutboxEntry>("outbox entry", g.value()).ok(),
                            None => None,
                        };
                        // Every recorded attempt left a last error: an entry
                        // without one has no log to remove.
                        if gone.as_ref().is_none_or(|e| e.last_error.is_some() || e.attempts > 0) {
                            attempts.remove((sink, *seq))?;
                        }
                        let item = gone.map(|e| e.item);
                        if let Some(item) = &item {
                            index.remove((sink, item.order_key(), *seq))?;
                        }
                        if let Some(OutboxItem::Mutation { run, index, key }) = item {
                            let last = crate::model::LastDelivery {
                                at: *at,
                                run,
                                index,
                                steps: steps.clone(),
                            };
                            delivered.insert((sink, key.as_str()), enc("last delivery", &last)?.as_slice())?;
                        }
                        if let Some(t) = target_id {
                            ids.insert((sink, t.key.as_str()), t.user.id.as_str())?;
                            match &t.user.version {
                                Some(v) => versions.insert((sink, t.key.as_str()), v.as_str())?,
                                None => versions.remove((sink, t.key.as_str()))?,
                            };
                        }
                    }
                    EntryResult::Update(entry, attempt) => {
                        outbox.insert((sink, *seq), enc("outbox entry", entry)?.as_slice())?;
                        if let Some(a) = attempt {
                            record_attempt(&mut attempts, sink, *seq, entry.item.order_key(), a)?;
                        }
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Records why a delivery pass stopped a sink, or clears it.
    pub fn set_sink_stopped(&self, sink: &str, reason: Option<&str>) -> Result<(), StoreError> {
        let key = format!("sink_stopped:{sink}");
        let current = {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(META)?;
            let v = t.get(key.as_str())?.map(|g| g.value().to_vec());
            v
        };
        if current.as_deref() == reason.map(str::as_bytes) {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            match reason {
                Some(r) => {
                    meta.insert(key.as_str(), r.as_bytes())?;
                }
                None => {
                    meta.remove(key.as_str())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// What the sink's limiter learnt last (see [`SinkPace`]), if anything.
    pub fn sink_pace(&self, sink: &str) -> Result<Option<SinkPace>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(META)?;
        let key = format!("sink_pace:{sink}");
        let v = t.get(key.as_str())?;
        v.map(|g| dec("sink pace", g.value())).transpose()
    }

    pub fn set_sink_pace(&self, sink: &str, pace: &SinkPace) -> Result<(), StoreError> {
        let bytes = enc("sink pace", pace)?;
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(format!("sink_pace:{sink}").as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Pending and dead entries per sink, grouped by the reason of their
    /// last attempt, and why a sink is stopped.
    pub fn outbox_counts(&self) -> Result<BTreeMap<String, OutboxCounts>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OUTBOX)?;
        let mut out: BTreeMap<String, OutboxCounts> = BTreeMap::new();
        let meta = txn.open_table(META)?;
        for item in meta.range("sink_stopped:".."sink_stopped;")? {
            let (k, v) = item?;
            if let Some(sink) = k.value().strip_prefix("sink_stopped:") {
                out.entry(sink.to_string()).or_default().stopped =
                    Some(String::from_utf8_lossy(v.value()).into_owned());
            }
        }
        for item in meta.range("sink_pace:".."sink_pace;")? {
            let (k, v) = item?;
            if let Some(sink) = k.value().strip_prefix("sink_pace:") {
                // A hint only: one that cannot be read is learnt again.
                out.entry(sink.to_string()).or_default().pace = dec("sink pace", v.value()).ok();
            }
        }
        // Both tables are in (sink, seq) order: read side by side.
        let mut logs = LastAttempts::open(&txn)?;
        for item in t.iter()? {
            let (k, v) = item?;
            let (sink, seq) = k.value();
            let e: OutboxEntry = dec("outbox entry", v.value())?;
            let last = logs.of(sink, seq)?;
            let c = out.entry(sink.to_string()).or_default();
            if e.dead {
                c.dead += 1;
            } else {
                c.pending += 1;
                c.oldest_pending_at = Some(c.oldest_pending_at.map_or(e.created_at, |o| o.min(e.created_at)));
                c.next_due = Some(c.next_due.map_or(e.next_at, |n| n.min(e.next_at)));
            }
            // An entry not tried yet waits for its turn, with no reason.
            if e.dead || last.is_some() {
                c.tally(e.dead, last, seq, &e);
            }
        }
        for c in out.values_mut() {
            c.reasons
                .sort_by(|a, b| b.dead.cmp(&a.dead).then(b.count.cmp(&a.count)));
        }
        Ok(out)
    }

    /// Puts dead-lettered entries back in the queue with a fresh age, and
    /// makes waiting ones due now — those `filter` means. Returns how many.
    pub fn outbox_retry(&self, filter: &EntryFilter, now: i64) -> Result<u64, StoreError> {
        let stopped: Vec<String> = self
            .outbox_counts()?
            .into_iter()
            .filter(|(_, c)| c.stopped.is_some())
            .map(|(s, _)| s)
            .collect();
        let txn = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let logs = txn.open_table(ATTEMPTS)?;
            let mut revive = Vec::new();
            for item in outbox.iter()? {
                let (k, v) = item?;
                let (s, seq) = k.value();
                if filter.sink.as_deref().is_some_and(|want| want != s) {
                    continue;
                }
                let e: OutboxEntry = dec("outbox entry", v.value())?;
                // Dead entries start over; waiting ones (backing off after
                // a failure) keep their attempts and age but are due now,
                // for an operator who just fixed the target.
                if !(e.dead || e.next_at > now) {
                    continue;
                }
                let reason = match filter.reason {
                    Some(_) => last_reason(&logs, s, seq)?,
                    None => None,
                };
                let state = EntryState::of(&e, stopped.iter().any(|x| x == s));
                if filter.matches(s, state, reason) {
                    revive.push((s.to_string(), seq, e));
                }
            }
            for (s, seq, mut e) in revive {
                if e.dead {
                    e.dead = false;
                    e.attempts = 0;
                    e.created_at = now;
                }
                e.next_at = now;
                outbox.insert((s.as_str(), seq), enc("outbox entry", &e)?.as_slice())?;
                n += 1;
            }
        }
        txn.commit()?;
        Ok(n)
    }
}
