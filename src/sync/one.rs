//! One employee through every step, on demand (`sync --employee KEY`):
//! that employee's rows from AFAS, the record they make, whether it is in
//! scope and why, and the change against the snapshot — committed as a run
//! of its own unless it is a dry run. Guards are for whole runs: one
//! employee's leaver is allowed. Nobody else is touched: the others are not
//! read, so their absence counts for nothing.

use std::sync::Arc;

use jiff::civil::Date;
use serde::Serialize;

use super::plan::{self, Diff, Plan, Provisioned, Rules, SourceStats};
use super::{blocking, mapping_fingerprint, read_of, refresh_state_metrics, SyncError};
use crate::afas::{self, AfasClient, ClientOptions};
use crate::config::Config;
use crate::model::run::now;
use crate::model::Mutation;
use crate::model::{Employee, EmployeeKey, Outcome, RunRecord};
use crate::store::Store;

/// What reading one employee found and decided.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct OneEmployee {
    pub key: String,
    /// The rows AFAS gave for the key, per connector (the mapped fields).
    pub rows: Vec<(String, Vec<serde_json::Value>)>,
    /// Why rows of the key were rejected.
    pub rejected: Vec<String>,
    pub employee: Option<Employee>,
    pub stored: Option<Provisioned>,
    pub in_scope: bool,
    pub scope: String,
    pub mutation: Option<Mutation>,
    /// The run that committed it: none in a dry run or when nothing changed.
    pub run: Option<RunRecord>,
}

/// The rows of one connector for the key, as AFAS sent them.
async fn rows_of(client: &AfasClient, spec: afas::ReadSpec) -> Result<Vec<serde_json::Value>, SyncError> {
    let mut rx = client.read(spec);
    let mut out = Vec::new();
    while let Some(page) = rx.recv().await {
        for row in page?.rows {
            out.push(serde_json::Value::Object(row.into_json()));
        }
    }
    Ok(out)
}

/// Reads, decides and (unless `dry_run`) commits one employee's change.
pub async fn one(
    config: &Config,
    store: Arc<Store>,
    key: &str,
    as_of: Date,
    dry_run: bool,
) -> Result<OneEmployee, SyncError> {
    let key = EmployeeKey::parse(key).map_err(|e| SyncError::Internal(format!("employee key {key:?}: {e}")))?;
    if key.as_str().contains([',', ';']) {
        return Err(SyncError::Internal(format!(
            "employee key {key}: `,` and `;` cannot be asked of AFAS in a filter"
        )));
    }
    let client = AfasClient::new(ClientOptions::from_config(&config.afas)?)?;
    let mut rows = Vec::new();
    for (source, conn) in afas::connectors(config) {
        let got = rows_of(&client, afas::read_spec_of(config, source, conn, key.as_str())).await?;
        rows.push((conn.connector.clone(), got));
    }
    let fetched = read_of(config, &client, as_of, Some(key.as_str()))
        .await?
        .finish(|_| Ok(()))?;
    let mut employee: Option<Employee> = None;
    for item in fetched.employees.iter().map_err(|e| SyncError::Spill(e.to_string()))? {
        let item = item.map_err(|e| SyncError::Spill(e.to_string()))?;
        if item.0 == key {
            employee = Some(
                crate::store::codec::decode(&item.1)
                    .map_err(|e| SyncError::Internal(format!("fetched employee {key}: {e}")))?,
            );
        }
    }
    let rejected: Vec<String> = fetched
        .stats
        .rejections
        .iter()
        .map(|r| format!("{}: {}", r.row, r.reason))
        .collect();
    let protected = fetched.protected.contains(&key);
    if employee.is_none() && !protected && rows.iter().all(|(_, r)| r.is_empty()) {
        return Err(SyncError::Internal(format!(
            "AFAS has no employee with key {key} in {} (`afas-sync fetch` lists what it has)",
            config.afas.employees.connector
        )));
    }
    let s = store.clone();
    let k = key.clone();
    let (stored, meta) = blocking(move || Ok((s.provisioned(k.as_str())?, s.meta()?))).await?;
    let rules = Rules {
        lead_days: config.sync.lead_days,
        absent_runs_for_leaver: config.sync.absent_runs_before_leaver,
        ignore_absences: true,
    };
    let mut diff = Diff::default();
    if !protected {
        diff.step(&key, stored.as_ref(), employee.as_ref(), as_of, &rules);
    }
    let in_scope = employee.as_ref().is_some_and(|e| plan::eligible(e, as_of, &rules));
    let scope = match (&employee, protected) {
        (_, true) => "its rows were rejected, so afas-sync leaves it as it is".to_string(),
        (Some(e), false) if in_scope => match e.access {
            Some(_) => format!("in scope: Alleo access, and employed on {as_of} (or within the lead days)"),
            None => format!("in scope: employed on {as_of} (or within the lead days); no Alleo access field is mapped (setup step 4)"),
        },
        (Some(e), false) => format!("not in scope: {}", plan::leave_reason(e, as_of)),
        (None, false) => "not read from AFAS".to_string(),
    };
    let mutation = diff.mutations.first().cloned();
    let mut out = OneEmployee {
        key: key.to_string(),
        rows,
        rejected,
        employee,
        stored,
        in_scope,
        scope,
        mutation,
        run: None,
    };
    if dry_run || out.mutation.is_none() {
        return Ok(out);
    }
    let s = store.clone();
    if let Some((held, _)) = blocking(move || s.held_plans()).await?.first() {
        // Committing would move the snapshot on, and the held plan could
        // no longer be approved.
        return Err(SyncError::Internal(format!(
            "run {held} is held for approval: `afas-sync plan approve {held}` or `plan reject {held}` first (`--dry-run` still shows every step)"
        )));
    }
    // The committed state the guards compare the next whole run with stays
    // as the last whole run left it.
    let plan = Plan {
        as_of,
        base_run: meta.last_committed_run,
        mutations: diff.mutations,
        writes: diff.writes,
        source: SourceStats {
            employee_rows: meta.source_rows.unwrap_or(0),
            ..SourceStats::default()
        },
        active_before: meta.active_employees.unwrap_or(0),
        mapping_fingerprint: meta.mapping_fingerprint.unwrap_or_else(|| mapping_fingerprint(config)),
    };
    let targets = config.sinks.kinds();
    let s = store.clone();
    let run = blocking(move || {
        let mut record = RunRecord::new(s.next_run_id()?, as_of);
        record.fill_counts(&plan);
        record.outcome = Outcome::OnDemand;
        let who = plan.mutations.first().map(|m| m.key.to_string()).unwrap_or_default();
        record.message = format!("employee {who} on demand (`sync --employee`)");
        record.finished_at = now();
        s.commit(record, &plan, &targets, None)
    })
    .await?;
    tracing::info!(run = run.id, employee = %key, "one employee committed on demand");
    let s = store.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || refresh_state_metrics(&s)).await {
        tracing::warn!("cannot refresh state metrics: {e}");
    }
    out.run = Some(run);
    Ok(out)
}
