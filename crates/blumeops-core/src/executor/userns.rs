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
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use super::idmap::{self, MapLine};
use super::{Error, find_program};

/// Set in the child's environment: it is the rootless re-execution and must not enter
/// another namespace.
pub const CHILD_ENV: &str = "BLUMEOPS_USERNS_CHILD";

/// How the namespace's ids are mapped, and how the maps get written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsernsPlan {
    /// Lines of `uid_map`.
    pub uid_map: Vec<MapLine>,
    /// Lines of `gid_map`.
    pub gid_map: Vec<MapLine>,
    /// `newuidmap`/`newgidmap`, when the maps need them (more than the user's own id).
    pub helpers: Option<(PathBuf, PathBuf)>,
}

impl UsernsPlan {
    /// Whether only the user's own id is mapped.
    pub fn is_single(&self) -> bool {
        self.uid_map.len() <= 1 || self.gid_map.len() <= 1
    }

    /// Ids mapped (uids).
    pub fn mapped_ids(&self) -> u64 {
        self.uid_map.iter().map(|l| u64::from(l.count)).sum()
    }
}

/// The plan for the calling user: its ranges when `newuidmap`/`newgidmap` can apply them
/// (root writes any map itself), else a single mapping of its own ids.
pub fn plan_for_current_user() -> UsernsPlan {
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let user = super::user_name(uid);
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name);
    let uid_ranges = idmap::read_ranges(idmap::SUBUID_FILE.as_ref(), &user, uid);
    // /etc/subgid is keyed by user name too (shadow looks the group ranges up by user).
    let mut gid_ranges = idmap::read_ranges(idmap::SUBGID_FILE.as_ref(), &user, uid);
    if gid_ranges.is_empty() {
        gid_ranges = idmap::read_ranges(idmap::SUBGID_FILE.as_ref(), &group, gid);
    }
    let helpers = find_program("newuidmap").zip(find_program("newgidmap"));
    let root = uid == 0;
    let ranged = !uid_ranges.is_empty() && !gid_ranges.is_empty() && (root || helpers.is_some());
    if !ranged {
        return UsernsPlan {
            uid_map: idmap::mapping(uid, &[]),
            gid_map: idmap::mapping(gid, &[]),
            helpers: None,
        };
    }
    UsernsPlan {
        uid_map: idmap::mapping(uid, &uid_ranges),
        gid_map: idmap::mapping(gid, &gid_ranges),
        helpers: if root { None } else { helpers },
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

/// Run this program again (same arguments and environment, plus [`CHILD_ENV`]) in a new user
/// namespace mapped by `plan`, and wait for it. Call it before any thread is started and
/// before any output; exit with [`exit_like`] afterwards.
pub fn reexec(plan: &UsernsPlan) -> Result<ExitStatus, Error> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|source| Error::Io {
        action: "find this program at",
        path: "/proc/self/exe".into(),
        source,
    })?;
    let mut cmd = Command::new(&exe);
    cmd.args(std::env::args_os().skip(1)).env(CHILD_ENV, "1");
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

/// Exit the way `status` says the child did: the same code, or the same signal.
pub fn exit_like(status: ExitStatus) -> ! {
    if let Some(sig) = status.signal() {
        // SAFETY: default disposition, then the same signal to ourselves.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(status.code().unwrap_or(1))
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
                .args(idmap::helper_args(lines))
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
                        idmap::helper_args(lines).join(" "),
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
    write("uid_map", &idmap::map_file_text(&plan.uid_map))?;
    write("gid_map", &idmap::map_file_text(&plan.gid_map))
}
