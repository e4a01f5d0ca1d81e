//! The special ids a tokenizer folder declares: end of document (the `eos_token` of
//! `tokenizer_config.json`, else `eos_token_id` of a model's `config.json`, else `<|endoftext|>`), padding
//! (`pad_token`, else end of document) and beginning of sequence. Nothing is assumed from the vocabulary's
//! size or from one model family's spelling.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{load_tokenizer, Result, TokenizeError, SPECIAL_TOKENS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    /// Appended after every document when encoding; a stop token when generating.
    pub eos: u32,
    pub pad: u32,
    pub bos: Option<u32>,
}

/// A tokenizer folder (a tokenizer artifact or a model folder): the tokenizer, its special ids, and the
/// sha256 of its `tokenizer.json`, which names the vocabulary exactly (two tokenizers of the same size
/// are not the same tokenizer).
pub struct TokenizerDir {
    pub dir: PathBuf,
    pub tokenizer: tokenizers::Tokenizer,
    pub special: SpecialIds,
    pub sha256: String,
}

impl TokenizerDir {
    /// # Errors
    /// When `tokenizer.json` is missing or invalid, or no end-of-document token can be found.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let tokenizer = load_tokenizer(&path)?;
        let sha256 = strata_store::sha256_file(&path)?;
        let special = special_ids(dir, &tokenizer)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            special,
            sha256,
        })
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(crate::io_err(path))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| TokenizeError::Tokenizer(format!("{}: {e}", path.display())))
}

