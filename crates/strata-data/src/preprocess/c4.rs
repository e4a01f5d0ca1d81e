//! C4's line and document rules (Raffel et al. 2020, as datatrove 0.10.1's `C4QualityFilter` applies them):
//! lines are dropped when they have a word over 1000 characters, do not end in terminal punctuation (or end
//! in an ellipsis), have fewer than 3 words, mention JavaScript or a cookie/terms-of-use policy; Wikipedia
//! citation marks (`[1]`, `[edit]`, `[citation needed]`) are removed; a document is dropped for "lorem
//! ipsum", a curly bracket, or fewer than 5 sentences in the lines it keeps. The kept lines become the text.
//! Sentences are counted as spaCy's sentencizer counts them, over the spaCy-rule tokens.
//!
//! Chinese and Japanese lines end in full-width marks (`。`, `！`, `？`) and have no spaces between words, so
//! their words are counted per character (as Data-Juicer does) and those marks count as terminal.

use serde::{Deserialize, Serialize};

use super::words::{for_each_token, is_cjk, is_punct};
use super::{Stage, Verdict};
use crate::Doc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[allow(clippy::struct_excessive_bools)] // one switch per rule, as datatrove's C4QualityFilter has them
pub struct C4Quality {
    pub remove_citations: bool,
    pub filter_no_terminal_punct: bool,
    /// Documents with fewer sentences (in their kept lines) are dropped; 0 disables.
    pub min_num_sentences: usize,
    /// Lines with fewer words are dropped; 0 disables.
    pub min_words_per_line: usize,
    /// Lines with a longer word (characters) are dropped; 0 disables.
    pub max_word_length: usize,
    pub filter_lorem_ipsum: bool,
    pub filter_javascript: bool,
    pub filter_curly_bracket: bool,
    pub filter_policy: bool,
}

impl Default for C4Quality {
    fn default() -> Self {
        Self {
            remove_citations: true,
            filter_no_terminal_punct: true,
            min_num_sentences: 5,
            min_words_per_line: 3,
            max_word_length: 1000,
            filter_lorem_ipsum: true,
            filter_javascript: true,
            filter_curly_bracket: true,
            filter_policy: true,
        }
    }
}

const POLICY: [&str; 6] = [
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
];

/// Marks that end a sentence for spaCy's sentencizer (the common ones).
fn sentence_mark(t: &str) -> bool {
    matches!(
        t,
        "." | "!"
            | "?"
            | "。"
            | "！"
            | "？"
            | "｡"
            | "։"
            | "؟"
            | "۔"
            | "।"
            | "॥"
            | "‼"
            | "⁇"
            | "⁈"
            | "⁉"
    )
}

/// Sentences in `text` as spaCy's sentencizer splits them: a new sentence starts at the first word after a
/// sentence mark.
#[must_use]
pub fn count_sentences(text: &str) -> usize {
    let (mut n, mut any, mut seen_mark) = (0usize, false, false);
    for_each_token(text, |t| {
        if !any {
            any = true;
            n = 1;
        }
        let mark = sentence_mark(t);
        if seen_mark && !mark && !is_punct(t) {
            n += 1;
            seen_mark = false;
        } else if mark {
            seen_mark = true;
        }
    });
    n
}

