//! Merging the fetched employees with the stored snapshot in key order and
//! diffing them straight into the run's write transaction.

use super::*;

/// The whole plan in memory, for a dry run or to hold for approval.
pub(super) fn plan_of(
    store: &Store,
    fetched: &Fetched,
    as_of: Date,
    rules: &Rules,
    mapping_fingerprint: String,
) -> Result<Plan, StoreError> {
    let base_run = store.meta()?.last_committed_run;
    let mut out = Diff::default();
    let mut keep = |d: &mut Diff| -> Result<(), StoreError> {
        out.mutations.append(&mut d.mutations);
        out.writes.append(&mut d.writes);
        Ok(())
    };
    let mut side = Finished::new(fetched)?;
    let active_before = merge_snapshot(store, &mut side, as_of, rules, &mut keep)?;
    Ok(Plan {
        as_of,
        base_run,
        mutations: out.mutations,
        writes: out.writes,
        source: fetched.stats.clone(),
        active_before,
        mapping_fingerprint,
    })
}

/// Fetched rows that fitted in memory are finished before the diff; rows
/// sorted through temporary files are finished beside it.
pub(super) enum Input {
    Finished(Fetched),
    Spilled(Box<Unfinished>),
}

/// The fetched side of [`merge_snapshot`]: employees in key order, and
/// the keys it must leave alone.
pub(super) trait FetchedSide<'a> {
    /// The next fetched record if its key compares to `key` as `want`.
    fn next_if(&mut self, key: &str, want: Ordering) -> Result<Option<Cow<'a, spill::Item<Vec<u8>>>>, StoreError>;
    /// Whether `key`'s rows were rejected. Asked only after `next_if` has
    /// looked past `key`.
    fn protected(&self, key: &EmployeeKey) -> bool;
}

pub(super) fn read_back_err(e: std::io::Error) -> StoreError {
    SyncError::Spill(format!("reading the fetched records back: {e}")).through_store()
}

/// A finished set, read from memory or its temporary file.
pub(super) struct Finished<'a> {
    items: std::iter::Peekable<spill::SpooledIter<'a, Vec<u8>>>,
    protected: &'a BTreeSet<EmployeeKey>,
}

impl<'a> Finished<'a> {
    fn new(fetched: &'a Fetched) -> Result<Self, StoreError> {
        Ok(Finished {
            items: fetched.employees.iter().map_err(read_back_err)?.peekable(),
            protected: &fetched.protected,
        })
    }
}

impl<'a> FetchedSide<'a> for Finished<'a> {
    fn next_if(&mut self, key: &str, want: Ordering) -> Result<Option<Cow<'a, spill::Item<Vec<u8>>>>, StoreError> {
        match self.items.peek() {
            Some(Ok(e)) if e.0.as_str().cmp(key) == want => {}
            Some(Ok(_)) | None => return Ok(None),
            Some(Err(_)) => {}
        }
        self.items.next().transpose().map_err(read_back_err)
    }

    fn protected(&self, key: &EmployeeKey) -> bool {
        self.protected.contains(key)
    }
}

/// What the finishing thread hands the diff's thread.
pub(super) enum Piece {
    Employee(spill::Item<Vec<u8>>),
    Protected(EmployeeKey),
}

/// Records as another thread finishes them ([`Unfinished::finish`]).
/// Protections arrive in key order among the records, so by the time the
/// diff has looked past a key, its protection has arrived too.
pub(super) struct Piped {
    rx: std::sync::mpsc::Receiver<Vec<Piece>>,
    batch: std::vec::IntoIter<Piece>,
    head: Option<spill::Item<Vec<u8>>>,
    protected: BTreeSet<EmployeeKey>,
}

impl Piped {
    /// Fills `head` with the next record, taking in the protections before
    /// it. A closed channel is the end: whether the finishing thread
    /// stopped on an error is its own result, which the caller checks.
    fn fill(&mut self) {
        while self.head.is_none() {
            match self.batch.next() {
                Some(Piece::Employee(item)) => self.head = Some(item),
                Some(Piece::Protected(key)) => {
                    self.protected.insert(key);
                }
                None => match self.rx.recv() {
                    Ok(batch) => self.batch = batch.into_iter(),
                    Err(_) => return,
                },
            }
        }
    }
}

