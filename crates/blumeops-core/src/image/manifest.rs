//! OCI manifest and index documents, serialized deterministically.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BlobRef, ManifestBlob, media_types};
use crate::reference::{Digest, Platform};

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of an index entry's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
}

impl From<&BlobRef> for Descriptor {
    fn from(b: &BlobRef) -> Self {
        Self {
            media_type: b.media_type.clone(),
            digest: b.digest.clone(),
            size: b.size,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

impl From<&ManifestBlob> for Descriptor {
    fn from(m: &ManifestBlob) -> Self {
        Self {
            media_type: m.media_type.clone(),
            digest: m.digest.clone(),
            size: m.bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// An index entry's platform, as the OCI image index names its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorPlatform {
    /// CPU architecture, e.g. `arm64`.
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU variant, e.g. `v7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl From<&Platform> for DescriptorPlatform {
    fn from(p: &Platform) -> Self {
        Self {
            architecture: p.architecture().to_owned(),
            os: p.os().to_owned(),
            variant: p.variant().map(str::to_owned),
        }
    }
}

/// An OCI image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest media type.
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// Layer blobs, base first.
    pub layers: Vec<Descriptor>,
    /// Manifest annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index (as written to `index.json` of an OCI layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// The index media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Manifests.
    pub manifests: Vec<Descriptor>,
}

impl ImageIndex {
    /// The index of one image per platform, in the order given (the order is part of the
    /// digest, so callers keep it stable).
    pub fn for_platforms<'a>(
        images: impl IntoIterator<Item = (&'a Platform, &'a ManifestBlob)>,
    ) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media_types::OCI_INDEX.to_owned()),
            manifests: images
                .into_iter()
                .map(|(platform, manifest)| Descriptor {
                    platform: Some(platform.into()),
                    ..Descriptor::from(manifest)
                })
                .collect(),
        }
    }

    /// The index as pushed: its serialized bytes, digest and media type.
    pub fn to_blob(&self) -> ManifestBlob {
        let bytes = serde_json::to_vec(self).expect("an index serializes");
        ManifestBlob::new(bytes, media_types::OCI_INDEX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_names_each_platform_in_the_order_given() {
        let amd = ManifestBlob::new(b"{\"a\":1}".to_vec(), media_types::OCI_MANIFEST);
        let arm = ManifestBlob::new(b"{\"b\":22}".to_vec(), media_types::OCI_MANIFEST);
        let (p1, p2): (Platform, Platform) = (
            "linux/amd64".parse().unwrap(),
            "linux/arm/v7".parse().unwrap(),
        );
        let index = ImageIndex::for_platforms([(&p1, &amd), (&p2, &arm)]).to_blob();
        assert_eq!(index.media_type, media_types::OCI_INDEX);
        let json: serde_json::Value = serde_json::from_slice(&index.bytes).unwrap();
        assert_eq!(json["schemaVersion"], 2);
        assert_eq!(json["mediaType"], media_types::OCI_INDEX);
        let entries = json["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["digest"], amd.digest.to_string());
        assert_eq!(entries[0]["size"], 7);
        assert_eq!(entries[0]["platform"]["architecture"], "amd64");
        assert_eq!(entries[0]["platform"]["os"], "linux");
        assert!(entries[0]["platform"].get("variant").is_none());
        assert_eq!(entries[1]["platform"]["architecture"], "arm");
        assert_eq!(entries[1]["platform"]["variant"], "v7");
        // The same images give the same bytes.
        assert_eq!(
            ImageIndex::for_platforms([(&p1, &amd), (&p2, &arm)])
                .to_blob()
                .digest,
            index.digest
        );
    }
}
