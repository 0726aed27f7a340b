//! Process wiring: load the workmodel service or App, start its engine with the profile
//! (hot-reloaded), bind the three servers, mark ready, and drain on SIGTERM/SIGINT:
//! `/ready` turns 503 at once while requests are still served for `--drain-grace` (load
//! balancers notice), then new connections and requests are refused, and queued and running
//! requests finish within the profile's `terminationTimeout`; the process then exits 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cellmesh_api::mubench;
use cellmesh_api::pipeline::Stage;
use cellmesh_api::profile::{Isolate, ProfileSpec};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::admin::admin_router;
use crate::app::{Addresses, App, PipelineCell, Workload};
use crate::cli::Args;
use crate::downstream::http_client;
use crate::engine::reload::{read_profile_file, watch_profile_file};
use crate::engine::{Engine, EngineConfig};
use crate::functions::Placement;
use crate::functions::leaves::cell_functions;
use crate::grpc::grpc_service;
use crate::http::{router, serve};
use crate::metrics::Identity;
use crate::service::{CellOptions, ServiceCell, default_profile, service_stage};

/// Builds the runtime and serves until a shutdown signal.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.runtime_threads {
        builder.worker_threads(threads.max(1));
    }
    builder.enable_all().build()?.block_on(serve_all(args))
}

/// Start an engine running `pipeline` with `profile`; the µBench functions run in place on
/// dedicated workers and offloaded on the shared runtime.
pub fn start_engine(profile: ProfileSpec, pipeline: Stage) -> anyhow::Result<Engine> {
    let placement = match profile.isolate {
        Isolate::Inline => Placement::Offload,
        Isolate::Thread | Isolate::Process => Placement::InPlace,
    };
    let mut config = EngineConfig::new(profile, pipeline);
    config.functions = cell_functions(placement);
    Ok(Engine::start(config)?)
}

/// A loaded cell: the [`App`] and the profile file's content (for hot reload).
pub struct Loaded {
    /// The cell.
    pub app: App,
    /// The profile file's bytes at start, when `--profile` was given.
    pub profile_content: Option<Vec<u8>>,
}

/// Loads the profile and the workmodel service or App, and starts the engine. Runs inside a
/// tokio runtime.
pub fn load(args: &Args) -> anyhow::Result<Loaded> {
    let profile = args
        .profile
        .as_deref()
        .map(read_profile_file)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let (profile, profile_content) = match profile {
        Some((spec, content)) => (Some(spec), Some(content)),
        None => (None, None),
    };
    let scratch_dir = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let workload = match (&args.workmodel, &args.app) {
        (Some(workmodel), _) => {
            let Some(service) = &args.service else {
                bail!("--workmodel needs --service");
            };
            Workload::Service(load_service(
                args,
                workmodel,
                service,
                profile,
                scratch_dir,
            )?)
        }
        (None, Some(app)) => {
            let (name, pipeline) = read_app_file(app)?;
            let engine = start_engine(profile.unwrap_or_default(), pipeline)
                .with_context(|| format!("app {}", app.display()))?;
            let identity = Identity {
                zone: args.zone.clone(),
                app_name: args.app_name.clone().unwrap_or_else(|| name.clone()),
                service: name.clone(),
                path: crate::http::PIPELINE_PATH.to_owned(),
            };
            Workload::Pipeline(PipelineCell::new(&name, engine, &identity))
        }
        (None, None) => bail!("give --workmodel and --service, or --app"),
    };
    Ok(Loaded {
        app: App::with(workload),
        profile_content,
    })
}

fn load_service(
    args: &Args,
    workmodel: &Path,
    service: &str,
    profile: Option<ProfileSpec>,
    scratch_dir: PathBuf,
) -> anyhow::Result<ServiceCell> {
    let path = workmodel.display();
    let text = std::fs::read_to_string(workmodel)
        .with_context(|| format!("cannot read the workmodel {path}"))?;
    let loaded = mubench::from_str(&text).with_context(|| format!("workmodel {path}"))?;
    if !loaded.ignored.is_empty() {
        warn!("workmodel {path}: {}", loaded.ignored);
    }
    let spec = loaded.services.get(service).with_context(|| {
        let names: Vec<&str> = loaded.services.keys().map(String::as_str).collect();
        format!(
            "workmodel {path}: service `{service}` is not in the workmodel (it has: {})",
            names.join(", ")
        )
    })?;
    let profile = profile.unwrap_or_else(|| default_profile(spec));
    let engine = start_engine(profile, service_stage(spec, &scratch_dir))
        .with_context(|| format!("workmodel {path}, service {service}"))?;
    let options = CellOptions {
        resolve: args.resolve.iter().cloned().collect(),
        downstream_timeout: args.downstream_timeout,
        zone: args.zone.clone(),
        app_name: args.app_name.clone(),
        scratch_dir,
    };
    ServiceCell::new(&loaded.services, service, options, http_client(), engine)
        .with_context(|| format!("workmodel {path}"))
}

