//! The file sink: per run, an NDJSON file of its mutations and optionally a
//! CSV of the snapshot. Each is written to a temporary name, fsynced and
//! renamed, so a reader never sees half a file; rewriting after a crash
//! produces the same file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Job, MutationEvent, SinkError};
use crate::config::FilesConfig;
use crate::store::{OutboxItem, Store};
use crate::sync::plan::Status;

pub struct FileSink {
    dir: PathBuf,
    csv: bool,
    store: Arc<Store>,
}

/// One CSV field, quoted when it holds a separator, quote or line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `content` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(content))
}

/// [`write_atomic`] for content written piece by piece (a first import's
/// 100k mutations are never one string in memory).
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        fill(&mut f)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A store error carried through the writer's `io::Result`.
fn store_io(e: crate::store::StoreError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl FileSink {
    pub fn new(c: &FilesConfig, store: Arc<Store>) -> Self {
        FileSink {
            dir: c.dir.clone(),
            csv: c.csv_snapshot,
            store,
        }
    }

    pub fn run_file(&self, run: u64, as_of: &str) -> PathBuf {
        self.dir.join(format!("afas-sync-run-{run:06}-{as_of}.ndjson"))
    }

    pub async fn deliver(&self, job: &Job) -> Result<(), SinkError> {
        let (OutboxItem::Run { run }, Some(record)) = (&job.entry.item, &job.run) else {
            return Ok(());
        };
        let run = *run;
        let path = self.run_file(run, &record.as_of.to_string());
        let csv_path = self
            .csv
            .then(|| self.dir.join(format!("afas-sync-snapshot-{run:06}.csv")));
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
            // Mutations and snapshot rows are streamed from the store into
            // the files, one at a time.
            write_atomic_with(&path, |w| {
                store
                    .scan_run_mutations(run, |index, m| {
                        serde_json::to_writer(
                            &mut *w,
                            &MutationEvent {
                                mutation: &m,
                                run,
                                index,
                            },
                        )
                        .map_err(|e| crate::store::StoreError::Io(e.to_string()))?;
                        w.write_all(b"\n").map_err(crate::store::StoreError::from)
                    })
                    .map_err(store_io)
            })
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            if let Some(csv_path) = csv_path {
                write_atomic_with(&csv_path, |w| {
                    w.write_all(
                        b"key,status,email,first_name,prefix,last_name,department,employment_start,employment_end\n",
                    )?;
                    store
                        .scan_snapshot(|p| {
                            let Some(e) = p.employee.as_ref().filter(|_| p.status == Status::Active) else {
                                return Ok(());
                            };
                            let cols = [
                                p.key.as_str().to_string(),
                                "active".to_string(),
                                e.email.as_str().to_string(),
                                e.first_name.clone(),
                                e.prefix.clone().unwrap_or_default(),
                                e.last_name.clone(),
                                e.department.clone().unwrap_or_default(),
                                e.employment.start.to_string(),
                                e.employment.end.map(|d| d.to_string()).unwrap_or_default(),
                            ];
                            let line = cols.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",");
                            writeln!(w, "{line}").map_err(crate::store::StoreError::from)
                        })
                        .map_err(store_io)
                })
                .map_err(|e| format!("cannot write {}: {e}", csv_path.display()))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| SinkError::Retry {
            reason: e.to_string(),
            after: None,
        })?;
        // A full disk or a missing permission may clear up: retry.
        result.map_err(|reason| SinkError::Retry { reason, after: None })
    }
}
