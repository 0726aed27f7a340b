//! The service spec: one service of a mesh, in µBench's workmodel format.
//!
//! A µBench `workmodel.json` is a map from service name to [`ServiceSpec`]; cellmesh's
//! `WorkModel` resource carries the same map under `spec.services`. Field names are camelCase;
//! µBench's snake_case (and kebab-case resource) keys are accepted as aliases so that real
//! µBench files load unchanged (see [`crate::mubench`] for loading with warnings and errors
//! that name the JSON path).
//!
//! Defaults are µBench's own (`compute_pi`: 50–100 digits and a 10 kB mean body; `loader`: only
//! the sleep stressor on, 10 ms, and an 11 kB mean body), applied field by field as µBench's
//! `jsonmerge` does. [`validate`] checks what the types cannot: bounds, references between
//! services, probabilities.
//!
//! The doc comments on fields become `kubectl explain` text of the WorkModel CRD: they are
//! written for users of the resource.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Services of a mesh by name. The name is also the service's DNS name and metric label.
pub type Services = BTreeMap<String, ServiceSpec>;

/// HTTP path a cell serves when the spec names none (µBench's deployer default).
pub const DEFAULT_PATH: &str = "/api/v1";
/// Worker count when the spec names none (µBench's `PN` default).
pub const DEFAULT_WORKERS: u32 = 1;
/// Concurrency per worker when the spec names none (µBench's `TN` default).
pub const DEFAULT_THREADS: u32 = 4;
/// Replica count when the spec names none.
pub const DEFAULT_REPLICAS: u32 = 1;
/// Largest number of π digits one computation may ask for. The spigot is quadratic, so this
/// bounds a single call to seconds of CPU rather than hours.
pub const MAX_PI_DIGITS: u32 = 100_000;
/// Longest sleep the `loader` sleep stressor accepts, in seconds.
pub const MAX_SLEEP_SECONDS: f64 = 3600.0;

/// One service of the mesh: what it computes per request, whom it calls, how it is served
/// and sized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The work done for every request before any downstream call: exactly one of
    /// `computePi` or `loader`.
    #[serde(alias = "internal_service")]
    pub internal_service: InternalService,

    /// Downstream calls made after the internal work. The groups run in parallel; the
    /// services of one group are called one after another. Empty: no downstream calls.
    #[serde(
        default,
        alias = "external_services",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_services: Vec<ExternalServiceGroup>,

    /// Protocol this service is called with by other services: `rest` (HTTP on `path`) or
    /// `grpc` (µBench's `MicroService` on port 51313). Case-insensitive. Default `rest`.
    #[serde(default, alias = "request_method")]
    pub request_method: RequestMethod,

    /// Worker count of each replica (µBench's Gunicorn workers). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub workers: Option<u32>,

    /// Requests each worker handles concurrently (µBench's threads). A replica admits at most
    /// `workers × threads` requests at once; more wait. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub threads: Option<u32>,

    /// Number of pods running this service. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,

    /// CPU and memory requests and limits of the service's container, as in a Kubernetes
    /// container spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// µBench's flat `cpu-requests` key; folded into `resources` by [`ServiceSpec::normalize`].
    #[serde(
        default,
        rename = "cpu-requests",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(skip)]
    pub cpu_requests: Option<Quantity>,
    /// µBench's flat `cpu-limits` key; folded into `resources` by [`ServiceSpec::normalize`].
    #[serde(
        default,
        rename = "cpu-limits",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(skip)]
    pub cpu_limits: Option<Quantity>,
    /// µBench's flat `memory-requests` key; folded into `resources` by
    /// [`ServiceSpec::normalize`].
    #[serde(
        default,
        rename = "memory-requests",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(skip)]
    pub memory_requests: Option<Quantity>,
    /// µBench's flat `memory-limits` key; folded into `resources` by [`ServiceSpec::normalize`].
    #[serde(
        default,
        rename = "memory-limits",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(skip)]
    pub memory_limits: Option<Quantity>,

    /// Host, optionally with `:port`, other services use to reach this one (REST
    /// `http://{url}{path}`, port 80 when absent; gRPC `{host}:51313`). Default: the service
    /// name, which resolves inside a namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// HTTP path the service answers on. Default `/api/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// Named alternative behaviours, chosen per request with the query parameter
    /// `bid=<name>`. Each may replace the internal work, the downstream calls, or both.
    #[serde(
        default,
        alias = "alternative_behaviors",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub alternative_behaviors: BTreeMap<String, Behavior>,
}

