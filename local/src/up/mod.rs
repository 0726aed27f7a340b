//! `cellmesh-local up | down | status`: the one-command local cluster.
//!
//! `up` starts `cellmesh-local apiserver` in the background with every component
//! ([`COMPONENTS`]), waits until it serves, installs the cellmesh CRDs, starts
//! Prometheus (discovering targets through the local API server), applies the example
//! manifests and prints what runs and what to try next. What it started is recorded in
//! `<state>/up.json` (pids, URLs); output goes to `<state>/cellmesh-local.log` and
//! `<state>/prometheus.log`. `down` stops Prometheus and the server (SIGTERM, a grace
//! period, then SIGKILL) and keeps every stored object; `up` on the same state directory
//! resumes it. `up --foreground` stays attached and stops everything on Ctrl-C/SIGTERM.

pub mod install;
pub mod process;
pub mod prometheus;
pub mod verify;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use process::Recorded;

/// The components `up` turns on, with the `apiserver` flags that enable each.
pub const COMPONENTS: &[(&str, &[&str])] = &[
    ("controllers", &["--controllers", "all"]),
    ("node", &["--node"]),
    ("network", &["--network"]),
];

/// The line the API server prints once it serves (see `cli::run_apiserver`).
const LISTENING: &str = "cellmesh-local apiserver listening on https://";

/// The state directory option shared by `up`, `down` and `status`.
#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// Directory holding the cluster's state, logs and pid records.
    #[arg(long, default_value = ".cellmesh", env = "CELLMESH_STATE_DIR")]
    pub state_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Address the API server serves HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Address of the cluster DNS server (UDP and TCP). Pods' resolv.conf cannot name a
    /// port, so pods reach it only on port 53.
    #[arg(long, default_value = crate::network::DEFAULT_DNS_ADDR)]
    pub dns_addr: SocketAddr,
    /// Where the network component serves Prometheus HTTP service discovery.
    #[arg(long, default_value = crate::network::DEFAULT_SD_ADDR)]
    pub prometheus_sd_addr: SocketAddr,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, default_value = crate::apiserver::service_ip::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: ipnet::Ipv4Net,
    /// The Prometheus binary (default: `prometheus` on PATH, then /usr/bin/prometheus).
    #[arg(long)]
    pub prometheus: Option<PathBuf>,
    /// Do not start Prometheus.
    #[arg(long)]
    pub no_prometheus: bool,
    /// Address Prometheus serves its UI and API on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub prometheus_listen: SocketAddr,
    /// Manifests to apply once the cluster runs (repeatable). Default: the `fast` Profile
    /// and the `chain` WorkModel from `examples/`, when run from the repository.
    #[arg(long = "example", value_name = "PATH")]
    pub examples: Vec<PathBuf>,
    /// Apply no example.
    #[arg(long)]
    pub no_example: bool,
    /// Do not deploy the cellmesh operator.
    #[arg(long)]
    pub no_operator: bool,
    /// Stay attached: stop everything on Ctrl-C or SIGTERM.
    #[arg(long)]
    pub foreground: bool,
    /// How long to wait for each part to become ready.
    #[arg(long, default_value = "60s", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,
    /// Extra arguments for `cellmesh-local apiserver` (after `--`).
    #[arg(last = true)]
    pub server_args: Vec<String>,
}

/// What `up` started, kept in `<state>/up.json` for `down` and `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub server: Recorded,
    pub api_server: String,
    pub kubeconfig: PathBuf,
    pub dns: SocketAddr,
    pub components: Vec<String>,
    pub prometheus: Option<PrometheusRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrometheusRecord {
    pub process: Recorded,
    pub listen: SocketAddr,
}

fn record_path(state: &Path) -> PathBuf {
    state.join("up.json")
}

