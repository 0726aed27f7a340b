//! The resources the server serves: a static table of built-in kinds plus the resources
//! that registered CustomResourceDefinitions add at run time.
//!
//! Lookups are by (group, version, plural resource); discovery documents are rendered from
//! the same table, so what discovery advertises is exactly what the REST layer serves.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Every verb of a fully served resource, in Kubernetes' discovery order.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// JSON pointers of a scale subresource: desired replicas, observed replicas, selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One served resource (a group/version/plural).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    /// Plural, lower case: `pods`, `deployments`.
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub verbs: Vec<String>,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources (`status`, `scale`, `resize`, `log`, …).
    pub subresources: Vec<String>,
    /// Whether `metadata.generation` is maintained (bumped on spec changes).
    pub tracks_generation: bool,
    /// Whether this came from a CustomResourceDefinition.
    pub custom: bool,
    /// A CRD version's `additionalPrinterColumns` (empty for built-ins).
    pub printer_columns: Vec<serde_json::Value>,
    /// Where the scale subresource reads and writes replicas.
    pub scale: Option<ScalePaths>,
}

impl ResourceInfo {
    /// `v1` for the core group, else `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key of the resource type, independent of version: `apps/deployments`.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.resource)
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.iter().any(|s| s == sub)
    }

    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
}

struct Builtin {
    group: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    tracks_generation: bool,
    verbs: &'static [&'static str],
}

const fn builtin(
    group: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Builtin {
    Builtin {
        group,
        resource,
        kind,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
        tracks_generation: false,
        verbs: ALL_VERBS,
    }
}

/// The built-in kinds (all at version v1).
const BUILTINS: &[Builtin] = &[
    Builtin {
        short_names: &["ns"],
        subresources: &["status", "finalize"],
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        ..builtin("", "namespaces", "Namespace", false)
    },
    Builtin {
        short_names: &["po"],
        categories: &["all"],
        subresources: &["status", "resize", "log"],
        tracks_generation: true,
        ..builtin("", "pods", "Pod", true)
    },
    Builtin {
        short_names: &["svc"],
        categories: &["all"],
        subresources: &["status"],
        verbs: &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
        ..builtin("", "services", "Service", true)
    },
    Builtin {
        short_names: &["ep"],
        ..builtin("", "endpoints", "Endpoints", true)
    },
    Builtin {
        short_names: &["cm"],
        ..builtin("", "configmaps", "ConfigMap", true)
    },
    builtin("", "secrets", "Secret", true),
    Builtin {
        short_names: &["sa"],
        subresources: &["token"],
        ..builtin("", "serviceaccounts", "ServiceAccount", true)
    },
    Builtin {
        short_names: &["ev"],
        ..builtin("", "events", "Event", true)
    },
    Builtin {
        short_names: &["no"],
        subresources: &["status"],
        ..builtin("", "nodes", "Node", false)
    },
    builtin("discovery.k8s.io", "endpointslices", "EndpointSlice", true),
    Builtin {
        short_names: &["ev"],
        ..builtin("events.k8s.io", "events", "Event", true)
    },
    builtin("coordination.k8s.io", "leases", "Lease", true),
    Builtin {
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &["status", "scale"],
        tracks_generation: true,
        ..builtin("apps", "deployments", "Deployment", true)
    },
    Builtin {
        short_names: &["rs"],
        categories: &["all"],
        subresources: &["status", "scale"],
        tracks_generation: true,
        ..builtin("apps", "replicasets", "ReplicaSet", true)
    },
    // Virtual resources answered by `authz`: created, never stored.
    Builtin {
        verbs: &["create"],
        ..builtin(
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
        )
    },
    Builtin {
        verbs: &["create"],
        ..builtin(
            "authorization.k8s.io",
            "selfsubjectrulesreviews",
            "SelfSubjectRulesReview",
            false,
        )
    },
    Builtin {
        verbs: &["create"],
        ..builtin(
            "authentication.k8s.io",
            "selfsubjectreviews",
            "SelfSubjectReview",
            false,
        )
    },
    builtin("rbac.authorization.k8s.io", "roles", "Role", true),
    builtin(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "RoleBinding",
        true,
    ),
    builtin(
        "rbac.authorization.k8s.io",
        "clusterroles",
        "ClusterRole",
        false,
    ),
    builtin(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    ),
    Builtin {
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        subresources: &["status"],
        tracks_generation: true,
        ..builtin(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        )
    },
];

fn singular_of(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

fn from_builtin(b: &Builtin) -> ResourceInfo {
    ResourceInfo {
        group: b.group.to_owned(),
        version: "v1".to_owned(),
        resource: b.resource.to_owned(),
        singular: singular_of(b.kind),
        kind: b.kind.to_owned(),
        namespaced: b.namespaced,
        verbs: b.verbs.iter().map(|v| (*v).to_owned()).collect(),
        short_names: b.short_names.iter().map(|v| (*v).to_owned()).collect(),
        categories: b.categories.iter().map(|v| (*v).to_owned()).collect(),
        subresources: b.subresources.iter().map(|v| (*v).to_owned()).collect(),
        tracks_generation: b.tracks_generation,
        custom: false,
        printer_columns: Vec::new(),
        scale: b.subresources.contains(&"scale").then(|| ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: Some("/spec/selector".into()),
        }),
    }
}

/// The table of served resources; cheap to clone (shared).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RwLock<Tables>>,
}

