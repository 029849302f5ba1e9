//! The rootless executor end to end: non-root users (one with a subordinate id range, one
//! without) build through the CLI, and the results are compared with root's builds of the
//! same inputs and checked with skopeo, tar and umoci.
//!
//! Needs root (to create the users and to build as root), `uidmap` (newuidmap/newgidmap)
//! and, for the Debian case, debootstrap and Debian's mirror.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use blumeops_e2e::tools::{chroot_run, umoci_unpack};
use blumeops_e2e::users::{RANGE, TestUser, can_create_users};
use blumeops_e2e::{
    BaseImage, CliOutput, DebianBase, PushedImage, TestRegistry, isolated_cache, run_cli_as,
    run_cli_with, tempdir, workspace_root,
};

/// Every sandbox feature whose bytes must not depend on the executor: files, deletions
/// (whiteouts), an opaque directory, hard links, setuid and sticky bits, a cache volume,
/// and owners other than root.
const SANDBOX_DOCKERFILE: &str = r#"ARG CONTAINER_APP_VERSION=1.0.0
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN mkdir -p /data/old && echo old > /data/old/f && echo keep > /data/keep && echo x > /gone
RUN rm /gone /bin/vi && rm -rf /data && mkdir /data && echo new > /data/new
RUN echo linked > /a && ln /a /b && echo s > /suid && chmod 4755 /suid && mkdir -m 1777 /sticky
RUN --mount=type=cache,target=/cache echo cached > /cache/v && cp /cache/v /from-cache
RUN chown 1001:1002 /a && mkdir -p /home/app && chown 1001:1001 /home/app && id -u > /uid
CMD ["cat", "/a"]
"#;

