//! `cellmesh-operator run`: connects to the cluster (in-cluster config or `KUBECONFIG`),
//! serves `/healthz`, `/readyz` and `/metrics`, optionally waits to hold the leader Lease,
//! and runs the controllers until SIGTERM/SIGINT.
//!
//! Leader election (`--leader-election`): replicas compete for one coordination Lease
//! (kube-lease-manager, server-side apply). A standby replica is ready but does not reconcile.
//! The leader renews the Lease every `duration − grace` seconds; when it dies, another replica
//! takes over once the Lease has expired. A leader that loses the Lease stops its controllers
//! and exits non-zero, so its pod restarts as a standby — two replicas never both act.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, Result, bail};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::build::{Settings, default_cell_image};
use crate::controller::{self, Context};
use crate::telemetry::{self, Health, LogFormat};

/// Flags of `cellmesh-operator run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Watch only this namespace. Default: all namespaces.
    #[arg(long, short = 'n', env = "CELLMESH_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Image of the cell the Deployments run.
    #[arg(long, env = "CELLMESH_CELL_IMAGE", default_value_t = default_cell_image())]
    pub cell_image: String,
    /// Prometheus base URL the ScalingPolicy controller reads usage from when a policy names
    /// none (`spec.metrics.prometheus.url`).
    #[arg(long, env = "CELLMESH_PROMETHEUS_URL", value_name = "URL")]
    pub prometheus_url: Option<String>,
    /// Address of `/healthz`, `/readyz` and `/metrics` (port 0: any free port; the bound
    /// address is printed on stdout).
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub metrics_addr: SocketAddr,
    /// Act only while holding the leader Lease (run two replicas for failover).
    #[arg(long)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "cellmesh-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Seconds a Lease stays valid without renewal: the longest failover time.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub lease_duration: u64,
    /// Seconds before expiry at which the leader renews; less than `--lease-duration`.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub lease_grace: u64,
    /// This replica's identity in the Lease and in Events. Default: `$POD_NAME`, else
    /// `<hostname>-<pid>`.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (`RUST_LOG` syntax; the `RUST_LOG` variable wins when set).
    #[arg(long, default_value = "info")]
    pub log: String,
}

impl RunArgs {
    fn check(&self) -> Result<()> {
        if self.lease_duration == 0
            || self.lease_grace == 0
            || self.lease_grace >= self.lease_duration
        {
            bail!(
                "--lease-grace ({}) must be at least 1 and less than --lease-duration ({})",
                self.lease_grace,
                self.lease_duration
            );
        }
        if self.cell_image.trim().is_empty() {
            bail!("--cell-image must not be empty");
        }
        Ok(())
    }

    fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "cellmesh-operator".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Runs the operator until a signal (Ok) or the loss of the Lease (Err).
pub async fn run(args: RunArgs) -> Result<()> {
    args.check()?;
    telemetry::init_logging(args.log_format, &args.log);
    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    let bound = listener.local_addr()?;
    println!("cellmesh-operator serving /healthz, /readyz and /metrics on http://{bound}");
    let router = telemetry::router(health.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the health and metrics server stopped");
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: stopping");
        let _ = signal_tx.send(true);
    });

    let identity = args.identity();
    let settings = Settings {
        cell_image: args.cell_image.clone(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        health.clone(),
        identity.clone(),
        args.namespace.as_deref(),
    ));
    let scaling = crate::scaling::Config {
        prometheus_url: args.prometheus_url.clone(),
        query_timeout: std::time::Duration::from_secs(5),
        namespace: args.namespace.clone(),
        health: health.clone(),
    };

    if !args.leader_election {
        health.metrics.leader.set(1);
        health.ready.store(true, Ordering::Release);
        tracing::info!(namespace = ?args.namespace, "controllers starting");
        controller::run(ctx, args.namespace.clone(), scaling, stop_rx).await;
        return Ok(());
    }

    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration)
        .with_grace(args.lease_grace)
        .build()
        .await
        .with_context(|| {
            format!(
                "cannot use Lease {}/{}",
                args.lease_namespace, args.lease_name
            )
        })?;
    let (mut leader, lease_task) = manager.watch().await;
    health.ready.store(true, Ordering::Release);
    tracing::info!(%identity, lease = %args.lease_name, "standing by for the leader Lease");
    let mut stop_wait = stop_rx.clone();
    let became_leader = tokio::select! {
        changed = leader.wait_for(|held| *held) => changed.is_ok(),
        _ = stop_wait.wait_for(|stop| *stop) => false,
    };
    if !became_leader {
        drop(leader);
        let _ = lease_task.await;
        return Ok(());
    }
    tracing::info!(%identity, "leading: controllers starting");
    health.metrics.leader.set(1);
    let controllers = tokio::spawn(controller::run(
        ctx,
        args.namespace.clone(),
        scaling,
        stop_rx.clone(),
    ));
    let lost = tokio::select! {
        changed = leader.wait_for(|held| !*held) => {
            // A closed channel means the lease task died: as good as lost.
            let _ = changed;
            true
        }
        _ = stop_wait.wait_for(|stop| *stop) => false,
    };
    health.metrics.leader.set(0);
    let _ = stop_tx.send(true);
    let _ = controllers.await;
    drop(leader);
    // Releases the Lease (on a graceful stop) so a standby takes over at once.
    let _ = lease_task.await;
    if lost {
        bail!(
            "lost the leader Lease {}/{}: exiting so this replica restarts as a standby",
            args.lease_namespace,
            args.lease_name
        );
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
