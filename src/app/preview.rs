//! The takeover preview a dry run adds when a SCIM sink is configured: the
//! employees the run would leave provisioned, matched against the target's
//! users read once (nothing is written anywhere).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::delivery::scim::{ScimSink, Takeover, Unmanaged};
use crate::model::{Employee, Plan, SinkKind};
use crate::store::Store;

/// The preview, or why it could not be made; `None` without a SCIM sink.
pub async fn takeover(config: &Config, store: &Arc<Store>, plan: &Plan) -> Option<Result<Takeover, String>> {
    let changed: BTreeMap<String, Employee> = plan
        .mutations
        .iter()
        .filter_map(|m| Some((m.key.to_string(), m.employee.clone()?)))
        .collect();
    let scim = config.sinks.scim.as_ref()?;
    let sink = match ScimSink::new(scim, Some(store.clone())) {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    Some(read_target(&sink, store, changed).await.map(|(t, _)| t))
}

/// The target read against every employee of the snapshot (with
/// `changed` over it), and all of the target's users no employee matches.
pub(super) async fn read_target(
    sink: &ScimSink,
    store: &Arc<Store>,
    changed: BTreeMap<String, Employee>,
) -> Result<(Takeover, Vec<Unmanaged>), String> {
    let s = store.clone();
    let employees = tokio::task::spawn_blocking(move || {
        let mut all = changed;
        s.scan_snapshot(|p| {
            if let Some(e) = p.employee {
                all.entry(p.key.to_string()).or_insert(e);
            }
            Ok(())
        })?;
        let mut out = Vec::with_capacity(all.len());
        for (key, e) in all {
            let id = s.target_id(SinkKind::Scim.name(), &key)?;
            out.push((key, e, id));
        }
        Ok::<_, crate::store::StoreError>(out)
    })
    .await;
    let employees = match employees {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return Err(format!("the state file: {e}")),
        Err(e) => return Err(format!("reading the state file: {e}")),
    };
    sink.preview(employees).await.map_err(|e| e.to_string())
}
