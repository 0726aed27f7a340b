//! Object storage: durable (SQLite, group commit), with an in-memory copy of every object
//! for reads and a window of recent events for watches.
//!
//! Contract:
//! - Every write goes through [`Store::mutate`]: a closure that sees the current object and
//!   decides what to store. Closures run one at a time on the writer thread in the order
//!   they arrive, so preconditions (resourceVersion, uid, "must not exist") are checked
//!   against exactly the state the write replaces.
//! - The writer commits all writes waiting at the moment in one transaction (one fsync) and
//!   only then publishes them to readers and watchers and answers the callers: a write is
//!   durable before it is acknowledged, and nobody ever sees an uncommitted object.
//! - resourceVersion is one global counter, incremented per changed object, persisted with
//!   each batch, so it keeps increasing across restarts.

mod events;
mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio::sync::{oneshot, watch};

use events::EventLog;
pub use events::{Event, EventType, Expired};
use sqlite::{Database, RowChange};

use super::error::ApiError;

/// What a mutation decided to do with the object it was shown.
#[derive(Debug)]
pub enum Outcome {
    /// Store this object (create or replace); its `metadata.resourceVersion` is set by the store.
    Put(Value),
    /// Remove the object; the value is its final state, sent with the DELETED event.
    Delete(Value),
    /// Nothing changes; answer with this (current) object and no new version.
    Unchanged(Value),
}

/// The closure of a write: sees the current object (if any) and decides.
pub type Mutation = Box<dyn FnOnce(Option<&Value>) -> Result<Outcome, ApiError> + Send>;

/// The result of a committed write: the stored (or deleted) object with its version.
#[derive(Debug, Clone)]
pub struct Committed {
    pub object: Arc<Value>,
    /// False when the mutation returned [`Outcome::Unchanged`].
    pub changed: bool,
    pub deleted: bool,
}

struct Job {
    resource: Arc<str>,
    key: String,
    mutation: Mutation,
    reply: oneshot::Sender<Result<Committed, ApiError>>,
}

type Objects = BTreeMap<String, Arc<Value>>;

#[derive(Default)]
struct Cache {
    resource_version: u64,
    /// resource storage key → object key (`ns/name` or `name`) → object.
    objects: HashMap<Arc<str>, Objects>,
}

struct Shared {
    cache: RwLock<Cache>,
    log: Mutex<EventLog>,
    /// The latest committed resourceVersion; watchers wait on it for news.
    latest: watch::Sender<u64>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::Sender<Job>,
}

/// The object key within a resource: `namespace/name` or `name`.
pub fn object_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// A consistent read of some objects with the version they were read at.
pub struct Snapshot {
    pub resource_version: u64,
    pub items: Vec<(String, Arc<Value>)>,
    /// Whether objects beyond `limit` remain.
    pub more: bool,
}

impl Store {
    /// Opens (or creates) the database at `path` and loads every object into memory.
    pub fn open(path: &Path, event_window: usize) -> anyhow::Result<Self> {
        let db = Database::open(path)?;
        let loaded = db.load()?;
        let mut cache = Cache {
            resource_version: loaded.resource_version,
            objects: HashMap::new(),
        };
        for (resource, key, value) in loaded.objects {
            cache
                .objects
                .entry(Arc::from(resource.as_str()))
                .or_default()
                .insert(key, Arc::new(value));
        }
        let (latest, _) = watch::channel(loaded.resource_version);
        let shared = Arc::new(Shared {
            cache: RwLock::new(cache),
            log: Mutex::new(EventLog::new(event_window, loaded.resource_version)),
            latest,
        });
        let (jobs, queue) = std::sync::mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(db, &writer_shared, &queue))?;
        Ok(Self { shared, jobs })
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        // Writers only swap whole entries under the lock, so even after a panic elsewhere
        // the cache is consistent.
        self.shared.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn resource_version(&self) -> u64 {
        self.cache().resource_version
    }