impl ServiceSpec {
    /// A service running `internal` with every other field at its default.
    pub fn new(internal: InternalService) -> Self {
        Self {
            internal_service: internal,
            external_services: Vec::new(),
            request_method: RequestMethod::default(),
            workers: None,
            threads: None,
            replicas: None,
            resources: None,
            cpu_requests: None,
            cpu_limits: None,
            memory_requests: None,
            memory_limits: None,
            url: None,
            path: None,
            alternative_behaviors: BTreeMap::new(),
        }
    }

    /// Worker count, defaulted.
    pub fn workers(&self) -> u32 {
        self.workers.unwrap_or(DEFAULT_WORKERS)
    }

    /// Concurrency per worker, defaulted.
    pub fn threads(&self) -> u32 {
        self.threads.unwrap_or(DEFAULT_THREADS)
    }

    /// Requests one replica admits at once: `workers × threads`.
    pub fn concurrency(&self) -> u32 {
        self.workers().saturating_mul(self.threads())
    }

    /// Replica count, defaulted.
    pub fn replicas(&self) -> u32 {
        self.replicas.unwrap_or(DEFAULT_REPLICAS)
    }

    /// HTTP path, defaulted.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_PATH)
    }

    /// Folds µBench's flat `cpu-requests`/`cpu-limits`/`memory-*` keys into `resources`. A
    /// value already in `resources` wins over the flat key.
    pub fn normalize(&mut self) {
        let flat = [
            (self.cpu_requests.take(), true, "cpu"),
            (self.cpu_limits.take(), false, "cpu"),
            (self.memory_requests.take(), true, "memory"),
            (self.memory_limits.take(), false, "memory"),
        ];
        for (value, is_request, resource) in flat {
            let Some(value) = value else { continue };
            let resources = self.resources.get_or_insert_with(Resources::default);
            let list = if is_request {
                &mut resources.requests
            } else {
                &mut resources.limits
            };
            list.entry(resource.to_owned()).or_insert(value);
        }
    }
}

/// The internal work of a service: exactly one built-in function with its parameters.
///
/// (A struct of optional fields rather than an enum, so that YAML needs no tags, error paths
/// name the function key, and the CRD schema stays structural.)
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InternalService {
    /// Compute digits of π, then answer with a body of random size (µBench's `compute_pi`).
    #[serde(default, alias = "compute_pi", skip_serializing_if = "Option::is_none")]
    pub compute_pi: Option<ComputePi>,
    /// Run CPU, memory, disk and sleep stressors, then answer with a body of random size
    /// (µBench's `loader`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader: Option<Loader>,
}

/// The one function an [`InternalService`] names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Function<'a> {
    /// `computePi`.
    ComputePi(&'a ComputePi),
    /// `loader`.
    Loader(&'a Loader),
}

impl InternalService {
    /// `computePi` with these parameters.
    pub fn compute_pi(params: ComputePi) -> Self {
        Self {
            compute_pi: Some(params),
            loader: None,
        }
    }

    /// `loader` with these parameters.
    pub fn loader(params: Loader) -> Self {
        Self {
            compute_pi: None,
            loader: Some(params),
        }
    }

    /// The function to run, or `None` unless exactly one is named ([`validate`] reports that).
    pub fn function(&self) -> Option<Function<'_>> {
        match (&self.compute_pi, &self.loader) {
            (Some(pi), None) => Some(Function::ComputePi(pi)),
            (None, Some(loader)) => Some(Function::Loader(loader)),
            _ => None,
        }
    }
}

