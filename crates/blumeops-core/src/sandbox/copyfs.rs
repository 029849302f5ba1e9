//! The copying fallback for rootless steps where overlayfs cannot be mounted in a user
//! namespace (Linux before 5.11, a store on a filesystem without user xattrs): the lower
//! layers are copied into a scratch rootfs, the step runs on it, and afterwards the changes
//! are moved into the upper directory in overlayfs's own form (new and changed entries,
//! 0/0 whiteouts for deletions, `user.overlay.opaque` for replaced directories), so the
//! layer writer and the image bytes are the same as with overlayfs. It is slower: every
//! step copies the whole image first.
//!
//! What changed is told by identity and ctime: ctime cannot be set from user space, and the
//! step starts only once the filesystem's clock has moved past the end of the copy, so an
//! entry the step touched has a later ctime than every entry of the copy. An entry's
//! identity is its inode number and, where the filesystem records it, its birth time:
//! ext4 hands a freed inode number to the next new file at once, so after
//! `rm -rf /data && mkdir /data` the new directory often has the old one's number, and only
//! the birth time tells that it replaced the copy's (overlayfs makes it opaque). Where there
//! is no birth time, the copy's directories are held open during the step, so their numbers
//! cannot be reused.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, Timestamps, XattrFlags};

use super::{Error, io_err};
use crate::layer::{is_opaque, is_whiteout};

fn remove(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(_) => Ok(()),
    }
}

/// Owner, mode (after the owner: chown clears setuid), xattrs other than overlay's, times.
fn copy_meta(meta: &Metadata, src: &Path, dest: &Path) -> Result<(), Error> {
    let symlink = meta.file_type().is_symlink();
    rustix::fs::chownat(
        rustix::fs::CWD,
        dest,
        Some(rustix::fs::Uid::from_raw(meta.uid())),
        Some(rustix::fs::Gid::from_raw(meta.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("set owner of", dest)(e.into()))?;
    if !symlink {
        fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("set mode of", dest))?;
        copy_xattrs(src, dest)?;
    }
    let ts = |s: i64, ns: i64| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: ns,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        dest,
        &Timestamps {
            last_access: ts(meta.atime(), meta.atime_nsec()),
            last_modification: ts(meta.mtime(), meta.mtime_nsec()),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("set times of", dest)(e.into()))
}

fn copy_xattrs(src: &Path, dest: &Path) -> Result<(), Error> {
    let mut names = vec![0u8; 64 * 1024];
    let Ok(n) = rustix::fs::llistxattr(src, &mut names) else {
        return Ok(());
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            continue;
        }
        let mut value = vec![0u8; 64 * 1024];
        if let Ok(len) = rustix::fs::lgetxattr(src, name.as_str(), &mut value) {
            rustix::fs::lsetxattr(dest, name.as_str(), &value[..len], XattrFlags::empty())
                .map_err(|e| io_err("set extended attribute of", dest)(e.into()))?;
        }
    }
    Ok(())
}

/// Copy one non-directory entry.
fn copy_entry(meta: &Metadata, src: &Path, dest: &Path) -> Result<(), Error> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err("read link", src))?;
        std::os::unix::fs::symlink(&target, dest).map_err(io_err("create symlink", dest))?;
    } else if ft.is_file() {
        let mut from = File::open(src).map_err(io_err("open", src))?;
        let mut to = File::create(dest).map_err(io_err("create", dest))?;
        io::copy(&mut from, &mut to).map_err(io_err("copy to", dest))?;
    } else {
        use std::os::unix::fs::FileTypeExt;
        if !ft.is_fifo() {
            return Ok(()); // device nodes cannot be made in a user namespace
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dest,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .map_err(|e| io_err("create fifo", dest)(e.into()))?;
    }
    copy_meta(meta, src, dest)
}

/// Apply one layer directory (overlayfs form) onto `dest`, as overlayfs would show it on top
/// of what `dest` already holds.
fn apply_layer(src: &Path, dest: &Path) -> Result<(), Error> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io_err("read directory", src))?
        .collect::<Result<_, _>>()
        .map_err(io_err("read directory", src))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let meta = fs::symlink_metadata(&from).map_err(io_err("inspect", &from))?;
        if is_whiteout(&meta) {
            remove(&to)?;
            continue;
        }
        if meta.is_dir() {
            let existing = fs::symlink_metadata(&to).ok();
            match existing {
                Some(m) if m.is_dir() && !is_opaque(&from) => {}
                Some(_) => {
                    remove(&to)?;
                    fs::create_dir(&to).map_err(io_err("create directory", &to))?;
                }
                None => fs::create_dir(&to).map_err(io_err("create directory", &to))?,
            }
            apply_layer(&from, &to)?;
            copy_meta(&meta, &from, &to)?;
            continue;
        }
        remove(&to)?;
        // Hard links of the layers become separate files, as overlayfs treats them: a step
        // that changes one path of a lower hard link changes only that path (copy-up).
        copy_entry(&meta, &from, &to)?;
    }
    Ok(())
}

