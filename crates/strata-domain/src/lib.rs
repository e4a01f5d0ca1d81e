//! Domain data built into the binary: PubMedQA's 1,000 expert-labelled questions (MIT; `datasets/pubmedqa/`
//! in the repository, with its licence), split as its authors split them — the 500 of
//! `test_ground_truth.json` are the evaluation set, the other 500 may be trained on.
//!
//! `build_pubmedqa` writes four files:
//! - `pubmedqa-test.jsonl`: the multiple-choice task (question, context = the abstract without its
//!   conclusion, choices yes/no/maybe, answer), for `strata eval --task`;
//! - `pubmedqa-test-abstracts.jsonl`: those abstracts as documents (`text`), for medical perplexity on text
//!   never trained on;
//! - `pubmedqa-train.jsonl`: the other 500 as documents (question, abstract, conclusion, decision) for
//!   continued pretraining;
//! - `pubmedqa-train-chat.jsonl`: the same as chat pairs for SFT: the user's turn is the abstract and
//!   question as [`mc_user_turn`] writes them (the turn `strata eval --task … --apply-chat-template`
//!   scores), the assistant's reply the decision, then the conclusion.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use strata_records::{RecordsError as DataError, Result};

const PQAL: &[u8] = include_bytes!("../../../datasets/pubmedqa/ori_pqal.json.zst");
const TEST_IDS: &str = include_str!("../../../datasets/pubmedqa/test_ground_truth.json");

#[derive(Debug, Deserialize)]
struct Item {
    #[serde(rename = "QUESTION")]
    question: String,
    #[serde(rename = "CONTEXTS")]
    contexts: Vec<String>,
    #[serde(rename = "LONG_ANSWER")]
    long_answer: String,
    final_decision: String,
}

/// The user's turn of a multiple-choice item: `Context: …` (when there is one) and `Question: …`. One
/// spelling for the SFT pairs built here and for the prompts `strata eval` scores, so that what a step
/// trains on is what its task asks.
#[must_use]
pub fn mc_user_turn(question: &str, context: &str) -> String {
    if context.is_empty() {
        format!("Question: {question}")
    } else {
        format!("Context: {context}\nQuestion: {question}")
    }
}

/// The question of the report task and of the report SFT pairs.
pub const REPORT_QUESTION: &str = "What is the impression?";

/// Counts of what [`build_pubmedqa`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubmedqaCounts {
    pub test: usize,
    pub train: usize,
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    strata_store::write_atomic(path, text.as_bytes()).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Writes the four PubMedQA files into `out` (see the module's documentation).
///
/// # Errors
/// When a file cannot be written (the embedded data is checked by the tests).
pub fn build_pubmedqa(out: &Path) -> Result<PubmedqaCounts> {
    let raw = zstd::decode_all(PQAL).map_err(|e| DataError::Io {
        path: "datasets/pubmedqa/ori_pqal.json.zst".into(),
        source: e,
    })?;
    let bad = |e: serde_json::Error| DataError::Io {
        path: "datasets/pubmedqa".into(),
        source: std::io::Error::other(e.to_string()),
    };
    let items: BTreeMap<String, Item> = serde_json::from_slice(&raw).map_err(bad)?;
    let test: BTreeMap<String, String> = serde_json::from_str(TEST_IDS).map_err(bad)?;
    std::fs::create_dir_all(out).map_err(|e| DataError::Io {
        path: out.to_path_buf(),
        source: e,
    })?;
    let (mut task, mut abstracts, mut docs, mut chat) = (vec![], vec![], vec![], vec![]);
    for (id, it) in &items {
        let context = it.contexts.join(" ");
        if let Some(answer) = test.get(id) {
            task.push(
                serde_json::json!({"id": id, "question": it.question, "context": context,
                "choices": ["yes", "no", "maybe"], "answer": answer}),
            );
            abstracts.push(serde_json::json!({"id": format!("pubmedqa:{id}"), "text": context}));
        } else {
            docs.push(
                serde_json::json!({"id": format!("pubmedqa:{id}"), "text": format!(
                "Question: {}\n{}\nConclusion: {}\nAnswer: {}",
                it.question, context, it.long_answer, it.final_decision)}),
            );
            chat.push(serde_json::json!({"id": format!("pubmedqa:{id}"), "messages": [
                {"role": "user", "content": mc_user_turn(&it.question, &context)},
                {"role": "assistant", "content": format!("{}. {}", it.final_decision, it.long_answer)}]}));
        }
    }
    write_jsonl(&out.join("pubmedqa-test.jsonl"), &task)?;
    write_jsonl(&out.join("pubmedqa-test-abstracts.jsonl"), &abstracts)?;
    write_jsonl(&out.join("pubmedqa-train.jsonl"), &docs)?;
    write_jsonl(&out.join("pubmedqa-train-chat.jsonl"), &chat)?;
    Ok(PubmedqaCounts {
        test: task.len(),
        train: docs.len(),
    })
}

/// A report's findings (with its examination line, when it has one) and its impression, or None when it
/// has no `FINDINGS:` or `IMPRESSION:` section.
#[must_use]
pub fn findings_and_impression(text: &str) -> Option<(String, String)> {
    let f = text.find("FINDINGS:")?;
    let i = text.find("IMPRESSION:")?;
    if i < f {
        return None;
    }
    let exam = text[..f].trim();
    let findings = text[f + "FINDINGS:".len()..i].trim();
    let impression = text[i + "IMPRESSION:".len()..].trim();
    if findings.is_empty() || impression.is_empty() {
        return None;
    }
    let findings = if exam.is_empty() {
        findings.to_string()
    } else {
        format!("{exam}\n{findings}")
    };
    Some((findings, impression.to_string()))
}

/// Counts of what [`build_report_task`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportTaskCounts {
    pub test: usize,
    pub train: usize,
    /// Reports without both sections.
    pub skipped: usize,
}

