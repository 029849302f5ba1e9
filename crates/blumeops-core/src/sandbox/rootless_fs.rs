//! How a rootless step gets its rootfs: kernel overlayfs with `userxattr` (Linux 5.11+), else
//! copies of the layers (`copyfs`). fuse-overlayfs only when asked for
//! (`BLUMEOPS_ROOTLESS_FS=fuse-overlayfs`): Debian 12's fuse-overlayfs 1.10 loses the whiteout
//! when a file that was renamed over a lower file is then deleted (what `ldconfig` followed by
//! `rm` does), so the deleted lower file comes back in the layer. Copies are slower but
//! always right.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{Error, io_err};

/// Environment variable forcing the rootless filesystem: `overlay`, `fuse-overlayfs` or
/// `copy`.
pub const ROOTLESS_FS_ENV: &str = "BLUMEOPS_ROOTLESS_FS";

/// The rootfs of a step in a user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootlessFs {
    /// Kernel overlayfs mounted with `userxattr`.
    Overlay,
    /// fuse-overlayfs, this binary.
    FuseOverlayfs(PathBuf),
    /// A copy of the layers per step.
    Copy,
}

impl RootlessFs {
    /// For the progress output and `doctor`.
    pub fn describe(&self) -> String {
        match self {
            Self::Overlay => "overlayfs with userxattr".to_owned(),
            Self::FuseOverlayfs(p) => format!(
                "fuse-overlayfs ({}; asked for with {ROOTLESS_FS_ENV})",
                p.display()
            ),
            Self::Copy => {
                "copying the layers for every step (no overlayfs in a user namespace here: slower)"
                    .to_owned()
            }
        }
    }
}

/// The choice for this process (made once). Outside a user namespace it is `Overlay` (root
/// mounts overlayfs itself).
pub fn rootless_fs() -> &'static RootlessFs {
    static CHOICE: OnceLock<RootlessFs> = OnceLock::new();
    CHOICE.get_or_init(|| {
        let forced = std::env::var(ROOTLESS_FS_ENV).unwrap_or_default();
        match forced.as_str() {
            "overlay" => return RootlessFs::Overlay,
            "copy" => return RootlessFs::Copy,
            "fuse-overlayfs" => {
                if let Some(bin) = crate::executor::find_program("fuse-overlayfs") {
                    return RootlessFs::FuseOverlayfs(bin);
                }
            }
            _ => {}
        }
        if !crate::executor::in_user_namespace() || crate::executor::overlay_mountable() {
            return RootlessFs::Overlay;
        }
        RootlessFs::Copy
    })
}

/// fuse-overlayfs's opaque-directory xattr.
const FUSE_OPAQUE: &str = "user.fuseoverlayfs.opaque";

/// Bring fuse-overlayfs's upper directory to kernel overlayfs's form, so the layer (and its
/// digest) does not depend on which one ran the step: its opaque markers (an xattr plus the
/// entries `.wh..wh..opq` and `.wh..opq`) become `user.overlay.opaque=y`, but only on a
/// directory that hides something in a lower layer (fuse-overlayfs marks every new directory
/// opaque, the kernel only one made where the lower layers had an entry), and its
/// `user.fuseoverlayfs.*` bookkeeping goes.
pub(super) fn normalize_fuse_upper(upper: &Path, lowers: &[PathBuf]) -> Result<(), Error> {
    normalize_dir(upper, Path::new(""), lowers)
}

fn normalize_dir(upper: &Path, rel: &Path, lowers: &[PathBuf]) -> Result<(), Error> {
    let dir = upper.join(rel);
    for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
        let entry = entry.map_err(io_err("read directory", &dir))?;
        let name = entry.file_name();
        let path = entry.path();
        if name == ".wh..wh..opq" || name == ".wh..opq" {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            continue;
        }
        let mut names = vec![0u8; 64 * 1024];
        if let Ok(n) = rustix::fs::llistxattr(&path, &mut names) {
            for x in names[..n].split(|b| *b == 0) {
                let x = String::from_utf8_lossy(x);
                if x.starts_with("user.fuseoverlayfs.") {
                    let _ = rustix::fs::lremovexattr(&path, x.as_ref());
                }
            }
        }
        let child = rel.join(&name);
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let mut value = [0u8; 4];
            let opaque = matches!(rustix::fs::lgetxattr(&path, FUSE_OPAQUE, &mut value), Ok(1) if value[0] == b'y')
                || path.join(".wh..wh..opq").exists();
            let _ = rustix::fs::lremovexattr(&path, FUSE_OPAQUE);
            let hides = lowers
                .iter()
                .any(|l| fs::symlink_metadata(l.join(&child)).is_ok());
            if opaque && hides {
                rustix::fs::lsetxattr(
                    &path,
                    "user.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(|e| io_err("mark directory opaque", &path)(e.into()))?;
            }
            normalize_dir(upper, &child, lowers)?;
        }
    }
    Ok(())
}
