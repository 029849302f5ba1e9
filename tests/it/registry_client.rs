//! The registry client library (`blumeops_core::RegistryClient`) against a real distribution
//! registry behind the zot-emulating proxy: auth challenges, uploads, tag policy, errors and
//! pulls, checked through the proxy's request log and with skopeo/umoci.

use std::time::{Duration, Instant};

use blumeops_core::{
    ClientOptions, ImageRef, Platform, RegistryClient, RegistryError, RegistryErrorKind, Store,
    StoredImage, TagPolicy, media_types,
};
use blumeops_e2e::tools::{skopeo, skopeo_copy_to_oci, skopeo_inspect_raw, umoci_unpack};
use blumeops_e2e::zot_proxy::OCI_MANIFEST;
use blumeops_e2e::{
    ADMIN_USER, BaseImage, CI_USER, READER_USER, RequestRecord, TestRegistry, free_port,
    sha256_digest, tempdir,
};
use http::Method;

use crate::test_images::{
    assert_blobs_verified, build_image, client_for, store, write_index_layout,
};

const REPO: &str = "blumeops/hello";

fn client(registry: &TestRegistry, user: Option<(&str, &str)>) -> RegistryClient {
    client_for(&registry.addr(), user)
}

fn ci(registry: &TestRegistry) -> RegistryClient {
    client(registry, Some((CI_USER, registry.ci_password())))
}

fn admin(registry: &TestRegistry) -> RegistryClient {
    client(registry, Some((ADMIN_USER, registry.admin_password())))
}

fn anonymous(registry: &TestRegistry) -> RegistryClient {
    client(registry, None)
}

/// `ADDR/REPO:TAG` as an [`ImageRef`].
fn reference(registry: &TestRegistry, repo_tag: &str) -> ImageRef {
    format!("{}/{repo_tag}", registry.addr())
        .parse()
        .expect("valid reference")
}

fn push(
    registry: &TestRegistry,
    client: &RegistryClient,
    target: &ImageRef,
    image: &StoredImage,
    store: &Store,
    policy: TagPolicy,
) -> Result<blumeops_core::PushReport, RegistryError> {
    registry.block_on(client.push_image(target, image, store, policy))
}

fn pull(
    registry: &TestRegistry,
    client: &RegistryClient,
    reference: &ImageRef,
    platform: &str,
    store: &Store,
) -> Result<blumeops_core::PulledImage, RegistryError> {
    let platform: Platform = platform.parse().expect("valid platform");
    registry.block_on(client.pull_image(reference, &platform, store))
}

/// The manifest digest behind `ADDR/REPO:TAG`, read with skopeo.
fn skopeo_digest(registry: &TestRegistry, repo_tag: &str) -> String {
    sha256_digest(&skopeo_inspect_raw(&format!(
        "{}/{repo_tag}",
        registry.addr()
    )))
}

/// The `digest=` query parameter of a final upload `PUT`.
fn query_digest(record: &RequestRecord) -> Option<String> {
    url::form_urlencoded::parse(record.query.as_deref()?.as_bytes())
        .find(|(k, _)| k == "digest")
        .map(|(_, v)| v.into_owned())
}

/// Push image `a` to `REPO:v1` as `zot-ci`, then forget the log.
fn pushed_v1(registry: &TestRegistry, store: &Store) -> StoredImage {
    let image = build_image(store, "a", "amd64");
    let target = reference(registry, &format!("{REPO}:v1"));
    push(
        registry,
        &ci(registry),
        &target,
        &image,
        store,
        TagPolicy::CreateOnly,
    )
    .unwrap_or_else(|e| panic!("push failed: {e}\n{}", registry.log_summary()));
    registry.clear_log();
    image
}

