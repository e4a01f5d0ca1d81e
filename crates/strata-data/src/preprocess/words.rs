//! Word splitting for the quality rules. Latin-script text is split as spaCy's English tokenizer splits it
//! (datatrove's Gopher filters count with it; see [`super::spacy_en`]): "don't" → "do" "n't", "well-known" →
//! "well" "-" "known", "(x2)." → "(" "x2" ")" ".", "14.2" and "G97.1" whole. Each Chinese, Japanese or Korean
//! character is a word of its own, since those scripts do not separate words with spaces (Data-Juicer counts
//! them the same way).

use super::spacy_en::{split_piece, Scratch};

/// Chinese ideographs, kana and hangul syllables.
#[must_use]
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF
        | 0x20000..=0x2FA1F)
}

/// A token that is not a word (punctuation and symbols only).
#[must_use]
pub fn is_punct(token: &str) -> bool {
    !token.is_empty() && !token.chars().any(char::is_alphanumeric)
}

/// Calls `f` on each token of `text`, in order, without collecting them.
pub fn for_each_token<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let mut scratch = Scratch::default();
    let mut emit = |t: &'a str| {
        if !t.chars().any(is_cjk) {
            f(t);
            return;
        }
        let mut run = 0;
        for (i, c) in t.char_indices() {
            if is_cjk(c) {
                if run < i {
                    f(&t[run..i]);
                }
                f(&t[i..i + c.len_utf8()]);
                run = i + c.len_utf8();
            }
        }
        if run < t.len() {
            f(&t[run..]);
        }
    };
    for piece in text.split(char::is_whitespace).filter(|p| !p.is_empty()) {
        split_piece(piece, &mut scratch, &mut emit);
    }
}

/// The tokens of `text` by spaCy's English rules alone (`spacy.blank("en")`, as datatrove splits words),
/// without the per-character split of CJK runs that [`tokens`] adds.
#[must_use]
pub fn spacy_tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut scratch = Scratch::default();
    for piece in text.split(char::is_whitespace).filter(|p| !p.is_empty()) {
        split_piece(piece, &mut scratch, &mut |t| out.push(t));
    }
    out
}

/// The tokens of `text`, in order.
#[must_use]
pub fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for_each_token(text, |t| out.push(t));
    out
}

pub use strata_records::hash::{hash_bytes, mix};

/// A hasher for keys that are already well-mixed 64-bit hashes: it passes them through.
#[derive(Default, Clone, Copy)]
pub struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `HashSet`/`HashMap` state for [`PreHashed`] keys.
pub type PreHashedState = std::hash::BuildHasherDefault<PreHashed>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_punctuation_and_cjk_by_hand() {
        assert_eq!(
            tokens("Don't stop: well-known (x2)... 超声检查ok! It's 14.2 cm, 1,000 -- G97.1 3:16"),
            vec![
                "Do", "n't", "stop", ":", "well", "-", "known", "(", "x2", ")", "...", "超", "声",
                "检", "查", "ok", "!", "It", "'s", "14.2", "cm", ",", "1,000", "--", "G97.1",
                "3:16"
            ]
        );
        assert!(tokens("  \n\t ").is_empty());
        assert_eq!(tokens("end-"), vec!["end-"]);
        assert_eq!(tokens("e.g. 14."), vec!["e.g.", "14", "."]);
        assert_eq!(tokens("O'Brien"), vec!["O'Brien"]);
        assert!(
            is_punct("…") && is_punct(",") && is_punct("--") && !is_punct("a") && !is_punct("超")
        );
        assert!(!is_punct("ab") && !is_punct("n't"));
    }
}
