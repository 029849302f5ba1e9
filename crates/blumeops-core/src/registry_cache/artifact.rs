//! What the registry cache stores: OCI artifacts, one manifest per entry, tagged by what
//! they hold so a tag never has to change.
//!
//! A step entry (tag `step-<key hex>`) is an OCI image manifest with
//! `artifactType: application/vnd.blumeops.step.v1`, the step record as its config (media
//! type [`STEP_CONFIG`]) and the step's layer, if it made one, as its only layer. Its bytes
//! depend only on the step's key and result, so two machines that export the same result
//! write the same manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::image::{BlobRef, Descriptor, ManifestBlob, StoredImage, media_types};
use crate::reference::Digest;
use crate::store::{CachedLayer, Store};

/// `artifactType` of a step entry.
pub(crate) const STEP_ARTIFACT: &str = "application/vnd.blumeops.step.v1";
/// Media type of a step entry's config: a [`StepConfig`].
pub(crate) const STEP_CONFIG: &str = "application/vnd.blumeops.step.config.v1+json";
/// `artifactType` of a cache volume snapshot.
pub(crate) const VOLUME_ARTIFACT: &str = "application/vnd.blumeops.volume.v1";
/// Media type of a volume snapshot's config: a [`VolumeConfig`].
pub(crate) const VOLUME_CONFIG: &str = "application/vnd.blumeops.volume.config.v1+json";
/// Format version of both configs; entries of another version are ignored.
const FORMAT_VERSION: u32 = 1;
/// Largest step stdout carried in an entry (base64 in the config); a step with more is
/// exported without it and is not imported where its stdout is needed.
pub(crate) const MAX_STDOUT_BYTES: usize = 256 * 1024;
/// Largest config read from an entry.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The tag of a step's entry.
pub(crate) fn step_tag(key: &Digest) -> String {
    format!("step-{}", key.hex())
}

/// An OCI image manifest with an `artifactType` (the image model has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ArtifactManifest {
    pub schema_version: u32,
    pub media_type: String,
    pub artifact_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A step entry's config: what the step produced. What else a step changes in the image
/// config (a `WORKDIR`'s directory) follows from its definition, which the key covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StepConfig {
    pub version: u32,
    /// The step's key: an entry found under another key's tag is refused.
    pub key: Digest,
    /// The layer the step made (digest, size, media type, diff_id), if it made one.
    pub layer: Option<CachedLayer>,
    /// The step's standard output (base64), for commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// True when the command's stdout was too large to carry.
    #[serde(default)]
    pub stdout_omitted: bool,
}

/// A volume snapshot's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeConfig {
    pub version: u32,
    /// The volume's name, exactly (the tag carries a cleaned-up form).
    pub name: String,
    /// Digest of the uncompressed tar: what a later export compares with.
    pub content: Digest,
}

impl StepConfig {
    pub(crate) fn new(key: Digest, layer: Option<CachedLayer>, stdout: Option<&[u8]>) -> Self {
        use base64::Engine as _;
        let (stdout, stdout_omitted) = match stdout {
            Some(bytes) if bytes.len() <= MAX_STDOUT_BYTES => (
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                false,
            ),
            Some(_) => (None, true),
            None => (None, false),
        };
        Self {
            version: FORMAT_VERSION,
            key,
            layer,
            stdout,
            stdout_omitted,
        }
    }

    /// The stdout it carries, decoded.
    pub(crate) fn stdout_bytes(&self) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine as _;
        self.stdout
            .as_deref()
            .map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| format!("its stdout is not base64: {e}"))
            })
            .transpose()
    }
}

impl VolumeConfig {
    pub(crate) fn new(name: &str, content: Digest) -> Self {
        Self {
            version: FORMAT_VERSION,
            name: name.to_owned(),
            content,
        }
    }
}

/// An entry ready to push: its config is in the store (the layer already was).
pub(crate) fn entry(
    store: &Store,
    artifact_type: &str,
    config_media_type: &str,
    config: &impl Serialize,
    layer: Option<BlobRef>,
) -> Result<StoredImage, crate::store::Error> {
    entry_with_layers(
        store,
        artifact_type,
        config_media_type,
        config,
        layer.into_iter().collect(),
    )
}

