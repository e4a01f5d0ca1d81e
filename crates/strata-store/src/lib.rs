//! The artifact store every stage reads from and writes to: the on-disk layout, manifests that name each
//! artifact's inputs by content hash, atomic writes, and the SQLite lineage registry.
//!
//! Data flows one way (raw files → datasets → tokenizer + token shards → models), and each artifact
//! records what it was made from, so `strata lineage NAME` can walk back to the raw files.

mod atomic;
mod chain;
mod hash;
mod layout;
mod manifest;
mod registry;

pub use atomic::{write_atomic, write_json_atomic, AtomicFile};
pub use chain::Chain;
pub use hash::{sha256_bytes, sha256_dir, sha256_file};
pub use layout::validate_name;
pub use layout::{Kind, Store};
pub use manifest::fingerprint;
pub use manifest::{FileEntry, InputRef, Manifest};
pub use registry::{EvalRecord, LineageNode, Registry};

/// Everything that can go wrong in the store; each message names the path or artifact involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("lineage registry {path}: {source}")]
    Sqlite {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("no {kind} named {name:?} in the store at {root} (known: {known})")]
    NotFound {
        kind: Kind,
        name: String,
        root: std::path::PathBuf,
        known: String,
    },
    /// An adapter whose chain cannot be followed (no base named, or a base that changed since).
    #[error("{0}")]
    Chain(String),
    #[error("invalid artifact name {0:?}: use letters, digits, '-', '_' and '.' only")]
    BadName(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { path, source }
}
