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
const MIB: f64 = 1024.0 * 1024.0;

/// What the fake Prometheus answers: a CPU usage in cores (or a share of throttled CPU
/// periods), or an error.
type Answer = Arc<Mutex<Result<f64, String>>>;

/// Serves `POST /api/v1/query` for pod `web-0`'s `cell` container: throttling queries
/// (cAdvisor's `container_cpu_cfs_throttled_periods_total`) get `throttling`, every other
/// query `answer`.
fn fake_prometheus(answer: Answer, throttling: Answer) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/api/v1/query",
                axum::routing::post(move |body: String| {
                    let answer = if body.contains("throttled") {
                        throttling.lock().unwrap().clone()
                    } else {
                        answer.lock().unwrap().clone()
                    };
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

/// `cellmesh_scaling_actions_total` for one resource, direction and result (0 when absent).
fn actions(text: &str, resource: &str, direction: &str, result: &str) -> f64 {
    metric_value(
        text,
        &format!(
            r#"cellmesh_scaling_actions_total{{resource="{resource}",direction="{direction}",result="{result}"}}"#
        ),
    )
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
    let throttling: Answer = Arc::new(Mutex::new(Ok(0.0)));
    let prometheus = fake_prometheus(answer.clone(), throttling.clone());

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

    // Usage at the limit (0.5 of 0.5): throttled → +750m = 1.25 cores; the request keeps its
    // 1:2 ratio.
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
    assert!(
        event_noting(&cluster, "Resized", &["500m→1250m"]).is_some(),
        "no Resized event: {:?}",
        events_with_reason(&cluster, "Resized")
    );
    // The action is counted on /metrics under the names dashboards/scaling.json queries.
    let (code, metrics) = operator.http_get("/metrics");
    assert_eq!(code, 200, "{metrics}");
    let applied = actions(&metrics, "cpu", "up", "applied");
    assert!(applied >= 1.0, "{metrics}");
    assert!(
        metric_value(&metrics, "cellmesh_scaling_decision_seconds_count") >= 1.0,
        "{metrics}"
    );

    // A new pod of the same service appears (a replica added) at the template's size. Its
    // usage is not even known yet (Prometheus answers for web-0 only), so no event can
    // resize it: it gets its workload's size at once, in place (same uid), with its own
    // request:limit ratio, and the Event says why.
    let sizes = &sp["status"]["sizes"][0];
    assert_eq!(sizes["workload"], "s0", "{}", sp["status"]);
    assert_eq!(sizes["cpu"]["limit"], "1250m", "{}", sp["status"]);
    running_pod(&cluster, "web-1", "s0", json!({}));
    let uid = cluster.get(NS, "pod/web-1").unwrap()["metadata"]["uid"].clone();
    eventually("the new pod at its workload's size", WAIT, || {
        (limit(&cluster, "web-1", "cpu") == 1.25).then_some(())
    });
    let pod = cluster.get(NS, "pod/web-1").unwrap();
    assert_eq!(
        pod["metadata"]["uid"], uid,
        "resized in place, not recreated"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "625m"
    );
    eventually("the new pod's Resized Event", WAIT, || {
        event_noting(
            &cluster,
            "Resized",
            &["web-1/cell cpu 500m→1250m", "new pod"],
        )
    });

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

    // It resumes by itself once Prometheus answers again. The usage is low (0.1 of 1.25) but
    // the bursts are throttled in half the CPU periods: that is a throttled window, and the
    // limit grows by the whole step to max.
    *throttling.lock().unwrap() = Ok(0.5);
    *answer.lock().unwrap() = Ok(0.1);
    eventually("MetricsAvailable=True again", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/shop")?;
        condition(&sp, "MetricsAvailable")
            .filter(|c| c["status"] == "True")
            .map(|_| ())
    });
    eventually("the throttled container grown to max", WAIT, || {
        (cpu_limit(&cluster) == "2").then_some(())
    });
    let sp = eventually("the throttling in the status", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/shop")?;
        let cpu = &sp["status"]["containers"][0]["cpu"];
        (cpu["throttledPercent"] == 50 && cpu["limit"] == "2").then_some(sp)
    });
    assert!(
        sp["status"]["lastAction"]
            .as_str()
            .is_some_and(|a| a.contains("1250m→2 (throttled at its limit)")),
        "{}",
        sp["status"]
    );
    // The throttling stops. The usage is a down event at 2 cores, but fitting it (150m)
    // would throttle the bursts again: the floor (2 / 0.8, clamped to max) holds the limit.
    *throttling.lock().unwrap() = Ok(0.0);
    // Once the throttled windows leave the event timeout, nothing vetoes the six down events.
    let sp = eventually("six down events and no up event", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/shop")?;
        let cpu = &sp["status"]["containers"][0]["cpu"];
        (cpu["throttledPercent"] == 0
            && cpu["upEvents"] == 0
            && cpu["downEvents"].as_u64() >= Some(6))
        .then_some(sp)
    });
    let cpu = &sp["status"]["containers"][0]["cpu"];
    assert_eq!(cpu["floor"], "2", "{cpu}");
    assert_eq!(cpu_limit(&cluster), "2", "held at the throttling floor");
    // The load goes (below 40 % of the throttled usage): the floor is forgotten and the
    // limit comes down to min.
    *answer.lock().unwrap() = Ok(0.01);
    eventually("the limit back to min", WAIT, || {
        (cpu_limit(&cluster) == "100m").then_some(())
    });
    // A failing throttling query only costs that reading: usage still decides.
    *throttling.lock().unwrap() = Err("no such series".into());
    let sp = eventually("the throttling failure explained", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/shop")?;
        condition(&sp, "MetricsAvailable")
            .filter(|c| {
                c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("CPU throttling unknown"))
            })
            .map(|_| sp.clone())
    });
    let available = condition(&sp, "MetricsAvailable").unwrap();
    assert_eq!(available["status"], "True", "{available}");
    assert!(
        available["message"]
            .as_str()
            .unwrap()
            .contains("no such series"),
        "{available}"
    );
}

