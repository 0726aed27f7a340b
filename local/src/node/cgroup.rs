//! Per-container cgroups behind one small interface, [`Cgroups`], with a cgroup v1
//! implementation (separate `cpu`, `cpuacct` and `memory` hierarchies under a root such as
//! `/sys/fs/cgroup`), a cgroup v2 one (one unified hierarchy) and [`Unenforced`] for hosts
//! where neither is writable (limits are recorded but not applied; the Node says so).
//!
//! A container's cgroup is `<root>[/<controller>]/<parent>/<pod uid>/<container>`. The
//! agent creates it and sets its limits before the container starts; the container joins it
//! itself (`container-init` writes its pid to the returned `cgroup.procs` files), so no
//! instruction of the container ever runs outside its limits.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::resources::CgroupLimits;

/// v1's "no memory limit" (`PAGE_COUNTER_MAX` × page size, what the kernel reports).
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// What a container's cgroup reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Usage minus inactive file pages (cAdvisor's working set).
    pub memory_working_set_bytes: u64,
    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub oom_kills: u64,
    /// CFS bandwidth periods in which the cgroup had runnable tasks (`nr_periods`; the
    /// period timer stops while it is idle, so idle time adds none).
    pub cpu_periods: u64,
    /// Of those, periods in which it used up its quota and was throttled (`nr_throttled`).
    pub cpu_throttled_periods: u64,
    /// Total time its tasks waited throttled, in nanoseconds.
    pub cpu_throttled_ns: u64,
}

/// A cgroup hierarchy the agent manages containers in.
pub trait Cgroups: Send + Sync {
    /// `v1`, `v2` or `none`.
    fn version(&self) -> &'static str;
    /// Creates the cgroup `id` (`<pod uid>/<container>`) with `limits`; returns the
    /// `cgroup.procs` files the container must write its pid to.
    fn create(&self, id: &str, limits: &CgroupLimits) -> io::Result<Vec<PathBuf>>;
    /// Changes the limits of a live cgroup (in-place resize).
    fn apply(&self, id: &str, limits: &CgroupLimits) -> io::Result<()>;
    /// The limits the cgroup has now (read back from the files).
    fn read_limits(&self, id: &str) -> io::Result<CgroupLimits>;
    fn stats(&self, id: &str) -> io::Result<Stats>;
    /// Removes the cgroup (and its now empty pod parent); best effort.
    fn remove(&self, id: &str);
    /// The file whose content shows the CPU quota (for humans and tests).
    fn cpu_quota_file(&self, id: &str) -> PathBuf;
    /// The `cgroup.procs` file listing the container's processes (None when unenforced).
    fn procs_file(&self, id: &str) -> Option<PathBuf>;

    /// Kills and removes every container cgroup under the parent (leftovers of an agent
    /// that died); with `remove_parent`, the parent directory too.
    fn sweep(&self, remove_parent: bool) {
        for parent in self.parent_dirs() {
            let pods = fs::read_dir(&parent).into_iter().flatten().flatten();
            for pod in pods.filter(|e| e.path().is_dir()) {
                let containers = fs::read_dir(pod.path()).into_iter().flatten().flatten();
                for container in containers.filter(|e| e.path().is_dir()) {
                    let id = format!(
                        "{}/{}",
                        pod.file_name().to_string_lossy(),
                        container.file_name().to_string_lossy()
                    );
                    self.kill_all(&id);
                    // Killed processes leave the cgroup asynchronously.
                    for _ in 0..20 {
                        if fs::remove_dir(container.path()).is_ok() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
                let _ = fs::remove_dir(pod.path());
            }
            if remove_parent {
                let _ = fs::remove_dir(&parent);
            }
        }
    }

    /// The parent directories (one per hierarchy).
    fn parent_dirs(&self) -> Vec<PathBuf>;

    /// SIGKILLs every process left in the cgroup (a container's children die with it).
    fn kill_all(&self, id: &str) {
        let Some(path) = self.procs_file(id) else {
            return;
        };
        for pid in fs::read_to_string(path).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn read_u64(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a number: {text:?}", path.display()),
        )
    })
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write {value:?} to {}: {e}", path.display()),
        )
    })
}

