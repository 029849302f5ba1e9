//! The step cache's records: what a build step produced, by the step's key.
//!
//! Layout under the store root:
//! - `steps/keys/<key hex>.json`: a [`StepRecord`] (the layer a step made, if any), written
//!   only after the layer's blob is in the store;
//! - `steps/keys/<key hex>.stdout`: the step's standard output, for `Container::stdout`;
//! - `steps/stages/<hex>.json`: a [`StageRecord`], the steps one stage of one container
//!   last had with their inputs (by a hash of the container's name and the stage's history
//!   key), to say which input changed when a step runs again;
//! - `steps/files/<fingerprint hex>.json`: the per-file digests of a host copy, by the
//!   copy's fingerprint (content-addressed, written once);
//! - `steps/stat/<hash of a host copy's source path>.json`: the sha256 of each of its files
//!   with the metadata it had ([`FileDigestTable`]), so unchanged host files are not read
//!   again to compute a key.
//!
//! Every file is written to `tmp/` and renamed into place, so a killed build leaves either
//! the whole record or none. A record whose blob is gone (evicted) is a miss.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Error, Store, io_err};
use crate::image::BlobRef;
use crate::reference::Digest;

/// Bumped when the record format changes; older records are ignored (misses).
const RECORD_VERSION: u32 = 1;

/// A step's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Format version.
    pub version: u32,
    /// The layer the step added, if it added one.
    pub layer: Option<CachedLayer>,
}

/// A layer in a [`StepRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedLayer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
}

impl CachedLayer {
    /// The blob this layer is.
    pub fn blob(&self) -> BlobRef {
        BlobRef {
            digest: self.digest.clone(),
            size: self.size,
            media_type: self.media_type.clone(),
        }
    }
}

/// The steps of one stage of a container as it was last built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Format version.
    pub version: u32,
    /// The stage's steps in order.
    pub steps: Vec<StepInputsRecord>,
}

/// One step of a [`StageRecord`]: what it did and the named inputs it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInputsRecord {
    /// Digest of the operation with its arguments (not its inputs).
    pub operation: Digest,
    /// The step's description (as in progress output; never a secret's value), to tell
    /// which old step an edited one was.
    #[serde(default)]
    pub description: String,
    /// The step key those inputs gave.
    pub key: Digest,
    /// Input name and digest, in key order.
    pub inputs: Vec<(String, Digest)>,
}

impl StepRecord {
    /// A record of `layer` (or of a step that adds none).
    pub fn new(layer: Option<CachedLayer>) -> Self {
        Self {
            version: RECORD_VERSION,
            layer,
        }
    }
}

impl StageRecord {
    /// A record of these steps.
    pub fn new(steps: Vec<StepInputsRecord>) -> Self {
        Self {
            version: RECORD_VERSION,
            steps,
        }
    }
}

impl Store {
    /// Directory of the step cache.
    pub fn steps_dir(&self) -> PathBuf {
        self.root().join("steps")
    }

    fn step_path(&self, key: &Digest, ext: &str) -> PathBuf {
        self.steps_dir()
            .join("keys")
            .join(format!("{}.{ext}", key.hex()))
    }

    /// The record for `key`, if there is a usable one: readable, of this version, and its
    /// layer's blob still in the store. Marks the record and blob as used (for eviction).
    pub fn step_record(&self, key: &Digest) -> Option<StepRecord> {
        let path = self.step_path(key, "json");
        let record: StepRecord = read_json(&path)?;
        if record.version != RECORD_VERSION {
            return None;
        }
        if let Some(layer) = &record.layer {
            if !self.has_blob(&layer.digest) {
                return None;
            }
            self.touch(&self.blob_path(&layer.digest));
        }
        self.touch(&path);
        Some(record)
    }

    /// Whether the record for `key` names a layer blob the store no longer has.
    pub(crate) fn step_record_blob_missing(&self, key: &Digest) -> bool {
        let record: Option<StepRecord> = read_json(&self.step_path(key, "json"));
        record
            .and_then(|r| r.layer)
            .is_some_and(|l| !self.has_blob(&l.digest))
    }

    /// Save the record for `key` (its blob must already be in the store).
    pub fn put_step_record(&self, key: &Digest, record: &StepRecord) -> Result<(), Error> {
        self.write_json(&self.step_path(key, "json"), record)
    }

    /// Where the saved stdout of the step `key` is (whether or not it exists).
    pub fn step_stdout_path(&self, key: &Digest) -> PathBuf {
        self.step_path(key, "stdout")
    }