/// Which file a path names: inode number and birth time (when the filesystem has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    ino: u64,
    born: Option<(i64, u32)>,
}

fn identity(path: &Path) -> io::Result<Identity> {
    use rustix::fs::StatxFlags;
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::INO | StatxFlags::BTIME,
    )?;
    let born = (StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::BTIME))
        .then_some((st.stx_btime.tv_sec, st.stx_btime.tv_nsec));
    Ok(Identity {
        ino: st.stx_ino,
        born,
    })
}

/// What the copy held: each path's identity, and the end of the copy on the filesystem
/// clock.
pub(super) struct Baseline {
    entries: HashMap<PathBuf, Identity>,
    copied_at: (i64, i64),
    /// The copy's directories, open while the step runs when there is no birth time.
    _held: Vec<rustix::fd::OwnedFd>,
}

impl Baseline {
    /// Whether `rel` (now `now`) is the very entry the copy had there.
    fn is_copied(&self, rel: &Path, now: io::Result<Identity>) -> bool {
        let (Ok(now), Some(then)) = (now, self.entries.get(rel)) else {
            return false;
        };
        now.ino == then.ino && (then.born.is_none() || now.born == then.born)
    }
}

fn ctime(meta: &Metadata) -> (i64, i64) {
    (meta.ctime(), meta.ctime_nsec())
}

/// Copy `lowers_top_first` into the empty directory `rootfs`, then wait until the
/// filesystem's clock has passed the copy.
pub(super) fn populate(lowers_top_first: &[PathBuf], rootfs: &Path) -> Result<Baseline, Error> {
    populate_with(lowers_top_first, rootfs, true)
}

/// `populate`, using birth times or (`birth_times` false, as on a filesystem without them)
/// holding the directories open.
fn populate_with(
    lowers_top_first: &[PathBuf],
    rootfs: &Path,
    birth_times: bool,
) -> Result<Baseline, Error> {
    for layer in lowers_top_first.iter().rev() {
        apply_layer(layer, rootfs)?;
        if let Ok(meta) = fs::metadata(layer) {
            copy_meta(&meta, layer, rootfs)?;
        }
    }
    let mut entries = HashMap::new();
    let mut held = Vec::new();
    record(rootfs, Path::new(""), birth_times, &mut entries, &mut held)?;
    let marker = rootfs.with_extension("copied");
    let touch = |p: &Path| -> Result<(i64, i64), Error> {
        File::create(p).map_err(io_err("create", p))?;
        let meta = fs::metadata(p).map_err(io_err("inspect", p))?;
        let _ = fs::remove_file(p);
        Ok(ctime(&meta))
    };
    let copied_at = touch(&marker)?;
    // Coarse filesystem clocks tick every few milliseconds: start the step only once a new
    // file gets a later ctime than the copy's end.
    while touch(&marker)? <= copied_at {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(Baseline {
        entries,
        copied_at,
        _held: held,
    })
}

fn record(
    root: &Path,
    rel: &Path,
    birth_times: bool,
    out: &mut HashMap<PathBuf, Identity>,
    held: &mut Vec<rustix::fd::OwnedFd>,
) -> Result<(), Error> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
        let entry = entry.map_err(io_err("read directory", &dir))?;
        let path = rel.join(entry.file_name());
        let src = entry.path();
        let mut id = identity(&src).map_err(io_err("inspect", &src))?;
        if !birth_times {
            id.born = None;
        }
        out.insert(path.clone(), id);
        if entry.file_type().map_err(io_err("inspect", &src))?.is_dir() {
            if id.born.is_none() {
                held.push(hold(&src)?);
            }
            record(root, &path, birth_times, out, held)?;
        }
    }
    Ok(())
}

/// Keep a directory's inode (and so its number) alive while the step runs.
fn hold(dir: &Path) -> Result<rustix::fd::OwnedFd, Error> {
    use rustix::fs::OFlags;
    let open = || {
        rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
    };
    match open() {
        Err(rustix::io::Errno::MFILE) => {
            raise_open_files_limit();
            open()
        }
        other => other,
    }
    .map_err(|e| io_err("hold open", dir)(e.into()))
}

/// Raise the soft limit on open files to the hard one (as Go programs do at start).
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Move what the step changed in `rootfs` into the empty directory `upper`, in overlayfs's
/// form.
pub(super) fn diff(rootfs: &Path, base: &Baseline, upper: &Path) -> Result<(), Error> {
    // Deletions, found before anything moves: a path of the copy that is gone, under a
    // directory that is still the copy's own (a replaced directory is opaque and says it
    // all).
    let mut gone: Vec<&PathBuf> = base
        .entries
        .keys()
        .filter(|p| fs::symlink_metadata(rootfs.join(p)).is_err())
        .filter(|p| {
            let parent = p.parent().unwrap_or(Path::new(""));
            let dir = rootfs.join(parent);
            parent.as_os_str().is_empty()
                || (fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
                    && base.is_copied(parent, identity(&dir)))
        })
        .collect();
    gone.sort();
    let mut walk = Walk {
        rootfs,
        upper,
        base,
        dirs: HashMap::new(),
        made: HashMap::new(),
    };
    walk.dir(Path::new(""))?;
    for path in gone {
        walk.ensure_parents(path)?;
        let target = upper.join(path);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &target,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| io_err("create whiteout", &target)(e.into()))?;
    }
    // Directory attributes last, deepest first: placing entries changes a directory's
    // times.
    let mut made: Vec<_> = walk.made.into_iter().collect();
    made.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, meta) in made {
        copy_meta(&meta, &rootfs.join(&path), &upper.join(&path))?;
    }
    Ok(())
}

