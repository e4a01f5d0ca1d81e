//! Scoring a de-identifier on labelled notes (`strata deid eval`): recall per identifier type, the share of
//! decoys (medical terms, doses, codes) left untouched, and speed.
//!
//! A labelled note is one jsonl record `{"id", "text", "spans": [{"start", "end", "type"}], "decoys":
//! [{"start", "end", "kind"}]}` with offsets in Unicode characters (Python's `str` indices, as the generator
//! `scripts/make_deid_notes.py` and most annotation tools write them). An identifier counts as found when
//! every non-space character of it is inside found spans (of any type: what matters is that it is gone); a
//! decoy is kept when no found span touches it. A note *leaks* when at least one of its identifiers is not
//! found (the share a privacy officer asks for first); a found span is *correct* when it overlaps a labelled
//! identifier, and precision per found type is the share of its spans that are.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use strata_records::{io_err, RecordsError};

use crate::{Deid, PiiSpan, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct LabelledSpan {
    pub start: usize,
    pub end: usize,
    #[serde(rename = "type", alias = "kind")]
    pub label: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LabelledNote {
    #[serde(default)]
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub spans: Vec<LabelledSpan>,
    #[serde(default)]
    pub decoys: Vec<LabelledSpan>,
}

/// Reads labelled notes; a bad line is an error naming the file and line.
///
/// # Errors
/// On I/O failure, a line that is not such a record, or offsets outside the text.
pub fn read_notes(path: &Path) -> Result<Vec<LabelledNote>> {
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| RecordsError::Record {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let note: LabelledNote = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let n = note.text.chars().count();
        if let Some(s) = note
            .spans
            .iter()
            .chain(&note.decoys)
            .find(|s| s.start >= s.end || s.end > n)
        {
            return Err(bad(format!(
                "span {}..{} ({}) is outside the text's {n} characters or empty",
                s.start, s.end, s.label
            ))
            .into());
        }
        out.push(note);
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Tally {
    pub total: usize,
    pub hit: usize,
}

impl Tally {
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn share(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.hit as f64 / self.total as f64
        }
    }
}

/// What `strata deid eval` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeidReport {
    pub notes: usize,
    pub bytes: usize,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Per identifier type: how many, how many found.
    pub recall: BTreeMap<String, Tally>,
    /// Per decoy kind: how many, how many kept.
    pub decoys_kept: BTreeMap<String, Tally>,
    /// Per type found (the detector's tag): how many spans, how many overlap a labelled identifier.
    #[serde(default)]
    pub precision: BTreeMap<String, Tally>,
    /// Notes with at least one identifier, and how many of them have every identifier found.
    #[serde(default)]
    pub notes_clean: Tally,
    /// Up to 50 identifiers missed and decoys lost: `note id: TYPE "text"`.
    pub missed: Vec<String>,
    pub lost: Vec<String>,
    /// Up to 50 found spans that touch no labelled identifier: `note id: TYPE "text"`.
    #[serde(default)]
    pub wrong: Vec<String>,
}

/// Byte offset of every character index (and of the end).
pub(crate) fn char_to_byte(text: &str) -> Vec<usize> {
    let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
    v.push(text.len());
    v
}

fn covered(text: &str, found: &[PiiSpan], start: usize, end: usize) -> bool {
    text[start..end]
        .char_indices()
        .filter(|(_, c)| !c.is_whitespace())
        .all(|(k, c)| {
            let (a, b) = (start + k, start + k + c.len_utf8());
            found.iter().any(|s| s.start <= a && b <= s.end)
        })
}

/// Scores `deid` on `notes`. Time is that of finding and replacing once (what the preprocessing stage does).
#[must_use]
pub fn evaluate(deid: &Deid, notes: &[LabelledNote]) -> DeidReport {
    let mut r = DeidReport {
        notes: notes.len(),
        ..DeidReport::default()
    };
    // the patterns compile on first use: not part of the rate
    std::hint::black_box(deid.find("Mrs. Warm, 91, seen on 1/2/2024 in Up. 患者王磊复诊。"));
    let t = Instant::now();
    let mut found_all: Vec<Vec<PiiSpan>> = Vec::with_capacity(notes.len());
    for n in notes {
        let found = deid.find(&n.text);
        std::hint::black_box(deid.replace(&n.text, &found, &n.id));
        r.bytes += n.text.len();
        found_all.push(found);
    }
    r.seconds = t.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    {
        r.mb_per_s = r.bytes as f64 / 1e6 / r.seconds.max(1e-9);
    }
    for (n, found) in notes.iter().zip(&found_all) {
        let at = char_to_byte(&n.text);
        let mut leaked = false;
        for s in &n.spans {
            let (a, b) = (at[s.start], at[s.end]);
            let t = r.recall.entry(s.label.clone()).or_default();
            t.total += 1;
            if covered(&n.text, found, a, b) {
                t.hit += 1;
            } else {
                leaked = true;
                if r.missed.len() < 50 {
                    r.missed
                        .push(format!("{}: {} {:?}", n.id, s.label, &n.text[a..b]));
                }
            }
        }
        if !n.spans.is_empty() {
            r.notes_clean.total += 1;
            r.notes_clean.hit += usize::from(!leaked);
        }
        for f in found {
            let t = r.precision.entry(f.kind.tag().to_string()).or_default();
            t.total += 1;
            let right = n
                .spans
                .iter()
                .any(|s| at[s.start] < f.end && f.start < at[s.end]);
            t.hit += usize::from(right);
            if !right && r.wrong.len() < 50 {
                r.wrong.push(format!(
                    "{}: {} {:?}",
                    n.id,
                    f.kind.tag(),
                    &n.text[f.start..f.end]
                ));
            }
        }
        for d in &n.decoys {
            let (a, b) = (at[d.start], at[d.end]);
            let t = r.decoys_kept.entry(d.label.clone()).or_default();
            t.total += 1;
            if found.iter().any(|s| s.start < b && a < s.end) {
                if r.lost.len() < 50 {
                    r.lost
                        .push(format!("{}: {} {:?}", n.id, d.label, &n.text[a..b]));
                }
            } else {
                t.hit += 1;
            }
        }
    }
    r
}

/// One block of the table: a header, a line per kind, and all kinds together.
fn section(s: &mut String, head: [&str; 3], map: &BTreeMap<String, Tally>) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "{:<12} {:>7} {:>7} {:>8}",
        head[0], "total", head[1], head[2]
    );
    let all = DeidReport::overall(map);
    for (k, t) in map
        .iter()
        .chain(std::iter::once((&"all".to_string(), &all)))
    {
        let _ = writeln!(
            s,
            "{k:<12} {:>7} {:>7} {:>7.2}%",
            t.total,
            t.hit,
            100.0 * t.share()
        );
    }
}

