//! The learned part of the de-identifier, for where the rules stop: a linear-chain token tagger (a CRF's
//! model — per-token feature weights and tag-to-tag transitions, decoded by Viterbi — trained by the averaged
//! structured perceptron) over words, their shapes, the lexicon's lists, the words around them and where they
//! stand on their line. It learns from labelled notes (`strata deid train`, the format `strata deid eval`
//! reads); the lexicon build trains it on generated notes in the real formats (seed 1's, the notes the rules
//! were written against), so every other seed and format measures it on notes it has not seen.
//!
//! The de-identifier runs it after the rules and keeps what it finds only where no rule claimed the text and
//! no medicine is named (eponyms stay protected, [`crate::prose`]).
//!
//! File: `STRATA-TAGGER 1\n`, then a JSON header line (`{"tags": [...], "features": N}`), then N records of
//! a little-endian u64 feature hash and one f32 per tag, then the transition matrix ((tags + 1) × tags f32,
//! the last row from the start).

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::path::Path;

use regex::Regex;
use std::sync::OnceLock;

use strata_records::hash::hash_bytes;

use crate::eval::LabelledNote;
use crate::lexicon::{Lexicon, MONTHS};
use crate::span::PiiKind;
use crate::{DeidError, Result};

const MAGIC: &str = "STRATA-TAGGER 1";

/// Passes over the training notes by default.
pub const EPOCHS: usize = 5;

/// A token of the text: byte range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tok {
    pub start: usize,
    pub end: usize,
}

fn token_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"\p{L}(?:[\p{L}\p{M}]|['’-]\p{L})*|\d+|\S")
            .unwrap_or_else(|e| panic!("tagger tokens: {e}"))
    })
}

pub(crate) fn tokens(text: &str) -> Vec<Tok> {
    token_re()
        .find_iter(text)
        .map(|m| Tok {
            start: m.start(),
            end: m.end(),
        })
        .collect()
}

/// `Okafor` → `Xx`, `381-22` → `d-d`, `HC71` → `Xd`: character classes with repeats collapsed.
fn shape(w: &str) -> String {
    let mut out = String::new();
    for c in w.chars() {
        let k = if c.is_uppercase() {
            'X'
        } else if c.is_lowercase() {
            'x'
        } else if c.is_ascii_digit() {
            'd'
        } else {
            c
        };
        if !out.ends_with(k) {
            out.push(k);
        }
    }
    out
}

/// A trained tagger.
#[derive(Debug, Clone)]
pub struct Tagger {
    tags: Vec<PiiKind>,
    /// Feature hash → one weight per tag (index 0 is "no identifier").
    weights: HashMap<u64, Vec<f32>>,
    /// `(prev + 1) * n + tag`, prev = -1 at the start.
    trans: Vec<f32>,
}

