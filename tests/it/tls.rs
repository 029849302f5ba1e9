//! The blumeops CLI against a registry served over HTTPS (`docker-registry` with its own TLS
//! config), named `registry.blumeops.test` so the client speaks HTTPS to it, with a
//! certificate from a CA made for each test: publishing when the CA is trusted each way a user
//! can trust it, and the errors when the certificate is refused.
//!
//! Needs root (see `blumeops_e2e::tls_registry`) and the binary: `cargo build -p blumeops-cli`.

use std::time::{Duration, Instant};

use blumeops_e2e::dockerd::{self, Dockerd};
use blumeops_e2e::tls_registry::{OTHER_HOST, ServerCert, TLS_HOST, TlsRegistry, Trust};
use blumeops_e2e::{
    CI_USER, CliOutput, isolated_cache, run_cli_wrapped, sha256_digest, workspace_root,
};

const TAG: &str = "v1.0.0-abc1234";
const KEY_VAR: &str = "ZOT_CI_API_KEY";
/// README, Exit codes: the registry cannot be reached. A refused certificate is a transport
/// failure (no secure connection), not an answer from the registry, so it exits with this.
const UNREACHABLE: i32 = 5;
const TIMEOUT: Duration = Duration::from_secs(300);

/// `blumeops publish` of hello to `registry` as `zot-ci`, on the base at `base`, with the CA
/// trusted as `trust` says.
fn publish(registry: &TlsRegistry, base: &str, trust: Trust) -> CliOutput {
    publish_with(registry, base, trust, &[])
}

/// [`publish`] with more environment.
fn publish_with(
    registry: &TlsRegistry,
    base: &str,
    trust: Trust,
    env: &[(&str, &str)],
) -> CliOutput {
    let cache = isolated_cache();
    let cache_path = cache.path().display().to_string();
    let src = workspace_root().display().to_string();
    let addr = registry.addr();
    let base_arg = format!("BASE_IMAGE={base}");
    let password_arg = format!("env:{KEY_VAR}");
    let args = [
        "publish",
        "--src",
        &src,
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
        &password_arg,
        "--build-arg",
        &base_arg,
    ];
    let output = run_cli_wrapped(
        registry.wrapper(trust),
        &args,
        &[
            (KEY_VAR, registry.password()),
            ("BLUMEOPS_CACHE_DIR", &cache_path),
        ]
        .into_iter()
        .chain(env.iter().copied())
        .collect::<Vec<_>>(),
        &workspace_root(),
        TIMEOUT,
    );
    output.assert_no_secret(registry.password());
    output
}

/// Publish with the CA trusted as `trust` says, and check the result with skopeo, which
/// verifies the certificate against the CA on its own.
fn publish_and_verify(trust: Trust) {
    let Some(registry) = TlsRegistry::start(ServerCert::Valid) else {
        return;
    };
    let base = registry.push_base();
    let out = publish(&registry, &base.reference, trust);
    out.assert_success();
    verify(&registry, &base, &out);
}

/// [`publish_and_verify`] through the docker executor: the engine trusts what the client
/// trusts (its CA certificates travel in the helper image) and resolves the registry's name
/// as the client does (the client's /etc/hosts names are the helper's extra hosts).
fn publish_through_docker_and_verify(trust: Trust) {
    if let Err(why) = dockerd::available() {
        blumeops_core::testing::skip(&why);
        return;
    }
    let Some(registry) = TlsRegistry::start(ServerCert::Valid) else {
        return;
    };
    let _serial = crate::docker_executor::SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let daemon = Dockerd::shared();
    let base = registry.push_base();
    let volume = format!("blumeops-test-tls-{}", std::process::id());
    let host = daemon.host();
    let out = publish_with(
        &registry,
        &base.reference,
        trust,
        &[
            ("DOCKER_HOST", &host),
            ("BLUMEOPS_EXECUTOR", "docker"),
            ("BLUMEOPS_ENGINE_VOLUME", &volume),
        ],
    );
    out.assert_success();
    assert!(out.stderr.contains("executor: docker ("), "{out}");
    verify(&registry, &base, &out);
    assert_eq!(daemon.containers(), Vec::<String>::new(), "containers left");
    daemon.docker_ok(&["volume", "rm", &volume]);
}

