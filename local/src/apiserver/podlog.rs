//! `GET /api/v1/namespaces/<ns>/pods/<name>/log`: container logs read straight from the
//! node agent's files (`<state>/pods/<ns>_<pod>_<uid>/<container>/<restartCount>.log`, CRI
//! format) with `container`, `previous`, `tailLines`, `timestamps`, `sinceSeconds`,
//! `limitBytes` and `follow` (streams new lines until the container is replaced or the pod
//! is gone) — what `kubectl logs [-f] [--previous]` sends.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::path::Target;
use super::rest::is_true;
use crate::node::logs;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    container: Option<String>,
    follow: Option<String>,
    previous: Option<String>,
    tail_lines: Option<String>,
    timestamps: Option<String>,
    since_seconds: Option<String>,
    limit_bytes: Option<String>,
}

fn number(name: &str, value: Option<&str>) -> Result<Option<u64>, ApiError> {
    value
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("{name}: {v:?} is not a non-negative integer"))
            })
        })
        .transpose()
}

/// Picks the container the request means, with Kubernetes' messages when it cannot.
fn container_of(pod: &Value, name: &str, wanted: Option<&str>) -> Result<String, ApiError> {
    let names: Vec<String> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| {
            pod.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let app: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    match wanted.filter(|w| !w.is_empty()) {
        Some(w) if names.iter().any(|n| n == w) => Ok(w.to_owned()),
        Some(w) => Err(ApiError::bad_request(format!(
            "container {w} is not valid for pod {name}"
        ))),
        None if app.len() == 1 => Ok(app[0].to_owned()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            app.join(" ")
        ))),
    }
}

pub async fn serve(
    state: &AppState,
    target: &Target,
    uri: &http::Uri,
) -> Result<Response, ApiError> {
    let query = axum::extract::Query::<LogQuery>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query parameters: {e}")))?
        .0;
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let pod = state
        .store
        .get("/pods", &key)
        .ok_or_else(|| ApiError::not_found("", "pods", &name))?;
    let container = container_of(&pod, &name, query.container.as_deref())?;
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let dir = logs::pod_dir(&state.config.state_dir, &namespace, &name, uid);
    let files = logs::files(&dir, &container);
    let previous = is_true(query.previous.as_deref());
    let chosen = if previous {
        files
            .len()
            .checked_sub(2)
            .map(|i| files[i])
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "previous terminated container \"{container}\" in pod \"{name}\" not found"
                ))
            })?
    } else {
        *files.last().ok_or_else(|| {
            let reason = pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(container.as_str()))
                .and_then(|s| s.pointer("/state/waiting/reason"))
                .and_then(Value::as_str)
                .unwrap_or("ContainerCreating")
                .to_owned();
            ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
            ))
        })?
    };
    let path = logs::log_path(&dir, &container, chosen);
    let since = number("sinceSeconds", query.since_seconds.as_deref())?.and_then(|s| {
        jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(s as i64))
            .ok()
    });
    let shape = logs::Shape {
        timestamps: is_true(query.timestamps.as_deref()),
        tail_lines: number("tailLines", query.tail_lines.as_deref())?.map(|n| n as usize),
        since,
    };
    let limit = number("limitBytes", query.limit_bytes.as_deref())?;
    let content = std::fs::read_to_string(&path).unwrap_or_default();
    // Only complete lines now; a follow stream picks up from there.
    let complete_len = content.rfind('\n').map_or(0, |i| i + 1);
    let mut text = logs::render(&content[..complete_len], shape);
    if let Some(limit) = limit {
        text.truncate(limit as usize);
    }
    let headers = [(header::CONTENT_TYPE, "text/plain")];
    if !is_true(query.follow.as_deref()) || previous {
        return Ok((StatusCode::OK, headers, text).into_response());
    }
    let follow = Follow {
        state: state.clone(),
        path,
        offset: complete_len as u64,
        pending: String::new(),
        dir,
        container,
        restart: chosen,
        pod_key: key,
        uid: uid.to_owned(),
        timestamps: shape.timestamps,
        first: Some(text),
        seen_stopped: false,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let chunk = f.next().await?;
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), f))
    });
    Ok((StatusCode::OK, headers, Body::from_stream(stream)).into_response())
}

/// A `follow` stream's position.
struct Follow {
    state: AppState,
    path: PathBuf,
    offset: u64,
    pending: String,
    dir: PathBuf,
    container: String,
    restart: i32,
    pod_key: String,
    uid: String,
    timestamps: bool,
    first: Option<String>,
    /// The status said the container is not running (one more read, then end).
    seen_stopped: bool,
}

impl Follow {
    /// The next text to send, or `None` when the container was replaced or the pod is gone.
    async fn next(&mut self) -> Option<String> {
        if let Some(first) = self.first.take()
            && !first.is_empty()
        {
            return Some(first);
        }
        loop {
            let mut text = String::new();
            if let Ok(mut file) = std::fs::File::open(&self.path)
                && file.seek(SeekFrom::Start(self.offset)).is_ok()
            {
                let mut bytes = Vec::new();
                if file.read_to_end(&mut bytes).is_ok() {
                    self.offset += bytes.len() as u64;
                    self.pending.push_str(&String::from_utf8_lossy(&bytes));
                    if let Some(end) = self.pending.rfind('\n') {
                        let complete: String = self.pending.drain(..=end).collect();
                        text = logs::render(
                            &complete,
                            logs::Shape {
                                timestamps: self.timestamps,
                                ..Default::default()
                            },
                        );
                    }
                }
            }
            if !text.is_empty() {
                return Some(text);
            }
            let replaced = logs::files(&self.dir, &self.container)
                .last()
                .is_some_and(|n| *n > self.restart);
            let pod = self.state.store.get("/pods", &self.pod_key).filter(|p| {
                p.pointer("/metadata/uid").and_then(Value::as_str) == Some(self.uid.as_str())
            });
            let pod = pod?;
            // The container stopped: everything it wrote has been sent (a read came back
            // empty after the status said so).
            let running = ["containerStatuses", "initContainerStatuses"]
                .iter()
                .any(|k| {
                    pod.pointer(&format!("/status/{k}"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .any(|s| {
                            s.get("name").and_then(Value::as_str) == Some(self.container.as_str())
                                && s.pointer("/state/running").is_some()
                        })
                });
            if replaced || (!running && self.seen_stopped) {
                return None;
            }
            self.seen_stopped = !running;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_selection_follows_kubernetes() {
        let pod = serde_json::json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(container_of(&pod, "p", Some("b")).unwrap(), "b");
        assert_eq!(container_of(&pod, "p", Some("i")).unwrap(), "i");
        let err = container_of(&pod, "p", None).unwrap_err();
        assert!(
            err.status()["message"]
                .as_str()
                .unwrap()
                .contains("choose one of: [a b]")
        );
        assert!(container_of(&pod, "p", Some("z")).is_err());
        let single = serde_json::json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_of(&single, "p", None).unwrap(), "only");
    }
}
