//! Evaluation tests that run real steps in the sandbox on a scratch image holding Debian's
//! static busybox (no registry needed). They need root, as the sandbox does; without it
//! they print why and pass.

use std::io::Read as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use crate::error::Error;
use crate::layer::HostCopy;
use crate::secret::Secret;
use crate::store::Store;

const BUSYBOX: &str = "/bin/busybox";

pub(super) fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        crate::testing::skip("running build steps needs root");
        return false;
    }
    if !Path::new(BUSYBOX).is_file() {
        crate::testing::skip(&format!("{BUSYBOX} (busybox-static) is not installed"));
        return false;
    }
    true
}

/// scratch + busybox + `sh`: enough to run shell steps.
pub(super) fn base() -> Container {
    Container::scratch()
        .with_file(
            "/bin/busybox",
            BUSYBOX,
            HostCopy::default().with_mode(0o755),
        )
        .with_exec(["/bin/busybox", "--install", "-s", "/bin"])
        .with_env_variable("PATH", "/bin")
}

fn engine(store: &Path, lines: Option<Arc<Mutex<Vec<String>>>>) -> Engine {
    let mut opts = EngineOptions::new(Store::open(store).unwrap());
    opts.epoch = 1_700_000_000;
    if let Some(lines) = lines {
        opts.progress = Some(Arc::new(move |e: &Event| {
            let text = match e {
                Event::StepOutput { line, .. } => line.clone(),
                Event::StepStarted { description, .. } => description.clone(),
                _ => return,
            };
            lines.lock().unwrap().push(text);
        }));
    }
    Engine::new(opts).unwrap()
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every file under `dir`, recursively (not following symlinks).
fn all_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            all_files(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

/// Whether `needle` occurs in any file under `dir`, gzip layers included (decompressed).
fn store_contains(dir: &Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    let mut files = Vec::new();
    all_files(dir, &mut files);
    for f in files {
        let raw = std::fs::read(&f).unwrap();
        let mut hay = raw.clone();
        if raw.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            if flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut plain)
                .is_ok()
            {
                hay = plain;
            }
        }
        if hay.windows(needle.len()).any(|w| w == needle) {
            return Some(f);
        }
    }
    None
}

#[test]
fn exec_steps_change_the_filesystem_and_report_stdout() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), None);
    let c = base().with_workdir("/work").with_exec([
        "sh",
        "-c",
        "echo hello > greeting && pwd && rm /bin/vi",
    ]);
    let rt = rt();
    assert_eq!(rt.block_on(c.stdout(&e)).unwrap(), "/work\n");
    assert_eq!(
        rt.block_on(c.file(&e, "/work/greeting")).unwrap(),
        b"hello\n"
    );
    let err = rt.block_on(c.file(&e, "/bin/vi")).unwrap_err();
    assert!(matches!(err, Error::NotFoundInImage { .. }), "{err}");
    let out = tempfile::tempdir().unwrap();
    rt.block_on(c.directory(&e, "/work", &out.path().join("w")))
        .unwrap();
    assert_eq!(
        std::fs::read(out.path().join("w/greeting")).unwrap(),
        b"hello\n"
    );
    let removed = c.without_file("/work/greeting");
    let err = rt.block_on(removed.file(&e, "/work/greeting")).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn failing_step_reports_command_exit_code_output_and_log() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), None);
    let c = base().with_exec([
        "sh",
        "-c",
        "for i in $(seq 1 300); do echo out-$i; echo err-$i >&2; done; echo 'undefined: buildtags.SQLITE_FTS5' >&2; exit 3",
    ]);
    let err = rt().block_on(c.build(&e)).unwrap_err();
    let Error::Step {
        index,
        step,
        source,
    } = &err
    else {
        panic!("not a step error: {err}");
    };
    assert_eq!(*index, 5, "{err}");
    assert!(step.starts_with("with_exec sh -c"), "{step}");
    let msg = source.to_string();
    assert!(msg.contains("exited with code 3"), "{msg}");
    assert!(msg.contains("seq 1 300"), "full command missing: {msg}");
    // stdout and stderr are separate pipes, so the combined tail may hold only one of them;
    // the end of the other is then shown on its own.
    assert!(msg.contains("last 100 lines of output:"), "{msg}");
    assert!(msg.contains("undefined: buildtags.SQLITE_FTS5"), "{msg}");
    assert!(msg.contains("out-300") && msg.contains("err-300"), "{msg}");
    assert!(
        msg.lines().filter(|l| l.starts_with("  | ")).count() >= 100,
        "{msg}"
    );
    let Error::ExecFailed { log_path, .. } = source.as_ref() else {
        panic!("not an exec failure: {source}");
    };
    assert!(msg.contains(&log_path.display().to_string()), "{msg}");
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("undefined: buildtags.SQLITE_FTS5\n"), "{log}");
    for i in 1..=300 {
        assert!(
            log.contains(&format!("out-{i}\n")) && log.contains(&format!("err-{i}\n")),
            "line {i} missing"
        );
    }
    // Nothing of the failed step is left in the store's temporary directory.
    assert_eq!(std::fs::read_dir(e.store().tmp_dir()).unwrap().count(), 0);
}

