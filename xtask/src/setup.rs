//! Installs what the test tiers need, idempotently: Debian's `prometheus` (and `promtool`)
//! and `wrk` through apt-get, and a Python venv with the `helm-python-sdk` wheel (the
//! official Helm Go SDK) under `.venv/`. kubectl is expected on the machine.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::util::{self, have, run, step, workspace_root};

const APT_PACKAGES: &[(&str, &str)] = &[("prometheus", "prometheus"), ("promtool", "prometheus")];
const PIP_PACKAGES: &[&str] = &["helm-python-sdk"];

pub fn install_test_dependencies() -> Result<()> {
    step("test dependencies");
    install_apt_packages()?;
    install_python_venv()?;
    if !have("kubectl") {
        bail!("kubectl is not on PATH: the end-to-end tests drive the real kubectl binary");
    }
    Ok(())
}

fn install_apt_packages() -> Result<()> {
    let mut missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(binary, _)| !have(binary))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        eprintln!("apt packages: already installed");
        return Ok(());
    }
    eprintln!("apt packages: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

/// The venv the Helm tests run in.
pub fn venv_dir() -> PathBuf {
    workspace_root().join(".venv")
}

fn install_python_venv() -> Result<()> {
    let venv = venv_dir();
    let python = venv.join("bin/python");
    if !python.is_file() {
        eprintln!("python venv: creating {}", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let check = Command::new(&python)
        .args(["-c", "import helm_python"])
        .output();
    if check.is_ok_and(|out| out.status.success()) {
        eprintln!("python venv: helm-python-sdk already installed");
        return Ok(());
    }
    eprintln!("python venv: installing {}", PIP_PACKAGES.join(" "));
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PIP_PACKAGES))
}

pub fn ensure_nextest() -> Result<()> {
    let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if ok {
        return Ok(());
    }
    step("installing cargo-nextest");
    util::cargo(&["install", "cargo-nextest", "--locked"])
}

/// Environment for the test run: tells tests where the venv's Python is.
pub fn test_environment() -> Result<Vec<(String, String)>> {
    Ok(vec![(
        "CELLMESH_TEST_PYTHON".to_owned(),
        venv_dir().join("bin/python").display().to_string(),
    )])
}
