//! The patterns of `${VAR#pattern}`, `${VAR%pattern}` and `${VAR/pattern/string}`, matched
//! as BuildKit matches them.
//!
//! BuildKit turns a pattern into a Go regular expression: `*` becomes `.*` (`.*?` for the
//! shortest match), `?` becomes `.`, and every other character is literal. `\` escapes `*`,
//! `?` and `\`; before `}` or `/` (escaped to get them through `${...}`) it is dropped; any
//! other escape is an error. There are no bracket expressions: BuildKit's converter escapes
//! `[` and `]`, so `[ab]` matches those four characters, and the same holds here. Go's `.`
//! does not match a newline, so neither `*` nor `?` does. Matching is on characters.
//!
//! Instead of a regular expression engine, a pattern runs as a bit-parallel automaton
//! (one bit per pattern position), which bounds the work by the value's length times the
//! pattern's. A pattern is a plain sequence of stars and single characters, so at a given
//! start Go's lazy preference gives the shortest match and its greedy preference the
//! longest; the tests check this against a backtracking matcher with Go's preferences.

use std::cell::Cell;
use std::collections::HashMap;

use super::{ExpandError, too_long};
use crate::limits::{self, LimitExceeded};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Atom {
    Lit(char),
    /// `?`: one character, not a newline.
    Any,
    /// `*`: any run of characters without a newline.
    Star,
}

/// Parse `pattern` with BuildKit's rules.
fn parse(pattern: &str) -> Result<Vec<Atom>, ExpandError> {
    let invalid = |reason: String| ExpandError::Pattern {
        pattern: pattern.to_owned(),
        reason,
    };
    let mut atoms = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let atom = match c {
            '*' => Atom::Star,
            '?' => Atom::Any,
            '\\' => match chars.peek() {
                Some('}' | '/') => continue,
                Some(&n @ ('*' | '?' | '\\')) => {
                    chars.next();
                    Atom::Lit(n)
                }
                Some(n) => return Err(invalid(format!("invalid escape `\\{n}`"))),
                None => return Err(invalid("`\\` at the end".to_owned())),
            },
            c => Atom::Lit(c),
        };
        // `**` matches what `*` matches; one star keeps the automaton simple.
        if !(atom == Atom::Star && atoms.last() == Some(&Atom::Star)) {
            atoms.push(atom);
        }
    }
    Ok(atoms)
}

/// BuildKit's reversal of a pattern for suffix matching: characters in reverse order, an
/// escape staying in front of the character it escapes (a lone `\` at the end moves to the
/// front, so `*\` reversed is `\*`, as in BuildKit).
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut units = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let n = if chars[i] == '\\' && i + 1 < chars.len() {
            2
        } else {
            1
        };
        units.push(&chars[i..i + n]);
        i += n;
    }
    units.into_iter().rev().flatten().collect()
}

/// Take `n` steps from the budget.
fn charge(steps: &Cell<u64>, n: u64) -> Result<(), ExpandError> {
    let left = steps.get();
    if left < n {
        steps.set(0);
        return Err(ExpandError::Limit(LimitExceeded::new(
            "the work matching variable substitution patterns",
            limits::MAX_PATTERN_STEPS,
            "steps",
        )));
    }
    steps.set(left - n);
    Ok(())
}

/// The pattern as a nondeterministic automaton: state `i` means the first `i` atoms have
/// matched; state `atoms.len()` accepts. Sets of states are bit sets.
struct Automaton {
    /// Index of the accepting state.
    accept: usize,
    words: usize,
    /// For each character in the pattern, the states it advances (its literals, and `?`
    /// unless it is a newline); ASCII ones also by code, to skip hashing.
    advance: HashMap<char, Vec<u64>>,
    ascii: Vec<Option<Vec<u64>>>,
    /// The states any other character except a newline advances (`?`).
    any: Vec<u64>,
    /// `*` states: they stay on any character except a newline and also hold the next state.
    star: Vec<u64>,
    /// State 0 and what it holds without reading anything.
    start: Vec<u64>,
}

impl Automaton {
    fn new(atoms: &[Atom]) -> Self {
        let words = atoms.len() / 64 + 1;
        let set = |bits: &mut Vec<u64>, i: usize| bits[i / 64] |= 1 << (i % 64);
        let mut any = vec![0; words];
        let mut star = vec![0; words];
        for (i, a) in atoms.iter().enumerate() {
            match a {
                Atom::Any => set(&mut any, i),
                Atom::Star => set(&mut star, i),
                Atom::Lit(_) => {}
            }
        }
        let mut advance = HashMap::new();
        for (i, a) in atoms.iter().enumerate() {
            if let Atom::Lit(c) = *a {
                let bits = advance.entry(c).or_insert_with(|| {
                    if c == '\n' {
                        vec![0; words]
                    } else {
                        any.clone()
                    }
                });
                set(bits, i);
            }
        }
        let ascii = (0..128u8)
            .map(|b| advance.get(&char::from(b)).cloned())
            .collect();
        let mut a = Self {
            accept: atoms.len(),
            words,
            advance,
            ascii,
            any,
            star,
            start: vec![0; words],
        };
        let mut start = vec![0; words];
        start[0] = 1;
        a.close(&mut start);
        a.start = start;
        a
    }

