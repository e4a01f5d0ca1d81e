//! Multiple-choice tasks scored by log-likelihood, as lm-evaluation-harness scores them: each choice is a
//! continuation of the prompt, and the model picks the one it gives the highest log-probability (`acc`), or
//! the highest per byte (`acc_norm`). Accuracy comes with a bootstrap 95% interval and the chance level.
//!
//! Scoring runs the inference engine ([`strata_engine::CpuModel`]) with the weight type it serves with:
//! the prompt once, then each choice after it in the KV cache, rolled back between choices.
//!
//! Two prompt forms, as lm-evaluation-harness has them: plain (`Context: …\nQuestion: …\nAnswer:`, each
//! choice after a space), or with the model's chat template (`--apply-chat-template`): the same context and
//! question as the user's turn, rendered as the server renders a request, and each choice as the start of
//! the assistant's reply — the form the SFT pairs of `strata domain` teach.
//!
//! A task file is jsonl, one item per line: `question`, optional `context`, `choices` (at least two strings)
//! and `answer` (the index of the right choice, or its text).

use std::path::Path;

use strata_engine::{CpuCache, CpuModel};
use strata_tokenize::{ChatMessage, ChatTemplate, TokenizerDir};

use strata_train::{Result, TrainError};

#[derive(Debug, Clone, PartialEq)]
pub struct McItem {
    pub question: String,
    pub context: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

/// Reads a task file; a malformed line is an error naming the file, line and field (a task with holes
/// would report an accuracy over a different set than it claims).
///
/// # Errors
/// On an unreadable file or a malformed line.
pub fn read_task(path: &Path) -> Result<Vec<McItem>> {
    let text = std::fs::read_to_string(path).map_err(strata_train::io_err(path))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| TrainError::Data(format!("{}:{}: {what}", path.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let question = v["question"]
            .as_str()
            .ok_or_else(|| bad("field \"question\" must be a string"))?
            .to_string();
        let context = match &v["context"] {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            _ => return Err(bad("field \"context\" must be a string")),
        };
        let choices: Vec<String> = v["choices"]
            .as_array()
            .and_then(|a| a.iter().map(|c| c.as_str().map(String::from)).collect())
            .filter(|c: &Vec<String>| c.len() >= 2)
            .ok_or_else(|| bad("field \"choices\" must list at least two strings"))?;
        let answer = match &v["answer"] {
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n < choices.len()),
            serde_json::Value::String(s) => choices.iter().position(|c| c == s),
            _ => None,
        }
        .ok_or_else(|| bad("field \"answer\" must be a choice's index or text"))?;
        items.push(McItem {
            question,
            context,
            choices,
            answer,
        });
    }
    if items.is_empty() {
        return Err(TrainError::Data(format!("{}: no items", path.display())));
    }
    Ok(items)
}

/// The prompt of an item and the text that goes before each choice: plain, the user's turn and
/// "\nAnswer:" with a space before the choice; with a chat template, the user's turn rendered with the
/// assistant's prompt, the choice straight after it.
fn prompt(
    item: &McItem,
    context: &str,
    chat: Option<&ChatTemplate>,
) -> Result<(String, &'static str)> {
    let user = strata_domain::mc_user_turn(&item.question, context);
    let Some(tmpl) = chat else {
        return Ok((format!("{user}\nAnswer:"), " "));
    };
    let turn = ChatMessage {
        role: "user".into(),
        content: user,
    };
    let text = tmpl
        .render(&[turn], true)
        .map_err(|e| TrainError::Data(format!("chat template: {e}")))?;
    Ok((text, ""))
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct McScore {
    pub n: usize,
    pub acc: f64,
    /// Bootstrap 95% interval of `acc`.
    pub lo: f64,
    pub hi: f64,
    /// Accuracy when each choice's log-likelihood is divided by its length in bytes.
    pub acc_norm: f64,
    /// Expected accuracy of a uniform guess.
    pub chance: f64,
}

/// The 2.5th and 97.5th percentiles of the accuracy over `reps` resamples (with replacement, seeded) of
/// the items.
#[must_use]
pub fn bootstrap(correct: &[bool], reps: usize, seed: u64) -> (f64, f64) {
    use rand::{Rng, SeedableRng};
    let n = correct.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut accs: Vec<f64> = (0..reps)
        .map(|_| {
            let hits = (0..n).filter(|_| correct[rng.random_range(0..n)]).count();
            hits as f64 / n as f64
        })
        .collect();
    accs.sort_by(f64::total_cmp);
    let at = |q: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = ((q * (reps - 1) as f64).round() as usize).min(reps - 1);
        accs[i]
    };
    (at(0.025), at(0.975))
}

/// log softmax(logits)[id], in f64.
pub(crate) fn log_softmax_at(logits: &[f32], id: u32) -> f64 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = logits.iter().map(|&v| f64::from(v - m).exp()).sum();
    f64::from(logits[id as usize] - m) - s.ln()
}

