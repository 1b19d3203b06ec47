//! The AFAS client against the emulator over real HTTP on 127.0.0.1:
//! paging, ordering, error mapping, retries, tokens and OAuth.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use afas_sync::afas::client::Credentials;
use afas_sync::afas::{AfasClient, AfasError, ReadSpec};
use afas_sync::config::PagingMode;
use afas_sync::emulator::{DataChange, FaultAction, FaultRule};
use common::*;
use serde_json::{json, Value};

fn spec(order: &[&str], paging: PagingMode, take: u32) -> ReadSpec {
    ReadSpec {
        connector: "Items".into(),
        order: order.iter().map(|s| s.to_string()).collect(),
        paging,
        take,
        fields: afas_sync::afas::rows::Fields::All,
        only: None,
    }
}

/// Reads everything; returns the ids in order, the page count, and any error.
async fn read_all(client: &AfasClient, spec: ReadSpec) -> (Vec<i64>, usize, Option<AfasError>) {
    let mut rx = client.read(spec);
    let (mut ids, mut pages) = (Vec::new(), 0);
    while let Some(p) = rx.recv().await {
        match p {
            Ok(p) => {
                pages += 1;
                ids.extend(p.rows.iter().map(|r| r.get("Id").and_then(Value::as_i64).unwrap_or(-1)));
            }
            Err(e) => return (ids, pages, Some(e)),
        }
    }
    (ids, pages, None)
}

#[tokio::test]
async fn paging_reads_every_row_once_at_every_boundary() {
    let take = 10usize;
    for paging in [PagingMode::Keyset, PagingMode::Skip] {
        for n in [0, 1, take - 1, take, take + 1, 10 * take] {
            let emu = spawn_emulator(items(n)).await;
            let client = client(&emu.base_url());
            let (ids, pages, err) = read_all(&client, spec(&["Id"], paging, take as u32)).await;
            assert!(err.is_none(), "{paging:?} n={n}: {err:?}");
            assert_eq!(ids, (1..=n as i64).collect::<Vec<_>>(), "{paging:?} n={n}");
            // A full last page needs one more page to know it is the end.
            // Keyset pages overlap by the last row (inclusive bound), so
            // each later page brings take - 1 new rows.
            let want_pages = match paging {
                PagingMode::Skip => n / take + 1,
                PagingMode::Keyset if n < take => 1,
                PagingMode::Keyset => 1 + (n - take) / (take - 1) + 1,
            };
            assert_eq!(pages, want_pages, "{paging:?} n={n} pages");
            // `take` is always sent explicitly, and the key is always ordered on.
            for r in emu.state.requests() {
                let q: std::collections::HashMap<_, _> = r.query.iter().cloned().collect();
                assert_eq!(q.get("take").map(String::as_str), Some("10"), "{:?}", r.query);
                assert_eq!(q.get("orderbyfieldids").map(String::as_str), Some("Id"));
            }
            emu.stop().await;
        }
    }
}

#[tokio::test]
async fn descending_and_multi_field_order() {
    let emu = spawn_emulator(items(47)).await;
    let client = client(&emu.base_url());
    for paging in [PagingMode::Keyset, PagingMode::Skip] {
        let (ids, _, err) = read_all(&client, spec(&["-Id"], paging, 5)).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(ids, (1..=47).rev().collect::<Vec<_>>(), "{paging:?}");

        // Group descending, then Id ascending: a composite keyset.
        let (ids, _, err) = read_all(&client, spec(&["-Group", "Id"], paging, 4)).await;
        assert!(err.is_none(), "{err:?}");
        let mut want: Vec<i64> = (1..=47).collect();
        want.sort_by_key(|i| (std::cmp::Reverse(i % 3), *i));
        assert_eq!(ids, want, "{paging:?}");
    }
}

#[tokio::test]
async fn keyset_paging_survives_rows_inserted_and_deleted_between_pages() {
    let emu = spawn_emulator(items(30)).await;
    // After the first page: delete Id 3 (already read) and Id 25 (not yet
    // read), insert Id 100. Keyset sees every surviving row exactly once.
    let mut new_row = serde_json::Map::new();
    new_row.insert("Id".into(), json!(100));
    new_row.insert("Group".into(), json!("g1"));
    new_row.insert("Name".into(), json!("late"));
    emu.state.set_faults(afas_sync::emulator::Faults {
        changes: vec![DataChange::new(
            "/connectors/",
            1,
            "Items",
            vec![new_row],
            vec![("Id".into(), json!(3)), ("Id".into(), json!(25))],
        )],
        ..Default::default()
    });
    let client = client(&emu.base_url());
    let (ids, _, err) = read_all(&client, spec(&["Id"], PagingMode::Keyset, 10)).await;
    assert!(err.is_none(), "{err:?}");
    let mut want: Vec<i64> = (1..=30).filter(|i| *i != 25).collect();
    want.push(100);
    assert_eq!(ids, want);
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no row read twice");
}