/// `key value` lines (memory.stat, memory.events, memory.oom_control, cpu.stat).
/// `(periods, throttled periods, throttled ns)` from a `cpu.stat`; zeros when the file is
/// missing (a CPU controller without CFS bandwidth control), since throttling is an extra
/// reading that must not fail the others. `throttled_key` and `scale` name the time field:
/// `throttled_time` in ns (v1) or `throttled_usec` (v2).
fn throttling(path: &Path, throttled_key: &str, scale: u64) -> (u64, u64, u64) {
    let read = |key: &str| keyed(path, key).unwrap_or(0);
    (
        read("nr_periods"),
        read("nr_throttled"),
        read(throttled_key).saturating_mul(scale),
    )
}

fn keyed(path: &Path, key: &str) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Removes `dir` and then its parent if empty (cgroup directories are removed with rmdir).
fn remove_dir_and_parent(dir: &Path) {
    let _ = fs::remove_dir(dir);
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent);
    }
}

/// cgroup v1: `cpu`, `cpuacct` and `memory` controllers, each its own hierarchy.
pub struct V1 {
    root: PathBuf,
    parent: String,
}

impl V1 {
    pub fn new(root: impl Into<PathBuf>, parent: &str) -> Self {
        Self {
            root: root.into(),
            parent: parent.to_owned(),
        }
    }

    fn dir(&self, controller: &str, id: &str) -> PathBuf {
        self.root.join(controller).join(&self.parent).join(id)
    }

    /// Whether this host has writable v1 cpu and memory hierarchies under `root`.
    pub fn usable(root: &Path) -> bool {
        ["cpu", "memory"].iter().all(|c| {
            let dir = root.join(c);
            dir.join("cgroup.procs").exists()
                && nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_ok()
        })
    }
}

impl Cgroups for V1 {
    fn version(&self) -> &'static str {
        "v1"
    }

    fn create(&self, id: &str, limits: &CgroupLimits) -> io::Result<Vec<PathBuf>> {
        let mut procs = Vec::new();
        for controller in ["cpu", "cpuacct", "memory"] {
            let dir = self.dir(controller, id);
            fs::create_dir_all(&dir).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
            procs.push(dir.join("cgroup.procs"));
        }
        self.apply(id, limits)?;
        Ok(procs)
    }

    fn apply(&self, id: &str, limits: &CgroupLimits) -> io::Result<()> {
        let cpu = self.dir("cpu", id);
        write(
            &cpu.join("cpu.cfs_period_us"),
            &limits.cpu_period_us.to_string(),
        )?;
        let quota = limits
            .cpu_quota_us
            .map_or("-1".to_owned(), |q| q.to_string());
        write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
        write(&cpu.join("cpu.shares"), &limits.cpu_shares.to_string())?;
        let memory = limits
            .memory_limit_bytes
            .map_or("-1".to_owned(), |m| m.to_string());
        write(
            &self.dir("memory", id).join("memory.limit_in_bytes"),
            &memory,
        )
    }

    fn read_limits(&self, id: &str) -> io::Result<CgroupLimits> {
        let cpu = self.dir("cpu", id);
        let quota = fs::read_to_string(cpu.join("cpu.cfs_quota_us"))?;
        let quota: i64 = quota.trim().parse().unwrap_or(-1);
        let memory = read_u64(&self.dir("memory", id).join("memory.limit_in_bytes"))?;
        Ok(CgroupLimits {
            cpu_quota_us: u64::try_from(quota).ok(),
            cpu_period_us: read_u64(&cpu.join("cpu.cfs_period_us"))?,
            cpu_shares: read_u64(&cpu.join("cpu.shares"))?,
            memory_limit_bytes: (memory < V1_UNLIMITED).then_some(memory),
        })
    }

    fn stats(&self, id: &str) -> io::Result<Stats> {
        let memory = self.dir("memory", id);
        let usage = read_u64(&memory.join("memory.usage_in_bytes"))?;
        let inactive = keyed(&memory.join("memory.stat"), "total_inactive_file")?;
        let (cpu_periods, cpu_throttled_periods, cpu_throttled_ns) =
            throttling(&self.dir("cpu", id).join("cpu.stat"), "throttled_time", 1);
        Ok(Stats {
            cpu_usage_ns: read_u64(&self.dir("cpuacct", id).join("cpuacct.usage"))?,
            memory_working_set_bytes: usage.saturating_sub(inactive),
            oom_kills: keyed(&memory.join("memory.oom_control"), "oom_kill")?,
            cpu_periods,
            cpu_throttled_periods,
            cpu_throttled_ns,
        })
    }

    fn remove(&self, id: &str) {
        for controller in ["cpu", "cpuacct", "memory"] {
            remove_dir_and_parent(&self.dir(controller, id));
        }
    }

    fn cpu_quota_file(&self, id: &str) -> PathBuf {
        self.dir("cpu", id).join("cpu.cfs_quota_us")
    }
    fn procs_file(&self, id: &str) -> Option<PathBuf> {
        Some(self.dir("memory", id).join("cgroup.procs"))
    }
    fn parent_dirs(&self) -> Vec<PathBuf> {
        ["cpu", "cpuacct", "memory"]
            .iter()
            .map(|c| self.root.join(c).join(&self.parent))
            .collect()
    }
}

