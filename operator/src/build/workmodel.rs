//! A WorkModel's desired objects: per service a Deployment of the cell and a Service named
//! after the service (µBench's callers reach a service by its name), one ConfigMap
//! `<workmodel>-workmodel` holding the effective service specs (`workmodel.json`) and every
//! referenced Profile (`profile-<name>.yaml`), and, with `spec.gateway.enabled`, a Service
//! `<workmodel>-gateway`.
//!
//! The gateway is a plain Service (no extra proxy hop): it selects the pods of the mesh's
//! entry services — those no other service calls, labelled `cellmesh.io/entry=true` — on
//! both the REST (80) and gRPC (51313) ports. With one entry service (the usual µBench
//! shape) it is that service's address under a stable name; with several, requests are
//! spread over all of them.
//!
//! `spec.defaults` fills what a service leaves out; the ConfigMap holds the result, so every
//! cell sees the same effective values (a caller reads its callee's `requestMethod`, `url`
//! and `path` from it). `defaults.requestMethod` applies to services whose method is the
//! default `rest` (an explicit `rest` cannot be told apart from an absent one).

use std::collections::{BTreeMap, BTreeSet};

use cellmesh_api::crd::WorkModel;
use cellmesh_api::crd::workmodel::WorkModelSpec;
use cellmesh_api::profile::ProfileSpec;
use cellmesh_api::service::{RequestMethod, ServiceSpec};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec as K8sServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::{
    CONFIG_DIR, Desired, ENTRY_LABEL, GRPC_PORT, MissingMetadata, Owner, ResourceOverrides,
    SERVICE_HTTP_PORT, SERVICE_LABEL, Settings, cell_container, config_volume, labels,
    override_resources, owner_of, pod_annotations, profile_key, render_profile, stable_hash,
};

/// Key of the service specs in the config ConfigMap.
pub const WORKMODEL_KEY: &str = "workmodel.json";

/// Why a WorkModel's objects cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Stored objects always have name, namespace and uid.
    #[error(transparent)]
    Metadata(#[from] MissingMetadata),
    /// A referenced Profile was not given (the caller dereferences them first).
    #[error("Profile {0} not found")]
    ProfileNotFound(String),
    /// Serialising a spec failed (cannot happen for valid specs).
    #[error("cannot render the config: {0}")]
    Render(String),
}

/// One service with `spec.defaults` applied.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveService {
    /// The spec the cell reads, defaults filled, µBench's flat resource keys folded.
    pub spec: ServiceSpec,
    /// The Profile the service's cells use, if any.
    pub profile: Option<String>,
}

/// Every service with `spec.defaults` applied.
pub fn effective_services(spec: &WorkModelSpec) -> BTreeMap<String, EffectiveService> {
    let defaults = &spec.defaults;
    spec.services
        .iter()
        .map(|(name, service)| {
            let mut cell = service.spec.clone();
            cell.normalize();
            cell.replicas = cell.replicas.or(defaults.replicas);
            cell.workers = cell.workers.or(defaults.workers);
            cell.threads = cell.threads.or(defaults.threads);
            if cell.resources.is_none() {
                cell.resources.clone_from(&defaults.resources);
            }
            if cell.request_method == RequestMethod::default()
                && let Some(method) = defaults.request_method
            {
                cell.request_method = method;
            }
            let profile = service
                .profile_ref
                .clone()
                .or_else(|| defaults.profile_ref.clone());
            (
                name.clone(),
                EffectiveService {
                    spec: cell,
                    profile,
                },
            )
        })
        .collect()
}

/// Names of the Profiles a WorkModel's services use.
pub fn referenced_profiles(spec: &WorkModelSpec) -> BTreeSet<String> {
    effective_services(spec)
        .into_values()
        .filter_map(|s| s.profile)
        .collect()
}

/// Services no other service calls (the gateway's targets).
pub fn entry_services(services: &BTreeMap<String, EffectiveService>) -> BTreeSet<String> {
    let called: BTreeSet<&str> = services
        .values()
        .flat_map(|s| s.spec.external_services.iter())
        .flat_map(|g| g.services.iter().map(String::as_str))
        .collect();
    services
        .keys()
        .filter(|name| !called.contains(name.as_str()))
        .cloned()
        .collect()
}

