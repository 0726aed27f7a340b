//! The Profile controller: checks each Profile as a cell would and reports it in the
//! `Ready` condition. Rendering a Profile into cells is the WorkModel and App controllers'
//! job: they watch Profiles and re-render the ConfigMaps of whatever references the one
//! that changed (cells hot-reload the file; pods do not restart).

use std::sync::Arc;

use cellmesh_api::crd::Profile;
use cellmesh_api::crd::conditions::{self, FALSE, Observed, TRUE};
use cellmesh_api::crd::profile::ProfileStatus;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Context, Error, RESYNC, api, error_policy, instrumented, log_result};
use crate::apply::FIELD_MANAGER;
use crate::validate::Invalid;

/// Name of this controller in metrics and logs.
pub const NAME: &str = "profile";

/// Runs the Profile controller until `shutdown` resolves.
pub async fn controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::new(
        api::<Profile>(&ctx.client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .graceful_shutdown_on(shutdown)
    .run(
        |profile, ctx| async move {
            instrumented(NAME, profile.as_ref(), &ctx, reconcile(&profile, &ctx)).await
        },
        error_policy,
        ctx.clone(),
    )
    .for_each(|result| async move { log_result(NAME, result) })
    .await;
}

/// The next status of a Profile: `Ready` with `Valid`, or `False` with the problems.
pub fn next_status(profile: &Profile, now: &Time) -> (ProfileStatus, Option<Invalid>) {
    let mut status = profile.status.clone().unwrap_or_default();
    let generation = profile.metadata.generation;
    status.observed_generation = generation;
    let invalid = profile.spec.validate().err().map(|error| Invalid {
        reason: "InvalidProfile",
        message: error.to_string(),
    });
    let observed = match &invalid {
        None => Observed {
            type_: conditions::profile::READY,
            status: TRUE,
            reason: "Valid",
            message: "the profile is valid; cells that use it reload it".to_owned(),
            observed_generation: generation,
        },
        Some(invalid) => Observed {
            type_: conditions::profile::READY,
            status: FALSE,
            reason: invalid.reason,
            message: invalid.message.clone(),
            observed_generation: generation,
        },
    };
    conditions::set(&mut status.conditions, observed, now.clone());
    (status, invalid)
}

/// One reconcile: validate, write the status.
pub async fn reconcile(profile: &Profile, ctx: &Context) -> Result<Action, Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (status, invalid) = next_status(profile, &now);
    if profile.status.as_ref() != Some(&status) {
        let api: Api<Profile> =
            Api::namespaced(ctx.client.clone(), &profile.namespace().unwrap_or_default());
        api.patch_status(
            &profile.name_any(),
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    match invalid {
        Some(invalid) => {
            ctx.event(
                profile,
                EventType::Warning,
                invalid.reason,
                invalid.message.clone(),
            )
            .await;
            Err(Error::Invalid(invalid))
        }
        None => Ok(Action::requeue(RESYNC)),
    }
}
