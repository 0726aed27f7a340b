//! `cargo xtask bench operator`: how fast the operator converges a large WorkModel, what an
//! unchanged re-reconcile costs, and the operator's memory.
//!
//! One `cellmesh-local apiserver` (no controllers, no node: only the operator writes) and one
//! `cellmesh-operator run --namespace bench` with the admin kubeconfig. For each size N
//! (default 100 and 1,000) a generated WorkModel of N services (chains of ten) is created, and
//! the run measures:
//! - **apply**: from issuing `kubectl create` to the moment a watch on the WorkModel shows
//!   `status.servicesReady = 0/N` — the operator writes that status only after every
//!   Deployment, Service and the ConfigMap has been applied (2N+1 objects);
//! - **no-op**: the operator-side duration of a reconcile that finds nothing to change
//!   (triggered by an annotation on the WorkModel), from the operator's own
//!   `reconcile_duration_seconds` histogram (sum and count deltas), median of
//!   `--noop-repetitions`;
//! - **RSS**: the operator's resident memory after the size (VmRSS) and its peak (VmHWM).
//!
//! Goals (issue 7): 100 services ≤ 2 s, 1,000 ≤ 10 s, no-op ≤ 1 s, RSS ≤ 64 MiB. The ratio
//! column divides each figure by its goal (below 1 meets it). Figures depend on the API
//! server as much as on the operator, and on what else the machine runs: say so when
//! recording them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::bench_procs::{self, spawn_registered};
use crate::util::{self, step};

const NS: &str = "bench";

#[derive(Debug, Args)]
pub struct OperatorBench {
    /// WorkModel sizes (services), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
    pub sizes: Vec<usize>,
    /// No-op reconciles measured per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub noop_repetitions: usize,
    /// Use the dev profile's binaries (fast to build, slower to run) instead of release.
    #[arg(long)]
    pub dev: bool,
}

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Row {
    size: usize,
    apply: Duration,
    noop: Duration,
    rss_kib: u64,
    peak_kib: u64,
}

