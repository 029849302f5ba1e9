//! Probes: can this process run the root or the rootless executor? Each probe tries the real
//! thing in a short-lived child process (create the namespaces, mount an overlay) rather than
//! guessing from sysctls, and turns what failed into a [`Problem`] with its fix.

use super::{ExecutorKind, Prepared, user_name};

// Root and rootless run steps in Linux namespaces; elsewhere they are unusable, so `auto`
// and `doctor` find only docker.
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::overlay_mountable;
#[cfg(target_os = "linux")]
pub use linux::{root, rootless};
#[cfg(not(target_os = "linux"))]
pub use unsupported::{root, rootless};

/// Something that keeps an executor from working (or limits it), and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// What is wrong.
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl Problem {
    /// A problem and its fix.
    pub fn new(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            fix: fix.into(),
        }
    }
}

/// One executor's status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Candidate {
    /// `root` or `rootless`.
    pub name: &'static str,
    /// Why it cannot run steps (empty: it can).
    pub problems: Vec<Problem>,
    /// What limits it without stopping it.
    pub warnings: Vec<Problem>,
    /// What was found: `(what, value)`.
    pub details: Vec<(String, String)>,
}

impl Candidate {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            problems: Vec::new(),
            warnings: Vec::new(),
            details: Vec::new(),
        }
    }

    /// A candidate that cannot be used for one reason.
    pub fn unusable(name: &'static str, problem: Problem) -> Self {
        let mut c = Self::new(name);
        c.problems.push(problem);
        c
    }

    /// Whether it can run steps.
    pub fn usable(&self) -> bool {
        self.problems.is_empty()
    }

    fn detail(&mut self, what: &str, value: impl Into<String>) {
        self.details.push((what.to_owned(), value.into()));
    }
}

/// What `blumeops doctor` prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DoctorReport {
    /// The executor `auto` picks, if any.
    pub auto: Option<ExecutorKind>,
    /// Why `auto` finds none.
    pub auto_error: Option<String>,
    /// Kernel release.
    pub kernel: String,
    /// The user blumeops runs as (host uid).
    pub uid: u32,
    /// Its name.
    pub user: String,
    /// Whether this process already runs in a user namespace.
    pub in_user_namespace: bool,
    /// Every executor's status, in the order `auto` tries them.
    pub candidates: Vec<Candidate>,
}

/// Probe every executor.
pub fn doctor() -> DoctorReport {
    // Each probe once: `auto`'s choice comes from the same candidates the report shows.
    let (root, rootless, docker) = (root(), rootless(), docker());
    let auto = super::auto_from(root.clone(), || rootless.clone(), || docker.clone());
    let mapping = super::current_mapping();
    let uid = mapping
        .host_uid()
        .unwrap_or_else(|| nix::unistd::getuid().as_raw());
    DoctorReport {
        auto: match &auto {
            Ok(Prepared::Ready(kind)) => Some(*kind),
            Ok(Prepared::Reexec(_)) => Some(ExecutorKind::Rootless),
            Ok(Prepared::Docker) => Some(ExecutorKind::Docker),
            Err(_) => None,
        },
        auto_error: auto.err().map(|e| e.to_string()),
        kernel: kernel_release(),
        uid,
        user: user_name(uid),
        in_user_namespace: !mapping.is_initial(),
        candidates: vec![root, rootless, docker],
    }
}

/// The docker executor: a Docker Engine API that answers, and a helper image this client
/// can make for it.
pub(super) fn docker() -> Candidate {
    use super::docker::{client_arch, endpoint};
    let mut c = Candidate::new("docker");
    match endpoint::find_blocking() {
        Ok(info) => {
            c.detail("endpoint", info.endpoint.clone());
            c.detail(
                "daemon",
                format!(
                    "{} (API {}, {}/{})",
                    info.version, info.api_version, info.os, info.arch
                ),
            );
            if cfg!(target_os = "linux") && info.os == "linux" && info.arch == client_arch() {
                c.detail("engine image", "made from this executable");
            } else {
                c.warnings.push(Problem::new(
                    format!(
                        "this client ({}/{}) cannot make an engine for a {}/{} daemon",
                        std::env::consts::OS,
                        client_arch(),
                        info.os,
                        info.arch
                    ),
                    "pass --engine-image REF (a blumeops-engine image of this version)",
                ));
            }
        }
        Err(e) => c.problems.push(Problem::new(
            e.to_string(),
            "set DOCKER_HOST (tcp://127.0.0.1:2375 for a Docker-in-Docker sidecar, or \
             unix:///PATH), or mount the daemon's socket at /var/run/docker.sock",
        )),
    }
    c
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The stand-in off Linux: both namespace executors unusable, saying why.
#[cfg(not(target_os = "linux"))]
mod unsupported {
    use super::{Candidate, Problem};

    fn linux_only(name: &'static str) -> Candidate {
        Candidate::unusable(
            name,
            Problem::new(
                "Linux only",
                "use the docker executor (`--executor docker`)",
            ),
        )
    }

    /// The root executor: Linux only.
    pub fn root() -> Candidate {
        linux_only("root")
    }

    /// The rootless executor: Linux only.
    pub fn rootless() -> Candidate {
        linux_only("rootless")
    }
}
