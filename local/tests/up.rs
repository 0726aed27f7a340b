//! `cellmesh-local up | status | down` as a user runs them (the real binary, a fresh
//! temporary state directory, loopback addresses picked per test), and a real Prometheus
//! discovering and scraping a pod. With Debian's Prometheus (no Kubernetes discovery) the
//! discovery goes through the network component's HTTP SD endpoint, which watches the API
//! server; with an upstream build, through `kubernetes_sd_configs` against the API server.

// Test helpers: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cellmesh_testkit::{LocalCluster, free_port, http_get};

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
    let cluster = LocalCluster::new();
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
    let wm = cluster.kubectl(&["get", "workmodel", "chain", "-o", "name"], None);
    assert_eq!(wm.trim(), "workmodel.cellmesh.io/chain");
    cluster.kubectl(&["create", "configmap", "kept", "--from-literal=a=1"], None);

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
    let kept = cluster.kubectl(
        &["get", "configmap", "kept", "-o", "jsonpath={.data.a}"],
        None,
    );
    assert_eq!(kept, "1");
    cluster.kubectl(&["get", "workmodel", "chain"], None);
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

#[test]
fn prometheus_discovers_and_scrapes_annotated_pods() {
    if !Path::new("/usr/bin/prometheus").is_file() {
        eprintln!("SKIPPED: /usr/bin/prometheus is missing (apt-get install prometheus)");
        return;
    }
    let cluster = LocalCluster::new();
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
    cluster.kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"{{"apiVersion": "v1", "kind": "Pod",
                "metadata": {{"name": "scraped", "annotations": {{
                    "prometheus.io/scrape": "true", "prometheus.io/port": "{port}"}}}},
                "spec": {{"nodeName": "elsewhere", "containers": [{{"name": "app", "image": "example/app:1",
                    "ports": [{{"containerPort": {port}}}]}}]}}}}"#
        )),
    );
    cluster.kubectl(
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
    let cluster = LocalCluster::new();
    let mut up = cluster
        .up_command(&["--no-prometheus", "--no-example", "--foreground"])
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
