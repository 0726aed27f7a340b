//! cellmesh-local: a small Kubernetes-compatible cluster in one binary, so cellmesh runs
//! and is tested on one machine without Docker.
//!
//! Components are modules: [`apiserver`] (the `apiserver` subcommand), [`network`]
//! (ClusterIP proxy, cluster DNS and Prometheus discovery; `apiserver --network`), and
//! [`up`] (`up`/`down`/`status`: the whole cluster in the background).

pub mod apiserver;
pub mod cli;
pub mod client;
pub mod network;
pub mod up;
