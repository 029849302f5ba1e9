//! The busybox base image (`scripts/busybox-base.sh`), built once per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::registry::{ADMIN_USER, TestRegistry};
use crate::tools::{skopeo_inspect_raw, skopeo_push};
use crate::util::{random_hex, sha256_digest, target_dir, workspace_root};

/// Tag of the base image.
pub const BASE_TAG: &str = "1.37";

/// An image pushed to a test registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedImage {
    /// `ADDR/REPO:TAG`.
    pub reference: String,
    /// Manifest digest, `sha256:...`.
    pub digest: String,
}

/// The busybox base image as an OCI layout.
#[derive(Debug)]
pub struct BaseImage;

impl BaseImage {
    /// The OCI layout directory (tag [`BASE_TAG`]), built on first use. The script is
    /// reproducible, so the layout is cached under the target directory, keyed by the
    /// script and the busybox binary.
    pub fn layout() -> &'static Path {
        static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
        LAYOUT.get_or_init(build_layout)
    }

    /// `oci:DIR:1.37`, for skopeo.
    pub fn oci_reference() -> String {
        format!("oci:{}:{BASE_TAG}", Self::layout().display())
    }

    /// Push to `library/busybox:1.37` as `admin`.
    pub fn push(registry: &TestRegistry) -> PushedImage {
        Self::push_to(registry, "library/busybox")
    }

    /// Push to `REPO:1.37` as `admin`; panics if skopeo fails.
    pub fn push_to(registry: &TestRegistry, repo: &str) -> PushedImage {
        push_layout(
            registry,
            &Self::oci_reference(),
            &format!("{}/{repo}:{BASE_TAG}", registry.addr()),
        )
    }
}

/// Push the OCI layout image `source` (`oci:DIR:TAG`) to `reference` as `admin`; panics
/// with skopeo's message and the proxy's log if it fails.
fn push_layout(registry: &TestRegistry, source: &str, reference: &str) -> PushedImage {
    let output = skopeo_push(source, reference, ADMIN_USER, registry.admin_password());
    assert!(
        output.status.success(),
        "skopeo push of {source} to {reference} failed:\n{}\nproxy log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        registry.log_summary(),
    );
    let digest = sha256_digest(&skopeo_inspect_raw(reference));
    PushedImage {
        reference: reference.to_owned(),
        digest,
    }
}

/// The busybox base for linux/amd64 and linux/arm64 under one OCI index
/// (`scripts/busybox-index.sh`: the other architecture's busybox-static comes from
/// `apt-get download`, so its dpkg architecture must be added, as install-deps.sh does).
#[derive(Debug)]
pub struct MultiArchBase;

impl MultiArchBase {
    /// Whether this machine runs arm64 binaries (qemu-aarch64 registered with
    /// binfmt_misc, as `scripts/enable-emulation.sh` does); records a skip when it does not.
    pub fn arm64_runs_here() -> bool {
        let handler = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
        let enabled = std::fs::read_to_string(handler).is_ok_and(|s| s.starts_with("enabled"));
        if !enabled {
            blumeops_core::testing::skip(
                "qemu-aarch64 is not registered with binfmt_misc (scripts/enable-emulation.sh)",
            );
        }
        enabled
    }

    /// The OCI layout directory (tag [`BASE_TAG`] names the index), built on first use.
    pub fn layout() -> &'static Path {
        static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
        LAYOUT.get_or_init(|| {
            // The per-platform images are busybox-base.sh's: its changes count too.
            let mut key = std::fs::read(workspace_root().join("scripts/busybox-base.sh"))
                .expect("read scripts/busybox-base.sh");
            key.extend(std::fs::read("/bin/busybox").unwrap_or_default());
            cached_layout(
                "scripts/busybox-index.sh",
                &[BASE_TAG],
                &key,
                "busybox-index",
                BASE_TAG,
                300,
            )
        })
    }

    /// Push the index and both images to `REPO:1.37` as `admin` (`skopeo copy --all`).
    pub fn push_to(registry: &TestRegistry, repo: &str) -> PushedImage {
        let source = format!("oci:{}:{BASE_TAG}", Self::layout().display());
        let reference = format!("{}/{repo}:{BASE_TAG}", registry.addr());
        let creds = format!("{ADMIN_USER}:{}", registry.admin_password());
        let output = crate::tools::skopeo(&[
            "copy",
            "--all",
            "--retry-times=0",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &source,
            &crate::tools::with_transport(&reference),
        ]);
        assert!(
            output.status.success(),
            "skopeo copy --all of {source} to {reference} failed:\n{}\nproxy log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            registry.log_summary(),
        );
        let digest = sha256_digest(&skopeo_inspect_raw(&reference));
        PushedImage { reference, digest }
    }
}

/// A Debian bookworm base (`scripts/debian-base.sh`: debootstrap minbase, apt included),
/// for steps that need apt-get and useradd.
#[derive(Debug)]
pub struct DebianBase;

impl DebianBase {
    /// Its tag.
    pub const TAG: &'static str = "bookworm";

    /// The OCI layout directory, built on first use (debootstrap needs root and the
    /// Debian mirror) and kept under the target directory for later runs.
    pub fn layout() -> &'static Path {
        static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
        LAYOUT.get_or_init(|| {
            cached_layout(
                "scripts/debian-base.sh",
                &[Self::TAG, Self::TAG],
                &[],
                "debian",
                Self::TAG,
                1800,
            )
        })
    }

    /// Push to `library/debian:bookworm` as `admin`.
    pub fn push(registry: &TestRegistry) -> PushedImage {
        push_layout(
            registry,
            &format!("oci:{}:{}", Self::layout().display(), Self::TAG),
            &format!("{}/library/debian:{}", registry.addr(), Self::TAG),
        )
    }
}

fn build_layout() -> PathBuf {
    cached_layout(
        "scripts/busybox-base.sh",
        &[BASE_TAG],
        &std::fs::read("/bin/busybox").unwrap_or_default(),
        "busybox",
        BASE_TAG,
        300,
    )
}

/// Run `script OUT ARGS...` once and keep its layout under the target directory, keyed by
/// the script (and `extra_key`); other test processes and later runs reuse it.
fn cached_layout(
    script: &str,
    script_args: &[&str],
    extra_key: &[u8],
    name: &str,
    tag: &str,
    timeout_secs: u64,
) -> PathBuf {
    let script = workspace_root().join(script);
    let mut key = std::fs::read(&script)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", script.display()));
    key.extend(extra_key);
    let key = sha256_digest(&key);
    let cache = target_dir().join("tmp/blumeops-e2e");
    let dest = cache.join(format!("{name}-{tag}-{}", &key[7..23]));
    if dest.join("index.json").exists() {
        return dest;
    }
    std::fs::create_dir_all(&cache)
        .unwrap_or_else(|e| panic!("failed to create {}: {e}", cache.display()));
    let staging = cache.join(format!("staging-{}", random_hex(8)));
    let output = Command::new("timeout")
        .arg(timeout_secs.to_string())
        .arg("bash")
        .arg(&script)
        .arg(&staging)
        .args(script_args)
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed with {}:\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // Another test process may have won the race; the content is the same.
    if std::fs::rename(&staging, &dest).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    // Layouts from older versions of the script are dead weight.
    let prefix = format!("{name}-{tag}-");
    for entry in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        let path = entry.path();
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix));
        if stale && path != dest {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    assert!(
        dest.join("index.json").exists(),
        "no layout at {}",
        dest.display()
    );
    dest
}
