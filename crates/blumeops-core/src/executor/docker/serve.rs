//! The helper's side of a docker-executor build (`blumeops engine -- ARGS`): read the
//! handshake from stdin, take its secrets, watch stdin for the client going away, run the
//! command, then say done and wait for the client's goodbye.

use std::io::{BufRead as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::session::{DONE_MARKER, GOODBYE, Handshake};

/// Exit code of a helper whose client went away mid-build.
pub const EXIT_CLIENT_GONE: i32 = 125;
/// How long a finished helper waits for the client to copy results and say goodbye.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(600);

static FINISHED: AtomicBool = AtomicBool::new(false);

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
    for (source, value) in handshake.secrets {
        crate::secret::provide(&source, value);
    }
    if let Some(bundle) = &handshake.ca_bundle {
        trust(bundle)?;
    }
    let (tx, goodbye) = mpsc::channel();
    std::thread::spawn(move || {
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
