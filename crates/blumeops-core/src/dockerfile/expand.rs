//! Word processing as BuildKit does it for instructions other than `RUN`/`CMD`/`ENTRYPOINT`:
//! quote removal, escapes and variable substitution. The forms:
//!
//! - `$NAME` and `${NAME}`. A name is letters, digits and `_`, not starting with a digit
//!   (letters as in Unicode: BuildKit asks Go's `unicode.IsLetter`).
//! - `${NAME:-word}` and `${NAME-word}`: the word when NAME is unset or empty (unset);
//!   `${NAME:+word}` and `${NAME+word}`: the word when NAME is set and not empty (set);
//!   `${NAME:?message}` and `${NAME?message}`: an error when NAME is unset or empty (unset).
//! - `${NAME#pattern}` and `${NAME##pattern}`: the value without the shortest (longest)
//!   prefix matching the pattern; `${NAME%pattern}` and `${NAME%%pattern}`: the same for
//!   suffixes; `${NAME/pattern/string}`: the first match replaced (the leftmost, the longest
//!   there); `${NAME//pattern/string}`: every match replaced. Patterns are described in
//!   [`pattern`]. An unset NAME is empty, so these give nothing, except that a pattern that
//!   matches the empty string (`${NAME/*/x}`) still replaces it, as in BuildKit.
//! - The shell's special parameters `$0`..`$9` (all the digits: `$10` is one name),
//!   `$@`, `$*`, `$#`, `$?`, `$-`, `$$` and `$!`, bare or in braces (`${1}`, `${#}`,
//!   `${@:-x}`): a Dockerfile never sets them, so they are empty.
//!
//! Anything else after `${NAME` is an error: `${}`, `${:-x}`, a `:` before anything but
//! `-`, `+` and `?` (`${NAME:#x}`), `${NAME/x}` (BuildKit needs the second `/`), and
//! `${#NAME}`: BuildKit has no length operator and reads that as the special parameter `#`
//! followed by an unsupported modifier.
//!
//! A variable can be *unknown*: set in the base image's environment, which is not read
//! when a Dockerfile is translated. Such references are kept as a template (see
//! [`Word::template`]) that [`expand_template`] finishes against the image's `Env` when the
//! container is evaluated, with the same rules.

mod pattern;

use std::cell::Cell;

use crate::limits::{self, LimitExceeded};

/// The value of a variable, as far as translation knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Var {
    /// Set (possibly to the empty string).
    Set(String),
    /// Declared or known not to exist.
    Unset,
    /// Maybe set by the base image: only known at evaluation.
    Unknown,
}

/// Why a word could not be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${` without `}`, or a bad modifier.
    Syntax(String),
    /// A quote was opened and never closed.
    UnterminatedQuote(char),
    /// `${VAR:?message}` with VAR unset (or empty).
    Required { name: String, message: String },
    /// A `${VAR#pattern}`-style pattern BuildKit would not compile (`\` before a character
    /// other than `*`, `?`, `\`, `}` and `/`).
    Pattern { pattern: String, reason: String },
    /// The word grew past [`limits::MAX_EXPANDED_BYTES`], or matching its patterns took
    /// more than [`limits::MAX_PATTERN_STEPS`].
    Limit(LimitExceeded),
}

impl std::fmt::Display for ExpandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Syntax(s) => write!(f, "bad variable substitution: {s}"),
            Self::UnterminatedQuote(q) => write!(f, "unterminated {q} quote"),
            Self::Required { name, message } if message.is_empty() => {
                write!(f, "variable {name} is required but not set")
            }
            Self::Required { name, message } => write!(f, "{name}: {message}"),
            Self::Pattern { pattern, reason } => {
                write!(f, "invalid pattern `{pattern}` in substitution: {reason}")
            }
            Self::Limit(l) => write!(f, "{l}"),
        }
    }
}

fn too_long() -> ExpandError {
    ExpandError::Limit(LimitExceeded::new(
        "the word after variable substitution",
        limits::MAX_EXPANDED_BYTES as u64,
        "bytes",
    ))
}

/// A character of a name after its first (BuildKit: Go's `unicode.IsLetter`, `IsDigit` or
/// `_`; Rust's classes differ from Go's only for some marks and numerals).
fn is_name_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// The shell's special parameters, one character each (BuildKit's list).
const SPECIAL: [char; 8] = ['@', '*', '#', '?', '-', '$', '!', '0'];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    /// A reference to an unknown variable, already in template syntax.
    Deferred {
        name: String,
        template: String,
    },
}

/// A processed word: literal text, possibly with references left for evaluation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Word {
    pieces: Vec<Piece>,
    /// Bytes of text and templates held.
    len: usize,
}

