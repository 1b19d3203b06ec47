//! A company in the emulator synced by the real binary into real targets:
//! the environment and the checks the delivery tests share.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use afas_sync::emulator::data::generate;
use afas_sync::emulator::Emulator;
use afas_sync::model::Employee;
use afas_sync::store::Store;
use afas_sync::sync::plan::{Provisioned, Status};
use serde_json::{json, Value};

use super::peers::*;
use super::*;

pub const EXT: &str = "urn:afas-sync:scim:schemas:extension:employee:1.0:User";
pub const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

pub fn day0() -> jiff::civil::Date {
    jiff::civil::Date::new(2026, 11, 24).expect("date")
}

pub fn next(d: jiff::civil::Date, n: i64) -> jiff::civil::Date {
    d.checked_add(jiff::ToSpan::days(n)).expect("date")
}

pub struct Env {
    pub emu: Emulator,
    pub dir: tempfile::TempDir,
    pub cfg: String,
    pub store_path: PathBuf,
}

impl Env {
    pub async fn new(employees: u64, sinks: &str) -> Env {
        let emu = spawn_emulator(generate(21, employees, day0())).await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("scim-token"), SCIM_TOKEN).expect("token");
        let extra = format!(
            "page_size = 100\n\n{}\n[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n\n[delivery]\nsync_wait_secs = 20\nparallelism = 4\n\n{sinks}\n",
            afas_sync::cli::EXTRA_CONNECTORS
        );
        let path = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, &extra);
        let store_path = dir.path().join("state.redb");
        Env {
            emu,
            dir,
            cfg: path.to_str().expect("path").to_string(),
            store_path,
        }
    }

    /// One request at a time and each change its own request (no Bulk),
    /// so the Nth request of a kind belongs to a known employee.
    pub fn one_request_at_a_time(&self) {
        let text = std::fs::read_to_string(&self.cfg).expect("config");
        let text = text
            .replace("parallelism = 4", "parallelism = 1\nmax_parallelism = 1")
            .replace("[sink.scim]\n", "[sink.scim]\nbulk = false\n");
        std::fs::write(&self.cfg, text).expect("config");
    }

    /// The admin deletes, at the target, the user that holds an address
    /// (by its `externalId`), then retries the outbox.
    pub async fn free_address_and_retry(&self, scim: &ScimPeer, holder_external_id: &str) {
        let holder = scim
            .users()
            .await
            .into_iter()
            .find(|u| u["externalId"] == holder_external_id)
            .expect("holder");
        scim.delete_user(holder["id"].as_str().expect("id")).await;
        let (code, out, _) = run_bin(&["--config", &self.cfg, "outbox", "retry"]).await;
        assert_eq!(code, 0, "{out}");
    }

    /// Starts the daemon on this environment with `/metrics` on a free
    /// port and no scheduled run before 03:00 (it runs once at start); the
    /// config as it was before, the daemon and the port.
    pub fn spawn_daemon(&self) -> (String, tokio::process::Child, u16) {
        let port = free_port();
        let before = std::fs::read_to_string(&self.cfg).expect("cfg");
        std::fs::write(
            &self.cfg,
            format!("{before}\n[http]\nbind = \"127.0.0.1:{port}\"\n\n[schedule]\ntimes = [\"03:00\"]\n"),
        )
        .expect("cfg");
        let daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_afas-sync"))
            .args(["--config", &self.cfg, "run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("daemon");
        (before, daemon, port)
    }

    /// Sets `guards.max_leavers` (a run with more leavers is held).
    pub fn max_leavers(&self, n: u64) {
        let cfg = std::fs::read_to_string(&self.cfg).expect("cfg");
        let cfg = cfg.replace(
            "max_leavers_percent = 100.0",
            &format!("max_leavers = {n}\nmax_leavers_percent = 100.0"),
        );
        std::fs::write(&self.cfg, cfg).expect("cfg");
    }

    /// Ends the open contracts of these employees on 2026-11-01 in AFAS:
    /// leavers on the next sync.
    pub fn end_contracts(&self, keys: &[String]) {
        self.emu.state.with_data(|d| {
            let rows = &mut d.connectors.get_mut("Profit_Contract").expect("contracts").rows;
            for r in rows
                .iter_mut()
                .filter(|r| keys.iter().any(|k| r["EmployeeId"] == k.as_str()))
            {
                if r["DateEnd"].is_null() {
                    r.insert("DateEnd".into(), json!("2026-11-01T00:00:00Z"));
                }
            }
        });
    }

    pub async fn sync(&self, as_of: jiff::civil::Date) -> (i32, String) {
        let (code, out, err) = run_bin(&["--config", &self.cfg, "sync", "--as-of", &as_of.to_string()]).await;
        (code, format!("{out}\n{err}"))
    }

    pub fn snapshot(&self) -> BTreeMap<String, Provisioned> {
        let store = Store::open(&self.store_path).expect("store");
        store
            .snapshot()
            .expect("snapshot")
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }
}

pub fn scim_sink(url: &str) -> String {
    format!("[sink.scim]\nurl = \"{url}\"\ntoken_file = \"scim-token\"\ntimeout_secs = 10\n")
}

/// The expected SCIM user for an employee, written out field by field from
/// the employee record (not by afas-sync's own serializer).
pub fn assert_user_matches(user: &Value, e: &Employee, active: bool, own_extension: bool) {
    let key = e.key.as_str();
    assert_eq!(user["externalId"], json!(key));
    assert_eq!(user["userName"], json!(e.email.as_str()), "{key}");
    assert_eq!(user["active"], json!(active), "{key} active");
    assert_eq!(user["name"]["givenName"], json!(e.first_name), "{key}");
    let family = match &e.prefix {
        Some(p) => format!("{p} {}", e.last_name),
        None => e.last_name.clone(),
    };
    assert_eq!(user["name"]["familyName"], json!(family), "{key}");
    assert_eq!(user["emails"][0]["value"], json!(e.email.as_str()), "{key}");
    assert_eq!(user[ENT]["employeeNumber"], json!(key));
    assert_eq!(
        user[ENT]["department"].as_str(),
        e.department.as_deref(),
        "{key} department"
    );
    if !own_extension {
        // A target without afas-sync's extension gets nothing beyond the
        // core and enterprise attributes.
        assert!(user.get(EXT).is_none(), "{key}: {user}");
        assert_eq!(user["displayName"], json!(e.display_name()), "{key}");
        return;
    }
    assert_eq!(
        user[EXT]["employmentStart"],
        json!(e.employment.start.to_string()),
        "{key}"
    );
    assert_eq!(
        user[EXT]["employmentEnd"].as_str().map(str::to_string),
        e.employment.end.map(|d| d.to_string()),
        "{key} end"
    );
    assert_eq!(user[EXT]["prefix"].as_str(), e.prefix.as_deref(), "{key} prefix");
    let salary = e.pay.salary.map(|s| s.to_string().parse::<f64>().expect("f64"));
    assert_eq!(user[EXT]["salary"].as_f64(), salary, "{key} salary");
    let vak = e
        .pay
        .leave_hours
        .get("VAK")
        .map(|s| s.to_string().parse::<f64>().expect("f64"));
    let served_vak = user[EXT]["leave"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["type"] == "VAK"))
        .and_then(|x| x["hours"].as_f64());
    assert_eq!(served_vak, vak, "{key} leave");
}

