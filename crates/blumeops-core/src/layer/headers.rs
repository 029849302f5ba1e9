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

/// How a path stands in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InLayer {
    /// A directory entry (the last entry of that name).
    Dir(DirMeta),
    /// No entry of its own, but entries below it: unpacking makes it up.
    ImpliedDir,
    /// A symbolic link.
    Symlink,
    /// A file, hard link, device or fifo.
    Other,
    /// A whiteout (`.wh.NAME`): the path is hidden in lower layers.
    Whiteout,
}

/// What one layer's headers say of the paths asked about.
#[derive(Debug, Default)]
pub struct LayerPaths {
    paths: BTreeMap<String, InLayer>,
    /// Directories with an opaque marker (`.wh..wh..opq`): lower layers' content is hidden.
    opaque: BTreeSet<String>,
}

impl LayerPaths {
    fn get(&self, path: &str) -> Option<InLayer> {
        self.paths.get(path).copied()
    }

    /// Note that `name` (normalised) lies in this layer: each of its ancestors that was asked
    /// about is (at least) an implied directory.
    fn imply_ancestors(&mut self, name: &str, wanted: &BTreeSet<String>) {
        let mut end = 0;
        while let Some(slash) = name[end..].find('/') {
            end += slash;
            let ancestor = &name[..end];
            if wanted.contains(ancestor) && !self.paths.contains_key(ancestor) {
                self.paths.insert(ancestor.to_owned(), InLayer::ImpliedDir);
            }
            end += 1;
        }
    }

    fn note(&mut self, name: String, how: InLayer, wanted: &BTreeSet<String>) {
        self.imply_ancestors(&name, wanted);
        if wanted.contains(&name) {
            self.paths.insert(name, how);
        }
    }
}

/// A tar entry name without `./`, leading and trailing `/` and `.` components.
fn normalise(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Read the layer blob at `blob` (of `media_type`) through its headers and say how each of
/// `wanted` (normalised paths) stands in it, with the same bounds as unpacking (`opts`).
/// Blocking.
pub fn scan_layer_paths(
    blob: &Path,
    media_type: &str,
    wanted: &BTreeSet<String>,
    opts: &UnpackOptions,
) -> Result<LayerPaths, Error> {
    let mut found = LayerPaths::default();
    LayerStream::open(blob, media_type, opts, false)?.for_each_entry(|entry, _| {
        let raw = entry.path_bytes();
        let name = normalise(&String::from_utf8_lossy(&raw));
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
            found.note(path, InLayer::Whiteout, wanted);
            return Ok(());
        }
        let header = entry.header();
        let how = match header.entry_type() {
            tar::EntryType::Directory => {
                match (header.mode(), header.uid(), header.gid()) {
                    (Ok(mode), Ok(uid), Ok(gid)) => {
                        match (u32::try_from(uid), u32::try_from(gid)) {
                            (Ok(uid), Ok(gid)) => InLayer::Dir(DirMeta {
                                mode: mode & 0o7777,
                                uid,
                                gid,
                            }),
                            // Unpacking refuses it: leave the answer to the unpack.
                            _ => InLayer::ImpliedDir,
                        }
                    }
                    _ => InLayer::ImpliedDir,
                }
            }
            tar::EntryType::Symlink => InLayer::Symlink,
            _ => InLayer::Other,
        };
        found.note(name, how, wanted);
        Ok(())
    })?;
    Ok(found)
}

