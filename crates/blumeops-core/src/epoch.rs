//! The build's timestamp: `SOURCE_DATE_EPOCH`, else the time of the last git commit that
//! changed the container's sources (else of HEAD), else 0. It becomes the image's `created`
//! and every file mtime, so builds of the same inputs give the same digest, and a commit that
//! does not touch a container leaves its build (and its step cache) as it was.

use std::path::Path;

/// The variable that pins the timestamp (reproducible-builds.org convention).
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

/// Errors from resolving the epoch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `SOURCE_DATE_EPOCH` is set but not a non-negative integer.
    #[error(
        "invalid SOURCE_DATE_EPOCH `{value}`: expected seconds since 1970 as a non-negative integer"
    )]
    Invalid {
        /// What it held.
        value: String,
    },
}

/// Where an epoch came from (for progress output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochSource {
    /// The `SOURCE_DATE_EPOCH` variable.
    Env,
    /// The commit time of git HEAD in the source directory.
    GitHead,
    /// The time of the last commit that changed the container's own paths.
    GitPaths,
    /// Neither was available: 0 (1970-01-01).
    Zero,
}

/// Resolve the epoch for a build whose sources are in `src`.
pub fn resolve(src: &Path) -> Result<(u64, EpochSource), Error> {
    resolve_for(src, &[])
}

/// Resolve the epoch for a container whose own files are `paths` (relative to `src`, e.g.
/// `containers/NAME`): without `SOURCE_DATE_EPOCH`, the time of the last commit that changed
/// them, falling back to HEAD's time when git knows no commit for them.
pub fn resolve_for(src: &Path, paths: &[&str]) -> Result<(u64, EpochSource), Error> {
    if let Ok(value) = std::env::var(SOURCE_DATE_EPOCH)
        && !value.is_empty()
    {
        let secs = value
            .trim()
            .parse::<u64>()
            .map_err(|_| Error::Invalid { value })?;
        return Ok((secs, EpochSource::Env));
    }
    if !paths.is_empty()
        && let Some(secs) = git_commit_time(src, paths)
    {
        return Ok((secs, EpochSource::GitPaths));
    }
    if let Some(secs) = git_commit_time(src, &[]) {
        return Ok((secs, EpochSource::GitHead));
    }
    Ok((0, EpochSource::Zero))
}

/// The commit time of HEAD, or of the last commit touching `paths`.
fn git_commit_time(src: &Path, paths: &[&str]) -> Option<u64> {
    let mut command = std::process::Command::new("git");
    command
        .arg("-C")
        .arg(src)
        .args(["log", "-1", "--format=%ct", "HEAD"]);
    if !paths.is_empty() {
        command.arg("--").args(paths);
    }
    let out = command
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// Format seconds since 1970 as RFC 3339 UTC, e.g. `1970-01-01T00:00:00Z`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Seconds since 1970 as compact UTC for names that sort by time, e.g. `19700101T000000Z`.
pub(crate) fn compact_utc(secs: u64) -> String {
    rfc3339(secs).replace(['-', ':'], "")
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(0, "1970-01-01T00:00:00Z")]
    #[case(951_782_400, "2000-02-29T00:00:00Z")]
    #[case(1_700_000_000, "2023-11-14T22:13:20Z")]
    #[case(4_102_444_799, "2099-12-31T23:59:59Z")]
    fn formats_rfc3339(#[case] secs: u64, #[case] expected: &str) {
        assert_eq!(rfc3339(secs), expected);
    }

    #[test]
    fn non_git_dir_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(git_commit_time(dir.path(), &[]), None);
    }

    #[test]
    fn last_commit_touching_the_paths() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str], date: &str| {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(args)
                .env("GIT_AUTHOR_DATE", date)
                .env("GIT_COMMITTER_DATE", date)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"], "@1000 +0000");
        for (name, date) in [("a", "@1000 +0000"), ("b", "@2000 +0000")] {
            let d = dir.path().join("containers").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("Dockerfile"), name).unwrap();
            git(&["add", "."], date);
            git(&["commit", "-q", "-m", name], date);
        }
        assert_eq!(git_commit_time(dir.path(), &["containers/a"]), Some(1000));
        assert_eq!(git_commit_time(dir.path(), &["containers/b"]), Some(2000));
        assert_eq!(git_commit_time(dir.path(), &[]), Some(2000));
        assert_eq!(git_commit_time(dir.path(), &["containers/none"]), None);
    }
}
