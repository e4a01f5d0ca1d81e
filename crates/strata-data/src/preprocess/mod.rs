//! Stage 2: a pipeline of small stages over a dataset. Each stage is a one-method trait in its own file,
//! and [`StageConfig`] (a serde-tagged enum) lets the whole pipeline be written in TOML and saved with the
//! artifact. Per-stage kept/removed counts go to `stats.json`. De-identification itself lives in
//! `strata-deid` (`pii.rs` is the stage that runs it); image stages (de-identification of pixels, perceptual
//! dedup, patient-level splits) go beside these text stages, one file each.

mod c4;
mod chars;
mod decontam;
mod dedup;
pub mod distributed;
mod filter;
mod fineweb;
mod language;
mod minhash;
mod normalize;
mod pii;
mod quality;
mod repetition;
mod spacy_en;
pub mod words;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use strata_store::{Kind, Manifest, Store};

use crate::io::{read_dataset, ShardWriter};
use crate::tasks::StepReport;
use crate::{Doc, Result};

pub use c4::{count_sentences, C4Quality};
pub use chars::CharQuality;
pub use decontam::{DecontamConfig, Decontaminate, EvalSet};
pub use dedup::ExactDedup;
pub use filter::MinLength;
pub use fineweb::FineWebQuality;
pub use language::LanguageFilter;
pub use minhash::{MinHashConfig, MinHashDedup};
pub use normalize::Normalize;
pub use quality::GopherQuality;
pub use repetition::GopherRepetition;
pub use strata_deid::{
    eval as deid_eval, shift_date, Deid, Lexicon, PiiKind, PiiMode, PiiRedact, PiiSpan, Surrogates,
};

/// What a stage decides for one document.
pub enum Verdict {
    Keep(Doc),
    /// Removed, with a short machine-readable reason (`too_short`, `duplicate`, …).
    Drop(&'static str),
}

impl Verdict {
    /// Keep `doc`, or drop it for `reason`.
    #[must_use]
    pub fn unless(reason: Option<&'static str>, doc: Doc) -> Self {
        match reason {
            Some(r) => Self::Drop(r),
            None => Self::Keep(doc),
        }
    }
}

/// A stage. Pure stages decide from the document alone and run on many documents at once
/// ([`Stage::apply`]); stateful ones (dedup) decide in input order ([`Stage::apply_in_order`]), after a
/// parallel [`Stage::prepare`] of what depends on the document alone. Either way the output is the same
/// whatever the number of threads.
pub trait Stage: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether [`Stage::apply`] decides (else [`Stage::apply_in_order`]).
    fn pure(&self) -> bool {
        true
    }
    /// The decision of a pure stage.
    fn apply(&self, doc: Doc) -> Verdict {
        Verdict::Keep(doc)
    }
    /// What this stage found in a document it kept, by kind, for `stats.json` (PII counts).
    fn tally(&self, _doc: &Doc) -> Vec<(String, usize)> {
        Vec::new()
    }
    /// Per-document work of a stateful stage that can run in parallel (e.g. a MinHash signature).
    fn prepare(&self, _doc: &Doc) -> Prepared {
        Prepared::None
    }
    /// The decision of a stateful stage, called in input order.
    fn apply_in_order(&mut self, doc: Doc, _prepared: Prepared) -> Verdict {
        self.apply(doc)
    }
}