/// Parameters of `computePi`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ComputePi {
    /// `[min, max]`: each request computes a number of π digits drawn uniformly from this
    /// inclusive range. Default `[50, 100]`.
    #[serde(alias = "range_complexity")]
    pub range_complexity: [u32; 2],
    /// Mean size of the response body in kB (1 kB = 1000 bytes). Each body's size is drawn
    /// from an exponential distribution with this mean, and is at least 1 byte. Default 10.
    #[serde(alias = "mean_response_size")]
    pub mean_response_size: f64,
    /// µBench's older name for `meanResponseSize`; when set it takes precedence, as in µBench.
    #[serde(
        default,
        alias = "mean_bandwidth",
        skip_serializing_if = "Option::is_none"
    )]
    pub mean_bandwidth: Option<f64>,
}

impl Default for ComputePi {
    fn default() -> Self {
        Self {
            range_complexity: [50, 100],
            mean_response_size: 10.0,
            mean_bandwidth: None,
        }
    }
}

impl ComputePi {
    /// Mean body size in kB: `meanBandwidth` when given, else `meanResponseSize`.
    pub fn mean_body_kb(&self) -> f64 {
        self.mean_bandwidth.unwrap_or(self.mean_response_size)
    }
}

/// Parameters of `loader`. The enabled stressors run in the order CPU, memory, disk, sleep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Loader {
    /// CPU stressor: π digit computations on parallel threads.
    #[serde(alias = "cpu_stress")]
    pub cpu_stress: CpuStress,
    /// Memory stressor: allocate and touch a buffer.
    #[serde(alias = "memory_stress")]
    pub memory_stress: MemoryStress,
    /// Disk stressor: write, fsync, read back and delete a scratch file.
    #[serde(alias = "disk_stress")]
    pub disk_stress: DiskStress,
    /// Sleep stressor. On by default (10 ms), as in µBench.
    #[serde(alias = "sleep_stress")]
    pub sleep_stress: SleepStress,
    /// Mean size of the response body in kB, exponentially distributed, at least 1 byte.
    /// Default 11.
    #[serde(alias = "mean_response_size")]
    pub mean_response_size: f64,
    /// µBench's older name for `meanResponseSize`; when set it takes precedence.
    #[serde(
        default,
        alias = "mean_bandwidth",
        skip_serializing_if = "Option::is_none"
    )]
    pub mean_bandwidth: Option<f64>,
}

impl Default for Loader {
    fn default() -> Self {
        Self {
            cpu_stress: CpuStress::default(),
            memory_stress: MemoryStress::default(),
            disk_stress: DiskStress::default(),
            sleep_stress: SleepStress::default(),
            mean_response_size: 11.0,
            mean_bandwidth: None,
        }
    }
}

impl Loader {
    /// Mean body size in kB: `meanBandwidth` when given, else `meanResponseSize`.
    pub fn mean_body_kb(&self) -> f64 {
        self.mean_bandwidth.unwrap_or(self.mean_response_size)
    }
}

/// CPU stressor of `loader`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CpuStress {
    /// Whether the stressor runs. Default false.
    pub run: bool,
    /// `[min, max]` π digits per computation; each job draws once. Default `[100, 100]`.
    #[serde(alias = "range_complexity")]
    pub range_complexity: [u32; 2],
    /// Number of parallel jobs. Default 1.
    #[serde(alias = "thread_pool_size")]
    pub thread_pool_size: u32,
    /// Computations each job runs one after another. Default 1.
    pub trials: u32,
}

impl Default for CpuStress {
    fn default() -> Self {
        Self {
            run: false,
            range_complexity: [100, 100],
            thread_pool_size: 1,
            trials: 1,
        }
    }
}

