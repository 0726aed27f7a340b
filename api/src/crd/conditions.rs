//! Status conditions shared by every cellmesh resource: the standard Kubernetes `Condition`
//! (`type`, `status`, `reason`, `message`, `lastTransitionTime`, `observedGeneration`), kept as
//! a list keyed by `type` (`x-kubernetes-list-type: map`) so server-side apply merges one
//! condition at a time.
//!
//! [`set`] is the one way controllers change a condition: `lastTransitionTime` moves only when
//! the status flips, as API conventions ask, so re-reconciling an unchanged object leaves its
//! status byte-for-byte unchanged (and no write is needed).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::{Schema, SchemaGenerator, json_schema};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// `status` of a condition that holds.
pub const TRUE: &str = "True";
/// `status` of a condition that does not hold.
pub const FALSE: &str = "False";
/// `status` of a condition the controller cannot judge yet.
pub const UNKNOWN: &str = "Unknown";

/// Condition types of `WorkModel` and `App`.
pub mod workload {
    /// Every service (or the app) has its desired replicas ready.
    pub const READY: &str = "Ready";
    /// The controller is applying a change, or pods are rolling.
    pub const PROGRESSING: &str = "Progressing";
    /// The spec cannot be realised as written (e.g. a call cycle); `message` says why.
    pub const DEGRADED: &str = "Degraded";
}

/// Condition types of `ScalingPolicy`.
pub mod scaling {
    /// The policy is valid, its target exists and it is being applied.
    pub const READY: &str = "Ready";
    /// The last metrics query succeeded; `False` while Prometheus is unreachable (the policy
    /// then holds every size as it is).
    pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
    /// A resize was asked for and the kubelet has not applied it yet (`Deferred` or in
    /// progress).
    pub const RESIZE_PENDING: &str = "ResizePending";
    /// The kubelet refused a resize as impossible on its node (`Infeasible`).
    pub const RESIZE_INFEASIBLE: &str = "ResizeInfeasible";
}

/// Condition types of `Profile`.
pub mod profile {
    /// The profile is valid and rendered into the cells that use it.
    pub const READY: &str = "Ready";
}

/// The condition of this type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// A condition as a controller states it; [`set`] adds the transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed<'a> {
    /// The condition's type, e.g. [`workload::READY`].
    pub type_: &'a str,
    /// [`TRUE`], [`FALSE`] or [`UNKNOWN`].
    pub status: &'a str,
    /// A PascalCase reason, e.g. `CallCycle`.
    pub reason: &'a str,
    /// A sentence for people.
    pub message: String,
    /// The `metadata.generation` the controller acted on.
    pub observed_generation: Option<i64>,
}

/// Inserts or updates the condition `observed.type_`, keeping its `lastTransitionTime` unless
/// the status changed (then it becomes `now`). Returns whether anything changed.
pub fn set(conditions: &mut Vec<Condition>, observed: Observed<'_>, now: Time) -> bool {
    let Observed {
        type_,
        status,
        reason,
        message,
        observed_generation,
    } = observed;
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let before = existing.clone();
            if existing.status != status {
                existing.last_transition_time = now;
                status.clone_into(&mut existing.status);
            }
            reason.clone_into(&mut existing.reason);
            existing.message = message;
            existing.observed_generation = observed_generation;
            *existing != before
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation,
                last_transition_time: now,
            });
            true
        }
    }
}

/// Schema of a `conditions` list: Kubernetes' `Condition`, as a list map keyed by `type`.
pub(crate) fn schema(generator: &mut SchemaGenerator) -> Schema {
    let condition = generator.subschema_for::<Condition>();
    json_schema!({
        "description": "Current state of the resource, one entry per condition type. Each has \
            a status (True, False or Unknown), a PascalCase reason, a message for people and \
            the time the status last changed.",
        "type": "array",
        "items": condition,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn ready(status: &str, message: &str) -> Observed<'static> {
        Observed {
            type_: workload::READY,
            status: if status == TRUE { TRUE } else { FALSE },
            reason: "Reconciled",
            message: message.to_owned(),
            observed_generation: Some(3),
        }
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut conditions = Vec::new();
        assert!(set(&mut conditions, ready(TRUE, "all ready"), at(10)));
        assert_eq!(conditions[0].last_transition_time, at(10));
        // Same status, same text: nothing changes, not even the time.
        assert!(!set(&mut conditions, ready(TRUE, "all ready"), at(20)));
        assert_eq!(conditions[0].last_transition_time, at(10));
        // Same status, new message: the message changes, the time does not.
        assert!(set(&mut conditions, ready(TRUE, "3/3 ready"), at(30)));
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert_eq!(conditions[0].message, "3/3 ready");
        // A flip moves the time.
        assert!(set(&mut conditions, ready(FALSE, "s1 down"), at(40)));
        assert_eq!(conditions[0].last_transition_time, at(40));
        assert_eq!(conditions.len(), 1);
        assert!(!is_true(&conditions, workload::READY));
        assert!(find(&conditions, workload::DEGRADED).is_none());
    }
}
