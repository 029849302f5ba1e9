//! Step entries: looked up when a step misses the local cache, exported after a build.

use futures_util::StreamExt as _;

use super::RegistryCache;
use super::artifact::{self, STEP_ARTIFACT, STEP_CONFIG, StepConfig};
use crate::image::BlobRef;
use crate::pipeline::{Engine, Event};
use crate::reference::{Digest, ImageRef};
use crate::registry::{Error as RegistryError, TagPolicy};
use crate::store::{CachedLayer, StepRecord, Store};

/// Entries pushed at once.
const PARALLEL_EXPORTS: usize = 3;

/// A step of a finished build, to export.
#[derive(Debug, Clone)]
pub(crate) struct ExportStep {
    /// The stage it belongs to (its steps are recorded in order).
    pub stage: usize,
    pub key: Digest,
    pub layer: Option<CachedLayer>,
    /// A command: its stdout (saved in the store) goes along.
    pub exec: bool,
}

/// Why an entry was not used.
pub(super) enum Miss {
    /// The repository could not be reached or refused: the cache goes off.
    Registry(RegistryError),
    /// The entry is damaged or not ours: ignored, with a warning.
    Bad(String),
    /// As `Registry`, said by a download that ran in the background.
    RegistryText(String),
    /// Usable elsewhere, not here (a command's stdout too large to carry): no warning.
    Unusable,
}

impl From<RegistryError> for Miss {
    fn from(e: RegistryError) -> Self {
        // A blob that fails its digest is a damaged entry, not an unreachable cache.
        if super::damaged(&e) {
            Miss::Bad(e.to_string())
        } else {
            Miss::Registry(e)
        }
    }
}

/// Look the step `key` up in the registry cache; on a hit its record and layer are now in
/// the local store (verified: the layer by digest and diff_id, the record by key). `exec`:
/// the step runs a command, so its stdout must come along.
pub(crate) async fn import_step(
    engine: &Engine,
    cache: &RegistryCache,
    key: &Digest,
    exec: bool,
) -> Option<StepRecord> {
    let tag = artifact::step_tag(key);
    let tags = cache.tags(engine).await?;
    let result = match super::chains::import(engine, cache, &tags, key, exec).await {
        Some(result) => result,
        None if tags.contains(&tag) => fetch(engine, cache, key, &tag, exec).await,
        None => return None,
    };
    match result {
        Ok(record) => Some(record),
        Err(Miss::Registry(e)) => {
            cache.give_up(engine, &format!("reading {tag}"), &e);
            None
        }
        Err(Miss::RegistryText(e)) => {
            cache.give_up(engine, &format!("reading {tag}"), &e);
            None
        }
        Err(Miss::Bad(why)) => {
            engine.emit(Event::Warning {
                message: format!(
                    "registry cache {}: entry {tag} ignored, the step runs: {why}",
                    cache.name()
                ),
            });
            None
        }
        Err(Miss::Unusable) => None,
    }
}

async fn fetch(
    engine: &Engine,
    cache: &RegistryCache,
    key: &Digest,
    tag: &str,
    exec: bool,
) -> Result<StepRecord, Miss> {
    let reference = cache.tagged(tag);
    let Some((bytes, _, _)) = cache.client.fetch_manifest_bytes(&reference).await? else {
        return Err(Miss::Unusable); // listed, then gone (retention): a plain miss
    };
    let (config, layers) =
        artifact::parse_entry(&bytes, STEP_ARTIFACT, STEP_CONFIG).map_err(Miss::Bad)?;
    let store = engine.store();
    // The config and the layer at once: one round trip after the manifest.
    let layer_blob = layers.first().cloned();
    futures_util::future::try_join(
        cache.client.fetch_blob_into(&reference, &config, store),
        async {
            match &layer_blob {
                Some(blob) => cache
                    .client
                    .fetch_blob_into(&reference, blob, store)
                    .await
                    .map(Some),
                None => Ok(None),
            }
        },
    )
    .await?;
    let (store, key, layer_blob) = (store.clone(), key.clone(), layer_blob);
    tokio::task::spawn_blocking(move || adopt(&store, &key, &config, layer_blob.as_ref(), exec))
        .await
        .map_err(|_| Miss::Bad("its check panicked".to_owned()))?
}

