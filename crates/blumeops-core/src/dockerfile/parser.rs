//! Dockerfile syntax: parser directives, comments, line continuations, heredocs, flags and
//! the exec (JSON) form. Produces instructions with their line numbers; what they mean is
//! decided by the translator.

use std::fmt;

use crate::limits::{self, LimitExceeded};

/// A syntax problem, at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        line,
        message: message.into(),
    }
}

fn limit_err(
    line: usize,
    what: impl Into<String>,
    limit: usize,
    unit: &'static str,
) -> SyntaxError {
    err(
        line,
        LimitExceeded::new(what, limit as u64, unit).to_string(),
    )
}

/// The instructions Docker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    From,
    Run,
    Cmd,
    Label,
    Maintainer,
    Expose,
    Env,
    Add,
    Copy,
    Entrypoint,
    Volume,
    User,
    Workdir,
    Arg,
    Onbuild,
    Stopsignal,
    Healthcheck,
    Shell,
}

impl Keyword {
    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_uppercase().as_str() {
            "FROM" => Self::From,
            "RUN" => Self::Run,
            "CMD" => Self::Cmd,
            "LABEL" => Self::Label,
            "MAINTAINER" => Self::Maintainer,
            "EXPOSE" => Self::Expose,
            "ENV" => Self::Env,
            "ADD" => Self::Add,
            "COPY" => Self::Copy,
            "ENTRYPOINT" => Self::Entrypoint,
            "VOLUME" => Self::Volume,
            "USER" => Self::User,
            "WORKDIR" => Self::Workdir,
            "ARG" => Self::Arg,
            "ONBUILD" => Self::Onbuild,
            "STOPSIGNAL" => Self::Stopsignal,
            "HEALTHCHECK" => Self::Healthcheck,
            "SHELL" => Self::Shell,
            _ => return None,
        })
    }

    /// The flags this instruction accepts.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Self::From => &["platform"],
            Self::Run => &["mount", "network", "security"],
            Self::Copy => &["from", "chown", "chmod", "link", "parents", "exclude"],
            Self::Add => &[
                "chown",
                "chmod",
                "link",
                "checksum",
                "keep-git-dir",
                "exclude",
            ],
            Self::Healthcheck => &[
                "interval",
                "timeout",
                "start-period",
                "start-interval",
                "retries",
            ],
            _ => &[],
        }
    }

    fn has_heredocs(self) -> bool {
        matches!(self, Self::Run | Self::Copy | Self::Add)
    }
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = format!("{self:?}").to_ascii_uppercase();
        f.write_str(&s)
    }
}

/// `--name=value` (or `--name`) before the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flag {
    pub name: String,
    pub value: Option<String>,
}

/// A here-document after an instruction (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heredoc {
    /// The delimiter word.
    pub name: String,
    /// The marker as written, e.g. `<<-"EOF"`.
    pub marker: String,
    /// Body, each line ending in `\n` (leading tabs removed for `<<-`).
    pub content: String,
    /// Whether variables in the body are expanded (unquoted delimiter).
    pub expand: bool,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instruction {
    /// Line of the keyword (1-based).
    pub line: usize,
    pub keyword: Keyword,
    pub flags: Vec<Flag>,
    /// Arguments after the flags, continuations joined, trimmed.
    pub rest: String,
    pub heredocs: Vec<Heredoc>,
}

impl Instruction {
    /// The arguments as an exec-form JSON array, if they are one.
    pub(crate) fn json_args(&self) -> Option<Vec<String>> {
        json_array(&self.rest)
    }

    /// Values of the flag `name`, in order.
    pub(crate) fn flag_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.flags
            .iter()
            .filter(move |f| f.name == name)
            .map(|f| f.value.as_deref().unwrap_or(""))
    }

    /// The last value of the flag `name`.
    pub(crate) fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|f| f.name == name)
            .map(|f| f.value.as_deref().unwrap_or(""))
    }
}

