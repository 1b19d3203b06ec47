//! A panic in any thread a sync or the file sink starts (injected with the
//! `fault-injection` feature, src/fault.rs) fails that run or delivery and
//! changes nothing: the next attempt, with the fault gone, commits and
//! writes exactly what a run that never failed does. Run by scripts/test
//! as `cargo test --features fault-injection --test thread_panics`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use afas_sync::config::Config;
use afas_sync::delivery::{self, MutationEvent};
use afas_sync::emulator::data::{churn, generate};
use afas_sync::fault::{self, Point};
use afas_sync::store::Store;
use afas_sync::sync::{self, SyncResult};
use common::*;
use jiff::civil::Date;

/// The armed fault is process-wide: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const EMPLOYEES: u64 = 8000;
/// 1 MiB of sort memory does not hold 8,000 employees: the rows go through
/// temporary files and are finished beside the diff, on a thread of its own.
const SPILLED: &str = "\n[sync]\nsort_memory_mib = 1\n";
const REST: &str =
    "\n[guards]\nmax_leavers = 100000\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n\n[sink.files]\ndir = \"out\"\n";

fn days() -> (Date, Date) {
    (
        Date::new(2026, 3, 2).expect("date"),
        Date::new(2026, 3, 3).expect("date"),
    )
}

struct Site {
    _dir: tempfile::TempDir,
    config: Config,
    store: Arc<Store>,
    out: PathBuf,
}

fn site(base_url: &str, extra: &str) -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), base_url, TOKEN_HEX, &format!("{extra}{REST}"));
    let config = Config::load(&path).expect("config").config;
    let store = Arc::new(Store::open(&config.store.path).expect("store"));
    let out = dir.path().join("out");
    Site {
        _dir: dir,
        config,
        store,
        out,
    }
}

async fn commit(s: &Site, day: Date) -> u64 {
    match sync::run(&s.config, s.store.clone(), day, false).await.expect("sync") {
        SyncResult::Committed(r) => r.id,
        other => panic!("expected a committed run, got {other:?}"),
    }
}

/// What a failed run must leave as it was.
fn state(store: &Store) -> impl PartialEq + std::fmt::Debug {
    store.verify().expect("the state file verifies");
    (
        store.meta().expect("meta").last_committed_run,
        store.snapshot().expect("snapshot"),
        store.employee_counts().expect("counts"),
    )
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_any_sync_thread_fails_the_run_and_the_retry_commits_it_once() {
    let _serial = SERIAL.lock().await;
    let (day0, day1) = days();
    let ds = generate(29, EMPLOYEES, day0);
    let emu = spawn_emulator(ds.clone()).await;
    let mut next = ds.clone();
    churn(&mut next, 1, day1, 60, 60, 240);

    // The run that never fails, to compare with.
    let control = site(&emu.base_url(), "");
    commit(&control, day0).await;
    emu.state.set_data(next.clone());
    let control_run = commit(&control, day1).await;
    let expected = control.store.run_mutations(control_run).expect("mutations");
    assert!(expected.len() > 300, "day 1 changes enough: {}", expected.len());

    // Part-way through day 1, in every thread, in memory and spilled.
    // Every employee is finished; the diff hands on, and the writer
    // inserts, only what changed (~360 employees).
    let cases = [
        (Point::Finishing, "", EMPLOYEES / 2),
        (Point::Finishing, SPILLED, EMPLOYEES / 2),
        (Point::Diff, "", 150),
        (Point::Diff, SPILLED, 150),
        (Point::Writer, "", 150),
        (Point::Writer, SPILLED, 150),
    ];
    for (point, extra, nth) in cases {
        let what = format!("{point:?}{}", if extra.is_empty() { "" } else { ", spilled" });
        let s = site(&emu.base_url(), extra);
        emu.state.set_data(ds.clone());
        commit(&s, day0).await;
        let before = state(&s.store);

        emu.state.set_data(next.clone());
        fault::arm(point, nth);
        let failed = sync::run(&s.config, s.store.clone(), day1, false).await;
        assert!(!fault::armed(), "{what}: the fault went off");
        fault::disarm();
        let err = match failed {
            Err(e) => e.to_string(),
            Ok(r) => panic!("{what}: a run whose thread panicked returned {r:?}"),
        };
        assert!(err.contains("panicked"), "{what}: the error says so: {err}");
        assert_eq!(state(&s.store), before, "{what}: the failed run changed the state file");

        let run = commit(&s, day1).await;
        assert_eq!(
            s.store.run_mutations(run).expect("mutations"),
            expected,
            "{what}: the retry commits exactly the day's changes"
        );
        assert_eq!(
            s.store.snapshot().expect("snapshot"),
            control.store.snapshot().expect("snapshot"),
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_file_sink_writes_no_file_and_the_retry_writes_it_whole() {
    let _serial = SERIAL.lock().await;
    let (day0, _) = days();
    let emu = spawn_emulator(generate(31, EMPLOYEES, day0)).await;
    for point in [Point::FileReader, Point::FileWorker] {
        let s = site(&emu.base_url(), "");
        let run = commit(&s, day0).await;
        let sinks = delivery::sinks(&s.config, s.store.clone()).expect("sinks");
        let limiters = delivery::Limiters::default();
        let now = jiff::Timestamp::now().as_second();

        // The first import's ~8,000 joiners fill several chunks; the
        // third one read or written panics.
        fault::arm(point, 3);
        let report = delivery::deliver_pass(&s.config, &s.store, &sinks, &limiters, now, true)
            .await
            .expect("pass");
        assert!(!fault::armed(), "{point:?}: the fault went off");
        fault::disarm();
        assert_eq!(report.delivered, 0, "{point:?}: {report:?}");
        assert_eq!(report.pending, 1, "{point:?}: kept for a retry: {report:?}");
        assert_eq!(
            files(&s.out),
            Vec::<String>::new(),
            "{point:?}: no file, not even a temporary one"
        );

        let report = delivery::deliver_pass(&s.config, &s.store, &sinks, &limiters, now + 7200, true)
            .await
            .expect("pass");
        assert_eq!((report.delivered, report.pending), (1, 0), "{point:?}: {report:?}");
        let names = files(&s.out);
        assert_eq!(names.len(), 1, "{point:?}: {names:?}");
        let text = std::fs::read_to_string(s.out.join(&names[0])).expect("read");
        let mutations = s.store.run_mutations(run).expect("mutations");
        assert!(mutations.len() > 7000, "{}", mutations.len());
        let installation = s.store.installation_id().expect("installation");
        let expected: String = mutations
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let event = MutationEvent {
                    mutation: m,
                    installation,
                    run,
                    index: i as u32,
                };
                format!("{}\n", serde_json::to_string(&event).expect("json"))
            })
            .collect();
        assert!(
            text == expected,
            "{point:?}: the retried file is every event once, in order"
        );
    }
}