    /// Add the states after `*` states (a star may match nothing). Consecutive stars are
    /// merged, so one pass is enough.
    fn close(&self, set: &mut [u64]) {
        let mut carry = 0;
        for (w, s) in set.iter_mut().zip(&self.star) {
            let stars = *w & s;
            *w |= (stars << 1) | carry;
            carry = stars >> 63;
        }
    }

    /// The states after reading `c` from the states `cur`.
    fn step(&self, cur: &[u64], c: char, out: &mut [u64]) {
        let newline = c == '\n';
        let known = match self.ascii.get(c as usize) {
            Some(bits) => bits.as_ref(),
            None => self.advance.get(&c),
        };
        let advance = match known {
            Some(bits) => Some(bits),
            None if newline => None,
            None => Some(&self.any),
        };
        let mut carry = 0;
        for w in 0..self.words {
            let moved = advance.map_or(0, |bits| cur[w] & bits[w]);
            let stay = if newline { 0 } else { cur[w] & self.star[w] };
            out[w] = (moved << 1) | carry | stay;
            carry = moved >> 63;
        }
        self.close(out);
    }

    fn accepts(&self, set: &[u64]) -> bool {
        set[self.accept / 64] & (1 << (self.accept % 64)) != 0
    }

    /// End of the shortest (or longest) prefix of `text` that matches.
    fn prefix(
        &self,
        text: &[char],
        longest: bool,
        steps: &Cell<u64>,
    ) -> Result<Option<usize>, ExpandError> {
        let mut cur = self.start.clone();
        let mut next = vec![0; self.words];
        let mut found = None;
        if self.accepts(&cur) {
            if !longest {
                return Ok(Some(0));
            }
            found = Some(0);
        }
        for (i, &c) in text.iter().enumerate() {
            charge(steps, self.words as u64)?;
            self.step(&cur, c, &mut next);
            std::mem::swap(&mut cur, &mut next);
            if cur.iter().all(|w| *w == 0) {
                break;
            }
            if self.accepts(&cur) {
                if !longest {
                    return Ok(Some(i + 1));
                }
                found = Some(i + 1);
            }
        }
        Ok(found)
    }

    /// Run over `text` backwards, starting anew at every position; for an automaton of the
    /// reversed pattern, `starts[i]` then says whether a match of the pattern starts at `i`.
    fn starts_reversed(&self, text: &[char], steps: &Cell<u64>) -> Result<Vec<bool>, ExpandError> {
        let mut starts = vec![false; text.len() + 1];
        let mut cur = self.start.clone();
        let mut next = vec![0; self.words];
        starts[text.len()] = self.accepts(&cur);
        for i in (0..text.len()).rev() {
            charge(steps, self.words as u64)?;
            self.step(&cur, text[i], &mut next);
            for (n, s) in next.iter_mut().zip(&self.start) {
                *n |= s;
            }
            std::mem::swap(&mut cur, &mut next);
            starts[i] = self.accepts(&cur);
        }
        Ok(starts)
    }
}

/// `${VAR#pattern}` (shortest) and `${VAR##pattern}` (longest): `value` without the matching
/// prefix.
pub(super) fn trim_prefix(
    value: &str,
    pattern: &str,
    longest: bool,
    steps: &Cell<u64>,
) -> Result<String, ExpandError> {
    let a = Automaton::new(&parse(pattern)?);
    let text: Vec<char> = value.chars().collect();
    Ok(match a.prefix(&text, longest, steps)? {
        Some(end) => text[end..].iter().collect(),
        None => value.to_owned(),
    })
}

/// `${VAR%pattern}` (shortest) and `${VAR%%pattern}` (longest): `value` without the matching
/// suffix. Like BuildKit, this is a prefix match of the reversed pattern on the reversed value.
pub(super) fn trim_suffix(
    value: &str,
    pattern: &str,
    longest: bool,
    steps: &Cell<u64>,
) -> Result<String, ExpandError> {
    let a = Automaton::new(&parse(&reverse_pattern(pattern))?);
    let text: Vec<char> = value.chars().rev().collect();
    Ok(match a.prefix(&text, longest, steps)? {
        Some(len) => text[len..].iter().rev().collect(),
        None => value.to_owned(),
    })
}

