//! A document: the unit that flows through acquire and preprocess.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    /// Stable id: `<source file>:<line or 0>` at acquisition.
    pub id: String,
    pub text: String,
    /// Every other field of the source record (e.g. `source`, `synthetic`), kept as metadata.
    #[serde(flatten)]
    pub meta: serde_json::Map<String, serde_json::Value>,
}
