//! The internal functions a service runs per request: µBench's `compute_pi` and `loader`,
//! with µBench's parameters and defaults, read from the spec on every call (µBench caches
//! the first call's parameters per process; cellmesh does not).
//!
//! A function decides its response body ([`BodySpec`]: filler and length) and the caller
//! materializes it: bodies are synthetic filler, so a worker process sends a few bytes, not
//! the body.
//!
//! Where the work runs is the caller's choice ([`Placement`]). On the cell's shared async
//! runtime (`isolate: inline`) small CPU work runs inline — a `spawn_blocking` hop would cost
//! more than a few microseconds of π — and larger work (more than [`INLINE_WORK`] spigot
//! steps), memory and disk stress go to tokio's blocking pool, so they never stall other
//! requests' I/O. In a dedicated worker (a worker thread or process, `isolate: thread |
//! process`) everything runs in place: the worker *is* the unit of CPU, and offloading would
//! let one worker use every core. The engine's admission bounds how many run at once.

pub mod body;
pub mod leaves;
mod loader;
pub mod pi;

use std::path::Path;

use bytes::Bytes;
use cellmesh_api::service::{ComputePi, Function};
use rand::RngExt;

/// Spigot steps (digits² · 10/3) below which π is computed inline.
pub const INLINE_WORK: u64 = 150_000;

/// Why an internal function failed.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// The disk stressor could not write, read or remove its scratch file.
    #[error("disk stress failed on {path}: {source}")]
    Disk {
        /// The scratch file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A blocking job ended abnormally (it panicked or the runtime is shutting down).
    #[error("internal work did not complete: {0}")]
    Aborted(String),
}

/// Where a function's blocking work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On a shared async runtime: large CPU work, memory and disk stress go to the blocking
    /// pool.
    Offload,
    /// In a dedicated worker thread or process: everything runs on the calling thread.
    InPlace,
}

/// Which filler a body is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Filler {
    /// `m` repeated, as µBench's `compute_pi` answers.
    M,
    /// Random ASCII letters, as µBench's `loader` answers.
    Letters,
}

/// A response body, decided by a function and materialized by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BodySpec {
    /// The filler.
    pub fill: Filler,
    /// Length in bytes.
    pub len: usize,
}

impl BodySpec {
    /// The body's bytes.
    pub fn materialize(self) -> Bytes {
        match self.fill {
            Filler::M => body::m_body(self.len),
            Filler::Letters => body::letters_body(&mut rand::rng(), self.len),
        }
    }
}

/// Runs `function` once and returns its response body.
pub async fn run(
    function: Function<'_>,
    scratch_dir: &Path,
    placement: Placement,
) -> Result<BodySpec, FunctionError> {
    match function {
        Function::ComputePi(params) => compute_pi(params, placement).await,
        Function::Loader(params) => loader::run(params, scratch_dir, placement).await,
    }
}

/// µBench's `compute_pi`: a number of π digits drawn from `rangeComplexity`, then an
/// exponentially sized body of `m`.
async fn compute_pi(params: &ComputePi, placement: Placement) -> Result<BodySpec, FunctionError> {
    let (digits, len) = {
        let mut rng = rand::rng();
        let [low, high] = params.range_complexity;
        let digits = rng.random_range(low..=high.max(low)) as usize;
        (digits, body::body_len(&mut rng, params.mean_body_kb()))
    };
    cpu_work(digits, 1, placement).await?;
    Ok(BodySpec {
        fill: Filler::M,
        len,
    })
}

/// Computes `trials` times `digits` digits of π, inline when cheap or placed in place.
pub(crate) async fn cpu_work(
    digits: usize,
    trials: u32,
    placement: Placement,
) -> Result<(), FunctionError> {
    let work = spigot_steps(digits).saturating_mul(u64::from(trials));
    if work <= INLINE_WORK || placement == Placement::InPlace {
        pi_trials(digits, trials);
        Ok(())
    } else {
        blocking(Placement::Offload, move || pi_trials(digits, trials)).await
    }
}

fn pi_trials(digits: usize, trials: u32) {
    for _ in 0..trials {
        std::hint::black_box(pi::pi_digits(digits));
    }
}

fn spigot_steps(digits: usize) -> u64 {
    let digits = digits as u64;
    digits.saturating_mul(digits).saturating_mul(10) / 3
}

/// Runs `job` on tokio's blocking pool (`Offload`) or right here (`InPlace`).
pub(crate) async fn blocking<T: Send + 'static>(
    placement: Placement,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FunctionError> {
    match placement {
        Placement::InPlace => Ok(job()),
        Placement::Offload => tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| FunctionError::Aborted(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compute_pi_answers_m_bodies_of_about_the_mean_size() {
        let params = ComputePi {
            range_complexity: [1, 1],
            mean_response_size: 0.01,
            mean_bandwidth: None,
        };
        let mut total = 0;
        for _ in 0..2000 {
            let body = run(
                Function::ComputePi(&params),
                Path::new("/nonexistent"),
                Placement::Offload,
            )
            .await
            .unwrap()
            .materialize();
            assert!(!body.is_empty() && body.iter().all(|&b| b == b'm'));
            total += body.len();
        }
        // Mean 10 bytes (floored, at least 1): well inside [7, 13] over 2000 draws.
        let mean = total as f64 / 2000.0;
        assert!((7.0..13.0).contains(&mean), "mean {mean}");
    }

    #[tokio::test]
    async fn heavy_pi_goes_to_the_blocking_pool_and_completes() {
        assert!(spigot_steps(400) > INLINE_WORK);
        cpu_work(400, 2, Placement::Offload).await.unwrap();
        cpu_work(10, 1, Placement::Offload).await.unwrap();
        cpu_work(400, 1, Placement::InPlace).await.unwrap();
    }
}
