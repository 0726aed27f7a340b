//! cellmesh-local: a small Kubernetes-compatible cluster in one binary, so cellmesh runs
//! and is tested on one machine without Docker.
//!
//! One process hosts the components: [`apiserver`] (the Kubernetes-compatible API server),
//! [`controllers`] (garbage collection, namespaces, Deployments, Endpoints; `--controllers`),
//! [`node`] (the node agent running pods as processes; `--node`) and [`network`] (ClusterIP
//! proxy, cluster DNS and Prometheus discovery; `--network`). [`up`] runs that process in
//! the background with everything on, plus Prometheus (`up`/`down`/`status`).

pub mod apiserver;
pub mod cli;
pub mod client;
pub mod controllers;
pub mod network;
pub mod node;
pub mod up;
