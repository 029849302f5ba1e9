//! Layers: a deterministic tar writer whose output is compressed and hashed in one pass
//! straight into the store.
//!
//! Determinism rules (so two builds give the same digest): entries sorted by path, every
//! mtime set to the build's epoch (or, for entries carrying their own mtime through
//! [`EntryMeta`], clamped to it), owner names empty, device numbers zero except on device
//! entries, xattrs in sorted PAX records, GNU headers, gzip with a pinned level, no file name
//! and a zero header mtime.

mod compress;
mod diff;
mod fingerprint;
mod headers;
mod host;
mod pgzip;
mod unpack;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use compress::{Compression, GZIP_LEVEL, LAYER_FORMAT, ZSTD_LEVEL};
pub use diff::layer_from_overlay_upper;
pub use fingerprint::{FileDigestCache, Fingerprint, host_file_digest};
pub(crate) use headers::{
    InImage, LayerStack, scan_layer_paths, unpacked_layer_paths, with_ancestors,
};
pub(crate) use host::globset;
pub(crate) use host::is_root;
pub use host::{HostCopy, Owner};
pub(crate) use unpack::diff_id_of;
pub use unpack::{
    DEFAULT_MAX_UNPACK_BYTES, DirMeta, OverlayXattrs, UnpackOptions, UnpackStats, leading_dirs,
    leading_dirs_present, unpack_layer,
};
pub use view::{OwnerLookupError, RootfsView};
// Only the sandbox reads overlay markers outside this module.
#[cfg(target_os = "linux")]
pub(crate) use view::{is_opaque, is_whiteout};

use crate::image::BlobRef;
use crate::reference::{Digest, DigestWriter};
use crate::store::{self, Store};

/// Errors from building a layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A path inside the image is not acceptable.
    #[error("invalid path `{path}` in image: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// Reading a host file or directory failed.
    #[error("failed to {action} `{}`", path.display())]
    Host {
        /// What was being done.
        action: &'static str,
        /// Host path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An include or exclude pattern is not a valid glob.
    #[error("invalid {which} pattern `{pattern}`")]
    Pattern {
        /// "include" or "exclude".
        which: &'static str,
        /// The pattern.
        pattern: String,
        /// Cause.
        #[source]
        source: globset::Error,
    },
    /// Writing the layer into the store failed.
    #[error("failed to write layer")]
    Write(#[source] io::Error),
    /// The store refused the blob.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A layer's media type is not one this crate can unpack.
    #[error("failed to unpack layer `{}`: unsupported media type `{media_type}`", layer.display())]
    UnsupportedMediaType {
        /// The layer blob.
        layer: PathBuf,
        /// Its media type.
        media_type: String,
    },
    /// The layer's tar stream (or its compression) is corrupt or could not be read.
    #[error("failed to read layer `{}`", layer.display())]
    ReadLayer {
        /// The layer blob.
        layer: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The layer is bigger uncompressed than allowed (a decompression bomb, or a limit set too
    /// low).
    #[error(
        "failed to unpack layer `{}`: it exceeds the limit of {limit} bytes uncompressed",
        layer.display()
    )]
    LayerTooLarge {
        /// The layer blob.
        layer: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// An entry of a layer was refused: it would escape the destination, write through a
    /// symlink, or is malformed.
    #[error("failed to unpack entry `{entry}` of layer `{}`: {reason}", layer.display())]
    UnsafeEntry {
        /// The layer blob.
        layer: PathBuf,
        /// The entry's path as written in the tar (odd bytes escaped).
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// Writing an entry of a layer failed.
    #[error("failed to {action} `{entry}` while unpacking layer `{}`", layer.display())]
    UnpackEntry {
        /// The layer blob.
        layer: PathBuf,
        /// The entry's path as written in the tar (odd bytes escaped).
        entry: String,
        /// What was being done, e.g. "create file".
        action: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An entry is owned by an id this user namespace does not map (rootless builds).
    #[error(
        "failed to unpack `{entry}` of layer `{}`: it is owned by uid {uid}, gid {gid}, which \
         this user namespace does not map",
        layer.display()
    )]
    UnmappedOwner {
        /// The layer blob.
        layer: PathBuf,
        /// The entry's path as written in the tar.
        entry: String,
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
    },
    /// An unpacked layer did not hash to the diff_id the image config gives for it.
    #[error(
        "failed to verify layer `{}`: its uncompressed content is {actual}, the image config says {expected}",
        layer.display()
    )]
    DiffIdMismatch {
        /// The layer blob.
        layer: PathBuf,
        /// The config's diff_id.
        expected: Digest,
        /// sha256 of the uncompressed tar.
        actual: Digest,
    },
    /// An overlay upper directory uses an overlayfs feature that cannot be turned into a layer.
    #[error(
        "failed to convert `{}` into a layer: it uses overlayfs {feature}, which is not supported",
        path.display()
    )]
    OverlayFeature {
        /// The host path in the upper directory.
        path: PathBuf,
        /// The feature, e.g. "redirect_dir".
        feature: &'static str,
    },
}

