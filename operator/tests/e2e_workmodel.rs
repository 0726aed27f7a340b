//! End to end: the operator as a real process, with exactly the RBAC of
//! `operator/rbac/operator.yaml`, against `cellmesh-local apiserver`, driven by kubectl.
//! There is no Deployment controller or node here, so the test reports Deployments rolled
//! out by patching their status, as the Deployment controller would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, condition, eventually, example};
use serde_json::Value;

const NS: &str = "demo";
const WAIT: Duration = Duration::from_secs(60);

fn workmodel(cluster: &Cluster, name: &str) -> Value {
    cluster.get(NS, &format!("workmodel/{name}")).unwrap()
}

fn is_true(object: &Value, type_: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == "True")
}

#[test]
fn a_workmodel_is_applied_rolled_out_changed_reprofiled_and_shrunk() {
    let cluster = Cluster::start();
    cluster.kubectl(&["create", "namespace", NS]);
    let operator = cluster.operator("solo", &[]);
    cluster.apply(NS, &example("profiles/fast.yaml"));
    cluster.apply(NS, &example("workmodels/chain.yaml"));
    let wm = workmodel(&cluster, "chain");
    let uid = wm["metadata"]["uid"].as_str().unwrap().to_owned();

    // Every object exists, labelled and owned by the WorkModel as its controller.
    let selector = "cellmesh.io/workmodel=chain";
    eventually("the chain's Deployments", WAIT, || {
        (cluster.names(NS, "deployments", selector) == ["cart", "db", "frontend"]).then_some(())
    });
    assert_eq!(
        cluster.names(NS, "services", selector),
        ["cart", "chain-gateway", "db", "frontend"]
    );
    assert_eq!(
        cluster.names(NS, "configmaps", selector),
        ["chain-workmodel"]
    );
    for object in [
        "deployment/frontend",
        "deployment/db",
        "service/cart",
        "service/chain-gateway",
        "configmap/chain-workmodel",
    ] {
        let o = cluster.get(NS, object).unwrap();
        let owners = o["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 1, "{object}");
        assert_eq!(owners[0]["uid"], uid.as_str(), "{object}");
        assert_eq!(owners[0]["kind"], "WorkModel", "{object}");
        assert_eq!(owners[0]["controller"], true, "{object}");
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/managed-by"], "cellmesh-operator",
            "{object}"
        );
        let managers: Vec<&str> = o["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["manager"].as_str().unwrap())
            .collect();
        assert_eq!(
            managers,
            ["cellmesh-operator"],
            "{object}: one field manager"
        );
    }
    let db = cluster.get(NS, "deployment/db").unwrap();
    assert_eq!(db["spec"]["replicas"], 2);
    let container = &db["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--service=db"), "{args:?}");
    assert!(
        args.contains(&"--profile=/etc/cellmesh/profile-fast.yaml"),
        "{args:?}"
    );
    assert_eq!(container["resources"]["limits"]["cpu"], "500m");
    assert_eq!(container["resizePolicy"][0]["restartPolicy"], "NotRequired");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(
        cluster.get(NS, "service/cart").unwrap()["spec"]["ports"][0]["name"],
        "grpc"
    );

    // Progressing until the Deployments report ready, then Ready.
    let wm = eventually("Progressing", WAIT, || {
        let wm = workmodel(&cluster, "chain");
        is_true(&wm, "Progressing").then_some(wm)
    });
    assert!(!is_true(&wm, "Ready"));
    assert_eq!(condition(&wm, "Degraded").unwrap()["status"], "False");
    cluster.fake_rollout(NS, selector);
    let wm = eventually("Ready", WAIT, || {
        let wm = workmodel(&cluster, "chain");
        is_true(&wm, "Ready").then_some(wm)
    });
    assert!(!is_true(&wm, "Progressing"));
    assert_eq!(wm["status"]["servicesReady"], "3/3");
    assert_eq!(
        wm["status"]["observedGeneration"],
        wm["metadata"]["generation"]
    );
    assert_eq!(wm["status"]["services"]["db"]["readyReplicas"], 2);
    assert_eq!(
        wm["status"]["services"]["frontend"]["endpoint"],
        "http://frontend.demo.svc:80/api/v1"
    );
    assert_eq!(
        wm["status"]["services"]["cart"]["endpoint"],
        "grpc://cart.demo.svc:51313"
    );

    // Events name what was created.
    let reasons = cluster.kubectl(&[
        "get",
        "events.v1.events.k8s.io",
        "-n",
        NS,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(reasons.contains("Created"), "{reasons}");

    // A Profile change reaches the ConfigMap and leaves every pod template alone.
    let templates = |cluster: &Cluster| {
        ["cart", "db", "frontend"].map(|d| {
            let d = cluster.get(NS, &format!("deployment/{d}")).unwrap();
            (
                d["metadata"]["generation"].clone(),
                d["spec"]["template"].clone(),
            )
        })
    };
    let before = templates(&cluster);
    cluster.kubectl(&[
        "patch",
        "profile",
        "fast",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"queueLimit":7}}"#,
    ]);
    eventually("the profile in the ConfigMap", WAIT, || {
        let cm = cluster.get(NS, "configmap/chain-workmodel").unwrap();
        cm["data"]["profile-fast.yaml"]
            .as_str()
            .unwrap()
            .contains("queueLimit: 7")
            .then_some(())
    });
    assert_eq!(
        templates(&cluster),
        before,
        "a Profile change must not roll pods"
    );

    // Change services: db scales, cart becomes REST (its Service port and its caller's pods
    // change), frontend gets more CPU.
    let changed = example("workmodels/chain.yaml")
        .replace("      replicas: 2\n", "      replicas: 3\n")
        .replace("      requestMethod: grpc\n", "      requestMethod: rest\n");
    cluster.apply(NS, &changed);
    eventually("the change to converge", WAIT, || {
        let db = cluster.get(NS, "deployment/db").unwrap();
        let cart = cluster.get(NS, "service/cart").unwrap();
        (db["spec"]["replicas"] == 3 && cart["spec"]["ports"][0]["name"] == "http").then_some(())
    });
    let after = templates(&cluster);
    assert_ne!(
        after[0].1, before[0].1,
        "cart's protocol changed: its pods roll"
    );
    assert_ne!(
        after[2].1, before[2].1,
        "frontend calls cart: its pods roll"
    );
    assert_eq!(after[1].1, before[1].1, "db only scaled: no roll");
    let wm = eventually("Progressing after the change", WAIT, || {
        let wm = workmodel(&cluster, "chain");
        (is_true(&wm, "Progressing")
            && wm["status"]["observedGeneration"] == wm["metadata"]["generation"])
            .then_some(wm)
    });
    assert!(!is_true(&wm, "Ready"));

    // Remove db (and cart's calls to it): db's Deployment and Service are deleted.
    let shrunk = example("workmodels/chain.yaml");
    let shrunk = shrunk.split("    db:\n").next().unwrap().replace(
        "      externalServices:\n        - seqLen: 1\n          services: [db]\n          probabilities: {db: 0.5}\n",
        "",
    );
    // Server-side apply by the same manager: the `db` entry it stops sending is removed.
    cluster.apply(NS, &shrunk);
    eventually("db's objects to be deleted", WAIT, || {
        (cluster.names(NS, "deployments", selector) == ["cart", "frontend"]
            && cluster.names(NS, "services", selector) == ["cart", "chain-gateway", "frontend"])
        .then_some(())
    });
    eventually("db to leave the status", WAIT, || {
        let wm = workmodel(&cluster, "chain");
        let services_ready = wm["status"]["servicesReady"].as_str().unwrap_or_default();
        (wm["status"]["services"].get("db").is_none() && services_ready.ends_with("/2"))
            .then_some(())
    });
    let reasons = cluster.kubectl(&[
        "get",
        "events.v1.events.k8s.io",
        "-n",
        NS,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(reasons.contains("Deleted"), "{reasons}");

    // The operator counted its reconciles per controller.
    let (code, metrics) = operator.http_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cellmesh_operator_reconciles_total{controller=\"workmodel\"}"),
        "{metrics}"
    );
    assert_eq!(operator.http_get("/readyz").0, 200);
}
