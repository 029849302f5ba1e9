//! One build through the docker executor, the client's side.
//!
//! 1. Create the helper container (auto-removed when it exits) with the cache volume, the
//!    host network, and the privileges the root sandbox needs, nothing secret in its config.
//! 2. Attach, start, and send the handshake on its stdin: this client's version, the
//!    secrets (the registry password), the CA certificates, the Dockerfile and the build
//!    context's tree, as one JSON line; then the build context itself, a tar of
//!    `context_size` bytes, which the engine unpacks while the build starts.
//! 3. Pass its stdout and stderr through until it says it is done (a [`DONE_MARKER`] line
//!    with its exit code); copy `build --output` results back; tell it to exit.
//!
//! The helper exits as soon as its stdin closes without the goodbye: a client killed even
//! by SIGKILL drops the attach connection, so the helper stops and the daemon removes it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, DeviceMapping, HostConfig, Mount, MountType};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::{ENGINE_CACHE_DIR, ENGINE_LABEL, ENGINE_SRC_DIR, Endpoint, Error};

/// The line (on the helper's stdout) that ends a build: `DONE_MARKER CODE`.
pub const DONE_MARKER: &str = "\u{1}blumeops-engine-done";
/// What the client writes on the helper's stdin once it has what it needs.
pub const GOODBYE: &str = "bye";

/// The first line the client writes on the helper's stdin.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Handshake {
    /// The client's blumeops version.
    pub client_version: String,
    /// Secret source text (`env:ZOT_CI_API_KEY`) → the value the client read from it.
    pub secrets: BTreeMap<String, String>,
    /// The CA certificates the client trusts (PEM), for the engine to trust the same.
    pub ca_bundle: Option<String>,
    /// Files the command reads before the build context arrives (the Dockerfile and
    /// `.dockerignore`): path relative to the source directory → base64 of the contents.
    pub early_files: BTreeMap<String, String>,
    /// Bytes of build context (a tar) that follow the handshake on stdin; reading host files
    /// waits for them.
    pub context_size: u64,
    /// The context's tree without contents (directories, empty files, symlinks), made
    /// before the command starts: the Dockerfile frontend looks the sources of its copies
    /// up (globs, `.dockerignore`) while the contents are still on their way.
    pub skeleton: Vec<SkeletonEntry>,
}

/// One entry of the build context's tree, without contents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkeletonEntry {
    /// Path relative to the source directory.
    pub path: String,
    /// `d` (directory), `f` (file) or `l` (symlink).
    pub kind: char,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The tree of a context archive ([`super::context::archive`]).
pub fn skeleton(context: impl std::io::Read) -> Result<Vec<SkeletonEntry>, Error> {
    let io = |source| Error::Io {
        action: "read",
        path: PathBuf::from("the build context archive"),
        source,
    };
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(context);
    for entry in archive.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        let (kind, target) = if kind.is_dir() {
            ('d', None)
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(io)?
                .map(|t| t.to_string_lossy().into_owned());
            ('l', target)
        } else {
            ('f', None)
        };
        out.push(SkeletonEntry { path, kind, target });
    }
    Ok(out)
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("client_version", &self.client_version)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("ca_bundle", &self.ca_bundle.as_ref().map(String::len))
            .field("early_files", &self.early_files.keys().collect::<Vec<_>>())
            .field("context_size", &self.context_size)
            .field("skeleton", &self.skeleton.len())
            .finish()
    }
}

/// What to run in the helper.
pub struct RemoteRun<'a> {
    /// The daemon.
    pub docker: &'a Docker,
    /// Its address, for messages.
    pub endpoint: &'a Endpoint,
    /// The helper image.
    pub image: String,
    /// The container name ([`new_name`]); the caller removes it with [`remove`] on Ctrl-C.
    pub name: String,
    /// The cache volume.
    pub volume: String,
    /// The blumeops command line for the helper (without the program name).
    pub args: Vec<String>,
    /// Environment for the helper (nothing secret).
    pub env: Vec<String>,
    /// Sent on stdin.
    pub handshake: Handshake,
    /// The build context, unpacked at [`ENGINE_SRC_DIR`].
    pub context: super::context::ContextArchive,
    /// A path in the helper to copy to this client's filesystem after the build.
    pub fetch: Option<(String, PathBuf)>,
}

