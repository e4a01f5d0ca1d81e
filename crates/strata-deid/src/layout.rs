//! Identifiers found by where they stand in a note's layout, as hospital systems print notes: letterheads,
//! header blocks, signature lines, dictation footers, lists and tables. Runs before the labelled patterns and
//! the prose detectors, which know sentences.
//!
//! - **Names** after header labels (`Patient:`, `Attending:`, `RE:`, `Dictated By:`, `Electronically signed
//!   by`, `Referring:` …) in any case and order (`MARLOWE,DENNIS`, `Okafor, Ruth`, `Delphine R. Moss`,
//!   `F. Last`); every name of a `cc:` line; a name before a role (`Ruth Okafor, NP`) or a relation in
//!   brackets; a capitalised name at the head of a line followed by a record number; a title before capitals
//!   (`Mrs. RODER`); `Last, First` when the lexicon knows the first name; `First M. Last`; lower-case
//!   signature lines (`hartley`, `wenvak, M.D.`, `marrav/jg55`) at the foot of a note.
//! - **Numbers by their context**: record, unit and chart numbers (`Record #:`, `Unit No:`), accounts,
//!   insurance, social security, accession and job numbers, user names and dictation codes (`T: HC71`,
//!   `Resulted by: JP73`, the code after a signature); pagers, beepers and extensions (`x52731`, `ext. 4417`).
//! - **Dates**: month/year (`7/91`, `11/04`, `5/2012`; not a score such as `pain 7/10`), a month alone
//!   (`March`; `May` only after `in`, `since` …), `24-Apr-2018`.
//! - **Institutions**: the capitalised words before Hospital, Clinic, Medical Center, Infirmary … (in
//!   capitals in letterheads), unless they are a department's (`Cardiology Clinic`), and the place after
//!   `Loc:` / `Facility:`.
//! - **Towns and ZIP codes** in `Town, ST 12345`.
//!
//! At the end ([`propagate_names`]) every other mention of a found name's words, in any case, is a name too.

use std::collections::HashSet;
use std::sync::OnceLock;

use regex::Regex;

use crate::lexicon::{title_case, without_possessive, Lexicon, MONTHS};
use crate::prose::word_re;
use crate::span::{PiiKind, Spans};
use crate::PiiRedact;

/// A word of a name, capitalised or in capitals (`Okafor`, `OKAFOR`, `O'NEIL`, `Smith-Jones`).
const NW: &str = r"\p{Lu}(?:[\p{L}\p{M}]|['’-]\p{L})+";
/// A word of a name in capitals only.
const NWC: &str = r"\p{Lu}(?:\p{Lu}|['’-]\p{Lu})+";
/// The roles written after a name (`MD`, `RN`, …); with the dotted `M.D.` and `D.O.`, the alternatives of
/// [`role_re`].
const ROLES: [&str; 17] = [
    "MD", "DO", "NP", "RN", "LPN", "CNA", "PhD", "RPh", "DDS", "MBBS", "FACP", "FACS", "CNM",
    "CRNA", "MSW", "LCSW", "PA-C",
];

struct Layout {
    label_name: Regex,
    header_name: Regex,
    cc: Regex,
    before_role: Regex,
    before_relation: Regex,
    relation_bracket: Regex,
    id_shape: Regex,
    line_head_name: Regex,
    title_caps: Regex,
    last_first: Regex,
    middle_initial: Regex,
    initial_last: Regex,
    context_name: Regex,
    signature: Regex,
    role_code: Regex,
    label_mrn: Regex,
    label_id: Regex,
    label_phone: Regex,
    extension: Regex,
    month_year: Regex,
    month_alone: Regex,
    may: Regex,
    day_mon_year: Regex,
    institution: Regex,
    label_place: Regex,
    town_zip: Regex,
}

/// A role after a name, as a regex group: the dotted forms, then [`ROLES`] (escaped).
fn role_re() -> String {
    let words: Vec<String> = ROLES.iter().map(|r| regex::escape(r)).collect();
    format!(r"(?:M\.D\.|D\.O\.|{})", words.join("|"))
}

