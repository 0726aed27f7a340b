//! Watches: a chunked stream of `{"type":…,"object":…}` lines.
//!
//! Start points follow Kubernetes: no resourceVersion (or "0") → synthetic ADDED events for
//! the current state, then changes; a version → every change after it, or one ERROR event
//! with a 410 `Expired` Status when the event window no longer reaches back that far;
//! `sendInitialEvents=true` → the current state, then a BOOKMARK annotated
//! `k8s.io/initial-events-end`, then changes. With `allowWatchBookmarks=true` a BOOKMARK
//! carrying the latest delivered version is sent periodically, so a client can resume from
//! it (also after a server restart). Selectors apply to the old and new object of each
//! change: an object leaving the selection is sent as DELETED, one entering as ADDED.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::machinery::Filter;
use super::registry::ResourceInfo;
use super::rest::{self, Request, is_true};
use super::store::{EventType, Store};
use super::table;

/// Watches end after this long unless the client asks for less (`timeoutSeconds`);
/// clients reconnect from their last version.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Synthetic ADDED events are sent in chunks of about this many bytes.
const INITIAL_CHUNK: usize = 64 * 1024;

struct Watch {
    store: Store,
    info: ResourceInfo,
    namespace: Option<String>,
    filter: Filter,
    start: Start,
    bookmarks: bool,
    bookmark_interval: Duration,
    timeout: Duration,
    as_table: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Synthetic ADDED events of the current state first; `end_bookmark` marks their end.
    Initial { end_bookmark: bool },
    /// Changes after this version.
    After(u64),
}

fn start_of(query: &rest::Query, current: u64) -> Result<Start, ApiError> {
    let rv = match query.resource_version.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v:?}")))?,
        ),
    };
    match query.send_initial_events.as_deref() {
        Some("true") => Ok(Start::Initial { end_bookmark: true }),
        Some("false") => Ok(Start::After(rv.unwrap_or(current))),
        _ => match rv {
            None | Some(0) => Ok(Start::Initial {
                end_bookmark: false,
            }),
            Some(rv) => Ok(Start::After(rv)),
        },
    }
}

pub fn serve(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let filter = Filter::parse(
        info,
        req.query.label_selector.as_deref(),
        req.query.field_selector.as_deref(),
    )?;
    let timeout = match req
        .query
        .timeout_seconds
        .as_deref()
        .filter(|t| !t.is_empty())
    {
        None => DEFAULT_TIMEOUT,
        Some(t) => Duration::from_secs(t.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid value for timeoutSeconds: {t:?} is not a number"
            ))
        })?),
    };
    let start = start_of(&req.query, req.state.store.resource_version())?;
    let accept = req
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let watch = Watch {
        store: req.state.store.clone(),
        info: info.clone(),
        namespace: req.target.namespace.clone(),
        filter,
        start,
        bookmarks: is_true(req.query.allow_watch_bookmarks.as_deref()),
        bookmark_interval: req.state.config.bookmark_interval,
        timeout,
        as_table: table::wants_table(accept),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    tokio::spawn(run(watch, tx));
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

impl Watch {
    fn in_scope(&self, object: &Value) -> bool {
        let ns_ok = self.namespace.as_deref().is_none_or(|ns| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                == Some(ns)
        });
        ns_ok && self.filter.matches(object)
    }

    /// Whether this watch sends objects exactly as stored, so the serialised line of an
    /// event can be shared with every other such watch (100 watchers, one serialisation).
    fn sends_as_stored(&self) -> bool {
        !self.info.custom && !self.as_table
    }

    fn render(&self, object: &Value) -> Value {
        let mut object = object.clone();
        if self.info.custom
            && let Some(map) = object.as_object_mut()
        {
            map.insert("apiVersion".into(), json!(self.info.api_version()));
        }
        if self.as_table {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            return table::render(
                &self.info,
                &self.info.printer_columns,
                &[&object],
                &rv,
                None,
                None,
            );
        }
        object
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": metadata}),
        )
    }
}

/// Which event (if any) a watcher sees for a change, given its selection.
fn visible(kind: EventType, was_in: bool, is_in: bool) -> Option<&'static str> {
    match (kind, was_in, is_in) {
        (EventType::Added, _, true) => Some("ADDED"),
        (EventType::Modified, true, true) => Some("MODIFIED"),
        (EventType::Modified, false, true) => Some("ADDED"),
        (EventType::Modified, true, false) => Some("DELETED"),
        (EventType::Deleted, _, true) => Some("DELETED"),
        _ => None,
    }
}

