//! FineWeb's document rules (Penedo et al. 2024, datatrove 0.10.1's `FineWebQualityFilter` and its
//! defaults): too few lines ending in terminal punctuation (`line_punct_ratio`), too many short lines
//! (`short_line_ratio`), too many characters in duplicated lines (`char_dup_ratio`), too many newlines per
//! word, i.e. a list (`list_ratio`). Terminal punctuation includes the full-width marks of Chinese and
//! Japanese; words are counted with the same splitting as the Gopher rules (CJK characters one by one).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::words::{for_each_token, hash_bytes, is_cjk, PreHashedState};
use super::{Stage, Verdict};
use crate::Doc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FineWebQuality {
    /// Drop when fewer than this share of lines end in terminal punctuation.
    pub line_punct_thr: f64,
    /// Keep documents where no line ends in punctuation (the share is 0) instead of dropping them.
    pub line_punct_exclude_zero: bool,
    /// Drop when more than this share of lines are at most `short_line_length` columns long (a CJK character
    /// is two columns).
    pub short_line_thr: f64,
    pub short_line_length: usize,
    /// Drop when more than this share of characters are in lines seen before in the document.
    pub char_duplicates_ratio: f64,
    /// Drop when there are more than this many newlines per word.
    pub new_line_ratio: f64,
}

impl Default for FineWebQuality {
    fn default() -> Self {
        Self {
            line_punct_thr: 0.12,
            line_punct_exclude_zero: false,
            short_line_thr: 0.67,
            short_line_length: 30,
            char_duplicates_ratio: 0.01,
            new_line_ratio: 0.3,
        }
    }
}

/// The terminal marks of datatrove's list that occur in practice (Latin, CJK full-width, Devanagari, Arabic,
/// Armenian, Ethiopic, Myanmar, and the doubled marks).
fn ends_terminal(line: &str) -> bool {
    line.ends_with([
        '.', '!', '?', '。', '！', '？', '．', '｡', '﹒', '﹖', '﹗', '։', '؟', '؝', '؞', '۔', '।',
        '॥', '።', '፧', '፨', '၊', '။', '‼', '‽', '⁇', '⁈', '⁉', '⸮', '⸼',
    ])
}

/// Length of a line in columns: CJK characters are full-width (two columns), so a Chinese line of 15
/// characters, which says about as much as 30 Latin letters, is not counted as short.
fn width(line: &str) -> usize {
    line.chars().map(|c| if is_cjk(c) { 2 } else { 1 }).sum()
}

impl FineWebQuality {
    /// None to keep the document, or the reason to drop it.
    #[must_use]
    pub fn check(&self, text: &str) -> Option<&'static str> {
        let lines: Vec<&str> = text.split('\n').filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return Some("empty");
        }
        let n = lines.len() as f64;
        let punct = lines.iter().filter(|l| ends_terminal(l)).count() as f64 / n;
        if punct < self.line_punct_thr && !(punct == 0.0 && self.line_punct_exclude_zero) {
            return Some("line_punct_ratio");
        }
        let short = lines
            .iter()
            .filter(|l| width(l) <= self.short_line_length)
            .count() as f64
            / n;
        if short > self.short_line_thr {
            return Some("short_line_ratio");
        }
        let mut seen: HashSet<u64, PreHashedState> = HashSet::default();
        let dup_chars: usize = lines
            .iter()
            .filter(|l| !seen.insert(hash_bytes(l.as_bytes())))
            .map(|l| l.chars().count())
            .sum();
        let chars = text.chars().filter(|&c| c != '\n').count().max(1);
        if dup_chars as f64 / chars as f64 > self.char_duplicates_ratio {
            return Some("char_dup_ratio");
        }
        let mut words = 0usize;
        for_each_token(text, |_| words += 1);
        let newlines = text.matches('\n').count();
        if newlines as f64 / words.max(1) as f64 > self.new_line_ratio {
            return Some("list_ratio");
        }
        None
    }
}

impl Stage for FineWebQuality {
    fn name(&self) -> &'static str {
        "fineweb_quality"
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
        let f = FineWebQuality::default();
        let line = "The liver is normal in size and echotexture without any focal lesion.";
        let prose = [
            line,
            "The spleen measures eleven centimetres in its longest axis today.",
            "Both kidneys are normal.",
        ]
        .join("\n");
        assert_eq!(f.check(&prose), None);
        assert_eq!(f.check("  \n \n"), Some("empty"));
        // 1 of 10 lines ends in punctuation: 0.1 < 0.12
        let mut v = vec!["a heading without a stop at the end of it here"; 9];
        v.push(line);
        assert_eq!(f.check(&v.join("\n")), Some("line_punct_ratio"));
        // 3 of 4 lines are short (≤ 30 characters): 0.75 > 0.67
        assert_eq!(
            f.check(&format!("{line}\nShort one.\nShort two.\nShort three.")),
            Some("short_line_ratio")
        );
        // a repeated line: its characters are duplicated
        assert_eq!(f.check(&format!("{prose}\n{line}")), Some("char_dup_ratio"));
        // a list: 3 newlines for 8 words (4 names, 4 full stops)
        let list = "Liver.\nSpleen.\nKidney.\nBladder.";
        assert_eq!(f.check(list), Some("short_line_ratio"));
        let g = FineWebQuality {
            short_line_thr: 1.0,
            ..FineWebQuality::default()
        };
        assert_eq!(g.check(list), Some("list_ratio"));
        // Chinese sentences end in full-width marks
        assert_eq!(f.check("肝脏大小正常，回声均匀，未见明显占位性病变。\n脾脏大小形态正常，实质回声均匀，未见异常。"), None);
    }
}
