//! `cellmesh-cell`: a fast, µBench-compatible service cell.
//!
//! Layers, from the outside in: [`server`] (process wiring, signals) → transports [`http`]
//! (axum), [`grpc`] (tonic) and [`admin`] → [`service`] (transport-free request handling:
//! admission, internal function, downstream calls) → [`plan`], [`trace`], [`functions`],
//! [`downstream`], [`metrics`].
//!
//! [`engine`] is the Cocaine/mpservice-style engine (Profiles, elastic worker pools,
//! admission with deadlines, pipelines, drain): every request of [`service`] (a workmodel
//! service) or of an App's pipeline ([`app::PipelineCell`]) goes through it.

pub mod admin;
pub mod app;
pub mod cli;
pub mod downstream;
pub mod engine;
pub mod functions;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod proto;
pub mod server;
pub mod service;
pub mod trace;
