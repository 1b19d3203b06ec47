//! The AFAS Profit side: token, REST client, row decoding. This is the only
//! module that knows AFAS's wire format.

pub mod client;
pub mod error;
pub mod rows;
pub mod token;

pub use client::{AfasClient, ClientOptions, FieldKind, FieldProblem, Page, ReadSpec};
pub use error::AfasError;

use crate::config::{Config, ConnectorConfig};

/// The fields the mapping reads from one connector, with the type each must
/// have and the config key that names it.
pub fn mapped_fields(config: &Config, employees: bool) -> Vec<(String, FieldKind, String)> {
    let m = &config.mapping;
    let mut out: Vec<(String, FieldKind, String)> = Vec::new();
    let mut push = |field: &str, kind: FieldKind, key: &str| {
        out.push((field.to_string(), kind, key.to_string()));
    };
    if employees {
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
    } else {
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
    out
}

/// The read specification for a configured connector.
pub fn read_spec(config: &Config, conn: &ConnectorConfig) -> ReadSpec {
    ReadSpec {
        connector: conn.connector.clone(),
        order: conn.key.clone(),
        paging: config.afas.paging,
        take: config.afas.page_size,
    }
}
