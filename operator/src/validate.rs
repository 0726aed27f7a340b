//! The operator's own checks of a spec, beyond what the API server's schema and CEL rules can
//! afford: names that must be DNS labels, call cycles, the µBench service checks of
//! [`cellmesh_api::service::validate`] and nested pipeline stages.
//!
//! Contract: pure functions, no client. A failure is an [`Invalid`] with a PascalCase
//! `reason` (the condition reason and Event reason) and a message naming every problem, so a
//! user can fix the spec from `kubectl describe` alone.

use std::collections::BTreeMap;
use std::fmt;

use cellmesh_api::crd::{App, WorkModel};
use cellmesh_api::service::{self, ExternalServiceGroup, ServiceSpec};

/// Why a spec cannot be realised as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// PascalCase category, e.g. `CallCycle`.
    pub reason: &'static str,
    /// Every problem, for people.
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Invalid {}

/// Longest name of a Kubernetes object that is a DNS label (Services, and anything we name
/// after one).
pub const MAX_LABEL: usize = 63;

/// Whether `name` is an RFC 1035 DNS label, as a Service name must be: lower-case letters,
/// digits and `-`, starting with a letter, not ending with `-`, at most 63 characters.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.last() != Some(&b'-')
}

/// Checks a WorkModel: service names, the service specs, and call cycles (in the order: the
/// first category that fails is reported, with all of its problems).
pub fn workmodel(wm: &WorkModel) -> Result<(), Invalid> {
    let bad_names: Vec<&str> = wm
        .spec
        .services
        .keys()
        .map(String::as_str)
        .filter(|name| !is_dns_label(name))
        .collect();
    if !bad_names.is_empty() {
        return Err(Invalid {
            reason: "InvalidServiceName",
            message: format!(
                "service names must be DNS labels (lower-case letters, digits and '-', starting \
                 with a letter, at most {MAX_LABEL} characters): {}",
                bad_names.join(", ")
            ),
        });
    }
    if wm.spec.gateway.as_ref().is_some_and(|g| g.enabled) {
        let name = wm.metadata.name.as_deref().unwrap_or_default();
        let gateway = format!("{name}-gateway");
        if !is_dns_label(&gateway) || wm.spec.services.contains_key(&gateway) {
            return Err(Invalid {
                reason: "InvalidGatewayName",
                message: format!(
                    "the gateway Service would be named {gateway}, which is not a DNS label of \
                     at most {MAX_LABEL} characters or is already a service's name: shorten \
                     the WorkModel's name or rename the service"
                ),
            });
        }
    }
    let services = wm.spec.cell_services();
    service::validate(&services).map_err(|errors| Invalid {
        reason: "InvalidService",
        message: errors.to_string(),
    })?;
    let cycles = call_cycles(&services);
    if !cycles.is_empty() {
        let shown: Vec<String> = cycles.iter().map(|c| c.join(" → ")).collect();
        return Err(Invalid {
            reason: "CallCycle",
            message: format!(
                "the services call each other in a cycle, so a request would never finish: {}",
                shown.join("; ")
            ),
        });
    }
    Ok(())
}

