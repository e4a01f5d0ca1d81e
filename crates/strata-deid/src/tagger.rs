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

use crate::eval::{char_to_byte, LabelledNote};
use crate::lexicon::{title_case, Lexicon, MONTHS};
use crate::span::PiiKind;
use crate::{DeidError, Result};

const MAGIC: &str = "STRATA-TAGGER 1";

/// Tags at most: none and every kind.
const MAX_TAGS: usize = 16;

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
    /// Feature hash → one weight per tag (index 0 is "no identifier"), in one array.
    flat: Flat,
    /// `(prev + 1) * n + tag`, prev = -1 at the start.
    trans: Vec<f32>,
}

/// FNV-1a over the parts of a feature, a separator between them: no allocation per feature.
fn fh(parts: &[&[u8]]) -> u64 {
    const P: u64 = 0x0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, part) in parts.iter().enumerate() {
        if k > 0 {
            h = (h ^ 0xff).wrapping_mul(P);
        }
        for &b in *part {
            h = (h ^ u64::from(b)).wrapping_mul(P);
        }
    }
    h
}

/// Keys that are hashes already: the map uses them as they are.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Weights = HashMap<u64, Vec<f32>, std::hash::BuildHasherDefault<IdHasher>>;

/// A feature's weights, one per tag.
trait Emit {
    fn row(&self, h: u64) -> Option<&[f32]>;
}

impl Emit for Weights {
    fn row(&self, h: u64) -> Option<&[f32]> {
        self.get(&h).map(Vec::as_slice)
    }
}

/// Weights in one array: a feature's row at its index times the tag count.
#[derive(Debug, Clone, Default)]
struct Flat {
    n: usize,
    index: HashMap<u64, u32, std::hash::BuildHasherDefault<IdHasher>>,
    data: Vec<f32>,
}

impl Flat {
    fn with_capacity(count: usize, n: usize) -> Self {
        Self {
            n,
            index: HashMap::with_capacity_and_hasher(
                count,
                std::hash::BuildHasherDefault::default(),
            ),
            data: Vec::with_capacity(count * n),
        }
    }

    fn push(&mut self, h: u64, row: &[f32]) {
        self.index
            .insert(h, u32::try_from(self.index.len()).unwrap_or(u32::MAX));
        self.data.extend_from_slice(row);
    }

    fn new(w: &Weights, n: usize) -> Self {
        let mut f = Self::with_capacity(w.len(), n);
        for (h, v) in w {
            f.push(*h, v);
        }
        f
    }
}

impl Emit for Flat {
    fn row(&self, h: u64) -> Option<&[f32]> {
        self.index.get(&h).map(|&k| {
            let k = k as usize * self.n;
            &self.data[k..k + self.n]
        })
    }
}

/// The line of every token: (first token of its line, tokens on the line), per token.
fn lines_of(text: &str, toks: &[Tok]) -> Vec<(usize, usize)> {
    let mut line_of = vec![0usize; toks.len()];
    let mut lines: Vec<(usize, usize)> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if i == 0 || text[toks[i - 1].end..t.start].contains('\n') {
            lines.push((i, 0));
        }
        let l = lines.len() - 1;
        lines[l].1 += 1;
        line_of[i] = l;
    }
    line_of.into_iter().map(|l| lines[l]).collect()
}

/// What the lexicon says of a word: first name, surname, everyday word, place (bits 0-3).
fn lex_bits(w: &str, lower: &str, lex: &Lexicon) -> u8 {
    let title = title_case(w);
    u8::from(lex.first_names.contains(&title))
        | u8::from(lex.surnames.contains(&title)) << 1
        | u8::from(lex.common.contains(lower)) << 2
        | u8::from(lex.places.contains(&title)) << 3
}

/// The word `d` places from `i` (`<none>` past either end).
fn at(v: &[String], i: usize, d: isize) -> &[u8] {
    i.checked_add_signed(d)
        .and_then(|k| v.get(k))
        .map_or(b"<none>", |s| s.as_bytes())
}

