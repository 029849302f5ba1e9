//! The live view's screen: one block per running step (its title, then the last lines of
//! its output), grouped under stage names when steps of several stages run, fitted to
//! the terminal's width and height. Pure: the caller moves the cursor and writes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::text::{elide_middle, sanitize, truncate};

/// One running step, as the live view shows it.
pub struct Running {
    pub total: usize,
    pub stage: usize,
    pub stage_name: String,
    pub description: String,
    pub started: Instant,
    /// Last lines of output (stream is stderr, line).
    pub tail: VecDeque<(bool, String)>,
}

/// SGR colours, or nothing when colours are off.
#[derive(Clone, Copy)]
pub struct Colors(pub bool);

impl Colors {
    fn paint(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    pub fn green(self, t: &str) -> String {
        self.paint("32", t)
    }
    pub fn cyan(self, t: &str) -> String {
        self.paint("36", t)
    }
    pub fn red(self, t: &str) -> String {
        self.paint("31", t)
    }
    pub fn dim(self, t: &str) -> String {
        self.paint("2", t)
    }
    pub fn bold(self, t: &str) -> String {
        self.paint("1", t)
    }
}

/// What to fit the view into.
pub struct Screen {
    pub width: usize,
    pub height: usize,
    /// Output lines shown under each running step.
    pub tail_lines: usize,
    /// Group running steps under their stage names.
    pub stages: bool,
    pub colors: Colors,
}

/// The live lines for the running steps.
pub fn render(running: &BTreeMap<usize, Running>, screen: &Screen) -> Vec<String> {
    // Keep a line for the cursor, and never draw more than the terminal shows: a redraw
    // moves up over what it drew, which it cannot do past the top.
    let max_rows = screen.height.saturating_sub(2).max(1);
    let width = screen.width.saturating_sub(1).max(1);
    let mut stage_names: Vec<(usize, &str)> = running
        .values()
        .map(|s| (s.stage, s.stage_name.as_str()))
        .collect();
    stage_names.sort_unstable();
    stage_names.dedup();
    let headers = if screen.stages { stage_names.len() } else { 0 };
    // Fewer output lines per step until everything fits; then fewer steps.
    let mut tail = screen.tail_lines;
    let rows = |tail: usize| {
        headers
            + running
                .values()
                .map(|s| 1 + s.tail.len().min(tail))
                .sum::<usize>()
    };
    while tail > 0 && rows(tail) > max_rows {
        tail -= 1;
    }
    let indent = if screen.stages { "    " } else { "  " };
    // Each step's block, under its stage's header.
    let mut blocks: Vec<(Option<String>, Vec<String>)> = Vec::new();
    for (stage, name) in &stage_names {
        let mut header = screen
            .stages
            .then(|| screen.colors.bold(&truncate(&format!("  {name}"), width)));
        for (index, step) in running.iter().filter(|(_, s)| s.stage == *stage) {
            let visible = step.tail.len().min(tail);
            let mut block = vec![title(*index, step, indent, width, screen.colors)];
            for (_, line) in step.tail.iter().skip(step.tail.len() - visible) {
                let text = sanitize(line).replace('\t', " ");
                let text = truncate(&format!("{indent}  │ {}", text.trim_end()), width);
                block.push(screen.colors.dim(&text));
            }
            blocks.push((header.take(), block));
        }
    }
    let all: usize = blocks
        .iter()
        .map(|(h, b)| usize::from(h.is_some()) + b.len())
        .sum();
    // What does not fit is counted on a last line.
    let budget = if all > max_rows {
        max_rows.saturating_sub(1)
    } else {
        max_rows
    };
    let mut lines = Vec::new();
    let mut shown = 0;
    for (header, block) in blocks {
        if lines.len() + usize::from(header.is_some()) + block.len() > budget {
            break;
        }
        lines.extend(header);
        lines.extend(block);
        shown += 1;
    }
    if shown < running.len() {
        lines.push(screen.colors.dim(&truncate(
            &format!("  … and {} more running", running.len() - shown),
            width,
        )));
    }
    lines
}

/// `  [3/9] with_exec go bu…/app 4.2s`: the description gives way, never the number or time.
fn title(index: usize, step: &Running, indent: &str, width: usize, colors: Colors) -> String {
    let number = format!("[{index}/{}]", step.total);
    let elapsed = format!("{:.1}s", step.started.elapsed().as_secs_f64());
    let fixed = indent.len() + number.len() + elapsed.len() + 2;
    let description = elide_middle(
        &sanitize(&step.description).replace('\t', " "),
        width.saturating_sub(fixed).max(1),
    );
    let plain = format!("{indent}{number} {description} {elapsed}");
    if super::text::width(&plain) > width {
        // Too narrow even for the number and the time: cut the plain line.
        return truncate(&plain, width);
    }
    format!(
        "{indent}{} {description} {}",
        colors.bold(&number),
        colors.dim(&elapsed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(stage: usize, description: &str, lines: usize) -> Running {
        Running {
            total: 9,
            stage,
            stage_name: format!("stage {stage} (from base{stage})"),
            description: description.to_owned(),
            started: Instant::now(),
            tail: (1..=lines).map(|n| (false, format!("line {n}"))).collect(),
        }
    }

    fn screen(width: usize, height: usize, stages: bool) -> Screen {
        Screen {
            width,
            height,
            tail_lines: 3,
            stages,
            colors: Colors(false),
        }
    }

    #[test]
    fn a_long_command_gives_way_to_its_output() {
        let long = format!("with_exec sh -c '{}' # end", "x".repeat(200));
        let running = BTreeMap::from([(3, step(1, &long, 5))]);
        let lines = render(&running, &screen(60, 40, false));
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].starts_with("  [3/9] with_exec sh -c"),
            "{lines:#?}"
        );
        assert!(
            lines[0].contains('…') && lines[0].contains("# end"),
            "{lines:#?}"
        );
        assert!(lines[0].ends_with('s'), "{lines:#?}");
        assert_eq!(
            &lines[1..],
            ["    │ line 3", "    │ line 4", "    │ line 5"]
        );
        assert!(
            lines.iter().all(|l| super::super::text::width(l) < 60),
            "{lines:#?}"
        );
        // Narrower than the fixed parts: cut, never wider than the terminal.
        let lines = render(&running, &screen(12, 40, false));
        assert!(
            lines.iter().all(|l| super::super::text::width(l) < 12),
            "{lines:#?}"
        );
    }

    #[test]
    fn parallel_stages_show_under_their_names_and_fit_the_height() {
        let running = BTreeMap::from([
            (2, step(1, "with_exec go build", 5)),
            (6, step(2, "with_exec npm ci", 5)),
        ]);
        let lines = render(&running, &screen(80, 40, true));
        assert_eq!(lines[0], "  stage 1 (from base1)");
        assert!(
            lines[1].starts_with("    [2/9] with_exec go build"),
            "{lines:#?}"
        );
        assert_eq!(lines[2], "      │ line 3");
        assert_eq!(lines[5], "  stage 2 (from base2)");
        assert_eq!(lines.len(), 10, "{lines:#?}");
        // A short terminal: fewer output lines per step first.
        let lines = render(&running, &screen(80, 8, true));
        assert!(lines.len() <= 6, "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("npm ci")), "{lines:#?}");
        // Very short: steps that do not fit are counted.
        let lines = render(&running, &screen(80, 5, true));
        assert_eq!(
            lines,
            [
                "  stage 1 (from base1)",
                &lines[1],
                "  … and 1 more running"
            ]
        );
        assert!(lines[1].contains("go build"), "{lines:#?}");
    }
}
