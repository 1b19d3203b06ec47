//! Commands that read or change the state file: sync, status, history,
//! run show, employee, plan, forget, export.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use crate::exit;
use crate::store::{Store, StoreError};
use crate::sync::plan::{Mutation, Plan, Provisioned, Status};
use crate::sync::{self, Outcome, RunRecord, SyncResult};

/// What a command printed, so the same code can answer on the terminal or
/// through the daemon's control socket.
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

/// A command on the state file, as the CLI and the control socket carry it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Sync {
        as_of: Option<jiff::civil::Date>,
        dry_run: bool,
    },
    Status,
    History {
        limit: usize,
    },
    RunShow {
        run: u64,
    },
    Employee {
        key: String,
    },
    PlanShow {
        run: Option<u64>,
    },
    PlanApprove {
        run: u64,
    },
    PlanReject {
        run: u64,
    },
    Forget {
        key: String,
    },
    Export {
        csv: bool,
    },
    OutboxRetry {
        sink: Option<String>,
    },
}

/// Runs a request against an open store; returns the exit code.
pub async fn execute(config: &Config, store: &Arc<Store>, req: &Request, json_out: bool, o: &mut Out) -> i32 {
    match req {
        Request::Sync { as_of, dry_run } => sync_cmd(config, store, *as_of, *dry_run, json_out, true, o).await,
        Request::Status => status(store, json_out, o),
        Request::History { limit } => history(store, *limit, json_out, o),
        Request::RunShow { run } => run_show(store, *run, json_out, o),
        Request::Employee { key } => employee(store, key, json_out, o),
        Request::PlanShow { run } => plan_show(store, *run, json_out, o),
        Request::PlanApprove { run } => plan_approve(config, store, *run, json_out, o).await,
        Request::PlanReject { run } => plan_reject(store, *run, o),
        Request::Forget { key } => forget(store, key, o),
        Request::Export { csv } => export(store, *csv, o),
        Request::OutboxRetry { sink } => outbox_retry(store, sink.as_deref(), o),
    }
}

fn store_failure(o: &mut Out, e: StoreError) -> i32 {
    esay!(o, "error: {e}");
    exit::FAILURE
}

/// "Today" in the configured time zone: the day hire and termination dates
/// are compared with.
pub fn today(config: &Config) -> jiff::civil::Date {
    let tz = jiff::tz::TimeZone::get(&config.schedule.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Zoned::now().with_time_zone(tz).date()
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

use crate::delivery::employee_json;
use crate::delivery::files::csv_field;

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
    use crate::sync::plan::MutationKind::*;
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
        Outcome::Success => exit::OK,
        Outcome::NothingToDo => exit::NOTHING_TO_DO,
        Outcome::Held => exit::HELD,
        Outcome::Rejected | Outcome::Failed => exit::FAILURE,
    }
}

/// Delivers the outbox for up to `delivery.sync_wait_secs`, printing what
/// happened. `None` when no sink is configured; `Some(true)` when all is
/// delivered.
pub async fn deliver_outbox(config: &Config, store: &Arc<Store>, o: &mut Out) -> Option<bool> {
    let sinks = match crate::delivery::sinks(config, store.clone()) {
        Ok(s) if s.is_empty() => return None,
        Ok(s) => s,
        Err(e) => {
            esay!(o, "error: cannot set up delivery: {e}");
            return Some(false);
        }
    };
    let wait = std::time::Duration::from_secs(config.delivery.sync_wait_secs);
    match crate::delivery::deliver_until_done(config, store, &sinks, wait).await {
        Ok(r) => {
            say!(
                o,
                "delivery: {} delivered, {} to retry, {} dead-lettered, {} pending",
                r.delivered,
                r.retried,
                r.dead_lettered,
                r.pending
            );
            for (sink, reason) in &r.down {
                say!(o, "delivery to {sink} stopped: {reason}");
            }
            let dead: u64 = store
                .outbox_counts()
                .map(|c| c.values().map(|c| c.dead).sum())
                .unwrap_or(0);
            if dead > 0 {
                say!(
                    o,
                    "{dead} dead-lettered entries: see `afas-sync status`, then `afas-sync outbox retry`"
                );
            }
            Some(r.pending == 0 && dead == 0)
        }
        Err(e) => {
            esay!(o, "error: delivery failed: {e}");
            Some(false)
        }
    }
}