/// What a tar entry is.
#[derive(Clone)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(FileData),
    /// A symbolic link to the target.
    Symlink(String),
    /// A hard link to an earlier entry of the same layer (its path, normalised).
    Hardlink(String),
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// Optional per-entry metadata beyond [`Entry`]: its own mtime and extended attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryMeta {
    /// The entry's own mtime (seconds since the Unix epoch). When set, the layer records
    /// `min(mtime, epoch)` (clamped); when unset, the build's epoch (set).
    pub mtime: Option<u64>,
    /// Extended attributes, written as `SCHILY.xattr.<name>` PAX records in name order.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl EntryMeta {
    /// Keep the entry's own mtime (clamped to the epoch when the layer is written).
    #[must_use]
    pub fn with_mtime(mut self, mtime: u64) -> Self {
        self.mtime = Some(mtime);
        self
    }

    /// Add an extended attribute.
    #[must_use]
    pub fn with_xattr(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.xattrs.insert(name.into(), value.into());
        self
    }
}

/// Where a regular file's bytes come from.
#[derive(Clone)]
pub enum FileData {
    /// Bytes held in memory.
    Bytes(Arc<[u8]>),
    /// A host file, read while the layer is written.
    Host(PathBuf),
}

/// One entry of a layer.
#[derive(Clone)]
pub struct Entry {
    /// Kind and content.
    pub kind: EntryKind,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub owner: Owner,
}

/// A layer finished into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The compressed blob.
    pub blob: BlobRef,
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// Collects entries, then writes them as one deterministic layer.
#[derive(Clone, Default)]
pub struct LayerBuilder {
    entries: BTreeMap<String, Entry>,
    meta: BTreeMap<String, EntryMeta>,
    /// Parent directories that [`LayerBuilder::add`] made up, not added themselves.
    implicit: BTreeSet<String>,
}

