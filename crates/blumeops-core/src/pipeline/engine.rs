//! Evaluation: turn a `Container`'s operations into an image in the store, then publish
//! or export it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Container, Op};
use crate::epoch;
use crate::error::Error;
use crate::export::ExportTarget;
use crate::image::{
    BlobRef, Descriptor, History, ImageConfig, ImageManifest, ManifestBlob, StoredImage,
    media_types,
};
use crate::layer::{Compression, LayerBuilder};
use crate::reference::{ImageRef, Platform};
use crate::registry::{ClientOptions, PushReport, RegistryClient, TagPolicy};
use crate::store::Store;

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Event) + Send + Sync>;

/// What the engine reports while it works.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A step started.
    StepStarted {
        /// 1-based step number.
        index: usize,
        /// Number of steps.
        total: usize,
        /// What the step does.
        description: String,
    },
    /// A step finished.
    StepFinished {
        /// 1-based step number.
        index: usize,
        /// How long it took.
        elapsed: Duration,
        /// What it produced, e.g. a layer digest and size.
        detail: Option<String>,
    },
    /// The push to a registry started.
    PushStarted {
        /// Where to.
        target: String,
    },
    /// The push finished.
    PushFinished {
        /// Counts and digest.
        report: PushReport,
        /// How long it took.
        elapsed: Duration,
    },
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineOptions {
    /// Where blobs live.
    pub store: Store,
    /// Registry client settings (credentials, plain HTTP).
    pub registry: ClientOptions,
    /// Platform to pull base images for.
    pub platform: Platform,
    /// Timestamp for `created` and file mtimes (seconds since 1970).
    pub epoch: u64,
    /// Layer compression.
    pub compression: Compression,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

impl EngineOptions {
    /// Options with the host platform, epoch 0, gzip, no progress output.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            registry: ClientOptions::default(),
            platform: Platform::host(),
            epoch: 0,
            compression: Compression::default(),
            progress: None,
        }
    }
}

/// Evaluates containers: owns the store and the registry client.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    registry: RegistryClient,
    platform: Platform,
    epoch: u64,
    compression: Compression,
    progress: Option<ProgressFn>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("platform", &self.platform)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with these options.
    pub fn new(options: EngineOptions) -> Result<Self, Error> {
        Ok(Self {
            registry: RegistryClient::new(options.registry)?,
            store: options.store,
            platform: options.platform,
            epoch: options.epoch,
            compression: options.compression,
            progress: options.progress,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The registry client.
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// The build timestamp.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The target platform.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    fn emit(&self, event: Event) {
        if let Some(p) = &self.progress {
            p(&event);
        }
    }
}

/// A built image: all blobs in the store, plus its parsed config.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Manifest, config and layers.
    pub image: StoredImage,
    /// The config document.
    pub config: ImageConfig,
}

/// The result of a publish.
#[derive(Debug, Clone)]
pub struct Published {
    /// The tag that was pushed, pinned to the manifest digest.
    pub reference: ImageRef,
    /// What the push did.
    pub report: PushReport,
}

impl fmt::Display for Published {
    /// `registry/repository:tag@sha256:...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reference)
    }
}

struct State {
    config: ImageConfig,
    layers: Vec<BlobRef>,
    annotations: BTreeMap<String, String>,
}

impl Container {
    /// Evaluate every step and assemble the image in the engine's store. The digest is
    /// known when this returns, before any upload.
    pub async fn build(&self, engine: &Engine) -> Result<BuiltImage, Error> {
        let ops = self.ops();
        let total = ops.len();
        let mut state: Option<State> = None;
        for (i, op) in ops.into_iter().enumerate() {
            let index = i + 1;
            let description = op.describe();
            engine.emit(Event::StepStarted {
                index,
                total,
                description: description.clone(),
            });
            let started = Instant::now();
            let detail = run_op(engine, op, &mut state, &description)
                .await
                .map_err(|source| Error::Step {
                    index,
                    step: description.clone(),
                    source: Box::new(source),
                })?;
            engine.emit(Event::StepFinished {
                index,
                elapsed: started.elapsed(),
                detail,
            });
        }
        let state = state.expect("a container always starts with from or scratch");
        finish(engine, state)
    }

