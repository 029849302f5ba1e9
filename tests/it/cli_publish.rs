//! The blumeops CLI end to end: build and publish `hello` on top of the busybox base, through
//! the zot-emulating proxy, and check the results with skopeo/umoci/chroot.
//!
//! Needs the binary: `cargo build -p blumeops-cli` (or `BLUMEOPS_BIN`).

use std::path::Path;
use std::time::Duration;

use blumeops_e2e::tools::{
    chroot_run, oci_layout_manifest_digests, skopeo, skopeo_copy_to_oci, skopeo_inspect,
    skopeo_inspect_config, skopeo_inspect_raw, umoci_unpack,
};
use blumeops_e2e::zot_proxy::OCI_MANIFEST;
use blumeops_e2e::{
    BaseImage, CI_USER, CliOutput, PushedImage, TestRegistry, free_port, isolated_cache,
    random_hex, run_cli, run_cli_with, sha256_digest, tempdir, workspace_root,
};

const VERSION: &str = "v1.0.0";
const SHA: &str = "abc1234";
const TAG: &str = "v1.0.0-abc1234";
const KEY_VAR: &str = "ZOT_CI_API_KEY";

/// A registry with the busybox base pushed to `library/busybox:1.37`.
struct Fixture {
    registry: TestRegistry,
    base: PushedImage,
}

impl Fixture {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let base = BaseImage::push(&registry);
        registry.clear_log();
        Self { registry, base }
    }

    fn target(&self) -> String {
        format!("{}/blumeops/hello:{TAG}", self.registry.addr())
    }

    /// `blumeops publish` of hello as `zot-ci` with the key in `$ZOT_CI_API_KEY`.
    fn publish(&self, cache: &Path, key: &str, extra_env: &[(&str, &str)]) -> CliOutput {
        let cache = cache.display().to_string();
        let mut env = vec![(KEY_VAR, key), ("BLUMEOPS_CACHE_DIR", cache.as_str())];
        env.extend_from_slice(extra_env);
        let output = run_cli(
            &publish_args(&self.registry.addr(), &self.base.reference),
            &env,
        );
        self.assert_no_secrets(&output);
        output
    }

    /// `blumeops build --output OUTPUT` of hello.
    fn build(&self, cache: &Path, output: &str, extra_env: &[(&str, &str)]) -> CliOutput {
        let cache = cache.display().to_string();
        let mut env = vec![("BLUMEOPS_CACHE_DIR", cache.as_str())];
        env.extend_from_slice(extra_env);
        let base_arg = format!("BASE_IMAGE={}", self.base.reference);
        let addr = self.registry.addr();
        let args = [
            "build",
            "--container-name",
            "hello",
            "--registry",
            &addr,
            "--build-arg",
            &base_arg,
            "--output",
            output,
        ];
        let output = run_cli(&args, &env);
        self.assert_no_secrets(&output);
        output
    }

    fn assert_no_secrets(&self, output: &CliOutput) {
        for secret in self.registry.secrets() {
            output.assert_no_secret(secret);
        }
    }
}

fn publish_args(registry: &str, base: &str) -> Vec<String> {
    let src = workspace_root().display().to_string();
    vec![
        "publish".to_owned(),
        "--src".to_owned(),
        src,
        "--container-name".to_owned(),
        "hello".to_owned(),
        "--version".to_owned(),
        VERSION.to_owned(),
        "--commit-sha".to_owned(),
        SHA.to_owned(),
        "--registry".to_owned(),
        registry.to_owned(),
        "--registry-username".to_owned(),
        CI_USER.to_owned(),
        "--registry-password".to_owned(),
        format!("env:{KEY_VAR}"),
        "--build-arg".to_owned(),
        format!("BASE_IMAGE={base}"),
    ]
}

/// `REF@sha256:HEX` -> (`REF`, `sha256:HEX`).
#[track_caller]
fn split_ref(line: &str) -> (&str, &str) {
    let (reference, digest) = line
        .split_once('@')
        .unwrap_or_else(|| panic!("last stdout line is not REF@DIGEST: {line:?}"));
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "bad digest in {line:?}"
    );
    (reference, digest)
}

