//! Consistent surrogates for `mode = "surrogate"`: a note stays readable for training, and no real identifier
//! survives. Within one document (seeded by its id):
//!
//! - the same name gets the same fake name every time (word by word, so `Tomas Lindgren` and later `Tomas`
//!   agree); first names become first names and surnames surnames, from the lexicon's lists;
//! - every date moves by one offset (30 to 365 days, either way) and keeps its format (`February 9, 2024`,
//!   `02/09/2024`, `2024-02-09`, `2024年2月9日`); a date without a year keeps having none;
//! - addresses and towns become other ones, ages over 89 become 90;
//! - phones, e-mails, record numbers, IDs and IPs become placeholders (a fake one could be someone's).

use std::collections::HashMap;

use chrono::{Datelike, Duration, NaiveDate};

use strata_records::hash::hash_bytes;

use crate::lexicon::{is_han, Lexicon, MONTHS};
use crate::span::PiiKind;

const SYLLABLES: [&str; 16] = [
    "ka", "lo", "ver", "min", "dra", "sel", "tho", "ru", "nen", "bri", "gor", "mar", "dun", "fel",
    "tor", "wen",
];
const STREET_WORDS: [&str; 10] = [
    "Alder", "Beacon", "Cobalt", "Dover", "Fenwick", "Garnet", "Heron", "Ivy", "Kestrel", "Larch",
];
const CN_SURNAMES: [&str; 12] = [
    "赵", "钱", "孙", "李", "周", "吴", "郑", "冯", "陈", "褚", "卫", "蒋",
];
const CN_GIVEN: [char; 16] = [
    '安', '宁', '晓', '文', '思', '远', '嘉', '怡', '子', '航', '欣', '然', '博', '雅', '清', '和',
];
const CN_CITIES: [&str; 4] = ["江城市", "云州市", "临川市", "海平市"];
const CN_ROADS: [&str; 4] = ["和平路", "建设路", "文化路", "青年路"];

/// The key of a patient's surrogates: a note with `patient_id` in its metadata and that patient's DICOM
/// files (`strata deid dicom`) are keyed by it, so their dates move by the same offset. `secret` is the one
/// the user keeps (STRATA_DEID_SECRET); without it the offset of a known patient ID could be recomputed.
#[must_use]
pub fn patient_key(secret: &str, patient: &str) -> String {
    format!("patient\u{1}{secret}\u{1}{patient}")
}

/// The days a patient's dates move by, in notes and images alike.
#[must_use]
pub fn patient_shift_days(secret: &str, patient: &str) -> i64 {
    Surrogates::new(&patient_key(secret, patient), None).shift_days()
}

/// The surrogates of one document.
pub struct Surrogates<'a> {
    seed: u64,
    lex: Option<&'a Lexicon>,
    shift: i64,
    names: HashMap<String, String>,
}

impl<'a> Surrogates<'a> {
    #[must_use]
    pub fn new(key: &str, lex: Option<&'a Lexicon>) -> Self {
        let seed = hash_bytes(key.as_bytes());
        let days = 30 + i64::try_from(seed % 336).unwrap_or(0);
        let shift = if (seed >> 32) & 1 == 0 { days } else { -days };
        Self {
            seed,
            lex,
            shift,
            names: HashMap::new(),
        }
    }

    /// The offset dates move by, in days.
    #[must_use]
    pub fn shift_days(&self) -> i64 {
        self.shift
    }

    fn pick(&self, salt: &str, n: usize) -> usize {
        let h = hash_bytes(format!("{}\u{1}{salt}", self.seed).as_bytes());
        usize::try_from(h % (n.max(1) as u64)).unwrap_or(0)
    }

    fn invented(&self, salt: &str) -> String {
        let a = SYLLABLES[self.pick(&format!("{salt}a"), SYLLABLES.len())];
        let b = SYLLABLES[self.pick(&format!("{salt}b"), SYLLABLES.len())];
        let c = SYLLABLES[self.pick(&format!("{salt}c"), SYLLABLES.len())];
        let mut s = format!("{a}{b}{c}");
        if let Some(f) = s.get_mut(0..1) {
            f.make_ascii_uppercase();
        }
        s
    }