pub fn outbox_retry(store: &Store, sink: Option<&str>, o: &mut Out) -> i32 {
    match store.outbox_retry(sink, jiff::Timestamp::now().as_second()) {
        Ok(n) => {
            say!(
                o,
                "{n} dead-lettered entries queued again; they are delivered by the daemon or the next `afas-sync sync`"
            );
            exit::OK
        }
        Err(e) => store_failure(o, e),
    }
}

/// One sync; with `deliver`, the outbox is then delivered for up to
/// `delivery.sync_wait_secs` (the `sync` command). The daemon's scheduled
/// runs leave delivery to its worker and never wait for a target.
pub async fn sync_cmd(
    config: &Config,
    store: &Arc<Store>,
    as_of: Option<jiff::civil::Date>,
    dry_run: bool,
    json_out: bool,
    deliver: bool,
    o: &mut Out,
) -> i32 {
    let as_of = as_of.unwrap_or_else(|| today(config));
    match sync::run(config, store.clone(), as_of, dry_run).await {
        Ok(SyncResult::DryRun(plan, reasons)) => {
            if json_out {
                say!(
                    o,
                    "{}",
                    json!({"dry_run": true, "plan": plan_json(&plan), "guards": reasons})
                );
            } else {
                say!(o, "dry run (nothing was changed)");
                print_plan_human(o, &plan, 50);
                for r in &reasons {
                    say!(o, "  guard would hold this run: {r}");
                }
            }
            if plan.mutations.is_empty() {
                exit::NOTHING_TO_DO
            } else if reasons.is_empty() {
                exit::OK
            } else {
                exit::HELD
            }
        }
        Ok(SyncResult::Committed(run)) | Ok(SyncResult::Held(run, _)) => {
            if json_out {
                say!(o, "{}", run_json(&run));
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
                    say!(o, "review with `afas-sync plan show {}`, then `afas-sync plan approve {}` or `afas-sync plan reject {}`", run.id, run.id, run.id);
                }
                if run.source.rejected > 0 {
                    say!(o, "rejected rows are listed by `afas-sync run show {}`", run.id);
                }
            }
            let delivery = if deliver {
                deliver_outbox(config, store, o).await
            } else {
                None
            };
            match (exit_for(run.outcome), delivery) {
                (code, _) if code == exit::HELD || code == exit::FAILURE => code,
                (_, Some(false)) => exit::DELIVERY_INCOMPLETE,
                (code, _) => code,
            }
        }
        Err(e) => {
            esay!(o, "error: sync failed, nothing was changed: {e}");
            // Earlier runs' deliveries still go out.
            let _ = deliver_outbox(config, store, o).await;
            exit::FAILURE
        }
    }
}

pub fn status(store: &Store, json_out: bool, o: &mut Out) -> i32 {
    let result = (|| -> Result<Value, StoreError> {
        let (active, all) = store.employee_counts()?;
        let runs = store.runs(50)?;
        let last = runs.first().cloned();
        let last_success = runs
            .iter()
            .find(|r| matches!(r.outcome, Outcome::Success | Outcome::NothingToDo))
            .cloned();
        let held: Vec<u64> = store.held_plans()?.into_iter().map(|(id, _)| id).collect();
        Ok(json!({
            "store": store.path().display().to_string(),
            "employees": {"active": active, "left": all.saturating_sub(active)},
            "last_run": last.as_ref().map(run_json),
            "last_success": last_success.as_ref().map(|r| json!({"id": r.id, "finished_at": r.finished_at})),
            "held_plans": held,
            "outbox": store.outbox_counts()?.into_iter().map(|(sink, c)| (sink, json!({
                "pending": c.pending, "dead": c.dead, "stopped": c.stopped,
                "oldest_pending_at": c.oldest_pending_at.and_then(|t| jiff::Timestamp::from_second(t).ok()).map(|t| t.to_string()),
            }))).collect::<serde_json::Map<_, _>>(),
        }))
    })();
    match result {
        Ok(v) => {
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
                        }
                    }
                    _ => say!(o, "outbox:       empty"),
                }
            }
            exit::OK
        }
        Err(e) => store_failure(o, e),
    }
}

