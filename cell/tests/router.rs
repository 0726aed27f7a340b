//! The REST router, admin router and gRPC service driven in-process: the cell under test is
//! called through `tower::ServiceExt::oneshot` (REST) or an in-memory duplex stream (gRPC),
//! with no socket. Downstreams are small recording stubs on 127.0.0.1.

// Test helpers panic on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use cellmesh_api::mubench;
use cellmesh_api::service::Services;
use cellmesh_cell::admin::admin_router;
use cellmesh_cell::app::{Addresses, App};
use cellmesh_cell::downstream::http_client;
use cellmesh_cell::grpc::grpc_service;
use cellmesh_cell::http::router;
use cellmesh_cell::proto::micro_service_client::MicroServiceClient;
use cellmesh_cell::proto::{Message, TraceGroup, TraceNode};
use cellmesh_cell::server::start_engine;
use cellmesh_cell::service::{CellOptions, ServiceCell, default_profile, service_stage};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tower::ServiceExt;

/// s0 (trivial computePi) calls s1 then s2 in one group; s3 exists for traces.
const MESH: &str = r#"{
  "s0": {"internal_service": {"compute_pi": {"range_complexity": [1, 1], "mean_response_size": 0.01}},
         "external_services": [{"seq_len": 100, "services": ["s1"]}],
         "alternative_behaviors": {"quiet": {"external_services": []},
                                   "both": {"external_services": [{"services": ["s1", "s2"]}]}},
         "threads": 8},
  "s1": {"internal_service": {"compute_pi": {}}, "external_services": []},
  "s2": {"internal_service": {"compute_pi": {}}},
  "s3": {"internal_service": {"loader": {}}}
}"#;

fn app(service: &str, resolve: &[(&str, SocketAddr)], timeout: Duration) -> Arc<App> {
    let loaded = mubench::from_json_str(MESH).unwrap();
    let options = CellOptions {
        resolve: resolve
            .iter()
            .map(|(name, addr)| ((*name).to_owned(), addr.to_string()))
            .collect(),
        downstream_timeout: timeout,
        ..CellOptions::default()
    };
    Arc::new(App::new(service_cell(&loaded.services, service, options)))
}

/// `service` of `services` on an engine with the profile derived from its spec.
fn service_cell(services: &Services, service: &str, options: CellOptions) -> ServiceCell {
    let spec = &services[service];
    let engine = start_engine(
        default_profile(spec),
        service_stage(spec, &options.scratch_dir),
    )
    .unwrap();
    ServiceCell::new(services, service, options, http_client(), engine).unwrap()
}

