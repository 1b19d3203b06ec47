//! How a user the target holds is brought to what the mapping makes: the
//! PATCH operations for some or all mapped attributes, and the body of a
//! PUT that keeps what the target holds beyond the mapping.

use serde_json::{json, Map, Value};

use super::{AttrPath, Entry, Mapping};

/// Where one entry's value sits in a user: the attribute's object (the
/// user itself, or its extension's object) and the slot within it.
fn holder<'a>(user: &'a Value, p: &AttrPath) -> Option<&'a Value> {
    if p.is_core() {
        Some(user)
    } else {
        user.get(&p.urn)
    }
}

fn holder_mut<'a>(user: &'a mut Value, p: &AttrPath) -> Option<&'a mut Map<String, Value>> {
    if p.is_core() {
        user.as_object_mut()
    } else {
        user.get_mut(&p.urn).and_then(Value::as_object_mut)
    }
}

impl Mapping {
    /// PATCH operations that bring the target's user to `user` for these
    /// changed snapshot fields, or removing what the employee no longer
    /// has. A singular complex attribute (`name`) is written by its
    /// sub-attributes, never replaced whole (servers refuse or crash on
    /// that); a multi-valued one (`emails`) is replaced as a list, as
    /// value-filtered paths are the part servers implement least.
    /// Empty when no changed field is mapped.
    pub fn patch_ops(&self, user: &Value, changed: &[&str]) -> Vec<Value> {
        self.ops_where(user, |e| changed.iter().any(|c| e.field.changed_by(c)))
    }

    /// Every mapped attribute, with `externalId`, `userName` and `active`:
    /// what adopting a user the target already holds writes.
    pub fn whole_ops(&self, user: &Value) -> Vec<Value> {
        let mut ops: Vec<Value> = ["externalId", "userName", "active"]
            .into_iter()
            .filter_map(|a| Some(json!({"op": "replace", "path": a, "value": user.get(a)?})))
            .collect();
        ops.extend(self.ops_where(user, |_| true));
        ops
    }

    fn ops_where(&self, user: &Value, pick: impl Fn(&Entry) -> bool) -> Vec<Value> {
        let mut ops: Vec<(String, Value)> = Vec::new();
        for e in self.entries.iter().filter(|e| pick(e)) {
            let p = &e.path;
            let prefix = if p.is_core() {
                String::new()
            } else {
                format!("{}:", p.urn)
            };
            let attr = holder(user, p).and_then(|h| h.get(&p.attr));
            let (path, value) = match (&p.filter_type, &p.sub) {
                (None, Some(sub)) => (format!("{prefix}{}.{sub}", p.attr), attr.and_then(|a| a.get(sub))),
                _ => (format!("{prefix}{}", p.attr), attr),
            };
            if ops.iter().any(|(q, _)| *q == path) {
                continue;
            }
            let op = match value {
                Some(v) => json!({"op": "replace", "path": path, "value": v}),
                None => json!({"op": "remove", "path": path}),
            };
            ops.push((path, op));
        }
        ops.into_iter().map(|(_, op)| op).collect()
    }

    /// The body of a PUT: the user as the target holds it (`held`, without
    /// `meta`), with `ours` written over it. With `whole`, `ours` is the
    /// mapping's whole user, and a mapped attribute it lacks is removed
    /// from what is held; attributes afas-sync does not map are kept, so a
    /// PUT never wipes what another system set.
    pub fn overlay(&self, held: Value, ours: &Value, whole: bool) -> Value {
        let mut out = match held {
            Value::Object(m) => Value::Object(m),
            _ => return ours.clone(),
        };
        if let Some(m) = out.as_object_mut() {
            m.remove("meta");
        }
        if whole {
            for e in &self.entries {
                let p = &e.path;
                let Some(h) = holder_mut(&mut out, p) else { continue };
                match (&p.filter_type, &p.sub) {
                    (Some(ty), _) => {
                        if let Some(Value::Array(items)) = h.get_mut(&p.attr) {
                            items.retain(|i| i.get("type").and_then(Value::as_str) != Some(ty));
                        }
                    }
                    (None, Some(sub)) => {
                        if let Some(Value::Object(o)) = h.get_mut(&p.attr) {
                            o.remove(sub);
                        }
                    }
                    (None, None) => {
                        h.remove(&p.attr);
                    }
                }
            }
        }
        merge(&mut out, ours);
        out
    }
}

