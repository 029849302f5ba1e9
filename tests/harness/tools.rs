//! skopeo / umoci / chroot wrappers: checks that do not trust blumeops.

use std::path::Path;
use std::process::{Command, Output};

/// Run a tool; panic with its output when it cannot start.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {program} (is it installed?): {e}"))
}

/// Run a tool and panic with its stderr unless it succeeds.
fn run_ok(program: &str, args: &[&str]) -> Output {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}

/// `docker://` is added to references without a transport (`oci:`, `docker-archive:`, ...).
pub fn with_transport(reference: &str) -> String {
    const TRANSPORTS: [&str; 5] = [
        "docker://",
        "oci:",
        "oci-archive:",
        "docker-archive:",
        "dir:",
    ];
    if TRANSPORTS.iter().any(|t| reference.starts_with(t)) {
        reference.to_owned()
    } else {
        format!("docker://{reference}")
    }
}

/// Run skopeo with these arguments, whatever the outcome.
pub fn skopeo(args: &[&str]) -> Output {
    run("skopeo", args)
}

/// `skopeo inspect --tls-verify=false REF` (anonymous) as JSON.
pub fn skopeo_inspect(reference: &str) -> serde_json::Value {
    let reference = with_transport(reference);
    let output = run_ok("skopeo", &["inspect", "--tls-verify=false", &reference]);
    serde_json::from_slice(&output.stdout).expect("skopeo inspect prints JSON")
}

/// `skopeo inspect --raw`: the manifest bytes exactly as served (hash them for the digest).
pub fn skopeo_inspect_raw(reference: &str) -> Vec<u8> {
    let reference = with_transport(reference);
    run_ok(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &reference],
    )
    .stdout
}

/// `skopeo inspect --config`: the image config as JSON.
pub fn skopeo_inspect_config(reference: &str) -> serde_json::Value {
    let reference = with_transport(reference);
    let output = run_ok(
        "skopeo",
        &["inspect", "--config", "--tls-verify=false", &reference],
    );
    serde_json::from_slice(&output.stdout).expect("skopeo inspect --config prints JSON")
}

/// `skopeo copy` from a registry (anonymous, plain HTTP) into an OCI layout `DIR:TAG`.
pub fn skopeo_copy_to_oci(reference: &str, dir: &Path, tag: &str) {
    let src = with_transport(reference);
    let dest = format!("oci:{}:{tag}", dir.display());
    run_ok("skopeo", &["copy", "--src-tls-verify=false", &src, &dest]);
}

/// `skopeo copy` to a registry with credentials; returns the output whatever the outcome.
pub fn skopeo_push(src: &str, dest: &str, user: &str, password: &str) -> Output {
    let dest = with_transport(dest);
    let creds = format!("{user}:{password}");
    skopeo(&[
        "copy",
        "--retry-times=0",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        src,
        &dest,
    ])
}

/// `umoci unpack --image LAYOUT:TAG BUNDLE` (needs root for ownership).
pub fn umoci_unpack(image: &str, bundle: &Path) {
    let bundle = bundle.display().to_string();
    run_ok("umoci", &["unpack", "--image", image, &bundle]);
}

/// Manifest digests listed in an OCI layout's `index.json`.
pub fn oci_layout_manifest_digests(dir: &Path) -> Vec<String> {
    let path = dir.join("index.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    let index: serde_json::Value = serde_json::from_str(&text).expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .expect("index.json has manifests")
        .iter()
        .map(|m| m["digest"].as_str().expect("descriptor digest").to_owned())
        .collect()
}

/// Run `argv` inside `rootfs` with `chroot` (as root).
pub fn chroot_run(rootfs: &Path, argv: &[&str]) -> Output {
    Command::new("chroot")
        .arg(rootfs)
        .args(argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap_or_else(|e| panic!("failed to run chroot: {e}"))
}
