//! The forked side of the sandbox.
//!
//! Process model: the parent forks a *helper*; the helper creates the namespaces
//! (`unshare`), forks the *init* (PID 1 of the new PID namespace) and waits for it. The init
//! mounts the rootfs, switches root, sets the user and executes the command (so the command
//! is PID 1). Both set `PR_SET_PDEATHSIG(SIGKILL)`, so killing blumeops kills the sandbox;
//! when PID 1 dies the kernel kills everything else in its namespace.
//!
//! Both children run after `fork()` in a multi-threaded process, so they only make system
//! calls and never allocate: everything is prepared in [`Plan`]. They talk to the parent
//! through the *report pipe* (fd 3, close-on-exec) in fixed 16-byte records: the init's host
//! PID, a failed setup step with its errno, an exec failure, and the init's wait status.
#![expect(
    unsafe_code,
    reason = "fork, exec and raw system calls between fork and exec need libc"
)]

use std::ffi::CStr;
use std::os::fd::RawFd;

use libc::{c_char, c_int};

use super::error::SetupStep;
use super::plan::{MAX_USERDB, Op, Plan};
use super::user::{self, Id};

/// The report pipe's descriptor in the children.
const REPORT_FD: c_int = 3;
/// Where the init waits for its network (isolated steps only).
const NET_SYNC_FD: c_int = 4;

/// Record kinds.
pub(super) const STARTED: u32 = 1;
pub(super) const OP_FAILED: u32 = 2;
pub(super) const STEP_FAILED: u32 = 3;
pub(super) const UNKNOWN_USER: u32 = 4;
pub(super) const UNKNOWN_GROUP: u32 = 5;
pub(super) const EXEC_FAILED: u32 = 6;
pub(super) const EXITED: u32 = 7;

/// Record size.
pub(super) const RECORD: usize = 16;

/// One record: kind, an index (op, step or exec candidate), an errno, an extra value
/// (PID, wait status, or 1 when a candidate exists but could not run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Report {
    pub(super) kind: u32,
    pub(super) index: u32,
    pub(super) errno: i32,
    pub(super) extra: i32,
}

impl Report {
    fn encode(self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[0..4].copy_from_slice(&self.kind.to_ne_bytes());
        b[4..8].copy_from_slice(&self.index.to_ne_bytes());
        b[8..12].copy_from_slice(&self.errno.to_ne_bytes());
        b[12..16].copy_from_slice(&self.extra.to_ne_bytes());
        b
    }

    pub(super) fn decode(b: &[u8; RECORD]) -> Self {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Self {
            kind: u32::from_ne_bytes(word(0)),
            index: u32::from_ne_bytes(word(4)),
            errno: i32::from_ne_bytes(word(8)),
            extra: i32::from_ne_bytes(word(12)),
        }
    }
}

/// Steps reported by number (`STEP_FAILED`), in a fixed order.
pub(super) const STEPS: [SetupStep; 16] = [
    SetupStep::Unshare,
    SetupStep::ForkInit,
    SetupStep::SetHostname,
    SetupStep::LoopbackUp,
    SetupStep::PivotRoot,
    SetupStep::CreateWorkdir,
    SetupStep::EnterWorkdir,
    SetupStep::ReadUserDb,
    SetupStep::SetGroups,
    SetupStep::SetGid,
    SetupStep::SetUid,
    SetupStep::DropCapabilities,
    SetupStep::Seccomp,
    SetupStep::WaitNetwork,
    SetupStep::MakePrivate,
    SetupStep::Wait,
];

fn step_code(step: SetupStep) -> u32 {
    STEPS.iter().position(|s| *s == step).unwrap_or(0) as u32
}

/// Descriptors handed to the helper.
pub(super) struct ChildFds {
    pub(super) stdin: RawFd,
    pub(super) stdout: RawFd,
    pub(super) stderr: RawFd,
    pub(super) report: RawFd,
    /// Read end of the network-ready pipe, for isolated steps.
    pub(super) net_sync: Option<RawFd>,
}

