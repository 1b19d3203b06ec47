//! The redb state file: the only module that knows redb.
//!
//! One write transaction per run commits the snapshot changes, the
//! mutations, the per-employee history, the outbox entries and the run
//! record together; redb's copy-on-write commit makes that all-or-nothing
//! even under SIGKILL or power loss. A digest of the snapshot is kept in
//! the same transaction so a later open can prove the snapshot is exactly
//! the one the last run committed.

pub mod chunk;
pub mod codec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use jiff::ToSpan;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::EmployeeKey;
use crate::model::RunRecord;
use crate::model::{Mutation, MutationKind, Plan, Provisioned, Status, Write};

/// The schema this binary writes. Bump it with a migration in [`migrate`].
pub const SCHEMA_VERSION: u32 = 3;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EMPLOYEES: TableDefinition<&str, &[u8]> = TableDefinition::new("employees");
/// (employee key, run id) → the index of that employee's mutation in that
/// run. Schema 1 stored the whole mutation here as well as in MUTATIONS:
/// every change was on disk twice, which made a year of history at 100k
/// employees several times the size of the snapshot.
const HISTORY: TableDefinition<(&str, u64), u32> = TableDefinition::new("history_index");
/// Schema 1's history table, read once by the migration and then deleted.
const HISTORY_V1: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
/// (run id, index of the chunk's first mutation) → a chunk of that run's
/// mutations (see `chunk`: why they are packed).
const MUTATIONS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("mutation_chunks");
/// Schema 1's one-mutation-per-entry table, read once by the migration.
const MUTATIONS_V1: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("mutations");
/// (sink name, sequence) → outbox entry.
const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
const HELD: TableDefinition<u64, &[u8]> = TableDefinition::new("held_plans");
/// (sink, employee key) → the target's id for that employee (the SCIM id).
const TARGET_IDS: TableDefinition<(&str, &str), &str> = TableDefinition::new("target_ids");
/// (leave date as yyyymmdd, employee key) of leavers whose personal data is
/// still kept: the retention purge reads only the ones that are due
/// instead of decoding the whole snapshot every run (~7 % of a no-op
/// sync's instructions at 10k). An entry may be stale (rehired, forgotten,
/// left again later); the purge checks the record before it scrubs.
/// Added within schema 3: a file without it is indexed by its next purge
/// (meta `leaver_index`), which scans the snapshot once.
const LEAVERS: TableDefinition<(u32, &str), ()> = TableDefinition::new("leavers_by_date");

/// A date as the leaver index orders it. Years before 0 (never a leave
/// date) sort first.
fn day_key(d: Date) -> u32 {
    let year = u32::try_from(d.year()).unwrap_or(0);
    year * 10_000 + d.month() as u32 * 100 + d.day() as u32
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state file {path} is in use by another afas-sync process (is the daemon running? `systemctl status afas-sync`)")]
    Locked { path: PathBuf },
    #[error("the state file {path} was written by a newer afas-sync (schema {found}; this binary knows {known}). It was not changed: install the newer binary again")]
    Newer { path: PathBuf, found: u32, known: u32 },
    #[error("the state file {path} is damaged ({reason}). It was not changed: restore a backup, or move it away to start afresh (the next sync is then a full first import)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot open the state file {path}: {reason}. Check store.path and that the directory is writable")]
    Open { path: PathBuf, reason: String },
    #[error("cannot back up {path} before migrating it: {reason}")]
    Backup { path: PathBuf, reason: String },
    #[error("state file error: {0}")]
    Redb(String),
    #[error("stored {what} cannot be read: {reason}")]
    Codec { what: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// Writing what was read from the store elsewhere (an export file) failed.
    #[error("{0}")]
    Io(String),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

macro_rules! redb_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.to_string())
            }
        }
    )*};
}
redb_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError
);

fn enc<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    codec::encode(v).map_err(|e| StoreError::Codec {
        what: what.into(),
        reason: e.to_string(),
    })
}

pub(crate) fn dec<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    dec_named(|| what.to_string(), bytes)
}

/// [`dec`] whose name is built only on failure: a scan decodes every
/// employee, and formatting each key up front was a string per row.
pub(crate) fn dec_named<T: serde::de::DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    codec::decode(bytes).map_err(|e| StoreError::Codec {
        what: what(),
        reason: e.to_string(),
    })
}