/// Log-likelihood of each choice after the item's prompt (plain, or with `chat`'s template). A context too
/// long for the model's window is cut from its start (the question and answer are kept).
///
/// # Errors
/// On a tokenizer, template or engine failure, or a question that does not fit the window even without
/// context.
pub fn choice_logprobs(
    model: &CpuModel,
    td: &TokenizerDir,
    cache: &mut CpuCache,
    item: &McItem,
    chat: Option<&ChatTemplate>,
) -> Result<Vec<f64>> {
    let enc = |s: &str, special: bool| -> Result<Vec<u32>> {
        Ok(td
            .tokenizer
            .encode(s, special)
            .map_err(|e| TrainError::Data(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    };
    let (text, before) = prompt(item, &item.context, chat)?;
    let choices: Vec<Vec<u32>> = item
        .choices
        .iter()
        .map(|c| enc(&format!("{before}{c}"), false))
        .collect::<Result<_>>()?;
    let longest = choices.iter().map(Vec::len).max().unwrap_or(0);
    let room = cache.capacity().saturating_sub(longest);
    let mut context: &str = &item.context;
    // a plain prompt takes the tokenizer's special tokens (BOS) as lm-eval's do; a rendered chat carries what its
    // template writes, encoded as serving and SFT encode it
    let special = chat.is_none();
    let mut ids = enc(&text, special)?;
    while ids.len() > room {
        if context.is_empty() {
            return Err(TrainError::Data(format!(
                "question of {} tokens does not fit the model's window of {}",
                ids.len(),
                cache.capacity()
            )));
        }
        // drop the first quarter of what is left of the context (at a char boundary) and try again
        let cut = context
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= context.len() / 4)
            .unwrap_or(context.len());
        context = &context[cut.max(1).min(context.len())..];
        ids = enc(&prompt(item, context, chat)?.0, special)?;
    }
    cache.reset();
    let last = model.forward(&ids, cache, false)?;
    let base = cache.len();
    let mut out = Vec::with_capacity(choices.len());
    for c in &choices {
        let Some((&first, rest)) = c.split_first() else {
            out.push(f64::NEG_INFINITY);
            continue;
        };
        let mut lp = log_softmax_at(&last, first);
        if !rest.is_empty() {
            let v = model.config().vocab_size;
            let all = model.forward(&c[..c.len() - 1], cache, true)?;
            for (row, &next) in all.chunks_exact(v).zip(rest) {
                lp += log_softmax_at(row, next);
            }
            cache.truncate(base);
        }
        out.push(lp);
    }
    Ok(out)
}

/// Scores every item (plain prompts, or with `chat`'s template); `progress` is called after each with
/// (done, total).
///
/// # Errors
/// As [`choice_logprobs`].
pub fn score(
    model: &CpuModel,
    td: &TokenizerDir,
    items: &[McItem],
    chat: Option<&ChatTemplate>,
    progress: &dyn Fn(usize, usize),
) -> Result<McScore> {
    let mut cache = CpuCache::new(model, model.config().max_position_embeddings);
    let mut correct = Vec::with_capacity(items.len());
    let mut correct_norm = 0usize;
    for (i, item) in items.iter().enumerate() {
        let lps = choice_logprobs(model, td, &mut cache, item, chat)?;
        let argmax = |f: &dyn Fn(usize) -> f64| {
            (0..lps.len())
                .max_by(|&a, &b| f(a).total_cmp(&f(b)).then(b.cmp(&a)))
                .unwrap_or(0)
        };
        correct.push(argmax(&|k| lps[k]) == item.answer);
        let norm = |k: usize| lps[k] / item.choices[k].len().max(1) as f64;
        if argmax(&norm) == item.answer {
            correct_norm += 1;
        }
        progress(i + 1, items.len());
    }
    let n = items.len();
    let acc = correct.iter().filter(|&&c| c).count() as f64 / n as f64;
    let (lo, hi) = bootstrap(&correct, 1000, 0);
    let chance = items
        .iter()
        .map(|it| 1.0 / it.choices.len() as f64)
        .sum::<f64>()
        / n as f64;
    Ok(McScore {
        n,
        acc,
        lo,
        hi,
        acc_norm: correct_norm as f64 / n as f64,
        chance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_by_hand_and_around_the_mean() {
        // all right or all wrong: no spread
        assert_eq!(bootstrap(&[true; 50], 200, 1), (1.0, 1.0));
        assert_eq!(bootstrap(&[false; 50], 200, 1), (0.0, 0.0));
        // 60 of 100: the normal approximation gives 0.6 ± 1.96·√(0.24/100) = [0.504, 0.696]
        let c: Vec<bool> = (0..100).map(|i| i < 60).collect();
        let (lo, hi) = bootstrap(&c, 2000, 7);
        assert!(
            (lo - 0.504).abs() < 0.03 && (hi - 0.696).abs() < 0.03,
            "{lo} {hi}"
        );
        assert_eq!(bootstrap(&c, 2000, 7), (lo, hi), "seeded");
    }

    #[test]
    fn task_files_are_read_and_bad_lines_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.jsonl");
        std::fs::write(
            &p,
            concat!(
                r#"{"question": "Is it?", "context": "Some text.", "choices": ["yes", "no", "maybe"], "answer": "no"}"#,
                "\n\n",
                r#"{"question": "Which?", "choices": ["a", "b"], "answer": 1}"#,
                "\n"
            ),
        )
        .unwrap();
        let items = read_task(&p).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].answer, items[1].answer), (1, 1));
        assert_eq!(items[1].context, "");
        assert_eq!(
            prompt(&items[0], "Some text.", None).unwrap(),
            (
                "Context: Some text.\nQuestion: Is it?\nAnswer:".to_string(),
                " "
            )
        );
        // through ChatML: the user's turn rendered with the assistant's prompt, the choice straight after
        let chatml = ChatTemplate::new(strata_tokenize::CHATML_TEMPLATE).unwrap();
        assert_eq!(
            prompt(&items[1], "", Some(&chatml)).unwrap(),
            (
                "<|im_start|>user\nQuestion: Which?<|im_end|>\n<|im_start|>assistant\n".to_string(),
                ""
            )
        );
        for (line, needle) in [
            (
                r#"{"question": "q", "choices": ["a"], "answer": 0}"#,
                "\"choices\"",
            ),
            (
                r#"{"question": "q", "choices": ["a", "b"], "answer": 2}"#,
                "\"answer\"",
            ),
            (
                r#"{"question": "q", "choices": ["a", "b"], "answer": "c"}"#,
                "\"answer\"",
            ),
            (r#"{"choices": ["a", "b"], "answer": 0}"#, "\"question\""),
            ("{nope", "not JSON"),
        ] {
            std::fs::write(&p, format!("{{\"question\": \"ok\", \"choices\": [\"a\", \"b\"], \"answer\": 0}}\n{line}\n"))
                .unwrap();
            let e = read_task(&p).unwrap_err().to_string();
            assert!(e.contains("t.jsonl:2") && e.contains(needle), "{line}: {e}");
        }
    }
}
