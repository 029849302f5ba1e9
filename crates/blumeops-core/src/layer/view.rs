//! A read-only view of an image's filesystem made of unpacked layer directories in the
//! overlayfs representation (whiteouts are character devices 0/0, opaque directories carry
//! `trusted.overlay.opaque=y`), without mounting anything. Used to copy files out of another
//! stage and to read `/etc/passwd` and `/etc/group`.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::Error;

/// Symlink hops allowed while resolving one path (as Linux's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// The merged view of a stack of unpacked layers.
#[derive(Debug, Clone)]
pub struct RootfsView {
    /// Layer directories, base first.
    layers: Vec<PathBuf>,
}

/// An entry found in the view.
#[derive(Debug)]
pub struct ViewEntry {
    /// Path inside the image, normalised, without a leading `/`.
    pub path: String,
    /// Where the entry's data is on the host (inside one layer directory).
    pub host_path: PathBuf,
    /// Its metadata (not following a final symlink).
    pub meta: Metadata,
}

/// An overlay whiteout: a character device 0/0.
pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// An overlay opaque directory, in either namespace: root unpacks with `trusted.overlay.*`,
/// the rootless executor with `user.overlay.*`.
pub(crate) fn is_opaque(dir: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| {
            let mut buf = [0u8; 8];
            matches!(rustix::fs::lgetxattr(dir, *name, &mut buf), Ok(1) if buf[0] == b'y')
        })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Host {
        action: "read",
        path: path.to_owned(),
        source,
    }
}

/// The components of `path`, without empty and `.` ones.
pub(super) fn split(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// How a directory path stands in one layer.
enum DirInLayer {
    /// The directory is there; `opaque` if it or a directory above it is opaque.
    Present { dir: PathBuf, opaque: bool },
    /// The layer stops before reaching it; `opaque_above` if a directory it has on the way
    /// is opaque (which hides lower layers there).
    Absent { opaque_above: bool },
    /// A whiteout or non-directory on the way hides it in this and every lower layer.
    Hidden,
}

/// Walk `comps` from `layer` without following symlinks.
fn dir_in_layer(layer: &Path, comps: &[&str]) -> Result<DirInLayer, Error> {
    let mut dir = layer.to_path_buf();
    let mut opaque = false;
    for comp in comps {
        dir.push(comp);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => opaque |= is_opaque(&dir),
            Ok(_) => return Ok(DirInLayer::Hidden),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DirInLayer::Absent {
                    opaque_above: opaque,
                });
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
    }
    Ok(DirInLayer::Present { dir, opaque })
}

impl RootfsView {
    /// A view of `layers` (base first).
    pub fn new(layers: Vec<PathBuf>) -> Self {
        Self { layers }
    }

