//! Stage 3a: train a byte-level BPE (with the `tokenizers` crate) and encode datasets into token shards.

mod bpe;
mod chat;
mod fast;
mod gguf_vocab;
mod sft;
mod shards;
mod special;

pub use bpe::{default_val_fraction, write_tokenizer_files};
pub use bpe::{train_tokenizer, TokenizerConfig, SPECIAL_TOKENS};
pub use chat::{ChatMessage, ChatTemplate, CHATML_TEMPLATE, GEMMA_TEMPLATE};
pub use fast::{EncoderState, FastEncoder};
pub use gguf_vocab::{write_gguf_tokenizer, GgufVocab};
pub use sft::{encode_chat, encode_chat_dataset, split_flag, ChatEncodeConfig, NO_LOSS};
pub use shards::{
    encode_dataset, encode_heldout, read_tokens, train_shards, write_tokens, EncodeConfig,
    TokenShard,
};
pub use special::{special_ids, stop_ids, SpecialIds, TokenizerDir};

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a Strata token shard: {reason}")]
    BadShard {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("dataset {0:?} has no documents to train on")]
    Empty(String),
    #[error(transparent)]
    Records(#[from] strata_records::RecordsError),
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
}

pub type Result<T, E = TokenizeError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> TokenizeError {
    let path = path.into();
    move |source| TokenizeError::Io { path, source }
}

/// Loads a `tokenizer.json`, with an error that names the file.
///
/// # Errors
/// When the file is missing or not a tokenizer.
pub fn load_tokenizer(path: &std::path::Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path)
        .map_err(|e| TokenizeError::Tokenizer(format!("{}: {e}", path.display())))
}
