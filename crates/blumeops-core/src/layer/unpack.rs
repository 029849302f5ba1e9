//! Unpacking one OCI layer into an empty directory in the overlayfs representation, so the
//! directory can be used as-is as an overlay `lowerdir`:
//!
//! - a whiteout entry `dir/.wh.NAME` becomes a character device 0/0 `dir/NAME`;
//! - an opaque marker `dir/.wh..wh..opq` sets `trusted.overlay.opaque=y` (or
//!   `user.overlay.opaque=y`, see [`OverlayXattrs`]) on `dir` and is not written itself.
//!
//! Layers are hostile input. Every path is resolved one component at a time from the
//! destination with `O_NOFOLLOW | O_DIRECTORY`, so nothing is ever written through a symlink;
//! `..` components are refused and a leading `/` is dropped (as tar does); hard link targets
//! are resolved the same way; files are created with `O_EXCL | O_NOFOLLOW` after whatever was
//! at their path is removed. The uncompressed stream is hashed while it is read (the diff_id)
//! and capped at [`UnpackOptions::max_bytes`] and, whatever the codec, at
//! [`UnpackOptions::max_ratio`] times the compressed size (decompression bombs). The number
//! of entries, the depth and length of paths, and the tar metadata (long names, PAX records)
//! held in memory for one entry are bounded too (see [`crate::limits`]).
//!
//! Limits: xattrs are applied to files and directories only (not to symlinks or device
//! nodes); sub-second mtimes are dropped; hard links must point at an earlier entry of the
//! same layer. A stream that simply stops at an entry boundary reads as a complete archive:
//! the diff_id comparison is what catches truncation.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::Error;
use crate::image::media_types;
use crate::limits::{self, ExpansionGuard, LimitExceeded};
use crate::reference::{Digest, DigestWriter};

#[cfg(target_os = "linux")]
use rfs::mknodat;

/// Device nodes and overlay whiteouts are for the Linux sandbox's layers, and rustix has no
/// `mknodat` on every system.
#[cfg(not(target_os = "linux"))]
fn mknodat(
    _dir: impl AsFd,
    _name: &[u8],
    _file_type: FileType,
    _mode: Mode,
    _dev: rfs::Dev,
) -> rustix::io::Result<()> {
    Err(Errno::NOTSUP)
}

/// Default cap on a layer's uncompressed size: 64 GiB ([`limits::MAX_LAYER_BYTES`]).
pub const DEFAULT_MAX_UNPACK_BYTES: u64 = limits::MAX_LAYER_BYTES;

/// The tar name prefix of a whiteout.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The tar name of an opaque-directory marker.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS bookkeeping entries (hard link directories and the like), which are skipped.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Which xattr namespace marks opaque directories, matching how the overlay is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OverlayXattrs {
    /// `trusted.overlay.*`: the default for overlays mounted by root. Setting it needs
    /// `CAP_SYS_ADMIN`.
    #[default]
    Trusted,
    /// `user.overlay.*`: for overlays mounted with `-o userxattr` (rootless).
    User,
}

impl OverlayXattrs {
    /// The xattr that marks a directory opaque.
    pub fn opaque(self) -> &'static str {
        match self {
            Self::Trusted => "trusted.overlay.opaque",
            Self::User => "user.overlay.opaque",
        }
    }
}

/// Whether an xattr name belongs to overlayfs (in either namespace). Such xattrs in a layer
/// would let it redirect lookups into other layers, so they are never copied from a tar.
pub(super) fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

/// How [`unpack_layer`] writes what it extracts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct UnpackOptions {
    /// Refuse layers whose uncompressed tar stream (or total extracted file data) exceeds this
    /// many bytes. Default [`DEFAULT_MAX_UNPACK_BYTES`], or
    /// [`limits::MAX_LAYER_BYTES_ENV`] when set.
    pub max_bytes: u64,
    /// Refuse layers that expand to more than this many times their compressed size (beyond
    /// [`limits::LAYER_RATIO_FLOOR_BYTES`]); 0: no ratio bound. Default
    /// [`limits::MAX_LAYER_RATIO`], or [`limits::MAX_LAYER_RATIO_ENV`] when set.
    pub max_ratio: u64,
    /// Refuse layers with more tar entries than this. Default [`limits::MAX_LAYER_ENTRIES`],
    /// or [`limits::MAX_LAYER_ENTRIES_ENV`] when set.
    pub max_entries: u64,
    /// Create device nodes and fifos (needs root). When false they are skipped and counted in
    /// [`UnpackStats::skipped_devices`].
    pub allow_devices: bool,
    /// Give entries the uid/gid from the layer (needs root). When false they belong to the
    /// current user.
    pub preserve_owners: bool,
    /// Apply `SCHILY.xattr.*` PAX records (e.g. `security.capability`, needs root for most
    /// namespaces). Overlay xattrs are never applied from a layer.
    pub preserve_xattrs: bool,
    /// Namespace of the opaque-directory xattr.
    pub overlay_xattrs: OverlayXattrs,
}

impl Default for UnpackOptions {
    /// Unprivileged settings: no devices, owners or xattrs, `trusted.overlay.*` markers and
    /// the default limits (or those set in the environment, see [`crate::limits`]).
    fn default() -> Self {
        Self {
            max_bytes: limits::env_u64(limits::MAX_LAYER_BYTES_ENV, DEFAULT_MAX_UNPACK_BYTES),
            max_ratio: limits::env_u64(limits::MAX_LAYER_RATIO_ENV, limits::MAX_LAYER_RATIO),
            max_entries: limits::env_u64(limits::MAX_LAYER_ENTRIES_ENV, limits::MAX_LAYER_ENTRIES),
            allow_devices: false,
            preserve_owners: false,
            preserve_xattrs: false,
            overlay_xattrs: OverlayXattrs::Trusted,
        }
    }
}

impl UnpackOptions {
    /// Full fidelity, for root: devices, owners and xattrs preserved, `trusted.overlay.*`.
    pub fn privileged() -> Self {
        Self {
            allow_devices: true,
            preserve_owners: true,
            preserve_xattrs: true,
            ..Self::default()
        }
    }

    /// [`UnpackOptions::privileged`] when running as root; as root of a user namespace (the
    /// rootless executor) the same without device nodes (only whiteouts may be created
    /// there) and with `user.overlay.*` markers (the overlay is mounted with `userxattr`);
    /// else unprivileged settings with `user.overlay.*` markers.
    pub fn for_current_user() -> Self {
        if rustix::process::geteuid().is_root() && crate::executor::in_user_namespace() {
            Self::privileged()
                .with_devices(false)
                .with_overlay_xattrs(OverlayXattrs::User)
        } else if rustix::process::geteuid().is_root() {
            Self::privileged()
        } else {
            Self::default().with_overlay_xattrs(OverlayXattrs::User)
        }
    }

    /// Set the uncompressed size cap.
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Set the expansion ratio bound (0: none).
    #[must_use]
    pub fn with_max_ratio(mut self, max_ratio: u64) -> Self {
        self.max_ratio = max_ratio;
        self
    }

    /// Set the tar entry count bound.
    #[must_use]
    pub fn with_max_entries(mut self, max_entries: u64) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// Create (or skip) device nodes and fifos.
    #[must_use]
    pub fn with_devices(mut self, allow: bool) -> Self {
        self.allow_devices = allow;
        self
    }

    /// Preserve (or not) the layer's uid/gid.
    #[must_use]
    pub fn with_owners(mut self, preserve: bool) -> Self {
        self.preserve_owners = preserve;
        self
    }

    /// Apply (or not) the layer's xattrs.
    #[must_use]
    pub fn with_xattrs(mut self, preserve: bool) -> Self {
        self.preserve_xattrs = preserve;
        self
    }

    /// Choose the opaque-directory xattr namespace.
    #[must_use]
    pub fn with_overlay_xattrs(mut self, which: OverlayXattrs) -> Self {
        self.overlay_xattrs = which;
        self
    }
}

/// What [`unpack_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackStats {
    /// sha256 of the uncompressed tar stream: compare with the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// Size of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// Entries written (files, directories, links, devices; not whiteouts or markers).
    pub entries: u64,
    /// Whiteouts turned into character devices 0/0.
    pub whiteouts: u64,
    /// Opaque markers turned into xattrs.
    pub opaque_dirs: u64,
    /// Device nodes and fifos skipped because [`UnpackOptions::allow_devices`] was off (or
    /// character devices 0/0, which overlayfs would read as whiteouts).
    pub skipped_devices: u64,
    /// Other entries skipped: AUFS bookkeeping (`.wh..wh.*`) and PAX global headers.
    pub skipped_other: u64,
}

