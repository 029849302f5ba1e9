//! Pulling: manifest (narrowing an index to one platform), then config and layers streamed
//! into the store, each verified.

use std::collections::HashSet;
use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::{
    Access, BLOB_STALL_TIMEOUT, Call, Error, Limit, MAX_MANIFEST_BYTES, MirrorFailure, PulledImage,
    RegistryClient, Repo, blocking, header_digest, read_limited, status_error, timeout_error,
    transport_error,
};
use crate::image::{BlobRef, ManifestBlob, StoredImage, media_types};
use crate::reference::{Digest, ImageRef, Platform};
use crate::store::{BlobWriter, Error as StoreError, Store};

/// A manifest or index as fetched.
pub(super) struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
    pub url: String,
}

impl RegistryClient {
    /// Pull `reference` from the first of its sources that serves it (its mirrors, then its
    /// registry); without mirrors, straight from its registry.
    pub(super) async fn pull_image_impl(
        &self,
        reference: &ImageRef,
        platform: &Platform,
        store: &Store,
    ) -> Result<PulledImage, Error> {
        let Some(sources) = self.options.mirrors.sources(reference)? else {
            return self.pull_from(reference, false, platform, store).await;
        };
        let mut failures = sources.failures;
        let last = sources.candidates.len() - 1;
        for (i, candidate) in sources.candidates.into_iter().enumerate() {
            let label = candidate
                .mirror
                .clone()
                .unwrap_or_else(|| candidate.reference.registry().to_owned());
            let host = candidate.reference.registry().to_owned();
            if i < last && self.unreachable(&host) {
                failures.push(MirrorFailure {
                    mirror: label,
                    error: format!("skipped: {host} could not be reached earlier in this build"),
                });
                continue;
            }
            let pulled = self
                .pull_from(&candidate.reference, candidate.plain_http, platform, store)
                .await;
            match pulled {
                Ok(mut pulled) => {
                    pulled.mirror = candidate.mirror;
                    pulled.mirror_failures = failures;
                    return Ok(pulled);
                }
                // This machine's store failing is no reason to ask elsewhere.
                Err(e @ Error::Store(_)) => return Err(e),
                Err(e) if i < last => {
                    if host_down(&e) {
                        self.unreachable_mirrors
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(host);
                    }
                    failures.push(MirrorFailure {
                        mirror: label,
                        error: failure_text(&e),
                    });
                }
                Err(e) if failures.is_empty() => return Err(e),
                Err(e) => {
                    return Err(Error::MirrorsFailed {
                        reference: reference.to_string(),
                        location: candidate.reference.to_string(),
                        failures,
                        last: Box::new(e),
                    });
                }
            }
        }
        unreachable!("the registry itself is always the last source")
    }

    /// Whether a mirror on `host` could not be reached before (its other mirrors are skipped).
    fn unreachable(&self, host: &str) -> bool {
        self.unreachable_mirrors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(host)
    }

