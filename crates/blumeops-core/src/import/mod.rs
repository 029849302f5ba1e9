//! Importing images built elsewhere into the store, as OCI images ready to push.
//!
//! [`import_docker_archive`] reads a docker archive (what `docker save`, `skopeo copy ...
//! docker-archive:` and Nix's `dockerTools` write), and stores its config and layers as an
//! OCI image: uncompressed layers are compressed with the crate's pinned gzip settings,
//! gzip layers are kept as they are, and every layer is checked against the config's
//! `rootfs.diff_ids`.

mod docker_archive;

use std::io;
use std::path::PathBuf;

pub use docker_archive::{MAX_METADATA_BYTES, import_docker_archive, import_docker_archive_with};

use crate::error::ErrorKind;
use crate::layer::Compression;
use crate::reference::Digest;
use crate::store;

/// Options of [`import_docker_archive_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportOptions {
    /// How layers that are stored uncompressed in the archive get compressed.
    pub compression: Compression,
    /// Which image of a multi-image archive to import (0-based, in `manifest.json` order).
    /// `None` picks the only one and refuses archives with several.
    pub image_index: Option<usize>,
}

impl ImportOptions {
    /// Default options: gzip, the only image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compress uncompressed layers with `compression`.
    #[must_use]
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Import image `index` (0-based) of the archive.
    #[must_use]
    pub fn with_image_index(mut self, index: usize) -> Self {
        self.image_index = Some(index);
        self
    }
}

