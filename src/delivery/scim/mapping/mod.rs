//! The attribute mapping: which employee field goes to which attribute of
//! the target (`[sink.scim.attributes]` over defaults that depend on what
//! the target declares), checked against the target's schemas before
//! anything is sent, and the User resources and PATCH operations it makes.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

mod ops;

use super::schema::{Attr, AttrType, Target, CORE_URN, ENTERPRISE_URN, EXTENSION_URN};
use crate::fields::{Field, Kind};
use crate::model::Decimal;
use crate::model::Employee;

/// Attributes afas-sync sets itself: `userName` (from `sink.scim.user_name`),
/// `externalId` (the employee key) and `active`.
const RESERVED: [&str; 5] = ["userName", "externalId", "active", "id", "meta"];

/// An attribute path as RFC 7644 §3.10 writes it, limited to what a
/// provisioning client sets: `attr`, `attr.sub`, `attr[type eq "t"].sub`,
/// each optionally behind a schema URN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    pub urn: String,
    pub attr: String,
    pub filter_type: Option<String>,
    pub sub: Option<String>,
}

impl AttrPath {
    pub fn parse(text: &str) -> Result<AttrPath, String> {
        let t = text.trim();
        let (urn, rest) = if t.to_ascii_lowercase().starts_with("urn:") {
            let head_end = t.find('[').unwrap_or(t.len());
            let head = &t[..head_end];
            let colon = head
                .rfind(':')
                .ok_or_else(|| format!("`{t}` has no attribute after the schema URN"))?;
            (t[..colon].to_string(), &t[colon + 1..])
        } else {
            (CORE_URN.to_string(), t)
        };
        let (attr, filter_type, sub) = match rest.split_once('[') {
            Some((attr, tail)) => {
                let (filter, after) = tail.split_once(']').ok_or_else(|| format!("`{t}`: `[` without `]`"))?;
                let ty = filter
                    .trim()
                    .strip_prefix("type eq ")
                    .map(|v| v.trim().trim_matches('"').to_string())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("`{t}`: only a filter of the form [type eq \"work\"] is supported"))?;
                let sub = after
                    .strip_prefix('.')
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("`{t}`: name the sub-attribute after the filter, e.g. `.value`"))?;
                (attr.to_string(), Some(ty), Some(sub.to_string()))
            }
            None => match rest.split_once('.') {
                Some((a, s)) => (a.to_string(), None, Some(s.to_string())),
                None => (rest.to_string(), None, None),
            },
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-')
        };
        if !ok(&attr) || sub.as_deref().is_some_and(|s| !ok(s)) {
            return Err(format!("`{t}` is not an attribute path"));
        }
        Ok(AttrPath {
            urn,
            attr,
            filter_type,
            sub,
        })
    }

    fn is_core(&self) -> bool {
        self.urn.eq_ignore_ascii_case(CORE_URN)
    }
}

