//! The Dockerfile conformance table: the cases in `tests/fixtures/conformance/*.toml` (the
//! README there describes them and how to add one). Each case is built by `blumeops build`
//! and its expectations are checked on the image (files, owners, modes, absent paths,
//! config fields) or on the error; a case marked `buildah = true` is also built by
//! `buildah bud` 1.28, whose image must meet the same expectations (or whose build must fail
//! too), and whose tree and config must match blumeops' as in `dockerfile_parity`.
//!
//! One registry with the busybox base, one HTTP server for `ADD URL`; the cases build a few
//! at a time, each with a cache of its own, and a failure names the case and the mismatch.
//! Needs root, buildah, umoci, skopeo and the binary (`cargo build -p blumeops-cli`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blumeops_e2e::parity::{
    BUILDAH_ONLY_LABELS, Buildah, Comparison, Tree, diff_configs, diff_trees, layout_config,
};
use blumeops_e2e::static_http::StaticHttp;
use blumeops_e2e::tools::umoci_unpack;
use blumeops_e2e::{
    BaseImage, CliOutput, PushedImage, TestRegistry, isolated_cache, run_cli, tempdir,
    workspace_root,
};
use serde::Deserialize;

/// What the test server serves at `/hello.txt`.
const SERVED: &str = "downloaded from the conformance server\n";
/// The tag `blumeops build --version v1 --commit-sha abc1234` writes.
const TAG: &str = "v1-abc1234";
const BUILDAH_LAYOUT_TAG: &str = "x";
const DEFAULT_JOBS: usize = 3;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    case: Vec<Case>,
}

/// One row of the table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    about: String,
    buildah: bool,
    #[serde(default)]
    buildah_why: Option<String>,
    dockerfile: String,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    context: BTreeMap<String, String>,
    #[serde(default)]
    context_modes: BTreeMap<String, String>,
    #[serde(default)]
    expect: Expect,
    /// The table file, for messages.
    #[serde(skip)]
    file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    entries: Vec<EntryExpect>,
    #[serde(default)]
    absent: Vec<String>,
    #[serde(default)]
    stderr: Vec<String>,
    #[serde(default)]
    config: ConfigExpect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryExpect {
    path: String,
    #[serde(default)]
    kind: Option<EntryKind>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EntryKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigExpect {
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    env_absent: Vec<String>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    exposed_ports: Option<Vec<String>>,
    #[serde(default)]
    volumes: Option<Vec<String>>,
    #[serde(default)]
    onbuild: Option<Vec<String>>,
}

impl ConfigExpect {
    fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.env_absent.is_empty()
            && self.cmd.is_none()
            && self.entrypoint.is_none()
            && self.workdir.is_none()
            && self.user.is_none()
            && self.stop_signal.is_none()
            && self.author.is_none()
            && self.labels.is_none()
            && self.exposed_ports.is_none()
            && self.volumes.is_none()
            && self.onbuild.is_none()
    }
}

fn cases_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/conformance")
}

/// Every case of every table file, in file then table order; panics naming the file when
/// one does not parse.
fn load_cases() -> Vec<Case> {
    let dir = cases_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("failed to list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
        let parsed: CaseFile = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a table of cases: {e}", path.display()));
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for mut case in parsed.case {
            case.file.clone_from(&file);
            cases.push(case);
        }
    }
    cases
}

