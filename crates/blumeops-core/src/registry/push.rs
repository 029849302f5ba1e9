//! Pushing: tag check, blobs (HEAD, then POST + streamed PUT), manifest last.

use std::collections::HashSet;
use std::io::{Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt as _, TryStreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LOCATION, RANGE,
};
use std::io::Read as _;
use url::Url;

use super::{
    Access, BlobProgress, Call, Error, Limit, Operation, PushReport, RegistryClient, Repo,
    TagPolicy, UPLOAD_BASE_TIMEOUT, UPLOAD_BUFFER, UPLOAD_MIN_BYTES_PER_SEC, UPLOAD_QUEUE, gave_up,
    header_digest, retry, status_error, timeout_error,
};
use crate::image::{BlobRef, ManifestBlob, StoredImage, media_types};
use crate::reference::{Digest, ImageRef};
use crate::store::{Error as StoreError, Store};

impl RegistryClient {
    pub(super) async fn push_image_impl(
        &self,
        target: &ImageRef,
        image: &StoredImage,
        store: &Store,
        policy: TagPolicy,
        mount_from: Option<&ImageRef>,
        progress: &(dyn Fn(&BlobProgress) + Sync),
    ) -> Result<PushReport, Error> {
        let images = std::slice::from_ref(image);
        self.push_manifests(
            target,
            images,
            &image.manifest,
            store,
            policy,
            mount_from,
            progress,
        )
        .await
    }

