//! N-gram decontamination: a document that shares any `n`-word sequence (13 by default, as GPT-3 and
//! datatrove's n-gram decontamination use) with a named evaluation set is dropped, with the set's name in
//! the reason (`contaminated_pubmedqa`). Text is compared lower-cased, as words without punctuation (the
//! spaCy-rule tokens; CJK characters one by one), so a reformatted or re-punctuated copy is still caught.
//!
//! An evaluation set is a `.jsonl` file (one record per line) or a `.json` file (an array of records, or an
//! object of records keyed by id, as PubMedQA's `ori_pqal.json`); `fields` name the record fields whose text
//! is indexed (strings, or lists of strings); `ids` optionally names a JSON file whose keys (an object) or
//! items (an array) are the ids of the records to use — e.g. PubMedQA's `test_ground_truth.json` selects the
//! 500-question test split.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::words::{for_each_token, hash_bytes, is_punct, mix, PreHashedState};
use super::{Stage, Verdict};
use crate::{io_err, DataError, Doc, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSet {
    /// Used in the removal reason: `contaminated_<name>`.
    pub name: String,
    pub path: PathBuf,
    pub fields: Vec<String>,
    /// Only the records with these ids (a JSON file: an object's keys or an array's items).
    #[serde(default)]
    pub ids: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecontamConfig {
    pub eval_sets: Vec<EvalSet>,
    #[serde(default = "default_n")]
    pub n: usize,
}

fn default_n() -> usize {
    13
}

/// What was indexed of one evaluation set: (name, records long enough to index, distinct n-grams).
pub type Indexed = (String, usize, usize);

/// The built index: n-gram hashes of every evaluation set.
pub struct Decontaminate {
    n: usize,
    sets: Arc<Vec<(&'static str, HashSet<u64, PreHashedState>)>>,
}

/// The words of `text` as compared: lower-cased, punctuation dropped, each hashed.
fn word_hashes(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut lower = String::new();
    for_each_token(text, |t| {
        if !is_punct(t) {
            lower.clear();
            lower.extend(t.chars().flat_map(char::to_lowercase));
            out.push(hash_bytes(lower.as_bytes()));
        }
    });
    out
}

/// Hashes of every `n`-word window.
fn ngrams(words: &[u64], n: usize) -> impl Iterator<Item = u64> + '_ {
    words.windows(n.max(1)).map(|w| {
        w.iter()
            .fold(0x9E37_79B9_7F4A_7C15u64, |h, &x| mix(h.rotate_left(17) ^ x))
    })
}

fn field_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|i| field_text(i, out)),
        _ => {}
    }
}

/// The records of an evaluation file as (id, record).
fn records(path: &std::path::Path) -> Result<Vec<(String, Value)>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let bad = |line: usize, reason: String| DataError::Record {
        path: path.to_path_buf(),
        line,
        reason,
    };
    if path.extension().is_some_and(|e| e == "jsonl") {
        let mut out = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value =
                serde_json::from_str(line).map_err(|e| bad(i + 1, format!("not JSON: {e}")))?;
            let id = v.get("id").map_or_else(|| (i + 1).to_string(), id_string);
            out.push((id, v));
        }
        return Ok(out);
    }
    match serde_json::from_str::<Value>(&text)
        .map_err(|e| bad(e.line(), format!("not JSON: {e}")))?
    {
        Value::Object(m) => Ok(m.into_iter().collect()),
        Value::Array(a) => Ok(a
            .into_iter()
            .enumerate()
            .map(|(i, v)| (v.get("id").map_or_else(|| i.to_string(), id_string), v))
            .collect()),
        _ => Err(bad(1, "expected an array or an object of records".into())),
    }
}

