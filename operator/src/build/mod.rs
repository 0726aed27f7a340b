//! The desired objects of a WorkModel or an App: pure functions from the resource (plus its
//! dereferenced Profiles and the operator's [`Settings`]) to the Deployments, Services and
//! ConfigMaps that should exist. No client, no clock: the same input gives the same objects,
//! byte for byte, which is what the golden fixtures in `operator/tests/fixtures/` pin down.
//!
//! Conventions shared by every built object:
//! - labels `app.kubernetes.io/{name,instance,component,managed-by,part-of}` plus the owner's
//!   `cellmesh.io/workmodel` or `cellmesh.io/app` (the orphan sweep lists by that label);
//! - one ownerReference to the WorkModel/App with `controller: true`, so garbage collection
//!   removes everything with its owner;
//! - pod templates carry `cellmesh.io/spec-hash`, a hash of exactly what the cell reads at
//!   start (its service spec and how its callees are reached). A Profile lives only in the
//!   ConfigMap (cells hot-reload it), so a Profile change never rolls pods, while an image,
//!   port or call change does;
//! - [`ResourceOverrides`] (the template recommendations of ScalingPolicies in mode
//!   `InPlaceOrRecreate`) replace the spec's requests and limits in the pod templates they
//!   name: the autoscaler wins over the user's `resources` for the pods it manages, as with
//!   VPA. They are an input like the spec, so the same policy status gives the same template
//!   and the controllers never fight over it.

pub mod app;
pub mod workmodel;

use std::collections::BTreeMap;
use std::hash::Hasher;

use cellmesh_api::service::Resources;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, ContainerResizePolicy, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe, ResourceRequirements, Service, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Label: the WorkModel an object belongs to.
pub const WORKMODEL_LABEL: &str = "cellmesh.io/workmodel";
/// Label: the App an object belongs to.
pub const APP_LABEL: &str = "cellmesh.io/app";
/// Label: the WorkModel service an object serves.
pub const SERVICE_LABEL: &str = "cellmesh.io/service";
/// Pod label: the service is an entry of its mesh (nobody calls it); the gateway selects it.
pub const ENTRY_LABEL: &str = "cellmesh.io/entry";
/// Pod-template annotation: hash of what the cell reads at start; a change rolls the pods.
pub const SPEC_HASH_ANNOTATION: &str = "cellmesh.io/spec-hash";
/// `app.kubernetes.io/managed-by` of everything the operator creates.
pub const MANAGED_BY: &str = "cellmesh-operator";
/// `app.kubernetes.io/part-of` of everything the operator creates.
pub const PART_OF: &str = "cellmesh";

/// Where the config ConfigMap is mounted in every cell.
pub const CONFIG_DIR: &str = "/etc/cellmesh";
/// The cell's ports (see `cellmesh-cell --help`).
pub const HTTP_PORT: i32 = 8080;
/// gRPC port (µBench's).
pub const GRPC_PORT: i32 = 51313;
/// Admin port: `/metrics`, `/live`, `/ready`, `/info`.
pub const ADMIN_PORT: i32 = 8081;
/// Port REST Services expose (µBench calls `http://{service}{path}` on port 80).
pub const SERVICE_HTTP_PORT: i32 = 80;

/// The operator-wide inputs of every build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Image of the cell, e.g. `ghcr.io/cellmesh/cell:0.1.0`.
    pub cell_image: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cell_image: default_cell_image(),
        }
    }
}

/// `ghcr.io/cellmesh/cell:<this operator's version>`.
pub fn default_cell_image() -> String {
    format!("ghcr.io/cellmesh/cell:{}", env!("CARGO_PKG_VERSION"))
}

/// Resources that win over the spec's in pod templates: per workload (the Deployment's name:
/// a WorkModel service, or the App) and container, the requests and limits to set, by
/// resource name (`cpu`, `memory`). Resources not named keep the spec's values.
pub type ResourceOverrides = BTreeMap<String, BTreeMap<String, ResourceRequirements>>;

/// Puts `overrides` into the pod templates of `deployments` (matched by Deployment name and
/// container name).
fn override_resources(deployments: &mut [Deployment], overrides: &ResourceOverrides) {
    for deployment in deployments {
        let Some(by_container) = deployment
            .metadata
            .name
            .as_ref()
            .and_then(|name| overrides.get(name))
        else {
            continue;
        };
        let containers = deployment
            .spec
            .iter_mut()
            .flat_map(|spec| spec.template.spec.iter_mut())
            .flat_map(|pod| pod.containers.iter_mut());
        for container in containers {
            let Some(wanted) = by_container.get(&container.name) else {
                continue;
            };
            let resources = container.resources.get_or_insert_with(Default::default);
            for (from, to) in [
                (&wanted.requests, &mut resources.requests),
                (&wanted.limits, &mut resources.limits),
            ] {
                if let Some(from) = from.as_ref().filter(|f| !f.is_empty()) {
                    to.get_or_insert_with(BTreeMap::new)
                        .extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
    }
}

/// Everything one WorkModel or App should own. Apply order is the field order: a pod must
/// find its ConfigMap, and callers their Services, before Deployments roll.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// The config ConfigMap (service specs and rendered Profiles).
    pub config_maps: Vec<ConfigMap>,
    /// A Service per service (plus the gateway).
    pub services: Vec<Service>,
    /// A Deployment per service.
    pub deployments: Vec<Deployment>,
}

/// What a build needs to know about the owner, taken from its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// `WorkModel` or `App`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid (for the ownerReference).
    pub uid: String,
}

impl Owner {
    /// The controller ownerReference every child carries.
    pub fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: cellmesh_api::crd::API_VERSION.to_owned(),
            kind: self.kind.to_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// The label naming the owner: `cellmesh.io/workmodel` or `cellmesh.io/app`.
    pub fn label(&self) -> &'static str {
        if self.kind == "App" {
            APP_LABEL
        } else {
            WORKMODEL_LABEL
        }
    }
}

