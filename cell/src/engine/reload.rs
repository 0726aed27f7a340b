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
//!
//! The file is either a bare profile spec or a whole `Profile` resource ([`parse_profile`]
//! takes its `.spec`), so `kubectl apply -f` and `--profile` read the same files.

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
    let spec = parse_profile(text).map_err(|e| format!("profile {}: {e}", path.display()))?;
    Ok((spec, content))
}

/// Parse a profile document: a bare spec, or a `Profile` resource (`kind: Profile`; its
/// `spec`, all defaults when absent). Validated; errors name the field.
pub fn parse_profile(text: &str) -> Result<ProfileSpec, String> {
    let document: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    let Some(kind) = document.get("kind") else {
        return ProfileSpec::from_yaml(text).map_err(|e| e.to_string());
    };
    if kind.as_str() != Some("Profile") {
        return Err(format!(
            "kind: expected Profile (or a bare profile spec), found {}",
            serde_yaml::to_string(kind).unwrap_or_default().trim()
        ));
    }
    let spec = match document.get("spec") {
        Some(spec) => serde_yaml::to_string(spec).map_err(|e| format!("spec: {e}"))?,
        None => String::new(),
    };
    ProfileSpec::from_yaml(&spec).map_err(|e| format!("spec: {e}"))
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
                .and_then(parse_profile)
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

#[cfg(test)]
mod tests {
    use super::*;
    use cellmesh_api::profile::Isolate;

    #[test]
    fn a_profile_file_is_a_bare_spec_or_a_profile_resource() {
        let bare = parse_profile("isolate: thread\nqueueLimit: 3\n").unwrap();
        assert_eq!((bare.isolate, bare.queue_limit), (Isolate::Thread, 3));
        let resource = parse_profile(
            "apiVersion: cellmesh.io/v1alpha1\nkind: Profile\nmetadata: {name: x}\nspec:\n  queueLimit: 3\n  isolate: thread\n",
        )
        .unwrap();
        assert_eq!(resource, bare);
        let empty = parse_profile("kind: Profile\nmetadata: {name: x}\n").unwrap();
        assert_eq!(empty, ProfileSpec::default());
        let err = parse_profile("kind: App\nspec: {}\n").unwrap_err();
        assert!(err.contains("kind: expected Profile"), "{err}");
        let err = parse_profile("kind: Profile\nspec: {concurrency: 0}\n").unwrap_err();
        assert!(err.contains("concurrency"), "{err}");
        let err = parse_profile("kind: Profile\nspec: {queueLimt: 3}\n").unwrap_err();
        assert!(err.contains("queueLimt"), "{err}");
    }
}
