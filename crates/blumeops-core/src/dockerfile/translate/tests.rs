use std::path::Path;

use rstest::rstest;

use crate::definition::BuildArgs;
use crate::dockerfile::{Error, load, translate};
use crate::pipeline::{Container, Network, Op};

fn ctx(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }
    dir
}

fn tr(text: &str) -> Result<Container, Error> {
    translate(
        text,
        "Dockerfile",
        Path::new("/nonexistent"),
        &BuildArgs::new(),
        None,
    )
}

fn steps(text: &str) -> Vec<String> {
    tr(text).unwrap().steps()
}

fn err(text: &str) -> String {
    tr(text).unwrap_err().to_string()
}

/// The container another step copies from.
fn source_of(c: &Container, index: usize) -> Container {
    match c.ops()[index] {
        Op::CopyFrom { source, .. } | Op::CopyPathFrom { source, .. } => source.clone(),
        other => panic!("step {index} is not a copy from a container: {other:?}"),
    }
}

#[test]
fn multi_stage_copy_from_translates_into_ordered_steps() {
    let dir = ctx(&[("go.mod", "module x\n"), ("main.go", "package main\n")]);
    let text = "\
# syntax=docker/dockerfile:1
FROM golang:1.22 AS build
WORKDIR /src
COPY go.mod main.go ./
RUN go build -o /out/app .

FROM alpine:3.20 AS unused
COPY does-not-exist /x
RUN echo never

FROM scratch
COPY --from=build /out/app /usr/local/bin/app
COPY --from=build /src/static/ /srv/
COPY --from=docker.io/library/busybox:1.37 /bin/busybox /bin/
ENTRYPOINT [\"/usr/local/bin/app\"]
";
    let c = translate(text, "Dockerfile", dir.path(), &BuildArgs::new(), None).unwrap();
    assert_eq!(
        c.steps(),
        [
            "from scratch",
            "with_path /usr/local/bin/app from another container's /out/app",
            "with_directory /srv from another container's /src/static",
            "with_path /bin/ from another container's /bin/busybox",
            "with_entrypoint [\"/usr/local/bin/app\"]",
        ]
    );
    let ctx_path = dir.path().display();
    let build = source_of(&c, 1);
    assert_eq!(
        build.steps(),
        [
            "from golang:1.22".to_owned(),
            "with_workdir /src".to_owned(),
            format!("with_file /src/go.mod from {ctx_path}/go.mod"),
            format!("with_file /src/main.go from {ctx_path}/main.go"),
            "with_exec /bin/sh -c 'go build -o /out/app .'".to_owned(),
        ]
    );
    assert_eq!(source_of(&c, 2).steps(), build.steps());
    assert_eq!(
        source_of(&c, 3).steps(),
        ["from docker.io/library/busybox:1.37"]
    );
    // The unused stage (with its missing source) was never translated.
    let all = format!("{c:?}");
    assert!(
        !all.contains("echo never") && !all.contains("alpine"),
        "{all}"
    );
    // Copies from another stage keep their owners unless --chown says otherwise (as
    // BuildKit and buildah do).
    match c.ops()[1] {
        Op::CopyPathFrom { opts, .. } => assert_eq!(opts.owner.as_deref(), None),
        _ => unreachable!(),
    }
}

#[test]
fn from_a_previous_stage_continues_it() {
    let s = steps(
        "FROM alpine AS base\nENV A=1\nFROM base AS next\nUSER app\nFROM next\nCMD [\"x\"]\n",
    );
    assert_eq!(
        s,
        [
            "from alpine",
            "with_env_variable A=1",
            "with_user app",
            "with_default_args [\"x\"]"
        ]
    );
}

#[test]
fn unknown_instruction_names_file_and_line() {
    assert_eq!(
        err("FROM scratch\n# comment\nFOO bar\n"),
        "Dockerfile:3: unknown instruction FOO"
    );
    let e = translate(
        "FROM scratch\n\nRUN\n",
        "ctx/Dockerfile.dev",
        Path::new("."),
        &BuildArgs::new(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("ctx/Dockerfile.dev:3: "), "{e}");
    assert_eq!(
        err("ENV A=1\nFROM scratch\n"),
        "Dockerfile:1: ENV before the first FROM: only ARG may come before FROM"
    );
    assert_eq!(err("ARG A=1\n"), "Dockerfile: no FROM instruction");
}

#[test]
fn arg_scoping_follows_docker() {
    let text = "\
ARG VERSION=1.0
ARG BASE=alpine
FROM ${BASE}:3.20 AS a
ARG VERSION
ARG LOCAL=local-default
LABEL v=$VERSION l=$LOCAL
RUN echo $VERSION
FROM scratch AS b
LABEL v=x${VERSION}y
";
    let run = |args: &BuildArgs, target| {
        translate(text, "Dockerfile", Path::new("."), args, target)
            .unwrap()
            .steps()
    };
    assert_eq!(
        run(&BuildArgs::new(), Some("a")),
        [
            "from alpine:3.20",
            "with_label v=1.0",
            "with_label l=local-default",
            "with_exec /bin/sh -c 'echo $VERSION'"
        ]
    );
    let args = BuildArgs::new()
        .with("VERSION", "2.0")
        .with("BASE", "debian")
        .with("LOCAL", "given");
    assert_eq!(
        run(&args, Some("A"))[..3],
        ["from debian:3.20", "with_label v=2.0", "with_label l=given"]
    );
    // A global ARG is not visible in a stage that does not declare it.
    assert_eq!(run(&args, None), ["from scratch", "with_label v=xy"]);
    // ARG values reach RUN as step environment, not as image config.
    let c = translate(text, "Dockerfile", Path::new("."), &args, Some("a")).unwrap();
    match c.ops()[3] {
        Op::Exec { opts, .. } => assert_eq!(
            opts.env,
            [
                ("LOCAL".to_owned(), "given".to_owned()),
                ("VERSION".to_owned(), "2.0".to_owned())
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_overrides_arg_and_base_image_variables_are_deferred() {
    let s = steps(
        "FROM alpine\nARG A=arg\nENV A=env B=$A\nENV PATH=/app/bin:$PATH C=\"a b\" D=${A}\nLABEL x=$A\nRUN true\n",
    );
    assert_eq!(
        s,
        [
            "from alpine",
            "with_env_variable A=env",
            // B sees A from before this ENV: the ARG.
            "with_env_variable B=arg",
            "with_env_variable PATH=/app/bin:${PATH} (expanded)",
            "with_env_variable C=a b",
            "with_env_variable D=env",
            "with_label x=env",
            "with_exec /bin/sh -c true",
        ]
    );
    let c = tr("FROM alpine\nARG A=arg\nENV A=env\nRUN true\n").unwrap();
    match c.ops()[2] {
        Op::Exec { opts, .. } => assert!(opts.env.is_empty(), "{opts:?}"),
        other => panic!("{other:?}"),
    }
    let e = err("FROM alpine\nWORKDIR $HOME/app\n");
    assert!(
        e.starts_with("Dockerfile:2: WORKDIR refers to $HOME")
            && e.contains("only substituted in ENV"),
        "{e}"
    );
    // From scratch nothing is unknown: an unset variable is empty.
    assert_eq!(
        steps("FROM scratch\nWORKDIR /x$HOME\n")[1],
        "with_workdir /x"
    );
    // Legacy `ENV name value`.
    assert_eq!(
        steps("FROM scratch\nENV GREETING hello  world\n")[1],
        "with_env_variable GREETING=hello  world"
    );
}

#[test]
fn target_selection() {
    let text = "FROM alpine AS one\nRUN a\nFROM busybox AS two\nRUN b\nFROM scratch\n";
    let t = |target| {
        translate(
            text,
            "Dockerfile",
            Path::new("."),
            &BuildArgs::new(),
            target,
        )
    };
    assert_eq!(
        t(Some("one")).unwrap().steps(),
        ["from alpine", "with_exec /bin/sh -c a"]
    );
    assert_eq!(
        t(Some("TWO")).unwrap().steps(),
        ["from busybox", "with_exec /bin/sh -c b"]
    );
    assert_eq!(t(None).unwrap().steps(), ["from scratch"]);
    let e = t(Some("three")).unwrap_err().to_string();
    assert_eq!(e, "Dockerfile: no stage named `three`; stages: one, two");
}

#[rstest]
#[case("CMD echo hi", "with_default_args [\"/bin/sh\", \"-c\", \"echo hi\"]")]
#[case("CMD [\"echo\", \"hi\"]", "with_default_args [\"echo\", \"hi\"]")]
#[case(
    "ENTRYPOINT exec app --flag",
    "with_entrypoint [\"/bin/sh\", \"-c\", \"exec app --flag\"]"
)]
#[case(
    "CMD echo $HOME",
    "with_default_args [\"/bin/sh\", \"-c\", \"echo $HOME\"]"
)]
fn cmd_and_entrypoint_forms(#[case] line: &str, #[case] want: &str) {
    assert_eq!(steps(&format!("FROM alpine\n{line}\n"))[1], want);
}

#[test]
fn shell_instruction_changes_later_shell_forms() {
    let s = steps(
        "FROM alpine\nSHELL [\"/bin/bash\", \"-eo\", \"pipefail\", \"-c\"]\nRUN a | b\nCMD c\n",
    );
    assert_eq!(
        s[1..],
        [
            "with_shell [\"/bin/bash\", \"-eo\", \"pipefail\", \"-c\"]",
            "with_exec /bin/bash -eo pipefail -c 'a | b'",
            "with_default_args [\"/bin/bash\", \"-eo\", \"pipefail\", \"-c\", \"c\"]",
        ]
    );
    assert!(err("FROM alpine\nSHELL /bin/bash -c\n").contains("JSON array"));
}

#[test]
fn entrypoint_keeps_cmd_of_the_same_stage() {
    let s = steps("FROM alpine\nCMD [\"--help\"]\nENTRYPOINT [\"app\"]\n");
    assert_eq!(
        s[1..],
        [
            "with_default_args [\"--help\"]",
            "with_entrypoint [\"app\"]",
            "with_default_args [\"--help\"]"
        ]
    );
}

#[test]
fn healthcheck_conversion() {
    let c = tr("FROM alpine\nHEALTHCHECK --interval=30s --timeout=3s --start-period=1m30s --retries=3 \\\n  CMD curl -f http://localhost/ || exit 1\n").unwrap();
    let Op::Healthcheck(h) = c.ops()[1] else {
        panic!()
    };
    assert_eq!(
        h.to_json(),
        serde_json::json!({
            "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
            "Interval": 30_000_000_000u64,
            "Timeout": 3_000_000_000u64,
            "StartPeriod": 90_000_000_000u64,
            "Retries": 3,
        })
    );
    let c =
        tr("FROM alpine\nHEALTHCHECK CMD [\"/bin/check\", \"-q\"]\nHEALTHCHECK NONE\n").unwrap();
    assert_eq!(
        c.steps()[1..],
        [
            "with_healthcheck CMD /bin/check -q",
            "with_healthcheck NONE"
        ]
    );
    let Op::Healthcheck(h) = c.ops()[2] else {
        panic!()
    };
    assert_eq!(h.to_json(), serde_json::json!({"Test": ["NONE"]}));
    assert!(
        err("FROM alpine\nHEALTHCHECK --interval=soon CMD x\n")
            .contains("invalid --interval `soon`")
    );
    assert!(err("FROM alpine\nHEALTHCHECK --retries=3 NONE\n").contains("NONE takes no flags"));
    assert!(err("FROM alpine\nHEALTHCHECK echo\n").contains("NONE or CMD"));
}

#[rstest]
#[case("300ms", 300_000_000)]
#[case("1.5h", 5_400_000_000_000)]
#[case("2h45m", 9_900_000_000_000)]
#[case("0", 0)]
#[case("10us", 10_000)]
fn go_durations(#[case] s: &str, #[case] nanos: u64) {
    assert_eq!(
        super::go_duration(s),
        Some(std::time::Duration::from_nanos(nanos))
    );
}

#[test]
fn config_instructions() {
    let s = steps(
        "FROM alpine\n\
         LABEL \"org.opencontainers.image.title\"=\"my app\" version=1 \\\n  desc='a \"quoted\" value'\n\
         EXPOSE 80 53/UDP 8000-8001/tcp\n\
         VOLUME [\"/data\", \"/logs\"]\n\
         VOLUME /cache /tmp/x\n\
         STOPSIGNAL SIGQUIT\n\
         USER app:app\n\
         MAINTAINER Jane <jane@example.com>\n\
         ONBUILD RUN make\n",
    );
    assert_eq!(
        s[1..],
        [
            "with_label org.opencontainers.image.title=my app",
            "with_label version=1",
            "with_label desc=a \"quoted\" value",
            "with_exposed_port 80/tcp",
            "with_exposed_port 53/udp",
            "with_exposed_port 8000/tcp",
            "with_exposed_port 8001/tcp",
            "with_volume /data",
            "with_volume /logs",
            "with_volume /cache",
            "with_volume /tmp/x",
            "with_stop_signal SIGQUIT",
            "with_user app:app",
            "with_author Jane <jane@example.com>",
            "with_onbuild RUN make",
        ]
    );
    assert!(err("FROM alpine\nEXPOSE 80/xdp\n").contains("invalid port `80/xdp`"));
    assert!(err("FROM alpine\nONBUILD FROM x\n").contains("isn't allowed as an ONBUILD trigger"));
    assert!(err("FROM alpine\nONBUILD BOGUS x\n").contains("unknown instruction BOGUS"));
}

#[test]
fn workdir_is_relative_to_the_previous_one() {
    let dir = ctx(&[("a.txt", "a")]);
    let c = translate(
        "FROM alpine\nWORKDIR /app\nWORKDIR sub\nCOPY a.txt .\nCOPY a.txt b.txt\nCOPY a.txt ../c/\n",
        "Dockerfile",
        dir.path(),
        &BuildArgs::new(),
        None,
    )
    .unwrap();
    let p = dir.path().join("a.txt");
    let p = p.display();
    assert_eq!(
        c.steps()[1..],
        [
            "with_workdir /app".to_owned(),
            "with_workdir sub".to_owned(),
            format!("with_file /app/sub/a.txt from {p}"),
            format!("with_file /app/sub/b.txt from {p}"),
            format!("with_file /app/c/a.txt from {p}"),
        ]
    );
    let e = translate(
        "FROM alpine\nCOPY a.txt .\n",
        "Dockerfile",
        dir.path(),
        &BuildArgs::new(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("Dockerfile:2: relative path `.` needs a WORKDIR"),
        "{e}"
    );
}

#[test]
fn copy_applies_dockerignore_globs_and_flags() {
    let dir = ctx(&[
        (".dockerignore", "**/*.log\napp/target\nsecret.txt\n"),
        ("app/main.rs", "fn main() {}"),
        ("app/notes.log", "x"),
        ("app/target/debug/big", "x"),
        ("README.md", "r"),
        ("CHANGES.md", "c"),
        ("secret.txt", "s"),
    ]);
    let t = |text: &str| translate(text, "Dockerfile", dir.path(), &BuildArgs::new(), None);
    let c = t("FROM scratch\nCOPY --chown=1000:1000 --chmod=0640 . /src/\nCOPY --chown=app:staff app /app\nCOPY *.md /docs/\n").unwrap();
    let root = dir.path().display();
    assert_eq!(
        c.steps()[1..],
        [
            format!("with_directory /src from {root}"),
            format!("with_directory /app from {root}/app"),
            format!("with_file /docs/CHANGES.md from {root}/CHANGES.md"),
            format!("with_file /docs/README.md from {root}/README.md"),
        ]
    );
    let ops = c.ops();
    let Op::HostDirectory { opts, .. } = ops[1] else {
        panic!()
    };
    assert_eq!(opts.exclude, ["app/notes.log", "app/target", "secret.txt"]);
    assert_eq!(opts.owner, Some("1000:1000".parse().unwrap()));
    assert_eq!(opts.mode, Some(0o640));
    let Op::HostDirectory { opts, .. } = ops[2] else {
        panic!()
    };
    assert_eq!(opts.exclude, ["notes.log", "target"]);
    assert_eq!(
        (opts.owner, opts.owner_name.as_deref()),
        (None, Some("app:staff"))
    );

    let e = t("FROM scratch\nCOPY secret.txt /\n")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "Dockerfile:2: `secret.txt` is excluded by .dockerignore");
    let e = t("FROM scratch\nCOPY nope /\n").unwrap_err().to_string();
    assert_eq!(e, "Dockerfile:2: `nope` not found in the build context");
    let e = t("FROM scratch\nCOPY *.md /docs\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("needs a destination directory ending in /"),
        "{e}"
    );
    let e = t("FROM scratch\nCOPY *.txt /\n").unwrap_err().to_string();
    assert_eq!(e, "Dockerfile:2: no build context files match `*.txt`");
    let e = t("FROM scratch\nCOPY --chmod=999 README.md /\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid --chmod `999`"), "{e}");
}

#[test]
fn load_prefers_the_dockerfile_specific_ignore_file() {
    let dir = ctx(&[
        (".dockerignore", "a.txt\n"),
        ("build/app.Dockerfile", "FROM scratch\nCOPY a.txt b.txt /\n"),
        ("build/app.Dockerfile.dockerignore", "b.txt\n"),
        ("a.txt", "a"),
        ("b.txt", "b"),
    ]);
    let df = dir.path().join("build/app.Dockerfile");
    let e = load(&df, dir.path(), &BuildArgs::new(), None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("{}:2: `b.txt` is excluded by .dockerignore", df.display())
    );
    std::fs::remove_file(dir.path().join("build/app.Dockerfile.dockerignore")).unwrap();
    let e = load(&df, dir.path(), &BuildArgs::new(), None)
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("`a.txt` is excluded by .dockerignore"), "{e}");
    let e = load(
        &dir.path().join("missing"),
        dir.path(),
        &BuildArgs::new(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("failed to read") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn add_urls_and_archives() {
    let dir = ctx(&[("plain.txt", "hello")]);
    let mut tar = vec![0u8; 1024];
    tar[257..262].copy_from_slice(b"ustar");
    std::fs::write(dir.path().join("rootfs.tar"), &tar).unwrap();
    std::fs::write(dir.path().join("data.tgz"), [0x1f, 0x8b, 8, 0]).unwrap();
    let sum = format!("sha256:{}", "a".repeat(64));
    let text = format!(
        "FROM scratch\nADD rootfs.tar /\nADD data.tgz /opt/data\nADD plain.txt /etc/\n\
         ADD --checksum={sum} https://example.com/dl/tool-1.0.tar.gz /tmp/\n\
         ADD https://example.com/x /usr/bin/x\n"
    );
    let c = translate(&text, "Dockerfile", dir.path(), &BuildArgs::new(), None).unwrap();
    let root = dir.path().display();
    assert_eq!(
        c.steps()[1..],
        [
            format!("with_host_archive / from {root}/rootfs.tar"),
            format!("with_host_archive /opt/data from {root}/data.tgz"),
            format!("with_file /etc/plain.txt from {root}/plain.txt"),
            "with_http_file /tmp/tool-1.0.tar.gz from https://example.com/dl/tool-1.0.tar.gz"
                .to_owned(),
            "with_http_file /usr/bin/x from https://example.com/x".to_owned(),
        ]
    );
    let Op::HttpFile { checksum, opts, .. } = c.ops()[4] else {
        panic!()
    };
    assert_eq!(checksum.as_ref().map(ToString::to_string), Some(sum));
    assert_eq!(opts.mode, Some(0o600));
    let e = err("FROM scratch\nCOPY https://example.com/x /x\n");
    assert!(e.contains("use ADD"), "{e}");
}

#[test]
fn run_flags_cache_mounts_and_network() {
    let c = tr("FROM alpine\nWORKDIR /w\nRUN --mount=type=cache,target=/root/.cache --mount=type=cache,id=go-mod,target=pkg \\\n    --network=none make\nRUN [\"echo\", \"$HOME\"]\n").unwrap();
    assert_eq!(
        c.steps()[2..],
        [
            "with_mounted_cache /root/.cache (volume root_.cache)",
            "with_mounted_cache /w/pkg (volume go-mod)",
            "with_exec /bin/sh -c make",
            "without_mount /root/.cache",
            "without_mount /w/pkg",
            // Exec form is not expanded: the variable reaches the program as written.
            "with_exec echo '$HOME'",
        ]
    );
    let Op::Exec { opts, .. } = c.ops()[4] else {
        panic!()
    };
    assert_eq!(opts.network, Network::None);
    for (flag, want) in [
        ("--mount=type=ssh", "type=ssh is not supported"),
        ("--mount=type=ssh,id=default", "type=ssh is not supported"),
        (
            "--mount=type=npipe,target=/x",
            "type=npipe is not supported",
        ),
        ("--mount=type=cache", "needs target="),
        ("--mount=type=tmpfs", "needs target="),
        (
            "--mount=type=tmpfs,target=/t,size=lots",
            "`size=lots` is not a size",
        ),
        ("--mount=type=secret", "needs id="),
        (
            "--mount=type=secret,id=tok,required=true",
            "required secret `tok` was not given",
        ),
        ("--mount=type=secret,id=tok,mode=9", "`mode=9` is not valid"),
        (
            "--mount=type=bind,source=x,target=/x",
            "`x` not found in the build context",
        ),
        (
            "--mount=type=bind,source=../x,target=/x",
            "leads outside the build context",
        ),
        (
            "--mount=type=bind,target=/x,rw=maybe",
            "expected true or false",
        ),
        (
            "--mount=type=cache,target=/x,uid=1000",
            "option `uid` is not supported with type=cache",
        ),
        (
            "--mount=type=tmpfs,target=/x,source=/y",
            "option `source` is not supported with type=tmpfs",
        ),
        ("--network=bridge", "--network=bridge is not supported"),
        (
            "--security=insecure",
            "--security=insecure is not supported",
        ),
    ] {
        let e = err(&format!("FROM alpine\nRUN {flag} true\n"));
        assert!(
            e.starts_with("Dockerfile:2: ") && e.contains(want),
            "{flag}: {e}"
        );
    }
}

#[test]
fn heredocs_in_run_and_copy() {
    let c = tr("FROM alpine\nARG NAME=world\nRUN <<EOF\nset -e\necho hi\nEOF\nRUN cat <<EOF > /greeting\nhello\nEOF\nCOPY --chmod=0755 <<EOF /usr/local/bin/hello\n#!/bin/sh\necho hello $NAME\nEOF\nCOPY <<'RAW' /etc/\nkeep $NAME\nRAW\n").unwrap();
    assert_eq!(
        c.steps()[1..],
        [
            "with_exec /bin/sh -c 'set -e\necho hi\n'",
            "with_exec /bin/sh -c 'cat <<EOF > /greeting\nhello\nEOF\n'",
            "with_new_file /usr/local/bin/hello (27 bytes, mode 0755, owner 0:0)",
            "with_new_file /etc/RAW (11 bytes, mode 0644, owner 0:0)",
        ]
    );
    let Op::NewFile { contents, .. } = c.ops()[3] else {
        panic!()
    };
    assert_eq!(&contents[..], b"#!/bin/sh\necho hello world\n");
    let e = err("FROM alpine\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n");
    assert!(e.contains("#! line are not supported"), "{e}");
}

#[test]
fn escape_directive_applies_to_expansion() {
    let s = steps("# escape=`\nFROM scratch\nENV A=`$literal B=C:\\dir\nWORKDIR C:\\x `\n  \\y\n");
    assert_eq!(
        s[1..],
        [
            "with_env_variable A=$literal",
            "with_env_variable B=C:\\dir",
            "with_workdir C:\\x   \\y"
        ]
    );
}

#[test]
fn stage_references() {
    let text = "FROM scratch AS a\nCOPY --from=b /x /y\nFROM scratch AS b\n";
    let e = translate(
        text,
        "Dockerfile",
        Path::new("."),
        &BuildArgs::new(),
        Some("a"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not defined before this one"), "{e}");
    let e = err("FROM scratch AS a\nFROM scratch AS A\n");
    assert_eq!(e, "Dockerfile:2: duplicate stage name `a`");
    // By index.
    let c = tr("FROM busybox\nFROM scratch\nCOPY --from=0 /bin/ /bin/\n").unwrap();
    assert_eq!(source_of(&c, 1).steps(), ["from busybox"]);
    // A wildcard in the last component becomes an include filter.
    let c = tr("FROM busybox AS b\nFROM scratch\nCOPY --from=b /out/*.jar /app/\n").unwrap();
    let Op::CopyFrom { src_path, opts, .. } = c.ops()[1] else {
        panic!()
    };
    assert_eq!(
        (src_path.as_str(), opts.include.as_slice()),
        ("/out", &["*.jar".to_owned()][..])
    );
}

#[test]
fn platform_args_are_predefined() {
    let arch = crate::reference::Platform::host().architecture().to_owned();
    let s = steps(
        "FROM busybox:${TARGETARCH}\nARG TARGETOS\nARG TARGETARCH\nLABEL p=$TARGETOS/$TARGETARCH\n",
    );
    assert_eq!(
        s,
        [
            format!("from busybox:{arch}"),
            format!("with_label p=linux/{arch}")
        ]
    );
}

#[test]
fn target_platform_args_describe_the_target_and_build_ones_the_host() {
    let host = crate::reference::Platform::host();
    let arm: crate::reference::Platform = "linux/arm/v7".parse().unwrap();
    let text = "FROM --platform=$BUILDPLATFORM busybox AS build\n\
                ARG TARGETPLATFORM\nARG TARGETARCH\nARG TARGETVARIANT\nARG BUILDARCH\n\
                RUN echo $TARGETPLATFORM $TARGETARCH $TARGETVARIANT on $BUILDARCH\n\
                FROM busybox:${TARGETARCH}\n\
                COPY --from=build /out /out\n";
    let c = crate::dockerfile::translate_for_platform(
        text,
        "Dockerfile",
        Path::new("."),
        &BuildArgs::new(),
        None,
        &arm,
    )
    .unwrap();
    // The final stage is for the target (the engine's platform): no platform of its own.
    assert_eq!(c.steps()[0], "from busybox:arm");
    let build = source_of(&c, 1);
    assert_eq!(build.steps()[0], format!("from busybox (platform {host})"));
    let Op::Exec { opts, .. } = build.ops()[1] else {
        panic!("a RUN step")
    };
    let env = |name: &str| {
        opts.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(env("TARGETPLATFORM"), Some("linux/arm/v7"));
    assert_eq!(env("TARGETARCH"), Some("arm"));
    assert_eq!(env("TARGETVARIANT"), Some("v7"));
    assert_eq!(env("BUILDARCH"), Some(host.architecture()));
}

#[test]
fn from_platform_must_be_a_platform() {
    let e = err("FROM --platform=linux busybox\n");
    assert!(
        e.contains("FROM --platform=`linux` is not a platform"),
        "{e}"
    );
    // A scratch stage takes it too.
    assert_eq!(
        steps("FROM --platform=linux/arm64 scratch\n")[0],
        "from scratch (platform linux/arm64)"
    );
}

#[tokio::test]
async fn config_instructions_reach_the_image_config() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(store_dir.path()).unwrap();
    let engine = crate::pipeline::Engine::new(crate::pipeline::EngineOptions::new(store)).unwrap();
    let c = tr("FROM scratch AS base\n\
                ENV PATH=/bin\n\
                FROM base\n\
                ENV PATH=/app/bin:$PATH HOME=/root\n\
                VOLUME /data\n\
                STOPSIGNAL SIGINT\n\
                SHELL [\"/bin/ash\", \"-c\"]\n\
                HEALTHCHECK --interval=5s CMD check\n\
                MAINTAINER someone\n\
                ONBUILD RUN make\n\
                CMD serve\n")
    .unwrap();
    let built = c.build(&engine).await.unwrap();
    let rc = &built.config.config;
    assert_eq!(rc.env, ["PATH=/app/bin:/bin", "HOME=/root"]);
    assert!(rc.volumes.contains_key("/data"));
    assert_eq!(rc.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(rc.other["Shell"], serde_json::json!(["/bin/ash", "-c"]));
    assert_eq!(
        rc.other["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "check"], "Interval": 5_000_000_000u64})
    );
    assert_eq!(rc.other["OnBuild"], serde_json::json!(["RUN make"]));
    assert_eq!(
        rc.cmd.as_deref(),
        Some(&["/bin/ash".to_owned(), "-c".to_owned(), "serve".to_owned()][..])
    );
    assert_eq!(built.config.author.as_deref(), Some("someone"));

    // A value from the base image's environment is finished at evaluation.
    let c = Container::scratch()
        .with_env_variable("PATH", "/usr/bin")
        .with_env_variable_expand("PATH", "/opt/bin:${PATH}:${MISSING:-none}:\\$x");
    let built = c.build(&engine).await.unwrap();
    assert_eq!(built.config.config.env, ["PATH=/opt/bin:/usr/bin:none:$x"]);
}

#[test]
fn doubling_args_stop_at_the_word_limit_with_the_line() {
    let mut text = String::from("FROM scratch\nARG A=0123456789abcdef\n");
    for _ in 0..40 {
        text.push_str("ARG A=${A}${A}\n");
    }
    let e = err(&text);
    // 16 bytes doubled 16 times is 1 MiB; the 17th doubling is refused, on line 19.
    assert_eq!(
        e,
        "Dockerfile:19: ARG: the word after variable substitution exceeds the limit of 1048576 bytes"
    );
}

#[test]
fn many_large_words_stop_at_the_total_limit() {
    let mut text = String::from("FROM scratch\nARG A=0123456789abcdef\n");
    for _ in 0..15 {
        text.push_str("ARG A=${A}${A}\n");
    }
    // A is 512 KiB; each LABEL adds 1 MiB of substituted text.
    for i in 0..100 {
        text.push_str(&format!("LABEL l{i}=${{A}}${{A}}\n"));
    }
    let e = err(&text);
    assert!(
        e.contains("the text produced by variable substitution in this Dockerfile exceeds the limit of 67108864 bytes"),
        "{e}"
    );
}

#[rstest]
#[case::size(
    format!("FROM scratch\n{}", "# comment\n".repeat(500_000)),
    "Dockerfile:1: the Dockerfile's size (5000013 bytes) exceeds the limit of 4194304 bytes"
)]
#[case::line(
    format!("FROM scratch\nLABEL a={}\n", "x".repeat(1 << 20)),
    "Dockerfile:2: the instruction's length (continuation lines joined) exceeds the limit of 1048576 bytes"
)]
#[case::continued_line(
    format!("FROM scratch\nLABEL a=\\\n{}", format!("{}\\\n", "x".repeat(1000)).repeat(1100)),
    "Dockerfile:2: the instruction's length (continuation lines joined) exceeds the limit of 1048576 bytes"
)]
#[case::instructions(
    format!("FROM scratch\n{}", "USER 0\n".repeat(10_000)),
    "Dockerfile:10001: the number of instructions exceeds the limit of 10000 instructions"
)]
#[case::heredoc(
    format!("FROM scratch\nCOPY <<EOF /f\n{}EOF\n", "y\n".repeat(600_000)),
    "Dockerfile:2: heredoc <<EOF exceeds the limit of 1048576 bytes"
)]
fn oversized_dockerfiles_are_refused_with_the_line(#[case] text: String, #[case] want: &str) {
    assert_eq!(err(&text), want);
}

