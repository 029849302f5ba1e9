//! The build context sent to the engine: only the host files the container's steps copy
//! ([`Container::host_inputs`]), with each copy's filters (`.dockerignore` among them), at
//! their paths relative to the checkout. Modes, owners and times travel as they are, so the
//! engine's layers are the ones a local build makes. (The Dockerfile and its
//! `.dockerignore` travel in the handshake, before it.)

use std::collections::BTreeSet;
use std::io::{Seek as _, SeekFrom, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use globset::GlobSet;

use super::Error;
use crate::layer::HostCopy;
use crate::pipeline::Container;

/// A build context archive, in an unnamed temporary file: a checkout's files can be many
/// MiB, and the client only reads it through once, to the engine's stdin.
#[derive(Debug)]
pub struct ContextArchive {
    file: std::fs::File,
    len: u64,
}

impl ContextArchive {
    /// Bytes in the archive.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty (nothing to send).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A reader from its start. Readers share one position: use one at a time.
    pub fn reader(&self) -> Result<std::fs::File, Error> {
        let io = |source| Error::Io {
            action: "read",
            path: PathBuf::from("the build context archive"),
            source,
        };
        let mut file = self.file.try_clone().map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        Ok(file)
    }
}

/// The tar of what `container` reads under `src`, paths relative to `src`, without the
/// files `skip` names (relative to `src`: those the engine has already), written to a
/// temporary file; empty when there is nothing to send.
pub fn archive(
    container: &Container,
    src: &Path,
    skip: &[PathBuf],
) -> Result<ContextArchive, Error> {
    let io = |source| Error::Io {
        action: "write",
        path: PathBuf::from("the build context archive"),
        source,
    };
    let file = tempfile::tempfile().map_err(io)?;
    let mut file = archive_into(container, src, skip, std::io::BufWriter::new(file))?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    let len = file.stream_position().map_err(io)?;
    Ok(ContextArchive { file, len })
}

/// [`archive`] into `out`.
fn archive_into<W: Write>(
    container: &Container,
    src: &Path,
    skip: &[PathBuf],
    out: W,
) -> Result<W, Error> {
    let src = src.canonicalize().map_err(|source| Error::Io {
        action: "resolve the source checkout",
        path: src.to_owned(),
        source,
    })?;
    let inputs = container.host_inputs();
    if inputs.is_empty() {
        return Ok(out);
    }
    let mut sent = Sent {
        src: &src,
        tar: tar::Builder::new(out),
        done: BTreeSet::new(),
        skip: skip.iter().cloned().collect(),
    };
    sent.tar.follow_symlinks(false);
    for (path, opts) in inputs {
        let meta = std::fs::metadata(&path).map_err(|source| Error::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let filters = Filters::new(&path, &opts)?;
            sent.dir(&path, "", &filters)?;
        } else {
            sent.file(&path)?;
        }
    }
    sent.tar.into_inner().map_err(|source| Error::Io {
        action: "write",
        path: PathBuf::from("the build context archive"),
        source,
    })
}

struct Filters {
    include: GlobSet,
    exclude: GlobSet,
    filter_includes: bool,
}

impl Filters {
    fn new(path: &Path, opts: &HostCopy) -> Result<Self, Error> {
        let set = |what, patterns: &[String]| {
            crate::layer::globset(what, patterns).map_err(|e| Error::Context {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            include: set("include", &opts.include)?,
            exclude: set("exclude", &opts.exclude)?,
            filter_includes: !opts.include.is_empty(),
        })
    }
}

struct Sent<'a, W: Write> {
    src: &'a Path,
    tar: tar::Builder<W>,
    /// Paths (relative to `src`) already in the archive.
    done: BTreeSet<PathBuf>,
    /// Files (relative to `src`) the engine has already.
    skip: BTreeSet<PathBuf>,
}

impl<W: Write> Sent<'_, W> {
    /// `path` relative to the checkout; a path outside it cannot be sent.
    fn relative(&self, path: &Path) -> Result<PathBuf, Error> {
        let abs = match path.parent() {
            // The entry itself may be a symlink: resolve only its directory.
            Some(parent) if !parent.as_os_str().is_empty() => parent
                .canonicalize()
                .map_err(|source| Error::Io {
                    action: "resolve",
                    path: parent.to_owned(),
                    source,
                })?
                .join(path.file_name().unwrap_or_default()),
            _ => path.to_owned(),
        };
        abs.strip_prefix(self.src)
            .map(Path::to_owned)
            .map_err(|_| Error::Context {
                path: path.to_owned(),
                reason: format!(
                    "it is outside the source checkout {} (--src); the docker executor sends \
                     only files under it",
                    self.src.display()
                ),
            })
    }

    /// Add the parents of `rel` that are not in the archive yet.
    fn parents(&mut self, rel: &Path) -> Result<(), Error> {
        let mut missing = Vec::new();
        let mut parent = rel.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if self.done.contains(p) {
                break;
            }
            missing.push(p.to_owned());
            parent = p.parent();
        }
        for p in missing.into_iter().rev() {
            self.entry(&self.src.join(&p), &p)?;
        }
        Ok(())
    }

    /// One entry (not recursing into directories).
    fn entry(&mut self, path: &Path, rel: &Path) -> Result<(), Error> {
        if self.skip.contains(rel) || !self.done.insert(rel.to_owned()) {
            return Ok(());
        }
        let meta = std::fs::symlink_metadata(path).map_err(|source| Error::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        let ft = meta.file_type();
        if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
            return Err(Error::Context {
                path: path.to_owned(),
                reason: "sockets, fifos and devices cannot be copied into an image".to_owned(),
            });
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        let io = |source| Error::Io {
            action: "send",
            path: path.to_owned(),
            source,
        };
        if ft.is_file() {
            let file = std::fs::File::open(path).map_err(io)?;
            self.tar.append_data(&mut header, rel, file).map_err(io)
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(io)?;
            self.tar.append_link(&mut header, rel, target).map_err(io)
        } else {
            self.tar
                .append_data(&mut header, rel, std::io::empty())
                .map_err(io)
        }
    }

    fn file(&mut self, path: &Path) -> Result<(), Error> {
        let rel = self.relative(path)?;
        self.parents(&rel)?;
        self.entry(path, &rel)
    }

    /// `dir` and what its copy takes from it (`within`: the path below the copied root).
    fn dir(&mut self, dir: &Path, within: &str, filters: &Filters) -> Result<(), Error> {
        let rel = self.relative(dir)?;
        self.parents(&rel)?;
        self.entry(dir, &rel)?;
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .and_then(|it| it.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(|source| Error::Io {
                action: "read directory",
                path: dir.to_owned(),
                source,
            })?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let name = name.to_string_lossy();
            let below = if within.is_empty() {
                name.into_owned()
            } else {
                format!("{within}/{name}")
            };
            if filters.exclude.is_match(&below) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(|source| Error::Io {
                action: "read",
                path: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                self.dir(&path, &below, filters)?;
            } else if !filters.filter_includes || filters.include.is_match(&below) {
                let rel = rel.join(path.file_name().unwrap_or_default());
                self.entry(&path, &rel)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &ContextArchive) -> Vec<String> {
        tar::Archive::new(archive.reader().unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn sends_what_the_steps_copy_minus_what_they_exclude() {
        let src = tempfile::tempdir().unwrap();
        let dir = src.path().join("containers/app");
        std::fs::create_dir_all(dir.join("files/skip")).unwrap();
        std::fs::write(dir.join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(dir.join("files/a.sh"), "a").unwrap();
        std::fs::write(dir.join("files/secret.env"), "s").unwrap();
        std::fs::write(dir.join("files/skip/b"), "b").unwrap();
        std::fs::write(dir.join("one"), "1").unwrap();
        std::fs::write(dir.join("files/Dockerfile"), "FROM y\n").unwrap();
        std::fs::write(src.path().join("unrelated"), "u").unwrap();
        let opts = HostCopy {
            exclude: vec!["secret.env".into(), "skip".into()],
            ..HostCopy::default()
        };
        let container = Container::scratch()
            .with_directory("/files", dir.join("files"), opts)
            .with_file("/one", dir.join("one"), HostCopy::default());
        let sent = archive(
            &container,
            src.path(),
            &[PathBuf::from("containers/app/files/Dockerfile")],
        )
        .unwrap();
        assert_eq!(
            names(&sent),
            [
                "containers",
                "containers/app",
                "containers/app/files",
                "containers/app/files/a.sh",
                "containers/app/one",
            ]
        );
        // Its tree without contents, for the engine to find the sources before they arrive.
        let tree = super::super::session::skeleton(sent.reader().unwrap()).unwrap();
        assert_eq!(
            sent.len(),
            std::io::copy(&mut sent.reader().unwrap(), &mut std::io::sink()).unwrap()
        );
        let kinds: Vec<(&str, char)> = tree.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("containers", 'd'),
                ("containers/app", 'd'),
                ("containers/app/files", 'd'),
                ("containers/app/files/a.sh", 'f'),
                ("containers/app/one", 'f'),
            ]
        );
        // Nothing copied from the host: nothing to send.
        let none = archive(&Container::scratch(), src.path(), &[]).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn a_file_outside_the_checkout_is_refused_by_name() {
        let src = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::NamedTempFile::new().unwrap();
        let container = Container::scratch().with_file("/x", elsewhere.path(), HostCopy::default());
        let err = archive(&container, src.path(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the source checkout"), "{err}");
        assert!(
            err.contains(&elsewhere.path().display().to_string()),
            "{err}"
        );
    }
}
