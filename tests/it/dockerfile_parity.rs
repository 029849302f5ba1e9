//! The Dockerfile frontend against buildah: each fixture under `tests/fixtures/parity/` is
//! built by `blumeops build` and by `buildah bud` from the same busybox base (pulled from a
//! test registry by both), both images are unpacked with umoci, and the root filesystems and
//! configs must match (see `blumeops_e2e::parity` for what is compared and the short
//! allow-list of buildah artifacts). Plus a failing RUN step and what blumeops reports.
//!
//! Needs root, buildah, umoci, skopeo and the binary (`cargo build -p blumeops-cli`).

use std::collections::BTreeSet;
use std::os::unix::fs::{PermissionsExt as _, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use blumeops_e2e::parity::{Buildah, Comparison, Tree, diff_configs, diff_trees, layout_config};
use blumeops_e2e::tools::umoci_unpack;
use blumeops_e2e::{
    BaseImage, CliOutput, PushedImage, TestRegistry, isolated_cache, run_cli, tempdir,
    workspace_root,
};

const VERSION: &str = "v1";
const SHA: &str = "abc1234";
const TAG: &str = "v1-abc1234";
const BUILDAH_TAG: &str = "localhost/parity:x";
const BUILDAH_LAYOUT_TAG: &str = "x";

/// A registry holding the busybox base at `library/busybox:1.37`.
struct Base {
    registry: TestRegistry,
    image: PushedImage,
}

impl Base {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let image = BaseImage::push(&registry);
        Self { registry, image }
    }

    fn build_arg(&self) -> String {
        format!("BASE_IMAGE={}", self.image.reference)
    }
}

fn fixture_dir(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/parity").join(name)
}

/// Copy a fixture into `dest` with normalized modes (directories 0755, files 0644, or 0755
/// when executable in the checkout) so the umask and the checkout do not leak into images.
fn copy_fixture(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("create context directory");
    set_mode(dest, 0o755);
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .unwrap_or_else(|e| panic!("failed to list {}: {e}", src.display()))
        .map(|e| e.expect("directory entry"))
        .collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from).expect("stat fixture file");
        if meta.is_dir() {
            copy_fixture(&from, &to);
        } else {
            std::fs::copy(&from, &to)
                .unwrap_or_else(|e| panic!("failed to copy {}: {e}", from.display()));
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            set_mode(&to, mode);
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("failed to chmod {}: {e}", path.display()));
}

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent directory");
    }
    std::fs::write(path, content)
        .unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
}

