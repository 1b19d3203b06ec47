//! Provision on demand: `afas-sync sync --employee KEY [--dry-run]` with the
//! real binary, the AFAS emulator and scim2-server — a joiner, a mover, a
//! leaver, an employee out of scope and a key AFAS does not have, with and
//! without `--dry-run`, and with the daemon running.

mod common;

use afas_sync::store::Store;
use common::peers::*;
use common::run_bin;
use common::sync_env::*;
use serde_json::{json, Value};

fn rows(env: &Env) -> Vec<serde_json::Map<String, Value>> {
    env.emu
        .state
        .with_data(|d| d.connectors["Profit_Employees_Alleo"].rows.clone())
}

fn set(env: &Env, key: &str, field: &str, value: Value) {
    env.emu.state.with_data(|d| {
        let rows = &mut d.connectors.get_mut("Profit_Employees_Alleo").expect("rows").rows;
        let row = rows.iter_mut().find(|r| r["EmployeeId"] == key).expect("row");
        row.insert(field.into(), value);
    });
}

async fn one(env: &Env, key: &str, dry_run: bool) -> (i32, String) {
    let mut args = vec![
        "--config",
        env.cfg.as_str(),
        "sync",
        "--as-of",
        "2026-11-24",
        "--employee",
        key,
    ];
    if dry_run {
        args.push("--dry-run");
    }
    let (code, out, err) = run_bin(&args).await;
    (code, format!("{out}{err}"))
}

fn runs(env: &Env) -> usize {
    Store::open(&env.store_path)
        .expect("store")
        .runs(100)
        .expect("runs")
        .len()
}

async fn user_of(scim: &ScimPeer, key: &str) -> Vec<Value> {
    scim.users()
        .await
        .into_iter()
        .filter(|u| u["externalId"] == key)
        .collect()
}

#[tokio::test]
async fn one_employee_goes_through_every_step_alone() {
    let scim = ScimPeer::start().await;
    let env = Env::new(30, &scim_sink(&scim.url())).await;
    let with_access: Vec<(String, String)> = rows(&env)
        .iter()
        .filter(|r| r["AlleoAccess"] == json!(true))
        .filter_map(|r| {
            Some((
                r["EmployeeId"].as_str()?.to_string(),
                r["Mail"].as_str().filter(|m| !m.is_empty())?.to_string(),
            ))
        })
        .collect();
    let (k, mail) = with_access[0].clone();
    let other = with_access[1].0.clone();

    // A joiner, dry run: every step shown, nothing written anywhere.
    let (code, out) = one(&env, &k, true).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("employee {k} (dry run: nothing was changed)")),
        "{out}"
    );
    assert!(out.contains("   Profit_Employees_Alleo: {"), "{out}");
    assert!(out.contains(&format!("\"EmployeeId\":\"{k}\"")), "{out}");
    assert!(
        !out.contains(&format!("\"EmployeeId\":\"{other}\"")),
        "only this employee's rows: {out}"
    );
    assert!(out.contains(&format!("   email: {mail}")), "{out}");
    assert!(out.contains("3. scope: in scope: employed on 2026-11-24"), "{out}");
    assert!(out.contains("4. the snapshot: not provisioned"), "{out}");
    assert!(out.contains("5. the change: joiner"), "{out}");
    assert!(
        out.contains("6. SCIM target: no user at the target: it would be created"),
        "{out}"
    );
    assert!(out.contains("   would send: POST /Users"), "{out}");
    assert!(out.contains(&format!("\"userName\": \"{mail}\"")), "{out}");
    assert!(scim.users().await.is_empty());
    assert!(!env.store_path.exists() || runs(&env) == 0);

    // Committed: a run of its own, delivered, and nobody else.
    let (code, out) = one(&env, &k, false).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("committed as run 1"), "{out}");
    assert!(out.contains("delivery: 1 delivered"), "{out}");
    assert!(out.contains("last delivered: change 0 of run 1"), "{out}");
    assert_eq!(user_of(&scim, &k).await.len(), 1);
    assert_eq!(scim.users().await.len(), 1, "nobody else");
    assert_eq!(env.snapshot().len(), 1);
    // Again: nothing to do.
    let (code, out) = one(&env, &k, false).await;
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("5. the change: none"), "{out}");

    // The whole run then brings the others, and not this one a second time.
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(" 0 joiners"), "{out}");
    assert_eq!(user_of(&scim, &k).await.len(), 1, "not a second time");
    let active = env
        .snapshot()
        .values()
        .filter(|p| p.status == afas_sync::sync::plan::Status::Active)
        .count();
    assert_eq!(scim.users().await.len(), active);

    // A mover, with another employee's change left for the next run.
    set(&env, &k, "BirthName", json!("Ondemand"));
    set(&env, &other, "BirthName", json!("Later"));
    let (code, out) = one(&env, &k, true).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5. the change: mover"), "{out}");
    let id = user_of(&scim, &k).await[0]["id"].as_str().expect("id").to_string();
    assert!(
        out.contains("6. SCIM target: the user afas-sync stored for this employee"),
        "{out}"
    );
    assert!(out.contains(&format!("   would send: PATCH /Users/{id}")), "{out}");
    let (code, out) = one(&env, &k, false).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(user_of(&scim, &k).await[0]["name"]["familyName"], "Ondemand");
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 joiners, 1 movers, 0 leavers"),
        "only the other one is left: {out}"
    );

    // A leaver: one employee's leaver is allowed, whatever the guards.
    env.max_leavers(0);
    env.end_contracts(std::slice::from_ref(&k));
    let (code, out) = one(&env, &k, false).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("3. scope: not in scope: employment ended on 2026-11-01"),
        "{out}"
    );
    assert!(out.contains("5. the change: leaver"), "{out}");
    assert_eq!(user_of(&scim, &k).await[0]["active"], false);

    // Out of scope and never provisioned (starts in 2030): nothing to do,
    // and why.
    env.emu.state.with_data(|d| {
        let rows = &mut d.connectors.get_mut("Profit_Employees_Alleo").expect("rows").rows;
        let mut row = rows
            .iter()
            .find(|r| r["EmployeeId"] == other.as_str())
            .expect("row")
            .clone();
        row.insert("EmployeeId".into(), json!("7777777"));
        row.insert("Mail".into(), json!("later.hire@bedrijf.example"));
        row.insert("EmploymentStart".into(), json!("2030-01-01T00:00:00Z"));
        rows.push(row);
        let contracts = &mut d.connectors.get_mut("Profit_Contract").expect("contracts").rows;
        let mut c = contracts
            .iter()
            .find(|r| r["EmployeeId"] == other.as_str())
            .expect("contract")
            .clone();
        c.insert("EmployeeId".into(), json!("7777777"));
        c.insert("SequenceNumber".into(), json!(1));
        c.insert("DateStart".into(), json!("2030-01-01T00:00:00Z"));
        c.insert("DateEnd".into(), Value::Null);
        contracts.push(c);
    });
    let (code, out) = one(&env, "7777777", true).await;
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("3. scope: not in scope: not employed on 2026-11-24"),
        "{out}"
    );
    assert!(out.contains("4. the snapshot: not provisioned"), "{out}");
    assert!(out.contains("5. the change: none"), "{out}");

    // A key AFAS does not have: a clear error.
    let before = runs(&env);
    let (code, out) = one(&env, "999999999", false).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("AFAS has no employee with key 999999999"), "{out}");
    assert_eq!(runs(&env), before, "nothing recorded");
}

