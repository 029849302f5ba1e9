//! The cache of unpacked layers, ready to be overlay lower directories.
//!
//! Layout: `unpacked/<diff_id hex>` for layers unpacked with
//! [`UnpackOptions::privileged`] (what root gets), `unpacked/<diff_id hex>.<variant>` for
//! other option sets (e.g. rootless: no owners, `user.overlay.*` markers). The key is the
//! diff_id, the digest of the uncompressed content, so the same content compressed two ways is
//! unpacked once, and every directory here was verified against the key it is named by.
//!
//! A layer is unpacked into `tmp/unpack-XXXX/` while `tmp/unpack-XXXX.lock` is held locked
//! (`flock`), checked against its diff_id, then renamed into place with `RENAME_NOREPLACE`.
//! A crash leaves only the temporary directory, never a half-unpacked directory under
//! `unpacked/`. When two processes unpack the same layer, the second rename fails because the
//! directory exists: the loser discards its copy and uses the winner's. Leftovers of killed
//! runs are recognised by their lock no longer being held and removed (read-only directories
//! are made writable first).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, RenameFlags};
use rustix::io::Errno;

use super::{Error, Store, io_err};
use crate::image::BlobRef;
use crate::layer::{self, OverlayXattrs, UnpackOptions, unpack_layer};
use crate::reference::Digest;

/// Prefix of temporary unpack directories (and their lock files) in `tmp/`.
const TMP_PREFIX: &str = "unpack-";
/// Suffix of the lock file next to a temporary unpack directory.
const LOCK_SUFFIX: &str = ".lock";

impl Store {
    /// Directory holding unpacked layers.
    pub fn unpacked_dir(&self) -> PathBuf {
        self.root.join("unpacked")
    }

    /// Where the layer with `diff_id` unpacked with `opts` lives (whether or not it exists).
    pub fn unpacked_path(&self, diff_id: &Digest, opts: &UnpackOptions) -> PathBuf {
        let privileged = UnpackOptions::privileged();
        let same_output = opts.allow_devices == privileged.allow_devices
            && opts.preserve_owners == privileged.preserve_owners
            && opts.preserve_xattrs == privileged.preserve_xattrs
            && opts.overlay_xattrs == privileged.overlay_xattrs;
        let name = if same_output {
            diff_id.hex().to_owned()
        } else {
            format!(
                "{}.d{}o{}x{}{}",
                diff_id.hex(),
                u8::from(opts.allow_devices),
                u8::from(opts.preserve_owners),
                u8::from(opts.preserve_xattrs),
                match opts.overlay_xattrs {
                    OverlayXattrs::User => "u",
                    _ => "t",
                }
            )
        };
        self.unpacked_dir().join(name)
    }

    /// The directory holding `blob` (a layer whose config diff_id is `diff_id`) unpacked in
    /// the overlayfs representation, unpacking it first if needed, with
    /// [`UnpackOptions::for_current_user`]. The directory must not be modified.
    /// Blocking: call from a blocking thread.
    pub fn unpacked_layer(
        &self,
        blob: &BlobRef,
        diff_id: &Digest,
    ) -> Result<PathBuf, layer::Error> {
        self.unpacked_layer_with(blob, diff_id, &UnpackOptions::for_current_user())
    }

