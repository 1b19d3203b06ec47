//! Reading AFAS: the employee and contract connectors (and the optional
//! pay connectors), decoded row by row into drafts, then finished into
//! employees; large companies sort through temporary files.

use super::*;

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
pub(super) struct Rejections {
    stats: SourceStats,
    protected: BTreeSet<EmployeeKey>,
    unkeyed: u64,
}

/// Rejected rows logged one by one at WARN per run; the rest at DEBUG.
const LOGGED_REJECTIONS: u64 = 10;

pub(super) fn reject(acc: &mut Rejections, r: Rejection) {
    // Keys and values come from AFAS: a newline or a terminal escape in
    // one must not reach the journal or the admin's screen as it is.
    let r = Rejection {
        row: crate::model::printable(&r.row, 300),
        reason: crate::model::printable(&r.reason, 600),
        ..r
    };
    let stats = &mut acc.stats;
    stats.rejected += 1;
    // A big company has hundreds of rows without an e-mail every day: the
    // journal gets the first few, the run record keeps them all.
    if stats.rejected <= LOGGED_REJECTIONS {
        tracing::warn!(row = %r.row, "rejected AFAS row: {}", r.reason);
    } else {
        if stats.rejected == LOGGED_REJECTIONS + 1 {
            tracing::warn!(
                "more rows are rejected in this run; the run record lists them (`afas-sync run show RUN`, `history`)"
            );
        }
        tracing::debug!(row = %r.row, "rejected AFAS row: {}", r.reason);
    }
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
pub(super) fn spill_dir(config: &Config) -> std::path::PathBuf {
    match config.store.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

pub(super) fn encoded_size(item: &spill::Item<Vec<u8>>) -> usize {
    // The key's String and the record's Vec, with their heap blocks.
    item.0.as_str().len() + item.1.len() + 64
}

pub(super) fn by_key(a: &spill::Item<Vec<u8>>, b: &spill::Item<Vec<u8>>) -> Ordering {
    a.0.cmp(&b.0)
}

pub(super) fn contract_size(item: &spill::Item<Contract>) -> usize {
    std::mem::size_of::<spill::Item<Contract>>() + item.0.as_str().len() + item.1.sequence.len()
}

pub(super) fn contract_order(a: &spill::Item<Contract>, b: &spill::Item<Contract>) -> Ordering {
    (&a.0, &a.1.sequence, a.1.start, a.1.end).cmp(&(&b.0, &b.1.sequence, b.1.start, b.1.end))
}

/// Takes from `items` every item whose key compares to `key` as `want`
/// (`Less`: the ones before it, `Equal`: its own), handing each value to `f`.
pub(super) fn take_key<T: serde::de::DeserializeOwned>(
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

/// Every mapped field is in its GetConnector with a type that fits. AFAS
/// also tells the token's expiry in /metainfo; it feeds the alert that
/// warns before the integration silently stops.
async fn check_mapping(config: &Config, client: &AfasClient) -> Result<(), SyncError> {
    if let Ok(meta) = client.metainfo().await {
        afas::expiry::publish_for(&config.afas, meta.info.token_expiry.as_deref());
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
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SyncError::Fields(problems))
    }
}

/// A contract we cannot read may hide the current employment: its
/// employee is rejected rather than guessed at (when the key is readable).
fn unreadable_contract(
    row: &afas::rows::Row,
    mapping: &crate::config::Mapping,
    reason: String,
    row_problems: &mut HashMap<EmployeeKey, String>,
) {
    let key = afas::rows::text(row, &mapping.contracts.employee_key)
        .ok()
        .flatten()
        .and_then(|k| EmployeeKey::parse(&k).ok());
    match key {
        Some(k) => {
            row_problems.insert(k, format!("contract row: {reason}"));
        }
        None => tracing::warn!("contract row without a readable employee key: {reason}"),
    }
}

/// Checks the mapping against metainfo, then reads both connectors at once
/// and normalizes the rows as they stream in, sorted by key; joining each
/// employee with its contracts and pay is left to [`Unfinished::finish`].
pub async fn read(config: &Config, client: &AfasClient, as_of: Date) -> Result<Unfinished, SyncError> {
    read_of(config, client, as_of, None).await
}

/// As [`read`]; with `only`, that employee's rows alone.
pub async fn read_of(
    config: &Config,
    client: &AfasClient,
    as_of: Date,
    only: Option<&str>,
) -> Result<Unfinished, SyncError> {
    let spec = |source, conn| match only {
        Some(key) => afas::read_spec_of(config, source, conn, key),
        None => afas::read_spec(config, source, conn),
    };
    check_mapping(config, client).await?;
    // Salary, wage components and leave are small per employee: each is
    // read in its own task while employees and contracts stream in here.
    let extras: Vec<_> = afas::connectors(config)
        .into_iter()
        .filter(|(s, _)| matches!(s, Source::Salary | Source::WageComponents | Source::Leave))
        .map(|(source, conn)| {
            let rx = client.read(spec(source, conn));
            let mapping = config.mapping.clone();
            tokio::spawn(read_extra(source, rx, mapping))
        })
        .collect();

    let mapping = &config.mapping;
    let mut emp_rx = client.read(spec(Source::Employees, &config.afas.employees));
    let mut con_rx = config
        .afas
        .contracts
        .as_ref()
        .map(|c| client.read(spec(Source::Contracts, c)));
    let mut acc = Rejections::default();
    let dir = spill_dir(config);
    let limit = config.sync.sort_memory_mib as usize * 1024 * 1024;
    let spill_err = |e: std::io::Error| SyncError::Spill(format!("in {}: {e}", dir.display()));
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
                            Err(reason) => unreadable_contract(row, mapping, reason, &mut row_problems),
                        }
                    }
                }
            },
        }
    }

    let mut extra = Extras::default();
    for task in extras {
        extra.merge(task.await.map_err(|e| SyncError::Internal(e.to_string()))??);
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
    pub(super) spilled: usize,
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
        let spill_err = |e: std::io::Error| SyncError::Spill(format!("in {}: {e}", dir.display())).through_store();
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
            // Sorted by sequence within the key: a repeat sits next to its
            // twin (comparing each with all before it was quadratic).
            let twice = mine
                .windows(2)
                .find(|w| w[0].sequence == w[1].sequence)
                .map(|w| format!("contract row: contract {} appears twice", w[1].sequence));
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

pub(super) fn encode_internal<T: Serialize>(v: &T) -> Result<Vec<u8>, SyncError> {
    crate::store::codec::encode(v).map_err(|e| SyncError::Internal(e.to_string()))
}

/// Salary, wage component and leave rows, per employee.
#[derive(Default)]
pub(super) struct Extras {
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

pub(super) async fn read_extra(
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
