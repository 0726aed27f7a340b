//! `cellmesh-load` binary: parse arguments, run the load, print the report.

use std::process::ExitCode;

use anyhow::{Context, Result};
use cellmesh_load::cli::{Args, OutputFormat};
use cellmesh_load::progress::Progress;
use clap::Parser;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cellmesh-load: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let quiet = args.quiet;
    let output = args.output;
    let json_file = args.json.clone();
    let plan = args.into_plan()?;
    let mut progress = Progress::new(quiet);
    let report = cellmesh_load::run(&plan, |tick| progress.update(tick));
    progress.finish();
    let report = report?;

    let json = serde_json::to_string_pretty(&report).context("cannot serialise the report")?;
    if let Some(path) = &json_file {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("--json: cannot write {}", path.display()))?;
    }
    match output {
        OutputFormat::Table => print!("{}", report.to_table()),
        OutputFormat::Json => println!("{json}"),
    }
    Ok(if report.any_success() {
        ExitCode::SUCCESS
    } else {
        eprintln!("cellmesh-load: no request succeeded");
        ExitCode::from(3)
    })
}
