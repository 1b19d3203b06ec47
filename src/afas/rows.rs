//! Tolerant decoding of AFAS GetConnector cells.
//!
//! AFAS rows are JSON objects in which every field is present and empty
//! values are `null`; flags are sometimes `int` 0/1; dates carry a `Z` but
//! are Europe/Amsterdam local time. Field ids are whatever the customer's
//! connector defines, so every accessor takes the field id from the mapping.
//! Accessors return `Ok(None)` for empty values and a [`CellError`] naming the
//! field for values that cannot mean what the mapping says: the caller then
//! rejects that one row, never the page.

use std::fmt;
use std::sync::Arc;

use jiff::civil::Date;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

pub use crate::model::day::parse_ymd;
pub use crate::model::Decimal;

/// One GetConnector row as a JSON object: what AFAS (and the emulator)
/// serves.
pub type JsonRow = Map<String, Value>;

/// Which fields of a fetched row are kept.
#[derive(Debug, Clone)]
pub enum Fields {
    /// Every field, as sent (`afas-sync fetch` shows them all).
    All,
    /// Only these; the sync reads no others. A connector row carries
    /// dozens of fields the mapping never looks at, and building a map of
    /// all of them was a third of a no-op run's CPU.
    Only(Arc<[String]>),
}

/// One GetConnector row as read: the kept fields by name. A field the
/// row did not have is absent, as in the JSON; `null` is kept as `null`.
#[derive(Debug, Clone)]
pub struct Row {
    names: Arc<[String]>,
    values: Vec<Option<Value>>,
}

impl Row {
    pub fn get(&self, field: &str) -> Option<&Value> {
        let i = self.names.iter().position(|n| n == field)?;
        self.values.get(i)?.as_ref()
    }

    /// The row as a JSON object, fields in name order.
    pub fn into_json(self) -> JsonRow {
        self.names
            .iter()
            .zip(self.values)
            .filter_map(|(n, v)| Some((n.clone(), v?)))
            .collect()
    }
}

impl From<JsonRow> for Row {
    fn from(m: JsonRow) -> Self {
        let (names, values): (Vec<String>, Vec<Option<Value>>) = m.into_iter().map(|(k, v)| (k, Some(v))).unzip();
        Row {
            names: names.into(),
            values,
        }
    }
}

