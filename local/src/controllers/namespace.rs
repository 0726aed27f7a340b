//! Namespace lifecycle: a namespace being deleted (phase `Terminating`, `kubernetes` in
//! `spec.finalizers`) is emptied — every namespaced resource in it deleted, background
//! propagation — and once nothing is left the `kubernetes` finalizer is removed through the
//! `finalize` subresource, which lets the API server delete the namespace. Progress is
//! reported in the namespace's status conditions with Kubernetes' types and reasons
//! (`NamespaceDeletionContentFailure`, `NamespaceContentRemaining`, …) so `kubectl
//! describe ns` explains a namespace that is stuck.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use super::util;

/// The namespace controller's finalizer in `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";

/// What deleting the content of a namespace found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sweep {
    /// Resource → objects still present after the deletion requests.
    pub remaining: BTreeMap<String, usize>,
    /// Finalizer → objects still carrying it.
    pub finalizers: BTreeMap<String, usize>,
    /// Deletion errors, as `resource: message`.
    pub failures: Vec<String>,
    /// Discovery failed: content may be missed, so the namespace must not be finalized.
    pub discovery_failure: Option<String>,
}

impl Sweep {
    pub fn done(&self) -> bool {
        self.remaining.is_empty() && self.failures.is_empty() && self.discovery_failure.is_none()
    }
}

fn condition(kind: &str, failed: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: kind.to_owned(),
        status: if failed { "True" } else { "False" }.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_transition_time: Some(util::now()),
    }
}

/// The status conditions Kubernetes' namespace controller reports for a sweep.
pub fn conditions(sweep: &Sweep) -> Vec<NamespaceCondition> {
    let list = |m: &BTreeMap<String, usize>, verb: &str| {
        m.iter()
            .map(|(k, n)| format!("{k} {verb} {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        match &sweep.discovery_failure {
            Some(err) => condition(
                "NamespaceDeletionDiscoveryFailure",
                true,
                "DiscoveryFailed",
                format!("Discovery failed for some groups: {err}"),
            ),
            None => condition(
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".into(),
            ),
        },
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
        ),
        if sweep.failures.is_empty() {
            condition(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            condition(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    sweep.failures.len(),
                    sweep.failures.join(", ")
                ),
            )
        },
        if sweep.remaining.is_empty() {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!(
                    "Some resources are remaining: {}",
                    list(&sweep.remaining, "has")
                ),
            )
        },
        if sweep.finalizers.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    list(&sweep.finalizers, "in")
                ),
            )
        },
    ]
}

/// Keeps `old` conditions whose status did not change (their transition time stays).
fn merge_conditions(
    old: &[NamespaceCondition],
    new: Vec<NamespaceCondition>,
) -> Vec<NamespaceCondition> {
    new.into_iter()
        .map(|c| match old.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status && o.reason == c.reason && o.message == c.message => {
                o.clone()
            }
            _ => c,
        })
        .collect()
}

/// Deletes everything namespaced in `ns` and reports what is left.
async fn sweep(client: &kube::Client, ns: &str) -> Sweep {
    let mut result = Sweep::default();
    let served = match util::discover(client).await {
        Ok(served) => served,
        Err(err) => {
            result.discovery_failure = Some(err.to_string());
            return result;
        }
    };
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    for s in served.iter().filter(|s| s.namespaced) {
        let api = s.api(client, Some(ns));
        let key = s.key();
        let resource = if s.resource.group.is_empty() {
            s.resource.plural.clone()
        } else {
            format!("{}.{}", s.resource.plural, s.resource.group)
        };
        let listed = match api.list_metadata(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(err) => {
                result.failures.push(format!("{key}: {err}"));
                continue;
            }
        };
        if listed.is_empty() {
            continue;
        }
        let deleted = if s.deletecollection {
            api.delete_collection(&background, &ListParams::default())
                .await
                .map(|_| ())
        } else {
            let mut outcome = Ok(());
            for item in &listed {
                let name = item.metadata.name.as_deref().unwrap_or_default();
                if let Err(err) = api.delete(name, &background).await
                    && !util::is_not_found(&err)
                {
                    outcome = Err(err);
                }
            }
            outcome
        };
        if let Err(err) = deleted {
            result.failures.push(format!("{key}: {err}"));
        }
        match api.list_metadata(&ListParams::default()).await {
            Ok(left) if !left.items.is_empty() => {
                result.remaining.insert(resource, left.items.len());
                for item in &left.items {
                    for f in item.metadata.finalizers.iter().flatten() {
                        *result.finalizers.entry(f.clone()).or_default() += 1;
                    }
                }
            }
            Ok(_) => {}
            Err(err) => result.failures.push(format!("{key}: {err}")),
        }
    }
    result
}

