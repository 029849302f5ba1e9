//! The docker executor: blumeops in an unprivileged job container (default seccomp and
//! capabilities, the host network, the daemon's socket mounted, `DOCKER_HOST` set), as on
//! the Kubernetes runner with its Docker-in-Docker sidecar, and from the host with
//! `--executor docker`. The daemon is Debian's dockerd ([`Dockerd`]); the registry is the
//! test registry behind zot's rules.
//!
//! The tests share one daemon and check that no container is left, so they hold [`SERIAL`]
//! while they run.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use blumeops_e2e::dockerd::{self, Dockerd};
use blumeops_e2e::{
    BaseImage, CliOutput, MultiArchBase, PushedImage, TestRegistry, blumeops_bin, isolated_cache,
    run_cli_with, tools::umoci_unpack,
};

/// Held by every test that uses the shared daemon (also the TLS tests through it).
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

const EPOCH: &str = "1700000000";
const TIMEOUT: Duration = Duration::from_secs(600);
const TAG: &str = "v1.0.0-abc1234";

/// COPY from the context (one file left out by `.dockerignore`), RUN steps, a cache mount.
const DOCKERFILE: &str = r#"ARG CONTAINER_APP_VERSION=1.0.0
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY files/ /opt/files/
RUN mkdir -p /data && ls /opt/files > /data/list && id -u > /data/uid
RUN --mount=type=cache,target=/cache echo cached > /cache/v && cp /cache/v /from-cache
CMD ["cat", "/data/list"]
"#;

macro_rules! require_dockerd {
    () => {
        if let Err(why) = dockerd::available() {
            blumeops_core::testing::skip(&why);
            return;
        }
    };
}

/// A checkout with `containers/app` (the Dockerfile, `files/`, `.dockerignore`).
fn checkout(dockerfile: &str) -> tempfile::TempDir {
    let src = tempfile::Builder::new()
        .prefix("blumeops-docker-src-")
        .tempdir()
        .unwrap();
    let dir = src.path().join("containers/app");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.join("files/a"), "a\n").unwrap();
    std::fs::write(dir.join("files/local.env"), "not for the image\n").unwrap();
    std::fs::write(dir.join(".dockerignore"), "files/local.env\n").unwrap();
    src
}

