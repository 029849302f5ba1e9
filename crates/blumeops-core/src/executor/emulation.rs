//! Commands for another architecture: whether the kernel can run them here.
//!
//! A step for a platform whose architecture this machine does not run natively runs
//! through binfmt_misc: the kernel hands a foreign ELF binary to an emulator (qemu-user)
//! registered for its machine type. The registration must be enabled and carry the `F`
//! (fix binary) flag, so the emulator is opened when it is registered and works inside the
//! sandbox, whose root does not hold it. Without one a step would fail with "exec format
//! error" somewhere in its command; the build checks before its first step instead and
//! says how to register one.
//!
//! Handlers are found by the ELF machine field of their magic, whatever they are named
//! (`qemu-aarch64` by Debian's qemu-user-static, other names elsewhere).

use std::path::{Path, PathBuf};

use crate::reference::Platform;

/// Where binfmt_misc is mounted on most systems.
const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Why commands for a platform cannot run here, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("commands for {platform} cannot run on this {host} machine: {why}\nfix: {fix}")]
pub struct EmulationMissing {
    /// The platform asked for.
    pub platform: String,
    /// This machine's architecture.
    pub host: String,
    /// What is missing.
    pub why: String,
    /// How to provide it.
    pub fix: String,
}

/// The ELF machine number (`e_machine`) and byte order of an architecture's binaries.
fn elf_machine(architecture: &str) -> Option<(u16, bool)> {
    // (machine, little endian)
    Some(match architecture {
        "amd64" => (62, true),
        "386" => (3, true),
        "arm64" => (183, true),
        "arm" => (40, true),
        "ppc64le" => (21, true),
        "s390x" => (22, false),
        "riscv64" => (243, true),
        "mips64le" => (8, true),
        "loong64" => (258, true),
        _ => return None,
    })
}

/// Architectures this machine runs natively besides its own.
fn native(host: &str, architecture: &str) -> bool {
    host == architecture || (host == "amd64" && architecture == "386")
}

/// The qemu-user name of an architecture, for the fix.
fn qemu_name(architecture: &str) -> &str {
    match architecture {
        "amd64" => "x86_64",
        "386" => "i386",
        "arm64" => "aarch64",
        "mips64le" => "mips64el",
        "loong64" => "loongarch64",
        other => other,
    }
}

/// One registered handler, as its file in binfmt_misc says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Handler {
    enabled: bool,
    flags: String,
    magic: Vec<u8>,
    mask: Vec<u8>,
    interpreter: String,
}

fn parse_handler(text: &str) -> Handler {
    let hex = |s: &str| {
        (0..s.len() / 2)
            .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Vec<u8>>()
    };
    let mut h = Handler::default();
    for line in text.lines() {
        match line
            .split_once(' ')
            .map_or((line, ""), |(k, v)| (k, v.trim()))
        {
            ("enabled", _) => h.enabled = true,
            ("flags:", v) => h.flags = v.to_owned(),
            ("magic", v) => h.magic = hex(v),
            ("mask", v) => h.mask = hex(v),
            ("interpreter", v) => h.interpreter = v.to_owned(),
            _ => {}
        }
    }
    h
}

impl Handler {
    /// Whether it handles ELF executables of this machine type (64-bit or 32-bit).
    fn handles(&self, machine: u16, little_endian: bool) -> bool {
        if self.magic.len() < 20 || self.magic[..4] != *b"\x7fELF" {
            return false;
        }
        let field = if little_endian {
            machine.to_le_bytes()
        } else {
            machine.to_be_bytes()
        };
        let mask = |i: usize| self.mask.get(i).copied().unwrap_or(0xff);
        (18..20).all(|i| self.magic[i] & mask(i) == field[i - 18] & mask(i))
    }
}

/// How commands for a platform run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runs {
    /// As they are: the machine's own architecture (or one it runs natively).
    Native,
    /// Through this binfmt_misc handler (enabled, with the `F` flag).
    Emulated(String),
}

/// Check that commands for `platform` can run here: natively, or through an enabled
/// binfmt_misc handler with the `F` flag.
pub fn check(platform: &Platform) -> Result<(), EmulationMissing> {
    runs(platform).map(drop)
}

/// How commands for `platform` run here, or why they cannot.
pub fn runs(platform: &Platform) -> Result<Runs, EmulationMissing> {
    check_in(platform, &Platform::host(), Path::new(BINFMT_DIR))
}

