//! One sync run: fetch → normalize → diff → guards → commit (or hold).
//!
//! The pure parts live in [`plan`] and [`crate::model`]; this module wires
//! them to the AFAS client and the store. A run that fails while fetching
//! changes nothing but its run record; a run that trips a guard stores its
//! plan, exactly as computed, for approval.

pub mod plan;
pub mod spill;

use spill::{Sorter, Spooled};

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use jiff::civil::Date;
use serde::Serialize;

use crate::afas::decode::Draft;
use crate::afas::rows::Decimal;
use crate::afas::{self, AfasClient, AfasError, ClientOptions, FieldProblem, Source};
use crate::config::Config;
use crate::model::run::now;
pub use crate::model::run::{Outcome, RunRecord};
use crate::model::{Contract, Employee, EmployeeKey, Pay, Rejection};
use crate::store::{Encoded, EncodedWrite, MutationPacker, OutboxTarget, RunEvent, RunOutcome, Store, StoreError};
use plan::{Baseline, Diff, Judged, MutationKind, Plan, Provisioned, Rules, SourceStats};

/// Rejections kept in a run record; the count is always exact.
const MAX_KEPT_REJECTIONS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Afas(#[from] AfasError),
    #[error("the mapping does not match AFAS: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Fields(Vec<FieldProblem>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a sync did.
#[derive(Debug)]
pub enum SyncResult {
    Committed(RunRecord),
    Held(RunRecord, Vec<String>),
    /// `--dry-run`: the plan and the guards that would trip; nothing stored.
    DryRun(Box<Plan>, Vec<String>),
}

/// The fingerprint of everything that decides who is in scope and what is
/// read: a change forces a held plan (the classic cause of mass offboarding).
/// It must stay the same across versions for an unchanged configuration
/// (`tests/store.rs` syncs the schema-1 fixture with the configuration it
/// was written with), so fields added later are skipped at their default.
pub fn mapping_fingerprint(config: &Config) -> String {
    let text = serde_json::json!({
        "mapping": config.mapping,
        "employees": config.afas.employees,
        "contracts": config.afas.contracts,
        "salary": config.afas.salary,
        "wage_components": config.afas.wage_components,
        "leave": config.afas.leave,
    })
    .to_string();
    format!("{:016x}", crate::store::codec::fnv1a(&[text.as_bytes()]))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Internal(e.to_string()))?
        .map_err(SyncError::from)
}

/// What the fetch produced, normalized.
pub struct Fetched {
    /// Sorted by key, unique, encoded (`store::codec`): a third of the
    /// memory of the decoded records, which matters at 100k+ employees.
    /// On disk past `sync.sort_memory_mib`.
    pub employees: Spooled<Vec<u8>>,
    /// Keys of rejected rows: left untouched by the diff.
    pub protected: BTreeSet<EmployeeKey>,
    /// Rejected rows whose key could not be read.
    pub unkeyed: u64,
    pub stats: SourceStats,
    /// Temporary files the fetch sorted through (0 when it fitted in
    /// `sync.sort_memory_mib`).
    pub spilled: usize,
}

/// Where rejections go: counts, kept examples, and the keys they protect.
#[derive(Default)]
struct Rejections {
    stats: SourceStats,
    protected: BTreeSet<EmployeeKey>,
    unkeyed: u64,
}

fn reject(acc: &mut Rejections, r: Rejection) {
    tracing::warn!(row = %r.row, "rejected AFAS row: {}", r.reason);
    let stats = &mut acc.stats;
    stats.rejected += 1;
    match &r.key {
        Some(k) => {
            acc.protected.insert(k.clone());
        }
        None => acc.unkeyed += 1,
    }
    if stats.rejections.len() < MAX_KEPT_REJECTIONS {
        stats.rejections.push(r);
    }
}