/// [`entry`] with any number of layers.
pub(crate) fn entry_with_layers(
    store: &Store,
    artifact_type: &str,
    config_media_type: &str,
    config: &impl Serialize,
    layers: Vec<BlobRef>,
) -> Result<StoredImage, crate::store::Error> {
    let bytes = serde_json::to_vec(config).expect("a config always serializes");
    let digest = store.put_bytes(&bytes)?;
    let config = BlobRef {
        digest,
        size: bytes.len() as u64,
        media_type: config_media_type.to_owned(),
    };
    let manifest = ArtifactManifest {
        schema_version: 2,
        media_type: media_types::OCI_MANIFEST.to_owned(),
        artifact_type: artifact_type.to_owned(),
        config: Descriptor::from(&config),
        layers: layers.iter().map(Descriptor::from).collect(),
        annotations: BTreeMap::new(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest always serializes");
    Ok(StoredImage {
        manifest: ManifestBlob::new(manifest_bytes, media_types::OCI_MANIFEST),
        config,
        layers,
    })
}

/// Parse an entry's manifest and check it is of the expected kind, with at most one layer;
/// its config and layers.
pub(crate) fn parse_entry(
    bytes: &[u8],
    artifact_type: &str,
    config_media_type: &str,
) -> Result<(BlobRef, Vec<BlobRef>), String> {
    parse_entry_with(bytes, artifact_type, config_media_type, 1)
}

/// [`parse_entry`] with at most `max_layers` layers.
pub(crate) fn parse_entry_with(
    bytes: &[u8],
    artifact_type: &str,
    config_media_type: &str,
    max_layers: usize,
) -> Result<(BlobRef, Vec<BlobRef>), String> {
    let manifest: ArtifactManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("its manifest does not parse: {e}"))?;
    if manifest.artifact_type != artifact_type || manifest.config.media_type != config_media_type {
        return Err(format!(
            "it is a {} with a {} config, not a {artifact_type} with a {config_media_type} one",
            manifest.artifact_type, manifest.config.media_type
        ));
    }
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(format!(
            "its config is {} bytes (at most {MAX_CONFIG_BYTES} are read)",
            manifest.config.size
        ));
    }
    if manifest.layers.len() > max_layers {
        return Err(format!(
            "it has {} layers (at most {max_layers})",
            manifest.layers.len()
        ));
    }
    let blob = |d: &Descriptor| BlobRef {
        digest: d.digest.clone(),
        size: d.size,
        media_type: d.media_type.clone(),
    };
    Ok((
        blob(&manifest.config),
        manifest.layers.iter().map(blob).collect(),
    ))
}

/// Seconds since 1970 now, for the time in a tag.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A tag-safe form of a volume name: `[a-zA-Z0-9_.-]`, other characters as `_`, at most 48
/// characters (the exact name is in the entry's config).
pub(crate) fn tag_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect()
}

/// The tag of a volume snapshot: `volume-<name>-<UTC timestamp>-<12 hex of the content>`.
pub(crate) fn volume_tag(name: &str, unix_seconds: u64, content: &Digest) -> String {
    format!(
        "volume-{}-{}-{}",
        tag_safe(name),
        crate::epoch::compact_utc(unix_seconds),
        &content.hex()[..12]
    )
}

/// The timestamp of a volume snapshot tag for `name` (compact UTC, sorts by time), if the
/// tag is one.
pub(crate) fn volume_tag_time<'t>(tag: &'t str, name: &str) -> Option<&'t str> {
    let rest = tag.strip_prefix("volume-")?.strip_prefix(&tag_safe(name))?;
    let rest = rest.strip_prefix('-')?;
    let (time, hex) = rest.split_once('-')?;
    (time.len() == 16
        && time.ends_with('Z')
        && hex.len() == 12
        && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn step_entries_are_deterministic_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = CachedLayer {
            digest: digest('a'),
            size: 10,
            media_type: media_types::OCI_LAYER_GZIP.to_owned(),
            diff_id: digest('b'),
        };
        let config = StepConfig::new(digest('c'), Some(layer.clone()), Some(b"hi\n"));
        let one = entry(
            &store,
            STEP_ARTIFACT,
            STEP_CONFIG,
            &config,
            Some(layer.blob()),
        )
        .unwrap();
        let two = entry(
            &store,
            STEP_ARTIFACT,
            STEP_CONFIG,
            &config,
            Some(layer.blob()),
        )
        .unwrap();
        assert_eq!(one.manifest.digest, two.manifest.digest);
        let (cfg, layers) = parse_entry(&one.manifest.bytes, STEP_ARTIFACT, STEP_CONFIG).unwrap();
        assert_eq!(cfg, one.config);
        assert_eq!(layers, vec![layer.blob()]);
        let read: StepConfig =
            serde_json::from_slice(&store.read_blob(&cfg.digest).unwrap()).unwrap();
        assert_eq!(read.stdout_bytes().unwrap().as_deref(), Some(&b"hi\n"[..]));
        assert!(
            parse_entry(&one.manifest.bytes, VOLUME_ARTIFACT, VOLUME_CONFIG)
                .unwrap_err()
                .contains("not a application/vnd.blumeops.volume.v1")
        );
    }

    #[test]
    fn large_stdout_is_left_out_and_said_so() {
        let big = vec![b'x'; MAX_STDOUT_BYTES + 1];
        let config = StepConfig::new(digest('c'), None, Some(&big));
        assert!(config.stdout.is_none() && config.stdout_omitted);
    }

    #[test]
    fn volume_tags_name_the_volume_and_sort_by_time() {
        let content = digest('d');
        let early = volume_tag("go/mod cache", 1_700_000_000, &content);
        let late = volume_tag("go/mod cache", 1_800_000_000, &content);
        assert_eq!(early, "volume-go_mod_cache-20231114T221320Z-dddddddddddd");
        assert!(early < late);
        assert_eq!(
            volume_tag_time(&early, "go/mod cache"),
            Some("20231114T221320Z")
        );
        assert_eq!(volume_tag_time(&early, "go"), None);
        assert_eq!(
            volume_tag_time("volume-go_mod_cache-x-y", "go/mod cache"),
            None
        );
    }
}
