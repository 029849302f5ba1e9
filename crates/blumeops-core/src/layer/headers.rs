//! How a few paths stand in an image, told from its layers' tar headers without unpacking
//! anything. A step that copies into a directory must know whether the image has that
//! directory (and its mode and owner); unpacking every layer below to look costs more than
//! most such steps (a 64 MiB layer below a `COPY` of a source tree took longer to unpack than
//! the copy), while reading the headers costs one decompression of each layer.
//!
//! The answers are those [`super::RootfsView::resolve`] gives over the unpacked layers (a
//! path is looked up one component at a time, top layer first, with whiteouts and opaque
//! directories hiding what lies below), for the cases headers settle. Where they cannot (a
//! symlink on the way, which the view follows, or a directory a layer only implies), the
//! answer is "unknown" and the caller unpacks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::Error;
use super::unpack::{DirMeta, LayerStream, UnpackOptions};
use crate::reference::Digest;

/// How a path stands in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InLayer {
    /// A directory entry (the last entry of that name).
    Dir(DirMeta),
    /// No entry of its own, but entries below it: unpacking makes it up.
    ImpliedDir,
    /// A symbolic link.
    Symlink,
    /// A regular file.
    Other,
    /// A whiteout (`.wh.NAME`): the path is hidden in lower layers.
    Whiteout,
    /// What unpacking makes of it depends on more than the headers tell (the name given
    /// twice in the layer, a whiteout beside an entry, a hard link, a device or fifo that
    /// may be skipped): left to the unpack.
    Unknown,
}

/// What one layer's headers say of the paths asked about.
#[derive(Debug, Default)]
pub struct LayerPaths {
    paths: BTreeMap<String, InLayer>,
    /// Directories with an opaque marker (`.wh..wh..opq`): lower layers' content is hidden.
    opaque: BTreeSet<String>,
    /// A name unpacking refuses (a `..` component, not UTF-8): the layer is left to it.
    refused: bool,
}

impl LayerPaths {
    fn get(&self, path: &str) -> Option<InLayer> {
        if self.refused {
            return Some(InLayer::Unknown);
        }
        self.paths.get(path).copied()
    }

    /// Record `how` for `name` if it was asked about. Only the plain sequences read the way
    /// unpacking writes them: a directory entry over a directory (its metadata replaced), an
    /// implied directory under a directory. Anything else given twice is unknown.
    fn record(&mut self, name: &str, how: InLayer, wanted: &BTreeSet<String>) {
        if !wanted.contains(name) {
            return;
        }
        let merged = match (self.paths.get(name), how) {
            (None, how) => how,
            (Some(InLayer::Unknown), _) => InLayer::Unknown,
            (Some(InLayer::Dir(meta)), InLayer::ImpliedDir) => InLayer::Dir(*meta),
            (Some(InLayer::ImpliedDir), InLayer::ImpliedDir) => InLayer::ImpliedDir,
            (Some(InLayer::Dir(_) | InLayer::ImpliedDir), InLayer::Dir(meta)) => InLayer::Dir(meta),
            _ => InLayer::Unknown,
        };
        self.paths.insert(name.to_owned(), merged);
    }

    /// Note that `name` (normalised) lies in this layer: each of its ancestors that was asked
    /// about is (at least) an implied directory.
    fn imply_ancestors(&mut self, name: &str, wanted: &BTreeSet<String>) {
        for ancestor in ancestors(name) {
            self.record(ancestor, InLayer::ImpliedDir, wanted);
        }
    }

    /// Note an entry and what it implies of its ancestors. One whose outcome is unknown (a
    /// device, a fifo or a hard link, which unpacking may skip without making its parents)
    /// leaves its ancestors unknown too.
    fn note(&mut self, name: &str, how: InLayer, wanted: &BTreeSet<String>) {
        let parent = if how == InLayer::Unknown {
            InLayer::Unknown
        } else {
            InLayer::ImpliedDir
        };
        for ancestor in ancestors(name) {
            self.record(ancestor, parent, wanted);
        }
        self.record(name, how, wanted);
    }
}

/// The proper ancestors of a normalised path, shallowest first: `a`, `a/b` for `a/b/c`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(end, _)| &path[..end])
}

/// A tar entry name without `./`, leading and trailing `/` and `.` components.
fn normalise(name: &str) -> String {
    super::view::split(name).join("/")
}

