//! The step cache end to end through the CLI: an unchanged rebuild runs nothing and uploads
//! nothing, a changed file re-runs only the steps after it and says which file changed, a
//! build killed with SIGKILL leaves a cache the next build uses, two builds share one cache,
//! and `cache du` / `cache prune` manage it.
//!
//! Needs the binary: `cargo build -p blumeops-cli` (or `BLUMEOPS_BIN`), and root (RUN steps).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blumeops_e2e::tools::{skopeo_copy_to_oci, skopeo_inspect_raw, umoci_unpack};
use blumeops_e2e::{
    BaseImage, CI_USER, CliOutput, PushedImage, TestRegistry, blumeops_bin, isolated_cache,
    run_cli, tempdir,
};

const DOCKERFILE: &str = r#"ARG CONTAINER_APP_VERSION=1.0.0
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN head -c 65536 /dev/urandom > /random.bin
ARG PAUSE=0
RUN sleep $PAUSE; echo slept > /slept
COPY site/ /site/
RUN cat /site/a.txt /site/b.txt > /combined
CMD ["cat", "/combined"]
"#;

struct Fixture {
    registry: TestRegistry,
    base: PushedImage,
    src: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let base = BaseImage::push(&registry);
        let src = tempdir("blumeops-src-");
        let dir = src.path().join("containers/app");
        std::fs::create_dir_all(dir.join("site")).unwrap();
        std::fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
        std::fs::write(dir.join("site/a.txt"), "a\n").unwrap();
        std::fs::write(dir.join("site/b.txt"), "b\n").unwrap();
        Self {
            registry,
            base,
            src,
            cache: isolated_cache(),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ZOT_CI_API_KEY", self.registry.ci_password().to_owned()),
            (
                "BLUMEOPS_CACHE_DIR",
                self.cache.path().display().to_string(),
            ),
            ("SOURCE_DATE_EPOCH", "1700000000".to_owned()),
        ]
    }

    fn args(&self, command: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            command,
            "--src",
            &self.src.path().display().to_string(),
            "--container-name",
            "app",
            "--registry",
            &self.registry.addr(),
            "--build-arg",
            &format!("BASE_IMAGE={}", self.base.reference),
            "--progress",
            "plain",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    fn publish(&self, sha: &str, extra: &[&str]) -> CliOutput {
        let mut more = vec![
            "--version",
            "v1",
            "--commit-sha",
            sha,
            "--registry-username",
            CI_USER,
            "--registry-password",
            "env:ZOT_CI_API_KEY",
        ];
        more.extend_from_slice(extra);
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run_cli(&self.args("publish", &more), &env);
        out.assert_no_secret(self.registry.ci_password());
        out
    }

    fn cli(&self, args: &[&str]) -> CliOutput {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_cli(args, &env)
    }

    fn manifest_layers(&self, tag: &str) -> Vec<String> {
        let raw = skopeo_inspect_raw(&format!("{}/blumeops/app:{tag}", self.registry.addr()));
        let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// The plain progress line of the step whose description contains `needle` when it
/// finished: `[N] cached ...` or `[N] ran ... [reason]`.
fn finished_line<'a>(out: &'a CliOutput, needle: &str) -> &'a str {
    let index = out
        .stderr
        .lines()
        .find_map(|l| {
            let (head, rest) = l.split_once(' ')?;
            (rest.contains(needle) && head.starts_with('[') && head.contains('/'))
                .then(|| head.trim_start_matches('[').split('/').next().unwrap())
        })
        .unwrap_or_else(|| panic!("no step `{needle}`\n{out}"));
    let prefix = format!("[{index}] ");
    out.stderr
        .lines()
        .find(|l| l.starts_with(&prefix) && (l.contains(" cached in ") || l.contains(" ran in ")))
        .unwrap_or_else(|| panic!("step {index} (`{needle}`) did not finish\n{out}"))
}

/// RUN steps need an executor: root, or rootless (the CLI enters it by itself).
fn can_run() -> bool {
    use blumeops_core::executor::{ExecutorKind, prepare};
    let ok = prepare(ExecutorKind::Auto).is_ok();
    if !ok {
        blumeops_core::testing::skip("no executor can run RUN steps here (see `blumeops doctor`)");
    }
    ok
}

