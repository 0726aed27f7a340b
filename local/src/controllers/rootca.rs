//! Kubernetes' root-ca-cert-publisher: a `kube-root-ca.crt` ConfigMap holding the cluster
//! CA in every namespace that is not terminating, restored when edited or deleted. Pods'
//! projected ServiceAccount-token volumes (`kube-api-access-*`) read `ca.crt` from it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use super::util;

pub const NAME: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// The ConfigMap every namespace gets.
pub fn desired(namespace: &str, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(namespace.into()),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/description".to_owned(),
                DESCRIPTION.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("ca.crt".to_owned(), ca_pem.to_owned())])),
        ..ConfigMap::default()
    }
}

struct Context {
    client: kube::Client,
    ca_pem: String,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let want = desired(&name, &ctx.ca_pem);
    let result = match api.get_opt(NAME).await? {
        None => api.create(&PostParams::default(), &want).await.map(|_| ()),
        Some(current) if current.data == want.data => Ok(()),
        Some(mut current) => {
            current.data = want.data;
            api.replace(NAME, &PostParams::default(), &current)
                .await
                .map(|_| ())
        }
    };
    match result {
        // Deleting the ConfigMap does not trigger us (only changes do): look again later.
        Ok(()) => Ok(Action::requeue(Duration::from_secs(30))),
        // A namespace being deleted refuses new content; a conflict means a newer version.
        Err(err)
            if util::is_stale(&err) || matches!(&err, kube::Error::Api(s) if s.code == 403) =>
        {
            Ok(Action::requeue(Duration::from_millis(500)))
        }
        Err(err) => Err(err),
    }
}

fn error_policy(_ns: Arc<Namespace>, err: &kube::Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%err, "root CA publisher: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Runs the publisher until `shutdown`.
pub async fn run(
    client: kube::Client,
    ca_pem: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let configmaps: Api<ConfigMap> = Api::all(client.clone());
    let ctx = Arc::new(Context { client, ca_pem });
    Controller::new(namespaces, watcher::Config::default())
        .watches(
            configmaps,
            watcher::Config::default().fields(&format!("metadata.name={NAME}")),
            |cm| cm.metadata.namespace.map(|ns| ObjectRef::new(&ns)),
        )
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_map_carries_the_ca() {
        let cm = desired("team", "-----BEGIN CERTIFICATE-----\n");
        assert_eq!(cm.metadata.name.as_deref(), Some("kube-root-ca.crt"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("team"));
        assert!(cm.data.unwrap()["ca.crt"].starts_with("-----BEGIN"));
    }
}
