//! A fault-injecting HTTP proxy for resilience tests, in front of a [`crate::TestRegistry`]
//! (its zot proxy and the real distribution registry behind it).
//!
//! Each test scripts [`Rule`]s: the first rule matching a request (method, path and query
//! substrings) with uses left applies its [`Fault`]:
//!
//! - [`Fault::Status`]: answer 500/503/429/... itself (with `Retry-After` if given), after
//!   reading and discarding the request body;
//! - [`Fault::DropAfter`]: read N bytes of the body, hand exactly those to the registry as a
//!   complete `PATCH` of the upload session (as zot keeps what reached it before a
//!   connection broke), then drop the client's connection without an answer;
//! - [`Fault::Stall`]: hold the request this long before forwarding it;
//! - [`Fault::DropResponse`]: forward the request, then drop the connection instead of
//!   answering (the registry did the work; the client never hears of it).
//!
//! Upload `Location`s are given to clients the way zot gives them, `/v2/NAME/blobs/uploads/ID`
//! with no state in the query: the proxy keeps the distribution registry's latest `_state`
//! per session and puts it back on the way in, so a session can be resumed after a dropped
//! request (distribution itself refuses a `_state` older than the data it holds).
//!
//! Every request is recorded ([`FaultRecord`]) with its `Content-Range`, the answer's
//! `Range`, the status (none when dropped) and the fault applied.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;

type BoxError = Box<dyn StdError + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// What to do to a matching request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status without forwarding; `retry_after` becomes a `Retry-After` header.
    Status {
        /// HTTP status code.
        status: u16,
        /// `Retry-After` value (seconds or an HTTP-date).
        retry_after: Option<String>,
    },
    /// Keep the first N body bytes (the registry stores them), then drop the connection.
    DropAfter(u64),
    /// Wait this long, then forward.
    Stall(Duration),
    /// Forward, then drop the connection instead of answering.
    DropResponse,
}

impl Fault {
    /// `Fault::Status` without `Retry-After`.
    pub fn status(status: u16) -> Self {
        Self::Status {
            status,
            retry_after: None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status",
            Self::DropAfter(_) => "drop-after",
            Self::Stall(_) => "stall",
            Self::DropResponse => "drop-response",
        }
    }
}

/// When a fault applies: a method (any when `None`), substrings of the path and the query,
/// and how many times.
#[derive(Clone, Debug)]
pub struct Rule {
    method: Option<Method>,
    path_contains: String,
    query_contains: Option<String>,
    skip: usize,
    times: usize,
    fault: Fault,
}

impl Rule {
    /// Apply `fault` once to requests with `method` whose path contains `path_contains`.
    pub fn new(method: Option<Method>, path_contains: &str, fault: Fault) -> Self {
        Self {
            method,
            path_contains: path_contains.to_owned(),
            query_contains: None,
            skip: 0,
            times: 1,
            fault,
        }
    }

    /// Apply it to the first `times` matching requests.
    #[must_use]
    pub fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }

    /// Let the first `skip` matching requests through untouched.
    #[must_use]
    pub fn skip(mut self, skip: usize) -> Self {
        self.skip = skip;
        self
    }

    /// Only requests whose query contains `query_contains`.
    #[must_use]
    pub fn query(mut self, query_contains: &str) -> Self {
        self.query_contains = Some(query_contains.to_owned());
        self
    }

    fn matches(&self, method: &Method, path: &str, query: Option<&str>) -> bool {
        self.times > 0
            && self.method.as_ref().is_none_or(|m| m == method)
            && path.contains(&self.path_contains)
            && self
                .query_contains
                .as_deref()
                .is_none_or(|q| query.is_some_and(|have| have.contains(q)))
    }
}

/// One request as the fault proxy saw it.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// HTTP method.
    pub method: Method,
    /// Path (no query).
    pub path: String,
    /// Query as the client sent it, without `?`.
    pub query: Option<String>,
    /// The request's `Content-Range`.
    pub content_range: Option<String>,
    /// The request's `Content-Length`.
    pub content_length: Option<u64>,
    /// Whether it carried an `Authorization` header.
    pub had_auth: bool,
    /// Status answered; `None` when the connection was dropped.
    pub status: Option<u16>,
    /// The answer's `Range` header (upload status and `PATCH` answers).
    pub response_range: Option<String>,
    /// The fault applied (`status`, `drop-after`, `stall`, `drop-response`).
    pub fault: Option<&'static str>,
    /// When the request arrived, since the proxy started.
    pub at: Duration,
}

