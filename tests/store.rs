//! The state file under stress: SIGKILL at random points during syncs, a
//! file written by the first released schema, and files this binary must
//! refuse (newer, corrupt, locked) without touching them.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use afas_sync::emulator::data::{churn, generate, Rng};
use afas_sync::model::{Attempt, EmployeeKey, Reason, Step};
use afas_sync::store::{EntryResult, OutboxEntry, OutboxItem, Store, StoreError, SCHEMA_VERSION};
use afas_sync::sync::plan::Status;
use common::*;

const FIXTURE_V1: &str = "tests/fixtures/store-schema1.redb";
const FIXTURE_V2: &str = "tests/fixtures/store-schema2.redb";
const FIXTURE_V3: &str = "tests/fixtures/store-schema3.redb";

fn today() -> jiff::civil::Date {
    jiff::civil::Date::new(2026, 11, 24).expect("date")
}

fn copy_fixture(dir: &Path) -> PathBuf {
    let target = dir.join("state.redb");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_V1), &target).expect("copy fixture");
    target
}

#[tokio::test]
async fn sigkill_during_syncs_never_leaves_a_half_applied_run() {
    let emu = spawn_emulator(generate(11, 3000, today())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        &emu.base_url(),
        TOKEN_HEX,
        "page_size = 500\n\n[guards]\nmax_leavers_percent = 100.0\nmax_leavers = 100000\nmax_source_shrink_percent = 100.0\nmax_rejected_percent = 100.0\n",
    );
    let cfg = cfg.to_str().expect("path").to_string();
    let store_path = dir.path().join("state.redb");

    // How long does one sync take here? Kills are spread over that window.
    let started = Instant::now();
    let (code, out, err) = run_bin(&["--config", &cfg, "sync", "--as-of", "2026-11-24"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let window = started.elapsed().mul_f32(1.3).max(Duration::from_millis(50));

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    eprintln!("crash test seed {seed}, window {window:?}");
    let mut rng = Rng::new(seed);
    let (mut killed, mut completed) = (0, 0);
    let mut as_of = today();
    for i in 0..30u64 {
        // Every iteration brings real work: hires, leavers and movers.
        as_of = as_of.checked_add(jiff::ToSpan::day(1)).expect("date");
        let day = as_of;
        emu.state.with_data(|d| {
            churn(d, seed.wrapping_add(i), day, 10, 5, 30);
        });
        let mut child = spawn_sync(&cfg, as_of);
        let delay = Duration::from_micros(rng.below(window.as_micros() as u64));
        tokio::select! {
            status = child.wait() => {
                let status = status.expect("wait");
                assert!(matches!(status.code(), Some(0) | Some(4)), "sync failed: {status:?}");
                completed += 1;
            }
            _ = tokio::time::sleep(delay) => {
                child.start_kill().expect("SIGKILL");
                let _ = child.wait().await;
                killed += 1;
            }
        }
        // After every run or kill: the file opens, and the snapshot is
        // exactly what the last committed run recorded.
        let store = Store::open(&store_path).expect("store opens after SIGKILL");
        store.verify().expect("snapshot equals the last committed run");
        let meta = store.meta().expect("meta");
        let last = store
            .run(meta.last_committed_run.expect("a committed run"))
            .expect("run");
        assert!(matches!(
            last.outcome,
            afas_sync::sync::Outcome::Success | afas_sync::sync::Outcome::NothingToDo
        ));
        let mutations = store.run_mutations(last.id).expect("mutations");
        assert_eq!(
            mutations.len() as u64,
            last.joiners + last.movers + last.leavers + last.rehires,
            "the run record and its mutations were committed together"
        );
    }
    eprintln!("crash test: {killed} killed, {completed} completed");
    assert!(killed >= 5, "the kills must actually interrupt syncs ({killed} killed)");

    // A last clean sync catches up with AFAS after all the interruptions.
    let (code, out, err) = run_bin(&["--config", &cfg, "sync", "--as-of", &as_of.to_string()]).await;
    assert!(code == 0 || code == 4, "{out}{err}");
    let (code, _, _) = run_bin(&["--config", &cfg, "sync", "--as-of", &as_of.to_string()]).await;
    assert_eq!(code, 4, "caught up: nothing left to do");
}

#[test]
fn a_store_written_by_the_first_released_schema_opens_and_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = copy_fixture(dir.path());
    assert_fixture_reads(&path, false);
    assert!(
        dir.path().join("state.redb.schema1.bak").exists(),
        "backed up before migrating"
    );
    assert_chunks_compressed(&path);
}

#[test]
fn a_store_written_by_schema_2_opens_and_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_V2), &path).expect("copy fixture");
    assert!(
        !chunk_values(&path).iter().any(|v| v.starts_with(&[0xff; 4])),
        "schema 2 stored raw chunks"
    );
    assert_fixture_reads(&path, false);
    assert!(
        dir.path().join("state.redb.schema2.bak").exists(),
        "backed up before migrating"
    );
    assert_chunks_compressed(&path);
}