    /// The replacement for `found`, a span of kind `kind`.
    pub fn replace(&mut self, found: &str, kind: PiiKind) -> String {
        match kind {
            PiiKind::Name => self.name(found),
            PiiKind::Date | PiiKind::Dob => {
                shift_date(found, self.shift).unwrap_or_else(|| format!("<{}>", kind.tag()))
            }
            PiiKind::Location | PiiKind::Hospital => self.location(found),
            PiiKind::Age => replace_digits(found, "90"),
            _ => format!("<{}>", kind.tag()),
        }
    }

    fn name(&mut self, found: &str) -> String {
        if found.chars().any(is_han) {
            if let Some(n) = self.names.get(found) {
                return n.clone();
            }
            let len = found.chars().count();
            let mut out = CN_SURNAMES[self.pick(found, CN_SURNAMES.len())].to_string();
            for k in 1..len {
                out.push(CN_GIVEN[self.pick(&format!("{found}{k}"), CN_GIVEN.len())]);
            }
            self.names.insert(found.to_string(), out.clone());
            return out;
        }
        // word by word, keeping spaces, initials' dots and possessives
        let mut out = String::new();
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String, me: &mut Self| {
            if word.is_empty() {
                return;
            }
            let (base, suffix) = match word.strip_suffix("'s").or_else(|| word.strip_suffix("’s"))
            {
                Some(b) => (b.to_string(), &word[b.len()..]),
                None => (word.clone(), ""),
            };
            let fake = me.word(&base);
            out.push_str(&fake);
            out.push_str(suffix);
            word.clear();
        };
        for c in found.chars() {
            if c.is_alphabetic() || c == '\'' || c == '’' || c == '-' {
                word.push(c);
            } else {
                flush(&mut word, &mut out, self);
                out.push(c);
            }
        }
        flush(&mut word, &mut out, self);
        out
    }

    fn word(&mut self, w: &str) -> String {
        if let Some(n) = self.names.get(w) {
            return n.clone();
        }
        let fake = if w.chars().count() == 1 {
            let i = self.pick(w, 26);
            char::from(b'A' + u8::try_from(i).unwrap_or(0)).to_string()
        } else {
            let pool = self.lex.map(|l| {
                if l.first_names.contains(w) {
                    &l.first_pool
                } else {
                    &l.surname_pool
                }
            });
            match pool {
                Some(p) if !p.is_empty() => p[self.pick(w, p.len())].clone(),
                _ => self.invented(w),
            }
        };
        self.names.insert(w.to_string(), fake.clone());
        fake
    }

    fn location(&mut self, found: &str) -> String {
        if let Some(n) = self.names.get(found) {
            return n.clone();
        }
        let out = if found.chars().any(is_han) {
            format!(
                "{}{}{}号",
                CN_CITIES[self.pick(found, CN_CITIES.len())],
                CN_ROADS[self.pick(&format!("{found}r"), CN_ROADS.len())],
                1 + self.pick(&format!("{found}n"), 200)
            )
        } else if found.starts_with(|c: char| c.is_ascii_digit()) {
            // a street address: number, name, and its own kind of street
            let kind = found
                .split_whitespace()
                .rev()
                .find(|w| w.chars().next().is_some_and(char::is_alphabetic))
                .unwrap_or("Street");
            format!(
                "{} {} {kind}",
                1 + self.pick(found, 900),
                STREET_WORDS[self.pick(&format!("{found}s"), STREET_WORDS.len())]
            )
        } else {
            match self.lex.map(|l| &l.place_pool) {
                Some(p) if !p.is_empty() => p[self.pick(found, p.len())].clone(),
                _ => self.invented(found),
            }
        };
        self.names.insert(found.to_string(), out.clone());
        out
    }
}

