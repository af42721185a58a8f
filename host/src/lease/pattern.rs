//! Glob patterns over lease targets, and the one engine that both matches and compares them.
//!
//! | pattern | meaning                                                     |
//! |---------|-------------------------------------------------------------|
//! | `abc`   | the literal text `abc`                                      |
//! | `*`     | any run of characters except `/` (possibly empty)           |
//! | `**`    | any run of characters including `/` (possibly empty)        |
//! | `\x`    | the literal character `x` (so `\*` is a star, `\\` a slash) |
//!
//! The empty pattern, a trailing `\` and runs of three or more stars are rejected.
//!
//! Why one engine: a lease is only safe if "is this child's grant within its parent's?" is
//! **sound** — when it answers yes, every target the child can reach, the parent could reach. The
//! easiest way to keep matching and subset-testing from drifting apart is to make them the same
//! code: matching `target` against `p` is asking whether the pattern made of `target`'s literal
//! characters is a subset of `p`. The engine (`covers`) simulates `other` as an NFA whose
//! input symbols are `self`'s *tokens*: `other`'s `**` may absorb any token, `other`'s `*` may
//! absorb literals other than `/` and `self`'s `*` (never `self`'s `**`), and `other`'s literal
//! absorbs only the same literal. Each absorption is a language inclusion, so an accepting run
//! proves the whole inclusion; a missed proof is only a false "no" (e.g. `a*` vs `a**` proves
//! fine, but exotic splits of one `*` across several of `other`'s wildcards are not tried).
//! Unlike ARCP's reference matcher, `a*b*c` is correctly *not* a superset of `a*c`.
//!
//! Cost: the NFA state set is a bitset on the stack (patterns are capped at
//! [`MAX_PATTERN_TOKENS`] tokens), so a check allocates nothing and is linear in the target.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest pattern accepted, in tokens. Bounds the engine's stack bitset.
pub const MAX_PATTERN_TOKENS: usize = 1023;
const WORDS: usize = (MAX_PATTERN_TOKENS + 1).div_ceil(64);

/// Why a pattern (glob or URL) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty; use `**` to mean every target")]
    Empty,
    #[error("`***` is ambiguous; use `*` (within one path segment) or `**` (across segments)")]
    TripleStar,
    #[error("the pattern ends with an unfinished escape `\\`; write `\\\\` for a literal backslash")]
    TrailingEscape,
    #[error("the pattern is longer than {MAX_PATTERN_TOKENS} characters")]
    TooLong,
    #[error("{0}")]
    Url(String),
}

/// One unit of a compiled pattern (or of a target, whose characters are all literals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    Lit(char),
    Star,
    DoubleStar,
}

/// A compiled glob over target strings (see the module docs for the grammar).
#[derive(Clone)]
pub struct Pattern {
    source: String,
    tokens: Box<[Tok]>,
}

impl Pattern {
    /// Compile `source`.
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut tokens = Vec::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped) => tokens.push(Tok::Lit(escaped)),
                    None => return Err(PatternError::TrailingEscape),
                },
                '*' => {
                    let mut run = 1;
                    while chars.next_if_eq(&'*').is_some() {
                        run += 1;
                    }
                    match run {
                        1 => tokens.push(Tok::Star),
                        2 => tokens.push(Tok::DoubleStar),
                        _ => return Err(PatternError::TripleStar),
                    }
                }
                other => tokens.push(Tok::Lit(other)),
            }
            if tokens.len() > MAX_PATTERN_TOKENS {
                return Err(PatternError::TooLong);
            }
        }
        Ok(Pattern { source: source.to_owned(), tokens: tokens.into_boxed_slice() })
    }

    /// The pattern that matches every target: `**`.
    pub fn any() -> Pattern {
        Pattern { source: "**".to_owned(), tokens: Box::new([Tok::DoubleStar]) }
    }

    /// `/**`: every absolute path (the default path of a URL pattern).
    pub fn any_path() -> Pattern {
        Pattern { source: "/**".to_owned(), tokens: Box::new([Tok::Lit('/'), Tok::DoubleStar]) }
    }

    /// The text this pattern was compiled from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Does `target` match? Allocation-free; linear in `target`'s length.
    pub fn matches(&self, target: &str) -> bool {
        covers(&self.tokens, target.chars().map(Tok::Lit))
    }

    /// Sound subset test: `true` guarantees every string `self` matches, `other` matches too.
    /// `false` may (rarely, for exotic wildcard splits) be a false negative.
    pub fn is_subset_of(&self, other: &Pattern) -> bool {
        covers(&other.tokens, self.tokens.iter().copied())
    }
}

/// The engine: can `sup` absorb the token sequence `sub`, token by token?
///
/// `sup` is run as an NFA; state `j` means "`sup[..j]` has absorbed what was read so far".
/// A wildcard at `j` may also absorb nothing (epsilon to `j + 1`) or loop on what it accepts.
fn covers(sup: &[Tok], sub: impl Iterator<Item = Tok>) -> bool {
    let used = sup.len() / 64 + 1;
    let (mut a, mut b) = ([0u64; WORDS], [0u64; WORDS]);
    // Swap the references, not the arrays, after each step.
    let (mut current, mut next) = (&mut a, &mut b);
    enter(current, sup, 0);
    for tok in sub {
        next.iter_mut().take(used).for_each(|w| *w = 0);
        let mut alive = false;
        for (wi, &word) in current.iter().take(used).enumerate() {
            let mut bits = word;
            while bits != 0 {
                let j = wi * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let step = match sup.get(j) {
                    Some(Tok::Lit(c)) if tok == Tok::Lit(*c) => Some(j + 1),
                    Some(Tok::Star) if star_absorbs(tok) => Some(j),
                    Some(Tok::DoubleStar) => Some(j),
                    _ => None,
                };
                if let Some(to) = step {
                    enter(next, sup, to);
                    alive = true;
                }
            }
        }
        if !alive {
            return false;
        }
        std::mem::swap(&mut current, &mut next);
    }
    contains(current, sup.len())
}