/// One employee's stored record and history (run id, mutation).
pub type EmployeeRecord = (Option<Provisioned>, Vec<(u64, Mutation)>);

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

/// Which entries a sink gets from a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTarget {
    pub sink: String,
    /// One entry per mutation.
    pub mutations: bool,
    /// One entry per run: always, or only for runs with mutations.
    pub run_event: RunEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEvent {
    Never,
    WithMutations,
    Always,
}

/// The result of delivering one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    /// Delivered: the entry is removed; the target's id is remembered.
    Done { target_id: Option<(EmployeeKey, String)> },
    /// Not (yet) delivered: the entry's new retry state.
    Update(OutboxEntry),
}

/// Pending and dead-lettered entries of one sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxCounts {
    pub pending: u64,
    pub dead: u64,
    pub oldest_pending_at: Option<i64>,
    /// Why the last delivery pass stopped this sink, while it is stopped.
    pub stopped: Option<String>,
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Run events of a run without mutations (failed, held), in `txn`.
fn enqueue_run_events(txn: &redb::WriteTransaction, targets: &[OutboxTarget], run: u64) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    let mut seq = meta.get("outbox_seq")?.and_then(|g| read_u64(g.value())).unwrap_or(0);
    let mut outbox = txn.open_table(OUTBOX)?;
    enqueue_run_entries(&mut outbox, &mut seq, targets, run, false)?;
    meta.insert("outbox_seq", u64_bytes(seq).as_slice())?;
    Ok(())
}

fn enqueue_run_entries(
    outbox: &mut redb::Table<(&str, u64), &[u8]>,
    seq: &mut u64,
    targets: &[OutboxTarget],
    run: u64,
    has_mutations: bool,
) -> Result<(), StoreError> {
    let now = unix_now();
    for t in targets {
        let wanted = match t.run_event {
            RunEvent::Never => false,
            RunEvent::WithMutations => has_mutations,
            RunEvent::Always => true,
        };
        if wanted {
            *seq += 1;
            let entry = OutboxEntry::new(OutboxItem::Run { run }, now);
            outbox.insert((t.sink.as_str(), *seq), enc("outbox entry", &entry)?.as_slice())?;
        }
    }
    Ok(())
}

