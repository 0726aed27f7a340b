//! Reading one measurement out of each load tool's output: wrk's text (with `--latency`) and
//! cellmesh-load's JSON report.

use anyhow::{Context, Result, bail};

/// One run of one tool against one target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Failed requests: socket errors plus non-2xx/3xx responses.
    pub errors: u64,
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(output: &str) -> Result<Measurement> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut errors = 0;
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = Some(
                rest.trim()
                    .parse::<f64>()
                    .with_context(|| format!("wrk Requests/sec: {rest:?}"))?,
            );
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50 = Some(wrk_duration_ms(rest.trim())?);
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = Some(wrk_duration_ms(rest.trim())?);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                let count = part.split_whitespace().nth(1).unwrap_or("0");
                errors += count
                    .parse::<u64>()
                    .with_context(|| format!("wrk socket errors: {rest:?}"))?;
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest
                .trim()
                .parse::<u64>()
                .with_context(|| format!("wrk non-2xx count: {rest:?}"))?;
        }
    }
    match (rps, p50, p99) {
        (Some(requests_per_sec), Some(p50_ms), Some(p99_ms)) => Ok(Measurement {
            requests_per_sec,
            p50_ms,
            p99_ms,
            errors,
        }),
        _ => bail!(
            "wrk output lacks Requests/sec or the 50%/99% latency lines (run with --latency):\n{output}"
        ),
    }
}

/// wrk prints durations as `512.00us`, `2.11ms`, `1.20s`, `1.50m`.
fn wrk_duration_ms(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("wrk duration without unit: {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("wrk duration: {text:?}"))?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => bail!("wrk duration with unknown unit: {text:?}"),
    };
    Ok(value * factor)
}

/// Reads cellmesh-load's JSON report (`--output json`).
pub fn parse_load_json(output: &str) -> Result<Measurement> {
    let report: serde_json::Value =
        serde_json::from_str(output).context("cellmesh-load printed invalid JSON")?;
    let number = |pointer: &str| {
        report
            .pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("cellmesh-load report has no number at {pointer}"))
    };
    Ok(Measurement {
        requests_per_sec: number("/throughput_rps")?,
        p50_ms: number("/latency_ms/p50")?,
        p99_ms: number("/latency_ms/p99")?,
        errors: report
            .pointer("/error_total")
            .and_then(serde_json::Value::as_u64)
            .context("cellmesh-load report has no error_total")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:18000/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.99ms    1.98ms  43.75ms   93.09%
    Req/Sec    23.93k     4.98k   40.83k    78.00%
  Latency Distribution
     50%  512.00us
     75%  826.00us
     90%    2.11ms
     99%    1.20s
  238743 requests in 5.02s, 25.50MB read
  Socket errors: connect 1, read 2, write 0, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:  47543.76
Transfer/sec:      5.08MB
";

    #[test]
    fn wrk_output_is_read() {
        let m = parse_wrk(WRK).unwrap();
        assert_eq!(m.requests_per_sec, 47543.76);
        assert!((m.p50_ms - 0.512).abs() < 1e-9);
        assert_eq!(m.p99_ms, 1200.0);
        assert_eq!(m.errors, 12);
    }

    #[test]
    fn wrk_without_latency_lines_is_an_error() {
        let err = parse_wrk("Requests/sec: 10\n").unwrap_err().to_string();
        assert!(err.contains("--latency"), "{err}");
    }

    #[test]
    fn wrk_units() {
        assert_eq!(wrk_duration_ms("2.00ms").unwrap(), 2.0);
        assert_eq!(wrk_duration_ms("1.50m").unwrap(), 90_000.0);
        assert!(wrk_duration_ms("12").is_err());
        assert!(wrk_duration_ms("3.0parsecs").is_err());
    }

    #[test]
    fn load_json_is_read() {
        let json = r#"{"throughput_rps": 41000.5, "error_total": 3,
                       "latency_ms": {"p50": 0.7, "p99": 2.5}}"#;
        let m = parse_load_json(json).unwrap();
        assert_eq!(
            m,
            Measurement {
                requests_per_sec: 41000.5,
                p50_ms: 0.7,
                p99_ms: 2.5,
                errors: 3
            }
        );
        let err = parse_load_json(r#"{"throughput_rps": 1}"#).unwrap_err();
        assert!(err.to_string().contains("/latency_ms/p50"), "{err}");
    }
}
