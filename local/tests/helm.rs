//! Helm — the official Go SDK, through the `helm-python-sdk` wheel — installs, upgrades and
//! uninstalls `tests/charts/smoke` (a ConfigMap, a Deployment, a Service, a CRD and one of
//! its custom resources) against `cellmesh-local apiserver`. After each step kubectl checks
//! the objects and the release Secrets Helm keeps (`sh.helm.release.v1.<name>.v<revision>`).
//!
//! The Python interpreter comes from `CELLMESH_TEST_PYTHON` (set by `cargo xtask test|ci`),
//! else `.venv/bin/python` under the workspace root; `cargo xtask setup` creates that venv.

// Test helpers: a panic is the test failing with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use serde_json::{Value, json};

/// The venv's Python with `helm_python` importable, or a panic saying how to get it.
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("CELLMESH_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives inside the workspace");
    let venv_python = workspace.join(".venv/bin/python");
    assert!(
        venv_python.is_file(),
        "the Helm tests need the helm-python-sdk venv: run `cargo xtask setup` \
         (it creates {}), or set CELLMESH_TEST_PYTHON to a Python that imports helm_python",
        venv_python.display()
    );
    venv_python
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// Runs one release action through the SDK; returns `{"result": …, "history": […]}`.
fn helm(server: &Server, action: &str, chart_and_values: Option<Value>) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(tests_dir().join("helm/release.py"))
        .arg(server.kubeconfig())
        .arg(action)
        .arg("demo")
        .env("HOME", server.home.path())
        .env_remove("KUBERNETES_SERVICE_HOST");
    if let Some(values) = chart_and_values {
        cmd.arg(tests_dir().join("charts/smoke"))
            .arg(values.to_string());
    }
    let out = cmd.output().expect("python runs");
    assert!(
        out.status.success(),
        "helm {action} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn get(server: &Server, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&server.kubectl(&args)).unwrap()
}

/// The release Secrets as (name, status label, version label), by revision.
fn release_secrets(server: &Server) -> Vec<(String, String, String)> {
    let list = get(server, &["secrets", "-l", "owner=helm,name=demo"]);
    let mut secrets: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["type"], "helm.sh/release.v1");
            assert!(
                s["data"]["release"].as_str().is_some_and(|r| r.len() > 100),
                "the release payload is stored: {s}"
            );
            let labels = &s["metadata"]["labels"];
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&s["metadata"]["name"]),
                text(&labels["status"]),
                text(&labels["version"]),
            )
        })
        .collect();
    secrets.sort_by(|a, b| a.2.cmp(&b.2));
    secrets
}

fn secret(name: &str, status: &str, version: &str) -> (String, String, String) {
    (name.to_owned(), status.to_owned(), version.to_owned())
}

#[test]
fn install_upgrade_uninstall_a_chart_with_a_crd() {
    let server = Server::start();

    // install
    let installed = helm(&server, "install", Some(json!({"greeting": "hi"})));
    assert_eq!(installed["result"]["revision"], 1);
    assert_eq!(installed["result"]["status"], "deployed");
    let crd = get(
        &server,
        &["customresourcedefinition", "widgets.smoke.cellmesh.io"],
    );
    assert_eq!(crd["spec"]["names"]["kind"], "Widget");
    let cm = get(
        &server,
        &["configmap", "demo-settings", "--show-managed-fields"],
    );
    assert_eq!(cm["data"]["greeting"], "hi");
    let deploy = get(&server, &["deployment", "demo-web"]);
    assert_eq!(deploy["spec"]["replicas"], 1);
    let service = get(&server, &["service", "demo-web"]);
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let widget = get(&server, &["widget", "demo-widget"]);
    assert_eq!(widget["spec"]["size"], 3);
    assert_eq!(
        widget["spec"]["colour"], "blue",
        "the CRD's default applied"
    );
    // Helm 4 applies server-side, as field manager of its client.
    let managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["operation"] == "Apply")
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers.len(), 1, "one apply manager: {cm}");
    assert_eq!(
        release_secrets(&server),
        [secret("sh.helm.release.v1.demo.v1", "deployed", "1")]
    );

    // upgrade with changed values
    let upgraded = helm(
        &server,
        "upgrade",
        Some(json!({"greeting": "bye", "replicas": 2, "widgetSize": 5})),
    );
    assert_eq!(upgraded["result"]["revision"], 2);
    assert_eq!(upgraded["history"].as_array().unwrap().len(), 2);
    assert_eq!(
        get(&server, &["configmap", "demo-settings"])["data"]["greeting"],
        "bye"
    );
    let deploy = get(&server, &["deployment", "demo-web"]);
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["metadata"]["generation"], 2, "the spec changed once");
    assert_eq!(get(&server, &["widget", "demo-widget"])["spec"]["size"], 5);
    assert_eq!(
        release_secrets(&server),
        [
            secret("sh.helm.release.v1.demo.v1", "superseded", "1"),
            secret("sh.helm.release.v1.demo.v2", "deployed", "2"),
        ]
    );

    // uninstall: the templates' objects and the history go; the CRD stays (Helm never
    // deletes what `crds/` installed).
    let uninstalled = helm(&server, "uninstall", None);
    assert_eq!(uninstalled["history"], json!([]));
    for kind in ["configmaps", "deployments", "services", "widgets"] {
        let left = get(&server, &[kind]);
        assert_eq!(left["items"], json!([]), "{kind} left behind: {left}");
    }
    assert_eq!(release_secrets(&server), []);
    get(
        &server,
        &["customresourcedefinition", "widgets.smoke.cellmesh.io"],
    );
}
