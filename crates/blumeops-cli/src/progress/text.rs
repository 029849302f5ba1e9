//! Text helpers shared by every mode: terminal-safe text, cutting to a width (in terminal
//! columns).

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

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

/// Columns `text` takes on a terminal (wide characters take two, combining ones none).
pub fn width(text: &str) -> usize {
    UnicodeWidthStr::width(text)
}

/// The longest start of `text` that fits in `columns`.
fn head(text: &str, columns: usize) -> &str {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += UnicodeWidthChar::width(c).unwrap_or(0);
        if used > columns {
            return &text[..at];
        }
    }
    text
}

/// The longest end of `text` that fits in `columns`.
fn tail(text: &str, columns: usize) -> &str {
    let mut used = 0;
    for (at, c) in text.char_indices().rev() {
        used += UnicodeWidthChar::width(c).unwrap_or(0);
        if used > columns {
            return &text[at + c.len_utf8()..];
        }
    }
    text
}

/// `line` cut to `columns` terminal columns, the cut marked with `…`.
pub fn truncate(line: &str, columns: usize) -> String {
    if width(line) <= columns {
        return line.to_owned();
    }
    if columns == 0 {
        return String::new();
    }
    format!("{}…", head(line, columns - 1))
}

/// `text` shortened to `columns` terminal columns by removing its middle
/// (`go build -ldfl…/app`): a step's title keeps its start (the command) and its end (what
/// it acts on).
pub fn elide_middle(text: &str, columns: usize) -> String {
    if width(text) <= columns {
        return text.to_owned();
    }
    if columns < 2 {
        return truncate(text, columns);
    }
    let keep = columns - 1;
    let front = keep.div_ceil(2);
    format!("{}…{}", head(text, front), tail(text, keep - front))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_sequences() {
        assert_eq!(sanitize("a\x1b[1;32mb\x1b[0mc"), "abc");
        assert_eq!(sanitize("x\x1b]8;;http://e\x1b\\y"), "xy");
        assert_eq!(sanitize("tab\there\x07"), "tab\there?");
        assert_eq!(sanitize("ünï"), "ünï");
    }

    #[test]
    fn cutting_to_a_width() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdefg", 6), "abcde…");
        assert_eq!(elide_middle("abcdefghij", 10), "abcdefghij");
        assert_eq!(elide_middle("go build -o /out/app", 11), "go bu…t/app");
        assert_eq!(elide_middle("go build -o /out/app", 11).chars().count(), 11);
        assert_eq!(elide_middle("abc", 1), "…");
        // Wide characters take two columns: cut by columns, never past them.
        assert_eq!(truncate("编译中编译中", 7), "编译中…");
        assert_eq!(width(&truncate("编译中编译中", 7)), 7);
        assert!(width(&elide_middle("npm 编译 ✨✨✨ done", 9)) <= 9);
        assert_eq!(truncate("abc", 0), "");
    }
}
