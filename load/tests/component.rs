//! Component tests: `cellmesh-load`'s engine against in-process hyper servers on loopback.
//!
//! Every server counts what it really received, so the report's counts are checked against
//! the other side of the wire, not against themselves.

// Test helpers outside #[test] functions: a failed setup should panic loudly.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use cellmesh_load::cli::Args;
use cellmesh_load::{Plan, Report};
use clap::Parser;
use http::{Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// How the test server answers request number `n` (0-based, in arrival order).
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200 to everything.
    Ok,
    /// 503 to every 4th request (n % 4 == 3), 200 otherwise.
    Every4th503,
    /// The first request waits this long; the rest answer at once.
    StallFirst(Duration),
    /// Never answers (within any test's lifetime).
    Hang,
    /// HTTP/1.1 without keep-alive: `Connection: close` after every response.
    CloseAfterEach,
}

struct TestServer {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    status_503: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    http2_requests: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(behaviour: Behaviour) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let status_503 = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let http2_requests = Arc::new(AtomicU64::new(0));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let counters = (
            Arc::clone(&requests),
            Arc::clone(&status_503),
            Arc::clone(&connections),
            Arc::clone(&http2_requests),
            Arc::clone(&body_bytes),
        );
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let (stream, _) = listener.accept().await.unwrap();
                        counters.2.fetch_add(1, Ordering::SeqCst);
                        let counters = Counters {
                            requests: Arc::clone(&counters.0),
                            status_503: Arc::clone(&counters.1),
                            http2: Arc::clone(&counters.3),
                            body_bytes: Arc::clone(&counters.4),
                        };
                        tokio::spawn(async move {
                            let service = service_fn(move |request| {
                                answer(behaviour, request, counters.clone())
                            });
                            let mut builder = auto::Builder::new(TokioExecutor::new());
                            if matches!(behaviour, Behaviour::CloseAfterEach) {
                                builder.http1().keep_alive(false);
                            }
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_background();
        });
        Self {
            addr,
            requests,
            status_503,
            connections,
            http2_requests,
            body_bytes,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
struct Counters {
    requests: Arc<AtomicU64>,
    status_503: Arc<AtomicU64>,
    http2: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
}

async fn answer(
    behaviour: Behaviour,
    request: hyper::Request<Incoming>,
    counters: Counters,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = counters.requests.fetch_add(1, Ordering::SeqCst);
    if request.version() == Version::HTTP_2 {
        counters.http2.fetch_add(1, Ordering::SeqCst);
    }
    if let Ok(body) = request.into_body().collect().await {
        let len = body.to_bytes().len() as u64;
        counters.body_bytes.fetch_add(len, Ordering::SeqCst);
    }
    let mut status = StatusCode::OK;
    match behaviour {
        Behaviour::Ok | Behaviour::CloseAfterEach => {}
        Behaviour::Every4th503 => {
            if n % 4 == 3 {
                status = StatusCode::SERVICE_UNAVAILABLE;
                counters.status_503.fetch_add(1, Ordering::SeqCst);
            }
        }
        Behaviour::StallFirst(stall) => {
            if n == 0 {
                tokio::time::sleep(stall).await;
            }
        }
        Behaviour::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"mmmmmmmmmm")));
    *response.status_mut() = status;
    Ok(response)
}

fn plan(url: &str, flags: &[&str]) -> Plan {
    let mut argv = vec!["cellmesh-load", url, "--threads", "2"];
    argv.extend_from_slice(flags);
    Args::try_parse_from(argv).unwrap().into_plan().unwrap()
}

fn run(plan: &Plan) -> Report {
    cellmesh_load::run(plan, |_| {}).unwrap()
}

fn errors_except(report: &Report, kind: &str) -> u64 {
    report
        .errors
        .iter()
        .filter(|(name, _)| name.as_str() != kind)
        .map(|(_, count)| count)
        .sum()
}

#[test]
fn closed_loop_counts_match_the_server_and_503s_are_classified() {
    let server = TestServer::start(Behaviour::Every4th503);
    let report = run(&plan(&server.url(), &["-c", "4", "-d", "300ms"]));
    let served = server.requests();
    let rejected = server.status_503.load(Ordering::SeqCst);
    assert!(served > 4, "the server saw {served} requests");
    // Every request the server saw was sent in the window and its response recorded.
    assert_eq!(report.requests, served);
    assert_eq!(report.responses, served);
    assert_eq!(report.errors["status_5xx"], rejected);
    assert_eq!(report.successes, served - rejected);
    assert_eq!(
        report.status_codes.get(&503).copied().unwrap_or(0),
        rejected
    );
    assert_eq!(
        report.status_codes.get(&200).copied(),
        Some(served - rejected)
    );
    assert_eq!(errors_except(&report, "status_5xx"), 0);
    assert_eq!(report.latency_ms.count, served - rejected);
    assert_eq!(report.received_bytes, 10 * served);
    assert_eq!(report.mode, "closed");
    assert_eq!(report.latency_from, "send");
}

