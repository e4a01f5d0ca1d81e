//! Word splitting for the quality rules: runs of letters and digits (with an apostrophe or hyphen inside,
//! as in "don't" or "well-known") are words; every other visible character is a token of its own
//! (punctuation, symbols); each Chinese, Japanese or Korean character is a word of its own, since those
//! scripts do not separate words with spaces (Data-Juicer counts them the same way).

/// Chinese ideographs, kana and hangul syllables.
#[must_use]
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF
        | 0x20000..=0x2FA1F)
}

/// A token that is not a word (a single punctuation mark or symbol).
#[must_use]
pub fn is_punct(token: &str) -> bool {
    let mut cs = token.chars();
    matches!((cs.next(), cs.next()), (Some(c), None) if !c.is_alphanumeric())
}

/// The tokens of `text`, in order.
#[must_use]
pub fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let word_char = c.is_alphanumeric() && !is_cjk(c);
        if word_char {
            start.get_or_insert(i);
            continue;
        }
        // an apostrophe or hyphen between two word characters stays inside the word
        if let (Some(_), '\'' | '’' | '-') = (start, c) {
            if it
                .peek()
                .is_some_and(|&(_, n)| n.is_alphanumeric() && !is_cjk(n))
            {
                continue;
            }
        }
        if let Some(s) = start.take() {
            out.push(&text[s..i]);
        }
        if !c.is_whitespace() {
            out.push(&text[i..i + c.len_utf8()]);
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_punctuation_and_cjk_by_hand() {
        assert_eq!(
            tokens("Don't stop: well-known (x2)... 超声检查 ok!"),
            vec![
                "Don't",
                "stop",
                ":",
                "well-known",
                "(",
                "x2",
                ")",
                ".",
                ".",
                ".",
                "超",
                "声",
                "检",
                "查",
                "ok",
                "!"
            ]
        );
        assert!(tokens("  \n\t ").is_empty());
        assert_eq!(tokens("end-"), vec!["end", "-"]);
        assert!(
            is_punct("…") && is_punct(",") && !is_punct("a") && !is_punct("超") && !is_punct("ab")
        );
    }
}
