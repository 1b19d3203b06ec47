//! Interop matrix: the real binary delivering to a real scim2-server set up
//! as targets in the world are. Every row starts from RFC 7643's schemas
//! only and says what it adds (an extension, a feature switched off, a
//! fault) — nothing is added to make the default path pass.

mod common;

use std::collections::BTreeMap;

use afas_sync::emulator::data::{churn, SALARY_CONNECTOR};
use afas_sync::store::Store;
use afas_sync::sync::plan::Status;
use common::peers::*;
use common::sync_env::*;
use common::*;
use serde_json::{json, Value};

const BENEFITS: &str = "urn:example:benefits:1.0:User";

/// RFC 7643's schemas as scim2-server serves them by default, read from a
/// plain server, so a row can add to them.
async fn rfc_schemas() -> Vec<Value> {
    let mut plain = ScimPeer::start().await;
    let v: Value = http()
        .get(format!("{}/Schemas", plain.url()))
        .bearer_auth(SCIM_TOKEN)
        .send()
        .await
        .expect("schemas")
        .json()
        .await
        .expect("json");
    plain.stop().await;
    v["Resources"].as_array().cloned().expect("resources")
}

fn attribute(name: &str, kind: &str, required: bool) -> Value {
    json!({"name": name, "type": kind, "multiValued": false, "required": required,
        "mutability": "readWrite", "returned": "default", "uniqueness": "none", "caseExact": false})
}

fn user_type(extensions: &[&str]) -> Value {
    json!([{
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "User", "name": "User", "description": "User Account", "endpoint": "/Users",
        "schema": "urn:ietf:params:scim:schemas:core:2.0:User",
        "schemaExtensions": extensions.iter().map(|s| json!({"schema": s, "required": false})).collect::<Vec<_>>(),
    }])
}

/// Row: a target with a benefits extension of its own (a budget, a hire
/// date, a required cost code), and the enterprise extension.
async fn benefits_target(dir: &std::path::Path) -> ScimPeer {
    let mut schemas = rfc_schemas().await;
    schemas.push(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": BENEFITS, "name": "Benefits", "description": "A benefits platform's own fields",
        "attributes": [attribute("budget", "decimal", false), attribute("hireDate", "dateTime", false),
            attribute("costCode", "string", true)],
        "meta": {"resourceType": "Schema", "location": format!("/Schemas/{BENEFITS}")},
    }));
    let s = dir.join("schemas.json");
    let t = dir.join("types.json");
    std::fs::write(&s, Value::Array(schemas).to_string()).expect("schemas");
    std::fs::write(&t, user_type(&[ENT, BENEFITS]).to_string()).expect("types");
    let args = [
        "--schema",
        s.to_str().expect("p"),
        "--resource-type",
        t.to_str().expect("p"),
    ];
    ScimPeer::start_with(free_port(), &args).await
}

fn with_attributes(url: &str, attributes: &str) -> String {
    format!("{}\n[sink.scim.attributes]\n{attributes}\n", scim_sink(url))
}

const BENEFITS_MAPPING: &str = r#"holiday_allowance_balance = "urn:example:benefits:1.0:User:budget"
employment_start = "urn:example:benefits:1.0:User:hireDate"
"#;
const COST_CODE: &str = r#"key = ["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "urn:example:benefits:1.0:User:costCode"]
"#;

fn dead_and_pending(env: &Env) -> (u64, u64) {
    let store = Store::open(&env.store_path).expect("store");
    let c = store.outbox_counts().expect("counts");
    let s = c.get("scim").cloned().unwrap_or_default();
    (s.dead, s.pending)
}

fn users_by_key(users: Vec<Value>) -> BTreeMap<String, Value> {
    users
        .into_iter()
        .map(|u| (u["externalId"].as_str().unwrap_or("").to_string(), u))
        .collect()
}

