//! A strict HTTP proxy that makes a CNCF distribution registry answer like zot.
//!
//! The distribution registry (`docker-registry`) is more tolerant than zot, the registry
//! blumeops publishes to. This proxy sits in front of it, applies zot's
//! rules, forwards what passes (streaming bodies both ways) and records every request so
//! tests can assert on what the client did:
//!
//! - anonymous `GET`/`HEAD` pass (forwarded with the upstream account); `GET /v2/` answers
//!   200 with a `WWW-Authenticate: Basic` header that is not a challenge (zot does this for
//!   non-Docker clients; a `docker/*` user agent gets 401);
//! - writes without credentials, and any request with wrong credentials, get 401 with a
//!   Basic challenge and zot's bare `{"code":"UNAUTHORIZED",...}` body;
//! - per-user actions `read`/`create`/`update`/`delete`: a manifest `PUT` to an existing tag is
//!   an `update` (decided from the tag alone, like zot), any `DELETE` is a `delete`; a missing
//!   action gives 403 `DENIED` with a Basic challenge header anyway;
//! - manifest `PUT`: `Content-Type` exactly the OCI manifest or index type (else 415
//!   `MANIFEST_INVALID`), body at most 4 MiB (413), JSON with `schemaVersion` 2 and a
//!   `mediaType`, if present, equal to the `Content-Type` (else 400 `MANIFEST_INVALID`);
//! - uploads: `Location` made relative, `Blob-Upload-UUID` instead of `Docker-Upload-UUID`,
//!   `PATCH` `Content-Range` must be `start-end` with `start` the current offset (416), the
//!   final `PUT` needs `Content-Length` (a chunked body would be ignored by zot: 400), a final
//!   `PUT` carrying data after `PATCH`es needs `Content-Range` (416), a monolithic
//!   `POST ?digest=` needs `Content-Length` (400) and `application/octet-stream` (415).
//!
//! Known leniencies: `Basic` credentials with an empty user and password count as anonymous
//! (skopeo sends those after seeing the realm on `/v2/`); `?mount=` is forwarded as is (the
//! distribution registry honours `from`, zot ignores it).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest media type (zot refuses it).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type (zot refuses it).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest manifest body zot accepts.
pub const MANIFEST_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// The realm in challenges.
pub const REALM: &str = "zot";

const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v1+prettyjws";

type BoxError = Box<dyn StdError + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// What a user may do (zot's `accessControl` actions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Pull: `GET`/`HEAD`.
    Read,
    /// Blob uploads, manifest `PUT` to a new tag or by digest.
    Create,
    /// Manifest `PUT` to a tag that already exists.
    Update,
    /// Any `DELETE`.
    Delete,
}

impl Action {
    /// Every action (an admin).
    pub const ALL: [Self; 4] = [Self::Read, Self::Create, Self::Update, Self::Delete];
}

/// A user the proxy knows: its password (an API key for `zot-ci`) and its actions.
#[derive(Clone)]
pub struct User {
    /// Password or API key.
    pub password: String,
    /// Allowed actions.
    pub actions: HashSet<Action>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("password", &"<redacted>")
            .field("actions", &self.actions)
            .finish()
    }
}

/// How to start the proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The distribution registry behind the proxy.
    pub upstream: SocketAddr,
    /// Account the proxy uses toward the upstream for every forwarded request.
    pub upstream_user: String,
    /// Its password.
    pub upstream_password: String,
    /// Users allowed to log in to the proxy, by name.
    pub users: HashMap<String, User>,
}

/// One request as the proxy saw it, with the status it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: Method,
    /// Path (no query).
    pub path: String,
    /// Query string without `?`.
    pub query: Option<String>,
    /// Status sent back to the client.
    pub status: u16,
    /// Whether the request carried an `Authorization` header.
    pub had_auth: bool,
    /// The user when the credentials were valid.
    pub user: Option<String>,
    /// The request's `Content-Length`.
    pub content_length: Option<u64>,
    /// The request's `Content-Type`.
    pub content_type: Option<String>,
    /// The request's `Content-Range`.
    pub content_range: Option<String>,
    /// Whether the request body was sent with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The zot rule that made the proxy answer itself instead of forwarding.
    pub rejected_by: Option<&'static str>,
}

impl RequestRecord {
    /// Whether this is a manifest request (`/v2/<name>/manifests/<ref>`).
    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }

    /// Whether this is part of a blob upload (`/v2/<name>/blobs/uploads/...`).
    pub fn is_blob_upload(&self) -> bool {
        self.path.contains("/blobs/uploads/")
    }
}

