//! Provision on demand (`sync --employee KEY`): one employee through every
//! step — AFAS rows, the record, scope, the change, the target's user and
//! the request — and, without a dry run, the change committed as a run of
//! its own and delivered, with what the target answered.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::outbox::{self, EmployeeAtSink};
use super::{deliver_outbox, AppError, Deliver, Delivery, Reply};
use crate::config::Config;
use crate::delivery::scim::{ScimSink, WouldSend};
use crate::model::SinkKind;
use crate::store::Store;
use crate::sync::OneEmployee;

/// Every step for one employee.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OneReport {
    pub dry_run: bool,
    pub one: OneEmployee,
    /// A dry run's look at the SCIM target (read only).
    pub scim: Option<WouldSend>,
    pub scim_error: Option<String>,
    /// What delivering the committed change did.
    pub delivery: Option<Delivery>,
    /// Where the employee stands at each sink afterwards.
    pub sinks: Vec<EmployeeAtSink>,
}

pub async fn one(
    config: &Config,
    store: &Arc<Store>,
    key: &str,
    as_of: jiff::civil::Date,
    dry_run: bool,
    deliver: Deliver,
) -> Result<Reply, AppError> {
    let one = crate::sync::one(config, store.clone(), key, as_of, dry_run)
        .await
        .map_err(|e| AppError::Sync(e.to_string()))?;
    let mut report = OneReport {
        dry_run,
        one,
        scim: None,
        scim_error: None,
        delivery: None,
        sinks: Vec::new(),
    };
    if dry_run {
        if let (Some(c), Some(m)) = (&config.sinks.scim, &report.one.mutation) {
            let look = async {
                let sink = ScimSink::new(c, Some(store.clone()))?;
                let id = store.target_id(SinkKind::Scim.name(), key).map_err(|e| e.to_string())?;
                sink.would_send(m, id).await.map_err(|e| e.to_string())
            };
            match look.await {
                Ok(w) => report.scim = Some(w),
                Err(e) => report.scim_error = Some(e),
            }
        }
    } else if report.one.run.is_some() && deliver == Deliver::Wait {
        // What is due: other employees' entries that back off keep waiting.
        report.delivery = deliver_outbox(config, store, false).await;
    }
    report.sinks = outbox::employee(config, store, key)?;
    Ok(Reply::OneEmployee(Box::new(report)))
}
