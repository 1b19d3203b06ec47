//! One employee as text: the record, its history, and where it stands at
//! each sink (the target's id, the last change delivered, what waits).

use serde_json::json;

use super::outbox::{label, step_line, when};
use super::{mutation_json, provisioned_json, Out};
use crate::app::EmployeeAtSink;
use crate::exit;
use crate::model::{Mutation, Provisioned};

pub(super) fn employee_out(
    current: &Option<Provisioned>,
    history: &[(u64, Mutation)],
    sinks: &[EmployeeAtSink],
    json_out: bool,
    o: &mut Out,
) -> i32 {
    if json_out {
        say!(
            o,
            "{}",
            json!({"current": current.as_ref().map(provisioned_json),
                   "history": history.iter().map(|(run, m)| { let mut v = mutation_json(m); v["run"] = json!(run); v }).collect::<Vec<_>>(),
                   "sinks": serde_json::to_value(sinks).unwrap_or_default()})
        );
        return exit::OK;
    }
    match current {
        Some(p) => {
            let v = provisioned_json(p);
            say!(
                o,
                "employee {}: {}{}, employed from {}{}",
                p.key,
                v["status"].as_str().unwrap_or(""),
                v["left_on"].as_str().map(|d| format!(" on {d}")).unwrap_or_default(),
                v["employment_start"].as_str().unwrap_or(""),
                v["employment_end"]
                    .as_str()
                    .map(|d| format!(" to {d}"))
                    .unwrap_or_default()
            );
            match v["employee"].as_object() {
                Some(e) => {
                    for (field, value) in e.iter().filter(|(_, v)| !v.is_null()) {
                        let text = value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
                        say!(o, "  {field}: {text}");
                    }
                }
                None => say!(o, "  (personal data removed: left longer ago than retention keeps it)"),
            }
        }
        None => say!(o, "not in the snapshot (its history is kept)"),
    }
    if !history.is_empty() {
        say!(o, "history:");
    }
    for (run, m) in history {
        say!(o, "  run {run}: {} — {}", m.kind.as_str(), m.reason);
    }
    sinks_out(sinks, o);
    exit::OK
}

pub(super) fn sinks_out(sinks: &[EmployeeAtSink], o: &mut Out) {
    for s in sinks {
        say!(
            o,
            "{}: {}",
            s.sink,
            s.target_id
                .as_deref()
                .map(|id| format!("user {id}"))
                .unwrap_or_else(|| "no target id known".into())
        );
        match &s.last_delivered {
            Some(d) => {
                let how: Vec<String> = d.steps.iter().map(step_line).collect();
                say!(
                    o,
                    "  last delivered: change {} of run {} at {}{}",
                    d.index,
                    d.run,
                    when(d.at),
                    if how.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", how.join(", "))
                    }
                );
            }
            None => say!(o, "  nothing delivered yet"),
        }
        for e in &s.entries {
            say!(
                o,
                "  entry {} {} ({}, {} attempts): {}{}",
                e.seq,
                e.state.as_str(),
                e.change,
                e.attempts,
                label(e.last_status, e.reason, e.state == crate::store::EntryState::Dead),
                e.last_error
                    .as_deref()
                    .map(|x| format!(" — {}", crate::model::printable(x, 300)))
                    .unwrap_or_default()
            );
        }
        if !s.entries.is_empty() {
            say!(o, "  the whole story: `afas-sync outbox show SEQ`");
        }
    }
}
