//! Steps that need a filesystem: `with_exec` (run in the sandbox, diff the overlay upper
//! dir into a layer), copies out of another container, and removals.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::engine::{Engine, Event};
use super::exec::Network;
use super::exec::SecretFileOptions;
use super::exec::{CopyOptions, ExecOptions};
use super::state::{Mounted, State};
use crate::error::Error;
use crate::layer::{self, Entry, EntryKind, FileData, LayerBuilder, Owner, RootfsView};
use crate::limits;
use crate::sandbox::{self, BindMount, CancelToken, RunSpec, Stream};

/// Lines of a failing step's output shown in the error itself (the full log is on disk).
pub const FAILED_STEP_TAIL_LINES: usize = 100;

/// Lines of each stream shown too when the combined tail does not end with them.
const STREAM_TAIL_LINES: usize = 20;

/// Replaces secret values with `***` in text that leaves the sandbox.
#[derive(Clone, Default)]
pub(super) struct Scrubber {
    secrets: Arc<Vec<String>>,
}

impl Scrubber {
    pub(super) fn new(secrets: Vec<String>) -> Self {
        Self {
            secrets: Arc::new(secrets.into_iter().filter(|s| !s.is_empty()).collect()),
        }
    }

    pub(super) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in self.secrets.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    /// Rewrite a log file with secrets replaced (line by line).
    fn scrub_file(&self, path: &Path) -> std::io::Result<()> {
        if self.secrets.is_empty() || !path.exists() {
            return Ok(());
        }
        let input = std::io::BufReader::new(std::fs::File::open(path)?);
        let tmp = path.with_extension("scrubbing");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for line in input.split(b'\n') {
            let line = line?;
            let text = String::from_utf8_lossy(&line);
            out.write_all(self.scrub(&text).as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        std::fs::rename(tmp, path)
    }
}

/// A private directory for one step's mount sources: for a secret, in memory (/dev/shm)
/// when this system has it, so the value is never written to disk.
fn scratch_dir(tmp: PathBuf, in_memory: bool) -> Result<tempfile::TempDir, Error> {
    let shm = Path::new("/dev/shm");
    if in_memory
        && shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("blumeops-").tempdir_in(shm)
    {
        return Ok(dir);
    }
    tempfile::Builder::new()
        .prefix("mount-")
        .tempdir_in(&tmp)
        .map_err(|source| Error::Io {
            action: "create directory in",
            path: tmp,
            source,
        })
}

/// Write a secret's file with its mode and owner (the directory is private meanwhile).
fn write_secret_file(
    path: &Path,
    secret: &crate::secret::Secret,
    opts: &SecretFileOptions,
) -> Result<(), Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |action| {
        move |source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create secret file"))?;
    file.write_all(secret.expose().as_bytes())
        .map_err(io("write secret file"))?;
    drop(file);
    std::os::unix::fs::chown(path, Some(opts.uid), Some(opts.gid))
        .map_err(io("set owner of secret file"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode & 0o7777))
        .map_err(io("set mode of secret file"))
}

/// Copy the host directory `from` to `to` (files, directories, symlinks; modes kept).
fn copy_host_tree(from: &Path, to: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(from).map_err(host_io("read", from))?;
    if meta.is_file() {
        std::fs::copy(from, to).map_err(host_io("copy to", to))?;
        return Ok(());
    }
    std::fs::create_dir(to).map_err(host_io("create directory", to))?;
    for entry in std::fs::read_dir(from).map_err(host_io("read directory", from))? {
        let entry = entry.map_err(host_io("read directory", from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(host_io("read", &src))?;
        if kind.is_dir() {
            copy_host_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&src).map_err(host_io("read link", &src))?;
            std::os::unix::fs::symlink(link, &dst).map_err(host_io("create symlink", &dst))?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(host_io("copy to", &dst))?;
        }
    }
    std::fs::set_permissions(to, meta.permissions()).map_err(host_io("set mode of", to))
}

/// Cancels the sandbox if the step's future is dropped (Ctrl-C, another step failing).
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Unpack (once, cached in the store) every layer of `state`, base first.
pub(super) async fn lowers(engine: &Engine, state: &State) -> Result<Vec<PathBuf>, Error> {
    let mut dirs = Vec::with_capacity(state.layers.len());
    for i in 0..state.layers.len() {
        dirs.push(unpacked(engine, state, i).await?);
    }
    Ok(dirs)
}

/// The directory of layer `i` of `state`, unpacked (once, cached in the store).
async fn unpacked(engine: &Engine, state: &State, i: usize) -> Result<PathBuf, Error> {
    let (store, blob, diff_id) = (
        engine.store().clone(),
        state.layers[i].clone(),
        state.config.rootfs.diff_ids[i].clone(),
    );
    Ok(
        tokio::task::spawn_blocking(move || store.unpacked_layer(&blob, &diff_id))
            .await
            .map_err(|_| Error::TaskPanicked)??,
    )
}

/// Whether `path` exists in the image of `state`. Layers are unpacked from the top down only
/// until the path is found: what the topmost layers show is visible whatever lies below, so
/// a directory a recent step created needs none of the layers under it.
async fn exists(engine: &Engine, state: &State, path: &str) -> Result<bool, Error> {
    // A shortcut only: whatever it cannot tell (or fails to read) the unpacked view tells.
    if top_layer_starts_with_dir(engine, state, path)
        .await
        .unwrap_or(false)
    {
        return Ok(true);
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for i in (0..state.layers.len()).rev() {
        dirs.insert(0, unpacked(engine, state, i).await?);
        let view = RootfsView::new(dirs.clone());
        let path = path.to_owned();
        let found = tokio::task::spawn_blocking(move || view.resolve(&path, true))
            .await
            .map_err(|_| Error::TaskPanicked)??;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the top layer holds `path` and each of its parents as directories, read from
/// the start of its tar stream: the common case (a `WORKDIR` into what the step before
/// copied or made) known without unpacking that layer. `false` means "not known this way".
async fn top_layer_starts_with_dir(
    engine: &Engine,
    state: &State,
    path: &str,
) -> Result<bool, Error> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let (Some(top), false) = (state.layers.last(), parts.contains(&"..")) else {
        return Ok(false);
    };
    let dirs: Vec<String> = (1..=parts.len()).map(|n| parts[..n].join("/")).collect();
    let (store, blob) = (engine.store().clone(), top.clone());
    tokio::task::spawn_blocking(move || {
        let file = store.open_blob(&blob.digest)?;
        let at = store.blob_path(&blob.digest);
        Ok(layer::leading_dirs_present(
            file,
            &blob.media_type,
            &at,
            &dirs,
        )?)
    })
    .await
    .map_err(|_| Error::TaskPanicked)?
}

/// Run `args` in the sandbox on top of `state`; the changes become a layer.
pub(super) async fn exec(
    engine: &Engine,
    state: &mut State,
    index: usize,
    args: &[String],
    opts: &ExecOptions,
) -> Result<layer::Layer, Error> {
    let lowers = lowers(engine, state).await?;
    let store = engine.store().clone();
    let step_dir = store_temp_dir(&store, "step-", "create step directory in")?;
    let (upper, work) = (step_dir.path().join("upper"), step_dir.path().join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir(d).map_err(|source| Error::Io {
            action: "create directory",
            path: d.clone(),
            source,
        })?;
    }
    let logs = store.root().join("logs");
    std::fs::create_dir_all(&logs).map_err(|source| Error::Io {
        action: "create directory",
        path: logs.clone(),
        source,
    })?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    // Unique: platforms built together, and builds sharing the store, run steps at once.
    let name =
        crate::store::Store::unique_name(&format!("{stamp}-step{}", engine.step_number(index)));
    let log_path = logs.join(format!("{name}.log"));
    let stdout_path = logs.join(format!("{name}.stdout"));

    let rc = &state.config.config;
    let mut env = rc.env.clone();
    let mut set = |name: &str, value: &str| {
        let prefix = format!("{name}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{name}={value}"));
    };
    for (k, v) in &opts.env {
        set(k, v);
    }
    for s in &state.secrets {
        set(&s.name, s.secret.expose());
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    let mut mounts = Vec::new();
    let mut tmpfs = Vec::new();
    // Secret files and directory copies, removed when the step is over.
    let mut scratch: Vec<tempfile::TempDir> = Vec::new();
    for (target, mounted) in &state.mounts {
        let (source, read_only) = match mounted {
            Mounted::Cache(volume) => {
                let source = store.root().join("volumes").join(volume.name());
                std::fs::create_dir_all(&source).map_err(|source_err| Error::Io {
                    action: "create cache volume",
                    path: source.clone(),
                    source: source_err,
                })?;
                store.touch(&source);
                (source, false)
            }
            Mounted::Secret { secret, opts } => {
                let dir = scratch_dir(store.tmp_dir(), true)?;
                let file = dir.path().join("secret");
                write_secret_file(&file, secret, opts)?;
                scratch.push(dir);
                (file, true)
            }
            Mounted::HostDirectory { src, opts } if !opts.writable => (src.clone(), true),
            Mounted::HostDirectory { src, .. } => {
                // Writes go to a copy, thrown away with it.
                let dir = scratch_dir(store.tmp_dir(), false)?;
                let (from, to) = (src.clone(), dir.path().join("copy"));
                tokio::task::spawn_blocking(move || copy_host_tree(&from, &to))
                    .await
                    .map_err(|_| Error::TaskPanicked)??;
                let copy = dir.path().join("copy");
                scratch.push(dir);
                (copy, false)
            }
            Mounted::DirectoryFrom {
                source,
                src_path,
                opts,
            } => {
                // The other container's directory, merged from its layers into a copy.
                let view = RootfsView::new(self::lowers(engine, source).await?);
                let dir = scratch_dir(store.tmp_dir(), false)?;
                let (path, to) = (src_path.clone(), dir.path().join("copy"));
                tokio::task::spawn_blocking(move || export_path(&view, &path, &to))
                    .await
                    .map_err(|_| Error::TaskPanicked)??;
                let copy = dir.path().join("copy");
                scratch.push(dir);
                (copy, !opts.writable)
            }
            Mounted::Temp { size } => {
                tmpfs.push(sandbox::TmpfsMount {
                    target: target.clone(),
                    size: *size,
                });
                continue;
            }
        };
        mounts.push(BindMount {
            source,
            target: target.clone(),
            read_only,
        });
    }
    // Isolated is the default; say so whenever a step gets the host's network instead.
    let network = match opts.network {
        Network::Isolated => match sandbox::user_network() {
            Ok(_) => Network::Isolated,
            Err(why) => {
                engine.emit(Event::StepOutput {
                    index,
                    stderr: true,
                    line: format!(
                        "blumeops: {why}; so this step uses the host's network, loopback included"
                    ),
                });
                Network::Host
            }
        },
        Network::Host => {
            engine.emit(Event::StepOutput {
                index,
                stderr: true,
                line: "blumeops: this step uses the host's network, loopback included \
                       (--network=host)"
                    .to_owned(),
            });
            Network::Host
        }
        other => other,
    };
    let spec = RunSpec {
        lowers,
        upper: upper.clone(),
        work,
        args: args.to_vec(),
        env,
        cwd: rc.working_dir.clone().unwrap_or_else(|| "/".to_owned()),
        user: rc.user.clone().filter(|u| !u.is_empty()),
        hostname: "blumeops".to_owned(),
        network,
        mounts,
        tmpfs,
        stdin: opts.stdin.clone(),
        log_path: log_path.clone(),
        stdout_path: stdout_path.clone(),
        pids_max: engine.step_pids_max,
    };
    let scrubber = Scrubber::new(
        state
            .secrets
            .iter()
            .map(|s| s.secret.expose().to_owned())
            .chain(state.mounts.iter().filter_map(|(_, m)| match m {
                Mounted::Secret { secret, .. } => Some(secret.expose().to_owned()),
                _ => None,
            }))
            .collect(),
    );
    let cancel = CancelToken::new();
    let guard = CancelOnDrop(cancel.clone());
    let progress = engine.progress_fn();
    let executor = engine.executor.clone();
    let line_scrubber = scrubber.clone();
    let (outcome, stream_tails) = tokio::task::spawn_blocking(move || {
        // The last lines of each stream on its own: stdout and stderr are separate pipes,
        // so the combined tail can miss the end of one of them.
        let mut tails: [VecDeque<String>; 2] = Default::default();
        let mut on_line = |stream: Stream, line: &str| {
            let tail = &mut tails[matches!(stream, Stream::Stderr) as usize];
            if tail.len() == STREAM_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_owned());
            if let Some(p) = &progress {
                p(&Event::StepOutput {
                    index,
                    stderr: matches!(stream, Stream::Stderr),
                    line: line_scrubber.scrub(line),
                });
            }
        };
        let outcome = executor.run(&spec, &cancel, &mut on_line);
        (outcome, tails)
    })
    .await
    .map_err(|_| Error::TaskPanicked)?;
    drop(guard);
    drop(scratch);
    for p in [&log_path, &stdout_path] {
        scrubber.scrub_file(p).map_err(|source| Error::Io {
            action: "scrub secrets from",
            path: p.clone(),
            source,
        })?;
    }
    let outcome = outcome?;
    if !opts.expect.accepts(outcome.exit_code) {
        let tail: Vec<String> = outcome
            .output_tail
            .iter()
            .rev()
            .take(FAILED_STEP_TAIL_LINES)
            .rev()
            .map(|l| scrubber.scrub(l))
            .collect();
        // Each stream's last lines, when the combined tail does not end with them.
        let mut missing = Vec::new();
        for (name, lines) in ["stdout", "stderr"].into_iter().zip(stream_tails) {
            let shown = lines
                .back()
                .is_none_or(|last| tail.iter().any(|l| l == last));
            if !shown {
                let lines = lines.iter().map(|l| scrubber.scrub(l)).collect();
                missing.push((name.to_owned(), lines));
            }
        }
        return Err(Error::ExecFailed {
            command: super::shell_words(args),
            exit_code: outcome.exit_code,
            expected: opts.expect.to_string(),
            tail,
            stream_tails: missing,
            log_path,
        });
    }
    state.last_stdout = Some(stdout_path);
    let (compression, epoch) = (engine.compression(), engine.epoch());
    let upper_for_diff = upper.clone();
    let layer = tokio::task::spawn_blocking(move || {
        layer::layer_from_overlay_upper(&upper_for_diff, &store, compression, epoch)
    })
    .await
    .map_err(|_| Error::TaskPanicked)??;
    let dir = step_dir.keep();
    // Overlay's work dir holds a mode-000 directory; the store's remover handles that. A
    // leftover step directory is harmless, so a failure here is not the step's failure.
    tokio::task::spawn_blocking(move || {
        let _ = crate::store::force_remove_dir(&dir);
    });
    Ok(layer)
}

/// The image below a step, for settling the parent directories of the step's layer in a
/// blocking task (see [`ImageBelow::settle_parents`]).
pub(super) struct ImageBelow {
    store: crate::store::Store,
    layers: Vec<(crate::image::BlobRef, crate::reference::Digest)>,
}

impl ImageBelow {
    pub(super) fn of(engine: &Engine, state: &State) -> Self {
        Self {
            store: engine.store().clone(),
            layers: state
                .layers
                .iter()
                .cloned()
                .zip(state.config.rootfs.diff_ids.iter().cloned())
                .collect(),
        }
    }

    /// Settle the parent directories `builder` made up: one the image has keeps its mode
    /// and owner (the layer's entry would replace them when extracted); a missing one is
    /// created 0755 and owned by `owner`, as BuildKit and buildah chown every directory
    /// `COPY --chown` creates. A parent that is not a directory in the image is left as
    /// it was. Blocking; unpacks the image only when neither the top layer's first entries
    /// nor the layers' headers can tell.
    pub(super) fn settle_parents(
        &self,
        builder: &mut LayerBuilder,
        owner: Owner,
    ) -> Result<(), Error> {
        let parents = builder.implicit_parents();
        if parents.is_empty() {
            return Ok(());
        }
        // The common case (a copy into a directory the step before made) is known from the
        // start of the top layer. Otherwise unpacking the image to look costs more than
        // most copies: the layers unpacked already answer from disk, the others from their
        // tar headers. What those cannot tell, and any error reading them, is left to the
        // unpack (which reports errors as before); so is everything where unpacking does
        // not keep the image's owners (the view reports the owners on disk, the headers
        // would give other ones).
        let opts = layer::UnpackOptions::for_current_user();
        let answers = match self.top_layer_dirs(&parents) {
            Some(known) => parents
                .iter()
                .map(|p| layer::InImage::Dir(known[p.trim_start_matches('/')]))
                .collect(),
            None => match opts
                .preserve_owners
                .then(|| self.parents_from_headers(&parents, &opts))
            {
                Some(Ok(Some(answers))) => answers,
                _ => self.parents_from_view(&parents)?,
            },
        };
        for (p, answer) in parents.iter().zip(answers) {
            match answer {
                layer::InImage::Dir(meta) => builder.set_implicit_parent(
                    p,
                    meta.mode,
                    Owner {
                        uid: meta.uid,
                        gid: meta.gid,
                    },
                ),
                layer::InImage::NotDir => {}
                layer::InImage::Missing => builder.set_implicit_parent(p, 0o755, owner),
            }
        }
        Ok(())
    }
}

impl ImageBelow {
    /// How each of `parents` stands in the image, from the layers (top layer first, each
    /// read once and only when needed): an unpacked layer's directory on disk, else the
    /// layer's tar headers; `None` when that cannot tell one of them (a symlink on the way).
    fn parents_from_headers(
        &self,
        parents: &[String],
        opts: &layer::UnpackOptions,
    ) -> Result<Option<Vec<layer::InImage>>, Error> {
        let wanted = layer::with_ancestors(parents);
        let mut stack = layer::LayerStack::new(self.layers.len(), |i| {
            let (blob, diff_id) = &self.layers[self.layers.len() - 1 - i];
            let unpacked = self.store.unpacked_path(diff_id, opts);
            if unpacked.is_dir() {
                self.store.touch(&unpacked);
                return layer::unpacked_layer_paths(&unpacked, &wanted);
            }
            layer::scan_layer_paths(
                &self.store.blob_path(&blob.digest),
                &blob.media_type,
                diff_id,
                &wanted,
                opts,
            )
        });
        let mut memo = std::collections::HashMap::new();
        let mut answers = Vec::with_capacity(parents.len());
        for p in parents {
            match stack.resolve(p, &mut memo)? {
                Some(answer) => answers.push(answer),
                None => return Ok(None),
            }
        }
        Ok(Some(answers))
    }

    /// How each of `parents` stands in the image, from the image unpacked.
    fn parents_from_view(&self, parents: &[String]) -> Result<Vec<layer::InImage>, Error> {
        use std::os::unix::fs::MetadataExt as _;
        let mut dirs = Vec::with_capacity(self.layers.len());
        for (blob, diff_id) in &self.layers {
            dirs.push(self.store.unpacked_layer(blob, diff_id)?);
        }
        let view = RootfsView::new(dirs);
        let mut answers = Vec::with_capacity(parents.len());
        for p in parents {
            answers.push(match view.resolve(p, false)? {
                Some(e) if e.meta.is_dir() => layer::InImage::Dir(layer::DirMeta {
                    mode: e.meta.mode() & 0o7777,
                    uid: e.meta.uid(),
                    gid: e.meta.gid(),
                }),
                Some(_) => layer::InImage::NotDir,
                None => layer::InImage::Missing,
            });
        }
        Ok(answers)
    }

    /// What the top layer's first entries say of `parents`, when they name every one.
    fn top_layer_dirs(
        &self,
        parents: &[String],
    ) -> Option<std::collections::BTreeMap<String, layer::DirMeta>> {
        let (blob, _) = self.layers.last()?;
        let path = self.store.blob_path(&blob.digest);
        let file = std::fs::File::open(&path).ok()?;
        let wanted: Vec<String> = parents
            .iter()
            .map(|p| p.trim_start_matches('/').to_owned())
            .collect();
        layer::leading_dirs(file, &blob.media_type, &path, &wanted)
            .ok()
            .flatten()
    }
}

/// A temporary directory under the store's `tmp/` (removed when dropped; one a killed build
/// leaves is cleaned by the next), named `PREFIX…`.
fn store_temp_dir(
    store: &crate::store::Store,
    prefix: &str,
    action: &'static str,
) -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(store.tmp_dir())
        .map_err(|source| Error::Io {
            action,
            path: store.tmp_dir(),
            source,
        })
}

/// Resolve a `user[:group]` owner (names or ids) in the image of `state`.
pub(super) async fn resolve_owner(
    engine: &Engine,
    state: &State,
    spec: &str,
) -> Result<Owner, Error> {
    let view = RootfsView::new(lowers(engine, state).await?);
    let spec_owned = spec.to_owned();
    let (uid, gid) = tokio::task::spawn_blocking(move || view.resolve_owner(&spec_owned))
        .await
        .map_err(|_| Error::TaskPanicked)?
        .map_err(|source| Error::Owner {
            spec: spec.to_owned(),
            source,
        })?;
    Ok(Owner { uid, gid })
}

/// `opts` with an owner given by name (`owner_name`) resolved in the image of `state`.
pub(super) async fn with_owner_resolved(
    engine: &Engine,
    state: &State,
    opts: &crate::layer::HostCopy,
) -> Result<crate::layer::HostCopy, Error> {
    let mut opts = opts.clone();
    if let Some(name) = opts.owner_name.take() {
        opts.owner = Some(resolve_owner(engine, state, &name).await?);
    }
    Ok(opts)
}

/// Copy `src_path` out of `source` (another container) into a new layer: a directory's
/// contents go to `path`; a file becomes `path`, or goes into it when `path` ends in `/`.
pub(super) async fn copy_from(
    engine: &Engine,
    dest: &State,
    source: &State,
    path: &str,
    src_path: &str,
    opts: &CopyOptions,
) -> Result<layer::Layer, Error> {
    let source_view = RootfsView::new(lowers(engine, source).await?);
    let owner = match &opts.owner {
        None => None,
        Some(spec) => Some(resolve_owner(engine, dest, spec).await?),
    };
    let (path, src_path, opts) = (path.to_owned(), src_path.to_owned(), opts.clone());
    let (store, compression, epoch) =
        (engine.store().clone(), engine.compression(), engine.epoch());
    let below = ImageBelow::of(engine, dest);
    tokio::task::spawn_blocking(move || {
        let mut builder = LayerBuilder::new();
        let entry =
            source_view
                .resolve(&src_path, true)?
                .ok_or_else(|| Error::NotFoundInImage {
                    path: src_path.clone(),
                })?;
        let include = layer::globset("include", &opts.include)?;
        let exclude = layer::globset("exclude", &opts.exclude)?;
        let walk = CopyWalk {
            view: &source_view,
            owner,
            mode: opts.mode,
            include: (!opts.include.is_empty()).then_some(&include),
            exclude: &exclude,
        };
        if entry.meta.is_dir() {
            // Copying into `/` adds the contents only: the root directory is not an entry.
            let dest = if layer::is_root(&path) {
                String::new()
            } else {
                // Not a copy of the source directory: settled below like a parent (the
                // image's directory kept, a new one 0755 with the copy's owner), as
                // buildah and BuildKit do; `mode` applies to what is inside.
                builder.add_implicit_dir(&path)?;
                path.clone()
            };
            walk.dir(&mut builder, &entry.path, "", &dest)?;
        } else {
            let target = if path.ends_with('/') {
                let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
                format!("{path}{name}")
            } else {
                path.clone()
            };
            builder.add(&target, walk.entry(&entry.meta, &entry.host_path))?;
        }
        below.settle_parents(&mut builder, owner.unwrap_or(Owner::ROOT))?;
        Ok::<_, Error>(builder.write(&store, compression, epoch)?)
    })
    .await
    .map_err(|_| Error::TaskPanicked)?
}

/// Download `url` into a layer as the file `path` (Docker's `ADD URL`).
pub(super) async fn http_file(
    engine: &Engine,
    state: &State,
    path: &str,
    url: &str,
    checksum: Option<&crate::reference::Digest>,
    opts: &CopyOptions,
) -> Result<layer::Layer, Error> {
    use futures_util::StreamExt as _;
    let owner = match &opts.owner {
        None => Owner::ROOT,
        Some(spec) => resolve_owner(engine, state, spec).await?,
    };
    let store = engine.store().clone();
    let failed = |reason: String| Error::Download {
        url: url.to_owned(),
        reason,
    };
    let response = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| failed(e.to_string()))?;
    let tmp = tempfile::NamedTempFile::new_in(store.tmp_dir()).map_err(|source| Error::Io {
        action: "create temporary file in",
        path: store.tmp_dir(),
        source,
    })?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|source| Error::Io {
        action: "open",
        path: tmp.path().to_owned(),
        source,
    })?);
    let mut hasher = crate::reference::DigestWriter::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| failed(e.to_string()))?;
        hasher.update(&chunk);
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|source| Error::Io {
                action: "write",
                path: tmp.path().to_owned(),
                source,
            })?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|source| Error::Io {
            action: "write",
            path: tmp.path().to_owned(),
            source,
        })?;
    let actual = hasher.finish();
    if let Some(expected) = checksum
        && *expected != actual
    {
        return Err(failed(format!(
            "checksum mismatch: expected {expected}, got {actual}"
        )));
    }
    let (path, mode) = (path.to_owned(), opts.mode.unwrap_or(0o600));
    let (compression, epoch) = (engine.compression(), engine.epoch());
    let below = ImageBelow::of(engine, state);
    tokio::task::spawn_blocking(move || {
        let mut builder = LayerBuilder::new();
        builder.add(
            &path,
            Entry {
                kind: EntryKind::File(FileData::Host(tmp.path().to_owned())),
                mode,
                owner,
            },
        )?;
        below.settle_parents(&mut builder, owner)?;
        let layer = builder.write(&store, compression, epoch)?;
        drop(tmp);
        Ok::<_, Error>(layer)
    })
    .await
    .map_err(|_| Error::TaskPanicked)?
}

