//! The App `pipeline`: a tree of stages (mpservice's servlets) that a cell runs per request.
//!
//! A stage is one YAML object with an optional `name` and exactly one of:
//! - `function` (+ `args`): a built-in function of the cell (`echo`, `computePi`, `loader`, …);
//! - `exec`: persistent user worker processes speaking newline-delimited JSON;
//! - `sequential`: stages run one after another, each output feeding the next stage;
//! - `ensemble` (+ `failFast`): stages run in parallel on the same input, the result is the
//!   list of their outputs in member order;
//! - `switch`: one case chosen by a field of the request.
//!
//! Contract: [`Stage::kind`] resolves the one-of (an error names the stage and the keys it
//! found); [`Stage::validate`] checks the whole tree (names, member counts, switch cases)
//! and reports the path of every bad stage. This module does no I/O.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::profile::HumanDuration;

/// One stage of a pipeline. Set `name` (used in error messages and metrics) and exactly one
/// of `function`, `exec`, `sequential`, `ensemble` or `switch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Stage {
    /// Name of the stage, shown in error messages (`root[1]/score[0]:parse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A built-in function of the cell, e.g. `echo`, `computePi`, `loader`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Arguments of the built-in function (its own schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub args: Option<serde_json::Value>,
    /// Persistent user worker processes (see `ExecStage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecStage>,
    /// Stages run one after another; every output of a stage is fed to the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_stages")]
    pub sequential: Option<Vec<Stage>>,
    /// Stages run in parallel on the same input; the output is the list of their outputs
    /// in member order (a member's output is its single value, or the list of its values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_stages")]
    pub ensemble: Option<Vec<Stage>>,
    /// Ensemble only: fail the request at the first member error and cancel the others.
    /// When false (default), a failed member's entry is `{"error": {…}}` and the request
    /// fails only if every member failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,
    /// One of several stages chosen by a field of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<SwitchStage>,
}

/// Route each request to one case by a field of the request body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwitchStage {
    /// JSON pointer (RFC 6901) into the request, e.g. `/kind`. A string value selects the
    /// case of that name; numbers and booleans are matched by their JSON text.
    pub on: String,
    /// The cases by value.
    #[schemars(schema_with = "nested_stage_map")]
    pub cases: BTreeMap<String, Stage>,
    /// Case used when the field is missing or matches no case; without it such a request
    /// fails naming the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// Persistent user worker processes speaking newline-delimited JSON on stdin/stdout.
///
/// For each request the cell writes one line `{"input": <value>}`; the worker answers with
/// any number of `{"output": <value>}` lines followed by `{"end": true}`, or with one
/// `{"error": "<message>"}` line. A worker handles one request at a time; stderr goes to
/// the cell's log. With the profile's `batch` on, a `jsonl-batch` worker receives a
/// micro-batch as one line `{"batch": [<input>, …]}` and answers one line
/// `{"batch": [{"outputs": [<value>, …]} | {"error": "<message>"}, …]}` in input order; a
/// `jsonl` worker gets the batch's requests one line at a time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecStage {
    /// Program and arguments, e.g. `["/app/worker", "--fast"]`.
    pub command: Vec<String>,
    /// Wire protocol: `jsonl` (newline-delimited JSON, a request per line) or
    /// `jsonl-batch` (the same, plus whole micro-batches in one line).
    #[serde(default)]
    pub protocol: ExecProtocol,
    /// Number of worker processes (each handles one request at a time). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Extra environment variables for the workers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Longest a worker may take to answer one request; past it the worker is killed and
    /// the request fails naming this stage. Default: only the request's own deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// Exec worker wire protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecProtocol {
    /// Newline-delimited JSON on stdin/stdout.
    #[default]
    Jsonl,
    /// `jsonl`, and the worker also takes a micro-batch (profile `batch`) as one line
    /// `{"batch": [<input>, …]}`, answered by `{"batch": [{"outputs": […]} | {"error": "…"}, …]}`.
    #[serde(rename = "jsonl-batch")]
    JsonlBatch,
}

