//! Recording outcomes while the load runs, cheaply and from many tasks at once.
//!
//! Each stream records into one of a few shards (a mutex around HDR histograms and
//! counters), chosen by its index, so a recording is one uncontended lock and no shared
//! atomic counters bounce between cores. Memory is bounded by the shard count, not by the
//! number of connections. [`Recorder::snapshot`] merges the shards.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, from 1 µs to one hour, to 3 significant digits.
const HIST_LOW_US: u64 = 1;
const HIST_HIGH_US: u64 = 3_600_000_000;
const HIST_SIGFIG: u8 = 3;

/// Why a request did not produce a successful (2xx) response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The TCP connection or the HTTP handshake failed (refused, unreachable, timed out).
    Connect,
    /// No complete response within `--timeout`.
    Timeout,
    /// The connection broke while sending the request or reading the response.
    Io,
    /// A 3xx response (redirects are not followed).
    Status3xx,
    /// A 4xx response.
    Status4xx,
    /// A 5xx response.
    Status5xx,
    /// Any other non-2xx status (1xx, or a non-standard code ≥ 600).
    StatusOther,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Status3xx,
        ErrorKind::Status4xx,
        ErrorKind::Status5xx,
        ErrorKind::StatusOther,
    ];

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Status3xx => "status_3xx",
            ErrorKind::Status4xx => "status_4xx",
            ErrorKind::Status5xx => "status_5xx",
            ErrorKind::StatusOther => "status_other",
        }
    }

    /// The error kind of a response status, or `None` for a success (2xx).
    pub fn of_status(status: u16) -> Option<ErrorKind> {
        match status {
            200..=299 => None,
            300..=399 => Some(ErrorKind::Status3xx),
            400..=499 => Some(ErrorKind::Status4xx),
            500..=599 => Some(ErrorKind::Status5xx),
            _ => Some(ErrorKind::StatusOther),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What happened to one request.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// A complete response. `latency` is from the send time (closed loop) or from the
    /// intended send time (open loop); `service_time` is always from the actual send.
    Response {
        status: u16,
        body_bytes: u64,
        latency: Duration,
        service_time: Duration,
    },
    /// No response: connect failure, timeout or broken connection.
    Failed(ErrorKind),
}

/// Everything recorded by one shard (or, after merging, by the whole run).
#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency of successful (2xx) responses, µs.
    pub latency: Histogram<u64>,
    /// Service time (actual send → response) of successful responses, µs. Only kept in
    /// open loop, where it differs from `latency`.
    pub service_time: Option<Histogram<u64>>,
    /// Responses by status code (all codes, successes included).
    pub statuses: BTreeMap<u16, u64>,
    /// Failures by kind (non-2xx statuses included).
    pub errors: [u64; ErrorKind::ALL.len()],
    pub body_bytes: u64,
    /// Outcomes seen at any time, warm-up included: drives the progress display.
    pub seen: u64,
    /// Failures seen at any time, warm-up included.
    pub seen_errors: u64,
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants known to be valid for hdrhistogram.
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("constant histogram bounds are valid")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl Stats {
    pub fn new(keep_service_time: bool) -> Self {
        Self {
            latency: new_histogram(),
            service_time: keep_service_time.then(new_histogram),
            statuses: BTreeMap::new(),
            errors: [0; ErrorKind::ALL.len()],
            body_bytes: 0,
            seen: 0,
            seen_errors: 0,
        }
    }

    /// Records one outcome; `measured` is false during warm-up (only progress counts).
    pub fn record(&mut self, measured: bool, outcome: Outcome) {
        self.seen += 1;
        let failure = match outcome {
            Outcome::Response { status, .. } => ErrorKind::of_status(status),
            Outcome::Failed(kind) => Some(kind),
        };
        if failure.is_some() {
            self.seen_errors += 1;
        }
        if !measured {
            return;
        }
        if let Outcome::Response {
            status,
            body_bytes,
            latency,
            service_time,
        } = outcome
        {
            *self.statuses.entry(status).or_default() += 1;
            self.body_bytes += body_bytes;
            if failure.is_none() {
                self.latency.saturating_record(micros(latency));
                if let Some(hist) = &mut self.service_time {
                    hist.saturating_record(micros(service_time));
                }
            }
        }
        if let Some(kind) = failure {
            self.errors[kind.index()] += 1;
        }
    }

    /// Adds another shard's counts to this one.
    pub fn merge(&mut self, other: &Stats) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        if let (Some(mine), Some(theirs)) = (&mut self.service_time, &other.service_time) {
            let _ = mine.add(theirs);
        }
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        self.body_bytes += other.body_bytes;
        self.seen += other.seen;
        self.seen_errors += other.seen_errors;
    }

    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }

    /// Measured responses (any status).
    pub fn responses(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Measured successful (2xx) responses.
    pub fn successes(&self) -> u64 {
        self.latency.len()
    }

    /// Measured outcomes: responses plus failures without a response.
    pub fn requests(&self) -> u64 {
        let no_response = self.error_count(ErrorKind::Connect)
            + self.error_count(ErrorKind::Timeout)
            + self.error_count(ErrorKind::Io);
        self.responses() + no_response
    }
}

