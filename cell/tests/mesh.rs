//! Component tests: real `cellmesh-cell` processes on random 127.x.y.z addresses (ports
//! chosen by the kernel), wired with `--resolve`, observed through their own metrics.
//! Every process is killed when its guard drops.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use cellmesh_cell::proto::micro_service_client::MicroServiceClient;
use cellmesh_cell::proto::{Message, TraceGroup, TraceNode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::RngExt;
use serde_json::{Value, json};

const PARALLEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/mubench/workmodel-parallel-3services.json"
);

/// A running cell; killed on drop.
struct Cell {
    name: String,
    child: Child,
    rest: SocketAddr,
    grpc: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Cell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A random loopback address other than 127.0.0.1, so cells look like pods.
fn random_loopback() -> String {
    let mut rng = rand::rng();
    format!(
        "127.{}.{}.{}",
        rng.random_range(1..255),
        rng.random_range(0..255),
        rng.random_range(1..255)
    )
}

/// Starts `service` of `workmodel` with `resolve` (name, address) overrides and waits for its
/// ready line.
fn start(
    workmodel: &Path,
    service: &str,
    resolve: &[(String, SocketAddr)],
    extra: &[&str],
) -> Cell {
    let ip = random_loopback();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cellmesh-cell"));
    command
        .args([
            "--workmodel",
            &workmodel.display().to_string(),
            "--service",
            service,
        ])
        .args(["--listen", &format!("{ip}:0")])
        .args(["--grpc-listen", &format!("{ip}:0")])
        .args(["--admin-listen", &format!("{ip}:0")])
        .args(["--runtime-threads", "2"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("APP")
        .env_remove("K8S_APP")
        .env_remove("ZONE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, address) in resolve {
        command.args(["--resolve", &format!("{name}={address}")]);
    }
    let mut child = command.spawn().expect("start cellmesh-cell");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            panic!("{service} did not print its ready line: {e}");
        }
    };
    let field = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
    };
    Cell {
        name: service.to_owned(),
        rest: field("rest"),
        grpc: field("grpc"),
        admin: field("admin"),
        child,
    }
}

/// Starts `services` of `workmodel` leaves first, each resolving every earlier one (REST or
/// gRPC address by `grpc`).
fn start_mesh(workmodel: &Path, services: &[&str], grpc: bool) -> Vec<Cell> {
    let mut cells: Vec<Cell> = Vec::new();
    for service in services {
        let resolve: Vec<(String, SocketAddr)> = cells
            .iter()
            .map(|c| (c.name.clone(), if grpc { c.grpc } else { c.rest }))
            .collect();
        cells.push(start(workmodel, service, &resolve, &[]));
    }
    cells
}