#[tokio::test]
async fn a_custom_extension_of_the_target_takes_the_fields_the_config_maps_to_it() {
    let dir = tempfile::tempdir().expect("dir");
    let scim = benefits_target(dir.path()).await;
    let sinks = with_attributes(&scim.url(), &format!("{BENEFITS_MAPPING}{COST_CODE}"));
    let env = Env::new(80, &sinks).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(dead_and_pending(&env), (0, 0));
    let users = users_by_key(scim.users().await);
    let snap = env.snapshot();
    assert_eq!(users.len(), snap.len());
    let mut with_budget = 0;
    for (key, p) in &snap {
        let e = p.employee.as_ref().expect("data");
        let u = &users[key];
        assert_eq!(u[BENEFITS]["costCode"], json!(key));
        assert_eq!(
            u[BENEFITS]["hireDate"],
            json!(format!("{}T00:00:00Z", e.employment.start))
        );
        let budget = e
            .pay
            .holiday_allowance_balance
            .map(|b| b.to_string().parse::<f64>().expect("f64"));
        assert_eq!(u[BENEFITS]["budget"].as_f64(), budget, "{key}");
        with_budget += usize::from(budget.is_some());
        assert_eq!(u[ENT]["employeeNumber"], json!(key));
        let schemas: Vec<&str> = u["schemas"]
            .as_array()
            .expect("schemas")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(schemas.contains(&BENEFITS), "{u}");
        assert!(u.get(EXT).is_none());
    }
    assert!(with_budget > 0, "some employees have a balance");
    let (code, out, _) = run_bin(&["--config", &env.cfg, "check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("holiday_allowance_balance → {BENEFITS}:budget")),
        "{out}"
    );
    assert!(not_delivered(&out).contains("salary"), "{out}");
}

#[tokio::test]
async fn a_mapping_the_target_refuses_stops_the_sink_and_everything_is_delivered_after_the_fix() {
    let dir = tempfile::tempdir().expect("dir");
    let scim = benefits_target(dir.path()).await;
    // The cost code the target requires is not mapped: it refuses every user.
    let env = Env::new(60, &with_attributes(&scim.url(), BENEFITS_MAPPING)).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("refuses every change") && out.contains("costCode"),
        "{out}"
    );
    let (dead, pending) = dead_and_pending(&env);
    assert_eq!(dead, 0, "nothing dead-lettered: {out}");
    assert!(pending > 50, "{pending}");
    {
        let store = Store::open(&env.store_path).expect("store");
        assert!(store
            .outbox_entries("scim")
            .expect("entries")
            .iter()
            .all(|(_, e)| e.attempts == 0));
    }
    let (_, status, _) = run_bin(&["--config", &env.cfg, "status"]).await;
    assert!(
        status.contains("STOPPED: the scim target refuses every change"),
        "{status}"
    );
    let (_, json_status, _) = run_bin(&["--config", &env.cfg, "--json", "status"]).await;
    let v: Value = serde_json::from_str(&json_status).expect("json");
    assert!(
        v["outbox"]["scim"]["stopped"]
            .as_str()
            .is_some_and(|s| s.contains("costCode")),
        "{v}"
    );

    // The fix: map the cost code. The next sync delivers everything.
    let text = std::fs::read_to_string(&env.cfg).expect("config");
    std::fs::write(
        &env.cfg,
        text.replace(BENEFITS_MAPPING, &format!("{BENEFITS_MAPPING}{COST_CODE}")),
    )
    .expect("cfg");
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 4, "{out}");
    assert_eq!(dead_and_pending(&env), (0, 0));
    assert_eq!(scim.users().await.len(), env.snapshot().len());
    let (_, status, _) = run_bin(&["--config", &env.cfg, "status"]).await;
    assert!(!status.contains("STOPPED"), "{status}");
}

