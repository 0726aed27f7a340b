//! End to end: two operator replicas with leader election. Only the Lease holder reconciles;
//! killing it (SIGKILL, in the middle of applying a large WorkModel) hands the Lease to the
//! standby, which converges the WorkModel with nothing duplicated or missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Cluster, SYSTEM_NS, eventually};

const NS: &str = "demo";
const WAIT: Duration = Duration::from_secs(60);
const SERVICES: usize = 60;

fn holder(cluster: &Cluster) -> String {
    let out = cluster.kubectl_output(
        &[
            "get",
            "lease",
            "cellmesh-operator",
            "-n",
            SYSTEM_NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn big_workmodel() -> String {
    let mut yaml = String::from(
        "apiVersion: cellmesh.io/v1alpha1\nkind: WorkModel\nmetadata:\n  name: big\nspec:\n  services:\n",
    );
    for i in 0..SERVICES {
        yaml.push_str(&format!(
            "    s{i}:\n      internalService:\n        computePi: {{rangeComplexity: [1, 2]}}\n"
        ));
        if i + 1 < SERVICES {
            yaml.push_str(&format!(
                "      externalServices:\n        - services: [s{}]\n",
                i + 1
            ));
        }
    }
    yaml
}

fn reconciles(operator: &common::Operator) -> u64 {
    let (_, metrics) = operator.http_get("/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with("cellmesh_operator_reconciles_total{controller=\"workmodel\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn one_leader_acts_and_the_standby_takes_over_mid_reconcile() {
    let cluster = Cluster::start();
    cluster.kubectl(&["create", "namespace", NS]);
    let election = [
        "--leader-election",
        "--lease-duration",
        "4",
        "--lease-grace",
        "1",
    ];
    let mut a = cluster.operator("op-a", &election);
    eventually("op-a to hold the Lease", WAIT, || {
        (holder(&cluster) == "op-a").then_some(())
    });
    let b = cluster.operator("op-b", &election);
    eventually("op-b to stand by, ready", WAIT, || {
        (b.http_get("/readyz").0 == 200).then_some(())
    });
    assert!(
        b.http_get("/metrics")
            .1
            .contains("cellmesh_operator_leader 0")
    );
    assert!(
        a.http_get("/metrics")
            .1
            .contains("cellmesh_operator_leader 1")
    );

    // Kill the leader as soon as it has started applying the WorkModel.
    cluster.apply(NS, &big_workmodel());
    let selector = "cellmesh.io/workmodel=big";
    eventually("op-a to start applying", WAIT, || {
        (!cluster.names(NS, "deployments", selector).is_empty()
            || !cluster.names(NS, "services", selector).is_empty())
        .then_some(())
    });
    assert_eq!(reconciles(&b), 0, "the standby must not reconcile");
    a.kill();

    eventually("op-b to take the Lease", WAIT, || {
        (holder(&cluster) == "op-b").then_some(())
    });
    let mut expected: Vec<String> = (0..SERVICES).map(|i| format!("s{i}")).collect();
    expected.sort();
    eventually("op-b to converge the WorkModel", WAIT, || {
        (cluster.names(NS, "deployments", selector) == expected
            && cluster.names(NS, "services", selector) == expected)
            .then_some(())
    });
    assert_eq!(cluster.names(NS, "configmaps", selector), ["big-workmodel"]);
    let wm = eventually("the status of every service", WAIT, || {
        let wm = cluster.get(NS, "workmodel/big")?;
        (wm["status"]["services"].as_object().map(|s| s.len()) == Some(SERVICES)).then_some(wm)
    });
    assert_eq!(wm["status"]["servicesReady"], format!("0/{SERVICES}"));
    assert!(reconciles(&b) > 0);
    // Everything was written by the one field manager, and each object has one owner.
    let deployments: serde_json::Value = serde_json::from_str(&cluster.kubectl(&[
        "get",
        "deployments",
        "-n",
        NS,
        "-l",
        selector,
        "-o",
        "json",
    ]))
    .unwrap();
    for d in deployments["items"].as_array().unwrap() {
        assert_eq!(
            d["metadata"]["ownerReferences"].as_array().unwrap().len(),
            1
        );
    }
}
