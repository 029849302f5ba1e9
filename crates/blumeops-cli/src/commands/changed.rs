//! `blumeops changed --base REF`: the containers whose files changed between REF and HEAD,
//! as a JSON array for a workflow matrix.
//!
//! The comparison is `git -C SRC diff --name-only --relative --no-renames REF HEAD` (the two
//! trees, not `REF...HEAD`: a push event's before-sha is compared with what was pushed).
//! A path `containers/NAME/...` names NAME, whether NAME is a Dockerfile, a Nix expression
//! or a native definition crate (its Cargo.toml or src/). Only containers that exist at
//! HEAD are listed (a removed container cannot be built). An all-zero REF (the before-sha
//! of a new branch) lists every container.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result};

use super::InvalidInput;
use crate::cli::ChangedArgs;
use crate::containers;

pub fn run(args: ChangedArgs) -> Result<ExitCode> {
    let names = changed(&args.src, &args.base)?;
    let json = serde_json::to_string(&names).context("failed to serialize the list")?;
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}

/// Every container: native definitions and `SRC/containers/*/` with a Dockerfile or
/// default.nix.
fn known(src: &Path) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = containers::native()
        .iter()
        .map(|d| d.name().to_owned())
        .collect();
    names.extend(blumeops_core::file_container_names(src));
    names
}

/// Sorted, unique names of the containers changed between `base` and HEAD.
pub fn changed(src: &Path, base: &str) -> Result<Vec<String>> {
    let known = known(src);
    if base.len() >= 7 && base.bytes().all(|b| b == b'0') {
        return Ok(known.into_iter().collect());
    }
    if base.starts_with('-') {
        return Err(
            InvalidInput::new(format!("invalid --base `{base}`: not a git revision")).into(),
        );
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(src)
        .args(["diff", "--name-only", "--relative", "--no-renames", "-z"])
        .arg(base)
        .args(["HEAD", "--"])
        .stdin(Stdio::null())
        .output()
        .context("failed to run git")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .lines()
            .map(|l| l.trim().trim_start_matches("fatal: "))
            .find(|l| !l.is_empty())
            .unwrap_or("git diff failed");
        return Err(InvalidInput::new(format!(
            "failed to compare `{base}` with HEAD in `{}`: {reason}",
            src.display()
        ))
        .with_hint(
            "--base must be a commit of the repository at --src; in CI, check out enough \
             history (e.g. fetch-depth: 0) for it to be present",
        )
        .into());
    }
    let mut names = BTreeSet::new();
    for path in out.stdout.split(|b| *b == 0) {
        let path = String::from_utf8_lossy(path);
        let Some(rest) = path.strip_prefix("containers/") else {
            continue;
        };
        if let Some((name, _)) = rest.split_once('/')
            && known.contains(name)
        {
            names.insert(name.to_owned());
        }
    }
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn write(dir: &Path, path: &str, text: &str) {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn containers_changed_between_commits() {
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path();
        git(dir, &["init", "-q", "-b", "main"]);
        write(
            dir,
            "containers/a/Dockerfile",
            "FROM x\nARG CONTAINER_APP_VERSION=1\n",
        );
        write(dir, "containers/b/default.nix", "{ version = \"1\"; }\n");
        write(
            dir,
            "containers/c/Dockerfile",
            "FROM x\nARG CONTAINER_APP_VERSION=1\n",
        );
        write(dir, "containers/gone/Dockerfile", "FROM x\n");
        write(dir, "README.md", "hi\n");
        git(dir, &["add", "."]);
        git(dir, &["commit", "-q", "-m", "one"]);
        let first = git(dir, &["rev-parse", "HEAD"]);

        write(
            dir,
            "containers/a/Dockerfile",
            "FROM y\nARG CONTAINER_APP_VERSION=2\n",
        );
        write(dir, "containers/b/x", "new\n");
        write(dir, "containers/hello/src/lib.rs", "// native definition\n");
        write(dir, "containers/notes.md", "top-level file\n");
        write(dir, "README.md", "changed\n");
        std::fs::remove_dir_all(dir.join("containers/gone")).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", "two"]);

        assert_eq!(changed(dir, &first).unwrap(), ["a", "b", "hello"]);
        assert_eq!(changed(dir, "HEAD").unwrap(), Vec::<String>::new());
        // A new branch: every container.
        let all = changed(dir, &"0".repeat(40)).unwrap();
        for name in ["a", "b", "c", "hello"] {
            assert!(all.contains(&name.to_owned()), "{all:?}");
        }
        assert!(!all.contains(&"gone".to_owned()), "{all:?}");
    }

    #[test]
    fn bad_ref_and_not_a_repository_are_invalid_input() {
        let repo = tempfile::tempdir().unwrap();
        let err = changed(repo.path(), "HEAD~1").unwrap_err();
        assert!(err.downcast_ref::<InvalidInput>().is_some(), "{err:#}");
        assert!(err.to_string().contains("HEAD~1"), "{err}");

        git(repo.path(), &["init", "-q"]);
        write(repo.path(), "f", "x");
        git(repo.path(), &["add", "."]);
        git(repo.path(), &["commit", "-q", "-m", "one"]);
        let err = changed(repo.path(), "no-such-ref").unwrap_err();
        let invalid = err.downcast_ref::<InvalidInput>().unwrap();
        assert!(invalid.to_string().contains("no-such-ref"), "{invalid}");
        assert!(invalid.hint.is_some());
        let err = changed(repo.path(), "--output=/tmp/x").unwrap_err();
        assert!(err.downcast_ref::<InvalidInput>().is_some(), "{err:#}");
    }
}
