//! Stage 1: turn raw sources into a dataset: text and Markdown files, jsonl (plain, .gz, .zst), CSV/TSV and
//! Parquet tables (a configurable text column), HTML pages and WARC archives (main content extracted); files,
//! folders or globs.
//!
//! Bad records never stop the run: a line that is not JSON, a record without the text field, or a file that
//! is not UTF-8 goes to the quarantine with its file, line and reason, and is counted.
//!
//! One file per kind of source (`sources.rs` text, `tabular.rs` tables, `web.rs` HTML and WARC, `fetch.rs`
//! URL lists); image folders and DICOM studies come in as sources of their own beside them, writing image
//! datasets through the same store and quarantine.

mod fetch;
mod sources;
mod tabular;
mod tasks;
mod web;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use strata_store::{InputRef, Kind, Manifest, Store};

use crate::io::{Quarantine, QuarantineRecord, ShardWriter};
use crate::tasks::StepReport;
use crate::Result;

/// Quarantines what is left of a file that cannot be read further (its line, the reason, no raw content) and
/// ends that file's reading; the run goes on with the next file.
pub(crate) fn skip_rest(
    quarantine: &mut Quarantine,
    source: &str,
    line: usize,
    reason: String,
) -> Result<()> {
    quarantine.add(QuarantineRecord {
        source: source.to_string(),
        line,
        reason,
        raw: String::new(),
    })?;
    Ok(())
}

pub use fetch::{fetch_all, parse_list, FetchConfig, Fetched, Outcome};
pub use sources::{resolve_inputs, SourceFormat};
pub use tasks::{acquire_publish, acquire_task, acquire_tasks};
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
    let (files, manifest) = plan(name, cfg, created_by)?;
    if let Some(existing) = store.up_to_date(Kind::Dataset, name, &manifest.fingerprint) {
        return Ok(StepReport {
            manifest: existing,
            skipped: true,
        });
    }

    let staging = store.staging(Kind::Dataset, name)?;
    // fetched pages are cached here until the dataset is published, so a killed run resumes
    let cache = crate::tasks::work_folder(store, "fetch", name, &manifest);
    let counts = read_files(&files, cfg, &staging, &cache)?;
    let mut manifest = manifest;
    counts.record(&mut manifest, files.len());
    let manifest = store.publish(&staging, manifest)?;
    let _ = std::fs::remove_dir_all(&cache);
    Ok(StepReport {
        manifest,
        skipped: false,
    })
}

/// The input files and the manifest the dataset will have.
fn plan(
    name: &str,
    cfg: &AcquireConfig,
    created_by: &str,
) -> Result<(Vec<(PathBuf, SourceFormat)>, Manifest)> {
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
    Ok((files, manifest))
}

/// What reading a set of files gave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Counts {
    pub docs: usize,
    pub bytes: u64,
    pub quarantined: usize,
    /// URLs listed, fetched, failed.
    pub urls: (usize, usize, usize),
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.docs += o.docs;
        self.bytes += o.bytes;
        self.quarantined += o.quarantined;
        self.urls = (
            self.urls.0 + o.urls.0,
            self.urls.1 + o.urls.1,
            self.urls.2 + o.urls.2,
        );
    }

    fn record(&self, manifest: &mut Manifest, files: usize) {
        manifest.counts.insert("files".into(), files.into());
        manifest.counts.insert("documents".into(), self.docs.into());
        manifest.counts.insert("bytes".into(), self.bytes.into());
        manifest
            .counts
            .insert("quarantined".into(), self.quarantined.into());
        if self.urls.0 > 0 {
            manifest.counts.insert("urls".into(), self.urls.0.into());
            manifest
                .counts
                .insert("urls_fetched".into(), self.urls.1.into());
            manifest
                .counts
                .insert("urls_failed".into(), self.urls.2.into());
        }
    }
}

/// Reads `files` into shards, a quarantine file and a fetch log inside `dir`; URL lists' results are
/// cached under `cache` (one folder per list).
fn read_files(
    files: &[(PathBuf, SourceFormat)],
    cfg: &AcquireConfig,
    dir: &std::path::Path,
    cache: &std::path::Path,
) -> Result<Counts> {
    let mut writer = ShardWriter::new(dir, cfg.docs_per_shard);
    let mut quarantine = Quarantine::new(dir);
    let mut counts = Counts::default();
    let mut log: Option<std::io::BufWriter<std::fs::File>> = None;
    let log_path = dir.join("fetch_log.jsonl");
    let bar = progress_bar(files.len());
    let started = std::time::Instant::now();
    for (path, format) in files {
        bar.set_message(format!(
            "{} docs, {:.1} MB/s  {}",
            writer.docs,
            counts.bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9),
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let bytes = &mut counts.bytes;
        let mut emit = |doc: crate::Doc| {
            *bytes += doc.text.len() as u64;
            writer.write(&doc).map_err(crate::DataError::from)
        };
        if *format == SourceFormat::UrlList {
            if log.is_none() {
                log = Some(std::io::BufWriter::new(
                    std::fs::File::create(&log_path).map_err(crate::io_err(&log_path))?,
                ));
            }
            if let Some(log) = log.as_mut() {
                let list_cache = cache.join(format!(
                    "{:016x}",
                    crate::preprocess::words::hash_bytes(path.display().to_string().as_bytes())
                ));
                let (n, ok, failed) = fetch::acquire_list(
                    path,
                    &cfg.fetch,
                    Some(&list_cache),
                    log,
                    &mut quarantine,
                    &mut emit,
                )?;
                counts.urls = (
                    counts.urls.0 + n,
                    counts.urls.1 + ok,
                    counts.urls.2 + failed,
                );
            }
        } else {
            sources::read_file(path, *format, &cfg.text_field, &mut quarantine, &mut emit)?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(log) = log {
        let file = log
            .into_inner()
            .map_err(|e| crate::io_err(&log_path)(e.into_error()))?;
        file.sync_all().map_err(crate::io_err(&log_path))?;
    }
    counts.docs = writer.finish()?;
    counts.quarantined = quarantine.finish()?;
    Ok(counts)
}

/// A progress bar over the input files on a terminal (files, documents, MB/s, ETA).
fn progress_bar(files: usize) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(files as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "acquire [{bar:30}] {pos}/{len} files  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Where an artifact's quarantine file lives, if it has one.
#[must_use]
pub fn quarantine_path(store: &Store, kind: Kind, name: &str) -> PathBuf {
    store
        .dir(kind, name)
        .join("quarantine")
        .join("quarantine.jsonl")
}