/// Removes `[digits]`, `[edit]` and `[citation needed]`.
fn strip_citations(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let close = tail.find(']');
        let inner = close.map(|c| &tail[1..c]);
        match inner {
            Some(x)
                if x.bytes().all(|b| b.is_ascii_digit())
                    || x == "edit"
                    || x == "citation needed" =>
            {
                rest = &tail[x.len() + 2..];
            }
            _ => {
                out.push('[');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn terminal(line: &str) -> bool {
    line.ends_with(['.', '?', '!', '"', '\'', '。', '！', '？']) && !line.ends_with("...")
}

/// Words of a line: whitespace-separated, but each CJK character counts as a word.
fn line_words(line: &str) -> usize {
    line.split_whitespace()
        .map(|w| {
            let cjk = w.chars().filter(|&c| is_cjk(c)).count();
            let rest = w.chars().any(|c| !is_cjk(c));
            cjk + usize::from(rest)
        })
        .sum()
}

impl C4Quality {
    /// The text made of the kept lines, or the reason to drop the document.
    ///
    /// # Errors
    /// The reason: `lorem_ipsum`, `curly_bracket` or `too_few_sentences`.
    pub fn check(&self, text: &str) -> Result<String, &'static str> {
        let mut kept: Vec<String> = Vec::new();
        let mut sentences = 0;
        for line in text.lines() {
            let line = line.trim();
            if self.max_word_length > 0
                && line
                    .split_whitespace()
                    .any(|w| w.chars().count() > self.max_word_length)
            {
                continue;
            }
            let line = if self.remove_citations && line.contains('[') {
                strip_citations(line)
            } else {
                line.to_string()
            };
            if self.filter_no_terminal_punct && !terminal(&line) {
                continue;
            }
            if line_words(&line) < self.min_words_per_line {
                continue;
            }
            let lower = line.to_lowercase();
            if self.filter_lorem_ipsum && lower.contains("lorem ipsum") {
                return Err("lorem_ipsum");
            }
            if self.filter_javascript && lower.contains("javascript") {
                continue;
            }
            if self.filter_curly_bracket && line.contains('{') {
                return Err("curly_bracket");
            }
            if self.filter_policy && POLICY.iter().any(|p| lower.contains(p)) {
                continue;
            }
            if self.min_num_sentences > 0 {
                sentences += count_sentences(&line);
            }
            kept.push(line);
        }
        if sentences < self.min_num_sentences {
            return Err("too_few_sentences");
        }
        Ok(kept.join("\n").trim().to_string())
    }
}

impl Stage for C4Quality {
    fn name(&self) -> &'static str {
        "c4_quality"
    }
    fn apply(&self, mut doc: Doc) -> Verdict {
        match self.check(&doc.text) {
            Ok(text) => {
                doc.text = text;
                Verdict::Keep(doc)
            }
            Err(reason) => Verdict::Drop(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "The liver is normal in size. The spleen is normal too.";

    #[test]
    fn lines_and_documents_by_hand() {
        let c4 = C4Quality::default();
        let doc = format!(
            "{GOOD}\nMenu Home About\nEnable JavaScript to view this page.\nWe use cookies to improve it.\n\
             Kidneys show no hydronephrosis[1] and no stones[citation needed].\n{GOOD}\nRead more...\n\
             No free fluid is seen in the pelvis!\nShort line.\n"
        );
        let out = c4.check(&doc).unwrap();
        assert_eq!(
            out,
            format!(
                "{GOOD}\nKidneys show no hydronephrosis and no stones.\n{GOOD}\nNo free fluid is seen in the pelvis!"
            )
        );
        // 4 kept sentences are too few
        assert_eq!(
            c4.check(&format!("{GOOD}\n{GOOD}\nMenu")),
            Err("too_few_sentences")
        );
        assert_eq!(
            c4.check(&format!(
                "{GOOD}\nLorem ipsum dolor sit amet.\n{GOOD}{GOOD}"
            )),
            Err("lorem_ipsum")
        );
        assert_eq!(
            c4.check(&format!(
                "{GOOD}\nfunction f() {{ return 1; }} is code.\n{GOOD}{GOOD}"
            )),
            Err("curly_bracket")
        );
        // Chinese: full-width marks end lines and sentences, characters count as words
        let zh =
            "肝脏大小正常。脾脏未见异常。胆囊壁光滑。\n双肾未见积水！膀胱充盈良好。\n导航 首页";
        assert_eq!(
            c4.check(zh).unwrap(),
            "肝脏大小正常。脾脏未见异常。胆囊壁光滑。\n双肾未见积水！膀胱充盈良好。"
        );
    }

    #[test]
    fn sentences_as_the_sentencizer_counts_them() {
        assert_eq!(count_sentences("One. Two! Three? Four"), 4);
        assert_eq!(count_sentences("Dr. Smith saw 3.5 cm... then left."), 1);
        assert_eq!(count_sentences("\"Stop.\" He left."), 2);
        assert_eq!(count_sentences(""), 0);
        assert_eq!(strip_citations("a[12] b[edit] c[x] d[]"), "a b c[x] d");
    }
}
