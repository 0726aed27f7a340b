//! The garbage collector: deletes objects whose owners are gone, and carries out the
//! foreground and orphan propagation policies, as Kubernetes' garbage collector does.
//!
//! Contract (the Kubernetes semantics, uid-based, for every served resource including
//! custom resources; events excepted):
//! - an object all of whose owners are gone (no object with the owner reference's uid)
//!   is deleted, with the propagation policy its own finalizers ask for (background by
//!   default); references to vanished owners are removed from objects that keep a live owner;
//! - an owner being deleted with the `foregroundDeletion` finalizer gets its dependents
//!   deleted (with `Foreground` when they have dependents themselves); the finalizer is
//!   removed once no dependent with `blockOwnerDeletion: true` exists any more;
//! - an owner being deleted with the `orphan` finalizer has the references to it removed
//!   from its dependents, then the finalizer removed.
//!
//! The graph of all objects' metadata is kept from metadata watches of every discovered
//! resource (rediscovered when CustomResourceDefinitions change); [`plan`] decides on the
//! graph alone (pure), and every deletion because an owner is absent is confirmed with a
//! live read of the owner first, so a lagging watch never deletes a live object's dependents.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::util::{self, Served};

/// Set on owners deleted with `propagationPolicy=Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";
/// Set on owners deleted with `propagationPolicy=Orphan`.
pub const ORPHAN: &str = "orphan";

/// One object of the graph: its identity and the metadata the collector decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub served: Arc<Served>,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub owners: Vec<OwnerReference>,
    pub finalizers: Vec<String>,
    pub deleting: bool,
}

impl Node {
    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    fn deleting_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FOREGROUND)
    }

    fn orphaning(&self) -> bool {
        self.deleting && self.has_finalizer(ORPHAN)
    }
}

/// What the collector does to one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Delete `uid` with `policy`; `dangling` owner references must be confirmed absent first.
    Delete {
        uid: String,
        policy: &'static str,
        dangling: Vec<OwnerReference>,
    },
    /// Replace the owner references of `uid` by `keep`; `dangling` ones must be confirmed
    /// absent first.
    SetOwners {
        uid: String,
        keep: Vec<OwnerReference>,
        dangling: Vec<OwnerReference>,
    },
    /// Replace the finalizers of `uid` by `keep` (a propagation finalizer is done).
    SetFinalizers { uid: String, keep: Vec<String> },
}

impl Action {
    pub fn uid(&self) -> &str {
        match self {
            Action::Delete { uid, .. }
            | Action::SetOwners { uid, .. }
            | Action::SetFinalizers { uid, .. } => uid,
        }
    }
}

/// All objects by uid.
pub type Graph = HashMap<String, Node>;

