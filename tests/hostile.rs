//! Hostile and odd AFAS input, end to end: a corpus of bad rows served by
//! the emulator over HTTP and synced into a real state file. None may
//! crash the sync, every bad row is rejected with its key and a reason, and
//! none turns a provisioned employee into a leaver or a mover.

mod common;

use std::sync::Arc;

use afas_sync::afas::rows::JsonRow;
use afas_sync::config::Config;
use afas_sync::emulator::data::{employee_fields, ConnectorData, Dataset};
use afas_sync::emulator::{AuthSetup, Emulator, EmulatorState};
use afas_sync::store::Store;
use afas_sync::sync::plan::Status;
use afas_sync::sync::{self, SyncResult};
use common::*;
use serde_json::{json, Value};

fn good(key: &str) -> JsonRow {
    let mut r = JsonRow::new();
    for (k, v) in [
        ("EmployeeId", json!(key)),
        ("Mail", json!(format!("e{key}@bedrijf.example"))),
        ("FirstName", json!("Anna")),
        ("BirthName", json!("Berg")),
        ("PrefixBirthName", json!("van den")),
        ("EmploymentStart", json!("2020-01-01T00:00:00Z")),
        ("EmploymentEnd", Value::Null),
        ("Department", json!("ICT")),
        ("DateOfBirth", json!("1990-01-01T00:00:00Z")),
        ("AlleoAccess", json!(true)),
        ("alleo_monthly_all_budget", json!(50.0)),
    ] {
        r.insert(k.into(), v);
    }
    r
}

fn deep(n: usize) -> Value {
    let mut v = json!("x");
    for _ in 0..n {
        v = json!([v]);
    }
    v
}

/// (field, hostile value). Each replaces one field of one provisioned
/// employee's row.
fn corpus() -> Vec<(&'static str, Value)> {
    vec![
        ("Mail", json!(42)),
        ("Mail", json!(true)),
        ("Mail", json!(["a@b.nl"])),
        ("Mail", json!({"value": "a@b.nl"})),
        ("Mail", json!("jan@@bedrijf.nl")),
        ("Mail", json!("jan@bedrijf")),
        ("Mail", json!("jan bedrijf.nl")),
        ("Mail", json!("jan@.bedrijf.nl")),
        ("Mail", json!(".jan@bedrijf.nl")),
        ("Mail", json!("jan..de@bedrijf.nl")),
        ("Mail", json!("jan@bedrijf..nl")),
        ("Mail", json!("jan@-bedrijf.nl")),
        ("Mail", json!("jan@bedrijf.1")),
        ("Mail", json!(format!("{}@bedrijf.nl", "a".repeat(65)))),
        ("Mail", json!("jan@bedrijf.nl\u{0}")),
        ("Mail", json!("")),
        ("FirstName", json!("x".repeat(100_000))),
        ("FirstName", deep(100)),
        ("FirstName", json!("Jan\u{7}")),
        ("FirstName", json!("Jan\r\nBCC: x")),
        ("FirstName", json!("\u{202E}nimdA")),
        ("FirstName", json!("Ann\u{2066}a")),
        ("FirstName", Value::Null),
        ("BirthName", json!({"a": 1})),
        ("BirthName", json!("   ")),
        ("EmploymentStart", json!("0000-00-00T00:00:00Z")),
        ("EmploymentStart", json!("2024-02-30T00:00:00Z")),
        ("EmploymentStart", json!("2024-13-01T00:00:00Z")),
        ("EmploymentStart", json!("24-01-01")),
        ("EmploymentStart", json!("2024-01-01T25:61:00Z")),
        ("EmploymentStart", json!(20240101)),
        ("EmploymentStart", json!("yesterday")),
        ("EmploymentStart", Value::Null),
        ("EmploymentEnd", json!("2019-12-31T00:00:00Z")),
        ("DateOfBirth", json!("1752-12-31T00:00:00Z")),
        ("DateOfBirth", json!("\u{FEFF}")),
        ("Department", json!("ICT\u{1b}[31m")),
        ("Department", json!([1, 2, 3])),
        ("AlleoAccess", json!(2)),
        ("AlleoAccess", json!("misschien")),
        ("AlleoAccess", json!(-1)),
        ("alleo_monthly_all_budget", json!("NaN")),
        ("alleo_monthly_all_budget", json!("Infinity")),
        ("alleo_monthly_all_budget", json!("1e5")),
        ("alleo_monthly_all_budget", json!("12.3.4")),
        ("alleo_monthly_all_budget", json!(1e300)),
        ("alleo_monthly_all_budget", json!("0.00001")),
        ("EmployeeId", json!("")),
        ("EmployeeId", json!("x".repeat(100))),
        ("EmployeeId", json!("77\n\u{1b}[2J")),
    ]
}

/// Odd but valid input that must be accepted unchanged (no mover).
fn odd_but_fine() -> Vec<(&'static str, Value)> {
    vec![
        ("FirstName", json!("\u{FEFF}Anna")),
        ("FirstName", json!("  Anna  ")),
        ("alleo_monthly_all_budget", json!("50,00")),
        ("alleo_monthly_all_budget", json!(50.000000000000001)),
        ("EmploymentStart", json!("2020-01-01")),
        ("AlleoAccess", json!(1)),
        ("Mail", json!("E{KEY}@BEDRIJF.EXAMPLE")),
    ]
}

fn dataset(rows: Vec<JsonRow>) -> Dataset {
    let mut ds = Dataset::default();
    ds.connectors.insert(
        "Profit_Employees_Alleo".into(),
        ConnectorData {
            description: String::new(),
            fields: employee_fields(),
            rows,
        },
    );
    ds
}