/// Flags of a build or publish of `app` at `src` (as the job or the host sees it).
fn flags(src: &str, registry: &TestRegistry, base: &PushedImage) -> Vec<String> {
    [
        "--src",
        src,
        "--container-name",
        "app",
        "--commit-sha",
        "abc1234",
        "--registry",
        &registry.addr(),
        "--build-arg",
        &format!("BASE_IMAGE={}", base.reference),
        "--progress",
        "plain",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// `build --output oci:DIR` on the host with the root sandbox.
fn host_build(src: &Path, registry: &TestRegistry, base: &PushedImage, dir: &Path) -> CliOutput {
    let cache = isolated_cache();
    let mut args = vec!["build".to_owned()];
    args.extend(flags(&src.display().to_string(), registry, base));
    args.extend(["--output".to_owned(), format!("oci:{}", dir.display())]);
    let out = run_cli_with(
        &args,
        &[
            ("BLUMEOPS_CACHE_DIR", &cache.path().display().to_string()),
            ("SOURCE_DATE_EPOCH", EPOCH),
            ("BLUMEOPS_EXECUTOR", "root"),
        ],
        Path::new("/"),
        TIMEOUT,
    );
    out.assert_success();
    out
}

fn digest(out: &CliOutput) -> String {
    out.last_line()
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("no REF@DIGEST line\n{out}"))
        .1
        .to_owned()
}

/// What every test here starts with: the shared daemon (held alone), a registry with the
/// busybox base, a checkout of `dockerfile`, and (when `host` is set) the host's root build
/// of it.
struct Setup {
    _serial: std::sync::MutexGuard<'static, ()>,
    daemon: &'static Dockerd,
    registry: TestRegistry,
    base: PushedImage,
    src: tempfile::TempDir,
    host_digest: Option<String>,
    _host_out: tempfile::TempDir,
}

impl Setup {
    fn new(dockerfile: &str, host: bool) -> Self {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let daemon = Dockerd::shared();
        let registry = TestRegistry::start();
        let base = BaseImage::push(&registry);
        let src = checkout(dockerfile);
        let host_out = tempfile::tempdir().unwrap();
        let host_digest = host.then(|| {
            digest(&host_build(
                src.path(),
                &registry,
                &base,
                &host_out.path().join("img"),
            ))
        });
        Self {
            _serial: serial,
            daemon,
            registry,
            base,
            src,
            host_digest,
            _host_out: host_out,
        }
    }

    fn host_digest(&self) -> &str {
        self.host_digest.as_deref().expect("built on the host")
    }

    /// `build` flags for the checkout, writing `oci:DIR`.
    fn build_args(&self, dir: &Path) -> Vec<String> {
        let mut args = vec!["build".to_owned()];
        args.extend(flags(
            &self.src.path().display().to_string(),
            &self.registry,
            &self.base,
        ));
        args.extend(["--output".to_owned(), format!("oci:{}", dir.display())]);
        args
    }

    /// Wait until a step whose command line holds `marker` runs in the engine container.
    fn wait_for_step(&self, marker: &str) -> bool {
        wait_for(120, || {
            let id = self.engine();
            !id.is_empty()
                && String::from_utf8_lossy(&self.daemon.docker(&["top", &id]).stdout)
                    .contains(marker)
        })
    }

    /// The running engine container's id (empty when there is none).
    fn engine(&self) -> String {
        self.daemon
            .docker_ok(&["ps", "-q", "--filter", "label=org.blumeops.engine=run"])
            .trim()
            .to_owned()
    }

    /// Environment of a host client of the docker executor, with its cache on `volume`.
    fn client_env(&self, volume: &str) -> Vec<(&'static str, String)> {
        vec![
            ("DOCKER_HOST", self.daemon.host()),
            ("BLUMEOPS_EXECUTOR", "docker".to_owned()),
            ("BLUMEOPS_ENGINE_VOLUME", volume.to_owned()),
            ("SOURCE_DATE_EPOCH", EPOCH.to_owned()),
        ]
    }

    /// No container is left the moment the client is done, so `volume` is free to go.
    fn finish(&self, volume: &str) {
        assert_eq!(
            self.daemon.containers(),
            Vec::<String>::new(),
            "containers left"
        );
        self.daemon.docker_ok(&["volume", "rm", volume]);
    }
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A job container running blumeops, as a CI runner starts one.
struct Job<'a> {
    daemon: &'a Dockerd,
    name: String,
    volume: String,
    src: &'a Path,
    out: tempfile::TempDir,
}

impl<'a> Job<'a> {
    fn new(daemon: &'a Dockerd, src: &'a Path, volume: &str) -> Self {
        Self {
            daemon,
            name: format!("blumeops-test-job-{}", std::process::id()),
            volume: volume.to_owned(),
            src,
            out: tempfile::Builder::new()
                .prefix("blumeops-job-out-")
                .tempdir()
                .unwrap(),
        }
    }

    /// `docker run` arguments for `blumeops ARGS` (plus `-d` when `detach`), with `mounts`
    /// and `env` added.
    fn run_args(&self, detach: bool, extra: &[String], blumeops: &[String]) -> Vec<String> {
        let socket = self.daemon.socket().display().to_string();
        let mut args: Vec<String> = vec!["run".into(), "--name".into(), self.name.clone()];
        args.push(if detach { "-d" } else { "--rm" }.into());
        for a in [
            "--network",
            "host",
            "-v",
            &format!("{socket}:/var/run/docker.sock"),
            "-v",
            &format!("{}:/usr/local/bin/blumeops:ro", blumeops_bin().display()),
            "-v",
            &format!("{}:/src:ro", self.src.display()),
            "-v",
            &format!("{}:/out", self.out.path().display()),
            "-e",
            "DOCKER_HOST=unix:///var/run/docker.sock",
            "-e",
            &format!("SOURCE_DATE_EPOCH={EPOCH}"),
            "-e",
            "GITHUB_OUTPUT=/out/github-output",
            "-e",
            &format!("BLUMEOPS_ENGINE_VOLUME={}", self.volume),
        ] {
            args.push(a.to_owned());
        }
        args.extend(extra.iter().cloned());
        args.push(self.daemon.job_image().to_owned());
        args.push("blumeops".into());
        args.extend(blumeops.iter().cloned());
        args
    }

    /// Run to the end; returns (exit code, stdout, stderr).
    fn run(&self, extra: &[String], blumeops: &[String]) -> (i32, String, String) {
        let args = self.run_args(false, extra, blumeops);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.daemon.docker(&refs);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Wait until `check` holds, for at most `secs` seconds.
fn wait_for(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check()
}

/// `blumeops publish` in a job container (with `--registry-password env:ZOT_CI_API_KEY`,
/// as the Forgejo step runs it) gives the host's root build digest, leaves the workflow
/// outputs in the job's filesystem, and a second job reuses the cache volume. The engine
/// exports to the registry cache (`--cache-repo auto`): a host build on an empty cache
/// then runs no step.
#[test]
fn publish_from_an_unprivileged_job_container_has_the_host_digest() {
    require_dockerd!();
    let fx = Setup::new(DOCKERFILE, true);
    let (registry, host) = (&fx.registry, fx.host_digest());
    let volume = format!("blumeops-test-cache-{}", std::process::id());
    let job = Job::new(fx.daemon, fx.src.path(), &volume);
    let mut blumeops = vec!["publish".to_owned()];
    blumeops.extend(flags("/src", registry, &fx.base));
    blumeops.extend([
        "--registry-password".to_owned(),
        "env:ZOT_CI_API_KEY".to_owned(),
        "--cache-repo".to_owned(),
        "auto".to_owned(),
    ]);
    let env = vec![
        "-e".to_owned(),
        format!("ZOT_CI_API_KEY={}", registry.ci_password()),
    ];
    let (code, stdout, stderr) = job.run(&env, &blumeops);
    let shown = format!("exit {code}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert_eq!(code, 0, "{shown}");
    assert!(
        stderr.contains("executor: docker (unix:///var/run/docker.sock"),
        "{shown}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    let reference = format!("{}/blumeops/app:{TAG}", registry.addr());
    assert_eq!(line, format!("{reference}@{host}"), "{shown}");
    let outputs = std::fs::read_to_string(job.out.path().join("github-output")).unwrap();
    assert_eq!(
        outputs,
        format!("ref={reference}\ndigest={host}\ntag={TAG}\n")
    );
    let inspected = blumeops_e2e::tools::skopeo_inspect(&reference);
    assert_eq!(inspected["Digest"], host);
    assert!(
        !stderr.contains(registry.ci_password()) && !stdout.contains(registry.ci_password()),
        "the password was printed"
    );

    // A second job on the same daemon: every step from the volume's cache.
    let (code, stdout, stderr) = job.run(&env, &blumeops);
    let shown = format!("exit {code}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert_eq!(code, 0, "{shown}");
    assert!(stderr.contains("cached in"), "{shown}");
    assert!(!stderr.contains(" ran in "), "a step ran again:\n{shown}");
    assert!(stderr.contains("nothing pushed"), "{shown}");
    fx.finish(&volume);

    // The host, with an empty cache, takes every step from the registry cache.
    let out = tempfile::tempdir().unwrap();
    let cache = isolated_cache();
    let mut args = vec!["build".to_owned()];
    args.extend(flags(
        &fx.src.path().display().to_string(),
        registry,
        &fx.base,
    ));
    args.extend([
        "--output".to_owned(),
        format!("oci:{}", out.path().join("img").display()),
        "--cache-repo".to_owned(),
        format!("{}/blumeops/cache/app", registry.addr()),
    ]);
    let built = run_cli_with(
        &args,
        &[
            ("BLUMEOPS_CACHE_DIR", &cache.path().display().to_string()),
            ("SOURCE_DATE_EPOCH", EPOCH),
            ("BLUMEOPS_EXECUTOR", "root"),
        ],
        Path::new("/"),
        TIMEOUT,
    );
    built.assert_success();
    assert!(!built.stderr.contains(" ran in "), "a step ran:\n{built}");
    assert!(built.stderr.contains("cached (registry) in"), "{built}");
    assert_eq!(digest(&built), host, "{built}");
}

/// While a slow step runs, the registry password (raw, as Basic auth's base64 of
/// `user:password`, and URL-encoded) and the build secrets (`--secret`, read by the client
/// and handed to the engine in the handshake) are in no container's config
/// (`docker inspect`) or process list (`docker top`), and the step has the secrets (it
/// prints their digests); killing the job container then leaves no container and no tag.
/// The job reads every secret from a mounted file, so that the job container's own config
/// holds none either.
#[test]
fn secrets_stay_out_of_the_daemon_and_a_killed_job_leaves_nothing() {
    require_dockerd!();
    let fx = Setup::new(
        "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n\
         RUN --mount=type=secret,id=tok,required=true --mount=type=secret,id=api,env=API_KEY \\\n\
         sha256sum /run/secrets/tok && printf %s \"$API_KEY\" | sha256sum && \\\n\
         echo slow-step-started && sleep 120\n",
        false,
    );
    let (daemon, registry) = (fx.daemon, &fx.registry);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("key"), registry.ci_password()).unwrap();
    let (tok, api) = (
        "zak-docker-build-secret-tok-7f3a",
        "zak-docker-build-secret-api-19c2",
    );
    std::fs::write(secrets.path().join("tok"), tok).unwrap();
    std::fs::write(secrets.path().join("api"), format!("{api}\n")).unwrap();
    let volume = format!("blumeops-test-cache-kill-{}", std::process::id());
    let job = Job::new(daemon, fx.src.path(), &volume);
    let mut blumeops = vec!["publish".to_owned()];
    blumeops.extend(flags("/src", registry, &fx.base));
    blumeops.extend(
        [
            "--registry-password",
            "file:/secrets/key",
            // Both forms: buildx's (read as it is) and blumeops' (less a trailing newline).
            "--secret",
            "id=tok,src=/secrets/tok",
            "--secret",
            "api=file:/secrets/api",
        ]
        .map(str::to_owned),
    );
    let extra = vec![
        "-v".to_owned(),
        format!("{}:/secrets:ro", secrets.path().display()),
    ];
    let args = job.run_args(true, &extra, &blumeops);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    daemon.docker_ok(&refs);
    let started = fx.wait_for_step("sleep 120");
    let job_logs = || {
        let out = daemon.docker(&["logs", &job.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(started, "the slow step did not start:\n{}", job_logs());
    // The step saw both secrets: their digests come back in the job's output.
    let digests = [tok, api].map(|v| blumeops_e2e::sha256_digest(v.as_bytes())[7..].to_owned());
    let seen_secrets = wait_for(30, || {
        digests.iter().all(|d| job_logs().contains(d.as_str()))
    });
    let logs = job_logs();
    assert!(
        seen_secrets,
        "the step did not print the secrets' digests {digests:?}:\n{logs}"
    );
    assert!(
        !logs.contains(tok) && !logs.contains(api),
        "a build secret is in the job's output"
    );

    let password = registry.ci_password();
    let forms = [
        ("the password", password.to_owned()),
        (
            "base64 of user:password",
            base64::engine::general_purpose::STANDARD.encode(format!("zot-ci:{password}")),
        ),
        (
            "the URL-encoded password",
            url::form_urlencoded::byte_serialize(password.as_bytes()).collect::<String>(),
        ),
        ("the build secret tok", tok.to_owned()),
        ("the build secret api", api.to_owned()),
    ];
    let mut seen = String::new();
    for id in daemon.containers() {
        seen.push_str(&daemon.docker_ok(&["inspect", &id]));
        seen.push_str(&daemon.docker_ok(&["top", &id, "-eo", "pid,args"]));
    }
    assert!(seen.contains("sleep 120"), "the listing misses the step");
    for (what, form) in &forms {
        assert!(
            !seen.contains(form.as_str()),
            "{what} is visible to the daemon"
        );
    }

    // SIGKILL the client: the engine notices its stdin closing, stops, and is removed.
    daemon.docker_ok(&["kill", &job.name]);
    assert!(
        wait_for(30, || fx.engine().is_empty()),
        "the engine container outlived its client"
    );
    daemon.docker_ok(&["rm", "-f", &job.name]);
    let app_manifests: Vec<_> = registry
        .manifest_puts()
        .into_iter()
        .filter(|r| r.path.contains("/blumeops/app/"))
        .collect();
    assert!(
        app_manifests.is_empty(),
        "a killed publish pushed a manifest: {app_manifests:?}"
    );
    fx.finish(&volume);
}

/// From the host with `--executor docker`: `build --output oci:DIR` lands in this
/// filesystem with the root build's digest and without what `.dockerignore` leaves out,
/// also for two builds at once on one cache volume; a failing step's whole output and exit
/// code reach the client.
#[test]
fn build_output_and_step_failures_come_back_to_the_client() {
    require_dockerd!();
    let fx = Setup::new(DOCKERFILE, true);
    let volume = format!("blumeops-test-cache-host-{}", std::process::id());
    let out = tempfile::tempdir().unwrap();
    let (dir, second_dir) = (out.path().join("img"), out.path().join("second"));
    let env = fx.client_env(&volume);
    let env = pairs(&env);
    // Two builds at once on one volume: the store's lock keeps them apart.
    let (built, second) = std::thread::scope(|scope| {
        let second = scope
            .spawn(|| run_cli_with(&fx.build_args(&second_dir), &env, Path::new("/"), TIMEOUT));
        let built = run_cli_with(&fx.build_args(&dir), &env, Path::new("/"), TIMEOUT);
        (built, second.join().unwrap())
    });
    for out in [&built, &second] {
        out.assert_success();
        assert_eq!(digest(out), fx.host_digest(), "{out}");
    }
    let bundle = tempfile::tempdir().unwrap();
    umoci_unpack(
        &format!("{}:{TAG}", dir.display()),
        &bundle.path().join("b"),
    );
    let rootfs = bundle.path().join("b/rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/list")).unwrap(),
        "a\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("from-cache")).unwrap(),
        "cached\n"
    );

    // It fails before its COPY reads the context, which is still sent in full.
    let failing = checkout(
        "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n\
         RUN echo first-line-on-stdout && echo second-line-on-stderr >&2 && exit 3\n\
         COPY files/ /opt/files/\n",
    );
    let mut args = vec!["build".to_owned()];
    args.extend(flags(
        &failing.path().display().to_string(),
        &fx.registry,
        &fx.base,
    ));
    args.extend([
        "--output".to_owned(),
        format!("oci:{}", out.path().join("failed").display()),
    ]);
    let failed = run_cli_with(&args, &env, Path::new("/"), TIMEOUT);
    failed.assert_code(1);
    for wanted in [
        "first-line-on-stdout",
        "second-line-on-stderr",
        "command exited with code 3",
    ] {
        assert!(
            failed.stderr.contains(wanted),
            "{wanted} missing:\n{failed}"
        );
    }
    assert!(!out.path().join("failed").exists(), "{failed}");
    fx.finish(&volume);
}

/// The engine image from a registry (`--engine-image`), as a Mac or a daemon of another
/// architecture uses it: `blumeops publish --container-name blumeops-engine` makes it, the
/// daemon pulls it (with the target registry's password), and the build through it has the
/// host's digest. An engine image of another version is refused by name.
#[test]
fn an_engine_image_from_the_registry_builds_the_same_image() {
    require_dockerd!();
    let fx = Setup::new(DOCKERFILE, true);
    let registry = &fx.registry;
    let cache = isolated_cache();
    let cache_dir = cache.path().display().to_string();
    let engine = run_cli_with(
        &[
            "publish",
            "--container-name",
            "blumeops-engine",
            "--commit-sha",
            "abc1234",
            "--registry",
            &registry.addr(),
            "--registry-password",
            "env:ZOT_CI_API_KEY",
            "--progress",
            "plain",
        ],
        &[
            ("BLUMEOPS_CACHE_DIR", &cache_dir),
            ("SOURCE_DATE_EPOCH", EPOCH),
            ("ZOT_CI_API_KEY", registry.ci_password()),
        ],
        Path::new("/"),
        TIMEOUT,
    );
    engine.assert_success();
    let engine_ref = engine.last_line().split('@').next().unwrap().to_owned();
    assert!(
        engine_ref.ends_with(&format!(
            "/blumeops/blumeops-engine:{}-abc1234",
            env!("CARGO_PKG_VERSION")
        )),
        "{engine}"
    );

    let volume = format!("blumeops-test-cache-image-{}", std::process::id());
    let out = tempfile::tempdir().unwrap();
    let mut env = fx.client_env(&volume);
    env.push(("ZOT_CI_API_KEY", registry.ci_password().to_owned()));
    env.push(("BLUMEOPS_ENGINE_IMAGE", engine_ref.clone()));
    let mut args = fx.build_args(&out.path().join("img"));
    args.extend([
        "--registry-password".to_owned(),
        "env:ZOT_CI_API_KEY".to_owned(),
    ]);
    let built = run_cli_with(&args, &pairs(&env), Path::new("/"), TIMEOUT);
    built.assert_success();
    assert!(
        built.stderr.contains(&format!("engine {engine_ref}")),
        "{built}"
    );
    assert_eq!(digest(&built), fx.host_digest(), "{built}");
    let loaded = fx
        .daemon
        .docker_ok(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        loaded.contains(&engine_ref),
        "the daemon did not pull {engine_ref}:\n{loaded}"
    );

    // An image of another blumeops version (here: busybox, which has no version label).
    let wrong = format!("{}/library/busybox:1.37", registry.addr());
    env.last_mut().unwrap().1 = wrong.clone();
    let refused = run_cli_with(&args, &pairs(&env), Path::new("/"), TIMEOUT);
    refused.assert_code(1);
    assert!(
        refused.stderr.contains(&format!(
            "the engine image {wrong} is blumeops unknown, this client is {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{refused}"
    );
    fx.finish(&volume);
}

/// SIGTERM to a client (a runner cancelling the job) removes the engine container at once
/// and exits with 143.
#[test]
fn sigterm_on_the_client_removes_the_engine() {
    require_dockerd!();
    let fx = Setup::new(
        "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN sleep 120\n",
        false,
    );
    let volume = format!("blumeops-test-cache-term-{}", std::process::id());
    let mut client = std::process::Command::new(blumeops_bin())
        .args(fx.build_args(Path::new("/nonexistent/never")))
        .envs(fx.client_env(&volume))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = fx.wait_for_step("sleep 120");
    if !started {
        let _ = client.kill();
    }
    assert!(started, "the slow step did not start");
    let at = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &client.id().to_string()])
        .status();
    let output = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("terminated: stopping the engine container"),
        "{stderr}"
    );
    assert!(
        at.elapsed() < Duration::from_secs(20),
        "the client took {:?} to stop",
        at.elapsed()
    );
    fx.finish(&volume);
}

/// The engine has none of the client's registries.conf files: the client sends their
/// mirrors, with its `--registry-mirror` flags. A base named by its Docker Hub reference
/// comes from the mirror in the test registry (past a flag mirror that is down), with the
/// host build's digest.
#[test]
fn the_clients_mirrors_reach_the_engine() {
    require_dockerd!();
    let fx = Setup::new(DOCKERFILE, true);
    BaseImage::push_to(&fx.registry, "docker.io/library/busybox");
    let mirror = format!("{}/docker.io", fx.registry.addr());
    let down = format!("127.0.0.1:{}/docker.io", blumeops_e2e::free_port());
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"{mirror}\"\n"
        ),
    )
    .unwrap();
    let volume = format!("blumeops-test-cache-mirrors-{}", std::process::id());
    let out_dir = tempfile::tempdir().unwrap();
    let hub = format!("docker.io/library/busybox:{}", blumeops_e2e::BASE_TAG);
    let mut args = fx.build_args(&out_dir.path().join("img"));
    let base_arg = args
        .iter()
        .position(|a| a.starts_with("BASE_IMAGE="))
        .unwrap();
    args[base_arg] = format!("BASE_IMAGE={hub}");
    args.extend([
        "--retries".to_owned(),
        "0".to_owned(),
        "--registry-mirror".to_owned(),
        format!("docker.io={down}"),
    ]);
    let mut env = fx.client_env(&volume);
    env.push(("CONTAINERS_REGISTRIES_CONF", conf.display().to_string()));
    let built = run_cli_with(&args, &pairs(&env), Path::new("/"), TIMEOUT);
    built.assert_success();
    assert_eq!(digest(&built), fx.host_digest(), "{built}");
    for wanted in [
        format!("mirror {down} did not serve {hub}: "),
        format!("pulled {hub} via {mirror}: "),
    ] {
        assert!(built.stderr.contains(&wanted), "{wanted} missing\n{built}");
    }
    fx.finish(&volume);
}

/// Two platforms through the engine, as the arm64 runner builds its amd64 image too: the
/// engine checks and uses the kernel's emulator from its container, and writes the same
/// index as the host's root build.
#[test]
fn two_platforms_through_the_engine_give_the_hosts_index() {
    require_dockerd!();
    if !MultiArchBase::arm64_runs_here() {
        return;
    }
    let fx = Setup::new(
        "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG TARGETARCH\n\
         RUN uname -m > /uname && echo \"$TARGETARCH\" > /arch\n",
        false,
    );
    let base = MultiArchBase::push_to(&fx.registry, "library/busybox-multi");
    let volume = format!("blumeops-test-cache-platforms-{}", std::process::id());
    let out = tempfile::tempdir().unwrap();
    let build = |dir: &Path, env: &[(&str, &str)]| {
        let mut args = vec!["build".to_owned()];
        args.extend(flags(
            &fx.src.path().display().to_string(),
            &fx.registry,
            &base,
        ));
        args.extend([
            "--output".to_owned(),
            format!("oci:{}", dir.display()),
            "--platform".to_owned(),
            "linux/amd64,linux/arm64".to_owned(),
        ]);
        let out = run_cli_with(&args, env, Path::new("/"), TIMEOUT);
        out.assert_success();
        out
    };
    let cache = isolated_cache();
    let cache_dir = cache.path().display().to_string();
    let host = build(
        &out.path().join("host"),
        &[
            ("BLUMEOPS_CACHE_DIR", &cache_dir),
            ("SOURCE_DATE_EPOCH", EPOCH),
            ("BLUMEOPS_EXECUTOR", "root"),
        ],
    );
    let env = fx.client_env(&volume);
    let engine = build(&out.path().join("engine"), &pairs(&env));
    assert_eq!(digest(&engine), digest(&host), "{engine}");
    assert!(engine.stderr.contains("linux/arm64: "), "{engine}");
    fx.finish(&volume);
}
