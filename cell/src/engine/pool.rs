//! The acceptor's state: one bounded FIFO queue in front of an elastic pool of workers.
//!
//! Contract (Cocaine's engine, with explicit deadlines):
//! - Admission is synchronous: a request is either queued (accepted) or rejected at once
//!   (`QueueFull` with a `Retry-After` estimate, or `Draining`).
//! - Dispatch takes the queue head to the least-loaded active worker below `concurrency`;
//!   a head whose deadline has passed is failed with `Expired` instead.
//! - Growth: target = `clamp(queued / growThreshold, poolMin, poolLimit)` (at least 1 while
//!   anything is queued); never above the effective `poolLimit` (a number, or the cgroup
//!   CPU limit for `auto`). Workers idle for `idleTimeout` retire down to `poolMin`; when
//!   the limit falls, the surplus workers are sealed and retire once idle.
//! - A lost worker (crash, failed start) is removed, counted as a restart, and growth pauses
//!   for an exponential backoff (initial → ×2 → max, reset after `max` without failures).
//! - All state sits behind one mutex that is never held across an await; worker backends
//!   only enqueue messages while it is held, so calls never re-enter it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use cellmesh_api::profile::{PoolLimit, ProfileSpec};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::cgroup::CpuLimit;
use super::error::EngineError;
use super::info::{Counters, EngineInfo, WorkerInfo};
use super::pipeline::{BatchParams, BatchStats, Batching};

/// Identifies one request inside the engine.
pub type JobId = u64;
/// Identifies one worker (never reused within an engine).
pub type WorkerId = u64;

/// What a worker reports back about a request, in order: outputs, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// One output.
    Output(Value),
    /// Finished successfully.
    Done,
    /// Finished with an error.
    Failed(EngineError),
}

/// A request handed to a worker.
pub struct Assignment {
    /// The request's id.
    pub job: JobId,
    /// The request body.
    pub input: Value,
    /// Where outputs and the outcome go.
    pub events: mpsc::UnboundedSender<Event>,
    /// Cancelled when the caller gives up (deadline, disconnect, shutdown).
    pub cancel: CancellationToken,
    /// When the request's deadline passes (micro-batches leave expired requests out).
    pub deadline: Instant,
}

/// A running worker, as the pool sees it.
pub trait WorkerHandle: Send + Sync {
    /// Start a request; must not block or call back into the pool synchronously.
    fn run(&self, assignment: Assignment);
    /// Finish running requests, then stop. Not a failure.
    fn retire(&self);
    /// OS process id, for process workers.
    fn pid(&self) -> Option<u32>;
}

/// Starts workers of one isolate kind.
pub trait Backend: Send + Sync {
    /// Start worker `id`, then call [`Shared::worker_ready`] or [`Shared::worker_lost`].
    fn start(&self, id: WorkerId, shared: Weak<Shared>);
}

/// Timing knobs that are not part of the profile (tests shrink them).
#[derive(Clone, Debug)]
pub struct Timing {
    /// Housekeeping period: idle shrink, expiry of queued requests, spawns after backoff.
    pub tick: Duration,
    /// How often `poolLimit: auto` re-reads the cgroup CPU limit.
    pub cgroup_poll: Duration,
    /// First pause after a worker is lost.
    pub backoff_initial: Duration,
    /// Longest pause; also the quiet time after which the backoff resets.
    pub backoff_max: Duration,
    /// How often a worker process says it is alive (from its own thread).
    pub heartbeat_interval: Duration,
    /// Silence after which a worker process counts as hung: it is killed and replaced and
    /// its requests fail with `WorkerLost`.
    pub heartbeat_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(50),
            cgroup_poll: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(32),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
        }
    }
}

struct Queued {
    job: JobId,
    input: Value,
    arrived: Instant,
    deadline: Instant,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Starting,
    Active,
    /// Takes no new requests; retires when idle.
    Sealing,
}

struct Slot {
    state: SlotState,
    load: u32,
    idle_since: Instant,
    started: Instant,
    handle: Option<Arc<dyn WorkerHandle>>,
}

struct Running {
    worker: WorkerId,
    arrived: Instant,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
}

struct Backoff {
    current: Duration,
    until: Option<Instant>,
    last_failure: Option<Instant>,
}