/// From a dataset of reports (`FINDINGS:` … `IMPRESSION:` …): the held-out reports (the split training
/// never sees, [`strata_records::split::is_heldout`]) as a 4-choice task — which impression belongs to these
/// findings, the three others drawn (seeded) from impressions that differ from the right one — in
/// `<prefix>-test.jsonl`, and the training reports as chat pairs (findings → impression) in
/// `<prefix>-train-chat.jsonl`.
///
/// # Errors
/// When the dataset cannot be read, has fewer than 4 distinct impressions, or a file cannot be written.
pub fn build_report_task(
    dataset_dir: &Path,
    out: &Path,
    prefix: &str,
    seed: u64,
) -> Result<ReportTaskCounts> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let (mut test, mut train, mut skipped) = (Vec::new(), Vec::new(), 0usize);
    for doc in strata_records::read_dataset(dataset_dir)? {
        let doc = doc?;
        match findings_and_impression(&doc.text) {
            None => skipped += 1,
            Some(pair)
                if strata_records::split::is_heldout(
                    &doc.text,
                    strata_records::split::DEFAULT_VAL_FRACTION,
                ) =>
            {
                test.push((doc.id, pair));
            }
            Some(pair) => train.push((doc.id, pair)),
        }
    }
    let mut pool: Vec<&str> = test
        .iter()
        .chain(&train)
        .map(|(_, (_, imp))| imp.as_str())
        .collect();
    pool.sort_unstable();
    pool.dedup();
    if pool.len() < 4 {
        return Err(DataError::Io {
            path: dataset_dir.to_path_buf(),
            source: std::io::Error::other(format!(
                "{} distinct impressions: a 4-choice task needs at least 4",
                pool.len()
            )),
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut task = Vec::with_capacity(test.len());
    for (id, (findings, impression)) in &test {
        let mut choices: Vec<&str> = Vec::with_capacity(4);
        while choices.len() < 3 {
            let c = pool[rng.random_range(0..pool.len())];
            if c != impression && !choices.contains(&c) {
                choices.push(c);
            }
        }
        choices.push(impression);
        choices.shuffle(&mut rng);
        let answer = choices.iter().position(|c| c == impression).unwrap_or(0);
        task.push(serde_json::json!({"id": id, "question": REPORT_QUESTION,
            "context": findings, "choices": choices, "answer": answer}));
    }
    let chat: Vec<serde_json::Value> = train
        .iter()
        .map(|(id, (findings, impression))| {
            serde_json::json!({"id": id, "messages": [
                {"role": "user", "content": mc_user_turn(REPORT_QUESTION, findings)},
                {"role": "assistant", "content": impression}]})
        })
        .collect();
    write_jsonl(&out.join(format!("{prefix}-test.jsonl")), &task)?;
    write_jsonl(&out.join(format!("{prefix}-train-chat.jsonl")), &chat)?;
    Ok(ReportTaskCounts {
        test: task.len(),
        train: chat.len(),
        skipped,
    })
}

/// Instruction pairs from terminology text: an ICD-10-CM line `CODE Description.` gives "Which ICD-10-CM
/// code is <description>?" → the code, and a `Term: definition` document (HPO, radiology concepts) gives
/// "What is <term>?" → the definition. Returns the pairs as chat records.
#[must_use]
pub fn terminology_pairs(text: &str) -> Vec<serde_json::Value> {
    let pair = |q: String, a: &str| serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]});
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((code, rest)) = line.split_once(' ') else {
            continue;
        };
        let b = code.as_bytes();
        let icd = b.len() >= 3
            && b[0].is_ascii_uppercase()
            && b[1].is_ascii_digit()
            && b[2].is_ascii_alphanumeric()
            && (b.len() == 3 || (b[3] == b'.' && b.len() > 4));
        if icd {
            let description = rest
                .split(". ")
                .next()
                .unwrap_or(rest)
                .trim_end_matches('.');
            if !description.is_empty() {
                out.push(pair(
                    format!("Which ICD-10-CM code is {description}?"),
                    code,
                ));
            }
        }
    }
    if out.is_empty() {
        if let Some((term, definition)) = text.split_once(": ") {
            if !term.is_empty() && term.len() <= 80 && !term.contains('\n') && definition.len() > 10
            {
                out.push(pair(
                    format!("What is {}?", term.to_lowercase()),
                    definition.trim(),
                ));
            }
        }
    }
    out
}

