//! Stage chains: one entry per stage of a build with the records of all its cached steps
//! in order, tagged `chain-<first step's key>-<hash of all keys>-<UTC time>`. A machine
//! whose first step of a stage misses locally but is in the cache reads the newest chain
//! that starts with it (two requests), then knows every later step of the stage that
//! build had and fetches all their layers at once, instead of one request after another
//! per step. Steps the chain does not cover fall back to their own entries.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use serde::{Deserialize, Serialize};

use super::RegistryCache;
use super::artifact::{self, MAX_CONFIG_BYTES, StepConfig};
use super::steps::{ExportStep, Miss, adopt_record};
use crate::fields::FieldHasher;
use crate::image::BlobRef;
use crate::pipeline::{Engine, Event};
use crate::reference::{Digest, ImageRef};
use crate::registry::{Error as RegistryError, TagPolicy};
use crate::store::{StepRecord, Store};

/// `artifactType` of a stage chain.
pub(super) const CHAIN_ARTIFACT: &str = "application/vnd.blumeops.chain.v1";
/// Media type of a chain's config: a [`ChainConfig`].
pub(super) const CHAIN_CONFIG: &str = "application/vnd.blumeops.chain.config.v1+json";
/// Layers of a chain fetched at once.
const PARALLEL_FETCHES: usize = 3;

/// A chain's config: the records of a stage's cached steps, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChainConfig {
    version: u32,
    steps: Vec<StepConfig>,
}

/// A layer download started when its chain was read, and its diff_id computed right after
/// (so layers are checked in parallel, while earlier steps are adopted); every step that
/// needs it awaits the same one.
type Fetch = Shared<BoxFuture<'static, Result<Digest, FetchFailed>>>;

#[derive(Debug, Clone)]
enum FetchFailed {
    /// The blob did not match its digest or size.
    Bad(String),
    /// The registry could not be reached or refused.
    Registry(String),
}

/// What this build learnt from chains.
#[derive(Default)]
pub(super) struct Chains {
    /// First keys whose chains were looked for already.
    tried: HashSet<Digest>,
    /// Steps known from chains: their record and their layer's download.
    steps: HashMap<Digest, (StepConfig, Option<(BlobRef, Fetch)>)>,
}

fn prefix(first: &Digest) -> String {
    format!("chain-{}-", first.hex())
}

/// The hash of a chain's keys, in order.
fn keys_hash(keys: &[&Digest]) -> Digest {
    let mut h = FieldHasher::new("blumeops chain");
    h.u64(keys.len() as u64);
    for key in keys {
        h.digest(key);
    }
    h.finish()
}

/// The time of a chain tag for `first` (compact UTC, sorts by time), if it is one.
fn chain_time<'t>(tag: &'t str, first: &Digest) -> Option<&'t str> {
    let rest = tag.strip_prefix(&prefix(first))?;
    let (hash, time) = rest.split_once('-')?;
    (hash.len() == 16 && time.len() == 16).then_some(time)
}

/// The step `key` from a chain: known from one read already, or from the newest chain
/// that starts with it. `None` when no chain covers it (or its chain is damaged: then a
/// warning, and the step's own entry is tried).
pub(super) async fn import(
    engine: &Engine,
    cache: &RegistryCache,
    tags: &HashSet<String>,
    key: &Digest,
    exec: bool,
) -> Option<Result<StepRecord, Miss>> {
    if let Some(known) = known(cache, key) {
        return Some(adopt(engine, key, known, exec).await);
    }
    let newest = {
        let mut chains = lock(cache);
        if !chains.tried.insert(key.clone()) {
            return None;
        }
        tags.iter()
            .filter_map(|t| Some((chain_time(t, key)?, t)))
            .max()
            .map(|(_, t)| t.clone())?
    };
    match read_chain(engine, cache, &newest).await {
        Ok(()) => {}
        Err(Miss::Bad(why)) => {
            engine.emit(Event::Warning {
                message: format!(
                    "registry cache {}: chain {newest} ignored: {why}",
                    cache.name()
                ),
            });
            return None;
        }
        Err(other) => return Some(Err(other)),
    }
    let known = known(cache, key)?;
    Some(adopt(engine, key, known, exec).await)
}

