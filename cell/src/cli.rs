//! Command-line interface of `cellmesh-cell`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Runs one service of a µBench workmodel (REST and gRPC with µBench's semantics) or an App's
/// pipeline, on an engine with admission, deadlines and an elastic worker pool configured by a
/// Profile; Prometheus metrics and an admin port.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "cellmesh-cell",
    version,
    after_help = "Example: a two-service chain on one machine\n  \
        cellmesh-cell --workmodel wm.json --service s1 --listen 127.0.0.2:8080 \
        --grpc-listen 127.0.0.2:51313 --admin-listen 127.0.0.2:8081\n  \
        cellmesh-cell --workmodel wm.json --service s0 --listen 127.0.0.1:8080 \
        --grpc-listen 127.0.0.1:51313 --admin-listen 127.0.0.1:8081 --resolve s1=127.0.0.2:8080\n  \
        curl http://127.0.0.1:8080/api/v1\n\n\
        Bind port 0 to get a free port; the bound addresses are printed on stdout and in /info.\n\n\
        An App: cellmesh-cell --app examples/apps/scorer.yaml --profile examples/profiles/fast.yaml\n  \
        curl -d '{\"x\": 1}' http://127.0.0.1:8080/"
)]
pub struct Args {
    /// Workmodel file (JSON or YAML): a map from service name to service spec, µBench's
    /// `workmodel.json` format (camelCase or µBench's snake_case keys).
    #[arg(
        long,
        env = "CELLMESH_WORKMODEL",
        value_name = "FILE",
        required_unless_present = "app",
        conflicts_with = "app",
        requires = "service"
    )]
    pub workmodel: Option<PathBuf>,

    /// The service of the workmodel this cell runs (µBench's `APP`).
    #[arg(long, env = "APP", value_name = "NAME")]
    pub service: Option<String>,

    /// Run an App instead of a workmodel service: an `App` resource (YAML/JSON), its spec, or
    /// a bare pipeline stage. Served on `POST /` (REST, NDJSON out) and gRPC.
    #[arg(long, env = "CELLMESH_APP", value_name = "FILE")]
    pub app: Option<PathBuf>,

    /// Profile file: a `Profile` resource or its bare spec (YAML/JSON). Re-read when it
    /// changes (ConfigMap updates included); an invalid change is refused and logged.
    /// [default: a workmodel service runs µBench's layout, `workers` pool slots of `threads`
    /// requests each; an App the Profile defaults]
    #[arg(long, env = "CELLMESH_PROFILE", value_name = "FILE")]
    pub profile: Option<PathBuf>,

    /// How often the profile file is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub profile_poll: Duration,

    /// REST address: the service path and `/metrics`.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// gRPC address (µBench's port 51313).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:51313")]
    pub grpc_listen: SocketAddr,

    /// Admin address: `/metrics`, `/live`, `/ready`, `/info`.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8081")]
    pub admin_listen: SocketAddr,

    /// Bind the REST and gRPC ports with SO_REUSEPORT, so several cell processes can share
    /// them and the kernel spreads connections across them (the alternative to the engine's
    /// acceptor that `cargo xtask bench engine` measures; see docs/benchmarks.md).
    #[arg(long)]
    pub reuse_port: bool,

    /// Address of a downstream service for the protocol it is called with, overriding the
    /// workmodel's `url`. Repeatable.
    #[arg(long, value_name = "NAME=HOST:PORT", value_parser = parse_resolve)]
    pub resolve: Vec<(String, String)>,

    /// Bound on each downstream call, response body included; beyond it the request fails
    /// with 504. Units: ms, s, m (e.g. `500ms`, `30s`).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub downstream_timeout: Duration,

    /// `zone` label of the metrics.
    #[arg(long, env = "ZONE", default_value = "default")]
    pub zone: String,

    /// `app_name` label of the metrics [default: the service name].
    #[arg(long, env = "K8S_APP", value_name = "NAME")]
    pub app_name: Option<String>,

    /// Threads of the async runtime [default: the number of CPUs].
    #[arg(long, env = "CELLMESH_RUNTIME_THREADS", value_name = "N")]
    pub runtime_threads: Option<usize>,

    /// Directory for the disk stressor's scratch files [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,

    /// On SIGTERM/SIGINT, how long `/ready` answers 503 while new requests are still
    /// served (so load balancers stop sending) before new connections are refused; then
    /// accepted requests get the profile's `terminationTimeout` to finish.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub drain_grace: Duration,
}

/// Parses `NAME=HOST:PORT`.
pub fn parse_resolve(text: &str) -> Result<(String, String), String> {
    let (name, address) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=HOST:PORT"))?;
    if name.is_empty() {
        return Err(format!("`{text}`: the service name is empty"));
    }
    let authority = http::uri::Authority::try_from(address)
        .map_err(|e| format!("`{address}` is not HOST:PORT: {e}"))?;
    if authority.port_u16().is_none() {
        return Err(format!("`{address}` has no port (HOST:PORT)"));
    }
    Ok((name.to_owned(), address.to_owned()))
}

/// Parses a duration: a number with `ms`, `s` or `m` (plain numbers are seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 30s or 2m"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("`{text}` is not a non-negative duration"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_has_mubench_defaults() {
        Args::command().debug_assert();
        let args =
            Args::try_parse_from(["cellmesh-cell", "--workmodel", "wm.json", "--service", "s0"])
                .unwrap();
        assert_eq!(args.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(args.grpc_listen.to_string(), "0.0.0.0:51313");
        assert_eq!(args.admin_listen.to_string(), "0.0.0.0:8081");
        assert_eq!(args.downstream_timeout, Duration::from_secs(30));
        assert!(Args::try_parse_from(["cellmesh-cell"]).is_err());
        assert!(Args::try_parse_from(["cellmesh-cell", "--workmodel", "wm.json"]).is_err());
        assert!(
            Args::try_parse_from(["cellmesh-cell", "--app", "a.yaml", "--workmodel", "w"]).is_err()
        );
        let app = Args::try_parse_from(["cellmesh-cell", "--app", "a.yaml"]).unwrap();
        assert!(app.workmodel.is_none() && app.app.is_some());
    }

    #[test]
    fn resolve_and_durations() {
        assert_eq!(
            parse_resolve("s1=127.0.0.2:8080").unwrap(),
            ("s1".to_owned(), "127.0.0.2:8080".to_owned())
        );
        assert!(parse_resolve("s1").unwrap_err().contains("NAME=HOST:PORT"));
        assert!(parse_resolve("s1=host").unwrap_err().contains("no port"));
        assert!(parse_resolve("=h:1").unwrap_err().contains("name is empty"));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
    }
}
