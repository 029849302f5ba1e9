//! The registry cache end to end: machine A publishes with `--cache-repo`, machine B (an
//! empty local cache, the checkout at another path) reuses A's steps and cache volumes
//! through the registry, under zot's create-only rules; and the cache never gets in the
//! way (unreachable repository, damaged entry, no credentials).
//!
//! Needs the binary: `cargo build -p blumeops-cli` (or `BLUMEOPS_BIN`), and root (RUN steps).

use blumeops_e2e::tools::{skopeo_copy_to_oci, skopeo_inspect_raw, umoci_unpack};
use blumeops_e2e::{
    BaseImage, CI_USER, CliOutput, PushedImage, TestRegistry, free_port, isolated_cache, run_cli,
    tempdir,
};
use reqwest::Method;

/// A step that makes different bytes every time it runs (so only a cache makes two builds
/// agree), a command whose stdout matters, a host copy, and a cache volume that keeps what
/// every run of its step saw.
const DOCKERFILE: &str = r#"ARG CONTAINER_APP_VERSION=1.0.0
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN head -c 65536 /dev/urandom > /random.bin
WORKDIR /work
COPY site/ /site/
RUN --mount=type=cache,target=/cache,id=seen sh -c 'cat /site/a.txt >> /cache/log; cp /cache/log /work/seen'
RUN cat /site/a.txt /site/b.txt > /combined
CMD ["cat", "/combined"]
"#;