/// Fork the helper. Returns its PID in the parent; the child never returns.
pub(super) fn spawn(plan: &mut Plan, fds: &ChildFds) -> std::io::Result<libc::pid_t> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the child only runs `helper`, which makes system calls on memory prepared
    // before the fork and ends in `_exit` or `execve`.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => helper(plan, fds, parent),
        pid => Ok(pid),
    }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn report(r: Report) {
    let b = r.encode();
    // SAFETY: writing a local buffer; a short write of 16 bytes to a pipe cannot happen.
    unsafe {
        libc::write(REPORT_FD, b.as_ptr().cast(), b.len());
    }
}

fn exit(code: c_int) -> ! {
    // SAFETY: `_exit` skips atexit handlers and stdio flushing, as a forked child must.
    unsafe { libc::_exit(code) }
}

fn fail_step(step: SetupStep, err: c_int) -> ! {
    fail_step_with(step, err, 0)
}

/// `extra` tells which file for `ReadUserDb` (0 passwd, 1 group).
fn fail_step_with(step: SetupStep, err: c_int, extra: i32) -> ! {
    report(Report {
        kind: STEP_FAILED,
        index: step_code(step),
        errno: err,
        extra,
    });
    exit(125)
}

fn check(ret: c_int, step: SetupStep) {
    if ret == -1 {
        fail_step(step, errno());
    }
}

/// Default handlers and an empty signal mask (the parent's tokio runtime may have installed
/// handlers; ignored signals would survive exec).
fn reset_signals() {
    // SAFETY: plain signal-state system calls on local data.
    unsafe {
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The helper: namespaces, then fork the init and relay its status.
fn helper(plan: &mut Plan, fds: &ChildFds, parent: libc::pid_t) -> ! {
    reset_signals();
    // SAFETY: system calls on descriptors and values owned by this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            exit(1);
        }
        // Move our descriptors to 0..=4 and close everything else: other runs' pipes must
        // not stay open here (they would never see EOF while we live).
        let mut high = [0; 5];
        for (slot, fd) in high.iter_mut().zip([
            fds.stdin,
            fds.stdout,
            fds.stderr,
            fds.report,
            fds.net_sync.unwrap_or(fds.report),
        ]) {
            *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
            if *slot == -1 {
                exit(1);
            }
        }
        for (target, fd) in (0..3).zip(high) {
            if libc::dup2(fd, target) == -1 {
                exit(1);
            }
        }
        if libc::dup3(high[3], REPORT_FD, libc::O_CLOEXEC) == -1 {
            exit(1);
        }
        // Without a network to wait for, fd 4 is a spare copy of the report pipe, closed
        // below with the rest.
        let keep = if fds.net_sync.is_some() {
            if libc::dup3(high[4], NET_SYNC_FD, libc::O_CLOEXEC) == -1 {
                exit(1);
            }
            5u32
        } else {
            4u32
        };
        if libc::syscall(libc::SYS_close_range, keep, u32::MAX, 0u32) == -1 {
            for fd in keep as c_int..4096 {
                libc::close(fd);
            }
        }
    }
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if plan.own_network {
        flags |= libc::CLONE_NEWNET;
    }
    // fuse-overlayfs first, in a mount namespace of this helper but outside the step's PID
    // namespace (created below, so that the init is its PID 1).
    let fuse = match &plan.fuse {
        Some(f) => {
            // SAFETY: unshare and mount affect only this process's namespaces.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNS), SetupStep::Unshare);
                let private = libc::MS_REC | libc::MS_PRIVATE;
                let root = c"/".as_ptr();
                let null = std::ptr::null();
                check(
                    libc::mount(null, root, null, private, null.cast()),
                    SetupStep::MakePrivate,
                );
            }
            flags &= !libc::CLONE_NEWNS;
            Some(start_fuse(f))
        }
        None => None,
    };
    // SAFETY: unshare affects only this process.
    check(unsafe { libc::unshare(flags) }, SetupStep::Unshare);
    // SAFETY: the init child only makes system calls on prepared memory (see `init`).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => fail_step(SetupStep::ForkInit, errno()),
        0 => init(plan),
        _ => {}
    }
    report(Report {
        kind: STARTED,
        index: 0,
        errno: 0,
        extra: pid,
    });
    // SAFETY: closing our copies of the output pipes; the init holds its own.
    unsafe {
        for fd in 0..3 {
            libc::close(fd);
        }
    }
    let mut status: c_int = 0;
    loop {
        // SAFETY: waiting for our own child into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r == -1 && errno() != libc::EINTR {
            fail_step(SetupStep::Wait, errno());
        }
    }
    if let Some(daemon) = fuse {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(daemon, libc::SIGKILL);
            libc::waitpid(daemon, std::ptr::null_mut(), 0);
        }
    }
    report(Report {
        kind: EXITED,
        index: 0,
        errno: 0,
        extra: status,
    });
    exit(0)
}

