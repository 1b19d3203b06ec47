//! HR scenarios end to end: fixture days written to disk, loaded and served
//! by the emulator over HTTP, synced into a real redb file.

mod common;

use std::sync::Arc;

use afas_sync::afas::rows::JsonRow;
use afas_sync::config::Config;
use afas_sync::emulator::data::{contract_fields, employee_fields, ConnectorData, Dataset};
use afas_sync::emulator::{AuthSetup, Emulator, EmulatorState};
use afas_sync::store::Store;
use afas_sync::sync::plan::{MutationKind, Status};
use afas_sync::sync::{self, Outcome, RunRecord, SyncResult};
use common::*;
use serde_json::{json, Value};

/// An employee row as Alleo's GetConnector template has it.
#[derive(Clone)]
struct E {
    key: &'static str,
    mail: Option<&'static str>,
    first: &'static str,
    last: &'static str,
    start: &'static str,
    end: Option<&'static str>,
    dept: &'static str,
    access: bool,
}

fn e(key: &'static str, start: &'static str) -> E {
    E {
        key,
        mail: None,
        first: "Jan",
        last: "Jansen",
        start,
        end: None,
        dept: "ICT",
        access: true,
    }
}

impl E {
    fn end(mut self, end: &'static str) -> Self {
        self.end = Some(end);
        self
    }
    fn mail(mut self, m: &'static str) -> Self {
        self.mail = Some(m);
        self
    }
    fn dept(mut self, d: &'static str) -> Self {
        self.dept = d;
        self
    }
    fn first(mut self, f: &'static str) -> Self {
        self.first = f;
        self
    }
    fn access(mut self, a: bool) -> Self {
        self.access = a;
        self
    }
    fn row(&self) -> JsonRow {
        let date = |d: &str| json!(format!("{d}T00:00:00Z"));
        let mut r = JsonRow::new();
        r.insert("EmployeeId".into(), json!(self.key));
        r.insert(
            "Mail".into(),
            match self.mail {
                Some("") => Value::Null,
                Some(m) => json!(m),
                None => json!(format!("e{}@bedrijf.example", self.key)),
            },
        );
        r.insert("FirstName".into(), json!(self.first));
        r.insert("BirthName".into(), json!(self.last));
        r.insert("PrefixBirthName".into(), json!("van der"));
        r.insert("EmploymentStart".into(), date(self.start));
        r.insert("EmploymentEnd".into(), self.end.map(date).unwrap_or(Value::Null));
        r.insert("Department".into(), json!(self.dept));
        r.insert("DateOfBirth".into(), date("1990-05-17"));
        r.insert("AlleoAccess".into(), json!(if self.access { 1 } else { 0 }));
        r.insert("alleo_monthly_all_budget".into(), json!(50.0));
        r
    }
}

fn contract(key: &str, seq: u32, start: &str, end: Option<&str>) -> JsonRow {
    let date = |d: &str| json!(format!("{d}T00:00:00Z"));
    let mut r = JsonRow::new();
    r.insert("EmployeeId".into(), json!(key));
    r.insert("SequenceNumber".into(), json!(seq));
    r.insert("DateStart".into(), date(start));
    r.insert("DateEnd".into(), end.map(date).unwrap_or(Value::Null));
    r.insert("Fte".into(), json!(1.0));
    r.insert("HoursPerWeek".into(), json!(40.0));
    r.insert("EmploymentType".into(), json!("Vast"));
    r
}

fn day(emps: &[E], contracts: Vec<JsonRow>) -> Dataset {
    let mut ds = Dataset::default();
    let mut fields = employee_fields();
    // AlleoAccess is an int 0/1 in this administration, as AFAS often has it.
    if let Some(f) = fields.iter_mut().find(|f| f.id == "AlleoAccess") {
        f.data_type = "int".into();
    }
    ds.connectors.insert(
        "Profit_Employees_Alleo".into(),
        ConnectorData {
            description: String::new(),
            fields,
            rows: emps.iter().map(E::row).collect(),
        },
    );
    ds.connectors.insert(
        "Profit_Contract".into(),
        ConnectorData {
            description: String::new(),
            fields: contract_fields(),
            rows: contracts,
        },
    );
    ds
}

struct Scenario {
    emu: Emulator,
    dir: tempfile::TempDir,
    config: Config,
    store: Option<Arc<Store>>,
}

const LOOSE_GUARDS: &str = "[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n";

impl Scenario {
    /// Writes `days` as fixture directories, loads them back the way
    /// `afas-sync emulate --fixtures` does, and serves day 0.
    async fn new(days: Vec<Dataset>, extra: &str) -> Scenario {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixtures = dir.path().join("fixtures");
        for (i, d) in days.iter().enumerate() {
            d.write_day(&fixtures.join(format!("day{i:02}")))
                .expect("write fixture");
        }
        let loaded = Dataset::load_scenario(&fixtures).expect("load fixtures");
        assert_eq!(loaded.len(), days.len());
        let state = EmulatorState::new(loaded, AuthSetup::token(token()));
        let emu = Emulator::start_local(state).await.expect("emulator");
        let extra = format!("page_size = 3\n\n[mapping.employees]\naccess = \"AlleoAccess\"\n\n{extra}");
        let path = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, &extra);
        let config = Config::load(&path).expect("config").config;
        let store = Some(Arc::new(Store::open(&config.store.path).expect("store")));
        Scenario {
            emu,
            dir,
            config,
            store,
        }
    }

    fn st(&self) -> &Arc<Store> {
        self.store.as_ref().expect("store is open")
    }

    /// Closes the state file so the real binary can open it.
    fn close(&mut self) -> String {
        let store = self.store.take().expect("open");
        assert_eq!(Arc::strong_count(&store), 1, "no other handle may keep the file locked");
        drop(store);
        self.dir.path().join("config.toml").to_str().expect("path").to_string()
    }

    fn reopen(&mut self) {
        self.store = Some(Arc::new(Store::open(&self.config.store.path).expect("reopen")));
    }

    async fn sync_day(&self, day: usize, as_of: &str) -> SyncResult {
        assert!(self.emu.state.set_day(day));
        sync::run(&self.config, self.st().clone(), as_of.parse().expect("date"), false)
            .await
            .expect("sync")
    }

    async fn committed(&self, day: usize, as_of: &str) -> RunRecord {
        match self.sync_day(day, as_of).await {
            SyncResult::Committed(r) => r,
            other => panic!("expected a committed run, got {other:?}"),
        }
    }

    fn kinds(&self, run: u64) -> Vec<(MutationKind, String)> {
        self.st()
            .run_mutations(run)
            .expect("mutations")
            .into_iter()
            .map(|m| (m.kind, m.key.to_string()))
            .collect()
    }

    fn status(&self, key: &str) -> Option<Status> {
        self.st().employee(key).expect("employee").0.map(|p| p.status)
    }
}

