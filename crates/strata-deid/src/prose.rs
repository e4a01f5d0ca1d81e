//! De-identification of free prose, English and Chinese: the part of the de-identifier that finds identifiers
//! without a field label in front of them.
//!
//! - **Names.** After a title (`Mrs. Lindgren`, `Dr. Ferreira`) or a relation (`her son Tomas`); a first name
//!   from the lexicon, alone or with the words that follow it (`Tomas Lindgren`); a capitalised word followed by
//!   `, <age>,` (`Lindgren, 71, was seen`); and, once a name is known, every later mention of any of its words.
//!   A first name that is also an everyday word (`Will`, `May`, `Hope`) counts only with a surname after it.
//!   Chinese: a surname from the lexicon plus one or two characters, with a context before (`患者`, `由`, `嘱`,
//!   `家属`, `护士` …) or after (`医生`, `审阅`, `于`, `陪同` …), and again every later mention.
//! - **Medicine is not a name.** A word is protected when it and the next word form an eponym of the
//!   terminologies (`paget disease`, `bell palsy`), or when the next word is one of the nouns eponyms name there
//!   (`syndrome`, `sign`, `catheter`, `tumor`); in Chinese, when `病`, `综合征`, `征`, `氏` … follow.
//! - **Locations.** Street addresses (`14 Birch Court`) and the town after them, places after `live(s) in`,
//!   `moved from`, `resides at` …, places of the lexicon's gazetteer after `in`, `from`, `to`, `near`; Chinese
//!   addresses (`…市…区…路27号`).
//! - **Dates** with a day or a month: written out, numeric (checked: month 1-12, day 1-31), ISO, and Chinese
//!   `年月日`. A bare year stays.
//! - **Ages over 89**: `92-year-old`, `aged 94`, `93 y/o`, `Lindgren, 91,`, `95岁`.

use std::collections::HashSet;
use std::sync::OnceLock;

use regex::Regex;

use crate::lexicon::{is_han, without_possessive, Lexicon, MONTHS};
use crate::span::{PiiKind, Spans};
use crate::PiiRedact;

struct Prose {
    title: Regex,
    relation: Regex,
    word: Regex,
    address: Regex,
    after_address: Regex,
    live_in: Regex,
    place_prep: Regex,
    date_words: Regex,
    date_numeric: Regex,
    date_iso: Regex,
    date_cn: Regex,
    age: Regex,
    age_cn: Regex,
    comma_age: Regex,
    name_age: Regex,
    told: Regex,
    cn_address: Regex,
    cn_place: Regex,
}

const MONTH: &str = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?";
const CAP: &str =
    r"\p{Lu}(?:\p{Ll}|\p{M})+(?:\p{Lu}(?:\p{Ll}|\p{M})+)?(?:['’-]\p{Lu}?(?:\p{Ll}|\p{M})+)*";