    /// Push `images` and `root` (one of their manifests, or their index) to `target`:
    /// the tag check, every blob, each manifest other than `root` by digest, then `root`
    /// under the tag, last, so a tag never points at anything missing.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn push_manifests(
        &self,
        target: &ImageRef,
        images: &[StoredImage],
        root: &ManifestBlob,
        store: &Store,
        policy: TagPolicy,
        mount_from: Option<&ImageRef>,
        progress: &(dyn Fn(&BlobProgress) + Sync),
    ) -> Result<PushReport, Error> {
        let tag = target.tag().unwrap_or("latest");
        // A mount only works within one registry.
        let mount_from = mount_from
            .filter(|from| from.api_host() == target.api_host())
            .map(|from| from.repository().to_owned());
        let mount_from = mount_from.as_deref();
        let tag_ref = target.with_tag(tag);
        let repo = self.repo(target, Access::Push)?;
        let new = root.digest.clone();

        let mut seen = HashSet::new();
        // Owned items keep the future `Send` for callers that box it (see pull.rs).
        let blobs: Vec<BlobRef> = images
            .iter()
            .flat_map(StoredImage::blobs)
            .filter(|b| seen.insert(b.digest.clone()))
            .cloned()
            .collect();
        let now = SystemTime::now();
        let remember = || {
            if let Some(known) = &self.known {
                known.add_blobs(
                    &repo.host,
                    &repo.repository,
                    blobs.iter().map(|b| &b.digest),
                    now,
                );
            }
        };

        match self.head_manifest_in(&repo, &tag_ref).await? {
            Some(existing) if existing == new => {
                // The registry took this manifest once, so it holds its blobs.
                remember();
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

        // Blobs an earlier push saw the registry take in a manifest of this repository are
        // not asked about again.
        let known = match &self.known {
            Some(known) => known.blobs(&repo.host, &repo.repository, now),
            None => HashSet::new(),
        };
        let (trusted, to_check): (Vec<BlobRef>, Vec<BlobRef>) = blobs
            .iter()
            .cloned()
            .partition(|b| known.contains(&b.digest));
        let total = blobs.len();
        let done = std::sync::atomic::AtomicUsize::new(0);
        for blob in &trusted {
            progress(&BlobProgress {
                digest: blob.digest.clone(),
                uploaded: false,
                bytes_sent: 0,
                done: done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
                total,
            });
        }
        let sent = self
            .push_blobs(&repo, to_check, store, mount_from, &done, total, progress)
            .await?;
        let (mut blobs_uploaded, mut bytes_uploaded) = sent;

        // Every blob the manifest references is now confirmed present: a HEAD found it, the
        // closing PUT's 201 named its digest (else a HEAD after it), or the registry took a
        // manifest referencing it before. Any failure above returned early, so a tag never
        // points at a missing blob: a registry checks a manifest's blobs when it takes it,
        // and a refusal after blobs were taken on trust has them checked here.
        let put_all = || self.put_manifests(&repo, target, images, root, &tag_ref, tag);
        match put_all().await {
            Ok(()) => {}
            Err(Error::Status { status, .. })
                if !trusted.is_empty() && status.is_client_error() =>
            {
                if let Some(known) = &self.known {
                    known.forget_blobs(&repo.host, &repo.repository);
                }
                // Reported once already: no progress for them again.
                let again = std::sync::atomic::AtomicUsize::new(0);
                let (n, bytes) = self
                    .push_blobs(&repo, trusted, store, mount_from, &again, total, &|_| {})
                    .await?;
                blobs_uploaded += n;
                bytes_uploaded += bytes;
                put_all().await?;
            }
            Err(e) => return Err(e),
        }
        remember();
        Ok(PushReport {
            digest: new,
            unchanged: false,
            blobs_uploaded,
            blobs_skipped: total - blobs_uploaded,
            bytes_uploaded,
        })
    }

    /// PUT each manifest of `images` other than `root` by digest (unless the registry has
    /// it: a create-only account may not PUT it again), then `root` under the tag, last.
    async fn put_manifests(
        &self,
        repo: &Repo,
        target: &ImageRef,
        images: &[StoredImage],
        root: &ManifestBlob,
        tag_ref: &ImageRef,
        tag: &str,
    ) -> Result<(), Error> {
        for image in images.iter().filter(|i| i.manifest.digest != root.digest) {
            let manifest = &image.manifest;
            let by_digest = target.with_digest(manifest.digest.clone());
            if self.head_manifest_in(repo, &by_digest).await?.is_none() {
                let reference = manifest.digest.to_string();
                self.put_manifest(repo, &by_digest, &reference, manifest)
                    .await?;
            }
        }
        self.put_manifest(repo, tag_ref, tag, root).await
    }

    /// [`Self::push_blob`] for each of `blobs`, a few at a time, reporting each as it is
    /// confirmed; how many were uploaded and their bytes.
    #[allow(clippy::too_many_arguments)]
    async fn push_blobs(
        &self,
        repo: &Repo,
        blobs: Vec<BlobRef>,
        store: &Store,
        mount_from: Option<&str>,
        done: &std::sync::atomic::AtomicUsize,
        total: usize,
        progress: &(dyn Fn(&BlobProgress) + Sync),
    ) -> Result<(usize, u64), Error> {
        let uploaded: Vec<Option<u64>> = futures_util::stream::iter(blobs)
            .map(|blob| async move {
                let sent = self.push_blob(repo, &blob, store, mount_from).await?;
                progress(&BlobProgress {
                    digest: blob.digest.clone(),
                    uploaded: sent.is_some(),
                    bytes_sent: sent.unwrap_or(0),
                    done: done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
                    total,
                });
                Ok::<_, Error>(sent)
            })
            .buffer_unordered(self.options.max_parallel_uploads.max(1))
            .try_collect()
            .await?;
        Ok((
            uploaded.iter().flatten().count(),
            uploaded.iter().flatten().sum(),
        ))
    }

    /// Upload one blob unless the registry has it (or mounts it from the repository
    /// `mount_from` of the same registry). Returns the bytes sent, `None` if none were.
    /// `Ok` means the registry confirmed it has the blob.
    async fn push_blob(
        &self,
        repo: &Repo,
        blob: &BlobRef,
        store: &Store,
        mount_from: Option<&str>,
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
        let exists = self
            .retrying(&call, Duration::ZERO, || self.blob_exists(&call))
            .await?;
        if exists {
            return Ok(None);
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
        let upload = Upload {
            repo,
            blob,
            target: &target,
            blob_url: &blob_url,
            start_url: repo.url(&format!("v2/{}/blobs/uploads/", repo.repository))?,
            path,
            size,
        };
        let mut session = None;
        if let Some(from) = mount_from {
            match self.mount_blob(&upload, from).await? {
                Mount::Mounted => return Ok(None),
                Mount::Refused(opened) => session = opened,
            }
        }
        self.upload(&upload, session).await?;
        Ok(Some(size))
    }

    /// Ask the registry to mount the blob from another of its repositories
    /// (`POST .../blobs/uploads/?mount=DIGEST&from=REPO`). zot ignores `from` and mounts
    /// any blob the user may read; the distribution registry needs it. A registry that
    /// does not mount opens an ordinary upload session instead (202), which is kept.
    async fn mount_blob(&self, upload: &Upload<'_>, from: &str) -> Result<Mount, Error> {
        let mut url = upload.start_url.clone();
        url.query_pairs_mut()
            .append_pair("mount", &upload.blob.digest.to_string())
            .append_pair("from", from);
        let call = Call {
            repo: upload.repo,
            operation: Operation::StartUpload,
            target: upload.target,
            url: &url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let response = self
            .retrying(&call, Duration::ZERO, || async {
                self.send(&call, || {
                    Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, 0))
                })
                .await
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Refused(
                location(response.headers(), &url)
                    .transpose()?
                    .map(|mut session_url| {
                        // The session's URL, without the mount parameters.
                        strip_mount_query(&mut session_url);
                        Session {
                            url: session_url,
                            offset: Some(0),
                        }
                    }),
            )),
            _ => Err(status_error(&call, response).await),
        }
    }

    /// One `HEAD` of a blob: whether the registry has it.
    async fn blob_exists(&self, call: &Call<'_>) -> Result<bool, Error> {
        let response = self
            .send(call, || Ok(self.http.head(call.url.clone())))
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(call, response).await),
        }
    }

    /// Upload a blob the registry does not have (in `session` when one is open already),
    /// resuming after interruptions, until the registry confirms it or the retry policy
    /// gives up.
    async fn upload(&self, upload: &Upload<'_>, session: Option<Session>) -> Result<(), Error> {
        let call = Call {
            repo: upload.repo,
            operation: Operation::PushBlob,
            target: upload.target,
            url: &upload.start_url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let extra = Duration::from_secs(upload.size / UPLOAD_MIN_BYTES_PER_SEC);
        let mut budget = retry::Budget::new(&self.options.retry, extra);
        let mut session = session;
        loop {
            budget.begin();
            let remaining = budget.remaining();
            let error =
                match tokio::time::timeout(remaining, self.upload_attempt(upload, &mut session))
                    .await
                {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(error)) => error,
                    Err(_) => timeout_error(&call, remaining),
                };
            // Whatever happened, the registry may hold more (or fewer) bytes than counted.
            if let Some(session) = &mut session {
                session.offset = None;
            }
            let verdict = match &error {
                // Our offset and the registry's disagree: ask it and go on from there.
                Error::Status { status, .. }
                    if *status == StatusCode::RANGE_NOT_SATISFIABLE && session.is_some() =>
                {
                    retry::Verdict::Transient { after: None }
                }
                other => retry::classify(other),
            };
            if let Some(error) = budget.failed_as(error, verdict, gave_up(&call)).await {
                return Err(error);
            }
        }
    }

    /// One attempt: learn where an interrupted session stands (or open one), send the rest
    /// of the data, close the session, and check the registry's confirmation.
    async fn upload_attempt(
        &self,
        upload: &Upload<'_>,
        session: &mut Option<Session>,
    ) -> Result<(), Error> {
        if let Some(open) = session.as_mut()
            && open.offset.is_none()
        {
            match self.upload_status(upload, &open.url).await? {
                Some((url, offset)) => {
                    open.url = url;
                    open.offset = Some(offset);
                }
                None => {
                    // The registry forgot the session (expired, restarted, or completed it
                    // and the answer was lost): it may have the blob already.
                    *session = None;
                    let check = self.check_blob_call(upload);
                    if self.blob_exists(&check).await? {
                        return Ok(());
                    }
                }
            }
        }
        let open = match session {
            Some(open) => open,
            None => session.insert(self.start_upload(upload).await?),
        };
        let chunk = self.options.upload_chunk_size.max(1);
        let mut offset = open.offset.unwrap_or(0);
        let response = if offset == 0 && upload.size <= chunk {
            // The whole blob in the closing PUT: one request, what every registry takes.
            self.close_upload(upload, &open.url, upload.size).await?
        } else {
            while offset < upload.size {
                let len = (upload.size - offset).min(chunk);
                open.url = self.patch_chunk(upload, &open.url, offset, len).await?;
                offset += len;
                open.offset = Some(offset);
            }
            self.close_upload(upload, &open.url, 0).await?
        };
        match header_digest(response.headers()) {
            Some(actual) if actual == upload.blob.digest => Ok(()),
            Some(actual) => Err(Error::DigestMismatch {
                object: "blob",
                url: open.url.to_string(),
                expected: upload.blob.digest.clone(),
                actual,
            }),
            None => {
                // No digest in the answer: the blob counts as present once a HEAD says so.
                let check = self.check_blob_call(upload);
                if self.blob_exists(&check).await? {
                    Ok(())
                } else {
                    Err(Error::MissingHeader {
                        operation: Operation::PushBlob,
                        target: upload.target.to_owned(),
                        url: open.url.to_string(),
                        header: "Docker-Content-Digest",
                    })
                }
            }
        }
    }

    fn check_blob_call<'a>(&self, upload: &'a Upload<'a>) -> Call<'a> {
        Call {
            repo: upload.repo,
            operation: Operation::CheckBlob,
            target: upload.target,
            url: upload.blob_url,
            limit: Limit::Total(self.options.request_timeout),
        }
    }

    /// POST a new upload session; its URL.
    async fn start_upload(&self, upload: &Upload<'_>) -> Result<Session, Error> {
        let start_url = &upload.start_url;
        let call = Call {
            repo: upload.repo,
            operation: Operation::StartUpload,
            target: upload.target,
            url: start_url,
            limit: Limit::Total(self.options.request_timeout),
        };
        // Without a body, so auth is settled before any data is streamed.
        let response = self
            .send(&call, || {
                Ok(self.http.post(start_url.clone()).header(CONTENT_LENGTH, 0))
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error(&call, response).await);
        }
        let url =
            location(response.headers(), start_url).ok_or_else(|| Error::MissingHeader {
                operation: Operation::StartUpload,
                target: upload.target.to_owned(),
                url: start_url.to_string(),
                header: "Location",
            })??;
        Ok(Session {
            url,
            offset: Some(0),
        })
    }

    /// GET an upload session's status: its next URL and how many bytes the registry has,
    /// or `None` when the registry no longer knows the session.
    async fn upload_status(
        &self,
        upload: &Upload<'_>,
        url: &Url,
    ) -> Result<Option<(Url, u64)>, Error> {
        let call = Call {
            repo: upload.repo,
            operation: Operation::CheckUpload,
            target: upload.target,
            url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let response = self.send(&call, || Ok(self.http.get(url.clone()))).await?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::GONE => {
                return Ok(None);
            }
            _ => return Err(status_error(&call, response).await),
        }
        let offset = response
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(retry::upload_offset);
        let Some(offset) = offset else {
            // Without a Range the registry cannot say where to go on: start over.
            return Ok(None);
        };
        let next = match location(response.headers(), url) {
            Some(next) => next?,
            None => url.clone(),
        };
        Ok(Some((next, offset.min(upload.size))))
    }

    /// PATCH `len` bytes from `offset`; the session's next URL.
    async fn patch_chunk(
        &self,
        upload: &Upload<'_>,
        url: &Url,
        offset: u64,
        len: u64,
    ) -> Result<Url, Error> {
        let call = Call {
            repo: upload.repo,
            operation: Operation::PushBlob,
            target: upload.target,
            url,
            limit: Limit::Total(upload_timeout(len)),
        };
        let end = offset + len - 1;
        let response = self
            .send(&call, || {
                Ok(self
                    .http
                    .patch(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{offset}-{end}"))
                    .header(CONTENT_LENGTH, len)
                    .body(file_body(&upload.path, offset, len)?))
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error(&call, response).await);
        }
        match location(response.headers(), url) {
            Some(next) => next,
            None => Ok(url.clone()),
        }
    }

    /// The closing PUT with `?digest=`, carrying the whole blob (`len` = size) or nothing
    /// (`len` = 0, after PATCHes). Returns the 201 response.
    async fn close_upload(
        &self,
        upload: &Upload<'_>,
        url: &Url,
        len: u64,
    ) -> Result<reqwest::Response, Error> {
        let mut put_url = url.clone();
        put_url
            .query_pairs_mut()
            .append_pair("digest", &upload.blob.digest.to_string());
        let call = Call {
            repo: upload.repo,
            operation: Operation::PushBlob,
            target: upload.target,
            url: &put_url,
            limit: Limit::Total(upload_timeout(len)),
        };
        let response = self
            .send(&call, || {
                let builder = self
                    .http
                    .put(put_url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, len);
                Ok(if len == 0 {
                    builder.body(Vec::new())
                } else {
                    // Re-opened on every send: a streamed body cannot be replayed.
                    builder.body(file_body(&upload.path, 0, len)?)
                })
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error(&call, response).await);
        }
        Ok(response)
    }

    /// PUT the manifest under the tag (or its digest), with its exact bytes and media type.
    /// A retry first checks the tag: an earlier attempt may have landed with its answer
    /// lost (and a create-only account may not PUT the same tag twice).
    async fn put_manifest(
        &self,
        repo: &Repo,
        tag_ref: &ImageRef,
        tag: &str,
        manifest: &ManifestBlob,
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
        let attempts = std::cell::Cell::new(0u32);
        self.retrying(&call, Duration::ZERO, || async {
            attempts.set(attempts.get() + 1);
            if attempts.get() > 1
                && self.tag_digest_once(repo, &name, tag).await? == Some(manifest.digest.clone())
            {
                return Ok(());
            }
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
        })
        .await
    }

    /// One HEAD of the tag: the digest it points at, if the registry says.
    async fn tag_digest_once(
        &self,
        repo: &Repo,
        name: &str,
        tag: &str,
    ) -> Result<Option<Digest>, Error> {
        let url = repo.url(&format!("v2/{}/manifests/{tag}", repo.repository))?;
        let call = Call {
            repo,
            operation: Operation::CheckTag,
            target: name,
            url: &url,
            limit: Limit::Total(self.options.request_timeout),
        };
        let response = self
            .send(&call, || {
                Ok(self
                    .http
                    .head(url.clone())
                    .header(ACCEPT, media_types::MANIFEST_ACCEPT))
            })
            .await?;
        match response.status() {
            s if s.is_success() => Ok(header_digest(response.headers())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(&call, response).await),
        }
    }
}