/// Memory stressor of `loader`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MemoryStress {
    /// Whether the stressor runs. Default false.
    pub run: bool,
    /// Blocks of 1000 bytes to allocate (so about this many kB). Default 10000.
    #[serde(alias = "memory_size")]
    pub memory_size: u32,
    /// Block reads and writes after allocation. Default 1000.
    #[serde(alias = "memory_io")]
    pub memory_io: u32,
    /// cellmesh extension, not in µBench: keep each request's blocks for the life of the
    /// process instead of freeing them, so the service's memory grows by about `memorySize`
    /// kB per request served — a cache that is never evicted, or a leak. The workload for
    /// memory scaling: a steady request rate is a steady growth of the working set, and
    /// the cgroup's limit ends it with an out-of-memory kill. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain: bool,
}

impl Default for MemoryStress {
    fn default() -> Self {
        Self {
            run: false,
            memory_size: 10_000,
            memory_io: 1000,
            retain: false,
        }
    }
}

/// Disk stressor of `loader`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DiskStress {
    /// Whether the stressor runs. Default false.
    pub run: bool,
    /// Base name of the scratch file; a random prefix makes it unique per request. Only the
    /// final path component is used. Default `mubtestfile.txt`.
    #[serde(alias = "tmp_file_name")]
    pub tmp_file_name: String,
    /// Number of random blocks written (then read back in random order). Default 1000.
    #[serde(alias = "disk_write_block_count")]
    pub disk_write_block_count: u32,
    /// Size of each block in bytes. Default 1024.
    #[serde(alias = "disk_write_block_size")]
    pub disk_write_block_size: u32,
}

impl Default for DiskStress {
    fn default() -> Self {
        Self {
            run: false,
            tmp_file_name: "mubtestfile.txt".to_owned(),
            disk_write_block_count: 1000,
            disk_write_block_size: 1024,
        }
    }
}

/// Sleep stressor of `loader`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct SleepStress {
    /// Whether the stressor runs. Default **true**, as in µBench.
    pub run: bool,
    /// Sleep in seconds. Default 0.01.
    #[serde(alias = "sleep_time")]
    pub sleep_time: f64,
}

impl Default for SleepStress {
    fn default() -> Self {
        Self {
            run: true,
            sleep_time: 0.01,
        }
    }
}

/// A group of downstream calls. Groups of a service run in parallel; the calls inside one
/// group run one after another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalServiceGroup {
    /// How many of `services` each request calls. When smaller than the list, a random
    /// subset of this size is called, in random order; otherwise all are called, in list
    /// order. Default: all.
    #[serde(default, alias = "seq_len", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub seq_len: Option<u32>,
    /// Names of the services this group calls.
    pub services: Vec<String>,
    /// Probability in [0, 1] that a selected service is really called, by service name.
    /// Services not listed are always called.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probabilities: BTreeMap<String, f64>,
}

impl ExternalServiceGroup {
    /// Call probability of `service` (1 when not listed).
    pub fn probability(&self, service: &str) -> f64 {
        self.probabilities.get(service).copied().unwrap_or(1.0)
    }
}

/// An alternative behaviour, selected with `?bid=<name>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    /// Replaces the service's internal work when set.
    #[serde(
        default,
        alias = "internal_service",
        skip_serializing_if = "Option::is_none"
    )]
    pub internal_service: Option<InternalService>,
    /// Replaces the service's downstream calls when set.
    #[serde(
        default,
        alias = "external_services",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_services: Option<Vec<ExternalServiceGroup>>,
}

/// Protocol a service is called with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestMethod {
    /// HTTP/1.1 `GET` (stochastic) or `POST` (trace) on the service's `path`.
    #[default]
    Rest,
    /// gRPC `microservice.MicroService` on port 51313.
    Grpc,
}

impl fmt::Display for RequestMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rest => "rest",
            Self::Grpc => "grpc",
        })
    }
}

impl<'de> Deserialize<'de> for RequestMethod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        match raw.to_ascii_lowercase().as_str() {
            "rest" => Ok(Self::Rest),
            "grpc" => Ok(Self::Grpc),
            _ => Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(&raw),
                &"`rest` or `grpc` (any case)",
            )),
        }
    }
}

/// Compute resources by name (`cpu`, `memory`, …) to Kubernetes quantities.
pub type ResourceList = BTreeMap<String, Quantity>;

