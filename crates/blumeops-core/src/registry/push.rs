//! Pushing: tag check, blobs (HEAD, then POST + streamed PUT), manifest last.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use url::Url;

use super::{
    Access, Call, Error, Limit, Operation, PushReport, RegistryClient, Repo, TagPolicy,
    UPLOAD_BASE_TIMEOUT, UPLOAD_BUFFER, UPLOAD_MIN_BYTES_PER_SEC, header_digest, status_error,
};
use crate::image::{BlobRef, StoredImage};
use crate::reference::{Digest, ImageRef};
use crate::store::{Error as StoreError, Store};

impl RegistryClient {
    pub(super) async fn push_image_impl(
        &self,
        target: &ImageRef,
        image: &StoredImage,
        store: &Store,
        policy: TagPolicy,
    ) -> Result<PushReport, Error> {
        let tag = target.tag().unwrap_or("latest");
        let tag_ref = target.with_tag(tag);
        let repo = self.repo(target, Access::Push)?;
        let new = image.manifest.digest.clone();

        match self.head_manifest_in(&repo, &tag_ref).await? {
            Some(existing) if existing == new => {
                return Ok(PushReport {
                    digest: new,
                    unchanged: true,
                    blobs_uploaded: 0,
                    blobs_skipped: 0,
                    bytes_uploaded: 0,
                });
            }
            Some(existing) if policy == TagPolicy::CreateOnly => {
                return Err(Error::TagConflict {
                    reference: tag_ref.to_string(),
                    existing,
                    new,
                });
            }
            _ => {}
        }

        let mut seen = HashSet::new();
        // Owned items keep the future `Send` for callers that box it (see pull.rs).
        let blobs: Vec<BlobRef> = image
            .blobs()
            .filter(|b| seen.insert(b.digest.clone()))
            .cloned()
            .collect();
        let total = blobs.len();
        let repo_ref = &repo;
        let uploaded: Vec<Option<u64>> = futures_util::stream::iter(blobs)
            .map(|blob| async move { self.push_blob(repo_ref, &blob, store).await })
            .buffer_unordered(self.options.max_parallel_uploads.max(1))
            .try_collect()
            .await?;
        let blobs_uploaded = uploaded.iter().flatten().count();
        let bytes_uploaded = uploaded.iter().flatten().sum();

        self.put_manifest(&repo, &tag_ref, tag, image).await?;
        Ok(PushReport {
            digest: new,
            unchanged: false,
            blobs_uploaded,
            blobs_skipped: total - blobs_uploaded,
            bytes_uploaded,
        })
    }

