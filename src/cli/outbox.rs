//! `afas-sync outbox …`: what waits or is dead, why, and queueing it again.

use clap::{Subcommand, ValueEnum};

use crate::app::Request;
use crate::model::{Reason, SinkKind};
use crate::store::{EntryFilter, EntryState};

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// The entries waiting or dead: first the reasons with their counts,
    /// then the entries (sequence, employee, change, attempts, last answer,
    /// next attempt).
    List {
        #[command(flatten)]
        filter: Filter,
        /// Entries listed at most (the counts are always complete).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One entry's whole story: the change, and every attempt with the
    /// requests it made and the target's answers.
    Show { seq: u64 },
    /// Queue dead-lettered entries again and make waiting ones due now
    /// (all, or those the filters name).
    Retry {
        #[command(flatten)]
        filter: Filter,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum State {
    Pending,
    Dead,
    Stopped,
}

#[derive(Debug, clap::Args)]
pub struct Filter {
    #[arg(long, value_parser = SinkKind::NAMES)]
    sink: Option<String>,
    /// pending: waiting for delivery; dead: dead-lettered; stopped: waiting
    /// while their sink is stopped.
    #[arg(long, value_enum)]
    state: Option<State>,
    /// A reason class, as `outbox list` shows them (e.g. uniqueness,
    /// conflict-foreign-holder, unreachable).
    #[arg(long, value_parser = reason)]
    reason: Option<Reason>,
}

fn reason(s: &str) -> Result<Reason, String> {
    Reason::parse(s).ok_or_else(|| {
        let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        format!("not a reason class; one of: {}", all.join(", "))
    })
}

impl Filter {
    fn entries(&self) -> EntryFilter {
        EntryFilter {
            sink: self.sink.clone(),
            state: self.state.map(|s| match s {
                State::Pending => EntryState::Pending,
                State::Dead => EntryState::Dead,
                State::Stopped => EntryState::Stopped,
            }),
            reason: self.reason,
        }
    }
}

impl OutboxAction {
    pub fn request(&self) -> Request {
        match self {
            OutboxAction::List { filter, limit } => Request::OutboxList {
                filter: filter.entries(),
                limit: *limit,
            },
            OutboxAction::Show { seq } => Request::OutboxShow { seq: *seq },
            OutboxAction::Retry { filter } => Request::OutboxRetry {
                filter: filter.entries(),
            },
        }
    }
}
