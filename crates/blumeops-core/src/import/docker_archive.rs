//! docker archive -> OCI image in the store.
//!
//! A docker archive is a tar file with a `manifest.json` (a list of images, each with
//! `Config`, `RepoTags` and `Layers`: paths of entries in the same tar), the image configs
//! and the layers. Layouts differ by writer: `docker save` before v25 and Nix write
//! `<id>/layer.tar` (shared layers as symlinks) and `<hex>.json`; skopeo writes `<hex>.tar`
//! plus legacy symlinks; `docker save` since v25 writes `blobs/sha256/<hex>`. Layers are
//! usually uncompressed tars, sometimes gzip. `manifest.json` may come after the layers, and
//! the whole archive may itself be gzip- or zstd-compressed (Nix's `buildImage` output).
//!
//! The import reads the archive file in two passes, both bounded in memory: the first walks
//! the tar headers (seeking over the data) to index every entry and read `manifest.json`;
//! the second reads the chosen image's config and then each layer, in manifest order,
//! straight from its offset in the file. A compressed archive is first decompressed into a
//! temporary file in the store (seeking needs a plain file).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::Deserialize;

use super::{Error, ImportOptions};
use crate::image::{
    BlobRef, Descriptor, ImageConfig, ImageManifest, ManifestBlob, StoredImage, media_types,
};
use crate::layer::Compression;
use crate::limits::{self, ExpansionGuard, LimitExceeded};
use crate::reference::{Digest, DigestWriter};
use crate::store::Store;

/// Largest `manifest.json` or image config read (they are held in memory):
/// [`limits::MAX_CONFIG_BYTES`].
pub const MAX_METADATA_BYTES: u64 = limits::MAX_CONFIG_BYTES;

/// Symlinks followed at most when resolving an entry.
const MAX_LINK_HOPS: usize = 16;

/// Read buffer for layer data.
const BUFFER: usize = 256 * 1024;

const MANIFEST_ENTRY: &str = "manifest.json";

/// Import the only image of the docker archive at `path` into `store` as an OCI image
/// (uncompressed layers compressed with `compression`). Blocking: call it from a blocking
/// thread.
pub fn import_docker_archive(
    path: &Path,
    store: &Store,
    compression: Compression,
) -> Result<StoredImage, Error> {
    import_docker_archive_with(
        path,
        store,
        &ImportOptions::new().with_compression(compression),
    )
}

