//! The Dagger-style `Container`: an immutable, lazy chain of operations. Nothing runs until
//! it is evaluated by [`Container::build`], [`Container::publish`] or [`Container::export`].
//!
//! One direction, each module using only those listed before it:
//!
//! - this module: the `Container` API and its operation graph (`Op`);
//! - `exec`: options of commands, copies and mounts; `cache`: step keys and why a step ran;
//! - `engine`: the services a build uses (store, registry, executor, settings, progress);
//! - `state`: the image as evaluation goes, and the finished image;
//! - `steps`: the steps that need a filesystem (commands through the executor, copies
//!   between stages, downloads, archives);
//! - `apply`: one operation applied to the state;
//! - `solver`: the walk over the graph: step keys, cache lookups, concurrent stages;
//! - `publish`: build, export, publish, and reading files out of a built container;
//! - `plan`: the graph as data, for `blumeops plan` (nothing runs).

mod apply;
mod cache;
#[cfg(test)]
mod cache_tests;
mod engine;
#[cfg(test)]
mod eval_tests;
mod exec;
mod plan;
mod platforms;
mod publish;
mod solver;
mod state;
mod steps;

use std::path::PathBuf;
use std::sync::Arc;

pub use cache::{CacheOptions, CacheStatus};
pub use engine::{BuiltImage, Engine, EngineOptions, Event, ProgressFn, Published, default_jobs};
pub use exec::{
    CacheVolume, CopyOptions, ExecOptions, Expect, MountOptions, Network, SecretFileOptions,
    SecretVariable,
};
pub use plan::{Plan, PlanBase, PlanStage, PlanStep};
pub use platforms::{BuiltIndex, MultiPlatform};

use crate::layer::{HostCopy, Owner};
use crate::reference::Platform;

/// One operation in a container's chain.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// A base image, for the engine's platform or the one given.
    From(String, Option<Platform>),
    Scratch(Option<Platform>),
    /// `scratch` with the default `PATH`, as Dockerfile builders give `FROM scratch`.
    ScratchDefaultPath(Option<Platform>),
    NewFile {
        path: String,
        contents: Arc<[u8]>,
        mode: u32,
        owner: Owner,
    },
    HostFile {
        path: String,
        src: PathBuf,
        opts: HostCopy,
    },
    HostDirectory {
        path: String,
        src: PathBuf,
        opts: HostCopy,
    },
    Env(String, String),
    Workdir(String),
    User(String),
    Label(String, String),
    Annotation(String, String),
    ExposedPort(u16, String),
    Entrypoint(Vec<String>),
    DefaultArgs(Vec<String>),
    Exec {
        args: Vec<String>,
        opts: ExecOptions,
    },
    MountCache {
        path: String,
        volume: CacheVolume,
    },
    SecretVariable(SecretVariable),
    UnsetSecretVariable(String),
    MountSecret {
        path: String,
        secret: crate::secret::Secret,
        opts: SecretFileOptions,
    },
    MountHostDirectory {
        path: String,
        src: PathBuf,
        opts: MountOptions,
    },
    MountDirectoryFrom {
        path: String,
        source: Container,
        src_path: String,
        opts: MountOptions,
    },
    MountTemp {
        path: String,
        size: Option<u64>,
    },
    CopyFrom {
        path: String,
        source: Container,
        src_path: String,
        opts: CopyOptions,
        directory: bool,
    },
    Remove {
        path: String,
        directory: bool,
    },
    Volume(String),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
    Author(String),
    OnBuild(String),
    EnvExpand(String, String),
    /// Several variables set at once, every value expanded against the environment from
    /// before any of them (a Dockerfile's `ENV A=... B=...`).
    EnvExpandAll(Vec<(String, String)>),
    Unmount(String),
    CopyPathFrom {
        path: String,
        source: Container,
        src_path: String,
        opts: CopyOptions,
    },
    HttpFile {
        path: String,
        url: String,
        checksum: Option<crate::reference::Digest>,
        opts: CopyOptions,
    },
    HostArchive {
        path: String,
        src: PathBuf,
        opts: HostCopy,
    },
    GitRepository {
        path: String,
        url: String,
        reference: Option<String>,
        keep_git_dir: bool,
        opts: CopyOptions,
    },
}

