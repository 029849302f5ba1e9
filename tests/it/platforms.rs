//! Multi-platform builds end to end: a Dockerfile published for linux/amd64 and
//! linux/arm64 from a two-platform busybox base (both built from Debian's busybox-static
//! packages), the arm64 steps run through qemu-user-static's binfmt_misc handler; the
//! index and both images checked with skopeo and umoci.
//!
//! Needs root, qemu-aarch64 registered (`scripts/enable-emulation.sh`), the arm64 dpkg
//! architecture (`scripts/install-deps.sh`) and the binary.

use std::path::Path;

use blumeops_e2e::tools::{skopeo, skopeo_inspect_raw, umoci_unpack};
use blumeops_e2e::{
    CI_USER, CliOutput, MultiArchBase, PushedImage, TestRegistry, isolated_cache, run_cli,
    sha256_digest, tempdir,
};

const VERSION: &str = "v2.0.0";
const SHA: &str = "def5678";
const KEY_VAR: &str = "ZOT_CI_API_KEY";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A stage for the build machine's platform whose result each target copies, and a
/// final stage per target that records what it ran on and what it was told.
const DOCKERFILE: &str = r#"ARG BASE_IMAGE
ARG CONTAINER_APP_VERSION=v2.0.0
FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS tools
ARG TARGETARCH
RUN mkdir /out && uname -m > /out/build-uname && echo "$TARGETARCH" > /out/built-for

FROM ${BASE_IMAGE}
ARG TARGETARCH
ARG TARGETPLATFORM
ARG BUILDARCH
COPY --from=tools /out /from-build
RUN uname -m > /uname && echo "$TARGETARCH" > /targetarch \
    && echo "$TARGETPLATFORM" > /targetplatform && echo "$BUILDARCH" > /buildarch
"#;

/// Files only: no command, so no emulator is needed for any platform.
const FILES_ONLY: &str = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY note.txt /note.txt\n";

/// A step that fails on arm64 only.
const AMD64_ONLY: &str =
    "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN test \"$(uname -m)\" = x86_64 && touch /ok\n";

/// Whether build steps run here, for arm64 too; records a skip when they do not.
fn can_emulate_arm64() -> bool {
    if !blumeops_e2e::is_root() {
        blumeops_core::testing::skip("needs root to run build steps");
        return false;
    }
    MultiArchBase::arm64_runs_here()
}

struct Fixture {
    registry: TestRegistry,
    base: PushedImage,
    src: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let base = MultiArchBase::push_to(&registry, "library/busybox");
        let src = tempdir("blumeops-platforms-src-");
        for (name, text) in [
            ("multi", DOCKERFILE),
            ("files", FILES_ONLY),
            ("amd64only", AMD64_ONLY),
        ] {
            let dir = src.path().join("containers").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("Dockerfile"), text).unwrap();
        }
        std::fs::write(src.path().join("containers/files/note.txt"), "hi\n").unwrap();
        registry.clear_log();
        Self {
            registry,
            base,
            src,
        }
    }

    fn run(&self, command: &str, name: &str, extra: &[&str], cache: &Path) -> CliOutput {
        let (src, addr) = (self.src.path().display().to_string(), self.registry.addr());
        let base_arg = format!("BASE_IMAGE={}", self.base.reference);
        let password = format!("env:{KEY_VAR}");
        let mut args = vec![
            command,
            "--src",
            &src,
            "--container-name",
            name,
            "--version",
            VERSION,
            "--commit-sha",
            SHA,
            "--registry",
            &addr,
            "--build-arg",
            &base_arg,
        ];
        if command == "publish" {
            args.extend([
                "--registry-username",
                CI_USER,
                "--registry-password",
                &password,
            ]);
        }
        args.extend(extra);
        let cache = cache.display().to_string();
        let env = [
            (KEY_VAR, self.registry.ci_password()),
            ("BLUMEOPS_CACHE_DIR", cache.as_str()),
        ];
        let output = run_cli(&args, &env);
        for secret in self.registry.secrets() {
            output.assert_no_secret(secret);
        }
        output
    }

    fn tag_ref(&self, name: &str) -> String {
        format!("{}/blumeops/{name}:{VERSION}-{SHA}", self.registry.addr())
    }
}

/// `skopeo copy` one platform's image of `reference` into a layout and unpack it.
fn unpack_platform(reference: &str, arch: &str, dir: &Path) -> std::path::PathBuf {
    let layout = dir.join(format!("layout-{arch}"));
    let out = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--override-os",
        "linux",
        "--override-arch",
        arch,
        &format!("docker://{reference}"),
        &format!("oci:{}:img", layout.display()),
    ]);
    assert!(
        out.status.success(),
        "skopeo copy of {arch}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = dir.join(format!("bundle-{arch}"));
    umoci_unpack(&format!("{}:img", layout.display()), &bundle);
    bundle.join("rootfs")
}

