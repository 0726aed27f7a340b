//! The controllers of `cellmesh-operator run`: WorkModel, App and Profile.
//!
//! Each WorkModel/App reconcile is the pipeline
//! `validate → dereference Profiles → build (pure) → apply (SSA) → sweep orphans → status`,
//! one labelled call per step in [`workmodel::reconcile`] and [`app::reconcile`].
//!
//! Error contract:
//! - an invalid spec (failed validation, missing or invalid Profile) is written as a
//!   `Degraded` condition and a Warning Event, nothing is applied, and the object is retried
//!   only slowly ([`INVALID_RETRY`]) — a change to it, or to a Profile it references,
//!   triggers a reconcile anyway;
//! - anything else (the API server, the network) is transient: retried with exponential
//!   backoff per object, from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], reset on success.
//!
//! Triggers: the resource itself, its owned Deployments/Services/ConfigMaps (only those
//! labelled `app.kubernetes.io/managed-by=cellmesh-operator` are watched), every Profile it
//! references (mapped through the controller's own store), and a periodic resync — every
//! [`PROGRESS_POLL`] while a rollout is in progress (the status reads Deployments from a
//! separate watch cache, which may lag the watch that triggered the reconcile by a moment),
//! every [`RESYNC`] otherwise.

pub mod app;
pub mod profile;
pub mod workmodel;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellmesh_api::crd::scaling::{ScalingPolicy, TargetKind};
use cellmesh_api::crd::{App, Profile, WorkModel};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::apply::{Caches, Changes};
use crate::build::workmodel::BuildError;
use crate::build::{MissingMetadata, Settings};
use crate::cache::managed_watch;
use crate::telemetry::Health;
use crate::validate::Invalid;

/// Retry delay of an invalid spec (changes trigger a reconcile sooner).
pub const INVALID_RETRY: Duration = Duration::from_secs(300);
/// First retry delay after a transient error.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay after transient errors.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often every object is re-applied in full, correcting drift on objects whose desired
/// content did not change.
pub const FULL_APPLY_EVERY: Duration = Duration::from_secs(600);
/// Periodic resync of every object.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Resync while Deployments are rolling out.
pub const PROGRESS_POLL: Duration = Duration::from_secs(5);

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be realised as written.
    #[error("{0}")]
    Invalid(Invalid),
    /// The API server refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks metadata every stored object has.
    #[error(transparent)]
    Metadata(#[from] MissingMetadata),
    /// A build step failed for a reason validation did not catch.
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl Error {
    /// PascalCase category for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Invalid(invalid) => invalid.reason,
            Self::Kube(_) => "Kube",
            Self::Metadata(_) => "MissingMetadata",
            Self::Build(_) => "Build",
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Inputs of every build (the cell image).
    pub settings: Settings,
    /// Metrics and readiness.
    pub health: Arc<Health>,
    /// One recorder for all controllers, so repeated Events aggregate.
    pub recorder: Recorder,
    /// Watch-fed caches of the managed objects.
    pub caches: Caches,
    full_applies: Mutex<HashMap<String, Instant>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for `client`; `instance` names this replica in Events. Starts the caches of
    /// managed objects in `namespace` (or all); [`run`] waits for them.
    pub fn new(
        client: Client,
        settings: Settings,
        health: Arc<Health>,
        instance: String,
        namespace: Option<&str>,
    ) -> Self {
        let reporter = Reporter {
            controller: "cellmesh-operator".to_owned(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            caches: Caches::start(&client, namespace),
            client,
            settings,
            health,
            full_applies: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Whether the object keyed `key` is due a full apply; if so, records it as done now.
    fn take_full_apply(&self, key: &str) -> bool {
        let Ok(mut map) = self.full_applies.lock() else {
            return true;
        };
        let now = Instant::now();
        match map.get(key) {
            Some(last) if now.duration_since(*last) < FULL_APPLY_EVERY => false,
            _ => {
                map.insert(key.to_owned(), now);
                true
            }
        }
    }

    /// Forgets the full-apply time of `key` (its apply failed: redo it fully).
    fn forget_full_apply(&self, key: &str) {
        if let Ok(mut map) = self.full_applies.lock() {
            map.remove(key);
        }
    }

    /// The next backoff delay of `key` after a transient error.
    fn next_backoff(&self, key: &str) -> Duration {
        let Ok(mut map) = self.failures.lock() else {
            return BACKOFF_MAX;
        };
        let failures = map.entry(key.to_owned()).or_insert(0);
        *failures = failures.saturating_add(1);
        backoff(*failures)
    }

    fn reset_backoff(&self, key: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }

    /// Publishes an Event about `object`; a failure to publish is logged, never fatal.
    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1024)),
            action: if type_ == EventType::Warning {
                "Validate".to_owned()
            } else {
                "Apply".to_owned()
            },
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, reason, "cannot publish an Event");
        }
    }

    /// One Normal Event per kind of change (`Created`, `Updated`, `Deleted`), listing the
    /// objects.
    async fn changes_events<K: Resource<DynamicType = ()>>(&self, object: &K, changes: &Changes) {
        for (reason, list) in [
            ("Created", &changes.created),
            ("Updated", &changes.updated),
            ("Deleted", &changes.deleted),
        ] {
            if !list.is_empty() {
                let note = format!(
                    "{} {}: {}",
                    reason.to_lowercase(),
                    list.len(),
                    list.join(", ")
                );
                self.event(object, EventType::Normal, reason, note).await;
            }
        }
    }
}

