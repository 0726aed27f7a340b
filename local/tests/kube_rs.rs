//! kube-rs (the client cellmesh's operator uses) against `cellmesh-local apiserver`.

// Test helpers below panic on failure by design: that is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Config, Resource, ResourceExt};
use tokio::sync::mpsc;

async fn client_for(server: &Server) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"k": "v"}
    }))
    .unwrap()
}

/// What the test observes of the watcher stream.
#[derive(Debug, PartialEq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String),
    Delete(String),
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("watcher event within 30s")
        .expect("watcher running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_from_bookmarks_across_a_restart() {
    let mut server = Server::start_with(&["--watch-bookmark-interval", "200ms"]);
    let api: Api<ConfigMap> = Api::namespaced(client_for(&server).await, "default");
    api.create(&PostParams::default(), &configmap("a"))
        .await
        .unwrap();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = watcher(api.clone(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let name = |cm: &ConfigMap| cm.metadata.name.clone().unwrap_or_default();
            let seen = match event {
                Ok(watcher::Event::Init) => Seen::Init,
                Ok(watcher::Event::InitApply(cm)) => Seen::InitApply(name(&cm)),
                Ok(watcher::Event::InitDone) => Seen::InitDone,
                Ok(watcher::Event::Apply(cm)) => Seen::Apply(name(&cm)),
                Ok(watcher::Event::Delete(cm)) => Seen::Delete(name(&cm)),
                // Connection errors while the server restarts: the watcher retries.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.send(seen).is_err() {
                break;
            }
        }
    });

    assert_eq!(next(&mut rx).await, Seen::Init);
    assert_eq!(next(&mut rx).await, Seen::InitApply("a".into()));
    assert_eq!(next(&mut rx).await, Seen::InitDone);
    api.create(&PostParams::default(), &configmap("b"))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, Seen::Apply("b".into()));
    // Writes the watcher does not see move the global version past its last event: only
    // a bookmark tells it the newer version. Without bookmarks it would resume from "b",
    // which the restarted server no longer has (410) and relist.
    let elsewhere: Api<ConfigMap> = Api::namespaced(api.clone().into_client(), "kube-system");
    for i in 0..3 {
        elsewhere
            .create(&PostParams::default(), &configmap(&format!("other-{i}")))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    tokio::task::block_in_place(|| server.restart(&["--watch-bookmark-interval", "200ms"]));
    // The restarted server keeps the objects; the watcher resumes from its bookmark
    // without a relist (no Init), and sees changes made after the restart.
    let mut created = false;
    for _ in 0..100 {
        if api
            .create(&PostParams::default(), &configmap("c"))
            .await
            .is_ok()
        {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(created, "the restarted server accepts writes");
    assert_eq!(next(&mut rx).await, Seen::Apply("c".into()));
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(next(&mut rx).await, Seen::Delete("a".into()));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_crud_and_optimistic_concurrency() {
    let server = Server::start();
    let api: Api<ConfigMap> = Api::namespaced(client_for(&server).await, "default");
    let created = api
        .create(&PostParams::default(), &configmap("x"))
        .await
        .unwrap();
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.data = Some([("k".to_owned(), "new".to_owned())].into());
    api.replace("x", &PostParams::default(), &fresh)
        .await
        .unwrap();
    stale.data = Some([("k".to_owned(), "stale".to_owned())].into());
    let err = api
        .replace("x", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "Conflict");
        }
        other => panic!("expected a 409 Status, got {other:?}"),
    }
    let listed = api.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].data.as_ref().unwrap()["k"], "new");
    let missing = api.get("nope").await.unwrap_err();
    assert!(matches!(missing, kube::Error::Api(ref s) if s.code == 404 && s.reason == "NotFound"));
}

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed: {0}")]
struct CopyError(#[from] kube::Error);

/// Reconciles a ConfigMap into a Secret `<name>-copy` with the same data, owned by it.
async fn copy_to_secret(
    cm: Arc<ConfigMap>,
    secrets: Arc<Api<Secret>>,
) -> Result<Action, CopyError> {
    let name = format!("{}-copy", cm.name_any());
    let owner = cm
        .controller_owner_ref(&())
        .expect("a stored ConfigMap has a uid");
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "ownerReferences": [owner]},
        "stringData": cm.data.clone().unwrap_or_default(),
    });
    secrets
        .patch(
            &name,
            &PatchParams::apply("copier").force(),
            &Patch::Apply(secret),
        )
        .await?;
    Ok(Action::await_change())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_reconciles_changes_and_owned_objects() {
    let server = Server::start();
    let client = client_for(&server).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let controller = Controller::new(configmaps.clone(), watcher::Config::default())
        .owns(secrets.clone(), watcher::Config::default())
        .run(
            copy_to_secret,
            |_, err: &CopyError, _| {
                eprintln!("reconcile error: {err:?}");
                Action::requeue(Duration::from_millis(200))
            },
            Arc::new(secrets.clone()),
        )
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    let copied = |expected: &'static str| {
        let secrets = secrets.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(secret) = secrets.get("settings-copy").await {
                    let value = secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get("k"))
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
                    if value.as_deref() == Some(expected) {
                        return secret;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the controller did not copy {expected:?} within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let mut cm = configmaps
        .create(&PostParams::default(), &configmap("settings"))
        .await
        .unwrap();
    let secret = copied("v").await;
    assert_eq!(
        secret.owner_references()[0].uid,
        cm.meta().uid.clone().unwrap(),
        "owned by the ConfigMap"
    );

    // A change of the watched object is reconciled.
    cm.data = Some([("k".to_owned(), "v2".to_owned())].into());
    configmaps
        .replace("settings", &PostParams::default(), &cm)
        .await
        .unwrap();
    copied("v2").await;

    // Deleting the owned object triggers its owner's reconcile, which recreates it.
    let old_uid = secrets.get("settings-copy").await.unwrap().uid();
    secrets
        .delete("settings-copy", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = copied("v2").await;
    assert_ne!(recreated.uid(), old_uid, "a new Secret");
    task.abort();
}