#[test]
fn sources_behind_symlinks_out_of_the_context_are_refused() {
    let dir = ctx(&[("inside", "data")]);
    std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
    std::os::unix::fs::symlink("inside", dir.path().join("ok")).unwrap();
    let tr = |text: &str| translate(text, "Dockerfile", dir.path(), &BuildArgs::new(), None);
    for (text, src) in [
        ("FROM scratch\nCOPY out/passwd /x\n", "out/passwd"),
        ("FROM scratch\nCOPY passwd /x\n", "passwd"),
        ("FROM scratch\nCOPY pass* /x\n", "pass*"),
    ] {
        let e = tr(text).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "Dockerfile:2: `{src}` leads outside the build context (to `/etc/passwd`) through a symlink"
            )
        );
    }
    assert!(tr("FROM scratch\nCOPY ok /x\n").is_ok());
}

/// Each instruction that substitutes variables does so with every form (patterns, special
/// parameters); RUN, CMD and ONBUILD keep their text.
#[rstest]
#[case::env(
    "ENV X=${V%%.*} Y=${P##*/}$1",
    &["with_env_variable X=1", "with_env_variable Y=app.tar.gz"]
)]
#[case::env_key("ENV ${N//-/_}=${V/-/+}", &["with_env_variable org_x=1.2.3+rc1"])]
#[case::arg("ARG W=${V%-*}\nLABEL w=$W", &["with_label w=1.2.3"])]
#[case::label(
    "LABEL ${N//-/.}=${V#*.} \"${N%-*}\"=${@:-none}",
    &["with_label org.x=2.3-rc1", "with_label org=none"]
)]
#[case::workdir("WORKDIR /opt/${P##*/}", &["with_workdir /opt/app.tar.gz"])]
#[case::user("USER ${U:-app}:${#}${G-staff}", &["with_user app:staff"])]
#[case::expose(
    "EXPOSE ${PORT%/*} $PORTS $NONE",
    &["with_exposed_port 8080/tcp", "with_exposed_port 80/tcp", "with_exposed_port 443/udp"]
)]
#[case::volume(
    "VOLUME /data/${V%%.*} ${P%/*}",
    &["with_volume /data/1", "with_volume /usr/local/bin"]
)]
#[case::volume_json("VOLUME [\"/v/${V#*.}\"]", &["with_volume /v/2.3-rc1"])]
#[case::stopsignal("STOPSIGNAL ${SIG#SIG}", &["with_stop_signal TERM"])]
#[case::run_mount(
    "WORKDIR /w\nRUN --mount=type=${T:-cache},id=${V%%.*},target=${P##*/} true",
    &[
        "with_workdir /w",
        "with_mounted_cache /w/app.tar.gz (volume 1)",
        "with_exec /bin/sh -c true",
        "without_mount /w/app.tar.gz",
    ]
)]
#[case::add_url(
    "ADD https://example.com/${P##*/} /dl/${V%%-*}/",
    &["with_http_file /dl/1.2.3/app.tar.gz from https://example.com/app.tar.gz"]
)]
#[case::run("RUN echo ${V%%.*} $1", &["with_exec /bin/sh -c 'echo ${V%%.*} $1'"])]
#[case::cmd(
    "CMD echo ${V%%.*}",
    &["with_default_args [\"/bin/sh\", \"-c\", \"echo ${V%%.*}\"]"]
)]
#[case::onbuild("ONBUILD RUN echo ${V%%.*} $1", &["with_onbuild RUN echo ${V%%.*} $1"])]
fn instructions_substitute_every_form(#[case] lines: &str, #[case] want: &[&str]) {
    let text = format!(
        "FROM scratch\n\
         ARG V=1.2.3-rc1 P=/usr/local/bin/app.tar.gz N=org-x PORT=8080/udp \
         PORTS=\"80 443/udp\" SIG=SIGTERM\n{lines}\n"
    );
    assert_eq!(steps(&text)[1..], *want);
}

