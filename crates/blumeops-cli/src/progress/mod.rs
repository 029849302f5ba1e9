//! Progress on stderr: a live view on a terminal (`tty`), or plain lines (`plain`) that carry
//! no terminal escape sequences, for logs and CI.
//!
//! - plain: `[N/M] description` when a step starts, `[N]  line` / `[N]! line` for each line
//!   of its stdout / stderr, `[N] done in 1.23s: detail` when it produced something, the
//!   push lines, and a summary.
//! - tty: finished steps scroll up as `done [N/M] description (1.2s)`; below them one line
//!   per running step with its elapsed time and last output line, redrawn in place; a
//!   summary at the end. When a step fails, its buffered output tail is printed as plain
//!   lines. Every line of output is also in the step's log file (written by the sandbox).

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal as _, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use blumeops_core::{CacheStatus, Digest, Event, ProgressFn, TAIL_LINES};

use crate::cli::ProgressArg;

/// How the live view is redrawn while nothing happens (elapsed times tick).
const TICK: Duration = Duration::from_millis(200);
/// Width assumed when the terminal does not say.
const DEFAULT_WIDTH: usize = 100;

/// The resolved display mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live view with cursor movement.
    Tty,
    /// Line by line, no escape sequences.
    Plain,
}

impl Mode {
    /// `auto` becomes `tty` when stderr is a terminal, `CI` is unset and `TERM` is not `dumb`.
    pub fn resolve(arg: ProgressArg) -> Self {
        let term = std::env::var("TERM").ok();
        Self::resolve_with(
            arg,
            std::io::stderr().is_terminal(),
            std::env::var_os("CI").is_some(),
            term.as_deref() == Some("dumb"),
        )
    }

    fn resolve_with(arg: ProgressArg, terminal: bool, ci: bool, dumb: bool) -> Self {
        match arg {
            ProgressArg::Tty => Self::Tty,
            ProgressArg::Plain => Self::Plain,
            ProgressArg::Auto if terminal && !ci && !dumb => Self::Tty,
            ProgressArg::Auto => Self::Plain,
        }
    }
}

/// One running step, as the live view shows it.
struct Running {
    total: usize,
    description: String,
    started: Instant,
    /// Last lines of output (stream is stderr, line), for the failure report.
    tail: VecDeque<(bool, String)>,
}

struct State {
    mode: Mode,
    out: Box<dyn Write + Send>,
    started: Instant,
    steps_done: usize,
    /// Steps that ran (not taken from the step cache).
    steps_ran: usize,
    running: BTreeMap<usize, Running>,
    /// Live lines currently on screen below the scrolled output.
    drawn: usize,
    width: usize,
    finished: bool,
}

/// The progress display of one command: hand [`Progress::callback`] to the engine, call
/// [`Progress::finish`] or [`Progress::fail`] at the end.
#[derive(Clone)]
pub struct Progress {
    state: Arc<Mutex<State>>,
}

impl Progress {
    /// A display writing to stderr.
    pub fn new(mode: Mode) -> Self {
        let progress = Self::with_writer(mode, Box::new(std::io::stderr()), terminal_width());
        if mode == Mode::Tty {
            progress.start_ticker();
        }
        progress
    }

    fn with_writer(mode: Mode, out: Box<dyn Write + Send>, width: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                mode,
                out,
                started: Instant::now(),
                steps_done: 0,
                steps_ran: 0,
                running: BTreeMap::new(),
                drawn: 0,
                width,
                finished: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while printing leaves nothing inconsistent that matters: keep printing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Redraw the live view now and then so elapsed times move.
    fn start_ticker(&self) {
        let weak = Arc::downgrade(&self.state);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(TICK);
                let Some(state) = weak.upgrade() else { break };
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.finished {
                    break;
                }
                if !state.running.is_empty() {
                    state.redraw(&[]);
                }
            }
        });
    }

    /// The callback for `EngineOptions::progress`.
    pub fn callback(&self) -> ProgressFn {
        let progress = self.clone();
        Arc::new(move |event: &Event| progress.on_event(event))
    }

    fn on_event(&self, event: &Event) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        if let Event::StepFinished { cache, .. } = event {
            state.steps_done += 1;
            if let CacheStatus::Ran { .. } = cache {
                state.steps_ran += 1;
            }
        }
        match state.mode {
            Mode::Plain => {
                if let Some(line) = plain_line(event) {
                    state.print(&line);
                }
            }
            Mode::Tty => state.tty_event(event),
        }
    }

    /// How many steps ran so far (rather than coming from the step cache).
    pub fn steps_ran(&self) -> usize {
        self.lock().steps_ran
    }

    /// Clear the live view and print the summary: steps, time and the image digest.
    pub fn finish(&self, digest: Option<&Digest>) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        let line = summary_line(state.steps_done, state.started.elapsed(), digest);
        state.above(&[line]);
        state.clear_live();
        state.finished = true;
    }

    /// Clear the live view; in tty mode print the output tail of every step still running
    /// (the one that failed) as plain lines.
    pub fn fail(&self) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        let mut lines = Vec::new();
        if state.mode == Mode::Tty {
            for (index, step) in &state.running {
                lines.push(format!(
                    "[{index}/{}] {} (failed after {:.1}s)",
                    step.total,
                    sanitize(&step.description),
                    step.started.elapsed().as_secs_f64()
                ));
                for (stderr, line) in &step.tail {
                    lines.push(output_line(*index, *stderr, line));
                }
            }
        }
        state.above(&lines);
        state.clear_live();
        state.finished = true;
    }
}

