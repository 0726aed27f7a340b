//! Test support for the workspace's whole-cluster tests.
//!
//! [`LocalCluster`] runs `cellmesh-local up` as a user does, isolated so that many run in
//! parallel on one machine: a random 127.x.y.0/24 network of its own (API server, DNS,
//! service and pod ranges, node metrics, Prometheus), its own state directory, kubectl
//! cache and cgroup parent. `down` runs when it is dropped.
//!
//! Test support panics on failure by design: a panic is a failed test with its message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rand::RngExt as _;
use serde_json::Value;

/// A `cellmesh-local up` cluster on its own loopback network; stopped with `down` on drop.
pub struct LocalCluster {
    bin: PathBuf,
    state: tempfile::TempDir,
    home: tempfile::TempDir,
    net: [u8; 3],
    /// Where Prometheus serves its API (when `up` starts it).
    pub prometheus: SocketAddr,
}

impl LocalCluster {
    /// A cluster (not yet started) of the `cellmesh-local` binary at `bin`, on a random
    /// 127.x.y.0/24 with x in 160..=254, a range no other test harness picks addresses in.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        let mut rng = rand::rng();
        let net = [127, rng.random_range(160..=254), rng.random_range(0..=255)];
        let ip = Ipv4Addr::new(net[0], net[1], net[2], 1);
        Self {
            bin: bin.into(),
            state: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            net,
            prometheus: SocketAddr::from((ip, free_port(ip))),
        }
    }

    /// `127.x.y.last` on the cluster's network (`.1` is the API server and the node).
    pub fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], last)
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// HOME for kubectl and other clients (their caches stay per cluster).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The admin kubeconfig `up` writes.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.path().join("kubeconfig")
    }

    /// `cellmesh-local up` on this cluster's state and network with `extra` up flags
    /// (`--no-prometheus`, `--example=…`, `--foreground` …), ready to run or spawn.
    pub fn up_command<S: AsRef<OsStr>>(&self, extra: &[S]) -> Command {
        let [a, b, c] = self.net;
        let mut command = Command::new(&self.bin);
        command
            .arg("up")
            .arg("--state-dir")
            .arg(self.state.path())
            .arg(format!("--listen={}:0", self.ip(1)))
            .arg(format!("--dns-addr={}:53", self.ip(253)))
            .arg(format!("--prometheus-sd-addr={}:10080", self.ip(253)))
            .arg(format!("--service-cidr={a}.{b}.{c}.0/26"))
            .arg(format!("--prometheus-listen={}", self.prometheus))
            // Under CI's parallel load a pod can take a while to start.
            .arg("--timeout=120s")
            .args(extra)
            .arg("--")
            .arg(format!("--pod-cidr={a}.{b}.{c}.128/25"))
            // The node's cAdvisor on the node's address, as Prometheus' node discovery expects.
            .arg(format!(
                "--node-metrics-addr={}:{}",
                self.ip(1),
                free_port(self.ip(1))
            ))
            // A cgroup parent of its own: a node agent sweeps (SIGKILLs) every container
            // under its parent when it starts and stops, and other clusters run in parallel.
            .arg(format!("--cgroup-parent=cellmesh-test-{b}-{c}"))
            .stdin(Stdio::null());
        command
    }

    /// Runs `up` with `extra` flags to its end (it returns once every part is ready) and
    /// echoes what it printed into the test's output.
    pub fn up<S: AsRef<OsStr>>(&self, extra: &[S]) -> Output {
        let out = self.up_command(extra).output().unwrap();
        eprintln!(
            "up: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs a `cellmesh-local` subcommand (`status`, `down`) on this cluster's state.
    pub fn run(&self, sub: &str) -> Output {
        Command::new(&self.bin)
            .arg(sub)
            .arg("--state-dir")
            .arg(self.state.path())
            .output()
            .unwrap()
    }

    /// The API server's pid, from the state `up` recorded.
    pub fn server_pid(&self) -> u32 {
        let record: Value =
            serde_json::from_slice(&std::fs::read(self.state.path().join("up.json")).unwrap())
                .unwrap();
        u32::try_from(record["server"]["pid"].as_u64().unwrap()).unwrap()
    }

    /// Runs kubectl as the admin; `stdin` is piped in when given.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .args(args)
            .arg("--request-timeout=30s")
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and returns its stdout; panics with stderr when it fails.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kubectl get -o json`, or `None` when the object does not exist.
    pub fn get(&self, namespace: &str, resource: &str) -> Option<Value> {
        let out = self.kubectl_output(&["-n", namespace, "get", resource, "-o", "json"], None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// GET `path` from Prometheus' HTTP API; the JSON body, or `None` if it did not answer.
    pub fn prometheus_get(&self, path_and_query: &str) -> Option<Value> {
        let body = http_get(self.prometheus, path_and_query)?;
        serde_json::from_str(&body).ok()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.run("down");
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
