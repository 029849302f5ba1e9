//! Pushes and pulls through a flaky registry: a real distribution registry behind the zot
//! proxy, behind a [`FaultProxy`] that answers 5xx/429, drops connections mid-upload and
//! stalls requests. After each scenario the image is checked with skopeo, straight from the
//! registry (not through the faults): the tag's manifest and every blob it names are there.

use std::path::Path;
use std::time::{Duration, Instant};

use blumeops_core::{
    ClientOptions, Credential, Credentials, ImageRef, Platform, PushReport, RegistryClient,
    RegistryError, RegistryErrorKind, RetryPolicy, Secret, Store, StoredImage, TagPolicy,
};
use blumeops_e2e::fault_proxy::{Fault, FaultProxy, FaultRecord, Rule};
use blumeops_e2e::tools::{skopeo, skopeo_copy_to_oci, skopeo_inspect_raw};
use blumeops_e2e::{
    BaseImage, CI_USER, READER_USER, TestRegistry, isolated_cache, run_cli, sha256_digest, tempdir,
    workspace_root,
};
use http::Method;

use crate::test_images::{build_image, store};

const REPO: &str = "blumeops/hello";

/// Retries fast enough for tests.
fn quick(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(60),
    }
}

fn client(addr: &str, user: (&str, &str), options: ClientOptions) -> RegistryClient {
    let credentials = Credentials::default().with_registry(
        addr,
        Credential {
            username: user.0.to_owned(),
            password: Secret::new(user.1),
        },
    );
    RegistryClient::new(ClientOptions {
        credentials,
        ..options
    })
    .expect("failed to build a registry client")
}

fn options(retry: RetryPolicy) -> ClientOptions {
    ClientOptions {
        retry,
        max_parallel_uploads: 1,
        ..ClientOptions::default()
    }
}

/// A registry with a fault proxy in front of it.
struct Flaky {
    registry: TestRegistry,
    faults: FaultProxy,
}

impl Flaky {
    fn start() -> Self {
        let registry = TestRegistry::start();
        let faults = FaultProxy::start(&registry.addr());
        Self { registry, faults }
    }

    /// `zot-ci` through the faults.
    fn ci(&self, retry: RetryPolicy) -> RegistryClient {
        client(
            &self.faults.addr(),
            (CI_USER, self.registry.ci_password()),
            options(retry),
        )
    }

    /// `REPO:tag` through the faults.
    fn target(&self, tag: &str) -> ImageRef {
        format!("{}/{REPO}:{tag}", self.faults.addr())
            .parse()
            .expect("valid reference")
    }

    fn push(
        &self,
        client: &RegistryClient,
        tag: &str,
        image: &StoredImage,
        store: &Store,
    ) -> Result<PushReport, RegistryError> {
        push_with(client, &self.target(tag), image, store)
    }

    fn log(&self) -> String {
        format!(
            "fault proxy:\n{}registry:\n{}",
            self.faults.summary(),
            self.registry.log_summary()
        )
    }

    /// The image behind `REPO:tag`, read with skopeo straight from the registry, is whole.
    #[track_caller]
    fn assert_whole(&self, tag: &str, image: &StoredImage) {
        assert_tag_whole(&self.registry, tag, image);
    }
}

fn push_with(
    client: &RegistryClient,
    target: &ImageRef,
    image: &StoredImage,
    store: &Store,
) -> Result<PushReport, RegistryError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(client.push_image(target, image, store, TagPolicy::CreateOnly))
}

/// The tag points at `image`'s manifest, skopeo can copy the whole image out, and every blob
/// the manifest names is in the registry's storage.
#[track_caller]
fn assert_tag_whole(registry: &TestRegistry, tag: &str, image: &StoredImage) {
    let reference = format!("{}/{REPO}:{tag}", registry.addr());
    assert_eq!(
        sha256_digest(&skopeo_inspect_raw(&reference)),
        image.manifest.digest.to_string(),
        "{reference} points at another manifest"
    );
    let dir = tempdir("blumeops-resilience-oci-");
    skopeo_copy_to_oci(&reference, &dir.path().join("layout"), tag);
    for blob in image.blobs() {
        let path = registry.blob_data_path(&blob.digest.to_string());
        assert!(
            path.exists(),
            "blob {} is missing from storage",
            blob.digest
        );
    }
}

