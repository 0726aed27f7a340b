//! Test support for the workspace's tests that run `cellmesh-local` as a user does.
//!
//! - [`ApiServer`]: `cellmesh-local apiserver` alone (no controllers unless asked) on a random
//!   127.x.y.z address with its own state directory — for API semantics and the operator's
//!   writes.
//! - [`LocalCluster`]: `cellmesh-local up` (API server, controllers, node agent, network,
//!   optionally Prometheus and the operator), isolated so that many run in parallel on one
//!   machine: a random 127.x.y.0/24 network of its own, its own state directory, kubectl
//!   cache and cgroup parent. `down` runs when it is dropped.
//!
//! Both drive the real `kubectl` with their admin kubeconfig. `cellmesh-local` is found next
//! to the running test executable's directory (`target/<profile>/`), where cargo puts it
//! when the test's package or `--workspace` is built.
//!
//! Test support panics on failure by design: a panic is a failed test with its message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod apiserver;
mod up;

pub use apiserver::ApiServer;
pub use up::LocalCluster;

/// A binary of the workspace (`cellmesh-local`, `cellmesh-cell` …) in the target directory
/// of the running test; panics saying how to build it when it is missing.
pub fn target_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p {name}` (cargo nextest run --workspace does)",
        path.display()
    );
    path
}

/// Runs kubectl with `kubeconfig` and a private `home` (its discovery cache), piping
/// `stdin` in when given; the output whatever the exit status.
fn kubectl(
    kubeconfig: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut child = Command::new("kubectl")
        .args(args)
        .arg("--request-timeout=30s")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        // kubectl may stop reading early (e.g. refusing input): that is its answer.
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    child.wait_with_output().unwrap()
}

/// `out`'s stdout when kubectl succeeded; panics with its stderr otherwise.
fn kubectl_stdout(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `check` until it returns `Some` or `timeout` passes (then panics naming `what`).
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port free on `ip` right now.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET with deadlines; the body, or `None` when nothing answered.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}