/// Errors from importing an archive. Every variant names the archive file, and the entry
/// inside it when one is involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed (opening the archive, a temporary file).
    #[error("failed to {action} `{}`", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The archive is not a readable tar file.
    #[error("failed to read docker archive `{}`", path.display())]
    ReadArchive {
        /// The archive.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The archive file is compressed with something this crate cannot read.
    #[error(
        "docker archive `{}` is {format}-compressed, which is not supported (gzip, zstd and plain tar are)",
        path.display()
    )]
    UnsupportedArchiveCompression {
        /// The archive.
        path: PathBuf,
        /// The compression found, e.g. `xz`.
        format: &'static str,
    },
    /// An entry could not be read (or decompressed).
    #[error("failed to read entry `{entry}` of docker archive `{}`", path.display())]
    ReadEntry {
        /// The archive.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// There is no `manifest.json` at the top of the archive.
    #[error(
        "docker archive `{}` has no manifest.json (is it a docker archive, not an OCI layout or a single layer?)",
        path.display()
    )]
    MissingManifest {
        /// The archive.
        path: PathBuf,
    },
    /// `manifest.json` or an image config is not JSON of the expected shape.
    #[error("failed to parse `{entry}` of docker archive `{}`", path.display())]
    BadJson {
        /// The archive.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// `manifest.json` lists no image.
    #[error("docker archive `{}` lists no image in manifest.json", path.display())]
    NoImages {
        /// The archive.
        path: PathBuf,
    },
    /// The archive holds several images and none was chosen.
    #[error(
        "docker archive `{}` holds {} images ({}); choose one by its index",
        path.display(),
        images.len(),
        images.join(", ")
    )]
    MultipleImages {
        /// The archive.
        path: PathBuf,
        /// `INDEX: TAGS` of each image.
        images: Vec<String>,
    },
    /// The chosen image index is out of range.
    #[error(
        "docker archive `{}` has no image {index}: it holds {count} (indexes start at 0)",
        path.display()
    )]
    NoSuchImage {
        /// The archive.
        path: PathBuf,
        /// What was asked for.
        index: usize,
        /// How many images there are.
        count: usize,
    },
    /// `manifest.json` names an entry that is not in the archive.
    #[error(
        "docker archive `{}` has no entry `{entry}` (named by manifest.json)",
        path.display()
    )]
    MissingEntry {
        /// The archive.
        path: PathBuf,
        /// The entry.
        entry: String,
    },
    /// An entry that should hold data is a directory, device, sparse file, a link that
    /// leads nowhere, or a path that leaves the archive.
    #[error("entry `{entry}` of docker archive `{}` is not usable: {reason}", path.display())]
    UnusableEntry {
        /// The archive.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// `manifest.json` or a config is larger than [`MAX_METADATA_BYTES`].
    #[error(
        "entry `{entry}` of docker archive `{}` is larger than the limit of {limit} bytes",
        path.display()
    )]
    TooLarge {
        /// The archive.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// An entry ends before the size its header gives (a truncated archive).
    #[error(
        "entry `{entry}` of docker archive `{}` is truncated: expected {expected} bytes, got {actual}",
        path.display()
    )]
    Truncated {
        /// The archive.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// Size in the header.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The image's config lists another number of diff_ids than the manifest lists layers.
    #[error(
        "image {index} of docker archive `{}` lists {layers} layers but its config `{config}` has {diff_ids} diff_ids",
        path.display()
    )]
    LayerCount {
        /// The archive.
        path: PathBuf,
        /// The image.
        index: usize,
        /// The config entry.
        config: String,
        /// Layers in manifest.json.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
    /// A layer's uncompressed content does not hash to the diff_id the config gives for it.
    #[error(
        "layer `{entry}` of docker archive `{}` does not match the image config: its uncompressed content is {actual}, the config's diff_id is {expected}",
        path.display()
    )]
    DiffIdMismatch {
        /// The archive.
        path: PathBuf,
        /// The layer entry.
        entry: String,
        /// The config's diff_id.
        expected: Digest,
        /// sha256 of the uncompressed layer.
        actual: Digest,
    },
    /// A content-addressed entry (`blobs/sha256/HEX`) does not hash to its name.
    #[error(
        "entry `{entry}` of docker archive `{}` does not match the digest in its name: its content is {actual}",
        path.display()
    )]
    DigestMismatch {
        /// The archive.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// The digest in the name.
        expected: Digest,
        /// The content's digest.
        actual: Digest,
    },
    /// A layer is compressed with something this crate cannot read.
    #[error(
        "layer `{entry}` of docker archive `{}` is {format}-compressed, which is not supported (gzip, zstd and uncompressed tar are)",
        path.display()
    )]
    UnsupportedCompression {
        /// The archive.
        path: PathBuf,
        /// The layer entry.
        entry: String,
        /// The compression found, e.g. `xz`.
        format: &'static str,
    },
    /// A layer is neither a tar archive nor a known compression of one.
    #[error(
        "layer `{entry}` of docker archive `{}` is not a tar archive (nor gzip or zstd)",
        path.display()
    )]
    NotALayer {
        /// The archive.
        path: PathBuf,
        /// The layer entry.
        entry: String,
    },
    /// An entry (or the image it describes) passes one of blumeops' limits: too many
    /// layers, or a layer that expands too far (a decompression bomb).
    #[error("entry `{entry}` of docker archive `{}` is refused", path.display())]
    Limit {
        /// The archive.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// Which limit.
        #[source]
        source: crate::limits::LimitExceeded,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    /// The class of this failure, for exit codes.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Self::DiffIdMismatch { .. } | Self::DigestMismatch { .. } | Self::Truncated { .. } => {
                ErrorKind::Integrity
            }
            Self::Store(
                store::Error::DigestMismatch { .. } | store::Error::SizeMismatch { .. },
            ) => ErrorKind::Integrity,
            Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::InvalidInput
            }
            Self::Io { .. } | Self::Store(_) | Self::ReadEntry { .. } => ErrorKind::Other,
            _ => ErrorKind::InvalidInput,
        }
    }

    /// What to do about it, when there is something to say.
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            Self::MultipleImages { .. } => {
                Some("pick one with --image-index N (0-based, as listed)".to_owned())
            }
            Self::MissingManifest { .. } => Some(
                "write the image with `skopeo copy ... docker-archive:FILE` or build it with Nix's dockerTools".to_owned(),
            ),
            _ => None,
        }
    }
}