    pub fn get(&self, resource: &str, key: &str) -> Option<Arc<Value>> {
        self.cache()
            .objects
            .get(resource)
            .and_then(|objects| objects.get(key))
            .cloned()
    }

    /// Objects of `resource` in key order, optionally within one namespace, starting after
    /// `after` (a continue position), keeping those `keep` accepts, at most `limit` of them.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
        keep: &dyn Fn(&Value) -> bool,
    ) -> Snapshot {
        let cache = self.cache();
        let mut items = Vec::new();
        let mut more = false;
        if let Some(objects) = cache.objects.get(resource) {
            let prefix = namespace.map(|ns| format!("{ns}/"));
            let start = match (after, &prefix) {
                (Some(after), _) => Bound::Excluded(after.to_owned()),
                (None, Some(prefix)) => Bound::Included(prefix.clone()),
                (None, None) => Bound::Unbounded,
            };
            for (key, object) in objects.range((start, Bound::Unbounded)) {
                if let Some(prefix) = &prefix
                    && !key.starts_with(prefix.as_str())
                {
                    break;
                }
                if !keep(object) {
                    continue;
                }
                if limit.is_some_and(|limit| items.len() >= limit) {
                    more = true;
                    break;
                }
                items.push((key.clone(), Arc::clone(object)));
            }
        }
        Snapshot {
            resource_version: cache.resource_version,
            items,
            more,
        }
    }

    /// Counts objects of a resource (all namespaces).
    pub fn count(&self, resource: &str) -> usize {
        self.cache().objects.get(resource).map_or(0, BTreeMap::len)
    }

    /// Applies one write; resolves once it is durable (or rejected).
    pub async fn mutate(
        &self,
        resource: &str,
        key: &str,
        mutation: Mutation,
    ) -> Result<Committed, ApiError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            resource: Arc::from(resource),
            key: key.to_owned(),
            mutation,
            reply,
        };
        self.jobs
            .send(job)
            .map_err(|_| ApiError::service_unavailable("storage is shutting down"))?;
        answer
            .await
            .map_err(|_| ApiError::internal("storage writer stopped before answering"))?
    }

    /// Evaluates a mutation without storing it (`dryRun=All`).
    pub fn dry_run(
        &self,
        resource: &str,
        key: &str,
        mutation: Mutation,
    ) -> Result<Committed, ApiError> {
        let current = self.get(resource, key);
        let outcome = mutation(current.as_deref())?;
        Ok(match outcome {
            Outcome::Put(value) => Committed {
                object: Arc::new(value),
                changed: true,
                deleted: false,
            },
            Outcome::Delete(value) => Committed {
                object: Arc::new(value),
                changed: true,
                deleted: true,
            },
            Outcome::Unchanged(value) => Committed {
                object: Arc::new(value),
                changed: false,
                deleted: false,
            },
        })
    }

    /// Events of `resource` after `rv`, or `Expired` when the window lost them.
    pub fn events_since(&self, resource: &str, rv: u64) -> Result<Vec<Event>, Expired> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .since(resource, rv)
    }

    /// A receiver that changes whenever new versions are committed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.latest.subscribe()
    }
}

