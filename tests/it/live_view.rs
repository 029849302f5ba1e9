//! What a user sees: the live view on a real pseudo-terminal, read back through a terminal
//! emulator (the output tail of a running step, elided titles, a resize, collapse on
//! completion, a failure, Ctrl-C), and `--progress json` against real builds (the schema,
//! the reasons, no escape bytes, no secrets).

use std::path::Path;
use std::time::Duration;

use blumeops_e2e::pty::PtyRun;
use blumeops_e2e::{BaseImage, CI_USER, TestRegistry, isolated_cache, run_cli, tempdir};

/// A Dockerfile container `NAME` whose second step prints `compiling unit N` every 0.3 s,
/// `lines` times, behind a long command line, then exits with `code`.
fn ticker(src: &Path, name: &str, base: &str, lines: u32, code: u32) {
    let filler = "x".repeat(160);
    let dockerfile = format!(
        "ARG CONTAINER_APP_VERSION=1.0.0\n\
         FROM {base}\n\
         RUN echo \"a long command line: {filler}\" >/dev/null; i=0; \
         while [ $i -lt {lines} ]; do i=$((i+1)); echo \"compiling unit $i\"; sleep 0.3; done; \
         exit {code} # the end\n\
         RUN echo done > /done\n"
    );
    let dir = src.join("containers").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn tail_rows(screen: &[String]) -> Vec<&String> {
    screen.iter().filter(|r| r.contains("│ ")).collect()
}

#[test]
fn the_live_view_shows_the_running_steps_output_and_collapses_it() {
    let registry = TestRegistry::start();
    let base = BaseImage::push(&registry);
    let (src, cache, out) = (
        tempdir("blumeops-src-"),
        isolated_cache(),
        tempdir("blumeops-out-"),
    );
    ticker(src.path(), "ticker", &base.reference, 16, 0);
    let output = format!("oci:{}", out.path().join("layout").display());
    let (src_arg, cache_arg) = (path(src.path()), path(cache.path()));
    let args = [
        "build",
        "--container-name",
        "ticker",
        "--src",
        &src_arg,
        "--registry",
        &registry.addr(),
        "--output",
        &output,
    ];
    let mut run = PtyRun::spawn(
        &args,
        &[("BLUMEOPS_CACHE_DIR", &cache_arg)],
        src.path(),
        100,
        30,
    );

    // The running step: its number, its title elided in the middle (the start and the end
    // of the command both show), its elapsed time, and under it the last lines of output.
    let screen = run.wait_for(Duration::from_secs(120), "four output lines", |s| {
        tail_rows(s).len() >= 4
    });
    let title = screen
        .iter()
        .find(|r| r.starts_with("  [2/3] "))
        .unwrap_or_else(|| panic!("no title row:\n{}", screen.join("\n")));
    assert!(
        title.contains("with_exec") && title.contains('…'),
        "{title}"
    );
    assert!(title.contains("# the end"), "{title}");
    assert!(
        title.ends_with('s') && title.chars().count() < 100,
        "{title}"
    );
    assert!(
        tail_rows(&screen)
            .iter()
            .all(|r| r.starts_with("    │ compiling unit ")),
        "{}",
        screen.join("\n")
    );
    // The tail scrolls and keeps the default six lines.
    let screen = run.wait_for(Duration::from_secs(60), "unit 9", |s| {
        s.iter().any(|r| r.ends_with("│ compiling unit 9"))
    });
    let tail = tail_rows(&screen);
    assert_eq!(tail.len(), 6, "{}", screen.join("\n"));
    assert!(
        tail[0].ends_with("│ compiling unit 4"),
        "{}",
        screen.join("\n")
    );

    // A narrower terminal: the next redraw fits it.
    run.resize(60, 30);
    // (A row drawn before the resize is cut at 60 columns and loses its elapsed time.)
    let screen = run.wait_for(Duration::from_secs(10), "a redraw at 60 columns", |s| {
        s.iter()
            .any(|r| r.starts_with("  [2/3] ") && r.chars().count() < 60 && r.ends_with('s'))
    });
    let title = screen
        .iter()
        .find(|r| r.starts_with("  [2/3] ") && r.ends_with('s'))
        .unwrap();
    assert!(title.contains('…') && title.contains("end"), "{title}");

    let status = run.wait(Duration::from_secs(120));
    assert!(status.success(), "{status}");
    let screen = run.screen();
    let text = screen.join("\n");
    // Finished steps collapse to one line each; no output tail is left.
    assert!(tail_rows(&screen).is_empty(), "{text}");
    assert!(
        // At 60 columns: the command and then the reason give way.
        screen.iter().any(|r| r.starts_with("ran [2/3] with_e")
            && r.contains("end' (")
            && r.contains("[not in the cache")
            && r.chars().count() < 60),
        "{text}"
    );
    assert!(screen.iter().any(|r| r.starts_with("ran [3/3] ")), "{text}");
    assert!(
        screen.iter().any(|r| r.starts_with("built 3 steps in ")),
        "{text}"
    );
    // Colours on a terminal when NO_COLOR is unset (green for a step that ran).
    let raw = String::from_utf8_lossy(&run.raw()).into_owned();
    assert!(raw.contains("\x1b[32mran\x1b[0m"), "no colour");
}

#[test]
fn a_failure_and_ctrl_c_leave_a_clean_screen() {
    let registry = TestRegistry::start();
    let base = BaseImage::push(&registry);
    let (src, cache) = (tempdir("blumeops-src-"), isolated_cache());
    ticker(src.path(), "fails", &base.reference, 3, 7);
    ticker(src.path(), "slow", &base.reference, 400, 0);
    let (src_arg, cache_arg) = (path(src.path()), path(cache.path()));
    let out = tempdir("blumeops-out-");
    let output = format!("oci:{}", out.path().join("layout").display());
    let args = |name: &'static str| {
        vec![
            "build".to_owned(),
            "--container-name".to_owned(),
            name.to_owned(),
            "--src".to_owned(),
            src_arg.clone(),
            "--registry".to_owned(),
            registry.addr(),
            "--output".to_owned(),
            output.clone(),
        ]
    };
    let envs = [
        ("BLUMEOPS_CACHE_DIR", cache_arg.as_str()),
        ("NO_COLOR", "1"),
    ];

    // A failing step: the live lines are gone, the step's output is printed in full.
    let fails = args("fails");
    let fails: Vec<&str> = fails.iter().map(String::as_str).collect();
    let mut run = PtyRun::spawn(&fails, &envs, src.path(), 100, 30);
    let status = run.wait(Duration::from_secs(120));
    assert!(!status.success());
    let screen = run.screen();
    let text = screen.join("\n");
    assert!(tail_rows(&screen).is_empty(), "{text}");
    let failed = screen
        .iter()
        .position(|r| r.starts_with("failed [2/3] "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        screen[failed + 1..failed + 4],
        [
            "[2]  compiling unit 1",
            "[2]  compiling unit 2",
            "[2]  compiling unit 3"
        ],
        "{text}"
    );
    assert!(text.contains("exit"), "{text}");
    let raw = String::from_utf8_lossy(&run.raw()).into_owned();
    assert!(
        !raw.contains("\x1b[31m") && !raw.contains("\x1b[32m"),
        "NO_COLOR: no colour"
    );

    // Ctrl-C during a step: the view is cleared, the build says so and exits 130.
    let slow = args("slow");
    let slow: Vec<&str> = slow.iter().map(String::as_str).collect();
    let mut run = PtyRun::spawn(&slow, &envs, src.path(), 100, 30);
    run.wait_for(Duration::from_secs(120), "the step's output", |s| {
        tail_rows(s).len() >= 2
    });
    run.signal(rustix::process::Signal::INT);
    let status = run.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{status}");
    let screen = run.screen();
    let text = screen.join("\n");
    assert!(tail_rows(&screen).is_empty(), "{text}");
    assert!(screen.iter().any(|r| r == "interrupted"), "{text}");
}

/// The JSON lines of a real publish: the schema, the numbering of `plan`, the reasons of a
/// first build, an inserted step and the step after it, the result, and never an escape
/// byte or the password.
#[test]
fn json_progress_reports_real_builds() {
    let registry = TestRegistry::start();
    let base = BaseImage::push(&registry);
    let (src, cache) = (tempdir("blumeops-src-"), isolated_cache());
    ticker(src.path(), "jsonly", &base.reference, 2, 0);
    let (src_arg, cache_arg) = (path(src.path()), path(cache.path()));
    let publish = |sha: &str| {
        run_cli(
            &[
                "publish",
                "--container-name",
                "jsonly",
                "--src",
                &src_arg,
                "--commit-sha",
                sha,
                "--registry",
                &registry.addr(),
                "--registry-username",
                CI_USER,
                "--registry-password",
                "env:ZOT_CI_API_KEY",
                "--progress",
                "json",
            ],
            &[
                ("ZOT_CI_API_KEY", registry.ci_password()),
                ("BLUMEOPS_CACHE_DIR", &cache_arg),
            ],
        )
    };
    let events = |out: &blumeops_e2e::CliOutput| -> Vec<serde_json::Value> {
        out.assert_no_secret(registry.ci_password());
        assert!(!out.stderr.contains('\x1b'), "{out}");
        out.stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let first = publish("aaaaaaa");
    first.assert_success();
    let ev = events(&first);
    assert!(ev.iter().all(|e| e["v"] == 1 && e["t"].is_f64()), "{first}");
    let kinds: Vec<&str> = ev.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for kind in [
        "step-started",
        "step-output",
        "step-finished",
        "pulled",
        "push-started",
        "push-finished",
    ] {
        assert!(kinds.contains(&kind), "no {kind}: {first}");
    }
    assert_eq!(kinds.last(), Some(&"result"), "{first}");
    // One push-progress per blob, counting up to the total.
    let pushed: Vec<(u64, u64)> = ev
        .iter()
        .filter(|e| e["event"] == "push-progress")
        .map(|e| (e["done"].as_u64().unwrap(), e["total"].as_u64().unwrap()))
        .collect();
    let total = pushed.first().map_or(0, |p| p.1);
    assert!(total >= 3, "config and at least two layers: {first}");
    assert_eq!(
        pushed,
        (1..=total).map(|n| (n, total)).collect::<Vec<_>>(),
        "{first}"
    );
    let started: Vec<(u64, &str)> = ev
        .iter()
        .filter(|e| e["event"] == "step-started")
        .map(|e| {
            (
                e["step"].as_u64().unwrap(),
                e["stage_name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(started.len(), 3, "{first}");
    assert!(
        started.iter().all(|(_, s)| s.starts_with("stage 1 (from ")),
        "{first}"
    );
    let output: Vec<&str> = ev
        .iter()
        .filter(|e| e["event"] == "step-output")
        .map(|e| e["line"].as_str().unwrap())
        .collect();
    assert_eq!(output, ["compiling unit 1", "compiling unit 2"], "{first}");
    let reasons = |ev: &[serde_json::Value]| -> Vec<(u64, String)> {
        ev.iter()
            .filter(|e| e["event"] == "step-finished" && e["cache"] == "ran")
            .map(|e| {
                (
                    e["step"].as_u64().unwrap(),
                    e["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let first_build = "not in the cache (first build of this step)".to_owned();
    assert_eq!(
        reasons(&ev),
        [(2, first_build.clone()), (3, first_build)],
        "{first}"
    );
    let result = ev.last().unwrap();
    assert_eq!(result["ok"], true);
    assert_eq!(result["steps"], 3);
    assert_eq!(result["ran"], 2);
    let digest = result["digest"].as_str().unwrap();
    assert!(
        first.last_line().ends_with(&format!("@{digest}")),
        "{first}"
    );

    // A step inserted before the last one: it is new, and the step after it reruns because
    // an earlier step's result changed.
    let path = src.path().join("containers/jsonly/Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "RUN echo done",
            "RUN echo inserted > /inserted\nRUN echo done",
        ),
    )
    .unwrap();
    let second = publish("bbbbbbb");
    second.assert_success();
    let ev = events(&second);
    assert_eq!(
        reasons(&ev),
        [
            (3, "new step".to_owned()),
            (4, "an earlier step's result changed".to_owned())
        ],
        "{second}"
    );
    let result = ev.last().unwrap();
    assert_eq!(
        (result["ran"].as_u64(), result["cached"].as_u64()),
        (Some(2), Some(1)),
        "{second}"
    );
}
