//! Why something was not delivered, as text: the reasons with their
//! counts (in the `sync` summary and `status`), `outbox list`, `outbox
//! show`, and an employee's deliveries.

use serde_json::{json, Value};

use super::Out;
use crate::app::{EntryLine, EntryStory, OutboxList};
use crate::exit;
use crate::model::{Attempt, Reason, Step};
use crate::store::ReasonTally;

/// Unix seconds as a time a person reads.
pub(super) fn when(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

fn class(r: Option<Reason>) -> &'static str {
    r.map_or("unknown", Reason::as_str)
}

/// "409 uniqueness", "conflict-foreign-holder", …
pub(super) fn label(status: Option<u16>, r: Option<Reason>, dead: bool) -> String {
    match (status, r) {
        (None, None) if !dead => "not tried yet".to_string(),
        (Some(s), _) => format!("{s} {}", class(r)),
        (None, _) => class(r).to_string(),
    }
}

fn explain(r: Option<Reason>, dead: bool) -> &'static str {
    match r {
        Some(r) => r.explain(),
        None if dead => "dead-lettered by an earlier release, which kept no attempts: `afas-sync outbox show SEQ`",
        None => "not tried yet",
    }
}

/// The reasons of one sink's dead and waiting entries, one line each, with
/// the command that lists them.
pub(super) fn tallies_out(sink: &str, tallies: &[ReasonTally], indent: &str, o: &mut Out) {
    for t in tallies {
        let state = if t.dead { "dead" } else { "pending" };
        say!(
            o,
            "{indent}{} {} × {}: {} (`afas-sync outbox list --sink {sink} --state {state}{}`)",
            if t.dead { "dead:   " } else { "waiting:" },
            t.count,
            class(t.reason),
            explain(t.reason, t.dead),
            t.reason
                .map(|r| format!(" --reason {}", r.as_str()))
                .unwrap_or_default()
        );
        if let Some(e) = &t.example {
            say!(
                o,
                "{indent}  e.g. entry {}: {}",
                t.example_seq,
                crate::model::printable(e, 400)
            );
        }
    }
}

pub(super) fn tallies_json(tallies: &[ReasonTally]) -> Value {
    Value::Array(
        tallies
            .iter()
            .map(|t| {
                json!({"state": if t.dead { "dead" } else { "pending" }, "reason": class(t.reason),
                       "count": t.count, "example_seq": t.example_seq, "example": t.example})
            })
            .collect(),
    )
}

pub(super) fn step_line(s: &Step) -> String {
    let mut out = format!(
        "{} → {}",
        crate::model::printable(&s.op, 300),
        s.status.map_or("no answer".to_string(), |c| c.to_string())
    );
    for t in [&s.scim_type, &s.detail].into_iter().flatten() {
        out.push_str(": ");
        out.push_str(&crate::model::printable(t, 300));
    }
    out
}

fn entry_line(l: &EntryLine, o: &mut Out) {
    say!(
        o,
        "{:>7}  {:<7} {:<10} {:<7} {:<8} {:>3}  {:<28} {}",
        l.seq,
        l.sink,
        l.key.as_deref().unwrap_or("-"),
        l.change,
        l.state.as_str(),
        l.attempts,
        label(l.last_status, l.reason, l.state == crate::store::EntryState::Dead),
        if l.state == crate::store::EntryState::Dead {
            "-".to_string()
        } else {
            when(l.next_at)
        }
    );
}

pub(super) fn list_out(l: &OutboxList, json_out: bool, o: &mut Out) -> i32 {
    if json_out {
        say!(o, "{}", serde_json::to_value(l).unwrap_or_default());
        return exit::OK;
    }
    for (sink, why) in &l.stopped {
        say!(o, "{sink} is STOPPED: {}", crate::model::printable(why, 600));
    }
    if l.groups.is_empty() {
        say!(o, "no outbox entries match");
        return exit::OK;
    }
    say!(o, "by reason:");
    for g in &l.groups {
        let dead = g.state == crate::store::EntryState::Dead;
        say!(
            o,
            "  {:>6} × {:<7} {:<8} {:<24} {}",
            g.count,
            g.sink,
            g.state.as_str(),
            class(g.reason),
            explain(g.reason, dead)
        );
    }
    say!(o);
    say!(
        o,
        "{:>7}  {:<7} {:<10} {:<7} {:<8} {:>3}  {:<28} next attempt",
        "seq",
        "sink",
        "employee",
        "change",
        "state",
        "try",
        "last answer"
    );
    for e in &l.entries {
        entry_line(e, o);
    }
    if l.more > 0 {
        say!(
            o,
            "… and {} more (--limit N, or narrow with --sink, --state, --reason)",
            l.more
        );
    }
    say!(o, "one entry's story: `afas-sync outbox show SEQ`");
    exit::OK
}

fn attempt_out(a: &Attempt, indent: &str, o: &mut Out) {
    say!(
        o,
        "{indent}{}  {}: {}",
        when(a.at),
        a.reason.as_str(),
        crate::model::printable(&a.message, 600)
    );
    for s in &a.steps {
        say!(o, "{indent}    {}", step_line(s));
    }
    if a.steps.is_empty() {
        say!(
            o,
            "{indent}    (no request of its own: decided from what the sink knew, e.g. the target's users read at the start of the pass)"
        );
    }
}

pub(super) fn show_out(s: &EntryStory, json_out: bool, o: &mut Out) -> i32 {
    if json_out {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        if let (Some(m), Some(obj)) = (&s.mutation, v.as_object_mut()) {
            obj.insert("mutation".into(), super::mutation_json(m));
        }
        say!(o, "{v}");
        return exit::OK;
    }
    let l = &s.line;
    say!(
        o,
        "entry {} for {}: {} of run {}{}",
        l.seq,
        l.sink,
        l.change,
        l.run,
        l.key.as_deref().map(|k| format!(", employee {k}")).unwrap_or_default()
    );
    say!(o, "  state:    {} since {}", l.state.as_str(), when(l.created_at));
    say!(o, "  attempts: {}", l.attempts);
    if l.state != crate::store::EntryState::Dead {
        say!(o, "  next:     {}", when(l.next_at));
    }
    if let Some(r) = l.reason {
        say!(o, "  reason:   {} — {}", r.as_str(), r.explain());
    }
    if let Some(e) = &l.last_error {
        say!(o, "  last:     {}", crate::model::printable(e, 600));
    }
    if let Some(m) = &s.mutation {
        say!(o, "  change:   {} — {}", m.kind.as_str(), m.reason);
        for c in &m.changes {
            say!(o, "            {}: {:?} -> {:?}", c.field, c.old, c.new);
        }
    }
    if s.attempts.is_empty() {
        say!(o, "  no attempt recorded yet");
    } else {
        say!(o, "  attempts, oldest first:");
        for a in &s.attempts {
            attempt_out(a, "    ", o);
        }
    }
    if l.state == crate::store::EntryState::Dead {
        say!(o, "once the cause is fixed: `afas-sync outbox retry --sink {}`", l.sink);
    }
    exit::OK
}
