//! Renders the service layer's answers for a person (text) or a program
//! (`--json`), with the exit code each command documents. Nothing here
//! reads or changes the state file.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::{AppError, Delivery, HeldPlan, Reply, StatusReport};
use crate::delivery::employee_json;
use crate::delivery::files::csv_field;
use crate::delivery::scim::Takeover;
use crate::exit;
use crate::model::{Mutation, Outcome, Plan, Provisioned, RunRecord, Status};

/// What a command prints, kept apart so it can be written at once.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Writes the captured output to the terminal. A closed pipe (`| head`)
    /// is not an error of ours.
    pub fn print(&self) {
        use std::io::Write;
        let _ = std::io::stdout().lock().write_all(self.stdout.as_bytes());
        let _ = std::io::stderr().lock().write_all(self.stderr.as_bytes());
    }
}

macro_rules! say {
    ($o:expr) => {{
        $o.stdout.push('\n');
    }};
    ($o:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o.stdout, $($arg)*);
    }};
}

macro_rules! esay {
    ($o:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o.stderr, $($arg)*);
    }};
}

// After the macros, which it uses.
mod employee;
mod one;
mod outbox;
mod takeover;
use takeover::takeover_out;

/// An answer (or failure) as the command prints it, and its exit code.
pub fn render(result: &Result<Reply, AppError>, json_out: bool) -> (Out, i32) {
    let mut o = Out::default();
    let code = match result {
        Ok(reply) => reply_out(reply, json_out, &mut o),
        Err(e) => {
            esay!(o, "error: {e}");
            match e {
                AppError::Request(_) => exit::CONFIG,
                _ => exit::FAILURE,
            }
        }
    };
    (o, code)
}

/// The CSV header of `export --format csv`.
pub const CSV_HEADER: &str =
    "key,status,email,first_name,prefix,last_name,department,date_of_birth,employment_start,employment_end";

/// One exported employee: a CSV line or an NDJSON line, with its newline.
pub fn export_line(p: &Provisioned, csv: bool) -> String {
    if !csv {
        return format!("{}\n", provisioned_json(p));
    }
    let status = if p.status == Status::Active { "active" } else { "left" };
    let e = p.employee.as_ref();
    let cols = [
        p.key.as_str().to_string(),
        status.to_string(),
        e.map(|e| e.email.as_str().to_string()).unwrap_or_default(),
        e.map(|e| e.first_name.clone()).unwrap_or_default(),
        e.and_then(|e| e.prefix.clone()).unwrap_or_default(),
        e.map(|e| e.last_name.clone()).unwrap_or_default(),
        e.and_then(|e| e.department.clone()).unwrap_or_default(),
        e.and_then(|e| e.date_of_birth)
            .map(|d| d.to_string())
            .unwrap_or_default(),
        p.employment.start.to_string(),
        p.employment.end.map(|d| d.to_string()).unwrap_or_default(),
    ];
    format!("{}\n", cols.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","))
}

fn reply_out(reply: &Reply, json_out: bool, o: &mut Out) -> i32 {
    match reply {
        Reply::DryRun {
            plan,
            guards,
            takeover,
            takeover_error,
        } => {
            let code = dry_run_out(plan, guards, takeover.as_ref(), takeover_error.as_deref(), json_out, o);
            // A preview that could not read the target is a failed check.
            if takeover_error.is_some() {
                exit::FAILURE
            } else {
                code
            }
        }
        Reply::Synced { run, delivery } => synced_out(run, delivery, json_out, o),
        Reply::SyncFailed { error, delivery } => {
            esay!(o, "error: sync failed, nothing was changed: {error}");
            if let Some(d) = delivery {
                delivery_out(d, o);
            }
            exit::FAILURE
        }
        Reply::Status(s) => {
            status_out(s, json_out, o);
            exit::OK
        }
        Reply::History { runs } => history_out(runs, json_out, o),
        Reply::RunShow { run, mutations } => run_show_out(run, mutations, json_out, o),
        Reply::Employee {
            current,
            history,
            sinks,
        } => employee::employee_out(current, history, sinks, json_out, o),
        Reply::Plans { plans } => plans_out(plans, json_out, o),
        Reply::Approved { run: r, delivery } => approved_out(r, delivery, json_out, o),
        Reply::Rejected { run } => {
            say!(o, "dropped the held plan of run {run}; nothing was changed");
            exit::OK
        }
        Reply::Forgotten { key } => {
            say!(
                o,
                "erased employee {key} from the snapshot, history, mutations and outbox"
            );
            exit::OK
        }
        Reply::Exported { .. } => exit::OK,
        Reply::Requeued { entries } => {
            say!(
                o,
                "{entries} dead-lettered entries queued again; they are delivered by the daemon or the next `afas-sync sync`"
            );
            exit::OK
        }
        Reply::Unmanaged(s) => takeover::unmanaged_out(s, json_out, o),
        Reply::OutboxList(l) => outbox::list_out(l, json_out, o),
        Reply::OutboxEntry(e) => outbox::show_out(e, json_out, o),
        Reply::OneEmployee(r) => one::one_out(r, json_out, o),
    }
}

