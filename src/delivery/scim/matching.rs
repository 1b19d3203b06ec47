//! Finding an employee's user at the target: the id afas-sync stored, its
//! own user by `externalId`, or — for a target that already holds the
//! company from another import — a user matched by `sink.scim.match`
//! (`userName`, then any `emails.value`, both compared case-insensitively
//! as RFC 7643 makes them) and adopted as `sink.scim.adopt` allows.
//!
//! Lookups go by filter where the target can be trusted with one; a target
//! that declares no filtering, refuses it, or answers with users that do
//! not satisfy the filter is matched from one listing per pass instead.

use reqwest::Method;
use serde_json::Value;

use super::known::{Held, Known, Learnt};
use super::{Found, Ready, ScimSink};
use crate::config::{Adopt, MatchRule};
use crate::delivery::SinkError;
use crate::model::{Employee, Reason, Status};

/// Where an employee's user is.
pub(super) struct Located {
    pub found: Found,
    /// The rule that matched a user afas-sync takes over (it gets the
    /// employee's `externalId` and every mapped attribute in one write).
    pub adopted: Option<MatchRule>,
    /// The id is the one afas-sync stored (not asked of the target).
    pub from_store: bool,
    /// An adopted user's `emails` as the target holds them, to keep the
    /// addresses afas-sync does not map.
    pub emails: Option<Value>,
}

impl Located {
    fn at(found: Found) -> Located {
        Located {
            found,
            adopted: None,
            from_store: false,
            emails: None,
        }
    }
}

fn state_file(e: impl std::fmt::Display) -> SinkError {
    SinkError::Retry {
        reason: format!("reading the state file: {e}"),
        after: None,
    }
}

impl ScimSink {
    /// The employee's user: the id stored for it, else the one with its
    /// `externalId`, else one the match rules find. `None`: create it.
    pub(super) async fn locate(
        &self,
        ready: &Ready,
        stored: Option<Found>,
        key: &str,
        e: Option<&Employee>,
    ) -> Result<Option<Located>, SinkError> {
        if let Some(found) = stored {
            return Ok(Some(Located {
                from_store: true,
                ..Located::at(found)
            }));
        }
        if let Some(found) = self.find(ready, key).await? {
            return Ok(Some(Located::at(found)));
        }
        match e {
            Some(e) => self.match_existing(ready, key, e).await,
            None => Ok(None),
        }
    }

    /// The employee's own user, by `externalId`.
    pub(super) async fn find(&self, ready: &Ready, key: &str) -> Result<Option<Found>, SinkError> {
        match self.known(key) {
            Known::At(f) => return Ok(Some(f)),
            Known::Absent => return Ok(None),
            Known::Unknown => {}
        }
        let users = match self.filtered(ready, MatchRule::ExternalId, key).await? {
            Some(users) => users,
            None => {
                self.listing_for_matching(ready).await?;
                return match self.known(key) {
                    Known::At(f) => Ok(Some(f)),
                    Known::Absent => Ok(None),
                    Known::Unknown => Err(SinkError::Retry {
                        reason: format!(
                            "the SCIM server cannot be asked for externalId {key} by filter, and its listing \
                             does not settle whether the user exists; trying again in the next pass"
                        ),
                        after: None,
                    }),
                };
            }
        };
        if users.len() > 1 {
            return Err(SinkError::Conflict {
                class: Reason::Duplicates,
                reason: format!(
                    "the SCIM server holds {} users with externalId {key}; remove the duplicates there",
                    users.len()
                ),
            });
        }
        let found = users.first().map(Held::found);
        if let Some(f) = &found {
            self.remember(Some(key), &f.id, f.version.as_deref());
        }
        Ok(found)
    }

    async fn listing_for_matching(&self, ready: &Ready) -> Result<(), SinkError> {
        self.ensure_listing(ready).await.map_err(|reason| SinkError::Retry {
            reason: format!("matching needs the target's listing, which failed: {reason}"),
            after: None,
        })
    }

    /// Users whose `rule` attribute equals `value`, asked by filter; `None`
    /// when this target's filter cannot be trusted (then the listing is
    /// the only way, and the sink remembers that).
    pub(super) async fn filtered(
        &self,
        ready: &Ready,
        rule: MatchRule,
        value: &str,
    ) -> Result<Option<Vec<Held>>, SinkError> {
        if !self.can_filter(ready) {
            return Ok(None);
        }
        Ok(self.ask_filtered(ready, rule, value).await?.ok())
    }