/// Requests and limits, as in a Kubernetes container's `resources`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Resources {
    /// Resources reserved for the container, e.g. `{cpu: 250m, memory: 64Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: ResourceList,
    /// Most the container may use, e.g. `{cpu: "1", memory: 256Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: ResourceList,
}

/// A Kubernetes quantity such as `250m`, `1`, `512Mi`. Numbers are accepted and kept in their
/// decimal form; the API server checks the syntax.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a quantity such as \"250m\", \"512Mi\" or a number"
        )]
        enum Raw {
            Text(String),
            Int(i64),
            Float(f64),
        }
        Ok(Self(match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text,
            Raw::Int(int) => int.to_string(),
            Raw::Float(float) => float.to_string(),
        }))
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Kubernetes quantity such as 250m, 1 or 512Mi.",
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": true
        })
    }
}

/// One problem found by [`validate`], with the path of the offending field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// Dotted path of the field, e.g. `s0.externalServices[1].probabilities.s2`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem [`validate`] found, in path order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in the service spec:",
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            write!(f, "\n  - {error}")?;
        }
        Ok(())
    }
}

/// Checks what serde cannot: value bounds, that every called service exists and is not the
/// caller itself, and that probabilities name services of their group and lie in [0, 1].
pub fn validate(services: &Services) -> Result<(), SpecErrors> {
    let mut errors = Vec::new();
    for (name, spec) in services {
        let mut check = Checker {
            services,
            caller: name,
            errors: &mut errors,
        };
        check.service(name, spec);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(errors))
    }
}

struct Checker<'a> {
    services: &'a Services,
    caller: &'a str,
    errors: &'a mut Vec<SpecError>,
}