/// Where a sync sorts through temporary files: beside the state file,
/// on a disk the service may write to.
fn spill_dir(config: &Config) -> std::path::PathBuf {
    match config.store.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

fn encoded_size(item: &spill::Item<Vec<u8>>) -> usize {
    // The key's String and the record's Vec, with their heap blocks.
    item.0.as_str().len() + item.1.len() + 64
}

fn by_key(a: &spill::Item<Vec<u8>>, b: &spill::Item<Vec<u8>>) -> Ordering {
    a.0.cmp(&b.0)
}

fn contract_size(item: &spill::Item<Contract>) -> usize {
    std::mem::size_of::<spill::Item<Contract>>() + item.0.as_str().len() + item.1.sequence.len()
}

fn contract_order(a: &spill::Item<Contract>, b: &spill::Item<Contract>) -> Ordering {
    (&a.0, &a.1.sequence, a.1.start, a.1.end).cmp(&(&b.0, &b.1.sequence, b.1.start, b.1.end))
}

/// Takes from `items` every item whose key compares to `key` as `want`
/// (`Less`: the ones before it, `Equal`: its own), handing each value to `f`.
fn take_key<T: serde::de::DeserializeOwned>(
    items: &mut std::iter::Peekable<spill::Sorted<T>>,
    key: &EmployeeKey,
    want: Ordering,
    mut f: impl FnMut(T),
) -> std::io::Result<()> {
    loop {
        match items.peek() {
            Some(Ok((k, _))) if k.cmp(key) == want => {}
            Some(Err(_)) => {
                return match items.next() {
                    Some(Err(e)) => Err(e),
                    _ => Ok(()),
                }
            }
            _ => return Ok(()),
        }
        if let Some(Ok((_, v))) = items.next() {
            f(v);
        }
    }
}

/// Reads and finishes everything at once: [`read`], then
/// [`Unfinished::finish`] with nobody waiting for the records.
pub async fn fetch(config: &Config, client: &AfasClient, as_of: Date) -> Result<Fetched, SyncError> {
    Ok(read(config, client, as_of).await?.finish(|_| Ok(()))?)
}

/// Checks the mapping against metainfo, then reads both connectors at once
/// and normalizes the rows as they stream in, sorted by key; joining each
/// employee with its contracts and pay is left to [`Unfinished::finish`].
pub async fn read(config: &Config, client: &AfasClient, as_of: Date) -> Result<Unfinished, SyncError> {
    // AFAS tells the token's expiry in /metainfo; it feeds the alert that
    // warns before the integration silently stops.
    if let Ok(meta) = client.metainfo().await {
        let expiry = meta.info.token_expiry.as_deref().and_then(|t| {
            t.parse::<jiff::Timestamp>().ok().or_else(|| {
                afas::rows::parse_afas_date(t)
                    .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                    .map(|z| z.timestamp())
            })
        });
        if let Some(ts) = expiry {
            crate::metrics::metrics().token_expiry.set(ts.as_second() as f64);
        }
    }
    let mut problems = Vec::new();
    for (source, conn) in afas::connectors(config) {
        let meta = client.connector_meta(&conn.connector).await?;
        problems.extend(afas::client::check_fields(
            &conn.connector,
            &meta,
            &afas::mapped_fields(config, source),
        ));
    }
    if !problems.is_empty() {
        return Err(SyncError::Fields(problems));
    }
    // Salary, wage components and leave are small per employee: each is
    // read in its own task while employees and contracts stream in here.
    let extras: Vec<_> = afas::connectors(config)
        .into_iter()
        .filter(|(s, _)| matches!(s, Source::Salary | Source::WageComponents | Source::Leave))
        .map(|(source, conn)| {
            let rx = client.read(afas::read_spec(config, source, conn));
            let mapping = config.mapping.clone();
            tokio::spawn(read_extra(source, rx, mapping))
        })
        .collect();

    let mapping = &config.mapping;
    let mut emp_rx = client.read(afas::read_spec(config, Source::Employees, &config.afas.employees));
    let mut con_rx = config
        .afas
        .contracts
        .as_ref()
        .map(|c| client.read(afas::read_spec(config, Source::Contracts, c)));
    let mut acc = Rejections::default();
    let dir = spill_dir(config);
    let limit = config.sync.sort_memory_mib as usize * 1024 * 1024;
    let spill_err = |e: std::io::Error| {
        SyncError::Store(StoreError::Io(format!(
            "sorting the fetched records through temporary files in {}: {e}",
            dir.display()
        )))
    };
    // Encoded: decoded drafts of 100k employees took ~45 MiB while the
    // contracts connector was still being read.
    let mut drafts: Sorter<Vec<u8>> = Sorter::new(dir.clone(), limit, encoded_size, by_key);
    // A flat list, sorted by key below and walked beside the sorted drafts.
    // A map of per-employee lists cost 4 slots (288 bytes) for the usual
    // single contract: 35 MiB of a 100k no-op run's 62 MiB heap.
    let mut contracts: Sorter<Contract> = Sorter::new(dir.clone(), limit, contract_size, contract_order);
    let mut row_problems: HashMap<EmployeeKey, String> = HashMap::new();
    let (mut emp_done, mut con_done) = (false, con_rx.is_none());
    while !emp_done || !con_done {
        tokio::select! {
            page = emp_rx.recv(), if !emp_done => match page {
                None => emp_done = true,
                Some(page) => {
                    let page = page?;
                    for bad in page.bad_rows {
                        acc.stats.employee_rows += 1;
                        reject(&mut acc, Rejection { key: None, row: format!("page {}", page.number), reason: bad });
                    }
                    for row in &page.rows {
                        acc.stats.employee_rows += 1;
                        match afas::decode::decode_employee(row, mapping) {
                            Ok(d) => drafts.push((d.key.clone(), encode_internal(&d)?)).map_err(spill_err)?,
                            Err(r) => reject(&mut acc, r),
                        }
                    }
                }
            },
            page = async { match con_rx.as_mut() { Some(rx) => rx.recv().await, None => None } }, if !con_done => match page {
                None => con_done = true,
                Some(page) => {
                    let page = page?;
                    acc.stats.contract_rows += (page.rows.len() + page.bad_rows.len()) as u64;
                    for row in &page.rows {
                        match afas::decode::normalize_contract(row, mapping) {
                            Ok(pair) => contracts.push(pair).map_err(spill_err)?,
                            Err(reason) => {
                                // A contract we cannot read may hide the current
                                // employment: reject its employee rather than
                                // guess (when the key is readable).
                                let key = afas::rows::text(row, &mapping.contracts.employee_key).ok().flatten().and_then(|k| EmployeeKey::parse(&k).ok());
                                match key {
                                    Some(k) => { row_problems.insert(k, format!("contract row: {reason}")); }
                                    None => tracing::warn!("contract row without a readable employee key: {reason}"),
                                }
                            }
                        }
                    }
                }
            },
        }
    }

    let mut extra = Extras::default();
    for task in extras {
        let part = task.await.map_err(|e| SyncError::Internal(e.to_string()))??;
        extra.merge(part);
    }
    acc.stats.contract_rows += extra.rows;
    for (key, problem) in extra.problems.drain() {
        row_problems.entry(key).or_insert(problem);
    }

    // Sorted by key: duplicates sit side by side, and the sorted drafts
    // turn into the fetched snapshot one by one, in the order the stored
    // snapshot streams in. At 100k employees a map of drafts next to a map
    // of employees was the largest part of a run's memory.
    //
    // Unstable sorts: a stable one borrows a scratch buffer the size of the
    // list (8 MiB of the peak at 100k). Order among equal keys does not
    // matter: duplicate employee rows are all rejected, and an employee's
    // contracts are ordered by their own fields wherever it counts.
    let spilled = drafts.runs() + contracts.runs();
    if spilled > 0 {
        tracing::info!(runs = spilled, dir = %dir.display(), "fetched records sorted through temporary files");
    }
    let reserve = if drafts.runs() == 0 { drafts.in_memory() } else { 0 };
    Ok(Unfinished {
        drafts: drafts.finish().map_err(spill_err)?,
        contracts: contracts.finish().map_err(spill_err)?,
        reserve,
        extra,
        row_problems,
        acc,
        spilled,
        dir,
        limit,
        mapping: mapping.clone(),
        as_of,
    })
}

/// The fetched rows, sorted by key, before each employee is joined with
/// its contracts and pay. Finishing is a pass of its own so that a sync can
/// run it on one thread while the diff reads what it finished on another.
pub struct Unfinished {
    drafts: spill::Sorted<Vec<u8>>,
    contracts: spill::Sorted<Contract>,
    /// Employees that will fit in memory (0 when they went to disk).
    reserve: usize,
    extra: Extras,
    row_problems: HashMap<EmployeeKey, String>,
    acc: Rejections,
    spilled: usize,
    dir: std::path::PathBuf,
    limit: usize,
    mapping: crate::config::Mapping,
    as_of: Date,
}

/// What finishing decided about one key, handed on in key order.
pub enum Step<'a> {
    /// A valid employee, encoded as [`Fetched::employees`] holds it.
    Employee(&'a EmployeeKey, &'a [u8]),
    /// A key whose rows were rejected while finishing: the diff must leave
    /// its stored employee alone.
    Protected(&'a EmployeeKey),
}

impl Unfinished {
    /// Rows rejected with a readable key before finishing.
    pub fn protected(&self) -> &BTreeSet<EmployeeKey> {
        &self.acc.protected
    }

    /// Rows rejected without a readable key.
    pub fn unkeyed(&self) -> u64 {
        self.acc.unkeyed
    }

    /// Joins each employee with its contracts and pay, in key order,
    /// telling `each` about every key as soon as it is decided: every key
    /// before the one handed on has been decided too.
    pub fn finish(self, mut each: impl FnMut(Step<'_>) -> Result<(), StoreError>) -> Result<Fetched, StoreError> {
        let Unfinished {
            drafts,
            contracts,
            reserve,
            extra,
            row_problems,
            mut acc,
            spilled,
            dir,
            limit,
            mapping,
            as_of,
        } = self;
        let spill_err = |e: std::io::Error| {
            StoreError::Io(format!(
                "sorting the fetched records through temporary files in {}: {e}",
                dir.display()
            ))
        };
        let finishing = std::time::Instant::now();
        let mut employees = Spooled::new(dir.clone(), limit, encoded_size);
        employees.reserve_in_memory(reserve);
        let mut drafts = drafts.peekable();
        let mut contracts = contracts.peekable();
        let mut mine: Vec<Contract> = Vec::new();
        while let Some(first) = drafts.next() {
            let (key, bytes) = first.map_err(spill_err)?;
            let mut n = 1;
            take_key(&mut drafts, &key, Ordering::Equal, |_| n += 1).map_err(spill_err)?;
            // Contracts of keys no employee row has are never read.
            take_key(&mut contracts, &key, Ordering::Less, |_| {}).map_err(spill_err)?;
            mine.clear();
            take_key(&mut contracts, &key, Ordering::Equal, |c| mine.push(c)).map_err(spill_err)?;
            let twice = mine
                .iter()
                .enumerate()
                .find(|(i, c)| mine[..*i].iter().any(|x| x.sequence == c.sequence))
                .map(|(_, c)| format!("contract row: contract {} appears twice", c.sequence));
            // Duplicate keys: neither row can be trusted, so all are rejected.
            let problem = if n > 1 {
                Some(format!("duplicate key: {n} rows share it"))
            } else {
                row_problems.get(&key).cloned().or(twice)
            };
            if let Some(reason) = problem {
                for _ in 0..n {
                    reject(
                        &mut acc,
                        Rejection {
                            key: Some(key.clone()),
                            row: format!("{}={key}", mapping.employees.key),
                            reason: reason.clone(),
                        },
                    );
                }
                each(Step::Protected(&key))?;
                continue;
            }
            let codec_err = |e: crate::store::codec::CodecError| StoreError::Codec {
                what: format!("fetched employee {key}"),
                reason: e.to_string(),
            };
            crate::fault::hit(crate::fault::Point::Finishing);
            let d: Draft = crate::store::codec::decode(&bytes).map_err(codec_err)?;
            drop(bytes);
            let pay = extra.pay(&key, as_of, &mapping);
            match d.finish(Some(&mine), pay, as_of, &mapping) {
                Ok(e) => {
                    let bytes = crate::store::codec::encode(&e).map_err(codec_err)?;
                    each(Step::Employee(&key, &bytes))?;
                    employees.push((key, bytes)).map_err(spill_err)?;
                }
                Err(r) => {
                    // Protected exactly when `reject` protects it, so the
                    // diff fed step by step and the one that re-reads the
                    // finished set (a held plan) agree.
                    if let Some(k) = &r.key {
                        each(Step::Protected(k))?;
                    }
                    reject(&mut acc, r)
                }
            }
        }
        employees.seal().map_err(spill_err)?;
        tracing::debug!(
            employees = employees.len(),
            elapsed_ms = finishing.elapsed().as_millis() as u64,
            "fetched records finished"
        );
        acc.stats.valid = employees.len() as u64;
        let spilled = spilled + usize::from(employees.spilled());
        Ok(Fetched {
            employees,
            protected: acc.protected,
            unkeyed: acc.unkeyed,
            stats: acc.stats,
            spilled,
        })
    }
}

fn encode_internal<T: Serialize>(v: &T) -> Result<Vec<u8>, SyncError> {
    crate::store::codec::encode(v).map_err(|e| SyncError::Internal(e.to_string()))
}

/// Salary, wage component and leave rows, per employee.
#[derive(Default)]
struct Extras {
    salaries: HashMap<EmployeeKey, Vec<(Date, Decimal)>>,
    wages: HashMap<EmployeeKey, BTreeMap<String, Decimal>>,
    leave: HashMap<EmployeeKey, BTreeMap<String, Decimal>>,
    /// An unreadable row rejects its employee (the data would be wrong).
    problems: HashMap<EmployeeKey, String>,
    rows: u64,
}

impl Extras {
    fn merge(&mut self, other: Extras) {
        self.salaries.extend(other.salaries);
        self.wages.extend(other.wages);
        self.leave.extend(other.leave);
        self.problems.extend(other.problems);
        self.rows += other.rows;
    }

    fn pay(&self, key: &EmployeeKey, as_of: Date, mapping: &crate::config::Mapping) -> Pay {
        let salary = self
            .salaries
            .get(key)
            .and_then(|list| {
                list.iter()
                    .filter(|(start, _)| *start <= as_of)
                    .max_by_key(|(start, _)| *start)
            })
            .map(|(_, amount)| *amount);
        let wage = |id: &Option<String>| -> Option<Decimal> {
            let id = id.as_ref()?;
            self.wages.get(key)?.get(id).copied()
        };
        let w = &mapping.wage_components;
        Pay {
            salary,
            holiday_allowance_accrual: wage(&w.holiday_allowance_accrual_id),
            holiday_allowance_balance: wage(&w.holiday_allowance_balance_id),
            leave_hours: self.leave.get(key).cloned().unwrap_or_default(),
        }
    }
}

async fn read_extra(
    source: Source,
    mut rx: tokio::sync::mpsc::Receiver<Result<afas::Page, AfasError>>,
    mapping: crate::config::Mapping,
) -> Result<Extras, AfasError> {
    let mut out = Extras::default();
    let key_field = match source {
        Source::Salary => &mapping.salary.employee_key,
        Source::WageComponents => &mapping.wage_components.employee_key,
        _ => &mapping.leave.employee_key,
    };
    while let Some(page) = rx.recv().await {
        let page = page?;
        out.rows += (page.rows.len() + page.bad_rows.len()) as u64;
        for row in &page.rows {
            let result = match source {
                Source::Salary => afas::decode::decode_salary(row, &mapping).map(|(k, start, amount)| {
                    out.salaries.entry(k).or_default().push((start, amount));
                }),
                Source::WageComponents => afas::decode::decode_wage_component(row, &mapping).map(|(k, id, amount)| {
                    // Several rows of one component add up (e.g. per period).
                    let slot = out
                        .wages
                        .entry(k)
                        .or_default()
                        .entry(id)
                        .or_insert(Decimal::from_units(0));
                    *slot = Decimal::from_units(slot.units().saturating_add(amount.units()));
                }),
                _ => afas::decode::decode_leave(row, &mapping).map(|(k, kind, hours)| {
                    out.leave.entry(k).or_default().insert(kind, hours);
                }),
            };
            if let Err(reason) = result {
                let key = afas::rows::text(row, key_field)
                    .ok()
                    .flatten()
                    .and_then(|k| EmployeeKey::parse(&k).ok());
                match key {
                    Some(k) => {
                        out.problems.insert(k, format!("{} row: {reason}", source.name()));
                    }
                    None => tracing::warn!("{} row without a readable employee key: {reason}", source.name()),
                }
            }
        }
    }
    Ok(out)
}

/// Records a finished run in the metrics.
fn record_metrics(record: &RunRecord, started: std::time::Instant) {
    let m = crate::metrics::metrics();
    m.runs
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: record.outcome.as_str().into(),
        })
        .inc();
    m.run_duration.observe(started.elapsed().as_secs_f64());
    m.last_run.set(crate::metrics::unix_now_f64());
    if matches!(record.outcome, Outcome::Success | Outcome::NothingToDo) {
        m.last_success.set(crate::metrics::unix_now_f64());
        for (kind, n) in [
            ("joiner", record.joiners),
            ("mover", record.movers),
            ("leaver", record.leavers),
            ("rehire", record.rehires),
        ] {
            m.mutations
                .get_or_create(&crate::metrics::KindLabels { kind: kind.into() })
                .inc_by(n);
        }
    }
    if record.outcome == Outcome::Held {
        m.guard_held.inc();
    }
    let mut classes: BTreeMap<&'static str, u64> = BTreeMap::new();
    for r in &record.source.rejections {
        *classes.entry(crate::metrics::reason_class(&r.reason)).or_default() += 1;
    }
    // Rejections beyond the kept ones count as "other" so the total is exact.
    let kept: u64 = classes.values().sum();
    if record.source.rejected > kept {
        *classes.entry("other").or_default() += record.source.rejected - kept;
    }
    for (class, n) in classes {
        m.rejected
            .get_or_create(&crate::metrics::ReasonLabels { reason: class.into() })
            .inc_by(n);
    }
}