    /// Pull `reference` from where it says (over plain HTTP also when `plain_http`).
    async fn pull_from(
        &self,
        reference: &ImageRef,
        plain_http: bool,
        platform: &Platform,
        store: &Store,
    ) -> Result<PulledImage, Error> {
        let repo = self.repo_with(reference, Access::Pull, plain_http)?;
        let name = reference.to_string();
        let top = self
            .fetch_manifest(
                &repo,
                &name,
                &reference.manifest_reference(),
                reference.digest(),
            )
            .await?;
        let manifest = if media_types::is_index(&top.media_type) {
            let digest = select_manifest(&name, &top.url, &top.bytes, platform)?;
            let chosen = self
                .fetch_manifest(&repo, &name, &digest.to_string(), Some(&digest))
                .await?;
            if !media_types::is_image_manifest(&chosen.media_type) {
                return Err(Error::UnsupportedMediaType {
                    reference: name,
                    media_type: chosen.media_type,
                });
            }
            chosen
        } else if media_types::is_image_manifest(&top.media_type) {
            top
        } else {
            return Err(Error::UnsupportedMediaType {
                reference: name,
                media_type: top.media_type,
            });
        };

        let parsed: oci_spec::image::ImageManifest = serde_json::from_slice(&manifest.bytes)
            .map_err(|source| Error::InvalidJson {
                what: "image manifest",
                url: manifest.url.clone(),
                source,
            })?;
        // Refuse what is over the limits before downloading anything.
        let over = |what, unit, count: u64, limit: u64| Error::OverLimit {
            reference: name.clone(),
            what,
            unit,
            count,
            limit,
        };
        let layer_count = parsed.layers().len() as u64;
        if layer_count > crate::limits::MAX_LAYERS as u64 {
            return Err(over(
                "manifest",
                "layers",
                layer_count,
                crate::limits::MAX_LAYERS as u64,
            ));
        }
        if parsed.config().size() > crate::limits::MAX_CONFIG_BYTES {
            return Err(over(
                "config",
                "bytes",
                parsed.config().size(),
                crate::limits::MAX_CONFIG_BYTES,
            ));
        }
        let config = blob_ref(&name, parsed.config())?;
        let layers = parsed
            .layers()
            .iter()
            .map(|d| blob_ref(&name, d))
            .collect::<Result<Vec<_>, _>>()?;

        let manifest_bytes = manifest.bytes.clone();
        let manifest_store = store.clone();
        blocking(move || manifest_store.put_bytes(&manifest_bytes)).await?;

        let mut seen = HashSet::new();
        // Owned items: a stream over `&BlobRef` makes the future not provably `Send` for
        // every lifetime, which callers that box it as `dyn Future + Send` need.
        let wanted: Vec<BlobRef> = std::iter::once(&config)
            .chain(layers.iter())
            .filter(|b| seen.insert(b.digest.clone()))
            .cloned()
            .collect();
        let repo_ref = &repo;
        let fetched = futures_util::stream::iter(wanted)
            .map(|blob| async move { self.fetch_blob(repo_ref, &blob, store).await })
            .buffer_unordered(self.options.max_parallel_downloads.max(1))
            .try_collect::<Vec<u64>>()
            .await?;
        let (blobs_fetched, bytes_fetched) = fetched
            .iter()
            .filter(|b| **b > 0)
            .fold((0, 0), |(n, sum), b| (n + 1, sum + b));

        let config_store = store.clone();
        let config_digest = config.digest.clone();
        let config_bytes = blocking(move || config_store.read_blob(&config_digest)).await?;
        let parsed_config: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| Error::InvalidJson {
                what: "image config",
                url: blob_url_text(&repo, &config.digest),
                source,
            })?;