fn dry_run_out(
    plan: &Plan,
    guards: &[String],
    takeover: Option<&Takeover>,
    takeover_error: Option<&str>,
    json_out: bool,
    o: &mut Out,
) -> i32 {
    if json_out {
        let mut v = json!({"dry_run": true, "plan": plan_json(plan), "guards": guards});
        if let Some(t) = takeover {
            v["scim"] = serde_json::to_value(t).unwrap_or_default();
        }
        if let Some(e) = takeover_error {
            v["scim_error"] = json!(e);
        }
        say!(o, "{v}");
    } else {
        say!(o, "dry run (nothing was changed)");
        print_plan_human(o, plan, 50);
        for r in guards {
            say!(o, "  guard would hold this run: {r}");
        }
        if let Some(t) = takeover {
            takeover_out(t, o);
        }
        if let Some(e) = takeover_error {
            say!(o, "SCIM target: cannot preview what delivery would do: {e}");
        }
    }
    if plan.mutations.is_empty() {
        exit::NOTHING_TO_DO
    } else if guards.is_empty() {
        exit::OK
    } else {
        exit::HELD
    }
}

fn synced_out(run: &RunRecord, delivery: &Option<Delivery>, json_out: bool, o: &mut Out) -> i32 {
    if json_out {
        say!(o, "{}", run_json(run));
    } else {
        say!(
            o,
            "run {} ({}) as of {}: {} joiners, {} movers, {} leavers, {} rehires; {} rows, {} rejected",
            run.id,
            run.outcome.as_str(),
            run.as_of,
            run.joiners,
            run.movers,
            run.leavers,
            run.rehires,
            run.source.employee_rows,
            run.source.rejected
        );
        if run.outcome == Outcome::Held {
            say!(o, "HELD, nothing was changed: {}", run.message);
            say!(
                o,
                "review with `afas-sync plan show {}`, then `afas-sync plan approve {}` or `afas-sync plan reject {}`",
                run.id,
                run.id,
                run.id
            );
        }
        if run.source.rejected > 0 {
            say!(o, "rejected rows are listed by `afas-sync run show {}`", run.id);
        }
    }
    let delivered = delivery.as_ref().map(|d| delivery_out(d, o));
    let sweep = delivery.as_ref().and_then(|d| d.unmanaged.as_ref());
    match (exit_for(run.outcome), delivered) {
        (code, _) if code == exit::HELD || code == exit::FAILURE => code,
        (_, Some(false)) => exit::DELIVERY_INCOMPLETE,
        _ if sweep.is_some_and(|s| s.failed > 0 || s.error.is_some()) => exit::DELIVERY_INCOMPLETE,
        _ if sweep.is_some_and(|s| s.approval) => exit::HELD,
        (code, _) => code,
    }
}

fn history_out(runs: &[RunRecord], json_out: bool, o: &mut Out) -> i32 {
    if json_out {
        say!(o, "{}", Value::Array(runs.iter().map(run_json).collect()));
    } else {
        say!(
            o,
            "  run  as of      outcome       joiners movers leavers rehires rejected  finished"
        );
        for r in runs {
            say!(
                o,
                "{:>5}  {:<10} {:<13} {:>7} {:>6} {:>7} {:>7} {:>8}  {}",
                r.id,
                r.as_of.to_string(),
                r.outcome.as_str(),
                r.joiners,
                r.movers,
                r.leavers,
                r.rehires,
                r.source.rejected,
                r.finished_at
            );
        }
    }
    exit::OK
}

fn run_show_out(run: &RunRecord, mutations: &[Mutation], json_out: bool, o: &mut Out) -> i32 {
    if json_out {
        let mut v = run_json(run);
        v["mutations"] = Value::Array(mutations.iter().map(mutation_json).collect());
        say!(o, "{v}");
    } else {
        say!(
            o,
            "run {} as of {}: {} ({})",
            run.id,
            run.as_of,
            run.outcome.as_str(),
            run.finished_at
        );
        if !run.message.is_empty() {
            say!(o, "  {}", run.message);
        }
        for m in mutations {
            say!(o, "  {:<7} {:<10} {}", m.kind.as_str(), m.key, m.reason);
        }
        for r in &run.source.rejections {
            say!(o, "  rejected {}: {}", r.row, r.reason);
        }
    }
    exit::OK
}