/// The features of every token, as hashes.
fn features(text: &str, toks: &[Tok], lex: Option<&Lexicon>) -> Vec<Vec<u64>> {
    let words: Vec<&str> = toks.iter().map(|t| &text[t.start..t.end]).collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    let shapes: Vec<String> = words.iter().map(|w| shape(w)).collect();
    // the line of every token: its first word and its length in tokens
    let mut line_of = vec![0usize; toks.len()];
    let mut lines: Vec<(usize, usize)> = Vec::new(); // (first token, count)
    for (i, t) in toks.iter().enumerate() {
        let new_line = i == 0 || text[toks[i - 1].end..t.start].contains('\n');
        if new_line {
            lines.push((i, 0));
        }
        let l = lines.len() - 1;
        lines[l].1 += 1;
        line_of[i] = l;
    }
    let h = |parts: &[&str]| hash_bytes(parts.join("\u{1}").as_bytes());
    let get = |v: &[String], i: isize| -> String {
        usize::try_from(i)
            .ok()
            .and_then(|i| v.get(i))
            .cloned()
            .unwrap_or_else(|| "<none>".into())
    };
    let mut out = Vec::with_capacity(toks.len());
    for (i, w) in words.iter().enumerate() {
        let ii = isize::try_from(i).unwrap_or(0);
        let lw = &lower[i];
        let (first, count) = lines[line_of[i]];
        let pos = i - first;
        let gap_before = if i == 0 {
            ""
        } else {
            &text[toks[i - 1].end..toks[i].start]
        };
        let gap = if gap_before.contains('\t') || gap_before.len() >= 2 {
            "wide"
        } else if gap_before.contains('\n') {
            "nl"
        } else if gap_before.is_empty() {
            "glued"
        } else {
            "space"
        };
        let title: String = {
            let mut cs = w.chars();
            cs.next().map_or_else(String::new, |f| {
                f.to_uppercase()
                    .chain(cs.flat_map(char::to_lowercase))
                    .collect()
            })
        };
        let mut f = vec![
            h(&["bias"]),
            h(&["w", lw]),
            h(&["shape", &shapes[i]]),
            h(&["suf3", &lw.chars().rev().take(3).collect::<String>()]),
            h(&["pre2", &lw.chars().take(2).collect::<String>()]),
            h(&["p1", &get(&lower, ii - 1)]),
            h(&["p2", &get(&lower, ii - 2)]),
            h(&["n1", &get(&lower, ii + 1)]),
            h(&["n2", &get(&lower, ii + 2)]),
            h(&["p1s", &get(&shapes, ii - 1)]),
            h(&["n1s", &get(&shapes, ii + 1)]),
            h(&["p1w", &get(&lower, ii - 1), lw]),
            h(&["lead", &lower[first]]),
            h(&["pos", &pos.min(4).to_string()]),
            h(&["len", &count.min(8).to_string()]),
            h(&["last", &(pos + 1 == count).to_string()]),
            h(&["gap", gap]),
            h(&["shape+p1", &shapes[i], &get(&lower, ii - 1)]),
            h(&["shape+n1", &shapes[i], &get(&lower, ii + 1)]),
        ];
        if let Some(lex) = lex {
            let first_name = lex.first_names.contains(&title);
            let surname = lex.surnames.contains(&title);
            let common = lex.is_common(w);
            f.push(h(&[
                "lex",
                &format!(
                    "{first_name}{surname}{common}{}",
                    lex.places.contains(&title)
                ),
            ]));
            f.push(h(&[
                "lex+shape",
                &format!("{first_name}{surname}{common}"),
                &shapes[i],
            ]));
            let eponym = lex.eponym_heads.contains(&get(&lower, ii + 1))
                || lex
                    .eponyms
                    .contains(&format!("{lw} {}", get(&lower, ii + 1)));
            f.push(h(&["eponym", &eponym.to_string()]));
        }
        if MONTHS.iter().any(|m| m.eq_ignore_ascii_case(w)) {
            f.push(h(&["month"]));
        }
        out.push(f);
    }
    out
}

impl Tagger {
    /// The identifiers the tagger finds, as byte ranges and kinds (same-kind neighbours on a line merged).
    #[must_use]
    pub fn find(&self, text: &str, lex: Option<&Lexicon>) -> Vec<(usize, usize, PiiKind)> {
        let toks = tokens(text);
        if toks.is_empty() {
            return Vec::new();
        }
        let feats = features(text, &toks, lex);
        let tags = self.viterbi(&feats, &self.weights, &self.trans);
        let mut out: Vec<(usize, usize, PiiKind)> = Vec::new();
        for (i, &t) in tags.iter().enumerate() {
            if t == 0 {
                continue;
            }
            let kind = self.tags[t - 1];
            let tok = toks[i];
            match out.last_mut() {
                Some(last)
                    if last.2 == kind
                        && i > 0
                        && tags[i - 1] == t
                        && joinable(&text[last.0..last.1], &text[last.1..tok.start]) =>
                {
                    last.1 = tok.end;
                }
                _ => out.push((tok.start, tok.end, kind)),
            }
        }
        out
    }

    /// How many features have a weight.
    #[must_use]
    pub fn feature_count(&self) -> usize {
        self.weights.len()
    }

    fn n(&self) -> usize {
        self.tags.len() + 1
    }

    fn viterbi(&self, feats: &[Vec<u64>], w: &HashMap<u64, Vec<f32>>, trans: &[f32]) -> Vec<usize> {
        let n = self.n();
        let emit = |f: &[u64]| {
            let mut s = vec![0f32; n];
            for h in f {
                if let Some(v) = w.get(h) {
                    for (a, b) in s.iter_mut().zip(v) {
                        *a += b;
                    }
                }
            }
            s
        };
        let mut score = emit(&feats[0]);
        for (t, s) in score.iter_mut().enumerate() {
            *s += trans[t];
        }
        let mut back: Vec<Vec<usize>> = Vec::with_capacity(feats.len());
        for f in &feats[1..] {
            let e = emit(f);
            let mut next = vec![f32::NEG_INFINITY; n];
            let mut bp = vec![0usize; n];
            for (t, nx) in next.iter_mut().enumerate() {
                for (p, sp) in score.iter().enumerate() {
                    let v = sp + trans[(p + 1) * n + t];
                    if v > *nx {
                        *nx = v;
                        bp[t] = p;
                    }
                }
                *nx += e[t];
            }
            back.push(bp);
            score = next;
        }
        let mut best = (0..n).fold(0, |b, t| if score[t] > score[b] { t } else { b });
        let mut path = vec![best; feats.len()];
        for (i, bp) in back.iter().enumerate().rev() {
            best = bp[best];
            path[i] = best;
        }
        path
    }

