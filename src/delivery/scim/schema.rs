//! What a SCIM target declares about its User resource (RFC 7644 §4):
//! ServiceProviderConfig, ResourceTypes and Schemas, read into one
//! [`Target`]. A target that does not serve `/Schemas` is described by RFC
//! 7643's own definitions of the core User and, where its resource type
//! declares it, the enterprise extension.

use std::collections::BTreeMap;

use serde_json::Value;

pub const CORE_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// afas-sync's own extension (`packaging/scim/schemas.json`), used only when
/// a target serves it.
pub const EXTENSION_URN: &str = "urn:afas-sync:scim:schemas:extension:employee:1.0:User";

/// What the server announced in its ServiceProviderConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub patch: bool,
    /// `filter.supported`: lookups by `filter=` may be asked.
    pub filter: bool,
    pub etag: bool,
    /// `filter.maxResults`: the most users one listing page returns
    /// (0 when the server does not say).
    pub max_results: u32,
    /// `bulk.maxOperations` and `bulk.maxPayloadSize` when the server
    /// supports Bulk; 0 when it does not.
    pub bulk_max_operations: u32,
    pub bulk_max_payload: u64,
}

/// A SCIM attribute type (RFC 7643 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Complex,
    Reference,
    Binary,
}

impl AttrType {
    fn parse(s: &str) -> AttrType {
        match s {
            "boolean" => AttrType::Boolean,
            "decimal" => AttrType::Decimal,
            "integer" => AttrType::Integer,
            "dateTime" => AttrType::DateTime,
            "complex" => AttrType::Complex,
            "reference" => AttrType::Reference,
            "binary" => AttrType::Binary,
            _ => AttrType::String,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Boolean => "boolean",
            AttrType::Decimal => "decimal",
            AttrType::Integer => "integer",
            AttrType::DateTime => "dateTime",
            AttrType::Complex => "complex",
            AttrType::Reference => "reference",
            AttrType::Binary => "binary",
        }
    }
}

/// One declared attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub name: String,
    pub kind: AttrType,
    pub multi: bool,
    /// `readOnly`, `readWrite`, `immutable` or `writeOnly`.
    pub mutability: String,
    pub sub: Vec<Attr>,
}

impl Attr {
    pub fn writable(&self) -> bool {
        self.mutability != "readOnly"
    }

    pub fn child(&self, name: &str) -> Option<&Attr> {
        self.sub.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    fn from_json(v: &Value) -> Option<Attr> {
        Some(Attr {
            name: v.get("name")?.as_str()?.to_string(),
            kind: AttrType::parse(v.get("type").and_then(Value::as_str).unwrap_or("string")),
            multi: v.get("multiValued").and_then(Value::as_bool).unwrap_or(false),
            mutability: v
                .get("mutability")
                .and_then(Value::as_str)
                .unwrap_or("readWrite")
                .to_string(),
            sub: v
                .get("subAttributes")
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(Attr::from_json).collect())
                .unwrap_or_default(),
        })
    }
}

/// How the target's User resource was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `/Schemas` answered: the target's own definitions.
    Served,
    /// No `/Schemas`: RFC 7643's definitions of the declared schemas.
    Assumed,
}

/// The target's User resource: its schemas and their attributes.
#[derive(Debug, Clone)]
pub struct Target {
    pub caps: Capabilities,
    pub source: Source,
    /// Extension URNs the User resource type declares (or, without
    /// `/ResourceTypes`, none but what `/Schemas` serves for users).
    pub extensions: Vec<String>,
    /// Attributes by schema URN (the core URN and each usable extension).
    pub schemas: BTreeMap<String, Vec<Attr>>,
}

impl Target {
    /// The target as its three discovery answers describe it; `None` for an
    /// endpoint that did not answer 200.
    pub fn from_answers(caps: Capabilities, resource_types: Option<&Value>, schemas: Option<&Value>) -> Target {
        let user_type = resource_types.and_then(|rt| {
            list(rt).into_iter().find(|r| {
                r.get("id").and_then(Value::as_str) == Some("User")
                    || r.get("endpoint").and_then(Value::as_str) == Some("/Users")
                    || r.get("schema").and_then(Value::as_str) == Some(CORE_URN)
            })
        });
        let mut served: BTreeMap<String, Vec<Attr>> = BTreeMap::new();
        if let Some(s) = schemas {
            for schema in list(s) {
                let Some(id) = schema.get("id").and_then(Value::as_str) else {
                    continue;
                };
                let attrs = schema
                    .get("attributes")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Attr::from_json).collect())
                    .unwrap_or_default();
                served.insert(id.to_string(), attrs);
            }
        }
        let extensions: Vec<String> = match user_type {
            Some(t) => t
                .get("schemaExtensions")
                .and_then(Value::as_array)
                .map(|e| {
                    e.iter()
                        .filter_map(|x| x.get("schema").and_then(Value::as_str))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            // Without resource types, the user extensions the target serves
            // are the ones it says it has.
            None => served
                .keys()
                .filter(|k| k.as_str() != CORE_URN && k.ends_with(":User"))
                .cloned()
                .collect(),
        };
        let source = if schemas.is_some() && served.contains_key(CORE_URN) {
            Source::Served
        } else {
            Source::Assumed
        };
        let mut out = BTreeMap::new();
        match source {
            Source::Served => {
                for urn in std::iter::once(CORE_URN.to_string()).chain(extensions.iter().cloned()) {
                    if let Some(attrs) = served.remove(&urn) {
                        out.insert(urn, attrs);
                    }
                }
            }
            Source::Assumed => {
                out.insert(CORE_URN.to_string(), rfc_core());
                if extensions.iter().any(|e| e == ENTERPRISE_URN) {
                    out.insert(ENTERPRISE_URN.to_string(), rfc_enterprise());
                }
            }
        }
        Target {
            caps,
            source,
            extensions,
            schemas: out,
        }
    }

    /// The schema's attributes, when the target declares it for users.
    pub fn schema(&self, urn: &str) -> Option<&[Attr]> {
        self.schemas
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(urn))
            .map(|(_, v)| v.as_slice())
    }

    pub fn serves(&self, urn: &str) -> bool {
        self.schema(urn).is_some()
    }

    /// Every writable attribute path, for messages: `name.givenName`,
    /// `emails[type eq "…"].value`, `urn:…:User:department`.
    pub fn writable_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (urn, attrs) in &self.schemas {
            let prefix = if urn == CORE_URN {
                String::new()
            } else {
                format!("{urn}:")
            };
            for a in attrs.iter().filter(|a| a.writable()) {
                match (a.kind, a.multi) {
                    (AttrType::Complex, true) if a.child("type").is_some() => {
                        for s in a
                            .sub
                            .iter()
                            .filter(|s| s.writable() && s.name != "type" && s.name != "primary")
                        {
                            out.push(format!("{prefix}{}[type eq \"…\"].{}", a.name, s.name));
                        }
                    }
                    (AttrType::Complex, false) => {
                        for s in a.sub.iter().filter(|s| s.writable()) {
                            out.push(format!("{prefix}{}.{}", a.name, s.name));
                        }
                    }
                    _ => out.push(format!("{prefix}{}", a.name)),
                }
            }
        }
        out
    }
}