/// Extract a host tar archive (plain, gzip or zstd) into a layer under `path`
/// (Docker's `ADD archive.tar.gz /dest`).
pub(super) async fn host_archive(
    engine: &Engine,
    state: &State,
    path: &str,
    src: &Path,
    opts: &crate::layer::HostCopy,
) -> Result<layer::Layer, Error> {
    let mut opts = with_owner_resolved(engine, state, opts).await?;
    let store = engine.store().clone();
    let below = ImageBelow::of(engine, state);
    let (path, src) = (path.to_owned(), src.to_owned());
    let (compression, epoch) = (engine.compression(), engine.epoch());
    tokio::task::spawn_blocking(move || {
        let dir = store_temp_dir(&store, "archive-", "create directory in")?;
        let io = |source| Error::Io {
            action: "extract archive",
            path: src.clone(),
            source,
        };
        let mut file = std::fs::File::open(&src).map_err(io)?;
        let compressed = file.metadata().map_err(io)?.len();
        let mut magic = [0u8; 4];
        let n = std::io::Read::read(&mut file, &mut magic).map_err(io)?;
        std::io::Seek::rewind(&mut file).map_err(io)?;
        let reader: Box<dyn std::io::Read> = match &magic[..n] {
            [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(file)),
            [0x28, 0xb5, 0x2f, 0xfd] => {
                Box::new(zstd::stream::read::Decoder::new(file).map_err(io)?)
            }
            _ => Box::new(file),
        };
        // The same bomb guard as for image layers, whatever the compression.
        let reader = limits::ExpansionGuard::new(
            reader,
            limits::configured_expansion_bound(compressed),
            limits::archive_too_large,
        );
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_overwrite(true);
        let failed = |entry: &str, action, source| layer::Error::UnpackEntry {
            layer: src.clone(),
            entry: entry.to_owned(),
            action,
            source,
        };
        for entry in archive.entries().map_err(|e| failed("", "read", e))? {
            let mut entry = entry.map_err(|e| failed("", "read", e))?;
            let name = entry
                .path()
                .map_err(|e| failed("", "read", e))?
                .into_owned();
            let shown = name.display().to_string();
            // As Docker does, an archive with an escaping entry is refused, not skipped.
            if name
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(layer::Error::UnsafeEntry {
                    layer: src.clone(),
                    entry: shown,
                    reason: "`..` would escape the destination",
                }
                .into());
            }
            // `unpack_in` also refuses to write through symlinks the archive made.
            entry
                .unpack_in(dir.path())
                .map_err(|e| failed(&shown, "extract", e))?;
        }
        // Entries keep the owners the archive gives them unless an owner was asked for.
        opts.preserve_owners = true;
        let mut builder = LayerBuilder::new();
        builder.add_host_dir(&path, dir.path(), &opts)?;
        below.settle_parents(&mut builder, opts.owner.unwrap_or(Owner::ROOT))?;
        Ok::<_, Error>(builder.write(&store, compression, epoch)?)
    })
    .await
    .map_err(|_| Error::TaskPanicked)?
}