impl std::fmt::Display for AttrPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.is_core() {
            write!(f, "{}:", self.urn)?;
        }
        f.write_str(&self.attr)?;
        if let Some(t) = &self.filter_type {
            write!(f, "[type eq \"{t}\"]")?;
        }
        if let Some(s) = &self.sub {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

/// One field sent to one attribute, with the type the target declares.
#[derive(Debug, Clone)]
struct Entry {
    field: Field,
    path: AttrPath,
    kind: AttrType,
    /// For the `emails[type eq …]` form: whether the element has `primary`.
    primary: bool,
}

/// A mapping checked against one target.
#[derive(Debug, Clone)]
pub struct Mapping {
    entries: Vec<Entry>,
    /// Fields with no attribute, and why.
    pub not_delivered: Vec<(String, String)>,
}

/// The mapping afas-sync uses when the config says nothing of a field.
fn defaults(target: &Target) -> Vec<(Field, Vec<String>)> {
    let ent = |a: &str| format!("{ENTERPRISE_URN}:{a}");
    let mut out = vec![
        (Field::Key, vec![ent("employeeNumber")]),
        (Field::Email, vec!["emails[type eq \"work\"].value".to_string()]),
        (Field::FirstName, vec!["name.givenName".into()]),
        (Field::FamilyName, vec!["name.familyName".into()]),
        (Field::DisplayName, vec!["displayName".into(), "name.formatted".into()]),
        (Field::Department, vec![ent("department")]),
    ];
    if target.serves(EXTENSION_URN) {
        let ext = |a: &str| vec![format!("{EXTENSION_URN}:{a}")];
        out.extend([
            (Field::Prefix, ext("prefix")),
            (Field::DateOfBirth, ext("dateOfBirth")),
            (Field::EmploymentStart, ext("employmentStart")),
            (Field::EmploymentEnd, ext("employmentEnd")),
            (Field::Access, ext("alleoAccess")),
            (Field::Fte, ext("fte")),
            (Field::Salary, ext("salary")),
            (Field::HolidayAllowanceAccrual, ext("holidayAllowanceAccrual")),
            (Field::HolidayAllowanceBalance, ext("holidayAllowanceBalance")),
            (Field::Budgets, ext("budgets")),
            (Field::Leave, ext("leave")),
        ]);
    }
    out
}

/// Why `path` cannot take `field` at this target; `Ok` with the attribute's
/// type and whether a multi-valued element has `primary`.
fn resolve(target: &Target, field: &Field, path: &AttrPath) -> Result<(AttrType, bool), String> {
    if path.is_core() && RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&path.attr)) {
        return Err(format!("`{}` is set by afas-sync itself", path.attr));
    }
    let attrs = target
        .schema(&path.urn)
        .ok_or_else(|| format!("the target does not declare the schema {} for users", path.urn))?;
    let top: &Attr = attrs
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(&path.attr))
        .ok_or_else(|| format!("the target declares no attribute `{}`", path.attr))?;
    if !top.writable() {
        return Err(format!("`{path}` is read-only at the target"));
    }
    let (leaf, primary) = match (&path.filter_type, &path.sub) {
        (Some(_), Some(sub)) => {
            if !(top.kind == AttrType::Complex && top.multi && top.child("type").is_some()) {
                return Err(format!("`{}` is not a multi-valued attribute with a type", top.name));
            }
            let leaf = top
                .child(sub)
                .ok_or_else(|| format!("`{}` has no sub-attribute `{sub}`", top.name))?;
            (leaf, top.child("primary").is_some())
        }
        (None, Some(sub)) => {
            if top.kind != AttrType::Complex || top.multi {
                return Err(format!(
                    "`{}` is not a single complex attribute (for a multi-valued one write `{}[type eq \"work\"].{sub}`)",
                    top.name, top.name
                ));
            }
            let leaf = top
                .child(sub)
                .ok_or_else(|| format!("`{}` has no sub-attribute `{sub}`", top.name))?;
            (leaf, false)
        }
        _ => (top, false),
    };
    if !leaf.writable() {
        return Err(format!("`{path}` is read-only at the target"));
    }
    let fits = match field.kind() {
        Kind::Text => leaf.kind == AttrType::String && !leaf.multi,
        Kind::Date => matches!(leaf.kind, AttrType::String | AttrType::DateTime) && !leaf.multi,
        Kind::Bool => matches!(leaf.kind, AttrType::Boolean | AttrType::String) && !leaf.multi,
        Kind::Decimal => matches!(leaf.kind, AttrType::Decimal | AttrType::String) && !leaf.multi,
        Kind::List => {
            let (a, b) = list_names(field);
            leaf.kind == AttrType::Complex && leaf.multi && leaf.child(a).is_some() && leaf.child(b).is_some()
        }
    };
    if !fits {
        let wants = match field.kind() {
            Kind::Text => "a single string".to_string(),
            Kind::Date => "a string or dateTime".to_string(),
            Kind::Bool => "a boolean or string".to_string(),
            Kind::Decimal => "a decimal or string".to_string(),
            Kind::List => {
                let (a, b) = list_names(field);
                format!("a multi-valued complex attribute with `{a}` and `{b}`")
            }
        };
        return Err(format!(
            "`{path}` is {}{} at the target; {field} needs {wants}",
            if leaf.multi { "a multi-valued " } else { "" },
            leaf.kind.as_str()
        ));
    }
    Ok((leaf.kind, primary))
}

fn list_names(field: &Field) -> (&'static str, &'static str) {
    match field {
        Field::Leave => ("type", "hours"),
        _ => ("name", "amount"),
    }
}

