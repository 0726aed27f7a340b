//! An App's desired objects: a Deployment of the cell in app mode and a Service, both named
//! after the App, and a ConfigMap `<app>-app` with the pipeline (`app.yaml`) and the
//! referenced Profile (`profile-<name>.yaml`).
//!
//! The cell is started with `--app /etc/cellmesh/app.yaml` (the App's `pipeline` and
//! `requestMethod`) and, with a `profileRef`, `--profile /etc/cellmesh/profile-<name>.yaml`.
//! As for WorkModels, only what the cell reads at start (the pipeline, the protocol) is
//! hashed into the pod template; a Profile change is hot-reloaded.

use std::collections::BTreeMap;

use cellmesh_api::crd::App;
use cellmesh_api::profile::ProfileSpec;
use cellmesh_api::service::RequestMethod;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::workmodel::BuildError;
use super::{
    CONFIG_DIR, Desired, GRPC_PORT, Owner, ResourceOverrides, SERVICE_HTTP_PORT, Settings,
    cell_container, config_volume, labels, override_resources, owner_of, pod_annotations,
    profile_key, render_profile, stable_hash,
};

/// Key of the pipeline document in the App's ConfigMap.
pub const APP_KEY: &str = "app.yaml";

/// Name of an App's ConfigMap.
pub fn config_map_name(app: &str) -> String {
    format!("{app}-app")
}

/// The in-cluster address of an App.
pub fn endpoint(namespace: &str, name: &str, method: RequestMethod) -> String {
    match method {
        RequestMethod::Rest => format!("http://{name}.{namespace}.svc:{SERVICE_HTTP_PORT}/"),
        RequestMethod::Grpc => format!("grpc://{name}.{namespace}.svc:{GRPC_PORT}"),
    }
}

/// The desired objects of `app`; `profile` is its dereferenced `profileRef`, if it has one;
/// `overrides` (keyed by the App's name) replace its resources in the pod template.
pub fn build(
    app: &App,
    profile: Option<&ProfileSpec>,
    settings: &Settings,
    overrides: &ResourceOverrides,
) -> Result<Desired, BuildError> {
    let owner = owner_of("App", app)?;
    let document = json!({
        "pipeline": app.spec.pipeline,
        "requestMethod": app.spec.request_method,
    });
    let app_yaml =
        serde_yaml::to_string(&document).map_err(|e| BuildError::Render(e.to_string()))?;
    let mut data = BTreeMap::from([(APP_KEY.to_owned(), app_yaml)]);
    let mut args = vec![
        format!("--app={CONFIG_DIR}/{APP_KEY}"),
        format!("--service={}", owner.name),
    ];
    if let Some(name) = &app.spec.profile_ref {
        let spec = profile.ok_or_else(|| BuildError::ProfileNotFound(name.clone()))?;
        let yaml = render_profile(spec).map_err(|e| BuildError::Render(e.to_string()))?;
        data.insert(profile_key(name), yaml);
        args.push(format!("--profile={CONFIG_DIR}/{}", profile_key(name)));
    }
    let meta = |name: String, labels| ObjectMeta {
        name: Some(name),
        namespace: Some(owner.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner.reference()]),
        ..ObjectMeta::default()
    };
    let selector = BTreeMap::from([(owner.label().to_owned(), owner.name.clone())]);
    let config_map = ConfigMap {
        metadata: meta(
            config_map_name(&owner.name),
            labels(&owner, &owner.name, "config"),
        ),
        data: Some(data),
        ..ConfigMap::default()
    };
    let port = match app.spec.request_method {
        RequestMethod::Rest => ("http", SERVICE_HTTP_PORT),
        RequestMethod::Grpc => ("grpc", GRPC_PORT),
    };
    let service = Service {
        metadata: meta(owner.name.clone(), labels(&owner, &owner.name, "app")),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some(port.0.to_owned()),
                port: port.1,
                target_port: Some(IntOrString::String(port.0.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let deployment = deployment(
        &owner,
        app,
        settings,
        args,
        &selector,
        stable_hash(&document).map_err(|e| BuildError::Render(e.to_string()))?,
    );
    let mut deployments = vec![deployment];
    override_resources(&mut deployments, overrides);
    Ok(Desired {
        config_maps: vec![config_map],
        services: vec![service],
        deployments,
    })
}

fn deployment(
    owner: &Owner,
    app: &App,
    settings: &Settings,
    args: Vec<String>,
    selector: &BTreeMap<String, String>,
    spec_hash: String,
) -> Deployment {
    let labels = labels(owner, &owner.name, "app");
    Deployment {
        metadata: ObjectMeta {
            name: Some(owner.name.clone()),
            namespace: Some(owner.namespace.clone()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner.reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(app.spec.replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(pod_annotations(spec_hash)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![cell_container(settings, args, app.spec.resources.as_ref())],
                    volumes: Some(vec![config_volume(&config_map_name(&owner.name))]),
                    enable_service_links: Some(false),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}
