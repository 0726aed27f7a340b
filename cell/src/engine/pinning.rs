//! `cpuPinning`: each worker on its own CPU of the cell's allowed set.
//!
//! Contract: [`allowed_cpus`] is the affinity mask the cell runs with (a Guaranteed-QoS pod
//! with the static CPU manager gets exclusive CPUs here). Worker `id` gets
//! `allowed[(id - 1) mod n]` ([`cpu_for`]): with `poolLimit` ≤ n every worker has a CPU of
//! its own. [`pin_current_thread`] restricts the calling thread — and the threads it starts
//! afterwards, which inherit the mask — to one CPU: a thread worker calls it on its thread, a
//! process worker first thing in `main` (the CPU comes in [`CPU_ENV`]). Failing to pin is
//! logged and never fatal: the worker still runs, unpinned.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use super::pool::WorkerId;

/// Environment variable carrying a process worker's CPU.
pub const CPU_ENV: &str = "CELLMESH_WORKER_CPU";

/// The CPUs the calling thread may run on, ascending.
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The CPU of worker `id` (ids start at 1), or `None` when nothing is allowed.
pub fn cpu_for(id: WorkerId, allowed: &[usize]) -> Option<usize> {
    if allowed.is_empty() {
        return None;
    }
    let index = usize::try_from(id.saturating_sub(1)).unwrap_or(0) % allowed.len();
    allowed.get(index).copied()
}

/// Restrict the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))
}

/// Pin the calling thread to worker `id`'s CPU, logging the outcome.
pub(crate) fn pin_worker(id: WorkerId, allowed: &[usize]) {
    let Some(cpu) = cpu_for(id, allowed) else {
        tracing::warn!(worker = id, "cpuPinning: no allowed CPU; running unpinned");
        return;
    };
    match pin_current_thread(cpu) {
        Ok(()) => tracing::info!(worker = id, cpu, "pinned"),
        Err(e) => tracing::warn!(worker = id, "cpuPinning: {e}; running unpinned"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_take_the_allowed_cpus_in_turn() {
        let allowed = [2, 3, 6];
        let cpus: Vec<Option<usize>> = (1..=4).map(|id| cpu_for(id, &allowed)).collect();
        assert_eq!(cpus, [Some(2), Some(3), Some(6), Some(2)]);
        assert_eq!(cpu_for(1, &[]), None);
    }

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_only() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        let last = *allowed.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current_thread(last).unwrap();
            allowed_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(seen, [last]);
    }
}
