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
pub use manifest::{Descriptor, DescriptorPlatform, ImageIndex, ImageManifest};

use crate::limits::{self, LimitExceeded};

/// A manifest, index or image config that is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The document is not JSON of the expected shape.
    #[error("failed to parse the {what} of {origin}")]
    Json {
        /// "image manifest", "image index" or "image config".
        what: &'static str,
        /// The image or file it came from.
        origin: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The document, or a list in it, is larger than blumeops accepts.
    #[error("the {what} of {origin} is too large")]
    TooLarge {
        /// "image manifest", "image index" or "image config".
        what: &'static str,
        /// The image or file it came from.
        origin: String,
        /// Which limit.
        #[source]
        source: LimitExceeded,
    },
    /// The document parsed but says something impossible.
    #[error("the {what} of {origin} is invalid: {reason}")]
    Invalid {
        /// "image manifest", "image index" or "image config".
        what: &'static str,
        /// The image or file it came from.
        origin: String,
        /// Why.
        reason: String,
    },
}

fn check_size(what: &'static str, origin: &str, len: usize, max: u64) -> Result<(), Error> {
    if len as u64 > max {
        return Err(Error::TooLarge {
            what,
            origin: origin.to_owned(),
            source: LimitExceeded::new(format!("its size ({len} bytes)"), max, "bytes"),
        });
    }
    Ok(())
}

fn check_count(
    what: &'static str,
    origin: &str,
    list: &'static str,
    count: usize,
    max: usize,
) -> Result<(), Error> {
    if count > max {
        return Err(Error::TooLarge {
            what,
            origin: origin.to_owned(),
            source: LimitExceeded::new(format!("the number of {list} ({count})"), max as u64, list),
        });
    }
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    origin: &str,
    bytes: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what,
        origin: origin.to_owned(),
        source,
    })
}

fn check_schema(what: &'static str, origin: &str, version: u32) -> Result<(), Error> {
    if version != 2 {
        return Err(Error::Invalid {
            what,
            origin: origin.to_owned(),
            reason: format!("schemaVersion is {version}, expected 2"),
        });
    }
    Ok(())
}

impl ImageManifest {
    /// Parse a manifest (OCI or Docker schema 2) from `origin` (an image reference or file,
    /// for messages), refusing one over [`limits::MAX_MANIFEST_BYTES`] or with more than
    /// [`limits::MAX_LAYERS`] layers.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, Error> {
        const WHAT: &str = "image manifest";
        check_size(WHAT, origin, bytes.len(), limits::MAX_MANIFEST_BYTES)?;
        let m: Self = parse_json(WHAT, origin, bytes)?;
        check_schema(WHAT, origin, m.schema_version)?;
        check_count(WHAT, origin, "layers", m.layers.len(), limits::MAX_LAYERS)?;
        Ok(m)
    }
}

impl ImageIndex {
    /// Parse an index (OCI index or Docker manifest list) from `origin`, refusing one over
    /// [`limits::MAX_MANIFEST_BYTES`] or listing more than [`limits::MAX_INDEX_MANIFESTS`]
    /// manifests.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, Error> {
        const WHAT: &str = "image index";
        check_size(WHAT, origin, bytes.len(), limits::MAX_MANIFEST_BYTES)?;
        let i: Self = parse_json(WHAT, origin, bytes)?;
        check_schema(WHAT, origin, i.schema_version)?;
        check_count(
            WHAT,
            origin,
            "manifests",
            i.manifests.len(),
            limits::MAX_INDEX_MANIFESTS,
        )?;
        Ok(i)
    }
}

impl ImageConfig {
    /// Parse an image config (OCI or Docker) from `origin`, refusing one over
    /// [`limits::MAX_CONFIG_BYTES`] or with more than [`limits::MAX_LAYERS`] diff_ids.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, Error> {
        const WHAT: &str = "image config";
        check_size(WHAT, origin, bytes.len(), limits::MAX_CONFIG_BYTES)?;
        let c: Self = parse_json(WHAT, origin, bytes)?;
        check_count(
            WHAT,
            origin,
            "diff_ids",
            c.rootfs.diff_ids.len(),
            limits::MAX_LAYERS,
        )?;
        Ok(c)
    }

    /// [`ImageConfig::from_json`], then check that it has one diff_id per layer of its
    /// manifest (`layers` of them).
    pub fn from_json_for(bytes: &[u8], origin: &str, layers: usize) -> Result<Self, Error> {
        let c = Self::from_json(bytes, origin)?;
        let diff_ids = c.rootfs.diff_ids.len();
        if diff_ids != layers {
            return Err(Error::Invalid {
                what: "image config",
                origin: origin.to_owned(),
                reason: format!("it has {diff_ids} diff_ids but the manifest has {layers} layers"),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn manifest(layers: usize) -> String {
        let layer = format!(
            r#"{{"mediaType":"{}","digest":"{DIGEST}","size":1}}"#,
            media_types::OCI_LAYER_GZIP
        );
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{DIGEST}","size":2}},"layers":[{}]}}"#,
            media_types::OCI_MANIFEST,
            media_types::OCI_CONFIG,
            vec![layer; layers].join(",")
        )
    }

    #[test]
    fn manifests_within_limits_parse() {
        let m = ImageManifest::from_json(manifest(3).as_bytes(), "img").unwrap();
        assert_eq!(m.layers.len(), 3);
    }

    #[test]
    fn too_many_layers_is_refused_with_the_limit() {
        let e = ImageManifest::from_json(manifest(limits::MAX_LAYERS + 1).as_bytes(), "img:1")
            .unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert_eq!(
            chain,
            "the image manifest of img:1 is too large: the number of layers (257) exceeds the limit of 256 layers"
        );
    }

    #[test]
    fn oversized_and_malformed_documents_are_refused() {
        let big = vec![b' '; limits::MAX_MANIFEST_BYTES as usize + 1];
        assert!(matches!(
            ImageIndex::from_json(&big, "x"),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            ImageConfig::from_json(b"{\"architecture\":", "x"),
            Err(Error::Json { .. })
        ));
        let deep = "[".repeat(100_000);
        assert!(matches!(
            ImageManifest::from_json(deep.as_bytes(), "x"),
            Err(Error::Json { .. })
        ));
        let v1 = manifest(1).replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert!(matches!(
            ImageManifest::from_json(v1.as_bytes(), "x"),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn config_layer_count_must_match() {
        let c = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{DIGEST}"]}}}}"#
        );
        assert!(ImageConfig::from_json_for(c.as_bytes(), "x", 1).is_ok());
        let e = ImageConfig::from_json_for(c.as_bytes(), "x", 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the image config of x is invalid: it has 1 diff_ids but the manifest has 2 layers"
        );
    }
}
