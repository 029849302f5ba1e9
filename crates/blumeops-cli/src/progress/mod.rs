//! Progress on stderr, in one of three modes:
//!
//! - `tty`: finished steps scroll up as one line each (`cached [2/9] …`); below them each
//!   running step with its elapsed time and the last lines of its output, grouped under
//!   stage names when several stages run, redrawn in place ([`view`]); a summary at the
//!   end. When a step fails, its buffered output tail is printed as plain lines.
//! - `plain`: `[N/M] description` when a step starts, `[N]  line` / `[N]! line` for each
//!   line of its stdout / stderr, `[N] ran in 1.23s: detail [reason]` when it finishes, the
//!   pull and push lines, and the summary. No terminal escape sequences.
//! - `json`: one object per line ([`json`]).
//!
//! Every line of a step's output is also in the step's log file (written by the sandbox).

mod json;
mod text;
mod view;

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal as _, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use blumeops_core::{CacheStatus, Digest, Event, ProgressFn, TAIL_LINES};

use crate::cli::ProgressArg;
use crate::commands::cache::human;
pub use text::sanitize;
use view::{Colors, Running, Screen};

/// How the live view is redrawn while nothing happens (elapsed times tick, a resized
/// terminal is measured again).
const TICK: Duration = Duration::from_millis(200);
/// Width and height assumed when the terminal does not say.
const DEFAULT_SIZE: (usize, usize) = (100, 40);
/// Output lines under each running step, unless `BLUMEOPS_PROGRESS_LINES` says otherwise.
const DEFAULT_TAIL_LINES: usize = 6;
/// The variable that sets how many output lines the live view shows per step.
pub const TAIL_LINES_VAR: &str = "BLUMEOPS_PROGRESS_LINES";

/// The resolved display mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live view with cursor movement.
    Tty,
    /// Line by line, no escape sequences.
    Plain,
    /// One JSON object per line.
    Json,
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
            ProgressArg::Json => Self::Json,
            ProgressArg::Auto if terminal && !ci && !dumb => Self::Tty,
            ProgressArg::Auto => Self::Plain,
        }
    }

    /// The `--progress` value that asks for this mode.
    pub fn arg(self) -> &'static str {
        match self {
            Self::Tty => "tty",
            Self::Plain => "plain",
            Self::Json => "json",
        }
    }
}

/// Totals for the summary.
#[derive(Default)]
struct Totals {
    steps: usize,
    ran: usize,
    cached: usize,
    blobs_pulled: u64,
    bytes_pulled: u64,
    blobs_pushed: usize,
    blobs_present: usize,
    bytes_pushed: u64,
    /// From the first step's start to the last step's end.
    build: Option<(Instant, Instant)>,
    push: Duration,
    /// Whether steps of more than one stage were seen.
    stages: Option<usize>,
    several_stages: bool,
}

/// How the terminal's size is learned (measured on every redraw, so a resize shows).
type SizeFn = Box<dyn Fn() -> (usize, usize) + Send>;

