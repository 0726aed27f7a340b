//! Micro-batching of pipeline leaves (the Profile's `batch: {size, wait}`; mpservice's
//! `batch_size` / `batch_wait_time`).
//!
//! Contract:
//! - With `size > 1` every leaf (`function` or `exec`) of a pipeline instance collects the
//!   requests that reach it into batches: a batch starts with the first waiting request and
//!   closes when it holds `size` requests or `wait` has passed since that first one
//!   (requests already waiting are taken even with `wait: 0`). The batch is handed to the
//!   leaf as one call ([`super::Function::call_batch`], or one exec `{"batch": …}` line).
//! - Results go back to each caller: item *i*'s outputs and outcome belong to request *i*,
//!   in order; one item's error fails only that request.
//! - Deadlines stay per request: a request whose deadline passed while it waited for its
//!   batch is answered `DEADLINE_EXCEEDED` (504) and not processed; one whose caller went
//!   away (cancelled, e.g. at its deadline) is dropped from the batch and does not count
//!   toward `size`.
//! - The parameters are live ([`Batching::set`]): a hot-reloaded profile applies from the
//!   next batch on; `size <= 1` calls the leaf directly, as without batching.
//! - Batches of one leaf run concurrently with each other (the engine's `concurrency` and
//!   an exec stage's `workers` bound them), so a slow batch does not hold up the next.
//! - Every batch's size is reported to [`Batching`]'s sink (the engine's histogram, or the
//!   parent engine for a worker process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cellmesh_api::profile::Batch;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Emitter, Leaf};
use crate::engine::error::{StageError, StageErrorKind};

/// The batching parameters in force.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchParams {
    /// Largest batch; `0` or `1` = no batching.
    pub size: usize,
    /// How long a batch stays open after its first request.
    #[serde(with = "millis")]
    pub wait: Duration,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(wait: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

impl BatchParams {
    /// Whether requests are batched at all.
    pub fn enabled(&self) -> bool {
        self.size > 1
    }
}

impl From<&Batch> for BatchParams {
    fn from(batch: &Batch) -> Self {
        Self {
            size: batch.size as usize,
            wait: batch.wait.get(),
        }
    }
}

/// Where batch sizes go.
pub type BatchSink = Arc<dyn Fn(usize) + Send + Sync>;

/// Live batching parameters plus where to report batch sizes; cheap to clone (clones share
/// the parameters).
#[derive(Clone)]
pub struct Batching {
    params: Arc<watch::Sender<BatchParams>>,
    sink: BatchSink,
}

impl std::fmt::Debug for Batching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Batching").field(&self.params()).finish()
    }
}

impl Batching {
    /// Batching with `params`, reporting each batch's size to `sink`.
    pub fn new(params: BatchParams, sink: BatchSink) -> Self {
        Self {
            params: Arc::new(watch::Sender::new(params)),
            sink,
        }
    }

    /// No batching (and nothing reported) until [`Batching::set`] says otherwise.
    pub fn off() -> Self {
        Self::new(BatchParams::default(), Arc::new(|_| {}))
    }

    /// The parameters in force.
    pub fn params(&self) -> BatchParams {
        *self.params.borrow()
    }

    /// Change the parameters; batches formed from now on use them.
    pub fn set(&self, params: BatchParams) {
        self.params.send_if_modified(|current| {
            let changed = *current != params;
            *current = params;
            changed
        });
    }

    /// Follow parameter changes (process workers forward them to their children).
    pub fn subscribe(&self) -> watch::Receiver<BatchParams> {
        self.params.subscribe()
    }

    /// Report a batch of `size` requests.
    pub fn record(&self, size: usize) {
        (self.sink)(size);
    }
}

/// Batch sizes seen by an engine: a Prometheus histogram plus the largest batch.
#[derive(Debug)]
pub struct BatchStats {
    /// Sizes of the batches handed to leaves.
    pub histogram: Histogram,
    batches: AtomicU64,
    items: AtomicU64,
    largest: AtomicU64,
}

