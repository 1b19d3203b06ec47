//! Conflicts a sync causes itself: a `userName` another user still holds
//! because its employee left, or because its own change in the same run
//! moves it on (swaps, chains of moved addresses). Such a holder is given a
//! released `userName` first; one that is still employed gets its own value
//! back once the write went through.

use serde_json::json;

use super::{Ready, ScimSink, Wrote};
use crate::config::MatchRule;
use crate::delivery::SinkError;
use crate::model::{Reason, SinkKind, Status};

impl ScimSink {
    /// Sets one user's `userName`: PATCH, or the user read and put back
    /// with it where changes go as PUT.
    pub(super) async fn set_user_name(&self, ready: &Ready, id: &str, user_name: &str) -> Result<Wrote, SinkError> {
        let op = json!({"op": "replace", "path": "userName", "value": user_name});
        let ours = json!({"userName": user_name});
        self.patch(ready, id, vec![op], None, &ours, false).await
    }

    /// The target refused `value` as a `userName` because another user holds
    /// it. When that user is one this sink provisioned and the snapshot no
    /// longer gives it this value (it left, or its own change moves it on),
    /// it gets its released `userName` so the value is free; its own change,
    /// delivered in turn, gives it its new value. Anything else is a refusal
    /// that names the holder. Returns the holder to give its own value back
    /// once the write went through, when the snapshot has it active: its own
    /// change may have been delivered between the lookup and the release.
    pub(super) async fn free_user_name(
        &self,
        ready: &Ready,
        own_key: &str,
        value: &str,
    ) -> Result<Option<(String, String)>, SinkError> {
        let holders = self.search(ready, MatchRule::UserName, value, true).await?;
        let Some(holder) = holders.first() else {
            return Ok(None); // freed meanwhile
        };
        let id = holder.id.clone();
        let external = holder.external_id.as_deref().unwrap_or("");
        let not_ours = || SinkError::Conflict {
            class: Reason::ForeignHolder,
            reason: format!(
                "the SCIM server gives userName {value} to user {id}{}, which afas-sync did not provision; \
                 free the value there (or remove that user), then run `afas-sync outbox retry`",
                if external.is_empty() {
                    String::new()
                } else {
                    format!(" (externalId {external})")
                }
            ),
        };
        if external == own_key {
            // Already ours: given back by another employee's delivery.
            return Ok(None);
        }
        if external.is_empty() {
            return Err(not_ours());
        }
        let Some(store) = &self.store else {
            return Err(not_ours());
        };
        let (store_a, key_a) = (store.clone(), external.to_string());
        let ours = tokio::task::spawn_blocking(move || {
            let known = store_a.target_id(SinkKind::Scim.name(), &key_a)?;
            let record = store_a.provisioned(&key_a)?;
            Ok::<_, crate::store::StoreError>((known, record))
        })
        .await
        .map_err(|e| SinkError::Retry {
            reason: format!("reading the state file: {e}"),
            after: None,
        })?
        .map_err(|e| SinkError::Retry {
            reason: format!("reading the state file: {e}"),
            after: None,
        })?;
        let (known, record) = ours;
        let Some(record) = record.filter(|_| known.as_deref() == Some(id.as_str())) else {
            return Err(not_ours());
        };
        let still_wanted = record.status == Status::Active
            && record
                .employee
                .as_ref()
                .is_some_and(|e| self.user_name_of(e).eq_ignore_ascii_case(value));
        if still_wanted {
            return Err(SinkError::Conflict {
                class: Reason::SharedAddress,
                reason: format!(
                    "userName {value} belongs to employee {external} (user {id}) as well; \
                     two employees in AFAS share this address: correct one of them in AFAS"
                ),
            });
        }
        let released = self.released_user_name(external);
        let restore = match (&record.status, &record.employee) {
            (Status::Active, Some(e)) => Some((id.clone(), self.user_name_of(e))),
            _ => None,
        };
        match self.set_user_name(ready, &id, &released).await? {
            Wrote::Done(_) | Wrote::Gone => {
                tracing::info!(
                    holder = external,
                    "freed userName at the SCIM target for employee {own_key}"
                );
                Ok(restore)
            }
            Wrote::Conflict => Err(SinkError::Permanent {
                reason: format!(
                    "the released userName {released} for employee {external} is itself taken at the SCIM server; \
                     set sink.scim.released_user_name to a pattern nobody uses"
                ),
            }),
        }
    }
}