/// What [`Stage::prepare`] computed for one document.
pub enum Prepared {
    None,
    Signature(Vec<u32>),
    Digest([u8; 16]),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StageConfig {
    /// Unicode NFC and whitespace normalisation.
    Normalize,
    /// Drop documents shorter than `min_chars` characters (after normalisation).
    MinLength { min_chars: usize },
    /// Drop exact duplicates of an earlier document (by hash of the normalised text).
    ExactDedup,
    /// Gopher quality rules (word counts and lengths, symbols, bullets, ellipses, letters, stop words).
    GopherQuality(GopherQuality),
    /// Gopher repetition rules (duplicate lines and paragraphs, frequent and repeated n-grams).
    GopherRepetition(GopherRepetition),
    /// MinHash LSH near-duplicate removal (keeps the first of each cluster).
    MinhashDedup(MinHashConfig),
    /// PII replaced by typed placeholders or consistent surrogates (e-mails, phones, IPs, national IDs, MRNs,
    /// birth dates; in prose: names, locations, dates, ages over 89).
    PiiRedact(PiiRedact),
    /// Keep the listed languages (ISO 639-3) detected with enough confidence; label every kept document.
    Language(LanguageFilter),
    /// C4's rules: drop lines without terminal punctuation, short, JavaScript or policy lines; drop documents
    /// with lorem ipsum, curly brackets or too few sentences.
    C4Quality(C4Quality),
    /// FineWeb's rules: terminal-punctuation, short-line, duplicated-line and newline-per-word ratios.
    FinewebQuality(FineWebQuality),
    /// Drop documents sharing an n-gram (13 words) with a named evaluation set.
    Decontaminate(DecontamConfig),
    /// Character-level rules for any script (Data-Juicer's): repeated character 10-grams, special characters.
    CharQuality(CharQuality),
}

impl StageConfig {
    /// The stage, ready to run.
    ///
    /// # Errors
    /// When a stage's inputs cannot be read (an evaluation set for decontamination).
    pub fn build(&self) -> Result<Box<dyn Stage>> {
        Ok(match self {
            StageConfig::Normalize => Box::new(Normalize),
            StageConfig::MinLength { min_chars } => Box::new(MinLength {
                min_chars: *min_chars,
            }),
            StageConfig::ExactDedup => Box::new(ExactDedup::default()),
            StageConfig::GopherQuality(g) => Box::new(g.clone()),
            StageConfig::GopherRepetition(g) => Box::new(g.clone()),
            StageConfig::MinhashDedup(c) => Box::new(MinHashDedup::new(c.clone())),
            // the secret keying per-patient surrogates is the user's, never in a config or manifest
            StageConfig::PiiRedact(p) => Box::new(
                Deid::new(p)?.with_secret(&std::env::var("STRATA_DEID_SECRET").unwrap_or_default()),
            ),
            StageConfig::Language(l) => Box::new(l.clone()),
            StageConfig::C4Quality(c) => Box::new(c.clone()),
            StageConfig::FinewebQuality(f) => Box::new(f.clone()),
            StageConfig::Decontaminate(d) => Box::new(Decontaminate::build(d)?.0),
            StageConfig::CharQuality(c) => Box::new(c.clone()),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    #[serde(default = "default_stages")]
    pub stages: Vec<StageConfig>,
    #[serde(default = "default_docs_per_shard")]
    pub docs_per_shard: usize,
    /// Also write each shard as Parquet (`part-00000.parquet`: id, text, metadata as JSON).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parquet: bool,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            stages: default_stages(),
            docs_per_shard: default_docs_per_shard(),
            parquet: false,
        }
    }
}

fn default_stages() -> Vec<StageConfig> {
    vec![
        StageConfig::Normalize,
        StageConfig::MinLength { min_chars: 32 },
        StageConfig::ExactDedup,
    ]
}
fn default_docs_per_shard() -> usize {
    10_000
}

/// Counts of one stage for `stats.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StageStats {
    pub stage: String,
    pub input: usize,
    pub kept: usize,
    pub removed: BTreeMap<String, usize>,
    /// What a stage that changes text found, by kind (PII redaction: `name`, `date`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub found: BTreeMap<String, usize>,
}

/// Runs the stages over dataset `input`, writing dataset `output`.
///
/// # Errors
/// When the input dataset is missing or on an I/O failure.
pub fn preprocess(
    store: &Store,
    input: &str,
    output: &str,
    cfg: &PreprocessConfig,
    created_by: &str,
) -> Result<StepReport> {
    let (src, manifest) = plan(store, input, output, cfg, created_by)?;
    if let Some(existing) = store.up_to_date(Kind::Dataset, output, &manifest.fingerprint) {
        return Ok(StepReport {
            manifest: existing,
            skipped: true,
        });
    }
    let mut stages: Vec<Box<dyn Stage>> = cfg
        .stages
        .iter()
        .map(StageConfig::build)
        .collect::<Result<_>>()?;
    let mut stats = empty_stats(&stages);
    let staging = store.staging(Kind::Dataset, output)?;
    let mut writer = ShardWriter::new(&staging, cfg.docs_per_shard)
        .with_copy(crate::io::parquet_copy(cfg.parquet));
    let mut total = 0usize;
    let threads = threads();
    let expected = store
        .manifest(Kind::Dataset, input)
        .ok()
        .and_then(|m| {
            m.counts
                .get("documents")
                .and_then(serde_json::Value::as_u64)
        })
        .unwrap_or(0);
    let bar = progress_bar(output, expected);
    let started = std::time::Instant::now();
    let mut bytes = 0usize;
    let mut batch = Vec::with_capacity(BATCH);
    let mut docs = read_dataset(&src)?;
    loop {
        batch.clear();
        for doc in docs.by_ref().take(BATCH) {
            batch.push(doc?);
        }
        if batch.is_empty() {
            break;
        }
        total += batch.len();
        bytes += batch.iter().map(|d| d.text.len()).sum::<usize>();
        for doc in run_batch(&mut stages, &mut stats, std::mem::take(&mut batch), threads) {
            writer.write(&doc)?;
        }
        bar.set_position(total as u64);
        #[allow(clippy::cast_precision_loss)]
        let mb_s = bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{mb_s:.1} MB/s"));
    }
    bar.finish_and_clear();
    let kept = writer.finish()?;
    let stats = serde_json::json!({ "input": total, "kept": kept, "stages": stats });
    let manifest = publish_with_stats(store, &staging, manifest, total, kept, &stats)?;
    Ok(StepReport {
        manifest,
        skipped: false,
    })
}

/// Writes `stats.json` into the staging folder, the counts into the manifest, and publishes the dataset.
fn publish_with_stats(
    store: &Store,
    staging: &std::path::Path,
    mut manifest: Manifest,
    total: usize,
    kept: usize,
    stats: &serde_json::Value,
) -> Result<Manifest> {
    strata_store::write_json_atomic(staging.join("stats.json"), stats)?;
    manifest
        .counts
        .insert("input_documents".into(), total.into());
    manifest.counts.insert("documents".into(), kept.into());
    manifest
        .counts
        .insert("removed".into(), (total - kept).into());
    Ok(store.publish(staging, manifest)?)
}

/// The input dataset's folder and the manifest the output will have (its fingerprint names the config and
/// every input, evaluation sets included).
fn plan(
    store: &Store,
    input: &str,
    output: &str,
    cfg: &PreprocessConfig,
    created_by: &str,
) -> Result<(std::path::PathBuf, Manifest)> {
    let src = store.require(Kind::Dataset, input)?;
    let mut inputs = vec![store.input_ref(Kind::Dataset, input)?];
    // evaluation sets are inputs too: a changed set reruns the step
    for stage in &cfg.stages {
        if let StageConfig::Decontaminate(d) = stage {
            for path in d
                .eval_sets
                .iter()
                .flat_map(|e| std::iter::once(&e.path).chain(&e.ids))
            {
                inputs.push(strata_store::InputRef {
                    kind: Kind::Raw,
                    name: path.display().to_string(),
                    sha256: strata_store::sha256_file(path)?,
                });
            }
        }
    }
    let manifest = Manifest::new(Kind::Dataset, output, created_by)
        .with_config(inputs, serde_json::to_value(cfg).unwrap_or_default());
    Ok((src, manifest))
}

/// A progress bar on a terminal (documents, docs/s, MB/s, ETA when the input's size is known).
fn progress_bar(name: &str, expected: u64) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(expected);
    let template = if expected > 0 {
        "{prefix} [{bar:30}] {pos}/{len} docs  {per_sec}  {msg}  [{elapsed_precise} < {eta_precise}]"
    } else {
        "{prefix} {spinner} {pos} docs  {per_sec}  {msg}  [{elapsed_precise}]"
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("preprocess {name}"));
    bar
}

