//! Supervised fine-tuning data: chat records (`{"messages": [{"role", "content"}, …]}`) rendered with the
//! model's own chat template (the one `import` stored in `tokenizer_config.json`), with the loss on the
//! assistant turns only — each assistant message's rendered text and its end-of-turn — as LLaMA-Factory
//! and TRL train by default.
//!
//! In the token shards, an id that takes no part in the loss (system and user turns, the template's
//! prompt for the assistant, padding) carries the [`NO_LOSS`] bit; the loader strips it from inputs and
//! turns those targets into the ignore index. SFT shards are always written 4 bytes per id.
//!
//! Examples are packed one after another (`pack`; training windows then start anywhere) or each padded (or
//! cut) to `max_len + 1` tokens, so that a training row of `seq_len = max_len` is exactly one example.

use serde::{Deserialize, Serialize};
use strata_records::StepReport;
use strata_store::{Kind, Manifest, Store};

use crate::{ChatMessage, ChatTemplate, Result, TokenizeError, TokenizerDir};

/// The bit marking an id whose position takes no part in the loss.
pub const NO_LOSS: u32 = 1 << 31;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatEncodeConfig {
    #[serde(default = "crate::bpe::default_val_fraction")]
    pub val_fraction: f64,
    /// Pack examples back to back (true) or give each its own row of `max_len + 1` tokens.
    #[serde(default)]
    pub pack: bool,
    /// Tokens per example row when not packing (train with `--seq-len` equal to it); longer examples are
    /// cut (their end is lost), shorter ones padded.
    #[serde(default = "d_max_len")]
    pub max_len: usize,
}

fn d_max_len() -> usize {
    512
}

impl Default for ChatEncodeConfig {
    fn default() -> Self {
        Self {
            val_fraction: crate::bpe::default_val_fraction(),
            pack: false,
            max_len: d_max_len(),
        }
    }
}

/// Renders `messages` with `tmpl` and encodes them: ids with [`NO_LOSS`] on every token outside an
/// assistant turn.
///
/// # Errors
/// When there is no assistant turn, the template fails to render, or it renders a conversation so that
/// its prefix changes as turns are added (the spans could not be found).
pub fn encode_chat(
    td: &TokenizerDir,
    tmpl: &ChatTemplate,
    messages: &[ChatMessage],
) -> Result<Vec<u32>> {
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(TokenizeError::Template(
            "no assistant turn to train on".into(),
        ));
    }
    let full = tmpl.render(messages, false)?;
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = tmpl.render(&messages[..i], true)?;
        let through = tmpl.render(&messages[..=i], false)?;
        if !full.starts_with(&through) || !through.starts_with(&before) {
            return Err(TokenizeError::Template(format!(
                "the template's rendering of turn {i} is not a prefix of the whole conversation's"
            )));
        }
        spans.push((before.len(), through.len()));
    }
    // without the tokenizer's own special tokens, as transformers' `apply_chat_template` encodes and as serving
    // and `generate --chat` do: a template that writes `{{ bos_token }}` itself (Gemma's, Llama 3's) would
    // otherwise start every training example with two BOS the model never sees when served
    let enc = td
        .tokenizer
        .encode(full.as_str(), false)
        .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
    Ok(enc
        .get_ids()
        .iter()
        .zip(enc.get_offsets())
        .map(|(&id, &(s, e))| {
            let trained = e > s && spans.iter().any(|&(a, b)| s >= a && s < b);
            if trained {
                id
            } else {
                id | NO_LOSS
            }
        })
        .collect())
}

fn messages_of(doc: &strata_records::Doc) -> std::result::Result<Vec<ChatMessage>, String> {
    let v = doc.meta.get("messages").ok_or(
        "no \"messages\" field (a chat record is {\"messages\": [{\"role\", \"content\"}, …]})",
    )?;
    serde_json::from_value(v.clone()).map_err(|e| format!("messages: {e}"))
}

/// Appends one quarantine record (jsonl: the document's id and the reason).
fn quarantine_line(out: &mut String, id: &str, reason: &str) {
    out.push_str(&serde_json::json!({"id": id, "reason": reason}).to_string());
    out.push('\n');
}