/// No tag in the log was written, and skopeo finds no `REPO:tag`.
#[track_caller]
fn assert_no_tag(registry: &TestRegistry, tag: &str) {
    let reference = format!("docker://{}/{REPO}:{tag}", registry.addr());
    let out = skopeo(&["inspect", "--raw", "--tls-verify=false", &reference]);
    assert!(
        !out.status.success(),
        "{reference} exists after a failed push"
    );
    assert!(
        registry
            .manifest_puts()
            .iter()
            .all(|r| r.status >= 400 || !r.path.contains(&format!("/{REPO}/"))),
        "a manifest PUT succeeded:\n{}",
        registry.log_summary()
    );
}

fn digest_hex(image: &StoredImage, index: usize) -> String {
    image.layers[index].digest.hex().to_owned()
}

/// Requests to the upload session of the blob whose final PUT names `hex`.
fn session_of(records: &[FaultRecord], hex: &str) -> Vec<FaultRecord> {
    let path = records
        .iter()
        .find(|r| r.query.as_deref().is_some_and(|q| q.contains(hex)))
        .map(|r| r.path.clone())
        .expect("a final PUT for the blob");
    records.iter().filter(|r| r.path == path).cloned().collect()
}

#[test]
fn push_and_pull_get_through_5xx_and_429() {
    let flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    flaky
        .faults
        .add(Rule::new(Some(Method::HEAD), "/manifests/", Fault::status(503)).times(2))
        .add(Rule::new(
            Some(Method::POST),
            "/blobs/uploads/",
            Fault::status(500),
        ))
        .add(Rule::new(
            Some(Method::HEAD),
            "/blobs/sha256:",
            Fault::status(502),
        ))
        .add(Rule::new(
            Some(Method::PUT),
            "/blobs/uploads/",
            Fault::status(503),
        ))
        .add(Rule::new(
            Some(Method::PUT),
            "/manifests/",
            Fault::Status {
                status: 429,
                retry_after: Some("1".to_owned()),
            },
        ));
    let report = flaky
        .push(&flaky.ci(quick(6)), "v1", &image, &store)
        .unwrap_or_else(|e| panic!("push failed: {e:#}\n{}", flaky.log()));
    assert_eq!(report.digest, image.manifest.digest);
    assert_eq!(report.blobs_uploaded, 3, "{}", flaky.log());
    let records = flaky.faults.requests();
    assert_eq!(
        records.iter().filter(|r| r.fault.is_some()).count(),
        6,
        "every fault fired once:\n{}",
        flaky.log()
    );
    // The manifest PUT after the 429 waited for its Retry-After.
    let puts: Vec<_> = records
        .iter()
        .filter(|r| r.method == Method::PUT && r.path.contains("/manifests/"))
        .collect();
    assert_eq!(puts.len(), 2, "{}", flaky.log());
    assert_eq!(puts[0].status, Some(429));
    assert_eq!(puts[1].status, Some(201));
    assert!(
        puts[1].at - puts[0].at >= Duration::from_millis(950),
        "retried before Retry-After:\n{}",
        flaky.log()
    );
    flaky.assert_whole("v1", &image);

    // Pull it back through the same kind of trouble.
    flaky.faults.clear_log();
    flaky
        .faults
        .add(Rule::new(
            Some(Method::GET),
            "/manifests/",
            Fault::status(503),
        ))
        .add(Rule::new(
            Some(Method::GET),
            "/blobs/sha256:",
            Fault::status(500),
        ))
        .add(Rule::new(
            Some(Method::GET),
            "/blobs/sha256:",
            Fault::DropResponse,
        ));
    let (_pull_dir, pull_store) = crate::test_images::store();
    let platform: Platform = "linux/amd64".parse().expect("platform");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pulled = runtime
        .block_on(
            flaky
                .ci(quick(6))
                .pull_image(&flaky.target("v1"), &platform, &pull_store),
        )
        .unwrap_or_else(|e| panic!("pull failed: {e:#}\n{}", flaky.log()));
    assert_eq!(pulled.image.manifest.digest, image.manifest.digest);
    for blob in image.blobs() {
        assert!(
            pull_store.has_blob(&blob.digest),
            "{} not pulled",
            blob.digest
        );
    }
    assert_eq!(
        flaky
            .faults
            .requests()
            .iter()
            .filter(|r| r.fault.is_some())
            .count(),
        3,
        "{}",
        flaky.log()
    );
}