/// Turn an absolute or relative image path into the tar form: no leading `/`, no `.` or
/// empty components, no `..`.
pub fn normalize_path(path: &str) -> Result<String, Error> {
    let invalid = |reason| Error::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("`..` is not allowed")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(invalid("it names the root directory"));
    }
    Ok(parts.join("/"))
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add `entry` at `path` (normalised), with its parent directories (mode 0755, root)
    /// unless they were added already.
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<(), Error> {
        let path = normalize_path(path)?;
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if !self.entries.contains_key(p) {
                self.entries.insert(
                    p.to_owned(),
                    Entry {
                        kind: EntryKind::Dir,
                        mode: 0o755,
                        owner: Owner::ROOT,
                    },
                );
                self.implicit.insert(p.to_owned());
            }
            parent = p;
        }
        self.meta.remove(&path);
        self.implicit.remove(&path);
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Add the directory `path` the way [`LayerBuilder::add`] makes up a missing parent:
    /// 0755 and root's, listed in [`LayerBuilder::implicit_parents`] for the caller to settle.
    /// For the destination of a directory copy, which Docker treats as a parent: a
    /// directory the image has there keeps its mode and owner, a new one gets the copy's
    /// owner, whatever the source directory's mode and owner. Nothing changes when `path`
    /// was added already.
    pub fn add_implicit_dir(&mut self, path: &str) -> Result<(), Error> {
        let path = normalize_path(path)?;
        if self.entries.contains_key(&path) {
            return Ok(());
        }
        self.add(
            &path,
            Entry {
                kind: EntryKind::Dir,
                mode: 0o755,
                owner: Owner::ROOT,
            },
        )?;
        self.implicit.insert(path);
        Ok(())
    }

    /// The parent directories [`LayerBuilder::add`] made up (0755, root) because nothing
    /// was added at their paths, shallowest first.
    pub fn implicit_parents(&self) -> Vec<String> {
        self.implicit.iter().cloned().collect()
    }

    /// Give the made-up parent directory `path` another mode and owner (what the image
    /// has there, or the owner of a copy that creates it). Other paths are left alone.
    pub fn set_implicit_parent(&mut self, path: &str, mode: u32, owner: Owner) {
        if self.implicit.contains(path)
            && let Some(entry) = self.entries.get_mut(path)
        {
            entry.mode = mode;
            entry.owner = owner;
        }
    }

    /// Like [`LayerBuilder::add`], with an own mtime (clamped to the epoch) and xattrs.
    pub fn add_with_meta(
        &mut self,
        path: &str,
        entry: Entry,
        meta: EntryMeta,
    ) -> Result<(), Error> {
        self.add(path, entry)?;
        if meta != EntryMeta::default() {
            self.meta.insert(normalize_path(path)?, meta);
        }
        Ok(())
    }

    /// Add a file with the given bytes.
    pub fn add_bytes(
        &mut self,
        path: &str,
        bytes: impl Into<Arc<[u8]>>,
        mode: u32,
        owner: Owner,
    ) -> Result<(), Error> {
        self.add(
            path,
            Entry {
                kind: EntryKind::File(FileData::Bytes(bytes.into())),
                mode,
                owner,
            },
        )
    }

    /// Write the layer into `store`: tar, compress and hash in one pass. Every mtime is `epoch`,
    /// except entries added with an own mtime ([`EntryMeta::mtime`]), which get
    /// `min(mtime, epoch)`. Blocking: call from a blocking thread.
    pub fn write(
        &self,
        store: &Store,
        compression: Compression,
        epoch: u64,
    ) -> Result<Layer, Error> {
        let blob = store.blob_writer()?;
        let mut tee = TeeDiff {
            diff: DigestWriter::new(),
            inner: compression.encoder(blob).map_err(Error::Write)?,
        };
        {
            let mut tar = tar::Builder::new(&mut tee);
            tar.mode(tar::HeaderMode::Deterministic);
            // Host files that share an inode (hard links in a copied tree, or in an unpacked
            // layer) are written once; later paths become hard links to the first, in path
            // order, so the link always follows its target in the tar.
            let mut first_path: HashMap<(u64, u64), &str> = HashMap::new();
            for (path, entry) in &self.entries {
                let linked;
                let mut entry = entry;
                if let EntryKind::File(FileData::Host(src)) = &entry.kind
                    && let Ok(m) = std::fs::metadata(src)
                    && m.nlink() > 1
                {
                    match first_path.get(&(m.dev(), m.ino())) {
                        Some(first) => {
                            linked = Entry {
                                kind: EntryKind::Hardlink((*first).to_owned()),
                                ..entry.clone()
                            };
                            entry = &linked;
                        }
                        None => {
                            first_path.insert((m.dev(), m.ino()), path);
                        }
                    }
                }
                let meta = self.meta.get(path);
                let mtime = meta.and_then(|m| m.mtime).map_or(epoch, |m| m.min(epoch));
                if let Some(meta) = meta.filter(|m| !m.xattrs.is_empty()) {
                    let records: Vec<(String, &[u8])> = meta
                        .xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                        .collect();
                    tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                        .map_err(Error::Write)?;
                }
                append_entry(&mut tar, path, entry, mtime)?;
            }
            tar.finish().map_err(Error::Write)?;
        }
        let diff_id = tee.diff.finish();
        let blob = tee.inner.finish().map_err(Error::Write)?;
        let (digest, size) = blob.commit(None)?;
        Ok(Layer {
            blob: BlobRef {
                digest,
                size,
                media_type: compression.media_type().to_owned(),
            },
            diff_id,
        })
    }
}

fn header(kind: tar::EntryType, entry: &Entry, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(entry.mode & 0o7777);
    h.set_uid(entry.owner.uid.into());
    h.set_gid(entry.owner.gid.into());
    h.set_mtime(epoch);
    h.set_size(0);
    h
}

fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    entry: &Entry,
    epoch: u64,
) -> Result<(), Error> {
    let device = |kind, major: u32, minor: u32| {
        let mut h = header(kind, entry, epoch);
        h.set_device_major(major).map_err(Error::Write)?;
        h.set_device_minor(minor).map_err(Error::Write)?;
        Ok::<_, Error>(h)
    };
    match &entry.kind {
        EntryKind::Hardlink(target) => {
            let mut h = header(tar::EntryType::Link, entry, epoch);
            tar.append_link(&mut h, path, target).map_err(Error::Write)
        }
        EntryKind::CharDevice { major, minor } => {
            let mut h = device(tar::EntryType::Char, *major, *minor)?;
            tar.append_data(&mut h, path, io::empty())
                .map_err(Error::Write)
        }
        EntryKind::BlockDevice { major, minor } => {
            let mut h = device(tar::EntryType::Block, *major, *minor)?;
            tar.append_data(&mut h, path, io::empty())
                .map_err(Error::Write)
        }
        EntryKind::Fifo => {
            let mut h = header(tar::EntryType::Fifo, entry, epoch);
            tar.append_data(&mut h, path, io::empty())
                .map_err(Error::Write)
        }
        EntryKind::Dir => {
            let mut h = header(tar::EntryType::Directory, entry, epoch);
            tar.append_data(&mut h, format!("{path}/"), io::empty())
                .map_err(Error::Write)
        }
        EntryKind::Symlink(target) => {
            let mut h = header(tar::EntryType::Symlink, entry, epoch);
            tar.append_link(&mut h, path, target).map_err(Error::Write)
        }
        EntryKind::File(FileData::Bytes(bytes)) => {
            let mut h = header(tar::EntryType::Regular, entry, epoch);
            h.set_size(bytes.len() as u64);
            tar.append_data(&mut h, path, &bytes[..])
                .map_err(Error::Write)
        }
        EntryKind::File(FileData::Host(src)) => {
            let file = File::open(src).map_err(|source| Error::Host {
                action: "open",
                path: src.clone(),
                source,
            })?;
            let len = file
                .metadata()
                .map_err(|source| Error::Host {
                    action: "stat",
                    path: src.clone(),
                    source,
                })?
                .len();
            let mut h = header(tar::EntryType::Regular, entry, epoch);
            h.set_size(len);
            // A file that changes size while it is read would corrupt the tar: read exactly
            // `len` bytes and fail if fewer arrive.
            let reader = ExactReader {
                inner: file.take(len),
                remaining: len,
                path: src,
            };
            tar.append_data(&mut h, path, reader)
                .map_err(|source| Error::Host {
                    action: "read",
                    path: src.clone(),
                    source,
                })
        }
    }
}

