//! One client connection: TCP connect plus the HTTP/1.1 or HTTP/2 handshake, and sending a
//! request while draining its response.
//!
//! The connection's driver future is returned to the caller instead of being spawned, so the
//! caller can poll it in the same task as its request loop: no cross-task wake-ups per request,
//! which matters at 100k requests per second on two cores.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::plan::Protocol;

type Io = TokioIo<TcpStream>;
type Body = Full<Bytes>;

/// Sends requests on an established connection.
pub enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

/// Drives the connection's I/O; must be polled for requests to make progress.
#[allow(
    clippy::large_enum_variant,
    reason = "one per connection, pinned in place for its lifetime; boxing buys nothing"
)]
pub enum Driver {
    Http1(http1::Connection<Io, Body>),
    Http2(http2::Connection<Io, Body, TokioExecutor>),
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP connect to {addr} failed: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TCP connect to {addr} timed out")]
    Timeout { addr: SocketAddr },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// Opens a TCP connection (Nagle off) and performs the protocol handshake.
pub async fn connect(
    addr: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
) -> Result<(Sender, Driver), ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr })?
        .map_err(|source| ConnectError::Tcp { addr, source })?;
    // Latency of small requests, not throughput of large ones, is what a load test measures.
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError::Tcp { addr, source })?;
    let io = TokioIo::new(stream);
    match protocol {
        Protocol::Http1 => {
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|source| ConnectError::Handshake { addr, source })?;
            Ok((Sender::Http1(sender), Driver::Http1(conn)))
        }
        Protocol::Http2 => {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|source| ConnectError::Handshake { addr, source })?;
            Ok((Sender::Http2(sender), Driver::Http2(conn)))
        }
    }
}

impl Driver {
    /// Runs the connection until it closes (either side) or fails.
    pub async fn run(self) {
        // The outcome is seen by the requests on this connection; nothing to add here.
        let _ = match self {
            Driver::Http1(conn) => conn.await,
            Driver::Http2(conn) => conn.await,
        };
    }
}

impl Sender {
    /// Another handle on the same connection (HTTP/2 multiplexes; HTTP/1.1 cannot).
    pub fn share(&self) -> Option<Sender> {
        match self {
            Sender::Http1(_) => None,
            Sender::Http2(sender) => Some(Sender::Http2(sender.clone())),
        }
    }

    /// Whether a timed-out request leaves the connection unusable (HTTP/1.1: the response
    /// may still arrive and would be taken for the next one's).
    pub fn reusable_after_timeout(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }

    /// Waits until a request can be sent; an error means the connection is closed.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Http1(sender) => sender.ready().await,
            Sender::Http2(sender) => sender.ready().await,
        }
    }

    /// Sends `request` and reads its whole body; returns the status and the body size.
    pub async fn exchange(&mut self, request: Request<Body>) -> hyper::Result<(u16, u64)> {
        let response = match self {
            Sender::Http1(sender) => sender.send_request(request).await?,
            Sender::Http2(sender) => sender.send_request(request).await?,
        };
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                bytes += data.len() as u64;
            }
        }
        Ok((status, bytes))
    }
}
