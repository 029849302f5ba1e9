//! Image references, digests and platforms: what parses prints back to something that parses
//! to the same value.
#![no_main]

use blumeops_core::{Digest, ImageRef, Platform};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(r) = text.parse::<ImageRef>() {
        let shown = r.to_string();
        let again: ImageRef = shown
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} -> {shown:?} does not parse: {e}"));
        assert_eq!(again, r, "{text:?} -> {shown:?}");
        assert_eq!(again.to_string(), shown);
    }
    if let Ok(d) = text.parse::<Digest>() {
        let shown = d.to_string();
        assert_eq!(shown.parse::<Digest>().unwrap(), d);
    }
    if let Ok(p) = text.parse::<Platform>() {
        let shown = p.to_string();
        let again: Platform = shown
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} -> {shown:?} does not parse: {e}"));
        assert_eq!(again, p, "{text:?} -> {shown:?}");
    }
});