    /// Keep a copy of a step's stdout file (a hard link when possible).
    pub fn put_step_stdout(&self, key: &Digest, stdout: &Path) -> Result<(), Error> {
        let dest = self.step_stdout_path(key);
        let tmp = self.tmp_name("stdout");
        if fs::hard_link(stdout, &tmp).is_err() {
            fs::copy(stdout, &tmp).map_err(io_err("copy", stdout))?;
        }
        self.rename_into(&tmp, &dest)
    }

    /// Save a step's stdout from bytes (a step imported from the registry cache).
    pub(crate) fn put_step_stdout_bytes(&self, key: &Digest, stdout: &[u8]) -> Result<(), Error> {
        let tmp = self.tmp_name("stdout");
        fs::write(&tmp, stdout).map_err(io_err("write", &tmp))?;
        self.rename_into(&tmp, &self.step_stdout_path(key))
    }

    fn stage_path(&self, stage: &Digest) -> PathBuf {
        self.steps_dir()
            .join("stages")
            .join(format!("{}.json", stage.hex()))
    }

    /// The steps last recorded for `stage` (a hash of the container and the stage).
    pub fn stage_record(&self, stage: &Digest) -> Option<StageRecord> {
        let path = self.stage_path(stage);
        let record: StageRecord = read_json(&path)?;
        self.touch(&path);
        (record.version == RECORD_VERSION).then_some(record)
    }

    /// Record the steps of `stage` as this build had them.
    pub fn put_stage_record(&self, stage: &Digest, record: &StageRecord) -> Result<(), Error> {
        self.write_json(&self.stage_path(stage), record)
    }

    /// The per-file digests saved for a host copy with fingerprint `digest`.
    pub fn file_digests(&self, digest: &Digest) -> Option<BTreeMap<String, Digest>> {
        read_json(&self.files_path(digest))
    }

    /// Save the per-file digests of a host copy (once per fingerprint).
    pub fn put_file_digests(
        &self,
        digest: &Digest,
        files: &BTreeMap<String, Digest>,
    ) -> Result<(), Error> {
        let path = self.files_path(digest);
        if path.is_file() {
            self.touch(&path);
            return Ok(());
        }
        self.write_json(&path, files)
    }

    fn files_path(&self, digest: &Digest) -> PathBuf {
        self.steps_dir()
            .join("files")
            .join(format!("{}.json", digest.hex()))
    }

    /// Set a cache file's modification time to now: the last-use time eviction goes by.
    /// Best effort: a file that cannot be touched is just evicted earlier.
    pub(crate) fn touch(&self, path: &Path) {
        if let Ok(f) = fs::File::open(path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    pub(crate) fn tmp_name(&self, what: &str) -> PathBuf {
        self.tmp_dir().join(Self::unique_name(what))
    }

    /// `WHAT-TOKEN-N`: a name no other call, and no other process sharing the store, makes.
    pub(crate) fn unique_name(what: &str) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!(
            "{what}-{}-{}",
            process_token(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// A name for this process among all that share the store: its pid is not one, since
/// processes in other pid namespaces (docker executor engines on one cache volume, each
/// pid 1) share it too.
fn process_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use std::io::Read as _;
        let mut bytes = [0u8; 8];
        let random = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        if random.is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = (nanos ^ u64::from(std::process::id())).to_le_bytes();
        }
        format!("{}-{}", std::process::id(), hex::encode(bytes))
    })
}

impl Store {
    fn write_json<T: Serialize>(&self, dest: &Path, value: &T) -> Result<(), Error> {
        let tmp = self.tmp_name("record");
        let bytes = serde_json::to_vec(value).map_err(|e| io_err("encode", dest)(e.into()))?;
        let mut f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&bytes).map_err(io_err("write", &tmp))?;
        drop(f);
        self.rename_into(&tmp, dest)
    }

    fn rename_into(&self, tmp: &Path, dest: &Path) -> Result<(), Error> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
        fs::rename(tmp, dest).map_err(|e| {
            let _ = fs::remove_file(tmp);
            io_err("rename into", dest)(e)
        })
    }
}

/// Metadata younger than this is not trusted to tell a file's content: a write in the same
/// timestamp tick as the hashing would go unnoticed (git's "racy" files).
const RACY_SECS: i64 = 2;

/// What identifies a file's content state: device, inode, size, mtime and ctime (with
/// nanoseconds). ctime cannot be set by users, so any write changes it.
fn stat_key(meta: &fs::Metadata) -> [i64; 7] {
    use std::os::unix::fs::MetadataExt as _;
    [
        meta.dev() as i64,
        meta.ino() as i64,
        meta.size() as i64,
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    ]
}

#[derive(Serialize, Deserialize)]
struct StatEntry {
    path: String,
    stat: [i64; 7],
    digest: Digest,
}

