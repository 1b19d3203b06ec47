//! Reading the state file: the snapshot, runs, mutations, held plans, one
//! employee, and the digest check.

use super::*;

/// The chunk that holds (or held) mutation `index` of `run`: the one with
/// the greatest first index not above it. Its key and a copy of its bytes.
pub(super) fn chunk_holding(
    t: &impl ReadableTable<(u64, u32), &'static [u8]>,
    run: u64,
    index: u32,
) -> Result<Option<(u32, Vec<u8>)>, StoreError> {
    match t.range((run, 0)..=(run, index))?.next_back() {
        Some(item) => {
            let (k, v) = item?;
            Ok(Some((k.value().1, v.value().to_vec())))
        }
        None => Ok(None),
    }
}

/// A stored chunk's raw layout (inflated when compressed).
pub(super) fn open_chunk(run: u64, stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, StoreError> {
    chunk::open(stored).map_err(|reason| StoreError::Codec {
        what: format!("mutations of run {run}"),
        reason,
    })
}

pub(super) fn chunk_entries(run: u64, raw: &[u8]) -> Result<Vec<(u32, &[u8])>, StoreError> {
    chunk::entries(raw).map_err(|reason| StoreError::Codec {
        what: format!("mutations of run {run}"),
        reason,
    })
}

/// The mutations of one stored chunk of run `run`, in order.
pub fn chunk_mutations(
    run: u64,
    stored: &[u8],
    mut f: impl FnMut(u32, Mutation) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let raw = open_chunk(run, stored)?;
    for (index, bytes) in chunk_entries(run, &raw)? {
        f(index, dec("mutation", bytes)?)?;
    }
    Ok(())
}

pub(super) fn read_mutation(
    t: &impl ReadableTable<(u64, u32), &'static [u8]>,
    run: u64,
    index: u32,
) -> Result<Option<Mutation>, StoreError> {
    let Some((_, bytes)) = chunk_holding(t, run, index)? else {
        return Ok(None);
    };
    let raw = open_chunk(run, &bytes)?;
    for (i, m) in chunk_entries(run, &raw)? {
        if i == index {
            return dec("mutation", m).map(Some);
        }
    }
    Ok(None)
}

impl Store {
    /// The whole snapshot, keyed by employee.
    pub fn snapshot(&self) -> Result<BTreeMap<EmployeeKey, Provisioned>, StoreError> {
        let mut out = BTreeMap::new();
        self.scan_snapshot(|p| {
            out.insert(p.key.clone(), p);
            Ok(())
        })?;
        Ok(out)
    }

    /// Visits every stored employee in key order, decoding one at a time, so
    /// a sync never holds the whole snapshot in memory.
    /// Visits every stored employee in key order as (key, stored bytes),
    /// for a caller that decodes only what it needs.
    pub fn scan_snapshot_raw(
        &self,
        mut f: impl FnMut(&str, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(EMPLOYEES)?;
        for item in t.iter()? {
            let (k, v) = item?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    pub fn scan_snapshot(&self, mut f: impl FnMut(Provisioned) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(EMPLOYEES)?;
        for item in t.iter()? {
            let (k, v) = item?;
            f(dec_named(|| format!("employee {}", k.value()), v.value())?)?;
        }
        Ok(())
    }

    /// (active, all) stored employees: the kept count when there is one,
    /// else one scan.
    pub fn employee_counts(&self) -> Result<(u64, u64), StoreError> {
        let all = self.employee_count()?;
        if let Some(active) = self.meta()?.active_employees {
            return Ok((active, all));
        }
        let txn = self.db.begin_read()?;
        Ok((count_active(&txn.open_table(EMPLOYEES)?)?, all))
    }

    pub fn employee_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(EMPLOYEES)?.len()?)
    }

    /// One mutation of a run, if retention or `forget` has not removed it.
    pub fn mutation(&self, run: u64, index: u32) -> Result<Option<Mutation>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MUTATIONS)?;
        read_mutation(&t, run, index)
    }

    pub fn run_if_exists(&self, id: u64) -> Result<Option<RunRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let v = t.get(id)?;
        v.map(|g| dec("run", g.value())).transpose()
    }

    pub fn held_plans(&self) -> Result<Vec<(u64, Plan)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HELD)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value(), dec("held plan", v.value())?));
        }
        Ok(out)
    }

    pub fn held_plan(&self, run: u64) -> Result<Plan, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HELD)?;
        let v = t
            .get(run)?
            .ok_or_else(|| StoreError::NotFound(format!("no held plan for run {run} (see `afas-sync plan show`)")))?;
        dec("held plan", v.value())
    }

    /// Drops a held plan and marks its run rejected.
    pub fn reject_held(&self, run_id: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut held = txn.open_table(HELD)?;
            if held.remove(run_id)?.is_none() {
                return Err(StoreError::NotFound(format!("no held plan for run {run_id}")));
            }
            let mut runs = txn.open_table(RUNS)?;
            let existing = runs.get(run_id)?.map(|g| g.value().to_vec());
            if let Some(bytes) = existing {
                let mut run: RunRecord = dec("run", &bytes)?;
                run.outcome = crate::model::Outcome::Rejected;
                runs.insert(run_id, enc("run", &run)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn run(&self, id: u64) -> Result<RunRecord, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let v = t.get(id)?.ok_or_else(|| StoreError::NotFound(format!("no run {id}")))?;
        dec("run", v.value())
    }

    /// The newest runs first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RUNS)?;
        let mut out = Vec::new();
        for item in t.iter()?.rev().take(limit) {
            let (_, v) = item?;
            out.push(dec("run", v.value())?);
        }
        Ok(out)
    }

    pub fn run_mutations(&self, id: u64) -> Result<Vec<Mutation>, StoreError> {
        let mut out = Vec::new();
        self.scan_run_mutations(id, |_, m| {
            out.push(m);
            Ok(())
        })?;
        Ok(out)
    }

    /// Visits one run's mutations in order with their indexes, decoding one
    /// at a time.
    pub fn scan_run_mutations(
        &self,
        id: u64,
        mut f: impl FnMut(u32, Mutation) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_run_chunks(id, |stored| chunk_mutations(id, &stored, &mut f))
    }

    /// A run's mutation chunks as stored, in order, each to be opened with
    /// [`chunk_mutations`] (which may run on another thread).
    pub fn scan_run_chunks(
        &self,
        id: u64,
        mut f: impl FnMut(Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MUTATIONS)?;
        for item in t.range((id, 0)..=(id, u32::MAX))? {
            let (_, v) = item?;
            f(v.value().to_vec())?;
        }
        Ok(())
    }

    /// The stored record of one employee and its history (run id, mutation).
    /// One employee's stored record, without its history.
    pub fn provisioned(&self, key: &str) -> Result<Option<Provisioned>, StoreError> {
        let txn = self.db.begin_read()?;
        let e = txn.open_table(EMPLOYEES)?;
        let v = e.get(key)?;
        v.map(|g| dec("employee", g.value())).transpose()
    }

    pub fn employee(&self, key: &str) -> Result<EmployeeRecord, StoreError> {
        let txn = self.db.begin_read()?;
        let e = txn.open_table(EMPLOYEES)?;
        let current = match e.get(key)? {
            Some(v) => Some(dec("employee", v.value())?),
            None => None,
        };
        let h = txn.open_table(HISTORY)?;
        let m = txn.open_table(MUTATIONS)?;
        let mut history = Vec::new();
        for item in h.range((key, 0)..=(key, u64::MAX))? {
            let (k, v) = item?;
            let run = k.value().1;
            let mutation = read_mutation(&m, run, v.value())?.ok_or_else(|| StoreError::Codec {
                what: format!("history of {key}"),
                reason: format!("run {run} has no mutation {}", v.value()),
            })?;
            history.push((run, mutation));
        }
        Ok((current, history))
    }

    /// Recomputes the snapshot digest and compares it with the one the last
    /// commit stored, and with the last committed run's record.
    pub fn verify(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(EMPLOYEES)?;
        let mut digest = 0u64;
        let mut active = 0u64;
        for item in t.iter()? {
            let (k, v) = item?;
            digest = digest.wrapping_add(record_hash(k.value(), v.value()));
            let p: Provisioned = dec_named(|| format!("employee {}", k.value()), v.value())?;
            active += u64::from(p.status == Status::Active);
        }
        drop(t);
        drop(txn);
        let meta = self.meta()?;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        if digest != meta.snapshot_digest {
            return Err(corrupt(format!(
                "snapshot digest {digest:016x} differs from the committed {:016x}",
                meta.snapshot_digest
            )));
        }
        if let Some(counted) = meta.active_employees.filter(|n| *n != active) {
            return Err(corrupt(format!(
                "{active} active employees stored, the count kept says {counted}"
            )));
        }
        if let Some(id) = meta.last_committed_run {
            let run = self.run(id)?;
            if run.snapshot_digest != digest {
                return Err(corrupt(format!(
                    "run {id} committed digest {:016x}",
                    run.snapshot_digest
                )));
            }
        }
        Ok(())
    }
}