/// The shared request log of a proxy.
#[derive(Clone, Debug, Default)]
pub struct RequestLog(Arc<Mutex<Vec<RequestRecord>>>);

impl RequestLog {
    fn push(&self, record: RequestRecord) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forget the requests so far.
    pub fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &Method, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// Every manifest `PUT`, whatever its outcome.
    pub fn manifest_puts(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == Method::PUT && r.is_manifest())
            .collect()
    }

    /// Every request under `/blobs/uploads/` (session starts, `PATCH`es, final `PUT`s).
    pub fn blob_uploads(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(RequestRecord::is_blob_upload)
            .collect()
    }

    /// Requests the proxy refused itself, with the rule that refused them.
    pub fn rejections(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.rejected_by.is_some())
            .collect()
    }
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct ZotProxy {
    addr: SocketAddr,
    log: RequestLog,
    shutdown: watch::Sender<bool>,
}

impl ZotProxy {
    /// Bind a free loopback port and serve on `runtime`.
    pub fn start(runtime: &Handle, config: ProxyConfig) -> std::io::Result<Self> {
        let listener =
            runtime.block_on(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))?;
        let addr = listener.local_addr()?;
        let log = RequestLog::default();
        let (shutdown, stop) = watch::channel(false);
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let upstream_auth = basic_header(&config.upstream_user, &config.upstream_password);
        let state = Arc::new(State {
            config,
            upstream_auth,
            client,
            log: log.clone(),
            offsets: Mutex::new(HashMap::new()),
        });
        runtime.spawn(crate::http_server::serve_http1(
            listener,
            stop,
            move |req| handle(Arc::clone(&state), req),
        ));
        Ok(Self {
            addr,
            log,
            shutdown,
        })
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request log.
    pub fn log(&self) -> &RequestLog {
        &self.log
    }
}

impl Drop for ZotProxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

struct State {
    config: ProxyConfig,
    upstream_auth: HeaderValue,
    client: Client<HttpConnector, ProxyBody>,
    log: RequestLog,
    /// Upload session UUID -> bytes received so far.
    offsets: Mutex<HashMap<String, u64>>,
}

enum Auth {
    Anonymous,
    User(String),
    Invalid,
}

/// What a path addresses.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Base,
    Manifest { name: String, reference: String },
    UploadStart { name: String },
    Upload { uuid: String },
    Other,
}

impl Route {
    fn parse(path: &str) -> Self {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Self::Other;
        };
        if rest.is_empty() || rest == "/" {
            return Self::Base;
        }
        let rest = &rest[1..];
        if let Some(i) = rest.rfind("/manifests/") {
            return Self::Manifest {
                name: rest[..i].to_owned(),
                reference: rest[i + "/manifests/".len()..].to_owned(),
            };
        }
        if let Some(i) = rest.rfind("/blobs/uploads") {
            let tail = rest[i + "/blobs/uploads".len()..].trim_start_matches('/');
            return if tail.is_empty() {
                Self::UploadStart {
                    name: rest[..i].to_owned(),
                }
            } else {
                Self::Upload {
                    uuid: tail.to_owned(),
                }
            };
        }
        Self::Other
    }
}

fn basic_header(user: &str, password: &str) -> HeaderValue {
    let value = format!("Basic {}", BASE64.encode(format!("{user}:{password}")));
    let mut value = HeaderValue::from_str(&value).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

fn authenticate(config: &ProxyConfig, headers: &HeaderMap) -> Auth {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Auth::Anonymous;
    };
    let Some((scheme, encoded)) = value.to_str().ok().and_then(|v| v.trim().split_once(' ')) else {
        return Auth::Invalid;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Auth::Invalid;
    }
    let Some(decoded) = BASE64
        .decode(encoded.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
    else {
        return Auth::Invalid;
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return Auth::Invalid;
    };
    if user.is_empty() && password.is_empty() {
        return Auth::Anonymous;
    }
    match config.users.get(user) {
        Some(known) if known.password == password => Auth::User(user.to_owned()),
        _ => Auth::Invalid,
    }
}

fn json_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn error_list(
    status: StatusCode,
    code: &str,
    message: &str,
    detail: serde_json::Value,
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "errors": [{"code": code, "message": message, "detail": detail}]
    });
    json_response(status, body.to_string())
}

