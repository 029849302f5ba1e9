//! Client flows against the fake registry in `fake.rs`.

use super::fake::{Fake, Mode, PASSWORD, USER};
use super::*;
use crate::image::{BlobRef, ManifestBlob, media_types};
use crate::secret::Secret;

fn client(fake: &Fake, creds: Option<(&str, &str)>) -> RegistryClient {
    let mut credentials = Credentials::default();
    if let Some((u, p)) = creds {
        credentials = credentials.with_registry(
            &fake.addr,
            Credential {
                username: u.into(),
                password: Secret::new(p),
            },
        );
    }
    RegistryClient::new(ClientOptions {
        credentials,
        ..ClientOptions::default()
    })
    .unwrap()
}

/// An image with a config and two layers, all in `store`.
fn image(store: &Store, salt: &str) -> StoredImage {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer1 = vec![7u8; 600 * 1024];
    let layer2 = format!("second layer {salt}").into_bytes();
    let blob = |bytes: &[u8], media_type: &str| BlobRef {
        digest: store.put_bytes(bytes).unwrap(),
        size: bytes.len() as u64,
        media_type: media_type.into(),
    };
    let config = blob(config, media_types::OCI_CONFIG);
    let layers = vec![
        blob(&layer1, media_types::OCI_LAYER_TAR),
        blob(&layer2, media_types::OCI_LAYER_TAR),
    ];
    let descriptor = |b: &BlobRef| {
        format!(
            r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
            b.media_type, b.digest, b.size
        )
    };
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]}}"#,
        media_types::OCI_MANIFEST,
        descriptor(&config),
        layers.iter().map(descriptor).collect::<Vec<_>>().join(",")
    );
    StoredImage {
        manifest: ManifestBlob::new(manifest.into_bytes(), media_types::OCI_MANIFEST),
        config,
        layers,
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

#[tokio::test]
async fn zot_push_answers_the_write_challenge_and_streams_with_content_length() {
    let fake = Fake::start(Mode::Zot).await;
    let (_dir, store) = store();
    let img = image(&store, "a");
    let target: ImageRef = format!("{}/r:v1", fake.addr).parse().unwrap();
    let c = client(&fake, Some((USER, PASSWORD)));
    let report = c
        .push_image(&target, &img, &store, TagPolicy::CreateOnly)
        .await
        .unwrap();
    assert_eq!(report.digest, img.manifest.digest);
    assert!(!report.unchanged);
    assert_eq!((report.blobs_uploaded, report.blobs_skipped), (3, 0));
    let total: u64 = img.blobs().map(|b| b.size).sum();
    assert_eq!(report.bytes_uploaded, total);

    let seen = fake.seen();
    // Reads went out anonymously; the first write was challenged, then answered.
    assert!(seen[0].method == "HEAD" && !seen[0].headers.contains_key("authorization"));
    let posts: Vec<_> = seen.iter().filter(|s| s.method == "POST").collect();
    assert!(!posts[0].headers.contains_key("authorization"));
    let puts: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.target.contains("/blobs/uploads/"))
        .collect();
    assert_eq!(puts.len(), 3);
    for put in puts {
        assert!(put.headers.contains_key("authorization"), "{put:?}");
        assert!(!put.headers.contains_key("transfer-encoding"), "{put:?}");
        assert_eq!(put.headers["content-length"], put.body_len.to_string());
        assert_eq!(put.headers["content-type"], "application/octet-stream");
    }
    // Manifest last, with the exact media type.
    let last = seen.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.target.as_str()),
        ("PUT", "/v2/r/manifests/v1")
    );
    assert_eq!(last.headers["content-type"], media_types::OCI_MANIFEST);
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "DELETE" || s.method == "PATCH")
    );

    // The same image again: nothing pushed, not even blob HEADs.
    let before = fake.seen().len();
    let report = c
        .push_image(&target, &img, &store, TagPolicy::CreateOnly)
        .await
        .unwrap();
    assert!(report.unchanged);
    let after = fake.seen();
    assert_eq!(after.len(), before + 1, "{:?}", &after[before..]);

    // Another image to the same tag: conflict without --allow-overwrite.
    let other = image(&store, "b");
    let err = c
        .push_image(&target, &other, &store, TagPolicy::CreateOnly)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TagConflict);
    let msg = err.to_string();
    assert!(
        msg.contains(&img.manifest.digest.to_string())
            && msg.contains(&other.manifest.digest.to_string()),
        "{msg}"
    );

    // With overwrite the create-only account is denied by the registry; blobs were skipped.
    let err = c
        .push_image(&target, &other, &store, TagPolicy::AllowOverwrite)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    let msg = err.to_string();
    for want in [
        "push manifest",
        &fake.addr,
        "`r`",
        USER,
        "DENIED",
        "not allowed to update",
    ] {
        assert!(msg.contains(want), "{msg} lacks {want}");
    }
}

