//! Unicode NFC and whitespace normalisation: CRLF → LF, runs of spaces/tabs → one space, trailing spaces
//! trimmed, three or more newlines → two (paragraph breaks survive), leading/trailing blank space removed.

use unicode_normalization::UnicodeNormalization;

use super::{Stage, Verdict};
use crate::Doc;

pub struct Normalize;

#[must_use]
pub fn normalize_text(s: &str) -> String {
    let nfc: String = s.nfc().collect();
    let mut out = String::with_capacity(nfc.len());
    let mut newlines = 0usize;
    let mut pending_space = false;
    for c in nfc.chars() {
        match c {
            '\r' => {}
            '\n' => {
                pending_space = false;
                newlines += 1;
            }
            c if c.is_whitespace() => pending_space = true,
            c => {
                if newlines > 0 {
                    if !out.is_empty() {
                        out.push_str(if newlines >= 2 { "\n\n" } else { "\n" });
                    }
                    newlines = 0;
                } else if pending_space && !out.is_empty() {
                    out.push(' ');
                }
                pending_space = false;
                out.push(c);
            }
        }
    }
    out
}

impl Stage for Normalize {
    fn name(&self) -> &'static str {
        "normalize"
    }
    fn apply(&self, mut doc: Doc) -> Verdict {
        doc.text = normalize_text(&doc.text);
        Verdict::Keep(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_and_nfc() {
        // "e" + U+0301 (combining acute) composes to U+00E9 under NFC
        assert_eq!(
            normalize_text("  cafe\u{301}  au \t lait \r\n\r\n\r\n\nnext  \n line \n"),
            "caf\u{e9} au lait\n\nnext\nline"
        );
        assert_eq!(normalize_text("\n\n  \n"), "");
        assert_eq!(normalize_text("a\u{a0}b"), "a b"); // no-break space is whitespace
    }
}