fn challenge(response: &mut Response<ProxyBody>) {
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&format!("Basic realm=\"{REALM}\""))
            .expect("static challenge is a valid header value"),
    );
}

fn unauthorized() -> Response<ProxyBody> {
    let body = serde_json::json!({
        "code": "UNAUTHORIZED",
        "message": "authentication required",
        "detail": {},
    });
    let mut response = json_response(StatusCode::UNAUTHORIZED, body.to_string());
    challenge(&mut response);
    response
}

fn denied() -> Response<ProxyBody> {
    let mut response = error_list(
        StatusCode::FORBIDDEN,
        "DENIED",
        "requested access to the resource is denied",
        serde_json::json!({}),
    );
    challenge(&mut response);
    response
}

fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `start-end` (zot refuses `bytes=`).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let (start, end) = value.split_once('-')?;
    let start = start.parse().ok()?;
    let end = end.parse().ok()?;
    (start <= end).then_some((start, end))
}

fn query_has(query: Option<&str>, key: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == key)
    })
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let headers = req.headers();
    let mut record = RequestRecord {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        status: 0,
        had_auth: headers.contains_key(header::AUTHORIZATION),
        user: None,
        content_length: header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
        content_type: header_str(headers, header::CONTENT_TYPE),
        content_range: header_str(headers, header::CONTENT_RANGE),
        chunked: header_str(headers, header::TRANSFER_ENCODING)
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked")),
        rejected_by: None,
    };
    let response = match process(&state, req, &mut record).await {
        Ok(response) => response,
        Err((rule, response)) => {
            record.rejected_by = Some(rule);
            response
        }
    };
    record.status = response.status().as_u16();
    state.log.push(record);
    Ok(response)
}