/// Encodes the chat records of dataset `dataset` for SFT with the chat template and tokenizer of
/// `tokenizer` into token artifact `name`. A record without messages, without an assistant turn, or that
/// the template cannot render is quarantined (`quarantine.jsonl` in the artifact, with the reason) and
/// counted; the others are encoded.
///
/// # Errors
/// When an input is missing, nothing could be encoded, or on an I/O failure.
pub fn encode_chat_dataset(
    store: &Store,
    name: &str,
    dataset: &str,
    tokenizer: &str,
    cfg: &ChatEncodeConfig,
    created_by: &str,
) -> Result<StepReport> {
    let inputs = vec![
        store.input_ref(Kind::Dataset, dataset)?,
        store.input_ref(Kind::Tokenizer, tokenizer)?,
    ];
    let config = serde_json::json!({"chat": cfg});
    let manifest = Manifest::new(Kind::Tokens, name, created_by).with_config(inputs, config);
    if let Some(existing) = store.up_to_date(Kind::Tokens, name, &manifest.fingerprint) {
        return Ok(StepReport {
            manifest: existing,
            skipped: true,
        });
    }
    let tdir = store.dir(Kind::Tokenizer, tokenizer);
    let td = TokenizerDir::open(&tdir)?;
    let tmpl = ChatTemplate::from_tokenizer_config(&tdir.join("tokenizer_config.json"))?;
    let pad = td.special.pad | NO_LOSS;
    let row = cfg.max_len + 1;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let (mut n_train, mut n_val, mut cut, mut trained_tokens) = (0usize, 0usize, 0usize, 0usize);
    let mut quarantine = String::new();
    for doc in strata_records::read_dataset(&store.dir(Kind::Dataset, dataset))? {
        let doc = doc?;
        let ids = messages_of(&doc)
            .map_err(TokenizeError::Template)
            .and_then(|m| encode_chat(&td, &tmpl, &m));
        let mut ids = match ids {
            Ok(ids) => ids,
            Err(e) => {
                quarantine_line(&mut quarantine, &doc.id, &e.to_string());
                continue;
            }
        };
        if !cfg.pack {
            if ids.len() > row {
                ids.truncate(row);
                // targets are ids[1..]: an example whose assistant tokens all fell past the row is lost
                if ids[1..].iter().all(|&i| i & NO_LOSS != 0) {
                    let why = format!(
                        "no assistant token within max_len {}: raise --max-len or use --pack",
                        cfg.max_len
                    );
                    quarantine_line(&mut quarantine, &doc.id, &why);
                    continue;
                }
                cut += 1;
            }
            ids.resize(row, pad);
        }
        trained_tokens += ids.iter().filter(|&&i| i & NO_LOSS == 0).count();
        if strata_records::split::is_heldout(&doc.text, cfg.val_fraction) {
            val.extend_from_slice(&ids);
            n_val += 1;
        } else {
            train.extend_from_slice(&ids);
            n_train += 1;
        }
    }
    if n_train == 0 {
        return Err(TokenizeError::Template(format!(
            "dataset {dataset:?}: no chat record could be encoded for training (see the reasons: {})",
            quarantine.lines().next().unwrap_or("no records")
        )));
    }
    let staging = store.staging(Kind::Tokens, name)?;
    // 4 bytes per id whatever the vocabulary: the NO_LOSS bit needs the top bit
    let vocab = td.tokenizer.get_vocab_size(true);
    crate::shards::write_tokens_width(&staging.join("train-00000.bin"), &train, vocab, 4)?;
    crate::shards::write_tokens_width(&staging.join("val-00000.bin"), &val, vocab, 4)?;
    if !quarantine.is_empty() {
        let q = staging.join("quarantine.jsonl");
        strata_store::write_atomic(&q, quarantine.as_bytes())?;
    }
    let mut manifest = manifest;
    let c = &mut manifest.counts;
    for (k, v) in [
        ("train_tokens", train.len()),
        ("train_shards", 1),
        ("val_tokens", val.len()),
        ("train_documents", n_train),
        ("val_documents", n_val),
        ("quarantined", quarantine.lines().count()),
        ("cut", cut),
        ("loss_tokens", trained_tokens),
        ("vocab_size", td.tokenizer.get_vocab_size(true)),
        ("eos_id", td.special.eos as usize),
    ] {
        c.insert(k.into(), v.into());
    }
    if !cfg.pack {
        c.insert("example_len".into(), row.into());
    }
    c.insert("tokenizer_sha256".into(), td.sha256.clone().into());
    let manifest = store.publish(&staging, manifest)?;
    Ok(StepReport {
        manifest,
        skipped: false,
    })
}

