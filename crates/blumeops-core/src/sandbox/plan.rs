//! Everything the sandbox's child processes need, prepared in the parent before the fork:
//! the scaffold layer, the host copies of /etc/hosts and /etc/resolv.conf, the list of
//! mounts as C strings, argv/envp, the exec candidates and buffers for the user lookup.
//!
//! # Keeping mountpoints out of the upper directory
//!
//! The sandbox mounts /proc, /sys, /dev, /etc/hosts, /etc/resolv.conf and the cache volumes
//! on top of the overlay. Mounting over an existing path does not copy it up, but creating a
//! missing mountpoint in the merged view would create it in the upper directory, i.e. in the
//! step's layer. So mountpoints are never created in the overlay: for every mount target the
//! layers are searched (following overlayfs rules: whiteouts, opaque directories). When the
//! target already exists with the right type nothing is done; otherwise the target and its
//! parents are created in a per-run *scaffold* directory that is mounted as the topmost lower
//! layer. Scaffold directories that also exist in the image copy their mode and owner (the
//! topmost lower decides a merged directory's attributes), the scaffold root copies the
//! image root's. The scaffold is deleted after the run; the upper directory only ever gets
//! what the command itself wrote (plus the working directory when it had to be created).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use libc::c_ulong;
use tempfile::TempDir;

use super::error::SetupStep;
use super::user::UserSpec;
use super::{DEFAULT_HOSTNAME, DEFAULT_PATH, Error, RunSpec, io_err};
use crate::Network;
use crate::layer::{is_opaque, is_whiteout};

/// Largest /etc/passwd and /etc/group the user lookup reads.
pub(super) const MAX_USERDB: usize = 512 * 1024;
/// Most supplementary groups set.
pub(super) const MAX_GROUPS: usize = 256;
/// Longest HOME value set from /etc/passwd.
const MAX_HOME: usize = 4096;
/// Overlay mount data must fit in one page, NUL included.
const MOUNT_DATA_LIMIT: usize = 4095;