#[tokio::test]
async fn one_employee_on_demand_while_the_daemon_runs() {
    let scim = ScimPeer::start().await;
    let env = Env::new(10, &scim_sink(&scim.url())).await;
    let (_, mut daemon, port) = env.spawn_daemon();
    let ready = format!("http://127.0.0.1:{port}/healthz");
    let mut up = false;
    for _ in 0..100 {
        if http().get(&ready).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the daemon did not come up");
    let k = rows(&env)
        .iter()
        .find(|r| r["AlleoAccess"] == json!(true))
        .and_then(|r| r["EmployeeId"].as_str().map(str::to_string))
        .expect("key");
    // The daemon's first run brings everyone.
    let mut delivered = false;
    let mut last = String::new();
    // Its delivery worker looks every 15 s.
    for _ in 0..400 {
        let (code, out, _) = run_bin(&["--config", &env.cfg, "--json", "status"]).await;
        let s: Value = serde_json::from_str(out.trim()).unwrap_or_default();
        last = out;
        if code == 0
            && s["last_run"]["id"] == 1
            && s["outbox"]["scim"]["pending"] == 0
            && !user_of(&scim, &k).await.is_empty()
        {
            delivered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(delivered, "the daemon's first run was not delivered: {last}");
    // The daemon holds the state file: this goes through its socket.
    set(&env, &k, "BirthName", json!("Socket"));
    let (code, out) = one(&env, &k, false).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("5. the change: mover"), "{out}");
    assert!(out.contains("committed as run 2"), "{out}");
    assert_eq!(user_of(&scim, &k).await[0]["name"]["familyName"], "Socket", "{out}");
    // The delivery log answers through the socket as well.
    let (code, out, err) = run_bin(&["--config", &env.cfg, "--json", "outbox", "list", "--sink", "scim"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let list: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(list["entries"], json!([]), "{list}");
    let (code, out, err) = run_bin(&[
        "--config", &env.cfg, "outbox", "retry", "--sink", "scim", "--state", "dead",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_bin(&["--config", &env.cfg, "employee", &k]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("last delivered: change 0 of run 2"), "{out}");
    daemon.kill().await.expect("kill");
}
