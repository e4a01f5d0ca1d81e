//! De-identification (preprocessing's privacy stage): personal data found in English and Chinese clinical text and replaced, either by typed
//! placeholders (`<EMAIL>`, `<PHONE>`, `<IP>`, `<ID>`, `<MRN>`, `<DOB>`, `<NAME>`, `<LOCATION>`, `<DATE>`,
//! `<AGE>`) or by consistent surrogates (`mode = "surrogate"`: the same person keeps one fake name through a
//! document, and dates move by one offset per document; see [`surrogate`]).
//!
//! Found by pattern: e-mail addresses; phone numbers (North American and international formats, Chinese mobiles
//! and landlines); IPv4 addresses; US social security numbers and Chinese resident identity numbers (checksum
//! and birth date verified); medical record numbers, dates of birth and patient names after their field labels
//! (`MRN:`, `DOB:`, `Patient:`, `病历号：`, `出生日期：`, `姓名：` …). Found in prose ([`prose`]): person
//! names (titles, relations, full names, first names, earlier mentions; Chinese names by surname and context),
//! street addresses and towns, dates, and ages over 89. Medicine is protected: eponyms from the terminologies
//! (Paget disease, Bell's palsy) are never names. Numbers that are not behind a label and do not have the shape
//! of a phone, an identity number or a date (doses, measurements, lab values, codes) are left alone.
//!
//! The crate knows text only; the preprocessing stage that runs it over documents is in `strata-data`, and
//! DICOM de-identification (PS3.15 Annex E) comes next to [`deid`] as a module of its own.
//!
//! Layers, each importing only those above it: [`span`] (what a found identifier is) → [`lexicon`] (word
//! lists) → [`patterns`], [`prose`] (detectors) and [`surrogate`] (replacements) → [`deid`] (the
//! de-identifier) → [`eval`] (scoring on labelled notes).

mod config;
pub mod deid;
pub mod eval;
mod layout;
pub mod lexicon;
pub mod patterns;
pub mod prose;
pub mod span;
pub mod surrogate;
pub mod tagger;

pub use config::{PiiMode, PiiRedact};
pub use deid::Deid;
pub use lexicon::Lexicon;
pub use span::{PiiKind, PiiSpan};
pub use surrogate::{patient_key, patient_shift_days, shift_date, Surrogates};
pub use tagger::Tagger;

/// Errors of de-identification; each names the file (and line) involved and, for the lexicon, how to get it.
#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    /// A file of labelled notes that cannot be read, or a line of it that is not a note.
    #[error(transparent)]
    Records(#[from] strata_records::RecordsError),
    #[error(
        "PII lexicon {path}: {reason} (build it with `scripts/fetch-data.sh --lexicon`, or choose the \
         rule-only mode explicitly with `--pii-lexicon none`)"
    )]
    Lexicon {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "the PII stage has no lexicon: without its name lists, places and protected medical words it finds far \
         fewer names (about 61% of identifiers on free prose against 96%). Build it with \
         `scripts/fetch-data.sh --lexicon` (then `--pii-lexicon data/lexicon/deid`), or choose the rule-only \
         mode explicitly with `--pii-lexicon none` (in a pipeline: `rules_only = true`)"
    )]
    NoLexicon,
}

pub type Result<T, E = DeidError> = std::result::Result<T, E>;
