//! Pod volumes on the host and where containers see them.
//!
//! Each volume lives in `<state>/volumes/<pod uid>/<volume name>`: emptyDir is a plain
//! directory; configMap, secret and projected (including the `kube-api-access-*`
//! ServiceAccount token volume: `token`, `ca.crt`, `namespace`) are written with the
//! [`atomic`](super::atomic) writer and re-synced while the pod runs; hostPath is the host
//! path itself. [`mounts`] turns a container's `volumeMounts` into bind mounts for
//! `container-init`, plus the pod's own `/etc/resolv.conf` and `/etc/hosts`.
//!
//! Pods whose ServiceAccount token is not mounted by an admission plugin get it mounted at
//! the standard path unless `automountServiceAccountToken: false`, as Kubernetes does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, Pod, ProjectedVolumeSource, Secret, Volume, VolumeProjection,
};
use kube::Api;

use super::atomic;
use super::init::BindMount;

pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Name of the token volume the agent adds when no admission plugin did.
pub const AUTO_SA_VOLUME: &str = "kube-api-access-cellmesh";

/// ConfigMaps and Secrets a pod references, fetched once per sync (absent = not found).
#[derive(Default, Debug, Clone)]
pub struct Fetched {
    pub config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    pub secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

fn text_map(data: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    data.iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

impl super::env::Sources for Fetched {
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.config_maps.get(name)?.as_ref().map(text_map)
    }
    fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.secrets.get(name)?.as_ref().map(text_map)
    }
}

