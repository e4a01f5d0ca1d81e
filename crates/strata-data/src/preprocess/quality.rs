//! Gopher quality rules (Rae et al. 2021, "Scaling Language Models", appendix A), with the thresholds,
//! removal reasons and counting of datatrove 0.10.1 (word counts and mean length over non-punctuation
//! tokens; symbol and letter ratios over all tokens; bullets "•" or "-"; distinct stop words). Documents mostly in Chinese/Japanese/Korean count each
//! character as a word and skip the two English-only rules (mean word length; the stop words, replaced by
//! Chinese function words).

use serde::{Deserialize, Serialize};

use super::words::{for_each_token, is_cjk, is_punct};
use super::{Stage, Verdict};
use crate::Doc;

/// Thresholds (serde defaults = the paper's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GopherQuality {
    pub min_doc_words: usize,
    pub max_doc_words: usize,
    pub min_avg_word_length: f64,
    pub max_avg_word_length: f64,
    /// Ratio of `#` (and, separately, of ellipses) to words.
    pub max_symbol_word_ratio: f64,
    pub max_bullet_lines_ratio: f64,
    pub max_ellipsis_lines_ratio: f64,
    /// At least this fraction of words must contain a letter.
    pub min_alpha_words_ratio: f64,
    pub min_stop_words: usize,
}

impl Default for GopherQuality {
    fn default() -> Self {
        Self {
            min_doc_words: 50,
            max_doc_words: 100_000,
            min_avg_word_length: 3.0,
            max_avg_word_length: 10.0,
            max_symbol_word_ratio: 0.1,
            max_bullet_lines_ratio: 0.9,
            max_ellipsis_lines_ratio: 0.3,
            min_alpha_words_ratio: 0.8,
            min_stop_words: 2,
        }
    }
}

const STOP_WORDS: [&str; 8] = ["the", "be", "to", "of", "and", "that", "have", "with"];
const STOP_WORDS_ZH: [&str; 8] = ["的", "了", "是", "在", "和", "有", "不", "这"];

/// What the rules count, in one pass over the tokens (none are collected, so a document of hundreds of
/// megabytes costs no more memory than its text).
#[derive(Default)]
struct Counts {
    tokens: usize,
    alpha_tokens: usize,
    words: usize,
    /// Words starting with a Chinese, Japanese or Korean character.
    cjk_words: usize,
    /// Characters in words.
    word_chars: usize,
    /// Which of [`STOP_WORDS`] / [`STOP_WORDS_ZH`] occur, one bit each.
    stops_en: u8,
    stops_zh: u8,
}

impl Counts {
    fn of(text: &str) -> Self {
        let mut c = Self::default();
        for_each_token(text, |t| {
            c.tokens += 1;
            c.alpha_tokens += usize::from(t.chars().any(char::is_alphabetic));
            if is_punct(t) {
                return;
            }
            c.words += 1;
            c.cjk_words += usize::from(t.chars().next().is_some_and(is_cjk));
            c.word_chars += t.chars().count();
            if let Some(i) = STOP_WORDS.iter().position(|s| *s == t) {
                c.stops_en |= 1 << i;
            }
            if let Some(i) = STOP_WORDS_ZH.iter().position(|s| *s == t) {
                c.stops_zh |= 1 << i;
            }
        });
        c
    }
}