/// A token named in `tokenizer_config.json`: a string, or `{"content": …}` as `AddedToken` is saved.
fn named_token(tc: Option<&Value>, key: &str) -> Option<String> {
    match tc?.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

/// The first id of `config.json`'s `key` (a number or a list of numbers).
fn config_id(cfg: Option<&Value>, key: &str) -> Option<u32> {
    let v = cfg?.get(key)?;
    let n = v.as_u64().or_else(|| v.as_array()?.first()?.as_u64())?;
    u32::try_from(n).ok()
}

/// # Errors
/// When a config file is malformed, a named token is not in the vocabulary, or there is no end-of-document
/// token at all.
pub fn special_ids(dir: &Path, tk: &tokenizers::Tokenizer) -> Result<SpecialIds> {
    let tc_path = dir.join("tokenizer_config.json");
    let tc = read_json(&tc_path)?;
    let cfg = read_json(&dir.join("config.json"))?;
    let lookup = |key: &str| -> Result<Option<u32>> {
        match named_token(tc.as_ref(), key) {
            None => Ok(None),
            Some(t) => tk.token_to_id(&t).map(Some).ok_or_else(|| {
                TokenizeError::Tokenizer(format!(
                    "{}: {key} {t:?} is not in the vocabulary",
                    tc_path.display()
                ))
            }),
        }
    };
    let eos = lookup("eos_token")?
        .or_else(|| config_id(cfg.as_ref(), "eos_token_id"))
        .or_else(|| tk.token_to_id(SPECIAL_TOKENS[0]))
        .ok_or_else(|| {
            TokenizeError::Tokenizer(format!(
                "{}: no end-of-document token (no eos_token in tokenizer_config.json, no eos_token_id in config.json, no {})",
                dir.display(),
                SPECIAL_TOKENS[0]
            ))
        })?;
    let pad = lookup("pad_token")?
        .or_else(|| config_id(cfg.as_ref(), "pad_token_id"))
        .unwrap_or(eos);
    let bos = lookup("bos_token")?.or_else(|| config_id(cfg.as_ref(), "bos_token_id"));
    Ok(SpecialIds { eos, pad, bos })
}

/// Every id of `config.json`'s / `generation_config.json`'s `key` (a number or a list of numbers).
fn config_ids(cfg: Option<&Value>, key: &str) -> Vec<u32> {
    let Some(v) = cfg.and_then(|c| c.get(key)) else {
        return Vec::new();
    };
    let list = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
    list.iter()
        .filter_map(|x| u32::try_from(x.as_u64()?).ok())
        .collect()
}

/// The ids that end a generation: every `eos_token_id` of `generation_config.json` and `config.json` (Llama 3
/// lists `<|eot_id|>` and `<|end_of_text|>`), `tokenizer_config.json`'s `eos_token`, and the end-of-text and
/// end-of-turn tokens Strata's own tokenizers use (`<|endoftext|>`, `<|im_end|>`) when the vocabulary has
/// them. Sorted, without repeats.
///
/// # Errors
/// When a config file is malformed or the named `eos_token` is not in the vocabulary.
pub fn stop_ids(dir: &Path, tk: &tokenizers::Tokenizer) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for f in ["generation_config.json", "config.json"] {
        ids.extend(config_ids(
            read_json(&dir.join(f))?.as_ref(),
            "eos_token_id",
        ));
    }
    let tc_path = dir.join("tokenizer_config.json");
    if let Some(t) = named_token(read_json(&tc_path)?.as_ref(), "eos_token") {
        ids.push(tk.token_to_id(&t).ok_or_else(|| {
            TokenizeError::Tokenizer(format!(
                "{}: eos_token {t:?} is not in the vocabulary",
                tc_path.display()
            ))
        })?);
    }
    ids.extend(SPECIAL_TOKENS.iter().filter_map(|t| tk.token_to_id(t)));
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(dir: &Path, words: &[&str]) -> tokenizers::Tokenizer {
        let vocab: serde_json::Map<String, Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| ((*w).to_string(), serde_json::json!(i)))
            .collect();
        let tk = serde_json::json!({"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": words[0]}});
        std::fs::write(dir.join("tokenizer.json"), tk.to_string()).unwrap();
        load_tokenizer(&dir.join("tokenizer.json")).unwrap()
    }

    #[test]
    fn ids_come_from_the_tokenizer_config_then_the_model_config() {
        let d = tempfile::tempdir().unwrap();
        let tk = tokenizer(d.path(), &["<unk>", "<s>", "</s>", "<|im_end|>", "<pad>"]);
        // nothing declared and no <|endoftext|>: a clear error, not id 0
        let e = special_ids(d.path(), &tk).unwrap_err().to_string();
        assert!(e.contains("no end-of-document token"), "{e}");
        // config.json only (a list of eos ids, as Llama 3 writes them)
        std::fs::write(
            d.path().join("config.json"),
            r#"{"eos_token_id": [2, 3], "bos_token_id": 1}"#,
        )
        .unwrap();
        let s = special_ids(d.path(), &tk).unwrap();
        assert_eq!(
            s,
            SpecialIds {
                eos: 2,
                pad: 2,
                bos: Some(1)
            }
        );
        // the tokenizer config wins, in both spellings of a token
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            r#"{"eos_token": "<|im_end|>", "pad_token": {"content": "<pad>"}}"#,
        )
        .unwrap();
        let s = special_ids(d.path(), &tk).unwrap();
        assert_eq!(
            s,
            SpecialIds {
                eos: 3,
                pad: 4,
                bos: Some(1)
            }
        );
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            r#"{"eos_token": "<eot>"}"#,
        )
        .unwrap();
        let e = special_ids(d.path(), &tk).unwrap_err().to_string();
        assert!(
            e.contains("eos_token \"<eot>\" is not in the vocabulary"),
            "{e}"
        );
    }

    #[test]
    fn stop_ids_gather_every_declared_end() {
        let d = tempfile::tempdir().unwrap();
        let tk = tokenizer(
            d.path(),
            &["<unk>", "<s>", "</s>", "<|eot_id|>", "<|im_end|>", "x"],
        );
        // <|im_end|> is always a stop when the vocabulary has it
        assert_eq!(stop_ids(d.path(), &tk).unwrap(), [4]);
        std::fs::write(d.path().join("config.json"), r#"{"eos_token_id": 2}"#).unwrap();
        std::fs::write(
            d.path().join("generation_config.json"),
            r#"{"eos_token_id": [3, 2]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "x"}}"#,
        )
        .unwrap();
        assert_eq!(stop_ids(d.path(), &tk).unwrap(), [2, 3, 4, 5]);
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            r#"{"eos_token": "</nope>"}"#,
        )
        .unwrap();
        let e = stop_ids(d.path(), &tk).unwrap_err().to_string();
        assert!(
            e.contains("</nope>") && e.contains("tokenizer_config.json"),
            "{e}"
        );
    }
}