fn layout() -> &'static Layout {
    static L: OnceLock<Layout> = OnceLock::new();
    L.get_or_init(|| {
        let re = |s: &str| Regex::new(s).unwrap_or_else(|e| panic!("layout pattern {s}: {e}"));
        let role = role_re();
        let name = format!(
            r"(?:\p{{Lu}}\.[ ]?)?{NW}(?:[ ]?,[ ]?{NW}(?:[ ]\p{{Lu}}\.?)?(?-u:\b)|(?:[ ](?:\p{{Lu}}\.|{NW})){{0,3}})"
        );
        Layout {
            label_name: re(&format!(
                r"(?i:(?-u:\b)(?:attending(?: physician| md)?|pcp|primary care(?: physician| provider)?|referring(?: physician| provider| md| dr\.?)?|ordering(?: physician| provider| md)?|dictated by|electronically signed by|signed by|signed|reviewed by|verified by|approved by|read by|interpreted by|performed by|requested by|resident|fellow|intern|surgeon|assistant|anesthesiologist|consultant|physician|provider|author|primary nurse|nurse|family contact|emergency contact|next of kin|nok|guardian|interpreter|informant|accepting(?: physician| md)?|caller|message from|spoke with))[ \t]*[:#][ \t]*(?:Dr\.?[ \t]+)?({name})"
            )),
            header_name: re(&format!(
                r"(?m)(?:^|\t|  |;)[ \t]*(?i:patient(?: name)?|pt(?: name)?|name|re|contact|member|subscriber|insured)[ \t]*[:#][ \t]*(?:(?:Mr|Mrs|Ms|Dr)\.?[ \t]+)?({name})"
            )),
            cc: re(r"(?m)(?:^|[ \t])(?:cc|CC|Cc|c\.c\.|Care team|CARE TEAM|Team|Copies to|COPIES TO)[ \t]*:[ \t]*([^\r\n]+)"),
            before_role: re(&format!(
                r"((?:\p{{Lu}}\.[ \t]*)?{NW}(?:[ \t]*,[ \t]*{NW})?(?:[ \t]+(?:\p{{Lu}}\.|{NW})){{0,2}})[ \t]*,?[ \t]+{role}(?:[^\w]|$)"
            )),
            relation_bracket: re(&format!(
                r"(?i:(?-u:\b)(?:family|wife|husband|son|daughter|mother|father|brother|sister|partner|friend|spouse|caregiver|guardian))[ \t]*\(({NW}(?:[ ]{NW})?)\)"
            )),
            id_shape: re(r"(?-u:\b)([A-Za-z]{0,3}\d{6,10}|\d{2,3}-\d{2,3}-\d{2,3}(?:-\d{1,2})?)(?-u:\b)"),
            before_relation: re(&format!(
                r"({NW}(?:[ \t]*,[ \t]*{NW}|(?:[ \t]+{NW}){{0,2}}))[ \t]*\((?:son|daughter|wife|husband|mother|father|brother|sister|friend|partner|guardian|niece|nephew|spouse|caregiver|grandson|granddaughter)\)"
            )),
            line_head_name: re(&format!(
                r"(?m)(?:(?:^|\t)[ ]*({NWC}(?:[ ](?:\p{{Lu}}\.|{NWC})){{1,2}})|(?-u:\b)({NWC}[ ]?,[ ]?{NWC}(?:[ ]\p{{Lu}}\.?)?))[ \t]+([A-Z]{{0,3}}\d[\d-]{{3,}}\d)(?-u:\b)"
            )),
            title_caps: re(&format!(
                r"(?-u:\b)(?:Mr|Mrs|Ms|Miss|Dr|Prof|MR|MRS|MS|DR)\.?[ \t]+({NWC}(?:[ \t]+{NWC})?)(?-u:\b)"
            )),
            last_first: re(&format!(
                r"({NW})[ \t]*,[ \t]*({NW})(?:[ \t]+\p{{Lu}}\.)?"
            )),
            middle_initial: re(&format!(r"({NW})[ \t]+\p{{Lu}}\.[ \t]+({NW})")),
            initial_last: re(&format!(r"(?:^|[ \t,:(])\p{{Lu}}\.[ \t]+({NW})")),
            context_name: re(&format!(
                r"(?i:(?-u:\b)(?:physician|attending|resident|surgeon|nurse|provider|clinician|colleague|cardiologist|oncologist|radiologist|pcp|partner|dr))\.?[ \t]+({NW}(?:[ \t]+{NW})?)"
            )),
            signature: re(r"(?m)^[ \t]*([a-z][a-z'’-]{2,})(?:[ \t]*,[ \t]*(?:M\.D\.|MD|DO|NP|RN|PA-C)\.?|[ \t]*/[ \t]*([A-Za-z]{1,4}\d{0,4})|[ \t]+([A-Za-z]{1,4}\d{1,4}))?[ \t]*(?:[ \t]+([A-Za-z]{1,4}\d{1,4}))?(?:[ \t]+\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}(?:[ \t]+\d{1,2}:\d{2}(?:[ \t]*[AaPp]\.?[Mm]?\.?)?)?)?[ \t]*\r?$"),
            role_code: re(&format!(
                r"(?m)(?:{role}|Signed:[^\r\n]*?)\.?[ \t]+([A-Za-z]{{1,4}}\d{{1,4}})(?-u:\b)|(?-u:\b)(?:Signed|SIGNED):[ \t]+[A-Za-z'’-]+[ \t]+([A-Za-z]{{1,4}}\d{{1,4}})(?-u:\b)"
            )),
            label_mrn: re(r"(?i:(?-u:\b)(?:mrn|med(?:ical)? rec(?:ord)?\.?(?: no\.?| number| #)?|record(?: no\.?| number)?|unit(?: no\.?| number)?|chart(?: no\.?| number)?|hospital(?: no\.?| number)|patient id|pt id|mr))[ \t]*[:#]*[ \t]*#?[ \t]*([A-Za-z]{0,3}\d[\dA-Za-z/-]{2,20})"),
            label_id: re(r"(?m)(?i:(?-u:\b)(?:acct|account|ssn|social security(?: no\.?| number)?|ins(?:urance)?\.? id|member id|policy|plan id|subscriber id|group(?: no\.?| #)|accession|acc|license|lic|dea|npi|job|order|encounter|csn|fin|visit id|visit no|claim|case|transcribed by|transcriptionist|resulted by|entered by|user(?:name)?|device(?: id)?|serial(?: no\.?)?)(?:[ \t]*(?:no\.?|number|#|id))?[ \t]*[:#]+[ \t]*#?[ \t]*|^[ \t]*(?:T|D|TD|DT|JOB)[ \t]*:[ \t]*)([A-Za-z]{0,4}\d[\dA-Za-z/-]{1,20}|[A-Za-z]{1,4}\d{1,4})"),
            label_phone: re(r"(?i:(?-u:\b)(?:pager|beeper|pgr|bpr|page|pg|cell|mobile|tel|phone|fax|ph)\.?)[ \t]*[:#]?[ \t]*(?:#[ \t]*)?(\d[\d-]{2,11}\d)"),
            extension: re(r"(?:(?-u:\b)(?:ext|EXT|Ext)\.?[ \t]*|(?-u:\b)extension[ \t]+)(\d{2,6})(?-u:\b)|(?:^|[^\w])(x\d{3,6})(?-u:\b)"),
            month_year: re(r"(?:^|[^\d/.\-:])((?:0?[1-9]|1[0-2])/(?:\d{2}|(?:19|20)\d{2}))(?:[^\d/]|$)"),
            month_alone: re(r"(?-u:\b)(January|February|March|April|June|July|August|September|October|November|December|JANUARY|FEBRUARY|MARCH|APRIL|JUNE|JULY|AUGUST|SEPTEMBER|OCTOBER|NOVEMBER|DECEMBER)(?-u:\b)"),
            may: re(r"(?i:(?-u:\b)(?:in|since|of|during|until|till|by|early|late|mid|last|next|this|from|before|after))[ \t]+(May)(?-u:\b)"),
            day_mon_year: re(r"(?i)(?-u:\b)\d{1,2}-(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)-(?:\d{4}|\d{2})(?-u:\b)"),
            institution: re(&format!(
                r"((?:(?i:St|Saint)\.?[ \t]+)?{NW}(?:[ \t]+(?:of[ \t]+)?{NW}){{0,4}})[ \t]+(?i:medical center|medical centre|hospital|clinic|health center|health centre|healthcare|health care|health system|infirmary|hospice|nursing home|rehabilitation (?:center|hospital)|rehab|family practice|medical group|medical associates|emergency dept|emergency department|imaging services|department of radiology|surgical center|cancer center|children's hospital|urgent care|care center|sanatorium|polyclinic)(?-u:\b)"
            )),
            label_place: re(&format!(
                r"(?m)(?:^|[ \t])(?i:loc|location|facility|site|institution|hospital|from|to)[ \t]*:[ \t]*((?:(?i:St|Saint)\.?[ \t]+)?{NW}(?:[ \t]+{NW}){{0,3}})"
            )),
            town_zip: re(&format!(
                r"({NW}(?:[ \t]+{NW}){{0,2}}),[ \t]+[A-Z]{{2}}[ \t]+(\d{{5}}(?:-\d{{4}})?)(?-u:\b)"
            )),
        }
    })
}

