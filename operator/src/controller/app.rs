//! The App controller: the same pipeline as WorkModels, for one Deployment.

use std::collections::BTreeMap;

use cellmesh_api::crd::scaling::TargetKind;
use cellmesh_api::crd::{App, Profile};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Context, Error, Owner, PROGRESS_POLL, RESYNC, key};
use crate::apply::{self, FIELD_MANAGER};
use crate::build::{app as build, owner_of};
use crate::status::{self, Outcome};
use crate::validate::{self, Invalid};

impl Owner for App {
    const CONTROLLER: &'static str = "app";
    const TARGET: TargetKind = TargetKind::App;

    fn uses_profile(&self, name: &str) -> bool {
        self.spec.profile_ref.as_deref() == Some(name)
    }

    fn reconcile(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send {
        reconcile(self, ctx)
    }
}

/// One reconcile: validate → dereference the Profile → build → apply → sweep → status.
pub async fn reconcile(app: &App, ctx: &Context) -> Result<Action, Error> {
    if app.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let owner = owner_of("App", app)?;

    // validate (pure)
    if let Err(invalid) = validate::app(app) {
        return refuse(ctx, app, invalid).await;
    }
    // dereference
    let profile = match &app.spec.profile_ref {
        None => None,
        Some(name) => {
            let api: Api<Profile> = Api::namespaced(ctx.client.clone(), &owner.namespace);
            let Some(profile) = api.get_opt(name).await? else {
                let invalid = Invalid {
                    reason: "ProfileNotFound",
                    message: format!("Profile {name} not found in namespace {}", owner.namespace),
                };
                return refuse(ctx, app, invalid).await;
            };
            if let Err(error) = profile.spec.validate() {
                let invalid = Invalid {
                    reason: "InvalidProfile",
                    message: format!("Profile {name}: {error}"),
                };
                return refuse(ctx, app, invalid).await;
            }
            Some(profile.spec.0)
        }
    };

    // build (pure), with the pod-template sizes of InPlaceOrRecreate ScalingPolicies
    let overrides = crate::scaling::read_template_overrides(
        &ctx.client,
        &owner.namespace,
        TargetKind::App,
        &owner.name,
    )
    .await?;
    let desired = build::build(app, profile.as_ref(), &ctx.settings, &overrides)?;

    // apply + sweep
    let full = ctx.take_full_apply(&key(app));
    let applied = apply::apply(&ctx.client, &ctx.caches, &owner, desired, full).await?;
    ctx.changes_events(app, &applied.changes).await;

    // status
    let endpoint = build::endpoint(&owner.namespace, &owner.name, app.spec.request_method);
    let rollout = status::rollout(applied.deployments.get(&owner.name).map(AsRef::as_ref));
    let rolled_out = rollout.done;
    let outcome = Outcome::Applied(BTreeMap::from([(owner.name.clone(), (endpoint, rollout))]));
    write_status(ctx, app, &outcome).await?;
    Ok(Action::requeue(if rolled_out {
        RESYNC
    } else {
        PROGRESS_POLL
    }))
}

async fn refuse(ctx: &Context, app: &App, invalid: Invalid) -> Result<Action, Error> {
    ctx.event(
        app,
        EventType::Warning,
        invalid.reason,
        invalid.message.clone(),
    )
    .await;
    write_status(ctx, app, &Outcome::Invalid(invalid.clone())).await?;
    Err(Error::Invalid(invalid))
}

async fn write_status(ctx: &Context, app: &App, outcome: &Outcome) -> Result<(), Error> {
    let old = app.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new = status::app(&old, app.metadata.generation, outcome, &now);
    if new == old {
        return Ok(());
    }
    let api: Api<App> = Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    api.patch_status(
        &app.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Merge(&json!({"status": new})),
    )
    .await?;
    Ok(())
}
