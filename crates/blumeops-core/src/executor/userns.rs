//! Entering the rootless executor: run this program again in a new user namespace in which
//! the calling user is root (0) and ids 1–65535 come from its subordinate ranges.
//!
//! Why the whole process and not just each step: every unpacked layer must carry the
//! image's owners on disk, mapped to the user's subordinate ids, and only a process inside
//! the namespace can `chown` to those. Running the build itself in the namespace (as
//! `buildah unshare` and podman do) lets the store, the layer unpacker, the sandbox and the
//! layer writer work unchanged: inside, `stat` shows in-image ids (0, 1001, …), so layers
//! record those and never the host's subordinate ids.
//!
//! Protocol: the child unshares its user namespace between `fork` and `exec`, sends its PID
//! (or the `unshare` errno) over a pipe, and waits on a second pipe. A thread of the parent
//! writes the maps (with `newuidmap`/`newgidmap`, which read `/etc/subuid` and `/etc/subgid`;
//! or directly for a single mapping of the user's own ids) and releases the child, which then
//! executes this program again, as root of its namespace. The parent stays to forward
//! termination signals and to exit as the child did; the child dies with it
//! (`PR_SET_PDEATHSIG`).
#![expect(
    unsafe_code,
    reason = "unshare between fork and exec, and signal forwarding, need libc"
)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use super::idmap::{MapLine, SUBUID_FILE, UsernsPlan};
use super::{Error, USERNS_CHILD_ENV, current_mapping, user_name};

/// One line on how this process maps ids, for the progress output of a rootless build.
pub fn describe_current() -> String {
    let m = current_mapping();
    let Some(uid) = m.host_uid() else {
        return "the host's user namespace".to_owned();
    };
    let user = user_name(uid);
    let more: u64 = m
        .uid
        .iter()
        .filter(|l| l.inside != 0)
        .map(|l| u64::from(l.count))
        .sum();
    let fs = crate::sandbox::rootless_fs().describe();
    if m.is_single() {
        format!("user namespace with a single id mapping, {user} (uid {uid}) as 0; {fs}")
    } else {
        format!("user namespace, {user} (uid {uid}) as 0 and {more} ids from {SUBUID_FILE}; {fs}")
    }
}

/// The child's PID, for the signal handler (0 until known).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

fn install_forwarding() {
    for sig in FORWARDED {
        // SAFETY: installing a handler that only calls kill(2).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Run this program again (same arguments and environment, plus
/// [`USERNS_CHILD_ENV`](super::USERNS_CHILD_ENV)) in a new user namespace mapped by `plan`,
/// and wait for it. Call it before any thread is started and before any output; exit with
/// [`exit_like`](super::exit_like) afterwards.
pub fn reexec(plan: &UsernsPlan) -> Result<ExitStatus, Error> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|source| Error::Io {
        action: "find this program at",
        path: "/proc/self/exe".into(),
        source,
    })?;
    let mut cmd = Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(USERNS_CHILD_ENV, "1");
    install_forwarding();
    let mut child = spawn(cmd, plan)?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    child.wait().map_err(|source| Error::Io {
        action: "wait for",
        path: exe,
        source,
    })
}

/// Start `cmd` in a new user namespace mapped by `plan`: the child unshares it before
/// `exec`, and runs once the maps are written. It dies with the thread that spawned it
/// (`PR_SET_PDEATHSIG`).
pub fn spawn(mut cmd: Command, plan: &UsernsPlan) -> Result<Child, Error> {
    let program = PathBuf::from(cmd.get_program());
    let pipe = || {
        pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::Io {
            action: "create a pipe for",
            path: "the user namespace".into(),
            source: e.into(),
        })
    };
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let mapper = {
        let plan = plan.clone();
        std::thread::spawn(move || map_child(&plan, ready_r, go_w))
    };
    let (ready_fd, go_fd) = (ready_w.as_raw_fd(), go_r.as_raw_fd());
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls on the two inherited descriptors.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let msg: i32 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                libc::getpid()
            } else {
                -std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EPERM)
            };
            let bytes = msg.to_ne_bytes();
            libc::write(ready_fd, bytes.as_ptr().cast(), bytes.len());
            if msg < 0 {
                return Err(std::io::Error::from_raw_os_error(-msg));
            }
            let mut go = [1u8];
            if libc::read(go_fd, go.as_mut_ptr().cast(), 1) != 1 || go[0] != 0 {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop((ready_w, go_r));
    let mapped = mapper.join().unwrap_or_else(|_| {
        Err(Error::UserNamespace {
            reason: "the thread writing the id maps panicked".into(),
        })
    });
    match (spawned, mapped) {
        (Ok(child), Ok(())) => Ok(child),
        (_, Err(e)) => Err(e),
        (Err(source), Ok(())) => Err(Error::Io {
            action: "start in a user namespace",
            path: program,
            source,
        }),
    }
}