/// A JSON array of strings (exec form); anything else is shell form.
pub(crate) fn json_array(s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

/// A parser directive (`# syntax=...`, `# check=...`, `# escape=...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    /// 1-based line.
    pub line: usize,
    /// Lowercase name.
    pub name: String,
    pub value: String,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dockerfile {
    /// The escape character (`\` or `` ` ``).
    pub escape: char,
    pub directives: Vec<Directive>,
    pub instructions: Vec<Instruction>,
}

/// Parse a Dockerfile's text.
pub(crate) fn parse(text: &str) -> Result<Dockerfile, SyntaxError> {
    if text.len() as u64 > limits::MAX_DOCKERFILE_BYTES {
        return Err(limit_err(
            1,
            format!("the Dockerfile's size ({} bytes)", text.len()),
            limits::MAX_DOCKERFILE_BYTES as usize,
            "bytes",
        ));
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    let mut directives: Vec<Directive> = Vec::new();
    // Parser directives: only at the very top, before any comment, blank line or
    // instruction.
    while let Some(line) = lines.get(i) {
        let Some((key, value)) = directive(line) else {
            break;
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            break; // an unknown directive is a comment, and ends the directives
        }
        if directives.iter().any(|d| d.name == key) {
            return Err(err(i + 1, format!("parser directive {key} given twice")));
        }
        if key == "escape" {
            escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(err(
                        i + 1,
                        format!("invalid escape character `{other}`: expected \\ or `"),
                    ));
                }
            };
        }
        directives.push(Directive {
            line: i + 1,
            name: key,
            value,
        });
        i += 1;
    }

    let mut instructions = Vec::new();
    while i < lines.len() {
        let line = lines[i];
        let start = i + 1;
        i += 1;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut buf = String::new();
        let mut cur = trimmed;
        loop {
            let (content, more) = continuation(cur, escape);
            buf.push_str(content);
            if buf.len() > limits::MAX_DOCKERFILE_LINE_BYTES {
                return Err(limit_err(
                    start,
                    "the instruction's length (continuation lines joined)",
                    limits::MAX_DOCKERFILE_LINE_BYTES,
                    "bytes",
                ));
            }
            if !more {
                break;
            }
            // Comment and blank lines inside a continuation are skipped.
            let mut next = None;
            while let Some(l) = lines.get(i) {
                i += 1;
                let t = l.trim_start();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                next = Some(*l);
                break;
            }
            match next {
                Some(l) => cur = l,
                None => break,
            }
        }
        let mut inst = instruction(start, &buf)?;
        if inst.keyword.has_heredocs() && inst.json_args().is_none() {
            for (name, marker, strip_tabs, expand) in heredoc_markers(&inst.rest) {
                let mut content = String::new();
                loop {
                    let Some(l) = lines.get(i) else {
                        return Err(err(
                            start,
                            format!("unterminated heredoc {marker}: no line `{name}` follows"),
                        ));
                    };
                    i += 1;
                    let l = if strip_tabs {
                        l.trim_start_matches('\t')
                    } else {
                        l
                    };
                    if l == name {
                        break;
                    }
                    content.push_str(l);
                    content.push('\n');
                    if content.len() > limits::MAX_HEREDOC_BYTES {
                        return Err(limit_err(
                            start,
                            format!("heredoc {marker}"),
                            limits::MAX_HEREDOC_BYTES,
                            "bytes",
                        ));
                    }
                }
                inst.heredocs.push(Heredoc {
                    name,
                    marker,
                    content,
                    expand,
                });
            }
        }
        if instructions.len() == limits::MAX_DOCKERFILE_INSTRUCTIONS {
            return Err(limit_err(
                start,
                "the number of instructions",
                limits::MAX_DOCKERFILE_INSTRUCTIONS,
                "instructions",
            ));
        }
        instructions.push(inst);
    }
    Ok(Dockerfile {
        escape,
        directives,
        instructions,
    })
}

/// `# key=value` at the top of the file.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix('#')?;
    let (key, value) = rest.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((key.to_owned(), value.trim().to_owned()))
}

