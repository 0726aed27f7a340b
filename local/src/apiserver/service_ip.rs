//! ClusterIP allocation for Services, as kube-apiserver's service registry does it.
//!
//! Contract:
//! - A Service of type ClusterIP/NodePort/LoadBalancer created without `spec.clusterIP`
//!   gets a free address of the service range (`--service-cidr`); `clusterIPs`,
//!   `ipFamilies` and `ipFamilyPolicy` are filled in to match. `clusterIP: None` (headless)
//!   is kept; ExternalName Services get no address.
//! - A requested address outside the range or held by another Service is refused with
//!   Kubernetes' 422 (`spec.clusterIPs: Invalid value: []string{…}: failed to allocate IP …`).
//! - Updates keep the allocated address when the new object omits it (kube-apiserver's
//!   `patchAllocatedValues`) and refuse a change of it (the field is immutable).
//! - The stored Services are the allocation table: nothing else is persisted, so a restart
//!   sees exactly the addresses in use, and a deleted Service frees its address with no
//!   release step. Addresses handed out but not yet visible in the store (a write in
//!   flight) are held for [`HOLD`] so two concurrent creates never get the same one.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::{Map, Value, json};

use super::error::{ApiError, FieldError};
use super::store::Store;

/// How long an address just handed out stays reserved for its Service while the write
/// commits (writes commit in milliseconds; this only has to outlast them).
const HOLD: Duration = Duration::from_secs(30);

/// The default service range: loopback, so the proxy can listen on every ClusterIP.
pub const DEFAULT_SERVICE_CIDR: &str = "127.96.0.0/16";

/// Hands out ClusterIPs from one IPv4 range.
#[derive(Debug)]
pub struct ClusterIps {
    range: Ipv4Net,
    /// Recently handed-out addresses → (the Service `ns/name` holding it, when).
    held: Mutex<HashMap<Ipv4Addr, (String, Instant)>>,
}

/// Why an address cannot be had.
#[derive(Debug, PartialEq)]
enum Refusal {
    NotInRange,
    Allocated,
    Full,
}

impl ClusterIps {
    pub fn new(range: Ipv4Net) -> Self {
        Self {
            range: range.trunc(),
            held: Mutex::new(HashMap::new()),
        }
    }

    pub fn range(&self) -> Ipv4Net {
        self.range
    }

    /// Whether `ip` may be handed out: inside the range, and not its network or broadcast
    /// address (ranges of /31 and /32 use every address).
    fn usable(&self, ip: Ipv4Addr) -> bool {
        self.range.contains(&ip)
            && (self.range.prefix_len() >= 31
                || (ip != self.range.network() && ip != self.range.broadcast()))
    }

    /// Claims `wanted` (or any free address) for the Service `owner`, given the addresses
    /// stored Services other than `owner` hold.
    fn claim(
        &self,
        owner: &str,
        wanted: Option<Ipv4Addr>,
        in_use: &HashSet<Ipv4Addr>,
    ) -> Result<Ipv4Addr, Refusal> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        held.retain(|_, (_, since)| now.duration_since(*since) < HOLD);
        let free = |ip: &Ipv4Addr| {
            !in_use.contains(ip) && held.get(ip).is_none_or(|(holder, _)| holder == owner)
        };
        let ip = match wanted {
            Some(ip) if !self.usable(ip) => return Err(Refusal::NotInRange),
            Some(ip) if !free(&ip) => return Err(Refusal::Allocated),
            Some(ip) => ip,
            None => {
                // Start at a random offset (as Kubernetes does) so that addresses of
                // deleted Services are not immediately reused, then scan.
                let first = u32::from(self.range.network());
                let size = 1u64 << (32 - u32::from(self.range.prefix_len()));
                let start = rand::random_range(0..size);
                (0..size)
                    .map(|i| Ipv4Addr::from(first.wrapping_add(((start + i) % size) as u32)))
                    .find(|ip| self.usable(*ip) && free(ip))
                    .ok_or(Refusal::Full)?
            }
        };
        held.insert(ip, (owner.to_owned(), now));
        Ok(ip)
    }
}

/// The ClusterIPs stored Services hold, except the Service `owner` (`ns/name`).
fn addresses_in_use(store: &Store, owner: &str) -> HashSet<Ipv4Addr> {
    store
        .list("/services", None, None, None, &|_| true)
        .items
        .iter()
        .filter(|(key, _)| key != owner)
        .flat_map(|(_, svc)| cluster_ips_of(svc))
        .collect()
}

fn cluster_ips_of(service: &Value) -> Vec<Ipv4Addr> {
    let spec = service.get("spec");
    let listed = spec
        .and_then(|s| s.get("clusterIPs"))
        .and_then(Value::as_array)
        .map(|ips| ips.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .unwrap_or_default();
    let single = spec
        .and_then(|s| s.get("clusterIP"))
        .and_then(Value::as_str);
    listed
        .into_iter()
        .chain(single)
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

fn spec_str<'a>(spec: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    spec.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn invalid(name: &str, field: &str, value: &str, detail: &str) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        name,
        &[FieldError {
            field: field.to_owned(),
            reason: "FieldValueInvalid",
            kind: "Invalid value",
            detail: format!("{value}: {detail}"),
        }],
    )
}