        Ok(PulledImage {
            image: StoredImage {
                manifest: ManifestBlob::new(manifest.bytes, manifest.media_type),
                config,
                layers,
            },
            config: parsed_config,
            blobs_fetched,
            bytes_fetched,
            mirror: None,
            mirror_failures: Vec::new(),
        })
    }

    /// HEAD the manifest; fall back to a GET when the registry sends no digest header.
    pub(super) async fn head_manifest_in(
        &self,
        repo: &Repo,
        reference: &ImageRef,
    ) -> Result<Option<Digest>, Error> {
        let name = reference.to_string();
        let by = reference.manifest_reference();
        let url = repo.url(&format!("v2/{}/manifests/{by}", repo.repository))?;
        let call = Call {
            repo,
            operation: super::Operation::CheckTag,
            target: &name,
            url: &url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let found = self
            .retrying(&call, Duration::ZERO, || async {
                let response = self
                    .send(&call, || {
                        Ok(self
                            .http
                            .head(url.clone())
                            .header(ACCEPT, media_types::MANIFEST_ACCEPT))
                    })
                    .await?;
                match response.status() {
                    StatusCode::NOT_FOUND => Ok(None),
                    s if s.is_success() => Ok(Some(header_digest(response.headers()))),
                    _ => Err(status_error(&call, response).await),
                }
            })
            .await?;
        match found {
            None => Ok(None),
            Some(Some(digest)) => Ok(Some(digest)),
            Some(None) => {
                let fetched = self.fetch_manifest(repo, &name, &by, None).await?;
                Ok(Some(fetched.digest))
            }
        }
    }

    /// GET a manifest or index by tag or digest, verifying it against `expected` and the
    /// `Docker-Content-Digest` header.
    pub(super) async fn fetch_manifest(
        &self,
        repo: &Repo,
        name: &str,
        by: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest, Error> {
        let url = repo.url(&format!("v2/{}/manifests/{by}", repo.repository))?;
        let call = Call {
            repo,
            operation: super::Operation::PullManifest,
            target: name,
            url: &url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let (header_type, claimed, bytes) = self
            .retrying(&call, Duration::ZERO, || async {
                let response = self
                    .send(&call, || {
                        Ok(self
                            .http
                            .get(url.clone())
                            .header(ACCEPT, media_types::MANIFEST_ACCEPT))
                    })
                    .await?;
                if response.status() != StatusCode::OK {
                    return Err(status_error(&call, response).await);
                }
                let header_type = response
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
                let claimed = header_digest(response.headers());
                let bytes = read_limited(&call, response, MAX_MANIFEST_BYTES).await?;
                Ok((header_type, claimed, bytes))
            })
            .await?;
        let digest = Digest::of(&bytes);
        for expected in [expected, claimed.as_ref()].into_iter().flatten() {
            if *expected != digest {
                return Err(Error::DigestMismatch {
                    object: "manifest",
                    url: url.to_string(),
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        let media_type = manifest_media_type(&bytes, header_type.as_deref());
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
            url: url.to_string(),
        })
    }

    /// Stream one blob into the store unless it is there already.
    /// Download a blob unless the store has it; the bytes downloaded (0 if it had it).
    pub(super) async fn fetch_blob(
        &self,
        repo: &Repo,
        blob: &BlobRef,
        store: &Store,
    ) -> Result<u64, Error> {
        if store.has_blob(&blob.digest) {
            return Ok(0);
        }
        let target = blob.digest.to_string();
        let url = repo.url(&format!("v2/{}/blobs/{}", repo.repository, blob.digest))?;
        let call = Call {
            repo,
            operation: super::Operation::PullBlob,
            target: &target,
            url: &url,
            limit: Limit::Headers(BLOB_STALL_TIMEOUT),
        };
        let extra = Duration::from_secs(blob.size / super::UPLOAD_MIN_BYTES_PER_SEC);
        self.retrying(&call, extra, || self.fetch_blob_once(&call, blob, store))
            .await?;
        Ok(blob.size)
    }

    /// One attempt at downloading a blob into the store.
    async fn fetch_blob_once(
        &self,
        call: &Call<'_>,
        blob: &BlobRef,
        store: &Store,
    ) -> Result<(), Error> {
        let url = call.url;
        let mut response = self.send(call, || Ok(self.http.get(url.clone()))).await?;
        if response.status() != StatusCode::OK {
            return Err(status_error(call, response).await);
        }
        let size_mismatch = |actual: u64| Error::SizeMismatch {
            object: "blob",
            digest: blob.digest.clone(),
            url: url.to_string(),
            expected: blob.size,
            actual,
        };
        if let Some(length) = response.content_length()
            && length != blob.size
        {
            return Err(size_mismatch(length));
        }

        // Chunks go through a small channel to a blocking task that writes and hashes them.
        let writer = store.blob_writer()?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let write_task = tokio::task::spawn_blocking(move || -> Result<BlobWriter, StoreError> {
            let mut writer = writer;
            while let Some(chunk) = rx.blocking_recv() {
                writer.write_all(&chunk).map_err(|source| StoreError::Io {
                    action: "write",
                    path: writer.path().to_owned(),
                    source,
                })?;
            }
            Ok(writer)
        });
        let mut received = 0u64;
        let streamed: Result<(), Error> = async {
            loop {
                let chunk = match tokio::time::timeout(BLOB_STALL_TIMEOUT, response.chunk()).await {
                    Err(_) => return Err(timeout_error(call, BLOB_STALL_TIMEOUT)),
                    Ok(Err(e)) => return Err(transport_error(call, e)),
                    Ok(Ok(None)) => return Ok(()),
                    Ok(Ok(Some(chunk))) => chunk,
                };
                received += chunk.len() as u64;
                if received > blob.size {
                    return Err(size_mismatch(received));
                }
                if tx.send(chunk).await.is_err() {
                    // The writer failed; its error is reported below.
                    return Ok(());
                }
            }
        }
        .await;
        drop(tx);
        let written = match write_task.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        streamed?;
        let writer = written?;
        if received != blob.size {
            return Err(size_mismatch(received));
        }
        let expected = blob.digest.clone();
        blocking(move || writer.commit(Some(&expected)))
            .await
            .map_err(|e| match e {
                StoreError::DigestMismatch {
                    expected, actual, ..
                } => Error::DigestMismatch {
                    object: "blob",
                    url: url.to_string(),
                    expected,
                    actual,
                },
                other => Error::Store(other),
            })?;
        Ok(())
    }
}

/// Whether `error` says the host could not be talked to at all (not that it failed this
/// one image): its other mirrors are skipped from then on.
fn host_down(error: &Error) -> bool {
    match error {
        Error::Unreachable { .. } | Error::Certificate { .. } | Error::Timeout { .. } => true,
        Error::Retried { last, .. } => host_down(last),
        _ => false,
    }
}

/// Why a mirror did not serve an image, on one line: the error, what happened on the wire
/// (its innermost cause), and how many attempts it took.
fn failure_text(error: &Error) -> String {
    let (error, attempts) = match error {
        Error::Retried { last, attempts, .. } => (last.as_ref(), *attempts),
        other => (other, 1),
    };
    let mut text = error.to_string();
    let mut innermost = None;
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        innermost = Some(cause);
        source = cause.source();
    }
    if let Some(cause) = innermost.map(ToString::to_string)
        && !text.contains(&cause)
    {
        text.push_str(": ");
        text.push_str(&cause);
    }
    if attempts > 1 {
        text.push_str(&format!(" ({attempts} attempts)"));
    }
    text
}

fn blob_url_text(repo: &Repo, digest: &Digest) -> String {
    format!("{}v2/{}/blobs/{digest}", repo.base, repo.repository)
}

/// A descriptor as a [`BlobRef`]; only sha256 digests are accepted.
fn blob_ref(name: &str, descriptor: &oci_spec::image::Descriptor) -> Result<BlobRef, Error> {
    let text = descriptor.digest().to_string();
    let digest = text.parse().map_err(|_| Error::UnsupportedDigest {
        reference: name.to_owned(),
        what: "manifest",
        digest: text.clone(),
    })?;
    Ok(BlobRef {
        digest,
        size: descriptor.size(),
        media_type: descriptor.media_type().to_string(),
    })
}

/// The manifest's media type: its own `mediaType` field, else the `Content-Type` header, else
/// guessed from its shape.
fn manifest_media_type(bytes: &[u8], header: Option<&str>) -> String {
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let shape: Option<Shape> = serde_json::from_slice(bytes).ok();
    let known = |t: &str| media_types::is_index(t) || media_types::is_image_manifest(t);
    if let Some(t) = shape
        .as_ref()
        .and_then(|s| s.media_type.as_deref())
        .filter(|t| known(t))
    {
        return t.to_owned();
    }
    if let Some(t) = header.filter(|t| known(t)) {
        return t.to_owned();
    }
    match shape {
        Some(Shape {
            manifests: Some(_), ..
        }) => media_types::OCI_INDEX.to_owned(),
        Some(Shape {
            config: Some(_), ..
        }) => media_types::OCI_MANIFEST.to_owned(),
        Some(Shape {
            media_type: Some(t),
            ..
        }) => t,
        _ => header.unwrap_or("unknown").to_owned(),
    }
}

/// Pick the index entry for `platform`; entries without a platform or for `unknown/unknown`
/// (attestations) are skipped.
fn select_manifest(
    name: &str,
    url: &str,
    index_bytes: &[u8],
    platform: &Platform,
) -> Result<Digest, Error> {
    let index: oci_spec::image::ImageIndex =
        serde_json::from_slice(index_bytes).map_err(|source| Error::InvalidJson {
            what: "image index",
            url: url.to_owned(),
            source,
        })?;
    let count = index.manifests().len() as u64;
    if count > crate::limits::MAX_INDEX_MANIFESTS as u64 {
        return Err(Error::OverLimit {
            reference: name.to_owned(),
            what: "index",
            unit: "manifests",
            count,
            limit: crate::limits::MAX_INDEX_MANIFESTS as u64,
        });
    }
    let mut available = Vec::new();
    for entry in index.manifests() {
        let Some(p) = entry.platform() else {
            continue;
        };
        let (os, arch) = (p.os().to_string(), p.architecture().to_string());
        if os == "unknown" {
            continue;
        }
        if platform.matches(&os, &arch, p.variant().as_deref()) {
            let text = entry.digest().to_string();
            return text.parse().map_err(|_| Error::UnsupportedDigest {
                reference: name.to_owned(),
                what: "index",
                digest: text,
            });
        }
        available.push(match p.variant() {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
    }
    Err(Error::PlatformNotFound {
        reference: name.to_owned(),
        platform: platform.clone(),
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn docker_manifest_list() -> String {
        format!(
            r#"{{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
   "manifests": [
      {{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528,
        "digest": "{}", "platform": {{"architecture": "amd64", "os": "linux"}}}},
      {{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528,
        "digest": "{}", "platform": {{"architecture": "arm", "os": "linux", "variant": "v7"}}}},
      {{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528,
        "digest": "{}", "platform": {{"architecture": "arm64", "os": "linux", "variant": "v8"}}}}
   ]
}}"#,
            d('a'),
            d('b'),
            d('c')
        )
    }

    fn oci_index() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"{}",
                "platform":{{"architecture":"unknown","os":"unknown"}}}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"{}",
                "platform":{{"architecture":"arm64","os":"linux"}}}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"{}",
                "platform":{{"architecture":"amd64","os":"linux"}}}}
            ]}}"#,
            d('1'),
            d('2'),
            d('3')
        )
    }

    #[rstest]
    #[case(docker_manifest_list(), "linux/amd64", 'a')]
    #[case(docker_manifest_list(), "linux/arm/v7", 'b')]
    #[case(docker_manifest_list(), "linux/arm64", 'c')]
    #[case(docker_manifest_list(), "linux/arm64/v8", 'c')]
    #[case(oci_index(), "linux/amd64", '3')]
    #[case(oci_index(), "linux/arm64/v8", '2')]
    fn selects_platform(#[case] index: String, #[case] platform: &str, #[case] want: char) {
        let got = select_manifest("r", "u", index.as_bytes(), &platform.parse().unwrap()).unwrap();
        assert_eq!(got.to_string(), d(want));
    }

    #[test]
    fn missing_platform_lists_available_ones() {
        let index = docker_manifest_list();
        let err = select_manifest(
            "docker.io/library/x:1",
            "u",
            index.as_bytes(),
            &"linux/s390x".parse().unwrap(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("linux/s390x"), "{msg}");
        assert!(
            msg.contains("linux/amd64, linux/arm/v7, linux/arm64/v8"),
            "{msg}"
        );
        assert_eq!(err.kind(), super::super::ErrorKind::NotFound);

        let err = select_manifest(
            "r",
            "u",
            oci_index().as_bytes(),
            &"linux/riscv64".parse().unwrap(),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("unknown"), "{err}");
    }

    #[test]
    fn media_type_from_body_header_or_shape() {
        let list = docker_manifest_list();
        assert_eq!(
            manifest_media_type(list.as_bytes(), None),
            media_types::DOCKER_MANIFEST_LIST
        );
        let bare = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            manifest_media_type(bare, Some(media_types::DOCKER_MANIFEST)),
            media_types::DOCKER_MANIFEST
        );
        assert_eq!(
            manifest_media_type(bare, Some("application/json")),
            media_types::OCI_MANIFEST
        );
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(manifest_media_type(idx, None), media_types::OCI_INDEX);
    }
}
