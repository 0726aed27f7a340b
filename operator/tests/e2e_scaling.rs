//! End to end: the ScalingPolicy controller of a real operator process (least-privilege RBAC
//! enforced by cellmesh-local) reads CPU usage from a Prometheus HTTP API, resizes a running
//! pod in place through `pods/resize` (requests and limits together, QoS kept), reports what
//! it did in the policy's status and an Event, and holds every size with
//! `MetricsAvailable=False` while Prometheus fails — then resumes by itself.
//!
//! Prometheus is a small fake on loopback (the real one is exercised by cellmesh-local's
//! tests); the pod's "running" status is written by the test, as a node agent would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, condition, eventually};
use serde_json::{Value, json};

const NS: &str = "demo";
const WAIT: Duration = Duration::from_secs(60);

/// What the fake Prometheus answers: a CPU usage in cores, or an error.
type Answer = Arc<Mutex<Result<f64, String>>>;

/// Serves `POST /api/v1/query` with the usage of pod `web-0`'s `cell` container.
fn fake_prometheus(answer: Answer) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/api/v1/query",
                axum::routing::post(move || {
                    let answer = answer.lock().unwrap().clone();
                    async move {
                        match answer {
                            Ok(cores) => (
                                axum::http::StatusCode::OK,
                                axum::Json(json!({"status": "success", "data": {
                                    "resultType": "vector",
                                    "result": [{"metric": {"namespace": NS, "pod": "web-0", "container": "cell"},
                                                "value": [0.0, cores.to_string()]}]}})),
                            ),
                            Err(error) => (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                axum::Json(json!({"status": "error", "errorType": "unavailable", "error": error})),
                            ),
                        }
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed) in a /metrics text;
/// 0 when absent.
fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

fn cpu_limit(cluster: &Cluster) -> String {
    let pod = cluster.get(NS, "pod/web-0").unwrap();
    pod["spec"]["containers"][0]["resources"]["limits"]["cpu"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_busy_pod_is_resized_in_place_and_a_failing_prometheus_holds_sizes() {
    let cluster = Cluster::start();
    cluster.kubectl(&["create", "namespace", NS]);
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/scalingpolicies.cellmesh.io",
        "--timeout=30s",
    ]);
    let answer: Answer = Arc::new(Mutex::new(Ok(0.5)));
    let prometheus = fake_prometheus(answer.clone());

    // A pod of service s0 of WorkModel shop, Burstable (request = limit / 2), reported
    // running with its resources in force, as the kubelet would.
    cluster.apply(
        NS,
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  labels: {cellmesh.io/workmodel: shop, cellmesh.io/service: s0}
spec:
  containers:
    - name: cell
      image: busybox
      resources:
        requests: {cpu: 250m, memory: 64Mi}
        limits: {cpu: 500m, memory: 128Mi}
"#,
    );
    let running = json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{
            "name": "cell", "image": "busybox", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-23T10:00:00Z"}},
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                          "limits": {"cpu": "500m", "memory": "128Mi"}}
        }]
    }});
    cluster.kubectl(&[
        "patch",
        "pod",
        "web-0",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        &running.to_string(),
    ]);

    let policy = format!(
        r#"
apiVersion: cellmesh.io/v1alpha1
kind: ScalingPolicy
metadata:
  name: shop
spec:
  targetRef: {{kind: WorkModel, name: shop, services: [s0]}}
  interval: 500ms
  window: 1s
  cooldown: 0s
  cpu: {{min: 100m, max: "2", upEvents: 2}}
  metrics:
    prometheus: {{url: "http://{prometheus}"}}
"#
    );
    cluster.apply(NS, &policy);
    let operator = cluster.operator("solo", &[]);

    // Usage at the limit (0.5 of 0.5) → two up events → +750m, capped at usage / lower =
    // 1.25 cores; the request keeps its 1:2 ratio.
    eventually("the CPU limit raised in place", WAIT, || {
        (cpu_limit(&cluster) == "1250m").then_some(())
    });
    let pod = cluster.get(NS, "pod/web-0").unwrap();
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["requests"]["cpu"], "625m", "{resources}");
    assert_eq!(
        resources["limits"]["memory"], "128Mi",
        "memory is not guarded"
    );
    let sp = eventually("the action in the policy's status", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/shop")?;
        sp["status"]["lastAction"]
            .as_str()
            .is_some_and(|a| a.contains("web-0/cell cpu 500m→1250m"))
            .then_some(sp)
    });
    assert_eq!(
        condition(&sp, "MetricsAvailable").unwrap()["status"],
        "True"
    );
    assert!(
        sp["status"]["lastScaleTime"].is_string(),
        "{}",
        sp["status"]
    );
    let events = cluster.kubectl(&["get", "events.events.k8s.io", "-n", NS, "-o", "json"]);
    let events: Value = serde_json::from_str(&events).unwrap();
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Resized"
                && e["note"].as_str().is_some_and(|n| n.contains("500m→1250m"))),
        "no Resized event: {events}"
    );
    // The action is counted on /metrics under the names dashboards/scaling.json queries.
    let (code, metrics) = operator.http_get("/metrics");
    assert_eq!(code, 200, "{metrics}");
    let applied = metric_value(
        &metrics,
        r#"cellmesh_scaling_actions_total{resource="cpu",direction="up",result="applied"}"#,
    );
    assert!(applied >= 1.0, "{metrics}");
    assert!(
        metric_value(&metrics, "cellmesh_scaling_decision_seconds_count") >= 1.0,
        "{metrics}"
    );

    // Prometheus fails: the policy says so and holds, even though usage would scale.
    *answer.lock().unwrap() = Err("query processing would load too many samples".into());
    let sp = eventually("MetricsAvailable=False", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/shop")?;
        condition(&sp, "MetricsAvailable")
            .filter(|c| c["status"] == "False")
            .map(|_| sp.clone())
    });
    let held = condition(&sp, "MetricsAvailable").unwrap();
    assert_eq!(held["reason"], "PrometheusUnavailable");
    assert!(
        held["message"]
            .as_str()
            .unwrap()
            .contains("too many samples"),
        "{held}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cpu_limit(&cluster),
        "1250m",
        "held while metrics are missing"
    );

    // It resumes by itself once Prometheus answers again.
    *answer.lock().unwrap() = Ok(0.1);
    eventually("MetricsAvailable=True again", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/shop")?;
        condition(&sp, "MetricsAvailable")
            .filter(|c| c["status"] == "True")
            .map(|_| ())
    });
}