impl Op {
    /// What the image's history says about this step: [`Op::describe`] with host paths cut
    /// to their last component, so where the checkout lives never enters the image.
    pub(crate) fn history(&self) -> String {
        let name = |src: &std::path::Path| {
            src.file_name()
                .map_or_else(|| ".".to_owned(), |n| n.to_string_lossy().into_owned())
        };
        match self {
            Self::HostFile { path, src, .. } => format!("with_file {path} from {}", name(src)),
            Self::HostDirectory { path, src, .. } => {
                format!("with_directory {path} from {}", name(src))
            }
            Self::HostArchive { path, src, .. } => {
                format!("with_host_archive {path} from {}", name(src))
            }
            Self::MountHostDirectory { path, src, opts } => {
                format!(
                    "with_mounted_directory {path} from {}{}",
                    name(src),
                    rw(opts)
                )
            }
            _ => self.describe(),
        }
    }

    /// What progress output says about this step.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::From(r, None) => format!("from {r}"),
            Self::From(r, Some(p)) => format!("from {r} (platform {p})"),
            Self::Scratch(None) | Self::ScratchDefaultPath(None) => "from scratch".to_owned(),
            Self::Scratch(Some(p)) | Self::ScratchDefaultPath(Some(p)) => {
                format!("from scratch (platform {p})")
            }
            Self::NewFile {
                path,
                mode,
                owner,
                contents,
            } => {
                format!(
                    "with_new_file {path} ({} bytes, mode {mode:04o}, owner {owner})",
                    contents.len()
                )
            }
            Self::HostFile { path, src, .. } => format!("with_file {path} from {}", src.display()),
            Self::HostDirectory { path, src, .. } => {
                format!("with_directory {path} from {}", src.display())
            }
            Self::Env(k, v) => format!("with_env_variable {k}={v}"),
            Self::Workdir(p) => format!("with_workdir {p}"),
            Self::User(u) => format!("with_user {u}"),
            Self::Label(k, v) => format!("with_label {k}={v}"),
            Self::Annotation(k, v) => format!("with_annotation {k}={v}"),
            Self::ExposedPort(p, proto) => format!("with_exposed_port {p}/{proto}"),
            Self::Entrypoint(a) => format!("with_entrypoint {a:?}"),
            Self::DefaultArgs(a) => format!("with_default_args {a:?}"),
            Self::Exec { args, .. } => format!("with_exec {}", shell_words(args)),
            Self::MountCache { path, volume } => {
                format!("with_mounted_cache {path} (volume {})", volume.name())
            }
            // Only the name: the value never reaches progress output or history.
            Self::SecretVariable(v) => format!("with_secret_variable {}", v.name),
            Self::UnsetSecretVariable(n) => format!("without_secret_variable {n}"),
            Self::MountSecret { path, opts, .. } if opts.name.is_empty() => {
                format!("with_mounted_secret {path}")
            }
            Self::MountSecret { path, opts, .. } => {
                format!("with_mounted_secret {path} (secret {})", opts.name)
            }
            Self::MountHostDirectory { path, src, opts } => {
                format!(
                    "with_mounted_directory {path} from {}{}",
                    src.display(),
                    rw(opts)
                )
            }
            Self::MountDirectoryFrom {
                path,
                src_path,
                opts,
                ..
            } => format!(
                "with_mounted_directory {path} from another container's {src_path}{}",
                rw(opts)
            ),
            Self::MountTemp { path, .. } => format!("with_mounted_temp {path}"),
            Self::CopyFrom {
                path,
                src_path,
                directory,
                ..
            } => format!(
                "{} {path} from another container's {src_path}",
                if *directory {
                    "with_directory"
                } else {
                    "with_file"
                }
            ),
            Self::Remove { path, directory } => format!(
                "{} {path}",
                if *directory {
                    "without_directory"
                } else {
                    "without_file"
                }
            ),
            Self::Volume(p) => format!("with_volume {p}"),
            Self::StopSignal(s) => format!("with_stop_signal {s}"),
            Self::Healthcheck(h) => format!("with_healthcheck {}", shell_words(&h.test)),
            Self::Shell(a) => format!("with_shell {a:?}"),
            Self::Author(a) => format!("with_author {a}"),
            Self::OnBuild(t) => format!("with_onbuild {t}"),
            Self::EnvExpand(k, v) => format!("with_env_variable {k}={v} (expanded)"),
            Self::EnvExpandAll(pairs) => {
                let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("with_env_variables {} (expanded)", pairs.join(" "))
            }
            Self::Unmount(p) => format!("without_mount {p}"),
            Self::CopyPathFrom { path, src_path, .. } => {
                format!("with_path {path} from another container's {src_path}")
            }
            Self::HttpFile { path, url, .. } => format!("with_http_file {path} from {url}"),
            Self::GitRepository {
                path,
                url,
                reference,
                ..
            } => match reference {
                Some(r) => format!("with_git_repository {path} from {url}#{r}"),
                None => format!("with_git_repository {path} from {url}"),
            },
            Self::HostArchive { path, src, .. } => {
                format!("with_host_archive {path} from {}", src.display())
            }
        }
    }
}

