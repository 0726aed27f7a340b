//! Small helpers for running commands with readable progress output.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), std::path::Path::to_path_buf)
}

/// Prints a step header so a long CI log can be scanned.
pub fn step(name: &str) {
    eprintln!("\n==> {name}");
}

/// Runs `cargo <args>` from the workspace root and fails when it fails.
pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}

pub fn cargo_with_env(args: &[&str], env: &[(String, String)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Runs a command, inheriting stdio; an error names the command and its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Whether an executable is on PATH.
pub fn have(program: &str) -> bool {
    which(program).is_some()
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
