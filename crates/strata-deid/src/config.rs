//! What the de-identifier removes, and how: the stage's configuration (`[preprocess.pii]` in a pipeline).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Deid;

/// How found PII is replaced.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PiiMode {
    /// `<NAME>`, `<DATE>`, … (the default).
    #[default]
    Placeholder,
    /// Fake names, places and shifted dates, consistent within a document.
    Surrogate,
}

/// Which kinds to redact (all by default), how, and where the name lexicon is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
#[allow(clippy::struct_excessive_bools)]
pub struct PiiRedact {
    pub emails: bool,
    pub phones: bool,
    pub ips: bool,
    pub national_ids: bool,
    pub medical_record_numbers: bool,
    pub dates_of_birth: bool,
    pub names: bool,
    /// Street addresses, towns and cities (anything smaller than a state).
    pub locations: bool,
    /// Dates with a day or a month (a bare year stays).
    pub dates: bool,
    /// Ages over 89.
    pub ages: bool,
    /// Hospitals, clinics and other institutions by name (letterheads, `… Medical Center`).
    pub institutions: bool,
    pub mode: PiiMode,
    /// The lexicon folder built by `scripts/fetch-data.sh --lexicon` (`data/lexicon/deid`): name lists,
    /// places and the protected medical vocabulary. Required unless `rules_only` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lexicon: Option<PathBuf>,
    /// The rule-only mode, chosen explicitly (`--pii-lexicon none`): no lexicon, so only titles, relations,
    /// labels and patterns find names. Recorded in the dataset's manifest with the rest of this config.
    pub rules_only: bool,
}

impl Default for PiiRedact {
    fn default() -> Self {
        Self {
            emails: true,
            phones: true,
            ips: true,
            national_ids: true,
            medical_record_numbers: true,
            dates_of_birth: true,
            names: true,
            locations: true,
            dates: true,
            ages: true,
            institutions: true,
            mode: PiiMode::Placeholder,
            lexicon: None,
            rules_only: false,
        }
    }
}

impl PiiRedact {
    /// The text with PII replaced (placeholders, no lexicon), and how many of each kind.
    #[must_use]
    pub fn redact(&self, text: &str) -> (String, Vec<(&'static str, usize)>) {
        let (out, counts) = Deid::without_lexicon(self).redact_keyed(text, "");
        (out, counts.into_iter().map(|(k, n)| (k.tag(), n)).collect())
    }
}