#[derive(Default)]
struct Tables {
    builtin: Vec<Arc<ResourceInfo>>,
    /// CRD name → the resources (one per served version) it defines.
    custom: BTreeMap<String, Vec<Arc<ResourceInfo>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let tables = Tables {
            builtin: BUILTINS.iter().map(|b| Arc::new(from_builtin(b))).collect(),
            custom: BTreeMap::new(),
        };
        Self {
            inner: Arc::new(RwLock::new(tables)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the table half-written (each write
        // is one insert/remove), so a poisoned lock is still consistent.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every served resource: built-ins first, then custom resources by CRD name.
    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        let tables = self.read();
        tables
            .builtin
            .iter()
            .chain(tables.custom.values().flatten())
            .cloned()
            .collect()
    }

    pub fn lookup(&self, group: &str, version: &str, resource: &str) -> Option<Arc<ResourceInfo>> {
        self.all()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.resource == resource)
    }

    /// Whether a group/version is served at all (for 404 vs. empty discovery).
    pub fn serves_group_version(&self, group: &str, version: &str) -> bool {
        self.all()
            .iter()
            .any(|r| r.group == group && r.version == version)
    }

    /// Groups with their versions, in first-registration order (preferred version first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.all() {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        versions.push(r.version.clone());
                    }
                }
                None => groups.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        groups
    }

    /// Registers (or replaces) the resources a CRD serves.
    pub fn set_custom(&self, crd_name: &str, resources: Vec<ResourceInfo>) {
        let mut tables = self.inner.write().unwrap_or_else(|e| e.into_inner());
        tables.custom.insert(
            crd_name.to_owned(),
            resources.into_iter().map(Arc::new).collect(),
        );
    }

    pub fn remove_custom(&self, crd_name: &str) {
        let mut tables = self.inner.write().unwrap_or_else(|e| e.into_inner());
        tables.custom.remove(crd_name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_found_by_group_version_resource() {
        let registry = Registry::new();
        let deploy = registry
            .lookup("apps", "v1", "deployments")
            .expect("deployments served");
        assert_eq!(deploy.kind, "Deployment");
        assert!(deploy.namespaced && deploy.tracks_generation);
        assert!(deploy.has_subresource("scale"));
        assert_eq!(deploy.storage_key(), "apps/deployments");
        assert_eq!(deploy.api_version(), "apps/v1");
        let ns = registry.lookup("", "v1", "namespaces").expect("namespaces");
        assert!(!ns.namespaced);
        assert!(!ns.supports("deletecollection"));
        assert!(registry.lookup("apps", "v1beta1", "deployments").is_none());
    }

    #[test]
    fn custom_resources_join_and_leave_the_table() {
        let registry = Registry::new();
        let mut wm = from_builtin(&builtin("cellmesh.io", "workmodels", "WorkModel", true));
        wm.version = "v1alpha1".into();
        wm.custom = true;
        registry.set_custom("workmodels.cellmesh.io", vec![wm]);
        assert!(registry.serves_group_version("cellmesh.io", "v1alpha1"));
        assert!(
            registry
                .groups()
                .iter()
                .any(|(g, v)| g == "cellmesh.io" && v == &["v1alpha1"])
        );
        registry.remove_custom("workmodels.cellmesh.io");
        assert!(
            registry
                .lookup("cellmesh.io", "v1alpha1", "workmodels")
                .is_none()
        );
    }
}
