//! `cargo xtask bench cell`: the cell's throughput against the bare hyper ceiling and against
//! µBench's published figures, measured with two load generators in one run.
//!
//! Targets, one at a time (only that target's servers run while it is measured):
//! (a) `hello`, the bare hyper server (the ceiling); (b) the cell on trivial computePi
//! (`examples/bench/trivial.json`, µBench's baseline workmodel); (c) the s0→s1 chain
//! (`examples/bench/chain.json`). Each target gets a warm-up, then `repetitions` rounds of
//! cellmesh-load (closed loop) and `wrk -t2 -c32 --latency`, alternating which goes first.
//! The table reports the median (and range) per target and tool, the ratio to the hyper
//! ceiling measured with the same tool, and the factor over µBench's figures.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::bench_parse::{Measurement, parse_load_json, parse_wrk};
use crate::bench_procs::{self, Binaries, Servers};
use crate::util::{step, workspace_root};

/// µBench's cell measured on this kind of machine (issue 3; `shared/reference/mubench.md` §3):
/// Gunicorn workers=2 threads=16, `wrk -t2 -c32`, medians.
pub const MUBENCH_CELL: Reference = Reference {
    label: "µBench cell (published)",
    requests_per_sec: 1994.0,
    p50_ms: 17.0,
    p99_ms: 48.0,
};
pub const MUBENCH_CHAIN: Reference = Reference {
    label: "µBench s0→s1 (published)",
    requests_per_sec: 470.0,
    p50_ms: 78.0,
    p99_ms: 141.0,
};

/// Where `--record` writes the table.
const DOC: &str = "docs/benchmarks.md";
const BEGIN: &str = "<!-- bench-cell:begin (written by `cargo xtask bench cell --record`) -->";
const END: &str = "<!-- bench-cell:end -->";

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The cell vs the bare hyper server vs µBench's published figures, with cellmesh-load and
    /// wrk in one run.
    Cell(CellBench),
    /// The cell engine on CPU-heavy computePi: 1 vs 2 worker processes, vs µBench's layout,
    /// and p99 under 2× overload with admission vs an unbounded queue.
    Engine(crate::bench_engine::EngineBench),
    /// The API server: durable creates/s from 16 kube-rs clients, p99 watch delivery to
    /// 100 watchers, list of 10,000 objects, server RSS — against issue 5's goals.
    Apiserver(crate::bench_apiserver::ApiserverBench),
    /// The operator: time to apply a 100- and a 1,000-service WorkModel (objects and
    /// status), the cost of a no-op reconcile, and the operator's memory.
    Operator(crate::bench_operator::OperatorBench),
    /// In-place vertical scaling on one load step: static small vs static large CPU limit
    /// vs the example ScalingPolicy (p99, CPU-seconds allocated, reaction time).
    Scaling(crate::bench_scaling::ScalingBench),
}

#[derive(Debug, Args)]
pub struct CellBench {
    /// Seconds per measurement (wrk takes whole seconds).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Measurements per tool and target; the table shows the median.
    #[arg(long, default_value_t = 3)]
    pub repetitions: u32,
    /// Seconds of warm-up load on each target before measuring.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Connections of both tools (µBench's baseline used 32).
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Threads of both tools (µBench's baseline used wrk -t2).
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// A note on the conditions for the recorded table, e.g. "machine shared with 3 builds".
    #[arg(long)]
    pub note: Option<String>,
    /// Write the table into docs/benchmarks.md (between its bench-cell markers).
    #[arg(long)]
    pub record: bool,
    /// Measure only these targets (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub targets: Vec<Target>,
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Cell(args) => bench_cell(&args),
        BenchCommand::Engine(args) => crate::bench_engine::run(&args),
        BenchCommand::Apiserver(args) => crate::bench_apiserver::run(&args),
        BenchCommand::Operator(args) => crate::bench_operator::bench_operator(&args),
        BenchCommand::Scaling(args) => crate::bench_scaling::run(&args),
    }
}

