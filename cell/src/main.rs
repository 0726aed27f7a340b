//! `cellmesh-cell` binary: see [`cellmesh_cell::cli::Args`] and `--help`.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // A process worker of the engine is this same binary, re-executed with a marker in its
    // environment; it must load the same functions as the parent before anything else runs.
    if let Some(code) = cellmesh_cell::engine::run_worker_if_requested(|| {
        cellmesh_cell::functions::leaves::cell_functions(
            cellmesh_cell::functions::Placement::InPlace,
        )
    }) {
        std::process::exit(code)
    }
    let args = cellmesh_cell::cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cellmesh_cell::server::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cellmesh-cell: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