fn list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        _ => v
            .get("Resources")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
    }
}

fn attr(name: &str, kind: AttrType, multi: bool, sub: Vec<Attr>) -> Attr {
    Attr {
        name: name.into(),
        kind,
        multi,
        mutability: "readWrite".into(),
        sub,
    }
}

fn strings(names: &[&str]) -> Vec<Attr> {
    names.iter().map(|n| attr(n, AttrType::String, false, vec![])).collect()
}

/// A multi-valued attribute with `value`, `display`, `type` and `primary`.
fn multi(name: &str) -> Attr {
    let mut sub = strings(&["value", "display", "type"]);
    sub.push(attr("primary", AttrType::Boolean, false, vec![]));
    attr(name, AttrType::Complex, true, sub)
}

/// RFC 7643 §4.1's User attributes that a provisioning client writes.
fn rfc_core() -> Vec<Attr> {
    let mut out = vec![
        attr("userName", AttrType::String, false, vec![]),
        attr(
            "name",
            AttrType::Complex,
            false,
            strings(&[
                "formatted",
                "familyName",
                "givenName",
                "middleName",
                "honorificPrefix",
                "honorificSuffix",
            ]),
        ),
    ];
    out.extend(strings(&[
        "displayName",
        "nickName",
        "title",
        "userType",
        "preferredLanguage",
        "locale",
        "timezone",
    ]));
    out.push(attr("active", AttrType::Boolean, false, vec![]));
    out.extend(["emails", "phoneNumbers", "ims", "entitlements", "roles"].map(multi));
    out
}

/// RFC 7643 §4.3: the enterprise User extension.
fn rfc_enterprise() -> Vec<Attr> {
    let mut out = strings(&["employeeNumber", "costCenter", "organization", "division", "department"]);
    out.push(attr(
        "manager",
        AttrType::Complex,
        false,
        strings(&["value", "displayName"]),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CAPS: Capabilities = Capabilities {
        filter: true,
        patch: true,
        etag: false,
        max_results: 0,
        bulk_max_operations: 0,
        bulk_max_payload: 0,
    };

    #[test]
    fn without_schemas_the_rfc_user_is_assumed_with_enterprise_only_where_declared() {
        let rt = json!({"Resources": [{"id": "User", "endpoint": "/Users", "schema": CORE_URN,
            "schemaExtensions": [{"schema": ENTERPRISE_URN, "required": false}]}]});
        let t = Target::from_answers(CAPS, Some(&rt), None);
        assert_eq!(t.source, Source::Assumed);
        assert!(t.serves(CORE_URN) && t.serves(ENTERPRISE_URN));
        let t = Target::from_answers(CAPS, None, None);
        assert!(t.serves(CORE_URN) && !t.serves(ENTERPRISE_URN));
        assert!(t.writable_paths().iter().any(|p| p == "name.givenName"));
    }

    #[test]
    fn served_schemas_count_only_for_extensions_the_user_type_declares() {
        let rt = json!([{"id": "User", "schema": CORE_URN, "schemaExtensions": [{"schema": "urn:x:User"}]}]);
        let s = json!({"Resources": [
            {"id": CORE_URN, "attributes": [{"name": "userName", "type": "string"},
                {"name": "groups", "type": "complex", "multiValued": true, "mutability": "readOnly"}]},
            {"id": "urn:x:User", "attributes": [{"name": "budget", "type": "decimal"}]},
            {"id": ENTERPRISE_URN, "attributes": [{"name": "department", "type": "string"}]},
        ]});
        let t = Target::from_answers(CAPS, Some(&rt), Some(&s));
        assert_eq!(t.source, Source::Served);
        assert!(t.serves("urn:x:User") && !t.serves(ENTERPRISE_URN));
        let paths = t.writable_paths();
        assert!(paths.contains(&"urn:x:User:budget".to_string()));
        assert!(!paths.iter().any(|p| p.starts_with("groups")));
    }
}