/// How a mount's writability shows in descriptions.
fn rw(opts: &MountOptions) -> &'static str {
    if opts.writable {
        " (writable, writes discarded)"
    } else {
        ""
    }
}

#[derive(Debug)]
struct Node {
    parent: Option<Arc<Node>>,
    op: Op,
}

/// A container image being defined. Cheap to clone; every `with_*` returns a new value and
/// leaves the original untouched, so one value can be the base of several others.
///
/// ```
/// use blumeops_core::Container;
///
/// let hello = Container::from("docker.io/library/busybox:1.37")
///     .with_new_file("/usr/local/bin/hello", "#!/bin/sh\necho hello\n", 0o755)
///     .with_label("org.opencontainers.image.title", "hello")
///     .with_default_args(["/usr/local/bin/hello"]);
/// assert_eq!(hello.steps().len(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct Container {
    node: Arc<Node>,
    /// Registry credentials of this container ([`Container::with_registry_auth`]): kept
    /// beside the chain, not in it, so they are no step, no key and no history entry.
    auth: Arc<Vec<RegistryAuth>>,
}

/// Credentials a container uses for one registry.
#[derive(Clone, Debug)]
pub(crate) struct RegistryAuth {
    pub(crate) address: String,
    pub(crate) credential: crate::registry::Credential,
}

impl Container {
    fn root(op: Op) -> Self {
        Self {
            node: Arc::new(Node { parent: None, op }),
            auth: Arc::default(),
        }
    }

    fn push(&self, op: Op) -> Self {
        Self {
            node: Arc::new(Node {
                parent: Some(self.node.clone()),
                op,
            }),
            auth: self.auth.clone(),
        }
    }

    /// Authenticate to the registry `address` (`host[:port]` as written in references)
    /// as `username` with `secret`, for this container's pulls and its publish. These
    /// credentials win over the engine's ([`crate::ClientOptions::credentials`]) for that
    /// registry; other registries keep the engine's. The secret is never shown, and is no
    /// step: it is in no key, no history and no progress output.
    #[must_use]
    pub fn with_registry_auth(
        &self,
        address: impl Into<String>,
        username: impl Into<String>,
        secret: crate::secret::Secret,
    ) -> Self {
        let address = address.into();
        let mut auth: Vec<RegistryAuth> = (*self.auth).clone();
        auth.retain(|a| a.address != address);
        auth.push(RegistryAuth {
            address,
            credential: crate::registry::Credential {
                username: username.into(),
                password: secret,
            },
        });
        Self {
            node: self.node.clone(),
            auth: Arc::new(auth),
        }
    }

