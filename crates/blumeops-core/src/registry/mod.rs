//! Registry client: pull into the store, push from the store, with zot's rules in mind.
//!
//! (Skeleton: signatures are final, bodies are being written.)

use std::collections::HashMap;

use crate::image::StoredImage;
use crate::reference::{Digest, ImageRef, Platform};
use crate::secret::Secret;
use crate::store::Store;

/// Errors from talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Placeholder until the client lands.
    #[error("registry client not implemented for {reference}")]
    NotImplemented {
        /// Reference.
        reference: String,
    },
}

impl Error {
    /// How the CLI should classify this failure.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
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
    /// Connection refused, DNS failure, timeout.
    Unreachable,
    /// Digest or size did not match.
    Integrity,
    /// The reference or manifest was not found.
    NotFound,
    /// Anything else.
    Other,
}

/// A username and password (zot API key) for one registry.
#[derive(Clone, Debug)]
pub struct Credential {
    /// Username, e.g. `zot-ci`.
    pub username: String,
    /// Password or API key.
    pub password: Secret,
}

/// Where credentials come from: explicit ones per registry host, then docker `config.json`
/// and containers `auth.json`.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    explicit: HashMap<String, Credential>,
}

impl Credentials {
    /// Credentials from the config files only.
    pub fn from_config_files() -> Self {
        Self::default()
    }

    /// Use `credential` for `registry` (host[:port] as written in references).
    #[must_use]
    pub fn with_registry(mut self, registry: &str, credential: Credential) -> Self {
        self.explicit.insert(registry.to_owned(), credential);
        self
    }

    /// The credential for `registry`, if any.
    pub fn lookup(&self, registry: &str) -> Option<Credential> {
        self.explicit.get(registry).cloned()
    }
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Credentials per registry.
    pub credentials: Credentials,
    /// Talk plain HTTP to every registry (loopback registries always use plain HTTP).
    pub plain_http: bool,
    /// Blob uploads at once.
    pub max_parallel_uploads: usize,
}

/// Default number of parallel blob uploads (zot has a global storage lock: a few help).
pub const DEFAULT_MAX_PARALLEL_UPLOADS: usize = 3;

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            credentials: Credentials::default(),
            plain_http: false,
            max_parallel_uploads: DEFAULT_MAX_PARALLEL_UPLOADS,
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

/// A pulled image: its blobs are in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// Manifest (as pulled: may carry Docker media types), config and layers.
    pub image: StoredImage,
    /// The parsed config.
    pub config: oci_spec::image::ImageConfiguration,
}

/// A registry client. Clone-cheap; auth state is shared.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    options: ClientOptions,
}

impl RegistryClient {
    /// A client with these options.
    pub fn new(options: ClientOptions) -> Result<Self, Error> {
        Ok(Self { options })
    }

    /// Resolve `reference` (an index is narrowed to `platform`), and fetch the manifest,
    /// config and every layer into `store`, each verified against its digest.
    pub async fn pull_image(
        &self,
        reference: &ImageRef,
        platform: &Platform,
        store: &Store,
    ) -> Result<PulledImage, Error> {
        let _ = (platform, store, &self.options);
        Err(Error::NotImplemented {
            reference: reference.to_string(),
        })
    }

    /// The digest the tag currently points at, or `None` if the tag does not exist.
    pub async fn head_manifest(&self, reference: &ImageRef) -> Result<Option<Digest>, Error> {
        Err(Error::NotImplemented {
            reference: reference.to_string(),
        })
    }

    /// Push `image` (all blobs in `store`) to `target` under the tag policy.
    pub async fn push_image(
        &self,
        target: &ImageRef,
        image: &StoredImage,
        store: &Store,
        policy: TagPolicy,
    ) -> Result<PushReport, Error> {
        let _ = (image, store, policy);
        Err(Error::NotImplemented {
            reference: target.to_string(),
        })
    }
}