#[tokio::test]
async fn a_corpus_of_bad_rows_is_rejected_row_by_row_and_creates_no_leaver() {
    let bad = corpus();
    let odd = odd_but_fine();
    assert!(bad.len() >= 40, "{} hostile payloads", bad.len());
    let n = bad.len() + odd.len() + 5;
    let keys: Vec<String> = (0..n).map(|i| format!("{}", 5000 + i)).collect();
    let day0: Vec<JsonRow> = keys.iter().map(|k| good(k)).collect();
    let mut day1 = day0.clone();
    for (i, (field, value)) in bad.iter().enumerate() {
        day1[i].insert((*field).into(), value.clone());
    }
    for (j, (field, value)) in odd.iter().enumerate() {
        let i = bad.len() + j;
        let v = match value {
            Value::String(s) => json!(s.replace("{KEY}", &keys[i])),
            other => other.clone(),
        };
        day1[i].insert((*field).into(), v);
    }

    let state = EmulatorState::new(
        vec![("d0".into(), dataset(day0)), ("d1".into(), dataset(day1))],
        AuthSetup::token(token()),
    );
    let emu = Emulator::start_local(state).await.expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "page_size = 7\n\n[afas.contracts]\nconnector = \"Profit_Contract\"\nkey = [\"EmployeeId\", \"SequenceNumber\"]\nenabled = false\n\n[mapping.employees]\naccess = \"AlleoAccess\"\n[mapping.employees.budgets]\nalleo_monthly_all_budget = \"alleo_monthly_all_budget\"\n\n[guards]\nmax_rejected_percent = 100.0\nmax_leavers_percent = 100.0\n";
    let cfg_path = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, extra);
    let config = Config::load(&cfg_path).expect("config").config;
    assert!(config.afas.contracts.is_none(), "switched off in the file");
    let store = Arc::new(Store::open(&config.store.path).expect("store"));

    emu.state.set_day(0);
    let SyncResult::Committed(r0) = sync::run(&config, store.clone(), "2026-01-05".parse().expect("d"), false)
        .await
        .expect("sync")
    else {
        panic!("day 0 must commit")
    };
    assert_eq!(r0.joiners as usize, n);

    emu.state.set_day(1);
    for as_of in ["2026-01-06", "2026-01-07", "2026-01-08"] {
        let result = sync::run(&config, store.clone(), as_of.parse().expect("d"), false)
            .await
            .expect("no crash, no error");
        let SyncResult::Committed(r) = result else {
            panic!("expected a committed run: {result:?}")
        };
        assert_eq!(r.leavers, 0, "{as_of}: a bad row never makes a leaver");
        let movers: Vec<String> = store
            .run_mutations(r.id)
            .expect("m")
            .iter()
            .map(|m| format!("{}: {:?}", m.key, m.changes))
            .collect();
        assert_eq!(r.movers, 0, "{as_of}: nor a mover {movers:?}");
        // Every hostile row rejected, with a reason naming a field; the odd
        // ones accepted.
        assert_eq!(r.source.rejected as usize, bad.len(), "{:#?}", r.source.rejections);
        for rej in &r.source.rejections {
            assert!(
                rej.reason.contains("field") || rej.reason.contains("employee key"),
                "{rej:?}"
            );
            assert!(rej.reason.len() < 300, "reasons stay short: {}", rej.reason.len());
            // What reaches the journal and `run show`: no newline or
            // terminal escape from AFAS as it is.
            assert!(
                !rej.reason.chars().chain(rej.row.chars()).any(char::is_control),
                "{rej:?}"
            );
        }
    }
    let snap = store.snapshot().expect("snapshot");
    assert_eq!(snap.len(), n);
    assert!(
        snap.values().all(|p| p.status == Status::Active),
        "everyone still active"
    );
    store.verify().expect("digest");
}

#[tokio::test]
async fn an_undecodable_page_fails_the_run_without_touching_the_snapshot() {
    let rows: Vec<JsonRow> = (0..10).map(|i| good(&format!("{}", 7000 + i))).collect();
    let emu = spawn_emulator(dataset(rows)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, "");
    let mut config = Config::load(&cfg_path).expect("config").config;
    config.afas.contracts = None;
    let store = Arc::new(Store::open(&config.store.path).expect("store"));
    sync::run(&config, store.clone(), "2026-01-05".parse().expect("d"), false)
        .await
        .expect("sync");
    let digest = store.meta().expect("meta").snapshot_digest;
    // Bodies that are not JSON, deeply nested, or not UTF-8 at all.
    // serde_json refuses documents nested deeper than 128 levels, so a
    // 5000-deep body is an error, not a stack overflow.
    let nested = format!("{{\"rows\": [{}\"x\"{}]}}", "[".repeat(5000), "]".repeat(5000));
    for body in [
        "{\"rows\": [",
        "<html>maintenance</html>",
        nested.as_str(),
        "\u{FEFF}{\"rows\": []}",
    ] {
        emu.state.add_rule(afas_sync::emulator::FaultRule::new(
            "/connectors/",
            1,
            100,
            afas_sync::emulator::FaultAction::Status {
                status: 200,
                body: body.to_string(),
            },
        ));
        let err = sync::run(&config, store.clone(), "2026-01-06".parse().expect("d"), false)
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("unreadable answer"), "{err}");
        assert_eq!(store.meta().expect("meta").snapshot_digest, digest);
        emu.state.set_faults(Default::default());
    }
}