/// Go's `%#v` of a `[]string`, as Kubernetes prints the invalid `clusterIPs` value.
fn go_string_slice(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// Fills in (create) or keeps (update) the ClusterIP fields of the Service `object`
/// about to be stored; `old` is the stored Service on update.
pub fn assign(
    ips: &ClusterIps,
    store: &Store,
    old: Option<&Value>,
    object: &mut Value,
) -> Result<(), ApiError> {
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let owner = format!("{namespace}/{name}");
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if spec_str(spec, "type") == Some("ExternalName") {
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            spec.remove(field);
        }
        return Ok(());
    }
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    // An update that omits the address keeps the allocated one.
    if spec_str(spec, "clusterIP").is_none()
        && let Some(old_ip) = old_ip
    {
        spec.insert("clusterIP".into(), json!(old_ip));
        if spec.get("clusterIPs").is_none_or(Value::is_null) {
            spec.insert("clusterIPs".into(), json!([old_ip]));
        }
    }
    let requested = spec_str(spec, "clusterIP")
        .or_else(|| {
            spec.get("clusterIPs")
                .and_then(Value::as_array)
                .and_then(|ips| ips.first())
                .and_then(Value::as_str)
        })
        .map(str::to_owned);
    if let (Some(old_ip), Some(new_ip)) = (old_ip, requested.as_deref())
        && old_ip != new_ip
    {
        return Err(invalid(
            &name,
            "spec.clusterIPs[0]",
            &format!("{new_ip:?}"),
            "may not change once set",
        ));
    }
    let ip = match requested.as_deref() {
        Some("None") => "None".to_owned(),
        Some(text) if old_ip == Some(text) => text.to_owned(),
        Some(text) => {
            let value = go_string_slice(&[text]);
            let wanted: Ipv4Addr = text.parse().map_err(|_| {
                invalid(
                    &name,
                    "spec.clusterIPs[0]",
                    &format!("{text:?}"),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                )
            })?;
            claim(ips, store, &owner, Some(wanted), &name, &value)?.to_string()
        }
        None => claim(ips, store, &owner, None, &name, "[]string(nil)")?.to_string(),
    };
    spec.insert("clusterIP".into(), json!(ip));
    spec.insert("clusterIPs".into(), json!([ip]));
    if spec.get("ipFamilies").is_none_or(Value::is_null) {
        spec.insert("ipFamilies".into(), json!(["IPv4"]));
    }
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
    }
    Ok(())
}

fn claim(
    ips: &ClusterIps,
    store: &Store,
    owner: &str,
    wanted: Option<Ipv4Addr>,
    name: &str,
    value: &str,
) -> Result<Ipv4Addr, ApiError> {
    let in_use = addresses_in_use(store, owner);
    ips.claim(owner, wanted, &in_use).map_err(|refusal| {
        let shown = wanted.map_or_else(String::new, |ip| ip.to_string());
        match refusal {
            Refusal::NotInRange => invalid(
                name,
                "spec.clusterIPs",
                value,
                &format!(
                    "failed to allocate IP {shown}: the provided IP ({shown}) is not in the valid range. The range of valid IPs is {}",
                    ips.range()
                ),
            ),
            Refusal::Allocated => invalid(
                name,
                "spec.clusterIPs",
                value,
                &format!("failed to allocate IP {shown}: provided IP is already allocated"),
            ),
            Refusal::Full => ApiError::internal(format!(
                "failed to allocate a serviceIP: range is full (the service range is {})",
                ips.range()
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(cidr: &str) -> ClusterIps {
        ClusterIps::new(cidr.parse().unwrap())
    }

    #[test]
    fn hands_out_distinct_usable_addresses_until_full() {
        let alloc = ips("127.96.5.0/29");
        let mut seen = HashSet::new();
        for n in 0..6 {
            let ip = alloc
                .claim(&format!("ns/s{n}"), None, &HashSet::new())
                .unwrap();
            assert!(ip != "127.96.5.0".parse::<Ipv4Addr>().unwrap());
            assert!(ip != "127.96.5.7".parse::<Ipv4Addr>().unwrap());
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(
            alloc.claim("ns/s6", None, &HashSet::new()),
            Err(Refusal::Full)
        );
    }

    #[test]
    fn requested_addresses_are_checked() {
        let alloc = ips("127.96.0.0/16");
        let ip: Ipv4Addr = "127.96.1.2".parse().unwrap();
        let in_use: HashSet<Ipv4Addr> = [ip].into();
        assert_eq!(
            alloc.claim("ns/a", Some(ip), &in_use),
            Err(Refusal::Allocated)
        );
        assert_eq!(
            alloc.claim("ns/a", Some("10.0.0.1".parse().unwrap()), &HashSet::new()),
            Err(Refusal::NotInRange)
        );
        assert_eq!(
            alloc.claim("ns/a", Some("127.96.0.0".parse().unwrap()), &HashSet::new()),
            Err(Refusal::NotInRange)
        );
        // Held for the Service that claimed it, not for another.
        let other: Ipv4Addr = "127.96.3.4".parse().unwrap();
        assert_eq!(alloc.claim("ns/a", Some(other), &HashSet::new()), Ok(other));
        assert_eq!(alloc.claim("ns/a", Some(other), &HashSet::new()), Ok(other));
        assert_eq!(
            alloc.claim("ns/b", Some(other), &HashSet::new()),
            Err(Refusal::Allocated)
        );
    }

    #[test]
    fn go_slices_print_like_kubernetes() {
        assert_eq!(go_string_slice(&["10.0.0.1"]), r#"[]string{"10.0.0.1"}"#);
    }
}