/// What is wrong with the table itself (not with a build).
fn table_problems(cases: &[Case]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for case in cases {
        let at = format!("{} case {:?}", case.file, case.name);
        let mut bad = |what: String| problems.push(format!("{at}: {what}"));
        let valid_name = case.name.len() <= 60
            && case.name.starts_with(|c: char| c.is_ascii_lowercase())
            && case
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            bad("the name must be lowercase letters, digits and `-`".to_owned());
        }
        if !names.insert(case.name.clone()) {
            bad("the name is used twice".to_owned());
        }
        if case.about.trim().is_empty() {
            bad("`about` is empty".to_owned());
        }
        match (case.buildah, &case.buildah_why) {
            (false, None) => bad("buildah = false needs `buildah_why`".to_owned()),
            (true, Some(_)) => bad("buildah = true takes no `buildah_why`".to_owned()),
            _ => {}
        }
        let e = &case.expect;
        let checks_image = !e.files.is_empty()
            || !e.entries.is_empty()
            || !e.absent.is_empty()
            || !e.config.is_empty();
        match &e.error {
            Some(text) if text.trim().is_empty() => bad("`error` is empty".to_owned()),
            Some(_) if checks_image || !e.stderr.is_empty() => {
                bad("a case with `error` has no other expectation".to_owned());
            }
            None if !checks_image => bad("the case expects nothing of the image".to_owned()),
            _ => {}
        }
        for entry in &e.entries {
            if let Some(mode) = &entry.mode
                && u32::from_str_radix(mode, 8).is_err()
            {
                bad(format!("{}: mode {mode:?} is not octal", entry.path));
            }
            if let Some(owner) = &entry.owner
                && parse_owner(owner).is_none()
            {
                bad(format!("{}: owner {owner:?} is not uid:gid", entry.path));
            }
            if entry.target.is_some() && entry.kind.is_some_and(|k| k != EntryKind::Symlink) {
                bad(format!("{}: only a symlink has a target", entry.path));
            }
        }
        let paths = e
            .files
            .keys()
            .chain(e.absent.iter())
            .chain(e.entries.iter().map(|x| &x.path));
        for path in paths {
            if !path.starts_with('/') || path.contains("..") {
                bad(format!("{path:?} is not an absolute path in the image"));
            }
        }
        for path in case.context.keys() {
            if path.starts_with('/') || path.contains("..") || path == "Dockerfile" {
                bad(format!(
                    "context file {path:?} must be a relative path other than Dockerfile"
                ));
            }
        }
        for (path, mode) in &case.context_modes {
            if !case
                .context
                .keys()
                .any(|f| f == path || f.starts_with(&format!("{path}/")))
            {
                bad(format!(
                    "context_modes names {path:?}, which is not in the context"
                ));
            }
            if u32::from_str_radix(mode, 8).is_err() {
                bad(format!("context_modes: {mode:?} is not octal"));
            }
        }
        for id in case.secrets.keys() {
            let ok = !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                bad(format!("secret id {id:?} is not a valid id"));
            }
        }
    }
    problems
}

fn parse_owner(owner: &str) -> Option<(u32, u32)> {
    let (uid, gid) = owner.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// The table files parse, and every case is well formed (a name, a reason when buildah is
/// left out, something to check): no build needed.
#[test]
fn conformance_table_is_well_formed() {
    let cases = load_cases();
    assert!(
        cases.len() >= 20,
        "only {} cases in {}",
        cases.len(),
        cases_dir().display()
    );
    let problems = table_problems(&cases);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What every case shares: the registry with the base, the HTTP server.
struct Shared {
    registry: TestRegistry,
    base: PushedImage,
    http: StaticHttp,
}

impl Shared {
    fn start() -> Self {
        let registry = TestRegistry::start();
        let base = BaseImage::push(&registry);
        let http = StaticHttp::start(BTreeMap::from([(
            "/hello.txt".to_owned(),
            SERVED.as_bytes().to_vec(),
        )]));
        Self {
            registry,
            base,
            http,
        }
    }

    fn build_args(&self, case: &Case) -> Vec<String> {
        let mut args = vec![
            format!("BASE={}", self.base.reference),
            format!("HTTP={}", self.http.url()),
        ];
        args.extend(case.build_args.iter().map(|(k, v)| format!("{k}={v}")));
        args
    }
}

/// A case's checkout (`src/containers/NAME/`), its secrets and its outputs.
struct Workspace {
    dir: tempfile::TempDir,
    name: String,
}

impl Workspace {
    fn new(case: &Case) -> Self {
        let ws = Self {
            dir: tempdir("blumeops-conformance-"),
            name: case.name.clone(),
        };
        let context = ws.context();
        write_file(&context.join("Dockerfile"), case.dockerfile.as_bytes());
        for (path, content) in &case.context {
            write_file(&context.join(path), content.as_bytes());
        }
        for (path, mode) in &case.context_modes {
            let mode = u32::from_str_radix(mode, 8).unwrap_or(0o755);
            let path = context.join(path);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("failed to chmod {}: {e}", path.display()));
        }
        for (id, value) in &case.secrets {
            write_file(&ws.path("secrets").join(id), value.as_bytes());
        }
        ws
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn src(&self) -> PathBuf {
        self.path("src")
    }

    fn context(&self) -> PathBuf {
        self.src().join("containers").join(&self.name)
    }

    /// `--secret id=ID,src=FILE` for each secret (the same for both tools).
    fn secret_flags(&self, case: &Case) -> Vec<String> {
        case.secrets
            .keys()
            .flat_map(|id| {
                let file = self.path("secrets").join(id);
                [
                    "--secret".to_owned(),
                    format!("id={id},src={}", file.display()),
                ]
            })
            .collect()
    }
}

/// Write a file (0644) and its missing parents (0755), whatever the umask.
fn write_file(path: &Path, content: &[u8]) {
    use std::os::unix::fs::DirBuilderExt as _;
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .unwrap_or_else(|e| panic!("failed to create {}: {e}", parent.display()));
    }
    std::fs::write(path, content)
        .unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("failed to chmod {}: {e}", path.display()));
}

