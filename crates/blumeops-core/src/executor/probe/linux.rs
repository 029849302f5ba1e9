//! The root and rootless probes: each tries the real thing in a short-lived child process.
#![expect(
    unsafe_code,
    reason = "the probes fork and make raw namespace and mount system calls"
)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use super::{Candidate, Problem, kernel_release};
use crate::executor::idmap::{self, SUBGID_FILE, SUBUID_FILE};
use crate::executor::{find_program, user_name};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Run `child` in a forked process and return the (stage, errno) it reports, (0, 0) for
/// success. `child` must only make system calls on memory prepared before the fork.
fn in_child(child: impl Fn() -> (u8, i32)) -> Result<(u8, i32), std::io::Error> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the child only runs `child` (system calls on prepared memory) and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return Err(e);
    }
    if pid == 0 {
        let (stage, err) = child();
        let mut msg = [0u8; 5];
        msg[0] = stage;
        msg[1..].copy_from_slice(&err.to_ne_bytes());
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            libc::write(fds[1], msg.as_ptr().cast(), msg.len());
            libc::_exit(0);
        }
    }
    let mut msg = [0u8; 5];
    // SAFETY: closing our copy of the write end, reading into a local buffer, reaping the
    // child we forked.
    let n = unsafe {
        libc::close(fds[1]);
        let n = libc::read(fds[0], msg.as_mut_ptr().cast(), msg.len());
        libc::close(fds[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        n
    };
    if n != 5 {
        return Err(std::io::Error::other("the probe process died"));
    }
    Ok((msg[0], i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]])))
}

fn os_error(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

fn overlay_known() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
        || std::path::Path::new("/sys/module/overlay").exists()
}

const NO_OVERLAY_FIX: &str =
    "load the overlay module (`modprobe overlay`; kernel option CONFIG_OVERLAY_FS)";

/// The root executor: root, able to create mount/PID/IPC/UTS namespaces, with overlayfs.
pub fn root() -> Candidate {
    let mut c = Candidate::new("root");
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        c.problems.push(Problem::new(
            format!("blumeops runs as uid {euid}, not root"),
            "run it as root (sudo), or use the rootless executor (`--executor rootless`)",
        ));
        return c;
    }
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: unshare in the forked child only.
    match in_child(|| {
        if unsafe { libc::unshare(flags) } == 0 {
            (0, 0)
        } else {
            (1, errno())
        }
    }) {
        Ok((0, _)) => {}
        Ok((_, e)) => c.problems.push(Problem::new(
            format!(
                "creating mount and PID namespaces is refused ({}): this process lacks \
                 CAP_SYS_ADMIN, or a seccomp profile forbids unshare (an unprivileged \
                 container)",
                os_error(e)
            ),
            "run blumeops on the host, or give its container `--cap-add SYS_ADMIN \
             --security-opt seccomp=unconfined --security-opt apparmor=unconfined`",
        )),
        Err(e) => c.problems.push(Problem::new(
            format!("the namespace probe failed: {e}"),
            "check that blumeops may fork (process limits)",
        )),
    }
    if !overlay_known() {
        c.problems.push(Problem::new(
            "the kernel has no overlay filesystem",
            NO_OVERLAY_FIX,
        ));
    }
    let mode = if crate::executor::in_user_namespace() {
        "overlayfs with userxattr (this process is in a user namespace)"
    } else {
        "overlayfs"
    };
    c.detail("filesystem", mode);
    network(&mut c);
    c
}