use MutationKind::*;

fn k(kind: MutationKind, key: &str) -> (MutationKind, String) {
    (kind, key.to_string())
}

#[tokio::test]
async fn first_import_then_a_quiet_day_writes_only_a_run_record() {
    let staff: Vec<E> = (0..10)
        .map(|i| e(["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"][i], "2020-01-01"))
        .collect();
    let s = Scenario::new(vec![day(&staff, vec![])], LOOSE_GUARDS).await;
    let r1 = s.committed(0, "2026-01-05").await;
    assert_eq!((r1.outcome, r1.joiners), (Outcome::Success, 10));
    assert_eq!(s.st().employee_count().expect("count"), 10);
    let size_before = std::fs::metadata(&s.config.store.path).expect("meta").len();
    let r2 = s.committed(0, "2026-01-06").await;
    assert_eq!(r2.outcome, Outcome::NothingToDo);
    assert!(s.kinds(r2.id).is_empty());
    let size_after = std::fs::metadata(&s.config.store.path).expect("meta").len();
    assert!(size_after <= size_before + 64 * 1024, "{size_before} -> {size_after}");
    s.st().verify().expect("digest");
}

#[tokio::test]
async fn future_hire_joins_on_start_date_or_lead_time_earlier() {
    let d = day(&[e("1", "2020-01-01"), e("2", "2026-02-01")], vec![]);
    let s = Scenario::new(vec![d.clone()], LOOSE_GUARDS).await;
    let r = s.committed(0, "2026-01-25").await;
    assert_eq!(s.kinds(r.id), vec![k(Joiner, "1")]);
    let r = s.committed(0, "2026-01-31").await;
    assert!(s.kinds(r.id).is_empty());
    let r = s.committed(0, "2026-02-01").await;
    assert_eq!(s.kinds(r.id), vec![k(Joiner, "2")]);

    // With a lead time of 7 days, the same hire joins a week early.
    let s = Scenario::new(vec![d], &format!("{LOOSE_GUARDS}\n[sync]\nlead_days = 7\n")).await;
    let r = s.committed(0, "2026-01-25").await;
    assert_eq!(s.kinds(r.id), vec![k(Joiner, "1"), k(Joiner, "2")]);
}

#[tokio::test]
async fn future_termination_is_a_mover_then_a_leaver_the_day_after() {
    let d0 = day(&[e("1", "2020-01-01")], vec![]);
    let d1 = day(&[e("1", "2020-01-01").end("2026-03-31")], vec![]);
    let s = Scenario::new(vec![d0, d1], LOOSE_GUARDS).await;
    s.committed(0, "2026-03-01").await;
    let r = s.committed(1, "2026-03-02").await;
    assert_eq!(s.kinds(r.id), vec![k(Mover, "1")]);
    let m = &s.st().run_mutations(r.id).expect("m")[0];
    assert_eq!(m.changes[0].field, "employment_end");
    assert_eq!(
        (m.changes[0].old.as_str(), m.changes[0].new.as_str()),
        ("", "2026-03-31")
    );
    let r = s.committed(1, "2026-03-31").await;
    assert!(s.kinds(r.id).is_empty(), "still employed on the last day");
    let r = s.committed(1, "2026-04-01").await;
    assert_eq!(s.kinds(r.id), vec![k(Leaver, "1")]);
    assert_eq!(
        s.status("1"),
        Some(Status::Left {
            on: "2026-04-01".parse().expect("d")
        })
    );
}

#[tokio::test]
async fn termination_in_the_past_is_never_a_joiner_and_a_leaver_when_provisioned() {
    let d0 = day(&[e("1", "2020-01-01"), e("2", "2015-01-01").end("2019-12-31")], vec![]);
    let d1 = day(
        &[
            e("1", "2020-01-01").end("2026-01-31"),
            e("2", "2015-01-01").end("2019-12-31"),
        ],
        vec![],
    );
    let s = Scenario::new(vec![d0, d1], LOOSE_GUARDS).await;
    let r = s.committed(0, "2026-02-10").await;
    assert_eq!(
        s.kinds(r.id),
        vec![k(Joiner, "1")],
        "someone who left in 2019 is not provisioned"
    );
    // HR enters a termination date that already passed.
    let r = s.committed(1, "2026-02-11").await;
    assert_eq!(s.kinds(r.id), vec![k(Leaver, "1")]);
    let m = &s.st().run_mutations(r.id).expect("m")[0];
    assert!(m.reason.contains("ended on 2026-01-31"), "{}", m.reason);
}

