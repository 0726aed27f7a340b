//! The Helm chart installed for real: `helm install → upgrade → uninstall` of
//! `charts/cellmesh` (through the official Helm Go SDK, the `helm-python-sdk` wheel) into a
//! whole `cellmesh-local up` cluster that enforces RBAC. The chart's operator pod (image
//! `ghcr.io/cellmesh/operator:<appVersion>`, which the node agent runs as the
//! `cellmesh-operator` binary) talks to the API server with the token of the chart's
//! ServiceAccount, so it has exactly the chart's ClusterRole and leader-election Role and
//! nothing else:
//!
//! - it must take the Lease (`leases get/create/patch`), build the chain WorkModel's
//!   Deployments, Services and ConfigMap (`apps/deployments`, `services`, `configmaps`) and
//!   write the WorkModel's status (`workmodels/status patch`) — asserted as `Ready=True`
//!   with every pod running;
//! - it must write the ScalingPolicy's status (`scalingpolicies/status patch`, reading the
//!   policy and the targeted pods) — asserted as `observedGeneration` and conditions;
//!
//! so a rule the chart lacked would leave one of those unwritten and fail the test. After an
//! upgrade with a changed value the new operator pod keeps reconciling the same objects;
//! uninstall removes the operator and keeps the CRDs and the custom resources.
//!
//! The Python interpreter comes from `CELLMESH_TEST_PYTHON` (set by `cargo xtask test|ci`),
//! else `.venv/bin/python` under the workspace root; `cargo xtask setup` creates that venv.

// Test helpers: a panic is the test failing with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::up::{UpCluster, UpOptions};
use common::{condition, repo_root};
use serde_json::{Value, json};

/// The release's namespace; the release is named `cellmesh`, so its objects are too.
const NAMESPACE: &str = "cellmesh-system";
const RELEASE: &str = "cellmesh";
/// Generous: CI runs this beside every other test on 2 cores.
const WAIT: Duration = Duration::from_secs(180);

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("CELLMESH_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv_python = repo_root().join(".venv/bin/python");
    assert!(
        venv_python.is_file(),
        "the Helm tests need the helm-python-sdk venv: run `cargo xtask setup` \
         (it creates {}), or set CELLMESH_TEST_PYTHON to a Python that imports helm_python",
        venv_python.display()
    );
    venv_python
}