/// An unpacked image and its config.
struct Image {
    rootfs: PathBuf,
    config: serde_json::Value,
}

/// How one tool did on one case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed(Duration),
    Failed(Duration),
    Skipped,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Passed(d) => write!(f, "ok ({:.1}s)", d.as_secs_f64()),
            Self::Failed(d) => write!(f, "FAILED ({:.1}s)", d.as_secs_f64()),
            Self::Skipped => write!(f, "-"),
        }
    }
}

struct Report {
    name: String,
    file: String,
    blumeops: Outcome,
    buildah: Outcome,
    problems: Vec<String>,
}

/// Build and check one case with blumeops and, when marked, with buildah (in `buildah`'s
/// store).
fn run_case(shared: &Shared, case: &Case, buildah: &mut Option<Buildah>) -> Report {
    let ws = Workspace::new(case);
    let args = shared.build_args(case);
    let flags = ws.secret_flags(case);
    let mut problems = Vec::new();

    let started = Instant::now();
    let (output, layout) = blumeops_build(shared, &ws, &args, &flags);
    let mut blumeops_problems = check_build(case, output.status.success(), &output.stderr);
    for wanted in &case.expect.stderr {
        if !output.stderr.contains(wanted.as_str()) {
            blumeops_problems.push(format!("stderr lacks {wanted:?}"));
        }
    }
    for (id, value) in &case.secrets {
        if output.combined().contains(value.as_str()) {
            blumeops_problems.push(format!("the value of secret {id} is in the output"));
        }
    }
    let ours = match (&case.expect.error, output.status.success()) {
        (None, true) => {
            let image = unpack_blumeops(&ws, &layout);
            blumeops_problems.extend(check_image(case, &image));
            Some(image)
        }
        _ => None,
    };
    if !blumeops_problems.is_empty() {
        blumeops_problems.push(format!(
            "blumeops' output:\n{}",
            indent(&output.to_string())
        ));
    }
    let blumeops = if blumeops_problems.is_empty() {
        Outcome::Passed(started.elapsed())
    } else {
        Outcome::Failed(started.elapsed())
    };
    problems.extend(
        blumeops_problems
            .into_iter()
            .map(|p| format!("blumeops: {p}")),
    );

    let buildah_outcome = if case.buildah {
        let started = Instant::now();
        let store = buildah.get_or_insert_with(Buildah::new);
        let theirs = buildah_problems(store, case, &ws, &args, &flags, ours.as_ref());
        let failed = !theirs.is_empty();
        problems.extend(theirs.into_iter().map(|p| format!("buildah: {p}")));
        if failed {
            Outcome::Failed(started.elapsed())
        } else {
            Outcome::Passed(started.elapsed())
        }
    } else {
        Outcome::Skipped
    };
    Report {
        name: case.name.clone(),
        file: case.file.clone(),
        blumeops,
        buildah: buildah_outcome,
        problems,
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the build's success (and, for an expected error, its message) is as expected.
fn check_build(case: &Case, success: bool, stderr: &str) -> Vec<String> {
    match (&case.expect.error, success) {
        (None, true) => Vec::new(),
        (None, false) => vec!["the build failed".to_owned()],
        (Some(text), true) => vec![format!(
            "the build succeeded; expected an error with {text:?}"
        )],
        (Some(text), false) if stderr.contains(text.as_str()) => Vec::new(),
        (Some(text), false) => vec![format!("the error does not say {text:?}")],
    }
}

fn blumeops_build(
    shared: &Shared,
    ws: &Workspace,
    build_args: &[String],
    flags: &[String],
) -> (CliOutput, PathBuf) {
    let cache = isolated_cache();
    let out = ws.path("blumeops-oci");
    let mut args: Vec<String> = [
        "build",
        "--src",
        &ws.src().display().to_string(),
        "--container-name",
        &ws.name,
        "--version",
        "v1",
        "--commit-sha",
        "abc1234",
        "--registry",
        &shared.registry.addr(),
        "--progress",
        "plain",
        "--output",
        &format!("oci:{}", out.display()),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for arg in build_args {
        args.extend(["--build-arg".to_owned(), arg.clone()]);
    }
    args.extend(flags.iter().cloned());
    let cache_dir = cache.path().display().to_string();
    let output = run_cli(
        &args,
        &[
            ("BLUMEOPS_CACHE_DIR", cache_dir.as_str()),
            ("SOURCE_DATE_EPOCH", "0"),
        ],
    );
    (output, out)
}

fn unpack_blumeops(ws: &Workspace, layout: &Path) -> Image {
    let bundle = ws.path("bundle-blumeops");
    umoci_unpack(&format!("{}:{TAG}", layout.display()), &bundle);
    Image {
        rootfs: bundle.join("rootfs"),
        config: layout_config(layout, TAG),
    }
}

/// buildah's build of the case: the expected error, or an image meeting the expectations
/// and matching blumeops' (`ours`, when blumeops built one).
fn buildah_problems(
    buildah: &Buildah,
    case: &Case,
    ws: &Workspace,
    build_args: &[String],
    flags: &[String],
    ours: Option<&Image>,
) -> Vec<String> {
    let tag = format!("localhost/conformance-{}:x", case.name);
    let context = ws.context();
    let output = buildah.bud_output(
        &context,
        &context.join("Dockerfile"),
        build_args,
        flags,
        &tag,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    if case.expect.error.is_some() {
        // Its own words: only the failure itself must agree.
        return if output.status.success() {
            vec!["the build succeeded; blumeops and BuildKit refuse it".to_owned()]
        } else {
            Vec::new()
        };
    }
    if !output.status.success() {
        return vec![format!(
            "the build failed with {}:\n{}",
            output.status,
            indent(&stderr)
        )];
    }
    let layout = ws.path("buildah-oci");
    buildah.push_oci(&tag, &layout, BUILDAH_LAYOUT_TAG);
    let config = buildah.comparable_config(&tag, &layout, BUILDAH_LAYOUT_TAG);
    let bundle = ws.path("bundle-buildah");
    umoci_unpack(
        &format!("{}:{BUILDAH_LAYOUT_TAG}", layout.display()),
        &bundle,
    );
    let theirs = Image {
        rootfs: bundle.join("rootfs"),
        config,
    };
    let mut problems = check_image(case, &theirs);
    if let Some(ours) = ours {
        let mut parity = Comparison::default();
        parity.extend(diff_trees(
            &Tree::snapshot(&ours.rootfs),
            &Tree::snapshot(&theirs.rootfs),
        ));
        parity.extend(diff_configs(&ours.config, &theirs.config));
        problems.extend(parity.diffs.into_iter().map(|d| format!("parity: {d}")));
    }
    let _ = buildah.command().args(["rmi", "--force", &tag]).output();
    problems
}

/// The expectations of `case` against `image`, as a list of mismatches; also, no secret
/// value anywhere in the image.
fn check_image(case: &Case, image: &Image) -> Vec<String> {
    let e = &case.expect;
    let mut out = Vec::new();
    for (path, want) in &e.files {
        out.extend(check_entry(
            &image.rootfs,
            &EntryExpect {
                path: path.clone(),
                kind: Some(EntryKind::File),
                mode: None,
                owner: None,
                target: None,
                content: Some(want.clone()),
            },
        ));
    }
    for entry in &e.entries {
        out.extend(check_entry(&image.rootfs, entry));
    }
    for path in &e.absent {
        if let Ok(meta) = std::fs::symlink_metadata(in_rootfs(&image.rootfs, path)) {
            out.push(format!(
                "{path} exists ({}), expected absent",
                kind_name(&meta.file_type())
            ));
        }
    }
    out.extend(check_config(&e.config, &image.config));
    for (id, value) in &case.secrets {
        for file in files_containing(&image.rootfs, value.as_bytes()) {
            out.push(format!(
                "the value of secret {id} is in the image at /{file}"
            ));
        }
    }
    out
}

fn in_rootfs(rootfs: &Path, path: &str) -> PathBuf {
    rootfs.join(path.trim_start_matches('/'))
}

fn kind_name(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_file() {
        "a file"
    } else {
        "a special file"
    }
}

fn check_entry(rootfs: &Path, want: &EntryExpect) -> Vec<String> {
    let path = &want.path;
    let host = in_rootfs(rootfs, path);
    let meta = match std::fs::symlink_metadata(&host) {
        Ok(m) => m,
        Err(_) => return vec![format!("{path} is missing")],
    };
    let ft = meta.file_type();
    let mut out = Vec::new();
    if let Some(kind) = want.kind {
        let ok = match kind {
            EntryKind::File => ft.is_file(),
            EntryKind::Dir => ft.is_dir(),
            EntryKind::Symlink => ft.is_symlink(),
        };
        if !ok {
            out.push(format!("{path} is {}, expected {kind:?}", kind_name(&ft)));
            return out;
        }
    }
    if let Some(mode) = &want.mode {
        let want_mode = u32::from_str_radix(mode, 8).unwrap_or(u32::MAX);
        let got = meta.mode() & 0o7777;
        if got != want_mode {
            out.push(format!("{path}: mode {got:04o}, expected {want_mode:04o}"));
        }
    }
    if let Some(owner) = &want.owner {
        let got = format!("{}:{}", meta.uid(), meta.gid());
        if &got != owner {
            out.push(format!("{path}: owner {got}, expected {owner}"));
        }
    }
    if let Some(target) = &want.target {
        match std::fs::read_link(&host) {
            Ok(got) if got == Path::new(target) => {}
            Ok(got) => out.push(format!(
                "{path}: links to {}, expected {target}",
                got.display()
            )),
            Err(e) => out.push(format!("{path}: not a symlink ({e})")),
        }
    }
    if let Some(content) = &want.content {
        if !ft.is_file() {
            out.push(format!("{path} is {}, expected a file", kind_name(&ft)));
        } else {
            match std::fs::read(&host) {
                Ok(got) if got == content.as_bytes() => {}
                Ok(got) => out.push(format!(
                    "{path}: content {:?}, expected {content:?}",
                    String::from_utf8_lossy(&got)
                )),
                Err(e) => out.push(format!("{path}: unreadable ({e})")),
            }
        }
    }
    out
}

/// A JSON string array (`null` and absent are empty).
fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .collect()
}

/// The keys of a JSON object (`null` and absent are empty), sorted.
fn keys(value: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys().cloned())
        .collect();
    keys.sort();
    keys
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

fn check_config(want: &ConfigExpect, image: &serde_json::Value) -> Vec<String> {
    let config = &image["config"];
    let mut out = Vec::new();
    let env: BTreeMap<String, String> = strings(&config["Env"])
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv, String::new()),
        })
        .collect();
    for (name, value) in &want.env {
        match env.get(name) {
            Some(got) if got == value => {}
            Some(got) => out.push(format!("Env {name}={got:?}, expected {value:?}")),
            None => out.push(format!("Env has no {name}, expected {name}={value:?}")),
        }
    }
    for name in &want.env_absent {
        if let Some(got) = env.get(name) {
            out.push(format!("Env sets {name}={got:?}, expected it unset"));
        }
    }
    for (field, want) in [("Cmd", &want.cmd), ("Entrypoint", &want.entrypoint)] {
        if let Some(want) = want {
            let got = strings(&config[field]);
            if &got != want {
                out.push(format!("{field} {got:?}, expected {want:?}"));
            }
        }
    }
    for (field, want, got) in [
        ("WorkingDir", &want.workdir, &config["WorkingDir"]),
        ("User", &want.user, &config["User"]),
        ("StopSignal", &want.stop_signal, &config["StopSignal"]),
        ("author", &want.author, &image["author"]),
    ] {
        if let Some(want) = want
            && &text(got) != want
        {
            out.push(format!("{field} {:?}, expected {want:?}", text(got)));
        }
    }
    if let Some(want) = &want.labels {
        let got: BTreeMap<String, String> = config["Labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !BUILDAH_ONLY_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        if &got != want {
            out.push(format!("Labels {got:?}, expected {want:?}"));
        }
    }
    for (field, want) in [
        ("ExposedPorts", &want.exposed_ports),
        ("Volumes", &want.volumes),
    ] {
        if let Some(want) = want {
            let mut want = want.clone();
            want.sort();
            let got = keys(&config[field]);
            if got != want {
                out.push(format!("{field} {got:?}, expected {want:?}"));
            }
        }
    }
    if let Some(want) = &want.onbuild {
        let got = strings(&config["OnBuild"]);
        if &got != want {
            out.push(format!("OnBuild {got:?}, expected {want:?}"));
        }
    }
    out
}

