//! GetConnector query semantics as AFAS documents them: `skip`/`take` with
//! their defaults, `-1/-1`, `orderbyfieldids` with `-` for descending, and
//! filters as parallel lists where `,` is AND and `;` starts an OR group.

use std::cmp::Ordering;

use serde_json::Value;

use super::data::ConnectorData;
use crate::afas::rows::JsonRow;

/// A query the emulator refuses, with the message AFAS would give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError(pub String);

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: String,
    pub op: u8,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub skip: i64,
    pub take: i64,
    pub order: Vec<(String, bool)>,
    /// OR of AND-groups.
    pub filter: Vec<Vec<Condition>>,
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn split_groups(s: &str) -> Vec<Vec<String>> {
    s.split(';')
        .map(|g| g.split(',').map(str::to_string).collect())
        .collect()
}

pub fn parse(params: &[(String, String)]) -> Result<Query, QueryError> {
    let int = |name: &str, default: i64| -> Result<i64, QueryError> {
        match param(params, name) {
            None | Some("") => Ok(default),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map_err(|_| QueryError(format!("Invalid value for parameter '{name}'"))),
        }
    };
    let skip = int("skip", 0)?;
    let take = int("take", 100)?;
    if take == -1 && skip != -1 {
        return Err(QueryError("take=-1 is only allowed together with skip=-1".into()));
    }
    if skip < -1 || take < -1 {
        return Err(QueryError("skip and take must not be negative".into()));
    }
    let order = param(params, "orderbyfieldids")
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split(',')
                .map(|f| match f.strip_prefix('-') {
                    Some(n) => (n.to_string(), true),
                    None => (f.to_string(), false),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut filter = Vec::new();
    if let Some(fields) = param(params, "filterfieldids").filter(|s| !s.is_empty()) {
        let values = param(params, "filtervalues").unwrap_or("");
        let ops = param(params, "operatortypes").unwrap_or("");
        let (fg, vg, og) = (split_groups(fields), split_groups(values), split_groups(ops));
        if fg.len() != vg.len() || fg.len() != og.len() {
            return Err(QueryError(
                "The number of filter fields, values and operators does not match".into(),
            ));
        }
        for ((f, v), o) in fg.into_iter().zip(vg).zip(og) {
            if f.len() != v.len() || f.len() != o.len() {
                return Err(QueryError(
                    "The number of filter fields, values and operators does not match".into(),
                ));
            }
            let mut group = Vec::new();
            for ((field, value), op) in f.into_iter().zip(v).zip(o) {
                let op: u8 = op
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| (1..=15).contains(n))
                    .ok_or_else(|| QueryError(format!("Unknown operator type '{op}'")))?;
                group.push(Condition { field, op, value });
            }
            filter.push(group);
        }
    }
    Ok(Query {
        skip,
        take,
        order,
        filter,
    })
}

/// A typed view of a cell, so comparisons follow the field's data type.
#[derive(Debug, PartialEq, PartialOrd)]
enum Key {
    Null,
    Num(f64),
    Text(String),
}

fn cell_key(v: Option<&Value>, data_type: &str) -> Key {
    match v {
        None | Some(Value::Null) => Key::Null,
        Some(Value::Number(n)) => Key::Num(n.as_f64().unwrap_or(0.0)),
        Some(Value::Bool(b)) => Key::Num(if *b { 1.0 } else { 0.0 }),
        Some(Value::String(s)) => match data_type {
            "int" | "decimal" => s
                .trim()
                .parse::<f64>()
                .map(Key::Num)
                .unwrap_or(Key::Text(s.to_lowercase())),
            // Compare dates on their text without the (meaningless) `Z`.
            "date" => Key::Text(s.trim_end_matches('Z').to_string()),
            // AFAS runs on SQL Server with a case-insensitive collation.
            _ => Key::Text(s.to_lowercase()),
        },
        Some(other) => Key::Text(other.to_string()),
    }
}

fn literal_key(s: &str, data_type: &str) -> Key {
    match data_type {
        "int" | "decimal" => s
            .trim()
            .parse::<f64>()
            .map(Key::Num)
            .unwrap_or(Key::Text(s.to_lowercase())),
        "boolean" => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" => Key::Num(1.0),
            "0" | "false" => Key::Num(0.0),
            other => Key::Text(other.to_string()),
        },
        "date" => Key::Text(s.trim_end_matches('Z').to_string()),
        _ => Key::Text(s.to_lowercase()),
    }
}

fn compare(a: &Key, b: &Key) -> Ordering {
    match (a, b) {
        (Key::Null, Key::Null) => Ordering::Equal,
        // SQL Server sorts NULL first ascending.
        (Key::Null, _) => Ordering::Less,
        (_, Key::Null) => Ordering::Greater,
        (Key::Num(x), Key::Num(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Key::Text(x), Key::Text(y)) => x.cmp(y),
        (Key::Num(_), Key::Text(_)) => Ordering::Less,
        (Key::Text(_), Key::Num(_)) => Ordering::Greater,
    }
}

fn text_of(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.to_lowercase(),
        Some(other) => other.to_string().to_lowercase(),
    }
}

