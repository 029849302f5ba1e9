//! Evaluation: turn a `Container`'s operations into an image in the store, then publish
//! or export it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::cache::{self, CacheOptions, CacheStatus, StepInputs};
use super::exec::{CacheVolume, SecretVariable};
use super::{Container, Op};
use crate::epoch;
use crate::error::Error;
use crate::export::ExportTarget;
use crate::fields::FieldHasher;
use crate::image::{
    BlobRef, Descriptor, History, ImageConfig, ImageManifest, ManifestBlob, StoredImage,
    media_types,
};
use crate::layer::{Compression, LayerBuilder};
use crate::reference::{Digest, ImageRef, Platform};
use crate::registry::{ClientOptions, PushReport, RegistryClient, TagPolicy};
use crate::store::{CachedLayer, SlotRecord, StepRecord, Store};

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Event) + Send + Sync>;

/// What the engine reports while it works.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A step started.
    StepStarted {
        /// 1-based step number.
        index: usize,
        /// Number of steps.
        total: usize,
        /// What the step does.
        description: String,
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
    /// The push to a registry started.
    PushStarted {
        /// Where to.
        target: String,
    },
    /// The push finished.
    PushFinished {
        /// Counts and digest.
        report: PushReport,
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
        }
    }
}

/// Evaluates containers: owns the store and the registry client.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    registry: RegistryClient,
    platform: Platform,
    epoch: u64,
    compression: Compression,
    progress: Option<ProgressFn>,
    cache: CacheOptions,
    jobs: usize,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("platform", &self.platform)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with these options.
    pub fn new(options: EngineOptions) -> Result<Self, Error> {
        Ok(Self {
            registry: RegistryClient::new(options.registry)?,
            store: options.store,
            platform: options.platform,
            epoch: options.epoch,
            compression: options.compression,
            progress: options.progress,
            cache: options.cache,
            jobs: options.jobs.max(1),
        })
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

    pub(super) fn emit(&self, event: Event) {
        if let Some(p) = &self.progress {
            p(&event);
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

/// The image as evaluation goes: config, layers, and what later steps inherit.
#[derive(Clone)]
pub(super) struct State {
    pub(super) config: ImageConfig,
    pub(super) layers: Vec<BlobRef>,
    pub(super) annotations: BTreeMap<String, String>,
    /// Secret variables for later `with_exec` steps (never written to the image).
    pub(super) secrets: Vec<SecretVariable>,
    /// Cache volumes mounted into later `with_exec` steps: (path in container, volume).
    pub(super) mounts: Vec<(String, CacheVolume)>,
    /// Where the last `with_exec` step's stdout was saved.
    pub(super) last_stdout: Option<PathBuf>,
    /// The step cache's key for this state: what produced it, and the layers it has.
    pub(super) key: Digest,
    /// Where in the pipeline this state is (see [`cache::slot`]).
    pub(super) slot: Digest,
}

impl State {
    fn root(config: ImageConfig, layers: Vec<BlobRef>, key: Digest, op: &Op) -> Self {
        Self {
            config,
            layers,
            annotations: BTreeMap::new(),
            secrets: Vec::new(),
            mounts: Vec::new(),
            last_stdout: None,
            key,
            slot: cache::slot(None, op),
        }
    }
}

/// One evaluation: numbers steps across stages, evaluates each container once, and runs
/// independent stages concurrently (at most `jobs` steps at a time).
struct Run<'a> {
    engine: &'a Engine,
    next_index: AtomicUsize,
    total: usize,
    /// One cell per container node: a stage needed twice runs once, and a second caller
    /// waits for the first.
    cells: std::sync::Mutex<HashMap<usize, Arc<tokio::sync::OnceCell<State>>>>,
    /// One lock per step key: two stages that reach the same step at once run it once, the
    /// second finds the first's result in the cache.
    key_locks: std::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    jobs: tokio::sync::Semaphore,
}

/// Distinct operations reachable from `container` (its chain and every copied-from stage).
fn count_ops(container: &Container, seen: &mut HashSet<usize>) -> usize {
    let mut n = 0;
    let mut node = Some(&container.node);
    while let Some(nd) = node {
        if !seen.insert(Arc::as_ptr(nd) as usize) {
            break;
        }
        n += 1;
        if let Some(source) = copy_source(&nd.op) {
            n += count_ops(source, seen);
        }
        node = nd.parent.as_ref();
    }
    n
}

fn copy_source(op: &Op) -> Option<&Container> {
    match op {
        Op::CopyFrom { source, .. } | Op::CopyPathFrom { source, .. } => Some(source),
        _ => None,
    }
}

/// Steps that add a layer (or may): the ones the step cache keeps.
fn makes_layer(op: &Op) -> bool {
    matches!(
        op,
        Op::NewFile { .. }
            | Op::HostFile { .. }
            | Op::HostDirectory { .. }
            | Op::Workdir(_)
            | Op::Exec { .. }
            | Op::CopyFrom { .. }
            | Op::CopyPathFrom { .. }
            | Op::Remove { .. }
            | Op::HttpFile { .. }
            | Op::HostArchive { .. }
    )
}

impl<'a> Run<'a> {
    fn new(engine: &'a Engine, container: &Container) -> Self {
        Self {
            engine,
            next_index: AtomicUsize::new(1),
            total: count_ops(container, &mut HashSet::new()),
            cells: std::sync::Mutex::new(HashMap::new()),
            key_locks: std::sync::Mutex::new(HashMap::new()),
            jobs: tokio::sync::Semaphore::new(engine.jobs),
        }
    }

    /// Evaluate `container` (once per node, however many stages need it).
    fn evaluate<'b>(
        &'b self,
        container: &'b Container,
    ) -> Pin<Box<dyn Future<Output = Result<State, Error>> + Send + 'b>> {
        Box::pin(async move {
            let cell = {
                let mut cells = self
                    .cells
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                cells
                    .entry(Arc::as_ptr(&container.node) as usize)
                    .or_default()
                    .clone()
            };
            cell.get_or_try_init(|| self.evaluate_chain(container))
                .await
                .cloned()
        })
    }

    /// Run `container`'s steps in order while the stages it copies from are evaluated
    /// concurrently; a copy step waits for its stage.
    async fn evaluate_chain(&self, container: &Container) -> Result<State, Error> {
        let mut sources: Vec<&Container> = Vec::new();
        for op in container.ops() {
            if let Some(source) = copy_source(op)
                && !sources.iter().any(|s| Arc::ptr_eq(&s.node, &source.node))
            {
                sources.push(source);
            }
        }
        let stages = futures_util::future::try_join_all(sources.iter().map(|s| self.evaluate(s)));
        let chain = async {
            let mut state: Option<State> = None;
            for op in container.ops() {
                let source_state = match copy_source(op) {
                    Some(source) => Some(self.evaluate(source).await?),
                    None => None,
                };
                self.step(op, &mut state, source_state.as_ref()).await?;
            }
            Ok(state.expect("a container always starts with from or scratch"))
        };
        let (_, state) = futures_util::future::try_join(stages, chain).await?;
        Ok(state)
    }

    /// Run (or take from the cache) one step, with its progress events.
    async fn step(
        &self,
        op: &Op,
        state: &mut Option<State>,
        source: Option<&State>,
    ) -> Result<(), Error> {
        let engine = self.engine;
        // Steps that do work wait for a job slot before they count as started.
        let _permit = if makes_layer(op) || matches!(op, Op::From(_)) {
            Some(self.jobs.acquire().await.map_err(|_| Error::TaskPanicked)?)
        } else {
            None
        };
        let index = self.next_index.fetch_add(1, Ordering::SeqCst);
        let description = op.describe();
        engine.emit(Event::StepStarted {
            index,
            total: self.total,
            description: description.clone(),
        });
        let started = Instant::now();
        let (detail, cache) = self
            .step_inner(op, state, &description, index, source)
            .await
            .map_err(|source| Error::Step {
                index,
                step: description.clone(),
                source: Box::new(source),
            })?;
        engine.emit(Event::StepFinished {
            index,
            elapsed: started.elapsed(),
            detail,
            cache,
        });
        Ok(())
    }

    async fn step_inner(
        &self,
        op: &Op,
        state: &mut Option<State>,
        description: &str,
        index: usize,
        source: Option<&State>,
    ) -> Result<(Option<String>, CacheStatus), Error> {
        let engine = self.engine;
        let Some(st) = state.as_mut() else {
            let detail = run_root(engine, op, state).await?;
            return Ok((detail, CacheStatus::Config));
        };
        let slot = cache::slot(Some(&st.slot), op);
        let mut inputs = StepInputs::new(&st.key, cache::operation(op));
        if !makes_layer(op) {
            let detail = apply_op(engine, op, st, description, index, source).await?;
            st.key = cache::state_after(&inputs.key(), None);
            st.slot = slot;
            return Ok((detail, CacheStatus::Config));
        }

        inputs = inputs.with(
            "settings",
            cache::settings(engine.epoch, engine.compression),
        );
        if let Some(source) = source {
            inputs = inputs.with("source", source.key.clone());
        }
        match host_fingerprint(op, &engine.store).await? {
            HostInput::None => {}
            HostInput::Files(fp) => {
                inputs = inputs.with("files", fp.digest);
                inputs.files = Some(fp.entries);
            }
            HostInput::Archive(digest) => inputs = inputs.with("files", digest),
        }
        let cacheable = !matches!(op, Op::HttpFile { checksum: None, .. });
        let key = inputs.key();
        let store = &engine.store;
        // Held until the step's record is written (the permit is already held, and a
        // holder never waits for another permit, so this cannot deadlock).
        let key_lock = self
            .key_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let _same_step = key_lock.lock().await;

        let busted = engine.cache.busted(description);
        if cacheable
            && busted.is_none()
            && let Some(record) = store.step_record(&key)
        {
            let detail = apply_cached(engine, op, st, &key, &record, description);
            finish_step(store, st, &key, slot, &inputs, record.layer.as_ref())?;
            return Ok((detail, CacheStatus::Hit));
        }
        let reason = if !cacheable {
            "always runs: no checksum pins the download".to_owned()
        } else {
            busted.unwrap_or_else(|| cache::explain(store, &slot, &inputs))
        };

        let layers_before = st.layers.len();
        let detail = apply_op(engine, op, st, description, index, source).await?;
        let layer = (st.layers.len() > layers_before).then(|| {
            let blob = st.layers.last().expect("a layer was added");
            CachedLayer {
                digest: blob.digest.clone(),
                size: blob.size,
                media_type: blob.media_type.clone(),
                diff_id: st
                    .config
                    .rootfs
                    .diff_ids
                    .last()
                    .expect("every layer has a diff_id")
                    .clone(),
            }
        });
        if cacheable {
            if let (Op::Exec { .. }, Some(stdout)) = (op, &st.last_stdout) {
                store.put_step_stdout(&key, stdout)?;
            }
            // The record goes last: it names a blob already in the store.
            store.put_step_record(&key, &StepRecord::new(layer.clone()))?;
        }
        finish_step(store, st, &key, slot, &inputs, layer.as_ref())?;
        Ok((detail, CacheStatus::Ran { reason }))
    }
}