/// fuse's superblock magic, as `statfs` reports it.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Start fuse-overlayfs in the foreground and wait until its mount is up. Returns its PID.
fn start_fuse(fuse: &super::plan::FuseMount) -> libc::pid_t {
    // SAFETY: fork, then in the child only descriptor calls and execve on prepared strings;
    // in this process statfs polling on a prepared path and waitpid on the child.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // Not the step's output, and none of the step's pipes (they must reach EOF).
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let envp: [*const c_char; 1] = [std::ptr::null()];
            libc::execve(fuse.program.as_ptr(), fuse.argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
        if pid < 0 {
            fail_step(SetupStep::MountOverlay, errno());
        }
        // Up to 10 s for the mount to appear; the daemon exiting means it failed.
        for _ in 0..2000 {
            let mut st: libc::statfs = std::mem::zeroed();
            if libc::statfs(fuse.merged.as_ptr(), &mut st) == 0
                && st.f_type as i64 == FUSE_SUPER_MAGIC
            {
                return pid;
            }
            let mut status = 0;
            if libc::waitpid(pid, &mut status, libc::WNOHANG) == pid {
                fail_step(SetupStep::MountOverlay, libc::EIO);
            }
            libc::usleep(5000);
        }
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        fail_step(SetupStep::MountOverlay, libc::ETIMEDOUT)
    }
}

fn apply(op: &Op) -> c_int {
    let opt = |s: &Option<std::ffi::CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer comes from a CString owned by the plan.
    unsafe {
        match op {
            Op::Chdir { path } => libc::chdir(path.as_ptr()),
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => libc::mount(
                opt(source),
                target.as_ptr(),
                opt(fstype),
                *flags,
                opt(data).cast(),
            ),
            Op::OverlayFs { target, options } => mount_overlay_fs(target, options),
            Op::Sysfs { target } => {
                let ro = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
                let sysfs = c"sysfs".as_ptr();
                if libc::mount(sysfs, target.as_ptr(), sysfs, ro, std::ptr::null()) == 0 {
                    return 0;
                }
                if errno() != libc::EPERM {
                    return -1;
                }
                // A user namespace may mount sysfs only with its own network namespace: show
                // the host's, read-only (keeping the flags the kernel locks on it).
                let bind = libc::MS_BIND | libc::MS_REC;
                if libc::mount(
                    c"/sys".as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    bind,
                    std::ptr::null(),
                ) == -1
                {
                    return -1;
                }
                libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | ro,
                    std::ptr::null(),
                )
            }
            Op::Mkdir { path, mode } => libc::mkdir(path.as_ptr(), *mode),
            Op::Device { path, host } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o666,
                );
                if fd == -1 {
                    return -1;
                }
                libc::close(fd);
                libc::mount(
                    host.as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            }
            Op::Symlink { target, link } => libc::symlink(target.as_ptr(), link.as_ptr()),
        }
    }
}

