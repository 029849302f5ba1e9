//! Base images through registry mirrors end to end: a Dockerfile `FROM docker.io/...` (Docker
//! Hub is out of reach here) is served by the test registry as a pull-through cache would
//! hold it, under `ADDR/docker.io/...`; through registries.conf, `--registry-mirror` and
//! `BLUMEOPS_REGISTRY_MIRRORS`, past a mirror that is down; and the image is the one a build
//! `FROM ADDR/docker.io/...` makes.
//!
//! Needs the binary: `cargo build -p blumeops-cli` (or `BLUMEOPS_BIN`). No step runs a
//! command, so no executor is needed.

use std::path::Path;

use blumeops_e2e::{
    BASE_TAG, BaseImage, CliOutput, PushedImage, TestRegistry, free_port, isolated_cache, run_cli,
    tempdir,
};
use http::Method;

const DOCKERFILE: &str = "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n\
                          COPY hello.txt /hello.txt\nENV GREETING=hi\n";

/// The base as Docker Hub names it.
fn hub_base() -> String {
    format!("docker.io/library/busybox:{BASE_TAG}")
}

/// A registry holding the busybox base where a pull-through cache of Docker Hub keeps it,
/// and a checkout with one Dockerfile container.
struct Fixture {
    registry: TestRegistry,
    /// `ADDR/docker.io/library/busybox:TAG`.
    base: PushedImage,
    src: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let base = BaseImage::push_to(&registry, "docker.io/library/busybox");
        registry.clear_log();
        let src = tempdir("blumeops-src-");
        let dir = src.path().join("containers/app");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
        std::fs::write(dir.join("hello.txt"), "hello\n").unwrap();
        Self {
            registry,
            base,
            src,
        }
    }

    /// The mirror of Docker Hub in the test registry: `ADDR/docker.io`.
    fn mirror(&self) -> String {
        format!("{}/docker.io", self.registry.addr())
    }

    /// `blumeops build` of the container on `base`, from an empty cache (so the base is
    /// downloaded), with no registries.conf unless `env` names one; returns the output and
    /// the image's digest (empty when the build failed).
    fn build(&self, base: &str, extra: &[&str], env: &[(&str, &str)]) -> (CliOutput, String) {
        let cache = isolated_cache();
        let out_dir = tempdir("blumeops-out-");
        let output = format!("oci:{}", out_dir.path().join("layout").display());
        let src = self.src.path().display().to_string();
        let base_arg = format!("BASE_IMAGE={base}");
        let addr = self.registry.addr();
        let mut args = vec![
            "build",
            "--src",
            &src,
            "--container-name",
            "app",
            "--version",
            "v1",
            "--registry",
            &addr,
            "--build-arg",
            &base_arg,
            "--output",
            &output,
        ];
        args.extend_from_slice(extra);
        let cache_dir = cache.path().display().to_string();
        let mut all_env = vec![
            ("BLUMEOPS_CACHE_DIR", cache_dir.as_str()),
            ("SOURCE_DATE_EPOCH", "1700000000"),
            ("CONTAINERS_REGISTRIES_CONF", "/dev/null"),
        ];
        all_env.extend_from_slice(env);
        let out = run_cli(&args, &all_env);
        let digest = out
            .last_line()
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        (out, digest)
    }

    /// The digest of the image built straight from the mirror's reference.
    fn direct_digest(&self) -> String {
        let (out, digest) = self.build(&self.base.reference, &["--progress", "plain"], &[]);
        out.assert_success();
        assert!(
            out.stderr
                .contains(&format!("pulled {}: ", self.base.reference)),
            "a direct pull names no mirror\n{out}"
        );
        digest
    }

    /// Manifest requests the mirror answered for the Docker Hub path.
    fn mirror_manifest_requests(&self) -> usize {
        self.registry
            .count(&Method::GET, "/v2/docker.io/library/busybox/manifests/")
    }
}