#[test]
fn dropped_upload_resumes_from_the_offset_the_registry_reports() {
    let flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    let big = digest_hex(&image, 0);
    let size = image.layers[0].size;
    assert!(size > 400_000, "the shared layer is {size} bytes");
    // The blob goes in one PUT; the connection breaks after 200000 bytes reached the registry.
    flaky.faults.add(
        Rule::new(
            Some(Method::PUT),
            "/blobs/uploads/",
            Fault::DropAfter(200_000),
        )
        .query(&big),
    );
    flaky
        .push(&flaky.ci(quick(6)), "v1", &image, &store)
        .unwrap_or_else(|e| panic!("push failed: {e:#}\n{}", flaky.log()));

    let session = session_of(&flaky.faults.requests(), &big);
    let text = flaky.log();
    let steps: Vec<(Method, Option<u16>)> = session
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        steps,
        [
            (Method::PUT, None),
            (Method::GET, Some(204)),
            (Method::PATCH, Some(202)),
            (Method::PUT, Some(201)),
        ],
        "{text}"
    );
    assert_eq!(
        session[1].response_range.as_deref(),
        Some("0-199999"),
        "{text}"
    );
    assert_eq!(
        session[2].content_range.as_deref(),
        Some(format!("200000-{}", size - 1).as_str()),
        "the upload did not go on from the registry's offset:\n{text}"
    );
    assert_eq!(session[2].content_length, Some(size - 200_000), "{text}");
    assert_eq!(session[3].content_length, Some(0), "{text}");
    // Resumed, not restarted: one session for this blob.
    let sessions = flaky
        .faults
        .requests()
        .iter()
        .filter(|r| r.method == Method::POST && r.status == Some(202))
        .count();
    assert_eq!(sessions, 3, "one session per blob:\n{text}");
    flaky.assert_whole("v1", &image);
}

#[test]
fn an_upload_cut_before_the_registry_kept_anything_is_sent_again_whole() {
    let flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    let big = digest_hex(&image, 0);
    let size = image.layers[0].size;
    // The blob's one PUT breaks before a byte reached the registry.
    flaky
        .faults
        .add(Rule::new(Some(Method::PUT), "/blobs/uploads/", Fault::DropAfter(0)).query(&big));
    flaky
        .push(&flaky.ci(quick(6)), "v1", &image, &store)
        .unwrap_or_else(|e| panic!("push failed: {e:#}\n{}", flaky.log()));
    let session = session_of(&flaky.faults.requests(), &big);
    let text = flaky.log();
    let steps: Vec<(Method, Option<u16>)> = session
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    // The registry says it holds nothing: the whole blob again, in the same session.
    assert_eq!(
        steps,
        [
            (Method::PUT, None),
            (Method::GET, Some(204)),
            (Method::PUT, Some(201)),
        ],
        "{text}"
    );
    assert_eq!(session[2].content_length, Some(size), "{text}");
    flaky.assert_whole("v1", &image);
}

