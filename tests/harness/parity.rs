//! Comparing blumeops with buildah: a private buildah store per test, and snapshots of
//! unpacked root filesystems and image configs that can be diffed.
//!
//! What counts as a difference is deliberately strict: paths, file types, permission bits
//! (setuid/setgid/sticky included), owners, contents, symlink targets and hardlink groups.
//! Only modification/access times are ignored. The few buildah artifacts that are tolerated
//! are listed in [`BUILDAH_RUN_SCAFFOLDING`] and [`BUILDAH_ONLY_LABELS`], and every use of
//! them is reported as a note so nothing disappears silently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::util::tempdir;

/// Empty mount points that buildah 1.28 creates for a RUN step (`--isolation chroot`) and
/// leaves in the committed layer: directories for `/dev`, `/proc`, `/sys`, `/run` and
/// `/run/secrets` (the default target of `RUN --mount=type=secret`), and empty files for the
/// bind-mounted `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`. A runtime mounts over
/// all of them, so they are not part of what the image means. Tolerated only when present in
/// buildah's tree alone, with the expected type and no content but other such mount points.
pub const BUILDAH_RUN_SCAFFOLDING: [(&str, Scaffold); 8] = [
    ("/dev", Scaffold::EmptyDir),
    ("/proc", Scaffold::EmptyDir),
    ("/sys", Scaffold::EmptyDir),
    ("/run", Scaffold::EmptyDir),
    ("/run/secrets", Scaffold::EmptyDir),
    ("/etc/hostname", Scaffold::EmptyFile),
    ("/etc/hosts", Scaffold::EmptyFile),
    ("/etc/resolv.conf", Scaffold::EmptyFile),
];

/// Labels buildah adds to every image it builds (its own version): tool metadata, not
/// content. Tolerated only in buildah's config.
pub const BUILDAH_ONLY_LABELS: [&str; 1] = ["io.buildah.version"];

/// The image config fields compared by [`diff_configs`], which also compares `Healthcheck`
/// and `OnBuild` (not in the OCI spec, but kept by blumeops like BuildKit does; for buildah
/// see [`Buildah::docker_config`]).
pub const CONFIG_FIELDS: [&str; 9] = [
    "Env",
    "Cmd",
    "Entrypoint",
    "User",
    "WorkingDir",
    "ExposedPorts",
    "Labels",
    "Volumes",
    "StopSignal",
];

/// Kinds of buildah mount-point leftovers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scaffold {
    /// An empty directory.
    EmptyDir,
    /// An empty regular file.
    EmptyFile,
}

/// A buildah with its own storage (`--root`, `--runroot`, vfs driver) in a temporary
/// directory, so tests neither share nor leave behind images. Dropping it removes every
/// image and working container, then the directory.
pub struct Buildah {
    dir: Option<TempDir>,
}

impl fmt::Debug for Buildah {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buildah")
            .field("dir", &self.dir.as_ref().map(TempDir::path))
            .finish()
    }
}

impl Default for Buildah {
    fn default() -> Self {
        Self::new()
    }
}

impl Buildah {
    /// A fresh private store.
    pub fn new() -> Self {
        let dir = tempdir("blumeops-buildah-");
        std::fs::write(dir.path().join("auth.json"), "{\"auths\":{}}\n")
            .expect("failed to write buildah's auth file");
        Self { dir: Some(dir) }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("buildah dir").path()
    }

    /// `buildah --root DIR/root --runroot DIR/runroot --storage-driver vfs`.
    pub fn command(&self) -> Command {
        let mut command = Command::new("buildah");
        command
            .arg("--root")
            .arg(self.dir().join("root"))
            .arg("--runroot")
            .arg(self.dir().join("runroot"))
            .arg("--storage-driver")
            .arg("vfs")
            // Keep the host's credentials out of it (an empty auth file).
            .env("REGISTRY_AUTH_FILE", self.dir().join("auth.json"))
            .env_remove("BUILDAH_LAYERS")
            .env_remove("BUILDAH_FORMAT")
            .env_remove("BUILDAH_ISOLATION");
        command
    }

    fn run_ok(&self, what: &str, command: &mut Command) -> Output {
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("failed to run buildah (is it installed?): {e}"));
        assert!(
            output.status.success(),
            "buildah {what} failed with {}:\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        output
    }

