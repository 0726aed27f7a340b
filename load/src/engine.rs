//! The load loop: connections, streams, pacing, and what each request's outcome counts as.
//!
//! A run has `connections` tasks; each owns one connection at a time and `streams` request
//! loops on it (always 1 for HTTP/1.1). Every stream is a closed loop (send, wait for the
//! response, repeat) or follows its share of the open-loop [`Rate`]. The connection's driver is
//! polled in the same task as its streams.
//!
//! Timeline: `start` → warm-up → `window_start` → measurement → `window_end`. A request
//! belongs to the measurement when its reference time lies in the window: the send time in
//! closed loop, the due time in open loop. Nothing is sent after `window_end` (open loop: after
//! a 10 ms timer slack); requests in flight then are awaited (up to the timeout) and counted.
//! Open-loop slots that were due in the window but not sent by then are reported as `unsent`:
//! the connections were still busy with earlier requests.
//!
//! Failures: a failed connection attempt counts one `connect` error (in open loop it uses up
//! the earliest due slot; in closed loop the connection backs off before retrying). A broken
//! connection mid-request counts `io`; a timeout counts `timeout`. A connection the server
//! closes before serving anything counts `io` too, so a server that accepts and hangs up
//! shows up as errors instead of a silent zero.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::pin;
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::{Either, join_all, select};
use tokio::task::JoinSet;

use crate::conn;
use crate::plan::{Mode, Plan, Protocol, RequestTemplate};
use crate::report::Report;
use crate::schedule::StreamSchedule;
use crate::stats::{ErrorKind, Outcome, Recorder};

/// How often the progress callback is called.
const TICK: Duration = Duration::from_millis(200);
/// Closed-loop reconnect back-off after a failed connection: first and longest wait.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Open loop: a slot due inside the window may still be sent this long after the window
/// closes. tokio's timer wakes up to 1 ms late, so without it the last slot or two of every
/// stream would be counted as unsent on an idle machine.
const TIMER_SLACK: Duration = Duration::from_millis(10);

/// The phase a progress tick is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measuring,
    /// Sending has stopped; waiting for requests still in flight.
    Draining,
}

/// A progress sample: time since start and outcomes so far (warm-up included).
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    pub phase: Phase,
    pub elapsed: Duration,
    pub total: Duration,
    pub outcomes: u64,
    pub errors: u64,
}

/// State shared by all connection tasks of a run.
struct Shared {
    addr: SocketAddr,
    protocol: Protocol,
    template: RequestTemplate,
    timeout: Duration,
    start: Instant,
    window_start: Instant,
    window_end: Instant,
    recorder: Recorder,
}

impl Shared {
    fn measured(&self, reference: Instant) -> bool {
        reference >= self.window_start && reference < self.window_end
    }
}

