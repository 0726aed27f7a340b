//! The Guardian: Serverless Containers' decision loop as pure code. Given a ScalingPolicy,
//! what each targeted container used over the last window and its current requests and
//! limits, it decides which containers to resize and to what. No I/O: the controller feeds
//! it observations and carries out its [`Decision`]s through `pods/resize`.
//!
//! Per container and guarded resource, every tick:
//! 1. usage above `upper` × limit is an up event, below `lower` × limit a down event;
//!    events older than the policy's event timeout are forgotten;
//! 2. `upEvents` up events → scale up; `downEvents` down events and no up event → scale down
//!    (the asymmetry is the hysteresis: one busy window vetoes shrinking). A CPU window with
//!    usage at 95 % of the limit or more, or throttled in a quarter of its CPU periods or
//!    more, is a *throttled* up event: the usage hides the demand and work queues, so
//!    `throttledUpEvents` of them (default 1) are enough;
//! 3. the new limit comes from the action (`amount`, `proportional`, `fitToUsage`), guarded
//!    so that the same usage is inside the band at the new limit (see [`rescale`]), clamped
//!    to [`min`, `max`] and, for memory, never below usage; after a throttled window, CPU
//!    scale-downs stop above the limit it was throttled at ([`rescale::Floor`]);
//! 4. an out-of-memory kill bumps memory at once (VPA's rule: max(factor × limit, limit +
//!    min)), regardless of events and cooldown; for [`OOM_MEMORY`] afterwards, memory
//!    scale-downs of that workload's container stop at the killed limit ÷ `upper`
//!    ([`rescale::oom_floor`]), in its recreated pods too. The controller keeps these
//!    kills in the policy's status and hands them back after a restart
//!    ([`Guardian::remember_oom`]), so a kill already handled is not bumped again;
//! 5. at most one resize per container per `cooldown`; a resize clears that resource's
//!    events (Serverless Containers' `events_to_remove`);
//! 6. requests follow limits at their original ratio, so the QoS class never changes;
//! 7. with a `budget`, increases are trimmed so the targeted containers' limits never sum
//!    above it: the headroom left is shared in proportion to each container's demand.
//!
//! The Guardian assumes that what it decides is applied: with `mode: Off` the controller
//! still calls [`Guardian::tick`] and reports the recommendations.
//!
//! The recommendation in each report is stable (see [`rescale::recommend`]): it is what was
//! last applied, and otherwise moves only when the Guardian decides (an OOM kill, enough
//! events for a target that differs from the last one by more than the noise), never with
//! each window's usage — with `mode: Off`, where nothing is applied and the Guardian keeps
//! deciding, and while a cooldown holds an action back. A status that followed the usage would change at every tick, be useless on
//! `kubectl get sp` and cost a status write per tick.

pub mod rescale;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cellmesh_api::crd::scaling::{Resource, ScalingMode, ScalingPolicySpec};
use cellmesh_api::quantity::{self, QuantityError};
use cellmesh_api::service::Quantity;

use rescale::{Bounds, Floor};

/// A container of a targeted pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerKey {
    pub pod: String,
    pub container: String,
}

impl ContainerKey {
    pub fn new(pod: &str, container: &str) -> Self {
        Self {
            pod: pod.to_owned(),
            container: container.to_owned(),
        }
    }
}

/// One resource of one container as measured and as configured, in base units.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observed {
    /// Average usage over the last window; `None` when the metric has no sample yet.
    pub usage: Option<f64>,
    /// The container's request, if it has one.
    pub request: Option<f64>,
    /// The container's limit; without one there is nothing to scale.
    pub limit: Option<f64>,
}

/// What the controller knows about one container at a tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub cpu: Observed,
    pub memory: Observed,
    /// Share (0–1) of the container's CPU periods in the last window in which it was
    /// throttled by its limit; `None` without a reading (the query failed or is unsupported).
    pub cpu_throttling: Option<f64>,
    /// Identifies the container's most recent out-of-memory kill (e.g. its `finishedAt`),
    /// `None` if it never had one. A value the Guardian has not seen before bumps memory.
    pub last_oom: Option<String>,
    /// When that kill happened, on the Guardian's clock; `None` when unknown (then a kill
    /// the Guardian has not seen is always new).
    pub last_oom_at: Option<Duration>,
    /// The workload of the container's pod (its service, app or owner), if known. What an
    /// OOM kill taught is kept per workload container, so the pods that replace a killed
    /// one (recreated with a smaller template, rescheduled) are not shrunk back to it.
    pub workload: Option<String>,
}

