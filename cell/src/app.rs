//! State shared by the REST, gRPC and admin servers of one cell process.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::service::ServiceCell;

/// Where the servers listen, known once they are bound.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Addresses {
    /// REST (and `/metrics`).
    pub rest: SocketAddr,
    /// gRPC.
    pub grpc: SocketAddr,
    /// Admin: `/metrics`, `/live`, `/ready`, `/info`.
    pub admin: SocketAddr,
}

/// One cell process: the service and its lifecycle.
#[derive(Debug)]
pub struct App {
    /// The service.
    pub cell: ServiceCell,
    ready: AtomicBool,
    started: Instant,
    addresses: OnceLock<Addresses>,
}

impl App {
    /// A cell that is not ready yet.
    pub fn new(cell: ServiceCell) -> Self {
        Self {
            cell,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            addresses: OnceLock::new(),
        }
    }

    /// Marks the servers as bound and the cell ready.
    pub fn set_ready(&self, addresses: Addresses) {
        let _ = self.addresses.set(addresses);
        self.ready.store(true, Ordering::Release);
    }

    /// Marks the cell as draining: not ready, no new admissions.
    pub fn drain(&self) {
        self.ready.store(false, Ordering::Release);
        self.cell.close();
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The `/info` document: identity, admission state, downstreams, addresses.
    pub fn info(&self) -> serde_json::Value {
        let spec = self.cell.spec();
        let downstreams: serde_json::Map<String, serde_json::Value> = self
            .cell
            .downstreams()
            .map(|(name, target)| (name.to_owned(), target.into()))
            .collect();
        serde_json::json!({
            "service": self.cell.name(),
            "version": env!("CARGO_PKG_VERSION"),
            "ready": self.is_ready(),
            "uptimeSeconds": self.started.elapsed().as_secs_f64(),
            "requestMethod": spec.request_method.to_string(),
            "path": spec.path(),
            "workers": spec.workers(),
            "threads": spec.threads(),
            "capacity": self.cell.capacity(),
            "inFlight": self.cell.in_flight(),
            "listen": self.addresses.get(),
            "downstreams": downstreams,
        })
    }
}