/// A published reference row.
#[derive(Clone, Copy, Debug)]
pub struct Reference {
    pub label: &'static str,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The bare hyper server.
    Hello,
    /// The cell on trivial computePi.
    Cell,
    /// The s0→s1 chain of trivial cells.
    Chain,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Hello, Target::Cell, Target::Chain];

    pub fn label(self) -> &'static str {
        match self {
            Target::Hello => "hyper hello (ceiling)",
            Target::Cell => "cell, trivial computePi",
            Target::Chain => "cell chain s0→s1",
        }
    }

    fn reference(self) -> Option<Reference> {
        match self {
            Target::Hello => None,
            Target::Cell => Some(MUBENCH_CELL),
            Target::Chain => Some(MUBENCH_CHAIN),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    CellmeshLoad,
    Wrk,
}

impl Tool {
    pub const ALL: [Tool; 2] = [Tool::CellmeshLoad, Tool::Wrk];

    pub fn label(self) -> &'static str {
        match self {
            Tool::CellmeshLoad => "cellmesh-load",
            Tool::Wrk => "wrk",
        }
    }
}

/// All measurements of one tool on one target.
#[derive(Clone, Debug)]
pub struct Series {
    pub target: Target,
    pub tool: Tool,
    pub runs: Vec<Measurement>,
}

/// Medians and range of a series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub requests_per_sec: f64,
    pub min_rps: f64,
    pub max_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// The median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    } else {
        sorted[mid]
    })
}

pub fn summarize(runs: &[Measurement]) -> Option<Summary> {
    let rps: Vec<f64> = runs.iter().map(|m| m.requests_per_sec).collect();
    Some(Summary {
        requests_per_sec: median(&rps)?,
        min_rps: rps.iter().copied().fold(f64::INFINITY, f64::min),
        max_rps: rps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        p50_ms: median(&runs.iter().map(|m| m.p50_ms).collect::<Vec<_>>())?,
        p99_ms: median(&runs.iter().map(|m| m.p99_ms).collect::<Vec<_>>())?,
        errors: runs.iter().map(|m| m.errors).sum(),
    })
}

fn find(series: &[Series], target: Target, tool: Tool) -> Option<&Series> {
    series.iter().find(|s| s.target == target && s.tool == tool)
}

/// `x / baseline`, or `None` when the baseline is missing or zero.
pub fn ratio(value: f64, baseline: Option<f64>) -> Option<f64> {
    baseline.filter(|b| *b > 0.0).map(|b| value / b)
}

/// The results as a Markdown table, reference rows included.
pub fn render_table(series: &[Series]) -> String {
    let mut out = String::new();
    out.push_str("| target | tool | req/s (median, range) | p50 ms | p99 ms | errors | ÷ hyper (same tool) | × µBench req/s |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for target in Target::ALL {
        for tool in Tool::ALL {
            let Some(summary) = find(series, target, tool).and_then(|s| summarize(&s.runs)) else {
                continue;
            };
            let hyper = find(series, Target::Hello, tool)
                .and_then(|s| summarize(&s.runs))
                .map(|s| s.requests_per_sec);
            let vs_hyper = ratio(summary.requests_per_sec, hyper);
            let vs_mubench = target
                .reference()
                .and_then(|r| ratio(summary.requests_per_sec, Some(r.requests_per_sec)));
            let _ = writeln!(
                out,
                "| {} | {} | {} ({}–{}) | {:.2} | {:.2} | {} | {} | {} |",
                target.label(),
                tool.label(),
                thousands(summary.requests_per_sec),
                thousands(summary.min_rps),
                thousands(summary.max_rps),
                summary.p50_ms,
                summary.p99_ms,
                summary.errors,
                factor(vs_hyper),
                factor(vs_mubench),
            );
        }
        let measured = series
            .iter()
            .any(|s| s.target == target && !s.runs.is_empty());
        if let Some(reference) = target.reference().filter(|_| measured) {
            let _ = writeln!(
                out,
                "| {} | wrk | {} | {:.0} | {:.0} | 0 | – | 1.0× |",
                reference.label,
                thousands(reference.requests_per_sec),
                reference.p50_ms,
                reference.p99_ms,
            );
        }
    }
    out
}

