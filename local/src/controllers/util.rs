//! Small helpers shared by the controllers: error classification, owner references,
//! timestamps and a coalescing work queue.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

/// Whether a kube error is the API server's 404.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// Whether a kube error is a 409 (conflict / already exists) or a failed JSON-patch test,
/// i.e. the cached view was stale and the next pass will redo the work.
pub fn is_stale(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409 || status.code == 422)
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// A controller reference to `owner` (`controller` and `blockOwnerDeletion` set, as the
/// built-in controllers write them).
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

pub fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// The name of an object for logs: `namespace/name`.
pub fn key_of(meta: &ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// A served resource the generic controllers (garbage collector, namespace deleter) act
/// on, as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub resource: kube::discovery::ApiResource,
    pub namespaced: bool,
    pub deletecollection: bool,
}

impl Served {
    /// `group/plural`: one entry per resource whatever the version.
    pub fn key(&self) -> String {
        format!("{}/{}", self.resource.group, self.resource.plural)
    }

    /// An API for the resource, in `namespace` when it is namespaced.
    pub fn api(
        &self,
        client: &kube::Client,
        namespace: Option<&str>,
    ) -> kube::Api<kube::api::DynamicObject> {
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => kube::Api::namespaced_with(client.clone(), ns, &self.resource),
            None => kube::Api::all_with(client.clone(), &self.resource),
        }
    }
}

/// Events are never owners nor owned in practice and are the noisiest resource: Kubernetes'
/// garbage collector ignores them too.
fn ignored(resource: &kube::discovery::ApiResource) -> bool {
    resource.plural == "events" && matches!(resource.group.as_str(), "" | "events.k8s.io")
}

/// Every resource (preferred version of each group) that can be listed, watched and
/// deleted, events excepted.
pub async fn discover(client: &kube::Client) -> Result<Vec<Served>, kube::Error> {
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await?;
    let mut served = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            let usable = ["list", "watch", "delete"]
                .iter()
                .all(|op| caps.supports_operation(op));
            if !usable || ignored(&resource) || resource.plural.contains('/') {
                continue;
            }
            served.push(Served {
                namespaced: caps.scope == kube::discovery::Scope::Namespaced,
                deletecollection: caps.supports_operation("deletecollection"),
                resource,
            });
        }
    }
    Ok(served)
}
