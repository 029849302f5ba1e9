//! Non-root users for the rootless tests, created (as root) once per machine and reused:
//!
//! - [`TestUser::with_range`]: `blumeops-rl`, with a 65536-id range in `/etc/subuid` and
//!   `/etc/subgid`;
//! - [`TestUser::without_range`]: `blumeops-nr`, with none (a single id mapping).
//!
//! They run a copy of the `blumeops` binary in a world-readable directory, since the build
//! tree may sit under a directory they cannot enter.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use tempfile::TempDir;

use crate::cli::blumeops_bin;
use crate::util::tempdir;

/// The range given to [`TestUser::with_range`] (first id, count).
pub const RANGE: (u32, u32) = (400_000, 65_536);

/// A local user account for tests.
#[derive(Debug)]
pub struct TestUser {
    /// Login name.
    pub name: &'static str,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory.
    pub home: PathBuf,
}

/// Whether this process can create users (root); tests that need them skip otherwise.
pub fn can_create_users() -> bool {
    effective_uid() == 0 && Path::new("/usr/sbin/useradd").exists()
}

/// The effective uid, from /proc (the harness has no libc binding of its own).
pub(crate) fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2)?.parse().ok()
        })
        .unwrap_or(u32::MAX)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Serialises changes to /etc/passwd and /etc/sub[ug]id between this process's tests.
static ACCOUNTS: Mutex<()> = Mutex::new(());

fn ensure_user(name: &'static str, range: Option<(u32, u32)>) -> TestUser {
    let _guard = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let exists = Command::new("id")
        .arg("-u")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        // Another test process may create it at the same time: a failure is fine when the
        // user exists afterwards.
        let _ = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/sh", "--user-group", name])
            .output();
    }
    let uid: u32 = run(Command::new("id").arg("-u").arg(name)).parse().unwrap();
    let gid: u32 = run(Command::new("id").arg("-g").arg(name)).parse().unwrap();
    // Exactly the ranges wanted: useradd may have added one of its own.
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut kept: String = text
            .lines()
            .filter(|l| {
                let owner = l.split(':').next().unwrap_or("");
                owner != name && owner != uid.to_string()
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if let Some((start, count)) = range {
            kept.push_str(&format!("{name}:{start}:{count}\n"));
        }
        if kept != text {
            std::fs::write(file, kept).unwrap_or_else(|e| panic!("failed to write {file}: {e}"));
        }
    }
    TestUser {
        name,
        uid,
        gid,
        home: PathBuf::from(format!("/home/{name}")),
    }
}

impl TestUser {
    /// `blumeops-rl`, with [`RANGE`] in `/etc/subuid` and `/etc/subgid`.
    pub fn with_range() -> &'static TestUser {
        static USER: OnceLock<TestUser> = OnceLock::new();
        USER.get_or_init(|| ensure_user("blumeops-rl", Some(RANGE)))
    }

    /// `blumeops-nr`, without subordinate ranges.
    pub fn without_range() -> &'static TestUser {
        static USER: OnceLock<TestUser> = OnceLock::new();
        USER.get_or_init(|| ensure_user("blumeops-nr", None))
    }

    /// A new temporary directory owned by this user (mode 0755, in a directory every user
    /// can enter).
    pub fn tempdir(&self, prefix: &str) -> TempDir {
        let dir = tempdir(prefix);
        std::os::unix::fs::chown(dir.path(), Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("failed to chown {}: {e}", dir.path().display()));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// Give `path` and everything under it to this user.
    pub fn chown_tree(&self, path: &Path) {
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path));
    }

    /// Remove a tree this user's rootless builds wrote (it holds files owned by its
    /// subordinate ids, which only root or the user's namespace may remove).
    pub fn remove_tree(path: &Path) {
        let _ = Command::new("rm").arg("-rf").arg(path).status();
    }
}

/// A copy of the `blumeops` binary that any user may run, made once per process.
pub fn shared_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // A static is never dropped: the copy (a debug build's few hundred MiB) is removed
        // when the test process exits.
        let dir = tempdir("blumeops-bin-").keep();
        if !crate::util::keep_temp() {
            let remove = dir.clone();
            crate::util::at_exit(move || {
                let _ = std::fs::remove_dir_all(remove);
            });
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("blumeops");
        std::fs::copy(blumeops_bin(), &path)
            .unwrap_or_else(|e| panic!("failed to copy {}: {e}", blumeops_bin().display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    })
}
