//! Delivery end to end: the real binary syncing from the emulator into a
//! real scim2-server (PyPI), a Standard Webhooks receiver verifying with
//! the `standardwebhooks` package, and the file sink.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use afas_sync::emulator::data::{churn, generate};
use afas_sync::store::Store;
use afas_sync::sync::plan::{Provisioned, Status};
use common::peers::*;
use common::sync_env::*;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn scim_first_import_then_movers_leavers_and_a_rehire() {
    first_import_then_movers_leavers_and_a_rehire(ScimPeer::start().await).await;
}

/// Interop row: a target that serves afas-sync's own extension gets every
/// field there, as before.
#[tokio::test]
async fn with_afas_syncs_own_extension_served_every_field_goes_there() {
    first_import_then_movers_leavers_and_a_rehire(ScimPeer::start_own_extension().await).await;
}

async fn first_import_then_movers_leavers_and_a_rehire(scim: ScimPeer) {
    let env = Env::new(300, &scim_sink(&scim.url())).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 pending"), "{out}");
    let snap = env.snapshot();
    assert!(snap.len() > 250, "{}", snap.len());
    assert_server_matches(&scim, &snap).await;

    // Day 2: hires, leavers, department changes, and one earlier leaver
    // employed again (open-ended contract).
    let d1 = next(day0(), 1);
    let rehire = snap
        .iter()
        .find(|(_, p)| matches!(p.status, Status::Left { .. }))
        .map(|(k, _)| k.clone());
    let changes = env.emu.state.with_data(|d| {
        let s = churn(d, 5, d1, 10, 10, 30);
        if let Some(k) = &rehire {
            for c in ["Profit_Employees_Alleo", "Profit_Contract"] {
                if let Some(conn) = d.connectors.get_mut(c) {
                    for row in conn.rows.iter_mut().filter(|r| r["EmployeeId"] == json!(k)) {
                        row.insert(
                            if c == "Profit_Contract" {
                                "DateEnd"
                            } else {
                                "EmploymentEnd"
                            }
                            .into(),
                            Value::Null,
                        );
                    }
                }
            }
        }
        s
    });
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    let snap = env.snapshot();
    for k in &changes.leavers {
        assert!(matches!(snap[k].status, Status::Left { .. }), "{k}");
    }
    if let Some(k) = &rehire {
        assert_eq!(snap[k].status, Status::Active, "rehired {k}");
        assert!(out.contains("1 rehires"), "{out}");
    }
    assert_server_matches(&scim, &snap).await;

    let store = Store::open(&env.store_path).expect("store");
    let counts = store.outbox_counts().expect("counts");
    assert_eq!(counts.get("scim").map(|c| c.dead).unwrap_or(0), 0, "no dead letters");
    drop(store);

    let (code, out, _) = run_bin(&["--config", &env.cfg, "check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS SCIM reachable"), "{out}");
    assert!(
        out.contains("department → urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"),
        "{out}"
    );
    if scim.own_extension {
        assert!(out.contains(&format!("salary → {EXT}:salary")), "{out}");
    } else {
        assert!(not_delivered(&out).contains("salary"), "{out}");
    }
}

