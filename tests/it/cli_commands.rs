//! The CLI's inspection and workflow commands end to end: `plan`, `list`, `changed`,
//! `container-version`, plain progress output, and workflow outputs after a publish.
//!
//! Needs the binary: `cargo build -p blumeops-cli` (or `BLUMEOPS_BIN`).

use std::path::Path;
use std::process::Command;

use blumeops_e2e::{BaseImage, CI_USER, TestRegistry, isolated_cache, run_cli, tempdir};

/// `plan hello`, exactly (no temp paths or digests in it).
const HELLO_PLAN: &str = r#"hello: 8 steps in 1 stage

stage 1 (from docker.io/library/busybox:1.37; final)
  [1] from docker.io/library/busybox:1.37
  [2] with_new_file /usr/local/bin/hello (130 bytes, mode 0755, owner 0:0)
  [3] with_label org.opencontainers.image.title=hello
  [4] with_label org.opencontainers.image.description=A greeting from the blumeops build tool
  [5] with_label org.opencontainers.image.version=v1.0.0
  [6] with_label org.opencontainers.image.source=https://forge.ops.eblu.me/eblume/blumeops
  [7] with_label org.opencontainers.image.base.name=docker.io/library/busybox:1.37
  [8] with_default_args ["/usr/local/bin/hello"]
"#;

const MULTI_STAGE: &str = r#"ARG CONTAINER_APP_VERSION=2.3.4
FROM docker.io/library/busybox:1.37 AS build
ARG GREETING=hi
ENV GREETING_USED=$GREETING
RUN echo "$GREETING" > /out.txt
FROM scratch
COPY --from=build /out.txt /srv/out.txt
ENV MODE=prod
CMD ["/srv/out.txt"]
"#;

/// Write `files` (path, contents) under `dir`.
fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// A source tree with a multi-stage Dockerfile container `web`, a Dockerfile container
/// `plainv` whose version has a leading v, and a Nix container `nixy`.
fn src_tree() -> tempfile::TempDir {
    let src = tempdir("blumeops-src-");
    write_files(
        src.path(),
        &[
            ("containers/web/Dockerfile", MULTI_STAGE),
            (
                "containers/plainv/Dockerfile",
                "FROM docker.io/library/busybox:1.37\nARG CONTAINER_APP_VERSION=v0.9.1\n",
            ),
            (
                "containers/nixy/default.nix",
                "{ pkgs }:\nlet\n  version = \"5.6.7\";\nin pkgs.dockerTools.buildImage { }\n",
            ),
        ],
    );
    src
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn plan_hello_prints_every_step() {
    let out = run_cli(&["plan", "--container-name", "hello"], &[]);
    out.assert_success();
    assert_eq!(out.stdout, HELLO_PLAN, "{out}");

    let out = run_cli(&["plan", "--container-name", "hello", "--json"], &[]);
    out.assert_success();
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["total_steps"], 8);
    assert_eq!(
        plan["stages"][0]["base"],
        serde_json::json!({"image": "docker.io/library/busybox:1.37"})
    );
    assert_eq!(
        plan["stages"][0]["steps"][7]["description"],
        "with_default_args [\"/usr/local/bin/hello\"]"
    );
}

/// The navidrome build as blumeops plans it: three stages, their bases, every command and
/// copy. A change here is a change to what CI builds, so it is reviewed as a snapshot.
#[test]
fn plan_navidrome_snapshot() {
    let out = run_cli(&["plan", "--container-name", "navidrome"], &[]);
    out.assert_success();
    insta::assert_snapshot!("plan_navidrome", out.stdout);
}

