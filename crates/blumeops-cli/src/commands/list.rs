//! `blumeops list`: every container with its build types, version and (optionally) tags.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use blumeops_core::{ClientOptions, Credentials, ImageRef, RegistryClient, file_container_version};

use crate::cli::{ListArgs, NAMESPACE};
use crate::containers;

/// How many of the newest tags `--tags` shows.
pub const SHOWN_TAGS: usize = 5;

/// One container as listed.
#[derive(Debug, Default)]
struct Entry {
    types: Vec<&'static str>,
    version: Option<String>,
    tags: Option<Vec<String>>,
}

pub async fn run(args: ListArgs) -> Result<ExitCode> {
    let mut entries = collect(&args.src);
    if args.tags {
        let client = RegistryClient::new(ClientOptions {
            credentials: Credentials::from_config_files(),
            plain_http: args.plain_http,
            ..ClientOptions::default()
        })
        .map_err(blumeops_core::Error::from)?;
        for (name, entry) in &mut entries {
            let text = format!("{}/{NAMESPACE}/{name}", args.registry.trim_end_matches('/'));
            let repository: ImageRef = text
                .parse()
                .map_err(blumeops_core::Error::from)
                .with_context(|| format!("invalid repository `{text}`"))?;
            let tags = client
                .list_tags(&repository)
                .await
                .map_err(blumeops_core::Error::from)?;
            entry.tags = Some(newest(tags, SHOWN_TAGS));
        }
    }
    if args.json {
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|(name, e)| {
                let mut v = serde_json::json!({
                    "name": name,
                    "types": e.types,
                    "version": e.version,
                });
                if let Some(tags) = &e.tags {
                    v["tags"] = serde_json::json!(tags);
                }
                v
            })
            .collect();
        let json = serde_json::to_string_pretty(&list).context("failed to serialize the list")?;
        println!("{json}");
    } else {
        print!("{}", table(&entries));
    }
    Ok(ExitCode::SUCCESS)
}

/// Native definitions and `SRC/containers/*/` with a Dockerfile or default.nix, by name.
/// A version that cannot be read is reported on stderr and listed as unknown.
fn collect(src: &Path) -> BTreeMap<String, Entry> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for def in containers::native() {
        let entry = entries.entry(def.name().to_owned()).or_default();
        entry.types.push("native");
        entry.version = Some(def.version().to_owned());
    }
    for name in blumeops_core::file_container_names(src) {
        let dir = src.join("containers").join(&name);
        let entry = entries.entry(name.clone()).or_default();
        if dir.join("Dockerfile").is_file() {
            entry.types.push("dockerfile");
        }
        if dir.join("default.nix").is_file() {
            entry.types.push("nix");
        }
        if entry.version.is_none() {
            match file_container_version(src, &name) {
                Ok(version) => entry.version = version,
                Err(err) => eprintln!("warning: {err}"),
            }
        }
    }
    entries
}

fn table(entries: &BTreeMap<String, Entry>) -> String {
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|(name, e)| {
            [
                name.clone(),
                e.types.join(","),
                e.version.clone().unwrap_or_else(|| "unknown".to_owned()),
                e.tags.as_ref().map(|t| t.join(" ")).unwrap_or_default(),
            ]
        })
        .collect();
    let with_tags = entries.values().any(|e| e.tags.is_some());
    let header = ["NAME", "TYPES", "VERSION", "TAGS"].map(str::to_owned);
    let columns = if with_tags { 4 } else { 3 };
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = (0..columns)
            .map(|c| {
                if c + 1 == columns {
                    row[c].clone()
                } else {
                    format!("{:<w$}", row[c], w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The last `n` tags in natural order (`v1.9.0` before `v1.10.0`), oldest first.
fn newest(mut tags: Vec<String>, n: usize) -> Vec<String> {
    tags.sort_by(|a, b| natural_cmp(a, b));
    tags.dedup();
    let skip = tags.len().saturating_sub(n);
    tags.split_off(skip)
}

/// Compare digit runs as numbers and everything else as text.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let (ca, ra) = chunk(a);
        let (cb, rb) = chunk(b);
        let both_digits = ca.starts_with(|c: char| c.is_ascii_digit())
            && cb.starts_with(|c: char| c.is_ascii_digit());
        let order = if both_digits {
            let (ta, tb) = (ca.trim_start_matches('0'), cb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            ca.cmp(cb)
        };
        if order != Ordering::Equal {
            return order;
        }
        (a, b) = (ra, rb);
    }
}

/// The leading run of digits or of non-digits, and the rest.
fn chunk(s: &str) -> (&str, &str) {
    let digits = s.starts_with(|c: char| c.is_ascii_digit());
    let end = s
        .find(|c: char| c.is_ascii_digit() != digits)
        .unwrap_or(s.len());
    s.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_tag_order() {
        let tags = [
            "v1.10.0-aaa",
            "v1.9.0-bbb",
            "v1.2.0-ccc",
            "latest",
            "v1.9.0-bbb",
        ];
        let sorted = newest(tags.iter().map(|s| s.to_string()).collect(), 5);
        assert_eq!(
            sorted,
            ["latest", "v1.2.0-ccc", "v1.9.0-bbb", "v1.10.0-aaa"]
        );
        let last2 = newest(tags.iter().map(|s| s.to_string()).collect(), 2);
        assert_eq!(last2, ["v1.9.0-bbb", "v1.10.0-aaa"]);
        assert_eq!(natural_cmp("a01", "a1"), Ordering::Equal);
        assert_eq!(natural_cmp("a2", "a10"), Ordering::Less);
    }

    #[test]
    fn collects_native_dockerfile_and_nix() {
        let src = tempfile::tempdir().unwrap();
        let c = src.path().join("containers");
        for (name, file, text) in [
            (
                "web",
                "Dockerfile",
                "ARG CONTAINER_APP_VERSION=2.1.0\nFROM x\n",
            ),
            (
                "both",
                "Dockerfile",
                "FROM x\nARG CONTAINER_APP_VERSION=v3.0.0\n",
            ),
            ("both", "default.nix", "{ }: { version = \"3.0.0\"; }\n"),
            ("nixy", "default.nix", "let\n  version = \"0.5\";\nin x\n"),
            ("broken", "Dockerfile", "FROM x\n"),
        ] {
            std::fs::create_dir_all(c.join(name)).unwrap();
            std::fs::write(c.join(name).join(file), text).unwrap();
        }
        std::fs::create_dir_all(c.join("empty")).unwrap();
        let entries = collect(src.path());
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "blumeops-engine",
                "both",
                "broken",
                "hello",
                "navidrome",
                "nixy",
                "web"
            ]
        );
        assert_eq!(entries["hello"].types, ["native"]);
        assert_eq!(entries["hello"].version.as_deref(), Some("v1.0.0"));
        assert_eq!(entries["both"].types, ["dockerfile", "nix"]);
        assert_eq!(entries["web"].version.as_deref(), Some("v2.1.0"));
        assert_eq!(entries["nixy"].version.as_deref(), Some("v0.5"));
        assert_eq!(entries["broken"].version, None);
        let text = table(&entries);
        assert!(
            text.starts_with("NAME             TYPES           VERSION\n"),
            "{text}"
        );
        assert!(
            text.contains("hello            native          v1.0.0\n"),
            "{text}"
        );
        assert!(
            text.contains("broken           dockerfile      unknown\n"),
            "{text}"
        );
    }
}