#[test]
fn a_store_written_by_schema_3_opens_and_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_V3), &path).expect("copy fixture");
    assert_fixture_reads(&path, true);
    assert!(
        !dir.path().join("state.redb.schema3.bak").exists(),
        "nothing to migrate"
    );
    assert_chunks_compressed(&path);
}

/// Leavers' personal data is found for scrubbing through an index by leave
/// date. A file written before the index gets it from its first purge (one
/// scan); after that a purge reads only what is due, and a purge with
/// nothing to do commits nothing.
#[test]
fn the_retention_purge_indexes_an_older_file_once_then_scrubs_from_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_V3), &path).expect("copy fixture");
    let store = Store::open(&path).expect("open");
    let kept = |store: &Store| -> Vec<String> {
        let snap = store.snapshot().expect("snapshot");
        snap.values()
            .filter(|p| matches!(p.status, Status::Left { .. }) && p.employee.is_some())
            .map(|p| p.key.to_string())
            .collect()
    };
    let leavers = kept(&store);
    assert!(leavers.len() >= 2, "the fixture has leavers: {leavers:?}");
    assert!(leaver_index(&store, &path).is_empty(), "written before the index");

    // Nothing due yet: the scan indexes every leaver and scrubs none.
    let day = |n: i64| today().checked_add(jiff::ToSpan::days(n)).expect("date");
    let stats = store.purge(day(5), 400, 90).expect("purge");
    assert_eq!(stats.scrubbed_leavers, 0);
    let mut indexed: Vec<String> = leaver_index(&store, &path).into_iter().map(|(_, k)| k).collect();
    indexed.sort();
    let mut expected = leavers.clone();
    expected.sort();
    assert_eq!(indexed, expected);

    // Forgetting a leaver takes it out of the index too.
    let gone = &leavers[0];
    assert!(store.forget(gone).expect("forget"));
    assert!(leaver_index(&store, &path).iter().all(|(_, k)| k != gone));

    // Again nothing due: nothing is committed (the file is byte for byte
    // the same).
    let before = std::fs::read(&path).expect("read");
    let stats = store.purge(day(6), 400, 90).expect("purge");
    assert_eq!((stats.runs, stats.scrubbed_leavers), (0, 0));
    assert!(std::fs::read(&path).expect("read") == before, "no commit for nothing");

    // A delivery attempt whose answer quotes each remaining leaver, and
    // one of an active employee.
    let active = store
        .snapshot()
        .expect("snapshot")
        .values()
        .find(|p| p.status == Status::Active)
        .map(|p| p.key.clone())
        .expect("an active employee");
    let mut planted = Vec::new();
    for (i, key) in leavers[1..]
        .iter()
        .map(|k| EmployeeKey::parse(k).expect("key"))
        .chain([active])
        .enumerate()
    {
        let seq = 900_000 + i as u64;
        let entry = OutboxEntry::new(
            OutboxItem::Mutation {
                run: 1,
                index: 0,
                key: key.clone(),
            },
            0,
        );
        let attempt = Attempt {
            at: 0,
            reason: Reason::Uniqueness,
            message: format!("userName of {key} is taken"),
            steps: vec![Step {
                op: "POST /Users".into(),
                status: Some(409),
                scim_type: Some("uniqueness".into()),
                detail: Some(format!("{key}@bedrijf.example exists")),
            }],
        };
        store
            .outbox_apply("scim", &[(seq, EntryResult::Update(entry, Some(attempt)))])
            .expect("apply");
        assert_eq!(store.attempts("scim", seq).expect("attempts").len(), 1);
        planted.push(seq);
    }

    // Due: every remaining leaver is scrubbed through the index, which is
    // then empty; the snapshot still verifies. What targets answered about
    // them goes too; the active employee's attempt stays.
    let stats = store.purge(day(200), 400, 90).expect("purge");
    assert_eq!(stats.scrubbed_leavers as usize, leavers.len() - 1);
    let (active_seq, leaver_seqs) = planted.split_last().expect("planted");
    for seq in leaver_seqs {
        assert!(store.attempts("scim", *seq).expect("attempts").is_empty(), "{seq}");
    }
    assert_eq!(store.attempts("scim", *active_seq).expect("attempts").len(), 1);
    assert!(kept(&store).is_empty());
    assert!(leaver_index(&store, &path).is_empty());
    store.verify().expect("digest");
}