/// After a step: the state's new key and slot, and what the slot's inputs were.
fn finish_step(
    store: &Store,
    st: &mut State,
    key: &Digest,
    slot: Digest,
    inputs: &StepInputs,
    layer: Option<&CachedLayer>,
) -> Result<(), Error> {
    if let (Some(files), Some((_, digest))) = (
        &inputs.files,
        inputs.parts.iter().find(|(n, _)| n == "files"),
    ) {
        store.put_file_digests(digest, files)?;
    }
    store.put_slot_record(&slot, &SlotRecord::new(key.clone(), inputs.parts.clone()))?;
    st.key = cache::state_after(key, layer.map(|l| &l.diff_id));
    st.slot = slot;
    Ok(())
}

/// Apply a cached step's result: its layer, and what else the step changes besides.
fn apply_cached(
    engine: &Engine,
    op: &Op,
    st: &mut State,
    key: &Digest,
    record: &StepRecord,
    description: &str,
) -> Option<String> {
    match op {
        Op::Workdir(p) => {
            let joined = workdir_join(st.config.config.working_dir.as_deref(), p);
            st.config.config.working_dir = Some(joined);
        }
        Op::Exec { .. } => {
            let stdout = engine.store.step_stdout_path(key);
            st.last_stdout = stdout.is_file().then_some(stdout);
        }
        _ => {}
    }
    let layer = record.layer.as_ref()?;
    let detail = push_layer(
        engine,
        st,
        crate::layer::Layer {
            blob: layer.blob(),
            diff_id: layer.diff_id.clone(),
        },
        description,
    );
    Some(detail)
}

