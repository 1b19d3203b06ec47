//! Employee and run events as webhooks and the file sink carry them, written
//! field by field straight into the output.

use super::*;

pub fn kind_event(kind: MutationKind) -> &'static str {
    match kind {
        MutationKind::Joiner => "employee.joined",
        MutationKind::Mover => "employee.updated",
        MutationKind::Leaver => "employee.left",
        MutationKind::Rehire => "employee.rehired",
    }
}

/// The employee as JSON, as webhooks, files and `--json` output show it.
/// An employee as events and `export` show it.
pub fn employee_json(e: &Employee) -> Value {
    // Cannot fail: string keys, text and integers only.
    serde_json::to_value(EmployeeJson(e)).unwrap_or(Value::Null)
}

/// An employee as events show it. Written field by field, in the
/// alphabetical order a `serde_json::Value` object prints, straight into
/// the output: building a `Value` per event was a third of a 10k first
/// import's instructions once the file sink wrote every joiner.
pub(super) struct EmployeeJson<'a>(&'a Employee);

/// Decimals as strings, in key order.
pub(super) struct DecimalMap<'a>(&'a BTreeMap<String, crate::model::Decimal>);

impl serde::Serialize for DecimalMap<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, DecimalText(*v))))
    }
}

/// A decimal as its text, written straight into the output.
pub(super) struct DecimalText(crate::model::Decimal);

impl serde::Serialize for DecimalText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl serde::Serialize for EmployeeJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.0;
        use crate::model::day::Day;
        let text = |d: Option<jiff::civil::Date>| d.map(Day);
        let dec = |d: Option<crate::model::Decimal>| d.map(DecimalText);
        let mut m = s.serialize_map(Some(17))?;
        m.serialize_entry("access", &e.access)?;
        m.serialize_entry("budgets", &DecimalMap(&e.budgets))?;
        m.serialize_entry("date_of_birth", &text(e.date_of_birth))?;
        m.serialize_entry("department", &e.department)?;
        m.serialize_entry("display_name", &e.display_name())?;
        m.serialize_entry("email", e.email.as_str())?;
        m.serialize_entry("employment_end", &text(e.employment.end))?;
        m.serialize_entry("employment_start", &Day(e.employment.start))?;
        m.serialize_entry("first_name", &e.first_name)?;
        m.serialize_entry("fte", &dec(e.contract.as_ref().and_then(|c| c.fte)))?;
        m.serialize_entry("holiday_allowance_accrual", &dec(e.pay.holiday_allowance_accrual))?;
        m.serialize_entry("holiday_allowance_balance", &dec(e.pay.holiday_allowance_balance))?;
        m.serialize_entry("key", e.key.as_str())?;
        m.serialize_entry("last_name", &e.last_name)?;
        m.serialize_entry("leave_hours", &DecimalMap(&e.pay.leave_hours))?;
        m.serialize_entry("prefix", &e.prefix)?;
        m.serialize_entry("salary", &dec(e.pay.salary))?;
        m.end()
    }
}

/// The event for one mutation, serialized as [`mutation_event`] shows it.
pub struct MutationEvent<'a> {
    pub mutation: &'a Mutation,
    /// This state file's installation id (see [`mutation_event_id`]).
    pub installation: u64,
    pub run: u64,
    pub index: u32,
}

impl serde::Serialize for MutationEvent<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Changes<'a>(&'a [crate::model::Change]);
        impl serde::Serialize for Changes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                struct One<'a>(&'a crate::model::Change);
                impl serde::Serialize for One<'_> {
                    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                        let mut m = s.serialize_map(Some(3))?;
                        m.serialize_entry("field", &self.0.field)?;
                        m.serialize_entry("new", &self.0.new)?;
                        m.serialize_entry("old", &self.0.old)?;
                        m.end()
                    }
                }
                s.collect_seq(self.0.iter().map(One))
            }
        }
        let m = self.mutation;
        let mut out = s.serialize_map(Some(7))?;
        out.serialize_entry("changes", &Changes(&m.changes))?;
        out.serialize_entry("employee", &m.employee.as_ref().map(EmployeeJson))?;
        out.serialize_entry("id", &mutation_event_id(self.installation, self.run, self.index))?;
        out.serialize_entry("key", m.key.as_str())?;
        out.serialize_entry("reason", &m.reason)?;
        out.serialize_entry("run", &self.run)?;
        out.serialize_entry("type", kind_event(m.kind))?;
        out.end()
    }
}

/// A stable event id: the same on every retry of the same entry, and
/// never the same for two events — of two installations (the state file's
/// random installation id), or of one installation whose state file was
/// made anew (a new id, while run numbers start again).
pub fn mutation_event_id(installation: u64, run: u64, index: u32) -> String {
    format!("evt_{installation:016x}_{run}_{index}")
}

/// A run's event id: its outcome is part of it, so a held run's
/// `sync.held` and, once approved, its `sync.completed` are two events.
pub fn run_event_id(installation: u64, r: &RunRecord) -> String {
    format!("evt_{installation:016x}_{}_{}", r.id, r.outcome.as_str())
}

/// The event for one mutation (webhook body `data`, file sink line).
pub fn mutation_event(m: &Mutation, installation: u64, run: u64, index: u32) -> Value {
    // Cannot fail, as above.
    serde_json::to_value(MutationEvent {
        mutation: m,
        installation,
        run,
        index,
    })
    .unwrap_or(Value::Null)
}

pub fn run_event_type(r: &RunRecord) -> &'static str {
    match r.outcome {
        crate::model::Outcome::Held => "sync.held",
        crate::model::Outcome::Failed | crate::model::Outcome::Rejected => "sync.failed",
        crate::model::Outcome::Success | crate::model::Outcome::NothingToDo | crate::model::Outcome::OnDemand => {
            "sync.completed"
        }
    }
}

pub fn run_event(r: &RunRecord, installation: u64) -> Value {
    json!({
        "id": run_event_id(installation, r),
        "type": run_event_type(r),
        "run": r.id,
        "as_of": r.as_of.to_string(),
        "outcome": r.outcome.as_str(),
        "message": r.message,
        "joiners": r.joiners, "movers": r.movers, "leavers": r.leavers, "rehires": r.rehires,
        "rows": r.source.employee_rows, "rejected": r.source.rejected,
    })
}