/// Check out a git repository into a layer under `path` (Docker's `ADD https://...git#ref`).
pub(super) async fn git_repository(
    engine: &Engine,
    state: &State,
    path: &str,
    url: &str,
    reference: Option<&str>,
    keep_git_dir: bool,
    opts: &CopyOptions,
) -> Result<layer::Layer, Error> {
    let owner = match &opts.owner {
        None => Owner::ROOT,
        Some(spec) => resolve_owner(engine, state, spec).await?,
    };
    let store = engine.store().clone();
    let below = ImageBelow::of(engine, state);
    let (path, url, reference) = (
        path.to_owned(),
        url.to_owned(),
        reference.map(str::to_owned),
    );
    let (compression, epoch) = (engine.compression(), engine.epoch());
    tokio::task::spawn_blocking(move || {
        let dir = store_temp_dir(&store, "git-", "create directory in")?;
        let tree = dir.path().join("tree");
        git_checkout(&url, reference.as_deref(), &tree)?;
        if !keep_git_dir {
            std::fs::remove_dir_all(tree.join(".git")).map_err(host_io("remove", &tree))?;
        }
        // git writes files with the umask: give them Docker's modes, whatever it is.
        normalize_modes(&tree)?;
        std::fs::set_permissions(&tree, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(host_io("set the mode of", &tree))?;
        let mut builder = LayerBuilder::new();
        builder.add_host_dir(
            &path,
            &tree,
            &crate::layer::HostCopy::default().with_owner(owner),
        )?;
        below.settle_parents(&mut builder, owner)?;
        Ok::<_, Error>(builder.write(&store, compression, epoch)?)
    })
    .await
    .map_err(|_| Error::TaskPanicked)?
}

/// `git init`, a shallow fetch of `reference` (the remote's HEAD without one), checkout.
/// A server that refuses a shallow fetch of a commit id gets a full fetch instead.
fn git_checkout(url: &str, reference: Option<&str>, tree: &Path) -> Result<(), Error> {
    let failed = |reason: String| Error::Download {
        url: match reference {
            Some(r) => format!("{url}#{r}"),
            None => url.to_owned(),
        },
        reason,
    };
    let git = |args: &[&str]| -> Result<std::process::Output, Error> {
        std::process::Command::new("git")
            .arg("-C")
            .arg(tree)
            .args(args)
            // Never ask for credentials on a terminal: a build cannot answer.
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    failed(
                        "`git` is not installed here, and ADD of a git repository runs it:                          install git"
                            .to_owned(),
                    )
                } else {
                    failed(format!("could not run git: {e}"))
                }
            })
    };
    let check = |what: &str, out: std::process::Output| -> Result<(), Error> {
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(failed(format!("git {what} failed: {}", stderr.trim())))
    };
    std::fs::create_dir_all(tree).map_err(host_io("create directory", tree))?;
    check("init", git(&["init", "-q"])?)?;
    check("remote add", git(&["remote", "add", "origin", url])?)?;
    let want = reference.unwrap_or("HEAD");
    let shallow = git(&["fetch", "-q", "--depth", "1", "origin", want])?;
    if shallow.status.success() {
        return check(
            "checkout",
            git(&[
                "-c",
                "advice.detachedHead=false",
                "checkout",
                "-q",
                "FETCH_HEAD",
            ])?,
        );
    }
    if !reference.is_some_and(super::is_commit_id) {
        return check("fetch", shallow);
    }
    check("fetch", git(&["fetch", "-q", "origin"])?)?;
    check(
        "checkout",
        git(&["-c", "advice.detachedHead=false", "checkout", "-q", want])?,
    )
}

