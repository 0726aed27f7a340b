//! Applying a [`Desired`] set: server-side apply with the one field manager
//! [`FIELD_MANAGER`] (forcing conflicts, as a controller should), then deleting what the owner
//! controls and no longer wants.
//!
//! Reads come from [`Caches`]: reflector stores fed by watches on the objects the operator
//! manages, holding only the fields a reconcile reads ([`crate::cache`]), never from LISTs
//! (a LIST of 1,000 Deployments is megabytes the API server must serialise on every
//! reconcile). Every applied object carries [`APPLIED_HASH_ANNOTATION`], a
//! hash of exactly what was applied; an object whose cached hash equals the desired one is
//! skipped, so an unchanged 1,000-service WorkModel costs no API call at all. A stale cache
//! only costs a redundant apply or a delete that finds nothing. Drift made by someone else on
//! a skipped object is corrected by a full apply, which runs on the first reconcile of each
//! owner after the operator starts and every [`crate::controller::FULL_APPLY_EVERY`] after.
//!
//! The apply answers are parsed into the same [`Slim`] objects: 32 writes are in flight at
//! once, and 1,000 full answers (managedFields included) were the operator's memory peak.
//!
//! Order: ConfigMaps, then Services, then Deployments (a new pod must find its config, and
//! callers their callees' Services), then the orphan sweep. The sweep only deletes objects
//! whose controller ownerReference is this owner's uid, never anything merely labelled alike.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;

use crate::build::{Desired, Owner, stable_hash};
pub use crate::cache::Caches;
use crate::cache::{Slim, slim_meta};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "cellmesh-operator";
/// Annotation: hash of the object as the operator last applied it.
pub const APPLIED_HASH_ANNOTATION: &str = "cellmesh.io/applied-hash";
/// Writes in flight at once per reconcile.
const CONCURRENCY: usize = 32;

/// What one apply changed, as `Kind/name` strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Objects that did not exist.
    pub created: Vec<String>,
    /// Objects whose applied content changed.
    pub updated: Vec<String>,
    /// Owned objects no longer wanted.
    pub deleted: Vec<String>,
}

impl Changes {
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }
}

/// The result of an apply: the changes and the live Deployments by name (for status).
#[derive(Debug, Default)]
pub struct Applied {
    /// What was written.
    pub changes: Changes,
    /// The owner's Deployments as last seen (the apply's answer, else the cache).
    pub deployments: BTreeMap<String, Arc<Slim<Deployment>>>,
}

/// Stamps `object` with the hash of its own content (without the stamp).
pub fn stamp<K: Resource + Serialize>(object: &mut K) -> Result<String, serde_json::Error> {
    let annotations = object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.remove(APPLIED_HASH_ANNOTATION);
    if annotations.is_empty() {
        object.meta_mut().annotations = None;
    }
    let hash = stable_hash(&*object)?;
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash.clone());
    Ok(hash)
}

/// Whether `object`'s controller ownerReference is `owner`.
fn controlled_by<K: Resource>(object: &K, owner: &Owner) -> bool {
    object
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner.uid)
}

/// Applies `desired` for `owner` and deletes the owner's objects that are not in it.
/// `full` forces a write of every object, even one whose hash is unchanged.
pub async fn apply(
    client: &Client,
    caches: &Caches,
    owner: &Owner,
    desired: Desired,
    full: bool,
) -> Result<Applied, kube::Error> {
    let Desired {
        config_maps,
        services,
        deployments,
    } = desired;
    let mut changes = Changes::default();
    let cms = Kind::load(client, &caches.config_maps, owner);
    let svcs = Kind::load(client, &caches.services, owner);
    let deps = Kind::load(client, &caches.deployments, owner);
    let cms = cms.apply(config_maps, full, &mut changes).await?;
    let svcs = svcs.apply(services, full, &mut changes).await?;
    let deps = deps.apply(deployments, full, &mut changes).await?;
    // Deployments first: their pods stop using a ConfigMap before it goes.
    let deployments = deps.sweep(&mut changes).await?;
    svcs.sweep(&mut changes).await?;
    cms.sweep(&mut changes).await?;
    Ok(Applied {
        changes,
        deployments,
    })
}