#[test]
fn copy_substitutes_every_form() {
    let dir = ctx(&[("app.conf", "c")]);
    let text = "FROM scratch\n\
                ARG F=app.conf.bak V=1.2.3-rc1 U=1000 O=0o750\n\
                COPY --chown=${U}:${G:-${U%0}1} --chmod=${O#0o} ${F%.bak} /etc/${V%%.*}/\n\
                COPY <<EOF /f\n${V%%.*} $1 $@ ${F/conf/cfg}\nEOF\n";
    let c = translate(text, "Dockerfile", dir.path(), &BuildArgs::new(), None).unwrap();
    let root = dir.path().display();
    assert_eq!(
        c.steps()[1..],
        [
            format!("with_file /etc/1/app.conf from {root}/app.conf"),
            "with_new_file /f (16 bytes, mode 0644, owner 0:0)".to_owned(),
        ]
    );
    let Op::HostFile { opts, .. } = c.ops()[1] else {
        panic!()
    };
    assert_eq!(
        (opts.owner, opts.mode),
        (Some("1000:1001".parse().unwrap()), Some(0o750))
    );
    let Op::NewFile { contents, .. } = c.ops()[2] else {
        panic!()
    };
    assert_eq!(&contents[..], b"1   app.cfg.bak\n");
}