fn prose() -> &'static Prose {
    static P: OnceLock<Prose> = OnceLock::new();
    P.get_or_init(|| {
        let re = |s: &str| Regex::new(s).unwrap_or_else(|e| panic!("de-identification pattern {s}: {e}"));
        let seq = format!(r"{CAP}(?:[ \t]+(?:\p{{Lu}}\.[ \t]+)?{CAP}){{0,2}}");
        Prose {
            title: re(&format!(
                r"(?-u:\b)(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Professor|Nurse|Sister|Rev|Doctor)\.?[ \t]+((?:\p{{Lu}}\.[ \t]*)?{seq})"
            )),
            relation: re(&format!(
                r"(?-u:\b)(?:son|daughter|husband|wife|brother|sister|mother|father|niece|nephew|grandson|granddaughter|grandmother|grandfather|neighbou?r|partner|friend|carer|caregiver|spouse|fianc[ée]e?|cousin|aunt|uncle|named|called)(?:-in-law)?,?[ \t]+({seq})"
            )),
            word: re(r"\p{L}(?:\p{L}|\p{M})*(?:['’-](?:\p{L}|\p{M})+)*"),
            address: re(&format!(
                r"(?-u:\b)\d{{1,5}}[A-Za-z]?[ \t]+(?:[NSEW]\.?[ \t]+)?(?:{CAP}[ \t]+){{1,3}}(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Court|Ct|Boulevard|Blvd|Way|Place|Pl|Terrace|Close|Crescent|Circle|Parkway|Pkwy|Highway|Hwy|Square|Row|Trail|Grove|Gardens|Walk|Alley)(?-u:\b)\.?(?:,?[ \t]+(?:Apt|Apartment|Unit|Suite|Flat|#)\.?[ \t]*[\w-]+)?"
            )),
            after_address: re(&format!(
                r"^,?[ \t]+({CAP}(?:[ \t]+{CAP}){{0,2}})(?:,?[ \t]+[A-Z]{{2}}(?:[ \t]+\d{{5}}(?:-\d{{4}})?)?)?"
            )),
            live_in: re(&format!(
                r"(?-u:\b)(?:live[sd]?|living|resides?|resided|residing|moved|relocated|returned|born|grew up|home|travell?ed|originally|hometown)(?-u:\b)[^.;\n]{{0,24}}?(?-u:\b)(?:in|from|to|at|near)[ \t]+({CAP}(?:[ \t]+{CAP}){{0,2}})"
            )),
            place_prep: re(&format!(
                r"(?-u:\b)(?:in|from|to|near|at|of)[ \t]+({CAP}(?:[ \t]+{CAP}){{0,2}})"
            )),
            date_words: re(&format!(
                r"(?-u:\b)(?:{MONTH}[ \t]+\d{{1,2}}(?:st|nd|rd|th)?(?:,?[ \t]+\d{{4}})?|\d{{1,2}}(?:st|nd|rd|th)?(?:[ \t]+of)?[ \t]+{MONTH}(?:,?[ \t]+\d{{4}})?|{MONTH},?[ \t]+\d{{4}})(?-u:\b)"
            )),
            date_numeric: re(r"(?:^|[^\d./-])((\d{1,2})([/.-])(\d{1,2})([/.-])(\d{4}|\d{2}))(?:[^\d./-]|[./-]\D|[./-]?$)"),
            date_iso: re(r"(?:^|[^\d./-])((\d{4})([/.-])(\d{1,2})([/.-])(\d{1,2}))(?:[^\d./-]|[./-]\D|[./-]?$)"),
            date_cn: re(r"\d{4}年\d{1,2}月(?:\d{1,2}[日号])?|\d{1,2}月\d{1,2}[日号]"),
            age: re(r"(?i)(?-u:\b)(?:(?:9\d|1[01]\d)[ \t-]*(?:years?|yrs?|y)[ \t-]*old|(?:9\d|1[01]\d)[ \t]*(?:yo|y/o|y\.o\.)|(?:aged?|age:)[ \t]+(?:9\d|1[01]\d))(?-u:\b)"),
            age_cn: re(r"(?:9\d|1[01]\d)(?:周岁|岁)"),
            comma_age: re(r"^,[ \t]*((?:9\d|1[01]\d))(?-u:\b)"),
            name_age: re(r"^,[ \t]*\d{1,3}(?:[ \t]*(?:y|yo|yrs?|years?))?[ \t]*(?:,|\(|[MF](?-u:\b))"),
            told: re(&format!(
                r"(?-u:\b)(?:phone|phoned|call|called|ring|rang|text|texted|tell|told|ask|asked|inform|informed|contact|contacted|notify|notified|update|updated|reassure|reassured|thank|thanked|meet|met|accompanied by|seen by|reviewed by|referred by|examined by|discussed with|routed to|forwarded to|sent to|copied to|faxed to|paged|spoke (?:to|with)|spoken (?:to|with)|per)[ \t]+({CAP}(?:[ \t]+{CAP})?)(?-u:\b)"
            )),
            cn_address: re(r"(?:\p{Han}{2,7}?(?:省|自治区))?(?:\p{Han}{2,7}?市)?(?:\p{Han}{1,7}?(?:区|县|旗))?(?:\p{Han}{1,10}?(?:镇|乡|街道))?\p{Han}{1,10}?(?:大街|大道|路|街|巷|胡同|弄)\d+号(?:\d+(?:栋|幢|号楼))?(?:\d+单元)?(?:\d+室)?"),
            cn_place: re(r"(?:家住|住在|现住|居住于|居住在|来自|籍贯|户籍|住址[:：]?|地址[:：]?|迁居|搬到)((?:\p{Han}{1,8}?(?:省|自治区|市|区|县|镇|乡|村|路|街|大街|大道|小区))+)"),
        }
    })
}

