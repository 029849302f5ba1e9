//! Sandbox tests on a tiny busybox rootfs. They need root; without it they are skipped
//! (see [`crate::testing::skip`]). [`suite_passes_in_a_user_namespace`] runs them all again
//! as root of a user namespace: the rootless executor's sandbox.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::runner::error_chain;
use super::*;

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "mkdir", "hostname", "touch", "rm", "sleep", "env", "pwd",
    "seq", "wc", "head", "test", "grep", "kill", "stat", "readlink", "mknod", "unshare", "mount",
    "nc",
];

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    crate::testing::skip("sandbox tests need root (or the user namespace of the rootless suite)");
    false
}

/// A busybox base layer and a place for steps.
struct Fixture {
    dir: TempDir,
    base: PathBuf,
    steps: AtomicUsize,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        for d in ["bin", "etc", "root", "home/app", "data"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", base.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", base.join("bin").join(applet)).unwrap();
        }
        fs::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            base.join("etc/group"),
            "root:x:0:\nwheel:x:10:app\napp:x:1000:\n",
        )
        .unwrap();
        fs::write(base.join("data/keep.txt"), "keep").unwrap();
        fs::write(base.join("data/who"), "base").unwrap();
        // Modes independent of the umask the tests run with.
        for path in tree(&base) {
            let path = base.join(path);
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = if meta.is_dir() || path.ends_with("busybox") {
                0o755
            } else if meta.is_file() {
                0o644
            } else {
                continue;
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        std::os::unix::fs::chown(base.join("home/app"), Some(1000), Some(1000)).unwrap();
        fs::set_permissions(base.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            dir,
            base,
            steps: AtomicUsize::new(0),
        }
    }

    /// A layer directory with extra files (path, contents) on top of the base.
    fn layer(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = self.dir.path().join(name);
        fs::create_dir_all(&root).unwrap();
        for (path, contents) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, contents).unwrap();
        }
        root
    }

    fn spec(&self, args: &[&str]) -> RunSpec {
        let n = self.steps.fetch_add(1, Ordering::SeqCst);
        let step = self.dir.path().join(format!("step{n}"));
        for d in ["upper", "work"] {
            fs::create_dir_all(step.join(d)).unwrap();
        }
        RunSpec {
            lowers: vec![self.base.clone()],
            upper: step.join("upper"),
            work: step.join("work"),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: None,
            hostname: "sandbox-test".into(),
            network: Network::None,
            mounts: Vec::new(),
            tmpfs: Vec::new(),
            stdin: None,
            log_path: step.join("log"),
            stdout_path: step.join("stdout"),
            pids_max: Some(DEFAULT_PIDS_MAX),
        }
    }
}

struct Ran {
    outcome: RunOutcome,
    lines: Vec<(Stream, String)>,
    stdout: String,
    log: String,
}

fn try_run(spec: &RunSpec) -> Result<Ran, Error> {
    let mut lines = Vec::new();
    let outcome = run(spec, &CancelToken::new(), &mut |s, l| {
        lines.push((s, l.to_owned()));
    })?;
    Ok(Ran {
        outcome,
        lines,
        stdout: fs::read_to_string(&spec.stdout_path).unwrap(),
        log: fs::read_to_string(&spec.log_path).unwrap(),
    })
}

fn run_ok(spec: &RunSpec) -> Ran {
    let ran = try_run(spec).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert_eq!(ran.outcome.exit_code, 0, "log:\n{}", ran.log);
    ran
}

/// Every path in `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn no_sandbox_leftovers(spec: &RunSpec) {
    let parent = spec.upper.parent().unwrap();
    for entry in fs::read_dir(parent).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with(".sandbox-"),
            "sandbox directory left in {}",
            parent.display()
        );
    }
}

#[test]
fn reports_exit_codes() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let ran = try_run(&fx.spec(&["sh", "-c", "exit 3"])).unwrap();
    assert_eq!((ran.outcome.exit_code, ran.outcome.signal), (3, None));
    assert_eq!(run_ok(&fx.spec(&["sh", "-c", "true"])).outcome.exit_code, 0);
    // A child killed by a signal: the shell reports 128 + 9.
    let ran = try_run(&fx.spec(&["sh", "-c", "sh -c 'kill -9 $$'; exit $?"])).unwrap();
    assert_eq!(ran.outcome.exit_code, 137);
}

