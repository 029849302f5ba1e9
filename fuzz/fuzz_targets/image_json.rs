//! Manifests, indexes and configs: any bytes either parse within the limits or fail with an
//! error naming the document; what parses serializes to JSON that parses to the same value.
#![no_main]

use blumeops_core::limits;
use blumeops_core::{ImageConfig, ImageIndex, ImageManifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ImageManifest::from_json(data, "fuzz") {
        assert!(m.layers.len() <= limits::MAX_LAYERS);
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(ImageManifest::from_json(&bytes, "fuzz").unwrap(), m);
    }
    if let Ok(i) = ImageIndex::from_json(data, "fuzz") {
        assert!(i.manifests.len() <= limits::MAX_INDEX_MANIFESTS);
        let bytes = serde_json::to_vec(&i).unwrap();
        assert_eq!(ImageIndex::from_json(&bytes, "fuzz").unwrap(), i);
    }
    match ImageConfig::from_json(data, "fuzz") {
        Ok(c) => {
            assert!(c.rootfs.diff_ids.len() <= limits::MAX_LAYERS);
            let bytes = serde_json::to_vec(&c).unwrap();
            assert_eq!(ImageConfig::from_json(&bytes, "fuzz").unwrap(), c);
        }
        Err(e) => assert!(e.to_string().contains("image config of fuzz"), "{e}"),
    }
});