/// Names of the ConfigMaps and Secrets the pod refers to (env, envFrom, volumes).
pub fn references(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let Some(spec) = &pod.spec else {
        return (cms, secrets);
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for from in c.env_from.iter().flatten() {
            cms.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for var in c.env.iter().flatten() {
            if let Some(from) = &var.value_from {
                cms.extend(from.config_map_key_ref.as_ref().map(|r| r.name.clone()));
                secrets.extend(from.secret_key_ref.as_ref().map(|r| r.name.clone()));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        cms.extend(v.config_map.as_ref().map(|c| c.name.clone()));
        secrets.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            cms.extend(source.config_map.as_ref().map(|c| c.name.clone()));
            secrets.extend(source.secret.as_ref().map(|s| s.name.clone()));
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Fetches what [`references`] names.
pub async fn fetch(client: &kube::Client, pod: &Pod) -> Result<Fetched, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (cms, secrets) = references(pod);
    let mut out = Fetched::default();
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for name in cms {
        let found = cm_api
            .get_opt(&name)
            .await
            .map_err(|e| format!("cannot read configmap {name:?}: {e}"))?;
        let data = found.map(|cm| {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            data
        });
        out.config_maps.insert(name, data);
    }
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in secrets {
        let found = secret_api
            .get_opt(&name)
            .await
            .map_err(|e| format!("cannot read secret {name:?}: {e}"))?;
        let data = found.map(|s| {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            data.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            data
        });
        out.secrets.insert(name, data);
    }
    Ok(out)
}

/// The pod's volumes plus the automatic ServiceAccount token volume when needed.
pub fn effective_volumes(pod: &Pod) -> Vec<Volume> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let mut volumes = spec.volumes.clone().unwrap_or_default();
    let mounted = spec
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .any(|m| m.mount_path.trim_end_matches('/') == SA_MOUNT_PATH);
    if spec.automount_service_account_token != Some(false) && !mounted {
        volumes.push(Volume {
            name: AUTO_SA_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(Default::default()),
                        ..Default::default()
                    },
                    VolumeProjection {
                        config_map: Some(k8s_openapi::api::core::v1::ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: Some(vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                mode: None,
                            }]),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(k8s_openapi::api::core::v1::DownwardAPIProjection {
                            items: Some(vec![k8s_openapi::api::core::v1::DownwardAPIVolumeFile {
                                path: "namespace".into(),
                                field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                                    field_path: "metadata.namespace".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }]),
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes
}

/// Whether the container gets the automatic token volume mounted.
fn auto_token_mount(pod: &Pod, container: &Container) -> Option<BindMount> {
    let has_auto = effective_volumes(pod)
        .iter()
        .any(|v| v.name == AUTO_SA_VOLUME);
    let already = container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path.trim_end_matches('/') == SA_MOUNT_PATH);
    (has_auto && !already).then(|| BindMount {
        source: PathBuf::new().join(AUTO_SA_VOLUME),
        target: PathBuf::from(SA_MOUNT_PATH),
        read_only: true,
    })
}

/// Selects items of `data` (all keys when `items` is empty) as file path → content.
fn select(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    what: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    match items.filter(|i| !i.is_empty()) {
        None => Ok(data.clone()),
        Some(items) => items
            .iter()
            .map(|item| {
                data.get(&item.key)
                    .map(|v| (item.path.clone(), v.clone()))
                    .ok_or_else(|| format!("{what}: key {:?} not found", item.key))
            })
            .collect(),
    }
}

/// What the agent needs to fill a projected token: a fresh token for the pod's account.
pub struct TokenSource<'a> {
    pub token: &'a str,
    pub ca_pem: &'a str,
}

/// The files of a configMap/secret/projected volume; `None` for directory volumes.
pub fn payload(
    pod: &Pod,
    volume: &Volume,
    fetched: &Fetched,
    token: &TokenSource<'_>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(cm) = &volume.config_map {
        let what = format!("volume {:?}: configmap {:?}", volume.name, cm.name);
        return match fetched.config_maps.get(&cm.name).cloned().flatten() {
            Some(data) => select(&data, cm.items.as_ref(), &what).map(Some),
            None if cm.optional == Some(true) => Ok(Some(BTreeMap::new())),
            None => Err(format!("{what} not found")),
        };
    }
    if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let what = format!("volume {:?}: secret {name:?}", volume.name);
        return match fetched.secrets.get(&name).cloned().flatten() {
            Some(data) => select(&data, s.items.as_ref(), &what).map(Some),
            None if s.optional == Some(true) => Ok(Some(BTreeMap::new())),
            None => Err(format!("{what} not found")),
        };
    }
    if let Some(p) = &volume.projected {
        let mut files = BTreeMap::new();
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let path = if t.path.is_empty() { "token" } else { &t.path };
                files.insert(path.to_owned(), token.token.as_bytes().to_vec());
            }
            if let Some(cm) = &source.config_map {
                let what = format!("volume {:?}: configmap {:?}", volume.name, cm.name);
                match fetched.config_maps.get(&cm.name).cloned().flatten() {
                    Some(data) => files.extend(select(&data, cm.items.as_ref(), &what)?),
                    // The root CA ConfigMap may not be published: we know the CA.
                    None if cm.name == "kube-root-ca.crt" => {
                        files.insert("ca.crt".into(), token.ca_pem.as_bytes().to_vec());
                    }
                    None if cm.optional == Some(true) => {}
                    None => return Err(format!("{what} not found")),
                }
            }
            if let Some(s) = &source.secret {
                let what = format!("volume {:?}: secret {:?}", volume.name, s.name);
                match fetched.secrets.get(&s.name).cloned().flatten() {
                    Some(data) => files.extend(select(&data, s.items.as_ref(), &what)?),
                    None if s.optional == Some(true) => {}
                    None => return Err(format!("{what} not found")),
                }
            }
            if let Some(d) = &source.downward_api {
                for item in d.items.iter().flatten() {
                    if let Some(f) = &item.field_ref {
                        let value = match f.field_path.as_str() {
                            "metadata.namespace" => ns.clone(),
                            "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                            "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                            other => {
                                return Err(format!(
                                    "volume {:?}: unsupported fieldPath {other:?}",
                                    volume.name
                                ));
                            }
                        };
                        files.insert(item.path.clone(), value.into_bytes());
                    }
                }
            }
        }
        return Ok(Some(files));
    }
    Ok(None)
}

/// Where a volume's files are on the host.
pub fn host_dir(volumes_root: &Path, volume: &Volume) -> PathBuf {
    match &volume.host_path {
        Some(h) => PathBuf::from(&h.path),
        None => volumes_root.join(&volume.name),
    }
}

/// The bind mounts `container-init` performs for `container`: its volumeMounts (with
/// `subPath`), the automatic token volume, and the pod's resolv.conf and hosts files.
pub fn mounts(
    pod: &Pod,
    container: &Container,
    volumes_root: &Path,
    etc_dir: &Path,
) -> Result<Vec<BindMount>, String> {
    let volumes = effective_volumes(pod);
    let by_name: HashMap<&str, &Volume> = volumes.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let volume = by_name.get(m.name.as_str()).ok_or_else(|| {
            format!(
                "container {:?}: volumeMount {:?} names no volume of the pod",
                container.name, m.name
            )
        })?;
        let mut source = host_dir(volumes_root, volume);
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.split('/').any(|p| p == "..") || sub.starts_with('/') {
                return Err(format!("volumeMount {:?}: invalid subPath {sub:?}", m.name));
            }
            source = source.join(sub);
        }
        let read_only = m.read_only == Some(true)
            || volume.config_map.is_some()
            || volume.secret.is_some()
            || volume.projected.is_some();
        out.push(BindMount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only,
        });
    }
    if let Some(mut token) = auto_token_mount(pod, container) {
        token.source = volumes_root.join(AUTO_SA_VOLUME);
        out.push(token);
    }
    for file in ["resolv.conf", "hosts"] {
        out.push(BindMount {
            source: etc_dir.join(file),
            target: Path::new("/etc").join(file),
            read_only: false,
        });
    }
    Ok(out)
}

