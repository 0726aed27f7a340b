//! kube-rs server-side apply (conflicts, force, list-map merges) and kube-runtime's
//! `finalizer` helper against `cellmesh-local apiserver`.

// Test helpers below panic on failure by design: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Server;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

async fn client_for(server: &Server) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn deployment(replicas: Option<i64>, image: &str) -> serde_json::Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "cell", "image": image}]}
        }
    });
    if let Some(replicas) = replicas {
        spec["replicas"] = json!(replicas);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": spec})
}

fn managers(object: &Deployment) -> Vec<(String, String)> {
    object
        .managed_fields()
        .iter()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_conflicts_and_force() {
    let server = Server::start();
    let api: Api<Deployment> = Api::namespaced(client_for(&server).await, "default");

    let created = api
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(deployment(Some(2), "cell:1")),
        )
        .await
        .unwrap();
    assert_eq!(created.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(managers(&created), [("alice".into(), "Apply".into())]);
    assert_eq!(created.metadata.generation, Some(1));

    let err = api
        .patch(
            "web",
            &PatchParams::apply("bob"),
            &Patch::Apply(deployment(Some(3), "cell:1")),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );
    assert_eq!(
        api.get("web").await.unwrap().spec.unwrap().replicas,
        Some(2)
    );

    let forced = api
        .patch(
            "web",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                                 "metadata": {"name": "web"}, "spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.as_ref().unwrap().replicas, Some(3));

    // alice stops applying replicas (bob owns them now) and changes the container image:
    // containers merge by name, replicas stay.
    let updated = api
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(deployment(None, "cell:2")),
        )
        .await
        .unwrap();
    let spec = updated.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let containers = spec.template.spec.unwrap().containers;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].image.as_deref(), Some("cell:2"));

    // A conflict on a list-map item names its key.
    let err = api
        .patch(
            "web",
            &PatchParams::apply("bob"),
            &Patch::Apply(deployment(None, "cell:3")),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}");
    };
    assert!(
        status
            .message
            .contains(".spec.template.spec.containers[name=\"cell\"].image"),
        "{}",
        status.message
    );

    // Applying status goes to the status subresource only, under its own entry.
    let status = api
        .patch_status(
            "web",
            &PatchParams::apply("ctrl"),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                                 "spec": {"replicas": 7}, "status": {"replicas": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(status.status.as_ref().unwrap().replicas, Some(1));
    assert_eq!(status.spec.as_ref().unwrap().replicas, Some(3));
    let entry = status
        .managed_fields()
        .iter()
        .find(|e| e.manager.as_deref() == Some("ctrl"))
        .cloned()
        .unwrap();
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    // The main resource ignores status in an apply.
    let ignored = api
        .patch(
            "web",
            &PatchParams::apply("alice"),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                                 "metadata": {"name": "web"}, "status": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(ignored.status.unwrap().replicas, Some(1));

    // Dry-run applies answer without storing.
    let rv = api.get("web").await.unwrap().resource_version();
    api.patch(
        "web",
        &PatchParams::apply("alice").dry_run(),
        &Patch::Apply(deployment(None, "cell:9")),
    )
    .await
    .unwrap();
    assert_eq!(api.get("web").await.unwrap().resource_version(), rv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_removes_labels_and_containers_a_manager_drops() {
    let server = Server::start();
    let api: Api<Deployment> = Api::namespaced(client_for(&server).await, "default");
    let config = |labels: serde_json::Value, containers: &[&str]| {
        let mut object = deployment(None, "cell:1");
        object["metadata"]["labels"] = labels;
        object["spec"]["template"]["spec"]["containers"] = containers
            .iter()
            .map(|name| json!({"name": name, "image": format!("{name}:1")}))
            .collect();
        object
    };
    let apply = |manager: &'static str, object: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch("web", &PatchParams::apply(manager), &Patch::Apply(object))
                .await
                .unwrap()
        }
    };
    let names = |d: &Deployment| -> Vec<String> {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };

    apply(
        "alice",
        config(
            json!({"app": "web", "tier": "front", "team": "a"}),
            &["cell", "log"],
        ),
    )
    .await;
    // bob co-owns the team label (same value: shared, no conflict).
    apply(
        "bob",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"team": "a"}}}),
    )
    .await;
    let second = apply("alice", config(json!({"app": "web"}), &["cell"])).await;
    let labels = second.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.keys().map(String::as_str).collect::<Vec<_>>(),
        ["app", "team"],
        "tier is gone, bob's team stays"
    );
    assert_eq!(names(&second), ["cell"], "the dropped container is gone");
    let bob = second
        .managed_fields()
        .iter()
        .find(|e| e.manager.as_deref() == Some("bob"))
        .and_then(|e| e.fields_v1.clone())
        .unwrap();
    assert!(
        bob.0["f:metadata"]["f:labels"]["f:team"].is_object(),
        "{bob:?}"
    );
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed")]
struct ReconcileError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizer_helper_guards_deletion() {
    let server = Server::start();
    let api: Api<ConfigMap> = Api::namespaced(client_for(&server).await, "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "guarded"}, "data": {"k": "v"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();

    let applies = Arc::new(AtomicUsize::new(0));
    let cleanups = Arc::new(AtomicUsize::new(0));
    let reconcile = |api: Api<ConfigMap>, applies: Arc<AtomicUsize>, cleanups: Arc<AtomicUsize>| async move {
        let object = Arc::new(api.get("guarded").await.unwrap());
        finalizer(&api, "cellmesh.io/cleanup", object, |event| async move {
            match event {
                Event::Apply(_) => applies.fetch_add(1, Ordering::SeqCst),
                Event::Cleanup(_) => cleanups.fetch_add(1, Ordering::SeqCst),
            };
            Ok::<_, ReconcileError>(Action::await_change())
        })
        .await
    };

    // First pass adds the finalizer (JSON patch with a `test` of the absent list).
    reconcile(api.clone(), applies.clone(), cleanups.clone())
        .await
        .unwrap();
    assert_eq!(
        api.get("guarded").await.unwrap().finalizers(),
        ["cellmesh.io/cleanup"]
    );
    reconcile(api.clone(), applies.clone(), cleanups.clone())
        .await
        .unwrap();
    assert_eq!(applies.load(Ordering::SeqCst), 1);

    // Deleting only marks it while the finalizer is there.
    api.delete("guarded", &DeleteParams::default())
        .await
        .unwrap();
    let marked = api.get("guarded").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());

    // The cleanup pass runs once, removes the finalizer, and the object goes.
    reconcile(api.clone(), applies.clone(), cleanups.clone())
        .await
        .unwrap();
    assert_eq!(cleanups.load(Ordering::SeqCst), 1);
    let gone = api.get_opt("guarded").await.unwrap();
    assert!(gone.is_none(), "{gone:?}");
}