/// Per pod of namespace `demo`: (pod, CPU cores, memory bytes) of its `cell` container.
type Usages = Arc<Mutex<Vec<(String, f64, f64)>>>;

/// Serves `POST /api/v1/query`: memory queries (cAdvisor's `container_memory_…`) get the
/// memory figures, throttling queries an empty vector, every other query the CPU figures.
fn fake_prometheus_per_pod(usages: Usages) -> SocketAddr {
    serve_fake(axum::Router::new().route(
        "/api/v1/query",
        axum::routing::post(move |body: String| {
            let memory = body.contains("memory");
            // No throttling readings: these pods are sized by their usage alone.
            let throttling = body.contains("throttled");
            let result: Vec<Value> = usages
                .lock()
                .unwrap()
                .iter()
                .filter(|_| !throttling)
                .map(|(pod, cpu, bytes)| {
                    let value = if memory { *bytes } else { *cpu };
                    json!({"metric": {"namespace": NS, "pod": pod, "container": "cell"},
                           "value": [0.0, value.to_string()]})
                })
                .collect();
            async move {
                axum::Json(json!({"status": "success",
                                  "data": {"resultType": "vector", "result": result}}))
            }
        }),
    ))
}

/// Serves `router` on a free loopback port from a thread of its own.
fn serve_fake(router: axum::Router) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

/// Creates pod `name` of service `service` (WorkModel shop), Burstable, and reports it running
/// with its resources in force, as the kubelet would; `last_state` goes into its container
/// status.
fn running_pod(cluster: &Cluster, name: &str, service: &str, last_state: Value) {
    running_pod_on(cluster, name, service, last_state, "");
}

/// [`running_pod`], bound to Node `node` unless empty.
fn running_pod_on(cluster: &Cluster, name: &str, service: &str, last_state: Value, node: &str) {
    let node_name = if node.is_empty() {
        String::new()
    } else {
        format!("nodeName: {node}")
    };
    cluster.apply(
        NS,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{cellmesh.io/workmodel: shop, cellmesh.io/service: {service}}}
spec:
  {node_name}
  containers:
    - name: cell
      image: busybox
      resources:
        requests: {{cpu: 250m, memory: 64Mi}}
        limits: {{cpu: 500m, memory: 128Mi}}
"#
        ),
    );
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{
            "name": "cell", "image": "busybox", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-23T10:00:00Z"}},
            "lastState": last_state,
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                          "limits": {"cpu": "500m", "memory": "128Mi"}}
        }]
    }});
    patch_status(cluster, name, &status);
}