impl GopherQuality {
    /// None to keep the document, or the reason to remove it.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn check(&self, text: &str) -> Option<&'static str> {
        // as datatrove 0.10.1 counts: `tokens` are all tokens, punctuation included; `words` the others
        let c = Counts::of(text);
        let n = c.words;
        if n < self.min_doc_words {
            return Some("gopher_short_doc");
        }
        if n > self.max_doc_words {
            return Some("gopher_long_doc");
        }
        let cjk_doc = 2 * c.cjk_words > n;
        if !cjk_doc {
            let mean = c.word_chars as f64 / n as f64;
            if mean < self.min_avg_word_length {
                return Some("gopher_below_avg_threshold");
            }
            if mean > self.max_avg_word_length {
                return Some("gopher_above_avg_threshold");
            }
        }
        let nt = c.tokens as f64;
        if text.matches('#').count() as f64 / nt > self.max_symbol_word_ratio {
            return Some("gopher_too_many_hashes");
        }
        let ellipses = text.matches("...").count() + text.matches('…').count();
        if ellipses as f64 / nt > self.max_symbol_word_ratio {
            return Some("gopher_too_many_ellipsis");
        }
        let lines: Vec<&str> = text.lines().collect();
        let nl = lines.len().max(1) as f64;
        let bullets = lines
            .iter()
            .filter(|l| {
                let l = l.trim_start();
                l.starts_with('•') || l.starts_with('-')
            })
            .count();
        if bullets as f64 / nl > self.max_bullet_lines_ratio {
            return Some("gopher_too_many_bullets");
        }
        let trailing = lines
            .iter()
            .filter(|l| {
                let l = l.trim_end();
                l.ends_with("...") || l.ends_with('…')
            })
            .count();
        if trailing as f64 / nl > self.max_ellipsis_lines_ratio {
            return Some("gopher_too_many_end_ellipsis");
        }
        if (c.alpha_tokens as f64) / nt < self.min_alpha_words_ratio {
            return Some("gopher_below_alpha_threshold");
        }
        // distinct stop words present, as written (case-sensitive)
        let found = if cjk_doc { c.stops_zh } else { c.stops_en }.count_ones() as usize;
        if found < self.min_stop_words {
            return Some("gopher_enough_stop_words");
        }
        None
    }
}

impl Stage for GopherQuality {
    fn name(&self) -> &'static str {
        "gopher_quality"
    }
    fn apply(&self, doc: Doc) -> Verdict {
        Verdict::unless(self.check(&doc.text), doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prose(words: usize) -> String {
        let base = "the liver is of normal size and echotexture with no focal lesion seen ";
        base.split(' ')
            .filter(|w| !w.is_empty())
            .cycle()
            .take(words)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn each_rule_by_hand() {
        let g = GopherQuality::default();
        assert_eq!(g.check(&prose(60)), None);
        assert_eq!(g.check(&prose(49)), Some("gopher_short_doc"));
        // punctuation is not a word: 49 words and many commas are still short
        assert_eq!(
            g.check(&format!("{} , , , , ,", prose(49))),
            Some("gopher_short_doc")
        );
        let short_words = "a b c d e f g h i j ".repeat(6) + " the of";
        assert_eq!(g.check(&short_words), Some("gopher_below_avg_threshold"));
        let long_words = "hepatosplenomegaly ".repeat(60) + "the of";
        assert_eq!(g.check(&long_words), Some("gopher_above_avg_threshold"));
        // 60 words, 7 hashes: 7/60 > 0.1
        assert_eq!(
            g.check(&format!("{} #######", prose(60))),
            Some("gopher_too_many_hashes")
        );
        assert_eq!(g.check(&format!("{} # # # # # #", prose(60))), None);
        let ellipsis_lines = (0..10)
            .map(|i| {
                if i < 4 {
                    format!("{} …", prose(6))
                } else {
                    prose(6)
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            g.check(&ellipsis_lines),
            Some("gopher_too_many_end_ellipsis")
        );
        let bullets = (0..10)
            .map(|_| format!("• {}", prose(6)))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(g.check(&bullets), Some("gopher_too_many_bullets"));
        let numbers = format!("{} {}", prose(20), "1234 5678 9012 3456 7890 ".repeat(10));
        assert_eq!(g.check(&numbers), Some("gopher_below_alpha_threshold"));
        let no_stops = "liver spleen kidney normal echotexture ".repeat(12);
        assert_eq!(g.check(&no_stops), Some("gopher_enough_stop_words"));
        // Chinese: characters are words, Chinese function words are the stop words
        let zh =
            "肝脏大小正常，实质回声均匀，未见明显占位。胆囊的壁光滑，这是正常的表现。".repeat(3);
        assert_eq!(g.check(&zh), None);
        assert_eq!(g.check("肝脏大小正常。"), Some("gopher_short_doc"));
    }
}
