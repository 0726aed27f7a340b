//! `cargo xtask bench engine`: the cell engine on CPU-heavy computePi, in one run.
//!
//! 1. Throughput (closed loop, `--connections`): worker processes ×1 vs ×2 (expect near
//!    2× on two idle cores), and ×2 against µBench's layout run by the cell's default
//!    profile (workers 2 × threads 16: inline, heavy π on the blocking pool).
//! 2. Overload: `--overload-processes` (default one) worker processes of concurrency 1; the
//!    unloaded p99 (one connection, closed loop), the capacity (closed loop), then an open
//!    loop at 2× the capacity with admission (`queueLimit` = the worker slots, and 0) and with
//!    an unbounded queue. The p99 of *accepted*
//!    requests (cellmesh-load's latency counts successes only, from the due time: corrected
//!    for coordinated omission) is compared to the unloaded p99.
//!
//! 3. Acceptor vs SO_REUSEPORT: the same two-core layout done the other way — two whole
//!    cells (inline, one worker each) sharing the REST port with `--reuse-port`, the kernel
//!    spreading connections — on the heavy π and on a light request (`--light-digits`),
//!    where the acceptor's per-request hand-off to a worker process shows most; the light
//!    request also runs on one inline cell (no hand-off at all) as the overhead baseline.
//!
//! Every scenario runs its own cell(s) on its own 127.0.0.x address and stops them before
//! the next. Ratios compare figures of the same run only.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::bench::{load_average, replace_between_markers, thousands};
use crate::bench_procs::{self, Binaries, Servers};
use crate::util::{step, workspace_root};

const DOC: &str = "docs/benchmarks.md";
const BEGIN: &str = "<!-- bench-engine:begin (written by `cargo xtask bench engine --record`) -->";
const END: &str = "<!-- bench-engine:end -->";
const PATH: &str = "/api/v1";

#[derive(Debug, Args)]
pub struct EngineBench {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 8)]
    pub duration: u64,
    /// Seconds of warm-up load before each measurement.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// π digits per request (CPU cost grows with the square).
    #[arg(long, default_value_t = 400)]
    pub digits: u32,
    /// π digits of the light request of the acceptor-vs-SO_REUSEPORT comparison.
    #[arg(long, default_value_t = 10)]
    pub light_digits: u32,
    /// Connections of the closed-loop throughput runs.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Worker processes (concurrency 1 each) in the overload runs. The default, 1, leaves a
    /// core to the acceptor and the load driver, so the figures measure queueing (what
    /// admission controls); with 2 on a 2-core machine the workers also share their cores
    /// with the driver and the service time itself grows under load.
    #[arg(long, default_value_t = 1)]
    pub overload_processes: u32,
    /// A note on the conditions for the record, e.g. "machine shared with 3 builds".
    #[arg(long)]
    pub note: Option<String>,
    /// Write the results into docs/benchmarks.md (between its bench-engine markers).
    #[arg(long)]
    pub record: bool,
}

/// One cellmesh-load report, the parts used here.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Run {
    pub success_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rejected: u64,
    pub successes: u64,
    pub other_failures: u64,
}

/// Reads cellmesh-load's JSON report.
pub fn parse_run(output: &str) -> Result<Run> {
    let report: serde_json::Value =
        serde_json::from_str(output).context("cellmesh-load printed invalid JSON")?;
    let number = |pointer: &str| {
        report
            .pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("cellmesh-load report has no number at {pointer}"))
    };
    let codes = report.get("status_codes");
    let code = |c: &str| {
        codes
            .and_then(|m| m.get(c))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let successes = number("/successes")? as u64;
    let rejected = code("503");
    Ok(Run {
        success_rps: number("/success_rps")?,
        p50_ms: number("/latency_ms/p50")?,
        p99_ms: number("/latency_ms/p99")?,
        rejected,
        successes,
        // `error_total` counts every non-2xx answer (the 503s too) and transport failures.
        other_failures: (number("/error_total")? as u64).saturating_sub(rejected),
    })
}

/// How the cell of a scenario runs.
struct Setup {
    /// Profile YAML, or `None` for the default (µBench's layout from the workmodel).
    profile: Option<String>,
    /// The workmodel file (in the bench directory): `pi.json` or `pi-light.json`.
    workmodel: &'static str,
    /// `Some(n)`: n cells share the REST port with `--reuse-port`; `None`: one cell.
    reuse_port: Option<u32>,
}

