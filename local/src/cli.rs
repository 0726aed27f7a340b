//! Command-line interface of `cellmesh-local`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{apiserver, controllers, network, up};

#[derive(Parser)]
#[command(
    name = "cellmesh-local",
    version,
    about = "A small Kubernetes-compatible cluster in one binary",
    long_about = "A small Kubernetes-compatible cluster in one binary, so cellmesh runs on a \
                  laptop without Docker. Point kubectl at it with the kubeconfig it writes \
                  into the state directory: `export KUBECONFIG=.cellmesh/kubeconfig`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Kubernetes-compatible API server (HTTPS, bearer tokens, durable storage).
    Apiserver(Box<ApiserverArgs>),
    /// Start the whole local cluster in the background (API server with every component,
    /// CRDs, Prometheus, an example) and print what to try next.
    Up(Box<up::UpArgs>),
    /// Stop what `up` started (Prometheus, then the server); every stored object is kept.
    Down(up::StateArgs),
    /// Report what `up` started: pids, URLs and health (exit code 3 when not running).
    Status(up::StateArgs),
    /// Internal: the trampoline every container of the node agent starts through (joins
    /// the container's cgroups, mounts its volumes in a private mount namespace, then
    /// execs the container's command).
    #[command(hide = true)]
    ContainerInit {
        /// The JSON spec the node agent wrote.
        #[arg(long)]
        spec: PathBuf,
    },
}

#[derive(Args)]
struct ApiserverArgs {
    /// Address to serve HTTPS on (port 0 picks a free port; the kubeconfig gets the real one).
    #[arg(long, default_value = "127.0.0.1:6443", env = "CELLMESH_LISTEN")]
    listen: SocketAddr,
    /// Directory for the database, CA, admin token and kubeconfig (created if missing).
    #[arg(long, default_value = ".cellmesh", env = "CELLMESH_STATE_DIR")]
    state_dir: PathBuf,
    /// How often watches that allow bookmarks get one (e.g. `60s`, `500ms`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    watch_bookmark_interval: Duration,
    /// How many recent changes watches can resume from before they must relist (410 Gone).
    #[arg(long, default_value_t = 100_000)]
    event_window: usize,
    /// Controllers to run in this process once the server is ready: `all`, `none`, or a
    /// list such as `gc,namespace,deployment,replicaset,endpoints,rootca` (`all,-gc` runs
    /// all but the garbage collector).
    #[arg(long, default_value = "all", value_name = "LIST")]
    controllers: controllers::Selection,
    /// Log filter (tracing-subscriber syntax), e.g. `info` or `cellmesh_local=debug`.
    #[arg(long, default_value = "info", env = "CELLMESH_LOG")]
    log: String,
    /// Range Service ClusterIPs are allocated from (loopback, so they can be proxied).
    #[arg(long, default_value = apiserver::service_ip::DEFAULT_SERVICE_CIDR)]
    service_cidr: ipnet::Ipv4Net,
    /// Run the network component: the ClusterIP proxy, the cluster DNS server and
    /// Prometheus service discovery.
    #[arg(long)]
    network: bool,
    /// Where the cluster DNS server listens (UDP and TCP). The node agent writes its IP into
    /// every pod's /etc/resolv.conf, which cannot name a port: pods need port 53.
    #[arg(long, default_value = network::DEFAULT_DNS_ADDR)]
    dns_addr: SocketAddr,
    /// Where Prometheus HTTP service discovery of pods and nodes is served, with `--network`.
    #[arg(long, default_value = network::DEFAULT_SD_ADDR)]
    prometheus_sd_addr: SocketAddr,
    /// Also run the node agent (runs pods as local processes).
    #[arg(long)]
    node: bool,
    #[command(flatten)]
    node_args: NodeArgs,
}

/// Options of the node agent (used with `--node`).
#[derive(Args)]
#[command(next_help_heading = "Node agent (with --node)")]
struct NodeArgs {
    /// Pod IPs are allocated from this loopback range, one per pod.
    #[arg(long, default_value = "127.64.0.0/16")]
    pod_cidr: crate::node::ipam::Cidr,
    /// Map an image to a local binary: `pattern=path` (pattern may end in `*`; path `host`
    /// runs the command from the host). Repeatable; overrides the built-in map
    /// (ghcr.io/cellmesh/cell:* → cellmesh-cell, ghcr.io/cellmesh/operator:* →
    /// cellmesh-operator, busybox* → host).
    #[arg(long = "image-map", value_name = "IMAGE=PATH")]
    image_map: Vec<String>,
    /// Root of the cgroup hierarchies.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Directory under each cgroup hierarchy for the containers' cgroups. The agent kills
    /// every container it finds there when it starts and stops (leftovers of a crash), so
    /// two clusters must never share one. Default: `cellmesh-<hash of the state directory>`.
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// Address of the node's HTTP metrics endpoint (/metrics/cadvisor, /metrics/resource).
    #[arg(long, default_value = "127.0.0.1:10250")]
    node_metrics_addr: SocketAddr,
    /// First CrashLoopBackOff delay (doubles per crash).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    crash_backoff: Duration,
    /// Longest CrashLoopBackOff delay.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    crash_backoff_max: Duration,
}