/// The features of every token, as hashes.
fn features(text: &str, toks: &[Tok], lex: Option<&Lexicon>) -> Vec<Vec<u64>> {
    let words: Vec<&str> = toks.iter().map(|t| &text[t.start..t.end]).collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    let shapes: Vec<String> = words.iter().map(|w| shape(w)).collect();
    let lines = lines_of(text, toks);
    let bits: Vec<u8> = match lex {
        Some(l) => words
            .iter()
            .zip(&lower)
            .map(|(w, lw)| lex_bits(w, lw, l))
            .collect(),
        None => vec![0; words.len()],
    };
    let mut out = Vec::with_capacity(toks.len());
    for (i, w) in words.iter().enumerate() {
        let lw = lower[i].as_bytes();
        let sh = shapes[i].as_bytes();
        let (first, count) = lines[i];
        let pos = i - first;
        let gap_before = if i == 0 {
            ""
        } else {
            &text[toks[i - 1].end..toks[i].start]
        };
        let gap: &[u8] = if gap_before.contains('\t') || gap_before.len() >= 2 {
            b"wide"
        } else if gap_before.contains('\n') {
            b"nl"
        } else if gap_before.is_empty() {
            b"glued"
        } else {
            b"space"
        };
        let suf_at = lower[i].char_indices().rev().nth(2).map_or(0, |(k, _)| k);
        let pre_to = lower[i].char_indices().nth(2).map_or(lw.len(), |(k, _)| k);
        let (p1, p2, n1, n2) = (
            at(&lower, i, -1),
            at(&lower, i, -2),
            at(&lower, i, 1),
            at(&lower, i, 2),
        );
        let small = |x: usize| [u8::try_from(x).unwrap_or(u8::MAX)];
        let mut f = vec![
            fh(&[b"bias"]),
            fh(&[b"w", lw]),
            fh(&[b"shape", sh]),
            fh(&[b"suf3", &lw[suf_at..]]),
            fh(&[b"pre2", &lw[..pre_to]]),
            fh(&[b"p1", p1]),
            fh(&[b"p2", p2]),
            fh(&[b"n1", n1]),
            fh(&[b"n2", n2]),
            fh(&[b"p1s", at(&shapes, i, -1)]),
            fh(&[b"n1s", at(&shapes, i, 1)]),
            fh(&[b"p1w", p1, lw]),
            fh(&[b"lead", lower[first].as_bytes()]),
            fh(&[b"pos", &small(pos.min(4))]),
            fh(&[b"len", &small(count.min(8))]),
            fh(&[b"last", &small(usize::from(pos + 1 == count))]),
            fh(&[b"gap", gap]),
            fh(&[b"shape+p1", sh, p1]),
            fh(&[b"shape+n1", sh, n1]),
        ];
        if let Some(lex) = lex {
            let b = bits[i];
            f.push(fh(&[b"lex", &[b]]));
            f.push(fh(&[b"lex+shape", &[b & 7], sh]));
            let next = std::str::from_utf8(n1).unwrap_or("");
            let eponym = lex.eponym_heads.contains(next)
                || lex.eponyms.contains(&format!("{} {next}", lower[i]));
            f.push(fh(&[b"eponym", &[u8::from(eponym)]]));
        }
        if MONTHS.iter().any(|m| m.eq_ignore_ascii_case(w)) {
            f.push(fh(&[b"month"]));
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
        let tags = self.viterbi(&feats, &self.flat, &self.trans);
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
        self.flat.index.len()
    }

    fn n(&self) -> usize {
        self.tags.len() + 1
    }

    fn viterbi(&self, feats: &[Vec<u64>], w: &impl Emit, trans: &[f32]) -> Vec<usize> {
        let n = self.n().min(MAX_TAGS);
        let emit = |f: &[u64]| {
            let mut s = [0f32; MAX_TAGS];
            for &h in f {
                if let Some(v) = w.row(h) {
                    for (a, b) in s.iter_mut().zip(v) {
                        *a += b;
                    }
                }
            }
            s
        };
        let mut score = emit(&feats[0]);
        for (t, s) in score.iter_mut().take(n).enumerate() {
            *s += trans[t];
        }
        // back pointers, n per token after the first
        let mut back: Vec<u8> = Vec::with_capacity(feats.len() * n);
        for f in &feats[1..] {
            let e = emit(f);
            let mut next = [f32::NEG_INFINITY; MAX_TAGS];
            for t in 0..n {
                let mut from = 0u8;
                for (p, sp) in score.iter().take(n).enumerate() {
                    let v = sp + trans[(p + 1) * n + t];
                    if v > next[t] {
                        next[t] = v;
                        from = u8::try_from(p).unwrap_or(0);
                    }
                }
                next[t] += e[t];
                back.push(from);
            }
            score = next;
        }
        let mut best = (0..n).fold(0, |b, t| if score[t] > score[b] { t } else { b });
        let mut path = vec![best; feats.len()];
        for i in (0..feats.len() - 1).rev() {
            best = usize::from(back[i * n + best]);
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
            flat: Flat::default(),
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
        let weights;
        (weights, model.trans) = avg.finish();
        model.flat = Flat::new(&weights, n);
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
        let header = serde_json::json!({"tags": tags, "features": self.feature_count()});
        out.extend_from_slice(header.to_string().as_bytes());
        out.push(b'\n');
        // by feature hash, so that the same tagger is the same bytes
        let mut keys: Vec<(&u64, &u32)> = self.flat.index.iter().collect();
        keys.sort_unstable();
        let n = self.flat.n;
        for (k, &row) in keys {
            out.extend_from_slice(&k.to_le_bytes());
            let at = row as usize * n;
            for x in &self.flat.data[at..at + n] {
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
        if n > MAX_TAGS {
            return Err(bad(
                path,
                &format!("{} tags, at most {}", tags.len(), MAX_TAGS - 1),
            ));
        }
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
        let mut flat = Flat::with_capacity(count, n);
        let rec = 8 + 4 * n;
        let mut row = Vec::with_capacity(n);
        for c in rest[..count * rec].chunks_exact(rec) {
            let mut k = [0u8; 8];
            k.copy_from_slice(&c[..8]);
            row.clear();
            row.extend(c[8..].chunks_exact(4).map(f32_at));
            flat.push(u64::from_le_bytes(k), &row);
        }
        let trans = rest[count * rec..].chunks_exact(4).map(f32_at).collect();
        Ok(Self { tags, flat, trans })
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
    w: Weights,
    total: HashMap<u64, (Vec<f64>, Vec<u64>), std::hash::BuildHasherDefault<IdHasher>>,
    trans: Vec<f32>,
    trans_total: Vec<f64>,
    trans_at: Vec<u64>,
}

impl Averaged {
    fn new(n: usize) -> Self {
        Self {
            n,
            step: 0,
            w: Weights::default(),
            total: HashMap::default(),
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
    fn finish(self) -> (Weights, Vec<f32>) {
        let step = self.step;
        let steps = step.max(1) as f64;
        let mut weights = Weights::default();
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
