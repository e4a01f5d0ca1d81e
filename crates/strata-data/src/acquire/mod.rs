//! Stage 1: turn raw sources (text files, jsonl, jsonl.zst; files, folders or globs) into a dataset.
//!
//! Bad records never stop the run: a line that is not JSON, a record without the text field, or a file that
//! is not UTF-8 goes to the quarantine with its file, line and reason, and is counted.

mod sources;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strata_store::{InputRef, Kind, Manifest, Store};

use crate::io::{Quarantine, ShardWriter};
use crate::Result;

pub use sources::{resolve_inputs, SourceFormat};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireConfig {
    /// Files, folders (read recursively) or glob patterns.
    pub inputs: Vec<String>,
    /// The field of a jsonl record that holds the text.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    #[serde(default = "default_docs_per_shard")]
    pub docs_per_shard: usize,
}

fn default_text_field() -> String {
    "text".into()
}
fn default_docs_per_shard() -> usize {
    10_000
}

/// What a finished (or skipped) step reports.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub manifest: Manifest,
    /// True when an identical artifact existed and the step was skipped.
    pub skipped: bool,
}

/// Reads every input into the dataset `name`.
///
/// # Errors
/// When an input path is missing or matches nothing, or on an I/O failure. Bad records are quarantined instead.
pub fn acquire(
    store: &Store,
    name: &str,
    cfg: &AcquireConfig,
    created_by: &str,
) -> Result<StepReport> {
    let files = resolve_inputs(&cfg.inputs)?;
    let mut inputs = Vec::new();
    for (path, _) in &files {
        inputs.push(InputRef {
            kind: Kind::Raw,
            name: path.display().to_string(),
            sha256: strata_store::sha256_file(path)?,
        });
    }
    let config = serde_json::to_value(cfg).unwrap_or_default();
    let manifest = Manifest::new(Kind::Dataset, name, created_by).with_config(inputs, config);
    if let Some(existing) = store.up_to_date(Kind::Dataset, name, &manifest.fingerprint) {
        return Ok(StepReport {
            manifest: existing,
            skipped: true,
        });
    }

    let staging = store.staging(Kind::Dataset, name)?;
    let mut writer = ShardWriter::new(&staging, cfg.docs_per_shard);
    let mut quarantine = Quarantine::new(&staging);
    let mut bytes = 0u64;
    for (path, format) in &files {
        sources::read_file(
            path,
            *format,
            &cfg.text_field,
            &mut quarantine,
            &mut |doc| {
                bytes += doc.text.len() as u64;
                writer.write(&doc)
            },
        )?;
    }
    let docs = writer.finish()?;
    let quarantined = quarantine.finish()?;
    let mut manifest = manifest;
    manifest.counts.insert("files".into(), files.len().into());
    manifest.counts.insert("documents".into(), docs.into());
    manifest.counts.insert("bytes".into(), bytes.into());
    manifest
        .counts
        .insert("quarantined".into(), quarantined.into());
    let manifest = store.publish(&staging, manifest)?;
    Ok(StepReport {
        manifest,
        skipped: false,
    })
}

/// Where an artifact's quarantine file lives, if it has one.
#[must_use]
pub fn quarantine_path(store: &Store, kind: Kind, name: &str) -> PathBuf {
    store
        .dir(kind, name)
        .join("quarantine")
        .join("quarantine.jsonl")
}