#[test]
fn push_answers_the_first_write_challenge_and_uploads_with_content_length() {
    let registry = TestRegistry::start();
    // Like zot with anonymous read: the ping is no challenge, the first write is.
    let http = registry.http_client();
    let ping = registry
        .block_on(async { http.get(format!("{}/v2/", registry.url())).send().await })
        .expect("ping");
    assert_eq!(ping.status(), 200);
    registry.clear_log();

    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    let target = reference(&registry, &format!("{REPO}:v1"));
    let report = push(
        &registry,
        &ci(&registry),
        &target,
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .unwrap_or_else(|e| panic!("push failed: {e}\n{}", registry.log_summary()));
    let log_text = registry.log_summary();
    assert_eq!(report.digest, image.manifest.digest);
    assert!(!report.unchanged);
    assert_eq!((report.blobs_uploaded, report.blobs_skipped), (3, 0));
    assert_eq!(
        report.bytes_uploaded,
        image.blobs().map(|b| b.size).sum::<u64>()
    );

    let log = registry.requests();
    // The tag check goes out anonymously.
    let first = &log[0];
    assert!(
        first.method == Method::HEAD && first.is_manifest() && !first.had_auth,
        "{log_text}"
    );
    assert_eq!(first.status, 404, "{log_text}");
    // The only 401s are anonymous upload starts, each answered with zot-ci's Basic credentials.
    let challenged: Vec<_> = log.iter().filter(|r| r.status == 401).collect();
    assert!(!challenged.is_empty(), "no write challenge:\n{log_text}");
    for r in &challenged {
        assert!(
            r.method == Method::POST && r.is_blob_upload() && !r.had_auth,
            "{log_text}"
        );
        assert_eq!(r.rejected_by, Some("auth-required-for-write"), "{log_text}");
    }
    let retried = log
        .iter()
        .filter(|r| r.method == Method::POST && r.status == 202)
        .count();
    assert_eq!(retried, 3, "{log_text}");
    for r in log
        .iter()
        .filter(|r| r.status != 401 && r.method != Method::HEAD)
    {
        assert_eq!(r.user.as_deref(), Some(CI_USER), "{log_text}");
    }
    assert_eq!(
        registry.log().rejections().len(),
        challenged.len(),
        "{log_text}"
    );

    // Each blob in one final PUT to the relative Location (its `_state` kept), with a
    // Content-Length equal to the blob's size, never chunked; no PATCH, no DELETE.
    let puts: Vec<_> = registry
        .blob_uploads()
        .into_iter()
        .filter(|r| r.method == Method::PUT)
        .collect();
    assert_eq!(puts.len(), 3, "{log_text}");
    for put in &puts {
        let digest = query_digest(put).expect("final PUT names its digest");
        let blob = image
            .blobs()
            .find(|b| b.digest.to_string() == digest)
            .unwrap_or_else(|| panic!("PUT of unknown blob {digest}"));
        assert_eq!(put.status, 201, "{log_text}");
        assert_eq!(put.content_length, Some(blob.size), "{put:?}");
        assert!(!put.chunked, "{put:?}");
        assert_eq!(
            put.content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert!(
            put.path.starts_with(&format!("/v2/{REPO}/blobs/uploads/")),
            "{put:?}"
        );
        assert!(
            put.query.as_deref().is_some_and(|q| q.contains("_state=")),
            "{put:?}"
        );
    }
    assert_eq!(registry.count(&Method::PATCH, "/"), 0, "{log_text}");
    assert_eq!(registry.count(&Method::DELETE, "/"), 0, "{log_text}");

    // The manifest goes last, once, with its exact media type.
    let manifest_puts = registry.manifest_puts();
    assert_eq!(manifest_puts.len(), 1, "{log_text}");
    assert_eq!(log.last(), Some(&manifest_puts[0]));
    assert_eq!(manifest_puts[0].status, 201);
    assert_eq!(manifest_puts[0].content_type.as_deref(), Some(OCI_MANIFEST));

    // skopeo sees the same bytes, and umoci unpacks real layers.
    assert_eq!(
        skopeo_inspect_raw(&target.to_string()),
        image.manifest.bytes
    );
    let out = tempdir("blumeops-client-unpack-");
    let layout = out.path().join("layout");
    skopeo_copy_to_oci(&target.to_string(), &layout, "v1");
    let bundle = out.path().join("bundle");
    umoci_unpack(&format!("{}:v1", layout.display()), &bundle);
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/etc/salt")).expect("salt file"),
        "a amd64\n"
    );
    assert_eq!(
        std::fs::metadata(bundle.join("rootfs/data/shared.bin"))
            .expect("shared file")
            .len(),
        600 * 1024
    );
}

#[test]
fn repush_of_the_same_image_sends_one_head_and_nothing_else() {
    let registry = TestRegistry::start();
    let (_dir, store) = store();
    let image = pushed_v1(&registry, &store);
    let target = reference(&registry, &format!("{REPO}:v1"));

    let report = push(
        &registry,
        &ci(&registry),
        &target,
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .unwrap_or_else(|e| panic!("re-push failed: {e}\n{}", registry.log_summary()));
    assert!(report.unchanged);
    assert_eq!(report.digest, image.manifest.digest);
    assert_eq!((report.blobs_uploaded, report.bytes_uploaded), (0, 0));

    let log = registry.requests();
    let log_text = registry.log_summary();
    assert_eq!(log.len(), 1, "{log_text}");
    assert!(
        log[0].method == Method::HEAD && log[0].is_manifest() && log[0].status == 200,
        "{log_text}"
    );
    assert!(registry.manifest_puts().is_empty(), "{log_text}");
    assert!(registry.blob_uploads().is_empty(), "{log_text}");
    assert_eq!(registry.count(&Method::HEAD, "/blobs/"), 0, "{log_text}");

    // The same with overwrite allowed: the digest matches, so still nothing to write.
    registry.clear_log();
    let report = push(
        &registry,
        &ci(&registry),
        &target,
        &image,
        &store,
        TagPolicy::AllowOverwrite,
    )
    .unwrap_or_else(|e| panic!("re-push failed: {e}\n{}", registry.log_summary()));
    assert!(report.unchanged);
    assert_eq!(registry.requests().len(), 1, "{}", registry.log_summary());
}

#[test]
fn tag_conflict_is_reported_before_any_write_and_keeps_the_tag() {
    let registry = TestRegistry::start();
    let (_dir, store) = store();
    let image = pushed_v1(&registry, &store);
    let other = build_image(&store, "b", "amd64");
    let target = reference(&registry, &format!("{REPO}:v1"));

    let err = push(
        &registry,
        &ci(&registry),
        &target,
        &other,
        &store,
        TagPolicy::CreateOnly,
    )
    .expect_err("a different image for an existing tag must fail");
    assert_eq!(err.kind(), RegistryErrorKind::TagConflict, "{err}");
    let msg = err.to_string();
    for want in [
        image.manifest.digest.to_string(),
        other.manifest.digest.to_string(),
        target.to_string(),
    ] {
        assert!(msg.contains(&want), "{msg} lacks {want}");
    }
    assert!(err.hint().is_some_and(|h| h.contains("--allow-overwrite")));

    let log_text = registry.log_summary();
    assert_eq!(registry.requests().len(), 1, "{log_text}");
    assert!(registry.manifest_puts().is_empty(), "{log_text}");
    assert!(registry.blob_uploads().is_empty(), "{log_text}");
    assert_eq!(
        skopeo_digest(&registry, &format!("{REPO}:v1")),
        image.manifest.digest.to_string()
    );
}

#[test]
fn overwrite_by_a_create_only_account_is_denied_once_and_not_retried() {
    let registry = TestRegistry::start();
    let (_dir, store) = store();
    let image = pushed_v1(&registry, &store);
    let other = build_image(&store, "b", "amd64");
    let target = reference(&registry, &format!("{REPO}:v1"));

    let err = push(
        &registry,
        &ci(&registry),
        &target,
        &other,
        &store,
        TagPolicy::AllowOverwrite,
    )
    .expect_err("zot-ci may not update a tag");
    let log_text = registry.log_summary();
    assert_eq!(err.kind(), RegistryErrorKind::Denied, "{err}\n{log_text}");
    let msg = err.to_string();
    for want in [
        "push manifest",
        &registry.addr(),
        REPO,
        CI_USER,
        "403",
        "DENIED",
    ] {
        assert!(msg.contains(want), "{msg} lacks {want}");
    }
    assert!(
        err.hint().is_some_and(|h| h.contains(CI_USER)),
        "{:?}",
        err.hint()
    );

    // Exactly one manifest PUT, refused by the proxy's permission rule; no re-login.
    let manifest_puts = registry.manifest_puts();
    assert_eq!(manifest_puts.len(), 1, "{log_text}");
    assert_eq!(manifest_puts[0].status, 403);
    assert_eq!(manifest_puts[0].rejected_by, Some("permission-denied"));
    assert_eq!(manifest_puts[0].user.as_deref(), Some(CI_USER));
    // Only the new layer was uploaded (creating blobs is allowed); the shared one was skipped.
    let uploaded: Vec<_> = registry
        .blob_uploads()
        .into_iter()
        .filter(|r| r.method == Method::PUT && r.status == 201)
        .filter_map(|r| query_digest(&r))
        .collect();
    let new_blobs: Vec<_> = other
        .blobs()
        .filter(|b| image.blobs().all(|o| o.digest != b.digest))
        .map(|b| b.digest.to_string())
        .collect();
    assert_eq!(uploaded.len(), new_blobs.len(), "{log_text}");
    assert!(uploaded.iter().all(|d| new_blobs.contains(d)), "{log_text}");
    assert_eq!(
        skopeo_digest(&registry, &format!("{REPO}:v1")),
        image.manifest.digest.to_string(),
        "the tag must not move"
    );

    // An account with `update` may replace the tag.
    registry.clear_log();
    let report = push(
        &registry,
        &admin(&registry),
        &target,
        &other,
        &store,
        TagPolicy::AllowOverwrite,
    )
    .unwrap_or_else(|e| panic!("admin overwrite failed: {e}\n{}", registry.log_summary()));
    assert!(!report.unchanged);
    assert_eq!(report.blobs_uploaded, 0, "every blob is already there");
    // The admin's first write (the manifest PUT) is challenged, then answered.
    let manifest_puts = registry.manifest_puts();
    let statuses: Vec<_> = manifest_puts
        .iter()
        .map(|r| (r.status, r.user.as_deref()))
        .collect();
    assert_eq!(
        statuses,
        [(401, None), (201, Some(ADMIN_USER))],
        "{}",
        registry.log_summary()
    );
    assert_eq!(
        skopeo_digest(&registry, &format!("{REPO}:v1")),
        other.manifest.digest.to_string()
    );
}

#[test]
fn read_only_account_is_denied_at_the_first_write() {
    let registry = TestRegistry::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    let target = reference(&registry, &format!("{REPO}:v1"));
    let reader = client(&registry, Some((READER_USER, registry.reader_password())));
    let err = push(
        &registry,
        &reader,
        &target,
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .expect_err("a reader may not push");
    let log_text = registry.log_summary();
    assert_eq!(err.kind(), RegistryErrorKind::Denied, "{err}\n{log_text}");
    assert!(err.to_string().contains(READER_USER), "{err}");
    assert!(registry.manifest_puts().is_empty(), "{log_text}");
    // Each refused upload start was tried once with credentials, never again.
    let denied = registry
        .requests()
        .into_iter()
        .filter(|r| r.status == 403)
        .count();
    assert!(
        (1..=blumeops_core::DEFAULT_MAX_PARALLEL_UPLOADS).contains(&denied),
        "{log_text}"
    );
}

#[test]
fn wrong_password_is_unauthorized_naming_registry_and_user_never_the_password() {
    let registry = TestRegistry::start();
    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    let target = reference(&registry, &format!("{REPO}:v1"));
    let wrong = "zak_ffffffffffffffffffffffffffffffff";
    let err = push(
        &registry,
        &client(&registry, Some((CI_USER, wrong))),
        &target,
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .expect_err("a wrong key must fail");
    let log_text = registry.log_summary();
    assert_eq!(
        err.kind(),
        RegistryErrorKind::Unauthorized,
        "{err}\n{log_text}"
    );
    let display = err.to_string();
    for want in [registry.addr().as_str(), CI_USER, "401 Unauthorized"] {
        assert!(display.contains(want), "{display} lacks {want}");
    }
    let shown = format!("{err} {err:?} {:?}", err.hint());
    assert!(!shown.contains(wrong), "password leaked: {shown}");
    for secret in registry.secrets() {
        assert!(!shown.contains(secret), "a registry secret leaked: {shown}");
    }
    // Wrong credentials were sent (after the write challenge) and refused, nothing written.
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.rejected_by == Some("auth-invalid-credentials")),
        "{log_text}"
    );
    assert!(registry.manifest_puts().is_empty(), "{log_text}");
    assert!(
        registry
            .blob_uploads()
            .iter()
            .all(|r| r.method == Method::POST && r.status == 401),
        "{log_text}"
    );

    // Without credentials: authentication is required, with a hint how to give them.
    let err = push(
        &registry,
        &anonymous(&registry),
        &target,
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .expect_err("an anonymous push must fail");
    assert_eq!(err.kind(), RegistryErrorKind::Unauthorized, "{err}");
    assert!(
        err.to_string().contains("authentication is required"),
        "{err}"
    );
    assert!(
        err.hint()
            .is_some_and(|h| h.contains("--registry-username")),
        "{:?}",
        err.hint()
    );
}

#[test]
fn pull_of_a_skopeo_pushed_image_verifies_every_blob() {
    let registry = TestRegistry::start();
    let base = BaseImage::push(&registry);
    registry.clear_log();
    let (_dir, store) = store();
    let reference: ImageRef = base.reference.parse().expect("valid reference");
    let pulled = pull(
        &registry,
        &anonymous(&registry),
        &reference,
        &Platform::host().to_string(),
        &store,
    )
    .unwrap_or_else(|e| panic!("pull failed: {e}\n{}", registry.log_summary()));
    assert_eq!(pulled.image.manifest.digest.to_string(), base.digest);
    assert_blobs_verified(&store, &pulled.image);
    // Byte for byte what skopeo pushed from the layout.
    let layout = BaseImage::layout();
    for blob in pulled.image.blobs() {
        let original = std::fs::read(layout.join("blobs/sha256").join(blob.digest.hex()))
            .expect("blob in the base layout");
        assert_eq!(
            std::fs::read(store.blob_path(&blob.digest)).expect("pulled blob"),
            original
        );
    }
    assert_eq!(
        pulled.config.architecture().to_string(),
        Platform::host().architecture()
    );

    // Reads only, all anonymous, each blob fetched once.
    let log_text = registry.log_summary();
    let log = registry.requests();
    assert!(
        log.iter()
            .all(|r| !r.had_auth && (r.method == Method::GET || r.method == Method::HEAD)),
        "{log_text}"
    );
    for blob in pulled.image.blobs() {
        assert_eq!(
            registry.count(&Method::GET, &format!("/blobs/{}", blob.digest)),
            1,
            "{log_text}"
        );
    }

    // Pulling again into the same store fetches the manifest only.
    registry.clear_log();
    pull(
        &registry,
        &anonymous(&registry),
        &reference,
        &Platform::host().to_string(),
        &store,
    )
    .expect("second pull");
    assert_eq!(
        registry.count(&Method::GET, "/blobs/"),
        0,
        "{}",
        registry.log_summary()
    );
}

#[test]
fn pull_selects_the_platform_from_an_oci_index_pushed_by_skopeo() {
    let registry = TestRegistry::start();
    let (_dir, source) = store();
    let amd64 = build_image(&source, "multi", "amd64");
    let arm64 = build_image(&source, "multi", "arm64");
    let work = tempdir("blumeops-client-index-");
    let layout = work.path().join("layout");
    let index_digest = write_index_layout(
        &layout,
        "multi",
        &source,
        &[("amd64", &amd64), ("arm64", &arm64)],
    );
    let dest = format!("docker://{}/{REPO}:multi", registry.addr());
    let creds = format!("{ADMIN_USER}:{}", registry.admin_password());
    let src = format!("oci:{}:multi", layout.display());
    let output = skopeo(&[
        "copy",
        "--all",
        "--retry-times=0",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &dest,
    ]);
    assert!(
        output.status.success(),
        "skopeo copy --all failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        registry.log_summary()
    );
    assert_eq!(
        skopeo_digest(&registry, &format!("{REPO}:multi")),
        index_digest
    );
    registry.clear_log();

    let multi = reference(&registry, &format!("{REPO}:multi"));
    let (_dir2, dest_store) = store();
    let c = anonymous(&registry);
    let pulled = pull(&registry, &c, &multi, "linux/arm64", &dest_store)
        .unwrap_or_else(|e| panic!("pull failed: {e}\n{}", registry.log_summary()));
    assert_eq!(pulled.image, arm64);
    assert_eq!(pulled.config.architecture().to_string(), "arm64");
    assert_blobs_verified(&dest_store, &arm64);
    // The index by tag, then the chosen manifest by digest; nothing of the other platform.
    let log_text = registry.log_summary();
    assert_eq!(
        registry.count(
            &Method::GET,
            &format!("/manifests/{}", arm64.manifest.digest)
        ),
        1,
        "{log_text}"
    );
    assert_eq!(
        registry.count(
            &Method::GET,
            &format!("/manifests/{}", amd64.manifest.digest)
        ),
        0,
        "{log_text}"
    );
    assert!(!dest_store.has_blob(&amd64.config.digest));

    let pulled = pull(&registry, &c, &multi, "linux/amd64", &dest_store).expect("amd64 pull");
    assert_eq!(pulled.image, amd64);

    let err = pull(&registry, &c, &multi, "linux/s390x", &dest_store)
        .expect_err("no s390x image in the index");
    assert_eq!(err.kind(), RegistryErrorKind::NotFound, "{err}");
    assert!(
        err.to_string()
            .contains("available: linux/amd64, linux/arm64"),
        "{err}"
    );
}

#[test]
fn pull_through_a_docker_manifest_list() {
    // zot refuses Docker media types, so the list goes straight to the distribution
    // registry (as an admin would have put it there); the client reads it through the proxy.
    let registry = TestRegistry::start();
    let (_dir, source) = store();
    let amd64 = build_image(&source, "docker", "amd64");
    let arm64 = build_image(&source, "docker", "arm64");
    for (tag, image) in [("amd64", &amd64), ("arm64", &arm64)] {
        let target = reference(&registry, &format!("{REPO}:{tag}"));
        push(
            &registry,
            &ci(&registry),
            &target,
            image,
            &source,
            TagPolicy::CreateOnly,
        )
        .unwrap_or_else(|e| panic!("push failed: {e}\n{}", registry.log_summary()));
    }
    let entry = |image: &StoredImage, architecture: &str| {
        serde_json::json!({
            "mediaType": media_types::OCI_MANIFEST,
            "digest": image.manifest.digest.to_string(),
            "size": image.manifest.bytes.len(),
            "platform": {"architecture": architecture, "os": "linux"},
        })
    };
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::DOCKER_MANIFEST_LIST,
        "manifests": [entry(&amd64, "amd64"), entry(&arm64, "arm64")],
    });
    let list_bytes = serde_json::to_vec(&list).expect("list serializes");
    let (user, password) = registry.upstream_credentials();
    let url = format!(
        "http://{}/v2/{REPO}/manifests/list",
        registry.upstream_addr()
    );
    let http = registry.http_client();
    let response = registry
        .block_on(async {
            http.put(url)
                .basic_auth(user, Some(password))
                .header("content-type", media_types::DOCKER_MANIFEST_LIST)
                .body(list_bytes.clone())
                .send()
                .await
        })
        .expect("PUT the manifest list upstream");
    assert_eq!(response.status(), 201);
    registry.clear_log();

    let (_dir2, dest) = store();
    let list_ref = reference(&registry, &format!("{REPO}:list"));
    let pulled = pull(
        &registry,
        &anonymous(&registry),
        &list_ref,
        "linux/arm64",
        &dest,
    )
    .unwrap_or_else(|e| panic!("pull failed: {e}\n{}", registry.log_summary()));
    assert_eq!(pulled.image, arm64);
    assert_blobs_verified(&dest, &arm64);
    let head = registry
        .block_on(anonymous(&registry).head_manifest(&list_ref))
        .expect("HEAD of the list");
    assert_eq!(head, Some(blumeops_core::Digest::of(&list_bytes)));
}

#[test]
fn tampered_blob_in_registry_storage_is_an_integrity_error_and_not_stored() {
    let registry = TestRegistry::start();
    let (_dir, source) = store();
    let image = pushed_v1(&registry, &source);
    // Corrupt the salt layer on the registry's disk, keeping its size.
    let layer = &image.layers[1];
    let data = registry.blob_data_path(&layer.digest.to_string());
    let mut bytes = std::fs::read(&data).expect("blob data on disk");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).expect("tamper with the blob");

    let (_dir2, dest) = store();
    let target = reference(&registry, &format!("{REPO}:v1"));
    let err = pull(
        &registry,
        &anonymous(&registry),
        &target,
        "linux/amd64",
        &dest,
    )
    .expect_err("a corrupted blob must fail the pull");
    assert_eq!(err.kind(), RegistryErrorKind::Integrity, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&layer.digest.to_string()) && msg.contains(&registry.addr()),
        "{msg}"
    );
    assert!(!dest.has_blob(&layer.digest));
    assert!(!dest.has_blob(&blumeops_core::Digest::of(&bytes)));
}