/// Mount an overlay with fsopen/fsconfig/fsmount/move_mount (no option length limit).
fn mount_overlay_fs(target: &CStr, options: &[(std::ffi::CString, std::ffi::CString)]) -> c_int {
    // SAFETY: raw mount-API system calls on NUL-terminated strings owned by the plan and on
    // descriptors opened (and closed) here.
    unsafe {
        let fs =
            libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), libc::FSOPEN_CLOEXEC) as c_int;
        if fs == -1 {
            return -1;
        }
        let close_with = |fds: &[c_int]| {
            let saved = errno();
            for fd in fds {
                libc::close(*fd);
            }
            *libc::__errno_location() = saved;
            -1
        };
        for (key, value) in options {
            // An empty value is a flag option (`userxattr`).
            let (cmd, value) = if value.is_empty() {
                (libc::FSCONFIG_SET_FLAG, std::ptr::null())
            } else {
                (libc::FSCONFIG_SET_STRING, value.as_ptr())
            };
            let r = libc::syscall(libc::SYS_fsconfig, fs, cmd, key.as_ptr(), value, 0);
            if r == -1 {
                return close_with(&[fs]);
            }
        }
        let create = libc::FSCONFIG_CMD_CREATE;
        let null = std::ptr::null::<c_char>();
        if libc::syscall(libc::SYS_fsconfig, fs, create, null, null, 0) == -1 {
            return close_with(&[fs]);
        }
        let mnt = libc::syscall(libc::SYS_fsmount, fs, libc::FSMOUNT_CLOEXEC, 0) as c_int;
        if mnt == -1 {
            return close_with(&[fs]);
        }
        let r = libc::syscall(
            libc::SYS_move_mount,
            mnt,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        );
        if r == -1 {
            return close_with(&[mnt, fs]);
        }
        libc::close(mnt);
        libc::close(fs);
        0
    }
}

/// Bring up `lo` in the new network namespace.
fn loopback_up() -> c_int {
    // SAFETY: a socket and two ioctls on a zeroed ifreq owned by this frame.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock == -1 {
            return -1;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as c_char;
        }
        let mut ret = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if ret != -1 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            ret = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        let saved = errno();
        libc::close(sock);
        if ret == -1 {
            *libc::__errno_location() = saved;
        }
        ret
    }
}

/// `mkdir -p` on the NUL-terminated path in `buf` (mutated in place, restored).
fn mkdir_p(buf: &mut [u8]) -> c_int {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    for i in 1..=end {
        if i < end && buf[i] != b'/' {
            continue;
        }
        let saved = buf[i];
        buf[i] = 0;
        // SAFETY: `buf` is NUL-terminated at `i`.
        let r = unsafe { libc::mkdir(buf.as_ptr().cast(), 0o755) };
        let e = errno();
        buf[i] = saved;
        if r == -1 && e != libc::EEXIST {
            return -1;
        }
    }
    0
}

/// Read a whole file into `buf`; a missing file reads as empty. Fails with EFBIG when the
/// file does not fit.
fn read_file(path: &CStr, buf: &mut [u8]) -> Result<usize, c_int> {
    // SAFETY: reading into a buffer owned by the plan, within its length.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        );
        if fd == -1 {
            let e = errno();
            return if e == libc::ENOENT { Ok(0) } else { Err(e) };
        }
        let mut len = 0;
        loop {
            if len == buf.len() {
                libc::close(fd);
                return Err(libc::EFBIG);
            }
            let n = libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len);
            if n == -1 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                libc::close(fd);
                return Err(e);
            }
            if n == 0 {
                break;
            }
            len += n as usize;
        }
        libc::close(fd);
        Ok(len)
    }
}

