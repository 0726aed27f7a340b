//! `Profile`: how a cell executes requests. The spec is the engine's
//! [`ProfileSpec`](crate::profile::ProfileSpec), the same document a cell reads from its
//! `--profile` file, so the operator renders a Profile into a ConfigMap unchanged.
//!
//! The CRD schema is the derived one with three adjustments, made here rather than in the
//! engine's type: `poolLimit` as an int-or-string whose checks (≥ 1, `auto`) sit beside the
//! `anyOf` (kube's structural rewrite empties the branches, which would drop them), bounds (`concurrency` ≥ 1, short duration strings) and CEL rules for what involves two
//! fields or a zero duration — the same checks as [`ProfileSpec::validate`], so the API
//! server refuses what a cell would refuse.

use std::ops::{Deref, DerefMut};

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::conditions::{self, Condition};
use super::set_at;
use crate::profile::ProfileSpec;

/// How cellmesh's cells execute requests: isolation, worker pool bounds, admission limits
/// and timeouts. Apps and WorkModel services name a Profile in `profileRef`; running cells
/// pick up a change without restarting.
// Each `printcolumn(...)` repeats `name`/`type_`/`json_path`: one column per list, not
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cellmesh.io",
    version = "v1alpha1",
    kind = "Profile",
    doc = "How cellmesh cells execute requests: isolation, worker pool, queue limit and timeouts. Apps and WorkModel services name a Profile in profileRef.",
    namespaced,
    category = "cellmesh",
    status = "ProfileStatus",
    cel,
    printcolumn(name = "Isolate", type_ = "string", json_path = ".spec.isolate"),
    printcolumn(
        name = "Concurrency",
        type_ = "integer",
        json_path = ".spec.concurrency",
        description = "Requests in flight per worker"
    ),
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.poolLimit",
        description = "Most workers per pod"
    ),
    printcolumn(
        name = "Queue",
        type_ = "integer",
        json_path = ".spec.queueLimit",
        description = "Most waiting requests per pod"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct ProfileResourceSpec(#[schemars(schema_with = "spec_schema")] pub ProfileSpec);

impl Deref for ProfileResourceSpec {
    type Target = ProfileSpec;

    fn deref(&self) -> &ProfileSpec {
        &self.0
    }
}

impl DerefMut for ProfileResourceSpec {
    fn deref_mut(&mut self) -> &mut ProfileSpec {
        &mut self.0
    }
}

impl From<ProfileSpec> for ProfileResourceSpec {
    fn from(spec: ProfileSpec) -> Self {
        Self(spec)
    }
}

/// What the operator last observed of a Profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the profile is valid and rendered for every App and service that uses it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions::schema")]
    pub conditions: Vec<Condition>,
}

/// A duration string that is zero in every part (`0`, `0s`, `0ms`, `0m0s`, …).
const ZERO_DURATION: &str = "^(0+ ?(ns|us|µs|ms|s|m|h) ?)+$|^0$";

fn spec_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<ProfileSpec>();
    // A structural int-or-string is `anyOf: [{type: integer}, {type: string}]` and nothing
    // else inside the branches (kube strips even the types); the value checks sit beside it,
    // each applying to its own type only.
    let pool_limit_doc = schema
        .pointer("/properties/poolLimit/description")
        .cloned()
        .unwrap_or_else(|| json!("Maximum number of workers: a number or auto."));
    set_at(
        &mut schema,
        "/properties",
        "poolLimit",
        json!({
            "description": pool_limit_doc,
            "default": "auto",
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 1,
            "pattern": "^(auto|[1-9][0-9]*)$"
        }),
    );
    set_at(&mut schema, "/properties/concurrency", "minimum", json!(1));
    for duration in [
        "/properties/idleTimeout",
        "/properties/requestTimeout",
        "/properties/startupTimeout",
        "/properties/terminationTimeout",
        "/properties/batch/properties/wait",
    ] {
        set_at(&mut schema, duration, "maxLength", json!(64));
    }
    set_at(
        &mut schema,
        "",
        "x-kubernetes-validations",
        json!([
            {
                "rule": "string(self.poolLimit) == 'auto' || self.poolMin <= int(string(self.poolLimit))",
                "message": "poolMin must not exceed poolLimit"
            },
            {
                "rule": format!("!self.requestTimeout.matches('{ZERO_DURATION}')"),
                "message": "requestTimeout must be positive"
            },
            {
                "rule": format!("!self.startupTimeout.matches('{ZERO_DURATION}')"),
                "message": "startupTimeout must be positive"
            },
            {
                "rule": format!("self.batch.size > 1 || self.batch.wait.matches('{ZERO_DURATION}')"),
                "message": "batch.wait is only meaningful with batch.size greater than 1"
            }
        ]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;
    use crate::crd::test_support::*;
    use crate::profile::{HumanDuration, PoolLimit};

    fn profile(spec: ProfileSpec) -> Profile {
        Profile::new("fast", spec.into())
    }

    #[test]
    fn defaults_pass() {
        assert!(profile(ProfileSpec::default()).validate_cel().is_ok());
    }

    #[test]
    fn spec_is_the_engines_document_unchanged() {
        let p: Profile = serde_json::from_value(json!({
            "apiVersion": "cellmesh.io/v1alpha1", "kind": "Profile",
            "metadata": {"name": "fast"},
            "spec": {"isolate": "thread", "poolLimit": 4, "requestTimeout": "2s"}
        }))
        .unwrap();
        assert_eq!(p.spec.pool_limit, PoolLimit::Fixed(4));
        let spec = serde_json::to_value(&p.spec).unwrap();
        assert_eq!(
            serde_json::from_value::<ProfileSpec>(spec).unwrap(),
            p.spec.0
        );
    }

    #[test]
    fn pool_min_above_a_fixed_pool_limit_is_rejected() {
        let spec = |pool_min, pool_limit| ProfileSpec {
            pool_min,
            pool_limit,
            ..ProfileSpec::default()
        };
        assert!(profile(spec(4, PoolLimit::Fixed(4))).validate_cel().is_ok());
        assert!(profile(spec(50, PoolLimit::Auto)).validate_cel().is_ok());
        assert_eq!(
            cel_messages(profile(spec(5, PoolLimit::Fixed(4))).validate_cel()),
            ["poolMin must not exceed poolLimit"]
        );
    }

    #[test]
    fn zero_timeouts_and_lonely_batch_wait_are_rejected() {
        let zero = ProfileSpec {
            request_timeout: HumanDuration::from_secs(0),
            startup_timeout: HumanDuration::from_millis(0),
            ..ProfileSpec::default()
        };
        assert_eq!(
            cel_messages(profile(zero).validate_cel()),
            [
                "requestTimeout must be positive",
                "startupTimeout must be positive"
            ]
        );
        let mut batch = ProfileSpec::default();
        batch.batch.wait = HumanDuration::from_millis(5);
        batch.batch.size = 1;
        assert_eq!(
            cel_messages(profile(batch.clone()).validate_cel()),
            ["batch.wait is only meaningful with batch.size greater than 1"]
        );
        batch.batch.size = 8;
        assert!(profile(batch).validate_cel().is_ok());
    }

    #[test]
    fn pool_limit_is_a_structural_int_or_string_with_its_checks_beside_it() {
        let schema = open_api_schema(&Profile::crd());
        let pool_limit = node(&schema, "spec.poolLimit");
        // kube's structural rewrite empties the branches; the checks must sit beside them.
        assert_eq!(pool_limit["x-kubernetes-int-or-string"], true);
        assert_eq!(pool_limit["anyOf"].as_array().map(Vec::len), Some(2));
        assert!(
            pool_limit["anyOf"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b.get("type").is_none())
        );
        assert_eq!(pool_limit["minimum"].as_f64(), Some(1.0));
        assert_eq!(pool_limit["pattern"], "^(auto|[1-9][0-9]*)$");
        assert!(pool_limit["description"].as_str().unwrap().contains("auto"));
        assert_eq!(
            node(&schema, "spec.concurrency")["minimum"].as_f64(),
            Some(1.0)
        );
    }
}
