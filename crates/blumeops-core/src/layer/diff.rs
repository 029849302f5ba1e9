//! Turning the upper directory of a finished overlay step into a layer.
//!
//! The upper directory holds exactly what the step changed, in the overlayfs representation;
//! it is converted to the OCI one:
//! - a character device 0/0 `dir/NAME` (a whiteout) becomes an empty file `dir/.wh.NAME`
//!   (mode 0, root); so does a regular file carrying an `overlay.whiteout` xattr;
//! - a directory with `overlay.opaque=y` (trusted or user namespace) becomes the directory
//!   entry plus an empty `dir/.wh..wh..opq`;
//! - regular files (streamed from disk when the layer is written), directories, symlinks,
//!   devices and fifos keep their mode (with setuid/setgid/sticky), uid/gid and xattrs;
//!   `trusted.overlay.*`, `user.overlay.*` and `security.selinux` (a host label) are dropped;
//! - regular files sharing an inode become a file (the first path in sorted order) and hard
//!   links to it. Sockets are skipped (tar cannot hold them).
//!
//! Times are clamped, not set: each entry records `min(mtime, epoch)`, so files older than the
//! epoch (copied up unchanged apart from metadata, or given a fixed date by the build) keep
//! their date, and everything the step touched gets the epoch: two runs producing the same
//! files give the same digest. File operations built with [`LayerBuilder::add`] still set
//! every mtime to the epoch. Whiteouts and opaque markers are synthetic and always get the
//! epoch.
//!
//! Overlay features that leave data outside the upper directory (`redirect_dir`,
//! `metacopy`) are refused with [`Error::OverlayFeature`]: mount the step's overlay without
//! them (the kernel default).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use super::compress::Compression;
use super::host::Owner;
use super::unpack::is_overlay_xattr;
use super::{Entry, EntryKind, EntryMeta, Error, FileData, Layer, LayerBuilder};
use crate::store::Store;

/// The name of an opaque-directory marker entry.
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Write the changes recorded in the overlay upper directory `upper` as one layer into
/// `store` (see the module docs for the conversion). Every mtime is clamped to `epoch`.
/// Blocking: call from a blocking thread.
pub fn layer_from_overlay_upper(
    upper: &Path,
    store: &Store,
    compression: Compression,
    epoch: u64,
) -> Result<Layer, Error> {
    builder_from_overlay_upper(upper)?.write(store, compression, epoch)
}

/// The entries of `upper`, in the OCI representation.
pub(super) fn builder_from_overlay_upper(upper: &Path) -> Result<LayerBuilder, Error> {
    let mut walk = Walk {
        builder: LayerBuilder::new(),
        inodes: BTreeMap::new(),
    };
    walk.dir(upper, "")?;
    walk.link_shared_inodes()?;
    Ok(walk.builder)
}

fn host_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Host {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A regular file whose inode has more than one link.
struct Linked {
    path: String,
    mode: u32,
    owner: Owner,
    mtime: u64,
}

struct Walk {
    builder: LayerBuilder,
    /// Regular files with several links, by (device, inode).
    inodes: BTreeMap<(u64, u64), Vec<Linked>>,
}

/// The extended attributes of `path` (not following a symlink), by name.
fn read_xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let err = |e: rustix::io::Errno| Error::Host {
        action: "read extended attributes of",
        path: path.to_owned(),
        source: e.into(),
    };
    let mut out = BTreeMap::new();
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(size) => size,
        Err(rustix::io::Errno::NOTSUP) => return Ok(out),
        Err(e) => return Err(err(e)),
    };
    if size == 0 {
        return Ok(out);
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..]).map_err(err)?;
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let len = match rustix::fs::lgetxattr_query(path, name) {
            Ok(len) => len,
            // Removed between listing and reading.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(err(e)),
        };
        let mut value = vec![0u8; len];
        let got = if len == 0 {
            0
        } else {
            rustix::fs::lgetxattr(path, name, &mut value[..]).map_err(err)?
        };
        value.truncate(got);
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

/// The value of the overlay xattr `overlay.<key>` in either namespace.
fn overlay_xattr<'a>(xattrs: &'a BTreeMap<String, Vec<u8>>, key: &str) -> Option<&'a [u8]> {
    ["trusted.overlay.", "user.overlay."]
        .iter()
        .find_map(|ns| xattrs.get(&format!("{ns}{key}")))
        .map(Vec::as_slice)
}

/// The xattrs that go into the layer.
fn image_xattrs(mut xattrs: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    xattrs.retain(|name, _| !is_overlay_xattr(name) && name != "security.selinux");
    xattrs
}