/// Parses `500ms`, `30s`, `5m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 500ms, 30s, 5m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        other => Err(format!("unknown duration unit {other:?} (use ms, s or m)")),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Apiserver(args) => run_apiserver(*args),
        Command::Up(args) => {
            init_logging("warn");
            up::up(*args)
        }
        Command::Down(args) => up::down(args),
        Command::Status(args) => up::status(args),
        Command::ContainerInit { spec } => crate::node::init::main(&spec),
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run_apiserver(args: ApiserverArgs) -> ExitCode {
    init_logging(&args.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let node_config = args.node.then(|| node_config(&args));
    let network = args.network.then_some(network::Config {
        dns_addr: args.dns_addr,
        sd_addr: args.prometheus_sd_addr,
    });
    let controllers = (!args.controllers.is_empty()).then(|| args.controllers.clone());
    let ca_path = args.state_dir.join("ca.crt");
    let config = apiserver::Config {
        listen: args.listen,
        state_dir: args.state_dir,
        bookmark_interval: args.watch_bookmark_interval,
        event_window: args.event_window,
        service_cidr: args.service_cidr,
    };
    // In-process components start once the server is ready and stop with it: SIGTERM
    // cancels `stop`, the server returns, and the components get a bounded time to wind
    // down (the node agent stops its pods).
    let stop = CancellationToken::new();
    let mut components = JoinSet::new();
    let result = runtime.block_on(apiserver::run(
        config,
        |addr, kubeconfig| {
            if let Some(selected) = controllers {
                spawn_component(
                    &mut components,
                    "controllers",
                    kubeconfig,
                    &stop,
                    move |client, stop| async move {
                        let root_ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| {
                            anyhow::anyhow!("cannot read the cluster CA {}: {e}", ca_path.display())
                        })?;
                        let config = controllers::Config {
                            controllers: selected,
                            root_ca_pem,
                        };
                        controllers::run(client, config, stop).await
                    },
                );
            }
            if let Some(mut config) = node_config {
                config.apiserver = addr;
                spawn_component(
                    &mut components,
                    "node agent",
                    kubeconfig,
                    &stop,
                    move |client, stop| crate::node::run(client, config, stop),
                );
            }
            if let Some(config) = network {
                spawn_component(
                    &mut components,
                    "network",
                    kubeconfig,
                    &stop,
                    move |client, stop| network::run(client, config, stop),
                );
            }
            // Scripts and tests wait for this line.
            println!("cellmesh-local apiserver listening on https://{addr}");
            println!("kubeconfig: {}", kubeconfig.display());
            println!(
                "try: KUBECONFIG={} kubectl get namespaces",
                kubeconfig.display()
            );
        },
        {
            let stop = stop.clone();
            async move {
                shutdown_signal().await;
                stop.cancel();
            }
        },
    ));
    stop.cancel();
    runtime.block_on(async {
        let wind_down = async { while components.join_next().await.is_some() {} };
        if tokio::time::timeout(COMPONENT_STOP_TIMEOUT, wind_down)
            .await
            .is_err()
        {
            tracing::warn!("components did not stop within {COMPONENT_STOP_TIMEOUT:?}");
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long in-process components get to stop after the server has (the node agent sends
/// its pods SIGTERM and waits for them within this).
const COMPONENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs an in-process component with a client of the (ready) API server; it stops when
/// `stop` is cancelled. A component that fails is logged; the server keeps serving.
fn spawn_component<F, Fut>(
    components: &mut JoinSet<()>,
    name: &'static str,
    kubeconfig: &Path,
    stop: &CancellationToken,
    run: F,
) where
    F: FnOnce(kube::Client, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let kubeconfig = kubeconfig.to_owned();
    let stop = stop.child_token();
    components.spawn(async move {
        let result = match crate::client::from_kubeconfig(&kubeconfig).await {
            Ok(client) => run(client, stop).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => tracing::info!(component = name, "stopped"),
            Err(err) => tracing::error!(component = name, "component failed: {err:#}"),
        }
    });
}

fn node_config(args: &ApiserverArgs) -> crate::node::Config {
    let n = &args.node_args;
    crate::node::Config {
        node_name: crate::node::NODE_NAME.to_owned(),
        state_dir: args.state_dir.clone(),
        pod_cidr: n.pod_cidr,
        host_ip: if args.listen.ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            args.listen.ip()
        },
        cluster_dns: args.dns_addr.ip(),
        apiserver: args.listen,
        image_map: n.image_map.clone(),
        cgroup_root: n.cgroup_root.clone(),
        cgroup_parent: n
            .cgroup_parent
            .clone()
            .unwrap_or_else(|| default_cgroup_parent(&args.state_dir)),
        metrics_addr: n.node_metrics_addr,
        backoff_base: n.crash_backoff,
        backoff_max: n.crash_backoff_max,
        self_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cellmesh-local")),
    }
}

/// `cellmesh-<16 hex digits>`: FNV-1a of the absolute state directory, stable across runs and
/// releases, so a restarted cluster sweeps its own leftovers and nobody else's containers.
fn default_cgroup_parent(state_dir: &std::path::Path) -> String {
    use std::hash::Hasher as _;
    let absolute = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf());
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(absolute.as_os_str().as_encoded_bytes());
    format!("cellmesh-{:016x}", hasher.finish())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn clusters_with_different_state_directories_get_different_cgroup_parents() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let parent = default_cgroup_parent(a.path());
        assert!(
            parent.starts_with("cellmesh-") && parent.len() == 25,
            "{parent}"
        );
        assert_eq!(parent, default_cgroup_parent(a.path()), "stable");
        assert_ne!(parent, default_cgroup_parent(b.path()));
        // A relative spelling of the same directory is the same cluster.
        let dotted = a.path().join(".");
        assert_eq!(parent, default_cgroup_parent(&dotted));
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