/// `${VAR/pattern/string}` (`all` false: the first match) and `${VAR//pattern/string}`
/// (every match). A match is the leftmost, and the longest there, as Go's regexp finds it
/// for BuildKit's greedy pattern.
pub(super) fn replace(
    value: &str,
    pattern: &str,
    replacement: &str,
    all: bool,
    steps: &Cell<u64>,
) -> Result<String, ExpandError> {
    let atoms = parse(pattern)?;
    let forward = Automaton::new(&atoms);
    let reversed: Vec<Atom> = atoms.iter().rev().copied().collect();
    let text: Vec<char> = value.chars().collect();
    let starts = Automaton::new(&reversed).starts_reversed(&text, steps)?;
    let next_start = |from: usize| (from..=text.len()).find(|&i| starts[i]);
    let mut out = String::new();
    let push = |out: &mut String, s: &[char]| {
        out.extend(s);
        if out.len() > limits::MAX_EXPANDED_BYTES {
            return Err(too_long());
        }
        Ok(())
    };
    let matched = |s: usize| -> Result<usize, ExpandError> {
        let len = forward.prefix(&text[s..], true, steps)?;
        Ok(s + len.expect("a match starts here"))
    };
    if !all {
        let Some(s) = next_start(0) else {
            return Ok(value.to_owned());
        };
        let e = matched(s)?;
        let repl: Vec<char> = replacement.chars().collect();
        push(&mut out, &text[..s])?;
        push(&mut out, &repl)?;
        push(&mut out, &text[e..])?;
        return Ok(out);
    }
    // Go's Regexp.ReplaceAllString: after a match, search on from its end; an empty match
    // right after a match is not replaced; always move on by at least a character.
    let plain: Option<Vec<char>> =
        (!replacement.contains('$')).then(|| replacement.chars().collect());
    let (mut last_end, mut search) = (0, 0);
    while search <= text.len() {
        let Some(s) = next_start(search) else {
            break;
        };
        let e = matched(s)?;
        push(&mut out, &text[last_end..s])?;
        if e > last_end || s == 0 {
            match &plain {
                Some(r) => push(&mut out, r)?,
                None => {
                    let r: Vec<char> = go_expand(replacement, &text[s..e]).chars().collect();
                    push(&mut out, &r)?;
                }
            }
        }
        last_end = e;
        search = if search + 1 > e { search + 1 } else { e };
    }
    push(&mut out, &text[last_end..])?;
    Ok(out)
}