/// Titles, which the told/seen-by detector must step over.
const TITLES: [&str; 10] = [
    "Dr",
    "Mr",
    "Mrs",
    "Ms",
    "Mx",
    "Miss",
    "Prof",
    "Professor",
    "Doctor",
    "Nurse",
];

/// Words before a Chinese name that say it is one.
const CN_BEFORE: [&str; 27] = [
    "患者",
    "病人",
    "患儿",
    "由",
    "嘱",
    "家属",
    "联系人",
    "其子",
    "其女",
    "儿子",
    "女儿",
    "丈夫",
    "妻子",
    "母亲",
    "父亲",
    "医生",
    "医师",
    "主任",
    "护士",
    "告知",
    "陪同人",
    "姓名：",
    "姓名:",
    "签名：",
    "大夫",
    "主治医师",
    "同事",
];
/// Words after a Chinese name that say it is one, even with no context before it (医生, 审阅, 陪同 …).
const CN_STRONG_AFTER: [&str; 18] = [
    "医生", "医师", "大夫", "护士", "主任", "教授", "先生", "女士", "同志", "陪同", "审阅", "签字",
    "签名", "复诊", "就诊", "入院", "出院", "自述",
];
/// Words after a Chinese name that say it is one after a context before it.
const CN_WEAK_AFTER: [&str; 6] = ["于", "在", "诉", "已", "因", "的"];
/// What after a Chinese "name" makes it medicine (川崎病, 唐氏综合征).
const CN_MEDICAL: [&str; 12] = [
    "病",
    "综合征",
    "综合症",
    "氏",
    "征",
    "症",
    "瘤",
    "炎",
    "现象",
    "面瘫",
    "试验",
    "手术",
];
/// Characters no given name has here: grammar and punctuation.
const CN_NOT_GIVEN: &str = "的了和与是在于因已将被把为也等及或、，。；：！？（）()“”\"'0123456789";

/// Finds the prose identifiers and adds them to `spans` (after the labelled and pattern ones).
pub(crate) fn find_prose(text: &str, cfg: &PiiRedact, lex: Option<&Lexicon>, spans: &mut Spans) {
    let p = prose();
    if cfg.locations {
        addresses(text, p, spans);
    }
    if cfg.dates {
        dates(text, p, spans);
    }
    if cfg.ages {
        for re in [&p.age, &p.age_cn] {
            for m in re.find_iter(text) {
                spans.add(m.start(), m.end(), PiiKind::Age);
            }
        }
    }
    if cfg.names {
        english_names(text, p, lex, cfg.ages, spans);
        if let Some(lex) = lex {
            chinese_names(text, lex, spans);
        }
    }
    if cfg.locations {
        places(text, p, lex, spans);
    }
}

fn addresses(text: &str, p: &Prose, spans: &mut Spans) {
    for m in p.address.find_iter(text) {
        if !spans.add(m.start(), m.end(), PiiKind::Location) {
            continue;
        }
        if let Some(c) = p.after_address.captures(&text[m.end()..]) {
            let g = c.get(1).map_or(0..0, |g| g.range());
            let whole = c.get(0).map_or(0, |g| g.end());
            // the town, and the state and ZIP code with it
            spans.add(
                m.end() + g.start,
                m.end() + whole.max(g.end),
                PiiKind::Location,
            );
        }
    }
    for m in p.cn_address.find_iter(text) {
        let mut start = m.start();
        for prefix in ["家住", "住在", "现住", "居住在", "住址", "地址", "住"] {
            if text[start..m.end()].starts_with(prefix) {
                start += prefix.len();
                break;
            }
        }
        spans.add(start, m.end(), PiiKind::Location);
    }
    // 家住北京市海淀区, 来自四川省成都市: places after living or coming from, without a house number
    for c in p.cn_place.captures_iter(text) {
        if let Some(g) = c.get(1) {
            spans.add(g.start(), g.end(), PiiKind::Location);
        }
    }
}

