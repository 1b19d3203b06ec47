//! Domain types that parse, not validate: once an [`Employee`] exists, its
//! key is non-empty, its e-mail is well formed and its employment period is
//! ordered. Rows that cannot become one are rejected with a reason, one by
//! one, by [`decode_employee`] and [`Draft::finish`]; they never abort a run.

use std::collections::BTreeMap;
use std::fmt;

use jiff::civil::Date;
use jiff::ToSpan;
use serde::{Deserialize, Serialize};

use crate::afas::rows::{self, Decimal, Row};
use crate::config::Mapping;

/// The AFAS employee key (EmployeeId / Medewerker).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EmployeeKey(String);

impl EmployeeKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty employee key".into());
        }
        if t.len() > 64 {
            return Err("employee key longer than 64 characters".into());
        }
        if t.chars().any(|c| c.is_control()) {
            return Err("employee key contains control characters".into());
        }
        Ok(EmployeeKey(t.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmployeeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address: one `@`, a plausible local part and a domain with a
/// dot. Lower-cased as a whole: mail systems and SCIM targets match
/// addresses case-insensitively, so a case-only edit in AFAS is no change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (local, domain) = t.split_once('@').ok_or_else(|| format!("`{}` has no @", clip(t)))?;
        if local.is_empty() || local.len() > 64 {
            return Err(format!("`{}`: the part before @ is empty or too long", clip(t)));
        }
        if domain.contains('@') {
            return Err(format!("`{}` has more than one @", clip(t)));
        }
        if t.len() > 254 {
            return Err("e-mail address longer than 254 characters".into());
        }
        let local_ok = local.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '!' | '#'
                        | '$'
                        | '%'
                        | '&'
                        | '\''
                        | '*'
                        | '+'
                        | '-'
                        | '/'
                        | '='
                        | '?'
                        | '^'
                        | '_'
                        | '`'
                        | '{'
                        | '|'
                        | '}'
                        | '~'
                        | '.'
                )
                || (!c.is_ascii() && c.is_alphanumeric())
        });
        if !local_ok || local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(format!("`{}`: invalid characters or dots before @", clip(t)));
        }
        let domain_ok = domain.contains('.')
            && domain.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric()))
            })
            && domain
                .rsplit('.')
                .next()
                .is_some_and(|tld| tld.len() >= 2 && !tld.chars().all(|c| c.is_ascii_digit()));
        if !domain_ok {
            return Err(format!("`{}`: invalid domain", clip(t)));
        }
        // `t` is exactly `local@domain` here.
        Ok(EmailAddress(if t.is_ascii() {
            t.to_ascii_lowercase()
        } else {
            t.to_lowercase()
        }))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn clip(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

/// A stretch of continuous employment: `end` is the last working day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmploymentPeriod {
    #[serde(with = "day")]
    pub start: Date,
    #[serde(with = "day::opt")]
    pub end: Option<Date>,
}

impl EmploymentPeriod {
    pub fn new(start: Date, end: Option<Date>) -> Result<Self, String> {
        if let Some(e) = end {
            if e < start {
                return Err(format!("employment ends ({e}) before it starts ({start})"));
            }
        }
        Ok(EmploymentPeriod { start, end })
    }
    /// Employed on `day`, or starting within `lead_days` after it.
    pub fn employed_on(&self, day: Date, lead_days: i64) -> bool {
        let horizon = day.checked_add(lead_days.days()).unwrap_or(day);
        self.start <= horizon && self.end.is_none_or(|e| e >= day)
    }
}

/// One contract row, decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    pub sequence: String,
    #[serde(with = "day")]
    pub start: Date,
    #[serde(with = "day::opt")]
    pub end: Option<Date>,
    pub fte: Option<Decimal>,
    pub hours_per_week: Option<Decimal>,
}

/// The contract that speaks for the employee, by the documented rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryContract {
    pub sequence: String,
    pub fte: Option<Decimal>,
    pub hours_per_week: Option<Decimal>,
}

/// Optional salary and leave data (Alleo Flex Salary / Flex Leave), from
/// the extra GetConnectors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pay {
    /// The salary that applies on the sync date.
    pub salary: Option<Decimal>,
    pub holiday_allowance_accrual: Option<Decimal>,
    pub holiday_allowance_balance: Option<Decimal>,
    /// Leave balance (hours) per leave type.
    pub leave_hours: BTreeMap<String, Decimal>,
}

