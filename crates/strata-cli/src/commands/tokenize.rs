//! `strata tokenize train|encode`.

use std::process::ExitCode;

use strata_store::Store;
use strata_tokenize::{encode_dataset, train_tokenizer, EncodeConfig, TokenizerConfig};

use crate::cli::TokenizeCommand;

pub fn run(store: &Store, c: &TokenizeCommand) -> anyhow::Result<ExitCode> {
    let r = match c {
        TokenizeCommand::Train {
            name,
            datasets,
            vocab_size,
        } => {
            let cfg = TokenizerConfig {
                vocab_size: *vocab_size,
                min_frequency: 2,
                val_fraction: strata_tokenize::default_val_fraction(),
            };
            train_tokenizer(store, name, datasets, &cfg, "strata tokenize train")?
        }
        TokenizeCommand::Encode {
            name,
            dataset,
            tokenizer,
            chat: true,
            pack,
            max_len,
        } => strata_tokenize::encode_chat_dataset(
            store,
            name,
            dataset,
            tokenizer,
            &strata_tokenize::ChatEncodeConfig {
                val_fraction: strata_tokenize::default_val_fraction(),
                pack: *pack,
                max_len: *max_len,
            },
            "strata tokenize encode --chat",
        )?,
        TokenizeCommand::Encode {
            name,
            dataset,
            tokenizer,
            ..
        } => encode_dataset(
            store,
            name,
            dataset,
            tokenizer,
            &EncodeConfig::default(),
            "strata tokenize encode",
        )?,
    };
    println!(
        "{} {}: {}{}",
        r.manifest.kind,
        r.manifest.name,
        serde_json::Value::Object(r.manifest.counts.clone()),
        if r.skipped {
            " (up to date, skipped)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
