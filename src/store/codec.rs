//! Every record in the store is `[format version byte][bincode body]`.
//!
//! The version byte makes a format change a migration instead of a corrupt
//! read: a reader that meets a version it does not know refuses the record
//! by name. Switching to another encoding (postcard, say) is a change to this
//! file only.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The record format this binary writes.
pub const FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("record format {0} is newer than this binary knows ({FORMAT})")]
    UnknownFormat(u8),
    #[error("{0}")]
    Bincode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    // Straight into the record, no second buffer; records are held by the
    // 100,000 while a run works, so the spare capacity is given back.
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT);
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| CodecError::Bincode(e.to_string()))?;
    out.shrink_to_fit();
    Ok(out)
}

/// Decodes the leading fields of a record as `T` (a struct whose fields are
/// the first fields of the stored one, in the same order) and returns where
/// the rest of the record starts.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT {
        return Err(CodecError::UnknownFormat(version));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| CodecError::Bincode(e.to_string()))?;
    Ok((value, 1 + used))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT {
        return Err(CodecError::UnknownFormat(version));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| CodecError::Bincode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Bincode(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
}

/// FNV-1a, for the order-independent snapshot digest: stable forever,
/// unlike std's hasher, so digests written by one build verify in the next.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let v = (String::from("x"), 42u64, Some(vec![1u8, 2]));
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(decode::<(String, u64, Option<Vec<u8>>)>(&bytes).unwrap(), v);
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert_eq!(
            decode::<(String, u64, Option<Vec<u8>>)>(&newer),
            Err(CodecError::UnknownFormat(9))
        );
        assert_eq!(decode::<u64>(&[]), Err(CodecError::Empty));
        assert!(decode::<(String, u64, Option<Vec<u8>>)>(&bytes[..3]).is_err());
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
