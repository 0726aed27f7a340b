//! The real kubectl against `cellmesh-local apiserver`: each test runs its own server on a
//! random loopback address. Expected texts are what kubectl prints against a real cluster.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{Server, eventually};
use serde_json::Value;

const CONFIGMAP_AND_DEPLOYMENT: &str = r#"
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
"#;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn version_and_api_resources() {
    let server = Server::start();
    let version = json(&server.kubectl(&["version", "-o", "json"]));
    assert_eq!(version["serverVersion"]["major"], "1");
    let minor: u32 = version["serverVersion"]["minor"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(minor >= 33, "server must report Kubernetes >= 1.33");

    let resources = server.kubectl(&["api-resources"]);
    assert_eq!(
        header(&resources),
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    let deploy = resources
        .lines()
        .find(|l| l.starts_with("deployments "))
        .expect("deployments listed");
    assert_eq!(
        deploy.split_whitespace().collect::<Vec<_>>(),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    let names = server.kubectl(&["api-resources", "-o", "name"]);
    for expected in [
        "pods",
        "leases.coordination.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
        "endpointslices.discovery.k8s.io",
        "roles.rbac.authorization.k8s.io",
    ] {
        assert!(
            names.lines().any(|l| l == expected),
            "{expected} missing from {names}"
        );
    }
    let ns = server.kubectl(&["get", "namespaces", "-o", "name"]);
    for expected in ["namespace/default", "namespace/kube-system"] {
        assert!(ns.lines().any(|l| l == expected), "{ns}");
    }
}

#[test]
fn apply_get_label_annotate_scale_delete() {
    let server = Server::start();
    let applied = server.kubectl_stdin(&["apply", "-f", "-"], Some(CONFIGMAP_AND_DEPLOYMENT));
    assert_eq!(
        applied.trim(),
        "configmap/settings created\ndeployment.apps/web created"
    );
    let again = server.kubectl_stdin(&["apply", "-f", "-"], Some(CONFIGMAP_AND_DEPLOYMENT));
    assert_eq!(
        again.trim(),
        "configmap/settings unchanged\ndeployment.apps/web unchanged"
    );

    let deployments = server.kubectl(&["get", "deployments"]);
    assert_eq!(
        header(&deployments),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    let row: Vec<&str> = deployments
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["web", "0/2", "0", "0"]);
    let wide = server.kubectl(&["get", "deploy", "-o", "wide"]);
    assert_eq!(
        header(&wide),
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert!(
        wide.contains("ghcr.io/cellmesh/cell:0.1.0") && wide.contains("app=web"),
        "{wide}"
    );
    let cms = server.kubectl(&["get", "cm", "settings"]);
    assert_eq!(header(&cms), ["NAME", "DATA", "AGE"]);
    assert_eq!(
        cms.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>(),
        ["settings", "1"]
    );

    let deploy = json(&server.kubectl(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(deploy["metadata"]["generation"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    let uid = deploy["metadata"]["uid"].as_str().unwrap().to_owned();

    server.kubectl(&["label", "deploy", "web", "tier=front"]);
    server.kubectl(&["annotate", "cm", "settings", "note=kept"]);
    let labels = server.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.labels.tier} {.metadata.generation}",
    ]);
    assert_eq!(labels, "front 1", "labels do not bump generation");
    assert_eq!(
        server.kubectl(&[
            "get",
            "cm",
            "settings",
            "-o",
            "jsonpath={.metadata.annotations.note}"
        ]),
        "kept"
    );

    assert_eq!(
        server
            .kubectl(&["scale", "deploy", "web", "--replicas=5"])
            .trim(),
        "deployment.apps/web scaled"
    );
    let scaled = json(&server.kubectl(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(scaled["spec"]["replicas"], 5);
    assert_eq!(
        scaled["metadata"]["generation"], 2,
        "a spec change bumps generation"
    );
    assert_eq!(scaled["metadata"]["uid"], uid.as_str());

    assert_eq!(
        server.kubectl(&["delete", "cm", "settings"]).trim(),
        "configmap \"settings\" deleted"
    );
    let missing = server.kubectl_fails(&["get", "cm", "settings"], None);
    assert_eq!(
        missing.trim(),
        "Error from server (NotFound): configmaps \"settings\" not found"
    );
}

#[test]
fn server_errors_read_as_on_a_real_cluster() {
    let server = Server::start();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1'}\n";
    server.kubectl_stdin(&["create", "-f", "-"], Some(cm));
    let exists = server.kubectl_fails(&["create", "-f", "-"], Some(cm));
    assert_eq!(
        exists.trim(),
        "Error from server (AlreadyExists): error when creating \"STDIN\": configmaps \"c\" already exists"
    );
    let stale = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, resourceVersion: '1'}\ndata: {a: '2'}\n";
    let conflict = server.kubectl_fails(&["replace", "-f", "-"], Some(stale));
    assert_eq!(
        conflict.trim(),
        "Error from server (Conflict): error when replacing \"STDIN\": Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let no_namespace = server.kubectl_fails(&["get", "cm", "-n", "nowhere", "x"], None);
    // kubectl looks the namespace up after a 404 and reports it missing.
    assert_eq!(
        no_namespace.trim(),
        "Error from server (NotFound): namespaces \"nowhere\" not found"
    );
    let unauthorized = server.kubectl_fails(&["--token=not-the-token", "get", "ns"], None);
    assert!(
        unauthorized.contains("error: You must be logged in to the server (Unauthorized)"),
        "{unauthorized}"
    );
    // The admin token's kubeconfig is private.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.kubeconfig())
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn bad_input_gets_status_bodies_and_changes_nothing() {
    let server = Server::start();
    let before = json(&server.kubectl(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]))
        ["metadata"]["resourceVersion"]
        .clone();
    let malformed = server.kubectl_fails(
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            "-",
        ],
        Some("{\"metadata\": {\"name\": "),
    );
    assert!(
        malformed.contains("Error from server (BadRequest)"),
        "{malformed}"
    );
    let wrong_kind = server.kubectl_fails(
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            "-",
        ],
        Some(r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}"#),
    );
    assert!(
        wrong_kind.contains("Error from server (BadRequest)"),
        "{wrong_kind}"
    );
    let bad_name = server.kubectl_fails(
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            "-",
        ],
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Not_Valid"}}"#),
    );
    assert!(
        bad_name.contains("Error from server (Invalid)") || bad_name.contains("is invalid"),
        "{bad_name}"
    );
    let huge = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(4 * 1024 * 1024)
    );
    let too_large = server.kubectl_fails(
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            "-",
        ],
        Some(&huge),
    );
    assert!(
        too_large.contains("RequestEntityTooLarge")
            || too_large.contains("Request entity too large"),
        "{too_large}"
    );
    let after = json(&server.kubectl(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]));
    assert_eq!(
        after["metadata"]["resourceVersion"], before,
        "nothing was stored"
    );
    assert_eq!(after["items"].as_array().unwrap().len(), 0);
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              color: {type: string}
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.size, statusReplicasPath: .status.size}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color, priority: 1}
"#;

