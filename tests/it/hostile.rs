//! Hostile input: images pushed to the real test registry with escaping entries, links out
//! of the layer, corrupt blobs, bombs and absurd sizes, and hostile Dockerfiles and build
//! contexts. Each build must fail with one clear message naming what was refused, a
//! documented exit code (2 invalid input, 6 integrity), and nothing written outside
//! blumeops' own directories.
//!
//! Needs the binary: `cargo build -p blumeops-cli` (or `BLUMEOPS_BIN`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use blumeops_core::{
    BlobRef, ManifestBlob, Store, StoredImage, TagPolicy, media_types::OCI_LAYER_GZIP,
};
use blumeops_e2e::{CliOutput, TestRegistry, isolated_cache, random_hex, run_cli, tempdir};

use crate::test_images::client_for;

const INVALID_INPUT: i32 = 2;
const INTEGRITY: i32 = 6;

/// Tar entry types used here.
const REGULAR: u8 = b'0';
const HARD_LINK: u8 = b'1';
const SYMLINK: u8 = b'2';
const GNU_LONG_NAME: u8 = b'L';

/// One 512-byte ustar header, written by hand so that names and link targets are exactly
/// what a hostile image would hold (`..`, absolute paths).
fn header(kind: u8, name: &[u8], link: &[u8], size: usize) -> [u8; 512] {
    assert!(name.len() <= 100 && link.len() <= 100);
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let text = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(text.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 0);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn push_entry(out: &mut Vec<u8>, kind: u8, name: &[u8], link: &[u8], data: &[u8]) {
    if name.len() > 100 {
        let mut long = name.to_vec();
        long.push(0);
        push_entry(out, GNU_LONG_NAME, b"././@LongLink", b"", &long);
        return push_entry(out, kind, &name[..100], link, data);
    }
    out.extend_from_slice(&header(kind, name, link, data.len()));
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A tar stream of `(type, name, link target, data)` entries, written as given.
fn tar_of(entries: &[(u8, &str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, name, link, data) in entries {
        push_entry(
            &mut out,
            *kind,
            name.as_bytes(),
            link.unwrap_or("").as_bytes(),
            data,
        );
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A tar of one-byte regular files with any names (long ones as GNU long names).
fn files_tar(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        push_entry(&mut out, REGULAR, name.as_bytes(), b"", b"x");
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// gzip with the system's `gzip -9`.
fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("gzip")
        .args(["-9", "-c", "-n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("failed to run gzip");
    let mut stdin = child.stdin.take().unwrap();
    let input = raw.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("gzip failed");
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn sha256(bytes: &[u8]) -> String {
    blumeops_e2e::sha256_digest(bytes)
}

/// A registry, a store to push from and an admin client.
struct Scene {
    registry: TestRegistry,
    _store_dir: tempfile::TempDir,
    store: Store,
}

impl Scene {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let store_dir = tempdir("blumeops-hostile-store-");
        let store = Store::open(store_dir.path().join("store")).unwrap();
        Self {
            registry,
            _store_dir: store_dir,
            store,
        }
    }

    /// Push an image of gzip `layers` (raw tar streams, compressed here) as `hostile/NAME:1`
    /// with a config listing the given diff_ids (default: the real ones). Returns the
    /// reference and each layer's blob digest.
    fn push(&self, name: &str, layers: &[Vec<u8>]) -> (String, Vec<String>) {
        let compressed: Vec<Vec<u8>> = layers.iter().map(|l| gzip(l)).collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        self.push_raw(name, &config, &compressed)
    }

    /// Push `config` and already compressed `layers` as they are.
    fn push_raw(&self, name: &str, config: &[u8], layers: &[Vec<u8>]) -> (String, Vec<String>) {
        let blob = |bytes: &[u8], media_type: &str| BlobRef {
            digest: self.store.put_bytes(bytes).unwrap(),
            size: bytes.len() as u64,
            media_type: media_type.to_owned(),
        };
        let config = blob(config, "application/vnd.oci.image.config.v1+json");
        let layers: Vec<BlobRef> = layers.iter().map(|l| blob(l, OCI_LAYER_GZIP)).collect();
        let descriptor = |b: &BlobRef| serde_json::json!({"mediaType": b.media_type, "digest": b.digest.to_string(), "size": b.size});
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor(&config),
            "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
        }))
        .unwrap();
        let image = StoredImage {
            manifest: ManifestBlob::new(manifest, "application/vnd.oci.image.manifest.v1+json"),
            config,
            layers: layers.clone(),
        };
        let reference = format!("{}/hostile/{name}:1", self.registry.addr());
        let client = client_for(
            &self.registry.addr(),
            Some(("admin", self.registry.admin_password())),
        );
        self.registry
            .block_on(client.push_image(
                &reference.parse().unwrap(),
                &image,
                &self.store,
                TagPolicy::AllowOverwrite,
            ))
            .unwrap_or_else(|e| panic!("failed to push {reference}: {e}"));
        (
            reference,
            layers.iter().map(|l| l.digest.to_string()).collect(),
        )
    }

    /// `blumeops build` of a Dockerfile container `FROM reference` that runs a command (so
    /// every layer is unpacked), with `envs` added.
    fn build_from(&self, reference: &str, envs: &[(&str, &str)]) -> (CliOutput, tempfile::TempDir) {
        let src = tempdir("blumeops-hostile-src-");
        let dir = src.path().join("containers/hostile");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM {reference}\nRUN true\n"),
        )
        .unwrap();
        build(src.path(), &self.registry.addr(), envs)
    }
}

/// `blumeops build --src SRC --container-name hostile`; returns the output and the cache
/// directory used (for inspection; removed when dropped).
fn build(src: &Path, registry: &str, envs: &[(&str, &str)]) -> (CliOutput, tempfile::TempDir) {
    let cache = isolated_cache();
    let out = cache.path().join("out");
    let cache_path = cache.path().to_owned();
    let cache_arg = cache_path.display().to_string();
    let mut all_envs = vec![("BLUMEOPS_CACHE_DIR", cache_arg.as_str())];
    all_envs.extend_from_slice(envs);
    let output = run_cli(
        &[
            "build",
            "--src",
            &src.display().to_string(),
            "--container-name",
            "hostile",
            "--version",
            "v1",
            "--commit-sha",
            "abc1234",
            "--registry",
            registry,
            "--output",
            &format!("oci:{}", out.display()),
        ],
        &all_envs,
    );
    (output, cache)
}

/// A path under /tmp that must never be created.
fn canary() -> PathBuf {
    PathBuf::from(format!("/tmp/blumeops-canary-{}", random_hex(8)))
}

#[track_caller]
fn assert_refused(out: &CliOutput, code: i32, needles: &[&str]) {
    out.assert_code(code);
    let err = &out.stderr;
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in the error\n{out}");
    }
    assert!(!err.contains("panicked"), "{out}");
}

#[test]
fn dotdot_entry_is_refused_and_writes_nothing_outside() {
    let scene = Scene::new();
    let canary = canary();
    let name = format!("../../../../../../../..{}", canary.display());
    let (reference, _) = scene.push("dotdot", &[tar_of(&[(REGULAR, &name, None, b"pwned")])]);
    let (out, _) = scene.build_from(&reference, &[]);
    assert_refused(
        &out,
        INVALID_INPUT,
        &["`..` component", &name, "failed to unpack entry"],
    );
    assert!(!canary.exists(), "{} was written", canary.display());
}

#[test]
fn absolute_entry_stays_inside_the_layer() {
    let scene = Scene::new();
    let canary = canary();
    let name = canary.display().to_string();
    let (reference, _) = scene.push(
        "absolute",
        &[tar_of(&[(REGULAR, &name, None, b"contained")])],
    );
    let (out, cache) = scene.build_from(&reference, &[]);
    // The image has no /bin/true, so the step fails, but only after the layer was unpacked.
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(!canary.exists(), "{} was written\n{out}", canary.display());
    let unpacked: Vec<PathBuf> = std::fs::read_dir(cache.path().join("unpacked"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    let inside = unpacked
        .iter()
        .map(|d| d.join(name.trim_start_matches('/')))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("the entry is not in the unpacked layer {unpacked:?}\n{out}"));
    assert_eq!(std::fs::read_to_string(inside).unwrap(), "contained");
}

#[test]
fn write_through_a_symlink_is_refused() {
    let scene = Scene::new();
    let target = canary();
    std::fs::create_dir(&target).unwrap();
    let link_target = target.display().to_string();
    let (reference, _) = scene.push(
        "symlink",
        &[tar_of(&[
            (SYMLINK, "escape", Some(&link_target), b""),
            (REGULAR, "escape/pwned", None, b"pwned"),
        ])],
    );
    let (out, _) = scene.build_from(&reference, &[]);
    assert_refused(
        &out,
        INVALID_INPUT,
        &[
            "escape/pwned",
            "symlink or not a directory; refusing to write through it",
        ],
    );
    let written: Vec<_> = std::fs::read_dir(&target).unwrap().collect();
    std::fs::remove_dir(&target).unwrap();
    assert!(
        written.is_empty(),
        "written through the symlink: {written:?}"
    );
}

#[test]
fn hard_link_out_of_the_layer_is_refused() {
    let scene = Scene::new();
    let victim = canary();
    std::fs::write(&victim, "victim").unwrap();
    let target = victim.display().to_string();
    let dotdot = format!("../../../../../../..{target}");
    for (i, link) in [target.as_str(), dotdot.as_str()].into_iter().enumerate() {
        let (reference, _) = scene.push(
            &format!("hardlink{i}"),
            &[tar_of(&[(HARD_LINK, "link", Some(link), b"")])],
        );
        let (out, _) = scene.build_from(&reference, &[]);
        assert_refused(&out, INVALID_INPUT, &["`link`", "hard link"]);
    }
    let meta = std::fs::metadata(&victim).unwrap();
    std::fs::remove_file(&victim).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&meta), 1, "linked to");
}

#[test]
fn layer_not_matching_its_digest_is_an_integrity_error() {
    let scene = Scene::new();
    let (reference, digests) =
        scene.push("corrupt", &[tar_of(&[(REGULAR, "f", None, b"original")])]);
    // Change the stored bytes behind the registry's back, keeping the size.
    let data = scene.registry.blob_data_path(&digests[0]);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 9;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let (out, _) = scene.build_from(&reference, &[]);
    assert_refused(&out, INTEGRITY, &[&digests[0]]);
}

#[test]
fn decompression_bomb_is_refused_before_it_fills_the_disk() {
    let scene = Scene::new();
    // 256 MiB of zeros, about 250 KiB compressed: far past 256 times its size.
    let zeros = vec![0u8; 256 << 20];
    let (reference, _) = scene.push("bomb", &[tar_of(&[(REGULAR, "bomb", None, &zeros)])]);
    drop(zeros);
    let (out, cache) = scene.build_from(&reference, &[]);
    assert_refused(
        &out,
        INVALID_INPUT,
        &[
            "decompression bomb",
            "BLUMEOPS_MAX_LAYER_RATIO",
            "failed to read layer",
        ],
    );
    let kept = walk_size(&cache.path().join("unpacked"));
    assert!(kept < 1 << 20, "{kept} bytes kept after the failure");
}

fn walk_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                walk_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn too_many_entries_and_too_deep_paths_are_refused() {
    let scene = Scene::new();
    let many: Vec<String> = (0..101).map(|i| format!("f{i}")).collect();
    let (reference, _) = scene.push("many", &[files_tar(&many)]);
    let (out, _) = scene.build_from(&reference, &[("BLUMEOPS_MAX_LAYER_ENTRIES", "100")]);
    assert_refused(
        &out,
        INVALID_INPUT,
        &[
            "number of tar entries exceeds the limit of 100 entries",
            "BLUMEOPS_MAX_LAYER_ENTRIES",
        ],
    );

    let deep = vec!["d"; 300].join("/");
    let (reference, _) = scene.push("deep", &[files_tar(&[deep])]);
    let (out, _) = scene.build_from(&reference, &[]);
    assert_refused(
        &out,
        INVALID_INPUT,
        &[
            "depth (300 components) exceeds the limit of 256 components",
            "d/d/d",
        ],
    );
}

#[test]
fn malformed_config_names_the_image() {
    let scene = Scene::new();
    let layer = gzip(&tar_of(&[(REGULAR, "f", None, b"x")]));
    let (reference, _) = scene.push_raw("badconfig", b"{\"architecture\": [", &[layer]);
    let (out, _) = scene.build_from(&reference, &[]);
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("hostile/badconfig"), "{out}");
    assert!(out.stderr.contains("config"), "{out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
}

/// A Dockerfile container `hostile` in a fresh source tree, with extra context files.
fn dockerfile_src(dockerfile: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let src = tempdir("blumeops-hostile-src-");
    let dir = src.path().join("containers/hostile");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    src
}

fn build_dockerfile(dockerfile: &str, files: &[(&str, &[u8])]) -> CliOutput {
    let src = dockerfile_src(dockerfile, files);
    build(src.path(), "127.0.0.1:9", &[]).0
}

#[test]
fn dockerfile_expansion_blowup_is_refused_with_the_line() {
    let mut text = String::from("FROM scratch\nARG A=0123456789abcdef\n");
    for _ in 0..64 {
        text.push_str("ARG A=${A}${A}\n");
    }
    let out = build_dockerfile(&text, &[]);
    assert_refused(
        &out,
        INVALID_INPUT,
        &[
            "Dockerfile:19: ARG: the word after variable substitution exceeds the limit of 1048576 bytes",
        ],
    );
}

#[test]
fn dockerfile_absurd_line_and_unknown_instruction_are_refused_with_the_line() {
    let long = format!("FROM scratch\nLABEL a={}\n", "x".repeat(2 << 20));
    let out = build_dockerfile(&long, &[]);
    assert_refused(
        &out,
        INVALID_INPUT,
        &[
            "Dockerfile:2: the instruction's length (continuation lines joined) exceeds the limit of 1048576 bytes",
        ],
    );
    let out = build_dockerfile("FROM scratch\n\nFROBNICATE /x\n", &[]);
    assert_refused(
        &out,
        INVALID_INPUT,
        &["Dockerfile:3: unknown instruction FROBNICATE"],
    );
}

#[test]
fn copy_out_of_the_context_is_refused() {
    let out = build_dockerfile("FROM scratch\nCOPY ../../secret /x\n", &[]);
    assert_refused(&out, INVALID_INPUT, &["Dockerfile:2", "../../secret"]);

    let src = dockerfile_src("FROM scratch\nCOPY link/passwd /x\nCOPY link2 /y\n", &[]);
    let dir = src.path().join("containers/hostile");
    std::os::unix::fs::symlink("/etc", dir.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link2")).unwrap();
    let (out, _) = build(src.path(), "127.0.0.1:9", &[]);
    assert_refused(&out, INVALID_INPUT, &["Dockerfile:2", "link/passwd"]);
}

#[test]
fn add_of_a_malicious_archive_writes_nothing_outside() {
    let canary = canary();
    let name = format!("../../../../../../../..{}", canary.display());
    let archive = tar_of(&[(REGULAR, &name, None, b"pwned")]);
    let out = build_dockerfile("FROM scratch\nADD evil.tar /\n", &[("evil.tar", &archive)]);
    assert!(!out.stderr.contains("panicked"), "{out}");
    assert!(!canary.exists(), "{} was written\n{out}", canary.display());
}

/// `ADD` of an archive with a `..` entry is refused (as Docker does), not silently skipped.
#[test]
fn add_of_a_malicious_archive_is_refused() {
    let name = format!("../../../../../../../..{}", canary().display());
    let archive = tar_of(&[(REGULAR, &name, None, b"pwned")]);
    let out = build_dockerfile("FROM scratch\nADD evil.tar /\n", &[("evil.tar", &archive)]);
    assert_refused(&out, INVALID_INPUT, &["evil.tar", "`..`"]);
}

/// A manifest over the layer limit is refused before any layer is downloaded.
#[test]
fn manifest_with_too_many_layers_is_refused() {
    let scene = Scene::new();
    let layer = tar_of(&[(REGULAR, "f", None, b"x")]);
    let layers = vec![layer; 300];
    let (reference, _) = scene.push("layers", &layers);
    let (out, _) = scene.build_from(&reference, &[]);
    assert_refused(&out, INVALID_INPUT, &["hostile/layers", "300", "256"]);
}
