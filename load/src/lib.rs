//! `cellmesh-load`: an HTTP load generator with HDR latency reports.
//!
//! * Closed loop (`--connections N`): every stream sends its next request when the previous
//!   response has been read, as wrk does.
//! * Open loop (`--rate R`): requests are due at a constant total rate, wrk2-style, and
//!   latency is measured from the due time, which corrects for coordinated omission.
//!
//! HTTP/1.1 keep-alive or HTTP/2 (h2c, several streams per connection). Each connection is one
//! tokio task that polls its own hyper connection, so there is no pool lookup and no cross-task
//! hand-off per request. The library is what the binary and the tests drive:
//! [`cli::Args`] → [`plan::Plan`] → [`engine::run`] → [`report::Report`].

pub mod cli;
pub mod conn;
pub mod engine;
pub mod plan;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod stats;

pub use engine::run;
pub use plan::Plan;
pub use report::Report;
