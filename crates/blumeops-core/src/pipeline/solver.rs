//! The solver: walks a `Container`'s operation graph, keys every step, takes what it can
//! from the step cache and applies the rest (`apply`), stages concurrently.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::apply::{apply_op, run_root};
use super::cache::{self, CacheStatus, StepInputs};
use super::engine::{Engine, Event};
use super::state::{State, push_layer, workdir_join};
use super::{Container, Op};
use crate::error::Error;
use crate::layer::LayerBuilder;
use crate::reference::Digest;
use crate::store::{CachedLayer, SlotRecord, StepRecord, Store};

/// One evaluation: numbers steps across stages, evaluates each container once, and runs
/// independent stages concurrently (at most `jobs` steps at a time).
pub(super) struct Run<'a> {
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
    pub(super) fn new(engine: &'a Engine, container: &Container) -> Self {
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
    pub(super) fn evaluate<'b>(
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
            let detail = apply_op(engine, op, st, &op.history(), index, source).await?;
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
            let detail = apply_cached(engine, op, st, &key, &record, &op.history());
            finish_step(store, st, &key, slot, &inputs, record.layer.as_ref())?;
            return Ok((detail, CacheStatus::Hit));
        }
        let reason = if !cacheable {
            "always runs: no checksum pins the download".to_owned()
        } else {
            busted.unwrap_or_else(|| cache::explain(store, &slot, &inputs))
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
            Op::HostFile { .. } | Op::HostDirectory { .. } | Op::HostArchive { .. }
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
