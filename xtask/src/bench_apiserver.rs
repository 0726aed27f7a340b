//! `cargo xtask bench apiserver`: the API server's durable write rate, watch delivery
//! latency, list time and memory, driven by real kube-rs clients.
//!
//! Builds release `cellmesh-local` and the load driver (`local/examples/apiserver_load.rs`,
//! whose docs define each figure), starts the server on a free 127.0.0.x port with a fresh
//! state directory under the target dir, runs the driver against its kubeconfig, reads the
//! server's resident memory (now and peak) from `/proc`, and prints the figures against
//! issue 5's goals. `--record` writes the table into `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::bench::{load_average, replace_between_markers, thousands};
use crate::bench_procs::{self, Servers};
use crate::util::{self, step, workspace_root};

const DOC: &str = "docs/benchmarks.md";
const BEGIN: &str =
    "<!-- bench-apiserver:begin (written by `cargo xtask bench apiserver --record`) -->";
const END: &str = "<!-- bench-apiserver:end -->";

/// Issue 5's goals.
const GOAL_WRITES_PER_SEC: f64 = 2_000.0;
const GOAL_WATCH_P99_MS: f64 = 50.0;
const GOAL_RSS_MIB: f64 = 256.0;

#[derive(Debug, Args)]
pub struct ApiserverBench {
    /// ConfigMaps created (and then listed).
    #[arg(long, default_value_t = 10_000)]
    pub objects: usize,
    /// Concurrent writing clients, each with its own connection.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Concurrent watchers during the watch-latency phase.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Objects created while the watchers watch (each watcher gets every one).
    #[arg(long, default_value_t = 1_000)]
    pub watch_events: usize,
    /// Objects created at a steady rate while the watchers watch (the paced phase).
    #[arg(long, default_value_t = 500)]
    pub paced_events: usize,
    /// Creates per second in the paced phase.
    #[arg(long, default_value_t = 100.0)]
    pub paced_rate: f64,
    /// A note on the conditions for the recorded table, e.g. "idle machine".
    #[arg(long)]
    pub note: Option<String>,
    /// Write the table into docs/benchmarks.md (between its bench-apiserver markers).
    #[arg(long)]
    pub record: bool,
}

pub fn run(args: &ApiserverBench) -> Result<()> {
    bench_procs::install_interrupt_handler()?;
    step("building release cellmesh-local and the load driver");
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "cellmesh-local",
        "--bin",
        "cellmesh-local",
        "--example",
        "apiserver_load",
    ])?;
    let release = bench_procs::target_dir()?.join("release");
    let server_bin = release.join("cellmesh-local");
    let driver_bin = release.join("examples").join("apiserver_load");
    for path in [&server_bin, &driver_bin] {
        if !path.is_file() {
            bail!("the build did not produce {}", path.display());
        }
    }

    let work = bench_procs::target_dir()?.join("bench-apiserver");
    let state = work.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("cannot clear {}", state.display()))?;
    }
    let addr = bench_procs::free_addr(Ipv4Addr::new(127, 0, 0, 61))?;
    let mut servers = Servers::new(&work)?;
    step(&format!("starting cellmesh-local apiserver on {addr}"));
    let pid = servers.start(
        "apiserver",
        Command::new(&server_bin)
            .arg("apiserver")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(&state)
            .arg("--log")
            .arg("warn")
            // The API server alone: the controllers would add a kube-root-ca.crt ConfigMap to
            // the bench's namespaces and compete for the CPU being measured.
            .args(["--controllers", "none"]),
    )?;
    let kubeconfig = state.join("kubeconfig");
    wait_listening(addr, &kubeconfig, Duration::from_secs(30))?;

    let load_before = load_average();
    step(&format!(
        "driving it: {} creates by {} clients, {} watchers × ({} burst + {} paced events), lists",
        args.objects, args.writers, args.watchers, args.watch_events, args.paced_events
    ));
    let output = bench_procs::run_captured(
        Command::new(&driver_bin)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--objects")
            .arg(args.objects.to_string())
            .arg("--writers")
            .arg(args.writers.to_string())
            .arg("--watchers")
            .arg(args.watchers.to_string())
            .arg("--watch-events")
            .arg(args.watch_events.to_string())
            .arg("--paced-events")
            .arg(args.paced_events.to_string())
            .arg("--paced-rate")
            .arg(args.paced_rate.to_string())
            .stderr(Stdio::inherit()),
    )?;
    let memory = Memory::of(pid)?;
    let load_after = load_average();
    servers.stop();
    let report: Value = serde_json::from_str(output.trim())
        .with_context(|| format!("the load driver printed no JSON report: {output}"))?;

    let table = render(&report, &memory);
    let facts = conditions(args, &load_before, &load_after);
    println!("\n{table}\n{facts}");
    if args.record {
        let path = workspace_root().join(DOC);
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let section = format!("{facts}\n\n{table}");
        std::fs::write(&path, replace_between_markers(&doc, BEGIN, END, &section))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("recorded in {DOC}");
    }
    Ok(())
}

