//! The manifest written beside every artifact: what it is, what it was made from (by content hash), the
//! resolved config, counts, and the hash of every file it holds.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{io_err, Kind, Result, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputRef {
    pub kind: Kind,
    /// Artifact name, or the path of a raw file.
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: Kind,
    pub name: String,
    /// Hash of the artifact's payload (all files but the manifest).
    #[serde(default)]
    pub sha256: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The run or command that made it.
    pub created_by: String,
    pub inputs: Vec<InputRef>,
    /// The resolved configuration of the step that made it.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Hash of `config` + input hashes: equal fingerprints mean a step can be skipped.
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default)]
    pub counts: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

impl Manifest {
    #[must_use]
    pub fn new(kind: Kind, name: &str, created_by: &str) -> Self {
        let created_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            kind,
            name: name.to_string(),
            sha256: String::new(),
            created_at,
            created_by: created_by.to_string(),
            inputs: Vec::new(),
            config: serde_json::Value::Null,
            fingerprint: String::new(),
            counts: serde_json::Map::new(),
            files: Vec::new(),
        }
    }

    /// Sets the config and derives the fingerprint from it and the inputs.
    #[must_use]
    pub fn with_config(mut self, inputs: Vec<InputRef>, config: serde_json::Value) -> Self {
        self.fingerprint = fingerprint(&inputs, &config);
        self.inputs = inputs;
        self.config = config;
        self
    }

    /// # Errors
    /// When the file is missing or not a manifest.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            path: path.into(),
            source,
        })
    }
}

/// The fingerprint of a step: what it reads and how it is configured.
#[must_use]
pub fn fingerprint(inputs: &[InputRef], config: &serde_json::Value) -> String {
    let mut s = config.to_string();
    for i in inputs {
        s.push('\n');
        s.push_str(&i.sha256);
    }
    crate::sha256_bytes(s.as_bytes())
}
