//! `WorkModel` (short name `wm`): a mesh of services in µBench's workmodel format.
//!
//! `spec.services` maps a service name to the cell's own service spec
//! ([`ServiceSpec`](crate::service::ServiceSpec)), plus the fields that only make sense in a
//! cluster (`profileRef`); `spec.defaults` fills what a service leaves out.
//!
//! Admission (schema + CEL) guarantees: every service a group calls exists; no service calls
//! itself; probabilities lie in [0, 1]; `seqLen` ≥ 1; workers and threads ≥ 1. The bounds (at most [`MAX_SERVICES`] services,
//! [`MAX_GROUPS`] groups per service, [`MAX_GROUP_SERVICES`] services per group) keep the CEL
//! rules within the API server's cost budget. Service names that are not DNS labels, call
//! cycles, probabilities naming services outside their group and references inside
//! `alternativeBehaviors` are checked by the operator ([`crate::service::validate`]), which sets `Degraded` naming the problem.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::conditions::{self, Condition};
use super::set_at;
use crate::service::{RequestMethod, Resources, ServiceSpec, Services};

/// Most services one WorkModel may declare.
pub const MAX_SERVICES: u32 = 1000;
/// Most external-service groups one service may have.
pub const MAX_GROUPS: u32 = 16;
/// Most services one group may call.
pub const MAX_GROUP_SERVICES: u32 = 64;
/// Most alternative behaviours one service may have.
pub const MAX_BEHAVIORS: u32 = 8;
/// Longest service name: a DNS label, as it names the service's Deployment and Service.
pub const MAX_NAME_LENGTH: u32 = 63;

/// A mesh of services, each run by cellmesh's cell as its own Deployment and Service. The
/// services are described as in a µBench workmodel: what each computes per request and which
/// other services it calls.
// Each `printcolumn(...)` repeats `name`/`type_`/`json_path`: one column per list, not
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cellmesh.io",
    version = "v1alpha1",
    kind = "WorkModel",
    doc = "A mesh of services run by cellmesh cells, described as in a µBench workmodel: what each service computes per request and which services it calls.",
    namespaced,
    shortname = "wm",
    category = "cellmesh",
    status = "WorkModelStatus",
    cel,
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every service has its replicas ready"
    ),
    printcolumn(
        name = "Services",
        type_ = "string",
        json_path = ".status.servicesReady",
        description = "Ready services / services in the spec"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkModelSpec {
    /// Values used for every service that does not set them itself.
    #[serde(default, skip_serializing_if = "ServiceDefaults::is_empty")]
    pub defaults: ServiceDefaults,

    /// An optional single entry point: one Service that routes to every service of the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,

    /// The services by name: at least one, at most 1000. A name must be a DNS label (lower-case letters,
    /// digits and `-`, at most 63 characters, starting with a letter): it names the service's
    /// Deployment and Service, is how other services call it, and labels its metrics.
    #[schemars(schema_with = "services_schema")]
    // Static messages on purpose: a messageExpression listing the offending names would
    // make the API server estimate its cost from unbounded map keys and refuse the CRD.
    #[x_kube(
        validation = kube::core::Rule::new(
            "self.all(n, !has(self[n].externalServices) || \
             self[n].externalServices.all(g, g.services.all(s, s in self)))"
        ).message(
            "every service named in externalServices must be a service of spec.services"
        ),
        validation = kube::core::Rule::new(
            "self.all(n, !has(self[n].externalServices) || \
             self[n].externalServices.all(g, !(n in g.services)))"
        ).message("a service must not call itself in its externalServices"),
    )]
    pub services: BTreeMap<String, MeshService>,
}

impl WorkModelSpec {
    /// The services as the cell reads them (without the cluster-only fields), for the
    /// operator's checks and the cells' ConfigMap.
    pub fn cell_services(&self) -> Services {
        self.services
            .iter()
            .map(|(name, service)| (name.clone(), service.spec.clone()))
            .collect()
    }
}

/// One service of the mesh: the cell's service spec plus cluster-only settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    validation = kube::core::Rule::new(
        "has(self.internalService.computePi) != has(self.internalService.loader)"
    ).message("internalService needs exactly one function: computePi or loader"),
)]
#[serde(rename_all = "camelCase")]
pub struct MeshService {
    /// The service as a µBench workmodel describes it.
    #[serde(flatten)]
    pub spec: ServiceSpec,

    /// Name of the Profile (in the same namespace) that sets how this service's cells execute
    /// requests. Default: `spec.defaults.profileRef`, else the built-in defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub profile_ref: Option<String>,
}

impl From<ServiceSpec> for MeshService {
    fn from(spec: ServiceSpec) -> Self {
        Self {
            spec,
            profile_ref: None,
        }
    }
}