fn valid_day_month(a: u32, b: u32) -> bool {
    // either order: month/day or day/month
    ((1..=12).contains(&a) && (1..=31).contains(&b))
        || ((1..=31).contains(&a) && (1..=12).contains(&b))
}

fn dates(text: &str, p: &Prose, spans: &mut Spans) {
    for m in p.date_words.find_iter(text) {
        spans.add(m.start(), m.end(), PiiKind::Date);
    }
    for m in p.date_cn.find_iter(text) {
        spans.add(m.start(), m.end(), PiiKind::Date);
    }
    let num =
        |c: &regex::Captures<'_>, i: usize| c.get(i).and_then(|g| g.as_str().parse::<u32>().ok());
    for c in p.date_iso.captures_iter(text) {
        let (Some(g), Some(y), Some(mo), Some(d)) = (c.get(1), num(&c, 2), num(&c, 4), num(&c, 6))
        else {
            continue;
        };
        let same_sep = c.get(3).map(|s| s.as_str()) == c.get(5).map(|s| s.as_str());
        if same_sep && (1800..=2200).contains(&y) && (1..=12).contains(&mo) && (1..=31).contains(&d)
        {
            spans.add(g.start(), g.end(), PiiKind::Date);
        }
    }
    for c in p.date_numeric.captures_iter(text) {
        let (Some(g), Some(a), Some(b), Some(y)) = (c.get(1), num(&c, 2), num(&c, 4), c.get(6))
        else {
            continue;
        };
        let sep = c.get(3).map_or("", |s| s.as_str());
        let same_sep = Some(sep) == c.get(5).map(|s| s.as_str());
        // a two-digit year only with slashes or dashes (1.5.10 is a version, not a date)
        let year_ok = y.as_str().len() == 4 || sep != ".";
        if same_sep && year_ok && valid_day_month(a, b) {
            spans.add(g.start(), g.end(), PiiKind::Date);
        }
    }
}

/// A word of the text with its byte range.
struct Word<'a> {
    start: usize,
    end: usize,
    text: &'a str,
}

fn is_cap(w: &str) -> bool {
    let mut cs = w.chars();
    cs.next().is_some_and(char::is_uppercase) && cs.any(char::is_lowercase)
}

/// `Paget's` → `paget`.
fn base_lower(w: &str) -> String {
    let w = w
        .strip_suffix("'s")
        .or_else(|| w.strip_suffix("’s"))
        .or_else(|| w.strip_suffix('\''))
        .or_else(|| w.strip_suffix('’'))
        .unwrap_or(w);
    w.to_lowercase()
}

/// Whether `words[i]` names medicine: an eponym with the next word, or the next word is an eponym's noun.
fn protected(words: &[Word<'_>], i: usize, text: &str, lex: Option<&Lexicon>) -> bool {
    let Some(lex) = lex else {
        return false;
    };
    let Some(next) = words.get(i + 1) else {
        return false;
    };
    // only a space (or a hyphen: Guillain-Barré) between them
    let gap = &text[words[i].end..next.start];
    if !gap.chars().all(|c| c == ' ' || c == '-') || gap.len() > 2 {
        return false;
    }
    let (a, b) = (base_lower(words[i].text), base_lower(next.text));
    lex.eponyms.contains(&format!("{a} {b}")) || lex.eponym_heads.contains(&b) || {
        // a hyphenated eponym: Epstein-Barr virus, Guillain-Barré syndrome
        gap == "-" && protected(words, i + 1, text, Some(lex))
    }
}

/// A word of prose (letters, and `'`, `’` or `-` inside it: `Paget's`, `Guillain-Barré`): the one word
/// pattern of the de-identifier's detectors.
pub(crate) fn word_re() -> &'static Regex {
    &prose().word
}

/// Whether the word at `[start, end)` names medicine ([`protected`]), looked up from the text around it.
pub(crate) fn protected_at(text: &str, lex: Option<&Lexicon>, start: usize, end: usize) -> bool {
    let p = prose();
    let next = p.word.find_at(text, end);
    let mut words = vec![Word {
        start,
        end,
        text: &text[start..end],
    }];
    if let Some(n) = next {
        words.push(Word {
            start: n.start(),
            end: n.end(),
            text: n.as_str(),
        });
    }
    protected(&words, 0, text, lex)
}

