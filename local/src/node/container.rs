//! One container's life: start it through `container-init`, watch it (exit, probes,
//! commands from the pod worker), record its state as the kubelet reports it, and restart
//! it according to the pod's `restartPolicy` with CrashLoopBackOff (the first restart is
//! immediate, then `base` doubling up to `max`; the delay resets once a container has run
//! for ten times the maximum without failing).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use super::cgroup::Stats;
use super::pod::PodContext;

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: jiff::Timestamp,
    pub finished_at: jiff::Timestamp,
    pub container_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: jiff::Timestamp,
        pid: u32,
    },
    Terminated(Terminated),
}

/// What the status reports of a container; shared with the pod worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub state: State,
    pub last: Option<Terminated>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    /// It will not run again (completed under its restart policy, or stopped).
    pub finished: bool,
}

impl Status {
    pub fn new(name: &str, restart_count: i32) -> Self {
        Self {
            name: name.to_owned(),
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last: None,
            restart_count,
            ready: false,
            started: false,
            finished: false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

/// Commands from the pod worker.
#[derive(Debug)]
pub enum Command {
    /// Restart now (resize with `RestartContainer`), not counted as a failure.
    Restart,
    /// Stop for good with this grace period.
    Stop(Duration),
}

/// Restart delays of CrashLoopBackOff.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: None,
        }
    }

    /// The delay before the next restart of a container that ran for `ran`.
    pub fn next(&mut self, ran: Duration) -> Duration {
        if ran > self.max * 10 {
            self.current = None;
        }
        let delay = self.current.unwrap_or(Duration::ZERO);
        self.current = Some(match self.current {
            None => self.base,
            Some(d) => (d * 2).min(self.max),
        });
        delay
    }
}

/// Whether a container that exited with `exit_code` runs again under `policy`.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Shared handle to a container's status plus a change notification.
#[derive(Clone)]
pub struct Shared {
    pub status: Arc<Mutex<Status>>,
    pub changed: mpsc::UnboundedSender<()>,
}

impl Shared {
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            let before = s.clone();
            f(&mut s);
            if *s != before {
                let _ = self.changed.send(());
            }
        }
    }

    pub fn get(&self) -> Status {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

impl super::probes::Report for Shared {
    fn started(&self) {
        self.update(|s| s.started = true);
    }
    fn ready(&self, ready: bool) {
        self.update(|s| s.ready = ready);
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// How a run ended.
enum Ended {
    Exited(std::process::ExitStatus),
    /// Killed on purpose: restart requested (not a failure) or liveness failure.
    Killed {
        status: std::process::ExitStatus,
        reason: Option<String>,
        count_as_failure: bool,
    },
    Stopped(std::process::ExitStatus),
}

/// SIGTERM, then SIGKILL after `grace`; waits for the exit.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: u32,
    grace: Duration,
) -> std::process::ExitStatus {
    signal(pid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => status,
        _ => {
            signal(pid, Signal::SIGKILL);
            child
                .wait()
                .await
                .unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9))
        }
    }
}

