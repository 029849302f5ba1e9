//! A pids cgroup per step, so a fork bomb in a step fails the step, not the machine.
//!
//! The cgroup is made under this process's own cgroup: on cgroup v2 when the pids
//! controller is delegated to its children (`cgroup.subtree_control` lists `pids`, as with
//! systemd's `Delegate=yes`), on cgroup v1 in the `pids` hierarchy. Where neither can be
//! written (an unprivileged user without delegation, a container with a read-only
//! `/sys/fs/cgroup`), steps run without a limit and `doctor` says so.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One step's cgroup; removed on drop.
#[derive(Debug)]
pub(super) struct StepCgroup {
    dir: PathBuf,
}

/// Where step cgroups go, and which version that is.
fn parent() -> Option<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = Path::new("/sys/fs/cgroup");
    // v2: `0::/path`, with the pids controller delegated to children.
    if root.join("cgroup.controllers").exists()
        && let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::"))
    {
        let dir = root.join(path.trim_start_matches('/'));
        let delegated = fs::read_to_string(dir.join("cgroup.subtree_control"))
            .is_ok_and(|s| s.split_whitespace().any(|c| c == "pids"));
        return delegated.then_some(dir);
    }
    // v1: `N:pids:/path` in the pids hierarchy.
    let path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers.split(',').any(|c| c == "pids").then_some(path)
    })?;
    // (The hierarchy's root has no pids.max of its own; its children do.)
    let dir = root.join("pids").join(path.trim_start_matches('/'));
    dir.join("cgroup.procs").exists().then_some(dir)
}

/// Where step cgroups can be made here, if anywhere (for `doctor`).
pub fn pids_cgroup_parent() -> Option<PathBuf> {
    let dir = parent()?;
    let probe = dir.join(format!("blumeops-probe-{}", std::process::id()));
    fs::create_dir(&probe).ok()?;
    let _ = fs::remove_dir(&probe);
    Some(dir)
}

impl StepCgroup {
    /// A new cgroup allowing at most `max` processes, or `None` where none can be made.
    pub(super) fn create(max: u64) -> Option<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let parent = parent()?;
        remove_leftovers(&parent);
        let dir = parent.join(format!(
            "blumeops-step-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).ok()?;
        let group = Self { dir };
        fs::write(group.dir.join("pids.max"), max.to_string()).ok()?;
        Some(group)
    }

    /// Move process `pid` (and so everything it forks later) into the cgroup.
    pub(super) fn add(&self, pid: i32) -> io::Result<()> {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// The cgroup's directory.
    pub(super) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        // The step's processes are gone when the sandbox returns, but the kernel may take a
        // moment to release the last of them.
        let deadline = Instant::now() + Duration::from_secs(2);
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            if !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Remove step cgroups that a killed blumeops left behind: named for a process that no
/// longer exists, and empty (the kernel refuses to remove a cgroup that is not).
fn remove_leftovers(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix("blumeops-step-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner != std::process::id() && !Path::new(&format!("/proc/{owner}")).exists() {
            let _ = fs::remove_dir(entry.path());
        }
    }
}
