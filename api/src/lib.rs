//! cellmesh's schemas, one source of truth: the cell's service spec (µBench's workmodel
//! format, camelCase with µBench's snake_case keys accepted) and, later, the CRD types.
//! This crate does no I/O.

pub mod mubench;
pub mod service;
pub mod pipeline;
pub mod profile;
