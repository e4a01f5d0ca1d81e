//! A llama.cpp GGUF vocabulary turned into a Hugging Face `tokenizer.json` and `tokenizer_config.json`:
//! byte-level BPE with the pre-tokenizer named by `tokenizer.ggml.pre`, or a SentencePiece vocabulary
//! (merges rebuilt from the scores, byte fallback, the "▁" prefix), BOS added where llama.cpp adds it, and
//! the chat template kept.
//!
//! The model crate reads the GGUF file and hands over its `tokenizer.*` metadata as JSON values, so this
//! crate needs no GGUF reader and the model crate knows nothing of tokenizers.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::{Result, TokenizeError};

/// The `tokenizer.*` metadata of one GGUF file (`path` names it in errors).
pub struct GgufVocab<'a> {
    pub path: &'a Path,
    pub meta: &'a Map<String, Value>,
    /// The model's context, written as `model_max_length`.
    pub max_length: usize,
}

impl GgufVocab<'_> {
    fn bad(&self, reason: impl std::fmt::Display) -> TokenizeError {
        TokenizeError::Tokenizer(format!("{}: {reason}", self.path.display()))
    }
    fn get(&self, key: &str) -> Result<&Value> {
        self.meta
            .get(key)
            .ok_or_else(|| self.bad(format!("metadata key {key:?} is missing")))
    }
    fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| self.bad(format!("metadata key {key:?} is not a string")))
    }
    fn array(&self, key: &str) -> Result<&Vec<Value>> {
        self.get(key)?
            .as_array()
            .ok_or_else(|| self.bad(format!("metadata key {key:?} is not an array")))
    }
    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.bad(format!("{key}: not an array of strings")))
            })
            .collect()
    }
    fn opt_u32(&self, key: &str) -> Option<u32> {
        self.meta
            .get(key)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    }
    fn opt_bool(&self, key: &str) -> Option<bool> {
        self.meta.get(key).and_then(Value::as_bool)
    }
}

/// The split regex of Llama 3's tokenizer (`tokenizer.ggml.pre` "llama-bpe"): digits in runs of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The split regex of Qwen2's tokenizer (`tokenizer.ggml.pre` "qwen2"): every digit alone.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The normaliser and pre-tokenizer of a GGUF `tokenizer.ggml.pre` name, as the model family's own
/// `tokenizer.json` has them on the Hugging Face Hub.
fn pre_tokenizer(v: &GgufVocab<'_>, pre: &str) -> Result<(Value, Value)> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let split = |regex: &str| {
        json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
            ]
        })
    };
    match pre {
        // GPT-2's regex after splitting digits one by one (StarCoder-family vocabularies, SmolLM)
        "smollm" | "starcoder" | "refact" | "codeshell" => Ok((
            Value::Null,
            json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]
            }),
        )),
        "gpt2" | "default" => Ok((Value::Null, byte_level)),
        "llama-bpe" | "llama3" => Ok((Value::Null, split(LLAMA3_SPLIT))),
        "qwen2" => Ok((json!({"type": "NFC"}), split(QWEN2_SPLIT))),
        other => Err(v.bad(format!("tokenizer pre-tokenizer {other:?} is not supported yet (supported: smollm, starcoder, refact, codeshell, gpt2, llama-bpe, qwen2)"))),
    }
}

/// BPE merges equivalent to a SentencePiece vocabulary's scores: every split of a piece into two pieces of
/// the vocabulary is a merge, ranked by the merged piece's score (highest first, then lowest id), which is
/// the order in which llama.cpp's SentencePiece tokenizer joins symbols. Byte (6), control (3) and unknown
/// (2) tokens take no part.
fn spm_merges(tokens: &[&str], scores: &[f32], types: &[i64]) -> Vec<(String, String)> {
    let usable = |i: usize| matches!(types.get(i), Some(1 | 4) | None);
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| usable(*i))
        .map(|(i, t)| (*t, i))
        .collect();
    let mut ranked: Vec<(f32, usize, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !usable(id) {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if ids.contains_key(l) && ids.contains_key(r) {
                ranked.push((score, id, l, r));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .map(|(_, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

/// Whether to add BOS, which token, and the HF post-processor that adds it. llama.cpp adds BOS when the file
/// says so, and by default for SentencePiece and Llama 3 vocabularies; HF does it in the tokenizer's
/// post-processor, which is what `encode(text, add_special_tokens=True)` applies.
fn bos_policy(
    v: &GgufVocab<'_>,
    tokens: &[&str],
    spm: bool,
    pre: &str,
) -> (bool, Option<(u32, String)>, Value) {
    let add_bos = v
        .opt_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(spm || matches!(pre, "llama-bpe" | "llama3"));
    let bos = v
        .opt_u32("tokenizer.ggml.bos_token_id")
        .and_then(|i| tokens.get(i as usize).map(|t| (i, (*t).to_string())));
    let post_processor = match (&bos, add_bos) {
        (Some((id, tok)), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok.as_str(): {"id": tok, "ids": [id], "tokens": [tok]}}
        }),
        _ => Value::Null,
    };
    (add_bos, bos, post_processor)
}

/// A SentencePiece vocabulary's decoder ("▁" back to spaces, bytes fused, the prefix space dropped) and its
/// unknown token.
fn spm_decoder(
    v: &GgufVocab<'_>,
    tokens: &[&str],
    types: &[i64],
    add_space_prefix: bool,
) -> (Value, Option<String>) {
    let unk = v
        .opt_u32("tokenizer.ggml.unknown_token_id")
        .and_then(|i| tokens.get(i as usize))
        .or_else(|| {
            tokens
                .iter()
                .zip(types)
                .find(|(_, ty)| **ty == 2)
                .map(|(t, _)| t)
        })
        .map(|t| (*t).to_string());
    let decoder = json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": usize::from(add_space_prefix), "stop": 0}
    ]});
    (decoder, unk)
}