#[test]
fn expected_exit_codes_and_stdin() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), None);
    let c = base()
        .with_exec_opts(
            ["sh", "-c", "exit 5"],
            ExecOptions::default().with_expect(Expect::Codes(vec![5])),
        )
        .with_exec_opts(
            ["sh", "-c", "tr a-z A-Z"],
            ExecOptions::default().with_stdin("shout\n"),
        );
    assert_eq!(rt().block_on(c.stdout(&e)).unwrap(), "SHOUT\n");
}

#[test]
fn secret_variables_reach_the_step_and_nothing_else() {
    if !can_run() {
        return;
    }
    let secret = "zak_0123456789abcdef0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let e = engine(dir.path(), Some(lines.clone()));
    let c = base()
        .with_secret_variable("API_KEY", Secret::new(secret))
        .with_exec(["sh", "-c", "echo \"key is $API_KEY\"; echo ${#API_KEY} > /keylen; echo \"$API_KEY\" | grep -q 0123456789abcdef0123456789abcdef"]);
    let rt = rt();
    let built = rt.block_on(c.build(&e)).unwrap();
    assert_eq!(rt.block_on(c.file(&e, "/keylen")).unwrap(), b"36\n");
    let out = lines.lock().unwrap().join("\n");
    assert!(out.contains("key is ***"), "{out}");
    assert!(!out.contains(secret), "secret in progress output");
    assert!(!format!("{built:?}").contains(secret));
    assert!(!c.steps().join("\n").contains(secret));
    if let Some(f) = store_contains(dir.path(), secret.as_bytes()) {
        panic!("secret found in the store at {}", f.display());
    }
}

#[test]
fn cache_volumes_persist_across_builds_and_stay_out_of_the_image() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), None);
    let rt = rt();
    let step = |n: &str| {
        base()
            .with_mounted_cache("/cache", CacheVolume::new("counter"))
            .with_exec([
                "sh",
                "-c",
                &format!("echo {n} >> /cache/runs; cat /cache/runs"),
            ])
    };
    assert_eq!(rt.block_on(step("one").stdout(&e)).unwrap(), "one\n");
    let second = step("two");
    assert_eq!(rt.block_on(second.stdout(&e)).unwrap(), "one\ntwo\n");
    let err = rt.block_on(second.file(&e, "/cache/runs")).unwrap_err();
    assert!(
        matches!(err, Error::NotFoundInImage { .. }),
        "cache content leaked into the image: {err}"
    );
}

