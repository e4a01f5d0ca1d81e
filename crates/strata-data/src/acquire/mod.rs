//! Stage 1: turn raw sources into a dataset: text and Markdown files, jsonl (plain, .gz, .zst), CSV/TSV and
//! Parquet tables (a configurable text column), HTML pages and WARC archives (main content extracted); files,
//! folders or globs.
//!
//! Bad records never stop the run: a line that is not JSON, a record without the text field, or a file that
//! is not UTF-8 goes to the quarantine with its file, line and reason, and is counted.

mod fetch;
mod sources;
mod tabular;
mod web;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strata_store::{InputRef, Kind, Manifest, Store};

use crate::io::{Quarantine, ShardWriter};
use crate::Result;

pub use fetch::{fetch_all, parse_list, FetchConfig, Fetched, Outcome};
pub use sources::{resolve_inputs, SourceFormat};
pub use web::main_content;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireConfig {
    /// Files, folders (read recursively) or glob patterns.
    pub inputs: Vec<String>,
    /// The field of a jsonl record (or the column of a CSV/Parquet table) that holds the text.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    #[serde(default = "default_docs_per_shard")]
    pub docs_per_shard: usize,
    /// How `.urls` lists are fetched (politeness, limits, retries).
    #[serde(default)]
    pub fetch: FetchConfig,
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
    let mut urls = (0, 0, 0);
    let mut log: Option<std::io::BufWriter<std::fs::File>> = None;
    for (path, format) in &files {
        let mut emit = |doc: crate::Doc| {
            bytes += doc.text.len() as u64;
            writer.write(&doc)
        };
        if *format == SourceFormat::UrlList {
            if log.is_none() {
                let p = staging.join("fetch_log.jsonl");
                log = Some(std::io::BufWriter::new(
                    std::fs::File::create(&p).map_err(crate::io_err(&p))?,
                ));
            }
            if let Some(log) = log.as_mut() {
                let (n, ok, failed) =
                    fetch::acquire_list(path, &cfg.fetch, log, &mut quarantine, &mut emit)?;
                urls = (urls.0 + n, urls.1 + ok, urls.2 + failed);
            }
        } else {
            sources::read_file(path, *format, &cfg.text_field, &mut quarantine, &mut emit)?;
        }
    }
    if let Some(log) = log {
        let p = staging.join("fetch_log.jsonl");
        let file = log
            .into_inner()
            .map_err(|e| crate::io_err(&p)(e.into_error()))?;
        file.sync_all().map_err(crate::io_err(&p))?;
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
    if urls.0 > 0 {
        manifest.counts.insert("urls".into(), urls.0.into());
        manifest.counts.insert("urls_fetched".into(), urls.1.into());
        manifest.counts.insert("urls_failed".into(), urls.2.into());
    }
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