/// cgroup v2: one hierarchy; controllers enabled down the path via `cgroup.subtree_control`.
pub struct V2 {
    root: PathBuf,
    parent: String,
}

impl V2 {
    pub fn new(root: impl Into<PathBuf>, parent: &str) -> Self {
        Self {
            root: root.into(),
            parent: parent.to_owned(),
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(&self.parent).join(id)
    }

    /// Whether `root` is a v2 hierarchy offering the cpu and memory controllers.
    pub fn usable(root: &Path) -> bool {
        fs::read_to_string(root.join("cgroup.controllers")).is_ok_and(|c| {
            let names: Vec<&str> = c.split_whitespace().collect();
            names.contains(&"cpu") && names.contains(&"memory")
        }) && nix::unistd::access(root, nix::unistd::AccessFlags::W_OK).is_ok()
    }
}

impl Cgroups for V2 {
    fn version(&self) -> &'static str {
        "v2"
    }

    fn create(&self, id: &str, limits: &CgroupLimits) -> io::Result<Vec<PathBuf>> {
        let dir = self.dir(id);
        fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
        // Enable cpu and memory for the children of every ancestor of the leaf.
        let relative = Path::new(&self.parent).join(id);
        let mut ancestor = self.root.clone();
        let mut components = relative.components().peekable();
        while let Some(part) = components.next() {
            write(&ancestor.join("cgroup.subtree_control"), "+cpu +memory")?;
            ancestor.push(part);
            if components.peek().is_none() {
                break;
            }
        }
        self.apply(id, limits)?;
        Ok(vec![dir.join("cgroup.procs")])
    }

    fn apply(&self, id: &str, limits: &CgroupLimits) -> io::Result<()> {
        let dir = self.dir(id);
        let quota = limits
            .cpu_quota_us
            .map_or("max".to_owned(), |q| q.to_string());
        write(
            &dir.join("cpu.max"),
            &format!("{quota} {}", limits.cpu_period_us),
        )?;
        write(&dir.join("cpu.weight"), &limits.cpu_weight().to_string())?;
        let memory = limits
            .memory_limit_bytes
            .map_or("max".to_owned(), |m| m.to_string());
        write(&dir.join("memory.max"), &memory)
    }

    fn read_limits(&self, id: &str) -> io::Result<CgroupLimits> {
        let dir = self.dir(id);
        let cpu_max = fs::read_to_string(dir.join("cpu.max"))?;
        let mut fields = cpu_max.split_whitespace();
        let quota = fields.next().and_then(|q| q.parse().ok());
        let period = fields
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(100_000);
        let weight = read_u64(&dir.join("cpu.weight"))?;
        let memory = fs::read_to_string(dir.join("memory.max"))?;
        Ok(CgroupLimits {
            cpu_quota_us: quota,
            cpu_period_us: period,
            // Inverse of the weight formula (lossy, as in the kubelet).
            cpu_shares: 2 + (weight.saturating_sub(1) * 262_142).div_ceil(9999),
            memory_limit_bytes: memory.trim().parse().ok(),
        })
    }

