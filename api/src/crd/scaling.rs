//! `ScalingPolicy` (short name `sp`): in-place vertical scaling of a WorkModel's or an App's
//! pods, Serverless Containers' Guardian and Scaler on Kubernetes' `pods/resize`.
//!
//! Per guarded resource (a `cpu` or `memory` section; a missing section is not scaled), every
//! `window` the Guardian compares the container's usage with its limit: above `upper` × limit
//! is an *up* event, below `lower` × limit a *down* event. Events older than `eventTimeout`
//! are forgotten; `upEvents` up events scale up, `downEvents` down events scale down, by the
//! `scaleUp` / `scaleDown` action, clamped to [`min`, `max`], at most once per `cooldown`.
//!
//! Defaults are Serverless Containers' (2 up events; 6 down events for CPU, 8 for memory;
//! +0.75 CPU or +256Mi up; fit to usage down) and VPA's for the OOM bump (×1.2, at least
//! +100Mi). Admission refuses policies that cannot work: `min` > `max`, `lower` ≥ `upper`, an
//! `eventTimeout` too short to ever collect the events a rule needs (Serverless Containers'
//! own defaults have that flaw), a fit-to-usage margin that would land usage outside the
//! band (the next window would scale again), a budget below one pod's minimum.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::conditions::{self, Condition};
use super::workmodel::{MAX_NAME_LENGTH, MAX_SERVICES};
use crate::profile::HumanDuration;
use crate::service::Quantity;

/// Guardian tick when the policy names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Lookback of the usage queries when the policy names none: three 5 s scrape intervals.
///
/// The default CPU query is `irate(…[window])`, the usage between the last two scrapes in
/// the window: a load step shows in full one scrape after the first that sees it. (A
/// `rate()` over the whole window needed the window to fill: three scrapes, ~7 s more.)
/// The window must always hold two samples: with a 5 s scrape a 10 s window holds two only
/// when the scrapes fall just right (otherwise Prometheus returns nothing and the Guardian
/// holds); 15 s always does. Reaction to a load step that throttles the container, with the
/// other defaults: the second scrape after the step shows it pinned at its limit (0–5 s
/// scrape phase + 5 s), the next tick (0–5 s later) counts the throttled window and scales
/// up (`throttledUpEvents: 1`), and pods/resize lands in the cgroup within about a second:
/// 6–16 s, 11 s on average. A step that raises usage above `upper` without throttling needs
/// `upEvents` (2) windows: one `interval` more.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(15);
/// Least time between two actions on one container when the policy names none.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(15);
/// Fraction of the limit above which usage is an up event, by default.
pub const DEFAULT_UPPER: f64 = 0.8;
/// Fraction of the limit below which usage is a down event, by default.
pub const DEFAULT_LOWER: f64 = 0.4;
/// Up events that trigger a scale-up, by default (both resources).
pub const DEFAULT_UP_EVENTS: u32 = 2;
/// Throttled windows (CPU usage ≥ 95 % of the limit) that trigger a scale-up, by default.
///
/// One: a throttled container's usage hides how much more it needs, and every window at the
/// limit is work queued. Waiting for `upEvents` such windows added a whole `interval` to the
/// reaction to a load step; noise cannot fake a window pinned at the quota.
pub const DEFAULT_THROTTLED_UP_EVENTS: u32 = 1;
/// Share of CPU periods throttled at or above which a window counts as throttled, by
/// default: the threshold of the Kubernetes monitoring mixin's `CPUThrottlingHigh` alert.
///
/// A container that wakes now and then between bursts (timers, probes, scrapes) has its
/// idle periods counted too, which dilutes the share: the `pi` cell of the scaling bench,
/// throttled in two of the three periods of every burst, reads 12 %. Lower `throttledShare`
/// for such bursty services.
pub const DEFAULT_THROTTLED_SHARE: f64 = 0.25;
/// Headroom of `fitToUsage` when the action names none: the new limit is usage × 1.5, so
/// usage sits at 67 % of it, inside the default band.
pub const DEFAULT_FIT_MARGIN: f64 = 0.5;
/// Default PromQL for CPU usage (cores) per container; `{{window}}` becomes the policy's window.
pub const DEFAULT_CPU_QUERY: &str = "sum by (namespace,pod,container) \
     (irate(container_cpu_usage_seconds_total{container!=\"\"}[{{window}}]))";
/// Default PromQL for the share of CFS periods (0–1) in which each container was throttled
/// over the window: cAdvisor's `container_cpu_cfs_throttled_periods_total` over
/// `container_cpu_cfs_periods_total`. The kernel stops counting periods after one fully idle
/// period, so a container idle between bursts is not diluted by its idle time, though
/// wakeups between bursts (timers, probes) are counted.
pub const DEFAULT_THROTTLING_QUERY: &str = "sum by (namespace,pod,container) \
     (irate(container_cpu_cfs_throttled_periods_total{container!=\"\"}[{{window}}])) \
     / sum by (namespace,pod,container) \
     (irate(container_cpu_cfs_periods_total{container!=\"\"}[{{window}}]))";
/// Default PromQL for memory usage (bytes) per container.
pub const DEFAULT_MEMORY_QUERY: &str =
    "max by (namespace,pod,container) (container_memory_working_set_bytes{container!=\"\"})";

/// A resource the Guardian can scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// CPU, in cores.
    Cpu,
    /// Memory, in bytes.
    Memory,
}