/// Refreshes the gauges that describe the state file (employees, held
/// plans, outbox) from the store.
pub fn refresh_state_metrics(store: &Store) -> Result<(), StoreError> {
    let m = crate::metrics::metrics();
    // Kept counts: a scan of the snapshot after every run was 5% of a
    // no-op sync's CPU at 100k.
    let (active, all) = store.employee_counts()?;
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    m.employees
        .get_or_create(&crate::metrics::StateLabels { state: "active".into() })
        .set(gauge(active));
    m.employees
        .get_or_create(&crate::metrics::StateLabels { state: "left".into() })
        .set(gauge(all.saturating_sub(active)));
    m.held_plans.set(store.held_plans()?.len() as i64);
    refresh_outbox_metrics(store)
}

pub fn refresh_outbox_metrics(store: &Store) -> Result<(), StoreError> {
    let m = crate::metrics::metrics();
    let counts = store.outbox_counts()?;
    for sink in ["scim", "webhook", "files"] {
        let c = counts.get(sink).cloned().unwrap_or_default();
        m.outbox_pending
            .get_or_create(&crate::metrics::SinkLabels { sink: sink.into() })
            .set(c.pending as i64);
        m.outbox_dead
            .get_or_create(&crate::metrics::SinkLabels { sink: sink.into() })
            .set(c.dead as i64);
    }
    Ok(())
}

