//! The solver: walks a `Container`'s plan stage by stage, keys every step, takes what it can
//! from the step cache and applies the rest (`apply`), stages concurrently.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use super::apply::{apply_op, run_root};
use super::cache::{self, CacheStatus, StepInputs};
use super::engine::{Engine, Event};
use super::plan::StageLayout;
use super::state::{Mounted, State, push_layer, workdir_join};
use super::{Container, Node, Op};
use crate::error::Error;
use crate::layer::LayerBuilder;
use crate::reference::{Digest, ImageRef, Platform};
use crate::registry::RegistryClient;
use crate::registry_cache::{self, ExportStep, RegistryCache};
use crate::store::{CachedLayer, StageRecord, StepInputsRecord, StepRecord, Store};

/// One evaluation: walks the stages of the container's plan (numbered as `plan` numbers
/// them), evaluates each stage once, and runs independent stages concurrently (at most
/// `jobs` steps at a time).
pub(super) struct Run<'a> {
    engine: &'a Engine,
    total: usize,
    stages: Vec<StageLayout>,
    /// Stage index (0-based) of each stage's tip node.
    stage_of: HashMap<usize, usize>,
    /// One cell per stage: a stage needed twice runs once, and a second caller waits for
    /// the first.
    cells: Vec<tokio::sync::OnceCell<State>>,
    /// One lock per step key: two stages (or two platforms' builds) that reach the same
    /// step at once run it once, the second finds the first's result in the cache.
    key_locks: Arc<StepLocks>,
    jobs: Arc<tokio::sync::Semaphore>,
    /// The registry cache, when the engine has one.
    registry_cache: Option<RegistryCache>,
    /// Every cached step of this build, for the registry cache's export.
    exports: std::sync::Mutex<Vec<ExportStep>>,
    /// The engine's registry client, with the container's own credentials in front.
    registry: RegistryClient,
}

/// A lock per step key.
pub(super) type StepLocks = std::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>;

fn copy_source(op: &Op) -> Option<&Container> {
    super::op_source(op)
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
            | Op::GitRepository { .. }
    )
}

fn node_key(node: &Arc<Node>) -> usize {
    Arc::as_ptr(node) as usize
}

impl<'a> Run<'a> {
    pub(super) fn new(engine: &'a Engine, container: &Container) -> Self {
        let (plan, stages) = container.layout();
        let stage_of = stages
            .iter()
            .enumerate()
            .map(|(i, s)| (node_key(&s.tip), i))
            .collect();
        let auth: Vec<_> = container
            .registry_auth()
            .into_iter()
            .map(|a| (a.address, a.credential))
            .collect();
        let registry = if auth.is_empty() {
            engine.registry.clone()
        } else {
            engine.registry.with_credentials(&auth)
        };
        Self {
            registry,
            engine,
            total: plan.total_steps,
            cells: stages
                .iter()
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            stages,
            stage_of,
            key_locks: engine.step_locks.clone().unwrap_or_default(),
            jobs: engine.job_slots.clone(),
            registry_cache: engine
                .registry_cache
                .as_ref()
                .map(|(options, client)| RegistryCache::new(options, client.clone())),
            exports: std::sync::Mutex::default(),
        }
    }