/// Every provisioned employee is at the server exactly once, as expected.
pub async fn assert_server_matches(scim: &ScimPeer, snapshot: &BTreeMap<String, Provisioned>) {
    let users = scim.users().await;
    let mut by_ext: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for u in users {
        by_ext
            .entry(u["externalId"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(u);
    }
    for (key, list) in &by_ext {
        assert_eq!(list.len(), 1, "duplicate users for externalId {key}");
    }
    assert_eq!(by_ext.len(), snapshot.len(), "one user per provisioned employee");
    for (key, p) in snapshot {
        let user = &by_ext.get(key).unwrap_or_else(|| panic!("{key} missing at the server"))[0];
        let e = p.employee.as_ref().expect("personal data");
        assert_user_matches(user, e, p.status == Status::Active, scim.own_extension);
    }
}

/// The line of `afas-sync check` that lists the fields a target does not get.
pub fn not_delivered(check: &str) -> String {
    check
        .lines()
        .find(|l| l.contains("SCIM fields not delivered"))
        .unwrap_or("")
        .to_string()
}

/// A ServiceProviderConfig file for scim2-server with PATCH and ETags as
/// given (a row that switches a feature off says so by calling this).
pub fn service_provider_config(dir: &std::path::Path, patch: bool, etag: bool) -> PathBuf {
    service_provider_config_with_bulk(dir, patch, etag, 0)
}

/// As [`service_provider_config`], with Bulk of at most `bulk_operations`
/// per request (0: no Bulk).
pub fn service_provider_config_with_bulk(
    dir: &std::path::Path,
    patch: bool,
    etag: bool,
    bulk_operations: u32,
) -> PathBuf {
    service_provider_config_filter(dir, patch, etag, bulk_operations, true)
}

/// As [`service_provider_config_with_bulk`], with `filter.supported` as
/// given (a target that declares it cannot filter).
pub fn service_provider_config_filter(
    dir: &std::path::Path,
    patch: bool,
    etag: bool,
    bulk_operations: u32,
    filter: bool,
) -> PathBuf {
    let spc = dir.join("spc.json");
    std::fs::write(
        &spc,
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": {"supported": patch}, "bulk": {"supported": bulk_operations > 0, "maxOperations": bulk_operations, "maxPayloadSize": 1_048_576},
            "filter": {"supported": filter, "maxResults": 1000}, "changePassword": {"supported": false},
            "sort": {"supported": false}, "etag": {"supported": etag},
            "authenticationSchemes": [{"type": "oauthbearertoken", "name": "bearer", "description": "Bearer"}]
        })
        .to_string(),
    )
    .expect("spc");
    spc
}