    /// [`Store::unpacked_layer`] with explicit options. A layer whose content does not hash
    /// to `diff_id` is refused ([`layer::Error::DiffIdMismatch`]) and nothing is kept.
    pub fn unpacked_layer_with(
        &self,
        blob: &BlobRef,
        diff_id: &Digest,
        opts: &UnpackOptions,
    ) -> Result<PathBuf, layer::Error> {
        let dest = self.unpacked_path(diff_id, opts);
        if is_real_dir(&dest) {
            self.touch(&dest);
            return Ok(dest);
        }
        let blob_path = self.blob_path(&blob.digest);
        if !self.has_blob(&blob.digest) {
            return Err(Error::MissingBlob {
                digest: blob.digest.clone(),
                path: blob_path,
            }
            .into());
        }
        let parent = self.unpacked_dir();
        fs::create_dir_all(&parent).map_err(io_err("create directory", &parent))?;
        // Best effort: a leftover that cannot be removed now is retried next time.
        let _ = self.remove_unpack_leftovers();
        let tmp = TmpUnpack::new(self)?;
        let stats = unpack_layer(&blob_path, &blob.media_type, &tmp.dir, opts)?;
        if stats.diff_id != *diff_id {
            return Err(layer::Error::DiffIdMismatch {
                layer: blob_path,
                expected: diff_id.clone(),
                actual: stats.diff_id,
            });
        }
        tmp.commit(&dest)?;
        Ok(dest)
    }

    /// Remove temporary unpack directories left by killed runs (their lock is free). Returns
    /// how many were removed. Directories of running unpacks are left alone.
    pub fn remove_unpack_leftovers(&self) -> Result<usize, Error> {
        let tmp = self.tmp_dir();
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(io_err("read directory", &tmp))? {
            let entry = entry.map_err(io_err("read directory", &tmp))?;
            let name = entry.file_name();
            let Some(stem) = name
                .to_str()
                .filter(|n| n.starts_with(TMP_PREFIX))
                .and_then(|n| n.strip_suffix(LOCK_SUFFIX))
            else {
                continue;
            };
            let lock_path = entry.path();
            let lock = match File::open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open", &lock_path)(e)),
            };
            match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => continue,
                Err(e) => return Err(io_err("lock", &lock_path)(e.into())),
            }
            let dir = tmp.join(stem);
            force_remove_dir(&dir)?;
            remove_if_exists(&lock_path)?;
            removed += 1;
        }
        Ok(removed)
    }
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Give every directory under `path` (not following symlinks) owner rwx, so a tree holding
/// read-only directories can be removed.
fn make_removable(path: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if !meta.is_dir() {
        return Ok(());
    }
    // Another remover (a step's own cleanup racing a build's clearing of tmp/) may delete
    // parts of the tree meanwhile: what is gone needs no fixing.
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    if meta.mode() & 0o700 != 0o700 {
        match fs::set_permissions(
            path,
            fs::Permissions::from_mode((meta.mode() | 0o700) & 0o7777),
        ) {
            Err(e) if gone(&e) => return Ok(()),
            other => other.map_err(io_err("set permissions on", path))?,
        }
    }
    let entries = match fs::read_dir(path) {
        Err(e) if gone(&e) => return Ok(()),
        other => other.map_err(io_err("read directory", path))?,
    };
    for entry in entries {
        let entry = match entry {
            Err(e) if gone(&e) => continue,
            other => other.map_err(io_err("read directory", path))?,
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_removable(&entry.path())?;
        }
    }
    Ok(())
}

