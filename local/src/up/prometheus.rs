//! Prometheus for `up`: a configuration that discovers everything through the local API
//! server (`kubernetes_sd_configs`, authenticated with the admin token, verifying the
//! cluster CA), and the process itself (the distribution's `prometheus` binary).
//!
//! Debian's `prometheus` is built without Kubernetes discovery (`kubernetes_sd_configs`
//! is an unknown field to it). [`supports_kubernetes_sd`] asks the `promtool` next to the
//! binary; without support the same jobs use `http_sd_configs` against the network
//! component's discovery endpoint ([`crate::network::sd`]), which gives the same
//! `__meta_kubernetes_*` labels, so the relabel rules are shared.
//!
//! Jobs:
//! - `kubernetes-pods`: pods annotated `prometheus.io/scrape: "true"` (with the usual
//!   `prometheus.io/port` and `prometheus.io/path` annotations), labelled with
//!   `namespace`, `pod` and `container`;
//! - `kubernetes-cadvisor`: each Node's `/metrics/cadvisor` at its InternalIP and kubelet
//!   port (the node agent serves it over plain HTTP);
//! - `cellmesh-operator`: the operator's pods (label `app.kubernetes.io/name:
//!   cellmesh-operator`), on their container port named `metrics`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// Where Prometheus finds the API server and its credentials.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub api_server: String,
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
    /// Base URL of the HTTP discovery endpoint, used instead of Kubernetes discovery
    /// when this Prometheus lacks it.
    pub http_sd: Option<String>,
}

/// How often targets are scraped (short: a local cluster is for trying things).
pub const SCRAPE_INTERVAL: &str = "5s";

/// Adds the discovery of `role` (`pod` or `node`) to a scrape job.
fn with_sd(discovery: &Discovery, role: &str, mut job: Value) -> Value {
    let (key, value) = match &discovery.http_sd {
        Some(base) => (
            "http_sd_configs",
            json!([{"url": format!("{base}/sd/{role}s"), "refresh_interval": SCRAPE_INTERVAL}]),
        ),
        None => (
            "kubernetes_sd_configs",
            json!([{
                "role": role,
                "api_server": discovery.api_server,
                "tls_config": {"ca_file": discovery.ca_file},
                "authorization": {"credentials_file": discovery.token_file},
            }]),
        ),
    };
    if let Some(map) = job.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
    job
}

/// Whether the Prometheus at `binary` has Kubernetes discovery, asked of the `promtool`
/// installed beside it (without one, assume an upstream build, which has it). The probe
/// configuration is written into `scratch`.
pub fn supports_kubernetes_sd(binary: &Path, scratch: &Path) -> bool {
    let Some(promtool) = binary
        .parent()
        .map(|d| d.join("promtool"))
        .filter(|p| p.is_file())
    else {
        return true;
    };
    let probe = scratch.join("kubernetes-sd-probe.yml");
    let config = "scrape_configs:\n- job_name: probe\n  kubernetes_sd_configs:\n  - {role: pod, api_server: 'https://127.0.0.1:1'}\n";
    if std::fs::write(&probe, config).is_err() {
        return true;
    }
    let supported = std::process::Command::new(promtool)
        .args(["check", "config"])
        .arg(&probe)
        .output()
        .is_ok_and(|out| out.status.success());
    let _ = std::fs::remove_file(&probe);
    supported
}

/// The Prometheus configuration (as a value; [`render`] writes it as YAML).
pub fn config(discovery: &Discovery) -> Value {
    let pod_labels = json!([
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    ]);
    let mut pods_relabel = vec![
        json!({"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
               "action": "keep", "regex": "true"}),
        json!({"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
               "action": "replace", "target_label": "__metrics_path__", "regex": "(.+)"}),
        json!({"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
               "action": "replace", "regex": "([^:]+)(?::\\d+)?;(\\d+)",
               "replacement": "$1:$2", "target_label": "__address__"}),
    ];
    pods_relabel.extend(pod_labels.as_array().into_iter().flatten().cloned());
    let mut operator_relabel = vec![
        json!({"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
               "action": "keep", "regex": "cellmesh-operator"}),
        json!({"source_labels": ["__meta_kubernetes_pod_container_port_name"],
               "action": "keep", "regex": "metrics"}),
    ];
    operator_relabel.extend(pod_labels.as_array().into_iter().flatten().cloned());
    json!({
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            with_sd(discovery, "pod", json!({
                "job_name": "kubernetes-pods",
                "relabel_configs": pods_relabel,
            })),
            with_sd(discovery, "node", json!({
                "job_name": "kubernetes-cadvisor",
                "scheme": "http",
                "metrics_path": "/metrics/cadvisor",
                "relabel_configs": [
                    {"source_labels": ["__meta_kubernetes_node_name"], "target_label": "node"},
                ],
            })),
            with_sd(discovery, "pod", json!({
                "job_name": "cellmesh-operator",
                "relabel_configs": operator_relabel,
            })),
        ],
    })
}

