//! The `Profile`: *how* a cell executes requests (Cocaine's profile plus mpservice's knobs).
//!
//! A profile is mounted into the cell as a YAML or JSON file (the spec only, camelCase keys)
//! and hot-reloaded when it changes; it is also the spec of the `Profile` custom resource.
//! Every field has a documented default, so an empty document (`{}`) is a valid profile.
//!
//! Contract:
//! - [`ProfileSpec::from_yaml`] parses *and* validates; errors name the offending field.
//! - Unknown keys are rejected (a misspelt limit must not be ignored silently).
//! - [`ProfileSpec::validate`] reports every problem at once, each with its field.
//! - Durations are Kubernetes-style strings: `"30s"`, `"500ms"`, `"1m30s"`, `"2h"`.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a cell executes requests: isolation, worker pool bounds, admission limits and
/// timeouts. Limits may be changed while the cell runs; `isolate` and `cpuPinning` take
/// effect on the next pod restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProfileSpec {
    /// Where requests run: `inline` (async tasks on the cell's own runtime; cheapest, for
    /// the built-in functions), `thread` (dedicated worker threads, for blocking code) or
    /// `process` (worker processes; a crash fails only that worker's requests and the
    /// worker is replaced). Default `inline`.
    pub isolate: Isolate,
    /// Maximum requests in flight on one worker at a time. Must be at least 1. Default 64.
    pub concurrency: u32,
    /// Workers kept running even when idle. Default 1. Must not exceed `poolLimit`.
    pub pool_min: u32,
    /// Maximum number of workers: a number, or `auto` = the container's CPU limit rounded
    /// up (read from the cgroup, re-read periodically so an in-place resize changes the pool
    /// without a restart; the CPU count when there is no limit). Default `auto`.
    pub pool_limit: PoolLimit,
    /// Maximum requests waiting for a worker. Beyond it a request is rejected at once (HTTP
    /// 503 with `Retry-After`, gRPC `RESOURCE_EXHAUSTED`). `0` = automatic: reject when the
    /// waiting requests exceed the free capacity of a full pool
    /// (`poolLimit × concurrency − in flight`). Default 1024.
    pub queue_limit: u32,
    /// Queued requests per additional worker: the pool grows to
    /// `clamp(queued / growThreshold, poolMin, poolLimit)`. `0` = `max(1, queueLimit /
    /// poolLimit / 2)`. Default 0.
    pub grow_threshold: u32,
    /// A worker idle for this long is stopped (never below `poolMin`). `0s` = never.
    /// Default `600s`.
    pub idle_timeout: HumanDuration,
    /// Default deadline of a request, from its arrival; a request header may ask for a
    /// different one. Past it the request fails with HTTP 504 / gRPC `DEADLINE_EXCEEDED`,
    /// whether it was still queued or running. Must be positive. Default `30s`.
    pub request_timeout: HumanDuration,
    /// Time a new worker process has to start and report ready before it is killed and
    /// counted as a failed start. Must be positive. Default `10s`.
    pub startup_timeout: HumanDuration,
    /// On shutdown (SIGTERM), how long queued and running requests may take to finish
    /// before the cell exits anyway. Default `5s`.
    pub termination_timeout: HumanDuration,
    /// Optional micro-batching of pipeline stages (mpservice's `batch_size` /
    /// `batch_wait_time`). Default off.
    pub batch: Batch,
    /// Pin each worker to its own CPU of the cell's allowed set. Only meaningful for pods
    /// with Guaranteed QoS and integer CPU requests. Default `false`.
    pub cpu_pinning: bool,
}

impl Default for ProfileSpec {
    fn default() -> Self {
        Self {
            isolate: Isolate::Inline,
            concurrency: 64,
            pool_min: 1,
            pool_limit: PoolLimit::Auto,
            queue_limit: 1024,
            grow_threshold: 0,
            idle_timeout: HumanDuration::from_secs(600),
            request_timeout: HumanDuration::from_secs(30),
            startup_timeout: HumanDuration::from_secs(10),
            termination_timeout: HumanDuration::from_secs(5),
            batch: Batch::default(),
            cpu_pinning: false,
        }
    }
}