/// Read the layer blob at `blob` (of `media_type`) through its headers and say how each of
/// `wanted` (normalised paths) stands in it, with the same bounds as unpacking (`opts`) and
/// the same check of the uncompressed stream against `diff_id`. Blocking.
pub fn scan_layer_paths(
    blob: &Path,
    media_type: &str,
    diff_id: &Digest,
    wanted: &BTreeSet<String>,
    opts: &UnpackOptions,
) -> Result<LayerPaths, Error> {
    let mut found = LayerPaths::default();
    let (_, hasher) =
        LayerStream::open(blob, media_type, opts, true)?.for_each_entry(|entry, _| {
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                return Ok(());
            }
            let raw = entry.path_bytes();
            let Ok(raw) = std::str::from_utf8(&raw) else {
                found.refused = true;
                return Ok(());
            };
            if raw.split('/').any(|c| c == "..") {
                found.refused = true;
                return Ok(());
            }
            let name = normalise(raw);
            let (dir, base) = match name.rsplit_once('/') {
                Some((dir, base)) => (dir, base),
                None => ("", name.as_str()),
            };
            if base == ".wh..wh..opq" {
                found.imply_ancestors(&name, wanted);
                if wanted.contains(dir) {
                    found.opaque.insert(dir.to_owned());
                }
                return Ok(());
            }
            if base.starts_with(".wh..wh.") {
                // AUFS bookkeeping, skipped by unpacking too.
                return Ok(());
            }
            if let Some(hidden) = base.strip_prefix(".wh.") {
                let path = if dir.is_empty() {
                    hidden.to_owned()
                } else {
                    format!("{dir}/{hidden}")
                };
                found.note(&path, InLayer::Whiteout, wanted);
                return Ok(());
            }
            let header = entry.header();
            let how = match kind {
                tar::EntryType::Directory => match (header.mode(), header.uid(), header.gid()) {
                    (Ok(mode), Ok(uid), Ok(gid)) => {
                        match (u32::try_from(uid), u32::try_from(gid)) {
                            (Ok(uid), Ok(gid)) => InLayer::Dir(DirMeta {
                                mode: mode & 0o7777,
                                uid,
                                gid,
                            }),
                            _ => InLayer::Unknown,
                        }
                    }
                    _ => InLayer::Unknown,
                },
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => InLayer::Other,
                tar::EntryType::Symlink => InLayer::Symlink,
                // A hard link takes its target's kind (a symlink's is a symlink); a device or
                // fifo may be skipped; other types are refused.
                _ => InLayer::Unknown,
            };
            found.note(&name, how, wanted);
            Ok(())
        })?;
    let actual = hasher.expect("hashed").finish();
    if actual != *diff_id {
        return Err(Error::DiffIdMismatch {
            layer: blob.to_owned(),
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(found)
}

/// [`scan_layer_paths`] for a layer already unpacked at `dir` (in the overlayfs
/// representation): each of `wanted` looked up on disk, never below a component that is not
/// a directory there. A directory reads as a directory entry with its metadata on disk,
/// whether the layer had an entry for it or only implied it: what the view of the unpacked
/// layers says too. Blocking.
pub fn unpacked_layer_paths(dir: &Path, wanted: &BTreeSet<String>) -> Result<LayerPaths, Error> {
    use std::os::unix::fs::MetadataExt as _;
    let mut found = LayerPaths::default();
    // Sorted: a directory comes before what lies below it.
    for path in wanted {
        let parent_is_dir = match path.rsplit_once('/') {
            Some((parent, _)) => matches!(found.paths.get(parent), Some(InLayer::Dir(_))),
            None => true,
        };
        if !parent_is_dir {
            continue;
        }
        let host = dir.join(path);
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Host {
                    action: "read",
                    path: host,
                    source,
                });
            }
        };
        let how = if meta.is_dir() {
            if super::view::is_opaque(&host) {
                found.opaque.insert(path.clone());
            }
            InLayer::Dir(DirMeta {
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            })
        } else if super::view::is_whiteout(&meta) {
            InLayer::Whiteout
        } else if meta.file_type().is_symlink() {
            InLayer::Symlink
        } else {
            InLayer::Other
        };
        found.paths.insert(path.clone(), how);
    }
    // Removed meanwhile (a prune): everything would read as missing.
    if !dir.is_dir() {
        return Err(Error::Host {
            action: "read unpacked layer",
            path: dir.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    Ok(found)
}

/// How a path stands in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InImage {
    /// A directory with this mode and owner.
    Dir(DirMeta),
    /// Something other than a directory (a symlink is not followed).
    NotDir,
    /// Nothing there (or a parent on the way is not a directory).
    Missing,
}

/// The layers of an image, top first, each scanned once when first needed.
pub struct LayerStack<F> {
    count: usize,
    scanned: Vec<LayerPaths>,
    scan: F,
}

impl<F: FnMut(usize) -> Result<LayerPaths, Error>> LayerStack<F> {
    /// `count` layers; `scan(i)` reads layer `i` (0 = the top one).
    pub fn new(count: usize, scan: F) -> Self {
        Self {
            count,
            scanned: Vec::new(),
            scan,
        }
    }

    fn layer(&mut self, i: usize) -> Result<&LayerPaths, Error> {
        while self.scanned.len() <= i {
            let next = (self.scan)(self.scanned.len())?;
            self.scanned.push(next);
        }
        Ok(&self.scanned[i])
    }

    /// The entry visible at `comps` (no symlink resolved on the way), as the view's lookup
    /// finds it: `None` when nothing is visible.
    fn visible(&mut self, comps: &[&str]) -> Result<Option<InLayer>, Error> {
        let path = comps.join("/");
        for i in 0..self.count {
            let layer = self.layer(i)?;
            let mut opaque = false;
            let mut reached = true;
            for depth in 1..comps.len() {
                let ancestor = comps[..depth].join("/");
                match layer.get(&ancestor) {
                    Some(InLayer::Unknown) => return Ok(Some(InLayer::Unknown)),
                    Some(InLayer::Dir(_) | InLayer::ImpliedDir) => {
                        opaque |= layer.opaque.contains(&ancestor);
                    }
                    // A whiteout or non-directory on the way hides the path here and below.
                    Some(_) => return Ok(None),
                    None => {
                        reached = false;
                        break;
                    }
                }
            }
            if !reached {
                if opaque {
                    return Ok(None);
                }
                continue;
            }
            match layer.get(&path) {
                Some(InLayer::Whiteout) => return Ok(None),
                Some(how) => return Ok(Some(how)),
                None if opaque => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// How `path` stands in the image (a final symlink not followed), or `None` when headers
    /// cannot tell (a symlink on the way, or a directory only implied by what it holds).
    pub fn resolve(
        &mut self,
        path: &str,
        memo: &mut HashMap<String, Option<InLayer>>,
    ) -> Result<Option<InImage>, Error> {
        let comps = super::view::split(path);
        for depth in 1..=comps.len() {
            let key = comps[..depth].join("/");
            let how = match memo.get(&key) {
                Some(how) => *how,
                None => {
                    let how = self.visible(&comps[..depth])?;
                    memo.insert(key, how);
                    how
                }
            };
            let last = depth == comps.len();
            match how {
                Some(InLayer::Unknown) => return Ok(None),
                None => return Ok(Some(InImage::Missing)),
                Some(InLayer::Dir(meta)) if last => return Ok(Some(InImage::Dir(meta))),
                Some(InLayer::ImpliedDir) if last => return Ok(None),
                Some(_) if last => return Ok(Some(InImage::NotDir)),
                Some(InLayer::Symlink) => return Ok(None),
                Some(InLayer::Dir(_) | InLayer::ImpliedDir) => {}
                Some(_) => return Ok(Some(InImage::Missing)),
            }
        }
        // The root: always a directory, whose metadata the caller never asks for.
        Ok(None)
    }
}

/// Every path of `paths` and each of their ancestors, normalised: what to ask the layers.
pub fn with_ancestors(paths: &[String]) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for p in paths {
        let p = normalise(p);
        all.extend(ancestors(&p).map(str::to_owned));
        if !p.is_empty() {
            all.insert(p);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::media_types::OCI_LAYER_GZIP;

    /// A gzip layer on disk and its diff_id.
    struct TestLayer {
        path: std::path::PathBuf,
        diff_id: Digest,
    }

    /// A gzip layer of `entries`: (path, kind, mode, uid) where kind is `d` (directory), `f`
    /// (file), `l:TARGET` (symlink), `h:TARGET` (hard link) or `p` (fifo).
    fn layer(dir: &Path, name: &str, entries: &[(&str, &str, u32, u32)]) -> TestLayer {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, mode, uid) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_uid(u64::from(*uid));
            h.set_gid(u64::from(*uid));
            h.set_size(0);
            let (kind, target) = kind.split_once(':').unwrap_or((kind, ""));
            h.set_entry_type(match kind {
                "d" => tar::EntryType::Directory,
                "l" => tar::EntryType::Symlink,
                "h" => tar::EntryType::Link,
                "p" => tar::EntryType::Fifo,
                _ => tar::EntryType::Regular,
            });
            if !target.is_empty() {
                h.set_link_name(target).unwrap();
            }
            b.append_data(&mut h, path, std::io::empty()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let path = dir.join(name);
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap();
        TestLayer {
            path,
            diff_id: Digest::of(&tar),
        }
    }

    /// Resolve `paths` over `layers` (top first) from their headers.
    fn resolve(layers: &[&TestLayer], paths: &[&str]) -> Vec<Option<InImage>> {
        let owned: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        let wanted = with_ancestors(&owned);
        let opts = UnpackOptions::for_current_user();
        let mut stack = LayerStack::new(layers.len(), |i| {
            let l = layers[i];
            scan_layer_paths(&l.path, OCI_LAYER_GZIP, &l.diff_id, &wanted, &opts)
        });
        let mut memo = HashMap::new();
        owned
            .iter()
            .map(|p| stack.resolve(p, &mut memo).unwrap())
            .collect()
    }

    /// Owners on disk are the layer's only when unpacking keeps them (as root).
    fn comparable(answer: InImage) -> InImage {
        match answer {
            InImage::Dir(meta) if !rustix::process::geteuid().is_root() => InImage::Dir(DirMeta {
                uid: 0,
                gid: 0,
                ..meta
            }),
            other => other,
        }
    }

    /// `layers` (top first) unpacked under `tmp`, base first, as RootfsView wants them.
    fn unpack_all(tmp: &Path, layers: &[&TestLayer]) -> Vec<std::path::PathBuf> {
        let opts = UnpackOptions::for_current_user();
        let mut dirs = Vec::new();
        for (i, l) in layers.iter().enumerate().rev() {
            let dest = tmp.join(format!("unpacked-{}-{i}", dirs.len()));
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::create_dir(&dest).unwrap();
            crate::layer::unpack_layer(&l.path, OCI_LAYER_GZIP, &dest, &opts).unwrap();
            dirs.push(dest);
        }
        dirs
    }

    /// Resolve `paths` from the headers and check every answer they give against the view
    /// of the same layers unpacked; returns the headers' answers.
    fn agreed(tmp: &Path, layers: &[&TestLayer], paths: &[&str]) -> Vec<Option<InImage>> {
        let from_headers = resolve(layers, paths);
        let view = crate::layer::RootfsView::new(unpack_all(tmp, layers));
        for (path, headers) in paths.iter().zip(&from_headers) {
            use std::os::unix::fs::MetadataExt as _;
            let from_view = match view.resolve(path, false).unwrap() {
                Some(e) if e.meta.is_dir() => InImage::Dir(DirMeta {
                    mode: e.meta.mode() & 0o7777,
                    uid: e.meta.uid(),
                    gid: e.meta.gid(),
                }),
                Some(_) => InImage::NotDir,
                None => InImage::Missing,
            };
            if let Some(headers) = headers {
                assert_eq!(comparable(*headers), comparable(from_view), "{path}");
            }
        }
        from_headers
    }

    const fn dir(mode: u32, uid: u32) -> Option<InImage> {
        Some(InImage::Dir(DirMeta {
            mode,
            uid,
            gid: uid,
        }))
    }

    #[test]
    fn the_top_layer_that_names_a_directory_decides_it() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("app/", "d", 0o700, 5),
                ("etc/", "d", 0o755, 0),
                ("etc/x", "f", 0o644, 0),
            ],
        );
        let top = layer(
            tmp.path(),
            "top",
            &[("./app/", "d", 0o750, 7), ("app/f", "f", 0o644, 0)],
        );
        assert_eq!(
            agreed(
                tmp.path(),
                &[&top, &base],
                &["/app", "/etc", "/app/src", "/etc/x", "/etc/x/y"]
            ),
            [
                dir(0o750, 7),
                dir(0o755, 0),
                Some(InImage::Missing),
                Some(InImage::NotDir),
                Some(InImage::Missing),
            ]
        );
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("opt/", "d", 0o755, 0),
                ("opt/a/", "d", 0o700, 3),
                ("srv/", "d", 0o755, 0),
                ("srv/b/", "d", 0o700, 3),
                ("var/", "d", 0o711, 0),
            ],
        );
        let top = layer(
            tmp.path(),
            "top",
            &[
                ("opt/", "d", 0o755, 0),
                ("opt/.wh.a", "f", 0o644, 0),
                ("srv/", "d", 0o755, 0),
                ("srv/.wh..wh..opq", "f", 0o644, 0),
                (".wh.var", "f", 0o644, 0),
            ],
        );
        let paths = ["/opt/a", "/srv/b", "/var", "/var/lib"];
        assert_eq!(
            agreed(tmp.path(), &[&top, &base], &paths),
            [Some(InImage::Missing); 4]
        );
        // Without the top layer, all are there.
        assert_eq!(
            agreed(tmp.path(), &[&base], &paths),
            [
                dir(0o700, 3),
                dir(0o700, 3),
                dir(0o711, 0),
                Some(InImage::Missing)
            ]
        );
    }

    #[test]
    fn symlinks_on_the_way_and_implied_directories_are_left_to_the_unpack() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("var/", "d", 0o755, 0),
                ("var/run", "l:/run", 0o777, 0),
                ("implied/x", "f", 0o644, 0),
            ],
        );
        assert_eq!(
            agreed(
                tmp.path(),
                &[&base],
                &["/var/run/app", "/implied", "/var/run", "/implied/x/y"]
            ),
            [None, None, Some(InImage::NotDir), Some(InImage::Missing)]
        );
    }

    #[test]
    fn a_name_given_twice_and_unusual_entries_are_left_to_the_unpack() {
        // Each is a sequence that unpacking writes differently from "the last entry wins".
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("etc/", "d", 0o755, 0),
                ("etc/x/", "d", 0o700, 0),
                ("z/", "d", 0o755, 0),
                ("z/c/", "d", 0o711, 0),
                ("real/", "d", 0o755, 0),
                ("real/x/", "d", 0o750, 0),
                ("q/", "d", 0o700, 0),
            ],
        );
        let top = layer(
            tmp.path(),
            "top",
            &[
                // A directory, then its whiteout: unpacking keeps the directory.
                ("a/", "d", 0o700, 0),
                (".wh.a", "f", 0o644, 0),
                // A whiteout, then the directory: unpacking makes it opaque.
                (".wh.etc", "f", 0o644, 0),
                ("etc/", "d", 0o755, 0),
                // A directory replaced by a file and made again: what was below is gone.
                ("z/", "d", 0o755, 0),
                ("z/c/", "d", 0o700, 0),
                ("z", "f", 0o644, 0),
                ("z/", "d", 0o755, 0),
                // A hard link to a symlink is a symlink on disk.
                ("s", "l:real", 0o777, 0),
                ("h", "h:s", 0o777, 0),
                // A fifo that an unprivileged unpack skips.
                ("q", "p", 0o644, 0),
            ],
        );
        assert_eq!(
            agreed(
                tmp.path(),
                &[&top, &base],
                &["/a", "/etc/x", "/z/c", "/h/x", "/q", "/q/b"]
            ),
            [None; 6]
        );
    }

    #[test]
    fn entries_unpacking_may_skip_imply_nothing_about_their_parents() {
        // A fifo or a hard link under `a`, which a lower layer has as a symlink: the view
        // follows the symlink, so the headers must not take `a` for a directory.
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("real/", "d", 0o755, 0),
                ("real/b/", "d", 0o700, 0),
                ("a", "l:real", 0o777, 0),
            ],
        );
        for entry in [("a/p", "p", 0o644, 0), ("a/n", "h:real", 0o644, 0)] {
            let top = layer(tmp.path(), "top", &[entry]);
            assert_eq!(
                resolve(&[&top, &base], &["/a/b", "/a"]),
                [None, None],
                "{entry:?}"
            );
        }
    }

    #[test]
    fn entry_order_within_a_layer_reads_as_unpacking_writes_it() {
        // Children before their directory's entry, an opaque marker before its directory.
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("srv/", "d", 0o755, 0),
                ("srv/old/", "d", 0o700, 0),
                ("opt/", "d", 0o755, 0),
            ],
        );
        let top = layer(
            tmp.path(),
            "top",
            &[
                ("opt/a/b/", "d", 0o701, 0),
                ("opt/a/", "d", 0o710, 0),
                ("srv/.wh..wh..opq", "f", 0o644, 0),
                ("srv/", "d", 0o750, 0),
            ],
        );
        assert_eq!(
            agreed(
                tmp.path(),
                &[&top, &base],
                &["/opt/a", "/opt/a/b", "/srv", "/srv/old"]
            ),
            [
                dir(0o710, 0),
                dir(0o701, 0),
                dir(0o750, 0),
                Some(InImage::Missing)
            ]
        );
    }

    #[test]
    fn a_layer_with_a_name_unpacking_refuses_is_left_to_the_unpack() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for name in [&b"app/"[..], b"../escape"] {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_entry_type(if name.ends_with(b"/") {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let path = tmp.path().join("refused");
        std::fs::write(&path, &tar).unwrap();
        let wanted = with_ancestors(&["app".to_owned()]);
        let found = scan_layer_paths(
            &path,
            crate::image::media_types::OCI_LAYER_TAR,
            &Digest::of(&tar),
            &wanted,
            &UnpackOptions::for_current_user(),
        )
        .unwrap();
        assert_eq!(found.get("app"), Some(InLayer::Unknown));
    }

    #[test]
    fn a_layer_that_is_not_its_diff_id_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(tmp.path(), "base", &[("app/", "d", 0o755, 0)]);
        let wanted = with_ancestors(&["app".to_owned()]);
        let wrong = Digest::of(b"another layer");
        let err = scan_layer_paths(
            &base.path,
            OCI_LAYER_GZIP,
            &wrong,
            &wanted,
            &UnpackOptions::for_current_user(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::DiffIdMismatch { .. }), "{err}");
    }

    #[test]
    fn unpacked_layers_on_disk_give_the_answers_of_their_headers() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("opt/", "d", 0o755, 0),
                ("opt/a/", "d", 0o700, 0),
                ("srv/", "d", 0o755, 0),
                ("srv/b/", "d", 0o750, 0),
                ("srv/b/c/", "d", 0o705, 0),
                ("etc/", "d", 0o755, 0),
                ("etc/f", "f", 0o644, 0),
                ("lnk", "l:lnk", 0o777, 0),
            ],
        );
        let top = layer(
            tmp.path(),
            "top",
            &[
                ("opt/", "d", 0o755, 0),
                ("opt/.wh.a", "f", 0o644, 0),
                ("srv/", "d", 0o711, 0),
                ("srv/b/", "d", 0o701, 0),
                ("srv/b/.wh..wh..opq", "f", 0o644, 0),
            ],
        );
        let paths = [
            "/opt", "/opt/a", "/srv", "/srv/b", "/srv/b/c", "/etc", "/etc/f", "/etc/f/g", "/new",
            "/lnk",
        ];
        let from_headers = agreed(tmp.path(), &[&top, &base], &paths);
        assert!(from_headers.iter().all(Option::is_some), "{from_headers:?}");
        // Unpacked base first in the list RootfsView takes: [base, top].
        let dirs = unpack_all(tmp.path(), &[&top, &base]);
        let owned: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        let wanted = with_ancestors(&owned);
        let opts = UnpackOptions::for_current_user();
        for top_from_disk in [true, false] {
            let mut stack = LayerStack::new(2, |i| {
                if i == 0 && !top_from_disk {
                    scan_layer_paths(&top.path, OCI_LAYER_GZIP, &top.diff_id, &wanted, &opts)
                } else {
                    unpacked_layer_paths(&dirs[1 - i], &wanted)
                }
            });
            let mut memo = HashMap::new();
            for (path, headers) in owned.iter().zip(&from_headers) {
                let disk = stack.resolve(path, &mut memo).unwrap();
                assert_eq!(
                    disk.map(comparable),
                    headers.map(comparable),
                    "{path}, top layer from disk: {top_from_disk}"
                );
            }
        }
        // A symlink in a layer on disk is never followed (`lnk` points at itself).
        let links = with_ancestors(&["lnk/x".to_owned()]);
        let found = unpacked_layer_paths(&dirs[0], &links).unwrap();
        assert_eq!(found.get("lnk"), Some(InLayer::Symlink));
        assert_eq!(found.get("lnk/x"), None);
    }
}