/// navidrome as a picture: the mermaid flowchart is reviewed as a snapshot (a box per stage
/// with its base and step count, dotted copy arrows, the final image marked); the dot graph
/// of the same is rendered by Debian's graphviz.
#[test]
fn plan_navidrome_as_mermaid_and_dot() {
    let out = run_cli(
        &[
            "plan",
            "--container-name",
            "navidrome",
            "--format",
            "mermaid",
        ],
        &[],
    );
    out.assert_success();
    insta::assert_snapshot!("plan_navidrome_mermaid", out.stdout);

    let out = run_cli(
        &["plan", "--container-name", "navidrome", "--format", "dot"],
        &[],
    );
    out.assert_success();
    let dir = tempfile::tempdir().unwrap();
    let dot_file = dir.path().join("plan.dot");
    std::fs::write(&dot_file, &out.stdout).unwrap();
    let svg = Command::new("dot")
        .arg("-Tsvg")
        .arg(&dot_file)
        .output()
        .expect("graphviz's dot (apt-get install graphviz)");
    assert!(
        svg.status.success(),
        "dot rejected the graph:\n{}\n{}",
        String::from_utf8_lossy(&svg.stderr),
        out.stdout
    );
    let svg = String::from_utf8_lossy(&svg.stdout);
    assert!(svg.contains("<svg"), "{svg}");
    for text in [
        "stage 1",
        "from docker.io/library/golang:1.25&#45;alpine3.22",
        "final image",
        "copy",
    ] {
        assert!(svg.contains(text), "{text} missing from the SVG:\n{svg}");
    }
    // Two copy edges (stage 1 to 2, 2 to 3), drawn dashed.
    assert_eq!(svg.matches("stroke-dasharray").count(), 2, "{svg}");
}

#[test]
fn plan_dockerfile_shows_stages_and_copy_edges() {
    let src = src_tree();
    let src_arg = path_arg(src.path());
    let args = [
        "plan",
        "--container-name",
        "web",
        "--src",
        &src_arg,
        "--build-arg",
        "GREETING=howdy",
    ];
    let out = run_cli(&args, &[]);
    out.assert_success();
    let text = &out.stdout;
    assert!(text.starts_with("web: 7 steps in 2 stages\n"), "{out}");
    assert!(
        text.contains("stage 1 (from docker.io/library/busybox:1.37)\n  [1] from docker.io/library/busybox:1.37\n"),
        "{out}"
    );
    assert!(
        text.contains("with_exec") && text.contains("howdy"),
        "{out}"
    );
    assert!(
        text.contains("stage 2 (from scratch; copies from stage 1; final)\n  [4] from scratch\n  [5] with_path /srv/out.txt from another container's /out.txt\n"),
        "{out}"
    );
    assert!(text.contains("with_env_variable MODE=prod"), "{out}");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = run_cli(&json_args, &[]);
    out.assert_success();
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["stages"][1]["base"], "scratch");
    assert_eq!(plan["stages"][1]["copies_from"], serde_json::json!([1]));
}

/// `plan --secret` takes `build`'s forms: the plan shows each secret's mount by id, a
/// required one must be given, and no source is read (no command runs, no value is shown).
#[test]
fn plan_takes_secrets_by_id_without_reading_them() {
    let src = tempdir("blumeops-src-");
    write_files(
        src.path(),
        &[(
            "containers/sec/Dockerfile",
            "FROM docker.io/library/busybox:1.37\n\
             RUN --mount=type=secret,id=tok,required=true \\\n\
             --mount=type=secret,id=api,env=API_KEY make\n",
        )],
    );
    let src_arg = path_arg(src.path());
    let base = ["plan", "--container-name", "sec", "--src", src_arg.as_str()];

    let missing = run_cli(&base, &[]);
    missing.assert_code(2);
    assert!(
        missing
            .stderr
            .contains("the required secret `tok` was not given"),
        "{missing}"
    );

    let marker = src.path().join("cmd-ran");
    let cmd = format!("api=cmd:touch {}", marker.display());
    let mut args = base.to_vec();
    args.extend(["--secret", "tok=env:PLAN_SECRET", "--secret", &cmd]);
    let value = "zak-plan-secret-value-0815";
    let out = run_cli(&args, &[("PLAN_SECRET", value)]);
    out.assert_success().assert_no_secret(value);
    for step in [
        "with_mounted_secret /run/secrets/tok (secret tok)",
        "with_secret_variable API_KEY",
        "without_mount /run/secrets/tok",
        "without_secret_variable API_KEY",
    ] {
        assert!(out.stdout.contains(step), "{step} missing\n{out}");
    }
    assert!(!marker.exists(), "plan ran the secret's command\n{out}");
    // An unset variable, an absent file: not read, so no error.
    let mut args = base.to_vec();
    args.extend([
        "--secret",
        "id=tok,env=PLAN_UNSET_VARIABLE",
        "--secret",
        "id=api,src=/nonexistent/file",
    ]);
    run_cli(&args, &[]).assert_success();

    let mut args = base.to_vec();
    args.extend(["--secret", "not-a-secret-form"]);
    let bad = run_cli(&args, &[]);
    bad.assert_code(2);
    assert!(bad.stderr.contains("invalid --secret"), "{bad}");
    assert!(!bad.stderr.contains("not-a-secret-form"), "{bad}");
}