/// Remove a directory tree that may hold read-only directories. Missing is fine.
pub(crate) fn force_remove_dir(path: &Path) -> Result<(), Error> {
    make_removable(path)?;
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// A temporary unpack directory and its held lock. Dropped without
/// [`TmpUnpack::commit`], it removes both.
struct TmpUnpack {
    dir: PathBuf,
    lock_path: PathBuf,
    /// Held for the life of the unpack; closing it releases the lock.
    _lock: File,
}

impl TmpUnpack {
    fn new(store: &Store) -> Result<Self, Error> {
        let tmp = store.tmp_dir();
        loop {
            let named = tempfile::Builder::new()
                .prefix(TMP_PREFIX)
                .suffix(LOCK_SUFFIX)
                .tempfile_in(&tmp)
                .map_err(io_err("create lock file in", &tmp))?;
            let (file, lock_path) = named
                .keep()
                .map_err(|e| io_err("create lock file in", &tmp)(e.error))?;
            rustix::fs::flock(&file, FlockOperation::LockExclusive)
                .map_err(|e| io_err("lock", &lock_path)(e.into()))?;
            // A cleaner may have taken the lock file for a leftover between its creation
            // and the lock: it is ours only if it is still at its path.
            let ours = fs::metadata(&lock_path).is_ok_and(|m| {
                file.metadata()
                    .is_ok_and(|f| f.ino() == m.ino() && f.dev() == m.dev())
            });
            if !ours {
                continue;
            }
            let name = lock_path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(LOCK_SUFFIX))
                .map(str::to_owned);
            let Some(name) = name else {
                unreachable!("the lock file was named with the suffix");
            };
            let dir = tmp.join(name);
            if let Err(e) = fs::create_dir(&dir) {
                let _ = fs::remove_file(&lock_path);
                return Err(io_err("create directory", &dir)(e));
            }
            return Ok(Self {
                dir,
                lock_path,
                _lock: file,
            });
        }
    }

    /// Move the unpacked tree to `dest`. If another process got there first, keep theirs.
    fn commit(self, dest: &Path) -> Result<(), Error> {
        let renamed = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &self.dir,
            rustix::fs::CWD,
            dest,
            RenameFlags::NOREPLACE,
        );
        match renamed {
            Ok(()) => Ok(()),
            Err(Errno::EXIST | Errno::NOTEMPTY) => Ok(()),
            // A filesystem without RENAME_NOREPLACE: a plain rename still refuses a non-empty
            // destination.
            Err(Errno::INVAL | Errno::NOSYS) => match fs::rename(&self.dir, dest) {
                Ok(()) => Ok(()),
                Err(_) if is_real_dir(dest) => Ok(()),
                Err(e) => Err(io_err("move unpacked layer into", dest)(e)),
            },
            Err(e) => Err(io_err("move unpacked layer into", dest)(e.into())),
        }
        // Drop removes whatever is left at the temporary path (the loser's copy) and the lock.
    }
}

impl Drop for TmpUnpack {
    fn drop(&mut self) {
        // Best effort: a leftover is removed by the next `remove_unpack_leftovers`.
        let _ = force_remove_dir(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::media_types;
    use crate::layer::{Compression, LayerBuilder, Owner};
    use std::sync::{Arc, Barrier};

    fn store_with_layer() -> (tempfile::TempDir, Store, BlobRef, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = LayerBuilder::new();
        b.add_bytes("etc/hostname", b"box\n".to_vec(), 0o644, Owner::ROOT)
            .unwrap();
        b.add(
            "ro",
            crate::layer::Entry {
                kind: crate::layer::EntryKind::Dir,
                mode: 0o500,
                owner: Owner::ROOT,
            },
        )
        .unwrap();
        b.add_bytes("ro/f", b"x".to_vec(), 0o400, Owner::ROOT)
            .unwrap();
        let layer = b.write(&store, Compression::Gzip, 0).unwrap();
        (dir, store, layer.blob, layer.diff_id)
    }

    fn tmp_names(store: &Store) -> Vec<String> {
        fs::read_dir(store.tmp_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TMP_PREFIX))
            .collect()
    }

    #[test]
    fn unpacks_once_and_reuses_the_directory() {
        let (_d, store, blob, diff_id) = store_with_layer();
        let dir = store.unpacked_layer(&blob, &diff_id).unwrap();
        assert!(dir.starts_with(store.unpacked_dir()));
        if rustix::process::geteuid().is_root() {
            assert!(dir.ends_with(diff_id.hex()), "{}", dir.display());
        }
        assert_eq!(fs::read(dir.join("etc/hostname")).unwrap(), b"box\n");
        // A second call finds it: prove it by a marker no unpack would write.
        fs::write(dir.join("marker"), "").unwrap();
        assert_eq!(store.unpacked_layer(&blob, &diff_id).unwrap(), dir);
        assert!(dir.join("marker").exists());
        assert!(tmp_names(&store).is_empty(), "{:?}", tmp_names(&store));
    }

    #[test]
    fn diff_id_mismatch_keeps_nothing() {
        let (_d, store, blob, _) = store_with_layer();
        let wrong = Digest::of(b"some other layer");
        let err = store.unpacked_layer(&blob, &wrong).unwrap_err();
        assert!(matches!(err, layer::Error::DiffIdMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&wrong.to_string()) && msg.contains(blob.digest.hex()),
            "{msg}"
        );
        let opts = UnpackOptions::for_current_user();
        assert!(!store.unpacked_path(&wrong, &opts).exists());
        assert!(tmp_names(&store).is_empty(), "{:?}", tmp_names(&store));
    }

    #[test]
    fn missing_blob_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = BlobRef {
            digest: Digest::of(b"absent"),
            size: 6,
            media_type: media_types::OCI_LAYER_GZIP.to_owned(),
        };
        let err = store.unpacked_layer(&blob, &Digest::of(b"x")).unwrap_err();
        assert!(
            matches!(err, layer::Error::Store(Error::MissingBlob { .. })),
            "{err}"
        );
    }

