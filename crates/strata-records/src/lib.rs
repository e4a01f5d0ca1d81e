//! The records every stage hands to the next: a document ([`Doc`]), dataset shards of zstd jsonl with their
//! quarantine file, the held-out split that every stage agrees on, and the stable hashes the data stages and
//! de-identification share. Acquisition, preprocessing and tokenization all read and write these, so they live
//! below all three: what tokenizes (and what serves) links none of the readers of Parquet, WARC or HTML.

pub mod doc;
pub mod files;
pub mod hash;
pub mod shards;
pub mod split;

pub use doc::Doc;
pub use files::files_under;
pub use shards::{
    read_dataset, read_shards, shard_paths, Quarantine, QuarantineRecord, ShardCopy, ShardWriter,
};

/// What a finished (or skipped) stage reports.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub manifest: strata_store::Manifest,
    /// True when an identical artifact existed and the step was skipped.
    pub skipped: bool,
}

/// Errors of reading and writing records; each names the file (and line) involved.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Record {
        path: std::path::PathBuf,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
}

pub type Result<T, E = RecordsError> = std::result::Result<T, E>;

/// Maps an I/O error to [`RecordsError::Io`] naming `path`.
pub fn io_err(path: impl Into<std::path::PathBuf>) -> impl FnOnce(std::io::Error) -> RecordsError {
    let path = path.into();
    move |source| RecordsError::Io { path, source }
}
