//! A container's environment, command and args as the kubelet computes them: `envFrom`,
//! `env` with `valueFrom` (downward API `fieldRef`/`resourceFieldRef`, `configMapKeyRef`,
//! `secretKeyRef`) and `$(VAR)` expansion (`$$` escapes, unknown references stay as they
//! are). Pure: ConfigMaps and Secrets come in through [`Sources`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::resources::Resources;

/// Key/value data of the ConfigMaps and Secrets a pod references (Secret values decoded).
pub trait Sources {
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>>;
    fn secret(&self, name: &str) -> Option<BTreeMap<String, String>>;
}

/// Expands `$(NAME)` references in `input` using `vars`, as Kubernetes does.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What the downward API exposes besides the pod object itself.
pub struct Downward<'a> {
    pub pod: &'a Pod,
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    pub node_name: &'a str,
}

impl Downward<'_> {
    fn field(&self, path: &str) -> Result<String, String> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        Ok(match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "spec.nodeName" => self.node_name.to_owned(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            "status.podIP" | "status.podIPs" => self.pod_ip.to_owned(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.to_owned(),
            other => {
                let map = |prefix: &str, m: Option<&BTreeMap<String, String>>| {
                    let key = other.strip_prefix(prefix)?.strip_suffix("']")?;
                    Some(m.and_then(|m| m.get(key)).cloned().unwrap_or_default())
                };
                if let Some(v) = map("metadata.labels['", meta.labels.as_ref())
                    .or_else(|| map("metadata.annotations['", meta.annotations.as_ref()))
                {
                    v
                } else {
                    return Err(format!("unsupported fieldRef.fieldPath {other:?}"));
                }
            }
        })
    }
}

/// Resolves the container's environment in order (later entries win, as in Kubernetes).
/// Errors name the variable and the missing source (the kubelet's
/// `CreateContainerConfigError`).
pub fn resolve(
    container: &Container,
    downward: &Downward<'_>,
    sources: &dyn Sources,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, what, optional) = if let Some(cm) = &from.config_map_ref {
            (
                sources.config_map(&cm.name),
                format!("configmap {:?}", cm.name),
                cm.optional,
            )
        } else if let Some(s) = &from.secret_ref {
            (
                sources.secret(&s.name),
                format!("secret {:?}", s.name),
                s.optional,
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(&mut env, format!("{prefix}{k}"), v);
                }
            }
            None if optional == Some(true) => {}
            None => return Err(format!("{what} not found")),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => {
                let lookup = |name: &str| {
                    env.iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                expand(v, &lookup)
            }
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    downward
                        .field(&f.field_path)
                        .map_err(|e| format!("env {}: {e}", var.name))?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field(
                        container,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                    )
                    .map_err(|e| format!("env {}: {e}", var.name))?
                } else if let Some(k) = &from.config_map_key_ref {
                    match sources
                        .config_map(&k.name)
                        .and_then(|d| d.get(&k.key).cloned())
                    {
                        Some(v) => v,
                        None if k.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "env {}: key {:?} of configmap {:?} not found",
                                var.name, k.key, k.name
                            ));
                        }
                    }
                } else if let Some(k) = &from.secret_key_ref {
                    match sources.secret(&k.name).and_then(|d| d.get(&k.key).cloned()) {
                        Some(v) => v,
                        None if k.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "env {}: key {:?} of secret {:?} not found",
                                var.name, k.key, k.name
                            ));
                        }
                    }
                } else {
                    String::new()
                }
            }
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// `limits.cpu`, `requests.memory`, … of the container, divided by `divisor` (rounded up;
/// an unset limit reports the node's allocatable in Kubernetes — we report 0 → the
/// kubelet would report node capacity; documented limitation: here it is the machine's).
fn resource_field(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let r = Resources::of_container(container)?;
    let machine_cpu = std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * 1000;
    let (value, is_cpu) = match resource {
        "limits.cpu" => (r.limits.cpu_millis.unwrap_or(machine_cpu), true),
        "requests.cpu" => (r.requests.cpu_millis.unwrap_or(0), true),
        "limits.memory" => (r.limits.memory_bytes.unwrap_or(0), false),
        "requests.memory" => (r.requests.memory_bytes.unwrap_or(0), false),
        other => return Err(format!("unsupported resourceFieldRef.resource {other:?}")),
    };
    if is_cpu {
        let divisor = divisor
            .map_or(Ok(1000), super::resources::parse_cpu_millis)?
            .max(1);
        Ok(value.div_ceil(divisor).to_string())
    } else {
        let divisor = divisor.map_or(Ok(1), super::resources::parse_bytes)?.max(1);
        Ok(value.div_ceil(divisor).to_string())
    }
}