fn patch_status(cluster: &Cluster, pod: &str, status: &Value) {
    cluster.kubectl(&[
        "patch",
        "pod",
        pod,
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}

fn limit(cluster: &Cluster, pod: &str, resource: &str) -> f64 {
    let pod = cluster.get(NS, &format!("pod/{pod}")).unwrap();
    let text = pod["spec"]["containers"][0]["resources"]["limits"][resource]
        .as_str()
        .unwrap()
        .to_owned();
    cellmesh_api::quantity::parse(&text).unwrap()
}

fn events_with_reason(cluster: &Cluster, reason: &str) -> Vec<Value> {
    let events = cluster.kubectl(&["get", "events.events.k8s.io", "-n", NS, "-o", "json"]);
    let events: Value = serde_json::from_str(&events).unwrap();
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == reason)
        .cloned()
        .collect()
}

/// `Some` once an Event with `reason` has a note containing every one of `needles`.
fn event_noting(cluster: &Cluster, reason: &str, needles: &[&str]) -> Option<()> {
    events_with_reason(cluster, reason)
        .iter()
        .any(|e| {
            e["note"]
                .as_str()
                .is_some_and(|n| needles.iter().all(|needle| n.contains(needle)))
        })
        .then_some(())
}

fn start_cluster() -> Cluster {
    let cluster = Cluster::start();
    cluster.kubectl(&["create", "namespace", NS]);
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/scalingpolicies.cellmesh.io",
        "--timeout=30s",
    ]);
    cluster
}

/// Without any Prometheus the controller reads `metrics.k8s.io` (served by cellmesh-local's
/// API server from a Node's metrics endpoint, here a fake node agent); `mode: Off` then
/// changes nothing but the status, counts a `recommended` action, and `kubectl get sp` shows
/// the essentials.
#[test]
fn without_prometheus_usage_comes_from_metrics_k8s_io_and_mode_off_only_recommends() {
    let cluster = start_cluster();
    let agent = serve_fake(axum::Router::new().route(
        "/metrics/resource",
        axum::routing::get(|| async {
            axum::Json(json!({
                "node": {"metadata": {"name": "fake-node"}, "timestamp": "2026-11-23T10:00:00Z",
                         "window": "10s", "usage": {"cpu": "1", "memory": "1Gi"}},
                "pods": [{"metadata": {"name": "web-0", "namespace": NS},
                          "timestamp": "2026-11-23T10:00:00Z", "window": "10s",
                          "containers": [{"name": "cell",
                                          "usage": {"cpu": "500000000n", "memory": "65536Ki"}}]}]
            }))
        }),
    ));
    cluster.apply(
        NS, // ignored: Nodes are cluster-scoped
        &format!(
            r#"
apiVersion: v1
kind: Node
metadata:
  name: fake-node
  annotations: {{cellmesh.io/metrics-endpoint: "http://{agent}"}}
"#
        ),
    );
    running_pod(&cluster, "web-0", "s0", json!({}));
    cluster.apply(
        NS,
        r#"
apiVersion: cellmesh.io/v1alpha1
kind: ScalingPolicy
metadata:
  name: shop
spec:
  targetRef: {kind: WorkModel, name: shop}
  mode: "Off"
  interval: 500ms
  window: 1s
  cooldown: 0s
  cpu: {min: 100m, max: "2", upEvents: 2}
"#,
    );
    // No --prometheus-url: the fallback is the only source.
    let operator = cluster.operator("solo", &[]);

    let sp = eventually("a recommendation from metrics.k8s.io", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/shop")?;
        (sp["status"]["containers"][0]["cpu"]["recommendation"] == "1250m").then_some(sp)
    });
    let metrics_available = condition(&sp, "MetricsAvailable").unwrap();
    assert_eq!(metrics_available["status"], "True", "{metrics_available}");
    assert!(
        metrics_available["message"]
            .as_str()
            .unwrap()
            .contains("metrics.k8s.io"),
        "{metrics_available}"
    );
    assert_eq!(sp["status"]["containers"][0]["cpu"]["usage"], "500m");
    eventually("the Recommended Event", WAIT, || {
        event_noting(&cluster, "Recommended", &["500m→1250m"])
    });
    let (_, text) = operator.http_get("/metrics");
    assert!(actions(&text, "cpu", "up", "recommended") >= 1.0, "{text}");
    assert_eq!(
        actions(&text, "cpu", "up", "applied"),
        0.0,
        "mode Off applies nothing: {text}"
    );
    // A new pod is only recorded too: the size its workload would get, as an Event.
    running_pod(&cluster, "web-1", "s0", json!({}));
    eventually("the new pod's recommendation", WAIT, || {
        event_noting(
            &cluster,
            "Recommended",
            &["web-1/cell cpu 500m→1250m", "new pod"],
        )
    });
    // Several intervals later the pods are untouched.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        limit(&cluster, "web-0", "cpu"),
        0.5,
        "mode Off resized a pod"
    );
    assert_eq!(
        limit(&cluster, "web-1", "cpu"),
        0.5,
        "mode Off resized a pod"
    );

    // The printer columns show target, mode, readiness, metrics and the first container.
    let table = cluster.kubectl(&["get", "sp", "-n", NS]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    for column in ["TARGET", "MODE", "READY", "METRICS", "CPU", "REC", "LIMIT"] {
        assert!(header.contains(&column), "no {column} column: {table}");
    }
    // The recommendation column shows the latest tick's (1250m on a deciding tick, the
    // current 500m between two): the status is checked above.
    let row = lines.next().unwrap();
    for cell in ["shop", "Off", "True", "500m"] {
        assert!(
            row.split_whitespace().any(|c| c == cell),
            "no {cell}: {table}"
        );
    }
}

