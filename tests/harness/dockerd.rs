//! A Docker daemon for the docker executor's tests: Debian's `dockerd` (package
//! `docker.io`) on a socket and data root of its own under the target directory, started
//! once per test process and stopped when it exits. It creates no networks (`--bridge
//! none`, no iptables rules): containers use the host network, as CI jobs do next to a
//! Docker-in-Docker sidecar.
//!
//! [`Dockerd::job_image`] is a Debian job image made with `docker import` from the
//! debootstrap'd base ([`crate::DebianBase`]), as bare as many CI job images (no
//! ca-certificates, no docker client).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::util::{random_hex, target_dir};

/// The shared daemon.
#[derive(Debug)]
pub struct Dockerd {
    dir: PathBuf,
    socket: PathBuf,
}

static CHILD: Mutex<Option<(Child, PathBuf)>> = Mutex::new(None);

fn stop_at_exit() {
    if let Ok(mut guard) = CHILD.lock()
        && let Some((mut child, dir)) = guard.take()
    {
        stop(&mut child);
        remove(&dir);
    }
}

/// Stop dockerd: SIGTERM lets it stop containerd and unmount; then make sure.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether dockerd can be started here (root, and the program installed).
pub fn available() -> Result<(), String> {
    if !crate::util::is_root() {
        return Err("dockerd needs root".to_owned());
    }
    for program in ["dockerd", "docker"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()));
        if !found {
            return Err(format!(
                "{program} is not installed (apt-get install docker.io)"
            ));
        }
    }
    Ok(())
}

impl Dockerd {
    /// The daemon of this test process, started on first use. Panics when it does not come
    /// up, with its log.
    pub fn shared() -> &'static Dockerd {
        static DAEMON: OnceLock<Dockerd> = OnceLock::new();
        DAEMON.get_or_init(Self::start)
    }

    fn start() -> Dockerd {
        remove_stale();
        // Short paths: the socket path must fit in sun_path, and containerd's below it.
        let dir = target_dir()
            .join("tmp")
            .join(format!("dockerd-{}", random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("failed to start dockerd");
        *CHILD.lock().unwrap() = Some((child, dir.clone()));
        crate::util::at_exit(stop_at_exit);
        let daemon = Dockerd { dir, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if daemon.docker(&["version"]).status.success() {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up in 60 s:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `unix://SOCKET`, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// Run `docker ARGS` against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("--host")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("failed to run docker")
    }

    /// Run `docker ARGS`, panicking with its output unless it succeeds; returns stdout.
    #[track_caller]
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// IDs of every container (running or not).
    pub fn containers(&self) -> Vec<String> {
        self.docker_ok(&["ps", "-aq", "--no-trunc"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The Debian job image (`docker import` of the debootstrap'd base), imported once.
    pub fn job_image(&self) -> &'static str {
        static IMAGE: OnceLock<()> = OnceLock::new();
        const NAME: &str = "blumeops-test/job:bookworm";
        IMAGE.get_or_init(|| {
            let layout = crate::DebianBase::layout();
            let layer = single_layer(layout);
            self.docker_ok(&["import", &layer.to_string_lossy(), NAME]);
        });
        NAME
    }
}

/// Remove a daemon's directory, unmounting what it left mounted there (its network
/// namespace file stays mounted after it exits).
fn remove(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let _ = Command::new("umount").args(["-l", target]).status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Remove the directories of daemons that are gone (a test process that was killed).
fn remove_stale() {
    let tmp = target_dir().join("tmp");
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("dockerd-") {
            continue;
        }
        let alive = std::fs::read_to_string(entry.path().join("dockerd.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            remove(&entry.path());
        }
    }
}

/// The one layer blob of the image in an OCI layout.
fn single_layer(layout: &Path) -> PathBuf {
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    };
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest[7..]);
    let index = read(layout.join("index.json"));
    let manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "the Debian base has one layer");
    blob(layers[0]["digest"].as_str().unwrap())
}