async fn send(router: Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = router.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// A request a stub downstream received.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// A downstream stub on 127.0.0.1 answering `status` after `delay`, recording requests.
struct Stub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn stub(status: StatusCode, delay: Duration) -> Stub {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().fallback(move |request: Request| {
        let record = record.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            record.lock().unwrap().push(Seen {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body,
            });
            tokio::time::sleep(delay).await;
            (status, "stub says no")
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Stub { addr, seen }
}

impl Stub {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn get_answers_the_internal_body_and_echoes_trace_headers() {
    let s1 = stub(StatusCode::OK, Duration::ZERO).await;
    let app = app("s0", &[("s1", s1.addr)], LONG);
    let request = Request::get("/api/v1?x=1&bid=none")
        .header("x-request-id", "req-7")
        .header("traceparent", "00-abc-def-01")
        .header("user-agent", "test")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(router(app.clone()), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(
        !body.is_empty() && body.iter().all(|&b| b == b'm'),
        "{body:?}"
    );
    assert_eq!(headers["x-request-id"], "req-7");
    assert_eq!(headers["traceparent"], "00-abc-def-01");
    assert!(!headers.contains_key("user-agent"));

    // The downstream got a GET on its path with the query and the trace headers.
    let seen = s1.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].uri, "/api/v1?x=1&bid=none");
    assert_eq!(seen[0].headers["x-request-id"], "req-7");
    assert_eq!(seen[0].headers["traceparent"], "00-abc-def-01");
    assert!(!seen[0].headers.contains_key("user-agent"));
}

#[tokio::test]
async fn metrics_count_requests_on_the_main_and_admin_ports() {
    let s1 = stub(StatusCode::OK, Duration::ZERO).await;
    let app = app("s0", &[("s1", s1.addr)], LONG);
    for _ in 0..3 {
        let (status, _, _) = send(router(app.clone()), get("/api/v1")).await;
        assert_eq!(status, StatusCode::OK);
    }
    for router in [router(app.clone()), admin_router(app.clone())] {
        let (status, headers, body) = send(router, get("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        let text = String::from_utf8(body.to_vec()).unwrap();
        let labels = r#"zone="default",app_name="s0",method="GET",endpoint="/api/v1",kubernetes_service="s0""#;
        for series in [
            format!("mub_request_processing_latency_milliseconds_count{{{labels}}} 3"),
            format!("mub_internal_processing_latency_milliseconds_count{{{labels}}} 3"),
            format!("mub_external_processing_latency_milliseconds_count{{{labels}}} 3"),
            format!("mub_response_size_count{{{labels}}} 3"),
            r#"cellmesh_requests_total{method="GET",endpoint="/api/v1",code="200"} 3"#.to_owned(),
            r#"cellmesh_downstream_calls_total{service="s1",outcome="ok"} 3"#.to_owned(),
            "cellmesh_admission_capacity 8".to_owned(),
        ] {
            assert!(text.contains(&series), "{series}\n{text}");
        }
    }
}

#[tokio::test]
async fn post_runs_exactly_the_trace_with_subtrees_and_query() {
    let s1 = stub(StatusCode::OK, Duration::ZERO).await;
    let s2 = stub(StatusCode::OK, Duration::ZERO).await;
    let s3 = stub(StatusCode::OK, Duration::ZERO).await;
    let app = app(
        "s0",
        &[("s1", s1.addr), ("s2", s2.addr), ("s3", s3.addr)],
        LONG,
    );
    let trace = r#"{"s0__root": [{"s2__a": [{"s3__q": []}], "s1__b": []}, {"s3__c": []}]}"#;
    let request = Request::post("/api/v1?bid=x")
        .header("x-b3-traceid", "t1")
        .body(Body::from(trace))
        .unwrap();
    let (status, headers, _) = send(router(app.clone()), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-b3-traceid"], "t1");

    let (s1, s2, s3) = (s1.seen(), s2.seen(), s3.seen());
    assert_eq!(
        (s1.len(), s2.len(), s3.len()),
        (1, 1, 1),
        "the spec's own s1 call is not made"
    );
    assert_eq!(s2[0].method, Method::POST);
    assert_eq!(s2[0].uri, "/api/v1?bid=x");
    assert_eq!(s2[0].body, r#"{"s2__a":[{"s3__q":[]}]}"#);
    assert_eq!(s2[0].headers["content-type"], "application/json");
    assert_eq!(s2[0].headers["x-b3-traceid"], "t1");
    assert_eq!(s1[0].body, r#"{"s1__b":[]}"#);
    assert_eq!(s3[0].body, r#"{"s3__c":[]}"#);
    // The stubs do not recurse, so s3 saw only s0's direct call: the subtree is theirs to run.
}

#[tokio::test]
async fn bad_posts_are_400_naming_the_problem() {
    let app = app("s0", &[], LONG);
    for (body, needle) in [
        ("not json", "POST body is not a trace"),
        (
            r#"{"s1__x": []}"#,
            "the trace is for service `s1` but this is `s0`",
        ),
        (
            r#"{"s0": [{"s9": []}]}"#,
            "`s9`, which is not a service of this mesh",
        ),
        (r#"{"s0": [], "s1": []}"#, "more than one top key"),
    ] {
        let (status, headers, response) = send(router(app.clone()), post("/api/v1", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(headers["content-type"], "application/json");
        let response = json(&response);
        assert_eq!(response["error"], "bad request");
        let reason = response["reason"].as_str().unwrap();
        assert!(reason.contains(needle), "{body}: {reason}");
    }
    let (_, _, metrics) = send(router(app), get("/metrics")).await;
    let text = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        text.contains(r#"cellmesh_requests_total{method="POST",endpoint="/api/v1",code="400"} 4"#)
    );
}

#[tokio::test]
async fn refused_downstream_is_502_naming_it() {
    // Port 1 on loopback: nothing listens, the connection is refused.
    let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let app = app("s0", &[("s1", closed)], LONG);
    let (status, _, body) = send(router(app.clone()), get("/api/v1")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = json(&body);
    assert_eq!(body["service"], "s1");
    assert_eq!(body["error"], "downstream service s1 failed");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("onnection refused"),
        "{body}"
    );
    let (_, _, metrics) = send(router(app), get("/metrics")).await;
    let text = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(text.contains(r#"cellmesh_downstream_calls_total{service="s1",outcome="error"} 1"#));
    assert!(
        text.contains(r#"cellmesh_requests_total{method="GET",endpoint="/api/v1",code="502"} 1"#)
    );
}

#[tokio::test]
async fn failing_downstream_status_is_502_quoting_its_answer() {
    let s1 = stub(StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO).await;
    let app = app("s0", &[("s1", s1.addr)], LONG);
    let (status, _, body) = send(router(app), get("/api/v1")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = json(&body);
    assert_eq!(body["service"], "s1");
    assert_eq!(
        body["reason"],
        "answered 500 Internal Server Error: stub says no"
    );
}

#[tokio::test]
async fn slow_downstream_is_504_after_the_timeout() {
    let s1 = stub(StatusCode::OK, Duration::from_secs(30)).await;
    let app = app("s0", &[("s1", s1.addr)], Duration::from_millis(100));
    let (status, _, body) = send(router(app), get("/api/v1")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let body = json(&body);
    assert_eq!(body["service"], "s1");
    assert_eq!(body["error"], "downstream service s1 timed out");
    assert_eq!(body["reason"], "no complete answer within 100ms");
}

#[tokio::test]
async fn bid_selects_an_alternative_behaviour() {
    let s1 = stub(StatusCode::OK, Duration::ZERO).await;
    let s2 = stub(StatusCode::OK, Duration::ZERO).await;
    let app = app("s0", &[("s1", s1.addr), ("s2", s2.addr)], LONG);
    let (status, _, _) = send(router(app.clone()), get("/api/v1?bid=quiet")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s1.seen().len(), 0, "`quiet` calls nobody");
    send(router(app.clone()), get("/api/v1?a=b&bid=both")).await;
    assert_eq!((s1.seen().len(), s2.seen().len()), (1, 1));
    send(router(app), get("/api/v1?bid=unknown")).await;
    assert_eq!(
        (s1.seen().len(), s2.seen().len()),
        (2, 1),
        "unknown bid: the default"
    );
}

#[tokio::test]
async fn unknown_paths_are_404_and_admin_reports_state() {
    let app = app("s0", &[], LONG);
    let (status, _, _) = send(router(app.clone()), get("/other")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, _) = send(admin_router(app.clone()), get("/ready")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready before the servers bind"
    );
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    app.set_ready(Addresses {
        rest: addr,
        grpc: addr,
        admin: addr,
    });
    let (status, _, _) = send(admin_router(app.clone()), get("/ready")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(admin_router(app.clone()), get("/live")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, info) = send(admin_router(app.clone()), get("/info")).await;
    let info = json(&info);
    assert_eq!(info["service"], "s0");
    assert_eq!(info["capacity"], 8);
    assert_eq!(info["inFlight"], 0);
    assert_eq!(info["downstreams"]["s3"], "http://s3/api/v1");
    assert_eq!(info["listen"]["rest"], "127.0.0.1:9");

    app.drain();
    let (status, _, _) = send(admin_router(app.clone()), get("/ready")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, body) = send(router(app), get("/api/v1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
}

/// A gRPC client connected to `app`'s gRPC service over an in-memory stream.
async fn grpc_client(app: Arc<App>) -> MicroServiceClient<tonic::transport::Channel> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(grpc_service(app))
            .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server_io)))
            .await
    });
    let mut client_io = Some(client_io);
    let channel = tonic::transport::Endpoint::try_from("http://in-memory")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let io = client_io.take();
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the in-memory stream is used"))
            }
        }))
        .await
        .unwrap();
    MicroServiceClient::new(channel)
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

#[tokio::test]
async fn grpc_unary_streaming_and_trace_calls_rest_downstreams() {
    let s1 = stub(StatusCode::OK, Duration::ZERO).await;
    let s2 = stub(StatusCode::OK, Duration::ZERO).await;
    let app = app("s0", &[("s1", s1.addr), ("s2", s2.addr)], LONG);
    let mut client = grpc_client(app.clone()).await;

    // µBench's own request: only `message`; stochastic, calls s1.
    let mut request = tonic::Request::new(Message {
        message: "Hello service: s0".into(),
        ..Message::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "g-1".parse().unwrap());
    let response = client.get_micro_service_response(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "g-1");
    let response = response.into_inner();
    assert!(response.status_code);
    assert!(!response.text.is_empty() && response.text.bytes().all(|b| b == b'm'));
    assert_eq!(s1.seen().len(), 1);
    assert_eq!(s1.seen()[0].headers["x-request-id"], "g-1");

    // A trace: s2 then s1, each with its subtree as a REST POST.
    let trace = node(
        "s0__t",
        vec![vec![node("s2__a", vec![]), node("s1__b", vec![])]],
    );
    let request = Message {
        query: "k=v".into(),
        trace: Some(trace),
        ..Message::default()
    };
    let mut stream = client
        .stream_micro_service_response(request)
        .await
        .unwrap()
        .into_inner();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.status_code);
        chunks += 1;
    }
    assert!(chunks >= 1);
    assert_eq!(s2.seen()[0].body, r#"{"s2__a":[]}"#);
    assert_eq!(s2.seen()[0].uri, "/api/v1?k=v");
    assert_eq!(s1.seen().len(), 2);

    // A trace for another service is INVALID_ARGUMENT.
    let request = Message {
        trace: Some(node("s1__x", vec![])),
        ..Message::default()
    };
    let status = client
        .get_micro_service_response(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("this is `s0`"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn grpc_downstream_failure_is_unavailable_naming_the_service() {
    let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let app = app("s0", &[("s1", closed)], LONG);
    let mut client = grpc_client(app).await;
    let status = client
        .get_micro_service_response(Message::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status
            .message()
            .starts_with("downstream service `s1` failed"),
        "{}",
        status.message()
    );
    assert_eq!(
        status.metadata().get("x-cellmesh-failed-service").unwrap(),
        "s1"
    );
}

#[tokio::test]
async fn large_bodies_stream_in_bounded_chunks() {
    let workmodel = r#"{"big": {"internal_service": {"compute_pi": {"range_complexity": [1, 1], "mean_response_size": 200}}}}"#;
    let loaded = mubench::from_json_str(workmodel).unwrap();
    let cell = service_cell(&loaded.services, "big", CellOptions::default());
    let mut client = grpc_client(Arc::new(App::new(cell))).await;
    let mut total = 0;
    let mut largest = 0;
    // Bodies average 200 kB: ten requests all under 32 kB has probability 0.15^10 ≈ 6e-9.
    for _ in 0..10 {
        let mut stream = client
            .stream_micro_service_response(Message::default())
            .await
            .unwrap()
            .into_inner();
        while let Some(chunk) = stream.message().await.unwrap() {
            largest = largest.max(chunk.text.len());
            total += chunk.text.len();
        }
    }
    assert!(largest <= cellmesh_cell::grpc::CHUNK_BYTES);
    assert!(total > cellmesh_cell::grpc::CHUNK_BYTES, "{total}");
}

#[tokio::test]
async fn dispatch_short_cuts_the_service_path_and_routes_the_rest() {
    use cellmesh_cell::http::dispatch;
    let app = app("s0", &[], LONG);
    let call = |request: Request<Body>| {
        let app = app.clone();
        async move {
            let response = dispatch(app.clone(), router(app), request).await;
            let (parts, body) = response.into_parts();
            (parts.status, body.collect().await.unwrap().to_bytes())
        }
    };
    let (status, body) = call(get("/api/v1?bid=quiet")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.iter().all(|&b| b == b'm'));
    let (status, body) = call(post("/api/v1", r#"{"s1": []}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        json(&body)["reason"]
            .as_str()
            .unwrap()
            .contains("this is `s0`")
    );
    assert_eq!(call(get("/metrics")).await.0, StatusCode::OK);
    assert_eq!(call(get("/api/v2")).await.0, StatusCode::NOT_FOUND);
    let put = Request::put("/api/v1").body(Body::empty()).unwrap();
    assert_eq!(call(put).await.0, StatusCode::METHOD_NOT_ALLOWED);
    // Both paths count into the same series.
    let (_, metrics) = call(get("/metrics")).await;
    let text = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        text.contains(r#"cellmesh_requests_total{method="GET",endpoint="/api/v1",code="200"} 1"#)
    );
}
