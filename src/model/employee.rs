//! The employee as afas-sync keeps it: types that parse, not validate.
//! Once an [`Employee`] exists, its key is non-empty, its e-mail is well
//! formed and its employment period is ordered. No I/O and no wire format:
//! AFAS rows become these in `afas::decode`.

use std::collections::BTreeMap;
use std::fmt;

use jiff::civil::Date;
use jiff::ToSpan;
use serde::{Deserialize, Serialize};

use super::day;
use super::Decimal;

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