/// The configuration as YAML, with a header saying where it comes from.
pub fn render(discovery: &Discovery) -> anyhow::Result<String> {
    let yaml = serde_yaml::to_string(&config(discovery))?;
    Ok(format!(
        "# Written by `cellmesh-local up` on every start; edits are overwritten.\n{yaml}"
    ))
}

/// The `prometheus` binary: `explicit` if given, else on PATH, else Debian's path.
pub fn find_binary(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return path.is_file().then(|| path.to_owned());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

/// The command line that runs Prometheus with our configuration and data directory.
pub fn command(binary: &Path, dir: &Path, listen: SocketAddr) -> std::process::Command {
    let mut command = std::process::Command::new(binary);
    command
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"));
    command
}

/// Whether Prometheus at `addr` answers `/-/ready` with 200.
pub fn is_ready(addr: SocketAddr) -> bool {
    http_get(addr, "/-/ready").is_some_and(|(code, _)| code == 200)
}

/// A minimal HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery() -> Discovery {
        Discovery {
            api_server: "https://127.0.0.1:6443".into(),
            ca_file: "/state/ca.crt".into(),
            token_file: "/state/admin.token".into(),
            http_sd: None,
        }
    }

    #[test]
    fn every_job_discovers_through_the_local_api_server() {
        let config = config(&discovery());
        let jobs = config["scrape_configs"].as_array().unwrap();
        let names: Vec<&str> = jobs
            .iter()
            .map(|j| j["job_name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "kubernetes-pods",
                "kubernetes-cadvisor",
                "cellmesh-operator"
            ]
        );
        for job in jobs {
            let sd = &job["kubernetes_sd_configs"][0];
            assert_eq!(sd["api_server"], "https://127.0.0.1:6443");
            assert_eq!(sd["tls_config"]["ca_file"], "/state/ca.crt");
            assert_eq!(
                sd["authorization"]["credentials_file"],
                "/state/admin.token"
            );
        }
        assert_eq!(jobs[1]["metrics_path"], "/metrics/cadvisor");
        assert_eq!(jobs[1]["kubernetes_sd_configs"][0]["role"], "node");
    }

    #[test]
    fn without_kubernetes_discovery_jobs_use_the_http_endpoint() {
        let config = config(&Discovery {
            http_sd: Some("http://127.53.0.10:8080".into()),
            ..discovery()
        });
        let jobs = config["scrape_configs"].as_array().unwrap();
        let urls: Vec<&str> = jobs
            .iter()
            .map(|j| j["http_sd_configs"][0]["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "http://127.53.0.10:8080/sd/pods",
                "http://127.53.0.10:8080/sd/nodes",
                "http://127.53.0.10:8080/sd/pods"
            ]
        );
        assert!(
            jobs.iter()
                .all(|j| j.get("kubernetes_sd_configs").is_none())
        );
    }

    /// `promtool check config` accepts what we write (skipped, saying so, without promtool;
    /// the Kubernetes-discovery variant only where this Prometheus build has it).
    #[test]
    fn promtool_accepts_the_configuration() {
        let Some(promtool) = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
        else {
            eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // promtool checks that credential files exist.
        let kubernetes = Discovery {
            api_server: "https://127.0.0.1:6443".into(),
            ca_file: dir.path().join("ca.crt"),
            token_file: dir.path().join("admin.token"),
            http_sd: None,
        };
        std::fs::write(&kubernetes.ca_file, "").unwrap();
        std::fs::write(&kubernetes.token_file, "token").unwrap();
        let http = Discovery {
            http_sd: Some("http://127.53.0.10:8080".into()),
            ..kubernetes.clone()
        };
        let file = dir.path().join("prometheus.yml");
        let mut variants = vec![("http_sd", http)];
        if supports_kubernetes_sd(&promtool.with_file_name("prometheus"), dir.path()) {
            variants.push(("kubernetes_sd", kubernetes));
        } else {
            eprintln!(
                "SKIPPED (kubernetes_sd variant only): this Prometheus build has no Kubernetes discovery"
            );
        }
        for (name, discovery) in variants {
            std::fs::write(&file, render(&discovery).unwrap()).unwrap();
            let out = std::process::Command::new(&promtool)
                .args(["check", "config"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool refused the {name} config: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // And it fails on a broken one (the check can fail).
        std::fs::write(&file, "scrape_configs: [{job_name: x, bogus: 1}]").unwrap();
        let out = std::process::Command::new(&promtool)
            .args(["check", "config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}