/// One kind of child: its API, the owner's live objects, and the names applied this run.
struct Kind<K> {
    api: Api<Slim<K>>,
    live: BTreeMap<String, Arc<Slim<K>>>,
    wanted: BTreeSet<String>,
}

impl<K> Kind<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + Send
        + Sync
        + 'static,
{
    fn load(client: &Client, cache: &Store<Slim<K>>, owner: &Owner) -> Self {
        let api: Api<Slim<K>> = Api::namespaced(client.clone(), &owner.namespace);
        let live = cache
            .state()
            .into_iter()
            .filter(|o| o.namespace().as_deref() == Some(owner.namespace.as_str()))
            .filter(|o| controlled_by(o.as_ref(), owner))
            .map(|o| (o.name_any(), o))
            .collect();
        Self {
            api,
            live,
            wanted: BTreeSet::new(),
        }
    }

    async fn apply(
        mut self,
        objects: Vec<K>,
        full: bool,
        changes: &mut Changes,
    ) -> Result<Self, kube::Error> {
        let kind = K::kind(&());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut writes = Vec::new();
        for mut object in objects {
            let name = object.name_any();
            let hash = stamp(&mut object).map_err(kube::Error::SerdeError)?;
            self.wanted.insert(name.clone());
            let live = self.live.get(&name);
            let live_hash = live.and_then(|o| o.annotations().get(APPLIED_HASH_ANNOTATION));
            if !full && live_hash == Some(&hash) {
                continue;
            }
            let existed = live.is_some();
            let changed = live_hash != Some(&hash);
            writes.push((name, object, existed, changed));
        }
        let api = &self.api;
        let params = &params;
        let results: Vec<(String, Slim<K>, bool, bool)> = futures::stream::iter(writes)
            .map(|(name, object, existed, changed)| async move {
                let mut live = api.patch(&name, params, &Patch::Apply(&object)).await?;
                slim_meta(&mut live.metadata);
                Ok::<_, kube::Error>((name, live, existed, changed))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for (name, live, existed, changed) in results {
            if !existed {
                changes.created.push(format!("{kind}/{name}"));
            } else if changed {
                changes.updated.push(format!("{kind}/{name}"));
            }
            self.live.insert(name, Arc::new(live));
        }
        Ok(self)
    }

    /// Deletes the live objects not wanted this run; returns the wanted live ones.
    async fn sweep(
        self,
        changes: &mut Changes,
    ) -> Result<BTreeMap<String, Arc<Slim<K>>>, kube::Error> {
        let kind = K::kind(&());
        let Self {
            api, live, wanted, ..
        } = self;
        let (keep, orphans): (BTreeMap<_, _>, BTreeMap<_, _>) = live
            .into_iter()
            .partition(|(name, _)| wanted.contains(name));
        let api = &api;
        let deleted: Vec<String> = futures::stream::iter(orphans.into_keys())
            .map(|name| async move {
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => Ok(Some(name)),
                    // Already gone: what we wanted.
                    Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
                    Err(error) => Err(error),
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        changes
            .deleted
            .extend(deleted.into_iter().map(|name| format!("{kind}/{name}")));
        Ok(keep)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    #[test]
    fn the_stamp_is_stable_and_ignores_an_old_stamp() {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("x".to_owned());
        let first = stamp(&mut cm).unwrap();
        assert_eq!(cm.annotations()[APPLIED_HASH_ANNOTATION], first);
        // Stamping again (the old stamp is present) gives the same hash.
        assert_eq!(stamp(&mut cm).unwrap(), first);
        cm.data = Some(BTreeMap::from([("k".to_owned(), "v".to_owned())]));
        assert_ne!(stamp(&mut cm).unwrap(), first);
    }
}