#[tokio::test]
async fn a_mapping_to_an_attribute_the_target_lacks_is_refused_by_check_and_the_sink_before_sending() {
    let scim = ScimPeer::start().await;
    for (line, says) in [
        (
            "salary = \"urn:example:benefits:1.0:User:budget\"",
            "does not declare the schema",
        ),
        ("department = \"costCentre\"", "declares no attribute `costCentre`"),
        ("department = \"groups[type eq \\\"x\\\"].display\"", "read-only"),
        (
            "fte = \"emails[type eq \\\"work\\\"].primary\"",
            "fte needs a decimal or string",
        ),
        (
            "last_name = \"nickName\"\nfirst_name = \"nickName\"",
            "already receives first_name",
        ),
        (
            "date_of_birth = \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager\"",
            "is complex",
        ),
    ] {
        let env = Env::new(15, &with_attributes(&scim.url(), line)).await;
        let field = line.split(' ').next().expect("field");
        let (code, out, err) = run_bin(&["--config", &env.cfg, "check"]).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("FAIL SCIM attribute mapping"), "{out}");
        assert!(
            out.contains(&format!("sink.scim.attributes.{field}")) && out.contains(says),
            "{line}: {out}"
        );
        assert!(
            out.contains("writable attributes: userName") || out.contains("name.givenName"),
            "{out}"
        );
        let (code, out) = env.sync(day0()).await;
        assert_eq!(code, 5, "{out}");
        assert!(out.contains(&format!("sink.scim.attributes.{field}")), "{out}");
        assert_eq!(dead_and_pending(&env).0, 0, "{line}");
    }
    assert!(scim.users().await.is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_target_without_the_enterprise_extension_gets_the_core_user_and_check_says_department_has_nowhere_to_go() {
    let dir = tempfile::tempdir().expect("dir");
    let schemas: Vec<Value> = rfc_schemas().await.into_iter().filter(|s| s["id"] != ENT).collect();
    let (s, t) = (dir.path().join("s.json"), dir.path().join("t.json"));
    std::fs::write(&s, Value::Array(schemas).to_string()).expect("s");
    std::fs::write(&t, user_type(&[]).to_string()).expect("t");
    let scim = ScimPeer::start_with(
        free_port(),
        &[
            "--schema",
            s.to_str().expect("p"),
            "--resource-type",
            t.to_str().expect("p"),
        ],
    )
    .await;
    let env = Env::new(40, &scim_sink(&scim.url())).await;
    let (code, out, _) = run_bin(&["--config", &env.cfg, "check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("department (the target does not declare the schema"),
        "{out}"
    );
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        churn(d, 9, d1, 20, 20, 100);
    });
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(dead_and_pending(&env), (0, 0));
    let users = users_by_key(scim.users().await);
    for (key, p) in env.snapshot() {
        let u = &users[&key];
        assert!(u.get(ENT).is_none(), "{u}");
        assert_eq!(u["active"], json!(p.status == Status::Active), "{key}");
        assert_eq!(u["schemas"], json!(["urn:ietf:params:scim:schemas:core:2.0:User"]));
    }
}

#[tokio::test]
async fn a_target_without_schemas_is_treated_as_the_rfc_user() {
    // Row fault: /Schemas answers 404 (the proxy), as on targets that do not
    // serve discovery.
    let scim = ScimPeer::start().await;
    let proxy = FaultProxy::start(scim.url(), vec![Inject::new("GET", "/Schemas", 1, 1000, 404, None)]).await;
    let env = Env::new(30, &scim_sink(&proxy.url())).await;
    let (code, out, _) = run_bin(&["--config", &env.cfg, "check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("serves no /Schemas: treated as RFC 7643's"), "{out}");
    assert!(
        out.contains("department → urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"),
        "{out}"
    );
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    assert_server_matches(&scim, &env.snapshot()).await;
}

#[tokio::test]
async fn without_etags_movers_and_leavers_are_plain_patches() {
    let dir = tempfile::tempdir().expect("dir");
    let spc = service_provider_config(dir.path(), true, false);
    let scim = ScimPeer::start_with(free_port(), &["--service-provider-config", spc.to_str().expect("p")]).await;
    // No version is read before a write: a GET of one user would be one.
    let proxy = FaultProxy::start(scim.url(), vec![Inject::new("GET", "/Users/", 1, 1000, 500, None)]).await;
    let env = Env::new(40, &scim_sink(&proxy.url())).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        churn(d, 4, d1, 20, 50, 200);
    });
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    assert!(proxy.injected.lock().expect("log").is_empty(), "no version reads");
    assert_server_matches(&scim, &env.snapshot()).await;
}

#[tokio::test]
async fn a_mover_whose_changes_are_all_unmapped_sends_nothing_and_is_delivered() {
    let scim = ScimPeer::start().await;
    // Row fault: any PATCH or PUT would be answered 501 and logged.
    let proxy = FaultProxy::start(
        scim.url(),
        vec![
            Inject::new("PATCH", "/Users", 1, 1000, 501, None),
            Inject::new("PUT", "/Users", 1, 1000, 501, None),
        ],
    )
    .await;
    let env = Env::new(30, &scim_sink(&proxy.url())).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    // Salaries change; a plain target receives no salary.
    let d1 = next(day0(), 1);
    let changed = env.emu.state.with_data(|d| {
        let rows = &mut d.connectors.get_mut(SALARY_CONNECTOR).expect("salary").rows;
        for r in rows.iter_mut() {
            let s = r["Salary"].as_f64().unwrap_or(0.0);
            r.insert("Salary".into(), json!(s + 100.0));
        }
        rows.len()
    });
    assert!(changed > 0);
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("movers"), "{out}");
    assert!(proxy.injected.lock().expect("log").is_empty(), "nothing was written");
    assert_eq!(dead_and_pending(&env), (0, 0));
}

