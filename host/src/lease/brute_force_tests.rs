//! Brute-force cross-checks of the pattern engine: soundness of `is_subset_of` and agreement of
//! `matches` with a naive recursive matcher, over every string up to length 5 on {a, b, /}.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::{Grants, Pattern, Scope};

const ALPHABET: [char; 3] = ['a', 'b', '/'];

/// Tiny deterministic PRNG (xorshift64*), so failures reproduce without extra dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn all_strings(max_len: usize) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut frontier = vec![String::new()];
    for _ in 0..max_len {
        let mut grown = Vec::new();
        for s in &frontier {
            for c in ALPHABET {
                let mut t = s.clone();
                t.push(c);
                grown.push(t);
            }
        }
        out.extend(grown.iter().cloned());
        frontier = grown;
    }
    out
}

/// Every pattern text over {a, b, /, *} up to `max_len` characters that parses.
fn all_patterns(max_len: usize) -> Vec<Pattern> {
    let symbols = ['a', 'b', '/', '*'];
    let mut texts = vec![String::new()];
    let mut out = Vec::new();
    for _ in 0..max_len {
        let mut grown = Vec::new();
        for t in &texts {
            for c in symbols {
                let mut u = t.clone();
                u.push(c);
                if let Ok(p) = Pattern::parse(&u) {
                    out.push(p);
                }
                grown.push(u);
            }
        }
        texts = grown;
    }
    out
}

fn random_pattern(rng: &mut Rng) -> Option<Pattern> {
    let pieces = ["a", "b", "/", "*", "**", "a", "/", r"\*"];
    let len = 1 + rng.below(7);
    let text: String = (0..len).map(|_| pieces[rng.below(pieces.len())]).collect();
    Pattern::parse(&text).ok()
}

/// Independent reference: the textbook recursive glob matcher, on the pattern's source text.
fn naive_matches(pattern: &[char], s: &[char]) -> bool {
    match pattern {
        [] => s.is_empty(),
        ['\\', c, rest @ ..] => s.first() == Some(c) && naive_matches(rest, &s[1..]),
        ['*', '*', rest @ ..] => (0..=s.len()).any(|i| naive_matches(rest, &s[i..])),
        ['*', rest @ ..] => {
            (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != '/').any(|i| naive_matches(rest, &s[i..]))
        }
        [c, rest @ ..] => s.first() == Some(c) && naive_matches(rest, &s[1..]),
    }
}

/// Which of `strings` each pattern matches, as a bit vector.
fn match_sets(patterns: &[Pattern], strings: &[String]) -> Vec<Vec<bool>> {
    patterns.iter().map(|p| strings.iter().map(|s| p.matches(s)).collect()).collect()
}

fn check_soundness(patterns: &[Pattern], strings: &[String]) -> (usize, usize) {
    let sets = match_sets(patterns, strings);
    let (mut proved, mut true_on_sample) = (0, 0);
    for (i, p) in patterns.iter().enumerate() {
        for (j, q) in patterns.iter().enumerate() {
            let included = sets[i].iter().zip(&sets[j]).all(|(a, b)| !a || *b);
            if included {
                true_on_sample += 1;
            }
            if p.is_subset_of(q) {
                proved += 1;
                assert!(included, "unsound: '{p}' ⊆ '{q}' claimed, but a string breaks it");
            }
        }
    }
    (proved, true_on_sample)
}

#[test]
fn engine_agrees_with_naive_matcher_on_all_short_strings() {
    let strings = all_strings(5);
    let mut patterns = all_patterns(4);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    patterns.extend((0..300).filter_map(|_| random_pattern(&mut rng)));
    for p in &patterns {
        let source: Vec<char> = p.as_str().chars().collect();
        for s in &strings {
            let chars: Vec<char> = s.chars().collect();
            assert_eq!(p.matches(s), naive_matches(&source, &chars), "'{p}' vs '{s}'");
        }
    }
}

#[test]
fn subset_is_sound_for_every_short_pattern_pair() {
    let strings = all_strings(5);
    let patterns = all_patterns(4);
    let (proved, true_on_sample) = check_soundness(&patterns, &strings);
    // Completeness is not required, but most true inclusions should be proved.
    assert!(proved * 10 >= true_on_sample * 8, "proved {proved} of {true_on_sample}");
}

#[test]
fn subset_is_sound_for_random_longer_patterns() {
    let strings = all_strings(5);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let patterns: Vec<Pattern> = (0..400).filter_map(|_| random_pattern(&mut rng)).collect();
    check_soundness(&patterns, &strings);
}

#[test]
fn layered_intersection_is_exact_on_random_grants() {
    let strings = all_strings(4);
    let mut rng = Rng(42);
    let random_grants = |rng: &mut Rng| {
        let mut g = Grants::new();
        for _ in 0..1 + rng.below(2) {
            let layer: Vec<String> =
                (0..1 + rng.below(3)).filter_map(|_| random_pattern(rng)).map(|p| p.as_str().to_owned()).collect();
            let refs: Vec<&str> = layer.iter().map(String::as_str).collect();
            g = g.with(Scope::KvRead, &refs).unwrap();
        }
        g
    };
    for _ in 0..200 {
        let a = random_grants(&mut rng);
        let b = random_grants(&mut rng);
        let both = a.intersect(&b);
        for s in &strings {
            let expected = a.allows(Scope::KvRead, s) && b.allows(Scope::KvRead, s);
            assert_eq!(both.allows(Scope::KvRead, s), expected, "{a:?} ∩ {b:?} on '{s}'");
        }
        if both.is_within(&a).is_err() || both.is_within(&b).is_err() {
            panic!("{both:?} should be provably within both {a:?} and {b:?}");
        }
        if a.is_within(&b).is_ok() {
            for s in &strings {
                assert!(!a.allows(Scope::KvRead, s) || b.allows(Scope::KvRead, s));
            }
        }
    }
}
