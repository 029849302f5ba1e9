//! `RUN --mount=type=secret|bind|tmpfs` and `--secret` through the CLI, and
//! `Container::with_registry_auth` through the library: secret values reach the command and
//! nothing else (no layer, no output, no cache record), mounts leave nothing in the layers,
//! and a container's own registry credentials publish without the engine's.
//!
//! Needs the binary: `cargo build -p blumeops-cli` (or `BLUMEOPS_BIN`), and root (RUN steps).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use blumeops_e2e::tools::umoci_unpack;
use blumeops_e2e::{
    BaseImage, CI_USER, CliOutput, PushedImage, TestRegistry, isolated_cache, run_cli, tempdir,
};

const SECRET: &str = "zak_run_mount_secret_0123456789abcdef";

struct Fixture {
    registry: TestRegistry,
    base: PushedImage,
    src: tempfile::TempDir,
}

impl Fixture {
    fn new(dockerfile: &str) -> Self {
        let registry = TestRegistry::start();
        let base = BaseImage::push(&registry);
        let src = tempdir("blumeops-src-");
        let dir = src.path().join("containers/app");
        std::fs::create_dir_all(dir.join("site")).unwrap();
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        std::fs::write(dir.join("site/a.txt"), "a\n").unwrap();
        Self {
            registry,
            base,
            src,
        }
    }

    /// `blumeops build --output oci:OUT` with `extra` flags; the cache directory is `cache`.
    fn build(&self, cache: &Path, out: &Path, extra: &[&str]) -> CliOutput {
        let src = self.src.path().display().to_string();
        let base = format!("BASE_IMAGE={}", self.base.reference);
        let output = format!("oci:{}", out.display());
        let addr = self.registry.addr();
        let mut args = vec![
            "build",
            "--src",
            &src,
            "--container-name",
            "app",
            "--version",
            "v1",
            "--commit-sha",
            "abc1234",
            "--registry",
            &addr,
            "--build-arg",
            &base,
            "--progress",
            "plain",
            "--output",
            &output,
        ];
        args.extend_from_slice(extra);
        let cache = cache.display().to_string();
        run_cli(
            &args,
            &[
                ("BLUMEOPS_CACHE_DIR", cache.as_str()),
                ("MYTOK", SECRET),
                ("SOURCE_DATE_EPOCH", "1700000000"),
            ],
        )
    }
}

/// Every file under `dir` (gzip and zstd blobs decompressed) that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let (path, kind) = (e.path(), e.file_type().unwrap());
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let raw = std::fs::read(&path).unwrap_or_default();
            let mut plain = Vec::new();
            if raw.starts_with(&[0x1f, 0x8b]) {
                let _ = gunzip(&raw, &mut plain);
            } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                plain = zstd_decode(&raw);
            }
            let hay = if plain.is_empty() { &raw } else { &plain };
            if hay.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

/// gunzip with the system's `gzip` (the harness has no gzip crate).
fn gunzip(raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    pipe("gzip", &["-dc"], raw, out)
}

fn zstd_decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = pipe("zstd", &["-dc"], raw, &mut out);
    out
}

fn pipe(program: &str, args: &[&str], input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    child.stdout.take().unwrap().read_to_end(out)?;
    let _ = writer.join();
    child.wait()?;
    Ok(())
}

