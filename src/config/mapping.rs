//! `[mapping]`: which AFAS field holds what.

use super::*;

/// AFAS field ids of the employees connector. Defaults are the names in
/// Alleo's GetConnector templates (the "required fields" of Alleo's AFAS setup guide).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmployeeMapping {
    pub key: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub prefix: String,
    pub employment_start: String,
    pub employment_end: String,
    pub department: String,
    pub date_of_birth: String,
    /// The optional "Alleo access" custom field: when set, only employees with
    /// it true are in scope.
    pub access: Option<String>,
    /// Named budget fields: budget name → AFAS field id (decimal amounts).
    pub budgets: BTreeMap<String, String>,
}

impl Default for EmployeeMapping {
    fn default() -> Self {
        EmployeeMapping {
            key: "EmployeeId".into(),
            email: "Mail".into(),
            first_name: "FirstName".into(),
            last_name: "BirthName".into(),
            prefix: "PrefixBirthName".into(),
            employment_start: "EmploymentStart".into(),
            employment_end: "EmploymentEnd".into(),
            department: "Department".into(),
            date_of_birth: "DateOfBirth".into(),
            access: None,
            budgets: BTreeMap::new(),
        }
    }
}

/// AFAS field ids of the contracts connector.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContractMapping {
    pub employee_key: String,
    pub sequence: String,
    pub start: String,
    pub end: String,
    pub fte: String,
    pub hours_per_week: String,
}

impl Default for ContractMapping {
    fn default() -> Self {
        ContractMapping {
            employee_key: "EmployeeId".into(),
            sequence: "SequenceNumber".into(),
            start: "DateStart".into(),
            end: "DateEnd".into(),
            fte: "Fte".into(),
            hours_per_week: "HoursPerWeek".into(),
        }
    }
}

/// Field ids of the optional salary connector: one row per salary period.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SalaryMapping {
    pub employee_key: String,
    /// The date the salary applies from; the latest one on or before the
    /// sync date counts.
    pub start: String,
    pub amount: String,
}

impl Default for SalaryMapping {
    fn default() -> Self {
        SalaryMapping {
            employee_key: "EmployeeId".into(),
            start: "DateStart".into(),
            amount: "Salary".into(),
        }
    }
}

/// Field ids of the optional wage components connector, and the wage
/// component ids the customer shares for the holiday allowance.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WageComponentMapping {
    pub employee_key: String,
    pub component: String,
    pub amount: String,
    /// Wage component id of the holiday allowance accrual.
    pub holiday_allowance_accrual_id: Option<String>,
    /// Wage component id of the holiday allowance balance.
    pub holiday_allowance_balance_id: Option<String>,
}

impl Default for WageComponentMapping {
    fn default() -> Self {
        WageComponentMapping {
            employee_key: "EmployeeId".into(),
            component: "WageComponentId".into(),
            amount: "Amount".into(),
            holiday_allowance_accrual_id: None,
            holiday_allowance_balance_id: None,
        }
    }
}

/// Field ids of the optional leave connector: one row per leave type.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LeaveMapping {
    pub employee_key: String,
    pub leave_type: String,
    pub balance: String,
}

impl Default for LeaveMapping {
    fn default() -> Self {
        LeaveMapping {
            employee_key: "EmployeeId".into(),
            leave_type: "LeaveTypeId".into(),
            balance: "BalanceHours".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Mapping {
    pub employees: EmployeeMapping,
    pub contracts: ContractMapping,
    pub salary: SalaryMapping,
    pub wage_components: WageComponentMapping,
    pub leave: LeaveMapping,
}

pub(super) fn validate_mapping(m: &Mapping) -> Result<(), ConfigError> {
    let e = &m.employees;
    let fields = [
        ("mapping.employees.key", &e.key),
        ("mapping.employees.email", &e.email),
        ("mapping.employees.first_name", &e.first_name),
        ("mapping.employees.last_name", &e.last_name),
        ("mapping.employees.prefix", &e.prefix),
        ("mapping.employees.employment_start", &e.employment_start),
        ("mapping.employees.employment_end", &e.employment_end),
        ("mapping.employees.department", &e.department),
        ("mapping.employees.date_of_birth", &e.date_of_birth),
        ("mapping.contracts.employee_key", &m.contracts.employee_key),
        ("mapping.contracts.sequence", &m.contracts.sequence),
        ("mapping.contracts.start", &m.contracts.start),
        ("mapping.contracts.end", &m.contracts.end),
        ("mapping.contracts.fte", &m.contracts.fte),
        ("mapping.contracts.hours_per_week", &m.contracts.hours_per_week),
        ("mapping.salary.employee_key", &m.salary.employee_key),
        ("mapping.salary.start", &m.salary.start),
        ("mapping.salary.amount", &m.salary.amount),
        ("mapping.wage_components.employee_key", &m.wage_components.employee_key),
        ("mapping.wage_components.component", &m.wage_components.component),
        ("mapping.wage_components.amount", &m.wage_components.amount),
        ("mapping.leave.employee_key", &m.leave.employee_key),
        ("mapping.leave.leave_type", &m.leave.leave_type),
        ("mapping.leave.balance", &m.leave.balance),
    ];
    for (key, value) in fields {
        if value.trim().is_empty() {
            return Err(invalid(key, "must name an AFAS field id"));
        }
    }
    for (name, field) in &e.budgets {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                &format!("mapping.employees.budgets.{name}"),
                "budget names may contain only letters, digits and _",
            ));
        }
        if field.trim().is_empty() {
            return Err(invalid(
                &format!("mapping.employees.budgets.{name}"),
                "must name an AFAS field id",
            ));
        }
    }
    Ok(())
}