    /// The engine this run builds with.
    pub(super) fn engine(&self) -> &'a Engine {
        self.engine
    }

    /// The registry client for this container's pulls and publish.
    pub(super) fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// After the build succeeded (and was pushed to `mount_from`, for a publish): export
    /// its steps and volumes to the registry cache, if there is one.
    pub(super) async fn export_to_registry_cache(&self, mount_from: Option<&ImageRef>) {
        if let Some(cache) = &self.registry_cache {
            let steps = std::mem::take(
                &mut *self
                    .exports
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            registry_cache::export(self.engine, cache, &steps, mount_from).await;
        }
    }

    fn exported(&self, stage: usize, key: &Digest, layer: Option<&CachedLayer>, op: &Op) {
        if self.registry_cache.is_some() {
            self.exports
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(ExportStep {
                    stage,
                    key: key.clone(),
                    layer: layer.cloned(),
                    exec: matches!(op, Op::Exec { .. }),
                });
        }
    }

    /// Before the first step: every stage that runs commands for an architecture this
    /// machine does not run natively needs an emulator (binfmt_misc), so a missing one
    /// fails the build at once, naming the platform, rather than in the middle of a step.
    pub(super) fn check_platforms(&self) -> Result<(), Error> {
        let mut checked = Vec::new();
        for (index, stage) in self.stages.iter().enumerate() {
            let runs_commands = stage
                .own
                .iter()
                .any(|(node, _)| matches!(node.op, Op::Exec { .. }));
            let platform = self.stage_platform(index);
            if runs_commands && !checked.contains(platform) {
                crate::executor::emulation::check(platform)?;
                checked.push(platform.clone());
            }
        }
        Ok(())
    }

    /// The platform a stage is for: its base image's (or scratch's), or its base stage's.
    fn stage_platform(&self, mut index: usize) -> &Platform {
        loop {
            let stage = &self.stages[index];
            match (&stage.base, stage.own.first().map(|(node, _)| &node.op)) {
                (Some(base), _) => index = self.stage_index(base),
                (
                    None,
                    Some(
                        Op::From(_, Some(p))
                        | Op::Scratch(Some(p))
                        | Op::ScratchDefaultPath(Some(p)),
                    ),
                ) => return p,
                (None, _) => return &self.engine.platform,
            }
        }
    }

    /// Evaluate `container` (a stage of the plan this run was made for).
    pub(super) async fn evaluate(&self, container: &Container) -> Result<State, Error> {
        self.evaluate_stage(self.stage_index(&container.node)).await
    }

    fn stage_index(&self, tip: &Arc<Node>) -> usize {
        *self
            .stage_of
            .get(&node_key(tip))
            .expect("every stage tip is in the plan")
    }

    /// Evaluate one stage (once, however many stages need it).
    fn evaluate_stage(
        &self,
        index: usize,
    ) -> Pin<Box<dyn Future<Output = Result<State, Error>> + Send + '_>> {
        Box::pin(async move {
            self.cells[index]
                .get_or_try_init(|| self.evaluate_chain(index))
                .await
                .cloned()
        })
    }

    /// Run a stage's own steps in order, on its base stage's result, while the stages it
    /// copies from are evaluated concurrently; a copy step waits for its stage. When the
    /// stage finishes, its steps' inputs are recorded for the next build's reasons.
    async fn evaluate_chain(&self, index: usize) -> Result<State, Error> {
        let layout = &self.stages[index];
        let mut sources: Vec<usize> = Vec::new();
        for (node, _) in &layout.own {
            if let Some(source) = copy_source(&node.op) {
                let s = self.stage_index(&source.node);
                if !sources.contains(&s) {
                    sources.push(s);
                }
            }
        }
        let stages =
            futures_util::future::try_join_all(sources.iter().map(|s| self.evaluate_stage(*s)));
        let store = &self.engine.store;
        let history = cache::stage_history(&self.engine.container_name, &layout.history_key);
        let operations: Vec<(Digest, String)> = layout
            .own
            .iter()
            .map(|(n, _)| (cache::operation(&n.op), n.op.describe()))
            .collect();
        let previous = cache::align(store.stage_record(&history).as_ref(), &operations);
        let chain = async {
            let mut state: Option<State> = match &layout.base {
                Some(base) => Some(self.evaluate_stage(self.stage_index(base)).await?),
                None => None,
            };
            let mut records = Vec::with_capacity(layout.own.len());
            for (((node, step), previous), operation) in
                layout.own.iter().zip(&previous).zip(operations)
            {
                let source_state = match copy_source(&node.op) {
                    Some(source) => Some(self.evaluate(source).await?),
                    None => None,
                };
                let at = At {
                    index: *step,
                    stage: index + 1,
                    stage_name: &layout.name,
                    previous,
                };
                let (key, inputs) = self
                    .step(&node.op, at, &mut state, source_state.as_ref())
                    .await?;
                let (operation, description) = operation;
                records.push(StepInputsRecord {
                    operation,
                    description,
                    key,
                    inputs,
                });
            }
            store.put_stage_record(&history, &StageRecord::new(records))?;
            Ok(state.expect("a stage always starts with from, scratch or its base stage"))
        };
        let (_, state) = futures_util::future::try_join(stages, chain).await?;
        Ok(state)
    }

    /// Run (or take from the cache) one step, with its progress events; the step's key and
    /// named inputs.
    async fn step(
        &self,
        op: &Op,
        at: At<'_>,
        state: &mut Option<State>,
        source: Option<&State>,
    ) -> Result<(Digest, Vec<(String, Digest)>), Error> {
        let engine = self.engine;
        // Steps that do work wait for a job slot before they count as started.
        let _permit = if makes_layer(op) || matches!(op, Op::From(..)) {
            Some(self.jobs.acquire().await.map_err(|_| Error::TaskPanicked)?)
        } else {
            None
        };
        let index = at.index;
        let description = op.describe();
        engine.emit(Event::StepStarted {
            index,
            total: self.total,
            stage: at.stage,
            stage_name: at.stage_name.to_owned(),
            description: description.clone(),
            platform: None,
        });
        let started = Instant::now();
        let (detail, cache, record) = self
            .step_inner(op, state, &description, &at, source)
            .await
            .map_err(|source| Error::Step {
                index: engine.step_number(index),
                step: description.clone(),
                source: Box::new(source),
            })?;
        engine.emit(Event::StepFinished {
            index,
            elapsed: started.elapsed(),
            detail,
            cache,
        });
        Ok(record)
    }

    async fn step_inner(
        &self,
        op: &Op,
        state: &mut Option<State>,
        description: &str,
        at: &At<'_>,
        source: Option<&State>,
    ) -> Result<StepOutcome, Error> {
        let engine = self.engine;
        let (index, stage, previous) = (at.index, at.stage, at.previous);
        let Some(st) = state.as_mut() else {
            let detail = run_root(engine, &self.registry, op, state, index).await?;
            let key = state
                .as_ref()
                .expect("a root step sets the state")
                .key
                .clone();
            return Ok((detail, CacheStatus::Config, (key, Vec::new())));
        };
        let mut inputs = StepInputs::new(&st.key, cache::operation(op));
        if let (false, Some(source)) = (makes_layer(op), source) {
            // A mounted directory's content is an input of the steps after it.
            inputs = inputs.with("source", source.key.clone());
        }
        if let Op::MountHostDirectory { .. } = op
            && let HostInput::Files(fp) = host_fingerprint(op, &engine.store).await?
        {
            inputs = inputs.with("files", fp.digest);
            inputs.files = Some(fp.entries);
        }
        if !makes_layer(op) {
            let detail = apply_op(engine, op, st, &op.history(), index, source).await?;
            let key = inputs.key();
            finish_step(&engine.store, st, &key, &inputs, None)?;
            return Ok((detail, CacheStatus::Config, (key, inputs.parts)));
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
        // What a URL or a git branch names can change: only pinned content is reused.
        let cacheable = match op {
            Op::HttpFile { checksum, .. } => checksum.is_some(),
            Op::GitRepository { reference, .. } => {
                reference.as_deref().is_some_and(super::is_commit_id)
            }
            _ => true,
        };
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
            let detail = apply_cached(engine, op, st, &key, &record, &op.history());
            finish_step(store, st, &key, &inputs, record.layer.as_ref())?;
            self.exported(stage, &key, record.layer.as_ref(), op);
            return Ok((detail, CacheStatus::Hit, (key, inputs.parts)));
        }
        if cacheable
            && busted.is_none()
            && let Some(cache) = &self.registry_cache
            && let Some(record) =
                registry_cache::import_step(engine, cache, &key, matches!(op, Op::Exec { .. }))
                    .await
        {
            let detail = apply_cached(engine, op, st, &key, &record, &op.history());
            finish_step(store, st, &key, &inputs, record.layer.as_ref())?;
            self.exported(stage, &key, record.layer.as_ref(), op);
            return Ok((detail, CacheStatus::Imported, (key, inputs.parts)));
        }
        if let (Op::Exec { .. }, Some(cache)) = (op, &self.registry_cache) {
            // A command is about to run: its cache volumes come from the registry cache
            // when they are missing here.
            for (_, mounted) in &st.mounts {
                if let Mounted::Cache(volume) = mounted {
                    registry_cache::import_volume(engine, cache, volume.name()).await;
                }
            }
        }
        let reason = if !cacheable {
            "always runs: no checksum pins the download".to_owned()
        } else {
            busted.unwrap_or_else(|| cache::explain(store, previous, &inputs))
        };

        let layers_before = st.layers.len();
        let detail = apply_op(engine, op, st, &op.history(), index, source).await?;
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
            self.exported(stage, &key, layer.as_ref(), op);
        }
        finish_step(store, st, &key, &inputs, layer.as_ref())?;
        Ok((detail, CacheStatus::Ran { reason }, (key, inputs.parts)))
    }
}

