//! Character-level rules that work the same for every script, Chinese included, where words are not
//! separated by spaces (Data-Juicer's `character_repetition_filter` and `special_characters_filter`, with
//! their defaults):
//!
//! - `char_repetition`: over the document's character 10-grams, the share of occurrences taken by the
//!   √n most frequent repeated ones (n = distinct 10-grams); above 0.5 the document is mostly a repeated
//!   phrase (`char_repetition`).
//! - `special_characters`: the share of characters that are punctuation, digits, whitespace, symbols or
//!   emoji; above 0.25 the document is mostly markup, tables of numbers or decoration
//!   (`special_characters`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::words::{hash_bytes, PreHashedState};
use super::{Stage, Verdict};
use crate::Doc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CharQuality {
    /// Length of the character n-grams of the repetition rule.
    pub rep_len: usize,
    /// Highest share of the most repeated character n-grams; above it the document is dropped.
    pub max_char_repetition: f64,
    /// Highest share of special characters; above it the document is dropped.
    pub max_special_characters: f64,
}

impl Default for CharQuality {
    fn default() -> Self {
        Self {
            rep_len: 10,
            max_char_repetition: 0.5,
            max_special_characters: 0.25,
        }
    }
}

/// Punctuation, digits, whitespace, symbols and emoji: what Data-Juicer counts as special.
fn special(c: char) -> bool {
    c.is_ascii_punctuation()
        || c.is_numeric()
        || c.is_whitespace()
        || matches!(c as u32, 0x2000..=0x206F | 0x2190..=0x2BFF | 0x3000..=0x303F | 0xFF01..=0xFF0F | 0xFF1A..=0xFF20 | 0x1F000..=0x1FAFF | 0xFE0F | 0xFFFC | 0xFFFD)
        || matches!(c, '£' | '€' | '«' | '»' | '°' | '·' | '×' | 'ー' | '\u{ad}')
}

impl CharQuality {
    /// The share of the most repeated character n-grams, as Data-Juicer computes it.
    #[must_use]
    pub fn repetition(&self, text: &str) -> f64 {
        let starts: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let n = self.rep_len.max(1);
        if starts.len() <= n {
            return 0.0;
        }
        let mut freq: HashMap<u64, usize, PreHashedState> = HashMap::default();
        for w in starts.windows(n + 1) {
            *freq
                .entry(hash_bytes(&text.as_bytes()[w[0]..w[n]]))
                .or_default() += 1;
        }
        let mut counts: Vec<usize> = freq.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let once = counts.iter().filter(|&&c| c == 1).count();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let top = ((counts.len() as f64).sqrt() as usize).min(counts.len() - once);
        let total: usize = counts.iter().sum();
        counts[..top].iter().sum::<usize>() as f64 / total.max(1) as f64
    }

    /// The share of special characters.
    #[must_use]
    pub fn special_share(text: &str) -> f64 {
        let (mut all, mut sp) = (0usize, 0usize);
        for c in text.chars() {
            all += 1;
            sp += usize::from(special(c));
        }
        sp as f64 / all.max(1) as f64
    }

    /// None to keep the document, or the reason to drop it.
    #[must_use]
    pub fn check(&self, text: &str) -> Option<&'static str> {
        if self.repetition(text) > self.max_char_repetition {
            return Some("char_repetition");
        }
        if Self::special_share(text) > self.max_special_characters {
            return Some("special_characters");
        }
        None
    }
}

impl Stage for CharQuality {
    fn name(&self) -> &'static str {
        "char_quality"
    }
    fn apply(&self, doc: Doc) -> Verdict {
        Verdict::unless(self.check(&doc.text), doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_and_special_characters_by_hand() {
        let c = CharQuality::default();
        // "abcabc…" of 40 characters: 31 10-grams of 3 distinct kinds (11, 10, 10 times), none once;
        // √3 → the top 1: 11 / 31
        let r = c.repetition(&"abc".repeat(14)[..40]);
        assert!((r - 11.0 / 31.0).abs() < 1e-12, "{r}");
        // all distinct: nothing repeated
        assert!(c.repetition("abcdefghijklmnopqrstuvwxyz").abs() < 1e-12);
        // a Chinese report followed by one phrase thirty times is dropped; the report alone is kept
        let report =
            "肝脏大小形态正常，包膜光滑，实质回声均匀，肝内管道结构清晰，门静脉主干内径正常。";
        assert_eq!(c.check(report), None);
        let spam = format!("{report}{}", "未见明显异常。".repeat(30));
        assert_eq!(c.check(&spam), Some("char_repetition"));
        assert_eq!(c.check(&"哈".repeat(40)), Some("char_repetition"));
        // a table of numbers
        assert_eq!(
            c.check("12.5 | 13.1 | 14.0 | 15.2 | 16.8 | 17.9 | 细胞"),
            Some("special_characters")
        );
        assert!((CharQuality::special_share("ab 1!") - 0.6).abs() < 1e-12);
    }
}