impl Resource {
    /// Down events that trigger a scale-down when the policy names none (Serverless
    /// Containers: 6 for CPU, 8 for memory).
    pub const fn default_down_events(self) -> u32 {
        match self {
            Self::Cpu => 6,
            Self::Memory => 8,
        }
    }

    /// The scale-up action when the policy names none: +0.75 CPU (Serverless Containers' 75
    /// shares) or +256Mi.
    pub fn default_scale_up(self) -> ScaleAction {
        ScaleAction::amount(match self {
            Self::Cpu => "750m",
            Self::Memory => "256Mi",
        })
    }

    /// The field name of the resource's section (`cpu`, `memory`).
    pub const fn field(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
        }
    }
}

/// Resizes the CPU and memory of running pods in place (no restart) from their measured
/// usage: Serverless Containers' Guardian deciding, Kubernetes' pod resize applying.
// Each `printcolumn(...)` repeats `name`/`type_`/`json_path`: one column per list, not
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "cellmesh.io",
    version = "v1alpha1",
    kind = "ScalingPolicy",
    doc = "Resizes the CPU and memory of running WorkModel or App pods in place, from their measured usage.",
    plural = "scalingpolicies",
    namespaced,
    shortname = "sp",
    category = "cellmesh",
    status = "ScalingPolicyStatus",
    cel,
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.targetRef.kind"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Metrics",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"MetricsAvailable\")].status",
        description = "Whether usage could be read (False: every size is held)"
    ),
    printcolumn(
        name = "Container",
        type_ = "string",
        json_path = ".status.containers[0].container",
        description = "The first guarded container (the next columns are its figures)",
        priority = 1
    ),
    printcolumn(
        name = "CPU Use",
        type_ = "string",
        json_path = ".status.containers[0].cpu.usage",
        description = "CPU usage of the first guarded container"
    ),
    printcolumn(
        name = "CPU Limit",
        type_ = "string",
        json_path = ".status.containers[0].cpu.limit",
        description = "CPU limit of the first guarded container"
    ),
    printcolumn(
        name = "CPU Rec",
        type_ = "string",
        json_path = ".status.containers[0].cpu.recommendation",
        description = "The CPU limit the Guardian recommends for the first guarded container"
    ),
    printcolumn(
        name = "Mem Use",
        type_ = "string",
        json_path = ".status.containers[0].memory.usage",
        description = "Memory usage of the first guarded container",
        priority = 1
    ),
    printcolumn(
        name = "Mem Limit",
        type_ = "string",
        json_path = ".status.containers[0].memory.limit",
        description = "Memory limit of the first guarded container",
        priority = 1
    ),
    printcolumn(
        name = "Mem Rec",
        type_ = "string",
        json_path = ".status.containers[0].memory.recommendation",
        description = "The memory limit the Guardian recommends for the first guarded container",
        priority = 1
    ),
    printcolumn(
        name = "Last Action",
        type_ = "string",
        json_path = ".status.lastAction",
        description = "The most recent resize, e.g. s0-7d9f/cell cpu 500m→1250m"
    ),
    printcolumn(
        name = "Last Scale",
        type_ = "date",
        json_path = ".status.lastScaleTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("has(self.cpu) || has(self.memory)")
        .message("a ScalingPolicy needs a cpu or a memory section (or both)"),
    validation = event_timeout_rule(Resource::Cpu),
    validation = event_timeout_rule(Resource::Memory),
    validation = Rule::new("!has(self.cpu) || !has(self.cpu.oomBump)")
        .message("oomBump applies to memory only"),
    validation = Rule::new("!has(self.memory) || !has(self.memory.throttledUpEvents)")
        .message("throttledUpEvents applies to cpu only: memory is never throttled"),
    validation = Rule::new("!has(self.memory) || !has(self.memory.throttledShare)")
        .message("throttledShare applies to cpu only: memory is never throttled"),
    validation = budget_rule(Resource::Cpu),
    validation = budget_rule(Resource::Memory),
)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicySpec {
    /// The pods to scale: a WorkModel (optionally only some of its services) or an App by
    /// name, or any pods of the namespace by label selector.
    pub target_ref: TargetRef,

    /// `InPlace` (default): resize running pods without restarting them. `Off`: only compute
    /// and report recommendations in the status. `InPlaceOrRecreate`: resize in place, and
    /// where that is impossible (the kubelet answers `Infeasible`, or a memory decrease the
    /// container's `resizePolicy` forbids in place) put the size into the WorkModel's or
    /// App's pod template (`status.templateRecommendations`), which recreates its pods. In
    /// every mode but `Off`, a pod that appears later gets its workload's size at once.
    #[serde(default)]
    pub mode: ScalingMode,

    /// How often the Guardian looks at usage and decides. Default `5s`.
    #[serde(default = "default_interval")]
    #[schemars(schema_with = "duration_schema")]
    pub interval: HumanDuration,

    /// Lookback of the usage queries (`{{window}}` in their templates). The default CPU
    /// query reads the usage between the last two scrapes in it (`irate`), so it must always
    /// hold two: keep it ≥ 3 × the scrape interval. Default `15s` (three 5 s scrapes; with
    /// 10 s Prometheus often finds one sample and returns nothing). Each tick yields at most
    /// one event per resource.
    #[serde(default = "default_window")]
    #[schemars(schema_with = "duration_schema")]
    pub window: HumanDuration,

    /// CPU scaling (limits in cores). Without this section CPU is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<ResourcePolicy>,

    /// Memory scaling (limits in bytes). Without this section memory is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ResourcePolicy>,

    /// Optional ceiling on the sum of the limits of all targeted pods. When the pods together
    /// ask for more, the budget is shared in proportion to their demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,

    /// Least time between two resizes of one container. Default `15s`.
    #[serde(default = "default_cooldown")]
    #[schemars(schema_with = "duration_schema")]
    pub cooldown: HumanDuration,

    /// Where usage comes from. Default: the operator's Prometheus (`--prometheus-url`) with
    /// cAdvisor's metrics; when neither the policy nor the operator names a Prometheus, the
    /// resource metrics API `metrics.k8s.io/v1beta1` (PodMetrics, as `kubectl top pods`).
    #[serde(default, skip_serializing_if = "Metrics::is_default")]
    pub metrics: Metrics,
}