    /// Upload one blob unless the registry has it. Returns the bytes sent, `None` if skipped.
    async fn push_blob(
        &self,
        repo: &Repo,
        blob: &BlobRef,
        store: &Store,
    ) -> Result<Option<u64>, Error> {
        let target = format!("{} to {}/{}", blob.digest, repo.registry, repo.repository);
        let blob_url = repo.url(&format!("v2/{}/blobs/{}", repo.repository, blob.digest))?;
        let call = Call {
            repo,
            operation: Operation::CheckBlob,
            target: &target,
            url: &blob_url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let response = self
            .send(&call, || Ok(self.http.head(blob_url.clone())))
            .await?;
        match response.status() {
            s if s.is_success() => return Ok(None),
            StatusCode::NOT_FOUND => {}
            _ => return Err(status_error(&call, response).await),
        }

        let path = store.blob_path(&blob.digest);
        let size = store.blob_size(&blob.digest)?;
        if size != blob.size {
            return Err(Error::SizeMismatch {
                object: "blob",
                digest: blob.digest.clone(),
                url: path.display().to_string(),
                expected: blob.size,
                actual: size,
            });
        }

        // Open the session without a body, so auth is settled before the streamed PUT.
        let start_url = repo.url(&format!("v2/{}/blobs/uploads/", repo.repository))?;
        let call = Call {
            repo,
            operation: Operation::StartUpload,
            target: &target,
            url: &start_url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let response = self
            .send(&call, || {
                Ok(self.http.post(start_url.clone()).header(CONTENT_LENGTH, 0))
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error(&call, response).await);
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::MissingHeader {
                operation: Operation::StartUpload,
                target: target.clone(),
                url: start_url.to_string(),
                header: "Location",
            })?;
        let put_url = upload_url(&start_url, location, &blob.digest)?;

        let call = Call {
            repo,
            operation: Operation::PushBlob,
            target: &target,
            url: &put_url,
            limit: Limit::Total(upload_timeout(size)),
        };
        let response = self
            .send(&call, || {
                // Re-opened on every attempt: a streamed body cannot be replayed.
                let file = std::fs::File::open(&path).map_err(|source| StoreError::Io {
                    action: "open",
                    path: path.clone(),
                    source,
                })?;
                let stream = tokio_util::io::ReaderStream::with_capacity(
                    tokio::fs::File::from_std(file),
                    UPLOAD_BUFFER,
                );
                Ok(self
                    .http
                    .put(put_url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(reqwest::Body::wrap_stream(stream)))
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error(&call, response).await);
        }
        if let Some(actual) = header_digest(response.headers())
            && actual != blob.digest
        {
            return Err(Error::DigestMismatch {
                object: "blob",
                url: put_url.to_string(),
                expected: blob.digest.clone(),
                actual,
            });
        }
        Ok(Some(size))
    }

    /// PUT the manifest under the tag, with its exact bytes and media type.
    async fn put_manifest(
        &self,
        repo: &Repo,
        tag_ref: &ImageRef,
        tag: &str,
        image: &StoredImage,
    ) -> Result<(), Error> {
        let name = tag_ref.to_string();
        let url = repo.url(&format!("v2/{}/manifests/{tag}", repo.repository))?;
        let call = Call {
            repo,
            operation: Operation::PushManifest,
            target: &name,
            url: &url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let manifest = &image.manifest;
        let response = self
            .send(&call, || {
                Ok(self
                    .http
                    .put(url.clone())
                    .header(CONTENT_TYPE, manifest.media_type.as_str())
                    .body(manifest.bytes.clone()))
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error(&call, response).await);
        }
        if let Some(actual) = header_digest(response.headers())
            && actual != manifest.digest
        {
            return Err(Error::DigestMismatch {
                object: "manifest",
                url: url.to_string(),
                expected: manifest.digest.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// Where to PUT the data: `Location` resolved against the POST's URL (zot sends relative
/// paths, the distribution registry absolute URLs with `_state`), plus `digest=`.
fn upload_url(request: &Url, location: &str, digest: &Digest) -> Result<Url, Error> {
    let mut url = request.join(location).map_err(|source| Error::InvalidUrl {
        url: location.to_owned(),
        source,
    })?;
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    Ok(url)
}

/// Time allowed for uploading `size` bytes.
fn upload_timeout(size: u64) -> Duration {
    UPLOAD_BASE_TIMEOUT + Duration::from_secs(size / UPLOAD_MIN_BYTES_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "/v2/blumeops/hello/blobs/uploads/abc-123",
        "http://127.0.0.1:5000/v2/blumeops/hello/blobs/uploads/abc-123?digest=sha256%3A"
    )]
    #[case(
        "/v2/x/blobs/uploads/u?_state=ab%2Bc%3D%3D",
        "http://127.0.0.1:5000/v2/x/blobs/uploads/u?_state=ab%2Bc%3D%3D&digest=sha256%3A"
    )]
    #[case(
        "http://127.0.0.1:5000/v2/x/blobs/uploads/u?_state=s",
        "http://127.0.0.1:5000/v2/x/blobs/uploads/u?_state=s&digest=sha256%3A"
    )]
    #[case(
        "https://storage.example/upload/u",
        "https://storage.example/upload/u?digest=sha256%3A"
    )]
    fn resolves_upload_location(#[case] location: &str, #[case] expected_prefix: &str) {
        let post = Url::parse("http://127.0.0.1:5000/v2/blumeops/hello/blobs/uploads/").unwrap();
        let digest = Digest::of(b"x");
        let url = upload_url(&post, location, &digest).unwrap();
        assert_eq!(url.as_str(), format!("{expected_prefix}{}", digest.hex()));
    }

    #[test]
    fn upload_timeout_grows_with_size() {
        assert_eq!(upload_timeout(0), UPLOAD_BASE_TIMEOUT);
        assert!(upload_timeout(512 * 1024 * 1024) > Duration::from_secs(2000));
    }
}
