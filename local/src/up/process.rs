//! Background processes of `up`: started detached (own process group, output appended to a
//! log file), remembered by pid in the state directory, and stopped by `down`.
//!
//! A pid is only ever signalled after checking that `/proc/<pid>/cmdline` still names the
//! program we started, so a stale record (the process died, the pid was reused) never
//! kills a stranger.

use std::fs::OpenOptions;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// One started process, as recorded in `up.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub pid: u32,
    /// A word of the command line that identifies the program (checked before signalling).
    pub program: String,
    pub log: PathBuf,
}

/// Starts `command` detached from the terminal's process group (Ctrl-C in the shell that
/// ran `up` does not reach it) with stdout and stderr appended to `log`. Returns the child
/// and the log's length before it started (where its own output begins).
pub fn spawn_logged(mut command: Command, log: &Path) -> anyhow::Result<(Child, u64)> {
    use std::os::unix::process::CommandExt as _;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log file {}", log.display()))?;
    let offset = file.metadata().map(|m| m.len()).unwrap_or(0);
    let err = file.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {:?}", command.get_program()))?;
    Ok((child, offset))
}

/// The log's text from `offset` on.
pub fn log_since(log: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Whether `pid` is alive and still runs `program` (a zombie counts as gone).
pub fn is_running(pid: u32, program: &str) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
        return false;
    };
    let zombie = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false);
    !zombie
        && cmdline
            .split(|b| *b == 0)
            .any(|arg| String::from_utf8_lossy(arg).contains(program))
}

/// Stops a recorded process: SIGTERM, up to `grace` for it to exit, then SIGKILL.
/// Returns whether it was running.
pub fn stop(process: &Recorded, grace: Duration) -> anyhow::Result<bool> {
    if !is_running(process.pid, &process.program) {
        return Ok(false);
    }
    let pid =
        Pid::from_raw(i32::try_from(process.pid).context("a recorded pid does not fit a pid_t")?);
    kill(pid, Signal::SIGTERM).with_context(|| format!("cannot signal pid {pid}"))?;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_running(process.pid, &process.program) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::warn!(
        pid = process.pid,
        "did not exit after SIGTERM; sending SIGKILL"
    );
    let _ = kill(pid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && is_running(process.pid, &process.program) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_a_started_process_and_leaves_strangers_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo started; exec sleep 30"]);
        let (mut child, offset) = spawn_logged(command, &log).unwrap();
        let recorded = Recorded {
            pid: child.id(),
            program: "sleep".into(),
            log: log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log_since(&log, offset).contains("started") {
            assert!(Instant::now() < deadline, "no output in the log");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Reap in the background so the stopped child does not linger as a zombie.
        let reaper = std::thread::spawn(move || child.wait());
        // Another program's name at this pid: not ours, not touched.
        let stranger = Recorded {
            program: "definitely-not-this".into(),
            ..recorded.clone()
        };
        assert!(!stop(&stranger, Duration::from_secs(1)).unwrap());
        assert!(is_running(recorded.pid, "sleep"));
        assert!(stop(&recorded, Duration::from_secs(5)).unwrap());
        reaper.join().unwrap().unwrap();
        assert!(!is_running(recorded.pid, "sleep"));
        assert!(!stop(&recorded, Duration::from_secs(1)).unwrap());
    }
}
