//! End to end: what the API server refuses (CEL, with its message through kubectl), what the
//! operator refuses (a call cycle, a missing Profile: `Degraded` naming it, a Warning Event,
//! nothing applied), and recovery when the missing Profile appears.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, condition, eventually};
use serde_json::Value;

const NS: &str = "demo";
const WAIT: Duration = Duration::from_secs(60);

fn mesh(name: &str, services: &str) -> String {
    format!(
        "apiVersion: cellmesh.io/v1alpha1\nkind: WorkModel\nmetadata:\n  name: {name}\nspec:\n  services:\n{services}"
    )
}

fn service(name: &str, calls: &[&str], extra: &str) -> String {
    let mut text = format!(
        "    {name}:\n      internalService:\n        computePi: {{rangeComplexity: [1, 2]}}\n{extra}"
    );
    if !calls.is_empty() {
        text.push_str(&format!(
            "      externalServices:\n        - services: [{}]\n",
            calls.join(", ")
        ));
    }
    text
}

fn degraded(cluster: &Cluster, name: &str) -> Value {
    eventually(&format!("{name} Degraded"), WAIT, || {
        let wm = cluster.get(NS, &format!("workmodel/{name}"))?;
        condition(&wm, "Degraded")
            .filter(|c| c["status"] == "True")
            .cloned()
    })
}

#[test]
fn invalid_workmodels_are_refused_with_reasons_and_nothing_is_applied() {
    let cluster = Cluster::start();
    cluster.kubectl(&["create", "namespace", NS]);
    let _operator = cluster.operator("solo", &[]);

    // The API server refuses an unknown callee with the CEL rule's message.
    let unknown = mesh("typo", &service("a", &["ghost"], ""));
    let out = cluster.kubectl_output(
        &["apply", "--server-side", "-n", NS, "-f", "-"],
        Some(&unknown),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("every service named in externalServices must be a service of spec.services"),
        "{stderr}"
    );

    // A cycle passes admission; the operator names it and applies nothing.
    let cycle = mesh(
        "loop",
        &[
            service("a", &["b"], ""),
            service("b", &["c"], ""),
            service("c", &["a"], ""),
        ]
        .concat(),
    );
    cluster.apply(NS, &cycle);
    let condition = degraded(&cluster, "loop");
    assert_eq!(condition["reason"], "CallCycle");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("a → b → c → a"),
        "{condition}"
    );
    let wm = cluster.get(NS, "workmodel/loop").unwrap();
    assert_eq!(common::condition(&wm, "Ready").unwrap()["status"], "False");
    assert_eq!(
        wm["status"]["observedGeneration"],
        wm["metadata"]["generation"]
    );
    assert!(
        cluster
            .names(NS, "deployments", "cellmesh.io/workmodel=loop")
            .is_empty()
    );
    assert!(
        cluster
            .names(NS, "configmaps", "cellmesh.io/workmodel=loop")
            .is_empty()
    );
    let warnings = cluster.kubectl(&[
        "get",
        "events.v1.events.k8s.io",
        "-n",
        NS,
        "-o",
        "jsonpath={range .items[*]}{.type}/{.reason}{\"\\n\"}{end}",
    ]);
    assert!(warnings.contains("Warning/CallCycle"), "{warnings}");

    // A missing Profile: Degraded naming it; creating the Profile heals the WorkModel
    // (the controller watches Profiles and maps them to the WorkModels that use them).
    let needs_profile = mesh("late", &service("solo", &[], "      profileRef: later\n"));
    cluster.apply(NS, &needs_profile);
    let condition = degraded(&cluster, "late");
    assert_eq!(condition["reason"], "ProfileNotFound");
    assert!(
        condition["message"].as_str().unwrap().contains("later"),
        "{condition}"
    );
    assert!(
        cluster
            .names(NS, "deployments", "cellmesh.io/workmodel=late")
            .is_empty()
    );
    cluster.apply(
        NS,
        "apiVersion: cellmesh.io/v1alpha1\nkind: Profile\nmetadata:\n  name: later\nspec:\n  queueLimit: 9\n",
    );
    eventually(
        "the WorkModel to apply once its Profile exists",
        WAIT,
        || {
            (cluster.names(NS, "deployments", "cellmesh.io/workmodel=late") == ["solo"])
                .then_some(())
        },
    );
    let wm = eventually("Degraded to clear", WAIT, || {
        let wm = cluster.get(NS, "workmodel/late")?;
        common::condition(&wm, "Degraded")
            .is_some_and(|c| c["status"] == "False")
            .then_some(wm)
    });
    assert_eq!(
        common::condition(&wm, "Progressing").unwrap()["status"],
        "True"
    );
    let profile = cluster.get(NS, "profile/later").unwrap();
    assert_eq!(
        common::condition(&profile, "Ready").unwrap()["status"],
        "True"
    );

    // Fixing the cycle applies the mesh.
    let fixed = mesh(
        "loop",
        &[
            service("a", &["b"], ""),
            service("b", &["c"], ""),
            service("c", &[], ""),
        ]
        .concat(),
    );
    cluster.kubectl_stdin(&["replace", "-n", NS, "-f", "-"], Some(&fixed));
    eventually("the fixed mesh", WAIT, || {
        (cluster.names(NS, "deployments", "cellmesh.io/workmodel=loop") == ["a", "b", "c"])
            .then_some(())
    });
}

#[test]
fn an_app_becomes_a_deployment_service_and_configmap() {
    let cluster = Cluster::start();
    cluster.kubectl(&["create", "namespace", NS]);
    let _operator = cluster.operator("solo", &["--namespace", NS]);
    cluster.apply(NS, &common::example("profiles/batch.yaml"));
    cluster.apply(NS, &common::example("apps/scorer.yaml"));
    let selector = "cellmesh.io/app=scorer";
    eventually("the App's objects", WAIT, || {
        (cluster.names(NS, "deployments", selector) == ["scorer"]
            && cluster.names(NS, "services", selector) == ["scorer"]
            && cluster.names(NS, "configmaps", selector) == ["scorer-app"])
        .then_some(())
    });
    let app = cluster.get(NS, "app/scorer").unwrap();
    let uid = app["metadata"]["uid"].as_str().unwrap();
    let deployment = cluster.get(NS, "deployment/scorer").unwrap();
    assert_eq!(deployment["metadata"]["ownerReferences"][0]["uid"], uid);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let cm = cluster.get(NS, "configmap/scorer-app").unwrap();
    assert!(
        cm["data"]["app.yaml"]
            .as_str()
            .unwrap()
            .contains("ensemble")
    );
    assert!(cm["data"]["profile-batch.yaml"].is_string());

    cluster.fake_rollout(NS, selector);
    let app = eventually("the App Ready", WAIT, || {
        let app = cluster.get(NS, "app/scorer")?;
        common::condition(&app, "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(app)
    });
    assert_eq!(app["status"]["readyReplicas"], 2);
    assert_eq!(app["status"]["endpoint"], "http://scorer.demo.svc:80/");

    // `kubectl scale` through the App's scale subresource reaches the Deployment.
    cluster.kubectl(&["scale", "app/scorer", "-n", NS, "--replicas=3"]);
    eventually("the Deployment scaled", WAIT, || {
        let d = cluster.get(NS, "deployment/scorer")?;
        (d["spec"]["replicas"] == 3).then_some(())
    });
}