/// Issue 3's targets, checked per tool.
pub fn render_verdicts(series: &[Series]) -> String {
    let mut out = String::new();
    for tool in Tool::ALL {
        let rps = |target| {
            find(series, target, tool)
                .and_then(|s| summarize(&s.runs))
                .map(|s| s.requests_per_sec)
        };
        let (Some(hello), Some(cell), Some(chain)) =
            (rps(Target::Hello), rps(Target::Cell), rps(Target::Chain))
        else {
            continue;
        };
        let check = |ok: bool| if ok { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "- {}: cell ≥ 40,000 req/s: {} ({}); cell ≥ 0.8× hyper: {} ({:.2}×); chain ≥ 10× µBench (4,700 req/s): {} ({})",
            tool.label(),
            check(cell >= 40_000.0),
            thousands(cell),
            check(cell >= 0.8 * hello),
            cell / hello,
            check(chain >= 4_700.0),
            thousands(chain),
        );
    }
    out
}

fn factor(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}×"))
}

/// `41234.7` → `41,235`.
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "–".to_owned();
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = value.round().abs() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Replaces the text between the `begin` and `end` marker lines (exclusive), or appends the
/// markers with `content` when they are missing.
pub fn replace_between_markers(doc: &str, begin: &str, end: &str, content: &str) -> String {
    let content = content.trim_end();
    if let (Some(b), Some(e)) = (doc.find(begin), doc.find(end))
        && b < e
    {
        let head = &doc[..b + begin.len()];
        let tail = &doc[e..];
        return format!("{head}\n{content}\n{tail}");
    }
    let mut out = doc.trim_end().to_owned();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    format!("{out}{begin}\n{content}\n{end}\n")
}

