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
//! - `pubmedqa-train-chat.jsonl`: the same as chat pairs (`messages`: user question with its abstract,
//!   assistant conclusion and decision) for SFT.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::{DataError, Result};

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
                {"role": "user", "content": format!("{}\n\n{}", context, it.question)},
                {"role": "assistant", "content": format!("{} Answer: {}.", it.long_answer, it.final_decision)}]}));
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(chat[0]["messages"][1]["role"], "assistant");
        assert_eq!(read("pubmedqa-test-abstracts.jsonl").len(), 500);
    }
}