fn check_in(platform: &Platform, host: &Platform, dir: &Path) -> Result<Runs, EmulationMissing> {
    let arch = platform.architecture();
    if platform.os() == "linux" && native(host.architecture(), arch) {
        return Ok(Runs::Native);
    }
    let missing = |why: String, fix: String| EmulationMissing {
        platform: platform.to_string(),
        host: host.to_string(),
        why,
        fix,
    };
    if platform.os() != "linux" {
        return Err(missing(
            format!("only Linux images can be built, not {}", platform.os()),
            "build for linux/ARCH".to_owned(),
        ));
    }
    let Some((machine, little_endian)) = elf_machine(arch) else {
        return Err(missing(
            format!("blumeops does not know the binaries of architecture `{arch}`"),
            "build for amd64, 386, arm64, arm, ppc64le, s390x, riscv64, mips64le or loong64"
                .to_owned(),
        ));
    };
    let qemu = qemu_name(arch);
    let register = format!(
        "install an emulator registered with the F flag, e.g. on Debian `apt-get install \
         qemu-user-static binfmt-support` (then `update-binfmts --enable qemu-{qemu}`)"
    );
    let Some(dir) = mounted(dir) else {
        return Err(missing(
            "binfmt_misc is not mounted, so no emulator can be registered".to_owned(),
            format!("mount it (`mount -t binfmt_misc binfmt_misc {BINFMT_DIR}`), and {register}"),
        ));
    };
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    if status.trim() != "enabled" {
        return Err(missing(
            "binfmt_misc is disabled".to_owned(),
            format!("`echo 1 > {BINFMT_DIR}/status`"),
        ));
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "status" || name == "register" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let handler = parse_handler(&text);
        if handler.handles(machine, little_endian) {
            if handler.enabled && handler.flags.contains('F') {
                return Ok(Runs::Emulated(name));
            }
            found.push((name, handler));
        }
    }
    match found.first() {
        None => Err(missing(
            format!("no binfmt_misc handler runs {arch} binaries"),
            register,
        )),
        Some((name, h)) if !h.enabled => Err(missing(
            format!("the binfmt_misc handler `{name}` for {arch} is disabled"),
            format!("`update-binfmts --enable {name}` (or `echo 1 > {BINFMT_DIR}/{name}`)"),
        )),
        Some((name, h)) => Err(missing(
            format!(
                "the binfmt_misc handler `{name}` ({}) lacks the F flag (flags: `{}`), so its \
                 emulator cannot be found inside a build step's root",
                h.interpreter, h.flags
            ),
            "register it again with the F (fix binary) flag, as Debian's qemu-user-static \
             does"
                .to_owned(),
        )),
    }
}

/// binfmt_misc's directory: where it is mounted, else a private mount of it (inside a
/// container, such as the docker executor's engine, /proc/sys/fs/binfmt_misc is usually
/// not mounted, while the kernel's handlers work there all the same).
fn mounted(dir: &Path) -> Option<PathBuf> {
    if dir.join("status").exists() {
        return Some(dir.to_owned());
    }
    private_mount()
}

#[cfg(target_os = "linux")]
fn private_mount() -> Option<PathBuf> {
    use std::sync::OnceLock;
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("blumeops-binfmt-{}", std::process::id()));
            std::fs::create_dir_all(&dir).ok()?;
            use nix::mount::MsFlags;
            let mounted = nix::mount::mount(
                Some("binfmt_misc"),
                &dir,
                Some("binfmt_misc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            );
            match mounted {
                Ok(()) if dir.join("status").exists() => Some(dir),
                _ => {
                    let _ = std::fs::remove_dir(&dir);
                    None
                }
            }
        })
        .clone()
}

#[cfg(not(target_os = "linux"))]
fn private_mount() -> Option<PathBuf> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn binfmt(entries: &[(&str, &str)], status: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("status"), status).unwrap();
        std::fs::write(dir.path().join("register"), "").unwrap();
        for (name, text) in entries {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn arm64() -> Platform {
        "linux/arm64".parse().unwrap()
    }

    fn amd64() -> Platform {
        "linux/amd64".parse().unwrap()
    }

    #[test]
    fn native_architectures_need_nothing() {
        let none = binfmt(&[], "enabled");
        assert_eq!(check_in(&amd64(), &amd64(), none.path()), Ok(Runs::Native));
        assert_eq!(
            check_in(&"linux/386".parse().unwrap(), &amd64(), none.path()),
            Ok(Runs::Native)
        );
    }

    #[test]
    fn an_enabled_handler_with_the_f_flag_is_found_by_its_magic() {
        let dir = binfmt(&[("some-name", QEMU_AARCH64)], "enabled");
        assert_eq!(
            check_in(&arm64(), &amd64(), dir.path()),
            Ok(Runs::Emulated("some-name".to_owned()))
        );
        // Not for another machine type.
        let err = check_in(&"linux/riscv64".parse().unwrap(), &amd64(), dir.path()).unwrap_err();
        assert!(
            err.why.contains("no binfmt_misc handler runs riscv64"),
            "{err}"
        );
        assert!(err.fix.contains("qemu-riscv64"), "{err}");
    }

    #[test]
    fn a_disabled_or_unfixed_handler_says_what_to_do() {
        let disabled = QEMU_AARCH64.replace("enabled\n", "disabled\n");
        let dir = binfmt(&[("qemu-aarch64", &disabled)], "enabled");
        let err = check_in(&arm64(), &amd64(), dir.path()).unwrap_err();
        assert!(
            err.why.contains("`qemu-aarch64` for arm64 is disabled"),
            "{err}"
        );
        assert!(
            err.fix.contains("update-binfmts --enable qemu-aarch64"),
            "{err}"
        );

        let unfixed = QEMU_AARCH64.replace("flags: POCF", "flags: OC");
        let dir = binfmt(&[("qemu-aarch64", &unfixed)], "enabled");
        let err = check_in(&arm64(), &amd64(), dir.path()).unwrap_err();
        assert!(err.why.contains("lacks the F flag"), "{err}");

        let dir = binfmt(&[("qemu-aarch64", QEMU_AARCH64)], "disabled");
        let err = check_in(&arm64(), &amd64(), dir.path()).unwrap_err();
        assert!(err.why.contains("binfmt_misc is disabled"), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("commands for linux/arm64 cannot run on this linux/amd64 machine"),
            "{text}"
        );
    }

    #[test]
    fn other_systems_and_unknown_architectures_are_refused() {
        let dir = binfmt(&[], "enabled");
        let err = check_in(&"windows/amd64".parse().unwrap(), &amd64(), dir.path()).unwrap_err();
        assert!(err.why.contains("only Linux images"), "{err}");
        let err = check_in(&"linux/sparc64".parse().unwrap(), &amd64(), dir.path()).unwrap_err();
        assert!(err.why.contains("`sparc64`"), "{err}");
    }
}