/// The names found so far in one text, over its words.
struct Names<'t> {
    text: &'t str,
    words: Vec<Word<'t>>,
    lex: Option<&'t Lexicon>,
    found: Vec<(usize, usize)>,
}

impl Names<'_> {
    fn index_at(&self, start: usize) -> Option<usize> {
        self.words.binary_search_by_key(&start, |w| w.start).ok()
    }

    /// Claims `[s, e)` as a name; a name never runs into medicine: it is cut before a protected word.
    fn claim(&mut self, spans: &mut Spans, s: usize, e: usize) {
        let mut end = e;
        if let Some(i) = self.index_at(s) {
            let mut k = i;
            while k < self.words.len() && self.words[k].end <= e {
                if protected(&self.words, k, self.text, self.lex) {
                    end = if k == i { s } else { self.words[k - 1].end };
                    break;
                }
                k += 1;
            }
        }
        if spans.add(s, end, PiiKind::Name) {
            self.found.push((s, end));
        }
    }
}

fn english_names(text: &str, p: &Prose, lex: Option<&Lexicon>, ages: bool, spans: &mut Spans) {
    let words: Vec<Word<'_>> = p
        .word
        .find_iter(text)
        .map(|m| Word {
            start: m.start(),
            end: m.end(),
            text: m.as_str(),
        })
        .collect();
    // names the labelled patterns found ("Patient: John Smith", "Mrs. Brown") are known too
    let found = spans
        .0
        .iter()
        .filter(|s| s.kind == PiiKind::Name)
        .map(|s| (s.start, s.end))
        .collect();
    let mut names = Names {
        text,
        words,
        lex,
        found,
    };
    // titles and relations
    for re in [&p.title, &p.relation] {
        for c in re.captures_iter(text) {
            if let Some(g) = c.get(1) {
                let g_text = g.as_str();
                if is_month_or_day(g_text.split_whitespace().next().unwrap_or("")) {
                    continue;
                }
                names.claim(spans, g.start(), g.end());
            }
        }
    }
    if let Some(lex) = lex {
        told_names(p, lex, &mut names, spans);
        lexicon_names(p, lex, &mut names, spans);
    }
    if ages {
        // "Lindgren, 93," — the age after a name, over 89
        for &(_, e) in &names.found {
            if let Some(c) = p.comma_age.captures(&text[e..]) {
                if let Some(g) = c.get(1) {
                    spans.add(e + g.start(), e + g.end(), PiiKind::Age);
                }
            }
        }
    }
    propagate(text, p, lex, &names.words, &names.found, spans);
}

/// "will phone Tomas", "reviewed by Ferreira": a capitalised word after talking to or being seen by.
fn told_names(p: &Prose, lex: &Lexicon, names: &mut Names<'_>, spans: &mut Spans) {
    let text = names.text;
    for c in p.told.captures_iter(text) {
        let Some(g) = c.get(1) else { continue };
        let Some(i) = names.index_at(g.start()) else {
            continue;
        };
        let w = names.words[i].text;
        // "examined by Dr. Wailes": the title is no name (the title detector has the name after it)
        if TITLES.contains(&w)
            || lex.is_common(w)
            || is_month_or_day(w)
            || lex.places.contains(w)
            || protected(&names.words, i, text, Some(lex))
        {
            continue;
        }
        names.claim(spans, g.start(), g.end());
    }
}