impl Word {
    /// Bytes of text (and deferred templates) in the word.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    fn push_deferred(&mut self, name: String, template: String) {
        self.len += template.len();
        self.pieces.push(Piece::Deferred { name, template });
    }

    fn push_char(&mut self, c: char) {
        self.len += c.len_utf8();
        match self.pieces.last_mut() {
            Some(Piece::Lit(s)) => s.push(c),
            _ => self.pieces.push(Piece::Lit(c.to_string())),
        }
    }

    fn push_str(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.len += s.len();
        match self.pieces.last_mut() {
            Some(Piece::Lit(l)) => l.push_str(s),
            _ => self.pieces.push(Piece::Lit(s.to_owned())),
        }
    }

    fn append(&mut self, other: Word) {
        for p in other.pieces {
            match p {
                Piece::Lit(s) => self.push_str(&s),
                Piece::Deferred { name, template } => self.push_deferred(name, template),
            }
        }
    }

    /// The first unknown variable this word refers to.
    pub(crate) fn unknown(&self) -> Option<&str> {
        self.pieces.iter().find_map(|p| match p {
            Piece::Deferred { name, .. } => Some(name.as_str()),
            Piece::Lit(_) => None,
        })
    }

    /// The text, when every variable was known.
    pub(crate) fn plain(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Deferred { .. } => return None,
            }
        }
        Some(out)
    }

    /// Template syntax for [`expand_template`]: literal `$`, `\`, quotes escaped with `\`,
    /// unknown references kept as `${NAME...}`.
    ///
    /// Within a reference, an argument has `}` escaped too (and a `/` pattern `/`), and
    /// pattern text is kept as it is (escapes included), to be read without raw escapes;
    /// an operation on a known value whose arguments are unknown carries the value as
    /// `${'value'#pattern}`, a form only templates have.
    pub(crate) fn template(&self) -> String {
        self.template_escaping(&[])
    }

    fn template_escaping(&self, extra: &[char]) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(&escape_template(s, extra)),
                Piece::Deferred { template, .. } => out.push_str(template),
            }
        }
        out
    }
}

/// The variables a template made by [`Word::template`] refers to: the names after `${`
/// (a literal `$` is escaped there, and a value carried along is quoted).
pub(crate) fn template_references(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if !is_name_char(n) {
                        break;
                    }
                    name.push(n);
                    chars.next();
                }
                if !name.is_empty() && !names.contains(&name) {
                    names.push(name);
                }
            }
            _ => {}
        }
    }
    names
}

fn escape_template(s: &str, extra: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '$' | '\\' | '"' | '\'') || extra.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Split an instruction's arguments into raw words on unquoted whitespace (quotes and
/// escapes stay in the words).
pub(crate) fn split_words(s: &str, escape: char) -> Result<Vec<String>, ExpandError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                continue;
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ => {}
        }
        in_word = true;
        cur.push(c);
        if c == escape
            && quote != Some('\'')
            && let Some(n) = chars.next()
        {
            cur.push(n);
        }
    }
    if let Some(q) = quote {
        return Err(ExpandError::UnterminatedQuote(q));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Process one word: remove quotes, apply escapes, substitute variables. Pattern matching
/// takes its work from `steps` (see [`limits::MAX_PATTERN_STEPS`]).
pub(crate) fn process(
    word: &str,
    escape: char,
    vars: &dyn Fn(&str) -> Var,
    steps: &Cell<u64>,
) -> Result<Word, ExpandError> {
    let chars: Vec<char> = word.chars().collect();
    Processor {
        chars: &chars,
        pos: 0,
        escape,
        vars,
        quotes: true,
        template: false,
        steps,
    }
    .run(None, false)
}

/// Substitute variables in text where quotes are ordinary characters (heredoc bodies).
pub(crate) fn process_unquoted(
    text: &str,
    escape: char,
    vars: &dyn Fn(&str) -> Var,
    steps: &Cell<u64>,
) -> Result<Word, ExpandError> {
    let chars: Vec<char> = text.chars().collect();
    Processor {
        chars: &chars,
        pos: 0,
        escape,
        vars,
        quotes: false,
        template: false,
        steps,
    }
    .run(None, false)
}

/// Finish a template made by [`Word::template`] against an image's environment. Fails on a
/// malformed template, on a pattern that only the environment makes invalid, and past the
/// limits.
pub(crate) fn expand_template(
    template: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let chars: Vec<char> = template.chars().collect();
    let vars = |n: &str| env(n).map_or(Var::Unset, Var::Set);
    let steps = Cell::new(limits::MAX_PATTERN_STEPS);
    let w = Processor {
        chars: &chars,
        pos: 0,
        escape: '\\',
        vars: &vars,
        quotes: false,
        template: true,
        steps: &steps,
    }
    .run(None, false)?;
    // Every variable is known here.
    Ok(w.plain().unwrap_or_default())
}

/// What a `${...}` operates on.
enum Operand {
    Name(String),
    /// A template's `${'value'...}`.
    Value(String),
}

struct Processor<'a> {
    chars: &'a [char],
    pos: usize,
    escape: char,
    vars: &'a dyn Fn(&str) -> Var,
    /// Whether `'` and `"` are quotes (false for templates, where they are escaped).
    quotes: bool,
    /// Reading a template: patterns come as they are (not with raw escapes), and
    /// `${'value'...}` is allowed.
    template: bool,
    steps: &'a Cell<u64>,
}