struct State {
    mode: Mode,
    out: Box<dyn Write + Send>,
    size: SizeFn,
    colors: Colors,
    tail_lines: usize,
    started: Instant,
    totals: Totals,
    running: BTreeMap<usize, Running>,
    /// The push under way: (target, blobs done, of how many, bytes sent, since when).
    pushing: Option<(String, usize, usize, u64, Instant)>,
    /// Live lines currently on screen below the scrolled output.
    drawn: usize,
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
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        let tail_lines = std::env::var(TAIL_LINES_VAR)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_TAIL_LINES);
        let progress = Self::with_writer(
            mode,
            Box::new(std::io::stderr()),
            Box::new(terminal_size),
            Colors(mode == Mode::Tty && !no_color && !dumb),
            tail_lines,
        );
        if mode == Mode::Tty {
            progress.start_ticker();
        }
        progress
    }

    fn with_writer(
        mode: Mode,
        out: Box<dyn Write + Send>,
        size: SizeFn,
        colors: Colors,
        tail_lines: usize,
    ) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                mode,
                out,
                size,
                colors,
                tail_lines,
                started: Instant::now(),
                totals: Totals::default(),
                running: BTreeMap::new(),
                pushing: None,
                drawn: 0,
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
                if !state.running.is_empty() || state.pushing.is_some() {
                    state.redraw(&[]);
                }
            }
        });
    }

    /// On Ctrl-C: clear the live view, say so, and exit 130 (the live view never leaves a
    /// half-drawn screen). For commands that have nothing else to clean up.
    pub fn exit_on_interrupt(&self) {
        let progress = self.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                progress.interrupted();
                std::process::exit(130);
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
        state.count(event);
        match state.mode {
            Mode::Plain => {
                if let Some(line) = plain_line(event) {
                    state.print(&line);
                }
            }
            Mode::Json => {
                if let Some(e) = json::from_event(event) {
                    let line = json::render(state.started.elapsed(), e);
                    state.print(&line);
                }
            }
            Mode::Tty => state.tty_event(event),
        }
    }

    /// A line of the docker executor's engine's stderr: an event of the JSON schema is shown
    /// in this display's mode (`Some` with the engine's result, if it was that); other text
    /// passes through unchanged.
    pub fn engine_line(&self, line: &str) -> Option<EngineResult> {
        match json::parse(line) {
            Some(json::Line {
                event:
                    json::JsonEvent::Result {
                        ok, digest, error, ..
                    },
                ..
            }) => Some(EngineResult { ok, digest, error }),
            Some(parsed) => {
                if let Some(event) = json::to_event(&parsed.event) {
                    self.on_event(&event);
                }
                None
            }
            None => {
                let mut state = self.lock();
                let lines = [sanitize(line.trim_end_matches(['\n', '\r']))];
                state.above(&lines);
                None
            }
        }
    }

    /// How many steps ran so far (rather than coming from the step cache).
    pub fn steps_ran(&self) -> usize {
        self.lock().totals.ran
    }

    /// Clear the live view and print the summary: steps, time, bytes and the digest (in
    /// JSON mode, the `result` line).
    pub fn finish(&self, digest: Option<&Digest>) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        if state.mode == Mode::Json {
            let result = state.result(true, digest, None);
            state.print(&result);
        } else {
            let lines = summary(&state.totals, state.started.elapsed(), digest);
            state.above(&lines);
            state.clear_live();
        }
        state.finished = true;
    }

    /// Clear the live view; in tty mode print the output tail of every step still running
    /// (the one that failed) as plain lines; in JSON mode, the `result` line with `error`.
    pub fn fail(&self, error: &str) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        match state.mode {
            Mode::Tty => {
                let mut lines = Vec::new();
                let (width, _) = (state.size)();
                for (index, step) in &state.running {
                    // One line: the error message that follows names the whole command.
                    let title = format!(
                        "failed [{index}/{}] {} (after {:.1}s)",
                        step.total,
                        sanitize(&step.description),
                        step.started.elapsed().as_secs_f64()
                    );
                    lines.push(
                        state
                            .colors
                            .red(&text::elide_middle(&title, width.saturating_sub(1))),
                    );
                    for (stderr, line) in &step.tail {
                        lines.push(output_line(*index, *stderr, line));
                    }
                }
                state.above(&lines);
                state.clear_live();
            }
            Mode::Plain => {}
            Mode::Json => {
                let result = state.result(false, None, Some(error));
                state.print(&result);
            }
        }
        state.finished = true;
    }

    /// Ctrl-C: clear the live view and say so (nothing more is drawn).
    pub fn interrupted(&self) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        match state.mode {
            Mode::Json => {
                let result = state.result(false, None, Some("interrupted"));
                state.print(&result);
            }
            _ => {
                state.above(&["interrupted".to_owned()]);
                state.clear_live();
            }
        }
        state.finished = true;
    }
}

