//! `cargo xtask …`: the project's own commands, written in Rust so they run the same on
//! every machine. `cargo xtask ci` is what `.ci/run` and the README's test command run.

mod bench;
mod bench_apiserver;
mod bench_engine;
mod bench_operator;
mod bench_parse;
mod bench_procs;
mod bench_scaling;
mod crdgen;
mod demo;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "cellmesh's development commands",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything CI runs: install test dependencies, check formatting, clippy, generated
    /// files, then every test tier.
    Ci,
    /// Install what the tests need (Prometheus, wrk, the Helm SDK venv). Idempotent.
    Setup,
    /// Formatting and clippy (`-D warnings`) over the whole workspace.
    Lint,
    /// Write the CRD manifests in crds/ from the Rust types (`--check`: only compare).
    Crdgen(crdgen::Crdgen),
    /// Run the tests with cargo-nextest (all tiers unless filtered).
    Test {
        /// Extra arguments for `cargo nextest run`, e.g. a filter expression.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks (release builds; not run in CI). `bench cell`: the cell vs a bare hyper
    /// server vs µBench's figures, measured with cellmesh-load and wrk; `bench engine`: the
    /// engine on CPU-heavy computePi (worker processes, µBench's layout, overload p99).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The main job: build cellmesh-local, the cell and the operator, then run
    /// `cellmesh-local up` (API server, controllers, node agent, network, CRDs, Prometheus,
    /// the operator and the `chain` example, answered through its gateway). Arguments after
    /// `--` go to `cellmesh-local up` (see `cellmesh-local up --help`).
    Up {
        /// Build and run release binaries (slower to build, faster cells).
        #[arg(long)]
        release: bool,
        /// Arguments for `cellmesh-local up`, e.g. `--foreground` or `--state-dir DIR`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A cluster-free demo: start µBench's three-service parallel mesh as cells on 127.0.0.x,
    /// load it with cellmesh-load for ~10 s, print the report, stop everything.
    Demo(demo::Demo),
}

/// `cargo xtask up`: build the three binaries `up` runs, then hand over to `cellmesh-local up`.
fn up(release: bool, args: &[String]) -> Result<()> {
    util::step("building cellmesh-local, cellmesh-cell and cellmesh-operator");
    let mut build = vec![
        "build",
        "--locked",
        "-p",
        "cellmesh-local",
        "-p",
        "cellmesh-cell",
        "-p",
        "cellmesh-operator",
    ];
    if release {
        build.push("--release");
    }
    util::cargo(&build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || util::workspace_root().join("target"),
        std::path::PathBuf::from,
    );
    let binary = target
        .join(if release { "release" } else { "debug" })
        .join("cellmesh-local");
    util::step("cellmesh-local up");
    util::run(
        std::process::Command::new(binary)
            .arg("up")
            .args(args)
            .current_dir(util::workspace_root()),
    )
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ci => {
            setup::install_test_dependencies()?;
            lint()?;
            crdgen::check()?;
            test(&[])
        }
        Command::Setup => setup::install_test_dependencies(),
        Command::Lint => lint(),
        Command::Crdgen(args) => crdgen::run(&args),
        Command::Test { args } => test(&args),
        Command::Bench(command) => bench::run(command),
        Command::Demo(args) => demo::run(&args),
        Command::Up { release, args } => up(release, &args),
    }
}

fn lint() -> Result<()> {
    util::step("cargo fmt --check");
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::step("cargo clippy -D warnings");
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])
}

fn test(extra: &[String]) -> Result<()> {
    util::step("cargo nextest run (unit, component and end-to-end tiers)");
    setup::ensure_nextest()?;
    let mut args: Vec<&str> = vec!["nextest", "run", "--workspace", "--locked"];
    args.extend(extra.iter().map(String::as_str));
    util::cargo_with_env(&args, &setup::test_environment()?)
}
