//! `.dockerignore`: which paths of the build context are left out.
//!
//! Patterns are relative to the context root (a leading `/` is dropped), use Go
//! `filepath.Match` syntax plus `**` for any number of directories, and a pattern that
//! matches a directory also matches everything in it. Lines starting with `!` are
//! exceptions; the last matching line wins. `#` starts a comment line.

use globset::{GlobBuilder, GlobMatcher};

/// A compiled `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    matcher: GlobMatcher,
    exception: bool,
}

/// A pattern that does not compile, with its 1-based line.
#[derive(Debug)]
pub(crate) struct PatternError {
    pub line: usize,
    pub pattern: String,
    pub source: globset::Error,
}

impl Ignore {
    /// Parse the contents of a `.dockerignore`.
    pub(crate) fn parse(text: &str) -> Result<Self, PatternError> {
        let mut patterns = Vec::new();
        for (idx, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let cleaned = clean(pat);
            if cleaned.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| PatternError {
                    line: idx + 1,
                    pattern: line.to_owned(),
                    source,
                })?;
            patterns.push(Pattern {
                matcher: glob.compile_matcher(),
                exception,
            });
        }
        Ok(Self { patterns })
    }

    /// Whether there are no patterns.
    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether there are `!` exceptions (an ignored directory may have kept files).
    pub(crate) fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out.
    pub(crate) fn is_ignored(&self, path: &str) -> bool {
        let path = clean(path);
        let mut ignored = false;
        for p in &self.patterns {
            if p.exception != ignored {
                // Cannot change the outcome.
                continue;
            }
            let hit = p.matcher.is_match(&path)
                || parents(&path).any(|parent| p.matcher.is_match(parent));
            if hit {
                ignored = !p.exception;
            }
        }
        ignored
    }
}

/// `a/b/c` -> `a`, `a/b`.
fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Like Go's `filepath.Clean` for relative patterns: no leading `/`, no `.` parts, `..`
/// resolved, no trailing `/`.
pub(crate) fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// Escape glob metacharacters, so a path can be given as an exact exclude pattern.
pub(crate) fn escape_glob(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | '!' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const RULES: &str = "
# build output
target
/node_modules
**/*.log
*.md
!README.md
docs/**
!docs/keep/**
tmp?
.git
";

    #[rstest]
    #[case("target", true)]
    #[case("target/debug/app", true)]
    #[case("sub/target", false)]
    #[case("node_modules/x/index.js", true)]
    #[case("a.log", true)]
    #[case("deep/er/b.log", true)]
    #[case("CHANGES.md", true)]
    #[case("sub/CHANGES.md", false)]
    #[case("README.md", false)]
    #[case("docs/a.txt", true)]
    #[case("docs/keep/b.txt", false)]
    #[case("tmp1", true)]
    #[case("tmp12", false)]
    #[case(".git/HEAD", true)]
    #[case("src/main.rs", false)]
    #[case("Dockerfile", false)]
    fn matching(#[case] path: &str, #[case] ignored: bool) {
        let ig = Ignore::parse(RULES).unwrap();
        assert_eq!(ig.is_ignored(path), ignored, "{path}");
    }

    #[test]
    fn exceptions_and_last_match_wins() {
        let ig = Ignore::parse("*\n!src\nsrc/secret.txt\n").unwrap();
        assert!(ig.is_ignored("Cargo.lock"));
        assert!(!ig.is_ignored("src/lib.rs"));
        assert!(ig.is_ignored("src/secret.txt"));
        assert!(ig.has_exceptions());
        assert!(Ignore::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_pattern_names_its_line() {
        let e = Ignore::parse("ok\n[z-a\n").unwrap_err();
        assert_eq!((e.line, e.pattern.as_str()), (2, "[z-a"));
    }

    #[test]
    fn escaped_paths_match_literally() {
        let m = globset::Glob::new(&escape_glob("a[1]*{x,y}.txt"))
            .unwrap()
            .compile_matcher();
        assert!(m.is_match("a[1]*{x,y}.txt"));
        assert!(!m.is_match("a1zzx.txt"));
    }
}