/// What the docker executor's engine reported as its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineResult {
    pub ok: bool,
    pub digest: Option<String>,
    pub error: Option<String>,
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
            Mode::Plain | Mode::Json => lines.iter().for_each(|l| self.print(l)),
        }
    }

    fn count(&mut self, event: &Event) {
        let t = &mut self.totals;
        match event {
            Event::StepStarted { stage, .. } => {
                let now = Instant::now();
                t.build = Some(t.build.map_or((now, now), |(start, _)| (start, now)));
                if t.stages.is_some_and(|s| s != *stage) {
                    t.several_stages = true;
                }
                t.stages = Some(*stage);
            }
            Event::StepFinished { cache, .. } => {
                t.steps += 1;
                match cache {
                    CacheStatus::Ran { .. } => t.ran += 1,
                    CacheStatus::Hit | CacheStatus::Imported => t.cached += 1,
                    _ => {}
                }
                if let Some((start, _)) = t.build {
                    t.build = Some((start, Instant::now()));
                }
            }
            Event::Pulled {
                blobs_fetched,
                bytes_fetched,
                ..
            } => {
                t.blobs_pulled += blobs_fetched;
                t.bytes_pulled += bytes_fetched;
            }
            Event::PushFinished { report, elapsed } => {
                t.blobs_pushed += report.blobs_uploaded;
                t.blobs_present += report.blobs_skipped;
                t.bytes_pushed += report.bytes_uploaded;
                t.push += *elapsed;
            }
            _ => {}
        }
    }

    fn result(&self, ok: bool, digest: Option<&Digest>, error: Option<&str>) -> String {
        let t = &self.totals;
        json::render(
            self.started.elapsed(),
            json::JsonEvent::Result {
                ok,
                digest: digest.map(ToString::to_string),
                error: error.map(str::to_owned),
                steps: t.steps,
                ran: t.ran,
                cached: t.cached,
                seconds: self.started.elapsed().as_secs_f64(),
            },
        )
    }

    fn tty_event(&mut self, event: &Event) {
        match event {
            Event::StepStarted {
                index,
                total,
                stage,
                stage_name,
                description,
                ..
            } => {
                self.running.insert(
                    *index,
                    Running {
                        total: *total,
                        stage: *stage,
                        stage_name: stage_name.clone(),
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
                let colors = self.colors;
                let (width, _) = (self.size)();
                let line = self.running.remove(index).map(|step| {
                    let (mark, why) = cache_words(cache);
                    finished_line(
                        mark,
                        &format!("[{index}/{}]", step.total),
                        &sanitize(&step.description),
                        &format!("({:.1}s)", elapsed.as_secs_f64()),
                        &why,
                        width.saturating_sub(1),
                        |m| match cache {
                            CacheStatus::Hit | CacheStatus::Imported => colors.cyan(m),
                            _ => colors.green(m),
                        },
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
                // The ticker shows new lines soon enough: no redraw per line.
            }
            Event::PushStarted { target } => {
                self.pushing = Some((target.clone(), 0, 0, 0, Instant::now()));
                let lines: Vec<String> = plain_line(event).into_iter().collect();
                self.redraw(&lines);
            }
            Event::PushProgress {
                done,
                total,
                bytes_sent,
                ..
            } => {
                if let Some(p) = self.pushing.as_mut() {
                    p.1 = *done;
                    p.2 = *total;
                    p.3 += bytes_sent;
                }
                self.redraw(&[]);
            }
            other => {
                if matches!(other, Event::PushFinished { .. }) {
                    self.pushing = None;
                }
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
        let (width, height) = (self.size)();
        let live = view::render(
            &self.running,
            &Screen {
                width,
                height,
                tail_lines: self.tail_lines,
                stages: self.totals.several_stages,
                colors: self.colors,
            },
        );
        let push = self
            .pushing
            .as_ref()
            .map(|(target, done, total, bytes, since)| {
                self.colors.dim(&text::truncate(
                    &format!(
                        "  pushing {}: {done}/{total} blobs, {} sent {:.1}s",
                        sanitize(target),
                        human(*bytes),
                        since.elapsed().as_secs_f64()
                    ),
                    width.saturating_sub(1),
                ))
            });
        for line in live.iter().chain(&push) {
            buf.push_str(line);
            buf.push('\n');
        }
        self.drawn = live.len() + usize::from(push.is_some());
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

/// `[N]  line` for stdout, `[N]! line` for stderr.
fn output_line(index: usize, stderr: bool, line: &str) -> String {
    let stream = if stderr { "!" } else { " " };
    format!("[{index}]{stream} {}", sanitize(line))
}

/// How a finished step is marked (`cached`, `ran` or `done`) and, for a step that ran,
/// why (` [files changed: ...]`).
fn cache_words(cache: &CacheStatus) -> (&'static str, String) {
    match cache {
        CacheStatus::Hit => ("cached", String::new()),
        CacheStatus::Imported => ("cached (registry)", String::new()),
        CacheStatus::Ran { reason } => ("ran", format!(" [{}]", sanitize(reason))),
        _ => ("done", String::new()),
    }
}

/// `ran [2/9] with_exec go b…/app (1.2s) [new step]` in `width` columns: the description
/// gives way first, then the end of the reason; the mark is painted by `paint`.
fn finished_line(
    mark: &str,
    number: &str,
    description: &str,
    elapsed: &str,
    why: &str,
    width: usize,
    paint: impl Fn(&str) -> String,
) -> String {
    const MIN_DESCRIPTION: usize = 12;
    let fixed = text::width(mark) + number.len() + elapsed.len() + 3;
    let why = text::truncate(why, width.saturating_sub(fixed + MIN_DESCRIPTION));
    let room = width
        .saturating_sub(fixed + text::width(&why))
        .max(MIN_DESCRIPTION);
    let description = text::elide_middle(description, room);
    let rest = format!(" {number} {description} {elapsed}{why}");
    if text::width(mark) + text::width(&rest) > width {
        // A terminal too narrow even for that: cut the plain line, never wrap it.
        return text::truncate(&format!("{mark}{rest}"), width);
    }
    format!("{}{rest}", paint(mark))
}

/// The plain-mode line for an event, if it prints one. Never contains an escape byte.
pub fn plain_line(event: &Event) -> Option<String> {
    let line = match event {
        Event::StepStarted {
            index,
            total,
            description,
            platform,
            ..
        } => match platform {
            Some(platform) => format!("[{index}/{total}] {platform}: {description}"),
            None => format!("[{index}/{total}] {description}"),
        },
        Event::StepFinished {
            index,
            elapsed,
            detail,
            cache,
        } => {
            let (mark, why) = cache_words(cache);
            // Config-only steps have nothing to add; every cached or re-run step says so.
            if detail.is_none()
                && why.is_empty()
                && !matches!(cache, CacheStatus::Hit | CacheStatus::Imported)
            {
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
        Event::Pulled {
            index,
            reference,
            blobs_fetched,
            bytes_fetched,
            mirror,
            ..
        } if *blobs_fetched > 0 || mirror.is_some() => {
            let via = mirror
                .as_deref()
                .map(|m| format!(" via {m}"))
                .unwrap_or_default();
            if *blobs_fetched == 0 {
                format!("[{index}] pulled {reference}{via}: nothing new (the cache had every blob)")
            } else {
                format!(
                    "[{index}] pulled {reference}{via}: {} ({blobs_fetched} blob{})",
                    human(*bytes_fetched),
                    plural(*blobs_fetched as usize)
                )
            }
        }
        Event::MirrorFailed {
            index,
            reference,
            mirror,
            error,
        } => format!("[{index}] mirror {mirror} did not serve {reference}: {error}"),
        Event::PushStarted { target } => format!("pushing {target}"),
        Event::PushProgress {
            done,
            total,
            uploaded,
            bytes_sent,
        } => format!(
            "pushed blob {done}/{total} ({})",
            if *uploaded {
                format!("{} sent", human(*bytes_sent))
            } else {
                "already there".to_owned()
            }
        ),
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
        Event::Warning { message } => format!("warning: {message}"),
        Event::Note { message } => message.clone(),
        Event::RegistryCacheExported {
            repository,
            steps_exported,
            steps_present,
            volumes_exported,
            bytes_uploaded,
            elapsed,
        } => format!(
            "registry cache {repository}: {steps_exported} step{} exported ({steps_present} \
             there already), {volumes_exported} volume{}, {} uploaded in {:.2}s",
            plural(*steps_exported),
            plural(*volumes_exported),
            human(*bytes_uploaded),
            elapsed.as_secs_f64()
        ),
        _ => return None,
    };
    Some(sanitize(&line))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `built 8 steps in 1.2s (3 ran, 5 cached): sha256:...`, then where the time and bytes
/// went: `  build 1.0s, push 0.2s; pulled 3.1 MiB (2 blobs); pushed 1.0 KiB (1 blob, 2
/// already there)`.
fn summary(t: &Totals, elapsed: Duration, digest: Option<&Digest>) -> Vec<String> {
    let mut first = format!(
        "built {} step{} in {:.1}s ({} ran, {} cached)",
        t.steps,
        plural(t.steps),
        elapsed.as_secs_f64(),
        t.ran,
        t.cached
    );
    if let Some(d) = digest {
        first.push_str(&format!(": {d}"));
    }
    let mut phases = Vec::new();
    if let Some((start, end)) = t.build {
        phases.push(format!(
            "build {:.1}s",
            end.duration_since(start).as_secs_f64()
        ));
    }
    if !t.push.is_zero() {
        phases.push(format!("push {:.1}s", t.push.as_secs_f64()));
    }
    let mut parts = vec![phases.join(", ")];
    if t.blobs_pulled > 0 {
        parts.push(format!(
            "pulled {} ({} blob{})",
            human(t.bytes_pulled),
            t.blobs_pulled,
            plural(t.blobs_pulled as usize)
        ));
    }
    if t.blobs_pushed + t.blobs_present > 0 {
        parts.push(format!(
            "pushed {} ({} blob{}, {} already there)",
            human(t.bytes_pushed),
            t.blobs_pushed,
            plural(t.blobs_pushed),
            t.blobs_present
        ));
    }
    parts.retain(|p| !p.is_empty());
    let mut lines = vec![first];
    if !parts.is_empty() {
        lines.push(format!("  {}", parts.join("; ")));
    }
    lines
}

/// Columns and rows of the terminal on stderr, else `COLUMNS`/`LINES`, else
/// [`DEFAULT_SIZE`].
fn terminal_size() -> (usize, usize) {
    let size = rustix::termios::tcgetwinsize(std::io::stderr()).ok();
    let env = |name: &str| std::env::var(name).ok()?.parse::<usize>().ok();
    let width = size
        .map(|w| usize::from(w.ws_col))
        .filter(|w| *w > 0)
        .or_else(|| env("COLUMNS"))
        .unwrap_or(DEFAULT_SIZE.0);
    let height = size
        .map(|w| usize::from(w.ws_row))
        .filter(|h| *h > 0)
        .or_else(|| env("LINES"))
        .unwrap_or(DEFAULT_SIZE.1);
    (width, height)
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

    fn test_progress(mode: Mode, buffer: &Buffer, width: usize) -> Progress {
        Progress::with_writer(
            mode,
            Box::new(buffer.clone()),
            Box::new(move || (width, 24)),
            Colors(false),
            DEFAULT_TAIL_LINES,
        )
    }

    fn events() -> Vec<Event> {
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        vec![
            Event::StepStarted {
                index: 1,
                total: 2,
                stage: 1,
                stage_name: "stage 1 (from busybox)".into(),
                description: "from busybox".into(),
                platform: None,
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
                stage: 1,
                stage_name: "stage 1 (from busybox)".into(),
                description: "with_exec sh -c 'printf \"\\033[31mred\"'".into(),
                platform: None,
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
    fn a_step_of_one_platform_among_several_names_it() {
        let started = Event::StepStarted {
            index: 7,
            total: 12,
            stage: 3,
            stage_name: "linux/arm64 stage 1 (from busybox)".into(),
            description: "with_exec uname -m".into(),
            platform: Some("linux/arm64".into()),
        };
        assert_eq!(
            plain_line(&started).unwrap(),
            "[7/12] linux/arm64: with_exec uname -m"
        );
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
    fn pull_lines_name_the_mirror_that_served_it() {
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let pulled = |blobs, mirror: Option<&str>| Event::Pulled {
            index: 1,
            reference: "docker.io/library/busybox:1".into(),
            digest: digest.clone(),
            blobs_fetched: blobs,
            bytes_fetched: blobs * 1024,
            mirror: mirror.map(str::to_owned),
        };
        assert_eq!(
            plain_line(&pulled(2, Some("registry.ops.eblu.me/docker.io"))).unwrap(),
            "[1] pulled docker.io/library/busybox:1 via registry.ops.eblu.me/docker.io: 2.0 KiB \
             (2 blobs)"
        );
        assert_eq!(
            plain_line(&pulled(1, None)).unwrap(),
            "[1] pulled docker.io/library/busybox:1: 1.0 KiB (1 blob)"
        );
        assert_eq!(
            plain_line(&pulled(0, Some("m.example/hub"))).unwrap(),
            "[1] pulled docker.io/library/busybox:1 via m.example/hub: nothing new (the cache \
             had every blob)"
        );
        assert_eq!(plain_line(&pulled(0, None)), None, "nothing to say");
        let failed = Event::MirrorFailed {
            index: 1,
            reference: "docker.io/library/busybox:1".into(),
            mirror: "127.0.0.1:9/hub".into(),
            error: "registry 127.0.0.1:9 is unreachable".into(),
        };
        assert_eq!(
            plain_line(&failed).unwrap(),
            "[1] mirror 127.0.0.1:9/hub did not serve docker.io/library/busybox:1: registry \
             127.0.0.1:9 is unreachable"
        );
    }

    #[test]
    fn plain_mode_output_has_no_escape_bytes() {
        let buffer = Buffer::default();
        let progress = test_progress(Mode::Plain, &buffer, 80);
        let callback = progress.callback();
        for event in events() {
            callback(&event);
        }
        progress.finish(None);
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(!out.contains('\x1b'), "{out:?}");
        assert!(out.contains("[1/2] from busybox\n"), "{out}");
        assert!(out.contains("built 2 steps in "), "{out}");
        assert!(out.contains("(0 ran, 0 cached)"), "{out}");
        assert!(
            out.contains("  build 0.0s, push 0.1s; pushed 100 B (3 blobs, 0 already there)\n"),
            "{out}"
        );
    }

    #[test]
    fn tty_mode_shows_running_steps_and_the_failed_tail() {
        let buffer = Buffer::default();
        let progress = test_progress(Mode::Tty, &buffer, 40);
        let callback = progress.callback();
        for event in &events()[..5] {
            callback(event);
        }
        {
            // What the ticker does.
            let mut state = progress.lock();
            state.redraw(&[]);
            assert_eq!(state.drawn, 3, "title and two output lines");
        }
        progress.fail("boom");
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(out.contains("done [1/2] from busybox (1.5s)\n"), "{out:?}");
        assert!(out.contains("[2]  red text!\n[2]! warning?\n"), "{out:?}");
        // After a failure nothing more is drawn.
        let len = out.len();
        callback(&events()[0]);
        assert_eq!(buffer.0.lock().unwrap().len(), len);
    }

    #[test]
    fn tty_mode_counts_the_push_under_way() {
        let buffer = Buffer::default();
        let progress = test_progress(Mode::Tty, &buffer, 80);
        let callback = progress.callback();
        callback(&Event::PushStarted {
            target: "r/x:1".into(),
        });
        for done in 1..=2 {
            callback(&Event::PushProgress {
                done,
                total: 3,
                uploaded: true,
                bytes_sent: 2048,
            });
        }
        assert_eq!(progress.lock().drawn, 1);
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.contains("  pushing r/x:1: 2/3 blobs, 4.0 KiB sent "),
            "{out:?}"
        );
        callback(&events()[7]);
        assert_eq!(
            progress.lock().drawn,
            0,
            "the push line goes when it is done"
        );
    }

    #[test]
    fn json_mode_writes_one_event_per_line_and_the_result() {
        let buffer = Buffer::default();
        let progress = test_progress(Mode::Json, &buffer, 80);
        let callback = progress.callback();
        for event in events() {
            callback(&event);
        }
        progress.fail("step 2 failed");
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), events().len() + 1, "{out}");
        for line in &lines {
            assert!(json::parse(line).is_some(), "{line}");
            assert!(!line.contains('\x1b'), "{line}");
        }
        assert!(
            lines[3].contains(
                r#""event":"step-output","step":2,"stream":"stdout","line":"\u001b[31mred"#
            ),
            "{}",
            lines[3]
        );
        assert!(
            lines.last().unwrap().contains(
                r#""event":"result","ok":false,"error":"step 2 failed","steps":2,"ran":0,"cached":0"#
            ),
            "{out}"
        );
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
        assert_eq!(
            Mode::resolve_with(ProgressArg::Json, true, false, false),
            Mode::Json
        );
    }
}
