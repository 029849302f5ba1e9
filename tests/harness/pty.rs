//! Running `blumeops` on a pseudo-terminal, as a user at a terminal does, and reading the
//! screen it draws through a terminal emulator (`vt100`), so tests check what a person would
//! see rather than the bytes.

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

use crate::cli::blumeops_bin;

/// A `blumeops` run on a pseudo-terminal.
pub struct PtyRun {
    child: Child,
    master: Arc<OwnedFd>,
    screen: Arc<Mutex<vt100::Parser>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtyRun {
    /// Start `blumeops ARGS` in `cwd` with its stdin, stdout and stderr on a new terminal of
    /// `cols` × `rows`, `TERM=xterm-256color`, `CI` and `NO_COLOR` unset, and `envs` added.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)], cwd: &Path, cols: u16, rows: u16) -> Self {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)
            .expect("failed to open a pseudo-terminal");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        let open_slave = || -> OwnedFd {
            rustix::fs::open(
                name.as_c_str(),
                OFlags::RDWR | OFlags::NOCTTY,
                Mode::empty(),
            )
            .expect("failed to open the terminal's slave side")
        };
        rustix::termios::tcsetwinsize(&master, winsize(cols, rows)).expect("set the size");
        let mut command = Command::new(blumeops_bin());
        command
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::from(open_slave()))
            .stdout(Stdio::from(open_slave()))
            .stderr(Stdio::from(open_slave()))
            .env("TERM", "xterm-256color")
            .env_remove("CI")
            .env_remove("NO_COLOR")
            .env_remove("COLUMNS")
            .env_remove("LINES");
        for name in crate::cli::CLEARED_ENV {
            command.env_remove(name);
        }
        command.envs(envs.iter().copied());
        let child = command.spawn().expect("failed to start blumeops");
        let master = Arc::new(master);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (reader, parser, bytes) = (master.clone(), screen.clone(), raw.clone());
        std::thread::spawn(move || {
            let mut file = std::fs::File::from(reader.try_clone().expect("dup the master"));
            let mut buf = [0u8; 8192];
            // Ends with EIO once every slave descriptor is closed (the program exited).
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                parser.lock().unwrap().process(&buf[..n]);
                bytes.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            child,
            master,
            screen,
            raw,
        }
    }

    /// The screen's text now, one string per row (trailing blanks trimmed).
    pub fn screen(&self) -> Vec<String> {
        let parser = self.screen.lock().unwrap();
        let (_, cols) = parser.screen().size();
        parser
            .screen()
            .rows(0, cols)
            .map(|r| r.trim_end().to_owned())
            .collect()
    }

    /// Everything written to the terminal so far.
    pub fn raw(&self) -> Vec<u8> {
        self.raw.lock().unwrap().clone()
    }

    /// Wait until `check` holds for the screen; the screen it held for, or a panic with the
    /// last screen after `timeout`.
    #[track_caller]
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what}:\n{}",
                screen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resize the terminal (as a terminal window does).
    pub fn resize(&self, cols: u16, rows: u16) {
        rustix::termios::tcsetwinsize(&*self.master, winsize(cols, rows)).expect("resize");
        self.screen
            .lock()
            .unwrap()
            .screen_mut()
            .set_size(rows, cols);
    }

    /// Send a signal to the program (SIGINT is what Ctrl-C sends).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).expect("failed to signal blumeops");
    }

    /// Wait for the program to exit (killing it after `timeout`), then for its last output.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "blumeops did not exit within {timeout:?}; screen:\n{}",
                    self.screen().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader has what was written before the exit once the screen stops changing.
        let mut last = self.raw().len();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.raw().len();
            if now == last {
                break;
            }
            last = now;
        }
        status
    }
}

impl Drop for PtyRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
