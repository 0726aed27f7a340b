//! cellmesh's operator.
//!
//! - [`run`]: `cellmesh-operator run`, the controllers ([`controller`]) for WorkModels, Apps
//!   and Profiles, with leader election and the health/metrics endpoints ([`telemetry`]).
//! - The reconcile pipeline's steps, each its own module: [`validate`] (pure checks),
//!   [`build`] (pure desired objects), [`apply`] (server-side apply and the orphan sweep, reading
//!   the slim watch caches of [`cache`]) and
//!   [`status`] (pure conditions).
//! - Vertical scaling: [`guardian`] (the pure decision loop), [`usage`] (Prometheus),
//!   [`scaler`] (`pods/resize` patches and their outcome) and [`scaling`] (the
//!   ScalingPolicy controller).
//! - [`timeline`] and [`timeline_render`]: `cellmesh-operator timeline`, a container's CPU,
//!   limit, scaling actions and p99 latency from Prometheus as an SVG.
//! - [`crdgen`] (the CRD manifests from the Rust types) and [`import`] (µBench workmodel
//!   files → `WorkModel` resources).

pub mod apply;
pub mod build;
pub mod cache;
pub mod controller;
pub mod crdgen;
pub mod guardian;
pub mod import;
pub mod run;
pub mod scaler;
pub mod scaling;
pub mod scaling_clock;
pub mod status;
pub mod telemetry;
pub mod timeline;
pub mod timeline_render;
pub mod usage;
pub mod validate;
