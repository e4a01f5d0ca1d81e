//! Inference: a loaded model with its tokenizer and chat template ([`Engine`]); one request's generation as
//! a state machine ([`Sequence`]: sampling, penalties, stop strings, incremental detokenisation, log-probs,
//! JSON constraint); and continuous batching over many of them ([`Scheduler`]).

mod batch;
mod generate;
mod json;
mod prefix;
mod sampling;
mod sequence;
pub mod vision;

pub use batch::{BatchConfig, Event, Job, Rejected, Scheduler};
pub use generate::{load_adapter, load_target, Engine};
pub use json::JsonPrefix;
pub use sampling::{apply_repetition_penalty, Sampler, Sampling};
pub use sequence::{FinishReason, GenParams, Generation, Output, Sequence, TokenLogprob};