/// Runs `plan` and returns the report. Blocks the calling thread; `on_tick` is called on it
/// about five times a second.
///
/// Like wrk, each of the plan's threads runs its own single-threaded event loop with a fixed
/// share of the connections (connection `c` on thread `c % threads`) and records into its own
/// shard: no work stealing, no cross-thread wake-ups, no shared counters on the request path.
pub fn run(plan: &Plan, mut on_tick: impl FnMut(Tick)) -> Result<Report> {
    let addr = resolve(&plan.target.host, plan.target.port)?;
    let template = plan
        .request_template()
        .context("cannot build the request from the arguments")?;
    let threads = plan.threads.clamp(1, plan.connections.max(1) as usize);
    let total_streams = plan.total_streams();
    let start = Instant::now();
    let window_start = start + plan.warmup;
    let window_end = window_start + plan.duration;
    let shared = Arc::new(Shared {
        addr,
        protocol: plan.protocol,
        template,
        timeout: plan.timeout,
        start,
        window_start,
        window_end,
        recorder: Recorder::new(threads, matches!(plan.mode, Mode::Open(_))),
    });

    let streams_per_connection = plan.streams as usize;
    let (alive, finished) = std::sync::mpsc::channel::<()>();
    let mut workers = Vec::with_capacity(threads);
    for thread in 0..threads {
        let connections: Vec<Vec<Stream>> = (thread..plan.connections as usize)
            .step_by(threads)
            .map(|connection| {
                (0..streams_per_connection)
                    .map(|k| {
                        let index = connection * streams_per_connection + k;
                        Stream::new(index, thread, plan.mode, total_streams)
                    })
                    .collect()
            })
            .collect();
        let shared = Arc::clone(&shared);
        // Held until the thread ends (also by panic): the channel closes when all are done.
        let alive = alive.clone();
        let worker = std::thread::Builder::new()
            .name(format!("load-{thread}"))
            .spawn(move || run_thread(&shared, connections, alive))
            .context("cannot start a load thread")?;
        workers.push(worker);
    }
    drop(alive);

    let total = plan.warmup + plan.duration;
    let mut next_tick = Instant::now() + TICK;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match finished.recv_timeout(wait) {
            Ok(()) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                next_tick += TICK;
                let now = Instant::now();
                let phase = if now < window_start {
                    Phase::Warmup
                } else if now < window_end {
                    Phase::Measuring
                } else {
                    Phase::Draining
                };
                let (outcomes, errors) = shared.recorder.progress();
                on_tick(Tick {
                    phase,
                    elapsed: now - start,
                    total,
                    outcomes,
                    errors,
                });
            }
        }
    }
    for worker in workers {
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(_) => bail!("a load thread panicked"),
        }
    }
    let stats = shared.recorder.snapshot();
    Ok(Report::new(plan, &stats))
}

/// One load thread: a single-threaded runtime driving its connections to the end.
fn run_thread(
    shared: &Arc<Shared>,
    connections: Vec<Vec<Stream>>,
    _alive: Sender<()>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a load thread's runtime")?;
    runtime.block_on(async {
        let mut tasks = JoinSet::new();
        for streams in connections {
            tasks.spawn(run_connection(Arc::clone(shared), streams));
        }
        while let Some(joined) = tasks.join_next().await {
            joined.context("a connection task failed")?;
        }
        Ok(())
    })
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    // Resolved once: per-connection lookups would measure the resolver, not the server.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}:{port}"))?
        .next()
        .with_context(|| format!("{host}:{port} resolved to no address"))
}

/// One request loop and its place in the schedule.
struct Stream {
    /// The recorder shard: the load thread's index.
    shard: usize,
    schedule: Option<StreamSchedule>,
    /// Open loop: slots used so far (sent or failed).
    slot: u64,
    done: bool,
}

impl Stream {
    /// Stream `index` of the run (its phase in the open-loop schedule), on thread `shard`.
    fn new(index: usize, shard: usize, mode: Mode, total_streams: usize) -> Self {
        let schedule = match mode {
            Mode::Closed => None,
            Mode::Open(rate) => Some(StreamSchedule::new(
                rate,
                index as u64,
                total_streams as u64,
            )),
        };
        Self {
            shard,
            schedule,
            slot: 0,
            done: false,
        }
    }

    /// When this stream wants to send next, or `None` (and `done`) when the run is over for
    /// it. In closed loop that is "now".
    fn next_send(&mut self, shared: &Shared, now: Instant) -> Option<Instant> {
        let at = match &self.schedule {
            Some(schedule) => shared.start + schedule.due(self.slot),
            None => now,
        };
        if self.done || at >= shared.window_end {
            self.done = true;
            return None;
        }
        Some(at)
    }

    /// Nothing is sent from this instant on.
    fn cutoff(&self, shared: &Shared) -> Instant {
        match self.schedule {
            Some(_) => shared.window_end + TIMER_SLACK,
            None => shared.window_end,
        }
    }

    /// Records a failure that happened without a request being sent (connect, early close)
    /// at `now`: in open loop it uses up the due slot.
    fn fail_attempt(&mut self, shared: &Shared, now: Instant, kind: ErrorKind) {
        let reference = match &self.schedule {
            Some(schedule) => {
                let due = shared.start + schedule.due(self.slot);
                self.slot += 1;
                due
            }
            None => now,
        };
        shared.recorder.record(
            self.shard,
            shared.measured(reference),
            Outcome::Failed(kind),
        );
    }