    /// The registry credentials of this container and of the containers it copies or
    /// mounts from (its own win).
    pub(crate) fn registry_auth(&self) -> Vec<RegistryAuth> {
        let mut out: Vec<RegistryAuth> = Vec::new();
        let add = |a: &RegistryAuth, out: &mut Vec<RegistryAuth>| {
            if !out.iter().any(|o| o.address == a.address) {
                out.push(a.clone());
            }
        };
        for a in self.auth.iter() {
            add(a, &mut out);
        }
        for op in self.ops() {
            if let Some(source) = op_source(op) {
                for a in source.registry_auth() {
                    add(&a, &mut out);
                }
            }
        }
        out
    }

    /// Start from an image in a registry, e.g. `docker.io/library/busybox:1.37` or
    /// `busybox` (Docker's defaults apply). The reference is checked when the container is
    /// evaluated.
    pub fn from(reference: impl Into<String>) -> Self {
        Self::root(Op::From(reference.into(), None))
    }

    /// [`Container::from`] for `platform` rather than the engine's (Dagger's
    /// `container(platform:)`): a multi-platform base gives that platform's image, and the
    /// container's commands run as that architecture (emulated through binfmt_misc when it
    /// is not the host's).
    pub fn from_platform(reference: impl Into<String>, platform: Platform) -> Self {
        Self::root(Op::From(reference.into(), Some(platform)))
    }

    /// Start from an empty image.
    pub fn scratch() -> Self {
        Self::root(Op::Scratch(None))
    }

    /// [`Container::scratch`] for `platform` rather than the engine's.
    pub fn scratch_platform(platform: Platform) -> Self {
        Self::root(Op::Scratch(Some(platform)))
    }

    /// An empty image whose config has the default `PATH` (Dockerfile `FROM scratch`).
    pub(crate) fn scratch_with_default_path(platform: Option<Platform>) -> Self {
        Self::root(Op::ScratchDefaultPath(platform))
    }

    /// Write a file with `contents` and permission bits `mode` (owned by root).
    #[must_use]
    pub fn with_new_file(
        &self,
        path: impl Into<String>,
        contents: impl AsRef<[u8]>,
        mode: u32,
    ) -> Self {
        self.with_new_file_owned(path, contents, mode, Owner::ROOT)
    }

    /// Write a file with `contents`, `mode` and `owner`.
    #[must_use]
    pub fn with_new_file_owned(
        &self,
        path: impl Into<String>,
        contents: impl AsRef<[u8]>,
        mode: u32,
        owner: Owner,
    ) -> Self {
        self.push(Op::NewFile {
            path: path.into(),
            contents: Arc::from(contents.as_ref()),
            mode,
            owner,
        })
    }

    /// Copy the host file `src` to `path` (owner and mode from `opts`).
    #[must_use]
    pub fn with_file(
        &self,
        path: impl Into<String>,
        src: impl Into<PathBuf>,
        opts: HostCopy,
    ) -> Self {
        self.push(Op::HostFile {
            path: path.into(),
            src: src.into(),
            opts,
        })
    }

    /// Copy the contents of the host directory `src` to `path` (owner, mode,
    /// include/exclude from `opts`).
    #[must_use]
    pub fn with_directory(
        &self,
        path: impl Into<String>,
        src: impl Into<PathBuf>,
        opts: HostCopy,
    ) -> Self {
        self.push(Op::HostDirectory {
            path: path.into(),
            src: src.into(),
            opts,
        })
    }

    /// Set an environment variable in the image config.
    #[must_use]
    pub fn with_env_variable(&self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(Op::Env(name.into(), value.into()))
    }

    /// Set the working directory (relative paths are joined to the current one).
    #[must_use]
    pub fn with_workdir(&self, path: impl Into<String>) -> Self {
        self.push(Op::Workdir(path.into()))
    }

    /// Set the user (`name`, `uid`, `uid:gid`).
    #[must_use]
    pub fn with_user(&self, user: impl Into<String>) -> Self {
        self.push(Op::User(user.into()))
    }

    /// Set a config label.
    #[must_use]
    pub fn with_label(&self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(Op::Label(name.into(), value.into()))
    }