/// Host content a step copies, for its key.
enum HostInput {
    None,
    Files(crate::layer::Fingerprint),
    Archive(Digest),
}

async fn host_fingerprint(op: &Op, store: &Store) -> Result<HostInput, Error> {
    let (op, store) = (op.clone(), store.clone());
    tokio::task::spawn_blocking(move || match &op {
        Op::HostFile { path, src, opts } | Op::HostDirectory { path, src, opts } => {
            let mut builder = LayerBuilder::new();
            if matches!(op, Op::HostFile { .. }) {
                builder.add_host_file(path, src, opts)?;
            } else {
                builder.add_host_dir(path, src, opts)?;
            }
            let table = store.file_digest_table(src);
            let fingerprint = builder.fingerprint_with(Some(&table))?;
            table.save(&store);
            Ok(HostInput::Files(fingerprint))
        }
        Op::HostArchive { src, .. } => {
            // Like host files, an unchanged archive is not read again.
            let table = store.file_digest_table(src);
            let digest = std::fs::metadata(src)
                .and_then(|meta| crate::layer::host_file_digest(src, &meta, Some(&table)))
                .map_err(|source| Error::Io {
                    action: "read",
                    path: src.clone(),
                    source,
                })?;
            table.save(&store);
            Ok(HostInput::Archive(digest))
        }
        _ => Ok(HostInput::None),
    })
    .await
    .map_err(|_| Error::TaskPanicked)?
}

