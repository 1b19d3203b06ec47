//! The outbox as a delivery pass reads it: one sink's entries in employee
//! order, in windows of whole chains, each entry with what delivering it
//! needs (its mutation or run, the target's user) from one read
//! transaction — so a pass holds one window, never the whole outbox.

use std::borrow::Cow;

use redb::{ReadableDatabase, ReadableTable};

use super::queries::{chunk_entries, open_chunk};
use super::{
    dec, read_u64, u64_bytes, OutboxEntry, OutboxItem, Store, StoreError, META, MUTATIONS, OUTBOX, OUTBOX_BY_KEY, RUNS,
    TARGET_IDS, TARGET_VERSIONS,
};
use crate::model::{Mutation, MutationKind, RunRecord};

/// Meta: the `outbox_seq` up to which [`OUTBOX_BY_KEY`] holds every entry.
/// A file an older binary wrote entries to since (it does not index them)
/// is indexed again when it is opened.
pub(super) const INDEXED_SEQ: &str = "outbox_indexed_seq";

/// The index's value for a run entry; a mutation's is [`kind_byte`].
pub(super) const RUN_ENTRY: u8 = u8::MAX;

pub(super) fn kind_byte(kind: MutationKind) -> u8 {
    kind as u8
}

fn creates(byte: u8) -> bool {
    byte == MutationKind::Joiner as u8 || byte == MutationKind::Rehire as u8
}

/// The target's user for an employee, as its last answer described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub id: String,
    /// Its version (ETag), when the target keeps them.
    pub version: Option<String>,
}

/// One entry with what it needs to be delivered.
#[derive(Debug, Clone)]
pub struct QueuedJob {
    pub seq: u64,
    pub entry: OutboxEntry,
    pub mutation: Option<Mutation>,
    pub run: Option<RunRecord>,
    /// The employee's user at the target, from an earlier delivery.
    pub target: Option<TargetUser>,
}

/// One window of a sink's due chains, in employee order; `next` resumes
/// after it (`None`: the outbox has no more).
#[derive(Debug, Default)]
pub struct Window {
    pub chains: Vec<Vec<QueuedJob>>,
    pub next: Option<String>,
}

/// What a pass over a sink has before it, counted without holding it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DueSummary {
    pub entries: u64,
    pub chains: u64,
    /// Due chains whose first entry creates a user the target has no id for.
    pub to_create: u64,
    /// Due chains with no target id at all.
    pub without_target: u64,
}

/// The last chunk of mutations read, kept inflated: entries in employee
/// order mostly come from the same run, chunk after chunk.
#[derive(Default)]
struct Chunks {
    run: u64,
    first: u32,
    next_first: Option<u32>,
    raw: Vec<u8>,
}

impl Chunks {
    fn mutation(
        &mut self,
        t: &impl ReadableTable<(u64, u32), &'static [u8]>,
        run: u64,
        index: u32,
    ) -> Result<Option<Mutation>, StoreError> {
        let cached =
            !self.raw.is_empty() && self.run == run && self.first <= index && self.next_first.is_none_or(|n| index < n);
        if !cached {
            let Some(item) = t.range((run, 0)..=(run, index))?.next_back() else {
                return Ok(None);
            };
            let (k, v) = item?;
            self.run = run;
            self.first = k.value().1;
            self.raw = match open_chunk(run, v.value())? {
                Cow::Borrowed(b) => b.to_vec(),
                Cow::Owned(o) => o,
            };
            self.next_first = match index.checked_add(1) {
                Some(after) => match t.range((run, after)..=(run, u32::MAX))?.next() {
                    Some(n) => Some(n?.0.value().1),
                    None => None,
                },
                None => None,
            };
        }
        for (i, bytes) in chunk_entries(run, &self.raw)? {
            if i == index {
                return dec("mutation", bytes).map(Some);
            }
        }
        Ok(None)
    }
}

impl Store {
    /// Counts what a pass over `sink` at `now` would deliver.
    pub fn due_summary(&self, sink: &str, now: i64, force: bool) -> Result<DueSummary, StoreError> {
        let mut sum = DueSummary::default();
        self.walk_due(sink, None, now, force, usize::MAX, false, |chain, first_creates| {
            sum.entries += chain.len() as u64;
            sum.chains += 1;
            if chain.first().is_some_and(|j| j.target.is_none()) {
                sum.without_target += 1;
                if first_creates {
                    sum.to_create += 1;
                }
            }
        })?;
        Ok(sum)
    }

    /// The due chains of employees after `after`, whole chains of at least
    /// `max_entries` entries in all (unless the outbox ends first). Run
    /// entries are not among them: see [`Store::due_run_chain`].
    pub fn due_window(
        &self,
        sink: &str,
        after: Option<&str>,
        max_entries: usize,
        now: i64,
        force: bool,
    ) -> Result<Window, StoreError> {
        let mut w = Window::default();
        let next = self.walk_due(sink, after, now, force, max_entries.max(1), true, |chain, _| {
            w.chains.push(chain)
        })?;
        w.next = next;
        Ok(w)
    }