#[test]
fn reports_a_kill_from_outside_as_a_signal() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let spec = fx.spec(&["sleep", "1002"]);
    let ran = std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(pid) = pids_with("1002").first() {
                    let _ = kill(*pid, Signal::SIGKILL);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        try_run(&spec).unwrap()
    });
    assert_eq!((ran.outcome.exit_code, ran.outcome.signal), (137, Some(9)));
}

#[test]
fn captures_stdout_stderr_and_the_log() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let spec = fx.spec(&["sh", "-c", "echo out1; echo err1 >&2; sleep 0.1; echo out2"]);
    let ran = run_ok(&spec);
    assert_eq!(ran.stdout, "out1\nout2\n");
    assert_eq!(
        ran.lines,
        [
            (Stream::Stdout, "out1".to_owned()),
            (Stream::Stderr, "err1".to_owned()),
            (Stream::Stdout, "out2".to_owned()),
        ]
    );
    let mut log: Vec<&str> = ran.log.lines().collect();
    log.sort_unstable();
    assert_eq!(log, ["err1", "out1", "out2"]);
    assert_eq!(ran.outcome.output_tail.len(), 3);
    no_sandbox_leftovers(&spec);
}

#[test]
fn sets_env_and_creates_the_workdir_in_the_layer() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "echo $FOO; pwd; echo $HOME; echo $PATH"]);
    spec.env = vec!["FOO=one".into(), "PATH=/bin".into(), "FOO=bar".into()];
    spec.cwd = "/work/dir".into();
    let ran = run_ok(&spec);
    assert_eq!(ran.stdout, "bar\n/work/dir\n/root\n/bin\n");
    let created = spec.upper.join("work/dir");
    assert!(created.is_dir());
    assert_eq!(fs::metadata(created).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(tree(&spec.upper), ["work", "work/dir"]);
}

#[test]
fn runs_as_the_image_user() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "id -u; id -g; id -G; echo $HOME"]);
    spec.user = Some("app".into());
    // Regression: the upper directory's mode is the container's `/`; a umask-077 upper
    // made everything unreachable for non-root users.
    fs::set_permissions(&spec.upper, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(run_ok(&spec).stdout, "1000\n1000\n1000 10\n/home/app\n");

    let mut spec = fx.spec(&["sh", "-c", "id -u; id -G"]);
    spec.user = Some("1000:10".into());
    assert_eq!(run_ok(&spec).stdout, "1000\n10\n");

    let mut spec = fx.spec(&["id", "-u"]);
    spec.user = Some("nobody".into());
    let err = try_run(&spec).err().unwrap();
    assert!(matches!(err, Error::UnknownUser { .. }), "{err}");
    assert!(
        fs::read_to_string(&spec.log_path)
            .unwrap()
            .contains("nobody")
    );
}

#[test]
fn isolates_pids_hostname_and_network() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "echo $$; hostname; grep -c '^ *[a-z0-9]*:' /proc/net/dev; grep -o 'lo:' /proc/net/dev; \
         grep sandbox-test /etc/hosts >/dev/null && echo hosts-ok",
    ]);
    spec.hostname = "sandbox-test".into();
    let ran = run_ok(&spec);
    assert_eq!(ran.stdout, "1\nsandbox-test\n1\nlo:\nhosts-ok\n");
    let ls = run_ok(&fx.spec(&["sh", "-c", "ls /proc | grep -c '^[0-9]'"]));
    // The shell and ls (and perhaps grep): only this sandbox's processes.
    assert!(
        ls.stdout.trim().parse::<u32>().unwrap() <= 3,
        "{}",
        ls.stdout
    );
}

#[test]
fn writes_go_to_upper_and_deletions_become_whiteouts() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let top = fx.layer("top", &[("data/who", "top")]);
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "cat /data/who; echo hi > /new.txt; rm /data/keep.txt; ls /dev/null /proc/1 >/dev/null; \
         head -c 4 /dev/zero | wc -c; test -c /dev/null; test -L /dev/fd; test -e /dev/pts/ptmx; \
         cat /etc/resolv.conf >/dev/null",
    ]);
    spec.lowers.push(top.clone());
    let ran = run_ok(&spec);
    assert_eq!(ran.stdout, "top4\n");
    assert_eq!(
        fs::read_to_string(spec.upper.join("new.txt")).unwrap(),
        "hi\n"
    );
    assert!(!fx.base.join("new.txt").exists());
    assert!(fx.base.join("data/keep.txt").exists());
    let whiteout = fs::symlink_metadata(spec.upper.join("data/keep.txt")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    // Nothing else: no /proc, /dev, /sys, /etc/hosts, /etc/resolv.conf mountpoints.
    assert_eq!(tree(&spec.upper), ["data", "data/keep.txt", "new.txt"]);
    no_sandbox_leftovers(&spec);
}

