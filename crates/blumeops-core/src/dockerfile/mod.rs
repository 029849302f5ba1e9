//! Dockerfiles: parse one and translate it into a [`Container`] graph.
//!
//! Each stage becomes a chain of `Container` steps. A stage used as a base or by
//! `COPY --from` is translated once and shared, and only the stages the target needs are
//! translated at all: the rest are parsed and checked for syntax, nothing more.
//!
//! Variables are substituted as BuildKit does (every form it has, patterns included: see
//! `expand.rs`), in every instruction except `RUN`, `CMD` and `ENTRYPOINT` (the shell does
//! that when the command runs) and `ONBUILD` (recorded as written). The base image's
//! environment is not read at translation time: an `ENV` value that refers to a variable
//! the Dockerfile does not set (`ENV PATH=/app/bin:$PATH`, `${PATH%:*}`) is finished when
//! the container is evaluated ([`Container::with_env_variable_expand`]); other
//! instructions that refer to such a variable are refused with the line.

mod expand;
mod ignore;
mod parser;
mod translate;

use std::path::{Path, PathBuf};

use crate::definition::BuildArgs;
use crate::limits;
use crate::pipeline::Container;
use crate::reference::Platform;

pub(crate) use expand::expand_template as expand_env_template;

/// Errors from reading and translating a Dockerfile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Dockerfile, `.dockerignore` or a build context path could not be read.
    #[error("failed to read `{}`", path.display())]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An instruction is malformed, unknown or not supported.
    #[error("{file}:{line}: {message}")]
    Instruction {
        /// The Dockerfile, as given.
        file: String,
        /// 1-based line of the instruction.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The Dockerfile has no `FROM`.
    #[error("{file}: no FROM instruction")]
    NoStage {
        /// The Dockerfile, as given.
        file: String,
    },
    /// `--target` names no stage.
    #[error("{file}: no stage named `{target}`; stages: {}", if stages.is_empty() { "none named".to_owned() } else { stages.join(", ") })]
    UnknownTarget {
        /// The Dockerfile, as given.
        file: String,
        /// What was asked for.
        target: String,
        /// Named stages.
        stages: Vec<String>,
    },
    /// A value finished at evaluation ([`Container::with_env_variable_expand`]) could not
    /// be: the template is malformed, the image's environment makes a pattern invalid
    /// (`${PATH#$PREFIX}` with a `\` in PREFIX), or the value grows past a limit.
    #[error("environment variable {name}: {message}")]
    EnvTemplate {
        /// The variable being set.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A `.dockerignore` pattern does not compile.
    #[error("{}:{line}: invalid pattern `{pattern}`", path.display())]
    IgnorePattern {
        /// The ignore file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The pattern.
        pattern: String,
        /// Cause.
        #[source]
        source: globset::Error,
    },
}

/// A translated Dockerfile, with what is worth telling the person building it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Loaded {
    /// The target stage.
    pub container: Container,
    /// Notes naming their line, e.g. a `# syntax=` directive that was accepted and not
    /// followed.
    pub notes: Vec<String>,
}

/// Read the Dockerfile at `dockerfile` and translate it with `context_dir` as the build
/// context. The ignore file is `<dockerfile>.dockerignore` when it exists, otherwise
/// `<context_dir>/.dockerignore`. `target` names the stage to build (default: the last);
/// stages it does not need are parsed and checked, not translated.
///
/// Variables are substituted as Docker does, except that the base image's environment is
/// not known here: an `ENV` value that uses it (`ENV PATH=/app/bin:$PATH`) is finished at
/// evaluation ([`Container::with_env_variable_expand`]), and other instructions that use
/// it are refused with their line.
pub fn load(
    dockerfile: &Path,
    context_dir: &Path,
    args: &BuildArgs,
    target: Option<&str>,
) -> Result<Loaded, Error> {
    load_for_platform(dockerfile, context_dir, args, target, &Platform::host())
}

/// [`load`] for the target `platform`: `TARGETPLATFORM`, `TARGETOS`, `TARGETARCH` and
/// `TARGETVARIANT` describe it (`BUILDPLATFORM` and the rest, the host), and stages without
/// `FROM --platform` are for it (evaluate the container with an engine for the same
/// platform).
pub fn load_for_platform(
    dockerfile: &Path,
    context_dir: &Path,
    args: &BuildArgs,
    target: Option<&str>,
    platform: &Platform,
) -> Result<Loaded, Error> {
    let text = read_bounded(dockerfile)?;
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    let specific = PathBuf::from(specific);
    let ignore_path = if specific.is_file() {
        specific
    } else {
        context_dir.join(".dockerignore")
    };
    let ignore = read_ignore(&ignore_path)?;
    let label = dockerfile.display().to_string();
    let (container, notes) =
        translate::translate(&text, &label, context_dir, &ignore, args, target, platform)?;
    Ok(Loaded { container, notes })
}

/// Translate Dockerfile `text` (named `file_label` in errors) with `context_dir` as the
/// build context and `<context_dir>/.dockerignore` applied. `target` names the stage to
/// build (default: the last).
///
/// ```
/// use blumeops_core::{BuildArgs, translate_dockerfile};
///
/// let text = "FROM busybox:1.37 AS base\nARG GREETING=hello\nRUN echo $GREETING\n\
///             FROM base\nCMD echo done\n";
/// let c = translate_dockerfile(text, "Dockerfile", std::path::Path::new("."),
///                              &BuildArgs::new(), None)?;
/// assert_eq!(c.steps(), [
///     "from busybox:1.37",
///     "with_exec /bin/sh -c 'echo $GREETING'",
///     "with_default_args [\"/bin/sh\", \"-c\", \"echo done\"]",
/// ]);
/// # Ok::<(), blumeops_core::DockerfileError>(())
/// ```
pub fn translate(
    text: &str,
    file_label: &str,
    context_dir: &Path,
    args: &BuildArgs,
    target: Option<&str>,
) -> Result<Container, Error> {
    translate_for_platform(
        text,
        file_label,
        context_dir,
        args,
        target,
        &Platform::host(),
    )
}

/// [`translate`] for the target `platform` (see [`load_for_platform`]).
pub fn translate_for_platform(
    text: &str,
    file_label: &str,
    context_dir: &Path,
    args: &BuildArgs,
    target: Option<&str>,
    platform: &Platform,
) -> Result<Container, Error> {
    let ignore = read_ignore(&context_dir.join(".dockerignore"))?;
    translate::translate(
        text,
        file_label,
        context_dir,
        &ignore,
        args,
        target,
        platform,
    )
    .map(|(c, _)| c)
}

/// Read a Dockerfile, refusing one over [`limits::MAX_DOCKERFILE_BYTES`] without reading it
/// all.
fn read_bounded(path: &Path) -> Result<String, Error> {
    use std::io::Read as _;
    let read_err = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(limits::MAX_DOCKERFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limits::MAX_DOCKERFILE_BYTES {
        return Err(read_err(
            limits::LimitExceeded::new(
                "the Dockerfile's size",
                limits::MAX_DOCKERFILE_BYTES,
                "bytes",
            )
            .into_io(),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the Dockerfile is not UTF-8 text ({e})"),
        ))
    })
}

fn read_ignore(path: &Path) -> Result<ignore::Ignore, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    ignore::Ignore::parse(&text).map_err(|e| Error::IgnorePattern {
        path: path.to_owned(),
        line: e.line,
        pattern: e.pattern,
        source: e.source,
    })
}
