//! A real distribution registry (`/usr/bin/docker-registry`) with Bearer token auth, and the
//! token server it trusts.
//!
//! The registry is configured with `auth: token` (realm, service [`TOKEN_SERVICE`], issuer
//! [`TOKEN_ISSUER`], `rootcertbundle`) and validates every token itself: the JWT signature,
//! the `x5c` chain against the bundle, issuer, audience, expiry and the granted actions.
//!
//! The token server answers `GET /token?service=..&scope=repository:NAME:ACTIONS` like
//! Docker Hub's: HTTP Basic credentials of a known user (or none: anonymous) give a JWT
//! (ES256, signed with a P-256 key whose self-signed certificate is the registry's
//! `rootcertbundle`, sent as `x5c`) granting the requested actions the user may have;
//! anonymous and [`PULL_USER`] get `pull` only, [`PUSH_USER`] `pull` and `push`. Wrong
//! credentials get 401. Every token request is recorded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::registry::REGISTRY_BIN;
use crate::util::{random_hex, tempdir};

/// The `service` the registry names in its challenges and expects as the token audience.
pub const TOKEN_SERVICE: &str = "test-registry";
/// The issuer the registry expects in tokens.
pub const TOKEN_ISSUER: &str = "test-issuer";
/// A user granted `pull` and `push`.
pub const PUSH_USER: &str = "pusher";
/// A user granted `pull` only.
pub const PULL_USER: &str = "puller";
/// How long issued tokens are valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// One request to the token server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// Whether the request carried an `Authorization` header.
    pub had_auth: bool,
    /// The user when the credentials were valid.
    pub user: Option<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// Every requested scope, as sent.
    pub scopes: Vec<String>,
    /// What the issued token grants, as `repository:NAME:ACTIONS` (empty when refused).
    pub granted: Vec<String>,
    /// Status answered.
    pub status: u16,
}

/// A key and its self-signed certificate, to sign tokens.
struct Signer {
    /// PKCS#8 DER of the P-256 private key.
    key_der: Vec<u8>,
    /// DER of the certificate.
    cert_der: Vec<u8>,
    /// PEM of the certificate (the registry's `rootcertbundle`).
    cert_pem: String,
}

impl Signer {
    fn generate() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec![TOKEN_ISSUER.to_owned()])
            .expect("failed to generate a token signing certificate");
        Self {
            key_der: certified.signing_key.serialize_der(),
            cert_der: certified.cert.der().to_vec(),
            cert_pem: certified.cert.pem(),
        }
    }

    /// A JWT for `subject` granting `access` (`(repository, actions)` pairs).
    fn sign(&self, subject: &str, access: &[(String, Vec<String>)]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let access: Vec<_> = access
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            // distribution 2.8 reads `aud` as a single string.
            "aud": TOKEN_SERVICE,
            "exp": now + TOKEN_LIFETIME.as_secs(),
            "nbf": now.saturating_sub(10),
            "iat": now,
            "jti": random_hex(12),
            "access": access,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.x5c = Some(vec![BASE64.encode(&self.cert_der)]);
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.key_der),
        )
        .expect("failed to sign a token")
    }
}

/// A JWT with valid claims for [`TOKEN_SERVICE`] signed by a key the registry does not trust
/// (its own self-signed certificate in `x5c`): the registry must refuse it.
pub fn untrusted_token(subject: &str, repository: &str, actions: &[&str]) -> String {
    Signer::generate().sign(
        subject,
        &[(
            repository.to_owned(),
            actions.iter().map(|a| (*a).to_owned()).collect(),
        )],
    )
}

struct TokenState {
    signer: Signer,
    /// user -> (password, actions it may be granted).
    users: HashMap<String, (String, Vec<&'static str>)>,
    log: Mutex<Vec<TokenRequest>>,
}

/// A distribution registry with token auth plus its token server; both stop when dropped.
pub struct TokenRegistry {
    child: Child,
    addr: SocketAddr,
    token_addr: SocketAddr,
    state: Arc<TokenState>,
    shutdown: watch::Sender<bool>,
    runtime: Runtime,
    pusher_password: String,
    puller_password: String,
    dir: TempDir,
}

impl std::fmt::Debug for TokenRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRegistry")
            .field("addr", &self.addr)
            .field("token_addr", &self.token_addr)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TokenRegistry {
    /// Start the token server and the registry; panics with the registry's log if it does
    /// not come up.
    pub fn start() -> Self {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} not found: apt-get install docker-registry"
        );
        let dir = tempdir("blumeops-token-registry-");
        let pusher_password = random_hex(16);
        let puller_password = random_hex(16);
        let state = Arc::new(TokenState {
            signer: Signer::generate(),
            users: HashMap::from([
                (
                    PUSH_USER.to_owned(),
                    (pusher_password.clone(), vec!["pull", "push"]),
                ),
                (
                    PULL_USER.to_owned(),
                    (puller_password.clone(), vec!["pull"]),
                ),
            ]),
            log: Mutex::new(Vec::new()),
        });
        let cert = dir.path().join("token-cert.pem");
        std::fs::write(&cert, &state.signer.cert_pem)
            .unwrap_or_else(|e| panic!("failed to write {}: {e}", cert.display()));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("token-server")
            .enable_all()
            .build()
            .expect("failed to build the token server runtime");
        let listener = runtime
            .block_on(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
            .expect("failed to bind the token server");
        let token_addr = listener.local_addr().expect("token server address");
        let (shutdown, stop) = watch::channel(false);
        runtime.spawn(serve(listener, Arc::clone(&state), stop));

        let realm = format!("http://{token_addr}/token");
        let (child, addr) = start_registry(dir.path(), &realm, &cert);
        Self {
            child,
            addr,
            token_addr,
            state,
            shutdown,
            runtime,
            pusher_password,
            puller_password,
            dir,
        }
    }

