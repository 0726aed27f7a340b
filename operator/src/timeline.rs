//! `cellmesh-operator timeline`: what a ScalingPolicy did to one container, as a picture.
//!
//! Everything comes from Prometheus (`/api/v1/query_range`), so a timeline can be drawn
//! after the fact for any container it scraped:
//! - CPU usage: `rate(container_cpu_usage_seconds_total[window])` (cAdvisor), in cores;
//! - CPU limit: `container_spec_cpu_quota / container_spec_cpu_period` (what the cgroup
//!   enforces, so a resize shows when the kernel applied it, not when it was asked);
//! - CPU request: `container_spec_cpu_shares / 1024`;
//! - p99 latency: `histogram_quantile(0.99, …)` of the cell's
//!   `mub_request_processing_latency_milliseconds` histogram, in ms;
//! - scaling actions: every step of the limit series, marked with its old and new value
//!   (one marker per resize the cgroup saw, whichever controller made it).
//!
//! The series are pure data ([`Timeline`]); [`crate::timeline_render`] draws them as SVG.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// One series: `(unix seconds, value)` points in time order.
pub type Points = Vec<(f64, f64)>;

/// A change of the CPU limit.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// Unix seconds of the first sample at the new limit.
    pub at: f64,
    /// Limit before and after, in cores.
    pub from: f64,
    pub to: f64,
}

/// Everything one timeline picture shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// `namespace/pod/container`.
    pub title: String,
    pub cpu_usage: Points,
    pub cpu_limit: Points,
    pub cpu_request: Points,
    /// p99 request latency in milliseconds (empty when the container serves no histogram).
    pub p99_ms: Points,
    pub actions: Vec<Action>,
}

/// The steps of a limit series: one [`Action`] wherever the value changes by more than
/// rounding (a millicore).
pub fn actions_from_limits(limit: &[(f64, f64)]) -> Vec<Action> {
    limit
        .windows(2)
        .filter(|pair| (pair[1].1 - pair[0].1).abs() >= 0.001)
        .map(|pair| Action {
            at: pair[1].0,
            from: pair[0].1,
            to: pair[1].1,
        })
        .collect()
}

/// Which container, which time range, and where to write the picture.
#[derive(Clone, Debug, clap::Args)]
pub struct TimelineArgs {
    /// Prometheus base URL (the one `cellmesh-local up` prints).
    #[arg(long, env = "PROMETHEUS_URL", default_value = "http://127.0.0.1:9090")]
    pub prometheus: String,
    /// Namespace of the pod.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Pod name; a regular expression matches several (e.g. `pi-.*`), their series summed.
    #[arg(long)]
    pub pod: String,
    /// Container name.
    #[arg(long, default_value = "cell")]
    pub container: String,
    /// How far back from now the timeline starts (e.g. 10m, 90s); ignored with --start.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Start of the range, unix seconds (default: now − since).
    #[arg(long)]
    pub start: Option<f64>,
    /// End of the range, unix seconds (default: now).
    #[arg(long)]
    pub end: Option<f64>,
    /// Resolution of the series.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// Window of `rate()` for usage and latency; at least two scrape intervals.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// Where to write the SVG.
    #[arg(long, short = 'o', default_value = "timeline.svg")]
    pub out: PathBuf,
}

/// The PromQL of each series for one container (`pod` may be a regular expression).
#[derive(Clone, Debug, PartialEq)]
pub struct Queries {
    pub cpu_usage: String,
    pub cpu_limit: String,
    pub cpu_request: String,
    pub p99_ms: String,
}

impl Queries {
    pub fn new(namespace: &str, pod: &str, container: &str, window: Duration) -> Self {
        let selector = format!(
            "namespace=\"{}\",pod=~\"{}\",container=\"{}\"",
            escape(namespace),
            escape(pod),
            escape(container)
        );
        let window = crate::usage::prometheus_duration(window);
        Self {
            cpu_usage: format!(
                "sum(rate(container_cpu_usage_seconds_total{{{selector}}}[{window}]))"
            ),
            cpu_limit: format!(
                "sum(container_spec_cpu_quota{{{selector}}} / container_spec_cpu_period{{{selector}}})"
            ),
            cpu_request: format!("sum(container_spec_cpu_shares{{{selector}}}) / 1024"),
            // The cell's metrics are scraped per pod (its admin port), labelled with the
            // container of that port.
            p99_ms: format!(
                "histogram_quantile(0.99, sum by (le) (rate(\
                 mub_request_processing_latency_milliseconds_bucket{{{selector}}}[{window}])))"
            ),
        }
    }
}

/// A PromQL string literal's escaping.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[derive(Deserialize)]
struct RangeAnswer {
    status: String,
    #[serde(default)]
    data: Option<RangeData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct RangeData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<RangeSeries>,
}

#[derive(Deserialize)]
struct RangeSeries {
    values: Vec<(f64, String)>,
}

/// The points of a `query_range` answer with at most one series (the queries above
/// aggregate); no series is an empty result. NaN and infinite samples are dropped (a
/// quantile over no requests is NaN).
pub fn parse_range(query: &str, body: &[u8]) -> Result<Points> {
    let answer: RangeAnswer = serde_json::from_slice(body)
        .with_context(|| format!("the answer to {query:?} is not Prometheus JSON"))?;
    if answer.status != "success" {
        bail!(
            "Prometheus rejected {query:?}: {}",
            answer.error.unwrap_or_default()
        );
    }
    let data = answer
        .data
        .with_context(|| format!("no data in the answer to {query:?}"))?;
    if data.result_type != "matrix" {
        bail!(
            "{query:?} gave a {}, not a range (matrix)",
            data.result_type
        );
    }
    let Some(series) = data.result.into_iter().next() else {
        return Ok(Points::new());
    };
    let mut points = Points::with_capacity(series.values.len());
    for (at, value) in series.values {
        let value: f64 = value
            .parse()
            .with_context(|| format!("sample {value:?} of {query:?} is not a number"))?;
        if value.is_finite() {
            points.push((at, value));
        }
    }
    Ok(points)
}

