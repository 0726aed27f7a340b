//! `cellmesh-operator`: command-line entry point.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use cellmesh_operator::{crdgen, import, run, timeline};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cellmesh-operator",
    version,
    about = "cellmesh's Kubernetes operator: WorkModels, Apps, Profiles and ScalingPolicies",
    long_about = "cellmesh's Kubernetes operator: WorkModels, Apps, Profiles and ScalingPolicies \
        (group cellmesh.io).\n\nExamples:\n  \
        cellmesh-operator crds | kubectl apply -f -\n  \
        cellmesh-operator run --leader-election --metrics-addr 0.0.0.0:8080\n  \
        cellmesh-operator import-mubench workmodel.json --name shop | kubectl apply -f -\n  \
        cellmesh-operator timeline --prometheus http://127.0.0.1:9090 --pod 'pi-.*' --since 5m -o t.svg"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers: WorkModels and Apps become Deployments, Services and ConfigMaps
    /// of the cell; Profiles are rendered into them. Uses the in-cluster config or
    /// `KUBECONFIG`.
    Run(Box<run::RunArgs>),
    /// Convert a µBench workmodel.json into a WorkModel resource (YAML on stdout). Keys
    /// cellmesh does not use are listed on stderr.
    ImportMubench {
        /// The µBench workmodel file (JSON, or the same map in YAML).
        file: PathBuf,
        /// Name of the WorkModel. Default: from the file name (`workmodel-shop.json` → `shop`).
        #[arg(long)]
        name: Option<String>,
        /// Namespace of the WorkModel. Default: none (kubectl's current namespace).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Write the YAML to this file instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Draw a container's CPU usage, limit and request, its scaling actions and its p99
    /// latency over a time range as an SVG, from Prometheus.
    Timeline(timeline::TimelineArgs),
    /// Print the CustomResourceDefinitions (for `kubectl apply -f -`), or write one file per
    /// CRD into a directory.
    Crds {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        // One thread: the operator mostly waits on the API server, and its CPU work per
        // reconcile is milliseconds (≈ 70 ms for a 1,000-service WorkModel, release). A
        // multi-threaded runtime gave glibc one malloc arena per worker, and the freed peak
        // of a large reconcile stayed resident in each: at 1,000 services 88 vs 62 MiB RSS
        // (debug build; 49–53 MiB in release, `cargo xtask bench operator`), and the
        // WorkModel converged no faster.
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(run::run(*args)),
        Command::ImportMubench {
            file,
            name,
            namespace,
            output,
        } => import_mubench(&file, name, namespace, output.as_deref()),
        Command::Crds { out } => crds(out.as_deref()),
        Command::Timeline(args) => {
            let drawn = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(timeline::run(&args))?;
            println!(
                "wrote {} ({} usage points, {} scaling actions, {} latency points)",
                args.out.display(),
                drawn.cpu_usage.len(),
                drawn.actions.len(),
                drawn.p99_ms.len()
            );
            Ok(())
        }
    }
}

fn import_mubench(
    file: &Path,
    name: Option<String>,
    namespace: Option<String>,
    output: Option<&Path>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let file_name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let imported = import::import_mubench(
        &text,
        &file_name,
        &import::ImportOptions { name, namespace },
    )
    .with_context(|| format!("cannot import {}", file.display()))?;
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    let yaml = import::to_yaml(&imported.workmodel, &file_name)?;
    match output {
        Some(path) => std::fs::write(path, yaml)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().write_all(yaml.as_bytes())?,
    }
    Ok(())
}

fn crds(out: Option<&Path>) -> Result<()> {
    let Some(dir) = out else {
        std::io::stdout().write_all(crdgen::stream()?.as_bytes())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for file in crdgen::files()? {
        let path = dir.join(&file.file_name);
        std::fs::write(&path, file.yaml)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