#[tokio::test]
async fn throttling_and_outages_are_retried_and_a_conflict_is_dead_lettered() {
    let mut scim = ScimPeer::start().await;
    let proxy = FaultProxy::start(
        scim.url(),
        vec![
            Inject::new("POST", "/Users", 3, 2, 429, Some(1)),
            // The one listing of the target's users a first import reads:
            // delivery falls back to a lookup per employee.
            Inject::new("GET", "/Users?startIndex", 1, 1, 503, Some(1)),
        ],
    )
    .await;
    let env = Env::new(60, &scim_sink(&proxy.url())).await;
    // Someone else already holds one employee's e-mail at the target.
    let emu_rows = env
        .emu
        .state
        .with_data(|d| d.connectors["Profit_Employees_Alleo"].rows.clone());
    let victim = emu_rows
        .iter()
        .find(|r| r["EmploymentEnd"].is_null() && r["Mail"].is_string() && r["AlleoAccess"] == json!(true))
        .expect("an active employee")
        .clone();
    let mail = victim["Mail"].as_str().expect("mail").to_string();
    let taken = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": mail, "externalId": "not-from-afas"});
    assert_eq!(scim.post_user(&taken).await, 201);

    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "delivery incomplete: {out}");
    assert!(out.contains("1 dead-lettered"), "{out}");
    assert_eq!(proxy.injected.lock().expect("log").len(), 3, "429 twice, 503 once");
    let (_, status, _) = run_bin(&["--config", &env.cfg, "--json", "status"]).await;
    let v: Value = serde_json::from_str(&status).expect("json");
    assert_eq!(v["outbox"]["scim"]["dead"], 1, "{status}");
    let (_, human, _) = run_bin(&["--config", &env.cfg, "status"]).await;
    assert!(human.contains("1 dead-lettered (afas-sync outbox retry)"), "{human}");
    {
        let store = Store::open(&env.store_path).expect("store");
        let dead: Vec<_> = store
            .outbox_entries("scim")
            .expect("entries")
            .into_iter()
            .filter(|(_, e)| e.dead)
            .collect();
        let err = dead[0].1.last_error.clone().unwrap_or_default();
        assert!(
            err.contains("another system") && err.contains("not-from-afas") && err.contains("sink.scim.adopt"),
            "{err}"
        );
    }

    // The admin resolves the conflict at the target and retries.
    env.free_address_and_retry(&scim, "not-from-afas").await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 4, "nothing new, delivery complete: {out}");
    assert_server_matches(&scim, &env.snapshot()).await;

    // A target outage: the run commits, delivery waits, nothing is lost.
    scim.stop().await;
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        churn(d, 9, d1, 20, 20, 50);
    });
    let mut env = env;
    env_set_wait(&mut env, 2);
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 5, "{out}");
    assert!(!out.contains("0 pending"), "{out}");
    // The server comes back empty (in memory): updates find nothing and
    // re-create; the picture converges without duplicates.
    let scim = ScimPeer::start_on(scim.port).await;
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 4, "{out}");
    let snap = env.snapshot();
    let day2_keys: BTreeSet<String> = {
        let store = Store::open(&env.store_path).expect("store");
        let last = store.meta().expect("meta").last_committed_run.expect("run");
        store
            .run_mutations(last - 1)
            .expect("m")
            .into_iter()
            .map(|m| m.key.to_string())
            .collect()
    };
    assert!(!day2_keys.is_empty());
    let users = scim.users().await;
    for key in &day2_keys {
        let found: Vec<_> = users.iter().filter(|u| u["externalId"] == json!(key)).collect();
        assert_eq!(found.len(), 1, "{key} re-created exactly once");
        let p = &snap[key];
        assert_user_matches(
            found[0],
            p.employee.as_ref().expect("data"),
            p.status == Status::Active,
            scim.own_extension,
        );
    }
}

fn env_set_wait(env: &mut Env, secs: u64) {
    let text = std::fs::read_to_string(&env.cfg)
        .expect("cfg")
        .replace("sync_wait_secs = 20", &format!("sync_wait_secs = {secs}"));
    std::fs::write(&env.cfg, text).expect("cfg");
}