/// Decides what to do with the graph as it stands (Kubernetes' `attemptToDeleteItem`,
/// `processDeletingDependentsItem` and `orphanDependents`).
pub fn plan(graph: &Graph) -> Vec<Action> {
    let mut dependents: HashMap<&str, Vec<&Node>> = HashMap::new();
    for node in graph.values() {
        for owner in &node.owners {
            dependents.entry(owner.uid.as_str()).or_default().push(node);
        }
    }
    let mut actions = Vec::new();
    // Most objects neither have owners nor are being deleted with a propagation
    // finalizer: skip them cheaply (the graph holds every object of the cluster).
    let mut nodes: Vec<&Node> = graph
        .values()
        .filter(|n| !n.owners.is_empty() || n.orphaning() || n.deleting_dependents())
        .collect();
    // Deterministic order: tests compare plans, and logs read better.
    nodes.sort_by(|a, b| a.uid.cmp(&b.uid));
    for node in nodes {
        let deps = dependents
            .get(node.uid.as_str())
            .map_or(&[][..], Vec::as_slice);
        if node.orphaning() {
            let referencing: Vec<&&Node> = deps.iter().collect();
            for dep in &referencing {
                actions.push(Action::SetOwners {
                    uid: dep.uid.clone(),
                    keep: without_owner(&dep.owners, &node.uid),
                    dangling: Vec::new(),
                });
            }
            if referencing.is_empty() {
                actions.push(finalizer_done(node, ORPHAN));
            }
            continue;
        }
        if node.deleting_dependents() {
            let blocked = deps.iter().any(|d| {
                d.owners
                    .iter()
                    .any(|o| o.uid == node.uid && o.block_owner_deletion == Some(true))
            });
            if !blocked {
                actions.push(finalizer_done(node, FOREGROUND));
            }
        }
        if node.owners.is_empty() || (node.deleting && !node.deleting_dependents()) {
            continue;
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for owner in &node.owners {
            match graph.get(&owner.uid) {
                None => dangling.push(owner.clone()),
                Some(o) if o.deleting_dependents() => waiting.push(owner.clone()),
                Some(_) => solid.push(owner.clone()),
            }
        }
        if !solid.is_empty() {
            if !dangling.is_empty() || !waiting.is_empty() {
                actions.push(Action::SetOwners {
                    uid: node.uid.clone(),
                    keep: solid,
                    dangling,
                });
            }
            continue;
        }
        if node.deleting {
            // Already being deleted with its dependents first: nothing more to ask.
            continue;
        }
        let policy = if !waiting.is_empty() && !deps.is_empty() {
            "Foreground"
        } else if node.has_finalizer(ORPHAN) {
            "Orphan"
        } else if node.has_finalizer(FOREGROUND) {
            "Foreground"
        } else {
            "Background"
        };
        actions.push(Action::Delete {
            uid: node.uid.clone(),
            policy,
            dangling,
        });
    }
    actions
}

fn without_owner(owners: &[OwnerReference], uid: &str) -> Vec<OwnerReference> {
    owners.iter().filter(|o| o.uid != uid).cloned().collect()
}

fn finalizer_done(node: &Node, finalizer: &str) -> Action {
    Action::SetFinalizers {
        uid: node.uid.clone(),
        keep: node
            .finalizers
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect(),
    }
}

/// How many deletions and patches run at once (Kubernetes' default is 20 workers).
const WORKERS: usize = 16;

/// What the per-resource watch tasks report.
enum Change {
    Upsert(Node),
    Remove(String),
    /// A (re)list of the resource finished: nodes of it not in the set are gone.
    Relisted(String, HashSet<String>),
}

fn node_of(served: &Arc<Served>, meta: kube::api::ObjectMeta) -> Option<Node> {
    Some(Node {
        served: Arc::clone(served),
        uid: meta.uid?,
        name: meta.name.unwrap_or_default(),
        namespace: meta.namespace,
        resource_version: meta.resource_version.unwrap_or_default(),
        owners: meta.owner_references.unwrap_or_default(),
        finalizers: meta.finalizers.unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
    })
}

/// Feeds the graph from a metadata watch of one resource until aborted.
async fn watch_resource(
    client: kube::Client,
    served: Arc<Served>,
    tx: mpsc::UnboundedSender<Change>,
) {
    let api: kube::Api<kube::core::PartialObjectMeta<kube::api::DynamicObject>> =
        kube::Api::all_with(client, &served.resource);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        let change = match event {
            Ok(watcher::Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(obj)) => {
                let Some(node) = node_of(&served, obj.metadata) else {
                    continue;
                };
                listing.insert(node.uid.clone());
                Change::Upsert(node)
            }
            Ok(watcher::Event::InitDone) => {
                Change::Relisted(served.key(), std::mem::take(&mut listing))
            }
            Ok(watcher::Event::Apply(obj)) => match node_of(&served, obj.metadata) {
                Some(node) => Change::Upsert(node),
                None => continue,
            },
            Ok(watcher::Event::Delete(obj)) => match obj.metadata.uid {
                Some(uid) => Change::Remove(uid),
                None => continue,
            },
            Err(err) => {
                tracing::debug!(resource = %served.key(), %err, "garbage collector watch error (retrying)");
                continue;
            }
        };
        if tx.send(change).is_err() {
            return;
        }
    }
}

/// The watches currently running, by resource key.
struct Watches {
    running: HashMap<String, (Arc<Served>, tokio::task::JoinHandle<()>)>,
}

