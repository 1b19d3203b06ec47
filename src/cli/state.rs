//! Commands that read or change the state file: sync, status, history,
//! run show, employee, plan, forget, export.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::Config;
use crate::exit;
use crate::store::{Store, StoreError};
use crate::sync::plan::{Mutation, Plan, Provisioned, Status};
use crate::sync::{self, Outcome, RunRecord, SyncResult};

pub fn open_store(config: &Config) -> Result<Store, i32> {
    Store::open(&config.store.path).map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILURE
    })
}

fn store_failure(e: StoreError) -> i32 {
    eprintln!("error: {e}");
    match e {
        StoreError::NotFound(_) | StoreError::Conflict(_) => exit::FAILURE,
        _ => exit::FAILURE,
    }
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

fn print_plan_human(plan: &Plan, limit: usize) {
    use crate::sync::plan::MutationKind::*;
    println!(
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
        println!("  {:<7} {:<10} {:<32} {}", m.kind.as_str(), m.key, name, m.reason);
        for c in &m.changes {
            println!("          {}: {:?} -> {:?}", c.field, c.old, c.new);
        }
    }
    if plan.mutations.len() > limit {
        println!("  … and {} more (use --json for all)", plan.mutations.len() - limit);
    }
    for r in plan.source.rejections.iter().take(limit) {
        println!("  rejected {}: {}", r.row, r.reason);
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
pub async fn deliver_outbox(config: &Config, store: &Arc<Store>) -> Option<bool> {
    let sinks = match crate::delivery::sinks(config, store.clone()) {
        Ok(s) if s.is_empty() => return None,
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot set up delivery: {e}");
            return Some(false);
        }
    };
    let wait = std::time::Duration::from_secs(config.delivery.sync_wait_secs);
    match crate::delivery::deliver_until_done(config, store, &sinks, wait).await {
        Ok(r) => {
            println!(
                "delivery: {} delivered, {} to retry, {} dead-lettered, {} pending",
                r.delivered, r.retried, r.dead_lettered, r.pending
            );
            for (sink, reason) in &r.down {
                println!("delivery to {sink} stopped: {reason}");
            }
            let dead: u64 = store
                .outbox_counts()
                .map(|c| c.values().map(|c| c.dead).sum())
                .unwrap_or(0);
            if dead > 0 {
                println!("{dead} dead-lettered entries: see `afas-sync status`, then `afas-sync outbox retry`");
            }
            Some(r.pending == 0 && dead == 0)
        }
        Err(e) => {
            eprintln!("error: delivery failed: {e}");
            Some(false)
        }
    }
}

pub fn outbox_retry(config: &Config, sink: Option<&str>) -> i32 {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.outbox_retry(sink, jiff::Timestamp::now().as_second()) {
        Ok(n) => {
            println!(
                "{n} dead-lettered entries queued again; they are delivered by the daemon or the next `afas-sync sync`"
            );
            exit::OK
        }
        Err(e) => store_failure(e),
    }
}

pub async fn sync_cmd(config: &Config, as_of: Option<jiff::civil::Date>, dry_run: bool, json_out: bool) -> i32 {
    let store = match open_store(config) {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    let as_of = as_of.unwrap_or_else(|| today(config));
    match sync::run(config, store.clone(), as_of, dry_run).await {
        Ok(SyncResult::DryRun(plan, reasons)) => {
            if json_out {
                println!(
                    "{}",
                    json!({"dry_run": true, "plan": plan_json(&plan), "guards": reasons})
                );
            } else {
                println!("dry run (nothing was changed)");
                print_plan_human(&plan, 50);
                for r in &reasons {
                    println!("  guard would hold this run: {r}");
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
            let delivery = deliver_outbox(config, &store).await;
            if json_out {
                println!("{}", run_json(&run));
            } else {
                println!(
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
                    println!("HELD, nothing was changed: {}", run.message);
                    println!("review with `afas-sync plan show {}`, then `afas-sync plan approve {}` or `afas-sync plan reject {}`", run.id, run.id, run.id);
                }
                if run.source.rejected > 0 {
                    println!("rejected rows are listed by `afas-sync run show {}`", run.id);
                }
            }
            match (exit_for(run.outcome), delivery) {
                (code, _) if code == exit::HELD || code == exit::FAILURE => code,
                (_, Some(false)) => exit::DELIVERY_INCOMPLETE,
                (code, _) => code,
            }
        }
        Err(e) => {
            eprintln!("error: sync failed, nothing was changed: {e}");
            // Earlier runs' deliveries still go out.
            let _ = deliver_outbox(config, &store).await;
            exit::FAILURE
        }
    }
}

pub fn status(config: &Config, json_out: bool) -> i32 {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = (|| -> Result<Value, StoreError> {
        let snap = store.snapshot()?;
        let active = snap.values().filter(|p| p.status == Status::Active).count();
        let runs = store.runs(50)?;
        let last = runs.first().cloned();
        let last_success = runs
            .iter()
            .find(|r| matches!(r.outcome, Outcome::Success | Outcome::NothingToDo))
            .cloned();
        let held: Vec<u64> = store.held_plans()?.into_iter().map(|(id, _)| id).collect();
        Ok(json!({
            "store": store.path().display().to_string(),
            "employees": {"active": active, "left": snap.len() - active},
            "last_run": last.as_ref().map(run_json),
            "last_success": last_success.as_ref().map(|r| json!({"id": r.id, "finished_at": r.finished_at})),
            "held_plans": held,
            "outbox": store.outbox_counts()?.into_iter().map(|(sink, c)| (sink, json!({
                "pending": c.pending, "dead": c.dead,
                "oldest_pending_at": c.oldest_pending_at.and_then(|t| jiff::Timestamp::from_second(t).ok()).map(|t| t.to_string()),
            }))).collect::<serde_json::Map<_, _>>(),
        }))
    })();
    match result {
        Ok(v) => {
            if json_out {
                println!("{v}");
            } else {
                println!("state file:   {}", v["store"].as_str().unwrap_or(""));
                println!(
                    "employees:    {} active, {} left",
                    v["employees"]["active"], v["employees"]["left"]
                );
                match v["last_run"].as_object() {
                    Some(r) => println!(
                        "last run:     {} {} at {} {}",
                        r["id"],
                        r["outcome"].as_str().unwrap_or(""),
                        r["finished_at"].as_str().unwrap_or(""),
                        r["message"].as_str().unwrap_or("")
                    ),
                    None => println!("last run:     none yet (run `afas-sync sync`)"),
                }
                match v["last_success"].as_object() {
                    Some(r) => println!(
                        "last success: run {} at {}",
                        r["id"],
                        r["finished_at"].as_str().unwrap_or("")
                    ),
                    None => println!("last success: never"),
                }
                let held = v["held_plans"].as_array().map(|a| a.len()).unwrap_or(0);
                if held > 0 {
                    println!("HELD PLANS:   {} waiting (afas-sync plan show)", v["held_plans"]);
                }
                match v["outbox"].as_object() {
                    Some(o) if !o.is_empty() => {
                        for (sink, c) in o {
                            println!(
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
                        }
                    }
                    _ => println!("outbox:       empty"),
                }
            }
            exit::OK
        }
        Err(e) => store_failure(e),
    }
}

pub fn history(config: &Config, limit: usize, json_out: bool) -> i32 {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.runs(limit) {
        Ok(runs) => {
            if json_out {
                println!("{}", Value::Array(runs.iter().map(run_json).collect()));
            } else {
                println!("  run  as of      outcome       joiners movers leavers rehires rejected  finished");
                for r in runs {
                    println!(
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
        Err(e) => store_failure(e),
    }
}

pub fn run_show(config: &Config, id: u64, json_out: bool) -> i32 {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = store.run(id).and_then(|r| Ok((r, store.run_mutations(id)?)));
    match result {
        Ok((run, mutations)) => {
            if json_out {
                let mut v = run_json(&run);
                v["mutations"] = Value::Array(mutations.iter().map(mutation_json).collect());
                println!("{v}");
            } else {
                println!(
                    "run {} as of {}: {} ({})",
                    run.id,
                    run.as_of,
                    run.outcome.as_str(),
                    run.finished_at
                );
                if !run.message.is_empty() {
                    println!("  {}", run.message);
                }
                for m in &mutations {
                    println!("  {:<7} {:<10} {}", m.kind.as_str(), m.key, m.reason);
                }
                for r in &run.source.rejections {
                    println!("  rejected {}: {}", r.row, r.reason);
                }
            }
            exit::OK
        }
        Err(e) => store_failure(e),
    }
}

pub fn employee(config: &Config, key: &str, json_out: bool) -> i32 {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.employee(key) {
        Ok((None, h)) if h.is_empty() => {
            eprintln!("error: no employee with key {key} in the state file");
            exit::FAILURE
        }
        Ok((current, history)) => {
            if json_out {
                println!(
                    "{}",
                    json!({"current": current.as_ref().map(provisioned_json),
                           "history": history.iter().map(|(run, m)| { let mut v = mutation_json(m); v["run"] = json!(run); v }).collect::<Vec<_>>()})
                );
            } else {
                if let Some(p) = &current {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&provisioned_json(p)).unwrap_or_default()
                    );
                }
                for (run, m) in &history {
                    println!("run {run}: {} — {}", m.kind.as_str(), m.reason);
                }
            }
            exit::OK
        }
        Err(e) => store_failure(e),
    }
}

pub fn plan_show(config: &Config, run: Option<u64>, json_out: bool) -> i32 {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let plans = match run {
        Some(id) => store.held_plan(id).map(|p| vec![(id, p)]),
        None => store.held_plans(),
    };
    match plans {
        Ok(plans) => {
            if json_out {
                println!(
                    "{}",
                    Value::Array(
                        plans
                            .iter()
                            .map(|(id, p)| json!({"run": id, "plan": plan_json(p)}))
                            .collect()
                    )
                );
            } else if plans.is_empty() {
                println!("no held plans");
            } else {
                for (id, p) in &plans {
                    let why = store.run(*id).map(|r| r.message).unwrap_or_default();
                    println!("held plan of run {id}: {why}");
                    print_plan_human(p, 200);
                    println!();
                }
            }
            exit::OK
        }
        Err(e) => store_failure(e),
    }
}

pub async fn plan_approve(config: &Config, run: u64, json_out: bool) -> i32 {
    let store = match open_store(config) {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    let approved = sync::approve(config, &store, run);
    if approved.is_ok() && deliver_outbox(config, &store).await == Some(false) {
        eprintln!("the plan was applied; its delivery is not complete yet (see `afas-sync status`)");
    }
    match approved {
        Ok(r) => {
            if json_out {
                println!("{}", run_json(&r));
            } else {
                println!(
                    "applied the held plan of run {}: {} joiners, {} movers, {} leavers, {} rehires",
                    r.id, r.joiners, r.movers, r.leavers, r.rehires
                );
            }
            exit::OK
        }
        Err(e) => store_failure(e),
    }
}

pub fn plan_reject(config: &Config, run: u64) -> i32 {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.reject_held(run) {
        Ok(()) => {
            println!("dropped the held plan of run {run}; nothing was changed");
            exit::OK
        }
        Err(e) => store_failure(e),
    }
}

pub fn forget(config: &Config, key: &str) -> i32 {
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.forget(key) {
        Ok(true) => {
            println!("erased employee {key} from the snapshot, history, mutations and outbox");
            exit::OK
        }
        Ok(false) => {
            eprintln!("error: no employee with key {key} in the state file");
            exit::FAILURE
        }
        Err(e) => store_failure(e),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn export(config: &Config, csv: bool) -> i32 {
    use std::io::Write;
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let snap = match store.snapshot() {
        Ok(s) => s,
        Err(e) => return store_failure(e),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = (|| -> std::io::Result<()> {
        if csv {
            writeln!(
                out,
                "key,status,email,first_name,prefix,last_name,department,date_of_birth,employment_start,employment_end"
            )?;
        }
        for p in snap.values() {
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
                writeln!(
                    out,
                    "{}",
                    cols.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(",")
                )?;
            } else {
                writeln!(out, "{}", provisioned_json(p))?;
            }
        }
        out.flush()
    })();
    match result {
        Ok(()) => exit::OK,
        // The reader went away (`| head`): not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write the export: {e}");
            exit::FAILURE
        }
    }
}