#[test]
fn unchanged_rebuild_uploads_nothing_and_a_changed_file_reruns_only_what_follows() {
    if !can_run() {
        return;
    }
    let f = Fixture::new();
    let cold = f.publish("aaaaaaa", &[]);
    cold.assert_success();
    for step in ["/dev/urandom", "sleep", "with_directory /site", "cat /site"] {
        let line = finished_line(&cold, step);
        assert!(
            line.contains(" ran in ") && line.contains("not in the cache"),
            "{line}\n{cold}"
        );
    }

    // Nothing changed, same tag: no step runs, nothing is uploaded, the tag stays.
    f.registry.clear_log();
    let warm = f.publish("aaaaaaa", &[]);
    warm.assert_success();
    for step in ["/dev/urandom", "sleep", "with_directory /site", "cat /site"] {
        assert!(finished_line(&warm, step).contains(" cached in "), "{warm}");
    }
    assert!(warm.stderr.contains("nothing pushed"), "{warm}");
    assert_eq!(warm.last_line(), cold.last_line());
    assert!(
        f.registry.blob_uploads().is_empty(),
        "{}",
        f.registry.log_summary()
    );
    assert!(f.registry.manifest_puts().is_empty());

    // One file changed: the steps before the copy are cached; the copy names the file.
    let site = f.src.path().join("containers/app/site");
    std::fs::write(site.join("b.txt"), "B\n").unwrap();
    let changed = f.publish("bbbbbbb", &[]);
    changed.assert_success();
    assert!(
        finished_line(&changed, "/dev/urandom").contains(" cached in "),
        "{changed}"
    );
    assert!(
        finished_line(&changed, "sleep").contains(" cached in "),
        "{changed}"
    );
    let copy = finished_line(&changed, "with_directory /site");
    assert!(
        copy.ends_with("[files changed: site/b.txt (changed)]"),
        "{copy}"
    );
    let run = finished_line(&changed, "cat /site");
    assert!(run.ends_with("[an earlier step's result changed]"), "{run}");

    let (before, after) = (
        f.manifest_layers("v1-aaaaaaa"),
        f.manifest_layers("v1-bbbbbbb"),
    );
    assert_eq!(before.len(), after.len());
    let differing: Vec<usize> = (0..before.len())
        .filter(|i| before[*i] != after[*i])
        .collect();
    let n = before.len();
    assert_eq!(differing, [n - 2, n - 1], "the copy and the RUN after it");

    // The new image verifies with skopeo and umoci, and holds the new content.
    let layout = tempdir("blumeops-layout-");
    let reference = format!("{}/blumeops/app:v1-bbbbbbb", f.registry.addr());
    skopeo_copy_to_oci(&reference, &layout.path().join("img"), "t");
    let bundle = layout.path().join("bundle");
    umoci_unpack(
        &format!("{}:t", layout.path().join("img").display()),
        &bundle,
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/combined")).unwrap(),
        "a\nB\n"
    );

    // --no-cache runs everything again.
    let forced = f.publish("ccccccc", &["--no-cache"]);
    forced.assert_success();
    let line = finished_line(&forced, "/dev/urandom");
    assert!(line.contains("[cache disabled (--no-cache)]"), "{line}");
}

