//! Container resources as the kubelet computes them: quantity parsing, the pod's QoS
//! class, and the cgroup values (CFS quota/period, shares/weight, memory limit) that a
//! container's requests and limits translate to. Pure functions, unit-tested.

use std::collections::BTreeMap;

use cellmesh_apimachinery::quantity::Quantity as QuantityValue;
use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The CFS period the kubelet uses (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts (1 ms), as the kubelet clamps it.
pub const MIN_QUOTA_US: u64 = 1_000;
/// cpu.shares of a container without a CPU request (the kubelet's `MinShares`).
pub const MIN_SHARES: u64 = 2;

/// Parses a CPU quantity (`250m`, `1`, `0.5`) into millicores, rounded up as the kubelet does.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    non_negative(text, QuantityValue::millis)
}

/// Parses a memory quantity (`64Mi`, `1G`, `1e3`, `1000`) into bytes, rounded up.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    non_negative(text, QuantityValue::units)
}

/// A resource quantity (the API server's exact parser) read through `scale`; resources are
/// never negative.
fn non_negative(text: &str, scale: fn(QuantityValue) -> i128) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a valid quantity (examples: 250m, 1, 64Mi, 1G)");
    let quantity = QuantityValue::parse(text.trim()).map_err(|_| bad())?;
    if quantity.is_negative() {
        return Err(bad());
    }
    u64::try_from(scale(quantity)).map_err(|_| bad())
}

/// CPU and memory of one side (requests or limits) of a container, parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Amounts {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

impl Amounts {
    fn of(map: Option<&BTreeMap<String, Quantity>>, side: &str) -> Result<Self, String> {
        let get = |name: &str| map.and_then(|m| m.get(name)).map(|q| q.0.as_str());
        Ok(Self {
            cpu_millis: get("cpu")
                .map(parse_cpu_millis)
                .transpose()
                .map_err(|e| format!("resources.{side}.cpu: {e}"))?,
            memory_bytes: get("memory")
                .map(parse_bytes)
                .transpose()
                .map_err(|e| format!("resources.{side}.memory: {e}"))?,
        })
    }
}

/// A container's effective requests and limits (a missing request defaults to the limit,
/// as the API server's defaulting does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub requests: Amounts,
    pub limits: Amounts,
}

impl Resources {
    pub fn of(resources: Option<&ResourceRequirements>) -> Result<Self, String> {
        let limits = Amounts::of(resources.and_then(|r| r.limits.as_ref()), "limits")?;
        let mut requests = Amounts::of(resources.and_then(|r| r.requests.as_ref()), "requests")?;
        requests.cpu_millis = requests.cpu_millis.or(limits.cpu_millis);
        requests.memory_bytes = requests.memory_bytes.or(limits.memory_bytes);
        Ok(Self { requests, limits })
    }

    pub fn of_container(container: &Container) -> Result<Self, String> {
        Self::of(container.resources.as_ref())
            .map_err(|e| format!("container {:?}: {e}", container.name))
    }

    /// The cgroup settings these resources translate to.
    pub fn cgroup_limits(&self) -> CgroupLimits {
        CgroupLimits {
            cpu_quota_us: self
                .limits
                .cpu_millis
                .map(|m| (m * CPU_PERIOD_US / 1000).max(MIN_QUOTA_US)),
            cpu_period_us: CPU_PERIOD_US,
            cpu_shares: self
                .requests
                .cpu_millis
                .map_or(MIN_SHARES, |m| (m * 1024 / 1000).max(MIN_SHARES)),
            memory_limit_bytes: self.limits.memory_bytes,
        }
    }
}

/// What a container's cgroup is set to (cgroup v1 units; v2 converts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// CFS quota per period in µs; `None` = unlimited.
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: u64,
    /// cpu.shares (v1); v2's cpu.weight is derived from it.
    pub cpu_shares: u64,
    /// `None` = unlimited.
    pub memory_limit_bytes: Option<u64>,
}

impl CgroupLimits {
    /// cgroup v2 `cpu.weight` for these shares (the formula of the kubelet and runc).
    pub fn cpu_weight(&self) -> u64 {
        1 + (self.cpu_shares.saturating_sub(2) * 9999) / 262_142
    }

    /// The requests/limits these settings report, as the kubelet derives
    /// `status.containerStatuses[].resources` from the runtime.
    pub fn reported(&self, memory_request: Option<u64>) -> ResourceRequirements {
        let mut limits = BTreeMap::new();
        if let Some(q) = self.cpu_quota_us {
            limits.insert(
                "cpu".to_owned(),
                Quantity(format_millis(q * 1000 / self.cpu_period_us)),
            );
        }
        if let Some(m) = self.memory_limit_bytes {
            limits.insert("memory".to_owned(), Quantity(m.to_string()));
        }
        let mut requests = BTreeMap::new();
        if self.cpu_shares > MIN_SHARES {
            // shares → millicores rounds down; the kubelet reports the request it set.
            let millis = (self.cpu_shares * 1000).div_ceil(1024);
            requests.insert("cpu".to_owned(), Quantity(format_millis(millis)));
        }
        if let Some(m) = memory_request {
            requests.insert("memory".to_owned(), Quantity(m.to_string()));
        }
        ResourceRequirements {
            limits: (!limits.is_empty()).then_some(limits),
            requests: (!requests.is_empty()).then_some(requests),
            ..Default::default()
        }
    }
}

