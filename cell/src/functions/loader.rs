//! µBench's `loader`: CPU, memory, disk and sleep stressors in that order, then a body of
//! random letters.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cellmesh_api::service::{DiskStress, Loader};
use rand::RngExt;
use rand::seq::SliceRandom;

use super::{BodySpec, Filler, FunctionError, Placement, blocking, body, cpu_work};

pub(super) async fn run(
    params: &Loader,
    scratch_dir: &Path,
    placement: Placement,
) -> Result<BodySpec, FunctionError> {
    let cpu = &params.cpu_stress;
    if cpu.run && cpu.thread_pool_size > 0 {
        // Each job draws its digit count once and runs `trials` computations (µBench).
        let digits: Vec<usize> = {
            let mut rng = rand::rng();
            let [low, high] = cpu.range_complexity;
            (0..cpu.thread_pool_size)
                .map(|_| rng.random_range(low..=high.max(low)) as usize)
                .collect()
        };
        let jobs = digits
            .into_iter()
            .map(|d| cpu_work(d, cpu.trials, placement));
        for result in futures::future::join_all(jobs).await {
            result?;
        }
    }
    let memory = &params.memory_stress;
    if memory.run {
        let (size, io, retain) = (memory.memory_size, memory.memory_io, memory.retain);
        blocking(placement, move || {
            let blocks = memory_stress(size, io);
            if retain {
                keep(blocks);
            }
        })
        .await?;
    }
    if params.disk_stress.run {
        let disk = params.disk_stress.clone();
        let dir = scratch_dir.to_owned();
        blocking(placement, move || disk_stress(&dir, &disk)).await??;
    }
    let sleep = &params.sleep_stress;
    if sleep.run {
        // Validated at load time: finite, 0..=3600 s.
        let duration = Duration::try_from_secs_f64(sleep.sleep_time).unwrap_or_default();
        tokio::time::sleep(duration).await;
    }
    let len = body::body_len(&mut rand::rng(), params.mean_body_kb());
    Ok(BodySpec {
        fill: Filler::Letters,
        len,
    })
}

/// Blocks kept by `memoryStress.retain` for the life of the process.
static RETAINED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Keeps `blocks` until the process ends (`memoryStress.retain`).
fn keep(blocks: Vec<Vec<u8>>) {
    // A panic elsewhere while holding the lock leaves a list that is still a valid list.
    let mut retained = RETAINED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    retained.extend(blocks);
}

/// Bytes kept by `memoryStress.retain` so far.
#[cfg(test)]
fn retained_bytes() -> usize {
    let retained = RETAINED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    retained.iter().map(Vec::len).sum()
}

/// Allocates `size` blocks of 1000 bytes, then reads one block and replaces one block `io`
/// times, cycling over the blocks (µBench's memory stressor). Returns the blocks, which the
/// caller frees (µBench) or keeps (`retain`).
fn memory_stress(size: u32, io: u32) -> Vec<Vec<u8>> {
    let size = size as usize;
    let mut blocks: Vec<Vec<u8>> = (0..size).map(|_| vec![b'A'; 1000]).collect();
    if size > 0 {
        for i in 0..io as usize {
            let index = i % size;
            std::hint::black_box(blocks[index][0]);
            blocks[index] = vec![b'A'; 1000];
        }
    }
    std::hint::black_box(blocks)
}

