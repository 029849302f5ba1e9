//! Word processing as Docker does it for instructions other than `RUN`/`CMD`/`ENTRYPOINT`:
//! quote removal, escapes and `$VAR` substitution (`$VAR`, `${VAR}`, `${VAR:-w}`,
//! `${VAR-w}`, `${VAR:+w}`, `${VAR+w}`, `${VAR:?msg}`, `${VAR?msg}`).
//!
//! A variable can be *unknown*: set in the base image's environment, which is not read
//! when a Dockerfile is translated. Such references are kept as a template (see
//! [`Word::template`]) that [`expand_template`] finishes against the image's `Env` when the
//! container is evaluated.

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
    /// The word grew past [`limits::MAX_EXPANDED_BYTES`].
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
            Self::Limit(l) => write!(f, "{l}"),
        }
    }
}

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
        s.chars().for_each(|c| self.push_char(c));
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
    pub(crate) fn template(&self) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(&escape_template(s)),
                Piece::Deferred { template, .. } => out.push_str(template),
            }
        }
        out
    }
}

fn escape_template(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '$' | '\\' | '"' | '\'') {
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

/// Process one word: remove quotes, apply escapes, substitute variables.
pub(crate) fn process(
    word: &str,
    escape: char,
    vars: &dyn Fn(&str) -> Var,
) -> Result<Word, ExpandError> {
    let chars: Vec<char> = word.chars().collect();
    let mut p = Processor {
        chars: &chars,
        pos: 0,
        escape,
        vars,
        quotes: true,
    };
    p.run(None)
}

/// Substitute variables in text where quotes are ordinary characters (heredoc bodies).
pub(crate) fn process_unquoted(
    text: &str,
    escape: char,
    vars: &dyn Fn(&str) -> Var,
) -> Result<Word, ExpandError> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = Processor {
        chars: &chars,
        pos: 0,
        escape,
        vars,
        quotes: false,
    };
    p.run(None)
}

/// Finish a template made by [`Word::template`] against an image's environment.
pub(crate) fn expand_template(template: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let chars: Vec<char> = template.chars().collect();
    let vars = |n: &str| env(n).map_or(Var::Unset, Var::Set);
    let mut p = Processor {
        chars: &chars,
        pos: 0,
        escape: '\\',
        vars: &vars,
        quotes: false,
    };
    // Templates are made by `Word::template`, which never defers `?` references, so the
    // only failures are malformed input; keep such text literal.
    match p.run(None) {
        Ok(w) => w.plain().unwrap_or_default(),
        Err(_) => template.to_owned(),
    }
}

