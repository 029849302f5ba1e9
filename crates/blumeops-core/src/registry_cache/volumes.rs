//! Cache volume snapshots: a volume's directory as one `tar+zstd` blob, tagged
//! `volume-<name>-<UTC time>-<content>`. A build that finds a volume missing or empty locally
//! takes the newest snapshot before the first step that mounts it; after a build whose
//! commands used a volume, a snapshot is exported unless the content is what the newest
//! one holds. Volume contents never enter a step key.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::RegistryCache;
use super::artifact::{self, VOLUME_ARTIFACT, VOLUME_CONFIG, VolumeConfig};
use crate::image::{BlobRef, media_types};
use crate::pipeline::{Engine, Event};
use crate::reference::{Digest, DigestWriter};
use crate::registry::{Error as RegistryError, TagPolicy};
use crate::store::Store;

/// zstd level of snapshots: fast; caches are mostly compressed or small files.
const ZSTD_LEVEL: i32 = 3;

/// What the build knows about each volume it touched: the content it imported (if any).
#[derive(Debug, Default)]
pub(crate) struct VolumeUse {
    /// Volumes a command that ran had mounted, with the content digest imported for them.
    used: HashMap<String, Option<Digest>>,
}

impl VolumeUse {
    /// A command that ran had this volume mounted.
    pub(crate) fn used(&mut self, name: &str) {
        self.used.entry(name.to_owned()).or_default();
    }

    fn imported(&mut self, name: &str, content: Digest) {
        self.used.insert(name.to_owned(), Some(content));
    }
}

/// The directory of the local volume `name`.
fn volume_dir(store: &Store, name: &str) -> PathBuf {
    store.root().join("volumes").join(name)
}

fn is_empty_or_missing(dir: &Path) -> bool {
    fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
}

/// Before a command that mounts `name` runs: when the local volume is missing or empty,
/// fill it from the newest snapshot in the cache (at most once per build and volume).
pub(crate) async fn import_volume(engine: &Engine, cache: &RegistryCache, name: &str) {
    // Held through the import: a second stage mounting the volume waits for it.
    let mut uses = cache.volumes.lock().await;
    if uses.used.contains_key(name) {
        return;
    }
    uses.used(name);
    let store = engine.store().clone();
    let dir = volume_dir(&store, name);
    if !is_empty_or_missing(&dir) {
        return;
    }
    let Some(tags) = cache.tags(engine).await else {
        return;
    };
    let Some(tag) = tags
        .iter()
        .filter_map(|t| Some((artifact::volume_tag_time(t, name)?, t)))
        .max()
        .map(|(_, t)| t.clone())
    else {
        return;
    };
    match fetch_volume(engine, cache, name, &tag, &dir).await {
        Ok((content, bytes)) => {
            uses.imported(name, content);
            engine.emit(Event::Note {
                message: format!(
                    "registry cache {}: cache volume {name} filled from {tag} ({} compressed)",
                    cache.name(),
                    crate::store::human_size(bytes)
                ),
            });
        }
        Err(VolumeMiss::Registry(e)) => cache.give_up(engine, &format!("reading {tag}"), &e),
        Err(VolumeMiss::Bad(why)) => engine.emit(Event::Warning {
            message: format!(
                "registry cache {}: snapshot {tag} ignored, volume {name} starts empty: {why}",
                cache.name()
            ),
        }),
    }
}

enum VolumeMiss {
    Registry(RegistryError),
    Bad(String),
}

async fn fetch_volume(
    engine: &Engine,
    cache: &RegistryCache,
    name: &str,
    tag: &str,
    dir: &Path,
) -> Result<(Digest, u64), VolumeMiss> {
    let reference = cache.tagged(tag);
    let registry = VolumeMiss::Registry;
    let Some((bytes, _, _)) = cache
        .client
        .fetch_manifest_bytes(&reference)
        .await
        .map_err(registry)?
    else {
        return Err(VolumeMiss::Bad("it is gone".to_owned()));
    };
    let (config, layers) =
        artifact::parse_entry(&bytes, VOLUME_ARTIFACT, VOLUME_CONFIG).map_err(VolumeMiss::Bad)?;
    let [layer] = layers.as_slice() else {
        return Err(VolumeMiss::Bad("it has no data blob".to_owned()));
    };
    if layer.size > cache.volume_max_bytes {
        return Err(VolumeMiss::Bad(format!(
            "it is {} compressed, over the cap of {}",
            crate::store::human_size(layer.size),
            crate::store::human_size(cache.volume_max_bytes)
        )));
    }
    let store = engine.store();
    let bad = |e: RegistryError| {
        if super::damaged(&e) {
            VolumeMiss::Bad(e.to_string())
        } else {
            VolumeMiss::Registry(e)
        }
    };
    futures_util::future::try_join(
        cache.client.fetch_blob_into(&reference, &config, store),
        cache.client.fetch_blob_into(&reference, layer, store),
    )
    .await
    .map_err(bad)?;
    let (store, name, dir, layer) = (
        store.clone(),
        name.to_owned(),
        dir.to_owned(),
        layer.clone(),
    );
    let max = cache.volume_max_bytes;
    tokio::task::spawn_blocking(move || unpack(&store, &name, &config, &layer, &dir, max))
        .await
        .map_err(|_| VolumeMiss::Bad("unpacking it panicked".to_owned()))?
}

