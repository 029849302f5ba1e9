//! The engine: the services a build uses (store, registry client, executor, settings,
//! progress), and what a build returns. Evaluation itself is in `solver`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::cache::{CacheOptions, CacheStatus};
use crate::error::Error;
use crate::executor::StepExecutor;
use crate::image::{ImageConfig, StoredImage};
use crate::layer::Compression;
use crate::reference::{Digest, ImageRef, Platform};
use crate::registry::{ClientOptions, PushReport, RegistryClient};
use crate::registry_cache::{RegistryCache, RegistryCacheOptions};
use crate::store::Store;

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Event) + Send + Sync>;

/// What the engine reports while it works.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A step started.
    StepStarted {
        /// 1-based step number, as `Container::plan` numbers it.
        index: usize,
        /// Number of steps.
        total: usize,
        /// The stage's number in the plan.
        stage: usize,
        /// The stage as the live view names it: `stage 2 (from golang:1.22)`.
        stage_name: String,
        /// What the step does.
        description: String,
        /// The platform the step builds for, when one build makes several (`None` for a
        /// build of one platform).
        platform: Option<String>,
    },
    /// A step finished.
    StepFinished {
        /// 1-based step number.
        index: usize,
        /// How long it took.
        elapsed: Duration,
        /// What it produced, e.g. a layer digest and size.
        detail: Option<String>,
        /// Whether it came from the step cache, and if it ran, why.
        cache: CacheStatus,
    },
    /// A line of a running step's output (secrets replaced by `***`).
    StepOutput {
        /// Step number.
        index: usize,
        /// True for stderr, false for stdout.
        stderr: bool,
        /// The line, without its newline.
        line: String,
    },
    /// A base image was pulled (blobs the store had already are not downloaded again).
    Pulled {
        /// The step that pulled it.
        index: usize,
        /// The image as written.
        reference: String,
        /// The manifest's digest.
        digest: Digest,
        /// Blobs downloaded.
        blobs_fetched: u64,
        /// Bytes downloaded.
        bytes_fetched: u64,
        /// The mirror that served it, as configured (e.g. `registry.ops.eblu.me/docker.io`);
        /// `None` when it came from the reference's own registry.
        mirror: Option<String>,
    },
    /// A mirror did not serve a base image, which was then pulled from the next source
    /// (reported before that pull's [`Event::Pulled`]).
    MirrorFailed {
        /// The step that pulled it.
        index: usize,
        /// The image as written.
        reference: String,
        /// The mirror, as configured.
        mirror: String,
        /// Why it did not serve the image.
        error: String,
    },
    /// The push to a registry started.
    PushStarted {
        /// Where to.
        target: String,
    },
    /// One more blob of the push is in the registry (uploaded, or found there).
    PushProgress {
        /// Blobs confirmed so far.
        done: usize,
        /// Blobs to push.
        total: usize,
        /// Whether this blob was uploaded (else the registry had it).
        uploaded: bool,
        /// Bytes uploaded for this blob (0 when the registry had it).
        bytes_sent: u64,
    },
    /// The push finished.
    PushFinished {
        /// Counts and digest.
        report: PushReport,
        /// How long it took.
        elapsed: Duration,
    },
    /// Something went wrong that the build goes on without (the registry cache could not
    /// be reached, an entry was damaged).
    Warning {
        /// What happened, for a person.
        message: String,
    },
    /// Something worth a line that is not a step's (a cache volume filled from the
    /// registry cache).
    Note {
        /// What happened, for a person.
        message: String,
    },
    /// The build's results were exported to the registry cache.
    RegistryCacheExported {
        /// The cache repository.
        repository: String,
        /// Step entries pushed.
        steps_exported: usize,
        /// Step entries the repository had already.
        steps_present: usize,
        /// Cache volume snapshots pushed.
        volumes_exported: usize,
        /// Bytes uploaded (layers the registry had or mounted cost none).
        bytes_uploaded: u64,
        /// How long it took.
        elapsed: Duration,
    },
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineOptions {
    /// Where blobs live.
    pub store: Store,
    /// Registry client settings (credentials, plain HTTP).
    pub registry: ClientOptions,
    /// Platform to pull base images for.
    pub platform: Platform,
    /// Timestamp for `created` and file mtimes (seconds since 1970).
    pub epoch: u64,
    /// Layer compression.
    pub compression: Compression,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// How the step cache is used.
    pub cache: CacheOptions,
    /// Most steps running at once (independent stages run concurrently).
    pub jobs: usize,
    /// Runs the steps that run commands (default:
    /// [`crate::executor::for_this_process`]).
    pub executor: Arc<dyn StepExecutor>,
    /// Most processes a command step may have at once, where a pids cgroup can be made
    /// (default [`crate::sandbox::DEFAULT_PIDS_MAX`]; `None`: no limit).
    pub step_pids_max: Option<u64>,
    /// The name a build's step history is kept under (the container's name): a step that
    /// runs again is compared with the same step of the last build of the same name.
    pub container_name: String,
    /// Share step results and cache volumes through a registry repository (off: `None`).
    pub registry_cache: Option<RegistryCacheOptions>,
}

/// Default for [`EngineOptions::jobs`]: the number of cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl EngineOptions {
    /// Options with the host platform, epoch 0, gzip, no progress output.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            registry: ClientOptions::default(),
            platform: Platform::host(),
            epoch: 0,
            compression: Compression::default(),
            progress: None,
            cache: CacheOptions::default(),
            jobs: default_jobs(),
            executor: crate::executor::for_this_process(),
            step_pids_max: Some(crate::sandbox::DEFAULT_PIDS_MAX),
            container_name: String::new(),
            registry_cache: None,
        }
    }
}