/// Check a fetched entry against the step and keep it as a local step record.
fn adopt(
    store: &Store,
    key: &Digest,
    config: &BlobRef,
    layer: Option<&BlobRef>,
    exec: bool,
) -> Result<StepRecord, Miss> {
    let bytes = store
        .read_blob(&config.digest)
        .map_err(|e| Miss::Bad(e.to_string()))?;
    let step: StepConfig =
        serde_json::from_slice(&bytes).map_err(|e| Miss::Bad(format!("its config: {e}")))?;
    adopt_record(store, key, &step, layer, None, exec)
}

/// Check a step's record (its layer in the store already) and keep it as a local step
/// record: the key must be the step's, the layer the one named, its diff_id the one
/// recorded (`diff_id`: as computed already, else computed here).
pub(super) fn adopt_record(
    store: &Store,
    key: &Digest,
    step: &StepConfig,
    layer: Option<&BlobRef>,
    diff_id: Option<&Digest>,
    exec: bool,
) -> Result<StepRecord, Miss> {
    if step.version != 1 {
        return Err(Miss::Unusable);
    }
    if step.key != *key {
        return Err(Miss::Bad(format!("it is the entry of step {}", step.key)));
    }
    match (&step.layer, layer) {
        (None, None) => {}
        (Some(recorded), Some(blob)) if recorded.blob() == *blob => {
            // The diff_id keys every later step and goes into the image config: it must be
            // the layer's, whoever wrote the entry.
            let actual = match diff_id {
                Some(known) => known.clone(),
                None => layer_diff_id(store, blob).map_err(Miss::Bad)?,
            };
            if actual != recorded.diff_id {
                return Err(Miss::Bad(format!(
                    "its layer's diff_id is {actual}, the entry says {}",
                    recorded.diff_id
                )));
            }
        }
        _ => {
            return Err(Miss::Bad(
                "its config and manifest name different layers".to_owned(),
            ));
        }
    }
    if exec {
        if step.stdout_omitted {
            return Err(Miss::Unusable);
        }
        let stdout = step.stdout_bytes().map_err(Miss::Bad)?.unwrap_or_default();
        store
            .put_step_stdout_bytes(key, &stdout)
            .map_err(|e| Miss::Bad(e.to_string()))?;
    }
    let record = StepRecord::new(step.layer.clone());
    // The record goes last: it names a blob already in the store.
    store
        .put_step_record(key, &record)
        .map_err(|e| Miss::Bad(e.to_string()))?;
    Ok(record)
}

/// The diff_id of a layer in the store (it decompresses the whole layer).
pub(super) fn layer_diff_id(store: &Store, blob: &BlobRef) -> Result<Digest, String> {
    crate::layer::diff_id_of(&store.blob_path(&blob.digest), &blob.media_type)
        .map_err(|e| format!("its layer does not read: {e}"))
}

/// Export the steps of a finished build that the cache repository lacks; layers the
/// registry has in `mount_from` (the image just pushed) are mounted, not uploaded. Never
/// fails: problems are warnings.
pub(super) async fn export_steps(
    engine: &Engine,
    cache: &RegistryCache,
    steps: &[ExportStep],
    mount_from: Option<&ImageRef>,
) -> ExportSummary {
    let mut summary = ExportSummary::default();
    let Some(tags) = cache.tags(engine).await else {
        return summary;
    };
    let mut seen = std::collections::HashSet::new();
    let missing: Vec<&ExportStep> = steps
        .iter()
        .filter(|s| seen.insert(s.key.clone()))
        .filter(|s| {
            let present = tags.contains(&artifact::step_tag(&s.key));
            summary.present += usize::from(present);
            !present
        })
        .collect();
    let results: Vec<Result<Option<u64>, String>> = futures_util::stream::iter(missing)
        .map(|step| async move {
            if cache.is_off() {
                return Ok(None);
            }
            export_one(engine, cache, step, mount_from).await
        })
        .buffer_unordered(PARALLEL_EXPORTS)
        .collect()
        .await;
    for result in results {
        match result {
            Ok(Some(bytes)) => {
                summary.exported += 1;
                summary.bytes_uploaded += bytes;
            }
            Ok(None) => summary.present += 1,
            Err(e) => {
                cache.give_up(engine, "exporting", &e);
            }
        }
    }
    // The chains go after the steps: their layers are in the repository by then.
    if !cache.is_off() {
        match super::chains::export(engine, cache, &tags, steps, mount_from).await {
            Ok(n) => summary.chains = n,
            Err(e) => cache.give_up(engine, "exporting a chain", &e),
        }
    }
    summary
}

