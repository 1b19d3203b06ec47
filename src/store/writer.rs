//! Writing a run: its mutations, snapshot records, history and outbox
//! entries in one transaction, fed from the sync's threads.

use super::*;

/// Run events of a run without mutations (failed, held), in `txn`.
pub(super) fn enqueue_run_events(
    txn: &redb::WriteTransaction,
    targets: &[SinkKind],
    run: u64,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    let mut seq = meta.get("outbox_seq")?.and_then(|g| read_u64(g.value())).unwrap_or(0);
    let mut outbox = txn.open_table(OUTBOX)?;
    let mut index = txn.open_table(OUTBOX_BY_KEY)?;
    enqueue_run_entries(&mut outbox, &mut index, &mut seq, targets, run, false)?;
    set_outbox_seq(&mut meta, seq)?;
    Ok(())
}

/// The next outbox sequence, and that the index holds every entry up to it.
fn set_outbox_seq(meta: &mut redb::Table<&str, &[u8]>, seq: u64) -> Result<(), StoreError> {
    meta.insert("outbox_seq", u64_bytes(seq).as_slice())?;
    meta.insert(queue::INDEXED_SEQ, u64_bytes(seq).as_slice())?;
    Ok(())
}

pub(super) fn enqueue_run_entries(
    outbox: &mut redb::Table<(&str, u64), &[u8]>,
    index: &mut redb::Table<(&str, &str, u64), u8>,
    seq: &mut u64,
    targets: &[SinkKind],
    run: u64,
    has_mutations: bool,
) -> Result<(), StoreError> {
    let now = unix_now();
    for t in targets {
        if t.takes_run(has_mutations) {
            *seq += 1;
            let entry = OutboxEntry::new(OutboxItem::Run { run }, now);
            outbox.insert((t.name(), *seq), enc("outbox entry", &entry)?.as_slice())?;
            index.insert((t.name(), "", *seq), queue::RUN_ENTRY)?;
        }
    }
    Ok(())
}

/// What [`Store::commit_run`]'s feed hands back to be recorded.
pub struct RunOutcome {
    /// The run record; its snapshot digest is filled in on commit.
    pub run: RunRecord,
    /// For the shrink guard of the next run.
    pub source_rows: u64,
    pub mapping_fingerprint: String,
}

/// The open tables of one run's write transaction ([`Store::commit_run`]).
pub struct RunWriter<'t> {
    employees: redb::Table<'t, &'static str, &'static [u8]>,
    /// Active employees once the writes so far are applied.
    active: u64,
    mutations: redb::Table<'t, (u64, u32), &'static [u8]>,
    history: redb::Table<'t, (&'static str, u64), u32>,
    outbox: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    index: redb::Table<'t, (&'static str, &'static str, u64), u8>,
    leavers: redb::Table<'t, (u32, &'static str), ()>,
    packer: MutationPacker,
    targets: &'t [SinkKind],
    base_run: Option<u64>,
    run_id: u64,
    seq: u64,
    digest: u64,
    now: i64,
    counts: [u64; 4],
    written: u32,
}