/// One blob's upload: what and where.
struct Upload<'a> {
    repo: &'a Repo,
    blob: &'a BlobRef,
    /// `DIGEST to REGISTRY/REPOSITORY`, for messages.
    target: &'a str,
    /// `.../blobs/DIGEST`, for HEADs.
    blob_url: &'a Url,
    /// `.../blobs/uploads/`, to open sessions.
    start_url: Url,
    /// The blob's file in the store.
    path: PathBuf,
    size: u64,
}

/// What a mount request did.
enum Mount {
    /// The registry has the blob now.
    Mounted,
    /// It did not mount; the upload session it opened instead, if it named one.
    Refused(Option<Session>),
}

/// Drop `mount` and `from` from a session URL (a registry may echo them back).
fn strip_mount_query(url: &mut Url) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "mount" && k != "from")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
}

/// An open upload session.
struct Session {
    /// Where the next request goes (the last `Location`, without `digest=`).
    url: Url,
    /// Bytes the registry has; `None` after an interruption, until a status GET says.
    offset: Option<u64>,
}

/// A `Location` header resolved against the request's URL (zot sends relative paths, the
/// distribution registry absolute URLs with `_state`); `None` without one.
fn location(headers: &HeaderMap, request: &Url) -> Option<Result<Url, Error>> {
    let value = headers.get(LOCATION)?.to_str().ok()?;
    Some(request.join(value).map_err(|source| Error::InvalidUrl {
        url: value.to_owned(),
        source,
    }))
}

