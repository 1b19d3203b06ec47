//! `afas-sync check` for the SCIM target: reachable, what it declares, and
//! which fields the mapping delivers there.

use super::*;

impl ScimSink {
    /// For `afas-sync check`: reachable, what the target declares, and
    /// which fields the mapping delivers there.
    pub async fn check(&self) -> Vec<(String, Result<String, String>)> {
        let mut out = Vec::new();
        let target = match self.discover_target().await {
            Ok(t) => t,
            Err(e) => {
                out.push(("SCIM reachable".to_string(), Err(e.to_string())));
                return out;
            }
        };
        let yes = |b: bool| if b { "yes" } else { "no" };
        out.push((
            "SCIM reachable".to_string(),
            Ok(format!(
                "{} (PATCH {}, ETags {}, Bulk {})",
                self.base,
                yes(target.caps.patch),
                yes(target.caps.etag),
                match (target.caps.bulk_max_operations, self.bulk) {
                    (0 | 1, _) => "no".to_string(),
                    (n, true) => format!("yes, up to {n} changes per request"),
                    (_, false) => "offered, not used (sink.scim.bulk = false)".to_string(),
                }
            )),
        ));
        let names: Vec<&str> = target.schemas.keys().map(String::as_str).collect();
        let schemas = match target.source {
            schema::Source::Served => format!("the target serves {}", names.join(", ")),
            schema::Source::Assumed => format!(
                "the target serves no /Schemas: treated as RFC 7643's {}",
                names.join(" and ")
            ),
        };
        out.push(("SCIM schemas".to_string(), Ok(schemas)));
        match Mapping::new(&self.attributes, &target) {
            Ok(m) => {
                out.push(("SCIM attributes delivered".to_string(), Ok(m.delivered().join(", "))));
                // Grouped by why: "not mapped; see …: prefix, salary".
                let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
                for (f, why) in &m.not_delivered {
                    match by_reason.iter_mut().find(|(w, _)| w == why) {
                        Some((_, fields)) => fields.push(f),
                        None => by_reason.push((why, vec![f])),
                    }
                }
                let not: Vec<String> = by_reason
                    .iter()
                    .map(|(why, fields)| format!("{} ({why})", fields.join(", ")))
                    .collect();
                out.push((
                    "SCIM fields not delivered".to_string(),
                    Ok(if not.is_empty() { "none".into() } else { not.join("; ") }),
                ));
                match self.ready().await {
                    Ok(ready) => out.extend(self.probe(&ready).await),
                    Err(e) => out.push(("SCIM lookups".to_string(), Err(e.to_string()))),
                }
            }
            Err(e) => out.push(("SCIM attribute mapping".to_string(), Err(e))),
        }
        out
    }
}
