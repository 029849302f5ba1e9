//! Local outputs: an OCI image layout directory or a docker archive (what `docker load`,
//! `skopeo` and `podman` read).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::image::{Descriptor, ImageIndex, ManifestBlob, StoredImage, media_types};
use crate::reference::Digest;
use crate::store::{self, Store};

/// The annotation an OCI layout uses to name a manifest.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Errors from exporting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The output spec is not `oci:DIR` or `docker-archive:FILE`.
    #[error("invalid output `{0}`: expected oci:DIR or docker-archive:FILE")]
    InvalidTarget(String),
    /// A file operation on the output failed.
    #[error("failed to {action} `{}`", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An existing `index.json` could not be read.
    #[error("existing OCI layout index `{}` is not valid", path.display())]
    BadIndex {
        /// Path of index.json.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A blob was missing from the store.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A docker archive was asked for several platforms.
    #[error(
        "a docker archive holds one image, and {platforms} platforms were asked for \
         (write them to an OCI layout, `oci:DIR`, or build one --platform)"
    )]
    ArchiveOfSeveralPlatforms {
        /// How many platforms.
        platforms: usize,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Where `build --output` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTarget {
    /// An OCI image layout directory; the manifest is named `tag` in `index.json`.
    OciLayout {
        /// Directory (created if missing; an existing layout gets the image added).
        dir: PathBuf,
        /// Name for the manifest (`org.opencontainers.image.ref.name`).
        tag: Option<String>,
    },
    /// A docker archive tar file.
    DockerArchive {
        /// Output file (replaced atomically).
        path: PathBuf,
        /// `RepoTags` entry, e.g. `registry.ops.eblu.me/blumeops/hello:v1.0.0`.
        repo_tag: Option<String>,
    },
}

impl ExportTarget {
    /// The same target naming the image `name` (a tag for OCI, `repo:tag` for archives).
    #[must_use]
    pub fn named(self, oci_tag: &str, repo_tag: &str) -> Self {
        match self {
            Self::OciLayout { dir, .. } => Self::OciLayout {
                dir,
                tag: Some(oci_tag.to_owned()),
            },
            Self::DockerArchive { path, .. } => Self::DockerArchive {
                path,
                repo_tag: Some(repo_tag.to_owned()),
            },
        }
    }
}

impl ExportTarget {
    /// Whether this output can hold an image for `platforms` platforms (a docker archive
    /// holds one): checked before a build, so a long build does not end in this error.
    pub fn check_platforms(&self, platforms: usize) -> Result<(), Error> {
        match self {
            Self::DockerArchive { .. } if platforms > 1 => {
                Err(Error::ArchiveOfSeveralPlatforms { platforms })
            }
            _ => Ok(()),
        }
    }
}

impl FromStr for ExportTarget {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || Error::InvalidTarget(s.to_owned());
        let (kind, path) = s.split_once(':').ok_or_else(bad)?;
        if path.is_empty() {
            return Err(bad());
        }
        match kind {
            "oci" => Ok(Self::OciLayout {
                dir: path.into(),
                tag: None,
            }),
            "docker-archive" => Ok(Self::DockerArchive {
                path: path.into(),
                repo_tag: None,
            }),
            _ => Err(bad()),
        }
    }
}

/// Write `image` (blobs in `store`) to `target`. Blocking.
pub fn write(store: &Store, image: &StoredImage, target: &ExportTarget) -> Result<(), Error> {
    match target {
        ExportTarget::OciLayout { dir, tag } => write_oci_layout(
            store,
            std::slice::from_ref(image),
            &image.manifest,
            dir,
            tag.as_deref(),
        ),
        ExportTarget::DockerArchive { path, repo_tag } => {
            write_docker_archive(store, image, path, repo_tag.as_deref())
        }
    }
}

/// Write the images of several platforms and their `index` to `target`: an OCI layout
/// whose `index.json` names the index (a docker archive holds one image: refused).
/// Blocking.
pub fn write_index(
    store: &Store,
    index: &ManifestBlob,
    images: &[StoredImage],
    target: &ExportTarget,
) -> Result<(), Error> {
    target.check_platforms(images.len())?;
    match target {
        ExportTarget::OciLayout { dir, tag } => {
            write_oci_layout(store, images, index, dir, tag.as_deref())
        }
        ExportTarget::DockerArchive { .. } => unreachable!("checked above"),
    }
}

fn copy_blob(store: &Store, digest: &Digest, blobs: &Path) -> Result<(), Error> {
    let dest = blobs.join(digest.hex());
    if dest.is_file() {
        return Ok(());
    }
    let src = store.blob_path(digest);
    if !src.is_file() {
        return Err(store::Error::MissingBlob {
            digest: digest.clone(),
            path: src,
        }
        .into());
    }
    let tmp = blobs.join(format!(".{}.partial", digest.hex()));
    // Hard links are free when the output is on the store's filesystem; copy otherwise.
    if fs::hard_link(&src, &tmp).is_err() {
        fs::copy(&src, &tmp).map_err(io_err("copy blob to", &tmp))?;
    }
    fs::rename(&tmp, &dest).map_err(io_err("rename", &dest))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(io_err("create temporary file in", dir))?;
    tmp.write_all(bytes).map_err(io_err("write", path))?;
    tmp.persist(path)
        .map_err(|e| io_err("write", path)(e.error))?;
    Ok(())
}