#[tokio::test]
async fn duplicate_keys_across_a_page_boundary_are_all_delivered() {
    // Id 10 appears twice, at the end of page 1 and the start of page 2.
    let mut ds = items(20);
    if let Some(c) = ds.connectors.get_mut("Items") {
        let mut dup = c.rows[9].clone();
        dup.insert("Name".into(), json!("duplicate"));
        c.rows.insert(10, dup);
    }
    let emu = spawn_emulator(ds).await;
    let (ids, _, err) = read_all(&client(&emu.base_url()), spec(&["Id"], PagingMode::Keyset, 10)).await;
    assert!(err.is_none(), "{err:?}");
    let mut want: Vec<i64> = (1..=20).collect();
    want.insert(10, 10);
    assert_eq!(ids, want);
}

#[tokio::test]
async fn a_key_that_does_not_advance_stops_instead_of_looping() {
    // Every row has the same key: keyset paging cannot make progress.
    let mut ds = items(25);
    if let Some(c) = ds.connectors.get_mut("Items") {
        for r in &mut c.rows {
            r.insert("Group".into(), json!("same"));
        }
    }
    let emu = spawn_emulator(ds).await;
    let client = client(&emu.base_url());
    let (_, _, err) = read_all(&client, spec(&["Group"], PagingMode::Keyset, 10)).await;
    assert!(matches!(err, Some(AfasError::Paging { .. })), "{err:?}");
    assert!(emu.state.requests().len() < 5);
}

fn status_rule(status: u16, body: &str, times: u32) -> FaultRule {
    FaultRule::new(
        "/connectors/",
        1,
        times,
        FaultAction::Status {
            status,
            body: body.into(),
        },
    )
}

