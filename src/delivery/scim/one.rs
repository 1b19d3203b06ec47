//! What delivering one employee's change would do at the target, read only
//! (`sync --employee KEY --dry-run`): the user it is matched to and by which
//! rule, and the request with the attributes it would write.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Found, ScimSink, PATCH_URN};
use crate::config::Deprovision;
use crate::delivery::SinkError;
use crate::model::{Mutation, MutationKind};

/// The target's side of one change, as delivery would see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WouldSend {
    /// How the employee's user was found: "the id afas-sync stored",
    /// "externalId", "adopted by userName", "none: created", or why it
    /// cannot be theirs.
    pub matched: String,
    pub user_id: Option<String>,
    /// Method and path; `None` when nothing would be sent.
    pub op: Option<String>,
    pub body: Option<Value>,
}

impl ScimSink {
    pub async fn would_send(&self, m: &Mutation, stored_id: Option<String>) -> Result<WouldSend, SinkError> {
        let ready = self.ready().await?;
        let stored = stored_id.map(|id| Found { id, version: None });
        let from_store = stored.is_some();
        let located = match self.locate(&ready, stored, m.key.as_str(), m.employee.as_ref()).await {
            Ok(l) => l,
            Err(e @ (SinkError::Conflict { .. } | SinkError::Permanent { .. })) => {
                return Ok(WouldSend {
                    matched: e.to_string(),
                    user_id: None,
                    op: None,
                    body: None,
                })
            }
            Err(e) => return Err(e),
        };
        let matched = match &located {
            None => "no user at the target: it would be created".to_string(),
            Some(_) if from_store => "the user afas-sync stored for this employee".to_string(),
            Some(l) => match l.adopted {
                Some(rule) => format!("a user the target already holds, adopted by {}", rule.as_str()),
                None => "the user with this employee's externalId".to_string(),
            },
        };
        let id = located.as_ref().map(|l| l.found.id.clone());
        let put = self.put_mode(&ready);
        let (op, body) = match (m.kind, &m.employee, &id) {
            (MutationKind::Leaver, _, None) => (None, None),
            (MutationKind::Leaver, _, Some(id)) => match self.deprovision {
                Deprovision::Delete => (Some(format!("DELETE /Users/{id}")), None),
                Deprovision::Deactivate => (
                    Some(format!("PATCH /Users/{id}")),
                    Some(
                        json!({"schemas": [PATCH_URN], "Operations": [{"op": "replace", "path": "active", "value": false}]}),
                    ),
                ),
            },
            (_, None, _) => (None, None),
            (_, Some(e), None) => (
                Some("POST /Users".to_string()),
                Some(ready.mapping.user(e, true, &self.user_name_of(e))),
            ),
            (_, Some(e), Some(id)) => {
                let user = ready.mapping.user(e, true, &self.user_name_of(e));
                if put {
                    (Some(format!("PUT /Users/{id}")), Some(user))
                } else {
                    let ops = ready.mapping.whole_ops(&user);
                    (
                        Some(format!("PATCH /Users/{id}")),
                        Some(json!({"schemas": [PATCH_URN], "Operations": ops})),
                    )
                }
            }
        };
        Ok(WouldSend {
            matched,
            user_id: id,
            op,
            body,
        })
    }
}
