//! The in-process controllers of `cellmesh-local apiserver` (default `--controllers all`),
//! driven with the real kubectl and kube-rs. No node agent runs here: the tests play the
//! node by patching pod status (phase Running, a pod IP, the Ready condition), at a pace
//! they choose, and check the controllers' invariants at every observed step.

// Test helpers below panic on failure by design: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

async fn client_for(server: &Server) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn start() -> Arc<Server> {
    Arc::new(Server::start_with(&["--controllers", "all"]))
}

/// Runs kubectl off the async runtime; asserts success and returns stdout.
async fn kubectl(server: &Arc<Server>, args: &[&str]) -> String {
    let server = Arc::clone(server);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.kubectl(&args)
    })
    .await
    .unwrap()
}

async fn kubectl_stdin(server: &Arc<Server>, args: &[&str], stdin: &str) -> String {
    let server = Arc::clone(server);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.kubectl_stdin(&args, Some(&stdin))
    })
    .await
    .unwrap()
}

/// Polls `check` every 50 ms until it returns Some, for at most 20 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

static NEXT_IP: AtomicU32 = AtomicU32::new(2);

/// Marks a pod Running with an IP, Ready or not (what the node agent will do).
async fn set_pod_status(pods: &Api<Pod>, name: &str, ready: bool) {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    let ip = format!("127.64.{}.{}", n / 250, n % 250 + 2);
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                        "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}],
    }});
    let result = pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await;
    if let Err(err) = result {
        // A pod deleted meanwhile is fine; anything else is not.
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 404),
            "{err}"
        );
    }
}

/// Plays the node: every tick, one pod that is not ready yet becomes ready.
fn simulate_node(pods: Api<Pod>, tick: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            let Ok(list) = pods.list(&ListParams::default()).await else {
                continue;
            };
            let waiting = list
                .items
                .iter()
                .filter(|p| !is_ready(p) && p.metadata.deletion_timestamp.is_none())
                .min_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            if let Some(pod) = waiting {
                set_pod_status(&pods, pod.metadata.name.as_deref().unwrap(), true).await;
            }
        }
    })
}

/// Aborts a background task when the test ends, pass or fail.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn deployment_yaml(name: &str, replicas: i32, image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 1}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: c
        image: {image}
        ports: [{{name: http, containerPort: 8080}}]
"#
    )
}

/// Counts (pods not being deleted, ready ones) of an app.
async fn pod_counts(pods: &Api<Pod>, app: &str) -> (usize, usize) {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap();
    let live: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    (live.len(), live.iter().filter(|p| is_ready(p)).count())
}

