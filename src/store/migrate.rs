//! Opening older state files: probing, backing up and migrating them to the
//! current schema.

use super::*;

/// Looks at an existing file without any chance of writing to it: a file
/// of a newer schema, another program's file or a damaged one is refused
/// before the writable open (which updates redb's header) ever happens.
pub(super) fn probe_read_only(path: &Path) -> Result<(), StoreError> {
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

pub(super) fn map_open_error(e: redb::DatabaseError, path: &Path) -> StoreError {
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

pub(super) fn backup(path: &Path, version: u32) -> Result<(), StoreError> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".schema{version}.bak"));
    let target = path.with_file_name(name);
    std::fs::copy(path, &target)
        .and_then(|_| private(&target))
        .map_err(|e| StoreError::Backup {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(())
}

/// Migrations from older schemas, one step at a time, all in one
/// transaction: a crash leaves the old schema (and the backup) intact.
/// Each step is proven by a fixture file of the schema it starts from
/// (tests/fixtures/store-schema<N>.redb).
pub(super) fn migrate(store: &Store, from: u32) -> Result<(), StoreError> {
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