/// Evaluates containers: owns the store and the registry client.
#[derive(Clone)]
pub struct Engine {
    pub(super) store: Store,
    pub(super) registry: RegistryClient,
    pub(super) platform: Platform,
    pub(super) epoch: u64,
    pub(super) compression: Compression,
    pub(super) progress: Option<ProgressFn>,
    pub(super) cache: CacheOptions,
    /// Runs the steps that run commands.
    pub(super) executor: Arc<dyn StepExecutor>,
    pub(super) step_pids_max: Option<u64>,
    pub(super) container_name: String,
    /// The registry cache's settings and its client (short timeouts, few retries).
    pub(super) registry_cache: Option<(RegistryCacheOptions, RegistryClient)>,
    /// Job slots: shared by every build of this engine and its per-platform copies, so
    /// platforms built together still run at most `jobs` steps at once.
    pub(super) job_slots: Arc<tokio::sync::Semaphore>,
    /// How the events of one platform's build among several are numbered.
    pub(super) numbering: Option<Numbering>,
    /// Step locks shared by the platforms of one multi-platform build, so a step they
    /// have in common (a stage on the build platform) runs once (`None`: each build has
    /// its own).
    pub(super) step_locks: Option<Arc<super::solver::StepLocks>>,
}

/// Where one platform's steps sit among all the platforms' steps in progress events: its
/// steps and stages come after those of the platforms before it, and its steps name it.
#[derive(Debug, Clone)]
pub(super) struct Numbering {
    pub(super) platform: String,
    pub(super) step_offset: usize,
    pub(super) stage_offset: usize,
    /// Steps of every platform.
    pub(super) total: usize,
}

impl Numbering {
    fn apply(&self, event: &Event) -> Event {
        let mut event = event.clone();
        let offset = self.step_offset;
        match &mut event {
            Event::StepStarted {
                index,
                total,
                stage,
                stage_name,
                platform,
                ..
            } => {
                *index += offset;
                *total = self.total;
                *stage += self.stage_offset;
                *stage_name = format!("{} {stage_name}", self.platform);
                *platform = Some(self.platform.clone());
            }
            Event::StepFinished { index, .. }
            | Event::StepOutput { index, .. }
            | Event::Pulled { index, .. }
            | Event::MirrorFailed { index, .. } => *index += offset,
            _ => {}
        }
        event
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("platform", &self.platform)
            .field("epoch", &self.epoch)
            .field("executor", &self.executor.name())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with these options.
    pub fn new(mut options: EngineOptions) -> Result<Self, Error> {
        // What the client learns of registries is kept with the store, unless told otherwise.
        if options.registry.state_dir.is_none() {
            options.registry.state_dir = Some(options.store.root().join("registry"));
        }
        let registry = RegistryClient::new(options.registry)?;
        let registry_cache = options
            .registry_cache
            .map(|cache| (cache, RegistryCache::client(&registry)));
        Ok(Self {
            registry_cache,
            registry,
            store: options.store,
            platform: options.platform,
            epoch: options.epoch,
            compression: options.compression,
            progress: options.progress,
            cache: options.cache,
            executor: options.executor,
            step_pids_max: options.step_pids_max,
            container_name: options.container_name,
            job_slots: Arc::new(tokio::sync::Semaphore::new(options.jobs.max(1))),
            numbering: None,
            step_locks: None,
        })
    }

    /// This engine building for `platform` (the platform of bases without their own, and
    /// of scratch). It shares the store, clients and job slots; a platform other than
    /// the host's keeps its own step history, so reasons compare like with like.
    #[must_use]
    pub fn for_platform(&self, platform: &Platform) -> Engine {
        let mut engine = self.clone();
        if *platform != Platform::host() {
            engine.container_name = format!("{} {platform}", self.container_name);
        }
        engine.platform = platform.clone();
        engine
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The registry client.
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// The build timestamp.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The target platform.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The layer compression.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Hold the store for a build (see [`Store::lock_shared`]); waits while it is pruned.
    pub async fn lock_store(&self) -> Result<crate::store::StoreLock, Error> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.lock_shared())
            .await
            .map_err(|_| Error::TaskPanicked)??)
    }

    pub(super) fn progress_fn(&self) -> Option<ProgressFn> {
        self.progress.clone()
    }

    /// A step's number as progress shows it (after the steps of the platforms before this
    /// one, when a build makes several).
    pub(crate) fn step_number(&self, index: usize) -> usize {
        index + self.numbering.as_ref().map_or(0, |n| n.step_offset)
    }

    pub(crate) fn emit(&self, event: Event) {
        if let Some(p) = &self.progress {
            match &self.numbering {
                Some(numbering) => p(&numbering.apply(&event)),
                None => p(&event),
            }
        }
    }
}

/// A built image: all blobs in the store, plus its parsed config.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Manifest, config and layers.
    pub image: StoredImage,
    /// The config document.
    pub config: ImageConfig,
}

/// The result of a publish.
#[derive(Debug, Clone)]
pub struct Published {
    /// The tag that was pushed, pinned to the manifest digest.
    pub reference: ImageRef,
    /// What the push did.
    pub report: PushReport,
}

impl fmt::Display for Published {
    /// `registry/repository:tag@sha256:...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reference)
    }
}