fn process_profile(pool: u32, concurrency: u32, queue_limit: u32) -> Setup {
    Setup {
        profile: Some(format!(
            "kind: Profile\nspec:\n  isolate: process\n  poolMin: {pool}\n  poolLimit: {pool}\n  \
             concurrency: {concurrency}\n  queueLimit: {queue_limit}\n  requestTimeout: 120s\n  \
             idleTimeout: 0s\n"
        )),
        workmodel: "pi.json",
        reuse_port: None,
    }
}

/// One inline worker per cell (`cells` cells sharing the port when given).
fn inline_profile(concurrency: u32, workmodel: &'static str, cells: Option<u32>) -> Setup {
    Setup {
        profile: Some(format!(
            "kind: Profile\nspec:\n  isolate: inline\n  poolMin: 1\n  poolLimit: 1\n  \
             concurrency: {concurrency}\n  queueLimit: 1024\n  requestTimeout: 120s\n"
        )),
        workmodel,
        reuse_port: cells,
    }
}

impl Setup {
    fn on(mut self, workmodel: &'static str) -> Self {
        self.workmodel = workmodel;
        self
    }
}

/// A started cell and the URL of its service.
struct Started {
    servers: Servers,
    url: String,
}

fn start(
    name: &str,
    setup: &Setup,
    binaries: &Binaries,
    dir: &Path,
    log_dir: &Path,
) -> Result<Started> {
    let ip = Ipv4Addr::new(127, 0, 0, 21);
    let rest = bench_procs::free_addr(ip)?;
    let grpc = bench_procs::free_addr(ip)?;
    let profile = match &setup.profile {
        Some(profile) => {
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, profile)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let mut servers = Servers::new(log_dir)?;
    for i in 0..setup.reuse_port.unwrap_or(1) {
        let admin = bench_procs::free_addr(ip)?;
        let mut command = Command::new(&binaries.cell);
        command
            .arg("--workmodel")
            .arg(dir.join(setup.workmodel))
            .args(["--service", "pi"])
            .arg("--listen")
            .arg(rest.to_string())
            .arg("--grpc-listen")
            .arg(grpc.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .args(["--drain-grace", "0s"]);
        if setup.reuse_port.is_some() {
            command.arg("--reuse-port");
        }
        if let Some(path) = &profile {
            command.arg("--profile").arg(path);
        }
        let cell = format!("{name}-{i}");
        servers.start(&cell, &mut command)?;
        // Per cell: with a shared port, any of them would answer on `rest`.
        servers.wait_ready(&cell, admin, "/ready", Duration::from_secs(30))?;
    }
    Ok(Started {
        servers,
        url: format!("http://{rest}{PATH}"),
    })
}

/// cellmesh-load: closed loop with `connections`, or open loop at `rate`.
fn load(
    binaries: &Binaries,
    url: &str,
    connections: u32,
    rate: Option<f64>,
    seconds: u64,
    warmup: u64,
) -> Result<Run> {
    let mut command = Command::new(&binaries.load);
    command
        .arg(url)
        .args(["-c", &connections.to_string()])
        .args(["-t", "1"])
        .args(["-d", &format!("{seconds}s")])
        .args(["-w", &format!("{warmup}s")])
        .args(["--timeout", "60s"])
        .args(["--output", "json", "--quiet"]);
    if let Some(rate) = rate {
        command.args(["-r", &format!("{rate:.0}")]);
    }
    parse_run(&bench_procs::run_captured(&mut command)?)
}

/// Every figure of one run.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub one_process: Run,
    pub two_processes: Run,
    pub mubench_layout: Run,
    pub unloaded: Run,
    pub capacity: Run,
    pub overload_rate: f64,
    pub with_admission: Run,
    pub with_auto_admission: Run,
    pub unbounded: Run,
    /// Two inline cells sharing the port (SO_REUSEPORT), heavy π.
    pub reuseport_heavy: Run,
    /// Light request: one inline cell (no hand-off), one worker process behind the
    /// acceptor, two worker processes, two cells sharing the port.
    pub light_inline: Run,
    pub light_process: Run,
    pub light_two_processes: Run,
    pub light_reuseport: Run,
}

pub fn run(args: &EngineBench) -> Result<()> {
    if args.duration == 0
        || args.connections == 0
        || args.digits == 0
        || args.light_digits == 0
        || args.overload_processes == 0
    {
        bail!(
            "--duration, --connections, --digits, --light-digits and --overload-processes must be at least 1"
        );
    }
    bench_procs::install_interrupt_handler()?;
    let binaries = bench_procs::build_release(false)?;
    let root = bench_procs::target_dir()?;
    let log_dir = root.join("bench-logs");
    let dir = root.join("bench-engine");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let workmodel = serde_json::json!({"pi": {
        "internal_service": {"compute_pi": {
            "range_complexity": [args.digits, args.digits], "mean_response_size": 0.01}},
        "workers": 2, "threads": 16}});
    std::fs::write(dir.join("pi.json"), workmodel.to_string())?;
    let light = serde_json::json!({"pi": {
        "internal_service": {"compute_pi": {
            "range_complexity": [args.light_digits, args.light_digits], "mean_response_size": 0.01}},
        "workers": 1, "threads": 16}});
    std::fs::write(dir.join("pi-light.json"), light.to_string())?;
    let load_before = load_average();
    let (secs, warm) = (args.duration, args.warmup);
    let closed = |name: &str, setup: &Setup, connections: u32| -> Result<Run> {
        step(&format!("{name}: closed loop, {connections} connections"));
        let mut cell = start(name, setup, &binaries, &dir, &log_dir)?;
        let run = load(&binaries, &cell.url, connections, None, secs, warm)?;
        cell.servers.stop();
        report(name, &run);
        Ok(run)
    };

    let mut results = Results {
        one_process: closed("process-x1", &process_profile(1, 4, 1024), args.connections)?,
        two_processes: closed("process-x2", &process_profile(2, 4, 1024), args.connections)?,
        mubench_layout: closed(
            "mubench-layout",
            &Setup {
                profile: None,
                workmodel: "pi.json",
                reuse_port: None,
            },
            args.connections,
        )?,
        reuseport_heavy: closed(
            "reuseport-x2",
            &inline_profile(4, "pi.json", Some(2)),
            args.connections,
        )?,
        ..Results::default()
    };
    let c = args.connections;
    results.light_inline = closed("light-inline", &inline_profile(4, "pi-light.json", None), c)?;
    results.light_process = closed(
        "light-process-x1",
        &process_profile(1, 4, 1024).on("pi-light.json"),
        c,
    )?;
    results.light_two_processes = closed(
        "light-process-x2",
        &process_profile(2, 4, 1024).on("pi-light.json"),
        c,
    )?;
    results.light_reuseport = closed(
        "light-reuseport-x2",
        &inline_profile(4, "pi-light.json", Some(2)),
        c,
    )?;

    let pool = args.overload_processes;
    // queueLimit = slots: an accepted request waits for at most one request per slot, so its
    // latency stays within about twice the service time (see the Profile docs).
    let admission = process_profile(pool, 1, pool);
    results.unloaded = closed("unloaded", &admission, 1)?;
    // As many connections as the cell holds (running + queued): every worker stays busy and
    // none is turned away, so the figure is the capacity, not the cost of rejecting.
    results.capacity = closed("capacity", &admission, 2 * pool)?;
    results.overload_rate = 2.0 * results.capacity.success_rps;
    let open = |name: &str, setup: &Setup| -> Result<Run> {
        step(&format!(
            "{name}: open loop at {:.0} req/s (2× capacity)",
            results.overload_rate
        ));
        let mut cell = start(name, setup, &binaries, &dir, &log_dir)?;
        let run = load(
            &binaries,
            &cell.url,
            64,
            Some(results.overload_rate),
            secs,
            warm,
        )?;
        cell.servers.stop();
        report(name, &run);
        Ok(run)
    };
    results.with_admission = open("overload-admission", &admission)?;
    results.with_auto_admission = open("overload-admission-auto", &process_profile(pool, 1, 0))?;
    results.unbounded = open("overload-unbounded", &process_profile(pool, 1, 1_000_000))?;

    let table = render(&results, args);
    let facts = conditions(args, &load_before, &load_average());
    println!("\n{table}\n{facts}");
    if args.record {
        let path: PathBuf = workspace_root().join(DOC);
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let section = format!("{facts}\n\n{table}");
        std::fs::write(&path, replace_between_markers(&doc, BEGIN, END, &section))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("recorded in {DOC}");
    }
    Ok(())
}

fn report(name: &str, run: &Run) {
    eprintln!(
        "  {name}: {} ok req/s  p50 {:.1} ms  p99 {:.1} ms  503 {}  other failures {}",
        thousands(run.success_rps),
        run.p50_ms,
        run.p99_ms,
        run.rejected,
        run.other_failures
    );
}

fn ratio(value: f64, baseline: f64) -> String {
    if baseline > 0.0 {
        format!("{:.2}×", value / baseline)
    } else {
        "–".to_owned()
    }
}

/// The Markdown table and the verdicts.
pub fn render(r: &Results, args: &EngineBench) -> String {
    let mut out = String::new();
    let c = args.connections;
    out.push_str(
        "| scenario | load | ok req/s | p50 ms | p99 ms | 503 | other failures | ratio |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    let mut row = |name: &str, load: String, run: &Run, ratio: String| {
        let _ = writeln!(
            out,
            "| {name} | {load} | {} | {:.1} | {:.1} | {} | {} | {ratio} |",
            thousands(run.success_rps),
            run.p50_ms,
            run.p99_ms,
            run.rejected,
            run.other_failures
        );
    };
    row(
        "1 worker process (concurrency 4)",
        format!("closed, {c} conns"),
        &r.one_process,
        "1.00× (baseline)".into(),
    );
    row(
        "2 worker processes (concurrency 4)",
        format!("closed, {c} conns"),
        &r.two_processes,
        format!(
            "{} of 1 process",
            ratio(r.two_processes.success_rps, r.one_process.success_rps)
        ),
    );
    row(
        "µBench layout: workers 2 × threads 16 (default profile, inline)",
        format!("closed, {c} conns"),
        &r.mubench_layout,
        format!(
            "2 processes = {} of it",
            ratio(r.two_processes.success_rps, r.mubench_layout.success_rps)
        ),
    );
    row(
        "SO_REUSEPORT: 2 inline cells (1 worker each) sharing the port",
        format!("closed, {c} conns"),
        &r.reuseport_heavy,
        format!(
            "2 processes = {} of it",
            ratio(r.two_processes.success_rps, r.reuseport_heavy.success_rps)
        ),
    );
    let light = format!("light π ({} digits)", args.light_digits);
    row(
        &format!("{light}: 1 inline cell, no hand-off"),
        format!("closed, {c} conns"),
        &r.light_inline,
        "1.00× (baseline)".into(),
    );
    row(
        &format!("{light}: acceptor + 1 worker process"),
        format!("closed, {c} conns"),
        &r.light_process,
        format!(
            "{} of inline; hand-off ≈ {} per request",
            ratio(r.light_process.success_rps, r.light_inline.success_rps),
            per_request_cost(&r.light_process, &r.light_inline)
        ),
    );
    row(
        &format!("{light}: acceptor + 2 worker processes"),
        format!("closed, {c} conns"),
        &r.light_two_processes,
        format!(
            "{} of inline",
            ratio(
                r.light_two_processes.success_rps,
                r.light_inline.success_rps
            )
        ),
    );
    row(
        &format!("{light}: SO_REUSEPORT, 2 inline cells"),
        format!("closed, {c} conns"),
        &r.light_reuseport,
        format!(
            "2 processes = {} of it",
            ratio(
                r.light_two_processes.success_rps,
                r.light_reuseport.success_rps
            )
        ),
    );
    row(
        &format!(
            "unloaded ({} process(es), concurrency 1)",
            args.overload_processes
        ),
        "closed, 1 conn".into(),
        &r.unloaded,
        "p99 baseline".into(),
    );
    row(
        "capacity (same profile)",
        format!("closed, {} conns", 2 * args.overload_processes),
        &r.capacity,
        "–".into(),
    );
    let rate = format!("open, {} req/s, 64 conns", thousands(r.overload_rate));
    let slots = args.overload_processes;
    row(
        &format!("2× overload, admission (queueLimit {slots} = the worker slots)"),
        rate.clone(),
        &r.with_admission,
        format!(
            "p99 = {} of unloaded",
            ratio(r.with_admission.p99_ms, r.unloaded.p99_ms)
        ),
    );
    row(
        "2× overload, admission (queueLimit 0 = no wait beyond free slots)",
        rate.clone(),
        &r.with_auto_admission,
        format!(
            "p99 = {} of unloaded",
            ratio(r.with_auto_admission.p99_ms, r.unloaded.p99_ms)
        ),
    );
    row(
        "2× overload, unbounded queue",
        rate,
        &r.unbounded,
        format!(
            "p99 = {} of unloaded",
            ratio(r.unbounded.p99_ms, r.unloaded.p99_ms)
        ),
    );
    let within = |run: &Run| {
        if r.unloaded.p99_ms > 0.0 && run.p99_ms <= 2.0 * r.unloaded.p99_ms {
            "met"
        } else {
            "NOT met"
        }
    };
    let _ = write!(
        out,
        "\n- Scaling 1 → 2 worker processes: {} (near-linear means ≈ 2× on two *idle* cores).\n\
         - Admission keeps the accepted p99 within 2× of the unloaded p99 ({:.1} ms): \
         queueLimit {slots}: {} ({:.1} ms); queueLimit 0: {} ({:.1} ms); the unbounded queue \
         reaches {}.\n",
        ratio(r.two_processes.success_rps, r.one_process.success_rps),
        r.unloaded.p99_ms,
        within(&r.with_admission),
        r.with_admission.p99_ms,
        within(&r.with_auto_admission),
        r.with_auto_admission.p99_ms,
        ratio(r.unbounded.p99_ms, r.unloaded.p99_ms),
    );
    let _ = writeln!(
        out,
        "- Acceptor vs SO_REUSEPORT (2 processes each): heavy π {}, light π {} \
         (acceptor throughput as a share of SO_REUSEPORT's); the acceptor's hand-off costs \
         ≈ {} per request of CPU time across the machine.",
        ratio(r.two_processes.success_rps, r.reuseport_heavy.success_rps),
        ratio(
            r.light_two_processes.success_rps,
            r.light_reuseport.success_rps
        ),
        per_request_cost(&r.light_process, &r.light_inline),
    );
    out
}

/// Extra time per request of `run` over `baseline` (both closed loops saturating the
/// machine, so 1/throughput is the machine's time per request).
fn per_request_cost(run: &Run, baseline: &Run) -> String {
    if run.success_rps <= 0.0 || baseline.success_rps <= 0.0 {
        return "–".to_owned();
    }
    let micros = 1e6 / run.success_rps - 1e6 / baseline.success_rps;
    format!("{micros:.0} µs")
}

fn conditions(args: &EngineBench, before: &str, after: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut out = format!(
        "Measured {date} on {cores} cores shared by the cell, its workers and cellmesh-load \
         (one load thread); computePi of {} digits per request; {} s per figure after {} s of \
         warm-up. Load average before: {before}; after: {after}.",
        args.digits, args.duration, args.warmup
    );
    if let Some(note) = &args.note {
        let _ = write!(out, " Note: {note}.");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reports_are_read_with_rejections_apart() {
        let report = r#"{"responses": 120, "successes": 100, "success_rps": 50.5, "error_total": 21,
            "latency_ms": {"p50": 3.5, "p99": 9.25}, "status_codes": {"200": 100, "503": 18, "502": 2}}"#;
        let run = parse_run(report).unwrap();
        assert_eq!(
            run,
            Run {
                success_rps: 50.5,
                p50_ms: 3.5,
                p99_ms: 9.25,
                rejected: 18,
                successes: 100,
                other_failures: 3,
            }
        );
        assert!(
            parse_run("{}")
                .unwrap_err()
                .to_string()
                .contains("/successes")
        );
    }

    #[test]
    fn table_has_ratios_and_verdicts() {
        let run = |rps: f64, p99: f64| Run {
            success_rps: rps,
            p50_ms: 1.0,
            p99_ms: p99,
            ..Run::default()
        };
        let results = Results {
            one_process: run(100.0, 10.0),
            two_processes: run(190.0, 10.0),
            mubench_layout: run(95.0, 30.0),
            unloaded: run(50.0, 8.0),
            capacity: run(180.0, 12.0),
            overload_rate: 360.0,
            with_admission: run(175.0, 14.0),
            with_auto_admission: run(170.0, 20.0),
            unbounded: run(170.0, 900.0),
            reuseport_heavy: run(200.0, 10.0),
            light_inline: run(10_000.0, 1.0),
            light_process: run(5_000.0, 2.0),
            light_two_processes: run(6_000.0, 2.0),
            light_reuseport: run(12_000.0, 1.0),
        };
        let args = EngineBench {
            duration: 1,
            warmup: 0,
            digits: 1,
            light_digits: 1,
            connections: 16,
            overload_processes: 2,
            note: None,
            record: false,
        };
        let text = render(&results, &args);
        assert!(text.contains("| 1.90× of 1 process |"), "{text}");
        assert!(text.contains("2 processes = 2.00× of it"), "{text}");
        assert!(text.contains("p99 = 1.75× of unloaded"), "{text}");
        assert!(
            text.contains("queueLimit 2: met (14.0 ms); queueLimit 0: NOT met (20.0 ms)"),
            "{text}"
        );
        assert!(
            text.contains("the unbounded queue reaches 112.50×"),
            "{text}"
        );
        // 1/5000 s − 1/10000 s = 100 µs of hand-off per request.
        assert!(
            text.contains("0.50× of inline; hand-off ≈ 100 µs per request"),
            "{text}"
        );
        assert!(text.contains("heavy π 0.95×, light π 0.50×"), "{text}");
    }
}