#[tokio::test]
async fn a_week_long_outage_keeps_entries_in_order_and_old_ones_are_dead_lettered() {
    let port = free_port();
    let emu = spawn_emulator(generate(3, 40, day0())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("scim-token"), SCIM_TOKEN).expect("token");
    let extra = format!(
        "\n[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n\n{}",
        scim_sink(&format!("http://127.0.0.1:{port}"))
    );
    let cfg_path = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, &extra);
    let config = afas_sync::config::Config::load(&cfg_path).expect("config").config;
    let store = Arc::new(Store::open(&config.store.path).expect("store"));
    let sinks = afas_sync::delivery::sinks(&config, store.clone()).expect("sinks");

    // Day 0: first import; day 1: movers and leavers for the same people.
    afas_sync::sync::run(&config, store.clone(), day0(), false)
        .await
        .expect("sync");
    let d1 = next(day0(), 1);
    emu.state.with_data(|d| {
        churn(d, 4, d1, 0, 100, 300);
    });
    afas_sync::sync::run(&config, store.clone(), d1, false)
        .await
        .expect("sync");
    let total = store.outbox_entries("scim").expect("entries").len();
    assert!(total > 40, "{total}");

    // A simulated week with the target down: retried, never dead (14 days).
    let limiters = afas_sync::delivery::Limiters::default();
    let t0 = jiff::Timestamp::now().as_second();
    for day in 0..7 {
        let r = afas_sync::delivery::deliver_pass(&config, &store, &sinks, &limiters, t0 + day * 86_400, false)
            .await
            .expect("pass");
        assert_eq!(r.delivered, 0);
        assert_eq!(r.dead_lettered, 0, "day {day}");
        assert_eq!(r.pending as usize, total);
    }
    let attempts: u32 = store
        .outbox_entries("scim")
        .expect("e")
        .iter()
        .map(|(_, e)| e.attempts)
        .max()
        .unwrap_or(0);
    assert!(attempts >= 7, "{attempts}");

    // Back after a week: everything delivered, later mutations after earlier ones.
    let scim = ScimPeer::start_on(port).await;
    let mut now = t0 + 8 * 86_400;
    for _ in 0..5 {
        let r = afas_sync::delivery::deliver_pass(&config, &store, &sinks, &limiters, now, false)
            .await
            .expect("pass");
        if r.pending == 0 {
            break;
        }
        now += 7200;
    }
    assert!(store.outbox_entries("scim").expect("e").is_empty());
    let snap: BTreeMap<String, Provisioned> = store
        .snapshot()
        .expect("snap")
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_server_matches(&scim, &snap).await;

    // The dead-letter path: with a 24 h age limit, a 2-day outage dead-letters.
    let mut short = config.clone();
    short.delivery.max_age_hours = 24;
    let d2 = next(day0(), 2);
    emu.state.with_data(|d| {
        churn(d, 8, d2, 50, 0, 100);
    });
    let mut scim = scim;
    scim.stop().await;
    afas_sync::sync::run(&short, store.clone(), d2, false)
        .await
        .expect("sync");
    let pending = store.outbox_entries("scim").expect("e").len();
    assert!(pending > 0);
    let t1 = jiff::Timestamp::now().as_second();
    let r = afas_sync::delivery::deliver_pass(&short, &store, &sinks, &limiters, t1 + 2 * 86_400, false)
        .await
        .expect("pass");
    assert!(r.dead_lettered > 0, "{r:?}");
    let counts = store.outbox_counts().expect("counts");
    assert!(counts["scim"].dead > 0);
    let scim = ScimPeer::start_on(port).await;
    let revived = store
        .outbox_retry(
            &afas_sync::store::EntryFilter {
                sink: Some("scim".into()),
                ..Default::default()
            },
            t1 + 2 * 86_400,
        )
        .expect("retry");
    assert!(revived > 0);
    let mut now = t1 + 2 * 86_400;
    for _ in 0..5 {
        let r = afas_sync::delivery::deliver_pass(&short, &store, &sinks, &limiters, now, false)
            .await
            .expect("pass");
        if r.pending == 0 {
            break;
        }
        now += 3600;
    }
    assert!(
        store.outbox_entries("scim").expect("e").is_empty(),
        "all delivered after retry"
    );
    drop(scim);
}