/// Name of a WorkModel's config ConfigMap.
pub fn config_map_name(workmodel: &str) -> String {
    format!("{workmodel}-workmodel")
}

/// Name of a WorkModel's gateway Service.
pub fn gateway_name(workmodel: &str) -> String {
    format!("{workmodel}-gateway")
}

/// The port a REST service is called on: the one in its `url` (`host:port`), else 80.
fn rest_port(spec: &ServiceSpec) -> i32 {
    spec.url
        .as_deref()
        .and_then(|url| url.rsplit_once(':'))
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .map_or(SERVICE_HTTP_PORT, i32::from)
}

/// The in-cluster address of a service, as written into the WorkModel's status.
pub fn endpoint(namespace: &str, name: &str, spec: &ServiceSpec) -> String {
    match spec.request_method {
        RequestMethod::Rest => format!(
            "http://{name}.{namespace}.svc:{}{}",
            rest_port(spec),
            spec.path()
        ),
        RequestMethod::Grpc => format!("grpc://{name}.{namespace}.svc:{GRPC_PORT}"),
    }
}

/// Hash of what the cell of `name` reads at start: its own spec (less replicas and
/// resources, which never need a restart) and how each of its callees is reached.
fn spec_hash(
    name: &str,
    services: &BTreeMap<String, EffectiveService>,
) -> Result<String, BuildError> {
    let render = |e: serde_json::Error| BuildError::Render(e.to_string());
    let Some(own) = services.get(name) else {
        return stable_hash(&json!(null)).map_err(render);
    };
    let mut spec = own.spec.clone();
    spec.replicas = None;
    spec.resources = None;
    let callees: BTreeMap<&str, serde_json::Value> = own
        .spec
        .external_services
        .iter()
        .chain(
            own.spec
                .alternative_behaviors
                .values()
                .filter_map(|b| b.external_services.as_ref())
                .flatten(),
        )
        .flat_map(|g| g.services.iter())
        .filter_map(|callee| {
            let s = &services.get(callee)?.spec;
            Some((
                callee.as_str(),
                json!({"requestMethod": s.request_method, "url": s.url, "path": s.path}),
            ))
        })
        .collect();
    stable_hash(&json!({"spec": spec, "callees": callees})).map_err(render)
}

/// The desired objects of `wm`. `profiles` must hold every Profile its services reference
/// (see [`referenced_profiles`]); `wm` must have passed [`crate::validate::workmodel`].
/// `overrides` (keyed by service) replace the services' resources in the pod templates.
pub fn build(
    wm: &WorkModel,
    profiles: &BTreeMap<String, ProfileSpec>,
    settings: &Settings,
    overrides: &ResourceOverrides,
) -> Result<Desired, BuildError> {
    let owner = owner_of("WorkModel", wm)?;
    let services = effective_services(&wm.spec);
    let entries = entry_services(&services);
    let config_map = config_map(&owner, &services, profiles)?;
    // Sized up front: a growing Vec of 1,000 Deployments (2.4 KB each inline) would hold
    // two copies while it reallocates.
    let mut desired = Desired {
        config_maps: vec![config_map],
        services: Vec::with_capacity(services.len() + 1),
        deployments: Vec::with_capacity(services.len()),
    };
    for (name, service) in &services {
        desired
            .services
            .push(service_object(&owner, name, &service.spec));
        desired.deployments.push(deployment(
            &owner,
            settings,
            name,
            service,
            entries.contains(name),
            spec_hash(name, &services)?,
        ));
    }
    if wm.spec.gateway.as_ref().is_some_and(|g| g.enabled) {
        desired.services.push(gateway(&owner));
    }
    override_resources(&mut desired.deployments, overrides);
    Ok(desired)
}

fn meta(owner: &Owner, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(owner.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner.reference()]),
        ..ObjectMeta::default()
    }
}