fn read(rootfs: &Path, path: &str) -> String {
    let file = rootfs.join(path.trim_start_matches('/'));
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_owned()
}

#[test]
fn publish_for_two_platforms_pushes_one_index_of_both() {
    if !can_emulate_arm64() {
        return;
    }
    let fx = Fixture::new();
    let cache = isolated_cache();
    let flags = [
        "--platform",
        "linux/amd64,linux/arm64",
        "--cache-repo",
        "auto",
        "--progress",
        "plain",
    ];
    let out = fx.run("publish", "multi", &flags, cache.path());
    out.assert_success();
    let target = fx.tag_ref("multi");
    let (reference, digest) = out.last_line().split_once('@').expect("REF@DIGEST");
    assert_eq!(reference, target);

    // The tag is an OCI index of both platforms, and its digest is the printed one.
    let raw = skopeo_inspect_raw(&target);
    assert_eq!(sha256_digest(&raw), digest);
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    let platforms: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["platform"]["os"].as_str().unwrap(),
                e["platform"]["architecture"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(platforms, [("linux", "amd64"), ("linux", "arm64")]);

    // The manifests went by digest, the index under the tag last; nothing was refused.
    let puts = fx.registry.manifest_puts();
    // The index's three manifests are the first PUTs; the registry cache's entries follow.
    assert!(puts.len() > 3, "{}", fx.registry.log_summary());
    for (put, entry) in puts[..2].iter().zip(entries) {
        assert!(
            put.path.ends_with(entry["digest"].as_str().unwrap()),
            "{put:?}"
        );
    }
    assert!(
        puts[2].path.ends_with(&format!("{VERSION}-{SHA}")),
        "{:?}",
        puts[2]
    );
    assert_eq!(puts[2].content_type.as_deref(), Some(OCI_INDEX));
    assert!(fx.registry.requests().iter().all(|r| r.status != 403));

    // Each image ran its steps as its architecture, was told its platform, and says so in
    // its config; the build stage ran natively for both.
    let work = tempdir("blumeops-platforms-");
    for (arch, uname) in [("amd64", "x86_64"), ("arm64", "aarch64")] {
        let rootfs = unpack_platform(&target, arch, work.path());
        assert_eq!(read(&rootfs, "/uname"), uname, "{arch}");
        assert_eq!(read(&rootfs, "/targetarch"), arch);
        assert_eq!(read(&rootfs, "/targetplatform"), format!("linux/{arch}"));
        assert_eq!(read(&rootfs, "/buildarch"), "amd64");
        assert_eq!(read(&rootfs, "/from-build/build-uname"), "x86_64", "{arch}");
        assert_eq!(read(&rootfs, "/from-build/built-for"), arch);
        let config = skopeo(&[
            "inspect",
            "--config",
            "--tls-verify=false",
            "--override-arch",
            arch,
            &format!("docker://{target}"),
        ]);
        let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["os"], "linux");
    }

    // Progress named the platform of each step.
    let stderr = out.stderr.clone();
    assert!(stderr.contains("linux/arm64: "), "{stderr}");
    assert!(stderr.contains("linux/amd64: "), "{stderr}");

    // Again: the same index is at the tag, so nothing is pushed, and it succeeds.
    fx.registry.clear_log();
    let again = fx.run("publish", "multi", &flags, cache.path());
    again.assert_success();
    assert_eq!(again.last_line(), out.last_line());
    assert!(
        fx.registry.manifest_puts().is_empty(),
        "{}",
        fx.registry.log_summary()
    );
    assert!(
        fx.registry.blob_uploads().is_empty(),
        "{}",
        fx.registry.log_summary()
    );

    // Another machine (an empty cache) with the registry cache runs no step of either
    // platform and makes the same index.
    let other = isolated_cache();
    let imported = fx.run("publish", "multi", &flags, other.path());
    imported.assert_success();
    assert_eq!(imported.last_line(), out.last_line());
    let ran: Vec<&str> = imported
        .stderr
        .lines()
        .filter(|l| l.contains("] ran in "))
        .collect();
    assert!(ran.is_empty(), "steps ran: {ran:?}\n{}", imported.stderr);
    let from_registry = imported.stderr.matches("] cached (registry) in ").count();
    assert!(from_registry >= 4, "{}", imported.stderr);
}

fn platforms_flag() -> [&'static str; 2] {
    ["--platform", "linux/amd64,linux/arm64"]
}

#[test]
fn a_platform_the_base_lacks_fails_naming_it_and_makes_no_tag() {
    if !can_emulate_arm64() {
        return;
    }
    let fx = Fixture::new();
    let cache = isolated_cache();
    let out = fx.run(
        "publish",
        "files",
        &["--platform", "linux/arm64,linux/riscv64"],
        cache.path(),
    );
    assert!(!out.status.success(), "{}", out.combined());
    let stderr = out.stderr.clone();
    assert!(stderr.contains("linux/riscv64"), "{stderr}");
    assert!(stderr.contains("library/busybox"), "{stderr}");
    assert!(
        stderr.contains("linux/amd64"),
        "lists what the base has: {stderr}"
    );
    assert!(
        fx.registry.manifest_puts().is_empty(),
        "{}",
        fx.registry.log_summary()
    );
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/blumeops/files", fx.registry.addr()),
    ]);
    assert!(
        !String::from_utf8_lossy(&tags.stdout).contains(VERSION),
        "a tag was made: {}",
        String::from_utf8_lossy(&tags.stdout)
    );
}