pub fn history(store: &Store, limit: usize, json_out: bool, o: &mut Out) -> i32 {
    match store.runs(limit) {
        Ok(runs) => {
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
        Err(e) => store_failure(o, e),
    }
}

pub fn run_show(store: &Store, id: u64, json_out: bool, o: &mut Out) -> i32 {
    let result = store.run(id).and_then(|r| Ok((r, store.run_mutations(id)?)));
    match result {
        Ok((run, mutations)) => {
            if json_out {
                let mut v = run_json(&run);
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
                for m in &mutations {
                    say!(o, "  {:<7} {:<10} {}", m.kind.as_str(), m.key, m.reason);
                }
                for r in &run.source.rejections {
                    say!(o, "  rejected {}: {}", r.row, r.reason);
                }
            }
            exit::OK
        }
        Err(e) => store_failure(o, e),
    }
}

pub fn employee(store: &Store, key: &str, json_out: bool, o: &mut Out) -> i32 {
    match store.employee(key) {
        Ok((None, h)) if h.is_empty() => {
            esay!(o, "error: no employee with key {key} in the state file");
            exit::FAILURE
        }
        Ok((current, history)) => {
            if json_out {
                say!(
                    o,
                    "{}",
                    json!({"current": current.as_ref().map(provisioned_json),
                           "history": history.iter().map(|(run, m)| { let mut v = mutation_json(m); v["run"] = json!(run); v }).collect::<Vec<_>>()})
                );
            } else {
                if let Some(p) = &current {
                    say!(
                        o,
                        "{}",
                        serde_json::to_string_pretty(&provisioned_json(p)).unwrap_or_default()
                    );
                }
                for (run, m) in &history {
                    say!(o, "run {run}: {} — {}", m.kind.as_str(), m.reason);
                }
            }
            exit::OK
        }
        Err(e) => store_failure(o, e),
    }
}

pub fn plan_show(store: &Store, run: Option<u64>, json_out: bool, o: &mut Out) -> i32 {
    let plans = match run {
        Some(id) => store.held_plan(id).map(|p| vec![(id, p)]),
        None => store.held_plans(),
    };
    match plans {
        Ok(plans) => {
            if json_out {
                say!(
                    o,
                    "{}",
                    Value::Array(
                        plans
                            .iter()
                            .map(|(id, p)| json!({"run": id, "plan": plan_json(p)}))
                            .collect()
                    )
                );
            } else if plans.is_empty() {
                say!(o, "no held plans");
            } else {
                for (id, p) in &plans {
                    let why = store.run(*id).map(|r| r.message).unwrap_or_default();
                    say!(o, "held plan of run {id}: {why}");
                    print_plan_human(o, p, 200);
                    say!(o);
                }
            }
            exit::OK
        }
        Err(e) => store_failure(o, e),
    }
}

pub async fn plan_approve(config: &Config, store: &Arc<Store>, run: u64, json_out: bool, o: &mut Out) -> i32 {
    let approved = sync::approve(config, store, run);
    if approved.is_ok() && deliver_outbox(config, store, o).await == Some(false) {
        esay!(
            o,
            "the plan was applied; its delivery is not complete yet (see `afas-sync status`)"
        );
    }
    match approved {
        Ok(r) => {
            if json_out {
                say!(o, "{}", run_json(&r));
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
        Err(e) => store_failure(o, e),
    }
}

pub fn plan_reject(store: &Store, run: u64, o: &mut Out) -> i32 {
    match store.reject_held(run) {
        Ok(()) => {
            say!(o, "dropped the held plan of run {run}; nothing was changed");
            exit::OK
        }
        Err(e) => store_failure(o, e),
    }
}

pub fn forget(store: &Store, key: &str, o: &mut Out) -> i32 {
    match store.forget(key) {
        Ok(true) => {
            say!(
                o,
                "erased employee {key} from the snapshot, history, mutations and outbox"
            );
            exit::OK
        }
        Ok(false) => {
            esay!(o, "error: no employee with key {key} in the state file");
            exit::FAILURE
        }
        Err(e) => store_failure(o, e),
    }
}

pub fn export(store: &Store, csv: bool, o: &mut Out) -> i32 {
    if csv {
        say!(
            o,
            "key,status,email,first_name,prefix,last_name,department,date_of_birth,employment_start,employment_end"
        );
    }
    // Streamed from the store, one employee at a time: at 100k the whole
    // snapshot in a map took over 100 MiB.
    let result = store.scan_snapshot(|p| {
        let p = &p;
        if csv {
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
            say!(o, "{}", cols.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
        } else {
            say!(o, "{}", provisioned_json(p));
        }
        Ok(())
    });
    match result {
        Ok(()) => exit::OK,
        Err(e) => store_failure(o, e),
    }
}
