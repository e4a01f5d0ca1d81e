//! Byte-level BPE training: GPT-2/Llama-3 style (no normaliser, byte-level pre-tokenizer without a prefix
//! space, byte-level decoder), with the special tokens of the ChatML template. The result is an ordinary
//! Hugging Face `tokenizer.json` plus a `tokenizer_config.json` holding the chat template.

use serde::{Deserialize, Serialize};
use strata_store::{Kind, Manifest, Store};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerImpl,
};

use crate::{Result, TokenizeError, CHATML_TEMPLATE};
use strata_records::StepReport;

/// `<|endoftext|>` ends every document (and is BOS/EOS/PAD); the other two delimit chat turns.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    pub vocab_size: usize,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// Fraction of documents held out (never seen by the tokenizer or the model).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
}

fn default_min_frequency() -> u64 {
    2
}
#[must_use]
pub fn default_val_fraction() -> f64 {
    strata_records::split::DEFAULT_VAL_FRACTION
}

/// Trains a tokenizer on the training split of `datasets`, saved as tokenizer artifact `name`.
///
/// # Errors
/// When a dataset is missing or empty, or training fails.
pub fn train_tokenizer(
    store: &Store,
    name: &str,
    datasets: &[String],
    cfg: &TokenizerConfig,
    created_by: &str,
) -> Result<StepReport> {
    let mut inputs = Vec::new();
    for d in datasets {
        inputs.push(store.input_ref(Kind::Dataset, d)?);
    }
    let manifest = Manifest::new(Kind::Tokenizer, name, created_by)
        .with_config(inputs, serde_json::to_value(cfg).unwrap_or_default());
    if let Some(existing) = store.up_to_date(Kind::Tokenizer, name, &manifest.fingerprint) {
        return Ok(StepReport {
            manifest: existing,
            skipped: true,
        });
    }
    let mut texts = Vec::new();
    for d in datasets {
        for doc in strata_records::read_dataset(&store.dir(Kind::Dataset, d))? {
            let doc = doc?;
            if !strata_records::split::is_heldout(&doc.text, cfg.val_fraction) {
                texts.push(doc.text);
            }
        }
    }
    if texts.is_empty() {
        return Err(TokenizeError::Empty(datasets.join(",")));
    }
    let tokenizer = train_bpe(&texts, cfg)?;
    let staging = store.staging(Kind::Tokenizer, name)?;
    write_tokenizer_files(&tokenizer, &staging)?;
    let mut manifest = manifest;
    manifest
        .counts
        .insert("vocab_size".into(), tokenizer.get_vocab_size(true).into());
    manifest
        .counts
        .insert("training_documents".into(), texts.len().into());
    let manifest = store.publish(&staging, manifest)?;
    Ok(StepReport {
        manifest,
        skipped: false,
    })
}

pub(crate) fn train_bpe(texts: &[String], cfg: &TokenizerConfig) -> Result<tokenizers::Tokenizer> {
    let err = |e: tokenizers::Error| TokenizeError::Tokenizer(e.to_string());
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tk: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(BPE::default());
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    tk.train(&mut trainer, texts.iter().map(String::as_str))
        .map_err(err)?;
    let mut tokenizer = tokenizers::Tokenizer::from(tk);
    tokenizer
        .add_special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect::<Vec<_>>(),
        )
        .map_err(err)?;
    Ok(tokenizer)
}

/// Writes `tokenizer.json` and `tokenizer_config.json` (HF convention, with the ChatML template) into `dir`.
///
/// # Errors
/// On an I/O failure.
pub fn write_tokenizer_files(
    tokenizer: &tokenizers::Tokenizer,
    dir: &std::path::Path,
) -> Result<()> {
    let json = tokenizer
        .to_string(true)
        .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
    strata_store::write_atomic(dir.join("tokenizer.json"), json.as_bytes())?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[0],
        "pad_token": SPECIAL_TOKENS[0],
        "unk_token": null,
        "add_bos_token": false,
        "add_prefix_space": false,
        "model_max_length": 1_000_000,
        "chat_template": CHATML_TEMPLATE,
    });
    strata_store::write_json_atomic(dir.join("tokenizer_config.json"), &config)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_round_trips_and_keeps_special_tokens_whole() {
        let texts: Vec<String> = (0..200)
            .map(|i| format!("The liver measures {i} cm. No focal lesion is seen in the liver. 肝脏大小正常。"))
            .collect();
        let tk = train_bpe(
            &texts,
            &TokenizerConfig {
                vocab_size: 400,
                min_frequency: 2,
                val_fraction: 0.0,
            },
        )
        .unwrap();
        assert_eq!(tk.token_to_id("<|endoftext|>"), Some(0));
        assert_eq!(tk.token_to_id("<|im_start|>"), Some(1));
        let s = "The spleen: 12.5 cm 😀 超声\n\n  tabs\t!";
        let enc = tk.encode(s, false).unwrap();
        assert_eq!(tk.decode(enc.get_ids(), false).unwrap(), s);
        let chat = tk.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
        assert_eq!(chat.get_ids()[0], 1);
        assert!(chat.get_ids().contains(&2));
        // merges were learned: "liver" is far fewer tokens than its 5 bytes
        assert!(tk.encode(" liver", false).unwrap().get_ids().len() <= 2);
    }
}