#[tokio::test]
async fn contract_renewal_without_gap_is_one_employment_and_a_gap_is_leave_then_rehire() {
    let emps = [e("1", "2020-01-01"), e("2", "2020-01-01")];
    let contracts = vec![
        // 1: renewed the day after the first contract ends.
        contract("1", 1, "2025-01-01", Some("2025-12-31")),
        contract("1", 2, "2026-01-01", None),
        // 2: two months without a contract.
        contract("2", 1, "2025-01-01", Some("2025-12-31")),
        contract("2", 2, "2026-03-01", None),
    ];
    let s = Scenario::new(vec![day(&emps, contracts)], LOOSE_GUARDS).await;
    let r = s.committed(0, "2025-12-15").await;
    assert_eq!(s.kinds(r.id), vec![k(Joiner, "1"), k(Joiner, "2")]);
    let r = s.committed(0, "2026-01-01").await;
    assert_eq!(s.kinds(r.id), vec![k(Leaver, "2")], "1 renews without a gap");
    let r = s.committed(0, "2026-02-15").await;
    assert!(s.kinds(r.id).is_empty());
    let r = s.committed(0, "2026-03-01").await;
    assert_eq!(s.kinds(r.id), vec![k(Rehire, "2")]);
    let (p, history) = s.st().employee("2").expect("employee");
    assert_eq!(p.expect("stored").status, Status::Active);
    let kinds: Vec<_> = history.iter().map(|(_, m)| m.kind).collect();
    assert_eq!(kinds, vec![Joiner, Leaver, Rehire]);
}

#[tokio::test]
async fn contracts_in_any_order_are_matched_and_a_repeated_contract_rejects_its_employee() {
    let emps = [e("1", "2020-01-01"), e("2", "2020-01-01"), e("3", "2020-01-01")];
    // AFAS's contract order is not the engine's: employees interleaved, a
    // contract whose employee has no row, and employee 3's contract 1 twice.
    let contracts = vec![
        contract("3", 1, "2025-01-01", None),
        contract("2", 2, "2026-03-01", None),
        contract("9", 1, "2025-01-01", None),
        contract("1", 1, "2025-01-01", None),
        contract("2", 1, "2025-01-01", Some("2025-12-31")),
        contract("3", 1, "2025-01-01", None),
    ];
    let s = Scenario::new(vec![day(&emps, contracts)], LOOSE_GUARDS).await;
    let r = s.committed(0, "2025-06-01").await;
    assert_eq!(s.kinds(r.id), vec![k(Joiner, "1"), k(Joiner, "2")]);
    assert_eq!(r.source.rejected, 1);
    let why: Vec<String> = r
        .source
        .rejections
        .iter()
        .map(|x| format!("{}: {}", x.row, x.reason))
        .collect();
    assert_eq!(
        why,
        vec!["EmployeeId=3: contract row: contract 1 appears twice".to_string()]
    );
    assert_eq!(s.status("3"), None, "a rejected row is not provisioned");
    // Employee 2's two contracts, sent apart and in reverse, leave a gap.
    let r = s.committed(0, "2026-01-01").await;
    assert_eq!(s.kinds(r.id), vec![k(Leaver, "2")]);
    let r = s.committed(0, "2026-03-01").await;
    assert_eq!(s.kinds(r.id), vec![k(Rehire, "2")]);
}

#[tokio::test]
async fn rehire_after_leaving() {
    let d0 = day(&[e("1", "2020-01-01")], vec![]);
    let d1 = day(&[e("1", "2020-01-01").end("2025-06-30")], vec![]);
    let d2 = day(&[e("1", "2026-02-01")], vec![]);
    let s = Scenario::new(vec![d0, d1, d2], LOOSE_GUARDS).await;
    s.committed(0, "2025-06-01").await;
    let r = s.committed(1, "2025-07-01").await;
    assert_eq!(s.kinds(r.id), vec![k(Leaver, "1")]);
    let r = s.committed(2, "2026-02-01").await;
    assert_eq!(s.kinds(r.id), vec![k(Rehire, "1")]);
    let m = &s.st().run_mutations(r.id).expect("m")[0];
    assert!(m
        .changes
        .iter()
        .any(|c| c.field == "employment_start" && c.new == "2026-02-01"));
}

#[tokio::test]
async fn access_flag_removed_and_restored() {
    let on = day(&[e("1", "2020-01-01"), e("2", "2020-01-01")], vec![]);
    let off = day(&[e("1", "2020-01-01").access(false), e("2", "2020-01-01")], vec![]);
    let s = Scenario::new(vec![on.clone(), off, on], LOOSE_GUARDS).await;
    s.committed(0, "2026-01-01").await;
    let r = s.committed(1, "2026-01-02").await;
    assert_eq!(s.kinds(r.id), vec![k(Leaver, "1")]);
    assert!(s.st().run_mutations(r.id).expect("m")[0]
        .reason
        .contains("access removed"));
    let r = s.committed(2, "2026-01-03").await;
    assert_eq!(s.kinds(r.id), vec![k(Rehire, "1")]);
}

#[tokio::test]
async fn email_name_and_department_changes_are_movers_with_old_and_new() {
    let d0 = day(&[e("1", "2020-01-01"), e("2", "2020-01-01")], vec![]);
    let d1 = day(
        &[
            e("1", "2020-01-01")
                .mail("jan.nieuw@bedrijf.example")
                .first("Johannes")
                .dept("Finance"),
            e("2", "2020-01-01"),
        ],
        vec![],
    );
    let s = Scenario::new(vec![d0, d1], LOOSE_GUARDS).await;
    s.committed(0, "2026-01-01").await;
    let r = s.committed(1, "2026-01-02").await;
    assert_eq!(s.kinds(r.id), vec![k(Mover, "1")]);
    let m = &s.st().run_mutations(r.id).expect("m")[0];
    let fields: Vec<(&str, &str, &str)> = m
        .changes
        .iter()
        .map(|c| (c.field.as_str(), c.old.as_str(), c.new.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("email", "e1@bedrijf.example", "jan.nieuw@bedrijf.example"),
            ("first_name", "Jan", "Johannes"),
            ("department", "ICT", "Finance"),
        ]
    );
}

