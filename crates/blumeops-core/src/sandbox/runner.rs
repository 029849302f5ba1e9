//! Running one step in the sandbox: the pipes, the helper process, the output pump and
//! what the children report.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};

use super::child::{self, ChildFds, RECORD, Report};
use super::output::Sink;
use super::plan::{self, Plan};
use super::{
    CancelToken, Error, Requirement, RunOutcome, RunSpec, SetupStep, Stream, TAIL_LINES, cgroup,
    copyfs, network, rootless_fs, user,
};

fn userns_available() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
    let clone_ok = read("/proc/sys/kernel/unprivileged_userns_clone").map_or(true, |v| v != "0");
    let max_ok = read("/proc/sys/user/max_user_namespaces").is_ok_and(|v| v != "0");
    clone_ok && max_ok
}

fn require_root() -> Result<(), Error> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::Unsupported(Requirement::Root {
            userns_available: userns_available(),
        }))
    }
}

/// Check that this host can run sandboxed steps: root, overlayfs and the namespaces.
pub fn check_support() -> Result<(), Error> {
    require_root()?;
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        if !std::path::Path::new("/proc/self/ns").join(ns).exists() {
            return Err(Error::Unsupported(Requirement::Namespace(ns)));
        }
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        // The module may still load on first mount; only refuse when it is not there.
        let module = std::path::Path::new("/sys/module/overlay").exists();
        if !module {
            return Err(Error::Unsupported(Requirement::Overlayfs));
        }
    }
    Ok(())
}

/// An [`Error::Io`] for `action` on `path`.
pub(super) fn io_err<'a>(
    action: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn setup_error(step: SetupStep, path: impl Into<PathBuf>, errno: nix::errno::Errno) -> Error {
    Error::Setup {
        step,
        path: path.into(),
        source: std::io::Error::from_raw_os_error(errno as i32),
    }
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), Error> {
    fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map(drop)
        .map_err(|e| setup_error(SetupStep::Pipe, "/", e))
}

