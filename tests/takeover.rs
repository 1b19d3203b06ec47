//! A target that already holds the company (Alleo's own import, a CSV,
//! Entra): the real binary matches each employee to the user it already
//! has and adopts it, or names the conflict — never a second account. And
//! the HR days against servers that behave as other SCIM servers do (a
//! quirk proxy in front of scim2-server, one quirk per row).

mod common;

use std::collections::BTreeMap;

use afas_sync::emulator::data::churn;
use afas_sync::store::Store;
use afas_sync::sync::plan::Status;
use common::peers::*;
use common::quirks::{Quirk, QuirkProxy};
use common::run_bin;
use common::sync_env::*;
use serde_json::{json, Map, Value};

/// How the earlier import wrote the company's users.
#[derive(Clone, Copy, PartialEq)]
enum Earlier {
    /// userName = the work e-mail, no externalId.
    Plain,
    /// The same in upper case.
    UpperCase,
    /// userName from another scheme; the address only in `emails`.
    EmailsOnly,
    /// Linked to another system's externalId.
    Linked,
}

fn rows(env: &Env) -> Vec<Map<String, Value>> {
    env.emu
        .state
        .with_data(|d| d.connectors["Profit_Employees_Alleo"].rows.clone())
}

/// Fills the target with the company's employees as `how` says; the keys
/// of the employees whose users it made.
async fn prefill(scim: &ScimPeer, env: &Env, how: Earlier) -> Vec<String> {
    let mut made = Vec::new();
    for r in rows(env) {
        let (Some(mail), true) = (r["Mail"].as_str(), r["AlleoAccess"] == json!(true)) else {
            continue;
        };
        let id = r["EmployeeId"].as_str().expect("id");
        let user_name = match how {
            Earlier::UpperCase => mail.to_uppercase(),
            Earlier::EmailsOnly => format!("legacy-{id}@import.example"),
            _ => mail.to_string(),
        };
        let mut user = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user_name,
            "name": {"givenName": "Imported", "familyName": "Person", "honorificPrefix": "Dr."},
            "title": "kept by afas-sync",
            "emails": [{"type": "work", "value": mail, "primary": true}],
            "active": true,
        });
        if how == Earlier::Linked {
            user["externalId"] = json!(format!("entra-{id}"));
        }
        assert_eq!(scim.post_user(&user).await, 201, "{user}");
        made.push(id.to_string());
    }
    made
}

fn outbox(env: &Env) -> (u64, u64, Vec<String>) {
    let store = Store::open(&env.store_path).expect("store");
    let entries = store.outbox_entries("scim").expect("entries");
    let dead: Vec<String> = entries
        .iter()
        .filter(|(_, e)| e.dead)
        .map(|(_, e)| e.last_error.clone().unwrap_or_default())
        .collect();
    let pending = entries.iter().filter(|(_, e)| !e.dead).count() as u64;
    (dead.len() as u64, pending, dead)
}

/// Every employee in the snapshot is linked to exactly one user, which is
/// as the snapshot says; the users afas-sync adopted kept what it does not
/// map; no employee got a second account.
async fn assert_taken_over(scim: &ScimPeer, env: &Env, prefilled: &[String]) {
    let snap = env.snapshot();
    let users = scim.users().await;
    let mut linked: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for u in &users {
        if let Some(k) = u["externalId"].as_str() {
            linked.entry(k.to_string()).or_default().push(u);
        }
    }
    for (key, p) in &snap {
        let list = linked.get(key).unwrap_or_else(|| panic!("{key} is linked to no user"));
        assert_eq!(list.len(), 1, "{key} has {} users", list.len());
        let e = p.employee.as_ref().expect("data");
        assert_user_matches(list[0], e, p.status == Status::Active, false);
    }
    let adopted = users.iter().filter(|u| u["title"] == "kept by afas-sync").count();
    assert_eq!(
        adopted,
        prefilled.len(),
        "every earlier user is still there, with what afas-sync does not map"
    );
    let fresh = snap.keys().filter(|k| !prefilled.contains(k)).count();
    let made: Vec<String> = users
        .iter()
        .filter(|u| u["title"] != "kept by afas-sync")
        .map(|u| format!("{} {}", u["userName"], u["externalId"]))
        .collect();
    assert_eq!(
        users.len(),
        prefilled.len() + fresh,
        "never a second account: made {made:?}"
    );
}