fn run_tool(program: &str, args: &[&str], cwd: &Path) {
    let output = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A source checkout `DIR/src` with the fixture at `containers/NAME/`; `setup` adds what git
/// cannot hold (modes, owners, links, archives) to the context, given a scratch directory.
struct Source {
    dir: tempfile::TempDir,
    name: &'static str,
}

impl Source {
    fn new(name: &'static str, setup: impl FnOnce(&Path, &Path)) -> Self {
        let dir = tempdir("blumeops-parity-");
        let source = Self { dir, name };
        copy_fixture(&fixture_dir(name), &source.context());
        let scratch = source.dir.path().join("scratch");
        std::fs::create_dir_all(&scratch).expect("create scratch directory");
        setup(&source.context(), &scratch);
        source
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    fn context(&self) -> PathBuf {
        self.src().join("containers").join(self.name)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `blumeops build` into `DIR/blumeops-oci` with the build args; also returns the cache
    /// directory (keep it alive to read logs in it).
    fn blumeops_build(
        &self,
        base: &Base,
        build_args: &[String],
        extra: &[String],
    ) -> (CliOutput, PathBuf, tempfile::TempDir) {
        let cache = isolated_cache();
        let out = self.path("blumeops-oci");
        let output = format!("oci:{}", out.display());
        let src = self.src().display().to_string();
        let addr = base.registry.addr();
        let mut args: Vec<String> = [
            "build",
            "--src",
            &src,
            "--container-name",
            self.name,
            "--version",
            VERSION,
            "--commit-sha",
            SHA,
            "--registry",
            &addr,
            "--output",
            &output,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for arg in build_args {
            args.push("--build-arg".to_owned());
            args.push(arg.clone());
        }
        args.extend(extra.iter().cloned());
        let cache_dir = cache.path().display().to_string();
        let result = run_cli(
            &args,
            &[
                ("BLUMEOPS_CACHE_DIR", cache_dir.as_str()),
                ("SOURCE_DATE_EPOCH", "0"),
            ],
        );
        (result, out, cache)
    }
}

/// Build fixture `name` with both tools and compare. `extra_args` are `KEY=VALUE` build args
/// on top of `BASE_IMAGE`.
fn assert_parity(name: &'static str, extra_args: &[&str], setup: impl FnOnce(&Path, &Path)) {
    assert_parity_with(name, extra_args, &[], setup);
}

/// [`assert_parity`] with flags given to both tools (`--secret ...`).
fn assert_parity_with(
    name: &'static str,
    extra_args: &[&str],
    flags: &[String],
    setup: impl FnOnce(&Path, &Path),
) {
    let base = Base::new();
    let source = Source::new(name, setup);
    let mut build_args = vec![base.build_arg()];
    build_args.extend(extra_args.iter().map(|a| (*a).to_owned()));

    // buildah first: a failure here is a broken fixture, not a blumeops bug.
    let buildah = Buildah::new();
    let context = source.context();
    buildah.bud_with(
        &context,
        &context.join("Dockerfile"),
        &build_args,
        flags,
        BUILDAH_TAG,
    );
    let buildah_oci = source.path("buildah-oci");
    buildah.push_oci(BUILDAH_TAG, &buildah_oci, BUILDAH_LAYOUT_TAG);
    // The OCI conversion of buildah's push drops the healthcheck, ONBUILD triggers and the
    // author (MAINTAINER): they come back from its Docker-format config.
    let theirs_config = buildah.comparable_config(BUILDAH_TAG, &buildah_oci, BUILDAH_LAYOUT_TAG);
    drop(buildah);

    let (output, blumeops_oci, _cache) = source.blumeops_build(&base, &build_args, flags);
    output.assert_success();

    let ours_bundle = source.path("bundle-blumeops");
    let theirs_bundle = source.path("bundle-buildah");
    umoci_unpack(&format!("{}:{TAG}", blumeops_oci.display()), &ours_bundle);
    umoci_unpack(
        &format!("{}:{BUILDAH_LAYOUT_TAG}", buildah_oci.display()),
        &theirs_bundle,
    );
    let ours = Tree::snapshot(&ours_bundle.join("rootfs"));
    let theirs = Tree::snapshot(&theirs_bundle.join("rootfs"));

    let mut comparison = Comparison::default();
    comparison.extend(diff_trees(&ours, &theirs));
    comparison.extend(diff_configs(
        &layout_config(&blumeops_oci, TAG),
        &theirs_config,
    ));
    for note in &comparison.notes {
        eprintln!("{name}: note: {note}");
    }
    assert!(
        comparison.diffs.is_empty(),
        "fixture {name}: blumeops and buildah differ in {} ways:\n  {}\n(notes: {})",
        comparison.diffs.len(),
        comparison.diffs.join("\n  "),
        if comparison.notes.is_empty() {
            "none".to_owned()
        } else {
            comparison.notes.join("; ")
        },
    );
}

/// RUN --mount=type=secret|bind|tmpfs|cache, the secret given as buildx gives it
/// (`--secret id=tok,src=PATH`, read as it is): the same files, and no mount in a layer.
#[test]
fn parity_run_mounts() {
    let secret = tempdir("blumeops-secret-");
    let file = secret.path().join("tok");
    std::fs::write(&file, "zak_parity_secret_value\n").expect("write secret");
    let flag = vec![
        "--secret".to_owned(),
        format!("id=tok,src={}", file.display()),
    ];
    assert_parity_with("mounts", &[], &flag, |_, _| {});
}

/// ARG before FROM, ARG defaults and --build-arg, `$VAR`/`${VAR}`/`${VAR:-x}`/`${VAR:+x}`,
/// RUN shell and exec forms, SHELL, ENV, WORKDIR, LABEL, EXPOSE, VOLUME, STOPSIGNAL,
/// HEALTHCHECK, ENTRYPOINT and CMD.
#[test]
fn parity_basics() {
    assert_parity("basics", &["WHO=parity", "FROM_CLI=from-cli"], |_, _| {});
}

/// COPY: --chown by name (from the image's /etc/passwd and /etc/group) and by id, --chmod,
/// globs, directories with and without a trailing slash, .dockerignore (with an exception),
/// odd names, long paths, symlinks, hardlinks and non-root owners in the context.
#[test]
fn parity_copy() {
    assert_parity("copy", &[], |ctx, _| {
        set_mode(&ctx.join("dir/sub"), 0o750);
        set_mode(&ctx.join("dir/data.txt"), 0o600);
        // Owned by someone else on the host: COPY without --chown gives 0:0.
        chown(ctx.join("dir/data.txt"), Some(4321), Some(4321)).expect("chown context file");
        symlink("data.txt", ctx.join("dir/link-to-data")).expect("symlink");
        symlink("/nonexistent", ctx.join("dir/dangling")).expect("symlink");
        std::fs::hard_link(ctx.join("dir/run.sh"), ctx.join("dir/run-hardlink.sh"))
            .expect("hardlink");
        let long = ctx
            .join("dir")
            .join("l".repeat(60))
            .join("m".repeat(60))
            .join("file-beyond-the-100-byte-tar-name-limit.txt");
        write(&long, "long\n");
    });
}

/// ADD: a local file, local tar and tar.gz archives (extracted, keeping owners, modes,
/// symlinks and hardlinks), a `.tar` that is not an archive, extraction over a directory.
#[test]
fn parity_add() {
    assert_parity("add", &[], |ctx, scratch| {
        let tree = scratch.join("tree");
        write(&tree.join("top.txt"), "top\n");
        write(&tree.join("bin/tool"), "#!/bin/sh\necho tool\n");
        set_mode(&tree.join("bin/tool"), 0o755);
        write(&tree.join("bin/suid"), "suid\n");
        set_mode(&tree.join("bin/suid"), 0o4755);
        write(&tree.join("private/secret"), "secret\n");
        set_mode(&tree.join("private/secret"), 0o600);
        set_mode(&tree.join("private"), 0o700);
        write(&tree.join("owned/by-1234"), "owned\n");
        chown(tree.join("owned"), Some(1234), Some(5678)).expect("chown");
        chown(tree.join("owned/by-1234"), Some(1234), Some(5678)).expect("chown");
        symlink("top.txt", tree.join("rel-link")).expect("symlink");
        symlink("/etc/passwd", tree.join("abs-link")).expect("symlink");
        std::fs::hard_link(tree.join("top.txt"), tree.join("bin/top-hardlink")).expect("hardlink");
        let tree_arg = tree.display().to_string();
        let tar = ctx.join("archive.tar").display().to_string();
        let tgz = ctx.join("archive.tar.gz").display().to_string();
        let common = ["--numeric-owner", "--sort=name", "--mtime=@0", "-C"];
        for (flag, out) in [("-cf", &tar), ("-czf", &tgz)] {
            let mut args = vec![flag, out.as_str()];
            args.extend(common);
            args.extend([tree_arg.as_str(), "."]);
            run_tool("tar", &args, scratch);
        }
    });
}

/// What buildah 1.28 has of the COPY/ADD options and instructions: the directories a copy
/// creates get its --chown owner (every missing parent, also for --from), existing ones keep
/// their mode and owner; MAINTAINER, ONBUILD, and `# syntax=`/`# check=` accepted.
/// (`--exclude`, `--parents`, `--link` and `--checksum` are BuildKit's: buildah 1.28 refuses
/// them, so unit tests cover them.)
#[test]
fn parity_copy_options() {
    assert_parity("copyopts", &[], |_, _| {});
}

/// RUN-made filesystem changes: deletions of base and earlier files, opaque directories,
/// type changes, symlinks (absolute, relative, dangling), hardlinks, setuid/setgid/sticky,
/// odd and long names, chown, and USER for later RUNs.
#[test]
fn parity_fs() {
    assert_parity("fs", &[], |_, _| {});
}

/// Multi-stage: `AS` names, `COPY --from=NAME` and `--from=0`, a `scratch` stage in the
/// middle, an unused stage, and an ARG declared before the first FROM.
#[test]
fn parity_multistage() {
    assert_parity("multistage", &["VARIANT=cli-variant"], |_, _| {});
}

/// A final stage `FROM scratch` holding only copied files.
#[test]
fn parity_scratch() {
    assert_parity("scratch", &[], |_, _| {});
}

/// The `stdout line NNNN` / `stderr line NNNN` lines printed by the failing fixture, in the
/// order they appear in `text`, as (stream, number).
fn numbered_lines(text: &str) -> Vec<(&'static str, u32)> {
    let mut out = Vec::new();
    for line in text.lines() {
        for stream in ["stdout", "stderr"] {
            let prefix = format!("{stream} line ");
            if let Some(at) = line.find(&prefix) {
                let digits: String = line[at + prefix.len()..].chars().take(4).collect();
                if let Ok(n) = digits.parse() {
                    out.push((stream, n));
                }
            }
        }
    }
    out
}

/// Whether `text` says the exit code was `code`: the first number after some "exit" is it.
fn mentions_exit_code(text: &str, code: u32) -> bool {
    let lower = text.to_lowercase();
    let code = code.to_string();
    lower.match_indices("exit").any(|(at, _)| {
        let window: String = lower[at..].chars().take(40).collect();
        window
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .is_some_and(|w| w == code)
    })
}

/// Absolute paths mentioned in `text` that are existing files.
fn existing_files_in(text: &str) -> Vec<PathBuf> {
    text.split(|c: char| c.is_whitespace() || "`'\"()[]<>,;".contains(c))
        .filter_map(|word| {
            let word = word.trim_end_matches([':', '.']);
            word.starts_with('/').then(|| PathBuf::from(word))
        })
        .filter(|p| p.is_file())
        .collect()
}

/// The error report at the end of stderr: from the last line starting with "error" on.
/// (Before it, the progress output streams every line of the step, which must not count as
/// the report's tail.)
fn error_report(stderr: &str) -> Option<&str> {
    let mut offset = 0;
    let mut start = None;
    for line in stderr.split_inclusive('\n') {
        if line.to_lowercase().starts_with("error") {
            start = Some(offset);
        }
        offset += line.len();
    }
    start.map(|at| &stderr[at..])
}

/// A RUN that prints 500 numbered lines on stdout and on stderr, then exits 3: blumeops
/// fails, names the step and the command, gives the exit code, a long tail of the output
/// inline, and the path of a log with every line.
#[test]
fn failing_run_step_reports_the_step_the_code_a_tail_and_the_full_log() {
    let base = Base::new();
    let source = Source::new("failing", |_, _| {});
    let dockerfile = std::fs::read_to_string(source.context().join("Dockerfile"))
        .expect("read the failing Dockerfile");
    let command = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("RUN i=1;").map(|rest| format!("i=1;{rest}")))
        .expect("the failing RUN line");
    let (output, _, _cache) = source.blumeops_build(&base, &[base.build_arg()], &[]);
    assert!(
        output.code().is_some_and(|c| c != 0),
        "expected a failure exit code\n{output}"
    );
    let report = error_report(&output.stderr)
        .unwrap_or_else(|| panic!("no error report (a line starting with `error`)\n{output}"));

    // The step: its number and its command text on one line.
    let step_line = report.lines().find(|l| {
        let lower = l.to_lowercase();
        lower.match_indices("step ").any(|(at, m)| {
            lower[at + m.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        }) && l.contains("while [ $i -le 500 ]")
    });
    assert!(
        step_line.is_some(),
        "the error report names no step by number with its command\n{output}"
    );
    // The full command.
    assert!(
        report.contains(&command),
        "the error report does not show the full command {command:?}\n{output}"
    );
    // The exit code.
    assert!(
        mentions_exit_code(report, 3),
        "the error report does not give exit code 3\n{output}"
    );

    // The full log: a path in the report, an existing file, with all 1000 lines.
    let log = existing_files_in(report)
        .into_iter()
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("stdout line 0001")))
        .unwrap_or_else(|| {
            panic!("the error report names no existing log file with the output\n{output}")
        });
    let text = std::fs::read_to_string(&log).expect("read the log");
    let logged = numbered_lines(&text);
    for stream in ["stdout", "stderr"] {
        let seen: BTreeSet<u32> = logged
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, n)| *n)
            .collect();
        let lost: Vec<u32> = (1..=500).filter(|n| !seen.contains(n)).collect();
        assert!(
            lost.is_empty(),
            "the log {} lacks {stream} lines {lost:?}",
            log.display()
        );
    }

    // A long tail inline: at least 90 lines, and exactly the end of the full log. When that
    // combined tail does not end with one of the streams, the report adds that stream's
    // last lines in a section of its own ("last N lines of stdout:").
    let (combined, per_stream) = match report
        .find(" lines of stdout:")
        .or_else(|| report.find(" lines of stderr:"))
    {
        Some(at) => report.split_at(report[..at].rfind('\n').unwrap_or(0)),
        None => (report, ""),
    };
    let tail = numbered_lines(combined);
    assert!(
        tail.len() >= 90,
        "the inline tail shows only {} output lines\n{output}",
        tail.len()
    );
    assert_eq!(
        tail.as_slice(),
        &logged[logged.len().saturating_sub(tail.len())..],
        "the inline tail is not the end of the log {}",
        log.display()
    );
    // The last lines of each stream. The two pipes are read separately, so the order in
    // which their lines arrive is up to the reader; whatever it is, the last thing the
    // command printed on stdout and on stderr must be in the tail.
    let shown: Vec<(&str, u32)> = tail
        .iter()
        .copied()
        .chain(numbered_lines(per_stream))
        .collect();
    let missing: Vec<String> = ["stdout", "stderr"]
        .iter()
        .flat_map(|stream| (491..=500).map(move |n| (*stream, n)))
        .filter(|line| !shown.contains(line))
        .map(|(stream, n)| format!("{stream} line {n:04}"))
        .collect();
    assert!(
        missing.is_empty(),
        "the inline tail misses the last lines of a stream: {missing:?}\n{report}"
    );
    eprintln!(
        "failing step reported as: {}\nlog: {}",
        step_line.unwrap_or_default(),
        log.display()
    );
}
