//! kube-rs with a least-privilege ServiceAccount token: a small controller that may only
//! watch and patch ConfigMaps in its own namespace works, and anything more is refused with
//! the 403 Status kube-rs surfaces.

// Test code: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};

async fn client_with_token(server: &Server, token: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.token = Some(token.to_owned().into());
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_runs_with_only_the_permissions_it_needs() {
    let server = Server::start();
    server.kubectl(&["create", "namespace", "app"]);
    server.kubectl(&["create", "serviceaccount", "labeler", "-n", "app"]);
    server.kubectl(&[
        "create",
        "role",
        "labeler",
        "--verb=get,list,watch,patch",
        "--resource=configmaps",
        "-n",
        "app",
    ]);
    server.kubectl(&[
        "create",
        "rolebinding",
        "labeler",
        "--role=labeler",
        "--serviceaccount=app:labeler",
        "-n",
        "app",
    ]);
    server.kubectl(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=a=1",
        "-n",
        "app",
    ]);
    let token = server.kubectl(&["create", "token", "labeler", "-n", "app"]);
    let client = client_with_token(&server, token.trim()).await;

    // The controller: label every ConfigMap it sees as reconciled.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "app");
    let mut stream = watcher(configmaps.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let seen = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("an object within 30s")
        .expect("stream open")
        .expect("watch allowed");
    let name = seen.metadata.name.clone().unwrap();
    assert_eq!(name, "settings");
    let patch = serde_json::json!({"metadata": {"labels": {"reconciled": "true"}}});
    configmaps
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch allowed");
    let labels = server.kubectl(&[
        "get",
        "configmap",
        "settings",
        "-n",
        "app",
        "-o",
        "jsonpath={.metadata.labels.reconciled}",
    ]);
    assert_eq!(labels, "true");

    // Anything beyond the Role is a 403 with Kubernetes' wording.
    let all: Api<ConfigMap> = Api::all(client.clone());
    let kube::Error::Api(status) = all.list(&Default::default()).await.unwrap_err() else {
        panic!("expected an API error");
    };
    assert_eq!(status.code, 403);
    assert_eq!(status.reason, "Forbidden");
    assert_eq!(
        status.message,
        "configmaps is forbidden: User \"system:serviceaccount:app:labeler\" cannot list resource \"configmaps\" in API group \"\" at the cluster scope"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "app");
    let kube::Error::Api(status) = secrets.get("x").await.unwrap_err() else {
        panic!("expected an API error");
    };
    assert_eq!(status.code, 403);
    let kube::Error::Api(status) = configmaps
        .delete("settings", &Default::default())
        .await
        .unwrap_err()
    else {
        panic!("expected an API error");
    };
    assert_eq!(status.code, 403, "delete is not in the Role");
}
