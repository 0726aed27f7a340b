//! The throughput ceiling for `cargo xtask bench cell`: the barest hyper server that still
//! answers like a cell would on the trivial workmodel — any path, a fixed 10-byte
//! `text/plain` body, HTTP/1.1 keep-alive (and h2c), a multi-thread tokio runtime.
//!
//! ```sh
//! cargo run --release -p cellmesh-load --example hello -- --listen 127.0.0.1:8000
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// µBench's trivial compute_pi answers with about 10 bytes; so does this.
const BODY: &[u8] = b"mmmmmmmmmm";

#[derive(Parser)]
#[command(about = "Bare hyper hello server: the throughput ceiling for benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Runtime worker threads [default: the number of cores].
    #[arg(long)]
    threads: Option<usize>,
}

async fn hello(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads);
    }
    runtime.enable_all().build()?.block_on(serve(args.listen))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("hello: listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        // Small responses: send them at once instead of waiting to coalesce.
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            // A client hanging up mid-request is normal under load; nothing to report.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}
