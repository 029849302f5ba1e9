//! Errors of the exec sandbox.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Errors from preparing or running a sandboxed build step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host cannot run sandboxed steps.
    #[error("running build steps needs {0}")]
    Unsupported(Requirement),
    /// A field of the [`RunSpec`](super::RunSpec) is not acceptable.
    #[error("invalid {field} `{value}`: {reason}")]
    InvalidSpec {
        /// Which field, e.g. "working directory".
        field: &'static str,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A host path needed for the step is missing or unusable.
    #[error("failed to {action} `{}`", path.display())]
    Io {
        /// What was being done, e.g. "create sandbox directory".
        action: &'static str,
        /// The host path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A mount target cannot be used because of what the image has on its path.
    #[error("failed to prepare mount target `{target}`: `{component}` {reason} in the image")]
    MountTarget {
        /// The target inside the container.
        target: String,
        /// The offending path inside the container.
        component: String,
        /// What is wrong with it, e.g. "is a symbolic link".
        reason: &'static str,
    },
    /// The layer list does not fit into one overlayfs mount.
    #[error(
        "failed to mount {layers} layers with overlayfs: the mount options take {length} bytes, \
         more than mount(2) accepts ({limit}), and the kernel has no `lowerdir+` (Linux 6.8+)"
    )]
    TooManyLayers {
        /// Number of lower directories.
        layers: usize,
        /// Length of the option string.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// The sandbox could not be set up (in the parent or inside the new namespaces).
    #[error("failed to {step} `{}`", path.display())]
    Setup {
        /// The setup step that failed.
        step: SetupStep,
        /// The path it worked on (host path before the root switch, container path after).
        path: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The user named in the spec does not exist in the image's /etc/passwd.
    #[error("failed to find user `{user}` in the image's /etc/passwd")]
    UnknownUser {
        /// The user name.
        user: String,
    },
    /// The group named in the spec does not exist in the image's /etc/group.
    #[error("failed to find group `{group}` in the image's /etc/group")]
    UnknownGroup {
        /// The group name.
        group: String,
    },
    /// The command was not found (exit status 127 in a shell).
    #[error("failed to execute `{command}`: not found in PATH={path}")]
    CommandNotFound {
        /// `args[0]`.
        command: String,
        /// The PATH searched.
        path: String,
    },
    /// The command exists but could not be executed (exit status 126 or 127 in a shell).
    #[error("failed to execute `{command}`{detail}")]
    Exec {
        /// The file that was tried.
        command: String,
        /// Extra explanation, empty or starting with ": ".
        detail: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The sandbox's helper process ended without reporting the command's status.
    #[error("failed to run the sandbox: its helper process ended unexpectedly ({status})")]
    HelperDied {
        /// How the helper ended.
        status: String,
    },
    /// The step was cancelled.
    #[error("build step cancelled")]
    Cancelled,
    /// The seccomp filter could not be built.
    #[error("{0}")]
    Seccomp(String),
    /// The step's user-mode network could not be set up.
    #[error("failed to set up the step's network: {reason}")]
    Network {
        /// What went wrong (with slirp4netns's own message when it printed one).
        reason: String,
    },
}

impl Error {
    /// The exit status a shell would report for this failure (127 for a missing command,
    /// 126 for one that cannot be executed), if it is a failure to execute the command.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Self::CommandNotFound { .. } => Some(127),
            Self::Exec { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => Some(127),
            Self::Exec { .. } => Some(126),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_say_what_is_missing() {
        let msg = Error::Unsupported(Requirement::Root {
            userns_available: false,
        })
        .to_string();
        assert!(
            msg.starts_with("running build steps needs root, or unprivileged user namespaces"),
            "{msg}"
        );
        assert_eq!(
            Error::Unsupported(Requirement::Namespace("pid")).to_string(),
            "running build steps needs kernel support for pid namespaces"
        );
        assert!(
            Error::Unsupported(Requirement::Overlayfs)
                .to_string()
                .contains("modprobe overlay")
        );
    }
}

/// Something the host lacks for running sandboxed steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Requirement {
    /// Not running as root.
    Root {
        /// Whether unprivileged user namespaces look enabled.
        userns_available: bool,
    },
    /// The kernel has no overlay filesystem.
    Overlayfs,
    /// The kernel lacks a namespace type (e.g. "pid").
    Namespace(&'static str),
    /// The upper directory is itself on overlayfs, which cannot hold an overlay upper.
    UpperNotOnOverlay,
    /// Not Linux: the sandbox is made of Linux namespaces.
    Linux,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root {
                userns_available: true,
            } => f.write_str(
                "root, or this process in a user namespace: use the rootless executor \
                 (`blumeops --executor rootless`, or the library's `executor::prepare`)",
            ),
            Self::Root {
                userns_available: false,
            } => f.write_str(
                "root, or unprivileged user namespaces for the rootless executor \
                 (user.max_user_namespaces > 0, kernel.unprivileged_userns_clone = 1); \
                 `blumeops doctor` says what this host lacks",
            ),
            Self::Overlayfs => {
                f.write_str("the overlay filesystem (`modprobe overlay`, CONFIG_OVERLAY_FS)")
            }
            Self::Namespace(kind) => write!(f, "kernel support for {kind} namespaces"),
            Self::UpperNotOnOverlay => f.write_str(
                "a cache directory that is not on overlayfs (set BLUMEOPS_CACHE_DIR to a \
                 directory on ext4, xfs, btrfs or tmpfs, e.g. a volume)",
            ),
            Self::Linux => {
                f.write_str("Linux; use the docker executor (`blumeops --executor docker`)")
            }
        }
    }
}

/// One step of setting up the sandbox, named in [`Error::Setup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupStep {
    /// Creating a pipe to the sandbox.
    Pipe,
    /// Forking the helper process.
    Fork,
    /// Creating the namespaces.
    Unshare,
    /// Forking the namespace's init process.
    ForkInit,
    /// Making the mount tree private.
    MakePrivate,
    /// Entering the directory the overlay paths are relative to.
    EnterLayerDir,
    /// Mounting the overlay rootfs.
    MountOverlay,
    /// Mounting /proc.
    MountProc,
    /// Mounting /sys.
    MountSys,
    /// Mounting a tmpfs (/dev, /dev/shm).
    MountTmpfs,
    /// Mounting /dev/pts.
    MountDevpts,
    /// Creating a directory in /dev.
    CreateDevDir,
    /// Creating a device node.
    CreateDevice,
    /// Creating a symbolic link in /dev.
    CreateSymlink,
    /// Bind-mounting /etc/hosts or /etc/resolv.conf.
    BindEtcFile,
    /// Bind-mounting a cache volume, a secret or a directory.
    BindCache,
    /// Making a mount nodev (and read-only when asked).
    RestrictMount,
    /// Setting the hostname.
    SetHostname,
    /// Bringing up the loopback interface.
    LoopbackUp,
    /// Switching the root to the overlay.
    PivotRoot,
    /// Creating the working directory.
    CreateWorkdir,
    /// Entering the working directory.
    EnterWorkdir,
    /// Reading /etc/passwd or /etc/group.
    ReadUserDb,
    /// Setting the supplementary groups.
    SetGroups,
    /// Setting the group id.
    SetGid,
    /// Setting the user id.
    SetUid,
    /// Dropping capabilities from the bounding set.
    DropCapabilities,
    /// Installing the seccomp filter.
    Seccomp,
    /// Starting slirp4netns.
    StartNetwork,
    /// Waiting for the step's network to come up.
    WaitNetwork,
    /// Waiting for the sandbox.
    Wait,
}