/// [`scan_layer_paths`] for a layer already unpacked at `dir` (in the overlayfs
/// representation): each of `wanted` looked up on disk. A directory there reads as a
/// directory entry with its metadata on disk, whether the layer had an entry for it or only
/// implied it: what the view of the unpacked layers says too. Blocking.
pub fn unpacked_layer_paths(dir: &Path, wanted: &BTreeSet<String>) -> Result<LayerPaths, Error> {
    use std::os::unix::fs::MetadataExt as _;
    let mut found = LayerPaths::default();
    for path in wanted {
        let host = dir.join(path);
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                continue;
            }
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
        let path = normalise(path);
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
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
        let comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        for depth in 1..=comps.len() {
            all.insert(comps[..depth].join("/"));
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_755: DirMeta = DirMeta {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };

    /// A gzip layer of `entries` (name, kind: 'd' dir with mode, 'f' file, 'l' symlink).
    fn layer(dir: &Path, name: &str, entries: &[(&str, char, u32, u32)]) -> std::path::PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, mode, uid) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_uid(u64::from(*uid));
            h.set_gid(u64::from(*uid));
            h.set_size(0);
            match kind {
                'd' => h.set_entry_type(tar::EntryType::Directory),
                'l' => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_link_name("elsewhere").unwrap();
                }
                _ => h.set_entry_type(tar::EntryType::Regular),
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
        path
    }

    /// Resolve `paths` over `layers` (top first) from their headers.
    fn resolve(layers: &[std::path::PathBuf], paths: &[&str]) -> Vec<Option<InImage>> {
        let owned: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        let wanted = with_ancestors(&owned);
        let opts = UnpackOptions::default();
        let mut stack = LayerStack::new(layers.len(), |i| {
            scan_layer_paths(
                &layers[i],
                crate::image::media_types::OCI_LAYER_GZIP,
                &wanted,
                &opts,
            )
        });
        let mut memo = HashMap::new();
        owned
            .iter()
            .map(|p| stack.resolve(p, &mut memo).unwrap())
            .collect()
    }

    #[test]
    fn the_top_layer_that_names_a_directory_decides_it() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("app/", 'd', 0o700, 5),
                ("etc/", 'd', 0o755, 0),
                ("etc/x", 'f', 0o644, 0),
            ],
        );
        let top = layer(
            tmp.path(),
            "top",
            &[("./app/", 'd', 0o750, 7), ("app/f", 'f', 0o644, 0)],
        );
        assert_eq!(
            resolve(
                &[top.clone(), base.clone()],
                &["/app", "/etc", "/app/src", "/etc/x"]
            ),
            [
                Some(InImage::Dir(DirMeta {
                    mode: 0o750,
                    uid: 7,
                    gid: 7
                })),
                Some(InImage::Dir(ROOT_755)),
                Some(InImage::Missing),
                Some(InImage::NotDir),
            ]
        );
        // Below a file, nothing is there.
        assert_eq!(
            resolve(&[top, base], &["/etc/x/y"]),
            [Some(InImage::Missing)]
        );
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("opt/", 'd', 0o755, 0),
                ("opt/a/", 'd', 0o700, 3),
                ("srv/", 'd', 0o755, 0),
                ("srv/b/", 'd', 0o700, 3),
                ("var/", 'd', 0o711, 0),
            ],
        );
        let top = layer(
            tmp.path(),
            "top",
            &[
                ("opt/", 'd', 0o755, 0),
                ("opt/.wh.a", 'f', 0o644, 0),
                ("srv/", 'd', 0o755, 0),
                ("srv/.wh..wh..opq", 'f', 0o644, 0),
                (".wh.var", 'f', 0o644, 0),
            ],
        );
        assert_eq!(
            resolve(
                &[top.clone(), base.clone()],
                &["/opt/a", "/srv/b", "/var", "/var/lib"]
            ),
            [
                Some(InImage::Missing),
                Some(InImage::Missing),
                Some(InImage::Missing),
                Some(InImage::Missing)
            ]
        );
        // Without the top layer, all are there.
        assert_eq!(
            resolve(&[base], &["/opt/a", "/srv/b", "/var"]),
            [
                Some(InImage::Dir(DirMeta {
                    mode: 0o700,
                    uid: 3,
                    gid: 3
                })),
                Some(InImage::Dir(DirMeta {
                    mode: 0o700,
                    uid: 3,
                    gid: 3
                })),
                Some(InImage::Dir(DirMeta {
                    mode: 0o711,
                    uid: 0,
                    gid: 0
                })),
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
                ("var/", 'd', 0o755, 0),
                ("var/run", 'l', 0o777, 0),
                ("implied/x", 'f', 0o644, 0),
            ],
        );
        assert_eq!(
            resolve(
                &[base],
                &["/var/run/app", "/implied", "/var/run", "/implied/x/y"]
            ),
            [None, None, Some(InImage::NotDir), Some(InImage::Missing)]
        );
    }

    #[test]
    fn the_answers_match_the_view_of_the_unpacked_layers() {
        // The same stacks, unpacked and read through RootfsView: the two must agree
        // wherever the headers give an answer.
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(
            tmp.path(),
            "base",
            &[
                ("opt/", 'd', 0o755, 0),
                ("opt/a/", 'd', 0o700, 0),
                ("srv/", 'd', 0o755, 0),
                ("srv/b/", 'd', 0o750, 0),
                ("srv/b/c/", 'd', 0o705, 0),
                ("etc/", 'd', 0o755, 0),
                ("etc/f", 'f', 0o644, 0),
            ],
        );
        let top = layer(
            tmp.path(),
            "top",
            &[
                ("opt/", 'd', 0o755, 0),
                ("opt/.wh.a", 'f', 0o644, 0),
                ("srv/", 'd', 0o711, 0),
                ("srv/b/", 'd', 0o701, 0),
                ("srv/b/.wh..wh..opq", 'f', 0o644, 0),
            ],
        );
        let paths = [
            "/opt", "/opt/a", "/srv", "/srv/b", "/srv/b/c", "/etc", "/etc/f", "/etc/f/g", "/new",
        ];
        let from_headers = resolve(&[top.clone(), base.clone()], &paths);
        let opts = UnpackOptions::for_current_user();
        let mut dirs = Vec::new();
        for (name, blob) in [("base.d", &base), ("top.d", &top)] {
            let dest = tmp.path().join(name);
            std::fs::create_dir(&dest).unwrap();
            crate::layer::unpack_layer(
                blob,
                crate::image::media_types::OCI_LAYER_GZIP,
                &dest,
                &opts,
            )
            .unwrap();
            dirs.push(dest);
        }
        // The same answers from the unpacked directories, alone and below a layer read
        // from its headers.
        let owned: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        let wanted = with_ancestors(&owned);
        for top_from_disk in [true, false] {
            let mut stack = LayerStack::new(2, |i| {
                if i == 0 && !top_from_disk {
                    scan_layer_paths(
                        &top,
                        crate::image::media_types::OCI_LAYER_GZIP,
                        &wanted,
                        &opts,
                    )
                } else {
                    unpacked_layer_paths(&dirs[1 - i], &wanted)
                }
            });
            let mut memo = HashMap::new();
            for (path, headers) in owned.iter().zip(&from_headers) {
                let mut disk = stack.resolve(path, &mut memo).unwrap();
                if let Some(InImage::Dir(meta)) = &mut disk {
                    // Unpacked as whoever runs the test: compare modes.
                    (meta.uid, meta.gid) = (0, 0);
                }
                assert_eq!(
                    disk, *headers,
                    "{path}, top layer from disk: {top_from_disk}"
                );
            }
        }
        let view = crate::layer::RootfsView::new(dirs);
        for (path, headers) in paths.iter().zip(from_headers) {
            use std::os::unix::fs::MetadataExt as _;
            let from_view = match view.resolve(path, false).unwrap() {
                Some(e) if e.meta.is_dir() => InImage::Dir(DirMeta {
                    mode: e.meta.mode() & 0o7777,
                    // Unpacked without owners: compare modes.
                    uid: 0,
                    gid: 0,
                }),
                Some(_) => InImage::NotDir,
                None => InImage::Missing,
            };
            assert_eq!(headers, Some(from_view), "{path}");
        }
    }
}
