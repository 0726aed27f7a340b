//! Command-line arguments and their validation into a [`Plan`].
//!
//! Parsing (`clap`) checks types; [`Args::into_plan`] checks meaning and reports each
//! problem naming the flag and the reason, so `cellmesh-load` never panics on input.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};

use crate::plan::{Mode, Plan, Protocol, Target};
use crate::schedule::Rate;

const ABOUT: &str = "HTTP load generator with HDR latency reports (open and closed loop)";

const LONG_ABOUT: &str = "\
HTTP load generator with HDR latency reports.

Closed loop (default): every connection sends its next request as soon as the previous
response is complete, like wrk; latency is measured from the send time.

Open loop (--rate N): requests are due at a constant N per second in total, spread evenly over
the connections (wrk2's model). A connection that falls behind sends at once, and latency is
measured from the time the request was due, so a stalled server shows up in the percentiles
(coordinated-omission correction). The service time (from the actual send) is reported too.

Latency percentiles cover successful (2xx) responses. Everything else is counted as an error by
kind: connect, timeout, io (connection broke mid-request), status_3xx/4xx/5xx/other.

Exit status: 0 when the run completed with at least one successful response, 1 on bad
arguments or setup errors, 3 when no request succeeded.";

const EXAMPLES: &str = "\
Examples:
  cellmesh-load http://127.0.0.1:8080/api/v1 -c 32 -d 10s --warmup 2s
  cellmesh-load http://127.0.0.1:8080/api/v1 --rate 5000 -c 64 -d 30s --json out.json
  cellmesh-load http://127.0.0.1:8080/api/v1 --body trace.json --http2 --streams 8";

/// How the report is printed on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A human-readable table.
    Table,
    /// The JSON report (the same document `--json FILE` writes).
    Json,
}

#[derive(Debug, Parser)]
#[command(name = "cellmesh-load", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Args {
    /// Target URL, e.g. http://127.0.0.1:8080/api/v1 (plain http only).
    pub url: String,

    /// Connections to open; each carries one request at a time (HTTP/2: --streams).
    #[arg(short, long, default_value_t = 32)]
    pub connections: u32,

    /// Open loop: total requests per second, spread over the connections. Without it the
    /// run is closed loop.
    #[arg(short, long, value_name = "REQ/S")]
    pub rate: Option<f64>,

    /// Open loop: requests due at once, every N / rate seconds, at the same average rate
    /// (bursty traffic; needs N connections × streams).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "rate")]
    pub burst: u32,

    /// How long to measure, e.g. 10s, 500ms, 2m.
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Load before measuring; its requests are sent but not reported.
    #[arg(short, long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Load threads, each an event loop with its share of the connections [default: the
    /// number of cores].
    #[arg(short, long)]
    pub threads: Option<usize>,

    /// HTTP method [default: GET, or POST when --body is given].
    #[arg(short, long)]
    pub method: Option<String>,

    /// Send the contents of FILE as the request body.
    #[arg(short, long, value_name = "FILE")]
    pub body: Option<PathBuf>,

    /// Content-Type of --body.
    #[arg(long, default_value = "application/json", value_name = "TYPE")]
    pub content_type: String,

    /// Extra request header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Use HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1 keep-alive.
    #[arg(long)]
    pub http2: bool,

    /// HTTP/2 only: concurrent requests (streams) per connection.
    #[arg(long, default_value_t = 1)]
    pub streams: u32,

    /// Give up on a request (and count a timeout) after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Report format on stdout.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Also write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// No progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(short, long)]
    pub quiet: bool,
}

/// A human duration such as `10s`, `250ms`, `1m 30s`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{text:?} is not a valid number of seconds"));
    }
    humantime::parse_duration(text).map_err(|err| format!("{text:?}: {err} (try 10s or 500ms)"))
}

/// A flag whose value makes no sense, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct ArgError {
    pub flag: &'static str,
    pub reason: String,
}

fn arg_error(flag: &'static str, reason: impl Into<String>) -> ArgError {
    ArgError {
        flag,
        reason: reason.into(),
    }
}

