//! `App`: one application, Cocaine-style: the bundled cell running a pipeline of stages
//! ([`Stage`]), sized and served like a single service.
//!
//! Admission guarantees the top stage names exactly one kind and that `args` / `failFast`
//! appear only where they mean something; nested stages are free-form in the schema (a
//! structural schema cannot be recursive) and are checked by the operator with
//! [`Stage::validate`], which names the failing stage's path in a `Degraded` condition.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{self, Condition};
use crate::pipeline::Stage;
use crate::service::{RequestMethod, Resources};

/// Replica count of an App that names none.
pub const DEFAULT_REPLICAS: u32 = 1;

/// One application: cellmesh's cell running a pipeline of stages, as a Deployment and a
/// Service.
// Each `printcolumn(...)` repeats `name`/`type_`/`json_path`: one column per list, not
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cellmesh.io",
    version = "v1alpha1",
    kind = "App",
    doc = "One application: a cellmesh cell running a pipeline of stages, served as a Deployment and a Service.",
    namespaced,
    category = "cellmesh",
    status = "AppStatus",
    cel,
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the desired replicas are ready"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired pods"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready pods"
    ),
    printcolumn(name = "Profile", type_ = "string", json_path = ".spec.profileRef"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Number of pods running the app (0 stops it). Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(max = 1000))]
    pub replicas: u32,

    /// Name of the Profile (in the same namespace) that sets how the cells execute requests:
    /// isolation, worker pool, queue limit, timeouts. Default: the built-in defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub profile_ref: Option<String>,

    /// What the app does per request: a stage with exactly one of `function` (a built-in
    /// function with `args`), `exec` (user worker processes speaking newline-delimited JSON),
    /// `sequential` (stages in order), `ensemble` (stages in parallel, with `failFast`) or
    /// `switch` (one case chosen by a request field). Stages nest.
    #[x_kube(
        validation = kube::core::Rule::new(
            "[has(self.__function__), has(self.exec), has(self.sequential), has(self.ensemble), \
             has(self.switch)].filter(k, k).size() == 1"
        ).message(
            "a stage needs exactly one of function, exec, sequential, ensemble or switch"
        ),
        validation = kube::core::Rule::new("!has(self.args) || has(self.__function__)")
            .message("args is only valid with function"),
        validation = kube::core::Rule::new("!has(self.failFast) || has(self.ensemble)")
            .message("failFast is only valid with ensemble"),
    )]
    pub pipeline: Stage,

    /// CPU and memory requests and limits of the app's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// Protocol the app is served with: `rest` (HTTP) or `grpc`. Default `rest`.
    #[serde(default)]
    pub request_method: RequestMethod,
}

fn default_replicas() -> u32 {
    DEFAULT_REPLICAS
}

/// What the operator last observed of an App.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the desired replicas are ready. `Progressing`: a change is rolling out.
    /// `Degraded`: the spec cannot be realised (e.g. an invalid nested stage; the message
    /// names it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions::schema")]
    pub conditions: Vec<Condition>,
    /// Pods created for the app (used by `kubectl scale`).
    #[serde(default)]
    pub replicas: u32,
    /// Pods of the app that are ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// In-cluster address of the app, e.g. `http://scorer.default.svc:80/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::crd::test_support::*;

    fn app(pipeline: Value) -> App {
        serde_json::from_value(json!({
            "apiVersion": "cellmesh.io/v1alpha1",
            "kind": "App",
            "metadata": {"name": "scorer"},
            "spec": {"pipeline": pipeline}
        }))
        .unwrap()
    }

    #[test]
    fn defaults_fill_replicas_and_protocol() {
        let app = app(json!({"function": "echo"}));
        assert_eq!(app.spec.replicas, 1);
        assert_eq!(app.spec.request_method, RequestMethod::Rest);
        assert!(app.validate_cel().is_ok());
    }

    #[test]
    fn each_stage_kind_alone_is_accepted() {
        for pipeline in [
            json!({"function": "computePi", "args": {"rangeComplexity": [1, 2]}}),
            json!({"exec": {"command": ["/app/worker"]}}),
            json!({"sequential": [{"function": "echo"}]}),
            json!({"ensemble": [{"function": "echo"}, {"function": "echo"}], "failFast": true}),
            json!({"switch": {"on": "/kind", "cases": {"a": {"function": "echo"}}}}),
        ] {
            let app = app(pipeline.clone());
            assert_eq!(
                cel_messages(app.validate_cel()),
                Vec::<String>::new(),
                "{pipeline}"
            );
        }
    }

    #[test]
    fn a_stage_without_or_with_two_kinds_is_rejected() {
        for pipeline in [
            json!({"name": "nothing"}),
            json!({"function": "echo", "exec": {"command": ["x"]}}),
            json!({"switch": {"on": "/k", "cases": {}}, "sequential": []}),
        ] {
            assert_eq!(
                cel_messages(app(pipeline.clone()).validate_cel()),
                ["a stage needs exactly one of function, exec, sequential, ensemble or switch"],
                "{pipeline}"
            );
        }
    }

    #[test]
    fn misplaced_options_are_rejected() {
        assert_eq!(
            cel_messages(app(json!({"exec": {"command": ["x"]}, "args": {}})).validate_cel()),
            ["args is only valid with function"]
        );
        assert_eq!(
            cel_messages(app(json!({"function": "echo", "failFast": true})).validate_cel()),
            ["failFast is only valid with ensemble"]
        );
    }

    #[test]
    fn scale_subresource_points_at_replicas() {
        use kube::CustomResourceExt;
        let crd = App::crd();
        let scale = crd.spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.scale.as_ref())
            .unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
    }
}