/// Start `blumeops build` and SIGKILL it once the step containing `needle` has started.
fn kill_during(f: &Fixture, args: &[String], needle: &str) {
    let mut cmd = Command::new(blumeops_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in f.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let hit = line.contains(needle) && line.contains('/');
        seen.push(line);
        if hit {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{seen:#?}");
    }
    assert!(
        seen.iter().any(|l| l.contains(needle)),
        "never started: {seen:#?}"
    );
    // Let the step get going inside the sandbox, then kill blumeops outright.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn a_build_killed_mid_step_leaves_a_cache_the_next_build_uses() {
    if !can_run() {
        return;
    }
    let f = Fixture::new();
    let out = tempdir("blumeops-out-");
    let output = format!("oci:{}", out.path().join("layout").display());
    let slow = f.args("build", &["--build-arg", "PAUSE=60", "--output", &output]);
    kill_during(&f, &slow, "sleep $PAUSE");
    let tmp = f.cache.path().join("tmp");
    assert!(
        std::fs::read_dir(&tmp).unwrap().next().is_some(),
        "the killed build left work in progress in tmp/"
    );

    // The next build (no pause) reuses the step finished before the kill, and cleans up.
    let next = f.args("build", &["--output", &output]);
    let next: Vec<&str> = next.iter().map(String::as_str).collect();
    let rebuilt = f.cli(&next);
    rebuilt.assert_success();
    assert!(
        finished_line(&rebuilt, "/dev/urandom").contains(" cached in "),
        "{rebuilt}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn two_builds_at_once_share_one_cache() {
    if !can_run() {
        return;
    }
    let f = Fixture::new();
    // Deterministic steps only, so both builds must agree on the digest.
    let dir = f.src.path().join("containers/app");
    std::fs::write(
        dir.join("Dockerfile"),
        "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo same > /same\nCOPY site/ /site/\n",
    )
    .unwrap();
    let outs: Vec<_> = (0..2).map(|_| tempdir("blumeops-out-")).collect();
    let handles: Vec<_> = outs
        .iter()
        .map(|o| {
            let output = format!("oci:{}", o.path().join("layout").display());
            let args = f.args("build", &["--output", &output]);
            let env = f.env();
            std::thread::spawn(move || {
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                run_cli(&args, &env)
            })
        })
        .collect();
    let results: Vec<CliOutput> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &results {
        r.assert_success();
    }
    let digest = |r: &CliOutput| r.last_line().rsplit_once('@').unwrap().1.to_owned();
    assert_eq!(digest(&results[0]), digest(&results[1]));

    // A third build finds everything cached.
    let output = format!("oci:{}", outs[0].path().join("again").display());
    let args = f.args("build", &["--output", &output]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let third = f.cli(&args);
    third.assert_success();
    assert!(
        finished_line(&third, "echo same").contains(" cached in "),
        "{third}"
    );
    assert_eq!(digest(&third), digest(&results[0]));
}

#[test]
fn cache_du_and_prune() {
    if !can_run() {
        return;
    }
    let f = Fixture::new();
    f.publish("aaaaaaa", &[]).assert_success();
    let du = |f: &Fixture| -> serde_json::Value {
        let out = f.cli(&["cache", "du", "--json"]);
        out.assert_success();
        serde_json::from_str(out.last_line()).unwrap()
    };
    let before = du(&f);
    assert!(
        before["parts"]["blobs"]["entries"].as_u64().unwrap() >= 5,
        "{before}"
    );
    assert!(
        before["parts"]["steps"]["bytes"].as_u64().unwrap() > 0,
        "{before}"
    );
    assert!(before["total_bytes"].as_u64().unwrap() > 65536, "{before}");

    let bad = f.cli(&["cache", "prune", "--older-than", "7y"]);
    bad.assert_code(2);
    assert!(bad.stderr.contains("`7y` is not an age"), "{bad}");
    let neither = f.cli(&["cache", "prune"]);
    neither.assert_code(2);

    // Nothing is that old.
    f.cli(&["cache", "prune", "--older-than", "1d"])
        .assert_success();
    assert_eq!(du(&f)["parts"]["blobs"], before["parts"]["blobs"]);

    // Down to 1 KiB: every blob goes, and the next build runs every step again.
    let pruned = f.cli(&["cache", "prune", "--keep-bytes", "1K"]);
    pruned.assert_success();
    assert!(pruned.stdout.contains("removed "), "{pruned}");
    let after = du(&f);
    assert_eq!(after["parts"]["blobs"]["entries"], 0, "{after}");
    let rebuilt = f.publish("bbbbbbb", &[]);
    rebuilt.assert_success();
    assert!(
        finished_line(&rebuilt, "/dev/urandom").contains(" ran in "),
        "{rebuilt}"
    );

    f.cli(&["cache", "prune", "--all"]).assert_success();
    assert_eq!(du(&f)["total_bytes"], 0);
}

#[test]
fn size_limit_evicts_after_a_build() {
    if !can_run() {
        return;
    }
    let f = Fixture::new();
    let out = f.publish("aaaaaaa", &["--cache-max-bytes", "1K"]);
    out.assert_success();
    assert!(
        out.stderr.contains("cache over its limit of 1.0 KiB"),
        "{out}"
    );
    let du = f.cli(&["cache", "du", "--json"]);
    let du: serde_json::Value = serde_json::from_str(du.last_line()).unwrap();
    // Every blob is evicted; what is left is the empty directories of the layout.
    assert_eq!(du["parts"]["blobs"]["entries"], 0, "{du}");
    assert!(du["total_bytes"].as_u64().unwrap() <= 64 * 1024, "{du}");
    let bad = f.publish("bbbbbbb", &["--cache-max-bytes", "huge"]);
    bad.assert_code(2);
}

#[test]
fn a_commit_elsewhere_in_the_checkout_leaves_the_container_cached() {
    if !can_run() {
        return;
    }
    let f = Fixture::new();
    let src = f.src.path();
    let git = |args: &[&str], date: &str| {
        let out = Command::new("git")
            .arg("-C")
            .arg(src)
            .args(args)
            .env("GIT_AUTHOR_DATE", date)
            .env("GIT_COMMITTER_DATE", date)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"], "@1700000000 +0000");
    git(&["add", "."], "@1700000000 +0000");
    git(&["commit", "-q", "-m", "app"], "@1700000000 +0000");
    // No SOURCE_DATE_EPOCH: the timestamp comes from git.
    let env = [
        ("BLUMEOPS_CACHE_DIR", f.cache.path().display().to_string()),
        ("ZOT_CI_API_KEY", f.registry.ci_password().to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = tempdir("blumeops-out-");
    let output = format!("oci:{}", out.path().join("layout").display());
    let args = f.args("build", &["--output", &output]);
    run_cli(&args, &env).assert_success();

    // A commit that does not touch containers/app: same timestamp, every step cached.
    std::fs::write(src.join("README"), "elsewhere").unwrap();
    git(&["add", "."], "@1800000000 +0000");
    git(&["commit", "-q", "-m", "elsewhere"], "@1800000000 +0000");
    let again = run_cli(&args, &env);
    again.assert_success();
    for step in ["/dev/urandom", "sleep", "with_directory /site", "cat /site"] {
        assert!(
            finished_line(&again, step).contains(" cached in "),
            "{again}"
        );
    }

    // A commit that changes the container: new timestamps, so its steps run again.
    std::fs::write(src.join("containers/app/site/a.txt"), "A\n").unwrap();
    git(&["add", "."], "@1900000000 +0000");
    git(&["commit", "-q", "-m", "app changed"], "@1900000000 +0000");
    let changed = run_cli(&args, &env);
    changed.assert_success();
    let line = finished_line(&changed, "/dev/urandom");
    assert!(
        line.ends_with("[the build epoch or compression changed]"),
        "{line}"
    );
}

#[test]
fn zstd_layers_push_and_verify() {
    if !can_run() {
        return;
    }
    let f = Fixture::new();
    let out = f.publish("aaaaaaa", &["--compression", "zstd"]);
    out.assert_success();
    let reference = format!("{}/blumeops/app:v1-aaaaaaa", f.registry.addr());
    let raw = skopeo_inspect_raw(&reference);
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let types: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    // The base's layer stays gzip; the four layers this build made are zstd.
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "application/vnd.oci.image.layer.v1.tar+zstd")
            .count(),
        4,
        "{types:?}"
    );
    // skopeo checks every blob against its digest on the way.
    let layout = tempdir("blumeops-layout-");
    skopeo_copy_to_oci(&reference, &layout.path().join("img"), "t");

    // The same build with gzip is a different image; with zstd again, the same one.
    let again = f.publish("bbbbbbb", &["--compression", "zstd"]);
    again.assert_success();
    let digest = |o: &CliOutput| o.last_line().rsplit_once('@').unwrap().1.to_owned();
    assert_eq!(digest(&again), digest(&out));
    let gzip = f.publish("ccccccc", &[]);
    gzip.assert_success();
    assert_ne!(digest(&gzip), digest(&out));
    let line = finished_line(&gzip, "/dev/urandom");
    assert!(
        line.ends_with("[the build epoch or compression changed]"),
        "{line}"
    );
}