/// Like [`import_docker_archive`], with options (e.g. which image of a multi-image
/// archive).
pub fn import_docker_archive_with(
    path: &Path,
    store: &Store,
    options: &ImportOptions,
) -> Result<StoredImage, Error> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut file, &mut magic).map_err(io_err("read", path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("read", path))?;
    match detect(&magic[..n]) {
        Format::Gzip => {
            let tmp = decompress_to_temp(
                path,
                store,
                flate2::read::MultiGzDecoder::new(BufReader::new(file)),
            )?;
            Importer::new(path, tmp.as_file(), store, options)?.run()
        }
        Format::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(file).map_err(|source| Error::ReadArchive {
                    path: path.to_owned(),
                    source,
                })?;
            let tmp = decompress_to_temp(path, store, decoder)?;
            Importer::new(path, tmp.as_file(), store, options)?.run()
        }
        Format::Unsupported(format) => Err(Error::UnsupportedArchiveCompression {
            path: path.to_owned(),
            format,
        }),
        Format::Tar | Format::Unknown => Importer::new(path, &file, store, options)?.run(),
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Read until `buf` is full or the input ends; the number of bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What a stream of bytes looks like, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Gzip,
    Zstd,
    Tar,
    Unsupported(&'static str),
    Unknown,
}

fn detect(head: &[u8]) -> Format {
    if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if head.starts_with(b"BZh") {
        Format::Unsupported("bzip2")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Format::Unsupported("xz")
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Format::Tar
    } else if head.len() >= 512 && head[..512].iter().all(|b| *b == 0) {
        // An empty tar: just the end-of-archive blocks.
        Format::Tar
    } else {
        Format::Unknown
    }
}

fn decompress_to_temp(
    path: &Path,
    store: &Store,
    decoder: impl Read,
) -> Result<tempfile::NamedTempFile, Error> {
    // The same bomb guard as for layers, against the archive's compressed size.
    let compressed = std::fs::metadata(path).map_or(u64::MAX, |m| m.len());
    let mut decoder = ExpansionGuard::new(
        decoder,
        limits::configured_expansion_bound(compressed),
        limits::archive_too_large,
    );
    let dir = store.tmp_dir();
    let mut tmp = tempfile::Builder::new()
        .prefix("archive-")
        .tempfile_in(&dir)
        .map_err(io_err("create temporary file in", &dir))?;
    io::copy(&mut decoder, &mut tmp).map_err(|source| {
        if let Some(limit) = LimitExceeded::find(&source) {
            return Error::Limit {
                path: path.to_owned(),
                entry: "(the whole archive)".to_owned(),
                source: limit.clone(),
            };
        }
        // Tell a corrupt archive from a full disk.
        if source.kind() == io::ErrorKind::InvalidData
            || source.kind() == io::ErrorKind::UnexpectedEof
        {
            Error::ReadArchive {
                path: path.to_owned(),
                source,
            }
        } else {
            Error::Io {
                action: "decompress into a temporary file",
                path: path.to_owned(),
                source,
            }
        }
    })?;
    tmp.flush()
        .map_err(io_err("write temporary file for", path))?;
    Ok(tmp)
}

/// One image of `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    repo_tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    layers: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// What the first pass learnt about an entry.
#[derive(Debug, Clone)]
enum Indexed {
    /// Data at `offset` in the file, `size` bytes long.
    File { offset: u64, size: u64 },
    /// A symbolic link (target relative to the entry's directory) or a hard link (target
    /// relative to the archive root), normalised.
    Link { target: Option<String> },
    /// A directory, device, sparse file...
    Other(&'static str),
}

/// Normalise a path inside the archive: no leading `/` or `./`, no `.` components, `..`
/// applied. `None` when it leaves the archive.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The digest a content-addressed entry name (`blobs/sha256/HEX`) promises.
fn name_digest(entry: &str) -> Option<Digest> {
    let hex = entry.strip_prefix("blobs/sha256/")?;
    format!("sha256:{hex}").parse().ok()
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<'a, R> {
    inner: R,
    hasher: &'a mut DigestWriter,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes what it is given (the diff_id) and passes it on.
struct TeeDiff<'a, W> {
    diff: &'a mut DigestWriter,
    inner: W,
}

impl<W: Write> Write for TeeDiff<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.diff.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Importer<'a> {
    path: &'a Path,
    file: &'a File,
    store: &'a Store,
    options: &'a ImportOptions,
    index: HashMap<String, Indexed>,
    manifest: Vec<u8>,
}

impl<'a> Importer<'a> {
    /// The first pass: index the entries and read `manifest.json`.
    fn new(
        path: &'a Path,
        file: &'a File,
        store: &'a Store,
        options: &'a ImportOptions,
    ) -> Result<Self, Error> {
        let read_archive = |source| Error::ReadArchive {
            path: path.to_owned(),
            source,
        };
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        reader.seek(SeekFrom::Start(0)).map_err(read_archive)?;
        let mut archive = tar::Archive::new(reader);
        let mut index = HashMap::new();
        let mut manifest = None;
        for entry in archive.entries_with_seek().map_err(read_archive)? {
            let mut entry = entry.map_err(read_archive)?;
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = normalize(&raw_name) else {
                // A path outside the archive root can never be named by manifest.json.
                continue;
            };
            let kind = entry.header().entry_type();
            let indexed = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if name == MANIFEST_ENTRY {
                        manifest = Some(read_small(path, &name, entry.size(), &mut entry)?);
                    }
                    Indexed::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let hard = kind == tar::EntryType::Link;
                    let link = entry
                        .link_name_bytes()
                        .map(|l| String::from_utf8_lossy(&l).into_owned());
                    let target = link.and_then(|l| {
                        if hard || l.starts_with('/') {
                            normalize(&l)
                        } else {
                            let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                            normalize(&format!("{dir}/{l}"))
                        }
                    });
                    Indexed::Link { target }
                }
                tar::EntryType::Directory => Indexed::Other("a directory"),
                tar::EntryType::GNUSparse => Indexed::Other("a sparse file"),
                _ => Indexed::Other("not a regular file"),
            };
            index.insert(name, indexed);
        }
        let manifest = manifest.ok_or_else(|| Error::MissingManifest {
            path: path.to_owned(),
        })?;
        Ok(Self {
            path,
            file,
            store,
            options,
            index,
            manifest,
        })
    }

    /// The second pass: config, then layers, then the manifest.
    fn run(self) -> Result<StoredImage, Error> {
        let images: Vec<ArchiveImage> =
            serde_json::from_slice(&self.manifest).map_err(|source| Error::BadJson {
                path: self.path.to_owned(),
                entry: MANIFEST_ENTRY.to_owned(),
                source,
            })?;
        let index = match (self.options.image_index, images.len()) {
            (_, 0) => {
                return Err(Error::NoImages {
                    path: self.path.to_owned(),
                });
            }
            (Some(i), count) if i >= count => {
                return Err(Error::NoSuchImage {
                    path: self.path.to_owned(),
                    index: i,
                    count,
                });
            }
            (Some(i), _) => i,
            (None, 1) => 0,
            (None, _) => {
                return Err(Error::MultipleImages {
                    path: self.path.to_owned(),
                    images: images
                        .iter()
                        .enumerate()
                        .map(|(i, img)| {
                            let tags = if img.repo_tags.is_empty() {
                                "untagged".to_owned()
                            } else {
                                img.repo_tags.join(" ")
                            };
                            format!("{i}: {tags}")
                        })
                        .collect(),
                });
            }
        };
        let image = &images[index];
        if image.layers.len() > limits::MAX_LAYERS {
            return Err(Error::Limit {
                path: self.path.to_owned(),
                entry: MANIFEST_ENTRY.to_owned(),
                source: LimitExceeded::new(
                    format!(
                        "the number of layers of image {index} ({})",
                        image.layers.len()
                    ),
                    limits::MAX_LAYERS as u64,
                    "layers",
                ),
            });
        }

        // The config, stored exactly as it is (its digest is the image ID).
        let config_name = self.entry_name(&image.config)?;
        let (offset, size) = self.resolve(&config_name)?;
        let config_bytes = read_small(
            self.path,
            &config_name,
            size,
            &mut self.section(&config_name, offset)?.take(size),
        )?;
        let config_digest = Digest::of(&config_bytes);
        self.check_name_digest(&config_name, &config_digest)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| Error::BadJson {
                path: self.path.to_owned(),
                entry: config_name.clone(),
                source,
            })?;
        if config.rootfs.diff_ids.len() != image.layers.len() {
            return Err(Error::LayerCount {
                path: self.path.to_owned(),
                index,
                config: config_name,
                layers: image.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        self.store.put_bytes(&config_bytes)?;
        let config_ref = BlobRef {
            digest: config_digest,
            size: config_bytes.len() as u64,
            media_type: media_types::OCI_CONFIG.to_owned(),
        };

        // Layers, in order; an entry named twice is read once.
        let mut done: HashMap<String, (Digest, BlobRef)> = HashMap::new();
        let mut layers = Vec::with_capacity(image.layers.len());
        for (layer, expected) in image.layers.iter().zip(&config.rootfs.diff_ids) {
            let name = self.entry_name(layer)?;
            let (offset, size) = self.resolve(&name)?;
            let (diff_id, blob) = match done.get(&name) {
                Some(found) => found.clone(),
                None => {
                    let found = self.import_layer(&name, offset, size, expected)?;
                    done.insert(name.clone(), found.clone());
                    found
                }
            };
            if diff_id != *expected {
                return Err(Error::DiffIdMismatch {
                    path: self.path.to_owned(),
                    entry: name,
                    expected: expected.clone(),
                    actual: diff_id,
                });
            }
            layers.push(blob);
        }

        let manifest = ImageManifest {
            schema_version: 2,
            media_type: media_types::OCI_MANIFEST.to_owned(),
            config: Descriptor::from(&config_ref),
            layers: layers.iter().map(Descriptor::from).collect(),
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest).expect("an image manifest always serializes");
        self.store.put_bytes(&bytes)?;
        Ok(StoredImage {
            manifest: ManifestBlob::new(bytes, media_types::OCI_MANIFEST),
            config: config_ref,
            layers,
        })
    }

    /// A path from `manifest.json`, normalised.
    fn entry_name(&self, raw: &str) -> Result<String, Error> {
        normalize(raw)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::UnusableEntry {
                path: self.path.to_owned(),
                entry: raw.to_owned(),
                reason: "the path leaves the archive",
            })
    }

    /// Follow links to the entry's data: (offset, size).
    fn resolve(&self, name: &str) -> Result<(u64, u64), Error> {
        let unusable = |reason| Error::UnusableEntry {
            path: self.path.to_owned(),
            entry: name.to_owned(),
            reason,
        };
        let mut current = name.to_owned();
        for _ in 0..=MAX_LINK_HOPS {
            match self.index.get(&current) {
                None if current == name => {
                    return Err(Error::MissingEntry {
                        path: self.path.to_owned(),
                        entry: name.to_owned(),
                    });
                }
                None => return Err(unusable("it is a link to a missing entry")),
                Some(Indexed::File { offset, size }) => return Ok((*offset, *size)),
                Some(Indexed::Link { target: None, .. }) => {
                    return Err(unusable("it is a link that leaves the archive"));
                }
                Some(Indexed::Link {
                    target: Some(target),
                }) => current = target.clone(),
                Some(Indexed::Other(what)) => return Err(unusable(what)),
            }
        }
        Err(unusable("it is a chain of too many links"))
    }

    /// A reader at the start of an entry's data.
    fn section(&self, name: &str, offset: u64) -> Result<BufReader<&'a File>, Error> {
        let mut file = self.file;
        file.seek(SeekFrom::Start(offset))
            .map_err(|source| Error::ReadEntry {
                path: self.path.to_owned(),
                entry: name.to_owned(),
                source,
            })?;
        Ok(BufReader::with_capacity(BUFFER, file))
    }

    fn check_name_digest(&self, name: &str, actual: &Digest) -> Result<(), Error> {
        match name_digest(name) {
            Some(expected) if expected != *actual => Err(Error::DigestMismatch {
                path: self.path.to_owned(),
                entry: name.to_owned(),
                expected,
                actual: actual.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Store one layer: (its diff_id, its blob). Nothing is stored when its diff_id is not
    /// `expected`.
    fn import_layer(
        &self,
        name: &str,
        offset: u64,
        size: u64,
        expected: &Digest,
    ) -> Result<(Digest, BlobRef), Error> {
        let read_err = |source| Error::ReadEntry {
            path: self.path.to_owned(),
            entry: name.to_owned(),
            source,
        };
        let write_err = |source| Error::Io {
            action: "write a layer into the store from",
            path: self.path.to_owned(),
            source,
        };
        let mut data = self.section(name, offset)?.take(size);
        let mut head = vec![0u8; 512];
        let n = read_up_to(&mut data, &mut head).map_err(read_err)?;
        head.truncate(n);
        let format = detect(&head);
        let mut raw_hash = DigestWriter::new();
        let mut raw = HashingReader {
            inner: io::Cursor::new(head).chain(data),
            hasher: &mut raw_hash,
        };
        let mut diff = DigestWriter::new();
        // Bomb guard, the same for every codec: what decompression produces is bounded.
        let bound = limits::configured_expansion_bound(size);
        let exceeded = |limit| {
            LimitExceeded::new("the layer's uncompressed size", limit, "bytes")
                .with_env(limits::MAX_LAYER_RATIO_ENV)
        };
        let limit_err = |source| Error::Limit {
            path: self.path.to_owned(),
            entry: name.to_owned(),
            source,
        };
        let read_err = |e: io::Error| match LimitExceeded::find(&e) {
            Some(l) => limit_err(l.clone()),
            None => read_err(e),
        };
        let blob = self.store.blob_writer()?;
        let (blob, media_type) = match format {
            Format::Gzip => {
                // Kept as it is; decompressed on the side only to check the diff_id.
                let mut blob = blob;
                let mut check = flate2::write::MultiGzDecoder::new(&mut diff);
                let mut buf = vec![0u8; BUFFER];
                loop {
                    let n = match raw.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(read_err(e)),
                    };
                    blob.write_all(&buf[..n]).map_err(write_err)?;
                    check.write_all(&buf[..n]).map_err(read_err)?;
                    if check.get_ref().len() > bound {
                        return Err(limit_err(exceeded(bound)));
                    }
                }
                check.finish().map_err(read_err)?;
                (blob, media_types::OCI_LAYER_GZIP)
            }
            Format::Tar => {
                let mut enc = self.options.compression.encoder(blob).map_err(write_err)?;
                io::copy(&mut raw, &mut enc).map_err(|e| classify(e, read_err, write_err))?;
                (
                    enc.finish().map_err(write_err)?,
                    self.options.compression.media_type(),
                )
            }
            Format::Zstd => {
                // Not kept as zstd: recompressed like an uncompressed layer, so every layer
                // of the image has the same, widely readable, media type.
                let enc = self.options.compression.encoder(blob).map_err(write_err)?;
                let mut tee = TeeDiff {
                    diff: &mut diff,
                    inner: enc,
                };
                let decoder = zstd::stream::read::Decoder::new(&mut raw).map_err(read_err)?;
                let mut decoder = ExpansionGuard::new(decoder, bound, exceeded);
                io::copy(&mut decoder, &mut tee).map_err(|e| classify(e, read_err, write_err))?;
                drop(decoder);
                (
                    tee.inner.finish().map_err(write_err)?,
                    self.options.compression.media_type(),
                )
            }
            Format::Unsupported(format) => {
                return Err(Error::UnsupportedCompression {
                    path: self.path.to_owned(),
                    entry: name.to_owned(),
                    format,
                });
            }
            Format::Unknown => {
                return Err(Error::NotALayer {
                    path: self.path.to_owned(),
                    entry: name.to_owned(),
                });
            }
        };
        let read = raw_hash.len();
        if read != size {
            return Err(Error::Truncated {
                path: self.path.to_owned(),
                entry: name.to_owned(),
                expected: size,
                actual: read,
            });
        }
        let raw_digest = raw_hash.finish();
        self.check_name_digest(name, &raw_digest)?;
        let diff_id = match format {
            Format::Tar => raw_digest,
            _ => diff.finish(),
        };
        if diff_id != *expected {
            // `blob` is dropped uncommitted: nothing reaches the store.
            return Err(Error::DiffIdMismatch {
                path: self.path.to_owned(),
                entry: name.to_owned(),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
        let (digest, size) = blob.commit(None)?;
        Ok((
            diff_id,
            BlobRef {
                digest,
                size,
                media_type: media_type.to_owned(),
            },
        ))
    }
}

/// `io::copy` fails on either side: corrupt data reads as `InvalidData`/`UnexpectedEof`,
/// anything else is taken as a write failure.
fn classify(
    e: io::Error,
    read_err: impl FnOnce(io::Error) -> Error,
    write_err: impl FnOnce(io::Error) -> Error,
) -> Error {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::Other => {
            read_err(e)
        }
        _ => write_err(e),
    }
}

/// Read a small entry (`manifest.json`, a config) whole, refusing ones over the limit.
fn read_small(path: &Path, name: &str, size: u64, r: &mut impl Read) -> Result<Vec<u8>, Error> {
    if size > MAX_METADATA_BYTES {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            entry: name.to_owned(),
            limit: MAX_METADATA_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    r.take(size)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::ReadEntry {
            path: path.to_owned(),
            entry: name.to_owned(),
            source,
        })?;
    if bytes.len() as u64 != size {
        return Err(Error::Truncated {
            path: path.to_owned(),
            entry: name.to_owned(),
            expected: size,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// A layer tar holding one file.
    fn layer_tar(file: &str, contents: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(contents.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, file, contents).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn config_json(diff_ids: &[Digest]) -> Vec<u8> {
        // Docker's shape, with fields our config struct does not model: they must survive.
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "docker_version": "27.0.0",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    fn manifest_json(images: &[(&str, &[&str], &[&str])]) -> Vec<u8> {
        let images: Vec<_> = images
            .iter()
            .map(|(config, tags, layers)| {
                serde_json::json!({"Config": config, "RepoTags": tags, "Layers": layers})
            })
            .collect();
        serde_json::to_vec(&images).unwrap()
    }

    enum Item<'a> {
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        Dir(&'a str),
    }

    /// Write a docker archive with these entries, in this order.
    fn archive(dir: &Path, items: &[Item<'_>]) -> std::path::PathBuf {
        let path = dir.join("image.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for item in items {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            match item {
                Item::File(name, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, name, *data).unwrap();
                }
                Item::Symlink(name, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, name, target).unwrap();
                }
                Item::Dir(name) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, name, io::empty()).unwrap();
                }
            }
        }
        b.finish().unwrap();
        path
    }

    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        (dir, store)
    }

    fn import(path: &Path, store: &Store) -> Result<StoredImage, Error> {
        import_docker_archive(path, store, Compression::Gzip)
    }

    fn check_oci(store: &Store, image: &StoredImage, config: &[u8], tars: &[&[u8]]) {
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(manifest["mediaType"], media_types::OCI_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], media_types::OCI_CONFIG);
        assert_eq!(image.manifest.media_type, media_types::OCI_MANIFEST);
        assert!(store.has_blob(&image.manifest.digest));
        // The config is kept byte for byte: same image ID.
        assert_eq!(image.config.digest, Digest::of(config));
        assert_eq!(store.read_blob(&image.config.digest).unwrap(), config);
        assert_eq!(image.layers.len(), tars.len());
        for (layer, tar) in image.layers.iter().zip(tars) {
            assert_eq!(layer.media_type, media_types::OCI_LAYER_GZIP);
            let blob = store.read_blob(&layer.digest).unwrap();
            assert_eq!(blob.len() as u64, layer.size);
            assert_eq!(gunzip(&blob), *tar);
        }
    }

    #[test]
    fn legacy_layout_with_uncompressed_layers_and_manifest_last() {
        let (dir, store) = setup();
        let one = layer_tar("bin/one", b"1");
        let two = layer_tar("bin/two", b"2");
        let diff_ids = [Digest::of(&one), Digest::of(&two), Digest::of(&one)];
        let config = config_json(&diff_ids);
        let manifest = manifest_json(&[(
            "cafe.json",
            &["blumeops/x:1"],
            &["aaa/layer.tar", "./bbb/layer.tar", "ccc/layer.tar"],
        )]);
        // Layers first, a shared layer as a symlink (as `docker save` writes them), the
        // config and manifest.json at the end.
        let path = archive(
            dir.path(),
            &[
                Item::Dir("aaa/"),
                Item::File("aaa/layer.tar", &one),
                Item::File("aaa/VERSION", b"1.0"),
                Item::Dir("bbb/"),
                Item::File("bbb/layer.tar", &two),
                Item::Dir("ccc/"),
                Item::Symlink("ccc/layer.tar", "../aaa/layer.tar"),
                Item::File("cafe.json", &config),
                Item::File("repositories", b"{}"),
                Item::File("manifest.json", &manifest),
            ],
        );
        let image = import(&path, &store).unwrap();
        check_oci(&store, &image, &config, &[&one, &two, &one]);
        assert_eq!(image.layers[0], image.layers[2]);

        // Deterministic: a second import (from another store) gives the same manifest.
        let (_dir2, store2) = setup();
        let again = import(&path, &store2).unwrap();
        assert_eq!(again, image);
    }

    #[test]
    fn blobs_layout_with_gzip_layers_keeps_them_as_they_are() {
        let (dir, store) = setup();
        let one = layer_tar("etc/one", b"one");
        let two = layer_tar("etc/two", b"two");
        let (gz_one, gz_two) = (gzip(&one), gzip(&two));
        let config = config_json(&[Digest::of(&one), Digest::of(&two)]);
        let name = |b: &[u8]| format!("blobs/sha256/{}", Digest::of(b).hex());
        let (c, l1, l2) = (name(&config), name(&gz_one), name(&gz_two));
        let manifest = manifest_json(&[(&c, &["x:1"], &[&l1, &l2])]);
        let path = archive(
            dir.path(),
            &[
                Item::File("manifest.json", &manifest),
                Item::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
                Item::Dir("blobs/"),
                Item::Dir("blobs/sha256/"),
                Item::File(&l2, &gz_two),
                Item::File(&c, &config),
                Item::File(&l1, &gz_one),
            ],
        );
        let image = import(&path, &store).unwrap();
        check_oci(&store, &image, &config, &[&one, &two]);
        // Stored as is: the blob digests are the archive's.
        assert_eq!(image.layers[0].digest, Digest::of(&gz_one));
        assert_eq!(image.layers[1].digest, Digest::of(&gz_two));
    }

    #[test]
    fn zstd_layer_is_recompressed_and_compressed_archive_is_read() {
        let (dir, store) = setup();
        let one = layer_tar("a", b"zstd layer");
        let zst = zstd::encode_all(&one[..], 3).unwrap();
        let config = config_json(&[Digest::of(&one)]);
        let manifest = manifest_json(&[("c.json", &[], &["l.tar.zst"])]);
        let path = archive(
            dir.path(),
            &[
                Item::File("l.tar.zst", &zst),
                Item::File("c.json", &config),
                Item::File("manifest.json", &manifest),
            ],
        );
        let image = import(&path, &store).unwrap();
        check_oci(&store, &image, &config, &[&one]);

        // The same archive gzip-compressed as a whole (what Nix's buildImage writes).
        let gz_path = dir.path().join("image.tar.gz");
        std::fs::write(&gz_path, gzip(&std::fs::read(&path).unwrap())).unwrap();
        assert_eq!(import(&gz_path, &store).unwrap(), image);
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn wrong_diff_id_is_refused_and_the_layer_not_stored() {
        let (dir, store) = setup();
        let one = layer_tar("a", b"real");
        let other = layer_tar("a", b"claimed");
        let config = config_json(&[Digest::of(&other)]);
        let manifest = manifest_json(&[("c.json", &[], &["l/layer.tar"])]);
        let path = archive(
            dir.path(),
            &[
                Item::File("manifest.json", &manifest),
                Item::File("c.json", &config),
                Item::File("l/layer.tar", &one),
            ],
        );
        let err = import(&path, &store).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::DiffIdMismatch { .. }), "{msg}");
        assert!(
            msg.contains("l/layer.tar")
                && msg.contains(&path.display().to_string())
                && msg.contains(&Digest::of(&one).to_string())
                && msg.contains(&Digest::of(&other).to_string()),
            "{msg}"
        );
        assert_eq!(err.kind(), ErrorKind::Integrity);
        // Only the config reached the store.
        let blobs = std::fs::read_dir(store.root().join("blobs/sha256")).unwrap();
        assert_eq!(blobs.count(), 1);
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        // The same for a gzip layer.
        let gz = gzip(&one);
        let path = archive(
            dir.path(),
            &[
                Item::File("manifest.json", &manifest),
                Item::File("c.json", &config),
                Item::File("l/layer.tar", &gz),
            ],
        );
        let err = import(&path, &store).unwrap_err();
        assert!(matches!(err, Error::DiffIdMismatch { .. }), "{err}");
        assert!(!store.has_blob(&Digest::of(&gz)));
    }

    #[test]
    fn missing_manifest_names_the_file() {
        let (dir, store) = setup();
        let path = archive(dir.path(), &[Item::File("layer.tar", &layer_tar("a", b""))]);
        let err = import(&path, &store).unwrap_err();
        assert!(matches!(err, Error::MissingManifest { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("manifest.json"),
            "{msg}"
        );
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.hint().is_some());
    }

    #[test]
    fn several_images_need_a_choice() {
        let (dir, store) = setup();
        let one = layer_tar("a", b"1");
        let two = layer_tar("b", b"2");
        let (c1, c2) = (
            config_json(&[Digest::of(&one)]),
            config_json(&[Digest::of(&two)]),
        );
        let manifest = manifest_json(&[
            ("c1.json", &["x:1"], &["1.tar"]),
            ("c2.json", &["x:2", "y:2"], &["2.tar"]),
        ]);
        let path = archive(
            dir.path(),
            &[
                Item::File("1.tar", &one),
                Item::File("2.tar", &two),
                Item::File("c1.json", &c1),
                Item::File("c2.json", &c2),
                Item::File("manifest.json", &manifest),
            ],
        );
        let err = import(&path, &store).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::MultipleImages { .. }), "{msg}");
        assert!(
            msg.contains("0: x:1") && msg.contains("1: x:2 y:2"),
            "{msg}"
        );
        assert!(err.hint().unwrap().contains("--image-index"));

        let second =
            import_docker_archive_with(&path, &store, &ImportOptions::new().with_image_index(1))
                .unwrap();
        check_oci(&store, &second, &c2, &[&two]);

        let err =
            import_docker_archive_with(&path, &store, &ImportOptions::new().with_image_index(2))
                .unwrap_err();
        assert!(
            matches!(
                err,
                Error::NoSuchImage {
                    index: 2,
                    count: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn hostile_and_broken_entries_are_named() {
        let (dir, store) = setup();
        let one = layer_tar("a", b"1");
        let config = config_json(&[Digest::of(&one)]);
        let cases: Vec<(&str, Vec<Item<'_>>, &str)> = vec![
            // A layer path that leaves the archive.
            (
                r#"[{"Config":"c.json","Layers":["../etc/passwd"]}]"#,
                vec![Item::File("c.json", &config)],
                "leaves the archive",
            ),
            // A layer that is not there.
            (
                r#"[{"Config":"c.json","Layers":["gone.tar"]}]"#,
                vec![Item::File("c.json", &config)],
                "has no entry `gone.tar`",
            ),
            // A symlink loop.
            (
                r#"[{"Config":"c.json","Layers":["loop.tar"]}]"#,
                vec![
                    Item::File("c.json", &config),
                    Item::Symlink("loop.tar", "loop.tar"),
                ],
                "too many links",
            ),
            // A symlink out of the archive.
            (
                r#"[{"Config":"c.json","Layers":["out.tar"]}]"#,
                vec![
                    Item::File("c.json", &config),
                    Item::Symlink("out.tar", "../../x"),
                ],
                "leaves the archive",
            ),
            // An xz layer.
            (
                r#"[{"Config":"c.json","Layers":["l.tar.xz"]}]"#,
                vec![
                    Item::File("c.json", &config),
                    Item::File("l.tar.xz", b"\xfd7zXZ\x00rest"),
                ],
                "xz-compressed",
            ),
            // Not a layer at all.
            (
                r#"[{"Config":"c.json","Layers":["l.txt"]}]"#,
                vec![Item::File("c.json", &config), Item::File("l.txt", b"hello")],
                "not a tar archive",
            ),
            // More layers than diff_ids.
            (
                r#"[{"Config":"c.json","Layers":["1.tar","1.tar"]}]"#,
                vec![Item::File("c.json", &config), Item::File("1.tar", &one)],
                "2 layers but its config `c.json` has 1 diff_ids",
            ),
            // A config that is not JSON.
            (
                r#"[{"Config":"c.json","Layers":[]}]"#,
                vec![Item::File("c.json", b"not json")],
                "failed to parse `c.json`",
            ),
            // A config that does not match its content-addressed name.
            (
                r#"[{"Config":"blobs/sha256/0000000000000000000000000000000000000000000000000000000000000000","Layers":["1.tar"]}]"#,
                vec![
                    Item::File(
                        "blobs/sha256/0000000000000000000000000000000000000000000000000000000000000000",
                        &config,
                    ),
                    Item::File("1.tar", &one),
                ],
                "does not match the digest in its name",
            ),
            (r#"[]"#, vec![], "lists no image"),
        ];
        for (manifest, mut items, expected) in cases {
            items.push(Item::File("manifest.json", manifest.as_bytes()));
            let path = archive(dir.path(), &items);
            let msg = import(&path, &store).unwrap_err().to_string();
            assert!(
                msg.contains(expected) && msg.contains(&path.display().to_string()),
                "{manifest}: {msg}"
            );
        }
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let (dir, store) = setup();
        let one = layer_tar("a", &[7u8; 100_000]);
        let config = config_json(&[Digest::of(&one)]);
        let manifest = manifest_json(&[("c.json", &[], &["1.tar"])]);
        let path = archive(
            dir.path(),
            &[
                Item::File("manifest.json", &manifest),
                Item::File("c.json", &config),
                Item::File("1.tar", &one),
            ],
        );
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1024 - 50_000]).unwrap();
        let err = import(&path, &store).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn plain_file_is_not_an_archive() {
        let (dir, store) = setup();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, b"this is not a tar file at all").unwrap();
        let err = import(&path, &store).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let missing = dir.path().join("missing.tar");
        let err = import(&missing, &store).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
}