/// Runs one sync as of `as_of`.
pub async fn run(config: &Config, store: Arc<Store>, as_of: Date, dry_run: bool) -> Result<SyncResult, SyncError> {
    let started = std::time::Instant::now();
    let result = run_inner(config, store.clone(), as_of, dry_run).await;
    if !dry_run {
        match &result {
            Ok(SyncResult::Committed(r)) | Ok(SyncResult::Held(r, _)) => record_metrics(r, started),
            Ok(SyncResult::DryRun(..)) => {}
            Err(_) => {
                let m = crate::metrics::metrics();
                m.runs
                    .get_or_create(&crate::metrics::OutcomeLabels {
                        outcome: "failed".into(),
                    })
                    .inc();
                m.last_run.set(crate::metrics::unix_now_f64());
            }
        }
        let s = store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || refresh_state_metrics(&s)).await {
            tracing::warn!("cannot refresh state metrics: {e}");
        }
    }
    result
}

async fn run_inner(config: &Config, store: Arc<Store>, as_of: Date, dry_run: bool) -> Result<SyncResult, SyncError> {
    let id = {
        let s = store.clone();
        blocking(move || s.next_run_id()).await?
    };
    let mut record = RunRecord::new(id, as_of);
    let prepared = match prepare(config, as_of).await {
        Ok(p) => p,
        Err(e) => {
            if !dry_run {
                record.outcome = Outcome::Failed;
                record.message = e.to_string();
                record.finished_at = now();
                let s = store.clone();
                let r = record.clone();
                let targets = outbox_targets(config);
                if let Err(store_err) = blocking(move || s.record_run(&r, &targets)).await {
                    tracing::error!("could not record the failed run: {store_err}");
                }
            }
            return Err(e);
        }
    };
    let guards = config.guards.guards();
    let fingerprint = mapping_fingerprint(config);
    if dry_run {
        let s = store.clone();
        return blocking(move || {
            let fetched = match prepared.input {
                Input::Finished(f) => f,
                Input::Spilled(u) => u.finish(|_| Ok(()))?,
            };
            let plan = plan_of(&s, &fetched, as_of, &prepared.rules, fingerprint)?;
            let reasons = plan::check_guards(&plan.guard_input(), &guards, &baseline(&s)?);
            Ok(SyncResult::DryRun(Box::new(plan), reasons))
        })
        .await;
    }
    let targets = outbox_targets(config);
    let s = store.clone();
    let result = blocking(move || {
        let baseline = baseline(&s)?;
        let mut held = Vec::new();
        let mut draft = record.clone();
        let Prepared { input, rules, as_of } = prepared;
        let mut finished: Option<Fetched> = None;
        // The diff goes straight into the run's write transaction; a
        // tripped guard aborts it, and only then is the plan built in
        // memory, to be stored for approval.
        let committed = s.commit_run(record.id, &targets, None, |w| {
            let (active_before, fetched) = merge_into(&s, input, as_of, &rules, w)?;
            let fetched = finished.insert(fetched);
            let input = plan::GuardInput {
                leavers: w.count(MutationKind::Leaver),
                active_before,
                source: &fetched.stats,
                mapping_fingerprint: &fingerprint,
            };
            held = plan::check_guards(&input, &guards, &baseline);
            if !held.is_empty() {
                return Ok(None);
            }
            draft.joiners = w.count(MutationKind::Joiner);
            draft.movers = w.count(MutationKind::Mover);
            draft.leavers = w.count(MutationKind::Leaver);
            draft.rehires = w.count(MutationKind::Rehire);
            draft.source = fetched.stats.clone();
            draft.outcome = if draft.joiners + draft.movers + draft.leavers + draft.rehires == 0 {
                Outcome::NothingToDo
            } else {
                Outcome::Success
            };
            draft.finished_at = now();
            Ok(Some(RunOutcome {
                run: draft.clone(),
                source_rows: fetched.stats.employee_rows,
                mapping_fingerprint: fingerprint.clone(),
            }))
        })?;
        if let Some(run) = committed {
            return Ok(SyncResult::Committed(run));
        }
        // A guard tripped, so the diff ran to its end and `finished` is set.
        let fetched = finished.ok_or_else(|| StoreError::Io("the fetched records were not finished".into()))?;
        let plan = plan_of(&s, &fetched, as_of, &rules, fingerprint)?;
        record.fill_counts(&plan);
        record.finished_at = now();
        record.outcome = Outcome::Held;
        record.message = held.join("; ");
        s.hold(&record, &plan, &targets)?;
        Ok(SyncResult::Held(record, held))
    })
    .await?;
    let committed = match result {
        SyncResult::Committed(r) => r,
        SyncResult::Held(r, reasons) => {
            tracing::warn!(run = id, "sync held for approval: {}", r.message);
            return Ok(SyncResult::Held(r, reasons));
        }
        other => return Ok(other),
    };
    let retention = config.retention.clone();
    let s = store.clone();
    let purged = blocking(move || s.purge(as_of, retention.history_days, retention.leaver_personal_data_days)).await?;
    if purged.runs > 0 || purged.scrubbed_leavers > 0 {
        tracing::info!(runs = purged.runs, leavers = purged.scrubbed_leavers, "retention purge");
    }
    tracing::info!(
        run = committed.id,
        outcome = committed.outcome.as_str(),
        joiners = committed.joiners,
        movers = committed.movers,
        leavers = committed.leavers,
        rehires = committed.rehires,
        rejected = committed.source.rejected,
        "sync committed"
    );
    Ok(SyncResult::Committed(committed))
}