/// The leaver index as stored: (yyyymmdd, key).
fn leaver_index(store: &Store, path: &Path) -> Vec<(u32, String)> {
    let _ = store;
    // redb allows one Database per file per process; read through a copy.
    let copy = path.with_extension("copy.redb");
    std::fs::copy(path, &copy).expect("copy");
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::open(&copy).expect("raw open");
    let txn = db.begin_read().expect("txn");
    let t = match txn.open_table(redb::TableDefinition::<(u32, &str), ()>::new("leavers_by_date")) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Vec::new(),
        Err(e) => panic!("{e}"),
    };
    t.iter()
        .expect("iter")
        .map(|item| {
            let (k, _) = item.expect("item");
            let (d, key) = k.value();
            (d, key.to_string())
        })
        .collect()
}

/// The stored values of the mutation chunk table, read with redb itself.
fn chunk_values(path: &Path) -> Vec<Vec<u8>> {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::open(path).expect("raw open");
    let txn = db.begin_read().expect("txn");
    let t = txn
        .open_table(redb::TableDefinition::<(u64, u32), &[u8]>::new("mutation_chunks"))
        .expect("chunks");
    t.iter()
        .expect("iter")
        .map(|item| item.expect("item").1.value().to_vec())
        .collect()
}

/// Schema 3 stores every chunk compressed (tagged `u32::MAX`).
fn assert_chunks_compressed(path: &Path) {
    let values = chunk_values(path);
    assert!(!values.is_empty());
    assert!(
        values.iter().all(|v| v.starts_with(&[0xff; 4])),
        "every chunk compressed"
    );
}