/// [`terminology_pairs`] of every training document of a dataset (held-out documents are left out, so the
/// pairs never teach what evaluation reads) into `<prefix>-chat.jsonl`; returns how many.
///
/// # Errors
/// When the dataset cannot be read or the file cannot be written.
pub fn build_terminology_pairs(dataset_dir: &Path, out: &Path, prefix: &str) -> Result<usize> {
    let mut rows = Vec::new();
    for doc in strata_records::read_dataset(dataset_dir)? {
        let doc = doc?;
        if !strata_records::split::is_heldout(
            &doc.text,
            strata_records::split::DEFAULT_VAL_FRACTION,
        ) {
            rows.extend(terminology_pairs(&doc.text));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::Io {
        path: out.to_path_buf(),
        source: e,
    })?;
    write_jsonl(&out.join(format!("{prefix}-chat.jsonl")), &rows)?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminology_pairs_by_hand() {
        let icd = "A00 Cholera.\nA00.0 Cholera due to Vibrio cholerae 01, biovar cholerae. Classical cholera.\nnot a code";
        let p = terminology_pairs(icd);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[1]["messages"][0]["content"],
            "Which ICD-10-CM code is Cholera due to Vibrio cholerae 01, biovar cholerae?"
        );
        assert_eq!(p[1]["messages"][1]["content"], "A00.0");
        let hpo =
            terminology_pairs("Abnormality of body height: Deviation from the norm of height.");
        assert_eq!(
            hpo[0]["messages"][0]["content"],
            "What is abnormality of body height?"
        );
        assert_eq!(
            hpo[0]["messages"][1]["content"],
            "Deviation from the norm of height."
        );
        assert!(terminology_pairs("FINDINGS: short").is_empty());
    }

    #[test]
    fn pubmedqa_splits_as_its_authors_did_and_the_test_questions_stay_out_of_training() {
        let d = tempfile::tempdir().unwrap();
        let c = build_pubmedqa(d.path()).unwrap();
        assert_eq!(
            c,
            PubmedqaCounts {
                test: 500,
                train: 500
            }
        );
        let read = |f: &str| -> Vec<serde_json::Value> {
            std::fs::read_to_string(d.path().join(f))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let task = read("pubmedqa-test.jsonl");
        // the published label counts of the 500-question test split
        let count = |a: &str| task.iter().filter(|t| t["answer"] == a).count();
        assert_eq!((count("yes"), count("no"), count("maybe")), (276, 169, 55));
        let first = task.iter().find(|t| t["id"] == "12377809").unwrap();
        assert_eq!(first["answer"], "yes");
        let test_questions: std::collections::HashSet<String> = task
            .iter()
            .map(|t| t["question"].as_str().unwrap().to_string())
            .collect();
        for doc in read("pubmedqa-train.jsonl") {
            let text = doc["text"].as_str().unwrap();
            let q = text
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("Question: ");
            assert!(
                !test_questions.contains(q),
                "a test question is in training: {q}"
            );
        }
        let chat = read("pubmedqa-train-chat.jsonl");
        assert_eq!(chat.len(), 500);
        // the first training item of ori_pqal.json by id, read off the file by hand
        let c = &chat[0]["messages"];
        assert_eq!(chat[0]["id"], "pubmedqa:10340286");
        let user = c[0]["content"].as_str().unwrap();
        assert!(user.starts_with("Context: "), "{user}");
        assert!(
            user.ends_with("\nQuestion: Is there a role for leukocyte and CRP measurements in the diagnosis of acute appendicitis in the elderly?"),
            "{user}"
        );
        assert_eq!(c[1]["role"], "assistant");
        let reply = c[1]["content"].as_str().unwrap();
        assert!(reply.starts_with("maybe. "), "{reply}");
        assert_eq!(read("pubmedqa-test-abstracts.jsonl").len(), 500);
    }
}