#[test]
fn copies_between_stages_with_owner_and_mode() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), None);
    let build = base().with_exec([
        "sh",
        "-c",
        "mkdir -p /out/sub && echo bin > /out/tool && echo x > /out/sub/data",
    ]);
    let runtime = base()
        .with_exec(["sh", "-c", "echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd; echo 'app:x:1000:' >> /etc/group"])
        .with_file_from("/usr/bin/tool", &build, "/out/tool", CopyOptions::default().with_mode(0o755).with_owner("app"))
        .with_directory_from("/opt/out", &build, "/out", CopyOptions::default())
        .with_exec(["sh", "-c", "stat -c '%u:%g %a' /usr/bin/tool; cat /opt/out/sub/data"]);
    assert_eq!(
        rt().block_on(runtime.stdout(&e)).unwrap(),
        "1000:1000 755\nx\n"
    );
}

#[test]
fn deterministic_steps_give_the_same_digest_on_two_empty_stores() {
    if !can_run() {
        return;
    }
    let c = base()
        .with_exec(["sh", "-c", "mkdir -p /app && echo hello > /app/hello && ln /app/hello /app/hardlink && ln -s hello /app/link && chmod 4755 /app/hello"])
        .with_default_args(["cat", "/app/hello"]);
    let rt = rt();
    let digests: Vec<_> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let e = engine(dir.path(), None);
            // Let real time pass so file mtimes differ between the runs.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            rt.block_on(c.build(&e)).unwrap().image.manifest.digest
        })
        .collect();
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn workdir_sees_through_the_top_layers_only_as_far_as_needed() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), None);
    let rt = rt();
    let base = base().with_exec(["sh", "-c", "mkdir -p /deep/dir /gone"]);
    // Found in a lower layer under an unrelated top layer: no new layer.
    let found = base
        .with_new_file("/top.txt", "x", 0o644)
        .with_workdir("/deep/dir");
    let with_top = base.with_new_file("/top.txt", "x", 0o644);
    let (a, b) = (
        rt.block_on(found.build(&e)).unwrap(),
        rt.block_on(with_top.build(&e)).unwrap(),
    );
    assert_eq!(a.image.layers.len(), b.image.layers.len());
    assert_eq!(a.config.config.working_dir.as_deref(), Some("/deep/dir"));
    // Removed in an upper layer: the whiteout hides it, so WORKDIR creates it again.
    let gone = base.without_directory("/gone").with_workdir("/gone");
    let built = rt.block_on(gone.build(&e)).unwrap();
    assert_eq!(built.image.layers.len(), b.image.layers.len() + 1);
    assert!(
        rt.block_on(gone.with_exec(["test", "-d", "/gone"]).build(&e))
            .is_ok()
    );
}

/// A WORKDIR into what the step before made is known from the start of that step's layer:
/// no new layer, and no layer unpacked to find it.
#[test]
fn workdir_into_what_the_last_step_made_unpacks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), None);
    let c = Container::scratch()
        .with_new_file("/app/src/main.c", "int main;", 0o644)
        .with_workdir("/app/src");
    let built = rt().block_on(c.build(&e)).unwrap();
    assert_eq!(built.image.layers.len(), 1);
    assert_eq!(built.config.config.working_dir.as_deref(), Some("/app/src"));
    let unpacked = dir.path().join("unpacked");
    let count = std::fs::read_dir(&unpacked).map_or(0, Iterator::count);
    assert_eq!(count, 0, "a layer was unpacked in {}", unpacked.display());
    // Not in the last layer: found the old way, below it.
    let below = c.with_new_file("/other", "x", 0o644).with_workdir("/app");
    let built = rt().block_on(below.build(&e)).unwrap();
    assert_eq!(built.image.layers.len(), 2);
}