/// Runs the container until it is stopped or finished; `init` containers run to completion.
pub async fn run(
    ctx: Arc<PodContext>,
    container: Container,
    shared: Shared,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let policy = ctx.restart_policy(container.name.as_str());
    let mut backoff = Backoff::new(ctx.agent.config.backoff_base, ctx.agent.config.backoff_max);
    let cgroup_id = ctx.cgroup_id(&container.name);
    loop {
        let prepared = match ctx.prepare(&container).await {
            Ok(p) => p,
            Err((reason, message)) => {
                let repeated =
                    matches!(&shared.get().state, State::Waiting { reason: r, .. } if *r == reason);
                if !repeated {
                    ctx.event(true, "Failed", message.clone(), Some(&container.name));
                }
                shared.update(|s| {
                    s.state = State::Waiting {
                        reason: reason.clone(),
                        message: Some(message.clone()),
                    }
                });
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    cmd = commands.recv() => match cmd {
                        Some(Command::Restart) => continue,
                        Some(Command::Stop(_)) | None => break,
                    },
                }
            }
        };
        let restart_count = shared.get().restart_count;
        let limits = ctx.allocated_limits(&container.name);
        let mut spawned = match ctx.spawn(&container, &prepared, restart_count, &limits) {
            Ok(s) => s,
            Err(message) => {
                tracing::warn!(pod = %ctx.key, container = %container.name, %message, "cannot start container");
                shared.update(|s| {
                    s.state = State::Waiting {
                        reason: "CreateContainerError".into(),
                        message: Some(message.clone()),
                    }
                });
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    cmd = commands.recv() => match cmd {
                        Some(Command::Restart) => continue,
                        Some(Command::Stop(_)) | None => break,
                    },
                }
            }
        };
        let pid = spawned.pid;
        ctx.event(
            false,
            "Started",
            format!("Started container {}", container.name),
            Some(&container.name),
        );
        let started_at = jiff::Timestamp::now();
        let began = Instant::now();
        let oom_before = ctx
            .agent
            .cgroups
            .stats(&cgroup_id)
            .map(|s| s.oom_kills)
            .unwrap_or(0);
        shared.update(|s| {
            s.state = State::Running { started_at, pid };
            s.ready = false;
            s.started = false;
        });
        let prober = tokio::spawn(super::probes::run(
            container.clone(),
            super::probes::Target {
                pod_ip: ctx.pod_ip.into(),
                pid: ctx.agent.isolate.then_some(pid),
                env: prepared.env.clone(),
            },
            Arc::new(shared.clone()),
        ));
        let mut prober = prober;
        let ended = tokio::select! {
            status = spawned.child.wait() => Ended::Exited(status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0))),
            why = &mut prober => {
                let why = why.unwrap_or_default();
                tracing::info!(pod = %ctx.key, container = %container.name, %why, "restarting container");
                ctx.event(true, "Unhealthy", why.clone(), Some(&container.name));
                ctx.event(
                    false,
                    "Killing",
                    format!("Container {} failed a probe, will be restarted", container.name),
                    Some(&container.name),
                );
                let grace = ctx.grace_period();
                let status = terminate(&mut spawned.child, pid, grace).await;
                Ended::Killed { status, reason: Some(why), count_as_failure: true }
            }
            cmd = commands.recv() => {
                match cmd {
                    Some(Command::Restart) => {
                        let status = terminate(&mut spawned.child, pid, ctx.grace_period()).await;
                        Ended::Killed { status, reason: None, count_as_failure: false }
                    }
                    Some(Command::Stop(grace)) => Ended::Stopped(terminate(&mut spawned.child, pid, grace).await),
                    None => Ended::Stopped(terminate(&mut spawned.child, pid, Duration::ZERO).await),
                }
            }
        };
        prober.abort();
        // Whatever the container left behind (its process group, its cgroup) goes with it.
        if let Ok(group) = i32::try_from(pid) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), Signal::SIGKILL);
        }
        ctx.agent.cgroups.kill_all(&cgroup_id);
        let stats: Stats = ctx.agent.cgroups.stats(&cgroup_id).unwrap_or_default();
        for copier in spawned.copiers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), copier).await;
        }
        let (status, stopped, restart_now, kill_reason, failure) = match ended {
            Ended::Exited(s) => (s, false, false, None, true),
            Ended::Killed {
                status,
                reason,
                count_as_failure,
            } => (status, false, !count_as_failure, reason, count_as_failure),
            Ended::Stopped(s) => (s, true, false, None, false),
        };
        let sig = std::os::unix::process::ExitStatusExt::signal(&status);
        let exit_code = status.code().unwrap_or_else(|| 128 + sig.unwrap_or(0));
        // Like the runtimes: any OOM kill in the container's cgroup (the killed process may
        // be a child, its shell then exits with 137) makes the container OOMKilled.
        let oom = stats.oom_kills > oom_before;
        let reason = if oom {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let terminated = Terminated {
            exit_code,
            signal: sig,
            reason: reason.to_owned(),
            message: kill_reason,
            started_at,
            finished_at: jiff::Timestamp::now(),
            container_id: format!("cellmesh://{pid}"),
        };
        tracing::info!(pod = %ctx.key, container = %container.name, exit_code, reason, "container exited");
        let restart = !stopped && (restart_now || should_restart(&policy, exit_code));
        shared.update(|s| {
            s.state = State::Terminated(terminated.clone());
            s.ready = false;
            s.finished = !restart;
        });
        ctx.agent.cgroups.remove(&cgroup_id);
        if stopped {
            return;
        }
        if !restart {
            // Stay terminated until the pod goes away.
            loop {
                match commands.recv().await {
                    Some(Command::Stop(_)) | None => return,
                    Some(Command::Restart) => {}
                }
            }
        }
        let delay = if failure {
            backoff.next(began.elapsed())
        } else {
            Duration::ZERO
        };
        if !delay.is_zero() {
            ctx.event(
                true,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}",
                    container.name, ctx.key
                ),
                Some(&container.name),
            );
            let message = format!(
                "back-off {} restarting failed container={} pod={}",
                humanize(delay),
                container.name,
                ctx.key
            );
            shared.update(|s| {
                s.last = Some(terminated.clone());
                s.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(message),
                };
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                cmd = commands.recv() => match cmd {
                    Some(Command::Restart) => {}
                    Some(Command::Stop(_)) | None => {
                        shared.update(|s| s.finished = true);
                        return;
                    }
                },
            }
        }
        shared.update(|s| {
            s.last = Some(terminated);
            s.restart_count += 1;
        });
    }
    shared.update(|s| s.finished = true);
}

/// `10s`, `1m20s`, `5m0s` as the kubelet prints back-off delays.
pub fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else if d.subsec_millis() != 0 && secs < 10 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_doubles_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.next(short).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(
            b.next(Duration::from_secs(3001)),
            Duration::ZERO,
            "reset after a long run"
        );
        assert_eq!(humanize(Duration::from_secs(80)), "1m20s");
        assert_eq!(humanize(Duration::from_secs(10)), "10s");
    }

    #[test]
    fn restart_policies() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("OnFailure", 1));
        assert!(!should_restart("OnFailure", 0));
        assert!(!should_restart("Never", 1));
    }
}