/// One operation the init process performs before switching root.
pub(super) enum Op {
    Chdir {
        path: CString,
    },
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
    },
    /// An overlay mounted with the new mount API (`fsopen`/`fsconfig` with `lowerdir+`,
    /// Linux 6.8+), used when the layer list is too long for `mount(2)`'s one page.
    OverlayFs {
        target: CString,
        options: Vec<(CString, CString)>,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    /// sysfs, or (when this process may not mount one: a user namespace that does not own
    /// the network namespace) the host's /sys bind-mounted read-only.
    Sysfs {
        target: CString,
    },
    /// An empty file with the host's device node bind-mounted on it (never `mknod`: /dev is
    /// a nodev tmpfs, and the bind mount carries the host's device-friendly mount flags).
    Device {
        path: CString,
        host: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
}

/// fuse-overlayfs for a rootless step without kernel overlayfs: run by the sandbox's helper
/// in the foreground, outside the step's PID namespace (a step must not see, signal or
/// trace the daemon that writes its filesystem) and outside the mount namespace the init
/// switches root in.
pub(super) struct FuseMount {
    pub(super) program: CString,
    /// argv, NULL-terminated; the strings live in `_args`.
    pub(super) argv: Vec<*const libc::c_char>,
    _args: Vec<CString>,
    /// Where it mounts (the merged directory).
    pub(super) merged: CString,
}

/// An operation with what to say if it fails.
pub(super) struct PlannedOp {
    pub(super) op: Op,
    pub(super) step: SetupStep,
    pub(super) path: PathBuf,
}

/// Everything prepared for one run.
pub(super) struct Plan {
    pub(super) ops: Vec<PlannedOp>,
    pub(super) merged: CString,
    pub(super) merged_path: PathBuf,
    /// Set when the overlay options did not fit `mount(2)` (layers, length, limit): an
    /// `EINVAL` from the new mount API then means the kernel lacks `lowerdir+`.
    pub(super) overlay_too_long: Option<(usize, usize, usize)>,
    pub(super) hostname: CString,
    /// A network namespace of its own (none or isolated).
    pub(super) own_network: bool,
    /// slirp4netns, for an isolated network: the init waits for it before the command.
    pub(super) slirp: Option<PathBuf>,
    /// The init waits for the parent's word before the command: set by `run` when the step
    /// gets a cgroup or a network.
    pub(super) wait_for_go: bool,
    /// The copied rootfs and what it held, when the step runs on a copy instead of an
    /// overlay (see `copyfs`): its changes move into the upper directory afterwards.
    pub(super) copy: Option<(PathBuf, super::copyfs::Baseline)>,
    /// The lower directories (top first, scaffold included) when fuse-overlayfs mounts the
    /// rootfs: its upper directory is brought to kernel overlayfs's form afterwards.
    pub(super) fuse_lowers: Option<Vec<PathBuf>>,
    /// fuse-overlayfs to start before the init.
    pub(super) fuse: Option<FuseMount>,
    /// `/proc/self/setgroups` says `deny` (a user namespace with a single mapping): the
    /// supplementary groups cannot be set, so they are left alone.
    pub(super) setgroups_denied: bool,
    /// The seccomp filters, installed in this order before capabilities are dropped.
    pub(super) seccomp: Vec<libc::sock_fprog>,
    /// The working directory, NUL-terminated, mutated in place by `mkdir -p`.
    pub(super) cwd: Vec<u8>,
    pub(super) cwd_display: String,
    pub(super) user: UserSpec,
    pub(super) userdb: Vec<u8>,
    pub(super) groups: Vec<libc::gid_t>,
    pub(super) argv: Vec<CString>,
    pub(super) envp: Vec<CString>,
    /// Filled by the child right before exec (capacity reserved here).
    pub(super) argv_ptrs: Vec<*const libc::c_char>,
    pub(super) envp_ptrs: Vec<*const libc::c_char>,
    /// `HOME=...\0` written by the child when the environment has no HOME.
    pub(super) home_env: Vec<u8>,
    pub(super) needs_home: bool,
    pub(super) candidates: Vec<CString>,
    pub(super) command: String,
    pub(super) path_var: String,
    /// Holds the scaffold, the merged mountpoint and the /etc files; removed on drop.
    _dir: TempDir,
}

fn cstring(field: &'static str, value: impl Into<Vec<u8>>) -> Result<CString, Error> {
    CString::new(value).map_err(|e| Error::InvalidSpec {
        field,
        value: String::from_utf8_lossy(&e.into_vec()).into_owned(),
        reason: "contains a NUL byte",
    })
}

fn path_cstring(path: &Path) -> Result<CString, Error> {
    cstring("path", path.as_os_str().as_bytes())
}

/// Lexically clean an absolute container path into its components (`..` pops).
pub(super) fn container_components(field: &'static str, path: &str) -> Result<Vec<String>, Error> {
    let invalid = |reason| Error::InvalidSpec {
        field,
        value: path.to_owned(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(invalid("must be an absolute path"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_owned()),
        }
    }
    Ok(out)
}

/// What a path is in the merged view of the layers.
#[derive(Debug)]
enum Found {
    Missing,
    Dir(Metadata),
    File,
    Other,
    /// Component `index` of the path is not a directory (a symlink when `symlink`).
    AncestorNotDir {
        index: usize,
        symlink: bool,
    },
}

/// Look `components` up through `layers` (top first) as overlayfs would.
fn lookup(layers: &[PathBuf], components: &[String]) -> Result<Found, Error> {
    let mut visible: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
    let mut prefix = PathBuf::new();
    for (i, comp) in components.iter().enumerate() {
        prefix.push(comp);
        let last = i + 1 == components.len();
        let mut next = Vec::new();
        let mut top: Option<Metadata> = None;
        for layer in &visible {
            let path = layer.join(&prefix);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(io_err("inspect layer path", &path)(e)),
            };
            if is_whiteout(&meta) {
                break;
            }
            let is_dir = meta.is_dir();
            if top.is_none() {
                top = Some(meta);
            }
            if !is_dir {
                break;
            }
            next.push(*layer);
            if is_opaque(&path) {
                break;
            }
        }
        match top {
            None => return Ok(Found::Missing),
            Some(m) if m.is_dir() => {
                if last {
                    return Ok(Found::Dir(m));
                }
                visible = next;
            }
            Some(m) if !last => {
                return Ok(Found::AncestorNotDir {
                    index: i,
                    symlink: m.file_type().is_symlink(),
                });
            }
            Some(m) if m.is_file() => return Ok(Found::File),
            Some(_) => return Ok(Found::Other),
        }
    }
    Ok(Found::Missing)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// The per-run scaffold layer.
struct Scaffold<'a> {
    root: PathBuf,
    layers: &'a [PathBuf],
}

impl Scaffold<'_> {
    /// Make sure `target` can be mounted on: when the image lacks it (or has another kind
    /// of file there), add it and its parents to the scaffold.
    fn provide(&self, target: &str, components: &[String], kind: Kind) -> Result<(), Error> {
        let found = lookup(self.layers, components)?;
        let ready = match (&found, kind) {
            (Found::AncestorNotDir { index, symlink }, _) => {
                return Err(Error::MountTarget {
                    target: target.to_owned(),
                    component: format!("/{}", components[..=*index].join("/")),
                    reason: if *symlink {
                        "is a symbolic link"
                    } else {
                        "is not a directory"
                    },
                });
            }
            (Found::Dir(_), Kind::Dir) | (Found::File, Kind::File) => true,
            _ => false,
        };
        if ready {
            return Ok(());
        }
        let mut path = self.root.clone();
        for (i, comp) in components.iter().enumerate() {
            path.push(comp);
            let last = i + 1 == components.len();
            if last && kind == Kind::File {
                fs::File::create(&path).map_err(io_err("create scaffold file", &path))?;
                break;
            }
            if path.is_dir() {
                continue;
            }
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&path)
                .map_err(io_err("create scaffold directory", &path))?;
            match lookup(self.layers, &components[..=i])? {
                Found::Dir(meta) if !last => copy_attributes(&path, &meta)?,
                // Not in the image: 0755 root, whatever blumeops' umask.
                _ => fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("set mode of scaffold directory", &path))?,
            }
        }
        Ok(())
    }
}