#[test]
fn crds_register_and_print_their_columns() {
    let server = Server::start();
    assert_eq!(
        server
            .kubectl_stdin(&["apply", "-f", "-"], Some(WIDGET_CRD))
            .trim(),
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"
    );
    server.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=20s",
        "crd/widgets.example.com",
    ]);
    let widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3, color: blue}\n";
    // kubectl refreshes discovery on a miss, so the new kind is usable at once.
    assert_eq!(
        server
            .kubectl_stdin(&["apply", "-f", "-"], Some(widget))
            .trim(),
        "widget.example.com/w1 created"
    );
    let table = server.kubectl(&["get", "widgets"]);
    // With printer columns, a CRD prints exactly those (no implicit AGE).
    assert_eq!(header(&table), ["NAME", "SIZE"]);
    assert_eq!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>(),
        ["w1", "3"]
    );
    let wide = server.kubectl(&["get", "wd", "-o", "wide"]);
    assert_eq!(header(&wide), ["NAME", "SIZE", "COLOR"]);
    assert!(wide.contains("blue"));
    server.kubectl(&["scale", "widget", "w1", "--replicas=7"]);
    assert_eq!(
        server.kubectl(&[
            "get",
            "widget",
            "w1",
            "-o",
            "jsonpath={.spec.size} {.metadata.generation}"
        ]),
        "7 2"
    );
    let resources = server.kubectl(&["api-resources", "--api-group=example.com"]);
    assert!(
        resources.contains("widgets") && resources.contains("wd"),
        "{resources}"
    );
    server.kubectl(&["delete", "crd", "widgets.example.com"]);
    let gone = server.kubectl_fails(
        &[
            "get",
            "--raw",
            "/apis/example.com/v1/namespaces/default/widgets",
        ],
        None,
    );
    assert!(gone.contains("NotFound"), "{gone}");
}

#[test]
fn get_watch_streams_changes() {
    let server = Server::start();
    let mut watch = server
        .kubectl_command(&["get", "configmaps", "--watch", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = watch.stdout.take().unwrap();
    let _guard = Kill(watch);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Keep creating until the watch (which may start late) reports the object.
    let mut n = 0;
    let seen = eventually(
        "the watch to report an ADDED configmap",
        Duration::from_secs(30),
        || {
            n += 1;
            let cm = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: w{n}}}\n");
            server.kubectl_stdin(&["create", "-f", "-"], Some(&cm));
            // kubectl prints the header with the first row.
            let header = rx.recv_timeout(Duration::from_millis(500)).ok()?;
            assert_eq!(
                header.split_whitespace().collect::<Vec<_>>(),
                ["EVENT", "NAME", "DATA", "AGE"]
            );
            rx.recv_timeout(Duration::from_secs(5)).ok()
        },
    );
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(&fields[..3], ["ADDED", "w1", "0"], "{seen}");
    server.kubectl(&["delete", "configmap", "w1"]);
    let deleted = eventually("a DELETED event", Duration::from_secs(20), || {
        rx.recv_timeout(Duration::from_millis(200))
            .ok()
            .filter(|l| l.starts_with("DELETED"))
    });
    assert_eq!(deleted.split_whitespace().nth(1), Some("w1"), "{deleted}");
}