/// A stage's kind, resolved from its one-of keys.
#[derive(Clone, Copy, Debug)]
pub enum StageKind<'a> {
    /// A built-in function with its arguments (`Null` when absent).
    Function {
        /// The function's name.
        name: &'a str,
        /// Its arguments.
        args: Option<&'a serde_json::Value>,
    },
    /// User worker processes.
    Exec(&'a ExecStage),
    /// Stages in sequence.
    Sequential(&'a [Stage]),
    /// Stages in parallel.
    Ensemble {
        /// The members.
        members: &'a [Stage],
        /// Fail at the first error.
        fail_fast: bool,
    },
    /// One case by request field.
    Switch(&'a SwitchStage),
}

/// A problem in a pipeline: the stage's path and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pipeline stage {path}: {reason}")]
pub struct PipelineError {
    /// Path of the stage, e.g. `root[2]/score`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl Stage {
    /// The stage's kind, or an error when not exactly one kind key is set.
    pub fn kind(&self) -> Result<StageKind<'_>, String> {
        let mut kinds = Vec::new();
        if self.function.is_some() {
            kinds.push("function");
        }
        if self.exec.is_some() {
            kinds.push("exec");
        }
        if self.sequential.is_some() {
            kinds.push("sequential");
        }
        if self.ensemble.is_some() {
            kinds.push("ensemble");
        }
        if self.switch.is_some() {
            kinds.push("switch");
        }
        if kinds.len() != 1 {
            return Err(format!(
                "a stage needs exactly one of function, exec, sequential, ensemble, switch; found {}",
                if kinds.is_empty() {
                    "none".to_owned()
                } else {
                    kinds.join(", ")
                }
            ));
        }
        if self.args.is_some() && self.function.is_none() {
            return Err("args is only valid with function".to_owned());
        }
        if self.fail_fast.is_some() && self.ensemble.is_none() {
            return Err("failFast is only valid with ensemble".to_owned());
        }
        Ok(match self {
            Self {
                function: Some(name),
                args,
                ..
            } => StageKind::Function {
                name,
                args: args.as_ref(),
            },
            Self {
                exec: Some(exec), ..
            } => StageKind::Exec(exec),
            Self {
                sequential: Some(stages),
                ..
            } => StageKind::Sequential(stages),
            Self {
                ensemble: Some(members),
                fail_fast,
                ..
            } => StageKind::Ensemble {
                members,
                fail_fast: fail_fast.unwrap_or(false),
            },
            Self {
                switch: Some(switch),
                ..
            } => StageKind::Switch(switch),
            // `kinds.len() == 1` above guarantees one of the arms matched.
            _ => return Err("a stage needs a kind".to_owned()),
        })
    }

    /// A short label for messages: the name, or the function / kind.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.kind() {
            Ok(StageKind::Function { name, .. }) => name.to_owned(),
            Ok(StageKind::Exec(_)) => "exec".to_owned(),
            Ok(StageKind::Sequential(_)) => "sequential".to_owned(),
            Ok(StageKind::Ensemble { .. }) => "ensemble".to_owned(),
            Ok(StageKind::Switch(_)) => "switch".to_owned(),
            Err(_) => "stage".to_owned(),
        }
    }

    /// Validate the whole tree rooted here; returns every problem with its stage path.
    pub fn validate(&self) -> Result<(), Vec<PipelineError>> {
        let mut errors = Vec::new();
        self.validate_at(&StagePath::root(), &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn validate_at(&self, path: &StagePath, errors: &mut Vec<PipelineError>) {
        let mut fail = |reason: String| {
            errors.push(PipelineError {
                path: path.to_string(),
                reason,
            });
        };
        let kind = match self.kind() {
            Ok(kind) => kind,
            Err(reason) => return fail(reason),
        };
        if self.name.as_deref().is_some_and(str::is_empty) {
            fail("name must not be empty".to_owned());
        }
        match kind {
            StageKind::Function { name: "", .. } => {
                fail("function must name a built-in function".to_owned());
            }
            StageKind::Function { .. } => {}
            StageKind::Exec(exec) => {
                if exec.command.first().is_none_or(String::is_empty) {
                    fail("exec.command must name a program".to_owned());
                }
                if exec.workers == Some(0) {
                    fail("exec.workers must be at least 1".to_owned());
                }
                if exec.timeout.is_some_and(HumanDuration::is_zero) {
                    fail("exec.timeout must be positive".to_owned());
                }
            }
            StageKind::Sequential(stages) => {
                if stages.is_empty() {
                    fail("sequential needs at least one stage".to_owned());
                }
                for (i, stage) in stages.iter().enumerate() {
                    stage.validate_at(&path.child(&i.to_string(), stage), errors);
                }
            }
            StageKind::Ensemble { members, .. } => {
                if members.len() < 2 {
                    fail("ensemble needs at least two members".to_owned());
                }
                for (i, stage) in members.iter().enumerate() {
                    stage.validate_at(&path.child(&i.to_string(), stage), errors);
                }
            }
            StageKind::Switch(switch) => {
                if switch.cases.is_empty() {
                    fail("switch needs at least one case".to_owned());
                }
                if !switch.on.is_empty() && !switch.on.starts_with('/') {
                    fail(format!(
                        "switch.on must be a JSON pointer such as \"/kind\", found {:?}",
                        switch.on
                    ));
                }
                if let Some(default) = &switch.default
                    && !switch.cases.contains_key(default)
                {
                    fail(format!(
                        "switch.default {default:?} is not one of the cases"
                    ));
                }
                for (value, stage) in &switch.cases {
                    stage.validate_at(&path.child(value, stage), errors);
                }
            }
        }
    }
}

/// Where a stage sits in the pipeline tree, for error messages.
///
/// Format: the root is `root`; a child appends its selector `[i]` (member index, or switch
/// case) to its parent's path, then `/label` if it is itself a compound stage or `:label`
/// if it is a leaf (label = its name, else its function or kind).
/// Example: `root[1]/score[0]:parse` is member 0 (named `parse`) of the ensemble `score`,
/// which is stage 1 of the root sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePath(String);

impl StagePath {
    /// The root stage.
    pub fn root() -> Self {
        Self("root".to_owned())
    }

    /// The path of `child`, reached from the compound stage at `self` by `selector`
    /// (member index, or switch case).
    pub fn child(&self, selector: &str, child: &Stage) -> Self {
        let mut text = self.0.clone();
        text.push('[');
        text.push_str(selector);
        text.push(']');
        let is_compound =
            child.sequential.is_some() || child.ensemble.is_some() || child.switch.is_some();
        if is_compound {
            text.push('/');
        } else {
            text.push(':');
        }
        text.push_str(&child.label());
        Self(text)
    }
}

impl fmt::Display for StagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Kubernetes structural schemas cannot be recursive: nested stages are free-form objects
// in the CRD schema and are checked by `Stage::validate` (the operator reports errors).
fn nested_stages(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

fn nested_stage_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Stage {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn design_example_parses_and_validates() {
        let stage = parse(
            r#"
sequential:
  - {name: parse, function: echo}
  - {name: score, ensemble: [{function: computePi, args: {rangeComplexity: [10, 20]}}, {function: echo}], failFast: true}
  - {name: tail,  exec: {command: ["/app/worker"], protocol: jsonl}}
"#,
        );
        stage.validate().unwrap();
        let StageKind::Sequential(stages) = stage.kind().unwrap() else {
            panic!("root is sequential")
        };
        assert!(matches!(
            stages[1].kind().unwrap(),
            StageKind::Ensemble { fail_fast: true, members } if members.len() == 2
        ));
    }

    #[test]
    fn paths_name_compound_stages_and_leaves() {
        let stage = parse(
            "sequential:\n  - {function: echo}\n  - name: score\n    ensemble: [{function: echo}, {name: tail, function: echo}]\n",
        );
        let StageKind::Sequential(stages) = stage.kind().unwrap() else {
            panic!()
        };
        let root = StagePath::root();
        let score = root.child("1", &stages[1]);
        assert_eq!(score.to_string(), "root[1]/score");
        let members = stages[1].ensemble.as_ref().unwrap();
        let tail = score.child("1", &members[1]);
        assert_eq!(tail.to_string(), "root[1]/score[1]:tail");
        assert_eq!(root.child("0", &stages[0]).to_string(), "root[0]:echo");
    }

    #[test]
    fn validation_reports_each_bad_stage_with_its_path() {
        let stage = parse(
            r#"
sequential:
  - {function: echo, exec: {command: [x]}}
  - {name: score, ensemble: [{function: echo}]}
  - {name: route, switch: {on: kind, cases: {a: {function: echo}}, default: b}}
  - {exec: {command: []}}
"#,
        );
        let errors = stage.validate().unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 5, "{text:#?}");
        assert!(text[0].contains("root[0]") && text[0].contains("function, exec"));
        assert!(text[1].contains("root[1]/score") && text[1].contains("two members"));
        assert!(text[2].contains("root[2]/route") && text[2].contains("JSON pointer"));
        assert!(text[3].contains("default \"b\""));
        assert!(text[4].contains("root[3]:exec") && text[4].contains("program"));
    }

    #[test]
    fn unknown_keys_and_misplaced_options_are_refused() {
        let err = serde_yaml::from_str::<Stage>("{function: echo, fialFast: true}").unwrap_err();
        assert!(err.to_string().contains("fialFast"), "{err}");
        let stage = parse("{function: echo, failFast: true}");
        assert!(stage.validate().unwrap_err()[0].reason.contains("failFast"));
        let empty = parse("{name: nothing}");
        assert!(
            empty.validate().unwrap_err()[0]
                .reason
                .contains("found none")
        );
    }

    #[test]
    fn schema_is_not_recursive() {
        let schema = schemars::schema_for!(Stage);
        let json = serde_json::to_value(&schema).unwrap();
        let seq = &json["properties"]["sequential"];
        assert_eq!(
            seq["items"]["x-kubernetes-preserve-unknown-fields"], true,
            "{seq}"
        );
        assert!(!json.to_string().contains("#/$defs/Stage\""), "{json}");
    }
}
