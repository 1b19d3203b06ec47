//! The redb state file: the only module that knows redb.
//!
//! One write transaction per run commits the snapshot changes, the
//! mutations, the per-employee history, the outbox entries and the run
//! record together; redb's copy-on-write commit makes that all-or-nothing
//! even under SIGKILL or power loss. A digest of the snapshot is kept in
//! the same transaction so a later open can prove the snapshot is exactly
//! the one the last run committed.

mod attempts;
pub mod chunk;
pub mod codec;
mod migrate;
mod outbox;
mod queries;
mod queue;
mod retention;
mod writer;

pub use attempts::*;
use migrate::*;
pub use outbox::*;
pub use queries::*;
pub use queue::{DueSummary, QueuedJob, TargetUser, Window};
pub use retention::*;
pub use writer::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use jiff::ToSpan;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::EmployeeKey;
use crate::model::RunRecord;
use crate::model::{Mutation, MutationKind, Plan, Provisioned, SinkKind, Status, Write};

/// Makes the state file readable by its owner only (a file an admin's
/// `sudo afas-sync sync` made under umask 022 was readable by every user).
fn private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

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
/// (sink, employee key, sequence) → what the entry is (`queue::kind_byte`):
/// the outbox in employee order, so a delivery pass reads it in windows of
/// whole chains (run entries have key ""), and counts what it will create
/// without decoding a change. Added within schema 3; see
/// `queue::INDEXED_SEQ`.
const OUTBOX_BY_KEY: TableDefinition<(&str, &str, u64), u8> = TableDefinition::new("outbox_by_key");
const HELD: TableDefinition<u64, &[u8]> = TableDefinition::new("held_plans");
/// (sink, employee key) → the target's id for that employee (the SCIM id).
const TARGET_IDS: TableDefinition<(&str, &str), &str> = TableDefinition::new("target_ids");
/// (sink, employee key) → the version (ETag) the target gave that user in
/// its last answer to us: an update sends it as `If-Match` without reading
/// the user first. Added within schema 3; absent means not known.
const TARGET_VERSIONS: TableDefinition<(&str, &str), &str> = TableDefinition::new("target_versions");
/// (sink, outbox sequence) → the employee key and the entry's last
/// attempts (`model::Attempt`): what the target answered. Removed with the
/// entry. Added within schema 3; absent means none recorded.
const ATTEMPTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox_attempts");
/// (sink, employee key) → the last change delivered (`model::LastDelivery`).
/// Added within schema 3.
const DELIVERED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("last_delivered");
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
    /// The caller's own failure inside a store transaction or scan (a sync
    /// thread, the file sink's writer), carried through unchanged so the
    /// caller gets its own error back.
    #[error(transparent)]
    Caller(Box<dyn std::error::Error + Send + Sync>),
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

/// How long [`Store::open`] waits for a lock another process holds briefly.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
    ///
    /// A lock held for a moment is waited out: `status` reading the file, or
    /// a child forked by another thread of this process that still holds an
    /// inherited descriptor until its exec. A running daemon holds it for
    /// longer and is reported as [`StoreError::Locked`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match Store::open_once(path) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Store, StoreError> {
        let open_err = |e: std::io::Error| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                // The state holds the company's personal data: only the
                // service's user enters its directory, whatever the umask.
                let mut b = std::fs::DirBuilder::new();
                b.recursive(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::DirBuilderExt;
                    b.mode(0o700);
                }
                b.create(dir).map_err(open_err)?;
            }
        }
        let existed = path.exists() && std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false);
        if existed {
            probe_read_only(path)?;
        }
        let db = builder().create(path).map_err(|e| map_open_error(e, path))?;
        private(path).map_err(open_err)?;
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
        txn.open_table(TARGET_VERSIONS)?;
        txn.open_table(LEAVERS)?;
        txn.open_table(ATTEMPTS)?;
        txn.open_table(DELIVERED)?;
        Store::index_outbox(&txn)?;
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
}

/// Runs store work on the blocking pool. A task that could not finish (it
/// panicked, or the runtime stopped) becomes the caller's own error through
/// `task`, never a `StoreError`.
pub async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    task: impl FnOnce(String) -> E,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError>,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(E::from),
        Err(e) => Err(task(e.to_string())),
    }
}
