//! Stages 3b–4: one training loop for pretraining and continued pretraining (full weights) of any model in
//! the store: a memory-mapped loader mixing token artifacts by weight, gradient accumulation normalised by
//! target tokens, AdamW, warmup + cosine/linear/WSD schedules, clipping, early stopping, a time budget,
//! checkpoints that survive `kill -9` and SIGINT/SIGTERM, metrics as jsonl, a loss-curve PNG, validation
//! perplexity and the forgetting guard. Evaluation of finished models (on the inference engine) and the chain
//! report are in `strata-eval`.

mod checkpoint;
mod config;
mod data;
pub mod dist;
pub mod eval;
pub mod guard;
mod metrics;
mod optim;
pub mod parent;
pub mod plot;
mod trainer;
pub mod vit;
pub mod vlm;

pub use config::{finetune_table, get_lr, pretrain_table, Schedule, Stage, TrainConfig};
pub use data::{Component, Mixture, Sampling};
pub use eval::{eval_window, perplexity, Perplexity};
pub use metrics::{peak_rss_bytes, StepMetrics};
pub use optim::AdamW;
pub use optim::Grads;
pub use plot::plot_loss;
pub use trainer::{
    accumulate, accumulate_with, mixture, train, Init, TokenMix, TrainJob, TrainOutcome,
};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("{0}")]
    Data(String),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("interrupted after step {step}: checkpoint written to {}; run the same command to resume", dir.display())]
    Interrupted {
        step: usize,
        dir: std::path::PathBuf,
    },
    #[error("loss became {value} at step {step}: lower the learning rate")]
    Diverged { step: usize, value: f32 },
    #[error(transparent)]
    Model(#[from] strata_model::ModelError),
    #[error(transparent)]
    Tokenize(#[from] strata_tokenize::TokenizeError),
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Maps an I/O error to [`TrainError::Io`] naming `path`.
pub fn io_err(path: impl Into<std::path::PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}

pub(crate) use strata_model::Context;