/// The committed state the guards compare a run with.
fn baseline(store: &Store) -> Result<Baseline, StoreError> {
    let meta = store.meta()?;
    Ok(Baseline {
        source_rows: meta.source_rows,
        mapping_fingerprint: meta.mapping_fingerprint,
    })
}

/// The outbox entries each configured sink gets from a run.
pub fn outbox_targets(config: &Config) -> Vec<OutboxTarget> {
    let mut out = Vec::new();
    if config.sinks.scim.is_some() {
        out.push(OutboxTarget {
            sink: "scim".into(),
            mutations: true,
            run_event: RunEvent::Never,
        });
    }
    if config.sinks.webhook.is_some() {
        out.push(OutboxTarget {
            sink: "webhook".into(),
            mutations: true,
            run_event: RunEvent::Always,
        });
    }
    if config.sinks.files.is_some() {
        // One file per run holds all its mutations.
        out.push(OutboxTarget {
            sink: "files".into(),
            mutations: false,
            run_event: RunEvent::WithMutations,
        });
    }
    out
}

/// A run's input: the fetched rows and the rules to diff them with.
struct Prepared {
    input: Input,
    rules: Rules,
    as_of: Date,
}

/// The whole plan in memory, for a dry run or to hold for approval.
fn plan_of(
    store: &Store,
    fetched: &Fetched,
    as_of: Date,
    rules: &Rules,
    mapping_fingerprint: String,
) -> Result<Plan, StoreError> {
    let base_run = store.meta()?.last_committed_run;
    let mut out = Diff::default();
    let mut keep = |d: &mut Diff| -> Result<(), StoreError> {
        out.mutations.append(&mut d.mutations);
        out.writes.append(&mut d.writes);
        Ok(())
    };
    let mut side = Finished::new(fetched)?;
    let active_before = merge_snapshot(store, &mut side, as_of, rules, &mut keep)?;
    Ok(Plan {
        as_of,
        base_run,
        mutations: out.mutations,
        writes: out.writes,
        source: fetched.stats.clone(),
        active_before,
        mapping_fingerprint,
    })
}