fn lowercase(s: &str) -> String {
    s.to_ascii_lowercase()
}

#[test]
fn publish_pushes_a_runnable_oci_image_and_prints_its_digest() {
    let fx = Fixture::new();
    let cache = isolated_cache();
    let out = fx.publish(cache.path(), fx.registry.ci_password(), &[]);
    out.assert_success();
    let (reference, digest) = split_ref(out.last_line());
    assert_eq!(reference, fx.target());

    // The registry has the tag, as an OCI manifest whose digest is the printed one.
    let raw = skopeo_inspect_raw(&fx.target());
    assert_eq!(sha256_digest(&raw), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).expect("manifest JSON");
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(skopeo_inspect(&fx.target())["Digest"], digest);
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/blumeops/hello", fx.registry.addr()),
    ]);
    assert!(String::from_utf8_lossy(&tags.stdout).contains(TAG));

    // Pushed as zot-ci with the exact OCI Content-Type, and nothing was refused.
    let puts = fx.registry.manifest_puts();
    assert_eq!(puts.len(), 1, "{}", fx.registry.log_summary());
    assert_eq!(puts[0].status, 201);
    assert_eq!(puts[0].user.as_deref(), Some(CI_USER));
    assert_eq!(puts[0].content_type.as_deref(), Some(OCI_MANIFEST));

    // Built on the base: its layer comes first.
    let base_manifest: serde_json::Value =
        serde_json::from_slice(&skopeo_inspect_raw(&fx.base.reference)).expect("base manifest");
    assert_eq!(
        manifest["layers"][0]["digest"],
        base_manifest["layers"][0]["digest"]
    );

    // Pull it back independently, unpack and run it.
    let work = tempdir("blumeops-pulled-");
    let layout = work.path().join("layout");
    skopeo_copy_to_oci(&fx.target(), &layout, "hello");
    let bundle = work.path().join("bundle");
    umoci_unpack(&format!("{}:hello", layout.display()), &bundle);
    let rootfs = bundle.join("rootfs");
    let run = chroot_run(&rootfs, &["/usr/local/bin/hello"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "hello failed: {run:?}");
    assert!(lowercase(&stdout).contains("hello"), "{stdout}");

    // The default command runs it too.
    let config = skopeo_inspect_config(&fx.target());
    let mut argv: Vec<String> = Vec::new();
    for key in ["Entrypoint", "Cmd"] {
        if let Some(parts) = config["config"][key].as_array() {
            argv.extend(parts.iter().filter_map(|p| p.as_str().map(str::to_owned)));
        }
    }
    assert!(
        argv.iter().any(|a| a.contains("hello")),
        "default command does not run hello: {argv:?}"
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let run = chroot_run(&rootfs, &argv);
    assert!(run.status.success(), "default command failed: {run:?}");
    assert!(lowercase(&String::from_utf8_lossy(&run.stdout)).contains("hello"));
}

#[test]
fn republish_of_the_same_image_pushes_nothing() {
    let fx = Fixture::new();
    let cache = isolated_cache();
    let first = fx.publish(cache.path(), fx.registry.ci_password(), &[]);
    first.assert_success();
    split_ref(first.last_line());

    fx.registry.clear_log();
    let second = fx.publish(cache.path(), fx.registry.ci_password(), &[]);
    second.assert_success();
    assert_eq!(second.last_line(), first.last_line());
    assert!(
        fx.registry.manifest_puts().is_empty(),
        "manifest PUT on an unchanged re-publish (zot-ci would get 403):\n{}",
        fx.registry.log_summary()
    );
    assert!(
        fx.registry.blob_uploads().is_empty(),
        "blob upload on an unchanged re-publish:\n{}",
        fx.registry.log_summary()
    );
}

#[test]
fn republish_from_a_fresh_cache_pushes_nothing() {
    let fx = Fixture::new();
    let first = fx.publish(isolated_cache().path(), fx.registry.ci_password(), &[]);
    first.assert_success();

    fx.registry.clear_log();
    let second = fx.publish(isolated_cache().path(), fx.registry.ci_password(), &[]);
    second.assert_success();
    assert_eq!(second.last_line(), first.last_line());
    assert!(
        fx.registry.manifest_puts().is_empty() && fx.registry.blob_uploads().is_empty(),
        "a rebuild from scratch pushed again:\n{}",
        fx.registry.log_summary()
    );
}

#[test]
fn different_image_for_an_existing_tag_exits_4_and_keeps_the_tag() {
    let fx = Fixture::new();
    let first = fx.publish(
        isolated_cache().path(),
        fx.registry.ci_password(),
        &[("SOURCE_DATE_EPOCH", "1")],
    );
    first.assert_success();
    let (_, digest) = split_ref(first.last_line());
    let digest = digest.to_owned();

    fx.registry.clear_log();
    let second = fx.publish(
        isolated_cache().path(),
        fx.registry.ci_password(),
        &[("SOURCE_DATE_EPOCH", "2")],
    );
    second.assert_code(4);
    assert!(
        second.combined().contains(TAG),
        "message does not name the tag\n{second}"
    );
    assert!(
        fx.registry.manifest_puts().iter().all(|p| p.status != 201),
        "{}",
        fx.registry.log_summary()
    );
    assert_eq!(skopeo_inspect(&fx.target())["Digest"], digest.as_str());
}

#[test]
fn wrong_key_exits_3_naming_registry_user_and_status() {
    let fx = Fixture::new();
    let wrong = format!("zak_{}", random_hex(16));
    let out = fx.publish(isolated_cache().path(), &wrong, &[]);
    out.assert_code(3);
    out.assert_no_secret(&wrong);
    let stderr = &out.stderr;
    assert!(
        stderr.contains(&fx.registry.addr()),
        "no registry address\n{out}"
    );
    assert!(stderr.contains(CI_USER), "no user\n{out}");
    assert!(stderr.contains("401"), "no status\n{out}");
    assert!(
        fx.registry.manifest_puts().is_empty(),
        "{}",
        fx.registry.log_summary()
    );
}

#[test]
fn env_secret_naming_an_unset_variable_exits_2() {
    let fx = Fixture::new();
    let var = format!("BLUMEOPS_E2E_UNSET_{}", random_hex(4).to_uppercase());
    let base_arg = format!("BASE_IMAGE={}", fx.base.reference);
    let password = format!("env:{var}");
    let addr = fx.registry.addr();
    let cache = isolated_cache();
    let cache_dir = cache.path().display().to_string();
    let out = run_cli(
        &[
            "publish",
            "--container-name",
            "hello",
            "--version",
            VERSION,
            "--commit-sha",
            SHA,
            "--registry",
            &addr,
            "--registry-password",
            &password,
            "--build-arg",
            &base_arg,
        ],
        &[("BLUMEOPS_CACHE_DIR", &cache_dir)],
    );
    out.assert_code(2);
    assert!(out.stderr.contains(&var), "variable not named\n{out}");
}

#[test]
fn unreachable_registry_exits_5_quickly() {
    let addr = format!("127.0.0.1:{}", free_port());
    let base = format!("{addr}/library/busybox:1.37");
    let cache = isolated_cache();
    let cache_dir = cache.path().display().to_string();
    let key = format!("zak_{}", random_hex(16));
    let out = run_cli_with(
        &publish_args(&addr, &base),
        &[(KEY_VAR, &key), ("BLUMEOPS_CACHE_DIR", &cache_dir)],
        &workspace_root(),
        Duration::from_secs(60),
    );
    out.assert_code(5);
    out.assert_no_secret(&key);
    assert!(
        out.elapsed < Duration::from_secs(30),
        "took {:?}\n{out}",
        out.elapsed
    );
    assert!(out.stderr.contains(&addr), "address not named\n{out}");
}

#[test]
fn clean_builds_with_separate_caches_have_the_same_digest() {
    let fx = Fixture::new();
    let out_dir = tempdir("blumeops-repro-");
    let mut digests = Vec::new();
    for name in ["one", "two"] {
        let layout = out_dir.path().join(name);
        let cache = isolated_cache();
        fx.build(cache.path(), &format!("oci:{}", layout.display()), &[])
            .assert_success();
        let found = oci_layout_manifest_digests(&layout);
        assert_eq!(found.len(), 1, "one manifest in {}", layout.display());
        digests.push(found[0].clone());
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn docker_archive_output_is_readable_by_skopeo() {
    let fx = Fixture::new();
    let dir = tempdir("blumeops-archive-");
    let archive = dir.path().join("hello.tar");
    fx.build(
        isolated_cache().path(),
        &format!("docker-archive:{}", archive.display()),
        &[],
    )
    .assert_success();
    let inspect = skopeo_inspect(&format!("docker-archive:{}", archive.display()));
    assert_eq!(inspect["Os"], "linux");
    assert!(
        inspect["Layers"].as_array().is_some_and(|l| l.len() >= 2),
        "{inspect}"
    );
}

#[test]
fn container_version_of_hello() {
    let out = run_cli(&["container-version", "hello"], &[]);
    out.assert_success();
    assert_eq!(out.last_line(), VERSION);
}

#[test]
fn tampered_base_blob_fails_with_exit_6_and_is_not_cached() {
    let fx = Fixture::new();
    let manifest: serde_json::Value =
        serde_json::from_slice(&skopeo_inspect_raw(&fx.base.reference)).expect("base manifest");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_owned();
    let data_path = fx.registry.blob_data_path(&layer);
    let mut data = std::fs::read(&data_path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", data_path.display()));
    let middle = data.len() / 2;
    for byte in &mut data[middle..middle + 16] {
        *byte ^= 0xff;
    }
    std::fs::write(&data_path, &data)
        .unwrap_or_else(|e| panic!("failed to write {}: {e}", data_path.display()));

    let cache = isolated_cache();
    let dir = tempdir("blumeops-tamper-");
    let out = fx.build(
        cache.path(),
        &format!("oci:{}", dir.path().join("out").display()),
        &[],
    );
    out.assert_code(6);
    let stderr = lowercase(&out.stderr);
    assert!(
        stderr.contains("digest")
            && (stderr.contains("mismatch") || stderr.contains("does not match")),
        "no digest mismatch message\n{out}"
    );
    let hex = layer.trim_start_matches("sha256:");
    for file in files_under(cache.path()) {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(
            !name.is_some_and(|n| n.contains(hex)),
            "the bad blob is in the cache: {}",
            file.display()
        );
        let same_size = std::fs::metadata(&file).is_ok_and(|m| m.len() == data.len() as u64);
        if same_size {
            assert_ne!(
                std::fs::read(&file).ok().as_deref(),
                Some(data.as_slice()),
                "the tampered bytes are in the cache: {}",
                file.display()
            );
        }
    }
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files
}

/// blumeops starts where the system has no CA certificates (an image without
/// `ca-certificates`; here `SSL_CERT_FILE`/`SSL_CERT_DIR` name nothing): it says once that it
/// uses its built-in roots, and a publish to a plain-HTTP loopback registry works.
#[test]
fn publish_works_without_system_ca_certificates() {
    let fx = Fixture::new();
    let cache = isolated_cache();
    let out = fx.publish(
        cache.path(),
        fx.registry.ci_password(),
        &[
            ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
            ("SSL_CERT_DIR", "/nonexistent"),
        ],
    );
    out.assert_success();
    assert_eq!(
        out.stderr
            .matches("no CA certificates found on this system")
            .count(),
        1,
        "{out}"
    );
    let (reference, digest) = split_ref(out.last_line());
    assert_eq!(reference, fx.target());
    assert_eq!(sha256_digest(&skopeo_inspect_raw(&fx.target())), digest);
}
