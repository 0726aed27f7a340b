//! Every YAML example under `examples/` is a valid resource, by every judge it will meet:
//! the Rust types (what the operator reads), the CRD's CEL rules evaluated client-side, the
//! operator's own deeper checks, and the API server's write path (`CrdSchema::admit` of
//! cellmesh-apimachinery with the generated CRD: pruning, defaulting, OpenAPI validation,
//! CEL). A few invalid resources then show the API server's rejection messages.

// Helpers of this test crate may unwrap like the tests they serve.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cellmesh_api::crd::{App, Profile, ScalingPolicy, WorkModel};
use cellmesh_api::profile::ProfileSpec;
use cellmesh_api::service;
use cellmesh_apimachinery::schema::CrdSchema;
use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::{Value, json};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
}

/// The API server's view of one kind: its CRD schema.
fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> CrdSchema {
    let props = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap();
    CrdSchema::from_props(props).unwrap()
}

fn schemas() -> BTreeMap<&'static str, CrdSchema> {
    BTreeMap::from([
        ("WorkModel", schema_of(&WorkModel::crd())),
        ("App", schema_of(&App::crd())),
        ("Profile", schema_of(&Profile::crd())),
        ("ScalingPolicy", schema_of(&ScalingPolicy::crd())),
    ])
}

/// Admits `object` as the API server would on create; returns its messages and the fields
/// pruning would have dropped (unknown keys: typos in an example).
fn admit(schemas: &BTreeMap<&str, CrdSchema>, object: &Value) -> (Vec<String>, Vec<String>) {
    let kind = object["kind"].as_str().unwrap();
    let schema = &schemas[kind];
    let pruned = schema.prune(&mut object.clone());
    let errors = schema.admit(&mut object.clone(), None);
    (errors.iter().map(ToString::to_string).collect(), pruned)
}

/// Checks one resource document with the Rust types, CEL and the operator's checks.
fn check_typed(kind: &str, doc: &Value) -> Result<(), String> {
    let cel = |r: Result<(), kube::core::cel::ValidationErrors>| r.map_err(|e| e.to_string());
    match kind {
        "WorkModel" => {
            let wm: WorkModel = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
            cel(wm.validate_cel())?;
            service::validate(&wm.spec.cell_services()).map_err(|e| e.to_string())
        }
        "App" => {
            let app: App = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
            cel(app.validate_cel())?;
            app.spec.pipeline.validate().map_err(|e| format!("{e:?}"))
        }
        "Profile" => {
            let profile: Profile =
                serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
            cel(profile.validate_cel())?;
            profile.spec.validate().map_err(|e| e.to_string())
        }
        "ScalingPolicy" => {
            let sp: ScalingPolicy =
                serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
            cel(sp.validate_cel())
        }
        other => Err(format!("unknown kind {other}")),
    }
}

#[test]
fn every_example_is_accepted_by_the_types_cel_the_operator_and_the_api_server() {
    let schemas = schemas();
    let mut files = Vec::new();
    yaml_files(&examples_dir(), &mut files);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let shown = path
            .strip_prefix(examples_dir())
            .unwrap()
            .display()
            .to_string();
        for (index, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc = Value::deserialize(de).unwrap_or_else(|e| panic!("{shown}: {e}"));
            if doc.is_null() {
                continue;
            }
            let at = format!("{shown}#{index}");
            // A bare profile document (the cell's `--profile` file) is a Profile's spec.
            let doc = match doc.get("kind").and_then(Value::as_str) {
                Some(_) => doc,
                None if shown.starts_with("profiles/") => {
                    let text = serde_yaml::to_string(&doc).unwrap();
                    if let Err(e) = ProfileSpec::from_yaml(&text) {
                        failures.push(format!("{at}: {e}"));
                    }
                    let name = path.file_stem().unwrap().to_string_lossy();
                    json!({"apiVersion": "cellmesh.io/v1alpha1", "kind": "Profile",
                           "metadata": {"name": name}, "spec": doc})
                }
                None => {
                    failures.push(format!("{at}: no kind"));
                    continue;
                }
            };
            let kind = doc["kind"].as_str().unwrap().to_owned();
            assert_eq!(doc["apiVersion"], "cellmesh.io/v1alpha1", "{at}");
            if let Err(e) = check_typed(&kind, &doc) {
                failures.push(format!("{at}: {e}"));
            }
            let (errors, pruned) = admit(&schemas, &doc);
            if !errors.is_empty() {
                failures.push(format!("{at}: API server rejects it: {errors:?}"));
            }
            if !pruned.is_empty() {
                failures.push(format!("{at}: unknown fields {pruned:?}"));
            }
            *seen.entry(kind).or_default() += 1;
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Deleting examples must not pass silently.
    for (kind, at_least) in [
        ("WorkModel", 4),
        ("App", 1),
        ("Profile", 2),
        ("ScalingPolicy", 2),
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= at_least,
            "expected at least {at_least} {kind} examples, saw {seen:?}"
        );
    }
}

fn workmodel(services: Value) -> Value {
    json!({"apiVersion": "cellmesh.io/v1alpha1", "kind": "WorkModel",
           "metadata": {"name": "bad"}, "spec": {"services": services}})
}

fn pi() -> Value {
    json!({"computePi": {}})
}