impl ScalingPolicySpec {
    /// The policy of one resource, if it is guarded.
    pub fn resource(&self, resource: Resource) -> Option<&ResourcePolicy> {
        match resource {
            Resource::Cpu => self.cpu.as_ref(),
            Resource::Memory => self.memory.as_ref(),
        }
    }

    /// Events older than this are forgotten: the policy's `eventTimeout`, or
    /// `max(upEvents, downEvents) × window`.
    pub fn event_timeout(&self, resource: Resource) -> Option<Duration> {
        let policy = self.resource(resource)?;
        if let Some(timeout) = policy.event_timeout {
            return Some(timeout.get());
        }
        let events = policy.up_events.max(policy.down_events(resource));
        Some(self.window.get().saturating_mul(events))
    }
}

fn default_interval() -> HumanDuration {
    DEFAULT_INTERVAL.into()
}

fn default_window() -> HumanDuration {
    DEFAULT_WINDOW.into()
}

fn default_cooldown() -> HumanDuration {
    DEFAULT_COOLDOWN.into()
}

/// `<resource>.eventTimeout ≥ max(upEvents, downEvents) × window`, with the resource's
/// default for `downEvents`.
fn event_timeout_rule(resource: Resource) -> Rule {
    let r = resource.field();
    let down = resource.default_down_events();
    Rule::new(format!(
        "!has(self.{r}) || !has(self.{r}.eventTimeout) || \
         (duration(self.{r}.eventTimeout).getMilliseconds() >= \
            duration(self.window).getMilliseconds() * int(self.{r}.upEvents) && \
          duration(self.{r}.eventTimeout).getMilliseconds() >= \
            duration(self.window).getMilliseconds() * \
            int(has(self.{r}.downEvents) ? self.{r}.downEvents : {down}))"
    ))
    .message(Message::Message(format!(
        "{r}.eventTimeout must be at least max(upEvents, downEvents) × window, or the \
         events a rescale needs can never be collected"
    )))
}

/// A budget for a resource is at least that resource's `min` (one pod must fit).
fn budget_rule(resource: Resource) -> Rule {
    let r = resource.field();
    Rule::new(format!(
        "!has(self.budget) || !has(self.budget.{r}) || !has(self.{r}) || \
         !isQuantity(string(self.budget.{r})) || !isQuantity(string(self.{r}.min)) || \
         quantity(string(self.budget.{r})).compareTo(quantity(string(self.{r}.min))) >= 0"
    ))
    .message(Message::Message(format!(
        "budget.{r} must be at least {r}.min"
    )))
}

/// The pods a ScalingPolicy scales.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(
    validation = Rule::new("has(self.name) != has(self.selector)")
        .message("targetRef needs either kind and name, or selector"),
    validation = Rule::new("has(self.kind) == has(self.name)")
        .message("targetRef.kind and targetRef.name go together"),
    validation = Rule::new("!has(self.services) || (has(self.kind) && self.kind == 'WorkModel')")
        .message("targetRef.services applies to a WorkModel target only"),
)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `WorkModel` or `App`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TargetKind>,
    /// Name of the WorkModel or App, in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// WorkModel only: the services to scale. Default: every service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "service_names_schema")]
    pub services: Vec<String>,
    /// Instead of kind and name: the pods of the namespace whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Kind of a ScalingPolicy's target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetKind {
    /// A cellmesh WorkModel.
    WorkModel,
    /// A cellmesh App.
    App,
}

/// What the policy does with its decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ScalingMode {
    /// Only compute recommendations and report them in the status.
    Off,
    /// Resize running pods in place, never restarting or evicting them.
    #[default]
    InPlace,
    /// Resize in place; where that is impossible, put the size into the WorkModel's or
    /// App's pod template, so its pods are recreated at it.
    InPlaceOrRecreate,
}