/// The normalized employee: what afas-sync stores and delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Employee {
    pub key: EmployeeKey,
    pub email: EmailAddress,
    pub first_name: String,
    pub prefix: Option<String>,
    pub last_name: String,
    pub department: Option<String>,
    #[serde(with = "day::opt")]
    pub date_of_birth: Option<Date>,
    pub employment: EmploymentPeriod,
    /// The "Alleo access" flag; `None` when no access field is mapped.
    pub access: Option<bool>,
    pub budgets: BTreeMap<String, Decimal>,
    pub contract: Option<PrimaryContract>,
    pub pay: Pay,
}

impl Employee {
    /// "Jan van der Berg".
    pub fn display_name(&self) -> String {
        [
            Some(self.first_name.as_str()),
            self.prefix.as_deref(),
            Some(self.last_name.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// The delivered attributes as (name, value) text pairs, in a fixed
    /// order; movers are computed on these, so an attribute that is not
    /// delivered can never cause a mover.
    pub fn attributes(&self) -> Vec<(String, String)> {
        let d = |d: Option<Date>| d.map(|d| d.to_string()).unwrap_or_default();
        let mut out: Vec<(String, String)> = [
            ("email", self.email.as_str().to_string()),
            ("first_name", self.first_name.clone()),
            ("prefix", self.prefix.clone().unwrap_or_default()),
            ("last_name", self.last_name.clone()),
            ("department", self.department.clone().unwrap_or_default()),
            ("date_of_birth", d(self.date_of_birth)),
            ("employment_start", self.employment.start.to_string()),
            ("employment_end", d(self.employment.end)),
            ("access", self.access.map(|a| a.to_string()).unwrap_or_default()),
            (
                "fte",
                self.contract
                    .as_ref()
                    .and_then(|c| c.fte)
                    .map(|f| f.to_string())
                    .unwrap_or_default(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (name, amount) in &self.budgets {
            out.push((format!("budget.{name}"), amount.to_string()));
        }
        let p = &self.pay;
        for (name, v) in [
            ("salary", p.salary),
            ("holiday_allowance_accrual", p.holiday_allowance_accrual),
            ("holiday_allowance_balance", p.holiday_allowance_balance),
        ] {
            if let Some(v) = v {
                out.push((name.to_string(), v.to_string()));
            }
        }
        for (kind, hours) in &p.leave_hours {
            out.push((format!("leave.{kind}"), hours.to_string()));
        }
        out
    }
}

/// A row that could not become an employee, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The key when it could be read (so the employee is protected from
    /// being treated as vanished), else a description of the row.
    pub key: Option<EmployeeKey>,
    pub row: String,
    pub reason: String,
}

/// Decodes a contract row into (employee key, contract).
pub fn normalize_contract(row: &Row, mapping: &Mapping) -> Result<(EmployeeKey, Contract), String> {
    let m = &mapping.contracts;
    let e = |err: rows::CellError| err.to_string();
    let key = rows::text(row, &m.employee_key)
        .map_err(e)?
        .ok_or("empty employee key")?;
    let key = EmployeeKey::parse(&key)?;
    let sequence = rows::text(row, &m.sequence).map_err(e)?.unwrap_or_default();
    let start = rows::date(row, &m.start)
        .map_err(e)?
        .ok_or_else(|| format!("field `{}`: contract has no start date", m.start))?;
    let end = rows::date(row, &m.end).map_err(e)?;
    if let Some(end) = end {
        if end < start {
            return Err(format!("contract {sequence} ends ({end}) before it starts ({start})"));
        }
    }
    Ok((
        key,
        Contract {
            sequence,
            start,
            end,
            fte: rows::decimal(row, &m.fte).map_err(e)?,
            hours_per_week: rows::decimal(row, &m.hours_per_week).map_err(e)?,
        },
    ))
}

/// The employment that matters on `as_of`, from the contracts.
///
/// Contracts are chained into periods: a contract starting on or before the
/// day after the previous one ends continues the same employment (a renewal
/// is not a leaver plus a joiner). The period containing `as_of` wins; else
/// the nearest future one (a pre-hire); else the latest past one.
pub fn employment_from_contracts(contracts: &[Contract], as_of: Date) -> Option<EmploymentPeriod> {
    let mut sorted: Vec<&Contract> = contracts.iter().collect();
    sorted.sort_by(|a, b| a.start.cmp(&b.start).then(a.sequence.cmp(&b.sequence)));
    let mut periods: Vec<EmploymentPeriod> = Vec::new();
    for c in sorted {
        match periods.last_mut() {
            Some(p)
                if p.end
                    .is_none_or(|e| e.checked_add(1.day()).is_ok_and(|next| c.start <= next)) =>
            {
                p.end = match (p.end, c.end) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(b)) => Some(a.max(b)),
                };
            }
            _ => periods.push(EmploymentPeriod {
                start: c.start,
                end: c.end,
            }),
        }
    }
    periods
        .iter()
        .find(|p| p.start <= as_of && p.end.is_none_or(|e| e >= as_of))
        .or_else(|| periods.iter().filter(|p| p.start > as_of).min_by_key(|p| p.start))
        .or_else(|| periods.iter().max_by_key(|p| p.end))
        .copied()
}

/// The primary contract: among those active on `as_of` the highest FTE,
/// then most hours, then the highest sequence number; with none active, the
/// one that started last. Deterministic whatever order AFAS sends them in.
pub fn primary_contract(contracts: &[Contract], as_of: Date) -> Option<PrimaryContract> {
    let active = |c: &&Contract| c.start <= as_of && c.end.is_none_or(|e| e >= as_of);
    let rank = |c: &&Contract| (c.fte, c.hours_per_week, seq_rank(&c.sequence));
    let chosen = contracts
        .iter()
        .filter(active)
        .max_by_key(rank)
        .or_else(|| contracts.iter().max_by_key(|c| (c.start, seq_rank(&c.sequence))))?;
    Some(PrimaryContract {
        sequence: chosen.sequence.clone(),
        fte: chosen.fte,
        hours_per_week: chosen.hours_per_week,
    })
}

/// Sequence numbers compare numerically when they are numbers.
fn seq_rank(s: &str) -> (u64, String) {
    (s.parse::<u64>().unwrap_or(0), s.to_string())
}

/// An employee row decoded on its own, waiting for its contracts. Holding
/// these instead of raw JSON rows keeps memory small while the contracts
/// connector is still being read (the engine keeps them encoded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Draft {
    pub key: EmployeeKey,
    email: EmailAddress,
    first_name: String,
    prefix: Option<String>,
    last_name: String,
    department: Option<String>,
    #[serde(with = "day::opt")]
    date_of_birth: Option<Date>,
    #[serde(with = "day::opt")]
    row_start: Option<Date>,
    #[serde(with = "day::opt")]
    row_end: Option<Date>,
    access: Option<bool>,
    budgets: BTreeMap<String, Decimal>,
}

/// Decodes an employee row; a bad row becomes a [`Rejection`] that carries
/// its key when the key itself could be read.
pub fn decode_employee(row: &Row, mapping: &Mapping) -> Result<Draft, Rejection> {
    let m = &mapping.employees;
    let key = rows::text(row, &m.key)
        .ok()
        .flatten()
        .and_then(|k| EmployeeKey::parse(&k).ok());
    // Described only when rejected: most rows are not.
    let reject = |reason: String| Rejection {
        key: key.clone(),
        row: rows::describe_key(row, std::slice::from_ref(&m.key)),
        reason,
    };
    let key = key
        .clone()
        .ok_or_else(|| reject(format!("field `{}`: missing or invalid employee key", m.key)))?;
    let e = |err: rows::CellError| reject(err.to_string());
    let required =
        |field: &str, v: Option<String>| v.ok_or_else(|| reject(format!("field `{field}`: required but empty")));
    let email_text = required(&m.email, rows::text(row, &m.email).map_err(e)?)?;
    let email = EmailAddress::parse(&email_text).map_err(|r| reject(format!("field `{}`: {r}", m.email)))?;
    let first_name = required(&m.first_name, rows::text(row, &m.first_name).map_err(e)?)?;
    let last_name = required(&m.last_name, rows::text(row, &m.last_name).map_err(e)?)?;
    let access = match &m.access {
        Some(field) => Some(rows::boolean(row, field).map_err(e)?.unwrap_or(false)),
        None => None,
    };
    let mut budgets = BTreeMap::new();
    for (name, field) in &m.budgets {
        if let Some(v) = rows::decimal(row, field).map_err(e)? {
            budgets.insert(name.clone(), v);
        }
    }
    Ok(Draft {
        key,
        email,
        first_name,
        prefix: rows::text(row, &m.prefix).map_err(e)?,
        last_name,
        department: rows::text(row, &m.department).map_err(e)?,
        date_of_birth: rows::date(row, &m.date_of_birth).map_err(e)?,
        row_start: rows::date(row, &m.employment_start).map_err(e)?,
        row_end: rows::date(row, &m.employment_end).map_err(e)?,
        access,
        budgets,
    })
}

impl Draft {
    /// Completes the employee with its contracts. Without contracts, the
    /// employee row's own start and end dates are used.
    pub fn finish(
        self,
        contracts: Option<&[Contract]>,
        pay: Pay,
        as_of: Date,
        mapping: &Mapping,
    ) -> Result<Employee, Rejection> {
        let contracts = contracts.filter(|c| !c.is_empty());
        let employment = match contracts.and_then(|c| employment_from_contracts(c, as_of)) {
            Some(p) => p,
            None => {
                let reject = |reason: String| Rejection {
                    key: Some(self.key.clone()),
                    row: format!("{}={}", mapping.employees.key, self.key),
                    reason,
                };
                let start = self.row_start.ok_or_else(|| {
                    reject(format!(
                        "field `{}`: required but empty (and no contracts)",
                        mapping.employees.employment_start
                    ))
                })?;
                EmploymentPeriod::new(start, self.row_end).map_err(|e| {
                    reject(format!(
                        "fields `{}`/`{}`: {e}",
                        mapping.employees.employment_start, mapping.employees.employment_end
                    ))
                })?
            }
        };
        Ok(Employee {
            key: self.key,
            email: self.email,
            first_name: self.first_name,
            prefix: self.prefix,
            last_name: self.last_name,
            department: self.department,
            date_of_birth: self.date_of_birth,
            employment,
            access: self.access,
            budgets: self.budgets,
            contract: contracts.and_then(|c| primary_contract(c, as_of)),
            pay,
        })
    }
}

/// Reads the employee key of an extra-connector row.
fn extra_key(row: &Row, field: &str) -> Result<EmployeeKey, String> {
    let key = rows::text(row, field)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("field `{field}`: empty employee key"))?;
    EmployeeKey::parse(&key)
}

fn required_decimal(row: &Row, field: &str) -> Result<Decimal, String> {
    rows::decimal(row, field)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("field `{field}`: required but empty"))
}