#[tokio::test]
async fn permanent_errors_are_mapped_and_not_retried() {
    type Case = (FaultAction, fn(&AfasError) -> bool, &'static str);
    let cases: Vec<Case> = vec![
        (
            FaultAction::Status {
                status: 401,
                body: String::new(),
            },
            |e| matches!(e, AfasError::Unauthorized { .. }),
            "App connector",
        ),
        (
            FaultAction::Status {
                status: 403,
                body: String::new(),
            },
            |e| matches!(e, AfasError::Forbidden { .. }),
            "IP restriction",
        ),
        (
            FaultAction::Status {
                status: 404,
                body: String::new(),
            },
            |e| matches!(e, AfasError::NotFound { .. }),
            "does not exist",
        ),
        (
            FaultAction::Functional {
                message: "Connector field 'Mail' not found".into(),
            },
            |e| matches!(e, AfasError::Functional { temporary: false, .. }),
            "lacks a field",
        ),
        (
            FaultAction::Functional {
                message: "GetConnector not supported for this app or the user is not authorized".into(),
            },
            |e| matches!(e, AfasError::Functional { temporary: false, .. }),
            "setup step 6",
        ),
        (
            FaultAction::Functional {
                message: "This GetConnector (definition) is blocked".into(),
            },
            |e| matches!(e, AfasError::Functional { temporary: false, .. }),
            "unblock",
        ),
    ];
    for (action, is_expected, hint) in cases {
        let emu = spawn_emulator(items(5)).await;
        emu.state
            .add_rule(FaultRule::new("/connectors/", 1, 10, action.clone()));
        let client = client(&emu.base_url());
        let (_, _, err) = read_all(&client, spec(&["Id"], PagingMode::Keyset, 10)).await;
        let err = err.expect("an error");
        assert!(is_expected(&err), "{action:?} gave {err:?}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains(hint), "{err}");
        assert_eq!(emu.state.requests().len(), 1, "{action:?} must not be retried");
        emu.stop().await;
    }
    // The Profit log reference is passed on for AFAS support.
    let emu = spawn_emulator(items(5)).await;
    emu.state.add_rule(FaultRule::new(
        "/connectors/",
        1,
        1,
        FaultAction::Functional {
            message: "Something odd".into(),
        },
    ));
    let (_, _, err) = read_all(&client(&emu.base_url()), spec(&["Id"], PagingMode::Keyset, 10)).await;
    assert!(err.expect("error").to_string().contains("Profit log reference"));
}

#[tokio::test]
async fn transient_errors_are_retried_then_succeed() {
    let cases = vec![
        FaultAction::Maintenance { retry_after: 0 },
        FaultAction::Functional {
            message: "The maximum duration for performing the assignment has been exceeded".into(),
        },
        FaultAction::Functional {
            message: "Out of memory".into(),
        },
        FaultAction::Status {
            status: 502,
            body: "bad gateway".into(),
        },
        FaultAction::Truncate,
        FaultAction::Reset,
    ];
    for action in cases {
        let emu = spawn_emulator(items(15)).await;
        emu.state.add_rule(FaultRule::new("/connectors/", 2, 2, action.clone()));
        let client = client(&emu.base_url());
        let (ids, _, err) = read_all(&client, spec(&["Id"], PagingMode::Keyset, 10)).await;
        assert!(err.is_none(), "{action:?}: {err:?}");
        assert_eq!(ids, (1..=15).collect::<Vec<_>>(), "{action:?}");
        // Two failed attempts on page 2, then success: 1 + 2 + 1 requests.
        assert_eq!(emu.state.requests().len(), 4, "{action:?}");
        emu.stop().await;
    }
}

#[tokio::test]
async fn retries_are_bounded_and_long_maintenance_is_not_waited_for() {
    let emu = spawn_emulator(items(5)).await;
    emu.state.add_rule(status_rule(500, "not json", 100));
    let (_, _, err) = read_all(&client(&emu.base_url()), spec(&["Id"], PagingMode::Keyset, 10)).await;
    assert!(matches!(err, Some(AfasError::Status { status: 500, .. })), "{err:?}");
    assert_eq!(emu.state.requests().len(), 4, "1 try + max_retries (3)");

    // AFAS asks for two hours; the client refuses to block a run that long.
    let emu = spawn_emulator(items(5)).await;
    emu.state.add_rule(FaultRule::new(
        "/connectors/",
        1,
        100,
        FaultAction::Maintenance { retry_after: 7200 },
    ));
    let (_, _, err) = read_all(&client(&emu.base_url()), spec(&["Id"], PagingMode::Keyset, 10)).await;
    let err = err.expect("error");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7200)));
    assert!(err.to_string().contains("7200"), "{err}");
    assert_eq!(emu.state.requests().len(), 1);
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_transient_and_bounded() {
    let emu = spawn_emulator(items(5)).await;
    emu.state
        .add_rule(FaultRule::new("/connectors/", 1, 100, FaultAction::Hang));
    let mut opts = options(&emu.base_url());
    opts.request_timeout = Duration::from_millis(300);
    opts.max_retries = 1;
    let client = AfasClient::new(opts).expect("client");
    let (_, _, err) = read_all(&client, spec(&["Id"], PagingMode::Keyset, 10)).await;
    assert!(
        matches!(err, Some(AfasError::Timeout { .. }) | Some(AfasError::Decode { .. })),
        "{err:?}"
    );
    assert_eq!(emu.state.requests().len(), 2);

    // A page slower than the timeout.
    let emu = spawn_emulator(items(5)).await;
    emu.state.add_rule(FaultRule::new(
        "/connectors/",
        1,
        100,
        FaultAction::Delay(Duration::from_millis(800)),
    ));
    let mut opts = options(&emu.base_url());
    opts.request_timeout = Duration::from_millis(200);
    opts.max_retries = 0;
    let (_, _, err) = read_all(
        &AfasClient::new(opts).expect("client"),
        spec(&["Id"], PagingMode::Keyset, 10),
    )
    .await;
    assert!(matches!(err, Some(AfasError::Timeout { .. })), "{err:?}");

    // Nothing listens: connection refused, retried, then a clear error.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (_, _, err) = read_all(
        &common::client(&format!("http://127.0.0.1:{port}/ProfitRestServices")),
        spec(&["Id"], PagingMode::Keyset, 10),
    )
    .await;
    let err = err.expect("error");
    assert!(matches!(err, AfasError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("cannot reach AFAS"), "{err}");
}