/// Where a cell runs its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Isolate {
    /// Worker processes (the cell re-executes itself); crash-isolated.
    Process,
    /// Dedicated worker threads inside the cell.
    Thread,
    /// Async tasks on the cell's own runtime.
    Inline,
}

impl fmt::Display for Isolate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Process => "process",
            Self::Thread => "thread",
            Self::Inline => "inline",
        })
    }
}

/// Micro-batching of pipeline stages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Batch {
    /// Largest batch handed to a stage at once; `0` or `1` = no batching. Default 0.
    pub size: u32,
    /// After the first item arrives, wait up to this long for more (only with `size` > 1;
    /// `0ms` = take only what is already waiting). Default `0ms`.
    pub wait: HumanDuration,
}

/// Maximum pool size: a fixed number of workers or `auto` (the CPU limit, rounded up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PoolLimit {
    /// `ceil(cgroup CPU limit)`, or the CPU count when the container has no limit.
    #[default]
    Auto,
    /// A fixed maximum.
    Fixed(u32),
}

impl PoolLimit {
    /// The fixed limit, or `None` for `auto`.
    pub fn fixed(self) -> Option<u32> {
        match self {
            Self::Auto => None,
            Self::Fixed(n) => Some(n),
        }
    }
}

impl fmt::Display for PoolLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for PoolLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("auto"),
            Self::Fixed(n) => serializer.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for PoolLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Text(String),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::Number(n)) => Ok(Self::Fixed(n)),
            Ok(Raw::Text(s)) if s == "auto" => Ok(Self::Auto),
            // Kubernetes int-or-string fields also arrive as strings ("4").
            Ok(Raw::Text(s)) => s.parse().map(Self::Fixed).map_err(|_| {
                serde::de::Error::custom(format!(
                    "expected a whole number or \"auto\", found {s:?}"
                ))
            }),
            Err(_) => Err(serde::de::Error::custom(
                "expected a whole number or \"auto\"",
            )),
        }
    }
}

impl JsonSchema for PoolLimit {
    fn schema_name() -> Cow<'static, str> {
        "PoolLimit".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": "^(auto|[0-9]+)$"}
            ]
        })
    }
}

/// A duration written as a Kubernetes-style string: a sequence of numbers with units,
/// `ns`, `us`, `ms`, `s`, `m`, `h` (for example `"30s"`, `"500ms"`, `"1m30s"`). Parsed with
/// the `humantime` crate, which also accepts spaces between parts (`"1m 30s"`); `"0"` is
/// zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// Whole milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// The duration itself.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for HumanDuration {
    fn from(value: Duration) -> Self {
        Self(value)
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim()).map(Self).map_err(|e| {
            format!("invalid duration {s:?} ({e}); write e.g. \"30s\", \"500ms\", \"1m30s\"")
        })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        // humantime writes "1m 30s"; Kubernetes style has no spaces, and both parse back.
        let text = humantime::format_duration(self.0).to_string();
        f.write_str(&text.replace(' ', ""))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+ ?(ns|us|µs|ms|s|m|h) ?)+$|^0$"
        })
    }
}

