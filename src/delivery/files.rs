//! The file sink: per run, an NDJSON file of its mutations and optionally a
//! CSV of the snapshot. Each is written to a temporary name, fsynced and
//! renamed, so a reader never sees half a file; rewriting after a crash
//! produces the same file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Job, MutationEvent, SinkError};
use crate::config::FilesConfig;
use crate::model::Status;
use crate::store::{chunk_mutations, OutboxItem, Store, StoreError};

pub struct FileSink {
    dir: PathBuf,
    csv: bool,
    mode: u32,
    store: Arc<Store>,
    installation: u64,
}

/// One CSV field, quoted when it holds a separator, quote or line break.
pub fn csv_field(s: &str) -> String {
    // A spreadsheet runs a cell that starts like a formula: `=`, `+`, `-`,
    // `@`, a tab or a carriage return (OWASP's CSV injection). A quote in
    // front keeps it text.
    let s: std::borrow::Cow<'_, str> = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

/// Writes `content` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, 0o600, |w| w.write_all(content))
}

/// [`write_atomic`] for content written piece by piece (a first import's
/// 100k mutations are never one string in memory).
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        // A leftover of a crash (or a link someone put there) goes; the new
        // one is made here or not at all, so no link is followed, and with
        // its mode from the start, whatever the umask.
        let _ = std::fs::remove_file(&tmp);
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            open.mode(mode);
        }
        let file = open.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        let mut f = std::io::BufWriter::new(file);
        fill(&mut f)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if let Err(e) = written {
        // Half a file helps no one, and on a full disk it holds the room
        // the next attempt needs; that attempt writes the file whole.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A store error carried through the writer's `io::Result`.
fn store_io(e: crate::store::StoreError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Threads that turn chunks of mutations into NDJSON.
const WORKERS: usize = 2;

/// Writes run `run`'s mutation events to `w`, one line each, in order.
///
/// Why threads: the file of a first import is written right after the
/// commit, and decoding and serializing every joiner on one core was a
/// quarter of what a 100k first import did after its last page arrived.
/// Chunks are independent, so a reader hands them round-robin to
/// [`WORKERS`] threads and this thread collects the lines round-robin,
/// which keeps the file's order without sorting. Channels are bounded, so
/// memory stays a few chunks whatever the run's size; an error anywhere
/// closes the channels and the others stop.
fn write_events(store: &Store, installation: u64, run: u64, w: &mut dyn Write) -> std::io::Result<()> {
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
    type Lines = Result<Vec<u8>, StoreError>;
    std::thread::scope(|scope| {
        let mut to_workers: Vec<SyncSender<Vec<u8>>> = Vec::new();
        let mut from_workers: Vec<Receiver<Lines>> = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..WORKERS {
            let (chunk_tx, chunk_rx) = sync_channel::<Vec<u8>>(2);
            let (lines_tx, lines_rx) = sync_channel::<Lines>(2);
            to_workers.push(chunk_tx);
            from_workers.push(lines_rx);
            workers.push(scope.spawn(move || {
                for stored in chunk_rx {
                    crate::fault::hit(crate::fault::Point::FileWorker);
                    let mut lines = Vec::with_capacity(stored.len() * 4);
                    let done = chunk_mutations(run, &stored, |index, m| {
                        let event = MutationEvent {
                            mutation: &m,
                            installation,
                            run,
                            index,
                        };
                        serde_json::to_writer(&mut lines, &event).map_err(|e| StoreError::Io(e.to_string()))?;
                        lines.push(b'\n');
                        Ok(())
                    });
                    let failed = done.is_err();
                    if lines_tx.send(done.map(|()| lines)).is_err() || failed {
                        return;
                    }
                }
            }));
        }
        let reader = scope.spawn(move || {
            let mut next = 0usize;
            let stopped = || StoreError::Io("the file writer stopped".into());
            store.scan_run_chunks(run, |stored| {
                crate::fault::hit(crate::fault::Point::FileReader);
                let worker = &to_workers[next % WORKERS];
                next += 1;
                worker.send(stored).map_err(|_| stopped())
            })
        });
        let mut written: std::io::Result<()> = Ok(());
        for i in 0.. {
            // A closed channel at its turn means every chunk was written.
            let Ok(lines) = from_workers[i % WORKERS].recv() else {
                break;
            };
            if let Err(e) = lines.map_err(store_io).and_then(|l| w.write_all(&l)) {
                written = Err(e);
                break;
            }
        }
        drop(from_workers);
        let panicked = |_| std::io::Error::other("a thread writing the run file panicked");
        let read = reader.join().map_err(panicked)?;
        // A worker that died would look like the end of the run's chunks.
        for worker in workers {
            worker.join().map_err(panicked)?;
        }
        // The writer's own error first; a reader that stopped because the
        // writer did has nothing to add.
        written?;
        read.map_err(store_io)
    })
}

impl FileSink {
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn new(c: &FilesConfig, store: Arc<Store>, installation: u64) -> Self {
        FileSink {
            dir: c.dir.clone(),
            csv: c.csv_snapshot,
            mode: c.mode(),
            store,
            installation,
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
        let (store, installation, mode) = (self.store.clone(), self.installation, self.mode);
        let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
            // Mutations and snapshot rows are streamed from the store into
            // the files, one at a time.
            write_atomic_with(&path, mode, |w| write_events(&store, installation, run, w))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            if let Some(csv_path) = csv_path {
                write_atomic_with(&csv_path, mode, |w| {
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

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn a_field_that_a_spreadsheet_would_run_stays_text() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_field("+31 6"), "'+31 6");
        assert_eq!(csv_field("-2"), "'-2");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("\tx"), "'\tx");
        assert_eq!(csv_field("van der Berg"), "van der Berg");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("2026-11-24"), "2026-11-24");
    }
}
