//! Registry client: pull into the store, push from the store, with zot's rules in mind.
//!
//! - Loopback registries (and every registry with [`ClientOptions::plain_http`]) are spoken to
//!   over plain HTTP, others over HTTPS. Loopback means the reference's host is `localhost` or
//!   a loopback IP literal; a name that resolves to a loopback address still gets HTTPS.
//! - A refused TLS certificate is reported as [`Error::Certificate`], naming the host and what
//!   is wrong, and never retried.
//! - Requests go out anonymously first. A 401 is answered from its `WWW-Authenticate`
//!   challenge: `Basic` with the configured credentials (sent up front from then on, and from
//!   the first request of later runs when [`ClientOptions::state_dir`] is set), `Bearer` with
//!   a token from the challenge's realm, cached per host and scope. A 401 after credentials
//!   were sent, and any 403, are reported, never retried (but a host that answers Basic
//!   credentials with a Bearer challenge alone gets a token instead).
//! - Blobs stream: downloads are hashed while written to the store and committed only when
//!   the digest and size match; uploads read the store file with a bounded buffer and a
//!   known `Content-Length` (one `PUT` up to [`ClientOptions::upload_chunk_size`], by default
//!   any size; `PATCH` chunks beyond). The manifest goes last, after every blob is confirmed
//!   present: a HEAD found it, the upload's answer named it, or an earlier push to the same
//!   repository had the registry take a manifest that references it (kept in
//!   [`ClientOptions::state_dir`] for a week; when the registry refuses a manifest after such
//!   a blob was taken on trust, every blob is checked, the missing ones are uploaded and the
//!   manifest goes again).
//! - Every request is retried on transient failures (see [`RetryPolicy`]): connection errors,
//!   timeouts, 408, 429 (`Retry-After` honoured) and 5xx. An interrupted upload asks the
//!   registry how much it has (`GET` on the session, `Range: 0-N`) and continues from there;
//!   a session the registry forgot is started again.
//! - A push first checks the tag: the same digest means nothing is pushed at all (zot refuses
//!   a create-only account even an identical manifest PUT to an existing tag).
//! - A base image may come through a mirror ([`Mirrors`]: `--registry-mirror`, registries.conf):
//!   each mirror is tried in order and one that fails falls through to the next, then to the
//!   registry. The image is the same bytes by digest either way; pushes never use mirrors.

mod auth;
mod credentials;
mod error;
mod known;
mod mirrors;
mod pull;
mod push;
mod retry;
mod tags;
mod tls;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use url::Url;

use crate::image::{ManifestBlob, StoredImage};
use crate::reference::{Digest, ImageRef, Platform};
use crate::store::Store;

use auth::{AuthCache, Challenge};
pub use credentials::{Credential, Credentials};
pub use error::{Error, ErrorKind, Operation, ServerError};
pub use mirrors::{
    MirrorFailure, MirrorFlag, Mirrors, REGISTRIES_CONF_ENV, RegistriesConf,
    SYSTEM_REGISTRIES_CONF, SYSTEM_REGISTRIES_CONF_DIR,
};
pub use retry::{MAX_RETRY_AFTER, RetryPolicy};
pub use tls::CertificateProblem;