/// A salary row: (employee, valid from, amount).
pub fn decode_salary(row: &Row, mapping: &Mapping) -> Result<(EmployeeKey, Date, Decimal), String> {
    let m = &mapping.salary;
    let key = extra_key(row, &m.employee_key)?;
    let start = rows::date(row, &m.start)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("field `{}`: required but empty", m.start))?;
    Ok((key, start, required_decimal(row, &m.amount)?))
}

/// A wage component row: (employee, component id, amount).
pub fn decode_wage_component(row: &Row, mapping: &Mapping) -> Result<(EmployeeKey, String, Decimal), String> {
    let m = &mapping.wage_components;
    let key = extra_key(row, &m.employee_key)?;
    let id = rows::text(row, &m.component)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("field `{}`: required but empty", m.component))?;
    Ok((key, id, required_decimal(row, &m.amount)?))
}

/// A leave row: (employee, leave type, balance in hours).
pub fn decode_leave(row: &Row, mapping: &Mapping) -> Result<(EmployeeKey, String, Decimal), String> {
    let m = &mapping.leave;
    let key = extra_key(row, &m.employee_key)?;
    let kind = rows::text(row, &m.leave_type)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("field `{}`: required but empty", m.leave_type))?;
    Ok((key, kind, required_decimal(row, &m.balance)?))
}