#[tokio::test]
async fn vanishing_once_is_forgiven_and_vanishing_for_n_runs_is_a_leaver() {
    let both = day(
        &[e("1", "2020-01-01"), e("2", "2020-01-01"), e("3", "2020-01-01")],
        vec![],
    );
    let without2 = day(&[e("1", "2020-01-01"), e("3", "2020-01-01")], vec![]);
    let s = Scenario::new(
        vec![both.clone(), without2, both],
        &format!("{LOOSE_GUARDS}max_source_shrink_percent = 50.0\n"),
    )
    .await;
    s.committed(0, "2026-01-01").await;
    let r = s.committed(1, "2026-01-02").await;
    assert!(s.kinds(r.id).is_empty(), "one missing run is not a leaver");
    assert_eq!(s.st().employee("2").expect("e").0.expect("p").absent_runs, 1);
    let r = s.committed(2, "2026-01-03").await;
    assert!(s.kinds(r.id).is_empty(), "back: nothing to deliver");
    assert_eq!(s.st().employee("2").expect("e").0.expect("p").absent_runs, 0);
    s.committed(1, "2026-01-04").await;
    let r = s.committed(1, "2026-01-05").await;
    assert_eq!(s.kinds(r.id), vec![k(Leaver, "2")]);
    assert!(s.st().run_mutations(r.id).expect("m")[0]
        .reason
        .contains("2 consecutive runs"));
}

#[tokio::test]
async fn bad_rows_are_rejected_one_by_one_and_never_become_leavers() {
    let d0 = day(
        &[
            e("1", "2020-01-01"),
            e("2", "2020-01-01"),
            e("3", "2020-01-01"),
            e("4", "2020-01-01"),
        ],
        vec![],
    );
    let mut bad = day(
        &[
            e("1", "2020-01-01").mail("not-an-email"),
            e("2", "2020-01-01").mail(""),
            e("3", "2020-01-01"),
            e("3", "2020-01-01").first("Twin"),
            e("4", "2020-01-01"),
        ],
        vec![],
    );
    // A garbage value in a provisioned employee's row.
    if let Some(c) = bad.connectors.get_mut("Profit_Employees_Alleo") {
        c.rows[4].insert("DateOfBirth".into(), json!("0000-00-00T00:00:00Z"));
    }
    let s = Scenario::new(vec![d0, bad], LOOSE_GUARDS).await;
    s.committed(0, "2026-01-01").await;
    for as_of in ["2026-01-02", "2026-01-03", "2026-01-04"] {
        let r = s.committed(1, as_of).await;
        assert!(s.kinds(r.id).is_empty(), "{as_of}: {:?}", s.kinds(r.id));
        assert_eq!(
            r.source.rejected, 5,
            "1 bad e-mail, 1 empty e-mail, 2 duplicates, 1 bad date"
        );
        let reasons: Vec<String> = r
            .source
            .rejections
            .iter()
            .map(|x| format!("{}: {}", x.row, x.reason))
            .collect();
        let all = reasons.join("\n");
        assert!(
            all.contains("EmployeeId=1: field `Mail`: `not-an-email` has no @"),
            "{all}"
        );
        assert!(all.contains("EmployeeId=2: field `Mail`: required but empty"), "{all}");
        assert_eq!(all.matches("duplicate key: 2 rows share it").count(), 2, "{all}");
        assert!(all.contains("field `DateOfBirth`"), "{all}");
    }
    for key in ["1", "2", "3", "4"] {
        assert_eq!(s.status(key), Some(Status::Active), "{key} stays provisioned");
    }
}

