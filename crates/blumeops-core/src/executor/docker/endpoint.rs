//! Which Docker Engine API to talk to, and whether it answers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;

use super::Error;

/// Seconds a request may take before its answer starts (image loads take longest).
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// How long a probe waits for the daemon to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A Docker Engine API address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// `tcp://HOST:PORT` (plain HTTP, as Docker-in-Docker sidecars serve it on loopback).
    Tcp(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

impl Endpoint {
    /// Parse a `DOCKER_HOST` value.
    pub fn parse(value: &str) -> Result<Self, Error> {
        let unsupported = |reason| Error::UnsupportedHost {
            value: value.to_owned(),
            reason,
        };
        if let Some(path) = value.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(unsupported("no socket path after unix://"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = value.strip_prefix("tcp://") {
            let addr = addr.trim_end_matches('/');
            if addr.is_empty() {
                return Err(unsupported("no address after tcp://"));
            }
            if std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty()) {
                return Err(unsupported(
                    "DOCKER_TLS_VERIFY is set, and blumeops talks plain HTTP to tcp:// daemons",
                ));
            }
            return Ok(Self::Tcp(addr.to_owned()));
        }
        if value.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(value)));
        }
        Err(unsupported("expected unix://PATH or tcp://HOST:PORT"))
    }

    /// A client for this endpoint (nothing is sent yet).
    pub fn connect(&self) -> Result<Docker, Error> {
        let result = match self {
            Self::Unix(path) => Docker::connect_with_unix(
                &path.to_string_lossy(),
                REQUEST_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            ),
            Self::Tcp(addr) => {
                Docker::connect_with_http(addr, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
        };
        result.map_err(|e| Error::api(self, "connect", e))
    }
}

/// Where the API is looked for, in order: `DOCKER_HOST` when set (only it), else the
/// sockets that exist of `/var/run/docker.sock`, podman's
/// `$XDG_RUNTIME_DIR/podman/podman.sock`, and on macOS Docker Desktop's and colima's.
pub fn candidates() -> Result<Vec<Endpoint>, Error> {
    if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        return Ok(vec![Endpoint::parse(&host)?]);
    }
    let mut sockets = vec![PathBuf::from("/var/run/docker.sock")];
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        sockets.push(Path::new(&runtime).join("podman/podman.sock"));
    }
    if cfg!(target_os = "macos")
        && let Some(home) = dirs::home_dir()
    {
        sockets.push(home.join(".docker/run/docker.sock"));
        sockets.push(home.join(".colima/default/docker.sock"));
    }
    Ok(sockets
        .into_iter()
        .filter(|s| s.exists())
        .map(Endpoint::Unix)
        .collect())
}

/// What a daemon says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerInfo {
    /// The endpoint.
    pub endpoint: String,
    /// Its version, e.g. `26.1.5+dfsg1`.
    pub version: String,
    /// Its API version.
    pub api_version: String,
    /// `linux`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub arch: String,
}

/// Ask `endpoint` for its version.
pub async fn query(endpoint: &Endpoint) -> Result<(Docker, ServerInfo), Error> {
    let timeout = || Error::Api {
        endpoint: endpoint.to_string(),
        action: "answer".to_owned(),
        message: format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
    };
    // Speak the daemon's API version when it is older than the client's (Debian's dockerd).
    let docker = tokio::time::timeout(PROBE_TIMEOUT, endpoint.connect()?.negotiate_version())
        .await
        .map_err(|_| timeout())?
        .map_err(|e| Error::api(endpoint, "answer", e))?;
    let version = tokio::time::timeout(PROBE_TIMEOUT, docker.version())
        .await
        .map_err(|_| timeout())?
        .map_err(|e| Error::api(endpoint, "answer", e))?;
    let info = ServerInfo {
        endpoint: endpoint.to_string(),
        version: version.version.unwrap_or_default(),
        api_version: version.api_version.unwrap_or_default(),
        os: version.os.unwrap_or_default(),
        arch: version.arch.unwrap_or_default(),
    };
    Ok((docker, info))
}

/// The first candidate that answers.
pub async fn find() -> Result<(Endpoint, Docker, ServerInfo), Error> {
    let candidates = candidates()?;
    if candidates.is_empty() {
        return Err(Error::NoEndpoint {
            tried: "DOCKER_HOST is unset, /var/run/docker.sock and \
                    $XDG_RUNTIME_DIR/podman/podman.sock do not exist"
                .to_owned(),
        });
    }
    let mut last = None;
    for endpoint in candidates {
        match query(&endpoint).await {
            Ok((docker, info)) => return Ok((endpoint, docker, info)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one candidate"))
}

/// [`find`] from synchronous code (the executor probes, `doctor`): on a thread of its own
/// with its own runtime, so it works inside and outside an async runtime.
pub fn find_blocking() -> Result<ServerInfo, Error> {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                action: "start a runtime for",
                path: PathBuf::from("the Docker API probe"),
                source: e,
            })?;
        runtime.block_on(async { find().await.map(|(_, _, info)| info) })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(Error::NoEndpoint {
            tried: "the probe panicked".to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_host_forms() {
        assert_eq!(
            Endpoint::parse("unix:///run/docker.sock").unwrap(),
            Endpoint::Unix("/run/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:2375/").unwrap(),
            Endpoint::Tcp("127.0.0.1:2375".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:2375").unwrap().to_string(),
            "tcp://127.0.0.1:2375"
        );
        for bad in [
            "ssh://me@host",
            "npipe:////./pipe/docker",
            "unix://",
            "host:2375",
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