async fn prepare(config: &Config, as_of: Date) -> Result<Prepared, SyncError> {
    let opts = ClientOptions::from_config(&config.afas)?;
    let client = AfasClient::new(opts)?;
    let input = read(config, &client, as_of).await?;
    if input.unkeyed() > 0 {
        tracing::warn!(
            rows = input.unkeyed(),
            "rows without a readable key were rejected; missing employees are not counted as absent this run"
        );
    }
    let rules = Rules {
        lead_days: config.sync.lead_days,
        absent_runs_for_leaver: config.sync.absent_runs_before_leaver,
        ignore_absences: input.unkeyed() > 0,
    };
    // Finishing comes first when the fetched rows fit in memory; see
    // `merge_into` for why. Here, on the thread that fetched them: on
    // another thread glibc's malloc kept the rows' freed memory apart from
    // the finished set's, +11 MiB at the peak of a 100k first import.
    let input = if input.spilled == 0 {
        // This runs on the caller's task: a bug that panics here fails the
        // run, as one in the diff's or the writer's thread does, instead
        // of taking the daemon's loop down with it.
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| input.finish(|_| Ok(()))))
            .map_err(|_| SyncError::Internal("the thread finishing the fetched records panicked".into()))??;
        Input::Finished(finished)
    } else {
        Input::Spilled(Box::new(input))
    };
    Ok(Prepared { input, rules, as_of })
}

/// Fetched rows that fitted in memory are finished before the diff; rows
/// sorted through temporary files are finished beside it.
enum Input {
    Finished(Fetched),
    Spilled(Box<Unfinished>),
}

/// The fetched side of [`merge_snapshot`]: employees in key order, and
/// the keys it must leave alone.
trait FetchedSide<'a> {
    /// The next fetched record if its key compares to `key` as `want`.
    fn next_if(&mut self, key: &str, want: Ordering) -> Result<Option<Cow<'a, spill::Item<Vec<u8>>>>, StoreError>;
    /// Whether `key`'s rows were rejected. Asked only after `next_if` has
    /// looked past `key`.
    fn protected(&self, key: &EmployeeKey) -> bool;
}

fn read_back_err(e: std::io::Error) -> StoreError {
    StoreError::Io(format!("reading the fetched records back: {e}"))
}

/// A finished set, read from memory or its temporary file.
struct Finished<'a> {
    items: std::iter::Peekable<spill::SpooledIter<'a, Vec<u8>>>,
    protected: &'a BTreeSet<EmployeeKey>,
}

