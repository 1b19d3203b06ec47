//! A pass over a sink that takes many changes in one request (SCIM Bulk).
//! It goes in rounds: each round takes every waiting employee's next entry,
//! packs those that are one request each into Bulk requests within the
//! target's limits, and delivers the rest one by one — so one employee's
//! changes stay in order, and an employee whose entry must wait has its
//! later entries held back. The sink's limiter gives one slot per request.

use std::collections::VecDeque;
use std::sync::Arc;

use super::pass::{deliver_one, going, load_of, report, slot, Out, SinkPass};
use super::scim::bulk::{BulkOp, BulkPlan};
use super::DeliveryError;
use super::Job;

/// One round's work: a Bulk request, or one entry on its own.
enum Work {
    Bulk(Vec<(usize, Job, BulkOp)>),
    Alone(usize, Box<Job>),
}

pub(super) async fn rounds(
    pass: &Arc<SinkPass>,
    plan: &BulkPlan,
    chains: Vec<Vec<Job>>,
    out: &Out,
) -> Result<(), DeliveryError> {
    let mut chains: Vec<VecDeque<Job>> = chains.into_iter().map(VecDeque::from).collect();
    while going(pass) {
        let work = round(pass, plan, &mut chains);
        if work.is_empty() {
            break;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for w in work {
            let (pass, out) = (pass.clone(), out.clone());
            tasks.spawn(async move { deliver(&pass, w, &out).await });
        }
        while let Some(r) = tasks.join_next().await {
            for stopped in r.map_err(|e| DeliveryError::Task(e.to_string()))? {
                // Its next entries wait for this one.
                if let Some(c) = chains.get_mut(stopped) {
                    c.clear();
                }
            }
        }
    }
    Ok(())
}

/// Every employee's next entry, packed.
fn round(pass: &SinkPass, plan: &BulkPlan, chains: &mut [VecDeque<Job>]) -> Vec<Work> {
    let Some(scim) = pass.sink.as_scim() else {
        return Vec::new();
    };
    let mut work = Vec::new();
    let mut batch: Vec<(usize, Job, BulkOp)> = Vec::new();
    let mut bytes = 0;
    // Room for the request's own framing.
    let room = plan.max_payload.saturating_mul(9) / 10;
    for (i, chain) in chains.iter_mut().enumerate() {
        let Some(job) = chain.pop_front() else { continue };
        match scim.bulk_op(plan, &job) {
            Some(op) => {
                if !batch.is_empty() && (batch.len() >= plan.max_operations || bytes + op.size > room) {
                    work.push(Work::Bulk(std::mem::take(&mut batch)));
                    bytes = 0;
                }
                bytes += op.size;
                batch.push((i, job, op));
            }
            None => work.push(Work::Alone(i, Box::new(job))),
        }
    }
    if !batch.is_empty() {
        work.push(Work::Bulk(batch));
    }
    work
}

/// Delivers one piece of a round; the employees whose next entries must
/// wait.
async fn deliver(pass: &SinkPass, work: Work, out: &Out) -> Vec<usize> {
    let mut stopped = Vec::new();
    match work {
        // As in a pass without Bulk: a short 429 is tried again in the pass.
        Work::Alone(i, job) => {
            if !deliver_one(pass, *job, out).await {
                stopped.push(i);
            }
        }
        Work::Bulk(batch) => {
            let Some(permit) = slot(pass).await else {
                // The pass stops: nothing of this piece was sent.
                return batch.into_iter().map(|(i, ..)| i).collect();
            };
            let Some(scim) = pass.sink.as_scim() else {
                return batch.into_iter().map(|(i, ..)| i).collect();
            };
            let index: Vec<(u64, usize)> = batch.iter().map(|(i, job, _)| (job.seq, *i)).collect();
            let pairs = batch.into_iter().map(|(_, job, op)| (job, op)).collect();
            let mut stop = pass.stop.clone();
            let results = tokio::select! {
                r = scim.send_bulk(pairs) => r,
                // Requests in flight are dropped; the entries stay pending.
                _ = stop.wait_for(|s| *s) => return index.into_iter().map(|(_, i)| i).collect(),
            };
            let took = permit.elapsed();
            let load = results
                .iter()
                .map(|(_, r, _)| load_of(r, took))
                .max_by_key(super::limit::Load::weight)
                .unwrap_or(super::limit::Load::Unknown);
            permit.done(load);
            for (job, r, steps) in results {
                let i = index.iter().find(|(seq, _)| *seq == job.seq).map(|(_, i)| *i);
                if !report(pass, job, r, steps, out) {
                    stopped.extend(i);
                }
            }
        }
    }
    stopped
}
