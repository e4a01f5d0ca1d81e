//! Identifiers found by their shape or their field label: e-mail addresses, phone numbers, IP addresses,
//! national identity numbers (checksums verified), medical record numbers, dates of birth and labelled names.

use std::sync::OnceLock;

use regex::Regex;

use crate::span::{PiiKind, Spans};
use crate::PiiRedact;

pub(crate) struct Patterns {
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

pub(crate) fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |s: &str| Regex::new(s).unwrap_or_else(|e| panic!("PII pattern {s}: {e}"));
        // (?:^|\D) … (?:\D|$) guards instead of \b: between a Chinese character and a digit there is no
        // word boundary, and a phone glued to Chinese text must still be found.
        Patterns {
            email: re(r"[\p{L}\p{N}._%+-]+@[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}"),
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
pub(crate) const NOT_NAMES: [&str; 12] = [
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
pub(crate) const CN_ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];

/// A Chinese resident identity number: region, a real birth date, and the ISO 7064 MOD 11-2 check digit.
pub(crate) fn valid_cn_id(id: &str) -> bool {
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

/// Adds the spans of every enabled pattern to `spans`, labelled fields first, so that "MRN: 12345678" is an
/// MRN and not a phone.
pub(crate) fn find_patterns(text: &str, c: &PiiRedact, spans: &mut Spans) {
    let p = patterns();
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
}