/// First names of the lexicon with the capitalised words after them, and a capitalised word before an age.
fn lexicon_names(p: &Prose, lex: &Lexicon, names: &mut Names<'_>, spans: &mut Spans) {
    let text = names.text;
    let mut i = 0;
    while i < names.words.len() {
        let words = &names.words;
        let w = &words[i];
        if !is_cap(w.text) || spans.overlaps(w.start, w.end) || protected(words, i, text, Some(lex))
        {
            i += 1;
            continue;
        }
        let first = lex.first_names.contains(w.text);
        let common = lex.is_common(w.text);
        // the capitalised words that follow (a surname, a middle name)
        let mut j = i + 1;
        while j < words.len()
            && j < i + 3
            && text[words[j - 1].end..words[j].start] == *" "
            && is_cap(words[j].text)
            && !lex.is_common(words[j].text)
            && !is_month_or_day(words[j].text)
            && !protected(words, j, text, Some(lex))
        {
            j += 1;
        }
        let followed = j > i + 1;
        let (start, end) = (w.start, words[j - 1].end);
        // a first name that is also a word or a month (Will, May, April) needs a surname after it
        // so does a two-letter one (Na, Li, Bo: lab rows and abbreviations)
        let short = w.text.chars().count() < 3;
        let is_first = first
            && (!common || followed)
            && (!short || followed)
            && (!is_month_or_day(w.text) || followed);
        // "Lindgren, 71, was seen": a capitalised word before an age
        let before_age =
            || !common && p.name_age.is_match(&text[end..]) && !is_month_or_day(w.text);
        if is_first || before_age() {
            names.claim(spans, start, end);
            i = j;
            continue;
        }
        i += 1;
    }
}