#[tokio::test]
async fn garbage_entries_are_reported_without_losing_the_page() {
    let emu = spawn_emulator(items(3)).await;
    let body = json!({"skip": 0, "take": 10, "rows": [
        {"Id": 1, "Group": "g1", "Name": "ok"},
        "garbage",
        42,
        {"Id": 2, "Group": {"deep": [1, 2]}, "Name": null},
        {"Id": 3, "Group": "g0", "Name": "\u{202e}evil"}
    ]});
    emu.state.add_rule(status_rule(200, &body.to_string(), 1));
    let mut rx = client(&emu.base_url()).read(spec(&["Id"], PagingMode::Keyset, 10));
    let page = rx.recv().await.expect("a page").expect("page ok");
    assert_eq!(page.rows.len(), 3);
    assert_eq!(page.bad_rows.len(), 2, "{:?}", page.bad_rows);
    assert!(page.bad_rows[0].contains("entry 1"));
    // The row with a garbage value is decoded field by field later; the
    // decoder names the field instead of failing the page.
    let err = afas_sync::afas::rows::text(&page.rows[1], "Group").unwrap_err();
    assert_eq!(err.field, "Group");
}

#[tokio::test]
async fn only_the_named_fields_are_kept_and_the_others_never_matter() {
    let emu = spawn_emulator(items(3)).await;
    let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
    let body = format!(
        r#"{{"skip": 0, "take": 10, "rows": [
            {{"Id": 1, "Group": "g1", "Name": "first", "Unmapped": {deep}}},
            {{"Id": 2, "Group": "first", "Name": {{"an": ["object"]}}, "Gro\u0075p": "escaped, last"}},
            {{"Id": 3, "Name": "no group"}}
        ]}}"#
    );
    emu.state.add_rule(status_rule(200, &body, 1));
    let mut s = spec(&["Id"], PagingMode::Keyset, 10);
    s.fields = afas_sync::afas::rows::Fields::Only(vec!["Id".to_string(), "Group".to_string()].into());
    let mut rx = client(&emu.base_url()).read(s);
    let page = rx.recv().await.expect("a page").expect("page ok");
    assert!(page.bad_rows.is_empty(), "{:?}", page.bad_rows);
    let got: Vec<(Option<i64>, Option<&str>)> = page
        .rows
        .iter()
        .map(|r| {
            (
                r.get("Id").and_then(Value::as_i64),
                r.get("Group").and_then(Value::as_str),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(Some(1), Some("g1")), (Some(2), Some("escaped, last")), (Some(3), None)]
    );
    // A field sent twice keeps its last value, as a JSON map would; an
    // escaped field name is the same name.
    // Fields not asked for are not kept, whatever they held: the garbage
    // in `Name` and a nesting far past serde_json's limit in `Unmapped`.
    for r in &page.rows {
        assert!(r.get("Name").is_none() && r.get("Unmapped").is_none());
    }
    // A kept field the row lacks is missing, not empty: the decoder says so.
    let err = afas_sync::afas::rows::text(&page.rows[2], "Group").unwrap_err();
    assert!(err.reason.contains("missing"), "{err}");
}

#[tokio::test]
async fn a_garbage_entry_still_fills_the_page_so_reading_goes_on() {
    // Five entries of a five-row page, one of them not a row: the page is
    // full, so there may be more. Counting only the good rows would end the
    // read here and lose every later employee without a word.
    for paging in [PagingMode::Keyset, PagingMode::Skip] {
        let emu = spawn_emulator(items(12)).await;
        let body = json!({"skip": 0, "take": 5, "rows": [
            {"Id": 1, "Group": "g1", "Name": "a"},
            {"Id": 2, "Group": "g0", "Name": "b"},
            "garbage",
            {"Id": 3, "Group": "g1", "Name": "c"},
            {"Id": 4, "Group": "g0", "Name": "d"}
        ]});
        emu.state.add_rule(status_rule(200, &body.to_string(), 1));
        let mut rx = client(&emu.base_url()).read(spec(&["Id"], paging, 5));
        let (mut ids, mut bad) = (Vec::new(), 0);
        while let Some(page) = rx.recv().await {
            let page = page.expect("page ok");
            bad += page.bad_rows.len();
            ids.extend(
                page.rows
                    .iter()
                    .map(|r| r.get("Id").and_then(Value::as_i64).unwrap_or(-1)),
            );
        }
        assert_eq!(bad, 1, "{paging:?}");
        // Keyset goes on from the last key (4); skip from entry 5, the
        // sixth row (the injected page stood in for rows 1-5).
        let want: Vec<i64> = match paging {
            PagingMode::Keyset => (1..=12).collect(),
            PagingMode::Skip => (1..=4).chain(6..=12).collect(),
        };
        assert_eq!(ids, want, "{paging:?}");
        emu.stop().await;
    }
}