/// `application/x-www-form-urlencoded` encoding.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Runs one `query_range` and returns its points.
async fn query_range(
    prometheus: &str,
    query: &str,
    (start, end): (f64, f64),
    step: Duration,
) -> Result<Points> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = format!(
        "query={}&start={start:.3}&end={end:.3}&step={}",
        form_encode(query),
        step.as_secs_f64()
    );
    let url = format!("{}/api/v1/query_range", prometheus.trim_end_matches('/'));
    let request = http::Request::post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("invalid Prometheus URL {prometheus:?}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .with_context(|| format!("Prometheus at {prometheus} is unreachable"))?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("Prometheus' answer broke off")?
            .to_bytes();
        anyhow::Ok(bytes)
    };
    let bytes = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("no answer from {url} within 30s"))??;
    parse_range(query, &bytes)
}

/// Fetches every series of one container's timeline.
pub async fn fetch(args: &TimelineArgs) -> Result<Timeline> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs_f64();
    let end = args.end.unwrap_or(now);
    let start = args.start.unwrap_or(end - args.since.as_secs_f64());
    if start >= end {
        bail!("--start ({start}) must be before --end ({end})");
    }
    if args.step.is_zero() {
        bail!("--step must be positive");
    }
    let queries = Queries::new(&args.namespace, &args.pod, &args.container, args.window);
    let range = (start, end);
    let get = |query: &str| {
        let query = query.to_owned();
        let url = args.prometheus.clone();
        let step = args.step;
        async move { query_range(&url, &query, range, step).await }
    };
    let (cpu_usage, cpu_limit, cpu_request, p99_ms) = tokio::try_join!(
        get(&queries.cpu_usage),
        get(&queries.cpu_limit),
        get(&queries.cpu_request),
        get(&queries.p99_ms),
    )?;
    let actions = actions_from_limits(&cpu_limit);
    Ok(Timeline {
        title: format!("{}/{}/{}", args.namespace, args.pod, args.container),
        cpu_usage,
        cpu_limit,
        cpu_request,
        p99_ms,
        actions,
    })
}

/// `cellmesh-operator timeline`: fetch, draw, write; returns what was drawn.
pub async fn run(args: &TimelineArgs) -> Result<Timeline> {
    let timeline = fetch(args).await?;
    if timeline.cpu_usage.is_empty() && timeline.cpu_limit.is_empty() {
        bail!(
            "Prometheus at {} has no CPU series for {} in that range: check --namespace, \
             --pod and --container, and that it scrapes the node's /metrics/cadvisor",
            args.prometheus,
            timeline.title
        );
    }
    crate::timeline_render::write_svg(&timeline, &args.out)?;
    Ok(timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_of_the_limit_is_an_action() {
        let limit = [
            (0.0, 0.2),
            (5.0, 0.2),
            (10.0, 0.5),
            (15.0, 0.5),
            (20.0, 0.2),
        ];
        assert_eq!(
            actions_from_limits(&limit),
            vec![
                Action {
                    at: 10.0,
                    from: 0.2,
                    to: 0.5
                },
                Action {
                    at: 20.0,
                    from: 0.5,
                    to: 0.2
                },
            ]
        );
        assert!(actions_from_limits(&[(0.0, 0.2), (5.0, 0.2000001)]).is_empty());
    }

    #[test]
    fn queries_select_one_container_and_use_the_window() {
        let q = Queries::new("demo", "pi-.*", "cell", Duration::from_secs(15));
        assert_eq!(
            q.cpu_usage,
            "sum(rate(container_cpu_usage_seconds_total{namespace=\"demo\",pod=~\"pi-.*\",\
             container=\"cell\"}[15s]))"
        );
        assert!(
            q.cpu_limit
                .contains("container_spec_cpu_quota{namespace=\"demo\"")
        );
        assert!(q.p99_ms.starts_with("histogram_quantile(0.99,"));
        assert!(q.p99_ms.contains("[15s]"));
        let quoted = Queries::new("a\"b", "p", "c", Duration::from_secs(1));
        assert!(quoted.cpu_request.contains("namespace=\"a\\\"b\""));
    }

    #[test]
    fn a_range_answer_gives_its_finite_points() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{},"values":[[100,"0.5"],[105,"NaN"],[110,"0.75"]]}]}}"#;
        assert_eq!(
            parse_range("q", body).unwrap(),
            vec![(100.0, 0.5), (110.0, 0.75)]
        );
        let empty = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_range("q", empty).unwrap().is_empty());
    }

    #[test]
    fn bad_answers_are_clear_errors() {
        let rejected = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let error = parse_range("up{", rejected).unwrap_err().to_string();
        assert!(error.contains("rejected \"up{\": parse error"), "{error}");
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        let error = parse_range("q", vector).unwrap_err().to_string();
        assert!(error.contains("not a range"), "{error}");
        assert!(parse_range("q", b"<html>").is_err());
        let word = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{},"values":[[1,"lots"]]}]}}"#;
        let error = parse_range("q", word).unwrap_err().to_string();
        assert!(error.contains("\"lots\""), "{error}");
    }
}