/// Per-service fallbacks: each applies to every service that does not set the field itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDefaults {
    /// Pods per service. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub replicas: Option<u32>,
    /// Worker count of each replica. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub workers: Option<u32>,
    /// Requests each worker handles concurrently. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub threads: Option<u32>,
    /// CPU and memory requests and limits of each service's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Profile used by services that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub profile_ref: Option<String>,
    /// Protocol services are called with when they name none: `rest` or `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_method: Option<RequestMethod>,
}

impl ServiceDefaults {
    /// True when no default is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A single entry point to the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// Whether the operator creates the entry Service. Default true when `gateway` is given.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

/// What the operator last observed of a WorkModel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkModelStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: every service has its replicas ready. `Progressing`: a change is being
    /// rolled out. `Degraded`: the spec cannot be realised as written (the message says why,
    /// e.g. the services of a call cycle).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions::schema")]
    pub conditions: Vec<Condition>,
    /// Ready services out of the services in the spec, e.g. `3/4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services_ready: Option<String>,
    /// Per service: ready replicas and the address other workloads call it at.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ServiceStatus>,
}

/// What the operator last observed of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Pods of this service that are ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// In-cluster address of the service, e.g. `http://s0.shop.svc:80/api/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// `spec.services`: the derived map schema plus the size bounds the CEL rules need (the API
/// server refuses rules whose worst-case cost, computed from these bounds, is too high).
///
/// Worst case of the two reference rules (derived from the bounds, not measured on a real
/// kube-apiserver): 1000 services × 16 groups × 64 callees ≈ 1.02 M iterations of a
/// constant-cost body (`s in self` is a map lookup; `n in g.services` scans at most 64 short
/// strings), a few million cost units against the 10 M per-rule limit. The rules use only
/// `in` and `has`, never string functions on map keys, whose length the estimator cannot
/// bound.
fn services_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<BTreeMap<String, MeshService>>();
    let service = "/additionalProperties/properties";
    let groups = format!("{service}/externalServices");
    let group = format!("{groups}/items/properties");
    set_at(&mut schema, "", "minProperties", json!(1));
    set_at(&mut schema, "", "maxProperties", json!(MAX_SERVICES));
    set_at(&mut schema, &groups, "maxItems", json!(MAX_GROUPS));
    set_at(
        &mut schema,
        &format!("{group}/services"),
        "maxItems",
        json!(MAX_GROUP_SERVICES),
    );
    set_at(
        &mut schema,
        &format!("{group}/services/items"),
        "maxLength",
        json!(MAX_NAME_LENGTH),
    );
    let probabilities = format!("{group}/probabilities");
    set_at(
        &mut schema,
        &probabilities,
        "maxProperties",
        json!(MAX_GROUP_SERVICES),
    );
    let probability = format!("{probabilities}/additionalProperties");
    set_at(&mut schema, &probability, "minimum", json!(0.0));
    set_at(&mut schema, &probability, "maximum", json!(1.0));
    let behaviors = format!("{service}/alternativeBehaviors");
    set_at(
        &mut schema,
        &behaviors,
        "maxProperties",
        json!(MAX_BEHAVIORS),
    );
    let behavior_groups = format!("{behaviors}/additionalProperties/properties/externalServices");
    set_at(&mut schema, &behavior_groups, "maxItems", json!(MAX_GROUPS));
    let behavior_group = format!("{behavior_groups}/items/properties");
    set_at(
        &mut schema,
        &format!("{behavior_group}/services"),
        "maxItems",
        json!(MAX_GROUP_SERVICES),
    );
    set_at(
        &mut schema,
        &format!("{behavior_group}/services/items"),
        "maxLength",
        json!(MAX_NAME_LENGTH),
    );
    set_at(
        &mut schema,
        &format!("{behavior_group}/probabilities"),
        "maxProperties",
        json!(MAX_GROUP_SERVICES),
    );
    let behavior_probability = format!("{behavior_group}/probabilities/additionalProperties");
    set_at(&mut schema, &behavior_probability, "minimum", json!(0.0));
    set_at(&mut schema, &behavior_probability, "maximum", json!(1.0));
    schema
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::Value;

    use super::*;
    use crate::crd::test_support::*;

    fn workmodel(services: Value) -> WorkModel {
        serde_json::from_value(json!({
            "apiVersion": "cellmesh.io/v1alpha1",
            "kind": "WorkModel",
            "metadata": {"name": "shop"},
            "spec": {"services": services}
        }))
        .unwrap()
    }

    fn pi() -> Value {
        json!({"computePi": {"rangeComplexity": [1, 2]}})
    }

    fn calls(services: &[&str]) -> Value {
        json!({"internalService": pi(), "externalServices": [{"services": services}]})
    }

    #[test]
    fn a_valid_chain_passes_cel() {
        let wm = workmodel(json!({
            "s0": calls(&["s1"]),
            "s1": calls(&["s2"]),
            "s2": {"internalService": pi()},
        }));
        assert_eq!(cel_messages(wm.validate_cel()), Vec::<String>::new());
    }

    #[test]
    fn calling_an_unknown_service_is_rejected() {
        let wm = workmodel(json!({
            "s0": calls(&["s1", "s9"]),
            "s1": {"internalService": pi()},
        }));
        assert_eq!(
            cel_messages(wm.validate_cel()),
            ["every service named in externalServices must be a service of spec.services"]
        );
    }

    #[test]
    fn calling_itself_is_rejected() {
        let wm = workmodel(json!({"s0": calls(&["s1"]), "s1": calls(&["s0", "s1"])}));
        assert_eq!(
            cel_messages(wm.validate_cel()),
            ["a service must not call itself in its externalServices"]
        );
    }

    #[test]
    fn internal_service_names_exactly_one_function() {
        let loader = json!({"loader": {}});
        assert!(
            workmodel(json!({"s0": {"internalService": loader}}))
                .validate_cel()
                .is_ok()
        );
        for internal in [json!({}), json!({"computePi": {}, "loader": {}})] {
            assert_eq!(
                cel_messages(
                    workmodel(json!({"s0": {"internalService": internal}})).validate_cel()
                ),
                ["internalService needs exactly one function: computePi or loader"]
            );
        }
    }

    #[test]
    fn bounds_and_probability_range_are_in_the_schema() {
        let schema = open_api_schema(&WorkModel::crd());
        let services = node(&schema, "spec.services");
        assert_eq!(services["maxProperties"], MAX_SERVICES);
        assert_eq!(services["minProperties"], 1);
        assert_eq!(node(services, "*.externalServices")["maxItems"], MAX_GROUPS);
        let group = node(services, "*.externalServices.[]");
        assert_eq!(node(group, "services")["maxItems"], MAX_GROUP_SERVICES);
        assert_eq!(node(group, "services.[]")["maxLength"], MAX_NAME_LENGTH);
        assert_eq!(node(group, "seqLen")["minimum"], 1.0);
        let probability = node(group, "probabilities.*");
        assert_eq!(
            (
                probability["minimum"].as_f64(),
                probability["maximum"].as_f64()
            ),
            (Some(0.0), Some(1.0))
        );
        let behavior_group = node(services, "*.alternativeBehaviors.*.externalServices.[]");
        assert_eq!(
            node(behavior_group, "services")["maxItems"],
            MAX_GROUP_SERVICES
        );
        assert_eq!(
            node(behavior_group, "probabilities.*")["maximum"].as_f64(),
            Some(1.0)
        );
        // The cluster-only field sits beside the µBench fields; µBench's flat keys do not.
        assert!(node(services, "*.profileRef")["type"] == "string");
        assert!(
            services["additionalProperties"]["properties"]
                .get("cpu-requests")
                .is_none()
        );
    }

    #[test]
    fn collections_the_rules_walk_are_bounded() {
        let schema = open_api_schema(&WorkModel::crd());
        let mut unbounded = Vec::new();
        unbounded_collections(node(&schema, "spec.services"), "services", &mut unbounded);
        // Only leaves no CEL rule iterates may stay unbounded.
        unbounded.retain(|p| {
            !p.contains("rangeComplexity")
                && !p.contains(".resources.")
                && !p.ends_with(".requests: maxProperties")
                && !p.ends_with(".limits: maxProperties")
        });
        assert!(unbounded.is_empty(), "{unbounded:#?}");
    }

    #[test]
    fn status_round_trips_in_camel_case() {
        let status = WorkModelStatus {
            observed_generation: Some(2),
            services_ready: Some("1/2".into()),
            services: BTreeMap::from([(
                "s0".to_owned(),
                ServiceStatus {
                    ready_replicas: 1,
                    endpoint: Some("http://s0.shop.svc:80/api/v1".into()),
                },
            )]),
            ..WorkModelStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["services"]["s0"]["readyReplicas"], 1);
        assert_eq!(json["servicesReady"], "1/2");
        assert_eq!(
            serde_json::from_value::<WorkModelStatus>(json).unwrap(),
            status
        );
    }

    #[test]
    fn cell_services_drop_cluster_only_fields() {
        let mut wm = workmodel(json!({"s0": {"internalService": pi(), "profileRef": "fast"}}));
        assert_eq!(wm.spec.services["s0"].profile_ref.as_deref(), Some("fast"));
        let cell = wm.spec.cell_services();
        let text = serde_json::to_string(&cell).unwrap();
        assert!(!text.contains("profileRef"), "{text}");
        wm.spec.services.clear();
        assert!(wm.spec.cell_services().is_empty());
    }
}