#[test]
fn plan_of_an_unknown_container_is_invalid_input() {
    let out = run_cli(&["plan", "--container-name", "nope"], &[]);
    out.assert_code(2);
    assert!(out.stderr.contains("unknown container `nope`"), "{out}");
    assert!(out.stderr.contains("hello"), "{out}");
}

#[test]
fn list_shows_native_dockerfile_and_nix_containers() {
    let src = src_tree();
    let src_arg = path_arg(src.path());
    let out = run_cli(&["list", "--src", &src_arg], &[]);
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let row = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}\n{out}"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "TYPES", "VERSION"]
    );
    assert_eq!(row("hello"), ["hello", "native", "v1.0.0"]);
    assert_eq!(row("web"), ["web", "dockerfile", "v2.3.4"]);
    assert_eq!(row("plainv"), ["plainv", "dockerfile", "v0.9.1"]);
    assert_eq!(row("nixy"), ["nixy", "nix", "v5.6.7"]);

    let out = run_cli(&["list", "--src", &src_arg, "--json"], &[]);
    out.assert_success();
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    // Sorted; other native definitions may be listed too.
    assert!(names.is_sorted(), "{names:?}");
    for name in ["hello", "nixy", "plainv", "web"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let hello = &list[names.iter().position(|n| *n == "hello").unwrap()];
    assert_eq!(hello["types"], serde_json::json!(["native"]));
    assert_eq!(hello["version"], "v1.0.0");
    assert!(hello.get("tags").is_none());
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("failed to run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn changed_lists_containers_touched_since_base() {
    let repo = tempdir("blumeops-git-");
    let dir = repo.path();
    git(dir, &["init", "-q"]);
    write_files(
        dir,
        &[
            (
                "containers/a/Dockerfile",
                "FROM x\nARG CONTAINER_APP_VERSION=1\n",
            ),
            (
                "containers/b/Dockerfile",
                "FROM x\nARG CONTAINER_APP_VERSION=1\n",
            ),
            ("containers/c/default.nix", "{ version = \"1\"; }\n"),
        ],
    );
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "one"]);
    let before = git(dir, &["rev-parse", "HEAD"]);
    write_files(
        dir,
        &[
            (
                "containers/a/Dockerfile",
                "FROM y\nARG CONTAINER_APP_VERSION=2\n",
            ),
            ("containers/b/x/file.txt", "new\n"),
            ("docs/readme.md", "unrelated\n"),
        ],
    );
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "two"]);

    let src_arg = path_arg(dir);
    let out = run_cli(&["changed", "--base", &before, "--src", &src_arg], &[]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), r#"["a","b"]"#, "{out}");

    let out = run_cli(&["changed", "--base", "HEAD", "--src", &src_arg], &[]);
    out.assert_success();
    assert_eq!(out.stdout.trim(), "[]", "{out}");

    let out = run_cli(
        &["changed", "--base", "no-such-ref", "--src", &src_arg],
        &[],
    );
    out.assert_code(2);
    assert!(out.stderr.contains("no-such-ref"), "{out}");
    assert!(out.stderr.contains("hint:"), "{out}");

    let not_git = tempdir("blumeops-not-git-");
    let out = run_cli(
        &[
            "changed",
            "--base",
            &before,
            "--src",
            &path_arg(not_git.path()),
        ],
        &[],
    );
    out.assert_code(2);
    assert!(out.stderr.contains("error: failed to compare"), "{out}");
}

