//! Status of WorkModels and Apps, computed by pure functions from the previous status, the
//! outcome of a reconcile and the live Deployments.
//!
//! Conditions (`Ready`, `Progressing`, `Degraded`) always appear together:
//! - spec invalid: `Degraded=True` with the validation reason (e.g. `CallCycle`) and message,
//!   `Ready=False` with the same reason, `Progressing=False`; nothing was applied, so the
//!   per-service entries stay as they were;
//! - applied, some Deployment not rolled out (observedGeneration behind, or fewer updated or
//!   ready replicas than desired): `Progressing=True` (`RollingOut`), `Ready=False`;
//! - all rolled out: `Ready=True` (`AllReady`), `Progressing=False` (`RolloutComplete`).
//!
//! [`conditions::set`] keeps `lastTransitionTime` unless a status flips, so an unchanged
//! object gets a byte-identical status and the controller skips the write.

use std::collections::BTreeMap;

use cellmesh_api::crd::AppStatus;
use cellmesh_api::crd::conditions::{self, Condition, FALSE, Observed, TRUE, workload};
use cellmesh_api::crd::workmodel::{ServiceStatus, WorkModelStatus};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::cache::Slim;
use crate::validate::Invalid;

/// How far one Deployment has rolled out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Replicas the spec asks for.
    pub desired: u32,
    /// Ready replicas the Deployment reports.
    pub ready: u32,
    /// Whether the Deployment controller has seen the latest spec and every replica is
    /// updated and ready.
    pub done: bool,
}

