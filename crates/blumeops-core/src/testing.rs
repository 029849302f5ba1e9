//! Support for this workspace's tests (not part of the API).
//!
//! A test that cannot run here (it needs root, or a tool the machine lacks) calls [`skip`]
//! instead of passing silently: the skip is printed and, when `BLUMEOPS_TEST_SKIPS` names a
//! file, appended to it. `scripts/test.sh` counts those lines, names them in its summary
//! and fails when a test was skipped in CI.

use std::io::Write as _;

/// The environment variable naming the skip log.
pub const SKIPS_ENV: &str = "BLUMEOPS_TEST_SKIPS";

/// Record that the running test is skipped, and why.
pub fn skip(reason: &str) {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    eprintln!("SKIPPED {name}: {reason}");
    if let Some(path) = std::env::var_os(SKIPS_ENV)
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{name}: {reason}");
    }
}