/// Directories 0755, files 0644 or 0755 (any execute bit), below `dir`; links untouched.
fn normalize_modes(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(dir).map_err(host_io("read directory", dir))? {
        let entry = entry.map_err(host_io("read directory", dir))?;
        let p = entry.path();
        let meta = std::fs::symlink_metadata(&p).map_err(host_io("read", &p))?;
        let mode = if meta.is_dir() {
            normalize_modes(&p)?;
            0o755
        } else if meta.is_file() {
            if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            }
        } else {
            continue;
        };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(host_io("set the mode of", &p))?;
    }
    Ok(())
}

fn join_dest(dest: &str, rel: &str) -> String {
    if dest.is_empty() {
        rel.to_owned()
    } else {
        format!("{dest}/{rel}")
    }
}

struct CopyWalk<'a> {
    view: &'a RootfsView,
    owner: Option<Owner>,
    mode: Option<u32>,
    include: Option<&'a globset::GlobSet>,
    exclude: &'a globset::GlobSet,
}

impl CopyWalk<'_> {
    fn entry(&self, meta: &std::fs::Metadata, host: &Path) -> Entry {
        use std::os::unix::fs::MetadataExt;
        let owner = self.owner.unwrap_or(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        });
        let mode = meta.mode() & 0o7777;
        if meta.is_dir() {
            Entry {
                kind: EntryKind::Dir,
                mode: self.mode.unwrap_or(mode),
                owner,
            }
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(host).unwrap_or_default();
            Entry {
                kind: EntryKind::Symlink(target.to_string_lossy().into_owned()),
                mode: 0o777,
                owner,
            }
        } else {
            Entry {
                kind: EntryKind::File(FileData::Host(host.to_owned())),
                mode: self.mode.unwrap_or(mode),
                owner,
            }
        }
    }

    fn dir(
        &self,
        builder: &mut LayerBuilder,
        src_rel: &str,
        rel: &str,
        dest: &str,
    ) -> Result<(), Error> {
        for name in self.view.list_dir(&format!("{src_rel}/{rel}"))? {
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if self.exclude.is_match(&child_rel) {
                continue;
            }
            let full = format!("{src_rel}/{child_rel}");
            let Some(entry) = self.view.resolve(&full, false)? else {
                continue;
            };
            let included = self.include.is_none_or(|g| g.is_match(&child_rel));
            if entry.meta.is_dir() {
                if included {
                    builder.add(
                        &join_dest(dest, &child_rel),
                        self.entry(&entry.meta, &entry.host_path),
                    )?;
                }
                self.dir(builder, src_rel, &child_rel, dest)?;
            } else if included {
                builder.add(
                    &join_dest(dest, &child_rel),
                    self.entry(&entry.meta, &entry.host_path),
                )?;
            }
        }
        Ok(())
    }
}