/// Zero counts for each stage, by name.
fn empty_stats(stages: &[Box<dyn Stage>]) -> Vec<StageStats> {
    stages
        .iter()
        .map(|s| StageStats {
            stage: s.name().to_string(),
            ..StageStats::default()
        })
        .collect()
}

/// Documents read and decided together; the pure stages split a batch between threads.
const BATCH: usize = 4096;

/// Worker threads: those of rayon's global pool, which the program sizes once from its thread setting
/// (`strata --threads`).
fn threads() -> usize {
    rayon::current_num_threads()
}

/// `f` on every element on `threads` rayon workers, results in input order (rayon's indexed collect).
/// The global pool serves when it has that many threads (main sizes it from `--threads`); another count
/// gets a pool of its own, built once.
fn par_map<T: Send, U: Send>(items: Vec<T>, threads: usize, f: &(dyn Fn(T) -> U + Sync)) -> Vec<U> {
    use rayon::prelude::*;
    static POOLS: std::sync::OnceLock<
        std::sync::Mutex<HashMap<usize, std::sync::Arc<rayon::ThreadPool>>>,
    > = std::sync::OnceLock::new();
    if threads <= 1 || items.len() < 64 {
        return items.into_iter().map(f).collect();
    }
    // a few chunks per worker: documents vary in cost, so stealing evens the load
    let min_len = items.len() / (threads * 4);
    let run = move || {
        items
            .into_par_iter()
            .with_min_len(min_len.max(1))
            .map(f)
            .collect()
    };
    if threads == rayon::current_num_threads() {
        return run();
    }
    let pool = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(threads)
        .or_insert_with(|| {
            std::sync::Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap_or_else(|e| panic!("a pool of {threads} threads: {e}")),
            )
        })
        .clone();
    pool.install(run)
}