impl Mapping {
    /// The config's mapping (field name → attribute paths; none = not sent)
    /// over the defaults, checked against the target. Errors name the config
    /// key and list what the target can take.
    pub fn new(configured: &BTreeMap<String, Vec<String>>, target: &Target) -> Result<Mapping, String> {
        let mut chosen: BTreeMap<Field, (Vec<String>, bool)> = BTreeMap::new();
        for (f, paths) in defaults(target) {
            chosen.insert(f, (paths, false));
        }
        for (name, paths) in configured {
            let f = Field::parse(name).ok_or_else(|| {
                format!(
                    "sink.scim.attributes.{name}: not an employee field (one of {}, budget.<name>, leave.<type>)",
                    Field::names().collect::<Vec<_>>().join(", ")
                )
            })?;
            chosen.insert(f, (paths.clone(), true));
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut not_delivered = Vec::new();
        // The config's own entries first: a default never takes an
        // attribute the admin gave to another field.
        let (explicit, implied): (Vec<_>, Vec<_>) = chosen.into_iter().partition(|(_, (_, e))| *e);
        for (field, (paths, explicit)) in explicit.into_iter().chain(implied) {
            if paths.is_empty() {
                not_delivered.push((field.to_string(), "switched off in sink.scim.attributes".into()));
                continue;
            }
            let mut missing = Vec::new();
            for text in paths {
                let checked = AttrPath::parse(&text).and_then(|p| {
                    if let Some(other) = entries.iter().find(|e| e.path == p) {
                        return Err(format!("`{p}` already receives {}", other.field));
                    }
                    resolve(target, &field, &p).map(|r| (p, r))
                });
                match checked {
                    Ok((path, (kind, primary))) => entries.push(Entry {
                        field: field.clone(),
                        path,
                        kind,
                        primary,
                    }),
                    Err(why) if explicit => {
                        return Err(format!(
                            "sink.scim.attributes.{field} = \"{text}\": {why}. The target's writable attributes: {}",
                            target.writable_paths().join(", ")
                        ))
                    }
                    Err(why) => missing.push(why),
                }
            }
            if !entries.iter().any(|e| e.field == field) {
                not_delivered.push((field.to_string(), missing.join("; ")));
            }
        }
        for f in Field::all_fixed() {
            let name = f.to_string();
            if !entries.iter().any(|e| e.field == f) && !not_delivered.iter().any(|(n, _)| *n == name) {
                not_delivered.push((name, "not mapped; see sink.scim.attributes".into()));
            }
        }
        Ok(Mapping { entries, not_delivered })
    }

    /// `field → path` lines for `check`.
    pub fn delivered(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| format!("{} → {}", e.field, e.path))
            .collect()
    }

    /// The whole User resource: `schemas` names exactly the URNs it uses.
    pub fn user(&self, e: &Employee, active: bool, user_name: &str) -> Value {
        let mut core = Map::new();
        let mut exts: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for entry in &self.entries {
            let Some(v) = value(e, &entry.field, entry.kind) else {
                continue;
            };
            let p = &entry.path;
            let obj = if p.is_core() {
                &mut core
            } else {
                exts.entry(p.urn.clone()).or_default()
            };
            match (&p.filter_type, &p.sub) {
                (Some(ty), Some(sub)) => {
                    let list = obj.entry(p.attr.clone()).or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(items) = list {
                        let pos = items
                            .iter()
                            .position(|i| i.get("type").and_then(Value::as_str) == Some(ty));
                        let i = match pos {
                            Some(i) => i,
                            None => {
                                let mut item = json!({"type": ty});
                                if entry.primary && items.is_empty() {
                                    item["primary"] = Value::Bool(true);
                                }
                                items.push(item);
                                items.len() - 1
                            }
                        };
                        if let Some(Value::Object(m)) = items.get_mut(i) {
                            m.insert(sub.clone(), v);
                        }
                    }
                }
                (None, Some(sub)) => {
                    if let Value::Object(m) = obj.entry(p.attr.clone()).or_insert_with(|| json!({})) {
                        m.insert(sub.clone(), v);
                    }
                }
                _ => {
                    obj.insert(p.attr.clone(), v);
                }
            }
        }
        let mut schemas = vec![Value::from(CORE_URN)];
        schemas.extend(exts.keys().map(|k| Value::from(k.as_str())));
        let mut user = Map::new();
        user.insert("schemas".into(), Value::Array(schemas));
        user.insert("externalId".into(), Value::from(e.key.as_str()));
        user.insert("userName".into(), Value::from(user_name));
        user.insert("active".into(), Value::Bool(active));
        user.extend(core);
        for (urn, m) in exts {
            user.insert(urn, Value::Object(m));
        }
        Value::Object(user)
    }
}