    fn stats(&self, id: &str) -> io::Result<Stats> {
        let dir = self.dir(id);
        let usage = read_u64(&dir.join("memory.current"))?;
        let inactive = keyed(&dir.join("memory.stat"), "inactive_file")?;
        let (cpu_periods, cpu_throttled_periods, cpu_throttled_ns) =
            throttling(&dir.join("cpu.stat"), "throttled_usec", 1000);
        Ok(Stats {
            cpu_usage_ns: keyed(&dir.join("cpu.stat"), "usage_usec")? * 1000,
            memory_working_set_bytes: usage.saturating_sub(inactive),
            oom_kills: keyed(&dir.join("memory.events"), "oom_kill")?,
            cpu_periods,
            cpu_throttled_periods,
            cpu_throttled_ns,
        })
    }

    fn remove(&self, id: &str) {
        remove_dir_and_parent(&self.dir(id));
    }

    fn cpu_quota_file(&self, id: &str) -> PathBuf {
        self.dir(id).join("cpu.max")
    }
    fn procs_file(&self, id: &str) -> Option<PathBuf> {
        Some(self.dir(id).join("cgroup.procs"))
    }
    fn parent_dirs(&self) -> Vec<PathBuf> {
        vec![self.root.join(&self.parent)]
    }
}

/// No writable cgroups: limits are remembered (so status and resize still behave) but not
/// enforced, and there are no usage statistics.
#[derive(Default)]
pub struct Unenforced {
    limits: std::sync::Mutex<std::collections::HashMap<String, CgroupLimits>>,
}

impl Cgroups for Unenforced {
    fn version(&self) -> &'static str {
        "none"
    }
    fn create(&self, id: &str, limits: &CgroupLimits) -> io::Result<Vec<PathBuf>> {
        self.apply(id, limits)?;
        Ok(Vec::new())
    }
    fn apply(&self, id: &str, limits: &CgroupLimits) -> io::Result<()> {
        if let Ok(mut map) = self.limits.lock() {
            map.insert(id.to_owned(), *limits);
        }
        Ok(())
    }
    fn read_limits(&self, id: &str) -> io::Result<CgroupLimits> {
        self.limits
            .lock()
            .ok()
            .and_then(|m| m.get(id).copied())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such container"))
    }
    fn stats(&self, _id: &str) -> io::Result<Stats> {
        Ok(Stats::default())
    }
    fn remove(&self, id: &str) {
        if let Ok(mut map) = self.limits.lock() {
            map.remove(id);
        }
    }
    fn cpu_quota_file(&self, _id: &str) -> PathBuf {
        PathBuf::new()
    }
    fn procs_file(&self, _id: &str) -> Option<PathBuf> {
        None
    }
    fn parent_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// Picks the hierarchy under `root`: v2 when it has the controllers, else v1, else none.