#[test]
fn from_substitutes_every_form_with_global_args() {
    let s =
        steps("ARG IMG=docker.io/library/alpine:3.20\nFROM ${IMG%:*}:${IMG##*:}${1:--x} AS b\n");
    assert_eq!(s, ["from docker.io/library/alpine:3.20-x"]);
}

#[test]
fn patterns_on_the_base_image_environment_are_deferred() {
    let s =
        steps("FROM alpine\nARG V=1.2.3-rc1\nENV PATH=${PATH%:*} X=${V#$PREFIX} Y=${HOME/$1/~}\n");
    assert_eq!(
        s[1..],
        [
            "with_env_variable PATH=${PATH%:*} (expanded)",
            // A known value with an unknown pattern carries the value along.
            "with_env_variable X=${'1.2.3-rc1'#${PREFIX}} (expanded)",
            // An empty pattern matches at the start.
            "with_env_variable Y=~${HOME} (expanded)",
        ]
    );
    let e = err("FROM alpine\nARG V=1.2.3\nWORKDIR /${V#$PREFIX}\n");
    assert!(
        e.starts_with("Dockerfile:3: WORKDIR refers to $PREFIX"),
        "{e}"
    );
    let e = err("FROM alpine\nENV X=${PATH:#x}\n");
    assert!(
        e.contains("ENV: bad variable substitution: unsupported modifier `:#`"),
        "{e}"
    );
    let e = err("FROM scratch\nLABEL x=${#PATH}\n");
    assert!(e.contains("unsupported modifier `P`"), "{e}");
}