async fn takeover(how: Earlier, adopt: Option<&str>) -> (Env, ScimPeer, Vec<String>, i32, String) {
    let scim = ScimPeer::start().await;
    let mut sink = scim_sink(&scim.url());
    if let Some(a) = adopt {
        sink.push_str(&format!("adopt = \"{a}\"\n"));
    }
    let env = Env::new(120, &sink).await;
    let n = prefill(&scim, &env, how).await;
    assert!(n.len() > 90, "{}", n.len());
    let (code, out) = env.sync(day0()).await;
    (env, scim, n, code, out)
}

#[tokio::test]
async fn users_without_an_external_id_are_adopted_by_their_user_name() {
    let (env, scim, n, code, out) = takeover(Earlier::Plain, None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(outbox(&env), (0, 0, vec![]), "{out}");
    assert_taken_over(&scim, &env, &n).await;
}

#[tokio::test]
async fn user_names_in_upper_case_are_matched_case_insensitively() {
    let (env, scim, n, code, out) = takeover(Earlier::UpperCase, None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(outbox(&env), (0, 0, vec![]), "{out}");
    assert_taken_over(&scim, &env, &n).await;
}

#[tokio::test]
async fn an_address_only_in_emails_is_matched_and_the_user_name_follows() {
    let (env, scim, n, code, out) = takeover(Earlier::EmailsOnly, None).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(outbox(&env), (0, 0, vec![]), "{out}");
    assert_taken_over(&scim, &env, &n).await;
}

#[tokio::test]
async fn users_linked_to_another_system_are_conflicts_unless_adopt_is_any() {
    let (env, scim, n, code, out) = takeover(Earlier::Linked, None).await;
    assert_eq!(code, 5, "{out}");
    let (dead, pending, reasons) = outbox(&env);
    let snap = env.snapshot();
    let matched = snap.keys().filter(|k| n.contains(k)).count();
    let fresh = snap.len() - matched;
    assert_eq!((dead as usize, pending), (matched, 0), "{out}");
    for r in &reasons {
        assert!(
            r.contains("linked to externalId entra-") && r.contains("sink.scim.adopt = \"any\""),
            "{r}"
        );
    }
    // Nothing was written to them, and nobody got a second account.
    let users = scim.users().await;
    assert_eq!(users.len(), n.len() + fresh);
    assert!(users
        .iter()
        .filter(|u| u["title"] == "kept by afas-sync")
        .all(|u| u["externalId"].as_str().is_some_and(|x| x.starts_with("entra-"))));

    let (env, scim, n, code, out) = takeover(Earlier::Linked, Some("any")).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(outbox(&env), (0, 0, vec![]), "{out}");
    assert_taken_over(&scim, &env, &n).await;
}

#[tokio::test]
async fn adopt_never_leaves_every_earlier_user_alone() {
    let (env, scim, n, code, out) = takeover(Earlier::Plain, Some("never")).await;
    assert_eq!(code, 5, "{out}");
    let (dead, _, reasons) = outbox(&env);
    let snap = env.snapshot();
    let matched = snap.keys().filter(|k| n.contains(k)).count();
    assert_eq!(dead as usize, matched, "{out}");
    assert!(reasons.iter().all(|r| r.contains("adopt = \"never\"")), "{reasons:?}");
    let users = scim.users().await;
    assert!(users
        .iter()
        .all(|u| u.get("externalId").is_none() || u["title"] != "kept by afas-sync"));
    assert_eq!(users.len(), n.len() + snap.len() - matched, "never a second account");
}

#[tokio::test]
async fn users_no_employee_matches_are_kept_as_they_are() {
    let scim = ScimPeer::start().await;
    let env = Env::new(60, &scim_sink(&scim.url())).await;
    let n = prefill(&scim, &env, Earlier::Plain).await;
    let former = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "left.before@bedrijf.example", "active": true});
    assert_eq!(scim.post_user(&former).await, 201);
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(outbox(&env), (0, 0, vec![]), "{out}");
    let users = scim.users().await;
    let kept = users
        .iter()
        .find(|u| u["userName"] == "left.before@bedrijf.example")
        .expect("kept");
    assert_eq!(kept["active"], json!(true));
    assert!(kept.get("externalId").is_none());
    let fresh = env.snapshot().keys().filter(|k| !n.contains(k)).count();
    assert_eq!(users.len(), n.len() + fresh + 1);
    let (code, out, err) = run_bin(&["--config", &env.cfg, "unmanaged"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let all = unmanaged_names(&env, &n, &["left.before@bedrijf.example".into()]).len();
    assert!(
        out.contains(&format!("{all} target users no employee matches, {all} of them active")),
        "{out}"
    );
    assert!(out.contains("left.before@bedrijf.example"), "{out}");
    assert!(out.contains("kept (sink.scim.unmanaged = \"keep\")"), "{out}");
    let users = scim.users().await;
    assert!(users
        .iter()
        .any(|u| u["userName"] == "left.before@bedrijf.example" && u["active"] == json!(true)));
}

/// A target like [`prefill`] makes, plus `active` users who left before
/// afas-sync came (and one already inactive), under
/// `sink.scim.unmanaged = "deactivate"` and `guards.max_leavers`.
async fn with_former_users(active: usize, max_leavers: u64) -> (Env, ScimPeer, Vec<String>, Vec<String>) {
    let scim = ScimPeer::start().await;
    let sink = format!("{}unmanaged = \"deactivate\"\n", scim_sink(&scim.url()));
    let env = Env::new(60, &sink).await;
    let text = std::fs::read_to_string(&env.cfg).expect("config");
    let text = text.replacen("[guards]\n", &format!("[guards]\nmax_leavers = {max_leavers}\n"), 1);
    std::fs::write(&env.cfg, text).expect("config");
    let made = prefill(&scim, &env, Earlier::Plain).await;
    let mut former = Vec::new();
    for i in 0..=active {
        let name = format!("left.before.{i}@bedrijf.example");
        let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": name, "active": i < active});
        assert_eq!(scim.post_user(&user).await, 201);
        former.push(name);
    }
    (env, scim, made, former)
}

/// The users no employee matches once the first import is in: the
/// `former` ones, and those [`prefill`] made for people who left before.
fn unmanaged_names(env: &Env, made: &[String], former: &[String]) -> Vec<String> {
    let snap = env.snapshot();
    let gone = rows(env)
        .into_iter()
        .filter(|r| made.iter().any(|m| r["EmployeeId"] == m.as_str()))
        .filter(|r| !snap.contains_key(r["EmployeeId"].as_str().unwrap_or_default()))
        .filter_map(|r| r["Mail"].as_str().map(String::from));
    former.iter().cloned().chain(gone).collect()
}

/// Whether each named user is active; and whether every other user is
/// linked to an employee and active.
async fn target_state(scim: &ScimPeer, names: &[String]) -> (Vec<bool>, bool) {
    let users = scim.users().await;
    let state = names
        .iter()
        .map(|n| {
            let u = users.iter().find(|u| u["userName"] == n.as_str()).expect("user");
            u["active"] == json!(true)
        })
        .collect();
    let employees_ok = users
        .iter()
        .filter(|u| !names.iter().any(|n| u["userName"] == n.as_str()))
        .all(|u| u.get("externalId").is_some() && u["active"] == json!(true));
    (state, employees_ok)
}

/// Gives the rows AFAS rejected (no address) one, so nothing is rejected.
fn fix_rejected_rows(env: &Env) {
    env.emu.state.with_data(|d| {
        let rows = &mut d.connectors.get_mut("Profit_Employees_Alleo").expect("employees").rows;
        for r in rows.iter_mut().filter(|r| !r["Mail"].is_string()) {
            let id = r["EmployeeId"].as_str().unwrap_or_default().to_string();
            r.insert("Mail".into(), json!(format!("fixed.{id}@bedrijf.example")));
        }
    });
}

#[tokio::test]
async fn unmanaged_users_within_the_leaver_limit_are_deactivated_once_no_row_is_rejected() {
    let (env, scim, made, former) = with_former_users(2, 10).await;
    // Day 0 rejects two rows: their employees might hold one of the users.
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("run 1 rejected 2 AFAS rows"), "{out}");
    assert!(out.contains("`afas-sync run show 1`"), "{out}");
    assert_eq!(outbox(&env), (0, 0, vec![]), "the employees were delivered: {out}");
    let names = unmanaged_names(&env, &made, &former);
    let (state, linked) = target_state(&scim, &names).await;
    assert_eq!(
        state.iter().filter(|a| **a).count(),
        names.len() - 1,
        "none deactivated: {out}"
    );
    assert!(linked, "every employee's user is linked and active");

    fix_rejected_rows(&env);
    let (code, out) = env.sync(next(day0(), 1)).await;
    assert_eq!(code, 0, "{out}");
    let active = names.len() - 1;
    assert!(active <= 10 && active > 2, "{names:?}");
    assert!(out.contains(&format!("{active} deactivated, 0 failed")), "{out}");
    assert_eq!(
        target_state(&scim, &names).await,
        (vec![false; names.len()], true),
        "{out}"
    );
    let (code, out, err) = run_bin(&["--config", &env.cfg, "unmanaged"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let all = names.len();
    assert!(
        out.contains(&format!("{all} target users no employee matches, 0 of them active")),
        "{out}"
    );
    // Nothing left to do: the next day deactivates nothing.
    let (code, out) = env.sync(next(day0(), 2)).await;
    assert!(code == 0 || code == 4, "{out}");
    assert!(!out.contains("deactivated"), "{out}");
}

#[tokio::test]
async fn unmanaged_users_above_the_leaver_limit_wait_for_the_number_seen() {
    let (env, scim, made, former) = with_former_users(5, 3).await;
    let (code, out) = env.sync(day0()).await;
    let names = unmanaged_names(&env, &made, &former);
    let n = names.len() - 1;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("HELD, nothing was deactivated"), "{out}");
    assert!(out.contains(&format!("{n} active target users")), "{out}");
    assert!(out.contains("guards.max_leavers = 3"), "{out}");
    assert!(
        out.contains(&format!("`afas-sync unmanaged --deactivate {n}`")),
        "{out}"
    );
    assert_eq!(outbox(&env), (0, 0, vec![]), "the employees were delivered: {out}");
    let before = target_state(&scim, &names).await;
    assert_eq!(before.0.iter().filter(|a| **a).count(), n);
    assert!(before.1);

    let (code, out, _) = run_bin(&["--config", &env.cfg, "--json", "unmanaged"]).await;
    assert_eq!(code, 3, "{out}");
    let v: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (v["active"].clone(), v["approval"].clone()),
        (json!(n), json!(true)),
        "{v}"
    );
    assert_eq!(v["users"].as_array().map(Vec::len), Some(n), "{v}");

    let fewer = (n - 1).to_string();
    let (code, out, err) = run_bin(&["--config", &env.cfg, "unmanaged", "--deactivate", &fewer]).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains(&format!("asked to deactivate {fewer}, but {n}")), "{out}");
    assert_eq!(target_state(&scim, &names).await, before);

    let (code, out, err) = run_bin(&["--config", &env.cfg, "unmanaged", "--deactivate", &n.to_string()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{n} deactivated, 0 failed")), "{out}");
    assert_eq!(target_state(&scim, &names).await, (vec![false; names.len()], true));
}

/// Day 0 a first import; day 1 joiners, movers and leavers; day 2 one of
/// them rehired and two employees who swap addresses. Ends with the target
/// equal to the snapshot and nothing dead-lettered or waiting.
async fn churn_days(env: &Env, scim: &ScimPeer) {
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let d1 = next(day0(), 1);
    let s = env.emu.state.with_data(|d| churn(d, 7, d1, 30, 30, 100));
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(outbox(env), (0, 0, vec![]), "{out}");
    let d2 = next(d1, 1);
    let rehire = s.leavers[0].clone();
    env.emu.state.with_data(|d| {
        for (c, field) in [
            ("Profit_Employees_Alleo", "EmploymentEnd"),
            ("Profit_Contract", "DateEnd"),
        ] {
            if let Some(conn) = d.connectors.get_mut(c) {
                for row in conn.rows.iter_mut().filter(|r| r["EmployeeId"] == json!(rehire)) {
                    row.insert(field.into(), Value::Null);
                }
            }
        }
        let rows = &mut d.connectors.get_mut("Profit_Employees_Alleo").expect("employees").rows;
        let stay: Vec<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r["EmploymentEnd"].is_null() && r["AlleoAccess"] == json!(true) && r["Mail"].is_string())
            .filter(|(_, r)| r["EmployeeId"] != json!(rehire))
            .map(|(i, _)| i)
            .take(2)
            .collect();
        let (a, b) = (rows[stay[0]]["Mail"].clone(), rows[stay[1]]["Mail"].clone());
        rows[stay[0]].insert("Mail".into(), b);
        rows[stay[1]].insert("Mail".into(), a);
    });
    let (code, out) = env.sync(d2).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 rehires"), "{out}");
    assert_eq!(outbox(env), (0, 0, vec![]), "{out}");
    let snap = env.snapshot();
    let mut linked: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for u in scim.users().await {
        if let Some(k) = u["externalId"].as_str() {
            linked.entry(k.to_string()).or_default().push(u.clone());
        }
    }
    assert_eq!(linked.len(), snap.len(), "one user per provisioned employee");
    for (key, p) in &snap {
        let list = &linked[key];
        assert_eq!(list.len(), 1, "{key} has {} users", list.len());
        assert_user_matches(
            &list[0],
            p.employee.as_ref().expect("data"),
            p.status == Status::Active,
            false,
        );
    }
}

/// A row: scim2-server (with `spc` as its ServiceProviderConfig when
/// given) behind a proxy with `quirk`, the churn days, and what the
/// quirk did.
async fn quirk_row(quirk: Option<Quirk>, spc: Option<(bool, bool, u32, bool)>) -> Vec<String> {
    quirk_row_with(quirk, spc, false).await
}

/// As [`quirk_row`]; with `prefilled`, the target already holds the
/// company from an earlier import (so the first import reads a listing of
/// more than 100 users).
async fn quirk_row_with(quirk: Option<Quirk>, spc: Option<(bool, bool, u32, bool)>, prefilled: bool) -> Vec<String> {
    let dir = tempfile::tempdir().expect("dir");
    let scim = match spc {
        Some((patch, etag, bulk, filter)) => {
            let f = service_provider_config_filter(dir.path(), patch, etag, bulk, filter);
            ScimPeer::start_with(free_port(), &["--service-provider-config", f.to_str().expect("p")]).await
        }
        None => ScimPeer::start().await,
    };
    let proxy = match quirk {
        Some(q) => Some(QuirkProxy::start(scim.url(), q).await),
        None => None,
    };
    let url = proxy.as_ref().map_or(scim.url(), QuirkProxy::url);
    // Each change its own request, so every single-change path meets the
    // quirk (Bulk has its own row).
    let sink = format!("{}bulk = false\n", scim_sink(&url));
    // More than two pages of 100, so a capped `count` changes the answers.
    let env = Env::new(if prefilled { 260 } else { 60 }, &sink).await;
    if prefilled {
        prefill(&scim, &env, Earlier::Plain).await;
    }
    churn_days(&env, &scim).await;
    proxy.map(|p| p.hits()).unwrap_or_default()
}

#[tokio::test]
async fn quirk_meta_in_attributes_refused() {
    let hits = quirk_row(Some(Quirk::MetaAttributes400), None).await;
    assert!(!hits.is_empty(), "the quirk was met");
}

#[tokio::test]
async fn quirk_attributes_ignored() {
    let hits = quirk_row(Some(Quirk::AttributesIgnored), None).await;
    assert!(!hits.is_empty(), "the quirk was met");
}

#[tokio::test]
async fn quirk_external_id_filter_silently_dropped() {
    let hits = quirk_row(Some(Quirk::ExternalIdFilterDropped), None).await;
    assert!(!hits.is_empty(), "the quirk was met");
}

#[tokio::test]
async fn quirk_no_filter_declared() {
    quirk_row(None, Some((true, true, 1000, false))).await;
}

#[tokio::test]
async fn quirk_count_capped_at_100() {
    let hits = quirk_row_with(Some(Quirk::CountCapped), None, true).await;
    assert!(hits.iter().any(|h| h.starts_with("capped count")), "{hits:?}");
}

#[tokio::test]
async fn quirk_first_page_again_past_the_end() {
    let hits = quirk_row_with(Some(Quirk::PastEndFirstPage), None, true).await;
    assert!(hits.iter().any(|h| h.starts_with("first page again")), "{hits:?}");
}

#[tokio::test]
async fn quirk_patch_501_moves_to_put() {
    let hits = quirk_row(Some(Quirk::Patch501), None).await;
    assert!(!hits.is_empty(), "the quirk was met");
}

#[tokio::test]
async fn quirk_complex_replace_500_is_never_met() {
    let hits = quirk_row(Some(Quirk::ComplexReplace500), None).await;
    assert!(hits.is_empty(), "`name` is written by its parts: {hits:?}");
}

#[tokio::test]
async fn quirk_uniqueness_500_instead_of_409() {
    let hits = quirk_row(Some(Quirk::Uniqueness500), None).await;
    assert!(
        hits.iter().any(|h| h.starts_with("500 for 409")),
        "the address swap met it: {hits:?}"
    );
}

#[tokio::test]
async fn quirk_no_etags() {
    quirk_row(None, Some((true, false, 1000, true))).await;
}

#[tokio::test]
async fn quirk_no_bulk() {
    quirk_row(None, Some((true, true, 0, true))).await;
}

#[tokio::test]
async fn a_dry_run_previews_the_takeover_without_writing() {
    let scim = ScimPeer::start().await;
    let env = Env::new(60, &scim_sink(&scim.url())).await;
    prefill(&scim, &env, Earlier::Plain).await;
    // One user of another system with an employee's address, and one that
    // no employee matches.
    let users = scim.users().await;
    let victim = users.iter().find(|u| u["title"] == "kept by afas-sync").expect("user");
    let victim_mail = victim["userName"].as_str().expect("u").to_string();
    let victim_id = victim["id"].as_str().expect("id").to_string();
    scim.delete_user(&victim_id).await;
    let other = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": victim_mail, "externalId": "okta-1"});
    assert_eq!(scim.post_user(&other).await, 201);
    let former = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "left.before@bedrijf.example"});
    assert_eq!(scim.post_user(&former).await, 201);
    let before = scim.users().await;

    let (code, out, err) = run_bin(&[
        "--config",
        &env.cfg,
        "sync",
        "--dry-run",
        "--as-of",
        &day0().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("not managed by afas-sync"), "{out}");
    assert!(out.contains("left.before@bedrijf.example"), "{out}");
    assert!(out.contains("linked to externalId okta-1"), "{out}");
    let (code, json_out, err) = run_bin(&[
        "--config",
        &env.cfg,
        "--json",
        "sync",
        "--dry-run",
        "--as-of",
        &day0().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&json_out).expect("json");
    let t = &v["scim"];
    assert_eq!(t["users_at_target"], json!(before.len()));
    assert_eq!(t["conflicts"], json!(1), "{t}");
    assert_eq!(t["linked"], json!(0), "{t}");
    // Every user is matched, in conflict, or not managed (the one that
    // left before, and earlier users of rows AFAS now rejects).
    let unmanaged = t["unmanaged_list"].as_array().expect("list");
    assert!(
        unmanaged
            .iter()
            .any(|u| u["user_name"] == "left.before@bedrijf.example"),
        "{t}"
    );
    assert!(!unmanaged.iter().any(|u| u["external_id"] == "okta-1"), "{t}");
    assert_eq!(
        t["adopt"].as_u64().expect("n") + t["conflicts"].as_u64().expect("n") + t["unmanaged"].as_u64().expect("n"),
        before.len() as u64,
        "{t}"
    );
    assert!(t["adoptions"]
        .as_array()
        .expect("list")
        .iter()
        .all(|a| a["rule"] == "userName"));
    // Nothing was written.
    assert_eq!(scim.users().await, before);
    assert!(!env.store_path.exists() || env.snapshot().is_empty());
}

#[tokio::test]
async fn check_tries_the_lookups_delivery_depends_on() {
    let scim = ScimPeer::start().await;
    let env = Env::new(30, &scim_sink(&scim.url())).await;
    prefill(&scim, &env, Earlier::Plain).await;
    let (code, out, _) = run_bin(&["--config", &env.cfg, "check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASS SCIM listing"), "{out}");
    assert!(
        out.contains("PASS SCIM lookups") && out.contains("userName (an existing user)"),
        "{out}"
    );
    assert!(
        out.contains("PASS SCIM delivery will use") && out.contains("filter lookups"),
        "{out}"
    );

    // A server that drops the externalId filter: delivery will match from
    // the listing, and check says so.
    let proxy = QuirkProxy::start(scim.url(), Quirk::ExternalIdFilterDropped).await;
    let env2 = Env::new(30, &scim_sink(&proxy.url())).await;
    let (code, out, _) = run_bin(&["--config", &env2.cfg, "check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cannot be trusted"), "{out}");

    // A server that refuses the listing: delivery cannot match, check FAILs
    // with the target's words.
    let refuse = FaultProxy::start(scim.url(), vec![Inject::new("GET", "/Users?", 1, 1000, 403, None)]).await;
    let env3 = Env::new(30, &scim_sink(&refuse.url())).await;
    let (code, out, _) = run_bin(&["--config", &env3.cfg, "check"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL SCIM listing"), "{out}");
}

#[tokio::test]
async fn two_employees_never_adopt_one_user() {
    let scim = ScimPeer::start().await;
    let env = Env::new(60, &scim_sink(&scim.url())).await;
    let mails: Vec<(String, String)> = rows(&env)
        .into_iter()
        .filter(|r| r["Mail"].is_string() && r["AlleoAccess"] == json!(true) && r["EmploymentEnd"].is_null())
        .map(|r| {
            (
                r["EmployeeId"].as_str().expect("id").to_string(),
                r["Mail"].as_str().expect("m").to_string(),
            )
        })
        .take(2)
        .collect();
    let ((a, a_mail), (b, b_mail)) = (mails[0].clone(), mails[1].clone());
    // One earlier user carries A's address as its userName and B's among
    // its e-mail addresses: both match it.
    let shared = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": a_mail,
        "emails": [{"type": "work", "value": b_mail}], "title": "kept by afas-sync"});
    assert_eq!(scim.post_user(&shared).await, 201);
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 5, "{out}");
    let (dead, pending, reasons) = outbox(&env);
    assert_eq!((dead, pending), (1, 0), "{out}");
    let users = scim.users().await;
    let holder = users.iter().find(|u| u["title"] == "kept by afas-sync").expect("user");
    let owner = holder["externalId"].as_str().expect("adopted by one");
    assert!(owner == a || owner == b, "{holder}");
    let r = &reasons[0];
    assert!(r.contains(&format!("employee {owner} took it over already")), "{r}");
    assert_eq!(users.iter().filter(|u| u["externalId"] == json!(owner)).count(), 1);
}

