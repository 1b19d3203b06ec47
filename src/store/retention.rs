//! Retention and erasure: purging old runs and leavers' personal data,
//! forgetting one employee, compacting the file.

use super::*;

/// What a retention purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeStats {
    pub runs: u64,
    pub mutations: u64,
    pub scrubbed_leavers: u64,
}

pub(super) fn scrub_history(
    history: &redb::Table<(&str, u64), u32>,
    mutations: &mut redb::Table<(u64, u32), &[u8]>,
    key: &EmployeeKey,
) -> Result<(), StoreError> {
    let mut entries = Vec::new();
    for item in history.range((key.as_str(), 0)..=(key.as_str(), u64::MAX))? {
        let (k, v) = item?;
        entries.push((k.value().1, v.value()));
    }
    for (run, idx) in entries {
        rewrite_mutation(mutations, run, idx, |bytes| {
            let mut m: Mutation = dec("mutation", bytes)?;
            m.employee = None;
            m.changes.clear();
            enc("mutation", &m).map(Some)
        })?;
    }
    Ok(())
}

/// Replaces (or, when `f` returns None, drops) one mutation in its chunk.
/// The chunk keeps its key, so later look-ups still find it.
pub(super) fn rewrite_mutation(
    t: &mut redb::Table<(u64, u32), &[u8]>,
    run: u64,
    index: u32,
    f: impl FnOnce(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<(), StoreError> {
    let Some((first, bytes)) = chunk_holding(t, run, index)? else {
        return Ok(());
    };
    let mut f = Some(f);
    let mut kept: Vec<(u32, Vec<u8>)> = Vec::new();
    let raw = open_chunk(run, &bytes)?;
    for (i, m) in chunk_entries(run, &raw)? {
        match f.take_if(|_| i == index) {
            Some(f) => {
                if let Some(new) = f(m)? {
                    kept.push((i, new));
                }
            }
            None => kept.push((i, m.to_vec())),
        }
    }
    if kept.is_empty() {
        t.remove((run, first))?;
    } else {
        let raw = chunk::encode(kept.iter().map(|(i, b)| (*i, b.as_slice())));
        t.insert((run, first), chunk::seal(&raw).as_slice())?;
    }
    Ok(())
}

/// Packs mutations read back (by a migration) into chunks and inserts
/// them, run by run.
pub(super) struct ChunkWriter {
    pub(super) run: u64,
    packer: chunk::Packer,
}

impl ChunkWriter {
    pub(super) fn new(run: u64) -> Self {
        ChunkWriter {
            run,
            packer: chunk::Packer::default(),
        }
    }

    pub(super) fn push(
        &mut self,
        t: &mut redb::Table<(u64, u32), &[u8]>,
        index: u32,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        if let Some(c) = self.packer.push(index, bytes) {
            t.insert((self.run, c.first), c.bytes.as_slice())?;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self, t: &mut redb::Table<(u64, u32), &[u8]>) -> Result<(), StoreError> {
        if let Some(c) = self.packer.finish() {
            t.insert((self.run, c.first), c.bytes.as_slice())?;
        }
        Ok(())
    }
}

impl Store {
    /// Retention: drops runs (with their mutations and history) older than
    /// `history_days`, and removes the personal data of employees who left
    /// more than `leaver_days` ago, keeping their key and dates.
    pub fn purge(&self, today: Date, history_days: i64, leaver_days: i64) -> Result<PurgeStats, StoreError> {
        let mut stats = PurgeStats::default();
        let runs_before = today.checked_sub(history_days.days()).unwrap_or(today);
        let leavers_before = today.checked_sub(leaver_days.days()).unwrap_or(today);
        let txn = self.db.begin_write()?;
        let mut changed = false;
        {
            let mut runs = txn.open_table(RUNS)?;
            let mut mutations = txn.open_table(MUTATIONS)?;
            let mut history = txn.open_table(HISTORY)?;
            let outbox = txn.open_table(OUTBOX)?;
            let mut held = txn.open_table(HELD)?;
            purge_runs(
                &mut runs,
                &mut mutations,
                &mut history,
                &mut held,
                &outbox,
                runs_before,
                &mut stats,
            )?;

            let mut meta = txn.open_table(META)?;
            let mut digest = stored_digest(&meta)?;
            let mut employees = txn.open_table(EMPLOYEES)?;
            let mut leavers = txn.open_table(LEAVERS)?;
            let mut scrub = Vec::new();
            let due = |p: &Provisioned| {
                matches!(p.status, Status::Left { on } if on < leavers_before) && p.employee.is_some()
            };
            if meta.get("leaver_index")?.is_some() {
                let mut entries = Vec::new();
                for item in leavers.range(..(day_key(leavers_before), ""))? {
                    let (k, _) = item?;
                    let (day, key) = k.value();
                    entries.push((day, key.to_string()));
                }
                for (day, key) in entries {
                    leavers.remove((day, key.as_str()))?;
                    changed = true;
                    if let Some(v) = employees.get(key.as_str())? {
                        let p: Provisioned = dec_named(|| format!("employee {key}"), v.value())?;
                        if due(&p) {
                            scrub.push(p);
                        }
                    }
                }
            } else {
                // A file written before the index: one scan finds what is
                // due now and indexes the rest.
                for item in employees.iter()? {
                    let (_, v) = item?;
                    let p: Provisioned = dec("employee", v.value())?;
                    if due(&p) {
                        scrub.push(p);
                    } else if let (Status::Left { on }, Some(_)) = (p.status, &p.employee) {
                        leavers.insert((day_key(on), p.key.as_str()), ())?;
                    }
                }
                meta.insert("leaver_index", [1u8].as_slice())?;
                changed = true;
            }
            // What targets answered about these employees can quote them.
            if !scrub.is_empty() {
                let keys: std::collections::HashSet<&str> = scrub.iter().map(|p| p.key.as_str()).collect();
                drop_attempts_of(&mut txn.open_table(ATTEMPTS)?, &keys)?;
            }
            for mut p in scrub {
                p.employee = None;
                let bytes = enc("employee", &p)?;
                if let Some(old) = employees.insert(p.key.as_str(), bytes.as_slice())? {
                    digest = digest.wrapping_sub(record_hash(p.key.as_str(), old.value()));
                }
                digest = digest.wrapping_add(record_hash(p.key.as_str(), &bytes));
                scrub_history(&history, &mut mutations, &p.key)?;
                stats.scrubbed_leavers += 1;
            }
            if stats.scrubbed_leavers > 0 {
                meta.insert("snapshot_digest", u64_bytes(digest).as_slice())?;
                // Keep the last run's digest in step so `verify` holds.
                set_last_run_digest(&meta, &mut runs, digest)?;
            }
            changed |= stats.runs > 0 || stats.scrubbed_leavers > 0;
        }
        // Nothing to do is the usual day: no commit, no fsync.
        if changed {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(stats)
    }

    /// Erases one employee everywhere: snapshot, history, mutations, outbox.
    /// Returns false when nothing was stored for the key.
    pub fn forget(&self, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let mut found = false;
        {
            let mut meta = txn.open_table(META)?;
            let mut digest = stored_digest(&meta)?;
            let mut employees = txn.open_table(EMPLOYEES)?;
            let mut was_active = false;
            if let Some(old) = employees.remove(key)? {
                digest = digest.wrapping_sub(record_hash(key, old.value()));
                was_active =
                    dec_named::<Provisioned>(|| format!("employee {key}"), old.value())?.status == Status::Active;
                found = true;
            }
            meta.insert("snapshot_digest", u64_bytes(digest).as_slice())?;
            let kept = meta.get("active_employees")?.and_then(|g| read_u64(g.value()));
            if let Some(n) = kept {
                meta.insert(
                    "active_employees",
                    u64_bytes(n.saturating_sub(u64::from(was_active))).as_slice(),
                )?;
            }
            let mut history = txn.open_table(HISTORY)?;
            let mut mutations = txn.open_table(MUTATIONS)?;
            let mut entries = Vec::new();
            for item in history.range((key, 0)..=(key, u64::MAX))? {
                let (k, v) = item?;
                entries.push((k.value().1, v.value()));
            }
            for (run, idx) in entries {
                history.remove((key, run))?;
                rewrite_mutation(&mut mutations, run, idx, |_| Ok(None))?;
                found = true;
            }
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut doomed = Vec::new();
            for item in outbox.iter()? {
                let (k, v) = item?;
                let e: OutboxEntry = dec("outbox entry", v.value())?;
                if e.item.order_key() == key {
                    let (sink, seq) = k.value();
                    doomed.push((sink.to_string(), seq));
                }
            }
            let mut index = txn.open_table(OUTBOX_BY_KEY)?;
            for (sink, seq) in doomed {
                outbox.remove((sink.as_str(), seq))?;
                index.remove((sink.as_str(), key, seq))?;
            }
            let mut ids = txn.open_table(TARGET_IDS)?;
            let mut doomed_ids = Vec::new();
            for item in ids.iter()? {
                let (k, _) = item?;
                let (sink, k2) = k.value();
                if k2 == key {
                    doomed_ids.push(sink.to_string());
                }
            }
            let mut versions = txn.open_table(TARGET_VERSIONS)?;
            for sink in doomed_ids {
                ids.remove((sink.as_str(), key))?;
                versions.remove((sink.as_str(), key))?;
            }
            let mut delivered = txn.open_table(DELIVERED)?;
            for sink in SINKS {
                found |= delivered.remove((sink, key))?.is_some();
            }
            drop_attempts_of(&mut txn.open_table(ATTEMPTS)?, &[key].into_iter().collect())?;
            // A held plan carries the whole record: approved later, it
            // would bring the employee back.
            let mut held = txn.open_table(HELD)?;
            let mut rewritten = Vec::new();
            for item in held.iter()? {
                let (k, v) = item?;
                let mut plan: Plan = dec("held plan", v.value())?;
                let before = (plan.mutations.len(), plan.writes.len());
                plan.mutations.retain(|m| m.key.as_str() != key);
                plan.writes.retain(|w| match w {
                    Write::Upsert(p) => p.key.as_str() != key,
                });
                if (plan.mutations.len(), plan.writes.len()) != before {
                    rewritten.push((k.value(), enc("held plan", &plan)?));
                }
            }
            for (run, bytes) in rewritten {
                held.insert(run, bytes.as_slice())?;
                found = true;
            }
            let mut leavers = txn.open_table(LEAVERS)?;
            let mut doomed_days = Vec::new();
            for item in leavers.iter()? {
                let (k, _) = item?;
                let (day, k2) = k.value();
                if k2 == key {
                    doomed_days.push(day);
                }
            }
            for day in doomed_days {
                leavers.remove((day, key))?;
            }
            let mut runs = txn.open_table(RUNS)?;
            set_last_run_digest(&meta, &mut runs, digest)?;
        }
        txn.commit()?;
        Ok(found)
    }

    /// Rewrites the file to return space freed by a purge.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        Ok(self.db.compact()?)
    }
}

/// Removes the runs before `before` with their mutations and history.
fn purge_runs(
    runs: &mut redb::Table<u64, &[u8]>,
    mutations: &mut redb::Table<(u64, u32), &[u8]>,
    history: &mut redb::Table<(&str, u64), u32>,
    held: &mut redb::Table<u64, &[u8]>,
    outbox: &redb::Table<(&str, u64), &[u8]>,
    before: Date,
    stats: &mut PurgeStats,
) -> Result<(), StoreError> {
    let mut old_runs = Vec::new();
    for item in runs.iter()? {
        let (k, v) = item?;
        let run: RunRecord = dec("run", v.value())?;
        if run.as_of < before {
            old_runs.push(k.value());
        }
    }
    if old_runs.is_empty() {
        return Ok(());
    }
    // A run whose changes still wait for a sink keeps them (and itself)
    // until they are delivered or dead letters are dealt with.
    let mut waiting = std::collections::BTreeSet::new();
    for item in outbox.iter()? {
        let (_, v) = item?;
        match dec::<OutboxEntry>("outbox entry", v.value())?.item {
            OutboxItem::Mutation { run, .. } | OutboxItem::Run { run } => waiting.insert(run),
        };
    }
    old_runs.retain(|id| !waiting.contains(id));
    for id in old_runs {
        let mut chunks = Vec::new();
        let mut keys = Vec::new();
        for item in mutations.range((id, 0)..=(id, u32::MAX))? {
            let (k, v) = item?;
            chunks.push(k.value().1);
            let raw = open_chunk(id, v.value())?;
            for (_, bytes) in chunk_entries(id, &raw)? {
                keys.push(dec::<Mutation>("mutation", bytes)?.key);
            }
        }
        for first in chunks {
            mutations.remove((id, first))?;
        }
        for key in keys {
            history.remove((key.as_str(), id))?;
            stats.mutations += 1;
        }
        runs.remove(id)?;
        // A plan held that long was never approved: it goes with its run
        // (it holds whole records, and could not be approved any more).
        held.remove(id)?;
        stats.runs += 1;
    }
    Ok(())
}