#[tokio::test]
async fn deferred_patterns_are_finished_at_evaluation() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(store_dir.path()).unwrap();
    let engine = crate::pipeline::Engine::new(crate::pipeline::EngineOptions::new(store)).unwrap();
    let c = tr("FROM alpine\nARG V=1.2.3-rc1\n\
                ENV A=${PATH%%:*} B=${V#$PREFIX} C=${PATH//\\//|} D=${PATH/$1/-}\n")
    .unwrap();
    // The templates, applied onto an image whose environment is known.
    let image = |prefix: &str| {
        c.ops().iter().fold(
            Container::scratch()
                .with_env_variable("PATH", "/usr/bin:/bin")
                .with_env_variable("PREFIX", prefix),
            |img, op| match op {
                Op::EnvExpand(k, t) => img.with_env_variable_expand(k, t),
                _ => img,
            },
        )
    };
    let built = image("#*.").build(&engine).await.unwrap();
    assert_eq!(
        built.config.config.env,
        [
            "PATH=/usr/bin:/bin",
            "PREFIX=#*.",
            "A=/usr/bin",
            "B=3-rc1",
            "C=|usr|bin:|bin",
            "D=-/usr/bin:/bin",
        ]
    );
    // A pattern the environment makes invalid fails the step, as BuildKit fails the build.
    let e = image("\\a").build(&engine).await.unwrap_err();
    let mut causes = vec![e.to_string()];
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    assert!(
        causes.iter().any(|c| c
            == "environment variable B: invalid pattern `\\a` in substitution: invalid escape `\\a`"),
        "{causes:?}"
    );
}
/// Deferred ENV values are finished against the environment from before their
/// instruction, as BuildKit and buildah substitute them: `OLD=$PATH` after
/// `PATH=/opt/bin:$PATH` in the same instruction is the image's `PATH`.
#[tokio::test]
async fn deferred_env_values_see_the_environment_before_their_instruction() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(store_dir.path()).unwrap();
    let engine = crate::pipeline::Engine::new(crate::pipeline::EngineOptions::new(store)).unwrap();
    let c = tr("FROM alpine\nENV KNOWN=before\n\
                ENV PATH=/opt/bin:$PATH OLD=$PATH KNOWN=after WAS=$KNOWN\nENV LAST=$PATH\n")
    .unwrap();
    assert_eq!(
        c.steps()[2..],
        [
            "with_env_variables PATH=/opt/bin:${PATH} OLD=${PATH} KNOWN=after WAS=before \
             (expanded)",
            "with_env_variable LAST=${PATH} (expanded)",
        ]
    );
    let image = c.ops().iter().fold(
        Container::scratch().with_env_variable("PATH", "/usr/bin:/bin"),
        |img, op| match op {
            Op::Env(k, v) => img.with_env_variable(k, v),
            Op::EnvExpand(k, t) => img.with_env_variable_expand(k, t),
            Op::EnvExpandAll(pairs) => img.with_env_variables_expand(pairs.clone()),
            _ => img,
        },
    );
    let built = image.build(&engine).await.unwrap();
    assert_eq!(
        built.config.config.env,
        [
            "PATH=/opt/bin:/usr/bin:/bin",
            "KNOWN=after",
            "OLD=/usr/bin:/bin",
            "WAS=before",
            "LAST=/opt/bin:/usr/bin:/bin",
        ]
    );
}