/// Checks an App's pipeline (nested stages are free-form in the CRD schema).
pub fn app(app: &App) -> Result<(), Invalid> {
    app.spec.pipeline.validate().map_err(|errors| Invalid {
        reason: "InvalidPipeline",
        message: errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Every service a service may call: its groups and those of its alternative behaviours.
fn callees(spec: &ServiceSpec) -> impl Iterator<Item = &str> {
    let behaviours = spec
        .alternative_behaviors
        .values()
        .filter_map(|b| b.external_services.as_deref());
    std::iter::once(spec.external_services.as_slice())
        .chain(behaviours)
        .flat_map(|groups: &[ExternalServiceGroup]| groups.iter())
        .flat_map(|group| group.services.iter().map(String::as_str))
}

/// The call cycles of a mesh, each as the services along it with the first repeated at the
/// end (`a → b → a`). One cycle per back edge of a depth-first walk in name order, so the
/// result is deterministic and names at least one cycle whenever there is any. Calls to
/// unknown services are ignored here (they are reported by the service checks).
pub fn call_cycles(services: &service::Services) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let edges: Vec<Vec<usize>> = services
        .values()
        .map(|spec| {
            let mut out: Vec<usize> = callees(spec)
                .filter_map(|c| index.get(c).copied())
                .collect();
            out.sort_unstable();
            out.dedup();
            out
        })
        .collect();
    let mut marks = vec![Mark::New; names.len()];
    let mut cycles = Vec::new();
    for root in 0..names.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // Iterative DFS: the path and, per node on it, the next edge to follow.
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&callee) = edges[node].get(*next) {
                *next += 1;
                match marks[callee] {
                    Mark::New => {
                        marks[callee] = Mark::OnPath;
                        path.push((callee, 0));
                    }
                    Mark::OnPath => {
                        let start = path.iter().position(|(n, _)| *n == callee).unwrap_or(0);
                        let mut cycle: Vec<String> = path[start..]
                            .iter()
                            .map(|(n, _)| names[*n].to_owned())
                            .collect();
                        cycle.push(names[callee].to_owned());
                        cycles.push(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                marks[node] = Mark::Done;
                path.pop();
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn workmodel_of(services: serde_json::Value) -> WorkModel {
        serde_json::from_value(json!({
            "apiVersion": "cellmesh.io/v1alpha1", "kind": "WorkModel",
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {"services": services}
        }))
        .unwrap()
    }

    fn calling(callees: &[&str]) -> serde_json::Value {
        let pi = json!({"computePi": {"rangeComplexity": [1, 2]}});
        if callees.is_empty() {
            json!({"internalService": pi})
        } else {
            json!({"internalService": pi, "externalServices": [{"services": callees}]})
        }
    }

    #[test]
    fn dns_labels() {
        for good in ["s0", "a", "front-end", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "S0", "0s", "s_0", "s0-", "-s", "s.0", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn a_dag_has_no_cycle() {
        let wm = workmodel_of(json!({
            "a": calling(&["b", "c"]), "b": calling(&["c"]), "c": calling(&[]),
        }));
        assert_eq!(
            call_cycles(&wm.spec.cell_services()),
            Vec::<Vec<String>>::new()
        );
        assert_eq!(workmodel(&wm), Ok(()));
    }

    #[test]
    fn a_cycle_is_named_in_call_order() {
        let wm = workmodel_of(json!({
            "a": calling(&["b"]), "b": calling(&["c"]), "c": calling(&["a"]), "d": calling(&["a"]),
        }));
        assert_eq!(
            call_cycles(&wm.spec.cell_services()),
            [["a", "b", "c", "a"]]
        );
        let invalid = workmodel(&wm).unwrap_err();
        assert_eq!(invalid.reason, "CallCycle");
        assert!(
            invalid.message.ends_with("a → b → c → a"),
            "{}",
            invalid.message
        );
    }

    #[test]
    fn two_cycles_are_both_named() {
        let wm = workmodel_of(json!({
            "a": calling(&["b"]), "b": calling(&["a"]), "x": calling(&["y"]), "y": calling(&["x"]),
        }));
        assert_eq!(
            call_cycles(&wm.spec.cell_services()),
            [["a", "b", "a"], ["x", "y", "x"]]
        );
    }

    #[test]
    fn a_cycle_through_an_alternative_behaviour_counts() {
        let mut b = calling(&[]);
        b["alternativeBehaviors"] = json!({"slow": {"externalServices": [{"services": ["a"]}]}});
        let wm = workmodel_of(json!({"a": calling(&["b"]), "b": b}));
        assert_eq!(call_cycles(&wm.spec.cell_services()), [["a", "b", "a"]]);
    }

    #[test]
    fn bad_names_and_bad_specs_are_reported_with_their_reason() {
        let wm = workmodel_of(json!({"Front_End": calling(&[])}));
        let invalid = workmodel(&wm).unwrap_err();
        assert_eq!(invalid.reason, "InvalidServiceName");
        assert!(invalid.message.contains("Front_End"));

        let wm = workmodel_of(json!({"a": calling(&["ghost"])}));
        let invalid = workmodel(&wm).unwrap_err();
        assert_eq!(invalid.reason, "InvalidService");
        assert!(invalid.message.contains("ghost"), "{}", invalid.message);
    }

    #[test]
    fn the_gateway_name_must_be_free_and_a_label() {
        let mut wm = workmodel_of(json!({"shop-gateway": calling(&[])}));
        assert_eq!(workmodel(&wm), Ok(()), "no gateway, no conflict");
        wm.spec.gateway = Some(Default::default());
        wm.spec.gateway.as_mut().unwrap().enabled = true;
        assert_eq!(workmodel(&wm).unwrap_err().reason, "InvalidGatewayName");
        let mut long = workmodel_of(json!({"a": calling(&[])}));
        long.metadata.name = Some("x".repeat(60));
        long.spec.gateway = wm.spec.gateway.clone();
        assert_eq!(workmodel(&long).unwrap_err().reason, "InvalidGatewayName");
    }

    #[test]
    fn an_invalid_nested_stage_is_named() {
        let app: App = serde_json::from_value(json!({
            "apiVersion": "cellmesh.io/v1alpha1", "kind": "App",
            "metadata": {"name": "scorer"},
            "spec": {"pipeline": {"sequential": [{"name": "bad"}]}}
        }))
        .unwrap();
        let invalid = super::app(&app).unwrap_err();
        assert_eq!(invalid.reason, "InvalidPipeline");
        assert!(invalid.message.contains("bad"), "{}", invalid.message);
    }
}