fn set_resource_version(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// One object changed by a batch.
struct Change {
    resource: Arc<str>,
    key: String,
    /// The new object (for deletes: its final state).
    value: Arc<Value>,
    kind: EventType,
    rv: u64,
}

/// A decided write waiting for the batch's commit.
struct Pending {
    reply: oneshot::Sender<Result<Committed, ApiError>>,
    result: Result<Committed, ApiError>,
    change: Option<Change>,
    previous: Option<Arc<Value>>,
}

fn writer_loop(mut db: Database, shared: &Shared, queue: &std::sync::mpsc::Receiver<Job>) {
    const MAX_BATCH: usize = 1024;
    let mut rv = *shared.latest.borrow();
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let batch_start_rv = rv;
        // Later jobs of the batch must see earlier ones' effects.
        let mut overlay: HashMap<(Arc<str>, String), Option<Arc<Value>>> = HashMap::new();
        let mut pending = Vec::with_capacity(jobs.len());
        for job in jobs {
            let slot = (Arc::clone(&job.resource), job.key.clone());
            let current = match overlay.get(&slot) {
                Some(value) => value.clone(),
                None => shared
                    .cache
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .objects
                    .get(&job.resource)
                    .and_then(|objects| objects.get(&job.key))
                    .cloned(),
            };
            // A panicking mutation must not take the writer (and so the server) down.
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (job.mutation)(current.as_deref())
            }))
            .unwrap_or_else(|_| Err(ApiError::internal("the write handler panicked")));
            let (result, change) = match decided {
                Err(err) => (Err(err), None),
                Ok(Outcome::Unchanged(value)) => (
                    Ok(Committed {
                        object: Arc::new(value),
                        changed: false,
                        deleted: false,
                    }),
                    None,
                ),
                Ok(Outcome::Put(mut value)) => {
                    rv += 1;
                    set_resource_version(&mut value, rv);
                    let value = Arc::new(value);
                    overlay.insert(slot.clone(), Some(Arc::clone(&value)));
                    let kind = if current.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    (
                        Ok(Committed {
                            object: Arc::clone(&value),
                            changed: true,
                            deleted: false,
                        }),
                        Some(Change {
                            resource: slot.0,
                            key: slot.1,
                            value,
                            kind,
                            rv,
                        }),
                    )
                }
                Ok(Outcome::Delete(mut value)) => {
                    rv += 1;
                    set_resource_version(&mut value, rv);
                    let value = Arc::new(value);
                    overlay.insert(slot.clone(), None);
                    (
                        Ok(Committed {
                            object: Arc::clone(&value),
                            changed: true,
                            deleted: true,
                        }),
                        Some(Change {
                            resource: slot.0,
                            key: slot.1,
                            value,
                            kind: EventType::Deleted,
                            rv,
                        }),
                    )
                }
            };
            pending.push(Pending {
                reply: job.reply,
                result,
                change,
                previous: current,
            });
        }

        if rv != batch_start_rv {
            let rows: Vec<RowChange<'_>> = pending
                .iter()
                .filter_map(|p| p.change.as_ref())
                .map(|c| match c.kind {
                    EventType::Deleted => RowChange::Delete {
                        resource: &c.resource,
                        key: &c.key,
                    },
                    EventType::Added | EventType::Modified => RowChange::Put {
                        resource: &c.resource,
                        key: &c.key,
                        rv: c.rv,
                        value: &c.value,
                    },
                })
                .collect();
            if let Err(err) = db.commit(&rows, rv) {
                tracing::error!(error = %err, "storage commit failed; the batch is rejected");
                rv = batch_start_rv;
                for p in pending {
                    let _ = p.reply.send(Err(ApiError::internal(format!(
                        "storage commit failed: {err}"
                    ))));
                }
                continue;
            }
            publish(shared, &pending, rv);
        }
        for p in pending {
            // The caller may have gone away (client disconnected): nothing to tell then.
            let _ = p.reply.send(p.result);
        }
    }
}

