//! cellmesh-local: a small Kubernetes-compatible cluster in one binary, so cellmesh runs
//! and is tested on one machine without Docker.
//!
//! Components are modules, each behind a subcommand of the `cellmesh-local` binary:
//! [`apiserver`] (the API server) now; controllers, the node agent and `up` follow.

pub mod apiserver;
pub mod cli;
pub mod client;
pub mod network;
pub mod up;