/// Unpack a snapshot beside the volume and rename it into place, so a failure leaves the
/// volume as it was (empty), never half filled.
fn unpack(
    store: &Store,
    name: &str,
    config: &BlobRef,
    layer: &BlobRef,
    dir: &Path,
    max_bytes: u64,
) -> Result<(Digest, u64), VolumeMiss> {
    let bad = |e: &dyn std::fmt::Display| VolumeMiss::Bad(e.to_string());
    let volume: VolumeConfig =
        serde_json::from_slice(&store.read_blob(&config.digest).map_err(|e| bad(&e))?)
            .map_err(|e| VolumeMiss::Bad(format!("its config: {e}")))?;
    if volume.name != name {
        return Err(VolumeMiss::Bad(format!(
            "it is a snapshot of volume {}",
            volume.name
        )));
    }
    let tmp = store.tmp_name("volume");
    fs::create_dir_all(&tmp).map_err(|e| bad(&e))?;
    let mut opts = crate::layer::UnpackOptions::for_current_user().with_max_bytes(max_bytes);
    opts.allow_devices = false;
    let result = crate::layer::unpack_layer(
        &store.blob_path(&layer.digest),
        &layer.media_type,
        &tmp,
        &opts,
    );
    let stats = match result {
        Ok(stats) => stats,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(bad(&e));
        }
    };
    if stats.diff_id != volume.content {
        let _ = fs::remove_dir_all(&tmp);
        return Err(VolumeMiss::Bad(format!(
            "its content is {}, the entry says {}",
            stats.diff_id, volume.content
        )));
    }
    // Only an empty (or missing) volume is replaced.
    let _ = fs::remove_dir(dir);
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|e| bad(&e))?;
    }
    if let Err(e) = fs::rename(&tmp, dir) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(bad(&e));
    }
    Ok((volume.content, layer.size))
}

/// After a build: export a snapshot of every volume a command used, unless it holds what
/// was imported or what the newest snapshot holds, or is over the size cap. Never fails.
pub(crate) async fn export_volumes(engine: &Engine, cache: &RegistryCache) -> (usize, u64) {
    let used: Vec<(String, Option<Digest>)> = cache
        .volumes
        .lock()
        .await
        .used
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut exported = (0, 0);
    for (name, imported) in used {
        if cache.is_off() {
            break;
        }
        let Some(tags) = cache.tags(engine).await else {
            break;
        };
        let store = engine.store().clone();
        let dir = volume_dir(&store, &name);
        if is_empty_or_missing(&dir) {
            continue;
        }
        let max = cache.volume_max_bytes;
        let packed = {
            let (store, dir) = (store.clone(), dir.clone());
            tokio::task::spawn_blocking(move || pack(&store, &dir, max))
                .await
                .map_err(|_| "packing panicked".to_owned())
                .and_then(|r| r)
        };
        let (content, blob) = match packed {
            Ok(Packed::Blob(content, blob)) => (content, blob),
            Ok(Packed::TooLarge(size)) => {
                engine.emit(Event::Warning {
                    message: format!(
                        "registry cache {}: cache volume {name} holds {}, over \
                         --cache-volume-max-bytes ({}): not exported",
                        cache.name(),
                        crate::store::human_size(size),
                        crate::store::human_size(max)
                    ),
                });
                continue;
            }
            Err(e) => {
                engine.emit(Event::Warning {
                    message: format!("cache volume {name}: not exported: {e}"),
                });
                continue;
            }
        };
        let newest = tags
            .iter()
            .filter_map(|t| Some((artifact::volume_tag_time(t, &name)?, t)))
            .max()
            .map(|(_, t)| t.clone());
        let unchanged = imported.as_ref() == Some(&content)
            || newest
                .as_deref()
                .is_some_and(|t| t.ends_with(&format!("-{}", &content.hex()[..12])));
        if unchanged {
            continue;
        }
        let tag = artifact::volume_tag(&name, artifact::now_secs(), &content);
        let config = VolumeConfig::new(&name, content);
        let entry = {
            let (store, blob) = (store.clone(), blob.clone());
            tokio::task::spawn_blocking(move || {
                artifact::entry(&store, VOLUME_ARTIFACT, VOLUME_CONFIG, &config, Some(blob))
            })
            .await
        };
        let Ok(Ok(entry)) = entry else {
            continue;
        };
        match cache
            .client
            .push_image_mounting(
                &cache.tagged(&tag),
                &entry,
                &store,
                TagPolicy::CreateOnly,
                None,
            )
            .await
        {
            Ok(report) => {
                exported.0 += 1;
                exported.1 += report.bytes_uploaded;
            }
            Err(RegistryError::TagConflict { .. }) => {}
            Err(e) => cache.give_up(engine, &format!("exporting volume {name}"), &e),
        }
    }
    exported
}

