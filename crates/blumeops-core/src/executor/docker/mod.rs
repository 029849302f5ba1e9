//! The `docker` executor: where this process cannot run the sandbox (an unprivileged CI
//! container, macOS), blumeops runs the whole build or publish in a helper container of a
//! Docker Engine API (Docker, Docker-in-Docker, podman's compatible socket), with itself as
//! the engine.
//!
//! - [`endpoint`]: which API to talk to (`DOCKER_HOST`, `/var/run/docker.sock`, podman's
//!   socket) and whether it answers.
//! - [`helper`]: the helper image, made from this executable and the libraries it loads
//!   (plus slirp4netns and the CA bundle), loaded through the API; nothing is pulled.
//! - [`context`]: the build context the definition uses, as a tar streamed into the helper.
//! - [`session`]: one run: create the helper, stream in the context, attach, hand over the
//!   secrets on stdin, stream the output, copy results back, remove the helper.
//! - [`serve`]: the helper's side of that conversation.

pub mod context;
pub mod endpoint;
pub mod helper;
pub mod serve;
pub mod session;

pub use endpoint::{Endpoint, ServerInfo};

/// Where the helper keeps its store (the cache volume is mounted here).
pub const ENGINE_CACHE_DIR: &str = "/var/lib/blumeops";
/// Where the build context is unpacked in the helper (`--src`).
pub const ENGINE_SRC_DIR: &str = "/blumeops/src";
/// Where the helper writes `build --output` results for the client to copy back.
pub const ENGINE_OUT_DIR: &str = "/blumeops/out";
/// The default cache volume.
pub const DEFAULT_VOLUME: &str = "blumeops-cache";
/// Label on every helper container and image, for finding leftovers.
pub const ENGINE_LABEL: &str = "org.blumeops.engine";
/// Label with the blumeops version of a helper image.
pub const VERSION_LABEL: &str = "org.blumeops.version";

/// Errors of the docker executor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No Docker Engine API was found.
    #[error("no Docker Engine API found ({tried})")]
    NoEndpoint {
        /// Where it was looked for.
        tried: String,
    },
    /// `DOCKER_HOST` names something this client cannot talk to.
    #[error("DOCKER_HOST `{value}` is not supported: {reason}")]
    UnsupportedHost {
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The API did not answer, or answered with an error.
    #[error("the Docker Engine API at {endpoint} failed to {action}: {message}")]
    Api {
        /// The endpoint.
        endpoint: String,
        /// What was being done.
        action: String,
        /// The daemon's or the transport's message.
        message: String,
    },
    /// This client cannot make a helper image the daemon can run.
    #[error(
        "this blumeops cannot provide an engine for the daemon at {endpoint} ({daemon}; this \
         client is {client}): pass --engine-image REF, a blumeops-engine image of this \
         version (`blumeops publish --container-name blumeops-engine` on a {daemon} machine \
         makes one)"
    )]
    NoHelperImage {
        /// The endpoint.
        endpoint: String,
        /// The daemon's platform.
        daemon: String,
        /// This client's.
        client: String,
    },
    /// The engine image runs another blumeops version.
    #[error("the engine image {image} is blumeops {engine}, this client is {client}")]
    VersionMismatch {
        /// The image.
        image: String,
        /// Its version.
        engine: String,
        /// This client's version.
        client: String,
    },
    /// A local file could not be read or written.
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
    /// The build context holds something that cannot be streamed.
    #[error("cannot send `{}` to the engine: {reason}", path.display())]
    Context {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The helper broke off the conversation.
    #[error("the engine container {container} stopped before the build finished{}", detail(.exit_code))]
    EngineGone {
        /// The container.
        container: String,
        /// Its exit code, when known.
        exit_code: Option<i64>,
    },
}

fn detail(code: &Option<i64>) -> String {
    code.map(|c| format!(" (exit code {c})"))
        .unwrap_or_default()
}

impl Error {
    /// An API error for `action` at `endpoint`.
    pub(crate) fn api(
        endpoint: &Endpoint,
        action: impl Into<String>,
        e: bollard::errors::Error,
    ) -> Self {
        let message = match e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => message,
            // The transport's own words say little ("client error (Connect)"); its causes
            // say what happened ("Connection refused").
            other => {
                let mut text = other.to_string();
                let mut cause = std::error::Error::source(&other);
                while let Some(c) = cause {
                    let c_text = c.to_string();
                    if !text.contains(&c_text) {
                        text = format!("{text}: {c_text}");
                    }
                    cause = c.source();
                }
                text
            }
        };
        Self::Api {
            endpoint: endpoint.to_string(),
            action: action.into(),
            message,
        }
    }
}

/// The Docker platform name of this client's architecture (`amd64`, `arm64`, ...).
pub fn client_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