struct Processor<'a> {
    chars: &'a [char],
    pos: usize,
    escape: char,
    vars: &'a dyn Fn(&str) -> Var,
    /// Whether `'` and `"` are quotes (false for templates, where they are escaped).
    quotes: bool,
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

    /// Process until `stop` (not consumed) or the end.
    fn run(&mut self, stop: Option<char>) -> Result<Word, ExpandError> {
        let mut w = Word::default();
        while let Some(c) = self.peek() {
            if w.len() > limits::MAX_EXPANDED_BYTES {
                return Err(ExpandError::Limit(LimitExceeded::new(
                    "the word after variable substitution",
                    limits::MAX_EXPANDED_BYTES as u64,
                    "bytes",
                )));
            }
            if Some(c) == stop {
                return Ok(w);
            }
            self.pos += 1;
            if c == self.escape {
                match self.next() {
                    Some(n) => w.push_char(n),
                    None => w.push_char(c),
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
                        Some(n) if n == self.escape => match self.peek() {
                            Some(m) if m == '"' || m == '$' || m == self.escape => {
                                self.pos += 1;
                                w.push_char(m);
                            }
                            _ => w.push_char(n),
                        },
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
        if stop.is_some() {
            return Err(ExpandError::Syntax("missing `}`".to_owned()));
        }
        if w.len() > limits::MAX_EXPANDED_BYTES {
            return Err(ExpandError::Limit(LimitExceeded::new(
                "the word after variable substitution",
                limits::MAX_EXPANDED_BYTES as u64,
                "bytes",
            )));
        }
        Ok(w)
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    /// After a `$`.
    fn dollar(&mut self) -> Result<Word, ExpandError> {
        let mut w = Word::default();
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let name = self.name();
                if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(ExpandError::Syntax(format!(
                        "`${{{name}` is not a variable"
                    )));
                }
                let var = (self.vars)(&name);
                match self.next() {
                    Some('}') => match var {
                        Var::Set(v) => w.push_str(&v),
                        Var::Unset => {}
                        Var::Unknown => {
                            let template = format!("${{{name}}}");
                            w.push_deferred(name, template);
                        }
                    },
                    Some(c @ (':' | '-' | '+' | '?')) => {
                        let colon = c == ':';
                        let op = if colon {
                            match self.next() {
                                Some(o @ ('-' | '+' | '?')) => o,
                                other => {
                                    return Err(ExpandError::Syntax(format!(
                                        "unsupported modifier `:{}` for {name}",
                                        other.map(String::from).unwrap_or_default()
                                    )));
                                }
                            }
                        } else {
                            c
                        };
                        let arg = self.run(Some('}'))?;
                        self.pos += 1; // the `}`
                        let (set, nonempty) = match &var {
                            Var::Set(v) => (true, !v.is_empty()),
                            Var::Unset => (false, false),
                            Var::Unknown => {
                                if op == '?' {
                                    return Err(ExpandError::Syntax(format!(
                                        "`${{{name}{}?}}` refers to the base image's \
                                         environment, which is not known here",
                                        if colon { ":" } else { "" }
                                    )));
                                }
                                let template = format!(
                                    "${{{name}{}{op}{}}}",
                                    if colon { ":" } else { "" },
                                    arg.template()
                                );
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
                    }
                    _ => {
                        return Err(ExpandError::Syntax(format!("missing `}}` after ${{{name}")));
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                match (self.vars)(&name) {
                    Var::Set(v) => w.push_str(&v),
                    Var::Unset => {}
                    Var::Unknown => {
                        let template = format!("${{{name}}}");
                        w.push_deferred(name, template);
                    }
                }
            }
            _ => w.push_char('$'),
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn vars(name: &str) -> Var {
        match name {
            "A" => Var::Set("alpha".into()),
            "E" => Var::Set(String::new()),
            "SP" => Var::Set("a b".into()),
            "PATH" => Var::Unknown,
            _ => Var::Unset,
        }
    }

    fn expand(s: &str) -> Result<String, ExpandError> {
        Ok(process(s, '\\', &vars)?
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
    #[case(r"\$A", "$A")]
    #[case(r"a\ b", "a b")]
    #[case("'$A'", "$A")]
    #[case("\"$A b\"", "alpha b")]
    #[case(r#""a\"b""#, "a\"b")]
    #[case(r#""a\nb""#, r"a\nb")]
    #[case("$", "$")]
    #[case("a$ b", "a$ b")]
    #[case("$SP", "a b")]
    fn expansion(#[case] input: &str, #[case] want: &str) {
        assert_eq!(expand(input).unwrap(), want, "{input}");
    }

    #[test]
    fn backtick_escape() {
        let w = process("`$A and $A", '`', &vars).unwrap();
        assert_eq!(w.plain().unwrap(), "$A and alpha");
        // With the backtick escape a backslash is an ordinary character.
        let w = process(r"C:\dir", '`', &vars).unwrap();
        assert_eq!(w.plain().unwrap(), r"C:\dir");
    }

    #[rstest]
    #[case("${A", "missing")]
    #[case("${A:=x}", "modifier")]
    #[case("${NOPE:?is needed}", "NOPE: is needed")]
    #[case("${NOPE?}", "NOPE is required")]
    #[case("'open", "unterminated")]
    fn expansion_errors(#[case] input: &str, #[case] want: &str) {
        let err = expand(input).unwrap_err().to_string();
        assert!(err.contains(want), "{input}: {err}");
    }

    #[test]
    fn unknown_variables_become_templates() {
        let w = process("/app/bin:$PATH:${PATH:-/bin}:$A:\\$x", '\\', &vars).unwrap();
        assert_eq!(w.unknown(), Some("PATH"));
        assert_eq!(w.plain(), None);
        let t = w.template();
        assert_eq!(t, r"/app/bin:${PATH}:${PATH:-/bin}:alpha:\$x");
        let env = |n: &str| (n == "PATH").then(|| "/usr/bin".to_owned());
        assert_eq!(
            expand_template(&t, &env),
            "/app/bin:/usr/bin:/usr/bin:alpha:$x"
        );
        let none = |_: &str| None;
        assert_eq!(expand_template(&t, &none), "/app/bin::/bin:alpha:$x");
        assert!(process("${PATH:?x}", '\\', &vars).is_err());
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