/// Every run of digits replaced by `with`.
fn replace_digits(s: &str, with: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push_str(with);
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

fn ordinal(d: u32) -> &'static str {
    match (d % 10, d % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

/// The date written in `s` moved by `days`, in the same format; `None` when `s` is not a date this reads.
#[must_use]
pub fn shift_date(s: &str, days: i64) -> Option<String> {
    let shift =
        |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d).map(|x| x + Duration::days(days));
    if s.contains('月') {
        return shift_chinese(s, &shift);
    }
    let parts: Vec<&str> = s.split(['/', '-', '.']).collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return shift_numeric(s, &parts, &shift);
    }
    shift_written(s, &shift)
}

/// Moves a date to a new one (None when the fields are no date).
type Shift<'a> = dyn Fn(i32, u32, u32) -> Option<NaiveDate> + 'a;

/// Chinese: 2024年2月9日, 2月9日, 2024年2月.
fn shift_chinese(s: &str, shift: &Shift<'_>) -> Option<String> {
    let nums: Vec<u32> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|x| !x.is_empty())
        .filter_map(|x| x.parse().ok())
        .collect();
    let has_year = s.contains('年');
    let has_day = s.contains('日') || s.contains('号');
    let (y, m, d) = match (has_year, has_day, nums.as_slice()) {
        (true, true, [y, m, d]) => (i32::try_from(*y).ok()?, *m, *d),
        (false, true, [m, d]) => (2001, *m, *d),
        (true, false, [y, m]) => (i32::try_from(*y).ok()?, *m, 15),
        _ => return None,
    };
    let n = shift(y, m, d)?;
    let day_mark = if s.contains('号') { '号' } else { '日' };
    Some(match (has_year, has_day) {
        (true, true) => format!("{}年{}月{}{day_mark}", n.year(), n.month(), n.day()),
        (false, _) => format!("{}月{}{day_mark}", n.month(), n.day()),
        (true, false) => format!("{}年{}月", n.year(), n.month()),
    })
}

/// Numeric, in three digit groups: y-m-d, m/d/y (d/m/y when the first part is over 12), d.m.y.
fn shift_numeric(s: &str, parts: &[&str], shift: &Shift<'_>) -> Option<String> {
    let sep = s[parts[0].len()..].chars().next()?;
    let n: Vec<u32> = parts.iter().map(|p| p.parse().unwrap_or(0)).collect();
    let pad = |v: u32, like: &str| format!("{v:0w$}", w = like.len());
    if parts[0].len() == 4 {
        let d = shift(i32::try_from(n[0]).ok()?, n[1], n[2])?;
        return Some(format!(
            "{}{sep}{}{sep}{}",
            d.year(),
            pad(d.month(), parts[1]),
            pad(d.day(), parts[2])
        ));
    }
    let year = |v: u32, like: &str| if like.len() == 2 { 2000 + v } else { v };
    let y = i32::try_from(year(n[2], parts[2])).ok()?;
    let day_first = sep == '.' || n[0] > 12;
    let (m, d) = if day_first {
        (n[1], n[0])
    } else {
        (n[0], n[1])
    };
    let x = shift(y, m, d)?;
    let yy = if parts[2].len() == 2 {
        format!("{:02}", x.year() % 100)
    } else {
        x.year().to_string()
    };
    let (a, b) = if day_first {
        (x.day(), x.month())
    } else {
        (x.month(), x.day())
    };
    Some(format!(
        "{}{sep}{}{sep}{yy}",
        pad(a, parts[0]),
        pad(b, parts[1])
    ))
}

