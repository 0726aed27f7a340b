//! The run's report: built from the merged [`Stats`], printed as a table or serialised as
//! JSON (the JSON field names are a stable interface; `cargo xtask bench` reads them).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::plan::{Mode, Plan};
use crate::stats::{ErrorKind, Stats};

/// Latency summary in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn from_micros(hist: &Histogram<u64>) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        #[allow(clippy::cast_precision_loss)]
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: hist.len(),
            min: ms(hist.min()),
            mean: hist.mean() / 1000.0,
            p50: ms(hist.value_at_quantile(0.50)),
            p90: ms(hist.value_at_quantile(0.90)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
        }
    }
}

/// What was run and what came back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub url: String,
    pub method: String,
    pub protocol: String,
    /// `closed` or `open`.
    pub mode: String,
    pub connections: u32,
    pub streams_per_connection: u32,
    pub threads: usize,
    /// Open loop: the requested total rate.
    pub target_rate: Option<f64>,
    /// Open loop with `--burst`: requests due at once (absent when evenly spaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Outcomes in the window: responses plus requests that got none.
    pub requests: u64,
    /// Responses of any status in the window.
    pub responses: u64,
    /// 2xx responses in the window.
    pub successes: u64,
    /// Responses per second of measurement (all statuses, like wrk's Requests/sec).
    pub throughput_rps: f64,
    /// Successful responses per second.
    pub success_rps: f64,
    pub received_bytes: u64,
    /// Open loop: requests due in the window, and how many of them were never sent because
    /// the connections were still busy when the window closed.
    pub scheduled: Option<u64>,
    pub unsent: Option<u64>,
    /// What latency is measured from: `send` (closed loop) or `due` (open loop,
    /// coordinated-omission corrected).
    pub latency_from: String,
    /// Latency of successful responses.
    pub latency_ms: Percentiles,
    /// Open loop: time from the actual send to the response, for comparison.
    pub service_time_ms: Option<Percentiles>,
    /// Failures by kind, every kind present (0 when none).
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    /// Responses by status code.
    pub status_codes: BTreeMap<u16, u64>,
}

impl Report {
    pub fn new(plan: &Plan, stats: &Stats) -> Self {
        let duration_s = plan.duration.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let per_second = |count: u64| count as f64 / duration_s;
        let errors: BTreeMap<String, u64> = ErrorKind::ALL
            .iter()
            .map(|kind| (kind.name().to_owned(), stats.error_count(*kind)))
            .collect();
        let requests = stats.requests();
        let scheduled = match plan.mode {
            Mode::Closed => None,
            Mode::Open(rate) => Some(rate.slots_between(plan.warmup, plan.warmup + plan.duration)),
        };
        Self {
            url: plan.target.url(),
            method: plan.method.to_string(),
            protocol: plan.protocol.name().to_owned(),
            mode: match plan.mode {
                Mode::Closed => "closed",
                Mode::Open(_) => "open",
            }
            .to_owned(),
            connections: plan.connections,
            streams_per_connection: plan.streams,
            threads: plan.threads,
            target_rate: match plan.mode {
                Mode::Closed => None,
                Mode::Open(rate) => Some(rate.as_f64()),
            },
            burst: match plan.mode {
                Mode::Open(rate) if rate.burst() > 1 => Some(rate.burst()),
                _ => None,
            },
            warmup_s: plan.warmup.as_secs_f64(),
            duration_s,
            requests,
            responses: stats.responses(),
            successes: stats.successes(),
            throughput_rps: per_second(stats.responses()),
            success_rps: per_second(stats.successes()),
            received_bytes: stats.body_bytes,
            scheduled,
            unsent: scheduled.map(|scheduled| scheduled.saturating_sub(requests)),
            latency_from: match plan.mode {
                Mode::Closed => "send",
                Mode::Open(_) => "due",
            }
            .to_owned(),
            latency_ms: Percentiles::from_micros(&stats.latency),
            service_time_ms: stats.service_time.as_ref().map(Percentiles::from_micros),
            error_total: errors.values().sum(),
            errors,
            status_codes: stats.statuses.clone(),
        }
    }