/// Several policies at once, as a node would answer them (statuses written by the test).
/// About 40–60 s on a loaded 2-core machine (one cluster for five scenarios, each waiting a
/// few intervals; splitting it would start five API servers):
/// a budget shared by three busy pods is never exceeded; a resize the node calls
/// `Infeasible` gives the condition, an Event and a metric, and is not sent again until the
/// target changes; an increase its node has no room for is held back; an out-of-memory kill
/// bumps the memory limit and that limit is never lowered in place.
#[test]
fn budgets_hold_infeasible_resizes_are_not_retried_and_oom_kills_bump_memory() {
    let cluster = start_cluster();
    let usages: Usages = Arc::new(Mutex::new(vec![
        ("web-0".into(), 0.6, 0.0),
        ("web-1".into(), 0.6, 0.0),
        ("web-2".into(), 0.6, 0.0),
        ("big-0".into(), 0.5, 0.0),
        ("mem-0".into(), 0.1, 60.0 * 1024.0 * 1024.0),
        ("tight-0".into(), 0.5, 0.0),
        ("re-0".into(), 0.5, 0.0),
        ("old-0".into(), 0.5, 0.0),
        ("shrink-0".into(), 0.1, 10.0 * 1024.0 * 1024.0),
    ]));
    let prometheus = fake_prometheus_per_pod(usages.clone());
    for pod in ["web-0", "web-1", "web-2"] {
        running_pod(&cluster, pod, "s0", json!({}));
    }
    running_pod(&cluster, "big-0", "s1", json!({}));
    running_pod(&cluster, "re-0", "s4", json!({}));
    running_pod(&cluster, "shrink-0", "s6", json!({}));
    // A pod whose node does not report its containers' resources: the API server refuses
    // every resize of it ("Pod running on node without support for resize").
    running_pod(&cluster, "old-0", "s5", json!({}));
    patch_status(
        &cluster,
        "old-0",
        &json!({"status": {"containerStatuses": [{
            "name": "cell", "image": "busybox", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-23T10:00:00Z"}}, "resources": null}]}}),
    );
    // WorkModel shop's services s4 and s6 (their Deployments are the operator's; no
    // Deployment controller runs here, so re-0 and shrink-0 stand for their pods).
    cluster.apply(
        NS,
        r#"
apiVersion: cellmesh.io/v1alpha1
kind: WorkModel
metadata:
  name: shop
spec:
  services:
    s4:
      internalService: {computePi: {}}
      resources:
        requests: {cpu: 250m, memory: 64Mi}
        limits: {cpu: 500m, memory: 128Mi}
    s6:
      internalService: {computePi: {}}
      resources:
        requests: {cpu: 250m, memory: 64Mi}
        limits: {cpu: 500m, memory: 128Mi}
"#,
    );
    // An 800m node already holding other-0's 250m request (and tight-0's own 250m).
    cluster.apply(
        NS, // ignored: Nodes are cluster-scoped
        "apiVersion: v1\nkind: Node\nmetadata: {name: small-node}\n",
    );
    cluster.kubectl(&[
        "patch",
        "node",
        "small-node",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"allocatable": {"cpu": "800m", "memory": "1Gi", "pods": "10"},
                       "capacity": {"cpu": "800m", "memory": "1Gi", "pods": "10"}}}"#,
    ]);
    running_pod_on(&cluster, "other-0", "x", json!({}), "small-node");
    running_pod_on(&cluster, "tight-0", "s3", json!({}), "small-node");
    running_pod(
        &cluster,
        "mem-0",
        "s2",
        // Killed a moment ago: a kill more than a day old would count as handled long ago.
        json!({"terminated": {"exitCode": 137, "reason": "OOMKilled",
                              "finishedAt": jiff::Timestamp::now().to_string()}}),
    );
    let policy = |name: &str, service: &str, body: &str| {
        format!(
            r#"
apiVersion: cellmesh.io/v1alpha1
kind: ScalingPolicy
metadata:
  name: {name}
spec:
  targetRef: {{kind: WorkModel, name: shop, services: [{service}]}}
  interval: 500ms
  window: 1s
  cooldown: 0s
  metrics:
    prometheus: {{url: "http://{prometheus}"}}
{body}
"#
        )
    };
    cluster.apply(
        NS,
        &policy(
            "budget",
            "s0",
            "  cpu: {min: 100m, max: \"2\", upEvents: 2}\n  budget: {cpu: \"2\"}",
        ),
    );
    cluster.apply(
        NS,
        &policy("big", "s1", "  cpu: {min: 100m, max: \"64\", upEvents: 2}"),
    );
    cluster.apply(NS, &policy("mem", "s2", "  memory: {min: 64Mi, max: 1Gi}"));
    cluster.apply(
        NS,
        &policy("tight", "s3", "  cpu: {min: 100m, max: \"2\", upEvents: 2}"),
    );
    cluster.apply(
        NS,
        &policy(
            "refused",
            "s5",
            "  cpu: {min: 100m, max: \"2\", upEvents: 1}",
        ),
    );
    cluster.apply(
        NS,
        &policy(
            "recreate",
            "s4",
            "  mode: InPlaceOrRecreate\n  cpu: {min: 100m, max: \"64\", upEvents: 2}",
        ),
    );
    cluster.apply(
        NS,
        &policy(
            "shrink",
            "s6",
            "  mode: InPlaceOrRecreate\n  memory: {min: 64Mi, max: 1Gi, downEvents: 2}",
        ),
    );
    let operator = cluster.operator("solo", &[]);

    // Budget: every pod wants 1250m; together they get at most 2 cores, at every look.
    // One kubectl call per look (each costs ~0.5 s on a loaded machine).
    let web_limits = || -> Vec<f64> {
        let pods = cluster.kubectl(&[
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "cellmesh.io/service=s0",
            "-o",
            "json",
        ]);
        let pods: Value = serde_json::from_str(&pods).unwrap();
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pod| {
                let cpu = pod["spec"]["containers"][0]["resources"]["limits"]["cpu"]
                    .as_str()
                    .unwrap();
                cellmesh_api::quantity::parse(cpu).unwrap()
            })
            .collect()
    };
    eventually("the three pods raised within the budget", WAIT, || {
        let limits = web_limits();
        (limits.len() == 3 && limits.iter().all(|l| *l > 0.5)).then_some(())
    });
    for _ in 0..5 {
        let total: f64 = web_limits().iter().sum();
        assert!(total <= 2.0 + 1e-9, "budget of 2 cores exceeded: {total}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Node headroom: tight-0 wants 1250m (request 625m) but its node has 550m free.
    eventually("the InsufficientNodeHeadroom Event", WAIT, || {
        event_noting(
            &cluster,
            "InsufficientNodeHeadroom",
            &["tight-0", "550m free of 800m"],
        )
    });
    assert_eq!(
        limit(&cluster, "tight-0", "cpu"),
        0.5,
        "resized beyond its node"
    );
    let (_, text) = operator.http_get("/metrics");
    assert!(actions(&text, "cpu", "up", "deferred") >= 1.0, "{text}");

    // OOM kill: memory bumped by max(1.2 × 128Mi, 128Mi + 100Mi) = 228Mi.
    eventually("memory bumped after the OOM kill", WAIT, || {
        (limit(&cluster, "mem-0", "memory") > 128.0 * 1024.0 * 1024.0).then_some(())
    });
    assert_eq!(limit(&cluster, "mem-0", "memory"), 228.0 * 1024.0 * 1024.0);
    eventually("the OOM bump's Event", WAIT, || {
        event_noting(&cluster, "Resized", &["mem-0/cell memory", "out-of-memory"])
    });

    // Infeasible: the node refuses big-0's resize; it keeps its size in force.
    eventually("big-0 resized", WAIT, || {
        (limit(&cluster, "big-0", "cpu") == 1.25).then_some(())
    });
    patch_status(
        &cluster,
        "big-0",
        &json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "PodResizePending", "status": "True", "reason": "Infeasible",
             "message": "Node didn't have enough capacity: cpu, requested: 1250, capacity: 1000"}]}}),
    );
    let sp = eventually("ResizeInfeasible=True", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/big")?;
        condition(&sp, "ResizeInfeasible")
            .filter(|c| c["status"] == "True")
            .map(|_| sp.clone())
    });
    let infeasible = condition(&sp, "ResizeInfeasible").unwrap();
    assert!(
        infeasible["message"].as_str().unwrap().contains("big-0"),
        "{infeasible}"
    );
    eventually("the ResizeInfeasible Event", WAIT, || {
        event_noting(&cluster, "ResizeInfeasible", &["big-0"])
    });
    eventually("the infeasible action counted", WAIT, || {
        let (_, text) = operator.http_get("/metrics");
        (actions(&text, "cpu", "up", "infeasible") == 1.0).then_some(())
    });
    // Usage unchanged: the Guardian, deciding from the size in force (500m), wants 1250m
    // again every interval — and sends nothing (no applied action is added).
    let (_, before) = operator.http_get("/metrics");
    // The status shows 1250m on every deciding tick (500m between two, when events restart).
    eventually("1250m still recommended", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/big")?;
        (sp["status"]["containers"][0]["cpu"]["recommendation"] == "1250m").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let (_, after) = operator.http_get("/metrics");
    assert_eq!(
        actions(&after, "cpu", "up", "applied"),
        actions(&before, "cpu", "up", "applied"),
        "an infeasible resize was sent again: {after}"
    );
    // A different target is sent: at 450m the step is capped at usage / lower = 1125m.
    usages.lock().unwrap()[3].1 = 0.45;
    eventually("a new target for big-0", WAIT, || {
        (limit(&cluster, "big-0", "cpu") == 1.125).then_some(())
    });
    // The OOM-bumped memory limit is never lowered in place: Kubernetes refuses it without
    // `resizePolicy: RestartContainer`, so nothing failed. And the recommendation stops at
    // the OOM floor: usage 60Mi would fit 90Mi, but the container was killed at 128Mi, so
    // no lower than 128Mi / upper (0.8) = 160Mi.
    assert_eq!(limit(&cluster, "mem-0", "memory"), 228.0 * MIB);
    let sp = eventually("the OOM floor in the status", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/mem")?;
        let memory = &sp["status"]["containers"][0]["memory"];
        (memory["downEvents"].as_u64() > Some(0)).then_some(sp)
    });
    let memory = &sp["status"]["containers"][0]["memory"];
    assert_eq!(memory["floor"], "160Mi", "{memory}");
    eventually("the recommendation at the OOM floor", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/mem")?;
        (sp["status"]["containers"][0]["memory"]["recommendation"] == "160Mi").then_some(())
    });
    let (_, text) = operator.http_get("/metrics");
    assert_eq!(actions(&text, "memory", "down", "failed"), 0.0, "{text}");

    // Refused resizes: old-0's is sent again with backoff (the failures go on being
    // counted) but its Warning Event is published once, for the one target (a second
    // publication would turn the Event into a series).
    eventually("old-0's resize refused a few times", WAIT, || {
        let (_, text) = operator.http_get("/metrics");
        (actions(&text, "cpu", "up", "failed") >= 3.0).then_some(())
    });
    let refused = events_with_reason(&cluster, "ResizeRefused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("old-0/cell") && n.contains("without support")),
        "{refused:?}"
    );
    assert!(
        refused[0]["series"].is_null(),
        "published again: {refused:?}"
    );
    assert_eq!(limit(&cluster, "old-0", "cpu"), 0.5);

    // InPlaceOrRecreate: re-0's resize is Infeasible on its node → the size goes into the
    // Deployment's pod template, once: the WorkModel controller, which server-side-applies
    // that Deployment with force, builds it with the policy's template recommendation, so the
    // two never fight (the generation stays put while both keep reconciling).
    let template_cpu = |d: &Value| {
        let resources = &d["spec"]["template"]["spec"]["containers"][0]["resources"];
        (
            resources["limits"]["cpu"].as_str().unwrap_or("").to_owned(),
            resources["requests"]["cpu"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    };
    let before = eventually("Deployment s4 built", WAIT, || {
        cluster.get(NS, "deployment/s4")
    });
    assert_eq!(template_cpu(&before), ("500m".into(), "250m".into()));
    eventually("re-0 resized in place first", WAIT, || {
        (limit(&cluster, "re-0", "cpu") == 1.25).then_some(())
    });
    patch_status(
        &cluster,
        "re-0",
        &json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "PodResizePending", "status": "True", "reason": "Infeasible",
             "message": "Node didn't have enough capacity: cpu, requested: 1250, capacity: 1000"}]}}),
    );
    let rolled = eventually("the template carries the size", WAIT, || {
        let d = cluster.get(NS, "deployment/s4")?;
        (template_cpu(&d) == ("1250m".into(), "625m".into())).then_some(d)
    });
    let generation = rolled["metadata"]["generation"].as_i64().unwrap();
    assert_eq!(
        generation,
        before["metadata"]["generation"].as_i64().unwrap() + 1,
        "the template changed once"
    );
    let sp = cluster.get(NS, "scalingpolicy/recreate").unwrap();
    let recommendation = &sp["status"]["templateRecommendations"][0];
    assert_eq!(recommendation["workload"], "s4", "{}", sp["status"]);
    assert_eq!(recommendation["cpu"]["limit"], "1250m", "{}", sp["status"]);
    eventually("the TemplateUpdated Event", WAIT, || {
        event_noting(&cluster, "TemplateUpdated", &["s4/cell cpu"])
    });
    // Several reconciles of both controllers later (every status write of the policy
    // triggers the WorkModel's), the template and its generation have not moved.
    let workmodel_reconciles = |text: &str| {
        metric_value(
            text,
            r#"cellmesh_operator_reconciles_total{controller="workmodel"}"#,
        )
    };
    let (_, text) = operator.http_get("/metrics");
    let reconciles = workmodel_reconciles(&text);
    eventually("several more WorkModel reconciles", WAIT, || {
        let (_, text) = operator.http_get("/metrics");
        (workmodel_reconciles(&text) >= reconciles + 3.0).then_some(())
    });
    let d = cluster.get(NS, "deployment/s4").unwrap();
    assert_eq!(d["metadata"]["generation"].as_i64().unwrap(), generation);
    assert_eq!(template_cpu(&d), ("1250m".into(), "625m".into()));
    let (_, text) = operator.http_get("/metrics");
    assert_eq!(actions(&text, "cpu", "up", "template"), 1.0, "{text}");

    // A lowered max reaches the template: the recommendation is clamped to it (the
    // request keeps its 1:2 ratio), and the template follows.
    let patch_policy = |patch: &str| {
        cluster.kubectl(&[
            "-n",
            NS,
            "patch",
            "scalingpolicy",
            "recreate",
            "--type=merge",
            "-p",
            patch,
        ])
    };
    patch_policy(r#"{"spec":{"cpu":{"max":"1"}}}"#);
    eventually("the template clamped to the new max", WAIT, || {
        let d = cluster.get(NS, "deployment/s4")?;
        (template_cpu(&d) == ("1".into(), "500m".into())).then_some(())
    });
    // Away from InPlaceOrRecreate the recommendation leaves the status (a merge patch
    // must send it as null) and the template goes back to the WorkModel's resources.
    patch_policy(r#"{"spec":{"mode":"InPlace"}}"#);
    eventually("templateRecommendations gone from the status", WAIT, || {
        let sp = cluster.get(NS, "scalingpolicy/recreate")?;
        (sp["status"].is_object() && sp["status"]["templateRecommendations"].is_null())
            .then_some(())
    });
    eventually("the template back at the spec's size", WAIT, || {
        let d = cluster.get(NS, "deployment/s4")?;
        (template_cpu(&d) == ("500m".into(), "250m".into())).then_some(())
    });

    // InPlaceOrRecreate, memory down: shrink-0 uses 10Mi of its 128Mi. Kubernetes refuses a
    // lower memory limit in place without `resizePolicy: RestartContainer`, so the size
    // (fitted to usage, clamped to min 64Mi; the request keeps its 1:2 ratio) goes into
    // Deployment s6's template, and the running pod keeps its 128Mi: nothing is sent.
    let mib = |q: &Value| cellmesh_api::quantity::parse(q.as_str().unwrap_or("0")).unwrap() / MIB;
    let template_memory = |d: &Value| {
        let resources = &d["spec"]["template"]["spec"]["containers"][0]["resources"];
        (
            mib(&resources["limits"]["memory"]),
            mib(&resources["requests"]["memory"]),
        )
    };
    // (Deployment s6 was built at the WorkModel's 128Mi/64Mi; by now the policy has had
    // many ticks, so the template is only looked at once it has moved.)
    eventually("s6's template at min memory", WAIT, || {
        let d = cluster.get(NS, "deployment/s6")?;
        (template_memory(&d) == (64.0, 32.0)).then_some(())
    });
    let workmodel = cluster.get(NS, "workmodel/shop").unwrap();
    assert_eq!(
        workmodel["spec"]["services"]["s6"]["resources"]["limits"]["memory"], "128Mi",
        "the WorkModel's own resources are left as they are"
    );
    let sp = cluster.get(NS, "scalingpolicy/shrink").unwrap();
    let recommendation = &sp["status"]["templateRecommendations"][0];
    assert_eq!(recommendation["workload"], "s6", "{}", sp["status"]);
    assert_eq!(
        mib(&recommendation["memory"]["limit"]),
        64.0,
        "{}",
        sp["status"]
    );
    assert_eq!(
        limit(&cluster, "shrink-0", "memory"),
        128.0 * MIB,
        "lowered in place"
    );
    eventually("the memory TemplateUpdated Event", WAIT, || {
        event_noting(
            &cluster,
            "TemplateUpdated",
            &["s6/cell memory", "RestartContainer"],
        )
    });
    let (_, text) = operator.http_get("/metrics");
    assert_eq!(actions(&text, "memory", "down", "template"), 1.0, "{text}");
    assert_eq!(
        actions(&text, "memory", "down", "applied"),
        0.0,
        "a memory decrease was sent in place: {text}"
    );

    // The operator restarts (an upgrade, a new leader). The OOM kill comes back from the
    // status: mem-0 is not bumped a second time for it (its lastState still says
    // OOMKilled), and its floor still holds.
    let sp = cluster.get(NS, "scalingpolicy/mem").unwrap();
    let kills = &sp["status"]["oomKills"];
    assert_eq!(
        (
            &kills[0]["workload"],
            &kills[0]["container"],
            &kills[0]["limit"]
        ),
        (&json!("s2"), &json!("cell"), &json!("128Mi")),
        "{kills}"
    );
    drop(operator);
    let operator = cluster.operator("solo", &[]);
    // Every policy ticks every 500ms: 40 ticks are a few of each.
    eventually("the new operator's ticks", WAIT, || {
        let (_, text) = operator.http_get("/metrics");
        (metric_value(&text, "cellmesh_scaling_decision_seconds_count") >= 40.0).then_some(())
    });
    let (_, text) = operator.http_get("/metrics");
    assert_eq!(actions(&text, "memory", "up", "applied"), 0.0, "{text}");
    assert_eq!(
        limit(&cluster, "mem-0", "memory"),
        228.0 * MIB,
        "bumped again for the same kill"
    );
    let sp = cluster.get(NS, "scalingpolicy/mem").unwrap();
    let memory = &sp["status"]["containers"][0]["memory"];
    assert_eq!(memory["floor"], "160Mi", "{memory}");
}