/// Exponential backoff after `failures` consecutive transient errors.
pub fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    BACKOFF_MIN.saturating_mul(factor).min(BACKOFF_MAX)
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

/// Key of an object in the context's maps.
fn key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The retry decision after a failed reconcile.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    match error {
        Error::Invalid(_) => Action::requeue(INVALID_RETRY),
        _ => {
            let key = key(object.as_ref());
            ctx.forget_full_apply(&key);
            let delay = ctx.next_backoff(&key);
            tracing::warn!(object = %key, %error, retry_in = ?delay, "reconcile failed");
            Action::requeue(delay)
        }
    }
}

/// An Api for `K` in one namespace, or in all.
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs `reconcile` for `object`, recording metrics and resetting the backoff on success.
async fn instrumented<K, F>(
    controller: &'static str,
    object: &K,
    ctx: &Context,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let result = reconcile.await;
    let took = started.elapsed();
    ctx.health
        .metrics
        .reconciled(controller, took, result.as_ref().err().map(Error::category));
    let key = key(object);
    match &result {
        Ok(_) => {
            ctx.reset_backoff(&key);
            tracing::debug!(object = %key, ?took, "reconciled");
        }
        Err(Error::Invalid(invalid)) => tracing::info!(object = %key, %invalid, "invalid spec"),
        Err(_) => {}
    }
    result
}

/// What the WorkModel and App controllers differ in; [`controller`] is the rest.
pub trait Owner:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Name of the controller in metrics and logs.
    const CONTROLLER: &'static str;
    /// How a ScalingPolicy's `targetRef.kind` names this kind.
    const TARGET: TargetKind;

    /// Whether the spec uses the Profile `name` (of its own namespace).
    fn uses_profile(&self, name: &str) -> bool;

    /// One reconcile: validate → dereference Profiles → build → apply → sweep → status.
    fn reconcile(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
}

/// Runs the controller of `K` until `shutdown` resolves. Triggers: the object, the
/// Deployments, Services and ConfigMaps it owns, the Profiles it uses, and the
/// ScalingPolicies whose pod-template recommendations (`InPlaceOrRecreate`) target it.
pub async fn controller<K: Owner>(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = &ctx.client;
    let controller = Controller::new(
        api::<K>(client, namespace),
        watcher::Config::default().any_semantic(),
    );
    let store = controller.store();
    controller
        .owns(api::<Deployment>(client, namespace), managed_watch())
        .owns(api::<Service>(client, namespace), managed_watch())
        .owns(api::<ConfigMap>(client, namespace), managed_watch())
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
                crate::scaling::template_target(&policy, K::TARGET)
                    .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
            },
        )
        .with_config(Config::default().debounce(Duration::from_millis(100)))
        .graceful_shutdown_on(shutdown)
        .run(
            |object, ctx| async move {
                instrumented(K::CONTROLLER, object.as_ref(), &ctx, object.reconcile(&ctx)).await
            },
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move { log_result(K::CONTROLLER, result) })
        .await;
}

/// The objects (among `known`) of `profile`'s namespace that use it.
pub fn referencing<K: Owner>(known: &[Arc<K>], profile: &Profile) -> Vec<ObjectRef<K>> {
    let (Some(name), namespace) = (profile.metadata.name.as_deref(), profile.namespace()) else {
        return Vec::new();
    };
    known
        .iter()
        .filter(|object| object.namespace() == namespace && object.uses_profile(name))
        .map(|object| ObjectRef::from_obj(object.as_ref()))
        .collect()
}

/// Runs the four controllers (WorkModel, App, Profile, ScalingPolicy) until `shutdown`
/// resolves (each drains its reconciles).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    scaling: crate::scaling::Config,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if let Err(error) = ctx.caches.wait_until_ready().await {
        tracing::error!(%error, "the caches of managed objects stopped before they were ready");
        return;
    }
    let stop = move || {
        let mut rx = shutdown.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let scaling = async {
        if let Err(error) = crate::scaling::run(ctx.client.clone(), scaling, stop()).await {
            tracing::error!(%error, "the ScalingPolicy controller stopped");
        }
    };
    futures::join!(
        controller::<WorkModel>(ctx.clone(), namespace.as_deref(), stop()),
        controller::<App>(ctx.clone(), namespace.as_deref(), stop()),
        profile::controller(ctx.clone(), namespace.as_deref(), stop()),
        scaling,
    );
}

/// Logs one controller result.
fn log_result<K: Resource, E: std::fmt::Display>(
    controller: &'static str,
    result: Result<(ObjectRef<K>, Action), E>,
) {
    match result {
        Ok((object, _)) => tracing::trace!(controller, %object, "reconcile done"),
        Err(error) => tracing::debug!(controller, %error, "controller event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("short".to_owned(), 10), "short");
        let cut = truncate("ααααα".to_owned(), 6);
        assert!(cut.len() <= 6, "{cut}");
        assert!(cut.ends_with('…'));
        assert_eq!(cut, "α…");
    }
}