/// The container's argv: `command` replaces the image's entrypoint, `args` its default
/// arguments; both have `$(VAR)` expanded against the final environment.
pub fn argv(container: &Container, entrypoint: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let command = container.command.clone().filter(|c| !c.is_empty());
    let args = container.args.clone().unwrap_or_default();
    let mut argv: Vec<String> = match command {
        Some(command) => command.iter().map(|c| expand(c, &lookup)).collect(),
        None => entrypoint.to_vec(),
    };
    argv.extend(args.iter().map(|a| expand(a, &lookup)));
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector,
        ResourceFieldSelector, SecretEnvSource,
    };

    struct Fake;
    impl Sources for Fake {
        fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
            (name == "cfg").then(|| BTreeMap::from([("mode".into(), "fast".into())]))
        }
        fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
            (name == "creds").then(|| BTreeMap::from([("PASSWORD".into(), "s3cret".into())]))
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c"}]}
        }))
        .unwrap()
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = |n: &str| (n == "A").then(|| "1".to_owned());
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("cost $5", &vars), "cost $5");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn env_resolves_all_sources_in_order() {
        let pod = pod();
        let var = |name: &str, value: Option<&str>, from: Option<EnvVarSource>| EnvVar {
            name: name.into(),
            value: value.map(Into::into),
            value_from: from,
        };
        let container = Container {
            name: "c".into(),
            env_from: Some(vec![EnvFromSource {
                prefix: Some("S_".into()),
                secret_ref: Some(SecretEnvSource {
                    name: "creds".into(),
                    optional: None,
                }),
                ..Default::default()
            }]),
            env: Some(vec![
                var(
                    "POD_IP",
                    None,
                    Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "status.podIP".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                ),
                var(
                    "APP",
                    None,
                    Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels['app']".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                ),
                var(
                    "MODE",
                    None,
                    Some(EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "mode".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                ),
                var(
                    "CPUS",
                    None,
                    Some(EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            resource: "requests.cpu".into(),
                            divisor: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                                "1m".into(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                ),
                var("ADDR", Some("$(POD_IP):8080"), None),
            ]),
            command: Some(vec!["serve".into(), "--listen=$(ADDR)".into()]),
            args: Some(vec!["$(MODE)".into(), "$(NOPE)".into()]),
            ..Default::default()
        };
        let downward = Downward {
            pod: &pod,
            pod_ip: "127.64.0.9",
            host_ip: "127.0.0.1",
            node_name: "n",
        };
        let env = resolve(&container, &downward, &Fake).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("S_PASSWORD"), Some("s3cret"));
        assert_eq!(get("POD_IP"), Some("127.64.0.9"));
        assert_eq!(get("APP"), Some("a"));
        assert_eq!(get("MODE"), Some("fast"));
        assert_eq!(get("CPUS"), Some("0"));
        assert_eq!(get("ADDR"), Some("127.64.0.9:8080"));
        assert_eq!(
            argv(&container, &["ignored".into()], &env),
            ["serve", "--listen=127.64.0.9:8080", "fast", "$(NOPE)"]
        );

        let missing = Container {
            name: "c".into(),
            env: Some(vec![var(
                "X",
                None,
                Some(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "absent".into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            )]),
            ..Default::default()
        };
        let err = resolve(&missing, &downward, &Fake).unwrap_err();
        assert!(err.contains("configmap \"absent\""), "{err}");
    }

    #[test]
    fn no_command_uses_the_entrypoint() {
        let c = Container {
            name: "c".into(),
            args: Some(vec!["--x".into()]),
            ..Default::default()
        };
        assert_eq!(argv(&c, &["/bin/cell".into()], &[]), ["/bin/cell", "--x"]);
    }
}
