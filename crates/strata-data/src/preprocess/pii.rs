//! PII redaction: personal data found in English and Chinese clinical text and replaced, either by typed
//! placeholders (`<EMAIL>`, `<PHONE>`, `<IP>`, `<ID>`, `<MRN>`, `<DOB>`, `<NAME>`, `<LOCATION>`, `<DATE>`,
//! `<AGE>`) or by consistent surrogates (`mode = "surrogate"`: the same person keeps one fake name through a
//! document, and dates move by one offset per document; see [`super::surrogate`]).
//!
//! Found by pattern: e-mail addresses; phone numbers (North American and international formats, Chinese mobiles
//! and landlines); IPv4 addresses; US social security numbers and Chinese resident identity numbers (checksum
//! and birth date verified); medical record numbers, dates of birth and patient names after their field labels
//! (`MRN:`, `DOB:`, `Patient:`, `病历号：`, `出生日期：`, `姓名：` …). Found in prose ([`super::deid`]): person
//! names (titles, relations, full names, first names, earlier mentions; Chinese names by surname and context),
//! street addresses and towns, dates, and ages over 89. Medicine is protected: eponyms from the terminologies
//! (Paget disease, Bell's palsy) are never names. Numbers that are not behind a label and do not have the shape
//! of a phone, an identity number or a date (doses, measurements, lab values, codes) are left alone.
//! Each document's counts go to its metadata as `pii: {kind: n}`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::deid::{self, Lexicon};
use super::surrogate::Surrogates;
use super::{Stage, Verdict};
use crate::Doc;

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
    pub mode: PiiMode,
    /// The lexicon folder built by `scripts/fetch-data.sh` (`data/lexicon/deid`): name lists, places and the
    /// protected medical vocabulary. Without it only titles, relations, labels and patterns find names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lexicon: Option<PathBuf>,
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
            mode: PiiMode::Placeholder,
            lexicon: None,
        }
    }
}

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
    fn sorted(mut self) -> Vec<PiiSpan> {
        self.0.sort_by_key(|s| s.start);
        self.0
    }
}

struct Patterns {
    email: Regex,
    ipv4: Regex,
    ssn: Regex,
    cn_id: Regex,
    phone: Regex,
    cn_mobile: Regex,
    cn_landline: Regex,
    mrn: Regex,
    dob: Regex,
    name: Regex,
    cn_name: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |s: &str| Regex::new(s).unwrap_or_else(|e| panic!("PII pattern {s}: {e}"));
        // (?:^|\D) … (?:\D|$) guards instead of \b: between a Chinese character and a digit there is no
        // word boundary, and a phone glued to Chinese text must still be found.
        Patterns {
            email: re(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            ipv4: re(r"(?:^|[^\d.])((?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))(?:[^\d.]|\.\D|\.$|$)"),
            ssn: re(r"(?:^|\D)(\d{3}-\d{2}-\d{4})(?:\D|$)"),
            cn_id: re(r"(?:^|\D)(\d{17}[\dXx])(?:[^\dXx]|$)"),
            phone: re(r"(?:^|[^\d+])((?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4})(?:\D|$)"),
            cn_mobile: re(r"(?:^|\D)((?:\+?86[\s-]?)?1[3-9]\d[\s-]?\d{4}[\s-]?\d{4})(?:\D|$)"),
            cn_landline: re(r"(?:^|\D)(0\d{2,3}-\d{7,8})(?:\D|$)"),
            mrn: re(r"(?i)(?:\bMRN|\bmedical record (?:number|no\.?|#)|\brecord (?:number|no\.?)|\bhospital (?:number|no\.?)|病历号|住院号|门诊号)\s*(?:[:#：]\s*)?([A-Z0-9][A-Z0-9-]{3,})"),
            dob: re(r"(?i)(?:\bDOB|\bD\.O\.B\.|\bdate of birth|\bbirth ?date|\bborn(?: on)?|出生日期|出生年月)\s*[:：]?\s*(\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}|\d{1,2}\s+[A-Za-z]{3,9}\.?\s+\d{4}|[A-Za-z]{3,9}\.?\s+\d{1,2},?\s+\d{4}|\d{4}年\d{1,2}月(?:\d{1,2}日)?)"),
            name: re(r"(?:\b(?:Patient(?: name)?|Pt\.?|Name|Patient's name|Mr\.?|Mrs\.?|Ms\.?|Miss)\s*:\s*|\b(?:Mr|Mrs|Ms|Miss)\.?\s+)((?:(?:Mr|Mrs|Ms|Miss|Dr)\.?[ \t]+)?\p{Lu}[\p{L}'’-]+(?:[ \t]+\p{Lu}\.)?(?:[ \t]+\p{Lu}[\p{L}'’-]+){0,2})"),
            cn_name: re(r"(?:患者|病人|姓名|患者姓名)\s*[:：]\s*(\p{Han}{2,4})"),
        }
    })
}