/// What every fixture holds (`write_current_schema_fixture` wrote them the
/// same way): 20 employees, two successful runs, pay data, history.
/// `counted`: written by a binary that keeps the active count.
fn assert_fixture_reads(path: &Path, counted: bool) {
    let store = Store::open(path).expect("fixture opens");
    assert_eq!(store.meta().expect("meta").schema_version, SCHEMA_VERSION);
    store.verify().expect("digest of the old file");
    let snap = store.snapshot().expect("snapshot");
    // 20 generated employees plus the second day's joiners.
    assert!(snap.len() >= 20, "{}", snap.len());
    // Written before the active count was kept: counted from the snapshot.
    let active = snap.values().filter(|p| p.status == Status::Active).count() as u64;
    let kept = store.meta().expect("meta").active_employees;
    assert_eq!(kept, counted.then_some(active));
    assert_eq!(store.employee_counts().expect("counts"), (active, snap.len() as u64));
    let runs = store.runs(10).expect("runs");
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.outcome == afas_sync::sync::Outcome::Success));
    // Schema 2 keeps history as an index into the run's mutations, rebuilt
    // by the migration: every mutation of every run is in its employee's
    // history, unchanged.
    let mut seen = 0;
    let mut keys = std::collections::BTreeSet::new();
    for run in &runs {
        for m in store.run_mutations(run.id).expect("mutations") {
            keys.insert(m.key.to_string());
            let (_, history) = store.employee(m.key.as_str()).expect("employee");
            assert!(
                history.iter().any(|(r, h)| *r == run.id && *h == m),
                "{} in run {}",
                m.key,
                run.id
            );
            seen += 1;
        }
    }
    assert!(seen >= 20, "{seen}");
    // Every stored employee arrived through a mutation.
    assert_eq!(keys.len(), snap.len());
    // Entries written before attempts were kept have none, and are counted.
    let counts = store.outbox_counts().expect("counts");
    for (sink, c) in &counts {
        for (seq, _) in store.outbox_entries(sink).expect("entries") {
            assert!(store.attempts(sink, seq).expect("attempts").is_empty());
        }
        assert!(c.reasons.iter().all(|t| t.reason.is_none()), "{c:?}");
        assert_queue_reads_whole(&store, sink);
    }
    let (current, history) = store.employee("1000001").expect("employee");
    let current = current.expect("stored");
    assert!(!history.is_empty());
    let pay = &current.employee.expect("personal data").pay;
    assert!(
        pay.salary.is_some() && pay.holiday_allowance_balance.is_some() && !pay.leave_hours.is_empty(),
        "{pay:?}"
    );
}

/// A pass reads every live entry of `sink` from the index by employee, in
/// windows, each employee's entries in their order; returns how many.
fn assert_queue_reads_whole(store: &Store, sink: &str) -> usize {
    let live: Vec<u64> = store
        .outbox_entries(sink)
        .expect("entries")
        .into_iter()
        .filter(|(_, e)| !e.dead)
        .map(|(seq, _)| seq)
        .collect();
    let (mut read, mut after, mut keys) = (Vec::new(), None::<String>, Vec::new());
    loop {
        let w = store
            .due_window(sink, after.as_deref(), 16, i64::MAX, true)
            .expect("window");
        for chain in &w.chains {
            assert!(
                chain.windows(2).all(|j| j[0].seq < j[1].seq),
                "{sink}: chain out of order"
            );
            let key = chain[0].entry.item.order_key();
            assert!(chain.iter().all(|j| j.entry.item.order_key() == key));
            assert!(chain
                .iter()
                .all(|j| j.mutation.as_ref().is_some_and(|m| m.key.as_str() == key)));
            read.extend(chain.iter().map(|j| j.seq));
            keys.push(key.to_string());
        }
        match w.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    read.extend(
        store
            .due_run_chain(sink, i64::MAX, true)
            .expect("run chain")
            .iter()
            .map(|j| j.seq),
    );
    read.sort_unstable();
    assert_eq!(read, live, "{sink}");
    assert!(keys.windows(2).all(|k| k[0] < k[1]), "{keys:?}");
    live.len()
}

/// Written by the release before the outbox was indexed by employee
/// (ec4a3c0), with entries waiting for a SCIM target and the file sink:
/// opened by this binary, every entry is in the index, and one sync later
/// the new entries are too.
#[tokio::test]
async fn an_outbox_written_before_the_employee_index_is_indexed_when_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    std::fs::copy("tests/fixtures/store-schema3-outbox.redb", &path).expect("copy");
    let store = Store::open(&path).expect("fixture opens");
    let scim = assert_queue_reads_whole(&store, "scim");
    let files = assert_queue_reads_whole(&store, "files");
    assert!(scim > 20, "{scim}");
    assert!(files >= 2, "{files}");
    // Some employee has two entries (a joiner, then a change): one chain.
    let w = store.due_window("scim", None, 100_000, i64::MAX, true).expect("window");
    assert!(w.chains.iter().any(|c| c.len() >= 2), "no chain of two");
    assert!(w.next.is_none());
    // Nothing is due before its time unless forced.
    let due = store.due_summary("scim", 0, false).expect("summary");
    assert_eq!(due.entries, 0);
    let forced = store.due_summary("scim", 0, true).expect("summary");
    assert_eq!(forced.entries as usize, scim);
    assert_eq!(forced.without_target, forced.chains);
    // The first import's joiners, counted from the index alone.
    assert!(forced.to_create > 20 && forced.to_create <= forced.chains, "{forced:?}");
}

