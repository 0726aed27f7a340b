//! A validated description of one load run (what to send, where, how fast, for how long).

use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

use crate::schedule::Rate;

/// Where requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written in the URL, sent as `Host` / `:authority`.
    pub authority: String,
    /// Origin-form request target, e.g. `/api/v1?x=1`.
    pub path_and_query: String,
}

impl Target {
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path_and_query)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive: one request at a time per connection.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c).
    Http2,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each stream sends its next request when the previous one completes.
    Closed,
    /// Requests are due at a constant total rate, whatever the server does.
    Open(Rate),
}

/// One load run, validated.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: Target,
    pub method: Method,
    pub body: Bytes,
    /// Extra headers (content type, user headers); `Host` is added per protocol.
    pub headers: HeaderMap,
    pub protocol: Protocol,
    pub mode: Mode,
    pub connections: u32,
    /// Concurrent requests per connection (1 for HTTP/1.1).
    pub streams: u32,
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
}

impl Plan {
    /// Total number of concurrent request loops.
    pub fn total_streams(&self) -> usize {
        let total = u64::from(self.connections) * u64::from(self.streams);
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    /// The request every stream sends, built once and cloned per request.
    pub fn request_template(&self) -> Result<RequestTemplate, http::Error> {
        let mut headers = self.headers.clone();
        let uri: Uri = match self.protocol {
            // HTTP/1.1: origin-form target plus a Host header.
            Protocol::Http1 => {
                headers.insert(HOST, HeaderValue::from_str(&self.target.authority)?);
                self.target.path_and_query.parse()?
            }
            // HTTP/2: hyper takes :scheme and :authority from an absolute URI.
            Protocol::Http2 => self.target.url().parse()?,
        };
        Ok(RequestTemplate {
            method: self.method.clone(),
            uri,
            headers,
            body: self.body.clone(),
        })
    }
}

/// A request that is cheap to stamp out many times (the body is reference-counted).
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl RequestTemplate {
    pub fn build(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(protocol: Protocol) -> Plan {
        Plan {
            target: Target {
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into(),
                path_and_query: "/api/v1?bid=2".into(),
            },
            method: Method::POST,
            body: Bytes::from_static(b"{}"),
            headers: HeaderMap::new(),
            protocol,
            mode: Mode::Closed,
            connections: 4,
            streams: 3,
            threads: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn http1_requests_use_origin_form_and_host() {
        let request = plan(Protocol::Http1).request_template().unwrap().build();
        assert_eq!(request.uri(), "/api/v1?bid=2");
        assert_eq!(request.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(request.method(), Method::POST);
    }

    #[test]
    fn http2_requests_use_an_absolute_uri() {
        let request = plan(Protocol::Http2).request_template().unwrap().build();
        assert_eq!(request.uri(), "http://127.0.0.1:8080/api/v1?bid=2");
        assert!(request.headers().get(HOST).is_none());
    }

    #[test]
    fn streams_multiply_connections() {
        assert_eq!(plan(Protocol::Http2).total_streams(), 12);
    }
}
