//! The internal functions a service runs per request: µBench's `compute_pi` and `loader`,
//! with µBench's parameters and defaults, read from the spec on every call (µBench caches
//! the first call's parameters per process; cellmesh does not).
//!
//! Small CPU work runs inline on the async worker thread — a `spawn_blocking` hop would cost
//! more than a few microseconds of π. Larger work (more than [`INLINE_WORK`] spigot steps),
//! memory and disk stress go to tokio's blocking pool, so they never stall other requests'
//! I/O; the cell's admission limit (`workers × threads`) bounds how many run at once.

pub mod body;
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

/// Runs `function` once and returns the response body.
pub async fn run(function: Function<'_>, scratch_dir: &Path) -> Result<Bytes, FunctionError> {
    match function {
        Function::ComputePi(params) => compute_pi(params).await,
        Function::Loader(params) => loader::run(params, scratch_dir).await,
    }
}

/// µBench's `compute_pi`: a number of π digits drawn from `rangeComplexity`, then an
/// exponentially sized body of `m`.
async fn compute_pi(params: &ComputePi) -> Result<Bytes, FunctionError> {
    let (digits, len) = {
        let mut rng = rand::rng();
        let [low, high] = params.range_complexity;
        let digits = rng.random_range(low..=high.max(low)) as usize;
        (digits, body::body_len(&mut rng, params.mean_body_kb()))
    };
    cpu_work(digits, 1).await?;
    Ok(body::m_body(len))
}

/// Computes `trials` times `digits` digits of π, inline when cheap.
pub(crate) async fn cpu_work(digits: usize, trials: u32) -> Result<(), FunctionError> {
    let work = spigot_steps(digits).saturating_mul(u64::from(trials));
    if work <= INLINE_WORK {
        pi_trials(digits, trials);
        Ok(())
    } else {
        blocking(move || pi_trials(digits, trials)).await
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

/// Runs `job` on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FunctionError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| FunctionError::Aborted(e.to_string()))
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
            let body = run(Function::ComputePi(&params), Path::new("/nonexistent"))
                .await
                .unwrap();
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
        cpu_work(400, 2).await.unwrap();
        cpu_work(10, 1).await.unwrap();
    }
}