#[tokio::test]
async fn a_rehire_whose_stored_user_is_gone_is_created_again() {
    // Leavers are deleted at the target, so the id afas-sync stored for a
    // rehired employee answers 404.
    let scim = ScimPeer::start().await;
    let sink = format!("{}deprovision = \"delete\"\n", scim_sink(&scim.url()));
    let env = Env::new(60, &sink).await;
    let (code, out) = env.sync(day0()).await;
    assert_eq!(code, 0, "{out}");
    let d1 = next(day0(), 1);
    let s = env.emu.state.with_data(|d| churn(d, 7, d1, 0, 40, 0));
    let (code, out) = env.sync(d1).await;
    assert_eq!(code, 0, "{out}");
    let rehire = s.leavers[0].clone();
    assert!(!scim.users().await.iter().any(|u| u["externalId"] == json!(rehire)));
    env.emu.state.with_data(|d| {
        for (c, field) in [
            ("Profit_Employees_Alleo", "EmploymentEnd"),
            ("Profit_Contract", "DateEnd"),
        ] {
            if let Some(conn) = d.connectors.get_mut(c) {
                for row in conn.rows.iter_mut().filter(|r| r["EmployeeId"] == json!(rehire)) {
                    row.insert(field.into(), Value::Null);
                }
            }
        }
    });
    let (code, out) = env.sync(next(d1, 1)).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 rehires"), "{out}");
    assert_eq!(outbox(&env), (0, 0, vec![]), "{out}");
    let users = scim.users().await;
    let back: Vec<&Value> = users.iter().filter(|u| u["externalId"] == json!(rehire)).collect();
    assert_eq!(back.len(), 1, "created again, once");
    assert_eq!(back[0]["active"], json!(true));
}