pub(crate) struct PoolState {
    pub(crate) profile: ProfileSpec,
    pub(crate) restart_pending: Vec<String>,
    pub(crate) cpu_limit: CpuLimit,
    queue: VecDeque<Queued>,
    workers: BTreeMap<WorkerId, Slot>,
    running: HashMap<JobId, Running>,
    next_job: JobId,
    next_worker: WorkerId,
    draining: bool,
    backoff: Backoff,
    pub(crate) counters: Counters,
    /// Exponentially weighted mean time a request occupies a worker slot.
    service_time: Duration,
}

/// The shared acceptor state; backends hold a `Weak` to it.
pub struct Shared {
    state: Mutex<PoolState>,
    backend: Box<dyn Backend>,
    pub(crate) timing: Timing,
    /// The live micro-batching parameters, shared with the workers.
    pub(crate) batching: Batching,
    /// Sizes of the batches the workers formed.
    pub(crate) batch_stats: Arc<BatchStats>,
    /// Woken whenever the pool becomes empty of queued and running requests.
    pub(crate) idle: Notify,
    me: Weak<Shared>,
}

/// How a caller stopped waiting for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abandon {
    /// Its deadline passed (counted).
    Deadline,
    /// The caller went away (not counted).
    Dropped,
}

impl Shared {
    pub(crate) fn new(
        profile: ProfileSpec,
        cpu_limit: CpuLimit,
        backend: Box<dyn Backend>,
        timing: Timing,
        (batching, batch_stats): (Batching, Arc<BatchStats>),
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            state: Mutex::new(PoolState {
                profile,
                restart_pending: Vec::new(),
                cpu_limit,
                queue: VecDeque::new(),
                workers: BTreeMap::new(),
                running: HashMap::new(),
                next_job: 1,
                next_worker: 1,
                draining: false,
                backoff: Backoff {
                    current: timing.backoff_initial,
                    until: None,
                    last_failure: None,
                },
                counters: Counters::default(),
                service_time: Duration::from_millis(10),
            }),
            backend,
            timing,
            batching,
            batch_stats,
            idle: Notify::new(),
            me: me.clone(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves consistent-enough counters; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admit a request or reject it at once.
    pub(crate) fn admit(
        &self,
        input: Value,
        timeout: Option<Duration>,
    ) -> Result<(JobId, Instant, mpsc::UnboundedReceiver<Event>), EngineError> {
        let mut st = self.lock();
        if st.draining {
            st.counters.rejected += 1;
            return Err(EngineError::Draining);
        }
        let limit = st.effective_pool_limit();
        let capacity = u64::from(limit) * u64::from(st.profile.concurrency);
        let queued = st.queue.len() as u64;
        let full = match st.profile.queue_limit {
            0 => queued + st.running.len() as u64 >= capacity.max(1),
            n => queued >= u64::from(n),
        };
        if full {
            st.counters.rejected += 1;
            return Err(EngineError::QueueFull {
                queue_limit: st.profile.queue_limit,
                retry_after: retry_after(
                    st.queue.len(),
                    st.service_time,
                    limit,
                    st.profile.concurrency,
                ),
            });
        }
        let now = Instant::now();
        let deadline = now + timeout.unwrap_or(st.profile.request_timeout.get());
        let job = st.next_job;
        st.next_job += 1;
        let (events, rx) = mpsc::unbounded_channel();
        st.queue.push_back(Queued {
            job,
            input,
            arrived: now,
            deadline,
            events,
            cancel: CancellationToken::new(),
        });
        st.counters.accepted += 1;
        self.pump(&mut st, now);
        Ok((job, deadline, rx))
    }

    /// The caller stops waiting for `job`: remove it from the queue (`Expired`) or cancel
    /// it on its worker (`TimedOut`). `None` when it had already finished.
    pub(crate) fn abandon(&self, job: JobId, why: Abandon) -> Option<EngineError> {
        let mut st = self.lock();
        let now = Instant::now();
        if let Some(pos) = st.queue.iter().position(|q| q.job == job) {
            let queued = st.queue.remove(pos)?;
            if why == Abandon::Deadline {
                st.counters.expired_in_queue += 1;
            }
            self.notify_if_idle(&st);
            return Some(EngineError::Expired {
                waited: now - queued.arrived,
            });
        }
        let running = st.running.get(&job)?;
        running.cancel.cancel();
        let after = now - running.arrived;
        if why == Abandon::Deadline {
            st.counters.timed_out += 1;
        }
        Some(EngineError::TimedOut { after })
    }

    /// A worker finished (or was cancelled on) `job`.
    pub(crate) fn job_finished(&self, worker: WorkerId, job: JobId, busy_for: Duration) {
        let mut st = self.lock();
        let now = Instant::now();
        st.running.remove(&job);
        // EWMA with weight 1/8: smooth, and follows a change within a few dozen requests.
        st.service_time = (st.service_time * 7 + busy_for) / 8;
        let mut retire = None;
        if let Some(slot) = st.workers.get_mut(&worker) {
            slot.load = slot.load.saturating_sub(1);
            if slot.load == 0 {
                slot.idle_since = now;
                if slot.state == SlotState::Sealing {
                    retire = Some(worker);
                }
            }
        }
        if let Some(id) = retire {
            st.retire(id);
        }
        self.pump(&mut st, now);
        self.notify_if_idle(&st);
    }

    /// Worker `id` is up.
    pub(crate) fn worker_ready(&self, id: WorkerId, handle: Arc<dyn WorkerHandle>) {
        let mut st = self.lock();
        let now = Instant::now();
        let state = st.workers.get(&id).map(|slot| slot.state);
        match state {
            Some(SlotState::Starting) => {
                tracing::info!(worker = id, pid = ?handle.pid(), "worker ready");
                if let Some(slot) = st.workers.get_mut(&id) {
                    slot.state = SlotState::Active;
                    slot.idle_since = now;
                    slot.handle = Some(handle);
                }
            }
            // Sealed while starting (the limit fell): it is surplus.
            Some(SlotState::Sealing) => {
                st.workers.remove(&id);
                handle.retire();
            }
            // Retired, or shut down, while starting.
            Some(SlotState::Active) | None => handle.retire(),
        }
        self.pump(&mut st, now);
    }

    /// Worker `id` died or failed to start. Its backend has already failed its requests.
    pub(crate) fn worker_lost(&self, id: WorkerId, reason: &str) {
        let mut st = self.lock();
        let now = Instant::now();
        if st.workers.remove(&id).is_none() {
            return;
        }
        st.running.retain(|_, running| running.worker != id);
        st.counters.worker_restarts += 1;
        let backoff_max = self.timing.backoff_max;
        let b = &mut st.backoff;
        if b.last_failure.is_some_and(|last| now - last > backoff_max) {
            b.current = self.timing.backoff_initial;
        }
        b.until = Some(now + b.current);
        tracing::warn!(
            worker = id,
            reason,
            backoff_ms = b.current.as_millis() as u64,
            "worker lost; replacing it after a backoff"
        );
        b.current = (b.current * 2).min(backoff_max);
        b.last_failure = Some(now);
        self.pump(&mut st, now);
        self.notify_if_idle(&st);
    }

    /// A retired worker has stopped (expected).
    pub(crate) fn worker_retired(&self, id: WorkerId) {
        let mut st = self.lock();
        st.workers.remove(&id);
        st.running.retain(|_, running| running.worker != id);
    }

    /// Periodic housekeeping; `cpu_limit` is a fresh cgroup reading when one was taken.
    pub(crate) fn tick(&self, cpu_limit: Option<CpuLimit>) {
        let mut st = self.lock();
        let now = Instant::now();
        if let Some(limit) = cpu_limit {
            if limit != st.cpu_limit && st.profile.pool_limit == PoolLimit::Auto {
                tracing::info!(cpus = limit.cpus, source = %limit.source, pool_limit = limit.auto_pool_limit(), "CPU limit changed");
            }
            st.cpu_limit = limit;
        }
        st.shrink(now);
        self.pump(&mut st, now);
        self.notify_if_idle(&st);
    }

    /// Replace the profile (already validated) and apply its limits now.
    pub(crate) fn set_profile(&self, mut profile: ProfileSpec) {
        let mut st = self.lock();
        let mut pending = Vec::new();
        if profile.isolate != st.profile.isolate {
            pending.push(format!(
                "isolate {} → {} takes effect after a restart",
                st.profile.isolate, profile.isolate
            ));
            profile.isolate = st.profile.isolate;
        }
        if profile.cpu_pinning != st.profile.cpu_pinning {
            pending.push("cpuPinning takes effect after a restart".to_owned());
            profile.cpu_pinning = st.profile.cpu_pinning;
        }
        self.batching.set(BatchParams::from(&profile.batch));
        st.profile = profile;
        st.restart_pending = pending;
        st.counters.profile_reloads += 1;
        let now = Instant::now();
        st.shrink(now);
        self.pump(&mut st, now);
    }

    /// Stop admitting; queued and running requests continue.
    pub(crate) fn start_draining(&self) {
        self.lock().draining = true;
    }

    /// Whether nothing is queued or running.
    pub(crate) fn is_idle(&self) -> bool {
        let st = self.lock();
        st.queue.is_empty() && st.running.is_empty()
    }

    /// Fail what is still queued or running with `ShutDown`, and retire every worker.
    pub(crate) fn shut_down(&self) -> usize {
        let mut st = self.lock();
        st.draining = true;
        let mut abandoned = 0;
        for queued in st.queue.drain(..) {
            let _ = queued.events.send(Event::Failed(EngineError::ShutDown));
            abandoned += 1;
        }
        for running in st.running.values() {
            running.cancel.cancel();
            let _ = running.events.send(Event::Failed(EngineError::ShutDown));
            abandoned += 1;
        }
        let ids: Vec<WorkerId> = st.workers.keys().copied().collect();
        for id in ids {
            st.retire(id);
        }
        abandoned
    }

    pub(crate) fn snapshot(&self) -> EngineInfo {
        let st = self.lock();
        let workers: Vec<WorkerInfo> = st
            .workers
            .iter()
            .map(|(id, slot)| WorkerInfo {
                id: *id,
                pid: slot.handle.as_ref().and_then(|h| h.pid()),
                state: match (slot.state, slot.load) {
                    (SlotState::Starting, _) => "starting",
                    (SlotState::Sealing, _) => "sealing",
                    (SlotState::Active, 0) => "idle",
                    (SlotState::Active, _) => "busy",
                },
                load: slot.load,
                uptime_ms: slot.started.elapsed().as_millis() as u64,
            })
            .collect();
        let count = |state: &str| workers.iter().filter(|w| w.state == state).count() as u32;
        EngineInfo {
            state: if st.draining { "draining" } else { "running" },
            pool_size: workers.len() as u32,
            busy_workers: count("busy"),
            idle_workers: count("idle"),
            starting_workers: count("starting"),
            sealing_workers: count("sealing"),
            queue_length: st.queue.len() as u32,
            in_flight: st.running.len() as u32,
            effective_pool_limit: st.effective_pool_limit(),
            cpu_limit: st.cpu_limit.cpus,
            cpu_limit_source: st.cpu_limit.source.clone(),
            counters: st.counters.clone(),
            profile: st.profile.clone(),
            restart_pending: st.restart_pending.clone(),
            batches: self.batch_stats.summary(),
            workers,
        }
    }

    fn notify_if_idle(&self, st: &PoolState) {
        if st.queue.is_empty() && st.running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Dispatch what can run, fail what expired, start workers the queue calls for.
    fn pump(&self, st: &mut PoolState, now: Instant) {
        let concurrency = st.profile.concurrency;
        while let Some(head) = st.queue.front() {
            if head.deadline <= now {
                if let Some(expired) = st.queue.pop_front() {
                    st.counters.expired_in_queue += 1;
                    let _ = expired.events.send(Event::Failed(EngineError::Expired {
                        waited: now - expired.arrived,
                    }));
                }
                continue;
            }
            let Some((&worker, slot)) = st
                .workers
                .iter_mut()
                .filter(|(_, s)| s.state == SlotState::Active && s.load < concurrency)
                .min_by_key(|(_, s)| s.load)
            else {
                break;
            };
            let Some(handle) = slot.handle.clone() else {
                break;
            };
            let Some(queued) = st.queue.pop_front() else {
                break;
            };
            slot.load += 1;
            st.running.insert(
                queued.job,
                Running {
                    worker,
                    arrived: queued.arrived,
                    events: queued.events.clone(),
                    cancel: queued.cancel.clone(),
                },
            );
            handle.run(Assignment {
                job: queued.job,
                input: queued.input,
                events: queued.events,
                cancel: queued.cancel,
                deadline: queued.deadline,
            });
        }
        if st.draining || st.backoff.until.is_some_and(|until| now < until) {
            return;
        }
        let limit = st.effective_pool_limit();
        let live = st
            .workers
            .values()
            .filter(|s| s.state != SlotState::Sealing)
            .count() as u32;
        let target = growth_target(
            st.queue.len(),
            st.profile.pool_min,
            limit,
            st.profile.effective_grow_threshold(limit),
        );
        for _ in live..target {
            let id = st.next_worker;
            st.next_worker += 1;
            st.workers.insert(
                id,
                Slot {
                    state: SlotState::Starting,
                    load: 0,
                    idle_since: now,
                    started: now,
                    handle: None,
                },
            );
            self.backend.start(id, self.me.clone());
        }
    }
}

impl PoolState {
    pub(crate) fn effective_pool_limit(&self) -> u32 {
        match self.profile.pool_limit {
            PoolLimit::Fixed(n) => n.max(1),
            PoolLimit::Auto => self.cpu_limit.auto_pool_limit(),
        }
    }

    /// Retire idle workers past `idleTimeout` (down to `poolMin`) and seal the surplus
    /// above the pool limit.
    fn shrink(&mut self, now: Instant) {
        let limit = self.effective_pool_limit();
        let floor = self.profile.pool_min.min(limit);
        let idle_timeout = self.profile.idle_timeout.get();
        let mut live: Vec<(WorkerId, u32, Instant)> = self
            .workers
            .iter()
            .filter(|(_, s)| s.state != SlotState::Sealing)
            .map(|(id, s)| (*id, s.load, s.idle_since))
            .collect();
        // Least loaded, longest idle first: those are the ones to let go.
        live.sort_by_key(|&(id, load, idle_since)| (load, idle_since, id));
        let mut count = live.len() as u32;
        for (id, load, idle_since) in live {
            let over_limit = count > limit;
            let idle_expired = load == 0
                && !idle_timeout.is_zero()
                && now.duration_since(idle_since) >= idle_timeout
                && count > floor;
            if !(over_limit || idle_expired) {
                continue;
            }
            count -= 1;
            let starting = self
                .workers
                .get(&id)
                .is_some_and(|s| s.state == SlotState::Starting);
            if load == 0 && !starting {
                self.retire(id);
            } else if let Some(slot) = self.workers.get_mut(&id) {
                slot.state = SlotState::Sealing;
            }
        }
    }

    fn retire(&mut self, id: WorkerId) {
        if let Some(slot) = self.workers.get_mut(&id) {
            if slot.load > 0 {
                slot.state = SlotState::Sealing;
                return;
            }
            let slot = self.workers.remove(&id);
            if let Some(handle) = slot.and_then(|s| s.handle) {
                tracing::info!(worker = id, "retiring worker");
                handle.retire();
            }
        }
    }
}

/// Cocaine's growth rule: one worker per `grow_threshold` queued requests, within
/// `[pool_min, limit]`, and at least one while anything is queued.
pub(crate) fn growth_target(queued: usize, pool_min: u32, limit: u32, grow_threshold: u32) -> u32 {
    let wanted = u32::try_from(queued / grow_threshold.max(1) as usize).unwrap_or(u32::MAX);
    let wanted = if queued > 0 { wanted.max(1) } else { wanted };
    wanted.max(pool_min).min(limit.max(1))
}

/// Time until the queue has room: the queued work spread over the pool's slots, at least
/// one second (HTTP's `Retry-After` has whole seconds).
pub(crate) fn retry_after(
    queued: usize,
    service_time: Duration,
    limit: u32,
    concurrency: u32,
) -> Duration {
    let slots = (u64::from(limit) * u64::from(concurrency)).max(1);
    let waves = (queued as u64).div_ceil(slots).max(1);
    let estimate = service_time.saturating_mul(u32::try_from(waves).unwrap_or(u32::MAX));
    estimate.max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_follows_queue_depth_within_bounds() {
        // threshold 5: 0..4 queued → 1 worker (the minimum), 10 → 2, 100 → the limit.
        assert_eq!(growth_target(0, 1, 4, 5), 1);
        assert_eq!(growth_target(0, 0, 4, 5), 0);
        assert_eq!(growth_target(3, 0, 4, 5), 1);
        assert_eq!(growth_target(10, 1, 4, 5), 2);
        assert_eq!(growth_target(100, 1, 4, 5), 4);
        assert_eq!(growth_target(0, 3, 4, 5), 3);
        assert_eq!(
            growth_target(0, 9, 4, 5),
            4,
            "poolMin above an auto limit is capped"
        );
        assert_eq!(
            growth_target(7, 1, 4, 0),
            4,
            "a zero threshold is treated as 1"
        );
    }

    #[test]
    fn retry_after_spreads_the_queue_over_the_slots() {
        let ms = Duration::from_millis;
        assert_eq!(retry_after(0, ms(5), 2, 4), Duration::from_secs(1));
        assert_eq!(retry_after(80, ms(500), 2, 4), ms(5000));
        assert_eq!(retry_after(9, ms(2000), 2, 4), ms(4000));
    }
}