/// The id of a shard entry and whether its position counts toward the loss.
#[must_use]
pub fn split_flag(id: u32) -> (u32, bool) {
    (id & !NO_LOSS, id & NO_LOSS == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A word-level tokenizer that knows ChatML's markers, written into `dir`.
    fn tokenizer_dir(dir: &Path) -> TokenizerDir {
        let words = [
            "<|im_start|>",
            "<|im_end|>",
            "user",
            "assistant",
            "system",
            "hi",
            "hello",
            "there",
            "be",
            "brief",
        ];
        let vocab: serde_json::Map<String, serde_json::Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| ((*w).to_string(), i.into()))
            .collect();
        let added: Vec<serde_json::Value> = words[..2]
            .iter()
            .enumerate()
            .map(|(i, w)| {
                serde_json::json!({"id": i, "content": w, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let tok = serde_json::json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|im_end|>"}});
        std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"eos_token": "<|im_end|>"}"#,
        )
        .unwrap();
        TokenizerDir::open(dir).unwrap()
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn only_assistant_turns_take_the_loss() {
        let d = tempfile::tempdir().unwrap();
        let td = tokenizer_dir(d.path());
        let tmpl = ChatTemplate::new(crate::chat::CHATML_TEMPLATE).unwrap();
        let conv = [
            msg("system", "be brief"),
            msg("user", "hi"),
            msg("assistant", "hello there"),
            msg("user", "hi"),
            msg("assistant", "hi"),
        ];
        let ids = encode_chat(&td, &tmpl, &conv).unwrap();
        // by hand: <|im_start|> system be brief <|im_end|> <|im_start|> user hi <|im_end|>
        // <|im_start|> assistant | hello there <|im_end|> | <|im_start|> user hi <|im_end|>
        // <|im_start|> assistant | hi <|im_end|> |   (| … | trained)
        let (s, e, user, asst, hi, hello, there) = (0, 1, 2, 3, 5, 6, 7);
        let want = [
            (s, false),
            (4, false),
            (8, false),
            (9, false),
            (e, false),
            (s, false),
            (user, false),
            (hi, false),
            (e, false),
            (s, false),
            (asst, false),
            (hello, true),
            (there, true),
            (e, true),
            (s, false),
            (user, false),
            (hi, false),
            (e, false),
            (s, false),
            (asst, false),
            (hi, true),
            (e, true),
        ];
        let got: Vec<(u32, bool)> = ids.iter().map(|&i| split_flag(i)).collect();
        assert_eq!(got, want);
        // bad records are refused with the reason
        let e = encode_chat(&td, &tmpl, &[msg("user", "hi")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no assistant turn"), "{e}");
        let raising = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
        let e = encode_chat(&td, &raising, &conv).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }

    /// A tokenizer whose post-processor adds BOS (as Gemma's and Llama's do) and a template that writes
    /// `{{ bos_token }}` itself: one BOS, as serving encodes the same conversation.
    #[test]
    fn a_template_that_writes_bos_gets_one_bos() {
        let d = tempfile::tempdir().unwrap();
        tokenizer_dir(d.path());
        let path = d.path().join("tokenizer.json");
        let mut tok: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        // "system" (id 4) plays BOS
        tok["post_processor"] = serde_json::json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "system", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"system": {"id": "system", "ids": [4], "tokens": ["system"]}}});
        std::fs::write(&path, tok.to_string()).unwrap();
        let td = TokenizerDir::open(d.path()).unwrap();
        // the post-processor is live: encoding with special tokens prepends it
        let with = td.tokenizer.encode("hi", true).unwrap();
        assert_eq!(with.get_ids(), [4, 5]);
        let tmpl = ChatTemplate::new(&format!(
            "{{{{ bos_token }}}}{}",
            crate::chat::CHATML_TEMPLATE
        ))
        .unwrap()
        .with_special_tokens("system", "<|im_end|>");
        let ids = encode_chat(&td, &tmpl, &[msg("user", "hi"), msg("assistant", "hello")]).unwrap();
        let got: Vec<u32> = ids.iter().map(|&i| split_flag(i).0).collect();
        // system | <|im_start|> user hi <|im_end|> <|im_start|> assistant hello <|im_end|>
        assert_eq!(got, [4, 0, 2, 5, 1, 0, 3, 6, 1]);
        let rendered = tmpl.render(&[msg("user", "hi")], true).unwrap();
        let served = td.tokenizer.encode(rendered.as_str(), false).unwrap();
        assert_eq!(served.get_ids(), &got[..7]);
    }
}
