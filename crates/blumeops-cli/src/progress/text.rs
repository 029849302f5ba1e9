//! Text helpers shared by every mode: terminal-safe text, cutting to a width, sizes.

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

/// `line` cut to `width` characters, the cut marked with `…`.
pub fn truncate(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `text` shortened to `width` characters by removing its middle (`go build -ldfl…/app`):
/// a step's title keeps its start (the command) and its end (what it acts on).
pub fn elide_middle(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    if width < 2 {
        return truncate(text, width);
    }
    let keep = width - 1;
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let mut out: String = text.chars().take(head).collect();
    out.push('…');
    out.extend(text.chars().skip(count - tail));
    out
}

/// `1.2 MiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
