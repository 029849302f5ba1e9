//! The harness itself: the registry comes up and the proxy enforces zot's rules, checked
//! with raw HTTP and with skopeo as an independent client.

use blumeops_e2e::tools::{skopeo_inspect, skopeo_inspect_raw, skopeo_push};
use blumeops_e2e::zot_proxy::{DOCKER_MANIFEST, OCI_MANIFEST};
use blumeops_e2e::{ADMIN_USER, BaseImage, CI_USER, READER_USER, TestRegistry, sha256_digest};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

/// A response read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn send(registry: &TestRegistry, request: reqwest::RequestBuilder) -> Reply {
    registry.block_on(async {
        let response = request.send().await.expect("request failed");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("failed to read body");
        Reply {
            status,
            headers,
            body,
        }
    })
}

fn request(
    registry: &TestRegistry,
    method: Method,
    path: &str,
    creds: Option<(&str, &str)>,
) -> reqwest::RequestBuilder {
    let client = registry.http_client();
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{}{path}", registry.url())
    };
    let builder = client.request(method, url);
    match creds {
        Some((user, password)) => builder.basic_auth(user, Some(password)),
        None => builder,
    }
}

fn admin(registry: &TestRegistry) -> Option<(&str, &str)> {
    Some((ADMIN_USER, registry.admin_password()))
}

fn ci(registry: &TestRegistry) -> Option<(&str, &str)> {
    Some((CI_USER, registry.ci_password()))
}

fn assert_basic_challenge(reply: &Reply) {
    let challenge = reply
        .header("www-authenticate")
        .expect("a WWW-Authenticate header");
    assert!(
        challenge.to_ascii_lowercase().starts_with("basic realm="),
        "unexpected challenge {challenge}"
    );
}

/// Push the base image as admin and return the raw manifest of `library/busybox:1.37`.
fn base_manifest(registry: &TestRegistry) -> Vec<u8> {
    let pushed = BaseImage::push(registry);
    skopeo_inspect_raw(&pushed.reference)
}

/// Start an upload session as `admin`; returns the relative Location.
fn start_upload(registry: &TestRegistry, repo: &str) -> String {
    let reply = send(
        registry,
        request(
            registry,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            admin(registry),
        ),
    );
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    reply.header("location").expect("Location").to_owned()
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

#[test]
fn anonymous_ping_is_200() {
    let registry = TestRegistry::start();
    let reply = send(&registry, request(&registry, Method::GET, "/v2/", None));
    assert_eq!(reply.status, StatusCode::OK);
    let records = registry.requests();
    assert_eq!(records.len(), 1);
    assert!(!records[0].had_auth);
    assert_eq!(records[0].status, 200);
}

#[test]
fn docker_client_ping_is_challenged() {
    let registry = TestRegistry::start();
    let reply = send(
        &registry,
        request(&registry, Method::GET, "/v2/", None).header("user-agent", "docker/27.0.1 go/1.22"),
    );
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_basic_challenge(&reply);
}

#[test]
fn anonymous_upload_is_401_with_bare_body() {
    let registry = TestRegistry::start();
    let reply = send(
        &registry,
        request(
            &registry,
            Method::POST,
            "/v2/blumeops/x/blobs/uploads/",
            None,
        ),
    );
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Basic realm=\"zot\"")
    );
    let body = reply.json();
    assert_eq!(body["code"], "UNAUTHORIZED");
    assert!(
        body.get("errors").is_none(),
        "zot's 401 body is bare: {body}"
    );
    assert!(body["detail"].is_object());
    assert_eq!(registry.blob_uploads().len(), 1);
    assert_eq!(
        registry.blob_uploads()[0].rejected_by,
        Some("auth-required-for-write")
    );
}

#[test]
fn wrong_password_is_401_even_for_reads() {
    let registry = TestRegistry::start();
    for method in [Method::POST, Method::GET] {
        let path = if method == Method::POST {
            "/v2/blumeops/x/blobs/uploads/"
        } else {
            "/v2/"
        };
        let reply = send(
            &registry,
            request(&registry, method, path, Some((CI_USER, "zak_not-the-key"))),
        );
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_basic_challenge(&reply);
        assert_eq!(reply.json()["code"], "UNAUTHORIZED");
    }
    // The right key works.
    let reply = send(
        &registry,
        request(&registry, Method::GET, "/v2/", ci(&registry)),
    );
    assert_eq!(reply.status, StatusCode::OK);
}