/// A fresh helper container name.
pub fn new_name() -> String {
    let mut bytes = [0u8; 6];
    let _ = getrandom(&mut bytes);
    format!("blumeops-engine-{}", hex::encode(bytes))
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// How long removing the helper may take before the client gives up waiting.
const REMOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Remove the helper, whatever state it is in (Ctrl-C, errors), and wait until it is gone:
/// the daemon's own auto-removal may still be under way, and the cache volume stays in
/// use until it is done.
pub async fn remove(docker: &Docker, name: &str) {
    let deadline = tokio::time::Instant::now() + REMOVE_TIMEOUT;
    loop {
        let removed = docker
            .remove_container(
                name,
                Some(bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    v: false,
                    link: false,
                }),
            )
            .await;
        let gone = match removed {
            Ok(()) => true,
            Err(bollard::errors::Error::DockerResponseServerError { status_code, .. }) => {
                status_code == 404
            }
            Err(_) => false,
        };
        if gone || tokio::time::Instant::now() > deadline {
            return;
        }
        // 409: removal in progress (the daemon's auto-removal, which takes some 70 ms here
        // after the engine exits); ask again shortly, so the client is done soon after.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Run it. `output(stderr, bytes)` gets the helper's output as it comes (stdout without the
/// done marker). Returns the helper's exit code.
pub async fn run(
    req: RemoteRun<'_>,
    output: &mut (dyn FnMut(bool, &[u8]) + Send),
) -> Result<i32, Error> {
    let result = run_inner(&req, output).await;
    // Gone already when it exited by itself; this covers every other way out.
    remove(req.docker, &req.name).await;
    result
}

async fn run_inner(
    req: &RemoteRun<'_>,
    output: &mut (dyn FnMut(bool, &[u8]) + Send),
) -> Result<i32, Error> {
    let (docker, endpoint, name) = (req.docker, req.endpoint, req.name.as_str());
    let api = |action: &str| {
        let action = action.to_owned();
        move |e| Error::api(endpoint, action, e)
    };
    let tun = std::path::Path::new("/dev/net/tun").exists() || !endpoint_is_local(endpoint);
    let host_config = HostConfig {
        network_mode: Some("host".to_owned()),
        auto_remove: Some(true),
        // What the root sandbox does: mount, unshare, pivot_root, bring up a step's
        // loopback; /proc and /sys unmasked so a step's own can be mounted.
        cap_add: Some(vec!["SYS_ADMIN".to_owned(), "NET_ADMIN".to_owned()]),
        security_opt: Some(vec![
            "seccomp=unconfined".to_owned(),
            "apparmor=unconfined".to_owned(),
        ]),
        masked_paths: Some(Vec::new()),
        readonly_paths: Some(Vec::new()),
        tmpfs: context_tmpfs(usize::try_from(req.context.len()).unwrap_or(usize::MAX)),
        devices: tun.then(|| {
            vec![DeviceMapping {
                path_on_host: Some("/dev/net/tun".to_owned()),
                path_in_container: Some("/dev/net/tun".to_owned()),
                cgroup_permissions: Some("rwm".to_owned()),
            }]
        }),
        extra_hosts: Some(client_hosts(
            &std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
        )),
        mounts: Some(vec![Mount {
            target: Some(ENGINE_CACHE_DIR.to_owned()),
            source: Some(req.volume.clone()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut labels = std::collections::HashMap::new();
    labels.insert(ENGINE_LABEL.to_owned(), "run".to_owned());
    let config = ContainerCreateBody {
        image: Some(req.image.clone()),
        cmd: Some(
            ["engine", "--"]
                .into_iter()
                .map(str::to_owned)
                .chain(req.args.iter().cloned())
                .collect(),
        ),
        env: Some(req.env.clone()),
        working_dir: Some(ENGINE_SRC_DIR.to_owned()),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    };
    docker
        .create_container(
            Some(bollard::query_parameters::CreateContainerOptions {
                name: Some(name.to_owned()),
                platform: String::new(),
            }),
            config,
        )
        .await
        .map_err(api("create the engine container"))?;
    let attached = docker
        .attach_container(
            name,
            Some(bollard::query_parameters::AttachContainerOptions {
                stdin: true,
                stdout: true,
                stderr: true,
                stream: true,
                logs: false,
                detach_keys: None,
            }),
        )
        .await
        .map_err(api("attach to the engine container"))?;
    let (mut stream, mut input) = (attached.output, attached.input);
    docker
        .start_container(name, None)
        .await
        .map_err(api("start the engine container"))?;
    // The context follows the handshake on the same stdin, sent while the output is read:
    // the engine unpacks it as the build starts, and waits for it only where it reads host
    // files (serve::wait_for_context).
    let mut handshake = req.handshake.clone();
    handshake.context_size = req.context.len();
    handshake.skeleton = skeleton(std::io::BufReader::new(req.context.reader()?))?;
    let mut line = serde_json::to_vec(&handshake).expect("JSON");
    line.push(b'\n');
    // Read from its file as it goes out, a bounded buffer at a time.
    let mut context = tokio::io::BufReader::with_capacity(
        256 * 1024,
        tokio::fs::File::from_std(req.context.reader()?),
    );
    let mut sending = Box::pin(async move {
        input.write_all(&line).await?;
        tokio::io::copy_buf(&mut context, &mut input).await?;
        input.flush().await?;
        Ok::<_, std::io::Error>(input)
    });
    let send_err = |e: std::io::Error| {
        Error::api(
            endpoint,
            "send the handshake and the build context",
            e.into(),
        )
    };
    let mut input = None;

    let mut pending = Vec::new();
    let mut done = None;
    let mut said_goodbye = false;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            sent = &mut sending, if input.is_none() => {
                input = Some(sent.map_err(send_err)?);
                continue;
            }
        };
        let chunk = match next {
            Some(Ok(chunk)) => Some(chunk),
            _ => None, // the connection ends with the helper
        };
        match chunk {
            Some(bollard::container::LogOutput::StdErr { message }) => output(true, &message),
            Some(bollard::container::LogOutput::StdOut { message }) => {
                pending.extend_from_slice(&message);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&line);
                    match text.trim_end().strip_prefix(DONE_MARKER) {
                        Some(code) if done.is_none() => done = code.trim().parse::<i32>().ok(),
                        _ => output(false, &line),
                    }
                }
            }
            Some(_) => {}
            None => break,
        }
        // Done: copy the results while the helper waits, then let it go; what it still
        // prints (stderr may lag stdout) passes through until it exits.
        if let (Some(code), false) = (done, said_goodbye) {
            said_goodbye = true;
            if code == 0
                && let Some((inside, local)) = &req.fetch
            {
                fetch(docker, endpoint, name, inside, local).await?;
            }
            // Done before the context was all sent (a build that failed first): finish
            // sending it, so the goodbye is read as a line.
            if input.is_none() {
                input = Some((&mut sending).await.map_err(send_err)?);
            }
            if let Some(input) = input.as_mut() {
                let _ = input.write_all(format!("{GOODBYE}\n").as_bytes()).await;
                let _ = input.flush().await;
            }
        }
    }
    if !pending.is_empty() {
        output(false, &pending);
    }
    match done {
        Some(code) => Ok(code),
        None => Err(Error::EngineGone {
            container: name.to_owned(),
            exit_code: exit_code(docker, name).await,
        }),
    }
}

/// The names this client's `/etc/hosts` gives (`name:address`, Docker's `ExtraHosts`
/// form), so that the engine reaches a registry by the same name as the client, e.g. one
/// only listed there. Loopback's own names are the helper's already.
fn client_hosts(hosts: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(addr) = fields.next() else { continue };
        if addr.parse::<std::net::IpAddr>().is_err() {
            continue;
        }
        for name in fields {
            if name == "localhost" || name.starts_with("ip6-") || name.starts_with("localhost.") {
                continue;
            }
            out.push(format!("{name}:{addr}"));
        }
    }
    out.truncate(256);
    out
}

/// Contexts up to this size are unpacked into memory (a tmpfs), larger ones onto disk.
const TMPFS_CONTEXT_MAX: usize = 256 << 20;

/// A tmpfs for the source directory when the context is small enough: unpacking into it is
/// quicker than into the container's overlayfs, and removing the container does not have
/// to delete the files one by one.
fn context_tmpfs(size: usize) -> Option<std::collections::HashMap<String, String>> {
    (size <= TMPFS_CONTEXT_MAX).then(|| {
        // The tar's size bounds the files' (headers and padding count too), plus room for
        // the skeleton and the early files.
        let limit = size + (16 << 20);
        std::collections::HashMap::from([(
            ENGINE_SRC_DIR.to_owned(),
            format!("rw,nosuid,nodev,mode=0755,size={limit}"),
        )])
    })
}

/// Whether the daemon runs on this machine (so its /dev/net/tun is ours to check).
fn endpoint_is_local(endpoint: &Endpoint) -> bool {
    match endpoint {
        Endpoint::Unix(_) => true,
        Endpoint::Tcp(addr) => addr.starts_with("127.") || addr.starts_with("localhost"),
    }
}

async fn exit_code(docker: &Docker, name: &str) -> Option<i64> {
    let mut wait = docker.wait_container(
        name,
        Some(bollard::query_parameters::WaitContainerOptions {
            condition: "not-running".to_owned(),
        }),
    );
    match wait.next().await? {
        Ok(r) => Some(r.status_code),
        Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => Some(code),
        Err(_) => None,
    }
}

/// Copy `inside` (a file or directory in the helper) to `local`.
async fn fetch(
    docker: &Docker,
    endpoint: &Endpoint,
    name: &str,
    inside: &str,
    local: &std::path::Path,
) -> Result<(), Error> {
    // Spooled to a file next to the destination, so a large image never sits in memory.
    let parent = local
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| Error::Io {
        action: "create",
        path: parent.to_owned(),
        source,
    })?;
    let spool = tempfile::NamedTempFile::new_in(parent).map_err(|source| Error::Io {
        action: "create a temporary file in",
        path: parent.to_owned(),
        source,
    })?;
    let mut file = tokio::fs::File::from_std(spool.reopen().map_err(|source| Error::Io {
        action: "open",
        path: spool.path().to_owned(),
        source,
    })?);
    let mut stream = std::pin::pin!(docker.download_from_container(
        name,
        Some(bollard::query_parameters::DownloadFromContainerOptions {
            path: inside.to_owned(),
        }),
    ));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Error::api(
                endpoint,
                format!("copy {inside} out of the engine container"),
                e,
            )
        })?;
        file.write_all(&chunk).await.map_err(|source| Error::Io {
            action: "write",
            path: spool.path().to_owned(),
            source,
        })?;
    }
    file.flush().await.ok();
    drop(file);
    let local = local.to_owned();
    tokio::task::spawn_blocking(move || {
        let reader = std::fs::File::open(spool.path()).map_err(|source| Error::Io {
            action: "read",
            path: spool.path().to_owned(),
            source,
        })?;
        unpack_result(std::io::BufReader::new(reader), &local)
    })
    .await
    .map_err(|_| Error::Io {
        action: "write",
        path: PathBuf::from("the build result"),
        source: std::io::Error::other("task panicked"),
    })?
}