type Rejection = (&'static str, Response<ProxyBody>);

async fn process(
    state: &State,
    req: Request<Incoming>,
    record: &mut RequestRecord,
) -> Result<Response<ProxyBody>, Rejection> {
    let route = Route::parse(req.uri().path());
    let auth = authenticate(&state.config, req.headers());
    let user = match auth {
        Auth::Invalid => return Err(("auth-invalid-credentials", unauthorized())),
        Auth::Anonymous => None,
        Auth::User(name) => Some(name),
    };
    record.user.clone_from(&user);
    let method = req.method().clone();

    if route == Route::Base && user.is_none() {
        let docker_client = header_str(req.headers(), header::USER_AGENT)
            .is_some_and(|ua| ua.to_ascii_lowercase().starts_with("docker/"));
        if docker_client {
            return Err(("auth-docker-client-ping", unauthorized()));
        }
    }

    let mut action = match method {
        Method::GET | Method::HEAD | Method::OPTIONS => Action::Read,
        Method::DELETE => Action::Delete,
        _ => Action::Create,
    };
    if let (&Method::PUT, Route::Manifest { name, reference }) = (&method, &route)
        && !reference.contains(':')
    {
        match tag_exists(state, name, reference).await {
            Ok(true) => action = Action::Update,
            Ok(false) => {}
            Err(e) => {
                return Err((
                    "upstream-unreachable",
                    error_list(
                        StatusCode::BAD_GATEWAY,
                        "UNKNOWN",
                        &format!("tag lookup failed: {e}"),
                        serde_json::json!({}),
                    ),
                ));
            }
        }
    }
    match &user {
        None if action != Action::Read => return Err(("auth-required-for-write", unauthorized())),
        None => {}
        Some(name) => {
            let allowed = state
                .config
                .users
                .get(name)
                .is_some_and(|u| u.actions.contains(&action));
            if !allowed {
                return Err(("permission-denied", denied()));
            }
        }
    }

    let req = check_protocol(state, req, &route).await?;
    let anonymous_ping = route == Route::Base && user.is_none();
    let monolithic = method == Method::POST
        && matches!(route, Route::UploadStart { .. })
        && query_has(req.uri().query(), "digest");
    let upstream = if monolithic {
        forward_monolithic(state, req, &route).await
    } else {
        forward(state, req, &route).await
    };
    let upstream = upstream.map_err(|e| {
        (
            "upstream-unreachable",
            error_list(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                &format!("upstream request failed: {e}"),
                serde_json::json!({}),
            ),
        )
    })?;
    let mut response = rewrite_response(state, upstream, &method, &route, record);
    let manifest_error = method == Method::PUT
        && matches!(route, Route::Manifest { .. })
        && response.status() == StatusCode::BAD_REQUEST;
    if manifest_error {
        response = zot_manifest_error(response).await;
    }
    if anonymous_ping {
        // zot's 200 on /v2/ carries a realm for clients that look for one; not a challenge.
        challenge(&mut response);
    }
    Ok(response)
}

/// distribution answers a manifest referencing a missing blob with `MANIFEST_BLOB_UNKNOWN`
/// and a digest mismatch with `DIGEST_INVALID`; zot says `MANIFEST_INVALID` for both.
async fn zot_manifest_error(response: Response<ProxyBody>) -> Response<ProxyBody> {
    let status = response.status();
    // Small JSON from our own upstream: no need for a limit.
    let body = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    manifest_invalid(status, &body)
}

fn manifest_invalid(status: StatusCode, upstream_body: &[u8]) -> Response<ProxyBody> {
    let code = serde_json::from_slice::<serde_json::Value>(upstream_body)
        .ok()
        .and_then(|v| v.pointer("/errors/0/code").cloned())
        .unwrap_or_default();
    error_list(
        status,
        "MANIFEST_INVALID",
        "manifest invalid",
        serde_json::json!({ "upstreamCode": code }),
    )
}

/// zot's protocol rules; a manifest body is read here (bounded) and put back.
async fn check_protocol(
    state: &State,
    req: Request<Incoming>,
    route: &Route,
) -> Result<Request<ProxyBody>, Rejection> {
    let headers = req.headers();
    let content_length: Option<u64> =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let content_range = header_str(headers, header::CONTENT_RANGE);
    let query = req.uri().query().map(str::to_owned);
    match (req.method().clone(), route) {
        (Method::PUT, Route::Manifest { .. }) => {
            let content_type = header_str(headers, header::CONTENT_TYPE).unwrap_or_default();
            if content_type != OCI_MANIFEST && content_type != OCI_INDEX {
                return Err((
                    "manifest-content-type",
                    error_list(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "MANIFEST_INVALID",
                        "manifest invalid",
                        serde_json::json!({ "mediaType": content_type }),
                    ),
                ));
            }
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, MANIFEST_BODY_LIMIT).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    let too_big = e
                        .downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some();
                    let (status, rule) = if too_big {
                        (StatusCode::PAYLOAD_TOO_LARGE, "manifest-body-limit")
                    } else {
                        (StatusCode::BAD_REQUEST, "manifest-body-read")
                    };
                    return Err((
                        rule,
                        error_list(
                            status,
                            "MANIFEST_INVALID",
                            "manifest invalid",
                            serde_json::json!({}),
                        ),
                    ));
                }
            };
            if let Err(reason) = validate_manifest(&bytes, &content_type) {
                return Err((
                    "manifest-invalid",
                    error_list(
                        StatusCode::BAD_REQUEST,
                        "MANIFEST_INVALID",
                        "manifest invalid",
                        serde_json::json!({ "reason": reason }),
                    ),
                ));
            }
            let mut parts = parts;
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Ok(Request::from_parts(parts, full(bytes)))
        }
        (Method::POST, Route::UploadStart { .. }) if query_has(query.as_deref(), "digest") => {
            if content_length.is_none() {
                return Err((
                    "monolithic-post-length",
                    error_list(
                        StatusCode::BAD_REQUEST,
                        "BLOB_UPLOAD_INVALID",
                        "monolithic upload needs Content-Length",
                        serde_json::json!({}),
                    ),
                ));
            }
            let content_type = header_str(headers, header::CONTENT_TYPE).unwrap_or_default();
            if content_type != "application/octet-stream" {
                return Err((
                    "monolithic-post-content-type",
                    error_list(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "BLOB_UPLOAD_INVALID",
                        "monolithic upload needs Content-Type application/octet-stream",
                        serde_json::json!({ "mediaType": content_type }),
                    ),
                ));
            }
            Ok(req.map(|b| b.map_err(BoxError::from).boxed()))
        }
        (Method::PATCH, Route::Upload { uuid }) => {
            if let Some(range) = content_range {
                check_range(state, uuid, &range)?;
            }
            Ok(req.map(|b| b.map_err(BoxError::from).boxed()))
        }
        (Method::PUT, Route::Upload { uuid }) => {
            if !query_has(query.as_deref(), "digest") {
                return Err((
                    "final-put-digest",
                    error_list(
                        StatusCode::BAD_REQUEST,
                        "DIGEST_INVALID",
                        "final PUT without ?digest=",
                        serde_json::json!({}),
                    ),
                ));
            }
            let Some(length) = content_length else {
                return Err((
                    "final-put-length",
                    error_list(
                        StatusCode::BAD_REQUEST,
                        "DIGEST_INVALID",
                        "final PUT without Content-Length: zot does not read a chunked body",
                        serde_json::json!({}),
                    ),
                ));
            };
            if length > 0 {
                match content_range {
                    Some(range) => check_range(state, uuid, &range)?,
                    None => {
                        let offset = state
                            .offsets
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(uuid)
                            .copied()
                            .unwrap_or(0);
                        if offset > 0 {
                            return Err((
                                "final-put-range",
                                range_error(
                                    "a final PUT with data after PATCHes needs Content-Range",
                                ),
                            ));
                        }
                    }
                }
            }
            Ok(req.map(|b| b.map_err(BoxError::from).boxed()))
        }
        _ => Ok(req.map(|b| b.map_err(BoxError::from).boxed())),
    }
}