fn plans_out(plans: &[HeldPlan], json_out: bool, o: &mut Out) -> i32 {
    if json_out {
        say!(
            o,
            "{}",
            Value::Array(
                plans
                    .iter()
                    .map(|h| json!({"run": h.run, "plan": plan_json(&h.plan)}))
                    .collect()
            )
        );
    } else if plans.is_empty() {
        say!(o, "no held plans");
    } else {
        for h in plans {
            say!(o, "held plan of run {}: {}", h.run, h.why);
            print_plan_human(o, &h.plan, 200);
            say!(o);
        }
    }
    exit::OK
}

fn approved_out(r: &RunRecord, delivery: &Option<Delivery>, json_out: bool, o: &mut Out) -> i32 {
    if let Some(d) = delivery {
        if !delivery_out(d, o) {
            esay!(
                o,
                "the plan was applied; its delivery is not complete yet (see `afas-sync status`)"
            );
        }
    }
    if json_out {
        say!(o, "{}", run_json(r));
    } else {
        say!(
            o,
            "applied the held plan of run {}: {} joiners, {} movers, {} leavers, {} rehires",
            r.id,
            r.joiners,
            r.movers,
            r.leavers,
            r.rehires
        );
    }
    exit::OK
}

/// Prints what a delivery did; true when everything went out.
fn delivery_out(d: &Delivery, o: &mut Out) -> bool {
    if let Some(e) = &d.failed {
        esay!(o, "error: {e}");
        return false;
    }
    say!(
        o,
        "delivery: {} delivered, {} to retry, {} dead-lettered, {} pending",
        d.delivered,
        d.retried,
        d.dead_lettered,
        d.pending
    );
    for (sink, reason) in &d.down {
        say!(o, "delivery to {sink} stopped: {reason}");
    }
    if d.dead_total > 0 {
        say!(
            o,
            "{} dead-lettered: fix the cause, then `afas-sync outbox retry`",
            d.dead_total
        );
    }
    for (sink, t) in &d.reasons {
        outbox::tallies_out(sink, std::slice::from_ref(t), "  ", o);
    }
    if let Some(s) = &d.unmanaged {
        takeover::sweep_out(s, o);
    }
    d.complete()
}