impl fmt::Display for SetupStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pipe => "create a pipe for",
            Self::Fork => "fork the sandbox helper for",
            Self::Unshare => "create namespaces for",
            Self::ForkInit => "fork the sandbox init for",
            Self::MakePrivate => "make the mount tree private for",
            Self::EnterLayerDir => "enter layer directory",
            Self::MountOverlay => "mount overlay at",
            Self::MountProc => "mount proc at",
            Self::MountSys => "mount sysfs at",
            Self::MountTmpfs => "mount tmpfs at",
            Self::MountDevpts => "mount devpts at",
            Self::CreateDevDir => "create directory",
            Self::CreateDevice => "create device node",
            Self::CreateSymlink => "create symbolic link",
            Self::BindEtcFile => "bind-mount",
            Self::BindCache => "bind-mount (cache volume, secret or directory) at",
            Self::RestrictMount => "restrict (nodev, read-only) the mount at",
            Self::SetHostname => "set hostname",
            Self::LoopbackUp => "bring up the loopback interface in",
            Self::PivotRoot => "switch root to",
            Self::CreateWorkdir => "create working directory",
            Self::EnterWorkdir => "enter working directory",
            Self::ReadUserDb => "read",
            Self::SetGroups => "set supplementary groups of",
            Self::SetGid => "set group id of",
            Self::SetUid => "set user id of",
            Self::DropCapabilities => "drop capabilities of",
            Self::Seccomp => "install the seccomp filter for",
            Self::StartNetwork => "start",
            Self::WaitNetwork => "wait for the network of",
            Self::Wait => "wait for",
        })
    }
}