/// One release action through the SDK; `{"result": …, "history": […]}`.
fn helm(cluster: &UpCluster, action: &str, values: Option<Value>) -> Value {
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("operator/tests/helm/release.py"))
        .arg(cluster.kubeconfig())
        .arg(NAMESPACE)
        .arg(action)
        .arg(RELEASE)
        .env("HOME", cluster.home())
        .env_remove("KUBERNETES_SERVICE_HOST");
    if let Some(values) = values {
        command
            .arg(repo_root().join("charts/cellmesh"))
            .arg(values.to_string());
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "helm {action} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Polls `check` every half second until it returns Some; panics naming `what` (and the
/// last thing seen) at the deadline.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// `kubectl get ARGS -o json` as the admin, or `None` when kubectl fails (not found).
fn get(cluster: &UpCluster, args: &[&str]) -> Option<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = cluster.kubectl_output(&all, None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Whether this process may run the node agent (it puts pods into cgroups).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn items(list: Option<Value>) -> Vec<Value> {
    list.and_then(|l| l["items"].as_array().cloned())
        .unwrap_or_default()
}

/// The operator pods of the release that run and are ready.
fn ready_operator_pods(cluster: &UpCluster) -> Vec<Value> {
    items(get(
        cluster,
        &[
            "-n",
            NAMESPACE,
            "pods",
            "-l",
            "app.kubernetes.io/name=cellmesh-operator",
        ],
    ))
    .into_iter()
    .filter(|p| {
        p["metadata"]["deletionTimestamp"].is_null()
            && p["status"]["phase"] == "Running"
            && condition(p, "Ready").is_some_and(|c| c["status"] == "True")
    })
    .collect()
}

fn is_true(object: &Value, type_: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == "True")
}

/// Waits until the WorkModel `chain` has observed its current generation and is Ready with
/// every one of its pods running.
fn wait_chain_ready(cluster: &UpCluster, why: &str) -> Value {
    wait_for(&format!("the chain WorkModel Ready ({why})"), || {
        let wm = get(cluster, &["-n", "default", "workmodel", "chain"]).ok_or("no chain")?;
        let current = wm["status"]["observedGeneration"] == wm["metadata"]["generation"];
        if !(current && is_true(&wm, "Ready")) {
            return Err(wm["status"].to_string());
        }
        let pods = items(get(
            cluster,
            &["-n", "default", "pods", "-l", "cellmesh.io/workmodel=chain"],
        ));
        let running = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        // frontend 1 + cart 1 + db 2 (the example's replicas) + nothing else.
        if running < 4 {
            return Err(format!("{running} chain pods running"));
        }
        Ok(wm)
    })
}

/// Waits until the ScalingPolicy `chain` has a status for its current generation.
fn wait_policy_observed(cluster: &UpCluster, why: &str) -> Value {
    wait_for(&format!("the chain ScalingPolicy's status ({why})"), || {
        let sp =
            get(cluster, &["-n", "default", "scalingpolicy", "chain"]).ok_or("no chain policy")?;
        let observed = sp["status"]["observedGeneration"] == sp["metadata"]["generation"];
        let conditions = sp["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty());
        if observed && conditions {
            Ok(sp)
        } else {
            Err(sp["status"].to_string())
        }
    })
}

fn operator_args(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

// About a minute (52 s alone, 80 s beside the operator's other tests, load ~14 on 2 cores):
// a whole cluster, three Helm actions and two operator pods that each must start, take the
// Lease and reconcile; one test, so the cluster is started once.
#[test]
fn install_upgrade_uninstall_the_chart_with_rbac_enforced() {
    if !is_root() {
        eprintln!("SKIPPED: the node agent needs root");
        return;
    }
    // No operator from `up`: the chart's is the only one, so whatever reconciles does so
    // with the chart's permissions. `up` installs the CRDs for its own operator; delete
    // them (no custom resource exists yet) so that the chart's CRDs are the ones in use.
    let cluster = UpCluster::start(&UpOptions {
        operator: false,
        ..UpOptions::default()
    });
    for crd in [
        "workmodels.cellmesh.io",
        "apps.cellmesh.io",
        "profiles.cellmesh.io",
        "scalingpolicies.cellmesh.io",
    ] {
        cluster.kubectl(&["delete", "customresourcedefinition", crd], None);
    }

    // install
    let installed = helm(
        &cluster,
        "install",
        Some(json!({"operator": {"logFormat": "json"}})),
    );
    assert_eq!(installed["result"]["status"], "deployed", "{installed}");
    assert_eq!(installed["result"]["revision"], 1);
    let crd = get(
        &cluster,
        &["customresourcedefinition", "workmodels.cellmesh.io"],
    )
    .expect("the chart installed the WorkModel CRD");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let pods = wait_for("a ready operator pod", || {
        let pods = ready_operator_pods(&cluster);
        if pods.len() == 1 {
            Ok(pods)
        } else {
            Err(format!("{} ready operator pods", pods.len()))
        }
    });
    let pod = &pods[0];
    assert_eq!(
        pod["spec"]["serviceAccountName"], RELEASE,
        "the operator runs as the chart's ServiceAccount"
    );
    assert!(operator_args(pod).contains(&"--log-format=json".to_owned()));
    // The ServiceAccount has the chart's grants and no others (RBAC is enforced: the same
    // authorizer answers the operator's requests).
    let service_account = format!("--as=system:serviceaccount:{NAMESPACE}:{RELEASE}");
    for (verb, resource, allowed) in [
        ("patch", "scalingpolicies.cellmesh.io/status", true),
        ("patch", "workmodels.cellmesh.io/status", true),
        ("patch", "pods/resize", true),
        ("patch", "pods", false),
        ("get", "secrets", false),
        ("update", "workmodels.cellmesh.io", false),
    ] {
        let mut args = vec!["auth", "can-i", verb, "-A", &service_account];
        match resource.split_once('/') {
            Some((resource, subresource)) => {
                args.extend_from_slice(&[resource, "--subresource", subresource])
            }
            None => args.push(resource),
        }
        let out = cluster.kubectl_output(&args, None);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(
            answer,
            if allowed { "yes" } else { "no" },
            "can the chart's ServiceAccount {verb} {resource}?"
        );
    }
    let first_pod = pod["metadata"]["name"].clone();

    // The operator reconciles a WorkModel and a ScalingPolicy (usage unavailable here: no
    // Prometheus, so the policy reports MetricsAvailable=False — written by the operator).
    cluster.apply_example("profiles/fast.yaml");
    cluster.apply_example("workmodels/chain.yaml");
    cluster.apply_example("scaling/chain-cpu-memory.yaml");
    wait_chain_ready(&cluster, "after install");
    let policy = wait_policy_observed(&cluster, "after install");
    assert!(
        condition(&policy, "MetricsAvailable").is_some(),
        "{}",
        policy["status"]
    );
    let lease = get(&cluster, &["-n", NAMESPACE, "lease", RELEASE])
        .expect("the operator took its Lease in the release namespace");
    assert_eq!(lease["spec"]["holderIdentity"], first_pod);

    // upgrade with a changed value: a new operator pod (text logs) takes over and keeps
    // reconciling the same custom resources.
    let upgraded = helm(
        &cluster,
        "upgrade",
        Some(json!({"operator": {"logFormat": "text"}})),
    );
    assert_eq!(upgraded["result"]["revision"], 2, "{upgraded}");
    assert_eq!(upgraded["history"].as_array().unwrap().len(), 2);
    let pod = wait_for("the upgraded operator pod", || {
        let pods = ready_operator_pods(&cluster);
        match pods.as_slice() {
            [pod] if pod["metadata"]["name"] != first_pod => Ok(pod.clone()),
            _ => Err(format!(
                "{:?}",
                pods.iter()
                    .map(|p| p["metadata"]["name"].clone())
                    .collect::<Vec<_>>()
            )),
        }
    });
    assert!(operator_args(&pod).contains(&"--log-format=text".to_owned()));
    cluster.kubectl(
        &[
            "patch",
            "workmodel",
            "chain",
            "--type=merge",
            "-p",
            r#"{"spec":{"services":{"db":{"replicas":1}}}}"#,
        ],
        None,
    );
    cluster.kubectl(
        &[
            "patch",
            "scalingpolicy",
            "chain",
            "--type=merge",
            "-p",
            r#"{"spec":{"interval":"6s"}}"#,
        ],
        None,
    );
    wait_for("db scaled to 1 replica by the upgraded operator", || {
        let db = get(&cluster, &["-n", "default", "deployment", "db"]).ok_or("no db Deployment")?;
        assert_eq!(db["metadata"]["labels"]["cellmesh.io/workmodel"], "chain");
        if db["spec"]["replicas"] == 1 {
            Ok(())
        } else {
            Err(db["spec"]["replicas"].to_string())
        }
    });
    let wm = wait_for("the WorkModel's new generation observed", || {
        let wm = get(&cluster, &["-n", "default", "workmodel", "chain"]).ok_or("no chain")?;
        if wm["status"]["observedGeneration"] == wm["metadata"]["generation"]
            && wm["metadata"]["generation"].as_i64() >= Some(2)
        {
            Ok(wm)
        } else {
            Err(wm["status"].to_string())
        }
    });
    assert_eq!(wm["metadata"]["generation"], 2);
    let policy = wait_policy_observed(&cluster, "after upgrade");
    assert_eq!(policy["metadata"]["generation"], 2);

    // uninstall: the operator goes; the CRDs (helm.sh/resource-policy: keep) and with them
    // the custom resources stay.
    let uninstalled = helm(&cluster, "uninstall", None);
    assert_eq!(uninstalled["history"], json!([]));
    wait_for("the operator gone", || {
        let deployments = items(get(&cluster, &["-n", NAMESPACE, "deployments"]));
        let pods = items(get(&cluster, &["-n", NAMESPACE, "pods"]));
        if deployments.is_empty() && pods.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} deployments, {} pods",
                deployments.len(),
                pods.len()
            ))
        }
    });
    for (kind, name) in [
        ("serviceaccount", RELEASE),
        ("clusterrole", RELEASE),
        ("clusterrolebinding", RELEASE),
        ("role", "cellmesh-leader-election"),
    ] {
        assert!(
            get(&cluster, &["-n", NAMESPACE, kind, name]).is_none(),
            "{kind} {name} left behind"
        );
    }
    for crd in [
        "workmodels.cellmesh.io",
        "apps.cellmesh.io",
        "profiles.cellmesh.io",
        "scalingpolicies.cellmesh.io",
    ] {
        assert!(
            get(&cluster, &["customresourcedefinition", crd]).is_some(),
            "{crd} deleted by uninstall"
        );
    }
    assert!(get(&cluster, &["-n", "default", "workmodel", "chain"]).is_some());
    assert!(get(&cluster, &["-n", "default", "scalingpolicy", "chain"]).is_some());
    assert!(get(&cluster, &["-n", "default", "profile", "fast"]).is_some());
}