fn config_map(
    owner: &Owner,
    services: &BTreeMap<String, EffectiveService>,
    profiles: &BTreeMap<String, ProfileSpec>,
) -> Result<ConfigMap, BuildError> {
    let specs: BTreeMap<&str, &ServiceSpec> = services
        .iter()
        .map(|(n, s)| (n.as_str(), &s.spec))
        .collect();
    let workmodel = serde_json::to_string(&specs).map_err(|e| BuildError::Render(e.to_string()))?;
    let mut data = BTreeMap::from([(WORKMODEL_KEY.to_owned(), workmodel)]);
    for name in services.values().filter_map(|s| s.profile.as_ref()) {
        let spec = profiles
            .get(name)
            .ok_or_else(|| BuildError::ProfileNotFound(name.clone()))?;
        let yaml = render_profile(spec).map_err(|e| BuildError::Render(e.to_string()))?;
        data.insert(profile_key(name), yaml);
    }
    let name = config_map_name(&owner.name);
    Ok(ConfigMap {
        metadata: meta(owner, name, labels(owner, &owner.name, "config")),
        data: Some(data),
        ..ConfigMap::default()
    })
}

fn selector(owner: &Owner, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (owner.label().to_owned(), owner.name.clone()),
        (SERVICE_LABEL.to_owned(), service.to_owned()),
    ])
}

fn service_labels(owner: &Owner, service: &str) -> BTreeMap<String, String> {
    let mut labels = labels(owner, service, "service");
    labels.insert(SERVICE_LABEL.to_owned(), service.to_owned());
    labels
}

