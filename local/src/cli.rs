//! Command-line interface of `cellmesh-local`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use tokio_util::sync::CancellationToken;

use crate::{apiserver, network, up};

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
    Apiserver(ApiserverArgs),
    /// Start the whole local cluster in the background (API server with every component,
    /// CRDs, Prometheus, an example) and print what to try next.
    Up(up::UpArgs),
    /// Stop what `up` started (Prometheus, then the server); every stored object is kept.
    Down(up::StateArgs),
    /// Report what `up` started: pids, URLs and health (exit code 3 when not running).
    Status(up::StateArgs),
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
    /// Log filter (tracing-subscriber syntax), e.g. `info` or `cellmesh_local=debug`.
    #[arg(long, default_value = "info", env = "CELLMESH_LOG")]
    log: String,
    /// Range Service ClusterIPs are allocated from (loopback, so they can be proxied).
    #[arg(long, default_value = apiserver::service_ip::DEFAULT_SERVICE_CIDR)]
    service_cidr: ipnet::Ipv4Net,
    /// Run the network component: the ClusterIP proxy and the cluster DNS server.
    #[arg(long)]
    network: bool,
    /// Where the cluster DNS server listens (UDP and TCP), with `--network`.
    #[arg(long, default_value = network::DEFAULT_DNS_ADDR)]
    dns_addr: SocketAddr,
    /// Where Prometheus HTTP service discovery of pods and nodes is served, with `--network`.
    #[arg(long, default_value = network::DEFAULT_SD_ADDR)]
    prometheus_sd_addr: SocketAddr,
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
        Command::Apiserver(args) => run_apiserver(args),
        Command::Up(args) => {
            init_logging("warn");
            up::up(args)
        }
        Command::Down(args) => up::down(args),
        Command::Status(args) => up::status(args),
    }
}

fn run_apiserver(args: ApiserverArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let config = apiserver::Config {
        listen: args.listen,
        state_dir: args.state_dir,
        bookmark_interval: args.watch_bookmark_interval,
        event_window: args.event_window,
        service_cidr: args.service_cidr,
    };
    // In-process components, started once the server is ready and stopped with it.
    let components = CancellationToken::new();
    let network = args.network.then_some(network::Config {
        dns_addr: args.dns_addr,
        sd_addr: args.prometheus_sd_addr,
    });
    let result = runtime.block_on(apiserver::run(
        config,
        |addr, kubeconfig| {
            if let Some(config) = network {
                spawn_component("network", kubeconfig, &components, move |client, stop| {
                    network::run(client, config, stop)
                });
            }
            // Scripts and tests wait for this line.
            println!("cellmesh-local apiserver listening on https://{addr}");
            println!("kubeconfig: {}", kubeconfig.display());
            println!(
                "try: KUBECONFIG={} kubectl get namespaces",
                kubeconfig.display()
            );
        },
        shutdown_signal(),
    ));
    components.cancel();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an in-process component with a client of the (ready) API server; it stops when
/// `stop` is cancelled. A component that fails is logged; the server keeps serving.
fn spawn_component<F, Fut>(name: &'static str, kubeconfig: &Path, stop: &CancellationToken, run: F)
where
    F: FnOnce(kube::Client, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let kubeconfig = kubeconfig.to_owned();
    let stop = stop.child_token();
    tokio::spawn(async move {
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

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