#[test]
fn chunked_upload_resumes_inside_a_chunk() {
    let flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    let big = image.layers[0].clone();
    let chunk = 128 * 1024;
    // The second PATCH of the big layer breaks after 50000 bytes.
    flaky.faults.add(
        Rule::new(
            Some(Method::PATCH),
            "/blobs/uploads/",
            Fault::DropAfter(50_000),
        )
        .skip(1),
    );
    let client = client(
        &flaky.faults.addr(),
        (CI_USER, flaky.registry.ci_password()),
        ClientOptions {
            upload_chunk_size: chunk,
            ..options(quick(6))
        },
    );
    flaky
        .push(&client, "v1", &image, &store)
        .unwrap_or_else(|e| panic!("push failed: {e:#}\n{}", flaky.log()));
    let text = flaky.log();
    let session = session_of(&flaky.faults.requests(), big.digest.hex());
    let patches: Vec<&FaultRecord> = session
        .iter()
        .filter(|r| r.method == Method::PATCH)
        .collect();
    // 0-131071 ok, 131072-262143 dropped after 50000 bytes, then on from 181072.
    assert_eq!(patches[0].range_start(), Some(0), "{text}");
    assert_eq!(patches[1].range_start(), Some(chunk), "{text}");
    assert_eq!(patches[1].status, None, "{text}");
    let status = session
        .iter()
        .find(|r| r.method == Method::GET)
        .unwrap_or_else(|| panic!("no status GET:\n{text}"));
    assert_eq!(
        status.response_range.as_deref(),
        Some(format!("0-{}", chunk + 50_000 - 1).as_str()),
        "{text}"
    );
    assert_eq!(patches[2].range_start(), Some(chunk + 50_000), "{text}");
    // Every later PATCH starts where the previous one ended, up to the blob's end.
    let mut next = chunk + 50_000;
    for p in &patches[2..] {
        assert_eq!(p.range_start(), Some(next), "{text}");
        assert_eq!(p.status, Some(202), "{text}");
        next += p.content_length.expect("PATCH has a Content-Length");
    }
    assert_eq!(next, big.size, "{text}");
    flaky.assert_whole("v1", &image);
}

#[test]
fn lost_answers_are_recovered_without_duplicates() {
    let flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    // The registry stores the blob and the manifest, but the client never hears it.
    flaky
        .faults
        .add(Rule::new(
            Some(Method::PUT),
            "/blobs/uploads/",
            Fault::DropResponse,
        ))
        .add(Rule::new(
            Some(Method::PUT),
            "/manifests/",
            Fault::DropResponse,
        ));
    flaky
        .push(&flaky.ci(quick(6)), "v1", &image, &store)
        .unwrap_or_else(|e| panic!("push failed: {e:#}\n{}", flaky.log()));
    let text = flaky.log();
    // zot-ci may not PUT an existing tag: the retry saw the tag in place instead.
    let manifest_puts = flaky.faults.count(&Method::PUT, "/manifests/");
    assert_eq!(manifest_puts, 1, "{text}");
    assert!(
        flaky
            .registry
            .log()
            .rejections()
            .iter()
            .all(|r| r.rejected_by == Some("auth-required-for-write")),
        "the registry refused something:\n{text}"
    );
    flaky.assert_whole("v1", &image);
}

#[test]
fn auth_failures_are_not_retried() {
    let flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");

    let wrong = client(
        &flaky.faults.addr(),
        (CI_USER, "zak_wrong"),
        options(quick(6)),
    );
    let err = flaky
        .push(&wrong, "v1", &image, &store)
        .expect_err("a wrong key must fail");
    assert_eq!(err.kind(), RegistryErrorKind::Unauthorized, "{err}");
    // The anonymous POST is challenged, the one with the key refused: nothing more.
    assert_eq!(
        flaky.faults.count(&Method::POST, "/blobs/uploads/"),
        2,
        "{}",
        flaky.log()
    );

    flaky.faults.clear_log();
    let reader = client(
        &flaky.faults.addr(),
        (READER_USER, flaky.registry.reader_password()),
        options(quick(6)),
    );
    let err = flaky
        .push(&reader, "v1", &image, &store)
        .expect_err("a read-only user must fail");
    assert_eq!(err.kind(), RegistryErrorKind::Denied, "{err}");
    assert_eq!(
        flaky.faults.count(&Method::POST, "/blobs/uploads/"),
        2,
        "{}",
        flaky.log()
    );
    assert_eq!(flaky.faults.count(&Method::PUT, "/"), 0, "{}", flaky.log());
    assert_no_tag(&flaky.registry, "v1");
}