#[test]
fn container_version_of_native_dockerfile_and_nix() {
    let src = src_tree();
    let src_arg = path_arg(src.path());
    for (name, expected) in [
        ("hello", "v1.0.0"),
        ("web", "v2.3.4"),
        ("plainv", "v0.9.1"),
        ("nixy", "v5.6.7"),
    ] {
        let out = run_cli(&["container-version", name, "--src", &src_arg], &[]);
        out.assert_success();
        assert_eq!(out.stdout, format!("{expected}\n"), "{out}");
    }
    let out = run_cli(&["container-version", "nope", "--src", &src_arg], &[]);
    out.assert_code(2);
    let known = out
        .stderr
        .split_once("unknown container `nope`; known containers: ")
        .unwrap_or_else(|| panic!("no list of known containers\n{out}"))
        .1
        .lines()
        .next()
        .unwrap();
    let known: Vec<&str> = known.split(", ").collect();
    for name in ["hello", "nixy", "plainv", "web"] {
        assert!(known.contains(&name), "{known:?}\n{out}");
    }
}

/// Build and publish `hello` against a local registry: plain progress, workflow outputs,
/// `--json`, and `list --tags`.
#[test]
fn plain_progress_and_workflow_outputs() {
    let registry = TestRegistry::start();
    let base = BaseImage::push(&registry);
    let cache = isolated_cache();
    let cache_arg = path_arg(cache.path());
    let addr = registry.addr();
    let base_arg = format!("BASE_IMAGE={}", base.reference);

    // Plain progress (CI set): no escape bytes, every step of the plan.
    let out_dir = tempdir("blumeops-out-");
    let output = format!("oci:{}", out_dir.path().join("layout").display());
    let build = run_cli(
        &[
            "build",
            "--container-name",
            "hello",
            "--registry",
            &addr,
            "--build-arg",
            &base_arg,
            "--output",
            &output,
        ],
        &[("CI", "true"), ("BLUMEOPS_CACHE_DIR", &cache_arg)],
    );
    build.assert_success();
    assert!(
        !build.stderr.contains('\x1b') && !build.stdout.contains('\x1b'),
        "escape bytes in plain output\n{build}"
    );
    let plan = run_cli(
        &[
            "plan",
            "--container-name",
            "hello",
            "--build-arg",
            &base_arg,
            "--json",
        ],
        &[],
    );
    plan.assert_success();
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let steps = plan["stages"][0]["steps"].as_array().unwrap();
    for step in steps {
        let line = format!(
            "[{}/{}] {}\n",
            step["index"],
            steps.len(),
            step["description"].as_str().unwrap()
        );
        assert!(build.stderr.contains(&line), "missing {line:?}\n{build}");
    }
    assert!(build.stderr.contains("built 8 steps in "), "{build}");

    // Publish with both output variables set and --json.
    let outputs = tempdir("blumeops-outputs-");
    let github = outputs.path().join("github_output");
    let forgejo = outputs.path().join("forgejo_output");
    std::fs::write(&github, "earlier=line\n").unwrap();
    let (github_arg, forgejo_arg) = (path_arg(&github), path_arg(&forgejo));
    let publish = run_cli(
        &[
            "publish",
            "--container-name",
            "hello",
            "--version",
            "v1.0.0",
            "--commit-sha",
            "abc1234",
            "--registry",
            &addr,
            "--registry-username",
            CI_USER,
            "--registry-password",
            "env:ZOT_CI_API_KEY",
            "--build-arg",
            &base_arg,
            "--progress",
            "plain",
            "--json",
        ],
        &[
            ("ZOT_CI_API_KEY", registry.ci_password()),
            ("BLUMEOPS_CACHE_DIR", &cache_arg),
            ("GITHUB_OUTPUT", &github_arg),
            ("FORGEJO_OUTPUT", &forgejo_arg),
        ],
    );
    publish.assert_success();
    publish.assert_no_secret(registry.ci_password());
    assert!(!publish.stderr.contains('\x1b'), "{publish}");
    let json: serde_json::Value = serde_json::from_str(publish.last_line()).unwrap();
    let reference = format!("{addr}/blumeops/hello:v1.0.0-abc1234");
    assert_eq!(json["ref"], reference.as_str(), "{publish}");
    assert_eq!(json["tag"], "v1.0.0-abc1234");
    let digest = json["digest"].as_str().unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    let expected = format!("ref={reference}\ndigest={digest}\ntag=v1.0.0-abc1234\n");
    assert_eq!(
        std::fs::read_to_string(&github).unwrap(),
        format!("earlier=line\n{expected}")
    );
    assert_eq!(std::fs::read_to_string(&forgejo).unwrap(), expected);

    // The tag shows up in `list --tags`.
    let list = run_cli(&["list", "--tags", "--registry", &addr, "--json"], &[]);
    list.assert_success();
    let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let hello = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "hello")
        .unwrap();
    assert_eq!(hello["tags"], serde_json::json!(["v1.0.0-abc1234"]));
}

