//! Sorting more fetched records than should sit in memory.
//!
//! A sync needs the fetched employees and contracts in key order to walk
//! them beside the stored snapshot, and AFAS's order cannot be trusted to
//! be ours (SQL Server collations order text keys their own way). Sorting
//! in memory held the whole fetched set: ~250 MB of a 1M-employee run's
//! 447 MiB peak. Up to `limit` bytes are sorted in memory as before; past
//! it, each full buffer is sorted and written to an unlinked temporary file
//! in the state directory (a run), and the runs are merged as they are
//! read. A company that fits (100k employees: ~12 MB of employees, ~13 MB
//! of contracts) never touches the disk.
//!
//! Run files hold personal data: they are created unlinked (`tempfile`),
//! readable by this process only, and vanish when it ends, even on a crash.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::EmployeeKey;
use crate::store::codec;

/// Above this many bytes of records a sorter writes a run to disk.
pub const DEFAULT_LIMIT: usize = 24 * 1024 * 1024;

pub type Item<T> = (EmployeeKey, T);

/// Collects items, then hands them back sorted by `cmp`.
pub struct Sorter<T> {
    buf: Vec<Item<T>>,
    held: usize,
    limit: usize,
    dir: PathBuf,
    size: fn(&Item<T>) -> usize,
    cmp: fn(&Item<T>, &Item<T>) -> Ordering,
    runs: Vec<File>,
}

impl<T: Serialize + DeserializeOwned> Sorter<T> {
    /// `size`: an item's share of memory; `cmp`: the order to return.
    pub fn new(
        dir: PathBuf,
        limit: usize,
        size: fn(&Item<T>) -> usize,
        cmp: fn(&Item<T>, &Item<T>) -> Ordering,
    ) -> Self {
        Sorter {
            buf: Vec::new(),
            held: 0,
            limit,
            dir,
            size,
            cmp,
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, item: Item<T>) -> io::Result<()> {
        self.held += (self.size)(&item);
        self.buf.push(item);
        if self.held > self.limit {
            self.spill()?;
        }
        Ok(())
    }

    /// Runs written to disk so far.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Items held in memory (all of them when nothing was spilled).
    pub fn in_memory(&self) -> usize {
        self.buf.len()
    }

    fn spill(&mut self) -> io::Result<()> {
        self.buf.sort_unstable_by(self.cmp);
        let file = tempfile::tempfile_in(&self.dir)?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        for item in self.buf.drain(..) {
            write_item(&mut out, &item)?;
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        self.runs.push(file);
        // The buffer's capacity goes too: the next one grows again.
        self.buf = Vec::new();
        self.held = 0;
        Ok(())
    }

    /// Every item pushed, in order.
    pub fn finish(mut self) -> io::Result<Sorted<T>> {
        if self.runs.is_empty() {
            self.buf.sort_unstable_by(self.cmp);
            return Ok(Sorted(Source::Memory(self.buf.into_iter())));
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        let mut readers = Vec::with_capacity(self.runs.len());
        let mut heap = BinaryHeap::new();
        for (n, file) in self.runs.into_iter().enumerate() {
            let mut r = BufReader::with_capacity(64 * 1024, file);
            if let Some(item) = read_item(&mut r)? {
                heap.push(Head {
                    item,
                    run: n,
                    cmp: self.cmp,
                });
            }
            readers.push(r);
        }
        Ok(Sorted(Source::Merge { readers, heap }))
    }
}

fn read_item<T: DeserializeOwned>(r: &mut BufReader<File>) -> io::Result<Option<Item<T>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut bytes)?;
    codec::decode(&bytes).map(Some).map_err(io::Error::other)
}

/// The smallest unread item of one run. Ties go to the earlier run, so the
/// merge is as deterministic as the in-memory sort.
struct Head<T> {
    item: Item<T>,
    run: usize,
    cmp: fn(&Item<T>, &Item<T>) -> Ordering,
}

impl<T> Ord for Head<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: reversed.
        (self.cmp)(&other.item, &self.item).then(other.run.cmp(&self.run))
    }
}

impl<T> PartialOrd for Head<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> PartialEq for Head<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Head<T> {}

/// The items of a [`Sorter`] in order: from memory, or merged from runs.
pub struct Sorted<T>(Source<T>);

enum Source<T> {
    Memory(std::vec::IntoIter<Item<T>>),
    Merge {
        readers: Vec<BufReader<File>>,
        heap: BinaryHeap<Head<T>>,
    },
}

impl<T: DeserializeOwned> Iterator for Sorted<T> {
    type Item = io::Result<Item<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Source::Memory(items) => items.next().map(Ok),
            Source::Merge { readers, heap } => {
                let Head { item, run, cmp } = heap.pop()?;
                match readers.get_mut(run).map(read_item::<T>) {
                    Some(Ok(Some(next))) => heap.push(Head { item: next, run, cmp }),
                    Some(Ok(None)) | None => {}
                    Some(Err(e)) => return Some(Err(e)),
                }
                Some(Ok(item))
            }
        }
    }
}

/// A list written once in order and read back in order (any number of
/// times): in memory while small, else in an unlinked temporary file.
pub struct Spooled<T> {
    memory: Vec<Item<T>>,
    held: usize,
    limit: usize,
    dir: PathBuf,
    size: fn(&Item<T>) -> usize,
    file: Option<BufWriter<File>>,
    len: usize,
}

impl<T: Serialize + DeserializeOwned> Spooled<T> {
    pub fn new(dir: PathBuf, limit: usize, size: fn(&Item<T>) -> usize) -> Self {
        Spooled {
            memory: Vec::new(),
            held: 0,
            limit,
            dir,
            size,
            file: None,
            len: 0,
        }
    }

