//! The registry cache: step results and cache volumes kept in a registry repository, so
//! machines that share nothing but the registry (CI pods that start with empty disks, the
//! runners of two architectures) share them.
//!
//! Everything fits a create-only account (zot's `create` without `update`): each entry is a
//! new tag named by what it holds (a step's key, a volume snapshot's time and content), a
//! tag that exists is never written again, and nothing is deleted; the registry's retention
//! rules keep the repository bounded. Reading needs only pull access.
//!
//! The cache is an optimisation and never in the way: an unreachable or refusing
//! repository gives one warning and the build goes on without it, a damaged entry is
//! ignored with a warning (the step runs), and time spent on it is bounded.

mod artifact;
mod chains;
mod steps;
mod usage;
mod volumes;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::pipeline::{Engine, Event};
use crate::reference::ImageRef;
use crate::registry::{RegistryClient, RetryPolicy};

pub(crate) use steps::{ExportStep, import_step};
pub use usage::{RemoteUsage, registry_cache_usage};
use volumes::VolumeUse;
pub(crate) use volumes::import_volume;

/// Default for [`RegistryCacheOptions::volume_max_bytes`]: 2 GiB.
pub const DEFAULT_VOLUME_MAX_BYTES: u64 = 2 << 30;
/// Longest a request to the cache repository may take (a lookup is on the build's path).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest one build may spend exporting to the cache repository.
pub(crate) const EXPORT_TIME_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Where and how to use a registry cache.
#[derive(Debug, Clone)]
pub struct RegistryCacheOptions {
    /// The repository (its tag, if any, is ignored).
    pub repository: ImageRef,
    /// Largest cache volume snapshot exported (uncompressed bytes).
    pub volume_max_bytes: u64,
}

impl RegistryCacheOptions {
    /// The cache in `repository`, with the default volume size cap.
    pub fn new(repository: ImageRef) -> Self {
        Self {
            repository,
            volume_max_bytes: DEFAULT_VOLUME_MAX_BYTES,
        }
    }
}

/// A build's view of its registry cache.
pub(crate) struct RegistryCache {
    repository: ImageRef,
    volume_max_bytes: u64,
    client: RegistryClient,
    /// The repository's tags, listed once per build when first needed (`None`: the
    /// listing failed and the cache is off).
    tags: tokio::sync::OnceCell<Option<Arc<HashSet<String>>>>,
    /// Set after a failure: no more requests this build.
    off: AtomicBool,
    /// The cache volumes this build's commands used.
    pub(crate) volumes: tokio::sync::Mutex<VolumeUse>,
    /// Steps learnt from stage chains.
    chains: std::sync::Mutex<chains::Chains>,
}

impl std::fmt::Debug for RegistryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCache")
            .field("repository", &self.repository.to_string())
            .finish_non_exhaustive()
    }
}

impl RegistryCache {
    /// A client for the cache: the build's credentials and TLS settings, but short
    /// timeouts and few retries, so a slow cache does not hold a build up for long.
    /// It shares what `client` learns of auth (and its connections), so a registry's
    /// challenge is answered once per build, not once per client.
    pub(crate) fn client(client: &RegistryClient) -> RegistryClient {
        client.with_timeouts(
            REQUEST_TIMEOUT,
            RetryPolicy {
                max_attempts: 2,
                base_delay: Duration::from_millis(250),
                max_delay: Duration::from_secs(1),
                max_elapsed: Duration::from_secs(30),
            },
        )
    }

    /// The cache as one build sees it (its tags are listed once per build).
    pub(crate) fn new(options: &RegistryCacheOptions, client: RegistryClient) -> Self {
        Self {
            repository: options.repository.clone(),
            volume_max_bytes: options.volume_max_bytes,
            client,
            tags: tokio::sync::OnceCell::new(),
            off: AtomicBool::new(false),
            volumes: tokio::sync::Mutex::default(),
            chains: std::sync::Mutex::default(),
        }
    }

    /// `REGISTRY/REPOSITORY`, for messages.
    pub(crate) fn name(&self) -> String {
        format!(
            "{}/{}",
            self.repository.registry(),
            self.repository.repository()
        )
    }

    fn tagged(&self, tag: &str) -> ImageRef {
        self.repository.with_tag(tag)
    }

    fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    /// Turn the cache off for the rest of the build, with one warning.
    fn give_up(&self, engine: &Engine, what: &str, error: &dyn std::fmt::Display) {
        if !self.off.swap(true, Ordering::Relaxed) {
            engine.emit(Event::Warning {
                message: format!(
                    "registry cache {}: {what} failed, going on without it: {error}",
                    self.name()
                ),
            });
        }
    }

    /// The repository's tags (listed once), or `None` when the cache is off.
    async fn tags(&self, engine: &Engine) -> Option<Arc<HashSet<String>>> {
        if self.is_off() {
            return None;
        }
        self.tags
            .get_or_init(|| async {
                match self.client.list_tags(&self.repository).await {
                    Ok(tags) => Some(Arc::new(tags.into_iter().collect())),
                    Err(e) => {
                        self.give_up(engine, "listing its tags", &e);
                        None
                    }
                }
            })
            .await
            .clone()
    }
}

/// Whether a failed read means the entry is damaged (a blob that fails its digest or size),
/// rather than that the repository cannot be used.
fn damaged(e: &crate::registry::Error) -> bool {
    e.kind() == crate::registry::ErrorKind::Integrity
}

/// After a successful build (and for a publish, after the push): export the steps and
/// volumes the cache lacks, within [`EXPORT_TIME_LIMIT`]. Never fails: problems are
/// warnings, since the image is built (or pushed) whatever happens here.
pub(crate) async fn export(
    engine: &Engine,
    cache: &RegistryCache,
    steps: &[ExportStep],
    mount_from: Option<&ImageRef>,
) {
    let started = std::time::Instant::now();
    let work = async {
        let summary = steps::export_steps(engine, cache, steps, mount_from).await;
        let (volumes, volume_bytes) = volumes::export_volumes(engine, cache).await;
        (summary, volumes, volume_bytes)
    };
    match tokio::time::timeout(EXPORT_TIME_LIMIT, work).await {
        Ok((summary, volumes_exported, volume_bytes)) => {
            if cache.is_off() && summary.exported == 0 && volumes_exported == 0 {
                return; // the warning said why
            }
            engine.emit(Event::RegistryCacheExported {
                repository: cache.name(),
                steps_exported: summary.exported,
                steps_present: summary.present,
                volumes_exported,
                bytes_uploaded: summary.bytes_uploaded + volume_bytes,
                elapsed: started.elapsed(),
            });
        }
        Err(_) => engine.emit(Event::Warning {
            message: format!(
                "registry cache {}: export stopped after {} s (the limit); the rest is \
                 exported by a later build",
                cache.name(),
                EXPORT_TIME_LIMIT.as_secs()
            ),
        }),
    }
}