fn utf8<'a>(s: &'a OsStr, host: &Path, what: &'static str) -> Result<&'a str, Error> {
    s.to_str().ok_or_else(|| Error::Host {
        action: what,
        path: host.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    })
}

fn clamp_source(meta: &std::fs::Metadata) -> u64 {
    u64::try_from(meta.mtime()).unwrap_or(0)
}

impl Walk {
    fn whiteout(&mut self, parent: &str, name: &str) -> Result<(), Error> {
        let path = if parent.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{parent}/.wh.{name}")
        };
        self.marker(&path)
    }

    fn marker(&mut self, path: &str) -> Result<(), Error> {
        self.builder.add(
            path,
            Entry {
                kind: EntryKind::File(FileData::Bytes(Arc::from(&[][..]))),
                mode: 0,
                owner: Owner::ROOT,
            },
        )
    }

    fn dir(&mut self, dir: &Path, rel: &str) -> Result<(), Error> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(host_err("read directory", dir))? {
            names.push(entry.map_err(host_err("read directory", dir))?.file_name());
        }
        names.sort();
        for name in names {
            let host = dir.join(&name);
            let name = utf8(&name, &host, "convert (file name is not UTF-8)")?;
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(&host).map_err(host_err("read", &host))?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                self.whiteout(rel, name)?;
                continue;
            }
            if ft.is_socket() {
                continue;
            }
            let xattrs = read_xattrs(&host)?;
            let mode = meta.mode() & 0o7777;
            let owner = Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            };
            let mtime = clamp_source(&meta);
            let kind = if ft.is_dir() {
                if overlay_xattr(&xattrs, "redirect").is_some() {
                    return Err(Error::OverlayFeature {
                        path: host,
                        feature: "redirect_dir",
                    });
                }
                EntryKind::Dir
            } else if ft.is_file() {
                if overlay_xattr(&xattrs, "metacopy").is_some() {
                    return Err(Error::OverlayFeature {
                        path: host,
                        feature: "metacopy",
                    });
                }
                if overlay_xattr(&xattrs, "whiteout").is_some() {
                    self.whiteout(rel, name)?;
                    continue;
                }
                if meta.nlink() > 1 {
                    self.inodes
                        .entry((meta.dev(), meta.ino()))
                        .or_default()
                        .push(Linked {
                            path: path.clone(),
                            mode,
                            owner,
                            mtime,
                        });
                }
                EntryKind::File(FileData::Host(host.clone()))
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&host).map_err(host_err("read link", &host))?;
                let target = utf8(
                    target.as_os_str(),
                    &host,
                    "convert (link target is not UTF-8)",
                )?;
                EntryKind::Symlink(target.to_owned())
            } else if ft.is_char_device() {
                EntryKind::CharDevice {
                    major: rustix::fs::major(meta.rdev() as rustix::fs::Dev),
                    minor: rustix::fs::minor(meta.rdev() as rustix::fs::Dev),
                }
            } else if ft.is_block_device() {
                EntryKind::BlockDevice {
                    major: rustix::fs::major(meta.rdev() as rustix::fs::Dev),
                    minor: rustix::fs::minor(meta.rdev() as rustix::fs::Dev),
                }
            } else if ft.is_fifo() {
                EntryKind::Fifo
            } else {
                continue;
            };
            let opaque = ft.is_dir() && overlay_xattr(&xattrs, "opaque") == Some(b"y");
            let mut entry_meta = EntryMeta::default().with_mtime(mtime);
            entry_meta.xattrs = image_xattrs(xattrs);
            self.builder
                .add_with_meta(&path, Entry { kind, mode, owner }, entry_meta)?;
            if ft.is_dir() {
                if opaque {
                    self.marker(&format!("{path}/{OPAQUE_MARKER}"))?;
                }
                self.dir(&host, &path)?;
            }
        }
        Ok(())
    }

    /// Regular files sharing an inode: the first path (in the layer's order) stays a file,
    /// the others become hard links to it.
    fn link_shared_inodes(&mut self) -> Result<(), Error> {
        for mut group in std::mem::take(&mut self.inodes).into_values() {
            if group.len() < 2 {
                continue;
            }
            group.sort_by(|a, b| a.path.cmp(&b.path));
            let first = group[0].path.clone();
            for linked in &group[1..] {
                self.builder.add_with_meta(
                    &linked.path,
                    Entry {
                        kind: EntryKind::Hardlink(first.clone()),
                        mode: linked.mode,
                        owner: linked.owner,
                    },
                    EntryMeta::default().with_mtime(linked.mtime),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::media_types;
    use crate::layer::unpack::tests::is_root;
    use crate::layer::{UnpackOptions, unpack_layer};
    use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags};
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;

    struct Listed {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        mtime: u64,
        link: Option<String>,
        xattrs: BTreeMap<String, Vec<u8>>,
    }

    fn list(store: &Store, layer: &Layer) -> Vec<Listed> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(store.open_blob(&layer.blob.digest).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        let mut ar = tar::Archive::new(&raw[..]);
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut xattrs = BTreeMap::new();
            if let Some(pax) = e.pax_extensions().unwrap() {
                for ext in pax {
                    let ext = ext.unwrap();
                    if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                        xattrs.insert(name.to_owned(), ext.value_bytes().to_vec());
                    }
                }
            }
            let h = e.header();
            out.push(Listed {
                path: String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                mtime: h.mtime().unwrap(),
                link: e
                    .link_name_bytes()
                    .map(|l| String::from_utf8(l.into_owned()).unwrap()),
                xattrs,
            });
        }
        out
    }

    fn find<'a>(entries: &'a [Listed], path: &str) -> &'a Listed {
        entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} missing from {:?}", paths(entries)))
    }

    fn paths(entries: &[Listed]) -> Vec<&str> {
        entries.iter().map(|e| e.path.as_str()).collect()
    }

    fn set_mtime(path: &Path, secs: i64) {
        let t = Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    /// Set every mtime under `root` (deepest first) to `secs`.
    fn set_all_mtimes(root: &Path, secs: i64) {
        for entry in std::fs::read_dir(root).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                set_all_mtimes(&entry.path(), secs);
            }
            set_mtime(&entry.path(), secs);
        }
    }

    /// A plain upper directory (no privileged features): files, dirs, a symlink, hard links,
    /// setuid and sticky modes, odd names.
    fn plain_upper(root: &Path) {
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(root.join("usr/bin/b-tool"), "tool").unwrap();
        std::fs::hard_link(root.join("usr/bin/b-tool"), root.join("usr/bin/a-alias")).unwrap();
        std::fs::write(root.join("usr/bin/su"), "su").unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::fs::write(root.join("odd name\nwith ünïcode"), "odd").unwrap();
        let long = root.join("d".repeat(120));
        std::fs::create_dir(&long).unwrap();
        std::fs::write(long.join("f".repeat(120)), "long").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("usr/bin/su"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
    }

    #[test]
    fn plain_upper_becomes_sorted_layer_with_links_and_modes() {
        let upper = tempfile::tempdir().unwrap();
        plain_upper(upper.path());
        let sd = tempfile::tempdir().unwrap();
        let store = Store::open(sd.path()).unwrap();
        let layer =
            layer_from_overlay_upper(upper.path(), &store, Compression::Gzip, 1_000).unwrap();
        let entries = list(&store, &layer);
        let ps = paths(&entries);
        let mut sorted = ps.clone();
        sorted.sort();
        assert_eq!(ps, sorted);
        assert_eq!(find(&entries, "usr/bin/su").mode, 0o4755);
        assert_eq!(find(&entries, "tmp/").mode, 0o1777);
        // Same inode: the first path in order is the file, the other a hard link to it.
        let alias = find(&entries, "usr/bin/a-alias");
        assert_eq!(alias.kind, tar::EntryType::Regular);
        let tool = find(&entries, "usr/bin/b-tool");
        assert_eq!(tool.kind, tar::EntryType::Link);
        assert_eq!(tool.link.as_deref(), Some("usr/bin/a-alias"));
        let bin = find(&entries, "bin");
        assert_eq!(
            (bin.kind, bin.link.as_deref()),
            (tar::EntryType::Symlink, Some("usr/bin"))
        );
        find(&entries, "odd name\nwith ünïcode");
        find(
            &entries,
            &format!("{}/{}", "d".repeat(120), "f".repeat(120)),
        );
        // Everything here was just created, after the epoch: clamped to it.
        assert!(entries.iter().all(|e| e.mtime == 1_000));

        // And back: unpacking the layer gives the same tree.
        let out = tempfile::tempdir().unwrap();
        let stats = unpack_layer(
            &store.blob_path(&layer.blob.digest),
            media_types::OCI_LAYER_GZIP,
            out.path(),
            &UnpackOptions::for_current_user(),
        )
        .unwrap();
        assert_eq!(stats.diff_id, layer.diff_id);
        let a = std::fs::metadata(out.path().join("usr/bin/a-alias")).unwrap();
        let b = std::fs::metadata(out.path().join("usr/bin/b-tool")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(
            std::fs::read_to_string(out.path().join("odd name\nwith ünïcode")).unwrap(),
            "odd"
        );
    }

    #[test]
    fn identical_uppers_with_newer_mtimes_give_the_same_digest() {
        let sd = tempfile::tempdir().unwrap();
        let store = Store::open(sd.path()).unwrap();
        let epoch = 1_600_000_000;
        let mut digests = Vec::new();
        for mtime in [epoch as i64 + 10, epoch as i64 + 99_999] {
            let upper = tempfile::tempdir().unwrap();
            plain_upper(upper.path());
            set_all_mtimes(upper.path(), mtime);
            let layer =
                layer_from_overlay_upper(upper.path(), &store, Compression::Gzip, epoch).unwrap();
            digests.push((layer.blob.digest, layer.diff_id));
        }
        assert_eq!(digests[0], digests[1]);

        // Older than the epoch: the file keeps its own date.
        let upper = tempfile::tempdir().unwrap();
        plain_upper(upper.path());
        set_all_mtimes(upper.path(), epoch as i64 + 5);
        set_mtime(&upper.path().join("usr/bin/su"), 1_234);
        let layer =
            layer_from_overlay_upper(upper.path(), &store, Compression::Gzip, epoch).unwrap();
        let entries = list(&store, &layer);
        assert_eq!(find(&entries, "usr/bin/su").mtime, 1_234);
        assert_eq!(find(&entries, "usr/bin/").mtime, epoch);
    }

    #[test]
    fn whiteouts_opaque_dirs_owners_and_xattrs_convert_both_ways() {
        if !is_root() {
            return;
        }
        let upper = tempfile::tempdir().unwrap();
        let root = upper.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("etc/gone"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("top-gone"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        std::fs::create_dir_all(root.join("var/cache")).unwrap();
        std::fs::write(root.join("var/cache/new"), "n").unwrap();
        rustix::fs::setxattr(
            root.join("var/cache"),
            "trusted.overlay.opaque",
            b"y",
            XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(
            root.join("etc"),
            "trusted.overlay.origin",
            b"\x00junk",
            XattrFlags::empty(),
        )
        .unwrap();
        let ping = root.join("ping");
        std::fs::write(&ping, "ping").unwrap();
        std::os::unix::fs::chown(&ping, Some(1000), Some(1000)).unwrap();
        let cap = [
            0x00, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0,
            0, 0, 0,
        ];
        rustix::fs::setxattr(&ping, "security.capability", &cap, XattrFlags::empty()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();

        let sd = tempfile::tempdir().unwrap();
        let store = Store::open(sd.path()).unwrap();
        let layer = layer_from_overlay_upper(root, &store, Compression::Gzip, 7).unwrap();
        let entries = list(&store, &layer);
        for w in ["etc/.wh.gone", ".wh.top-gone", "var/cache/.wh..wh..opq"] {
            let e = find(&entries, w);
            assert_eq!(
                (e.kind, e.mode, e.uid),
                (tar::EntryType::Regular, 0, 0),
                "{w}"
            );
        }
        assert!(!paths(&entries).contains(&"etc/gone"));
        let p = find(&entries, "ping");
        assert_eq!(p.uid, 1000);
        assert_eq!(p.xattrs.get("security.capability"), Some(&cap.to_vec()));
        assert!(
            entries
                .iter()
                .all(|e| e.xattrs.keys().all(|k| !k.contains("overlay")))
        );
        assert_eq!(find(&entries, "fifo").kind, tar::EntryType::Fifo);

        let out = tempfile::tempdir().unwrap();
        unpack_layer(
            &store.blob_path(&layer.blob.digest),
            media_types::OCI_LAYER_GZIP,
            out.path(),
            &UnpackOptions::privileged(),
        )
        .unwrap();
        let gone = std::fs::symlink_metadata(out.path().join("etc/gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        let mut v = [0u8; 2];
        let n = rustix::fs::getxattr(
            out.path().join("var/cache"),
            "trusted.overlay.opaque",
            &mut v[..],
        )
        .unwrap();
        assert_eq!(&v[..n], b"y");
        let ping = std::fs::metadata(out.path().join("ping")).unwrap();
        assert_eq!(ping.uid(), 1000);
        let mut got = [0u8; 32];
        let n = rustix::fs::getxattr(out.path().join("ping"), "security.capability", &mut got[..])
            .unwrap();
        assert_eq!(&got[..n], &cap);
        assert!(
            std::fs::symlink_metadata(out.path().join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );

        // Converting the unpacked tree again gives the same layer.
        let again = layer_from_overlay_upper(out.path(), &store, Compression::Gzip, 7).unwrap();
        assert_eq!(again, layer);
    }

    /// Run `script` in a private mount namespace with `$M` an overlay of `lowers` (top
    /// first) and `upper`. None when overlayfs cannot be mounted here.
    fn in_overlay(lowers: &[&Path], upper: Option<&Path>, script: &str) -> Option<String> {
        let scratch = tempfile::tempdir().unwrap();
        let merged = scratch.path().join("m");
        std::fs::create_dir(&merged).unwrap();
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let mut opts = format!("lowerdir={}", lowerdir.join(":"));
        if let Some(upper) = upper {
            let work = scratch.path().join("w");
            std::fs::create_dir(&work).unwrap();
            opts.push_str(&format!(
                ",upperdir={},workdir={},index=off,metacopy=off,redirect_dir=off",
                upper.display(),
                work.display()
            ));
        }
        let out = std::process::Command::new("unshare")
            .args(["-m", "sh", "-ec"])
            .arg(format!(
                "mount -t overlay overlay -o {opts} \"$M\"\ncd \"$M\"\n{script}"
            ))
            .env("M", &merged)
            .output()
            .ok()?;
        if !out.status.success() {
            crate::testing::skip(&format!(
                "overlay mount failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        Some(String::from_utf8(out.stdout).unwrap())
    }

    #[test]
    fn real_overlay_step_round_trips_through_layers() {
        if !is_root() {
            return;
        }
        let sd = tempfile::tempdir().unwrap();
        let store = Store::open(sd.path()).unwrap();
        let mut base = LayerBuilder::new();
        for (p, c) in [
            ("etc/hostname", "box"),
            ("var/cache/old", "old"),
            ("usr/bin/tool", "tool"),
        ] {
            base.add_bytes(p, c.as_bytes().to_vec(), 0o755, Owner::ROOT)
                .unwrap();
        }
        let base = base.write(&store, Compression::Gzip, 100).unwrap();
        let lower = store.unpacked_layer(&base.blob, &base.diff_id).unwrap();

        let upper = tempfile::tempdir().unwrap();
        let step = "rm etc/hostname\nrm -rf var/cache\nmkdir var/cache\necho n > var/cache/new\n\
                    ln usr/bin/tool usr/bin/tool2\nchmod 4755 usr/bin/tool\n";
        if in_overlay(&[&lower], Some(upper.path()), step).is_none() {
            return;
        }
        let layer = layer_from_overlay_upper(upper.path(), &store, Compression::Gzip, 100).unwrap();
        let entries = list(&store, &layer);
        assert_eq!(find(&entries, "etc/.wh.hostname").mode, 0);
        find(&entries, "var/cache/.wh..wh..opq");
        find(&entries, "var/cache/new");
        let tool = find(&entries, "usr/bin/tool");
        assert_eq!((tool.kind, tool.mode), (tar::EntryType::Regular, 0o4755));
        let tool2 = find(&entries, "usr/bin/tool2");
        assert_eq!(tool2.kind, tar::EntryType::Link);
        assert_eq!(tool2.link.as_deref(), Some("usr/bin/tool"));
        assert!(entries.iter().all(|e| e.mtime <= 100));

        // The new layer, unpacked from the cache and stacked on the base, shows the step's
        // result.
        let top = store.unpacked_layer(&layer.blob, &layer.diff_id).unwrap();
        let seen = in_overlay(
            &[&top, &lower],
            None,
            "echo \"[$(ls -A etc)] [$(ls -A var/cache)] $(stat -c %h usr/bin/tool2)\"",
        )
        .unwrap();
        assert_eq!(seen.trim(), "[] [new] 2");
    }

    #[test]
    fn redirect_and_metacopy_are_refused() {
        for (name, is_dir, xattr, feature) in [
            ("moved", true, "user.overlay.redirect", "redirect_dir"),
            ("lazy", false, "user.overlay.metacopy", "metacopy"),
        ] {
            let upper = tempfile::tempdir().unwrap();
            let path = upper.path().join(name);
            if is_dir {
                std::fs::create_dir(&path).unwrap();
            } else {
                std::fs::write(&path, "").unwrap();
            }
            if rustix::fs::setxattr(&path, xattr, b"/x", XattrFlags::empty()).is_err() {
                crate::testing::skip("this filesystem refuses user xattrs");
                return;
            }
            let sd = tempfile::tempdir().unwrap();
            let store = Store::open(sd.path()).unwrap();
            let err =
                layer_from_overlay_upper(upper.path(), &store, Compression::Gzip, 0).unwrap_err();
            assert!(
                matches!(err, Error::OverlayFeature { feature: f, .. } if f == feature),
                "{err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