/// Words that look like names in a header but are not: roles, sexes, placeholders, titles.
const NOT_NAME: [&str; 40] = [
    "md",
    "m.d",
    "do",
    "np",
    "rn",
    "lpn",
    "cna",
    "pa",
    "phd",
    "dr",
    "mr",
    "mrs",
    "ms",
    "male",
    "female",
    "unknown",
    "none",
    "patient",
    "self",
    "same",
    "not",
    "no",
    "yes",
    "n/a",
    "na",
    "the",
    "see",
    "as",
    "above",
    "below",
    "attending",
    "resident",
    "staff",
    "team",
    "on",
    "call",
    "service",
    "pending",
    "unable",
    "declined",
];

/// Words of department names: a clinic of these is no institution's name (`Cardiology Clinic`).
const GENERIC: [&str; 66] = [
    "the",
    "a",
    "an",
    "our",
    "your",
    "this",
    "that",
    "his",
    "her",
    "their",
    "of",
    "and",
    "cardiology",
    "diabetes",
    "pain",
    "endocrine",
    "endocrinology",
    "oncology",
    "radiology",
    "surgery",
    "surgical",
    "emergency",
    "internal",
    "medicine",
    "medical",
    "family",
    "general",
    "community",
    "memorial",
    "regional",
    "rehabilitation",
    "university",
    "health",
    "mental",
    "psychiatric",
    "women's",
    "children's",
    "veterans",
    "cancer",
    "heart",
    "eye",
    "dental",
    "urgent",
    "care",
    "outpatient",
    "inpatient",
    "primary",
    "specialty",
    "sleep",
    "wound",
    "dialysis",
    "neurology",
    "gastroenterology",
    "pediatric",
    "pediatrics",
    "county",
    "city",
    "state",
    "teaching",
    "private",
    "local",
    "walk-in",
    "anticoagulation",
    "renal",
    "imaging",
    "services",
];