impl Watches {
    /// Starts watches for newly served resources and stops those no longer served
    /// (dropping their nodes from the graph).
    async fn sync(
        &mut self,
        client: &kube::Client,
        tx: &mpsc::UnboundedSender<Change>,
        graph: &mut Graph,
    ) {
        let served = match util::discover(client).await {
            Ok(served) => served,
            Err(err) => {
                tracing::warn!(%err, "garbage collector: discovery failed; keeping the current watches");
                return;
            }
        };
        let keys: HashSet<String> = served.iter().map(Served::key).collect();
        self.running.retain(|key, (_, task)| {
            let keep = keys.contains(key);
            if !keep {
                task.abort();
                graph.retain(|_, n| n.served.key() != *key);
            }
            keep
        });
        for s in served {
            let key = s.key();
            let changed = self.running.get(&key).is_none_or(|(old, _)| **old != s);
            if changed {
                if let Some((_, task)) = self.running.remove(&key) {
                    task.abort();
                }
                let s = Arc::new(s);
                let task = tokio::spawn(watch_resource(client.clone(), Arc::clone(&s), tx.clone()));
                self.running.insert(key, (s, task));
            }
        }
    }

    /// The served resource of an owner reference (`apiVersion` group + `kind`).
    fn resolve(&self, owner: &OwnerReference) -> Option<Arc<Served>> {
        let group = owner.api_version.rsplit_once('/').map_or("", |(g, _)| g);
        self.running
            .values()
            .map(|(s, _)| s)
            .find(|s| s.resource.group == group && s.resource.kind == owner.kind)
            .cloned()
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

/// Whether the owner a reference names is really gone (read live: the graph may lag).
async fn confirmed_absent(
    client: &kube::Client,
    watches: &Watches,
    namespace: Option<&str>,
    owner: &OwnerReference,
) -> bool {
    let Some(served) = watches.resolve(owner) else {
        // Kubernetes keeps dependents of owners whose kind it cannot resolve.
        return false;
    };
    if served.namespaced && namespace.is_none() {
        // A cluster-scoped dependent cannot have a namespaced owner: Kubernetes treats the
        // reference as unresolvable and never collects the dependent.
        return false;
    }
    match served.api(client, namespace).get_opt(&owner.name).await {
        Ok(None) => true,
        Ok(Some(live)) => live.metadata.uid.as_deref() != Some(owner.uid.as_str()),
        Err(_) => false,
    }
}

/// The outcome of carrying out one action.
enum Done {
    Applied,
    /// Not now (an owner still exists, or the object changed): retry later.
    Retry,
}

async fn execute(client: &kube::Client, watches: &Watches, node: &Node, action: &Action) -> Done {
    let namespace = node.namespace.as_deref();
    let dangling = match action {
        Action::Delete { dangling, .. } | Action::SetOwners { dangling, .. } => dangling.as_slice(),
        Action::SetFinalizers { .. } => &[],
    };
    for owner in dangling {
        if !confirmed_absent(client, watches, namespace, owner).await {
            return Done::Retry;
        }
    }
    let api = node.served.api(client, namespace);
    let result = match action {
        Action::Delete { policy, .. } => {
            let params = DeleteParams {
                propagation_policy: Some(match *policy {
                    "Foreground" => PropagationPolicy::Foreground,
                    "Orphan" => PropagationPolicy::Orphan,
                    _ => PropagationPolicy::Background,
                }),
                preconditions: Some(Preconditions {
                    uid: Some(node.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            tracing::info!(object = %format!("{}/{}", node.served.key(), node.name), namespace, policy, "garbage collector deletes a dependent");
            api.delete(&node.name, &params).await.map(|_| ())
        }
        Action::SetOwners { keep, .. } => {
            let patch = json!({"metadata": {"ownerReferences": keep, "resourceVersion": node.resource_version, "uid": node.uid}});
            api.patch_metadata(&node.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        }
        Action::SetFinalizers { keep, .. } => {
            let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": node.resource_version, "uid": node.uid}});
            api.patch_metadata(&node.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => Done::Applied,
        Err(err) if util::is_not_found(&err) => Done::Applied,
        Err(err) => {
            if !util::is_stale(&err) {
                tracing::warn!(object = %node.name, %err, "garbage collector action failed; retrying");
            }
            Done::Retry
        }
    }
}

/// Runs the garbage collector until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut graph = Graph::new();
    let mut watches = Watches {
        running: HashMap::new(),
    };
    watches.sync(&client, &tx, &mut graph).await;
    // Actions already taken, by uid and the resourceVersion they were taken at: the same
    // action is not repeated until the object changes.
    let mut acted: HashMap<String, String> = HashMap::new();
    let mut retry = false;
    let mut rediscover = tokio::time::interval(Duration::from_secs(30));
    rediscover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut crds_changed = false;
        let mut apply = |change: Change, graph: &mut Graph| match change {
            Change::Upsert(node) => {
                crds_changed |= node.served.resource.plural == "customresourcedefinitions";
                graph.insert(node.uid.clone(), node);
            }
            Change::Remove(uid) => {
                if let Some(node) = graph.remove(&uid) {
                    crds_changed |= node.served.resource.plural == "customresourcedefinitions";
                }
            }
            Change::Relisted(key, live) => {
                graph.retain(|uid, n| n.served.key() != key || live.contains(uid));
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            change = rx.recv() => {
                let Some(change) = change else { return Ok(()) };
                apply(change, &mut graph);
                // Coalesce bursts (a rollout, a namespace sweep, a bulk load) into one pass.
                tokio::time::sleep(Duration::from_millis(10)).await;
                while let Ok(change) = rx.try_recv() {
                    apply(change, &mut graph);
                }
            }
            () = tokio::time::sleep(Duration::from_millis(500)), if retry => {}
            _ = rediscover.tick() => crds_changed = true,
        }
        if crds_changed {
            watches.sync(&client, &tx, &mut graph).await;
        }
        retry = false;
        acted.retain(|uid, _| graph.contains_key(uid));
        let todo: Vec<(&Node, Action)> = plan(&graph)
            .into_iter()
            .filter_map(|action| Some((graph.get(action.uid())?, action)))
            .filter(|(node, _)| acted.get(&node.uid) != Some(&node.resource_version))
            .collect();
        // Like Kubernetes' collector workers: independent objects are handled concurrently.
        // (The futures are built eagerly: a stream closure returning borrowing futures
        // trips the compiler's `Send` inference for the spawned task.)
        let work: Vec<_> = todo
            .into_iter()
            .map(|(node, action)| {
                let (client, watches) = (&client, &watches);
                Box::pin(async move { (node, execute(client, watches, node, &action).await) })
            })
            .collect();
        let outcomes: Vec<(&Node, Done)> = futures::stream::iter(work)
            .buffer_unordered(WORKERS)
            .collect()
            .await;
        for (node, done) in outcomes {
            match done {
                Done::Applied => {
                    acted.insert(node.uid.clone(), node.resource_version.clone());
                }
                Done::Retry => retry = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(kind: &str) -> Arc<Served> {
        Arc::new(Served {
            resource: kube::discovery::ApiResource {
                group: "apps".into(),
                version: "v1".into(),
                api_version: "apps/v1".into(),
                kind: kind.into(),
                plural: format!("{}s", kind.to_lowercase()),
            },
            namespaced: true,
            deletecollection: true,
        })
    }

    fn node(uid: &str, owners: &[(&str, bool)]) -> Node {
        Node {
            served: served("Thing"),
            namespace: Some("ns".into()),
            name: format!("n-{uid}"),
            uid: uid.into(),
            resource_version: "1".into(),
            owners: owners
                .iter()
                .map(|(o, block)| OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Thing".into(),
                    name: format!("n-{o}"),
                    uid: (*o).into(),
                    controller: Some(true),
                    block_owner_deletion: Some(*block),
                })
                .collect(),
            finalizers: Vec::new(),
            deleting: false,
        }
    }

    fn deleting(mut n: Node, finalizer: &str) -> Node {
        n.deleting = true;
        n.finalizers = vec![finalizer.into()];
        n
    }

    fn graph(nodes: Vec<Node>) -> Graph {
        nodes.into_iter().map(|n| (n.uid.clone(), n)).collect()
    }

    #[test]
    fn dependents_of_vanished_owners_are_deleted_in_the_background() {
        let g = graph(vec![
            node("rs", &[("gone", true)]),
            node("pod", &[("rs", true)]),
        ]);
        let actions = plan(&g);
        assert_eq!(actions.len(), 1, "{actions:?}");
        match &actions[0] {
            Action::Delete {
                uid,
                policy,
                dangling,
            } => {
                assert_eq!((uid.as_str(), *policy), ("rs", "Background"));
                assert_eq!(
                    dangling[0].uid, "gone",
                    "the absence is confirmed before deleting"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn objects_with_a_live_owner_only_lose_the_dangling_reference() {
        let g = graph(vec![
            node("a", &[]),
            node("dep", &[("a", false), ("gone", false)]),
        ]);
        let actions = plan(&g);
        assert_eq!(actions.len(), 1);
        let Action::SetOwners {
            uid,
            keep,
            dangling,
        } = &actions[0]
        else {
            panic!("{actions:?}")
        };
        assert_eq!(uid, "dep");
        assert_eq!(
            keep.iter().map(|o| o.uid.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(dangling.len(), 1);
    }

    #[test]
    fn foreground_deletion_deletes_dependents_then_drops_the_finalizer() {
        let owner = deleting(node("deploy", &[]), FOREGROUND);
        let g = graph(vec![
            owner.clone(),
            node("rs", &[("deploy", true)]),
            node("pod", &[("rs", true)]),
        ]);
        let actions = plan(&g);
        // The RS has dependents of its own: it is deleted in the foreground too; the owner
        // keeps its finalizer while a blocking dependent exists.
        assert_eq!(
            actions,
            vec![Action::Delete {
                uid: "rs".into(),
                policy: "Foreground",
                dangling: vec![]
            }]
        );
        // The RS is being deleted in the foreground: it still blocks its owner, and its own
        // pod is deleted.
        let g = graph(vec![
            owner.clone(),
            deleting(node("rs", &[("deploy", true)]), FOREGROUND),
            node("pod", &[("rs", true)]),
        ]);
        let actions = plan(&g);
        assert_eq!(
            actions,
            vec![Action::Delete {
                uid: "pod".into(),
                policy: "Background",
                dangling: vec![]
            }]
        );
        // Once only non-blocking dependents remain, the finalizer goes.
        let g = graph(vec![owner, node("cm", &[("deploy", false)])]);
        let actions = plan(&g);
        assert!(
            actions.contains(&Action::SetFinalizers {
                uid: "deploy".into(),
                keep: vec![]
            }),
            "{actions:?}"
        );
        assert!(actions.contains(&Action::Delete {
            uid: "cm".into(),
            policy: "Background",
            dangling: vec![]
        }));
    }

    #[test]
    fn orphaning_strips_references_then_the_finalizer() {
        let mut owner = deleting(node("rs", &[]), ORPHAN);
        owner.finalizers.push("example.com/keep".into());
        let g = graph(vec![
            owner.clone(),
            node("pod", &[("rs", true), ("other", false)]),
            node("other", &[]),
        ]);
        let actions = plan(&g);
        assert_eq!(actions.len(), 1, "the pod is not deleted: {actions:?}");
        let Action::SetOwners { uid, keep, .. } = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(uid, "pod");
        assert_eq!(
            keep.iter().map(|o| o.uid.as_str()).collect::<Vec<_>>(),
            ["other"]
        );
        let g = graph(vec![owner, node("pod", &[])]);
        assert_eq!(
            plan(&g),
            vec![Action::SetFinalizers {
                uid: "rs".into(),
                keep: vec!["example.com/keep".into()]
            }],
            "other finalizers stay"
        );
    }

    #[test]
    fn objects_being_deleted_are_left_alone() {
        let g = graph(vec![deleting(
            node("pod", &[("gone", true)]),
            "example.com/x",
        )]);
        assert!(plan(&g).is_empty());
    }
}