impl RunWriter<'_> {
    /// The last committed run: what this run is based on.
    pub fn base_run(&self) -> Option<u64> {
        self.base_run
    }

    /// Mutations of `kind` in the chunks stored so far (every one, once the
    /// producer has sealed its last chunk).
    pub fn count(&self, kind: MutationKind) -> u64 {
        self.counts[kind as usize]
    }

    /// Stores one snapshot change.
    pub fn write(&mut self, write: &Write) -> Result<(), StoreError> {
        self.put_write(EncodedWrite::new(write)?)
    }

    /// Stores the next mutation: packed into the run's chunks; its history
    /// entry and an outbox entry per sink that takes mutations follow when
    /// its chunk is sealed (at the latest when the run is committed).
    pub fn mutation(&mut self, m: &Mutation) -> Result<(), StoreError> {
        match self.packer.push(m)? {
            Some(c) => self.put_mutations(c),
            None => Ok(()),
        }
    }

    /// Stores a write or mutation chunk encoded elsewhere (see [`Encoded`]).
    pub fn put(&mut self, item: Encoded) -> Result<(), StoreError> {
        match item {
            Encoded::Write(w) => self.put_write(w),
            Encoded::Mutations(c) => self.put_mutations(c),
        }
    }

    fn put_write(&mut self, w: EncodedWrite) -> Result<(), StoreError> {
        let key = w.key.as_str();
        let was_active = match self.employees.insert(key, w.bytes.as_slice())? {
            Some(old) => {
                self.digest = self.digest.wrapping_sub(record_hash(key, old.value()));
                dec_named::<Provisioned>(|| format!("employee {key}"), old.value())?.status == Status::Active
            }
            None => false,
        };
        self.digest = self.digest.wrapping_add(w.hash);
        self.active = (self.active + u64::from(w.active)).saturating_sub(u64::from(was_active));
        if let Some(day) = w.left_on {
            self.leavers.insert((day, key), ())?;
        }
        Ok(())
    }

    fn put_mutations(&mut self, c: SealedMutations) -> Result<(), StoreError> {
        // Chunks come from one packer, in order; anything else would give
        // two mutations one index.
        if c.first != self.written {
            return Err(StoreError::Conflict(format!(
                "mutation chunk starting at {} where {} was expected",
                c.first, self.written
            )));
        }
        self.mutations.insert((self.run_id, c.first), c.bytes.as_slice())?;
        for (index, (key, kind)) in (c.first..).zip(c.items) {
            self.counts[kind as usize] += 1;
            self.history.insert((key.as_str(), self.run_id), index)?;
            for t in self.targets.iter().filter(|t| t.takes_mutations()) {
                self.seq += 1;
                let item = OutboxItem::Mutation {
                    run: self.run_id,
                    index,
                    key: key.clone(),
                };
                self.outbox.insert(
                    (t.name(), self.seq),
                    enc("outbox entry", &OutboxEntry::new(item, self.now))?.as_slice(),
                )?;
                self.index
                    .insert((t.name(), key.as_str(), self.seq), queue::kind_byte(kind))?;
            }
            self.written = index
                .checked_add(1)
                .ok_or_else(|| StoreError::Conflict("more than 4 billion mutations in one run".into()))?;
        }
        Ok(())
    }
}

/// A write or a chunk of mutations in its stored form. Encoding, packing
/// and compressing are half of what a commit costs per employee and need
/// no transaction, so a sync does them on one core while
/// [`RunWriter::put`] inserts on the other.
pub enum Encoded {
    Write(EncodedWrite),
    Mutations(SealedMutations),
}

pub struct EncodedWrite {
    key: EmployeeKey,
    bytes: Vec<u8>,
    /// Its share of the snapshot digest.
    hash: u64,
    active: bool,
    /// The leaver index's day, for a leaver whose data is still held.
    left_on: Option<u32>,
}

impl EncodedWrite {
    pub fn new(write: &Write) -> Result<Self, StoreError> {
        let Write::Upsert(p) = write;
        let bytes = enc("employee", p)?;
        Ok(EncodedWrite {
            hash: record_hash(p.key.as_str(), &bytes),
            key: p.key.clone(),
            bytes,
            active: p.status == Status::Active,
            left_on: match (p.status, &p.employee) {
                (Status::Left { on }, Some(_)) => Some(day_key(on)),
                _ => None,
            },
        })
    }
}

/// A sealed chunk of a run's mutations, with each one's key and kind for
/// the history and the outbox.
pub struct SealedMutations {
    first: u32,
    bytes: Vec<u8>,
    items: Vec<(EmployeeKey, MutationKind)>,
}

/// Numbers a run's mutations from 0 and packs them into sealed chunks.
#[derive(Default)]
pub struct MutationPacker {
    packer: chunk::Packer,
    next: u32,
    /// Key and kind of the entries gathered and not yet sealed.
    pending: Vec<(EmployeeKey, MutationKind)>,
}