fn id_string(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

impl Decontaminate {
    /// Reads and indexes every evaluation set. Returns the stage and, per set, (records, n-grams).
    ///
    /// # Errors
    /// An unreadable file, a file that is not JSON, a record without any of the fields, or a set with no
    /// record long enough to index.
    pub fn build(cfg: &DecontamConfig) -> Result<(Self, Vec<Indexed>)> {
        let mut sets = Vec::new();
        let mut summary = Vec::new();
        for set in &cfg.eval_sets {
            let mut recs = records(&set.path)?;
            if let Some(ids) = &set.ids {
                let text = std::fs::read_to_string(ids).map_err(io_err(ids))?;
                let keep: HashSet<String> = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(m)) => m.keys().cloned().collect(),
                    Ok(Value::Array(a)) => a.iter().map(id_string).collect(),
                    _ => {
                        return Err(DataError::Record {
                            path: ids.clone(),
                            line: 1,
                            reason: "expected an object or an array of ids".into(),
                        })
                    }
                };
                recs.retain(|(id, _)| keep.contains(id));
            }
            let mut grams: HashSet<u64, PreHashedState> = HashSet::default();
            let mut used = 0;
            for (id, rec) in &recs {
                let mut text = String::new();
                for f in &set.fields {
                    if let Some(v) = rec.get(f) {
                        field_text(v, &mut text);
                    }
                }
                if text.is_empty() {
                    return Err(DataError::Record {
                        path: set.path.clone(),
                        line: 0,
                        reason: format!("record {id:?} has none of the fields {:?}", set.fields),
                    });
                }
                let words = word_hashes(&text);
                if words.len() >= cfg.n {
                    used += 1;
                    grams.extend(ngrams(&words, cfg.n));
                }
            }
            if grams.is_empty() {
                return Err(DataError::Record {
                    path: set.path.clone(),
                    line: 0,
                    reason: format!("no record has {} words to index in {:?}", cfg.n, set.fields),
                });
            }
            summary.push((set.name.clone(), used, grams.len()));
            let reason: &'static str =
                Box::leak(format!("contaminated_{}", set.name).into_boxed_str());
            sets.push((reason, grams));
        }
        Ok((
            Self {
                n: cfg.n,
                sets: Arc::new(sets),
            },
            summary,
        ))
    }

    /// The reason to drop `text`, if it shares an n-gram with an evaluation set.
    #[must_use]
    pub fn check(&self, text: &str) -> Option<&'static str> {
        let words = word_hashes(text);
        if words.len() < self.n {
            return None;
        }
        let found = ngrams(&words, self.n).find_map(|g| {
            self.sets
                .iter()
                .find(|(_, set)| set.contains(&g))
                .map(|(reason, _)| *reason)
        });
        found
    }
}

impl Stage for Decontaminate {
    fn name(&self) -> &'static str {
        "decontaminate"
    }
    fn apply(&self, doc: Doc) -> Verdict {
        Verdict::unless(self.check(&doc.text), doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_13_grams_are_caught_through_case_and_punctuation() {
        let d = tempfile::tempdir().unwrap();
        let eval = d.path().join("eval.json");
        std::fs::write(
            &eval,
            r#"{"101": {"Q": "Does aspirin reduce the risk of stroke in adults over sixty who have atrial fibrillation?",
                        "C": ["Aspirin was given to 300 patients.", "Stroke rates fell by a third over two years of follow up."]},
                "102": {"Q": "Is the liver enlarged in every patient with chronic hepatitis B infection seen at the clinic?", "C": []}}"#,
        )
        .unwrap();
        let ids = d.path().join("test.json");
        std::fs::write(&ids, r#"{"101": "yes"}"#).unwrap();
        let cfg = DecontamConfig {
            eval_sets: vec![EvalSet {
                name: "qa".into(),
                path: eval.clone(),
                fields: vec!["Q".into(), "C".into()],
                ids: Some(ids),
            }],
            n: 13,
        };
        let (stage, summary) = Decontaminate::build(&cfg).unwrap();
        // record 101: 15 + 6 + 12 words → 21 distinct 13-grams
        assert_eq!(summary, vec![("qa".to_string(), 1, 21)]);
        // the question re-cased and re-punctuated inside other text: 13 shared words
        assert_eq!(
            stage.check("Background. DOES ASPIRIN reduce the risk of stroke, in adults over sixty who have atrial fibrillation; we asked."),
            Some("contaminated_qa")
        );
        // across the field boundary (question then first context) counts too
        assert_eq!(
            stage.check("in adults over sixty who have atrial fibrillation? Aspirin was given to 300 patients."),
            Some("contaminated_qa")
        );
        // 12 shared words are not enough
        assert_eq!(
            stage.check("aspirin reduce the risk of stroke in adults over sixty who have"),
            None
        );
        // record 102 is outside the selected ids
        assert_eq!(
            stage.check("Is the liver enlarged in every patient with chronic hepatitis B infection seen at the clinic?"),
            None
        );
    }

    #[test]
    fn unusable_eval_sets_are_errors_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let eval = d.path().join("e.jsonl");
        std::fs::write(&eval, "{\"question\": \"too short\"}\n").unwrap();
        let cfg = |fields: &[&str]| DecontamConfig {
            eval_sets: vec![EvalSet {
                name: "e".into(),
                path: eval.clone(),
                fields: fields.iter().map(|f| (*f).to_string()).collect(),
                ids: None,
            }],
            n: 13,
        };
        let err = Decontaminate::build(&cfg(&["question"]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("e.jsonl") && err.contains("no record has 13 words"),
            "{err}"
        );
        let err = Decontaminate::build(&cfg(&["answer"]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("none of the fields"), "{err}");
    }
}