    /// Set a manifest annotation.
    #[must_use]
    pub fn with_annotation(&self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(Op::Annotation(name.into(), value.into()))
    }

    /// Expose a TCP port.
    #[must_use]
    pub fn with_exposed_port(&self, port: u16) -> Self {
        self.with_exposed_port_protocol(port, "tcp")
    }

    /// Expose a port with a protocol (`tcp`, `udp`, `sctp`).
    #[must_use]
    pub fn with_exposed_port_protocol(&self, port: u16, protocol: impl Into<String>) -> Self {
        self.push(Op::ExposedPort(port, protocol.into()))
    }

    /// Set the entrypoint.
    #[must_use]
    pub fn with_entrypoint<I, S>(&self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.push(Op::Entrypoint(args.into_iter().map(Into::into).collect()))
    }

    /// Set the default arguments (`Cmd`).
    #[must_use]
    pub fn with_default_args<I, S>(&self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.push(Op::DefaultArgs(args.into_iter().map(Into::into).collect()))
    }

    /// Run a command in the container; the files it changes become a new layer.
    #[must_use]
    pub fn with_exec<I, S>(&self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.with_exec_opts(args, ExecOptions::default())
    }

    /// Run a command with options (expected exit codes, stdin, extra env, network).
    #[must_use]
    pub fn with_exec_opts<I, S>(&self, args: I, opts: ExecOptions) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.push(Op::Exec {
            args: args.into_iter().map(Into::into).collect(),
            opts,
        })
    }

    /// Mount the cache volume at `path` for every later `with_exec`.
    #[must_use]
    pub fn with_mounted_cache(&self, path: impl Into<String>, volume: CacheVolume) -> Self {
        self.push(Op::MountCache {
            path: path.into(),
            volume,
        })
    }

    /// Expose `secret` as the environment variable `name` to every later `with_exec`.
    #[must_use]
    pub fn with_secret_variable(
        &self,
        name: impl Into<String>,
        secret: crate::secret::Secret,
    ) -> Self {
        self.push(Op::SecretVariable(SecretVariable {
            name: name.into(),
            secret,
        }))
    }

    /// Stop exposing the secret variable `name` to later `with_exec` steps.
    #[must_use]
    pub fn without_secret_variable(&self, name: impl Into<String>) -> Self {
        self.push(Op::UnsetSecretVariable(name.into()))
    }

    /// Mount `secret` as a read-only file at `path` (mode 0400, owned by root) for every
    /// later `with_exec`. The file lives outside the image: it is in no layer, and its value
    /// in no key, log or progress output.
    #[must_use]
    pub fn with_mounted_secret(
        &self,
        path: impl Into<String>,
        secret: crate::secret::Secret,
    ) -> Self {
        self.with_mounted_secret_opts(path, secret, SecretFileOptions::default())
    }

    /// Mount `secret` as a file at `path` with a name (for keys), mode and owner.
    #[must_use]
    pub fn with_mounted_secret_opts(
        &self,
        path: impl Into<String>,
        secret: crate::secret::Secret,
        opts: SecretFileOptions,
    ) -> Self {
        self.push(Op::MountSecret {
            path: path.into(),
            secret,
            opts,
        })
    }

    /// Mount the host directory `src` at `path` for every later `with_exec` (read-only
    /// unless `opts` says writable; writes are then thrown away). Its content is an input of
    /// the steps that follow: a change runs them again. Nothing of it enters a layer.
    #[must_use]
    pub fn with_mounted_directory(
        &self,
        path: impl Into<String>,
        src: impl Into<PathBuf>,
        opts: MountOptions,
    ) -> Self {
        self.push(Op::MountHostDirectory {
            path: path.into(),
            src: src.into(),
            opts,
        })
    }

    /// Mount the directory `src_path` of `source` (another container) at `path` for every
    /// later `with_exec`, as [`Container::with_mounted_directory`] does.
    #[must_use]
    pub fn with_mounted_directory_from(
        &self,
        path: impl Into<String>,
        source: &Container,
        src_path: impl Into<String>,
        opts: MountOptions,
    ) -> Self {
        self.push(Op::MountDirectoryFrom {
            path: path.into(),
            source: source.clone(),
            src_path: src_path.into(),
            opts,
        })
    }

    /// Mount an empty temporary file system (tmpfs) at `path` for every later `with_exec`;
    /// each step gets a fresh one, and nothing written there enters a layer.
    #[must_use]
    pub fn with_mounted_temp(&self, path: impl Into<String>) -> Self {
        self.push(Op::MountTemp {
            path: path.into(),
            size: None,
        })
    }

    /// [`Container::with_mounted_temp`] limited to `size` bytes.
    #[must_use]
    pub fn with_mounted_temp_size(&self, path: impl Into<String>, size: u64) -> Self {
        self.push(Op::MountTemp {
            path: path.into(),
            size: Some(size),
        })
    }

    /// Copy the file `src_path` of `source` (another container) to `path`.
    #[must_use]
    pub fn with_file_from(
        &self,
        path: impl Into<String>,
        source: &Container,
        src_path: impl Into<String>,
        opts: CopyOptions,
    ) -> Self {
        self.push(Op::CopyFrom {
            path: path.into(),
            source: source.clone(),
            src_path: src_path.into(),
            opts,
            directory: false,
        })
    }

    /// Copy the directory `src_path` of `source` (another container) to `path`.
    #[must_use]
    pub fn with_directory_from(
        &self,
        path: impl Into<String>,
        source: &Container,
        src_path: impl Into<String>,
        opts: CopyOptions,
    ) -> Self {
        self.push(Op::CopyFrom {
            path: path.into(),
            source: source.clone(),
            src_path: src_path.into(),
            opts,
            directory: true,
        })
    }

    /// Remove a file.
    #[must_use]
    pub fn without_file(&self, path: impl Into<String>) -> Self {
        self.push(Op::Remove {
            path: path.into(),
            directory: false,
        })
    }

    /// Remove a directory and everything in it.
    #[must_use]
    pub fn without_directory(&self, path: impl Into<String>) -> Self {
        self.push(Op::Remove {
            path: path.into(),
            directory: true,
        })
    }

    /// Declare a volume (`Volumes` in the image config).
    #[must_use]
    pub fn with_volume(&self, path: impl Into<String>) -> Self {
        self.push(Op::Volume(path.into()))
    }

    /// Set the signal that stops the container, e.g. `SIGTERM` or `15`.
    #[must_use]
    pub fn with_stop_signal(&self, signal: impl Into<String>) -> Self {
        self.push(Op::StopSignal(signal.into()))
    }

    /// Set the health check (Docker's `Healthcheck` config field).
    #[must_use]
    pub fn with_healthcheck(&self, healthcheck: Healthcheck) -> Self {
        self.push(Op::Healthcheck(healthcheck))
    }

    /// Set the shell for shell-form commands (Docker's `Shell` config field).
    #[must_use]
    pub fn with_shell<I, S>(&self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.push(Op::Shell(args.into_iter().map(Into::into).collect()))
    }

    /// Set the image author (the config's `author`).
    #[must_use]
    pub fn with_author(&self, author: impl Into<String>) -> Self {
        self.push(Op::Author(author.into()))
    }

    /// Add a Dockerfile instruction to run when this image is the base of a Docker build
    /// (Docker's `OnBuild` config field). blumeops records it and does not run it.
    #[must_use]
    pub fn with_onbuild(&self, instruction: impl Into<String>) -> Self {
        self.push(Op::OnBuild(instruction.into()))
    }

    /// Set an environment variable whose value refers to the image's environment as it is
    /// when the step is evaluated, with a Dockerfile's substitution rules: `$NAME`,
    /// `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:+alt}`, `${NAME+alt}`,
    /// `${NAME#pattern}`, `${NAME##pattern}`, `${NAME%pattern}`, `${NAME%%pattern}`,
    /// `${NAME/pattern/string}` and `${NAME//pattern/string}` are replaced (unset is empty);
    /// `\` escapes the next character; quotes are ordinary characters. E.g.
    /// `with_env_variable_expand("PATH", "/app/bin:$PATH")`. A malformed value, an invalid
    /// pattern or a value past the substitution limits fails the step.
    #[must_use]
    pub fn with_env_variable_expand(
        &self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.push(Op::EnvExpand(name.into(), value.into()))
    }

    /// Set several environment variables at once, as [`Container::with_env_variable_expand`]
    /// sets one, every value expanded against the environment as it is before any of them
    /// is set (a Dockerfile's `ENV PATH=/app/bin:$PATH OLD_PATH=$PATH` gives `OLD_PATH` the
    /// image's `PATH`); a name given twice gets its last value.
    #[must_use]
    pub fn with_env_variables_expand<I, K, V>(&self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.push(Op::EnvExpandAll(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ))
    }

    /// Stop mounting whatever is mounted at `path` (a cache, a secret, a directory, a temp
    /// file system) for later `with_exec` steps.
    #[must_use]
    pub fn without_mount(&self, path: impl Into<String>) -> Self {
        self.push(Op::Unmount(path.into()))
    }

    /// Copy `src_path` of `source` (another container), whichever it is, with Docker
    /// `COPY` rules: a directory's contents go into `path`; a file becomes `path`, or goes
    /// into `path` when `path` ends with `/`.
    #[must_use]
    pub fn with_path_from(
        &self,
        path: impl Into<String>,
        source: &Container,
        src_path: impl Into<String>,
        opts: CopyOptions,
    ) -> Self {
        self.push(Op::CopyPathFrom {
            path: path.into(),
            source: source.clone(),
            src_path: src_path.into(),
            opts,
        })
    }

    /// Download `url` to the file `path` (mode from `opts`, default 0600 as Docker's `ADD`
    /// does), checking its digest when `checksum` is given.
    #[must_use]
    pub fn with_http_file(
        &self,
        path: impl Into<String>,
        url: impl Into<String>,
        checksum: Option<crate::reference::Digest>,
        opts: CopyOptions,
    ) -> Self {
        self.push(Op::HttpFile {
            path: path.into(),
            url: url.into(),
            checksum,
            opts,
        })
    }

    /// Check out `reference` (a branch, tag or commit; default: the remote's HEAD) of the git
    /// repository at `url` into the directory `path`, as Docker's `ADD https://...git#ref`
    /// does: with the `git` binary, files 0644 (0755 when executable), directories 0755,
    /// owned by `opts.owner` (default root), without `.git` unless `keep_git_dir`. Only a
    /// full commit id is cached: any other reference is fetched again on every build.
    #[must_use]
    pub fn with_git_repository(
        &self,
        path: impl Into<String>,
        url: impl Into<String>,
        reference: Option<String>,
        keep_git_dir: bool,
        opts: CopyOptions,
    ) -> Self {
        self.push(Op::GitRepository {
            path: path.into(),
            url: url.into(),
            reference,
            keep_git_dir,
            opts,
        })
    }

    /// Extract the host tar archive `src` (plain, gzip, bzip2, xz or zstd) into the
    /// directory `path`, as Docker's `ADD` does with local archives.
    #[must_use]
    pub fn with_host_archive(
        &self,
        path: impl Into<String>,
        src: impl Into<PathBuf>,
        opts: HostCopy,
    ) -> Self {
        self.push(Op::HostArchive {
            path: path.into(),
            src: src.into(),
            opts,
        })
    }

    /// The steps, in order, as they are described in progress output.
    pub fn steps(&self) -> Vec<String> {
        self.ops().iter().map(|op| op.describe()).collect()
    }

    /// The host files and directories this container's steps copy, with each copy's
    /// filters (`.dockerignore` included), other containers it copies from included: what a
    /// build elsewhere (the docker executor) must be sent.
    pub fn host_inputs(&self) -> Vec<(PathBuf, HostCopy)> {
        let mut out = Vec::new();
        for op in self.ops() {
            match op {
                Op::HostFile { src, opts, .. }
                | Op::HostDirectory { src, opts, .. }
                | Op::HostArchive { src, opts, .. } => out.push((src.clone(), opts.clone())),
                Op::MountHostDirectory { src, .. } => out.push((src.clone(), HostCopy::default())),
                _ => {
                    if let Some(source) = op_source(op) {
                        out.extend(source.host_inputs());
                    }
                }
            }
        }
        out
    }

    /// Operations from the root to this container.
    pub(crate) fn ops(&self) -> Vec<&Op> {
        let mut ops = Vec::new();
        let mut node = Some(&self.node);
        while let Some(n) = node {
            ops.push(&n.op);
            node = n.parent.as_ref();
        }
        ops.reverse();
        ops
    }
}

