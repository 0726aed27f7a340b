//! The WorkModel controller: see [`reconcile`] for the pipeline.

use std::collections::{BTreeMap, BTreeSet};

use cellmesh_api::crd::scaling::TargetKind;
use cellmesh_api::crd::{Profile, WorkModel};
use cellmesh_api::profile::ProfileSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Context, Error, Owner, PROGRESS_POLL, RESYNC, key};
use crate::apply::{self, FIELD_MANAGER};
use crate::build::{owner_of, workmodel as build};
use crate::status::{self, Outcome};
use crate::validate::{self, Invalid};

impl Owner for WorkModel {
    const CONTROLLER: &'static str = "workmodel";
    const TARGET: TargetKind = TargetKind::WorkModel;

    fn uses_profile(&self, name: &str) -> bool {
        build::referenced_profiles(&self.spec).contains(name)
    }

    fn reconcile(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send {
        reconcile(self, ctx)
    }
}

/// One reconcile: validate → dereference Profiles → build → apply → sweep → status.
pub async fn reconcile(wm: &WorkModel, ctx: &Context) -> Result<Action, Error> {
    if wm.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children through their ownerReferences.
        return Ok(Action::await_change());
    }
    let owner = owner_of("WorkModel", wm)?;

    // validate (pure) and dereference (reads the referenced Profiles)
    let checked = match validate::workmodel(wm) {
        Ok(()) => dereference(ctx, &owner.namespace, &wm.spec).await?,
        Err(invalid) => Err(invalid),
    };
    let profiles = match checked {
        Ok(profiles) => profiles,
        Err(invalid) => return refuse(ctx, wm, invalid).await,
    };

    // build (pure), with the pod-template sizes of InPlaceOrRecreate ScalingPolicies
    let overrides = crate::scaling::read_template_overrides(
        &ctx.client,
        &owner.namespace,
        TargetKind::WorkModel,
        &owner.name,
    )
    .await?;
    let desired = build::build(wm, &profiles, &ctx.settings, &overrides)?;

    // apply + sweep
    let full = ctx.take_full_apply(&key(wm));
    let applied = apply::apply(&ctx.client, &ctx.caches, &owner, desired, full).await?;
    ctx.changes_events(wm, &applied.changes).await;

    // status
    let services = build::effective_services(&wm.spec);
    let rollouts: BTreeMap<String, (String, status::Rollout)> = services
        .iter()
        .map(|(name, service)| {
            let endpoint = build::endpoint(&owner.namespace, name, &service.spec);
            let rollout = status::rollout(applied.deployments.get(name).map(AsRef::as_ref));
            (name.clone(), (endpoint, rollout))
        })
        .collect();
    let rolled_out = rollouts
        .values()
        .all(|(_, r): &(String, status::Rollout)| r.done);
    write_status(ctx, wm, &Outcome::Applied(rollouts)).await?;
    Ok(Action::requeue(if rolled_out {
        RESYNC
    } else {
        PROGRESS_POLL
    }))
}

/// Reads the Profiles the services reference. A missing or invalid one makes the spec
/// invalid (naming the services that use it); API errors are transient.
async fn dereference(
    ctx: &Context,
    namespace: &str,
    spec: &cellmesh_api::crd::WorkModelSpec,
) -> Result<Result<BTreeMap<String, ProfileSpec>, Invalid>, Error> {
    let api: Api<Profile> = Api::namespaced(ctx.client.clone(), namespace);
    let mut found = BTreeMap::new();
    let mut missing = BTreeSet::new();
    for name in build::referenced_profiles(spec) {
        match api.get_opt(&name).await? {
            Some(profile) => {
                if let Err(error) = profile.spec.validate() {
                    return Ok(Err(Invalid {
                        reason: "InvalidProfile",
                        message: format!("Profile {name}: {error}"),
                    }));
                }
                found.insert(name, profile.spec.0);
            }
            None => {
                missing.insert(name);
            }
        }
    }
    if missing.is_empty() {
        return Ok(Ok(found));
    }
    let users: Vec<String> = build::effective_services(spec)
        .into_iter()
        .filter(|(_, s)| s.profile.as_ref().is_some_and(|p| missing.contains(p)))
        .map(|(name, _)| name)
        .collect();
    Ok(Err(Invalid {
        reason: "ProfileNotFound",
        message: format!(
            "Profile {} not found in namespace {namespace} (used by {})",
            missing.into_iter().collect::<Vec<_>>().join(", "),
            users.join(", ")
        ),
    }))
}

/// Records an invalid spec: Warning Event, `Degraded` status; nothing is applied.
async fn refuse(ctx: &Context, wm: &WorkModel, invalid: Invalid) -> Result<Action, Error> {
    ctx.event(
        wm,
        EventType::Warning,
        invalid.reason,
        invalid.message.clone(),
    )
    .await;
    write_status(ctx, wm, &Outcome::Invalid(invalid.clone())).await?;
    Err(Error::Invalid(invalid))
}

/// Writes the status when it differs from the stored one.
async fn write_status(ctx: &Context, wm: &WorkModel, outcome: &Outcome) -> Result<(), Error> {
    let old = wm.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new = status::workmodel(&old, wm.metadata.generation, outcome, &now);
    if new == old {
        return Ok(());
    }
    let mut patch = json!({"status": new});
    // A JSON merge patch merges maps: removed services must be nulled explicitly.
    for gone in old
        .services
        .keys()
        .filter(|k| !new.services.contains_key(*k))
    {
        patch["status"]["services"][gone] = serde_json::Value::Null;
    }
    if new.services.is_empty() && !old.services.is_empty() {
        patch["status"]["services"] = serde_json::Value::Null;
    }
    let api: Api<WorkModel> =
        Api::namespaced(ctx.client.clone(), &wm.namespace().unwrap_or_default());
    api.patch_status(
        &wm.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::controller::referencing;

    fn wm(
        namespace: &str,
        name: &str,
        defaults_profile: Option<&str>,
        service_profile: Option<&str>,
    ) -> Arc<WorkModel> {
        let mut spec = json!({"services": {"a": {"internalService": {"computePi": {}}}}});
        if let Some(p) = defaults_profile {
            spec["defaults"] = json!({"profileRef": p});
        }
        if let Some(p) = service_profile {
            spec["services"]["a"]["profileRef"] = json!(p);
        }
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "cellmesh.io/v1alpha1", "kind": "WorkModel",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_profile_maps_to_the_workmodels_of_its_namespace_that_use_it() {
        let known = [
            wm("ns", "by-default", Some("fast"), None),
            wm("ns", "by-service", None, Some("fast")),
            wm("ns", "overridden", Some("fast"), Some("slow")),
            wm("other", "elsewhere", Some("fast"), None),
            wm("ns", "none", None, None),
        ];
        let mut profile = Profile::new("fast", Default::default());
        profile.metadata.namespace = Some("ns".to_owned());
        let names: Vec<String> = referencing(&known, &profile)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["by-default", "by-service"]);
    }
}
