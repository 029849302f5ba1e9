//! The helper's side of a docker-executor build (`blumeops engine -- ARGS`): read the
//! handshake from stdin, take its secrets and early files, watch stdin for the build
//! context's arrival and for the client going away, run the command, then say done and wait
//! for the client's goodbye.
//!
//! The build context follows the handshake on stdin and is unpacked while the build already
//! runs (pulling the base, running the steps before the first copy from it): reading host
//! files waits for it ([`wait_for_context`]).

use std::io::{BufRead as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::session::{DONE_MARKER, GOODBYE, Handshake};

/// Exit code of a helper whose client went away mid-build.
pub const EXIT_CLIENT_GONE: i32 = 125;
/// Exit code of a helper that could not unpack the build context it was sent.
pub const EXIT_BAD_CONTEXT: i32 = 126;
/// How long a finished helper waits for the client to copy results and say goodbye.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(600);

static FINISHED: AtomicBool = AtomicBool::new(false);

/// Whether the build context is still on its way (set while it is).
static CONTEXT_PENDING: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static CONTEXT_ARRIVED: std::sync::Condvar = std::sync::Condvar::new();

/// Block until the build context is in place: a no-op except in an engine whose client is
/// still copying it in. Everything that reads host files calls it first.
pub fn wait_for_context() {
    let mut pending = CONTEXT_PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while *pending {
        pending = CONTEXT_ARRIVED
            .wait(pending)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

fn set_context_pending(value: bool) {
    *CONTEXT_PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    CONTEXT_ARRIVED.notify_all();
}

/// A running engine session.
pub struct Serving {
    goodbye: mpsc::Receiver<()>,
}

/// Read the handshake, check the versions, hand the secrets to the secret sources ([`crate::SecretSource`]), and start
/// watching stdin. Call before any other thread starts.
pub fn start() -> Result<Serving, String> {
    let mut stdin = std::io::BufReader::new(std::io::stdin());
    let mut line = String::new();
    match stdin.read_line(&mut line) {
        Ok(0) | Err(_) => return Err("no handshake on stdin (the client went away)".to_owned()),
        Ok(_) => {}
    }
    let handshake: Handshake = serde_json::from_str(line.trim_end())
        .map_err(|e| format!("the handshake on stdin is not valid: {e}"))?;
    let ours = env!("CARGO_PKG_VERSION");
    if handshake.client_version != ours {
        return Err(format!(
            "this engine is blumeops {ours}, the client is {}: use an engine image of the \
             client's version",
            handshake.client_version
        ));
    }
    for (source, value) in &handshake.secrets {
        crate::secret::provide(source, value.clone());
    }
    if let Some(bundle) = &handshake.ca_bundle {
        trust(bundle)?;
    }
    write_early_files(&handshake)?;
    write_skeleton(&handshake)?;
    let context_size = handshake.context_size;
    set_context_pending(context_size > 0);
    let (tx, goodbye) = mpsc::channel();
    std::thread::spawn(move || {
        if context_size > 0 {
            if let Err(e) = receive_context(&mut stdin, context_size) {
                eprintln!("error: blumeops engine: failed to unpack the build context: {e}");
                std::process::exit(EXIT_BAD_CONTEXT);
            }
            set_context_pending(false);
        }
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(n) if n > 0 && line.trim_end() != GOODBYE => continue,
                Ok(n) if n > 0 => {
                    let _ = tx.send(());
                    return;
                }
                _ => {}
            }
            // Stdin closed: the client is gone (killed, cancelled, its connection lost).
            if FINISHED.load(Ordering::SeqCst) {
                let _ = tx.send(());
            } else {
                eprintln!("blumeops engine: the client went away; stopping the build");
                std::process::exit(EXIT_CLIENT_GONE);
            }
            return;
        }
    });
    Ok(Serving { goodbye })
}

/// Unpack the `size` bytes of build context (a tar) that follow the handshake into the
/// source directory, keeping modes, owners and times; entries replace the skeleton's.
fn receive_context(stdin: &mut impl std::io::BufRead, size: u64) -> std::io::Result<()> {
    use std::io::Read as _;
    let mut frame = stdin.take(size);
    let mut archive = tar::Archive::new(&mut frame);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.unpack(super::ENGINE_SRC_DIR)?;
    // The rest of the frame (tar's end blocks), so what follows is read as lines.
    std::io::copy(&mut frame, &mut std::io::sink())?;
    Ok(())
}

/// The files the command needs before the build context arrives (the Dockerfile and its
/// `.dockerignore`), under the source directory.
fn write_early_files(handshake: &Handshake) -> Result<(), String> {
    use base64::Engine as _;
    let root = std::path::Path::new(super::ENGINE_SRC_DIR);
    for (rel, data) in &handshake.early_files {
        let rel = std::path::Path::new(rel);
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "the handshake names a file outside the source: {}",
                rel.display()
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("the handshake's {} is not base64: {e}", rel.display()))?;
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("failed to create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, bytes)
            .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The context's tree without contents, for the Dockerfile frontend's lookups; the
/// contents arrive over it (the daemon replaces each entry).
fn write_skeleton(handshake: &Handshake) -> Result<(), String> {
    let root = std::path::Path::new(super::ENGINE_SRC_DIR);
    for entry in &handshake.skeleton {
        let rel = std::path::Path::new(&entry.path);
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "the handshake names a file outside the source: {}",
                entry.path
            ));
        }
        let path = root.join(rel);
        if handshake.early_files.contains_key(&entry.path) {
            continue;
        }
        let made = match (entry.kind, &entry.target) {
            ('d', _) => std::fs::create_dir_all(&path),
            ('l', Some(target)) => std::os::unix::fs::symlink(target, &path),
            _ => std::fs::File::create(&path).map(drop),
        };
        made.map_err(|e| format!("failed to create {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Trust what the client trusts: its CA bundle where this process looks for the system's
/// (`SSL_CERT_FILE` when the image sets it, else Debian's path), before anything reads it.
fn trust(bundle: &str) -> Result<(), String> {
    let path = std::env::var_os("SSL_CERT_FILE")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || std::path::PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            std::path::PathBuf::from,
        );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("failed to create {}: {e}", parent.display()))?;
    }
    std::fs::write(&path, bundle).map_err(|e| {
        format!(
            "failed to write the client's CA certificates to {}: {e}",
            path.display()
        )
    })
}

impl Serving {
    /// Tell the client the command ended with `code`, wait for its goodbye (it copies the
    /// results first), and exit with `code`.
    pub fn finish(self, code: i32) -> ! {
        FINISHED.store(true, Ordering::SeqCst);
        let _ = std::io::stderr().flush();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{DONE_MARKER} {code}");
        let _ = out.flush();
        drop(out);
        let _ = self.goodbye.recv_timeout(GOODBYE_TIMEOUT);
        std::process::exit(code);
    }
}