impl<'a> FetchedSide<'a> for Piped {
    fn next_if(&mut self, key: &str, want: Ordering) -> Result<Option<Cow<'a, spill::Item<Vec<u8>>>>, StoreError> {
        self.fill();
        match &self.head {
            Some(e) if e.0.as_str().cmp(key) == want => Ok(self.head.take().map(Cow::Owned)),
            _ => Ok(None),
        }
    }

    fn protected(&self, key: &EmployeeKey) -> bool {
        self.protected.contains(key)
    }
}

/// Diffs the fetched employees against the stored snapshot as it streams
/// from the store, both in key order (redb orders the table by the key's
/// bytes, as `EmployeeKey` orders). Each key's mutations and writes go to
/// `sink` as soon as they are decided. Returns the number of employees that
/// were active before.
pub(super) fn merge_snapshot<'a>(
    store: &Store,
    fetched: &mut dyn FetchedSide<'a>,
    as_of: Date,
    rules: &Rules,
    sink: &mut dyn FnMut(&mut Diff) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let mut out = Diff::default();
    let mut active_before = 0u64;
    let mut visit =
        |fetched: &dyn FetchedSide<'a>, key: &EmployeeKey, prev: Option<&Provisioned>, bytes: Option<&Vec<u8>>| {
            if fetched.protected(key) {
                return Ok(());
            }
            let employee: Option<Employee> =
                bytes
                    .map(|b| crate::store::codec::decode(b))
                    .transpose()
                    .map_err(|e| StoreError::Codec {
                        what: format!("fetched employee {key}"),
                        reason: e.to_string(),
                    })?;
            out.step(key, prev, employee.as_ref(), as_of, rules);
            sink(&mut out)
        };
    store.scan_snapshot_raw(|key, stored| {
        let (head, at) =
            crate::store::codec::decode_prefix::<plan::ProvisionedHead>(stored).map_err(|e| StoreError::Codec {
                what: format!("employee {key}"),
                reason: e.to_string(),
            })?;
        if head.status == plan::Status::Active {
            active_before += 1;
        }
        while let Some(e) = fetched.next_if(key, Ordering::Less)? {
            visit(fetched, &e.0, None, Some(&e.1))?;
        }
        let same = fetched.next_if(key, Ordering::Equal)?;
        let same = same.as_ref().map(|e| &e.1);
        // Most employees are the same as yesterday: when AFAS sent the
        // stored record byte for byte (after the `Some` tag of the stored
        // `Option`; both after the format byte), `step` would do nothing,
        // and neither record needs decoding. ~15 % of a no-op's work.
        if let Some(fetched) = same {
            let equal = stored.get(at) == Some(&1) && stored.get(at + 1..) == fetched.get(1..);
            if equal && head.unchanged_when_equal(as_of, rules) {
                return Ok(());
            }
        }
        let p: Provisioned = crate::store::dec_named(|| format!("employee {key}"), stored)?;
        visit(fetched, &p.key, Some(&p), same)
    })?;
    while let Some(e) = fetched.next_if("", Ordering::Greater)? {
        visit(fetched, &e.0, None, Some(&e.1))?;
    }
    Ok(active_before)
}

/// Writes and mutations handed from the diff's thread to the writer's at
/// a time, and batches in flight: small enough to keep memory flat, large
/// enough that the channel costs nothing per employee.
pub(super) const BATCH: usize = 256;

pub(super) const BATCHES_IN_FLIGHT: usize = 8;

