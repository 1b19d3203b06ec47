//! Several mutations of one run packed into one stored value.
//!
//! Why: a run's mutations are written with ascending keys, and a B-tree
//! that only ever appends splits every full leaf in two and never fills the
//! left half again. With one ~170-byte mutation per entry, redb's leaves of
//! the mutation table stayed about half empty, so a year of history took
//! twice its size on disk (measured: 20.8 MB stored in 40 MB of leaves per
//! 125k mutations). A value close to one page fills its page.
//!
//! Layout, all integers little-endian u32: `count`, then `count` times
//! `index, length, bytes` (each `bytes` an encoded mutation, see `codec`).
//! The index is the mutation's position in its run, kept explicitly so that
//! `forget` can drop one entry without renumbering the others.

/// A chunk is closed once adding the next mutation would take it past this
/// many bytes: under one 4 KiB page with room for redb's leaf header.
pub const TARGET_BYTES: usize = 3800;

/// Encodes entries (index, encoded mutation) into one chunk value.
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

/// The bytes a chunk adds for one entry of `len` bytes.
pub fn entry_size(len: usize) -> usize {
    8 + len
}

/// Splits a chunk into its entries. A damaged chunk is an error, never a
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
}