/// Regular files under `root` (paths relative to it) whose content holds `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file()
                && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                found.push(rel.display().to_string());
            }
        }
    }
    found.sort();
    found
}

/// The cases `BLUMEOPS_CONFORMANCE_CASE` asks for (comma-separated parts of names), or all.
fn selected(cases: Vec<Case>) -> Vec<Case> {
    let Ok(filter) = std::env::var("BLUMEOPS_CONFORMANCE_CASE") else {
        return cases;
    };
    let words: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return cases;
    }
    let kept: Vec<Case> = cases
        .into_iter()
        .filter(|c| words.iter().any(|w| c.name.contains(w)))
        .collect();
    assert!(!kept.is_empty(), "no case name contains any of {words:?}");
    kept
}

fn jobs() -> usize {
    std::env::var("BLUMEOPS_CONFORMANCE_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_JOBS)
}

/// Every case of the table, against blumeops and (where marked) buildah; one report at the
/// end, each failure under its case's name.
#[test]
fn dockerfile_conformance_cases() {
    let cases = selected(load_cases());
    let problems = table_problems(&cases);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let started = Instant::now();
    let shared = Shared::start();
    let next = AtomicUsize::new(0);
    let reports: Mutex<Vec<Report>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs().min(cases.len()) {
            scope.spawn(|| {
                // One buildah store per worker: the base is pulled once per store.
                let mut buildah: Option<Buildah> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(case) = cases.get(i) else { break };
                    let report = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        run_case(&shared, case, &mut buildah)
                    }))
                    .unwrap_or_else(|panic| {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_default();
                        Report {
                            name: case.name.clone(),
                            file: case.file.clone(),
                            blumeops: Outcome::Skipped,
                            buildah: Outcome::Skipped,
                            problems: vec![format!("the test panicked: {why}")],
                        }
                    });
                    eprintln!(
                        "conformance: {:<48} blumeops {:<14} buildah {}",
                        report.name, report.blumeops, report.buildah
                    );
                    reports
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(report);
                }
            });
        }
    });
    let mut reports = reports
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let order: BTreeMap<&str, usize> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    reports.sort_by_key(|r| order.get(r.name.as_str()).copied());
    let with_buildah = reports
        .iter()
        .filter(|r| r.buildah != Outcome::Skipped)
        .count();
    eprintln!(
        "conformance: {} cases ({with_buildah} also with buildah) in {:.0}s",
        reports.len(),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| {
            format!(
                "case {} ({}):\n  {}",
                r.name,
                r.file,
                r.problems.join("\n  ")
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} conformance cases failed:\n\n{}",
        failed.len(),
        reports.len(),
        failed.join("\n\n")
    );
}