/// A directory removed and made again hides everything that was below it (overlayfs makes
/// it opaque), also when the filesystem gives it the old directory's inode number, as ext4
/// does at once: several runs, so that such a reuse happens.
#[test]
fn a_directory_removed_and_made_again_is_opaque() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    for _ in 0..4 {
        let spec = fx.spec(&[
            "sh",
            "-c",
            "rm -rf /data && mkdir /data && echo new > /data/new",
        ]);
        run_ok(&spec);
        assert_eq!(tree(&spec.upper), ["data", "data/new"]);
        assert!(
            crate::layer::is_opaque(&spec.upper.join("data")),
            "the new /data is not opaque"
        );
    }
}

#[test]
fn mountpoints_existing_in_the_image_stay_out_of_upper() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let etc = fx.layer(
        "etc",
        &[
            ("etc/hosts", "image hosts\n"),
            ("proc/.keep", ""),
            ("dev/null", "fake"),
        ],
    );
    symlink("/run/resolv.conf", etc.join("etc/resolv.conf")).unwrap();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "cat /etc/hosts; test -L /etc/resolv.conf || echo resolv-is-a-file; test -c /dev/null && echo dev-ok",
    ]);
    spec.lowers.push(etc);
    spec.network = Network::Host;
    let ran = run_ok(&spec);
    assert!(!ran.stdout.contains("image hosts"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("127.0.1.1\tsandbox-test"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.ends_with("resolv-is-a-file\ndev-ok\n"),
        "{}",
        ran.stdout
    );
    assert!(tree(&spec.upper).is_empty(), "{:?}", tree(&spec.upper));
}

#[test]
fn cache_mounts_persist_and_stay_out_of_the_layer() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let cache = fx.dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let mount = BindMount {
        source: cache.clone(),
        target: "/root/.cache/go-build".into(),
        read_only: false,
    };
    let mut first = fx.spec(&["sh", "-c", "echo 1 >> /root/.cache/go-build/count"]);
    first.mounts.push(mount.clone());
    run_ok(&first);
    let mut second = fx.spec(&[
        "sh",
        "-c",
        "cat /root/.cache/go-build/count; stat -c %a /root",
    ]);
    second.mounts.push(mount);
    // The scaffold copies /root's mode.
    assert_eq!(run_ok(&second).stdout, "1\n700\n");
    assert_eq!(fs::read_to_string(cache.join("count")).unwrap(), "1\n");
    assert!(tree(&first.upper).is_empty(), "{:?}", tree(&first.upper));
    assert!(tree(&second.upper).is_empty());

    let mut ro = fx.spec(&["sh", "-c", "touch /ro/x"]);
    ro.mounts.push(BindMount {
        source: cache,
        target: "/ro".into(),
        read_only: true,
    });
    assert_ne!(try_run(&ro).unwrap().outcome.exit_code, 0);
}

#[test]
fn scratch_rootfs_with_a_mounted_busybox() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let mut spec = fx.spec(&["/bin/busybox", "echo", "from scratch"]);
    spec.lowers.clear();
    spec.mounts.push(BindMount {
        source: fx.base.join("bin"),
        target: "/bin".into(),
        read_only: true,
    });
    assert_eq!(run_ok(&spec).stdout, "from scratch\n");
    assert!(tree(&spec.upper).is_empty(), "{:?}", tree(&spec.upper));
}

#[test]
fn mounts_more_layers_than_fit_in_one_page() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "ls /l | wc -l; cat /l/who"]);
    for i in 0..70 {
        let name = format!("layer-{i:03}-{}", "x".repeat(60));
        let layer = fx.layer(
            &name,
            &[(&format!("l/{i}"), ""), ("l/who", &format!("{i}"))],
        );
        spec.lowers.push(layer);
    }
    let ran = run_ok(&spec);
    // 70 numbered files plus `who`, which the topmost layer wins.
    assert_eq!(ran.stdout, "71\n69");
    assert!(tree(&spec.upper).is_empty());
}