    pub fn push(&mut self, item: Item<T>) -> io::Result<()> {
        self.len += 1;
        if let Some(out) = &mut self.file {
            return write_item(out, &item);
        }
        self.held += (self.size)(&item);
        self.memory.push(item);
        if self.held > self.limit {
            let mut out = BufWriter::with_capacity(64 * 1024, tempfile::tempfile_in(&self.dir)?);
            for item in std::mem::take(&mut self.memory) {
                write_item(&mut out, &item)?;
            }
            self.file = Some(out);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Room for `n` more items in memory, when they will fit there: a list
    /// grown by doubling holds up to twice the slots it needs.
    pub fn reserve_in_memory(&mut self, n: usize) {
        if self.file.is_none() {
            self.memory.reserve_exact(n);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the list went to disk.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Ends writing; the list can then be read with [`Spooled::iter`].
    pub fn seal(&mut self) -> io::Result<()> {
        if let Some(out) = &mut self.file {
            out.flush()?;
        }
        Ok(())
    }

    /// The items in the order they were pushed. Call [`Spooled::seal`]
    /// first. One reader at a time: readers of a file share its offset.
    pub fn iter(&self) -> io::Result<SpooledIter<'_, T>> {
        Ok(match &self.file {
            None => SpooledIter::Memory(self.memory.iter()),
            Some(out) => {
                let mut file = out.get_ref().try_clone()?;
                file.seek(SeekFrom::Start(0))?;
                SpooledIter::File(BufReader::with_capacity(64 * 1024, file), std::marker::PhantomData)
            }
        })
    }
}

fn write_item<T: Serialize>(out: &mut BufWriter<File>, item: &Item<T>) -> io::Result<()> {
    let bytes = codec::encode(item).map_err(io::Error::other)?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(&bytes)
}

/// Items of a [`Spooled`] list, borrowed from memory or read from its file.
pub enum SpooledIter<'a, T> {
    Memory(std::slice::Iter<'a, Item<T>>),
    File(BufReader<File>, std::marker::PhantomData<T>),
}

impl<'a, T: DeserializeOwned + Clone> Iterator for SpooledIter<'a, T> {
    type Item = io::Result<Cow<'a, Item<T>>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SpooledIter::Memory(items) => items.next().map(|i| Ok(Cow::Borrowed(i))),
            SpooledIter::File(r, _) => read_item(r).transpose().map(|i| i.map(Cow::Owned)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> EmployeeKey {
        EmployeeKey::parse(&format!("{n:07}")).expect("key")
    }

    fn size(item: &Item<Vec<u8>>) -> usize {
        item.0.as_str().len() + item.1.len() + 48
    }

    fn by_key(a: &Item<Vec<u8>>, b: &Item<Vec<u8>>) -> Ordering {
        (&a.0, &a.1).cmp(&(&b.0, &b.1))
    }

    /// The same items come back in the same order whether the sorter kept
    /// them in memory or merged runs from disk; duplicates stay side by
    /// side (the sync rejects duplicate keys as neighbours).
    #[test]
    fn spilled_and_in_memory_sorts_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = crate::emulator::data::Rng::new(7);
        let items: Vec<Item<Vec<u8>>> = (0..5000)
            .map(|i| {
                let k = rng.below(3000);
                (key(k), format!("{i}:{}", rng.below(10)).into_bytes())
            })
            .collect();
        let mut small = Sorter::new(dir.path().to_path_buf(), 2000, size, by_key);
        let mut large = Sorter::new(dir.path().to_path_buf(), usize::MAX, size, by_key);
        for item in &items {
            small.push(item.clone()).expect("push");
            large.push(item.clone()).expect("push");
        }
        assert!(small.runs() > 50, "{}", small.runs());
        assert_eq!(large.runs(), 0);
        let a: Vec<_> = small
            .finish()
            .expect("finish")
            .collect::<io::Result<_>>()
            .expect("read");
        let b: Vec<_> = large
            .finish()
            .expect("finish")
            .collect::<io::Result<_>>()
            .expect("read");
        let mut expected = items;
        expected.sort_by(by_key);
        assert_eq!(a, expected);
        assert_eq!(b, expected);
        // Nothing is left behind in the directory: run files are unlinked.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn a_spooled_list_reads_back_in_order_from_memory_or_disk_any_number_of_times() {
        let dir = tempfile::tempdir().expect("tempdir");
        for limit in [usize::MAX, 500] {
            let mut list = Spooled::new(dir.path().to_path_buf(), limit, size);
            let items: Vec<Item<Vec<u8>>> = (0..300).map(|i| (key(i), vec![i as u8; (i % 17) as usize])).collect();
            for item in &items {
                list.push(item.clone()).expect("push");
            }
            list.seal().expect("seal");
            assert_eq!(list.spilled(), limit == 500);
            assert_eq!(list.len(), 300);
            for _ in 0..2 {
                let back: Vec<Item<Vec<u8>>> = list
                    .iter()
                    .expect("iter")
                    .map(|i| i.map(Cow::into_owned))
                    .collect::<io::Result<_>>()
                    .expect("read");
                assert_eq!(back, items);
            }
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn a_damaged_run_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = tempfile::tempfile_in(dir.path()).expect("file");
        file.write_all(&[200, 0, 0, 0, 1, 2, 3]).expect("write");
        file.seek(SeekFrom::Start(0)).expect("seek");
        let mut r = BufReader::new(file);
        assert!(read_item::<Vec<u8>>(&mut r).is_err());
    }
}
