//! The emulator's data: connectors with field metadata and rows, loaded from
//! fixture files or generated deterministically from a seed.
//!
//! Fixture layout (documented in the README):
//!
//! ```text
//! scenario/
//!   01-monday/                 one directory per "day", taken in name order
//!     Profit_Employees_Alleo.json
//!     Profit_Contract.json
//!   02-tuesday/
//!     ...
//! ```
//!
//! Each JSON file is `{"description": "...", "fields": [{"id", "dataType",
//! "label"}], "rows": [{...}]}`. `fields` may be left out; the types are then
//! inferred from the first non-null value of each field in the rows. A
//! directory holding the JSON files directly is a scenario of one day.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::civil::Date;
use jiff::ToSpan;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::afas::rows::JsonRow;

#[path = "generate.rs"]
mod generate;
pub use generate::*;

pub const EMPLOYEES_CONNECTOR: &str = "Profit_Employees_Alleo";
pub const CONTRACTS_CONNECTOR: &str = "Profit_Contract";
pub const SALARY_CONNECTOR: &str = "Profit_Salary_Alleo";
pub const WAGE_CONNECTOR: &str = "Profit_WageComponents_Alleo";
pub const LEAVE_CONNECTOR: &str = "Profit_Leave_Alleo";
/// Wage component ids of the generated administration.
pub const HOLIDAY_ACCRUAL_ID: &str = "5100";
pub const HOLIDAY_BALANCE_ID: &str = "5110";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FieldDef {
    pub id: String,
    #[serde(rename = "dataType")]
    pub data_type: String,
    #[serde(default)]
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ConnectorData {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub fields: Vec<FieldDef>,
    #[serde(default)]
    pub rows: Vec<JsonRow>,
}

impl ConnectorData {
    pub fn field_type(&self, id: &str) -> Option<&str> {
        self.fields.iter().find(|f| f.id == id).map(|f| f.data_type.as_str())
    }

    /// Fills `fields` from the rows when a fixture left them out.
    fn infer_fields(&mut self) {
        if !self.fields.is_empty() {
            return;
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for row in &self.rows {
            for (k, v) in row {
                if !seen.contains_key(k) {
                    order.push(k.clone());
                    seen.insert(k.clone(), String::new());
                }
                let slot = seen.get_mut(k);
                if let Some(slot) = slot {
                    if slot.is_empty() {
                        *slot = infer_type(v).to_string();
                    }
                }
            }
        }
        self.fields = order
            .into_iter()
            .map(|id| {
                let t = seen.get(&id).cloned().unwrap_or_default();
                FieldDef {
                    label: id.clone(),
                    data_type: if t.is_empty() { "string".into() } else { t },
                    id,
                }
            })
            .collect();
    }
}

fn infer_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "decimal",
        Value::String(s) if crate::afas::rows::parse_afas_date(s).is_some() && s.len() >= 10 => "date",
        _ => "string",
    }
}

