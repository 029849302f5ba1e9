//! The content-addressed store: blobs by sha256 under one root directory.
//!
//! Layout (under `BLUMEOPS_CACHE_DIR`, default `$XDG_CACHE_HOME/blumeops`):
//! - `blobs/sha256/<hex>`: verified blobs (layers, configs, manifests), read-only once written;
//! - `tmp/`: blobs being written; a crash leaves only files here, which are never read;
//! - `registry/`: what the registry client learned for later runs (which hosts take Basic
//!   credentials, which blobs each repository holds), when an engine uses this store.
//!
//! A blob is written to `tmp/`, hashed as it is written, and renamed into place only after its
//! digest is known (and, when an expected digest was given, matches). Readers therefore never
//! see a partial blob.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::reference::{Digest, DigestWriter};

mod manage;
mod steps;
mod unpacked;

pub use manage::{PrunePolicy, PruneReport, StoreLock, Usage, human_size, parse_age, parse_size};
pub use steps::{CachedLayer, FileDigestTable, StageRecord, StepInputsRecord, StepRecord};

pub(crate) use unpacked::force_remove_dir;

/// Environment variable that overrides where the store lives.
pub const CACHE_DIR_ENV: &str = "BLUMEOPS_CACHE_DIR";

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a store path failed.
    #[error("failed to {action} `{}`", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Data did not hash to the digest it was fetched or referenced as.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What the data was, e.g. a registry URL or a file path.
        what: String,
        /// The digest it should have had.
        expected: Digest,
        /// The digest it had.
        actual: Digest,
    },
    /// Data had another size than declared.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What the data was.
        what: String,
        /// Declared size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// No cache directory could be determined.
    #[error("no cache directory: set {CACHE_DIR_ENV} or HOME")]
    NoCacheDir,
    /// The cache belongs to another user (e.g. written as root, now used by a user).
    #[error(
        "the cache `{}` belongs to {owner}, but blumeops runs as {user}: a cache serves one \
         user, so that nothing in it ends up owned by two; use a cache of your own (set \
         {CACHE_DIR_ENV}), or run as its owner",
        path.display()
    )]
    ForeignOwner {
        /// The cache root.
        path: PathBuf,
        /// Who owns it, e.g. "uid 0 (root)".
        owner: String,
        /// Who blumeops runs as.
        user: String,
    },
    /// A blob that should be in the store is not.
    #[error("blob {digest} is missing from the store at `{}`", path.display())]
    MissingBlob {
        /// The blob.
        digest: Digest,
        /// Where it should be.
        path: PathBuf,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A content-addressed blob store rooted at one directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `$BLUMEOPS_CACHE_DIR`, else the user's cache directory + `blumeops`.
    pub fn open_default() -> Result<Self, Error> {
        Self::open(Self::default_root()?)
    }

    /// Where [`Store::open_default`] puts the store.
    pub fn default_root() -> Result<PathBuf, Error> {
        if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        dirs::cache_dir()
            .map(|d| d.join("blumeops"))
            .ok_or(Error::NoCacheDir)
    }

    /// Open (creating if needed) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let store = Self { root: root.into() };
        store.check_owner()?;
        for dir in [store.blobs_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        }
        Ok(store)
    }

    /// Refuse a store that another user owns, before writing anything into it. In the
    /// rootless executor's user namespace the calling user is 0, and a store it owns shows
    /// as owned by 0; one owned by an id the namespace does not map shows as the overflow id.
    fn check_owner(&self) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt;
        let meta = match fs::metadata(&self.root) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("inspect", &self.root)(e)),
        };
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid() == euid {
            return Ok(());
        }
        let mapping = crate::executor::current_mapping();
        let describe = |uid: u32| match (uid, mapping.host_uid()) {
            (0, Some(host)) => format!("uid {host} (as 0 in this user namespace)"),
            (65534, Some(_)) => "another user (an id this user namespace does not map, \
                                 such as root)"
                .to_owned(),
            (0, None) => "uid 0 (root)".to_owned(),
            (uid, _) => format!("uid {uid}"),
        };
        Err(Error::ForeignOwner {
            path: self.root.clone(),
            owner: describe(meta.uid()),
            user: describe(euid),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Directory for in-progress writes (same filesystem as the blobs, so renames are atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Whether the blob is in the store.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Size of a stored blob.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64, Error> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::MissingBlob {
                digest: digest.clone(),
                path,
            }),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    /// Open a stored blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, Error> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::MissingBlob {
                    digest: digest.clone(),
                    path: path.clone(),
                }
            } else {
                io_err("open", &path)(e)
            }
        })
    }

    /// Read a whole (small) blob, such as a manifest or config.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::MissingBlob {
                    digest: digest.clone(),
                    path: path.clone(),
                }
            } else {
                io_err("read", &path)(e)
            }
        })
    }

    /// Store `bytes` and return their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, Error> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes).map_err(io_err("write", w.path()))?;
        w.commit(Some(&digest))?;
        Ok(digest)
    }

    /// A writer for a new blob: hashes what it is given and commits atomically.
    pub fn blob_writer(&self) -> Result<BlobWriter, Error> {
        let tmp = self.tmp_dir();
        let file = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(io_err("create temporary file in", &tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            file,
            hasher: DigestWriter::new(),
        })
    }
}

/// A blob being written into a [`Store`]. Dropped without [`BlobWriter::commit`], it leaves
/// nothing behind.
pub struct BlobWriter {
    store: Store,
    file: tempfile::NamedTempFile,
    hasher: DigestWriter,
}

impl BlobWriter {
    /// The temporary file's path (for error messages).
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// Finish the blob: check it against `expected` (when given), then move it into place.
    /// On a mismatch the data is discarded and the store is unchanged.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<(Digest, u64), Error> {
        let tmp_path = self.file.path().to_owned();
        self.file.flush().map_err(io_err("write", &tmp_path))?;
        let size = self.hasher.len();
        let digest = self.hasher.finish();
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(Error::DigestMismatch {
                what: "blob".to_owned(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        let dest = self.store.blob_path(&digest);
        // Blobs are immutable: make them read-only so nothing edits one in place.
        let mut perms = self
            .file
            .as_file()
            .metadata()
            .map_err(io_err("stat", &tmp_path))?
            .permissions();
        perms.set_readonly(true);
        self.file
            .as_file()
            .set_permissions(perms)
            .map_err(io_err("set permissions on", &tmp_path))?;
        self.file
            .persist(&dest)
            .map_err(|e| io_err("move blob into", &dest)(e.error))?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.put_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert!(store.has_blob(&d));
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        assert_eq!(store.blob_size(&d).unwrap(), 5);
        // Writing the same content again is a no-op.
        assert_eq!(store.put_bytes(b"hello").unwrap(), d);
    }

    #[test]
    fn mismatch_leaves_store_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let expected = Digest::of(b"the real content");
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"tampered content").unwrap();
        let err = w.commit(Some(&expected)).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&expected));
        assert!(!store.has_blob(&Digest::of(b"tampered content")));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        assert_eq!(fs::read_dir(store.blobs_dir()).unwrap().count(), 0);
    }

    #[test]
    fn missing_blob_error_names_digest_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::of(b"nope");
        let msg = store.read_blob(&d).unwrap_err().to_string();
        assert!(
            msg.contains(&d.to_string()) && msg.contains(d.hex()),
            "{msg}"
        );
    }
}