fn write_conf(dir: &Path, text: &str) -> String {
    let path = dir.join("registries.conf");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn registries_conf_mirror_serves_a_docker_hub_base_with_the_same_digest() {
    let f = Fixture::new();
    let direct = f.direct_digest();

    let conf_dir = tempdir("blumeops-conf-");
    let conf = write_conf(
        conf_dir.path(),
        &format!(
            "unqualified-search-registries = [\"docker.io\"]\n\n\
             [[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\
             [[registry.mirror]]\nlocation = \"{}\"\n",
            f.mirror()
        ),
    );
    f.registry.clear_log();
    let (out, digest) = f.build(
        &hub_base(),
        &["--progress", "plain"],
        &[("CONTAINERS_REGISTRIES_CONF", &conf)],
    );
    out.assert_success();
    assert_eq!(digest, direct, "the same image through the mirror\n{out}");
    assert!(
        out.stderr
            .contains(&format!("pulled {} via {}: ", hub_base(), f.mirror())),
        "progress names the mirror\n{out}"
    );
    assert!(
        f.mirror_manifest_requests() > 0,
        "{}",
        f.registry.log_summary()
    );
}

#[test]
fn flag_mirrors_are_tried_in_order_past_one_that_is_down() {
    let f = Fixture::new();
    let direct = f.direct_digest();
    let down = format!("127.0.0.1:{}/docker.io", free_port());

    // --registry-mirror, the first mirror refusing connections.
    let first = format!("docker.io={down}");
    let second = format!("docker.io={}", f.mirror());
    let (out, digest) = f.build(
        &hub_base(),
        &[
            "--progress",
            "plain",
            "--retries",
            "0",
            "--registry-mirror",
            &first,
            "--registry-mirror",
            &second,
        ],
        &[],
    );
    out.assert_success();
    assert_eq!(digest, direct, "{out}");
    assert!(
        out.stderr
            .contains(&format!("mirror {down} did not serve {}: ", hub_base())),
        "the mirror that was down is named\n{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("pulled {} via {}: ", hub_base(), f.mirror())),
        "{out}"
    );

    // The same from BLUMEOPS_REGISTRY_MIRRORS, reported as JSON events.
    let list = format!("{first},{second}");
    let (out, digest) = f.build(
        &hub_base(),
        &["--progress", "json", "--retries", "0"],
        &[("BLUMEOPS_REGISTRY_MIRRORS", &list)],
    );
    out.assert_success();
    assert_eq!(digest, direct, "{out}");
    let events: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "mirror-failed")
        .collect();
    assert_eq!(failed.len(), 1, "{out}");
    assert_eq!(failed[0]["mirror"], down.as_str());
    assert_eq!(failed[0]["reference"], hub_base().as_str());
    let pulled: Vec<_> = events.iter().filter(|e| e["event"] == "pulled").collect();
    assert_eq!(pulled.len(), 1, "{out}");
    assert_eq!(pulled[0]["mirror"], f.mirror().as_str());
    assert_eq!(pulled[0]["reference"], hub_base().as_str());
}

#[test]
fn bad_mirror_settings_exit_with_2_and_say_why() {
    let f = Fixture::new();
    let (out, _) = f.build(&hub_base(), &["--registry-mirror", "docker.io"], &[]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("invalid --registry-mirror `docker.io`: expected SOURCE=MIRROR"),
        "{out}"
    );

    let conf_dir = tempdir("blumeops-conf-");
    let conf = write_conf(
        conf_dir.path(),
        "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"https://m\"\n",
    );
    let (out, _) = f.build(&hub_base(), &[], &[("CONTAINERS_REGISTRIES_CONF", &conf)]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains(&format!("invalid registries config `{conf}`: ")),
        "the file is named\n{out}"
    );
    assert!(out.stderr.contains("URI scheme"), "{out}");

    let blocked = write_conf(
        conf_dir.path(),
        &format!(
            "[[registry]]\nlocation = \"{}\"\nblocked = true\n",
            f.registry.addr()
        ),
    );
    let (out, _) = f.build(
        &f.base.reference,
        &[],
        &[("CONTAINERS_REGISTRIES_CONF", &blocked)],
    );
    out.assert_code(2);
    assert!(out.stderr.contains("is blocked in"), "{out}");
    assert_eq!(f.mirror_manifest_requests(), 0, "nothing was pulled");
}

#[test]
fn when_every_source_fails_the_error_names_each_mirror() {
    let f = Fixture::new();
    let (mirror, registry) = (
        format!("127.0.0.1:{}/cache", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let base = format!("{registry}/library/busybox:{BASE_TAG}");
    let flag = format!("{registry}={mirror}");
    let (out, _) = f.build(&base, &["--retries", "0", "--registry-mirror", &flag], &[]);
    out.assert_code(5);
    assert!(
        out.stderr.contains(&format!(
            "failed to pull {base} through its mirrors ({mirror}: failed to pull manifest \
             {mirror}/library/busybox:{BASE_TAG}: registry "
        )),
        "{out}"
    );
    assert!(out.stderr.contains(&format!(") and from {base}")), "{out}");
}