    /// `host:port` of the registry.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `http://host:port` of the registry.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint (the registry's `realm`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.token_addr)
    }

    /// [`PUSH_USER`]'s password.
    pub fn pusher_password(&self) -> &str {
        &self.pusher_password
    }

    /// [`PULL_USER`]'s password.
    pub fn puller_password(&self) -> &str {
        &self.puller_password
    }

    /// Every password, to check that none leaks into output.
    pub fn secrets(&self) -> [&str; 2] {
        [&self.pusher_password, &self.puller_password]
    }

    /// A genuine token (signed with the trusted key) for `subject`, granting `actions` on
    /// `repository`, as the token server would issue it.
    pub fn mint_token(&self, subject: &str, repository: &str, actions: &[&str]) -> String {
        self.state.signer.sign(
            subject,
            &[(
                repository.to_owned(),
                actions.iter().map(|a| (*a).to_owned()).collect(),
            )],
        )
    }

    /// Every token request so far, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forget the token requests so far.
    pub fn clear_token_log(&self) {
        self.state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The registry's combined stdout/stderr so far.
    pub fn registry_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Run a future on the token server's runtime; not from async code.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A plain-HTTP client for raw requests.
    pub fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("failed to build an HTTP client")
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.shutdown.send(true);
    }
}

async fn serve(listener: TcpListener, state: Arc<TokenState>, stop: watch::Receiver<bool>) {
    crate::http_server::serve_http1(listener, stop, move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(&state, &req)) }
    })
    .await;
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        serde_json::json!({"errors": [{"code": code, "message": message}]}),
    )
}

/// `Basic` credentials from the request: `Ok(None)` without a header, `Err` when malformed.
fn basic_credentials(req: &Request<Incoming>) -> Result<Option<(String, String)>, ()> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(());
    }
    let decoded = BASE64.decode(encoded.trim()).map_err(|_| ())?;
    let decoded = String::from_utf8(decoded).map_err(|_| ())?;
    let (user, password) = decoded.split_once(':').ok_or(())?;
    Ok(Some((user.to_owned(), password.to_owned())))
}

fn handle(state: &TokenState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut record = TokenRequest {
        had_auth: req.headers().contains_key(header::AUTHORIZATION),
        user: None,
        service: None,
        scopes: Vec::new(),
        granted: Vec::new(),
        status: 0,
    };
    let response = issue(state, req, &mut record);
    record.status = response.status().as_u16();
    state
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(record);
    response
}

fn issue(
    state: &TokenState,
    req: &Request<Incoming>,
    record: &mut TokenRequest,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/token" {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint");
    }
    for (key, value) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*key {
            "service" => record.service = Some(value.into_owned()),
            "scope" => record.scopes.extend(
                value
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    let allowed: &[&str] = match basic_credentials(req) {
        Err(()) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "malformed credentials",
            );
        }
        Ok(None) => &["pull"],
        Ok(Some((user, password))) => match state.users.get(&user) {
            Some((known, actions)) if *known == password => {
                record.user = Some(user);
                actions
            }
            _ => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "invalid username or password",
                );
            }
        },
    };
    if record.service.as_deref() != Some(TOKEN_SERVICE) {
        return error(StatusCode::BAD_REQUEST, "UNSUPPORTED", "unknown service");
    }
    let mut access = Vec::new();
    for scope in &record.scopes {
        // `repository:NAME:ACTIONS`; NAME has no `:` in these tests.
        let mut parts = scope.splitn(3, ':');
        let (Some("repository"), Some(name), Some(actions)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_SCOPE",
                "unsupported scope",
            );
        };
        let granted: Vec<String> = actions
            .split(',')
            .filter(|a| allowed.contains(a))
            .map(str::to_owned)
            .collect();
        if !granted.is_empty() {
            record
                .granted
                .push(format!("repository:{name}:{}", granted.join(",")));
            access.push((name.to_owned(), granted));
        }
    }
    let token = state
        .signer
        .sign(record.user.as_deref().unwrap_or(""), &access);
    reply(
        StatusCode::OK,
        serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_LIFETIME.as_secs(),
        }),
    )
}

fn start_registry(dir: &Path, realm: &str, cert: &Path) -> (Child, SocketAddr) {
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).expect("failed to create the storage directory");
    crate::registry::spawn_registry(dir, |addr| {
        format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: {secret}\n\
             auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n\
             \x20   issuer: {TOKEN_ISSUER}\n    rootcertbundle: {cert}\n",
            storage = storage.display(),
            secret = random_hex(16),
            cert = cert.display(),
        )
    })
}
