//! Open-loop send schedule: when each request is *due*, independent of how fast the server
//! answers.
//!
//! At rate `r`, request `i` of the whole run (counted from the start of the warm-up) is due at
//! `i / r` seconds. The run's `streams` (connections × HTTP/2 streams) take turns: stream `k`
//! of `K` sends requests `k, k + K, k + 2K, …`, so every stream runs at `r / K` with its phase
//! shifted by `k / r` and the aggregate is an even `r` (wrk2's model). A stream that falls
//! behind sends at once; its latency is still measured from the due time, which is the
//! coordinated-omission correction.
//!
//! With a burst of `b` (`--burst`), requests are due in groups: request `i` is due with the
//! first of its group, at `(i div b) · b / r`. The average rate stays `r`; every `b / r`
//! seconds `b` requests are due at once, on `b` different streams.
//!
//! All arithmetic is in integers (nanoseconds and milli-requests per second) so that slot
//! counts at window boundaries are exact: 200 req/s over 0.5 s schedules exactly 100 requests.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// The rate is held in requests per 1000 s, which gives rates a resolution of 0.001 req/s.
const MILLI: u128 = 1000;

/// A constant request rate, in thousandths of a request per second, due in bursts of
/// `burst` requests (1: evenly spaced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    milli_per_sec: u64,
    burst: u64,
}

/// Why a rate was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateError {
    #[error("must be a finite number greater than 0, got {0}")]
    NotPositive(f64),
    #[error("must be at least 0.001 requests per second, got {0}")]
    TooSmall(f64),
    #[error("must be at most 1e12 requests per second, got {0}")]
    TooLarge(f64),
}

impl Rate {
    /// A rate of `per_second` requests per second (fractions down to 0.001 are kept).
    pub fn per_second(per_second: f64) -> Result<Self, RateError> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(RateError::NotPositive(per_second));
        }
        if per_second > 1e12 {
            return Err(RateError::TooLarge(per_second));
        }
        let milli = (per_second * 1000.0).round();
        if milli < 1.0 {
            return Err(RateError::TooSmall(per_second));
        }
        // In range by the checks above, so the conversion is exact enough and cannot wrap.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Self {
            milli_per_sec: milli as u64,
            burst: 1,
        })
    }

    /// The same average rate, due in groups of `burst` requests at once (at least 1).
    pub fn with_burst(self, burst: u64) -> Self {
        Self {
            burst: burst.max(1),
            ..self
        }
    }

    /// Requests due at once (1 when evenly spaced).
    pub fn burst(self) -> u64 {
        self.burst
    }

    /// Requests per second as a float, for reports.
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(self) -> f64 {
        self.milli_per_sec as f64 / 1000.0
    }

    /// When global request `index` is due, counted from the start of the run.
    pub fn due(self, index: u64) -> Duration {
        let first = u128::from(index / self.burst * self.burst);
        let nanos = first * NANOS_PER_SEC * MILLI / u128::from(self.milli_per_sec);
        duration_from_nanos(nanos)
    }

    /// How many global requests are due strictly before `elapsed`: the smallest `n` with
    /// `due(n) >= elapsed`.
    pub fn slots_before(self, elapsed: Duration) -> u64 {
        // Group g (requests g·b … g·b + b − 1) is due at floor(g·b·1e12 / m) < t  ⇔
        // g·b·1e12 < t·m  ⇔  g < t·m / (b·1e12) (t in ns); every group due adds b requests.
        let numerator = elapsed.as_nanos() * u128::from(self.milli_per_sec);
        let burst = u128::from(self.burst);
        let groups = numerator.div_ceil(NANOS_PER_SEC * MILLI * burst);
        u64::try_from(groups * burst).unwrap_or(u64::MAX)
    }

    /// How many requests are due in `[from, to)`.
    pub fn slots_between(self, from: Duration, to: Duration) -> u64 {
        self.slots_before(to)
            .saturating_sub(self.slots_before(from))
    }
}

fn duration_from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 1e9 and fits in u32.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

/// The share of a [`Rate`] that one stream sends: every `streams`-th request, starting at
/// request `stream`.
#[derive(Clone, Copy, Debug)]
pub struct StreamSchedule {
    rate: Rate,
    stream: u64,
    streams: u64,
}

impl StreamSchedule {
    /// Stream `stream` of `streams` (0-based). `streams` must be at least 1.
    pub fn new(rate: Rate, stream: u64, streams: u64) -> Self {
        let streams = streams.max(1);
        Self {
            rate,
            stream: stream % streams,
            streams,
        }
    }

    /// When this stream's `n`-th request (0-based) is due, from the start of the run.
    pub fn due(&self, n: u64) -> Duration {
        self.rate
            .due(self.stream.saturating_add(n.saturating_mul(self.streams)))
    }

