//! Component tests of the engine wired into the cell: the real `cellmesh-cell` binary on a
//! random 127.x.y.z address with a `--profile`, driven over REST and gRPC, observed through
//! its admin `/info`. Every process is killed when its guard drops; every wait is bounded.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh_cell::proto::Message;
use cellmesh_cell::proto::micro_service_client::MicroServiceClient;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::RngExt;
use serde_json::{Value, json};

/// A running cell; killed on drop.
struct Cell {
    child: Child,
    rest: SocketAddr,
    grpc: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Cell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random_loopback() -> String {
    let mut rng = rand::rng();
    format!(
        "127.{}.{}.{}",
        rng.random_range(1..255),
        rng.random_range(0..255),
        rng.random_range(1..255)
    )
}

/// A one-service workmodel whose `s` sleeps `sleep` seconds per request (no CPU stress).
fn sleepy_workmodel(sleep: f64) -> Value {
    json!({"s": {"internal_service": {"loader": {
        "cpu_stress": {"run": false},
        "sleep_stress": {"run": true, "sleep_time": sleep},
        "mean_response_size": 0.01
    }}}})
}

/// What the cell runs: a workmodel service `s`, or an App file.
enum Run {
    Service(Value),
    App(&'static str),
}

/// Starts a cell running `run` with `profile` (YAML, mounted as `profile.yaml` behind a
/// ConfigMap-style `..data` symlink) on a random loopback address and waits for its ready line.
fn start(run: Run, profile: &str, extra: &[&str]) -> Cell {
    start_on(run, profile, extra, &random_loopback(), 0, 0).unwrap()
}

/// As [`start`], on `ip` with the given REST and gRPC ports (0: any); the cell's exit
/// status and stderr when it stops before its ready line.
fn start_on(
    run: Run,
    profile: &str,
    extra: &[&str],
    ip: &str,
    rest_port: u16,
    grpc_port: u16,
) -> Result<Cell, String> {
    let dir = tempfile::tempdir().unwrap();
    write_profile(dir.path(), profile);
    let mut command = Command::new(env!("CARGO_BIN_EXE_cellmesh-cell"));
    match run {
        Run::Service(workmodel) => {
            let path = dir.path().join("wm.json");
            std::fs::write(&path, workmodel.to_string()).unwrap();
            command
                .args(["--workmodel", path.to_str().unwrap()])
                .args(["--service", "s"]);
        }
        Run::App(app) => {
            let path = dir.path().join("app.yaml");
            std::fs::write(&path, app).unwrap();
            command.args(["--app", path.to_str().unwrap()]);
        }
    }
    command
        .args([
            "--profile",
            dir.path().join("profile.yaml").to_str().unwrap(),
        ])
        .args(["--profile-poll", "50ms"])
        .args(["--listen", &format!("{ip}:{rest_port}")])
        .args(["--grpc-listen", &format!("{ip}:{grpc_port}")])
        .args(["--admin-listen", &format!("{ip}:0")])
        .args(["--runtime-threads", "2"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("APP")
        .env_remove("K8S_APP")
        .env_remove("CELLMESH_PROFILE")
        .env_remove("CELLMESH_APP")
        .env_remove("CELLMESH_WORKMODEL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start cellmesh-cell");
    // stderr is passed through to the test's output, and its last lines kept for the error.
    let stderr = child.stderr.take().expect("piped stderr");
    let stderr_tail = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let tail = stderr_tail.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let mut tail = tail.lock().unwrap();
            tail.push_str(&line);
            tail.push('\n');
        }
    });
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
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
            let status = child.wait().unwrap();
            // Let the stderr thread reach the end of the pipe.
            std::thread::sleep(Duration::from_millis(100));
            let stderr = stderr_tail.lock().unwrap().clone();
            return Err(format!(
                "the cell did not print its ready line ({e}), {status}: {stderr}"
            ));
        }
    };
    let field = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
    };
    Ok(Cell {
        rest: field("rest"),
        grpc: field("grpc"),
        admin: field("admin"),
        child,
        _dir: dir,
    })
}

/// Writes `profile` as a new `..vN` directory and swaps the `..data` symlink to it
/// atomically, as the kubelet updates a ConfigMap volume.
fn write_profile(dir: &Path, profile: &str) {
    static VERSION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let version = VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let target = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("profile.yaml"), profile).unwrap();
    let staging = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(target.file_name().unwrap(), &staging).unwrap();
    std::fs::rename(&staging, dir.join("..data")).unwrap();
    let link = dir.join("profile.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/profile.yaml", &link).unwrap();
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An answer: status, headers, body.
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

