//! Dockerfile parsing, variable substitution and translation: any text either translates or
//! fails with an error naming the file (and usually a line); nothing panics or runs away.
#![no_main]

use std::sync::OnceLock;

use blumeops_core::{BuildArgs, translate_dockerfile};
use libfuzzer_sys::fuzz_target;

fn context() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "data").unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        dir
    })
    .path()
}

fuzz_target!(|text: &str| {
    let args = BuildArgs::parse(["A=a$B{c}", "EMPTY="]).unwrap();
    match translate_dockerfile(text, "Dockerfile", context(), &args, None) {
        Ok(container) => {
            // The plan and step list of anything that translated can be described.
            let _ = container.steps();
            let _ = container.plan();
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("Dockerfile"), "{message}");
        }
    }
});