/// The entries of a gzip layer: (path, mode, uid, gid).
fn layer_entries(
    store: &crate::store::Store,
    blob: &crate::image::BlobRef,
) -> Vec<(String, u32, u64, u64)> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(store.open_blob(&blob.digest).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    tar::Archive::new(&raw[..])
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn directories_a_copy_creates_get_its_owner_and_existing_ones_keep_theirs() {
    let dir = ctx(&[("a.txt", "a")]);
    let store_dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(store_dir.path()).unwrap();
    let engine =
        crate::pipeline::Engine::new(crate::pipeline::EngineOptions::new(store.clone())).unwrap();
    // As buildah 1.28 and BuildKit do: every directory COPY/ADD creates gets the --chown
    // owner; directories the image has keep their mode and owner.
    let c = translate(
        "FROM scratch\n\
         COPY --chown=1000:1001 a.txt /opt/deep/app/\n\
         COPY a.txt /opt/deep/other/b.txt\n\
         COPY --chown=7:8 <<EOF /srv/x/note\nhi\nEOF\n\
         WORKDIR /srv/x/y\n",
        "Dockerfile",
        dir.path(),
        &BuildArgs::new(),
        None,
    )
    .unwrap();
    let built = c.build(&engine).await.unwrap();
    let layers: Vec<_> = built
        .image
        .layers
        .iter()
        .map(|b| layer_entries(&store, b))
        .collect();
    let e = |p: &str, mode: u32, uid: u64, gid: u64| (p.to_owned(), mode, uid, gid);
    assert_eq!(
        layers,
        [
            vec![
                e("opt/", 0o755, 1000, 1001),
                e("opt/deep/", 0o755, 1000, 1001),
                e("opt/deep/app/", 0o755, 1000, 1001),
                e("opt/deep/app/a.txt", 0o644, 1000, 1001),
            ],
            vec![
                e("opt/", 0o755, 1000, 1001),
                e("opt/deep/", 0o755, 1000, 1001),
                e("opt/deep/other/", 0o755, 0, 0),
                e("opt/deep/other/b.txt", 0o644, 0, 0),
            ],
            vec![
                e("srv/", 0o755, 7, 8),
                e("srv/x/", 0o755, 7, 8),
                e("srv/x/note", 0o644, 7, 8),
            ],
            vec![
                e("srv/", 0o755, 7, 8),
                e("srv/x/", 0o755, 7, 8),
                e("srv/x/y/", 0o755, 0, 0),
            ],
        ]
    );
}

/// The destination of a directory copy is no copy of the source directory: as buildah
/// and BuildKit do, a new one is 0755 and root's (or the --chown owner's) whatever the
/// source directory's mode and owner, from the context or from a stage; one the image has
/// keeps its mode and owner.
#[tokio::test]
async fn a_directory_copy_settles_its_destination_like_a_parent() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = ctx(&[("tree/exists/keep", "k\n"), ("d/f.txt", "f\n")]);
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(dir.path().join(p), std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode("tree/exists", 0o711);
    mode("d", 0o750);
    mode("d/f.txt", 0o644);
    mode("tree/exists/keep", 0o644);
    let store_dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(store_dir.path()).unwrap();
    let engine =
        crate::pipeline::Engine::new(crate::pipeline::EngineOptions::new(store.clone())).unwrap();
    let c = translate(
        "FROM scratch AS s\n\
         COPY --chown=5:6 d /built/\n\
         FROM scratch\n\
         COPY tree/ /\n\
         COPY --from=s /built /kept/\n\
         COPY --from=s --chmod=0700 /built /exists/\n\
         COPY --chown=9:9 d /new/\n",
        "Dockerfile",
        dir.path(),
        &BuildArgs::new(),
        None,
    )
    .unwrap();
    let built = c.build(&engine).await.unwrap();
    let layers: Vec<_> = built
        .image
        .layers
        .iter()
        .map(|b| layer_entries(&store, b))
        .collect();
    let e = |p: &str, mode: u32, uid: u64, gid: u64| (p.to_owned(), mode, uid, gid);
    assert_eq!(
        layers,
        [
            vec![e("exists/", 0o711, 0, 0), e("exists/keep", 0o644, 0, 0)],
            vec![e("kept/", 0o755, 0, 0), e("kept/f.txt", 0o644, 5, 6)],
            vec![e("exists/", 0o711, 0, 0), e("exists/f.txt", 0o700, 5, 6)],
            vec![e("new/", 0o755, 9, 9), e("new/f.txt", 0o644, 9, 9)],
        ]
    );
}

#[test]
fn copy_exclude_and_link() {
    let dir = ctx(&[
        ("app/main.rs", "m"),
        ("app/notes.log", "n"),
        ("app/sub/deep.log", "d"),
        ("home.txt", "h"),
        ("home.md", "h"),
        ("homes/a.txt", "a"),
    ]);
    let t = |text: &str| translate(text, "Dockerfile", dir.path(), &BuildArgs::new(), None);
    // BuildKit (documented; buildah 1.28 has no --exclude): patterns are matched like
    // .dockerignore's against paths inside a copied directory, and against a wildcard's
    // matches by name (`COPY --exclude=*.txt hom* /mydir/`). --link changes nothing here.
    let c = t("FROM scratch\n\
               COPY --exclude=*.log --exclude=sub/*.log app /app\n\
               COPY --exclude=*.txt hom* /docs/\n\
               COPY --link --exclude=*.txt home.txt /link/\n")
    .unwrap();
    let root = dir.path().display();
    assert_eq!(
        c.steps()[1..],
        [
            format!("with_directory /app from {root}/app"),
            format!("with_file /docs/home.md from {root}/home.md"),
            format!("with_directory /docs from {root}/homes"),
            // Named exactly: copied whatever the patterns say, as BuildKit does.
            format!("with_file /link/home.txt from {root}/home.txt"),
        ]
    );
    let Op::HostDirectory { opts, .. } = c.ops()[1] else {
        panic!()
    };
    assert_eq!(opts.exclude, ["*.log", "sub/*.log"]);
    let Op::HostDirectory { opts, .. } = c.ops()[3] else {
        panic!()
    };
    assert_eq!(opts.exclude, ["*.txt"]);

    let c =
        tr("FROM alpine AS b\nFROM scratch\nCOPY --from=b --exclude=*.so /usr/lib /lib\n").unwrap();
    let Op::CopyPathFrom { opts, .. } = c.ops()[1] else {
        panic!()
    };
    assert_eq!(opts.exclude, ["*.so"]);

    for (flag, want) in [
        ("--exclude=!keep", "COPY --exclude=`!keep` is not supported"),
        ("--exclude=", "COPY --exclude=`` is not supported"),
        ("--exclude=[", "invalid --exclude pattern `[`"),
    ] {
        let e = t(&format!("FROM scratch\nCOPY {flag} app /app\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("Dockerfile:2: ") && e.contains(want), "{e}");
    }
}

#[test]
fn copy_parents_keeps_source_paths() {
    let dir = ctx(&[
        ("x/y/a.txt", "a"),
        ("x/y/b.txt", "b"),
        ("x/z/a.txt", "a"),
        ("top.txt", "t"),
    ]);
    let t = |text: &str| translate(text, "Dockerfile", dir.path(), &BuildArgs::new(), None);
    // BuildKit (documented; buildah 1.28 has no --parents): each source keeps its path
    // relative to the context, wildcards included; `/./` keeps only what follows it.
    let c = t("FROM scratch\n\
               COPY --parents x/*/a.txt top.txt /p/\n\
               COPY --parents ./x/./y/*.txt /q\n\
               COPY --parents=true x/y /r\n\
               COPY --parents x/./ /s/\n\
               COPY --parents=false x/y/a.txt /t/\n")
    .unwrap();
    let root = dir.path().display();
    assert_eq!(
        c.steps()[1..],
        [
            format!("with_file /p/x/y/a.txt from {root}/x/y/a.txt"),
            format!("with_file /p/x/z/a.txt from {root}/x/z/a.txt"),
            format!("with_file /p/top.txt from {root}/top.txt"),
            format!("with_file /q/y/a.txt from {root}/x/y/a.txt"),
            format!("with_file /q/y/b.txt from {root}/x/y/b.txt"),
            format!("with_directory /r/x/y from {root}/x/y"),
            format!("with_directory /s from {root}/x"),
            format!("with_file /t/a.txt from {root}/x/y/a.txt"),
        ]
    );

    let c = tr("FROM alpine AS b\nFROM scratch\n\
                COPY --parents --from=b /usr/./lib/*.so /etc/passwd /p/\n")
    .unwrap();
    assert_eq!(
        c.steps()[1..],
        [
            "with_directory /p/lib from another container's /usr/lib",
            "with_path /p/etc/passwd from another container's /etc/passwd",
        ]
    );

    let e = t("FROM scratch\nCOPY --parents a/./b/./c /p/\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "Dockerfile:2: COPY --parents: `a/./b/./c` has more than one /./ pivot"
    );
    let e = t("FROM scratch\nCOPY --parents=maybe top.txt /p/\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid --parents `maybe`"), "{e}");
    // ADD has no --parents (BuildKit neither).
    let e = t("FROM scratch\nADD --parents top.txt /p/\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("Dockerfile:2: ") && e.contains("parents"),
        "{e}"
    );
}

#[test]
fn syntax_and_check_directives_are_accepted_with_a_note() {
    let dir = ctx(&[(
        "Dockerfile",
        "# syntax=docker/dockerfile:1.7-labs\n# check=skip=JSONArgsRecommended\n# escape=`\n\
         FROM scratch\nENV A=1 `\n  B=2\n",
    )]);
    let df = dir.path().join("Dockerfile");
    let loaded = load(&df, dir.path(), &BuildArgs::new(), None).unwrap();
    assert_eq!(
        loaded.container.steps()[1..],
        ["with_env_variable A=1", "with_env_variable B=2"]
    );
    let f = df.display();
    assert_eq!(
        loaded.notes,
        [
            format!(
                "{f}:1: parser directive `syntax=docker/dockerfile:1.7-labs` noted: blumeops \
                 translates the Dockerfile itself and loads no frontend image"
            ),
            format!(
                "{f}:2: parser directive `check=skip=JSONArgsRecommended` noted: blumeops runs \
                 no build checks"
            ),
        ]
    );
}

/// An HTTP server answering every request with `body`, for as many requests as come.
fn serve(body: &'static [u8]) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn add_checksum_is_checked_and_a_mismatch_names_both_sums() {
    let url = serve(b"hello\n");
    let store_dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(store_dir.path()).unwrap();
    let engine =
        crate::pipeline::Engine::new(crate::pipeline::EngineOptions::new(store.clone())).unwrap();
    let actual = crate::reference::Digest::of(b"hello\n").to_string();
    let c = tr(&format!(
        "FROM scratch\nADD --chown=5:6 --checksum={actual} {url}/f.txt /dl/sub/\n"
    ))
    .unwrap();
    let built = c.build(&engine).await.unwrap();
    let e = |p: &str, mode: u32, uid: u64, gid: u64| (p.to_owned(), mode, uid, gid);
    assert_eq!(
        layer_entries(&store, &built.image.layers[0]),
        [
            e("dl/", 0o755, 5, 6),
            e("dl/sub/", 0o755, 5, 6),
            e("dl/sub/f.txt", 0o600, 5, 6),
        ]
    );

    let expected = format!("sha256:{}", "0".repeat(64));
    let c = tr(&format!(
        "FROM scratch\nADD --checksum={expected} {url}/f.txt /f.txt\n"
    ))
    .unwrap();
    let err = c.build(&engine).await.unwrap_err();
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(
        chain.contains(&format!(
            "checksum mismatch: expected {expected}, got {actual}"
        )),
        "{chain}"
    );
}

#[test]
fn add_of_a_git_repository() {
    let c = tr("FROM scratch\n\
                ADD https://example.com/org/repo.git#v1.2 /src\n\
                ADD --keep-git-dir --chown=1000 git@example.com:org/repo.git /r/\n\
                ADD --keep-git-dir=false https://example.com/repo.git /plain\n")
    .unwrap();
    assert_eq!(
        c.steps()[1..],
        [
            "with_git_repository /src from https://example.com/org/repo.git#v1.2",
            "with_git_repository /r from git@example.com:org/repo.git",
            "with_git_repository /plain from https://example.com/repo.git",
        ]
    );
    let Op::GitRepository {
        keep_git_dir, opts, ..
    } = c.ops()[2]
    else {
        panic!()
    };
    assert!(*keep_git_dir);
    assert_eq!(opts.owner.as_deref(), Some("1000"));

    for (line, want) in [
        (
            "ADD https://example.com/r.git#main:sub /s",
            "a subdirectory (`#ref:dir`) of a git repository is not supported",
        ),
        (
            "ADD https://example.com/r.git https://example.com/x /s/",
            "takes it as the only source",
        ),
        (
            "ADD --chmod=0755 https://example.com/r.git /s",
            "does not support --chmod",
        ),
        (
            "ADD --keep-git-dir https://example.com/x /s",
            "--keep-git-dir needs a git repository source",
        ),
        ("COPY git@example.com:r.git /s", "COPY does not take URLs"),
    ] {
        let e = err(&format!("FROM scratch\n{line}\n"));
        assert!(e.starts_with("Dockerfile:2: ") && e.contains(want), "{e}");
    }
}

/// `git -C dir ARGS`, which must succeed; its stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn git_repositories_are_checked_out_and_only_commit_ids_are_cached() {
    if std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::testing::skip("git is not installed");
        return;
    }
    let repo = ctx(&[("README", "one\n"), ("bin/run", "#!/bin/sh\n")]);
    std::fs::set_permissions(
        repo.path().join("bin/run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "one"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    let url = repo.path().display().to_string();

    let store_dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(store_dir.path()).unwrap();
    let engine =
        crate::pipeline::Engine::new(crate::pipeline::EngineOptions::new(store.clone())).unwrap();
    let opts = crate::pipeline::CopyOptions::default().with_owner("5:6");
    let build = |reference: &str, keep: bool| {
        let c = Container::scratch().with_git_repository(
            "/src/app",
            url.clone(),
            Some(reference.to_owned()),
            keep,
            opts.clone(),
        );
        let engine = &engine;
        async move { c.build(engine).await }
    };
    let paths = |built: &crate::pipeline::BuiltImage| -> Vec<(String, u32, u64, u64)> {
        layer_entries(&store, &built.image.layers[0])
    };
    let e = |p: &str, mode: u32| (p.to_owned(), mode, 5, 6);
    let built = build("main", false).await.unwrap();
    assert_eq!(
        paths(&built),
        [
            e("src/", 0o755),
            e("src/app/", 0o755),
            e("src/app/README", 0o644),
            e("src/app/bin/", 0o755),
            e("src/app/bin/run", 0o755),
        ]
    );
    let kept = build(&first, true).await.unwrap();
    assert!(
        paths(&kept).iter().any(|(p, ..)| p == "src/app/.git/HEAD"),
        "{:?}",
        paths(&kept)
    );

    // A branch moves: it is fetched again on every build.
    std::fs::write(repo.path().join("NEW"), "two\n").unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "two"]);
    let again = build("main", false).await.unwrap();
    assert!(paths(&again).iter().any(|(p, ..)| p == "src/app/NEW"));
    // A commit id names one tree: cached, the repository is not read again.
    let moved = repo.path().with_extension("moved");
    std::fs::rename(repo.path(), &moved).unwrap();
    let cached = build(&first, true).await;
    let gone = build("main", false).await;
    std::fs::rename(&moved, repo.path()).unwrap();
    assert_eq!(
        cached.unwrap().image.manifest.digest,
        kept.image.manifest.digest
    );
    let e = format!("{:?}", gone.unwrap_err());
    assert!(e.contains("git fetch failed"), "{e}");
}