/// Every later (or earlier) mention of a known name's words.
fn propagate(
    text: &str,
    p: &Prose,
    lex: Option<&Lexicon>,
    words: &[Word<'_>],
    names: &[(usize, usize)],
    spans: &mut Spans,
) {
    let mut known: HashSet<&str> = HashSet::new();
    for &(s, e) in names {
        for w in p.word.find_iter(&text[s..e]) {
            let t = without_possessive(w.as_str());
            if t.chars().count() >= 2 && is_cap(t) && !lex.is_some_and(|l| l.is_common(t)) {
                known.insert(t);
            }
        }
    }
    if known.is_empty() {
        return;
    }
    for (i, w) in words.iter().enumerate() {
        let t = without_possessive(w.text);
        if known.contains(t) && !protected(words, i, text, lex) {
            spans.add(w.start, w.start + t.len(), PiiKind::Name);
        }
    }
}

fn is_month_or_day(w: &str) -> bool {
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    MONTHS.contains(&w) || DAYS.contains(&w)
}

fn chinese_names(text: &str, lex: &Lexicon, spans: &mut Spans) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
    let mut found: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_han(chars[i].1) || spans.overlaps(chars[i].0, chars[i].0 + 1) {
            i += 1;
            continue;
        }
        let before = &text[..chars[i].0];
        let ctx_before = CN_BEFORE.iter().any(|b| before.ends_with(b));
        // a name starts after a context word or outside a run of Chinese (墨菲征阳性: 阳 is no name here), and
        // is never a context word itself (家属, 护士)
        let rest = &text[chars[i].0..];
        if (!ctx_before && before.chars().next_back().is_some_and(is_han))
            || CN_BEFORE.iter().any(|b| rest.starts_with(b))
        {
            i += 1;
            continue;
        }
        let mut hit: Option<usize> = None; // end (char index) of the name
        for surname_len in [5usize, 4, 3, 2, 1] {
            if i + surname_len > chars.len() {
                continue;
            }
            let surname = &text[chars[i].0..byte(i + surname_len)];
            if !lex.cn_surnames.contains(surname) {
                continue;
            }
            // given names of two then one characters; the one a context follows wins
            let mut choice: Option<usize> = None;
            for given in [2usize, 1] {
                let end = i + surname_len + given;
                if end > chars.len()
                    || !chars[i + surname_len..end]
                        .iter()
                        .all(|&(_, c)| is_han(c) && !CN_NOT_GIVEN.contains(c))
                {
                    continue;
                }
                let after = &text[byte(end)..];
                if CN_MEDICAL.iter().any(|m| after.starts_with(m))
                    || CN_MEDICAL
                        .iter()
                        .any(|m| text[byte(i)..byte(end)].ends_with(m))
                {
                    choice = None;
                    break;
                }
                // strong words after are enough without a context before, and so is 于 before a date
                let strong_after = CN_STRONG_AFTER.iter().any(|a| after.starts_with(a))
                    || after
                        .strip_prefix('于')
                        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
                let ctx_after = strong_after
                    || CN_WEAK_AFTER.iter().any(|a| after.starts_with(a))
                    || after.starts_with(|c: char| !is_han(c));
                if ctx_after && (ctx_before || strong_after) {
                    choice = Some(end);
                    break;
                }
                if ctx_before && choice.is_none() && given == 2 {
                    // remember the two-character reading; a one-character one with a context after beats it
                    choice = Some(end);
                }
            }
            if let Some(end) = choice {
                hit = Some(end);
                break;
            }
        }
        if let Some(end) = hit {
            if spans.add(chars[i].0, byte(end), PiiKind::Name) {
                found.push(text[chars[i].0..byte(end)].to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    // later mentions without a context
    for name in found {
        let mut from = 0;
        while let Some(k) = text[from..].find(&name) {
            let s = from + k;
            spans.add(s, s + name.len(), PiiKind::Name);
            from = s + name.len();
        }
    }
}

fn places(text: &str, p: &Prose, lex: Option<&Lexicon>, spans: &mut Spans) {
    let ok = |s: &str| {
        let first = s.split_whitespace().next().unwrap_or("");
        !is_month_or_day(first) && !lex.is_some_and(|l| l.is_common(first) && !l.places.contains(s))
    };
    for c in p.live_in.captures_iter(text) {
        if let Some(g) = c.get(1) {
            if ok(g.as_str()) {
                spans.add(g.start(), g.end(), PiiKind::Location);
            }
        }
    }
    let Some(lex) = lex else {
        return;
    };
    for c in p.place_prep.captures_iter(text) {
        let Some(g) = c.get(1) else {
            continue;
        };
        // the longest run of words that is a place
        let words: Vec<&str> = g.as_str().split_whitespace().collect();
        for n in (1..=words.len()).rev() {
            let cand = words[..n].join(" ");
            if lex.places.contains(&cand) && !lex.is_common(&cand) {
                let end =
                    g.start() + g.as_str().find(words[n - 1]).unwrap_or(0) + words[n - 1].len();
                let next = text[end..].trim_start();
                let next_word = next
                    .split(|c: char| !c.is_alphabetic())
                    .next()
                    .unwrap_or("");
                // Glasgow Coma Scale, Murphy sign: medicine after the place
                let medical = lex.eponyms.contains(&format!(
                    "{} {}",
                    cand.to_lowercase(),
                    next_word.to_lowercase()
                )) || lex.eponym_heads.contains(&next_word.to_lowercase());
                if !medical {
                    spans.add(g.start(), end, PiiKind::Location);
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Deid, PiiMode};
    use std::path::Path;

    fn set(words: &[&str]) -> HashSet<String> {
        words.iter().map(|w| (*w).to_string()).collect()
    }

    /// A hand-made lexicon: the rules, not the lists, are under test here.
    fn lexicon() -> Lexicon {
        Lexicon {
            first_names: set(&["Tomas", "Will", "May", "April", "John", "Hope"]),
            surnames: set(&[
                "Lindgren", "Ferreira", "Paget", "Bell", "Murphy", "Foley", "Smith",
            ]),
            cn_surnames: set(&["王", "周", "李", "阳", "墨", "马", "欧阳"]),
            places: set(&["Glasgow", "Millbrook", "Springfield"]),
            common: set(&["will", "may", "hope", "bone", "disease", "court"]),
            eponyms: set(&["paget disease", "bell palsy", "glasgow coma", "murphy sign"]),
            eponym_heads: set(&["syndrome", "sign", "palsy", "disease", "tumor", "catheter"]),
            first_pool: vec!["Alma".into(), "Bruno".into()],
            surname_pool: vec!["Okafor".into(), "Varga".into()],
            place_pool: vec!["Eastwick".into()],
            tagger: None,
        }
    }

    fn redact(text: &str) -> String {
        let deid = Deid::with_lexicon(&PiiRedact::default(), lexicon());
        deid.redact_keyed(text, "t").0
    }

    #[test]
    fn the_issues_note_loses_every_identifier_and_keeps_the_medicine() {
        let note = "Mrs. Lindgren, 71, was seen on February 9, 2024 for Paget disease of bone. Tomas drove her \
                    in; they live at 14 Birch Court, Millbrook. Her Bell's palsy has resolved. Discussed with Dr. \
                    Ferreira, who will phone Tomas on Friday. 王磊于2024年2月9日复诊，由周婷医生审阅。";
        assert_eq!(
            redact(note),
            "Mrs. <NAME>, 71, was seen on <DATE> for Paget disease of bone. <NAME> drove her in; they live at \
             <LOCATION>, <LOCATION>. Her Bell's palsy has resolved. Discussed with Dr. <NAME>, who will phone \
             <NAME> on Friday. <NAME>于<DATE>复诊，由<NAME>医生审阅。"
        );
    }

    #[test]
    fn names_need_evidence_and_medicine_is_never_a_name() {
        let cases = [
            // a first name that is a word needs a surname
            (
                "Will continue metformin. Will Smith came.",
                "Will continue metformin. <NAME> came.",
            ),
            ("Review in May 2024.", "Review in <DATE>."),
            // an unknown surname: after a title, before an age, and every later mention
            (
                "Ms Okonkwo-Idu, 64, improved. Okonkwo-Idu went home.",
                "Ms <NAME>, 64, improved. <NAME> went home.",
            ),
            // eponyms by pair and by head noun; a place before medicine
            (
                "Murphy sign positive; Foley catheter placed; Glasgow Coma Scale 15.",
                "Murphy sign positive; Foley catheter placed; Glasgow Coma Scale 15.",
            ),
            (
                "He lives in Glasgow with his son John.",
                "He lives in <LOCATION> with his son <NAME>.",
            ),
            // ages: over 89 only
            (
                "A 92-year-old woman, aged 95; a 45-year-old man, aged 89.",
                "A <AGE> woman, <AGE>; a 45-year-old man, aged 89.",
            ),
            // Chinese: a context is needed; medicine after a name-like string is medicine
            (
                "患者欧阳娜，93岁，马凡综合征。",
                "患者<NAME>，<AGE>，马凡综合征。",
            ),
            ("因墨菲征阳性复诊。", "因墨菲征阳性复诊。"),
            (
                "患者来自四川省成都市，家住武侯区。",
                "患者来自<LOCATION>，家住<LOCATION>。",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    #[test]
    fn numbers_that_are_not_dates_stay() {
        for text in [
            "BP 120/80, ratio 3/4, version 1.5.10, 13/45/2020, 2024-13-01, ICD-10 M88.9, 5 mg.",
            "肝脏大小15.7cm，血压129/93mmHg。",
            "Seen in 2019 and again on Friday.",
        ] {
            assert_eq!(redact(text), text);
        }
        assert_eq!(
            redact("on 02/09/2024 and 2024-02-09 and 9.2.2024"),
            "on <DATE> and <DATE> and <DATE>"
        );
    }

    #[test]
    fn surrogates_are_consistent_and_shift_dates() {
        let cfg = PiiRedact {
            mode: PiiMode::Surrogate,
            ..PiiRedact::default()
        };
        let deid = Deid::with_lexicon(&cfg, lexicon());
        let (out, _) = deid.redact_keyed(
            "Tomas Lindgren was seen on 2024-02-09. Tomas phoned on 2024-02-10. Lindgren lives in Millbrook.",
            "doc-7",
        );
        assert!(
            !out.contains("Tomas") && !out.contains("Lindgren") && !out.contains("Millbrook"),
            "{out}"
        );
        let words: Vec<&str> = out.split(' ').collect();
        // the same first name both times, and the surname again
        assert_eq!(words[0], words[6], "{out}");
        assert_eq!(words[1], words[10], "{out}");
        // both dates moved by the same offset: still one day apart
        let dates: Vec<chrono::NaiveDate> = out
            .split(|c: char| !(c.is_ascii_digit() || c == '-'))
            .filter_map(|w| chrono::NaiveDate::parse_from_str(w, "%Y-%m-%d").ok())
            .collect();
        assert_eq!(dates.len(), 2, "{out}");
        assert_eq!((dates[1] - dates[0]).num_days(), 1);
        assert_ne!(
            dates[0],
            chrono::NaiveDate::from_ymd_opt(2024, 2, 9).unwrap()
        );
    }

    #[test]
    fn a_missing_lexicon_is_an_error_naming_the_list() {
        let err = Lexicon::load(Path::new("/nonexistent/lexicon"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("first_names.txt") && err.contains("fetch-data.sh --lexicon"),
            "{err}"
        );
    }
}
