//! Process wiring: load the workmodel, build the cell, bind the three servers, mark ready,
//! and drain on SIGTERM/SIGINT (readiness off, no new admissions, in-flight requests finish
//! within `--shutdown-timeout`).

use std::sync::Arc;

use anyhow::Context;
use cellmesh_api::mubench;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::admin::admin_router;
use crate::app::{Addresses, App};
use crate::cli::Args;
use crate::downstream::http_client;
use crate::grpc::grpc_service;
use crate::http::{router, serve};
use crate::service::{CellOptions, ServiceCell};

/// Builds the runtime and serves until a shutdown signal.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.runtime_threads {
        builder.worker_threads(threads.max(1));
    }
    builder.enable_all().build()?.block_on(serve_all(args))
}

/// Loads the workmodel and builds the [`App`] for `args.service`.
pub fn load(args: &Args) -> anyhow::Result<App> {
    let path = args.workmodel.display();
    let text = std::fs::read_to_string(&args.workmodel)
        .with_context(|| format!("cannot read the workmodel {path}"))?;
    let loaded = mubench::from_str(&text).with_context(|| format!("workmodel {path}"))?;
    if !loaded.ignored.is_empty() {
        warn!("workmodel {path}: {}", loaded.ignored);
    }
    let options = CellOptions {
        resolve: args.resolve.iter().cloned().collect(),
        downstream_timeout: args.downstream_timeout,
        zone: args.zone.clone(),
        app_name: args.app_name.clone(),
        scratch_dir: args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let cell = ServiceCell::new(&loaded.services, &args.service, options, http_client())
        .with_context(|| format!("workmodel {path}"))?;
    Ok(App::new(cell))
}

async fn serve_all(args: Args) -> anyhow::Result<()> {
    let app = Arc::new(load(&args)?);
    let shutdown = shutdown_signal()?;
    let bind = |address, what: &'static str| async move {
        TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen for {what} on {address}"))
    };
    let rest = bind(args.listen, "REST").await?;
    let grpc = bind(args.grpc_listen, "gRPC").await?;
    let admin = bind(args.admin_listen, "admin").await?;
    let addresses = Addresses {
        rest: rest.local_addr()?,
        grpc: grpc.local_addr()?,
        admin: admin.local_addr()?,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let rest_server = serve(rest, app.clone(), router(app.clone()), stopped());
    let admin_server =
        axum::serve(admin, admin_router(app.clone())).with_graceful_shutdown(stopped());
    let incoming = TcpListenerStream::new(grpc).map(|stream| {
        stream.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    });
    let grpc_server = tonic::transport::Server::builder()
        .add_service(grpc_service(app.clone()))
        .serve_with_incoming_shutdown(incoming, stopped());

    app.set_ready(addresses);
    let spec = app.cell.spec();
    // One line on stdout, stable for scripts and tests: `key=value` fields after the colon.
    println!(
        "cellmesh-cell {} ready: rest={} grpc={} admin={} path={} capacity={}",
        app.cell.name(),
        addresses.rest,
        addresses.grpc,
        addresses.admin,
        spec.path(),
        app.cell.capacity(),
    );
    for (name, target) in app.cell.downstreams() {
        info!(downstream = name, %target, "downstream");
    }

    let signals = {
        let app = app.clone();
        async move {
            shutdown.await;
            info!("shutting down: draining in-flight requests");
            app.drain();
            let _ = stop_tx.send(true);
        }
    };
    tokio::spawn(signals);

    let servers = async {
        tokio::try_join!(
            async {
                rest_server.await;
                anyhow::Ok(())
            },
            async { grpc_server.await.context("gRPC server") },
            async { admin_server.await.context("admin server") },
        )
    };
    let drain_deadline = {
        let stopped = stopped();
        let timeout = args.shutdown_timeout;
        async move {
            stopped.await;
            tokio::time::sleep(timeout).await;
        }
    };
    tokio::select! {
        result = servers => { result?; }
        () = drain_deadline => warn!("in-flight requests still running after {:?}; exiting", args.shutdown_timeout),
    }
    info!("stopped");
    Ok(())
}

/// Registers SIGTERM and SIGINT handlers now (so a signal that arrives right after the ready
/// line is not fatal) and returns a future that completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