fn lock(cache: &RegistryCache) -> std::sync::MutexGuard<'_, Chains> {
    cache.chains.lock().unwrap_or_else(PoisonError::into_inner)
}

fn known(cache: &RegistryCache, key: &Digest) -> Option<(StepConfig, Option<(BlobRef, Fetch)>)> {
    lock(cache).steps.get(key).cloned()
}

/// Wait for the step's layer and keep it as a local record.
async fn adopt(
    engine: &Engine,
    key: &Digest,
    (step, layer): (StepConfig, Option<(BlobRef, Fetch)>),
    exec: bool,
) -> Result<StepRecord, Miss> {
    let (blob, diff_id) = match layer {
        Some((blob, fetch)) => {
            let diff_id = fetch.await.map_err(|failed| match failed {
                FetchFailed::Bad(why) => Miss::Bad(why),
                FetchFailed::Registry(why) => Miss::RegistryText(why),
            })?;
            (Some(blob), Some(diff_id))
        }
        None => (None, None),
    };
    let (store, key) = (engine.store().clone(), key.clone());
    tokio::task::spawn_blocking(move || {
        adopt_record(&store, &key, &step, blob.as_ref(), diff_id.as_ref(), exec)
    })
    .await
    .map_err(|_| Miss::Bad("its check panicked".to_owned()))?
}

/// Read a chain and start downloading all its layers.
async fn read_chain(engine: &Engine, cache: &RegistryCache, tag: &str) -> Result<(), Miss> {
    let reference = cache.tagged(tag);
    let Some((bytes, _, _)) = cache.client.fetch_manifest_bytes(&reference).await? else {
        return Err(Miss::Unusable);
    };
    let (config, layers) = parse(&bytes)?;
    let store = engine.store();
    cache
        .client
        .fetch_blob_into(&reference, &config, store)
        .await?;
    let chain: ChainConfig = serde_json::from_slice(
        &store
            .read_blob(&config.digest)
            .map_err(|e| Miss::Bad(e.to_string()))?,
    )
    .map_err(|e| Miss::Bad(format!("its config: {e}")))?;
    if chain.version != 1 {
        return Err(Miss::Unusable);
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL_FETCHES));
    let mut fetches: HashMap<Digest, Fetch> = HashMap::new();
    let mut known = Vec::with_capacity(chain.steps.len());
    for step in chain.steps {
        let layer = match &step.layer {
            None => None,
            Some(recorded) => {
                let blob = recorded.blob();
                if !layers.contains(&blob) {
                    return Err(Miss::Bad(format!(
                        "step {} names layer {}, which the chain does not hold",
                        step.key, blob.digest
                    )));
                }
                let fetch = fetches
                    .entry(blob.digest.clone())
                    .or_insert_with(|| start_fetch(cache, &reference, &blob, store, limit.clone()))
                    .clone();
                Some((blob, fetch))
            }
        };
        known.push((step.key.clone(), (step, layer)));
    }
    lock(cache).steps.extend(known);
    Ok(())
}

fn parse(bytes: &[u8]) -> Result<(BlobRef, Vec<BlobRef>), Miss> {
    artifact::parse_entry_with(bytes, CHAIN_ARTIFACT, CHAIN_CONFIG, usize::MAX).map_err(Miss::Bad)
}

/// Download a layer in the background (at most [`PARALLEL_FETCHES`] of a chain at once).
fn start_fetch(
    cache: &RegistryCache,
    reference: &ImageRef,
    blob: &BlobRef,
    store: &Store,
    limit: Arc<tokio::sync::Semaphore>,
) -> Fetch {
    let (client, reference, blob, store) = (
        cache.client.clone(),
        reference.clone(),
        blob.clone(),
        store.clone(),
    );
    let task = tokio::spawn(async move {
        let _permit = limit.acquire_owned().await;
        client
            .fetch_blob_into(&reference, &blob, &store)
            .await
            .map_err(|e| {
                if super::damaged(&e) {
                    FetchFailed::Bad(e.to_string())
                } else {
                    FetchFailed::Registry(e.to_string())
                }
            })?;
        tokio::task::spawn_blocking(move || super::steps::layer_diff_id(&store, &blob))
            .await
            .unwrap_or_else(|_| Err("its check panicked".to_owned()))
            .map_err(FetchFailed::Bad)
    });
    async move {
        task.await
            .unwrap_or_else(|_| Err(FetchFailed::Bad("its download panicked".to_owned())))
    }
    .boxed()
    .shared()
}