/// How one resource (CPU or memory) of the targeted containers is scaled.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(
    validation = Rule::new("isQuantity(string(self.min)) && isQuantity(string(self.max))")
        .message("min and max must be quantities such as 250m, 2 or 512Mi"),
    validation = Rule::new(
        "!isQuantity(string(self.min)) || !isQuantity(string(self.max)) || \
         quantity(string(self.min)).compareTo(quantity(string(self.max))) <= 0"
    ).message("min must not exceed max"),
    validation = Rule::new("self.lower < self.upper").message("lower must be below upper"),
    validation = Rule::new(
        "!has(self.scaleUp) || self.scaleUp.policy != 'proportional' || \
         !has(self.scaleUp.factor) || self.scaleUp.factor > 1.0"
    ).message("scaleUp.factor must be above 1"),
    validation = Rule::new(
        "!has(self.scaleDown) || self.scaleDown.policy != 'proportional' || \
         !has(self.scaleDown.factor) || self.scaleDown.factor < 1.0"
    ).message("scaleDown.factor must be below 1"),
    validation = Rule::new(format!(
        "!has(self.scaleDown) || self.scaleDown.policy != 'fitToUsage' || \
         (1.0 / (1.0 + (has(self.scaleDown.margin) ? self.scaleDown.margin : {DEFAULT_FIT_MARGIN:?})) \
            < self.upper && \
          1.0 / (1.0 + (has(self.scaleDown.margin) ? self.scaleDown.margin : {DEFAULT_FIT_MARGIN:?})) \
            > self.lower)"
    )).message(Message::Message(
        "scaleDown.margin must leave usage between lower and upper (usage / limit after \
         fitToUsage is 1 / (1 + margin)), or the next window would scale again".into()
    )),
)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePolicy {
    /// Smallest limit the policy may set, e.g. `100m` or `64Mi`.
    pub min: Quantity,
    /// Largest limit the policy may set, e.g. `"2"` or `2Gi`.
    pub max: Quantity,
    /// Usage above this fraction of the limit counts as an up event. Default 0.8.
    #[serde(default = "default_upper")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub upper: f64,
    /// Usage below this fraction of the limit counts as a down event. Default 0.4.
    #[serde(default = "default_lower")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub lower: f64,
    /// Up events needed to scale up. Default 2.
    #[serde(default = "default_up_events")]
    #[schemars(range(min = 1, max = 100))]
    pub up_events: u32,
    /// CPU only: windows in which the container was throttled (usage at least 95 % of its
    /// limit) that are enough to scale up, counted among the up events. A throttled
    /// container's usage hides its demand and it queues work in every such window, so by
    /// default one is enough. Set it to `upEvents` to treat throttling as any up event.
    /// Rejected in the memory section: memory is never throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub throttled_up_events: Option<u32>,
    /// CPU only: the share (0.01–1) of CPU periods in which the container was throttled
    /// (`metrics.throttlingQuery`) at or above which a window is a throttled window, whatever
    /// its average usage. Default 0.25 (the Kubernetes mixin's `CPUThrottlingHigh`). Rejected
    /// in the memory section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 1.0))]
    pub throttled_share: Option<f64>,
    /// Down events needed to scale down. Default 6 for cpu, 8 for memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub down_events: Option<u32>,
    /// Events older than this are forgotten. Must be at least max(upEvents, downEvents) ×
    /// window. Default: exactly that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_schema")]
    pub event_timeout: Option<HumanDuration>,
    /// How to grow the limit. Default: `amount` of 750m for cpu, 256Mi for memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScaleAction>,
    /// How to shrink the limit. Default: `fitToUsage` with margin 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleAction>,
    /// Memory only: after an out-of-memory kill, raise the limit at once by max(factor ×
    /// limit − limit, min). Default factor 1.2, min 100Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_bump: Option<OomBump>,
}

fn default_upper() -> f64 {
    DEFAULT_UPPER
}

fn default_lower() -> f64 {
    DEFAULT_LOWER
}

fn default_up_events() -> u32 {
    DEFAULT_UP_EVENTS
}

impl ResourcePolicy {
    /// A policy between `min` and `max` with every other field at its default.
    pub fn new(min: &str, max: &str) -> Self {
        Self {
            min: Quantity(min.to_owned()),
            max: Quantity(max.to_owned()),
            upper: DEFAULT_UPPER,
            lower: DEFAULT_LOWER,
            up_events: DEFAULT_UP_EVENTS,
            throttled_up_events: None,
            throttled_share: None,
            down_events: None,
            event_timeout: None,
            scale_up: None,
            scale_down: None,
            oom_bump: None,
        }
    }

    /// `throttledUpEvents`, defaulted: never more than `upEvents` (a throttled window is an
    /// up event too).
    pub fn throttled_up_events(&self) -> u32 {
        self.throttled_up_events
            .unwrap_or(DEFAULT_THROTTLED_UP_EVENTS)
            .min(self.up_events)
    }

    /// `throttledShare`, defaulted.
    pub fn throttled_share(&self) -> f64 {
        self.throttled_share.unwrap_or(DEFAULT_THROTTLED_SHARE)
    }

    /// `downEvents`, defaulted for this resource.
    pub fn down_events(&self, resource: Resource) -> u32 {
        self.down_events
            .unwrap_or_else(|| resource.default_down_events())
    }

    /// `scaleUp`, defaulted for this resource.
    pub fn scale_up(&self, resource: Resource) -> ScaleAction {
        self.scale_up
            .clone()
            .unwrap_or_else(|| resource.default_scale_up())
    }

    /// `scaleDown`, defaulted.
    pub fn scale_down(&self) -> ScaleAction {
        self.scale_down
            .clone()
            .unwrap_or_else(ScaleAction::fit_to_usage)
    }
}

/// One rescale step.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(
    validation = Rule::new("self.policy != 'amount' || has(self.amount)")
        .message("policy amount needs amount"),
    validation = Rule::new("self.policy != 'proportional' || has(self.factor)")
        .message("policy proportional needs factor"),
    validation = Rule::new(
        "!has(self.amount) || (isQuantity(string(self.amount)) && \
         quantity(string(self.amount)).sign() > 0)"
    ).message("amount must be a positive quantity such as 500m or 256Mi"),
)]
#[serde(rename_all = "camelCase")]
pub struct ScaleAction {
    /// `amount`: add (up) or subtract (down) `amount`. `proportional`: multiply the limit by
    /// `factor`. `fitToUsage`: set the limit to usage × (1 + `margin`).
    pub policy: RescalePolicy,
    /// For `amount`: the step, e.g. `500m` or `256Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub amount: Option<Quantity>,
    /// For `proportional`: the multiplier, above 1 to scale up, below 1 to scale down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub factor: Option<f64>,
    /// For `fitToUsage`: headroom above usage as a fraction of it. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub margin: Option<f64>,
}