/// One entry of a page's `rows` array: a row, or what it was instead.
#[derive(Debug)]
pub enum Entry {
    Row(Row),
    Other(&'static str),
}

/// Parses one page entry, keeping only the wanted fields. Fields not kept
/// are skipped without being built. Non-objects are parsed in full, so
/// serde_json's nesting limit still turns a 5000-deep entry into an
/// unreadable answer instead of a quiet "not an object".
pub struct EntrySeed<'a>(pub &'a Fields);

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Entry;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Entry, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row object")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Entry, E> {
        Ok(Entry::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Entry, E> {
        Ok(Entry::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Entry, E> {
        Ok(Entry::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Entry, E> {
        Ok(Entry::Other("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Entry, E> {
        Ok(Entry::Other("a string"))
    }
    fn visit_unit<E>(self) -> Result<Entry, E> {
        Ok(Entry::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Entry::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        // A field sent twice keeps its last value, as a JSON map would.
        match self.0 {
            Fields::Only(names) => {
                let mut values: Vec<Option<Value>> = vec![None; names.len()];
                while let Some(key) = map.next_key_seed(KeySeed)? {
                    match names.iter().position(|n| n.as_str() == &*key) {
                        Some(i) => values[i] = Some(map.next_value()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Entry::Row(Row {
                    names: names.clone(),
                    values,
                }))
            }
            Fields::All => {
                let mut all = JsonRow::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    all.insert(k, v);
                }
                Ok(Entry::Row(all.into()))
            }
        }
    }
}

/// A field name, borrowed from the page when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = std::borrow::Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = std::borrow::Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct CellError {
    pub field: String,
    pub reason: String,
}

fn cell_err(field: &str, reason: impl Into<String>) -> CellError {
    CellError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Longest text accepted in a single cell; a 1 MB "first name" is an attack
/// or a broken connector, not a name.
pub const MAX_TEXT_LEN: usize = 1024;

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// A field that is absent from the row is an error (the connector does not
/// have it); `null` is an empty value.
fn get<'a>(row: &'a Row, field: &str) -> Result<&'a Value, CellError> {
    row.get(field)
        .ok_or_else(|| cell_err(field, "missing from the row (is it in the GetConnector?)"))
}

/// Text, trimmed; empty → `None`. Numbers are accepted as their text because
/// ids are often typed `int` in one connector and `string` in another.
pub fn text(row: &Row, field: &str) -> Result<Option<String>, CellError> {
    match get(row, field)? {
        Value::Null => Ok(None),
        Value::String(s) => {
            let t = s.trim().trim_start_matches('\u{feff}');
            if t.is_empty() {
                return Ok(None);
            }
            if t.len() > MAX_TEXT_LEN {
                return Err(cell_err(field, format!("text longer than {MAX_TEXT_LEN} bytes")));
            }
            if t.chars().any(|c| c.is_control()) {
                return Err(cell_err(field, "contains control characters"));
            }
            // Bidirectional overrides and isolates can make a name display
            // as something else (spoofing); no real name needs them.
            if t.chars()
                .any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
            {
                return Err(cell_err(field, "contains bidirectional override characters"));
            }
            Ok(Some(t.to_string()))
        }
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(cell_err(field, format!("expected text, got {}", describe(other)))),
    }
}

/// Booleans as `true`/`false`, or 0/1 for fields AFAS types as `int`.
pub fn boolean(row: &Row, field: &str) -> Result<Option<bool>, CellError> {
    match get(row, field)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(cell_err(field, format!("expected 0 or 1, got {n}"))),
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "1" | "true" | "ja" | "j" => Ok(Some(true)),
            "0" | "false" | "nee" | "n" => Ok(Some(false)),
            _ => Err(cell_err(
                field,
                format!("expected a yes/no value, got {}", describe(&Value::String(s.clone()))),
            )),
        },
        other => Err(cell_err(field, format!("expected a boolean, got {}", describe(other)))),
    }
}

/// Numbers as decimals; strings holding a number are accepted too.
pub fn decimal(row: &Row, field: &str) -> Result<Option<Decimal>, CellError> {
    match get(row, field)? {
        Value::Null => Ok(None),
        // A JSON number that went through a binary float somewhere
        // (514.5600000000001) is rounded to 4 decimals; text stays strict.
        Value::Number(n) => n
            .as_i64()
            .and_then(|i| i.checked_mul(Decimal::SCALE))
            .filter(|u| u.abs() <= Decimal::MAX_UNITS)
            .map(Decimal::from_units)
            .or_else(|| Decimal::parse(&n.to_string()))
            .or_else(|| {
                let x = n.as_f64().filter(|x| x.is_finite() && x.abs() < 1e12)?;
                Some(Decimal::from_units((x * Decimal::SCALE as f64).round() as i64))
            })
            .map(Some)
            .ok_or_else(|| cell_err(field, format!("number {n} is out of range"))),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => Decimal::parse(s).map(Some).ok_or_else(|| {
            cell_err(
                field,
                format!("expected a decimal number, got {}", describe(&Value::String(s.clone()))),
            )
        }),
        other => Err(cell_err(field, format!("expected a number, got {}", describe(other)))),
    }
}

/// Dates such as `2012-11-22T00:00:00Z`. The `Z` is a lie: AFAS writes
/// Europe/Amsterdam local time, so the calendar date is taken as written and
/// never shifted by a time-zone conversion (which would move midnight dates
/// to the previous day).
pub fn date(row: &Row, field: &str) -> Result<Option<Date>, CellError> {
    match get(row, field)? {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => parse_afas_date(s).map(Some).ok_or_else(|| {
            cell_err(
                field,
                format!(
                    "expected a date like 2024-01-31T00:00:00Z, got {}",
                    describe(&Value::String(s.clone()))
                ),
            )
        }),
        other => Err(cell_err(field, format!("expected a date, got {}", describe(other)))),
    }
}

/// Parses the date part of an AFAS date-time; the time part, when present,
/// must be well formed but is otherwise ignored.
pub fn parse_afas_date(s: &str) -> Option<Date> {
    let s = s.trim();
    let (date_part, rest) = if s.len() > 10 { s.split_at_checked(10)? } else { (s, "") };
    let date = parse_ymd(date_part)?;
    // AFAS's own range; year 0000 and beyond-9999 placeholders are not dates.
    if !(1753..=9999).contains(&date.year()) {
        return None;
    }
    if !rest.is_empty() {
        let time = rest.strip_prefix('T')?;
        let time = time.strip_suffix('Z').unwrap_or(time);
        let hms = time.split('.').next()?;
        // Nearly every AFAS date is midnight; `strptime` costs more than
        // the rest of the row's decoding, so the usual form is checked by
        // hand and anything else goes through it.
        if !is_hh_mm_ss(hms) {
            jiff::civil::Time::strptime("%H:%M:%S", hms).ok()?;
        }
    }
    Some(date)
}

/// `HH:MM:SS` with two digits each and a valid time of day.
fn is_hh_mm_ss(s: &str) -> bool {
    let b = s.as_bytes();
    let two = |i: usize| -> Option<u8> {
        let (h, l) = (b.get(i)?, b.get(i + 1)?);
        (h.is_ascii_digit() && l.is_ascii_digit()).then(|| (h - b'0') * 10 + (l - b'0'))
    };
    b.len() == 8
        && b[2] == b':'
        && b[5] == b':'
        && two(0).is_some_and(|h| h < 24)
        && two(3).is_some_and(|m| m < 60)
        && two(6).is_some_and(|s| s < 60)
}

/// The key of a row, for reports ("row EmployeeId=1001: field `Mail`: …").
pub fn describe_key(row: &Row, key_fields: &[String]) -> String {
    key_fields
        .iter()
        .map(|f| {
            let f = f.trim_start_matches('-');
            let v = match row.get(f) {
                Some(Value::String(s)) => s.chars().take(64).collect(),
                Some(Value::Null) | None => "(empty)".to_string(),
                Some(other) => describe(other),
            };
            format!("{f}={v}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        match v {
            Value::Object(m) => m.into(),
            _ => JsonRow::new().into(),
        }
    }

    #[test]
    fn nulls_are_empty_and_missing_fields_are_errors() {
        let r = row(json!({"A": null, "B": "  ", "C": 0, "D": 1, "E": 2}));
        assert_eq!(text(&r, "A"), Ok(None));
        assert_eq!(text(&r, "B"), Ok(None));
        assert_eq!(boolean(&r, "A"), Ok(None));
        assert_eq!(boolean(&r, "C"), Ok(Some(false)));
        assert_eq!(boolean(&r, "D"), Ok(Some(true)));
        assert!(boolean(&r, "E").is_err());
        let err = text(&r, "Missing").unwrap_err();
        assert_eq!(err.field, "Missing");
    }

    #[test]
    fn dates_keep_the_amsterdam_calendar_day() {
        let r = row(
            json!({"D": "2012-11-22T00:00:00Z", "E": "2024-03-31", "F": "0000-00-00T00:00:00Z", "G": "2024-02-30T00:00:00Z", "H": 20240101}),
        );
        assert_eq!(date(&r, "D"), Ok(Some(Date::new(2012, 11, 22).unwrap())));
        assert_eq!(date(&r, "E"), Ok(Some(Date::new(2024, 3, 31).unwrap())));
        assert!(date(&r, "F").is_err());
        assert!(date(&r, "G").is_err());
        assert!(date(&r, "H").is_err());
        assert!(parse_afas_date("2024-01-01T25:00:00Z").is_none());
        assert!(parse_afas_date("2024-01-01T12:60:00Z").is_none());
        assert!(parse_afas_date("2024-01-01T12:00:61").is_none());
        assert!(parse_afas_date("2024-01-01T12:00:00.123Z").is_some());
        assert!(parse_afas_date("2024-01-01T23:59:59").is_some());
        assert!(parse_afas_date("2024-01-01Tgarbage").is_none());
        assert!(parse_afas_date("2024-01-0é").is_none());
        // Digits only: a sign is not part of a month.
        assert!(parse_afas_date("2024-+1-01T00:00:00Z").is_none());
    }

    #[test]
    fn decimals_are_exact() {
        for (input, units) in [
            ("12.5", 125_000),
            ("-.5", -5_000),
            ("12,50", 125_000),
            ("0.0001", 1),
            ("1.23450", 12_345),
        ] {
            assert_eq!(Decimal::parse(input), Some(Decimal::from_units(units)), "{input}");
        }
        for bad in [
            "",
            "-",
            ".",
            "1e5",
            "NaN",
            "1.00001",
            "12a",
            "99999999999999999999",
            "1.2.3",
            "1,2,5",
            "1,2.5",
        ] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
        assert_eq!(Decimal::from_units(125_000).to_string(), "12.5");
        assert_eq!(Decimal::from_units(-5_000).to_string(), "-0.5");
        for (units, text) in [
            (1, "0.0001"),
            (500, "0.05"),
            (123_450, "12.345"),
            (-10_001, "-1.0001"),
            (70_000, "7"),
        ] {
            assert_eq!(Decimal::from_units(units).to_string(), text);
        }
        let r = row(
            json!({"N": 1.5, "S": "2.25", "B": true, "F": 514.5600000000001, "H": 1e300, "I": -12, "J": 1_000_000_000_000_i64, "K": 1_000_000_000_001_i64}),
        );
        assert_eq!(decimal(&r, "I"), Ok(Some(Decimal::from_units(-120_000))));
        assert_eq!(decimal(&r, "J"), Ok(Some(Decimal::from_units(Decimal::MAX_UNITS))));
        assert!(decimal(&r, "K").is_err());
        assert_eq!(decimal(&r, "F"), Ok(Some(Decimal::from_units(5_145_600))));
        assert!(decimal(&r, "H").is_err());
        assert_eq!(decimal(&r, "N"), Ok(Some(Decimal::from_units(15_000))));
        assert_eq!(decimal(&r, "S"), Ok(Some(Decimal::from_units(22_500))));
        assert!(decimal(&r, "B").is_err());
    }

    #[test]
    fn text_refuses_control_characters_and_huge_values() {
        let r = row(json!({"A": "Jan\u{0}", "B": "x".repeat(5000), "C": 1001, "D": "Émile", "E": "Jan\u{202E}nimda"}));
        assert!(text(&r, "A").is_err());
        assert!(text(&r, "E").is_err());
        assert!(text(&r, "B").is_err());
        assert_eq!(text(&r, "C"), Ok(Some("1001".into())));
        assert_eq!(text(&r, "D"), Ok(Some("Émile".into())));
    }
}