    /// The entry at `rel` (components already free of symlinks and `..`), if visible.
    fn lookup(&self, comps: &[&str]) -> Result<Option<ViewEntry>, Error> {
        let rel = comps.join("/");
        for layer in self.layers.iter().rev() {
            let opaque_below = match dir_in_layer(layer, &comps[..comps.len().saturating_sub(1)])? {
                // A whiteout or a non-directory on the way hides the path in lower layers,
                // and so does an opaque directory above where this layer stops.
                DirInLayer::Hidden | DirInLayer::Absent { opaque_above: true } => {
                    return Ok(None);
                }
                DirInLayer::Absent {
                    opaque_above: false,
                } => continue,
                DirInLayer::Present { opaque, .. } => opaque,
            };
            let host_path = layer.join(&rel);
            match std::fs::symlink_metadata(&host_path) {
                Ok(m) if is_whiteout(&m) => return Ok(None),
                Ok(meta) => {
                    return Ok(Some(ViewEntry {
                        path: rel,
                        host_path,
                        meta,
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if opaque_below {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(io_err(&host_path)(e)),
            }
        }
        Ok(None)
    }

    /// Resolve `path` as a process chrooted into the image would: `..` stops at the root,
    /// symlinks are followed inside the image (the last one only when `follow_last`).
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<Option<ViewEntry>, Error> {
        let mut pending: Vec<String> = split(path).into_iter().rev().map(str::to_owned).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        if pending.is_empty() {
            return Ok(self.layers.last().and_then(|l| {
                std::fs::symlink_metadata(l).ok().map(|meta| ViewEntry {
                    path: String::new(),
                    host_path: l.clone(),
                    meta,
                })
            }));
        }
        while let Some(comp) = pending.pop() {
            if comp == ".." {
                done.pop();
                continue;
            }
            done.push(comp);
            let comps: Vec<&str> = done.iter().map(String::as_str).collect();
            let Some(entry) = self.lookup(&comps)? else {
                return Ok(None);
            };
            let last = pending.is_empty();
            if entry.meta.file_type().is_symlink() && (!last || follow_last) {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(Error::InvalidPath {
                        path: path.to_owned(),
                        reason: "too many levels of symbolic links",
                    });
                }
                let target =
                    std::fs::read_link(&entry.host_path).map_err(io_err(&entry.host_path))?;
                let target = target.to_string_lossy().into_owned();
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                pending.extend(split(&target).into_iter().rev().map(str::to_owned));
                continue;
            }
            if last {
                return Ok(Some(entry));
            }
            if !entry.meta.is_dir() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Read a (small) file, following symlinks. `None` if it does not exist.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.resolve(path, true)? {
            Some(e) if e.meta.is_file() => std::fs::read(&e.host_path)
                .map(Some)
                .map_err(io_err(&e.host_path)),
            _ => Ok(None),
        }
    }

    /// Names in the merged directory `rel` (resolved, without symlinks), sorted.
    pub fn list_dir(&self, rel: &str) -> Result<Vec<String>, Error> {
        let comps = split(rel);
        let mut names = std::collections::BTreeSet::new();
        let mut hidden = std::collections::BTreeSet::new();
        for layer in self.layers.iter().rev() {
            let (dir, opaque) = match dir_in_layer(layer, &comps)? {
                DirInLayer::Hidden | DirInLayer::Absent { opaque_above: true } => break,
                DirInLayer::Absent {
                    opaque_above: false,
                } => continue,
                DirInLayer::Present { dir, opaque } => (dir, opaque),
            };
            for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if hidden.contains(&name) || names.contains(&name) {
                    continue;
                }
                let meta = entry.metadata().map_err(io_err(&entry.path()))?;
                if is_whiteout(&meta) {
                    hidden.insert(name);
                } else {
                    names.insert(name);
                }
            }
            if opaque || is_opaque(&dir) {
                break;
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Look up a user in the image's `/etc/passwd` (by name, or a numeric id as is) and
    /// a group in `/etc/group`: `user`, `user:group`, `uid:gid`. Returns (uid, gid); a user
    /// without a group gets its primary group.
    pub fn resolve_owner(&self, spec: &str) -> Result<(u32, u32), OwnerLookupError> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = self
            .read_file("/etc/passwd")
            .ok()
            .flatten()
            .unwrap_or_default();
        let passwd = String::from_utf8_lossy(&passwd);
        let (uid, primary_gid) = if let Ok(uid) = user.parse::<u32>() {
            let gid = passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[2].parse() == Ok(uid)).then(|| f[3].parse().ok())?
            });
            (uid, gid.unwrap_or(uid))
        } else {
            passwd
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 4 && f[0] == user)
                        .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
                })
                .ok_or_else(|| OwnerLookupError::UnknownUser(user.to_owned()))?
        };
        let gid = match group {
            None => primary_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    let groups = self
                        .read_file("/etc/group")
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    String::from_utf8_lossy(&groups)
                        .lines()
                        .find_map(|l| {
                            let f: Vec<&str> = l.split(':').collect();
                            (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok())?
                        })
                        .ok_or_else(|| OwnerLookupError::UnknownGroup(g.to_owned()))?
                }
            },
        };
        Ok((uid, gid))
    }
}

/// A user or group name not found in the image.
#[derive(Debug, thiserror::Error)]
pub enum OwnerLookupError {
    /// No such user in /etc/passwd.
    #[error("unknown user `{0}`: not in the image's /etc/passwd")]
    UnknownUser(String),
    /// No such group in /etc/group.
    #[error("unknown group `{0}`: not in the image's /etc/group")]
    UnknownGroup(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn is_root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn merges_layers_with_whiteouts_opaque_dirs_and_symlinks() {
        if !is_root() {
            crate::testing::skip("needs root for whiteout devices and trusted xattrs");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
        fs::create_dir_all(l0.join("etc")).unwrap();
        fs::create_dir_all(l0.join("data/old")).unwrap();
        fs::write(
            l0.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(l0.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        fs::write(l0.join("etc/gone"), "x").unwrap();
        fs::write(l0.join("data/old/f"), "old").unwrap();
        fs::write(l0.join("data/keep"), "keep").unwrap();
        std::os::unix::fs::symlink("/etc", l0.join("cfg")).unwrap();
        fs::create_dir_all(l1.join("etc")).unwrap();
        nix::sys::stat::mknod(
            &l1.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        fs::create_dir_all(l1.join("data")).unwrap();
        rustix::fs::setxattr(
            l1.join("data").as_path(),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        fs::write(l1.join("data/new"), "new").unwrap();
        let v = RootfsView::new(vec![l0, l1]);
        assert_eq!(v.read_file("/etc/passwd").unwrap().unwrap().len(), 56);
        assert!(v.read_file("/etc/gone").unwrap().is_none());
        assert_eq!(v.list_dir("etc").unwrap(), ["group", "passwd"]);
        assert_eq!(v.list_dir("data").unwrap(), ["new"]);
        assert!(v.resolve("/data/keep", true).unwrap().is_none());
        assert!(
            v.read_file("/cfg/passwd").unwrap().is_some(),
            "absolute symlink resolved in the image"
        );
        assert!(v.read_file("/../../cfg/../etc/passwd").unwrap().is_some());
        assert_eq!(v.resolve_owner("app").unwrap(), (1000, 1001));
        assert_eq!(v.resolve_owner("app:staff").unwrap(), (1000, 50));
        assert_eq!(v.resolve_owner("1000").unwrap(), (1000, 1001));
        assert_eq!(v.resolve_owner("7:8").unwrap(), (7, 8));
        assert!(
            v.resolve_owner("nobody")
                .unwrap_err()
                .to_string()
                .contains("nobody")
        );
    }
}
