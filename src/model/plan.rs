//! What a run decides and the store keeps: provisioned employees, their
//! mutations, the plan of a run, and the rules and limits it is decided by.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::{Employee, EmployeeKey, EmploymentPeriod, Rejection};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Active,
    Left {
        #[serde(with = "crate::model::day")]
        on: Date,
    },
}

/// What the store remembers per provisioned employee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provisioned {
    pub key: EmployeeKey,
    pub status: Status,
    pub employment: EmploymentPeriod,
    /// Consecutive successful runs in which AFAS did not return this key.
    pub absent_runs: u32,
    /// The last delivered record; `None` once a leaver's personal data was
    /// removed by retention. Always the last field: see [`ProvisionedHead`].
    pub employee: Option<Employee>,
}

/// The fields of a stored [`Provisioned`] before its employee, in the same
/// order, so they decode from the stored bytes alone and the employee's
/// encoding can be compared with the fetched one as bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProvisionedHead {
    pub key: EmployeeKey,
    pub status: Status,
    pub employment: EmploymentPeriod,
    pub absent_runs: u32,
}

impl ProvisionedHead {
    /// What [`Diff::step`] decides for this stored employee when AFAS sent
    /// the very record it holds: nothing, as long as it is active, was not
    /// absent and is still employed. (`employment` is always the stored
    /// employee's own, and an active record was eligible when written, so
    /// its access flag allowed it; with equal records neither can differ.)
    pub fn unchanged_when_equal(&self, as_of: Date, rules: &Rules) -> bool {
        self.status == Status::Active && self.absent_runs == 0 && self.employment.employed_on(as_of, rules.lead_days)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MutationKind {
    Joiner,
    Mover,
    Leaver,
    Rehire,
}

impl MutationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MutationKind::Joiner => "joiner",
            MutationKind::Mover => "mover",
            MutationKind::Leaver => "leaver",
            MutationKind::Rehire => "rehire",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    pub old: String,
    pub new: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mutation {
    pub kind: MutationKind,
    pub key: EmployeeKey,
    /// The employee as it should be at the target (for a leaver: the last
    /// known record).
    pub employee: Option<Employee>,
    pub changes: Vec<Change>,
    pub reason: String,
}

/// A change to the stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    Upsert(Provisioned),
}

/// Counts describing what AFAS returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStats {
    pub employee_rows: u64,
    pub contract_rows: u64,
    pub valid: u64,
    pub rejected: u64,
    /// The first rejections, with reasons (capped to keep run records small).
    pub rejections: Vec<Rejection>,
}

/// Everything one run would change: exactly what is committed, or held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub as_of: Date,
    /// The last committed run this plan was computed against.
    pub base_run: Option<u64>,
    pub mutations: Vec<Mutation>,
    pub writes: Vec<Write>,
    pub source: SourceStats,
    /// Active provisioned employees before this plan.
    pub active_before: u64,
    pub mapping_fingerprint: String,
}

impl Plan {
    pub fn count(&self, kind: MutationKind) -> u64 {
        self.mutations.iter().filter(|m| m.kind == kind).count() as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub lead_days: i64,
    pub absent_runs_for_leaver: u32,
    /// Rows were rejected whose key could not be read: any missing
    /// employee may be one of them, so absences do not count this run.
    pub ignore_absences: bool,
}

/// Limits that hold a plan for approval instead of applying it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Guards {
    pub max_leavers: u64,
    pub max_leavers_percent: f64,
    pub max_rejected_percent: f64,
    pub max_source_shrink_percent: f64,
}

impl Guards {
    /// How many leavers a run may have among `active` employees before it
    /// is held for approval.
    pub fn leaver_limit(&self, active: u64) -> u64 {
        let pct_limit = (active as f64 * self.max_leavers_percent / 100.0).floor() as u64;
        self.max_leavers.min(pct_limit)
    }

    /// Where [`Guards::leaver_limit`] comes from, naming the config keys.
    pub fn leaver_limit_why(&self, active: u64) -> String {
        format!(
            "guards.max_leavers = {}, guards.max_leavers_percent = {}% of {active} active",
            self.max_leavers, self.max_leavers_percent
        )
    }
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_leavers: 25,
            max_leavers_percent: 5.0,
            max_rejected_percent: 5.0,
            max_source_shrink_percent: 10.0,
        }
    }
}
