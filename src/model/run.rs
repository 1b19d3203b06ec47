//! A run as it is recorded: when, as of which day, its outcome and counts.

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::{Plan, SourceStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Mutations were committed.
    Success,
    /// Nothing changed.
    NothingToDo,
    /// A guard tripped; the plan waits for approval.
    Held,
    /// The held plan was rejected by an operator.
    Rejected,
    /// Fetching or committing failed; nothing changed.
    Failed,
    /// One employee's change, committed on demand (`sync --employee`):
    /// not a whole run, so it is no run's success, baseline or slot.
    OnDemand,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::NothingToDo => "nothing-to-do",
            Outcome::Held => "held",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
            Outcome::OnDemand => "on-demand",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: u64,
    pub started_at: String,
    pub finished_at: String,
    pub as_of: Date,
    pub outcome: Outcome,
    /// Why it failed or was held; empty on success.
    pub message: String,
    pub joiners: u64,
    pub movers: u64,
    pub leavers: u64,
    pub rehires: u64,
    pub source: SourceStats,
    pub snapshot_digest: u64,
}

impl RunRecord {
    pub fn new(id: u64, as_of: Date) -> Self {
        RunRecord {
            id,
            started_at: now(),
            finished_at: String::new(),
            as_of,
            outcome: Outcome::Failed,
            message: String::new(),
            joiners: 0,
            movers: 0,
            leavers: 0,
            rehires: 0,
            source: SourceStats::default(),
            snapshot_digest: 0,
        }
    }

    pub fn fill_counts(&mut self, plan: &Plan) {
        use super::MutationKind::*;
        self.joiners = plan.count(Joiner);
        self.movers = plan.count(Mover);
        self.leavers = plan.count(Leaver);
        self.rehires = plan.count(Rehire);
        self.source = plan.source.clone();
    }
}

pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}