const SECRET_DOCKERFILE: &str = r#"ARG CONTAINER_APP_VERSION=1.0.0
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && test -s /run/secrets/tok && echo "file holds $(cat /run/secrets/tok)" && wc -c < /run/secrets/tok > /file-size
RUN --mount=type=secret,id=tok,env=TOK test -n "$TOK" && echo "variable holds $TOK" && echo ${#TOK} > /env-size
RUN --mount=type=secret,id=absent cat /run/secrets/absent 2>/dev/null || echo skipped > /absent
"#;

#[test]
fn secrets_reach_the_command_and_no_layer_output_or_cache_record() {
    let fx = Fixture::new(SECRET_DOCKERFILE);
    for form in ["id=tok,env=MYTOK", "tok=env:MYTOK"] {
        let cache = isolated_cache();
        let out_dir = tempdir("blumeops-oci-");
        let out = out_dir.path().join("oci");
        let result = fx.build(cache.path(), &out, &["--secret", form]);
        result.assert_success().assert_no_secret(SECRET);
        assert!(
            result.stderr.contains("file holds ***")
                && result.stderr.contains("variable holds ***"),
            "{form}: the commands' output is not redacted as expected\n{result}"
        );
        let bundle = tempdir("blumeops-bundle-");
        let bundle = bundle.path().join("b");
        umoci_unpack(&format!("{}:v1-abc1234", out.display()), &bundle);
        let rootfs = bundle.join("rootfs");
        let size = SECRET.len().to_string();
        assert_eq!(
            std::fs::read_to_string(rootfs.join("file-size"))
                .unwrap()
                .trim(),
            size,
            "{form}"
        );
        assert_eq!(
            std::fs::read_to_string(rootfs.join("env-size"))
                .unwrap()
                .trim(),
            size
        );
        assert_eq!(
            std::fs::read_to_string(rootfs.join("absent")).unwrap(),
            "skipped\n"
        );
        assert!(
            !rootfs.join("run/secrets").exists(),
            "{form}: /run/secrets in the image"
        );
        for (what, dir) in [("the image", &out), ("the unpacked image", &bundle)] {
            let leaks = files_holding(dir, SECRET.as_bytes());
            assert!(
                leaks.is_empty(),
                "{form}: the secret is in {what}: {leaks:?}"
            );
        }
        let leaks = files_holding(cache.path(), SECRET.as_bytes());
        assert!(
            leaks.is_empty(),
            "{form}: the secret is in the cache: {leaks:?}"
        );
        // Only the secret's name is in what the cache records.
        assert!(!files_holding(cache.path(), b"tok").is_empty());
    }
}

#[test]
fn a_required_secret_that_is_missing_fails_naming_the_line() {
    let fx = Fixture::new(
        "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN true\n\
         RUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok\n",
    );
    let cache = isolated_cache();
    let out_dir = tempdir("blumeops-oci-");
    let out = out_dir.path().join("oci");
    let result = fx.build(cache.path(), &out, &[]);
    assert_ne!(result.code(), Some(0), "{result}");
    assert!(
        result.stderr.contains("Dockerfile:5") && result.stderr.contains("`tok`"),
        "{result}"
    );
    let ssh = Fixture::new(
        "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n\
         RUN --mount=type=ssh git clone git@example.com:x.git\n",
    );
    let result = ssh.build(cache.path(), &out, &[]);
    assert!(
        result.stderr.contains("Dockerfile:4")
            && result.stderr.contains("type=ssh is not supported"),
        "{result}"
    );
}

#[test]
fn bind_and_tmpfs_mounts_leave_nothing_in_the_layers() {
    let fx = Fixture::new(
        r#"ARG CONTAINER_APP_VERSION=1.0.0
ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS tools
RUN mkdir -p /opt/tools && echo tool > /opt/tools/t
FROM ${BASE_IMAGE}
RUN --mount=type=bind,source=site,target=/ctx cat /ctx/a.txt > /from-ctx && ! touch /ctx/x 2>/dev/null
RUN --mount=type=bind,from=tools,source=/opt/tools,target=/t cat /t/t > /from-stage
RUN --mount=type=bind,source=site,target=/rw,rw echo changed > /rw/a.txt && echo new > /rw/new && cat /rw/a.txt > /rw-seen
RUN --mount=type=tmpfs,target=/scratch,size=1m echo temp > /scratch/f && cat /scratch/f > /tmpfs-seen
"#,
    );
    let cache = isolated_cache();
    let out_dir = tempdir("blumeops-oci-");
    let out = out_dir.path().join("oci");
    fx.build(cache.path(), &out, &[]).assert_success();
    let bundle = tempdir("blumeops-bundle-");
    let bundle = bundle.path().join("b");
    umoci_unpack(&format!("{}:v1-abc1234", out.display()), &bundle);
    let rootfs = bundle.join("rootfs");
    for (file, want) in [
        ("from-ctx", "a\n"),
        ("from-stage", "tool\n"),
        ("rw-seen", "changed\n"),
        ("tmpfs-seen", "temp\n"),
    ] {
        assert_eq!(
            std::fs::read_to_string(rootfs.join(file)).unwrap(),
            want,
            "{file}"
        );
    }
    for gone in ["ctx", "t", "rw", "scratch"] {
        assert!(!rootfs.join(gone).exists(), "/{gone} is in the image");
    }
    // A writable bind mount's writes are thrown away: the context is as it was.
    let site = fx.src.path().join("containers/app/site");
    assert_eq!(std::fs::read_to_string(site.join("a.txt")).unwrap(), "a\n");
    assert!(!site.join("new").exists());
    // A context change reaches the step that mounts it: it runs again.
    std::fs::write(site.join("a.txt"), "b\n").unwrap();
    let again = fx.build(cache.path(), &out, &[]);
    again.assert_success();
    let bundle2 = tempdir("blumeops-bundle-");
    let bundle2 = bundle2.path().join("b");
    umoci_unpack(&format!("{}:v1-abc1234", out.display()), &bundle2);
    assert_eq!(
        std::fs::read_to_string(bundle2.join("rootfs/from-ctx")).unwrap(),
        "b\n"
    );
}

#[test]
fn with_registry_auth_publishes_without_engine_credentials_and_leaks_nothing() {
    use blumeops_core::{Container, Engine, EngineOptions, Secret, Store, TagPolicy};
    let registry = TestRegistry::start();
    let base = BaseImage::push(&registry);
    let store = tempdir("blumeops-store-");
    let engine = || {
        let mut opts = EngineOptions::new(Store::open(store.path()).unwrap());
        opts.epoch = 1_700_000_000;
        // No engine credentials at all: only the container's.
        Engine::new(opts).unwrap()
    };
    let password = registry.ci_password().to_owned();
    let target: blumeops_core::ImageRef = format!("{}/blumeops/auth:v1", registry.addr())
        .parse()
        .unwrap();
    let plain = Container::from(base.reference.clone()).with_new_file("/hello", "hi\n", 0o644);
    // Without them the push is refused.
    let err = registry
        .block_on(plain.publish(&engine(), &target, TagPolicy::CreateOnly))
        .unwrap_err();
    let text = format!("{err:#} {err:?}");
    assert!(!text.contains(&password));
    let authed = plain.with_registry_auth(registry.addr(), CI_USER, Secret::new(password.clone()));
    assert_eq!(authed.steps(), plain.steps(), "the credentials are a step");
    assert!(!format!("{authed:?}").contains(&password));
    let published = registry
        .block_on(authed.publish(&engine(), &target, TagPolicy::CreateOnly))
        .unwrap_or_else(|e| panic!("publish with the container's credentials failed: {e:#}"));
    assert!(published.to_string().contains("@sha256:"));
    let leaks = files_holding(store.path(), password.as_bytes());
    assert!(leaks.is_empty(), "the password is in the store: {leaks:?}");
    assert!(
        registry
            .manifest_puts()
            .iter()
            .any(|r| r.user.as_deref() == Some(CI_USER) && r.status < 300),
        "the manifest was not pushed as {CI_USER}: {}",
        registry.log_summary()
    );
}