    #[test]
    fn racing_unpacks_agree_on_one_directory() {
        let (_d, store, blob, diff_id) = store_with_layer();
        let threads = 4;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (store, blob, diff_id, barrier) = (
                    store.clone(),
                    blob.clone(),
                    diff_id.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    store.unpacked_layer(&blob, &diff_id).unwrap()
                })
            })
            .collect();
        let dirs: Vec<PathBuf> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(dirs.windows(2).all(|w| w[0] == w[1]), "{dirs:?}");
        assert_eq!(fs::read(dirs[0].join("etc/hostname")).unwrap(), b"box\n");
        assert_eq!(fs::read(dirs[0].join("ro/f")).unwrap(), b"x");
        // Losers removed their copies (read-only directories included) and their locks.
        assert!(tmp_names(&store).is_empty(), "{:?}", tmp_names(&store));
        assert_eq!(fs::read_dir(store.unpacked_dir()).unwrap().count(), 1);
    }

    #[test]
    fn leftovers_of_killed_runs_are_removed_but_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tmp = store.tmp_dir();
        // A killed run: lock file not held, directory with a read-only subdirectory.
        let dead = tmp.join("unpack-dead");
        fs::create_dir_all(dead.join("ro/deeper")).unwrap();
        fs::write(dead.join("ro/deeper/f"), "x").unwrap();
        fs::set_permissions(dead.join("ro/deeper"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(dead.join("ro"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::write(tmp.join("unpack-dead.lock"), "").unwrap();
        // A running unpack.
        let live = TmpUnpack::new(&store).unwrap();
        // Not ours at all.
        fs::write(tmp.join("blob-unrelated"), "").unwrap();

        assert_eq!(store.remove_unpack_leftovers().unwrap(), 1);
        assert!(!dead.exists() && !tmp.join("unpack-dead.lock").exists());
        assert!(live.dir.is_dir() && live.lock_path.exists());
        assert!(tmp.join("blob-unrelated").exists());
        let (live_dir, live_lock) = (live.dir.clone(), live.lock_path.clone());
        drop(live);
        assert!(!live_dir.exists() && !live_lock.exists());
    }

    #[test]
    fn rootless_options_get_their_own_directory() {
        let (_d, store, _, diff_id) = store_with_layer();
        let privileged = store.unpacked_path(&diff_id, &UnpackOptions::privileged());
        let rootless = store.unpacked_path(
            &diff_id,
            &UnpackOptions::default().with_overlay_xattrs(OverlayXattrs::User),
        );
        assert_eq!(privileged, store.unpacked_dir().join(diff_id.hex()));
        assert_ne!(privileged, rootless);
        assert_eq!(
            store.unpacked_path(&diff_id, &UnpackOptions::privileged().with_max_bytes(5)),
            privileged,
            "the size cap does not change the output"
        );
    }
}