    /// Sends requests on `sender` until the run ends for this stream or the connection
    /// becomes unusable. Returns how many requests it sent.
    async fn run(&mut self, shared: &Shared, mut sender: conn::Sender) -> u64 {
        let mut sent = 0;
        loop {
            let Some(due) = self.next_send(shared, Instant::now()) else {
                return sent;
            };
            if self.schedule.is_some() && due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            if sender.ready().await.is_err() {
                return sent;
            }
            let started = Instant::now();
            if started >= self.cutoff(shared) {
                self.done = true;
                return sent;
            }
            let result =
                tokio::time::timeout(shared.timeout, sender.exchange(shared.template.build()))
                    .await;
            let finished = Instant::now();
            sent += 1;
            let reference = if self.schedule.is_some() {
                self.slot += 1;
                due
            } else {
                started
            };
            let (outcome, keep_connection) = match result {
                Ok(Ok((status, body_bytes))) => (
                    Outcome::Response {
                        status,
                        body_bytes,
                        latency: finished - reference,
                        service_time: finished - started,
                    },
                    true,
                ),
                Ok(Err(_)) => (Outcome::Failed(ErrorKind::Io), false),
                Err(_) => (
                    Outcome::Failed(ErrorKind::Timeout),
                    sender.reusable_after_timeout(),
                ),
            };
            shared
                .recorder
                .record(self.shard, shared.measured(reference), outcome);
            if !keep_connection {
                return sent;
            }
        }
    }
}

/// Owns one connection at a time for its streams: connects, runs the streams on it,
/// reconnects when it breaks, until every stream is done.
async fn run_connection(shared: Arc<Shared>, mut streams: Vec<Stream>) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let now = Instant::now();
        let Some((first, due)) = streams
            .iter_mut()
            .enumerate()
            .filter_map(|(i, stream)| stream.next_send(&shared, now).map(|due| (i, due)))
            .min_by_key(|(_, due)| *due)
        else {
            return;
        };
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        }
        let attempt = Instant::now();
        if attempt >= streams[first].cutoff(&shared) {
            return;
        }
        let failure = match conn::connect(shared.addr, shared.protocol, shared.timeout).await {
            Err(_) => Some(ErrorKind::Connect),
            Ok((sender, driver)) => {
                let sent = drive(driver.run(), run_streams(&shared, &mut streams, sender)).await;
                let unfinished = streams.iter().any(|stream| !stream.done);
                (sent == 0 && unfinished).then_some(ErrorKind::Io)
            }
        };
        match failure {
            None => backoff = BACKOFF_FIRST,
            Some(kind) => {
                streams[first].fail_attempt(&shared, attempt, kind);
                if streams[first].schedule.is_none() {
                    // Closed loop: pace retries so a dead server is not hammered with connects.
                    let resume = (Instant::now() + backoff).min(shared.window_end);
                    tokio::time::sleep_until(resume.into()).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Runs the streams of one connection; returns the number of requests they sent.
async fn run_streams(shared: &Shared, streams: &mut [Stream], sender: conn::Sender) -> u64 {
    match sender.share() {
        // HTTP/1.1: a single stream owns the connection.
        None => match streams.first_mut() {
            Some(stream) => stream.run(shared, sender).await,
            None => 0,
        },
        Some(_) => {
            let loops = streams.iter_mut().map(|stream| {
                let handle = sender.share();
                async move {
                    match handle {
                        Some(handle) => stream.run(shared, handle).await,
                        None => 0,
                    }
                }
            });
            let running = join_all(loops);
            // Dropping our own handle lets the connection close once the streams are done.
            drop(sender);
            running.await.into_iter().sum()
        }
    }
}

/// Polls the connection driver and the request loops together in this task. When the loops
/// finish first the driver is dropped (closing the connection); when the connection ends
/// first the loops run on and notice it.
async fn drive(driver: impl Future<Output = ()>, requests: impl Future<Output = u64>) -> u64 {
    match select(pin!(driver), pin!(requests)).await {
        Either::Left(((), requests)) => requests.await,
        Either::Right((sent, _driver)) => sent,
    }
}
