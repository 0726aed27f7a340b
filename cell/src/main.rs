//! `cellmesh-cell` binary: see [`cellmesh_cell::cli::Args`] and `--help`.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let args = cellmesh_cell::cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cellmesh_cell::server::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cellmesh-cell: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
