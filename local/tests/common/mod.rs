//! Test harness: the real `cellmesh-local apiserver` on a random loopback address with its
//! own state directory, driven with the real `kubectl` (see `cellmesh-testkit`).

pub use cellmesh_testkit::ApiServer as Server;
#[allow(unused_imports)] // Not every test binary polls.
pub use cellmesh_testkit::eventually;
