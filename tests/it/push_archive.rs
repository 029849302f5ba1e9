//! `blumeops push-archive`: a docker archive written by skopeo (Docker media types,
//! uncompressed layers) pushed through the zot-emulating proxy, which refuses Docker media
//! types, so the push must be OCI; checked with skopeo and umoci.
//!
//! Needs the binary: `cargo build -p blumeops-cli` (or `BLUMEOPS_BIN`).

use std::path::{Path, PathBuf};
use std::process::Command;

use blumeops_e2e::tools::{skopeo, skopeo_copy_to_oci, skopeo_inspect_raw, umoci_unpack};
use blumeops_e2e::zot_proxy::OCI_MANIFEST;
use blumeops_e2e::{
    BaseImage, CI_USER, CliOutput, PushedImage, TestRegistry, isolated_cache, run_cli,
    sha256_digest, tempdir,
};

const KEY_VAR: &str = "ZOT_CI_API_KEY";
const NAME: &str = "nixbox";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct Fixture {
    registry: TestRegistry,
    base: PushedImage,
    work: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let base = BaseImage::push(&registry);
        registry.clear_log();
        Self {
            registry,
            base,
            work: tempdir("blumeops-push-archive-"),
        }
    }

    /// The base image as a docker archive, as skopeo writes it.
    fn archive(&self) -> PathBuf {
        let path = self.work.path().join("image.tar");
        if !path.exists() {
            let src = format!("docker://{}", self.base.reference);
            let dest = format!("docker-archive:{}:blumeops/{NAME}:1", path.display());
            let out = skopeo(&["copy", "--src-tls-verify=false", &src, &dest]);
            assert!(
                out.status.success(),
                "skopeo copy to a docker archive failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        path
    }

    /// A source checkout with containers/NAME/default.nix, committed to git.
    fn src(&self) -> PathBuf {
        let src = self.work.path().join("src");
        let dir = src.join("containers").join(NAME);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("default.nix"),
            "{ pkgs }:\nlet\n  version = \"1.2.3\";\nin pkgs.dockerTools.buildImage { }\n",
        )
        .unwrap();
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .arg("-C")
                .arg(&src)
                .args(args)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
                .output()
                .expect("git runs");
            assert!(out.status.success(), "git {args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "nix container"]);
        src
    }

    fn push(&self, cache: &Path, extra: &[&str]) -> CliOutput {
        self.push_with_env(cache, extra, &[])
    }

    fn push_with_env(&self, cache: &Path, extra: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let archive = self.archive().display().to_string();
        let addr = self.registry.addr();
        let password = format!("env:{KEY_VAR}");
        let mut args = vec![
            "push-archive",
            &archive,
            "--container-name",
            NAME,
            "--registry",
            &addr,
            "--registry-username",
            CI_USER,
            "--registry-password",
            &password,
        ];
        args.extend_from_slice(extra);
        let cache = cache.display().to_string();
        let mut envs = vec![
            (KEY_VAR, self.registry.ci_password()),
            ("BLUMEOPS_CACHE_DIR", cache.as_str()),
        ];
        envs.extend_from_slice(env);
        let out = run_cli(&args, &envs);
        for secret in self.registry.secrets() {
            out.assert_no_secret(secret);
        }
        out
    }
}

fn git_head(src: &Path) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(src)
        .args(["rev-parse", "HEAD"])
        .output()
        .expect("git runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn skopeo_docker_archive_is_pushed_as_oci_and_runs() {
    let fx = Fixture::new();
    let cache = isolated_cache();
    let out = fx.push(
        cache.path(),
        &["--version", "v9.9.9", "--commit-sha", "abc1234"],
    );
    out.assert_success();
    let target = format!("{}/blumeops/{NAME}:v9.9.9-abc1234-nix", fx.registry.addr());
    let (reference, digest) = out
        .last_line()
        .split_once('@')
        .unwrap_or_else(|| panic!("last line is not REF@DIGEST\n{out}"));
    assert_eq!(reference, target);

    // An OCI manifest with gzip OCI layers, under the printed digest.
    let raw = skopeo_inspect_raw(&target);
    assert_eq!(sha256_digest(&raw), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).expect("manifest JSON");
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert!(!layers.is_empty());
    for layer in layers {
        assert_eq!(layer["mediaType"], OCI_LAYER_GZIP, "{manifest}");
    }
    // The config (image ID) is the base image's, byte for byte.
    let base: serde_json::Value =
        serde_json::from_slice(&skopeo_inspect_raw(&fx.base.reference)).expect("base manifest");
    assert_eq!(manifest["config"]["digest"], base["config"]["digest"]);

    let puts = fx.registry.manifest_puts();
    assert_eq!(puts.len(), 1, "{}", fx.registry.log_summary());
    assert_eq!(puts[0].status, 201);
    assert_eq!(puts[0].user.as_deref(), Some(CI_USER));
    assert_eq!(puts[0].content_type.as_deref(), Some(OCI_MANIFEST));

    // Pulled back independently, it unpacks to a rootfs with busybox.
    let layout = fx.work.path().join("layout");
    skopeo_copy_to_oci(&target, &layout, "x");
    let bundle = fx.work.path().join("bundle");
    umoci_unpack(&format!("{}:x", layout.display()), &bundle);
    assert!(bundle.join("rootfs/bin/busybox").is_file());

    // Again, from the same cache and from a fresh one: nothing is pushed.
    for cache in [cache.path(), isolated_cache().path()] {
        fx.registry.clear_log();
        let again = fx.push(cache, &["--version", "v9.9.9", "--commit-sha", "abc1234"]);
        again.assert_success();
        assert_eq!(again.last_line(), out.last_line());
        assert!(
            fx.registry.manifest_puts().is_empty() && fx.registry.blob_uploads().is_empty(),
            "a re-run pushed again:\n{}",
            fx.registry.log_summary()
        );
    }
}

#[test]
fn version_from_default_nix_and_sha_from_git_head() {
    let fx = Fixture::new();
    let src = fx.src();
    let src_arg = src.display().to_string();
    let out = fx.push(isolated_cache().path(), &["--src", &src_arg]);
    out.assert_success();
    let sha: String = git_head(&src).chars().take(7).collect();
    let tag = format!("v1.2.3-{sha}-nix");
    let target = format!("{}/blumeops/{NAME}:{tag}", fx.registry.addr());
    assert!(
        out.last_line().starts_with(&format!("{target}@sha256:")),
        "{out}"
    );
    let digest = out.last_line().split_once('@').unwrap().1.to_owned();

    // Workflow outputs and --json, as publish writes them.
    let outputs = fx.work.path().join("github-output");
    let outputs_arg = outputs.display().to_string();
    let json = fx.push_with_env(
        isolated_cache().path(),
        &["--src", &src_arg, "--json"],
        &[("GITHUB_OUTPUT", &outputs_arg)],
    );
    json.assert_success();
    let line: serde_json::Value = serde_json::from_str(json.last_line()).expect("JSON line");
    assert_eq!(line["ref"], target.as_str());
    assert_eq!(line["digest"], digest.as_str());
    assert_eq!(line["tag"], tag.as_str());
    let written = std::fs::read_to_string(&outputs).expect("output file");
    assert_eq!(
        written,
        format!("ref={target}\ndigest={digest}\ntag={tag}\n")
    );
}

#[test]
fn blumeops_docker_archive_round_trips_and_another_image_for_the_tag_exits_4() {
    let fx = Fixture::new();
    let args = ["--version", "v1", "--commit-sha", "abc1234"];
    fx.push(isolated_cache().path(), &args).assert_success();

    // blumeops' own docker archive output: gzip layers under blobs/sha256/, kept as they
    // are, so the import gives back the very manifest `build` made.
    let other = fx.work.path().join("hello.tar");
    let cache = isolated_cache();
    let cache_dir = cache.path().display().to_string();
    let built = run_cli(
        &[
            "build",
            "--container-name",
            "hello",
            "--registry",
            &fx.registry.addr(),
            "--build-arg",
            &format!("BASE_IMAGE={}", fx.base.reference),
            "--output",
            &format!("docker-archive:{}", other.display()),
        ],
        &[("BLUMEOPS_CACHE_DIR", &cache_dir)],
    );
    built.assert_success();
    let (_, built_digest) = built.last_line().split_once('@').expect("REF@DIGEST");

    fx.registry.clear_log();
    let archive = other.display().to_string();
    let addr = fx.registry.addr();
    let password = format!("env:{KEY_VAR}");
    let push = |version: &str| {
        run_cli(
            &[
                "push-archive",
                &archive,
                "--container-name",
                NAME,
                "--registry",
                &addr,
                "--registry-password",
                &password,
                "--version",
                version,
                "--commit-sha",
                "abc1234",
            ],
            &[
                (KEY_VAR, fx.registry.ci_password()),
                ("BLUMEOPS_CACHE_DIR", &cache_dir),
            ],
        )
    };
    let conflict = push("v1");
    conflict.assert_code(4);
    assert!(conflict.stderr.contains("v1-abc1234-nix"), "{conflict}");
    assert!(
        fx.registry.manifest_puts().iter().all(|p| p.status != 201),
        "{}",
        fx.registry.log_summary()
    );

    let fresh = push("v2");
    fresh.assert_success();
    let (_, pushed_digest) = fresh.last_line().split_once('@').expect("REF@DIGEST");
    assert_eq!(pushed_digest, built_digest, "{fresh}");
}

#[test]
fn missing_file_and_not_an_archive_exit_2() {
    let fx = Fixture::new();
    let cache = isolated_cache();
    let cache_dir = cache.path().display().to_string();
    let not_archive = fx.work.path().join("notes.txt");
    std::fs::write(&not_archive, "not a tar").unwrap();
    let missing = fx.work.path().join("missing.tar");
    for file in [&missing, &not_archive] {
        let file = file.display().to_string();
        let out = run_cli(
            &[
                "push-archive",
                &file,
                "--container-name",
                NAME,
                "--registry",
                &fx.registry.addr(),
                "--version",
                "v1",
                "--commit-sha",
                "abc1234",
            ],
            &[("BLUMEOPS_CACHE_DIR", &cache_dir)],
        );
        out.assert_code(2);
        assert!(out.stderr.contains(&file), "file not named\n{out}");
    }
    assert!(fx.registry.manifest_puts().is_empty());
}
