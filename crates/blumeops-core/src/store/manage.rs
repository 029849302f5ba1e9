//! Cache management: how much the store holds, pruning by age or size (least recently used
//! first), and the lock that keeps pruning away from running builds.
//!
//! - Builds hold a shared `flock` on `<root>/lock` ([`Store::lock_shared`]); pruning takes
//!   it exclusively, so it never deletes what a running build reads or writes. Two builds
//!   share the store safely because every write is a temp file renamed into place.
//! - A build that finds no other build running (it gets the lock exclusively for a moment)
//!   first clears `tmp/`: leftovers of killed builds.
//! - Last use is a file's (or directory's) modification time: blobs, step records and
//!   unpacked layers are touched when a build uses them.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;

use super::{Error, Store, force_remove_dir, io_err};

/// A held lock on the store; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// What the store holds, by part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// (part, entries, bytes), in a fixed order: blobs, unpacked, steps, volumes, logs, tmp.
    pub parts: Vec<(&'static str, u64, u64)>,
}

impl Usage {
    /// Total bytes.
    pub fn total_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.2).sum()
    }
}

/// What to prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrunePolicy {
    /// Everything: blobs, unpacked layers, step records, cache volumes, logs.
    All,
    /// Least recently used first, until the store holds at most this many bytes.
    KeepBytes(u64),
    /// Everything not used for this long.
    OlderThan(Duration),
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries removed (blobs, unpacked layers, volumes, logs, records).
    pub removed: u64,
    /// Bytes freed.
    pub freed_bytes: u64,
}

/// One thing that can be evicted.
struct Unit {
    path: PathBuf,
    bytes: u64,
    last_used: SystemTime,
    dir: bool,
}

/// The parts of the store whose entries are evicted whole, least recently used first.
const EVICTABLE: [&str; 8] = [
    "blobs/sha256",
    "unpacked",
    "volumes",
    "logs",
    "steps/keys",
    "steps/stages",
    "steps/files",
    "steps/stat",
];

impl Store {
    fn lock_file(&self) -> Result<File, Error> {
        let path = self.root().join("lock");
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))
    }

    fn flock(&self, file: &File, op: FlockOperation) -> Result<bool, Error> {
        match rustix::fs::flock(file, op) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(io_err("lock", &self.root().join("lock"))(e.into())),
        }
    }

    /// Hold the store for a build. When no other build holds it, leftovers of killed
    /// builds in `tmp/` are removed first.
    pub fn lock_shared(&self) -> Result<StoreLock, Error> {
        let file = self.lock_file()?;
        if self.flock(&file, FlockOperation::NonBlockingLockExclusive)? {
            self.clear_tmp()?;
        }
        // Converts an exclusive lock, or waits for a pruning to finish.
        self.flock(&file, FlockOperation::LockShared)?;
        Ok(StoreLock { _file: file })
    }

    /// Hold the store alone (no build running), waiting for builds to finish.
    pub fn lock_exclusive(&self) -> Result<StoreLock, Error> {
        let file = self.lock_file()?;
        self.flock(&file, FlockOperation::LockExclusive)?;
        Ok(StoreLock { _file: file })
    }

    /// Hold the store alone if no build is running now.
    pub fn try_lock_exclusive(&self) -> Result<Option<StoreLock>, Error> {
        let file = self.lock_file()?;
        Ok(self
            .flock(&file, FlockOperation::NonBlockingLockExclusive)?
            .then_some(StoreLock { _file: file }))
    }

    fn clear_tmp(&self) -> Result<(), Error> {
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io_err("read directory", &tmp))? {
            let entry = entry.map_err(io_err("read directory", &tmp))?;
            remove_any(&entry.path())?;
        }
        Ok(())
    }

    /// How much each part of the store holds.
    pub fn usage(&self) -> Result<Usage, Error> {
        let mut parts = Vec::new();
        for (name, dir) in [
            ("blobs", "blobs/sha256"),
            ("unpacked", "unpacked"),
            ("steps", "steps"),
            ("volumes", "volumes"),
            ("logs", "logs"),
            ("tmp", "tmp"),
        ] {
            let dir = self.root().join(dir);
            let mut entries = 0;
            let mut bytes = 0;
            for child in children(&dir)? {
                entries += 1;
                bytes += tree_bytes(&child)?;
            }
            parts.push((name, entries, bytes));
        }
        Ok(Usage { parts })
    }

    /// Remove what `policy` says. The caller holds [`Store::lock_exclusive`]. Step records
    /// whose layer is gone are removed too, so the cache never names a missing blob.
    pub fn prune(&self, policy: PrunePolicy) -> Result<PruneReport, Error> {
        let mut report = PruneReport::default();
        let mut units = Vec::new();
        for part in EVICTABLE {
            for path in children(&self.root().join(part))? {
                let meta = match fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("stat", &path)(e)),
                };
                units.push(Unit {
                    bytes: tree_bytes(&path)?,
                    last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    dir: meta.is_dir(),
                    path,
                });
            }
        }
        units.sort_by_key(|u| u.last_used);
        let now = SystemTime::now();
        let mut total = self.usage()?.total_bytes();
        for unit in units {
            let evict = match policy {
                PrunePolicy::All => true,
                PrunePolicy::KeepBytes(limit) => total > limit,
                PrunePolicy::OlderThan(age) => {
                    now.duration_since(unit.last_used).is_ok_and(|d| d > age)
                }
            };
            if !evict {
                continue;
            }
            if unit.dir {
                force_remove_dir(&unit.path)?;
            } else {
                remove_any(&unit.path)?;
            }
            total = total.saturating_sub(unit.bytes);
            report.removed += 1;
            report.freed_bytes += unit.bytes;
        }
        let steps = self.steps_dir();
        if policy == PrunePolicy::All {
            let bytes = tree_bytes(&steps)?;
            report.removed += count_files(&steps)?;
            report.freed_bytes += bytes;
            force_remove_dir(&steps)?;
        } else {
            let (n, bytes) = self.prune_records(match policy {
                PrunePolicy::OlderThan(age) => Some(age),
                _ => None,
            })?;
            report.removed += n;
            report.freed_bytes += bytes;
        }
        self.clear_tmp()?;
        Ok(report)
    }

    /// Remove step records whose blob is gone, and (with `age`) every record file not used
    /// for that long.
    fn prune_records(&self, age: Option<Duration>) -> Result<(u64, u64), Error> {
        let (mut removed, mut bytes) = (0, 0);
        let now = SystemTime::now();
        for part in ["keys", "stages", "files", "stat"] {
            for path in children(&self.steps_dir().join(part))? {
                let meta = match fs::metadata(&path) {
                    Ok(m) => m,
                    // Removed with its record above.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("stat", &path)(e)),
                };
                let old = age.is_some_and(|age| {
                    meta.modified()
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .is_some_and(|d| d > age)
                });
                let orphan = part == "keys"
                    && path.extension().is_some_and(|e| e == "json")
                    && path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .and_then(|hex| format!("sha256:{hex}").parse().ok())
                        .is_some_and(|key| self.step_record_blob_missing(&key));
                if old || orphan {
                    remove_any(&path)?;
                    if orphan {
                        remove_any(&path.with_extension("stdout"))?;
                    }
                    removed += 1;
                    bytes += meta.len();
                }
            }
        }
        Ok((removed, bytes))
    }
}

