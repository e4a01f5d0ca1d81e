//! Gopher repetition rules (Rae et al. 2021, table A1), datatrove's thresholds and reasons: duplicate
//! paragraphs and lines (by count and by characters), the most frequent 2/3/4-gram's share of the
//! characters, and the share of characters in repeated 5- to 10-grams. Shares are of the document's
//! characters; n-grams are of the word tokens (punctuation included, as datatrove's tokenizer gives it),
//! measured as datatrove 0.10.1 measures them (top n-grams joined by spaces, repeated ones without).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::words::{hash_bytes, mix, tokens, PreHashedState};
use super::{Stage, Verdict};
use crate::Doc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GopherRepetition {
    pub dup_line_frac: f64,
    pub dup_para_frac: f64,
    pub dup_line_char_frac: f64,
    pub dup_para_char_frac: f64,
    /// (n, max share of characters in the most frequent n-gram's occurrences)
    pub top_n_grams: Vec<(usize, f64)>,
    /// (n, max share of characters in repeated n-grams)
    pub dup_n_grams: Vec<(usize, f64)>,
}

impl Default for GopherRepetition {
    fn default() -> Self {
        Self {
            dup_line_frac: 0.3,
            dup_para_frac: 0.3,
            dup_line_char_frac: 0.2,
            dup_para_char_frac: 0.2,
            top_n_grams: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            dup_n_grams: vec![
                (5, 0.15),
                (6, 0.14),
                (7, 0.13),
                (8, 0.12),
                (9, 0.11),
                (10, 0.10),
            ],
        }
    }
}

/// (elements seen before, their characters).
fn duplicates<'a>(items: impl Iterator<Item = &'a str>) -> (usize, usize, usize) {
    // keyed by a 64-bit hash: two different lines collide with probability ~2⁻⁶⁴
    let mut seen: HashSet<u64, PreHashedState> = HashSet::default();
    let (mut total, mut dup, mut chars) = (0, 0, 0);
    for it in items {
        total += 1;
        if !seen.insert(hash_bytes(it.as_bytes())) {
            dup += 1;
            chars += it.chars().count();
        }
    }
    (total, dup, chars)
}

/// The key of an n-gram from its words' hashes (order matters).
fn gram_key(word_hashes: &[u64]) -> u64 {
    word_hashes
        .iter()
        .fold(word_hashes.len() as u64, |h, &w| mix(h.rotate_left(23) ^ w))
}

impl GopherRepetition {
    /// None to keep the document, or the reason to remove it.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn check(&self, text: &str) -> Option<&'static str> {
        let chars = text.chars().count();
        if chars == 0 {
            return Some("empty");
        }
        let nc = chars as f64;
        let paras = split_paragraphs(text.trim());
        let (total, dup, dup_chars) = duplicates(paras.into_iter());
        if dup as f64 / total.max(1) as f64 > self.dup_para_frac {
            return Some("dup_para_frac");
        }
        if dup_chars as f64 / nc > self.dup_para_char_frac {
            return Some("dup_para_char_frac");
        }
        // lines as datatrove splits them: at runs of newlines
        let (total, dup, dup_chars) = duplicates(text.split('\n').filter(|l| !l.is_empty()));
        if dup as f64 / total.max(1) as f64 > self.dup_line_frac {
            return Some("dup_line_frac");
        }
        if dup_chars as f64 / nc > self.dup_line_char_frac {
            return Some("dup_line_char_frac");
        }
        let words = tokens(text);
        let lens: Vec<usize> = words.iter().map(|w| w.chars().count()).collect();
        let wh: Vec<u64> = words.iter().map(|w| hash_bytes(w.as_bytes())).collect();
        let gram_chars = |i: usize, n: usize| lens[i..i + n].iter().sum::<usize>() + n - 1;
        for &(n, frac) in &self.top_n_grams {
            if words.len() < n {
                continue;
            }
            let mut counts: HashMap<u64, (usize, usize), PreHashedState> =
                HashMap::with_capacity_and_hasher(words.len(), PreHashedState::default());
            for i in 0..=words.len() - n {
                counts.entry(gram_key(&wh[i..i + n])).or_insert((0, i)).0 += 1;
            }
            // the most frequent n-gram (the first seen among equals), times its length
            let best = counts
                .values()
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map_or(0, |&(c, i)| c * gram_chars(i, n));
            if best as f64 / nc > frac {
                return Some(match n {
                    2 => "top_2_gram",
                    3 => "top_3_gram",
                    4 => "top_4_gram",
                    _ => "top_n_gram",
                });
            }
        }
        for &(n, frac) in &self.dup_n_grams {
            if words.len() < n {
                continue;
            }
            // walk the n-grams; a repeated one counts its characters and is skipped over whole
            let mut seen: HashSet<u64, PreHashedState> =
                HashSet::with_capacity_and_hasher(words.len(), PreHashedState::default());
            let (mut repeated, mut i) = (0usize, 0usize);
            while i + n <= words.len() {
                if seen.insert(gram_key(&wh[i..i + n])) {
                    i += 1;
                } else {
                    // datatrove joins these without spaces
                    repeated += lens[i..i + n].iter().sum::<usize>();
                    i += n;
                }
            }
            if repeated as f64 / nc > frac {
                return Some(match n {
                    5 => "duplicated_5_n_grams",
                    6 => "duplicated_6_n_grams",
                    7 => "duplicated_7_n_grams",
                    8 => "duplicated_8_n_grams",
                    9 => "duplicated_9_n_grams",
                    10 => "duplicated_10_n_grams",
                    _ => "duplicated_n_grams",
                });
            }
        }
        None
    }
}

