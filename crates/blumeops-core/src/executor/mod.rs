//! Where build steps run: the executors, how `auto` picks one, and what `doctor` reports.
//!
//! - `root`: the step sandbox run by root in the host's user namespace
//!   (overlayfs with `trusted.*` xattrs).
//! - `rootless`: the same sandbox run by a process that [`reexec`]uted itself into a user
//!   namespace where the calling user is 0 and its `/etc/subuid` range supplies 1–65535
//!   (overlayfs mounted with `userxattr`, `user.overlay.*` markers). The sandbox notices the
//!   namespace by itself ([`CurrentMapping`]) and adapts its mounts.
//!
//! - `docker`: the whole build in a helper container of a Docker Engine API, with blumeops
//!   itself as the engine running the root sandbox there ([`docker`]).
//!
//! `auto` takes `root` when this process can create mount namespaces, else `rootless` when
//! it can create a user namespace and mount overlayfs in it, else `docker` when a Docker
//! Engine API answers, else fails naming each reason with its fix.
//!
//! `root` and `rootless` need Linux (namespaces, overlayfs, seccomp, cgroups): elsewhere
//! (macOS) they are unusable, "Linux only", and `auto` means `docker`
//! ([`ExecutorKind::on_this_system`]).

pub mod docker;
pub mod emulation;
mod idmap;
mod probe;
mod step;
// Entering a user namespace is Linux's; elsewhere `userns` is a stand-in that refuses.
#[cfg(target_os = "linux")]
mod userns;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

pub use idmap::{
    CurrentMapping, IdRange, MAPPED_IDS, MapLine, SUBGID_FILE, SUBUID_FILE, SingleMappingAdvice,
    UsernsPlan, plan_for_current_user,
};
#[cfg(target_os = "linux")]
pub(crate) use probe::overlay_mountable;
pub use probe::{Candidate, DoctorReport, Problem, doctor};
pub use step::{RootSandbox, RootlessSandbox, StepExecutor, for_this_process};
pub use userns::{describe_current, reexec, spawn as spawn_in_user_namespace};

/// Set in the child's environment: it is the rootless re-execution and must not enter
/// another namespace.
pub const USERNS_CHILD_ENV: &str = "BLUMEOPS_USERNS_CHILD";

/// Environment variable that sets the executor (`auto`, `root`, `rootless`).
pub const EXECUTOR_ENV: &str = "BLUMEOPS_EXECUTOR";

/// Which executor to use, as the user asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// The first that works: root, then rootless, then docker (only docker off Linux).
    #[default]
    Auto,
    /// The sandbox as root in the host's user namespace.
    Root,
    /// The sandbox in a user namespace of the calling user.
    Rootless,
    /// The build in a helper container of a Docker Engine API.
    Docker,
}

impl ExecutorKind {
    /// The names accepted by [`FromStr`].
    pub const NAMES: [&'static str; 4] = ["auto", "root", "rootless", "docker"];

    /// The kind as this system runs it: off Linux only the docker executor runs steps, so
    /// `auto` is `docker` there.
    pub fn on_this_system(self) -> Self {
        if self == Self::Auto && !cfg!(target_os = "linux") {
            Self::Docker
        } else {
            self
        }
    }
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Root => "root",
            Self::Rootless => "rootless",
            Self::Docker => "docker",
        })
    }
}