fn count(value: Option<i32>) -> u32 {
    value.and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

/// The rollout of a live Deployment (`None`: it does not exist yet).
pub fn rollout(deployment: Option<&Slim<Deployment>>) -> Rollout {
    let Some(deployment) = deployment else {
        return Rollout::default();
    };
    let desired = count(deployment.spec.as_ref().and_then(|s| s.replicas));
    let Some(status) = deployment.status.as_ref() else {
        return Rollout {
            desired,
            ..Rollout::default()
        };
    };
    let ready = count(status.ready_replicas);
    let seen = match (status.observed_generation, deployment.metadata.generation) {
        (Some(observed), Some(generation)) => observed >= generation,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    let updated = count(status.updated_replicas);
    Rollout {
        desired,
        ready,
        done: seen && updated >= desired && ready >= desired,
    }
}

/// What a reconcile found.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The spec was refused; nothing applied.
    Invalid(Invalid),
    /// Applied; per service (or for the App, one entry) the endpoint and the rollout.
    Applied(BTreeMap<String, (String, Rollout)>),
}

/// The three workload conditions for `outcome`, updated from `old`.
fn conditions(
    old: &[Condition],
    generation: Option<i64>,
    outcome: &Outcome,
    now: &Time,
) -> Vec<Condition> {
    let mut out = old.to_vec();
    let mut set = |type_, status, reason, message: String| {
        conditions::set(
            &mut out,
            Observed {
                type_,
                status,
                reason,
                message,
                observed_generation: generation,
            },
            now.clone(),
        );
    };
    match outcome {
        Outcome::Invalid(invalid) => {
            set(
                workload::DEGRADED,
                TRUE,
                invalid.reason,
                invalid.message.clone(),
            );
            set(
                workload::READY,
                FALSE,
                invalid.reason,
                "the spec cannot be realised; see the Degraded condition".to_owned(),
            );
            set(
                workload::PROGRESSING,
                FALSE,
                "InvalidSpec",
                "nothing is applied until the spec is fixed".to_owned(),
            );
        }
        Outcome::Applied(rollouts) => {
            let waiting: Vec<&str> = rollouts
                .iter()
                .filter(|(_, (_, r))| !r.done)
                .map(|(name, _)| name.as_str())
                .collect();
            set(
                workload::DEGRADED,
                FALSE,
                "Reconciled",
                "the spec is applied as written".to_owned(),
            );
            if waiting.is_empty() {
                set(
                    workload::READY,
                    TRUE,
                    "AllReady",
                    format!("{n}/{n} ready", n = rollouts.len()),
                );
                set(
                    workload::PROGRESSING,
                    FALSE,
                    "RolloutComplete",
                    "every Deployment runs the latest spec".to_owned(),
                );
            } else {
                let shown: Vec<&str> = waiting.iter().take(10).copied().collect();
                let more = waiting.len().saturating_sub(shown.len());
                let mut list = shown.join(", ");
                if more > 0 {
                    list.push_str(&format!(" and {more} more"));
                }
                let message = format!(
                    "{}/{} ready; waiting for {list}",
                    rollouts.len() - waiting.len(),
                    rollouts.len()
                );
                set(workload::READY, FALSE, "RollingOut", message.clone());
                set(workload::PROGRESSING, TRUE, "RollingOut", message);
            }
        }
    }
    out
}

/// The next status of a WorkModel.
pub fn workmodel(
    old: &WorkModelStatus,
    generation: Option<i64>,
    outcome: &Outcome,
    now: &Time,
) -> WorkModelStatus {
    let mut status = old.clone();
    status.observed_generation = generation;
    status.conditions = conditions(&old.conditions, generation, outcome, now);
    if let Outcome::Applied(rollouts) = outcome {
        status.services = rollouts
            .iter()
            .map(|(name, (endpoint, rollout))| {
                (
                    name.clone(),
                    ServiceStatus {
                        ready_replicas: rollout.ready,
                        endpoint: Some(endpoint.clone()),
                    },
                )
            })
            .collect();
        let ready = rollouts.values().filter(|(_, r)| r.done).count();
        status.services_ready = Some(format!("{ready}/{}", rollouts.len()));
    }
    status
}

/// The next status of an App.
pub fn app(old: &AppStatus, generation: Option<i64>, outcome: &Outcome, now: &Time) -> AppStatus {
    let mut status = old.clone();
    status.observed_generation = generation;
    status.conditions = conditions(&old.conditions, generation, outcome, now);
    if let Outcome::Applied(rollouts) = outcome
        && let Some((endpoint, rollout)) = rollouts.values().next()
    {
        status.replicas = rollout.desired;
        status.ready_replicas = rollout.ready;
        status.endpoint = Some(endpoint.clone());
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{SlimSpec, SlimStatus};

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn deployment(
        generation: i64,
        observed: i64,
        replicas: i32,
        updated: i32,
        ready: i32,
    ) -> Slim<Deployment> {
        let mut d = Slim::default();
        d.spec = Some(SlimSpec {
            replicas: Some(replicas),
        });
        d.status = Some(SlimStatus {
            observed_generation: Some(observed),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
        });
        d.metadata.generation = Some(generation);
        d
    }

    #[test]
    fn a_rollout_is_done_only_when_seen_updated_and_ready() {
        assert!(rollout(Some(&deployment(2, 2, 3, 3, 3))).done);
        assert!(
            !rollout(Some(&deployment(3, 2, 3, 3, 3))).done,
            "spec not seen yet"
        );
        assert!(!rollout(Some(&deployment(2, 2, 3, 2, 3))).done, "old pods");
        assert!(!rollout(Some(&deployment(2, 2, 3, 3, 2))).done, "not ready");
        assert_eq!(rollout(None), Rollout::default());
        let mut no_status = deployment(1, 1, 1, 1, 1);
        no_status.status = None;
        assert!(!rollout(Some(&no_status)).done, "never reported");
    }

    fn applied(done: &[(&str, bool)]) -> Outcome {
        Outcome::Applied(
            done.iter()
                .map(|(n, d)| {
                    let r = Rollout {
                        desired: 1,
                        ready: u32::from(*d),
                        done: *d,
                    };
                    ((*n).to_owned(), (format!("http://{n}"), r))
                })
                .collect(),
        )
    }

    #[test]
    fn progressing_until_every_service_is_ready_then_ready() {
        let s1 = workmodel(
            &WorkModelStatus::default(),
            Some(1),
            &applied(&[("a", true), ("b", false)]),
            &at(10),
        );
        assert!(conditions::is_true(&s1.conditions, workload::PROGRESSING));
        assert!(!conditions::is_true(&s1.conditions, workload::READY));
        assert!(!conditions::is_true(&s1.conditions, workload::DEGRADED));
        let ready = conditions::find(&s1.conditions, workload::READY).unwrap();
        assert_eq!(ready.message, "1/2 ready; waiting for b");
        assert_eq!(s1.services_ready.as_deref(), Some("1/2"));
        assert_eq!(s1.services["a"].ready_replicas, 1);
        assert_eq!(s1.services["b"].endpoint.as_deref(), Some("http://b"));

        let s2 = workmodel(&s1, Some(1), &applied(&[("a", true), ("b", true)]), &at(20));
        assert!(conditions::is_true(&s2.conditions, workload::READY));
        assert!(!conditions::is_true(&s2.conditions, workload::PROGRESSING));
        assert_eq!(
            conditions::find(&s2.conditions, workload::READY)
                .unwrap()
                .last_transition_time,
            at(20)
        );

        // Nothing changed: byte-identical status (no write needed), times kept.
        let s3 = workmodel(&s2, Some(1), &applied(&[("a", true), ("b", true)]), &at(30));
        assert_eq!(s3, s2);
    }

    #[test]
    fn an_invalid_spec_is_degraded_and_keeps_the_last_services() {
        let s1 = workmodel(
            &WorkModelStatus::default(),
            Some(1),
            &applied(&[("a", true)]),
            &at(10),
        );
        let invalid = Outcome::Invalid(Invalid {
            reason: "CallCycle",
            message: "a → b → a".to_owned(),
        });
        let s2 = workmodel(&s1, Some(2), &invalid, &at(20));
        let degraded = conditions::find(&s2.conditions, workload::DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            (TRUE, "CallCycle")
        );
        assert_eq!(degraded.message, "a → b → a");
        assert_eq!(degraded.observed_generation, Some(2));
        assert!(!conditions::is_true(&s2.conditions, workload::READY));
        assert_eq!(s2.observed_generation, Some(2));
        assert_eq!(s2.services, s1.services);
    }

    #[test]
    fn app_status_carries_replicas_and_endpoint() {
        let outcome = Outcome::Applied(BTreeMap::from([(
            "scorer".to_owned(),
            (
                "http://scorer.ns.svc:80/".to_owned(),
                Rollout {
                    desired: 2,
                    ready: 1,
                    done: false,
                },
            ),
        )]));
        let status = app(&AppStatus::default(), Some(4), &outcome, &at(1));
        assert_eq!((status.replicas, status.ready_replicas), (2, 1));
        assert_eq!(status.endpoint.as_deref(), Some("http://scorer.ns.svc:80/"));
        assert!(conditions::is_true(
            &status.conditions,
            workload::PROGRESSING
        ));
    }
}
