//! What a found identifier is, and where: the span types every detector writes into.

use serde::{Deserialize, Serialize};

/// What a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PiiKind {
    Email,
    Phone,
    Ip,
    Id,
    Mrn,
    Dob,
    Name,
    Location,
    Date,
    Age,
    /// A hospital, clinic or other institution's name.
    Hospital,
}

impl PiiKind {
    /// The placeholder's word (`NAME` in `<NAME>`).
    #[must_use]
    pub fn tag(self) -> &'static str {
        match self {
            Self::Email => "EMAIL",
            Self::Phone => "PHONE",
            Self::Ip => "IP",
            Self::Id => "ID",
            Self::Mrn => "MRN",
            Self::Dob => "DOB",
            Self::Name => "NAME",
            Self::Location => "LOCATION",
            Self::Date => "DATE",
            Self::Age => "AGE",
            Self::Hospital => "HOSPITAL",
        }
    }
}

/// One found piece of PII: byte offsets into the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PiiSpan {
    pub start: usize,
    pub end: usize,
    pub kind: PiiKind,
}

/// Non-overlapping spans; the first claim on a stretch of text wins, so detectors run in priority order.
#[derive(Debug, Default)]
pub(crate) struct Spans(pub(crate) Vec<PiiSpan>);

impl Spans {
    /// Adds `[start, end)` unless it is empty or overlaps a span already there. Whether it was added.
    pub(crate) fn add(&mut self, start: usize, end: usize, kind: PiiKind) -> bool {
        if start >= end || self.overlaps(start, end) {
            return false;
        }
        self.0.push(PiiSpan { start, end, kind });
        true
    }
    pub(crate) fn overlaps(&self, start: usize, end: usize) -> bool {
        self.0.iter().any(|s| s.start < end && start < s.end)
    }
    pub(crate) fn sorted(mut self) -> Vec<PiiSpan> {
        self.0.sort_by_key(|s| s.start);
        self.0
    }
}
