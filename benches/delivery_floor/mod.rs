//! The delivery benchmark's floor: the very requests the sync sent,
//! replayed by a plain HTTP client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{peers, start_proxy, Logged, Proxy, Setting};

pub struct Floor {
    pub took: Duration,
    /// How many the plain client sent at once (0: not replayed).
    pub at_once: usize,
    /// Requests the target did not answer 2xx (or a Bulk operation not 2xx).
    pub failed: usize,
}

/// The floor at `at_once`: a fresh server for creates; the same one for
/// updates.
pub async fn floor(proxy: &Proxy, s: &Setting, replayed: &[Logged], at_once: usize, fresh: bool) -> Floor {
    let mut fresh = if fresh {
        Some(peers::ScimPeer::start().await)
    } else {
        None
    };
    let target = fresh.as_ref().map_or_else(|| proxy.target.clone(), |p| p.url());
    let floor_proxy = start_proxy(target, s.rtt, s.limit).await;
    let (took, failed) = replay(&floor_proxy.url(), replayed, at_once).await;
    if let Some(p) = fresh.as_mut() {
        p.stop().await;
    }
    Floor { took, at_once, failed }
}

/// The floor: the same requests from a plain client, `concurrency` at once.
/// Also how many were not answered 2xx, for a floor of failed requests is
/// no floor.
async fn replay(proxy_url: &str, requests: &[Logged], concurrency: usize) -> (Duration, usize) {
    let client = reqwest::Client::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for r in requests {
        let (client, slots, r, base) = (client.clone(), slots.clone(), r.clone(), proxy_url.to_string());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let answer = client
                .request(r.method.parse().expect("method"), format!("{base}{}", r.path_q))
                .bearer_auth(peers::SCIM_TOKEN)
                .header("content-type", "application/scim+json")
                .body(r.body.clone())
                .send()
                .await;
            match answer {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    let body = resp.bytes().await.unwrap_or_default();
                    ok && bulk_all_ok(&body)
                }
                Err(_) => false,
            }
        });
    }
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        if !matches!(done, Ok(true)) {
            failed += 1;
        }
    }
    (started.elapsed(), failed)
}

/// A Bulk request's body without each operation's `version` (its
/// If-Match): the replay, like a single request's, must not be refused for
/// a version the sync itself moved on. Other bodies as they are.
pub fn without_versions(body: &bytes::Bytes) -> bytes::Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.clone();
    };
    let Some(ops) = v.get_mut("Operations").and_then(|o| o.as_array_mut()) else {
        return body.clone();
    };
    for op in ops.iter_mut().filter_map(|op| op.as_object_mut()) {
        op.remove("version");
    }
    serde_json::to_vec(&v).map(Into::into).unwrap_or_else(|_| body.clone())
}

/// A Bulk answer is 200 with a status per operation: all of them 2xx?
/// (Any other answer has no operations, so it passes here.)
fn bulk_all_ok(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return true;
    };
    let ops = v
        .get("Operations")
        .and_then(|o| o.as_array())
        .cloned()
        .unwrap_or_default();
    ops.iter().all(|op| {
        op.get("status")
            .and_then(|s| {
                s.as_str()
                    .map(str::to_string)
                    .or_else(|| s.as_u64().map(|n| n.to_string()))
            })
            .is_some_and(|s| s.starts_with('2'))
    })
}