/// How long an OOM kill keeps memory scale-downs above the limit it happened at: the
/// half-life VPA gives its memory samples (`--memory-histogram-decay-half-life`), so a
/// daily peak is remembered from one day to the next and a one-off spike is not kept for
/// ever.
pub const OOM_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);

/// How much later than a remembered kill another may be and still be that kill: the
/// status keeps whole seconds (`metav1.Time`, so up to 1 s is cut off), and the wall-clock
/// conversions of two operator processes differ by a little more.
const KILL_TIME_SLACK: Duration = Duration::from_secs(2);

/// Why a resize was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// That many up events within the event timeout.
    UpEvents(u32),
    /// That many throttled windows (CPU pinned at its limit) within the event timeout.
    Throttled(u32),
    /// That many down events within the event timeout, and no up event.
    DownEvents(u32),
    /// The container was killed for running out of memory.
    OomKilled,
    /// A new pod of the workload gets the size its siblings were given (decided by the
    /// controller, not the Guardian).
    NewPod,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UpEvents(1) => f.write_str("1 up event"),
            Self::UpEvents(n) => write!(f, "{n} up events"),
            Self::Throttled(1) => f.write_str("throttled at its limit"),
            Self::Throttled(n) => write!(f, "throttled at its limit {n} times"),
            Self::DownEvents(1) => f.write_str("1 down event"),
            Self::DownEvents(n) => write!(f, "{n} down events"),
            Self::OomKilled => f.write_str("out-of-memory kill"),
            Self::NewPod => f.write_str("new pod: its workload's size"),
        }
    }
}

/// A request and limit pair as Kubernetes quantities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Size {
    pub request: Option<Quantity>,
    pub limit: Quantity,
}

/// One resource of one container to resize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub resource: Resource,
    pub from: Size,
    pub to: Size,
    pub reason: Reason,
}

impl Change {
    /// Whether the limit grows (an OOM bump or up events) rather than shrinks.
    pub fn is_up(&self) -> bool {
        match (
            quantity::parse(&self.from.limit.0),
            quantity::parse(&self.to.limit.0),
        ) {
            (Ok(from), Ok(to)) => to > from,
            // The Guardian writes only quantities it parsed; fall back on the reason.
            _ => !matches!(self.reason, Reason::DownEvents(_)),
        }
    }

    /// `cpu 500m→1250m (2 up events)`, for status, Events and logs.
    pub fn describe(&self) -> String {
        format!(
            "{} {}→{} ({})",
            self.resource.field(),
            self.from.limit,
            self.to.limit,
            self.reason
        )
    }
}

/// A resize of one container: every resource that changes, applied together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub key: ContainerKey,
    pub changes: Vec<Change>,
}

/// What the Guardian saw of one resource, for the policy's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceReport {
    pub usage: Option<f64>,
    pub request: Option<f64>,
    pub limit: Option<f64>,
    /// Usage above this is an up event (`upper` × limit).
    pub upper: Option<f64>,
    /// Usage below this is a down event (`lower` × limit).
    pub lower: Option<f64>,
    pub up_events: u32,
    pub down_events: u32,
    /// The limit the Guardian would set now (the current one when it would do nothing).
    pub recommendation: Option<f64>,
    /// CPU: the share of throttled CPU periods in the window, when known.
    pub throttling: Option<f64>,
    /// The least limit a scale-down may set: for CPU after throttling (see
    /// [`rescale::Floor`]), for memory after an OOM kill (see [`rescale::oom_floor`]).
    pub floor: Option<f64>,
    /// Why nothing can be done, e.g. the container has no limit.
    pub note: Option<&'static str>,
}