impl Args {
    /// Checks the arguments against each other and reads the body file.
    pub fn into_plan(self) -> Result<Plan, ArgError> {
        let target = parse_target(&self.url)?;
        if self.connections == 0 {
            return Err(arg_error("--connections", "must be at least 1"));
        }
        if self.streams == 0 {
            return Err(arg_error("--streams", "must be at least 1"));
        }
        if self.streams > 1 && !self.http2 {
            return Err(arg_error(
                "--streams",
                "needs --http2 (an HTTP/1.1 connection carries one request at a time)",
            ));
        }
        if self.duration.is_zero() {
            return Err(arg_error("--duration", "must be greater than 0"));
        }
        if self.timeout.is_zero() {
            return Err(arg_error("--timeout", "must be greater than 0"));
        }
        let threads = match self.threads {
            Some(0) => return Err(arg_error("--threads", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if self.burst == 0 {
            return Err(arg_error("--burst", "must be at least 1"));
        }
        let mode = match self.rate {
            None => Mode::Closed,
            Some(rate) => Mode::Open(
                Rate::per_second(rate)
                    .map_err(|err| arg_error("--rate", err.to_string()))?
                    .with_burst(u64::from(self.burst)),
            ),
        };
        let body = match &self.body {
            None => Bytes::new(),
            Some(path) => std::fs::read(path).map(Bytes::from).map_err(|err| {
                arg_error("--body", format!("cannot read {}: {err}", path.display()))
            })?,
        };
        let method = match (&self.method, &self.body) {
            (Some(name), _) => Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                .map_err(|_| arg_error("--method", format!("{name:?} is not an HTTP method")))?,
            (None, Some(_)) => Method::POST,
            (None, None) => Method::GET,
        };
        let mut headers = HeaderMap::new();
        if self.body.is_some() {
            let value = HeaderValue::from_str(&self.content_type).map_err(|_| {
                arg_error(
                    "--content-type",
                    format!("{:?} is not a valid header value", self.content_type),
                )
            })?;
            headers.insert(CONTENT_TYPE, value);
        }
        for line in &self.headers {
            let (name, value) = parse_header(line)?;
            headers.append(name, value);
        }
        let streams = u64::from(self.connections) * u64::from(self.streams.max(1));
        if u64::from(self.burst) > streams {
            return Err(arg_error(
                "--burst",
                format!(
                    "a burst of {} requests needs as many streams, but there are {streams} \
                     (raise --connections)",
                    self.burst
                ),
            ));
        }
        Ok(Plan {
            target,
            method,
            body,
            headers,
            protocol: if self.http2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            },
            mode,
            connections: self.connections,
            streams: self.streams,
            threads,
            warmup: self.warmup,
            duration: self.duration,
            timeout: self.timeout,
        })
    }
}

fn parse_target(url: &str) -> Result<Target, ArgError> {
    let uri: Uri = url
        .parse()
        .map_err(|err| arg_error("URL", format!("{url:?} is not a URL: {err}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(arg_error(
                "URL",
                "https is not supported; use http:// (h2c with --http2)",
            ));
        }
        Some(other) => return Err(arg_error("URL", format!("unsupported scheme {other:?}"))),
        None => {
            return Err(arg_error(
                "URL",
                format!("{url:?} has no scheme; write http://HOST:PORT/PATH"),
            ));
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| arg_error("URL", format!("{url:?} has no host")))?
        .clone();
    if authority.as_str().contains('@') {
        return Err(arg_error(
            "URL",
            "user information (user@host) is not supported",
        ));
    }
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let path_and_query = if path_and_query.is_empty() {
        "/".to_owned()
    } else {
        path_and_query
    };
    Ok(Target {
        host: authority.host().to_owned(),
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_owned(),
        path_and_query,
    })
}

fn parse_header(line: &str) -> Result<(HeaderName, HeaderValue), ArgError> {
    let (name, value) = line.split_once(':').ok_or_else(|| {
        arg_error(
            "--header",
            format!("expected \"Name: value\", got {line:?}"),
        )
    })?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
        arg_error(
            "--header",
            format!("{:?} is not a header name", name.trim()),
        )
    })?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| {
        arg_error(
            "--header",
            format!("{:?} is not a valid header value", value.trim()),
        )
    })?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["cellmesh-load"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    fn plan(extra: &[&str]) -> Result<Plan, ArgError> {
        args(extra).expect("clap accepts these").into_plan()
    }

    fn plan_error(extra: &[&str]) -> String {
        plan(extra).expect_err("should be rejected").to_string()
    }

    #[test]
    fn defaults_are_a_closed_loop_get() {
        let plan = plan(&["http://127.0.0.1:8080/api/v1?x=1"]).unwrap();
        assert_eq!(plan.mode, Mode::Closed);
        assert_eq!(plan.method, Method::GET);
        assert_eq!(plan.protocol, Protocol::Http1);
        assert_eq!(plan.connections, 32);
        assert_eq!(plan.duration, Duration::from_secs(10));
        assert_eq!(plan.warmup, Duration::ZERO);
        assert!(plan.threads >= 1);
        assert_eq!(plan.target.host, "127.0.0.1");
        assert_eq!(plan.target.port, 8080);
        assert_eq!(plan.target.authority, "127.0.0.1:8080");
        assert_eq!(plan.target.path_and_query, "/api/v1?x=1");
        assert!(plan.body.is_empty());
        assert!(plan.headers.is_empty());
    }

    #[test]
    fn open_loop_and_http2_options() {
        let plan = plan(&[
            "http://localhost/",
            "--rate",
            "2500",
            "-c",
            "4",
            "--http2",
            "--streams",
            "8",
            "-d",
            "1m",
            "-w",
            "500ms",
            "-t",
            "3",
            "-H",
            "x-request-id: abc",
        ])
        .unwrap();
        assert_eq!(plan.mode, Mode::Open(Rate::per_second(2500.0).unwrap()));
        assert_eq!(plan.protocol, Protocol::Http2);
        assert_eq!((plan.connections, plan.streams, plan.threads), (4, 8, 3));
        assert_eq!(plan.duration, Duration::from_secs(60));
        assert_eq!(plan.warmup, Duration::from_millis(500));
        assert_eq!(plan.target.port, 80);
        assert_eq!(plan.headers["x-request-id"], "abc");
    }

    #[test]
    fn body_file_makes_a_post_with_content_type() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(br#"{"s0__a": []}"#).unwrap();
        let path = file.path().to_str().unwrap();
        let plan = plan(&["http://h:1/p", "--body", path]).unwrap();
        assert_eq!(plan.method, Method::POST);
        assert_eq!(&plan.body[..], br#"{"s0__a": []}"#);
        assert_eq!(plan.headers[CONTENT_TYPE], "application/json");
        let plan = plan_with_method(path);
        assert_eq!(plan.method, Method::PUT);
    }

    fn plan_with_method(path: &str) -> Plan {
        plan(&["http://h:1/p", "--body", path, "-m", "put"]).unwrap()
    }

    #[test]
    fn argument_errors_name_the_flag_and_reason() {
        assert_eq!(
            plan_error(&["http://h/", "-c", "0"]),
            "--connections: must be at least 1"
        );
        assert!(
            plan_error(&["http://h/", "--streams", "4"]).starts_with("--streams: needs --http2")
        );
        assert!(plan_error(&["http://h/", "--rate", "0"]).starts_with("--rate: must be a finite"));
        let bursty = plan(&["http://h/", "--rate", "20", "--burst", "4", "-c", "4"]).unwrap();
        assert_eq!(
            bursty.mode,
            Mode::Open(Rate::per_second(20.0).unwrap().with_burst(4))
        );
        let err = plan_error(&["http://h/", "--rate", "20", "--burst", "8", "-c", "4"]);
        assert!(
            err.starts_with("--burst: a burst of 8 requests needs"),
            "{err}"
        );
        assert!(plan_error(&["http://h/", "--rate", "20", "--burst", "0"]).starts_with("--burst"));
        assert!(plan_error(&["http://h/", "-d", "0s"]).starts_with("--duration: must be"));
        assert!(plan_error(&["http://h/", "-t", "0"]).starts_with("--threads"));
        assert!(plan_error(&["https://h/"]).starts_with("URL: https is not supported"));
        assert!(plan_error(&["ftp://h/"]).starts_with("URL: unsupported scheme"));
        assert!(plan_error(&["/api/v1"]).starts_with("URL: \"/api/v1\" has no scheme"));
        assert!(plan_error(&["http://h/", "-H", "no-colon"]).starts_with("--header: expected"));
        assert!(
            plan_error(&["http://h/", "-H", "bad name: v"]).starts_with("--header: \"bad name\"")
        );
        assert!(plan_error(&["http://h/", "-m", "GE T"]).starts_with("--method"));
        assert!(
            plan_error(&["http://h/", "--body", "/nonexistent/body.json"])
                .starts_with("--body: cannot read /nonexistent/body.json")
        );
    }

    #[test]
    fn clap_rejects_bad_types_with_the_flag_name() {
        let err = args(&["http://h/", "-d", "ten"]).unwrap_err().to_string();
        assert!(err.contains("--duration"), "{err}");
        let err = args(&["http://h/", "-c", "many"]).unwrap_err().to_string();
        assert!(err.contains("--connections"), "{err}");
        assert!(args(&[]).is_err(), "the URL is required");
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn help_is_generated() {
        let help = args(&["--help"]).unwrap_err().to_string();
        assert!(help.contains("coordinated-omission"));
        assert!(help.contains("--rate"));
    }
}