/// Export a chain for every stage of the build with two or more cached steps, unless the
/// repository has one with the same steps. Chains whose records (with commands' stdout)
/// would be over [`MAX_CONFIG_BYTES`] are left out: their steps' own entries serve.
pub(super) async fn export(
    engine: &Engine,
    cache: &RegistryCache,
    tags: &HashSet<String>,
    steps: &[ExportStep],
    mount_from: Option<&ImageRef>,
) -> Result<usize, String> {
    let mut stages: Vec<(usize, Vec<&ExportStep>)> = Vec::new();
    for step in steps {
        match stages.iter_mut().find(|(s, _)| *s == step.stage) {
            Some((_, list)) => list.push(step),
            None => stages.push((step.stage, vec![step])),
        }
    }
    let mut exported = 0;
    for (_, list) in stages {
        if list.len() < 2 || cache.is_off() {
            continue;
        }
        let keys: Vec<&Digest> = list.iter().map(|s| &s.key).collect();
        let hash = keys_hash(&keys);
        let same = format!("{}{}-", prefix(keys[0]), &hash.hex()[..16]);
        if tags.iter().any(|t| t.starts_with(&same)) {
            continue;
        }
        let tag = format!("{same}{}", crate::epoch::compact_utc(artifact::now_secs()));
        let store = engine.store().clone();
        let owned: Vec<ExportStep> = list.iter().map(|s| (*s).clone()).collect();
        let entry = tokio::task::spawn_blocking(move || chain_entry(&store, &owned))
            .await
            .map_err(|_| "preparing a chain panicked".to_owned())??;
        let Some(entry) = entry else {
            continue;
        };
        match cache
            .client
            .push_image_mounting(
                &cache.tagged(&tag),
                &entry,
                engine.store(),
                TagPolicy::CreateOnly,
                mount_from,
            )
            .await
        {
            Ok(_) => exported += 1,
            Err(RegistryError::TagConflict { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(exported)
}

/// A chain's entry, or `None` when a step's stdout is gone or the records are too large.
fn chain_entry(
    store: &Store,
    steps: &[ExportStep],
) -> Result<Option<crate::image::StoredImage>, String> {
    let mut records = Vec::with_capacity(steps.len());
    let mut layers: Vec<BlobRef> = Vec::new();
    for step in steps {
        let stdout = if step.exec {
            match std::fs::read(store.step_stdout_path(&step.key)) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        } else {
            None
        };
        if let Some(layer) = &step.layer
            && !layers.iter().any(|l| l.digest == layer.digest)
        {
            layers.push(layer.blob());
        }
        records.push(StepConfig::new(
            step.key.clone(),
            step.layer.clone(),
            stdout.as_deref(),
        ));
    }
    let config = ChainConfig {
        version: 1,
        steps: records,
    };
    let size = serde_json::to_vec(&config).map_or(u64::MAX, |b| b.len() as u64);
    if size > MAX_CONFIG_BYTES {
        return Ok(None);
    }
    artifact::entry_with_layers(store, CHAIN_ARTIFACT, CHAIN_CONFIG, &config, layers)
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_tags_are_found_by_their_first_key() {
        let first: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let other: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        let hash = keys_hash(&[&first, &other]);
        let tag = format!(
            "{}{}-{}",
            prefix(&first),
            &hash.hex()[..16],
            crate::epoch::compact_utc(1_700_000_000)
        );
        assert!(tag.len() <= 128, "a tag is at most 128 characters");
        assert_eq!(chain_time(&tag, &first), Some("20231114T221320Z"));
        assert_eq!(chain_time(&tag, &other), None);
        assert_ne!(hash, keys_hash(&[&other, &first]), "order matters");
    }
}