/// Watches a rollout until `done` holds, asserting `replicas + maxSurge` pods at most and
/// `replicas - maxUnavailable` ready pods at least at every observation.
async fn watch_rollout(
    pods: &Api<Pod>,
    app: &str,
    replicas: usize,
    surge: usize,
    unavailable: usize,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut observations = 0;
    loop {
        let (live, ready) = pod_counts(pods, app).await;
        observations += 1;
        assert!(
            live <= replicas + surge,
            "{live} pods exceed {replicas} + maxSurge {surge}"
        );
        assert!(
            ready + unavailable >= replicas,
            "only {ready} ready pods: more than maxUnavailable {unavailable} down"
        );
        let images: Vec<String> = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap_or_default()
            })
            .collect();
        if live == replicas && ready == replicas && images.iter().all(|i| i == "example/app:v2") {
            return observations;
        }
        assert!(
            Instant::now() < deadline,
            "rollout did not finish: {live} pods, {ready} ready, {images:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_create_scale_and_roll_replica_sets() {
    let server = start();
    let client = client_for(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let _node = AbortOnDrop(simulate_node(pods.clone(), Duration::from_millis(60)));

    kubectl_stdin(
        &server,
        &["apply", "-f", "-"],
        &deployment_yaml("web", 3, "example/app:v1"),
    )
    .await;
    let out = kubectl(
        &server,
        &["rollout", "status", "deployment/web", "--timeout=30s"],
    )
    .await;
    assert!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );

    // One ReplicaSet `<deployment>-<pod-template-hash>`, its pods `<replicaset>-<5>`.
    let rs_list = sets.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(rs_list.len(), 1);
    let rs = &rs_list[0];
    let rs_name = rs.metadata.name.clone().unwrap();
    let hash = rs.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(rs_name, format!("web-{hash}"));
    assert_eq!(
        rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "1"
    );
    assert_eq!(
        rs.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Deployment"
    );
    let pod_list = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(pod_list.len(), 3);
    for p in &pod_list {
        let name = p.metadata.name.as_deref().unwrap();
        assert!(
            name.starts_with(&format!("{rs_name}-")) && name.len() == rs_name.len() + 6,
            "{name}"
        );
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["pod-template-hash"],
            hash
        );
    }
    let d = deployments.get("web").await.unwrap();
    let status = d.status.unwrap();
    assert_eq!(
        (
            status.replicas,
            status.updated_replicas,
            status.ready_replicas,
            status.available_replicas
        ),
        (Some(3), Some(3), Some(3), Some(3))
    );
    assert_eq!(status.observed_generation, d.metadata.generation);
    let progressing = status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    let rs_status = sets.get(&rs_name).await.unwrap().status.unwrap();
    assert_eq!(
        (
            rs_status.replicas,
            rs_status.ready_replicas,
            rs_status.available_replicas
        ),
        (3, Some(3), Some(3))
    );

    // kubectl scale changes the pod count both ways.
    kubectl(&server, &["scale", "deployment/web", "--replicas=5"]).await;
    eventually("5 ready pods", || async {
        (pod_counts(&pods, "web").await == (5, 5)).then_some(())
    })
    .await;
    kubectl(&server, &["scale", "deployment/web", "--replicas=4"]).await;
    eventually("4 pods", || async {
        (pod_counts(&pods, "web").await == (4, 4)).then_some(())
    })
    .await;

    // A template change rolls: maxSurge 1 / maxUnavailable 1 hold at every step.
    kubectl(
        &server,
        &["set", "image", "deployment/web", "c=example/app:v2"],
    )
    .await;
    let observations = watch_rollout(&pods, "web", 4, 1, 1).await;
    assert!(
        observations > 3,
        "the rollout was observed in steps ({observations})"
    );
    let out = kubectl(
        &server,
        &["rollout", "status", "deployment/web", "--timeout=30s"],
    )
    .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let d = deployments.get("web").await.unwrap();
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let rs_list = sets.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(rs_list.len(), 2, "the old ReplicaSet stays as history");
    let old = rs_list
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(rs_name.as_str()))
        .unwrap();
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    let out = kubectl(&server, &["get", "deployment", "web", "--no-headers"]).await;
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&fields[..4], ["web", "4/4", "4", "4"], "{out}");

    // kubectl describe shows the controllers' events.
    let described = kubectl(&server, &["describe", "deployment", "web"]).await;
    assert!(
        described.contains("ScalingReplicaSet")
            && described.contains(&format!("Scaled up replica set {rs_name} from 0 to 3")),
        "{described}"
    );
    let described = kubectl(&server, &["describe", "replicaset", &rs_name]).await;
    assert!(
        described.contains("SuccessfulCreate") && described.contains("Created pod: "),
        "{described}"
    );

    // `rollout undo` brings the first ReplicaSet back (renumbered), no third one appears.
    kubectl(&server, &["rollout", "undo", "deployment/web"]).await;
    let out = kubectl(
        &server,
        &["rollout", "status", "deployment/web", "--timeout=30s"],
    )
    .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let rs_list = sets.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        rs_list.len(),
        2,
        "{:?}",
        rs_list
            .iter()
            .map(|r| r.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let first = sets.get(&rs_name).await.unwrap();
    assert_eq!(first.spec.as_ref().unwrap().replicas, Some(4));
    assert_eq!(
        first.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "3"
    );
    let history = kubectl(&server, &["rollout", "history", "deployment/web"]).await;
    assert!(
        history.contains("\n2 ") && history.contains("\n3 "),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_replaces_all_pods_at_once() {
    let server = start();
    let client = client_for(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let _node = AbortOnDrop(simulate_node(pods.clone(), Duration::from_millis(30)));
    // `kubectl create` sends protobuf: the stored template spells out zero values, which
    // must not make `rollout undo` (a template without them) look like a new template.
    kubectl(
        &server,
        &[
            "create",
            "deployment",
            "db",
            "--image=example/app:v1",
            "--replicas=2",
        ],
    )
    .await;
    kubectl(
        &server,
        &[
            "patch",
            "deployment",
            "db",
            "-p",
            r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#,
        ],
    )
    .await;
    kubectl(
        &server,
        &["rollout", "status", "deployment/db", "--timeout=30s"],
    )
    .await;
    kubectl(
        &server,
        &["set", "image", "deployment/db", "app=example/app:v2"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = pods.list(&ListParams::default()).await.unwrap().items;
        let images: Vec<&str> = list
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .as_deref()
                    .unwrap()
            })
            .collect();
        assert!(
            !(images.contains(&"example/app:v1") && images.contains(&"example/app:v2")),
            "Recreate never runs old and new pods together: {images:?}"
        );
        if images == ["example/app:v2", "example/app:v2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recreate did not finish: {images:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kubectl(
        &server,
        &["rollout", "status", "deployment/db", "--timeout=30s"],
    )
    .await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let before = names(&sets).await;
    assert_eq!(before.len(), 2);
    kubectl(&server, &["rollout", "undo", "deployment/db"]).await;
    kubectl(
        &server,
        &["rollout", "status", "deployment/db", "--timeout=30s"],
    )
    .await;
    assert_eq!(
        names(&sets).await,
        before,
        "undo reuses the first ReplicaSet"
    );
}

async fn names<K>(api: &Api<K>) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|o| o.meta().name.clone())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_cascades_on_a_deployment_chain() {
    let server = start();
    let client = client_for(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    for app in ["bg", "fg", "or"] {
        kubectl_stdin(
            &server,
            &["apply", "-f", "-"],
            &deployment_yaml(app, 2, "example/app:v1"),
        )
        .await;
    }
    eventually("6 pods", || async {
        (names(&pods).await.len() == 6).then_some(())
    })
    .await;

    // Background: the Deployment goes at once, its ReplicaSet and pods after it.
    kubectl(
        &server,
        &["delete", "deployment", "bg", "--cascade=background"],
    )
    .await;
    eventually("bg's ReplicaSet and pods gone", || async {
        let left = pod_counts(&pods, "bg").await.0
            + names(&sets)
                .await
                .iter()
                .filter(|n| n.starts_with("bg-"))
                .count();
        (left == 0).then_some(())
    })
    .await;

    // Foreground: a pod held by a finalizer keeps the Deployment (deletionTimestamp and the
    // foregroundDeletion finalizer) until it goes.
    let held = pods
        .list(&ListParams::default().labels("app=fg"))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    pods.patch(
        &held,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();
    kubectl(
        &server,
        &[
            "delete",
            "deployment",
            "fg",
            "--cascade=foreground",
            "--wait=false",
        ],
    )
    .await;
    let waiting = eventually("the held pod to be deleted", || async {
        let pod = pods.get(&held).await.ok()?;
        pod.metadata.deletion_timestamp.is_some().then_some(())?;
        deployments.get("fg").await.ok()
    })
    .await;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        waiting.metadata.finalizers.as_deref(),
        Some(&["foregroundDeletion".to_owned()][..])
    );
    assert_eq!(pod_counts(&pods, "fg").await.0, 0, "the other pod is gone");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        deployments.get("fg").await.is_ok(),
        "the Deployment waits for its blocking dependents"
    );
    pods.patch(
        &held,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("fg and its ReplicaSet gone", || async {
        let gone = deployments.get_opt("fg").await.unwrap().is_none()
            && !names(&sets).await.iter().any(|n| n.starts_with("fg-"));
        gone.then_some(())
    })
    .await;

    // Orphan: the ReplicaSet stays, without its owner reference; its pods stay.
    kubectl(&server, &["delete", "deployment", "or", "--cascade=orphan"]).await;
    assert!(deployments.get_opt("or").await.unwrap().is_none());
    let rs_name = names(&sets)
        .await
        .into_iter()
        .find(|n| n.starts_with("or-"))
        .expect("orphaned ReplicaSet");
    let orphan = eventually("the owner reference removed", || async {
        let rs = sets.get(&rs_name).await.unwrap();
        rs.metadata
            .owner_references
            .as_ref()
            .is_none_or(Vec::is_empty)
            .then_some(rs)
    })
    .await;
    assert!(orphan.metadata.deletion_timestamp.is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pod_counts(&pods, "or").await.0,
        2,
        "orphaned pods keep running"
    );
}

const WIDGET_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// Creates a Widget and two ConfigMaps it owns (one blocking its deletion).
async fn widget_with_configmaps(server: &Arc<Server>, client: &Client, name: &str) -> Vec<String> {
    kubectl_stdin(server, &["apply", "-f", "-"], &format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {{size: 1}}\n")).await;
    let uid = kubectl(
        server,
        &["get", "widget", name, "-o", "jsonpath={.metadata.uid}"],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut created = Vec::new();
    for (i, block) in [true, false].into_iter().enumerate() {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-{i}"), "ownerReferences": [{
                "apiVersion": "example.com/v1", "kind": "Widget", "name": name, "uid": uid,
                "blockOwnerDeletion": block}]},
            "data": {"k": "v"},
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        created.push(format!("{name}-{i}"));
    }
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_cascades_from_a_custom_resource() {
    let server = start();
    let client = client_for(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    kubectl_stdin(&server, &["apply", "-f", "-"], WIDGET_CRD).await;
    eventually("widgets served", || async {
        let out = server.kubectl_output(&["get", "widgets"], None);
        out.status.success().then_some(())
    })
    .await;
    let bg = widget_with_configmaps(&server, &client, "bg").await;
    let fg = widget_with_configmaps(&server, &client, "fg").await;
    let or = widget_with_configmaps(&server, &client, "or").await;

    kubectl(&server, &["delete", "widget", "bg", "--cascade=background"]).await;
    eventually("bg's ConfigMaps collected", || async {
        let left = names(&cms).await;
        (!bg.iter().any(|n| left.contains(n))).then_some(())
    })
    .await;

    // kubectl waits for the owner: with foreground, it is gone only after its dependents.
    kubectl(&server, &["delete", "widget", "fg", "--cascade=foreground"]).await;
    let left = names(&cms).await;
    assert!(
        !left.contains(&fg[0]),
        "the blocking dependent went before its owner: {left:?}"
    );

    kubectl(&server, &["delete", "widget", "or", "--cascade=orphan"]).await;
    for name in &or {
        let cm = eventually("the reference to the orphaning owner removed", || async {
            let cm = cms.get(name).await.unwrap();
            cm.metadata
                .owner_references
                .as_ref()
                .is_none_or(Vec::is_empty)
                .then_some(cm)
        })
        .await;
        assert!(cm.metadata.deletion_timestamp.is_none());
    }
    let out = server.kubectl_output(&["get", "widget", "or"], None);
    assert!(
        !out.status.success(),
        "the orphaning owner is deleted after its finalizer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_empties_it_then_removes_it() {
    let server = start();
    let client = client_for(&server).await;
    kubectl(&server, &["create", "namespace", "team"]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    // The root CA publisher fills every namespace; the pods' token volume reads it.
    let ca = eventually("kube-root-ca.crt", || async {
        cms.get_opt("kube-root-ca.crt").await.unwrap()
    })
    .await;
    assert!(ca.data.unwrap()["ca.crt"].contains("BEGIN CERTIFICATE"));
    kubectl_stdin(
        &server,
        &["apply", "-n", "team", "-f", "-"],
        &deployment_yaml("web", 2, "example/app:v1"),
    )
    .await;
    let held: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &held).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    eventually("2 pods", || async {
        (pod_counts(&pods, "web").await.0 == 2).then_some(())
    })
    .await;

    kubectl(&server, &["delete", "namespace", "team", "--wait=false"]).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let stuck = eventually("the held ConfigMap reported", || async {
        let ns = namespaces.get("team").await.unwrap();
        let conditions = ns.status.as_ref()?.conditions.clone()?;
        conditions
            .iter()
            .any(|c| c.type_ == "NamespaceFinalizersRemaining" && c.status == "True")
            .then_some(ns)
    })
    .await;
    assert_eq!(
        stuck.status.as_ref().unwrap().phase.as_deref(),
        Some("Terminating")
    );
    let conditions = stuck.status.unwrap().conditions.unwrap();
    let remaining = conditions
        .iter()
        .find(|c| c.type_ == "NamespaceContentRemaining")
        .unwrap();
    assert_eq!(remaining.reason.as_deref(), Some("SomeResourcesRemain"));
    assert!(
        remaining
            .message
            .as_deref()
            .unwrap()
            .contains("configmaps has 1 resource instances"),
        "{remaining:?}"
    );
    assert_eq!(stuck.spec.unwrap().finalizers.unwrap(), ["kubernetes"]);
    assert!(
        names(&pods).await.is_empty(),
        "the rest of the content is gone"
    );
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "team");
    assert!(names(&sets).await.is_empty());
    let refused = kubectl_output_err(&server, &["create", "configmap", "late", "-n", "team"]).await;
    assert!(
        refused.contains("because it is being terminated"),
        "{refused}"
    );

    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("the namespace removed", || async {
        namespaces
            .get_opt("team")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

async fn kubectl_output_err(server: &Arc<Server>, args: &[&str]) -> String {
    let server = Arc::clone(server);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.kubectl_fails(&args, None)
    })
    .await
    .unwrap()
}

fn pod_manifest(name: &str, labels: &BTreeMap<&str, &str>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "example/app:v1",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_pod_readiness() {
    let server = start();
    let client = client_for(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let web = BTreeMap::from([("app", "web")]);
    for name in ["a", "b"] {
        let created = pods
            .create(&PostParams::default(), &pod_manifest(name, &web))
            .await
            .unwrap();
        // Admission mounted the ServiceAccount token.
        let spec = created.spec.unwrap();
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name.starts_with("kube-api-access-"))
            .expect("token volume");
        assert!(volume.projected.is_some());
        let mounts = spec.containers[0].volume_mounts.clone().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path
            == "/var/run/secrets/kubernetes.io/serviceaccount"
            && m.name == volume.name));
    }
    // Pods created by server-side apply are admitted the same way.
    let ssa = "apiVersion: v1\nkind: Pod\nmetadata: {name: other, labels: {app: db}}\nspec:\n  containers: [{name: c, image: example/app:v1}]\n";
    kubectl_stdin(&server, &["apply", "--server-side", "-f", "-"], ssa).await;
    let other = pods.get("other").await.unwrap().spec.unwrap();
    assert!(
        other
            .volumes
            .unwrap()
            .iter()
            .any(|v| v.name.starts_with("kube-api-access-"))
    );
    assert_eq!(
        other.containers[0].volume_mounts.as_ref().unwrap()[0].mount_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    set_pod_status(&pods, "a", true).await;
    set_pod_status(&pods, "b", false).await;
    set_pod_status(&pods, "other", true).await;

    let ready_names = |e: &Endpoints, field: &str| -> Vec<String> {
        let subsets = e.subsets.clone().unwrap_or_default();
        subsets
            .iter()
            .flat_map(|s| {
                if field == "ready" {
                    s.addresses.clone()
                } else {
                    s.not_ready_addresses.clone()
                }
                .unwrap_or_default()
            })
            .filter_map(|a| a.target_ref.and_then(|t| t.name))
            .collect()
    };
    let e = eventually("a ready, b not ready", || async {
        let e = endpoints.get_opt("web").await.unwrap()?;
        (ready_names(&e, "ready") == ["a"] && ready_names(&e, "not") == ["b"]).then_some(e)
    })
    .await;
    let port = &e.subsets.unwrap()[0].ports.clone().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port),
        (Some("http"), 8080),
        "the named port resolved"
    );

    let slice_of = |list: Vec<EndpointSlice>| -> Option<EndpointSlice> {
        (list.len() == 1).then(|| list.into_iter().next().unwrap())
    };
    let selector = "kubernetes.io/service-name=web,endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io";
    let slice = eventually("one slice", || async {
        slice_of(
            slices
                .list(&ListParams::default().labels(selector))
                .await
                .unwrap()
                .items,
        )
    })
    .await;
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(
        slice.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Service"
    );
    assert!(slice.metadata.name.unwrap().starts_with("web-"));

    // b becomes ready, a goes away.
    set_pod_status(&pods, "b", true).await;
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("only b, ready", || async {
        let e = endpoints.get("web").await.unwrap();
        (ready_names(&e, "ready") == ["b"] && ready_names(&e, "not").is_empty()).then_some(())
    })
    .await;
    eventually("the slice follows", || async {
        let slice = slice_of(
            slices
                .list(&ListParams::default().labels(selector))
                .await
                .unwrap()
                .items,
        )?;
        let ready: Vec<(String, Option<bool>)> = slice
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.target_ref.clone().unwrap().name.unwrap(),
                    e.conditions.as_ref().unwrap().ready,
                )
            })
            .collect();
        (ready == [("b".to_owned(), Some(true))]).then_some(())
    })
    .await;

    // Deleting the Service removes its Endpoints and (garbage collector) its slices.
    kubectl(&server, &["delete", "service", "web"]).await;
    eventually("endpoints and slices gone", || async {
        let gone = endpoints.get_opt("web").await.unwrap().is_none()
            && slices
                .list(&ListParams::default().labels(selector))
                .await
                .unwrap()
                .items
                .is_empty();
        gone.then_some(())
    })
    .await;
}