/// Paragraphs: the text split at runs of two or more newlines.
fn split_paragraphs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' && i + 1 < b.len() && b[i + 1] == b'\n' {
            out.push(&text[start..i]);
            while i < b.len() && b[i] == b'\n' {
                i += 1;
            }
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&text[start..]);
    out
}

impl Stage for GopherRepetition {
    fn name(&self) -> &'static str {
        "gopher_repetition"
    }
    fn apply(&self, doc: Doc) -> Verdict {
        Verdict::unless(self.check(&doc.text), doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_by_hand() {
        let g = GopherRepetition::default();
        let varied = "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi \
                      rho sigma tau upsilon phi chi psi omega one two three four five six seven eight nine ten";
        assert_eq!(g.check(varied), None);
        assert_eq!(split_paragraphs("a\n\n\nb\nc\n\nd"), vec!["a", "b\nc", "d"]);
        // 4 paragraphs, 2 repeats: 0.5 > 0.3
        assert_eq!(
            g.check("one para\n\none para\n\none para\n\nanother"),
            Some("dup_para_frac")
        );
        // lines: 10 lines, 4 of them repeats of a short line (0.4 > 0.3), paragraphs all distinct
        let lines = format!("{varied}\nx\nx\nx\nx\nx\na1\na2\na3\na4");
        assert_eq!(g.check(&lines), Some("dup_line_frac"));
        // one long line repeated once: its characters are > 20% of the text
        let long = "The liver measures fourteen centimetres and is normal in echotexture.";
        let t = format!("{long}\n{long}\nshort a\nshort b\nshort c\nshort d");
        assert_eq!(g.check(&t), Some("dup_line_char_frac"));
        // "of the" 20 times in ~230 characters: top 2-gram 20 × 6 / 231 > 0.2
        let bigrams = format!("{} {}", "of the ".repeat(20).trim(), varied.split_at(90).0);
        assert_eq!(g.check(&bigrams), Some("top_2_gram"));
        // a 10-word phrase said twice: each n-gram of it occurs only twice (top n-grams stay low), but the
        // second saying is two repeated 5-grams, 2 × 31 of 405 characters > 15% (counted without spaces)
        let phrase = "portal vein flow hepatopetal common bile duct measures four millimetres";
        let filler =
            "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty";
        let five = format!("{varied} {filler} {phrase} {phrase}");
        assert_eq!(g.check(&five), Some("duplicated_5_n_grams"));
        assert_eq!(g.check(""), Some("empty"));
    }
}