/// `len` bytes of the file at `path` from `offset`, as a request body (see [`file_stream`]).
fn file_body(path: &Path, offset: u64, len: u64) -> Result<reqwest::Body, Error> {
    Ok(reqwest::Body::wrap_stream(file_stream(path, offset, len)?))
}

/// `len` bytes of the file at `path` from `offset` (a store blob: seeking is cheap, so a
/// resumed upload reads only what is left), in pieces of [`UPLOAD_BUFFER`] bytes that a
/// thread of the blocking pool reads straight into the buffers the request sends, at most
/// [`UPLOAD_QUEUE`] ahead of the socket. Memory per upload stays bounded, and each byte is
/// copied once on its way from the page cache to the socket.
fn file_stream(
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + use<>, Error> {
    let io = |action: &'static str| {
        move |source| StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut file = std::fs::File::open(path).map_err(io("open"))?;
    if offset > 0 {
        file.seek(SeekFrom::Start(offset)).map_err(io("seek in"))?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(UPLOAD_QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut left = len;
        while left > 0 {
            let n = left.min(UPLOAD_BUFFER as u64);
            let mut piece = Vec::with_capacity(n as usize);
            let piece = match (&mut file).take(n).read_to_end(&mut piece) {
                Ok(got) if got as u64 == n => Ok(bytes::Bytes::from(piece)),
                Ok(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob file ended early",
                )),
                Err(e) => Err(e),
            };
            let failed = piece.is_err();
            // A closed channel: the request is over (done, failed or cut off).
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
            left -= n;
        }
    });
    Ok(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    }))
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
        "http://127.0.0.1:5000/v2/blumeops/hello/blobs/uploads/abc-123"
    )]
    #[case(
        "/v2/x/blobs/uploads/u?_state=ab%2Bc%3D%3D",
        "http://127.0.0.1:5000/v2/x/blobs/uploads/u?_state=ab%2Bc%3D%3D"
    )]
    #[case(
        "http://127.0.0.1:5000/v2/x/blobs/uploads/u?_state=s",
        "http://127.0.0.1:5000/v2/x/blobs/uploads/u?_state=s"
    )]
    #[case("https://storage.example/upload/u", "https://storage.example/upload/u")]
    fn resolves_upload_location(#[case] value: &str, #[case] expected: &str) {
        let post = Url::parse("http://127.0.0.1:5000/v2/blumeops/hello/blobs/uploads/").unwrap();
        let mut headers = HeaderMap::new();
        assert!(location(&headers, &post).is_none());
        headers.insert(LOCATION, value.parse().unwrap());
        let url = location(&headers, &post).unwrap().unwrap();
        assert_eq!(url.as_str(), expected);
    }

    #[test]
    fn file_stream_reads_the_requested_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..3 * UPLOAD_BUFFER + 17).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let len = data.len() as u64;
        for (offset, n) in [(0, len), (3, 4), (8, 2), (5, len - 5), (len, 0)] {
            let got = rt.block_on(async {
                let pieces: Vec<bytes::Bytes> = file_stream(&path, offset, n)
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                assert!(pieces.iter().all(|p| p.len() <= UPLOAD_BUFFER));
                pieces.concat()
            });
            let (start, end) = (offset as usize, (offset + n) as usize);
            assert_eq!(got, &data[start..end], "{offset}+{n}");
        }
        // A file shorter than asked for ends the stream with an error.
        let short = rt.block_on(async {
            file_stream(&path, len - 2, 10)
                .unwrap()
                .try_collect::<Vec<bytes::Bytes>>()
                .await
        });
        assert!(short.is_err());
    }

    #[test]
    fn upload_timeout_grows_with_size() {
        assert_eq!(upload_timeout(0), UPLOAD_BASE_TIMEOUT);
        assert!(upload_timeout(512 * 1024 * 1024) > Duration::from_secs(2000));
    }
}