/// Write `images` (blobs, then manifests) and `root` (one of their manifests, or their
/// index), and name `root` in `index.json`.
fn write_oci_layout(
    store: &Store,
    images: &[StoredImage],
    root: &ManifestBlob,
    dir: &Path,
    tag: Option<&str>,
) -> Result<(), Error> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err("create directory", &blobs))?;
    for image in images {
        for blob in image.blobs() {
            copy_blob(store, &blob.digest, &blobs)?;
        }
    }
    // The manifests before the index that names them, as a registry push orders them.
    let manifests = images.iter().map(|i| &i.manifest);
    for manifest in manifests.chain([root]) {
        let path = blobs.join(manifest.digest.hex());
        if !path.is_file() {
            write_atomic(&path, &manifest.bytes)?;
        }
    }
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    let index_path = dir.join("index.json");
    let mut index = match fs::read(&index_path) {
        Ok(bytes) => {
            serde_json::from_slice::<ImageIndex>(&bytes).map_err(|source| Error::BadIndex {
                path: index_path.clone(),
                source,
            })?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => ImageIndex {
            schema_version: 2,
            media_type: Some(media_types::OCI_INDEX.to_owned()),
            manifests: Vec::new(),
        },
        Err(e) => return Err(io_err("read", &index_path)(e)),
    };
    let mut desc = Descriptor::from(root);
    if let Some(tag) = tag {
        desc.annotations
            .insert(REF_NAME_ANNOTATION.to_owned(), tag.to_owned());
        index
            .manifests
            .retain(|m| m.annotations.get(REF_NAME_ANNOTATION).map(String::as_str) != Some(tag));
    } else {
        index.manifests.retain(|m| m.digest != desc.digest);
    }
    index.manifests.push(desc);
    let bytes = serde_json::to_vec(&index).expect("index serializes");
    write_atomic(&index_path, &bytes)
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest<'a> {
    config: String,
    repo_tags: Vec<&'a str>,
    layers: Vec<String>,
}

fn write_docker_archive(
    store: &Store,
    image: &StoredImage,
    path: &Path,
    repo_tag: Option<&str>,
) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(io_err("create temporary file in", dir))?;
    let blob_name = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    {
        let mut tar = tar::Builder::new(io::BufWriter::new(tmp.as_file()));
        tar.mode(tar::HeaderMode::Deterministic);
        let manifest = [ArchiveManifest {
            config: blob_name(&image.config.digest),
            repo_tags: repo_tag.into_iter().collect(),
            layers: image.layers.iter().map(|l| blob_name(&l.digest)).collect(),
        }];
        let manifest = serde_json::to_vec(&manifest).expect("archive manifest serializes");
        let append = |tar: &mut tar::Builder<_>, name: &str, size: u64, data: &mut dyn io::Read| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(size);
            h.set_mtime(0);
            tar.append_data(&mut h, name, data)
                .map_err(io_err("write", path))
        };
        for dir_name in ["blobs/", "blobs/sha256/"] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_mtime(0);
            h.set_size(0);
            tar.append_data(&mut h, dir_name, io::empty())
                .map_err(io_err("write", path))?;
        }
        let mut written = std::collections::BTreeSet::new();
        for blob in image.blobs() {
            if !written.insert(blob.digest.clone()) {
                continue;
            }
            let mut file = store.open_blob(&blob.digest)?;
            append(&mut tar, &blob_name(&blob.digest), blob.size, &mut file)?;
        }
        append(
            &mut tar,
            "manifest.json",
            manifest.len() as u64,
            &mut &manifest[..],
        )?;
        let inner = tar.into_inner().map_err(io_err("write", path))?;
        inner
            .into_inner()
            .map_err(|e| io_err("write", path)(e.into_error()))?;
    }
    tmp.persist(path)
        .map_err(|e| io_err("write", path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            "oci:./out".parse::<ExportTarget>().unwrap(),
            ExportTarget::OciLayout {
                dir: "./out".into(),
                tag: None
            }
        );
        assert_eq!(
            "docker-archive:/tmp/x.tar".parse::<ExportTarget>().unwrap(),
            ExportTarget::DockerArchive {
                path: "/tmp/x.tar".into(),
                repo_tag: None
            }
        );
        for bad in ["oci:", "tar:x", "out"] {
            let err = bad.parse::<ExportTarget>().unwrap_err().to_string();
            assert!(err.contains("oci:DIR or docker-archive:FILE"), "{err}");
        }
    }

    #[test]
    fn a_docker_archive_refuses_several_platforms() {
        let archive: ExportTarget = "docker-archive:/tmp/x.tar".parse().unwrap();
        assert!(archive.check_platforms(1).is_ok());
        let err = archive.check_platforms(2).unwrap_err().to_string();
        assert!(err.contains("2 platforms"), "{err}");
        assert!(err.contains("oci:DIR"), "{err}");
        let layout: ExportTarget = "oci:/tmp/x".parse().unwrap();
        assert!(layout.check_platforms(2).is_ok());
    }
}
