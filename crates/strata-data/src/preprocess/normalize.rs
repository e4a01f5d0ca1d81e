//! Text repair, then Unicode NFC and whitespace normalisation. Repair: UTF-8 that was decoded as Windows-1252
//! or Latin-1 somewhere upstream ("cafÃ©", "â€™") is decoded again ("café", "’"), as ftfy's main fix does;
//! control characters (other than tab and newline), byte-order marks and zero-width spaces are removed.
//! Whitespace: CRLF → LF, runs of spaces/tabs → one space, trailing spaces trimmed, three or more newlines →
//! two (paragraph breaks survive), leading/trailing blank space removed.

use unicode_normalization::UnicodeNormalization;

use super::{Stage, Verdict};
use crate::Doc;

pub struct Normalize;

/// The byte a character had before UTF-8 was wrongly decoded as Windows-1252 (or Latin-1 for the five bytes
/// 1252 leaves undefined), if it is such a character.
fn cp1252_byte(c: char) -> Option<u8> {
    let b = match c {
        '\u{80}'..='\u{ff}' => return u8::try_from(c as u32).ok(),
        '€' => 0x80,
        '‚' => 0x82,
        'ƒ' => 0x83,
        '„' => 0x84,
        '…' => 0x85,
        '†' => 0x86,
        '‡' => 0x87,
        'ˆ' => 0x88,
        '‰' => 0x89,
        'Š' => 0x8A,
        '‹' => 0x8B,
        'Œ' => 0x8C,
        'Ž' => 0x8E,
        '‘' => 0x91,
        '’' => 0x92,
        '“' => 0x93,
        '”' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        '˜' => 0x98,
        '™' => 0x99,
        'š' => 0x9A,
        '›' => 0x9B,
        'œ' => 0x9C,
        'ž' => 0x9E,
        'Ÿ' => 0x9F,
        _ => return None,
    };
    Some(b)
}

/// Re-decodes runs of mis-decoded UTF-8: a lead byte followed by the right number of continuation bytes,
/// all seen as Windows-1252 characters, becomes the character they encode. Anything else is left as it is.
#[must_use]
pub fn fix_mojibake(s: &str) -> std::borrow::Cow<'_, str> {
    // mojibake always starts with one of Â..ô (the lead bytes C2..F4 seen as Latin-1)
    if !s.chars().any(|c| ('\u{c2}'..='\u{f4}').contains(&c)) {
        return std::borrow::Cow::Borrowed(s);
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let need = match c {
            '\u{c2}'..='\u{df}' => 2,
            '\u{e0}'..='\u{ef}' => 3,
            '\u{f0}'..='\u{f4}' => 4,
            _ => 0,
        };
        if need > 0 && i + need <= chars.len() {
            let bytes: Option<Vec<u8>> =
                chars[i..i + need].iter().map(|&x| cp1252_byte(x)).collect();
            if let Some(fixed) = bytes.as_deref().and_then(|b| std::str::from_utf8(b).ok()) {
                let f = fixed.chars().next().unwrap_or(c);
                if !f.is_control() {
                    out.push(f);
                    i += need;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// Characters removed by the repair: controls other than tab/newline/CR, BOM, zero-width space.
fn junk(c: char) -> bool {
    (c.is_control() && !matches!(c, '\n' | '\t' | '\r')) || matches!(c, '\u{feff}' | '\u{200b}')
}

#[must_use]
pub fn normalize_text(s: &str) -> String {
    let fixed = fix_mojibake(s);
    let nfc: String = fixed.nfc().filter(|&c| !junk(c)).collect();
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

    #[test]
    fn mojibake_and_junk_repaired() {
        // each input is the UTF-8 of the expected text decoded as Windows-1252
        let cases = [
            ("cafÃ© au lait", "café au lait"),
            (
                "the patientâ€™s liver â€” normal",
                "the patient’s liver — normal",
            ),
            ("è¶…å£°æ£€æŸ¥", "超声检查"),
            ("5 Â°C, 3 Âµg", "5 °C, 3 µg"),
        ];
        for (bad, good) in cases {
            let broken: String = good
                .bytes()
                .map(|b| {
                    let c = char::from(b);
                    [
                        ('€', 0x80u8),
                        ('‚', 0x82),
                        ('ƒ', 0x83),
                        ('„', 0x84),
                        ('…', 0x85),
                        ('†', 0x86),
                        ('‡', 0x87),
                        ('ˆ', 0x88),
                        ('‰', 0x89),
                        ('Š', 0x8A),
                        ('‹', 0x8B),
                        ('Œ', 0x8C),
                        ('Ž', 0x8E),
                        ('‘', 0x91),
                        ('’', 0x92),
                        ('“', 0x93),
                        ('”', 0x94),
                        ('•', 0x95),
                        ('–', 0x96),
                        ('—', 0x97),
                        ('˜', 0x98),
                        ('™', 0x99),
                        ('š', 0x9A),
                        ('›', 0x9B),
                        ('œ', 0x9C),
                        ('ž', 0x9E),
                        ('Ÿ', 0x9F),
                    ]
                    .iter()
                    .find(|(_, x)| *x == b)
                    .map_or(c, |(ch, _)| *ch)
                })
                .collect();
            assert_eq!(broken, bad, "the test's own encoding of {good:?}");
            assert_eq!(normalize_text(bad), good);
        }
        // correct text is left alone, including Latin-1 letters next to punctuation
        for ok in [
            "Señor Müller, «café» à 5 °C",
            "Ñ ©",
            "naïve résumé",
            "超声检查",
        ] {
            assert_eq!(normalize_text(ok), ok);
        }
        assert_eq!(normalize_text("\u{feff}a\u{200b}b\u{7}c\u{85}d"), "abcd");
    }
}