#[test]
fn state_and_versions_survive_a_restart() {
    let mut server = Server::start();
    server.kubectl_stdin(&["apply", "-f", "-"], Some(CONFIGMAP_AND_DEPLOYMENT));
    let before = json(&server.kubectl(&["get", "deploy", "web", "-o", "json"]));
    let rv_before: u64 = before["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    server.restart(&[]);
    let after = json(&server.kubectl(&["get", "deploy", "web", "-o", "json"]));
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    server.kubectl(&["label", "deploy", "web", "after=restart"]);
    let relabelled = json(&server.kubectl(&["get", "deploy", "web", "-o", "json"]));
    let rv_after: u64 = relabelled["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        rv_after > rv_before,
        "resourceVersion keeps increasing across restarts"
    );
}

#[test]
fn selectors_patches_and_reapply() {
    let server = Server::start();
    server.kubectl_stdin(&["apply", "-f", "-"], Some(CONFIGMAP_AND_DEPLOYMENT));
    let other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other, labels: {app: db}}\n";
    server.kubectl_stdin(&["apply", "-f", "-"], Some(other));
    assert_eq!(
        server
            .kubectl(&["get", "cm", "-l", "app=web", "-o", "name"])
            .trim(),
        "configmap/settings"
    );
    assert_eq!(
        server
            .kubectl(&["get", "cm", "-l", "app notin (web)", "-o", "name"])
            .trim(),
        "configmap/other"
    );
    assert_eq!(
        server
            .kubectl(&[
                "get",
                "cm",
                "--field-selector",
                "metadata.name=other",
                "-o",
                "name"
            ])
            .trim(),
        "configmap/other"
    );
    let bad = server.kubectl_fails(&["get", "cm", "--field-selector", "spec.bogus=1"], None);
    assert!(
        bad.contains("field label not supported: spec.bogus"),
        "{bad}"
    );

    // Strategic merge (kubectl's default for built-ins): containers merge by name.
    server.kubectl(&[
        "patch", "deploy", "web", "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.36"}]}}}}"#,
    ]);
    let images = server.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[*].name}",
    ]);
    let mut names: Vec<&str> = images.split_whitespace().collect();
    names.sort_unstable();
    assert_eq!(names, ["cell", "sidecar"], "both containers kept");
    server.kubectl(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"greeting":"hi"}}"#,
    ]);
    server.kubectl(&[
        "patch",
        "cm",
        "settings",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/extra","value":"1"}]"#,
    ]);
    assert_eq!(
        server.kubectl(&[
            "get",
            "cm",
            "settings",
            "-o",
            "jsonpath={.data.greeting} {.data.extra}"
        ]),
        "hi 1"
    );

    // Client-side re-apply of a changed manifest sends a strategic merge patch.
    let changed = CONFIGMAP_AND_DEPLOYMENT.replace("replicas: 2", "replicas: 4");
    let applied = server.kubectl_stdin(&["apply", "-f", "-"], Some(&changed));
    assert!(
        applied.contains("deployment.apps/web configured"),
        "{applied}"
    );
    assert_eq!(
        server.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
}

#[test]
fn explain_reads_built_in_schemas() {
    let server = Server::start();
    let spec = server.kubectl(&["explain", "deployment.spec"]);
    for expected in [
        "GROUP:      apps",
        "KIND:       Deployment",
        "VERSION:    v1",
        "FIELD: spec <DeploymentSpec>",
        "Specification of the desired behavior of the Deployment.",
        "  replicas\t<integer>",
        "  selector\t<LabelSelector> -required-",
        "  template\t<PodTemplateSpec> -required-",
    ] {
        assert!(spec.contains(expected), "{expected:?} missing in:\n{spec}");
    }
    let containers = server.kubectl(&["explain", "pod.spec.containers"]);
    for expected in [
        "KIND:       Pod",
        "FIELD: containers <[]Container>",
        "  name\t<string> -required-",
        "  resources\t<ResourceRequirements>",
        "  resizePolicy\t<[]ContainerResizePolicy>",
    ] {
        assert!(
            containers.contains(expected),
            "{expected:?} missing in:\n{containers}"
        );
    }
    let limits = server.kubectl(&["explain", "pod.spec.containers.resources.limits"]);
    assert!(
        limits.contains("FIELD: limits <map[string]Quantity>"),
        "{limits}"
    );
    let missing = server.kubectl_fails(&["explain", "pods.spec.nonexistent"], None);
    assert!(
        missing.contains(r#"field "nonexistent" does not exist"#),
        "{missing}"
    );
}
