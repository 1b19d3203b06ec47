//! `sync --employee KEY` as text: every step for one employee.

use serde_json::Value;

use super::{delivery_out, employee_json, Out};
use crate::app::OneReport;
use crate::exit;

pub(super) fn one_out(r: &OneReport, json_out: bool, o: &mut Out) -> i32 {
    let one = &r.one;
    let delivered = match &r.delivery {
        Some(d) if !json_out => Some(delivery_out(d, o)),
        Some(d) => Some(d.complete()),
        None => None,
    };
    let code = match (&one.mutation, &one.run, delivered) {
        (None, _, _) => exit::NOTHING_TO_DO,
        (Some(_), Some(_), Some(false)) => exit::DELIVERY_INCOMPLETE,
        _ if r.scim_error.is_some() => exit::FAILURE,
        _ => exit::OK,
    };
    if json_out {
        say!(o, "{}", serde_json::to_value(r).unwrap_or_default());
        return code;
    }
    // The delivery summary went first; the story reads top to bottom.
    let summary = std::mem::take(&mut o.stdout);
    say!(
        o,
        "employee {}{}",
        one.key,
        if r.dry_run {
            " (dry run: nothing was changed)"
        } else {
            ""
        }
    );
    say!(o, "1. AFAS rows:");
    for (connector, rows) in &one.rows {
        if rows.is_empty() {
            say!(o, "   {connector}: none");
        }
        for row in rows {
            say!(o, "   {connector}: {row}");
        }
    }
    for why in &one.rejected {
        say!(o, "   rejected {}", crate::model::printable(why, 400));
    }
    say!(o, "2. the employee they make:");
    match &one.employee {
        Some(e) => {
            if let Value::Object(fields) = employee_json(e) {
                for (field, value) in fields.iter().filter(|(_, v)| !v.is_null()) {
                    let text = value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
                    say!(o, "   {field}: {text}");
                }
            }
        }
        None => say!(o, "   none"),
    }
    say!(o, "3. scope: {}", one.scope);
    say!(
        o,
        "4. the snapshot: {}",
        match &one.stored {
            Some(p) if p.status == crate::model::Status::Active => "provisioned, active".to_string(),
            Some(p) => format!("provisioned, {:?}", p.status).to_lowercase(),
            None => "not provisioned".to_string(),
        }
    );
    match &one.mutation {
        Some(m) => {
            say!(o, "5. the change: {} — {}", m.kind.as_str(), m.reason);
            for c in &m.changes {
                say!(o, "   {}: {:?} -> {:?}", c.field, c.old, c.new);
            }
        }
        None => say!(o, "5. the change: none (the snapshot already says this)"),
    }
    if let Some(w) = &r.scim {
        say!(o, "6. SCIM target: {}", crate::model::printable(&w.matched, 600));
        match &w.op {
            Some(op) => {
                say!(o, "   would send: {op}");
                if let Some(body) = &w.body {
                    for line in serde_json::to_string_pretty(body).unwrap_or_default().lines() {
                        say!(o, "     {line}");
                    }
                }
            }
            None => say!(o, "   would send nothing"),
        }
    }
    if let Some(e) = &r.scim_error {
        say!(o, "6. SCIM target: cannot look: {}", crate::model::printable(e, 600));
    }
    if let Some(run) = &one.run {
        say!(o, "committed as run {} (`afas-sync run show {}`)", run.id, run.id);
    }
    o.stdout.push_str(&summary);
    if !r.sinks.is_empty() && !r.dry_run {
        super::employee::sinks_out(&r.sinks, o);
    }
    code
}