fn tr_with(text: &str, dir: &Path, args: &BuildArgs) -> Result<Container, Error> {
    translate(text, "Dockerfile", dir, args, None)
}

#[test]
fn run_secret_mounts_translate_into_secret_steps_for_that_command_only() {
    use crate::secret::Secret;
    let args = BuildArgs::new().with_secret("tok", Secret::new("zak_s3cr3t_value"));
    let text = "FROM alpine\nWORKDIR /w\n\
        RUN --mount=type=secret,id=tok cat /run/secrets/tok\n\
        RUN --mount=type=secret,id=tok,env=TOK,target=t,mode=0440,uid=1000,gid=100 true\n\
        RUN --mount=type=secret,id=tok,env=TOK printenv TOK\n\
        RUN --mount=type=secret,target=/etc/tok true\n\
        RUN --mount=type=secret,id=missing --mount=type=secret,id=missing2,env=M true\n";
    let c = tr_with(text, Path::new("/nonexistent"), &args).unwrap();
    assert_eq!(
        c.steps()[2..],
        [
            "with_mounted_secret /run/secrets/tok (secret tok)",
            "with_exec /bin/sh -c 'cat /run/secrets/tok'",
            "without_mount /run/secrets/tok",
            "with_mounted_secret /w/t (secret tok)",
            "with_secret_variable TOK",
            "with_exec /bin/sh -c true",
            "without_mount /w/t",
            "without_secret_variable TOK",
            // env= alone: a variable, no file.
            "with_secret_variable TOK",
            "with_exec /bin/sh -c 'printenv TOK'",
            "without_secret_variable TOK",
            // The id defaults to the target's name.
            "with_mounted_secret /etc/tok (secret tok)",
            "with_exec /bin/sh -c true",
            "without_mount /etc/tok",
            // Not required and not given: the command runs without it.
            "with_exec /bin/sh -c true",
        ]
    );
    let Op::MountSecret { opts, .. } = c.ops()[5] else {
        panic!("{:?}", c.ops()[5])
    };
    assert_eq!((opts.mode, opts.uid, opts.gid), (0o440, 1000, 100));
    // The value is nowhere in what describes or keys the steps.
    let shown = format!("{:?} {:?}", c.steps(), c);
    assert!(!shown.contains("zak_s3cr3t_value"), "{shown}");
    let other = BuildArgs::new().with_secret("tok", Secret::new("another value"));
    let c2 = tr_with(text, Path::new("/nonexistent"), &other).unwrap();
    let keys = |c: &Container| -> Vec<_> {
        c.ops()
            .into_iter()
            .map(crate::pipeline::operation_for_tests)
            .collect()
    };
    assert_eq!(keys(&c), keys(&c2), "a step's key depends on the value");
    let e = tr_with(
        "FROM alpine\nRUN true\nRUN --mount=type=secret,id=gone,required true\n",
        Path::new("/nonexistent"),
        &args,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("Dockerfile:3: ") && e.contains("`gone`"),
        "{e}"
    );
}