fn children(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.path()).map_err(io_err("read directory", dir)))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read directory", dir)(e)),
    }
}

/// Bytes a file or tree takes on disk (allocated blocks; hard links counted each time).
fn tree_bytes(path: &Path) -> Result<u64, Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir() {
        for child in children(path)? {
            bytes += tree_bytes(&child)?;
        }
    }
    Ok(bytes)
}

fn count_files(path: &Path) -> Result<u64, Error> {
    let mut n = 0;
    for child in children(path)? {
        if child.is_dir() {
            n += count_files(&child)?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

fn remove_any(path: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if meta.is_dir() {
        force_remove_dir(path)
    } else {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
            _ => Ok(()),
        }
    }
}

/// Parse a size like `500M`, `10GiB`, `2G` or `123` (bytes). Units are powers of 1024.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// Parse a duration like `90s`, `30m`, `12h` or `7d`.
pub fn parse_age(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

/// Bytes in a short human form (powers of 1024): `512 B`, `1.5 KiB`, `3.0 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Digest;
    use crate::store::{CachedLayer, StepRecord};

    fn set_age(path: &Path, secs_ago: u64) {
        let f = File::options().append(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
            .unwrap();
    }

    #[test]
    fn keep_bytes_evicts_least_recently_used_first_and_drops_orphaned_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = store.put_bytes(&vec![1u8; 64 * 1024]).unwrap();
        let new = store.put_bytes(&vec![2u8; 64 * 1024]).unwrap();
        set_age(&store.blob_path(&old), 3600);
        let key = Digest::of(b"step");
        store
            .put_step_record(
                &key,
                &StepRecord::new(Some(CachedLayer {
                    digest: old.clone(),
                    size: 64 * 1024,
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                    diff_id: old.clone(),
                })),
            )
            .unwrap();
        // step_record touches the blob; age it again after.
        set_age(&store.blob_path(&old), 3600);

        let before = store.usage().unwrap();
        assert_eq!(before.parts[0], ("blobs", 2, before.parts[0].2));
        let report = store
            .prune(PrunePolicy::KeepBytes(before.total_bytes() - 1))
            .unwrap();
        assert!(!store.has_blob(&old), "least recently used goes first");
        assert!(store.has_blob(&new), "recently used stays");
        assert!(report.freed_bytes >= 64 * 1024, "{report:?}");
        assert!(
            !store
                .steps_dir()
                .join("keys")
                .join(format!("{}.json", key.hex()))
                .exists(),
            "a record of an evicted blob is removed"
        );
    }

    #[test]
    fn older_than_and_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = store.put_bytes(b"old").unwrap();
        let new = store.put_bytes(b"new").unwrap();
        set_age(&store.blob_path(&old), 10 * 86_400);
        store
            .prune(PrunePolicy::OlderThan(Duration::from_secs(86_400)))
            .unwrap();
        assert!(!store.has_blob(&old) && store.has_blob(&new));
        store.prune(PrunePolicy::All).unwrap();
        assert!(!store.has_blob(&new));
        assert_eq!(store.usage().unwrap().total_bytes(), 0);
    }

    #[test]
    fn a_build_holding_the_store_blocks_pruning_and_a_lone_build_clears_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.tmp_dir().join("blob-leftover"), b"x").unwrap();
        let build = store.lock_shared().unwrap();
        assert!(!store.tmp_dir().join("blob-leftover").exists(), "cleared");
        fs::write(store.tmp_dir().join("blob-in-use"), b"x").unwrap();
        let second = store.lock_shared().unwrap();
        assert!(
            store.tmp_dir().join("blob-in-use").exists(),
            "another build is running: its files stay"
        );
        assert!(store.try_lock_exclusive().unwrap().is_none());
        drop((build, second));
        assert!(store.try_lock_exclusive().unwrap().is_some());
    }

    #[test]
    fn sizes_and_ages_parse() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_age("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_age("3"), None);
        assert_eq!(parse_age("3y"), None);
    }
}