    /// Build, then push to `target` under `policy`. Returns `target@digest`.
    pub async fn publish(
        &self,
        engine: &Engine,
        target: &ImageRef,
        policy: TagPolicy,
    ) -> Result<Published, Error> {
        let built = self.build(engine).await?;
        push_built(engine, &built, target, policy).await
    }

    /// Build, then write the image to `target` (an OCI layout or a docker archive).
    pub async fn export(
        &self,
        engine: &Engine,
        target: &ExportTarget,
    ) -> Result<BuiltImage, Error> {
        let built = self.build(engine).await?;
        let store = engine.store.clone();
        let image = built.image.clone();
        let target = target.clone();
        tokio::task::spawn_blocking(move || crate::export::write(&store, &image, &target))
            .await
            .map_err(|_| Error::TaskPanicked)??;
        Ok(built)
    }
}

/// Push an already built image.
pub(crate) async fn push_built(
    engine: &Engine,
    built: &BuiltImage,
    target: &ImageRef,
    policy: TagPolicy,
) -> Result<Published, Error> {
    engine.emit(Event::PushStarted {
        target: target.to_string(),
    });
    let started = Instant::now();
    let report = engine
        .registry
        .push_image(target, &built.image, &engine.store, policy)
        .await?;
    engine.emit(Event::PushFinished {
        report: report.clone(),
        elapsed: started.elapsed(),
    });
    Ok(Published {
        reference: target.with_digest(report.digest.clone()),
        report,
    })
}

async fn run_op(
    engine: &Engine,
    op: &Op,
    state: &mut Option<State>,
    description: &str,
) -> Result<Option<String>, Error> {
    match op {
        Op::From(reference) => {
            let reference: ImageRef = reference.parse()?;
            let pulled = engine
                .registry
                .pull_image(&reference, &engine.platform, &engine.store)
                .await?;
            let bytes = engine.store.read_blob(&pulled.image.config.digest)?;
            let config: ImageConfig =
                serde_json::from_slice(&bytes).map_err(|source| Error::BaseConfig {
                    reference: reference.to_string(),
                    source,
                })?;
            if config.rootfs.diff_ids.len() != pulled.image.layers.len() {
                return Err(Error::BaseLayerCount {
                    reference: reference.to_string(),
                    layers: pulled.image.layers.len(),
                    diff_ids: config.rootfs.diff_ids.len(),
                });
            }
            let layers = pulled
                .image
                .layers
                .iter()
                .map(|l| BlobRef {
                    media_type: media_types::to_oci_layer(&l.media_type).to_owned(),
                    ..l.clone()
                })
                .collect();
            let detail = format!("{}", pulled.image.manifest.digest);
            *state = Some(State {
                config,
                layers,
                annotations: BTreeMap::new(),
            });
            Ok(Some(detail))
        }
        Op::Scratch => {
            *state = Some(State {
                config: ImageConfig {
                    architecture: engine.platform.architecture().to_owned(),
                    os: engine.platform.os().to_owned(),
                    variant: engine.platform.variant().map(str::to_owned),
                    ..ImageConfig::default()
                },
                layers: Vec::new(),
                annotations: BTreeMap::new(),
            });
            Ok(None)
        }
        _ => {
            let state = state.as_mut().expect("root op comes first");
            apply_op(engine, op, state, description).await
        }
    }
}