fn cell<'a>(cells: &'a [Cell], name: &str) -> &'a Cell {
    cells.iter().find(|c| c.name == name).expect("cell")
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn request(client: &HttpClient, method: &str, url: &str, body: &str) -> (u16, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sum of the values of the series of `cell`'s admin `/metrics` whose line starts with
/// `prefix` and contains every one of `labels`.
async fn metric(client: &HttpClient, cell: &Cell, prefix: &str, labels: &[&str]) -> f64 {
    let (_, text) = request(client, "GET", &format!("http://{}/metrics", cell.admin), "").await;
    text.lines()
        .filter(|line| line.starts_with(prefix) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn requests_served(client: &HttpClient, cell: &Cell, method: &str) -> f64 {
    let label = format!("method=\"{method}\"");
    metric(
        client,
        cell,
        "mub_request_processing_latency_milliseconds_count",
        &[&label],
    )
    .await
}

/// Writes `workmodel` into `dir` as `name` and returns its path.
fn write(dir: &Path, name: &str, workmodel: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(workmodel).unwrap()).unwrap();
    path
}

/// The parallel example with s1 and s2 sleeping `sleep` seconds and no CPU stress.
fn sleepy(sequential: bool, sleep: f64) -> Value {
    let mut workmodel: Value =
        serde_json::from_str(&std::fs::read_to_string(PARALLEL).unwrap()).unwrap();
    for (name, spec) in workmodel.as_object_mut().unwrap() {
        let loader = &mut spec["internal_service"]["loader"];
        loader["cpu_stress"]["run"] = json!(false);
        loader["mean_response_size"] = json!(0.1);
        if name != "s0" {
            loader["sleep_stress"] = json!({"run": true, "sleep_time": sleep});
        }
    }
    if sequential {
        workmodel["s0"]["external_services"] = json!([{"seq_len": 100, "services": ["s1", "s2"]}]);
    }
    workmodel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mubench_parallel_example_runs_unchanged() {
    let cells = start_mesh(Path::new(PARALLEL), &["s1", "s2", "s0"], false);
    let client = client();
    let s0 = cell(&cells, "s0");
    for _ in 0..3 {
        let (status, body) =
            request(&client, "GET", &format!("http://{}/api/v1", s0.rest), "").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.bytes().all(|b| b.is_ascii_alphabetic()));
    }
    for name in ["s1", "s2"] {
        assert_eq!(
            requests_served(&client, cell(&cells, name), "GET").await,
            3.0,
            "{name}"
        );
    }
    assert_eq!(requests_served(&client, s0, "GET").await, 3.0);

    // The REST port also speaks HTTP/2 with prior knowledge (h2c).
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let url = format!("http://{}/api/v1", cell(&cells, "s1").rest);
    let (status, _) = request(&h2, "GET", &url, "").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_run_in_parallel_and_calls_of_a_group_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let sleep = 0.3;
    let mut external_ms = Vec::new();
    let client = client();
    for sequential in [false, true] {
        let path = write(dir.path(), "wm.json", &sleepy(sequential, sleep));
        let cells = start_mesh(&path, &["s1", "s2", "s0"], false);
        let s0 = cell(&cells, "s0");
        let n = 3;
        for _ in 0..n {
            let (status, body) =
                request(&client, "GET", &format!("http://{}/api/v1", s0.rest), "").await;
            assert_eq!(status, 200, "{body}");
        }
        for name in ["s1", "s2"] {
            assert_eq!(
                requests_served(&client, cell(&cells, name), "GET").await,
                3.0
            );
        }
        let sum = metric(
            &client,
            s0,
            "mub_external_processing_latency_milliseconds_sum",
            &[],
        )
        .await;
        external_ms.push(sum / f64::from(n));
    }
    let (parallel, sequential) = (external_ms[0], external_ms[1]);
    // Each call sleeps 300 ms: ~300 ms in parallel, ~600 ms in sequence. Scheduling noise
    // adds to both; the bounds only need parallel < 0.75 × sequential and sequential ≥ 2 sleeps.
    assert!(sequential >= 2000.0 * sleep, "sequential {sequential} ms");
    assert!(parallel >= 1000.0 * sleep, "parallel {parallel} ms");
    assert!(
        parallel < 0.75 * sequential,
        "parallel {parallel} ms vs sequential {sequential} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_trace_runs_exactly_the_given_tree() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "wm.json", &sleepy(false, 0.0));
    // Every cell resolves every other: s1 calls s2 in the trace.
    let s2 = start(&path, "s2", &[], &[]);
    let s1 = start(&path, "s1", &[("s2".into(), s2.rest)], &[]);
    let s0 = start(
        &path,
        "s0",
        &[("s1".into(), s1.rest), ("s2".into(), s2.rest)],
        &[],
    );
    let client = client();
    let trace =
        r#"{"s0__r": [{"s1__a": [{"s2__x": []}, {"s2__y": []}], "s2__b": []}, {"s1__c": []}]}"#;
    let (status, body) = request(
        &client,
        "POST",
        &format!("http://{}/api/v1", s0.rest),
        trace,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // s1: s1__a and s1__c; s2: s2__b from s0, s2__x and s2__y from s1__a. No GETs: the
    // spec's own groups (s0 → s1, s0 → s2) are not used for a trace.
    assert_eq!(requests_served(&client, &s0, "POST").await, 1.0);
    assert_eq!(requests_served(&client, &s1, "POST").await, 2.0);
    assert_eq!(requests_served(&client, &s2, "POST").await, 3.0);
    for cell in [&s0, &s1, &s2] {
        assert_eq!(requests_served(&client, cell, "GET").await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_downstream_gives_502_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "wm.json", &sleepy(false, 0.0));
    let mut cells = start_mesh(&path, &["s1", "s2", "s0"], false);
    let client = client();
    let url = format!("http://{}/api/v1", cell(&cells, "s0").rest);
    assert_eq!(request(&client, "GET", &url, "").await.0, 200);

    let s2 = cells.remove(1);
    assert_eq!(s2.name, "s2");
    drop(s2); // killed and reaped
    let (status, body) = request(&client, "GET", &url, "").await;
    assert_eq!(status, 502, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["service"], "s2");
    assert_eq!(body["error"], "downstream service s2 failed");
    // s1 was still called (µBench continues the other groups).
    assert_eq!(
        requests_served(&client, cell(&cells, "s1"), "GET").await,
        2.0
    );
}

fn node(key: &str, groups: Vec<Vec<TraceNode>>) -> TraceNode {
    TraceNode {
        key: key.to_owned(),
        groups: groups
            .into_iter()
            .map(|calls| TraceGroup { calls })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_mesh_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut workmodel = sleepy(false, 0.0);
    for spec in workmodel.as_object_mut().unwrap().values_mut() {
        spec["request_method"] = json!("grpc");
    }
    let path = write(dir.path(), "wm.json", &workmodel);
    let cells = start_mesh(&path, &["s1", "s2", "s0"], true);
    let s0 = cell(&cells, "s0");
    let client = client();

    // The REST entry point of a gRPC mesh (µBench's gateway speaks REST) calls s1 and s2 by gRPC.
    let (status, body) = request(&client, "GET", &format!("http://{}/api/v1", s0.rest), "").await;
    assert_eq!(status, 200, "{body}");

    // gRPC in: unary stochastic, then a streamed trace.
    let mut grpc = MicroServiceClient::connect(format!("http://{}", s0.grpc))
        .await
        .unwrap();
    let reply = grpc
        .get_micro_service_response(Message::default())
        .await
        .unwrap()
        .into_inner();
    assert!(reply.status_code);
    let trace = node(
        "s0__t",
        vec![vec![node("s2__a", vec![])], vec![node("s1__b", vec![])]],
    );
    let mut stream = grpc
        .stream_micro_service_response(Message {
            trace: Some(trace),
            ..Message::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.status_code);
    }
    for name in ["s1", "s2"] {
        // Two stochastic calls and one trace call each, all by gRPC.
        assert_eq!(
            requests_served(&client, cell(&cells, name), "grpc").await,
            3.0,
            "{name}"
        );
        assert_eq!(
            requests_served(&client, cell(&cells, name), "GET").await,
            0.0,
            "{name}"
        );
    }
    let downstream_ok = metric(
        &client,
        s0,
        "cellmesh_downstream_calls_total",
        &["outcome=\"ok\""],
    )
    .await;
    assert_eq!(downstream_ok, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "wm.json", &sleepy(false, 0.5));
    let mut s1 = start(&path, "s1", &[], &["--drain-grace", "100ms"]);
    let client = client();
    let url = format!("http://{}/api/v1", s1.rest);
    let in_flight = tokio::spawn(async move { request(&client, "GET", &url, "").await });
    // Wait until the request is admitted (it sleeps 500 ms), then ask the cell to stop.
    let probe = self::client();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&probe, &s1, "cellmesh_inflight_requests", &[]).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request was never admitted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &s1.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, body) = in_flight.await.unwrap();
    assert_eq!(
        code, 200,
        "the admitted request completes during the drain: {body}"
    );
    let exit = loop {
        if let Some(exit) = s1.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}");
}

#[test]
fn bad_workmodel_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.json",
        &json!({"s0": {"internal_service": {"compute_pi": {"range_complexity": "wide"}}}}),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_cellmesh-cell"))
        .args([
            "--workmodel",
            &path.display().to_string(),
            "--service",
            "s0",
        ])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("at `s0.internal_service.compute_pi.range_complexity`: invalid type"),
        "{stderr}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_cellmesh-cell"))
        .args(["--workmodel", PARALLEL, "--service", "s9"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("service `s9` is not in the workmodel (it has: s0, s1, s2)"),
        "{stderr}"
    );
}