fn range_error(message: &str) -> Response<ProxyBody> {
    error_list(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
        message,
        serde_json::json!({}),
    )
}

#[expect(
    clippy::result_large_err,
    reason = "a rejection is built at most once per request"
)]
fn check_range(state: &State, uuid: &str, range: &str) -> Result<(), Rejection> {
    let Some((start, _)) = parse_content_range(range) else {
        return Err((
            "content-range-format",
            range_error("Content-Range must be start-end"),
        ));
    };
    let offset = state
        .offsets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(uuid)
        .copied();
    match offset {
        Some(offset) if offset != start => Err((
            "content-range-offset",
            range_error(&format!(
                "Content-Range starts at {start}, upload is at {offset}"
            )),
        )),
        _ => Ok(()),
    }
}

fn validate_manifest(body: &[u8], content_type: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if value
        .get("schemaVersion")
        .and_then(serde_json::Value::as_u64)
        != Some(2)
    {
        return Err("schemaVersion must be 2".to_owned());
    }
    match value.get("mediaType") {
        None => Ok(()),
        Some(serde_json::Value::String(media_type)) if media_type == content_type => Ok(()),
        Some(other) => Err(format!(
            "mediaType {other} does not match Content-Type {content_type}"
        )),
    }
}

async fn tag_exists(state: &State, name: &str, tag: &str) -> Result<bool, BoxError> {
    let uri: Uri = format!("http://{}/v2/{name}/manifests/{tag}", state.config.upstream).parse()?;
    let req = Request::head(uri)
        .header(header::AUTHORIZATION, state.upstream_auth.clone())
        .header(header::ACCEPT, ACCEPT_ALL_MANIFESTS)
        .body(empty())?;
    let response = state.client.request(req).await?;
    match response.status() {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        other => Err(format!("upstream answered {other} to HEAD {name}:{tag}").into()),
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

async fn forward(
    state: &State,
    req: Request<ProxyBody>,
    route: &Route,
) -> Result<Response<Incoming>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    parts.uri = format!("http://{}{path_and_query}", state.config.upstream).parse()?;
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::HOST);
    parts
        .headers
        .insert(header::AUTHORIZATION, state.upstream_auth.clone());
    if matches!(route, Route::Manifest { .. })
        && (parts.method == Method::GET || parts.method == Method::HEAD)
    {
        // zot serves a manifest whatever the Accept header says; distribution 2.8 hides
        // OCI manifests from clients that do not list the OCI type.
        parts.headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(ACCEPT_ALL_MANIFESTS),
        );
    }
    Ok(state
        .client
        .request(Request::from_parts(parts, body))
        .await?)
}

/// zot stores a blob sent with `POST ?digest=` in one request (201); distribution 2.8
/// ignores the body and opens a session (202). Emulate zot: open a session upstream, then
/// `PUT` the body to it with the digest.
async fn forward_monolithic(
    state: &State,
    req: Request<ProxyBody>,
    route: &Route,
) -> Result<Response<Incoming>, BoxError> {
    let Route::UploadStart { name } = route else {
        return Err("not an upload start".into());
    };
    let (parts, body) = req.into_parts();
    let digest = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("digest="))
        .ok_or("no digest")?
        .to_owned();
    let open = Request::post(format!(
        "http://{}/v2/{name}/blobs/uploads/",
        state.config.upstream
    ))
    .header(header::AUTHORIZATION, state.upstream_auth.clone())
    .header(header::CONTENT_LENGTH, 0)
    .body(empty())?;
    let opened = state.client.request(open).await?;
    if opened.status() != StatusCode::ACCEPTED {
        return Ok(opened);
    }
    let location = header_str(opened.headers(), header::LOCATION).ok_or("no Location")?;
    let location = relative_location(&location);
    let sep = if location.contains('?') { '&' } else { '?' };
    let mut put = Request::put(format!(
        "http://{}{location}{sep}digest={digest}",
        state.config.upstream
    ))
    .header(header::AUTHORIZATION, state.upstream_auth.clone())
    .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
        put = put.header(header::CONTENT_LENGTH, length.clone());
    }
    Ok(state.client.request(put.body(body)?).await?)
}