pub fn bench_operator(args: &OperatorBench) -> Result<()> {
    bench_procs::install_interrupt_handler()?;
    let (local, operator) = build(args.dev)?;
    let state =
        std::env::temp_dir().join(format!("cellmesh-bench-operator-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;

    step("starting cellmesh-local apiserver");
    let (_apiserver, _addr) = start_apiserver(&local, &state)?;
    let kubeconfig = state.join("kubeconfig");
    let kubectl = |args: &[&str]| kubectl(&kubeconfig, args, None);
    kubectl(&[
        "create",
        "-f",
        &util::workspace_root().join("crds").display().to_string(),
    ])?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/workmodels.cellmesh.io",
        "--timeout=30s",
    ])?;
    kubectl(&["create", "namespace", NS])?;

    step("starting cellmesh-operator run --namespace bench");
    let mut child = spawn_registered(
        Command::new(&operator)
            .args([
                "run",
                "--namespace",
                NS,
                "--metrics-addr",
                "127.0.0.1:0",
                "--log",
                "warn",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )?;
    let stdout = child.stdout.take().context("operator stdout")?;
    let pid = child.id();
    let _operator = Guard(child);
    let metrics = first_line_address(stdout)?;

    let mut rows = Vec::new();
    for &size in &args.sizes {
        step(&format!("WorkModel of {size} services"));
        let name = format!("mesh-{size}");
        let apply = time_apply(&kubeconfig, &name, size)?;
        println!(
            "  applied {} objects and status in {:.2} s",
            2 * size + 1,
            apply.as_secs_f64()
        );
        let mut noops = Vec::new();
        for i in 0..args.noop_repetitions {
            noops.push(time_noop(&kubeconfig, metrics, &name, i)?);
        }
        noops.sort();
        let noop = noops[noops.len() / 2];
        println!(
            "  no-op reconcile: median {:.3} s of {}",
            noop.as_secs_f64(),
            noops.len()
        );
        let (rss_kib, peak_kib) = memory(pid)?;
        rows.push(Row {
            size,
            apply,
            noop,
            rss_kib,
            peak_kib,
        });
    }
    print!("{}", table(&rows, args.dev));
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

fn build(dev: bool) -> Result<(PathBuf, PathBuf)> {
    let mut cargo = vec!["build", "-p", "cellmesh-local", "-p", "cellmesh-operator"];
    if !dev {
        cargo.push("--release");
    }
    step(&format!(
        "building {} cellmesh-local and cellmesh-operator",
        if dev { "dev" } else { "release" }
    ));
    util::cargo(&cargo)?;
    let dir = bench_procs::target_dir()?.join(if dev { "debug" } else { "release" });
    Ok((dir.join("cellmesh-local"), dir.join("cellmesh-operator")))
}

fn start_apiserver(binary: &Path, state: &Path) -> Result<(Guard, SocketAddr)> {
    let help = Command::new(binary)
        .args(["apiserver", "--help"])
        .output()?;
    let mut command = Command::new(binary);
    command
        .args([
            "apiserver",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--state-dir",
        ])
        .arg(state);
    if String::from_utf8_lossy(&help.stdout).contains("--controllers") {
        command.args(["--controllers", "none"]);
    }
    let mut child = spawn_registered(command.stdout(Stdio::piped()).stderr(Stdio::inherit()))?;
    let stdout = child.stdout.take().context("apiserver stdout")?;
    let guard = Guard(child);
    let addr = first_line_address(stdout)?;
    Ok((guard, addr))
}

/// The first `…http(s)://ADDR` printed on `stdout` (within 30 s); the rest is drained.
fn first_line_address(stdout: std::process::ChildStdout) -> Result<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("://").nth(1) {
                let addr = addr
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .context("no listening address printed within 30 s")?;
    addr.parse()
        .with_context(|| format!("`{addr}` is not an address"))
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut command = Command::new("kubectl");
    command
        .args(args)
        .arg("--request-timeout=60s")
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command.spawn().context("cannot run kubectl")?;
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().context("kubectl stdin")?;
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A WorkModel of `size` services in chains of ten (`s0 → s1 → … → s9`, `s10 → …`).
pub fn generated_workmodel(name: &str, size: usize) -> String {
    let mut yaml = format!(
        "apiVersion: cellmesh.io/v1alpha1\nkind: WorkModel\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  services:\n"
    );
    for i in 0..size {
        yaml.push_str(&format!(
            "    s{i}:\n      internalService:\n        computePi: {{rangeComplexity: [10, 20]}}\n"
        ));
        if i % 10 != 9 && i + 1 < size {
            yaml.push_str(&format!(
                "      externalServices:\n        - services: [s{}]\n",
                i + 1
            ));
        }
    }
    yaml
}

/// Creates the WorkModel and waits (on a watch) for its status to list every service.
fn time_apply(kubeconfig: &Path, name: &str, size: usize) -> Result<Duration> {
    let done = format!("0/{size}");
    // Watch first, so no status write can be missed.
    let mut watch = Command::new("kubectl")
        .args([
            "get",
            "workmodel",
            "-n",
            NS,
            "--watch",
            "--output-watch-events=false",
        ])
        .args([
            "-o",
            "jsonpath={.metadata.name} {.status.servicesReady}{\"\\n\"}",
        ])
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start kubectl --watch")?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let _watch = Guard(watch);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let yaml = generated_workmodel(name, size);
    // From issuing the create (kubectl's own start-up, ~0.1 s, included: it is part of the
    // user's wait) to the status.
    let started = Instant::now();
    kubectl(kubeconfig, &["create", "-f", "-"], Some(&yaml))?;
    let deadline = started + Duration::from_secs(300);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = rx
            .recv_timeout(left)
            .with_context(|| format!("{name}: no status {done} within 300 s"))?;
        if line.trim() == format!("{name} {done}") {
            return Ok(at.saturating_duration_since(started));
        }
    }
}

/// `(sum, count)` of the WorkModel controller's reconcile durations.
fn reconcile_totals(metrics: SocketAddr) -> Result<(f64, u64)> {
    let (_, text) = bench_procs::http_get(metrics, "/metrics")?;
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let sum = value("cellmesh_operator_reconcile_duration_seconds_sum{controller=\"workmodel\"}")
        .unwrap_or(0.0);
    let count =
        value("cellmesh_operator_reconcile_duration_seconds_count{controller=\"workmodel\"}")
            .unwrap_or(0.0);
    Ok((sum, count as u64))
}

/// Waits until no reconcile has run for a second, then triggers one with an annotation and
/// returns its operator-side duration.
fn time_noop(kubeconfig: &Path, metrics: SocketAddr, name: &str, round: usize) -> Result<Duration> {
    let mut last = reconcile_totals(metrics)?;
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while quiet_since.elapsed() < Duration::from_secs(1) {
        if Instant::now() > deadline {
            bail!("the operator kept reconciling for 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
        let now = reconcile_totals(metrics)?;
        if now.1 != last.1 {
            last = now;
            quiet_since = Instant::now();
        }
    }
    kubectl(
        kubeconfig,
        &[
            "annotate",
            "--overwrite",
            "-n",
            NS,
            "workmodel",
            name,
            &format!("bench/round={round}"),
        ],
        None,
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = reconcile_totals(metrics)?;
        if now.1 > last.1 {
            let runs = (now.1 - last.1) as f64;
            return Ok(Duration::from_secs_f64(((now.0 - last.0) / runs).max(0.0)));
        }
        if Instant::now() > deadline {
            bail!("no reconcile within 60 s of the annotation");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (VmRSS, VmHWM) of a process in KiB.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn table(rows: &[Row], dev: bool) -> String {
    use std::fmt::Write as _;
    let goal = |size: usize| if size <= 100 { 2.0 } else { 10.0 };
    let mut out = String::from(
        "\n| services | apply + status (s) | ÷ goal | no-op reconcile (s) | ÷ 1 s | RSS / peak (MiB) | ÷ 64 MiB |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let apply = r.apply.as_secs_f64();
        let noop = r.noop.as_secs_f64();
        let peak = r.peak_kib as f64 / 1024.0;
        let _ = writeln!(
            out,
            "| {} | {apply:.2} | {:.2} | {noop:.3} | {noop:.3} | {:.1} / {peak:.1} | {:.2} |",
            r.size,
            apply / goal(r.size),
            r.rss_kib as f64 / 1024.0,
            peak / 64.0
        );
    }
    let _ = writeln!(
        out,
        "\n{} binaries; one cellmesh-local apiserver without controllers; the machine's other load is not controlled.",
        if dev { "dev-profile" } else { "release" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_workmodel_chains_services_in_tens() {
        let yaml = generated_workmodel("m", 12);
        assert_eq!(yaml.matches("computePi").count(), 12);
        assert!(yaml.contains("    s8:\n      internalService:\n        computePi: {rangeComplexity: [10, 20]}\n      externalServices:\n        - services: [s9]\n"));
        assert!(!yaml.contains("services: [s10]"), "s9 ends a chain");
        assert!(yaml.contains("services: [s11]"));
        assert!(
            !yaml.contains("services: [s12]"),
            "no call past the last service"
        );
    }
}