/// A layer that deletes `path` (a whiteout entry).
pub(super) async fn remove(
    engine: &Engine,
    state: &State,
    path: &str,
) -> Result<layer::Layer, Error> {
    let view = RootfsView::new(lowers(engine, state).await?);
    let (path, store) = (path.to_owned(), engine.store().clone());
    let (compression, epoch) = (engine.compression(), engine.epoch());
    tokio::task::spawn_blocking(move || {
        if view.resolve(&path, false)?.is_none() {
            return Err(Error::NotFoundInImage { path });
        }
        let mut builder = LayerBuilder::new();
        let norm = layer::normalize_path(&path)?;
        let whiteout = match norm.rsplit_once('/') {
            Some((parent, name)) => format!("{parent}/.wh.{name}"),
            None => format!(".wh.{norm}"),
        };
        builder.add_bytes(&whiteout, Vec::new(), 0, Owner::ROOT)?;
        Ok(builder.write(&store, compression, epoch)?)
    })
    .await
    .map_err(|_| Error::TaskPanicked)?
}

/// Copy the directory `path` of `view` to the host directory `dest`.
pub(super) fn export_directory(view: &RootfsView, path: &str, dest: &Path) -> Result<(), Error> {
    let entry = view
        .resolve(path, true)?
        .filter(|e| e.meta.is_dir())
        .ok_or_else(|| Error::NotFoundInImage {
            path: path.to_owned(),
        })?;
    export_tree(view, &entry.path, dest)
}

