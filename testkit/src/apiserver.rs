//! [`ApiServer`]: `cellmesh-local apiserver` alone on a random loopback address.

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rand::RngExt as _;

use crate::target_binary;

/// A running API server with its own state directory; killed when dropped.
pub struct ApiServer {
    child: Child,
    pub addr: SocketAddr,
    pub state: tempfile::TempDir,
    /// HOME for kubectl (its discovery cache lives there).
    pub home: tempfile::TempDir,
}

impl ApiServer {
    /// Starts a server on a random 127.x.y.z address and a free port, without controllers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with extra `apiserver` flags (`--controllers …` turns
    /// controllers on).
    pub fn start_with(extra: &[&str]) -> Self {
        let state = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let listen = SocketAddr::new(random_loopback(), 0);
        let (child, addr) = spawn(listen, state.path(), extra);
        Self {
            child,
            addr,
            state,
            home,
        }
    }

    /// Stops the server and starts it again on the same address with the same state.
    pub fn restart(&mut self, extra: &[&str]) {
        self.stop();
        let (child, addr) = spawn(self.addr, self.state.path(), extra);
        self.child = child;
        self.addr = addr;
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.path().join("kubeconfig")
    }

    /// kubectl as the admin, to be completed and run by the caller.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .args(args)
            .arg("--request-timeout=30s")
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.home.path())
            .env_remove("KUBERNETES_SERVICE_HOST");
        command
    }

    /// Runs kubectl and returns its output whatever the exit status.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        crate::kubectl(&self.kubeconfig(), self.home.path(), args, stdin)
    }

    /// Runs kubectl, asserting success; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `stdin`, asserting success; returns stdout.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        crate::kubectl_stdout(args, self.kubectl_output(args, stdin))
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn kubectl_fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A random 127.x.y.z (z in 2..=254), x below 160: whole-cluster networks take 160 and up.
fn random_loopback() -> IpAddr {
    let mut rng = rand::rng();
    IpAddr::from([
        127,
        rng.random_range(1..160),
        rng.random_range(0..=255),
        rng.random_range(2..=254),
    ])
}

fn spawn(listen: SocketAddr, state: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    // Tests of API semantics run the server alone: controllers would add objects they do
    // not expect (`kube-root-ca.crt` ConfigMaps, ReplicaSets). Component tests pass
    // `--controllers …` themselves.
    let controllers: &[&str] = if extra.iter().any(|a| a.starts_with("--controllers")) {
        &[]
    } else {
        &["--controllers", "none"]
    };
    let mut child = Command::new(target_binary("cellmesh-local"))
        .arg("apiserver")
        .args(controllers)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--state-dir")
        .arg(state)
        .arg("--log")
        .arg("warn")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cellmesh-local starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("cellmesh-local apiserver listening on https://") {
                let _ = tx.send(url.parse::<SocketAddr>().unwrap());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            panic!("the API server did not report listening within 30s");
        }
    }
}