#[test]
fn a_blob_that_never_lands_leaves_no_tag() {
    let flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    let small = digest_hex(&image, 1);
    flaky.faults.add(
        Rule::new(Some(Method::PUT), "/blobs/uploads/", Fault::status(503))
            .query(&small)
            .times(usize::MAX),
    );
    let err = flaky
        .push(&flaky.ci(quick(3)), "v1", &image, &store)
        .expect_err("the push must fail");
    let text = flaky.log();
    assert_eq!(err.kind(), RegistryErrorKind::Unreachable, "{err}\n{text}");
    let message = err.to_string();
    assert!(
        message.contains("push blob")
            && message.contains(&small)
            && message.contains("gave up after 3 attempts"),
        "{message}"
    );
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("503")),
        "{cause:?}"
    );
    assert_eq!(flaky.faults.count(&Method::PUT, "/manifests/"), 0, "{text}");
    assert_no_tag(&flaky.registry, "v1");

    // Once the registry behaves, a rerun pushes only what is missing.
    flaky.faults.clear_rules();
    let report = flaky
        .push(&flaky.ci(quick(3)), "v1", &image, &store)
        .unwrap_or_else(|e| panic!("rerun failed: {e:#}\n{}", flaky.log()));
    assert!(report.blobs_skipped >= 1, "{report:?}");
    flaky.assert_whole("v1", &image);
}

#[test]
fn a_stall_past_the_time_limit_fails_cleanly_in_time() {
    let flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    flaky.faults.add(
        Rule::new(
            Some(Method::HEAD),
            "/manifests/",
            Fault::Stall(Duration::from_secs(30)),
        )
        .times(usize::MAX),
    );
    let retry = RetryPolicy {
        max_elapsed: Duration::from_secs(2),
        ..quick(6)
    };
    let started = Instant::now();
    let err = flaky
        .push(&flaky.ci(retry), "v1", &image, &store)
        .expect_err("a stalled registry must fail the push");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert_eq!(err.kind(), RegistryErrorKind::Unreachable, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("check tag") && message.contains("gave up after 1 attempt"),
        "{message}"
    );
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        cause
            .as_deref()
            .is_some_and(|c| c.contains("did not answer")),
        "{cause:?}"
    );
    assert_no_tag(&flaky.registry, "v1");
}

#[test]
fn a_registry_restart_during_a_push_is_ridden_out() {
    let mut flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    let big = digest_hex(&image, 0);
    // Hold the big blob's upload so the registry goes down while it is in flight.
    flaky.faults.add(
        Rule::new(
            Some(Method::PUT),
            "/blobs/uploads/",
            Fault::Stall(Duration::from_millis(800)),
        )
        .query(&big),
    );
    let retry = RetryPolicy {
        max_attempts: 30,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
        max_elapsed: Duration::from_secs(60),
    };
    let client = flaky.ci(retry);
    let target = flaky.target("v1");
    let result = std::thread::scope(|scope| {
        let pushing = scope.spawn(|| push_with(&client, &target, &image, &store));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !flaky
            .faults
            .requests()
            .iter()
            .any(|r| r.method == Method::POST && r.status == Some(202))
        {
            assert!(Instant::now() < deadline, "no upload started");
            std::thread::sleep(Duration::from_millis(10));
        }
        flaky.registry.stop_upstream();
        std::thread::sleep(Duration::from_millis(1500));
        flaky.registry.restart_upstream();
        pushing.join().expect("push thread")
    });
    result.unwrap_or_else(|e| panic!("push failed: {e:#}\n{}", flaky.log()));
    let text = flaky.log();
    assert!(
        flaky
            .faults
            .requests()
            .iter()
            .any(|r| r.status == Some(502)),
        "the push never met the registry down:\n{text}"
    );
    flaky.assert_whole("v1", &image);
}

#[test]
fn a_rerun_after_the_registry_comes_back_completes() {
    let mut flaky = Flaky::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    flaky.registry.stop_upstream();
    let err = flaky
        .push(&flaky.ci(quick(2)), "v1", &image, &store)
        .expect_err("a push to a registry that is down must fail");
    assert_eq!(err.kind(), RegistryErrorKind::Unreachable, "{err}");
    assert!(
        err.to_string().contains("gave up after 2 attempts"),
        "{err}"
    );
    flaky.registry.restart_upstream();
    assert_no_tag(&flaky.registry, "v1");
    flaky
        .push(&flaky.ci(quick(2)), "v1", &image, &store)
        .unwrap_or_else(|e| panic!("rerun failed: {e:#}\n{}", flaky.log()));
    flaky.assert_whole("v1", &image);
}