/// Run `spec` in a new sandbox and wait for it. Lines of output go to `on_line` as they
/// arrive. Blocking: call it from a blocking thread.
///
/// Returns the outcome whatever the exit code; errors are failures to set up or to start
/// the command ([`Error::CommandNotFound`] for a command missing from PATH, see
/// [`Error::exit_code`]) and [`Error::Cancelled`].
pub fn run(
    spec: &RunSpec,
    cancel: &CancelToken,
    on_line: &mut dyn FnMut(Stream, &str),
) -> Result<RunOutcome, Error> {
    require_root()?;
    let mut plan = Plan::new(spec)?;
    let mut sink = Sink::new(&spec.log_path, &spec.stdout_path, TAIL_LINES, on_line)?;
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| setup_error(SetupStep::Pipe, &spec.upper, e));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    // The step's pids cgroup, where one can be made.
    let cgroup = spec.pids_max.and_then(cgroup::StepCgroup::create);
    // The init waits on this pipe until it is in its cgroup and its network is up.
    plan.wait_for_go = plan.slirp.is_some() || cgroup.is_some();
    let (net_r, net_w) = if plan.wait_for_go {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let (in_r, in_w): (OwnedFd, Option<OwnedFd>) = match &spec.stdin {
        Some(_) => {
            let (r, w) = pipe()?;
            (r, Some(w))
        }
        None => (
            File::open("/dev/null")
                .map_err(|source| Error::Io {
                    action: "open",
                    path: "/dev/null".into(),
                    source,
                })?
                .into(),
            None,
        ),
    };
    for fd in [&out_r, &err_r, &rep_r].into_iter().chain(in_w.as_ref()) {
        set_nonblocking(fd)?;
    }
    let started = Instant::now();
    let helper = child::spawn(
        &mut plan,
        &ChildFds {
            stdin: in_r.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            report: rep_w.as_raw_fd(),
            net_sync: net_r.as_ref().map(AsRawFd::as_raw_fd),
        },
    )
    .map_err(|source| Error::Setup {
        step: SetupStep::Fork,
        path: plan.merged_path.clone(),
        source,
    })?;
    let helper = Pid::from_raw(helper);
    drop((out_w, err_w, rep_w, in_r, net_r));
    // Started when the init reports its PID; stopped (exit pipe closed) when this returns.
    let mut user_network: Option<network::UserNetwork> = None;
    let mut network_error: Option<Error> = None;
    let slirp = plan.slirp.clone();
    let mut net_w = net_w;
    let mut on_started = |init: Pid| {
        let Some(go) = net_w.take() else {
            return true;
        };
        if let Some(group) = &cgroup
            && let Err(source) = group.add(init.as_raw())
        {
            network_error = Some(Error::Io {
                action: "move the step into the cgroup",
                path: group.path().to_owned(),
                source,
            });
            return false;
        }
        if let Some(slirp) = &slirp {
            match network::UserNetwork::start(slirp, init.as_raw()) {
                Ok(net) => user_network = Some(net),
                Err(e) => {
                    network_error = Some(e);
                    return false;
                }
            }
        }
        nix::unistd::write(&go, &[1]).is_ok()
    };

    let pumped = pump(
        &mut sink,
        cancel,
        helper,
        [out_r, err_r, rep_r],
        in_w,
        spec.stdin.as_deref().unwrap_or_default(),
        &mut on_started,
    );
    drop(user_network);
    // Always reap the helper, even when pumping failed (it is dead or being killed then).
    if pumped.is_err() {
        let _ = kill(helper, Signal::SIGKILL);
    }
    let helper_status = loop {
        match waitpid(helper, None) {
            Err(nix::errno::Errno::EINTR) => {}
            other => break other,
        }
    };
    let duration = started.elapsed();
    let pumped = pumped?;
    if let Some(error) = network_error {
        sink.note(&error_chain(&error))?;
        sink.finish()?;
        return Err(error);
    }
    if pumped.cancelled {
        let _ = sink.note("step cancelled");
        sink.finish()?;
        return Err(Error::Cancelled);
    }
    let failure = pumped
        .reports
        .iter()
        .find(|r| !matches!(r.kind, child::STARTED | child::EXITED));
    if let Some(report) = failure {
        let error = plan_error(&plan, report);
        sink.note(&error_chain(&error))?;
        sink.finish()?;
        return Err(error);
    }
    let Some(status) = pumped
        .reports
        .iter()
        .find(|r| r.kind == child::EXITED)
        .map(|r| r.extra)
    else {
        let status = match helper_status {
            Ok(WaitStatus::Exited(_, code)) => format!("exit code {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => e.to_string(),
        };
        let error = Error::HelperDied { status };
        sink.note(&error.to_string())?;
        sink.finish()?;
        return Err(error);
    };
    if let Some((rootfs, baseline)) = &plan.copy {
        copyfs::diff(rootfs, baseline, &spec.upper)?;
    }
    if let Some(lowers) = &plan.fuse_lowers {
        rootless_fs::normalize_fuse_upper(&spec.upper, lowers)?;
    }
    let (exit_code, signal) = if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (libc::WEXITSTATUS(status), None)
    };
    Ok(RunOutcome {
        exit_code,
        signal,
        duration,
        output_tail: sink.finish()?,
    })
}

pub(super) fn error_chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Turn a failure record from the children into an error.
fn plan_error(plan: &Plan, r: &Report) -> Error {
    let os = || std::io::Error::from_raw_os_error(r.errno);
    match r.kind {
        child::OP_FAILED => match plan.ops.get(r.index as usize) {
            Some(plan::PlannedOp {
                op: plan::Op::OverlayFs { .. },
                ..
            }) if r.errno == libc::EINVAL
                && let Some((layers, length, limit)) = plan.overlay_too_long =>
            {
                Error::TooManyLayers {
                    layers,
                    length,
                    limit,
                }
            }
            Some(op) => Error::Setup {
                step: op.step,
                path: op.path.clone(),
                source: os(),
            },
            None => Error::HelperDied {
                status: format!("bad report {r:?}"),
            },
        },
        child::STEP_FAILED => {
            let step = child::STEPS
                .get(r.index as usize)
                .copied()
                .unwrap_or(SetupStep::Wait);
            let path = match step {
                SetupStep::ReadUserDb if r.extra == 1 => PathBuf::from("/etc/group"),
                SetupStep::ReadUserDb => PathBuf::from("/etc/passwd"),
                SetupStep::CreateWorkdir | SetupStep::EnterWorkdir => {
                    PathBuf::from(&plan.cwd_display)
                }
                SetupStep::SetHostname => PathBuf::from(plan.hostname.to_string_lossy().as_ref()),
                SetupStep::PivotRoot => plan.merged_path.clone(),
                _ => PathBuf::from(&plan.command),
            };
            Error::Setup {
                step,
                path,
                source: os(),
            }
        }
        child::UNKNOWN_USER | child::UNKNOWN_GROUP => {
            let name = |id: Option<&user::Id>| match id {
                Some(user::Id::Name(n)) => String::from_utf8_lossy(n).into_owned(),
                Some(user::Id::Num(n)) => n.to_string(),
                None => String::new(),
            };
            if r.kind == child::UNKNOWN_USER {
                Error::UnknownUser {
                    user: name(Some(&plan.user.user)),
                }
            } else {
                Error::UnknownGroup {
                    group: name(plan.user.group.as_ref()),
                }
            }
        }
        child::EXEC_FAILED => {
            let candidate = plan
                .candidates
                .get(r.index as usize)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_else(|| plan.command.clone());
            let exists = r.extra == 1;
            if r.errno == libc::ENOENT && exists {
                Error::Exec {
                    command: candidate,
                    detail: ": its interpreter (#! line) or dynamic loader is missing",
                    source: os(),
                }
            } else if r.errno == libc::ENOENT && !plan.command.contains('/') {
                Error::CommandNotFound {
                    command: plan.command.clone(),
                    path: plan.path_var.clone(),
                }
            } else {
                Error::Exec {
                    command: candidate,
                    detail: "",
                    source: os(),
                }
            }
        }
        _ => Error::HelperDied {
            status: format!("bad report {r:?}"),
        },
    }
}