#[tokio::test]
async fn zot_wrong_password_is_unauthorized_and_never_shown() {
    let fake = Fake::start(Mode::Zot).await;
    let (_dir, store) = store();
    let img = image(&store, "a");
    let target: ImageRef = format!("{}/r:v1", fake.addr).parse().unwrap();
    let wrong = "zak_ffffffffffffffffffffffffffffffff";
    let err = client(&fake, Some((USER, wrong)))
        .push_image(&target, &img, &store, TagPolicy::CreateOnly)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    let shown = format!("{err} {err:?} {:?}", err.hint());
    assert!(!shown.contains(wrong), "{shown}");
    for want in [
        fake.addr.as_str(),
        USER,
        "401 Unauthorized",
        "invalid api key",
    ] {
        assert!(err.to_string().contains(want), "{err} lacks {want}");
    }
}

#[tokio::test]
async fn zot_push_without_credentials_says_authentication_is_required() {
    let fake = Fake::start(Mode::Zot).await;
    let (_dir, store) = store();
    let img = image(&store, "a");
    let target: ImageRef = format!("{}/r:v1", fake.addr).parse().unwrap();
    let err = client(&fake, None)
        .push_image(&target, &img, &store, TagPolicy::CreateOnly)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert!(
        err.to_string().contains("authentication is required"),
        "{err}"
    );
    assert!(err.hint().unwrap().contains("--registry-username"));
}

#[tokio::test]
async fn bearer_pull_and_push_use_scoped_tokens() {
    let fake = Fake::start(Mode::Bearer).await;
    let (_dir, source) = store();
    let img = image(&source, "a");
    for blob in img.blobs() {
        fake.put_blob(&source.read_blob(&blob.digest).unwrap());
    }
    fake.put_manifest("v1", &img.manifest.bytes, media_types::OCI_MANIFEST);
    let reference: ImageRef = format!("{}/r:v1", fake.addr).parse().unwrap();

    // Anonymous pull with a pull-scoped token.
    let (_dir2, dest) = store();
    let pulled = client(&fake, None)
        .pull_image(&reference, &"linux/amd64".parse().unwrap(), &dest)
        .await
        .unwrap();
    assert_eq!(pulled.image, img);
    assert!(img.blobs().all(|b| dest.has_blob(&b.digest)));
    assert!(dest.has_blob(&img.manifest.digest));
    let tokens = fake
        .seen()
        .iter()
        .filter(|s| s.target.starts_with("/token"))
        .count();
    assert_eq!(tokens, 1, "the token is cached per scope");

    // An index (Docker manifest list) is narrowed to the platform.
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
            {{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        media_types::DOCKER_MANIFEST_LIST,
        media_types::OCI_MANIFEST,
        img.manifest.digest,
        img.manifest.bytes.len()
    );
    fake.put_manifest("multi", list.as_bytes(), media_types::DOCKER_MANIFEST_LIST);
    let multi: ImageRef = format!("{}/r:multi", fake.addr).parse().unwrap();
    let c = client(&fake, None);
    let pulled = c
        .pull_image(&multi, &"linux/amd64".parse().unwrap(), &dest)
        .await
        .unwrap();
    assert_eq!(pulled.image, img);
    let err = c
        .pull_image(&multi, &"linux/s390x".parse().unwrap(), &dest)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("available: linux/amd64"), "{err}");

    // Push needs a pull,push token, which needs credentials.
    let target: ImageRef = format!("{}/r:v2", fake.addr).parse().unwrap();
    let err = client(&fake, None)
        .push_image(&target, &img, &source, TagPolicy::CreateOnly)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    let report = client(&fake, Some((USER, PASSWORD)))
        .push_image(&target, &img, &source, TagPolicy::CreateOnly)
        .await
        .unwrap();
    assert_eq!(report.blobs_skipped, 3);
}

#[tokio::test]
async fn tampered_blob_is_an_integrity_error_and_not_stored() {
    let fake = Fake::start(Mode::Zot).await;
    let (_dir, source) = store();
    let img = image(&source, "a");
    let config = source.read_blob(&img.config.digest).unwrap();
    fake.put_blob(&config);
    // Serve other bytes of the same size under the first layer's digest.
    let layer = &img.layers[0];
    let tampered = vec![8u8; layer.size as usize];
    fake.put_manifest("v1", &img.manifest.bytes, media_types::OCI_MANIFEST);
    fake.put_blob(&source.read_blob(&img.layers[1].digest).unwrap());
    fake.alias_blob(&layer.digest, &tampered);

    let (_dir2, dest) = store();
    let reference: ImageRef = format!("{}/r:v1", fake.addr).parse().unwrap();
    let err = client(&fake, None)
        .pull_image(&reference, &"linux/amd64".parse().unwrap(), &dest)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&layer.digest.to_string()) && msg.contains(&fake.addr),
        "{msg}"
    );
    assert!(!dest.has_blob(&layer.digest));
    assert!(!dest.has_blob(&Digest::of(&tampered)));
}

#[tokio::test]
async fn unreachable_registry_fails_fast_naming_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let reference: ImageRef = format!("{addr}/r:v1").parse().unwrap();
    let c = RegistryClient::new(ClientOptions::default()).unwrap();
    let err = c.head_manifest(&reference).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert!(
        err.to_string().contains(&format!("http://{addr}/")),
        "{err}"
    );
}