#[test]
fn a_closed_port_gives_connect_errors_only() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/");
    let report = run(&plan(&url, &["-c", "2", "-d", "200ms"]));
    // Each connection tries at least once at the start of the window.
    assert!(report.errors["connect"] >= 2, "{report:?}");
    assert_eq!(errors_except(&report, "connect"), 0);
    assert_eq!(report.responses, 0);
    assert_eq!(report.requests, report.errors["connect"]);
    assert!(!report.any_success());
}

#[test]
fn requests_without_an_answer_time_out() {
    let server = TestServer::start(Behaviour::Hang);
    let report = run(&plan(
        &server.url(),
        &["-c", "2", "-d", "300ms", "--timeout", "100ms"],
    ));
    // Both connections send at the start of the window; neither gets an answer.
    assert!(report.errors["timeout"] >= 2, "{report:?}");
    assert_eq!(errors_except(&report, "timeout"), 0);
    assert_eq!(report.responses, 0);
    assert_eq!(report.requests, server.requests());
}

#[test]
fn open_loop_sends_the_schedule_and_no_more() {
    let server = TestServer::start(Behaviour::Ok);
    let report = run(&plan(
        &server.url(),
        &["-c", "4", "--rate", "200", "-d", "500ms"],
    ));
    // 200 req/s for 0.5 s: exactly 100 requests are due.
    assert_eq!(report.scheduled, Some(100));
    assert_eq!(report.requests, server.requests());
    assert!(
        report.requests <= 100,
        "sent more than scheduled: {report:?}"
    );
    assert_eq!(report.requests + report.unsent.unwrap(), 100);
    // A fast server keeps up; the bound only guards against sending nothing at all.
    assert!(report.requests >= 50, "{report:?}");
    assert_eq!(report.error_total, 0);
    assert_eq!(report.latency_from, "due");
}

#[test]
fn open_loop_latency_is_measured_from_the_due_time() {
    // One connection at 100 req/s: requests are due every 10 ms. The first one stalls for
    // 400 ms, so the requests due at 10, 20, …, 300 ms are all sent after 400 ms and each
    // waited at least 100 ms: more than half of the (at most 50) requests.
    let server = TestServer::start(Behaviour::StallFirst(Duration::from_millis(400)));
    let report = run(&plan(
        &server.url(),
        &["-c", "1", "--rate", "100", "-d", "500ms"],
    ));
    let service = report
        .service_time_ms
        .clone()
        .expect("open loop keeps service time");
    assert!(report.latency_ms.p50 >= 100.0, "{report:?}");
    assert!(report.latency_ms.max >= 400.0, "{report:?}");
    assert!(
        service.max >= 400.0,
        "the stalled request itself: {service:?}"
    );
    assert_eq!(service.count, report.latency_ms.count);
    assert_eq!(report.requests, server.requests());
}

#[test]
fn warmup_requests_are_sent_but_not_reported() {
    let server = TestServer::start(Behaviour::Ok);
    let report = run(&plan(
        &server.url(),
        &["-c", "2", "-w", "200ms", "-d", "200ms"],
    ));
    assert!(report.requests > 0, "{report:?}");
    assert!(
        server.requests() > report.requests,
        "warm-up requests reached the server ({}) but not the report ({})",
        server.requests(),
        report.requests
    );
    assert_eq!(report.error_total, 0);
}

#[test]
fn http2_streams_share_their_connections() {
    let server = TestServer::start(Behaviour::Every4th503);
    let report = run(&plan(
        &server.url(),
        &["-c", "2", "--http2", "--streams", "4", "-d", "300ms"],
    ));
    let served = server.requests();
    assert!(served > 8, "{report:?}");
    assert_eq!(server.http2_requests.load(Ordering::SeqCst), served);
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    assert_eq!(report.requests, served);
    assert_eq!(
        report.errors["status_5xx"],
        server.status_503.load(Ordering::SeqCst)
    );
    assert_eq!(errors_except(&report, "status_5xx"), 0);
    assert_eq!(report.protocol, "HTTP/2");
}

#[test]
fn connections_closed_by_the_server_are_reopened_without_errors() {
    let server = TestServer::start(Behaviour::CloseAfterEach);
    let report = run(&plan(&server.url(), &["-c", "2", "-d", "300ms"]));
    let served = server.requests();
    assert!(served > 2, "{report:?}");
    // One connection per request: the client reconnected every time. Each of the two
    // connection tasks may also have opened a last one just as the window closed.
    let connections = server.connections.load(Ordering::SeqCst);
    assert!(
        (served..=served + 2).contains(&connections),
        "{connections} connections for {served} requests"
    );
    assert_eq!(report.requests, served);
    assert_eq!(report.error_total, 0, "{report:?}");
}

#[test]
fn post_bodies_are_sent() {
    let server = TestServer::start(Behaviour::Ok);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, br#"{"s0__x": []}"#).unwrap();
    let plan = plan(
        &server.url(),
        &["-c", "1", "-d", "100ms", "--body", body.to_str().unwrap()],
    );
    assert_eq!(plan.method, http::Method::POST);
    let report = run(&plan);
    assert_eq!(report.method, "POST");
    assert!(report.successes > 0);
    assert_eq!(report.requests, server.requests());
    assert_eq!(
        server.body_bytes.load(Ordering::SeqCst),
        13 * server.requests(),
        "every request carried the 13-byte body"
    );
}
