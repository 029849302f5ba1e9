//! What a registry cache repository holds (`blumeops cache du --remote`).

use std::collections::{BTreeMap, HashSet};

use futures_util::{StreamExt as _, TryStreamExt as _};

use super::artifact::{self, STEP_ARTIFACT, STEP_CONFIG, VOLUME_ARTIFACT, VOLUME_CONFIG};
use super::chains::{CHAIN_ARTIFACT, CHAIN_CONFIG};
use crate::reference::ImageRef;
use crate::registry::{Error, RegistryClient};

/// Manifests read at once.
const PARALLEL_READS: usize = 8;

/// A registry cache repository's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteUsage {
    /// Step entries and the bytes of their blobs (configs and layers).
    pub steps: (usize, u64),
    /// Stage chains and the bytes of their blobs (mostly the steps' layers again).
    pub chains: (usize, u64),
    /// Volume snapshots by volume (tag-safe) name: count and bytes.
    pub volumes: BTreeMap<String, (usize, u64)>,
    /// Tags that are not cache entries (or whose manifest is not one).
    pub other_tags: usize,
    /// Bytes of distinct blobs in all entries.
    pub total_bytes: u64,
}

/// List `repository`'s tags and read every entry's manifest for its sizes.
pub async fn registry_cache_usage(
    client: &RegistryClient,
    repository: &ImageRef,
) -> Result<RemoteUsage, Error> {
    let tags = client.list_tags(repository).await?;
    let manifests: Vec<(String, Option<Vec<u8>>)> = futures_util::stream::iter(tags)
        .map(|tag| async move {
            let kind = ["step-", "chain-", "volume-"]
                .iter()
                .any(|p| tag.starts_with(p));
            if !kind {
                return Ok((tag, None));
            }
            let fetched = client
                .fetch_manifest_bytes(&repository.with_tag(&tag))
                .await?;
            Ok::<_, Error>((tag, fetched.map(|(bytes, _, _)| bytes)))
        })
        .buffer_unordered(PARALLEL_READS)
        .try_collect()
        .await?;
    let mut usage = RemoteUsage::default();
    let mut seen = HashSet::new();
    for (tag, bytes) in manifests {
        let Some(bytes) = bytes else {
            usage.other_tags += 1;
            continue;
        };
        let parsed = if tag.starts_with("step-") {
            artifact::parse_entry(&bytes, STEP_ARTIFACT, STEP_CONFIG)
        } else if tag.starts_with("chain-") {
            artifact::parse_entry_with(&bytes, CHAIN_ARTIFACT, CHAIN_CONFIG, usize::MAX)
        } else {
            artifact::parse_entry(&bytes, VOLUME_ARTIFACT, VOLUME_CONFIG)
        };
        let Ok((config, layers)) = parsed else {
            usage.other_tags += 1;
            continue;
        };
        let mut bytes = 0;
        for blob in std::iter::once(&config).chain(&layers) {
            bytes += blob.size;
            if seen.insert(blob.digest.clone()) {
                usage.total_bytes += blob.size;
            }
        }
        if tag.starts_with("step-") {
            usage.steps.0 += 1;
            usage.steps.1 += bytes;
        } else if tag.starts_with("chain-") {
            usage.chains.0 += 1;
            usage.chains.1 += bytes;
        } else {
            // `volume-<name>-<time>-<hex>`: the name is what is left.
            let name = tag
                .strip_prefix("volume-")
                .and_then(|rest| rest.rsplitn(3, '-').nth(2))
                .unwrap_or("?")
                .to_owned();
            let entry = usage.volumes.entry(name).or_default();
            entry.0 += 1;
            entry.1 += bytes;
        }
    }
    Ok(usage)
}