fn matches(row: &JsonRow, c: &Condition, data_type: &str) -> bool {
    let v = row.get(&c.field);
    let is_empty = matches!(v, None | Some(Value::Null)) || matches!(v, Some(Value::String(s)) if s.is_empty());
    match c.op {
        8 => return is_empty,
        9 => return !is_empty,
        _ => {}
    }
    if matches!(v, None | Some(Value::Null)) {
        // SQL semantics: comparisons with NULL are unknown, hence false.
        return false;
    }
    let text = text_of(v);
    let needle = c.value.to_lowercase();
    let ord = || compare(&cell_key(v, data_type), &literal_key(&c.value, data_type));
    match c.op {
        1 => ord() == Ordering::Equal,
        2 => ord() != Ordering::Less,
        3 => ord() != Ordering::Greater,
        4 => ord() == Ordering::Greater,
        5 => ord() == Ordering::Less,
        6 | 15 => text.contains(&needle),
        7 => ord() != Ordering::Equal,
        10 => text.starts_with(&needle),
        11 => !text.contains(&needle),
        12 => !text.starts_with(&needle),
        13 => text.ends_with(&needle),
        14 => !text.ends_with(&needle),
        _ => false,
    }
}

/// The rows of `data` in the query's order, as indexes. The emulator
/// caches this per connector and order (see `EmulatorState`), because
/// keyset paging over a million rows asks for the same order a thousand
/// times and sorting each time made the emulator, not the client, the
/// bottleneck of the benchmark.
pub fn sort_order(data: &ConnectorData, order: &[(String, bool)]) -> Result<Vec<u32>, QueryError> {
    let typed: Vec<(&str, bool, String)> = order
        .iter()
        .map(|(f, d)| Ok((f.as_str(), *d, type_of(data, f)?)))
        .collect::<Result<_, QueryError>>()?;
    let mut idx: Vec<u32> = (0..data.rows.len() as u32).collect();
    if typed.is_empty() {
        return Ok(idx);
    }
    // Keys computed once per row, not once per comparison.
    let keys: Vec<Vec<Key>> = data
        .rows
        .iter()
        .map(|r| typed.iter().map(|(f, _, t)| cell_key(r.get(*f), t)).collect())
        .collect();
    idx.sort_by(|&a, &b| {
        let (ka, kb) = (&keys[a as usize], &keys[b as usize]);
        for (i, (_, desc, _)) in typed.iter().enumerate() {
            let o = compare(&ka[i], &kb[i]);
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    Ok(idx)
}

fn type_of(data: &ConnectorData, field: &str) -> Result<String, QueryError> {
    data.field_type(field)
        .map(str::to_string)
        .ok_or_else(|| QueryError(format!("Connector field '{field}' not found")))
}

/// Applies the query; unknown fields are refused with AFAS's message.
pub fn apply<'a>(data: &'a ConnectorData, q: &Query) -> Result<Vec<&'a JsonRow>, QueryError> {
    let order = sort_order(data, &q.order)?;
    apply_in_order(data, q, &order)
}

/// Applies the query to rows already in the query's order.
pub fn apply_in_order<'a>(data: &'a ConnectorData, q: &Query, order: &[u32]) -> Result<Vec<&'a JsonRow>, QueryError> {
    let filter: Vec<Vec<(&Condition, String)>> = q
        .filter
        .iter()
        .map(|g| {
            g.iter()
                .map(|c| Ok((c, type_of(data, &c.field)?)))
                .collect::<Result<Vec<_>, QueryError>>()
        })
        .collect::<Result<_, QueryError>>()?;
    let start = lower_bound(data, q, &filter, order);
    let all = q.skip == -1 && q.take == -1;
    let skip = q.skip.max(0) as usize;
    let take = q.take.max(0) as usize;
    let mut out = Vec::new();
    let mut skipped = 0;
    for &i in &order[start..] {
        if !all && out.len() >= take {
            break;
        }
        let Some(r) = data.rows.get(i as usize) else { continue };
        if !(filter.is_empty() || filter.iter().any(|g| g.iter().all(|(c, t)| matches(r, c, t)))) {
            continue;
        }
        if !all && skipped < skip {
            skipped += 1;
            continue;
        }
        out.push(r);
    }
    Ok(out)
}