/// One problem in a profile: the field (camelCase, as written in the file) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `batch.wait`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a profile was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The document is not a profile (syntax, unknown key, wrong type, unknown `isolate`).
    #[error("cannot read the profile: {0}")]
    Parse(String),
    /// The values are inconsistent; every problem is listed with its field.
    #[error("invalid profile: {}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ProfileSpec {
    /// Parse a YAML (or JSON) profile document and validate it.
    pub fn from_yaml(text: &str) -> Result<Self, ProfileError> {
        // An empty file is an empty mapping: all defaults.
        let spec: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            // serde_path_to_error adds the field path that custom errors otherwise lack.
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(
                |e| {
                    let path = e.path().to_string();
                    let inner = e.into_inner().to_string();
                    if path == "." || inner.starts_with(&path) {
                        ProfileError::Parse(inner)
                    } else {
                        ProfileError::Parse(format!("{path}: {inner}"))
                    }
                },
            )?
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Check the values against each other; returns every problem, each naming its field.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let mut errors = Vec::new();
        let mut fail = |field, reason: &str| {
            errors.push(FieldError {
                field,
                reason: reason.to_owned(),
            });
        };
        if self.concurrency == 0 {
            fail("concurrency", "must be at least 1");
        }
        if let Some(limit) = self.pool_limit.fixed() {
            if limit == 0 {
                fail("poolLimit", "must be at least 1 (or \"auto\")");
            } else if self.pool_min > limit {
                fail(
                    "poolMin",
                    &format!("{} is greater than poolLimit {limit}", self.pool_min),
                );
            }
        }
        if self.request_timeout.is_zero() {
            fail("requestTimeout", "must be positive");
        }
        if self.startup_timeout.is_zero() {
            fail("startupTimeout", "must be positive");
        }
        if !self.batch.wait.is_zero() && self.batch.size <= 1 {
            fail(
                "batch.wait",
                "only meaningful with batch.size greater than 1",
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ProfileError::Invalid(errors))
        }
    }

    /// Cocaine's grow threshold: the configured one, or `max(1, queueLimit / poolLimit / 2)`
    /// for `0`, given the effective pool limit (which `auto` makes a runtime value).
    pub fn effective_grow_threshold(&self, pool_limit: u32) -> u32 {
        if self.grow_threshold > 0 {
            return self.grow_threshold;
        }
        (self.queue_limit / pool_limit.max(1) / 2).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_fields(text: &str) -> Vec<&'static str> {
        match ProfileSpec::from_yaml(text) {
            Err(ProfileError::Invalid(errors)) => errors.iter().map(|e| e.field).collect(),
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn empty_document_gives_documented_defaults() {
        let spec = ProfileSpec::from_yaml("").unwrap();
        assert_eq!(spec, ProfileSpec::default());
        assert_eq!(ProfileSpec::from_yaml("{}").unwrap(), spec);
        assert_eq!(spec.isolate, Isolate::Inline);
        assert_eq!(spec.concurrency, 64);
        assert_eq!(spec.pool_limit, PoolLimit::Auto);
        assert_eq!(spec.queue_limit, 1024);
        assert_eq!(spec.request_timeout.get(), Duration::from_secs(30));
        assert_eq!(spec.idle_timeout.get(), Duration::from_secs(600));
    }

    #[test]
    fn design_example_parses() {
        let spec = ProfileSpec::from_yaml(
            "isolate: process\nconcurrency: 64\npoolLimit: auto\npoolMin: 1\n\
             queueLimit: 1024\ngrowThreshold: 0\nidleTimeout: 600s\nrequestTimeout: 30s\n\
             startupTimeout: 10s\nterminationTimeout: 5s\nbatch: {size: 0, wait: 0ms}\n\
             cpuPinning: false\n",
        )
        .unwrap();
        assert_eq!(spec.isolate, Isolate::Process);
        assert_eq!(spec.termination_timeout.get(), Duration::from_secs(5));
    }

    #[test]
    fn example_profiles_are_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/profiles");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let mut text = std::fs::read_to_string(&path).unwrap();
            // A `Profile` resource (kind, metadata, spec) carries this document as its spec.
            let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            if let Some(spec) = doc.get("spec") {
                text = serde_yaml::to_string(spec).unwrap();
            }
            ProfileSpec::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
        assert!(seen >= 1, "examples/profiles holds at least one profile");
    }

    #[test]
    fn pool_limit_accepts_number_auto_and_numeric_string() {
        let n = ProfileSpec::from_yaml("poolLimit: 4").unwrap();
        assert_eq!(n.pool_limit, PoolLimit::Fixed(4));
        let s = ProfileSpec::from_yaml("poolLimit: \"3\"").unwrap();
        assert_eq!(s.pool_limit, PoolLimit::Fixed(3));
        let err = ProfileSpec::from_yaml("poolLimit: lots")
            .unwrap_err()
            .to_string();
        assert!(err.contains("poolLimit") && err.contains("auto"), "{err}");
    }

    #[test]
    fn durations_parse_and_round_trip() {
        for (text, expected) in [
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("0", Duration::ZERO),
        ] {
            let parsed: HumanDuration = text.parse().unwrap();
            assert_eq!(parsed.get(), expected, "{text}");
            let again: HumanDuration = parsed.to_string().parse().unwrap();
            assert_eq!(again, parsed, "{text} → {parsed}");
        }
        assert_eq!(HumanDuration::from_secs(90).to_string(), "1m30s");
        let err = ProfileSpec::from_yaml("requestTimeout: soon")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("requestTimeout") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn unknown_isolate_and_unknown_keys_name_the_field() {
        let err = ProfileSpec::from_yaml("isolate: docker")
            .unwrap_err()
            .to_string();
        assert!(err.contains("isolate") && err.contains("docker"), "{err}");
        let err = ProfileSpec::from_yaml("queuelimit: 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("queuelimit"), "{err}");
        let err = ProfileSpec::from_yaml("batch: {sise: 3}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sise"), "{err}");
    }

    #[test]
    fn validation_names_every_bad_field() {
        assert_eq!(invalid_fields("concurrency: 0"), ["concurrency"]);
        assert_eq!(invalid_fields("poolMin: 5\npoolLimit: 2"), ["poolMin"]);
        assert_eq!(invalid_fields("poolLimit: 0"), ["poolLimit"]);
        assert_eq!(invalid_fields("requestTimeout: 0s"), ["requestTimeout"]);
        assert_eq!(
            invalid_fields("batch: {size: 1, wait: 5ms}"),
            ["batch.wait"]
        );
        assert_eq!(
            invalid_fields("concurrency: 0\nstartupTimeout: 0ms"),
            ["concurrency", "startupTimeout"]
        );
        // poolMin above an `auto` limit can only be judged at run time.
        ProfileSpec::from_yaml("poolMin: 50\npoolLimit: auto").unwrap();
    }

    #[test]
    fn grow_threshold_defaults_to_cocaine_rule() {
        let spec = ProfileSpec::from_yaml("queueLimit: 100").unwrap();
        assert_eq!(spec.effective_grow_threshold(10), 5);
        assert_eq!(spec.effective_grow_threshold(1000), 1);
        let explicit = ProfileSpec::from_yaml("growThreshold: 7").unwrap();
        assert_eq!(explicit.effective_grow_threshold(10), 7);
    }

    #[test]
    fn serializes_camel_case_and_reparses() {
        let spec = ProfileSpec {
            pool_limit: PoolLimit::Fixed(3),
            idle_timeout: HumanDuration::from_millis(1500),
            ..ProfileSpec::default()
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["poolLimit"], 3);
        assert_eq!(json["idleTimeout"], "1s500ms");
        let back = ProfileSpec::from_yaml(&json.to_string()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn schema_marks_pool_limit_int_or_string() {
        let schema = schemars::schema_for!(ProfileSpec);
        let json = serde_json::to_value(&schema).unwrap();
        let pool_limit = &json["properties"]["poolLimit"];
        assert_eq!(
            pool_limit["x-kubernetes-int-or-string"], true,
            "{pool_limit}"
        );
        assert!(
            json["properties"]["concurrency"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("in flight")),
        );
    }
}
