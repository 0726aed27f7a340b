//! The Helm chart (`charts/cellmesh`), checked with the official Helm Go SDK (through the
//! `helm-python-sdk` wheel): lint, render with default and non-default values, rejection of
//! bad values by `values.schema.json`, and the facts the chart promises (CRDs equal to the
//! generated ones and kept on uninstall, least-privilege RBAC, a hardened pod, versions kept
//! equal to Cargo's).
//!
//! The Python interpreter comes from `CELLMESH_TEST_PYTHON` (set by `cargo xtask test|ci`),
//! else `.venv/bin/python` under the workspace root; `cargo xtask setup` creates that venv.

// Test helpers: a panic is the test failing with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives inside the workspace")
        .to_owned()
}

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("CELLMESH_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv_python = workspace().join(".venv/bin/python");
    assert!(
        venv_python.is_file(),
        "the chart tests need the helm-python-sdk venv: run `cargo xtask setup` \
         (it creates {}), or set CELLMESH_TEST_PYTHON to a Python that imports helm_python",
        venv_python.display()
    );
    venv_python
}

/// Runs `chart.py ACTION charts/cellmesh VALUES`; Ok(stdout JSON) or Err(stderr).
fn chart(action: &str, values: &Value) -> Result<Value, String> {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/chart.py"))
        .arg(action)
        .arg(workspace().join("charts/cellmesh"))
        .arg(values.to_string())
        .output()
        .expect("python runs");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every manifest the chart renders with `values`, as JSON objects.
fn render(values: Value) -> Vec<Value> {
    let files = chart("render", &values).unwrap_or_else(|e| panic!("render failed: {e}"));
    let mut objects = Vec::new();
    for (path, text) in files.as_object().unwrap() {
        if path.ends_with("NOTES.txt") {
            continue;
        }
        for document in serde_yaml::Deserializer::from_str(text.as_str().unwrap()) {
            let value = Value::deserialize(document).unwrap();
            if !value.is_null() {
                objects.push(value);
            }
        }
    }
    objects
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn operator_container(objects: &[Value]) -> Value {
    let deployments = of_kind(objects, "Deployment");
    assert_eq!(deployments.len(), 1);
    deployments[0]["spec"]["template"]["spec"]["containers"][0].clone()
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn lint_is_clean_in_strict_mode() {
    let report = chart("lint", &json!({})).unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    let serious: Vec<_> = report["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_i64().unwrap() >= 2)
        .collect();
    assert!(serious.is_empty(), "{serious:?}");
}

#[test]
fn defaults_render_a_hardened_operator_with_leader_election() {
    let objects = render(json!({}));
    let version = env!("CARGO_PKG_VERSION");
    let container = operator_container(&objects);
    assert_eq!(
        container["image"],
        format!("ghcr.io/cellmesh/operator:{version}")
    );
    let args = args(&container);
    assert!(args.contains(&"--leader-election".to_owned()), "{args:?}");
    assert!(
        args.contains(&format!("--cell-image=ghcr.io/cellmesh/cell:{version}")),
        "{args:?}"
    );
    assert!(
        args.iter().all(|a| !a.starts_with("--namespace")),
        "{args:?}"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    let pod = &of_kind(&objects, "Deployment")[0]["spec"]["template"];
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(of_kind(&objects, "ClusterRole").len(), 1);
    assert_eq!(of_kind(&objects, "ClusterRoleBinding").len(), 1);
    assert_eq!(
        of_kind(&objects, "Role").len(),
        1,
        "the leader-election Role"
    );
    assert!(
        of_kind(&objects, "ConfigMap").is_empty(),
        "no dashboards by default"
    );
    assert!(of_kind(&objects, "ServiceMonitor").is_empty());
}

#[test]
fn rbac_grants_resize_and_nothing_broad() {
    let objects = render(json!({}));
    let role = of_kind(&objects, "ClusterRole")[0];
    let rules = role["rules"].as_array().unwrap();
    let grants = |resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == resource)
                && r["verbs"].as_array().unwrap().iter().any(|x| x == verb)
        })
    };
    assert!(grants("pods/resize", "patch"));
    assert!(grants("scalingpolicies/status", "patch"));
    assert!(grants("deployments", "patch"));
    assert!(
        !grants("pods", "patch"),
        "pods are only resized, never patched"
    );
    assert!(
        !grants("secrets", "get"),
        "the operator never reads Secrets"
    );
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                rule[field].as_array().unwrap().iter().all(|x| x != "*"),
                "wildcard in {rule}"
            );
        }
    }
}