#[test]
fn build_of_two_platforms_writes_an_index_and_a_docker_archive_refuses_them() {
    if !can_emulate_arm64() {
        return;
    }
    let fx = Fixture::new();
    let cache = isolated_cache();
    let work = tempdir("blumeops-platforms-out-");
    let layout = work.path().join("layout");
    let output = format!("oci:{}", layout.display());
    let mut extra = vec!["--output", output.as_str()];
    extra.extend(platforms_flag());
    let out = fx.run("build", "files", &extra, cache.path());
    out.assert_success();
    let (_, digest) = out.last_line().split_once('@').expect("REF@DIGEST");
    let tag = format!("{VERSION}-{SHA}");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:{tag}", layout.display()),
    ]);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(sha256_digest(&raw.stdout), digest);
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    // Each platform's image unpacks from the layout.
    for arch in ["amd64", "arm64"] {
        let single = work.path().join(format!("single-{arch}"));
        let copied = skopeo(&[
            "copy",
            "--override-arch",
            arch,
            &format!("oci:{}:{tag}", layout.display()),
            &format!("oci:{}:img", single.display()),
        ]);
        assert!(
            copied.status.success(),
            "{}",
            String::from_utf8_lossy(&copied.stderr)
        );
        let bundle = work.path().join(format!("bundle-{arch}"));
        umoci_unpack(&format!("{}:img", single.display()), &bundle);
        assert_eq!(read(&bundle.join("rootfs"), "/note.txt"), "hi");
    }

    // One platform that is not the host's: a single image, told its platform.
    let arm_layout = work.path().join("arm64-only");
    let output = format!("oci:{}", arm_layout.display());
    let arm = fx.run(
        "build",
        "multi",
        &["--output", &output, "--platform", "linux/arm64"],
        cache.path(),
    );
    arm.assert_success();
    let bundle = work.path().join("bundle-arm64-only");
    umoci_unpack(&format!("{}:{tag}", arm_layout.display()), &bundle);
    let rootfs = bundle.join("rootfs");
    assert_eq!(read(&rootfs, "/uname"), "aarch64");
    assert_eq!(read(&rootfs, "/targetarch"), "arm64");
    assert_eq!(read(&rootfs, "/from-build/build-uname"), "x86_64");

    // A step that fails for one platform fails the build, naming the platform and the
    // step's error, and writes nothing.
    let failed_layout = work.path().join("failed");
    let output = format!("oci:{}", failed_layout.display());
    let mut extra = vec!["--output", output.as_str()];
    extra.extend(platforms_flag());
    let failed = fx.run("build", "amd64only", &extra, cache.path());
    assert!(!failed.status.success(), "{failed}");
    assert!(
        failed.stderr.contains("the build for linux/arm64 failed")
            && failed.stderr.contains("step 4 failed"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("command exited with code 1"),
        "{}",
        failed.stderr
    );
    assert!(!failed_layout.exists(), "{failed}");

    // A docker archive holds one image: refused before anything is built.
    let archive = format!("docker-archive:{}", work.path().join("x.tar").display());
    let mut extra = vec!["--output", archive.as_str()];
    extra.extend(platforms_flag());
    let refused = fx.run("build", "files", &extra, cache.path());
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("docker archive holds one image"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("[1/"),
        "a step ran: {}",
        refused.stderr
    );

    // doctor says how each platform's steps run here.
    let doctor = run_cli(&["doctor", "--json"], &[]);
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout).unwrap();
    let runs = |p: &str| {
        report["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["platform"] == p)
            .map(|e| (e["runs"].clone(), e["detail"].clone()))
            .unwrap()
    };
    assert_eq!(runs("linux/amd64").0, "native");
    assert_eq!(
        runs("linux/arm64"),
        ("emulated".into(), "qemu-aarch64".into())
    );

    // plan shows each platform's plan.
    let src = fx.src.path().display().to_string();
    let base_arg = format!("BASE_IMAGE={}", fx.base.reference);
    let plan = run_cli(
        &[
            "plan",
            "--src",
            &src,
            "--build-arg",
            &base_arg,
            "--container-name",
            "multi",
            "--platform",
            "linux/amd64,linux/arm64",
        ],
        &[],
    );
    plan.assert_success();
    assert!(
        plan.stdout.contains("multi for linux/amd64: "),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("multi for linux/arm64: "),
        "{}",
        plan.stdout
    );
}