/// Default number of parallel blob uploads (zot has a global storage lock: a few help).
pub const DEFAULT_MAX_PARALLEL_UPLOADS: usize = 3;
/// Default number of parallel blob downloads.
pub const DEFAULT_MAX_PARALLEL_DOWNLOADS: usize = 3;
/// How long to wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time limit for a whole request that carries no blob (manifests, HEADs, tokens).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a blob download may go without receiving a byte.
pub const BLOB_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A blob upload may take this long plus [`UPLOAD_MIN_BYTES_PER_SEC`]-paced time for its size.
const UPLOAD_BASE_TIMEOUT: Duration = Duration::from_secs(300);
/// Slowest upload rate tolerated before an upload is called stuck.
const UPLOAD_MIN_BYTES_PER_SEC: u64 = 64 * 1024;
/// Default largest upload request: no limit, every blob goes in one `PUT` (the registry's
/// monolithic upload, as fast as it takes a blob). An interrupted upload still resumes from
/// the offset the registry reports, so chunks are not needed for that; a registry that keeps
/// nothing of a cut request has the blob sent again.
pub const DEFAULT_UPLOAD_CHUNK_SIZE: u64 = u64::MAX;
/// Bytes read from a blob's file at a time for an upload.
const UPLOAD_BUFFER: usize = 256 * 1024;
/// Pieces of [`UPLOAD_BUFFER`] bytes read ahead of the socket, per upload.
const UPLOAD_QUEUE: usize = 4;
/// Largest manifest or index accepted (zot's own limit is 4 MiB).
const MAX_MANIFEST_BYTES: u64 = crate::limits::MAX_MANIFEST_BYTES;
/// Largest error or token body read.
const MAX_SMALL_BODY_BYTES: u64 = 64 * 1024;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Credentials per registry.
    pub credentials: Credentials,
    /// Talk plain HTTP to every registry (loopback registries always use plain HTTP).
    pub plain_http: bool,
    /// Blob uploads at once.
    pub max_parallel_uploads: usize,
    /// Blob downloads at once.
    pub max_parallel_downloads: usize,
    /// Time limit for a whole request without a blob body (manifests, HEADs, tokens).
    pub request_timeout: Duration,
    /// Retries of transient failures, per operation.
    pub retry: RetryPolicy,
    /// Largest blob sent in one request; larger blobs go in `PATCH` chunks of this size.
    pub upload_chunk_size: u64,
    /// Where base images may be pulled from instead (none by default).
    pub mirrors: Mirrors,
    /// Where the client keeps what it learned of registries for later runs (see
    /// [`RegistryClient`]); `None`: nothing is kept.
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            credentials: Credentials::default(),
            plain_http: false,
            max_parallel_uploads: DEFAULT_MAX_PARALLEL_UPLOADS,
            max_parallel_downloads: DEFAULT_MAX_PARALLEL_DOWNLOADS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry: RetryPolicy::default(),
            upload_chunk_size: DEFAULT_UPLOAD_CHUNK_SIZE,
            mirrors: Mirrors::default(),
            state_dir: None,
        }
    }
}

/// What to do when the tag already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TagPolicy {
    /// Same digest: push nothing and succeed; other digest: fail.
    #[default]
    CreateOnly,
    /// Replace the tag (needs `update` permission on zot).
    AllowOverwrite,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// Manifest digest now behind the tag.
    pub digest: Digest,
    /// True if the tag already pointed at this digest and nothing was pushed.
    pub unchanged: bool,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Blobs that already existed (HEAD said so).
    pub blobs_skipped: usize,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
}

/// How far a push is, after one more blob is in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProgress {
    /// The blob just confirmed.
    pub digest: Digest,
    /// Whether it was uploaded (else the registry had it).
    pub uploaded: bool,
    /// Bytes sent for it (0 when the registry had it).
    pub bytes_sent: u64,
    /// Blobs confirmed so far, and of how many.
    pub done: usize,
    /// Blobs to push in all.
    pub total: usize,
}

/// A pulled image: its blobs are in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// Manifest (as pulled: may carry Docker media types), config and layers.
    pub image: StoredImage,
    /// The parsed config.
    pub config: oci_spec::image::ImageConfiguration,
    /// How many blobs were downloaded (the others were in the store already).
    pub blobs_fetched: u64,
    /// Their bytes.
    pub bytes_fetched: u64,
    /// The mirror (or rewritten location) that served it, as configured; `None` when it came
    /// from the reference's own registry.
    pub mirror: Option<String>,
    /// Mirrors tried before, and why each did not serve it.
    pub mirror_failures: Vec<MirrorFailure>,
}

/// A registry client. Clone-cheap; auth state is shared.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    options: ClientOptions,
    http: reqwest::Client,
    auth: Arc<Mutex<AuthCache>>,
    /// What earlier runs learned, kept in [`ClientOptions::state_dir`].
    known: Option<known::Known>,
    /// Hosts of mirrors that could not be reached: their mirrors are skipped from then on
    /// instead of waiting through the retries again.
    unreachable_mirrors: Arc<Mutex<HashSet<String>>>,
}

/// The access a request needs, as a token scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Pull,
    Push,
}