fn verify(registry: &TlsRegistry, base: &blumeops_e2e::PushedImage, out: &CliOutput) {
    let target = format!("{}/blumeops/hello:{TAG}", registry.addr());
    let (reference, digest) = out
        .last_line()
        .split_once('@')
        .unwrap_or_else(|| panic!("last stdout line is not REF@DIGEST\n{out}"));
    assert_eq!(reference, target);
    let raw = registry.inspect_raw(&target);
    assert_eq!(sha256_digest(&raw), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).expect("manifest JSON");
    let base_manifest: serde_json::Value =
        serde_json::from_slice(&registry.inspect_raw(&base.reference)).expect("base manifest");
    assert_eq!(
        manifest["layers"][0]["digest"], base_manifest["layers"][0]["digest"],
        "not built on the base pulled over HTTPS"
    );
}

#[test]
fn publish_through_the_docker_executor_trusting_the_ca_through_ssl_cert_file() {
    publish_through_docker_and_verify(Trust::CertFile);
}

#[test]
fn publish_through_the_docker_executor_trusting_the_ca_through_the_system_store() {
    publish_through_docker_and_verify(Trust::SystemStore);
}

#[test]
fn publish_trusting_the_ca_through_ssl_cert_file() {
    publish_and_verify(Trust::CertFile);
}

/// `SSL_CERT_DIR` naming a store that `update-ca-certificates` itself made: the machine's CAs
/// and the test CA, as `<name>.pem` links, OpenSSL hash links and the bundle.
#[test]
fn publish_trusting_the_ca_through_ssl_cert_dir() {
    publish_and_verify(Trust::CertDir);
}

/// No `SSL_CERT_*` variable: the client's default lookup finds `/etc/ssl/certs`, which for
/// this run alone (its own mount namespace) is a copy of the machine's store with the test CA
/// added by `update-ca-certificates`. The machine's real store is not changed.
#[test]
fn publish_trusting_the_ca_through_the_system_store() {
    publish_and_verify(Trust::SystemStore);
}

/// Publish to a registry whose certificate is refused: it fails on its first request, the
/// base image's manifest. Returns the output and the error line naming the certificate.
#[track_caller]
fn refused(cert: ServerCert, trust: Trust) -> Option<(CliOutput, String)> {
    let registry = TlsRegistry::start(cert)?;
    let base = format!("{}/library/busybox:1.37", registry.addr());
    let started = Instant::now();
    let out = publish(&registry, &base, trust);
    out.assert_code(UNREACHABLE);
    // A refused certificate is refused again: no retries.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}\n{out}",
        started.elapsed()
    );
    assert!(!out.stderr.contains("gave up after"), "{out}");
    assert!(!out.stderr.contains("unexpected"), "{out}");
    let error = out
        .stderr
        .lines()
        .find(|l| l.contains(&registry.addr()) && l.contains("certificate"))
        .unwrap_or_else(|| panic!("no error naming the registry and its certificate\n{out}"))
        .to_owned();
    Some((out, error))
}

#[test]
fn untrusted_certificate_is_a_clear_error_with_a_hint() {
    let Some((out, error)) = refused(ServerCert::Valid, Trust::Untrusted) else {
        return;
    };
    assert!(
        error.contains("certificate is not trusted (unknown issuer)"),
        "{error}\n{out}"
    );
    let hint = hint(&out);
    assert!(hint.contains("SSL_CERT_FILE"), "{hint}");
    assert!(hint.contains("update-ca-certificates"), "{hint}");
}

#[test]
fn certificate_for_another_name_is_a_clear_error() {
    let Some((out, error)) = refused(ServerCert::WrongName, Trust::CertFile) else {
        return;
    };
    assert!(
        error.contains(&format!("certificate is not valid for {TLS_HOST}")),
        "{error}\n{out}"
    );
    assert!(
        error.contains(OTHER_HOST),
        "names what it is valid for: {error}"
    );
    let hint = hint(&out);
    assert!(hint.contains("name"), "{hint}");
}

#[test]
fn expired_certificate_is_a_clear_error() {
    let Some((out, error)) = refused(ServerCert::Expired, Trust::CertFile) else {
        return;
    };
    assert!(
        error.contains("certificate expired on 2001-01-01"),
        "{error}\n{out}"
    );
    let hint = hint(&out);
    assert!(hint.contains("renew"), "{hint}");
    assert!(hint.contains("clock"), "{hint}");
}

#[track_caller]
fn hint(out: &CliOutput) -> String {
    out.stderr
        .lines()
        .find_map(|l| l.strip_prefix("hint: "))
        .unwrap_or_else(|| panic!("no hint\n{out}"))
        .to_owned()
}