#[tokio::test]
async fn a_schema_1_store_keeps_syncing_with_this_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_fixture(dir.path());
    let emu = spawn_emulator(generate(5, 20, today())).await;
    // The same configuration the fixture was written with: a different one
    // would (rightly) hold the run as a mapping change.
    let extra = format!(
        "\n{}\n[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n",
        afas_sync::cli::EXTRA_CONNECTORS
    );
    let cfg = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, &extra);
    let (code, out, err) = run_bin(&["--config", cfg.to_str().expect("p"), "sync", "--as-of", "2026-11-26"]).await;
    assert!(code == 0 || code == 4, "{out}{err}");
    let store = Store::open(&dir.path().join("state.redb")).expect("open");
    store.verify().expect("digest");
    assert_eq!(store.runs(10).expect("runs").len(), 3);
    // The first commit with this binary starts keeping the active count
    // (verify has just recounted it).
    assert!(store.meta().expect("meta").active_employees.is_some());
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    drop(Store::open(&path).expect("create"));
    {
        let db = redb::Database::create(&path).expect("raw open");
        let txn = db.begin_write().expect("txn");
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .expect("meta");
            meta.insert("schema_version", 99u32.to_le_bytes().as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let before = std::fs::read(&path).expect("read");
    let err = Store::open(&path).err().expect("refused");
    assert!(matches!(err, StoreError::Newer { found: 99, .. }), "{err:?}");
    assert!(err.to_string().contains("newer afas-sync"), "{err}");
    assert!(std::fs::read(&path).expect("read") == before, "not modified");
}

#[test]
fn a_corrupt_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).expect("write");
    let err = Store::open(&path).err().expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not changed"), "{err}");
    assert!(std::fs::read(&path).expect("read") == garbage, "not modified");

    // A valid redb file that is not ours is refused too.
    let other = dir.path().join("other.redb");
    drop(redb::Database::create(&other).expect("plain redb"));
    let before = std::fs::read(&other).expect("read");
    let err = Store::open(&other).err().expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(std::fs::read(&other).expect("read") == before, "not modified");
}

#[tokio::test]
async fn a_second_process_is_told_the_file_is_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "http://127.0.0.1:9/ProfitRestServices", TOKEN_HEX, "");
    let _held = Store::open(&dir.path().join("state.redb")).expect("open");
    let (code, _, err) = run_bin(&["--config", cfg.to_str().expect("p"), "status"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("in use by another afas-sync process"), "{err}");
    assert!(!err.contains("already open"), "{err}");
}

#[test]
fn a_lock_held_for_a_moment_is_waited_out() {
    // A `status` reading the file, or a child forked by another thread that
    // has not exec'd yet, holds the lock for a moment: opening waits for it.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let held = Store::open(&path).expect("open");
    let (tx, rx) = std::sync::mpsc::channel();
    let releaser = std::thread::spawn(move || {
        rx.recv().expect("started");
        std::thread::sleep(std::time::Duration::from_millis(400));
        drop(held);
    });
    tx.send(()).expect("send");
    let started = std::time::Instant::now();
    let store = Store::open(&path).expect("opens once the lock is released");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    drop(store);
    releaser.join().expect("releaser");
}