fn copy_attributes(path: &Path, meta: &Metadata) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("set mode of", path))?;
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err("set owner of", path))
}

/// Escape a path for the overlay option string.
fn escape_overlay(out: &mut Vec<u8>, path: &Path) {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        out.push(b'.');
    }
    for &b in bytes {
        if matches!(b, b'\\' | b':' | b',') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

fn canonical_dir(what: &'static str, path: &Path) -> Result<PathBuf, Error> {
    let canonical = fs::canonicalize(path).map_err(io_err(what, path))?;
    if !canonical.is_dir() {
        return Err(Error::Io {
            action: what,
            path: path.to_owned(),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        });
    }
    Ok(canonical)
}

fn common_ancestor(paths: &[&Path]) -> PathBuf {
    let mut common: Vec<Component<'_>> = paths[0].components().collect();
    for p in &paths[1..] {
        let n = common
            .iter()
            .zip(p.components())
            .take_while(|(a, b)| **a == *b)
            .count();
        common.truncate(n);
    }
    common.iter().collect()
}

/// Build the overlay option string relative to a common ancestor directory.
fn overlay_data(
    scaffold: &Path,
    lowers_top_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    userxattr: bool,
) -> Result<(PathBuf, Vec<u8>), Error> {
    let mut all: Vec<&Path> = vec![scaffold, upper, work];
    all.extend(lowers_top_first.iter().map(PathBuf::as_path));
    let base = common_ancestor(&all);
    let rel = |p: &Path| p.strip_prefix(&base).unwrap_or(p).to_owned();
    let mut data = b"lowerdir=".to_vec();
    escape_overlay(&mut data, &rel(scaffold));
    for lower in lowers_top_first {
        data.push(b':');
        escape_overlay(&mut data, &rel(lower));
    }
    data.extend_from_slice(b",upperdir=");
    escape_overlay(&mut data, &rel(upper));
    data.extend_from_slice(b",workdir=");
    escape_overlay(&mut data, &rel(work));
    // Plain upper directories only: no metacopy-only files, no redirect xattrs, so the
    // layer diff sees whole files, whiteouts and opaque directories. With `userxattr` (in a
    // user namespace) the kernel refuses `redirect_dir=off` but never creates redirects.
    data.extend_from_slice(if userxattr {
        b",userxattr,index=off,metacopy=off"
    } else {
        b",index=off,metacopy=off,redirect_dir=off"
    });
    if data.len() > MOUNT_DATA_LIMIT {
        return Err(Error::TooManyLayers {
            layers: lowers_top_first.len(),
            length: data.len(),
            limit: MOUNT_DATA_LIMIT,
        });
    }
    Ok((base, data))
}

/// Options for [`Op::OverlayFs`]: one `lowerdir+` per layer, absolute paths, no escaping.
fn overlay_fs_options(
    scaffold: &Path,
    lowers_top_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    userxattr: bool,
) -> Result<Vec<(CString, CString)>, Error> {
    let mut options = Vec::with_capacity(lowers_top_first.len() + 6);
    for lower in std::iter::once(scaffold).chain(lowers_top_first.iter().map(PathBuf::as_path)) {
        options.push((c"lowerdir+".to_owned(), path_cstring(lower)?));
    }
    options.push((c"upperdir".to_owned(), path_cstring(upper)?));
    options.push((c"workdir".to_owned(), path_cstring(work)?));
    if userxattr {
        options.push((c"userxattr".to_owned(), c"".to_owned()));
    }
    let off: &[&std::ffi::CStr] = if userxattr {
        &[c"index", c"metacopy"]
    } else {
        &[c"index", c"metacopy", c"redirect_dir"]
    };
    for key in off {
        options.push(((*key).to_owned(), c"off".to_owned()));
    }
    Ok(options)
}

/// Environment with later duplicates replacing earlier ones, and PATH defaulted.
fn environment(env: &[String]) -> Result<(Vec<(String, String)>, String), Error> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for entry in env {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(Error::InvalidSpec {
                field: "environment entry",
                value: entry.split(['\0']).next().unwrap_or_default().to_owned(),
                reason: "must be NAME=value",
            });
        };
        if name.is_empty() {
            return Err(Error::InvalidSpec {
                field: "environment entry",
                value: String::new(),
                reason: "has an empty name",
            });
        }
        if values.insert(name.to_owned(), value.to_owned()).is_none() {
            order.push(name.to_owned());
        }
    }
    if !values.contains_key("PATH") {
        values.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
        order.push("PATH".to_owned());
    }
    let path = values["PATH"].clone();
    let pairs = order
        .into_iter()
        .map(|n| {
            let v = values.remove(&n).unwrap_or_default();
            (n, v)
        })
        .collect();
    Ok((pairs, path))
}

