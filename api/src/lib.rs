//! cellmesh's schemas, one source of truth: the cell's service spec (µBench's workmodel
//! format, camelCase with µBench's snake_case keys accepted), the engine's Profile and
//! pipeline, and the custom resources built from them ([`crd`]).
//! This crate does no I/O.

pub mod crd;
pub mod mubench;
pub mod pipeline;
pub mod profile;
pub mod quantity;
pub mod service;
