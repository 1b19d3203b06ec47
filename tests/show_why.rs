//! Why a change was not delivered, as an admin finds it: the real binary
//! against scim2-server (plain, or behind a proxy that refuses one write,
//! or not there at all) shows each refusal's reason in the `sync` summary,
//! `status`, `outbox list`, `outbox show`, `employee` and `/metrics`, and
//! `outbox retry` takes the same filters.

mod common;

use afas_sync::model::Reason;
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

/// Users another system made for the first `n` employees with access,
/// linked by its own externalId: under `adopt = "unlinked"` each is a
/// conflict. Their keys.
async fn linked_elsewhere(scim: &ScimPeer, env: &Env, n: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for r in rows(env) {
        if keys.len() == n {
            break;
        }
        let (Some(mail), true) = (r["Mail"].as_str(), r["AlleoAccess"] == json!(true)) else {
            continue;
        };
        let id = r["EmployeeId"].as_str().expect("id");
        let user = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": mail,
            "externalId": format!("entra-{id}"),
            "emails": [{"type": "work", "value": mail, "primary": true}],
            "active": true,
        });
        assert_eq!(scim.post_user(&user).await, 201, "{user}");
        keys.push(id.to_string());
    }
    keys
}

async fn cli(env: &Env, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--config", env.cfg.as_str()];
    all.extend_from_slice(args);
    let (code, out, err) = run_bin(&all).await;
    (code, format!("{out}{err}"))
}

async fn cli_json(env: &Env, args: &[&str]) -> Value {
    let mut all = vec!["--config", env.cfg.as_str(), "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_bin(&all).await;
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// The dead entries' (seq, employee key) from `outbox list --json`.
async fn dead_entries(env: &Env) -> Vec<(u64, String, Value)> {
    let list = cli_json(env, &["outbox", "list", "--state", "dead", "--limit", "1000"]).await;
    list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().expect("seq"),
                e["key"].as_str().unwrap_or("").to_string(),
                e.clone(),
            )
        })
        .collect()
}