/// The diff_id of a compressed layer file: sha256 of its uncompressed stream (to check a
/// layer from elsewhere before its diff_id is trusted).
pub(crate) fn diff_id_of(layer: &Path, media_type: &str) -> Result<Digest, Error> {
    let read_err = |source| Error::ReadLayer {
        layer: layer.to_owned(),
        source,
    };
    let file = File::open(layer).map_err(read_err)?;
    let mut reader = decoder(file, media_type, layer)?;
    let mut hasher = crate::reference::DigestWriter::new();
    std::io::copy(&mut reader, &mut hasher).map_err(read_err)?;
    Ok(hasher.finish())
}

/// The decompressing reader for a layer media type (OCI and Docker types).
fn decoder(file: File, media_type: &str, layer: &Path) -> Result<Box<dyn Read>, Error> {
    let buffered = BufReader::with_capacity(128 * 1024, file);
    Ok(match media_types::to_oci_layer(media_type) {
        media_types::OCI_LAYER_TAR
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Box::new(buffered),
        media_types::OCI_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
        }
        media_types::OCI_LAYER_ZSTD
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(|source| {
                Error::ReadLayer {
                    layer: layer.to_owned(),
                    source,
                }
            })?,
        ),
        _ => {
            return Err(Error::UnsupportedMediaType {
                layer: layer.to_owned(),
                media_type: media_type.to_owned(),
            });
        }
    })
}

/// How much of a layer's uncompressed stream [`leading_dirs_present`] reads at most.
const LEADING_SCAN_BYTES: u64 = 1 << 20;

/// Whether a layer holds a directory entry for each of `dirs` (paths without a leading
/// `/`), judged from the first [`LEADING_SCAN_BYTES`] of its tar stream: directories come
/// before what they hold. A later entry of the same name that is not a directory (the
/// later one wins when unpacking) within those bytes makes it `false`, as does a name not
/// seen: `false` means "not known from the start". Nothing is unpacked.
pub fn leading_dirs_present(
    file: File,
    media_type: &str,
    layer: &Path,
    dirs: &[String],
) -> Result<bool, Error> {
    Ok(leading_dirs(file, media_type, layer, dirs)?.is_some())
}

/// A directory entry's mode bits (with setuid/setgid/sticky), uid and gid, as a layer's tar
/// header gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirMeta {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// [`leading_dirs_present`] with what the layer says of each directory (the last entry of
/// each name within the bytes read); `None` when not every one is known that way. A layer
/// that holds a directory's entry decides its mode and owner in the image, whatever lies
/// below it.
pub fn leading_dirs(
    file: File,
    media_type: &str,
    layer: &Path,
    dirs: &[String],
) -> Result<Option<BTreeMap<String, DirMeta>>, Error> {
    let wanted: std::collections::BTreeSet<&str> = dirs.iter().map(String::as_str).collect();
    let mut seen = BTreeMap::new();
    let reader = decoder(file, media_type, layer)?.take(LEADING_SCAN_BYTES);
    let mut archive = tar::Archive::new(reader);
    let Ok(entries) = archive.entries() else {
        return Ok(None);
    };
    for entry in entries {
        // Where the bytes scanned end, the archive looks broken: judge what was read.
        let Ok(entry) = entry else { break };
        let Ok(path) = entry.path() else { continue };
        let name = path.to_string_lossy();
        let name = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/');
        if !wanted.contains(name) {
            continue;
        }
        let header = entry.header();
        if header.entry_type() != tar::EntryType::Directory {
            return Ok(None);
        }
        let (Ok(mode), Ok(uid), Ok(gid)) = (header.mode(), header.uid(), header.gid()) else {
            return Ok(None);
        };
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Ok(None);
        };
        seen.insert(
            name.to_owned(),
            DirMeta {
                mode: mode & 0o7777,
                uid,
                gid,
            },
        );
    }
    Ok((seen.len() == wanted.len()).then_some(seen))
}

/// Hashes and counts the uncompressed stream, failing once it passes the limit, and bounds
/// what the tar reader reads between two entries (headers, long names, PAX records: it holds
/// them in memory).
pub(super) struct Metered<R> {
    inner: R,
    /// The diff_id, when the reader wants it.
    hasher: Option<DigestWriter>,
    /// Bytes read so far.
    read: u64,
    limit: u64,
    exceeded: Rc<Cell<bool>>,
    /// Bytes read since the tar reader started looking for the next entry, while it does.
    between: Rc<Cell<Option<u64>>>,
}

/// Slack over [`limits::MAX_TAR_HEADER_BYTES`] for the header blocks and padding read
/// between entries.
const BETWEEN_ENTRIES_SLACK: u64 = 64 * 1024;

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        self.read += n as u64;
        if self.read > self.limit {
            self.exceeded.set(true);
            return Err(io::Error::other(
                "layer exceeds the uncompressed size limit",
            ));
        }
        if let Some(between) = self.between.get() {
            let between = between + n as u64;
            self.between.set(Some(between));
            if between > limits::MAX_TAR_HEADER_BYTES + BETWEEN_ENTRIES_SLACK {
                return Err(LimitExceeded::new(
                    "the tar metadata of one entry (headers, long names, PAX records)",
                    limits::MAX_TAR_HEADER_BYTES,
                    "bytes",
                )
                .into_io());
            }
        }
        Ok(n)
    }
}

/// A layer's uncompressed tar stream behind the guards every reader of a hostile layer needs:
/// the size cap, the expansion bound against the compressed size, the entry count and the
/// tar metadata held for one entry.
pub(super) struct LayerStream<'a> {
    blob: &'a Path,
    opts: &'a UnpackOptions,
    metered: Metered<Box<dyn Read>>,
    exceeded: Rc<Cell<bool>>,
    between: Rc<Cell<Option<u64>>>,
}

impl<'a> LayerStream<'a> {
    /// Open the layer blob at `blob` (of `media_type`); `hash`: compute the diff_id.
    pub(super) fn open(
        blob: &'a Path,
        media_type: &str,
        opts: &'a UnpackOptions,
        hash: bool,
    ) -> Result<Self, Error> {
        let file = File::open(blob).map_err(|source| Error::Host {
            action: "open layer",
            path: blob.to_owned(),
            source,
        })?;
        let compressed = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        let reader = decoder(file, media_type, blob)?;
        // Codec-agnostic bomb guard: whatever the decoder produces is counted.
        let (bound, by_ratio) = limits::expansion_bound(compressed, opts.max_bytes, opts.max_ratio);
        let reader: Box<dyn Read> = if by_ratio {
            Box::new(ExpansionGuard::new(reader, bound, |limit| {
                LimitExceeded::new(
                    "the layer's uncompressed size (too many times its compressed size: a decompression bomb?)",
                    limit,
                    "bytes",
                )
                .with_env(limits::MAX_LAYER_RATIO_ENV)
            }))
        } else {
            reader
        };
        let exceeded = Rc::new(Cell::new(false));
        let between = Rc::new(Cell::new(None));
        Ok(Self {
            blob,
            opts,
            metered: Metered {
                inner: reader,
                hasher: hash.then(DigestWriter::new),
                read: 0,
                limit: opts.max_bytes,
                exceeded: exceeded.clone(),
                between: between.clone(),
            },
            exceeded,
            between,
        })
    }

    /// Call `f` on every entry, with the function that turns a read error into the layer's
    /// error; then read the stream to its end. Returns the bytes of the uncompressed stream
    /// and, when asked for, its hash.
    pub(super) fn for_each_entry(
        self,
        mut f: impl FnMut(
            &mut tar::Entry<'_, Metered<Box<dyn Read>>>,
            &dyn Fn(io::Error) -> Error,
        ) -> Result<(), Error>,
    ) -> Result<(u64, Option<DigestWriter>), Error> {
        let Self {
            blob,
            opts,
            metered,
            exceeded,
            between,
        } = self;
        let read_err = |source: io::Error| {
            if exceeded.get() {
                Error::LayerTooLarge {
                    layer: blob.to_owned(),
                    limit: opts.max_bytes,
                }
            } else {
                Error::ReadLayer {
                    layer: blob.to_owned(),
                    source,
                }
            }
        };
        let mut archive = tar::Archive::new(metered);
        let mut entries = archive.entries().map_err(read_err)?;
        let mut count = 0u64;
        loop {
            between.set(Some(0));
            let next = entries.next();
            between.set(None);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(read_err)?;
            count += 1;
            if count > opts.max_entries {
                return Err(read_err(
                    LimitExceeded::new(
                        "the layer's number of tar entries",
                        opts.max_entries,
                        "entries",
                    )
                    .with_env(limits::MAX_LAYER_ENTRIES_ENV)
                    .into_io(),
                ));
            }
            f(&mut entry, &read_err)?;
            // What the entry did not read (a directory's or link's data) is skipped here, so
            // that the bound between entries only counts headers.
            io::copy(&mut entry, &mut io::sink()).map_err(read_err)?;
        }
        // The diff_id covers the whole stream, including the end-of-archive blocks and any
        // padding after them that the tar reader did not consume.
        let mut metered = archive.into_inner();
        io::copy(&mut metered, &mut io::sink()).map_err(read_err)?;
        Ok((metered.read, metered.hasher))
    }
}