/// Finishes the fetched records and diffs them into a run's write
/// transaction: on two threads, or three for a large company.
///
/// Why: after the last page arrives, a first import still has to finish,
/// diff, encode and insert every employee, and that tail is what keeps the
/// run's wall time above the network's (BENCHMARKS.md). Only the inserts
/// need the transaction, so they stay on this thread, which owns it; the
/// diff, the encoding and the packing of mutations into compressed chunks
/// run on a thread of their own ([`diff_into`]).
///
/// Finishing ([`Unfinished::finish`]) comes first, in [`prepare`], when the
/// fetched rows fit in memory (`sync.sort_memory_mib`): run beside the
/// diff, it would hold the sorted rows and the finished set at once
/// (+18 MiB at the peak of a 100k no-op sync) to save ~0.1 s. When they
/// were sorted through temporary files it costs little memory and takes
/// seconds (2.1 s at 1M employees), so it runs on a third thread and hands
/// each employee on as soon as it is done.
///
/// Returns the employees active before, and the finished set (which a
/// held plan reads again).
pub(super) fn merge_into(
    store: &Store,
    input: Input,
    as_of: Date,
    rules: &Rules,
    w: &mut crate::store::RunWriter<'_>,
) -> Result<(u64, Fetched), StoreError> {
    let input = match input {
        Input::Finished(fetched) => {
            let active_before = diff_into(store, Finished::new(&fetched)?, as_of, rules, w)?;
            return Ok((active_before, fetched));
        }
        Input::Spilled(input) => *input,
    };
    let (pieces_tx, pieces_rx) = std::sync::mpsc::sync_channel::<Vec<Piece>>(BATCHES_IN_FLIGHT);
    let side = Piped {
        rx: pieces_rx,
        batch: Vec::new().into_iter(),
        head: None,
        protected: input.protected().clone(),
    };
    std::thread::scope(|scope| {
        let finisher = scope.spawn(move || {
            // A send fails only when the diff stopped on an error of its
            // own, which is the one reported.
            let stopped = || SyncError::Thread("the diff stopped".into()).through_store();
            let mut batch: Vec<Piece> = Vec::with_capacity(BATCH);
            let fetched = input.finish(|step| {
                batch.push(match step {
                    Step::Employee(key, bytes) => Piece::Employee((key.clone(), bytes.to_vec())),
                    Step::Protected(key) => Piece::Protected(key.clone()),
                });
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    pieces_tx.send(full).map_err(|_| stopped())?;
                }
                Ok(())
            })?;
            if !batch.is_empty() {
                pieces_tx.send(batch).map_err(|_| stopped())?;
            }
            Ok(fetched)
        });
        // The diff ends with the finishing thread: its thread drops the
        // receiver, so a finishing thread still sending stops.
        let diffed = diff_into(store, side, as_of, rules, w);
        let finished: Result<Fetched, StoreError> = finisher.join().map_err(|_| {
            SyncError::Thread("the thread finishing the fetched records panicked".into()).through_store()
        })?;
        // The first failure in the chain is the cause. A diff that read to
        // the end of a finishing thread that stopped on an error diffed
        // part of the records: its error aborts the transaction.
        let active_before = diffed?;
        Ok((active_before, finished?))
    })
}

/// [`merge_snapshot`] on a thread of its own, handing encoded writes and
/// sealed mutation chunks to this thread's inserts over a bounded channel.
/// Order is kept: one producer, one FIFO channel, one consumer.
pub(super) fn diff_into<'a>(
    store: &Store,
    mut side: impl FetchedSide<'a> + Send,
    as_of: Date,
    rules: &Rules,
    w: &mut crate::store::RunWriter<'_>,
) -> Result<u64, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Encoded>>(BATCHES_IN_FLIGHT);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            // A send fails only when the writer stopped on an error of
            // its own, which is the one reported.
            let stopped = || SyncError::Thread("the state file writer stopped".into()).through_store();
            let mut batch: Vec<Encoded> = Vec::with_capacity(BATCH);
            let mut packer = MutationPacker::default();
            let mut sink = |d: &mut Diff| -> Result<(), StoreError> {
                crate::fault::hit(crate::fault::Point::Diff);
                for write in d.writes.drain(..) {
                    batch.push(Encoded::Write(EncodedWrite::new(&write)?));
                }
                for m in d.mutations.drain(..) {
                    if let Some(c) = packer.push(&m)? {
                        batch.push(Encoded::Mutations(c));
                    }
                }
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    tx.send(full).map_err(|_| stopped())?;
                }
                Ok(())
            };
            let active_before = merge_snapshot(store, &mut side, as_of, rules, &mut sink)?;
            // The last chunk, so that every mutation is counted when the
            // guards look.
            if let Some(c) = packer.finish() {
                batch.push(Encoded::Mutations(c));
            }
            if !batch.is_empty() {
                tx.send(batch).map_err(|_| stopped())?;
            }
            Ok(active_before)
        });
        let mut written = Ok(());
        'batches: for batch in rx.iter() {
            for item in batch {
                crate::fault::hit(crate::fault::Point::Writer);
                if let Err(e) = w.put(item) {
                    written = Err(e);
                    break 'batches;
                }
            }
        }
        // Dropping the receiver ends a producer still sending.
        drop(rx);
        let produced: Result<u64, StoreError> = producer
            .join()
            .map_err(|_| SyncError::Thread("the diff thread panicked".into()).through_store())?;
        written.and(produced)
    })
}