#[test]
fn crds_are_the_generated_ones_and_kept_on_uninstall() {
    let objects = render(json!({}));
    let crds = of_kind(&objects, "CustomResourceDefinition");
    let generated: Vec<_> = std::fs::read_dir(workspace().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert_eq!(crds.len(), generated.len());
    assert!(crds.len() >= 4);
    for path in generated {
        let mut want: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = want["metadata"]["name"].clone();
        let got = crds
            .iter()
            .find(|c| c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} not rendered"));
        assert_eq!(
            got["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}"
        );
        want["metadata"]["annotations"] = got["metadata"]["annotations"].clone();
        want["metadata"]["labels"] = got["metadata"]["labels"].clone();
        // Helm's fromYaml/toYaml round trip writes 0.0 as 0: compare numbers by value.
        let (got, want) = (
            numbers_as_floats(got["spec"].clone()),
            numbers_as_floats(want["spec"].clone()),
        );
        assert!(
            got == want,
            "{name} differs from {} at {}",
            path.display(),
            first_difference(&got, &want, "spec").unwrap_or_default()
        );
    }
}

/// Where two JSON values first differ, as a path with both sides.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).find_map(|k| {
            first_difference(
                x.get(k).unwrap_or(&Value::Null),
                y.get(k).unwrap_or(&Value::Null),
                &format!("{path}.{k}"),
            )
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

fn numbers_as_floats(value: Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, numbers_as_floats(v)))
                .collect(),
        ),
        other => other,
    }
}

#[test]
fn non_default_values_change_what_they_say() {
    let objects = render(json!({
        "crds": {"install": false},
        "operator": {
            "replicas": 2,
            "watchNamespace": "team-a",
            "prometheusUrl": "http://prometheus.monitoring:9090",
            "image": {"repository": "registry.example/cellmesh-operator", "tag": "dev"}
        },
        "dashboards": {"enabled": true}
    }));
    assert!(of_kind(&objects, "CustomResourceDefinition").is_empty());
    let deployment = of_kind(&objects, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = operator_container(&objects);
    assert_eq!(container["image"], "registry.example/cellmesh-operator:dev");
    let args = args(&container);
    assert!(args.contains(&"--namespace=team-a".to_owned()), "{args:?}");
    assert!(
        args.contains(&"--prometheus-url=http://prometheus.monitoring:9090".to_owned()),
        "{args:?}"
    );
    // Watching one namespace needs only a Role there, no cluster-wide grant.
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    let roles = of_kind(&objects, "Role");
    assert!(roles.iter().any(|r| r["metadata"]["namespace"] == "team-a"));
    let dashboards = of_kind(&objects, "ConfigMap");
    assert_eq!(dashboards.len(), 4);
    for dashboard in dashboards {
        assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
        let (_, text) = dashboard["data"]
            .as_object()
            .unwrap()
            .iter()
            .next()
            .unwrap();
        let json: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
        assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()));
    }
}

#[test]
fn bad_values_are_rejected_naming_the_field() {
    let err = chart("render", &json!({"operator": {"replicas": "two"}})).unwrap_err();
    assert!(err.contains("replicas"), "{err}");
    let err = chart("render", &json!({"operatr": {}})).unwrap_err();
    assert!(err.contains("operatr"), "{err}");
    let err = chart("render", &json!({"operator": {"logFormat": "xml"}})).unwrap_err();
    assert!(err.contains("logFormat"), "{err}");
    let err = chart(
        "render",
        &json!({"operator": {"prometheusUrl": "prometheus:9090"}}),
    )
    .unwrap_err();
    assert!(err.contains("prometheusUrl"), "{err}");
    let err = chart(
        "render",
        &json!({"metrics": {"serviceMonitor": {"enabled": true}}}),
    )
    .unwrap_err();
    assert!(err.contains("ServiceMonitor CRD"), "{err}");
}

#[test]
fn chart_versions_follow_the_cargo_version() {
    let text = std::fs::read_to_string(workspace().join("charts/cellmesh/Chart.yaml")).unwrap();
    let chart: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

/// The rules of every document of `kind` in `operator/rbac/operator.yaml`, the file the
/// operator's end-to-end tests (and `cellmesh-local up`) run the operator with.
fn tested_rules(kind: &str) -> Value {
    let text = std::fs::read_to_string(workspace().join("operator/rbac/operator.yaml")).unwrap();
    let documents: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(
        documents.len(),
        1,
        "one {kind} in operator/rbac/operator.yaml"
    );
    documents[0]["rules"].clone()
}

#[test]
fn chart_rbac_equals_the_rbac_the_operator_is_tested_with() {
    // Rule for rule, in order: the e2e tests prove these rules are enough (a missing one
    // fails them) and every rule is commented with its use in both files, so a grant added
    // to one must be added to the other.
    let objects = render(json!({}));
    let cluster_role = of_kind(&objects, "ClusterRole")[0];
    assert_eq!(
        cluster_role["rules"],
        tested_rules("ClusterRole"),
        "charts/cellmesh/templates/rbac.yaml's ClusterRole differs from operator/rbac/operator.yaml"
    );
    let lease_role = of_kind(&objects, "Role")[0];
    assert_eq!(
        lease_role["rules"],
        tested_rules("Role"),
        "the chart's leader-election Role differs from operator/rbac/operator.yaml"
    );
    // Watching one namespace grants the same rules, in a Role there.
    let objects = render(json!({"operator": {"watchNamespace": "team-a"}}));
    let namespaced = of_kind(&objects, "Role")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == "team-a")
        .unwrap();
    assert_eq!(namespaced["rules"], tested_rules("ClusterRole"));
}
