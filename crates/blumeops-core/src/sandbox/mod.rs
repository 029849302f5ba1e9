//! The exec sandbox: run one build step's command in new mount, PID, IPC and UTS namespaces
//! (plus a network namespace with only `lo` for [`Network::None`]) on an overlayfs rootfs
//! whose upper directory becomes the step's layer.
//!
//! [`run`] is synchronous and blocks until the command ends: call it from a blocking thread
//! (`tokio::task::spawn_blocking`), never on an async worker.
//!
//! Inside the sandbox the command finds: the layers merged with overlayfs (nodev), a fresh
//! /proc, a read-only /sys, a nodev tmpfs /dev with the host's null, zero, full, random,
//! urandom and tty bind-mounted, /dev/pts (new devpts instance), /dev/shm and the
//! fd/stdin/stdout/stderr links, read-only /etc/hosts and /etc/resolv.conf (host copies;
//! only localhost and no DNS servers without network), the cache volumes (nodev), the
//! hostname, the capabilities of Docker's default set, and a seccomp filter modelled on
//! Docker's default profile (see `seccomp`: no mounts, no namespaces, no device nodes but
//! whiteouts). None of those mountpoints end up in the upper directory; see the `plan`
//! module for how.
//!
//! Output: `stdout_path` receives stdout byte for byte. `log_path` receives stdout and
//! stderr combined, line by line in the order the lines complete, without prefixes (a line
//! longer than 64 KiB is cut); setup and exec failures are added there as a final
//! `blumeops: ...` line. `on_line` gets each line (without its `\n` or `\r\n`).
//!
//! The upper directory holds plain files, overlay whiteouts (character devices 0/0) and
//! opaque directories (`trusted.overlay.opaque=y`): the overlay is mounted with
//! `metacopy=off,redirect_dir=off`.
//!
//! Rootless: run by root of a user namespace (see [`crate::executor`]), the same sandbox
//! mounts the overlay with `userxattr` (opaque directories are `user.overlay.opaque=y`),
//! bind-mounts the host's /sys where it may not mount sysfs, and leaves the supplementary
//! groups alone when the namespace denies `setgroups`.

// The sandbox needs Linux (namespaces, overlayfs, seccomp, cgroups). Elsewhere only the
// types are here and `unsupported` refuses every step: steps run in the docker executor's
// Linux container instead.
#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod child;
#[cfg(target_os = "linux")]
mod copyfs;
mod error;
#[cfg(target_os = "linux")]
mod network;
#[cfg(target_os = "linux")]
mod output;
#[cfg(target_os = "linux")]
mod plan;
#[cfg(target_os = "linux")]
mod rootless_fs;
#[cfg(target_os = "linux")]
mod runner;
#[cfg(target_os = "linux")]
mod seccomp;
#[cfg(all(test, target_os = "linux"))]
mod tests;
#[cfg(target_os = "linux")]
mod user;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use error::{Error, Requirement, SetupStep};
#[cfg(not(target_os = "linux"))]
pub use unsupported::{check_support, run, user_network};
#[cfg(target_os = "linux")]
pub use {
    cgroup::pids_cgroup_parent,
    network::user_network,
    rootless_fs::{ROOTLESS_FS_ENV, RootlessFs, rootless_fs},
    runner::{check_support, run},
};

#[cfg(target_os = "linux")]
use runner::io_err;

use crate::Network;

/// Used when the spec's hostname is empty.
pub const DEFAULT_HOSTNAME: &str = "blumeops";
/// The PATH searched (and set) when the environment has none, as Docker and BuildKit do.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Default of [`RunSpec::pids_max`].
pub const DEFAULT_PIDS_MAX: u64 = 4096;

/// Lines of output kept in [`RunOutcome::output_tail`].
pub const TAIL_LINES: usize = 200;

/// A host directory (a cache volume, a mounted directory) or file (a secret) mounted into
/// the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host directory or file; the target is made the same kind.
    pub source: PathBuf,
    /// Absolute path in the container; created (outside the layer) if missing.
    pub target: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// An empty tmpfs mounted into the sandbox; its contents go when the step ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Absolute path in the container; created (outside the layer) if missing.
    pub target: String,
    /// Size limit in bytes (the kernel's default, half the memory, when unset).
    pub size: Option<u64>,
}

/// What to run and on which layers.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Unpacked layer directories, bottom (base layer) first; may be empty (scratch).
    pub lowers: Vec<PathBuf>,
    /// Empty directory: the overlay upper directory, which becomes the step's diff. Its mode
    /// and owner are set to those of the image's root directory (they are the container's
    /// `/`).
    pub upper: PathBuf,
    /// Empty directory on the same file system as `upper`: the overlay work directory.
    pub work: PathBuf,
    /// The command; `args[0]` is searched in the environment's PATH if it has no `/`.
    pub args: Vec<String>,
    /// `NAME=value` entries; a later entry replaces an earlier one of the same name. PATH
    /// defaults to [`DEFAULT_PATH`]; HOME defaults to the user's home (or `/`).
    pub env: Vec<String>,
    /// Absolute working directory in the container, created (0755, root) in the layer if
    /// missing.
    pub cwd: String,
    /// `name`, `uid`, `name:group` or `uid:gid`, resolved with the image's /etc/passwd and
    /// /etc/group; `None` is root.
    pub user: Option<String>,
    /// Hostname ([`DEFAULT_HOSTNAME`] when empty).
    pub hostname: String,
    /// Network access.
    pub network: Network,
    /// Bind mounts, in this order.
    pub mounts: Vec<BindMount>,
    /// Empty tmpfs mounts, after the bind mounts.
    pub tmpfs: Vec<TmpfsMount>,
    /// Bytes fed to stdin; `None` means /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Combined stdout and stderr, line by line.
    pub log_path: PathBuf,
    /// Stdout alone, as written.
    pub stdout_path: PathBuf,
    /// Most processes the step may have at once (a pids cgroup, where one can be made;
    /// `None`: no limit). See [`DEFAULT_PIDS_MAX`].
    pub pids_max: Option<u64>,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOutcome {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed the command.
    pub signal: Option<i32>,
    /// Wall time from starting the sandbox to the command's end.
    pub duration: Duration,
    /// The last [`TAIL_LINES`] lines of combined output (each cut at 4 KiB).
    pub output_tail: Vec<String>,
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout = 0,
    /// Standard error.
    Stderr = 1,
}

/// Cancels a running step: the sandbox's PID 1 gets SIGKILL, which takes its whole PID
/// namespace down, and [`run`] returns [`Error::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel every run watching this token (now or later).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The stand-in off Linux: the same calls, each refusing.
#[cfg(not(target_os = "linux"))]
mod unsupported {
    use std::path::PathBuf;

    use super::{CancelToken, Error, Requirement, RunOutcome, RunSpec, Stream};

    /// Steps run only on Linux.
    pub fn check_support() -> Result<(), Error> {
        Err(Error::Unsupported(Requirement::Linux))
    }

    /// Steps run only on Linux.
    pub fn run(
        _spec: &RunSpec,
        _cancel: &CancelToken,
        _on_line: &mut dyn FnMut(Stream, &str),
    ) -> Result<RunOutcome, Error> {
        Err(Error::Unsupported(Requirement::Linux))
    }

    /// Isolated step networks are Linux network namespaces.
    pub fn user_network() -> Result<PathBuf, String> {
        Err("isolated step networks exist only on Linux".to_owned())
    }
}
