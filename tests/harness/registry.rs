//! A real distribution registry (`/usr/bin/docker-registry`) behind the zot-emulating proxy.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use tempfile::TempDir;
use tokio::runtime::Runtime;

use crate::util::{free_port, random_hex, tempdir};
use crate::zot_proxy::{Action, ProxyConfig, RequestLog, RequestRecord, User, ZotProxy};

/// The distribution registry binary (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The CI account: read + create, like blumeops' `zot-ci`.
pub const CI_USER: &str = "zot-ci";
/// An account with every action.
pub const ADMIN_USER: &str = "admin";
/// An account with read only.
pub const READER_USER: &str = "reader";
/// The account the proxy uses toward the distribution registry.
pub const UPSTREAM_USER: &str = "upstream";
/// How long to wait for the registry to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

const START_ATTEMPTS: usize = 5;

/// A registry for one test: `docker-registry` on a free loopback port with htpasswd auth
/// and storage in a temporary directory, and a [`ZotProxy`] in front of it. Clients (blumeops,
/// skopeo) talk to [`TestRegistry::addr`]. Both stop when this is dropped.
pub struct TestRegistry {
    child: Child,
    upstream: SocketAddr,
    proxy: ZotProxy,
    runtime: Arc<Runtime>,
    ci_password: String,
    admin_password: String,
    reader_password: String,
    upstream_password: String,
    dir: TempDir,
}

