//! Hot reload of the mounted profile file.
//!
//! Contract: [`watch_profile_file`] re-reads the file every `interval` *by path* and, when
//! its bytes differ from the last ones seen, parses, validates and applies it. Re-opening
//! the path each time follows Kubernetes' ConfigMap volume updates, which swap a `..data`
//! symlink atomically (a watch on the old inode would miss them), and works on every
//! volume type without inotify. An unreadable or invalid file is refused with one warning
//! per distinct content and counted (`profileRejected`); the profile in force stays.
//! Polling costs one small read per interval; the kubelet itself only syncs ConfigMap
//! volumes about once a minute, so a 1–2 s interval adds no noticeable delay.

use std::path::PathBuf;
use std::time::Duration;

use cellmesh_api::profile::ProfileSpec;
use tokio::task::JoinHandle;

use super::Engine;

/// Read and validate the profile file at `path` (for `--profile` at start); returns the
/// profile and the raw content to hand to [`watch_profile_file`] as `initial`.
pub fn read_profile_file(path: &std::path::Path) -> Result<(ProfileSpec, Vec<u8>), String> {
    let content =
        std::fs::read(path).map_err(|e| format!("cannot read profile {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&content)
        .map_err(|e| format!("profile {} is not UTF-8: {e}", path.display()))?;
    let spec =
        ProfileSpec::from_yaml(text).map_err(|e| format!("profile {}: {e}", path.display()))?;
    Ok((spec, content))
}

/// Watch `path` and apply its changes to `engine` until the returned task is aborted or
/// the engine is dropped. `initial` is the content the engine was started with, if any.
pub fn watch_profile_file(
    engine: &Engine,
    path: PathBuf,
    interval: Duration,
    initial: Option<Vec<u8>>,
) -> JoinHandle<()> {
    let engine = engine.downgrade();
    tokio::spawn(async move {
        let mut last = initial;
        loop {
            tokio::time::sleep(interval).await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let content = match tokio::fs::read(&path).await {
                Ok(content) => content,
                Err(e) => {
                    let marker = format!("error: {e}").into_bytes();
                    if last.as_ref() != Some(&marker) {
                        tracing::warn!(path = %path.display(), "cannot read the profile ({e}); keeping the current one");
                        last = Some(marker);
                    }
                    continue;
                }
            };
            if last.as_ref() == Some(&content) {
                continue;
            }
            let result = std::str::from_utf8(&content)
                .map_err(|e| format!("not UTF-8: {e}"))
                .and_then(|text| ProfileSpec::from_yaml(text).map_err(|e| e.to_string()))
                .and_then(|spec| engine.apply_profile(spec).map_err(|e| e.to_string()));
            match result {
                Ok(()) => tracing::info!(path = %path.display(), "applied the changed profile"),
                Err(reason) => {
                    engine.count_rejected_profile();
                    tracing::warn!(path = %path.display(), "refusing the changed profile, keeping the current one: {reason}");
                }
            }
            last = Some(content);
        }
    })
}