impl Default for BatchStats {
    fn default() -> Self {
        Self {
            // 1, 2, 4 … 512.
            histogram: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            batches: AtomicU64::new(0),
            items: AtomicU64::new(0),
            largest: AtomicU64::new(0),
        }
    }
}

/// The batch figures in `/info`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    /// Batches handed to leaves.
    pub batches: u64,
    /// Requests in those batches.
    pub items: u64,
    /// `items / batches` (0 without batches).
    pub mean_size: f64,
    /// The largest batch so far.
    pub largest: u64,
}

impl BatchStats {
    /// Count one batch.
    pub fn record(&self, size: usize) {
        let size = size as u64;
        self.histogram.observe(size as f64);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(size, Ordering::Relaxed);
        self.largest.fetch_max(size, Ordering::Relaxed);
    }

    /// The figures for `/info`.
    pub fn summary(&self) -> BatchSummary {
        let batches = self.batches.load(Ordering::Relaxed);
        let items = self.items.load(Ordering::Relaxed);
        BatchSummary {
            batches,
            items,
            mean_size: if batches == 0 {
                0.0
            } else {
                items as f64 / batches as f64
            },
            largest: self.largest.load(Ordering::Relaxed),
        }
    }
}

/// One request of a batch, as a leaf sees it.
pub struct BatchItem {
    /// The request value reaching the leaf.
    pub input: Value,
    /// Where this request's outputs go.
    pub out: Emitter,
}

struct Waiting {
    input: Value,
    out: Emitter,
    deadline: Option<Instant>,
    done: oneshot::Sender<Result<(), StageError>>,
}

/// The batch collector of one leaf; its task starts on first use.
#[derive(Default)]
pub(crate) struct Batcher {
    queue: OnceLock<mpsc::UnboundedSender<Waiting>>,
}

impl Batcher {
    /// Run `input` on `leaf` as part of a batch and return its own outcome.
    pub(crate) async fn call(
        &self,
        leaf: &Arc<Leaf>,
        batching: &Batching,
        input: Value,
        out: &Emitter,
        deadline: Option<Instant>,
    ) -> Result<(), StageError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // Spawned on the runtime running this pipeline instance (thread workers have
            // their own); it ends when the pipeline, which holds the sender, is dropped.
            tokio::spawn(collect(rx, Arc::clone(leaf), batching.clone()));
            tx
        });
        let (done, outcome) = oneshot::channel();
        let stopped = || leaf.error(StageErrorKind::Failed, "the batch collector stopped");
        queue
            .send(Waiting {
                input,
                out: out.clone(),
                deadline,
                done,
            })
            .map_err(|_| stopped())?;
        outcome.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Form batches from `queue` and run each on `leaf`.