fn is_not_name(w: &str) -> bool {
    let l = w.trim_end_matches('.').to_lowercase();
    NOT_NAME.contains(&l.as_str()) || MONTHS.iter().any(|m| m.eq_ignore_ascii_case(&l))
}

/// The kinds of street an address ends with: `129 Mill Boulevard, Arica` is no "Last, First".
const STREET_TYPES: [&str; 24] = [
    "street",
    "st",
    "road",
    "rd",
    "avenue",
    "ave",
    "lane",
    "ln",
    "drive",
    "dr",
    "court",
    "ct",
    "boulevard",
    "blvd",
    "way",
    "place",
    "pl",
    "terrace",
    "circle",
    "parkway",
    "highway",
    "square",
    "trail",
    "plaza",
];

/// Words a score or a grade is written after: `pain 7/10` and `Apgar 8/10` are no dates.
const SCORES: [&str; 16] = [
    "pain", "apgar", "strength", "power", "murmur", "mmse", "moca", "score", "grade", "gcs",
    "scale", "rated", "vision", "motor", "reflexes", "ratio",
];

/// Words a month/year date follows (`diagnosed in 7/91`, `since 3/98`).
const DATE_CONTEXT: [&str; 26] = [
    "in",
    "since",
    "on",
    "from",
    "until",
    "till",
    "of",
    "dated",
    "by",
    "to",
    "last",
    "hospitalized",
    "diagnosed",
    "admitted",
    "discharged",
    "seen",
    "prior",
    "through",
    "before",
    "after",
    "circa",
    "date",
    "dd",
    "td",
    "started",
    "stopped",
];

/// Adds the layout's identifiers to `spans`.
pub(crate) fn find_layout(text: &str, cfg: &PiiRedact, lex: Option<&Lexicon>, spans: &mut Spans) {
    let l = layout();
    if cfg.medical_record_numbers {
        numbers(&l.label_mrn, text, PiiKind::Mrn, spans);
    }
    if cfg.national_ids {
        numbers(&l.label_id, text, PiiKind::Id, spans);
        for c in l.role_code.captures_iter(text) {
            if let Some(g) = c.get(1).or_else(|| c.get(2)) {
                spans.add(g.start(), g.end(), PiiKind::Id);
            }
        }
    }
    if cfg.phones {
        for re in [&l.label_phone, &l.extension] {
            for c in re.captures_iter(text) {
                if let Some(g) = c.get(1).or_else(|| c.get(2)) {
                    spans.add(g.start(), g.end(), PiiKind::Phone);
                }
            }
        }
    }
    if cfg.dates {
        dates(text, l, spans);
    }
    if cfg.names {
        names(text, l, lex, cfg.national_ids, spans);
    }
    if cfg.institutions {
        institutions(text, l, spans);
    }
    if cfg.locations {
        for c in l.town_zip.captures_iter(text) {
            for g in [c.get(1), c.get(2)].into_iter().flatten() {
                spans.add(g.start(), g.end(), PiiKind::Location);
            }
        }
    }
}

/// A labelled number: claimed unless it is a date (the date detectors have it then) or has no digit.
fn numbers(re: &Regex, text: &str, kind: PiiKind, spans: &mut Spans) {
    for c in re.captures_iter(text) {
        let Some(g) = c.get(1) else { continue };
        let v = g.as_str().trim_end_matches(['/', '-']);
        if looks_like_date(v) || !v.bytes().any(|b| b.is_ascii_digit()) {
            continue;
        }
        spans.add(g.start(), g.start() + v.len(), kind);
    }
}

fn looks_like_date(v: &str) -> bool {
    let parts: Vec<&str> = v.split(['/', '-', '.']).collect();
    if parts.len() < 2
        || parts.len() > 3
        || !parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    let n: Vec<u32> = parts.iter().filter_map(|p| p.parse().ok()).collect();
    n.len() == parts.len()
        && (1..=12).contains(&n[0])
        && (parts.len() == 2 || (1..=31).contains(&n[1]))
}