/// Where the checkout lives never enters the image: the same files copied from two
/// directories give the same digest, and the history names only the copied file.
#[test]
fn host_paths_stay_out_of_the_image() {
    let rt = rt();
    let build = |dir: &Path| {
        let ctx = dir.join("checkout/containers/app");
        std::fs::create_dir_all(ctx.join("site")).unwrap();
        std::fs::write(ctx.join("script.sh"), "echo hi\n").unwrap();
        std::fs::write(ctx.join("site/index.html"), "hi\n").unwrap();
        let c = Container::scratch()
            .with_file(
                "/usr/local/bin/script.sh",
                ctx.join("script.sh"),
                HostCopy::default().with_mode(0o755),
            )
            .with_directory("/srv", ctx.join("site"), HostCopy::default());
        let store = tempfile::tempdir().unwrap();
        rt.block_on(c.build(&engine(store.path(), None))).unwrap()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (x, y) = (build(a.path()), build(b.path()));
    assert_eq!(x.image.manifest.digest, y.image.manifest.digest);
    let history: Vec<String> = x
        .config
        .history
        .iter()
        .filter_map(|h| h.created_by.clone())
        .collect();
    assert_eq!(
        history,
        [
            "blumeops: with_file /usr/local/bin/script.sh from script.sh",
            "blumeops: with_directory /srv from site"
        ]
    );
}

#[test]
fn mounted_secrets_directories_and_temps_reach_steps_and_no_layer() {
    if !can_run() {
        return;
    }
    let secret = "zak_mounted_0123456789abcdef0123456789";
    let dir = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir(host.path().join("src")).unwrap();
    std::fs::write(host.path().join("src/input"), "from the host\n").unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let e = engine(dir.path(), Some(lines.clone()));
    let tools = base().with_exec(["sh", "-c", "mkdir /opt && echo tool > /opt/tool"]);
    let c = base()
        .with_mounted_secret("/run/secrets/tok", Secret::new(secret))
        .with_mounted_secret_opts(
            "/etc/tok2",
            Secret::new(secret),
            SecretFileOptions::named("tok2")
                .with_mode(0o440)
                .with_owner(1000, 100),
        )
        .with_mounted_directory("/src", host.path().join("src"), MountOptions::default())
        .with_mounted_directory("/rw", host.path().join("src"), MountOptions::writable())
        .with_mounted_directory_from("/tools", &tools, "/opt", MountOptions::default())
        .with_mounted_temp_size("/scratch", 1 << 20)
        .with_exec([
            "sh",
            "-c",
            "set -e; echo \"secret: $(cat /run/secrets/tok)\"; \
             stat -c '%a %u:%g' /run/secrets/tok /etc/tok2; \
             cat /src/input /tools/tool; \
             if touch /src/new 2>/dev/null; then echo writable; fi; \
             echo changed > /rw/input; echo new > /rw/new; \
             echo temp > /scratch/file; mount | grep -q ' /scratch type tmpfs'; \
             echo out > /made",
        ]);
    let rt = rt();
    let built = rt.block_on(c.build(&e)).unwrap();
    let out = rt.block_on(c.stdout(&e)).unwrap();
    assert_eq!(
        out, "secret: ***\n400 0:0\n440 1000:100\nfrom the host\ntool\n",
        "{out}"
    );
    // Only what the command made outside its mounts is in the layer.
    assert_eq!(rt.block_on(c.file(&e, "/made")).unwrap(), b"out\n");
    for path in [
        "/run/secrets/tok",
        "/run",
        "/etc/tok2",
        "/src",
        "/rw/new",
        "/rw",
        "/tools",
        "/scratch/file",
        "/scratch",
    ] {
        let err = rt.block_on(c.file(&e, path)).unwrap_err();
        assert!(
            matches!(err, Error::NotFoundInImage { .. }),
            "{path} in the image: {err}"
        );
    }
    // Writes to a writable mount are thrown away, the host's files untouched.
    assert_eq!(
        std::fs::read_to_string(host.path().join("src/input")).unwrap(),
        "from the host\n"
    );
    assert!(!host.path().join("src/new").exists());
    let shown = lines.lock().unwrap().join("\n");
    assert!(!shown.contains(secret), "secret in progress output");
    assert!(!format!("{built:?} {c:?}").contains(secret));
    if let Some(f) = store_contains(dir.path(), secret.as_bytes()) {
        panic!("secret found in the store at {}", f.display());
    }
    // A mounted directory's content is an input: a change runs the step again.
    std::fs::write(host.path().join("src/input"), "changed on the host\n").unwrap();
    let again = rt.block_on(c.stdout(&e)).unwrap();
    assert!(again.contains("changed on the host"), "{again}");
}