/// Unpack the archive of one file or directory (its first path component is its own name)
/// at `local`.
fn unpack_result(reader: impl std::io::Read, local: &std::path::Path) -> Result<(), Error> {
    let io = |action, path: &std::path::Path| {
        let path = path.to_owned();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(io("read", local))? {
        let mut entry = entry.map_err(io("read", local))?;
        let path = entry.path().map_err(io("read", local))?.into_owned();
        let rest: PathBuf = path.components().skip(1).collect();
        if rest
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::Context {
                path,
                reason: "the engine sent a path that leaves the output".to_owned(),
            });
        }
        let dest = if rest.as_os_str().is_empty() {
            local.to_owned()
        } else {
            local.join(&rest)
        };
        if entry.header().entry_type().is_dir() {
            std::fs::create_dir_all(&dest).map_err(io("create", &dest))?;
            continue;
        }
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let _ = std::fs::remove_file(&dest);
        entry.set_preserve_permissions(true);
        entry.unpack(&dest).map_err(io("write", &dest))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_named_hosts_but_not_loopback_names() {
        let hosts = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost ip6-loopback\n\
                     # comment\n127.0.0.1 registry.blumeops.test reg # the test registry\n\
                     10.0.0.5 zot.lan\nnot-an-address name\n";
        assert_eq!(
            client_hosts(hosts),
            [
                "registry.blumeops.test:127.0.0.1",
                "reg:127.0.0.1",
                "zot.lan:10.0.0.5"
            ]
        );
    }

    #[test]
    fn handshake_debug_shows_no_secret() {
        let mut h = Handshake::default();
        h.secrets
            .insert("env:ZOT_CI_API_KEY".into(), "hunter2-secret".into());
        let shown = format!("{h:?}");
        assert!(shown.contains("env:ZOT_CI_API_KEY"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
