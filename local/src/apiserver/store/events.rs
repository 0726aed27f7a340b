//! The watch event log: a bounded window of the most recent changes, in resourceVersion
//! order, from which watchers resume.
//!
//! A watcher asking for changes after a version older than the window gets `410 Gone`
//! (it must relist), exactly as with etcd compaction in Kubernetes. After a restart the
//! window starts empty at the stored resourceVersion: a client that saw that version (for
//! example through a bookmark) resumes seamlessly, an older one relists.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    /// Storage key of the resource type (`apps/deployments`).
    pub resource: Arc<str>,
    pub kind: EventType,
    /// The object after the change (for deletes: its last state).
    pub object: Arc<Value>,
    /// The object before the change, so watchers with selectors can tell an object
    /// leaving their selection (sent as DELETED) from one entering it (ADDED).
    pub previous: Option<Arc<Value>>,
    /// The event's watch line as most watchers send it, serialised once by the first
    /// watcher that needs it and shared by the rest (`watch` owns the format).
    pub wire: Arc<OnceLock<Bytes>>,
}

/// Why events could not be read from a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub requested: u64,
    /// The oldest version a watch can still start from.
    pub oldest: u64,
}

pub struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
    /// Every event with `rv <= compacted` is gone from the window.
    compacted: u64,
}

impl EventLog {
    /// An empty window whose history before `start_rv` is unavailable.
    pub fn new(capacity: usize, start_rv: u64) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(65_536)),
            capacity: capacity.max(1),
            compacted: start_rv,
        }
    }

    pub fn push(&mut self, event: Event) {
        if self.events.len() == self.capacity
            && let Some(old) = self.events.pop_front()
        {
            self.compacted = old.rv;
        }
        self.events.push_back(event);
    }

    /// The events of `resource` with `rv > after`, or `Expired` when the window no longer
    /// reaches back to `after`.
    pub fn since(&self, resource: &str, after: u64) -> Result<Vec<Event>, Expired> {
        if after < self.compacted {
            return Err(Expired {
                requested: after,
                oldest: self.compacted,
            });
        }
        let start = self.events.partition_point(|e| e.rv <= after);
        Ok(self
            .events
            .range(start..)
            .filter(|e| &*e.resource == resource)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(rv: u64, resource: &str) -> Event {
        Event {
            rv,
            resource: resource.into(),
            kind: EventType::Added,
            object: Arc::new(json!({ "rv": rv })),
            previous: None,
            wire: Arc::default(),
        }
    }

    #[test]
    fn since_returns_newer_events_of_one_resource() {
        let mut log = EventLog::new(10, 0);
        log.push(event(1, "/pods"));
        log.push(event(2, "/configmaps"));
        log.push(event(3, "/pods"));
        let rvs: Vec<u64> = log
            .since("/pods", 1)
            .expect("in window")
            .iter()
            .map(|e| e.rv)
            .collect();
        assert_eq!(rvs, vec![3]);
        assert_eq!(log.since("/pods", 0).expect("in window").len(), 2);
        assert!(log.since("/pods", 3).expect("in window").is_empty());
    }

    #[test]
    fn versions_older_than_the_window_expire() {
        let mut log = EventLog::new(2, 0);
        for rv in 1..=4 {
            log.push(event(rv, "/pods"));
        }
        // Window holds 3 and 4: resuming after 2 is fine, after 1 lost event 2.
        assert_eq!(log.since("/pods", 2).expect("in window").len(), 2);
        assert_eq!(
            log.since("/pods", 1).unwrap_err(),
            Expired {
                requested: 1,
                oldest: 2
            }
        );
    }

    #[test]
    fn a_restarted_log_resumes_only_from_its_start_version() {
        let log = EventLog::new(10, 50);
        assert!(log.since("/pods", 50).expect("at start").is_empty());
        assert!(log.since("/pods", 49).is_err());
    }
}