/// Relative `Location`, `Blob-Upload-UUID`, upload offsets.
fn rewrite_response(
    state: &State,
    upstream: Response<Incoming>,
    method: &Method,
    route: &Route,
    record: &RequestRecord,
) -> Response<ProxyBody> {
    let (mut parts, body) = upstream.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    if let Some(location) = header_str(&parts.headers, header::LOCATION) {
        let relative = relative_location(&location);
        if let Ok(value) = HeaderValue::from_str(&relative) {
            parts.headers.insert(header::LOCATION, value);
        }
    }
    if let Some(uuid) = parts.headers.remove("docker-upload-uuid") {
        parts.headers.insert("blob-upload-uuid", uuid);
    }
    let status = parts.status;
    let mut offsets = state.offsets.lock().unwrap_or_else(PoisonError::into_inner);
    match (method, route) {
        (&Method::POST, Route::UploadStart { .. }) if status == StatusCode::ACCEPTED => {
            if let Some(uuid) = parts
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split('?').next())
                .and_then(|l| l.rsplit('/').next())
            {
                offsets.insert(uuid.to_owned(), 0);
            }
        }
        (&Method::PATCH, Route::Upload { uuid }) if status == StatusCode::ACCEPTED => {
            let previous = offsets.get(uuid).copied().unwrap_or(0);
            let from_range = record
                .content_range
                .as_deref()
                .and_then(parse_content_range)
                .map(|(_, end)| end + 1);
            let from_upstream = header_str(&parts.headers, header::RANGE)
                .as_deref()
                .and_then(parse_content_range)
                .and_then(|(_, end)| (end > 0).then_some(end + 1));
            let next = from_range
                .or(record.content_length.map(|len| previous + len))
                .or(from_upstream)
                .unwrap_or(previous);
            offsets.insert(uuid.clone(), next);
        }
        (&Method::PUT | &Method::DELETE, Route::Upload { uuid }) if status.is_success() => {
            offsets.remove(uuid);
        }
        _ => {}
    }
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

/// `scheme://host[:port]/path?query` -> `/path?query`; relative input is kept.
fn relative_location(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        },
        None => location.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v2/"), Route::Base);
        assert_eq!(Route::parse("/v2"), Route::Base);
        assert_eq!(
            Route::parse("/v2/blumeops/hello/manifests/v1.0.0-abc"),
            Route::Manifest {
                name: "blumeops/hello".to_owned(),
                reference: "v1.0.0-abc".to_owned()
            }
        );
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/"),
            Route::UploadStart {
                name: "a/b".to_owned()
            }
        );
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/1234-ab"),
            Route::Upload {
                uuid: "1234-ab".to_owned()
            }
        );
        assert_eq!(Route::parse("/v2/a/blobs/sha256:00"), Route::Other);
    }

    #[test]
    fn locations() {
        assert_eq!(
            relative_location("http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=x"),
            "/v2/a/blobs/uploads/u?_state=x"
        );
        assert_eq!(relative_location("/v2/a/blobs/x"), "/v2/a/blobs/x");
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes=0-99"), None);
        assert_eq!(parse_content_range("5-1"), None);
    }

    #[test]
    fn manifest_validation() {
        let ok = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert!(validate_manifest(ok, OCI_MANIFEST).is_ok());
        assert!(validate_manifest(ok, OCI_INDEX).is_err());
        assert!(validate_manifest(br#"{"schemaVersion":2}"#, OCI_MANIFEST).is_ok());
        assert!(validate_manifest(br#"{"schemaVersion":1}"#, OCI_MANIFEST).is_err());
        assert!(validate_manifest(b"nope", OCI_MANIFEST).is_err());
    }
}
