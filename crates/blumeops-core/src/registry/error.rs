//! The registry client's error type, with a [`ErrorKind`] for exit codes and an optional hint.
//!
//! No variant carries a password, API key or bearer token: only registry names, URLs,
//! usernames, digests and what the server said in its error body.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::reference::{Digest, Platform};

use super::tls::CertificateProblem;

/// What the client was doing when something failed; shown as `failed to <operation> ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// GET a manifest or index.
    PullManifest,
    /// GET a config or layer blob.
    PullBlob,
    /// HEAD a tag before a push (or for `head_manifest`).
    CheckTag,
    /// HEAD a blob before uploading it.
    CheckBlob,
    /// POST to open a blob upload session.
    StartUpload,
    /// PATCH or PUT a blob's data.
    PushBlob,
    /// GET an upload session's status (how many bytes the registry has) to resume it.
    CheckUpload,
    /// PUT the manifest.
    PushManifest,
    /// GET a bearer token from the registry's token service.
    FetchToken,
    /// GET a repository's tag list.
    ListTags,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PullManifest => "pull manifest",
            Self::PullBlob => "pull blob",
            Self::CheckTag => "check tag",
            Self::CheckBlob => "check blob",
            Self::StartUpload => "start upload of blob",
            Self::PushBlob => "push blob",
            Self::CheckUpload => "check the upload of blob",
            Self::PushManifest => "push manifest",
            Self::FetchToken => "fetch bearer token for",
            Self::ListTags => "list tags of",
        })
    }
}

/// The error a registry put in its response body, in either shape zot uses:
/// `{"errors":[{"code":..,"message":..}]}` or a bare `{"code":..,"message":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    /// Error code, e.g. `DENIED`, `MANIFEST_INVALID`.
    pub code: Option<String>,
    /// Human-readable message.
    pub message: Option<String>,
}

impl ServerError {
    /// Parse an error body; `None` when it holds neither a code nor a message.
    pub fn parse(body: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Entry {
            code: Option<serde_json::Value>,
            message: Option<serde_json::Value>,
        }
        #[derive(serde::Deserialize)]
        struct Body {
            errors: Option<Vec<Entry>>,
            code: Option<serde_json::Value>,
            message: Option<serde_json::Value>,
        }
        let text = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
            Some(serde_json::Value::Null) | None => None,
            Some(serde_json::Value::String(_)) => None,
            Some(other) => Some(other.to_string()),
        };
        let body: Body = serde_json::from_slice(body).ok()?;
        let (code, message) = match body.errors.and_then(|e| e.into_iter().next()) {
            Some(first) => (text(first.code), text(first.message)),
            None => (text(body.code), text(body.message)),
        };
        if code.is_none() && message.is_none() {
            return None;
        }
        Some(Self { code, message })
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.code, &self.message) {
            (Some(c), Some(m)) => write!(f, "{c}: {m}"),
            (Some(c), None) => f.write_str(c),
            (None, Some(m)) => f.write_str(m),
            (None, None) => Ok(()),
        }
    }
}

/// `": <server error>"` or nothing.
struct Suffix<'a>(&'a Option<Box<ServerError>>);

impl fmt::Display for Suffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(e) => write!(f, ": {e}"),
            None => Ok(()),
        }
    }
}

/// `"user `name`"` or `"anonymous access"`.
struct User<'a>(&'a Option<String>);

impl fmt::Display for User<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(u) => write!(f, "user `{u}`"),
            None => f.write_str("anonymous access"),
        }
    }
}

