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

/// A fast, deterministic 64-bit hash of bytes (FxHash's multiply-rotate over 8-byte words, then a
/// finaliser), for the in-memory sets of the quality rules: SipHash's resistance to chosen inputs is not
/// needed there, and it cost half the time of the repetition rules.
#[must_use]
pub fn hash_bytes(b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    mix(h)
}

/// MurmurHash3's 64-bit finaliser.
#[must_use]
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

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
