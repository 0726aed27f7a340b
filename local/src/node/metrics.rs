//! Node metrics over plain HTTP on `--node-metrics-addr`:
//! - `GET /metrics/cadvisor`: cAdvisor-compatible Prometheus text with
//!   `container_cpu_usage_seconds_total`, `container_memory_working_set_bytes`,
//!   `container_spec_cpu_quota`, `container_spec_cpu_period`, `container_spec_cpu_shares`,
//!   `container_spec_memory_limit_bytes`, `container_oom_events_total` and the CFS
//!   throttling counters `container_cpu_cfs_periods_total`,
//!   `container_cpu_cfs_throttled_periods_total`, `container_cpu_cfs_throttled_seconds_total`,
//!   labelled
//!   `namespace`, `pod`, `container` (plus `id`, `image`, `name`), read from the cgroups;
//! - `GET /metrics/resource`: JSON `{"node": NodeMetrics, "pods": [PodMetrics]}` in the
//!   `metrics.k8s.io/v1beta1` shapes — the readings the API server serves for `kubectl top`
//!   (what metrics-server would scrape from a kubelet). CPU usage is a rate over the last
//!   two samples ([`Sampler`], every [`SAMPLE_PERIOD`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use super::Agent;
use super::container::State as CState;

pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);

/// Two consecutive cumulative CPU readings.
#[derive(Debug, Clone, Copy)]
struct Sample {
    cpu_ns: u64,
    at: Instant,
}

/// Per-key (container cgroup id, or `node`) CPU samples → usage rates.
#[derive(Default)]
pub struct Sampler {
    samples: Mutex<HashMap<String, (Sample, Option<Sample>)>>,
}

impl Sampler {
    fn record(&self, key: &str, cpu_ns: u64) {
        if let Ok(mut map) = self.samples.lock() {
            let now = Sample {
                cpu_ns,
                at: Instant::now(),
            };
            let entry = map.entry(key.to_owned()).or_insert((now, None));
            if entry.0.at != now.at {
                *entry = (now, Some(entry.0));
            }
        }
    }

    /// Cores used between the last two samples, and the window.
    fn rate(&self, key: &str) -> Option<(f64, Duration)> {
        let map = self.samples.lock().ok()?;
        let (last, prev) = map.get(key)?;
        let prev = (*prev)?;
        let dt = last.at.duration_since(prev.at);
        if dt.is_zero() {
            return None;
        }
        let used = last.cpu_ns.saturating_sub(prev.cpu_ns) as f64 / 1e9;
        Some((used / dt.as_secs_f64(), dt))
    }

    fn forget_except(&self, keep: &[String]) {
        if let Ok(mut map) = self.samples.lock() {
            map.retain(|k, _| k == "node" || keep.contains(k));
        }
    }
}

/// Cumulative non-idle CPU time of the machine in ns (from `/proc/stat`, USER_HZ = 100).
fn node_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle) * 10_000_000
}

fn node_memory_working_set() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    get("MemTotal:").saturating_sub(get("MemAvailable:"))
}

/// One running container the agent knows.
struct Running {
    namespace: String,
    pod: String,
    container: String,
    image: String,
    cgroup: String,
}

fn running(agent: &Agent) -> Vec<Running> {
    let pods: Vec<_> = agent
        .pods
        .lock()
        .map(|p| p.values().cloned().collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for ctx in pods {
        let pod = ctx.pod();
        let containers: Vec<_> = ctx
            .containers
            .lock()
            .map(|c| c.iter().map(|s| s.get()).collect())
            .unwrap_or_default();
        for status in containers {
            if !matches!(status.state, CState::Running { .. }) {
                continue;
            }
            let image = pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == status.name)
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            out.push(Running {
                namespace: ctx.namespace.clone(),
                pod: ctx.name.clone(),
                cgroup: ctx.cgroup_id(&status.name),
                container: status.name,
                image,
            });
        }
    }
    out
}