#[test]
fn a_long_run_does_not_hold_up_a_short_one() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let long = fx.spec(&["sleep", "3"]);
    let short = fx.spec(&["echo", "quick"]);
    std::thread::scope(|s| {
        let slow = s.spawn(|| run_ok(&long));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(run_ok(&short).stdout, "quick\n");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        slow.join().unwrap();
    });
}

#[test]
fn feeds_stdin() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let mut spec = fx.spec(&["cat"]);
    spec.stdin = Some(b"hello\nworld\n".to_vec());
    assert_eq!(run_ok(&spec).stdout, "hello\nworld\n");

    let mut spec = fx.spec(&["wc", "-c"]);
    spec.stdin = Some(vec![b'x'; 3 << 20]);
    assert_eq!(run_ok(&spec).stdout.trim(), (3 << 20).to_string());

    // Without stdin the command reads /dev/null.
    assert_eq!(run_ok(&fx.spec(&["wc", "-c"])).stdout.trim(), "0");
}

#[test]
fn missing_commands_fail_clearly() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let spec = fx.spec(&["no-such-command", "x"]);
    let err = try_run(&spec).err().unwrap();
    assert_eq!(
        err.to_string(),
        "failed to execute `no-such-command`: not found in PATH=/bin"
    );
    assert_eq!(err.exit_code(), Some(127));
    assert!(
        fs::read_to_string(&spec.log_path)
            .unwrap()
            .contains("not found in PATH")
    );

    let err = try_run(&fx.spec(&["/data/keep.txt"])).err().unwrap();
    assert!(matches!(err, Error::Exec { .. }), "{err}");
    assert_eq!(err.exit_code(), Some(126));

    let mut spec = fx.spec(&["ls"]);
    spec.cwd = "/data/keep.txt/sub".into();
    let err = try_run(&spec).err().unwrap();
    assert!(
        matches!(
            err,
            Error::Setup {
                step: SetupStep::CreateWorkdir | SetupStep::EnterWorkdir,
                ..
            }
        ),
        "{err}"
    );
}

/// Host PIDs of `sleep <marker>` processes.
fn pids_with(marker: &str) -> Vec<Pid> {
    let want = format!("sleep\0{marker}\0");
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            (cmdline == want.as_bytes()).then(|| Pid::from_raw(pid))
        })
        .collect()
}

#[test]
fn cancel_kills_the_whole_tree() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    // A marker of this process's own: the same suite may run at once in other processes
    // (the user-namespace suites), and their sleepers must not count here.
    let marker = (1_000_000 + std::process::id()).to_string();
    let script = format!("sleep {marker} & sleep {marker} & echo started; sleep {marker}");
    let spec = fx.spec(&["sh", "-c", &script]);
    let cancel = CancelToken::new();
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        let c = cancel.clone();
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            c.cancel();
        });
        run(&spec, &cancel, &mut |_, _| {})
    });
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(pids_with(&marker), []);
    no_sandbox_leftovers(&spec);
}

#[test]
fn long_output_keeps_a_bounded_tail() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let spec = fx.spec(&["seq", "1", "100000"]);
    let mut count = 0usize;
    let outcome = run(&spec, &CancelToken::new(), &mut |_, _| count += 1).unwrap();
    assert_eq!(count, 100_000);
    assert_eq!(outcome.output_tail.len(), TAIL_LINES);
    assert_eq!(outcome.output_tail.first().unwrap(), "99801");
    assert_eq!(outcome.output_tail.last().unwrap(), "100000");
    assert_eq!(
        fs::read_to_string(&spec.log_path).unwrap().lines().count(),
        100_000
    );
}

#[test]
fn check_support_passes_as_root() {
    if !is_root() {
        return;
    }
    check_support().unwrap();
}

