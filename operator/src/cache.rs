//! Watch-fed caches of the objects the operator manages, holding only what a reconcile
//! reads.
//!
//! A reconcile reads its children for two things: change detection (the applied-hash
//! annotation and the controller ownerReference) and, for Deployments, the rollout
//! (`spec.replicas`, `metadata.generation`, `status`). [`Slim`] is a child parsed into just
//! those fields: serde skips the rest of the JSON (a Deployment's pod template, a
//! ConfigMap's data) without allocating it, and [`slim_meta`] drops managedFields, labels
//! and the other annotations on arrival. The apply answers are parsed the same way.
//!
//! Why: a full `k8s_openapi` Deployment is 2.4 KB before any of its strings, and its
//! managedFields parse into a JSON tree several times the object's size. Caching the full
//! objects of a 1,000-service WorkModel made up most of the operator's memory (104 MiB;
//! `cargo xtask bench operator`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, reflector as reflect, watcher};
use kube::{Client, Resource};
use serde::Deserialize;

use crate::apply::APPLIED_HASH_ANNOTATION;

/// An object of kind `K` with only its metadata, `spec.replicas` and the rollout fields of
/// its status (both absent for kinds that have none).
#[derive(Debug, Deserialize)]
#[serde(bound = "")]
pub struct Slim<K> {
    /// The object's metadata (see [`slim_meta`] for what is kept).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `spec.replicas`, for the kinds that have one.
    #[serde(default)]
    pub spec: Option<SlimSpec>,
    /// The rollout fields of a Deployment's status.
    #[serde(default)]
    pub status: Option<SlimStatus>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

// By hand: a derive would ask for `K: Clone`, and `K` is only a marker.
impl<K> Clone for Slim<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status: self.status.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> Default for Slim<K> {
    fn default() -> Self {
        Self {
            metadata: ObjectMeta::default(),
            spec: None,
            status: None,
            kind: PhantomData,
        }
    }
}

/// The part of a spec the operator reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SlimSpec {
    /// Desired replicas.
    pub replicas: Option<i32>,
}

/// The part of a Deployment's status the operator reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SlimStatus {
    /// The generation the Deployment controller last acted on.
    pub observed_generation: Option<i64>,
    /// Pods of the latest template.
    pub updated_replicas: Option<i32>,
    /// Ready pods.
    pub ready_replicas: Option<i32>,
}

impl<K> Resource for Slim<K>
where
    K: Resource<DynamicType = ()>,
{
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Keeps of `meta` what a reconcile reads (name, namespace, uid, generation,
/// ownerReferences, the applied-hash annotation) and what kube's store keys on.
pub fn slim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.labels = None;
    meta.finalizers = None;
    meta.annotations = meta
        .annotations
        .take()
        .and_then(|mut all| all.remove_entry(APPLIED_HASH_ANNOTATION))
        .map(|(key, value)| BTreeMap::from([(key, value)]));
}

/// Watch-fed caches of every object the operator manages (label
/// `app.kubernetes.io/managed-by=cellmesh-operator`), in the watched namespace or all.
#[derive(Clone)]
pub struct Caches {
    /// Deployments.
    pub deployments: Store<Slim<Deployment>>,
    /// Services.
    pub services: Store<Slim<Service>>,
    /// ConfigMaps.
    pub config_maps: Store<Slim<ConfigMap>>,
}

impl Caches {
    /// Starts the three watches (tasks that run until the process ends) and returns their
    /// stores; [`Caches::wait_until_ready`] waits for the first complete listing.
    pub fn start(client: &Client, namespace: Option<&str>) -> Self {
        Self {
            deployments: cache(client, namespace),
            services: cache(client, namespace),
            config_maps: cache(client, namespace),
        }
    }

    /// Waits until every cache holds a complete listing.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.deployments.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.config_maps.wait_until_ready().await
    }
}

/// The watch configuration of managed objects.
pub fn managed_watch() -> watcher::Config {
    watcher::Config::default()
        .labels(&format!(
            "app.kubernetes.io/managed-by={}",
            crate::build::MANAGED_BY
        ))
        .any_semantic()
}

/// The initial listing of a cache is read in pages of this many objects: each page is
/// parsed whole (managedFields included) before it is slimmed, so the page size bounds the
/// memory peak of an operator that starts beside thousands of existing objects.
const LIST_PAGE_SIZE: u32 = 100;

fn cache<K>(client: &Client, namespace: Option<&str>) -> Store<Slim<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Debug
        + Send
        + Sync
        + 'static,
{
    let api = crate::controller::api::<Slim<K>>(client, namespace);
    let (reader, writer) = reflector::store();
    let events = watcher(api, managed_watch().page_size(LIST_PAGE_SIZE))
        .modify(|object: &mut Slim<K>| slim_meta(&mut object.metadata));
    let stream = reflect(writer, events).default_backoff().touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(kind = K::kind(&()).as_ref(), %error, "cache watch error");
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_parses_into_the_fields_a_reconcile_reads() {
        let json = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "s1", "namespace": "ns", "uid": "u1", "generation": 3,
                "labels": {"app.kubernetes.io/name": "s1"},
                "annotations": {APPLIED_HASH_ANNOTATION: "abc", "other": "x"},
                "ownerReferences": [{"apiVersion": "cellmesh.io/v1alpha1", "kind": "WorkModel",
                    "name": "wm", "uid": "owner", "controller": true}],
                "managedFields": [{"manager": "cellmesh-operator", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                "template": {"spec": {"containers": [{"name": "cell", "image": "x"}]}}},
            "status": {"observedGeneration": 3, "updatedReplicas": 2, "readyReplicas": 1,
                "conditions": [{"type": "Available", "status": "False"}]}
        });
        let mut slim: Slim<Deployment> = serde_json::from_value(json).unwrap();
        slim_meta(&mut slim.metadata);
        assert_eq!(slim.spec, Some(SlimSpec { replicas: Some(2) }));
        assert_eq!(
            slim.status,
            Some(SlimStatus {
                observed_generation: Some(3),
                updated_replicas: Some(2),
                ready_replicas: Some(1),
            })
        );
        let meta = &slim.metadata;
        assert_eq!(meta.generation, Some(3));
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].uid, "owner");
        assert_eq!(
            meta.annotations,
            Some(BTreeMap::from([(
                APPLIED_HASH_ANNOTATION.to_owned(),
                "abc".to_owned()
            )]))
        );
        assert!(meta.managed_fields.is_none() && meta.labels.is_none());
        // The Api path is the Deployment's.
        assert_eq!(Slim::<Deployment>::plural(&()), "deployments");
        assert_eq!(Slim::<Deployment>::api_version(&()), "apps/v1");
    }

    #[test]
    fn a_service_and_a_config_map_keep_only_metadata() {
        let service: Slim<Service> = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s1"},
            "spec": {"ports": [{"port": 80}], "clusterIP": "127.96.0.1"}
        }))
        .unwrap();
        assert_eq!(service.spec, Some(SlimSpec { replicas: None }));
        let cm: Slim<ConfigMap> = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c"}, "data": {"services.json": "{}"}
        }))
        .unwrap();
        assert!(cm.spec.is_none() && cm.status.is_none());
        assert_eq!(Slim::<ConfigMap>::kind(&()), "ConfigMap");
    }
}