/// Extract the layer blob at `blob` (of `media_type`) into the empty directory `dest`, in the
/// overlayfs representation (see the module docs). Returns the diff_id computed over the
/// whole uncompressed stream; the caller compares it with the image config.
///
/// On error `dest` holds a partial tree: callers unpack into a temporary directory and
/// remove it on failure (as [`Store::unpacked_layer`](crate::Store::unpacked_layer) does).
/// Blocking: call from a blocking thread.
pub fn unpack_layer(
    blob: &Path,
    media_type: &str,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, Error> {
    let stream = LayerStream::open(blob, media_type, opts, true)?;
    let mut listing = std::fs::read_dir(dest).map_err(|source| Error::Host {
        action: "read unpack destination",
        path: dest.to_owned(),
        source,
    })?;
    if listing.next().is_some() {
        return Err(Error::Host {
            action: "unpack into (the directory is not empty)",
            path: dest.to_owned(),
            source: io::Error::from(io::ErrorKind::DirectoryNotEmpty),
        });
    }
    let root = rfs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Host {
        action: "open unpack destination",
        path: dest.to_owned(),
        source: e.into(),
    })?;
    let mut unpacker = Unpacker {
        root,
        layer: blob,
        opts,
        dirs: BTreeMap::new(),
        whiteouts: HashSet::new(),
        written: 0,
        stats: Counts::default(),
    };
    let (tar_bytes, hasher) = stream.for_each_entry(|entry, read_err| {
        unpacker.entry(entry).map_err(|fail| match fail {
            Fail::Read(source) => read_err(source),
            other => unpacker.error(&entry.path_bytes(), other),
        })
    })?;
    unpacker.finish_dirs()?;
    let c = unpacker.stats;
    Ok(UnpackStats {
        diff_id: hasher.expect("hashed").finish(),
        tar_bytes,
        entries: c.entries,
        whiteouts: c.whiteouts,
        opaque_dirs: c.opaque_dirs,
        skipped_devices: c.skipped_devices,
        skipped_other: c.skipped_other,
    })
}

#[derive(Default, Clone, Copy)]
struct Counts {
    entries: u64,
    whiteouts: u64,
    opaque_dirs: u64,
    skipped_devices: u64,
    skipped_other: u64,
}

/// Why one entry failed, before the layer and entry name are attached.
enum Fail {
    /// The entry is refused.
    Unsafe(&'static str),
    /// A filesystem operation failed.
    Io(&'static str, io::Error),
    /// Reading the stream failed (corrupt data or the size limit).
    Read(io::Error),
    /// Extracted file data passed the size limit.
    TooLarge,
    /// A path passed a limit.
    Limit(LimitExceeded),
    /// The owner is not mapped in this user namespace.
    UnmappedOwner(u32, u32),
}

/// The error for a failed chown to `h`'s owner: EINVAL means the id is not mapped.
fn owner_fail(h: &Header) -> impl FnOnce(Errno) -> Fail + '_ {
    move |e| {
        if e == Errno::INVAL {
            Fail::UnmappedOwner(h.uid, h.gid)
        } else {
            Fail::Io("set owner of", e.into())
        }
    }
}

fn io_fail(action: &'static str) -> impl FnOnce(Errno) -> Fail {
    move |e| Fail::Io(action, e.into())
}

/// Longest entry name shown in a message, in characters.
const MAX_DISPLAY_NAME: usize = 256;

/// A tar entry's name for messages: lossy UTF-8 with control characters escaped, cut short
/// when it is very long.
pub(super) fn display_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).escape_debug().to_string();
    match text.char_indices().nth(MAX_DISPLAY_NAME) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], raw.len()),
        None => text,
    }
}

/// Refuse paths (and symlink targets) longer or deeper than the limits.
fn check_path(raw: &[u8], depth: usize, what: &str) -> Result<(), Fail> {
    if raw.len() > limits::MAX_PATH_BYTES {
        return Err(Fail::Limit(LimitExceeded::new(
            format!("the {what}'s length ({} bytes)", raw.len()),
            limits::MAX_PATH_BYTES as u64,
            "bytes",
        )));
    }
    if depth > limits::MAX_PATH_DEPTH {
        return Err(Fail::Limit(LimitExceeded::new(
            format!("the {what}'s depth ({depth} components)"),
            limits::MAX_PATH_DEPTH as u64,
            "components",
        )));
    }
    Ok(())
}

