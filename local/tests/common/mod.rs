//! Test harness: runs the real `cellmesh-local apiserver` binary on a random loopback
//! address with its own state directory, and drives it with the real `kubectl`.

// Test-only helpers: a panic here is a test failure with its message.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running API server; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub state: tempfile::TempDir,
    /// HOME for kubectl (its discovery cache lives there).
    pub home: tempfile::TempDir,
}

fn random_loopback() -> std::net::IpAddr {
    let bytes: [u8; 3] = rand_bytes();
    std::net::IpAddr::from([127, bytes[0].max(1), bytes[1], bytes[2].clamp(2, 254)])
}

fn rand_bytes() -> [u8; 3] {
    // Good enough spread for parallel tests: time and process id mixed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mix = nanos
        ^ (std::process::id() << 8)
        ^ (COUNTER.fetch_add(7919, std::sync::atomic::Ordering::Relaxed));
    let [a, b, c, _] = mix.wrapping_mul(2_654_435_761).to_le_bytes();
    [a, b, c]
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Server {
    /// Starts a server on a random 127.x.y.z address and a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

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

    pub fn kubeconfig(&self) -> PathBuf {
        self.state.path().join("kubeconfig")
    }

    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .arg("--request-timeout=30s")
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.home.path())
            .env_remove("KUBERNETES_SERVICE_HOST");
        cmd
    }

    /// Runs kubectl and returns its output whatever the exit status.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.kubectl_command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            let input = input.to_owned();
            // kubectl may stop reading early (e.g. refusing input): that is its answer.
            std::thread::spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            });
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl, asserting success; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
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

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_cellmesh-local"))
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

/// Polls `check` until it returns Some or the deadline passes.
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