impl ScaleAction {
    /// Add or subtract a fixed quantity.
    pub fn amount(quantity: &str) -> Self {
        Self {
            policy: RescalePolicy::Amount,
            amount: Some(Quantity(quantity.to_owned())),
            factor: None,
            margin: None,
        }
    }

    /// Fit the limit to usage with the default margin.
    pub fn fit_to_usage() -> Self {
        Self {
            policy: RescalePolicy::FitToUsage,
            amount: None,
            factor: None,
            margin: Some(DEFAULT_FIT_MARGIN),
        }
    }
}

/// How a rescale step computes the new limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RescalePolicy {
    /// A fixed step.
    Amount,
    /// A multiple of the current limit.
    Proportional,
    /// Usage plus a margin.
    FitToUsage,
}

/// Memory bump after an out-of-memory kill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OomBump {
    /// The new limit is at least the old one times this. Default 1.2.
    #[serde(default = "default_oom_factor")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub factor: f64,
    /// The new limit is at least the old one plus this. Default 100Mi.
    #[serde(default = "default_oom_min")]
    pub min: Quantity,
}

fn default_oom_factor() -> f64 {
    1.2
}

fn default_oom_min() -> Quantity {
    Quantity("100Mi".to_owned())
}

/// Ceilings on the sum of the targeted pods' limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Most CPU all targeted pods may have together, e.g. `"8"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub cpu: Option<Quantity>,
    /// Most memory all targeted pods may have together, e.g. `8Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub memory: Option<Quantity>,
}

/// Where the Guardian reads usage: Prometheus when one is named here or by the operator's
/// `--prometheus-url`, otherwise `metrics.k8s.io/v1beta1` PodMetrics (metrics-server or
/// cellmesh-local's node agents; the queries below are then unused).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// The Prometheus server to query. Default: the operator's `--prometheus-url`; without
    /// either, usage comes from `metrics.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
    /// PromQL giving CPU usage in cores by `namespace`, `pod` and `container`; `{{window}}`
    /// is replaced by the window. Default: the per-second rate of cAdvisor's
    /// `container_cpu_usage_seconds_total` between the last two samples in the window
    /// (`irate`), which sees a load step one scrape sooner than `rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub cpu_query: Option<String>,
    /// PromQL giving memory usage in bytes by `namespace`, `pod` and `container`. Default:
    /// cAdvisor's `container_memory_working_set_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub memory_query: Option<String>,
    /// PromQL giving, by `namespace`, `pod` and `container`, the share (0–1) of CPU periods
    /// in which the container was throttled by its limit; `{{window}}` is replaced by the
    /// window. A window throttled in a quarter of its periods or more counts as throttled
    /// even when its average usage is below the limit (bursts). Optional: when it fails or
    /// has no sample, only the usage decides. Default: cAdvisor's
    /// `container_cpu_cfs_throttled_periods_total` over `container_cpu_cfs_periods_total`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub throttling_query: Option<String>,
}

impl Metrics {
    /// True when nothing is overridden.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The CPU query, defaulted.
    pub fn cpu_query(&self) -> &str {
        self.cpu_query.as_deref().unwrap_or(DEFAULT_CPU_QUERY)
    }

    /// The memory query, defaulted.
    pub fn memory_query(&self) -> &str {
        self.memory_query.as_deref().unwrap_or(DEFAULT_MEMORY_QUERY)
    }

    /// The CPU throttling query, defaulted.
    pub fn throttling_query(&self) -> &str {
        self.throttling_query
            .as_deref()
            .unwrap_or(DEFAULT_THROTTLING_QUERY)
    }
}

/// A Prometheus server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Base URL of its HTTP API, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
}

/// What the operator last observed and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: valid and applied to its target. `MetricsAvailable`: the last usage query
    /// succeeded (while False the policy holds every size). `ResizePending`: a resize waits
    /// for the kubelet. `ResizeInfeasible`: the kubelet refused a resize as impossible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions::schema")]
    pub conditions: Vec<Condition>,
    /// The most recent resize, e.g. `s0-7d9f/cell cpu 500m→1250m (2 up events)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<String>,
    /// When the most recent resize was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Per targeted container: usage, size, bands, event counts and the recommendation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "container_statuses_schema")]
    pub containers: Vec<ContainerScalingStatus>,
    /// Per workload (a WorkModel service, an App, or for selector targets the Deployment of
    /// the pods) and container: the size this policy last gave its containers. A pod of the
    /// workload that appears later (a replica added, a pod recreated) is resized to it in
    /// place at once, without waiting for events (with `mode: Off` it is only recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "per_workload_container_schema::<WorkloadSize>")]
    pub sizes: Vec<WorkloadSize>,
    /// `mode: InPlaceOrRecreate` only: sizes that could not be applied in place (the kubelet
    /// answered `Infeasible`, or a memory decrease the container's `resizePolicy` forbids in
    /// place). The WorkModel or App controller writes them into the workload's pod template,
    /// so its pods are recreated at this size; for the containers listed they win over the
    /// WorkModel's or App's `resources` (as with VPA, the autoscaler wins for the pods it
    /// manages). Selector targets have no template the operator owns: there the fallback is
    /// only reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "per_workload_container_schema::<WorkloadSize>")]
    pub template_recommendations: Vec<WorkloadSize>,
    /// Out-of-memory kills of the last 24 hours, per workload and container: until 24 hours
    /// after the last one, memory scale-downs stop at `limit` / `upper`. Kept here so that a
    /// restarted operator (or a new leader) neither forgets them nor bumps memory again for
    /// a kill already handled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "per_workload_container_schema::<OomKill>")]
    pub oom_kills: Vec<OomKill>,
}

