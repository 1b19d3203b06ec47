//! AFAS rows into the model: one employee row, contract row or pay row at a
//! time. A row that cannot become one is rejected with a reason; rejections
//! never abort a run.

use std::collections::BTreeMap;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::rows::{self, Decimal, Row};
use crate::config::Mapping;
use crate::model::{
    day, employment_from_contracts, primary_contract, Contract, EmailAddress, Employee, EmployeeKey, EmploymentPeriod,
    Pay, Rejection,
};

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
            d = d.checked_add(jiff::ToSpan::day(1)).unwrap();
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