/// Samples CPU of the node and every running container.
pub async fn sample_loop(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(SAMPLE_PERIOD);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = agent.shutdown.cancelled() => return,
        }
        agent.metrics.record("node", node_cpu_ns());
        let containers = running(&agent);
        for c in &containers {
            if let Ok(stats) = agent.cgroups.stats(&c.cgroup) {
                agent.metrics.record(&c.cgroup, stats.cpu_usage_ns);
            }
        }
        let keep: Vec<String> = containers.into_iter().map(|c| c.cgroup).collect();
        agent.metrics.forget_except(&keep);
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The cAdvisor exposition.
pub fn cadvisor(agent: &Agent) -> String {
    let containers = running(agent);
    let families: [(&str, &str, &str); 10] = [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed in seconds.",
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set in bytes.",
        ),
        (
            "container_spec_cpu_quota",
            "gauge",
            "CPU quota of the container.",
        ),
        (
            "container_spec_cpu_period",
            "gauge",
            "CPU period of the container.",
        ),
        (
            "container_spec_cpu_shares",
            "gauge",
            "CPU share of the container.",
        ),
        (
            "container_spec_memory_limit_bytes",
            "gauge",
            "Memory limit for the container.",
        ),
        (
            "container_oom_events_total",
            "counter",
            "Count of out of memory events observed for the container",
        ),
        (
            "container_cpu_cfs_periods_total",
            "counter",
            "Number of elapsed enforcement period intervals.",
        ),
        (
            "container_cpu_cfs_throttled_periods_total",
            "counter",
            "Number of throttled period intervals.",
        ),
        (
            "container_cpu_cfs_throttled_seconds_total",
            "counter",
            "Total time duration the container has been throttled.",
        ),
    ];
    let mut rows: Vec<Vec<(String, f64)>> = vec![Vec::new(); families.len()];
    for c in &containers {
        let labels = format!(
            "container=\"{}\",id=\"/{}/{}\",image=\"{}\",name=\"{}\",namespace=\"{}\",pod=\"{}\"",
            escape(&c.container),
            escape(&agent.config.cgroup_parent),
            escape(&c.cgroup),
            escape(&c.image),
            escape(&c.cgroup),
            escape(&c.namespace),
            escape(&c.pod),
        );
        let Ok(stats) = agent.cgroups.stats(&c.cgroup) else {
            continue;
        };
        let limits = agent.cgroups.read_limits(&c.cgroup).ok();
        rows[0].push((
            format!("{labels},cpu=\"total\""),
            stats.cpu_usage_ns as f64 / 1e9,
        ));
        rows[1].push((labels.clone(), stats.memory_working_set_bytes as f64));
        if let Some(l) = limits {
            // cAdvisor reports 0 for "no quota" / "no limit".
            rows[2].push((labels.clone(), l.cpu_quota_us.unwrap_or(0) as f64));
            rows[3].push((labels.clone(), l.cpu_period_us as f64));
            rows[4].push((labels.clone(), l.cpu_shares as f64));
            rows[5].push((labels.clone(), l.memory_limit_bytes.unwrap_or(0) as f64));
        }
        rows[6].push((labels.clone(), stats.oom_kills as f64));
        rows[7].push((labels.clone(), stats.cpu_periods as f64));
        rows[8].push((labels.clone(), stats.cpu_throttled_periods as f64));
        rows[9].push((labels, stats.cpu_throttled_ns as f64 / 1e9));
    }
    let mut out = String::new();
    for ((name, kind, help), rows) in families.iter().zip(rows) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
    out
}

fn window(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// NodeMetrics and PodMetrics (metrics.k8s.io/v1beta1 shapes) from the last samples.
pub fn resource_readings(agent: &Agent) -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    let (node_cores, node_window) = agent.metrics.rate("node").unwrap_or((0.0, SAMPLE_PERIOD));
    let node = json!({
        "metadata": {"name": agent.config.node_name, "creationTimestamp": now},
        "timestamp": now,
        "window": window(node_window),
        "usage": {
            "cpu": format!("{}n", (node_cores * 1e9) as u64),
            "memory": format!("{}Ki", node_memory_working_set() / 1024),
        },
    });
    let mut pods: HashMap<(String, String), Vec<serde_json::Value>> = HashMap::new();
    let mut windows: HashMap<(String, String), Duration> = HashMap::new();
    for c in running(agent) {
        let Some((cores, w)) = agent.metrics.rate(&c.cgroup) else {
            continue;
        };
        let memory = agent
            .cgroups
            .stats(&c.cgroup)
            .map(|s| s.memory_working_set_bytes)
            .unwrap_or(0);
        let key = (c.namespace.clone(), c.pod.clone());
        windows.insert(key.clone(), w);
        pods.entry(key).or_default().push(json!({
            "name": c.container,
            "usage": {"cpu": format!("{}n", (cores * 1e9) as u64), "memory": format!("{}Ki", memory / 1024)},
        }));
    }
    let pods: Vec<serde_json::Value> = pods
        .into_iter()
        .map(|((namespace, name), containers)| {
            let w = windows
                .get(&(namespace.clone(), name.clone()))
                .copied()
                .unwrap_or(SAMPLE_PERIOD);
            json!({
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now},
                "timestamp": now,
                "window": window(w),
                "containers": containers,
            })
        })
        .collect();
    json!({"node": node, "pods": pods})
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(
            "/metrics/cadvisor",
            get(|State(agent): State<Arc<Agent>>| async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    cadvisor(&agent),
                )
                    .into_response()
            }),
        )
        .route(
            "/metrics/resource",
            get(|State(agent): State<Arc<Agent>>| async move {
                axum::Json(resource_readings(&agent)).into_response()
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(agent)
}

pub async fn serve(listener: tokio::net::TcpListener, agent: Arc<Agent>) {
    let shutdown = agent.shutdown.clone();
    let app = router(agent);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_two_samples() {
        let s = Sampler::default();
        s.record("k", 0);
        assert!(s.rate("k").is_none());
        std::thread::sleep(Duration::from_millis(20));
        s.record("k", 10_000_000);
        let (cores, window) = s.rate("k").unwrap();
        assert!(cores > 0.0 && cores <= 0.5 + f64::EPSILON, "{cores}");
        assert!(window >= Duration::from_millis(20));
        s.forget_except(&[]);
        assert!(s.rate("k").is_none());
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