/// Writes the fixture of the current schema
/// (tests/fixtures/store-schema<N>.redb). Run only when a schema is
/// released, never to overwrite an older one:
/// `cargo test --test store -- --ignored write_current_schema_fixture`.
#[tokio::test]
#[ignore]
async fn write_current_schema_fixture() {
    let emu = spawn_emulator(generate(5, 20, today())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!(
        "\n{}\n[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n",
        afas_sync::cli::EXTRA_CONNECTORS
    );
    let cfg = write_config(dir.path(), &emu.base_url(), TOKEN_HEX, &extra);
    let config = afas_sync::config::Config::load(&cfg).expect("config").config;
    let store = std::sync::Arc::new(Store::open(&config.store.path).expect("store"));
    afas_sync::sync::run(&config, store.clone(), today(), false)
        .await
        .expect("sync 1");
    let day2 = today().checked_add(jiff::ToSpan::day(1)).expect("d");
    emu.state.with_data(|d| {
        churn(d, 5, day2, 100, 100, 200);
    });
    afas_sync::sync::run(&config, store.clone(), day2, false)
        .await
        .expect("sync 2");
    drop(store);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/fixtures/store-schema{}.redb",
        afas_sync::store::SCHEMA_VERSION
    ));
    assert!(
        !target.exists(),
        "{} exists: fixtures of released schemas are never rewritten",
        target.display()
    );
    std::fs::create_dir_all(target.parent().expect("dir")).expect("mkdir");
    std::fs::copy(&config.store.path, &target).expect("copy");
}

/// Mutations are stored packed several to a value (schema 2). Every one of
/// a large run reads back by its index, and forgetting some (first, last,
/// and one in the middle of a pack) leaves their neighbours intact.
#[tokio::test]
async fn packed_mutations_read_back_one_by_one_and_forget_touches_only_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let emu = spawn_emulator(generate(11, 600, today())).await;
    let cfg = write_config(
        dir.path(),
        &emu.base_url(),
        TOKEN_HEX,
        "\n[guards]\nmax_leavers_percent = 100.0\nmax_rejected_percent = 100.0\n",
    );
    let (code, out, err) = run_bin(&[
        "--config",
        cfg.to_str().expect("p"),
        "sync",
        "--as-of",
        &today().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let store = Store::open(&dir.path().join("state.redb")).expect("open");
    let run = store.meta().expect("meta").last_committed_run.expect("run");
    let all = store.run_mutations(run).expect("mutations");
    assert!(all.len() > 500, "{}", all.len());
    for (i, m) in all.iter().enumerate() {
        assert_eq!(
            store.mutation(run, i as u32).expect("read").as_ref(),
            Some(m),
            "index {i}"
        );
    }
    assert_eq!(store.mutation(run, all.len() as u32).expect("read"), None);
    let doomed = [0, 1, all.len() / 2, all.len() - 1];
    for &i in &doomed {
        assert!(store.forget(all[i].key.as_str()).expect("forget"));
    }
    let left = store.run_mutations(run).expect("mutations");
    assert_eq!(left.len(), all.len() - doomed.len());
    for (i, m) in all.iter().enumerate() {
        let got = store.mutation(run, i as u32).expect("read");
        let (_, history) = store.employee(m.key.as_str()).expect("employee");
        if doomed.contains(&i) {
            assert_eq!(got, None, "index {i} forgotten");
            assert!(history.is_empty());
        } else {
            assert_eq!(got.as_ref(), Some(m), "index {i} kept");
            assert_eq!(history, vec![(run, m.clone())]);
        }
    }
    store.verify().expect("digest");
}

#[test]
fn the_installation_id_is_made_once_per_state_file_and_survives_a_restart() {
    use afas_sync::daemon::schedule::{installation_seed, Schedule};
    let a = tempfile::tempdir().expect("dir");
    let b = tempfile::tempdir().expect("dir");
    let id = |dir: &std::path::Path| {
        let s = Store::open(&dir.join("state.redb")).expect("store");
        s.installation_id().expect("id")
    };
    let first = id(a.path());
    assert_eq!(id(a.path()), first, "the same after reopening (a restart)");
    let other = id(b.path());
    assert_ne!(first, other, "another installation has its own");
    // Their schedules wait different seconds after the same slot.
    let url = "https://12345.rest.afas.online/ProfitRestServices";
    // Over a few days' slots (one equal offset by chance is 1 in 3601).
    let offsets = |id: u64| {
        let s =
            Schedule::new(&["04:00".into()], "Europe/Amsterdam", 3600, installation_seed(id, url)).expect("schedule");
        (0..4)
            .map(|d| s.jitter(jiff::Timestamp::from_second(1_780_000_000 + d * 86_400).expect("t")))
            .collect::<Vec<_>>()
    };
    assert_eq!(offsets(id(a.path())), offsets(first));
    assert_ne!(offsets(first), offsets(other));
}

/// Retention never purges a run whose changes still wait for a sink: the
/// entry would point at nothing and the change be lost.
#[test]
fn a_run_whose_changes_still_wait_is_not_purged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_V3), &path).expect("copy fixture");
    let store = Store::open(&path).expect("open");
    let runs: Vec<u64> = store.runs(10).expect("runs").iter().map(|r| r.id).collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let waiting_before: Vec<u64> = ["scim", "webhook", "files"]
        .iter()
        .flat_map(|s| store.outbox_entries(s).expect("entries"))
        .map(|(_, e)| match e.item {
            OutboxItem::Mutation { run, .. } | OutboxItem::Run { run } => run,
        })
        .collect();
    let first = *runs.iter().min().expect("a run");
    let key = store.run_mutations(first).expect("mutations")[0].key.clone();
    let entry = OutboxEntry::new(
        OutboxItem::Mutation {
            run: first,
            index: 0,
            key,
        },
        0,
    );
    store
        .outbox_apply("webhook", &[(999_999, EntryResult::Update(entry, None))])
        .expect("apply");
    // Both runs are far past `history_days`.
    let far = today().checked_add(jiff::ToSpan::days(2000)).expect("date");
    let stats = store.purge(far, 400, 90).expect("purge");
    let left: Vec<u64> = store.runs(10).expect("runs").iter().map(|r| r.id).collect();
    assert!(left.contains(&first), "the waiting run is kept: {left:?}");
    assert!(
        !store.run_mutations(first).expect("mutations").is_empty(),
        "with its changes"
    );
    for id in runs.iter().filter(|r| **r != first && !waiting_before.contains(r)) {
        assert!(!left.contains(id), "run {id} has nothing waiting and goes: {left:?}");
    }
    assert_eq!(stats.runs as usize, runs.len() - left.len());
}