/// Why an owner cannot be built: metadata a stored object always has is missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {kind} has no metadata.{field}")]
pub struct MissingMetadata {
    /// The owner's kind.
    pub kind: &'static str,
    /// The missing field.
    pub field: &'static str,
}

/// The [`Owner`] of a stored resource.
pub fn owner_of<K: kube::Resource>(
    kind: &'static str,
    object: &K,
) -> Result<Owner, MissingMetadata> {
    let meta = object.meta();
    let field =
        |value: &Option<String>, field| value.clone().ok_or(MissingMetadata { kind, field });
    Ok(Owner {
        kind,
        name: field(&meta.name, "name")?,
        namespace: field(&meta.namespace, "namespace")?,
        uid: field(&meta.uid, "uid")?,
    })
}

/// The recommended labels plus the owner label.
fn labels(owner: &Owner, name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), owner.name.clone()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), PART_OF.to_owned()),
        (owner.label().to_owned(), owner.name.clone()),
    ])
}

/// A stable 64-bit FNV-1a hash of a value's JSON form, as 16 hex digits. Stable across
/// operator builds and Rust versions (unlike `DefaultHasher`), so upgrading the operator does
/// not roll every pod. The JSON is streamed into the hasher, never built in memory.
pub fn stable_hash<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    struct Sink(fnv::FnvHasher);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Sink(fnv::FnvHasher::default());
    serde_json::to_writer(&mut sink, value)?;
    Ok(format!("{:016x}", sink.0.finish()))
}

/// Container resources from the spec's requests and limits.
fn resources(spec: Option<&Resources>) -> Option<ResourceRequirements> {
    let spec = spec?;
    let list = |list: &cellmesh_api::service::ResourceList| {
        (!list.is_empty()).then(|| {
            list.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.0.clone())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    Some(ResourceRequirements {
        requests: list(&spec.requests),
        limits: list(&spec.limits),
        ..ResourceRequirements::default()
    })
}

/// Env from the downward API: the pod's IP (the cell binds it), name and namespace.
fn downward_env() -> Vec<EnvVar> {
    [
        ("POD_IP", "status.podIP"),
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ]
    .into_iter()
    .map(|(name, path)| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    })
    .collect()
}

/// The cell container: image, args, ports, probes on the admin port, in-place resizable CPU
/// and memory, the config ConfigMap mounted read-only at [`CONFIG_DIR`].
fn cell_container(
    settings: &Settings,
    args: Vec<String>,
    spec_resources: Option<&Resources>,
) -> Container {
    let port = |name: &str, port| ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let probe = |path: &str, period, failures| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let not_required = |resource: &str| ContainerResizePolicy {
        resource_name: resource.to_owned(),
        restart_policy: "NotRequired".to_owned(),
    };
    // Listen on the pod's own address: on cellmesh-local every pod shares the host's network
    // namespace with its own 127.x address, and in a real cluster the pod IP is the address.
    let listen = [
        format!("--listen=$(POD_IP):{HTTP_PORT}"),
        format!("--grpc-listen=$(POD_IP):{GRPC_PORT}"),
        format!("--admin-listen=$(POD_IP):{ADMIN_PORT}"),
    ];
    Container {
        name: "cell".to_owned(),
        image: Some(settings.cell_image.clone()),
        args: Some(args.into_iter().chain(listen).collect()),
        env: Some(downward_env()),
        ports: Some(vec![
            port("http", HTTP_PORT),
            port("grpc", GRPC_PORT),
            port("admin", ADMIN_PORT),
        ]),
        resources: resources(spec_resources),
        resize_policy: Some(vec![not_required("cpu"), not_required("memory")]),
        readiness_probe: Some(probe("/ready", 5, 3)),
        liveness_probe: Some(probe("/live", 10, 3)),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// The pod volume of the config ConfigMap.
fn config_volume(config_map: &str) -> Volume {
    Volume {
        name: "config".to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Prometheus scrape annotations (the admin port serves `/metrics`) plus the spec hash.
fn pod_annotations(spec_hash: String) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), ADMIN_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
        (SPEC_HASH_ANNOTATION.to_owned(), spec_hash),
    ])
}

/// File name of a rendered Profile in the config ConfigMap.
pub fn profile_key(profile: &str) -> String {
    format!("profile-{profile}.yaml")
}

/// Renders a Profile's spec as the YAML a cell reads with `--profile`.
pub fn render_profile(
    spec: &cellmesh_api::profile::ProfileSpec,
) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(spec)
}
