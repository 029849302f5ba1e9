//! The crate's error: one variant per module, plus build-level failures.

use crate::{
    definition, dockerfile, epoch, executor, export, image, import, layer, reference, registry,
    sandbox, secret, store,
};

/// Any blumeops failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference, digest or platform did not parse.
    #[error(transparent)]
    Reference(#[from] reference::Error),
    /// A secret could not be read.
    #[error(transparent)]
    Secret(#[from] secret::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A layer could not be written.
    #[error(transparent)]
    Layer(#[from] layer::Error),
    /// A registry request failed.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// The build timestamp could not be resolved.
    #[error(transparent)]
    Epoch(#[from] epoch::Error),
    /// An export failed.
    #[error(transparent)]
    Export(#[from] export::Error),
    /// A container definition failed.
    #[error(transparent)]
    Definition(#[from] definition::Error),
    /// A Dockerfile could not be read or translated.
    #[error(transparent)]
    Dockerfile(#[from] dockerfile::Error),
    /// A sandboxed command could not be set up or run.
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
    /// No executor can run build steps, or entering one failed.
    #[error(transparent)]
    Executor(#[from] executor::Error),
    /// Commands for a platform this machine cannot run (no emulator registered).
    #[error(transparent)]
    Emulation(#[from] executor::emulation::EmulationMissing),
    /// An image archive could not be imported.
    #[error(transparent)]
    Import(#[from] import::Error),
    /// A manifest, index or image config was refused.
    #[error(transparent)]
    Image(#[from] image::Error),
    /// A build step failed.
    #[error("step {index} failed: {step}")]
    Step {
        /// 1-based step number.
        index: usize,
        /// The step's description.
        step: String,
        /// Cause.
        #[source]
        source: Box<Error>,
    },
    /// A set of target platforms that cannot be built (none, or one twice).
    #[error("invalid platforms: {0}")]
    InvalidPlatforms(String),
    /// The build for one platform of several failed.
    #[error("the build for {platform} failed")]
    ForPlatform {
        /// The platform, e.g. `linux/arm64`.
        platform: String,
        /// Cause.
        #[source]
        source: Box<Error>,
    },
    /// Serializing a document failed.
    #[error("failed to serialize image document")]
    Serialize(#[source] serde_json::Error),
    /// A build step's command exited with an unexpected code. The message carries the
    /// command, the exit code, the tail of its output and the path of the full log.
    #[error("{}", exec_failed_message(command, *exit_code, expected, tail, stream_tails, log_path))]
    ExecFailed {
        /// The command, shell-quoted.
        command: String,
        /// Its exit code (128 + N for signal N).
        exit_code: i32,
        /// Which codes were expected.
        expected: String,
        /// The last lines of its combined output.
        tail: Vec<String>,
        /// The last lines of stdout and/or stderr, for each stream whose end is not in `tail`.
        stream_tails: Vec<(String, Vec<String>)>,
        /// The full log.
        log_path: std::path::PathBuf,
    },
    /// A file operation on the store or the host failed.
    #[error("failed to {action} `{}`", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A path asked for is not in the image.
    #[error("`{path}` does not exist in the image")]
    NotFoundInImage {
        /// The path.
        path: String,
    },
    /// An owner could not be resolved in the image.
    #[error("failed to resolve owner `{spec}`")]
    Owner {
        /// What was asked for.
        spec: String,
        /// Cause.
        #[source]
        source: crate::layer::OwnerLookupError,
    },
    /// Downloading a file for `ADD URL` failed.
    #[error("failed to download `{url}`: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// `stdout()` on a container that has no `with_exec` step.
    #[error("the container has no with_exec step, so it has no stdout")]
    NoExec,
    /// The step needs a part of the engine that this build does not have yet.
    #[error("`{step}` is not supported by this version of blumeops")]
    Unsupported {
        /// The step.
        step: String,
    },
    /// A background task panicked.
    #[error("a build task panicked")]
    TaskPanicked,
}

/// Broad classes of failure, for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad input from the user: a flag, reference, secret source, definition name.
    InvalidInput,
    /// Credentials missing or refused (401), or permission denied (403).
    Auth,
    /// The tag exists with another digest.
    TagConflict,
    /// The registry could not be reached.
    Unreachable,
    /// Data did not match its digest or size.
    Integrity,
    /// Anything else.
    Other,
}

impl Error {
    /// The class of this failure (looking through step wrappers).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Step { source, .. } | Self::ForPlatform { source, .. } => source.kind(),
            Self::Reference(_) | Self::Secret(_) | Self::Epoch(_) | Self::Definition(_) => {
                ErrorKind::InvalidInput
            }
            Self::Export(
                export::Error::InvalidTarget(_) | export::Error::ArchiveOfSeveralPlatforms { .. },
            ) => ErrorKind::InvalidInput,
            Self::Store(store::Error::ForeignOwner { .. }) => ErrorKind::InvalidInput,
            Self::Dockerfile(_) | Self::InvalidPlatforms(_) => ErrorKind::InvalidInput,
            // What this machine can run is its setup, not a registry's or the build's.
            Self::Emulation(_) => ErrorKind::InvalidInput,
            Self::Import(e) => e.kind(),
            Self::Image(_) => ErrorKind::InvalidInput,
            Self::Layer(layer::Error::InvalidPath { .. } | layer::Error::Pattern { .. }) => {
                ErrorKind::InvalidInput
            }
            // A layer that is hostile or broken: escaping paths, bombs, corrupt streams.
            Self::Layer(
                layer::Error::UnsafeEntry { .. }
                | layer::Error::LayerTooLarge { .. }
                | layer::Error::ReadLayer { .. }
                | layer::Error::UnsupportedMediaType { .. },
            ) => ErrorKind::InvalidInput,
            Self::Layer(layer::Error::UnpackEntry { source, .. })
                if crate::limits::LimitExceeded::find(source).is_some() =>
            {
                ErrorKind::InvalidInput
            }
            Self::Layer(layer::Error::DiffIdMismatch { .. }) => ErrorKind::Integrity,
            Self::Store(
                store::Error::DigestMismatch { .. } | store::Error::SizeMismatch { .. },
            ) => ErrorKind::Integrity,
            Self::Registry(e) => match e.kind() {
                registry::ErrorKind::Unauthorized | registry::ErrorKind::Denied => ErrorKind::Auth,
                registry::ErrorKind::TagConflict => ErrorKind::TagConflict,
                registry::ErrorKind::Unreachable => ErrorKind::Unreachable,
                registry::ErrorKind::Integrity => ErrorKind::Integrity,
                registry::ErrorKind::Invalid => ErrorKind::InvalidInput,
                _ => ErrorKind::Other,
            },
            _ => ErrorKind::Other,
        }
    }

    /// A hint for the user, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Step { source, .. } | Self::ForPlatform { source, .. } => source.hint(),
            Self::Registry(e) => e.hint(),
            Self::Import(e) => e.hint(),
            // No executor: every one that was tried, with why it cannot run and its fix.
            Self::Sandbox(sandbox::Error::Unsupported(_)) => {
                executor::prepare(executor::ExecutorKind::Auto)
                    .err()
                    .map(|e| e.to_string())
            }
            // Under a single id mapping, any failing step or id error may come from it.
            Self::ExecFailed { .. }
            | Self::Sandbox(_)
            | Self::Layer(layer::Error::UnmappedOwner { .. }) => {
                executor::single_mapping_advice().map(|a| a.to_string())
            }
            _ => None,
        }
    }
}

fn exec_failed_message(
    command: &str,
    exit_code: i32,
    expected: &str,
    tail: &[String],
    stream_tails: &[(String, Vec<String>)],
    log_path: &std::path::Path,
) -> String {
    use std::fmt::Write as _;
    let mut m = format!("command exited with code {exit_code} (expected {expected}): {command}");
    if tail.is_empty() {
        m.push_str("\n  (the command printed nothing)");
    } else {
        let _ = write!(m, "\n  last {} lines of output:", tail.len());
        for line in tail {
            let _ = write!(m, "\n  | {line}");
        }
    }
    for (stream, lines) in stream_tails {
        let _ = write!(m, "\n  last {} lines of {stream}:", lines.len());
        for line in lines {
            let _ = write!(m, "\n  | {line}");
        }
    }
    let _ = write!(m, "\n  full log: {}", log_path.display());
    m
}