    /// One filtered lookup: the users, or why the answer cannot be trusted.
    pub(super) async fn ask_filtered(
        &self,
        ready: &Ready,
        rule: MatchRule,
        value: &str,
    ) -> Result<Result<Vec<Held>, String>, SinkError> {
        let attr = match rule {
            MatchRule::Emails => "emails.value",
            r => r.as_str(),
        };
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        let query = [("filter", format!("{attr} eq \"{escaped}\""))];
        let a = self.get_users(ready, &query, &format!("lookup by {attr}")).await?;
        let why = match a.status {
            200 => None,
            // A filter the server does not take: the listing does.
            400 | 501 => Some(format!("it refused the filter: {}", self.failure(&a, "lookup"))),
            _ => return Err(self.failure(&a, &format!("lookup by {attr}"))),
        };
        let users: Vec<Held> = a
            .body
            .get("Resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Held::from_json)
            .collect();
        let why = why.or_else(|| {
            let stray = users.iter().filter(|h| !satisfies(h, rule, value)).count();
            (stray > 0).then(|| {
                format!(
                    "it answered `{attr} eq` with {stray} user(s) that do not have that value (a filter it ignores)"
                )
            })
        });
        if let Some(why) = why {
            if Learnt::set(&self.learnt.no_filter) {
                tracing::warn!(sink = "scim", "matching from the target's listing from now on: {why}");
            }
            return Ok(Err(why));
        }
        Ok(Ok(users))
    }

    /// Users with `value` under `rule`: from this pass's listing when one
    /// is at hand (unless `fresh`: what the target holds right now), else
    /// by filter, else from a listing read for it.
    pub(super) async fn search(
        &self,
        ready: &Ready,
        rule: MatchRule,
        value: &str,
        fresh: bool,
    ) -> Result<Vec<Held>, SinkError> {
        if !fresh && self.listed() {
            return Ok(self.listed_by(rule == MatchRule::UserName, value));
        }
        if let Some(users) = self.filtered(ready, rule, value).await? {
            return Ok(users);
        }
        if fresh {
            self.fresh_listing(ready).await.map_err(|reason| SinkError::Retry {
                reason: format!("matching needs the target's listing, which failed: {reason}"),
                after: None,
            })?;
        } else {
            self.listing_for_matching(ready).await?;
        }
        Ok(self.listed_by(rule == MatchRule::UserName, value))
    }

    /// Whether this pass's listing holds a user the match rules could give
    /// this employee (then it is not created blindly).
    pub(super) fn listed_match(&self, e: &Employee) -> bool {
        self.match_rules.iter().any(|rule| match rule {
            MatchRule::ExternalId => false,
            MatchRule::UserName => !self.listed_by(true, &self.user_name_of(e)).is_empty(),
            MatchRule::Emails => !self.listed_by(false, e.email.as_str()).is_empty(),
        })
    }

    /// A user the target already holds that the match rules give this
    /// employee, when `sink.scim.adopt` lets afas-sync take it over; a
    /// conflict that names the user and why it is not taken otherwise.
    async fn match_existing(&self, ready: &Ready, key: &str, e: &Employee) -> Result<Option<Located>, SinkError> {
        for &rule in &self.match_rules {
            let value = match rule {
                MatchRule::ExternalId => continue,
                MatchRule::UserName => self.user_name_of(e),
                MatchRule::Emails => e.email.as_str().to_string(),
            };
            let mut open = Vec::new();
            for h in self.search(ready, rule, &value, false).await? {
                match h.external_id.as_deref() {
                    Some(x) if x == key => {
                        self.remember(Some(key), &h.id, h.version.as_deref());
                        return Ok(Some(Located::at(h.found())));
                    }
                    Some(x) => match self.wants(x, rule, &value).await? {
                        // Another employee's user, with this value of its
                        // own: never a second owner.
                        Some(true) => {
                            return Err(SinkError::Conflict {
                                class: Reason::SharedAddress,
                                reason: format!(
                                    "conflict: user {} at the SCIM server matches employee {key} by {} {value}, \
                                     but it belongs to employee {x}, who has that value too; two employees in \
                                     AFAS share this address: correct one of them in AFAS",
                                    h.id,
                                    rule.as_str()
                                ),
                            })
                        }
                        // Another employee's user that moves on from this
                        // value: its own delivery (or the create's
                        // conflict) frees it.
                        Some(false) => continue,
                        None => open.push(h),
                    },
                    None => open.push(h),
                }
            }
            match open.len() {
                0 => continue,
                1 => return self.adopt(key, rule, &value, open.remove(0)).map(Some),
                n => {
                    let ids: Vec<&str> = open.iter().map(|h| h.id.as_str()).collect();
                    return Err(SinkError::Conflict {
                        class: Reason::Duplicates,
                        reason: format!(
                            "conflict: {n} users at the SCIM server match employee {key} by {} {value} ({}); \
                             remove the duplicates there, then run `afas-sync outbox retry`",
                            rule.as_str(),
                            ids.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(None)
    }

    fn adopt(&self, key: &str, rule: MatchRule, value: &str, h: Held) -> Result<Located, SinkError> {
        let user = format!(
            "user {} at the SCIM server (userName {})",
            h.id,
            h.user_name.as_deref().unwrap_or("?")
        );
        let how = format!("matches employee {key} by {} {value}", rule.as_str());
        match (&h.external_id, self.adopt) {
            (None, Adopt::Never) => {
                return Err(SinkError::Conflict {
                    class: Reason::ForeignHolder,
                    reason: format!(
                        "conflict: {user} {how} and has no externalId, and sink.scim.adopt = \"never\"; \
                         set it to \"unlinked\" to take such users over, or remove the user there, \
                         then run `afas-sync outbox retry`"
                    ),
                })
            }
            (Some(other), Adopt::Unlinked | Adopt::Never) => {
                return Err(SinkError::Conflict {
                    class: Reason::ForeignHolder,
                    reason: format!(
                        "conflict: {user} {how} but is linked to externalId {other} of another system; \
                         set sink.scim.adopt = \"any\" to take it over, or unlink or remove it there, \
                         then run `afas-sync outbox retry`"
                    ),
                })
            }
            _ => {}
        }
        if let Some(first) = self.claim(&h.id, key) {
            return Err(SinkError::Conflict {
                class: Reason::SharedAddress,
                reason: format!(
                    "conflict: {user} {how}, but employee {first} took it over already; \
                     two employees in AFAS share this address: correct one of them in AFAS"
                ),
            });
        }
        Ok(Located {
            adopted: Some(rule),
            emails: h.emails_raw.clone(),
            ..Located::at(h.found())
        })
    }

    /// Whether employee `other` (by the snapshot) is one of ours that
    /// still has `value` under `rule`; `None` when it is not an employee.
    async fn wants(&self, other: &str, rule: MatchRule, value: &str) -> Result<Option<bool>, SinkError> {
        let Some(store) = self.store.clone() else {
            return Ok(None);
        };
        let key = other.to_string();
        let record = tokio::task::spawn_blocking(move || store.provisioned(&key))
            .await
            .map_err(state_file)?
            .map_err(state_file)?;
        Ok(record.map(|r| {
            r.status == Status::Active
                && r.employee.as_ref().is_some_and(|e| {
                    let mine = match rule {
                        MatchRule::UserName => self.user_name_of(e),
                        _ => e.email.as_str().to_string(),
                    };
                    mine.eq_ignore_ascii_case(value)
                })
        }))
    }

    /// A user read whole, for a PUT that keeps what afas-sync does not map;
    /// `None` when gone.
    pub(super) async fn read_user(&self, id: &str) -> Result<Option<(Value, Option<String>)>, SinkError> {
        let a = self.send(Method::GET, self.url(&["Users", id]), None, None).await?;
        match a.status {
            200 => Ok(Some((a.body, a.version))),
            404 => Ok(None),
            _ => Err(self.failure(&a, "read")),
        }
    }
}

/// Whether a user the target returned for `rule eq value` has that value:
/// `externalId` exactly (`caseExact`), the others case-insensitively.
pub(super) fn satisfies(h: &Held, rule: MatchRule, value: &str) -> bool {
    match rule {
        MatchRule::ExternalId => h.external_id.as_deref() == Some(value),
        MatchRule::UserName => h.user_name.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(value)),
        MatchRule::Emails => h.emails.iter().any(|e| e.eq_ignore_ascii_case(value)),
    }
}
