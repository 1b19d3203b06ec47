//! The requests one delivery makes, noted as they are answered, so that
//! its attempt can say what the target said; and the reason class of a
//! failed delivery.

use std::cell::RefCell;
use std::future::Future;

use super::SinkError;
use crate::model::attempt::STEPS_KEPT;
use crate::model::{Reason, SinkKind, Step};

tokio::task_local! {
    static TRAIL: RefCell<Vec<Step>>;
}

/// Runs one delivery, noting its requests.
pub async fn traced<F: Future>(f: F) -> (F::Output, Vec<Step>) {
    TRAIL
        .scope(RefCell::new(Vec::new()), async move {
            let out = f.await;
            (out, TRAIL.with(RefCell::take))
        })
        .await
}

/// Notes one request and its answer (nothing outside [`traced`]).
pub(crate) fn note(op: String, status: Option<u16>, scim_type: Option<&str>, detail: Option<&str>) {
    let failed = status.is_none_or(|s| s >= 400);
    let text = |t: Option<&str>| {
        t.filter(|_| failed)
            .map(|t| crate::model::printable(t, 300))
            .filter(|t| !t.is_empty())
    };
    let step = Step {
        op,
        status,
        scim_type: text(scim_type),
        detail: text(detail),
    };
    let _ = TRAIL.try_with(|t| {
        let mut t = t.borrow_mut();
        if t.len() >= STEPS_KEPT {
            t.remove(0);
        }
        t.push(step);
    });
}

/// scimTypes (RFC 7644 §3.12) that say the target did not take an
/// attribute as it was sent.
const MAPPING: [&str; 5] = ["invalidValue", "invalidPath", "noTarget", "mutability", "invalidSyntax"];

/// The fixed class of a failed delivery, from its error and the last
/// answer it met.
pub fn reason_of(e: &SinkError, steps: &[Step], sink: &str) -> Reason {
    let local_sink = sink == SinkKind::Files.name();
    let failed = steps.iter().rev().find(|s| s.status.is_none_or(|c| c >= 400));
    let status = failed.and_then(|s| s.status);
    let scim_type = failed.and_then(|s| s.scim_type.as_deref());
    match e {
        SinkError::Down { .. } => Reason::Auth,
        SinkError::Throttled { .. } => Reason::Throttled,
        SinkError::Busy { .. } => Reason::Busy,
        SinkError::Conflict { class, .. } => *class,
        SinkError::Retry { .. } if local_sink => Reason::Local,
        SinkError::Retry { .. } => match (failed, status) {
            // Nothing answered: the target or its token endpoint.
            (None, _) if steps.is_empty() => Reason::Unreachable,
            (Some(_), None) => Reason::Unreachable,
            (_, Some(425 | 500..=599)) => Reason::TargetError,
            // Answered, and then afas-sync could not go on.
            _ => Reason::Local,
        },
        SinkError::Permanent { .. } => match (status, scim_type) {
            // Only SCIM keeps values unique; a webhook's 409 is its own.
            (Some(409), _) | (_, Some("uniqueness")) if sink == SinkKind::Scim.name() => Reason::Uniqueness,
            (_, Some(t)) if MAPPING.contains(&t) => Reason::Mapping,
            (Some(500..=599), _) => Reason::TargetError,
            _ => Reason::Refused,
        },
    }
}