impl std::fmt::Debug for TestRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRegistry")
            .field("proxy", &self.proxy.addr())
            .field("upstream", &self.upstream)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TestRegistry {
    /// Start the registry and the proxy; panics with the registry's log if it does not come up.
    pub fn start() -> Self {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} not found: apt-get install docker-registry"
        );
        let dir = tempdir("blumeops-registry-");
        let ci_password = format!("zak_{}", random_hex(16));
        let admin_password = random_hex(16);
        let reader_password = random_hex(16);
        let upstream_password = random_hex(16);

        let htpasswd = dir.path().join("htpasswd");
        let mut lines = String::new();
        for (user, password) in [
            (CI_USER, &ci_password),
            (ADMIN_USER, &admin_password),
            (READER_USER, &reader_password),
            (UPSTREAM_USER, &upstream_password),
        ] {
            // The registry checks bcrypt on every request: the lowest cost keeps it fast.
            let hash = bcrypt::hash(password, 4).expect("failed to hash a password");
            writeln!(lines, "{user}:{hash}").expect("writing to a String");
        }
        write_file(&htpasswd, &lines);
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("failed to create the storage directory");

        let (child, upstream) = start_upstream(dir.path(), &htpasswd, &storage);

        let runtime = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("zot-proxy")
                .enable_all()
                .build()
                .expect("failed to build the proxy runtime"),
        );
        let users = HashMap::from([
            (
                CI_USER.to_owned(),
                User {
                    password: ci_password.clone(),
                    actions: HashSet::from([Action::Read, Action::Create]),
                },
            ),
            (
                ADMIN_USER.to_owned(),
                User {
                    password: admin_password.clone(),
                    actions: HashSet::from(Action::ALL),
                },
            ),
            (
                READER_USER.to_owned(),
                User {
                    password: reader_password.clone(),
                    actions: HashSet::from([Action::Read]),
                },
            ),
        ]);
        let proxy = ZotProxy::start(
            runtime.handle(),
            ProxyConfig {
                upstream,
                upstream_user: UPSTREAM_USER.to_owned(),
                upstream_password: upstream_password.clone(),
                users,
            },
        )
        .expect("failed to start the zot proxy");

        Self {
            child,
            upstream,
            proxy,
            runtime,
            ci_password,
            admin_password,
            reader_password,
            upstream_password,
            dir,
        }
    }

    /// `host:port` of the proxy: the registry address clients use.
    pub fn addr(&self) -> String {
        self.proxy.addr().to_string()
    }

    /// `http://host:port` of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.proxy.addr())
    }

    /// `host:port` of the distribution registry itself (no zot rules, htpasswd auth).
    pub fn upstream_addr(&self) -> String {
        self.upstream.to_string()
    }

    /// The `zot-ci` API key.
    pub fn ci_password(&self) -> &str {
        &self.ci_password
    }

    /// The `admin` password.
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// The `reader` password (read-only user).
    pub fn reader_password(&self) -> &str {
        &self.reader_password
    }

    /// The account the proxy uses upstream, as `(user, password)`.
    pub fn upstream_credentials(&self) -> (&str, &str) {
        (UPSTREAM_USER, &self.upstream_password)
    }

    /// Every secret of this registry, to check that none leaks into output.
    pub fn secrets(&self) -> [&str; 4] {
        [
            &self.ci_password,
            &self.admin_password,
            &self.reader_password,
            &self.upstream_password,
        ]
    }

    /// The temporary directory holding config, htpasswd, logs and storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Root of the registry's filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the distribution registry keeps a blob's bytes (`sha256:<hex>` digest).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's combined stdout/stderr so far.
    pub fn registry_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The proxy's request log.
    pub fn log(&self) -> &RequestLog {
        self.proxy.log()
    }

    /// Every request the proxy saw, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log().requests()
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &Method, path_contains: &str) -> usize {
        self.log().count(method, path_contains)
    }

    /// Every manifest `PUT`.
    pub fn manifest_puts(&self) -> Vec<RequestRecord> {
        self.log().manifest_puts()
    }

    /// Every request under `/blobs/uploads/`.
    pub fn blob_uploads(&self) -> Vec<RequestRecord> {
        self.log().blob_uploads()
    }

    /// Forget the requests so far.
    pub fn clear_log(&self) {
        self.log().clear();
    }

    /// The log as one line per request, for assertion messages.
    pub fn log_summary(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {}{}{} -> {}{}{}\n",
                    r.method,
                    r.path,
                    if r.query.is_some() { "?" } else { "" },
                    r.query.as_deref().unwrap_or(""),
                    r.status,
                    r.user
                        .as_deref()
                        .map(|u| format!(" user={u}"))
                        .unwrap_or_default(),
                    r.rejected_by
                        .map(|x| format!(" rule={x}"))
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Kill the distribution registry; the proxy stays up (and answers 502 meanwhile).
    pub fn stop_upstream(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the distribution registry again after [`TestRegistry::stop_upstream`]: same
    /// port, config, secret and storage, as a registry restarted by its service manager.
    pub fn restart_upstream(&mut self) {
        self.stop_upstream();
        let config = self.dir.path().join("config.yml");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .expect("failed to open the registry log");
        self.child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("failed to clone a file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {REGISTRY_BIN}: {e}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        while !ping(self.upstream) {
            assert!(
                Instant::now() < deadline,
                "{REGISTRY_BIN} did not come back on {}; log:\n{}",
                self.upstream,
                self.registry_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run a future on the harness runtime (for raw HTTP in tests); not from async code.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A plain-HTTP client for raw requests against [`TestRegistry::url`].
    pub fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("failed to build an HTTP client")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
}

fn start_upstream(dir: &Path, htpasswd: &Path, storage: &Path) -> (Child, SocketAddr) {
    spawn_registry(dir, |addr| {
        format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: {secret}\n\
             auth:\n  htpasswd:\n    realm: upstream\n    path: {htpasswd}\n",
            storage = storage.display(),
            secret = random_hex(16),
            htpasswd = htpasswd.display(),
        )
    })
}

/// Start `docker-registry serve` on a free loopback port with the config `config_for(addr)`
/// writes, retrying on another port when it loses the race for one, and wait until it
/// answers `GET /v2/`. Its log goes to `dir/registry.log`.
pub(crate) fn spawn_registry(
    dir: &Path,
    config_for: impl Fn(SocketAddr) -> String,
) -> (Child, SocketAddr) {
    let log_path = dir.join("registry.log");
    let mut last_log = String::new();
    for _ in 0..START_ATTEMPTS {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join("config.yml");
        write_file(&config, &config_for(addr));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("failed to create {}: {e}", log_path.display()));
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("failed to clone a file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {REGISTRY_BIN}: {e}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if last_log.contains("address already in use") {
                    break; // lost the port race: try another port
                }
                panic!("{REGISTRY_BIN} exited with {status} on {addr}; log:\n{last_log}");
            }
            if ping(addr) {
                return (child, addr);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!(
                    "{REGISTRY_BIN} did not answer GET /v2/ on {addr} within {READY_TIMEOUT:?}; log:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!(
        "{REGISTRY_BIN} could not bind a port in {START_ATTEMPTS} attempts; last log:\n{last_log}"
    );
}

/// Whether something at `addr` answers `GET /v2/` with an HTTP status line.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0_u8; 12];
    stream.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}
