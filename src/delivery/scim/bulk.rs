//! SCIM Bulk (RFC 7644 §3.7): where the target announces `bulk.supported`
//! (and `sink.scim.bulk` is on), the changes that are one request each — a
//! create of an employee the listing lacks, a PATCH of a user whose id
//! (and, with ETags, version) is known — travel many to a request, within
//! the target's `maxOperations` and `maxPayloadSize`. Each operation's
//! status is mapped back to its job; one that the single path would handle
//! further (404, 409, 412) is delivered on its own, and any other failure
//! is what its single request's would be.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::Method;
use serde_json::{json, Value};

use super::known::Known;
use super::{Answer, Delivered, Ready, ScimSink, PATCH_URN};
use crate::config::Deprovision;
use crate::delivery::traced;
use crate::delivery::{Job, SinkError};
use crate::model::{MutationKind, Step};
use crate::store::TargetUser;

const BULK_REQUEST_URN: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";

/// The target's Bulk limits, and the target as discovered.
pub struct BulkPlan {
    pub max_operations: usize,
    pub max_payload: usize,
    ready: Arc<Ready>,
}

/// One job's request inside a Bulk request.
pub struct BulkOp {
    method: &'static str,
    path: String,
    version: Option<String>,
    data: Value,
    key: String,
    id: Option<String>,
    /// Its bytes in the request, for `maxPayloadSize`.
    pub size: usize,
}

impl ScimSink {
    /// The target's Bulk limits, when changes may travel in Bulk requests.
    pub async fn bulk_plan(&self) -> Option<BulkPlan> {
        if !self.bulk {
            return None;
        }
        let ready = self.ready().await.ok()?;
        let caps = ready.target.caps;
        if caps.bulk_max_operations < 2 {
            return None;
        }
        Some(BulkPlan {
            max_operations: caps.bulk_max_operations as usize,
            // A server that names no payload limit gets RFC 7644's example.
            max_payload: match caps.bulk_max_payload {
                0 => 1 << 20,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            },
            ready,
        })
    }

    /// The one request `job` needs, when it can travel in a Bulk request.
    pub fn bulk_op(&self, plan: &BulkPlan, job: &Job) -> Option<BulkOp> {
        let m = job.mutation.as_ref()?;
        let e = m.employee.as_ref()?;
        let ready = &plan.ready;
        let key = m.key.as_str();
        let user_name = self.user_name_of(e);
        let (method, path, version, data, id) = match m.kind {
            MutationKind::Joiner | MutationKind::Rehire => match self.known(key) {
                Known::Absent if job.target.is_none() && !self.listed_match(e) => (
                    "POST",
                    "/Users".to_string(),
                    None,
                    ready.mapping.user(e, true, &user_name),
                    None,
                ),
                _ => return None,
            },
            MutationKind::Mover | MutationKind::Leaver => {
                if self.put_mode(ready) || (m.kind == MutationKind::Leaver && self.deprovision == Deprovision::Delete) {
                    return None;
                }
                let (id, version) = match (&job.target, self.known(key)) {
                    (Some(t), _) => (t.id.clone(), self.known_version(&t.id).or_else(|| t.version.clone())),
                    (None, Known::At(f)) => (f.id, f.version),
                    (None, _) => return None,
                };
                if ready.target.caps.etag && version.is_none() {
                    return None;
                }
                let (_, ops) = self.update_of(ready, m, e, &user_name, false);
                if ops.is_empty() {
                    return None;
                }
                let body = json!({"schemas": [PATCH_URN], "Operations": ops});
                ("PATCH", format!("/Users/{id}"), version, body, Some(id))
            }
        };
        let size = data.to_string().len() + path.len() + 96;
        Some(BulkOp {
            method,
            path,
            version: version.filter(|_| ready.target.caps.etag),
            data,
            key: key.to_string(),
            id,
            size,
        })
    }

