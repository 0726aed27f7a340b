//! What the engine reports: the `/info` snapshot and the same figures as Prometheus metrics.
//!
//! Contract: [`EngineInfo`] is a consistent snapshot taken under the pool lock and
//! serializes to camelCase JSON for the admin `/info` endpoint. [`EngineCollector`] renders
//! the same snapshot at scrape time (no second set of counters to drift), registered into
//! the registry the cell passes to `Engine::register_metrics`. Metric names (prefix
//! `cellmesh_engine_`): `queue_length`, `in_flight`, `workers{state}`, `pool_limit`,
//! `cpu_limit`, `requests_accepted_total`, `requests_rejected_total`,
//! `requests_timed_out_total{phase="queue"|"running"}`, `worker_restarts_total`,
//! `profile_reloads_total`, `profile_rejected_total`, and the histogram `batch_size`
//! (requests per micro-batch).

use std::sync::Weak;

use cellmesh_api::profile::ProfileSpec;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;

use super::pipeline::BatchSummary;
use super::pool::Shared;

/// Counters since the engine started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Requests admitted to the queue.
    pub accepted: u64,
    /// Requests rejected at admission (queue full or draining).
    pub rejected: u64,
    /// Requests whose deadline passed while queued.
    pub expired_in_queue: u64,
    /// Requests whose deadline passed while running.
    pub timed_out: u64,
    /// Workers lost (crash, failed start) and replaced.
    pub worker_restarts: u64,
    /// Profiles applied after the first.
    pub profile_reloads: u64,
    /// Profile files refused as invalid.
    pub profile_rejected: u64,
}

/// One worker in the snapshot.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    /// Worker id.
    pub id: u64,
    /// OS process id (process workers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `starting`, `idle`, `busy` or `sealing` (retiring once idle).
    pub state: &'static str,
    /// Requests running on it.
    pub load: u32,
    /// Milliseconds since it was started.
    pub uptime_ms: u64,
}

/// The engine's state, for `/info`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    /// `running` or `draining`.
    pub state: &'static str,
    /// Workers in any state.
    pub pool_size: u32,
    /// Workers running at least one request.
    pub busy_workers: u32,
    /// Workers with nothing to do.
    pub idle_workers: u32,
    /// Workers not yet ready.
    pub starting_workers: u32,
    /// Workers finishing their requests before retiring.
    pub sealing_workers: u32,
    /// Requests waiting for a worker.
    pub queue_length: u32,
    /// Requests running on workers.
    pub in_flight: u32,
    /// The pool limit in force (`auto` resolved).
    pub effective_pool_limit: u32,
    /// The CPU limit last read.
    pub cpu_limit: f64,
    /// Where the CPU limit came from.
    pub cpu_limit_source: String,
    /// Counters since start.
    #[serde(flatten)]
    pub counters: Counters,
    /// The profile in force.
    pub profile: ProfileSpec,
    /// Micro-batches formed so far (profile `batch`).
    pub batches: BatchSummary,
    /// Profile changes that wait for a restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_pending: Vec<String>,
    /// Every worker.
    pub workers: Vec<WorkerInfo>,
}

/// Renders the engine's snapshot as Prometheus metrics at scrape time.
#[derive(Debug)]
pub struct EngineCollector {
    pub(crate) shared: Weak<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("engine")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> std::fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn int_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u32,
) -> std::fmt::Result {
    let gauge = ConstGauge::new(i64::from(value));
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let info = shared.snapshot();
        let e = &mut encoder;
        int_gauge(
            e,
            "cellmesh_engine_queue_length",
            "Requests waiting for a worker.",
            info.queue_length,
        )?;
        int_gauge(
            e,
            "cellmesh_engine_in_flight",
            "Requests running on workers.",
            info.in_flight,
        )?;
        int_gauge(
            e,
            "cellmesh_engine_pool_limit",
            "Maximum workers in force (auto resolved).",
            info.effective_pool_limit,
        )?;
        gauge(
            e,
            "cellmesh_engine_cpu_limit",
            "CPU limit last read from the cgroup.",
            info.cpu_limit,
        )?;
        {
            let proto = ConstGauge::new(0_i64);
            let mut family = e.encode_descriptor(
                "cellmesh_engine_workers",
                "Workers by state.",
                None,
                proto.metric_type(),
            )?;
            for (state, value) in [
                ("busy", info.busy_workers),
                ("idle", info.idle_workers),
                ("starting", info.starting_workers),
                ("sealing", info.sealing_workers),
            ] {
                let labels = [("state", state)];
                ConstGauge::new(i64::from(value)).encode(family.encode_family(&labels)?)?;
            }
        }
        let c = &info.counters;
        counter(
            e,
            "cellmesh_engine_requests_accepted",
            "Requests admitted to the queue.",
            c.accepted,
        )?;
        counter(
            e,
            "cellmesh_engine_requests_rejected",
            "Requests rejected at admission (queue full or draining).",
            c.rejected,
        )?;
        {
            let proto = ConstCounter::new(0_u64);
            let mut family = e.encode_descriptor(
                "cellmesh_engine_requests_timed_out",
                "Requests whose deadline passed, by phase.",
                None,
                proto.metric_type(),
            )?;
            for (phase, value) in [("queue", c.expired_in_queue), ("running", c.timed_out)] {
                let labels = [("phase", phase)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        counter(
            e,
            "cellmesh_engine_worker_restarts",
            "Workers lost (crash or failed start) and replaced.",
            c.worker_restarts,
        )?;
        counter(
            e,
            "cellmesh_engine_profile_reloads",
            "Profiles applied while running.",
            c.profile_reloads,
        )?;
        counter(
            e,
            "cellmesh_engine_profile_rejected",
            "Profile files refused as invalid.",
            c.profile_rejected,
        )?;
        let sizes = &shared.batch_stats.histogram;
        sizes.encode(e.encode_descriptor(
            "cellmesh_engine_batch_size",
            "Requests per micro-batch handed to a pipeline leaf.",
            None,
            sizes.metric_type(),
        )?)?;
        Ok(())
    }
}
