//! End-to-end harness: the real `cellmesh-local apiserver` on a random 127.x.y.z address with
//! its own state directory, the CRDs installed, the operator's RBAC (`operator/rbac/`) bound
//! to a ServiceAccount, and `cellmesh-operator run` processes using that ServiceAccount's
//! token. Everything started here is killed on drop.
//!
//! The API server is `cellmesh-testkit`'s [`ApiServer`]; `cellmesh-local` is found in the
//! target directory: `cargo nextest run --workspace` builds it; with `-p cellmesh-operator`
//! alone, run `cargo build -p cellmesh-local` first.

// Test-only helpers: a panic here is a test failure with its message.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cellmesh_testkit::ApiServer;
#[allow(unused_imports)] // Not every test binary polls.
pub use cellmesh_testkit::eventually;
use serde_json::Value;

pub mod up;

/// Namespace of the operator's ServiceAccount and Lease.
pub const SYSTEM_NS: &str = "cellmesh-system";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running API server (no controllers) with cellmesh's CRDs and the operator's RBAC;
/// killed on drop. The [`ApiServer`] methods (kubectl …) are available on it.
pub struct Cluster {
    server: ApiServer,
    /// kubeconfig of the operator's ServiceAccount.
    pub operator_kubeconfig: PathBuf,
}

impl Deref for Cluster {
    type Target = ApiServer;

    fn deref(&self) -> &ApiServer {
        &self.server
    }
}

impl Cluster {
    /// Starts the API server, installs the CRDs and the operator's RBAC. The operator is
    /// tested alone: no Deployment controller or node agent writes status behind the test.
    pub fn start() -> Self {
        let server = ApiServer::start();
        let mut cluster = Self {
            operator_kubeconfig: server.state.path().join("operator-kubeconfig"),
            server,
        };
        cluster.install();
        cluster
    }

    fn install(&mut self) {
        let crds = repo_root().join("crds");
        self.kubectl(&["create", "-f", crds.to_str().unwrap()]);
        for crd in ["workmodels", "apps", "profiles"] {
            self.kubectl(&[
                "wait",
                "--for=condition=Established",
                &format!("crd/{crd}.cellmesh.io"),
                "--timeout=30s",
            ]);
        }
        self.kubectl(&["create", "namespace", SYSTEM_NS]);
        self.kubectl(&[
            "create",
            "serviceaccount",
            "cellmesh-operator",
            "-n",
            SYSTEM_NS,
        ]);
        let rbac = repo_root().join("operator/rbac/operator.yaml");
        self.kubectl(&["apply", "-n", SYSTEM_NS, "-f", rbac.to_str().unwrap()]);
        let subject = format!("--serviceaccount={SYSTEM_NS}:cellmesh-operator");
        self.kubectl(&[
            "create",
            "clusterrolebinding",
            "cellmesh-operator",
            "--clusterrole=cellmesh-operator",
            &subject,
        ]);
        self.kubectl(&[
            "create",
            "rolebinding",
            "cellmesh-operator-leader-election",
            "--role=cellmesh-operator-leader-election",
            &subject,
            "-n",
            SYSTEM_NS,
        ]);
        let token = self.kubectl(&[
            "create",
            "token",
            "cellmesh-operator",
            "-n",
            SYSTEM_NS,
            "--duration=2h",
        ]);
        let admin = std::fs::read_to_string(self.kubeconfig()).unwrap();
        let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
        let users = config["users"].as_sequence_mut().unwrap();
        for user in users {
            user["user"] =
                serde_yaml::to_value(serde_json::json!({"token": token.trim()})).unwrap();
        }
        std::fs::write(
            &self.operator_kubeconfig,
            serde_yaml::to_string(&config).unwrap(),
        )
        .unwrap();
    }

    /// `kubectl apply -f -` of a YAML document.
    pub fn apply(&self, namespace: &str, yaml: &str) {
        self.kubectl_stdin(
            &["apply", "--server-side", "-n", namespace, "-f", "-"],
            Some(yaml),
        );
    }

    /// An object as JSON, or None when it does not exist.
    pub fn get(&self, namespace: &str, resource: &str) -> Option<Value> {
        let out = self.kubectl_output(
            &[
                "get",
                resource,
                "-n",
                namespace,
                "-o",
                "json",
                "--show-managed-fields",
            ],
            None,
        );
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("NotFound") || stderr.contains("not found"),
                "{stderr}"
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Names of the objects of `resource` in `namespace` matching `selector`.
    pub fn names(&self, namespace: &str, resource: &str, selector: &str) -> Vec<String> {
        let list: Value = serde_json::from_str(&self.kubectl(&[
            "get", resource, "-n", namespace, "-l", selector, "-o", "json",
        ]))
        .unwrap();
        let mut names: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    /// Reports every Deployment of `selector` as fully rolled out and ready, as the
    /// Deployment controller and kubelet would (there are none in this test bed).
    pub fn fake_rollout(&self, namespace: &str, selector: &str) {
        for name in self.names(namespace, "deployments", selector) {
            let d = self.get(namespace, &format!("deployment/{name}")).unwrap();
            let generation = d["metadata"]["generation"].as_i64().unwrap();
            let replicas = d["spec"]["replicas"].as_i64().unwrap();
            let status = serde_json::json!({"status": {
                "observedGeneration": generation, "replicas": replicas,
                "updatedReplicas": replicas, "readyReplicas": replicas,
                "availableReplicas": replicas
            }});
            self.kubectl(&[
                "patch",
                "deployment",
                &name,
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ]);
        }
    }

    /// Starts an operator process with the ServiceAccount's kubeconfig.
    pub fn operator(&self, identity: &str, extra: &[&str]) -> Operator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cellmesh-operator"))
            .args([
                "run",
                "--metrics-addr",
                "127.0.0.1:0",
                "--identity",
                identity,
            ])
            .args(["--lease-namespace", SYSTEM_NS, "--log", "info,kube=warn"])
            .args(extra)
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cellmesh-operator starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("on http://").nth(1) {
                    let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
                }
            }
        });
        let metrics = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the operator reports its metrics address");
        Operator {
            child,
            metrics,
            identity: identity.to_owned(),
        }
    }
}

/// A running operator process; killed on drop.
pub struct Operator {
    child: Child,
    pub metrics: SocketAddr,
    pub identity: String,
}

impl Operator {
    /// SIGKILL: no graceful release of the Lease, no drained reconciles.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GET a path of the operator's admin server; (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The condition `type_` of an object's status, if present.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Reads an example file.
pub fn example(path: &str) -> String {
    std::fs::read_to_string(repo_root().join("examples").join(path)).unwrap()
}
