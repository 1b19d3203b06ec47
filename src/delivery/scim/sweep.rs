//! Deactivating a target user no employee matches (`sink.scim.unmanaged =
//! "deactivate"`): `active = false` and nothing else, so the user keeps
//! what the earlier import gave it and can be re-activated by hand.

use serde_json::json;

use super::{ScimSink, SinkError, Wrote};

impl ScimSink {
    /// Deactivates user `id` (PATCH, or PUT over what it holds in PUT
    /// mode). A user gone meanwhile needs nothing.
    pub async fn deactivate_user(&self, id: &str) -> Result<(), SinkError> {
        let ready = self.ready().await?;
        let op = json!({"op": "replace", "path": "active", "value": false});
        match self
            .patch(&ready, id, vec![op], None, &json!({"active": false}), false)
            .await?
        {
            Wrote::Done(_) | Wrote::Gone => Ok(()),
            Wrote::Conflict => Err(SinkError::Permanent {
                reason: format!("the SCIM server answered 409 to deactivating user {id}"),
            }),
        }
    }
}