/// A hostile step cannot make a device node anywhere it can write: the rootfs (overlay),
/// /dev, a cache volume. A 0/0 character device (an overlay whiteout) stays allowed.
#[test]
fn device_nodes_cannot_be_created_anywhere() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let cache = fx.dir.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "mkdir -p /tmp; for d in /dev /tmp /root /data /c; do \
           mknod $d/hd b 254 0 && echo made $d/hd; mknod $d/mem c 1 1 && echo made $d/mem; \
         done; mknod /dev/wh c 0 0 && echo whiteout ok; true",
    ]);
    spec.mounts.push(BindMount {
        source: cache.clone(),
        target: "/c".into(),
        read_only: false,
    });
    let ran = run_ok(&spec);
    assert!(
        !ran.log.contains("made "),
        "a device node was made:\n{}",
        ran.log
    );
    assert_eq!(
        ran.log.matches("Operation not permitted").count(),
        10,
        "{}",
        ran.log
    );
    assert!(ran.stdout.contains("whiteout ok"), "{}", ran.log);
    assert!(tree(&cache).is_empty(), "{:?}", tree(&cache));
    // Only the /tmp the step made itself.
    assert_eq!(tree(&spec.upper), ["tmp"], "{:?}", tree(&spec.upper));
}

/// A device node that comes with the image (a base layer carrying one) cannot be opened:
/// the rootfs is mounted nodev. In a user namespace no such node can even be made.
#[test]
fn device_nodes_in_the_image_cannot_be_opened() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let layer = fx.layer("devices", &[]);
    let made = nix::sys::stat::mknod(
        &layer.join("mem"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    );
    if crate::executor::in_user_namespace() {
        assert_eq!(made, Err(nix::errno::Errno::EPERM));
        return;
    }
    made.unwrap();
    let mut spec = fx.spec(&["sh", "-c", "echo x > /mem; echo w=$?; cat /mem; echo r=$?"]);
    spec.lowers.push(layer);
    let ran = run_ok(&spec);
    assert!(
        ran.stdout.contains("w=1") && ran.stdout.contains("r=1"),
        "{}",
        ran.log
    );
    assert!(ran.log.contains("Permission denied"), "{}", ran.log);
}

/// What Docker's seccomp profile refuses is refused with EPERM: new namespaces (user,
/// mount, network) and mounts.
#[test]
fn namespaces_and_mounts_are_refused() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let spec = fx.spec(&[
        "sh",
        "-c",
        "unshare -U true; echo user=$?; unshare -m true; echo mnt=$?; unshare -n true; \
         echo net=$?; mount -t tmpfs none /data; echo mount=$?; echo ok > /dev/null && echo null",
    ]);
    let ran = run_ok(&spec);
    for (what, line) in ran.stdout.lines().filter_map(|l| l.split_once('=')) {
        assert_ne!(line, "0", "{what} was allowed:\n{}", ran.log);
    }
    assert_eq!(ran.stdout.lines().count(), 5, "{}", ran.log);
    assert!(ran.stdout.ends_with("null\n"), "{}", ran.log);
    assert!(
        ran.log.matches("Operation not permitted").count() >= 3,
        "{}",
        ran.log
    );
}

/// An isolated step (the default network) has its own `tap0` through slirp4netns and
/// slirp's resolver, and cannot reach a service on the host's loopback, neither at
/// 127.0.0.1 nor through slirp's host address; a host-network step can.
#[test]
fn isolated_steps_cannot_reach_the_host_loopback() {
    if !is_root() {
        return;
    }
    if let Err(why) = user_network() {
        panic!("isolated networking cannot run here: {why}");
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::Write as _;
            let mut stream = stream;
            let _ = stream.write_all(b"hello\n");
        }
    });
    let fx = Fixture::new();
    let probe = format!(
        "grep -c tap0 /proc/net/dev; cat /etc/resolv.conf; \
         nc -w 3 127.0.0.1 {port} </dev/null && echo reached-loopback; \
         nc -w 3 10.0.2.2 {port} </dev/null && echo reached-slirp-host; true"
    );
    let mut isolated = fx.spec(&["sh", "-c", &probe]);
    isolated.network = Network::Isolated;
    let ran = run_ok(&isolated);
    assert!(
        ran.stdout.starts_with("1\nnameserver 10.0.2.3\n"),
        "{}",
        ran.log
    );
    assert!(!ran.stdout.contains("reached"), "{}", ran.log);
    assert!(!ran.stdout.contains("hello"), "{}", ran.log);

    let mut host = fx.spec(&["sh", "-c", &format!("nc -w 3 127.0.0.1 {port} </dev/null")]);
    host.network = Network::Host;
    assert_eq!(run_ok(&host).stdout, "hello\n");
}

