//! `blumeops cache du` and `blumeops cache prune`, and the size limit applied after builds.

use std::process::ExitCode;

use anyhow::Result;
use blumeops_core::{
    ClientOptions, Credentials, ImageRef, PrunePolicy, RegistryClient, Store, parse_age,
    parse_size, registry_cache_usage,
};

use super::InvalidInput;
use crate::cli::{CacheCommand, CacheDuArgs, CachePruneArgs};

pub async fn run(cmd: CacheCommand) -> Result<ExitCode> {
    if let CacheCommand::Du(CacheDuArgs {
        remote: Some(repo),
        json,
    }) = &cmd
    {
        return du_remote(repo, *json).await;
    }
    let store = Store::open_default().map_err(blumeops_core::Error::from)?;
    match cmd {
        CacheCommand::Du(args) => du(&store, &args),
        CacheCommand::Prune(args) => prune(&store, &args),
    }
}

fn du(store: &Store, args: &CacheDuArgs) -> Result<ExitCode> {
    let usage = store.usage().map_err(blumeops_core::Error::from)?;
    if args.json {
        let parts: serde_json::Map<String, serde_json::Value> = usage
            .parts
            .iter()
            .map(|(name, entries, bytes)| {
                (
                    (*name).to_owned(),
                    serde_json::json!({"entries": entries, "bytes": bytes}),
                )
            })
            .collect();
        let doc = serde_json::json!({
            "path": store.root(),
            "total_bytes": usage.total_bytes(),
            "parts": parts,
        });
        println!("{doc}");
    } else {
        println!("{}", store.root().display());
        for (name, entries, bytes) in &usage.parts {
            println!("{name:<10} {entries:>8} entries {:>12}", human(*bytes));
        }
        println!(
            "{:<10} {:>8}         {:>12}",
            "total",
            "",
            human(usage.total_bytes())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `cache du --remote REPO`: entries and bytes of a registry cache repository.
async fn du_remote(repo: &str, json: bool) -> Result<ExitCode> {
    let repository: ImageRef = repo.parse().map_err(|e: blumeops_core::ReferenceError| {
        InvalidInput::new(format!("--remote: `{repo}` is not a repository: {e}"))
    })?;
    let client = RegistryClient::new(ClientOptions {
        credentials: Credentials::from_config_files(),
        ..ClientOptions::default()
    })
    .map_err(blumeops_core::Error::from)?;
    let usage = registry_cache_usage(&client, &repository)
        .await
        .map_err(blumeops_core::Error::from)?;
    let name = format!("{}/{}", repository.registry(), repository.repository());
    if json {
        let volumes: serde_json::Map<String, serde_json::Value> = usage
            .volumes
            .iter()
            .map(|(v, (n, b))| (v.clone(), serde_json::json!({"snapshots": n, "bytes": b})))
            .collect();
        let doc = serde_json::json!({
            "repository": name,
            "steps": {"entries": usage.steps.0, "bytes": usage.steps.1},
            "chains": {"entries": usage.chains.0, "bytes": usage.chains.1},
            "volumes": volumes,
            "other_tags": usage.other_tags,
            "total_bytes": usage.total_bytes,
        });
        println!("{doc}");
    } else {
        println!("{name}");
        println!(
            "{:<24} {:>8} entries {:>12}",
            "steps",
            usage.steps.0,
            human(usage.steps.1)
        );
        println!(
            "{:<24} {:>8} entries {:>12}",
            "stage chains",
            usage.chains.0,
            human(usage.chains.1)
        );
        for (volume, (count, bytes)) in &usage.volumes {
            println!(
                "{:<24} {count:>8} entries {:>12}",
                format!("volume {volume}"),
                human(*bytes)
            );
        }
        if usage.other_tags > 0 {
            println!("{:<24} {:>8} tags", "not cache entries", usage.other_tags);
        }
        println!(
            "{:<24} {:>8}         {:>12}",
            "total (distinct blobs)",
            "",
            human(usage.total_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy `cache prune` flags ask for.
pub fn policy(args: &CachePruneArgs) -> Result<PrunePolicy, InvalidInput> {
    if args.all {
        return Ok(PrunePolicy::All);
    }
    if let Some(size) = &args.keep_bytes {
        return parse_size(size).map(PrunePolicy::KeepBytes).ok_or_else(|| {
            InvalidInput::new(format!("--keep-bytes: `{size}` is not a size"))
                .with_hint("give bytes, or a number with K, M, G or T (powers of 1024)")
        });
    }
    let age = args.older_than.as_deref().unwrap_or_default();
    parse_age(age).map(PrunePolicy::OlderThan).ok_or_else(|| {
        InvalidInput::new(format!("--older-than: `{age}` is not an age"))
            .with_hint("give a number with s, m, h, d or w, e.g. 7d")
    })
}

fn prune(store: &Store, args: &CachePruneArgs) -> Result<ExitCode> {
    let policy = policy(args)?;
    let lock = match store
        .try_lock_exclusive()
        .map_err(blumeops_core::Error::from)?
    {
        Some(lock) => lock,
        None => {
            eprintln!(
                "waiting for the builds using {} to finish",
                store.root().display()
            );
            store.lock_exclusive().map_err(blumeops_core::Error::from)?
        }
    };
    let report = store.prune(policy).map_err(blumeops_core::Error::from)?;
    drop(lock);
    let left = store.usage().map_err(blumeops_core::Error::from)?;
    println!(
        "removed {} entries, freed {}; the cache holds {}",
        report.removed,
        human(report.freed_bytes),
        human(left.total_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

/// After a build: evict the least recently used data beyond `limit` (`0`: no limit), when
/// no other build is running. Best effort: a failure is reported, never the build's. A
/// build whose steps all came from the cache added nothing, so the store is not walked.
pub fn enforce_limit(store: &Store, limit: u64, steps_ran: usize) {
    if limit == 0 || steps_ran == 0 {
        return;
    }
    let evict = || -> Result<Option<u64>, blumeops_core::StoreError> {
        let Some(_lock) = store.try_lock_exclusive()? else {
            return Ok(None);
        };
        if store.usage()?.total_bytes() <= limit {
            return Ok(None);
        }
        Ok(Some(
            store.prune(PrunePolicy::KeepBytes(limit))?.freed_bytes,
        ))
    };
    match evict() {
        Ok(Some(freed)) => eprintln!(
            "cache over its limit of {}: evicted {} of least recently used data",
            human(limit),
            human(freed)
        ),
        Ok(None) => {}
        Err(e) => eprintln!("warning: could not apply the cache size limit: {e}"),
    }
}

/// Bytes in a short human form (powers of 1024).
pub fn human(bytes: u64) -> String {
    blumeops_core::human_size(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(human(20 << 30), "20.0 GiB");
    }

    #[test]
    fn bad_sizes_and_ages_are_invalid_input() {
        let args = |keep: Option<&str>, older: Option<&str>| CachePruneArgs {
            all: false,
            keep_bytes: keep.map(str::to_owned),
            older_than: older.map(str::to_owned),
        };
        assert_eq!(
            policy(&args(Some("1G"), None)).unwrap(),
            PrunePolicy::KeepBytes(1 << 30)
        );
        let err = policy(&args(Some("lots"), None)).unwrap_err();
        assert!(err.message.contains("`lots`"), "{}", err.message);
        assert!(policy(&args(None, Some("7y"))).is_err());
    }
}
