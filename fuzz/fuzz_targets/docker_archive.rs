//! Docker archive import: any file either imports or fails with an error naming the archive;
//! what imports has a manifest whose blobs are all in the store.
#![no_main]

use blumeops_core::{Compression, Store, import_docker_archive};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("image.tar");
    std::fs::write(&archive, data).unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    match import_docker_archive(&archive, &store, Compression::Gzip) {
        Ok(image) => {
            for blob in image.blobs() {
                assert!(store.has_blob(&blob.digest), "{blob:?} missing");
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("image.tar") || message.contains("store"),
                "{message}"
            );
        }
    }
});
