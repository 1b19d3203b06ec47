//! Several mutations of one run packed into one stored value.
//!
//! Why: a run's mutations are written with ascending keys, and a B-tree
//! that only ever appends splits every full leaf in two and never fills the
//! left half again. With one ~170-byte mutation per entry, redb's leaves of
//! the mutation table stayed about half empty, so a year of history took
//! twice its size on disk (measured: 20.8 MB stored in 40 MB of leaves per
//! 125k mutations). A value close to one page fills its page.
//!
//! Raw layout, all integers little-endian u32: `count`, then `count` times
//! `index, length, bytes` (each `bytes` an encoded mutation, see `codec`).
//! The index is the mutation's position in its run, kept explicitly so that
//! `forget` can drop one entry without renumbering the others.
//!
//! Stored (schema 3): the tag `u32::MAX`, the raw length, then the raw
//! layout compressed with LZ4. The mutations of one chunk are records of
//! the same shape with many equal fields; a year's chunks compressed 2.1×
//! one by one and 2.6× four together (measured on the 365-day store), and
//! the mutation chunks were two thirds of that store's live pages. LZ4
//! rather than deflate: ~20× faster on these small values (a first import
//! compresses every joiner), for a ratio 20 % lower. Schema 2 stored the
//! raw layout itself; no raw chunk can start with the tag (a count that
//! large cannot fit), so `open` reads both.

use std::borrow::Cow;

/// The first four bytes of a compressed chunk.
const TAG: u32 = u32::MAX;

/// The largest raw chunk `open` will inflate: a damaged length must not
/// allocate gigabytes. Writers stay far below it (`MAX_RAW_BYTES`).
const LIMIT_RAW_BYTES: usize = 1 << 20;

/// A writer closes a chunk at this many raw bytes whatever it compresses
/// to, so that one damaged chunk never takes more than a few hundred
/// mutations with it.
pub const MAX_RAW_BYTES: usize = 64 * 1024;

/// A chunk is closed once adding the next mutation would take its stored
/// (compressed) size past this many bytes: under one 4 KiB page with room
/// for redb's leaf header.
pub const TARGET_BYTES: usize = 3800;

/// Encodes entries (index, encoded mutation) into the raw layout.
pub fn encode<'a>(entries: impl IntoIterator<Item = (u32, &'a [u8])>) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    let mut count = 0u32;
    for (index, bytes) in entries {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        count += 1;
    }
    out[..4].copy_from_slice(&count.to_le_bytes());
    out
}

/// The value stored for a raw chunk: compressed, after the tag and length.
pub fn seal(raw: &[u8]) -> Vec<u8> {
    let packed = lz4_flex::block::compress(raw);
    let mut out = Vec::with_capacity(8 + packed.len());
    out.extend_from_slice(&TAG.to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&packed);
    out
}

/// The raw layout of a stored chunk, compressed (schema 3) or not (2).
pub fn open(stored: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    let mut rest = stored;
    if take_u32(&mut rest) != Some(TAG) {
        return Ok(Cow::Borrowed(stored));
    }
    let len = take_u32(&mut rest).ok_or("compressed chunk shorter than its header")? as usize;
    if len > LIMIT_RAW_BYTES {
        return Err(format!("compressed chunk claims {len} bytes"));
    }
    let raw = lz4_flex::block::decompress(rest, len).map_err(|e| format!("compressed chunk: {e}"))?;
    if raw.len() != len {
        return Err(format!("compressed chunk holds {} bytes, not {len}", raw.len()));
    }
    Ok(Cow::Owned(raw))
}

/// A chunk closed by a [`Packer`]: its first entry's index, how many
/// entries it holds, and its stored form.
pub struct Sealed {
    pub first: u32,
    pub count: usize,
    pub bytes: Vec<u8>,
}

/// Gathers entries into chunks of about one page once sealed. Needs no
/// table, so a sync packs and compresses on the diff's thread while the
/// writer's thread only inserts.
pub struct Packer {
    entries: Vec<(u32, Vec<u8>)>,
    len: usize,
    /// Raw bytes to gather before closing a chunk: the page target times
    /// the ratio the previous chunk compressed by (a run's mutations are
    /// alike, so the last ratio predicts the next well), with a margin so
    /// a chunk seldom spills past one page.
    raw_target: usize,
}

impl Default for Packer {
    fn default() -> Self {
        Packer {
            entries: Vec::new(),
            len: 4,
            raw_target: TARGET_BYTES * 2,
        }
    }
}