enum Packed {
    /// The content digest (of the tar) and the compressed blob in the store.
    Blob(Digest, BlobRef),
    /// The volume's files add up to this many bytes, over the cap.
    TooLarge(u64),
}

/// The volume's directory as a tar (owners, modes, mtimes kept; entries sorted) in zstd,
/// written into the store.
fn pack(store: &Store, dir: &Path, max: u64) -> Result<Packed, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut entries = Vec::new();
    let mut total = 0u64;
    walk(dir, Path::new(""), &mut entries, &mut total).map_err(|e| err(&e))?;
    if total > max {
        return Ok(Packed::TooLarge(total));
    }
    let writer = store.blob_writer().map_err(|e| err(&e))?;
    let mut encoder = zstd::stream::write::Encoder::new(writer, ZSTD_LEVEL).map_err(|e| err(&e))?;
    let mut content = DigestWriter::new();
    {
        let mut tee = Tee {
            inner: &mut encoder,
            hash: &mut content,
        };
        let mut builder = tar::Builder::new(&mut tee);
        builder.mode(tar::HeaderMode::Complete);
        builder.follow_symlinks(false);
        for rel in &entries {
            let path = dir.join(rel);
            builder
                .append_path_with_name(&path, rel)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        builder.finish().map_err(|e| err(&e))?;
    }
    let writer = encoder.finish().map_err(|e| err(&e))?;
    let (digest, size) = writer.commit(None).map_err(|e| err(&e))?;
    Ok(Packed::Blob(
        content.finish(),
        BlobRef {
            digest,
            size,
            media_type: media_types::OCI_LAYER_ZSTD.to_owned(),
        },
    ))
}

/// Every entry under `dir` (relative paths, sorted, parents first); regular files' sizes
/// summed into `total`.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>, total: &mut u64) -> std::io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let meta = fs::symlink_metadata(root.join(&child))?;
        out.push(child.clone());
        if meta.is_dir() {
            walk(root, &child, out, total)?;
        } else if meta.is_file() {
            *total += meta.size();
        }
    }
    Ok(())
}

/// Writes through to `inner` and hashes what passes.
struct Tee<'a, W> {
    inner: &'a mut W,
    hash: &'a mut DigestWriter,
}

impl<W: std::io::Write> std::io::Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_deterministic_and_unpacks_to_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let vol = dir.path().join("vol");
        fs::create_dir_all(vol.join("a/b")).unwrap();
        fs::write(vol.join("a/b/f"), b"hello").unwrap();
        fs::write(vol.join("top"), b"x").unwrap();
        std::os::unix::fs::symlink("a/b/f", vol.join("link")).unwrap();
        let Packed::Blob(c1, b1) = pack(&store, &vol, 1 << 20).unwrap() else {
            panic!("under the cap")
        };
        let Packed::Blob(c2, b2) = pack(&store, &vol, 1 << 20).unwrap() else {
            panic!("under the cap")
        };
        assert_eq!((c1.clone(), b1.digest.clone()), (c2, b2.digest));
        let config = store
            .put_bytes(&serde_json::to_vec(&VolumeConfig::new("v", c1.clone())).unwrap())
            .unwrap();
        let config = BlobRef {
            digest: config,
            size: 0,
            media_type: VOLUME_CONFIG.to_owned(),
        };
        let dest = dir.path().join("volumes/v");
        let (content, _) =
            unpack(&store, "v", &config, &b1, &dest, 1 << 20).unwrap_or_else(|_| panic!("unpacks"));
        assert_eq!(content, c1);
        assert_eq!(fs::read(dest.join("a/b/f")).unwrap(), b"hello");
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new("a/b/f")
        );
        // Another volume's snapshot is refused and leaves nothing behind.
        let other = dir.path().join("volumes/w");
        assert!(unpack(&store, "w", &config, &b1, &other, 1 << 20).is_err());
        assert!(!other.exists());
    }

    #[test]
    fn a_volume_over_the_cap_is_not_packed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let vol = dir.path().join("vol");
        fs::create_dir_all(&vol).unwrap();
        fs::write(vol.join("big"), vec![0u8; 4096]).unwrap();
        assert!(matches!(
            pack(&store, &vol, 1000).unwrap(),
            Packed::TooLarge(4096)
        ));
    }
}