/// Split an entry path into components: empty and `.` components dropped (so a leading `/`
/// is ignored), `..` refused.
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, Fail> {
    if raw.contains(&0) {
        return Err(Fail::Unsafe("the path contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(Fail::Unsafe(
                    "the path has a `..` component, which could escape the destination",
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(parts)
}

/// What an entry's header and PAX records say about it.
struct Header {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// What was at an entry's path before it was written.
enum Existing {
    Nothing,
    /// A directory, kept (the new entry is a directory too).
    Dir,
    /// A whiteout made earlier from this layer: the new entry replaces it, and a directory
    /// must then hide the lower layers' contents (opaque).
    Whiteout,
}

fn open_dir_at(parent: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rfs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Remove `name` (a directory tree) below `parent` without following symlinks.
fn remove_tree_at(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let dir = open_dir_at(parent, name)?;
    let mut children = Vec::new();
    for entry in rfs::Dir::read_from(&dir)? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push(child.to_vec());
        }
    }
    for child in children {
        let st = rfs::statat(&dir, &child[..], AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree_at(dir.as_fd(), &child)?;
        } else {
            rfs::unlinkat(&dir, &child[..], AtFlags::empty())?;
        }
    }
    rfs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

struct Unpacker<'a> {
    root: OwnedFd,
    layer: &'a Path,
    opts: &'a UnpackOptions,
    /// Directories seen, by path; their metadata is applied at the end, deepest first.
    dirs: BTreeMap<Vec<u8>, Header>,
    /// Paths whited out by this layer (to tell them apart from entries it adds).
    whiteouts: HashSet<Vec<u8>>,
    /// File data written so far (catches sparse files that expand past the limit).
    written: u64,
    stats: Counts,
}

impl Unpacker<'_> {
    fn error(&self, raw: &[u8], fail: Fail) -> Error {
        let entry = display_name(raw);
        let layer = self.layer.to_owned();
        match fail {
            Fail::Unsafe(reason) => Error::UnsafeEntry {
                layer,
                entry,
                reason,
            },
            Fail::Io(action, source) => Error::UnpackEntry {
                layer,
                entry,
                action,
                source,
            },
            Fail::Read(source) => Error::ReadLayer { layer, source },
            Fail::UnmappedOwner(uid, gid) => Error::UnmappedOwner {
                layer,
                entry,
                uid,
                gid,
            },
            Fail::TooLarge => Error::LayerTooLarge {
                layer,
                limit: self.opts.max_bytes,
            },
            Fail::Limit(limit) => Error::UnpackEntry {
                layer,
                entry,
                action: "unpack",
                source: limit.into_io(),
            },
        }
    }

    /// Open the directory at `comps` from the root, one component at a time, never following
    /// a symlink. Missing directories are created (mode 0755) when `create` is set.
    fn walk(&self, comps: &[&[u8]], create: bool) -> Result<OwnedFd, Fail> {
        let mut fd = self
            .root
            .try_clone()
            .map_err(|e| Fail::Io("open unpack destination", e))?;
        for comp in comps {
            let next = match open_dir_at(fd.as_fd(), comp) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(&fd, *comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_fail("create parent directory")(e)),
                    }
                    let dir = open_dir_at(fd.as_fd(), comp).map_err(io_fail("open directory"))?;
                    // mkdir's mode went through the umask.
                    rfs::fchmod(&dir, Mode::from_raw_mode(0o755))
                        .map_err(io_fail("set permissions of"))?;
                    dir
                }
                Err(Errno::NOENT) => {
                    return Err(Fail::Unsafe("a parent directory does not exist"));
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(Fail::Unsafe(
                        "a parent is a symlink or not a directory; refusing to write through it",
                    ));
                }
                Err(e) => return Err(io_fail("open parent directory")(e)),
            };
            fd = next;
        }
        Ok(fd)
    }

    /// Clear the way for a new entry `name` in `parent`: keep an existing directory when the
    /// new entry is one, otherwise remove whatever is there (a directory with its contents).
    fn clear(&self, parent: &OwnedFd, name: &[u8], new_is_dir: bool) -> Result<Existing, Fail> {
        let st = match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Existing::Nothing),
            Err(e) => return Err(io_fail("inspect existing entry")(e)),
        };
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Directory {
            if new_is_dir {
                return Ok(Existing::Dir);
            }
            remove_tree_at(parent.as_fd(), name).map_err(io_fail("replace directory"))?;
            return Ok(Existing::Nothing);
        }
        rfs::unlinkat(parent, name, AtFlags::empty()).map_err(io_fail("replace existing entry"))?;
        if ft == FileType::CharacterDevice && st.st_rdev == 0 {
            Ok(Existing::Whiteout)
        } else {
            Ok(Existing::Nothing)
        }
    }

    fn header<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Header, Fail> {
        let h = entry.header();
        let bad = |_| Fail::Unsafe("the tar header is malformed");
        let mut out = Header {
            mode: h.mode().map_err(bad)? & 0o7777,
            // The tar reader already applied PAX `uid`/`gid` records.
            uid: u32::try_from(h.uid().map_err(bad)?)
                .map_err(|_| Fail::Unsafe("the uid does not fit in 32 bits"))?,
            gid: u32::try_from(h.gid().map_err(bad)?)
                .map_err(|_| Fail::Unsafe("the gid does not fit in 32 bits"))?,
            mtime: i64::try_from(h.mtime().map_err(bad)?).unwrap_or(i64::MAX),
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(Fail::Read)? {
            for ext in pax {
                let ext = ext.map_err(|_| Fail::Unsafe("a PAX record is malformed"))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if !is_overlay_xattr(name) {
                        out.xattrs
                            .push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                } else if key == "mtime" {
                    // Seconds with an optional fraction; the fraction is dropped.
                    let value = ext.value().unwrap_or("");
                    let secs = value.split('.').next().unwrap_or("");
                    if let Ok(secs) = secs.parse::<i64>() {
                        out.mtime = secs;
                    }
                }
            }
        }
        Ok(out)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Fail> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            self.stats.skipped_other += 1;
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        check_path(&raw, 0, "path")?;
        let comps = components(&raw)?;
        check_path(&raw, comps.len(), "path")?;
        let header = self.header(entry)?;
        let Some((name, parents)) = comps.split_last() else {
            // `./`: the layer's root directory.
            if kind.is_dir() {
                self.dirs.insert(Vec::new(), header);
                return Ok(());
            }
            return Err(Fail::Unsafe("only a directory can name the layer root"));
        };
        let path = comps.join(&b'/');
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parents, name);
        }
        match kind {
            tar::EntryType::Directory => self.dir(parents, name, path, header)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(parents, name, header, entry)?
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(Fail::Unsafe("the symlink has no target"))?
                    .into_owned();
                check_path(&target, 0, "symlink target")?;
                self.symlink(parents, name, &target, header)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(Fail::Unsafe("the hard link has no target"))?
                    .into_owned();
                self.hardlink(parents, name, &path, &target)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let whiteout_like = ft == FileType::CharacterDevice && major == 0 && minor == 0;
                if !self.opts.allow_devices || whiteout_like {
                    self.stats.skipped_devices += 1;
                    return Ok(());
                }
                self.device(parents, name, ft, rfs::makedev(major, minor), header)?;
            }
            _ => return Err(Fail::Unsafe("the entry type is not supported")),
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn whiteout(&mut self, parents: &[&[u8]], name: &[u8]) -> Result<(), Fail> {
        let opaque = self.opts.overlay_xattrs.opaque();
        if name == OPAQUE_MARKER {
            let dir = self.walk(parents, true)?;
            rfs::fsetxattr(&dir, opaque, b"y", XattrFlags::empty())
                .map_err(io_fail("mark directory opaque"))?;
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        if name.starts_with(AUFS_META_PREFIX) {
            self.stats.skipped_other += 1;
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(Fail::Unsafe("the whiteout names no file"));
        }
        let parent = self.walk(parents, true)?;
        let mut path = parents.join(&b'/');
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(target);
        match rfs::statat(&parent, target, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {
                mknodat(
                    &parent,
                    target,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rfs::makedev(0, 0),
                )
                .map_err(io_fail("create whiteout"))?;
            }
            // Whiteouts hide lower layers only: an entry this layer already added stays, but
            // a directory must no longer show the lower layers' contents.
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let dir = open_dir_at(parent.as_fd(), target).map_err(io_fail("open directory"))?;
                rfs::fsetxattr(&dir, opaque, b"y", XattrFlags::empty())
                    .map_err(io_fail("mark directory opaque"))?;
            }
            Ok(_) => {}
            Err(e) => return Err(io_fail("inspect existing entry")(e)),
        }
        self.whiteouts.insert(path);
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn dir(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        path: Vec<u8>,
        header: Header,
    ) -> Result<(), Fail> {
        let parent = self.walk(parents, true)?;
        match self.clear(&parent, name, true)? {
            Existing::Dir => {}
            existing => {
                rfs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                    .map_err(io_fail("create directory"))?;
                if matches!(existing, Existing::Whiteout) || self.whiteouts.contains(&path) {
                    let dir =
                        open_dir_at(parent.as_fd(), name).map_err(io_fail("open directory"))?;
                    rfs::fsetxattr(
                        &dir,
                        self.opts.overlay_xattrs.opaque(),
                        b"y",
                        XattrFlags::empty(),
                    )
                    .map_err(io_fail("mark directory opaque"))?;
                }
            }
        }
        self.dirs.insert(path, header);
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        header: Header,
        data: &mut tar::Entry<'_, R>,
    ) -> Result<(), Fail> {
        let parent = self.walk(parents, true)?;
        self.clear(&parent, name, false)?;
        let fd = rfs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_fail("create file"))?;
        let mut file = File::from(fd);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::Read(e)),
            };
            self.written += n as u64;
            if self.written > self.opts.max_bytes {
                return Err(Fail::TooLarge);
            }
            file.write_all(&buf[..n])
                .map_err(|e| Fail::Io("write file", e))?;
        }
        self.apply_fd_meta(file.as_fd(), &header)
    }

    /// Owner, then mode (chown clears setuid/setgid), then xattrs (chown clears
    /// `security.capability`), then times.
    fn apply_fd_meta(&self, fd: BorrowedFd<'_>, h: &Header) -> Result<(), Fail> {
        if self.opts.preserve_owners {
            rfs::fchown(
                fd,
                Some(rfs::Uid::from_raw(h.uid)),
                Some(rfs::Gid::from_raw(h.gid)),
            )
            .map_err(owner_fail(h))?;
        }
        rfs::fchmod(fd, Mode::from_raw_mode(h.mode as rfs::RawMode))
            .map_err(io_fail("set permissions of"))?;
        if self.opts.preserve_xattrs {
            for (k, v) in &h.xattrs {
                rfs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty())
                    .map_err(io_fail("set extended attribute of"))?;
            }
        }
        rfs::futimens(fd, &timestamps(h.mtime)).map_err(io_fail("set times of"))
    }

    fn symlink(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        target: &[u8],
        h: Header,
    ) -> Result<(), Fail> {
        if target.is_empty() || target.contains(&0) {
            return Err(Fail::Unsafe(
                "the symlink target is empty or contains a NUL byte",
            ));
        }
        let parent = self.walk(parents, true)?;
        self.clear(&parent, name, false)?;
        rfs::symlinkat(target, &parent, name).map_err(io_fail("create symlink"))?;
        if self.opts.preserve_owners {
            rfs::chownat(
                &parent,
                name,
                Some(rfs::Uid::from_raw(h.uid)),
                Some(rfs::Gid::from_raw(h.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(owner_fail(&h))?;
        }
        rfs::utimensat(
            &parent,
            name,
            &timestamps(h.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_fail("set times of"))
    }

    fn hardlink(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        path: &[u8],
        target: &[u8],
    ) -> Result<(), Fail> {
        let tcomps = components(target)
            .map_err(|_| Fail::Unsafe("the hard link target has a `..` component or a NUL byte"))?;
        let Some((tname, tparents)) = tcomps.split_last() else {
            return Err(Fail::Unsafe("the hard link points at the layer root"));
        };
        if tcomps.join(&b'/') == path {
            return Ok(());
        }
        let tparent = self.walk(tparents, false).map_err(|f| match f {
            Fail::Unsafe(_) => Fail::Unsafe(
                "the hard link target goes through a symlink or does not exist in this layer",
            ),
            other => other,
        })?;
        match rfs::statat(&tparent, *tname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(Fail::Unsafe("the hard link target is a directory"));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => {
                return Err(Fail::Unsafe(
                    "the hard link target does not exist in this layer",
                ));
            }
            Err(e) => return Err(io_fail("inspect hard link target")(e)),
        }
        let parent = self.walk(parents, true)?;
        self.clear(&parent, name, false)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        rfs::linkat(&tparent, *tname, &parent, name, AtFlags::empty())
            .map_err(io_fail("create hard link"))
    }

    fn device(
        &mut self,
        parents: &[&[u8]],
        name: &[u8],
        ft: FileType,
        dev: rfs::Dev,
        h: Header,
    ) -> Result<(), Fail> {
        let parent = self.walk(parents, true)?;
        self.clear(&parent, name, false)?;
        mknodat(&parent, name, ft, Mode::from_raw_mode(0o600), dev)
            .map_err(io_fail("create device node"))?;
        if self.opts.preserve_owners {
            rfs::chownat(
                &parent,
                name,
                Some(rfs::Uid::from_raw(h.uid)),
                Some(rfs::Gid::from_raw(h.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(owner_fail(&h))?;
        }
        // The node was just created by us in a directory only we write to: no symlink can be
        // at its name.
        rfs::chmodat(
            &parent,
            name,
            Mode::from_raw_mode(h.mode as rfs::RawMode),
            AtFlags::empty(),
        )
        .map_err(io_fail("set permissions of"))?;
        rfs::utimensat(
            &parent,
            name,
            &timestamps(h.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_fail("set times of"))
    }

    /// Apply directory metadata, deepest first, so neither writing children nor a read-only
    /// mode gets in the way and every directory keeps the mtime its entry gave.
    fn finish_dirs(&mut self) -> Result<(), Error> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta) in dirs.iter().rev() {
            let comps: Vec<&[u8]> = if path.is_empty() {
                Vec::new()
            } else {
                path.split(|b| *b == b'/').collect()
            };
            // A directory replaced later by a symlink or file is skipped.
            let fd = match self.walk(&comps, false) {
                Ok(fd) => fd,
                Err(Fail::Unsafe(_)) => continue,
                Err(other) => return Err(self.error(path, other)),
            };
            self.apply_fd_meta(fd.as_fd(), meta)
                .map_err(|fail| self.error(path, fail))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layer::{Compression, Entry, EntryKind, EntryMeta, FileData, LayerBuilder, Owner};
    use crate::store::Store;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::PathBuf;

    pub(crate) fn is_root() -> bool {
        let root = rustix::process::geteuid().is_root();
        if !root {
            crate::testing::skip("the privileged part of this test needs root");
        }
        root
    }

    /// A tar entry with a raw name (bytes as given, `..` and absolute paths included),
    /// using PAX records for names longer than the header field.
    pub(crate) fn raw_entry(
        tar: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        name: &[u8],
        link: Option<&[u8]>,
        data: &[u8],
        mode: u32,
    ) {
        let mut pax: Vec<(&str, &[u8])> = Vec::new();
        let mut h = tar::Header::new_gnu();
        if name.len() <= 100 {
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
        } else {
            pax.push(("path", name));
        }
        if let Some(link) = link {
            if link.len() <= 100 {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            } else {
                pax.push(("linkpath", link));
            }
        }
        if !pax.is_empty() {
            tar.append_pax_extensions(pax).unwrap();
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append(&h, data).unwrap();
    }

    pub(crate) fn gzip(raw: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(raw).unwrap();
        enc.finish().unwrap()
    }

    /// A gzip layer file in `dir` built by `f`, with its raw tar's digest.
    pub(crate) fn layer_file(
        dir: &Path,
        f: impl FnOnce(&mut tar::Builder<Vec<u8>>),
    ) -> (PathBuf, Digest) {
        let mut tar = tar::Builder::new(Vec::new());
        f(&mut tar);
        let raw = tar.into_inner().unwrap();
        let path = dir.join("layer.tar.gz");
        std::fs::write(&path, gzip(&raw)).unwrap();
        (path, Digest::of(&raw))
    }

    /// Directories are told from the start of a layer: all present, one missing, one that is
    /// a file, and one that comes only after more bytes than the scan reads.
    #[test]
    fn leading_dirs_are_read_from_the_start_of_a_layer() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("replaced")).unwrap();
        let big = vec![7u8; (LEADING_SCAN_BYTES + 1024) as usize];
        let (path, _) = layer_file(tmp.path(), |tar| {
            raw_entry(tar, tar::EntryType::Directory, b"app/", None, b"", 0o755);
            raw_entry(
                tar,
                tar::EntryType::Directory,
                b"./app/src/",
                None,
                b"",
                0o755,
            );
            raw_entry(tar, tar::EntryType::Regular, b"app/file", None, b"x", 0o644);
            raw_entry(tar, tar::EntryType::Regular, b"big", None, &big, 0o644);
            raw_entry(tar, tar::EntryType::Directory, b"late/", None, b"", 0o755);
        });
        let (replaced, _) = layer_file(&tmp.path().join("replaced"), |tar| {
            raw_entry(tar, tar::EntryType::Directory, b"app/", None, b"", 0o755);
            raw_entry(
                tar,
                tar::EntryType::Symlink,
                b"app",
                Some(b"/etc"),
                b"",
                0o777,
            );
        });
        let present = |dirs: &[&str]| {
            let dirs: Vec<String> = dirs.iter().map(|d| (*d).to_owned()).collect();
            leading_dirs_present(
                File::open(&path).unwrap(),
                media_types::OCI_LAYER_GZIP,
                &path,
                &dirs,
            )
            .unwrap()
        };
        assert!(present(&["app", "app/src"]));
        assert!(!present(&["app", "app/missing"]));
        assert!(!present(&["app", "app/file"]));
        assert!(!present(&["late"]), "past the bytes scanned: not known");
        let dirs = vec!["app".to_owned()];
        let file = File::open(&replaced).unwrap();
        assert!(
            !leading_dirs_present(file, media_types::OCI_LAYER_GZIP, &replaced, &dirs).unwrap(),
            "a later entry of the same name wins"
        );
        // What the entries say of each directory comes along.
        let (modes, _) = layer_file(&tmp.path().join("replaced"), |tar| {
            raw_entry(tar, tar::EntryType::Directory, b"tmp/", None, b"", 0o1777);
            raw_entry(tar, tar::EntryType::Directory, b"home/", None, b"", 0o750);
        });
        let dirs = vec!["tmp".to_owned(), "home".to_owned()];
        let known = leading_dirs(
            File::open(&modes).unwrap(),
            media_types::OCI_LAYER_GZIP,
            &modes,
            &dirs,
        )
        .unwrap()
        .expect("both are there");
        assert_eq!(
            known["tmp"],
            DirMeta {
                mode: 0o1777,
                uid: 0,
                gid: 0
            }
        );
        assert_eq!(known["home"].mode, 0o750);
    }

    /// A temporary area with an empty destination and a sentinel directory outside it.
    pub(crate) struct Scene {
        pub(crate) tmp: tempfile::TempDir,
        pub(crate) dest: PathBuf,
        pub(crate) sentinel: PathBuf,
    }

    impl Scene {
        pub(crate) fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let dest = tmp.path().join("dest");
            let sentinel = tmp.path().join("outside");
            std::fs::create_dir(&dest).unwrap();
            std::fs::create_dir(&sentinel).unwrap();
            std::fs::write(sentinel.join("secret"), "untouched").unwrap();
            Self {
                tmp,
                dest,
                sentinel,
            }
        }

        fn unpack(
            &self,
            opts: &UnpackOptions,
            f: impl FnOnce(&mut tar::Builder<Vec<u8>>),
        ) -> Result<UnpackStats, Error> {
            let (blob, _) = layer_file(self.tmp.path(), f);
            unpack_layer(&blob, media_types::OCI_LAYER_GZIP, &self.dest, opts)
        }

        /// The sentinel holds only its original file, unchanged and unlinked elsewhere.
        fn assert_sentinel_untouched(&self) {
            let names: Vec<_> = std::fs::read_dir(&self.sentinel)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["secret"], "something was written outside dest");
            let secret = self.sentinel.join("secret");
            assert_eq!(std::fs::read_to_string(&secret).unwrap(), "untouched");
            assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
        }
    }

    fn opts() -> UnpackOptions {
        UnpackOptions::for_current_user()
    }

    fn lmode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode()
    }

    #[test]
    fn round_trip_of_builder_layer_keeps_tree() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let root = is_root();
        let mut b = LayerBuilder::new();
        let owner = Owner {
            uid: 1000,
            gid: 1001,
        };
        b.add_bytes("usr/bin/tool", b"#!/bin/sh\n".to_vec(), 0o4755, owner)
            .unwrap();
        b.add(
            "tmp",
            Entry {
                kind: EntryKind::Dir,
                mode: 0o1777,
                owner: Owner::ROOT,
            },
        )
        .unwrap();
        b.add(
            "ro",
            Entry {
                kind: EntryKind::Dir,
                mode: 0o555,
                owner: Owner::ROOT,
            },
        )
        .unwrap();
        b.add_bytes("ro/inside", b"x".to_vec(), 0o444, Owner::ROOT)
            .unwrap();
        let long = format!("deep/{}/{}", "d".repeat(90), "f".repeat(120));
        b.add_bytes(&long, b"long".to_vec(), 0o644, Owner::ROOT)
            .unwrap();
        for odd in [
            "odd/with space",
            "odd/new\nline",
            "odd/ünïcødé ✓",
            "odd/tab\there",
        ] {
            b.add_bytes(odd, odd.as_bytes().to_vec(), 0o640, Owner::ROOT)
                .unwrap();
        }
        b.add(
            "usr/bin/sh",
            Entry {
                kind: EntryKind::Symlink("/bin/busybox".into()),
                mode: 0o777,
                owner,
            },
        )
        .unwrap();
        b.add(
            "usr/bin/tool-link",
            Entry {
                kind: EntryKind::Hardlink("usr/bin/tool".into()),
                mode: 0o4755,
                owner,
            },
        )
        .unwrap();
        let mut meta = EntryMeta::default().with_xattr("user.note", b"hi".to_vec());
        if root {
            // cap_net_bind_service+ep, v2 format.
            let cap = [
                0x00, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0,
                0, 0, 0, 0,
            ];
            meta = meta.with_xattr("security.capability", cap.to_vec());
        }
        b.add_with_meta(
            "usr/bin/capped",
            Entry {
                kind: EntryKind::File(FileData::Bytes(b"cap".to_vec().into())),
                mode: 0o755,
                owner: Owner::ROOT,
            },
            meta,
        )
        .unwrap();
        let layer = b.write(&store, Compression::Gzip, 1_700_000_000).unwrap();

        let out = tempfile::tempdir().unwrap();
        let dest = out.path();
        let stats = unpack_layer(
            &store.blob_path(&layer.blob.digest),
            &layer.blob.media_type,
            dest,
            &opts().with_xattrs(true),
        )
        .unwrap();
        assert_eq!(
            stats.diff_id, layer.diff_id,
            "diff_id must match the writer's"
        );
        assert_eq!(stats.whiteouts, 0);

        let tool = dest.join("usr/bin/tool");
        assert_eq!(std::fs::read(&tool).unwrap(), b"#!/bin/sh\n");
        assert_eq!(lmode(&tool) & 0o7777, 0o4755, "setuid lost");
        assert_eq!(lmode(&dest.join("tmp")) & 0o7777, 0o1777, "sticky lost");
        assert_eq!(lmode(&dest.join("ro")) & 0o7777, 0o555);
        assert_eq!(std::fs::read(dest.join("ro/inside")).unwrap(), b"x");
        assert_eq!(std::fs::read(dest.join(&long)).unwrap(), b"long");
        for odd in [
            "odd/with space",
            "odd/new\nline",
            "odd/ünïcødé ✓",
            "odd/tab\there",
        ] {
            assert_eq!(std::fs::read(dest.join(odd)).unwrap(), odd.as_bytes());
        }
        assert_eq!(
            std::fs::read_link(dest.join("usr/bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        let (a, b) = (
            std::fs::metadata(&tool).unwrap(),
            std::fs::metadata(dest.join("usr/bin/tool-link")).unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "hard link lost");
        // Directories get their mtime after their contents were written.
        for p in ["usr", "usr/bin", "ro", "deep", "usr/bin/tool"] {
            let m = std::fs::symlink_metadata(dest.join(p)).unwrap();
            assert_eq!(m.mtime(), 1_700_000_000, "{p}");
        }
        assert_eq!(
            std::fs::symlink_metadata(dest.join("usr/bin/sh"))
                .unwrap()
                .mtime(),
            1_700_000_000
        );
        let capped = dest.join("usr/bin/capped");
        if rustix::fs::lgetxattr_query(&capped, "user.note").is_ok() {
            let mut v = [0u8; 8];
            let n = rustix::fs::lgetxattr(&capped, "user.note", &mut v[..]).unwrap();
            assert_eq!(&v[..n], b"hi");
        }
        if root {
            assert_eq!((a.uid(), a.gid()), (1000, 1001));
            let link = std::fs::symlink_metadata(dest.join("usr/bin/sh")).unwrap();
            assert_eq!((link.uid(), link.gid()), (1000, 1001), "lchown");
            assert!(rustix::fs::lgetxattr_query(&capped, "security.capability").unwrap() > 0);
        }
    }

    #[test]
    fn whiteouts_and_opaque_markers_become_overlay_form() {
        let scene = Scene::new();
        let o = opts();
        let stats = scene
            .unpack(&o, |t| {
                raw_entry(t, tar::EntryType::Directory, b"a/", None, b"", 0o755);
                raw_entry(t, tar::EntryType::Regular, b"a/.wh.gone", None, b"", 0o644);
                raw_entry(t, tar::EntryType::Regular, b"b/.wh..wh..opq", None, b"", 0);
                raw_entry(t, tar::EntryType::Regular, b"b/keep", None, b"k", 0o644);
                raw_entry(t, tar::EntryType::Regular, b".wh.top", None, b"", 0);
                raw_entry(t, tar::EntryType::Regular, b".wh..wh.plnk", None, b"", 0);
            })
            .unwrap();
        assert_eq!(
            (stats.whiteouts, stats.opaque_dirs, stats.skipped_other),
            (2, 1, 1)
        );
        for w in ["a/gone", "top"] {
            let m = std::fs::symlink_metadata(scene.dest.join(w)).unwrap();
            assert!(m.file_type().is_char_device() && m.rdev() == 0, "{w}");
        }
        for marker in ["a/.wh.gone", "b/.wh..wh..opq", ".wh.top", ".wh..wh.plnk"] {
            assert!(!scene.dest.join(marker).exists(), "{marker} was written");
        }
        let mut v = [0u8; 4];
        let n = rustix::fs::lgetxattr(scene.dest.join("b"), o.overlay_xattrs.opaque(), &mut v[..])
            .unwrap();
        assert_eq!(&v[..n], b"y");
        assert_eq!(std::fs::read(scene.dest.join("b/keep")).unwrap(), b"k");
    }

    #[test]
    fn whiteout_then_directory_in_same_layer_makes_it_opaque() {
        let scene = Scene::new();
        let o = opts();
        scene
            .unpack(&o, |t| {
                raw_entry(t, tar::EntryType::Regular, b".wh.etc", None, b"", 0);
                raw_entry(t, tar::EntryType::Directory, b"etc/", None, b"", 0o755);
                raw_entry(t, tar::EntryType::Regular, b"etc/new", None, b"n", 0o644);
            })
            .unwrap();
        let etc = scene.dest.join("etc");
        assert!(std::fs::symlink_metadata(&etc).unwrap().is_dir());
        let mut v = [0u8; 4];
        let n = rustix::fs::lgetxattr(&etc, o.overlay_xattrs.opaque(), &mut v[..]).unwrap();
        assert_eq!(&v[..n], b"y");
    }

    #[test]
    fn later_entries_replace_earlier_ones_like_tar() {
        let scene = Scene::new();
        scene
            .unpack(&opts(), |t| {
                raw_entry(t, tar::EntryType::Regular, b"x", None, b"first", 0o644);
                raw_entry(t, tar::EntryType::Regular, b"x", None, b"second", 0o600);
                raw_entry(t, tar::EntryType::Directory, b"d/", None, b"", 0o755);
                raw_entry(t, tar::EntryType::Regular, b"d/a", None, b"a", 0o644);
                raw_entry(t, tar::EntryType::Directory, b"d/", None, b"", 0o700);
                raw_entry(t, tar::EntryType::Regular, b"y", None, b"file", 0o644);
                raw_entry(t, tar::EntryType::Directory, b"y/", None, b"", 0o755);
                raw_entry(t, tar::EntryType::Directory, b"z/", None, b"", 0o755);
                raw_entry(t, tar::EntryType::Regular, b"z/child", None, b"c", 0o644);
                raw_entry(t, tar::EntryType::Regular, b"z", None, b"now a file", 0o644);
            })
            .unwrap();
        let d = &scene.dest;
        assert_eq!(std::fs::read(d.join("x")).unwrap(), b"second");
        assert_eq!(lmode(&d.join("x")) & 0o777, 0o600);
        assert_eq!(
            std::fs::read(d.join("d/a")).unwrap(),
            b"a",
            "directory must stay"
        );
        assert_eq!(lmode(&d.join("d")) & 0o777, 0o700, "last metadata wins");
        assert!(d.join("y").is_dir());
        assert_eq!(std::fs::read(d.join("z")).unwrap(), b"now a file");
    }

    #[test]
    fn dotdot_entry_is_refused_and_names_the_entry() {
        let scene = Scene::new();
        let err = scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Regular,
                    b"../outside/pwned",
                    None,
                    b"x",
                    0o644,
                );
            })
            .unwrap_err();
        assert!(matches!(err, Error::UnsafeEntry { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("../outside/pwned") && msg.contains("layer.tar.gz"),
            "{msg}"
        );
        scene.assert_sentinel_untouched();
    }

    #[test]
    fn absolute_entry_is_kept_inside_dest() {
        let scene = Scene::new();
        let abs = format!("{}/pwned", scene.sentinel.display());
        scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Regular,
                    abs.as_bytes(),
                    None,
                    b"x",
                    0o644,
                );
            })
            .unwrap();
        scene.assert_sentinel_untouched();
        let inside = scene.dest.join(abs.trim_start_matches('/'));
        assert_eq!(std::fs::read(inside).unwrap(), b"x");
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let sentinel_target = |s: &Scene| s.sentinel.to_str().unwrap().as_bytes().to_vec();
        // A file, a directory, a whiteout and an opaque marker behind a symlinked parent.
        for name in [
            &b"link/file"[..],
            b"link/sub/",
            b"link/.wh.secret",
            b"link/.wh..wh..opq",
        ] {
            let scene = Scene::new();
            let target = sentinel_target(&scene);
            let kind = if name.ends_with(b"/") {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            };
            let err = scene
                .unpack(&opts(), |t| {
                    raw_entry(
                        t,
                        tar::EntryType::Symlink,
                        b"link",
                        Some(&target),
                        b"",
                        0o777,
                    );
                    raw_entry(t, kind, name, None, b"pwned", 0o644);
                })
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, Error::UnsafeEntry { .. }) && msg.contains("symlink"),
                "{msg}"
            );
            assert!(msg.contains(&display_name(name)), "{msg}");
            scene.assert_sentinel_untouched();
        }
    }

    #[test]
    fn a_file_replacing_a_symlink_does_not_write_through_it() {
        let scene = Scene::new();
        let target = format!("{}/created", scene.sentinel.display());
        scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Symlink,
                    b"f",
                    Some(target.as_bytes()),
                    b"",
                    0o777,
                );
                raw_entry(t, tar::EntryType::Regular, b"f", None, b"mine", 0o644);
            })
            .unwrap();
        scene.assert_sentinel_untouched();
        assert_eq!(std::fs::read(scene.dest.join("f")).unwrap(), b"mine");
    }

    #[test]
    fn hostile_hardlinks_are_refused() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("absolute path outside the layer", b"/etc/passwd".to_vec()),
            ("dotdot", b"../outside/secret".to_vec()),
            ("through a symlinked dir", b"d/secret".to_vec()),
        ];
        for (what, link) in cases {
            let scene = Scene::new();
            let target = scene.sentinel.to_str().unwrap().as_bytes().to_vec();
            let passwd_links = std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();
            let err = scene
                .unpack(&opts(), |t| {
                    raw_entry(t, tar::EntryType::Symlink, b"d", Some(&target), b"", 0o777);
                    raw_entry(t, tar::EntryType::Link, b"h", Some(&link), b"", 0o644);
                })
                .unwrap_err();
            assert!(matches!(err, Error::UnsafeEntry { .. }), "{what}: {err}");
            assert!(err.to_string().contains("`h`"), "{what}: {err}");
            assert!(!scene.dest.join("h").exists(), "{what}");
            scene.assert_sentinel_untouched();
            assert_eq!(
                std::fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
                passwd_links
            );
        }
    }

    #[test]
    fn hardlink_to_a_symlink_links_the_symlink_itself() {
        let scene = Scene::new();
        let target = format!("{}/secret", scene.sentinel.display());
        scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Symlink,
                    b"s",
                    Some(target.as_bytes()),
                    b"",
                    0o777,
                );
                raw_entry(t, tar::EntryType::Link, b"h", Some(b"s"), b"", 0o777);
            })
            .unwrap();
        let h = std::fs::symlink_metadata(scene.dest.join("h")).unwrap();
        assert!(h.file_type().is_symlink());
        scene.assert_sentinel_untouched();
    }

    fn chain(err: &dyn std::error::Error) -> String {
        let mut out = err.to_string();
        let mut cur = err.source();
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }

    #[test]
    fn bomb_hits_the_ratio_bound_whatever_the_codec() {
        let zeros = vec![0u8; 80 << 20];
        for (media_type, compress) in [
            (media_types::OCI_LAYER_GZIP, gzip as fn(&[u8]) -> Vec<u8>),
            (media_types::OCI_LAYER_ZSTD, |raw: &[u8]| {
                zstd::stream::encode_all(raw, 3).unwrap()
            }),
        ] {
            let scene = Scene::new();
            let mut tar = tar::Builder::new(Vec::new());
            raw_entry(
                &mut tar,
                tar::EntryType::Regular,
                b"bomb",
                None,
                &zeros,
                0o644,
            );
            let blob = scene.tmp.path().join("bomb");
            std::fs::write(&blob, compress(&tar.into_inner().unwrap())).unwrap();
            let err = unpack_layer(&blob, media_type, &scene.dest, &opts().with_max_ratio(16))
                .unwrap_err();
            let text = chain(&err);
            assert!(matches!(err, Error::ReadLayer { .. }), "{text}");
            assert!(
                text.contains("decompression bomb") && text.contains(limits::MAX_LAYER_RATIO_ENV),
                "{text}"
            );
            // Nothing much was written: at most the floor.
            let written = std::fs::metadata(scene.dest.join("bomb")).map_or(0, |m| m.len());
            assert!(written <= limits::LAYER_RATIO_FLOOR_BYTES, "{written}");
            scene.assert_sentinel_untouched();
            // Without the ratio bound the same layer unpacks.
            let scene = Scene::new();
            std::fs::copy(&blob, scene.tmp.path().join("bomb")).unwrap();
            unpack_layer(&blob, media_type, &scene.dest, &opts().with_max_ratio(0)).unwrap();
        }
    }

    #[test]
    fn too_many_entries_are_refused() {
        let scene = Scene::new();
        let err = scene
            .unpack(&opts().with_max_entries(10), |t| {
                for i in 0..11 {
                    raw_entry(
                        t,
                        tar::EntryType::Regular,
                        format!("f{i}").as_bytes(),
                        None,
                        b"",
                        0o644,
                    );
                }
            })
            .unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains("number of tar entries exceeds the limit of 10 entries")
                && text.contains(limits::MAX_LAYER_ENTRIES_ENV),
            "{text}"
        );
        let scene = Scene::new();
        let stats = scene
            .unpack(&opts().with_max_entries(10), |t| {
                for i in 0..10 {
                    raw_entry(
                        t,
                        tar::EntryType::Regular,
                        format!("f{i}").as_bytes(),
                        None,
                        b"",
                        0o644,
                    );
                }
            })
            .unwrap();
        assert_eq!(stats.entries, 10);
    }

    #[test]
    fn too_deep_or_too_long_paths_are_refused() {
        let scene = Scene::new();
        let deep = vec!["d"; limits::MAX_PATH_DEPTH + 1].join("/");
        let err = scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Regular,
                    deep.as_bytes(),
                    None,
                    b"x",
                    0o644,
                );
            })
            .unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains("depth (257 components) exceeds the limit of 256 components"),
            "{text}"
        );
        assert!(text.contains("…"), "long names are cut short: {text}");
        assert!(!scene.dest.join("d").exists(), "nothing of it was written");

        let scene = Scene::new();
        let long = "n".repeat(limits::MAX_PATH_BYTES + 1);
        let err = scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Regular,
                    long.as_bytes(),
                    None,
                    b"x",
                    0o644,
                );
            })
            .unwrap_err();
        assert!(
            chain(&err).contains("length (4097 bytes) exceeds the limit of 4096 bytes"),
            "{}",
            chain(&err)
        );

        let scene = Scene::new();
        let err = scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Symlink,
                    b"link",
                    Some(long.as_bytes()),
                    b"",
                    0o777,
                );
            })
            .unwrap_err();
        assert!(
            chain(&err).contains("symlink target's length"),
            "{}",
            chain(&err)
        );

        // At the limits, fine.
        let scene = Scene::new();
        let deepest = vec!["d"; limits::MAX_PATH_DEPTH].join("/");
        scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Regular,
                    deepest.as_bytes(),
                    None,
                    b"x",
                    0o644,
                );
            })
            .unwrap();
    }

    #[test]
    fn huge_long_name_headers_are_refused_before_they_are_held() {
        let scene = Scene::new();
        let (blob, _) = layer_file(scene.tmp.path(), |t| {
            // A GNU long-name entry of 8 MiB: the tar reader would hold it in memory.
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(tar::EntryType::GNULongName);
            h.set_mode(0o644);
            h.set_size(8 << 20);
            h.set_cksum();
            t.append(&h, &vec![b'a'; 8 << 20][..]).unwrap();
            raw_entry(t, tar::EntryType::Regular, b"x", None, b"x", 0o644);
        });
        let err =
            unpack_layer(&blob, media_types::OCI_LAYER_GZIP, &scene.dest, &opts()).unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains("tar metadata of one entry") && text.contains("1048576 bytes"),
            "{text}"
        );
    }

    #[test]
    fn gzip_bomb_hits_the_size_limit() {
        let scene = Scene::new();
        let zeros = vec![0u8; 32 << 20];
        let (blob, _) = layer_file(scene.tmp.path(), |t| {
            raw_entry(t, tar::EntryType::Regular, b"bomb", None, &zeros, 0o644);
        });
        let compressed = std::fs::metadata(&blob).unwrap().len();
        assert!(
            compressed < 1 << 20,
            "fixture should be small: {compressed}"
        );
        let err = unpack_layer(
            &blob,
            media_types::OCI_LAYER_GZIP,
            &scene.dest,
            &opts().with_max_bytes(1 << 20),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::LayerTooLarge { limit, .. } if limit == 1 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        scene.assert_sentinel_untouched();
    }

    #[test]
    fn devices_are_skipped_unless_allowed() {
        let scene = Scene::new();
        let stats = scene
            .unpack(&UnpackOptions::default(), |t| {
                raw_entry(t, tar::EntryType::Fifo, b"pipe", None, b"", 0o644);
                raw_entry(t, tar::EntryType::Char, b"null", None, b"", 0o666);
            })
            .unwrap();
        assert_eq!((stats.skipped_devices, stats.entries), (2, 0));
        assert!(!scene.dest.join("pipe").exists());
        if is_root() {
            let scene = Scene::new();
            let stats = scene
                .unpack(&UnpackOptions::privileged(), |t| {
                    raw_entry(t, tar::EntryType::Fifo, b"pipe", None, b"", 0o644);
                    let mut h = tar::Header::new_gnu();
                    h.set_path("dev/null").unwrap();
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_device_major(1).unwrap();
                    h.set_device_minor(3).unwrap();
                    h.set_mode(0o666);
                    h.set_uid(0);
                    h.set_gid(0);
                    h.set_mtime(0);
                    h.set_size(0);
                    h.set_cksum();
                    t.append(&h, &[][..]).unwrap();
                })
                .unwrap();
            assert_eq!(stats.skipped_devices, 0);
            let pipe = std::fs::symlink_metadata(scene.dest.join("pipe")).unwrap();
            assert!(pipe.file_type().is_fifo());
            assert_eq!(pipe.mode() & 0o777, 0o644);
            let null = std::fs::symlink_metadata(scene.dest.join("dev/null")).unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(
                (
                    rustix::fs::major(null.rdev()),
                    rustix::fs::minor(null.rdev())
                ),
                (1, 3)
            );
        }
    }

    #[test]
    fn uncompressed_zstd_and_docker_media_types_unpack() {
        let mut tar = tar::Builder::new(Vec::new());
        raw_entry(
            &mut tar,
            tar::EntryType::Regular,
            b"hello",
            None,
            b"hi",
            0o644,
        );
        let raw = tar.into_inner().unwrap();
        let diff_id = Digest::of(&raw);
        let zst = zstd::encode_all(&raw[..], 3).unwrap();
        for (media_type, bytes) in [
            (media_types::OCI_LAYER_TAR, raw.clone()),
            (media_types::DOCKER_LAYER_TAR, raw.clone()),
            (media_types::DOCKER_LAYER_GZIP, gzip(&raw)),
            (media_types::OCI_LAYER_ZSTD, zst),
        ] {
            let scene = Scene::new();
            let blob = scene.tmp.path().join("blob");
            std::fs::write(&blob, bytes).unwrap();
            let stats = unpack_layer(&blob, media_type, &scene.dest, &opts()).unwrap();
            assert_eq!(stats.diff_id, diff_id, "{media_type}");
            assert_eq!(stats.tar_bytes, raw.len() as u64);
            assert_eq!(std::fs::read(scene.dest.join("hello")).unwrap(), b"hi");
        }
        let scene = Scene::new();
        let blob = scene.tmp.path().join("blob");
        std::fs::write(&blob, &raw).unwrap();
        let err = unpack_layer(&blob, "application/x-rar", &scene.dest, &opts()).unwrap_err();
        assert!(err.to_string().contains("application/x-rar"), "{err}");
        // Only into an empty directory.
        let err =
            unpack_layer(&blob, media_types::OCI_LAYER_TAR, scene.tmp.path(), &opts()).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }

    #[test]
    fn diff_id_covers_padding_after_the_end_of_archive() {
        let mut tar = tar::Builder::new(Vec::new());
        raw_entry(&mut tar, tar::EntryType::Regular, b"f", None, b"x", 0o644);
        let mut raw = tar.into_inner().unwrap();
        // Some writers pad to a 10 KiB record.
        raw.resize(raw.len().next_multiple_of(10240) + 10240, 0);
        let scene = Scene::new();
        let blob = scene.tmp.path().join("blob.gz");
        std::fs::write(&blob, gzip(&raw)).unwrap();
        let stats = unpack_layer(&blob, media_types::OCI_LAYER_GZIP, &scene.dest, &opts()).unwrap();
        assert_eq!(stats.diff_id, Digest::of(&raw));
    }

    #[test]
    fn corrupt_stream_is_a_read_error() {
        let scene = Scene::new();
        let blob = scene.tmp.path().join("blob.gz");
        std::fs::write(&blob, b"this is not gzip").unwrap();
        let err =
            unpack_layer(&blob, media_types::OCI_LAYER_GZIP, &scene.dest, &opts()).unwrap_err();
        assert!(matches!(err, Error::ReadLayer { .. }), "{err}");
    }

    #[test]
    fn pax_long_names_and_link_targets_work_and_are_checked() {
        let scene = Scene::new();
        let long_dir = "p".repeat(150);
        let long_file = format!("{long_dir}/{}", "q".repeat(150));
        let long_target = format!("/{}", "t".repeat(200));
        scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Regular,
                    long_file.as_bytes(),
                    None,
                    b"L",
                    0o644,
                );
                raw_entry(
                    t,
                    tar::EntryType::Link,
                    b"hl",
                    Some(long_file.as_bytes()),
                    b"",
                    0o644,
                );
                raw_entry(
                    t,
                    tar::EntryType::Symlink,
                    b"sl",
                    Some(long_target.as_bytes()),
                    b"",
                    0o777,
                );
                raw_entry(t, tar::EntryType::Directory, b"./", None, b"", 0o711);
            })
            .unwrap();
        let d = &scene.dest;
        assert_eq!(std::fs::read(d.join(&long_file)).unwrap(), b"L");
        assert_eq!(std::fs::read(d.join("hl")).unwrap(), b"L");
        assert_eq!(
            std::fs::read_link(d.join("sl")).unwrap(),
            Path::new(&long_target)
        );
        assert_eq!(lmode(d) & 0o777, 0o711, "`./` sets the root's metadata");

        // A `..` hidden in a PAX path is refused as well.
        let scene = Scene::new();
        let sneaky = format!("{}/../../../outside/pwned", "a/".repeat(60));
        let err = scene
            .unpack(&opts(), |t| {
                raw_entry(
                    t,
                    tar::EntryType::Regular,
                    sneaky.as_bytes(),
                    None,
                    b"x",
                    0o644,
                );
            })
            .unwrap_err();
        assert!(matches!(err, Error::UnsafeEntry { .. }), "{err}");
        scene.assert_sentinel_untouched();
    }

    #[test]
    fn overlay_xattrs_in_a_layer_are_dropped() {
        if !is_root() {
            return;
        }
        let scene = Scene::new();
        scene
            .unpack(&UnpackOptions::privileged(), |t| {
                t.append_pax_extensions([
                    ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
                    ("SCHILY.xattr.user.ok", &b"1"[..]),
                ])
                .unwrap();
                raw_entry(t, tar::EntryType::Directory, b"d/", None, b"", 0o755);
            })
            .unwrap();
        let d = scene.dest.join("d");
        assert!(rustix::fs::lgetxattr_query(&d, "trusted.overlay.redirect").is_err());
        assert_eq!(rustix::fs::lgetxattr_query(&d, "user.ok").unwrap(), 1);
    }
}
