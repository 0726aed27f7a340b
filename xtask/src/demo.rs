//! `cargo xtask demo`: two demos.
//!
//! `cargo xtask demo scaling` ([`run_scaling`]): in-place vertical scaling end to end on a
//! `cellmesh-local up` cluster — the `pi` WorkModel and its ScalingPolicy
//! (`examples/scaling/pi-loop.yaml`) under a load step from cellmesh-load, the CPU limit in
//! the cgroup printed as it changes, then quiet until it comes back down, and the timeline
//! (`cellmesh-operator timeline`) written to an SVG whose path it prints.
//!
//! `cargo xtask demo` alone (cluster-free) starts µBench's three-service parallel mesh (s0 calls s1 and s2 in parallel) as cell
//! processes on their own loopback addresses (127.0.0.21–23, like pods), wired with
//! `--resolve`, waits until each is ready, drives s0 with cellmesh-load, prints the report
//! and what was running, and stops everything (also on error or Ctrl-C).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::bench_procs::{self, Servers};
use crate::util::{step, workspace_root};

const WORKMODEL: &str = "workmodel-parallel-3services.json";
/// Leaves first, so s0's downstreams exist when it starts.
const SERVICES: [(&str, u8); 3] = [("s1", 22), ("s2", 23), ("s0", 21)];
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Counts every request a cell finished, whatever its method.
const SERVED_METRIC: &str = "mub_request_processing_latency_milliseconds_count";