/// All connectors of one "day".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    pub connectors: BTreeMap<String, ConnectorData>,
}

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read fixture {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("fixture {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("fixture directory {0} holds no connector JSON files")]
    Empty(String),
}

impl Dataset {
    fn load_day(dir: &Path) -> Result<Dataset, FixtureError> {
        let mut ds = Dataset::default();
        let entries = std::fs::read_dir(dir).map_err(|e| FixtureError::Read {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| FixtureError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let mut data: ConnectorData = serde_json::from_str(&text).map_err(|e| FixtureError::Parse {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            data.infer_fields();
            ds.connectors.insert(name.to_string(), data);
        }
        Ok(ds)
    }

    /// Loads a scenario: subdirectories are days (in name order); JSON files
    /// directly in `dir` make a single day.
    pub fn load_scenario(dir: &Path) -> Result<Vec<(String, Dataset)>, FixtureError> {
        let mut subdirs: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| FixtureError::Read {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subdirs.sort();
        let mut days = Vec::new();
        if subdirs.is_empty() {
            let ds = Self::load_day(dir)?;
            if ds.connectors.is_empty() {
                return Err(FixtureError::Empty(dir.display().to_string()));
            }
            days.push(("day".to_string(), ds));
        } else {
            for d in subdirs {
                let name = d.file_name().and_then(|n| n.to_str()).unwrap_or("day").to_string();
                let ds = Self::load_day(&d)?;
                if ds.connectors.is_empty() {
                    return Err(FixtureError::Empty(d.display().to_string()));
                }
                days.push((name, ds));
            }
        }
        Ok(days)
    }

    /// Writes the dataset as one fixture day directory.
    pub fn write_day(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, data) in &self.connectors {
            let text = serde_json::to_string_pretty(data).map_err(std::io::Error::other)?;
            std::fs::write(dir.join(format!("{name}.json")), text)?;
        }
        Ok(())
    }
}

fn afas_date(d: Date) -> Value {
    Value::String(format!("{d}T00:00:00Z"))
}

fn fields(defs: &[(&str, &str)]) -> Vec<FieldDef> {
    defs.iter()
        .map(|(id, t)| FieldDef {
            id: id.to_string(),
            data_type: t.to_string(),
            label: id.to_string(),
        })
        .collect()
}

pub fn employee_fields() -> Vec<FieldDef> {
    fields(&[
        ("EmployeeId", "string"),
        ("Mail", "string"),
        ("FirstName", "string"),
        ("BirthName", "string"),
        ("PrefixBirthName", "string"),
        ("EmploymentStart", "date"),
        ("EmploymentEnd", "date"),
        ("Department", "string"),
        ("DateOfBirth", "date"),
        ("AlleoAccess", "boolean"),
        ("alleo_monthly_all_budget", "decimal"),
    ])
}

pub fn contract_fields() -> Vec<FieldDef> {
    fields(&[
        ("EmployeeId", "string"),
        ("SequenceNumber", "int"),
        ("DateStart", "date"),
        ("DateEnd", "date"),
        ("Fte", "decimal"),
        ("HoursPerWeek", "decimal"),
        ("EmploymentType", "string"),
    ])
}

pub fn salary_fields() -> Vec<FieldDef> {
    fields(&[("EmployeeId", "string"), ("DateStart", "date"), ("Salary", "decimal")])
}

pub fn wage_fields() -> Vec<FieldDef> {
    fields(&[
        ("EmployeeId", "string"),
        ("WageComponentId", "string"),
        ("Amount", "decimal"),
    ])
}

pub fn leave_fields() -> Vec<FieldDef> {
    fields(&[
        ("EmployeeId", "string"),
        ("LeaveTypeId", "string"),
        ("BalanceHours", "decimal"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_realistic() {
        let today = Date::new(2026, 11, 24).unwrap();
        let a = generate(7, 500, today);
        let b = generate(7, 500, today);
        assert_eq!(a, b);
        assert_ne!(a, generate(8, 500, today));
        let emps = &a.connectors[EMPLOYEES_CONNECTOR].rows;
        let cons = &a.connectors[CONTRACTS_CONNECTOR].rows;
        assert_eq!(emps.len(), 500);
        assert!(cons.len() > 500 && cons.len() < 800, "contracts: {}", cons.len());
        let with_prefix = emps.iter().filter(|r| !r["PrefixBirthName"].is_null()).count();
        let no_mail = emps.iter().filter(|r| r["Mail"].is_null()).count();
        let left = emps.iter().filter(|r| !r["EmploymentEnd"].is_null()).count();
        assert!(with_prefix > 50, "prefixes: {with_prefix}");
        assert!(no_mail > 0, "some e-mails are missing");
        assert!(left > 0, "some have left");
    }

    #[test]
    fn churn_changes_what_it_reports() {
        let today = Date::new(2026, 11, 24).unwrap();
        let mut ds = generate(1, 1000, today);
        let active = |ds: &Dataset| {
            ds.connectors[EMPLOYEES_CONNECTOR]
                .rows
                .iter()
                .filter(|r| r["EmploymentEnd"].is_null())
                .count() as u64
        };
        let before = ds.clone();
        let n = active(&ds);
        assert!(n < 1000, "the generated company has former employees");
        let s = churn(&mut ds, 1, today, 5, 5, 20);
        assert_eq!(s.joiners.len() as u64, (n * 5).div_ceil(1000));
        assert_eq!(s.leavers.len() as u64, (n * 5).div_ceil(1000));
        assert_eq!(s.movers.len() as u64, (n * 20).div_ceil(1000));
        assert_eq!(ds.connectors[EMPLOYEES_CONNECTOR].rows.len(), 1000 + s.joiners.len());
        assert_ne!(before, ds);
    }

    #[test]
    fn churn_is_a_share_of_the_active_workforce_so_a_year_stays_level() {
        // Leavers' rows stay in AFAS; were the share taken of all rows, a
        // simulated year would churn more every day.
        let mut day = Date::new(2026, 1, 1).unwrap();
        let mut ds = generate(3, 2000, day);
        let mut first = None;
        for i in 0..200u64 {
            day = day.checked_add(1.day()).unwrap();
            let s = churn(&mut ds, i, day, 5, 5, 20);
            let joined = s.joiners.len();
            assert_eq!(joined, s.leavers.len(), "day {i}: joiners and leavers balance");
            let first = *first.get_or_insert(joined);
            assert_eq!(joined, first, "day {i}: the daily churn does not grow");
        }
        assert!(ds.connectors[EMPLOYEES_CONNECTOR].rows.len() >= 2000 + 200 * first.unwrap_or(0));
    }
}
