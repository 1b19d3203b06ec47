//! Dates in records as jiff writes them (`2024-01-31`), without going
//! through jiff's general printer and parser: every stored employee holds
//! several dates, and formatting them was 4 % of a first import's
//! instructions. The bytes are jiff's own (a string, the same text), so
//! stored records and JSON output are unchanged; dates outside the years
//! 0–9999 and any other text go through jiff as before.

use jiff::civil::Date;
use serde::de::{Error, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `YYYY-MM-DD` for the years jiff writes with four digits.
fn text(d: Date) -> Option<[u8; 10]> {
    let y = u16::try_from(d.year()).ok().filter(|y| *y <= 9999)?;
    let (m, day) = (d.month() as u8, d.day() as u8);
    let digit = |n: u16| b'0' + (n % 10) as u8;
    Some([
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(u16::from(m / 10)),
        digit(u16::from(m)),
        b'-',
        digit(u16::from(day / 10)),
        digit(u16::from(day)),
    ])
}

pub fn serialize<S: Serializer>(d: &Date, s: S) -> Result<S::Ok, S::Error> {
    match text(*d) {
        // ASCII digits and dashes: always UTF-8.
        Some(b) => s.serialize_str(std::str::from_utf8(&b).map_err(serde::ser::Error::custom)?),
        None => d.serialize(s),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Date;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a date like 2024-01-31")
        }
        fn visit_str<E: Error>(self, s: &str) -> Result<Date, E> {
            // The usual form by hand; anything else goes to jiff.
            match parse_ymd(s) {
                Some(d) => Ok(d),
                None => s.parse().map_err(|e| E::custom(format!("date `{s}`: {e}"))),
            }
        }
    }
    d.deserialize_str(V)
}

/// A date that serializes as [`serialize`] writes it.
pub struct Day(pub Date);

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(Day)
    }
}

/// The same for `Option<Date>`.
pub mod opt {
    use super::Day;
    use jiff::civil::Date;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&Day(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
        Ok(Option::<Day>::deserialize(d)?.map(|d| d.0))
    }
}

/// Exactly `YYYY-MM-DD`, digits only, a real calendar day.
pub fn parse_ymd(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i16> {
        b[r].iter()
            .try_fold(0i16, |n, c| c.is_ascii_digit().then(|| n * 10 + i16::from(c - b'0')))
    };
    Date::new(num(0..4)?, num(5..7)? as i8, num(8..10)? as i8).ok()
}