    /// Trains on labelled notes for `epochs` passes (averaged perceptron; notes in a seeded order).
    #[must_use]
    pub fn train(notes: &[LabelledNote], lex: Option<&Lexicon>, epochs: usize) -> Self {
        let (tags, data) = gold(notes, lex);
        let mut model = Self {
            tags,
            weights: HashMap::new(),
            trans: Vec::new(),
        };
        let n = model.n();
        let mut avg = Averaged::new(n);
        let mut order: Vec<usize> = (0..data.len()).collect();
        for epoch in 0..epochs {
            // a seeded shuffle
            let mut seed = hash_bytes(format!("tagger-epoch-{epoch}").as_bytes());
            for i in (1..order.len()).rev() {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let j = usize::try_from((seed >> 33) % (i as u64 + 1)).unwrap_or(0);
                order.swap(i, j);
            }
            for &d in &order {
                avg.step += 1;
                let (feats, gold) = &data[d];
                let pred = model.viterbi(feats, &avg.w, &avg.trans);
                if pred == *gold {
                    continue;
                }
                for (i, f) in feats.iter().enumerate() {
                    if pred[i] != gold[i] {
                        for &h in f {
                            avg.bump(h, gold[i], 1.0);
                            avg.bump(h, pred[i], -1.0);
                        }
                    }
                }
                for i in 0..gold.len() {
                    let (gp, pp) = if i == 0 {
                        (0, 0)
                    } else {
                        (gold[i - 1] + 1, pred[i - 1] + 1)
                    };
                    if gp != pp || gold[i] != pred[i] {
                        avg.bump_trans(gp * n + gold[i], 1.0);
                        avg.bump_trans(pp * n + pred[i], -1.0);
                    }
                }
            }
        }
        (model.weights, model.trans) = avg.finish();
        model
    }

