//! Copying host files and directories into a layer.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::{Entry, EntryKind, Error, FileData, LayerBuilder};

/// Numeric owner of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// `0:0`.
    pub const ROOT: Self = Self { uid: 0, gid: 0 };
}

impl Default for Owner {
    fn default() -> Self {
        Self::ROOT
    }
}

/// Error for an owner that is not `UID` or `UID:GID`.
#[derive(Debug, thiserror::Error)]
#[error("invalid owner `{0}`: expected UID or UID:GID, e.g. 1000:1000")]
pub struct OwnerParseError(String);

impl FromStr for Owner {
    type Err = OwnerParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || OwnerParseError(s.to_owned());
        let (u, g) = s.split_once(':').unwrap_or((s, s));
        Ok(Self {
            uid: u.parse().map_err(|_| err())?,
            gid: g.parse().map_err(|_| err())?,
        })
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// Options for copying from the host: owner, file mode and include/exclude globs (matched
/// against paths relative to the copied directory, e.g. `src/**/*.rs`; `*` and `?` stay
/// within one path component and `**` crosses them, as in Dockerfile patterns).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HostCopy {
    /// Owner of every copied entry (default `0:0`).
    pub owner: Option<Owner>,
    /// Owner as `user[:group]` names (or a mix of names and ids), resolved in the image's
    /// /etc/passwd and /etc/group when the step is evaluated; takes the place of `owner`.
    pub owner_name: Option<String>,
    /// Permission bits for every copied file and directory (default: the host's), as
    /// Dockerfile `COPY --chmod` does.
    pub mode: Option<u32>,
    /// Only paths matching one of these are copied (empty: everything).
    pub include: Vec<String>,
    /// Paths matching one of these are skipped, directories with everything below them.
    pub exclude: Vec<String>,
    /// Keep each entry's owner from the host instead of `0:0` when no owner is given (used
    /// for extracted archives, whose entries carry their own owners).
    pub preserve_owners: bool,
}

impl HostCopy {
    /// Set the owner.
    #[must_use]
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Set the owner by name (`user`, `user:group`), resolved in the image at evaluation.
    #[must_use]
    pub fn with_owner_name(mut self, owner: impl Into<String>) -> Self {
        self.owner_name = Some(owner.into());
        self
    }

    /// Set the file mode.
    #[must_use]
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Add an include pattern.
    #[must_use]
    pub fn with_include(mut self, pattern: impl Into<String>) -> Self {
        self.include.push(pattern.into());
        self
    }

    /// Add an exclude pattern.
    #[must_use]
    pub fn with_exclude(mut self, pattern: impl Into<String>) -> Self {
        self.exclude.push(pattern.into());
        self
    }
}

pub(crate) fn globset(which: &'static str, patterns: &[String]) -> Result<GlobSet, Error> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        // `*` stops at `/` as BuildKit's `--exclude` and `.dockerignore` patterns do: `*.log`
        // is top-level only, `**/*.log` reaches every depth.
        let glob = GlobBuilder::new(p.trim_end_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|source| Error::Pattern {
                which,
                pattern: p.clone(),
                source,
            })?;
        b.add(glob);
    }
    b.build().map_err(|source| Error::Pattern {
        which,
        pattern: patterns.join(", "),
        source,
    })
}

fn host_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Host {
        action,
        path: path.to_owned(),
        source,
    }
}

