//! `kubectl describe` of built-in kinds (with an Event found through its involvedObject
//! field selectors) and an oversize body answered with 413 — texts as on a real cluster.

mod common;

use common::Server;

const OBJECTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: web}
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: cell
        image: ghcr.io/cellmesh/cell:0.1.0
---
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  containers:
  - name: app
    image: busybox
    resources:
      requests: {cpu: 250m, memory: 64Mi}
"#;

/// The `Key: value` lines of a describe output, with runs of spaces collapsed.
fn fields(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn assert_has(text: &str, expected: &[&str]) {
    let lines = fields(text);
    for want in expected {
        assert!(
            lines.iter().any(|l| l == want),
            "{want:?} missing in:\n{text}"
        );
    }
}

#[test]
fn describe_prints_objects_and_their_events() {
    let server = Server::start();
    server.kubectl_stdin(&["apply", "-f", "-"], Some(OBJECTS));

    let cm = server.kubectl(&["describe", "configmap", "settings"]);
    assert_has(
        &cm,
        &[
            "Name: settings",
            "Namespace: default",
            "Labels: app=web",
            "Annotations: <none>",
            "Data",
            "greeting:",
            "hello",
            "Events: <none>",
        ],
    );

    let deploy = server.kubectl(&["describe", "deployment", "web"]);
    assert_has(
        &deploy,
        &[
            "Name: web",
            "Selector: app=web",
            "Replicas: 2 desired | 0 updated | 0 total | 0 available | 0 unavailable",
            "StrategyType: RollingUpdate",
            "RollingUpdateStrategy: 25% max unavailable, 25% max surge",
            "Image: ghcr.io/cellmesh/cell:0.1.0",
        ],
    );

    let uid = server.kubectl(&["get", "pod", "app", "-o", "jsonpath={.metadata.uid}"]);
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata: {{name: app.resized}}\n\
         involvedObject: {{kind: Pod, name: app, namespace: default, uid: {uid}, apiVersion: v1}}\n\
         reason: Resized\nmessage: cpu 250m to 300m\ntype: Normal\n\
         source: {{component: cellmesh-operator}}\ncount: 1\n\
         firstTimestamp: \"2026-01-01T00:00:00Z\"\nlastTimestamp: \"2026-01-01T00:00:00Z\"\n"
    );
    server.kubectl_stdin(&["create", "-f", "-"], Some(&event));
    // An event of another object must not show.
    let other = event
        .replace("app.resized", "other.resized")
        .replace(&uid, "00000000-0000-0000-0000-000000000000")
        .replace("name: app,", "name: other,");
    server.kubectl_stdin(&["create", "-f", "-"], Some(&other));
    let pod = server.kubectl(&["describe", "pod", "app"]);
    assert_has(
        &pod,
        &[
            "Name: app",
            "Service Account: default",
            "Status: Pending",
            "cpu: 250m",
            "memory: 64Mi",
            "QoS Class: Burstable",
            "Type Reason Age From Message",
        ],
    );
    let events: Vec<&str> = pod.lines().filter(|l| l.contains("Resized")).collect();
    assert_eq!(events.len(), 1, "{pod}");
    assert!(events[0].contains("cellmesh-operator"), "{pod}");
    assert!(events[0].ends_with("cpu 250m to 300m"), "{pod}");
}

#[test]
fn oversize_bodies_get_413_and_store_nothing() {
    let server = Server::start();
    let huge = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: huge}}\ndata:\n  blob: {}\n",
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let err = server.kubectl_fails(&["create", "-f", "-"], Some(&huge));
    assert!(
        err.contains("Error from server (RequestEntityTooLarge)")
            && err.contains("Request entity too large: limit is 3145728"),
        "{err}"
    );
    let err = server.kubectl_fails(&["apply", "--server-side", "-f", "-"], Some(&huge));
    assert!(
        err.contains("Request entity too large: limit is 3145728"),
        "{err}"
    );
    let missing = server.kubectl_fails(&["get", "configmap", "huge"], None);
    assert!(
        missing.contains(r#"configmaps "huge" not found"#),
        "{missing}"
    );
}