fn decimal(d: Decimal, kind: AttrType) -> Value {
    match kind {
        AttrType::String => Value::from(d.to_string()),
        _ => d.to_string().parse::<f64>().map(Value::from).unwrap_or(Value::Null),
    }
}

fn date(d: jiff::civil::Date, kind: AttrType) -> Value {
    match kind {
        AttrType::DateTime => Value::from(format!("{d}T00:00:00Z")),
        _ => Value::from(d.to_string()),
    }
}

/// The employee's value of `field` in the form the attribute's type wants;
/// `None` when the employee has none.
fn value(e: &Employee, field: &Field, kind: AttrType) -> Option<Value> {
    let text = |s: &str| Some(Value::from(s));
    match field {
        Field::Key => text(e.key.as_str()),
        Field::Email => text(e.email.as_str()),
        Field::FirstName => text(&e.first_name),
        Field::LastName => text(&e.last_name),
        Field::Prefix => e.prefix.as_deref().and_then(text),
        Field::FamilyName => Some(Value::from(match &e.prefix {
            Some(p) => format!("{p} {}", e.last_name),
            None => e.last_name.clone(),
        })),
        Field::DisplayName => Some(Value::from(e.display_name())),
        Field::Department => e.department.as_deref().and_then(text),
        Field::DateOfBirth => e.date_of_birth.map(|d| date(d, kind)),
        Field::EmploymentStart => Some(date(e.employment.start, kind)),
        Field::EmploymentEnd => e.employment.end.map(|d| date(d, kind)),
        Field::Access => e.access.map(|a| match kind {
            AttrType::String => Value::from(a.to_string()),
            _ => Value::Bool(a),
        }),
        Field::Fte => e.contract.as_ref().and_then(|c| c.fte).map(|d| decimal(d, kind)),
        Field::Salary => e.pay.salary.map(|d| decimal(d, kind)),
        Field::HolidayAllowanceAccrual => e.pay.holiday_allowance_accrual.map(|d| decimal(d, kind)),
        Field::HolidayAllowanceBalance => e.pay.holiday_allowance_balance.map(|d| decimal(d, kind)),
        Field::Budget(b) => e.budgets.get(b).map(|d| decimal(*d, kind)),
        Field::LeaveType(l) => e.pay.leave_hours.get(l).map(|d| decimal(*d, kind)),
        Field::Budgets => (!e.budgets.is_empty()).then(|| {
            e.budgets
                .iter()
                .map(|(n, a)| json!({"name": n, "amount": decimal(*a, AttrType::Decimal)}))
                .collect()
        }),
        Field::Leave => (!e.pay.leave_hours.is_empty()).then(|| {
            e.pay
                .leave_hours
                .iter()
                .map(|(t, h)| json!({"type": t, "hours": decimal(*h, AttrType::Decimal)}))
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::scim::schema::Capabilities;

    const CAPS: Capabilities = Capabilities {
        filter: true,
        patch: true,
        etag: true,
        max_results: 0,
        bulk_max_operations: 0,
        bulk_max_payload: 0,
    };

    pub(super) fn rfc_target(enterprise: bool) -> Target {
        let ext: Vec<Value> = if enterprise {
            vec![json!({"schema": ENTERPRISE_URN})]
        } else {
            vec![]
        };
        let rt = json!([{"id": "User", "schema": CORE_URN, "schemaExtensions": ext}]);
        Target::from_answers(CAPS, Some(&rt), None)
    }

    pub(super) fn employee() -> Employee {
        let date = |s: &str| s.parse::<jiff::civil::Date>().expect("date");
        Employee {
            key: crate::model::EmployeeKey::parse("1042").expect("key"),
            email: crate::model::EmailAddress::parse("j.berg@bedrijf.example").expect("email"),
            first_name: "Jan".into(),
            prefix: Some("van der".into()),
            last_name: "Berg".into(),
            department: Some("Sales".into()),
            date_of_birth: Some(date("1990-02-03")),
            employment: crate::model::EmploymentPeriod::new(date("2020-01-01"), None).expect("period"),
            access: Some(true),
            budgets: BTreeMap::new(),
            contract: None,
            pay: crate::model::Pay::default(),
        }
    }

    #[test]
    fn paths_parse_as_rfc_7644_writes_them() {
        let p = AttrPath::parse("emails[type eq \"work\"].value").expect("path");
        assert_eq!(
            (p.attr.as_str(), p.filter_type.as_deref(), p.sub.as_deref()),
            ("emails", Some("work"), Some("value"))
        );
        assert!(p.is_core());
        let p = AttrPath::parse(&format!("{ENTERPRISE_URN}:manager.value")).expect("path");
        assert_eq!((p.urn.as_str(), p.attr.as_str()), (ENTERPRISE_URN, "manager"));
        assert_eq!(p.to_string(), format!("{ENTERPRISE_URN}:manager.value"));
        for bad in ["", "emails[value eq \"x\"].value", "emails[type eq \"w\"]", "a b"] {
            assert!(AttrPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_plain_target_gets_the_core_user_and_schemas_names_exactly_what_is_used() {
        let e = employee();
        let m = Mapping::new(&BTreeMap::new(), &rfc_target(false)).expect("mapping");
        let u = m.user(&e, true, "j.berg@bedrijf.example");
        assert_eq!(u["schemas"], json!([CORE_URN]));
        assert_eq!(u["name"]["familyName"], "van der Berg");
        assert_eq!(
            u["emails"],
            json!([{"type": "work", "primary": true, "value": "j.berg@bedrijf.example"}])
        );
        assert!(u.get(ENTERPRISE_URN).is_none());
        assert!(m.not_delivered.iter().any(|(f, _)| f == "department"));

        let m = Mapping::new(&BTreeMap::new(), &rfc_target(true)).expect("mapping");
        let u = m.user(&e, true, "x");
        assert_eq!(u["schemas"], json!([CORE_URN, ENTERPRISE_URN]));
        assert_eq!(u[ENTERPRISE_URN]["department"], "Sales");
        // Only what changed and is mapped: a salary change sends nothing.
        assert!(m.patch_ops(&u, &["salary"]).is_empty());
        let ops = m.patch_ops(&u, &["prefix"]);
        let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
        assert_eq!(paths, ["name.familyName", "displayName", "name.formatted"]);
        let mut gone = e.clone();
        gone.department = None;
        let ops = m.patch_ops(&m.user(&gone, true, "x"), &["department"]);
        let path = format!("{ENTERPRISE_URN}:department");
        assert_eq!(ops, vec![json!({"op": "remove", "path": path})]);
    }

    #[test]
    fn dates_take_the_declared_type_and_a_switched_off_field_is_not_sent() {
        let rt = json!([{"id": "User", "schema": CORE_URN, "schemaExtensions": [{"schema": "urn:b:User"}]}]);
        let schemas = json!([
            {"id": CORE_URN, "attributes": [{"name": "userName", "type": "string"},
                {"name": "displayName", "type": "string"}]},
            {"id": "urn:b:User", "attributes": [{"name": "hired", "type": "dateTime"},
                {"name": "born", "type": "string"}, {"name": "staff", "type": "integer"}]},
        ]);
        let t = Target::from_answers(CAPS, Some(&rt), Some(&schemas));
        let cfg: BTreeMap<String, Vec<String>> = [
            ("employment_start", vec!["urn:b:User:hired"]),
            ("date_of_birth", vec!["urn:b:User:born"]),
            ("display_name", vec![]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        let m = Mapping::new(&cfg, &t).expect("mapping");
        let u = m.user(&employee(), true, "x");
        assert_eq!(
            u["urn:b:User"],
            json!({"hired": "2020-01-01T00:00:00Z", "born": "1990-02-03"})
        );
        assert!(u.get("displayName").is_none());
        let cfg: BTreeMap<String, Vec<String>> = [("fte".to_string(), vec!["urn:b:User:staff".to_string()])]
            .into_iter()
            .collect();
        let err = Mapping::new(&cfg, &t).expect_err("integer cannot hold a decimal");
        assert!(
            err.starts_with("sink.scim.attributes.fte") && err.contains("urn:b:User:hired"),
            "{err}"
        );
    }
}
