//! Processes for `bench` and `demo`: release builds, servers on 127.0.0.x loopback addresses,
//! readiness checks, and clean-up that also happens on errors, panics and Ctrl-C.
//!
//! Every child is registered in a process-wide list while it runs. [`Servers`] stops its
//! children when dropped (SIGTERM, then SIGKILL after a grace period); the Ctrl-C / SIGTERM
//! handler installed by [`install_interrupt_handler`] kills whatever is still registered and
//! exits, so no server outlives the xtask.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{self, workspace_root};

/// PIDs of children that are running now.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<u32>> {
    RUNNING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// On Ctrl-C (or SIGTERM / SIGHUP), kill every registered child and exit with 130.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: stopping the processes this command started");
        for pid in running().drain(..) {
            signal(pid, "KILL");
        }
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")
}

/// Sends a signal to one process by PID (via kill(1): no unsafe code needed).
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Spawns `command`, registered for clean-up on interrupt.
pub fn spawn_registered(command: &mut Command) -> Result<Child> {
    let shown = format!("{command:?}");
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    running().push(child.id());
    Ok(child)
}

fn unregister(pid: u32) {
    running().retain(|p| *p != pid);
}

/// Runs a command to completion (registered while it runs) and returns its stdout.
pub fn run_captured(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let child = spawn_registered(command.stdout(Stdio::piped()))?;
    let pid = child.id();
    let output = child.wait_with_output();
    unregister(pid);
    let output = output.with_context(|| format!("waiting for {shown}"))?;
    if !output.status.success() {
        bail!("{shown} failed with {}", output.status);
    }
    String::from_utf8(output.stdout).with_context(|| format!("{shown} printed non-UTF-8"))
}

/// Runs a command to completion with inherited stdio (registered while it runs).
pub fn run_inherited(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let mut child = spawn_registered(command)?;
    let pid = child.id();
    let status = child.wait();
    unregister(pid);
    let status = status.with_context(|| format!("waiting for {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// The release binaries `bench` and `demo` run.
pub struct Binaries {
    pub cell: PathBuf,
    pub load: PathBuf,
    pub hello: PathBuf,
}

/// Builds the release binaries (cargo prints its own progress) and finds them.
pub fn build_release(with_hello: bool) -> Result<Binaries> {
    util::step("building release binaries (cellmesh-cell, cellmesh-load, hello)");
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "cellmesh-cell",
        "--bin",
        "cellmesh-cell",
    ])?;
    let mut load = vec![
        "build",
        "--release",
        "-p",
        "cellmesh-load",
        "--bin",
        "cellmesh-load",
    ];
    if with_hello {
        load.extend(["--example", "hello"]);
    }
    util::cargo(&load)?;
    let release = target_dir()?.join("release");
    let binaries = Binaries {
        cell: release.join("cellmesh-cell"),
        load: release.join("cellmesh-load"),
        hello: release.join("examples").join("hello"),
    };
    let mut wanted = vec![&binaries.cell, &binaries.load];
    if with_hello {
        wanted.push(&binaries.hello);
    }
    for path in wanted {
        if !path.is_file() {
            bail!("the build did not produce {}", path.display());
        }
    }
    Ok(binaries)
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR` and config), from `cargo metadata`.
pub fn target_dir() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed with {}", output.status);
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// Installs Debian's `wrk` when it is missing.
pub fn ensure_wrk() -> Result<()> {
    if util::have("wrk") {
        return Ok(());
    }
    util::step("installing wrk (apt-get)");
    util::run(Command::new("apt-get").arg("update").arg("-qq"))?;
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends", "wrk"]),
    )
}

/// A free TCP port on `ip` (bound and released; fine for a developer command).
pub fn free_addr(ip: Ipv4Addr) -> Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0))
        .with_context(|| format!("cannot bind a port on {ip} (is 127.0.0.0/8 routed to lo?)"))?;
    listener.local_addr().context("bound socket has no address")
}

/// One server process with its log file.
struct Server {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The servers of one benchmark target or of the demo; stopped when dropped.
pub struct Servers {
    servers: Vec<Server>,
    log_dir: PathBuf,
}

impl Servers {
    /// Logs go to `log_dir/<name>.log`.
    pub fn new(log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        Ok(Self {
            servers: Vec::new(),
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// Starts `command` as server `name`, stdout and stderr to its log file.
    pub fn start(&mut self, name: &str, command: &mut Command) -> Result<u32> {
        let log = self.log_dir.join(format!("{name}.log"));
        let file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = file.try_clone().context("cannot duplicate the log file")?;
        let child = spawn_registered(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::from(file))
                .stderr(Stdio::from(err)),
        )?;
        let pid = child.id();
        self.servers.push(Server {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(pid)
    }

    /// Waits until `GET http://addr{path}` answers 200, failing early (with the log) if the
    /// server exits, or after `timeout`.
    pub fn wait_ready(
        &mut self,
        name: &str,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(server) = self.servers.iter_mut().find(|s| s.name == name)
                && let Ok(Some(status)) = server.child.try_wait()
            {
                bail!(
                    "{name} exited with {status} before it was ready; its log ({}):\n{}",
                    server.log.display(),
                    tail(&server.log, 20)
                );
            }
            let last = match http_get_status(addr, path) {
                Ok(200) => return Ok(()),
                Ok(status) => format!("status {status}"),
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                let log = self
                    .servers
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| format!("; its log ({}):\n{}", s.log.display(), tail(&s.log, 20)))
                    .unwrap_or_default();
                bail!("{name} not ready at http://{addr}{path} after {timeout:?} ({last}){log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to all, then SIGKILL to those still running after a grace period.
    pub fn stop(&mut self) {
        for server in &self.servers {
            signal(server.child.id(), "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for server in &mut self.servers {
            loop {
                match server.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = server.child.kill();
                        let _ = server.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            unregister(server.child.id());
        }
        self.servers.clear();
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A minimal HTTP/1.1 GET (no dependency needed for a readiness probe); returns the status.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

/// A minimal HTTP/1.1 GET with `Connection: close`: (status, body). Fine for small,
/// non-chunked answers such as `/ready` and `/metrics`.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: a server may answer (and close) as soon as it has the request head.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status =
        parse_status_line(&text).with_context(|| format!("not an HTTP response from {addr}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK` → 200).
pub fn parse_status_line(text: &str) -> Option<u16> {
    let mut parts = text.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line("HTTP/1.1 404"), Some(404));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[test]
    fn readiness_probe_reads_a_real_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "client closed before the end of its request");
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&request).to_string();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nready")
                .unwrap();
            request
        });
        assert_eq!(http_get(addr, "/ready").unwrap(), (200, "ready".to_owned()));
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /ready HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn free_addresses_are_on_the_asked_ip() {
        let addr = free_addr(Ipv4Addr::new(127, 0, 0, 1)).unwrap();
        assert_eq!(addr.ip(), Ipv4Addr::new(127, 0, 0, 1));
        assert_ne!(addr.port(), 0);
    }
}