/// `1500m` → `1500m`, `1000` millis → `1`.
pub fn format_millis(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// The pod's QoS class, computed as the API server does.
pub fn qos_class(spec: &PodSpec) -> Result<&'static str, String> {
    let mut all: Vec<Resources> = Vec::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        all.push(Resources::of_container(c)?);
    }
    let best_effort = all
        .iter()
        .all(|r| r.requests == Amounts::default() && r.limits == Amounts::default());
    if best_effort {
        return Ok("BestEffort");
    }
    let guaranteed = all.iter().all(|r| {
        r.limits.cpu_millis.is_some()
            && r.limits.memory_bytes.is_some()
            && r.requests.cpu_millis == r.limits.cpu_millis
            && r.requests.memory_bytes == r.limits.memory_bytes
    });
    Ok(if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    })
}

/// The node's allocatable CPU (millicores) and memory (bytes).
#[derive(Debug, Clone, Copy)]
pub struct Allocatable {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// Whether the pods' requests, with `candidate`'s containers at `wanted`, fit the node:
/// `Err(message)` names the resource that does not fit, as the kubelet's admission says.
pub fn fits(node: Allocatable, others: &[Resources], wanted: &[Resources]) -> Result<(), String> {
    let sum = |f: fn(&Resources) -> Option<u64>| -> u64 {
        others.iter().chain(wanted).filter_map(f).sum()
    };
    let cpu = sum(|r| r.requests.cpu_millis);
    let memory = sum(|r| r.requests.memory_bytes);
    let wanted_cpu: u64 = wanted.iter().filter_map(|r| r.requests.cpu_millis).sum();
    let wanted_memory: u64 = wanted.iter().filter_map(|r| r.requests.memory_bytes).sum();
    if wanted_cpu > node.cpu_millis {
        return Err(format!(
            "Node didn't have enough capacity: cpu, requested: {wanted_cpu}, capacity: {}",
            node.cpu_millis
        ));
    }
    if wanted_memory > node.memory_bytes {
        return Err(format!(
            "Node didn't have enough capacity: memory, requested: {wanted_memory}, capacity: {}",
            node.memory_bytes
        ));
    }
    if cpu > node.cpu_millis {
        return Err(format!(
            "Node didn't have enough resource: cpu, requested: {wanted_cpu}, used: {}, capacity: {}",
            cpu - wanted_cpu,
            node.cpu_millis
        ));
    }
    if memory > node.memory_bytes {
        return Err(format!(
            "Node didn't have enough resource: memory, requested: {wanted_memory}, used: {}, capacity: {}",
            memory - wanted_memory,
            node.memory_bytes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(req: &[(&str, &str)], lim: &[(&str, &str)]) -> ResourceRequirements {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect()
            })
        };
        ResourceRequirements {
            requests: map(req),
            limits: map(lim),
            ..Default::default()
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu_millis("250m"), Ok(250));
        assert_eq!(parse_cpu_millis("1"), Ok(1000));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1e3"), Ok(1000));
        assert_eq!(parse_bytes("128974848"), Ok(128_974_848));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_cpu_millis("1x").is_err());
    }

    #[test]
    fn limits_translate_to_cgroup_values() {
        let r = Resources::of(Some(&res(
            &[("cpu", "250m")],
            &[("cpu", "500m"), ("memory", "64Mi")],
        )))
        .unwrap();
        let l = r.cgroup_limits();
        assert_eq!(l.cpu_quota_us, Some(50_000));
        assert_eq!(l.cpu_period_us, 100_000);
        assert_eq!(l.cpu_shares, 256);
        assert_eq!(l.memory_limit_bytes, Some(64 << 20));
        assert_eq!(l.cpu_weight(), 10);
        // Tiny limits are clamped to the kernel's minimum; no request → minimum shares.
        let tiny = Resources::of(Some(&res(&[], &[("cpu", "1m")]))).unwrap();
        assert_eq!(tiny.cgroup_limits().cpu_quota_us, Some(1000));
        assert_eq!(
            tiny.requests.cpu_millis,
            Some(1),
            "request defaults to the limit"
        );
        let none = Resources::of(None).unwrap().cgroup_limits();
        assert_eq!(none.cpu_quota_us, None);
        assert_eq!(none.cpu_shares, 2);
        assert_eq!(none.cpu_weight(), 1);
    }

    #[test]
    fn reported_resources_round_trip() {
        let r = Resources::of(Some(&res(
            &[("cpu", "250m"), ("memory", "32Mi")],
            &[("cpu", "1"), ("memory", "64Mi")],
        )))
        .unwrap();
        let reported = r.cgroup_limits().reported(r.requests.memory_bytes);
        let limits = reported.limits.unwrap();
        assert_eq!(limits["cpu"].0, "1");
        assert_eq!(limits["memory"].0, (64u64 << 20).to_string());
        assert_eq!(reported.requests.unwrap()["cpu"].0, "250m");
    }

    #[test]
    fn qos_classes() {
        let pod = |r: ResourceRequirements| PodSpec {
            containers: vec![Container {
                name: "c".into(),
                resources: Some(r),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(qos_class(&pod(res(&[], &[]))), Ok("BestEffort"));
        assert_eq!(
            qos_class(&pod(res(&[], &[("cpu", "1"), ("memory", "1Gi")]))),
            Ok("Guaranteed")
        );
        assert_eq!(qos_class(&pod(res(&[("cpu", "1")], &[]))), Ok("Burstable"));
        assert!(qos_class(&pod(res(&[("cpu", "many")], &[]))).is_err());
    }

    #[test]
    fn feasibility() {
        let node = Allocatable {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
        };
        let r = |cpu: &str| Resources::of(Some(&res(&[("cpu", cpu)], &[]))).unwrap();
        assert!(fits(node, &[r("1")], &[r("1")]).is_ok());
        let over = fits(node, &[], &[r("3")]).unwrap_err();
        assert!(over.contains("capacity: cpu"), "{over}");
        let busy = fits(node, &[r("1500m")], &[r("1")]).unwrap_err();
        assert!(busy.contains("enough resource: cpu"), "{busy}");
    }
}