/// Writes `disk_write_block_count` random blocks to a fresh scratch file, fsyncs, reads the
/// blocks back in random order and removes the file (µBench's disk stressor).
fn disk_stress(dir: &Path, params: &DiskStress) -> Result<(), FunctionError> {
    let mut rng = rand::rng();
    // Only the last path component of the configured name: the spec must not choose where
    // the cell writes.
    let base = Path::new(&params.tmp_file_name)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("mubtestfile.txt");
    let path = dir.join(format!("{:016x}-{base}", rng.random::<u64>()));
    let scratch = Scratch(path);
    let fail = |source| FunctionError::Disk {
        path: scratch.0.display().to_string(),
        source,
    };
    let block_size = params.disk_write_block_size as usize;
    let count = params.disk_write_block_count as usize;
    let mut file = File::create_new(&scratch.0).map_err(fail)?;
    let mut block = vec![0u8; block_size];
    for _ in 0..count {
        rng.fill(&mut block[..]);
        file.write_all(&block).map_err(fail)?;
    }
    file.sync_all().map_err(fail)?;
    let mut offsets: Vec<u64> = (0..count).map(|i| (i * block_size) as u64).collect();
    offsets.shuffle(&mut rng);
    for offset in offsets {
        file.read_exact_at(&mut block, offset).map_err(fail)?;
    }
    drop(file);
    std::fs::remove_file(&scratch.0).map_err(fail)?;
    Ok(())
}

/// Removes the scratch file even when the stressor fails half-way.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellmesh_api::service::{CpuStress, MemoryStress, SleepStress};
    use std::time::Instant;

    fn quiet() -> Loader {
        Loader {
            sleep_stress: SleepStress {
                run: false,
                sleep_time: 0.0,
            },
            mean_response_size: 0.5,
            ..Loader::default()
        }
    }

    #[tokio::test]
    async fn default_loader_sleeps_and_answers_letters() {
        let dir = tempfile::tempdir().unwrap();
        let params = Loader {
            sleep_stress: SleepStress {
                run: true,
                sleep_time: 0.05,
            },
            ..Loader::default()
        };
        let start = Instant::now();
        let body = run(&params, dir.path(), Placement::Offload).await.unwrap();
        // A lower bound only: the sleep really happened.
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(body.fill, Filler::Letters);
        assert!(body.materialize().iter().all(u8::is_ascii_alphabetic));
    }

    #[tokio::test]
    async fn every_stressor_runs_and_leaves_no_scratch_file() {
        let dir = tempfile::tempdir().unwrap();
        let params = Loader {
            cpu_stress: CpuStress {
                run: true,
                range_complexity: [20, 30],
                thread_pool_size: 3,
                trials: 2,
            },
            memory_stress: MemoryStress {
                run: true,
                memory_size: 100,
                memory_io: 1000,
                retain: false,
            },
            disk_stress: DiskStress {
                run: true,
                tmp_file_name: "../../etc/escape.txt".into(),
                disk_write_block_count: 16,
                disk_write_block_size: 512,
            },
            ..quiet()
        };
        for placement in [Placement::Offload, Placement::InPlace] {
            run(&params, dir.path(), placement).await.unwrap();
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[tokio::test]
    async fn disk_stress_failure_names_the_file() {
        let params = Loader {
            disk_stress: DiskStress {
                run: true,
                ..DiskStress::default()
            },
            ..quiet()
        };
        let err = run(&params, Path::new("/nonexistent/dir"), Placement::Offload)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("disk stress failed on /nonexistent/dir/"),
            "{text}"
        );
        assert!(
            text.ends_with("mubtestfile.txt: No such file or directory (os error 2)"),
            "{text}"
        );
    }

    #[test]
    fn memory_stress_tolerates_zero_blocks() {
        assert!(memory_stress(0, 10).is_empty());
        assert_eq!(memory_stress(3, 10).len(), 3);
    }

    #[tokio::test]
    async fn retain_keeps_each_requests_blocks_and_the_default_frees_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = Loader {
            memory_stress: MemoryStress {
                run: true,
                memory_size: 200,
                memory_io: 10,
                retain: false,
            },
            ..quiet()
        };
        let before = retained_bytes();
        run(&params, dir.path(), Placement::Offload).await.unwrap();
        assert_eq!(
            retained_bytes(),
            before,
            "µBench's stressor frees its blocks"
        );
        params.memory_stress.retain = true;
        for served in 1..=3 {
            run(&params, dir.path(), Placement::InPlace).await.unwrap();
            assert_eq!(retained_bytes(), before + served * 200 * 1000);
        }
    }
}