fn status_out(s: &StatusReport, json_out: bool, o: &mut Out) {
    let v = json!({
        "store": s.store,
        "employees": {"active": s.active, "left": s.left},
        "last_run": s.last_run.as_ref().map(run_json),
        "last_success": s.last_success.as_ref().map(|r| json!({"id": r.id, "finished_at": r.finished_at})),
        "held_plans": s.held_plans,
        "now": s.now,
        "outbox": s.outbox.iter().map(|(sink, c)| (sink.clone(), json!({
            "pending": c.pending, "dead": c.dead, "stopped": c.stopped,
            "pace": c.pace.as_ref().map(|p| json!({
                "concurrency": p.concurrency,
                "requests_per_second": p.rate.map(|r| (r * 10.0).round() / 10.0),
                "learnt_at": jiff::Timestamp::from_second(p.at).ok().map(|t| t.to_string()),
            })),
            "oldest_pending_at": c.oldest_pending_at.and_then(|t| jiff::Timestamp::from_second(t).ok()).map(|t| t.to_string()),
            "reasons": outbox::tallies_json(&c.reasons),
        }))).collect::<serde_json::Map<_, _>>(),
    });
    if json_out {
        say!(o, "{v}");
    } else {
        say!(o, "state file:   {}", v["store"].as_str().unwrap_or(""));
        say!(
            o,
            "employees:    {} active, {} left",
            v["employees"]["active"],
            v["employees"]["left"]
        );
        match v["last_run"].as_object() {
            Some(r) => say!(
                o,
                "last run:     {} {} at {} {}",
                r["id"],
                r["outcome"].as_str().unwrap_or(""),
                r["finished_at"].as_str().unwrap_or(""),
                r["message"].as_str().unwrap_or("")
            ),
            None => say!(o, "last run:     none yet (run `afas-sync sync`)"),
        }
        match v["last_success"].as_object() {
            Some(r) => say!(
                o,
                "last success: run {} at {}",
                r["id"],
                r["finished_at"].as_str().unwrap_or("")
            ),
            None => say!(o, "last success: never"),
        }
        let held = v["held_plans"].as_array().map(|a| a.len()).unwrap_or(0);
        if held > 0 {
            say!(o, "HELD PLANS:   {} waiting (afas-sync plan show)", v["held_plans"]);
        }
        match v["outbox"].as_object() {
            Some(sinks) if !sinks.is_empty() => {
                for (sink, c) in sinks {
                    say!(
                        o,
                        "outbox {sink:<7} {} pending{}, {} dead-lettered{}",
                        c["pending"],
                        c["oldest_pending_at"]
                            .as_str()
                            .map(|t| format!(" (oldest since {t})"))
                            .unwrap_or_default(),
                        c["dead"],
                        if c["dead"].as_u64().unwrap_or(0) > 0 {
                            " (afas-sync outbox retry)"
                        } else {
                            ""
                        }
                    );
                    if let Some(why) = c["stopped"].as_str() {
                        say!(o, "  STOPPED: {why}");
                    }
                    if let Some(counts) = s.outbox.get(sink) {
                        outbox::tallies_out(sink, &counts.reasons, "  ", o);
                    }
                    if let Some(p) = c["pace"].as_object() {
                        say!(
                            o,
                            "  learnt:  {} at once{}, {}",
                            p["concurrency"],
                            p["requests_per_second"]
                                .as_f64()
                                .map(|r| format!(", at most {r:.0} requests/s (the target answered HTTP 429)"))
                                .unwrap_or_default(),
                            p["learnt_at"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            _ => say!(o, "outbox:       empty"),
        }
        if let Some(now) = &s.now {
            say!(o, "now:          {} for {} s", now.phase.as_str(), now.phase_secs);
            for sink in now.sinks.iter().filter(|p| p.active) {
                say!(o, "  delivering to {}", sink.line());
            }
        }
    }
}

fn run_json(r: &RunRecord) -> Value {
    json!({
        "id": r.id, "as_of": r.as_of.to_string(), "outcome": r.outcome.as_str(),
        "started_at": r.started_at, "finished_at": r.finished_at, "message": r.message,
        "joiners": r.joiners, "movers": r.movers, "leavers": r.leavers, "rehires": r.rehires,
        "source": {"employee_rows": r.source.employee_rows, "contract_rows": r.source.contract_rows,
                   "valid": r.source.valid, "rejected": r.source.rejected},
        "rejections": r.source.rejections.iter().map(|x| json!({"row": x.row, "reason": x.reason})).collect::<Vec<_>>(),
    })
}

fn mutation_json(m: &Mutation) -> Value {
    json!({
        "kind": m.kind.as_str(), "key": m.key.as_str(), "reason": m.reason,
        "changes": m.changes.iter().map(|c| json!({"field": c.field, "old": c.old, "new": c.new})).collect::<Vec<_>>(),
        "employee": m.employee.as_ref().map(employee_json),
    })
}

fn provisioned_json(p: &Provisioned) -> Value {
    let (status, left_on) = match p.status {
        Status::Active => ("active", None),
        Status::Left { on } => ("left", Some(on.to_string())),
    };
    json!({
        "key": p.key.as_str(), "status": status, "left_on": left_on, "absent_runs": p.absent_runs,
        "employment_start": p.employment.start.to_string(), "employment_end": p.employment.end.map(|d| d.to_string()),
        "employee": p.employee.as_ref().map(employee_json),
    })
}

fn print_plan_human(o: &mut Out, plan: &Plan, limit: usize) {
    use crate::model::MutationKind::*;
    say!(
        o,
        "as of {}: {} joiners, {} movers, {} leavers, {} rehires; {} rows read, {} rejected",
        plan.as_of,
        plan.count(Joiner),
        plan.count(Mover),
        plan.count(Leaver),
        plan.count(Rehire),
        plan.source.employee_rows,
        plan.source.rejected
    );
    for m in plan.mutations.iter().take(limit) {
        let name = m.employee.as_ref().map(|e| e.display_name()).unwrap_or_default();
        say!(o, "  {:<7} {:<10} {:<32} {}", m.kind.as_str(), m.key, name, m.reason);
        for c in &m.changes {
            say!(o, "          {}: {:?} -> {:?}", c.field, c.old, c.new);
        }
    }
    if plan.mutations.len() > limit {
        say!(o, "  … and {} more (use --json for all)", plan.mutations.len() - limit);
    }
    for r in plan.source.rejections.iter().take(limit) {
        say!(o, "  rejected {}: {}", r.row, r.reason);
    }
}

fn plan_json(plan: &Plan) -> Value {
    json!({
        "as_of": plan.as_of.to_string(), "base_run": plan.base_run,
        "mutations": plan.mutations.iter().map(mutation_json).collect::<Vec<_>>(),
        "source": {"employee_rows": plan.source.employee_rows, "contract_rows": plan.source.contract_rows,
                   "valid": plan.source.valid, "rejected": plan.source.rejected},
        "rejections": plan.source.rejections.iter().map(|x| json!({"row": x.row, "reason": x.reason})).collect::<Vec<_>>(),
    })
}

fn exit_for(outcome: Outcome) -> i32 {
    match outcome {
        Outcome::Success | Outcome::OnDemand => exit::OK,
        Outcome::NothingToDo => exit::NOTHING_TO_DO,
        Outcome::Held => exit::HELD,
        Outcome::Rejected | Outcome::Failed => exit::FAILURE,
    }
}
