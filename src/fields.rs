//! The employee fields a delivery target can receive, by the names the
//! config file uses for them (`[sink.scim.attributes]`). Names only: what
//! each holds is read from the employee where it is sent.

use std::fmt;

/// What kind of value a field holds, so a target's attribute type can be
/// checked against it before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Date,
    Bool,
    Decimal,
    /// Every budget or leave type as a list of `{name, amount}` or
    /// `{type, hours}`.
    List,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// The AFAS employee key (always also the SCIM `externalId`).
    Key,
    Email,
    FirstName,
    LastName,
    Prefix,
    /// Prefix and last name: "van der Berg".
    FamilyName,
    DisplayName,
    Department,
    DateOfBirth,
    EmploymentStart,
    EmploymentEnd,
    Access,
    Fte,
    Salary,
    HolidayAllowanceAccrual,
    HolidayAllowanceBalance,
    Budgets,
    Budget(String),
    Leave,
    LeaveType(String),
}

const FIXED: [(&str, Field, Kind); 18] = [
    ("key", Field::Key, Kind::Text),
    ("email", Field::Email, Kind::Text),
    ("first_name", Field::FirstName, Kind::Text),
    ("last_name", Field::LastName, Kind::Text),
    ("prefix", Field::Prefix, Kind::Text),
    ("family_name", Field::FamilyName, Kind::Text),
    ("display_name", Field::DisplayName, Kind::Text),
    ("department", Field::Department, Kind::Text),
    ("date_of_birth", Field::DateOfBirth, Kind::Date),
    ("employment_start", Field::EmploymentStart, Kind::Date),
    ("employment_end", Field::EmploymentEnd, Kind::Date),
    ("access", Field::Access, Kind::Bool),
    ("fte", Field::Fte, Kind::Decimal),
    ("salary", Field::Salary, Kind::Decimal),
    (
        "holiday_allowance_accrual",
        Field::HolidayAllowanceAccrual,
        Kind::Decimal,
    ),
    (
        "holiday_allowance_balance",
        Field::HolidayAllowanceBalance,
        Kind::Decimal,
    ),
    ("budgets", Field::Budgets, Kind::List),
    ("leave", Field::Leave, Kind::List),
];

impl Field {
    /// `email`, `budget.<name>`, `leave.<type>` …; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Field> {
        if let Some(b) = name.strip_prefix("budget.").filter(|b| !b.is_empty()) {
            return Some(Field::Budget(b.to_string()));
        }
        if let Some(l) = name.strip_prefix("leave.").filter(|l| !l.is_empty()) {
            return Some(Field::LeaveType(l.to_string()));
        }
        FIXED.iter().find(|(n, _, _)| *n == name).map(|(_, f, _)| f.clone())
    }

    pub fn kind(&self) -> Kind {
        match self {
            Field::Budget(_) | Field::LeaveType(_) => Kind::Decimal,
            f => FIXED
                .iter()
                .find(|(_, x, _)| x == f)
                .map(|(_, _, k)| *k)
                .unwrap_or(Kind::Text),
        }
    }

    /// Every fixed field name, for messages and `check`.
    pub fn names() -> impl Iterator<Item = &'static str> {
        FIXED.iter().map(|(n, _, _)| *n)
    }

    /// The fixed fields, in config order.
    pub fn all_fixed() -> impl Iterator<Item = Field> {
        FIXED.iter().map(|(_, f, _)| f.clone())
    }

    /// Whether a change to the snapshot attribute `changed` (as movers name
    /// them: `email`, `prefix`, `budget.fiets` …) changes this field.
    pub fn changed_by(&self, changed: &str) -> bool {
        match self {
            Field::FamilyName => matches!(changed, "prefix" | "last_name"),
            Field::DisplayName => matches!(changed, "first_name" | "prefix" | "last_name"),
            Field::Budgets => changed.starts_with("budget."),
            Field::Leave => changed.starts_with("leave."),
            f => f.to_string() == changed,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Budget(b) => write!(f, "budget.{b}"),
            Field::LeaveType(l) => write!(f, "leave.{l}"),
            x => f.write_str(FIXED.iter().find(|(_, y, _)| y == x).map(|(n, _, _)| *n).unwrap_or("?")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_changes_reach_the_derived_fields() {
        for n in Field::names().chain(["budget.fiets", "leave.VAK"]) {
            assert_eq!(Field::parse(n).map(|f| f.to_string()).as_deref(), Some(n));
        }
        assert_eq!(Field::parse("budget."), None);
        assert_eq!(Field::parse("mail"), None);
        assert!(Field::FamilyName.changed_by("prefix"));
        assert!(Field::DisplayName.changed_by("first_name"));
        assert!(!Field::FamilyName.changed_by("first_name"));
        assert!(Field::Budgets.changed_by("budget.fiets"));
        assert!(Field::Budget("fiets".into()).changed_by("budget.fiets"));
        assert!(!Field::Budget("fiets".into()).changed_by("budget.sport"));
        assert_eq!(Field::LeaveType("VAK".into()).kind(), Kind::Decimal);
        assert_eq!(Field::Access.kind(), Kind::Bool);
    }
}