/// A step that starts more processes than its pids limit fails to fork past it (a bounded
/// stand-in for a fork bomb), where a pids cgroup can be made.
#[test]
fn a_fork_bomb_stops_at_the_pids_limit() {
    if !is_root() {
        return;
    }
    if pids_cgroup_parent().is_none() {
        crate::testing::skip("no writable pids cgroup here");
        return;
    }
    let fx = Fixture::new();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done; echo started $i",
    ]);
    spec.pids_max = Some(50);
    let started = Instant::now();
    let ran = try_run(&spec).unwrap();
    assert!(ran.log.contains("can't fork"), "{}", ran.log);
    // PID 1 (the shell) exiting ends every sleeper with it.
    assert!(started.elapsed() < Duration::from_secs(20), "{}", ran.log);
    // Without a limit the same script starts them all.
    let mut unlimited = fx.spec(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done; echo started $i",
    ]);
    unlimited.pids_max = None;
    assert_eq!(run_ok(&unlimited).stdout, "started 200\n");
}

/// Every other test of this module, and the evaluation tests that run steps (secrets, cache
/// volumes, stages), again as root of a user namespace: the sandbox as the rootless
/// executor runs it (overlay with `userxattr`, the host's /sys and device nodes
/// bind-mounted, capabilities of the namespace only). As root the namespace maps root to 0
/// and 1–65535 to unused host ids; as a user, the user to 0 and its subordinate range.
#[test]
fn suite_passes_in_a_user_namespace() {
    suite_in_a_user_namespace(None);
}

/// The same with the copying fallback instead of overlayfs (`BLUMEOPS_ROOTLESS_FS=copy`),
/// as on kernels without overlayfs in user namespaces.
#[test]
fn suite_passes_in_a_user_namespace_copying_the_rootfs() {
    suite_in_a_user_namespace(Some("copy"));
}

/// The same with fuse-overlayfs (`BLUMEOPS_ROOTLESS_FS=fuse-overlayfs`), the fallback
/// before copies.
#[test]
fn suite_passes_in_a_user_namespace_with_fuse_overlayfs() {
    if crate::executor::find_program("fuse-overlayfs").is_none() {
        crate::testing::skip("fuse-overlayfs is not installed");
        return;
    }
    suite_in_a_user_namespace(Some("fuse-overlayfs"));
}

fn suite_in_a_user_namespace(rootless_fs: Option<&str>) {
    use crate::executor::{MapLine, UsernsPlan, plan_for_current_user, spawn_in_user_namespace};
    const NAME: &str = "suite_passes_in_a_user_namespace";
    if crate::executor::in_user_namespace() {
        return; // the inner run of another process's suite
    }
    let plan = if nix::unistd::geteuid().is_root() {
        let map = vec![
            MapLine {
                inside: 0,
                outside: 0,
                count: 1,
            },
            MapLine {
                inside: 1,
                outside: 3_000_000,
                count: 65535,
            },
        ];
        UsernsPlan {
            uid_map: map.clone(),
            gid_map: map,
            helpers: None,
        }
    } else {
        let plan = plan_for_current_user();
        if plan.is_single() {
            crate::testing::skip("needs root, or a subordinate id range for this user");
            return;
        }
        plan
    };
    let exe = std::env::current_exe().unwrap();
    let skips = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = std::process::Command::new(&exe);
    cmd.env(crate::testing::SKIPS_ENV, skips.path());
    match rootless_fs {
        Some(fs) => cmd.env(super::ROOTLESS_FS_ENV, fs),
        None => cmd.env_remove(super::ROOTLESS_FS_ENV),
    };
    cmd.args([
        "sandbox::tests::",
        "pipeline::eval_tests::",
        "--skip",
        NAME,
        "--test-threads",
        "2",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = spawn_in_user_namespace(cmd, &plan).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the suite failed in a user namespace:\n{text}"
    );
    let skipped = fs::read_to_string(skips.path()).unwrap();
    assert!(
        skipped.is_empty(),
        "tests skipped in the user namespace:\n{skipped}"
    );
    let ran: usize = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("running ")?
                .strip_suffix(" tests")?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let tests = |source: &str| source.lines().filter(|l| l.trim() == "#[test]").count();
    let expected =
        tests(include_str!("tests.rs")) - 3 + tests(include_str!("../pipeline/eval_tests.rs"));
    assert_eq!(ran, expected, "not every sandbox test ran:\n{text}");
}
