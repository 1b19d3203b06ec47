//! What a delivery attempt met at a target, in words an admin can act on:
//! the requests it made with the answers, and a fixed reason class.

use serde::{Deserialize, Serialize};

/// One request of an attempt and what the target answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Method and path, e.g. `PATCH /Users/2819c223`; never the query (a
    /// lookup's filter carries an e-mail address).
    pub op: String,
    /// None: no answer (the connection failed or timed out).
    pub status: Option<u16>,
    pub scim_type: Option<String>,
    pub detail: Option<String>,
}

/// Why a delivery did not go through, as a fixed class (a metric label,
/// a filter): never the target's own text. Stored by variant index
/// (bincode), so new classes go at the end; named in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reason {
    /// The target refused the credentials (401, 403, the token endpoint).
    #[serde(rename = "auth")]
    Auth,
    /// 429.
    #[serde(rename = "throttled")]
    Throttled,
    /// 503, 408, a timeout.
    #[serde(rename = "busy")]
    Busy,
    /// No answer: the connection failed.
    #[serde(rename = "unreachable")]
    Unreachable,
    /// A server error (5xx).
    #[serde(rename = "target-error")]
    TargetError,
    /// 409: a value the target keeps unique is taken.
    #[serde(rename = "uniqueness")]
    Uniqueness,
    /// The user that holds the employee's userName or address is one
    /// afas-sync did not create (and may not take over).
    #[serde(rename = "conflict-foreign-holder")]
    ForeignHolder,
    /// Two employees in AFAS share an address.
    #[serde(rename = "conflict-shared-address")]
    SharedAddress,
    /// The target holds several users that match one employee.
    #[serde(rename = "conflict-duplicates")]
    Duplicates,
    /// The target refused an attribute as afas-sync maps it (400 with
    /// `invalidValue`, `invalidPath`, `noTarget`, `mutability`, …).
    #[serde(rename = "mapping")]
    Mapping,
    /// Any other refusal (4xx).
    #[serde(rename = "target-refused")]
    Refused,
    /// afas-sync could not do its part (its state file, a task).
    #[serde(rename = "local")]
    Local,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Auth,
        Reason::Throttled,
        Reason::Busy,
        Reason::Unreachable,
        Reason::TargetError,
        Reason::Uniqueness,
        Reason::ForeignHolder,
        Reason::SharedAddress,
        Reason::Duplicates,
        Reason::Mapping,
        Reason::Refused,
        Reason::Local,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Auth => "auth",
            Reason::Throttled => "throttled",
            Reason::Busy => "busy",
            Reason::Unreachable => "unreachable",
            Reason::TargetError => "target-error",
            Reason::Uniqueness => "uniqueness",
            Reason::ForeignHolder => "conflict-foreign-holder",
            Reason::SharedAddress => "conflict-shared-address",
            Reason::Duplicates => "conflict-duplicates",
            Reason::Mapping => "mapping",
            Reason::Refused => "target-refused",
            Reason::Local => "local",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// What it means and what to do, in one line.
    pub fn explain(self) -> &'static str {
        match self {
            Reason::Auth => "the target refuses the credentials: check the token or OAuth client (`afas-sync check`)",
            Reason::Throttled => "the target asked for fewer requests (429): afas-sync slows down and tries again",
            Reason::Busy => "the target was busy or slow (503, timeout): tried again soon",
            Reason::Unreachable => "the target could not be reached: check the network and sink URL; tried again",
            Reason::TargetError => "the target failed with a server error (5xx): tried again; if it stays, ask its operator",
            Reason::Uniqueness => {
                "409 uniqueness: a value the target keeps unique (userName, e-mail) is taken by another user there"
            }
            Reason::ForeignHolder => {
                "the userName is held by a target user afas-sync did not create: take it over (sink.scim.adopt) \
                 or free it there, then `afas-sync outbox retry`"
            }
            Reason::SharedAddress => "two employees in AFAS share this address: correct one of them in AFAS",
            Reason::Duplicates => {
                "the target holds several users for one employee: remove the duplicates there, then `afas-sync outbox retry`"
            }
            Reason::Mapping => {
                "the target refused an attribute as afas-sync sends it: see `afas-sync check` and [sink.scim.attributes], \
                 or the value in AFAS"
            }
            Reason::Refused => "the target refused the change: its answer is in `afas-sync outbox show SEQ`",
            Reason::Local => "afas-sync could not do its part (state file, disk): see the log",
        }
    }
}

/// One delivery attempt of an outbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix seconds.
    pub at: i64,
    pub reason: Reason,
    /// afas-sync's own words, as in the entry's last error.
    pub message: String,
    /// The requests it made, in order (the last few).
    pub steps: Vec<Step>,
}

/// The last change delivered for an employee to one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDelivery {
    /// Unix seconds.
    pub at: i64,
    pub run: u64,
    pub index: u32,
    /// The requests that delivered it (answers only, no detail).
    pub steps: Vec<Step>,
}

/// Attempts kept per entry, and requests per attempt.
pub const ATTEMPTS_KEPT: usize = 5;
pub const STEPS_KEPT: usize = 8;