fn service_object(owner: &Owner, name: &str, spec: &ServiceSpec) -> Service {
    let port = match spec.request_method {
        RequestMethod::Rest => service_port("http", rest_port(spec)),
        RequestMethod::Grpc => service_port("grpc", GRPC_PORT),
    };
    Service {
        metadata: meta(owner, name.to_owned(), service_labels(owner, name)),
        spec: Some(K8sServiceSpec {
            selector: Some(selector(owner, name)),
            ports: Some(vec![port]),
            ..K8sServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

fn gateway(owner: &Owner) -> Service {
    let selector = BTreeMap::from([
        (owner.label().to_owned(), owner.name.clone()),
        (ENTRY_LABEL.to_owned(), "true".to_owned()),
    ]);
    Service {
        metadata: meta(
            owner,
            gateway_name(&owner.name),
            labels(owner, &owner.name, "gateway"),
        ),
        spec: Some(K8sServiceSpec {
            selector: Some(selector),
            ports: Some(vec![
                service_port("http", SERVICE_HTTP_PORT),
                service_port("grpc", GRPC_PORT),
            ]),
            ..K8sServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn deployment(
    owner: &Owner,
    settings: &Settings,
    name: &str,
    service: &EffectiveService,
    entry: bool,
    spec_hash: String,
) -> Deployment {
    let mut args = vec![
        format!("--workmodel={CONFIG_DIR}/{WORKMODEL_KEY}"),
        format!("--service={name}"),
    ];
    if let Some(profile) = &service.profile {
        args.push(format!("--profile={CONFIG_DIR}/{}", profile_key(profile)));
    }
    let mut pod_labels = service_labels(owner, name);
    if entry {
        pod_labels.insert(ENTRY_LABEL.to_owned(), "true".to_owned());
    }
    let replicas = i32::try_from(service.spec.replicas()).unwrap_or(i32::MAX);
    Deployment {
        metadata: meta(owner, name.to_owned(), service_labels(owner, name)),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector(owner, name)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations(spec_hash)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![cell_container(
                        settings,
                        args,
                        service.spec.resources.as_ref(),
                    )],
                    volumes: Some(vec![config_volume(&config_map_name(&owner.name))]),
                    // A mesh of 1,000 Services would otherwise put ~7,000 variables into
                    // every container; cells find each other by name.
                    enable_service_links: Some(false),
                    // Cells never talk to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn wm(spec: serde_json::Value) -> WorkModel {
        serde_json::from_value(json!({
            "apiVersion": "cellmesh.io/v1alpha1", "kind": "WorkModel",
            "metadata": {"name": "shop", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": spec
        }))
        .unwrap()
    }

    fn pi() -> serde_json::Value {
        json!({"computePi": {"rangeComplexity": [1, 2]}})
    }

    fn template_hash(desired: &Desired, name: &str) -> String {
        let d = desired
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap();
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[SPEC_HASH]
            .clone()
    }

    const SPEC_HASH: &str = super::super::SPEC_HASH_ANNOTATION;

    fn profiles() -> BTreeMap<String, ProfileSpec> {
        BTreeMap::from([("fast".to_owned(), ProfileSpec::default())])
    }

    #[test]
    fn defaults_fill_what_a_service_leaves_out() {
        let wm = wm(json!({
            "defaults": {"replicas": 3, "workers": 2, "profileRef": "fast", "requestMethod": "grpc"},
            "services": {
                "a": {"internalService": pi(), "replicas": 1},
                "b": {"internalService": pi(), "profileRef": "slow", "workers": 4},
            }
        }));
        let services = effective_services(&wm.spec);
        assert_eq!(services["a"].spec.replicas, Some(1));
        assert_eq!(services["a"].spec.workers, Some(2));
        assert_eq!(services["a"].profile.as_deref(), Some("fast"));
        assert_eq!(services["a"].spec.request_method, RequestMethod::Grpc);
        assert_eq!(services["b"].spec.replicas, Some(3));
        assert_eq!(services["b"].spec.workers, Some(4));
        assert_eq!(services["b"].profile.as_deref(), Some("slow"));
        assert_eq!(
            referenced_profiles(&wm.spec),
            BTreeSet::from(["fast".to_owned(), "slow".to_owned()])
        );
    }

    #[test]
    fn a_missing_profile_is_an_error_not_a_panic() {
        let wm = wm(json!({"services": {"a": {"internalService": pi(), "profileRef": "nope"}}}));
        let err = build(
            &wm,
            &profiles(),
            &Settings::default(),
            &ResourceOverrides::new(),
        )
        .unwrap_err();
        assert!(
            matches!(err, BuildError::ProfileNotFound(ref p) if p == "nope"),
            "{err}"
        );
    }

    #[test]
    fn a_profile_change_leaves_pod_templates_alone() {
        let wm = wm(json!({"services": {"a": {"internalService": pi(), "profileRef": "fast"}}}));
        let before = build(
            &wm,
            &profiles(),
            &Settings::default(),
            &ResourceOverrides::new(),
        )
        .unwrap();
        let mut changed = profiles();
        changed.get_mut("fast").unwrap().queue_limit = 7;
        let after = build(
            &wm,
            &changed,
            &Settings::default(),
            &ResourceOverrides::new(),
        )
        .unwrap();
        assert_eq!(before.deployments, after.deployments);
        assert_ne!(before.config_maps, after.config_maps);
        let data = after.config_maps[0].data.as_ref().unwrap();
        assert!(
            data["profile-fast.yaml"].contains("queueLimit: 7"),
            "{data:?}"
        );
    }

    #[test]
    fn replicas_and_resources_do_not_roll_but_calls_and_callee_ports_do() {
        let base = json!({"services": {
            "a": {"internalService": pi(), "externalServices": [{"services": ["b"]}]},
            "b": {"internalService": pi()},
            "c": {"internalService": pi()},
        }});
        let hashes = |spec: &serde_json::Value| {
            let desired = build(
                &wm(spec.clone()),
                &profiles(),
                &Settings::default(),
                &ResourceOverrides::new(),
            )
            .unwrap();
            ["a", "b", "c"].map(|n| template_hash(&desired, n))
        };
        let [a, b, c] = hashes(&base);

        let mut scaled = base.clone();
        scaled["services"]["a"]["replicas"] = json!(5);
        scaled["services"]["a"]["resources"] = json!({"limits": {"cpu": "2"}});
        assert_eq!(hashes(&scaled), [a.clone(), b.clone(), c.clone()]);

        // b becomes gRPC: b and its caller a roll, c does not.
        let mut grpc = base.clone();
        grpc["services"]["b"]["requestMethod"] = json!("grpc");
        let [a2, b2, c2] = hashes(&grpc);
        assert_ne!(a2, a);
        assert_ne!(b2, b);
        assert_eq!(c2, c);

        // a calls c too: only a rolls.
        let mut calls = base.clone();
        calls["services"]["a"]["externalServices"] = json!([{"services": ["b", "c"]}]);
        let [a3, b3, c3] = hashes(&calls);
        assert_ne!(a3, a);
        assert_eq!([b3, c3], [b, c]);
    }

    #[test]
    fn the_gateway_selects_the_entry_services() {
        let wm = wm(json!({"gateway": {}, "services": {
            "front": {"internalService": pi(), "externalServices": [{"services": ["back"]}]},
            "back": {"internalService": pi()},
        }}));
        let desired = build(
            &wm,
            &profiles(),
            &Settings::default(),
            &ResourceOverrides::new(),
        )
        .unwrap();
        let gateway = desired
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("shop-gateway"))
            .unwrap();
        let selector = gateway.spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert_eq!(selector[ENTRY_LABEL], "true");
        assert_eq!(selector[super::super::WORKMODEL_LABEL], "shop");
        let pod_labels = |name: &str| {
            desired
                .deployments
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(name))
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .clone()
                .unwrap()
        };
        assert_eq!(
            pod_labels("front").get(ENTRY_LABEL).map(String::as_str),
            Some("true")
        );
        assert_eq!(pod_labels("back").get(ENTRY_LABEL), None);
    }

    #[test]
    fn endpoints_follow_the_protocol_and_url() {
        let mut spec = ServiceSpec::new(Default::default());
        assert_eq!(endpoint("ns", "s0", &spec), "http://s0.ns.svc:80/api/v1");
        spec.url = Some("s0:8000".to_owned());
        spec.path = Some("/x".to_owned());
        assert_eq!(endpoint("ns", "s0", &spec), "http://s0.ns.svc:8000/x");
        spec.request_method = RequestMethod::Grpc;
        assert_eq!(endpoint("ns", "s0", &spec), "grpc://s0.ns.svc:51313");
    }

    #[test]
    fn template_overrides_win_over_the_spec_s_resources_of_the_services_they_name() {
        let wm = wm(json!({
            "defaults": {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                                       "limits": {"cpu": "500m", "memory": "128Mi"}}},
            "services": {"a": {"internalService": pi()}, "b": {"internalService": pi()}}
        }));
        let plain = build(
            &wm,
            &profiles(),
            &Settings::default(),
            &ResourceOverrides::new(),
        )
        .unwrap();
        let overrides: ResourceOverrides = serde_json::from_value(json!({"a": {"cell": {
            "requests": {"cpu": "625m"}, "limits": {"cpu": "1250m"}}}}))
        .unwrap();
        let sized = build(&wm, &profiles(), &Settings::default(), &overrides).unwrap();
        let resources = |desired: &Desired, name: &str| {
            let d = desired
                .deployments
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(name))
                .unwrap();
            serde_json::to_value(
                &d.spec
                    .as_ref()
                    .unwrap()
                    .template
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers[0]
                    .resources,
            )
            .unwrap()
        };
        assert_eq!(
            resources(&sized, "a"),
            json!({"requests": {"cpu": "625m", "memory": "64Mi"},
                   "limits": {"cpu": "1250m", "memory": "128Mi"}})
        );
        assert_eq!(resources(&sized, "b"), resources(&plain, "b"));
        // Only the resources change: what the cell reads at start is the same.
        assert_eq!(template_hash(&sized, "a"), template_hash(&plain, "a"));
        // The same overrides give the same objects (no flip-flop between reconciles).
        assert_eq!(
            sized,
            build(&wm, &profiles(), &Settings::default(), &overrides).unwrap()
        );
    }
}