impl FromStr for ExecutorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "root" => Ok(Self::Root),
            "rootless" => Ok(Self::Rootless),
            "docker" => Ok(Self::Docker),
            other => Err(format!(
                "unknown executor `{other}` (expected one of: {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Errors of choosing or entering an executor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No executor can run steps here.
    #[error("no executor can run build steps here:{}", list(.tried))]
    NoneUsable {
        /// Each candidate with why it cannot be used.
        tried: Vec<Candidate>,
    },
    /// The executor asked for cannot run here.
    #[error("the {} executor cannot run build steps here:{}", .candidate.name, list(std::slice::from_ref(.candidate)))]
    Unusable {
        /// The candidate with why it cannot be used.
        candidate: Candidate,
    },
    /// The docker executor failed.
    #[error(transparent)]
    Docker(#[from] docker::Error),
    /// Creating or mapping the user namespace failed.
    #[error("failed to enter a user namespace: {reason}")]
    UserNamespace {
        /// What failed.
        reason: String,
    },
    /// A system call or file operation failed.
    #[error("failed to {action} `{}`", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn list(tried: &[Candidate]) -> String {
    let mut s = String::new();
    for c in tried {
        for p in &c.problems {
            s.push_str(&format!("\n  - {}: {}\n    fix: {}", c.name, p.what, p.fix));
        }
    }
    s
}

/// What the caller must do to run steps with the chosen executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// Steps can run in this process.
    Ready(ExecutorKind),
    /// This process must run again in a user namespace ([`reexec`] with this plan).
    Reexec(UsernsPlan),
    /// The build must run through the Docker Engine API ([`docker`]).
    Docker,
}

/// Choose the executor for `kind` and say whether this process can use it as it is. Call it
/// early, before threads are started: a [`Prepared::Reexec`] must be carried out then.
pub fn prepare(kind: ExecutorKind) -> Result<Prepared, Error> {
    let kind = kind.on_this_system();
    let in_userns = !current_mapping().is_initial();
    if std::env::var_os(USERNS_CHILD_ENV).is_some() {
        // The re-executed child: its namespace is the rootless executor.
        if !in_userns {
            return Err(Error::UserNamespace {
                reason: format!(
                    "{USERNS_CHILD_ENV} is set, but this process is not in a user namespace"
                ),
            });
        }
        return Ok(Prepared::Ready(ExecutorKind::Rootless));
    }
    let root = probe::root();
    match kind {
        ExecutorKind::Root => {
            if root.usable() {
                Ok(Prepared::Ready(running_kind()))
            } else {
                Err(Error::Unusable { candidate: root })
            }
        }
        ExecutorKind::Rootless if in_userns && root.usable() => {
            Ok(Prepared::Ready(ExecutorKind::Rootless))
        }
        ExecutorKind::Rootless => {
            let rootless = probe::rootless();
            if rootless.usable() {
                Ok(Prepared::Reexec(plan_for_current_user()))
            } else {
                Err(Error::Unusable {
                    candidate: rootless,
                })
            }
        }
        ExecutorKind::Docker => {
            let docker = probe::docker();
            if docker.usable() {
                Ok(Prepared::Docker)
            } else {
                Err(Error::Unusable { candidate: docker })
            }
        }
        ExecutorKind::Auto => auto_from(root, probe::rootless, probe::docker),
    }
}

/// What `auto` picks given the root candidate, probing the next only when the one before is
/// unusable.
fn auto_from(
    root: Candidate,
    rootless: impl FnOnce() -> Candidate,
    docker: impl FnOnce() -> Candidate,
) -> Result<Prepared, Error> {
    if root.usable() {
        return Ok(Prepared::Ready(running_kind()));
    }
    let rootless = rootless();
    if rootless.usable() {
        return Ok(Prepared::Reexec(plan_for_current_user()));
    }
    let docker = docker();
    if docker.usable() {
        return Ok(Prepared::Docker);
    }
    Err(Error::NoneUsable {
        tried: vec![root, rootless, docker],
    })
}

/// The executor this process runs steps with when it can run them itself: rootless inside
/// a user namespace, root otherwise.
fn running_kind() -> ExecutorKind {
    if current_mapping().is_initial() {
        ExecutorKind::Root
    } else {
        ExecutorKind::Rootless
    }
}

/// This process's id mapping, read once.
pub fn current_mapping() -> &'static CurrentMapping {
    static MAPPING: OnceLock<CurrentMapping> = OnceLock::new();
    MAPPING.get_or_init(CurrentMapping::read)
}

/// Whether this process runs in a user namespace other than the host's (the rootless
/// executor): overlays then need `userxattr` and opaque markers are `user.overlay.*`.
pub fn in_user_namespace() -> bool {
    !current_mapping().is_initial()
}

/// When this process runs with a single id mapping, what the user should do about it.
pub fn single_mapping_advice() -> Option<SingleMappingAdvice> {
    let mapping = current_mapping();
    if !mapping.is_single() {
        return None;
    }
    Some(SingleMappingAdvice::for_user(user_name(
        mapping.host_uid().unwrap_or(0),
    )))
}

/// The name of host user `uid` from `/etc/passwd` (this process may be in a user namespace,
/// where the host's ids have other names), else the number.
pub(crate) fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id: u32 = f.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// Exit the way `status` says the child did: the same code, or the same signal.
#[expect(
    unsafe_code,
    reason = "dying of the child's signal needs its default disposition back"
)]
pub fn exit_like(status: std::process::ExitStatus) -> ! {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(sig) = status.signal() {
        // SAFETY: default disposition, then the same signal to ourselves.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(status.code().unwrap_or(1))
}

/// `name` found in PATH (or the usual system directories), as an executable file.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The stand-in off Linux: no user namespace to enter or describe.
#[cfg(not(target_os = "linux"))]
mod userns {
    use std::process::{Child, Command, ExitStatus};

    use super::{Error, UsernsPlan};

    fn linux_only() -> Error {
        Error::UserNamespace {
            reason: "user namespaces exist only on Linux".to_owned(),
        }
    }

    /// User namespaces are Linux's.
    pub fn reexec(_plan: &UsernsPlan) -> Result<ExitStatus, Error> {
        Err(linux_only())
    }

    /// User namespaces are Linux's.
    pub fn spawn(_cmd: Command, _plan: &UsernsPlan) -> Result<Child, Error> {
        Err(linux_only())
    }

    /// This process runs in no user namespace.
    pub fn describe_current() -> String {
        "no user namespace (Linux only)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        for name in ExecutorKind::NAMES {
            assert_eq!(name.parse::<ExecutorKind>().unwrap().to_string(), name);
        }
        let err = "docker2".parse::<ExecutorKind>().unwrap_err();
        assert!(err.contains("auto, root, rootless"), "{err}");
    }

    #[test]
    fn errors_list_each_problem_with_its_fix() {
        let err = Error::NoneUsable {
            tried: vec![
                Candidate::unusable("root", Problem::new("not root", "run as root")),
                Candidate::unusable(
                    "rootless",
                    Problem::new("user namespaces are disabled", "sysctl -w x=1"),
                ),
            ],
        };
        let text = err.to_string();
        assert!(
            text.contains("- root: not root\n    fix: run as root"),
            "{text}"
        );
        assert!(
            text.contains("- rootless: user namespaces are disabled\n    fix: sysctl -w x=1"),
            "{text}"
        );
    }

    #[test]
    fn finds_programs_in_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-blumeops").is_none());
    }
}
