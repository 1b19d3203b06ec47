//! afas-sync: AFAS Profit employees → Alleo (SCIM 2.0), webhooks and files.
//!
//! The data path reads left to right: `afas` fetches rows, the sync core
//! normalizes and diffs them, `store` commits, delivery sends. `emulator` is
//! the AFAS stand-in used by the demo, the tests and the benchmarks.

pub mod afas;
pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod emulator;
pub mod exit;
#[doc(hidden)]
pub mod fault;
pub mod fields;
pub mod http;
pub mod metrics;
pub mod model;
pub mod net;
pub mod oauth;
pub mod progress;
pub mod store;
pub mod sync;