/// The replacement as Go's `Regexp.ReplaceAllString` reads it, which BuildKit uses for `//`:
/// `$$` is `$`; `$0` and `${0}` are the match; any other `$name` or `${name}` is empty (the
/// pattern has no groups); a `$` without a name after it stays.
fn go_expand(template: &str, matched: &[char]) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (brace, body) = match rest.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let len: usize = body
            .chars()
            .take_while(|c| super::is_name_char(*c))
            .map(char::len_utf8)
            .sum();
        let name = &body[..len];
        let after = &body[len..];
        let after = if brace {
            after.strip_prefix('}')
        } else {
            Some(after)
        };
        match after {
            Some(after) if !name.is_empty() => {
                if name == "0" {
                    out.extend(matched);
                }
                rest = after;
            }
            _ => out.push('$'),
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn steps() -> Cell<u64> {
        Cell::new(limits::MAX_PATTERN_STEPS)
    }

    #[rstest]
    #[case("*.tar.gz", vec![Atom::Star, Atom::Lit('.'), Atom::Lit('t'), Atom::Lit('a'), Atom::Lit('r'), Atom::Lit('.'), Atom::Lit('g'), Atom::Lit('z')])]
    #[case("a**?", vec![Atom::Lit('a'), Atom::Star, Atom::Any])]
    #[case(r"\*\?\\", vec![Atom::Lit('*'), Atom::Lit('?'), Atom::Lit('\\')])]
    #[case(r"\}\/", vec![Atom::Lit('}'), Atom::Lit('/')])]
    // No bracket expressions: BuildKit's converter escapes `[` and `]`.
    #[case("[ab]", vec![Atom::Lit('['), Atom::Lit('a'), Atom::Lit('b'), Atom::Lit(']')])]
    #[case("", vec![])]
    fn patterns_parse_as_buildkit_converts_them(#[case] p: &str, #[case] want: Vec<Atom>) {
        assert_eq!(parse(p).unwrap(), want);
    }

    #[rstest]
    #[case(r"\a", "invalid escape `\\a`")]
    #[case(r"a\", "`\\` at the end")]
    #[case(r"\#", "invalid escape `\\#`")]
    fn bad_escapes_are_errors(#[case] p: &str, #[case] want: &str) {
        let e = parse(p).unwrap_err().to_string();
        assert!(e.contains(want), "{p}: {e}");
    }

    #[rstest]
    #[case("abc", "cba")]
    #[case(r"a\*c", r"c\*a")]
    #[case(r"*\", r"\*")]
    #[case(r"\\*", r"*\\")]
    fn patterns_reverse_keeping_escapes(#[case] p: &str, #[case] want: &str) {
        assert_eq!(reverse_pattern(p), want);
    }

    #[rstest]
    #[case("", "")]
    #[case("$$", "$")]
    #[case("<$0>", "<ab>")]
    #[case("<${0}>", "<ab>")]
    #[case("$1$x${x}$00", "")]
    #[case("$", "$")]
    #[case("$.", "$.")]
    #[case("${0", "${0")]
    #[case("${}", "${}")]
    fn replacements_expand_as_go_does(#[case] t: &str, #[case] want: &str) {
        assert_eq!(go_expand(t, &['a', 'b']), want, "{t}");
    }

    #[test]
    fn long_replacements_stop_at_the_word_limit() {
        let value = "x".repeat(1000);
        let r = "y".repeat(2000);
        let e = replace(&value, "?", &r, true, &steps()).unwrap_err();
        assert!(matches!(e, ExpandError::Limit(_)), "{e}");
    }

    #[test]
    fn matching_stops_when_the_step_budget_is_spent() {
        // A pattern of 130 atoms is 3 words a step: 10 characters spend 30 steps.
        let pattern = format!("{}b", "*a".repeat(65));
        let budget = Cell::new(40);
        let e = trim_prefix(&"a".repeat(20), &pattern, true, &budget).unwrap_err();
        assert!(e.to_string().contains("steps"), "{e}");
        // The budget is shared: once spent, the next pattern fails too.
        assert!(trim_prefix("abc", "a", false, &budget).is_err());
        let budget = Cell::new(40);
        assert_eq!(
            trim_prefix(&"a".repeat(10), &pattern, true, &budget).unwrap(),
            "a".repeat(10)
        );
        assert_eq!(budget.get(), 10);
    }

    /// Go's leftmost-first preference by backtracking: `*` tries its longest run first when
    /// greedy, its shortest when lazy; `*` and `?` never take a newline.
    fn backtrack(atoms: &[Atom], text: &[char], pos: usize, greedy: bool) -> Option<usize> {
        let Some((first, rest)) = atoms.split_first() else {
            return Some(pos);
        };
        match first {
            Atom::Lit(c) => (text.get(pos) == Some(c))
                .then(|| backtrack(rest, text, pos + 1, greedy))
                .flatten(),
            Atom::Any => text
                .get(pos)
                .is_some_and(|c| *c != '\n')
                .then(|| backtrack(rest, text, pos + 1, greedy))
                .flatten(),
            Atom::Star => {
                let run = text[pos..].iter().take_while(|c| **c != '\n').count();
                let mut lens: Vec<usize> = (0..=run).collect();
                if greedy {
                    lens.reverse();
                }
                lens.into_iter()
                    .find_map(|k| backtrack(rest, text, pos + k, greedy))
            }
        }
    }

    #[test]
    fn the_automaton_agrees_with_go_preferences() {
        // A small linear congruential generator: the same cases on every run.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % n
        };
        for _ in 0..20_000 {
            let atoms: Vec<Atom> = (0..next(6))
                .map(|_| match next(6) {
                    0 | 1 => Atom::Star,
                    2 => Atom::Any,
                    3 => Atom::Lit('\n'),
                    4 => Atom::Lit('b'),
                    _ => Atom::Lit('a'),
                })
                .collect();
            let mut merged = atoms.clone();
            merged.dedup_by(|a, b| *a == Atom::Star && *b == Atom::Star);
            let text: Vec<char> = (0..next(9))
                .map(|_| ['a', 'b', '\n', 'é'][next(4)])
                .collect();
            let a = Automaton::new(&merged);
            let budget = steps();
            for longest in [false, true] {
                assert_eq!(
                    a.prefix(&text, longest, &budget).unwrap(),
                    backtrack(&atoms, &text, 0, longest),
                    "{atoms:?} {text:?} longest={longest}"
                );
            }
            let reversed: Vec<Atom> = merged.iter().rev().copied().collect();
            let starts = Automaton::new(&reversed)
                .starts_reversed(&text, &budget)
                .unwrap();
            for (s, &starts_here) in starts.iter().enumerate() {
                let found = backtrack(&atoms, &text, s, true);
                assert_eq!(starts_here, found.is_some(), "{atoms:?} {text:?} at {s}");
                if let Some(e) = found {
                    assert_eq!(a.prefix(&text[s..], true, &budget).unwrap(), Some(e - s));
                }
            }
        }
    }
}
