//! The container's CPU limit, read from the cgroup filesystem.
//!
//! Contract: [`read_cpu_limit`] returns the tightest CPU quota that applies to this process
//! (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), checking the
//! process's own cgroup and every ancestor up to the mount root, and falls back to the
//! number of CPUs the process may use. The root is configurable (`CELLMESH_CGROUP_ROOT`,
//! default `/sys/fs/cgroup`) so tests can point it at a fake directory. Parsing is pure and
//! unit-tested; the reader never fails (missing or garbled files are skipped).

use std::path::{Path, PathBuf};

/// Environment variable that overrides the cgroup mount root.
pub const CGROUP_ROOT_ENV: &str = "CELLMESH_CGROUP_ROOT";

/// A CPU limit and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuLimit {
    /// CPUs available, possibly fractional (`1.5` for a 1500m limit).
    pub cpus: f64,
    /// Human-readable origin, e.g. `cgroup v2 /sys/fs/cgroup/cpu.max`.
    pub source: String,
}

impl CpuLimit {
    /// The pool limit `auto` stands for: the limit rounded up, at least 1.
    pub fn auto_pool_limit(&self) -> u32 {
        let rounded = self.cpus.ceil();
        if rounded.is_finite() && rounded >= 1.0 {
            // Capped far below u32::MAX; CPU counts are small.
            rounded.min(4096.0) as u32
        } else {
            1
        }
    }
}

/// The cgroup root from `CELLMESH_CGROUP_ROOT`, else `/sys/fs/cgroup`.
pub fn root_from_env() -> PathBuf {
    std::env::var_os(CGROUP_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// Read the CPU limit that applies to this process under `root`.
pub fn read_cpu_limit(root: &Path) -> CpuLimit {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let paths = own_cgroup_paths(&own);
    let mut best: Option<CpuLimit> = None;
    let mut consider = |cpus: Option<f64>, source: &Path| {
        if let Some(cpus) = cpus
            && best.as_ref().is_none_or(|b| cpus < b.cpus)
        {
            best = Some(CpuLimit {
                cpus,
                source: source.display().to_string(),
            });
        }
    };
    for dir in ancestors(root, paths.v2.as_deref()) {
        let file = dir.join("cpu.max");
        consider(read(&file).as_deref().and_then(parse_cpu_max), &file);
    }
    for controller in ["cpu", "cpu,cpuacct", "cpuacct,cpu", ""] {
        let mount = root.join(controller);
        for dir in ancestors(&mount, paths.v1_cpu.as_deref()) {
            let quota = dir.join("cpu.cfs_quota_us");
            let period = read(&dir.join("cpu.cfs_period_us"));
            let cpus = read(&quota)
                .zip(period)
                .and_then(|(q, p)| parse_cfs(&q, &p));
            consider(cpus, &quota);
        }
    }
    best.unwrap_or_else(|| CpuLimit {
        cpus: std::thread::available_parallelism().map_or(1, usize::from) as f64,
        source: "CPU count (no cgroup CPU limit found)".to_owned(),
    })
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `mount/<own path>`, then each parent directory up to `mount` itself (deduplicated).
fn ancestors(mount: &Path, own: Option<&str>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(own) = own {
        let mut rel = PathBuf::from(own.trim_start_matches('/'));
        loop {
            if rel.as_os_str().is_empty() {
                break;
            }
            dirs.push(mount.join(&rel));
            if !rel.pop() {
                break;
            }
        }
    }
    dirs.push(mount.to_path_buf());
    dirs
}

/// This process's cgroup paths, from `/proc/self/cgroup`.
#[derive(Debug, Default, PartialEq)]
struct OwnPaths {
    v2: Option<String>,
    v1_cpu: Option<String>,
}

fn own_cgroup_paths(proc_self_cgroup: &str) -> OwnPaths {
    let mut paths = OwnPaths::default();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            paths.v2 = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "cpu") {
            paths.v1_cpu = Some(path.to_owned());
        }
    }
    paths
}

/// cgroup v2 `cpu.max`: `"<quota> <period>"` or `"max <period>"` (no limit).
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

/// cgroup v1 CFS quota and period (`-1` quota = no limit).
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000"), Some(0.5));
        assert_eq!(parse_cpu_max("garbage 100000"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn parses_cfs_quota() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2.0));
        assert_eq!(parse_cfs("20000", "100000"), Some(0.2));
        assert_eq!(parse_cfs("x", "100000"), None);
    }

    #[test]
    fn finds_own_paths_in_proc_self_cgroup() {
        let v1 = "12:pids:/pod1\n4:cpu,cpuacct:/cellmesh/pod1\n0::/\n";
        assert_eq!(
            own_cgroup_paths(v1),
            OwnPaths {
                v2: Some("/".into()),
                v1_cpu: Some("/cellmesh/pod1".into())
            }
        );
        assert_eq!(
            own_cgroup_paths("0::/kubepods/pod9\n").v2.as_deref(),
            Some("/kubepods/pod9")
        );
    }

    #[test]
    fn ancestors_walk_up_to_the_mount() {
        let dirs = ancestors(Path::new("/m"), Some("/a/b"));
        assert_eq!(dirs, [PathBuf::from("/m/a/b"), "/m/a".into(), "/m".into()]);
        assert_eq!(ancestors(Path::new("/m"), Some("/")), [PathBuf::from("/m")]);
    }

    #[test]
    fn reads_fake_v2_and_v1_trees_and_takes_the_tightest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "250000 100000\n").unwrap();
        let limit = read_cpu_limit(dir.path());
        assert_eq!(limit.cpus, 2.5);
        assert_eq!(limit.auto_pool_limit(), 3);
        assert!(limit.source.ends_with("cpu.max"), "{}", limit.source);

        let cpu = dir.path().join("cpu");
        std::fs::create_dir(&cpu).unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "120000\n").unwrap();
        std::fs::write(cpu.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let limit = read_cpu_limit(dir.path());
        assert_eq!(limit.cpus, 1.2);
        assert_eq!(limit.auto_pool_limit(), 2);
    }

    #[test]
    fn falls_back_to_cpu_count_without_limits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").unwrap();
        let limit = read_cpu_limit(dir.path());
        assert!(limit.cpus >= 1.0);
        assert!(limit.source.contains("CPU count"), "{}", limit.source);
    }
}