impl Packer {
    /// Adds an entry; returns the chunk it closed (the entries before it),
    /// if it closed one.
    pub fn push(&mut self, index: u32, bytes: Vec<u8>) -> Option<Sealed> {
        let size = entry_size(bytes.len());
        let sealed = if !self.entries.is_empty() && self.len + size > self.raw_target {
            self.finish()
        } else {
            None
        };
        self.len += size;
        self.entries.push((index, bytes));
        sealed
    }

    /// Seals the entries gathered so far, if any.
    pub fn finish(&mut self) -> Option<Sealed> {
        let &(first, _) = self.entries.first()?;
        let raw = encode(self.entries.iter().map(|(i, b)| (*i, b.as_slice())));
        let bytes = seal(&raw);
        let ratio = raw.len() as f64 / bytes.len().max(1) as f64;
        self.raw_target = ((TARGET_BYTES as f64 * ratio * 0.9) as usize).clamp(TARGET_BYTES, MAX_RAW_BYTES);
        let count = self.entries.len();
        self.entries.clear();
        self.len = 4;
        Some(Sealed { first, count, bytes })
    }
}

/// The bytes a chunk adds for one entry of `len` bytes.
pub fn entry_size(len: usize) -> usize {
    8 + len
}

/// Splits a raw chunk into its entries. A damaged chunk is an error, never a
/// panic: the state file is read as untrusted input like any other.
pub fn entries(chunk: &[u8]) -> Result<Vec<(u32, &[u8])>, String> {
    let mut rest = chunk;
    let count = take_u32(&mut rest).ok_or("chunk shorter than its header")?;
    // Each entry takes at least 8 bytes: a count beyond that is damage.
    if count as usize > rest.len() / 8 {
        return Err(format!("chunk claims {count} entries in {} bytes", chunk.len()));
    }
    let mut out = Vec::with_capacity(count as usize);
    for n in 0..count {
        let index = take_u32(&mut rest).ok_or_else(|| format!("entry {n} cut short"))?;
        let len = take_u32(&mut rest).ok_or_else(|| format!("entry {n} cut short"))? as usize;
        if len > rest.len() {
            return Err(format!("entry {n} claims {len} bytes, {} left", rest.len()));
        }
        let (bytes, tail) = rest.split_at(len);
        out.push((index, bytes));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last entry", rest.len()));
    }
    Ok(out)
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (head, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_le_bytes(*head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_an_error() {
        let a = b"first".as_slice();
        let b = b"".as_slice();
        let c = vec![7u8; 300];
        let chunk = encode([(3, a), (4, b), (9, c.as_slice())]);
        assert_eq!(chunk.len(), 4 + entry_size(5) + entry_size(0) + entry_size(300));
        let got = entries(&chunk).expect("valid");
        assert_eq!(got, vec![(3, a), (4, b), (9, c.as_slice())]);
        assert_eq!(entries(&encode([])).expect("empty"), vec![]);
        // Every truncation, and trailing bytes, are refused.
        for cut in 0..chunk.len() {
            assert!(entries(&chunk[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = chunk.clone();
        long.push(0);
        assert!(entries(&long).is_err());
        let mut huge = chunk;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(entries(&huge).is_err());
    }

    #[test]
    fn sealed_chunks_open_to_their_raw_layout_and_damage_is_an_error() {
        let records: Vec<Vec<u8>> = (0..40u32)
            .map(|i| format!("{{\"key\":\"10000{i}\",\"kind\":\"mover\",\"city\":\"Utrecht\"}}").into_bytes())
            .collect();
        let raw = encode(records.iter().enumerate().map(|(i, r)| (i as u32, r.as_slice())));
        let sealed = seal(&raw);
        assert!(sealed.len() * 2 < raw.len(), "{} of {}", sealed.len(), raw.len());
        assert_eq!(open(&sealed).expect("opens").as_ref(), raw.as_slice());
        // A schema 2 chunk is its own raw layout.
        assert!(matches!(open(&raw), Ok(Cow::Borrowed(b)) if b == raw.as_slice()));
        // Truncated, or a length that lies: an error, not a panic.
        for cut in 4..sealed.len() {
            assert!(open(&sealed[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = sealed.clone();
        lying[4..8].copy_from_slice(&((raw.len() as u32) + 1).to_le_bytes());
        assert!(open(&lying).is_err());
        let mut huge = sealed;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(open(&huge).is_err());
    }
}