/// The digests of one host copy's files, by their metadata, so unchanged files are not read
/// again to compute a key. Loaded from and saved to one file per copy source
/// (`steps/stat/<hash of the source path>.json`); only the files seen by the last use are
/// kept.
pub struct FileDigestTable {
    path: PathBuf,
    known: std::collections::HashMap<String, ([i64; 7], Digest)>,
    seen: std::sync::Mutex<Vec<StatEntry>>,
    changed: std::sync::atomic::AtomicBool,
}

impl Store {
    /// The digest table of the host copy source `src`.
    pub fn file_digest_table(&self, src: &Path) -> FileDigestTable {
        use std::os::unix::ffi::OsStrExt as _;
        let mut h = crate::fields::FieldHasher::new("blumeops file digests v1");
        h.bytes(src.as_os_str().as_bytes());
        let path = self
            .steps_dir()
            .join("stat")
            .join(format!("{}.json", h.finish().hex()));
        let entries: Vec<StatEntry> = read_json(&path).unwrap_or_default();
        FileDigestTable {
            known: entries
                .into_iter()
                .map(|e| (e.path, (e.stat, e.digest)))
                .collect(),
            path,
            seen: std::sync::Mutex::new(Vec::new()),
            changed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl FileDigestTable {
    /// Save the table if a file was hashed or one known before was not seen. Best effort:
    /// without it, files are just hashed again.
    pub fn save(&self, store: &Store) {
        use std::sync::atomic::Ordering;
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.changed.load(Ordering::Relaxed) && seen.len() == self.known.len() {
            store.touch(&self.path);
            return;
        }
        let _ = store.write_json(&self.path, &*seen);
    }
}

impl crate::layer::FileDigestCache for FileDigestTable {
    fn get(&self, path: &Path, meta: &fs::Metadata) -> Option<Digest> {
        let name = path.to_string_lossy();
        let (stat, digest) = self.known.get(name.as_ref())?;
        if *stat != stat_key(meta) {
            return None;
        }
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(StatEntry {
                path: name.into_owned(),
                stat: *stat,
                digest: digest.clone(),
            });
        Some(digest.clone())
    }

    fn put(&self, path: &Path, meta: &fs::Metadata, digest: &Digest) {
        let stat = stat_key(meta);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now - stat[3].max(stat[5]) < RACY_SECS {
            return;
        }
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(StatEntry {
                path: path.to_string_lossy().into_owned(),
                stat,
                digest: digest.clone(),
            });
    }
}

/// A JSON file, or `None` when it is missing or unreadable (a torn or foreign file is a miss,
/// never an error: the step just runs).
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_missing_blob_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Digest::of(b"key");
        assert_eq!(store.step_record(&key), None);

        let digest = store.put_bytes(b"layer bytes").unwrap();
        let layer = CachedLayer {
            digest: digest.clone(),
            size: 11,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            diff_id: Digest::of(b"tar"),
        };
        let record = StepRecord::new(Some(layer));
        store.put_step_record(&key, &record).unwrap();
        assert_eq!(store.step_record(&key), Some(record));

        fs::remove_file(store.blob_path(&digest)).unwrap();
        assert_eq!(store.step_record(&key), None, "blob evicted: a miss");
    }

    #[test]
    fn file_digests_are_remembered_by_metadata() {
        use crate::layer::FileDigestCache as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        let (fresh, old) = (src.join("fresh"), src.join("old"));
        fs::write(&fresh, b"new").unwrap();
        fs::write(&old, b"one").unwrap();
        // ctime cannot be set back, so "old" is aged by putting it in the table directly.
        let meta = |p: &Path| fs::metadata(p).unwrap();
        let table = store.file_digest_table(&src);
        table.put(&fresh, &meta(&fresh), &Digest::of(b"new"));
        table.seen.lock().unwrap().push(StatEntry {
            path: old.to_string_lossy().into_owned(),
            stat: stat_key(&meta(&old)),
            digest: Digest::of(b"one"),
        });
        table
            .changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        table.save(&store);

        let table = store.file_digest_table(&src);
        assert_eq!(table.get(&fresh, &meta(&fresh)), None, "too fresh to trust");
        assert_eq!(table.get(&old, &meta(&old)), Some(Digest::of(b"one")));
        fs::write(&old, b"two").unwrap();
        assert_eq!(table.get(&old, &meta(&old)), None, "changed");
        assert_eq!(
            store
                .file_digest_table(&dir.path().join("other"))
                .known
                .len(),
            0,
            "one table per source"
        );
    }

    #[test]
    fn torn_record_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Digest::of(b"k");
        store.put_step_record(&key, &StepRecord::new(None)).unwrap();
        fs::write(store.step_path(&key, "json"), b"{\"version\":1,\"lay").unwrap();
        assert_eq!(store.step_record(&key), None);
    }
}
