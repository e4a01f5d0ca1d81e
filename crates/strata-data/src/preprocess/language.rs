//! Language identification (the `whatlang` crate: trigram models for 69 languages, script detection for
//! Chinese and the other non-Latin scripts): keeps documents in the listed languages (ISO 639-3 codes,
//! e.g. `eng`, `cmn`) whose detection confidence reaches `min_confidence`, and records `language` and
//! `language_score` in each kept document's metadata. Detection reads at most the first 10,000 bytes.

use serde::{Deserialize, Serialize};

use super::{Stage, Verdict};
use crate::Doc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LanguageFilter {
    /// ISO 639-3 codes to keep (empty: keep every language, only label it).
    pub languages: Vec<String>,
    pub min_confidence: f64,
}

impl Default for LanguageFilter {
    fn default() -> Self {
        Self {
            languages: vec!["eng".into(), "cmn".into()],
            min_confidence: 0.5,
        }
    }
}

impl LanguageFilter {
    /// (ISO 639-3 code, confidence) of a text, if any language is detected.
    #[must_use]
    pub fn detect(text: &str) -> Option<(&'static str, f64)> {
        let mut end = text.len().min(10_000);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        whatlang::detect(&text[..end]).map(|i| (i.lang().code(), i.confidence()))
    }
}

impl Stage for LanguageFilter {
    fn name(&self) -> &'static str {
        "language"
    }
    fn apply(&self, mut doc: Doc) -> Verdict {
        let Some((code, score)) = Self::detect(&doc.text) else {
            return Verdict::Drop("language_unknown");
        };
        if !self.languages.is_empty() && !self.languages.iter().any(|l| l == code) {
            return Verdict::Drop("language_other");
        }
        if score < self.min_confidence {
            return Verdict::Drop("language_low_confidence");
        }
        doc.meta.insert("language".into(), code.into());
        doc.meta.insert("language_score".into(), score.into());
        Verdict::Keep(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(t: &str) -> Doc {
        Doc {
            id: String::new(),
            text: t.into(),
            meta: serde_json::Map::new(),
        }
    }

    #[test]
    fn english_and_chinese_kept_others_dropped_with_reasons() {
        let f = LanguageFilter::default();
        let en = "The liver is normal in size and echotexture, and no focal lesion is seen in either lobe.";
        let zh = "肝脏大小正常，实质回声均匀，未见明显占位性病变，胆囊壁光滑。";
        let de =
            "Die Leber ist normal groß und zeigt eine homogene Echostruktur ohne fokale Läsionen.";
        match f.apply(doc(en)) {
            Verdict::Keep(d) => {
                assert_eq!(d.meta["language"], "eng");
                assert!(d.meta["language_score"].as_f64().unwrap() >= 0.5);
            }
            Verdict::Drop(r) => panic!("English dropped: {r}"),
        }
        match f.apply(doc(zh)) {
            Verdict::Keep(d) => assert_eq!(d.meta["language"], "cmn"),
            Verdict::Drop(r) => panic!("Chinese dropped: {r}"),
        }
        assert!(matches!(f.apply(doc(de)), Verdict::Drop("language_other")));
        assert!(matches!(
            f.apply(doc("12345 678")),
            Verdict::Drop("language_unknown")
        ));
        // an empty list only labels
        let all = LanguageFilter {
            languages: Vec::new(),
            ..LanguageFilter::default()
        };
        assert!(matches!(all.apply(doc(de)), Verdict::Keep(_)));
        // a multi-byte character at the 10,000-byte cut does not panic
        assert!(LanguageFilter::detect(&"超".repeat(5000)).is_some());
    }
}