/// The network steps get by default (isolated through slirp4netns, or the host's), and
/// whether a pids cgroup can limit their processes.
fn network(c: &mut Candidate) {
    match crate::sandbox::pids_cgroup_parent() {
        Some(dir) => c.detail(
            "process limit",
            format!("a pids cgroup per step, under {}", dir.display()),
        ),
        None => {
            c.detail("process limit", "none (no writable pids cgroup)");
            c.warnings.push(Problem::new(
                "no pids cgroup can be made here, so a fork bomb in a step is not contained",
                "run blumeops where cgroup v1's pids hierarchy is writable (root), or under \
                 cgroup v2 with the pids controller delegated (systemd `Delegate=yes`)",
            ));
        }
    }
    match crate::sandbox::user_network() {
        Ok(slirp) => c.detail(
            "network",
            format!(
                "isolated: a namespace per step, outbound through {} (no host loopback)",
                slirp.display()
            ),
        ),
        Err(why) => {
            c.detail("network", "the host's (isolation unavailable)");
            c.warnings.push(Problem::new(
                format!("steps cannot get an isolated network: {why}"),
                "install slirp4netns and make /dev/net/tun usable; until then steps share \
                 the host's network, loopback included",
            ));
        }
    }
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The rootless executor: a user namespace of the calling user, overlayfs in it, and the
/// user's subordinate id ranges.
pub fn rootless() -> Candidate {
    let mut c = Candidate::new("rootless");
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let user = user_name(uid);
    c.detail("kernel", kernel_release());
    if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        c.problems.push(Problem::new(
            "user namespaces are disabled (user.max_user_namespaces = 0)",
            "as root: `sysctl -w user.max_user_namespaces=15000` (and in /etc/sysctl.d/ to keep it)",
        ));
    }
    if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        c.problems.push(Problem::new(
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)",
            "as root: `sysctl -w kernel.unprivileged_userns_clone=1` (and in /etc/sysctl.d/ to keep it)",
        ));
    }
    if read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        c.warnings.push(Problem::new(
            "AppArmor restricts unprivileged user namespaces \
             (kernel.apparmor_restrict_unprivileged_userns = 1)",
            "as root: `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or an \
             AppArmor profile that allows userns for blumeops",
        ));
    }

    // Ids.
    let uid_ranges = idmap::read_ranges(SUBUID_FILE.as_ref(), &user, uid);
    let gid_ranges = idmap::read_ranges(SUBGID_FILE.as_ref(), &user, uid);
    let show = |r: &[idmap::IdRange]| {
        r.iter()
            .map(|r| {
                format!(
                    "{}-{}",
                    r.start,
                    u64::from(r.start) + u64::from(r.count) - 1
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    c.detail("user", format!("{user} (uid {uid}, gid {gid})"));
    c.detail(
        SUBUID_FILE,
        if uid_ranges.is_empty() {
            "no range".to_owned()
        } else {
            show(&uid_ranges)
        },
    );
    c.detail(
        SUBGID_FILE,
        if gid_ranges.is_empty() {
            "no range".to_owned()
        } else {
            show(&gid_ranges)
        },
    );
    let helpers = [find_program("newuidmap"), find_program("newgidmap")];
    for (name, found) in ["newuidmap", "newgidmap"].iter().zip(&helpers) {
        c.detail(
            name,
            found
                .as_ref()
                .map_or_else(|| "not found".to_owned(), |p| p.display().to_string()),
        );
    }
    let plan = crate::executor::plan_for_current_user();
    if plan.is_single() {
        let fix = idmap::SingleMappingAdvice::for_user(user.clone()).fix();
        c.warnings.push(Problem::new(
            format!(
                "only one id can be mapped ({user} as 0): steps that use other users or \
                 groups (apt, useradd, chown) will fail"
            ),
            fix,
        ));
        c.detail("mapping", format!("{user} as 0 only"));
    } else {
        c.detail(
            "mapping",
            format!(
                "{user} as 0, {} more ids from the ranges",
                plan.mapped_ids() - 1
            ),
        );
    }

    // The real thing: a user namespace with overlayfs (userxattr) in it.
    let forced = std::env::var(crate::sandbox::ROOTLESS_FS_ENV).unwrap_or_default();
    match probe_overlay(Some((uid, gid))) {
        Ok(None) if forced == "copy" || forced == "fuse-overlayfs" => c.detail(
            "filesystem",
            format!("{forced} ({}={forced})", crate::sandbox::ROOTLESS_FS_ENV),
        ),
        Ok(None) => c.detail("filesystem", "overlayfs with userxattr (Linux 5.11+)"),
        Ok(Some((3, e))) => {
            // No overlayfs in a user namespace: copies of the layers.
            let fallback = "copies of the layers for every step";
            c.detail("filesystem", format!("{fallback} (slower)"));
            c.warnings.push(Problem::new(
                format!(
                    "mounting overlayfs in a user namespace failed ({}), so rootless steps \
                     use {fallback}: slower",
                    os_error(e)
                ),
                if overlay_known() {
                    "use Linux 5.11 or newer (overlayfs with userxattr), or run as root"
                } else {
                    NO_OVERLAY_FIX
                },
            ));
        }
        Ok(Some((stage, e))) => {
            let (what, fix) = match stage {
                1 => (
                    format!("creating a user namespace is refused ({})", os_error(e)),
                    "enable unprivileged user namespaces (sysctls above); inside a container, \
                     a seccomp profile that forbids unshare blocks them: run on the host"
                        .to_owned(),
                ),
                2 => (
                    format!(
                        "mapping ids in a new user namespace failed ({})",
                        os_error(e)
                    ),
                    "check that /proc is mounted read-write".to_owned(),
                ),
                _ => (
                    format!(
                        "the user namespace probe failed at stage {stage} ({})",
                        os_error(e)
                    ),
                    "run `blumeops doctor` as the user that builds".to_owned(),
                ),
            };
            c.problems.push(Problem::new(what, fix));
        }
        Err(e) => c.problems.push(Problem::new(
            format!("the user namespace probe failed: {e}"),
            "check that blumeops may fork and write to the temporary directory",
        )),
    }
    network(&mut c);
    c.detail(
        "fuse-overlayfs",
        find_program("fuse-overlayfs").map_or_else(
            || "not found (used only when asked for)".to_owned(),
            |p| {
                format!(
                    "{} (used only with {}=fuse-overlayfs)",
                    p.display(),
                    crate::sandbox::ROOTLESS_FS_ENV
                )
            },
        ),
    );
    c
}

/// Whether this process (already in a user namespace) can mount overlayfs with `userxattr`,
/// tried in a child with a mount namespace of its own.
pub(crate) fn overlay_mountable() -> bool {
    matches!(probe_overlay(None), Ok(None))
}

/// In a child: a new user namespace mapping only this user (with `Some((uid, gid))`; with
/// `None` the child stays in this process's), a mount namespace, and an overlay with
/// `userxattr` on directories in the temporary directory. `None` when it works, else the
/// failing stage (1 unshare, 2 maps, 3 mount) and errno.
fn probe_overlay(new_userns: Option<(u32, u32)>) -> std::io::Result<Option<(u8, i32)>> {
    let (uid, gid) = new_userns.unwrap_or_default();
    let dir = tempfile::Builder::new()
        .prefix("blumeops-probe-")
        .tempdir()?;
    for d in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir(dir.path().join(d))?;
    }
    let c = |s: String| CString::new(s).map_err(std::io::Error::other);
    let p = |d: &str| dir.path().join(d);
    let data = c(format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        p("lower").display(),
        p("upper").display(),
        p("work").display()
    ))?;
    let merged = CString::new(p("merged").as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let uid_map = format!("0 {uid} 1");
    let gid_map = format!("0 {gid} 1");
    let write = |path: &std::ffi::CStr, text: &str| -> bool {
        // SAFETY: open/write/close on a NUL-terminated path and a byte slice.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd == -1 {
                return false;
            }
            let ok = libc::write(fd, text.as_ptr().cast(), text.len()) == text.len() as isize;
            libc::close(fd);
            ok
        }
    };
    let result = in_child(|| {
        // SAFETY: namespace and mount system calls in the forked child on prepared strings.
        unsafe {
            let userns = if new_userns.is_some() {
                libc::CLONE_NEWUSER
            } else {
                0
            };
            if libc::unshare(userns | libc::CLONE_NEWNS) != 0 {
                return (1, errno());
            }
            if new_userns.is_some()
                && (!write(c"/proc/self/setgroups", "deny")
                    || !write(c"/proc/self/uid_map", &uid_map)
                    || !write(c"/proc/self/gid_map", &gid_map))
            {
                return (2, errno());
            }
            if libc::mount(
                c"overlay".as_ptr(),
                merged.as_ptr(),
                c"overlay".as_ptr(),
                0,
                data.as_ptr().cast(),
            ) != 0
            {
                return (3, errno());
            }
            (0, 0)
        }
    })?;
    // The mount left a mode-000 directory in `work/`, which the temporary directory's own
    // removal cannot enter without root: every rootless run would leave one behind.
    let _ = crate::store::force_remove_dir(dir.path());
    Ok((result.0 != 0).then_some(result))
}