#[test]
fn skopeo_pushes_base_image_as_admin_with_oci_types() {
    let registry = TestRegistry::start();
    let pushed = BaseImage::push(&registry);
    let inspect = skopeo_inspect(&pushed.reference);
    assert_eq!(inspect["Digest"], pushed.digest.as_str());
    assert_eq!(inspect["Os"], "linux");
    let reply = send(
        &registry,
        request(
            &registry,
            Method::GET,
            "/v2/library/busybox/manifests/1.37",
            None,
        ),
    );
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(sha256_digest(&reply.body), pushed.digest);
    let puts = registry.manifest_puts();
    assert_eq!(puts.len(), 1, "{}", registry.log_summary());
    assert_eq!(puts[0].status, 201);
    assert_eq!(puts[0].content_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(puts[0].user.as_deref(), Some(ADMIN_USER));
    assert!(
        registry.log().rejections().is_empty(),
        "{}",
        registry.log_summary()
    );
}

#[test]
fn ci_user_creates_new_tag_but_cannot_overwrite_it() {
    let registry = TestRegistry::start();
    let src = BaseImage::oci_reference();
    let dest = format!("{}/blumeops/busybox:1.37", registry.addr());
    let first = skopeo_push(&src, &dest, CI_USER, registry.ci_password());
    assert!(
        first.status.success(),
        "zot-ci push to a new tag failed: {}\n{}",
        String::from_utf8_lossy(&first.stderr),
        registry.log_summary()
    );
    let digest = skopeo_inspect(&dest)["Digest"].clone();

    registry.clear_log();
    let again = skopeo_push(&src, &dest, CI_USER, registry.ci_password());
    assert!(!again.status.success(), "zot-ci overwrote an existing tag");
    let puts = registry.manifest_puts();
    assert!(
        !puts.is_empty() && puts.iter().all(|p| p.status == 403),
        "{}",
        registry.log_summary()
    );
    assert_eq!(puts[0].rejected_by, Some("permission-denied"));
    assert_eq!(skopeo_inspect(&dest)["Digest"], digest);

    let as_admin = skopeo_push(&src, &dest, ADMIN_USER, registry.admin_password());
    assert!(
        as_admin.status.success(),
        "admin update failed: {}",
        String::from_utf8_lossy(&as_admin.stderr)
    );
}

#[test]
fn manifest_put_with_charset_is_415() {
    let registry = TestRegistry::start();
    let manifest = base_manifest(&registry);
    let put = |content_type: &str, tag: &str| {
        send(
            &registry,
            request(
                &registry,
                Method::PUT,
                &format!("/v2/library/busybox/manifests/{tag}"),
                admin(&registry),
            )
            .header("content-type", content_type)
            .body(manifest.clone()),
        )
    };
    let reply = put(&format!("{OCI_MANIFEST}; charset=utf-8"), "charset");
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply.json()["errors"][0]["code"], "MANIFEST_INVALID");
    assert_eq!(put(OCI_MANIFEST, "exact").status, StatusCode::CREATED);
}

#[test]
fn docker_media_types_are_refused() {
    let registry = TestRegistry::start();
    let manifest = base_manifest(&registry);
    let reply = send(
        &registry,
        request(
            &registry,
            Method::PUT,
            "/v2/library/busybox/manifests/docker",
            admin(&registry),
        )
        .header("content-type", DOCKER_MANIFEST)
        .body(manifest.clone()),
    );
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // An OCI Content-Type on a body that says it is a Docker manifest.
    let mut value: serde_json::Value = serde_json::from_slice(&manifest).expect("JSON manifest");
    value["mediaType"] = DOCKER_MANIFEST.into();
    let reply = send(
        &registry,
        request(
            &registry,
            Method::PUT,
            "/v2/library/busybox/manifests/docker",
            admin(&registry),
        )
        .header("content-type", OCI_MANIFEST)
        .body(value.to_string()),
    );
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["errors"][0]["code"], "MANIFEST_INVALID");
    // Nothing reached the registry.
    let tag = send(
        &registry,
        request(
            &registry,
            Method::HEAD,
            "/v2/library/busybox/manifests/docker",
            None,
        ),
    );
    assert_eq!(tag.status, StatusCode::NOT_FOUND);
}

#[test]
fn oversized_manifest_is_413() {
    let registry = TestRegistry::start();
    let body = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"annotations\":{{\"x\":\"{}\"}}}}",
        "a".repeat(4 * 1024 * 1024)
    );
    let reply = send(
        &registry,
        request(
            &registry,
            Method::PUT,
            "/v2/library/big/manifests/big",
            admin(&registry),
        )
        .header("content-type", OCI_MANIFEST)
        .body(body),
    );
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn upload_location_is_relative_with_blob_upload_uuid() {
    let registry = TestRegistry::start();
    let reply = send(
        &registry,
        request(
            &registry,
            Method::POST,
            "/v2/blumeops/x/blobs/uploads/",
            ci(&registry),
        ),
    );
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let location = reply.header("location").expect("Location");
    assert!(
        location.starts_with("/v2/blumeops/x/blobs/uploads/"),
        "{location}"
    );
    assert!(!location.contains(&registry.upstream_addr()), "{location}");
    assert!(reply.header("blob-upload-uuid").is_some());
    assert!(reply.header("docker-upload-uuid").is_none());
}