struct Walk<'a> {
    rootfs: &'a Path,
    upper: &'a Path,
    base: &'a Baseline,
    /// Each rootfs directory's metadata as the walk found it, before anything moved out.
    dirs: HashMap<PathBuf, Metadata>,
    /// Directories made in `upper`, with the attributes they get at the end.
    made: HashMap<PathBuf, Metadata>,
}

impl Walk<'_> {
    /// Make `upper`'s directories above `rel`.
    fn ensure_parents(&mut self, rel: &Path) -> Result<(), Error> {
        let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        if self.made.contains_key(parent) {
            return Ok(());
        }
        self.ensure_parents(parent)?;
        let dest = self.upper.join(parent);
        fs::create_dir(&dest).map_err(io_err("create directory", &dest))?;
        let meta = match self.dirs.get(parent) {
            Some(m) => m.clone(),
            None => {
                let src = self.rootfs.join(parent);
                fs::symlink_metadata(&src).map_err(io_err("inspect", &src))?
            }
        };
        self.made.insert(parent.to_owned(), meta);
        Ok(())
    }

    fn dir(&mut self, rel: &Path) -> Result<(), Error> {
        let dir = self.rootfs.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err("read directory", &dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err("read directory", &dir))?;
        names.sort();
        for name in names {
            let path = rel.join(&name);
            let src = self.rootfs.join(&path);
            let meta = fs::symlink_metadata(&src).map_err(io_err("inspect", &src))?;
            let copied = self.base.is_copied(&path, identity(&src));
            let touched = ctime(&meta) > self.base.copied_at;
            match (copied, meta.is_dir()) {
                // A directory of the copy: its children may have changed; it goes into the
                // upper directory itself only when it was touched (or for a child).
                (true, true) => {
                    self.dirs.insert(path.clone(), meta.clone());
                    if touched {
                        self.ensure_parents(&path)?;
                        let dest = self.upper.join(&path);
                        fs::create_dir(&dest).map_err(io_err("create directory", &dest))?;
                        self.made.insert(path.clone(), meta);
                    }
                    self.dir(&path)?;
                }
                (true, false) if !touched => {}
                // New, replaced or changed: the whole entry moves; a directory that replaced
                // one of the copy's entries hides everything that was below it.
                _ => {
                    self.ensure_parents(&path)?;
                    let dest = self.upper.join(&path);
                    let replaced_dir = meta.is_dir() && self.base.entries.contains_key(&path);
                    fs::rename(&src, &dest)
                        .map_err(io_err("move into the upper directory", &dest))?;
                    if replaced_dir {
                        rustix::fs::lsetxattr(
                            &dest,
                            "user.overlay.opaque",
                            b"y",
                            XattrFlags::empty(),
                        )
                        .map_err(|e| io_err("mark directory opaque", &dest)(e.into()))?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rm -rf /data && mkdir /data` between the copy and the diff, several times so that
    /// ext4 hands the new directory a freed inode number: the new /data is opaque and alone.
    fn a_replaced_directory_is_opaque(birth_times: bool) {
        for _ in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let layer = dir.path().join("layer");
            fs::create_dir_all(layer.join("data/sub")).unwrap();
            for f in ["data/a", "data/b", "data/sub/c"] {
                fs::write(layer.join(f), f).unwrap();
            }
            let (rootfs, upper) = (dir.path().join("rootfs"), dir.path().join("upper"));
            fs::create_dir(&rootfs).unwrap();
            fs::create_dir(&upper).unwrap();
            let base = populate_with(std::slice::from_ref(&layer), &rootfs, birth_times).unwrap();
            fs::remove_dir_all(rootfs.join("data")).unwrap();
            fs::create_dir(rootfs.join("data")).unwrap();
            fs::write(rootfs.join("data/new"), "new").unwrap();
            diff(&rootfs, &base, &upper).unwrap();
            let names: Vec<_> = fs::read_dir(upper.join("data"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["new"]);
            assert!(is_opaque(&upper.join("data")), "birth times: {birth_times}");
        }
    }

    #[test]
    fn a_replaced_directory_is_told_by_its_birth_time() {
        a_replaced_directory_is_opaque(true);
    }

    #[test]
    fn a_replaced_directory_is_told_without_birth_times() {
        a_replaced_directory_is_opaque(false);
    }
}
