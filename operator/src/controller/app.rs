//! The App controller: the same pipeline as WorkModels, for one Deployment.

use std::collections::BTreeMap;
use std::sync::Arc;

use cellmesh_api::crd::scaling::{ScalingPolicy, TargetKind};
use cellmesh_api::crd::{App, Profile};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{
    Context, Error, PROGRESS_POLL, RESYNC, api, error_policy, instrumented, key, log_result,
    owned_watch,
};
use crate::apply::{self, FIELD_MANAGER};
use crate::build::{app as build, owner_of};
use crate::status::{self, Outcome};
use crate::validate::{self, Invalid};

/// Name of this controller in metrics and logs.
pub const NAME: &str = "app";

/// Runs the App controller until `shutdown` resolves.
pub async fn controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = &ctx.client;
    let controller = Controller::new(
        api::<App>(client, namespace),
        watcher::Config::default().any_semantic(),
    );
    let store = controller.store();
    controller
        .owns(api::<Deployment>(client, namespace), owned_watch())
        .owns(api::<Service>(client, namespace), owned_watch())
        .owns(api::<ConfigMap>(client, namespace), owned_watch())
        .watches(
            api::<Profile>(client, namespace),
            watcher::Config::default().any_semantic(),
            move |profile| referencing(&store.state(), &profile),
        )
        // Template recommendations of InPlaceOrRecreate policies roll the pods at once.
        .watches(
            api::<ScalingPolicy>(client, namespace),
            watcher::Config::default().any_semantic(),
            |policy| {
                crate::scaling::template_target(&policy, TargetKind::App)
                    .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
            },
        )
        .with_config(Config::default().debounce(std::time::Duration::from_millis(100)))
        .graceful_shutdown_on(shutdown)
        .run(
            |app, ctx| async move {
                instrumented(NAME, app.as_ref(), &ctx, reconcile(&app, &ctx)).await
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move { log_result(NAME, result) })
        .await;
}

/// The Apps (among `known`) that use `profile`.
pub fn referencing(known: &[Arc<App>], profile: &Profile) -> Vec<ObjectRef<App>> {
    let (Some(name), namespace) = (profile.metadata.name.as_deref(), profile.namespace()) else {
        return Vec::new();
    };
    known
        .iter()
        .filter(|app| app.namespace() == namespace && app.spec.profile_ref.as_deref() == Some(name))
        .map(|app| ObjectRef::from_obj(app.as_ref()))
        .collect()
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