    /// The sink's due run entries ("sync.*" events, the file sink's runs),
    /// in order: one per run, delivered after the employees' entries.
    pub fn due_run_chain(&self, sink: &str, now: i64, force: bool) -> Result<Vec<QueuedJob>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(OUTBOX_BY_KEY)?;
        let outbox = txn.open_table(OUTBOX)?;
        let runs = txn.open_table(RUNS)?;
        let mut chain = Vec::new();
        for item in index.range((sink, "", 0)..=(sink, "", u64::MAX))? {
            let seq = item?.0.value().2;
            let Some(v) = outbox.get((sink, seq))? else { continue };
            let entry: OutboxEntry = dec("outbox entry", v.value())?;
            if entry.dead {
                continue;
            }
            if chain.is_empty() && !(force || entry.next_at <= now) {
                return Ok(Vec::new());
            }
            let run = match &entry.item {
                OutboxItem::Run { run } => match runs.get(*run)? {
                    Some(g) => Some(dec("run", g.value())?),
                    None => None,
                },
                OutboxItem::Mutation { .. } => None,
            };
            chain.push(QueuedJob {
                seq,
                entry,
                mutation: None,
                run,
                target: None,
            });
        }
        Ok(chain)
    }

    /// Visits the due chains of employees after `after` in key order until
    /// `max_entries` are visited; returns the last key visited when the
    /// outbox has more. `full`: with each entry's mutation (the summary
    /// needs none).
    #[allow(clippy::too_many_arguments)]
    fn walk_due(
        &self,
        sink: &str,
        after: Option<&str>,
        now: i64,
        force: bool,
        max_entries: usize,
        full: bool,
        mut f: impl FnMut(Vec<QueuedJob>, bool),
    ) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(OUTBOX_BY_KEY)?;
        let outbox = txn.open_table(OUTBOX)?;
        let mutations = txn.open_table(MUTATIONS)?;
        let ids = txn.open_table(TARGET_IDS)?;
        let versions = txn.open_table(TARGET_VERSIONS)?;
        let mut chunks = Chunks::default();
        // Past every run entry (key "") when starting; past `after`'s
        // entries when resuming.
        let start = after.unwrap_or("");
        let mut visited = 0usize;
        let mut key = String::new();
        let mut chain: Vec<QueuedJob> = Vec::new();
        // The current employee's chain must wait (its first is not due).
        let mut waits = false;
        // The chain's first entry creates a user.
        let mut first_creates = false;
        let mut emit = |chain: &mut Vec<QueuedJob>, visited: &mut usize, creates: bool| {
            if !chain.is_empty() {
                *visited += chain.len();
                f(std::mem::take(chain), creates);
            }
        };
        for item in index.range((sink, start, u64::MAX)..)? {
            let (k, what) = item?;
            let (s, k_key, seq) = k.value();
            if s != sink {
                break;
            }
            if k_key != key {
                emit(&mut chain, &mut visited, first_creates);
                if visited >= max_entries {
                    return Ok(Some(key));
                }
                key = k_key.to_string();
                waits = false;
            }
            if waits {
                continue;
            }
            let Some(v) = outbox.get((sink, seq))? else {
                // Removed by an older binary that kept no index.
                continue;
            };
            let entry: OutboxEntry = dec("outbox entry", v.value())?;
            if entry.dead {
                continue;
            }
            if chain.is_empty() && !(force || entry.next_at <= now) {
                waits = true;
                continue;
            }
            if chain.is_empty() {
                first_creates = creates(what.value());
            }
            let (mutation, target) = match &entry.item {
                OutboxItem::Mutation { run, index, key } => {
                    let mutation = if full {
                        chunks.mutation(&mutations, *run, *index)?
                    } else {
                        None
                    };
                    let target = if chain.is_empty() {
                        match ids.get((sink, key.as_str()))? {
                            Some(id) => Some(TargetUser {
                                id: id.value().to_string(),
                                version: versions.get((sink, key.as_str()))?.map(|g| g.value().to_string()),
                            }),
                            None => None,
                        }
                    } else {
                        chain.first().and_then(|j| j.target.clone())
                    };
                    (mutation, target)
                }
                OutboxItem::Run { .. } => (None, None),
            };
            chain.push(QueuedJob {
                seq,
                entry,
                mutation,
                run: None,
                target,
            });
        }
        emit(&mut chain, &mut visited, first_creates);
        Ok(None)
    }

    /// Indexes the outbox by employee again when entries were written
    /// since it was last complete (a new table, or an older binary).
    pub(super) fn index_outbox(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META)?;
        let seq = meta.get("outbox_seq")?.and_then(|g| read_u64(g.value())).unwrap_or(0);
        let indexed = meta.get(INDEXED_SEQ)?.and_then(|g| read_u64(g.value()));
        if indexed == Some(seq) {
            return Ok(());
        }
        txn.delete_table(OUTBOX_BY_KEY)?;
        let mut index = txn.open_table(OUTBOX_BY_KEY)?;
        let outbox = txn.open_table(OUTBOX)?;
        let mutations = txn.open_table(MUTATIONS)?;
        let mut chunks = Chunks::default();
        for item in outbox.iter()? {
            let (k, v) = item?;
            let (sink, seq) = k.value();
            let entry: OutboxEntry = dec("outbox entry", v.value())?;
            let what = match &entry.item {
                // A change purged since reads as a mover: nothing to create.
                OutboxItem::Mutation { run, index, .. } => chunks
                    .mutation(&mutations, *run, *index)?
                    .map_or(kind_byte(MutationKind::Mover), |m| kind_byte(m.kind)),
                OutboxItem::Run { .. } => RUN_ENTRY,
            };
            index.insert((sink, entry.item.order_key(), seq), what)?;
        }
        meta.insert(INDEXED_SEQ, u64_bytes(seq).as_slice())?;
        Ok(())
    }
}