#[test]
fn monolithic_put_upload_works_and_head_reports_length() {
    let registry = TestRegistry::start();
    let data = Bytes::from_static(b"hello blob");
    let digest = sha256_digest(&data);
    let location = start_upload(&registry, "blumeops/x");
    let reply = send(
        &registry,
        request(
            &registry,
            Method::PUT,
            &with_digest(&location, &digest),
            admin(&registry),
        )
        .header("content-type", "application/octet-stream")
        .body(data.clone()),
    );
    assert_eq!(reply.status, StatusCode::CREATED);
    let reply = send(
        &registry,
        request(
            &registry,
            Method::HEAD,
            &format!("/v2/blumeops/x/blobs/{digest}"),
            None,
        ),
    );
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-length"), Some("10"));
    let reply = send(
        &registry,
        request(
            &registry,
            Method::GET,
            &format!("/v2/blumeops/x/blobs/{digest}"),
            None,
        ),
    );
    assert_eq!(reply.body, data);
}

#[test]
fn chunked_final_put_is_refused() {
    let registry = TestRegistry::start();
    let data = Bytes::from_static(b"chunked blob body");
    let digest = sha256_digest(&data);
    let location = start_upload(&registry, "blumeops/x");
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(data.clone())]);
    let reply = send(
        &registry,
        request(
            &registry,
            Method::PUT,
            &with_digest(&location, &digest),
            admin(&registry),
        )
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream)),
    );
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let last = registry.requests().pop().expect("a record");
    assert!(last.chunked);
    assert_eq!(last.content_length, None);
    assert_eq!(last.rejected_by, Some("final-put-length"));
}

#[test]
fn patch_content_range_rules() {
    let registry = TestRegistry::start();
    let location = start_upload(&registry, "blumeops/x");
    let patch = |range: &str, body: &'static [u8]| {
        send(
            &registry,
            request(&registry, Method::PATCH, &location, admin(&registry))
                .header("content-type", "application/octet-stream")
                .header("content-range", range)
                .body(body),
        )
    };
    assert_eq!(
        patch("bytes=0-3", b"abcd").status,
        StatusCode::RANGE_NOT_SATISFIABLE
    );
    let reply = patch("0-3", b"abcd");
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let next = reply.header("location").expect("Location").to_owned();
    assert!(next.starts_with("/v2/"), "{next}");
    assert_eq!(
        patch("0-3", b"abcd").status,
        StatusCode::RANGE_NOT_SATISFIABLE
    );

    // A final PUT that carries data after a PATCH needs Content-Range.
    let digest = sha256_digest(b"abcdefgh");
    let reply = send(
        &registry,
        request(
            &registry,
            Method::PUT,
            &with_digest(&next, &digest),
            admin(&registry),
        )
        .header("content-type", "application/octet-stream")
        .body(&b"efgh"[..]),
    );
    assert_eq!(reply.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let reply = send(
        &registry,
        request(
            &registry,
            Method::PUT,
            &with_digest(&next, &digest),
            admin(&registry),
        )
        .header("content-type", "application/octet-stream")
        .header("content-range", "4-7")
        .body(&b"efgh"[..]),
    );
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "{}",
        registry.log_summary()
    );
}

#[test]
fn monolithic_post_needs_octet_stream() {
    let registry = TestRegistry::start();
    let data = b"monolithic";
    let digest = sha256_digest(data);
    let path = format!("/v2/blumeops/x/blobs/uploads/?digest={digest}");
    let reply = send(
        &registry,
        request(&registry, Method::POST, &path, admin(&registry))
            .header("content-type", "text/plain")
            .body(&data[..]),
    );
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let reply = send(
        &registry,
        request(&registry, Method::POST, &path, admin(&registry))
            .header("content-type", "application/octet-stream")
            .body(&data[..]),
    );
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "{}",
        registry.log_summary()
    );
}

#[test]
fn ci_user_cannot_delete_and_reader_cannot_upload() {
    let registry = TestRegistry::start();
    let pushed = BaseImage::push(&registry);
    let path = format!("/v2/library/busybox/manifests/{}", pushed.digest);
    let reply = send(
        &registry,
        request(&registry, Method::DELETE, &path, ci(&registry)),
    );
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_basic_challenge(&reply);
    assert_eq!(reply.json()["errors"][0]["code"], "DENIED");

    let reply = send(
        &registry,
        request(
            &registry,
            Method::POST,
            "/v2/library/busybox/blobs/uploads/",
            Some((READER_USER, registry.reader_password())),
        ),
    );
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    let reply = send(
        &registry,
        request(&registry, Method::DELETE, &path, admin(&registry)),
    );
    assert_eq!(
        reply.status,
        StatusCode::ACCEPTED,
        "{}",
        registry.log_summary()
    );
}

#[test]
fn manifest_with_a_missing_blob_is_manifest_invalid() {
    let registry = TestRegistry::start();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(b"missing config"),
            "size": 14,
        },
        "layers": [],
    });
    let reply = send(
        &registry,
        request(
            &registry,
            Method::PUT,
            "/v2/blumeops/x/manifests/missing",
            ci(&registry),
        )
        .header("content-type", OCI_MANIFEST)
        .body(manifest.to_string()),
    );
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["errors"][0]["code"], "MANIFEST_INVALID");
}