/// Waits for the kubeconfig to be written and the port to accept connections.
fn wait_listening(addr: SocketAddr, kubeconfig: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if kubeconfig.is_file()
            && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the API server did not listen on {addr} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resident memory of the server after the run, and its peak.
struct Memory {
    rss_mib: f64,
    peak_mib: f64,
}

impl Memory {
    fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context("cannot read the server's /proc status")?;
        Ok(Self {
            rss_mib: status_kib(&status, "VmRSS:")? / 1024.0,
            peak_mib: status_kib(&status, "VmHWM:")? / 1024.0,
        })
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(status: &str, field: &str) -> Result<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {field} in /proc status"))
}

fn number(report: &Value, key: &str) -> f64 {
    report[key].as_f64().unwrap_or(f64::NAN)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// The figures as a Markdown table with the goals.
fn render(report: &Value, memory: &Memory) -> String {
    let writes = number(report, "writes_per_sec");
    let mut out = String::new();
    out.push_str("| figure | measured | goal | |\n|---|---:|---:|---|\n");
    let _ = writeln!(
        out,
        "| durable creates/s ({} ConfigMaps, {} kube-rs clients) | {} (p50 {:.1} ms, p99 {:.1} ms per create) | ≥ {} | {} |",
        number(report, "objects"),
        number(report, "writers"),
        thousands(writes),
        number(report, "write_p50_ms"),
        number(report, "write_p99_ms"),
        thousands(GOAL_WRITES_PER_SEC),
        verdict(writes >= GOAL_WRITES_PER_SEC),
    );
    for (phase, label) in [
        (
            "burst",
            format!(
                "burst: {} creates by {} clients",
                number(report, "watch_events"),
                number(report, "writers")
            ),
        ),
        (
            "paced",
            format!(
                "paced: {} creates at {}/s",
                number(report, "paced_events"),
                number(report, "paced_rate")
            ),
        ),
    ] {
        for (span, what) in [
            ("ack", "write acknowledged → watcher has the event"),
            ("send", "create sent → watcher has the event"),
        ] {
            let figure = |stat: &str| number(&report[phase], &format!("{span}_{stat}_ms"));
            let p99 = figure("p99");
            let _ = writeln!(
                out,
                "| watch delivery to {} watchers, {label}; {what} | p99 {:.1} ms (p50 {:.1}, max {:.1}) | p99 ≤ {GOAL_WATCH_P99_MS:.0} ms | {} |",
                number(report, "watchers"),
                p99,
                figure("p50"),
                figure("max"),
                verdict(p99 <= GOAL_WATCH_P99_MS),
            );
        }
    }
    let _ = writeln!(
        out,
        "| list {} objects, one request (median, best) | {:.0} ms ({:.0} ms) | – | |",
        number(report, "objects"),
        number(report, "list_ms_median"),
        number(report, "list_ms_best"),
    );
    let _ = writeln!(
        out,
        "| list {} objects in pages of 500 (median) | {:.0} ms | – | |",
        number(report, "objects"),
        number(report, "list_paged_ms_median"),
    );
    let _ = writeln!(
        out,
        "| server RSS after the run (peak) | {:.0} MiB ({:.0} MiB) | ≤ {GOAL_RSS_MIB:.0} MiB | {} |",
        memory.rss_mib,
        memory.peak_mib,
        verdict(memory.peak_mib <= GOAL_RSS_MIB),
    );
    out
}

fn conditions(args: &ApiserverBench, load_before: &str, load_after: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut out = format!(
        "Measured {date} on {cores} cores shared by the server and the load driver (release \
         builds, loopback HTTPS, SQLite state on the target dir's disk). Load average before: \
         {load_before}; after: {load_after}."
    );
    if let Some(note) = &args.note {
        let _ = write!(out, " Note: {note}.");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proc_status_fields_parse() {
        let status = "Name:\tcellmesh-local\nVmHWM:\t  131072 kB\nVmRSS:\t   65536 kB\n";
        assert_eq!(status_kib(status, "VmRSS:").unwrap(), 65536.0);
        assert_eq!(status_kib(status, "VmHWM:").unwrap(), 131_072.0);
        assert!(status_kib(status, "VmSwap:").is_err());
    }

    #[test]
    fn the_table_checks_each_goal() {
        let report = json!({"objects": 10000, "writers": 16, "writes_per_sec": 2500.0,
            "write_p50_ms": 5.0, "write_p99_ms": 20.0, "watchers": 100, "watch_events": 1000,
"paced_events": 500, "paced_rate": 100.0,
            "burst": {"ack_p50_ms": 10.0, "ack_p99_ms": 80.0, "ack_max_ms": 120.0,
                      "send_p50_ms": 12.0, "send_p99_ms": 90.0, "send_max_ms": 130.0},
            "paced": {"ack_p50_ms": 1.0, "ack_p99_ms": 4.0, "ack_max_ms": 9.0,
                      "send_p50_ms": 3.0, "send_p99_ms": 8.0, "send_max_ms": 12.0},
            "list_ms_median": 90.0, "list_ms_best": 80.0, "list_paged_ms_median": 150.0});
        let table = render(
            &report,
            &Memory {
                rss_mib: 100.0,
                peak_mib: 300.0,
            },
        );
        let line = |needle: &str| {
            table
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(line("creates/s").contains("2,500") && line("creates/s").ends_with("| met |"));
        assert!(
            line("burst: 1000 creates by 16 clients; write acknowledged").ends_with("NOT met |"),
            "{table}"
        );
        assert!(
            line("paced: 500 creates at 100/s; create sent").contains("p99 8.0 ms")
                && line("paced: 500 creates at 100/s; create sent").ends_with("| met |"),
            "{table}"
        );
        assert!(line("RSS").ends_with("NOT met |"), "{table}");
        assert!(line("one request").contains("90 ms (80 ms)"), "{table}");
    }
}
