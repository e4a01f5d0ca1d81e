//! Inference: a loaded model with its tokenizer and chat template, generating with a preallocated KV cache.

mod generate;
mod sampling;

pub use generate::{Engine, FinishReason, GenParams, Generation};
pub use sampling::{apply_repetition_penalty, Sampler, Sampling};