impl Checker<'_> {
    fn fail(&mut self, path: String, message: impl Into<String>) {
        self.errors.push(SpecError {
            path,
            message: message.into(),
        });
    }

    fn service(&mut self, at: &str, spec: &ServiceSpec) {
        if spec.workers == Some(0) {
            self.fail(format!("{at}.workers"), "must be at least 1");
        }
        if spec.threads == Some(0) {
            self.fail(format!("{at}.threads"), "must be at least 1");
        }
        let path = spec.path();
        if !path.starts_with('/') {
            self.fail(
                format!("{at}.path"),
                format!("`{path}` must start with `/`"),
            );
        } else if path == "/metrics" {
            self.fail(
                format!("{at}.path"),
                "`/metrics` is reserved for the cell's metrics",
            );
        }
        if let Some(url) = &spec.url
            && (url.is_empty() || url.contains(char::is_whitespace))
        {
            self.fail(
                format!("{at}.url"),
                format!("`{url}` is not a host or host:port"),
            );
        }
        self.internal(&format!("{at}.internalService"), &spec.internal_service);
        self.groups(&format!("{at}.externalServices"), &spec.external_services);
        for (bid, behavior) in &spec.alternative_behaviors {
            let at = format!("{at}.alternativeBehaviors.{bid}");
            if let Some(internal) = &behavior.internal_service {
                self.internal(&format!("{at}.internalService"), internal);
            }
            if let Some(groups) = &behavior.external_services {
                self.groups(&format!("{at}.externalServices"), groups);
            }
        }
    }

    fn internal(&mut self, at: &str, internal: &InternalService) {
        match internal.function() {
            None => self.fail(
                at.to_owned(),
                "needs exactly one function: `computePi` or `loader`",
            ),
            Some(Function::ComputePi(pi)) => {
                self.digits(
                    &format!("{at}.computePi.rangeComplexity"),
                    pi.range_complexity,
                );
                self.mean_size(
                    &format!("{at}.computePi"),
                    pi.mean_response_size,
                    pi.mean_bandwidth,
                );
            }
            Some(Function::Loader(loader)) => {
                let at = format!("{at}.loader");
                self.digits(
                    &format!("{at}.cpuStress.rangeComplexity"),
                    loader.cpu_stress.range_complexity,
                );
                let sleep = loader.sleep_stress.sleep_time;
                if !(sleep.is_finite() && (0.0..=MAX_SLEEP_SECONDS).contains(&sleep)) {
                    self.fail(
                        format!("{at}.sleepStress.sleepTime"),
                        format!("{sleep} must be between 0 and {MAX_SLEEP_SECONDS} seconds"),
                    );
                }
                self.mean_size(&at, loader.mean_response_size, loader.mean_bandwidth);
            }
        }
    }

    fn digits(&mut self, at: &str, [low, high]: [u32; 2]) {
        if low > high {
            self.fail(
                at.to_owned(),
                format!("minimum {low} is above maximum {high}"),
            );
        } else if high > MAX_PI_DIGITS {
            self.fail(
                at.to_owned(),
                format!("maximum {high} is above the limit of {MAX_PI_DIGITS} digits"),
            );
        }
    }

    fn mean_size(&mut self, at: &str, mean: f64, legacy: Option<f64>) {
        for (field, value) in [("meanResponseSize", Some(mean)), ("meanBandwidth", legacy)] {
            if let Some(value) = value
                && !(value.is_finite() && value >= 0.0)
            {
                self.fail(
                    format!("{at}.{field}"),
                    format!("{value} must be a finite number of kB, at least 0"),
                );
            }
        }
    }

    fn groups(&mut self, at: &str, groups: &[ExternalServiceGroup]) {
        for (index, group) in groups.iter().enumerate() {
            let at = format!("{at}[{index}]");
            if group.seq_len == Some(0) {
                self.fail(format!("{at}.seqLen"), "must be at least 1");
            }
            for (position, callee) in group.services.iter().enumerate() {
                if callee == self.caller {
                    self.fail(
                        format!("{at}.services[{position}]"),
                        format!("`{callee}` calls itself"),
                    );
                } else if !self.services.contains_key(callee) {
                    self.fail(
                        format!("{at}.services[{position}]"),
                        format!("`{callee}` is not a service of this mesh"),
                    );
                }
            }
            for (callee, probability) in &group.probabilities {
                let path = format!("{at}.probabilities.{callee}");
                if !group.services.contains(callee) {
                    self.fail(path, format!("`{callee}` is not in this group's services"));
                } else if !(0.0..=1.0).contains(probability) {
                    self.fail(path, format!("{probability} is not in [0, 1]"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Services {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn camel_case_and_snake_case_keys_are_the_same_spec() {
        let camel = parse(
            r#"{"a": {"internalService": {"computePi": {"rangeComplexity": [1, 2], "meanResponseSize": 3}},
                      "externalServices": [{"seqLen": 1, "services": ["b"], "probabilities": {"b": 0.5}}],
                      "requestMethod": "grpc", "alternativeBehaviors": {"x": {"externalServices": []}}},
                "b": {"internalService": {"loader": {"cpuStress": {"run": true, "rangeComplexity": [5, 6],
                      "threadPoolSize": 2, "trials": 3}, "sleepStress": {"sleepTime": 0.5}, "meanResponseSize": 1}}}}"#,
        );
        let snake = parse(
            r#"{"a": {"internal_service": {"compute_pi": {"range_complexity": [1, 2], "mean_response_size": 3}},
                      "external_services": [{"seq_len": 1, "services": ["b"], "probabilities": {"b": 0.5}}],
                      "request_method": "GRPC", "alternative_behaviors": {"x": {"external_services": []}}},
                "b": {"internal_service": {"loader": {"cpu_stress": {"run": true, "range_complexity": [5, 6],
                      "thread_pool_size": 2, "trials": 3}, "sleep_stress": {"sleep_time": 0.5}, "mean_response_size": 1}}}}"#,
        );
        assert_eq!(camel, snake);
        assert_eq!(camel["a"].request_method, RequestMethod::Grpc);
        let Some(Function::Loader(loader)) = camel["b"].internal_service.function() else {
            panic!("b runs loader")
        };
        assert_eq!(loader.cpu_stress.thread_pool_size, 2);
        // Defaults fill what the file leaves out, field by field.
        assert!(loader.sleep_stress.run);
        assert_eq!(loader.memory_stress, MemoryStress::default());
    }

    #[test]
    fn defaults_are_mubenchs() {
        let services = parse(r#"{"a": {"internal_service": {"compute_pi": {}}}}"#);
        let a = &services["a"];
        assert_eq!(
            a.internal_service,
            InternalService::compute_pi(ComputePi::default())
        );
        assert_eq!(ComputePi::default().range_complexity, [50, 100]);
        assert_eq!(ComputePi::default().mean_body_kb(), 10.0);
        assert_eq!(Loader::default().mean_body_kb(), 11.0);
        assert_eq!(a.path(), "/api/v1");
        assert_eq!((a.workers(), a.threads(), a.concurrency()), (1, 4, 4));
        assert_eq!(a.request_method, RequestMethod::Rest);
    }

    #[test]
    fn mean_bandwidth_overrides_mean_response_size() {
        let services = parse(
            r#"{"a": {"internal_service": {"compute_pi": {"mean_response_size": 5, "mean_bandwidth": 0.01}}}}"#,
        );
        let Some(Function::ComputePi(pi)) = services["a"].internal_service.function() else {
            panic!("computePi")
        };
        assert_eq!(pi.mean_body_kb(), 0.01);
    }

    #[test]
    fn flat_and_kubernetes_resources_merge_with_resources_winning() {
        let mut services = parse(
            r#"{"a": {"internal_service": {"compute_pi": {}}, "cpu-requests": "250m", "cpu-limits": 1,
                      "memory-limits": "512Mi", "resources": {"limits": {"cpu": "2"}}}}"#,
        );
        let a = services.get_mut("a").unwrap();
        a.normalize();
        let resources = a.resources.as_ref().unwrap();
        assert_eq!(resources.requests["cpu"], Quantity("250m".into()));
        assert_eq!(resources.limits["cpu"], Quantity("2".into()));
        assert_eq!(resources.limits["memory"], Quantity("512Mi".into()));
        assert_eq!(a.cpu_limits, None, "flat keys are folded away");
        let yaml = serde_json::to_string(a).unwrap();
        assert!(!yaml.contains("cpu-"), "{yaml}");
    }

    #[test]
    fn request_method_rejects_unknown_protocols() {
        let err = serde_json::from_str::<RequestMethod>(r#""soap""#).unwrap_err();
        assert!(err.to_string().contains("`rest` or `grpc`"), "{err}");
    }

    #[test]
    fn validate_names_each_bad_field() {
        let services = parse(
            r#"{"a": {"internal_service": {"compute_pi": {"range_complexity": [9, 3], "mean_response_size": -1}},
                      "external_services": [{"seq_len": 0, "services": ["a", "zz", "b"], "probabilities": {"b": 1.5, "c": 1}}],
                      "threads": 0, "path": "api"},
                "b": {"internal_service": {"loader": {"sleep_stress": {"sleep_time": -2}}}}}"#,
        );
        let errors = validate(&services).unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a.threads",
                "a.path",
                "a.internalService.computePi.rangeComplexity",
                "a.internalService.computePi.meanResponseSize",
                "a.externalServices[0].seqLen",
                "a.externalServices[0].services[0]",
                "a.externalServices[0].services[1]",
                "a.externalServices[0].probabilities.b",
                "a.externalServices[0].probabilities.c",
                "b.internalService.loader.sleepStress.sleepTime",
            ]
        );
        let text = errors.to_string();
        assert!(text.contains("`a` calls itself"), "{text}");
        assert!(
            text.contains("`zz` is not a service of this mesh"),
            "{text}"
        );
    }

    #[test]
    fn schema_uses_camel_case_names_and_hides_flat_resource_keys() {
        let schema = serde_json::to_string(&schemars::schema_for!(ServiceSpec)).unwrap();
        for name in [
            "internalService",
            "externalServices",
            "seqLen",
            "meanResponseSize",
        ] {
            assert!(schema.contains(name), "{name} missing from the schema");
        }
        assert!(!schema.contains("cpu-requests"));
        assert!(!schema.contains("internal_service"));
    }
}