    /// Writes the tagger atomically.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC.as_bytes());
        out.push(b'\n');
        let tags: Vec<&str> = self.tags.iter().map(|k| k.tag()).collect();
        let header = serde_json::json!({"tags": tags, "features": self.weights.len()});
        out.extend_from_slice(header.to_string().as_bytes());
        out.push(b'\n');
        let mut keys: Vec<&u64> = self.weights.keys().collect();
        keys.sort();
        for k in keys {
            out.extend_from_slice(&k.to_le_bytes());
            for x in &self.weights[k] {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        for x in &self.trans {
            out.extend_from_slice(&x.to_le_bytes());
        }
        strata_store::write_atomic(path, &out).map_err(|e| bad(path, &e.to_string()))
    }

    /// Reads a tagger written by [`Tagger::save`].
    ///
    /// # Errors
    /// A missing or malformed file, named.
    pub fn load(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| bad(path, &e.to_string()))?;
        let mut r = std::io::BufReader::new(f);
        let mut line = String::new();
        r.read_line(&mut line)
            .map_err(|e| bad(path, &e.to_string()))?;
        if line.trim_end() != MAGIC {
            return Err(bad(
                path,
                &format!(
                    "not a tagger (first line {:?}, want {MAGIC:?})",
                    line.trim_end()
                ),
            ));
        }
        line.clear();
        r.read_line(&mut line)
            .map_err(|e| bad(path, &e.to_string()))?;
        let header: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(path, &format!("header: {e}")))?;
        let tags = header["tags"]
            .as_array()
            .ok_or_else(|| bad(path, "header has no tags"))?
            .iter()
            .map(|t| {
                t.as_str()
                    .and_then(kind_of)
                    .ok_or_else(|| bad(path, &format!("unknown tag {t}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let count = header["features"]
            .as_u64()
            .ok_or_else(|| bad(path, "header has no feature count"))?;
        let n = tags.len() + 1;
        let mut rest = Vec::new();
        r.read_to_end(&mut rest)
            .map_err(|e| bad(path, &e.to_string()))?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let want = count
            .saturating_mul(8 + 4 * n)
            .saturating_add(4 * (n + 1) * n);
        if rest.len() != want {
            return Err(bad(
                path,
                &format!("{} bytes of weights, want {want} (truncated?)", rest.len()),
            ));
        }
        let f32_at = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let mut weights = HashMap::with_capacity(count);
        let rec = 8 + 4 * n;
        for c in rest[..count * rec].chunks_exact(rec) {
            let mut k = [0u8; 8];
            k.copy_from_slice(&c[..8]);
            weights.insert(
                u64::from_le_bytes(k),
                c[8..].chunks_exact(4).map(f32_at).collect(),
            );
        }
        let trans = rest[count * rec..].chunks_exact(4).map(f32_at).collect();
        Ok(Self {
            tags,
            weights,
            trans,
        })
    }
}

fn bad(path: &Path, reason: &str) -> DeidError {
    DeidError::Lexicon {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The kind of a label: the placeholder words (`NAME`) and i2b2's sub-types' parents.
fn kind_of(label: &str) -> Option<PiiKind> {
    Some(match label.to_ascii_uppercase().as_str() {
        "NAME" | "PATIENT" | "DOCTOR" | "USERNAME" => PiiKind::Name,
        "DATE" | "DOB" => PiiKind::Date,
        "AGE" => PiiKind::Age,
        "PHONE" | "FAX" => PiiKind::Phone,
        "EMAIL" => PiiKind::Email,
        "MRN" | "MEDICALRECORD" => PiiKind::Mrn,
        "ID" | "IDNUM" | "ACCOUNT" | "SSN" | "HEALTHPLAN" | "LICENSE" | "DEVICE" => PiiKind::Id,
        "LOCATION" | "STREET" | "CITY" | "ZIP" => PiiKind::Location,
        "HOSPITAL" | "ORGANIZATION" => PiiKind::Hospital,
        "IP" => PiiKind::Ip,
        _ => return None,
    })
}

fn char_to_byte(text: &str) -> Vec<usize> {
    let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
    v.push(text.len());
    v
}

/// Every note's token features and gold tags (0: none; k: the k-th kind met), and the kinds.
type Gold = (Vec<PiiKind>, Vec<(Vec<Vec<u64>>, Vec<usize>)>);

fn gold(notes: &[LabelledNote], lex: Option<&Lexicon>) -> Gold {
    let mut kinds: Vec<PiiKind> = Vec::new();
    let mut data = Vec::with_capacity(notes.len());
    for note in notes {
        let toks = tokens(&note.text);
        if toks.is_empty() {
            continue;
        }
        let at = char_to_byte(&note.text);
        let mut gold = vec![0usize; toks.len()];
        for s in &note.spans {
            let Some(kind) = kind_of(&s.label) else {
                continue;
            };
            let k = kinds.iter().position(|x| *x == kind).unwrap_or_else(|| {
                kinds.push(kind);
                kinds.len() - 1
            });
            let (a, b) = (at[s.start], at[s.end]);
            for (g, t) in gold.iter_mut().zip(&toks) {
                if t.start >= a && t.end <= b {
                    *g = k + 1;
                }
            }
        }
        data.push((features(&note.text, &toks, lex), gold));
    }
    (kinds, data)
}

/// The averaged perceptron's weights and, kept lazily, the sums of their values over every step.
struct Averaged {
    n: usize,
    step: u64,
    w: HashMap<u64, Vec<f32>>,
    total: HashMap<u64, (Vec<f64>, Vec<u64>)>,
    trans: Vec<f32>,
    trans_total: Vec<f64>,
    trans_at: Vec<u64>,
}

impl Averaged {
    fn new(n: usize) -> Self {
        Self {
            n,
            step: 0,
            w: HashMap::new(),
            total: HashMap::new(),
            trans: vec![0.0; (n + 1) * n],
            trans_total: vec![0.0; (n + 1) * n],
            trans_at: vec![0; (n + 1) * n],
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn bump(&mut self, h: u64, tag: usize, by: f32) {
        let n = self.n;
        let v = self.w.entry(h).or_insert_with(|| vec![0.0; n]);
        let (tot, at) = self
            .total
            .entry(h)
            .or_insert_with(|| (vec![0.0; n], vec![0; n]));
        tot[tag] += f64::from(v[tag]) * (self.step - at[tag]) as f64;
        at[tag] = self.step;
        v[tag] += by;
    }

    #[allow(clippy::cast_precision_loss)]
    fn bump_trans(&mut self, idx: usize, by: f32) {
        self.trans_total[idx] +=
            f64::from(self.trans[idx]) * (self.step - self.trans_at[idx]) as f64;
        self.trans_at[idx] = self.step;
        self.trans[idx] += by;
    }

    /// The averages: weights (zeros dropped) and transitions.
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    fn finish(self) -> (HashMap<u64, Vec<f32>>, Vec<f32>) {
        let step = self.step;
        let steps = step.max(1) as f64;
        let mut weights = HashMap::new();
        for (h, v) in &self.w {
            let (tot, at) = &self.total[h];
            let avg: Vec<f32> = (0..self.n)
                .map(|t| ((tot[t] + f64::from(v[t]) * (step - at[t]) as f64) / steps) as f32)
                .collect();
            if avg.iter().any(|x| x.abs() > 1e-6) {
                weights.insert(*h, avg);
            }
        }
        let trans = (0..self.trans.len())
            .map(|i| {
                ((self.trans_total[i]
                    + f64::from(self.trans[i]) * (step - self.trans_at[i]) as f64)
                    / steps) as f32
            })
            .collect();
        (weights, trans)
    }
}

/// Whether two tokens of one kind are one span: a space or a hyphen between them, or the dot of an initial
/// (`Delphine R. Moss`), never a sentence's end (`CHOLECYSTITIS. PNEUMONIA`).
fn joinable(before: &str, gap: &str) -> bool {
    let initial = before.chars().last().is_some_and(char::is_uppercase)
        && before
            .chars()
            .rev()
            .nth(1)
            .is_none_or(|c| !c.is_alphabetic());
    match gap {
        " " | "-" => true,
        "." | ". " => initial,
        _ => false,
    }
}

/// Reads labelled notes from several files.
///
/// # Errors
/// As [`crate::eval::read_notes`].
pub fn read_training(paths: &[std::path::PathBuf]) -> Result<Vec<LabelledNote>> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(crate::eval::read_notes(p)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::LabelledSpan;

    /// Notes where a name follows "routed to" and a department follows "seen in": the tagger must learn the
    /// context, not the names.
    fn notes() -> Vec<LabelledNote> {
        let syl = [
            "ka", "lo", "ver", "min", "dra", "sel", "tho", "ru", "nen", "bri",
        ];
        let word = |i: usize, j: usize| {
            let s = format!("{}{}", syl[i % syl.len()], syl[j % syl.len()]);
            let mut c = s.chars();
            c.next()
                .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
        };
        (0..60)
            .map(|i| {
                let name = format!("{} {}", word(i, i / 3 + 1), word(i + 4, i / 2 + 3));
                let head = "Seen in Cardiology today. Message routed to ";
                let text = format!("{head}{name}. Follow up in 2 weeks.");
                let start = head.chars().count();
                LabelledNote {
                    id: format!("n{i}"),
                    text,
                    spans: vec![LabelledSpan {
                        start,
                        end: start + name.chars().count(),
                        label: "NAME".into(),
                    }],
                    decoys: Vec::new(),
                }
            })
            .collect()
    }

    #[test]
    fn learns_the_context_and_finds_a_name_it_never_saw() {
        let t = Tagger::train(&notes(), None, 5);
        let text =
            "Seen in Cardiology today. Message routed to Zorblat Quenwix. Follow up in 2 weeks.";
        let found: Vec<(&str, PiiKind)> = t
            .find(text, None)
            .into_iter()
            .map(|(s, e, k)| (&text[s..e], k))
            .collect();
        assert_eq!(found, [("Zorblat Quenwix", PiiKind::Name)]);
    }

    #[test]
    fn saved_and_loaded_it_finds_the_same_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let t = Tagger::train(&notes(), None, 3);
        let path = dir.path().join("tagger.bin");
        t.save(&path).unwrap_or_else(|e| panic!("{e}"));
        let back = Tagger::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.feature_count(), t.feature_count());
        assert_eq!(back.trans, t.trans);
        let text = "Message routed to Ulver Rotty. Seen in Cardiology.";
        assert_eq!(back.find(text, None), t.find(text, None));
        // a truncated file and a file that is no tagger: errors naming the file
        let bytes = std::fs::read(&path).unwrap_or_default();
        let cut = dir.path().join("cut.bin");
        std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap_or_else(|e| panic!("{e}"));
        let err = Tagger::load(&cut).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("cut.bin") && err.contains("truncated"),
            "{err}"
        );
        let other = dir.path().join("other.bin");
        std::fs::write(&other, "hello\n").unwrap_or_else(|e| panic!("{e}"));
        let err = Tagger::load(&other).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("other.bin") && err.contains("not a tagger"),
            "{err}"
        );
    }
}