#[tokio::test]
async fn webhooks_are_verified_by_an_independent_implementation_including_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The receiver knows only the new secret; afas-sync signs with old and new.
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let new = "whsec_c2VjcmV0LWtleS1mb3ItYWZhcy1zeW5jLXRlc3Q=";
    let receiver = WebhookPeer::start(new, dir.path()).await;
    let env = Env::new(
        40,
        &format!(
            "[sink.webhook]\nurl = \"{}\"\nsecret_file = \"webhook-secrets\"\n",
            receiver.url()
        ),
    )
    .await;
    std::fs::write(env.dir.path().join("webhook-secrets"), format!("{old}\n{new}\n")).expect("secrets");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            env.dir.path().join("webhook-secrets"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
    }
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let got = receiver.received();
    assert!(got.iter().all(|(ok, _)| *ok), "every signature verifies");
    let types: BTreeSet<String> = got
        .iter()
        .map(|(_, b)| b["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        types.contains("employee.joined") && types.contains("sync.completed"),
        "{types:?}"
    );
    let joined = got.iter().filter(|(_, b)| b["type"] == "employee.joined").count();
    let snap = env.snapshot();
    assert_eq!(joined, snap.len());
    let first = &got
        .iter()
        .find(|(_, b)| b["type"] == "employee.joined")
        .expect("a joiner event")
        .1;
    assert_eq!(
        got.last().map(|(_, b)| b["type"].clone()),
        Some(json!("sync.completed")),
        "the run event comes last"
    );
    assert!(
        first["data"]["employee"]["email"].is_string() && first["timestamp"].is_string(),
        "{first}"
    );
    let ids: BTreeSet<String> = got.iter().map(|(_, b)| b["data"]["id"].to_string()).collect();
    assert_eq!(ids.len(), got.len(), "every event its own id");

    // A tampered body with the original headers is rejected by the receiver.
    let body = got[0].1.to_string();
    let ts = jiff::Timestamp::now().as_second();
    let key = afas_sync::delivery::webhook::secret_key(new).expect("key");
    let sig = afas_sync::delivery::webhook::sign(&[key], "evt_x", ts, &body);
    let send = |b: String| {
        http()
            .post(receiver.url())
            .header("webhook-id", "evt_x")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig.clone())
            .body(b)
            .send()
    };
    assert_eq!(send(body.clone()).await.expect("send").status().as_u16(), 204);
    assert_eq!(
        send(body.replace("employee", "employe3"))
            .await
            .expect("send")
            .status()
            .as_u16(),
        400
    );
}

#[tokio::test]
async fn file_sink_writes_whole_files_per_run() {
    // 1,500 employees: the first run's file is written from many chunks,
    // spread over the sink's threads, and must still be complete and in order.
    let env = Env::new(1500, "[sink.files]\ndir = \"out\"\ncsv_snapshot = true\n").await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        churn(d, 2, d1, 10, 10, 30);
    });
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    let outdir = env.dir.path().join("out");
    let mut names: Vec<String> = std::fs::read_dir(&outdir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "no temp files left: {names:?}"
    );
    let ndjson: Vec<&String> = names.iter().filter(|n| n.ends_with(".ndjson")).collect();
    assert_eq!(ndjson.len(), 2, "{names:?}");
    let store = Store::open(&env.store_path).expect("store");
    for (i, name) in ndjson.iter().enumerate() {
        let text = std::fs::read_to_string(outdir.join(name)).expect("read");
        let run = (i + 1) as u64;
        let mutations = store.run_mutations(run).expect("m");
        assert_eq!(text.lines().count(), mutations.len(), "{name}");
        if run == 1 {
            assert!(mutations.len() > 1000, "{}", mutations.len());
        }
        for (index, (line, m)) in text.lines().zip(&mutations).enumerate() {
            let v: Value = serde_json::from_str(line).expect("json line");
            assert_eq!(v["key"], json!(m.key.as_str()));
            let installation = store.installation_id().expect("installation");
            assert_eq!(v["id"], json!(format!("evt_{installation:016x}_{run}_{index}")));
        }
    }
    let csv = std::fs::read_to_string(outdir.join("afas-sync-snapshot-000002.csv")).expect("csv");
    let active = store
        .snapshot()
        .expect("snap")
        .values()
        .filter(|p| p.status == Status::Active)
        .count();
    assert_eq!(csv.lines().count(), active + 1);
}