pub fn detect(root: &Path, parent: &str) -> Box<dyn Cgroups> {
    if V2::usable(root) {
        Box::new(V2::new(root, parent))
    } else if V1::usable(root) {
        Box::new(V1::new(root, parent))
    } else {
        Box::new(Unenforced::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CgroupLimits {
        CgroupLimits {
            cpu_quota_us: Some(50_000),
            cpu_period_us: 100_000,
            cpu_shares: 256,
            memory_limit_bytes: Some(64 << 20),
        }
    }

    /// A fake v2 tree: the kernel would create the interface files; we do it by hand.
    #[test]
    fn v2_writes_limits_and_reads_stats_from_a_fake_tree() {
        let root = tempfile::tempdir().unwrap();
        fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        let cg = V2::new(root.path(), "cellmesh");
        let procs = cg.create("uid1/app", &limits()).unwrap();
        let leaf = root.path().join("cellmesh/uid1/app");
        assert_eq!(procs, vec![leaf.join("cgroup.procs")]);
        assert_eq!(
            fs::read_to_string(leaf.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(fs::read_to_string(leaf.join("cpu.weight")).unwrap(), "10");
        assert_eq!(
            fs::read_to_string(leaf.join("memory.max")).unwrap(),
            (64u64 << 20).to_string()
        );
        for dir in ["", "cellmesh", "cellmesh/uid1"] {
            assert_eq!(
                fs::read_to_string(root.path().join(dir).join("cgroup.subtree_control")).unwrap(),
                "+cpu +memory",
                "controllers enabled in {dir:?}"
            );
        }
        let read = cg.read_limits("uid1/app").unwrap();
        assert_eq!(read.cpu_quota_us, Some(50_000));
        assert_eq!(read.memory_limit_bytes, Some(64 << 20));
        assert!(read.cpu_shares.abs_diff(256) < 30, "{}", read.cpu_shares);

        let unlimited = CgroupLimits {
            cpu_quota_us: None,
            memory_limit_bytes: None,
            ..limits()
        };
        cg.apply("uid1/app", &unlimited).unwrap();
        assert_eq!(
            fs::read_to_string(leaf.join("cpu.max")).unwrap(),
            "max 100000"
        );
        assert_eq!(fs::read_to_string(leaf.join("memory.max")).unwrap(), "max");
        assert_eq!(cg.read_limits("uid1/app").unwrap().memory_limit_bytes, None);

        fs::write(leaf.join("memory.current"), "1000\n").unwrap();
        fs::write(leaf.join("memory.stat"), "anon 600\ninactive_file 300\n").unwrap();
        fs::write(
            leaf.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nnr_periods 40\nnr_throttled 30\nthrottled_usec 2500\n",
        )
        .unwrap();
        fs::write(
            leaf.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(
            cg.stats("uid1/app").unwrap(),
            Stats {
                cpu_usage_ns: 1_500_000,
                memory_working_set_bytes: 700,
                oom_kills: 1,
                cpu_periods: 40,
                cpu_throttled_periods: 30,
                cpu_throttled_ns: 2_500_000,
            }
        );
        assert!(V2::usable(root.path()));
        assert!(!V1::usable(root.path()));
    }

    #[test]
    fn sweep_removes_leftover_container_cgroups() {
        let root = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuacct", "memory"] {
            fs::create_dir_all(root.path().join(c).join("cm/pod1/app")).unwrap();
        }
        let cg = V1::new(root.path(), "cm");
        cg.sweep(false);
        assert!(!root.path().join("cpu/cm/pod1").exists());
        assert!(root.path().join("cpu/cm").exists());
        cg.sweep(true);
        assert!(!root.path().join("memory/cm").exists());
    }

    #[test]
    fn v1_writes_each_controller_in_a_fake_tree() {
        let root = tempfile::tempdir().unwrap();
        let cg = V1::new(root.path(), "cm");
        let procs = cg.create("u/c", &limits()).unwrap();
        assert_eq!(procs.len(), 3);
        let cpu = root.path().join("cpu/cm/u/c");
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        assert_eq!(fs::read_to_string(cpu.join("cpu.shares")).unwrap(), "256");
        let read = cg.read_limits("u/c").unwrap();
        assert_eq!(read, limits());
        cg.apply(
            "u/c",
            &CgroupLimits {
                cpu_quota_us: None,
                ..limits()
            },
        )
        .unwrap();
        assert_eq!(cg.read_limits("u/c").unwrap().cpu_quota_us, None);
        assert_eq!(cg.cpu_quota_file("u/c"), cpu.join("cpu.cfs_quota_us"));
    }

    #[test]
    fn v1_stats_read_throttling_from_cpu_stat_and_zeros_without_it() {
        let root = tempfile::tempdir().unwrap();
        let cg = V1::new(root.path(), "cm");
        cg.create("u/c", &limits()).unwrap();
        let memory = root.path().join("memory/cm/u/c");
        fs::write(memory.join("memory.usage_in_bytes"), "1000\n").unwrap();
        fs::write(memory.join("memory.stat"), "total_inactive_file 100\n").unwrap();
        fs::write(memory.join("memory.oom_control"), "oom_kill 0\n").unwrap();
        fs::write(root.path().join("cpuacct/cm/u/c/cpuacct.usage"), "7\n").unwrap();
        // No cpu.stat (no CFS bandwidth control): the other readings still come.
        let stats = cg.stats("u/c").unwrap();
        assert_eq!((stats.cpu_usage_ns, stats.cpu_periods), (7, 0));
        fs::write(
            root.path().join("cpu/cm/u/c/cpu.stat"),
            "nr_periods 50\nnr_throttled 45\nthrottled_time 3000000000\n",
        )
        .unwrap();
        let stats = cg.stats("u/c").unwrap();
        assert_eq!(
            (
                stats.cpu_periods,
                stats.cpu_throttled_periods,
                stats.cpu_throttled_ns
            ),
            (50, 45, 3_000_000_000)
        );
    }
}