/// Written out: February 9, 2024 · 9 February 2024 · Feb 9 · 9th of February · February 2024; rebuilt in
/// the original order, keeping its separators.
fn shift_written(s: &str, shift: &Shift<'_>) -> Option<String> {
    let words: Vec<&str> = s
        .split([' ', '\t', ','])
        .filter(|w| !w.is_empty())
        .collect();
    let month_at = words.iter().position(|w| {
        MONTHS
            .iter()
            .any(|m| m.starts_with(w.trim_end_matches('.')) && w.len() >= 3)
    })?;
    let mword = words[month_at];
    let m = MONTHS
        .iter()
        .position(|x| x.starts_with(mword.trim_end_matches('.')))?;
    let num = |w: &str| -> Option<u32> {
        let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let year = words.iter().filter_map(|w| num(w)).find(|v| *v >= 1000);
    let day = words.iter().filter_map(|w| num(w)).find(|v| *v < 1000);
    let y = i32::try_from(year.unwrap_or(2001)).ok()?;
    let d = shift(y, u32::try_from(m).ok()? + 1, day.unwrap_or(15))?;
    let name = MONTHS[d.month0() as usize];
    let month_out = if mword.trim_end_matches('.') == MONTHS[m] {
        name.to_string()
    } else {
        format!(
            "{}{}",
            &name[..3],
            if mword.ends_with('.') { "." } else { "" }
        )
    };
    let mut out = String::new();
    let mut rest = s;
    for w in &words {
        let at = rest.find(w)?;
        out.push_str(&rest[..at]);
        rest = &rest[at + w.len()..];
        let replacement = if std::ptr::eq(*w, mword) {
            month_out.clone()
        } else if num(w).is_some_and(|v| v >= 1000) {
            d.year().to_string()
        } else if num(w).is_some() {
            let suffix = if w.chars().any(char::is_alphabetic) {
                ordinal(d.day())
            } else {
                ""
            };
            format!("{}{suffix}", d.day())
        } else {
            (*w).to_string()
        };
        out.push_str(&replacement);
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_shift_by_hand_worked_offsets_and_keep_their_format() {
        // 2024 is a leap year: February 9 + 30 days = March 10
        let cases = [
            ("February 9, 2024", 30, "March 10, 2024"),
            ("9 February 2024", 30, "10 March 2024"),
            ("Feb 9, 2024", -40, "Dec 31, 2023"),
            ("Feb. 9", 1, "Feb. 10"),
            ("9th of February", 13, "22nd of February"),
            ("February 2024", 30, "March 2024"),
            ("02/09/2024", 30, "03/10/2024"),
            ("2/9/24", 30, "3/10/24"),
            ("25/12/2023", 7, "01/01/2024"),
            ("09.02.2024", 30, "10.03.2024"),
            ("2024-02-09", -9, "2024-01-31"),
            ("2024年2月9日", 30, "2024年3月10日"),
            ("2月9日", 30, "3月11日"), // no year: read as 2001, not a leap year
            ("2024年2月", 30, "2024年3月"),
        ];
        for (s, days, want) in cases {
            assert_eq!(shift_date(s, days).as_deref(), Some(want), "{s} + {days}");
        }
        assert_eq!(shift_date("02/30/2024", 1), None);
        assert_eq!(shift_date("not a date", 1), None);
    }

    #[test]
    fn names_are_consistent_within_a_document_and_differ_between_documents() {
        let mut a = Surrogates::new("doc-1", None);
        let full = a.replace("Tomas Lindgren", PiiKind::Name);
        let first = a.replace("Tomas", PiiKind::Name);
        assert_eq!(full.split(' ').next(), Some(first.as_str()));
        assert_ne!(full, "Tomas Lindgren");
        assert_eq!(
            a.replace("王磊", PiiKind::Name),
            a.replace("王磊", PiiKind::Name)
        );
        assert_eq!(a.replace("王磊", PiiKind::Name).chars().count(), 2);
        assert_eq!(
            a.replace("Lindgren's", PiiKind::Name),
            format!("{}'s", full.split(' ').nth(1).unwrap())
        );
        let shifts: Vec<i64> = (0..50)
            .map(|i| Surrogates::new(&format!("d{i}"), None).shift_days())
            .collect();
        assert!(shifts.iter().all(|d| (30..=365).contains(&d.abs())));
        assert!(shifts.iter().any(|d| *d < 0) && shifts.iter().any(|d| *d > 0));
        assert_eq!(a.replace("94-year-old", PiiKind::Age), "90-year-old");
        assert_eq!(a.replace("97岁", PiiKind::Age), "90岁");
        assert_eq!(a.replace("555-0134", PiiKind::Phone), "<PHONE>");
    }
}