impl State {
    fn print(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    /// Print lines: above the live view in tty mode, plainly otherwise.
    fn above(&mut self, lines: &[String]) {
        match self.mode {
            Mode::Tty => self.redraw(lines),
            Mode::Plain => lines.iter().for_each(|l| self.print(l)),
        }
    }

    fn tty_event(&mut self, event: &Event) {
        match event {
            Event::StepStarted {
                index,
                total,
                description,
            } => {
                self.running.insert(
                    *index,
                    Running {
                        total: *total,
                        description: description.clone(),
                        started: Instant::now(),
                        tail: VecDeque::new(),
                    },
                );
                self.redraw(&[]);
            }
            Event::StepFinished {
                index,
                elapsed,
                cache,
                ..
            } => {
                let line = self.running.remove(index).map(|step| {
                    let (mark, why) = cache_words(cache);
                    format!(
                        "{mark} [{index}/{}] {} ({:.1}s){why}",
                        step.total,
                        sanitize(&step.description),
                        elapsed.as_secs_f64()
                    )
                });
                self.redraw(line.as_slice());
            }
            Event::StepOutput {
                index,
                stderr,
                line,
            } => {
                if let Some(step) = self.running.get_mut(index) {
                    if step.tail.len() == TAIL_LINES {
                        step.tail.pop_front();
                    }
                    step.tail.push_back((*stderr, line.clone()));
                }
                // The ticker shows the new last line soon enough: no redraw per line.
            }
            other => {
                let lines: Vec<String> = plain_line(other).into_iter().collect();
                self.redraw(&lines);
            }
        }
    }

    /// Move up over the live lines, print `above` (scrolling), redraw the live lines.
    fn redraw(&mut self, above: &[String]) {
        let mut buf = String::new();
        if self.drawn > 0 {
            buf.push_str(&format!("\x1b[{}A", self.drawn));
        }
        buf.push_str("\r\x1b[J");
        for line in above {
            buf.push_str(line);
            buf.push('\n');
        }
        let live = live_lines(&self.running, self.width);
        for line in &live {
            buf.push_str(line);
            buf.push('\n');
        }
        self.drawn = live.len();
        let _ = self.out.write_all(buf.as_bytes());
        let _ = self.out.flush();
    }

    fn clear_live(&mut self) {
        if self.mode == Mode::Tty && self.drawn > 0 {
            let _ = write!(self.out, "\x1b[{}A\r\x1b[J", self.drawn);
            let _ = self.out.flush();
        }
        self.drawn = 0;
    }
}

/// One line per running step: `[N/M] description 1.2s | last output line`, cut to `width`.
fn live_lines(running: &BTreeMap<usize, Running>, width: usize) -> Vec<String> {
    running
        .iter()
        .map(|(index, step)| {
            let mut line = format!(
                "  [{index}/{}] {} {:.1}s",
                step.total,
                sanitize(&step.description),
                step.started.elapsed().as_secs_f64()
            );
            if let Some((_, last)) = step.tail.back() {
                line.push_str(" | ");
                line.push_str(sanitize(last).trim());
            }
            truncate(&line, width.saturating_sub(1).max(20))
        })
        .collect()
}

fn truncate(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `[N]  line` for stdout, `[N]! line` for stderr.
fn output_line(index: usize, stderr: bool, line: &str) -> String {
    let stream = if stderr { "!" } else { " " };
    format!("[{index}]{stream} {}", sanitize(line))
}

/// How a finished step is marked (`cached`, `ran` or `done`) and, for a step that ran,
/// why (` (ran: files changed: ...)`).
fn cache_words(cache: &CacheStatus) -> (&'static str, String) {
    match cache {
        CacheStatus::Hit => ("cached", String::new()),
        CacheStatus::Ran { reason } => ("ran", format!(" [{}]", sanitize(reason))),
        _ => ("done", String::new()),
    }
}

/// The plain-mode line for an event, if it prints one. Never contains an escape byte.
pub fn plain_line(event: &Event) -> Option<String> {
    let line = match event {
        Event::StepStarted {
            index,
            total,
            description,
        } => format!("[{index}/{total}] {description}"),
        Event::StepFinished {
            index,
            elapsed,
            detail,
            cache,
        } => {
            let (mark, why) = cache_words(cache);
            // Config-only steps have nothing to add; every cached or re-run step says so.
            if detail.is_none() && why.is_empty() && !matches!(cache, CacheStatus::Hit) {
                return None;
            }
            let detail = detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            format!(
                "[{index}] {mark} in {:.2}s{detail}{why}",
                elapsed.as_secs_f64()
            )
        }
        Event::StepOutput {
            index,
            stderr,
            line,
        } => return Some(output_line(*index, *stderr, line)),
        Event::PushStarted { target } => format!("pushing {target}"),
        Event::PushFinished { report, elapsed } => {
            if report.unchanged {
                format!(
                    "tag already points at {}: nothing pushed ({:.2}s)",
                    report.digest,
                    elapsed.as_secs_f64()
                )
            } else {
                format!(
                    "pushed {} in {:.2}s: {} blobs uploaded ({} bytes), {} already present",
                    report.digest,
                    elapsed.as_secs_f64(),
                    report.blobs_uploaded,
                    report.bytes_uploaded,
                    report.blobs_skipped
                )
            }
        }
        _ => return None,
    };
    Some(sanitize(&line))
}

/// `built 8 steps in 1.2s: sha256:...`
fn summary_line(steps: usize, elapsed: Duration, digest: Option<&Digest>) -> String {
    let mut line = format!(
        "built {steps} step{} in {:.1}s",
        if steps == 1 { "" } else { "s" },
        elapsed.as_secs_f64()
    );
    if let Some(d) = digest {
        line.push_str(&format!(": {d}"));
    }
    line
}

/// `text` without terminal control sequences: ANSI CSI/OSC sequences are dropped, other
/// control characters (but tab) become `?`.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.peek() {
                // CSI: parameters and intermediates, then one final byte in @..~.
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ST (ESC \).
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                // Two-character sequences (ESC c, ESC 7, ...).
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\t' => out.push('\t'),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// Columns of the terminal on stderr, else `COLUMNS`, else [`DEFAULT_WIDTH`].
fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stderr())
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|w| *w > 0)
        .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
        .unwrap_or(DEFAULT_WIDTH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blumeops_core::PushReport;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn events() -> Vec<Event> {
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        vec![
            Event::StepStarted {
                index: 1,
                total: 2,
                description: "from busybox".into(),
            },
            Event::StepFinished {
                index: 1,
                elapsed: Duration::from_millis(1500),
                detail: Some(digest.to_string()),
                cache: CacheStatus::Config,
            },
            Event::StepStarted {
                index: 2,
                total: 2,
                description: "with_exec sh -c 'printf \"\\033[31mred\"'".into(),
            },
            Event::StepOutput {
                index: 2,
                stderr: false,
                line: "\x1b[31mred\x1b[0m text\x1b]0;title\x07!".into(),
            },
            Event::StepOutput {
                index: 2,
                stderr: true,
                line: "warning\r".into(),
            },
            Event::StepFinished {
                index: 2,
                elapsed: Duration::from_millis(10),
                detail: None,
                // No line for it in plain mode (as for a config-only step).
                cache: CacheStatus::Config,
            },
            Event::PushStarted {
                target: "127.0.0.1:5000/blumeops/hello:v1".into(),
            },
            Event::PushFinished {
                report: PushReport {
                    digest,
                    unchanged: false,
                    blobs_uploaded: 3,
                    blobs_skipped: 0,
                    bytes_uploaded: 100,
                },
                elapsed: Duration::from_millis(60),
            },
        ]
    }

    #[test]
    fn plain_lines_have_no_escape_bytes() {
        let lines: Vec<String> = events().iter().filter_map(plain_line).collect();
        for line in &lines {
            assert!(!line.contains('\x1b'), "{line:?}");
            assert!(
                !line.chars().any(|c| c.is_control() && c != '\t'),
                "{line:?}"
            );
        }
        assert_eq!(lines[0], "[1/2] from busybox");
        assert!(lines[1].starts_with("[1] done in 1.50s: sha256:aaaa"));
        assert_eq!(lines[3], "[2]  red text!");
        assert_eq!(lines[4], "[2]! warning?");
        assert!(lines[5].starts_with("pushing 127.0.0.1:5000/blumeops/hello:v1"));
        assert!(lines[6].starts_with("pushed sha256:aaaa"));
    }

    #[test]
    fn finished_steps_say_whether_they_were_cached_and_why_they_ran() {
        let finished = |cache| Event::StepFinished {
            index: 3,
            elapsed: Duration::from_millis(250),
            detail: Some("layer sha256:bbbb (10 bytes)".into()),
            cache,
        };
        assert_eq!(
            plain_line(&finished(CacheStatus::Hit)).unwrap(),
            "[3] cached in 0.25s: layer sha256:bbbb (10 bytes)"
        );
        // A cached step that added no layer (a WORKDIR that exists) still says it was cached.
        let no_layer = Event::StepFinished {
            index: 4,
            elapsed: Duration::from_millis(1),
            detail: None,
            cache: CacheStatus::Hit,
        };
        assert_eq!(plain_line(&no_layer).unwrap(), "[4] cached in 0.00s");
        assert_eq!(
            plain_line(&finished(CacheStatus::Ran {
                reason: "files changed: app/main.go (changed)".into()
            }))
            .unwrap(),
            "[3] ran in 0.25s: layer sha256:bbbb (10 bytes) [files changed: app/main.go (changed)]"
        );
    }

    #[test]
    fn plain_mode_output_has_no_escape_bytes() {
        let buffer = Buffer::default();
        let progress = Progress::with_writer(Mode::Plain, Box::new(buffer.clone()), 80);
        let callback = progress.callback();
        for event in events() {
            callback(&event);
        }
        progress.finish(None);
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(!out.contains('\x1b'), "{out:?}");
        assert!(out.contains("[1/2] from busybox\n"), "{out}");
        assert!(out.ends_with("built 2 steps in 0.0s\n") || out.contains("built 2 steps in"));
    }

    #[test]
    fn tty_mode_shows_running_steps_and_the_failed_tail() {
        let buffer = Buffer::default();
        let progress = Progress::with_writer(Mode::Tty, Box::new(buffer.clone()), 40);
        let callback = progress.callback();
        for event in &events()[..5] {
            callback(event);
        }
        {
            let state = progress.lock();
            let live = live_lines(&state.running, 40);
            assert_eq!(live.len(), 1);
            assert!(live[0].starts_with("  [2/2] with_exec"), "{live:?}");
            assert!(live[0].chars().count() <= 39, "{live:?}");
        }
        progress.fail();
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains("done [1/2] from busybox (1.5s)\n"), "{out:?}");
        assert!(out.contains("[2]  red text!\n[2]! warning?\n"), "{out:?}");
        // After a failure nothing more is drawn.
        let len = out.len();
        callback(&events()[0]);
        assert_eq!(buffer.0.lock().unwrap().len(), len);
    }

    #[test]
    fn auto_mode() {
        use ProgressArg::{Auto, Plain, Tty};
        assert_eq!(Mode::resolve_with(Auto, true, false, false), Mode::Tty);
        assert_eq!(Mode::resolve_with(Auto, true, true, false), Mode::Plain);
        assert_eq!(Mode::resolve_with(Auto, false, false, false), Mode::Plain);
        assert_eq!(Mode::resolve_with(Auto, true, false, true), Mode::Plain);
        assert_eq!(Mode::resolve_with(Tty, false, true, true), Mode::Tty);
        assert_eq!(Mode::resolve_with(Plain, true, false, false), Mode::Plain);
    }

    #[test]
    fn sanitize_strips_sequences() {
        assert_eq!(sanitize("a\x1b[1;32mb\x1b[0mc"), "abc");
        assert_eq!(sanitize("x\x1b]8;;http://e\x1b\\y"), "xy");
        assert_eq!(sanitize("tab\there\x07"), "tab\there?");
        assert_eq!(sanitize("ünï"), "ünï");
    }
}