#[tokio::test]
async fn addresses_that_move_between_employees_end_at_their_new_holders() {
    moved_addresses(ScimPeer::start().await).await;
}

/// Row: no PATCH, so a held value is freed by a whole replacement.
#[tokio::test]
async fn addresses_that_move_between_employees_end_at_their_new_holders_without_patch() {
    let dir = tempfile::tempdir().expect("dir");
    let spc = service_provider_config(dir.path(), false, true);
    moved_addresses(ScimPeer::start_with(free_port(), &["--service-provider-config", spc.to_str().expect("p")]).await)
        .await;
}

async fn moved_addresses(scim: ScimPeer) {
    let env = Env::new(80, &scim_sink(&scim.url())).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let d1 = next(day0(), 1);
    // One day: leavers and hires; a leaver's address goes to a new hire;
    // two employees swap addresses; three pass theirs along a chain.
    let (leaver, hire, moved) = env.emu.state.with_data(|d| {
        let s = churn(d, 11, d1, 40, 40, 0);
        let rows = &mut d.connectors.get_mut("Profit_Employees_Alleo").expect("employees").rows;
        let mail = |rows: &[serde_json::Map<String, Value>], k: &str| {
            rows.iter()
                .find(|r| r["EmployeeId"] == json!(k))
                .map(|r| r["Mail"].clone())
                .expect("row")
        };
        let set = |rows: &mut [serde_json::Map<String, Value>], k: &str, m: Value| {
            for r in rows.iter_mut().filter(|r| r["EmployeeId"] == json!(k)) {
                r.insert("Mail".into(), m.clone());
            }
        };
        let leaver = s.leavers[0].clone();
        let hire = s.joiners[0].clone();
        let m = mail(rows, &leaver);
        set(rows, &hire, m);
        let stay: Vec<String> = rows
            .iter()
            .filter(|r| r["EmploymentEnd"].is_null() && r["AlleoAccess"] == json!(true) && r["Mail"].is_string())
            .map(|r| r["EmployeeId"].as_str().expect("id").to_string())
            .filter(|k| !s.joiners.contains(k) && !s.leavers.contains(k))
            .take(5)
            .collect();
        let (a, b) = (mail(rows, &stay[0]), mail(rows, &stay[1]));
        set(rows, &stay[0], b);
        set(rows, &stay[1], a);
        let (c, e) = (mail(rows, &stay[3]), mail(rows, &stay[4]));
        set(rows, &stay[2], c);
        set(rows, &stay[3], e);
        set(rows, &stay[4], json!(format!("new.{}@bedrijf.example", stay[4])));
        (leaver, hire, stay)
    });
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(dead_and_pending(&env), (0, 0), "{out}");
    let snap = env.snapshot();
    assert!(matches!(snap[&leaver].status, Status::Left { .. }));
    assert_eq!(snap[&hire].status, Status::Active);
    let users = users_by_key(scim.users().await);
    assert_eq!(users.len(), snap.len());
    for (key, p) in &snap {
        let e = p.employee.as_ref().expect("data");
        let u = &users[key];
        assert_eq!(u["active"], json!(p.status == Status::Active), "{key}");
        if key == &leaver {
            assert_eq!(u["userName"], json!(format!("released-{leaver}@afas-sync.invalid")));
            continue;
        }
        assert_eq!(u["userName"], json!(e.email.as_str()), "{key}");
        assert_eq!(u["emails"][0]["value"], json!(e.email.as_str()), "{key}");
    }
    for k in moved.iter().take(5).chain([&hire]) {
        assert_eq!(snap[k].status, Status::Active, "{k}");
    }
}