/// A line without its trailing escape, and whether it continues.
fn continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end();
    match t.strip_suffix(escape) {
        Some(content) => (content, true),
        None => (line, false),
    }
}

fn instruction(line: usize, text: &str) -> Result<Instruction, SyntaxError> {
    let text = text.trim();
    let (word, rest) = text
        .split_once(char::is_whitespace)
        .map_or((text, ""), |(w, r)| (w, r.trim_start()));
    let keyword = Keyword::parse(word)
        .ok_or_else(|| err(line, format!("unknown instruction {}", word.to_uppercase())))?;
    let (flags, rest) = flags(line, rest)?;
    let allowed = keyword.flags();
    for f in &flags {
        if !allowed.contains(&f.name.as_str()) {
            return Err(err(
                line,
                format!("unknown flag --{} for {keyword}", f.name),
            ));
        }
    }
    let rest = rest.trim().to_owned();
    if rest.is_empty() && !matches!(keyword, Keyword::Healthcheck) {
        return Err(err(
            line,
            format!("{keyword} requires at least one argument"),
        ));
    }
    Ok(Instruction {
        line,
        keyword,
        flags,
        rest,
        heredocs: Vec::new(),
    })
}

/// Leading `--name[=value]` words (values may be quoted).
fn flags(line: usize, mut rest: &str) -> Result<(Vec<Flag>, &str), SyntaxError> {
    let mut flags = Vec::new();
    while let Some(after) = rest.strip_prefix("--") {
        if after.is_empty() || after.starts_with(char::is_whitespace) {
            break;
        }
        let mut end = after.len();
        let mut quote = None;
        for (idx, c) in after.char_indices() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c.is_whitespace() => {
                    end = idx;
                    break;
                }
                None => {}
            }
        }
        if let Some(q) = quote {
            return Err(err(line, format!("unterminated {q} quote in a flag")));
        }
        let token = &after[..end];
        let (name, value) = match token.split_once('=') {
            Some((n, v)) => (n, Some(unquote(v))),
            None => (token, None),
        };
        if name.is_empty() {
            return Err(err(line, format!("invalid flag `--{token}`")));
        }
        flags.push(Flag {
            name: name.to_ascii_lowercase(),
            value,
        });
        rest = after[end..].trim_start();
    }
    Ok((flags, rest))
}

fn unquote(v: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    for c in v.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            None if c == '"' || c == '\'' => quote = Some(c),
            _ => out.push(c),
        }
    }
    out
}