/// What the output pump saw.
struct Pumped {
    reports: Vec<Report>,
    cancelled: bool,
}

/// Move output to the sink and stdin to the command until stdout, stderr and the report
/// pipe all reach EOF; watch for cancellation.
fn pump(
    sink: &mut Sink<'_>,
    cancel: &CancelToken,
    helper: Pid,
    fds: [OwnedFd; 3],
    mut stdin: Option<OwnedFd>,
    mut input: &[u8],
    on_started: &mut dyn FnMut(Pid) -> bool,
) -> Result<Pumped, Error> {
    let mut open = [true; 3];
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut reports = Vec::new();
    let mut init: Option<Pid> = None;
    let mut killed = false;
    if input.is_empty() {
        stdin = None;
    }
    while open.iter().any(|o| *o) {
        if cancel.is_cancelled() && !killed {
            match init {
                Some(pid) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    killed = true;
                }
                // Not started yet: the init's PID arrives first thing; the helper dies too
                // so an init that never reports cannot outlive us.
                None if !open[2] => {
                    let _ = kill(helper, Signal::SIGKILL);
                    killed = true;
                }
                None => {}
            }
        }
        let mut ids: Vec<usize> = Vec::with_capacity(4);
        let mut pfds: Vec<PollFd<'_>> = Vec::with_capacity(4);
        for (i, fd) in fds.iter().enumerate().filter(|(i, _)| open[*i]) {
            ids.push(i);
            pfds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        if let Some(w) = &stdin {
            ids.push(3);
            pfds.push(PollFd::new(w.as_fd(), PollFlags::POLLOUT));
        }
        match poll(&mut pfds, PollTimeout::from(50u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(setup_error(SetupStep::Wait, "/", e)),
        }
        let ready: Vec<usize> = ids
            .iter()
            .zip(&pfds)
            .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| *i)
            .collect();
        drop(pfds);
        for i in ready {
            if i == 3 {
                let Some(w) = &stdin else { continue };
                match nix::unistd::write(w, &input[..input.len().min(64 * 1024)]) {
                    Ok(n) => input = &input[n..],
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(_) => input = &[],
                }
                if input.is_empty() {
                    stdin = None;
                }
                continue;
            }
            match nix::unistd::read(&fds[i], &mut buf) {
                Ok(0) => {
                    open[i] = false;
                    if i < 2 {
                        sink.finish_stream(if i == 0 {
                            Stream::Stdout
                        } else {
                            Stream::Stderr
                        })?;
                    }
                }
                Ok(n) if i == 2 => {
                    pending.extend_from_slice(&buf[..n]);
                    while pending.len() >= RECORD {
                        let record: [u8; RECORD] =
                            pending[..RECORD].try_into().unwrap_or([0; RECORD]);
                        pending.drain(..RECORD);
                        let r = Report::decode(&record);
                        if r.kind == child::STARTED {
                            let pid = Pid::from_raw(r.extra);
                            init = Some(pid);
                            // The init waits for its network; without one it must not run.
                            if !on_started(pid) {
                                let _ = kill(pid, Signal::SIGKILL);
                            }
                        }
                        reports.push(r);
                    }
                }
                Ok(n) => {
                    let stream = if i == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    sink.push(stream, &buf[..n])?;
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(setup_error(SetupStep::Wait, "/", e)),
            }
        }
    }
    Ok(Pumped {
        reports,
        cancelled: killed || cancel.is_cancelled() && init.is_none(),
    })
}
