//! [`LocalCluster`]: `cellmesh-local up` on a private loopback network.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::RngExt as _;
use serde_json::Value;

use crate::{free_port, http_get, target_binary};

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
    /// A cluster (not yet started) on a random 127.x.y.0/24 with x in 160..=254, a range
    /// no other harness picks addresses in.
    pub fn new() -> Self {
        let mut rng = rand::rng();
        let net = [127, rng.random_range(160..=254), rng.random_range(0..=255)];
        let ip = Ipv4Addr::new(net[0], net[1], net[2], 1);
        Self {
            bin: target_binary("cellmesh-local"),
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
        self.recorded_pid("/server/pid")
            .expect("`up` recorded the API server's pid")
    }

    /// Prometheus' pid, from the state `up` recorded; `None` when it was not started.
    pub fn prometheus_pid(&self) -> Option<u32> {
        self.recorded_pid("/prometheus/process/pid")
    }

    fn recorded_pid(&self, pointer: &str) -> Option<u32> {
        let record: Value =
            serde_json::from_slice(&std::fs::read(self.state.path().join("up.json")).ok()?).ok()?;
        u32::try_from(record.pointer(pointer)?.as_u64()?).ok()
    }

    /// Runs kubectl as the admin; `stdin` is piped in when given.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        crate::kubectl(&self.kubeconfig(), self.home(), args, stdin)
    }

    /// Runs kubectl and returns its stdout; panics with stderr when it fails.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        crate::kubectl_stdout(args, self.kubectl_output(args, stdin))
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

impl Default for LocalCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}