/// An out-of-memory kill of a workload's container that the policy remembers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OomKill {
    /// The WorkModel service, the App, or (selector targets) the Deployment; a pod's name
    /// when its workload is unknown.
    pub workload: String,
    /// The container's name.
    pub container: String,
    /// The highest memory limit it was killed at within the last 24 hours.
    pub limit: Quantity,
    /// When the last of those kills happened (the container's `finishedAt`).
    pub last_kill_time: Time,
}

/// The size of one container of a workload's pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSize {
    /// The WorkModel service, the App, or (selector targets) the Deployment.
    pub workload: String,
    /// The container's name.
    pub container: String,
    /// CPU request and limit, when the policy sized CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<ContainerSize>,
    /// Memory request and limit, when the policy sized memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ContainerSize>,
}

impl WorkloadSize {
    /// The size of one resource.
    pub fn resource(&self, resource: Resource) -> Option<&ContainerSize> {
        match resource {
            Resource::Cpu => self.cpu.as_ref(),
            Resource::Memory => self.memory.as_ref(),
        }
    }

    /// The size of one resource, to change.
    pub fn resource_mut(&mut self, resource: Resource) -> &mut Option<ContainerSize> {
        match resource {
            Resource::Cpu => &mut self.cpu,
            Resource::Memory => &mut self.memory,
        }
    }
}

/// A request and limit pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSize {
    /// The request (kept at the container's original request:limit ratio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub request: Option<Quantity>,
    /// The limit.
    pub limit: Quantity,
}

/// What the Guardian knows about one container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerScalingStatus {
    /// The pod's name.
    pub pod: String,
    /// The container's name.
    pub container: String,
    /// CPU state, when CPU is guarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<ResourceScalingStatus>,
    /// Memory state, when memory is guarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ResourceScalingStatus>,
    /// This container's most recent resize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<String>,
    /// When this container was last resized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// One resource of one container, as the Guardian saw it in its last window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceScalingStatus {
    /// Average usage over the last window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub usage: Option<Quantity>,
    /// The current request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub request: Option<Quantity>,
    /// The current limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub limit: Option<Quantity>,
    /// Usage above this is an up event (upper × limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub upper: Option<Quantity>,
    /// Usage below this is a down event (lower × limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub lower: Option<Quantity>,
    /// Up events within the event timeout.
    #[serde(default)]
    pub up_events: u32,
    /// Down events within the event timeout.
    #[serde(default)]
    pub down_events: u32,
    /// The limit the Guardian would set now (applied unless `mode` is `Off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub recommendation: Option<Quantity>,
    /// CPU only: the percentage of CPU periods in the last window in which the container
    /// was throttled by its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_percent: Option<u32>,
    /// A scale-down goes no lower than this. CPU: the container was throttled at the limit
    /// `upper` × floor, and its usage has not fallen below `lower` × what it was then.
    /// Memory: the workload's container was OOM-killed at the limit `upper` × floor within
    /// the last 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::optional_quantity")]
    pub floor: Option<Quantity>,
}

/// A Go-style duration string (`10s`, `1m30s`, `500ms`): what both Kubernetes' CEL
/// `duration()` and cellmesh parse.
fn duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": "^([0-9]+(ns|us|ms|s|m|h))+$",
        "maxLength": 32
    })
}

fn optional_duration_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = duration_schema(generator);
    schema.insert("nullable".to_owned(), true.into());
    schema
}

fn service_names_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "string", "maxLength": MAX_NAME_LENGTH},
        "maxItems": MAX_SERVICES,
        "x-kubernetes-list-type": "set"
    })
}

/// A list of `T`, one per workload and container (a map list, so server-side apply and
/// strategic merges key it by both).
fn per_workload_container_schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<T>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["workload", "container"]
    })
}