fn host_file(path: &str) -> Vec<u8> {
    fs::read(path).unwrap_or_default()
}

impl Plan {
    pub(super) fn new(spec: &RunSpec) -> Result<Self, Error> {
        let Some(command) = spec.args.first() else {
            return Err(Error::InvalidSpec {
                field: "command",
                value: String::new(),
                reason: "is empty",
            });
        };
        let user = UserSpec::parse(spec.user.as_deref())?;
        let hostname = if spec.hostname.is_empty() {
            DEFAULT_HOSTNAME
        } else {
            &spec.hostname
        };
        if hostname.len() > 64 || hostname.contains(['\0', '/', ' ', '\n']) {
            return Err(Error::InvalidSpec {
                field: "hostname",
                value: hostname.to_owned(),
                reason: "must be at most 64 characters without spaces or slashes",
            });
        }
        let cwd_parts = container_components("working directory", &spec.cwd)?;
        let cwd_display = format!("/{}", cwd_parts.join("/"));

        // Host directories.
        let upper = canonical_dir("use upper directory", &spec.upper)?;
        let work = canonical_dir("use overlay work directory", &spec.work)?;
        check_upper_fs(&upper, &work)?;
        let lowers_top_first = spec
            .lowers
            .iter()
            .rev()
            .map(|l| canonical_dir("use layer directory", l))
            .collect::<Result<Vec<_>, _>>()?;
        let parent = upper.parent().unwrap_or(Path::new("/"));
        let dir = tempfile::Builder::new()
            .prefix(".sandbox-")
            .tempdir_in(parent)
            .map_err(io_err("create sandbox directory in", parent))?;
        let scaffold_root = dir.path().join("scaffold");
        let merged = dir.path().join("merged");
        let files = dir.path().join("files");
        for d in [&scaffold_root, &merged, &files] {
            fs::create_dir(d).map_err(io_err("create sandbox directory", d))?;
        }
        // The container's `/` takes the upper directory's mode and owner (and the scaffold,
        // the topmost lower, must agree): give both the image root's, or 0755 root.
        match lowers_top_first.first() {
            Some(top) => {
                let meta = fs::metadata(top).map_err(io_err("inspect layer directory", top))?;
                copy_attributes(&scaffold_root, &meta)?;
                copy_attributes(&upper, &meta)?;
            }
            None => {
                for dir in [&scaffold_root, &upper] {
                    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("set mode of", dir))?;
                    std::os::unix::fs::lchown(dir, Some(0), Some(0))
                        .map_err(io_err("set owner of", dir))?;
                }
            }
        }