/// Dates in records as jiff writes them (`2024-01-31`), without going
/// through jiff's general printer and parser: every stored employee holds
/// several dates, and formatting them was 4 % of a first import's
/// instructions. The bytes are jiff's own (a string, the same text), so
/// stored records and JSON output are unchanged; dates outside the years
/// 0–9999 and any other text go through jiff as before.
pub mod day {
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
                match crate::afas::rows::parse_ymd(s) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    fn c(seq: &str, start: &str, end: Option<&str>, fte: i64) -> Contract {
        Contract {
            sequence: seq.into(),
            start: d(start),
            end: end.map(d),
            fte: Some(Decimal::from_units(fte)),
            hours_per_week: None,
        }
    }

    #[test]
    fn dates_are_stored_exactly_as_jiff_writes_them() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Fast {
            #[serde(with = "day")]
            d: Date,
            #[serde(with = "day::opt")]
            o: Option<Date>,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Jiff {
            d: Date,
            o: Option<Date>,
        }
        let mut days: Vec<Date> = [
            "0000-01-01",
            "0001-02-03",
            "0999-12-31",
            "1753-01-01",
            "2024-02-29",
            "9999-12-31",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        days.extend([Date::new(-1, 6, 15).unwrap(), Date::new(-9999, 1, 1).unwrap()]);
        let mut d: Date = "1999-12-25".parse().unwrap();
        for _ in 0..400 {
            days.push(d);
            d = d.checked_add(1.day()).unwrap();
        }
        for (i, d) in days.iter().enumerate() {
            let o = (i % 2 == 0).then_some(*d);
            let fast = Fast { d: *d, o };
            let jiff = Jiff { d: *d, o };
            let (fb, jb) = (
                crate::store::codec::encode(&fast).unwrap(),
                crate::store::codec::encode(&jiff).unwrap(),
            );
            assert_eq!(fb, jb, "{d}");
            assert_eq!(crate::store::codec::decode::<Fast>(&jb).unwrap(), fast);
            assert_eq!(
                serde_json::to_string(&fast).unwrap(),
                serde_json::to_string(&jiff).unwrap()
            );
            let back: Fast = serde_json::from_str(&serde_json::to_string(&jiff).unwrap()).unwrap();
            assert_eq!(back, fast);
        }
        for bad in ["\"2024-02-30\"", "\"2024-1-01\"", "\"20x4-01-01\"", "\"\"", "7"] {
            assert!(serde_json::from_str::<Jiff>(&format!("{{\"d\": {bad}, \"o\": null}}")).is_err());
            assert!(
                serde_json::from_str::<Fast>(&format!("{{\"d\": {bad}, \"o\": null}}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn emails_parse_or_say_why() {
        assert_eq!(
            EmailAddress::parse(" Jan.de.Vries@Bedrijf.NL ").unwrap().as_str(),
            "jan.de.vries@bedrijf.nl"
        );
        for bad in [
            "jan",
            "jan@",
            "@x.nl",
            "jan@@x.nl",
            "jan@x",
            "jan@x.1",
            "ja n@x.nl",
            ".jan@x.nl",
            "jan..x@x.nl",
            "jan@-x.nl",
            "jan@x..nl",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renewals_join_into_one_employment_and_gaps_split() {
        let renewal = [
            c("1", "2020-01-01", Some("2020-12-31"), 10_000),
            c("2", "2021-01-01", None, 10_000),
        ];
        let p = employment_from_contracts(&renewal, d("2024-06-01")).unwrap();
        assert_eq!((p.start, p.end), (d("2020-01-01"), None));

        let gap = [
            c("1", "2020-01-01", Some("2020-12-31"), 10_000),
            c("2", "2021-03-01", None, 10_000),
        ];
        assert_eq!(
            employment_from_contracts(&gap, d("2021-02-01")).unwrap().start,
            d("2021-03-01"),
            "pre-hire of the next period"
        );
        assert_eq!(
            employment_from_contracts(&gap, d("2021-06-01")).unwrap().start,
            d("2021-03-01")
        );
        let past = employment_from_contracts(&gap[..1], d("2022-01-01")).unwrap();
        assert_eq!(past.end, Some(d("2020-12-31")));
    }

    #[test]
    fn primary_contract_rule_is_deterministic() {
        let a = c("1", "2020-01-01", None, 5_000);
        let b = c("2", "2020-01-01", None, 8_000);
        let z = c("3", "2019-01-01", Some("2019-12-31"), 10_000);
        for order in [
            vec![a.clone(), b.clone(), z.clone()],
            vec![z.clone(), b.clone(), a.clone()],
        ] {
            assert_eq!(primary_contract(&order, d("2024-01-01")).unwrap().sequence, "2");
        }
        // Equal FTE: the higher sequence number wins.
        let e1 = c("9", "2020-01-01", None, 5_000);
        let e2 = c("10", "2020-01-01", None, 5_000);
        assert_eq!(primary_contract(&[e2, e1], d("2024-01-01")).unwrap().sequence, "10");
    }
}