async fn run(watch: Watch, tx: mpsc::Sender<Result<Bytes, Infallible>>) {
    let deadline = tokio::time::Instant::now() + watch.timeout;
    let resource = watch.info.storage_key();
    let mut latest = watch.store.subscribe();
    let mut cursor = match watch.start {
        Start::Initial { end_bookmark } => {
            let (rv, objects) = rest::initial_state_of(
                &watch.store,
                &watch.info,
                watch.namespace.as_deref(),
                &watch.filter,
            );
            // The initial state goes out in chunks of about `INITIAL_CHUNK` bytes.
            let mut chunk = BytesMut::new();
            for object in objects {
                chunk.extend_from_slice(&line("ADDED", &watch.render(&object)));
                if chunk.len() >= INITIAL_CHUNK
                    && tx.send(Ok(chunk.split().freeze())).await.is_err()
                {
                    return;
                }
            }
            if end_bookmark {
                chunk.extend_from_slice(&watch.bookmark(rv, true));
            }
            if !chunk.is_empty() && tx.send(Ok(chunk.freeze())).await.is_err() {
                return;
            }
            rv
        }
        Start::After(rv) => rv,
    };
    let mut bookmark_timer = tokio::time::interval_at(
        tokio::time::Instant::now() + watch.bookmark_interval,
        watch.bookmark_interval,
    );
    loop {
        let seen = *latest.borrow_and_update();
        match watch.store.events_since(&resource, cursor) {
            Err(expired) => {
                let status = ApiError::gone(expired.requested, expired.oldest).status();
                let _ = tx.send(Ok(line("ERROR", &status))).await;
                return;
            }
            Ok(events) => {
                // Every event of this wake-up goes out as one chunk: one channel send, one
                // HTTP chunk, one TLS record and one write per watcher instead of one per
                // event, which is what keeps a burst of commits from queueing up behind
                // 100 watchers' writes.
                let mut chunk = BytesMut::new();
                for event in events {
                    let is_in = watch.in_scope(&event.object);
                    let was_in = event.previous.as_deref().is_some_and(|p| watch.in_scope(p));
                    if let Some(kind) = visible(event.kind, was_in, is_in) {
                        if kind == event.kind.as_str() && watch.sends_as_stored() {
                            chunk.extend_from_slice(
                                event.wire.get_or_init(|| line(kind, &event.object)),
                            );
                        } else {
                            chunk.extend_from_slice(&line(kind, &watch.render(&event.object)));
                        }
                    }
                    cursor = cursor.max(event.rv);
                }
                if !chunk.is_empty() && tx.send(Ok(chunk.freeze())).await.is_err() {
                    return;
                }
            }
        }
        // Every event up to `seen` was in the log when it was read (the log is written
        // before the version is announced), so nothing up to it is still pending.
        cursor = cursor.max(seen);
        tokio::select! {
            changed = latest.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = bookmark_timer.tick(), if watch.bookmarks => {
                if tx.send(Ok(watch.bookmark(cursor, false))).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => return,
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_points() {
        let q = |rv: Option<&str>, sie: Option<&str>| rest::Query {
            resource_version: rv.map(Into::into),
            send_initial_events: sie.map(Into::into),
            ..rest::Query::default()
        };
        assert_eq!(
            start_of(&q(None, None), 9).unwrap(),
            Start::Initial {
                end_bookmark: false
            }
        );
        assert_eq!(
            start_of(&q(Some("0"), None), 9).unwrap(),
            Start::Initial {
                end_bookmark: false
            }
        );
        assert_eq!(start_of(&q(Some("5"), None), 9).unwrap(), Start::After(5));
        assert_eq!(
            start_of(&q(Some(""), Some("true")), 9).unwrap(),
            Start::Initial { end_bookmark: true }
        );
        assert_eq!(
            start_of(&q(None, Some("false")), 9).unwrap(),
            Start::After(9)
        );
        assert_eq!(start_of(&q(Some("x"), None), 9).unwrap_err().code, 400);
    }

    #[test]
    fn selection_changes_become_added_and_deleted() {
        assert_eq!(visible(EventType::Modified, false, true), Some("ADDED"));
        assert_eq!(visible(EventType::Modified, true, false), Some("DELETED"));
        assert_eq!(visible(EventType::Modified, true, true), Some("MODIFIED"));
        assert_eq!(visible(EventType::Modified, false, false), None);
        assert_eq!(visible(EventType::Deleted, true, false), None);
        assert_eq!(visible(EventType::Added, false, false), None);
    }
}