/// One repository on one registry, as the client addresses it.
#[derive(Debug)]
struct Repo {
    /// Registry as written in the reference: for credentials and messages.
    registry: String,
    /// Host requests go to (`registry-1.docker.io` for Docker Hub).
    host: String,
    /// `scheme://host/`.
    base: Url,
    /// Repository path.
    repository: String,
    /// Token scope, e.g. `repository:blumeops/hello:pull,push`.
    scope: String,
}

impl Repo {
    /// `base` + `path` (no leading slash).
    fn url(&self, path: &str) -> Result<Url, Error> {
        self.base.join(path).map_err(|source| Error::InvalidUrl {
            url: format!("{}{path}", self.base),
            source,
        })
    }
}

/// How long a request may take.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// The whole request, body included.
    Total(Duration),
    /// Until the response headers; the caller bounds each body read itself.
    Headers(Duration),
}

/// One request's context, for auth and error messages.
struct Call<'a> {
    repo: &'a Repo,
    operation: Operation,
    target: &'a str,
    url: &'a Url,
    limit: Limit,
}

/// When the system has no CA certificates (an image without `ca-certificates`, an
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` naming nothing), Mozilla's roots built into blumeops, so
/// HTTPS registries still verify; said once on stderr. `None` when the system has roots:
/// they are used, with `SSL_CERT_FILE` and `SSL_CERT_DIR` honoured.
fn builtin_roots_if_none_on_system() -> Option<Vec<reqwest::Certificate>> {
    static NOTE: std::sync::Once = std::sync::Once::new();
    if !rustls_native_certs::load_native_certs().certs.is_empty() {
        return None;
    }
    NOTE.call_once(|| {
        eprintln!(
            "note: no CA certificates found on this system (install ca-certificates, or set \
             SSL_CERT_FILE); using the Mozilla roots built into blumeops for HTTPS"
        );
    });
    Some(
        webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
            .collect(),
    )
}

/// The auth a request went out with.
enum Sent {
    Anonymous,
    Basic(String),
    Bearer { fresh: bool },
}

impl RegistryClient {
    /// A client with these options.
    pub fn new(options: ClientOptions) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("blumeops/", env!("CARGO_PKG_VERSION")))
            .tcp_keepalive(Duration::from_secs(30));
        if let Some(roots) = builtin_roots_if_none_on_system() {
            builder = builder.tls_certs_only(roots);
        }
        let http = builder
            .build()
            .map_err(|source| Error::BuildClient { source })?;
        let known = options.state_dir.clone().map(known::Known::new);
        Ok(Self {
            auth: new_auth(known.as_ref()),
            known,
            options,
            http,
            unreachable_mirrors: Arc::default(),
        })
    }

    /// This client with `credentials` (registry address, credential) in front of its own
    /// for those registries. Tokens are not shared with this client: they were granted
    /// to other credentials.
    pub fn with_credentials(&self, credentials: &[(String, Credential)]) -> Self {
        let mut options = self.options.clone();
        for (address, credential) in credentials {
            options.credentials = options
                .credentials
                .with_registry(address, credential.clone());
        }
        Self {
            options,
            http: self.http.clone(),
            auth: new_auth(self.known.as_ref()),
            known: self.known.clone(),
            unreachable_mirrors: self.unreachable_mirrors.clone(),
        }
    }

    /// This client with other time limits and retries, sharing its connections and what it
    /// learns of auth.
    pub(crate) fn with_timeouts(&self, request_timeout: Duration, retry: RetryPolicy) -> Self {
        Self {
            options: ClientOptions {
                request_timeout,
                retry,
                ..self.options.clone()
            },
            ..self.clone()
        }
    }

    /// Resolve `reference` (an index is narrowed to `platform`), and fetch the manifest,
    /// config and every layer into `store`, each verified against its digest; through the
    /// first of its mirrors that serves it, if it has any.
    pub async fn pull_image(
        &self,
        reference: &ImageRef,
        platform: &Platform,
        store: &Store,
    ) -> Result<PulledImage, Error> {
        self.pull_image_impl(reference, platform, store).await
    }

    /// The digest the tag currently points at, or `None` if the tag does not exist.
    pub async fn head_manifest(&self, reference: &ImageRef) -> Result<Option<Digest>, Error> {
        let repo = self.repo(reference, Access::Pull)?;
        self.head_manifest_in(&repo, reference).await
    }

    /// Every tag of `reference`'s repository (its tag or digest is ignored), in the
    /// registry's order, following `Link` pages; empty when the repository does not exist.
    pub async fn list_tags(&self, reference: &ImageRef) -> Result<Vec<String>, Error> {
        self.list_tags_impl(reference).await
    }

    /// Push `image` (all blobs in `store`) to `target` under the tag policy.
    pub async fn push_image(
        &self,
        target: &ImageRef,
        image: &StoredImage,
        store: &Store,
        policy: TagPolicy,
    ) -> Result<PushReport, Error> {
        self.push_image_impl(target, image, store, policy, None, &|_| {})
            .await
    }

    /// [`RegistryClient::push_image`], calling `progress` each time a blob is confirmed
    /// present in the registry (uploaded or found there).
    pub async fn push_image_with_progress(
        &self,
        target: &ImageRef,
        image: &StoredImage,
        store: &Store,
        policy: TagPolicy,
        progress: &(dyn Fn(&BlobProgress) + Sync),
    ) -> Result<PushReport, Error> {
        self.push_image_impl(target, image, store, policy, None, progress)
            .await
    }

    /// Push `images` and `root` (one of their manifests, or an index of them, such as one
    /// image per platform) to `target` under the tag policy: every blob, each manifest but
    /// `root` by digest, then `root` under the tag, last. `progress` is called as each blob
    /// is confirmed present.
    pub async fn push_images_with_progress(
        &self,
        target: &ImageRef,
        root: &ManifestBlob,
        images: &[StoredImage],
        store: &Store,
        policy: TagPolicy,
        progress: &(dyn Fn(&BlobProgress) + Sync),
    ) -> Result<PushReport, Error> {
        self.push_manifests(target, images, root, store, policy, None, progress)
            .await
    }

    /// [`RegistryClient::push_image`], mounting blobs the target repository lacks from
    /// `mount_from` (another repository of the same registry) instead of uploading them.
    pub async fn push_image_mounting(
        &self,
        target: &ImageRef,
        image: &StoredImage,
        store: &Store,
        policy: TagPolicy,
        mount_from: Option<&ImageRef>,
    ) -> Result<PushReport, Error> {
        self.push_image_impl(target, image, store, policy, mount_from, &|_| {})
            .await
    }

    /// The manifest (or index) `reference` names, verified against its digest: bytes,
    /// media type and digest; `None` when the registry has no such tag.
    pub async fn fetch_manifest_bytes(
        &self,
        reference: &ImageRef,
    ) -> Result<Option<(Vec<u8>, String, Digest)>, Error> {
        let repo = self.repo(reference, Access::Pull)?;
        let name = reference.to_string();
        match self
            .fetch_manifest(
                &repo,
                &name,
                &reference.manifest_reference(),
                reference.digest(),
            )
            .await
        {
            Ok(m) => Ok(Some((m.bytes, m.media_type, m.digest))),
            Err(Error::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Download one blob of `reference`'s repository into `store` (verified against its
    /// digest and size) unless the store has it; the bytes downloaded.
    pub async fn fetch_blob_into(
        &self,
        reference: &ImageRef,
        blob: &crate::image::BlobRef,
        store: &Store,
    ) -> Result<u64, Error> {
        let repo = self.repo(reference, Access::Pull)?;
        self.fetch_blob(&repo, blob, store).await
    }

    fn repo(&self, reference: &ImageRef, access: Access) -> Result<Repo, Error> {
        self.repo_with(reference, access, false)
    }

    /// [`Self::repo`], over plain HTTP also when `plain_http` (an `insecure` mirror).
    fn repo_with(
        &self,
        reference: &ImageRef,
        access: Access,
        plain_http: bool,
    ) -> Result<Repo, Error> {
        let scheme = if plain_http || self.options.plain_http || reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        let base_text = format!("{scheme}://{}/", reference.api_host());
        let base = Url::parse(&base_text).map_err(|source| Error::InvalidUrl {
            url: base_text,
            source,
        })?;
        let repository = reference.repository().to_owned();
        let scope = match access {
            Access::Pull => format!("repository:{repository}:pull"),
            Access::Push => format!("repository:{repository}:pull,push"),
        };
        Ok(Repo {
            registry: reference.registry().to_owned(),
            host: reference.api_host().to_owned(),
            base,
            repository,
            scope,
        })
    }

    fn credential(&self, repo: &Repo) -> Result<Option<Credential>, Error> {
        self.options.credentials.try_lookup(&repo.registry)
    }

    fn auth_cache(&self) -> std::sync::MutexGuard<'_, AuthCache> {
        // A panic while holding the lock cannot leave the cache inconsistent: use it anyway.
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Send a request built by `build`, answering auth challenges. `build` is called again
    /// for each retry, so a streamed body is re-created (re-opened) each time.
    async fn send<F>(&self, call: &Call<'_>, build: F) -> Result<reqwest::Response, Error>
    where
        F: Fn() -> Result<reqwest::RequestBuilder, Error>,
    {
        let repo = call.repo;
        for _ in 0..4 {
            let (builder, sent) = self.authorize(call, build()?).await?;
            let response = self.execute(call, builder).await?;
            match response.status() {
                StatusCode::UNAUTHORIZED => {}
                StatusCode::FORBIDDEN => {
                    let username = match &sent {
                        Sent::Basic(u) => Some(u.clone()),
                        Sent::Bearer { .. } => {
                            self.credential(repo).ok().flatten().map(|c| c.username)
                        }
                        Sent::Anonymous => None,
                    };
                    return Err(Error::Denied {
                        operation: call.operation,
                        target: call.target.to_owned(),
                        registry: repo.registry.clone(),
                        repository: repo.repository.clone(),
                        username,
                        server: error_body(response).await,
                    });
                }
                _ => return Ok(response),
            }
            let challenges = challenges(response.headers());
            let server = error_body(response).await;
            match sent {
                Sent::Basic(username) => {
                    let bearer = challenges.iter().find_map(|c| match c {
                        Challenge::Bearer(b) => Some(b.clone()),
                        Challenge::Basic => None,
                    });
                    match bearer {
                        // The host no longer takes Basic (an earlier run's word for it was
                        // out of date): answer its Bearer challenge instead.
                        Some(bearer) if !challenges.contains(&Challenge::Basic) => {
                            let mut cache = self.auth_cache();
                            cache.unset_basic(&repo.host);
                            cache.set_bearer_challenge(&repo.host, bearer);
                            drop(cache);
                            if let Some(known) = &self.known {
                                known.set_basic_host(&repo.host, false);
                            }
                        }
                        _ => return Err(self.unauthorized(call, username, server)),
                    }
                }
                Sent::Bearer { fresh: true } => {
                    return Err(match self.credential(repo)? {
                        Some(c) => self.unauthorized(call, c.username, server),
                        None => self.auth_required(call),
                    });
                }
                Sent::Bearer { fresh: false } => {
                    // The cached token expired: fetch a new one.
                    self.auth_cache().forget_token(&repo.host, &repo.scope);
                }
                Sent::Anonymous => {
                    let bearer = challenges.iter().find_map(|c| match c {
                        Challenge::Bearer(b) => Some(b.clone()),
                        Challenge::Basic => None,
                    });
                    if let Some(bearer) = bearer {
                        self.auth_cache().set_bearer_challenge(&repo.host, bearer);
                    } else if self.credential(repo)?.is_some() {
                        // Basic (or no usable challenge): answer with the credentials, and
                        // from the first request of later runs on.
                        self.auth_cache().set_basic(&repo.host);
                        if let Some(known) = &self.known {
                            known.set_basic_host(&repo.host, true);
                        }
                    } else {
                        return Err(self.auth_required(call));
                    }
                }
            }
        }
        Err(self.auth_required(call))
    }

    fn unauthorized(
        &self,
        call: &Call<'_>,
        username: String,
        server: Option<Box<ServerError>>,
    ) -> Error {
        Error::Unauthorized {
            operation: call.operation,
            target: call.target.to_owned(),
            registry: call.repo.registry.clone(),
            username,
            server,
        }
    }

    fn auth_required(&self, call: &Call<'_>) -> Error {
        Error::AuthRequired {
            operation: call.operation,
            target: call.target.to_owned(),
            registry: call.repo.registry.clone(),
        }
    }

    /// Add what is known to work for this host: a cached token, Basic credentials, or a token
    /// fetched now from a realm learned earlier.
    async fn authorize(
        &self,
        call: &Call<'_>,
        builder: reqwest::RequestBuilder,
    ) -> Result<(reqwest::RequestBuilder, Sent), Error> {
        let repo = call.repo;
        let (token, basic, bearer) = {
            let cache = self.auth_cache();
            (
                cache.token(&repo.host, &repo.scope),
                cache.wants_basic(&repo.host),
                cache.bearer_challenge(&repo.host),
            )
        };
        if let Some(token) = token {
            return Ok((
                builder.bearer_auth(token.expose()),
                Sent::Bearer { fresh: false },
            ));
        }
        if basic && let Some(c) = self.credential(repo)? {
            let builder = builder.basic_auth(&c.username, Some(c.password.expose()));
            return Ok((builder, Sent::Basic(c.username)));
        }
        if let Some(challenge) = bearer {
            let token = self.fetch_token(call, &challenge).await?;
            self.auth_cache()
                .set_token(&repo.host, &repo.scope, token.clone());
            return Ok((
                builder.bearer_auth(token.expose()),
                Sent::Bearer { fresh: true },
            ));
        }
        Ok((builder, Sent::Anonymous))
    }

    /// Ask the challenge's realm for a token for the call's scope, with Basic credentials
    /// when there are any.
    async fn fetch_token(
        &self,
        call: &Call<'_>,
        challenge: &auth::BearerChallenge,
    ) -> Result<crate::secret::Secret, Error> {
        let repo = call.repo;
        let mut url = Url::parse(&challenge.realm).map_err(|source| Error::InvalidUrl {
            url: challenge.realm.clone(),
            source,
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &challenge.service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &repo.scope);
        }
        let credential = self.credential(repo)?;
        let mut builder = self.http.get(url.clone());
        if let Some(c) = &credential {
            builder = builder.basic_auth(&c.username, Some(c.password.expose()));
        }
        let token_call = Call {
            repo,
            operation: Operation::FetchToken,
            target: &repo.scope,
            url: &url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let response = self.execute(&token_call, builder).await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let server = error_body(response).await;
            return Err(match credential {
                Some(c) if status == StatusCode::UNAUTHORIZED => {
                    self.unauthorized(call, c.username, server)
                }
                Some(c) => Error::Denied {
                    operation: call.operation,
                    target: call.target.to_owned(),
                    registry: repo.registry.clone(),
                    repository: repo.repository.clone(),
                    username: Some(c.username),
                    server,
                },
                None => self.auth_required(call),
            });
        }
        if !status.is_success() {
            return Err(status_error(&token_call, response).await);
        }
        let body = read_limited(&token_call, response, MAX_SMALL_BODY_BYTES).await?;
        let parsed: auth::TokenResponse =
            serde_json::from_slice(&body).map_err(|source| Error::InvalidJson {
                what: "bearer token response",
                url: url.to_string(),
                source,
            })?;
        parsed.into_token().ok_or(Error::MissingHeader {
            operation: Operation::FetchToken,
            target: repo.scope.clone(),
            url: url.to_string(),
            header: "token",
        })
    }

    /// Run one operation (`attempt` sends its requests and reads its answer) until it
    /// succeeds, fails for good, or the retry policy's attempts or time run out. `extra`
    /// extends the time limit (blob transfers). An attempt still running at the deadline is
    /// cut off with a timeout.
    async fn retrying<T, F, Fut>(
        &self,
        call: &Call<'_>,
        extra: Duration,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut budget = retry::Budget::new(&self.options.retry, extra);
        loop {
            budget.begin();
            let remaining = budget.remaining();
            let error = match tokio::time::timeout(remaining, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                Err(_) => timeout_error(call, remaining),
            };
            if let Some(error) = budget.failed(error, gave_up(call)).await {
                return Err(error);
            }
        }
    }

    /// Send one request under the call's time limit, mapping transport failures.
    async fn execute(
        &self,
        call: &Call<'_>,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let result = match call.limit {
            Limit::Total(limit) => builder.timeout(limit).send().await,
            Limit::Headers(limit) => match tokio::time::timeout(limit, builder.send()).await {
                Ok(result) => result,
                Err(_) => return Err(timeout_error(call, limit)),
            },
        };
        result.map_err(|e| transport_error(call, e))
    }
}

/// A new auth cache, knowing the hosts that earlier runs found taking Basic credentials.
fn new_auth(known: Option<&known::Known>) -> Arc<Mutex<AuthCache>> {
    let mut cache = AuthCache::default();
    for host in known.map(known::Known::basic_hosts).unwrap_or_default() {
        cache.set_basic(&host);
    }
    Arc::new(Mutex::new(cache))
}

fn timeout_error(call: &Call<'_>, limit: Duration) -> Error {
    Error::Timeout {
        operation: call.operation,
        target: call.target.to_owned(),
        url: call.url.to_string(),
        seconds: limit.as_secs_f64().ceil() as u64,
    }
}

/// How to report giving up on `call`'s operation after transient failures.
fn gave_up(call: &Call<'_>) -> impl FnOnce(Error, u32, Duration) -> Error {
    let operation = call.operation;
    let target = call.target.to_owned();
    let registry = call.repo.registry.clone();
    move |last, attempts, elapsed| Error::Retried {
        operation,
        target,
        registry,
        attempts,
        seconds: elapsed.as_secs_f64(),
        last: Box::new(last),
    }
}

fn transport_error(call: &Call<'_>, source: reqwest::Error) -> Error {
    if let Some(problem) = CertificateProblem::find(&source) {
        // A token realm may be another host than the registry: name the one refused.
        let url = source.url().unwrap_or(call.url);
        let host = match (url.host_str(), url.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            _ => host_port(url),
        };
        Error::Certificate {
            operation: call.operation,
            target: call.target.to_owned(),
            registry: call.repo.registry.clone(),
            host,
            problem: Box::new(problem),
            source,
        }
    } else if source.is_connect() {
        Error::Unreachable {
            operation: call.operation,
            target: call.target.to_owned(),
            registry: call.repo.registry.clone(),
            url: match source.url() {
                // A token realm or a redirect target may be another host than the registry.
                Some(u) if u.host_str() != call.repo.base.host_str() => {
                    format!("{}://{}/", u.scheme(), host_port(u))
                }
                _ => call.repo.base.to_string(),
            },
            source,
        }
    } else if source.is_timeout() {
        let seconds = match call.limit {
            Limit::Total(d) | Limit::Headers(d) => d.as_secs(),
        };
        Error::Timeout {
            operation: call.operation,
            target: call.target.to_owned(),
            url: call.url.to_string(),
            seconds,
        }
    } else {
        Error::Request {
            operation: call.operation,
            target: call.target.to_owned(),
            url: call.url.to_string(),
            source,
        }
    }
}

fn host_port(u: &Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

/// Every challenge in every `WWW-Authenticate` header.
fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(auth::parse_challenges)
        .collect()
}

/// The server's error, if its body holds one (read with a size and time limit).
async fn error_body(mut response: reqwest::Response) -> Option<Box<ServerError>> {
    let read = async {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_SMALL_BODY_BYTES {
                break;
            }
        }
        body
    };
    let body = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()?;
    ServerError::parse(&body).map(Box::new)
}

/// An error for an unexpected status, with the server's error body.
async fn status_error(call: &Call<'_>, response: reqwest::Response) -> Error {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, std::time::SystemTime::now()));
    Error::Status {
        operation: call.operation,
        target: call.target.to_owned(),
        url: call.url.to_string(),
        status,
        retry_after,
        server: error_body(response).await,
    }
}

/// Read a whole body, refusing more than `limit` bytes.
async fn read_limited(
    call: &Call<'_>,
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, Error> {
    let too_large = || Error::TooLarge {
        operation: call.operation,
        target: call.target.to_owned(),
        url: call.url.to_string(),
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(call, e))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A `Docker-Content-Digest` header, if present and a sha256 digest.
fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Run blocking work (file I/O) off the async worker threads.
async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
