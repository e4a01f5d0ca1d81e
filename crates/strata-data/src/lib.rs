//! Stages 1–2: acquire raw sources into datasets of jsonl.zst shards, then preprocess them
//! (normalise, filter, deduplicate), counting and quarantining what is dropped or broken.

pub mod acquire;
pub mod io;
pub mod preprocess;
pub mod tasks;

pub use strata_records::{doc, split, Doc};

/// Errors of the data stages; each names the file (and line) involved.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input path {0} does not exist")]
    Missing(std::path::PathBuf),
    #[error("input {0:?} matched no files")]
    NoFiles(String),
    #[error("{path}:{line}: {reason}")]
    Record {
        path: std::path::PathBuf,
        line: usize,
        reason: String,
    },
    #[error("invalid glob {pattern:?}: {reason}")]
    Glob { pattern: String, reason: String },
    #[error(transparent)]
    Deid(#[from] strata_deid::DeidError),
    #[error(transparent)]
    Records(#[from] strata_records::RecordsError),
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> DataError {
    let path = path.into();
    move |source| DataError::Io { path, source }
}