/// What an export did.
#[derive(Debug, Clone, Default)]
pub(super) struct ExportSummary {
    /// Entries pushed.
    pub exported: usize,
    /// Entries the repository had.
    pub present: usize,
    /// Bytes uploaded (mounted and present blobs cost none).
    pub bytes_uploaded: u64,
    /// Stage chains pushed.
    pub chains: usize,
}

/// Push one step's entry; the bytes uploaded, or `None` when the tag was there already
/// (another machine exported it meanwhile).
async fn export_one(
    engine: &Engine,
    cache: &RegistryCache,
    step: &ExportStep,
    mount_from: Option<&ImageRef>,
) -> Result<Option<u64>, String> {
    let store = engine.store().clone();
    let (key, layer, exec) = (step.key.clone(), step.layer.clone(), step.exec);
    let image: Option<crate::image::StoredImage> = tokio::task::spawn_blocking(move || {
        let stdout = if exec {
            match std::fs::read(store.step_stdout_path(&key)) {
                Ok(bytes) => Some(bytes),
                // Its stdout was not kept (evicted): an entry without it would be no use.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        } else {
            None
        };
        let config = StepConfig::new(key, layer.clone(), stdout.as_deref());
        artifact::entry(
            &store,
            STEP_ARTIFACT,
            STEP_CONFIG,
            &config,
            layer.map(|l| l.blob()),
        )
        .map(Some)
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| "preparing an entry panicked".to_owned())??;
    let Some(image) = image else {
        return Ok(None);
    };
    let target = cache.tagged(&artifact::step_tag(&step.key));
    match cache
        .client
        .push_image_mounting(
            &target,
            &image,
            engine.store(),
            TagPolicy::CreateOnly,
            mount_from,
        )
        .await
    {
        Ok(report) if report.unchanged => Ok(None),
        Ok(report) => Ok(Some(report.bytes_uploaded)),
        // Another machine exported a different result for the same key (a step that is
        // not reproducible): theirs stays, which is as good.
        Err(RegistryError::TagConflict { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::media_types;

    /// A gzip layer of one file in `store`, and its diff_id.
    fn layer(store: &Store) -> (BlobRef, Digest) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, &b"hi"[..]).unwrap();
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let gz = gz.finish().unwrap();
        let digest = store.put_bytes(&gz).unwrap();
        let blob = BlobRef {
            digest,
            size: gz.len() as u64,
            media_type: media_types::OCI_LAYER_GZIP.to_owned(),
        };
        (blob, Digest::of(&raw))
    }

    #[test]
    fn an_entry_is_adopted_only_with_its_key_and_its_layers_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (blob, diff_id) = layer(&store);
        let key = Digest::of(b"key");
        let record = |diff_id: Digest| {
            StepConfig::new(
                key.clone(),
                Some(CachedLayer {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    media_type: blob.media_type.clone(),
                    diff_id,
                }),
                Some(b"out"),
            )
        };
        // A lying diff_id (it would key every later step and enter the image config).
        let lying = record(Digest::of(b"not the layer"));
        assert!(matches!(
            adopt_record(&store, &key, &lying, Some(&blob), None, true),
            Err(Miss::Bad(why)) if why.contains("diff_id")
        ));
        assert!(store.step_record(&key).is_none(), "nothing kept");
        // Another step's entry under this key's tag.
        let good = record(diff_id.clone());
        assert!(matches!(
            adopt_record(&store, &Digest::of(b"other"), &good, Some(&blob), None, true),
            Err(Miss::Bad(why)) if why.contains("entry of step")
        ));
        // The real one: kept with its stdout.
        let kept = adopt_record(&store, &key, &good, Some(&blob), None, true)
            .unwrap_or_else(|_| panic!("adopted"));
        assert_eq!(kept.layer.unwrap().diff_id, diff_id);
        assert_eq!(std::fs::read(store.step_stdout_path(&key)).unwrap(), b"out");
        assert!(store.step_record(&key).is_some());
    }
}