impl<'a> Finished<'a> {
    fn new(fetched: &'a Fetched) -> Result<Self, StoreError> {
        Ok(Finished {
            items: fetched.employees.iter().map_err(read_back_err)?.peekable(),
            protected: &fetched.protected,
        })
    }
}

impl<'a> FetchedSide<'a> for Finished<'a> {
    fn next_if(&mut self, key: &str, want: Ordering) -> Result<Option<Cow<'a, spill::Item<Vec<u8>>>>, StoreError> {
        match self.items.peek() {
            Some(Ok(e)) if e.0.as_str().cmp(key) == want => {}
            Some(Ok(_)) | None => return Ok(None),
            Some(Err(_)) => {}
        }
        self.items.next().transpose().map_err(read_back_err)
    }

    fn protected(&self, key: &EmployeeKey) -> bool {
        self.protected.contains(key)
    }
}

/// What the finishing thread hands the diff's thread.
enum Piece {
    Employee(spill::Item<Vec<u8>>),
    Protected(EmployeeKey),
}

/// Records as another thread finishes them ([`Unfinished::finish`]).
/// Protections arrive in key order among the records, so by the time the
/// diff has looked past a key, its protection has arrived too.
struct Piped {
    rx: std::sync::mpsc::Receiver<Vec<Piece>>,
    batch: std::vec::IntoIter<Piece>,
    head: Option<spill::Item<Vec<u8>>>,
    protected: BTreeSet<EmployeeKey>,
}

impl Piped {
    /// Fills `head` with the next record, taking in the protections before
    /// it. A closed channel is the end: whether the finishing thread
    /// stopped on an error is its own result, which the caller checks.
    fn fill(&mut self) {
        while self.head.is_none() {
            match self.batch.next() {
                Some(Piece::Employee(item)) => self.head = Some(item),
                Some(Piece::Protected(key)) => {
                    self.protected.insert(key);
                }
                None => match self.rx.recv() {
                    Ok(batch) => self.batch = batch.into_iter(),
                    Err(_) => return,
                },
            }
        }
    }
}

impl<'a> FetchedSide<'a> for Piped {
    fn next_if(&mut self, key: &str, want: Ordering) -> Result<Option<Cow<'a, spill::Item<Vec<u8>>>>, StoreError> {
        self.fill();
        match &self.head {
            Some(e) if e.0.as_str().cmp(key) == want => Ok(self.head.take().map(Cow::Owned)),
            _ => Ok(None),
        }
    }

    fn protected(&self, key: &EmployeeKey) -> bool {
        self.protected.contains(key)
    }
}

/// Diffs the fetched employees against the stored snapshot as it streams
/// from the store, both in key order (redb orders the table by the key's
/// bytes, as `EmployeeKey` orders). Each key's mutations and writes go to
/// `sink` as soon as they are decided. Returns the number of employees that
/// were active before.
fn merge_snapshot<'a>(
    store: &Store,
    fetched: &mut dyn FetchedSide<'a>,
    as_of: Date,
    rules: &Rules,
    sink: &mut dyn FnMut(&mut Diff) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let mut out = Diff::default();
    let mut active_before = 0u64;
    let mut visit =
        |fetched: &dyn FetchedSide<'a>, key: &EmployeeKey, prev: Option<&Provisioned>, bytes: Option<&Vec<u8>>| {
            if fetched.protected(key) {
                return Ok(());
            }
            let employee: Option<Employee> =
                bytes
                    .map(|b| crate::store::codec::decode(b))
                    .transpose()
                    .map_err(|e| StoreError::Codec {
                        what: format!("fetched employee {key}"),
                        reason: e.to_string(),
                    })?;
            out.step(key, prev, employee.as_ref(), as_of, rules);
            sink(&mut out)
        };
    store.scan_snapshot_raw(|key, stored| {
        let (head, at) =
            crate::store::codec::decode_prefix::<plan::ProvisionedHead>(stored).map_err(|e| StoreError::Codec {
                what: format!("employee {key}"),
                reason: e.to_string(),
            })?;
        if head.status == plan::Status::Active {
            active_before += 1;
        }
        while let Some(e) = fetched.next_if(key, Ordering::Less)? {
            visit(fetched, &e.0, None, Some(&e.1))?;
        }
        let same = fetched.next_if(key, Ordering::Equal)?;
        let same = same.as_ref().map(|e| &e.1);
        // Most employees are the same as yesterday: when AFAS sent the
        // stored record byte for byte (after the `Some` tag of the stored
        // `Option`; both after the format byte), `step` would do nothing,
        // and neither record needs decoding. ~15 % of a no-op's work.
        if let Some(fetched) = same {
            let equal = stored.get(at) == Some(&1) && stored.get(at + 1..) == fetched.get(1..);
            if equal && head.unchanged_when_equal(as_of, rules) {
                return Ok(());
            }
        }
        let p: Provisioned = crate::store::dec_named(|| format!("employee {key}"), stored)?;
        visit(fetched, &p.key, Some(&p), same)
    })?;
    while let Some(e) = fetched.next_if("", Ordering::Greater)? {
        visit(fetched, &e.0, None, Some(&e.1))?;
    }
    Ok(active_before)
}

/// Writes and mutations handed from the diff's thread to the writer's at
/// a time, and batches in flight: small enough to keep memory flat, large
/// enough that the channel costs nothing per employee.
const BATCH: usize = 256;
const BATCHES_IN_FLIGHT: usize = 8;