impl MutationPacker {
    /// Adds the next mutation; returns the chunk it closed, if any.
    pub fn push(&mut self, m: &Mutation) -> Result<Option<SealedMutations>, StoreError> {
        let index = self.next;
        self.next = index
            .checked_add(1)
            .ok_or_else(|| StoreError::Conflict("more than 4 billion mutations in one run".into()))?;
        let sealed = self.packer.push(index, enc("mutation", m)?).map(|c| self.sealed(c));
        self.pending.push((m.key.clone(), m.kind));
        Ok(sealed)
    }

    /// Seals the mutations gathered so far, if any.
    pub fn finish(&mut self) -> Option<SealedMutations> {
        let c = self.packer.finish()?;
        Some(self.sealed(c))
    }

    fn sealed(&mut self, c: chunk::Sealed) -> SealedMutations {
        let rest = self.pending.split_off(c.count.min(self.pending.len()));
        SealedMutations {
            first: c.first,
            bytes: c.bytes,
            items: std::mem::replace(&mut self.pending, rest),
        }
    }
}

/// Counts active employees: once, for a file that does not keep the count yet.
pub(super) fn count_active(employees: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StoreError> {
    let mut n = 0;
    for item in employees.iter()? {
        let (k, v) = item?;
        let p: Provisioned = dec_named(|| format!("employee {}", k.value()), v.value())?;
        n += u64::from(p.status == Status::Active);
    }
    Ok(n)
}

/// The snapshot digest as meta holds it (0 for an empty store).
pub(super) fn stored_digest(meta: &redb::Table<&str, &[u8]>) -> Result<u64, StoreError> {
    Ok(meta
        .get("snapshot_digest")?
        .and_then(|g| read_u64(g.value()))
        .unwrap_or(0))
}

pub(super) fn set_last_run_digest(
    meta: &redb::Table<&str, &[u8]>,
    runs: &mut redb::Table<u64, &[u8]>,
    digest: u64,
) -> Result<(), StoreError> {
    let last = meta.get("last_committed_run")?.and_then(|g| read_u64(g.value()));
    let Some(last) = last else { return Ok(()) };
    let bytes = runs.get(last)?.map(|g| g.value().to_vec());
    if let Some(bytes) = bytes {
        let mut run: RunRecord = dec("run", &bytes)?;
        run.snapshot_digest = digest;
        runs.insert(last, enc("run", &run)?.as_slice())?;
    }
    Ok(())
}

impl Store {
    /// Commits a plan: snapshot writes, mutations, history, outbox entries
    /// (one per sink and mutation), the run record and the meta data, in
    /// one transaction. `approved_held` removes that held plan in the same
    /// transaction, so a plan can be applied only once.
    pub fn commit(
        &self,
        run: RunRecord,
        plan: &Plan,
        targets: &[SinkKind],
        approved_held: Option<u64>,
    ) -> Result<RunRecord, StoreError> {
        let committed = self.commit_run(run.id, targets, approved_held, |w| {
            if w.base_run() != plan.base_run {
                return Err(StoreError::Conflict(format!(
                    "the snapshot moved on since this plan was computed (it was based on run {}, the last committed run is {}); reject it and run `afas-sync sync` again",
                    plan.base_run.map(|r| r.to_string()).unwrap_or_else(|| "none".into()),
                    w.base_run().map(|r| r.to_string()).unwrap_or_else(|| "none".into())
                )));
            }
            for write in &plan.writes {
                w.write(write)?;
            }
            for m in &plan.mutations {
                w.mutation(m)?;
            }
            Ok(Some(RunOutcome {
                run,
                source_rows: plan.source.employee_rows,
                mapping_fingerprint: plan.mapping_fingerprint.clone(),
            }))
        })?;
        committed.ok_or_else(|| StoreError::Conflict("the plan was not committed".into()))
    }

    /// One run in one write transaction, fed by `feed` as it goes: the sync
    /// streams its diff in here, so a first import of 100k employees never
    /// holds its plan in memory. `feed` returns what to record, or `None`
    /// to abort (a guard tripped): nothing of the run is then stored.
    ///
    /// redb keeps readers on the last committed state, so `feed` may scan
    /// the snapshot while this transaction rewrites it. Other writers (the
    /// delivery worker) wait until this returns.
    pub fn commit_run(
        &self,
        run_id: u64,
        targets: &[SinkKind],
        approved_held: Option<u64>,
        feed: impl FnOnce(&mut RunWriter<'_>) -> Result<Option<RunOutcome>, StoreError>,
    ) -> Result<Option<RunRecord>, StoreError> {
        let started = std::time::Instant::now();
        let txn = self.db.begin_write()?;
        let run = {
            let mut meta = txn.open_table(META)?;
            let base_run = meta.get("last_committed_run")?.and_then(|g| read_u64(g.value()));
            let digest = stored_digest(&meta)?;
            let seq = meta.get("outbox_seq")?.and_then(|g| read_u64(g.value())).unwrap_or(0);
            let employees = txn.open_table(EMPLOYEES)?;
            let active = match meta.get("active_employees")?.and_then(|g| read_u64(g.value())) {
                Some(n) => n,
                None => count_active(&employees)?,
            };
            let mut w = RunWriter {
                employees,
                active,
                mutations: txn.open_table(MUTATIONS)?,
                history: txn.open_table(HISTORY)?,
                outbox: txn.open_table(OUTBOX)?,
                index: txn.open_table(OUTBOX_BY_KEY)?,
                leavers: txn.open_table(LEAVERS)?,
                packer: MutationPacker::default(),
                targets,
                base_run,
                run_id,
                seq,
                digest,
                now: unix_now(),
                counts: [0; 4],
                written: 0,
            };
            let Some(RunOutcome {
                mut run,
                source_rows,
                mapping_fingerprint,
            }) = feed(&mut w)?
            else {
                drop(w);
                drop(meta);
                txn.abort()?;
                return Ok(None);
            };
            if run.id != run_id {
                return Err(StoreError::Conflict(format!(
                    "run {} cannot record the mutations written for run {run_id}",
                    run.id
                )));
            }
            if let Some(c) = w.packer.finish() {
                w.put_mutations(c)?;
            }
            enqueue_run_entries(&mut w.outbox, &mut w.index, &mut w.seq, targets, run_id, w.written > 0)?;
            run.snapshot_digest = w.digest;
            let mut runs = txn.open_table(RUNS)?;
            runs.insert(run.id, enc("run", &run)?.as_slice())?;
            meta.insert("last_committed_run", u64_bytes(run.id).as_slice())?;
            meta.insert("snapshot_digest", u64_bytes(w.digest).as_slice())?;
            meta.insert("source_rows", u64_bytes(source_rows).as_slice())?;
            meta.insert("mapping_fingerprint", mapping_fingerprint.as_bytes())?;
            set_outbox_seq(&mut meta, w.seq)?;
            meta.insert("active_employees", u64_bytes(w.active).as_slice())?;
            if let Some(id) = approved_held {
                let mut held = txn.open_table(HELD)?;
                held.remove(id)?;
            }
            run
        };
        let written = started.elapsed();
        txn.commit()?;
        tracing::debug!(
            run = run_id,
            written_ms = written.as_millis() as u64,
            commit_ms = (started.elapsed() - written).as_millis() as u64,
            "run written to the state file"
        );
        Ok(Some(run))
    }

    /// Records a run that changed nothing (a failed one), with its run
    /// events for the sinks that want them.
    pub fn record_run(&self, run: &RunRecord, targets: &[SinkKind]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut runs = txn.open_table(RUNS)?;
            runs.insert(run.id, enc("run", run)?.as_slice())?;
            enqueue_run_events(&txn, targets, run.id)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Stores a held plan and its run record together.
    pub fn hold(&self, run: &RunRecord, plan: &Plan, targets: &[SinkKind]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut runs = txn.open_table(RUNS)?;
            runs.insert(run.id, enc("run", run)?.as_slice())?;
            let mut held = txn.open_table(HELD)?;
            held.insert(run.id, enc("plan", plan)?.as_slice())?;
            enqueue_run_events(&txn, targets, run.id)?;
        }
        txn.commit()?;
        Ok(())
    }
}
