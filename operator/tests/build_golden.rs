//! The build step against golden files: the examples' WorkModel and App, with their
//! Profiles, build exactly the objects in `tests/fixtures/*.objects.yaml`.
//!
//! After an intended change, regenerate with
//! `UPDATE_GOLDEN=1 cargo nextest run -p cellmesh-operator --test build_golden` and review
//! the diff like code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cellmesh_api::crd::{App, WorkModel};
use cellmesh_api::profile::ProfileSpec;
use cellmesh_operator::build::{self, Desired, Settings};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A stored object: the example plus what the API server adds (namespace, uid, generation).
fn stored<T: serde::de::DeserializeOwned>(example: &str) -> T {
    let text = std::fs::read_to_string(root().join("examples").join(example)).unwrap();
    let mut doc: Value = serde_yaml::from_str(&text).unwrap();
    doc["metadata"]["namespace"] = "demo".into();
    doc["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001".into();
    doc["metadata"]["generation"] = 1.into();
    serde_json::from_value(doc).unwrap()
}

/// The example Profile `name` (a resource, or a bare spec).
fn profile(name: &str) -> ProfileSpec {
    let text =
        std::fs::read_to_string(root().join(format!("examples/profiles/{name}.yaml"))).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let spec = if doc.get("kind").is_some() {
        doc["spec"].clone()
    } else {
        doc
    };
    serde_json::from_value(spec).unwrap()
}

fn settings() -> Settings {
    Settings {
        cell_image: "ghcr.io/cellmesh/cell:test".to_owned(),
    }
}

fn to_yaml(desired: &Desired) -> String {
    let mut docs = Vec::new();
    for cm in &desired.config_maps {
        docs.push(with_kind(cm, "v1", "ConfigMap"));
    }
    for svc in &desired.services {
        docs.push(with_kind(svc, "v1", "Service"));
    }
    for dep in &desired.deployments {
        docs.push(with_kind(dep, "apps/v1", "Deployment"));
    }
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn with_kind<T: serde::Serialize>(object: &T, api_version: &str, kind: &str) -> Value {
    let mut value = serde_json::to_value(object).unwrap();
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    value
}

fn check_golden(name: &str, actual: &str) {
    let path = root().join("operator/tests/fixtures").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from the build at line {}:\n  expected: {:?}\n  actual:   {:?}\n\
             (UPDATE_GOLDEN=1 rewrites it after an intended change)",
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

#[test]
fn the_chain_workmodel_builds_its_golden_objects() {
    let wm: WorkModel = stored("workmodels/chain.yaml");
    let profiles = BTreeMap::from([("fast".to_owned(), profile("fast"))]);
    let desired =
        build::workmodel::build(&wm, &profiles, &settings(), &Default::default()).unwrap();
    assert_eq!(desired.deployments.len(), 3);
    assert_eq!(desired.services.len(), 4, "three services and the gateway");
    check_golden("chain.objects.yaml", &to_yaml(&desired));
}

#[test]
fn the_teastore_workmodel_builds_its_golden_objects() {
    let wm: WorkModel = stored("workmodels/mubench-teastore-emulation.yaml");
    let desired =
        build::workmodel::build(&wm, &BTreeMap::new(), &settings(), &Default::default()).unwrap();
    assert_eq!(desired.deployments.len(), wm.spec.services.len());
    check_golden("teastore.objects.yaml", &to_yaml(&desired));
}

#[test]
fn the_scorer_app_builds_its_golden_objects() {
    let app: App = stored("apps/scorer.yaml");
    let batch = profile("batch");
    let desired = build::app::build(&app, Some(&batch), &settings(), &Default::default()).unwrap();
    check_golden("scorer.objects.yaml", &to_yaml(&desired));
}