/// Finishes the fetched records and diffs them into a run's write
/// transaction: on two threads, or three for a large company.
///
/// Why: after the last page arrives, a first import still has to finish,
/// diff, encode and insert every employee, and that tail is what keeps the
/// run's wall time above the network's (BENCHMARKS.md). Only the inserts
/// need the transaction, so they stay on this thread, which owns it; the
/// diff, the encoding and the packing of mutations into compressed chunks
/// run on a thread of their own ([`diff_into`]).
///
/// Finishing ([`Unfinished::finish`]) comes first, in [`prepare`], when the
/// fetched rows fit in memory (`sync.sort_memory_mib`): run beside the
/// diff, it would hold the sorted rows and the finished set at once
/// (+18 MiB at the peak of a 100k no-op sync) to save ~0.1 s. When they
/// were sorted through temporary files it costs little memory and takes
/// seconds (2.1 s at 1M employees), so it runs on a third thread and hands
/// each employee on as soon as it is done.
///
/// Returns the employees active before, and the finished set (which a
/// held plan reads again).
fn merge_into(
    store: &Store,
    input: Input,
    as_of: Date,
    rules: &Rules,
    w: &mut crate::store::RunWriter<'_>,
) -> Result<(u64, Fetched), StoreError> {
    let input = match input {
        Input::Finished(fetched) => {
            let active_before = diff_into(store, Finished::new(&fetched)?, as_of, rules, w)?;
            return Ok((active_before, fetched));
        }
        Input::Spilled(input) => *input,
    };
    let (pieces_tx, pieces_rx) = std::sync::mpsc::sync_channel::<Vec<Piece>>(BATCHES_IN_FLIGHT);
    let side = Piped {
        rx: pieces_rx,
        batch: Vec::new().into_iter(),
        head: None,
        protected: input.protected().clone(),
    };
    std::thread::scope(|scope| {
        let finisher = scope.spawn(move || {
            // A send fails only when the diff stopped on an error of its
            // own, which is the one reported.
            let stopped = || StoreError::Io("the diff stopped".into());
            let mut batch: Vec<Piece> = Vec::with_capacity(BATCH);
            let fetched = input.finish(|step| {
                batch.push(match step {
                    Step::Employee(key, bytes) => Piece::Employee((key.clone(), bytes.to_vec())),
                    Step::Protected(key) => Piece::Protected(key.clone()),
                });
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    pieces_tx.send(full).map_err(|_| stopped())?;
                }
                Ok(())
            })?;
            if !batch.is_empty() {
                pieces_tx.send(batch).map_err(|_| stopped())?;
            }
            Ok(fetched)
        });
        // The diff ends with the finishing thread: its thread drops the
        // receiver, so a finishing thread still sending stops.
        let diffed = diff_into(store, side, as_of, rules, w);
        let finished: Result<Fetched, StoreError> = finisher
            .join()
            .map_err(|_| StoreError::Io("the thread finishing the fetched records panicked".into()))?;
        // The first failure in the chain is the cause. A diff that read to
        // the end of a finishing thread that stopped on an error diffed
        // part of the records: its error aborts the transaction.
        let active_before = diffed?;
        Ok((active_before, finished?))
    })
}

/// [`merge_snapshot`] on a thread of its own, handing encoded writes and
/// sealed mutation chunks to this thread's inserts over a bounded channel.
/// Order is kept: one producer, one FIFO channel, one consumer.
fn diff_into<'a>(
    store: &Store,
    mut side: impl FetchedSide<'a> + Send,
    as_of: Date,
    rules: &Rules,
    w: &mut crate::store::RunWriter<'_>,
) -> Result<u64, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Encoded>>(BATCHES_IN_FLIGHT);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            // A send fails only when the writer stopped on an error of
            // its own, which is the one reported.
            let stopped = || StoreError::Io("the state file writer stopped".into());
            let mut batch: Vec<Encoded> = Vec::with_capacity(BATCH);
            let mut packer = MutationPacker::default();
            let mut sink = |d: &mut Diff| -> Result<(), StoreError> {
                crate::fault::hit(crate::fault::Point::Diff);
                for write in d.writes.drain(..) {
                    batch.push(Encoded::Write(EncodedWrite::new(&write)?));
                }
                for m in d.mutations.drain(..) {
                    if let Some(c) = packer.push(&m)? {
                        batch.push(Encoded::Mutations(c));
                    }
                }
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    tx.send(full).map_err(|_| stopped())?;
                }
                Ok(())
            };
            let active_before = merge_snapshot(store, &mut side, as_of, rules, &mut sink)?;
            // The last chunk, so that every mutation is counted when the
            // guards look.
            if let Some(c) = packer.finish() {
                batch.push(Encoded::Mutations(c));
            }
            if !batch.is_empty() {
                tx.send(batch).map_err(|_| stopped())?;
            }
            Ok(active_before)
        });
        let mut written = Ok(());
        'batches: for batch in rx.iter() {
            for item in batch {
                crate::fault::hit(crate::fault::Point::Writer);
                if let Err(e) = w.put(item) {
                    written = Err(e);
                    break 'batches;
                }
            }
        }
        // Dropping the receiver ends a producer still sending.
        drop(rx);
        let produced: Result<u64, StoreError> = producer
            .join()
            .map_err(|_| StoreError::Io("the diff thread panicked".into()))?;
        written.and(produced)
    })
}

/// Applies a held plan exactly as it was computed, once. Refused when the
/// snapshot has moved on since.
pub fn approve(config: &Config, store: &Store, run_id: u64) -> Result<RunRecord, StoreError> {
    let plan = store.held_plan(run_id)?;
    let mut record = store.run(run_id)?;
    record.outcome = if plan.mutations.is_empty() {
        Outcome::NothingToDo
    } else {
        Outcome::Success
    };
    record.message = format!("held plan approved at {}", now());
    record.finished_at = now();
    store.commit(record, &plan, &outbox_targets(config), Some(run_id))
}