#[tokio::test]
async fn sigkill_during_delivery_loses_nothing_and_duplicates_nothing() {
    // Bulk of 10 operations per request (the row says so: scim2-server's
    // default is 1000) behind 50 ms, so a delivery lasts long enough to be
    // killed in the middle.
    let dir = tempfile::tempdir().expect("tempdir");
    let spc = service_provider_config_with_bulk(dir.path(), true, true, 10);
    let scim = ScimPeer::start_with(free_port(), &["--service-provider-config", spc.to_str().expect("p")]).await;
    let proxy = FaultProxy::start_slow(scim.url(), vec![], std::time::Duration::from_millis(50)).await;
    let env = Env::new(400, &scim_sink(&proxy.url())).await;
    let seed = jiff::Timestamp::now().as_nanosecond() as u64;
    eprintln!("delivery crash test seed {seed}");
    let mut rng = afas_sync::emulator::data::Rng::new(seed);
    let mut killed = 0;
    for i in 0..6 {
        let as_of = next(day0(), i);
        if i > 0 {
            env.emu.state.with_data(|d| {
                churn(d, i as u64, as_of, 20, 10, 50);
            });
        }
        // Killed after a random number of Bulk requests of this run have
        // reached the target: in the middle of its delivery, however fast
        // the machine (a first import sends about 40, a churn day about 8).
        let before = proxy.requests.lock().expect("log").len();
        let after_bulks = 1 + rng.below(12) as usize;
        let mut child = spawn_sync(&env.cfg, as_of);
        loop {
            tokio::select! {
                _ = child.wait() => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(2)) => {
                    let sent = proxy.requests.lock().expect("log")[before..]
                        .iter()
                        .filter(|r| r.contains("/Bulk"))
                        .count();
                    if sent >= after_bulks {
                        child.start_kill().expect("kill");
                        let _ = child.wait().await;
                        killed += 1;
                        break;
                    }
                }
            }
        }
    }
    assert!(killed > 0, "the kills must interrupt deliveries");
    // Catch up: the last day again until AFAS and the target agree.
    let last = next(day0(), 5);
    let (mut code, mut out) = env.sync(last).await;
    for _ in 0..3 {
        if code == 4 || code == 0 {
            break;
        }
        (code, out) = env.sync(last).await;
    }
    assert!(code == 0 || code == 4, "{out}");
    assert_server_matches(&scim, &env.snapshot()).await;
}

#[tokio::test]
async fn without_patch_support_updates_are_whole_replacements() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spc = service_provider_config(dir.path(), false, true);
    let scim = ScimPeer::start_with(free_port(), &["--service-provider-config", spc.to_str().expect("p")]).await;
    let proxy = FaultProxy::start(scim.url(), vec![Inject::new("PATCH", "/Users", 1, 1000, 501, None)]).await;
    let env = Env::new(40, &scim_sink(&proxy.url())).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        churn(d, 6, d1, 0, 50, 200);
    });
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    assert!(proxy.injected.lock().expect("log").is_empty(), "no PATCH was sent");
    assert_server_matches(&scim, &env.snapshot()).await;
}

#[tokio::test]
async fn refused_credentials_stop_the_sink_and_keep_everything_pending() {
    let scim = ScimPeer::start().await;
    let env = Env::new(20, &scim_sink(&scim.url())).await;
    std::fs::write(env.dir.path().join("scim-token"), "wrong-token").expect("token");
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("delivery to scim stopped") && out.contains("refused the credentials (HTTP 401)"),
        "{out}"
    );
    assert!(!out.contains("wrong-token"), "the token is never printed");
    let store = Store::open(&env.store_path).expect("store");
    let entries = store.outbox_entries("scim").expect("entries");
    assert!(
        !entries.is_empty() && entries.iter().all(|(_, e)| !e.dead && e.attempts == 0),
        "nothing spent, nothing lost"
    );
    drop(store);
    // The list says why everything waits: the sink is stopped.
    let (code, list, err) = common::run_bin(&["--config", &env.cfg, "outbox", "list", "--state", "stopped"]).await;
    assert_eq!(code, 0, "{list}{err}");
    assert!(
        list.starts_with("scim is STOPPED: ") && list.contains("refused the credentials (HTTP 401)"),
        "{list}"
    );
    assert!(list.contains(" stopped "), "{list}");
    assert!(!list.contains("wrong-token"), "the token is never printed");
    std::fs::write(env.dir.path().join("scim-token"), SCIM_TOKEN).expect("token");
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 4, "{out}");
    assert_server_matches(&scim, &env.snapshot()).await;
}

