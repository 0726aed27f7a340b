//! Events the controllers record (`core/v1` Events, which `kubectl describe` lists), with
//! Kubernetes' reasons: `ScalingReplicaSet` (deployment controller), `SuccessfulCreate` /
//! `SuccessfulDelete` (replicaset controller). Recording is fire-and-forget: an event that
//! cannot be written is logged at debug level and never fails a sync.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use kube::api::{Api, ObjectMeta, PostParams};

use super::util;

/// The object an event is about.
pub fn reference(api_version: &str, kind: &str, meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.to_owned()),
        kind: Some(kind.to_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

/// A Normal event from `component` about `object`.
pub fn normal(component: &str, object: ObjectReference, reason: &str, message: String) -> Event {
    let now = util::now();
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", object.name.as_deref().unwrap_or("object"))),
            namespace: object.namespace.clone(),
            ..ObjectMeta::default()
        },
        involved_object: object,
        reason: Some(reason.to_owned()),
        message: Some(message),
        type_: Some("Normal".into()),
        source: Some(EventSource {
            component: Some(component.to_owned()),
            host: None,
        }),
        reporting_component: Some(component.to_owned()),
        reporting_instance: Some(format!("{component}-cellmesh-local")),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    }
}

/// Writes the event in the background.
pub fn record(client: &kube::Client, event: Event) {
    let Some(ns) = event.metadata.namespace.clone() else {
        return;
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    tokio::spawn(async move {
        if let Err(err) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(%err, reason = ?event.reason, "cannot record an event");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_object_and_reason() {
        let meta = ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            uid: Some("u".into()),
            ..ObjectMeta::default()
        };
        let e = normal(
            "deployment-controller",
            reference("apps/v1", "Deployment", &meta),
            "ScalingReplicaSet",
            "Scaled up replica set web-abc from 0 to 3".into(),
        );
        assert_eq!(e.metadata.generate_name.as_deref(), Some("web."));
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Deployment"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("u"));
        assert_eq!(
            e.source.unwrap().component.as_deref(),
            Some("deployment-controller")
        );
        assert_eq!(e.type_.as_deref(), Some("Normal"));
    }
}