fn rejected(object: Value) -> Vec<String> {
    let (errors, _) = admit(&schemas(), &object);
    assert!(!errors.is_empty(), "accepted: {object}");
    errors
}

#[test]
fn the_api_server_rejects_invalid_workmodels_with_clear_messages() {
    assert_eq!(
        rejected(workmodel(json!({
            "s0": {"internalService": pi(), "externalServices": [{"services": ["s9"]}]}
        }))),
        [
            "spec.services: Invalid value: \"object\": every service named in externalServices \
          must be a service of spec.services"
        ]
    );
    assert_eq!(
        rejected(workmodel(json!({
            "s0": {"internalService": pi(), "externalServices": [{"services": ["s0"]}]}
        }))),
        [
            "spec.services: Invalid value: \"object\": a service must not call itself in its \
          externalServices"
        ]
    );
    assert_eq!(
        rejected(workmodel(json!({
            "s0": {"internalService": pi(),
                   "externalServices": [{"seqLen": 0, "services": ["s1"], "probabilities": {"s1": 1.5}}]},
            "s1": {"internalService": pi()}
        }))),
        [
            "spec.services.s0.externalServices[0].probabilities.s1: Invalid value: 1.5: \
             spec.services.s0.externalServices[0].probabilities.s1 in body should be less than \
             or equal to 1",
            "spec.services.s0.externalServices[0].seqLen: Invalid value: 0: \
             spec.services.s0.externalServices[0].seqLen in body should be greater than or \
             equal to 1"
        ]
    );
    let messages = rejected(workmodel(json!({})));
    assert!(
        messages.len() == 1
            && messages[0].starts_with("spec.services: ")
            && messages[0].contains("should have at least 1 properties"),
        "{messages:?}"
    );
    assert_eq!(
        rejected(workmodel(json!({"s0": {"internalService": {}}}))),
        [
            "spec.services.s0: Invalid value: \"object\": internalService needs exactly one \
          function: computePi or loader"
        ]
    );
}

#[test]
fn the_api_server_rejects_invalid_apps_profiles_and_policies() {
    let app = json!({"apiVersion": "cellmesh.io/v1alpha1", "kind": "App", "metadata": {"name": "a"},
                     "spec": {"replicas": -1, "pipeline": {"function": "echo", "exec": {"command": ["x"]}}}});
    let messages = rejected(app);
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("spec.replicas: Invalid value: -1")),
        "{messages:?}"
    );
    let app = json!({"apiVersion": "cellmesh.io/v1alpha1", "kind": "App", "metadata": {"name": "a"},
                     "spec": {"pipeline": {"function": "echo", "exec": {"command": ["x"]}}}});
    assert_eq!(
        rejected(app),
        [
            "spec.pipeline: Invalid value: \"object\": a stage needs exactly one of function, \
          exec, sequential, ensemble or switch"
        ]
    );
    let profile = json!({"apiVersion": "cellmesh.io/v1alpha1", "kind": "Profile",
                         "metadata": {"name": "p"}, "spec": {"poolMin": 9, "poolLimit": 4}});
    assert_eq!(
        rejected(profile),
        ["spec: Invalid value: \"object\": poolMin must not exceed poolLimit"]
    );
    let policy = |cpu: Value| {
        json!({"apiVersion": "cellmesh.io/v1alpha1", "kind": "ScalingPolicy",
               "metadata": {"name": "sp"},
               "spec": {"targetRef": {"kind": "App", "name": "a"}, "cpu": cpu}})
    };
    assert_eq!(
        rejected(policy(json!({"min": "3", "max": "2"}))),
        ["spec.cpu: Invalid value: \"object\": min must not exceed max"]
    );
    assert_eq!(
        rejected(policy(
            json!({"min": "1", "max": "2", "eventTimeout": "40s"})
        )),
        [
            "spec: Invalid value: \"object\": cpu.eventTimeout must be at least max(upEvents, \
          downEvents) × window, or the events a rescale needs can never be collected"
        ]
    );
    let messages = rejected(policy(json!({"min": "1", "max": "2", "upper": 1.5})));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("spec.cpu.upper in body should be less than or equal to 1")),
        "{messages:?}"
    );
}

#[test]
fn server_side_defaults_match_the_rust_defaults() {
    // What the API server stores for a minimal policy is what the operator would assume.
    let schemas = schemas();
    let mut object = json!({"apiVersion": "cellmesh.io/v1alpha1", "kind": "ScalingPolicy",
                            "metadata": {"name": "sp"},
                            "spec": {"targetRef": {"kind": "App", "name": "a"},
                                     "cpu": {"min": "100m", "max": "1"}}});
    assert!(schemas["ScalingPolicy"].admit(&mut object, None).is_empty());
    let stored: ScalingPolicy = serde_json::from_value(object.clone()).unwrap();
    let typed: ScalingPolicy = serde_json::from_value(json!({
        "apiVersion": "cellmesh.io/v1alpha1", "kind": "ScalingPolicy",
        "metadata": {"name": "sp"},
        "spec": {"targetRef": {"kind": "App", "name": "a"}, "cpu": {"min": "100m", "max": "1"}}
    }))
    .unwrap();
    assert_eq!(stored.spec, typed.spec);
    assert_eq!(object["spec"]["mode"], "InPlace");
    assert_eq!(object["spec"]["window"], "15s");
    assert_eq!(object["spec"]["cpu"]["upEvents"], 2);
}