fn dates(text: &str, l: &Layout, spans: &mut Spans) {
    for m in l.day_mon_year.find_iter(text) {
        spans.add(m.start(), m.end(), PiiKind::Date);
    }
    for c in l.month_year.captures_iter(text) {
        let Some(g) = c.get(1) else { continue };
        let before = text[..g.start()].trim_end_matches([' ', '\t', ':']);
        let prev = before
            .rsplit(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("")
            .to_lowercase();
        // a score's noun after it: "2/6 systolic murmur", "4/5 strength"
        let after = text[g.end()..].trim_start();
        let score = SCORES.contains(&prev.as_str())
            || prev.ends_with("score")
            || ["systolic", "murmur", "strength", "power"].iter().any(|w| {
                after
                    .get(..w.len())
                    .is_some_and(|a| a.eq_ignore_ascii_case(w))
            });
        // 7/91 after "in", "since", "hospitalized"; 11/04, 02/22 and 5/2012 by their shape; 3/10 alone is a ratio
        let v = g.as_str();
        let (m, y) = v.split_once('/').unwrap_or((v, ""));
        let shaped = y.len() == 4 || m.starts_with('0') || y.starts_with('0');
        if !score && (shaped || DATE_CONTEXT.contains(&prev.as_str())) {
            spans.add(g.start(), g.end(), PiiKind::Date);
        }
    }
}

/// What only counts once the prose detectors have had their turn: a month alone (`March`; a written-out date
/// `March 3, 2004` is the prose detector's), and every other mention of a found name.
pub(crate) fn find_layout_late(
    text: &str,
    cfg: &PiiRedact,
    lex: Option<&Lexicon>,
    spans: &mut Spans,
    protected: &dyn Fn(usize, usize) -> bool,
) {
    let l = layout();
    if cfg.dates {
        for m in l.month_alone.find_iter(text) {
            spans.add(m.start(), m.end(), PiiKind::Date);
        }
        for c in l.may.captures_iter(text) {
            if let Some(g) = c.get(1) {
                spans.add(g.start(), g.end(), PiiKind::Date);
            }
        }
    }
    if cfg.names {
        propagate_names(text, lex, spans, protected);
    }
}

/// Whether `w` is an everyday word (needs more evidence to be a name).
fn common(lex: Option<&Lexicon>, w: &str) -> bool {
    lex.is_some_and(|l| l.is_common(w))
}

fn first_name(lex: Option<&Lexicon>, w: &str) -> bool {
    lex.is_some_and(|l| {
        let title = title_case(w);
        l.first_names.contains(&title) && !l.is_common(&title)
    })
}

/// Whether a span the tagger calls a name has a name's shape: words of letters (and initials), each
/// capitalised or (a signature) lower case, not a role, title or month, and not everyday words only.
pub(crate) fn plausible_name(span: &str, lex: Option<&Lexicon>) -> bool {
    let words: Vec<&str> = word_re().find_iter(span).map(|m| m.as_str()).collect();
    let rest_ok = span.chars().all(|c| {
        c.is_alphabetic() || c == ' ' || c == '.' || c == '\'' || c == '’' || c == '-' || c == ','
    });
    let shaped = |w: &&str| {
        let n = w.chars().count();
        let upper = w.chars().all(|c| !c.is_lowercase());
        let lower = w.chars().all(|c| !c.is_uppercase());
        !is_not_name(w)
            && !GENERIC.contains(&w.to_lowercase().as_str())
            && (n == 1 && upper
                || n >= 2
                    && w.chars().next().is_some_and(char::is_uppercase)
                    && !(upper && n <= 3 && !first_name(lex, w))
                || n >= 3 && lower && !common(lex, w))
    };
    // one word in capitals is a name only when the lexicon knows it (PNEUMONIA is a heading's word)
    let lone_caps = words.len() == 1
        && words[0].chars().all(|c| !c.is_lowercase())
        && !first_name(lex, words[0])
        && !lex.is_some_and(|x| x.surnames.contains(&title_case(words[0])));
    rest_ok
        && !lone_caps
        && !words.is_empty()
        && words.iter().all(shaped)
        && words
            .iter()
            .any(|w| w.chars().count() >= 2 && !common(lex, w))
}

/// Claims `[s, e)` as a name after cutting trailing roles and refusing one that is no name.
fn claim_name(text: &str, s: usize, e: usize, spans: &mut Spans) -> bool {
    let mut end = e;
    // cut roles and stray punctuation at the end: "Okafor, Ruth MD" → "Okafor, Ruth"
    loop {
        let t = text[s..end].trim_end_matches([' ', '\t', ',', '.']);
        end = s + t.len();
        let last = t.rsplit([' ', '\t', ',']).next().unwrap_or("");
        if last.len() < t.len()
            && NOT_NAME.contains(&last.trim_end_matches('.').to_lowercase().as_str())
        {
            end -= last.len();
            continue;
        }
        break;
    }
    let t = &text[s..end];
    let first = t.split([' ', '\t', ',']).next().unwrap_or("");
    if t.is_empty() || is_not_name(first) {
        return false;
    }
    // an initial keeps its dot
    let end = if text[end..].starts_with('.')
        && t.rsplit(' ').next().is_some_and(|w| w.chars().count() == 1)
    {
        end + 1
    } else {
        end
    };
    spans.add(s, end, PiiKind::Name)
}

fn names(text: &str, l: &Layout, lex: Option<&Lexicon>, codes: bool, spans: &mut Spans) {
    for c in l.line_head_name.captures_iter(text) {
        // the number after a name at the head of a line is the patient's record number
        if let (Some(g), Some(n)) = (c.get(1).or_else(|| c.get(2)), c.get(3)) {
            if claim_name(text, g.start(), g.end(), spans) && codes && !looks_like_date(n.as_str())
            {
                spans.add(n.start(), n.end(), PiiKind::Mrn);
            }
        }
    }
    if codes {
        patient_line_numbers(text, l, spans);
    }
    for re in [
        &l.label_name,
        &l.header_name,
        &l.title_caps,
        &l.before_relation,
        &l.relation_bracket,
    ] {
        for c in re.captures_iter(text) {
            if let Some(g) = c.get(1) {
                claim_name(text, g.start(), g.end(), spans);
            }
        }
    }
    for c in l.before_role.captures_iter(text) {
        let Some(g) = c.get(1) else { continue };
        let words: Vec<&str> = g
            .as_str()
            .split([' ', '\t', ','])
            .filter(|w| !w.is_empty())
            .collect();
        // a role after everyday words ("Internal Medicine, MD") or an abbreviation ("CXR PA") is no name
        let abbreviation = |w: &&str| {
            w.chars().count() <= 3 && w.chars().all(char::is_uppercase) && !first_name(lex, w)
        };
        let everyday = |w: &&str| {
            common(lex, w) || w.ends_with('.') || GENERIC.contains(&w.to_lowercase().as_str())
        };
        if words.iter().all(everyday) || words.iter().any(abbreviation) {
            continue;
        }
        claim_name(text, g.start(), g.end(), spans);
    }
    cc_lines(text, l, spans);
    for c in l.last_first.captures_iter(text) {
        let (Some(a), Some(b)) = (c.get(1), c.get(2)) else {
            continue;
        };
        let street = STREET_TYPES.contains(&a.as_str().to_lowercase().as_str());
        if first_name(lex, b.as_str())
            && !common(lex, a.as_str())
            && !is_not_name(a.as_str())
            && !street
        {
            claim_name(
                text,
                a.start(),
                c.get(0).map_or(b.end(), |m| m.end()),
                spans,
            );
        }
    }
    for c in l.middle_initial.captures_iter(text) {
        let (Some(a), Some(b)) = (c.get(1), c.get(2)) else {
            continue;
        };
        if !common(lex, a.as_str()) && !common(lex, b.as_str()) && !is_not_name(a.as_str()) {
            claim_name(text, a.start(), b.end(), spans);
        }
    }
    for c in l.initial_last.captures_iter(text) {
        let Some(g) = c.get(1) else { continue };
        let init = text[..g.start()].trim_end().len() - 2;
        if lex.is_some() && !common(lex, g.as_str()) && !is_not_name(g.as_str()) {
            spans.add(init, g.end(), PiiKind::Name);
        }
    }
    for c in l.context_name.captures_iter(text) {
        let Some(g) = c.get(1) else { continue };
        let first = g.as_str().split([' ', '\t']).next().unwrap_or("");
        if lex.is_some() && !common(lex, first) && !is_not_name(first) {
            let end = if g
                .as_str()
                .split([' ', '\t'])
                .nth(1)
                .is_some_and(|w| common(lex, w))
            {
                g.start() + first.len()
            } else {
                g.end()
            };
            claim_name(text, g.start(), end, spans);
        }
    }
    signatures(text, l, lex, codes, spans);
}

/// A record number by its shape on the patient's header line: "Patient: Okafor, Ruth  (H8754519)".
fn patient_line_numbers(text: &str, l: &Layout, spans: &mut Spans) {
    for c in l.header_name.captures_iter(text) {
        let Some(g) = c.get(1) else { continue };
        let line_end = text[g.end()..]
            .find('\n')
            .map_or(text.len(), |k| g.end() + k);
        for m in l.id_shape.captures_iter(&text[g.end()..line_end]) {
            if let Some(n) = m.get(1) {
                if !looks_like_date(n.as_str()) {
                    spans.add(g.end() + n.start(), g.end() + n.end(), PiiKind::Mrn);
                }
            }
        }
    }
}

/// Every name of a `cc:` or care-team line: the capitalised words that are no role.
fn cc_lines(text: &str, l: &Layout, spans: &mut Spans) {
    for c in l.cc.captures_iter(text) {
        let Some(g) = c.get(1) else { continue };
        let mut run: Option<(usize, usize)> = None;
        let line = g.as_str();
        for w in word_re().find_iter(line) {
            let t = w.as_str();
            let name_like = t.chars().next().is_some_and(char::is_uppercase)
                && !is_not_name(t)
                && { !ROLES.contains(&t) };
            let (s, e) = (g.start() + w.start(), g.start() + w.end());
            let e = if line[w.end()..].starts_with('.') && t.chars().count() == 1 {
                e + 1
            } else {
                e
            };
            match (&mut run, name_like) {
                (Some((_, re)), true)
                    if text[*re..s].chars().all(|c| c == ' ' || c == ',')
                        && text[*re..s].len() <= 2 =>
                {
                    *re = e;
                }
                (_, true) => {
                    if let Some((a, b)) = run.take() {
                        claim_name(text, a, b, spans);
                    }
                    run = Some((s, e));
                }
                (_, false) => {
                    if let Some((a, b)) = run.take() {
                        claim_name(text, a, b, spans);
                    }
                }
            }
        }
        if let Some((a, b)) = run {
            claim_name(text, a, b, spans);
        }
    }
}

/// Lower-case signature lines near the foot of a note or beside a dictation footer, and their codes.
fn signatures(text: &str, l: &Layout, lex: Option<&Lexicon>, codes: bool, spans: &mut Spans) {
    let tail_from = {
        // the last six lines with text
        let mut n = 0;
        let mut at = text.len();
        for (i, _) in text.rmatch_indices('\n') {
            if text[i..at].trim().is_empty() {
                at = i;
                continue;
            }
            n += 1;
            at = i;
            if n == 6 {
                break;
            }
        }
        if n < 6 {
            0
        } else {
            at
        }
    };
    for c in l.signature.captures_iter(text) {
        let Some(g) = c.get(1) else { continue };
        let whole = c.get(0).map_or(0..0, |m| m.range());
        let evidence = c.get(2).is_some()
            || c.get(3).is_some()
            || c.get(0).is_some_and(|m| m.as_str().contains(','));
        let after = &text[whole.end..];
        let footer_next = after.lines().take(3).any(|x| {
            ["DD:", "D:", "TD:", "T:", "cc:", "CC:", "Dictated"]
                .iter()
                .any(|p| x.trim_start().starts_with(p))
        });
        let near_end = whole.start >= tail_from;
        let word_ok = lex.is_some_and(|x| !x.is_common(g.as_str())) || (lex.is_none() && evidence);
        if word_ok
            && (evidence || footer_next || near_end)
            && spans.add(g.start(), g.end(), PiiKind::Name)
            && codes
        {
            for k in [2, 3, 4] {
                if let Some(code) = c.get(k) {
                    if code.as_str().bytes().any(|b| b.is_ascii_digit()) || k == 2 {
                        spans.add(code.start(), code.end(), PiiKind::Id);
                    }
                }
            }
        }
    }
}

fn institutions(text: &str, l: &Layout, spans: &mut Spans) {
    let claim = |s: usize, e: usize, spans: &mut Spans| {
        // leading and trailing department words are not the name: "Emergency Department", "Memorial Hospital"
        let words: Vec<(usize, usize)> = word_re()
            .find_iter(&text[s..e])
            .map(|m| (s + m.start(), s + m.end()))
            .collect();
        let generic =
            |&(a, b): &(usize, usize)| GENERIC.contains(&text[a..b].to_lowercase().as_str());
        let keep: Vec<&(usize, usize)> = words.iter().skip_while(|w| generic(w)).collect();
        let Some(first) = keep.first() else { return };
        let mut last = keep.len();
        while last > 0 && generic(keep[last - 1]) {
            last -= 1;
        }
        if last == 0 {
            return;
        }
        // ("St. Margene's": "St" is a word of the name)
        if is_not_name(&text[first.0..keep[last - 1].1]) {
            return;
        }
        spans.add(first.0, keep[last - 1].1, PiiKind::Hospital);
    };
    for c in l.institution.captures_iter(text) {
        if let Some(g) = c.get(1) {
            claim(g.start(), g.end(), spans);
        }
    }
    for c in l.label_place.captures_iter(text) {
        if let Some(g) = c.get(1) {
            claim(g.start(), g.end(), spans);
        }
    }
}

/// Every other mention of a found name's words, in any case (`RODER` in a header, `Roder` in the text, `roder`
/// in a signature); everyday words and medicine are left.
fn propagate_names(
    text: &str,
    lex: Option<&Lexicon>,
    spans: &mut Spans,
    protected: &dyn Fn(usize, usize) -> bool,
) {
    let mut known: HashSet<String> = HashSet::new();
    for s in spans.0.iter().filter(|s| s.kind == PiiKind::Name) {
        for w in word_re().find_iter(&text[s.start..s.end]) {
            let t = w.as_str();
            if t.chars().count() >= 3 && !common(lex, t) && !is_not_name(t) && t.is_ascii() {
                known.insert(t.to_lowercase());
            }
        }
    }
    if known.is_empty() {
        return;
    }
    let hits: Vec<(usize, usize)> = word_re()
        .find_iter(text)
        .filter(|w| known.contains(&without_possessive(w.as_str()).to_lowercase()))
        .map(|w| (w.start(), w.end()))
        .collect();
    for (s, e) in hits {
        if !protected(s, e) {
            let base = without_possessive(&text[s..e]);
            spans.add(s, s + base.len(), PiiKind::Name);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Deid, Lexicon, PiiRedact};
    use std::collections::HashSet;

    fn set(words: &[&str]) -> HashSet<String> {
        words.iter().map(|w| (*w).to_string()).collect()
    }

    /// A hand-made lexicon: the rules, not the lists, are under test.
    fn lexicon() -> Lexicon {
        Lexicon {
            first_names: set(&["Dennis", "Ruth", "Delphine", "Fiona", "Hollis", "Anna"]),
            surnames: set(&[
                "Marlowe", "Okafor", "Moss", "Quinn", "Crane", "Hartley", "Holter",
            ]),
            common: set(&["crane", "will", "may", "march", "monitor", "general"]),
            eponyms: set(&["glasgow coma", "paget disease"]),
            eponym_heads: set(&["monitor", "scale", "sign", "syndrome", "disease"]),
            ..Lexicon::default()
        }
    }

    fn redact(text: &str) -> String {
        Deid::with_lexicon(&PiiRedact::default(), lexicon())
            .redact_keyed(text, "t")
            .0
    }

    /// The issue's shapes, in one note of the i2b2 kind, redacted by hand.
    #[test]
    fn real_format_shapes_by_hand() {
        let note = "MAPLE HOLLOW EMERGENCY DEPT VISIT\n\
                    MARLOWE,DENNIS   381-22-90-4   VISIT DATE: 11/04/19\n\
                    Unit No: 5170346   Acct: QT481/20957\n\
                    Attending: Delphine R. Moss, MD\n\
                    Mr. MARLOWE was seen with his daughter (Okafor, Ruth). HOLLIS CRANE, RN called.\n\
                    Smoker since 7/91; colonoscopy 11/04; returns in March. Pain 7/10, strength 4/5, 3/10 lesion.\n\
                    Call x52731 or pager 41823. Holter monitor and Glasgow Coma Scale 15 at Pine Ridge Clinic.\n\
                    hartley\n\
                    DD: 11/06/19\n\
                    T: HC71\n\
                    cc: Quinn, Fiona MD; A. Marlowe\n";
        let want = "<HOSPITAL> EMERGENCY DEPT VISIT\n\
                    <NAME>   <MRN>   VISIT DATE: <DATE>\n\
                    Unit No: <MRN>   Acct: <ID>\n\
                    Attending: <NAME>, MD\n\
                    Mr. <NAME> was seen with his daughter (<NAME>). <NAME>, RN called.\n\
                    Smoker since <DATE>; colonoscopy <DATE>; returns in <DATE>. Pain 7/10, strength 4/5, 3/10 lesion.\n\
                    Call <PHONE> or pager <PHONE>. Holter monitor and Glasgow Coma Scale 15 at <HOSPITAL> Clinic.\n\
                    <NAME>\n\
                    DD: <DATE>\n\
                    T: <ID>\n\
                    cc: <NAME> MD; <NAME>\n";
        assert_eq!(redact(note), want);
    }

    #[test]
    fn departments_scores_and_headings_stay() {
        for text in [
            "Followed in Cardiology Clinic and the Emergency Department since 2019.",
            "HISTORY OF PRESENT ILLNESS:\nCHEST PAIN. Apgar 8/10, MMSE 24/30, BP 120/80, 2/6 systolic murmur.",
            "EXAM: CXR PA/LAT\nIMPRESSION: no acute disease.",
            "Internal Medicine, MD on call.",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    #[test]
    fn windows_line_endings_tabs_and_form_feeds_keep_offsets() {
        let note = "Patient: OKAFOR, RUTH\t(H8754519)\r\nDD: 11/06/19\r\n\x0c\tSeen on 3/4/2020 by Dr. Quinn.\r\n";
        let deid = Deid::with_lexicon(&PiiRedact::default(), lexicon());
        let found = deid.find(note);
        let texts: Vec<&str> = found.iter().map(|s| &note[s.start..s.end]).collect();
        assert_eq!(
            texts,
            ["OKAFOR, RUTH", "H8754519", "11/06/19", "3/4/2020", "Quinn"],
            "{found:?}"
        );
        let out = redact(note);
        assert_eq!(
            out,
            "Patient: <NAME>\t(<MRN>)\r\nDD: <DATE>\r\n\x0c\tSeen on <DATE> by Dr. <NAME>.\r\n"
        );
    }
}
