//! Model definitions and their formats: a Llama-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query
//! attention) on candle with LoRA, and the formats models come in and go out as (Hugging Face `config.json` +
//! `model.safetensors`, GGUF, PEFT adapters).
//!
//! The forward is the training one (the project's fused ops with their own backward — [`fused`],
//! [`attention`], [`matmul`] — since candle's fused norm/softmax/rope kernels have none), also used to score
//! and as the reference the inference engine (`strata-engine`, with its KV cache) is tested against.

pub mod attention;
mod config;
pub mod fused;
pub mod gguf;
mod gguf_export;
mod hf;
mod llama;
pub mod llava;
pub mod lora;
pub mod matmul;
pub mod qweight;
#[cfg(test)]
mod test_util;
pub mod vision;

pub use config::{LlamaConfig, ModelSpec, RopeScaling, TokenIds, ARCHITECTURES};
pub use gguf::{import_gguf, GgufImport};
pub use gguf_export::{export_gguf, GgufType};
pub use hf::{
    check_folder, load_model, read_config, read_safetensors, read_safetensors_bytes, read_weights,
    save_safetensors, stream_safetensors, stream_weights, write_hf_config, FolderCheck,
};
pub use llama::{
    init_std, next_token_loss, next_token_loss_sum, seeded_init, seeded_normal, Llama, LoraWeights,
    QuantBase,
};
pub use llava::{Llava, LlavaConfig, Projector};
pub use vision::{VisionConfig, VisionEncoder, VisionOutput};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Config {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("invalid model config: {0}")]
    Invalid(String),
    #[error("{context}: {}", candle_msg(source))]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{path}: {reason}")]
    Weights {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("sequence of {needed} positions exceeds the model's context of {max}")]
    TooLong { needed: usize, max: usize },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set: users get
/// the one line that says what was wrong.
#[must_use]
pub fn candle_msg(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Attaches a context (the op, the tensor) to a candle error.
pub trait Context<T> {
    /// # Errors
    /// Passes the error through with `context`.
    fn ctx(self, context: &str) -> Result<T>;
}

impl<T> Context<T> for candle_core::Result<T> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|source| ModelError::Candle {
            context: context.to_string(),
            source,
        })
    }
}