struct Context {
    client: kube::Client,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let terminating = ns.metadata.deletion_timestamp.is_some();
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !terminating || !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let result = sweep(&ctx.client, &name).await;
    let old = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let wanted = merge_conditions(&old, conditions(&result));
    if wanted != old {
        let mut updated = (*ns).clone();
        let status = updated.status.get_or_insert_with(Default::default);
        status.conditions = Some(wanted);
        status.phase = Some("Terminating".into());
        match api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {}
            Err(err) if util::is_stale(&err) => {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(err) => return Err(err),
        }
    }
    if !result.done() {
        // Pods terminating gracefully and objects with finalizers take a while.
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let Some(mut finalized) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    match api
        .replace_subresource::<Namespace>("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => tracing::info!(namespace = %name, "namespace emptied and finalized"),
        Err(err) if util::is_not_found(&err) => {}
        Err(err) if util::is_stale(&err) => return Ok(Action::requeue(Duration::from_millis(200))),
        Err(err) => return Err(err),
    }
    Ok(Action::await_change())
}

fn error_policy(_ns: Arc<Namespace>, err: &kube::Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%err, "namespace controller: reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Runs the namespace controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(conditions: &'a [NamespaceCondition], kind: &str) -> &'a NamespaceCondition {
        conditions.iter().find(|c| c.type_ == kind).unwrap()
    }

    #[test]
    fn conditions_say_what_is_left() {
        let clean = conditions(&Sweep::default());
        assert_eq!(clean.len(), 5);
        assert!(clean.iter().all(|c| c.status == "False"));
        assert_eq!(
            find(&clean, "NamespaceContentRemaining").reason.as_deref(),
            Some("ContentRemoved")
        );
        assert!(Sweep::default().done());

        let stuck = Sweep {
            remaining: [("pods".to_owned(), 2)].into(),
            finalizers: [("example.com/x".to_owned(), 1)].into(),
            ..Sweep::default()
        };
        assert!(!stuck.done());
        let c = conditions(&stuck);
        let remaining = find(&c, "NamespaceContentRemaining");
        assert_eq!(
            (remaining.status.as_str(), remaining.reason.as_deref()),
            ("True", Some("SomeResourcesRemain"))
        );
        assert_eq!(
            remaining.message.as_deref(),
            Some("Some resources are remaining: pods has 2 resource instances")
        );
        let fin = find(&c, "NamespaceFinalizersRemaining");
        assert_eq!(
            fin.message.as_deref(),
            Some(
                "Some content in the namespace has finalizers remaining: example.com/x in 1 resource instances"
            )
        );

        let failed = Sweep {
            failures: vec!["apps/deployments: boom".into()],
            ..Sweep::default()
        };
        assert!(!failed.done());
        assert_eq!(
            find(&conditions(&failed), "NamespaceDeletionContentFailure").status,
            "True"
        );
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let mut old = conditions(&Sweep::default());
        old[0].last_transition_time = None;
        let merged = merge_conditions(&old, conditions(&Sweep::default()));
        assert_eq!(merged[0].last_transition_time, None, "kept from before");
        let changed = merge_conditions(
            &old,
            conditions(&Sweep {
                discovery_failure: Some("x".into()),
                ..Sweep::default()
            }),
        );
        assert!(changed[0].last_transition_time.is_some());
    }
}