    /// `buildah bud --isolation chroot --layers=false --format docker -t TAG
    /// --build-arg A=B... -f DOCKERFILE CONTEXT`; panics with buildah's output on failure.
    ///
    /// `--format docker`, not `oci`: with `--format oci` buildah 1.28 ignores SHELL for the
    /// RUN steps that follow it (it warns "SHELL is not supported for OCI image format ...
    /// will be ignored") and drops HEALTHCHECK, so it would not be a reference for either.
    /// [`Buildah::push_oci`] converts the image to OCI (same config fields); the healthcheck
    /// the conversion loses is read back with [`Buildah::docker_config`].
    pub fn bud(&self, context: &Path, dockerfile: &Path, build_args: &[String], tag: &str) {
        self.bud_with(context, dockerfile, build_args, &[], tag);
    }

    /// [`Buildah::bud`] with more flags (e.g. `--secret id=tok,src=PATH`).
    pub fn bud_with(
        &self,
        context: &Path,
        dockerfile: &Path,
        build_args: &[String],
        extra: &[String],
        tag: &str,
    ) {
        let mut command = self.bud_command(context, dockerfile, build_args, extra, tag);
        self.run_ok("bud", &mut command);
    }

    /// [`Buildah::bud_with`] whatever the outcome: its output, for builds that must fail.
    pub fn bud_output(
        &self,
        context: &Path,
        dockerfile: &Path,
        build_args: &[String],
        extra: &[String],
        tag: &str,
    ) -> Output {
        self.bud_command(context, dockerfile, build_args, extra, tag)
            .output()
            .unwrap_or_else(|e| panic!("failed to run buildah (is it installed?): {e}"))
    }

    fn bud_command(
        &self,
        context: &Path,
        dockerfile: &Path,
        build_args: &[String],
        extra: &[String],
        tag: &str,
    ) -> Command {
        let mut command = self.command();
        command.args([
            "bud",
            "--isolation",
            "chroot",
            "--layers=false",
            "--format",
            "docker",
            "--tls-verify=false",
            "-t",
            tag,
        ]);
        for arg in build_args {
            command.arg("--build-arg").arg(arg);
        }
        command.args(extra);
        command.arg("-f").arg(dockerfile).arg(context);
        command
    }

    /// `buildah push TAG oci:DIR:LAYOUT_TAG`.
    pub fn push_oci(&self, tag: &str, dir: &Path, layout_tag: &str) {
        let dest = format!("oci:{}:{layout_tag}", dir.display());
        self.run_ok("push", self.command().args(["push", tag, &dest]));
    }

    /// The image's Docker-format config (`buildah inspect --type image`): it has the
    /// `Healthcheck`, `OnBuild` and `author` that the OCI conversion of a push drops.
    pub fn docker_config(&self, tag: &str) -> serde_json::Value {
        let output = self.run_ok(
            "inspect",
            self.command().args(["inspect", "--type", "image", tag]),
        );
        let info: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("buildah inspect prints JSON");
        info["Docker"].clone()
    }

    /// The config of `tag` as pushed to the OCI layout `dir` (see [`Buildah::push_oci`]),
    /// with the `Healthcheck`, `OnBuild` and `author` that the OCI conversion drops put back
    /// from [`Buildah::docker_config`]: what [`diff_configs`] compares blumeops' with.
    pub fn comparable_config(&self, tag: &str, dir: &Path, layout_tag: &str) -> serde_json::Value {
        let docker = self.docker_config(tag);
        let mut config = layout_config(dir, layout_tag);
        for field in ["Healthcheck", "OnBuild"] {
            let value = &docker["config"][field];
            if !value.is_null() {
                config["config"][field] = value.clone();
            }
        }
        if !docker["author"].is_null() {
            config["author"] = docker["author"].clone();
        }
        config
    }
}