/// Where a step is: its number, its stage, and what it was in the last build.
struct At<'r> {
    index: usize,
    stage: usize,
    stage_name: &'r str,
    previous: &'r cache::Previous,
}

/// What a step shows when it finishes (detail, cache status) and its key and inputs.
type StepOutcome = (Option<String>, CacheStatus, (Digest, Vec<(String, Digest)>));

/// After a step: the state's new key, and the host copy's per-file digests.
fn finish_step(
    store: &Store,
    st: &mut State,
    key: &Digest,
    inputs: &StepInputs,
    layer: Option<&CachedLayer>,
) -> Result<(), Error> {
    if let (Some(files), Some((_, digest))) = (
        &inputs.files,
        inputs.parts.iter().find(|(n, _)| n == "files"),
    ) {
        store.put_file_digests(digest, files)?;
    }
    st.key = cache::state_after(key, layer.map(|l| &l.diff_id));
    Ok(())
}

/// Apply a cached step's result: its layer, and what else the step changes besides.
fn apply_cached(
    engine: &Engine,
    op: &Op,
    st: &mut State,
    key: &Digest,
    record: &StepRecord,
    history: &str,
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
        history,
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
    tokio::task::spawn_blocking(move || {
        if matches!(
            op,
            Op::HostFile { .. }
                | Op::HostDirectory { .. }
                | Op::HostArchive { .. }
                | Op::MountHostDirectory { .. }
        ) {
            // In the docker executor's engine, the context may still be on its way.
            crate::executor::docker::serve::wait_for_context();
        }
        match &op {
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
            Op::MountHostDirectory { path, src, .. } => {
                let mut builder = LayerBuilder::new();
                // A Dockerfile's bind mount may name a single file.
                if src.is_file() {
                    builder.add_host_file(path, src, &crate::layer::HostCopy::default())?;
                } else {
                    builder.add_host_dir(path, src, &crate::layer::HostCopy::default())?;
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
        }
    })
    .await
    .map_err(|_| Error::TaskPanicked)?
}
