pub mod control;
pub mod schedule;
