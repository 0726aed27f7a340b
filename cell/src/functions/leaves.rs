//! The µBench functions as engine leaves, so `isolate: thread | process` really runs them
//! on the engine's workers.
//!
//! Contract ([`cell_functions`] registers them next to the engine's `echo` and `sleep`; the
//! cell's parent and its worker processes must use the same registry):
//! - `computePi` / `loader` (App pipelines): `args` are the function's µBench parameters
//!   (camelCase or snake_case, validated at load time like a workmodel's); the input is
//!   ignored; the single output is the response body as a JSON string.
//! - [`INTERNAL_SERVICE`] (a workmodel service's internal function): `args` are
//!   [`InternalArgs`] (the spec's internal service, its alternative behaviours' and the
//!   disk stressor's scratch directory); the input is `{"bid": <name>}` or `null`; the
//!   single output is a [`BodySpec`], which the acceptor materializes (a worker process
//!   sends a few bytes, not the body). An unknown `bid` runs the default, as µBench.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cellmesh_api::service::{InternalService, Services};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{BodySpec, Placement, run};
use crate::engine::{Emitter, Function, Functions};

/// Name of the leaf running a workmodel service's internal function.
pub const INTERNAL_SERVICE: &str = "internalService";

/// `args` of the [`INTERNAL_SERVICE`] leaf.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalArgs {
    /// The service's own internal function.
    pub default: InternalService,
    /// Alternative behaviours that replace the internal function, by `bid`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub behaviors: BTreeMap<String, InternalService>,
    /// Directory of the disk stressor's scratch files (default: the system temp dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_dir: Option<PathBuf>,
}

/// The engine's built-in functions plus `computePi`, `loader` and [`INTERNAL_SERVICE`],
/// running their blocking work as `placement` says.
pub fn cell_functions(placement: Placement) -> Functions {
    let mut functions = Functions::builtin();
    for name in ["computePi", "loader"] {
        functions.register(name, move |args| {
            let internal = parse_function_args(name, args)?;
            Ok(Arc::new(Standalone {
                internal,
                placement,
                scratch_dir: std::env::temp_dir(),
            }))
        });
    }
    functions.register(INTERNAL_SERVICE, move |args| {
        let args: InternalArgs = serde_json::from_value(args.cloned().unwrap_or(Value::Null))
            .map_err(|e| format!("{INTERNAL_SERVICE} args: {e}"))?;
        Ok(Arc::new(Internal {
            scratch_dir: args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
            args,
            placement,
        }))
    });
    functions
}

/// `args` of `computePi` / `loader`, checked as a workmodel's internal service would be.
fn parse_function_args(name: &str, args: Option<&Value>) -> Result<InternalService, String> {
    let params = args.cloned().unwrap_or_else(|| json!({}));
    let wrapped = json!({ "leaf": { "internalService": { name: params } } });
    let services: Services =
        serde_json::from_value(wrapped).map_err(|e| format!("{name} args: {e}"))?;
    cellmesh_api::service::validate(&services).map_err(|errors| {
        errors
            .0
            .iter()
            .map(|e| {
                let field = e
                    .path
                    .strip_prefix("leaf.internalService.")
                    .unwrap_or(&e.path);
                format!("args: {field}: {}", e.message)
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    services
        .into_values()
        .next()
        .map(|spec| spec.internal_service)
        .ok_or_else(|| format!("{name} args: nothing parsed"))
}

/// `computePi` or `loader` in an App pipeline.
struct Standalone {
    internal: InternalService,
    placement: Placement,
    scratch_dir: PathBuf,
}

impl Function for Standalone {
    fn call<'a>(&'a self, _: Value, out: &'a Emitter) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let function = self
                .internal
                .function()
                .ok_or("the stage names no function")?;
            let body = run(function, &self.scratch_dir, self.placement)
                .await
                .map_err(|e| e.to_string())?
                .materialize();
            // Bodies are ASCII filler.
            out.emit(Value::String(String::from_utf8_lossy(&body).into_owned()))
        })
    }
}

/// A workmodel service's internal function.
struct Internal {
    args: InternalArgs,
    scratch_dir: PathBuf,
    placement: Placement,
}

impl Function for Internal {
    fn call<'a>(&'a self, input: Value, out: &'a Emitter) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let internal = input
                .get("bid")
                .and_then(Value::as_str)
                .and_then(|bid| self.args.behaviors.get(bid))
                .unwrap_or(&self.args.default);
            let function = internal
                .function()
                .ok_or("the selected behaviour names no internal function")?;
            let body = run(function, &self.scratch_dir, self.placement)
                .await
                .map_err(|e| e.to_string())?;
            out.emit(serde_json::to_value(body).map_err(|e| e.to_string())?)
        })
    }
}

/// Reads the [`INTERNAL_SERVICE`] leaf's output.
pub fn body_spec(output: Value) -> Result<BodySpec, String> {
    serde_json::from_value(output)
        .map_err(|e| format!("the internal function answered something other than a body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Pipeline;
    use crate::functions::Filler;
    use cellmesh_api::pipeline::Stage;

    fn stage(yaml: &str) -> Stage {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn compute_pi_leaf_answers_an_m_body() {
        let functions = cell_functions(Placement::InPlace);
        let pipeline = Pipeline::compile(
            &stage("function: computePi\nargs: {rangeComplexity: [5, 5], meanResponseSize: 0.01}"),
            &functions,
        )
        .unwrap();
        let out = pipeline.run_collect(json!(null)).await.unwrap();
        let body = out[0].as_str().unwrap();
        assert!(
            !body.is_empty() && body.bytes().all(|b| b == b'm'),
            "{body}"
        );
    }

    #[test]
    fn bad_leaf_args_name_the_field() {
        let functions = cell_functions(Placement::InPlace);
        let errors = Pipeline::compile(
            &stage("function: computePi\nargs: {rangeComplexity: [20, 10]}"),
            &functions,
        )
        .err()
        .unwrap();
        assert!(
            errors[0]
                .reason
                .contains("args: computePi.rangeComplexity: minimum 20 is above maximum 10"),
            "{}",
            errors[0]
        );
        let errors = Pipeline::compile(
            &stage("function: loader\nargs: {sleepStress: {sleepTime: -1}}"),
            &functions,
        )
        .err()
        .unwrap();
        assert!(
            errors[0].reason.contains("sleepStress.sleepTime"),
            "{}",
            errors[0]
        );
    }

    #[tokio::test]
    async fn internal_leaf_follows_the_behaviour() {
        let args = json!({
            "default": {"computePi": {"rangeComplexity": [1, 1], "meanResponseSize": 0.001}},
            "behaviors": {"slow": {"loader": {"sleepStress": {"run": false}, "meanResponseSize": 0.001}}}
        });
        let spec = Stage {
            function: Some(INTERNAL_SERVICE.to_owned()),
            args: Some(args),
            ..Stage::default()
        };
        let pipeline = Pipeline::compile(&spec, &cell_functions(Placement::Offload)).unwrap();
        let run = |input| {
            let pipeline = &pipeline;
            async move {
                let out = pipeline.run_collect(input).await.unwrap();
                body_spec(out[0].clone()).unwrap()
            }
        };
        assert_eq!(run(json!(null)).await.fill, Filler::M);
        assert_eq!(run(json!({"bid": "nosuch"})).await.fill, Filler::M);
        assert_eq!(run(json!({"bid": "slow"})).await.fill, Filler::Letters);
    }
}