        // /etc/hosts and /etc/resolv.conf for the container.
        let (hosts, resolv) = match spec.network {
            Network::Host => {
                let mut hosts = host_file("/etc/hosts");
                if !hosts.is_empty() && !hosts.ends_with(b"\n") {
                    hosts.push(b'\n');
                }
                hosts.extend_from_slice(format!("127.0.1.1\t{hostname}\n").as_bytes());
                (hosts, host_file("/etc/resolv.conf"))
            }
            Network::None => (
                format!(
                    "127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                )
                .into_bytes(),
                Vec::new(),
            ),
            // Only the step's own loopback, and slirp4netns's resolver.
            Network::Isolated => (
                format!(
                    "127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                )
                .into_bytes(),
                format!("nameserver {}\n", super::network::DNS_ADDRESS).into_bytes(),
            ),
        };
        let hosts_file = files.join("hosts");
        let resolv_file = files.join("resolv.conf");
        for (path, data) in [(&hosts_file, &hosts), (&resolv_file, &resolv)] {
            fs::write(path, data).map_err(io_err("write", path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o644))
                .map_err(io_err("set mode of", path))?;
        }

        // Mount targets, in the scaffold when the image lacks them.
        let scaffold = Scaffold {
            root: scaffold_root.clone(),
            layers: &lowers_top_first,
        };
        let standard: [(&str, Kind); 5] = [
            ("/proc", Kind::Dir),
            ("/sys", Kind::Dir),
            ("/dev", Kind::Dir),
            ("/etc/hosts", Kind::File),
            ("/etc/resolv.conf", Kind::File),
        ];
        for (target, kind) in standard {
            let comps = container_components("mount target", target)?;
            scaffold.provide(target, &comps, kind)?;
        }
        let mut caches = Vec::with_capacity(spec.mounts.len());
        for m in &spec.mounts {
            let comps = container_components("mount target", &m.target)?;
            if comps.is_empty() {
                return Err(Error::InvalidSpec {
                    field: "mount target",
                    value: m.target.clone(),
                    reason: "cannot be the root directory",
                });
            }
            // A file (a secret) is mounted on a file, made in the scaffold when missing.
            let source =
                fs::canonicalize(&m.source).map_err(io_err("use mount source", &m.source))?;
            let kind = if source.is_dir() {
                Kind::Dir
            } else {
                Kind::File
            };
            scaffold.provide(&m.target, &comps, kind)?;
            caches.push((source, comps, m.read_only));
        }
        let mut tmpfs = Vec::with_capacity(spec.tmpfs.len());
        for m in &spec.tmpfs {
            let comps = container_components("tmpfs mount target", &m.target)?;
            if comps.is_empty() {
                return Err(Error::InvalidSpec {
                    field: "tmpfs mount target",
                    value: m.target.clone(),
                    reason: "cannot be the root directory",
                });
            }
            scaffold.provide(&m.target, &comps, Kind::Dir)?;
            let data = match m.size {
                Some(size) => format!("mode=1777,size={size}"),
                None => "mode=1777".to_owned(),
            };
            tmpfs.push((comps, data));
        }

        let mapping = crate::executor::current_mapping();
        let userns = !mapping.is_initial();
        let overlay = overlay_data(&scaffold_root, &lowers_top_first, &upper, &work, userns);
        // Rootless without overlayfs: a copy of the layers (and the scaffold) instead.
        let fs_mode = if userns {
            super::rootless_fs().clone()
        } else {
            super::RootlessFs::Overlay
        };
        let copy = if fs_mode == super::RootlessFs::Copy {
            let rootfs = dir.path().join("rootfs");
            fs::create_dir(&rootfs).map_err(io_err("create sandbox directory", &rootfs))?;
            let mut layers = vec![scaffold_root.clone()];
            layers.extend(lowers_top_first.iter().cloned());
            let baseline = super::copyfs::populate(&layers, &rootfs)?;
            Some((rootfs, baseline))
        } else {
            None
        };
        let in_merged = |rel: &str| merged.join(rel);
        let mut ops = Vec::new();
        let mut push = |op: Op, step: SetupStep, path: PathBuf| {
            ops.push(PlannedOp { op, step, path });
        };
        let root = Path::new("/");
        push(
            mount_op(None, root, None, libc::MS_REC | libc::MS_PRIVATE, None)?,
            SetupStep::MakePrivate,
            root.to_owned(),
        );
        let fuse = match &fs_mode {
            super::RootlessFs::FuseOverlayfs(program) => {
                let mut lowers = vec![scaffold_root.clone()];
                lowers.extend(lowers_top_first.iter().cloned());
                let mut options = b"lowerdir=".to_vec();
                for (i, l) in lowers.iter().enumerate() {
                    if i > 0 {
                        options.push(b':');
                    }
                    escape_overlay(&mut options, l);
                }
                options.extend_from_slice(b",upperdir=");
                escape_overlay(&mut options, &upper);
                options.extend_from_slice(b",workdir=");
                escape_overlay(&mut options, &work);
                let args = vec![
                    path_cstring(program)?,
                    c"-f".to_owned(),
                    c"-o".to_owned(),
                    cstring("fuse-overlayfs options", options)?,
                    path_cstring(&merged)?,
                ];
                let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
                argv.push(std::ptr::null());
                Some(FuseMount {
                    program: path_cstring(program)?,
                    argv,
                    _args: args,
                    merged: path_cstring(&merged)?,
                })
            }
            _ => None,
        };
        let too_long = match overlay {
            // fuse-overlayfs: the helper mounts it before the init starts (see `child`).
            _ if fuse.is_some() => None,
            _ if copy.is_some() => {
                let rootfs = &copy.as_ref().expect("checked").0;
                push(
                    Op::Mount {
                        source: Some(path_cstring(rootfs)?),
                        target: path_cstring(&merged)?,
                        fstype: None,
                        flags: libc::MS_BIND | libc::MS_REC,
                        data: None,
                    },
                    SetupStep::MountOverlay,
                    merged.clone(),
                );
                None
            }
            Ok((base, data)) => {
                push(
                    Op::Chdir {
                        path: path_cstring(&base)?,
                    },
                    SetupStep::EnterLayerDir,
                    base.clone(),
                );
                push(
                    Op::Mount {
                        source: Some(c"overlay".to_owned()),
                        target: path_cstring(&merged)?,
                        fstype: Some(c"overlay".to_owned()),
                        flags: 0,
                        data: Some(cstring("overlay options", data)?),
                    },
                    SetupStep::MountOverlay,
                    merged.clone(),
                );
                None
            }
            Err(Error::TooManyLayers {
                layers,
                length,
                limit,
            }) => {
                push(
                    Op::OverlayFs {
                        target: path_cstring(&merged)?,
                        options: overlay_fs_options(
                            &scaffold_root,
                            &lowers_top_first,
                            &upper,
                            &work,
                            userns,
                        )?,
                    },
                    SetupStep::MountOverlay,
                    merged.clone(),
                );
                Some((layers, length, limit))
            }
            Err(e) => return Err(e),
        };
        // Device nodes that come with the image stay inert: the rootfs is nodev (one
        // remount for both ways of mounting the overlay).
        push(
            Op::Mount {
                source: None,
                target: path_cstring(&merged)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NODEV,
                data: None,
            },
            SetupStep::RestrictMount,
            merged.clone(),
        );
        let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let proc = in_merged("proc");
        push(
            mount_op(Some("proc"), &proc, Some("proc"), nosuid_nodev_noexec, None)?,
            SetupStep::MountProc,
            proc,
        );
        let sys = in_merged("sys");
        push(
            Op::Sysfs {
                target: path_cstring(&sys)?,
            },
            SetupStep::MountSys,
            sys,
        );
        let dev = in_merged("dev");
        push(
            mount_op(
                Some("tmpfs"),
                &dev,
                Some("tmpfs"),
                // nodev: a node a step makes here is inert; the few devices a step gets
                // are the host's, bind-mounted below (their mount allows devices).
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME,
                Some("mode=755,size=65536k"),
            )?,
            SetupStep::MountTmpfs,
            dev.clone(),
        );
        for name in ["null", "zero", "full", "random", "urandom", "tty"] {
            let path = dev.join(name);
            push(
                Op::Device {
                    path: path_cstring(&path)?,
                    host: cstring("device", format!("/dev/{name}"))?,
                },
                SetupStep::CreateDevice,
                path,
            );
        }
        for (name, mode) in [("pts", 0o755), ("shm", 0o1777)] {
            let path = dev.join(name);
            push(
                Op::Mkdir {
                    path: path_cstring(&path)?,
                    mode,
                },
                SetupStep::CreateDevDir,
                path,
            );
        }
        let pts = dev.join("pts");
        push(
            mount_op(
                Some("devpts"),
                &pts,
                Some("devpts"),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                // The tty group owns the ptys, when this namespace maps it.
                Some(if mapping.maps_gid(5) {
                    "newinstance,ptmxmode=0666,mode=0620,gid=5"
                } else {
                    "newinstance,ptmxmode=0666,mode=0620"
                }),
            )?,
            SetupStep::MountDevpts,
            pts,
        );
        let shm = dev.join("shm");
        push(
            mount_op(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                nosuid_nodev_noexec,
                Some("mode=1777,size=65536k"),
            )?,
            SetupStep::MountTmpfs,
            shm,
        );
        for (name, target) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            let link = dev.join(name);
            push(
                Op::Symlink {
                    target: cstring("symlink", target)?,
                    link: path_cstring(&link)?,
                },
                SetupStep::CreateSymlink,
                link,
            );
        }
        let mut bind = |source: &Path,
                        target: PathBuf,
                        read_only: bool,
                        step: SetupStep|
         -> Result<(), Error> {
            push(
                Op::Mount {
                    source: Some(path_cstring(source)?),
                    target: path_cstring(&target)?,
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                },
                step,
                target.clone(),
            );
            // Every bind mount is nodev (a cache volume may hold nodes a step made).
            let ro = if read_only { libc::MS_RDONLY } else { 0 };
            push(
                Op::Mount {
                    source: None,
                    target: path_cstring(&target)?,
                    fstype: None,
                    flags: libc::MS_BIND
                        | libc::MS_REMOUNT
                        | libc::MS_NODEV
                        | ro
                        | locked_flags(source),
                    data: None,
                },
                SetupStep::RestrictMount,
                target,
            );
            Ok(())
        };
        bind(
            &hosts_file,
            in_merged("etc/hosts"),
            true,
            SetupStep::BindEtcFile,
        )?;
        bind(
            &resolv_file,
            in_merged("etc/resolv.conf"),
            true,
            SetupStep::BindEtcFile,
        )?;
        for (source, comps, read_only) in &caches {
            bind(
                source,
                in_merged(&comps.join("/")),
                *read_only,
                SetupStep::BindCache,
            )?;
        }
        for (comps, data) in &tmpfs {
            let target = in_merged(&comps.join("/"));
            push(
                mount_op(
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some(data),
                )?,
                SetupStep::MountTmpfs,
                target,
            );
        }

        // The command.
        let (env, path_var) = environment(&spec.env)?;
        let needs_home = !env.iter().any(|(n, _)| n == "HOME");
        let envp = env
            .iter()
            .map(|(n, v)| cstring("environment entry", format!("{n}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let argv = spec
            .args
            .iter()
            .map(|a| cstring("argument", a.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        let candidates = if command.contains('/') {
            vec![cstring("command", command.as_str())?]
        } else {
            path_var
                .split(':')
                .map(|d| {
                    let d = if d.is_empty() { "." } else { d };
                    cstring("command", format!("{}/{command}", d.trim_end_matches('/')))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut cwd = cwd_display.clone().into_bytes();
        cwd.push(0);

        Ok(Self {
            ops,
            merged: path_cstring(&merged)?,
            merged_path: merged,
            overlay_too_long: too_long,
            hostname: cstring("hostname", hostname)?,
            own_network: spec.network != Network::Host,
            slirp: match spec.network {
                Network::Isolated => Some(
                    super::network::user_network().map_err(|reason| Error::Network { reason })?,
                ),
                _ => None,
            },
            setgroups_denied: std::fs::read_to_string("/proc/self/setgroups")
                .is_ok_and(|s| s.trim() == "deny"),
            seccomp: super::seccomp::filters()
                .map_err(Error::Seccomp)?
                .iter()
                .map(|p| libc::sock_fprog {
                    len: p.len() as u16,
                    // The programs live for the whole process (built once).
                    filter: p.as_ptr().cast_mut().cast(),
                })
                .collect(),
            wait_for_go: false,
            copy,
            fuse,
            fuse_lowers: matches!(fs_mode, super::RootlessFs::FuseOverlayfs(_)).then(|| {
                let mut lowers = vec![scaffold_root.clone()];
                lowers.extend(lowers_top_first.iter().cloned());
                lowers
            }),
            cwd,
            cwd_display,
            user,
            userdb: vec![0; 2 * MAX_USERDB],
            groups: Vec::with_capacity(MAX_GROUPS),
            argv_ptrs: Vec::with_capacity(argv.len() + 1),
            envp_ptrs: Vec::with_capacity(envp.len() + 2),
            argv,
            envp,
            home_env: vec![0; MAX_HOME + 6],
            needs_home,
            candidates,
            command: command.clone(),
            path_var,
            _dir: dir,
        })
    }
}

fn mount_op(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: c_ulong,
    data: Option<&str>,
) -> Result<Op, Error> {
    Ok(Op::Mount {
        source: source.map(|s| cstring("mount source", s)).transpose()?,
        target: path_cstring(target)?,
        fstype: fstype.map(|s| cstring("file system type", s)).transpose()?,
        flags,
        data: data.map(|s| cstring("mount options", s)).transpose()?,
    })
}

/// The flags of the mount holding `path` that a bind remount must repeat: in a user
/// namespace the kernel locks them (nosuid, nodev, noexec, the atime mode), and a remount
/// that would drop one fails with EPERM.
fn locked_flags(path: &Path) -> c_ulong {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let Ok(st) = statvfs(path) else {
        return 0;
    };
    let f = st.flags();
    let mut flags = 0;
    for (have, add) in [
        (FsFlags::ST_NOSUID, libc::MS_NOSUID),
        (FsFlags::ST_NODEV, libc::MS_NODEV),
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
        (FsFlags::ST_NOATIME, libc::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, libc::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(have) {
            flags |= add;
        }
    }
    if flags & (libc::MS_NOATIME | libc::MS_RELATIME) == 0 {
        flags |= libc::MS_STRICTATIME;
    }
    flags
}

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

fn check_upper_fs(upper: &Path, work: &Path) -> Result<(), Error> {
    let statfs = nix::sys::statfs::statfs(upper).map_err(|e| Error::Io {
        action: "inspect file system of",
        path: upper.to_owned(),
        source: e.into(),
    })?;
    if statfs.filesystem_type().0 == OVERLAYFS_SUPER_MAGIC {
        return Err(Error::Unsupported(super::Requirement::UpperNotOnOverlay));
    }
    let dev = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.dev())
            .map_err(io_err("inspect", p))
    };
    if dev(upper)? != dev(work)? {
        return Err(Error::InvalidSpec {
            field: "overlay work directory",
            value: work.display().to_string(),
            reason: "must be on the same file system as the upper directory",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_container_paths() {
        assert_eq!(
            container_components("x", "/a/./b//../c/").unwrap(),
            ["a", "c"]
        );
        assert!(container_components("x", "/").unwrap().is_empty());
        assert!(container_components("x", "rel").is_err());
    }

    #[test]
    fn environment_dedupes_and_defaults_path() {
        let (env, path) = environment(&["A=1".into(), "B=2".into(), "A=3".into()]).unwrap();
        assert_eq!(
            env,
            [
                ("A".to_owned(), "3".to_owned()),
                ("B".to_owned(), "2".to_owned()),
                ("PATH".to_owned(), DEFAULT_PATH.to_owned())
            ]
        );
        assert_eq!(path, DEFAULT_PATH);
        assert!(environment(&["NOEQUALS".into()]).is_err());
    }

    #[test]
    fn overlay_paths_are_relative_and_escaped() {
        let lowers = [
            PathBuf::from("/c/layers/b,2"),
            PathBuf::from("/c/layers/a:1"),
        ];
        let (base, data) = overlay_data(
            Path::new("/c/tmp/s/scaffold"),
            &lowers,
            Path::new("/c/tmp/upper"),
            Path::new("/c/tmp/work"),
            false,
        )
        .unwrap();
        assert_eq!(base, Path::new("/c"));
        assert_eq!(
            String::from_utf8(data).unwrap(),
            "lowerdir=tmp/s/scaffold:layers/b\\,2:layers/a\\:1,upperdir=tmp/upper,\
             workdir=tmp/work,index=off,metacopy=off,redirect_dir=off"
        );
        let many: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/l/{i:064}")))
            .collect();
        let err = overlay_data(
            Path::new("/s"),
            &many,
            Path::new("/u"),
            Path::new("/w"),
            false,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::TooManyLayers { layers: 200, .. }),
            "{err}"
        );
    }
}