/// Writes `tokenizer.json` and `tokenizer_config.json` for the GGUF vocabulary `v` into `out`.
///
/// # Errors
/// On a tokenizer model or pre-tokenizer Strata does not support, malformed metadata, or an I/O failure.
pub fn write_gguf_tokenizer(v: &GgufVocab<'_>, out: &Path) -> Result<()> {
    let model = v.string("tokenizer.ggml.model")?;
    let spm = model == "llama";
    if !spm && model != "gpt2" {
        return Err(v.bad(format!("tokenizer model {model:?} is not supported yet (supported: gpt2 byte-level BPE, llama SentencePiece BPE)")));
    }
    let tokens = v.strings("tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match v.meta.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter().map(|x| x.as_i64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let pre = v.string("tokenizer.ggml.pre").unwrap_or("default");
    let merges: Vec<(String, String)> = if spm {
        #[allow(clippy::cast_possible_truncation)]
        let scores: Vec<f32> = v
            .array("tokenizer.ggml.scores")?
            .iter()
            .map(|x| x.as_f64().unwrap_or(0.0) as f32)
            .collect();
        spm_merges(&tokens, &scores, &types)
    } else {
        v.strings("tokenizer.ggml.merges")?
            .iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').unwrap_or((m, ""));
                (a.to_string(), b.to_string())
            })
            .collect()
    };
    let add_space_prefix = v
        .opt_bool("tokenizer.ggml.add_space_prefix")
        .unwrap_or(true);
    let (normalizer, pre_tokenizer) = if spm {
        // SentencePiece: "▁" for every space, and one before the text (and after each special token, as
        // llama.cpp does and the legacy HF Llama normaliser does per segment)
        let mut steps =
            vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
        if add_space_prefix {
            steps.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
        }
        (
            json!({"type": "Sequence", "normalizers": steps}),
            Value::Null,
        )
    } else {
        pre_tokenizer(v, pre)?
    };
    let vocab: Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_string(), json!(i)))
        .collect();
    // unknown (2), control (3) and user-defined (4) tokens are matched whole before BPE, as llama.cpp does
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| matches!(ty, 2..=4))
        .map(|(i, (t, ty))| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": *ty == 4, "special": *ty != 4}))
        .collect();
    let (add_bos, bos, post_processor) = bos_policy(v, &tokens, spm, pre);
    let (decoder, unk) = if spm {
        spm_decoder(v, &tokens, &types, add_space_prefix)
    } else {
        let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
        (decoder, None)
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": spm, "byte_fallback": spm, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    strata_store::write_json_atomic(out.join("tokenizer.json"), &tokenizer)?;
    write_tokenizer_config(v, &tokens, add_bos && bos.is_some(), out)
}

/// `tokenizer_config.json`: the special tokens by name, BOS policy and the chat template.
fn write_tokenizer_config(
    v: &GgufVocab<'_>,
    tokens: &[&str],
    add_bos: bool,
    out: &Path,
) -> Result<()> {
    let token = |key: &str| {
        v.opt_u32(key)
            .and_then(|i| tokens.get(i as usize))
            .map(|t| (*t).to_string())
    };
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": add_bos,
        "model_max_length": v.max_length,
        "clean_up_tokenization_spaces": false,
    });
    if let Ok(t) = v.string("tokenizer.chat_template") {
        tc["chat_template"] = json!(t);
    } else if ["<start_of_turn>", "<end_of_turn>"]
        .iter()
        .all(|t| tokens.contains(t))
    {
        // a Gemma vocabulary without a template (llama.cpp's GGUFs of the base models): Gemma's turns
        tc["chat_template"] = json!(crate::chat::GEMMA_TEMPLATE);
    }
    strata_store::write_json_atomic(out.join("tokenizer_config.json"), &tc)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_merges_follow_scores_and_skip_byte_tokens() {
        // pieces: a b ab abc c <0x41>(byte); "abc" splits as ab+c (both usable) and a+bc (bc absent)
        let tokens = ["a", "b", "ab", "abc", "c", "<0x41>"];
        let scores = [0.0, 0.0, -1.0, -2.0, 0.0, 0.0];
        let types = [1, 1, 1, 1, 1, 6];
        let m = spm_merges(&tokens, &scores, &types);
        assert_eq!(m, vec![("a".into(), "b".into()), ("ab".into(), "c".into())]);
    }

    #[test]
    fn unsupported_model_is_named_with_the_file() {
        let meta: Map<String, Value> =
            serde_json::from_value(json!({"tokenizer.ggml.model": "bert"})).unwrap();
        let d = tempfile::tempdir().unwrap();
        let v = GgufVocab {
            path: Path::new("x.gguf"),
            meta: &meta,
            max_length: 8,
        };
        let e = write_gguf_tokenizer(&v, d.path()).unwrap_err().to_string();
        assert!(e.contains("x.gguf") && e.contains("\"bert\""), "{e}");
    }
}