/// Makes a committed batch visible: cache first, then the event log, then wake watchers.
fn publish(shared: &Shared, pending: &[Pending], rv: u64) {
    {
        let mut cache = shared.cache.write().unwrap_or_else(|e| e.into_inner());
        for p in pending {
            if let Some(c) = &p.change {
                let objects = cache.objects.entry(Arc::clone(&c.resource)).or_default();
                match c.kind {
                    EventType::Deleted => {
                        objects.remove(&c.key);
                    }
                    EventType::Added | EventType::Modified => {
                        objects.insert(c.key.clone(), Arc::clone(&c.value));
                    }
                }
            }
        }
        cache.resource_version = rv;
    }
    {
        let mut log = shared.log.lock().unwrap_or_else(|e| e.into_inner());
        for p in pending {
            if let Some(c) = &p.change {
                log.push(Event {
                    rv: c.rv,
                    resource: Arc::clone(&c.resource),
                    kind: c.kind,
                    object: Arc::clone(&c.value),
                    previous: p.previous.clone(),
                    wire: Arc::default(),
                });
            }
        }
    }
    shared.latest.send_replace(rv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(name: &str) -> Mutation {
        let name = name.to_owned();
        Box::new(move |current| match current {
            Some(_) => Err(ApiError::already_exists("", "configmaps", &name)),
            None => Ok(Outcome::Put(json!({"metadata": {"name": name}}))),
        })
    }

    fn rv_of(object: &Value) -> u64 {
        object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("resourceVersion set")
    }

    #[tokio::test]
    async fn writes_are_versioned_readable_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let last_rv;
        {
            let store = Store::open(&path, 100).unwrap();
            let a = store
                .mutate("/configmaps", "ns/a", create("a"))
                .await
                .unwrap();
            let b = store
                .mutate("/configmaps", "ns/b", create("b"))
                .await
                .unwrap();
            assert!(rv_of(&b.object) > rv_of(&a.object));
            let again = store.mutate("/configmaps", "ns/a", create("a")).await;
            assert_eq!(again.unwrap_err().reason, "AlreadyExists");
            let deleted = store
                .mutate(
                    "/configmaps",
                    "ns/b",
                    Box::new(|cur| Ok(Outcome::Delete(cur.cloned().unwrap()))),
                )
                .await
                .unwrap();
            assert!(deleted.deleted);
            last_rv = rv_of(&deleted.object);
            assert_eq!(store.resource_version(), last_rv);
            let listed = store.list("/configmaps", Some("ns"), None, None, &|_| true);
            assert_eq!(listed.items.len(), 1);
        }
        let store = Store::open(&path, 100).unwrap();
        // The delete's version counts: versions never go back after a restart.
        assert_eq!(store.resource_version(), last_rv);
        assert!(store.get("/configmaps", "ns/a").is_some());
        assert!(store.get("/configmaps", "ns/b").is_none());
        let c = store
            .mutate("/configmaps", "ns/c", create("c"))
            .await
            .unwrap();
        assert!(rv_of(&c.object) > last_rv);
    }

    #[tokio::test]
    async fn concurrent_creates_of_one_name_have_exactly_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), 100).unwrap();
        let attempts = (0..16).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.mutate("/configmaps", "ns/x", create("x")).await })
        });
        let results = futures::future::join_all(attempts).await;
        let wins = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(wins, 1);
    }

    #[tokio::test]
    async fn list_pages_by_key_within_a_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), 100).unwrap();
        for key in ["a/1", "a/2", "a/3", "b/1"] {
            let name = key.rsplit('/').next().unwrap();
            store
                .mutate("/configmaps", key, create(name))
                .await
                .unwrap();
        }
        let page = store.list("/configmaps", Some("a"), None, Some(2), &|_| true);
        let keys: Vec<_> = page.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a/1", "a/2"]);
        assert!(page.more);
        let rest = store.list("/configmaps", Some("a"), Some("a/2"), Some(2), &|_| true);
        let keys: Vec<_> = rest.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a/3"]);
        assert!(!rest.more);
        assert_eq!(
            store
                .list("/configmaps", None, None, None, &|_| true)
                .items
                .len(),
            4
        );
    }

    #[tokio::test]
    async fn watchers_see_committed_events_and_dry_runs_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), 100).unwrap();
        let start = store.resource_version();
        let mut news = store.subscribe();
        let dry = store.dry_run("/configmaps", "ns/d", create("d")).unwrap();
        assert!(dry.changed);
        assert!(store.get("/configmaps", "ns/d").is_none());
        store
            .mutate("/configmaps", "ns/a", create("a"))
            .await
            .unwrap();
        news.changed().await.unwrap();
        let events = store.events_since("/configmaps", start).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventType::Added);
        assert!(store.events_since("/pods", start).unwrap().is_empty());
    }
}
