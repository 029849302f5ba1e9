//! OCI image model shared by the builder, the exporters and the registry client: media types
//! and the description of an image whose blobs are all in the [`Store`](crate::Store).

use crate::reference::Digest;

/// Media types this crate reads and writes.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Uncompressed OCI layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// gzip OCI layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// zstd OCI layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker v2 schema 2 manifest (read only: zot refuses it on push).
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list (read only).
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config (read only).
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer (read only).
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker uncompressed layer (read only).
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

    /// The OCI equivalent of a layer media type (Docker layer types are mapped, others kept).
    pub fn to_oci_layer(media_type: &str) -> &str {
        match media_type {
            DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
            DOCKER_LAYER_TAR => OCI_LAYER_TAR,
            other => other,
        }
    }

    /// Whether this is a single-image manifest type (OCI or Docker).
    pub fn is_image_manifest(media_type: &str) -> bool {
        matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
    }

    /// Whether this is a multi-platform index type (OCI or Docker).
    pub fn is_index(media_type: &str) -> bool {
        matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
    }

    /// The `Accept` header value for manifest requests.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
}

/// A blob an image refers to: digest, size and media type, as in an OCI descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

/// A serialized manifest: its exact bytes (the digest is over these), digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestBlob {
    /// The bytes as pushed or pulled.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// The manifest's media type (sent as `Content-Type` on push).
    pub media_type: String,
}

impl ManifestBlob {
    /// Wrap serialized manifest bytes, computing their digest.
    pub fn new(bytes: Vec<u8>, media_type: impl Into<String>) -> Self {
        Self {
            digest: Digest::of(&bytes),
            bytes,
            media_type: media_type.into(),
        }
    }
}

/// An image whose config and layer blobs are all in the store: what exporters and the
/// registry push read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The manifest.
    pub manifest: ManifestBlob,
    /// The config blob.
    pub config: BlobRef,
    /// Layer blobs, base first.
    pub layers: Vec<BlobRef>,
}

impl StoredImage {
    /// Config then layers: every blob the manifest references.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

mod config;
mod manifest;

pub use config::{History, ImageConfig, RootFs, RuntimeConfig};
pub use manifest::{Descriptor, ImageIndex, ImageManifest};
