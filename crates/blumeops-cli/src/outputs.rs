//! Workflow step outputs: `ref=`, `digest=` and `tag=` lines appended to the files named by
//! `GITHUB_OUTPUT` and `FORGEJO_OUTPUT` (GitHub Actions and Forgejo Actions), and the same
//! three values as one JSON object for `--json`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use blumeops_core::Digest;

/// Variables naming an output file, in the order they are written.
pub const OUTPUT_VARIABLES: [&str; 2] = ["GITHUB_OUTPUT", "FORGEJO_OUTPUT"];

/// Append `ref=REFERENCE`, `digest=DIGEST` and `tag=TAG` to every file named by a set,
/// non-empty [`OUTPUT_VARIABLES`] variable (once per file when both name the same one).
/// Returns the files written.
pub fn write_workflow_outputs(reference: &str, digest: &Digest, tag: &str) -> Result<Vec<PathBuf>> {
    let paths = output_files(|name| std::env::var_os(name));
    for path in &paths {
        append_outputs(path, reference, digest, tag)?;
    }
    Ok(paths)
}

/// The output files named by the environment (`lookup`), without duplicates.
fn output_files(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for name in OUTPUT_VARIABLES {
        if let Some(value) = lookup(name).filter(|v| !v.is_empty()) {
            let path = PathBuf::from(value);
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
    }
    paths
}

fn append_outputs(path: &Path, reference: &str, digest: &Digest, tag: &str) -> Result<()> {
    let text = format!("ref={reference}\ndigest={digest}\ntag={tag}\n");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| {
            format!(
                "failed to open the workflow output file `{}`",
                path.display()
            )
        })?;
    file.write_all(text.as_bytes()).with_context(|| {
        format!(
            "failed to write the workflow output file `{}`",
            path.display()
        )
    })
}

/// `{"ref":..,"digest":..,"tag":..}` on one line.
pub fn json_line(reference: &str, digest: &Digest, tag: &str) -> String {
    serde_json::json!({
        "ref": reference,
        "digest": digest.to_string(),
        "tag": tag,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        format!("sha256:{}", "b".repeat(64)).parse().unwrap()
    }

    #[test]
    fn appends_to_each_set_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let github = dir.path().join("github");
        let forgejo = dir.path().join("forgejo");
        std::fs::write(&github, "earlier=1\n").unwrap();

        let both = |name: &str| match name {
            "GITHUB_OUTPUT" => Some(github.clone().into_os_string()),
            "FORGEJO_OUTPUT" => Some(forgejo.clone().into_os_string()),
            _ => None,
        };
        let paths = output_files(both);
        assert_eq!(paths, [github.clone(), forgejo.clone()]);
        for p in &paths {
            append_outputs(p, "r.example/blumeops/hello:v1-abc", &digest(), "v1-abc").unwrap();
        }
        let expected = format!(
            "ref=r.example/blumeops/hello:v1-abc\ndigest=sha256:{}\ntag=v1-abc\n",
            "b".repeat(64)
        );
        assert_eq!(
            std::fs::read_to_string(&github).unwrap(),
            format!("earlier=1\n{expected}")
        );
        assert_eq!(std::fs::read_to_string(&forgejo).unwrap(), expected);

        // Both naming one file: written once. Unset or empty: nothing.
        let same = |_: &str| Some(github.clone().into_os_string());
        assert_eq!(output_files(same), std::slice::from_ref(&github));
        assert!(output_files(|_| None).is_empty());
        assert!(output_files(|_| Some(std::ffi::OsString::new())).is_empty());
    }

    #[test]
    fn unwritable_file_names_its_path() {
        let err = append_outputs(Path::new("/nonexistent-dir/out"), "r", &digest(), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent-dir/out"), "{err}");
    }

    #[test]
    fn json_object() {
        let line = json_line("r/blumeops/x:v1-a", &digest(), "v1-a");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ref"], "r/blumeops/x:v1-a");
        assert_eq!(v["tag"], "v1-a");
        assert_eq!(v["digest"], format!("sha256:{}", "b".repeat(64)));
        assert!(!line.contains('\n'));
    }
}