/// A Dockerfile with no `ARG CONTAINER_APP_VERSION=` and no `--version`: `build` tags it
/// `dev` with a note; `publish` refuses (exit code 2) and says how to give a version.
#[test]
fn a_dockerfile_without_a_version_builds_as_dev_and_is_not_published() {
    let src = tempdir("blumeops-src-");
    write_files(
        src.path(),
        &[
            (
                "containers/nover/Dockerfile",
                "# syntax=docker/dockerfile:1\nFROM scratch\nCOPY note.txt /note.txt\n",
            ),
            ("containers/nover/note.txt", "hi\n"),
        ],
    );
    let src_arg = path_arg(src.path());
    let cache = isolated_cache();
    let cache_arg = path_arg(cache.path());
    let out_dir = tempdir("blumeops-out-");
    let output = format!("oci:{}", out_dir.path().join("layout").display());
    let common = [
        "--src",
        &src_arg,
        "--container-name",
        "nover",
        "--commit-sha",
        "abc1234",
    ];
    let env = [("BLUMEOPS_CACHE_DIR", cache_arg.as_str())];

    let mut args = vec!["build"];
    args.extend(common);
    args.extend(["--output", &output]);
    let build = run_cli(&args, &env);
    build.assert_success();
    assert!(
        build.stderr.contains(
            "note: containers/nover/Dockerfile has no `ARG CONTAINER_APP_VERSION=<version>` line \
             and no --version was given: using version `dev`"
        ),
        "{build}"
    );
    assert!(
        build
            .stderr
            .contains(":1: parser directive `syntax=docker/dockerfile:1` noted"),
        "{build}"
    );
    assert!(
        build.stdout.contains("/blumeops/nover:dev-abc1234@sha256:"),
        "{build}"
    );

    // An explicit version: no note.
    args.extend(["--version", "2.0.0"]);
    let build = run_cli(&args, &env);
    build.assert_success();
    assert!(!build.stderr.contains("using version"), "{build}");
    assert!(
        build
            .stdout
            .contains("/blumeops/nover:2.0.0-abc1234@sha256:"),
        "{build}"
    );

    // Nothing is contacted: the version is checked first.
    let mut args = vec!["publish"];
    args.extend(common);
    args.extend(["--registry", "127.0.0.1:1"]);
    let publish = run_cli(&args, &env);
    publish.assert_code(2);
    assert!(
        publish.stderr.contains(
            "no version for container `nover`: containers/nover/Dockerfile has no \
             `ARG CONTAINER_APP_VERSION=<version>` line and --version was not given"
        ),
        "{publish}"
    );
    assert!(
        publish.stderr.contains(
            "hint: add a line `ARG CONTAINER_APP_VERSION=<version>` to the Dockerfile, or \
             pass --version <version>"
        ),
        "{publish}"
    );
}