/// `/metrics` of a daemon started on `env` once it shows dead letters by
/// reason; the daemon is stopped and the config put back.
async fn scrape_dead_by_reason(env: &Env) -> String {
    let (cfg, mut daemon, port) = env.spawn_daemon();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut scrape = String::new();
    for _ in 0..100 {
        if let Ok(r) = http().get(&url).send().await {
            scrape = r.text().await.unwrap_or_default();
            if scrape.contains("afas_sync_outbox_dead{") {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    daemon.kill().await.expect("kill");
    let _ = daemon.wait().await;
    std::fs::write(&env.cfg, cfg).expect("cfg");
    scrape
}

#[tokio::test]
async fn a_conflict_says_why_everywhere_and_retry_takes_its_reason() {
    let scim = ScimPeer::start().await;
    let env = Env::new(40, &scim_sink(&scim.url())).await;
    let linked = linked_elsewhere(&scim, &env, 3).await;

    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "{out}");
    // The summary names the reason and the command that lists them.
    assert!(out.contains("3 dead-lettered"), "{out}");
    assert!(
        out.contains("3 × conflict-foreign-holder")
            && out.contains("`afas-sync outbox list --sink scim --state dead --reason conflict-foreign-holder`"),
        "{out}"
    );
    assert!(out.contains("e.g. entry "), "{out}");

    // outbox list: the reasons first, then the entries.
    let (code, text) = cli(&env, &["outbox", "list"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("by reason:"), "{text}");
    assert!(text.contains("3 × scim    dead     conflict-foreign-holder"), "{text}");
    let dead = dead_entries(&env).await;
    let mut keys: Vec<String> = dead.iter().map(|(_, k, _)| k.clone()).collect();
    keys.sort();
    let mut want = linked.clone();
    want.sort();
    assert_eq!(keys, want);
    for (_, _, e) in &dead {
        assert_eq!(e["reason"], "conflict-foreign-holder", "{e}");
        assert_eq!(e["change"], "joiner", "{e}");
        assert_eq!(e["attempts"], 1, "{e}");
    }
    let list = cli_json(&env, &["outbox", "list"]).await;
    assert_eq!(list["groups"][0]["count"], 3, "{list}");
    assert_eq!(list["groups"][0]["reason"], "conflict-foreign-holder", "{list}");
    // Filters: no entry is unreachable; none of another sink.
    let none = cli_json(&env, &["outbox", "list", "--reason", "unreachable"]).await;
    assert_eq!(none["entries"], json!([]), "{none}");
    let (code, text) = cli(&env, &["outbox", "list", "--reason", "nonsense"]).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("conflict-foreign-holder"),
        "the error lists the classes: {text}"
    );

    // outbox show: the whole story, with the requests and answers.
    let (seq, key, _) = &dead[0];
    let (code, story) = cli(&env, &["outbox", "show", &seq.to_string()]).await;
    assert_eq!(code, 0, "{story}");
    assert!(
        story.contains(&format!("entry {seq} for scim: joiner of run 1, employee {key}")),
        "{story}"
    );
    assert!(story.contains("reason:   conflict-foreign-holder"), "{story}");
    assert!(story.contains(&format!("externalId entra-{key}")), "{story}");
    // 40 joiners: the pass read the target's users once, so the conflict
    // was found without a request of its own, and the story says so.
    assert!(story.contains("(no request of its own"), "{story}");
    let shown = cli_json(&env, &["outbox", "show", &seq.to_string()]).await;
    assert_eq!(shown["attempts"].as_array().map(Vec::len), Some(1), "{shown}");
    assert_eq!(shown["mutation"]["kind"], "joiner", "{shown}");
    let (code, gone) = cli(&env, &["outbox", "show", "999999"]).await;
    assert_ne!(code, 0, "{gone}");
    assert!(gone.contains("no outbox entry 999999"), "{gone}");

    // employee: text by default, with where it stands at the sink.
    let (code, text) = cli(&env, &["employee", key]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with(&format!("employee {key}: active")), "{text}");
    assert!(text.contains("scim: no target id known"), "{text}");
    assert!(
        text.contains(&format!(
            "entry {seq} dead (joiner, 1 attempts): conflict-foreign-holder"
        )),
        "{text}"
    );
    let delivered_key = rows(&env)
        .iter()
        .filter(|r| r["AlleoAccess"] == json!(true))
        .filter_map(|r| r["EmployeeId"].as_str().map(str::to_string))
        .find(|k| !linked.contains(k))
        .expect("a delivered employee");
    let (_, text) = cli(&env, &["employee", &delivered_key]).await;
    assert!(text.contains("last delivered: change "), "{text}");
    assert!(text.contains("POST /Users → 201"), "{text}");
    let json = cli_json(&env, &["employee", &delivered_key]).await;
    assert!(json["sinks"][0]["target_id"].is_string(), "{json}");

    // status: grouped by reason, in text and JSON.
    let (code, text) = cli(&env, &["status"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("dead:    3 × conflict-foreign-holder"), "{text}");
    let status = cli_json(&env, &["status"]).await;
    assert_eq!(status["outbox"]["scim"]["reasons"][0]["count"], 3, "{status}");

    // /metrics: by class, never by text.
    let scrape = scrape_dead_by_reason(&env).await;
    assert!(
        scrape.contains("afas_sync_outbox_dead{sink=\"scim\",reason=\"conflict-foreign-holder\"} 3"),
        "{scrape}"
    );
    assert!(!scrape.contains("entra-"), "no target text in metrics");

    // Retry by reason: another reason queues nothing; this one all three,
    // and with `adopt = "any"` they go through.
    let (code, text) = cli(&env, &["outbox", "retry", "--reason", "unreachable"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("0 "), "{text}");
    let cfg = std::fs::read_to_string(&env.cfg).expect("cfg");
    std::fs::write(&env.cfg, cfg.replace("[sink.scim]\n", "[sink.scim]\nadopt = \"any\"\n")).expect("cfg");
    let (code, text) = cli(
        &env,
        &[
            "outbox",
            "retry",
            "--state",
            "dead",
            "--reason",
            "conflict-foreign-holder",
        ],
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("3 "), "{text}");
    let (code, out) = env.sync(day0()).await;
    assert!(code == 0 || code == 4, "{out}");
    assert!(dead_entries(&env).await.is_empty());
    let store = Store::open(&env.store_path).expect("store");
    assert!(
        store.attempts("scim", *seq).expect("attempts").is_empty(),
        "delivered: its attempts go with it"
    );
}

#[tokio::test]
async fn a_refused_write_and_an_unreachable_target_show_the_answer_and_metrics_count_by_reason() {
    let scim = ScimPeer::start().await;
    // The target refuses the first create (400) and nothing else.
    let proxy = FaultProxy::start(scim.url(), vec![Inject::new("POST", "/Users", 1, 1, 400, None)]).await;
    let env = Env::new(12, &scim_sink(&proxy.url())).await;
    env.one_request_at_a_time();
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("1 × target-refused"), "{out}");
    let dead = dead_entries(&env).await;
    assert_eq!(dead.len(), 1);
    let (seq, key, e) = &dead[0];
    assert_eq!(e["last_status"], 400, "{e}");
    let (_, story) = cli(&env, &["outbox", "show", &seq.to_string()]).await;
    assert!(
        story.contains("POST /Users → 400: injected"),
        "the target's detail: {story}"
    );
    assert!(story.contains("reason:   target-refused"), "{story}");
    let (_, text) = cli(&env, &["employee", key]).await;
    assert!(
        text.contains(&format!("entry {seq} dead (joiner, 1 attempts): 400 target-refused")),
        "{text}"
    );
    let (_, text) = cli(&env, &["status"]).await;
    assert!(text.contains("dead:    1 × target-refused"), "{text}");

    // /metrics counts dead entries by reason class, never by text.
    let scrape = scrape_dead_by_reason(&env).await;
    for r in Reason::ALL {
        let n = if r == Reason::Refused { 1 } else { 0 };
        let series = format!("afas_sync_outbox_dead{{sink=\"scim\",reason=\"{}\"}} {n}", r.as_str());
        assert!(scrape.contains(&series), "missing {series} in\n{scrape}");
    }
    assert!(!scrape.contains("injected"), "no target text in metrics");

    // Forget erases the entry and its attempts.
    let store = Store::open(&env.store_path).expect("store");
    assert_eq!(store.attempts("scim", *seq).expect("attempts").len(), 1);
    drop(store);
    let (code, text) = cli(&env, &["forget", key]).await;
    assert_eq!(code, 0, "{text}");
    let store = Store::open(&env.store_path).expect("store");
    assert!(store.attempts("scim", *seq).expect("attempts").is_empty());
    assert!(store.last_deliveries(key).expect("last").is_empty());
    drop(store);

    // Now the target is gone: the next changes wait, as unreachable.
    drop(proxy);
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        let rows = &mut d.connectors.get_mut("Profit_Employees_Alleo").expect("rows").rows;
        for r in rows.iter_mut().take(4) {
            r.insert("BirthName".into(), json!("Anders"));
        }
    });
    let cfg = std::fs::read_to_string(&env.cfg).expect("cfg");
    std::fs::write(&env.cfg, cfg.replace("sync_wait_secs = 20", "sync_wait_secs = 2")).expect("cfg");
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("× unreachable"), "{out}");
    let waiting = cli_json(
        &env,
        &["outbox", "list", "--state", "pending", "--reason", "unreachable"],
    )
    .await;
    let n = waiting["groups"][0]["count"].as_u64().expect("count");
    assert!(n >= 1, "{waiting}");
    let (_, text) = cli(&env, &["status"]).await;
    assert!(text.contains(&format!("waiting: {n} × unreachable")), "{text}");
    let first = &waiting["entries"][0];
    let (seq, key) = (first["seq"].as_u64().expect("seq"), first["key"].as_str().expect("key"));
    let (_, story) = cli(&env, &["outbox", "show", &seq.to_string()]).await;
    assert!(story.contains("reason:   unreachable"), "{story}");
    assert!(story.contains("→ no answer"), "{story}");
    let (_, text) = cli(&env, &["employee", key]).await;
    assert!(
        text.contains(&format!("entry {seq} pending")) && text.contains("unreachable"),
        "{text}"
    );
}