/// Where matching rows can begin in `order`: when the first order field is
/// ascending and every OR group bounds it from below (`=`, `>=`, `>`, as a
/// keyset filter does), the rows before the smallest bound cannot match.
fn lower_bound(data: &ConnectorData, q: &Query, filter: &[Vec<(&Condition, String)>], order: &[u32]) -> usize {
    let Some((first, false)) = q.order.first() else {
        return 0;
    };
    if filter.is_empty() {
        return 0;
    }
    let mut bound = usize::MAX;
    for group in filter {
        let Some((c, t)) = group
            .iter()
            .find(|(c, _)| &c.field == first && matches!(c.op, 1 | 2 | 4))
        else {
            return 0;
        };
        let lit = literal_key(&c.value, t);
        let strict = c.op == 4;
        let at = order.partition_point(|&i| {
            let v = data.rows.get(i as usize).and_then(|r| r.get(first.as_str()));
            let o = compare(&cell_key(v, t), &lit);
            o == Ordering::Less || (strict && o == Ordering::Equal)
        });
        bound = bound.min(at);
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::data::FieldDef;
    use serde_json::json;

    fn data() -> ConnectorData {
        let rows = (1..=10)
            .map(|i| {
                let mut r = JsonRow::new();
                r.insert("Id".into(), json!(i));
                r.insert("Name".into(), json!(format!("N{}", i % 3)));
                r
            })
            .collect();
        ConnectorData {
            description: String::new(),
            fields: vec![
                FieldDef {
                    id: "Id".into(),
                    data_type: "int".into(),
                    label: String::new(),
                },
                FieldDef {
                    id: "Name".into(),
                    data_type: "string".into(),
                    label: String::new(),
                },
            ],
            rows,
        }
    }

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn ids(rows: &[&JsonRow]) -> Vec<i64> {
        rows.iter().map(|r| r["Id"].as_i64().unwrap_or(-1)).collect()
    }

    #[test]
    fn defaults_and_all_rows() {
        let d = data();
        let q = parse(&p(&[])).unwrap();
        assert_eq!((q.skip, q.take), (0, 100));
        assert_eq!(
            apply(&d, &parse(&p(&[("skip", "-1"), ("take", "-1")])).unwrap())
                .unwrap()
                .len(),
            10
        );
        assert!(parse(&p(&[("skip", "0"), ("take", "-1")])).is_err());
    }

    #[test]
    fn and_or_groups_and_ordering() {
        let d = data();
        // (Id > 7) OR (Name = n1 AND Id < 5), ordered by Name desc then Id.
        let q = parse(&p(&[
            ("filterfieldids", "Id;Name,Id"),
            ("filtervalues", "7;n1,5"),
            ("operatortypes", "4;1,5"),
            ("orderbyfieldids", "-Name,Id"),
            ("take", "100"),
        ]))
        .unwrap();
        assert_eq!(ids(&apply(&d, &q).unwrap()), vec![8, 1, 4, 10, 9]);
        let bad = parse(&p(&[("orderbyfieldids", "Nope")])).unwrap();
        assert_eq!(apply(&d, &bad).unwrap_err().0, "Connector field 'Nope' not found");
        assert!(parse(&p(&[
            ("filterfieldids", "Id"),
            ("filtervalues", "1"),
            ("operatortypes", "99")
        ]))
        .is_err());
        assert!(parse(&p(&[
            ("filterfieldids", "Id,Name"),
            ("filtervalues", "1"),
            ("operatortypes", "1")
        ]))
        .is_err());
    }

    /// The cached-order path with its binary-searched start and early stop
    /// must answer exactly what a plain filter, sort, skip and take does.
    #[test]
    fn keyset_fast_path_matches_a_full_scan() {
        let mut rng = crate::emulator::data::Rng::new(7);
        let mut d = data();
        d.rows = (0..400)
            .map(|_| {
                let mut r = JsonRow::new();
                match rng.next_u64() % 10 {
                    0 => r.insert("Id".into(), Value::Null),
                    _ => r.insert("Id".into(), json!(rng.next_u64() % 120)),
                };
                r.insert("Name".into(), json!(format!("n{}", rng.next_u64() % 7)));
                r
            })
            .collect();
        for round in 0..300 {
            let last_id = (rng.next_u64() % 130).to_string();
            let last_name = format!("n{}", rng.next_u64() % 8);
            let filter = crate::afas::client::keyset_filter(&["Id".into(), "Name".into()], &[last_id, last_name]);
            let mut params = p(&[("orderbyfieldids", "Id,Name"), ("skip", "0")]);
            params.push(("take".into(), (1 + rng.next_u64() % 50).to_string()));
            if round % 5 != 0 {
                params.extend(filter);
            }
            let q = parse(&params).unwrap();
            let order = sort_order(&d, &q.order).unwrap();
            let fast: Vec<*const JsonRow> = apply_in_order(&d, &q, &order)
                .unwrap()
                .into_iter()
                .map(|r| r as *const JsonRow)
                .collect();
            // The plain way: every row through the filter, then skip/take.
            let slow: Vec<*const JsonRow> = order
                .iter()
                .map(|&i| &d.rows[i as usize])
                .filter(|r| {
                    q.filter.is_empty()
                        || q.filter
                            .iter()
                            .any(|g| g.iter().all(|c| matches(r, c, d.field_type(&c.field).unwrap())))
                })
                .take(q.take as usize)
                .map(|r| r as *const JsonRow)
                .collect();
            assert_eq!(fast, slow, "round {round}");
        }
    }
}