/// `(name, marker, strip_tabs, expand)` of each `<<EOF`, `<<-EOF`, `<<"EOF"` word.
fn heredoc_markers(rest: &str) -> Vec<(String, String, bool, bool)> {
    let mut out = Vec::new();
    for word in rest.split_whitespace() {
        let Some(after) = word.strip_prefix("<<") else {
            continue;
        };
        let (strip_tabs, after) = match after.strip_prefix('-') {
            Some(a) => (true, a),
            None => (false, after),
        };
        let (name, quoted) = match after.chars().next() {
            Some(q @ ('"' | '\'')) => match after[1..].strip_suffix(q) {
                Some(n) => (n, true),
                None => continue,
            },
            _ => (after, false),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.push((name.to_owned(), word.to_owned(), strip_tabs, !quoted));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn one(text: &str) -> Instruction {
        let d = parse(text).unwrap();
        assert_eq!(d.instructions.len(), 1, "{d:?}");
        d.instructions.into_iter().next().unwrap()
    }

    #[test]
    fn comments_blank_lines_and_line_numbers() {
        let d = parse("# a comment\n\nFROM alpine AS build\n  # indented comment\nrun echo hi\n")
            .unwrap();
        let got: Vec<(usize, Keyword, &str)> = d
            .instructions
            .iter()
            .map(|i| (i.line, i.keyword, i.rest.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (3, Keyword::From, "alpine AS build"),
                (5, Keyword::Run, "echo hi")
            ]
        );
    }

    #[test]
    fn continuations_join_and_skip_comments() {
        let i = one(
            "RUN apt-get update && \\\n# comment inside\n\n    apt-get install -y x \\  \n  y\n",
        );
        assert_eq!(i.rest, "apt-get update &&     apt-get install -y x   y");
        assert_eq!(i.line, 1);
    }

    #[test]
    fn escape_directive_backtick() {
        let d = parse(
            "# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch\nRUN dir C:\\ `\n  && echo\n",
        )
        .unwrap();
        assert_eq!(d.escape, '`');
        assert_eq!(d.instructions[1].rest, "dir C:\\   && echo");
        assert_eq!(d.instructions[1].line, 4);
    }

    #[test]
    fn directives_only_at_the_top() {
        // After an instruction, `# escape=` is an ordinary comment.
        let d = parse("FROM scratch\n# escape=`\nRUN a \\\n b\n").unwrap();
        assert_eq!(d.escape, '\\');
        assert_eq!(d.instructions[1].rest, "a  b");
        let e = parse("# escape=x\nFROM scratch\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("invalid escape"), "{e:?}");
        assert!(parse("# escape=`\n# escape=`\nFROM scratch\n").is_err());
    }

    #[rstest]
    #[case(r#"CMD ["nginx", "-g", "daemon off;"]"#, Some(vec!["nginx", "-g", "daemon off;"]))]
    #[case("CMD nginx -g 'daemon off;'", None)]
    #[case("CMD [\"unterminated\"", None)]
    #[case("CMD [1, 2]", None)]
    fn json_or_shell_form(#[case] text: &str, #[case] want: Option<Vec<&str>>) {
        let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(one(text).json_args(), want);
    }

    #[test]
    fn flags_are_parsed_and_checked() {
        let i = one("COPY --from=build --chown=app:app --link --chmod=\"0755\" a b /dst/\n");
        assert_eq!(i.flag("from"), Some("build"));
        assert_eq!(i.flag("chown"), Some("app:app"));
        assert_eq!(i.flag("link"), Some(""));
        assert_eq!(i.flag("chmod"), Some("0755"));
        assert_eq!(i.rest, "a b /dst/");
        let i = one("RUN --mount=type=cache,target=/root/.cache --network=none make\n");
        assert_eq!(
            i.flag_values("mount").collect::<Vec<_>>(),
            ["type=cache,target=/root/.cache"]
        );
        assert_eq!(i.flag("network"), Some("none"));
        let e = parse("FROM scratch\nCOPY --frm=x a b\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.message, "unknown flag --frm for COPY");
    }

    #[test]
    fn keywords_are_case_insensitive_and_unknown_ones_fail() {
        assert_eq!(one("from alpine").keyword, Keyword::From);
        assert_eq!(one("WorkDir /x").keyword, Keyword::Workdir);
        let e = parse("FROM scratch\n\nFOO bar\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (3, "unknown instruction FOO"));
        let e = parse("FROM scratch\nWORKDIR\n").unwrap_err();
        assert!(
            e.message.contains("requires at least one argument"),
            "{e:?}"
        );
    }

    #[test]
    fn heredocs() {
        let d = parse(
            "FROM scratch\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-\"A\" <<B /dst/\n\tx $V\n\tA\ny\nB\nUSER me\n",
        )
        .unwrap();
        let run = &d.instructions[1];
        assert_eq!(run.heredocs.len(), 1);
        assert_eq!(run.heredocs[0].content, "echo one\necho two\n");
        let copy = &d.instructions[2];
        assert_eq!(copy.line, 6);
        assert_eq!(
            copy.heredocs
                .iter()
                .map(|h| (h.name.as_str(), h.content.as_str(), h.expand))
                .collect::<Vec<_>>(),
            [("A", "x $V\n", false), ("B", "y\n", true)]
        );
        assert_eq!(d.instructions[3].keyword, Keyword::User);
        let e = parse("FROM scratch\nRUN <<EOF\necho\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("unterminated heredoc"), "{e:?}");
    }
}
