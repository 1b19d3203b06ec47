//! `afas-sync check` tries the target for real, read-only: the listing and
//! the filtered lookups delivery depends on, asked as delivery asks them,
//! and then says how delivery will talk to this target and why.

use serde_json::Value;

use super::known::{Held, Learnt};
use super::matching::satisfies;
use super::{Ready, ScimSink};
use crate::config::{MatchRule, UpdateMode};

type Line = (String, Result<String, String>);

impl ScimSink {
    pub(super) async fn probe(&self, ready: &Ready) -> Vec<Line> {
        let mut out = Vec::new();
        // One listing page, with the `attributes=` delivery asks for.
        let query = [("startIndex", "1".to_string()), ("count", "2".to_string())];
        let page = match self.get_users(ready, &query, "listing").await {
            Ok(a) if a.status == 200 => a.body,
            Ok(a) => {
                out.push((
                    "SCIM listing".into(),
                    Err(format!(
                        "{}; delivery reads the target's users this way to match employees",
                        self.failure(&a, "listing")
                    )),
                ));
                return out;
            }
            Err(e) => {
                out.push(("SCIM listing".into(), Err(e.to_string())));
                return out;
            }
        };
        let total = page.get("totalResults").and_then(Value::as_u64);
        let sample: Option<Held> = page
            .get("Resources")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .and_then(Held::from_json);
        out.push((
            "SCIM listing".into(),
            Ok(format!(
                "{} users at the target{}",
                total.map_or("an unknown number of".to_string(), |t| t.to_string()),
                if Learnt::get(&self.learnt.no_attributes) {
                    " (it refused `attributes=`: delivery asks for whole users)"
                } else {
                    ""
                }
            )),
        ));
        if !ready.target.caps.filter {
            out.push((
                "SCIM lookups".into(),
                Ok("the target declares no filtering (filter.supported = false): delivery matches employees from one listing per pass".into()),
            ));
        } else {
            out.push(("SCIM lookups".into(), self.probe_lookups(ready, sample.as_ref()).await));
        }
        out.push(("SCIM delivery will use".into(), Ok(self.plan_line(ready))));
        out
    }

    /// A lookup by `externalId` and by `userName` for a value that cannot
    /// exist, and for the listing's first user when there is one.
    async fn probe_lookups(&self, ready: &Ready, sample: Option<&Held>) -> Result<String, String> {
        let nobody = format!("afas-sync-check-{:016x}@nobody.invalid", fastrand::u64(..));
        let mut tried = Vec::new();
        let mut wanted: Vec<(MatchRule, String)> = vec![
            (MatchRule::ExternalId, nobody.clone()),
            (MatchRule::UserName, nobody.clone()),
        ];
        if let Some(h) = sample {
            if let Some(x) = &h.external_id {
                wanted.push((MatchRule::ExternalId, x.clone()));
            }
            if let Some(u) = &h.user_name {
                wanted.push((MatchRule::UserName, u.clone()));
            }
        }
        for (rule, value) in wanted {
            let users = match self.ask_filtered(ready, rule, &value).await {
                Err(e) => return Err(e.to_string()),
                Ok(Err(why)) => {
                    return Ok(format!(
                    "a lookup by {} cannot be trusted ({why}): delivery matches employees from one listing per pass",
                    rule.as_str()
                ))
                }
                Ok(Ok(users)) => users,
            };
            let real = value != nobody;
            if real && !users.iter().any(|u| sample.is_some_and(|s| s.id == u.id)) {
                return Err(format!(
                    "the target's lookup `{} eq \"{value}\"` did not return user {}, which its listing holds: \
                     it would match no employee and make duplicates; ask the target's vendor about filtering",
                    rule.as_str(),
                    sample.map_or("?", |s| s.id.as_str())
                ));
            }
            if users.iter().any(|u| !satisfies(u, rule, &value)) {
                return Ok(format!(
                    "a lookup by {} answers users without the value: delivery matches from the listing",
                    rule.as_str()
                ));
            }
            tried.push(format!(
                "{} ({})",
                rule.as_str(),
                if real { "an existing user" } else { "a value nobody has" }
            ));
        }
        Ok(format!("filtered lookups answer as they should: {}", tried.join(", ")))
    }

    /// How changes will travel, and why.
    fn plan_line(&self, ready: &Ready) -> String {
        let caps = ready.target.caps;
        let filter = if self.can_filter(ready) {
            "filter lookups"
        } else {
            "the listing instead of filter lookups"
        };
        let attributes = match self.wanted_attributes(ready) {
            Some(a) => format!("attributes={a}"),
            None => "whole users (attributes= refused)".into(),
        };
        let update = match (self.update, self.put_mode(ready)) {
            (UpdateMode::Put, _) => "PUT (sink.scim.update = \"put\")",
            (UpdateMode::Patch, _) => "PATCH (sink.scim.update = \"patch\")",
            (UpdateMode::Auto, true) => "PUT (the target declares no PATCH)",
            (UpdateMode::Auto, false) => "PATCH, and PUT should the target not apply one",
        };
        let bulk = match (caps.bulk_max_operations, self.bulk) {
            (0 | 1, _) => "no Bulk".to_string(),
            (n, true) => format!("Bulk up to {n} changes per request"),
            (_, false) => "no Bulk (sink.scim.bulk = false)".into(),
        };
        let etag = if caps.etag { "If-Match with ETags" } else { "no ETags" };
        let rules: Vec<&str> = self
            .match_rules
            .iter()
            .filter(|r| **r != MatchRule::ExternalId)
            .map(|r| r.as_str())
            .collect();
        let adopt = format!("{:?}", self.adopt).to_lowercase();
        format!(
            "{filter}, {attributes}, {update}, {bulk}, {etag}; employees matched by externalId{}{} (sink.scim.match), \
             sink.scim.adopt = \"{adopt}\"",
            if rules.is_empty() { "" } else { ", then " },
            rules.join(", "),
        )
    }
}
