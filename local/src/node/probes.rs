//! Container probes (httpGet, tcpSocket, exec) with the kubelet's timing: an initial delay,
//! then one attempt per `periodSeconds` with a `timeoutSeconds` limit, and a result that
//! flips only after `successThreshold` / `failureThreshold` consecutive attempts.
//!
//! [`run`] drives the startup, readiness and liveness probes of one running container:
//! it publishes `started`/`ready` through a callback and returns when the container must
//! be restarted (startup or liveness failed).

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Where and how probes reach the container.
#[derive(Clone)]
pub struct Target {
    pub pod_ip: IpAddr,
    /// The container's pid (exec probes run in its mount namespace) when isolated.
    pub pid: Option<u32>,
    pub env: Vec<(String, String)>,
}

fn port_of(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// One probe attempt: `Ok(())` = success, `Err(why)` = failure.
pub async fn attempt(probe: &Probe, container: &Container, target: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let work = async {
        if let Some(http) = &probe.http_get {
            let port = port_of(container, &http.port)?;
            let host = http
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(target.pod_ip);
            let path = http.path.as_deref().unwrap_or("/");
            if http
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("https"))
            {
                return Err("HTTPS probes are not supported by cellmesh-local".to_owned());
            }
            let mut stream = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
            let mut request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for h in http.http_headers.iter().flatten() {
                request.push_str(&format!("{}: {}\r\n", h.name, h.value));
            }
            request.push_str("\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut head = vec![0u8; 64];
            let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&head[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("malformed HTTP response {line:?}"))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            let port = port_of(container, &tcp.port)?;
            let host = tcp
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(target.pod_ip);
            tokio::net::TcpStream::connect((host, port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
        } else if let Some(exec) = &probe.exec {
            let argv = exec.command.clone().unwrap_or_default();
            let (program, args) = argv.split_first().ok_or("exec probe without a command")?;
            let mut cmd = match target.pid {
                // Run inside the container's mount namespace, where its volumes are.
                Some(pid) => {
                    let mut c = tokio::process::Command::new("nsenter");
                    c.arg("-t")
                        .arg(pid.to_string())
                        .arg("-m")
                        .arg("--")
                        .arg(program);
                    c
                }
                None => tokio::process::Command::new(program),
            };
            cmd.args(args)
                .env_clear()
                .envs(target.env.iter().cloned())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let status = cmd
                .status()
                .await
                .map_err(|e| format!("cannot run {program:?}: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("command {argv:?} exited with {status}"))
            }
        } else {
            Err("probe has no handler".to_owned())
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
    }
}

/// Consecutive-result counting of one probe.
#[derive(Debug, Clone, Copy)]
pub struct Tracker {
    successes: i32,
    failures: i32,
    success_threshold: i32,
    failure_threshold: i32,
}

impl Tracker {
    pub fn new(probe: &Probe) -> Self {
        Self {
            successes: 0,
            failures: 0,
            success_threshold: probe.success_threshold.unwrap_or(1).max(1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
        }
    }

    /// Records one result; returns `Some(true)` when the probe now counts as succeeded,
    /// `Some(false)` when it now counts as failed, `None` when undecided.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.failure_threshold).then_some(false)
        }
    }
}

/// What the prober reports while the container runs.
pub trait Report: Send + Sync {
    fn started(&self);
    fn ready(&self, ready: bool);
}

fn period(p: &Probe) -> Duration {
    Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64)
}

fn initial_delay(p: &Probe) -> Duration {
    Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64)
}

/// Runs the container's probes until one says it must be restarted; returns why.
pub async fn run(
    container: Container,
    target: Target,
    report: std::sync::Arc<dyn Report>,
) -> String {
    if let Some(startup) = &container.startup_probe {
        tokio::time::sleep(initial_delay(startup)).await;
        let mut tracker = Tracker::new(startup);
        loop {
            let result = attempt(startup, &container, &target).await;
            match tracker.record(result.is_ok()) {
                Some(true) => break,
                Some(false) => {
                    return format!("Startup probe failed: {}", result.err().unwrap_or_default());
                }
                None => tokio::time::sleep(period(startup)).await,
            }
        }
    }
    report.started();
    let readiness = {
        let container = container.clone();
        let target = target.clone();
        let report = std::sync::Arc::clone(&report);
        async move {
            let Some(probe) = container.readiness_probe.clone() else {
                report.ready(true);
                return std::future::pending::<String>().await;
            };
            tokio::time::sleep(initial_delay(&probe)).await;
            let mut tracker = Tracker::new(&probe);
            loop {
                let ok = attempt(&probe, &container, &target).await.is_ok();
                if let Some(ready) = tracker.record(ok) {
                    report.ready(ready);
                }
                tokio::time::sleep(period(&probe)).await;
            }
        }
    };
    let liveness = async {
        let Some(probe) = container.liveness_probe.clone() else {
            return std::future::pending::<String>().await;
        };
        tokio::time::sleep(initial_delay(&probe)).await;
        let mut tracker = Tracker::new(&probe);
        loop {
            let result = attempt(&probe, &container, &target).await;
            if tracker.record(result.is_ok()) == Some(false) {
                return format!(
                    "Liveness probe failed: {}",
                    result.err().unwrap_or_default()
                );
            }
            tokio::time::sleep(period(&probe)).await;
        }
    };
    tokio::select! {
        why = readiness => why,
        why = liveness => why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HTTPGetAction, TCPSocketAction};

    #[test]
    fn thresholds_need_consecutive_results() {
        let probe = Probe {
            success_threshold: Some(2),
            failure_threshold: Some(2),
            ..Default::default()
        };
        let mut t = Tracker::new(&probe);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
    }

    #[tokio::test]
    async fn http_and_tcp_attempts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut codes = [200u16, 503].into_iter().cycle();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let code = codes.next().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let container = Container {
            name: "c".into(),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("http".into()),
                container_port: port.into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let target = Target {
            pod_ip: "127.0.0.1".parse().unwrap(),
            pid: None,
            env: Vec::new(),
        };
        let http = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(attempt(&http, &container, &target).await, Ok(()));
        let failed = attempt(&http, &container, &target).await.unwrap_err();
        assert!(failed.contains("503"), "{failed}");
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(port.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(attempt(&tcp, &container, &target).await, Ok(()));
        let closed = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(attempt(&closed, &container, &target).await.is_err());
        let exec = |cmd: &str| Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec!["/bin/sh".into(), "-c".into(), cmd.into()]),
            }),
            ..Default::default()
        };
        assert_eq!(attempt(&exec("exit 0"), &container, &target).await, Ok(()));
        assert!(attempt(&exec("exit 3"), &container, &target).await.is_err());
    }
}