#[tokio::test]
async fn shrunken_source_is_held_then_approved_and_applied_exactly_once() {
    let all: Vec<E> = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
        .iter()
        .map(|k| e(k, "2020-01-01"))
        .collect();
    let ended: Vec<E> = all
        .iter()
        .enumerate()
        .map(|(i, x)| if i < 4 { x.clone().end("2026-01-31") } else { x.clone() })
        .collect();
    let s = Scenario::new(
        vec![day(&all, vec![]), day(&all[..2], vec![]), day(&ended, vec![])],
        "[guards]\nmax_leavers = 3\nmax_leavers_percent = 100.0\n",
    )
    .await;
    s.committed(0, "2026-01-01").await;

    // AFAS suddenly returns 2 of 10 employees: held, nothing changes.
    let SyncResult::Held(run, reasons) = s.sync_day(1, "2026-01-02").await else {
        panic!("expected held")
    };
    assert!(reasons.iter().any(|r| r.contains("fewer")), "{reasons:?}");
    assert_eq!(run.outcome, Outcome::Held);
    assert!(
        s.st().snapshot().expect("snap").values().all(|p| p.absent_runs == 0),
        "snapshot untouched"
    );

    // Four real leavers exceed max_leavers = 3: held with exactly those four.
    let SyncResult::Held(run, reasons) = s.sync_day(2, "2026-02-01").await else {
        panic!("expected held")
    };
    assert!(
        reasons.iter().any(|r| r.contains("4 leavers exceed the limit of 3")),
        "{reasons:?}"
    );
    let plan = s.st().held_plan(run.id).expect("held plan");
    assert_eq!(plan.count(Leaver), 4);
    assert_eq!(s.status("1"), Some(Status::Active));

    // The older held plan is stale once another plan is applied; approve
    // the leaver plan through the real binary, then try again.
    let mut s = s;
    let cfg = s.close();
    let cfg = cfg.as_str();
    let run_id = run.id.to_string();
    let (code, out, err) = run_bin(&["--config", cfg, "plan", "show", &run_id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("4 leavers exceed") && out.contains("leaver "), "{out}");
    let (code, out, err) = run_bin(&["--config", cfg, "plan", "approve", &run_id]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("4 leavers"), "{out}");
    s.reopen();
    for key in ["1", "2", "3", "4"] {
        assert!(matches!(s.status(key), Some(Status::Left { .. })), "{key}");
    }
    let cfg = s.close();
    let cfg = cfg.as_str();
    let (code, _, err) = run_bin(&["--config", cfg, "plan", "approve", &run_id]).await;
    assert_eq!(code, 1, "a second approval is refused");
    assert!(err.contains("no held plan"), "{err}");
    let stale = (run.id - 1).to_string();
    let (code, _, err) = run_bin(&["--config", cfg, "plan", "approve", &stale]).await;
    assert_eq!(code, 1);
    assert!(err.contains("moved on"), "{err}");
    let (code, out, _) = run_bin(&["--config", cfg, "plan", "reject", &stale]).await;
    assert_eq!(code, 0, "{out}");
    s.reopen();
    let (_, history) = s.st().employee("1").expect("e");
    assert_eq!(
        history.iter().filter(|(_, m)| m.kind == Leaver).count(),
        1,
        "applied exactly once"
    );
    assert_eq!(s.st().run(run.id - 1).expect("run").outcome, Outcome::Rejected);
    s.st().verify().expect("digest");
}

#[tokio::test]
async fn a_mapping_change_forces_a_held_plan() {
    let d = day(&[e("1", "2020-01-01"), e("2", "2020-01-01")], vec![]);
    let s = Scenario::new(vec![d], LOOSE_GUARDS).await;
    s.committed(0, "2026-01-01").await;
    // The admin points `department` at another field.
    let mut changed = s.config.clone();
    changed.mapping.employees.department = "FirstName".into();
    let result = sync::run(&changed, s.st().clone(), "2026-01-02".parse().expect("d"), false)
        .await
        .expect("sync");
    let SyncResult::Held(run, reasons) = result else {
        panic!("expected held, got {result:?}")
    };
    assert!(reasons.iter().any(|r| r.contains("mapping")), "{reasons:?}");
    assert_eq!(s.st().held_plan(run.id).expect("plan").count(Mover), 2);
    // Approved, the new mapping becomes the baseline.
    sync::approve(&changed, s.st(), run.id).expect("approve");
    let result = sync::run(&changed, s.st().clone(), "2026-01-03".parse().expect("d"), false)
        .await
        .expect("sync");
    assert!(
        matches!(result, SyncResult::Committed(ref r) if r.outcome == Outcome::NothingToDo),
        "{result:?}"
    );
}

#[tokio::test]
async fn retention_scrubs_leavers_and_drops_old_runs() {
    let d0 = day(&[e("1", "2020-01-01"), e("2", "2020-01-01")], vec![]);
    let d1 = day(&[e("1", "2020-01-01").end("2025-01-31"), e("2", "2020-01-01")], vec![]);
    let s = Scenario::new(
        vec![d0, d1],
        &format!("{LOOSE_GUARDS}\n[retention]\nhistory_days = 30\nleaver_personal_data_days = 10\n"),
    )
    .await;
    s.committed(0, "2025-01-01").await;
    s.committed(1, "2025-02-01").await;
    let (p, _) = s.st().employee("1").expect("e");
    assert!(p.expect("stored").employee.is_some(), "not yet");
    s.committed(1, "2025-02-20").await;
    let (p, history) = s.st().employee("1").expect("e");
    let p = p.expect("key and dates stay");
    assert!(p.employee.is_none(), "personal data removed");
    assert_eq!(p.employment.end, Some("2025-01-31".parse().expect("d")));
    assert!(history
        .iter()
        .all(|(_, m)| m.employee.is_none() && m.changes.is_empty()));
    // Runs older than 30 days are gone; the snapshot still verifies.
    let before = s.st().runs(100).expect("runs").len();
    s.committed(1, "2025-03-10").await;
    let runs = s.st().runs(100).expect("runs");
    assert!(runs.len() < before + 1, "the first run was purged");
    assert!(runs.iter().all(|r| r.as_of >= "2025-02-08".parse().expect("d")));
    s.st().verify().expect("digest");
    // Scrubbed, the leaver stays scrubbed (no write every run).
    let r = s.committed(1, "2025-03-11").await;
    assert_eq!(r.outcome, Outcome::NothingToDo);
}

#[tokio::test]
async fn forget_erases_an_employee_everywhere() {
    let d0 = day(&[e("1", "2020-01-01"), e("2", "2020-01-01")], vec![]);
    let d1 = day(&[e("1", "2020-01-01").dept("HR"), e("2", "2020-01-01")], vec![]);
    let s = Scenario::new(vec![d0, d1], LOOSE_GUARDS).await;
    s.committed(0, "2026-01-01").await;
    let r2 = s.committed(1, "2026-01-02").await;
    let mut s = s;
    let cfg = s.close();
    let (code, out, err) = run_bin(&["--config", &cfg, "forget", "1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = run_bin(&["--config", &cfg, "export", "--format", "csv"]).await;
    assert!(
        !out.contains("e1@bedrijf.example") && out.contains("e2@bedrijf.example"),
        "{out}"
    );
    let (code, _, err) = run_bin(&["--config", &cfg, "forget", "1"]).await;
    assert_eq!(code, 1, "{err}");
    s.reopen();
    let (p, history) = s.st().employee("1").expect("e");
    assert!(p.is_none() && history.is_empty());
    assert!(s.st().run_mutations(r2.id).expect("m").is_empty());
    assert!(s
        .st()
        .run_mutations(1)
        .expect("m")
        .iter()
        .all(|m| m.key.as_str() != "1"));
    // The other employee's mutation, packed beside it, stays.
    assert_eq!(s.st().run_mutations(1).expect("m").len(), 1);
    assert_eq!(s.st().employee("2").expect("e").1.len(), 1);
    // The kept count follows (verify also recounts it from the snapshot).
    assert_eq!(s.st().employee_counts().expect("counts"), (1, 1));
    assert_eq!(s.st().meta().expect("meta").active_employees, Some(1));
    s.st().verify().expect("digest");
}

#[tokio::test]
async fn a_failed_fetch_changes_nothing_but_its_run_record() {
    let d = day(&[e("1", "2020-01-01")], vec![]);
    let s = Scenario::new(vec![d], LOOSE_GUARDS).await;
    let r1 = s.committed(0, "2026-01-01").await;
    let digest = s.st().meta().expect("meta").snapshot_digest;
    s.emu.state.add_rule(afas_sync::emulator::FaultRule::new(
        "/connectors/profit_employees",
        1,
        100,
        afas_sync::emulator::FaultAction::Status {
            status: 403,
            body: String::new(),
        },
    ));
    let err = sync::run(&s.config, s.st().clone(), "2026-01-02".parse().expect("d"), false)
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("403"), "{err}");
    let meta = s.st().meta().expect("meta");
    assert_eq!(meta.snapshot_digest, digest);
    assert_eq!(meta.last_committed_run, Some(r1.id));
    let last = &s.st().runs(1).expect("runs")[0];
    assert_eq!(last.outcome, Outcome::Failed);
    assert!(last.message.contains("IP restriction"), "{}", last.message);
}

#[tokio::test]
async fn cli_sync_dry_run_status_history_and_exit_codes() {
    let d0 = day(&[e("1", "2020-01-01"), e("2", "2020-01-01")], vec![]);
    let mut s = Scenario::new(vec![d0], LOOSE_GUARDS).await;
    let cfg = s.close();
    let cfg = cfg.as_str();
    let (code, out, err) = run_bin(&["--config", cfg, "sync", "--dry-run", "--as-of", "2026-01-01"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dry run") && out.contains("2 joiners"), "{out}");
    let (code, out, _) = run_bin(&["--config", cfg, "--json", "history"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]", "a dry run records nothing");
    let (code, out, err) = run_bin(&["--config", cfg, "sync", "--as-of", "2026-01-01"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = run_bin(&["--config", cfg, "sync", "--as-of", "2026-01-02"]).await;
    assert_eq!(code, 4, "nothing to do");
    let (code, out, _) = run_bin(&["--config", cfg, "--json", "status"]).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["employees"]["active"], 2);
    assert_eq!(v["last_run"]["outcome"], "nothing-to-do");
    let (code, out, _) = run_bin(&["--config", cfg, "employee", "1"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("joiner"), "{out}");
    s.emu.state.add_rule(afas_sync::emulator::FaultRule::new(
        "/connectors/",
        1,
        100,
        afas_sync::emulator::FaultAction::Status {
            status: 401,
            body: String::new(),
        },
    ));
    let (code, _, err) = run_bin(&["--config", cfg, "sync"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("nothing was changed") && err.contains("401"), "{err}");
}

/// Adds the optional salary, wage component and leave connectors to a day.
fn with_pay(mut ds: Dataset, rows: &[(&str, &str, Value, f64, Value)]) -> Dataset {
    use afas_sync::emulator::data::{leave_fields, salary_fields, wage_fields};
    let date = |d: &str| json!(format!("{d}T00:00:00Z"));
    let obj = |pairs: Vec<(&str, Value)>| -> JsonRow { pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect() };
    let (mut sal, mut wage, mut leave) = (Vec::new(), Vec::new(), Vec::new());
    for (key, from, salary, accrual, vak) in rows {
        sal.push(obj(vec![
            ("EmployeeId", json!(key)),
            ("DateStart", date(from)),
            ("Salary", salary.clone()),
        ]));
        wage.push(obj(vec![
            ("EmployeeId", json!(key)),
            ("WageComponentId", json!("5100")),
            ("Amount", json!(accrual)),
        ]));
        wage.push(obj(vec![
            ("EmployeeId", json!(key)),
            ("WageComponentId", json!("9999")),
            ("Amount", json!(1.0)),
        ]));
        leave.push(obj(vec![
            ("EmployeeId", json!(key)),
            ("LeaveTypeId", json!("VAK")),
            ("BalanceHours", vak.clone()),
        ]));
    }
    for (name, fields, rows) in [
        ("Profit_Salary_Alleo", salary_fields(), sal),
        ("Profit_WageComponents_Alleo", wage_fields(), wage),
        ("Profit_Leave_Alleo", leave_fields(), leave),
    ] {
        ds.connectors.insert(
            name.into(),
            ConnectorData {
                description: String::new(),
                fields,
                rows,
            },
        );
    }
    ds
}

#[tokio::test]
async fn salary_holiday_allowance_and_leave_travel_with_the_employee() {
    let emps = [e("1", "2020-01-01"), e("2", "2020-01-01")];
    let d0 = with_pay(
        day(&emps, vec![]),
        &[
            ("1", "2020-01-01", json!(3000), 240.0, json!(120)),
            ("2", "2020-01-01", json!(2800), 224.0, json!(80)),
        ],
    );
    // Day 1: a raise for 1 from next month (not yet effective), and a
    // salary row for 2 that cannot be read.
    let mut d1 = with_pay(
        day(&emps, vec![]),
        &[
            ("1", "2020-01-01", json!(3000), 240.0, json!(112)),
            ("2", "2020-01-01", json!("veel"), 224.0, json!(80)),
        ],
    );
    if let Some(c) = d1.connectors.get_mut("Profit_Salary_Alleo") {
        let mut raise = c.rows[0].clone();
        raise.insert("DateStart".into(), json!("2026-02-01T00:00:00Z"));
        raise.insert("Salary".into(), json!(3150.5));
        c.rows.push(raise);
    }
    let extra = format!("{}\n{LOOSE_GUARDS}", afas_sync::cli::EXTRA_CONNECTORS);
    let s = Scenario::new(vec![d0, d1], &extra).await;
    let r = s.committed(0, "2026-01-10").await;
    assert_eq!(r.joiners, 2);
    let pay = s.st().employee("1").expect("e").0.expect("p").employee.expect("e").pay;
    assert_eq!(pay.salary.map(|d| d.to_string()), Some("3000".into()));
    assert_eq!(pay.holiday_allowance_accrual.map(|d| d.to_string()), Some("240".into()));
    assert_eq!(
        pay.holiday_allowance_balance, None,
        "AFAS has no row for the balance component (5110)"
    );
    assert_eq!(pay.leave_hours.get("VAK").map(|d| d.to_string()), Some("120".into()));

    let r = s.committed(1, "2026-01-11").await;
    assert_eq!(
        s.kinds(r.id),
        vec![k(Mover, "1")],
        "2's unreadable salary row protects it"
    );
    let m = &s.st().run_mutations(r.id).expect("m")[0];
    let changes: Vec<_> = m
        .changes
        .iter()
        .map(|c| (c.field.as_str(), c.old.as_str(), c.new.as_str()))
        .collect();
    assert_eq!(
        changes,
        vec![("leave.VAK", "120", "112")],
        "the raise is not effective yet"
    );
    assert!(
        r.source
            .rejections
            .iter()
            .any(|x| x.reason.contains("salary row") && x.reason.contains("`Salary`")),
        "{:?}",
        r.source.rejections
    );

    let r = s.committed(1, "2026-02-01").await;
    let m = &s.st().run_mutations(r.id).expect("m")[0];
    assert_eq!(
        (m.changes[0].field.as_str(), m.changes[0].new.as_str()),
        ("salary", "3150.5")
    );
}

#[tokio::test]
async fn a_streamed_commit_stores_exactly_the_plan_a_dry_run_shows() {
    // A sync writes its diff straight into the run's transaction; a dry run
    // (and a held plan) builds the same diff in memory. Both must agree,
    // mutation by mutation and record by record.
    use afas_sync::emulator::data::{churn, generate};
    use afas_sync::sync::plan::Write;
    use jiff::ToSpan;
    let day0: jiff::civil::Date = "2026-03-02".parse().expect("date");
    let mut ds = generate(11, 400, day0);
    let mut days = vec![ds.clone()];
    let mut dates = vec![day0];
    for i in 1..=3u64 {
        let date = day0.checked_add((i as i64).days()).expect("date");
        churn(&mut ds, i, date, 20, 20, 60);
        days.push(ds.clone());
        dates.push(date);
    }
    let s = Scenario::new(days, LOOSE_GUARDS).await;
    for (i, as_of) in dates.into_iter().enumerate() {
        assert!(s.emu.state.set_day(i));
        let plan = match sync::run(&s.config, s.st().clone(), as_of, true)
            .await
            .expect("dry run")
        {
            SyncResult::DryRun(plan, _) => plan,
            other => panic!("expected a dry run, got {other:?}"),
        };
        assert!(!plan.mutations.is_empty(), "day {i} changes something");
        let r = s.committed(i, &as_of.to_string()).await;
        assert_eq!(
            s.st().run_mutations(r.id).expect("mutations"),
            plan.mutations,
            "day {i}"
        );
        for (kind, n) in [
            (Joiner, r.joiners),
            (Mover, r.movers),
            (Leaver, r.leavers),
            (Rehire, r.rehires),
        ] {
            assert_eq!(plan.count(kind), n, "day {i}: {kind:?}");
        }
        for Write::Upsert(p) in &plan.writes {
            let stored = s.st().employee(p.key.as_str()).expect("employee").0;
            assert_eq!(stored.as_ref(), Some(p), "day {i}: {}", p.key);
        }
        s.st().verify().expect("digest matches the snapshot");
    }
}

#[tokio::test]
async fn sorting_through_temporary_files_syncs_exactly_as_sorting_in_memory() {
    // Past `sync.sort_memory_mib` the fetched employees and contracts are
    // sorted through temporary files. Two stores fed the same days, one
    // with 1 MiB (8,000 employees do not fit) and one with the default,
    // must end with the same mutations and the same snapshot.
    use afas_sync::emulator::data::{churn, generate};
    use jiff::ToSpan;
    let day0: jiff::civil::Date = "2026-03-02".parse().expect("date");
    let mut ds = generate(23, 8000, day0);
    let emu = spawn_emulator(ds.clone()).await;
    let open = |extra: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, extra);
        let config = Config::load(&path).expect("config").config;
        let store = Arc::new(Store::open(&config.store.path).expect("store"));
        (dir, config, store)
    };
    let guards = "\n[guards]\nmax_leavers = 100000\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n";
    let (small_dir, small, small_store) = open(&format!("\n[sync]\nsort_memory_mib = 1\n{guards}"));
    let (_dir, large, large_store) = open(guards);

    let client =
        afas_sync::afas::AfasClient::new(afas_sync::afas::ClientOptions::from_config(&small.afas).expect("options"))
            .expect("client");
    let spilled = sync::fetch(&small, &client, day0).await.expect("fetch");
    let kept = sync::fetch(&large, &client, day0).await.expect("fetch");
    assert!(
        spilled.spilled >= 3,
        "employees, contracts and the result on disk: {}",
        spilled.spilled
    );
    assert_eq!(kept.spilled, 0);
    assert_eq!(spilled.stats.valid, kept.stats.valid);
    assert_eq!(spilled.protected, kept.protected);
    let a: Vec<_> = spilled
        .employees
        .iter()
        .expect("iter")
        .map(|e| e.expect("read").into_owned())
        .collect();
    let b: Vec<_> = kept
        .employees
        .iter()
        .expect("iter")
        .map(|e| e.expect("read").into_owned())
        .collect();
    assert_eq!(a, b);
    drop((spilled, kept));

    let mut date = day0;
    for i in 0..3u64 {
        if i > 0 {
            date = date.checked_add(1.day()).expect("date");
            churn(&mut ds, i, date, 40, 40, 160);
            emu.state.set_data(ds.clone());
        }
        let mut runs = Vec::new();
        for (config, store) in [(&small, &small_store), (&large, &large_store)] {
            match sync::run(config, store.clone(), date, false).await.expect("sync") {
                SyncResult::Committed(r) => runs.push(r),
                other => panic!("day {i}: expected a committed run, got {other:?}"),
            }
        }
        assert!(
            runs[0].joiners + runs[0].movers + runs[0].leavers > 0,
            "day {i} changes something"
        );
        assert_eq!(
            small_store.run_mutations(runs[0].id).expect("mutations"),
            large_store.run_mutations(runs[1].id).expect("mutations"),
            "day {i}"
        );
        assert_eq!(
            small_store.snapshot().expect("snapshot"),
            large_store.snapshot().expect("snapshot")
        );
        assert_eq!(runs[0].snapshot_digest, runs[1].snapshot_digest);
    }

    // Past the limit the records are finished on a thread of their own
    // while the diff reads them, and a key rejected while finishing must
    // reach the diff before the diff passes it. Three provisioned
    // employees: one with its row twice (a duplicate key), one with a
    // contract twice, one gone. Only the last one may count as absent.
    let active: Vec<String> = large_store
        .snapshot()
        .expect("snapshot")
        .values()
        .filter(|p| p.status == afas_sync::sync::plan::Status::Active)
        .map(|p| p.key.to_string())
        .collect();
    let pick = |n: usize| active[active.len() * n / 4].clone();
    let (twin, double, gone) = (pick(1), pick(2), pick(3));
    let is =
        |row: &afas_sync::afas::rows::JsonRow, key: &str| row.get("EmployeeId").and_then(|v| v.as_str()) == Some(key);
    // Repeats the first row of `key` in a connector.
    let mut twice = |connector: &str, key: &str| {
        let rows = &mut ds.connectors.get_mut(connector).expect("connector").rows;
        let row = rows.iter().find(|r| is(r, key)).expect("row").clone();
        rows.push(row);
    };
    twice("Profit_Employees_Alleo", &twin);
    twice("Profit_Contract", &double);
    let emps = ds.connectors.get_mut("Profit_Employees_Alleo").expect("employees");
    emps.rows.retain(|r| !is(r, &gone));
    emu.state.set_data(ds.clone());
    date = date.checked_add(1.day()).expect("date");
    let mut runs = Vec::new();
    for (config, store) in [(&small, &small_store), (&large, &large_store)] {
        match sync::run(config, store.clone(), date, false).await.expect("sync") {
            SyncResult::Committed(r) => runs.push(r),
            other => panic!("protections: expected a committed run, got {other:?}"),
        }
        let absent = |key: &str| store.employee(key).expect("employee").0.expect("stored").absent_runs;
        assert_eq!(absent(&twin), 0, "a duplicate row protects {twin}");
        assert_eq!(absent(&double), 0, "a repeated contract protects {double}");
        assert_eq!(absent(&gone), 1, "{gone} is gone");
    }
    assert_eq!(runs[0].source.rejected, runs[1].source.rejected);
    assert_eq!(
        small_store.snapshot().expect("snapshot"),
        large_store.snapshot().expect("snapshot")
    );

    // A guard that trips after a diff fed by the finishing thread holds
    // the plan computed again from the finished records: the same plan as
    // in memory. A third of the employees vanish (the source shrinks).
    let emps = ds.connectors.get_mut("Profit_Employees_Alleo").expect("employees");
    let keep = emps.rows.len() * 2 / 3;
    emps.rows.truncate(keep);
    emu.state.set_data(ds.clone());
    date = date.checked_add(1.day()).expect("date");
    let mut plans = Vec::new();
    for (config, store) in [(&small, &small_store), (&large, &large_store)] {
        let mut config = config.clone();
        config.guards.max_source_shrink_percent = 10.0;
        match sync::run(&config, store.clone(), date, false).await.expect("sync") {
            SyncResult::Held(r, reasons) => {
                assert!(reasons.iter().any(|x| x.contains("fewer")), "{reasons:?}");
                plans.push(store.held_plan(r.id).expect("held plan"));
            }
            other => panic!("shrunken source: expected a held run, got {other:?}"),
        }
    }
    assert!(plans[0].writes.len() > 2000, "{} writes", plans[0].writes.len());
    assert_eq!(plans[0].mutations, plans[1].mutations);
    assert_eq!(plans[0].writes, plans[1].writes);
    assert_eq!(plans[0].active_before, plans[1].active_before);

    // The temporary files were unlinked: only the state file (and config)
    // remain beside it.
    let mut names: Vec<String> = std::fs::read_dir(small_dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["afas-token", "config.toml", "state.redb"]);
}
