//! The cellmesh cell as a library: the transport-free engine (and, with the cell's HTTP and
//! gRPC layers, the rest of the worker), so integration tests and the binary share it.

pub mod engine;