/// Capabilities kept (Docker's default set); every other one leaves the bounding set.
const KEPT_CAPS: [c_int; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

fn drop_capabilities() -> c_int {
    // SAFETY: prctl with integer arguments.
    unsafe {
        for cap in 0..64 {
            if KEPT_CAPS.contains(&cap) {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == -1 {
                if errno() == libc::EINVAL {
                    break; // past the kernel's last capability
                }
                return -1;
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    0
}

/// Resolve the user against the image and switch to it; fill HOME if wanted.
fn become_user(plan: &mut Plan) {
    let (passwd_buf, group_buf) = plan.userdb.split_at_mut(MAX_USERDB);
    let passwd_len = read_file(c"/etc/passwd", passwd_buf)
        .unwrap_or_else(|e| fail_step(SetupStep::ReadUserDb, e));
    let group_len = read_file(c"/etc/group", group_buf)
        .unwrap_or_else(|e| fail_step_with(SetupStep::ReadUserDb, e, 1));
    let passwd = &passwd_buf[..passwd_len];
    let group = &group_buf[..group_len];
    let entry = user::find_passwd(passwd, &plan.user.user);
    let uid = match (&plan.user.user, entry) {
        (Id::Num(n), _) => *n,
        (Id::Name(_), Some(e)) => e.uid,
        (Id::Name(_), None) => {
            report(Report {
                kind: UNKNOWN_USER,
                index: 0,
                errno: 0,
                extra: 0,
            });
            exit(125)
        }
    };
    let gid = match &plan.user.group {
        None => entry.map_or(0, |e| e.gid),
        Some(Id::Num(g)) => *g,
        Some(Id::Name(name)) => user::find_group(group, name).unwrap_or_else(|| {
            report(Report {
                kind: UNKNOWN_GROUP,
                index: 0,
                errno: 0,
                extra: 0,
            });
            exit(125)
        }),
    };
    plan.groups.clear();
    plan.groups.push(gid);
    if plan.user.group.is_none()
        && let Some(e) = entry
    {
        user::member_groups(group, e.name, &mut plan.groups);
    }
    if plan.needs_home {
        let home = entry
            .map(|e| e.home)
            .filter(|h| !h.is_empty())
            .unwrap_or(b"/");
        let max = plan.home_env.len() - 6;
        let home = &home[..home.len().min(max)];
        plan.home_env[..5].copy_from_slice(b"HOME=");
        plan.home_env[5..5 + home.len()].copy_from_slice(home);
        plan.home_env[5 + home.len()] = 0;
    }
    // Last while the init still has CAP_SYS_ADMIN (no `no_new_privs` needed, so setuid
    // programs keep working), after every mount.
    for prog in &plan.seccomp {
        // SAFETY: the program outlives the process; seccomp copies it into the kernel.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                prog as *const libc::sock_fprog,
            )
        };
        check(r as c_int, SetupStep::Seccomp);
    }
    check(drop_capabilities(), SetupStep::DropCapabilities);
    // SAFETY: `groups` holds `len` gids; setgid/setuid take integers.
    unsafe {
        if !plan.setgroups_denied {
            check(
                libc::setgroups(plan.groups.len(), plan.groups.as_ptr()),
                SetupStep::SetGroups,
            );
        }
        check(libc::setgid(gid), SetupStep::SetGid);
        check(libc::setuid(uid), SetupStep::SetUid);
    }
}

/// PID 1: mounts, root switch, user, exec.
fn init(plan: &mut Plan) -> ! {
    // SAFETY: system calls on prepared C strings (see each call).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::umask(0);
    }
    if plan.fuse.is_some() {
        // A mount namespace of our own (with the fuse mount in it): pivot_root moves the
        // root of every process of a namespace, and the daemon's must stay where it is.
        // SAFETY: unshare affects only this process.
        check(
            unsafe { libc::unshare(libc::CLONE_NEWNS) },
            SetupStep::Unshare,
        );
    }
    for (i, planned) in plan.ops.iter().enumerate() {
        if apply(&planned.op) == -1 {
            report(Report {
                kind: OP_FAILED,
                index: i as u32,
                errno: errno(),
                extra: 0,
            });
            exit(125);
        }
    }
    // SAFETY: the hostname and paths are NUL-terminated strings of the plan.
    unsafe {
        let name = plan.hostname.as_bytes();
        check(
            libc::sethostname(name.as_ptr().cast(), name.len()),
            SetupStep::SetHostname,
        );
        if plan.own_network {
            check(loopback_up(), SetupStep::LoopbackUp);
        }
        if plan.wait_for_go {
            // The parent moves us into our cgroup and starts slirp4netns on our network
            // namespace, then says so.
            let mut go = [0u8; 1];
            let n = libc::read(NET_SYNC_FD, go.as_mut_ptr().cast(), 1);
            if n != 1 {
                fail_step(
                    SetupStep::WaitNetwork,
                    if n == 0 { libc::EPIPE } else { errno() },
                );
            }
            libc::close(NET_SYNC_FD);
        }
        check(libc::chdir(plan.merged.as_ptr()), SetupStep::PivotRoot);
        check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as c_int,
            SetupStep::PivotRoot,
        );
        check(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            SetupStep::PivotRoot,
        );
        check(libc::chdir(c"/".as_ptr()), SetupStep::PivotRoot);
        libc::umask(0o022);
    }
    check(mkdir_p(&mut plan.cwd), SetupStep::CreateWorkdir);
    // SAFETY: `cwd` is NUL-terminated.
    check(
        unsafe { libc::chdir(plan.cwd.as_ptr().cast()) },
        SetupStep::EnterWorkdir,
    );
    become_user(plan);
    exec(plan)
}

/// Try each candidate like execvp; report why none ran.
fn exec(plan: &mut Plan) -> ! {
    // The pointer arrays have their capacity reserved: these pushes do not allocate.
    plan.argv_ptrs.clear();
    plan.argv_ptrs.extend(plan.argv.iter().map(|a| a.as_ptr()));
    plan.argv_ptrs.push(std::ptr::null());
    plan.envp_ptrs.clear();
    plan.envp_ptrs.extend(plan.envp.iter().map(|e| e.as_ptr()));
    if plan.needs_home {
        plan.envp_ptrs.push(plan.home_env.as_ptr().cast());
    }
    plan.envp_ptrs.push(std::ptr::null());
    let (argv_ptrs, envp_ptrs) = (&plan.argv_ptrs, &plan.envp_ptrs);
    let mut denied: Option<usize> = None;
    let mut last = libc::ENOENT;
    for (i, candidate) in plan.candidates.iter().enumerate() {
        // SAFETY: NUL-terminated strings and NULL-terminated pointer arrays from the plan.
        unsafe {
            libc::execve(candidate.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
        }
        let e = errno();
        match e {
            libc::ENOENT => {
                // SAFETY: NUL-terminated path.
                if unsafe { libc::access(candidate.as_ptr(), libc::F_OK) } == 0 {
                    exec_failed(i, e, true);
                }
            }
            libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => last = e,
            libc::EACCES => {
                denied.get_or_insert(i);
            }
            _ => exec_failed(i, e, true),
        }
    }
    match denied {
        Some(i) => exec_failed(i, libc::EACCES, true),
        None => exec_failed(0, last, false),
    }
}

fn exec_failed(index: usize, err: c_int, exists: bool) -> ! {
    report(Report {
        kind: EXEC_FAILED,
        index: index as u32,
        errno: err,
        extra: i32::from(exists),
    });
    exit(if exists && err != libc::ENOENT {
        126
    } else {
        127
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Report {
            kind: EXEC_FAILED,
            index: 3,
            errno: libc::ENOENT,
            extra: -7,
        };
        assert_eq!(Report::decode(&r.encode()), r);
    }

    #[test]
    fn step_codes_are_distinct() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(step_code(*s) as usize, i);
        }
    }
}
