//! The de-identifier: every detector in priority order over a text, then the found spans replaced by
//! placeholders or surrogates.

use std::sync::Arc;

use crate::layout::{find_layout, find_layout_late, plausible_name};
use crate::lexicon::Lexicon;
use crate::patterns::find_patterns;
use crate::prose::{find_prose, protected_at, word_re};
use crate::span::{PiiKind, PiiSpan, Spans};
use crate::surrogate::Surrogates;
use crate::{PiiMode, PiiRedact};

/// A redactor ready to run: the configuration and its lexicon, loaded once.
#[derive(Clone)]
pub struct Deid {
    cfg: PiiRedact,
    lexicon: Option<Arc<Lexicon>>,
    /// Keys the per-patient surrogates (never in a manifest).
    secret: String,
}

impl std::fmt::Debug for Deid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deid")
            .field("cfg", &self.cfg)
            .field("lexicon", &self.lexicon.is_some())
            .field("secret", &(!self.secret.is_empty()).then_some("<set>"))
            .finish()
    }
}

impl Deid {
    /// Loads the configured lexicon.
    ///
    /// # Errors
    /// When the lexicon folder is missing or a list in it cannot be read; when no lexicon is configured and
    /// the rule-only mode was not chosen ([`PiiRedact::rules_only`]): a privacy stage never runs degraded
    /// without being asked to.
    pub fn new(cfg: &PiiRedact) -> crate::Result<Self> {
        let lexicon = match (&cfg.lexicon, cfg.rules_only) {
            (Some(dir), false) => Some(Arc::new(Lexicon::load(dir)?)),
            (None, true) => None,
            (Some(dir), true) => {
                return Err(crate::DeidError::Lexicon {
                    path: dir.clone(),
                    reason: "a lexicon and the rule-only mode were both asked for; choose one"
                        .into(),
                })
            }
            (None, false) => return Err(crate::DeidError::NoLexicon),
        };
        Ok(Self {
            cfg: cfg.clone(),
            lexicon,
            secret: String::new(),
        })
    }

    /// Without a lexicon: labels, patterns, titles, relations, addresses, dates and ages only.
    #[must_use]
    pub fn without_lexicon(cfg: &PiiRedact) -> Self {
        Self {
            cfg: cfg.clone(),
            lexicon: None,
            secret: String::new(),
        }
    }

    /// With a lexicon already in memory.
    #[must_use]
    pub fn with_lexicon(cfg: &PiiRedact, lexicon: Lexicon) -> Self {
        Self {
            cfg: cfg.clone(),
            lexicon: Some(Arc::new(lexicon)),
            secret: String::new(),
        }
    }

    /// With the secret that keys per-patient surrogates ([`crate::patient_key`]).
    #[must_use]
    pub fn with_secret(mut self, secret: &str) -> Self {
        self.secret = secret.to_string();
        self
    }

    /// The surrogate key of a document: its patient's ([`crate::patient_key`]) when it names one, so that
    /// a patient's notes and images move their dates by one offset; else its id.
    #[must_use]
    pub fn doc_key(&self, id: &str, patient: Option<&str>) -> String {
        match patient {
            Some(p) if !p.is_empty() => crate::patient_key(&self.secret, p),
            _ => id.to_string(),
        }
    }

    /// The same de-identifier without its learned tagger: the rules alone.
    #[must_use]
    pub fn without_tagger(mut self) -> Self {
        if let Some(l) = &mut self.lexicon {
            Arc::make_mut(l).tagger = None;
        }
        self
    }

    #[must_use]
    pub fn lexicon(&self) -> Option<&Lexicon> {
        self.lexicon.as_deref()
    }

    /// Every piece of PII in `text`, in text order, not overlapping.
    #[must_use]
    pub fn find(&self, text: &str) -> Vec<PiiSpan> {
        let mut spans = Spans::default();
        let lex = self.lexicon.as_deref();
        find_layout(text, &self.cfg, lex, &mut spans);
        find_patterns(text, &self.cfg, &mut spans);
        find_prose(text, &self.cfg, lex, &mut spans);
        if let (Some(tagger), true) = (lex.and_then(|l| l.tagger.as_ref()), self.cfg.names) {
            // the learned tagger for names where no rule claimed the text: what has a name's shape and is
            // neither medicine nor an everyday word (the shapes of numbers and dates are the rules' to judge)
            for (s, e, kind) in tagger.find(text, lex) {
                // a word before a colon is a label ("Transcribed by:")
                let after = text[e..].trim_start_matches([' ', '\t']);
                let label =
                    after.starts_with(':') || after.starts_with("by:") || after.starts_with("By:");
                // no word of it may name medicine (Holter monitor, Glasgow Coma Scale)
                let medicine = || {
                    word_re()
                        .find_iter(&text[s..e])
                        .any(|w| protected_at(text, lex, s + w.start(), s + w.end()))
                };
                if kind == PiiKind::Name
                    && !label
                    && plausible_name(&text[s..e], lex)
                    && !medicine()
                {
                    spans.add(s, e, kind);
                }
            }
        }
        find_layout_late(text, &self.cfg, lex, &mut spans, &|s, e| {
            protected_at(text, lex, s, e)
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{LabelledNote, LabelledSpan};
    use crate::patterns::CN_ID_WEIGHTS;

    /// The tagger learns that what follows "routed to" is a name; an eponym in that place ("Bell's palsy")
    /// stays: its possessive is one word with the name, and that word with the next names medicine.
    #[test]
    fn the_tagger_never_takes_an_eponym_with_its_possessive() {
        let names = [
            "Ulver Rotty",
            "Kabex Gutoski",
            "Minka Mccalebb",
            "Nendun Burgey",
            "Selka Quinwen",
        ];
        let head = "Message routed to ";
        let notes: Vec<LabelledNote> = (0..40)
            .map(|i| {
                let name = names[i % names.len()];
                LabelledNote {
                    id: format!("n{i}"),
                    text: format!("{head}{name} today."),
                    spans: vec![LabelledSpan {
                        start: head.len(),
                        end: head.len() + name.len(),
                        label: "NAME".into(),
                    }],
                    decoys: Vec::new(),
                }
            })
            .collect();
        let mut lex = Lexicon::default();
        lex.eponyms.insert("bell palsy".into());
        let tagger = crate::Tagger::train(&notes, Some(&lex), 3);
        let text = "Message routed to Bell's palsy today.";
        // the tagger alone calls it a name; the de-identifier keeps the medicine
        assert!(
            tagger
                .find(text, Some(&lex))
                .iter()
                .any(|&(s, _, k)| k == PiiKind::Name && text[s..].starts_with("Bell")),
            "the tagger should propose Bell's here for this test to mean anything"
        );
        lex.tagger = Some(tagger);
        let deid = Deid::with_lexicon(&PiiRedact::default(), lex);
        assert_eq!(deid.redact_keyed(text, "t").0, text);
        assert_eq!(
            deid.redact_keyed("Message routed to Zorblat Quenwix today.", "t")
                .0,
            "Message routed to <NAME> today."
        );
    }

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
