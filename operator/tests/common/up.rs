//! Whole-cluster harness: `cellmesh-local up` as a user runs it — API server, controllers,
//! node agent (pods are real processes in cgroups), ClusterIP proxy and DNS, optionally
//! Prometheus and the operator as a pod — on a random 127.x.y.0/24 network with its own
//! state directory. `down` runs when the value is dropped.
//!
//! Use it for tests that need pods to run; tests of the operator's API writes alone use the
//! lighter [`super::Cluster`] (API server only).
//!
//! `cellmesh-local` and `cellmesh-cell` are found next to `cellmesh-operator` in the target
//! directory (`cargo nextest run --workspace` builds them all).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{example, target_dir_binary};

/// What to start besides the API server and its components.
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// Start Debian's Prometheus (scraping pods and the node's cAdvisor).
    pub prometheus: bool,
    /// Deploy the operator as a pod (`up`'s default); off for tests that install it
    /// themselves (Helm) or run it as a local process.
    pub operator: bool,
    /// Manifests (paths under the repository) applied once the cluster runs.
    pub examples: Vec<String>,
}

/// A cluster started with `cellmesh-local up`; stopped with `down` on drop.
pub struct UpCluster {
    pub state: tempfile::TempDir,
    pub home: tempfile::TempDir,
    net: [u8; 3],
    /// Where Prometheus serves its API (only if started).
    pub prometheus: SocketAddr,
    /// What `up` printed.
    pub output: String,
}

/// A random 127.x.y.0 network, x in 160..=190: away from the other harnesses' ranges
/// (local/tests/up.rs uses 192..=254).
fn random_net() -> [u8; 3] {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ (std::process::id() << 10);
    let [a, b, ..] = seed.wrapping_mul(2_654_435_761).to_le_bytes();
    [127, 160 + (a % 31), b]
}

fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl UpCluster {
    /// Runs `cellmesh-local up` and waits for it to finish (it returns once every part is
    /// ready). Panics with `up`'s output if it fails.
    pub fn start(options: &UpOptions) -> Self {
        let net = random_net();
        let ip = Ipv4Addr::new(net[0], net[1], net[2], 1);
        let mut cluster = Self {
            state: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            net,
            prometheus: SocketAddr::from((ip, free_port(ip))),
            output: String::new(),
        };
        let mut command = Command::new(target_dir_binary("cellmesh-local"));
        command
            .arg("up")
            .arg("--state-dir")
            .arg(cluster.state.path())
            .arg(format!("--listen={ip}:0"))
            .arg(format!("--dns-addr={}:53", cluster.ip(253)))
            .arg(format!("--prometheus-sd-addr={}:10080", cluster.ip(253)))
            .arg(format!(
                "--service-cidr={}.{}.{}.0/26",
                net[0], net[1], net[2]
            ))
            .arg(format!("--prometheus-listen={}", cluster.prometheus))
            // Under CI's parallel load a pod can take a while to start.
            .arg("--timeout=120s");
        if !options.prometheus {
            command.arg("--no-prometheus");
        }
        if !options.operator {
            command.arg("--no-operator");
        }
        if options.examples.is_empty() {
            command.arg("--no-example");
        }
        for path in &options.examples {
            command.arg(format!(
                "--example={}",
                super::repo_root().join(path).display()
            ));
        }
        command
            .arg("--")
            // The node's cAdvisor on the node's address, as Prometheus' node discovery expects.
            .arg(format!("--node-metrics-addr={ip}:{}", free_port(ip)))
            .arg(format!(
                "--pod-cidr={}.{}.{}.128/25",
                net[0], net[1], net[2]
            ))
            // A cgroup parent of its own: an agent sweeps every container cgroup under its
            // parent when it starts and stops, so clusters sharing the default `cellmesh`
            // (tests run in parallel) would SIGKILL each other's pods.
            .arg(format!(
                "--cgroup-parent=cellmesh-test-{}-{}",
                net[1], net[2]
            ))
            .stdin(Stdio::null());
        let out = command.output().unwrap();
        cluster.output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "`cellmesh-local up` failed:\n{}",
            cluster.output
        );
        cluster
    }

    /// `127.x.y.last` on the cluster's network.
    pub fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], last)
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// The admin kubeconfig `up` wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.path().join("kubeconfig")
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

    /// `kubectl apply -f -` of an example file under the repository.
    pub fn apply_example(&self, path: &str) -> String {
        self.kubectl(&["apply", "-f", "-"], Some(&example(path)))
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

    /// Runs a `cellmesh-local` subcommand (`status`, `down`) on this cluster's state.
    pub fn run(&self, sub: &str) -> Output {
        Command::new(target_dir_binary("cellmesh-local"))
            .arg(sub)
            .arg("--state-dir")
            .arg(self.state.path())
            .output()
            .unwrap()
    }
}

impl Drop for UpCluster {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

/// A plain HTTP/1.0 GET; the body, or `None` when nothing answered.
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
