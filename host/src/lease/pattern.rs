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
//! Cost: the NFA runs **bit-parallel** (shift-and): the state set is a bitset on the stack
//! (patterns are capped at [`MAX_PATTERN_TOKENS`] tokens, 16 words), and one step is a few
//! word operations per 64 states, using masks precomputed when the pattern is compiled (the
//! positions of each literal character, of `*` and of `**`). A check allocates nothing and
//! costs O(target length × pattern tokens / 64) — bounded work even for hostile patterns
//! such as `**a**a**a…` whose every state is alive at once.

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
    masks: Masks,
}

/// Bit masks over the token positions of a pattern (bit `j` = token `j`) for the engine.
#[derive(Clone)]
struct Masks {
    /// Words each mask (and a state set) uses: positions `0..=tokens.len()`.
    words: usize,
    star: Box<[u64]>,
    double_star: Box<[u64]>,
    /// The distinct literal characters of the pattern, sorted, and per character (`words`
    /// each, in the same order) the positions that hold it.
    chars: Box<[char]>,
    char_masks: Box<[u64]>,
    /// Whether two wildcard tokens ever stand next to each other (the parser never makes
    /// such a pattern, since a run of stars is one token); if not, one closure pass is exact.
    adjacent_wildcards: bool,
}

impl Masks {
    fn new(tokens: &[Tok]) -> Masks {
        let words = (tokens.len() + 1).div_ceil(64);
        let mut star = vec![0u64; words];
        let mut double_star = vec![0u64; words];
        let mut chars: Vec<char> = tokens
            .iter()
            .filter_map(|t| match t {
                Tok::Lit(c) => Some(*c),
                _ => None,
            })
            .collect();
        chars.sort_unstable();
        chars.dedup();
        let mut char_masks = vec![0u64; chars.len() * words];
        for (j, tok) in tokens.iter().enumerate() {
            let (word, bit) = (j / 64, 1u64 << (j % 64));
            let slot = match tok {
                Tok::Star => star.get_mut(word),
                Tok::DoubleStar => double_star.get_mut(word),
                Tok::Lit(c) => match chars.binary_search(c) {
                    Ok(i) => char_masks.get_mut(i * words + word),
                    Err(_) => None,
                },
            };
            if let Some(slot) = slot {
                *slot |= bit;
            }
        }
        let wild = |t: &Tok| matches!(t, Tok::Star | Tok::DoubleStar);
        let adjacent_wildcards = tokens.windows(2).any(|pair| pair.iter().all(wild));
        Masks {
            words,
            star: star.into(),
            double_star: double_star.into(),
            chars: chars.into(),
            char_masks: char_masks.into(),
            adjacent_wildcards,
        }
    }

    /// The positions holding literal `c` (`None`: no position does).
    fn positions_of(&self, c: char) -> Option<&[u64]> {
        let i = self.chars.binary_search(&c).ok()?;
        self.char_masks.get(i * self.words..(i + 1) * self.words)
    }
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
        Ok(Pattern::from_tokens(source.to_owned(), tokens.into_boxed_slice()))
    }

    /// The pattern that matches every target: `**`.
    pub fn any() -> Pattern {
        Pattern::from_tokens("**".to_owned(), Box::new([Tok::DoubleStar]))
    }

    /// `/**`: every absolute path (the default path of a URL pattern).
    pub fn any_path() -> Pattern {
        Pattern::from_tokens("/**".to_owned(), Box::new([Tok::Lit('/'), Tok::DoubleStar]))
    }

    fn from_tokens(source: String, tokens: Box<[Tok]>) -> Pattern {
        let masks = Masks::new(&tokens);
        Pattern { source, tokens, masks }
    }

    /// The text this pattern was compiled from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Length in tokens (what the engine's cost is proportional to).
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Does `target` match? Allocation-free; linear in `target`'s length.
    pub fn matches(&self, target: &str) -> bool {
        covers(self, target.chars().map(Tok::Lit))
    }

    /// Sound subset test: `true` guarantees every string `self` matches, `other` matches too.
    /// `false` may (rarely, for exotic wildcard splits) be a false negative.
    pub fn is_subset_of(&self, other: &Pattern) -> bool {
        covers(other, self.tokens.iter().copied())
    }
}

/// The engine: can `sup` absorb the token sequence `sub`, token by token?
///
/// `sup` is run as an NFA; state `j` means "`sup[..j]` has absorbed what was read so far".
/// A wildcard at `j` may also absorb nothing (epsilon to `j + 1`) or loop on what it accepts.
/// All states advance at once: a literal moves its states one position on (a shift by one
/// bit, with carry between words), a wildcard keeps its states where they are.
fn covers(sup: &Pattern, sub: impl Iterator<Item = Tok>) -> bool {
    let masks = &sup.masks;
    let (mut a, mut b) = ([0u64; WORDS], [0u64; WORDS]);
    // Swap the references, not the arrays, after each step.
    let (mut current, mut next) = (&mut a, &mut b);
    if let Some(start) = current.first_mut() {
        *start = 1;
    }
    close(current.as_mut_slice(), masks);
    for tok in sub {
        let advancing = match tok {
            Tok::Lit(c) => masks.positions_of(c),
            Tok::Star | Tok::DoubleStar => None,
        };
        let star_loops = star_absorbs(tok);
        let mut carry = 0u64;
        // Zipping with the masks visits only the words this pattern uses.
        for (w, ((out, &state), (&star, &double_star))) in
            next.iter_mut().zip(current.iter()).zip(masks.star.iter().zip(masks.double_star.iter())).enumerate()
        {
            let moving = advancing.and_then(|m| m.get(w)).map_or(0, |&m| state & m);
            let mut word = (moving << 1) | carry;
            carry = moving >> 63;
            word |= state & double_star;
            if star_loops {
                word |= state & star;
            }
            *out = word;
        }
        close(next.as_mut_slice(), masks);
        if next.iter().take(masks.words).all(|&w| w == 0) {
            return false;
        }
        std::mem::swap(&mut current, &mut next);
    }
    let accept = sup.tokens.len();
    current.get(accept / 64).is_some_and(|w| w & (1u64 << (accept % 64)) != 0)
}

/// A single `*` absorbs any non-`/` character and another `*`, but never a `**`.
fn star_absorbs(tok: Tok) -> bool {
    match tok {
        Tok::Lit(c) => c != '/',
        Tok::Star => true,
        Tok::DoubleStar => false,
    }
}

/// Adds the epsilon closure: a state on a wildcard also enters the position after it. The
/// parser never produces two wildcard tokens in a row, so one pass is exact; other patterns
/// (none today) would repeat it until nothing changes.
fn close(set: &mut [u64], masks: &Masks) {
    loop {
        let mut carry = 0u64;
        let mut changed = false;
        for (word, (&star, &double_star)) in set.iter_mut().zip(masks.star.iter().zip(masks.double_star.iter())) {
            let on_wildcard = *word & (star | double_star);
            let grown = *word | (on_wildcard << 1) | carry;
            carry = on_wildcard >> 63;
            changed |= grown != *word;
            *word = grown;
        }
        if !changed || !masks.adjacent_wildcards {
            return;
        }
    }
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
