//! Trace-context headers: copied from an incoming request onto every downstream request and
//! onto the response, as µBench does (its list: `x-request-id`, `x-b3-*`, `x-datadog-*`,
//! `x-ot-span-context`, `grpc-trace-bin`, `traceparent`, `x-cloud-trace-context`; cellmesh
//! adds W3C `tracestate` and single-header `b3`). gRPC carries them as metadata.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The trace headers of one request, in arrival order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceHeaders(Vec<(HeaderName, HeaderValue)>);

impl TraceHeaders {
    /// Picks the trace headers out of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut picked = Vec::new();
        for (name, value) in headers {
            if is_trace_header(name.as_str()) {
                picked.push((name.clone(), value.clone()));
            }
        }
        Self(picked)
    }

    /// Adds these headers to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0 {
            headers.append(name.clone(), value.clone());
        }
    }

    /// The headers as a map of their own.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.0.len());
        self.apply(&mut map);
        map
    }

    /// The headers, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    /// True when the request carried none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `name` (lower case, as `http` stores it) is a trace-context header.
pub fn is_trace_header(name: &str) -> bool {
    matches!(
        name,
        "x-request-id"
            | "traceparent"
            | "tracestate"
            | "b3"
            | "x-ot-span-context"
            | "grpc-trace-bin"
            | "x-cloud-trace-context"
    ) || name.starts_with("x-b3-")
        || name.starts_with("x-datadog-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_trace_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "s0"),
            ("x-request-id", "r1"),
            ("x-b3-traceid", "abc"),
            ("x-b3-sampled", "1"),
            ("traceparent", "00-1-2-01"),
            ("x-datadog-trace-id", "9"),
            ("user-agent", "wrk"),
            ("grpc-trace-bin", "AAEC"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let trace = TraceHeaders::from_headers(&headers);
        let mut names: Vec<&str> = trace.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "grpc-trace-bin",
                "traceparent",
                "x-b3-sampled",
                "x-b3-traceid",
                "x-datadog-trace-id",
                "x-request-id"
            ]
        );
        let map = trace.to_header_map();
        assert_eq!(map["x-request-id"], "r1");
        assert!(!map.contains_key("host"));
    }
}