/// The parent's side: wait for the child's PID, write its maps, release it.
fn map_child(plan: &UsernsPlan, ready: OwnedFd, go: OwnedFd) -> Result<(), Error> {
    let mut bytes = [0u8; 4];
    let mut file = std::fs::File::from(ready);
    let got = std::io::Read::read_exact(&mut file, &mut bytes);
    let release = |ok: bool| {
        let _ = nix::unistd::write(&go, &[u8::from(!ok)]);
    };
    if got.is_err() {
        // The child died before unsharing (spawn reports why).
        return Ok(());
    }
    let msg = i32::from_ne_bytes(bytes);
    if msg < 0 {
        return Err(Error::UserNamespace {
            reason: format!(
                "unshare(CLONE_NEWUSER) failed: {}",
                std::io::Error::from_raw_os_error(-msg)
            ),
        });
    }
    let result = write_maps(plan, msg);
    release(result.is_ok());
    result
}

fn write_maps(plan: &UsernsPlan, pid: i32) -> Result<(), Error> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if let Some((newuidmap, newgidmap)) = &plan.helpers {
        for (helper, lines) in [(newuidmap, &plan.uid_map), (newgidmap, &plan.gid_map)] {
            let out = Command::new(helper)
                .arg(pid.to_string())
                .args(helper_args(lines))
                .output()
                .map_err(|source| Error::Io {
                    action: "run",
                    path: helper.clone(),
                    source,
                })?;
            if !out.status.success() {
                return Err(Error::UserNamespace {
                    reason: format!(
                        "`{} {pid} {}` failed ({}): {}",
                        helper.display(),
                        helper_args(lines).join(" "),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
        }
        return Ok(());
    }
    let write = |name: &str, text: &str| {
        let path = proc.join(name);
        std::fs::write(&path, text).map_err(|source| Error::Io {
            action: "write",
            path,
            source,
        })
    };
    if !nix::unistd::geteuid().is_root() {
        // An unprivileged process may map only its own gid, and only with setgroups denied.
        write("setgroups", "deny")?;
    }
    write("uid_map", &map_file_text(&plan.uid_map))?;
    write("gid_map", &map_file_text(&plan.gid_map))
}

/// The arguments `newuidmap PID` / `newgidmap PID` take for `lines`.
fn helper_args(lines: &[MapLine]) -> Vec<String> {
    lines
        .iter()
        .flat_map(|l| [l.inside, l.outside, l.count])
        .map(|n| n.to_string())
        .collect()
}

/// The text for `/proc/PID/uid_map` (or `gid_map`).
fn map_file_text(lines: &[MapLine]) -> String {
    lines
        .iter()
        .map(|l| format!("{} {} {}\n", l.inside, l.outside, l.count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::idmap::{self, IdRange};

    #[test]
    fn maps_render_for_the_helpers_and_for_proc() {
        let lines = idmap::mapping(
            1000,
            &[IdRange {
                start: 100000,
                count: 65536,
            }],
        );
        assert_eq!(
            helper_args(&lines),
            ["0", "1000", "1", "1", "100000", "65535"]
        );
        assert_eq!(map_file_text(&lines), "0 1000 1\n1 100000 65535\n");
    }
}