/// One batch through every stage: runs of pure stages in parallel, stateful stages in input order after
/// a parallel `prepare`. Returns the kept documents in input order.
fn run_batch(
    stages: &mut [Box<dyn Stage>],
    stats: &mut [StageStats],
    mut docs: Vec<Doc>,
    threads: usize,
) -> Vec<Doc> {
    let mut i = 0;
    while i < stages.len() && !docs.is_empty() {
        if stages[i].pure() {
            let mut j = i;
            while j < stages.len() && stages[j].pure() {
                j += 1;
            }
            let run: &[Box<dyn Stage>] = &stages[i..j];
            // each document walks the run; the result says where it stopped and why
            let results = par_map(docs, threads, &|mut doc: Doc| {
                let mut found = Vec::new();
                for (k, st) in run.iter().enumerate() {
                    match st.apply(doc) {
                        Verdict::Keep(d) => {
                            for (kind, n) in st.tally(&d) {
                                found.push((k, kind, n));
                            }
                            doc = d;
                        }
                        Verdict::Drop(reason) => return (Err((k, reason)), found),
                    }
                }
                (Ok(doc), found)
            });
            docs = Vec::with_capacity(results.len());
            for (r, found) in results {
                for (k, kind, n) in found {
                    *stats[i + k].found.entry(kind).or_default() += n;
                }
                let stop = r.as_ref().err().map_or(j - i, |e| e.0);
                for st in &mut stats[i..i + stop] {
                    st.input += 1;
                    st.kept += 1;
                }
                match r {
                    Ok(d) => docs.push(d),
                    Err((k, reason)) => {
                        stats[i + k].input += 1;
                        *stats[i + k].removed.entry(reason.to_string()).or_default() += 1;
                    }
                }
            }
            i = j;
        } else {
            let st: &dyn Stage = stages[i].as_ref();
            let prepared = par_map(docs.iter().collect::<Vec<&Doc>>(), threads, &|d: &Doc| {
                st.prepare(d)
            });
            let stage = &mut stages[i];
            let mut kept = Vec::with_capacity(docs.len());
            for (doc, p) in docs.into_iter().zip(prepared) {
                stats[i].input += 1;
                match stage.apply_in_order(doc, p) {
                    Verdict::Keep(d) => {
                        stats[i].kept += 1;
                        kept.push(d);
                    }
                    Verdict::Drop(reason) => {
                        *stats[i].removed.entry(reason.to_string()).or_default() += 1;
                    }
                }
            }
            docs = kept;
            i += 1;
        }
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_config_parses_from_toml_and_rejects_unknown_fields() {
        #[derive(Deserialize)]
        struct W {
            stages: Vec<StageConfig>,
        }
        let w: W = toml::from_str(
            "stages = [{type = \"normalize\"}, {type = \"min_length\", min_chars = 10}]",
        )
        .unwrap();
        assert_eq!(
            w.stages,
            vec![
                StageConfig::Normalize,
                StageConfig::MinLength { min_chars: 10 }
            ]
        );
        assert!(
            toml::from_str::<W>("stages = [{type = \"min_length\", min_chars = 1, max = 2}]")
                .is_err()
        );
        assert!(toml::from_str::<W>("stages = [{type = \"gopher\"}]").is_err());
        let w: W = toml::from_str(
            "stages = [{type = \"gopher_quality\", min_doc_words = 10}, {type = \"gopher_repetition\"}, \
             {type = \"minhash_dedup\", bands = 20, rows = 6}]",
        )
        .unwrap();
        assert_eq!(
            w.stages,
            vec![
                StageConfig::GopherQuality(GopherQuality {
                    min_doc_words: 10,
                    ..GopherQuality::default()
                }),
                StageConfig::GopherRepetition(GopherRepetition::default()),
                StageConfig::MinhashDedup(MinHashConfig {
                    bands: 20,
                    rows: 6,
                    ..MinHashConfig::default()
                }),
            ]
        );
        assert!(
            toml::from_str::<W>("stages = [{type = \"gopher_quality\", min_words = 1}]").is_err()
        );
    }

    #[test]
    fn batches_give_the_same_documents_and_counts_on_any_number_of_threads() {
        let cfgs = [
            StageConfig::Normalize,
            StageConfig::MinLength { min_chars: 20 },
            StageConfig::ExactDedup,
            // a pure stage after a stateful one
            StageConfig::MinLength { min_chars: 50 },
            StageConfig::MinhashDedup(MinHashConfig::default()),
        ];
        let docs: Vec<Doc> = (0..500)
            .map(|i| Doc {
                id: format!("d{i}"),
                text: match i % 5 {
                    0 => "short".into(),
                    1 => format!("exact copy number {}  of a document about the liver", i % 3),
                    2 => "line\n".repeat(12),
                    _ => format!(
                        "document {} on kidney size, bladder wall and portal flow {} today",
                        i % 7,
                        i % 11
                    ),
                },
                meta: serde_json::Map::new(),
            })
            .collect();
        let run = |threads: usize| {
            let mut stages: Vec<Box<dyn Stage>> = cfgs
                .iter()
                .map(StageConfig::build)
                .collect::<Result<_>>()
                .unwrap();
            let mut stats = empty_stats(&stages);
            let mut out = Vec::new();
            for chunk in docs.chunks(128) {
                out.extend(run_batch(&mut stages, &mut stats, chunk.to_vec(), threads));
            }
            (out, stats)
        };
        let (one, s1) = run(1);
        let (three, s3) = run(3);
        assert_eq!(one, three);
        assert_eq!(s1, s3);
        assert!(!one.is_empty() && one.len() < 200, "{} {s1:?}", one.len());
        // every stage saw what the one before it kept
        for w in s1.windows(2) {
            assert_eq!(w[1].input, w[0].kept);
        }
        assert_eq!(s1[0].input, 500);
    }
}