pub fn read_record(state: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(record_path(state)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_record(state: &Path, record: &Record) -> anyhow::Result<()> {
    let path = record_path(state);
    std::fs::write(&path, serde_json::to_vec_pretty(record)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Prints a finished step above the spinner (or plainly when output is not a terminal).
fn done(bar: &ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        println!("{}", line.as_ref());
    } else {
        bar.println(line.as_ref());
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("cannot create state directory {}", path.display()))?;
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}

/// Waits for the server's "listening" line in its log; fails early if it exits.
fn wait_listening(
    child: &mut Child,
    log: &Path,
    offset: u64,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = process::log_since(log, offset);
        if let Some(url) = text
            .lines()
            .find_map(|l| l.strip_prefix(LISTENING))
            .map(|rest| format!("https://{}", rest.trim()))
        {
            return Ok(url);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the API server exited ({status}) before serving; its log ({}):\n{}",
                log.display(),
                tail(&text, 20)
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the API server did not serve within {timeout:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The example manifests to apply: those given, else the repository's defaults if present.
fn examples(args: &UpArgs) -> Vec<PathBuf> {
    if args.no_example {
        return Vec::new();
    }
    if !args.examples.is_empty() {
        return args.examples.clone();
    }
    [
        "examples/profiles/fast.yaml",
        "examples/workmodels/chain.yaml",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.is_file())
    .collect()
}

/// `cellmesh-local up`.
pub fn up(args: UpArgs) -> ExitCode {
    match run_up(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_up(args: &UpArgs) -> anyhow::Result<ExitCode> {
    let state = absolute(&args.state.state_dir)?;
    if let Some(record) = read_record(&state)
        && process::is_running(record.server.pid, &record.server.program)
    {
        println!(
            "cellmesh-local is already running from {} (pid {}); `cellmesh-local down` stops it.",
            state.display(),
            record.server.pid
        );
        print_status(&state, &record);
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe().context("cannot find the cellmesh-local executable")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    // In the foreground, Ctrl-C and SIGTERM are ours from the start: one arriving while
    // the cluster starts must still stop what was started.
    let signals = if args.foreground {
        Some(runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })?)
    } else {
        None
    };
    let bar = spinner();

    // 1. The API server with every component this build has.
    bar.set_message("starting the API server");
    let components: Vec<&str> = COMPONENTS.iter().map(|(name, _)| *name).collect();
    let flags: Vec<&str> = COMPONENTS
        .iter()
        .flat_map(|(_, flags)| flags.iter().copied())
        .collect();
    let log = state.join("cellmesh-local.log");
    let mut command = Command::new(&exe);
    command
        .arg("apiserver")
        .arg("--listen")
        .arg(args.listen.to_string())
        .arg("--state-dir")
        .arg(&state)
        .arg("--service-cidr")
        .arg(args.service_cidr.to_string())
        .arg("--dns-addr")
        .arg(args.dns_addr.to_string())
        .arg("--prometheus-sd-addr")
        .arg(args.prometheus_sd_addr.to_string())
        .args(&flags)
        .args(&args.server_args);
    let (mut child, offset) = process::spawn_logged(command, &log)?;
    let server = Recorded {
        pid: child.id(),
        program: "cellmesh-local".into(),
        log: log.clone(),
    };
    let mut record = Record {
        server,
        api_server: String::new(),
        kubeconfig: state.join("kubeconfig"),
        dns: args.dns_addr,
        components: components.iter().map(|c| (*c).to_owned()).collect(),
        prometheus: None,
    };
    write_record(&state, &record)?;
    bar.set_message("waiting for the API server");
    let url = match wait_listening(&mut child, &log, offset, args.timeout) {
        Ok(url) => url,
        Err(err) => {
            bar.finish_and_clear();
            let _ = process::stop(&record.server, Duration::from_secs(5));
            return Err(err);
        }
    };
    record.api_server.clone_from(&url);
    write_record(&state, &record)?;
    done(
        &bar,
        format!(
            "✓ API server {url} (pid {}), components: {}",
            record.server.pid,
            components.join(", ")
        ),
    );

    let client = runtime.block_on(crate::client::from_kubeconfig(&record.kubeconfig))?;

    // 2. CRDs, 3. Prometheus, 4. examples.
    bar.set_message("installing the cellmesh CRDs");
    match runtime.block_on(install::crds(&client)) {
        Ok(names) => done(&bar, format!("✓ CRDs: {}", names.join(", "))),
        Err(err) => done(&bar, format!("✗ CRDs not installed: {err:#}")),
    }
    if args.no_prometheus {
        done(&bar, "- Prometheus: not started (--no-prometheus)");
    } else {
        bar.set_message("starting Prometheus");
        match start_prometheus(args, &state, &url) {
            Ok(Some(prom)) => {
                done(
                    &bar,
                    format!(
                        "✓ Prometheus http://{} (pid {})",
                        prom.listen, prom.process.pid
                    ),
                );
                record.prometheus = Some(prom);
                write_record(&state, &record)?;
            }
            Ok(None) => done(
                &bar,
                "- Prometheus: not found (install Debian's `prometheus` package or pass \
                 --prometheus PATH); everything else runs without it",
            ),
            Err(err) => done(&bar, format!("✗ Prometheus did not start: {err:#}")),
        }
    }
    let operator = if args.no_operator {
        done(&bar, "- operator: not deployed (--no-operator)");
        false
    } else if !exe.with_file_name("cellmesh-operator").is_file() {
        done(
            &bar,
            format!(
                "- operator: not deployed: {} is missing (build it: cargo build -p cellmesh-operator)",
                exe.with_file_name("cellmesh-operator").display()
            ),
        );
        false
    } else {
        bar.set_message("deploying the operator");
        let prometheus_url = record
            .prometheus
            .as_ref()
            .map(|p| format!("http://{}", p.listen));
        match runtime.block_on(install::operator(&client, prometheus_url.as_deref())) {
            Ok(_) => {
                done(
                    &bar,
                    format!(
                        "✓ operator: deployment {}/{} (the node agent runs it as cellmesh-operator)",
                        install::OPERATOR_NAMESPACE,
                        install::OPERATOR_NAME
                    ),
                );
                true
            }
            Err(err) => {
                done(&bar, format!("✗ operator not deployed: {err:#}"));
                false
            }
        }
    };
    let mut workmodels = Vec::new();
    for path in examples(args) {
        bar.set_message(format!("applying {}", path.display()));
        match runtime.block_on(install::manifest(&client, &path)) {
            Ok(applied) => {
                workmodels.extend(
                    applied
                        .iter()
                        .filter_map(|a| a.strip_prefix("workmodel/"))
                        .map(str::to_owned),
                );
                done(
                    &bar,
                    format!("✓ applied {}: {}", path.display(), applied.join(", ")),
                );
            }
            Err(err) => done(&bar, format!("- skipped {}: {err:#}", path.display())),
        }
    }
    if operator {
        for name in &workmodels {
            bar.set_message(format!("waiting for WorkModel {name} to be Ready"));
            let checked = runtime.block_on(async {
                verify::workmodel_ready(&client, "default", name, args.timeout).await?;
                verify::through_gateway(&client, "default", name).await
            });
            match checked {
                Ok(answer) => done(&bar, format!("✓ WorkModel {name} Ready; {answer}")),
                Err(err) => done(&bar, format!("✗ WorkModel {name}: {err:#}")),
            }
        }
    }
    bar.finish_and_clear();
    print_next_steps(&record);

    let Some((mut interrupt, mut terminate)) = signals else {
        return Ok(ExitCode::SUCCESS);
    };
    println!("running in the foreground; Ctrl-C stops everything (the state is kept)");
    let exited = runtime.block_on(async {
        let server_gone = async {
            while process::is_running(record.server.pid, &record.server.program) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            _ = interrupt.recv() => false,
            _ = terminate.recv() => false,
            () = server_gone => true,
        }
    });
    if exited {
        eprintln!("the API server exited; see {}", record.server.log.display());
    }
    stop_all(&record);
    let _ = child.try_wait();
    Ok(if exited {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn start_prometheus(
    args: &UpArgs,
    state: &Path,
    api_server: &str,
) -> anyhow::Result<Option<PrometheusRecord>> {
    let Some(binary) = prometheus::find_binary(args.prometheus.as_deref()) else {
        return Ok(None);
    };
    let dir = state.join("prometheus");
    std::fs::create_dir_all(dir.join("data"))?;
    let http_sd = (!prometheus::supports_kubernetes_sd(&binary, &dir))
        .then(|| format!("http://{}", args.prometheus_sd_addr));
    let discovery = prometheus::Discovery {
        api_server: api_server.to_owned(),
        ca_file: state.join("ca.crt"),
        token_file: state.join("admin.token"),
        http_sd,
    };
    std::fs::write(dir.join("prometheus.yml"), prometheus::render(&discovery)?)?;
    let log = state.join("prometheus.log");
    let command = prometheus::command(&binary, &dir, args.prometheus_listen);
    let (mut child, offset) = process::spawn_logged(command, &log)?;
    let record = PrometheusRecord {
        process: Recorded {
            pid: child.id(),
            program: "prometheus".into(),
            log: log.clone(),
        },
        listen: args.prometheus_listen,
    };
    let deadline = Instant::now() + args.timeout;
    while !prometheus::is_ready(record.listen) {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "prometheus exited ({status}); its log:\n{}",
                tail(&process::log_since(&log, offset), 10)
            );
        }
        if Instant::now() > deadline {
            let _ = process::stop(&record.process, Duration::from_secs(5));
            anyhow::bail!("prometheus was not ready within {:?}", args.timeout);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Some(record))
}

fn print_next_steps(record: &Record) {
    println!();
    println!("cellmesh-local is running. Try:");
    println!("  export KUBECONFIG={}", record.kubeconfig.display());
    println!("  kubectl get pods -A");
    println!("  kubectl get workmodels");
    if let Some(prom) = &record.prometheus {
        println!("  open http://{}/targets   (Prometheus)", prom.listen);
    }
    println!("  cellmesh-local status    /    cellmesh-local down");
}

/// Stops Prometheus, then the server.
fn stop_all(record: &Record) -> Vec<String> {
    let mut report = Vec::new();
    if let Some(prom) = &record.prometheus {
        match process::stop(&prom.process, Duration::from_secs(10)) {
            Ok(true) => report.push(format!("stopped Prometheus (pid {})", prom.process.pid)),
            Ok(false) => report.push("Prometheus was not running".to_owned()),
            Err(err) => report.push(format!("cannot stop Prometheus: {err:#}")),
        }
    }
    // Pods get their termination grace period while the server shuts down.
    match process::stop(&record.server, Duration::from_secs(40)) {
        Ok(true) => report.push(format!(
            "stopped the API server and its components (pid {})",
            record.server.pid
        )),
        Ok(false) => report.push("the API server was not running".to_owned()),
        Err(err) => report.push(format!("cannot stop the API server: {err:#}")),
    }
    for line in &report {
        println!("{line}");
    }
    report
}

/// `cellmesh-local down`.
pub fn down(args: StateArgs) -> ExitCode {
    let Some(record) = read_record(&args.state_dir) else {
        println!(
            "nothing to stop: no cellmesh-local started by `up` in {}",
            args.state_dir.display()
        );
        return ExitCode::SUCCESS;
    };
    stop_all(&record);
    println!(
        "state kept in {}; `cellmesh-local up` resumes it",
        args.state_dir.display()
    );
    ExitCode::SUCCESS
}

/// `cellmesh-local status`: exit code 0 when the API server runs, 3 when it does not
/// (as LSB `status` commands do).
pub fn status(args: StateArgs) -> ExitCode {
    let Some(record) = read_record(&args.state_dir) else {
        println!(
            "cellmesh-local: not started by `up` in {}",
            args.state_dir.display()
        );
        return ExitCode::from(3);
    };
    if print_status(&args.state_dir, &record) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// Prints what runs; returns whether the API server does.
fn print_status(state: &Path, record: &Record) -> bool {
    let running = process::is_running(record.server.pid, &record.server.program);
    if running {
        let healthy = api_server_healthy(&record.kubeconfig);
        println!(
            "api server:  running (pid {}) {} — {}",
            record.server.pid,
            record.api_server,
            if healthy { "healthy" } else { "not answering" }
        );
        println!("components:  {}", record.components.join(", "));
        if record.components.iter().any(|c| c == "network") {
            println!("dns:         {}", record.dns);
        }
    } else {
        println!("api server:  stopped (state in {})", state.display());
    }
    match &record.prometheus {
        Some(prom) if process::is_running(prom.process.pid, &prom.process.program) => {
            println!(
                "prometheus:  running (pid {}) http://{} — {}",
                prom.process.pid,
                prom.listen,
                if prometheus::is_ready(prom.listen) {
                    "ready"
                } else {
                    "not ready"
                }
            );
        }
        Some(_) => println!("prometheus:  stopped"),
        None => println!("prometheus:  not started"),
    }
    println!("kubeconfig:  {}", record.kubeconfig.display());
    println!("logs:        {}", record.server.log.display());
    running
}

fn api_server_healthy(kubeconfig: &Path) -> bool {
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return false;
    };
    runtime.block_on(async {
        let check = async {
            let client = crate::client::from_kubeconfig(kubeconfig).await?;
            client.apiserver_version().await?;
            Ok::<(), anyhow::Error>(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), check).await,
            Ok(Ok(()))
        )
    })
}