/// Mount points under `dir` (from `/proc/self/mountinfo`; octal escapes decoded).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_mountinfo(escaped)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for Buildah {
    fn drop(&mut self) {
        if self.dir.is_none() {
            return;
        }
        let _ = self.command().args(["rm", "--all"]).output();
        let _ = self.command().args(["rmi", "--all", "--force"]).output();
        let Some(dir) = self.dir.take() else { return };
        // Never delete through a mount that buildah left behind.
        let mut mounts = mounts_under(dir.path());
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for mount in &mounts {
            let _ = Command::new("umount").arg(mount).output();
        }
        let left = mounts_under(dir.path());
        if left.is_empty() {
            drop(dir);
        } else {
            // Leak the directory rather than risk deleting host files through a mount.
            let path = dir.keep();
            eprintln!(
                "warning: buildah left mounts under {}: {left:?}; not deleting it",
                path.display()
            );
        }
    }
}

/// The type of a file in a [`Tree`], with what identifies its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file: its size and `sha256:` digest.
    File {
        /// Size in bytes.
        size: u64,
        /// `sha256:<hex>` of the content.
        digest: String,
    },
    /// A symlink and its target, as stored.
    Symlink(PathBuf),
    /// A character device (major, minor).
    CharDevice(u64),
    /// A block device.
    BlockDevice(u64),
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir => write!(f, "directory"),
            Self::File { size, digest } => {
                write!(
                    f,
                    "file ({size} bytes, {})",
                    &digest[..digest.len().min(19)]
                )
            }
            Self::Symlink(target) => write!(f, "symlink -> {}", target.display()),
            Self::CharDevice(rdev) => write!(f, "char device {rdev:#x}"),
            Self::BlockDevice(rdev) => write!(f, "block device {rdev:#x}"),
            Self::Fifo => write!(f, "fifo"),
            Self::Socket => write!(f, "socket"),
        }
    }
}

/// One path of a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Type and content.
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky (`st_mode & 0o7777`); 0 for symlinks,
    /// whose mode means nothing on Linux.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// A snapshot of an unpacked root filesystem, keyed by absolute path inside it (`/` is the
/// root itself). Times are not recorded.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// Every path.
    pub entries: BTreeMap<PathBuf, Entry>,
    /// Regular files sharing an inode, as sorted groups of two or more paths.
    pub hardlinks: BTreeSet<Vec<PathBuf>>,
}

impl Tree {
    /// Walk `rootfs` (without following symlinks).
    pub fn snapshot(rootfs: &Path) -> Self {
        let mut tree = Self::default();
        let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
        walk(rootfs, Path::new("/"), &mut tree.entries, &mut inodes);
        for mut group in inodes.into_values() {
            if group.len() > 1 {
                group.sort();
                tree.hardlinks.insert(group);
            }
        }
        tree
    }
}