/// `blumeops publish` of hello through the faults: the base image is pulled through them too.
fn publish_through(flaky: &Flaky, extra: &[&str]) -> blumeops_e2e::CliOutput {
    let cache = isolated_cache();
    let cache_dir = cache.path().display().to_string();
    let src = workspace_root().display().to_string();
    let addr = flaky.faults.addr();
    let base = format!(
        "BASE_IMAGE={addr}/library/busybox:{}",
        blumeops_e2e::BASE_TAG
    );
    let mut args = vec![
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
        "env:ZOT_CI_API_KEY",
        "--build-arg",
        &base,
        "--progress",
        "plain",
    ];
    args.extend_from_slice(extra);
    let out = run_cli(
        &args,
        &[
            ("ZOT_CI_API_KEY", flaky.registry.ci_password()),
            ("BLUMEOPS_CACHE_DIR", &cache_dir),
        ],
    );
    for secret in flaky.registry.secrets() {
        out.assert_no_secret(secret);
    }
    out
}

#[test]
fn cli_publish_gets_through_drops_and_errors() {
    let flaky = Flaky::start();
    BaseImage::push(&flaky.registry);
    flaky
        .faults
        .add(Rule::new(
            Some(Method::GET),
            "/manifests/",
            Fault::status(503),
        ))
        .add(Rule::new(
            Some(Method::GET),
            "/blobs/sha256:",
            Fault::DropResponse,
        ))
        .add(Rule::new(
            Some(Method::POST),
            "/blobs/uploads/",
            Fault::status(500),
        ))
        .add(Rule::new(
            Some(Method::PUT),
            "/blobs/uploads/",
            Fault::DropAfter(1000),
        ))
        .add(Rule::new(
            Some(Method::PUT),
            "/manifests/",
            Fault::Status {
                status: 429,
                retry_after: Some("1".to_owned()),
            },
        ));
    let out = publish_through(&flaky, &[]);
    out.assert_success();
    let (reference, digest) = out
        .last_line()
        .split_once('@')
        .unwrap_or_else(|| panic!("no REF@DIGEST line\n{out}"));
    assert!(
        reference.ends_with("/blumeops/hello:v1.0.0-abc1234"),
        "{out}"
    );
    let fired = flaky
        .faults
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert_eq!(fired, 5, "{out}\n{}", flaky.log());
    let direct = format!("{}/blumeops/hello:v1.0.0-abc1234", flaky.registry.addr());
    assert_eq!(sha256_digest(&skopeo_inspect_raw(&direct)), digest);
    let dir = tempdir("blumeops-resilience-oci-");
    skopeo_copy_to_oci(&direct, &dir.path().join("layout"), "v1");
    assert!(Path::new(&dir.path().join("layout/index.json")).exists());
}

#[test]
fn cli_publish_stalled_past_retry_max_time_fails_with_exit_5() {
    let flaky = Flaky::start();
    BaseImage::push(&flaky.registry);
    flaky.faults.add(
        Rule::new(
            Some(Method::HEAD),
            "/blumeops/hello/manifests/",
            Fault::Stall(Duration::from_secs(60)),
        )
        .times(usize::MAX),
    );
    let out = publish_through(&flaky, &["--retry-max-time", "2", "--retries", "3"]);
    out.assert_code(5);
    assert!(
        out.elapsed < Duration::from_secs(45),
        "the limit did not hold:\n{out}"
    );
    for want in [
        "check tag",
        "blumeops/hello:v1.0.0-abc1234",
        "gave up after 1 attempt",
        "did not answer within",
        "hint:",
    ] {
        assert!(out.stderr.contains(want), "stderr lacks {want:?}\n{out}");
    }
    assert_no_tag(&flaky.registry, "v1.0.0-abc1234");
}
