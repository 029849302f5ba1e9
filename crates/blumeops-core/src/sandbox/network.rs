//! User-mode networking for [`Network::Isolated`](crate::Network::Isolated) steps: the
//! step gets its own network namespace, and slirp4netns (Debian package `slirp4netns`)
//! gives it a `tap0` with outbound access through the host's sockets, DNS at
//! [`DNS_ADDRESS`], and no way to the host's loopback (`--disable-host-loopback`): a
//! service bound to the host's 127.0.0.1 (a Docker-in-Docker daemon, a registry) is out of
//! the step's reach.
//!
//! slirp4netns joins the namespace through the step init's PID once it exists, says when
//! the interface is up on its ready pipe, and exits when its exit pipe closes (when the step
//! ends, or blumeops dies). The step's command starts only after the network is up.
#![expect(
    unsafe_code,
    reason = "handing slirp4netns its two pipes at fixed descriptors needs dup2 after fork"
)]

use std::io::Read as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use super::{Error, SetupStep};

/// The resolver slirp4netns forwards to the host's.
pub const DNS_ADDRESS: &str = "10.0.2.3";

/// How long slirp4netns may take to bring the interface up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The slirp4netns binary, if installed.
pub(super) fn slirp4netns() -> Option<PathBuf> {
    crate::executor::find_program("slirp4netns")
}

/// Whether isolated steps can get their network here: slirp4netns is installed and this
/// process may open `/dev/net/tun` (as root, or rootless when the node is 0666, as Debian's
/// udev rules make it). Else why not, with the fix. Checked once per process: every step
/// asks (the pipeline to choose the mode, the sandbox for the binary).
pub fn user_network() -> Result<PathBuf, String> {
    static CHECKED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check_user_network).clone()
}

fn check_user_network() -> Result<PathBuf, String> {
    let slirp = slirp4netns().ok_or_else(|| {
        "slirp4netns is not installed (Debian: apt-get install slirp4netns)".to_owned()
    })?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| {
            format!(
                "/dev/net/tun cannot be opened ({e}); as root: `chmod 0666 /dev/net/tun` \
                 (Debian's udev rules give it that mode)"
            )
        })?;
    Ok(slirp)
}

/// A running slirp4netns for one step. Dropping it closes the exit pipe and reaps it.
pub(super) struct UserNetwork {
    child: Child,
    exit: Option<OwnedFd>,
}

impl UserNetwork {
    /// Start slirp4netns for the network namespace of `pid` and wait until `tap0` is up.
    pub(super) fn start(slirp: &PathBuf, pid: i32) -> Result<Self, Error> {
        let pipe = || {
            pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::Setup {
                step: SetupStep::Pipe,
                path: slirp.clone(),
                source: e.into(),
            })
        };
        let (ready_r, ready_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let (ready_fd, exit_fd) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
        let mut cmd = Command::new(slirp);
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--ready-fd=3",
            "--exit-fd=4",
        ])
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        // SAFETY: dup2 and prctl only, between fork and exec, on descriptors this process
        // owns; dup2 clears close-on-exec on the copies.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Copies above 10 first, in case one of them is 3 or 4 already.
                let r = libc::fcntl(ready_fd, libc::F_DUPFD, 10);
                let e = libc::fcntl(exit_fd, libc::F_DUPFD, 10);
                if r < 0 || e < 0 || libc::dup2(r, 3) < 0 || libc::dup2(e, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(r);
                libc::close(e);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| Error::Setup {
            step: SetupStep::StartNetwork,
            path: slirp.clone(),
            source,
        })?;
        drop((ready_w, exit_r));
        let mut net = Self {
            child,
            exit: Some(exit_w),
        };
        if let Err(reason) = wait_ready(&ready_r) {
            let detail = net.stop_with_stderr();
            return Err(Error::Network {
                reason: format!("{reason}{detail}"),
            });
        }
        Ok(net)
    }

    /// Stop it now and return what it printed, for an error message.
    fn stop_with_stderr(&mut self) -> String {
        self.exit = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        }
    }
}

impl Drop for UserNetwork {
    fn drop(&mut self) {
        // The step is over and slirp4netns holds nothing worth a clean exit (which takes it
        // some 20 ms): stop it now. The closed exit pipe would end it too.
        self.exit = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for slirp4netns's "1" on the ready pipe.
fn wait_ready(ready: &OwnedFd) -> Result<(), String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd as _;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "slirp4netns did not bring the step's network up within {}s",
                READY_TIMEOUT.as_secs()
            ));
        }
        let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for slirp4netns failed: {e}")),
        }
        let mut byte = [0u8; 1];
        return match nix::unistd::read(ready, &mut byte) {
            Ok(1) => Ok(()),
            Ok(_) => Err("slirp4netns exited before the step's network was up".to_owned()),
            Err(e) => Err(format!("waiting for slirp4netns failed: {e}")),
        };
    }
}