fn container_statuses_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<ContainerScalingStatus>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["pod", "container"]
    })
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use super::*;
    use crate::crd::test_support::*;

    fn policy(spec: Value) -> ScalingPolicy {
        serde_json::from_value(json!({
            "apiVersion": "cellmesh.io/v1alpha1",
            "kind": "ScalingPolicy",
            "metadata": {"name": "shop"},
            "spec": spec
        }))
        .unwrap()
    }

    fn target() -> Value {
        json!({"kind": "WorkModel", "name": "shop"})
    }

    fn messages(spec: Value) -> Vec<String> {
        cel_messages(policy(spec).validate_cel())
    }

    #[test]
    fn defaults_are_serverless_containers_and_pass() {
        let sp = policy(
            json!({"targetRef": target(), "cpu": {"min": "100m", "max": 2},
                               "memory": {"min": "64Mi", "max": "1Gi"}}),
        );
        let spec = &sp.spec;
        assert_eq!(spec.mode, ScalingMode::InPlace);
        assert_eq!(spec.interval.get(), Duration::from_secs(5));
        // Three 5 s scrapes, not Serverless Containers' 10 s (see DEFAULT_WINDOW).
        assert_eq!(spec.window.get(), Duration::from_secs(15));
        assert_eq!(spec.cooldown.get(), Duration::from_secs(15));
        let cpu = spec.cpu.as_ref().unwrap();
        assert_eq!((cpu.upper, cpu.lower, cpu.up_events), (0.8, 0.4, 2));
        assert_eq!(cpu.down_events(Resource::Cpu), 6);
        assert_eq!(cpu.scale_up(Resource::Cpu), ScaleAction::amount("750m"));
        assert_eq!(cpu.scale_down(), ScaleAction::fit_to_usage());
        assert_eq!(cpu.max, Quantity("2".into()));
        let memory = spec.memory.as_ref().unwrap();
        assert_eq!(memory.down_events(Resource::Memory), 8);
        assert_eq!(
            memory.scale_up(Resource::Memory),
            ScaleAction::amount("256Mi")
        );
        // eventTimeout defaults to exactly what the rules need: 6 and 8 windows of 15 s.
        assert_eq!(
            spec.event_timeout(Resource::Cpu),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            spec.event_timeout(Resource::Memory),
            Some(Duration::from_secs(120))
        );
        assert_eq!(spec.metrics.cpu_query(), DEFAULT_CPU_QUERY);
        assert!(
            spec.metrics
                .memory_query()
                .contains("container_memory_working_set_bytes")
        );
        assert_eq!(cel_messages(sp.validate_cel()), Vec::<String>::new());
    }

    #[test]
    fn target_is_kind_and_name_or_a_selector() {
        let cpu = json!({"min": "1", "max": "2"});
        let with_target =
            |target: Value| messages(json!({"targetRef": target, "cpu": cpu.clone()}));
        let selector = json!({"matchLabels": {"app": "web"}});
        assert!(with_target(json!({"selector": selector})).is_empty());
        assert!(with_target(json!({"kind": "App", "name": "a"})).is_empty());
        assert_eq!(
            with_target(json!({})),
            ["targetRef needs either kind and name, or selector"]
        );
        assert_eq!(
            with_target(json!({"kind": "App", "name": "a", "selector": selector})),
            ["targetRef needs either kind and name, or selector"]
        );
        assert_eq!(
            with_target(json!({"name": "a"})),
            ["targetRef.kind and targetRef.name go together"]
        );
        assert_eq!(
            with_target(json!({"kind": "App", "name": "a", "services": ["s0"]})),
            ["targetRef.services applies to a WorkModel target only"]
        );
        assert!(
            with_target(json!({"kind": "WorkModel", "name": "a", "services": ["s0"]})).is_empty()
        );
    }

    #[test]
    fn a_policy_guards_at_least_one_resource() {
        assert_eq!(
            messages(json!({"targetRef": target()})),
            ["a ScalingPolicy needs a cpu or a memory section (or both)"]
        );
    }

    #[test]
    fn min_must_not_exceed_max_across_units() {
        assert!(
            messages(json!({"targetRef": target(), "cpu": {"min": "500m", "max": 1}})).is_empty()
        );
        assert_eq!(
            messages(json!({"targetRef": target(), "cpu": {"min": "1500m", "max": 1}})),
            ["min must not exceed max"]
        );
        assert_eq!(
            messages(json!({"targetRef": target(), "memory": {"min": "2Gi", "max": "1000Mi"}})),
            ["min must not exceed max"]
        );
        assert_eq!(
            messages(json!({"targetRef": target(), "memory": {"min": "lots", "max": "1Gi"}})),
            ["min and max must be quantities such as 250m, 2 or 512Mi"]
        );
    }

    #[test]
    fn lower_must_be_below_upper() {
        assert_eq!(
            messages(json!({"targetRef": target(),
                            "cpu": {"min": "1", "max": "2", "upper": 0.5, "lower": 0.5}})),
            ["lower must be below upper"]
        );
    }

    #[test]
    fn event_timeout_must_cover_the_events_a_rule_needs() {
        // Serverless Containers' code defaults: 40 s timeout, 10 s window, 6 down events.
        assert_eq!(
            messages(json!({"targetRef": target(), "window": "10s",
                            "cpu": {"min": "1", "max": "2", "eventTimeout": "40s"}})),
            [
                "cpu.eventTimeout must be at least max(upEvents, downEvents) × window, or the \
              events a rescale needs can never be collected"
            ]
        );
        assert!(
            messages(json!({"targetRef": target(), "window": "10s",
                                "cpu": {"min": "1", "max": "2", "eventTimeout": "1m"}}))
            .is_empty()
        );
        // With the default 15 s window, 6 down events need 90 s.
        assert_eq!(
            messages(json!({"targetRef": target(),
                            "cpu": {"min": "1", "max": "2", "eventTimeout": "1m"}}))
            .len(),
            1
        );
        assert!(
            messages(json!({"targetRef": target(),
                                "cpu": {"min": "1", "max": "2", "eventTimeout": "1m30s"}}))
            .is_empty()
        );
        // Memory's default downEvents is 8: 8 × 15 s = 2 m.
        assert_eq!(
            messages(json!({"targetRef": target(),
                            "memory": {"min": "1Gi", "max": "2Gi", "eventTimeout": "1m50s"}}))
            .len(),
            1
        );
        assert!(
            messages(json!({"targetRef": target(),
                                "memory": {"min": "1Gi", "max": "2Gi", "eventTimeout": "2m"}}))
            .is_empty()
        );
        // upEvents counts too, and a longer window needs a longer timeout.
        assert_eq!(
            messages(json!({"targetRef": target(), "window": "20s",
                            "cpu": {"min": "1", "max": "2", "upEvents": 2, "downEvents": 2,
                                    "eventTimeout": "30s"}}))
            .len(),
            1
        );
    }

    #[test]
    fn scale_actions_need_their_parameter_and_direction() {
        let with = |scale_up: Value, scale_down: Value| {
            messages(
                json!({"targetRef": target(), "cpu": {"min": "1", "max": "2",
                           "scaleUp": scale_up, "scaleDown": scale_down}}),
            )
        };
        let fit = json!({"policy": "fitToUsage"});
        assert!(
            with(
                json!({"policy": "proportional", "factor": 1.5}),
                fit.clone()
            )
            .is_empty()
        );
        assert_eq!(
            with(json!({"policy": "amount"}), fit.clone()),
            ["policy amount needs amount"]
        );
        assert_eq!(
            with(json!({"policy": "proportional"}), fit.clone()),
            ["policy proportional needs factor"]
        );
        assert_eq!(
            with(
                json!({"policy": "proportional", "factor": 0.5}),
                fit.clone()
            ),
            ["scaleUp.factor must be above 1"]
        );
        assert_eq!(
            with(json!({"policy": "amount", "amount": "-1"}), fit.clone()),
            ["amount must be a positive quantity such as 500m or 256Mi"]
        );
        assert_eq!(
            with(
                json!({"policy": "amount", "amount": "250m"}),
                json!({"policy": "proportional", "factor": 1.2})
            ),
            ["scaleDown.factor must be below 1"]
        );
    }

    #[test]
    fn fit_to_usage_must_land_inside_the_band() {
        let with_margin = |margin: f64| {
            messages(
                json!({"targetRef": target(), "cpu": {"min": "1", "max": "2",
                           "scaleDown": {"policy": "fitToUsage", "margin": margin}}}),
            )
        };
        assert!(with_margin(0.5).is_empty());
        // usage / limit = 1 / 1.25 = 0.8 = upper: the next window is an up event.
        assert_eq!(with_margin(0.25).len(), 1);
        // usage / limit = 1 / 3 < lower: the next window is a down event again.
        assert!(with_margin(2.0)[0].starts_with("scaleDown.margin must leave usage"));
    }

    #[test]
    fn oom_bump_is_memory_only_throttling_cpu_only_and_budget_covers_min() {
        assert_eq!(
            messages(json!({"targetRef": target(),
                            "cpu": {"min": "1", "max": "2", "oomBump": {}}})),
            ["oomBump applies to memory only"]
        );
        assert_eq!(
            messages(json!({"targetRef": target(),
                            "memory": {"min": "1Gi", "max": "2Gi", "throttledUpEvents": 1}})),
            ["throttledUpEvents applies to cpu only: memory is never throttled"]
        );
        assert!(
            messages(json!({"targetRef": target(),
                            "cpu": {"min": "1", "max": "2", "throttledUpEvents": 1}}))
            .is_empty()
        );
        assert_eq!(
            messages(json!({"targetRef": target(),
                            "memory": {"min": "1Gi", "max": "2Gi", "throttledShare": 0.1}})),
            ["throttledShare applies to cpu only: memory is never throttled"]
        );
        let sp = policy(json!({"targetRef": target(),
                               "cpu": {"min": "1", "max": "2", "throttledShare": 0.1}}));
        assert_eq!(sp.spec.cpu.as_ref().unwrap().throttled_share(), 0.1);
        assert!(sp.validate_cel().is_ok());
        let sp = policy(json!({"targetRef": target(),
                               "memory": {"min": "1Gi", "max": "2Gi", "oomBump": {}}}));
        let bump = sp.spec.memory.as_ref().unwrap().oom_bump.as_ref().unwrap();
        assert_eq!((bump.factor, bump.min.0.as_str()), (1.2, "100Mi"));
        assert!(sp.validate_cel().is_ok());
        assert_eq!(
            messages(
                json!({"targetRef": target(), "cpu": {"min": "2", "max": "4"},
                            "budget": {"cpu": "1500m"}})
            ),
            ["budget.cpu must be at least cpu.min"]
        );
        assert_eq!(
            messages(
                json!({"targetRef": target(), "memory": {"min": "1Gi", "max": "4Gi"},
                            "budget": {"memory": "512Mi"}})
            ),
            ["budget.memory must be at least memory.min"]
        );
        assert!(
            messages(
                json!({"targetRef": target(), "cpu": {"min": "2", "max": "4"},
                                "budget": {"cpu": "8", "memory": "8Gi"}})
            )
            .is_empty()
        );
    }

    #[test]
    fn schema_has_enums_durations_and_status_list_maps() {
        let schema = open_api_schema(&ScalingPolicy::crd());
        assert_eq!(
            node(&schema, "spec.mode")["enum"],
            json!(["Off", "InPlace", "InPlaceOrRecreate"])
        );
        assert_eq!(node(&schema, "spec.mode")["default"], "InPlace");
        assert_eq!(node(&schema, "spec.window")["default"], "15s");
        assert!(node(&schema, "spec.window")["pattern"].is_string());
        assert_eq!(node(&schema, "spec.cpu.upper")["default"], 0.8);
        assert_eq!(
            node(&schema, "spec.cpu.scaleUp.policy")["enum"],
            json!(["amount", "proportional", "fitToUsage"])
        );
        let containers = node(&schema, "status.containers");
        assert_eq!(
            containers["x-kubernetes-list-map-keys"],
            json!(["pod", "container"])
        );
        assert_eq!(
            node(&schema, "spec.targetRef.services")["maxItems"],
            MAX_SERVICES
        );
    }
}