/// The committed state the guards compare against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub schema_version: u32,
    pub last_committed_run: Option<u64>,
    pub source_rows: Option<u64>,
    pub mapping_fingerprint: Option<String>,
    pub snapshot_digest: u64,
    /// Kept with every commit so status and metrics need no scan; absent
    /// in files written before it was kept (counted on the next commit).
    pub active_employees: Option<u64>,
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
    leavers: redb::Table<'t, (u32, &'static str), ()>,
    packer: MutationPacker,
    targets: &'t [OutboxTarget],
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
            for t in self.targets.iter().filter(|t| t.mutations) {
                self.seq += 1;
                let item = OutboxItem::Mutation {
                    run: self.run_id,
                    index,
                    key: key.clone(),
                };
                self.outbox.insert(
                    (t.sink.as_str(), self.seq),
                    enc("outbox entry", &OutboxEntry::new(item, self.now))?.as_slice(),
                )?;
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
fn count_active(employees: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, StoreError> {
    let mut n = 0;
    for item in employees.iter()? {
        let (k, v) = item?;
        let p: Provisioned = dec_named(|| format!("employee {}", k.value()), v.value())?;
        n += u64::from(p.status == Status::Active);
    }
    Ok(n)
}

/// The snapshot digest as meta holds it (0 for an empty store).
fn stored_digest(meta: &redb::Table<&str, &[u8]>) -> Result<u64, StoreError> {
    Ok(meta
        .get("snapshot_digest")?
        .and_then(|g| read_u64(g.value()))
        .unwrap_or(0))
}

/// What a retention purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeStats {
    pub runs: u64,
    pub mutations: u64,
    pub scrubbed_leavers: u64,
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

fn u64_bytes(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

fn read_u64(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_le_bytes)
}

/// redb caches up to 1 GiB of pages by default, which a sync's single pass
/// over the snapshot fills with pages it never reads again: at 100k
/// employees that alone was ~130 MiB of resident memory. The interior
/// B-tree pages, which are what lookups re-read, fit many times over in
/// this budget.
const CACHE_BYTES: usize = 16 << 20;

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(CACHE_BYTES);
    b
}

fn record_hash(key: &str, value: &[u8]) -> u64 {
    codec::fnv1a(&[key.as_bytes(), value])
}

impl Store {
    /// Opens (or creates) the state file, migrating an older schema after
    /// copying the file to `<name>.schema<N>.bak`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
        }
        let existed = path.exists() && std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false);
        if existed {
            probe_read_only(path)?;
        }
        let db = builder().create(path).map_err(|e| map_open_error(e, path))?;
        let mut store = Store {
            db,
            path: path.to_path_buf(),
        };
        let found = store.schema_version()?;
        match found {
            None if existed => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason: "no schema version: not an afas-sync state file".into(),
                })
            }
            None => store.init()?,
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Newer {
                    path: path.to_path_buf(),
                    found: v,
                    known: SCHEMA_VERSION,
                })
            }
            Some(v) if v < SCHEMA_VERSION => {
                drop(store);
                backup(path, v)?;
                let db = builder().create(path).map_err(|e| map_open_error(e, path))?;
                store = Store {
                    db,
                    path: path.to_path_buf(),
                };
                migrate(&store, v)?;
            }
            Some(_) => {}
        }
        store.ensure_tables()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn schema_version(&self) -> Result<Option<u32>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let v = table.get("schema_version")?;
        Ok(v.and_then(|g| g.value().try_into().ok().map(u32::from_le_bytes)))
    }

    fn init(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())?;
            // An empty store's (empty) leaver index is complete.
            meta.insert("leaver_index", [1u8].as_slice())?;
            txn.open_table(LEAVERS)?;
            txn.open_table(EMPLOYEES)?;
            txn.open_table(HISTORY)?;
            txn.open_table(RUNS)?;
            txn.open_table(MUTATIONS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(HELD)?;
        }
        txn.commit()?;
        self.ensure_tables()
    }

    /// Creates tables added within the current schema (empty, so older
    /// files of the same schema stay readable).
    fn ensure_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(TARGET_IDS)?;
        txn.open_table(LEAVERS)?;
        txn.commit()?;
        Ok(())
    }

    pub fn meta(&self) -> Result<Meta, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(META)?;
        let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> { Ok(t.get(k)?.map(|g| g.value().to_vec())) };
        Ok(Meta {
            schema_version: get("schema_version")?
                .and_then(|b| b.as_slice().try_into().ok().map(u32::from_le_bytes))
                .unwrap_or(0),
            last_committed_run: get("last_committed_run")?.as_deref().and_then(read_u64),
            source_rows: get("source_rows")?.as_deref().and_then(read_u64),
            mapping_fingerprint: get("mapping_fingerprint")?.map(|b| String::from_utf8_lossy(&b).into_owned()),
            snapshot_digest: get("snapshot_digest")?.as_deref().and_then(read_u64).unwrap_or(0),
            active_employees: get("active_employees")?.as_deref().and_then(read_u64),
        })
    }

    /// The next run id (one past the highest recorded).
    pub fn next_run_id(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let last = t.last()?.map(|(k, _)| k.value());
        Ok(last.map(|k| k + 1).unwrap_or(1))
    }

    /// The whole snapshot, keyed by employee.
    pub fn snapshot(&self) -> Result<BTreeMap<EmployeeKey, Provisioned>, StoreError> {
        let mut out = BTreeMap::new();
        self.scan_snapshot(|p| {
            out.insert(p.key.clone(), p);
            Ok(())
        })?;
        Ok(out)
    }

    /// Visits every stored employee in key order, decoding one at a time, so
    /// a sync never holds the whole snapshot in memory.
    /// Visits every stored employee in key order as (key, stored bytes),
    /// for a caller that decodes only what it needs.
    pub fn scan_snapshot_raw(
        &self,
        mut f: impl FnMut(&str, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(EMPLOYEES)?;
        for item in t.iter()? {
            let (k, v) = item?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    pub fn scan_snapshot(&self, mut f: impl FnMut(Provisioned) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(EMPLOYEES)?;
        for item in t.iter()? {
            let (k, v) = item?;
            f(dec_named(|| format!("employee {}", k.value()), v.value())?)?;
        }
        Ok(())
    }

    /// (active, all) stored employees: the kept count when there is one,
    /// else one scan.
    pub fn employee_counts(&self) -> Result<(u64, u64), StoreError> {
        let all = self.employee_count()?;
        if let Some(active) = self.meta()?.active_employees {
            return Ok((active, all));
        }
        let txn = self.db.begin_read()?;
        Ok((count_active(&txn.open_table(EMPLOYEES)?)?, all))
    }

    pub fn employee_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(EMPLOYEES)?.len()?)
    }

    /// Commits a plan: snapshot writes, mutations, history, outbox entries
    /// (one per sink and mutation), the run record and the meta data, in
    /// one transaction. `approved_held` removes that held plan in the same
    /// transaction, so a plan can be applied only once.
    pub fn commit(
        &self,
        run: RunRecord,
        plan: &Plan,
        targets: &[OutboxTarget],
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
        targets: &[OutboxTarget],
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
            enqueue_run_entries(&mut w.outbox, &mut w.seq, targets, run_id, w.written > 0)?;
            run.snapshot_digest = w.digest;
            let mut runs = txn.open_table(RUNS)?;
            runs.insert(run.id, enc("run", &run)?.as_slice())?;
            meta.insert("last_committed_run", u64_bytes(run.id).as_slice())?;
            meta.insert("snapshot_digest", u64_bytes(w.digest).as_slice())?;
            meta.insert("source_rows", u64_bytes(source_rows).as_slice())?;
            meta.insert("mapping_fingerprint", mapping_fingerprint.as_bytes())?;
            meta.insert("outbox_seq", u64_bytes(w.seq).as_slice())?;
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
    pub fn record_run(&self, run: &RunRecord, targets: &[OutboxTarget]) -> Result<(), StoreError> {
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
    pub fn hold(&self, run: &RunRecord, plan: &Plan, targets: &[OutboxTarget]) -> Result<(), StoreError> {
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

    /// One mutation of a run, if retention or `forget` has not removed it.
    pub fn mutation(&self, run: u64, index: u32) -> Result<Option<Mutation>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MUTATIONS)?;
        read_mutation(&t, run, index)
    }

    pub fn run_if_exists(&self, id: u64) -> Result<Option<RunRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let v = t.get(id)?;
        v.map(|g| dec("run", g.value())).transpose()
    }

    pub fn target_id(&self, sink: &str, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TARGET_IDS)?;
        let v = t.get((sink, key))?;
        Ok(v.map(|g| g.value().to_string()))
    }

    /// Applies delivery results of one sink in one transaction.
    pub fn outbox_apply(&self, sink: &str, results: &[(u64, EntryResult)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut ids = txn.open_table(TARGET_IDS)?;
            for (seq, result) in results {
                match result {
                    EntryResult::Done { target_id } => {
                        outbox.remove((sink, *seq))?;
                        if let Some((key, id)) = target_id {
                            ids.insert((sink, key.as_str()), id.as_str())?;
                        }
                    }
                    EntryResult::Update(entry) => {
                        outbox.insert((sink, *seq), enc("outbox entry", entry)?.as_slice())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// This installation's random id, made on first use and kept in the
    /// state file (the schedule's jitter is derived from it).
    pub fn installation_id(&self) -> Result<u64, StoreError> {
        {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(META)?;
            if let Some(id) = t.get("installation_id")?.as_ref().and_then(|g| read_u64(g.value())) {
                return Ok(id);
            }
        }
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(jiff::Timestamp::now().as_nanosecond() as u128);
        h.write_u32(std::process::id());
        let id = h.finish();
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("installation_id", id.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(id)
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

    /// Pending and dead entries per sink, and why a sink is stopped.
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
        for item in t.iter()? {
            let (k, v) = item?;
            let e: OutboxEntry = dec("outbox entry", v.value())?;
            let c = out.entry(k.value().0.to_string()).or_default();
            if e.dead {
                c.dead += 1;
            } else {
                c.pending += 1;
                c.oldest_pending_at = Some(c.oldest_pending_at.map_or(e.created_at, |o| o.min(e.created_at)));
            }
        }
        Ok(out)
    }

    /// Puts dead-lettered entries (of one sink, or all) back in the queue
    /// with a fresh age. Returns how many.
    pub fn outbox_retry(&self, sink: Option<&str>, now: i64) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut revive = Vec::new();
            for item in outbox.iter()? {
                let (k, v) = item?;
                let (s, seq) = k.value();
                if sink.is_some_and(|want| want != s) {
                    continue;
                }
                let e: OutboxEntry = dec("outbox entry", v.value())?;
                // Dead entries start over; waiting ones (backing off after
                // a failure) keep their attempts and age but are due now,
                // for an operator who just fixed the target.
                if e.dead || e.next_at > now {
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

    pub fn held_plans(&self) -> Result<Vec<(u64, Plan)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HELD)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value(), dec("held plan", v.value())?));
        }
        Ok(out)
    }

    pub fn held_plan(&self, run: u64) -> Result<Plan, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HELD)?;
        let v = t
            .get(run)?
            .ok_or_else(|| StoreError::NotFound(format!("no held plan for run {run} (see `afas-sync plan show`)")))?;
        dec("held plan", v.value())
    }

    /// Drops a held plan and marks its run rejected.
    pub fn reject_held(&self, run_id: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut held = txn.open_table(HELD)?;
            if held.remove(run_id)?.is_none() {
                return Err(StoreError::NotFound(format!("no held plan for run {run_id}")));
            }
            let mut runs = txn.open_table(RUNS)?;
            let existing = runs.get(run_id)?.map(|g| g.value().to_vec());
            if let Some(bytes) = existing {
                let mut run: RunRecord = dec("run", &bytes)?;
                run.outcome = crate::model::Outcome::Rejected;
                runs.insert(run_id, enc("run", &run)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn run(&self, id: u64) -> Result<RunRecord, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let v = t.get(id)?.ok_or_else(|| StoreError::NotFound(format!("no run {id}")))?;
        dec("run", v.value())
    }

    /// The newest runs first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let mut out = Vec::new();
        for item in t.iter()?.rev().take(limit) {
            let (_, v) = item?;
            out.push(dec("run", v.value())?);
        }
        Ok(out)
    }

    pub fn run_mutations(&self, id: u64) -> Result<Vec<Mutation>, StoreError> {
        let mut out = Vec::new();
        self.scan_run_mutations(id, |_, m| {
            out.push(m);
            Ok(())
        })?;
        Ok(out)
    }

    /// Visits one run's mutations in order with their indexes, decoding one
    /// at a time.
    pub fn scan_run_mutations(
        &self,
        id: u64,
        mut f: impl FnMut(u32, Mutation) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_run_chunks(id, |stored| chunk_mutations(id, &stored, &mut f))
    }

    /// A run's mutation chunks as stored, in order, each to be opened with
    /// [`chunk_mutations`] (which may run on another thread).
    pub fn scan_run_chunks(
        &self,
        id: u64,
        mut f: impl FnMut(Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MUTATIONS)?;
        for item in t.range((id, 0)..=(id, u32::MAX))? {
            let (_, v) = item?;
            f(v.value().to_vec())?;
        }
        Ok(())
    }

    /// The stored record of one employee and its history (run id, mutation).
    /// One employee's stored record, without its history.
    pub fn provisioned(&self, key: &str) -> Result<Option<Provisioned>, StoreError> {
        let txn = self.db.begin_read()?;
        let e = txn.open_table(EMPLOYEES)?;
        let v = e.get(key)?;
        v.map(|g| dec("employee", g.value())).transpose()
    }

    pub fn employee(&self, key: &str) -> Result<EmployeeRecord, StoreError> {
        let txn = self.db.begin_read()?;
        let e = txn.open_table(EMPLOYEES)?;
        let current = match e.get(key)? {
            Some(v) => Some(dec("employee", v.value())?),
            None => None,
        };
        let h = txn.open_table(HISTORY)?;
        let m = txn.open_table(MUTATIONS)?;
        let mut history = Vec::new();
        for item in h.range((key, 0)..=(key, u64::MAX))? {
            let (k, v) = item?;
            let run = k.value().1;
            let mutation = read_mutation(&m, run, v.value())?.ok_or_else(|| StoreError::Codec {
                what: format!("history of {key}"),
                reason: format!("run {run} has no mutation {}", v.value()),
            })?;
            history.push((run, mutation));
        }
        Ok((current, history))
    }

    /// Recomputes the snapshot digest and compares it with the one the last
    /// commit stored, and with the last committed run's record.
    pub fn verify(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(EMPLOYEES)?;
        let mut digest = 0u64;
        let mut active = 0u64;
        for item in t.iter()? {
            let (k, v) = item?;
            digest = digest.wrapping_add(record_hash(k.value(), v.value()));
            let p: Provisioned = dec_named(|| format!("employee {}", k.value()), v.value())?;
            active += u64::from(p.status == Status::Active);
        }
        drop(t);
        drop(txn);
        let meta = self.meta()?;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        if digest != meta.snapshot_digest {
            return Err(corrupt(format!(
                "snapshot digest {digest:016x} differs from the committed {:016x}",
                meta.snapshot_digest
            )));
        }
        if let Some(counted) = meta.active_employees.filter(|n| *n != active) {
            return Err(corrupt(format!(
                "{active} active employees stored, the count kept says {counted}"
            )));
        }
        if let Some(id) = meta.last_committed_run {
            let run = self.run(id)?;
            if run.snapshot_digest != digest {
                return Err(corrupt(format!(
                    "run {id} committed digest {:016x}",
                    run.snapshot_digest
                )));
            }
        }
        Ok(())
    }

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
            let mut old_runs = Vec::new();
            for item in runs.iter()? {
                let (k, v) = item?;
                let run: RunRecord = dec("run", v.value())?;
                if run.as_of < runs_before {
                    old_runs.push(k.value());
                }
            }
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
                stats.runs += 1;
            }

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
            for (sink, seq) in doomed {
                outbox.remove((sink.as_str(), seq))?;
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
            for sink in doomed_ids {
                ids.remove((sink.as_str(), key))?;
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

fn set_last_run_digest(
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

fn scrub_history(
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

/// The chunk that holds (or held) mutation `index` of `run`: the one with
/// the greatest first index not above it. Its key and a copy of its bytes.
fn chunk_holding(
    t: &impl ReadableTable<(u64, u32), &'static [u8]>,
    run: u64,
    index: u32,
) -> Result<Option<(u32, Vec<u8>)>, StoreError> {
    match t.range((run, 0)..=(run, index))?.next_back() {
        Some(item) => {
            let (k, v) = item?;
            Ok(Some((k.value().1, v.value().to_vec())))
        }
        None => Ok(None),
    }
}

/// A stored chunk's raw layout (inflated when compressed).
fn open_chunk(run: u64, stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, StoreError> {
    chunk::open(stored).map_err(|reason| StoreError::Codec {
        what: format!("mutations of run {run}"),
        reason,
    })
}

fn chunk_entries(run: u64, raw: &[u8]) -> Result<Vec<(u32, &[u8])>, StoreError> {
    chunk::entries(raw).map_err(|reason| StoreError::Codec {
        what: format!("mutations of run {run}"),
        reason,
    })
}

/// The mutations of one stored chunk of run `run`, in order.
pub fn chunk_mutations(
    run: u64,
    stored: &[u8],
    mut f: impl FnMut(u32, Mutation) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let raw = open_chunk(run, stored)?;
    for (index, bytes) in chunk_entries(run, &raw)? {
        f(index, dec("mutation", bytes)?)?;
    }
    Ok(())
}

fn read_mutation(
    t: &impl ReadableTable<(u64, u32), &'static [u8]>,
    run: u64,
    index: u32,
) -> Result<Option<Mutation>, StoreError> {
    let Some((_, bytes)) = chunk_holding(t, run, index)? else {
        return Ok(None);
    };
    let raw = open_chunk(run, &bytes)?;
    for (i, m) in chunk_entries(run, &raw)? {
        if i == index {
            return dec("mutation", m).map(Some);
        }
    }
    Ok(None)
}

/// Replaces (or, when `f` returns None, drops) one mutation in its chunk.
/// The chunk keeps its key, so later look-ups still find it.
fn rewrite_mutation(
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
struct ChunkWriter {
    run: u64,
    packer: chunk::Packer,
}

impl ChunkWriter {
    fn new(run: u64) -> Self {
        ChunkWriter {
            run,
            packer: chunk::Packer::default(),
        }
    }

    fn push(&mut self, t: &mut redb::Table<(u64, u32), &[u8]>, index: u32, bytes: Vec<u8>) -> Result<(), StoreError> {
        if let Some(c) = self.packer.push(index, bytes) {
            t.insert((self.run, c.first), c.bytes.as_slice())?;
        }
        Ok(())
    }

    fn flush(&mut self, t: &mut redb::Table<(u64, u32), &[u8]>) -> Result<(), StoreError> {
        if let Some(c) = self.packer.finish() {
            t.insert((self.run, c.first), c.bytes.as_slice())?;
        }
        Ok(())
    }
}

/// Looks at an existing file without any chance of writing to it: a file
/// of a newer schema, another program's file or a damaged one is refused
/// before the writable open (which updates redb's header) ever happens.
fn probe_read_only(path: &Path) -> Result<(), StoreError> {
    let db = match redb::Builder::new().open_read_only(path) {
        Ok(db) => db,
        // Not shut down cleanly (a crash or SIGKILL): the writable open
        // repairs it, which is redb's normal recovery of our own file.
        Err(redb::DatabaseError::RepairAborted) => return Ok(()),
        Err(e) => return Err(map_open_error(e, path)),
    };
    let txn = db.begin_read()?;
    let version = match txn.open_table(META) {
        Ok(t) => t
            .get("schema_version")?
            .and_then(|g| g.value().try_into().ok().map(u32::from_le_bytes)),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    match version {
        None => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: "no schema version: not an afas-sync state file".into(),
        }),
        Some(v) if v > SCHEMA_VERSION => Err(StoreError::Newer {
            path: path.to_path_buf(),
            found: v,
            known: SCHEMA_VERSION,
        }),
        Some(_) => Ok(()),
    }
}

fn map_open_error(e: redb::DatabaseError, path: &Path) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: io.to_string(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => StoreError::Open {
            path: path.to_path_buf(),
            reason: io.to_string(),
        },
        redb::DatabaseError::Storage(s) => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: s.to_string(),
        },
        other => StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

fn backup(path: &Path, version: u32) -> Result<(), StoreError> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".schema{version}.bak"));
    let target = path.with_file_name(name);
    std::fs::copy(path, &target).map_err(|e| StoreError::Backup {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// Migrations from older schemas, one step at a time, all in one
/// transaction: a crash leaves the old schema (and the backup) intact.
/// Each step is proven by a fixture file of the schema it starts from
/// (tests/fixtures/store-schema<N>.redb).
fn migrate(store: &Store, from: u32) -> Result<(), StoreError> {
    let txn = store.db.begin_write()?;
    {
        let mut version = from;
        if version == 1 {
            // 1 → 2: mutations packed into chunks, and history an index
            // into them instead of a second copy. Both rebuilt from schema
            // 1's mutations, which it kept in step with its history
            // (written, scrubbed and removed together).
            let old = txn.open_table(MUTATIONS_V1)?;
            let mut mutations = txn.open_table(MUTATIONS)?;
            let mut history = txn.open_table(HISTORY)?;
            let mut chunk = ChunkWriter::new(0);
            for item in old.iter()? {
                let (k, v) = item?;
                let (run, idx) = k.value();
                let m: Mutation = dec(&format!("mutation {idx} of run {run}"), v.value())?;
                if run != chunk.run {
                    chunk.flush(&mut mutations)?;
                    chunk.run = run;
                }
                chunk.push(&mut mutations, idx, v.value().to_vec())?;
                history.insert((m.key.as_str(), run), idx)?;
            }
            chunk.flush(&mut mutations)?;
            drop(old);
            txn.delete_table(MUTATIONS_V1)?;
            txn.delete_table(HISTORY_V1)?;
            version = 2;
        }
        if version == 2 {
            // 2 → 3: chunks compressed. Every run's mutations are packed
            // anew, chunk by chunk as they are read, so memory stays at one
            // chunk whatever the store holds. A new chunk's key is the index
            // of its first entry, which came from a chunk already removed,
            // so it never lands on a chunk still to be read.
            let mut mutations = txn.open_table(MUTATIONS)?;
            let mut keys = Vec::new();
            for item in mutations.iter()? {
                keys.push(item?.0.value());
            }
            let mut chunk = ChunkWriter::new(0);
            for (run, first) in keys {
                if run != chunk.run {
                    chunk.flush(&mut mutations)?;
                    chunk.run = run;
                }
                let Some(stored) = mutations.get((run, first))?.map(|g| g.value().to_vec()) else {
                    continue;
                };
                mutations.remove((run, first))?;
                let raw = open_chunk(run, &stored)?;
                for (index, bytes) in chunk_entries(run, &raw)? {
                    chunk.push(&mut mutations, index, bytes.to_vec())?;
                }
            }
            chunk.flush(&mut mutations)?;
            version = 3;
        }
        debug_assert_eq!(version, SCHEMA_VERSION);
        let mut meta = txn.open_table(META)?;
        meta.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}
