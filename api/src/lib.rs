//! cellmesh's schemas, one source of truth: the cell's service spec (µBench's workmodel
//! format, camelCase with µBench's snake_case keys accepted), the Profile and App pipeline
//! specs, and (with the operator issue) the CRD types. This crate does no I/O.

pub mod mubench;
pub mod pipeline;
pub mod profile;
pub mod service;
