//! The takeover preview of `afas-sync sync --dry-run`: the target read
//! (one listing, nothing written) and every employee the run would leave
//! provisioned put through the same matching delivery uses — to create, to
//! adopt (by which rule), conflicts with their reasons, already linked —
//! and the target's users no employee matches.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{ScimSink, SinkError};
use crate::model::Employee;

/// Up to this many of each kind are listed by name; counts are always whole.
pub const LISTED: usize = 200;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Adoption {
    pub key: String,
    pub id: String,
    pub user_name: Option<String>,
    /// `userName` or `emails`.
    pub rule: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conflict {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unmanaged {
    pub id: String,
    pub user_name: Option<String>,
    pub external_id: Option<String>,
    /// As the target listed it; `None` when it did not say.
    #[serde(default)]
    pub active: Option<bool>,
}

impl Unmanaged {
    /// Whether deactivating it would change anything (a user whose state
    /// the target does not list counts as active).
    pub fn active(&self) -> bool {
        self.active != Some(false)
    }
}

/// What delivering to this target would do with its users. Counts are of
/// all; the lists hold the first [`LISTED`] of each.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Takeover {
    pub users_at_target: u64,
    pub create: u64,
    pub adopt: u64,
    pub conflicts: u64,
    /// Already linked to their employee (by the stored id or `externalId`).
    pub linked: u64,
    pub unmanaged: u64,
    pub to_create: Vec<String>,
    pub adoptions: Vec<Adoption>,
    pub conflict_list: Vec<Conflict>,
    pub unmanaged_list: Vec<Unmanaged>,
    /// `sink.scim.unmanaged = "deactivate"`: the unmanaged users that are
    /// active would be deactivated once every change is delivered.
    #[serde(default)]
    pub deactivate: bool,
    /// Of the unmanaged users, those active at the target.
    #[serde(default)]
    pub unmanaged_active: u64,
}

fn push<T>(list: &mut Vec<T>, item: T) {
    if list.len() < LISTED {
        list.push(item);
    }
}

impl ScimSink {
    /// The preview for these employees (key, record, stored target id),
    /// and every target user no employee matches (the preview lists only
    /// the first of them).
    pub async fn preview(
        &self,
        employees: Vec<(String, Employee, Option<String>)>,
    ) -> Result<(Takeover, Vec<Unmanaged>), SinkError> {
        let ready = self.ready().await?;
        self.fresh_listing(&ready).await.map_err(|reason| SinkError::Retry {
            reason: format!("the preview needs the target's listing, which failed: {reason}"),
            after: None,
        })?;
        let held = self.listed_users();
        let ids: HashSet<&str> = held.iter().map(|h| h.id.as_str()).collect();
        let keys: HashSet<&str> = employees.iter().map(|(k, _, _)| k.as_str()).collect();
        let mut t = Takeover {
            users_at_target: held.len() as u64,
            deactivate: self.unmanaged == crate::config::Unmanaged::Deactivate,
            ..Default::default()
        };
        let mut unmanaged = Vec::new();
        let mut taken: HashSet<String> = HashSet::new();
        for (key, e, stored) in &employees {
            if let Some(id) = stored.as_deref().filter(|id| ids.contains(id)) {
                t.linked += 1;
                taken.insert(id.to_string());
                continue;
            }
            match self.locate(&ready, None, key, Some(e)).await {
                Ok(None) => {
                    t.create += 1;
                    push(&mut t.to_create, key.clone());
                }
                Ok(Some(l)) => {
                    taken.insert(l.found.id.clone());
                    match l.adopted {
                        None => t.linked += 1,
                        Some(rule) => {
                            t.adopt += 1;
                            let user_name = held
                                .iter()
                                .find(|h| h.id == l.found.id)
                                .and_then(|h| h.user_name.clone());
                            push(
                                &mut t.adoptions,
                                Adoption {
                                    key: key.clone(),
                                    id: l.found.id,
                                    user_name,
                                    rule: rule.as_str().to_string(),
                                },
                            );
                        }
                    }
                }
                Err(SinkError::Permanent { reason } | SinkError::Conflict { reason, .. }) => {
                    // The users it meets are matched, not unmanaged.
                    for rule in [true, false] {
                        let value = if rule {
                            self.user_name_of(e)
                        } else {
                            e.email.as_str().to_string()
                        };
                        taken.extend(self.listed_by(rule, &value).into_iter().map(|h| h.id));
                    }
                    t.conflicts += 1;
                    push(
                        &mut t.conflict_list,
                        Conflict {
                            key: key.clone(),
                            reason,
                        },
                    );
                }
                Err(e) => return Err(e),
            }
        }
        for h in &held {
            let ours = h.external_id.as_deref().is_some_and(|x| keys.contains(x));
            if taken.contains(&h.id) || ours {
                continue;
            }
            let u = Unmanaged {
                id: h.id.clone(),
                user_name: h.user_name.clone(),
                external_id: h.external_id.clone(),
                active: h.active,
            };
            t.unmanaged += 1;
            t.unmanaged_active += u64::from(u.active());
            push(&mut t.unmanaged_list, u.clone());
            unmanaged.push(u);
        }
        Ok((t, unmanaged))
    }
}