/// Shared, sharded recording target for one run.
pub struct Recorder {
    shards: Box<[Mutex<Stats>]>,
    keep_service_time: bool,
}

impl Recorder {
    /// `shards` is clamped to at least 1.
    pub fn new(shards: usize, keep_service_time: bool) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| Mutex::new(Stats::new(keep_service_time)))
            .collect();
        Self {
            shards,
            keep_service_time,
        }
    }

    fn shard(&self, stream: usize) -> MutexGuard<'_, Stats> {
        // A panic while holding the lock cannot leave the counters half-updated in a way
        // that matters for a report, so a poisoned lock is simply taken over.
        self.shards[stream % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn record(&self, stream: usize, measured: bool, outcome: Outcome) {
        self.shard(stream).record(measured, outcome);
    }

    /// (outcomes seen, failures seen), warm-up included: cheap enough for a progress tick.
    pub fn progress(&self) -> (u64, u64) {
        (0..self.shards.len())
            .map(|i| {
                let shard = self.shard(i);
                (shard.seen, shard.seen_errors)
            })
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    /// All shards merged.
    pub fn snapshot(&self) -> Stats {
        let mut total = Stats::new(self.keep_service_time);
        for i in 0..self.shards.len() {
            total.merge(&self.shard(i));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, latency_ms: u64) -> Outcome {
        Outcome::Response {
            status,
            body_bytes: 10,
            latency: Duration::from_millis(latency_ms),
            service_time: Duration::from_millis(1),
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(ErrorKind::of_status(200), None);
        assert_eq!(ErrorKind::of_status(204), None);
        assert_eq!(ErrorKind::of_status(301), Some(ErrorKind::Status3xx));
        assert_eq!(ErrorKind::of_status(404), Some(ErrorKind::Status4xx));
        assert_eq!(ErrorKind::of_status(503), Some(ErrorKind::Status5xx));
        assert_eq!(ErrorKind::of_status(101), Some(ErrorKind::StatusOther));
        assert_eq!(ErrorKind::of_status(799), Some(ErrorKind::StatusOther));
    }

    #[test]
    fn warmup_outcomes_only_count_as_progress() {
        let mut stats = Stats::new(false);
        stats.record(false, response(200, 5));
        stats.record(false, Outcome::Failed(ErrorKind::Connect));
        assert_eq!((stats.seen, stats.seen_errors), (2, 1));
        assert_eq!(stats.requests(), 0);
        assert_eq!(stats.successes(), 0);
        assert_eq!(stats.error_count(ErrorKind::Connect), 0);
    }

    #[test]
    fn failures_and_error_statuses_are_counted_apart_from_successes() {
        let mut stats = Stats::new(true);
        stats.record(true, response(200, 5));
        stats.record(true, response(503, 1));
        stats.record(true, response(404, 1));
        stats.record(true, Outcome::Failed(ErrorKind::Timeout));
        stats.record(true, Outcome::Failed(ErrorKind::Io));
        assert_eq!(stats.requests(), 5);
        assert_eq!(stats.responses(), 3);
        assert_eq!(stats.successes(), 1);
        assert_eq!(stats.error_count(ErrorKind::Status5xx), 1);
        assert_eq!(stats.error_count(ErrorKind::Status4xx), 1);
        assert_eq!(stats.error_count(ErrorKind::Timeout), 1);
        assert_eq!(stats.error_count(ErrorKind::Io), 1);
        assert_eq!(stats.body_bytes, 30);
        // Only the success is in the latency histograms.
        assert_eq!(stats.latency.max(), stats.latency.highest_equivalent(5000));
        assert_eq!(stats.service_time.as_ref().map(Histogram::len), Some(1));
    }

    #[test]
    fn shards_merge_into_one_total() {
        let recorder = Recorder::new(3, false);
        for stream in 0..9 {
            recorder.record(stream, true, response(200, stream as u64 + 1));
        }
        recorder.record(4, true, Outcome::Failed(ErrorKind::Connect));
        recorder.record(5, false, response(200, 1));
        let total = recorder.snapshot();
        assert_eq!(total.successes(), 9);
        assert_eq!(total.requests(), 10);
        assert_eq!(total.statuses.get(&200), Some(&9));
        assert_eq!(recorder.progress(), (11, 1));
        assert_eq!(total.latency.max(), total.latency.highest_equivalent(9000));
    }
}