/// Machine and load facts for the record.
fn conditions(args: &CellBench, load_before: &str, load_after: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut out = format!(
        "Measured {date} on {cores} × {cpu}, Linux {kernel}; servers and load generators share \
         these cores (loopback, 127.0.0.x). Each figure is the median of {} runs of {} s after a \
         {} s warm-up, {} connections and {} threads for both tools (wrk -t{} -c{} --latency; \
         cellmesh-load closed loop). Load average before: {load_before}; after: {load_after}.",
        args.repetitions,
        args.duration,
        args.warmup,
        args.connections,
        args.threads,
        args.threads,
        args.connections,
    );
    if let Some(note) = &args.note {
        let _ = write!(out, " Note: {note}.");
    }
    out
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Addresses on distinct loopback IPs, so each server looks like its own host.
struct Addrs {
    rest: SocketAddr,
    grpc: SocketAddr,
    admin: SocketAddr,
}

fn addrs(last_octet: u8) -> Result<Addrs> {
    let ip = Ipv4Addr::new(127, 0, 0, last_octet);
    Ok(Addrs {
        rest: bench_procs::free_addr(ip)?,
        grpc: bench_procs::free_addr(ip)?,
        admin: bench_procs::free_addr(ip)?,
    })
}

fn cell_command(
    binaries: &Binaries,
    workmodel: &Path,
    service: &str,
    addrs: &Addrs,
    resolve: &[(&str, SocketAddr)],
) -> Command {
    let mut command = Command::new(&binaries.cell);
    command
        .arg("--workmodel")
        .arg(workmodel)
        .args(["--service", service])
        .arg("--listen")
        .arg(addrs.rest.to_string())
        .arg("--grpc-listen")
        .arg(addrs.grpc.to_string())
        .arg("--admin-listen")
        .arg(addrs.admin.to_string());
    for (name, addr) in resolve {
        command.arg("--resolve").arg(format!("{name}={addr}"));
    }
    command
}

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const CELL_PATH: &str = "/api/v1";

/// Starts the servers of `target`; returns the URL to load.
fn start_target(target: Target, binaries: &Binaries, servers: &mut Servers) -> Result<String> {
    let examples = workspace_root().join("examples/bench");
    match target {
        Target::Hello => {
            let addr = bench_procs::free_addr(Ipv4Addr::new(127, 0, 0, 11))?;
            servers.start(
                "hello",
                Command::new(&binaries.hello)
                    .arg("--listen")
                    .arg(addr.to_string()),
            )?;
            servers.wait_ready("hello", addr, "/", READY_TIMEOUT)?;
            Ok(format!("http://{addr}/"))
        }
        Target::Cell => {
            let s0 = addrs(12)?;
            let workmodel = examples.join("trivial.json");
            servers.start(
                "cell-s0",
                &mut cell_command(binaries, &workmodel, "s0", &s0, &[]),
            )?;
            servers.wait_ready("cell-s0", s0.rest, CELL_PATH, READY_TIMEOUT)?;
            Ok(format!("http://{}{CELL_PATH}", s0.rest))
        }
        Target::Chain => {
            let workmodel = examples.join("chain.json");
            let s1 = addrs(14)?;
            servers.start(
                "chain-s1",
                &mut cell_command(binaries, &workmodel, "s1", &s1, &[]),
            )?;
            servers.wait_ready("chain-s1", s1.rest, CELL_PATH, READY_TIMEOUT)?;
            let s0 = addrs(13)?;
            servers.start(
                "chain-s0",
                &mut cell_command(binaries, &workmodel, "s0", &s0, &[("s1", s1.rest)]),
            )?;
            servers.wait_ready("chain-s0", s0.rest, CELL_PATH, READY_TIMEOUT)?;
            Ok(format!("http://{}{CELL_PATH}", s0.rest))
        }
    }
}

fn measure(
    tool: Tool,
    args: &CellBench,
    binaries: &Binaries,
    url: &str,
    seconds: u64,
) -> Result<Measurement> {
    match tool {
        Tool::CellmeshLoad => {
            let output = bench_procs::run_captured(
                Command::new(&binaries.load)
                    .arg(url)
                    .args(["-c", &args.connections.to_string()])
                    .args(["-t", &args.threads.to_string()])
                    .args(["-d", &format!("{seconds}s")])
                    .args(["--output", "json", "--quiet"]),
            )?;
            parse_load_json(&output)
        }
        Tool::Wrk => {
            let output = bench_procs::run_captured(
                Command::new("wrk")
                    .arg(format!("-t{}", args.threads))
                    .arg(format!("-c{}", args.connections))
                    .arg(format!("-d{seconds}s"))
                    .arg("--latency")
                    .arg(url),
            )?;
            parse_wrk(&output)
        }
    }
}

fn bench_cell(args: &CellBench) -> Result<()> {
    if args.duration == 0 || args.repetitions == 0 || args.connections == 0 || args.threads == 0 {
        bail!("--duration, --repetitions, --connections and --threads must be at least 1");
    }
    bench_procs::install_interrupt_handler()?;
    let binaries = bench_procs::build_release(true)?;
    bench_procs::ensure_wrk()?;
    let log_dir = bench_procs::target_dir()?.join("bench-logs");
    let load_before = load_average();
    let mut series: Vec<Series> = Vec::new();

    let targets: Vec<Target> = if args.targets.is_empty() {
        Target::ALL.to_vec()
    } else {
        Target::ALL
            .into_iter()
            .filter(|t| args.targets.contains(t))
            .collect()
    };
    for target in targets {
        step(&format!("{}: starting", target.label()));
        let mut servers = Servers::new(&log_dir)?;
        let url = start_target(target, &binaries, &mut servers)?;
        eprintln!("serving {url}; warm-up {} s", args.warmup);
        if args.warmup > 0 {
            measure(Tool::CellmeshLoad, args, &binaries, &url, args.warmup)
                .context("warm-up run failed")?;
        }
        let mut runs: Vec<Series> = Tool::ALL
            .iter()
            .map(|tool| Series {
                target,
                tool: *tool,
                runs: Vec::new(),
            })
            .collect();
        for repetition in 0..args.repetitions {
            // Alternate the order so neither tool always runs on a warmer (or hotter) box.
            let order: Vec<usize> = if repetition % 2 == 0 {
                vec![0, 1]
            } else {
                vec![1, 0]
            };
            for index in order {
                let tool = runs[index].tool;
                let m = measure(tool, args, &binaries, &url, args.duration)
                    .with_context(|| format!("{} on {}", tool.label(), target.label()))?;
                eprintln!(
                    "  run {}/{} {:>13}: {:>9} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
                    repetition + 1,
                    args.repetitions,
                    tool.label(),
                    thousands(m.requests_per_sec),
                    m.p50_ms,
                    m.p99_ms,
                    m.errors
                );
                runs[index].runs.push(m);
            }
        }
        series.extend(runs);
        servers.stop();
    }

    let table = render_table(&series);
    let verdicts = render_verdicts(&series);
    let facts = conditions(args, &load_before, &load_average());
    println!("\n{table}\n{verdicts}\n{facts}");
    if args.record {
        let path: PathBuf = workspace_root().join(DOC);
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let section = format!("{facts}\n\n{table}\n{verdicts}");
        std::fs::write(&path, replace_between_markers(&doc, BEGIN, END, &section))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("recorded in {DOC}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rps: f64, p50: f64, p99: f64) -> Measurement {
        Measurement {
            requests_per_sec: rps,
            p50_ms: p50,
            p99_ms: p99,
            errors: 0,
        }
    }

    fn series() -> Vec<Series> {
        let s = |target, tool, runs| Series { target, tool, runs };
        vec![
            s(
                Target::Hello,
                Tool::CellmeshLoad,
                vec![
                    m(50_000.0, 0.5, 2.0),
                    m(52_000.0, 0.4, 1.0),
                    m(48_000.0, 0.6, 3.0),
                ],
            ),
            s(Target::Hello, Tool::Wrk, vec![m(60_000.0, 0.4, 1.5)]),
            s(
                Target::Cell,
                Tool::CellmeshLoad,
                vec![m(45_000.0, 0.6, 2.5), m(40_000.0, 0.7, 2.9)],
            ),
            s(Target::Cell, Tool::Wrk, vec![m(42_000.0, 0.6, 2.0)]),
            s(
                Target::Chain,
                Tool::CellmeshLoad,
                vec![m(20_000.0, 1.5, 5.0)],
            ),
            s(Target::Chain, Tool::Wrk, vec![m(4_000.0, 7.0, 20.0)]),
        ]
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn summaries_take_medians_and_range() {
        let s = summarize(&series()[0].runs).unwrap();
        assert_eq!(s.requests_per_sec, 50_000.0);
        assert_eq!((s.min_rps, s.max_rps), (48_000.0, 52_000.0));
        assert_eq!((s.p50_ms, s.p99_ms), (0.5, 2.0));
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(42.0, Some(21.0)), Some(2.0));
        assert_eq!(ratio(42.0, Some(0.0)), None);
        assert_eq!(ratio(42.0, None), None);
    }

    #[test]
    fn table_has_ratios_per_tool_and_reference_rows() {
        let table = render_table(&series());
        let rows: Vec<&str> = table.lines().collect();
        assert!(rows[0].starts_with("| target | tool |"));
        assert_eq!(
            rows[2],
            "| hyper hello (ceiling) | cellmesh-load | 50,000 (48,000–52,000) | 0.50 | 2.00 | 0 | 1.00× | – |"
        );
        // The cell over hyper with the same tool: 42.5k / 50k and 42k / 60k.
        assert_eq!(
            rows[4],
            "| cell, trivial computePi | cellmesh-load | 42,500 (40,000–45,000) | 0.65 | 2.70 | 0 | 0.85× | 21.31× |"
        );
        assert_eq!(
            rows[5],
            "| cell, trivial computePi | wrk | 42,000 (42,000–42,000) | 0.60 | 2.00 | 0 | 0.70× | 21.06× |"
        );
        assert_eq!(
            rows[6],
            "| µBench cell (published) | wrk | 1,994 | 17 | 48 | 0 | – | 1.0× |"
        );
        assert!(
            rows[7].contains("| 20,000 (20,000–20,000) |")
                && rows[7].ends_with("| 0.40× | 42.55× |")
        );
        assert_eq!(
            rows[9],
            "| µBench s0→s1 (published) | wrk | 470 | 78 | 141 | 0 | – | 1.0× |"
        );
        assert_eq!(rows.len(), 10);
        // Reference rows only for targets that were measured.
        let hello_only = render_table(&series()[..2]);
        assert_eq!(hello_only.lines().count(), 4, "{hello_only}");
        assert!(!hello_only.contains("published"));
    }

    #[test]
    fn verdicts_check_issue_targets() {
        let verdicts = render_verdicts(&series());
        let lines: Vec<&str> = verdicts.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("- cellmesh-load: cell ≥ 40,000 req/s: met (42,500); cell ≥ 0.8× hyper: met (0.85×); chain ≥ 10× µBench (4,700 req/s): met (20,000)"), "{}", lines[0]);
        assert!(
            lines[1].contains("cell ≥ 0.8× hyper: NOT met (0.70×)"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("chain ≥ 10× µBench (4,700 req/s): NOT met (4,000)"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn markers_are_replaced_or_appended() {
        let doc = format!("# Benchmarks\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nmore\n");
        let new = replace_between_markers(&doc, BEGIN, END, "new table\n");
        assert_eq!(
            new,
            format!("# Benchmarks\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\nmore\n")
        );
        let appended = replace_between_markers("# Benchmarks\n", BEGIN, END, "t");
        assert_eq!(appended, format!("# Benchmarks\n\n{BEGIN}\nt\n{END}\n"));
        assert_eq!(
            replace_between_markers("", BEGIN, END, "t"),
            format!("{BEGIN}\nt\n{END}\n")
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(41_234.7), "41,235");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(f64::NAN), "–");
    }

    #[test]
    fn bench_arguments_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            bench: BenchCommand,
        }
        let cli = Cli::try_parse_from([
            "bench",
            "cell",
            "--duration",
            "5",
            "--repetitions",
            "2",
            "--record",
        ])
        .unwrap();
        let BenchCommand::Cell(args) = cli.bench else {
            panic!("bench cell parses as Cell")
        };
        assert_eq!((args.duration, args.repetitions, args.warmup), (5, 2, 3));
        assert_eq!((args.connections, args.threads), (32, 2));
        assert!(args.record);
        assert!(args.targets.is_empty());
        let cli = Cli::try_parse_from(["bench", "cell", "--targets", "hello,chain"]).unwrap();
        let BenchCommand::Cell(args) = cli.bench else {
            panic!("bench cell parses as Cell")
        };
        assert_eq!(args.targets, [Target::Hello, Target::Chain]);
        assert!(Cli::try_parse_from(["bench", "cell", "--duration", "5s"]).is_err());
        let cli = Cli::try_parse_from(["bench", "engine", "--digits", "500", "--record"]).unwrap();
        let BenchCommand::Engine(args) = cli.bench else {
            panic!("bench engine parses as Engine")
        };
        assert_eq!((args.digits, args.duration, args.connections), (500, 8, 16));
        let cli =
            Cli::try_parse_from(["bench", "apiserver", "--objects", "500", "--record"]).unwrap();
        let BenchCommand::Apiserver(args) = cli.bench else {
            panic!("bench apiserver parses as the apiserver bench")
        };
        assert_eq!((args.objects, args.writers, args.watchers), (500, 16, 100));
        assert!(args.record);
    }
}