/// The pod's `/etc/resolv.conf`: the cluster DNS server and the Kubernetes search path.
pub fn resolv_conf(dns: std::net::IpAddr, namespace: &str) -> String {
    format!(
        "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {dns}\noptions ndots:5\n"
    )
}

/// The pod's `/etc/hosts`, as the kubelet writes it.
pub fn hosts_file(pod_ip: &str, hostname: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file (cellmesh-local).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{hostname}\n"
    )
}

/// Writes every file volume of the pod (no-op for unchanged payloads); creates emptyDirs.
/// Returns the names of volumes whose content changed.
pub fn sync(
    pod: &Pod,
    volumes_root: &Path,
    fetched: &Fetched,
    token: &TokenSource<'_>,
) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    for volume in effective_volumes(pod) {
        let dir = host_dir(volumes_root, &volume);
        if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(|e| {
                format!(
                    "volume {:?}: cannot create {}: {e}",
                    volume.name,
                    dir.display()
                )
            })?;
            continue;
        }
        if volume.host_path.is_some() {
            continue;
        }
        let mode = volume
            .config_map
            .as_ref()
            .and_then(|c| c.default_mode)
            .or_else(|| volume.secret.as_ref().and_then(|s| s.default_mode))
            .or_else(|| volume.projected.as_ref().and_then(|p| p.default_mode))
            .unwrap_or(0o644);
        match payload(pod, &volume, fetched, token)? {
            Some(files) => {
                if atomic::write(&dir, &files, mode as u32)? {
                    changed.push(volume.name.clone());
                }
            }
            None => {
                return Err(format!(
                    "volume {:?}: unsupported volume type (supported: emptyDir, configMap, \
                     secret, projected, hostPath)",
                    volume.name
                ));
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {
                "containers": [{"name": "c", "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg"},
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "cfg", "mountPath": "/etc/one", "subPath": "a"}
                ]}],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "app", "items": [{"key": "a", "path": "a"}]}},
                    {"name": "scratch", "emptyDir": {}}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn volumes_are_written_and_mounted() {
        let root = tempfile::tempdir().unwrap();
        let pod = pod();
        let mut fetched = Fetched::default();
        fetched.config_maps.insert(
            "app".into(),
            Some(BTreeMap::from([
                ("a".into(), b"1".to_vec()),
                ("b".into(), b"2".to_vec()),
            ])),
        );
        let token = TokenSource {
            token: "tok",
            ca_pem: "CA",
        };
        let changed = sync(&pod, root.path(), &fetched, &token).unwrap();
        assert_eq!(changed, ["cfg", AUTO_SA_VOLUME]);
        assert_eq!(
            std::fs::read_to_string(root.path().join("cfg/a")).unwrap(),
            "1"
        );
        assert!(!root.path().join("cfg/b").exists(), "items select keys");
        assert!(root.path().join("scratch").is_dir());
        let sa = root.path().join(AUTO_SA_VOLUME);
        assert_eq!(std::fs::read_to_string(sa.join("token")).unwrap(), "tok");
        assert_eq!(std::fs::read_to_string(sa.join("ca.crt")).unwrap(), "CA");
        assert_eq!(std::fs::read_to_string(sa.join("namespace")).unwrap(), "ns");
        assert!(
            sync(&pod, root.path(), &fetched, &token)
                .unwrap()
                .is_empty()
        );

        let container = &pod.spec.as_ref().unwrap().containers[0];
        let m = mounts(&pod, container, root.path(), Path::new("/etcdir")).unwrap();
        let targets: Vec<_> = m.iter().map(|b| b.target.to_str().unwrap()).collect();
        assert_eq!(
            targets,
            [
                "/etc/cfg",
                "/scratch",
                "/etc/one",
                SA_MOUNT_PATH,
                "/etc/resolv.conf",
                "/etc/hosts"
            ]
        );
        assert!(m[0].read_only && !m[1].read_only);
        assert_eq!(m[2].source, root.path().join("cfg/a"));

        let mut missing = Fetched::default();
        missing.config_maps.insert("app".into(), None);
        let err = sync(&pod, root.path(), &missing, &token).unwrap_err();
        assert!(err.contains("configmap \"app\" not found"), "{err}");
    }

    #[test]
    fn opting_out_of_the_token() {
        let mut pod = pod();
        pod.spec.as_mut().unwrap().automount_service_account_token = Some(false);
        assert!(
            !effective_volumes(&pod)
                .iter()
                .any(|v| v.name == AUTO_SA_VOLUME)
        );
        assert!(
            resolv_conf("127.53.0.10".parse().unwrap(), "ns")
                .contains("search ns.svc.cluster.local")
        );
    }
}