struct ExactReader<'a, R> {
    inner: R,
    remaining: u64,
    path: &'a Path,
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being read", self.path.display()),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Hashes the uncompressed tar stream on its way into the compressor.
struct TeeDiff<W> {
    diff: DigestWriter,
    inner: W,
}

impl<W: Write> Write for TeeDiff<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.diff.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> (Store, LayerBuilder) {
        let store = Store::open(dir).unwrap();
        let mut b = LayerBuilder::new();
        b.add_bytes(
            "/usr/local/bin/hello",
            b"#!/bin/sh\necho hi\n".to_vec(),
            0o755,
            Owner::ROOT,
        )
        .unwrap();
        b.add_bytes(
            "etc/motd",
            b"welcome".to_vec(),
            0o644,
            Owner {
                uid: 1000,
                gid: 1000,
            },
        )
        .unwrap();
        let long = format!("opt/{}/file", "d".repeat(120));
        b.add_bytes(&long, b"long".to_vec(), 0o600, Owner::ROOT)
            .unwrap();
        b.add(
            "bin/sh-link",
            Entry {
                kind: EntryKind::Symlink("/bin/busybox".into()),
                mode: 0o777,
                owner: Owner::ROOT,
            },
        )
        .unwrap();
        (store, b)
    }

    #[test]
    fn same_entries_give_same_digest_on_separate_stores() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (s1, b1) = sample(d1.path());
        let (s2, b2) = sample(d2.path());
        let l1 = b1.write(&s1, Compression::Gzip, 0).unwrap();
        let l2 = b2.write(&s2, Compression::Gzip, 0).unwrap();
        assert_eq!(l1, l2);
        let l3 = b1.write(&s1, Compression::Gzip, 42).unwrap();
        assert_ne!(
            l1.blob.digest, l3.blob.digest,
            "epoch must reach the headers"
        );
    }

    #[test]
    fn layer_reads_back_sorted_with_parents_and_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, b) = sample(dir.path());
        let layer = b.write(&store, Compression::Gzip, 1_700_000_000).unwrap();
        assert_eq!(
            layer.blob.size,
            store.blob_size(&layer.blob.digest).unwrap()
        );
        let gz = flate2::read::GzDecoder::new(store.open_blob(&layer.blob.digest).unwrap());
        let mut raw = Vec::new();
        {
            let mut gz = gz;
            gz.read_to_end(&mut raw).unwrap();
        }
        assert_eq!(Digest::of(&raw), layer.diff_id);
        let mut ar = tar::Archive::new(&raw[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 1_700_000_000);
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if path == "etc/motd" {
                assert_eq!(
                    (e.header().uid().unwrap(), e.header().gid().unwrap()),
                    (1000, 1000)
                );
            }
            if path == "usr/local/bin/hello" {
                assert_eq!(e.header().mode().unwrap(), 0o755);
            }
            seen.push(path);
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
        for p in [
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/hello",
            "etc/",
            "bin/sh-link",
        ] {
            assert!(seen.iter().any(|s| s == p), "{p} missing from {seen:?}");
        }
        assert!(
            seen.iter().any(|s| s.len() > 120),
            "long path lost: {seen:?}"
        );
    }

    #[test]
    fn rejects_dotdot_and_root() {
        assert!(normalize_path("../etc/passwd").is_err());
        assert!(normalize_path("/a/../../b").is_err());
        assert!(normalize_path("/").is_err());
        assert_eq!(normalize_path("//usr/./bin/").unwrap(), "usr/bin");
    }
}