#[test]
fn run_bind_and_tmpfs_mounts() {
    let dir = ctx(&[("src/main.c", "int main;\n"), ("Makefile", "all:\n")]);
    let text = "FROM alpine AS tools\nRUN mkdir /opt/tools\n\
        FROM alpine\nWORKDIR /w\n\
        RUN --mount=type=bind,target=/ctx make -C /ctx\n\
        RUN --mount=type=bind,source=src,target=s,rw true\n\
        RUN --mount=type=bind,from=tools,source=/opt/tools,target=/t \
            --mount=type=tmpfs,target=/scratch,size=64m true\n\
        RUN --mount=type=bind,from=busybox:1.37,target=/bb --mount=type=tmpfs,dst=/tmp2 true\n";
    let c = tr_with(text, dir.path(), &BuildArgs::new()).unwrap();
    let ctx_path = dir.path().display();
    assert_eq!(
        c.steps()[2..],
        [
            format!("with_mounted_directory /ctx from {ctx_path}"),
            "with_exec /bin/sh -c 'make -C /ctx'".to_owned(),
            "without_mount /ctx".to_owned(),
            format!("with_mounted_directory /w/s from {ctx_path}/src (writable, writes discarded)"),
            "with_exec /bin/sh -c true".to_owned(),
            "without_mount /w/s".to_owned(),
            "with_mounted_directory /t from another container's /opt/tools".to_owned(),
            "with_mounted_temp /scratch".to_owned(),
            "with_exec /bin/sh -c true".to_owned(),
            "without_mount /t".to_owned(),
            "without_mount /scratch".to_owned(),
            "with_mounted_directory /bb from another container's /".to_owned(),
            "with_mounted_temp /tmp2".to_owned(),
            "with_exec /bin/sh -c true".to_owned(),
            "without_mount /bb".to_owned(),
            "without_mount /tmp2".to_owned(),
        ]
    );
    let Op::MountTemp { size, .. } = c.ops()[9] else {
        panic!("{:?}", c.ops()[9])
    };
    assert_eq!(*size, Some(64 << 20));
    let Op::MountDirectoryFrom { source, .. } = c.ops()[8] else {
        panic!("{:?}", c.ops()[8])
    };
    assert_eq!(
        source.steps(),
        ["from alpine", "with_exec /bin/sh -c 'mkdir /opt/tools'"]
    );
    let Op::MountDirectoryFrom { source, .. } = c.ops()[13] else {
        panic!("{:?}", c.ops()[13])
    };
    assert_eq!(source.steps(), ["from busybox:1.37"]);
    // The mounted host directory is sent to the docker executor's engine.
    assert!(
        c.host_inputs()
            .iter()
            .any(|(p, _)| p == &dir.path().join("src"))
    );
}