#[tokio::test]
async fn a_stale_version_412_is_read_again_and_retried_later_when_it_persists() {
    let scim = ScimPeer::start().await;
    // One at a time, so PATCH number N belongs to a known user: the first
    // changed user's PATCH meets 412 once (someone changed it in between);
    // the fourth user's meets it three times in a row.
    let proxy = FaultProxy::start(
        scim.url(),
        vec![
            Inject::new("PATCH", "/Users", 1, 1, 412, None),
            Inject::new("PATCH", "/Users", 6, 3, 412, None),
        ],
    )
    .await;
    let env = Env::new(40, &scim_sink(&proxy.url())).await;
    env.one_request_at_a_time();
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        churn(d, 8, d1, 0, 0, 300);
    });
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 5, "one user is still pending: {out}");
    assert!(out.contains("1 to retry") && out.contains("0 dead-lettered"), "{out}");
    assert_eq!(
        proxy.injected.lock().expect("log").len(),
        4,
        "412 once, then three times"
    );
    let store = Store::open(&env.store_path).expect("store");
    let entries = store.outbox_entries("scim").expect("entries");
    assert_eq!(entries.len(), 1, "only the user that kept changing waits");
    assert!(
        entries[0]
            .1
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("412 three times"))
            && !entries[0].1.dead,
        "{:?}",
        entries[0].1
    );
    drop(store);
    // The next pass (the proxy injects no more) delivers it: nothing lost.
    let (code, out, _) = run_bin(&["--config", &env.cfg, "outbox", "retry"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = env.sync(d1).await;
    assert!(code == 0 || code == 4, "{out}");
    assert_server_matches(&scim, &env.snapshot()).await;
}

/// The target side of the fault matrix not covered above: a 500, an answer
/// lost after the server applied the request (connection closed), a server
/// that applies a request and never answers (timeout), and a connection
/// closed before anything was sent. Each is retried; none duplicates a user.
#[tokio::test]
async fn server_errors_lost_answers_timeouts_and_resets_are_retried_without_duplicates() {
    let scim = ScimPeer::start().await;
    // One at a time, so the Nth request of a kind belongs to one employee.
    let proxy = FaultProxy::start(
        scim.url(),
        vec![
            Inject::new("POST", "/Users", 2, 1, 500, None),
            Inject::new("POST", "/Users", 5, 1, FORWARD_THEN_RESET, None),
            Inject::new("POST", "/Users", 9, 1, FORWARD_THEN_HANG, None),
            Inject::new("GET", "/Users?startIndex", 1, 1, RESET, None),
            Inject::new("GET", "/Users?filter", 40, 1, RESET, None),
            // The 4th PATCH: the first two write the joiners whose create
            // timed out or lost its answer (found, and written whole), the
            // next two are the movers'.
            Inject::new("PATCH", "/Users", 4, 1, FORWARD_THEN_RESET, None),
        ],
    )
    .await;
    let env = Env::new(
        60,
        &scim_sink(&proxy.url()).replace("timeout_secs = 10", "timeout_secs = 2"),
    )
    .await;
    env.one_request_at_a_time();

    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "three employees wait for a retry: {out}");
    assert!(out.contains("3 pending") && out.contains("0 dead-lettered"), "{out}");
    let injected: Vec<u16> = proxy.injected.lock().expect("log").iter().map(|(_, s)| *s).collect();
    assert_eq!(
        injected,
        vec![RESET, 500, FORWARD_THEN_RESET, FORWARD_THEN_HANG, RESET],
        "{injected:?}"
    );
    {
        // The timeout means a busy target: retried within the same sync
        // after a short wait (and found, not created twice); the others
        // wait for the normal backoff.
        let store = Store::open(&env.store_path).expect("store");
        let entries = store.outbox_entries("scim").expect("entries");
        let mut errors: Vec<String> = entries
            .iter()
            .map(|(_, e)| {
                assert!(!e.dead && e.attempts == 1, "{e:?}");
                e.last_error.clone().unwrap_or_default()
            })
            .collect();
        errors.sort();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(
            errors
                .iter()
                .filter(|e| e.contains("cannot reach the SCIM server"))
                .count(),
            2,
            "{errors:?}"
        );
        assert_eq!(errors.iter().filter(|e| e.contains("500")).count(), 1, "{errors:?}");
    }
    let (_, status, _) = run_bin(&["--config", &env.cfg, "--json", "status"]).await;
    let v: Value = serde_json::from_str(&status).expect("json");
    assert_eq!(v["outbox"]["scim"]["dead"], 0, "{status}");
    assert_eq!(v["outbox"]["scim"]["pending"], 3, "{status}");
    // The user whose answer was lost, and the one whose answer never came,
    // exist at the server already; the retry must find them, not add a
    // second copy.
    assert_eq!(
        scim.users().await.len(),
        env.snapshot().len() - 2,
        "all but the 500 and the reset-before-sending reached the server"
    );

    let (code, out, _) = run_bin(&["--config", &env.cfg, "outbox", "retry"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 4, "nothing new, delivery complete: {out}");
    assert_server_matches(&scim, &env.snapshot()).await;

    // Movers: the second PATCH is applied and its answer lost; the retry
    // repeats the same operations, which changes nothing further.
    let d1 = next(day0(), 1);
    env.emu.state.with_data(|d| {
        churn(d, 8, d1, 0, 0, 300);
    });
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("1 to retry"), "{out}");
    let (code, out, _) = run_bin(&["--config", &env.cfg, "outbox", "retry"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 4, "{out}");
    assert_server_matches(&scim, &env.snapshot()).await;
    assert_eq!(proxy.injected.lock().expect("log").len(), 6);
}

/// A held run's `sync.held` and, once approved, its `sync.completed` are
/// two events with two ids: a receiver that drops repeats by id keeps both.
#[tokio::test]
async fn a_held_and_then_approved_run_sends_two_events_with_two_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "whsec_c2VjcmV0LWtleS1mb3ItYWZhcy1zeW5jLXRlc3Q=";
    let receiver = WebhookPeer::start(secret, dir.path()).await;
    let env = Env::new(
        12,
        &format!(
            "[sink.webhook]\nurl = \"{}\"\nsecret_file = \"webhook-secrets\"\n",
            receiver.url()
        ),
    )
    .await;
    let secrets = env.dir.path().join("webhook-secrets");
    std::fs::write(&secrets, format!("{secret}\n")).expect("secrets");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    env.max_leavers(1);
    let leaving: Vec<String> = env.snapshot().into_keys().take(3).collect();
    env.end_contracts(&leaving);
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 3, "held: {out}");
    let (code, out, err) = common::run_bin(&["--config", &env.cfg, "plan", "approve", "2"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let got = receiver.received();
    assert!(got.iter().all(|(ok, _)| *ok), "every signature verifies");
    let of_run_2: Vec<&Value> = got
        .iter()
        .map(|(_, b)| b)
        .filter(|b| b["data"]["run"] == 2 && b["type"].as_str().is_some_and(|t| t.starts_with("sync.")))
        .collect();
    let types: Vec<&str> = of_run_2.iter().filter_map(|b| b["type"].as_str()).collect();
    assert!(
        types.contains(&"sync.held") && types.contains(&"sync.completed"),
        "{types:?}"
    );
    let ids: BTreeSet<String> = got.iter().map(|(_, b)| b["data"]["id"].to_string()).collect();
    assert_eq!(ids.len(), got.len(), "no two events share an id: {ids:?}");
}