fn workdir_join(current: Option<&str>, p: &str) -> String {
    if p.starts_with('/') {
        p.to_owned()
    } else {
        let cur = current.unwrap_or("/");
        format!("{}/{p}", cur.trim_end_matches('/'))
    }
}

impl Container {
    /// Evaluate every step and assemble the image in the engine's store. The digest is
    /// known when this returns, before any upload.
    pub async fn build(&self, engine: &Engine) -> Result<BuiltImage, Error> {
        let _lock = engine.lock_store().await?;
        let state = Run::new(engine, self).evaluate(self).await?;
        finish(engine, state)
    }

    /// Evaluate the container and return the stdout of its last `with_exec` step.
    pub async fn stdout(&self, engine: &Engine) -> Result<String, Error> {
        let _lock = engine.lock_store().await?;
        let state = Run::new(engine, self).evaluate(self).await?;
        let path = state.last_stdout.ok_or(Error::NoExec)?;
        let bytes = tokio::fs::read(&path).await.map_err(|source| Error::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Evaluate the container and read the file at `path` from its filesystem.
    pub async fn file(&self, engine: &Engine, path: &str) -> Result<Vec<u8>, Error> {
        let _lock = engine.lock_store().await?;
        let state = Run::new(engine, self).evaluate(self).await?;
        let view = crate::layer::RootfsView::new(super::run::lowers(engine, &state).await?);
        let path_owned = path.to_owned();
        tokio::task::spawn_blocking(move || view.read_file(&path_owned))
            .await
            .map_err(|_| Error::TaskPanicked)??
            .ok_or_else(|| Error::NotFoundInImage {
                path: path.to_owned(),
            })
    }

    /// Evaluate the container and copy the directory at `path` out of its filesystem into
    /// the host directory `dest` (created; owners are kept when running as root).
    pub async fn directory(&self, engine: &Engine, path: &str, dest: &Path) -> Result<(), Error> {
        let _lock = engine.lock_store().await?;
        let state = Run::new(engine, self).evaluate(self).await?;
        let view = crate::layer::RootfsView::new(super::run::lowers(engine, &state).await?);
        let (path, dest) = (path.to_owned(), dest.to_owned());
        tokio::task::spawn_blocking(move || super::run::export_directory(&view, &path, &dest))
            .await
            .map_err(|_| Error::TaskPanicked)?
    }

    /// Build, then push to `target` under `policy`. Returns `target@digest`.
    pub async fn publish(
        &self,
        engine: &Engine,
        target: &ImageRef,
        policy: TagPolicy,
    ) -> Result<Published, Error> {
        // Held from the build through the push, so no pruning removes blobs in between.
        let _lock = engine.lock_store().await?;
        let built = self.build(engine).await?;
        push_built(engine, &built, target, policy).await
    }

    /// Build, then write the image to `target` (an OCI layout or a docker archive).
    pub async fn export(
        &self,
        engine: &Engine,
        target: &ExportTarget,
    ) -> Result<BuiltImage, Error> {
        let _lock = engine.lock_store().await?;
        let built = self.build(engine).await?;
        let store = engine.store.clone();
        let image = built.image.clone();
        let target = target.clone();
        tokio::task::spawn_blocking(move || crate::export::write(&store, &image, &target))
            .await
            .map_err(|_| Error::TaskPanicked)??;
        Ok(built)
    }
}

/// Push an already built image.
pub(crate) async fn push_built(
    engine: &Engine,
    built: &BuiltImage,
    target: &ImageRef,
    policy: TagPolicy,
) -> Result<Published, Error> {
    engine.emit(Event::PushStarted {
        target: target.to_string(),
    });
    let started = Instant::now();
    let report = engine
        .registry
        .push_image(target, &built.image, &engine.store, policy)
        .await?;
    engine.emit(Event::PushFinished {
        report: report.clone(),
        elapsed: started.elapsed(),
    });
    Ok(Published {
        reference: target.with_digest(report.digest.clone()),
        report,
    })
}

/// The first step of a chain: pull the base image, or start from scratch.
async fn run_root(
    engine: &Engine,
    op: &Op,
    state: &mut Option<State>,
) -> Result<Option<String>, Error> {
    match op {
        Op::From(reference) => {
            let reference: ImageRef = reference.parse()?;
            let pulled = engine
                .registry
                .pull_image(&reference, &engine.platform, &engine.store)
                .await?;
            let bytes = engine.store.read_blob(&pulled.image.config.digest)?;
            // Size, layer count and diff_ids against the manifest's layers.
            let config = ImageConfig::from_json_for(
                &bytes,
                &reference.to_string(),
                pulled.image.layers.len(),
            )?;
            let layers = pulled
                .image
                .layers
                .iter()
                .map(|l| BlobRef {
                    media_type: media_types::to_oci_layer(&l.media_type).to_owned(),
                    ..l.clone()
                })
                .collect();
            // Mark the base as used, for least-recently-used eviction.
            for blob in pulled.image.layers.iter().chain([&pulled.image.config]) {
                engine.store.touch(&engine.store.blob_path(&blob.digest));
            }
            // The base is keyed by what was pulled, not by its (movable) tag.
            let mut key = FieldHasher::new(cache::KEY_VERSION);
            key.str("from").digest(&pulled.image.manifest.digest);
            let detail = format!("{}", pulled.image.manifest.digest);
            *state = Some(State::root(config, layers, key.finish(), op));
            Ok(Some(detail))
        }
        Op::Scratch | Op::ScratchDefaultPath => {
            let mut config = ImageConfig {
                architecture: engine.platform.architecture().to_owned(),
                os: engine.platform.os().to_owned(),
                variant: engine.platform.variant().map(str::to_owned),
                ..ImageConfig::default()
            };
            if matches!(op, Op::ScratchDefaultPath) {
                config.config.set_env("PATH", crate::sandbox::DEFAULT_PATH);
            }
            let mut key = FieldHasher::new(cache::KEY_VERSION);
            key.str("scratch")
                .bool(matches!(op, Op::ScratchDefaultPath))
                .str(&engine.platform.to_string());
            *state = Some(State::root(config, Vec::new(), key.finish(), op));
            Ok(None)
        }
        _ => unreachable!("a chain starts with from or scratch"),
    }
}

async fn apply_op(
    engine: &Engine,
    op: &Op,
    state: &mut State,
    description: &str,
    index: usize,
    source_state: Option<&State>,
) -> Result<Option<String>, Error> {
    let rc = &mut state.config.config;
    match op {
        Op::From(_) | Op::Scratch | Op::ScratchDefaultPath => unreachable!("handled by run_root"),
        // Owner names need the image's /etc/passwd and /etc/group.
        Op::NewFile { .. } | Op::HostFile { .. } | Op::HostDirectory { .. } => {
            let mut builder = LayerBuilder::new();
            match op {
                Op::NewFile {
                    path,
                    contents,
                    mode,
                    owner,
                } => {
                    builder.add_bytes(path, contents.clone(), *mode, *owner)?;
                }
                Op::HostFile { path, src, opts } | Op::HostDirectory { path, src, opts } => {
                    let opts = super::run::with_owner_resolved(engine, state, opts).await?;
                    if matches!(op, Op::HostFile { .. }) {
                        builder.add_host_file(path, src, &opts)?;
                    } else {
                        builder.add_host_dir(path, src, &opts)?;
                    }
                }
                _ => unreachable!(),
            }
            let store = engine.store.clone();
            let (compression, epoch) = (engine.compression, engine.epoch);
            let layer =
                tokio::task::spawn_blocking(move || builder.write(&store, compression, epoch))
                    .await
                    .map_err(|_| Error::TaskPanicked)??;
            return Ok(Some(push_layer(engine, state, layer, description)));
        }
        Op::Env(k, v) => rc.set_env(k, v),
        Op::Workdir(p) => {
            let joined = workdir_join(rc.working_dir.as_deref(), p);
            rc.working_dir = Some(joined.clone());
            // Like Docker, make sure the directory exists in the image.
            if let Some(layer) = super::run::ensure_dir(engine, state, &joined).await? {
                return Ok(Some(push_layer(engine, state, layer, description)));
            }
        }
        Op::User(u) => rc.user = Some(u.clone()),
        Op::Label(k, v) => {
            rc.labels.insert(k.clone(), v.clone());
        }
        Op::Annotation(k, v) => {
            state.annotations.insert(k.clone(), v.clone());
        }
        Op::ExposedPort(p, proto) => {
            rc.exposed_ports
                .insert(format!("{p}/{proto}"), Default::default());
        }
        Op::Entrypoint(a) => {
            rc.entrypoint = Some(a.clone());
            // As Docker does: a new entrypoint drops the inherited default arguments.
            rc.cmd = None;
        }
        Op::DefaultArgs(a) => rc.cmd = Some(a.clone()),
        Op::Volume(p) => {
            rc.volumes.insert(p.clone(), Default::default());
        }
        Op::StopSignal(sig) => rc.stop_signal = Some(sig.clone()),
        Op::Healthcheck(h) => {
            rc.other.insert("Healthcheck".to_owned(), h.to_json());
        }
        Op::Shell(a) => {
            rc.other.insert("Shell".to_owned(), serde_json::json!(a));
        }
        Op::Author(a) => state.config.author = Some(a.clone()),
        Op::OnBuild(t) => {
            let triggers = rc
                .other
                .entry("OnBuild".to_owned())
                .or_insert_with(|| serde_json::json!([]));
            match triggers.as_array_mut() {
                Some(list) => list.push(serde_json::json!(t)),
                None => *triggers = serde_json::json!([t]),
            }
        }
        Op::EnvExpand(k, template) => {
            let env = |n: &str| rc.env_value(n).map(str::to_owned);
            let value = crate::dockerfile::expand_env_template(template, &env);
            rc.set_env(k, &value);
        }
        Op::Unmount(path) => state.mounts.retain(|(p, _)| p != path),
        Op::MountCache { path, volume } => {
            state.mounts.retain(|(p, _)| p != path);
            state.mounts.push((path.clone(), volume.clone()));
        }
        Op::SecretVariable(v) => {
            state.secrets.retain(|s| s.name != v.name);
            state.secrets.push(v.clone());
        }
        Op::Exec { .. }
        | Op::CopyFrom { .. }
        | Op::CopyPathFrom { .. }
        | Op::Remove { .. }
        | Op::HttpFile { .. }
        | Op::HostArchive { .. } => {
            let layer = match op {
                Op::Exec { args, opts } => {
                    super::run::exec(engine, state, index, args, opts).await?
                }
                Op::CopyFrom {
                    path,
                    src_path,
                    opts,
                    ..
                }
                | Op::CopyPathFrom {
                    path,
                    src_path,
                    opts,
                    ..
                } => {
                    let source = source_state.expect("copy source evaluated first");
                    super::run::copy_from(engine, state, source, path, src_path, opts).await?
                }
                Op::Remove { path, .. } => super::run::remove(engine, state, path).await?,
                Op::HttpFile {
                    path,
                    url,
                    checksum,
                    opts,
                } => {
                    super::run::http_file(engine, state, path, url, checksum.as_ref(), opts).await?
                }
                Op::HostArchive { path, src, opts } => {
                    super::run::host_archive(engine, state, path, src, opts).await?
                }
                _ => unreachable!("matched above"),
            };
            return Ok(Some(push_layer(engine, state, layer, description)));
        }
    }
    Ok(None)
}

/// Add a finished layer to the image, with its history entry.
fn push_layer(
    engine: &Engine,
    state: &mut State,
    layer: crate::layer::Layer,
    description: &str,
) -> String {
    let detail = format!("layer {} ({} bytes)", layer.blob.digest, layer.blob.size);
    state.config.rootfs.diff_ids.push(layer.diff_id);
    state.layers.push(layer.blob);
    state.config.history.push(History {
        created: Some(epoch::rfc3339(engine.epoch)),
        created_by: Some(format!("blumeops: {description}")),
        ..History::default()
    });
    detail
}

fn finish(engine: &Engine, mut state: State) -> Result<BuiltImage, Error> {
    state.config.created = Some(epoch::rfc3339(engine.epoch));
    let config_bytes = serde_json::to_vec(&state.config).map_err(Error::Serialize)?;
    let config_digest = engine.store.put_bytes(&config_bytes)?;
    let config = BlobRef {
        digest: config_digest,
        size: config_bytes.len() as u64,
        media_type: media_types::OCI_CONFIG.to_owned(),
    };
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: media_types::OCI_MANIFEST.to_owned(),
        config: Descriptor::from(&config),
        layers: state.layers.iter().map(Descriptor::from).collect(),
        annotations: state.annotations,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(Error::Serialize)?;
    engine.store.put_bytes(&bytes)?;
    Ok(BuiltImage {
        image: StoredImage {
            manifest: ManifestBlob::new(bytes, media_types::OCI_MANIFEST),
            config,
            layers: state.layers,
        },
        config: state.config,
    })
}
