//! Applying one operation to the image state: the chain's first step (a base image or
//! scratch), config changes, and layers from files, commands and copies.

use super::Op;
use super::cache;
use super::engine::Engine;
use super::state::{Mounted, State, push_layer, workdir_join};
use super::steps;
use crate::error::Error;
use crate::fields::FieldHasher;
use crate::image::{BlobRef, ImageConfig, media_types};
use crate::layer::LayerBuilder;
use crate::reference::ImageRef;

/// The first step of a chain: pull the base image, or start from scratch.
pub(super) async fn run_root(
    engine: &Engine,
    registry: &crate::registry::RegistryClient,
    op: &Op,
    state: &mut Option<State>,
    index: usize,
) -> Result<Option<String>, Error> {
    match op {
        Op::From(reference, platform) => {
            let reference: ImageRef = reference.parse()?;
            let platform = platform.as_ref().unwrap_or(&engine.platform);
            let pulled = registry
                .pull_image(&reference, platform, &engine.store)
                .await?;
            for failure in &pulled.mirror_failures {
                engine.emit(super::engine::Event::MirrorFailed {
                    index,
                    reference: reference.to_string(),
                    mirror: failure.mirror.clone(),
                    error: failure.error.clone(),
                });
            }
            engine.emit(super::engine::Event::Pulled {
                index,
                reference: reference.to_string(),
                digest: pulled.image.manifest.digest.clone(),
                blobs_fetched: pulled.blobs_fetched,
                bytes_fetched: pulled.bytes_fetched,
                mirror: pulled.mirror.clone(),
            });
            let bytes = engine.store.read_blob(&pulled.image.config.digest)?;
            // Size, layer count and diff_ids against the manifest's layers.
            let config = ImageConfig::from_json_for(
                &bytes,
                &reference.to_string(),
                pulled.image.layers.len(),
            )?;
            // A base that is one image (no index) must be for the platform too: its
            // commands would run as another architecture, and an index entry would lie.
            if !config.architecture.is_empty()
                && !platform.matches(&config.os, &config.architecture, config.variant.as_deref())
            {
                return Err(crate::registry::Error::PlatformNotFound {
                    reference: reference.to_string(),
                    platform: platform.clone(),
                    available: vec![match &config.variant {
                        Some(v) => format!("{}/{}/{v}", config.os, config.architecture),
                        None => format!("{}/{}", config.os, config.architecture),
                    }],
                }
                .into());
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
            // Mark the base as used, for least-recently-used eviction.
            for blob in pulled.image.layers.iter().chain([&pulled.image.config]) {
                engine.store.touch(&engine.store.blob_path(&blob.digest));
            }
            // The base is keyed by what was pulled, not by its (movable) tag, nor by the
            // mirror it came through: the same manifest digest is the same base.
            let mut key = FieldHasher::new(cache::KEY_VERSION);
            key.str("from").digest(&pulled.image.manifest.digest);
            let detail = format!("{}", pulled.image.manifest.digest);
            *state = Some(State::root(config, layers, key.finish()));
            Ok(Some(detail))
        }
        Op::Scratch(platform) | Op::ScratchDefaultPath(platform) => {
            let platform = platform.as_ref().unwrap_or(&engine.platform);
            let mut config = ImageConfig {
                architecture: platform.architecture().to_owned(),
                os: platform.os().to_owned(),
                variant: platform.variant().map(str::to_owned),
                ..ImageConfig::default()
            };
            let default_path = matches!(op, Op::ScratchDefaultPath(_));
            if default_path {
                config.config.set_env("PATH", crate::sandbox::DEFAULT_PATH);
            }
            let mut key = FieldHasher::new(cache::KEY_VERSION);
            key.str("scratch")
                .bool(default_path)
                .str(&platform.to_string());
            *state = Some(State::root(config, Vec::new(), key.finish()));
            Ok(None)
        }
        _ => unreachable!("a chain starts with from or scratch"),
    }
}

/// Apply `op` to `state`; returns what to show for the step (a layer's digest and size).
pub(super) async fn apply_op(
    engine: &Engine,
    op: &Op,
    state: &mut State,
    history: &str,
    index: usize,
    source_state: Option<&State>,
) -> Result<Option<String>, Error> {
    let rc = &mut state.config.config;
    match op {
        Op::From(..) | Op::Scratch(_) | Op::ScratchDefaultPath(_) => {
            unreachable!("handled by run_root")
        }
        // Owner names need the image's /etc/passwd and /etc/group.
        Op::NewFile { .. } | Op::HostFile { .. } | Op::HostDirectory { .. } => {
            let mut builder = LayerBuilder::new();
            // Who owns the directories the copy creates (see `ImageBelow::settle_parents`).
            let owner = match op {
                Op::NewFile {
                    path,
                    contents,
                    mode,
                    owner,
                } => {
                    builder.add_bytes(path, contents.clone(), *mode, *owner)?;
                    *owner
                }
                Op::HostFile { path, src, opts } | Op::HostDirectory { path, src, opts } => {
                    let opts = steps::with_owner_resolved(engine, state, opts).await?;
                    if matches!(op, Op::HostFile { .. }) {
                        builder.add_host_file(path, src, &opts)?;
                    } else {
                        builder.add_host_dir(path, src, &opts)?;
                    }
                    opts.owner.unwrap_or_default()
                }
                _ => unreachable!(),
            };
            let store = engine.store.clone();
            let (compression, epoch) = (engine.compression, engine.epoch);
            let below = steps::ImageBelow::of(engine, state);
            let layer = tokio::task::spawn_blocking(move || {
                below.settle_parents(&mut builder, owner)?;
                Ok::<_, Error>(builder.write(&store, compression, epoch)?)
            })
            .await
            .map_err(|_| Error::TaskPanicked)??;
            return Ok(Some(push_layer(engine, state, layer, history)));
        }
        Op::Env(k, v) => rc.set_env(k, v),
        Op::Workdir(p) => {
            let joined = workdir_join(rc.working_dir.as_deref(), p);
            rc.working_dir = Some(joined.clone());
            // Like Docker, make sure the directory exists in the image.
            if let Some(layer) = steps::ensure_dir(engine, state, &joined).await? {
                return Ok(Some(push_layer(engine, state, layer, history)));
            }
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
            let value = crate::dockerfile::expand_env_template(template, &env).map_err(|e| {
                crate::dockerfile::Error::EnvTemplate {
                    name: k.clone(),
                    message: e.to_string(),
                }
            })?;
            rc.set_env(k, &value);
        }
        Op::EnvExpandAll(pairs) => {
            let env = |n: &str| rc.env_value(n).map(str::to_owned);
            let mut values = Vec::with_capacity(pairs.len());
            for (k, template) in pairs {
                let value =
                    crate::dockerfile::expand_env_template(template, &env).map_err(|e| {
                        crate::dockerfile::Error::EnvTemplate {
                            name: k.clone(),
                            message: e.to_string(),
                        }
                    })?;
                values.push((k, value));
            }
            for (k, value) in values {
                rc.set_env(k, &value);
            }
        }
        Op::Unmount(path) => state.mounts.retain(|(p, _)| p != path),
        Op::MountCache { .. }
        | Op::MountSecret { .. }
        | Op::MountHostDirectory { .. }
        | Op::MountDirectoryFrom { .. }
        | Op::MountTemp { .. } => {
            let (path, mounted) = match op {
                Op::MountCache { path, volume } => (path, Mounted::Cache(volume.clone())),
                Op::MountSecret { path, secret, opts } => (
                    path,
                    Mounted::Secret {
                        secret: secret.clone(),
                        opts: opts.clone(),
                    },
                ),
                Op::MountHostDirectory { path, src, opts } => (
                    path,
                    Mounted::HostDirectory {
                        src: src.clone(),
                        opts: *opts,
                    },
                ),
                Op::MountDirectoryFrom {
                    path,
                    src_path,
                    opts,
                    ..
                } => {
                    let source = source_state.expect("mount source evaluated first");
                    (
                        path,
                        Mounted::DirectoryFrom {
                            source: Box::new(source.clone()),
                            src_path: src_path.clone(),
                            opts: *opts,
                        },
                    )
                }
                Op::MountTemp { path, size } => (path, Mounted::Temp { size: *size }),
                _ => unreachable!("matched above"),
            };
            state.mounts.retain(|(p, _)| p != path);
            state.mounts.push((path.clone(), mounted));
        }
        Op::SecretVariable(v) => {
            state.secrets.retain(|s| s.name != v.name);
            state.secrets.push(v.clone());
        }
        Op::UnsetSecretVariable(name) => state.secrets.retain(|s| &s.name != name),
        Op::Exec { .. }
        | Op::CopyFrom { .. }
        | Op::CopyPathFrom { .. }
        | Op::Remove { .. }
        | Op::HttpFile { .. }
        | Op::HostArchive { .. }
        | Op::GitRepository { .. } => {
            let layer = match op {
                Op::Exec { args, opts } => steps::exec(engine, state, index, args, opts).await?,
                Op::CopyFrom {
                    path,
                    src_path,
                    opts,
                    ..
                }
                | Op::CopyPathFrom {
                    path,
                    src_path,
                    opts,
                    ..
                } => {
                    let source = source_state.expect("copy source evaluated first");
                    steps::copy_from(engine, state, source, path, src_path, opts).await?
                }
                Op::Remove { path, .. } => steps::remove(engine, state, path).await?,
                Op::HttpFile {
                    path,
                    url,
                    checksum,
                    opts,
                } => steps::http_file(engine, state, path, url, checksum.as_ref(), opts).await?,
                Op::HostArchive { path, src, opts } => {
                    steps::host_archive(engine, state, path, src, opts).await?
                }
                Op::GitRepository {
                    path,
                    url,
                    reference,
                    keep_git_dir,
                    opts,
                } => {
                    steps::git_repository(
                        engine,
                        state,
                        path,
                        url,
                        reference.as_deref(),
                        *keep_git_dir,
                        opts,
                    )
                    .await?
                }
                _ => unreachable!("matched above"),
            };
            return Ok(Some(push_layer(engine, state, layer, history)));
        }
    }
    Ok(None)
}
