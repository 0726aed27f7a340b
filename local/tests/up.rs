//! `cellmesh-local up | status | down` as a user runs them (the real binary, a fresh
//! temporary state directory, loopback addresses picked per test), and a real Prometheus
//! discovering and scraping a pod. With Debian's Prometheus (no Kubernetes discovery) the
//! discovery goes through the network component's HTTP SD endpoint, which watches the API
//! server; with an upstream build, through `kubernetes_sd_configs` against the API server.

// Test helpers: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cellmesh-local");

/// A random 127.x.y.0 network (x in 192..=254: away from the other tests' ranges).
fn random_net() -> [u8; 3] {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ (std::process::id() << 10);
    let [a, b, ..] = seed.wrapping_mul(2_654_435_761).to_le_bytes();
    [127, 192 + (a % 63), b]
}

fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A cluster started with `up` in its own state directory; `down` when dropped.
struct Cluster {
    state: tempfile::TempDir,
    home: tempfile::TempDir,
    net: [u8; 3],
    prometheus: SocketAddr,
}

impl Cluster {
    fn new() -> Self {
        let net = random_net();
        let ip = Ipv4Addr::new(net[0], net[1], net[2], 1);
        Self {
            state: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            net,
            prometheus: SocketAddr::from((ip, free_port(ip))),
        }
    }

    fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], last)
    }

    fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Extra `apiserver` flags that keep components of other branches off shared
    /// addresses (only those this build knows).
    fn server_args(&self) -> Vec<String> {
        let help = Command::new(BIN)
            .args(["apiserver", "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        let mut args = Vec::new();
        if help.contains("--node-metrics-addr") {
            // On the node's address (the API server's), as Prometheus' node discovery expects.
            args.push(format!(
                "--node-metrics-addr={}:{}",
                self.ip(1),
                free_port(self.ip(1))
            ));
        }
        if help.contains("--cgroup-parent") {
            // Its own cgroup parent: a node agent sweeps (SIGKILLs) every container under its
            // parent when it starts and stops, and other tests' clusters run in parallel.
            args.push(format!(
                "--cgroup-parent=cellmesh-test-{}-{}",
                self.net[1], self.net[2]
            ));
        }
        if help.contains("--pod-cidr") {
            args.push(format!(
                "--pod-cidr={}.{}.{}.128/25",
                self.net[0], self.net[1], self.net[2]
            ));
        }
        args
    }

    fn up(&self, extra: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("up")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg(format!("--listen={}:0", self.ip(1)))
            .arg(format!("--dns-addr={}:53", self.ip(253)))
            .arg(format!("--prometheus-sd-addr={}:10080", self.ip(253)))
            .arg(format!(
                "--service-cidr={}.{}.{}.0/26",
                self.net[0], self.net[1], self.net[2]
            ))
            .arg(format!("--prometheus-listen={}", self.prometheus))
            .arg("--timeout=60s")
            .args(extra)
            .arg("--")
            .args(self.server_args())
            .stdin(Stdio::null());
        let out = cmd.output().unwrap();
        eprintln!(
            "up: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn run(&self, sub: &str) -> Output {
        Command::new(BIN)
            .arg(sub)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .unwrap()
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .args(args)
            .arg("--request-timeout=30s")
            .env("KUBECONFIG", self.state_dir().join("kubeconfig"))
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

    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn server_pid(&self) -> u32 {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.state_dir().join("up.json")).unwrap())
                .unwrap();
        u32::try_from(record["server"]["pid"].as_u64().unwrap()).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn up_status_down_and_up_again_keeps_the_state() {
    let cluster = Cluster::new();
    let profile = repo_file("examples/profiles/fast.yaml");
    let chain = repo_file("examples/workmodels/chain.yaml");
    let out = cluster.up(&[
        "--no-prometheus",
        &format!("--example={}", profile.display()),
        &format!("--example={}", chain.display()),
    ]);
    assert!(out.status.success());
    let stdout = text(&out);
    assert!(stdout.contains("✓ API server https://"), "{stdout}");
    assert!(stdout.contains("✓ CRDs: apps.cellmesh.io"), "{stdout}");
    assert!(stdout.contains("workmodel/chain"), "{stdout}");
    // The main job end to end: the operator runs as a pod, reconciles the example, its cells
    // run, and a request through the gateway's ClusterIP is answered.
    assert!(
        stdout.contains("✓ operator: deployment cellmesh-system/cellmesh-operator"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ WorkModel chain Ready; GET http://") && stdout.contains(" 200 OK"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "export KUBECONFIG={}",
            cluster
                .state_dir()
                .canonicalize()
                .unwrap()
                .join("kubeconfig")
                .display()
        )),
        "{stdout}"
    );
    let pid = cluster.server_pid();
    assert!(alive(pid));

    let status = cluster.run("status");
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains(&format!("running (pid {pid})"))
            && text(&status).contains("healthy"),
        "{}",
        text(&status)
    );
    assert!(text(&status).contains("network"), "{}", text(&status));
    let wm = cluster.kubectl_ok(&["get", "workmodel", "chain", "-o", "name"], None);
    assert_eq!(wm.trim(), "workmodel.cellmesh.io/chain");
    cluster.kubectl_ok(&["create", "configmap", "kept", "--from-literal=a=1"], None);

    // A second `up` while running says so and changes nothing.
    let again = cluster.up(&["--no-prometheus", "--no-example"]);
    assert!(again.status.success());
    assert!(text(&again).contains("already running"), "{}", text(&again));
    assert_eq!(cluster.server_pid(), pid);

    let down = cluster.run("down");
    assert!(down.status.success());
    assert!(
        text(&down).contains("stopped the API server"),
        "{}",
        text(&down)
    );
    assert!(!alive(pid), "the server survived `down`");
    let stopped = cluster.run("status");
    assert_eq!(stopped.status.code(), Some(3), "{}", text(&stopped));
    assert!(text(&stopped).contains("stopped"));

    // `up` on the existing state directory resumes it.
    let out = cluster.up(&["--no-prometheus", "--no-example"]);
    assert!(out.status.success());
    assert_ne!(cluster.server_pid(), pid);
    let kept = cluster.kubectl_ok(
        &["get", "configmap", "kept", "-o", "jsonpath={.data.a}"],
        None,
    );
    assert_eq!(kept, "1");
    cluster.kubectl_ok(&["get", "workmodel", "chain"], None);
}

/// Serves `/metrics` in the Prometheus text format on `addr`.
fn metrics_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            let body = "# TYPE cellmesh_up_test gauge\ncellmesh_up_test 1\n";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

#[test]
fn prometheus_discovers_and_scrapes_annotated_pods() {
    if !Path::new("/usr/bin/prometheus").is_file() {
        eprintln!("SKIPPED: /usr/bin/prometheus is missing (apt-get install prometheus)");
        return;
    }
    let cluster = Cluster::new();
    let out = cluster.up(&["--no-example"]);
    assert!(out.status.success());
    assert!(
        text(&out).contains("✓ Prometheus http://"),
        "{}",
        text(&out)
    );
    let status = cluster.run("status");
    assert!(
        text(&status).contains("prometheus:  running"),
        "{}",
        text(&status)
    );

    // A pod bound to another node (so no node agent runs it) with a reachable address.
    let pod_ip = cluster.ip(60);
    let port = free_port(pod_ip);
    metrics_server(SocketAddr::from((pod_ip, port)));
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"{{"apiVersion": "v1", "kind": "Pod",
                "metadata": {{"name": "scraped", "annotations": {{
                    "prometheus.io/scrape": "true", "prometheus.io/port": "{port}"}}}},
                "spec": {{"nodeName": "elsewhere", "containers": [{{"name": "app", "image": "example/app:1",
                    "ports": [{{"containerPort": {port}}}]}}]}}}}"#
        )),
    );
    cluster.kubectl_ok(
        &[
            "patch",
            "pod",
            "scraped",
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status": {{"phase": "Running", "podIP": "{pod_ip}", "podIPs": [{{"ip": "{pod_ip}"}}]}}}}"#),
        ],
        None,
    );

    let deadline = Instant::now() + Duration::from_secs(90);
    let target = loop {
        let body = http_get(cluster.prometheus, "/api/v1/targets").unwrap_or_default();
        let targets: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let found = targets["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["labels"]["pod"] == "scraped" && t["health"] == "up")
            .cloned();
        if let Some(t) = found {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the pod; targets: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(target["labels"]["job"], "kubernetes-pods");
    assert_eq!(target["labels"]["namespace"], "default");
    assert_eq!(target["labels"]["container"], "app");
    assert_eq!(
        target["scrapeUrl"],
        format!("http://{pod_ip}:{port}/metrics")
    );
    // And the scraped series is queryable.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = http_get(
            cluster.prometheus,
            "/api/v1/query?query=cellmesh_up_test%7Bpod%3D%22scraped%22%7D",
        )
        .unwrap_or_default();
        if body.contains(r#""pod":"scraped""#) {
            break;
        }
        assert!(Instant::now() < deadline, "no series: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }

    let down = cluster.run("down");
    assert!(
        text(&down).contains("stopped Prometheus"),
        "{}",
        text(&down)
    );
}

#[test]
fn up_in_the_foreground_stops_everything_on_sigterm() {
    let cluster = Cluster::new();
    let mut up = Command::new(BIN)
        .arg("up")
        .arg("--state-dir")
        .arg(cluster.state_dir())
        .arg(format!("--listen={}:0", cluster.ip(1)))
        .arg(format!("--dns-addr={}:53", cluster.ip(253)))
        .arg(format!("--prometheus-sd-addr={}:10080", cluster.ip(253)))
        .args(["--no-prometheus", "--no-example", "--foreground", "--"])
        .args(cluster.server_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read `up`'s output as it comes; wait for it to say it is attached.
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut output = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !output
        .iter()
        .any(|l: &String| l.contains("running in the foreground"))
    {
        assert!(Instant::now() < deadline, "never attached: {output:?}");
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            output.push(line);
        }
        assert!(
            up.try_wait().unwrap().is_none(),
            "`up --foreground` exited early: {output:?}"
        );
    }
    assert!(cluster.run("status").status.success());
    let pid = cluster.server_pid();
    assert!(alive(pid));
    let term = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "`up --foreground` ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    output.extend(rx.iter());
    let stdout = output.join("\n");
    assert!(status.success(), "{status}: {stdout}");
    assert!(stdout.contains("stopped the API server"), "{stdout}");
    assert!(!alive(pid), "the server outlived `up --foreground`");
}