async fn apply_op(
    engine: &Engine,
    op: &Op,
    state: &mut State,
    description: &str,
) -> Result<Option<String>, Error> {
    let rc = &mut state.config.config;
    match op {
        Op::From(_) | Op::Scratch => unreachable!("handled by run_op"),
        // Owner names need the image's /etc/passwd and /etc/group.
        Op::HostFile { opts, .. } | Op::HostDirectory { opts, .. } if opts.owner_name.is_some() => {
            return Err(Error::Unsupported {
                step: description.to_owned(),
            });
        }
        Op::NewFile { .. } | Op::HostFile { .. } | Op::HostDirectory { .. } => {
            let mut builder = LayerBuilder::new();
            match op {
                Op::NewFile {
                    path,
                    contents,
                    mode,
                    owner,
                } => {
                    builder.add_bytes(path, contents.clone(), *mode, *owner)?;
                }
                Op::HostFile { path, src, opts } => builder.add_host_file(path, src, opts)?,
                Op::HostDirectory { path, src, opts } => builder.add_host_dir(path, src, opts)?,
                _ => unreachable!(),
            }
            let store = engine.store.clone();
            let (compression, epoch) = (engine.compression, engine.epoch);
            let layer =
                tokio::task::spawn_blocking(move || builder.write(&store, compression, epoch))
                    .await
                    .map_err(|_| Error::TaskPanicked)??;
            let detail = format!("layer {} ({} bytes)", layer.blob.digest, layer.blob.size);
            state.config.rootfs.diff_ids.push(layer.diff_id);
            state.layers.push(layer.blob);
            state.config.history.push(History {
                created: Some(epoch::rfc3339(engine.epoch)),
                created_by: Some(format!("blumeops: {description}")),
                ..History::default()
            });
            return Ok(Some(detail));
        }
        Op::Env(k, v) => rc.set_env(k, v),
        Op::Workdir(p) => {
            let joined = if p.starts_with('/') {
                p.clone()
            } else {
                let cur = rc.working_dir.as_deref().unwrap_or("/");
                format!("{}/{p}", cur.trim_end_matches('/'))
            };
            rc.working_dir = Some(joined);
        }
        Op::User(u) => rc.user = Some(u.clone()),
        Op::Label(k, v) => {
            rc.labels.insert(k.clone(), v.clone());
        }
        Op::Annotation(k, v) => {
            state.annotations.insert(k.clone(), v.clone());
        }
        Op::ExposedPort(p, proto) => {
            rc.exposed_ports
                .insert(format!("{p}/{proto}"), Default::default());
        }
        Op::Entrypoint(a) => {
            rc.entrypoint = Some(a.clone());
            // As Docker does: a new entrypoint drops the inherited default arguments.
            rc.cmd = None;
        }
        Op::DefaultArgs(a) => rc.cmd = Some(a.clone()),
        Op::Volume(p) => {
            rc.volumes.insert(p.clone(), Default::default());
        }
        Op::StopSignal(sig) => rc.stop_signal = Some(sig.clone()),
        Op::Healthcheck(h) => {
            rc.other.insert("Healthcheck".to_owned(), h.to_json());
        }
        Op::Shell(a) => {
            rc.other.insert("Shell".to_owned(), serde_json::json!(a));
        }
        Op::Author(a) => state.config.author = Some(a.clone()),
        Op::OnBuild(t) => {
            let triggers = rc
                .other
                .entry("OnBuild".to_owned())
                .or_insert_with(|| serde_json::json!([]));
            match triggers.as_array_mut() {
                Some(list) => list.push(serde_json::json!(t)),
                None => *triggers = serde_json::json!([t]),
            }
        }
        Op::EnvExpand(k, template) => {
            let env = |n: &str| rc.env_value(n).map(str::to_owned);
            let value = crate::dockerfile::expand_env_template(template, &env);
            rc.set_env(k, &value);
        }
        Op::Unmount(_) | Op::CopyPathFrom { .. } | Op::HttpFile { .. } | Op::HostArchive { .. } => {
            return Err(Error::Unsupported {
                step: description.to_owned(),
            });
        }
        Op::Exec { .. }
        | Op::MountCache { .. }
        | Op::SecretVariable(_)
        | Op::CopyFrom { .. }
        | Op::Remove { .. } => {
            return Err(Error::Unsupported {
                step: description.to_owned(),
            });
        }
    }
    Ok(None)
}

fn finish(engine: &Engine, mut state: State) -> Result<BuiltImage, Error> {
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