    /// How many of this stream's requests are due strictly before `elapsed`.
    pub fn slots_before(&self, elapsed: Duration) -> u64 {
        let global = self.rate.slots_before(elapsed);
        if global <= self.stream {
            0
        } else {
            (global - self.stream - 1) / self.streams + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn bursts_are_due_together_at_the_same_average_rate() {
        let rate = Rate::per_second(20.0).unwrap().with_burst(4);
        let due: Vec<Duration> = (0..9).map(|i| rate.due(i)).collect();
        assert_eq!(due[..4], [Duration::ZERO; 4]);
        assert_eq!(due[4..8], [ms(200); 4]);
        assert_eq!(due[8], ms(400));
        // Counting agrees with the due times: a group is due whole or not at all.
        assert_eq!(rate.slots_before(Duration::ZERO), 0);
        assert_eq!(rate.slots_before(Duration::from_nanos(1)), 4);
        assert_eq!(rate.slots_before(ms(200)), 4);
        assert_eq!(rate.slots_before(ms(201)), 8);
        assert_eq!(
            rate.slots_between(Duration::ZERO, Duration::from_secs(10)),
            200
        );
        for i in 0..100 {
            let before = rate.slots_before(rate.due(i));
            assert!(before <= i && i < rate.slots_before(rate.due(i) + Duration::from_nanos(1)));
        }
        // Four streams take one request of each burst each.
        let streams: Vec<Duration> = (0..4)
            .map(|k| StreamSchedule::new(rate, k, 4).due(1))
            .collect();
        assert_eq!(streams, [ms(200); 4]);
    }

    #[test]
    fn due_times_are_evenly_spaced() {
        let rate = Rate::per_second(1000.0).unwrap();
        assert_eq!(rate.due(0), Duration::ZERO);
        assert_eq!(rate.due(1), ms(1));
        assert_eq!(rate.due(1500), ms(1500));
    }

    #[test]
    fn fractional_rates_are_exact_to_the_nanosecond() {
        let rate = Rate::per_second(3.0).unwrap();
        assert_eq!(rate.due(1), Duration::from_nanos(333_333_333));
        assert_eq!(rate.due(3), Duration::from_secs(1));
        let rate = Rate::per_second(0.5).unwrap();
        assert_eq!(rate.due(1), Duration::from_secs(2));
    }

    #[test]
    fn slot_counts_are_exact_at_boundaries() {
        let rate = Rate::per_second(200.0).unwrap();
        // Requests 0..=99 are due before 0.5 s; request 100 is due exactly at 0.5 s.
        assert_eq!(rate.slots_before(ms(500)), 100);
        assert_eq!(rate.slots_before(Duration::from_nanos(500_000_001)), 101);
        assert_eq!(rate.slots_before(Duration::ZERO), 0);
        assert_eq!(rate.slots_before(Duration::from_nanos(1)), 1);
        // 10 req/s over 0.3 s: due at 0, 0.1, 0.2 → 3 (a float ceil(0.3·10) would say 4).
        let rate = Rate::per_second(10.0).unwrap();
        assert_eq!(rate.slots_before(ms(300)), 3);
        assert_eq!(rate.slots_between(ms(1000), ms(3000)), 20);
    }

    #[test]
    fn slots_before_agrees_with_due() {
        for per_sec in [1.0, 3.0, 7.5, 333.333, 100_000.0] {
            let rate = Rate::per_second(per_sec).unwrap();
            for i in 0..200 {
                let due = rate.due(i);
                assert_eq!(rate.slots_before(due), i, "rate {per_sec} index {i}");
                assert_eq!(rate.slots_before(due + Duration::from_nanos(1)), i + 1);
            }
        }
    }

    #[test]
    fn streams_interleave_and_partition_the_global_schedule() {
        let rate = Rate::per_second(100.0).unwrap();
        let streams: Vec<_> = (0..3).map(|k| StreamSchedule::new(rate, k, 3)).collect();
        // Stream k sends global requests k, k+3, …
        assert_eq!(streams[1].due(0), ms(10));
        assert_eq!(streams[1].due(2), ms(70));
        // Every window's slots are split among the streams with none lost or doubled.
        for end in [0, 5, 10, 11, 25, 30, 995, 1000, 1001] {
            let total: u64 = streams.iter().map(|s| s.slots_before(ms(end))).sum();
            assert_eq!(total, rate.slots_before(ms(end)), "end {end} ms");
        }
        let mut all: Vec<Duration> = streams
            .iter()
            .flat_map(|s| (0..10).map(|n| s.due(n)))
            .collect();
        all.sort();
        let expected: Vec<Duration> = (0..30).map(|i| rate.due(i)).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn rejects_nonsense_rates() {
        assert_eq!(Rate::per_second(0.0), Err(RateError::NotPositive(0.0)));
        assert!(matches!(
            Rate::per_second(-5.0),
            Err(RateError::NotPositive(_))
        ));
        assert!(matches!(
            Rate::per_second(f64::NAN),
            Err(RateError::NotPositive(_))
        ));
        assert!(matches!(
            Rate::per_second(0.0001),
            Err(RateError::TooSmall(_))
        ));
        assert!(matches!(
            Rate::per_second(1e13),
            Err(RateError::TooLarge(_))
        ));
        assert_eq!(Rate::per_second(2.5).unwrap().as_f64(), 2.5);
    }
}