/// One machine: a checkout of its own (at its own path) and an empty cache.
struct Machine {
    src: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Machine {
    fn new(a: &str) -> Self {
        let src = tempdir("blumeops-checkout-");
        let dir = src.path().join("containers/app");
        std::fs::create_dir_all(dir.join("site")).unwrap();
        std::fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
        std::fs::write(dir.join("site/a.txt"), a).unwrap();
        std::fs::write(dir.join("site/b.txt"), "b\n").unwrap();
        Self {
            src,
            cache: isolated_cache(),
        }
    }

    fn env(&self, registry: &TestRegistry) -> Vec<(&'static str, String)> {
        vec![
            ("ZOT_CI_API_KEY", registry.ci_password().to_owned()),
            (
                "BLUMEOPS_CACHE_DIR",
                self.cache.path().display().to_string(),
            ),
            // Both checkouts are of the same commit: the same timestamp.
            ("SOURCE_DATE_EPOCH", "1700000000".to_owned()),
        ]
    }

    fn run(&self, registry: &TestRegistry, command: &str, extra: &[&str]) -> CliOutput {
        let mut args: Vec<String> = [
            command,
            "--src",
            &self.src.path().display().to_string(),
            "--container-name",
            "app",
            "--registry",
            &registry.addr(),
            "--progress",
            "plain",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let env = self.env(registry);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run_cli(&args, &env);
        for secret in registry.secrets() {
            out.assert_no_secret(secret);
        }
        out
    }

    /// `publish` as `zot-ci` with `--cache-repo auto`, tagged `v1-SHA`.
    fn publish(&self, fx: &Fixture, sha: &str, extra: &[&str]) -> CliOutput {
        let base = format!("BASE_IMAGE={}", fx.base.reference);
        let mut args = vec![
            "--build-arg",
            &base,
            "--version",
            "v1",
            "--commit-sha",
            sha,
            "--registry-username",
            CI_USER,
            "--registry-password",
            "env:ZOT_CI_API_KEY",
        ];
        if !extra.contains(&"--cache-repo") {
            args.extend(["--cache-repo", "auto"]);
        }
        args.extend_from_slice(extra);
        self.run(&fx.registry, "publish", &args)
    }
}

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

    fn cache_repo(&self) -> String {
        format!("{}/blumeops/cache/app", self.registry.addr())
    }

    fn forbidden(&self) -> Vec<String> {
        self.registry
            .requests()
            .iter()
            .filter(|r| r.status == 403)
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// The tags of the cache repository.
    fn cache_tags(&self) -> Vec<String> {
        let url = format!("{}/v2/blumeops/cache/app/tags/list", self.registry.url());
        let client = self.registry.http_client();
        let body: serde_json::Value = self
            .registry
            .block_on(async { client.get(&url).send().await?.json().await })
            .unwrap();
        body["tags"]
            .as_array()
            .map(|t| t.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    /// A file of the published image `v1-SHA`, read with skopeo and umoci.
    fn file(&self, sha: &str, path: &str) -> Vec<u8> {
        let dir = tempdir("blumeops-oci-");
        let reference = format!("{}/blumeops/app:v1-{sha}", self.registry.addr());
        skopeo_copy_to_oci(&reference, &dir.path().join("layout"), "x");
        let bundle = dir.path().join("bundle");
        umoci_unpack(
            &format!("{}:x", dir.path().join("layout").display()),
            &bundle,
        );
        std::fs::read(bundle.join("rootfs").join(path.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{path} in v1-{sha}: {e}"))
    }
}

/// The published digest: the last stdout line is `REF@DIGEST`.
fn digest(out: &CliOutput) -> String {
    out.last_line()
        .split_once('@')
        .unwrap_or_else(|| panic!("no REF@DIGEST\n{out}"))
        .1
        .to_owned()
}

/// The finishing lines of steps that ran (`[N] ran in ...`).
fn ran(out: &CliOutput) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.contains("] ran in "))
        .collect()
}

fn from_registry(out: &CliOutput) -> usize {
    out.stderr
        .lines()
        .filter(|l| l.contains("] cached (registry) in "))
        .count()
}

#[test]
fn a_second_machine_runs_nothing_uploads_nothing_and_gets_the_same_digest() {
    let fx = Fixture::new();
    let a = Machine::new("a\n");
    let out_a = a.publish(&fx, "aaaaaaa", &[]);
    out_a.assert_success();
    assert!(
        out_a.stderr.contains(&format!(
            "registry cache {}: 5 steps exported",
            fx.cache_repo()
        )),
        "A exports its five layer steps\n{out_a}"
    );
    let tags = fx.cache_tags();
    assert_eq!(
        tags.iter().filter(|t| t.starts_with("step-")).count(),
        5,
        "{tags:?}"
    );
    assert_eq!(
        tags.iter()
            .filter(|t| t.starts_with("volume-seen-"))
            .count(),
        1,
        "{tags:?}"
    );
    // A's entries reuse the image's layers: mounted, never uploaded twice.
    let mounts = fx
        .registry
        .requests()
        .iter()
        .filter(|r| {
            r.method == Method::POST && r.query.as_deref().is_some_and(|q| q.contains("mount="))
        })
        .filter(|r| r.status == 201)
        .count();
    assert!(
        mounts >= 3,
        "layers mounted from the image repository\n{}",
        fx.registry.log_summary()
    );

    // B: another path, an empty cache, a new tag (another commit of the same content).
    fx.registry.clear_log();
    let b = Machine::new("a\n");
    assert_ne!(a.src.path(), b.src.path());
    let out_b = b.publish(&fx, "bbbbbbb", &[]);
    out_b.assert_success();
    assert!(ran(&out_b).is_empty(), "B runs no step\n{out_b}");
    assert_eq!(from_registry(&out_b), 5, "{out_b}");
    assert_eq!(digest(&out_a), digest(&out_b), "the same image");
    assert!(
        fx.registry.blob_uploads().is_empty(),
        "B uploads no blob\n{}",
        fx.registry.log_summary()
    );
    assert_eq!(fx.forbidden(), Vec::<String>::new(), "no 403 anywhere");
    // The stage's chain told B every step: one manifest and one config read, then the
    // layers, and no step's own entry.
    let cache_manifests: Vec<String> = fx
        .registry
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v2/blumeops/cache/app/manifests/"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(cache_manifests.len(), 1, "{cache_manifests:?}");
    assert!(
        cache_manifests[0].contains("/manifests/chain-"),
        "{cache_manifests:?}"
    );
    // The command's working directory came along with the WORKDIR step's entry.
    assert_eq!(fx.file("bbbbbbb", "/work/seen"), b"a\n");

    // A third publish of the same content from B: everything local, nothing exported.
    let again = b.publish(&fx, "ccccccc", &[]);
    again.assert_success();
    assert!(
        again.stderr.contains("0 steps exported (5 there already)"),
        "{again}"
    );
    assert_eq!(fx.forbidden(), Vec::<String>::new(), "no 403 anywhere");
}

#[test]
fn a_changed_file_runs_only_its_steps_and_sees_the_other_machines_volume() {
    let fx = Fixture::new();
    let a = Machine::new("a\n");
    a.publish(&fx, "aaaaaaa", &[]).assert_success();

    let b = Machine::new("a2\n");
    let out = b.publish(&fx, "bbbbbbb", &[]);
    out.assert_success();
    let ran = ran(&out);
    assert_eq!(
        ran.len(),
        3,
        "the copy and the two commands after it\n{out}"
    );
    assert!(
        ran.iter()
            .all(|l| l.contains("[not in the cache (first build of this step)]")),
        "{out}"
    );
    assert_eq!(
        from_registry(&out),
        2,
        "the random bytes and the WORKDIR\n{out}"
    );
    assert!(
        out.stderr
            .contains("cache volume seen filled from volume-seen-"),
        "{out}"
    );
    // The volume held what A's run wrote; B's run added its own line.
    assert_eq!(fx.file("bbbbbbb", "/work/seen"), b"a\na2\n");
    assert_eq!(
        fx.file("aaaaaaa", "/random.bin"),
        fx.file("bbbbbbb", "/random.bin")
    );
    // B's volume changed: a second snapshot, a new tag; nothing overwritten.
    let volumes: Vec<String> = fx
        .cache_tags()
        .into_iter()
        .filter(|t| t.starts_with("volume-seen-"))
        .collect();
    assert_eq!(volumes.len(), 2, "{volumes:?}");
    assert_eq!(fx.forbidden(), Vec::<String>::new(), "no 403 anywhere");
}

#[test]
fn a_build_without_credentials_imports_the_cache_and_warns_that_it_cannot_export() {
    let fx = Fixture::new();
    let a = Machine::new("a\n");
    a.publish(&fx, "aaaaaaa", &[]).assert_success();

    let b = Machine::new("a\n");
    let out_dir = tempdir("blumeops-out-");
    let output = format!("oci:{}", out_dir.path().join("image").display());
    let base = format!("BASE_IMAGE={}", fx.base.reference);
    // A change after the cached steps, so the build has something to export.
    std::fs::write(b.src.path().join("containers/app/site/b.txt"), "b2\n").unwrap();
    let out = b.run(
        &fx.registry,
        "build",
        &[
            "--build-arg",
            &base,
            "--cache-repo",
            &fx.cache_repo(),
            "--output",
            &output,
        ],
    );
    out.assert_success();
    assert_eq!(
        from_registry(&out),
        2,
        "the random bytes and the WORKDIR\n{out}"
    );
    assert_eq!(ran(&out).len(), 3, "{out}");
    assert!(
        fx.registry
            .requests()
            .iter()
            .filter(|r| r.method == Method::GET)
            .all(|r| !r.had_auth),
        "the import reads anonymously"
    );
    assert!(
        out.stderr.contains("warning: registry cache") && out.stderr.contains("exporting"),
        "the refused export is a warning\n{out}"
    );
}

#[test]
fn an_unreachable_cache_repo_is_a_warning_and_the_publish_succeeds() {
    let fx = Fixture::new();
    let a = Machine::new("a\n");
    let nowhere = format!("127.0.0.1:{}/blumeops/cache/app", free_port());
    let out = a.publish(&fx, "aaaaaaa", &["--cache-repo", &nowhere]);
    out.assert_success();
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: registry cache"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning naming the repository\n{out}"
    );
    assert!(warnings[0].contains(&nowhere), "{out}");
    assert_eq!(ran(&out).len(), 5, "{out}");
}

#[test]
fn a_damaged_entry_is_ignored_with_a_warning_and_its_step_runs() {
    let fx = Fixture::new();
    let a = Machine::new("a\n");
    a.publish(&fx, "aaaaaaa", &[]).assert_success();

    // Damage, in the registry's storage (same length, other bytes), the config of the
    // stage's chain and of the entry whose layer is the random bytes (the image's first
    // own layer).
    let damage = |digest: &str| {
        let path = fx.registry.blob_data_path(digest);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::write(&path, vec![b' '; len]).unwrap();
    };
    let a_random = fx.file("aaaaaaa", "/random.bin");
    let image: serde_json::Value = serde_json::from_slice(&skopeo_inspect_raw(&format!(
        "{}/blumeops/app:v1-aaaaaaa",
        fx.registry.addr()
    )))
    .unwrap();
    let base: serde_json::Value =
        serde_json::from_slice(&skopeo_inspect_raw(&fx.base.reference)).unwrap();
    let base_layers = base["layers"].as_array().unwrap().len();
    let random_layer = image["layers"][base_layers]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let manifest = |tag: &str| {
        let raw = skopeo_inspect_raw(&format!("{}:{tag}", fx.cache_repo()));
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap()
    };
    let tags = fx.cache_tags();
    let entry = tags
        .iter()
        .filter(|t| t.starts_with("step-"))
        .map(|t| manifest(t))
        .find(|m| m["layers"][0]["digest"] == random_layer.as_str())
        .expect("an entry holds the random layer");
    assert_eq!(entry["artifactType"], "application/vnd.blumeops.step.v1");
    damage(entry["config"]["digest"].as_str().unwrap());
    let chain = manifest(tags.iter().find(|t| t.starts_with("chain-")).unwrap());
    assert_eq!(chain["artifactType"], "application/vnd.blumeops.chain.v1");
    damage(chain["config"]["digest"].as_str().unwrap());

    let b = Machine::new("a\n");
    let out = b.publish(&fx, "bbbbbbb", &[]);
    out.assert_success();
    assert!(
        out.stderr.contains("warning: registry cache") && out.stderr.contains("chain chain-"),
        "a warning names the chain\n{out}"
    );
    assert!(
        out.stderr.contains("ignored, the step runs"),
        "a warning names the entry\n{out}"
    );
    let ran = ran(&out);
    assert!(
        ran.iter().any(|l| l.contains("[not in the cache")),
        "the random step runs\n{out}"
    );
    assert_ne!(a_random, fx.file("bbbbbbb", "/random.bin"), "made anew");
    // New bytes key every later step anew: nothing else matches A's entries.
    assert_eq!(from_registry(&out), 0, "{out}");
}

#[test]
fn cache_du_remote_counts_the_entries() {
    let fx = Fixture::new();
    let a = Machine::new("a\n");
    a.publish(&fx, "aaaaaaa", &[]).assert_success();
    let env = a.env(&fx.registry);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run_cli(
        &["cache", "du", "--remote", &fx.cache_repo(), "--json"],
        &env,
    );
    out.assert_success();
    let doc: serde_json::Value = serde_json::from_str(out.last_line()).unwrap();
    assert_eq!(doc["steps"]["entries"], 5, "{out}");
    assert_eq!(doc["chains"]["entries"], 1, "{out}");
    assert_eq!(doc["other_tags"], 0, "{out}");
    assert_eq!(doc["volumes"]["seen"]["snapshots"], 1, "{out}");
    assert!(doc["total_bytes"].as_u64().unwrap() > 65536, "{out}");
}
