//! Stage 5: serve models from the store. `engine/` turns a prompt into tokens with a KV cache and a seeded
//! sampler; `http/` is the OpenAI-compatible API (`POST /v1/chat/completions`, plain and SSE streaming).

pub mod engine;
pub mod http;
pub mod metrics;

pub use engine::{
    load_target, BatchConfig, Engine, FinishReason, GenParams, Generation, Sampling, Scheduler,
};
pub use http::{app, AppState};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Model(#[from] strata_model::ModelError),
    #[error(transparent)]
    Tokenize(#[from] strata_tokenize::TokenizeError),
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// An image a request sent that cannot be used (does not decode, too many pixels): a 400.
    #[error("{0}")]
    Image(String),
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;
