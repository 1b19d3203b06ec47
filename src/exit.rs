//! Process exit codes, stable for scripts and monitoring.

/// Success: the command did what it was asked.
pub const OK: i32 = 0;
/// Failure at run time (AFAS unreachable, a check failed, …).
pub const FAILURE: i32 = 1;
/// Bad configuration or command-line usage: fix the input and retry.
pub const CONFIG: i32 = 2;
/// A guard tripped: the run's plan is held for `afas-sync plan approve`
/// (or unmanaged users wait for `afas-sync unmanaged --deactivate N`).
pub const HELD: i32 = 3;
/// The sync ran and found nothing to change.
pub const NOTHING_TO_DO: i32 = 4;
/// The sync committed, but the outbox could not be delivered completely
/// (the target is down, or entries were dead-lettered); see `status`.
pub const DELIVERY_INCOMPLETE: i32 = 5;