impl LayerBuilder {
    /// Add the host file `src` at `dest`.
    pub fn add_host_file(&mut self, dest: &str, src: &Path, opts: &HostCopy) -> Result<(), Error> {
        let meta = std::fs::metadata(src).map_err(host_err("read", src))?;
        if !meta.is_file() {
            return Err(Error::Host {
                action: "copy (not a regular file)",
                path: src.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        self.add(
            dest,
            Entry {
                kind: EntryKind::File(FileData::Host(src.to_owned())),
                mode: opts.mode.unwrap_or(meta.permissions().mode() & 0o7777),
                owner: opts.owner.unwrap_or_default(),
            },
        )
    }

    /// Add the contents of the host directory `src` under `dest`. Symlinks are copied as
    /// symlinks; sockets, fifos and devices are refused. `dest` itself is not a copy of
    /// `src`: it is made up like a parent ([`LayerBuilder::add_implicit_dir`]), for the
    /// caller to settle against the image below, as Docker does.
    pub fn add_host_dir(&mut self, dest: &str, src: &Path, opts: &HostCopy) -> Result<(), Error> {
        let include = globset("include", &opts.include)?;
        let exclude = globset("exclude", &opts.exclude)?;
        let meta = std::fs::metadata(src).map_err(host_err("read", src))?;
        if !meta.is_dir() {
            return Err(Error::Host {
                action: "copy (not a directory)",
                path: src.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        let walk = Walk {
            include: &include,
            exclude: &exclude,
            filter_includes: !opts.include.is_empty(),
            opts,
        };
        // Copying into `/` adds the contents only: the root directory is not an entry.
        let dest_norm = if is_root(dest) {
            String::new()
        } else {
            let dest_norm = super::normalize_path(dest)?;
            self.add_implicit_dir(&dest_norm)?;
            dest_norm
        };
        walk.dir(self, src, "", &dest_norm)
    }
}

/// Whether an image path names the root directory.
pub(crate) fn is_root(path: &str) -> bool {
    path.split('/').all(|c| c.is_empty() || c == ".")
}

struct Walk<'a> {
    include: &'a GlobSet,
    exclude: &'a GlobSet,
    filter_includes: bool,
    opts: &'a HostCopy,
}

impl Walk<'_> {
    fn owner(&self, meta: &std::fs::Metadata) -> Owner {
        use std::os::unix::fs::MetadataExt as _;
        match self.opts.owner {
            Some(owner) => owner,
            None if self.opts.preserve_owners => Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            },
            None => Owner::ROOT,
        }
    }

    fn dir(
        &self,
        layer: &mut LayerBuilder,
        dir: &Path,
        rel: &str,
        dest: &str,
    ) -> Result<(), Error> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(host_err("read directory", dir))? {
            let entry = entry.map_err(host_err("read directory", dir))?;
            names.push(entry.file_name());
        }
        names.sort();
        for name in names {
            let host = dir.join(&name);
            let name = name.to_str().ok_or_else(|| Error::Host {
                action: "copy (file name is not UTF-8)",
                path: host.clone(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            })?;
            let rel = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            if self.exclude.is_match(&rel) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&host).map_err(host_err("read", &host))?;
            let target = if dest.is_empty() {
                rel.clone()
            } else {
                format!("{dest}/{rel}")
            };
            let ft = meta.file_type();
            let included = !self.filter_includes || self.include.is_match(&rel);
            let mode = meta.permissions().mode() & 0o7777;
            if ft.is_dir() {
                if included {
                    layer.add(
                        &target,
                        Entry {
                            kind: EntryKind::Dir,
                            mode: self.opts.mode.unwrap_or(mode),
                            owner: self.owner(&meta),
                        },
                    )?;
                }
                self.dir(layer, &host, &rel, dest)?;
            } else if !included {
                continue;
            } else if ft.is_symlink() {
                let link = std::fs::read_link(&host).map_err(host_err("read link", &host))?;
                let link = link.to_str().ok_or_else(|| Error::Host {
                    action: "copy (link target is not UTF-8)",
                    path: host.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                })?;
                layer.add(
                    &target,
                    Entry {
                        kind: EntryKind::Symlink(link.to_owned()),
                        mode: 0o777,
                        owner: self.owner(&meta),
                    },
                )?;
            } else if ft.is_file() {
                layer.add(
                    &target,
                    Entry {
                        kind: EntryKind::File(FileData::Host(host.clone())),
                        mode: self.opts.mode.unwrap_or(mode),
                        owner: self.owner(&meta),
                    },
                )?;
            } else {
                return Err(Error::Host {
                    action: "copy (sockets, fifos and devices are not supported)",
                    path: host,
                    source: std::io::Error::from(std::io::ErrorKind::Unsupported),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Compression;
    use crate::store::Store;
    use std::io::Read;

    fn list(store: &Store, layer: &crate::layer::Layer) -> Vec<(String, u32, u64)> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(store.open_blob(&layer.blob.digest).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        tar::Archive::new(&raw[..])
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mode().unwrap(),
                    e.header().uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn copies_directory_with_include_exclude_owner_and_mode() {
        let src = tempfile::tempdir().unwrap();
        let root = src.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("target")).unwrap();
        std::fs::write(root.join("a/b/keep.txt"), "k").unwrap();
        std::fs::write(root.join("a/skip.log"), "s").unwrap();
        std::fs::write(root.join("target/big"), "t").unwrap();
        std::os::unix::fs::symlink("b/keep.txt", root.join("a/link")).unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let mut b = LayerBuilder::new();
        let opts = HostCopy::default()
            .with_exclude("target")
            .with_exclude("**/*.log")
            .with_owner("1000:1001".parse().unwrap())
            .with_mode(0o640);
        b.add_host_dir("/app", root, &opts).unwrap();
        let layer = b.write(&store, Compression::Gzip, 0).unwrap();
        let entries = list(&store, &layer);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "app/",
                "app/a/",
                "app/a/b/",
                "app/a/b/keep.txt",
                "app/a/link"
            ]
        );
        let keep = entries.iter().find(|e| e.0 == "app/a/b/keep.txt").unwrap();
        assert_eq!((keep.1, keep.2), (0o640, 1000));
    }

    #[test]
    fn a_star_stays_in_one_path_component() {
        // As BuildKit matches `COPY --exclude`: `*.log` is top-level only.
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("top.log"), "t").unwrap();
        std::fs::write(src.path().join("sub/deep.log"), "d").unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let mut b = LayerBuilder::new();
        b.add_host_dir("/d", src.path(), &HostCopy::default().with_exclude("*.log"))
            .unwrap();
        let layer = b.write(&store, Compression::Gzip, 0).unwrap();
        let paths: Vec<String> = list(&store, &layer).into_iter().map(|e| e.0).collect();
        assert_eq!(paths, ["d/", "d/sub/", "d/sub/deep.log"]);
    }

    #[test]
    fn made_up_parents_can_be_settled() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let mut b = LayerBuilder::new();
        b.add_bytes("/opt/app/bin/x", &b"x"[..], 0o755, Owner::ROOT)
            .unwrap();
        b.add_bytes("/opt/app/README", &b"r"[..], 0o644, Owner::ROOT)
            .unwrap();
        assert_eq!(b.implicit_parents(), ["opt", "opt/app", "opt/app/bin"]);
        let owner = Owner {
            uid: 1000,
            gid: 1000,
        };
        b.set_implicit_parent("opt/app", 0o750, owner);
        // Not a made-up parent: left alone.
        b.set_implicit_parent("opt/app/README", 0o700, owner);
        // Added later as itself: no longer made up.
        b.add(
            "/opt/app/bin",
            crate::layer::Entry {
                kind: crate::layer::EntryKind::Dir,
                mode: 0o700,
                owner: Owner::ROOT,
            },
        )
        .unwrap();
        assert_eq!(b.implicit_parents(), ["opt", "opt/app"]);
        let layer = b.write(&store, Compression::Gzip, 0).unwrap();
        assert_eq!(
            list(&store, &layer),
            [
                ("opt/".to_owned(), 0o755, 0),
                ("opt/app/".to_owned(), 0o750, 1000),
                ("opt/app/README".to_owned(), 0o644, 0),
                ("opt/app/bin/".to_owned(), 0o700, 0),
                ("opt/app/bin/x".to_owned(), 0o755, 0),
            ]
        );
    }

    #[test]
    fn include_limits_files() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("x")).unwrap();
        std::fs::write(src.path().join("x/a.rs"), "a").unwrap();
        std::fs::write(src.path().join("x/b.md"), "b").unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(store_dir.path()).unwrap();
        let mut b = LayerBuilder::new();
        b.add_host_dir(
            "src",
            src.path(),
            &HostCopy::default().with_include("**/*.rs"),
        )
        .unwrap();
        let layer = b.write(&store, Compression::Gzip, 0).unwrap();
        let paths: Vec<String> = list(&store, &layer).into_iter().map(|e| e.0).collect();
        assert_eq!(paths, ["src/", "src/x/", "src/x/a.rs"]);
    }

    #[test]
    fn bad_owner_and_missing_source_are_clear() {
        let err = "bob".parse::<Owner>().unwrap_err().to_string();
        assert!(err.contains("bob") && err.contains("UID:GID"), "{err}");
        let mut b = LayerBuilder::new();
        let err = b
            .add_host_file(
                "x",
                Path::new("/nonexistent/blumeops-file"),
                &HostCopy::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/blumeops-file"), "{err}");
    }
}
