//! Small helpers shared by the harness modules.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// `n` random bytes from the kernel, hex encoded (`2 * n` characters).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0_u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("failed to read /dev/urandom");
    hex::encode(buf)
}

/// A loopback port that was free a moment ago: bind port 0, read the port, drop the
/// listener. Racy by nature; callers that start a program on it retry on bind failure.
pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|l| l.local_addr())
        .expect("failed to bind a loopback port")
        .port()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The workspace root (the parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// The cargo target directory this test binary was built into
/// (`<target>/debug/deps/it-HASH` -> `<target>`), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then_some(())?;
            Some(deps.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Whether `BLUMEOPS_E2E_KEEP` asks to keep temporary directories for debugging.
pub fn keep_temp() -> bool {
    std::env::var_os("BLUMEOPS_E2E_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

#[allow(unsafe_code)]
unsafe extern "C" {
    fn atexit(f: extern "C" fn()) -> i32;
}

/// What [`at_exit`] runs, in the order given.
static AT_EXIT: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>> = std::sync::Mutex::new(Vec::new());

extern "C" fn run_at_exit() {
    let actions = AT_EXIT
        .lock()
        .map(|mut a| std::mem::take(&mut *a))
        .unwrap_or_default();
    for action in actions {
        action();
    }
}

/// Run `action` when this test process exits: for what a `static` holds (a shared daemon, a
/// shared copy of the binary), which is never dropped.
pub fn at_exit(action: impl FnOnce() + Send + 'static) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: registering a plain function to run at exit.
        #[allow(unsafe_code)]
        unsafe {
            atexit(run_at_exit);
        }
    });
    AT_EXIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(action));
}

/// A temporary directory, kept on disk when `BLUMEOPS_E2E_KEEP=1`.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("failed to create a temporary directory");
    if keep_temp() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// Whether this test process runs as root (`id -u`).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
