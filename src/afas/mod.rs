//! The AFAS Profit side: token, REST client, row decoding. This is the only
//! module that knows AFAS's wire format.

pub mod client;

pub mod decode;
pub mod error;
pub mod expiry;
pub mod rows;
pub mod token;

pub use client::{AfasClient, ClientOptions, FieldKind, FieldProblem, Page, ReadSpec};
pub use error::AfasError;

use crate::config::{Config, ConnectorConfig};

/// The GetConnectors afas-sync reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Employees,
    Contracts,
    Salary,
    WageComponents,
    Leave,
}

impl Source {
    /// The config section (`afas.<name>`) of this connector.
    pub fn name(self) -> &'static str {
        match self {
            Source::Employees => "employees",
            Source::Contracts => "contracts",
            Source::Salary => "salary",
            Source::WageComponents => "wage_components",
            Source::Leave => "leave",
        }
    }
}

/// The configured connectors, employees first.
pub fn connectors(config: &Config) -> Vec<(Source, &ConnectorConfig)> {
    let a = &config.afas;
    let mut out = vec![(Source::Employees, &a.employees)];
    for (s, c) in [
        (Source::Contracts, &a.contracts),
        (Source::Salary, &a.salary),
        (Source::WageComponents, &a.wage_components),
        (Source::Leave, &a.leave),
    ] {
        if let Some(c) = c {
            out.push((s, c));
        }
    }
    out
}

/// The fields the mapping reads from one connector, with the type each must
/// have and the config key that names it.
pub fn mapped_fields(config: &Config, source: Source) -> Vec<(String, FieldKind, String)> {
    let m = &config.mapping;
    let mut out: Vec<(String, FieldKind, String)> = Vec::new();
    let mut push = |field: &str, kind: FieldKind, key: &str| {
        out.push((field.to_string(), kind, key.to_string()));
    };
    match source {
        Source::Employees => {
            let e = &m.employees;
            push(&e.key, FieldKind::Text, "mapping.employees.key");
            push(&e.email, FieldKind::Text, "mapping.employees.email");
            push(&e.first_name, FieldKind::Text, "mapping.employees.first_name");
            push(&e.last_name, FieldKind::Text, "mapping.employees.last_name");
            push(&e.prefix, FieldKind::Text, "mapping.employees.prefix");
            push(
                &e.employment_start,
                FieldKind::Date,
                "mapping.employees.employment_start",
            );
            push(&e.employment_end, FieldKind::Date, "mapping.employees.employment_end");
            push(&e.department, FieldKind::Text, "mapping.employees.department");
            push(&e.date_of_birth, FieldKind::Date, "mapping.employees.date_of_birth");
            if let Some(a) = &e.access {
                push(a, FieldKind::Boolean, "mapping.employees.access");
            }
            for (name, field) in &e.budgets {
                push(field, FieldKind::Decimal, &format!("mapping.employees.budgets.{name}"));
            }
        }
        Source::Contracts => {
            let c = &m.contracts;
            push(&c.employee_key, FieldKind::Text, "mapping.contracts.employee_key");
            push(&c.sequence, FieldKind::Text, "mapping.contracts.sequence");
            push(&c.start, FieldKind::Date, "mapping.contracts.start");
            push(&c.end, FieldKind::Date, "mapping.contracts.end");
            push(&c.fte, FieldKind::Decimal, "mapping.contracts.fte");
            push(
                &c.hours_per_week,
                FieldKind::Decimal,
                "mapping.contracts.hours_per_week",
            );
        }
        Source::Salary => {
            let s = &m.salary;
            push(&s.employee_key, FieldKind::Text, "mapping.salary.employee_key");
            push(&s.start, FieldKind::Date, "mapping.salary.start");
            push(&s.amount, FieldKind::Decimal, "mapping.salary.amount");
        }
        Source::WageComponents => {
            let w = &m.wage_components;
            push(&w.employee_key, FieldKind::Text, "mapping.wage_components.employee_key");
            push(&w.component, FieldKind::Text, "mapping.wage_components.component");
            push(&w.amount, FieldKind::Decimal, "mapping.wage_components.amount");
        }
        Source::Leave => {
            let l = &m.leave;
            push(&l.employee_key, FieldKind::Text, "mapping.leave.employee_key");
            push(&l.leave_type, FieldKind::Text, "mapping.leave.leave_type");
            push(&l.balance, FieldKind::Decimal, "mapping.leave.balance");
        }
    }
    out
}

/// The read specification for a configured connector, keeping the fields
/// the mapping reads from it and its key fields.
pub fn read_spec(config: &Config, source: Source, conn: &ConnectorConfig) -> ReadSpec {
    let mut fields: Vec<String> = Vec::new();
    let keys = conn.key.iter().map(|k| k.trim_start_matches('-').to_string());
    for f in mapped_fields(config, source).into_iter().map(|(f, _, _)| f).chain(keys) {
        if !fields.contains(&f) {
            fields.push(f);
        }
    }
    ReadSpec {
        fields: rows::Fields::Only(fields.into()),
        ..read_spec_all(config, conn)
    }
}

/// The read specification keeping every field of every row.
pub fn read_spec_all(config: &Config, conn: &ConnectorConfig) -> ReadSpec {
    ReadSpec {
        connector: conn.connector.clone(),
        order: conn.key.clone(),
        paging: config.afas.paging,
        take: config.afas.page_size,
        fields: rows::Fields::All,
        only: None,
    }
}

/// As [`read_spec`], for one employee's rows only: a filter on the field
/// the mapping reads the employee's key from, read with skip/take (keyset
/// paging filters on the connector's key).
pub fn read_spec_of(config: &Config, source: Source, conn: &ConnectorConfig, key: &str) -> ReadSpec {
    let m = &config.mapping;
    let field = match source {
        Source::Employees => &m.employees.key,
        Source::Contracts => &m.contracts.employee_key,
        Source::Salary => &m.salary.employee_key,
        Source::WageComponents => &m.wage_components.employee_key,
        Source::Leave => &m.leave.employee_key,
    };
    ReadSpec {
        only: Some((field.clone(), key.to_string())),
        paging: crate::config::PagingMode::Skip,
        ..read_spec(config, source, conn)
    }
}