/// `sync --as-of` in the future computes a plan for that day; retention
/// still counts from the real one, so the history stays.
#[tokio::test]
async fn a_sync_as_of_a_later_year_does_not_age_the_history() {
    let env = common::sync_env::Env::new(10, "[sink.files]\ndir = \"out\"\n").await;
    let (code, out) = env.sync(common::sync_env::day0()).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = env.sync("2035-01-01".parse().expect("date")).await;
    assert!(code == 0 || code == 4, "{out}");
    let store = Store::open(&env.store_path).expect("store");
    let runs: Vec<u64> = store.runs(10).expect("runs").iter().map(|r| r.id).collect();
    assert_eq!(runs, vec![2, 1], "run 1 is kept");
    assert!(!store.run_mutations(1).expect("mutations").is_empty());
}

/// `forget` erases the employee from held plans too: approving the plan
/// afterwards must not bring their record back.
#[tokio::test]
async fn forget_takes_the_employee_out_of_held_plans() {
    let env = common::sync_env::Env::new(12, "[sink.files]\ndir = \"out\"\n").await;
    let (code, out) = env.sync(common::sync_env::day0()).await;
    assert_eq!(code, 0, "{out}");
    env.max_leavers(1);
    // Three leave at once: held by the leaver guard.
    let leaving: Vec<String> = env
        .snapshot()
        .into_iter()
        .filter(|(_, p)| p.status == Status::Active)
        .map(|(k, _)| k)
        .take(3)
        .collect();
    env.end_contracts(&leaving);
    let (code, out) = env.sync(common::sync_env::day0()).await;
    assert_eq!(code, 3, "held: {out}");
    let gone = &leaving[0];
    let (code, out, err) = run_bin(&["--config", &env.cfg, "forget", gone]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_bin(&["--config", &env.cfg, "plan", "approve", "2"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let snap = env.snapshot();
    assert!(!snap.contains_key(gone), "forgotten stays forgotten");
    for k in &leaving[1..] {
        assert!(matches!(snap[k].status, Status::Left { .. }), "{k} left");
    }
    let store = Store::open(&env.store_path).expect("store");
    let (current, history) = store.employee(gone).expect("employee");
    assert!(current.is_none() && history.is_empty(), "{current:?} {history:?}");
}

/// The state holds the company's personal data: under umask 022 (an
/// admin's `sudo afas-sync sync`, cron) its directory is made 0700, the
/// file 0600 (a wider one is narrowed at the next open), and the file
/// sink's files take `sink.files.file_mode` (0600 by default).
#[cfg(unix)]
#[tokio::test]
async fn the_state_and_the_file_sinks_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let env = common::sync_env::Env::new(10, "[sink.files]\ndir = \"out\"\n").await;
    let state_dir = env.dir.path().join("state").join("afas-sync");
    let state = state_dir.join("state.redb");
    let cfg = std::fs::read_to_string(&env.cfg).expect("cfg");
    let cfg = cfg.replace(&env.store_path.display().to_string(), &state.display().to_string());
    std::fs::write(&env.cfg, &cfg).expect("cfg");
    let bin = env!("CARGO_BIN_EXE_afas-sync");
    // On the test's runtime, which also serves the emulator.
    let sync = |as_of: &str| {
        tokio::process::Command::new("sh")
            .args([
                "-c",
                &format!("umask 022; exec {bin} --config {} sync --as-of {as_of}", env.cfg),
            ])
            .output()
    };
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    let out = sync("2026-11-24").await.expect("sync");
    assert!(out.status.code() == Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&state_dir), 0o700);
    assert_eq!(mode(&state), 0o600);
    let files: Vec<PathBuf> = std::fs::read_dir(env.dir.path().join("out"))
        .expect("out")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(!files.is_empty());
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // Made readable by others meanwhile: narrowed again; a group mode for
    // the files' consumer is taken.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(
        &env.cfg,
        cfg.replace("dir = \"out\"", "dir = \"out\"\nfile_mode = \"0640\""),
    )
    .expect("cfg");
    env.emu.state.with_data(|d| {
        let rows = &mut d.connectors.get_mut("Profit_Employees_Alleo").expect("rows").rows;
        rows[0].insert("BirthName".into(), serde_json::json!("Anders"));
    });
    let out = sync("2026-11-25").await.expect("sync");
    assert!(out.status.code() == Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&state), 0o600);
    let newest = std::fs::read_dir(env.dir.path().join("out"))
        .expect("out")
        .map(|e| e.expect("entry").path())
        .find(|p| !files.contains(p))
        .expect("the second run's file");
    assert_eq!(mode(&newest), 0o640, "{}", newest.display());
    // A mode others could read is refused, naming the key.
    std::fs::write(
        &env.cfg,
        cfg.replace("dir = \"out\"", "dir = \"out\"\nfile_mode = \"0644\""),
    )
    .expect("cfg");
    let (code, _, err) = run_bin(&["--config", &env.cfg, "config", "check"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sink.files.file_mode"), "{err}");
}

/// A plan held longer than `retention.history_days` goes with its run: it
/// holds whole employee records and could never be approved any more.
#[test]
fn a_plan_held_past_the_history_goes_with_its_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_V3), &path).expect("copy fixture");
    let store = Store::open(&path).expect("open");
    let mut record = afas_sync::model::RunRecord::new(store.next_run_id().expect("id"), today());
    record.outcome = afas_sync::sync::Outcome::Held;
    let plan = afas_sync::model::Plan {
        as_of: today(),
        base_run: store.meta().expect("meta").last_committed_run,
        mutations: Vec::new(),
        writes: Vec::new(),
        source: Default::default(),
        active_before: 0,
        mapping_fingerprint: String::new(),
    };
    store.hold(&record, &plan, &[]).expect("hold");
    assert_eq!(store.held_plans().expect("held").len(), 1);
    let far = today().checked_add(jiff::ToSpan::days(2000)).expect("date");
    store.purge(far, 400, 90).expect("purge");
    assert!(
        store.held_plans().expect("held").is_empty(),
        "no held plan outlives its run"
    );
    assert!(store.runs(10).expect("runs").iter().all(|r| r.id != record.id));
}