impl DeidReport {
    /// All types together.
    #[must_use]
    pub fn overall(map: &BTreeMap<String, Tally>) -> Tally {
        map.values().fold(Tally::default(), |a, t| Tally {
            total: a.total + t.total,
            hit: a.hit + t.hit,
        })
    }

    /// A plain-text table.
    #[must_use]
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} notes, {:.2} MB in {:.3} s: {:.2} MB/s",
            self.notes,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.mb_per_s
        );
        section(&mut s, ["identifier", "found", "recall"], &self.recall);
        section(
            &mut s,
            ["found as", "correct", "precision"],
            &self.precision,
        );
        section(&mut s, ["decoy", "kept", "kept"], &self.decoys_kept);
        let leaked = self.notes_clean.total - self.notes_clean.hit;
        let _ = writeln!(
            s,
            "notes with an identifier left: {leaked} of {} ({:.2}%)",
            self.notes_clean.total,
            100.0 * (1.0 - self.notes_clean.share())
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PiiRedact;

    fn note(id: &str, text: &str, spans: &[(usize, usize, &str)]) -> LabelledNote {
        LabelledNote {
            id: id.into(),
            text: text.into(),
            spans: spans
                .iter()
                .map(|&(start, end, label)| LabelledSpan {
                    start,
                    end,
                    label: label.into(),
                })
                .collect(),
            decoys: Vec::new(),
        }
    }

    #[test]
    fn leaked_notes_and_precision_by_hand() {
        let deid = Deid::without_lexicon(&PiiRedact::default());
        let notes = [
            // found: the note is clean
            note("n1", "Write to ann@mail.org today.", &[(9, 21, "EMAIL")]),
            // a bare unusual name no rule finds: the note leaks; its e-mail is found
            note(
                "n2",
                "Call Zqxv tomorrow, or mail cy@dot.org.",
                &[(5, 9, "NAME"), (28, 38, "EMAIL")],
            ),
            // an IP that is not labelled: found, but not an identifier of the note; no identifiers, not counted
            note("n3", "Dose 5 mg; router 10.0.0.1 was down.", &[]),
        ];
        let r = evaluate(&deid, &notes);
        assert_eq!(r.recall["EMAIL"], Tally { total: 2, hit: 2 });
        assert_eq!(r.recall["NAME"], Tally { total: 1, hit: 0 });
        assert_eq!(r.notes_clean, Tally { total: 2, hit: 1 });
        assert_eq!(r.precision["EMAIL"], Tally { total: 2, hit: 2 });
        assert_eq!(r.precision["IP"], Tally { total: 1, hit: 0 });
        let table = r.table();
        assert!(
            table.contains("notes with an identifier left: 1 of 2 (50.00%)"),
            "{table}"
        );
    }
}