/// The sum of every sample of metric `name` in Prometheus text exposition.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // The name must end here: a label set or the value follows.
            let value = if let Some(labels) = rest.strip_prefix('{') {
                labels.split_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Demo {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    /// Seconds of load on s0.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of warm-up load before the measured part.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Closed-loop connections of cellmesh-load.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Workmodel to run [default: examples/mubench/workmodel-parallel-3services.json].
    #[arg(long)]
    pub workmodel: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// In-place vertical scaling on cellmesh-local: a load step on the `pi` WorkModel, its
    /// ScalingPolicy raising then lowering the CPU limit, and the timeline as an SVG.
    Scaling(ScalingDemo),
}

#[derive(Debug, Args)]
pub struct ScalingDemo {
    /// Seconds of the load step.
    #[arg(long, default_value_t = 60)]
    pub step: u64,
    /// Seconds of quiet after the step (the limit comes down after downEvents windows).
    #[arg(long, default_value_t = 75)]
    pub quiet: u64,
    /// Open-loop request rate of the step (req/s).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Where to write the timeline [default: <target>/scaling-timeline.svg].
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Use release binaries (built first).
    #[arg(long)]
    pub release: bool,
}

/// `cargo xtask demo scaling`.
pub fn run_scaling(args: &ScalingDemo) -> Result<()> {
    use crate::bench_scaling::{
        Cluster, EXAMPLE, EXAMPLE_NAME, build, unix_now, watch_quiet, watch_step,
    };
    if args.step == 0 || args.rate <= 0.0 {
        bail!("--step and --rate must be positive");
    }
    let bin = build(args.release)?;
    let out = match &args.out {
        Some(path) => path.clone(),
        None => bin.join("scaling-timeline.svg"),
    };
    let cluster = Cluster::start(&bin)?;
    step(&format!("applying {EXAMPLE}"));
    let example = std::fs::read_to_string(workspace_root().join(EXAMPLE))
        .with_context(|| format!("cannot read {EXAMPLE}"))?;
    cluster.kubectl(&["apply", "-f", "-"], Some(&example))?;
    let pod = cluster.wait_pod(EXAMPLE_NAME, Duration::from_secs(180))?;
    let begin = unix_now();
    eprintln!(
        "  pod {} is running (pid {}); 20 s idle so Prometheus has a baseline",
        pod.name, pod.pid
    );
    std::thread::sleep(Duration::from_secs(20));
    step(&format!(
        "load step: {} req/s for {} s",
        args.rate, args.step
    ));
    let report_file = bin.join("scaling-demo-load.json");
    let outcome = watch_step(&bin, &pod, args.step, args.rate, 1, 32, &report_file)?;
    eprintln!(
        "  load: {:.1} ok req/s, p99 {:.1} ms",
        outcome.report["success_rps"].as_f64().unwrap_or(f64::NAN),
        outcome.report["latency_ms"]["p99"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    step(&format!("quiet for {} s", args.quiet));
    watch_quiet(&pod, args.quiet);
    // One more scrape so the last change is in Prometheus.
    std::thread::sleep(Duration::from_secs(6));
    let status = cluster.kubectl(
        &[
            "get",
            "scalingpolicy",
            EXAMPLE_NAME,
            "-o",
            "jsonpath={.status.lastAction}",
        ],
        None,
    )?;
    eprintln!("  the policy's last action: {status}");
    step("drawing the timeline");
    crate::util::run(
        Command::new(bin.join("cellmesh-operator"))
            .arg("timeline")
            .arg("--prometheus")
            .arg(cluster.prometheus_url())
            .arg("--pod")
            .arg(&pod.name)
            .arg(format!("--start={begin:.0}"))
            .arg(format!("--end={:.0}", unix_now()))
            .arg("--out")
            .arg(&out),
    )?;
    println!("timeline: {}", out.display());
    Ok(())
}

/// The workmodel: the repository's copy, else the shared µBench files beside the repository.
fn default_workmodel() -> Result<PathBuf> {
    let root = workspace_root();
    let candidates = [
        root.join("examples/mubench").join(WORKMODEL),
        root.join("../shared/mubench").join(WORKMODEL),
    ];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .with_context(|| {
            format!("{WORKMODEL} not found in examples/mubench/ or ../shared/mubench/")
        })
}

struct Running {
    name: &'static str,
    pid: u32,
    rest: SocketAddr,
    grpc: SocketAddr,
    admin: SocketAddr,
}

pub fn run(args: &Demo) -> Result<()> {
    if let Some(Scenario::Scaling(scaling)) = &args.scenario {
        return run_scaling(scaling);
    }
    if args.duration == 0 || args.connections == 0 {
        bail!("--duration and --connections must be at least 1");
    }
    bench_procs::install_interrupt_handler()?;
    let workmodel = match &args.workmodel {
        Some(path) => path.clone(),
        None => default_workmodel()?,
    };
    let binaries = bench_procs::build_release(false)?;
    let log_dir = bench_procs::target_dir()?.join("demo-logs");

    step(&format!("starting the mesh from {}", workmodel.display()));
    // Every address first, so each cell can be told where all the others are.
    let mut planned = Vec::new();
    for (name, octet) in SERVICES {
        let ip = Ipv4Addr::new(127, 0, 0, octet);
        planned.push((
            name,
            bench_procs::free_addr(ip)?,
            bench_procs::free_addr(ip)?,
            bench_procs::free_addr(ip)?,
        ));
    }
    let resolve: Vec<String> = planned
        .iter()
        .map(|(name, rest, _, _)| format!("{name}={rest}"))
        .collect();
    let mut servers = Servers::new(&log_dir)?;
    let mut running = Vec::new();
    for (name, rest, grpc, admin) in planned {
        eprintln!("  {name}: starting on http://{rest} …");
        let mut command = Command::new(&binaries.cell);
        command
            .arg("--workmodel")
            .arg(&workmodel)
            .args(["--service", name])
            .arg("--listen")
            .arg(rest.to_string())
            .arg("--grpc-listen")
            .arg(grpc.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string());
        for entry in &resolve {
            command.arg("--resolve").arg(entry);
        }
        let pid = servers.start(name, &mut command)?;
        servers.wait_ready(name, admin, "/ready", READY_TIMEOUT)?;
        eprintln!("  {name}: ready (pid {pid})");
        running.push(Running {
            name,
            pid,
            rest,
            grpc,
            admin,
        });
    }

    step("running");
    println!(
        "{:<4} {:>8}  {:<32} {:<22} {:<22}",
        "svc", "pid", "REST", "gRPC", "admin"
    );
    for r in &running {
        println!(
            "{:<4} {:>8}  {:<32} {:<22} {:<22}",
            r.name,
            r.pid,
            format!("http://{}/api/v1", r.rest),
            r.grpc.to_string(),
            format!("http://{}", r.admin),
        );
    }
    println!("logs: {}", log_dir.display());

    let entry = running
        .iter()
        .find(|r| r.name == "s0")
        .context("s0 is not running")?;
    step(&format!(
        "cellmesh-load: {} connections, {} s (after {} s warm-up) on s0",
        args.connections, args.duration, args.warmup
    ));
    bench_procs::run_inherited(
        Command::new(&binaries.load)
            .arg(format!("http://{}/api/v1", entry.rest))
            .args(["-c", &args.connections.to_string()])
            .args(["-d", &format!("{}s", args.duration)])
            .args(["-w", &format!("{}s", args.warmup)]),
    )?;

    step("requests each cell served (its mub_request_processing_latency_milliseconds_count)");
    for r in &running {
        let served = bench_procs::http_get(r.admin, "/metrics")
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|(_, text)| sum_metric(&text, SERVED_METRIC));
        match served {
            Some(count) => println!("{:<4} {count:>10.0}", r.name),
            None => println!("{:<4} {:>10}", r.name, "(no /metrics)"),
        }
    }

    step("stopping the mesh");
    servers.stop();
    eprintln!("all cells stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_samples_are_summed_across_label_sets() {
        let text = r#"# HELP x_count requests
# TYPE x histogram
x_count{method="GET",app_name="s0"} 40
x_count{method="POST",app_name="s0"} 2
x_count 1
x_count_other 100
x_sum{method="GET"} 12.5
"#;
        assert_eq!(sum_metric(text, "x_count"), 43.0);
        assert_eq!(sum_metric(text, "x_sum"), 12.5);
        assert_eq!(sum_metric(text, "absent"), 0.0);
    }

    #[test]
    fn demo_arguments_have_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            demo: Demo,
        }
        let cli = Cli::try_parse_from(["demo"]).unwrap();
        assert_eq!(
            (cli.demo.duration, cli.demo.warmup, cli.demo.connections),
            (10, 2, 16)
        );
        assert!(cli.demo.workmodel.is_none());
        assert!(cli.demo.scenario.is_none());
        let cli = Cli::try_parse_from(["demo", "scaling", "--step", "30"]).unwrap();
        let Some(Scenario::Scaling(scaling)) = cli.demo.scenario else {
            panic!("`demo scaling` is the scaling scenario");
        };
        assert_eq!((scaling.step, scaling.quiet, scaling.out), (30, 75, None));
        let cli =
            Cli::try_parse_from(["demo", "--duration", "3", "--workmodel", "w.json"]).unwrap();
        assert_eq!(cli.demo.duration, 3);
        assert_eq!(cli.demo.workmodel, Some(PathBuf::from("w.json")));
    }
}