/// Errors from talking to a registry or loading credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The HTTP client could not be set up.
    #[error("failed to build the HTTP client")]
    BuildClient {
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// No connection could be made (refused, DNS failure, connect timeout).
    #[error("failed to {operation} {target}: registry {registry} is unreachable at {url}")]
    Unreachable {
        /// What was being done.
        operation: Operation,
        /// What it was done to (reference or digest).
        target: String,
        /// Registry as written in the reference.
        registry: String,
        /// The URL that could not be reached.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The registry's (or its token service's) TLS certificate was refused. Never retried:
    /// the same certificate is refused again.
    #[error("failed to {operation} {target}: cannot verify {host} over HTTPS: {problem}")]
    Certificate {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// Registry as written in the reference.
        registry: String,
        /// `host:port` whose certificate was refused.
        host: String,
        /// What is wrong with the certificate.
        problem: Box<CertificateProblem>,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The registry stopped answering.
    #[error("failed to {operation} {target}: {url} did not answer within {seconds} s")]
    Timeout {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// The URL.
        url: String,
        /// The time limit that ran out.
        seconds: u64,
    },
    /// Any other transport failure (connection reset, body error, ...).
    #[error("failed to {operation} {target}: request to {url} failed")]
    Request {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// The URL.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The registry wants credentials and none were configured.
    #[error("failed to {operation} {target}: authentication is required for {registry}")]
    AuthRequired {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// Registry host.
        registry: String,
    },
    /// Credentials were sent and refused (401).
    #[error(
        "failed to {operation} {target}: {registry} answered 401 Unauthorized for user `{username}`{}",
        Suffix(server)
    )]
    Unauthorized {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// Registry host.
        registry: String,
        /// The username that was refused (never the password).
        username: String,
        /// What the registry said.
        server: Option<Box<ServerError>>,
    },
    /// Logged in (or anonymous) but not allowed (403).
    #[error(
        "failed to {operation} {target}: {registry} answered 403 Forbidden for repository `{repository}` with {}{}",
        User(username),
        Suffix(server)
    )]
    Denied {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// Registry host.
        registry: String,
        /// Repository path.
        repository: String,
        /// The username used, if any.
        username: Option<String>,
        /// What the registry said.
        server: Option<Box<ServerError>>,
    },
    /// The registry answered with an unexpected status.
    #[error(
        "failed to {operation} {target}: {url} answered {status}{}",
        Suffix(server)
    )]
    Status {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// The URL.
        url: String,
        /// HTTP status.
        status: reqwest::StatusCode,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<std::time::Duration>,
        /// What the registry said.
        server: Option<Box<ServerError>>,
    },
    /// A transient failure (connection error, timeout, 408, 429, 5xx) persisted through every
    /// attempt the retry policy allows; `last` is the last attempt's error.
    #[error(
        "failed to {operation} {target}: gave up after {attempts} {} in {seconds:.1} s",
        if *attempts == 1 { "attempt" } else { "attempts" }
    )]
    Retried {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// Registry as written in the reference.
        registry: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent, waits included.
        seconds: f64,
        /// The last attempt's error.
        #[source]
        last: Box<Error>,
    },
    /// The tag exists and points at another manifest.
    #[error("failed to push {reference}: the tag already points at {existing}, not at {new}")]
    TagConflict {
        /// The target reference.
        reference: String,
        /// Digest the tag points at now.
        existing: Digest,
        /// Digest of the image being pushed.
        new: Digest,
    },
    /// Content did not hash to its digest.
    #[error("digest mismatch for {object} {expected} from {url}: the content hashes to {actual}")]
    DigestMismatch {
        /// `manifest` or `blob`.
        object: &'static str,
        /// The URL it came from (or went to).
        url: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// Content had another size than its descriptor says.
    #[error(
        "size mismatch for {object} {digest} from {url}: expected {expected} bytes, got {actual}"
    )]
    SizeMismatch {
        /// `manifest` or `blob`.
        object: &'static str,
        /// The content's digest.
        digest: Digest,
        /// The URL.
        url: String,
        /// Declared size.
        expected: u64,
        /// Actual size (or at least this many bytes).
        actual: u64,
    },
    /// A body was larger than the client accepts for its kind.
    #[error("failed to {operation} {target}: the response from {url} is larger than {limit} bytes")]
    TooLarge {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// A response lacked a header the protocol requires.
    #[error("failed to {operation} {target}: {url} answered without a valid `{header}` header")]
    MissingHeader {
        /// What was being done.
        operation: Operation,
        /// What it was done to.
        target: String,
        /// The URL.
        url: String,
        /// The header name.
        header: &'static str,
    },
    /// JSON from the registry (manifest, index, config, token) could not be parsed.
    #[error("failed to parse {what} from {url}")]
    InvalidJson {
        /// What it was meant to be.
        what: &'static str,
        /// Where it came from.
        url: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest, index or config is over one of blumeops' limits ([`crate::limits`]).
    #[error(
        "failed to pull {reference}: its {what} has {count} {unit}, more than the limit of {limit}"
    )]
    OverLimit {
        /// The reference.
        reference: String,
        /// "manifest", "index" or "config".
        what: &'static str,
        /// What was counted: "layers", "manifests" or "bytes".
        unit: &'static str,
        /// How many it has.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// The manifest has a media type this client cannot use.
    #[error("failed to pull {reference}: unsupported manifest media type `{media_type}`")]
    UnsupportedMediaType {
        /// The reference.
        reference: String,
        /// The media type.
        media_type: String,
    },
    /// An index has no entry for the requested platform.
    #[error(
        "failed to pull {reference}: no image for platform {platform} (available: {})",
        if available.is_empty() { "none".to_owned() } else { available.join(", ") }
    )]
    PlatformNotFound {
        /// The reference.
        reference: String,
        /// The platform asked for.
        platform: Platform,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// A digest in a manifest or header is not a sha256 digest.
    #[error("failed to pull {reference}: unsupported digest `{digest}` in {what}")]
    UnsupportedDigest {
        /// The reference.
        reference: String,
        /// Where the digest was.
        what: &'static str,
        /// The digest text.
        digest: String,
    },
    /// A URL (registry base, upload location, token realm) could not be parsed.
    #[error("failed to parse URL `{url}`")]
    InvalidUrl {
        /// The text.
        url: String,
        /// Cause.
        #[source]
        source: url::ParseError,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// A credentials file could not be read.
    #[error("failed to read credentials file `{}`", path.display())]
    ReadCredentialsFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A credentials file is not valid JSON of the expected shape.
    #[error("failed to parse credentials file `{}`", path.display())]
    ParseCredentialsFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// A registries.conf file (or its drop-in directory) could not be read.
    #[error("failed to read registries config `{}`", path.display())]
    ReadRegistriesConf {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A registries.conf is not valid TOML, or not what containers-registries.conf(5) allows.
    #[error("invalid registries config `{origin}`: {reason}")]
    RegistriesConf {
        /// The file (or where the text came from).
        origin: String,
        /// What is wrong, and where.
        reason: String,
    },
    /// A `--registry-mirror` value is not `SOURCE=MIRROR`.
    #[error("invalid --registry-mirror `{input}`: {reason}")]
    InvalidMirrorFlag {
        /// What was given.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// registries.conf blocks pulls of this reference.
    #[error("failed to pull {reference}: registry prefix `{prefix}` is blocked in {origin}")]
    Blocked {
        /// The reference.
        reference: String,
        /// The matching `[[registry]]` prefix.
        prefix: String,
        /// The file that blocks it.
        origin: String,
    },
    /// Every mirror failed, and then the registry itself; `last` is the registry's error.
    #[error(
        "failed to pull {reference} through its mirrors ({}) and from {location}",
        failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    MirrorsFailed {
        /// The reference as written.
        reference: String,
        /// Where it was pulled from last (the reference as written, or its rewritten
        /// location).
        location: String,
        /// Each mirror tried, and why it did not serve the image.
        failures: Vec<super::mirrors::MirrorFailure>,
        /// The last source's error.
        #[source]
        last: Box<Error>,
    },
    /// One `auths` entry of a credentials file is unusable. Its content is not shown.
    #[error("failed to parse credentials file `{}`: entry `{key}` {reason}", path.display())]
    InvalidCredentialEntry {
        /// The file.
        path: PathBuf,
        /// The entry's key (a registry name).
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Broad classes of registry failures, for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 401: credentials missing or refused.
    Unauthorized,
    /// 403: logged in but not allowed.
    Denied,
    /// The tag exists with another digest.
    TagConflict,
    /// Connection refused, DNS failure, timeout, a refused TLS certificate, or transient
    /// failures (5xx, 429, dropped connections) that outlasted every retry.
    Unreachable,
    /// Digest or size did not match.
    Integrity,
    /// The reference or manifest was not found.
    NotFound,
    /// An image this client refuses to use (over a limit), a blocked one, or registry
    /// settings it cannot use (registries.conf, `--registry-mirror`).
    Invalid,
    /// Anything else.
    Other,
}

impl Error {
    /// How the CLI should classify this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unreachable { .. }
            | Self::Certificate { .. }
            | Self::Timeout { .. }
            | Self::Retried { .. } => ErrorKind::Unreachable,
            Self::Request { source, .. } if source.is_connect() || source.is_timeout() => {
                ErrorKind::Unreachable
            }
            Self::AuthRequired { .. } | Self::Unauthorized { .. } => ErrorKind::Unauthorized,
            Self::Denied { .. } => ErrorKind::Denied,
            Self::TagConflict { .. } => ErrorKind::TagConflict,
            Self::DigestMismatch { .. } | Self::SizeMismatch { .. } => ErrorKind::Integrity,
            Self::Store(
                crate::store::Error::DigestMismatch { .. }
                | crate::store::Error::SizeMismatch { .. },
            ) => ErrorKind::Integrity,
            Self::Status { status, .. } if *status == reqwest::StatusCode::NOT_FOUND => {
                ErrorKind::NotFound
            }
            Self::PlatformNotFound { .. } => ErrorKind::NotFound,
            Self::OverLimit { .. }
            | Self::Blocked { .. }
            | Self::RegistriesConf { .. }
            | Self::ReadRegistriesConf { .. }
            | Self::InvalidMirrorFlag { .. } => ErrorKind::Invalid,
            Self::MirrorsFailed { last, .. } => last.kind(),
            _ => ErrorKind::Other,
        }
    }

    /// What the user can do about it, for a `hint:` line; `None` when there is nothing useful
    /// to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Unreachable { url, .. } => Some(if url.starts_with("https://") {
                "check that the registry is running and the address is right; \
                 pass --plain-http if it only speaks HTTP"
                    .to_owned()
            } else {
                "check that the registry is running and the address is right".to_owned()
            }),
            Self::Certificate { host, problem, .. } => Some(problem.hint(host)),
            Self::Timeout { .. } => {
                Some("the registry or the network is slow or stuck; try again".to_owned())
            }
            Self::Retried { registry, last, .. } => Some(match last.as_ref() {
                Self::Unreachable { .. } => format!(
                    "check that {registry} is running and the address is right; a rerun \
                     resumes where this one stopped (blobs already pushed are skipped)"
                ),
                Self::Status { status, .. } if status.is_server_error() => format!(
                    "{registry} kept failing; check its logs and free disk space, then run \
                     again (blobs already pushed are skipped)"
                ),
                Self::Status { .. } => format!(
                    "{registry} kept asking to slow down; run again later, or raise \
                     --retries / --retry-max-time"
                ),
                _ => format!(
                    "{registry} or the network is slow or unstable; run again (blobs already \
                     pushed are skipped), or raise --retries / --retry-max-time"
                ),
            }),
            Self::AuthRequired { registry, .. } => Some(format!(
                "pass --registry-username and --registry-password (e.g. env:ZOT_CI_API_KEY), \
                 or log in to {registry} with docker or podman"
            )),
            Self::Unauthorized {
                registry, username, ..
            } => Some(format!(
                "check the username and password or API key for {registry}; zot API keys \
                 expire and must belong to user `{username}`"
            )),
            Self::Denied {
                operation,
                username,
                ..
            } => Some(match (operation, username) {
                (Operation::PushManifest, Some(user)) => format!(
                    "user `{user}` may not write this tag: a create-only account cannot \
                     replace an existing tag; push a new tag or ask an admin for `update`"
                ),
                (_, Some(user)) => {
                    format!("ask a registry admin to grant user `{user}` access to the repository")
                }
                (_, None) => "pass --registry-username and --registry-password".to_owned(),
            }),
            Self::TagConflict { .. } => Some(
                "tags are not overwritten by default: push a new tag, or pass --allow-overwrite \
                 (needs `update` permission on zot)"
                    .to_owned(),
            ),
            Self::DigestMismatch { .. } | Self::SizeMismatch { .. } => Some(
                "the registry or something between served corrupted content; nothing was \
                 stored; retry, and report it if it persists"
                    .to_owned(),
            ),
            Self::PlatformNotFound { .. } => {
                Some("pass --platform with one of the available platforms".to_owned())
            }
            Self::MirrorsFailed { last, .. } => last.hint(),
            Self::Blocked { origin, .. } => Some(format!(
                "use another base image, or remove `blocked = true` from its [[registry]] in \
                 {origin}"
            )),
            Self::RegistriesConf { .. } | Self::ReadRegistriesConf { .. } => Some(format!(
                "fix the file, or set {}=/dev/null to read none (see \
                 containers-registries.conf(5))",
                super::mirrors::REGISTRIES_CONF_ENV
            )),
            Self::ParseCredentialsFile { .. } | Self::InvalidCredentialEntry { .. } => Some(
                "fix or remove the file, or pass --registry-username and --registry-password"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_parses_both_shapes() {
        let wrapped = br#"{"errors":[{"code":"DENIED","message":"not allowed","detail":{}}]}"#;
        let bare = br#"{"code":"UNAUTHORIZED","message":"bad key","detail":{"x":1}}"#;
        assert_eq!(
            ServerError::parse(wrapped),
            Some(ServerError {
                code: Some("DENIED".into()),
                message: Some("not allowed".into())
            })
        );
        assert_eq!(
            ServerError::parse(bare).unwrap().to_string(),
            "UNAUTHORIZED: bad key"
        );
        assert_eq!(ServerError::parse(b"not json"), None);
        assert_eq!(ServerError::parse(b"{}"), None);
        assert_eq!(ServerError::parse(br#"{"errors":[]}"#), None);
    }

    #[test]
    fn denied_message_names_everything() {
        let err = Error::Denied {
            operation: Operation::PushManifest,
            target: "zot.example/blumeops/hello:v1".into(),
            registry: "zot.example".into(),
            repository: "blumeops/hello".into(),
            username: Some("zot-ci".into()),
            server: ServerError::parse(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#)
                .map(Box::new),
        };
        let msg = err.to_string();
        for want in [
            "push manifest",
            "zot.example",
            "blumeops/hello",
            "zot-ci",
            "DENIED: no",
            "403",
        ] {
            assert!(msg.contains(want), "{msg} lacks {want}");
        }
        assert_eq!(err.kind(), ErrorKind::Denied);
        assert!(err.hint().unwrap().contains("zot-ci"));
    }

    #[test]
    fn unauthorized_never_shows_the_password() {
        let password = "zak_0123456789abcdef0123456789abcdef";
        let err = Error::Unauthorized {
            operation: Operation::StartUpload,
            target: "sha256:00".into(),
            registry: "zot.example".into(),
            username: "zot-ci".into(),
            server: ServerError::parse(br#"{"code":"UNAUTHORIZED","message":"invalid api key"}"#)
                .map(Box::new),
        };
        let display = err.to_string();
        let debug = format!("{err:?}");
        let hint = err.hint().unwrap();
        for text in [&display, &debug, &hint] {
            assert!(!text.contains(password), "{text}");
        }
        for want in [
            "zot.example",
            "zot-ci",
            "401 Unauthorized",
            "invalid api key",
        ] {
            assert!(display.contains(want), "{display} lacks {want}");
        }
        assert_eq!(err.kind(), ErrorKind::Unauthorized);
    }

    #[test]
    fn refused_certificate_names_the_host_and_the_problem() {
        let err = Error::Certificate {
            operation: Operation::CheckTag,
            target: "zot.example/blumeops/hello:v1".into(),
            registry: "zot.example".into(),
            host: "zot.example:443".into(),
            problem: Box::new(CertificateProblem::UnknownIssuer),
            source: reqwest::Proxy::all("http://[").expect_err("an invalid URL"),
        };
        assert_eq!(
            err.to_string(),
            "failed to check tag zot.example/blumeops/hello:v1: cannot verify zot.example:443 \
             over HTTPS: certificate is not trusted (unknown issuer)"
        );
        assert_eq!(err.kind(), ErrorKind::Unreachable);
        let hint = err.hint().unwrap();
        assert!(hint.contains("update-ca-certificates"), "{hint}");
        assert!(hint.contains("SSL_CERT_FILE"), "{hint}");
        assert_eq!(
            crate::Error::from(err).kind(),
            crate::ErrorKind::Unreachable,
            "exit code 5"
        );
    }

    #[test]
    fn messages_are_lowercase_without_trailing_period() {
        let err = Error::TagConflict {
            reference: "r/x:v1".into(),
            existing: Digest::of(b"a"),
            new: Digest::of(b"b"),
        };
        let msg = err.to_string();
        assert!(msg.starts_with("failed to push r/x:v1"), "{msg}");
        assert!(!msg.ends_with('.'));
        assert!(msg.contains(&Digest::of(b"a").to_string()));
        assert!(err.hint().unwrap().contains("--allow-overwrite"));
    }

    #[test]
    fn giving_up_names_the_operation_the_attempts_and_the_last_error() {
        let last = Error::Status {
            operation: Operation::PushBlob,
            target: "sha256:ab to zot.example/blumeops/hello".into(),
            url: "https://zot.example/v2/blumeops/hello/blobs/uploads/u".into(),
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
            server: None,
        };
        let err = Error::Retried {
            operation: Operation::PushBlob,
            target: "sha256:ab to zot.example/blumeops/hello".into(),
            registry: "zot.example".into(),
            attempts: 6,
            seconds: 12.34,
            last: Box::new(last),
        };
        assert_eq!(
            err.to_string(),
            "failed to push blob sha256:ab to zot.example/blumeops/hello: gave up after 6 \
             attempts in 12.3 s"
        );
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("503 Service Unavailable"), "{cause}");
        assert_eq!(err.kind(), ErrorKind::Unreachable);
        assert!(err.hint().unwrap().contains("zot.example kept failing"));
    }
}
