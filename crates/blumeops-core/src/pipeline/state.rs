//! The image as evaluation goes, and how it becomes a built image.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::engine::{BuiltImage, Engine};
use super::exec::{CacheVolume, MountOptions, SecretFileOptions, SecretVariable};
use crate::epoch;
use crate::error::Error;
use crate::image::{
    BlobRef, Descriptor, History, ImageConfig, ImageManifest, ManifestBlob, StoredImage,
    media_types,
};
use crate::reference::Digest;

/// The image as evaluation goes: config, layers, and what later steps inherit.
#[derive(Clone)]
pub(super) struct State {
    pub(super) config: ImageConfig,
    pub(super) layers: Vec<BlobRef>,
    pub(super) annotations: BTreeMap<String, String>,
    /// Secret variables for later `with_exec` steps (never written to the image).
    pub(super) secrets: Vec<SecretVariable>,
    /// What is mounted into later `with_exec` steps: (path in container, mount).
    pub(super) mounts: Vec<(String, Mounted)>,
    /// Where the last `with_exec` step's stdout was saved.
    pub(super) last_stdout: Option<PathBuf>,
    /// The step cache's key for this state: what produced it, and the layers it has.
    pub(super) key: Digest,
}

impl State {
    pub(super) fn root(config: ImageConfig, layers: Vec<BlobRef>, key: Digest) -> Self {
        Self {
            config,
            layers,
            annotations: BTreeMap::new(),
            secrets: Vec::new(),
            mounts: Vec::new(),
            last_stdout: None,
            key,
        }
    }
}

/// Something mounted into `with_exec` steps, outside the layers.
#[derive(Clone)]
pub(super) enum Mounted {
    Cache(CacheVolume),
    Secret {
        secret: crate::secret::Secret,
        opts: SecretFileOptions,
    },
    HostDirectory {
        src: PathBuf,
        opts: MountOptions,
    },
    /// A directory of another container's evaluated state.
    DirectoryFrom {
        source: Box<State>,
        src_path: String,
        opts: MountOptions,
    },
    Temp {
        size: Option<u64>,
    },
}

/// Add a finished layer to the image, with its history entry.
pub(super) fn push_layer(
    engine: &Engine,
    state: &mut State,
    layer: crate::layer::Layer,
    history: &str,
) -> String {
    let detail = format!("layer {} ({} bytes)", layer.blob.digest, layer.blob.size);
    state.config.rootfs.diff_ids.push(layer.diff_id);
    state.layers.push(layer.blob);
    state.config.history.push(History {
        created: Some(epoch::rfc3339(engine.epoch)),
        created_by: Some(format!("blumeops: {history}")),
        ..History::default()
    });
    detail
}

pub(super) fn workdir_join(current: Option<&str>, p: &str) -> String {
    if p.starts_with('/') {
        p.to_owned()
    } else {
        let cur = current.unwrap_or("/");
        format!("{}/{p}", cur.trim_end_matches('/'))
    }
}

/// Write the config and manifest: the image is complete in the store.
pub(super) fn finish(engine: &Engine, mut state: State) -> Result<BuiltImage, Error> {
    state.config.created = Some(epoch::rfc3339(engine.epoch));
    let config_bytes = serde_json::to_vec(&state.config).map_err(Error::Serialize)?;
    let config_digest = engine.store.put_bytes(&config_bytes)?;
    let config = BlobRef {
        digest: config_digest,
        size: config_bytes.len() as u64,
        media_type: media_types::OCI_CONFIG.to_owned(),
    };
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: media_types::OCI_MANIFEST.to_owned(),
        config: Descriptor::from(&config),
        layers: state.layers.iter().map(Descriptor::from).collect(),
        annotations: state.annotations,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(Error::Serialize)?;
    engine.store.put_bytes(&bytes)?;
    Ok(BuiltImage {
        image: StoredImage {
            manifest: ManifestBlob::new(bytes, media_types::OCI_MANIFEST),
            config,
            layers: state.layers,
        },
        config: state.config,
    })
}