/// A tick's result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tick {
    /// Resizes to carry out, one per container, in container order.
    pub decisions: Vec<Decision>,
    /// Per observed container and guarded resource.
    pub reports: BTreeMap<ContainerKey, BTreeMap<ResourceName, ResourceReport>>,
}

/// Resource names in report order (`cpu` before `memory`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceName {
    Cpu,
    Memory,
}

impl From<Resource> for ResourceName {
    fn from(resource: Resource) -> Self {
        match resource {
            Resource::Cpu => Self::Cpu,
            Resource::Memory => Self::Memory,
        }
    }
}

/// A policy the Guardian cannot evaluate (admission should have refused it).
#[derive(Debug, thiserror::Error)]
#[error("spec.{field}: {source}")]
pub struct PolicyError {
    field: String,
    source: QuantityError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Up,
    /// An up event in which the container was throttled at its limit.
    Throttled,
    Down,
}

#[derive(Clone, Debug, Default)]
struct Events {
    seen: VecDeque<(Duration, Direction)>,
}

impl Events {
    fn forget_before(&mut self, cutoff: Duration) {
        while self.seen.front().is_some_and(|&(at, _)| at < cutoff) {
            self.seen.pop_front();
        }
    }

    /// Events in `directions`.
    fn count(&self, directions: &[Direction]) -> u32 {
        let n = self
            .seen
            .iter()
            .filter(|(_, d)| directions.contains(d))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

#[derive(Clone, Debug, Default)]
struct Memory {
    cpu: Events,
    memory: Events,
    last_resize: Option<Duration>,
    handled_oom: Option<String>,
    /// The recommendations last reported, per resource.
    recommended: BTreeMap<ResourceName, f64>,
    /// Where CPU scale-downs stop since the container was last throttled.
    cpu_floor: Option<Floor>,
}

impl Memory {
    fn events(&mut self, resource: Resource) -> &mut Events {
        match resource {
            Resource::Cpu => &mut self.cpu,
            Resource::Memory => &mut self.memory,
        }
    }
}

/// An out-of-memory kill the Guardian remembers for a workload's container: the highest
/// limit it was killed at within [`OOM_MEMORY`], and when the last kill happened (on the
/// Guardian's clock).
#[derive(Clone, Debug, PartialEq)]
pub struct RememberedOom {
    /// The workload, or the pod's name when its workload is unknown.
    pub workload: String,
    pub container: String,
    pub limit: f64,
    pub at: Duration,
}

#[derive(Clone, Copy, Debug)]
struct OomKill {
    limit: f64,
    at: Duration,
}

/// The Guardian of one ScalingPolicy: remembers events and cooldowns between ticks.
#[derive(Clone, Debug, Default)]
pub struct Guardian {
    containers: BTreeMap<ContainerKey, Memory>,
    /// Per workload (or, without one, pod) and container name: outlives the pods.
    oom_kills: BTreeMap<(String, String), OomKill>,
}

/// Where an OOM kill of `key`'s container is remembered: per workload container.
fn oom_key(key: &ContainerKey, observation: &Observation) -> (String, String) {
    (
        observation
            .workload
            .clone()
            .unwrap_or_else(|| key.pod.clone()),
        key.container.clone(),
    )
}

/// A resize wanted for one resource, before the budget is applied.
struct Wanted {
    key: ContainerKey,
    resource: Resource,
    observed: Observed,
    limit: f64,
    target: f64,
    reason: Reason,
}

impl Guardian {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the last OOM kill of a container the Guardian sees for the first time was
    /// handled before (by this Guardian for a pod of the same workload, or by an earlier
    /// operator whose kills came back through [`Guardian::remember_oom`]): it happened no
    /// later than the last kill remembered for its workload container, or, with none
    /// remembered, longer ago than [`OOM_MEMORY`]. A kill of unknown time is new.
    fn handled_before(&self, key: &ContainerKey, observation: &Observation, now: Duration) -> bool {
        let Some(at) = observation.last_oom_at else {
            return false;
        };
        match self.oom_kills.get(&oom_key(key, observation)) {
            Some(remembered) => at <= remembered.at + KILL_TIME_SLACK,
            None => now.saturating_sub(at) >= OOM_MEMORY,
        }
    }

    /// The out-of-memory kills it remembers, for the policy's status.
    pub fn oom_kills(&self) -> Vec<RememberedOom> {
        self.oom_kills
            .iter()
            .map(|((workload, container), kill)| RememberedOom {
                workload: workload.clone(),
                container: container.clone(),
                limit: kill.limit,
                at: kill.at,
            })
            .collect()
    }

    /// Takes back a kill from the policy's status (after an operator restart): its floor
    /// holds again, and the kill itself (and any before it) is not bumped a second time.
    pub fn remember_oom(&mut self, kill: RememberedOom) {
        let remembered = self
            .oom_kills
            .entry((kill.workload, kill.container))
            .or_insert(OomKill {
                limit: kill.limit,
                at: kill.at,
            });
        remembered.limit = remembered.limit.max(kill.limit);
        remembered.at = remembered.at.max(kill.at);
    }

    /// Evaluates one tick at time `now` (any monotonic clock, the same for every call).
    /// Containers missing from `observations` are forgotten (their pods are gone).
    pub fn tick(
        &mut self,
        policy: &ScalingPolicySpec,
        now: Duration,
        observations: &BTreeMap<ContainerKey, Observation>,
    ) -> Result<Tick, PolicyError> {
        self.containers
            .retain(|key, _| observations.contains_key(key));
        self.oom_kills
            .retain(|_, kill| now.saturating_sub(kill.at) < OOM_MEMORY);
        for (key, observation) in observations {
            if !self.containers.contains_key(key) {
                let handled_oom = self
                    .handled_before(key, observation, now)
                    .then(|| observation.last_oom.clone())
                    .flatten();
                self.containers.insert(
                    key.clone(),
                    Memory {
                        handled_oom,
                        ..Memory::default()
                    },
                );
            }
        }
        let mut tick = Tick::default();
        let mut wanted = Vec::new();
        for resource in [Resource::Cpu, Resource::Memory] {
            let Some(resource_policy) = policy.resource(resource) else {
                continue;
            };
            let bounds = Bounds::from_policy(resource_policy).map_err(|source| PolicyError {
                field: format!("{}.min/max", resource.field()),
                source,
            })?;
            let timeout = policy.event_timeout(resource).unwrap_or_default();
            let up_needed = resource_policy.up_events;
            let throttled_needed = resource_policy.throttled_up_events();
            let down_needed = resource_policy.down_events(resource);
            let scale_up = resource_policy.scale_up(resource);
            let scale_down = resource_policy.scale_down();
            let oom = match (resource, &resource_policy.oom_bump) {
                (Resource::Memory, Some(bump)) => Some((
                    bump.factor,
                    bump.min.value().map_err(|source| PolicyError {
                        field: "memory.oomBump.min".into(),
                        source,
                    })?,
                )),
                (Resource::Memory, None) => Some((1.2, 100.0 * 1024.0 * 1024.0)),
                (Resource::Cpu, _) => None,
            };
            for (key, observation) in observations {
                let observed = match resource {
                    Resource::Cpu => observation.cpu,
                    Resource::Memory => observation.memory,
                };
                let memory = self.containers.entry(key.clone()).or_default();
                let mut report = ResourceReport {
                    usage: observed.usage,
                    request: observed.request,
                    limit: observed.limit,
                    ..ResourceReport::default()
                };
                let Some(limit) = observed.limit.filter(|l| *l > 0.0) else {
                    report.note = Some("the container has no limit to scale");
                    tick.reports
                        .entry(key.clone())
                        .or_default()
                        .insert(resource.into(), report);
                    continue;
                };
                report.upper = Some(bounds.upper * limit);
                report.lower = Some(bounds.lower * limit);
                let throttling = match resource {
                    Resource::Cpu => observation.cpu_throttling,
                    Resource::Memory => None,
                };
                report.throttling = throttling;
                let throttled_now = observed.usage.is_some_and(|usage| {
                    rescale::throttled(resource, &bounds, limit, usage, throttling)
                });
                if resource == Resource::Cpu
                    && let Some(usage) = observed.usage
                {
                    memory.cpu_floor = if throttled_now {
                        Some(Floor::after_throttled(memory.cpu_floor, limit, usage))
                    } else {
                        memory.cpu_floor.filter(|f| !f.expired(&bounds, usage))
                    };
                    report.floor = memory
                        .cpu_floor
                        .map(|f| bounds.clamp(resource, f.limit(&bounds)));
                }
                let oom_key = oom_key(key, observation);
                let new_oom =
                    observation.last_oom.is_some() && observation.last_oom != memory.handled_oom;
                if new_oom && resource == Resource::Memory {
                    let at = observation.last_oom_at.unwrap_or(now);
                    let killed = self
                        .oom_kills
                        .entry(oom_key.clone())
                        .or_insert(OomKill { limit, at });
                    killed.limit = killed.limit.max(limit);
                    killed.at = killed.at.max(at);
                }
                let floor = match resource {
                    Resource::Cpu => memory.cpu_floor.map(|f| f.limit(&bounds)),
                    Resource::Memory => self
                        .oom_kills
                        .get(&oom_key)
                        .map(|kill| rescale::oom_floor(&bounds, kill.limit)),
                };
                if resource == Resource::Memory {
                    report.floor = floor.map(|f| bounds.clamp(resource, f));
                }
                let events = memory.events(resource);
                events.forget_before(now.saturating_sub(timeout));
                if let Some(usage) = observed.usage {
                    if throttled_now {
                        events.seen.push_back((now, Direction::Throttled));
                    } else if usage > bounds.upper * limit {
                        events.seen.push_back((now, Direction::Up));
                    } else if usage < bounds.lower * limit {
                        events.seen.push_back((now, Direction::Down));
                    }
                }
                let ups = events.count(&[Direction::Up, Direction::Throttled]);
                let throttled = events.count(&[Direction::Throttled]);
                let downs = events.count(&[Direction::Down]);
                report.up_events = ups;
                report.down_events = downs;
                let usage = observed.usage.unwrap_or(0.0);
                let decided = match oom {
                    Some((factor, min_bump)) if new_oom => Some((
                        rescale::oom_bump(&bounds, factor, min_bump, limit),
                        Reason::OomKilled,
                    )),
                    _ if observed.usage.is_some() && ups >= up_needed => Some((
                        rescale::scale_up(
                            resource,
                            &scale_up,
                            &bounds,
                            limit,
                            usage,
                            throttled_now,
                        ),
                        Reason::UpEvents(ups),
                    )),
                    _ if observed.usage.is_some() && throttled >= throttled_needed => Some((
                        rescale::scale_up(
                            resource,
                            &scale_up,
                            &bounds,
                            limit,
                            usage,
                            throttled_now,
                        ),
                        Reason::Throttled(throttled),
                    )),
                    _ if observed.usage.is_some() && downs >= down_needed && ups == 0 => Some((
                        rescale::scale_down(resource, &scale_down, &bounds, limit, usage, floor),
                        Reason::DownEvents(downs),
                    )),
                    _ => None,
                };
                if new_oom && resource == Resource::Memory {
                    memory.handled_oom.clone_from(&observation.last_oom);
                }
                let recommendation = rescale::recommend(
                    resource,
                    &bounds,
                    memory.recommended.get(&resource.into()).copied(),
                    limit,
                    observed.usage,
                    decided
                        .as_ref()
                        .map(|(target, reason)| (*target, *reason == Reason::OomKilled)),
                );
                memory.recommended.insert(resource.into(), recommendation);
                report.recommendation = Some(recommendation);
                tick.reports
                    .entry(key.clone())
                    .or_default()
                    .insert(resource.into(), report);
                let Some((target, reason)) = decided else {
                    continue;
                };
                let cooling = memory
                    .last_resize
                    .is_some_and(|at| now.saturating_sub(at) < policy.cooldown.get());
                if on_grid_equal(resource, target, limit)
                    || (cooling && reason != Reason::OomKilled)
                {
                    continue;
                }
                wanted.push(Wanted {
                    key: key.clone(),
                    resource,
                    observed,
                    limit,
                    target,
                    reason,
                });
            }
        }
        apply_budget(policy, observations, &mut wanted);
        let mut by_container: BTreeMap<ContainerKey, Vec<Change>> = BTreeMap::new();
        for w in wanted {
            if on_grid_equal(w.resource, w.target, w.limit) {
                continue;
            }
            let memory = self.containers.entry(w.key.clone()).or_default();
            memory.last_resize = Some(now);
            memory.events(w.resource).seen.clear();
            // What is applied is what is recommended from now on. With `mode: Off` nothing
            // is applied: the stable recommendation stays.
            if policy.mode != ScalingMode::Off {
                memory.recommended.insert(w.resource.into(), w.target);
                if let Some(report) = tick
                    .reports
                    .get_mut(&w.key)
                    .and_then(|reports| reports.get_mut(&w.resource.into()))
                {
                    report.recommendation = Some(w.target);
                }
            }
            by_container
                .entry(w.key)
                .or_default()
                .push(change(w.resource, w.observed, w.limit, w.target, w.reason));
        }
        tick.decisions = by_container
            .into_iter()
            .map(|(key, changes)| Decision { key, changes })
            .collect();
        Ok(tick)
    }
}

fn on_grid_equal(resource: Resource, a: f64, b: f64) -> bool {
    (a - b).abs() < rescale::grid(resource) / 2.0
}

/// `value` of `resource` as a Kubernetes quantity (`1250m`, `228Mi`).
pub fn format(resource: Resource, value: f64) -> Quantity {
    match resource {
        Resource::Cpu => quantity::cpu(value),
        Resource::Memory => quantity::memory(value),
    }
}

fn change(
    resource: Resource,
    observed: Observed,
    limit: f64,
    target: f64,
    reason: Reason,
) -> Change {
    let request = observed.request;
    Change {
        resource,
        from: Size {
            request: request.map(|r| format(resource, r)),
            limit: format(resource, limit),
        },
        to: Size {
            request: request.map(|r| {
                format(
                    resource,
                    rescale::scaled_request(resource, r, limit, target),
                )
            }),
            limit: format(resource, target),
        },
        reason,
    }
}

/// Trims increases so the targeted containers' limits sum to at most the budget. Decreases
/// and unchanged containers keep their new limits; the headroom left under the budget goes
/// to the increases in proportion to what each asked for. When the containers already sum
/// above the budget, nothing grows.
fn apply_budget(
    policy: &ScalingPolicySpec,
    observations: &BTreeMap<ContainerKey, Observation>,
    wanted: &mut [Wanted],
) {
    let Some(budget) = &policy.budget else { return };
    for resource in [Resource::Cpu, Resource::Memory] {
        let cap = match resource {
            Resource::Cpu => budget.cpu.as_ref(),
            Resource::Memory => budget.memory.as_ref(),
        };
        let Some(cap) = cap.and_then(|q| q.value().ok()) else {
            continue;
        };
        // The sum after this tick if no increase happened.
        let mut committed = 0.0;
        for (key, observation) in observations {
            let observed = match resource {
                Resource::Cpu => observation.cpu,
                Resource::Memory => observation.memory,
            };
            let current = observed.limit.unwrap_or(0.0);
            let next = wanted
                .iter()
                .find(|w| w.resource == resource && &w.key == key)
                .map_or(current, |w| w.target.min(current));
            committed += next;
        }
        let asked: f64 = wanted
            .iter()
            .filter(|w| w.resource == resource && w.target > w.limit)
            .map(|w| w.target - w.limit)
            .sum();
        let headroom = (cap - committed).max(0.0);
        if asked <= headroom {
            continue;
        }
        let share = headroom / asked;
        for w in wanted
            .iter_mut()
            .filter(|w| w.resource == resource && w.target > w.limit)
        {
            // Rounded down so the shares never add up above the headroom.
            w.target =
                rescale::round_down(resource, w.limit + (w.target - w.limit) * share).max(w.limit);
        }
    }
}

#[cfg(test)]
mod tests;