/// Words after a name label that are not names.
const NOT_NAMES: [&str; 12] = [
    "Male",
    "Female",
    "Unknown",
    "Anonymous",
    "None",
    "Adult",
    "Child",
    "Infant",
    "Patient",
    "Yes",
    "No",
    "Name",
];

/// Weights of the ISO 7064 MOD 11-2 check of a Chinese resident identity number.
const CN_ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];

/// A Chinese resident identity number: region, a real birth date, and the ISO 7064 MOD 11-2 check digit.
fn valid_cn_id(id: &str) -> bool {
    let b = id.as_bytes();
    if b.len() != 18 {
        return false;
    }
    let num = |r: std::ops::Range<usize>| id[r].parse::<u32>().unwrap_or(0);
    let (y, m, d) = (num(6..10), num(10..12), num(12..14));
    if !(1900..=2100).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return false;
    }
    let sum: u32 = b[..17]
        .iter()
        .zip(CN_ID_WEIGHTS)
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize];
    b[17].to_ascii_uppercase() == check
}

/// A redactor ready to run: the configuration and its lexicon, loaded once.
#[derive(Clone)]
pub struct Deid {
    cfg: PiiRedact,
    lexicon: Option<Arc<Lexicon>>,
}

impl std::fmt::Debug for Deid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deid")
            .field("cfg", &self.cfg)
            .field("lexicon", &self.lexicon.is_some())
            .finish()
    }
}

