//! Small real images (gzip tar layers, OCI config and manifest) built in a blumeops store
//! for the registry client tests, and OCI layouts holding them for skopeo.

use std::path::Path;

use blumeops_core::{
    BlobRef, Compression, LayerBuilder, ManifestBlob, Owner, Store, StoredImage, media_types,
};
use blumeops_e2e::{sha256_digest, tempdir};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// A registry client for `addr`, anonymous or with `(username, password)`.
pub fn client_for(addr: &str, user: Option<(&str, &str)>) -> blumeops_core::RegistryClient {
    let mut credentials = blumeops_core::Credentials::default();
    if let Some((username, password)) = user {
        credentials = credentials.with_registry(
            addr,
            blumeops_core::Credential {
                username: username.to_owned(),
                password: blumeops_core::Secret::new(password),
            },
        );
    }
    blumeops_core::RegistryClient::new(blumeops_core::ClientOptions {
        credentials,
        ..blumeops_core::ClientOptions::default()
    })
    .expect("failed to build a registry client")
}

/// An empty store in a temporary directory (keep the directory alive with the store).
pub fn store() -> (TempDir, Store) {
    let dir = tempdir("blumeops-client-store-");
    let store = Store::open(dir.path().join("store")).expect("failed to open a store");
    (dir, store)
}

/// `n` bytes that do not compress away, derived from `seed`.
fn noise(seed: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut block: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
    while out.len() < n {
        out.extend_from_slice(&block);
        block = Sha256::digest(block).into();
    }
    out.truncate(n);
    out
}

/// An image for `linux/<architecture>` with two gzip layers: one shared by every image
/// (about 600 KiB of incompressible data) and one holding `salt`, so different salts give
/// different manifests that share a blob.
pub fn build_image(store: &Store, salt: &str, architecture: &str) -> StoredImage {
    let mut shared = LayerBuilder::new();
    shared
        .add_bytes(
            "/data/shared.bin",
            noise("shared", 600 * 1024),
            0o644,
            Owner::ROOT,
        )
        .expect("add shared file");
    let mut own = LayerBuilder::new();
    own.add_bytes(
        "/etc/salt",
        format!("{salt} {architecture}\n").into_bytes(),
        0o644,
        Owner::ROOT,
    )
    .expect("add salt file");
    let layers: Vec<_> = [shared, own]
        .iter()
        .map(|l| {
            l.write(store, Compression::Gzip, 0)
                .expect("failed to write a layer")
        })
        .collect();

    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Labels": {"test.salt": salt}},
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
    });
    let config_bytes = serde_json::to_vec(&config).expect("config serializes");
    let config = BlobRef {
        digest: store.put_bytes(&config_bytes).expect("store config"),
        size: config_bytes.len() as u64,
        media_type: media_types::OCI_CONFIG.to_owned(),
    };
    let layers: Vec<BlobRef> = layers.into_iter().map(|l| l.blob).collect();
    let descriptor = |b: &BlobRef| serde_json::json!({"mediaType": b.media_type, "digest": b.digest.to_string(), "size": b.size});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": descriptor(&config),
        "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    StoredImage {
        manifest: ManifestBlob::new(bytes, media_types::OCI_MANIFEST),
        config,
        layers,
    }
}

/// Copy `bytes` into an OCI layout's blob directory; returns the digest.
fn put_layout_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).expect("create blobs dir");
    std::fs::write(dir.join(&digest[7..]), bytes).expect("write layout blob");
    digest
}

/// Write an OCI layout at `layout` whose `index.json` names, as `tag`, an OCI image index
/// over `images` (one per platform, all blobs in `store`). Returns the index digest.
pub fn write_index_layout(
    layout: &Path,
    tag: &str,
    store: &Store,
    images: &[(&str, &StoredImage)],
) -> String {
    std::fs::create_dir_all(layout).expect("create layout dir");
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    let mut entries = Vec::new();
    for (architecture, image) in images {
        for blob in image.blobs() {
            put_layout_blob(
                layout,
                &store.read_blob(&blob.digest).expect("blob in the store"),
            );
        }
        let digest = put_layout_blob(layout, &image.manifest.bytes);
        entries.push(serde_json::json!({
            "mediaType": media_types::OCI_MANIFEST,
            "digest": digest,
            "size": image.manifest.bytes.len(),
            "platform": {"architecture": architecture, "os": "linux"},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": entries,
    });
    let index_bytes = serde_json::to_vec(&index).expect("index serializes");
    let index_digest = put_layout_blob(layout, &index_bytes);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_types::OCI_INDEX,
            "digest": index_digest,
            "size": index_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&top).expect("index.json serializes"),
    )
    .expect("write index.json");
    index_digest
}

/// Check, without trusting blumeops, that every blob of `image` is in `store` and hashes to
/// its digest with its declared size, and that the manifest is stored too.
pub fn assert_blobs_verified(store: &Store, image: &StoredImage) {
    for blob in image.blobs() {
        let path = store.blob_path(&blob.digest);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("blob {} not in the store: {e}", blob.digest));
        assert_eq!(sha256_digest(&bytes), blob.digest.to_string(), "{path:?}");
        assert_eq!(bytes.len() as u64, blob.size, "{path:?}");
    }
    let manifest = std::fs::read(store.blob_path(&image.manifest.digest))
        .expect("the manifest is in the store");
    assert_eq!(sha256_digest(&manifest), image.manifest.digest.to_string());
}