async fn send(client: &HttpClient, method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("no answer within 30 s")
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn info(cell: &Cell) -> Value {
    let answer = send(
        &client(),
        "GET",
        &format!("http://{}/info", cell.admin),
        &[],
    )
    .await;
    serde_json::from_str(&answer.body).unwrap()
}

/// Polls `/info` until `done` holds; panics with the last document after 20 s.
async fn wait_for(cell: &Cell, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = info(cell).await;
        if done(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {info:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` concurrent GETs of the service path.
async fn burst(
    cell: &Cell,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Answer> {
    let url = format!("http://{}/api/v1", cell.rest);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { send(&client(), "GET", &url, headers).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_burst_is_shed_with_retry_after_and_accepted_requests_succeed() {
    let cell = start(
        Run::Service(sleepy_workmodel(0.2)),
        "isolate: inline\nconcurrency: 2\npoolMin: 1\npoolLimit: 1\nqueueLimit: 2\n",
        &[],
    );
    let answers = burst(&cell, 24, &[]).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let shed: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(ok + shed.len(), answers.len(), "only 200 or 503");
    assert!(ok >= 4, "2 running + 2 queued at least: {ok}");
    assert!(!shed.is_empty(), "a burst of 24 over 4 slots must shed");
    for answer in &shed {
        let retry: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["code"], "QUEUE_FULL", "{body}");
    }
    let info = info(&cell).await;
    assert_eq!(info["engine"]["rejected"], shed.len() as u64, "{info:#}");
    assert_eq!(info["engine"]["accepted"], ok as u64);
    assert_eq!(info["engine"]["queueLength"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_process_fails_only_its_requests_with_502_naming_it() {
    let cell = start(
        Run::Service(sleepy_workmodel(2.0)),
        "isolate: process\nconcurrency: 4\npoolMin: 2\npoolLimit: 2\nqueueLimit: 100\nidleTimeout: 0s\n",
        &[],
    );
    wait_for(&cell, "two idle workers", |i| {
        i["engine"]["idleWorkers"] == 2
    })
    .await;
    let requests = tokio::spawn({
        let rest = cell.rest;
        async move {
            let url = format!("http://{rest}/api/v1");
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move { send(&client(), "GET", &url, &[]).await })
                })
                .collect();
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.unwrap());
            }
            answers
        }
    });
    let busy = wait_for(&cell, "eight requests running", |i| {
        i["engine"]["inFlight"] == 8
    })
    .await;
    let victim = &busy["engine"]["workers"][0];
    assert_eq!(
        victim["load"], 4,
        "least-loaded dispatch spreads 4 + 4: {busy:#}"
    );
    let pid = victim["pid"].as_u64().unwrap();
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let answers = requests.await.unwrap();
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert_eq!(failed.len(), 4, "only the killed worker's requests fail");
    for answer in failed {
        assert_eq!(answer.status, 502, "{}", answer.body);
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["code"], "WORKER_LOST");
        assert!(
            body["worker"]
                .as_str()
                .unwrap()
                .contains(&format!("pid {pid}")),
            "{body}"
        );
        assert!(
            body["reason"].as_str().unwrap().contains("signal: 9"),
            "{body}"
        );
    }
    let info = wait_for(&cell, "the pool replaced the worker", |i| {
        i["engine"]["workerRestarts"] == 1 && i["engine"]["idleWorkers"] == 2
    })
    .await;
    assert!(
        info["engine"]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["pid"] != pid)
    );
    let later = burst(&cell, 2, &[]).await;
    assert!(later.iter().all(|a| a.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_completes_every_accepted_request_and_exits_0() {
    let mut cell = start(
        Run::Service(sleepy_workmodel(0.3)),
        "concurrency: 2\npoolMin: 1\npoolLimit: 1\nqueueLimit: 50\nterminationTimeout: 20s\n",
        &["--drain-grace", "300ms"],
    );
    let rest = cell.rest;
    let load = tokio::spawn(async move {
        let url = format!("http://{rest}/api/v1");
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { send(&client(), "GET", &url, &[]).await })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    });
    wait_for(&cell, "six accepted requests", |i| {
        i["engine"]["accepted"] == 6
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &cell.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Readiness turns off first, while the servers still answer.
    let ready = send(
        &client(),
        "GET",
        &format!("http://{}/ready", cell.admin),
        &[],
    )
    .await;
    assert_eq!(ready.status, 503);

    let answers = load.await.unwrap();
    for answer in &answers {
        assert_eq!(
            answer.status, 200,
            "accepted requests complete: {}",
            answer.body
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = cell.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(0), "{exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_profile_applies_through_the_running_server_and_a_bad_one_is_refused() {
    let cell = start(
        Run::Service(sleepy_workmodel(0.3)),
        "apiVersion: cellmesh.io/v1alpha1\nkind: Profile\nmetadata: {name: p}\nspec:\n  concurrency: 8\n  poolLimit: 2\n  queueLimit: 1000\n",
        &[],
    );
    let answers = burst(&cell, 6, &[]).await;
    assert!(answers.iter().all(|a| a.status == 200), "16 slots take 6");

    write_profile(
        cell._dir.path(),
        "kind: Profile\nspec: {concurrency: 1, poolMin: 1, poolLimit: 1, queueLimit: 1}\n",
    );
    wait_for(&cell, "the new profile", |i| {
        i["engine"]["profile"]["queueLimit"] == 1
    })
    .await;
    let answers = burst(&cell, 6, &[]).await;
    let shed = answers.iter().filter(|a| a.status == 503).count();
    assert!(shed >= 1, "one running + one queued: the rest is shed");
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 503));

    write_profile(cell._dir.path(), "kind: Profile\nspec: {concurrency: 0}\n");
    let info = wait_for(&cell, "the refusal", |i| {
        i["engine"]["profileRejected"] == 1
    })
    .await;
    assert_eq!(
        info["engine"]["profile"]["queueLimit"], 1,
        "the old profile stays"
    );
    assert_eq!(info["engine"]["profile"]["concurrency"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_timeout_gives_504_while_running_or_queued_and_bad_values_400() {
    let cell = start(
        Run::Service(sleepy_workmodel(1.0)),
        "concurrency: 1\npoolMin: 1\npoolLimit: 1\n",
        &[],
    );
    let url = format!("http://{}/api/v1", cell.rest);
    let first = tokio::spawn({
        let url = url.clone();
        async move { send(&client(), "GET", &url, &[("x-request-timeout", "150")]).await }
    });
    wait_for(&cell, "the first request running", |i| {
        i["engine"]["inFlight"] == 1
    })
    .await;
    let queued = send(&client(), "GET", &url, &[("x-request-timeout", "100")]).await;
    assert_eq!(queued.status, 504, "{}", queued.body);
    assert!(queued.body.contains("EXPIRED_IN_QUEUE"), "{}", queued.body);
    let running = first.await.unwrap();
    assert_eq!(running.status, 504, "{}", running.body);
    assert!(running.body.contains("TIMED_OUT"), "{}", running.body);
    let bad = send(&client(), "GET", &url, &[("x-request-timeout", "soon")]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("x-request-timeout"), "{}", bad.body);
    let info = wait_for(&cell, "counters", |i| i["engine"]["timedOut"] == 1).await;
    assert_eq!(info["engine"]["expiredInQueue"], 1);
}

async fn grpc(cell: &Cell) -> MicroServiceClient<tonic::transport::Channel> {
    MicroServiceClient::connect(format!("http://{}", cell.grpc))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_resource_exhausted_and_deadline_exceeded() {
    let cell = start(
        Run::Service(sleepy_workmodel(1.0)),
        "concurrency: 1\npoolMin: 1\npoolLimit: 1\nqueueLimit: 1\n",
        &[],
    );
    let mut client = grpc(&cell).await;
    let mut timed = tonic::Request::new(Message::default());
    timed.set_timeout(Duration::from_millis(200));
    let status = client.get_micro_service_response(timed).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status.metadata().get("x-cellmesh-error-code").unwrap(),
        "TIMED_OUT"
    );

    // One running, one queued: the third is refused at once.
    let background: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.get_micro_service_response(Message::default()).await })
        })
        .collect();
    wait_for(&cell, "one running and one queued", |i| {
        i["engine"]["inFlight"] == 1 && i["engine"]["queueLength"] == 1
    })
    .await;
    let status = client
        .get_micro_service_response(Message::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("retry-after").is_some());
    for task in background {
        assert!(task.await.unwrap().is_ok());
    }
    let mut bad = tonic::Request::new(Message::default());
    bad.metadata_mut()
        .insert("x-request-timeout", "later".parse().unwrap());
    let status = client.get_micro_service_response(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// An App whose exec stage emits `first`, waits, then emits `second`; switch by `/route`.
const STREAMING_APP: &str = r#"
apiVersion: cellmesh.io/v1alpha1
kind: App
metadata: {name: streamer}
spec:
  pipeline:
    name: route
    switch:
      on: /route
      cases:
        stream:
          exec: {command: [sh, -c, 'while read -r line; do echo "{\"output\": \"first\"}"; sleep 0.4; echo "{\"output\": \"second\"}"; echo "{\"end\": true}"; done']}
        pi:
          sequential:
            - {function: computePi, args: {rangeComplexity: [5, 5], meanResponseSize: 0.005}}
"#;

async fn post(cell: &Cell, body: &str) -> hyper::Response<hyper::body::Incoming> {
    let request = http::Request::post(format!("http://{}/", cell.rest))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    client().request(request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_streams_outputs_in_order_over_rest_and_grpc() {
    let cell = start(
        Run::App(STREAMING_APP),
        "isolate: process\npoolMin: 1\npoolLimit: 1\n",
        &[],
    );

    // REST: the first line arrives on its own, before the stage emits the second.
    let response = post(&cell, r#"{"route": "stream"}"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "\"first\"\n");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "\"second\"\n");

    // A single-output route, and an error naming the stage before any output (400).
    let response = post(&cell, r#"{"route": "pi"}"#).await;
    let text = response.into_body().collect().await.unwrap().to_bytes();
    let line: Value = serde_json::from_slice(&text).unwrap();
    assert!(line.as_str().unwrap().starts_with('m'), "{line}");
    let response = post(&cell, r#"{"route": "nowhere"}"#).await;
    assert_eq!(response.status(), 400);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    let error: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(error["code"], "NO_ROUTE", "{error}");
    let response = post(&cell, "{not json").await;
    assert_eq!(response.status(), 400);

    // gRPC: server streaming in order, and unary as one JSON array.
    let mut client = grpc(&cell).await;
    let message = Message {
        message: r#"{"route": "stream"}"#.to_owned(),
        ..Message::default()
    };
    let mut stream = client
        .stream_micro_service_response(message.clone())
        .await
        .unwrap()
        .into_inner();
    let mut texts = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        texts.push(item.text);
    }
    assert_eq!(texts, ["\"first\"", "\"second\""]);
    let unary = client.get_micro_service_response(message).await.unwrap();
    assert_eq!(unary.into_inner().text, r#"["first","second"]"#);

    let info = info(&cell).await;
    assert_eq!(info["mode"], "app");
    assert_eq!(info["service"], "streamer");
    assert!(
        info["engine"]["workers"][0]["pid"].as_u64().is_some(),
        "{info:#}"
    );
}

#[test]
fn every_example_profile_is_a_resource_the_cell_accepts() {
    let dir: PathBuf = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/profiles").into();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let document: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(document["kind"], "Profile", "{}", path.display());
        cellmesh_cell::engine::reload::read_profile_file(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 3);
}

/// `--reuse-port`: two cells bind the same REST and gRPC ports and the kernel spreads new
/// connections over both; without the flag the second cell cannot bind and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_lets_two_cells_share_a_port_and_both_serve() {
    let profile = "isolate: inline\nconcurrency: 4\n";
    let first = start_on(
        Run::Service(sleepy_workmodel(0.0)),
        profile,
        &["--reuse-port"],
        &random_loopback(),
        0,
        0,
    )
    .unwrap();
    let ip = first.rest.ip().to_string();
    let (rest, grpc) = (first.rest.port(), first.grpc.port());
    let refused = start_on(
        Run::Service(sleepy_workmodel(0.0)),
        profile,
        &[],
        &ip,
        rest,
        grpc,
    )
    .err()
    .expect("a cell without --reuse-port must not bind a port in use");
    assert!(refused.contains("in use"), "{refused}");
    let second = start_on(
        Run::Service(sleepy_workmodel(0.0)),
        profile,
        &["--reuse-port"],
        &ip,
        rest,
        grpc,
    )
    .unwrap();
    assert_eq!((second.rest, second.grpc), (first.rest, first.grpc));

    // Each request on a fresh connection (a new client has no pooled one): the kernel picks
    // a listener per connection by hashing its addresses, so 64 connections all landing on
    // one cell has probability 2^-63.
    const REQUESTS: u64 = 64;
    for _ in 0..REQUESTS {
        let answer = send(
            &client(),
            "GET",
            &format!("http://{}/api/v1", first.rest),
            &[],
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let served = |info: Value| info["engine"]["accepted"].as_u64().unwrap();
    let (a, b) = (served(info(&first).await), served(info(&second).await));
    assert_eq!(a + b, REQUESTS, "every request is served once");
    assert!(a > 0 && b > 0, "both cells serve: {a} and {b}");
}