impl Deid {
    /// Loads the configured lexicon.
    ///
    /// # Errors
    /// When the lexicon folder is missing or a list in it cannot be read.
    pub fn new(cfg: &PiiRedact) -> crate::Result<Self> {
        let lexicon = match &cfg.lexicon {
            Some(dir) => Some(Arc::new(Lexicon::load(dir)?)),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            lexicon,
        })
    }

    /// Without a lexicon: labels, patterns, titles, relations, addresses, dates and ages only.
    #[must_use]
    pub fn without_lexicon(cfg: &PiiRedact) -> Self {
        Self {
            cfg: cfg.clone(),
            lexicon: None,
        }
    }

    /// With a lexicon already in memory.
    #[must_use]
    pub fn with_lexicon(cfg: &PiiRedact, lexicon: Lexicon) -> Self {
        Self {
            cfg: cfg.clone(),
            lexicon: Some(Arc::new(lexicon)),
        }
    }

    #[must_use]
    pub fn lexicon(&self) -> Option<&Lexicon> {
        self.lexicon.as_deref()
    }

    /// Every piece of PII in `text`, in text order, not overlapping.
    #[must_use]
    pub fn find(&self, text: &str) -> Vec<PiiSpan> {
        let c = &self.cfg;
        let p = patterns();
        let mut spans = Spans::default();
        let mut pattern = |on: bool, re: &Regex, kind: PiiKind, keep: &dyn Fn(&str) -> bool| {
            if !on {
                return;
            }
            for m in re.captures_iter(text) {
                if let Some(g) = m.get(1).or_else(|| m.get(0)) {
                    if keep(g.as_str()) {
                        spans.add(g.start(), g.end(), kind);
                    }
                }
            }
        };
        let any = |_: &str| true;
        // labelled fields first, so that "MRN: 12345678" is an MRN and not a phone
        pattern(c.medical_record_numbers, &p.mrn, PiiKind::Mrn, &any);
        pattern(c.dates_of_birth, &p.dob, PiiKind::Dob, &any);
        pattern(c.emails, &p.email, PiiKind::Email, &any);
        pattern(c.national_ids, &p.cn_id, PiiKind::Id, &valid_cn_id);
        pattern(c.national_ids, &p.ssn, PiiKind::Id, &any);
        pattern(c.phones, &p.cn_mobile, PiiKind::Phone, &any);
        pattern(c.phones, &p.phone, PiiKind::Phone, &any);
        pattern(c.phones, &p.cn_landline, PiiKind::Phone, &any);
        pattern(c.ips, &p.ipv4, PiiKind::Ip, &any);
        let is_name = |s: &str| {
            !NOT_NAMES
                .iter()
                .any(|w| s == *w || s.starts_with(&format!("{w} ")))
        };
        pattern(c.names, &p.name, PiiKind::Name, &is_name);
        pattern(c.names, &p.cn_name, PiiKind::Name, &any);
        deid::find_prose(text, c, self.lexicon.as_deref(), &mut spans);
        spans.sorted()
    }

    /// The text with PII replaced, and how many of each kind. `key` seeds the surrogates (the document id).
    #[must_use]
    pub fn redact_keyed(&self, text: &str, key: &str) -> (String, Vec<(PiiKind, usize)>) {
        self.replace(text, &self.find(text), key)
    }

    /// `text` with `spans` (from [`Deid::find`]) replaced as configured, and how many of each kind.
    #[must_use]
    pub fn replace(
        &self,
        text: &str,
        spans: &[PiiSpan],
        key: &str,
    ) -> (String, Vec<(PiiKind, usize)>) {
        let mut counts: Vec<(PiiKind, usize)> = Vec::new();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        let mut surrogates = (self.cfg.mode == PiiMode::Surrogate)
            .then(|| Surrogates::new(key, self.lexicon.as_deref()));
        for s in spans {
            out.push_str(&text[at..s.start]);
            let found = &text[s.start..s.end];
            if let Some(sur) = &mut surrogates {
                out.push_str(&sur.replace(found, s.kind));
            } else {
                out.push('<');
                out.push_str(s.kind.tag());
                out.push('>');
            }
            at = s.end;
            match counts.iter_mut().find(|(k, _)| *k == s.kind) {
                Some((_, n)) => *n += 1,
                None => counts.push((s.kind, 1)),
            }
        }
        out.push_str(&text[at..]);
        (out, counts)
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

impl Stage for Deid {
    fn name(&self) -> &'static str {
        "pii_redact"
    }
    fn apply(&self, mut doc: Doc) -> Verdict {
        let (text, counts) = self.redact_keyed(&doc.text, &doc.id);
        if !counts.is_empty() {
            let m: serde_json::Map<String, serde_json::Value> = counts
                .into_iter()
                .map(|(k, n)| (k.tag().to_ascii_lowercase(), n.into()))
                .collect();
            doc.meta.insert("pii".into(), m.into());
            doc.text = text;
        }
        Verdict::Keep(doc)
    }
    fn tally(&self, doc: &Doc) -> Vec<(String, usize)> {
        doc.meta
            .get("pii")
            .and_then(|v| v.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), usize::try_from(v.as_u64()?).ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_examples() {
        let r = PiiRedact::default();
        let cases = [
            (
                "Contact jane.doe@example.org today.",
                "Contact <EMAIL> today.",
            ),
            (
                "Call (415) 555-0134 or +1 415-555-0199.",
                "Call <PHONE> or <PHONE>.",
            ),
            (
                "电话13812345678，座机010-62345678。",
                "电话<PHONE>，座机<PHONE>。",
            ),
            ("Server 192.168.1.20 logged it.", "Server <IP> logged it."),
            ("SSN 123-45-6789 on file.", "SSN <ID> on file."),
            ("身份证号11010519491231002X。", "身份证号<ID>。"),
            ("MRN: A1234567. DOB: 03/14/1962.", "MRN: <MRN>. DOB: <DOB>."),
            ("Patient: John Smith, 62M.", "Patient: <NAME>, 62M."),
            (
                "姓名：王小明，出生日期：1962年3月14日",
                "姓名：<NAME>，出生日期：<DOB>",
            ),
            (
                "Seen with Mrs. Alice Brown today.",
                "Seen with Mrs. <NAME> today.",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(r.redact(text).0, want, "{text}");
        }
        // an 18-digit number with a wrong check digit is not an identity number
        assert_eq!(
            r.redact("lot 110105194912310021").0,
            "lot 110105194912310021"
        );
        // clinical numbers stay
        for text in [
            "Give 500 mg every 8 hours; 2.5 mL of 0.9% saline.",
            "BP 120/80, HR 72, Hb 13.2 g/dL, K76.0 on ICD-10, version 4.2.1.",
            "Liver 14.2 cm, spleen 11.8 cm; follow up in 3-6 months.",
            "Patient: 62-year-old male with RUQ pain.",
            "Patient: Male, 45.",
        ] {
            assert_eq!(r.redact(text).0, text, "changed: {text}");
        }
    }

    /// A valid Chinese resident identity number for a region, birth date and sequence.
    fn cn_id(region: usize, y: usize, m: usize, d: usize, seq: usize) -> String {
        let body = format!("{region:06}{y:04}{m:02}{d:02}{seq:03}");
        let sum: u32 = body
            .bytes()
            .zip(CN_ID_WEIGHTS)
            .map(|(c, w)| u32::from(c - b'0') * w)
            .sum();
        format!("{body}{}", char::from(b"10X98765432"[(sum % 11) as usize]))
    }

    const CLINICAL: [&str; 6] = [
        "Give 500 mg amoxicillin every 8 hours for 7 days.",
        "BP 128/84, HR 76, SpO2 97%, temperature 37.2 C.",
        "Hb 13.2 g/dL, WBC 7.4 x10^9/L, platelets 250.",
        "Liver measures 14.2 cm; spleen 11.8 cm; CBD 4 mm.",
        "Follow up in 3-6 months with repeat ultrasound (ICD-10 K76.0).",
        "肝脏大小正常，胆总管内径4 mm，脾厚3.5 cm。",
    ];

    /// Synthetic note `i` and the personal values planted in it.
    fn planted_note(i: usize) -> (String, Vec<String>) {
        let first = [
            "John", "Mary", "Ahmed", "Olga", "Sean", "Priya", "José", "Anna", "Kwame", "Li",
        ];
        let last = [
            "Smith", "O'Neil", "Garcia", "Nguyen", "Müller", "Okafor", "Kowalski", "Chen", "Brown",
        ];
        let zh = ["王小明", "李华", "张伟", "刘芳", "陈静", "杨洋"];
        let months = ["January", "March", "June", "July", "October", "December"];
        if i % 3 == 2 {
            let name = zh[i % zh.len()];
            let mobile = format!("1{}{:09}", 3 + i % 7, 123_456_789 + i * 7919);
            let (y, m, d) = (1950 + i % 50, 1 + i % 12, 1 + i % 28);
            let id = cn_id(110_105, y, m, d, i % 999);
            let mrn = format!("ZY{:08}", 20_240_000 + i);
            let note = format!(
                "姓名：{name}\n病历号：{mrn}\n电话：{mobile}\n身份证号：{id}\n出生日期：{y}年{m}月{d}日\n{}",
                CLINICAL[5]
            );
            return (note, vec![name.to_string(), mobile, id, mrn]);
        }
        let (f, l) = (first[i % first.len()], last[(i * 7) % last.len()]);
        let phone = if i.is_multiple_of(2) {
            format!("({}) 555-{:04}", 200 + i % 700, i * 37 % 10_000)
        } else {
            format!("+1 {}-555-{:04}", 200 + i % 700, i * 53 % 10_000)
        };
        let email = format!(
            "{}.{}{i}@clinic-mail.org",
            f.to_lowercase(),
            l.to_lowercase().replace('\'', "")
        );
        let mrn = format!("MR{:07}", 1_000_000 + i * 13);
        let dob = if i.is_multiple_of(2) {
            format!("{:02}/{:02}/{}", 1 + i % 12, 1 + i % 28, 1940 + i % 60)
        } else {
            format!(
                "{} {} {}",
                1 + i % 28,
                months[i % months.len()],
                1940 + i % 60
            )
        };
        let ip = format!("10.{}.{}.{}", i % 250, (i * 3) % 250, (i * 7) % 250);
        let note = format!(
            "Patient: {f} {l}\nMRN: {mrn}   DOB: {dob}\nPhone: {phone}; e-mail {email}\nPortal login from {ip}.\n{} {} {}",
            CLINICAL[i % 5],
            CLINICAL[(i + 1) % 5],
            CLINICAL[(i + 2) % 5]
        );
        (note, vec![format!("{f} {l}"), phone, email, mrn, dob, ip])
    }

    #[test]
    fn labelled_clinical_notes_recall_and_no_redaction_of_clinical_numbers() {
        let r = PiiRedact::default();
        let (mut planted, mut found) = (0usize, 0usize);
        let mut missed = Vec::new();
        for i in 0..300 {
            let (note, values) = planted_note(i);
            let (out, _) = r.redact(&note);
            for v in &values {
                planted += 1;
                if out.contains(v.as_str()) {
                    missed.push(v.clone());
                } else {
                    found += 1;
                }
            }
            // the labels survive: only the values go
            for label in [
                "Patient:",
                "MRN:",
                "DOB:",
                "Phone:",
                "姓名：",
                "病历号：",
                "电话：",
            ] {
                assert_eq!(
                    note.contains(label),
                    out.contains(label),
                    "{label} lost:\n{out}"
                );
            }
            for c in CLINICAL {
                if note.contains(c) {
                    assert!(out.contains(c), "clinical text redacted: {c}\n{out}");
                }
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let recall = found as f64 / planted as f64;
        eprintln!("PII recall {found}/{planted} = {recall:.4}");
        assert!(missed.is_empty(), "recall {recall}: missed {missed:?}");
    }
}