impl Processor<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    /// Process until `stop` (not consumed) or the end. With `raw` (a pattern or a
    /// replacement, as BuildKit reads them) an escape stays in the text with what it
    /// escapes, for the pattern to interpret.
    fn run(&mut self, stop: Option<char>, raw: bool) -> Result<Word, ExpandError> {
        let mut w = Word::default();
        while let Some(c) = self.peek() {
            if w.len() > limits::MAX_EXPANDED_BYTES {
                return Err(too_long());
            }
            if Some(c) == stop {
                return Ok(w);
            }
            self.pos += 1;
            if c == self.escape {
                if raw {
                    w.push_char(c);
                }
                match self.next() {
                    Some(n) => w.push_char(n),
                    None if !raw => w.push_char(c),
                    None => {}
                }
            } else if c == '\'' && self.quotes {
                loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(n) => w.push_char(n),
                        None => return Err(ExpandError::UnterminatedQuote('\'')),
                    }
                }
            } else if c == '"' && self.quotes {
                loop {
                    match self.next() {
                        Some('"') => break,
                        Some(n) if n == self.escape => {
                            if raw {
                                w.push_char(n);
                            }
                            match self.peek() {
                                Some(m) if m == '"' || m == '$' || m == self.escape => {
                                    self.pos += 1;
                                    w.push_char(m);
                                }
                                // Other escapes stay: raw, that is the escape twice (BuildKit).
                                _ => w.push_char(n),
                            }
                        }
                        Some('$') => w.append(self.dollar()?),
                        Some(n) => w.push_char(n),
                        None => return Err(ExpandError::UnterminatedQuote('"')),
                    }
                }
            } else if c == '$' {
                w.append(self.dollar()?);
            } else {
                w.push_char(c);
            }
        }
        if let Some(s) = stop {
            return Err(ExpandError::Syntax(format!("missing `{s}`")));
        }
        if w.len() > limits::MAX_EXPANDED_BYTES {
            return Err(too_long());
        }
        Ok(w)
    }

    /// A name after `$` or `${`, as BuildKit reads it: a run of digits, one special
    /// parameter, or letters, digits and `_`. Empty when none of these follows.
    fn name(&mut self) -> String {
        let start = self.pos;
        match self.peek() {
            Some(c) if c.is_numeric() => {
                while self.peek().is_some_and(char::is_numeric) {
                    self.pos += 1;
                }
            }
            Some(c) if SPECIAL.contains(&c) => self.pos += 1,
            _ => {
                while self.peek().is_some_and(is_name_char) {
                    self.pos += 1;
                }
            }
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// A variable's value. Special and positional parameters are never set, nor is the
    /// empty name (`${/a/b}`, `${+x}`, which BuildKit accepts).
    fn lookup(&self, name: &str) -> Var {
        if name.starts_with(|c: char| c == '_' || c.is_alphabetic()) {
            (self.vars)(name)
        } else {
            Var::Unset
        }
    }

    fn push_var(&self, w: &mut Word, name: &str) {
        match self.lookup(name) {
            Var::Set(v) => w.push_str(&v),
            Var::Unset => {}
            Var::Unknown => w.push_deferred(name.to_owned(), format!("${{{name}}}")),
        }
    }

    /// After a `$`.
    fn dollar(&mut self) -> Result<Word, ExpandError> {
        let mut w = Word::default();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                w.push_char('$');
            } else {
                self.push_var(&mut w, &name);
            }
            return Ok(w);
        }
        self.pos += 1;
        let operand = match self.peek() {
            None => return Err(ExpandError::Syntax("missing `}`".to_owned())),
            Some(c @ ('{' | '}' | ':')) => {
                return Err(ExpandError::Syntax(format!("`${{{c}` is not a variable")));
            }
            Some('\'') if self.template => Operand::Value(self.quoted_value()?),
            Some(_) => Operand::Name(self.name()),
        };
        let shown = match &operand {
            Operand::Name(n) => n.clone(),
            Operand::Value(_) => "'...'".to_owned(),
        };
        let unsupported = |m: String| {
            ExpandError::Syntax(format!("unsupported modifier `{m}` in `${{{shown}{m}`"))
        };
        match (self.next(), operand) {
            (Some('}'), Operand::Name(name)) => {
                self.push_var(&mut w, &name);
                Ok(w)
            }
            (Some(':'), Operand::Name(name)) => match self.next() {
                Some(op @ ('-' | '+' | '?')) => self.default_op(name, op, true),
                other => Err(unsupported(format!(
                    ":{}",
                    other.map(String::from).unwrap_or_default()
                ))),
            },
            (Some(op @ ('-' | '+' | '?')), Operand::Name(name)) => self.default_op(name, op, false),
            (Some(op @ ('#' | '%')), operand) => self.trim_op(operand, op),
            (Some('/'), operand) => self.replace_op(operand),
            (None, _) => Err(ExpandError::Syntax(format!(
                "missing `}}` after ${{{shown}"
            ))),
            (Some(c), _) => Err(unsupported(c.to_string())),
        }
    }

    /// A template's `'value'`, with `\` escapes.
    fn quoted_value(&mut self) -> Result<String, ExpandError> {
        self.pos += 1;
        let mut v = String::new();
        loop {
            match self.next() {
                Some('\'') => return Ok(v),
                Some('\\') => match self.next() {
                    Some(c) => v.push(c),
                    None => break,
                },
                Some(c) => v.push(c),
                None => break,
            }
        }
        Err(ExpandError::Syntax("missing `'`".to_owned()))
    }

    /// `${NAME-word}`, `${NAME+word}`, `${NAME?message}`, with or without `:`.
    fn default_op(&mut self, name: String, op: char, colon: bool) -> Result<Word, ExpandError> {
        let mut w = Word::default();
        let arg = self.run(Some('}'), false)?;
        self.pos += 1; // the `}`
        let var = self.lookup(&name);
        let (set, nonempty) = match &var {
            Var::Set(v) => (true, !v.is_empty()),
            Var::Unset => (false, false),
            Var::Unknown => {
                let colon = if colon { ":" } else { "" };
                if op == '?' {
                    return Err(ExpandError::Syntax(format!(
                        "`${{{name}{colon}?}}` refers to the base image's environment, which \
                         is not known here"
                    )));
                }
                let template = format!("${{{name}{colon}{op}{}}}", arg.template_escaping(&['}']));
                w.push_deferred(name, template);
                return Ok(w);
            }
        };
        let present = if colon { nonempty } else { set };
        match op {
            '-' if present => {
                if let Var::Set(v) = var {
                    w.push_str(&v);
                }
            }
            '-' => w.append(arg),
            '+' if present => w.append(arg),
            '+' => {}
            _ if present => {
                if let Var::Set(v) = var {
                    w.push_str(&v);
                }
            }
            _ => {
                return Err(ExpandError::Required {
                    name,
                    message: arg.plain().unwrap_or_default(),
                });
            }
        }
        Ok(w)
    }

    /// `${NAME#pattern}`, `${NAME##pattern}`, `${NAME%pattern}`, `${NAME%%pattern}`.
    fn trim_op(&mut self, operand: Operand, op: char) -> Result<Word, ExpandError> {
        let word = self.run(Some('}'), !self.template)?;
        self.pos += 1;
        let tail = format!("{op}{}", word.template_escaping(&['}']));
        let steps = self.steps;
        self.pattern_result(operand, &[&word], tail, |value, args| {
            // BuildKit tells `##` from `#` in the processed word: `${A#$P}` with P=#x is `##x`.
            let (longest, p) = match args[0].strip_prefix(op) {
                Some(p) => (true, p),
                None => (false, args[0].as_str()),
            };
            if op == '#' {
                pattern::trim_prefix(value, p, longest, steps)
            } else {
                pattern::trim_suffix(value, p, longest, steps)
            }
        })
    }

    /// `${NAME/pattern/string}`, `${NAME//pattern/string}`.
    fn replace_op(&mut self, operand: Operand) -> Result<Word, ExpandError> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let raw = !self.template;
        let pat = self.run(Some('/'), raw)?;
        self.pos += 1;
        let repl = self.run(Some('}'), raw)?;
        self.pos += 1;
        let known = match &operand {
            Operand::Name(n) => self.lookup(n) != Var::Unknown,
            Operand::Value(_) => true,
        };
        if !all && pat.is_empty() && !(known && repl.plain().is_some()) {
            // As a template `${V/` then `/` would read as `${V//`; but an empty pattern
            // matches at the start, so this is the replacement, then the value.
            let mut w = repl;
            match operand {
                Operand::Name(n) => self.push_var(&mut w, &n),
                Operand::Value(v) => w.push_str(&v),
            }
            return Ok(w);
        }
        let tail = format!(
            "/{}{}/{}",
            if all { "/" } else { "" },
            pat.template_escaping(&['/']),
            repl.template_escaping(&['}'])
        );
        let steps = self.steps;
        self.pattern_result(operand, &[&pat, &repl], tail, |value, args| {
            pattern::replace(value, &args[0], &args[1], all, steps)
        })
    }

    /// A pattern operation on `operand` with `args`: done now when everything is known,
    /// else kept as a template (`tail` is the template after the operand).
    fn pattern_result(
        &self,
        operand: Operand,
        args: &[&Word],
        tail: String,
        apply: impl FnOnce(&str, &[String]) -> Result<String, ExpandError>,
    ) -> Result<Word, ExpandError> {
        let mut w = Word::default();
        let value = match operand {
            Operand::Name(name) => match self.lookup(&name) {
                Var::Set(v) => v,
                Var::Unset => String::new(),
                Var::Unknown => {
                    let template = format!("${{{name}{tail}}}");
                    w.push_deferred(name, template);
                    return Ok(w);
                }
            },
            Operand::Value(v) => v,
        };
        let known: Option<Vec<String>> = args.iter().map(|a| a.plain()).collect();
        match known {
            Some(args) => w.push_str(&apply(&value, &args)?),
            None => {
                let name = args.iter().find_map(|a| a.unknown()).unwrap_or_default();
                let template = format!("${{'{}'{tail}}}", escape_template(&value, &[]));
                w.push_deferred(name.to_owned(), template);
            }
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn vars(name: &str) -> Var {
        let v = match name {
            "A" => "alpha",
            "E" => "",
            "SP" => "a b",
            "V" => "1.2.3-rc1",
            "P" => "/usr/local/bin/app.tar.gz",
            "K" => "한국어",
            "ÉTÉ" => "summer",
            "NL" => "a\nb",
            "STARS" => "xx**",
            "BR" => "[ab]c",
            "RE" => "()[]{}^$.*?|\\x",
            "BSV" => "\\ax",
            "FOO" => "/foo*/*/*.txt",
            "NEEDLE" => "\\*/",
            // A pattern from a variable keeps its wildcards, and BuildKit reads `#` at its
            // start as the longest-match `##`.
            "STAR" => "*",
            "HX" => "#*.",
            "BS" => "\\",
            "SB" => "*\\",
            "PATH" => return Var::Unknown,
            _ => return Var::Unset,
        };
        Var::Set(v.to_owned())
    }

    fn steps() -> Cell<u64> {
        Cell::new(limits::MAX_PATTERN_STEPS)
    }

    fn expand(s: &str) -> Result<String, ExpandError> {
        Ok(process(s, '\\', &vars, &steps())?
            .plain()
            .expect("no unknown variables"))
    }

    #[rstest]
    #[case("plain", "plain")]
    #[case("$A", "alpha")]
    #[case("${A}", "alpha")]
    #[case("x${A}y", "xalphay")]
    #[case("$A-1", "alpha-1")]
    #[case("$NOPE", "")]
    #[case("${NOPE:-def}", "def")]
    #[case("${E:-def}", "def")]
    #[case("${E-def}", "")]
    #[case("${NOPE-def}", "def")]
    #[case("${A:-def}", "alpha")]
    #[case("${A:+alt}", "alt")]
    #[case("${E:+alt}", "")]
    #[case("${E+alt}", "alt")]
    #[case("${NOPE+alt}", "")]
    #[case("${NOPE:-$A}", "alpha")]
    #[case("${NOPE:-${A}x}", "alphax")]
    #[case("${A?}", "alpha")]
    #[case("${E?}", "")]
    #[case("${A:?msg}", "alpha")]
    #[case(r"${NOPE:-\}}", "}")]
    #[case(r"\$A", "$A")]
    #[case(r"a\ b", "a b")]
    #[case("'$A'", "$A")]
    #[case("\"$A b\"", "alpha b")]
    #[case(r#""a\"b""#, "a\"b")]
    #[case(r#""a\nb""#, r"a\nb")]
    #[case("$", "$")]
    #[case("a$ b", "a$ b")]
    #[case("$.", "$.")]
    #[case("$%", "$%")]
    #[case("$/x", "$/x")]
    #[case("$'A'", "$A")]
    #[case("$SP", "a b")]
    // Names: letters (Unicode ones too), digits, `_`.
    #[case("$A_1", "")]
    #[case("${A}_1", "alpha_1")]
    #[case("$ÉTÉ!", "summer!")]
    fn variables(#[case] input: &str, #[case] want: &str) {
        assert_eq!(expand(input).unwrap(), want, "{input}");
    }

    /// Positional and special parameters: never set, so empty (BuildKit reads every digit,
    /// and one special character).
    #[rstest]
    #[case("$1", "")]
    #[case("he$1x", "hex")]
    #[case("$10x", "x")]
    #[case("$999aaa", "aaa")]
    #[case("${001:-bbb}aaa", "bbbaaa")]
    #[case("$@@@", "@@")]
    #[case("$0", "")]
    #[case("$@", "")]
    #[case("$*", "")]
    #[case("$#", "")]
    #[case("$?", "")]
    #[case("$-", "")]
    #[case("$$", "")]
    #[case("$$$", "$")]
    #[case("$!", "")]
    #[case("$@x", "x")]
    #[case("${1}", "")]
    #[case("${10}", "")]
    #[case("${0}", "")]
    #[case("${@}", "")]
    #[case("${*}", "")]
    #[case("${#}", "")]
    #[case("${#}1", "1")]
    #[case("${?}", "")]
    #[case("${-}", "")]
    #[case("${$}", "")]
    #[case("${!}", "")]
    #[case("${1:-one}", "one")]
    #[case("${1-one}", "one")]
    #[case("${1:+set}", "")]
    #[case("${#:-none}", "none")]
    #[case("${@+set}", "")]
    #[case("${--x}", "x")]
    #[case("${-:-x}", "x")]
    // `${##}` is `#` with the `#` operator (an empty pattern), not a length.
    #[case("${##}", "")]
    #[case("${#%x}", "")]
    #[case("\"$1$@\"", "")]
    // BuildKit also takes an empty name after `${` when an operator follows: never set.
    #[case("${/a/b}", "")]
    #[case("${+x}", "")]
    #[case("${-}", "")]
    fn special_parameters(#[case] input: &str, #[case] want: &str) {
        assert_eq!(expand(input).unwrap(), want, "{input}");
    }

    #[rstest]
    // Shortest and longest prefix and suffix.
    #[case("${V#*.}", "2.3-rc1")]
    #[case("${V##*.}", "3-rc1")]
    #[case("${V%.*}", "1.2")]
    #[case("${V%%.*}", "1")]
    #[case("${V#1}", ".2.3-rc1")]
    #[case("${V%-rc?}", "1.2.3")]
    #[case("${V#?}", ".2.3-rc1")]
    #[case("${V#x}", "1.2.3-rc1")]
    #[case("${V%x}", "1.2.3-rc1")]
    #[case("${V#*}", "1.2.3-rc1")]
    #[case("${V##*}", "")]
    #[case("${V%*}", "1.2.3-rc1")]
    #[case("${V%%*}", "")]
    #[case("${V#}", "1.2.3-rc1")]
    #[case("${V##}", "1.2.3-rc1")]
    #[case("${V%}", "1.2.3-rc1")]
    #[case("${V%%}", "1.2.3-rc1")]
    #[case("${P##*/}", "app.tar.gz")]
    #[case("${P%/*}", "/usr/local/bin")]
    #[case("${P%%.*}", "/usr/local/bin/app")]
    #[case("${P#/usr/}", "local/bin/app.tar.gz")]
    #[case("${P%.tar.gz}", "/usr/local/bin/app")]
    // Unset or empty: nothing to trim.
    #[case("${NOPE#*}", "")]
    #[case("${NOPE%%x}", "")]
    #[case("${E##*}", "")]
    // `\` escapes `*`, `?` and `\`, and gets `}` and `/` through.
    #[case(r"${STARS%%\**}", "xx")]
    #[case(r"${STARS#x\*}", "xx**")]
    #[case(r"${STARS%\*}", "xx*")]
    #[case(r"${RE#()[]{\}^$.\*\?|\\}", "x")]
    #[case(r"${P#\/usr\/}", "local/bin/app.tar.gz")]
    // No bracket expressions: `[` and `]` are literal (BuildKit escapes them).
    #[case("${BR#[ab]}", "c")]
    #[case("${A#[a]}", "alpha")]
    // Quotes do not make wildcards literal (BuildKit); inside double quotes an escape
    // that is not of `"`, `$` or `\` stays, so `"\a"` is a literal backslash and `a`.
    #[case("${V#'1.'}", "2.3-rc1")]
    #[case("${V#\"*.\"}", "2.3-rc1")]
    #[case(r#"${BSV#"\a"}"#, "x")]
    // A pattern from a variable: its wildcards work, a leading `#` means longest.
    #[case("${V#$STAR}", "1.2.3-rc1")]
    #[case("${V##$STAR}", "")]
    #[case("${V#$HX}", "3-rc1")]
    // BuildKit reverses `%` patterns keeping escape pairs: a trailing lone `\` escapes the
    // (reversed) character before it.
    #[case("${STARS%$SB}", "xx*")]
    // Characters, not bytes.
    #[case("${K#한}", "국어")]
    #[case("${K%?}", "한국")]
    #[case("${K#??}", "어")]
    // `*` and `?` do not match a newline (Go's `.`).
    #[case("${NL##*}", "\nb")]
    #[case("${NL%%*}", "a\n")]
    #[case("${NL#?}", "\nb")]
    #[case("${NL#a?}", "a\nb")]
    #[case("${NL#a\n}", "b")]
    #[case("${NOPE:-${V%%.*}}", "1")]
    #[case("${V%%${DOT:-.}*}", "1")]
    fn trimming(#[case] input: &str, #[case] want: &str) {
        assert_eq!(expand(input).unwrap(), want, "{input}");
    }

    #[rstest]
    #[case("${P/bin/sbin}", "/usr/local/sbin/app.tar.gz")]
    #[case("${A/a/A}", "Alpha")]
    #[case("${A//a/A}", "AlphA")]
    #[case("${A/x/y}", "alpha")]
    #[case("${A/a/}", "lpha")]
    #[case("${A//a/}", "lph")]
    // The leftmost match, the longest there.
    #[case("${A/l*/L}", "aL")]
    #[case("${A/?/-}", "-lpha")]
    #[case("${A//?/-}", "-----")]
    #[case("${A//p?/-}", "al-a")]
    #[case(r"${P//\//:}", ":usr:local:bin:app.tar.gz")]
    #[case("${FOO/$NEEDLE/.}", "/foo.*/*.txt")]
    #[case("${FOO//$NEEDLE/.}", "/foo..*.txt")]
    #[case("${K/국/-}", "한-어")]
    #[case("${NL//?/x}", "x\nx")]
    #[case("${NL//*/x}", "x\nx")]
    // `/#` and `/%` do not anchor as in bash: `#` and `%` are literal.
    #[case("${A/#a/x}", "alpha")]
    #[case("${A/%a/x}", "alpha")]
    // Only the second `/` ends the pattern: `}` is part of it.
    #[case("${A/a}/b}", "alpha")]
    // A pattern that matches the empty string replaces it, even in an unset variable
    // (Go's regexp), and `//` replaces the empty string between characters.
    #[case("${NOPE/x/y}", "")]
    #[case("${NOPE/*/y}", "y")]
    #[case("${NOPE//*/y}", "y")]
    #[case("${E/*/y}", "y")]
    #[case("${A///-}", "-a-l-p-h-a-")]
    #[case("${A/$E/-}", "-alpha")]
    #[case("${A//*/-}", "-")]
    // BuildKit keeps escapes in the replacement.
    #[case(r"${A//a/\/}", r"\/lph\/")]
    #[case(r"${A/a/\}}", r"\}lpha")]
    // `//` hands the replacement to Go's ReplaceAllString: `$0` is the match, `$$` a `$`,
    // other references are empty. `/` inserts it as it is.
    #[case("${A//l/<'$0'>}", "a<l>pha")]
    #[case("${A//l/'${0}$$$1'}", "al$pha")]
    #[case("${A/l/<'$0'>}", "a<$0>pha")]
    #[case("${A/l/${V%%.*}}", "a1pha")]
    fn replacing(#[case] input: &str, #[case] want: &str) {
        assert_eq!(expand(input).unwrap(), want, "{input}");
    }

    #[test]
    fn backtick_escape() {
        let w = process("`$A and $A", '`', &vars, &steps()).unwrap();
        assert_eq!(w.plain().unwrap(), "$A and alpha");
        // With the backtick escape a backslash is an ordinary character.
        let w = process(r"C:\dir", '`', &vars, &steps()).unwrap();
        assert_eq!(w.plain().unwrap(), r"C:\dir");
        // In a pattern the escape stays and means nothing to the pattern, whose escape is
        // `\` (BuildKit): `` `* `` is a backtick and a wildcard.
        let w = process("${STARS#`*}", '`', &vars, &steps()).unwrap();
        assert_eq!(w.plain().unwrap(), "xx**");
        let w = process(r"${STARS%%\**}", '`', &vars, &steps()).unwrap();
        assert_eq!(w.plain().unwrap(), "xx");
    }

    #[rstest]
    #[case("${A", "missing `}`")]
    #[case("${", "missing `}`")]
    #[case("${}", "`${}` is not a variable")]
    #[case("${:-x}", "`${:` is not a variable")]
    #[case("${{A}}", "`${{` is not a variable")]
    #[case("${A:=x}", "unsupported modifier `:=`")]
    #[case("${A=x}", "unsupported modifier `=`")]
    #[case("${A:}", "unsupported modifier `:}`")]
    #[case("${A:#x}", "unsupported modifier `:#`")]
    #[case("${A:##x}", "unsupported modifier `:#`")]
    #[case("${A:%x}", "unsupported modifier `:%`")]
    #[case("${A:%%x}", "unsupported modifier `:%`")]
    #[case("${A:/x/y}", "unsupported modifier `:/`")]
    #[case("${A.}", "unsupported modifier `.`")]
    #[case("${ A}", "unsupported modifier ` `")]
    // No length operator: `#` is a special parameter and `A` a modifier.
    #[case("${#A}", "unsupported modifier `A` in `${#A`")]
    #[case("${1a}", "unsupported modifier `a`")]
    #[case("${-x}", "unsupported modifier `x`")]
    #[case("${A/x}", "missing `/`")]
    #[case("${A//}", "missing `/`")]
    #[case("${A//x}", "missing `/`")]
    #[case("${A/x/y", "missing `}`")]
    #[case("${A#x", "missing `}`")]
    #[case("${A:-x", "missing `}`")]
    #[case(
        r"${A#\a}",
        "invalid pattern `\\a` in substitution: invalid escape `\\a`"
    )]
    #[case(r"${A%\q}", "invalid escape `\\q`")]
    #[case(r"${A/\#/x}", "invalid escape `\\#`")]
    #[case("${A#$BS}", "`\\` at the end")]
    #[case("${STARS#$SB}", "`\\` at the end")]
    // An unset variable still has its pattern checked.
    #[case(r"${NOPE#\a}", "invalid pattern")]
    #[case("${NOPE:?is needed}", "NOPE: is needed")]
    #[case("${NOPE?}", "NOPE is required")]
    #[case("${E:?}", "E is required")]
    #[case("'open", "unterminated")]
    #[case("${A#'x}", "unterminated")]
    fn expansion_errors(#[case] input: &str, #[case] want: &str) {
        let err = expand(input).unwrap_err().to_string();
        assert!(err.contains(want), "{input}: {err}");
    }

    #[test]
    fn replacements_stop_at_the_word_limit() {
        let big = "x".repeat(limits::MAX_EXPANDED_BYTES / 2);
        let v = |n: &str| match n {
            "B" => Var::Set(big.clone()),
            _ => Var::Unset,
        };
        // Under the limit a replacement may double the value...
        let w = process("${B//xxxxxxxx/yyyyyyyyyyyyyyyy}", '\\', &v, &steps()).unwrap();
        assert_eq!(w.len(), limits::MAX_EXPANDED_BYTES);
        // ...not triple it, and neither may the empty matches between characters.
        let y24 = "y".repeat(24);
        for word in [format!("${{B//xxxxxxxx/{y24}}}"), format!("${{B///{y24}}}")] {
            let e = process(&word, '\\', &v, &steps()).unwrap_err();
            assert!(matches!(e, ExpandError::Limit(_)), "{word}: {e}");
        }
    }

    #[test]
    fn unknown_variables_become_templates() {
        let w = process(
            "/app/bin:$PATH:${PATH:-/bin}:$A:\\$x",
            '\\',
            &vars,
            &steps(),
        )
        .unwrap();
        assert_eq!(w.unknown(), Some("PATH"));
        assert_eq!(w.plain(), None);
        let t = w.template();
        assert_eq!(t, r"/app/bin:${PATH}:${PATH:-/bin}:alpha:\$x");
        let env = |n: &str| (n == "PATH").then(|| "/usr/bin".to_owned());
        assert_eq!(
            expand_template(&t, &env).unwrap(),
            "/app/bin:/usr/bin:/usr/bin:alpha:$x"
        );
        let none = |_: &str| None;
        assert_eq!(
            expand_template(&t, &none).unwrap(),
            "/app/bin::/bin:alpha:$x"
        );
        assert!(process("${PATH:?x}", '\\', &vars, &steps()).is_err());
    }

    #[rstest]
    #[case("$PATH", &["PATH"])]
    #[case("/x:${PATH:-$HOME}:\\$LIT:$A", &["PATH", "HOME"])]
    #[case("${V#$PREFIX}${PATH}$PATH", &["PREFIX", "PATH"])]
    #[case("${PATH/'${A}'/\\${B}}", &["PATH"])]
    #[case("'$A' $NOPE", &[])]
    fn templates_name_the_variables_they_refer_to(#[case] input: &str, #[case] want: &[&str]) {
        let unknown = |n: &str| match n {
            "HOME" | "PREFIX" => Var::Unknown,
            _ => vars(n),
        };
        let template = process(input, '\\', &unknown, &steps()).unwrap().template();
        assert_eq!(template_references(&template), want, "{template}");
    }

    #[rstest]
    #[case("${PATH%:*}", "${PATH%:*}")]
    #[case("${PATH##*/}", "${PATH##*/}")]
    #[case(r"${PATH//\//:}", r"${PATH//\\\//:}")]
    #[case(r"${PATH:-\}}", r"${PATH:-\}}")]
    #[case("${PATH#\"a b\"}", "${PATH#a b}")]
    // A known value with an unknown pattern carries the value.
    #[case("${V#$PATH}", "${'1.2.3-rc1'#${PATH}}")]
    #[case("${A/l/$PATH}", "${'alpha'/l/${PATH}}")]
    // An empty pattern matches at the start: the replacement, then the value.
    #[case("${PATH/$E/x}", "x${PATH}")]
    #[case("${A/$E/$PATH}", "${PATH}alpha")]
    // Special parameters are empty, not unknown.
    #[case("$PATH$1${#}", "${PATH}")]
    fn pattern_operations_on_unknown_variables_become_templates(
        #[case] input: &str,
        #[case] want: &str,
    ) {
        let w = process(input, '\\', &vars, &steps()).unwrap();
        assert_eq!(w.template(), want, "{input}");
        assert_eq!(w.unknown(), Some("PATH"));
    }

    /// Deferring a reference to the image's environment and finishing it at evaluation
    /// gives what substituting the value at once gives, errors included.
    #[test]
    fn deferred_expansion_matches_immediate_expansion() {
        let words = [
            "$PATH",
            "${PATH}x",
            "${PATH#*/}",
            "${PATH##*/}",
            "${PATH%/*}",
            "${PATH%%/*}",
            "${PATH%%:*}:${PATH#*:}",
            r"${PATH/\//:}",
            r"${PATH//\//:}",
            "${PATH//?/'$0$0'}",
            "${PATH/?/'$0'}",
            r"${PATH:-\}}",
            "${PATH-'x'}",
            "${PATH:+\"$A\"}",
            "${PATH+'}'}",
            "${V#$PATH}",
            "${V%%$PATH}",
            "${V/$PATH/x}",
            "${V//$PATH/$PATH}",
            "${PATH/$E/x}",
            "${PATH//$E/x}",
            "${A/l/${PATH}}",
            "${A//l/${PATH}}",
            "${PATH#\"*/\"}",
            r"${PATH#\}}",
            "${NOPE:-${PATH%%:*}}",
            "${PATH:-${PATH#?}}",
            "$PATH$1${#}",
            "${PATH/'/'/\"}\"}",
            r"${PATH//\\/$}",
            "${PATH///-}",
        ];
        let values = [
            None,
            Some(""),
            Some("/usr/local/bin:/usr/bin"),
            Some("#*/"),
            Some("a}b/c'd\"e\\\\f$g"),
            Some("한/국\n어"),
            Some("\\a"),
        ];
        for word in words {
            for value in values {
                let set = |n: &str| match n {
                    "PATH" => value.map_or(Var::Unset, |v| Var::Set(v.to_owned())),
                    _ => vars(n),
                };
                let now = process(word, '\\', &set, &steps())
                    .map(|w| w.plain().unwrap())
                    .map_err(|e| e.to_string());
                let template = process(word, '\\', &vars, &steps()).unwrap().template();
                let env = |n: &str| match n {
                    "PATH" => value.map(str::to_owned),
                    _ => None,
                };
                let later = expand_template(&template, &env).map_err(|e| e.to_string());
                assert_eq!(
                    later, now,
                    "{word} with PATH={value:?}: template {template}"
                );
            }
        }
    }

    #[rstest]
    #[case("${", "missing `}`")]
    #[case("${'abc", "missing `'`")]
    #[case("${'abc'}", "unsupported modifier `}`")]
    #[case("${'abc':-x}", "unsupported modifier `:`")]
    #[case(r"${X#\\a}", "invalid pattern")]
    fn malformed_templates_fail_at_evaluation(#[case] template: &str, #[case] want: &str) {
        let none = |_: &str| None;
        let e = expand_template(template, &none).unwrap_err().to_string();
        assert!(e.contains(want), "{template}: {e}");
    }

    #[test]
    fn words_split_on_unquoted_whitespace() {
        assert_eq!(
            split_words(r#"a "b c"  d\ e 'f g'"#, '\\').unwrap(),
            ["a", "\"b c\"", r"d\ e", "'f g'"]
        );
        assert!(split_words("\"abc", '\\').is_err());
    }
}