/// A Debian step that drops privileges (apt's `_apt`), adds a user and runs as it.
const DEBIAN_DOCKERFILE: &str = r#"ARG CONTAINER_APP_VERSION=1.0.0
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends jq \
    && rm -rf /var/lib/apt/lists/* /var/log/* /var/cache/apt/*.bin /var/cache/ldconfig/aux-cache
RUN useradd -m -u 1001 app && rm -rf /var/log/*
USER app
RUN echo '{"who":"app"}' | jq -r .who > /home/app/who && id -u >> /home/app/who
"#;

const EPOCH: &str = "1700000000";
const TIMEOUT: Duration = Duration::from_secs(900);

/// Skip (visibly) when this process cannot create users.
macro_rules! require_users {
    () => {
        if !can_create_users() {
            blumeops_core::testing::skip("needs root to create test users");
            return;
        }
    };
}

/// A `containers/app` checkout with `dockerfile`, owned by `owner` so any user can read it.
fn source(dockerfile: &str, owner: &TestUser) -> tempfile::TempDir {
    let src = owner.tempdir("blumeops-src-");
    let dir = src.path().join("containers/app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    owner.chown_tree(src.path());
    src
}

fn build_args(src: &Path, registry: &TestRegistry, base: &PushedImage, out: &str) -> Vec<String> {
    [
        "build",
        "--src",
        &src.display().to_string(),
        "--container-name",
        "app",
        "--commit-sha",
        "abc1234",
        "--registry",
        &registry.addr(),
        "--build-arg",
        &format!("BASE_IMAGE={}", base.reference),
        "--progress",
        "plain",
        "--output",
        out,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Build as root into `oci:DIR` with a fresh cache.
fn build_as_root(src: &Path, registry: &TestRegistry, base: &PushedImage, dir: &Path) -> CliOutput {
    let cache = isolated_cache();
    let cache_dir = cache.path().display().to_string();
    let out = format!("oci:{}", dir.display());
    run_cli_with(
        &build_args(src, registry, base, &out),
        &[
            ("BLUMEOPS_CACHE_DIR", &cache_dir),
            ("SOURCE_DATE_EPOCH", EPOCH),
        ],
        &workspace_root(),
        TIMEOUT,
    )
}

/// Build as `user` into `oci:DIR`, with its default cache under `XDG_CACHE_HOME=xdg`.
fn build_as(
    user: &TestUser,
    src: &Path,
    registry: &TestRegistry,
    base: &PushedImage,
    dir: &Path,
    xdg: &Path,
) -> CliOutput {
    build_as_with(user, src, registry, base, dir, xdg, &[])
}

/// [`build_as`] with more environment.
fn build_as_with(
    user: &TestUser,
    src: &Path,
    registry: &TestRegistry,
    base: &PushedImage,
    dir: &Path,
    xdg: &Path,
    env: &[(&str, &str)],
) -> CliOutput {
    let out = format!("oci:{}", dir.display());
    let xdg = xdg.display().to_string();
    let mut envs = vec![
        ("XDG_CACHE_HOME", xdg.as_str()),
        ("SOURCE_DATE_EPOCH", EPOCH),
    ];
    envs.extend_from_slice(env);
    run_cli_as(
        user,
        &build_args(src, registry, base, &out),
        &envs,
        Path::new("/"),
        TIMEOUT,
    )
}

fn digest(out: &CliOutput) -> String {
    out.last_line()
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("no REF@DIGEST line\n{out}"))
        .1
        .to_owned()
}

/// `(uid, gid, path)` of every entry of every layer of the single image in `oci_dir`,
/// read with GNU tar (not blumeops).
fn layer_owners(oci_dir: &Path) -> Vec<(u32, u32, String)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci_dir.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| oci_dir.join("blobs/sha256").join(&digest[7..]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let mut owners = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let path = blob(layer["digest"].as_str().unwrap());
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tvzf"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "tar -tvzf {} failed", path.display());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // drwxr-xr-x 1001/1001 0 2023-11-14 22:13 home/app/
            let mut f = line.split_whitespace();
            let (Some(_), Some(owner)) = (f.next(), f.next()) else {
                continue;
            };
            let (u, g) = owner.split_once('/').unwrap();
            // Size, date and time, then the name (and ` -> target` for links).
            let name = f.skip(3).collect::<Vec<_>>().join(" ");
            owners.push((u.parse().unwrap(), g.parse().unwrap(), name));
        }
    }
    owners
}

fn assert_no_host_ids(owners: &[(u32, u32, String)]) {
    let leaked: Vec<_> = owners
        .iter()
        .filter(|(u, g, _)| *u >= RANGE.0 || *g >= RANGE.0 || *u >= 65536 || *g >= 65536)
        .collect();
    assert!(
        leaked.is_empty(),
        "host subordinate ids in layers: {leaked:?}"
    );
}

/// A test registry with a base image, a checkout of a Dockerfile that `user` can read, and
/// root's build of it into `oci:root_out/img`.
struct RootBuild {
    registry: TestRegistry,
    base: PushedImage,
    src: tempfile::TempDir,
    root_out: tempfile::TempDir,
    root: CliOutput,
}

impl RootBuild {
    fn new(dockerfile: &str, user: &TestUser, base: fn(&TestRegistry) -> PushedImage) -> Self {
        let registry = TestRegistry::start();
        let base = base(&registry);
        let src = source(dockerfile, user);
        let root_out = tempdir("blumeops-root-out-");
        let root = build_as_root(src.path(), &registry, &base, &root_out.path().join("img"));
        root.assert_success();
        Self {
            registry,
            base,
            src,
            root_out,
            root,
        }
    }

    fn image(&self) -> PathBuf {
        self.root_out.path().join("img")
    }

    /// Build the same as `user` into `oci:dir`, with its cache under `XDG_CACHE_HOME=xdg`.
    fn build_as(&self, user: &TestUser, dir: &Path, xdg: &Path, env: &[(&str, &str)]) -> CliOutput {
        build_as_with(
            user,
            self.src.path(),
            &self.registry,
            &self.base,
            dir,
            xdg,
            env,
        )
    }
}

/// The image in the OCI layout `dir` (tag `v1.0.0-abc1234`), unpacked with umoci; the
/// rootfs is `bundle/b/rootfs`.
fn unpack(dir: &Path) -> tempfile::TempDir {
    let bundle = tempdir("blumeops-bundle-");
    umoci_unpack(
        &format!("{}:v1.0.0-abc1234", dir.display()),
        &bundle.path().join("b"),
    );
    bundle
}

#[test]
fn rootless_build_with_a_range_has_the_root_build_digest() {
    require_users!();
    let user = TestUser::with_range();
    let fx = RootBuild::new(SANDBOX_DOCKERFILE, user, BaseImage::push);
    let root = &fx.root;
    assert!(!root.stderr.contains("executor: rootless"), "{root}");

    let out = user.tempdir("blumeops-rl-out-");
    let xdg = user.tempdir("blumeops-rl-xdg-");
    // A temporary directory of its own, to see that the run leaves nothing there (the
    // overlay probe's work directory is mode 000 once mounted over).
    let tmp = user.tempdir("blumeops-rl-tmp-");
    let tmp_env = tmp.path().display().to_string();
    let rootless = fx.build_as(
        user,
        &out.path().join("img"),
        xdg.path(),
        &[("TMPDIR", tmp_env.as_str())],
    );
    rootless.assert_success();
    assert!(
        rootless
            .stderr
            .contains("executor: rootless (user namespace, blumeops-rl (uid"),
        "{rootless}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the build left {left:?} in TMPDIR");
    assert!(
        rootless.stderr.contains("65535 ids from /etc/subuid"),
        "{rootless}"
    );
    // The default cache: $XDG_CACHE_HOME/blumeops, owned by the user.
    let cache = xdg.path().join("blumeops");
    let meta = std::fs::metadata(&cache).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        user.uid,
        "{} is not the user's",
        cache.display()
    );
    assert_eq!(
        digest(&rootless),
        digest(root),
        "rootless and root images differ"
    );

    let owners = layer_owners(&out.path().join("img"));
    assert_no_host_ids(&owners);
    assert!(
        owners
            .iter()
            .any(|(u, g, n)| (*u, *g) == (1001, 1001) && n.trim_end_matches('/') == "home/app"),
        "/home/app is not 1001:1001 in the layers: {owners:?}"
    );
    assert!(
        owners
            .iter()
            .any(|(u, g, n)| (*u, *g) == (1001, 1002) && n == "a"),
        "/a is not 1001:1002: {owners:?}"
    );

    // A second build reuses the user's cache: every step cached.
    let again = fx.build_as(user, &out.path().join("img2"), xdg.path(), &[]);
    again.assert_success();
    assert_eq!(digest(&again), digest(root));
    assert!(
        !again.stderr.contains(" ran in "),
        "a step ran again\n{again}"
    );
    TestUser::remove_tree(xdg.path());
}

#[test]
fn rootless_without_a_range_runs_single_id_steps_and_says_how_to_add_one() {
    require_users!();
    let user = TestUser::without_range();
    let registry = TestRegistry::start();
    let base = BaseImage::push(&registry);
    let xdg = user.tempdir("blumeops-nr-xdg-");
    let out = user.tempdir("blumeops-nr-out-");

    let simple = source(
        "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n\
         RUN echo hi > /hi && rm /bin/vi && mkdir -p /opt/x && cp /etc/passwd /opt/x/\n",
        user,
    );
    let ok = build_as(
        user,
        simple.path(),
        &registry,
        &base,
        &out.path().join("ok"),
        xdg.path(),
    );
    ok.assert_success();
    assert!(ok.stderr.contains("single id mapping"), "{ok}");
    let root_out = tempdir("blumeops-root-out-");
    let root = build_as_root(
        simple.path(),
        &registry,
        &base,
        &root_out.path().join("img"),
    );
    root.assert_success();
    assert_eq!(
        digest(&ok),
        digest(&root),
        "single-mapping and root images differ"
    );

    let chown = source(
        "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n\
         RUN echo hi > /hi && chown 1000 /hi\n",
        user,
    );
    let failed = build_as(
        user,
        chown.path(),
        &registry,
        &base,
        &out.path().join("no"),
        xdg.path(),
    );
    failed.assert_code(1);
    for needle in [
        "single id mapping",
        "/etc/subuid",
        "/etc/subgid",
        "usermod --add-subuids",
        "--add-subgids",
        " blumeops-nr`",
        "chown 1000 /hi",
    ] {
        assert!(failed.stderr.contains(needle), "no `{needle}` in\n{failed}");
    }
    TestUser::remove_tree(xdg.path());
}

#[test]
fn doctor_reports_each_executor_with_its_reasons() {
    require_users!();
    let root = run_cli_with(&["doctor"], &[], &workspace_root(), TIMEOUT);
    root.assert_success();
    assert!(root.stdout.contains("executor: auto picks root"), "{root}");
    assert!(root.stdout.contains("\nroot: usable"), "{root}");

    let rl = TestUser::with_range();
    let out = run_cli_as(rl, &["doctor"], &[], Path::new("/"), TIMEOUT);
    out.assert_success();
    let (start, count) = RANGE;
    for needle in [
        "executor: auto picks rootless",
        "\nroot: unusable",
        "not root",
        "\nrootless: usable",
        &format!("/etc/subuid: {start}-{}", start + count - 1),
        "filesystem: overlayfs with userxattr",
        "blumeops-rl as 0, 65535 more ids",
    ] {
        assert!(out.stdout.contains(needle), "no `{needle}` in\n{out}");
    }
    let json = run_cli_as(rl, &["doctor", "--json"], &[], Path::new("/"), TIMEOUT);
    json.assert_success();
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(doc["auto"], "rootless", "{json}");
    assert_eq!(doc["candidates"][1]["name"], "rootless");
    assert_eq!(
        doc["candidates"][1]["problems"].as_array().unwrap().len(),
        0
    );
    assert!(
        !doc["candidates"][0]["problems"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let nr = TestUser::without_range();
    let out = run_cli_as(nr, &["doctor"], &[], Path::new("/"), TIMEOUT);
    out.assert_success();
    for needle in [
        "executor: auto picks rootless",
        "/etc/subuid: no range",
        "warning: only one id can be mapped",
        "usermod --add-subuids",
    ] {
        assert!(out.stdout.contains(needle), "no `{needle}` in\n{out}");
    }
}

#[test]
fn a_cache_of_another_user_is_refused_before_anything_is_written() {
    require_users!();
    let user = TestUser::with_range();
    let src = source(SANDBOX_DOCKERFILE, user);
    let registry = TestRegistry::start();
    let base = BaseImage::push(&registry);

    // Root's cache, used by the user.
    let root_cache = tempdir("blumeops-root-cache-");
    std::fs::set_permissions(
        root_cache.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out_dir = user.tempdir("blumeops-out-");
    let cache = root_cache.path().display().to_string();
    let out = format!("oci:{}", out_dir.path().join("img").display());
    let refused = run_cli_as(
        user,
        &build_args(src.path(), &registry, &base, &out),
        &[("BLUMEOPS_CACHE_DIR", &cache)],
        Path::new("/"),
        TIMEOUT,
    );
    refused.assert_code(2);
    assert!(
        refused.stderr.contains("belongs to another user"),
        "{refused}"
    );
    assert!(refused.stderr.contains("BLUMEOPS_CACHE_DIR"), "{refused}");
    assert_eq!(std::fs::read_dir(root_cache.path()).unwrap().count(), 0);

    // The user's cache, used by root.
    let user_cache = user.tempdir("blumeops-user-cache-");
    let cache = user_cache.path().display().to_string();
    let refused = run_cli_with(
        &build_args(src.path(), &registry, &base, &out),
        &[("BLUMEOPS_CACHE_DIR", &cache)],
        &workspace_root(),
        TIMEOUT,
    );
    refused.assert_code(2);
    assert!(
        refused.stderr.contains(&format!(
            "belongs to uid {}, but blumeops runs as uid 0",
            user.uid
        )),
        "{refused}"
    );
    assert_eq!(std::fs::read_dir(user_cache.path()).unwrap().count(), 0);
}

#[test]
fn rootless_apt_and_useradd_on_debian_match_the_root_build() {
    require_users!();
    if !Path::new("/usr/sbin/debootstrap").exists() {
        panic!("debootstrap is missing: scripts/install-deps.sh installs it");
    }
    let user = TestUser::with_range();
    let fx = RootBuild::new(DEBIAN_DOCKERFILE, user, DebianBase::push);
    let out = user.tempdir("blumeops-rl-out-");
    let xdg = user.tempdir("blumeops-rl-xdg-");
    let rootless = fx.build_as(user, &out.path().join("img"), xdg.path(), &[]);
    rootless.assert_success();
    assert_eq!(
        digest(&rootless),
        digest(&fx.root),
        "rootless and root images differ"
    );

    // The fallback without overlayfs in the user namespace gives the same files. (Its layers
    // may still differ in entries that change nothing, which the kernel's overlayfs adds as a
    // side effect of how a file was used: a file opened for writing and left as it was, an
    // opaque marker on a directory made where one was deleted.)
    let copy_xdg = user.tempdir("blumeops-rl-copy-xdg-");
    let copied = fx.build_as(
        user,
        &out.path().join("copy"),
        copy_xdg.path(),
        &[("BLUMEOPS_ROOTLESS_FS", "copy")],
    );
    copied.assert_success();
    let tree =
        |dir: &Path| blumeops_e2e::parity::Tree::snapshot(&unpack(dir).path().join("b/rootfs"));
    let (overlay_tree, copy_tree) = (tree(&fx.image()), tree(&out.path().join("copy")));
    assert!(
        overlay_tree.entries == copy_tree.entries && overlay_tree.hardlinks == copy_tree.hardlinks,
        "the copy fallback's files differ from the root build's: {:?}",
        blumeops_e2e::parity::diff_trees(&copy_tree, &overlay_tree).diffs
    );
    TestUser::remove_tree(copy_xdg.path());

    let owners = layer_owners(&out.path().join("img"));
    assert_no_host_ids(&owners);
    assert!(
        owners
            .iter()
            .any(|(u, _, n)| *u == 1001 && n.trim_end_matches('/') == "home/app"),
        "/home/app is not owned by 1001"
    );
    // The image runs jq, and the last step ran as app.
    let bundle = unpack(&out.path().join("img"));
    let rootfs = bundle.path().join("b/rootfs");
    let jq = chroot_run(&rootfs, &["jq", "--version"]);
    assert!(jq.status.success(), "jq does not run in the image");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("home/app/who")).unwrap(),
        "app\n1001\n"
    );

    // Without a range, apt's drop to _apt fails, with the advice.
    let nr = TestUser::without_range();
    let nr_src = source(DEBIAN_DOCKERFILE, nr);
    let nr_out = nr.tempdir("blumeops-nr-out-");
    let nr_xdg = nr.tempdir("blumeops-nr-xdg-");
    let failed = build_as(
        nr,
        nr_src.path(),
        &fx.registry,
        &fx.base,
        &nr_out.path().join("img"),
        nr_xdg.path(),
    );
    failed.assert_code(1);
    assert!(failed.stderr.contains("usermod --add-subuids"), "{failed}");
    assert!(failed.stderr.contains("/etc/subgid"), "{failed}");
    TestUser::remove_tree(xdg.path());
    TestUser::remove_tree(nr_xdg.path());
}

/// Steps run in a network namespace of their own: a service on the host's 127.0.0.1 (here a
/// TCP listener of this test; on a CI runner, a Docker-in-Docker daemon) is out of reach of
/// a default step, as root and rootless, and within reach of `RUN --network=host`.
#[test]
fn default_steps_cannot_reach_the_host_loopback() {
    require_users!();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            use std::io::Write as _;
            let _ = stream.write_all(b"hello\n");
        }
    });
    let user = TestUser::with_range();
    let fx = RootBuild::new(
        &format!(
            "ARG CONTAINER_APP_VERSION=1.0.0\nARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\n\
             RUN (nc -w 3 127.0.0.1 {port} </dev/null || echo unreachable) > /default\n\
             RUN --network=host (nc -w 3 127.0.0.1 {port} </dev/null || echo unreachable) > /host\n"
        ),
        user,
        BaseImage::push,
    );
    let read = |dir: &Path, file: &str| {
        std::fs::read_to_string(unpack(dir).path().join("b/rootfs").join(file)).unwrap()
    };
    let root = &fx.root;
    assert!(
        root.stderr
            .contains("uses the host's network, loopback included (--network=host)"),
        "{root}"
    );
    assert_eq!(read(&fx.image(), "default"), "unreachable\n", "{root}");
    assert_eq!(read(&fx.image(), "host"), "hello\n", "{root}");

    let out = user.tempdir("blumeops-rl-out-");
    let xdg = user.tempdir("blumeops-rl-xdg-");
    let rootless = fx.build_as(user, &out.path().join("img"), xdg.path(), &[]);
    rootless.assert_success();
    assert!(
        !rootless.stderr.contains("cannot get") && !rootless.stderr.contains("/dev/net/tun"),
        "the rootless build fell back to the host's network:\n{rootless}"
    );
    assert_eq!(
        read(&out.path().join("img"), "default"),
        "unreachable\n",
        "{rootless}"
    );
    assert_eq!(
        read(&out.path().join("img"), "host"),
        "hello\n",
        "{rootless}"
    );
    TestUser::remove_tree(xdg.path());
}

/// Without overlayfs in the user namespace, steps run on a copy of the layers whose changes
/// are turned into overlayfs's form; fuse-overlayfs when asked for (both forced here with
/// `BLUMEOPS_ROOTLESS_FS`): the same image as root's, and the progress output names the
/// fallback.
#[test]
fn rootless_fallbacks_have_the_root_build_digest() {
    require_users!();
    let user = TestUser::with_range();
    let fx = RootBuild::new(SANDBOX_DOCKERFILE, user, BaseImage::push);

    for (fs, says) in [
        (
            "fuse-overlayfs",
            "fuse-overlayfs (/usr/bin/fuse-overlayfs; asked for with BLUMEOPS_ROOTLESS_FS)",
        ),
        (
            "copy",
            "copying the layers for every step (no overlayfs in a user namespace here: slower)",
        ),
    ] {
        let out = user.tempdir("blumeops-fallback-out-");
        let xdg = user.tempdir("blumeops-fallback-xdg-");
        let built = fx.build_as(
            user,
            &out.path().join("img"),
            xdg.path(),
            &[("BLUMEOPS_ROOTLESS_FS", fs)],
        );
        built.assert_success();
        assert!(built.stderr.contains(says), "{built}");
        assert_eq!(
            digest(&built),
            digest(&fx.root),
            "the {fs} fallback's image differs"
        );
        assert_no_host_ids(&layer_owners(&out.path().join("img")));
        TestUser::remove_tree(xdg.path());
    }
}
