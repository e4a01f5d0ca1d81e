//! Stage 2: a pipeline of small stages over a dataset. Each stage is a one-method trait in its own file,
//! and [`StageConfig`] (a serde-tagged enum) lets the whole pipeline be written in TOML and saved with the
//! artifact. Per-stage kept/removed counts go to `stats.json`.

mod dedup;
mod filter;
mod minhash;
mod normalize;
mod quality;
mod repetition;
pub mod words;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_store::{Kind, Manifest, Store};

use crate::acquire::StepReport;
use crate::io::{read_dataset, ShardWriter};
use crate::{Doc, Result};

pub use dedup::ExactDedup;
pub use filter::MinLength;
pub use minhash::{MinHashConfig, MinHashDedup};
pub use normalize::Normalize;
pub use quality::GopherQuality;
pub use repetition::GopherRepetition;

/// What a stage decides for one document.
pub enum Verdict {
    Keep(Doc),
    /// Removed, with a short machine-readable reason (`too_short`, `duplicate`, …).
    Drop(&'static str),
}

pub trait Stage {
    fn name(&self) -> &'static str;
    fn apply(&mut self, doc: Doc) -> Verdict;
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
}

impl StageConfig {
    #[must_use]
    pub fn build(&self) -> Box<dyn Stage> {
        match self {
            StageConfig::Normalize => Box::new(Normalize),
            StageConfig::MinLength { min_chars } => Box::new(MinLength {
                min_chars: *min_chars,
            }),
            StageConfig::ExactDedup => Box::new(ExactDedup::default()),
            StageConfig::GopherQuality(g) => Box::new(g.clone()),
            StageConfig::GopherRepetition(g) => Box::new(g.clone()),
            StageConfig::MinhashDedup(c) => Box::new(MinHashDedup::new(c.clone())),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    #[serde(default = "default_stages")]
    pub stages: Vec<StageConfig>,
    #[serde(default = "default_docs_per_shard")]
    pub docs_per_shard: usize,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            stages: default_stages(),
            docs_per_shard: default_docs_per_shard(),
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
    let src = store.require(Kind::Dataset, input)?;
    let inputs = vec![store.input_ref(Kind::Dataset, input)?];
    let manifest = Manifest::new(Kind::Dataset, output, created_by)
        .with_config(inputs, serde_json::to_value(cfg).unwrap_or_default());
    if let Some(existing) = store.up_to_date(Kind::Dataset, output, &manifest.fingerprint) {
        return Ok(StepReport {
            manifest: existing,
            skipped: true,
        });
    }
    let mut stages: Vec<Box<dyn Stage>> = cfg.stages.iter().map(StageConfig::build).collect();
    let mut stats: Vec<StageStats> = stages
        .iter()
        .map(|s| StageStats {
            stage: s.name().to_string(),
            ..StageStats::default()
        })
        .collect();
    let staging = store.staging(Kind::Dataset, output)?;
    let mut writer = ShardWriter::new(&staging, cfg.docs_per_shard);
    let mut total = 0usize;
    'docs: for doc in read_dataset(&src)? {
        let mut doc = doc?;
        total += 1;
        for (stage, st) in stages.iter_mut().zip(stats.iter_mut()) {
            st.input += 1;
            match stage.apply(doc) {
                Verdict::Keep(d) => {
                    st.kept += 1;
                    doc = d;
                }
                Verdict::Drop(reason) => {
                    *st.removed.entry(reason.to_string()).or_default() += 1;
                    continue 'docs;
                }
            }
        }
        writer.write(&doc)?;
    }
    let kept = writer.finish()?;
    strata_store::write_json_atomic(
        staging.join("stats.json"),
        &serde_json::json!({ "input": total, "kept": kept, "stages": stats }),
    )?;
    let mut manifest = manifest;
    manifest
        .counts
        .insert("input_documents".into(), total.into());
    manifest.counts.insert("documents".into(), kept.into());
    manifest
        .counts
        .insert("removed".into(), (total - kept).into());
    let manifest = store.publish(&staging, manifest)?;
    Ok(StepReport {
        manifest,
        skipped: false,
    })
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
}
