//! What the client keeps of registries between runs, in [`super::ClientOptions::state_dir`],
//! so a later run spends no request on what an earlier one learned:
//!
//! - `basic-hosts`: the hosts that asked for Basic credentials, one a line. A later run sends
//!   the credentials it has for them with its first request instead of waiting for the 401.
//!   Only host names are kept, never a credential or a token.
//! - `blobs/<sha256 of REGISTRY/REPOSITORY>`: blobs the repository holds, one `DIGEST
//!   UNIX_SECONDS` a line, written after the registry took a manifest that references them
//!   (it checks that a manifest's blobs exist) or after the tag was found already pointing at
//!   such a manifest. A push does not ask about these again for [`KNOWN_FOR`]; if the
//!   registry then refuses the manifest for a missing blob, the push forgets the repository's
//!   list, checks every blob and uploads what is missing.
//!
//! Every file is replaced whole (a temporary file renamed over it), so a reader never sees
//! half of one; two runs that write at once may lose one's additions, which costs a later run
//! a request, never a wrong answer. Failures to read or write are ignored for the same reason.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::reference::Digest;

/// How long a blob seen in a repository is taken to be there without asking.
pub(crate) const KNOWN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// The client's state directory.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    dir: PathBuf,
}

impl Known {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn basic_path(&self) -> PathBuf {
        self.dir.join("basic-hosts")
    }

    fn blobs_path(&self, registry: &str, repository: &str) -> PathBuf {
        let name = hex::encode(Sha256::digest(format!("{registry}/{repository}")));
        self.dir.join("blobs").join(name)
    }

    /// Hosts known to take Basic credentials.
    pub fn basic_hosts(&self) -> HashSet<String> {
        read_lines(&self.basic_path())
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Remember (`true`) or forget (`false`) that `host` takes Basic credentials.
    pub fn set_basic_host(&self, host: &str, basic: bool) {
        let mut hosts = self.basic_hosts();
        let changed = if basic {
            hosts.insert(host.to_owned())
        } else {
            hosts.remove(host)
        };
        if changed {
            let mut sorted: Vec<String> = hosts.into_iter().collect();
            sorted.sort();
            replace(&self.basic_path(), &sorted);
        }
    }

    /// Blobs `registry/repository` was seen to hold within [`KNOWN_FOR`] of `now`.
    pub fn blobs(&self, registry: &str, repository: &str, now: SystemTime) -> HashSet<Digest> {
        let now = unix(now);
        parse_blobs(&read_lines(&self.blobs_path(registry, repository)))
            .into_iter()
            .filter(|(_, at)| now.saturating_sub(*at) < KNOWN_FOR.as_secs() && *at <= now + 60)
            .map(|(d, _)| d)
            .collect()
    }

    /// Remember that `registry/repository` holds `digests` as of `now` (keeping the other
    /// entries that are still fresh).
    pub fn add_blobs<'a>(
        &self,
        registry: &str,
        repository: &str,
        digests: impl IntoIterator<Item = &'a Digest>,
        now: SystemTime,
    ) {
        let path = self.blobs_path(registry, repository);
        let now = unix(now);
        let mut entries: std::collections::BTreeMap<Digest, u64> = parse_blobs(&read_lines(&path))
            .into_iter()
            .filter(|(_, at)| now.saturating_sub(*at) < KNOWN_FOR.as_secs())
            .collect();
        for d in digests {
            entries.insert(d.clone(), now);
        }
        let lines: Vec<String> = entries.iter().map(|(d, at)| format!("{d} {at}")).collect();
        replace(&path, &lines);
    }

    /// Forget every blob of `registry/repository`.
    pub fn forget_blobs(&self, registry: &str, repository: &str) {
        let _ = std::fs::remove_file(self.blobs_path(registry, repository));
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn parse_blobs(lines: &[String]) -> Vec<(Digest, u64)> {
    lines
        .iter()
        .filter_map(|l| {
            let (d, at) = l.split_once(' ')?;
            Some((d.parse().ok()?, at.trim().parse().ok()?))
        })
        .collect()
}

/// The file's lines, none when it cannot be read.
fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Write `lines` to a temporary file beside `path` and rename it over `path`.
fn replace(path: &Path, lines: &[String]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) else {
        return;
    };
    let mut text = lines.join("\n");
    text.push('\n');
    if tmp.write_all(text.as_bytes()).is_ok() {
        let _ = tmp.persist(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_hosts_are_kept_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let known = Known::new(dir.path().join("registry"));
        assert!(known.basic_hosts().is_empty());
        known.set_basic_host("127.0.0.1:5000", true);
        known.set_basic_host("ghcr.io", true);
        let again = Known::new(dir.path().join("registry"));
        assert_eq!(again.basic_hosts().len(), 2);
        again.set_basic_host("ghcr.io", false);
        assert_eq!(
            known.basic_hosts(),
            HashSet::from(["127.0.0.1:5000".to_owned()])
        );
    }

    #[test]
    fn blobs_are_per_repository_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let known = Known::new(dir.path().to_owned());
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let then = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        known.add_blobs("r:5000", "x/app", [&a], then);
        known.add_blobs("r:5000", "x/app", [&b], then + Duration::from_secs(3600));
        let soon = then + Duration::from_secs(7200);
        assert_eq!(
            known.blobs("r:5000", "x/app", soon),
            HashSet::from([a, b.clone()])
        );
        assert!(known.blobs("r:5000", "x/other", soon).is_empty());
        assert!(known.blobs("r2:5000", "x/app", soon).is_empty());
        // a is older than KNOWN_FOR a week later; b is not yet.
        let later = then + KNOWN_FOR + Duration::from_secs(10);
        assert_eq!(known.blobs("r:5000", "x/app", later), HashSet::from([b]));
        known.forget_blobs("r:5000", "x/app");
        assert!(known.blobs("r:5000", "x/app", soon).is_empty());
    }

    #[test]
    fn unreadable_state_is_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        // A state directory below a file can be neither read nor written.
        let known = Known::new(file.join("registry"));
        known.set_basic_host("h", true);
        known.add_blobs("r", "x", [&Digest::of(b"a")], SystemTime::now());
        assert!(known.basic_hosts().is_empty());
        assert!(known.blobs("r", "x", SystemTime::now()).is_empty());
    }
}