async fn collect(mut queue: mpsc::UnboundedReceiver<Waiting>, leaf: Arc<Leaf>, batching: Batching) {
    while let Some(first) = queue.recv().await {
        let params = batching.params();
        let closes = tokio::time::Instant::now() + params.wait;
        let mut batch = vec![first];
        while batch.len() < params.size.max(1) {
            // `timeout_at` polls the queue before looking at the clock, so requests already
            // waiting join even when `wait` is zero or over.
            match tokio::time::timeout_at(closes, queue.recv()).await {
                Ok(Some(next)) => {
                    // Requests whose callers left (e.g. expired) give their place away.
                    batch.retain(|waiting| !waiting.done.is_closed());
                    batch.push(next);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let live = admit(batch, Instant::now(), &leaf);
        if live.is_empty() {
            continue;
        }
        batching.record(live.len());
        tokio::spawn(run_batch(Arc::clone(&leaf), live));
    }
}

/// Drop cancelled requests and answer expired ones; the rest form the batch.
fn admit(batch: Vec<Waiting>, now: Instant, leaf: &Leaf) -> Vec<Waiting> {
    batch
        .into_iter()
        .filter_map(|item| {
            if item.done.is_closed() {
                return None;
            }
            match item.deadline {
                Some(deadline) if deadline <= now => {
                    let _ = item.done.send(Err(leaf.error(
                        StageErrorKind::DeadlineExceeded,
                        "the request's deadline passed while it waited for its batch",
                    )));
                    None
                }
                _ => Some(item),
            }
        })
        .collect()
}

async fn run_batch(leaf: Arc<Leaf>, batch: Vec<Waiting>) {
    let (items, answers): (Vec<BatchItem>, Vec<_>) = batch
        .into_iter()
        .map(|w| {
            (
                BatchItem {
                    input: w.input,
                    out: w.out,
                },
                w.done,
            )
        })
        .unzip();
    let count = items.len();
    let mut results = leaf.call_batch(items).await;
    // A leaf answering the wrong number of results is a bug; never leave a caller hanging.
    results.resize_with(count, || {
        Err(leaf.error(
            StageErrorKind::Failed,
            "the batch returned fewer results than requests",
        ))
    });
    for (answer, result) in answers.into_iter().zip(results) {
        let _ = answer.send(result);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use cellmesh_api::pipeline::Stage;
    use futures::future::{BoxFuture, join_all};
    use serde_json::json;

    use super::*;
    use crate::engine::pipeline::{Function, Functions, Pipeline};

    /// `record`: remembers each batch's inputs; emits `input * 10` per item and fails
    /// items whose input is negative.
    #[derive(Default)]
    struct Record(Mutex<Vec<Vec<i64>>>);

    impl Function for Record {
        fn call<'a>(&'a self, input: Value, out: &'a Emitter) -> BoxFuture<'a, Result<(), String>> {
            // Unbatched calls are recorded as batches of one.
            Box::pin(async move {
                let mut results = self
                    .call_batch(vec![BatchItem {
                        input,
                        out: out.clone(),
                    }])
                    .await;
                results.pop().unwrap_or(Ok(()))
            })
        }

        fn call_batch(&self, items: Vec<BatchItem>) -> BoxFuture<'_, Vec<Result<(), String>>> {
            Box::pin(async move {
                let inputs: Vec<i64> = items.iter().map(|i| i.input.as_i64().unwrap()).collect();
                self.0.lock().unwrap().push(inputs.clone());
                items
                    .iter()
                    .zip(inputs)
                    .map(|(item, n)| {
                        if n < 0 {
                            Err(format!("negative input {n}"))
                        } else {
                            item.out.emit(json!(n * 10))
                        }
                    })
                    .collect()
            })
        }
    }

    struct Fixture {
        pipeline: Arc<Pipeline>,
        record: Arc<Record>,
        batching: Batching,
        sizes: Arc<BatchStats>,
    }

    fn fixture(size: usize, wait_ms: u64) -> Fixture {
        let record = Arc::new(Record::default());
        let mut functions = Functions::builtin();
        let shared = Arc::clone(&record);
        functions.register("record", move |_| {
            Ok(Arc::clone(&shared) as Arc<dyn Function>)
        });
        let sizes = Arc::new(BatchStats::default());
        let stats = Arc::clone(&sizes);
        let batching = Batching::new(
            BatchParams {
                size,
                wait: Duration::from_millis(wait_ms),
            },
            Arc::new(move |n| stats.record(n)),
        );
        let spec: Stage = serde_yaml::from_str("name: model\nfunction: record").unwrap();
        let pipeline = Pipeline::compile_batched(&spec, &functions, &batching).unwrap();
        Fixture {
            pipeline: Arc::new(pipeline),
            record,
            batching,
            sizes,
        }
    }

    impl Fixture {
        /// Run every input concurrently; each caller's own result.
        async fn run_all(&self, inputs: &[i64]) -> Vec<Result<Vec<Value>, StageError>> {
            join_all(
                inputs
                    .iter()
                    .map(|n| self.pipeline.run_collect_until(json!(n), None)),
            )
            .await
        }

        fn batches(&self) -> Vec<Vec<i64>> {
            std::mem::take(&mut *self.record.0.lock().unwrap())
        }
    }

    // Real clock (tokio's paused clock needs the `test-util` feature, which would rebuild
    // tokio for the whole workspace). Each test makes its batches close by size, or
    // spaces requests far apart relative to `wait`; nothing asserts a duration.

    #[tokio::test]
    async fn batches_fill_up_to_size_in_arrival_order_and_answer_each_caller() {
        let f = fixture(4, 60_000);
        let inputs: Vec<i64> = (0..8).collect();
        let results = f.run_all(&inputs).await;
        assert_eq!(f.batches(), [vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        for (n, result) in inputs.iter().zip(results) {
            assert_eq!(
                result.unwrap(),
                [json!(n * 10)],
                "caller {n} got its own output"
            );
        }
        assert_eq!(
            f.sizes.summary(),
            BatchSummary {
                batches: 2,
                items: 8,
                mean_size: 4.0,
                largest: 4
            }
        );
    }

    #[tokio::test]
    async fn a_lone_request_runs_once_wait_runs_out_and_later_ones_start_a_new_batch() {
        let f = fixture(8, 20);
        // Alone, the batch can only close by its wait; the test's own timeout bounds it.
        let lone = f.pipeline.run_collect_until(json!(1), None).await.unwrap();
        assert_eq!(lone, [json!(10)]);
        // Far past the previous batch's wait: a batch of its own again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let next = f.pipeline.run_collect_until(json!(2), None).await.unwrap();
        assert_eq!(next, [json!(20)]);
        assert_eq!(f.batches(), [vec![1], vec![2]]);
    }

    #[tokio::test]
    async fn a_request_arriving_within_wait_joins_the_open_batch() {
        let f = fixture(2, 60_000);
        let (first, second) = tokio::join!(f.pipeline.run_collect_until(json!(1), None), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.pipeline.run_collect_until(json!(2), None).await
        },);
        assert_eq!(
            (first.unwrap(), second.unwrap()),
            (vec![json!(10)], vec![json!(20)])
        );
        assert_eq!(f.batches(), [vec![1, 2]]);
    }

    #[tokio::test]
    async fn one_items_error_fails_only_that_item() {
        let f = fixture(4, 60_000);
        let results = f.run_all(&[1, -2, 3, -4]).await;
        assert_eq!(f.batches(), [vec![1, -2, 3, -4]], "one batch");
        assert_eq!(results[0].as_ref().unwrap(), &[json!(10)]);
        assert_eq!(results[2].as_ref().unwrap(), &[json!(30)]);
        for (i, n) in [(1, -2), (3, -4)] {
            let error = results[i].as_ref().unwrap_err();
            assert_eq!(error.stage, "root", "the error names the stage");
            assert_eq!(error.message, format!("negative input {n}"));
        }
    }

    #[tokio::test]
    async fn an_expired_request_is_answered_deadline_exceeded_and_not_processed() {
        let f = fixture(2, 60_000);
        let expired = Instant::now();
        let later = Instant::now() + Duration::from_secs(3600);
        let (gone, fine) = tokio::join!(
            f.pipeline.run_collect_until(json!(7), Some(expired)),
            f.pipeline.run_collect_until(json!(8), Some(later)),
        );
        let error = gone.unwrap_err();
        assert_eq!(error.kind, StageErrorKind::DeadlineExceeded);
        assert_eq!(error.stage, "root", "the error names the stage");
        assert_eq!(fine.unwrap(), [json!(80)]);
        assert_eq!(f.batches(), [vec![8]], "the expired request never ran");
    }

    #[tokio::test]
    async fn changed_parameters_apply_from_the_next_batch() {
        let f = fixture(4, 60_000);
        f.run_all(&[1, 2, 3, 4]).await;
        f.batching.set(BatchParams {
            size: 2,
            wait: Duration::from_millis(60_000),
        });
        f.run_all(&[5, 6, 7, 8]).await;
        f.batching.set(BatchParams::default());
        f.run_all(&[9, 10]).await;
        assert_eq!(
            f.batches(),
            [
                vec![1, 2, 3, 4],
                vec![5, 6],
                vec![7, 8],
                // Batching off: the leaf is called per request.
                vec![9],
                vec![10]
            ]
        );
    }
}