/// A single `*` absorbs any non-`/` character and another `*`, but never a `**`.
fn star_absorbs(tok: Tok) -> bool {
    match tok {
        Tok::Lit(c) => c != '/',
        Tok::Star => true,
        Tok::DoubleStar => false,
    }
}

/// Add state `j` and its epsilon closure (wildcards may absorb nothing).
fn enter(set: &mut [u64; WORDS], sup: &[Tok], mut j: usize) {
    loop {
        if let Some(word) = set.get_mut(j / 64) {
            *word |= 1u64 << (j % 64);
        }
        match sup.get(j) {
            Some(Tok::Star | Tok::DoubleStar) => j += 1,
            _ => return,
        }
    }
}

fn contains(set: &[u64; WORDS], j: usize) -> bool {
    set.get(j / 64).is_some_and(|w| w & (1u64 << (j % 64)) != 0)
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.tokens == other.tokens
    }
}

impl Eq for Pattern {}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Pattern::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn literal_matches_only_itself() {
        assert!(p("counter").matches("counter"));
        assert!(!p("counter").matches("counters"));
        assert!(!p("counter").matches("counte"));
        assert!(!p("counter").matches(""));
    }

    #[test]
    fn star_stays_within_one_segment() {
        assert!(p("a/*").matches("a/b"));
        assert!(p("a/*").matches("a/"));
        assert!(!p("a/*").matches("a/b/c"));
        assert!(p("*").matches(""));
        assert!(!p("*").matches("a/b"));
        assert!(p("a*c").matches("abbbc"));
        assert!(!p("a*c").matches("ab/c"));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(p("**").matches(""));
        assert!(p("**").matches("a/b/c"));
        assert!(p("a/**").matches("a/b/c"));
        assert!(p("a/**/z").matches("a/b/c/z"));
        assert!(p("a/**/z").matches("a//z"));
        assert!(!p("a/**").matches("b/c"));
    }

    #[test]
    fn escapes_make_wildcards_literal() {
        assert!(p(r"a\*").matches("a*"));
        assert!(!p(r"a\*").matches("ab"));
        assert!(p(r"a\\b").matches(r"a\b"));
        assert!(p(r"\*").is_subset_of(&p("*")));
        assert!(!p("*").is_subset_of(&p(r"\*")));
    }

    #[test]
    fn invalid_patterns_are_rejected_with_a_reason() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("a/***"), Err(PatternError::TripleStar));
        assert_eq!(Pattern::parse("****"), Err(PatternError::TripleStar));
        assert_eq!(Pattern::parse(r"a\"), Err(PatternError::TrailingEscape));
        let long = "a".repeat(MAX_PATTERN_TOKENS + 1);
        assert_eq!(Pattern::parse(&long), Err(PatternError::TooLong));
        assert!(Pattern::parse(&"a".repeat(MAX_PATTERN_TOKENS)).is_ok());
    }

    #[test]
    fn long_patterns_use_every_word_of_the_state_set() {
        let mut source = "x".repeat(200);
        source.push_str("/**");
        let long = p(&source);
        let mut target = "x".repeat(200);
        target.push_str("/deep/er");
        assert!(long.matches(&target));
        assert!(!long.matches(&target[1..]));
        assert!(long.is_subset_of(&p("x*/**")));
    }

    #[test]
    fn subset_common_cases_are_proved() {
        assert!(p("counter/a").is_subset_of(&p("counter/*")));
        assert!(p("a/*").is_subset_of(&p("a/**")));
        assert!(p("a/b*").is_subset_of(&p("a/*")));
        assert!(p("a/b/c*").is_subset_of(&p("a/**")));
        assert!(p("*").is_subset_of(&p("**")));
        assert!(p("a/**").is_subset_of(&p("**")));
        assert!(p("a*").is_subset_of(&p("*")));
        assert!(p("x").is_subset_of(&p("x")));
        assert!(p("a*b").is_subset_of(&p("a*")));
    }

    #[test]
    fn subset_refuses_wider_patterns() {
        assert!(!p("a/b").is_subset_of(&p("*")));
        assert!(!p("a/**").is_subset_of(&p("a/*")));
        assert!(!p("**").is_subset_of(&p("*")));
        assert!(!p("a*").is_subset_of(&p("a")));
        assert!(!p("counter/*").is_subset_of(&p("counter/a")));
        assert!(!p("a").is_subset_of(&p("b")));
    }

    #[test]
    fn a_star_b_star_c_is_not_a_superset_of_a_star_c() {
        // `a*c` matches "ac", which `a*b*c` does not.
        assert!(!p("a*c").is_subset_of(&p("a*b*c")));
        assert!(p("a*c").matches("ac"));
        assert!(!p("a*b*c").matches("ac"));
        // The converse holds.
        assert!(p("a*b*c").is_subset_of(&p("a*c")));
    }

    #[test]
    fn pattern_serializes_as_its_source_text() {
        let pattern = p(r"counter/\**");
        let json = serde_json::to_string(&pattern).unwrap();
        assert_eq!(json, r#""counter/\\**""#);
        let back: Pattern = serde_json::from_str(&json).unwrap();
        assert_eq!(back, pattern);
        assert_eq!(back.to_string(), r"counter/\**");
        assert!(serde_json::from_str::<Pattern>(r#""a***""#).is_err());
    }
}