/// Writes `ours` over `out`: objects merge key by key, a list of typed
/// items keeps the held items of other types, anything else is replaced.
fn merge(out: &mut Value, ours: &Value) {
    let (Some(o), Some(ours)) = (out.as_object_mut(), ours.as_object()) else {
        *out = ours.clone();
        return;
    };
    for (k, v) in ours {
        match (o.get_mut(k), v) {
            (Some(Value::Array(held)), Value::Array(mine)) if k == "schemas" => {
                for s in mine {
                    if !held.contains(s) {
                        held.push(s.clone());
                    }
                }
            }
            (Some(held @ Value::Object(_)), Value::Object(_)) => merge(held, v),
            (Some(Value::Array(held)), Value::Array(mine)) if mine.iter().all(|i| i.get("type").is_some()) => {
                let types: Vec<&Value> = mine.iter().filter_map(|i| i.get("type")).collect();
                held.retain(|i| i.get("type").is_none_or(|t| !types.contains(&t)));
                if mine.iter().any(|i| i.get("primary") == Some(&Value::Bool(true))) {
                    for i in held.iter_mut() {
                        if let Some(m) = i.as_object_mut() {
                            m.remove("primary");
                        }
                    }
                }
                held.extend(mine.iter().cloned());
            }
            _ => {
                o.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{employee, rfc_target};
    use super::*;

    #[test]
    fn a_patch_writes_name_by_its_parts_and_adoption_writes_everything() {
        let m = Mapping::new(&Default::default(), &rfc_target(true)).expect("mapping");
        let user = m.user(&employee(), true, "jan@example.nl");
        let ops = m.patch_ops(&user, &["first_name"]);
        assert_eq!(
            ops[0],
            json!({"op": "replace", "path": "name.givenName", "value": user["name"]["givenName"]})
        );
        let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
        assert_eq!(paths, ["name.givenName", "displayName", "name.formatted"]);
        let whole = m.whole_ops(&user);
        let paths: Vec<&str> = whole.iter().filter_map(|o| o["path"].as_str()).collect();
        for p in [
            "externalId",
            "userName",
            "active",
            "name.givenName",
            "name.familyName",
            "emails",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        assert!(!paths.contains(&"name"), "{paths:?}");
    }

    #[test]
    fn a_put_keeps_what_the_target_holds_beyond_the_mapping() {
        let m = Mapping::new(&Default::default(), &rfc_target(true)).expect("mapping");
        let user = m.user(&employee(), true, "jan@example.nl");
        let held = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "u1", "userName": "JAN@EXAMPLE.NL", "title": "Chef",
            "name": {"givenName": "Old", "honorificPrefix": "Dr."},
            "emails": [{"type": "home", "value": "jan@home.nl", "primary": true}, {"type": "work", "value": "old@x.nl"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Gone", "costCenter": "C1"},
            "meta": {"version": "W/\"1\""},
        });
        let out = m.overlay(held, &user, true);
        assert_eq!(out["title"], "Chef");
        assert_eq!(out["id"], "u1");
        assert!(out.get("meta").is_none());
        assert_eq!(out["name"]["honorificPrefix"], "Dr.");
        assert_eq!(out["name"]["givenName"], user["name"]["givenName"]);
        assert_eq!(out["userName"], "jan@example.nl");
        let emails = out["emails"].as_array().expect("emails");
        assert_eq!(emails.len(), 2, "{emails:?}");
        assert!(emails.iter().any(|e| e["value"] == "jan@home.nl"));
        assert!(!emails.iter().any(|e| e["value"] == "old@x.nl"));
        let ent = &out["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"];
        assert_eq!(ent["costCenter"], "C1");
        assert_eq!(
            ent["department"],
            user["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"]
        );
    }
}