#[tokio::test]
async fn all_three_token_forms_authenticate_and_malformed_ones_never_reach_afas() {
    use base64::Engine as _;
    let emu = spawn_emulator(items(3)).await;
    let xml = token().to_xml();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&xml);
    for form in [xml.clone(), TOKEN_HEX.to_string(), b64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg_path = write_config(dir.path(), &emu.base_url(), &form, "");
        let cfg = afas_sync::config::Config::load(&cfg_path).expect("config").config;
        let opts = afas_sync::afas::ClientOptions::from_config(&cfg.afas).expect("token parses");
        let c = AfasClient::new(opts).expect("client");
        assert_eq!(c.profit_version().await.expect("authenticated"), "7.7.10");
    }
    let before = emu.state.requests().len();
    for bad in [
        "<token><version>1</version><data>ABC</data></token>",
        "12345",
        "<token>",
        "bm90IGEgdG9rZW4=",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg_path = write_config(dir.path(), &emu.base_url(), bad, "");
        let cfg = afas_sync::config::Config::load(&cfg_path).expect("config").config;
        let err = afas_sync::afas::ClientOptions::from_config(&cfg.afas)
            .err()
            .expect("refused");
        assert!(matches!(err, AfasError::Token(_)), "{bad}: {err:?}");
    }
    assert_eq!(emu.state.requests().len(), before, "no request with a malformed token");

    // A wrong (well-formed) token: 401, mapped with the operator's next step.
    let mut opts = options(&emu.base_url());
    opts.credentials = Credentials::Token(afas_sync::afas::token::AppToken::parse(&"A".repeat(64)).expect("hex"));
    let err = AfasClient::new(opts)
        .expect("client")
        .metainfo()
        .await
        .expect_err("401");
    assert!(matches!(err, AfasError::Unauthorized { .. }));
}

#[tokio::test]
async fn metainfo_mismatch_is_caught() {
    use afas_sync::afas::client::check_fields;
    use afas_sync::afas::FieldKind;
    let emu = spawn_emulator(items(1)).await;
    let meta = client(&emu.base_url()).connector_meta("Items").await.expect("metainfo");
    let wanted = vec![
        ("Id".to_string(), FieldKind::Text, "k.id".to_string()),
        (
            "Mail".to_string(),
            FieldKind::Text,
            "mapping.employees.email".to_string(),
        ),
        (
            "Name".to_string(),
            FieldKind::Date,
            "mapping.employees.employment_start".to_string(),
        ),
    ];
    let problems = check_fields("Items", &meta, &wanted);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].field, "Mail");
    assert!(problems[0].to_string().contains("does not exist"));
    assert!(problems[1].to_string().contains("has type `string`"));
    let err = client(&emu.base_url()).connector_meta("Nope").await.expect_err("404");
    assert!(matches!(err, AfasError::NotFound { .. }));
}

#[tokio::test]
async fn oversized_pages_and_long_queries_fail_clearly() {
    let emu = spawn_emulator(items(3)).await;
    // 3 columns × 60,000 rows > 150,000 cells: AFAS's "Out of memory".
    let (_, _, err) = read_all(&client(&emu.base_url()), spec(&["Id"], PagingMode::Keyset, 60_000)).await;
    let err = err.expect("error");
    assert!(err.to_string().contains("lower afas.page_size"), "{err}");
    // An absurd key list exceeds the query-string limit before sending.
    let long: Vec<String> = (0..400).map(|i| format!("Field{i}")).collect();
    let refs: Vec<&str> = long.iter().map(String::as_str).collect();
    let before = emu.state.requests().len();
    let (_, _, err) = read_all(&client(&emu.base_url()), spec(&refs, PagingMode::Keyset, 10)).await;
    assert!(matches!(err, Some(AfasError::Paging { .. })), "{err:?}");
    assert_eq!(emu.state.requests().len(), before);
    let _ = Value::Null;
}