impl FaultRecord {
    /// `PATCH`/`PUT`/`GET` of an upload session (`/blobs/uploads/ID`).
    pub fn is_upload_session(&self) -> bool {
        self.path
            .split_once("/blobs/uploads/")
            .is_some_and(|(_, id)| !id.is_empty())
    }

    /// The start of the `Content-Range`.
    pub fn range_start(&self) -> Option<u64> {
        self.content_range
            .as_deref()?
            .split('-')
            .next()?
            .parse()
            .ok()
    }
}

impl std::fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6}ms {} {}",
            self.at.as_millis(),
            self.method,
            self.path
        )?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        match self.status {
            Some(s) => write!(f, " -> {s}")?,
            None => write!(f, " -> dropped")?,
        }
        if let Some(r) = &self.content_range {
            write!(f, " content-range={r}")?;
        }
        if let Some(r) = &self.response_range {
            write!(f, " range={r}")?;
        }
        if let Some(x) = self.fault {
            write!(f, " fault={x}")?;
        }
        Ok(())
    }
}

struct State {
    upstream: SocketAddr,
    client: Client<HttpConnector, ProxyBody>,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<FaultRecord>>,
    /// Upload session ID -> the upstream's latest `path?query` for it.
    sessions: Mutex<HashMap<String, String>>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fault proxy with its own runtime; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    _runtime: Runtime,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.state.upstream)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream.parse().expect("upstream is host:port");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("failed to build the fault proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
            .expect("failed to bind the fault proxy");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            upstream,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            rules: Mutex::default(),
            log: Mutex::default(),
            sessions: Mutex::default(),
            started: Instant::now(),
        });
        let (shutdown, stop) = watch::channel(false);
        let accept_state = Arc::clone(&state);
        runtime.spawn(crate::http_server::serve_http1(
            listener,
            stop,
            move |req| handle(Arc::clone(&accept_state), req),
        ));
        Self {
            addr,
            state,
            shutdown,
            _runtime: runtime,
        }
    }

    /// `host:port` clients use.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Add a rule (after the ones already there).
    pub fn add(&self, rule: Rule) -> &Self {
        lock(&self.state.rules).push(rule);
        self
    }

    /// Remove every rule.
    pub fn clear_rules(&self) {
        lock(&self.state.rules).clear();
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<FaultRecord> {
        lock(&self.state.log).clone()
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &Method, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// Forget the requests so far.
    pub fn clear_log(&self) {
        lock(&self.state.log).clear();
    }

    /// The log, one request per line, for assertion messages.
    pub fn summary(&self) -> String {
        self.requests().iter().map(|r| format!("{r}\n")).collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// The upload session ID of a path `.../blobs/uploads/ID`.
fn session_id(path: &str) -> Option<&str> {
    let (_, id) = path.split_once("/blobs/uploads/")?;
    (!id.is_empty()).then_some(id)
}

/// `path?query` to send upstream: a session's latest upstream state, plus the client's
/// own query (`digest=`).
fn upstream_target(state: &State, path: &str, query: Option<&str>) -> String {
    let known = session_id(path).and_then(|id| lock(&state.sessions).get(id).cloned());
    match (known, query) {
        (Some(base), Some(q)) => {
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}{q}")
        }
        (Some(base), None) => base,
        (None, Some(q)) => format!("{path}?{q}"),
        (None, None) => path.to_owned(),
    }
}

/// Remember an upload `Location` and hand the client zot's stateless form of it.
fn rewrite_location(state: &State, response: &mut Response<Incoming>) {
    let Some(location) = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return;
    };
    let path_query = match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_owned(),
        None => location,
    };
    let path = path_query.split('?').next().unwrap_or_default().to_owned();
    if let Some(id) = session_id(&path) {
        lock(&state.sessions).insert(id.to_owned(), path_query);
        if let Ok(value) = HeaderValue::from_str(&path) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let headers = req.headers();
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut record = FaultRecord {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        content_range: text(header::CONTENT_RANGE),
        content_length: text(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        had_auth: headers.contains_key(header::AUTHORIZATION),
        status: None,
        response_range: None,
        fault: None,
        at: state.started.elapsed(),
    };
    let fault = {
        let mut rules = lock(&state.rules);
        rules
            .iter_mut()
            .find(|r| r.matches(&record.method, &record.path, record.query.as_deref()))
            .and_then(|r| {
                if r.skip > 0 {
                    r.skip -= 1;
                    return None;
                }
                r.times -= 1;
                Some(r.fault.clone())
            })
    };
    record.fault = fault.as_ref().map(Fault::name);
    let result = apply(&state, req, fault, &mut record).await;
    if let Ok(response) = &result {
        record.status = Some(response.status().as_u16());
        record.response_range = response
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    lock(&state.log).push(record);
    result
}

async fn apply(
    state: &State,
    req: Request<Incoming>,
    fault: Option<Fault>,
    record: &mut FaultRecord,
) -> Result<Response<ProxyBody>, BoxError> {
    match fault {
        None => forward(state, req.map(|b| b.map_err(BoxError::from).boxed())).await,
        Some(Fault::Stall(duration)) => {
            tokio::time::sleep(duration).await;
            forward(state, req.map(|b| b.map_err(BoxError::from).boxed())).await
        }
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            // Read the body first, so the client is not cut off while still sending it.
            let _ = req.into_body().collect().await;
            let body = serde_json::json!({
                "errors": [{"code": "UNAVAILABLE", "message": "injected fault", "detail": {}}]
            });
            let mut response = Response::new(full(body.to_string()));
            *response.status_mut() = StatusCode::from_u16(status)?;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(after) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_str(&after)?);
            }
            Ok(response)
        }
        Some(Fault::DropResponse) => {
            let response = forward(state, req.map(|b| b.map_err(BoxError::from).boxed())).await?;
            record.response_range = response
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Err("fault: response dropped".into())
        }
        Some(Fault::DropAfter(keep)) => {
            let (parts, mut body) = req.into_parts();
            let mut kept = BytesMut::new();
            while (kept.len() as u64) < keep {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            let room = (keep - kept.len() as u64) as usize;
                            kept.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    _ => break,
                }
            }
            // Hand what "arrived" to the registry as a complete chunk of the session.
            if !kept.is_empty() && session_id(&record.path).is_some() {
                let start = record
                    .content_range
                    .as_deref()
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let end = start + kept.len() as u64 - 1;
                let mut patch = Request::builder()
                    .method(Method::PATCH)
                    .uri(&record.path)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_RANGE, format!("{start}-{end}"))
                    .header(header::CONTENT_LENGTH, kept.len());
                if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
                    patch = patch.header(header::AUTHORIZATION, auth.clone());
                }
                let patch = patch.body(full(kept.freeze()))?;
                let stored = forward(state, patch).await?;
                let _ = stored.into_body().collect().await;
            }
            Err("fault: connection dropped".into())
        }
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Send a request upstream (a session's latest state put back) and stream the answer back
/// (its upload `Location` made stateless).
async fn forward(state: &State, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let target = upstream_target(state, parts.uri.path(), parts.uri.query());
    parts.uri = format!("http://{}{target}", state.upstream).parse()?;
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::HOST);
    let body = if parts.method == Method::GET || parts.method == Method::HEAD {
        empty()
    } else {
        body
    };
    let mut response = state
        .client
        .request(Request::from_parts(parts, body))
        .await?;
    for name in HOP_BY_HOP {
        response.headers_mut().remove(name);
    }
    rewrite_location(state, &mut response);
    Ok(response.map(|b| b.map_err(BoxError::from).boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        assert_eq!(session_id("/v2/a/b/blobs/uploads/u-1"), Some("u-1"));
        assert_eq!(session_id("/v2/a/b/blobs/uploads/"), None);
        assert_eq!(session_id("/v2/a/b/manifests/v1"), None);
    }

    #[test]
    fn rules_match_method_path_query_and_count() {
        let mut rule = Rule::new(Some(Method::PUT), "/blobs/uploads/", Fault::status(503))
            .query("digest=")
            .times(2);
        assert!(rule.matches(
            &Method::PUT,
            "/v2/x/blobs/uploads/u",
            Some("digest=sha256:1")
        ));
        assert!(!rule.matches(&Method::PATCH, "/v2/x/blobs/uploads/u", Some("digest=1")));
        assert!(!rule.matches(&Method::PUT, "/v2/x/blobs/uploads/u", None));
        rule.times = 0;
        assert!(!rule.matches(&Method::PUT, "/v2/x/blobs/uploads/u", Some("digest=1")));
    }
}
