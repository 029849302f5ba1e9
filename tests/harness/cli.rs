//! Running the `blumeops` binary.
//!
//! The binary is not built by this crate (cargo holds its build lock while tests run, so a
//! nested `cargo build` would deadlock): run `cargo build -p blumeops-cli` first, or set
//! `BLUMEOPS_BIN`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use crate::util::{tempdir, workspace_root};

/// How long one CLI run may take before the test fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Environment variables cleared from every run so tests only see what they set.
pub(crate) const CLEARED_ENV: [&str; 16] = [
    "BLUMEOPS_CACHE_DIR",
    "BLUMEOPS_CACHE_MAX_BYTES",
    "SOURCE_DATE_EPOCH",
    "ZOT_CI_API_KEY",
    "DOCKER_CONFIG",
    "REGISTRY_AUTH_FILE",
    "RUST_LOG",
    "CARGO_TARGET_DIR",
    "DOCKER_HOST",
    "BLUMEOPS_EXECUTOR",
    "BLUMEOPS_ENGINE_IMAGE",
    "BLUMEOPS_ENGINE_VOLUME",
    "GITHUB_OUTPUT",
    "FORGEJO_OUTPUT",
    "CONTAINERS_REGISTRIES_CONF",
    "BLUMEOPS_REGISTRY_MIRRORS",
];

/// The `blumeops` binary: `$BLUMEOPS_BIN`, else `<target>/<profile>/blumeops` next to this
/// test binary. Panics with a hint when it is missing; warns once when it looks stale.
pub fn blumeops_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("BLUMEOPS_BIN") {
            return PathBuf::from(bin);
        }
        let profile_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
            .unwrap_or_else(|| workspace_root().join("target/debug"));
        let bin = profile_dir.join("blumeops");
        assert!(
            bin.exists(),
            "{} not found\nhint: run `cargo build -p blumeops-cli` before the e2e tests, or set BLUMEOPS_BIN",
            bin.display()
        );
        warn_if_stale(&bin);
        bin
    })
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let mtime = if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            newest_mtime(&path)
        } else {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        };
        newest = newest.max(mtime);
    }
    newest
}

fn warn_if_stale(bin: &Path) {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
    let root = workspace_root();
    let sources = newest_mtime(&root.join("crates")).max(newest_mtime(&root.join("containers")));
    if let (Some(built), Some(sources)) = (built, sources)
        && sources > built
    {
        eprintln!(
            "warning: {} is older than the sources; run `cargo build -p blumeops-cli`",
            bin.display()
        );
    }
}

/// An empty directory for `BLUMEOPS_CACHE_DIR`.
pub fn isolated_cache() -> TempDir {
    tempdir("blumeops-cache-")
}

/// The outcome of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    /// The arguments, for messages.
    pub args: Vec<String>,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl CliOutput {
    /// Exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The last non-empty stdout line, trimmed.
    pub fn last_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
    }

    /// stdout and stderr together.
    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panic with everything unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "unexpected exit code\n{self}");
        self
    }

    /// Panic with everything unless the exit code is 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    /// Panic if `secret` appears in stdout or stderr (without printing the secret).
    #[track_caller]
    pub fn assert_no_secret(&self, secret: &str) -> &Self {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "a secret leaked into the output of blumeops {}",
            self.args.join(" ")
        );
        self
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blumeops {}\nexit: {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

/// Run `blumeops ARGS` in the workspace root with `envs` added (after clearing the
/// variables blumeops reads), with [`DEFAULT_TIMEOUT`].
pub fn run_cli<S: AsRef<str>>(args: &[S], envs: &[(&str, &str)]) -> CliOutput {
    run_cli_with(args, envs, &workspace_root(), DEFAULT_TIMEOUT)
}

/// [`run_cli`] with a working directory and a timeout; a run past the timeout is killed and
/// the test panics with what it printed.
pub fn run_cli_with<S: AsRef<str>>(
    args: &[S],
    envs: &[(&str, &str)],
    cwd: &Path,
    timeout: Duration,
) -> CliOutput {
    run(Command::new(blumeops_bin()), args, envs, cwd, timeout)
}

/// [`run_cli_with`] through `wrapper`, a command that runs the program named by its last
/// argument: the binary is added there, then `args`.
pub fn run_cli_wrapped<S: AsRef<str>>(
    mut wrapper: Command,
    args: &[S],
    envs: &[(&str, &str)],
    cwd: &Path,
    timeout: Duration,
) -> CliOutput {
    wrapper.arg(blumeops_bin());
    run(wrapper, args, envs, cwd, timeout)
}

/// [`run_cli_with`] as `user` (this process must be root): a copy of the binary that the
/// user may run ([`crate::users::shared_bin`]), with `HOME`, `USER` and `LOGNAME` set to
/// the user's and no supplementary groups.
pub fn run_cli_as<S: AsRef<str>>(
    user: &crate::users::TestUser,
    args: &[S],
    envs: &[(&str, &str)],
    cwd: &Path,
    timeout: Duration,
) -> CliOutput {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(crate::users::shared_bin());
    command
        .uid(user.uid)
        .gid(user.gid)
        .env("HOME", &user.home)
        .env("USER", user.name)
        .env("LOGNAME", user.name)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_RUNTIME_DIR");
    run(command, args, envs, cwd, timeout)
}

fn run<S: AsRef<str>>(
    mut command: Command,
    args: &[S],
    envs: &[(&str, &str)],
    cwd: &Path,
    timeout: Duration,
) -> CliOutput {
    command
        .args(args.iter().map(AsRef::as_ref))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1");
    for name in CLEARED_ENV {
        command.env_remove(name);
    }
    command.envs(envs.iter().copied());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("failed to run {:?}: {e}", command.get_program()));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("failed to wait for blumeops") {
            break (status, false);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            break (child.wait().expect("failed to wait for blumeops"), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = CliOutput {
        args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
        status,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
        elapsed: started.elapsed(),
    };
    assert!(!timed_out, "blumeops timed out after {timeout:?}\n{output}");
    output
}
