//! Types for build steps that run commands, copy between containers and mount caches.

use std::fmt;

use crate::secret::Secret;

/// Which exit statuses of a `with_exec` step count as success.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Expect {
    /// Exit code 0 (the default).
    #[default]
    Success,
    /// Any non-zero exit code.
    Failure,
    /// Any exit code.
    Any,
    /// One of these exit codes.
    Codes(Vec<i32>),
}

impl Expect {
    /// Whether `code` satisfies this expectation.
    pub fn accepts(&self, code: i32) -> bool {
        match self {
            Self::Success => code == 0,
            Self::Failure => code != 0,
            Self::Any => true,
            Self::Codes(codes) => codes.contains(&code),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Success => f.write_str("0"),
            Self::Failure => f.write_str("non-zero"),
            Self::Any => f.write_str("any"),
            Self::Codes(c) => {
                let c: Vec<String> = c.iter().map(i32::to_string).collect();
                write!(f, "one of {}", c.join(", "))
            }
        }
    }
}

/// Network access of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Network {
    /// Its own network namespace with outbound access through user-mode networking
    /// (slirp4netns): the internet and package mirrors, but not the host's loopback. Without
    /// slirp4netns installed, the host's network (with a warning).
    #[default]
    Isolated,
    /// Share the host's network, loopback included (`RUN --network=host`).
    Host,
    /// Only a loopback interface.
    None,
}

/// Options of a `with_exec` step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ExecOptions {
    /// Which exit codes are success.
    pub expect: Expect,
    /// Bytes fed to the command's stdin (default: none, stdin is `/dev/null`).
    pub stdin: Option<Vec<u8>>,
    /// Extra environment for this step only (not written to the image config).
    pub env: Vec<(String, String)>,
    /// Network access.
    pub network: Network,
}

impl ExecOptions {
    /// Accept these exit codes.
    #[must_use]
    pub fn with_expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    /// Feed `stdin` to the command.
    #[must_use]
    pub fn with_stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// Set a variable for this step only.
    #[must_use]
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Set network access.
    #[must_use]
    pub fn with_network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }
}

/// A persistent cache volume (Go module cache, npm cache...): shared by every build that
/// names it, mounted into steps, never part of an image or a cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheVolume {
    name: String,
}

impl CacheVolume {
    /// The volume called `name` (letters, digits, `.`, `_`, `-`).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A secret exposed to steps as an environment variable. Its value is kept out of layers,
/// the config, the history, cache keys and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretVariable {
    /// Variable name.
    pub name: String,
    /// The value.
    pub secret: Secret,
}

impl fmt::Debug for SecretVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretVariable({}=<redacted>)", self.name)
    }
}

/// How [`super::Container::with_mounted_secret_opts`] mounts a secret as a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretFileOptions {
    /// The secret's name (a Dockerfile's `id`): what step keys cover, never the value.
    pub name: String,
    /// Permission bits of the file (default 0400).
    pub mode: u32,
    /// Owner of the file (default 0).
    pub uid: u32,
    /// Group of the file (default 0).
    pub gid: u32,
}

impl Default for SecretFileOptions {
    fn default() -> Self {
        Self {
            name: String::new(),
            mode: 0o400,
            uid: 0,
            gid: 0,
        }
    }
}

impl SecretFileOptions {
    /// Options for the secret called `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Set the file's permission bits.
    #[must_use]
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Set the file's owner and group.
    #[must_use]
    pub fn with_owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// How a directory is mounted into later `with_exec` steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MountOptions {
    /// Let steps write to it; what they write is thrown away after each step (the step
    /// sees a copy). Read-only when unset.
    pub writable: bool,
}

impl MountOptions {
    /// Writable, writes thrown away after each step.
    pub fn writable() -> Self {
        Self { writable: true }
    }
}

/// Options for copying from another container: owner (a `user[:group]` name or id,
/// resolved in the destination image's /etc/passwd and /etc/group), file mode and
/// include/exclude globs (`*` and `?` within one path component, `**` across them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CopyOptions {
    /// Owner, e.g. `1000:1000`, `navidrome` or `navidrome:navidrome` (default: kept).
    pub owner: Option<String>,
    /// Permission bits for copied files (default: kept).
    pub mode: Option<u32>,
    /// Only paths matching one of these are copied (relative to the source directory).
    pub include: Vec<String>,
    /// Paths matching one of these are skipped.
    pub exclude: Vec<String>,
}

impl CopyOptions {
    /// Set the owner.
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Set the file mode.
    #[must_use]
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Add an include pattern.
    #[must_use]
    pub fn with_include(mut self, pattern: impl Into<String>) -> Self {
        self.include.push(pattern.into());
        self
    }

    /// Add an exclude pattern.
    #[must_use]
    pub fn with_exclude(mut self, pattern: impl Into<String>) -> Self {
        self.exclude.push(pattern.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        assert!(Expect::Success.accepts(0) && !Expect::Success.accepts(1));
        assert!(Expect::Failure.accepts(2) && !Expect::Failure.accepts(0));
        assert!(Expect::Any.accepts(127));
        assert!(Expect::Codes(vec![0, 3]).accepts(3) && !Expect::Codes(vec![0, 3]).accepts(1));
    }

    #[test]
    fn secret_variable_debug_is_redacted() {
        let v = SecretVariable {
            name: "TOKEN".into(),
            secret: Secret::new("s3cr3t"),
        };
        assert_eq!(format!("{v:?}"), "SecretVariable(TOKEN=<redacted>)");
    }
}