/// The other container an operation reads from (a copy or a mounted directory).
pub(crate) fn op_source(op: &Op) -> Option<&Container> {
    match op {
        Op::CopyFrom { source, .. }
        | Op::CopyPathFrom { source, .. }
        | Op::MountDirectoryFrom { source, .. } => Some(source),
        _ => None,
    }
}

/// A container health check, as Docker's `Healthcheck` config field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", arg...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// Time between checks.
    pub interval: Option<std::time::Duration>,
    /// Time after which one check counts as failed.
    pub timeout: Option<std::time::Duration>,
    /// Start-up time during which failures do not count.
    pub start_period: Option<std::time::Duration>,
    /// Time between checks during the start period.
    pub start_interval: Option<std::time::Duration>,
    /// Consecutive failures before the container is unhealthy.
    pub retries: Option<u32>,
}

impl Healthcheck {
    /// Disable a health check inherited from the base image.
    pub fn none() -> Self {
        Self {
            test: vec!["NONE".to_owned()],
            ..Self::default()
        }
    }

    /// Run `args` directly.
    pub fn cmd<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut test = vec!["CMD".to_owned()];
        test.extend(args.into_iter().map(Into::into));
        Self {
            test,
            ..Self::default()
        }
    }

    /// Run `command` with the container's shell.
    pub fn shell(command: impl Into<String>) -> Self {
        Self {
            test: vec!["CMD-SHELL".to_owned(), command.into()],
            ..Self::default()
        }
    }

    /// Docker's JSON form: durations in nanoseconds, unset fields left out.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("Test".to_owned(), serde_json::json!(self.test));
        for (key, d) in [
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
        ] {
            if let Some(d) = d.filter(|d| !d.is_zero()) {
                let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                m.insert(key.to_owned(), serde_json::json!(nanos));
            }
        }
        if let Some(r) = self.retries.filter(|r| *r > 0) {
            m.insert("Retries".to_owned(), serde_json::json!(r));
        }
        serde_json::Value::Object(m)
    }
}

/// Whether a git reference is a full commit id (SHA-1 or SHA-256): the only one that names
/// the same tree forever.
pub(crate) fn is_commit_id(reference: &str) -> bool {
    matches!(reference.len(), 40 | 64) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Arguments joined for display, quoting those with spaces or shell characters.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A step's operation digest, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn operation_for_tests(op: &Op) -> crate::reference::Digest {
    cache::operation(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaining_is_immutable() {
        let base = Container::from("busybox");
        let a = base.with_env_variable("A", "1");
        let b = base.with_env_variable("B", "2");
        assert_eq!(base.steps(), ["from busybox"]);
        assert_eq!(a.steps(), ["from busybox", "with_env_variable A=1"]);
        assert_eq!(b.steps(), ["from busybox", "with_env_variable B=2"]);
    }

    #[test]
    fn exec_and_secret_descriptions() {
        let c = Container::from("busybox")
            .with_secret_variable("TOKEN", crate::secret::Secret::new("s3cr3t"))
            .with_exec(["sh", "-c", "echo $TOKEN > /dev/null"]);
        let steps = c.steps();
        assert_eq!(steps[1], "with_secret_variable TOKEN");
        assert_eq!(steps[2], "with_exec sh -c 'echo $TOKEN > /dev/null'");
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