fn sha256_file(path: &Path) -> String {
    let mut file =
        File::open(path).unwrap_or_else(|e| panic!("failed to open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn walk(
    host: &Path,
    inner: &Path,
    entries: &mut BTreeMap<PathBuf, Entry>,
    inodes: &mut HashMap<(u64, u64), Vec<PathBuf>>,
) {
    let meta = std::fs::symlink_metadata(host)
        .unwrap_or_else(|e| panic!("failed to stat {}: {e}", host.display()));
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        if meta.nlink() > 1 {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(inner.to_owned());
        }
        Kind::File {
            size: meta.len(),
            digest: sha256_file(host),
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(host)
            .unwrap_or_else(|e| panic!("failed to read link {}: {e}", host.display()));
        Kind::Symlink(target)
    } else if ft.is_char_device() {
        Kind::CharDevice(meta.rdev())
    } else if ft.is_block_device() {
        Kind::BlockDevice(meta.rdev())
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let mode = if ft.is_symlink() {
        0
    } else {
        meta.mode() & 0o7777
    };
    entries.insert(
        inner.to_owned(),
        Entry {
            kind,
            mode,
            uid: meta.uid(),
            gid: meta.gid(),
        },
    );
    if ft.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(host)
            .unwrap_or_else(|e| panic!("failed to list {}: {e}", host.display()))
            .map(|e| e.expect("directory entry").file_name())
            .collect();
        children.sort();
        for name in children {
            walk(&host.join(&name), &inner.join(&name), entries, inodes);
        }
    }
}

/// A path for messages: escapes control characters (a tab stays visible) but keeps unicode.
pub fn show_path(path: &Path) -> String {
    let text = String::from_utf8_lossy(path.as_os_str().as_bytes());
    text.escape_debug().to_string()
}

fn is_scaffold(tree: &Tree, path: &Path, entry: &Entry) -> bool {
    BUILDAH_RUN_SCAFFOLDING.iter().any(|(p, kind)| {
        Path::new(p) == path
            && entry.uid == 0
            && entry.gid == 0
            && match kind {
                Scaffold::EmptyDir => {
                    entry.kind == Kind::Dir
                        && !tree.entries.keys().any(|k| {
                            k != path
                                && k.starts_with(path)
                                && !BUILDAH_RUN_SCAFFOLDING
                                    .iter()
                                    .any(|(s, _)| Path::new(s) == k)
                        })
                }
                Scaffold::EmptyFile => matches!(entry.kind, Kind::File { size: 0, .. }),
            }
    })
}

/// The outcome of a comparison: differences fail a test, notes are printed.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Real differences.
    pub diffs: Vec<String>,
    /// Tolerated differences (allow-listed), reported for the record.
    pub notes: Vec<String>,
}

impl Comparison {
    /// Append another comparison.
    pub fn extend(&mut self, other: Self) {
        self.diffs.extend(other.diffs);
        self.notes.extend(other.notes);
    }
}

/// Compare two trees; `ours` is blumeops' tree, `theirs` buildah's.
pub fn diff_trees(ours: &Tree, theirs: &Tree) -> Comparison {
    let mut out = Comparison::default();
    let paths: BTreeSet<&PathBuf> = ours.entries.keys().chain(theirs.entries.keys()).collect();
    for path in paths {
        let shown = show_path(path);
        match (ours.entries.get(path), theirs.entries.get(path)) {
            (Some(a), None) => out
                .diffs
                .push(format!("only in blumeops: {shown} ({})", describe(a))),
            (None, Some(b)) => {
                if is_scaffold(theirs, path, b) {
                    out.notes.push(format!(
                        "ignored buildah RUN mount point: {shown} ({})",
                        describe(b)
                    ));
                } else {
                    out.diffs
                        .push(format!("only in buildah: {shown} ({})", describe(b)));
                }
            }
            (Some(a), Some(b)) => {
                if a.kind != b.kind {
                    out.diffs.push(format!(
                        "{shown}: type/content differs: blumeops {} vs buildah {}",
                        a.kind, b.kind
                    ));
                }
                if a.mode != b.mode {
                    out.diffs.push(format!(
                        "{shown}: mode differs: blumeops {:04o} vs buildah {:04o}",
                        a.mode, b.mode
                    ));
                }
                if (a.uid, a.gid) != (b.uid, b.gid) {
                    out.diffs.push(format!(
                        "{shown}: owner differs: blumeops {}:{} vs buildah {}:{}",
                        a.uid, a.gid, b.uid, b.gid
                    ));
                }
            }
            (None, None) => unreachable!("path from one of the trees"),
        }
    }
    for group in ours.hardlinks.difference(&theirs.hardlinks) {
        out.diffs.push(format!(
            "hardlink group only in blumeops: {}",
            show_group(group)
        ));
    }
    for group in theirs.hardlinks.difference(&ours.hardlinks) {
        out.diffs.push(format!(
            "hardlink group only in buildah: {}",
            show_group(group)
        ));
    }
    out
}

fn describe(e: &Entry) -> String {
    format!("{}, {:04o}, {}:{}", e.kind, e.mode, e.uid, e.gid)
}

fn show_group(group: &[PathBuf]) -> String {
    let shown: Vec<_> = group.iter().map(|p| show_path(p)).collect();
    format!("[{}]", shown.join(", "))
}

/// `null`, absent, `""`, `[]` and `{}` all mean "not set" in an image config.
fn normalized(value: Option<&serde_json::Value>) -> serde_json::Value {
    match value {
        None | Some(serde_json::Value::Null) => serde_json::Value::Null,
        Some(serde_json::Value::String(s)) if s.is_empty() => serde_json::Value::Null,
        Some(serde_json::Value::Array(a)) if a.is_empty() => serde_json::Value::Null,
        Some(serde_json::Value::Object(o)) if o.is_empty() => serde_json::Value::Null,
        Some(v) => v.clone(),
    }
}

/// Compare two image configs (the whole config blob; `ours` from blumeops, `theirs` from
/// buildah): `architecture`, `os`, `author`, the [`CONFIG_FIELDS`] of `config`,
/// `Healthcheck` and `OnBuild`.
pub fn diff_configs(ours: &serde_json::Value, theirs: &serde_json::Value) -> Comparison {
    let mut out = Comparison::default();
    for field in ["architecture", "os"] {
        if ours[field] != theirs[field] {
            out.diffs.push(format!(
                "config {field}: blumeops {} vs buildah {}",
                ours[field], theirs[field]
            ));
        }
    }
    let (a, b) = (&ours["config"], &theirs["config"]);
    for field in CONFIG_FIELDS {
        let left = normalized(a.get(field));
        let mut right = normalized(b.get(field));
        if field == "Labels"
            && let serde_json::Value::Object(labels) = &mut right
        {
            for label in BUILDAH_ONLY_LABELS {
                if let Some(v) = labels.remove(label) {
                    out.notes
                        .push(format!("ignored buildah-only label {label}={v}"));
                }
            }
            if labels.is_empty() {
                right = serde_json::Value::Null;
            }
        }
        if field == "Env" {
            diff_env(&left, &right, &mut out);
        } else if left != right {
            out.diffs.push(format!(
                "config.{field}: blumeops {left} vs buildah {right}"
            ));
        }
    }
    for field in ["Healthcheck", "OnBuild"] {
        let (left, right) = (normalized(a.get(field)), normalized(b.get(field)));
        if left != right {
            out.diffs.push(format!(
                "config.{field}: blumeops {left} vs buildah {right}"
            ));
        }
    }
    let (left, right) = (
        normalized(ours.get("author")),
        normalized(theirs.get("author")),
    );
    if left != right {
        out.diffs
            .push(format!("author: blumeops {left} vs buildah {right}"));
    }
    out
}

/// `Env` as a map: the environment a process gets has no order. buildah 1.28 moves a
/// variable that ENV sets again (e.g. `ENV PATH=...:$PATH`) to the end of the list, while
/// Docker replaces it in place, so only a difference in keys or values fails; a pure order
/// difference is a note. A key listed twice is a difference.
fn diff_env(left: &serde_json::Value, right: &serde_json::Value, out: &mut Comparison) {
    fn parse(env: &serde_json::Value) -> (Vec<String>, BTreeMap<String, String>, Vec<String>) {
        let mut keys = Vec::new();
        let mut map = BTreeMap::new();
        let mut duplicates = Vec::new();
        for item in env.as_array().into_iter().flatten() {
            let text = item.as_str().unwrap_or_default();
            let (key, value) = text.split_once('=').unwrap_or((text, ""));
            if map.insert(key.to_owned(), value.to_owned()).is_some() {
                duplicates.push(key.to_owned());
            }
            keys.push(key.to_owned());
        }
        (keys, map, duplicates)
    }
    let (left_keys, left_map, left_dups) = parse(left);
    let (right_keys, right_map, right_dups) = parse(right);
    for (who, dups) in [("blumeops", left_dups), ("buildah", right_dups)] {
        if !dups.is_empty() {
            out.diffs
                .push(format!("config.Env: {who} lists {dups:?} more than once"));
        }
    }
    if left_map != right_map {
        out.diffs
            .push(format!("config.Env: blumeops {left} vs buildah {right}"));
    } else if left_keys != right_keys {
        out.notes.push(format!(
            "config.Env order differs (same variables): blumeops {left_keys:?} vs buildah {right_keys:?}"
        ));
    }
}

/// The config blob of `TAG` in the OCI layout `dir` (read from the layout, no skopeo).
pub fn layout_config(dir: &Path, tag: &str) -> serde_json::Value {
    let read_json = |path: PathBuf| -> serde_json::Value {
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
    };
    let blob = |digest: &str| {
        let (algo, hex) = digest.split_once(':').expect("digest has an algorithm");
        dir.join("blobs").join(algo).join(hex)
    };
    let index = read_json(dir.join("index.json"));
    let manifests = index["manifests"].as_array().expect("index.json manifests");
    let descriptor = manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in {}: {index}", dir.display()));
    let manifest = read_json(blob(
        descriptor["digest"].as_str().expect("descriptor digest"),
    ));
    read_json(blob(
        manifest["config"]["digest"]
            .as_str()
            .expect("manifest config digest"),
    ))
}