#[test]
fn unreachable_registry_fails_fast_naming_the_url() {
    let addr = format!("127.0.0.1:{}", free_port());
    let reference: ImageRef = format!("{addr}/{REPO}:v1").parse().expect("reference");
    // Connection errors are retried: three quick attempts, then the last error is reported.
    let client = RegistryClient::new(ClientOptions {
        retry: blumeops_core::RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            ..blumeops_core::RetryPolicy::default()
        },
        ..ClientOptions::default()
    })
    .expect("client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let err = runtime
        .block_on(client.head_manifest(&reference))
        .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), RegistryErrorKind::Unreachable, "{err}");
    assert!(
        err.to_string().contains("gave up after 3 attempts"),
        "{err}"
    );
    let last = std::error::Error::source(&err)
        .expect("the last error")
        .to_string();
    assert!(last.contains(&format!("http://{addr}/")), "{last}");
    assert!(err.hint().is_some(), "{err}");

    let (_dir, store) = store();
    let image = build_image(&store, "a", "amd64");
    let err = runtime
        .block_on(client.push_image(&reference, &image, &store, TagPolicy::CreateOnly))
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), RegistryErrorKind::Unreachable, "{err}");
}

/// `zot-ci` with a state directory: what one client learns, a later one knows.
fn ci_with_state(registry: &TestRegistry, state: &std::path::Path) -> RegistryClient {
    let credentials = blumeops_core::Credentials::default().with_registry(
        &registry.addr(),
        blumeops_core::Credential {
            username: CI_USER.to_owned(),
            password: blumeops_core::Secret::new(registry.ci_password()),
        },
    );
    RegistryClient::new(ClientOptions {
        credentials,
        state_dir: Some(state.to_owned()),
        ..ClientOptions::default()
    })
    .expect("failed to build a registry client")
}