/// Copy `path` of `view`, a directory or a file, to `dest`.
fn export_path(view: &RootfsView, path: &str, dest: &Path) -> Result<(), Error> {
    match view.resolve(path, true)? {
        Some(e) if e.meta.is_file() => {
            std::fs::copy(&e.host_path, dest).map_err(host_io("copy to", dest))?;
            Ok(())
        }
        _ => export_directory(view, path, dest),
    }
}

fn host_io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn export_tree(view: &RootfsView, rel: &str, dest: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dest).map_err(host_io("create directory", dest))?;
    for name in view.list_dir(rel)? {
        let child = format!("{rel}/{name}");
        let Some(e) = view.resolve(&child, false)? else {
            continue;
        };
        let target = dest.join(&name);
        if e.meta.is_dir() {
            export_tree(view, &child, &target)?;
        } else if e.meta.file_type().is_symlink() {
            let link =
                std::fs::read_link(&e.host_path).map_err(host_io("read link", &e.host_path))?;
            std::os::unix::fs::symlink(link, &target)
                .map_err(host_io("create symlink", &target))?;
        } else if e.meta.is_file() {
            std::fs::copy(&e.host_path, &target).map_err(host_io("copy to", &target))?;
        }
    }
    Ok(())
}

/// A layer creating the directory `path` (mode 0755, root) when the image lacks it, as
/// Dockerfile `WORKDIR` does; `None` when it exists.
pub(super) async fn ensure_dir(
    engine: &Engine,
    state: &State,
    path: &str,
) -> Result<Option<layer::Layer>, Error> {
    if layer::is_root(path) || exists(engine, state, path).await? {
        return Ok(None);
    }
    let (path, store) = (path.to_owned(), engine.store().clone());
    let (compression, epoch) = (engine.compression(), engine.epoch());
    let below = ImageBelow::of(engine, state);
    tokio::task::spawn_blocking(move || {
        let mut builder = LayerBuilder::new();
        builder.add(
            &path,
            Entry {
                kind: EntryKind::Dir,
                mode: 0o755,
                owner: Owner::ROOT,
            },
        )?;
        below.settle_parents(&mut builder, Owner::ROOT)?;
        Ok(Some(builder.write(&store, compression, epoch)?))
    })
    .await
    .map_err(|_| Error::TaskPanicked)?
}
