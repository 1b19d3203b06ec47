//! The shared vocabulary: employees, contracts, days, decimals, runs,
//! mutations and plans. No I/O, no wire format, no configuration: every
//! other room imports this one, and it imports none of them.

pub mod attempt;
pub mod day;
mod decimal;
mod employee;
pub mod plan;
pub mod run;
mod secret;

pub use attempt::{Attempt, LastDelivery, Reason, Step};
pub use decimal::Decimal;
pub use employee::*;
pub use plan::{
    Change, Guards, Mutation, MutationKind, Plan, Provisioned, ProvisionedHead, Rules, SourceStats, Status, Write,
};
pub use run::{Outcome, RunRecord};
pub use secret::Secret;