/// Reads an App file: an `App` resource (`kind: App`, its `spec.pipeline`, named by
/// `metadata.name`), an App spec (`pipeline:`), or a bare pipeline stage. Returns the name
/// (default `app`) and the pipeline.
pub fn read_app_file(path: &Path) -> anyhow::Result<(String, Stage)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the app {}", path.display()))?;
    parse_app(&text).with_context(|| format!("app {}", path.display()))
}

/// See [`read_app_file`].
pub fn parse_app(text: &str) -> anyhow::Result<(String, Stage)> {
    let document: serde_yaml::Value = serde_yaml::from_str(text).context("not YAML or JSON")?;
    let (name, pipeline, at) = match document.get("kind") {
        Some(kind) => {
            if kind.as_str() != Some("App") {
                bail!("kind: expected App (or an App spec, or a pipeline stage)");
            }
            let name = document
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(serde_yaml::Value::as_str)
                .unwrap_or("app");
            let pipeline = document
                .get("spec")
                .and_then(|s| s.get("pipeline"))
                .context("spec.pipeline: missing")?;
            (name, pipeline.clone(), "spec.pipeline")
        }
        None => match document.get("pipeline") {
            Some(pipeline) => ("app", pipeline.clone(), "pipeline"),
            None => ("app", document.clone(), "the pipeline"),
        },
    };
    let stage: Stage = serde_yaml::from_value(pipeline).with_context(|| at.to_owned())?;
    Ok((name.to_owned(), stage))
}

async fn serve_all(args: Args) -> anyhow::Result<()> {
    let Loaded {
        app,
        profile_content,
    } = load(&args)?;
    let app = Arc::new(app);
    let shutdown = shutdown_signal()?;
    if let Some(path) = &args.profile {
        watch_profile_file(
            app.engine(),
            path.clone(),
            args.profile_poll,
            profile_content,
        );
    }
    let bind = |address, what: &'static str, reuse_port: bool| async move {
        bind_listener(address, reuse_port)
            .with_context(|| format!("cannot listen for {what} on {address}"))
    };
    let rest = bind(args.listen, "REST", args.reuse_port).await?;
    let grpc = bind(args.grpc_listen, "gRPC", args.reuse_port).await?;
    let admin = bind(args.admin_listen, "admin", false).await?;
    let addresses = Addresses {
        rest: rest.local_addr()?,
        grpc: grpc.local_addr()?,
        admin: admin.local_addr()?,
    };

    // `stop`: refuse new connections (REST, gRPC); `admin_stop`: after the drain.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let stopped = |rx: &watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let rest_server = serve(rest, app.clone(), router(app.clone()), stopped(&stop_rx));
    let admin_server = axum::serve(admin, admin_router(app.clone()))
        .with_graceful_shutdown(stopped(&admin_stop_rx));
    let incoming = TcpListenerStream::new(grpc).map(|stream| {
        stream.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    });
    let grpc_server = tonic::transport::Server::builder()
        .add_service(grpc_service(app.clone()))
        .serve_with_incoming_shutdown(incoming, stopped(&stop_rx));

    app.set_ready(addresses);
    let engine = app.engine().info();
    // One line on stdout, stable for scripts and tests: `key=value` fields after the colon.
    println!(
        "cellmesh-cell {} ready: rest={} grpc={} admin={} path={} capacity={} isolate={} poolLimit={}",
        app.name(),
        addresses.rest,
        addresses.grpc,
        addresses.admin,
        app.path(),
        engine
            .effective_pool_limit
            .saturating_mul(engine.profile.concurrency),
        engine.profile.isolate,
        engine.effective_pool_limit,
    );
    if let Some(cell) = app.service() {
        for (name, target) in cell.downstreams() {
            info!(downstream = name, %target, "downstream");
        }
    }

    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let signals = {
        let app = app.clone();
        let grace = args.drain_grace;
        async move {
            shutdown.await;
            info!(
                grace_ms = grace.as_millis() as u64,
                "shutting down: not ready; still serving during the grace period"
            );
            app.set_unready();
            tokio::time::sleep(grace).await;
            info!("draining: refusing new connections and requests; finishing accepted ones");
            app.drain();
            let _ = stop_tx.send(true);
            let report = app.engine().drain().await;
            if report.abandoned > 0 {
                warn!(
                    abandoned = report.abandoned,
                    "terminationTimeout passed before every accepted request finished"
                );
            } else {
                info!(took_ms = report.took.as_millis() as u64, "drained");
            }
            let _ = admin_stop_tx.send(true);
            let _ = drained_tx.send(());
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
    // After the drain, connections have a moment to deliver the last answers.
    let hard_stop = async {
        let _ = drained_rx.await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::select! {
        result = servers => { result?; }
        () = hard_stop => warn!("connections still open after the drain; exiting"),
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

/// A listener on `address`, with SO_REUSEPORT when asked (several processes share the port).
fn bind_listener(address: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match address {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted cell may rebind while old connections linger.
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(address)?;
    socket.listen(1024)
}