#[test]
fn a_later_push_sends_credentials_first_and_skips_blobs_the_repository_took() {
    let registry = TestRegistry::start();
    let (_dir, store) = store();
    let state = tempdir("blumeops-client-state-");
    let image = build_image(&store, "a", "amd64");
    push(
        &registry,
        &ci_with_state(&registry, state.path()),
        &reference(&registry, &format!("{REPO}:v1")),
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .unwrap_or_else(|e| panic!("push failed: {e}\n{}", registry.log_summary()));
    assert!(
        registry.requests().iter().any(|r| r.status == 401),
        "the first run learns the scheme from a challenge\n{}",
        registry.log_summary()
    );

    // Another run (a new client) pushes the same image to a new tag: the tag check and the
    // manifest, with credentials from the first request, and no blob request at all.
    registry.clear_log();
    let report = push(
        &registry,
        &ci_with_state(&registry, state.path()),
        &reference(&registry, &format!("{REPO}:v2")),
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .unwrap_or_else(|e| panic!("push failed: {e}\n{}", registry.log_summary()));
    let log_text = registry.log_summary();
    let steps: Vec<(Method, bool, u16)> = registry
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.is_manifest(), r.status))
        .collect();
    assert_eq!(
        steps,
        [(Method::HEAD, true, 404), (Method::PUT, true, 201)],
        "{log_text}"
    );
    assert!(registry.requests().iter().all(|r| r.had_auth), "{log_text}");
    assert_eq!(
        (report.blobs_uploaded, report.blobs_skipped),
        (0, 3),
        "{log_text}"
    );
    assert_eq!(
        skopeo_digest(&registry, &format!("{REPO}:v2")),
        image.manifest.digest.to_string()
    );

    // A client without the state asks as before.
    registry.clear_log();
    push(
        &registry,
        &ci(&registry),
        &reference(&registry, &format!("{REPO}:v3")),
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .unwrap_or_else(|e| panic!("push failed: {e}\n{}", registry.log_summary()));
    assert_eq!(
        registry.count(&Method::HEAD, "/blobs/"),
        3,
        "{}",
        registry.log_summary()
    );
}

#[test]
fn a_blob_taken_on_trust_but_gone_is_uploaded_again_before_the_manifest() {
    let registry = TestRegistry::start();
    let (_dir, store) = store();
    let state = tempdir("blumeops-client-state-");
    let image = build_image(&store, "a", "amd64");
    push(
        &registry,
        &ci_with_state(&registry, state.path()),
        &reference(&registry, &format!("{REPO}:v1")),
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .unwrap_or_else(|e| panic!("push failed: {e}\n{}", registry.log_summary()));
    // The repository loses a layer (deleted behind the client's back).
    let gone = &image.layers[1].digest;
    let link = registry
        .storage_dir()
        .join("docker/registry/v2/repositories")
        .join(REPO)
        .join("_layers/sha256")
        .join(gone.hex());
    std::fs::remove_dir_all(&link).expect("remove the layer's link");

    registry.clear_log();
    let report = push(
        &registry,
        &ci_with_state(&registry, state.path()),
        &reference(&registry, &format!("{REPO}:v2")),
        &image,
        &store,
        TagPolicy::CreateOnly,
    )
    .unwrap_or_else(|e| panic!("push failed: {e}\n{}", registry.log_summary()));
    let log_text = registry.log_summary();
    // The manifest is refused for the missing blob, every blob is checked, the missing one
    // uploaded, and the manifest goes again.
    let puts = registry.manifest_puts();
    assert_eq!(puts.len(), 2, "{log_text}");
    assert!(puts[0].status >= 400 && puts[1].status == 201, "{log_text}");
    assert_eq!(registry.count(&Method::HEAD, "/blobs/"), 3, "{log_text}");
    let uploaded: Vec<String> = registry
        .blob_uploads()
        .iter()
        .filter(|r| r.status == 201)
        .filter_map(query_digest)
        .collect();
    assert_eq!(uploaded, [gone.to_string()], "{log_text}");
    assert_eq!(report.blobs_uploaded, 1, "{log_text}");
    assert_eq!(
        skopeo_digest(&registry, &format!("{REPO}:v2")),
        image.manifest.digest.to_string()
    );
}
