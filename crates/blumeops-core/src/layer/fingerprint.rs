//! What a layer would contain, as a digest, without writing it: the step cache's key for
//! steps that copy host files. Covers each entry's path, kind, mode, owner, own mtime,
//! xattrs, contents (host files are read and hashed) and hard-link grouping, so two builders
//! with the same fingerprint write the same layer for the same epoch and compression.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;

use super::{EntryKind, Error, FileData, LayerBuilder};
use crate::fields::FieldHasher;
use crate::reference::{Digest, DigestWriter};

/// Remembers the digests of host files by their metadata, so an unchanged file is not read
/// again. Implemented by the store.
pub trait FileDigestCache {
    /// The digest of the file at `path` if it was hashed with exactly this metadata.
    fn get(&self, path: &std::path::Path, meta: &std::fs::Metadata) -> Option<Digest>;
    /// Remember the digest of the file at `path` with this metadata.
    fn put(&self, path: &std::path::Path, meta: &std::fs::Metadata, digest: &Digest);
}

/// A layer's content digest and each entry's own digest (to tell which file changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Digest over every entry, in path order.
    pub digest: Digest,
    /// Each entry's digest by normalised path.
    pub entries: BTreeMap<String, Digest>,
}

/// The sha256 of the host file `path` (whose metadata is `meta`), from `cache` when it
/// knows the file unchanged, else read (and remembered in `cache`).
pub fn host_file_digest(
    path: &std::path::Path,
    meta: &std::fs::Metadata,
    cache: Option<&dyn FileDigestCache>,
) -> io::Result<Digest> {
    if let Some(digest) = cache.and_then(|c| c.get(path, meta)) {
        return Ok(digest);
    }
    let mut digest = DigestWriter::new();
    io::copy(&mut File::open(path)?, &mut digest)?;
    let digest = digest.finish();
    if let Some(c) = cache {
        c.put(path, meta, &digest);
    }
    Ok(digest)
}

impl LayerBuilder {
    /// Fingerprint the entries (reads every host file). Blocking: call from a blocking
    /// thread.
    pub fn fingerprint(&self) -> Result<Fingerprint, Error> {
        self.fingerprint_with(None)
    }

    /// [`LayerBuilder::fingerprint`], taking host file digests from `cache` when their
    /// metadata (inode, size, mtime, ctime) is unchanged.
    pub fn fingerprint_with(
        &self,
        cache: Option<&dyn FileDigestCache>,
    ) -> Result<Fingerprint, Error> {
        let mut all = FieldHasher::new("blumeops layer fingerprint v1");
        let mut entries = BTreeMap::new();
        let mut first_path: HashMap<(u64, u64), &str> = HashMap::new();
        for (path, entry) in &self.entries {
            let mut h = FieldHasher::new("entry");
            h.u64(entry.mode.into())
                .u64(entry.owner.uid.into())
                .u64(entry.owner.gid.into());
            match &entry.kind {
                EntryKind::Dir => {
                    h.str("dir");
                }
                EntryKind::File(FileData::Bytes(bytes)) => {
                    h.str("file").digest(&Digest::of(bytes));
                }
                EntryKind::File(FileData::Host(src)) => {
                    let host = |source| Error::Host {
                        action: "read",
                        path: src.clone(),
                        source,
                    };
                    let meta = std::fs::metadata(src).map_err(host)?;
                    // Shared inodes become hard links when the layer is written.
                    let link = (meta.nlink() > 1)
                        .then(|| *first_path.entry((meta.dev(), meta.ino())).or_insert(path));
                    match link.filter(|first| *first != path.as_str()) {
                        Some(first) => {
                            h.str("hardlink").str(first);
                        }
                        None => {
                            let digest = host_file_digest(src, &meta, cache).map_err(host)?;
                            h.str("file").digest(&digest);
                        }
                    }
                }
                EntryKind::Symlink(target) => {
                    h.str("symlink").str(target);
                }
                EntryKind::Hardlink(target) => {
                    h.str("hardlink").str(target);
                }
                EntryKind::CharDevice { major, minor } => {
                    h.str("char").u64((*major).into()).u64((*minor).into());
                }
                EntryKind::BlockDevice { major, minor } => {
                    h.str("block").u64((*major).into()).u64((*minor).into());
                }
                EntryKind::Fifo => {
                    h.str("fifo");
                }
            }
            let meta = self.meta.get(path);
            h.opt_u64(meta.and_then(|m| m.mtime));
            let xattrs = meta.map(|m| &m.xattrs);
            h.u64(xattrs.map_or(0, |x| x.len() as u64));
            for (name, value) in xattrs.into_iter().flatten() {
                h.str(name).bytes(value);
            }
            let digest = h.finish();
            all.str(path).digest(&digest);
            entries.insert(path.clone(), digest);
        }
        Ok(Fingerprint {
            digest: all.finish(),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Entry, HostCopy, Owner};
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.txt"), b"one").unwrap();
        std::fs::write(dir.path().join("sub/b.txt"), b"two").unwrap();
        dir
    }

    fn fp(dir: &std::path::Path, opts: &HostCopy) -> Fingerprint {
        let mut b = LayerBuilder::new();
        b.add_host_dir("/app", dir, opts).unwrap();
        b.fingerprint().unwrap()
    }

    #[test]
    fn content_mode_and_owner_change_the_fingerprint_and_name_the_entry() {
        let dir = tree();
        let opts = HostCopy::default();
        let before = fp(dir.path(), &opts);
        assert_eq!(before, fp(dir.path(), &opts), "stable");

        std::fs::write(dir.path().join("sub/b.txt"), b"TWO").unwrap();
        let after = fp(dir.path(), &opts);
        assert_ne!(before.digest, after.digest);
        let changed: Vec<_> = before
            .entries
            .iter()
            .filter(|(p, d)| after.entries.get(*p) != Some(d))
            .map(|(p, _)| p.as_str())
            .collect();
        assert_eq!(changed, ["app/sub/b.txt"]);

        let owned = fp(
            dir.path(),
            &opts.clone().with_owner(Owner { uid: 1, gid: 1 }),
        );
        assert_ne!(owned.digest, after.digest);
        let moded = fp(dir.path(), &opts.clone().with_mode(0o600));
        assert_ne!(moded.digest, after.digest);
    }

    #[test]
    fn excluded_files_do_not_count() {
        let dir = tree();
        let opts = HostCopy::default().with_exclude("sub");
        let before = fp(dir.path(), &opts);
        std::fs::write(dir.path().join("sub/b.txt"), b"changed").unwrap();
        assert_eq!(before, fp(dir.path(), &opts));
    }

    #[test]
    fn bytes_and_symlinks_are_covered() {
        let mut a = LayerBuilder::new();
        a.add_bytes("f", b"x".to_vec(), 0o644, Owner::ROOT).unwrap();
        let mut b = LayerBuilder::new();
        b.add_bytes("f", b"y".to_vec(), 0o644, Owner::ROOT).unwrap();
        assert_ne!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
        let link = |t: &str| {
            let mut l = LayerBuilder::new();
            l.add(
                "l",
                Entry {
                    kind: EntryKind::Symlink(t.into()),
                    mode: 0o777,
                    owner: Owner::ROOT,
                },
            )
            .unwrap();
            l.fingerprint().unwrap().digest
        };
        assert_ne!(link("a"), link("b"));
    }
}