    /// Sends the operations as one Bulk request; each job's outcome.
    pub async fn send_bulk(&self, batch: Vec<(Job, BulkOp)>) -> Vec<Outcome> {
        let mut operations = Vec::with_capacity(batch.len());
        for (i, (_, op)) in batch.iter().enumerate() {
            if op.method == "POST" {
                self.trying_to_create(&op.key);
            }
            let mut o = json!({"method": op.method, "path": op.path, "bulkId": format!("op{i}"), "data": op.data});
            if let (Some(v), Some(map)) = (&op.version, o.as_object_mut()) {
                map.insert("version".into(), Value::from(v.as_str()));
            }
            operations.push(o);
        }
        let body = json!({"schemas": [BULK_REQUEST_URN], "Operations": operations});
        let (answer, steps) = traced(self.send(Method::POST, self.url(&["Bulk"]), Some(&body), None)).await;
        let a = match answer {
            Ok(a) if a.status == 200 => a,
            Ok(a) if matches!(a.status, 401 | 403 | 408 | 429 | 500..=599) => {
                let e = self.failure(&a, "bulk");
                return batch
                    .into_iter()
                    .map(|(job, _)| (job, Err(e.clone()), steps.clone()))
                    .collect();
            }
            // Too large, not understood after all: each on its own.
            Ok(_) => return self.each_alone(batch).await,
            Err(e) => {
                return batch
                    .into_iter()
                    .map(|(job, _)| (job, Err(e.clone()), steps.clone()))
                    .collect()
            }
        };
        let results = a
            .body
            .get("Operations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let by_id: HashMap<&str, &Value> = results
            .iter()
            .filter_map(|r| Some((r.get("bulkId")?.as_str()?, r)))
            .collect();
        let mut out = Vec::with_capacity(batch.len());
        let mut alone = Vec::new();
        for (i, (job, op)) in batch.into_iter().enumerate() {
            let bulk_id = format!("op{i}");
            let Some(r) = by_id.get(bulk_id.as_str()).copied().or_else(|| results.get(i)) else {
                alone.push((job, op));
                continue;
            };
            let status = match r.get("status") {
                Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
                Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
                _ => 0,
            };
            match status {
                200 | 201 | 204 => {
                    let version = r.get("version").and_then(Value::as_str).map(str::to_string);
                    let id = op.id.clone().or_else(|| {
                        let location = r.get("location").and_then(Value::as_str)?;
                        location
                            .rsplit('/')
                            .next()
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                    });
                    match id {
                        Some(id) => {
                            self.remember(Some(&op.key), &id, version.as_deref());
                            let step = bulk_step(&op, status, None);
                            out.push((job, Ok(Some(TargetUser { id, version })), vec![step]));
                        }
                        // Created without saying where: the single path
                        // looks it up.
                        None => alone.push((job, op)),
                    }
                }
                // What the single path resolves: a user gone, a value
                // taken, a stale version.
                404 | 409 | 412 | 0 => alone.push((job, op)),
                // A PATCH the target could not apply: the single path
                // falls back to PUT.
                500 | 501 if op.method == "PATCH" => alone.push((job, op)),
                _ => {
                    let answer = Answer {
                        status,
                        body: r.get("response").cloned().unwrap_or(Value::Null),
                        retry_after: None,
                        version: None,
                    };
                    let what = if op.method == "POST" {
                        "bulk create"
                    } else {
                        "bulk patch"
                    };
                    let step = bulk_step(&op, status, Some(&answer.body));
                    out.push((job, Err(self.refused(&answer, what).await), vec![step]));
                }
            }
        }
        out.extend(self.each_alone(alone).await);
        out
    }

    async fn each_alone(&self, batch: Vec<(Job, BulkOp)>) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(batch.len());
        for (job, op) in batch {
            if let Some(id) = &op.id {
                // A 404 or 412 inside the Bulk request: what was known of
                // the user is stale.
                self.forget_version(id);
            }
            let (r, steps) = traced(self.deliver(&job)).await;
            out.push((job, r, steps));
        }
        out
    }
}

/// One job's outcome in a Bulk request, with the requests it took.
pub type Outcome = (Job, Result<Delivered, SinkError>, Vec<Step>);

/// An operation inside a Bulk request, as its attempt shows it.
fn bulk_step(op: &BulkOp, status: u16, response: Option<&Value>) -> Step {
    let text = |k: &str| {
        response
            .and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .map(|t| crate::model::printable(t, 300))
    };
    Step {
        op: format!("POST /Bulk: {} {}", op.method, op.path),
        status: Some(status),
        scim_type: text("scimType"),
        detail: text("detail"),
    }
}