    /// Whether at least one request succeeded.
    pub fn any_success(&self) -> bool {
        self.successes > 0
    }

    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mode = match self.target_rate {
            None => "closed loop".to_owned(),
            Some(rate) => match self.burst {
                Some(burst) => format!("open loop at {} req/s in bursts of {burst}", number(rate)),
                None => format!("open loop at {} req/s", number(rate)),
            },
        };
        let streams = if self.streams_per_connection > 1 {
            format!(" × {} streams", self.streams_per_connection)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "target      {} {} ({})",
            self.method, self.url, self.protocol
        );
        let _ = writeln!(
            out,
            "load        {mode}, {} connections{streams}, {} threads; {} warm-up, {} measured",
            self.connections,
            self.threads,
            seconds(self.warmup_s),
            seconds(self.duration_s),
        );
        let _ = writeln!(
            out,
            "requests    {} ({} req/s), {} ok ({} req/s)",
            self.requests,
            number(self.throughput_rps),
            self.successes,
            number(self.success_rps),
        );
        if let (Some(scheduled), Some(unsent)) = (self.scheduled, self.unsent) {
            let _ = writeln!(out, "scheduled   {scheduled}, unsent {unsent}");
        }
        let _ = writeln!(out, "received    {}", bytes(self.received_bytes));
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<18}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let label = if self.latency_from == "due" {
            "  from due time"
        } else {
            "  from send"
        };
        latency_row(&mut out, label, &self.latency_ms);
        if let Some(service) = &self.service_time_ms {
            latency_row(&mut out, "  service time", service);
        }
        let _ = writeln!(out);
        let errors: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        let _ = writeln!(
            out,
            "errors      {}",
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            }
        );
        if !self.status_codes.is_empty() {
            let statuses: Vec<String> = self
                .status_codes
                .iter()
                .map(|(code, count)| format!("{code} × {count}"))
                .collect();
            let _ = writeln!(out, "status      {}", statuses.join(", "));
        }
        out
    }
}

fn latency_row(out: &mut String, label: &str, p: &Percentiles) {
    if p.count == 0 {
        let _ = writeln!(out, "{label:<18}{:>9}", "-");
        return;
    }
    let _ = writeln!(
        out,
        "{label:<18}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}",
        p.p50, p.p90, p.p99, p.p999, p.max, p.mean
    );
}

/// `12345.6` → `12,345.6`; whole numbers without decimals.
fn number(value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = rounded.trunc().abs() as u64;
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if rounded < 0.0 { "-" } else { "" };
    let tenths = ((rounded.abs() - rounded.abs().trunc()) * 10.0).round();
    if tenths == 0.0 {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{tenths}")
    }
}

fn seconds(value: f64) -> String {
    format!("{}s", number(value))
}

fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    #[allow(clippy::cast_precision_loss)]
    let mut value = count as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.2} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Protocol, Target};
    use crate::schedule::Rate;
    use crate::stats::Outcome;
    use bytes::Bytes;
    use http::{HeaderMap, Method};
    use std::time::Duration;

    fn plan(mode: Mode) -> Plan {
        Plan {
            target: Target {
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into(),
                path_and_query: "/api/v1".into(),
            },
            method: Method::GET,
            body: Bytes::new(),
            headers: HeaderMap::new(),
            protocol: Protocol::Http1,
            mode,
            connections: 32,
            streams: 1,
            threads: 2,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }

    fn ok(latency_ms: u64) -> Outcome {
        Outcome::Response {
            status: 200,
            body_bytes: 10,
            latency: Duration::from_millis(latency_ms),
            service_time: Duration::from_millis(1),
        }
    }

    fn sample_stats(open: bool) -> Stats {
        let mut stats = Stats::new(open);
        for ms in 1..=100 {
            stats.record(true, ok(ms));
        }
        stats.record(
            true,
            Outcome::Response {
                status: 503,
                body_bytes: 0,
                latency: Duration::from_millis(1),
                service_time: Duration::from_millis(1),
            },
        );
        stats.record(true, Outcome::Failed(ErrorKind::Connect));
        stats.record(false, ok(1000)); // warm-up: not reported
        stats
    }

    #[test]
    fn closed_loop_report_counts_and_rates() {
        let report = Report::new(&plan(Mode::Closed), &sample_stats(false));
        assert_eq!(report.mode, "closed");
        assert_eq!(report.requests, 102);
        assert_eq!(report.responses, 101);
        assert_eq!(report.successes, 100);
        assert_eq!(report.throughput_rps, 50.5);
        assert_eq!(report.success_rps, 50.0);
        assert_eq!(report.received_bytes, 1000);
        assert_eq!(report.errors["connect"], 1);
        assert_eq!(report.errors["status_5xx"], 1);
        assert_eq!(report.errors["timeout"], 0);
        assert_eq!(report.error_total, 2);
        assert_eq!(report.status_codes[&503], 1);
        assert_eq!(report.scheduled, None);
        assert_eq!(report.latency_from, "send");
        assert_eq!(report.latency_ms.count, 100);
        assert_eq!(report.latency_ms.p50, 50.015); // hdr bucket of 50 ms at 3 digits
        assert!((99.0..=100.1).contains(&report.latency_ms.p99));
        assert!(report.service_time_ms.is_none());
        assert!(report.any_success());
    }

    #[test]
    fn open_loop_report_has_schedule_and_service_time() {
        let rate = Rate::per_second(60.0).unwrap();
        let report = Report::new(&plan(Mode::Open(rate)), &sample_stats(true));
        assert_eq!(report.mode, "open");
        assert_eq!(report.target_rate, Some(60.0));
        assert_eq!(report.scheduled, Some(120));
        assert_eq!(report.unsent, Some(18));
        assert_eq!(report.latency_from, "due");
        assert_eq!(report.service_time_ms.as_ref().map(|p| p.count), Some(100));
    }

    #[test]
    fn json_round_trips_with_stable_field_names() {
        let report = Report::new(&plan(Mode::Closed), &sample_stats(false));
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "throughput_rps",
            "success_rps",
            "latency_ms",
            "errors",
            "status_codes",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["latency_ms"]["p99"], report.latency_ms.p99);
        assert_eq!(json["errors"]["connect"], 1);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn table_shows_every_section() {
        let table = Report::new(&plan(Mode::Closed), &sample_stats(false)).to_table();
        let expected = [
            "target      GET http://127.0.0.1:8080/api/v1 (HTTP/1.1)",
            "load        closed loop, 32 connections, 2 threads; 1s warm-up, 2s measured",
            "requests    102 (50.5 req/s), 100 ok (50 req/s)",
            "received    1000 B",
            "errors      connect 1, status_5xx 1",
            "status      200 × 100, 503 × 1",
        ];
        for line in expected {
            assert!(table.contains(line), "missing {line:?} in\n{table}");
        }
        let latency = table
            .lines()
            .find(|line| line.starts_with("  from send"))
            .expect("latency row");
        let cells: Vec<&str> = latency.split_whitespace().collect();
        // The highest value of each 3-digit HDR bucket: 90 ms falls in [89.984, 90.047].
        assert_eq!(
            cells[2..],
            ["50.015", "90.047", "99.007", "100.031", "100.031", "50.504"]
        );
    }

    #[test]
    fn table_without_successes_shows_dashes_and_open_loop_rows() {
        let mut stats = Stats::new(true);
        stats.record(true, Outcome::Failed(ErrorKind::Timeout));
        let rate = Rate::per_second(1500.0).unwrap();
        let report = Report::new(&plan(Mode::Open(rate)), &stats);
        let table = report.to_table();
        assert!(table.contains("open loop at 1,500 req/s"), "{table}");
        assert!(table.contains("scheduled   3000, unsent 2999"), "{table}");
        for label in ["  from due time", "  service time"] {
            let row = format!("{label:<18}{:>9}\n", "-");
            assert!(table.contains(&row), "missing {row:?} in\n{table}");
        }
        assert!(table.contains("errors      timeout 1"), "{table}");
        assert!(!report.any_success());
    }

    #[test]
    fn numbers_are_grouped_and_trimmed() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(999.0), "999");
        assert_eq!(number(1234.56), "1,234.6");
        assert_eq!(number(1_234_567.0), "1,234,567");
        assert_eq!(number(0.25), "0.3");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(2048), "2.00 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 + 1), "5.00 MiB");
    }
}
