//! `cellmesh-local container-init --spec <file>`: the trampoline every container starts
//! through. It joins the container's cgroups, enters a private mount (and UTS) namespace,
//! bind-mounts the pod's volumes and its own `/etc/resolv.conf` and `/etc/hosts` at their
//! mount paths, sets the hostname to the pod's name, and then `exec`s the container's
//! command — so the process the agent spawned *is* the container (same pid), limited from
//! its first instruction and seeing its files where a real container would.
//!
//! The process asks the kernel to SIGKILL it when the agent dies (`PR_SET_PDEATHSIG`), so
//! containers never outlive `cellmesh-local` (a restart starts them again).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

/// Everything the trampoline does, written by the agent as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct InitSpec {
    /// `cgroup.procs` files to write our pid to before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// Whether to enter private mount/UTS namespaces and mount (needs root).
    pub isolate: bool,
    pub hostname: String,
    pub mounts: Vec<BindMount>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Exit code when the command cannot be started (as shells report "not found").
pub const EXIT_CANNOT_RUN: u8 = 127;

pub fn main(spec_path: &Path) -> ExitCode {
    match run(spec_path) {
        // `run` only returns on failure: success replaced this process.
        Ok(never) => match never {},
        Err(err) => {
            eprintln!("container-init: {err:#}");
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}

fn run(spec_path: &Path) -> anyhow::Result<std::convert::Infallible> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(spec_path)
        .with_context(|| format!("cannot read {}", spec_path.display()))?;
    let spec: InitSpec = serde_json::from_str(&text)
        .with_context(|| format!("invalid container spec {}", spec_path.display()))?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("cannot ask to die with the agent")?;
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        anyhow::bail!("the agent is gone");
    }
    // Its own session and process group, so the agent can kill everything it started even
    // where there are no cgroups to enumerate processes with.
    nix::unistd::setsid().context("cannot start a new session")?;
    let pid = std::process::id().to_string();
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, &pid)
            .with_context(|| format!("cannot join cgroup {}", procs.display()))?;
    }
    if spec.isolate {
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
            .context("cannot create a mount namespace")?;
        // Our mounts must not propagate back to the host.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("cannot make / private")?;
        for m in &spec.mounts {
            bind(m).with_context(|| {
                format!(
                    "cannot mount {} at {}",
                    m.source.display(),
                    m.target.display()
                )
            })?;
        }
        if !spec.hostname.is_empty() {
            nix::unistd::sethostname(&spec.hostname).context("cannot set the hostname")?;
        }
    }
    let (program, args) = spec
        .argv
        .split_first()
        .context("the container has no command (set command or args)")?;
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(spec.env.iter().cloned());
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    let err = command.exec();
    Err(anyhow::anyhow!("cannot run {program:?}: {err}"))
}

/// Bind-mounts `m.source` at `m.target`, creating the mount point (a file for a file, a
/// directory for a directory) when missing.
fn bind(m: &BindMount) -> anyhow::Result<()> {
    let source_is_dir = m.source.is_dir();
    if !m.target.exists() {
        if source_is_dir {
            std::fs::create_dir_all(&m.target)?;
        } else {
            if let Some(parent) = m.target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::File::create(&m.target)?;
        }
    }
    mount(
        Some(&m.source),
        &m.target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    if m.read_only {
        mount(
            None::<&str>,
            &m.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
    }
    Ok(())
}
