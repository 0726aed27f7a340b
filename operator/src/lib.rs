//! cellmesh's operator. This session's parts: [`crdgen`] (the CRD manifests from the Rust
//! types) and [`import`] (µBench workmodel files → `WorkModel` resources). The controllers
//! (`cellmesh-operator run`) come next.

pub mod crdgen;
pub mod guardian;
pub mod import;
pub mod scaler;
pub mod scaling;
pub mod usage;
